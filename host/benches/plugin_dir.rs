//! The plugin directory's benchmark (docs/benchmarks.md, "Plugin directory"):
//!
//! - `swap`: from a new version of a 1 MB plugin (the bundled gitlab-retention, 1.1 MB)
//!   landing in the directory (renamed into place) to the first evaluation by the new
//!   version, with the daemon's watcher thread at its default interval (100 ms) and the
//!   compile cache cold (each version is new bytes, so it is compiled): the watcher's wait for
//!   the file to hold still, compiling, configuring the policy, the swap, and one evaluation
//!   of a 1,000-tag list.
//!   Measured with and without tiered compilation (`RuntimeConfig::tiered_compilation`, the
//!   daemon's setting): with it, also the time until the optimized code serves.
//! - `start`: `PluginDirectory::open` over 10 plugins (distinct files) with the compile cache
//!   warm: what a daemon restart spends loading its plugins.
//!
//! ```text
//! cargo xtask build-plugins && cargo bench -p tagwarden --bench plugin_dir
//! ```
//!
//! `TAGWARDEN_BENCH_QUICK=1` takes fewer samples.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tagwarden::config::Config;
use tagwarden::model::{Digest, Tag, TagList, Timestamp};
use tagwarden::plugin_dir::{DirectoryOptions, DirectoryStrategies, PluginDirectory, PluginEvent};
use tagwarden::runtime::{PluginRuntime, RuntimeConfig, Tier};
use tagwarden::store::Store;

const PARAMS: &str = "{ name_regex_delete = \".*\", name_regex_keep = \"main-.*\", keep_n = 10, older_than = \"30d\" }";

/// `bytes` with a custom section appended: the same plugin, new bytes (a new version).
fn version(bytes: &[u8], n: usize) -> Vec<u8> {
    let name = b"bench-version";
    let payload = n.to_string();
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(payload.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(content.len() as u8);
    out.extend(content);
    out
}

fn install(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A config whose policies `p0..pN` use plugins `keep0..keepN` of `dir`.
fn config(dir: &Path, plugins: usize) -> Config {
    let mut text = "[registry]\nurl = \"http://127.0.0.1:9\"\n\n[plugins]\ndir = \"plugins\"\n".to_owned();
    for i in 0..plugins {
        text.push_str(&format!("\n[[policy]]\nname = \"p{i}\"\nrepositories = [\"r{i}/*\"]\nplugin = \"keep{i}\"\nparams = {PARAMS}\n"));
    }
    let path = dir.join("tagwarden.toml");
    std::fs::write(&path, text).unwrap();
    Config::read(&path).unwrap()
}

fn list() -> TagList {
    let now = 1_795_176_000_000_000i64;
    let tags = (0..1000)
        .map(|i| {
            let mut t = Tag::new(format!("build-{i}"), Digest::sha256_of(format!("{i}").as_bytes()));
            t.created_at = Some(Timestamp::from_unix_micros(now - i as i64 * 3_600_000_000));
            t
        })
        .collect();
    TagList::new("r0/app", tags, vec![]).unwrap()
}

fn quiet(_: PluginEvent<'_>) {}

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)], v[0])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let quick = std::env::var_os("TAGWARDEN_BENCH_QUICK").is_some();
    let gitlab = std::fs::read(tagwarden::plugins::resolve("gitlab-retention", &[]).expect("cargo xtask build-plugins first")).unwrap();
    println!(
        "plugin directory benchmark: {} cores ({}), load {}, {}\n",
        common::cores(),
        common::cpu_model(),
        common::load_average(),
        common::rustc_version()
    );
    println!("| case | median | p90 | min | samples |\n|---|---|---|---|---|");

    // swap: cold compile cache (none), the watcher at its default interval.
    let samples = if quick { 3 } else { 10 };
    let report = |case: &str, times: Vec<Duration>| {
        let n = times.len();
        let (m, p90, min) = median(times);
        println!("| {case} | {} | {} | {} | {n} |", ms(m), ms(p90), ms(min));
    };
    let new_versions = |from: usize| (from..from + samples).map(|n| version(&gitlab, n)).collect::<Vec<_>>();
    report(
        "swap: 1.1 MB plugin landing → first evaluation by it (cold cache, 100 ms watch); new versions of the same code, so every function comes from the function cache of the version it replaces",
        swap(RuntimeConfig::default(), &version(&gitlab, 0), new_versions(1)),
    );
    let no_function_cache = RuntimeConfig { function_cache_bytes: 0, ..RuntimeConfig::default() };
    report(
        "swap: the same, function cache off (every function compiled: code this runtime never compiled, or a restart without the warm-up)",
        swap(no_function_cache, &version(&gitlab, 0), new_versions(100)),
    );
    // A restarted daemon: the version in service comes from the compile cache, and the
    // runtime compiles it again in the background to fill the function cache (timed after
    // that warm-up, which runs at low priority).
    let compiled = tempfile::tempdir().unwrap();
    let restarted = RuntimeConfig { compile_cache: Some(compiled.path().to_owned()), ..RuntimeConfig::default() };
    Arc::new(PluginRuntime::new(restarted.clone()).unwrap())
        .load_bytes("first", &version(&gitlab, 0), tagwarden::runtime::PluginLimits::default())
        .unwrap();
    report(
        "swap: after a restart (the version in service loaded from the compile cache), once the background warm-up has compiled it",
        swap(RuntimeConfig { warm_function_cache: true, ..restarted }, &version(&gitlab, 0), new_versions(300)),
    );
    // A rebuilt plugin: the 0.1 build (SDK 0.1) in service, replaced by the 0.2 build; a
    // new runtime for each sample, so only the old build's functions are cached.
    let old = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/contract-0.1/gitlab-retention.wasm")).unwrap();
    let rebuilt: Vec<Duration> =
        (0..samples).flat_map(|n| swap(RuntimeConfig::default(), &version(&old, n), vec![version(&gitlab, 200 + n)])).collect();
    report("swap: a rebuilt plugin (gitlab-retention built with SDK 0.1 replaced by its SDK 0.2 build)", rebuilt);

    // Tiered compilation (what `serve` with a plugin directory runs): the new version serves
    // with baseline code, compiled by Winch, and Cranelift compiles it in the background.
    // The function cache is off, so the background compile, too, compiles every function.
    let tiered = RuntimeConfig { tiered_compilation: true, function_cache_bytes: 0, ..RuntimeConfig::default() };
    let (serving, optimized): (Vec<_>, Vec<_>) = swap_tiered(tiered, &version(&gitlab, 0), new_versions(400)).into_iter().unzip();
    report("**swap, tiered compilation (the daemon's setting): every function compiled, by the baseline compiler**", serving);
    report("the same: landing → optimized code in service (Cranelift in the background, at low priority)", optimized);

    // start: 10 plugins, warm compile cache.
    {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        for i in 0..10 {
            install(&plugins, &format!("keep{i}.wasm"), &version(&gitlab, 100 + i));
        }
        let config = config(tmp.path(), 10);
        let cache = tmp.path().join("compiled");
        let runtime_config = RuntimeConfig { compile_cache: Some(cache), ..RuntimeConfig::default() };
        let open = |runtime: &Arc<PluginRuntime>| {
            let bound = tagwarden::setup::load_policies(&config, runtime, true).unwrap();
            let store = Store::in_memory().unwrap();
            let options = directory_options(&plugins, &config);
            let started = Instant::now();
            let d = PluginDirectory::open(
                options,
                runtime.clone(),
                &store,
                Arc::new(store.clone()),
                bound,
                DirectoryStrategies::none(),
                &quiet,
            )
            .unwrap();
            let elapsed = started.elapsed();
            let active = d.policies().current().iter().filter(|p| p.policy.retention().is_some()).count();
            assert_eq!(active, 10);
            elapsed
        };
        // Warms the cache (compiles all ten).
        let cold = open(&Arc::new(PluginRuntime::new(runtime_config.clone()).unwrap()));
        let samples = if quick { 3 } else { 10 };
        // A new runtime each time, as a restarted daemon has.
        let times: Vec<Duration> = (0..samples).map(|_| open(&Arc::new(PluginRuntime::new(runtime_config.clone()).unwrap()))).collect();
        let (m, p90, min) = median(times.clone());
        println!("| start: 10 plugins (1.1 MB each), warm compile cache | {} | {} | {} | {} |", ms(m), ms(p90), ms(min), times.len());
        println!("| start: the same, cold compile cache (once) | {} | | | 1 |", ms(cold));
    }
}

/// A plugin directory serving `first`; then each of `versions` renamed into place in turn,
/// timed until the first evaluation by it returns.
fn swap(runtime_config: RuntimeConfig, first: &[u8], versions: Vec<Vec<u8>>) -> Vec<Duration> {
    swap_tiered(runtime_config, first, versions).into_iter().map(|(first_evaluation, _)| first_evaluation).collect()
}

/// [`swap`], also timing (from the landing) until the new version runs optimized code
/// ([`Tier::Optimized`]): at once without tiered compilation, after the background compile
/// with it. Each sample waits for that before the next version lands.
fn swap_tiered(runtime_config: RuntimeConfig, first: &[u8], versions: Vec<Vec<u8>>) -> Vec<(Duration, Duration)> {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    install(&plugins, "keep0.wasm", first);
    let config = config(tmp.path(), 1);
    let runtime = Arc::new(PluginRuntime::new(runtime_config).unwrap());
    let bound = tagwarden::setup::load_policies(&config, &runtime, true).unwrap();
    let store = Store::in_memory().unwrap();
    let options = directory_options(&plugins, &config);
    let directory =
        PluginDirectory::open(options, runtime.clone(), &store, Arc::new(store.clone()), bound, DirectoryStrategies::none(), &quiet)
            .unwrap();
    runtime.wait_for_background_compiles();
    assert_eq!(directory.policies().current()[0].policy.retention().unwrap().plugin().plugin().tier(), Tier::Optimized);
    let policies = directory.policies();
    let stop = directory.watch(Arc::new(tokio::sync::Notify::new()), Arc::new(quiet)).unwrap();
    let list = list();
    let now = Timestamp::from_unix_micros(1_795_176_000_000_000);
    let mut times = Vec::new();
    for bytes in versions {
        let sha = tagwarden::model::sha256_hex(&bytes);
        let landed = Instant::now();
        install(&plugins, "keep0.wasm", &bytes);
        let serving = loop {
            let current = policies.current();
            if let Some(r) = current[0].policy.retention()
                && r.plugin().plugin().meta().sha256 == sha
            {
                r.evaluate(&list, now).unwrap();
                break r.plugin().plugin().clone();
            }
            drop(current);
            std::thread::sleep(Duration::from_millis(1));
        };
        let first_evaluation = landed.elapsed();
        runtime.wait_for_background_compiles();
        assert_eq!(serving.tier(), Tier::Optimized);
        times.push((first_evaluation, landed.elapsed()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    times
}

/// The directory's options as `config` sets them, watching `plugins`.
fn directory_options(plugins: &Path, config: &Config) -> DirectoryOptions {
    DirectoryOptions {
        dir: plugins.to_owned(),
        watch_interval: config.plugins.watch_interval,
        settle: config.plugins.settle,
        quarantine_after: config.plugins.quarantine_after,
        canary_sample: config.plugins.canary_sample,
        canary_max_extra_deletions: config.plugins.canary_max_extra_deletions,
    }
}
