//! Plugin-runtime benchmark: the `gitlab-retention` policy compiled natively versus run
//! through the Wasm host, the host's own per-evaluation overhead, and the full cost of
//! a small repository. The figures in docs/benchmarks.md ("Plugin runtime") come from
//!
//! ```text
//! cargo xtask build-plugins && cargo bench -p tagwarden --bench runtime
//! ```
//!
//! Plain `std` timing (no criterion, to keep build time down): every case is warmed up,
//! then repeated until both a minimum wall time and a minimum number of samples are
//! reached; median, p90 and min are per evaluation. Cases far below a microsecond are
//! timed in batches (the per-evaluation figure is the batch time divided by its size).
//!
//! Options:
//! - a filter argument (`cargo bench -p tagwarden --bench runtime -- 10,100k/wasm`) or
//!   `TAGWARDEN_BENCH_FILTER`: comma-separated groups (`load` with cases `gitlab`, `cached`; `10`, `1k`, `100k`, `1m`)
//!   or single cases (`<group>/<case>`, cases `native`, `native-full`, `wasm`, `wasm-warm`, `wasm-warm-0.1`, `wasm-warm-0.2.0`,
//!   `wasm-warm-baseline`, `noop`, `columns`, `paired`,
//!   and for `10` also `noop-warm`, `wasm-warm`, `noop-create`, `wasm-create`, `wasm-create-empty`,
//!   `native-create`), e.g. to profile one case under `perf`;
//! - `TAGWARDEN_BENCH_QUICK=1` shortens every measurement and skips the 1M list.
//!
//! The output is a markdown table ready to paste into docs/benchmarks.md.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitlab_retention::GitlabRetention;
use tagwarden::model::{Action, Digest, ListColumns, MediaType, RetentionDecisions, Tag, TagList, Timestamp};
use tagwarden::runtime::{PluginLimits, PluginRuntime, RetentionPlugin, RuntimeConfig};
use tagwarden_plugin_sdk as sdk;
use tagwarden_plugin_sdk::RetentionPolicy;

/// A realistic GitLab cleanup policy: delete everything except main/production builds,
/// keep the 10 newest, never delete anything younger than 30 days.
const PARAMS: &str = r#"{"name_regex_delete": ".*", "name_regex_keep": "(main|production)-.*", "keep_n": 10, "older_than": "30d"}"#;
/// The hostile-retention plugin's mode that keeps everything doing no per-tag work.
const NOOP: &str = r#"{"mode": "noop"}"#;

const SECOND: i64 = 1_000_000;
const DAY: i64 = 86_400 * SECOND;
/// 2026-11-20T12:00:00Z, the evaluations' `now`.
const NOW: Timestamp = Timestamp::from_unix_micros(1_795_176_000 * SECOND);

fn main() {
    let options = Options::from_env();
    let mut report = Report::default();
    let machine = Machine::probe();

    let runtime = Arc::new(PluginRuntime::new(RuntimeConfig::default()).expect("cannot create the plugin runtime"));
    let path = |name: &str| {
        tagwarden::plugins::resolve(name, &[]).unwrap_or_else(|e| panic!("{e:#}\n(build the plugins first: cargo xtask build-plugins)"))
    };
    let gitlab_path = path("gitlab-retention");
    let hostile_path = path("hostile-retention");

    if options.wants("load", "gitlab") {
        let kib = std::fs::metadata(&gitlab_path).map_or(0, |m| m.len() / 1024);
        let stats = options.once(|| {
            runtime.load_file(&gitlab_path, PluginLimits::default()).expect("load gitlab-retention");
        });
        let includes = format!("read + compile the {kib} KiB component (Cranelift, both cores) + check its world + `info`");
        report.row("load", "gitlab-retention: load", &includes, None, stats);
    }
    if options.wants("load", "cached") {
        // What the CLI does from its second run on: the compiled code from the cache.
        let cache = tempfile::tempdir().expect("a temporary directory");
        let config = RuntimeConfig { compile_cache: Some(cache.path().to_owned()), ..RuntimeConfig::default() };
        let cached = Arc::new(PluginRuntime::new(config).expect("cannot create the plugin runtime"));
        cached.load_file(&gitlab_path, PluginLimits::default()).expect("load gitlab-retention");
        let stats = options.once(|| {
            let plugin = cached.load_file(&gitlab_path, PluginLimits::default()).expect("load gitlab-retention");
            assert!(plugin.meta().from_compile_cache, "the second load comes from the cache");
        });
        let includes = "read + sha256 of the component and of the cache entry + deserialize + check its world + `info`";
        report.row("load", "gitlab-retention: load from the compile cache", includes, None, stats);
    }

    // Loaded once, as a pass does; every evaluation below reuses the compiled code.
    let load =
        |path: &std::path::Path| runtime.load_file(path, PluginLimits::default()).expect("load").into_retention().expect("retention");
    let gitlab = load(&gitlab_path);
    let hostile = load(&hostile_path);
    // The same plugin built for contract 0.1, which cannot declare its columns: it is sent
    // every one. Against the 0.2 build (which reads two times), the gain of column selection.
    let gitlab_v01 = load(&workspace_root().join("tests/fixtures/contract-0.1/gitlab-retention.wasm"));
    // Built for contract 0.2.0, before the host matched names (`names`, 0.2.1): it matches
    // them in Wasm. Against the current build, the gain of host-side matching.
    let gitlab_v020 = load(&workspace_root().join("tests/fixtures/contract-0.2/gitlab-retention.wasm"));

    if options.wants_group("10") {
        small_repository(&options, &mut report, &gitlab, &hostile);
    }

    // Large lists need more than the default memory cap and 1 s.
    let big = PluginLimits { memory_bytes: 2 << 30, timeout: Duration::from_secs(60), fuel: None };
    let gitlab = gitlab.plugin().with_limits(big.clone()).into_retention().expect("retention");
    let gitlab_v01 = gitlab_v01.plugin().with_limits(big.clone()).into_retention().expect("retention");
    let gitlab_v020 = gitlab_v020.plugin().with_limits(big.clone()).into_retention().expect("retention");
    let hostile = hostile.plugin().with_limits(big).into_retention().expect("retention");
    for (group, size) in [("1k", 1_000), ("100k", 100_000), ("1m", 1_000_000)] {
        if options.wants_group(group) && !(options.quick && size > 100_000) {
            large_list(&options, &mut report, group, size, [&gitlab, &gitlab_v01, &gitlab_v020], &hostile);
        }
    }

    report.print(&machine, &options);
}

/// A 10-tag repository: the host's own overhead and the full cost of gitlab-retention,
/// with the share of params parsing and regex compilation.
fn small_repository(options: &Options, report: &mut Report, gitlab: &RetentionPlugin, hostile: &RetentionPlugin) {
    let g = "10";
    let list = synthetic_list(10);
    let input = sdk_input(&list);
    check_same_verdicts(&list, &input, &gitlab.evaluate(PARAMS, &list, NOW).expect("wasm evaluate"));
    let n = Some(10);

    if options.wants(g, "noop") {
        let stats = options.small(|| {
            black_box(hostile.evaluate(NOOP, black_box(&list), NOW).expect("noop evaluate"));
        });
        report.overhead = Some(stats.median);
        let includes = "fresh store + instantiate + create + copy the columns in + `uniform` verdicts + copy out + validate";
        report.row(g, "**host overhead**: noop plugin, full evaluation", includes, n, stats);
    }
    if options.wants(g, "noop-warm") {
        let policy = hostile.configure(NOOP).expect("noop configure");
        let stats = options.small(|| {
            black_box(policy.evaluate(black_box(&list), NOW).expect("noop evaluate"));
        });
        report.overhead_warm = Some(stats.median);
        let includes = "`ConfiguredPolicy::evaluate`: the instance kept warm from the previous repository; copy the columns in + verdicts + copy out + validate";
        report.row(g, "host overhead, warm instance: noop plugin", includes, n, stats);
    }
    if options.wants(g, "noop-create") {
        let stats = options.small(|| {
            hostile.validate_params(black_box(NOOP)).expect("noop params");
        });
        report.row(
            g,
            "noop plugin: store + instantiate + create",
            "`validate_params`: fresh store + instantiate + trivial create + drop",
            None,
            stats,
        );
    }
    if options.wants(g, "wasm") {
        let stats = options.small(|| {
            black_box(gitlab.evaluate(PARAMS, black_box(&list), NOW).expect("gitlab evaluate"));
        });
        report.small_full = Some(stats.median);
        let includes = "what the host pays per repository: store + instantiate + create (params JSON, 2 regexes) + copy the columns in + evaluate + copy out + validate";
        report.row(g, "**gitlab-retention, full evaluation (Wasm)**", includes, n, stats);
    }
    if options.wants(g, "wasm-warm") {
        let policy = gitlab.configure(PARAMS).expect("gitlab configure");
        let stats = options.small(|| {
            black_box(policy.evaluate(black_box(&list), NOW).expect("gitlab evaluate"));
        });
        report.small_warm = Some(stats.median);
        let includes = "what a pass pays per repository after the first: `Policy` keeps the configured instance warm, so no params parsing or regex compilation";
        report.row(g, "**gitlab-retention, warm instance (Wasm)**", includes, n, stats);
    }
    if options.wants(g, "wasm-create") {
        let stats = options.small(|| {
            gitlab.validate_params(black_box(PARAMS)).expect("gitlab params");
        });
        report.wasm_create = Some(stats.median);
        report.row(
            g,
            "gitlab-retention: store + instantiate + create",
            "`validate_params(params)`: the row above without tag list and evaluate",
            None,
            stats,
        );
    }
    if options.wants(g, "wasm-create-empty") {
        let stats = options.small(|| {
            gitlab.validate_params(black_box("{}")).expect("gitlab empty params");
        });
        report.wasm_create_empty = Some(stats.median);
        let includes = "`validate_params(\"{}\")`: no regex; the difference to the row above is params + regex compilation in Wasm";
        report.row(g, "gitlab-retention: store + instantiate + create, no params", includes, None, stats);
    }
    if options.wants(g, "native-create") {
        let stats = options.small(|| {
            black_box(GitlabRetention::create(black_box(PARAMS)).expect("native create"));
        });
        report.native_create = Some(stats.median);
        report.row(
            g,
            "native `create` alone",
            "parse the params JSON, build lazy DFAs for `\\A.*\\z` and `\\A(main|production)-.*\\z`",
            None,
            stats,
        );
    }
    if options.wants(g, "native") {
        let policy = GitlabRetention::create(PARAMS).expect("native create");
        let stats = options.small(|| {
            black_box(policy.evaluate(black_box(&input)).expect("native evaluate"));
        });
        report.row(g, "native `evaluate` alone", "policy already created, SDK input already built", n, stats);
    }
    if options.wants(g, "native-full") {
        let stats = options.small(|| {
            let input = sdk_input(black_box(&list));
            let policy = GitlabRetention::create(black_box(PARAMS)).expect("native create");
            black_box(policy.evaluate(&input).expect("native evaluate"));
        });
        report.row(g, "native build input + `create` + `evaluate`", "the in-process equivalent of one host evaluation", n, stats);
    }
}

/// A large synthetic list: native versus Wasm, plus the noop plugin for the share of the
/// host, the copies and the SDK's decoding and encoding.
fn large_list(
    options: &Options,
    report: &mut Report,
    group: &'static str,
    size: usize,
    [gitlab, gitlab_v01, gitlab_v020]: [&RetentionPlugin; 3],
    hostile: &RetentionPlugin,
) {
    let list = synthetic_list(size);
    let input = sdk_input(&list);
    check_same_verdicts(&list, &input, &gitlab.evaluate(PARAMS, &list, NOW).expect("wasm evaluate"));
    let n = Some(size);
    let mut ratio = Ratio {
        size,
        native: None,
        native_full: None,
        wasm: None,
        wasm_warm: None,
        wasm_warm_v01: None,
        wasm_warm_v020: None,
        noop: None,
        columns: None,
    };

    if options.wants(group, "native") {
        let policy = GitlabRetention::create(PARAMS).expect("native create");
        let stats = options.large(size, || {
            black_box(policy.evaluate(black_box(&input)).expect("native evaluate"));
        });
        ratio.native = Some(stats.median);
        report.row(group, "native `evaluate` alone", "policy already created, SDK input already built", n, stats);
    }
    if options.wants(group, "paired") && size == 100_000 {
        // The §4 reading, made robust to a noisy machine: native `evaluate`, the configured
        // policy and the 0.2.0 build's configured policy take turns, one evaluation each per
        // round (order rotating), and the ratio is taken within each round. A slow phase of
        // the machine then slows all three alike instead of whichever case it fell on.
        let native = GitlabRetention::create(PARAMS).expect("native create");
        let (current, v020) = (gitlab.configure(PARAMS).expect("configure"), gitlab_v020.configure(PARAMS).expect("configure"));
        let cases: [&dyn Fn(); 3] = [
            &|| drop(black_box(native.evaluate(black_box(&input)).expect("native evaluate"))),
            &|| drop(black_box(current.evaluate(black_box(&list), NOW).expect("wasm evaluate"))),
            &|| drop(black_box(v020.evaluate(black_box(&list), NOW).expect("wasm evaluate"))),
        ];
        let (min_rounds, min_time) = if options.quick { (5, Duration::from_millis(300)) } else { (100, Duration::from_secs(6)) };
        let mut times: [Vec<Duration>; 3] = Default::default();
        cases.iter().for_each(|case| case());
        let started = Instant::now();
        let mut round = 0;
        while round < min_rounds || started.elapsed() < min_time {
            for k in 0..3 {
                let c = (round + k) % 3;
                let t = Instant::now();
                cases[c]();
                times[c].push(t.elapsed());
            }
            round += 1;
        }
        let per_round = |c: usize| median((0..round).map(|i| times[c][i].as_secs_f64() / times[0][i].as_secs_f64()).collect());
        let (current, v020) = (per_round(1), per_round(2));
        let medians = times.map(|t| Duration::from_secs_f64(median(t.iter().map(Duration::as_secs_f64).collect())));
        report.paired = Some(Paired { rounds: round, medians, current, v020 });
    }
    if options.wants(group, "native-full") {
        let stats = options.large(size, || {
            let input = sdk_input(black_box(&list));
            let policy = GitlabRetention::create(black_box(PARAMS)).expect("native create");
            black_box(policy.evaluate(&input).expect("native evaluate"));
        });
        ratio.native_full = Some(stats.median);
        report.row(group, "native build input + `create` + `evaluate`", "the in-process equivalent of one host evaluation", n, stats);
    }
    if options.wants(group, "wasm") {
        let stats = options.large(size, || {
            black_box(gitlab.evaluate(PARAMS, black_box(&list), NOW).expect("wasm evaluate"));
        });
        ratio.wasm = Some(stats.median);
        let includes = "store + instantiate + create + copy the columns in + SDK checks + evaluate + SDK encode + copy out + validate";
        report.row(group, "**gitlab-retention, full evaluation (Wasm)**", includes, n, stats);
    }
    if options.wants(group, "wasm-warm") {
        let policy = gitlab.configure(PARAMS).expect("gitlab configure");
        let stats = options.large(size, || {
            black_box(policy.evaluate(black_box(&list), NOW).expect("wasm evaluate"));
        });
        ratio.wasm_warm = Some(stats.median);
        let kept = if policy.warm_instances() > 0 { "kept warm" } else { "too large to keep warm: each call got a fresh store" };
        let includes = format!("`ConfiguredPolicy::evaluate`, as a pass calls it: the same instance for every repository ({kept})");
        report.row(group, "gitlab-retention, configured policy (Wasm)", &includes, n, stats);
    }
    if options.wants(group, "wasm-warm-0.1") {
        let policy = gitlab_v01.configure(PARAMS).expect("gitlab 0.1 configure");
        assert_eq!(policy.evaluate(&list, NOW).expect("wasm evaluate"), gitlab.evaluate(PARAMS, &list, NOW).expect("wasm evaluate"));
        let stats = options.large(size, || {
            black_box(policy.evaluate(black_box(&list), NOW).expect("wasm evaluate"));
        });
        ratio.wasm_warm_v01 = Some(stats.median);
        let includes = "the row above with the same plugin built for contract 0.1 (`tests/fixtures/contract-0.1/`), which cannot declare its columns: every column is copied in, digests and all";
        report.row(group, "gitlab-retention 0.1 build, configured policy (Wasm)", includes, n, stats);
    }
    if options.wants(group, "wasm-warm-0.2.0") {
        let policy = gitlab_v020.configure(PARAMS).expect("gitlab 0.2.0 configure");
        assert_eq!(policy.evaluate(&list, NOW).expect("wasm evaluate"), gitlab.evaluate(PARAMS, &list, NOW).expect("wasm evaluate"));
        let stats = options.large(size, || {
            black_box(policy.evaluate(black_box(&list), NOW).expect("wasm evaluate"));
        });
        ratio.wasm_warm_v020 = Some(stats.median);
        let includes = "the configured policy row with the plugin built for contract 0.2.0 (`tests/fixtures/contract-0.2/`), which matches names in Wasm, not in the host";
        report.row(group, "gitlab-retention 0.2.0 build, configured policy (Wasm)", includes, n, stats);
    }
    if options.wants(group, "wasm-warm-baseline") {
        // The baseline tier a daemon serves a new plugin version with until Cranelift's
        // code is ready (`RuntimeConfig::tiered_compilation`), held there for the bench.
        let runtime = Arc::new(PluginRuntime::new(RuntimeConfig { tiered_compilation: true, ..RuntimeConfig::default() }).unwrap());
        let _hold = runtime.hold_background_compiles();
        let path = tagwarden::plugins::resolve("gitlab-retention", &[]).unwrap();
        let baseline = runtime.load_file(&path, gitlab.plugin().limits().clone()).unwrap();
        let tier = baseline.tier();
        let policy = baseline.into_retention().unwrap().configure(PARAMS).expect("gitlab configure");
        assert_eq!(policy.evaluate(&list, NOW).expect("wasm evaluate"), gitlab.evaluate(PARAMS, &list, NOW).expect("wasm evaluate"));
        let stats = options.large(size, || {
            black_box(policy.evaluate(black_box(&list), NOW).expect("wasm evaluate"));
        });
        let includes =
            format!("the configured policy row with {tier:?} code (Winch, x86_64 only), what serves until the optimized code is compiled");
        report.row(group, "gitlab-retention, configured policy, baseline code (Wasm)", &includes, n, stats);
    }
    if options.wants(group, "noop") {
        let stats = options.large(size, || {
            black_box(hostile.evaluate(NOOP, black_box(&list), NOW).expect("noop evaluate"));
        });
        ratio.noop = Some(stats.median);
        report.row(group, "noop plugin, full evaluation (Wasm)", "the same path, but the plugin decides nothing", n, stats);
    }
    if options.wants(group, "columns") {
        let stats = options.large(size, || {
            black_box(ListColumns::build(black_box(list.tags()), list.untagged()));
        });
        ratio.columns = Some(stats.median);
        let includes = "paid once per listing, inside `TagList::new`: names back to back, digests and media types interned; every evaluation and the deletion planner reuse it";
        report.row(group, "list columns (`ListColumns::build`)", includes, n, stats);
    }
    report.ratios.push(ratio);
}

// ---------------------------------------------------------------------------------------
// Synthetic data

/// A deterministic generator (splitmix64): the same list on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const FEATURES: &[&str] = &["login", "billing", "search", "api-v2", "dark-mode", "checkout", "onboarding", "metrics", "sso", "export"];

/// `n` tags with realistic names (all distinct), unique digests, times spread over a
/// year with some unknown, and the other fields a registry reports.
fn synthetic_list(n: usize) -> TagList {
    let mut rng = Rng(0x7461_6777_6172_6465 ^ n as u64);
    let mut counters = [0u64; 6];
    let mut tags = Vec::with_capacity(n);
    for i in 0..n {
        let name = if i == 0 {
            "latest".to_owned()
        } else {
            let kind = match rng.below(100) {
                0..20 => 0,  // v1.2.3
                20..45 => 1, // main-<sha>
                45..70 => 2, // feature-<topic>-<n>
                70..80 => 3, // production-<n>
                80..95 => 4, // dev-<n>
                _ => 5,      // v1.2.3-rc.<n>
            };
            let k = counters[kind];
            counters[kind] += 1;
            match kind {
                0 => format!("v{}.{}.{}", k / 10_000 + 1, k / 100 % 100, k % 100),
                // Odd multiplier: a bijection on 28 bits, so 7 hex digits never collide.
                1 => format!("main-{:07x}", k.wrapping_mul(0x9e3_779b) & 0xfff_ffff),
                2 => format!("feature-{}-{k}", FEATURES[(k % FEATURES.len() as u64) as usize]),
                3 => format!("production-{k}"),
                4 => format!("dev-{k}"),
                _ => format!("v{}.{}.{}-rc.{}", k / 50_000 + 1, k / 500 % 100, k / 5 % 100, k % 5 + 1),
            }
        };
        let mut tag = Tag::new(name, Digest::sha256_of(&(i as u64).to_le_bytes()));
        let time = |rng: &mut Rng| Timestamp::from_unix_micros(NOW.unix_micros() - (rng.below(365 * DAY as u64) as i64));
        // GitLab reports `created_at` for almost every tag and `updated_at` (pushed) often.
        tag.created_at = (rng.below(100) >= 5).then(|| time(&mut rng));
        tag.pushed_at = (rng.below(100) < 60).then(|| time(&mut rng));
        tag.last_pulled_at = (rng.below(100) < 30).then(|| time(&mut rng));
        tag.size_bytes = Some(20_000_000 + rng.below(400_000_000));
        tag.media_type = Some(MediaType::from(if rng.below(4) == 0 {
            "application/vnd.oci.image.index.v1+json"
        } else {
            "application/vnd.docker.distribution.manifest.v2+json"
        }));
        tags.push(tag);
    }
    // A registry lists tags sorted by name, and a listing or recording allocates them in
    // that order: lay the strings out the same way, not in generation order.
    tags.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let listed: Vec<Tag> =
        tags.iter().map(|t| Tag { name: t.name.clone(), digest: t.digest.clone(), media_type: t.media_type.clone(), ..*t }).collect();
    drop(tags);
    TagList::new("group/app", listed, Vec::new()).expect("synthetic names are distinct")
}

/// The SDK's view of `list`, borrowing from it: what the native policy is given.
fn sdk_input(list: &TagList) -> sdk::RetentionInput<'_> {
    let time = |t: Option<Timestamp>| t.map(|t| sdk::Timestamp::from_unix_micros(t.unix_micros()));
    sdk::RetentionInput {
        repository: &list.repository,
        now: sdk::Timestamp::from_unix_micros(NOW.unix_micros()),
        tags: list
            .tags()
            .iter()
            .map(|t| {
                sdk::Tag::new(&t.name, t.digest.as_str())
                    .with_created_at(time(t.created_at))
                    .with_pushed_at(time(t.pushed_at))
                    .with_last_pulled_at(time(t.last_pulled_at))
                    .with_size_bytes(t.size_bytes)
                    .with_media_type(t.media_type.as_deref())
            })
            .collect(),
        untagged: list
            .untagged()
            .iter()
            .map(|u| sdk::UntaggedManifest::new(u.digest.as_str()).with_created_at(time(u.created_at)).with_pushed_at(time(u.pushed_at)))
            .collect(),
    }
}

/// Native and Wasm must agree verdict for verdict, or the comparison means nothing.
fn check_same_verdicts(list: &TagList, input: &sdk::RetentionInput<'_>, wasm: &RetentionDecisions) {
    let native = GitlabRetention::create(PARAMS).expect("native create").evaluate(input).expect("native evaluate");
    assert_eq!(wasm.tag_count(), native.tags.len());
    for (i, v) in native.tags.iter().enumerate() {
        let rule = wasm.tag(i);
        let action = match v.action {
            sdk::Action::Keep => Action::Keep,
            sdk::Action::Delete => Action::Delete,
        };
        assert!(rule.action == action && rule.reason == v.reason, "tag {}: wasm {:?}, native {v:?}", list.tags()[i].name, rule);
    }
    let deletes = native.tags.iter().filter(|v| v.action == sdk::Action::Delete).count();
    assert!(deletes > 0 || list.tags().len() < 100, "a large synthetic list should have deletions");
}

// ---------------------------------------------------------------------------------------
// Measurement

struct Options {
    quick: bool,
    filter: Option<String>,
}

impl Options {
    fn from_env() -> Self {
        let quick = std::env::var("TAGWARDEN_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        // `cargo bench` passes `--bench`; any other flag is ignored too.
        let filter = std::env::args()
            .skip(1)
            .find(|a| !a.starts_with('-'))
            .or_else(|| std::env::var("TAGWARDEN_BENCH_FILTER").ok())
            .filter(|f| !f.is_empty());
        Options { quick, filter }
    }

    /// Whether any case of `group` runs.
    fn wants_group(&self, group: &str) -> bool {
        self.tokens().is_none_or(|mut t| {
            t.any(|t| t.eq_ignore_ascii_case(group) || t.split_once('/').is_some_and(|(g, _)| g.eq_ignore_ascii_case(group)))
        })
    }

    /// Whether case `group/key` runs: its group or the case itself is named.
    fn wants(&self, group: &str, key: &str) -> bool {
        let case = format!("{group}/{key}");
        self.tokens().is_none_or(|mut t| t.any(|t| t.eq_ignore_ascii_case(group) || t.eq_ignore_ascii_case(&case)))
    }

    fn tokens(&self) -> Option<impl Iterator<Item = &str>> {
        self.filter.as_deref().map(|f| f.split(',').map(str::trim))
    }

    /// Microsecond-scale cases: thousands of samples.
    fn small(&self, f: impl FnMut()) -> Stats {
        if self.quick {
            measure(Duration::from_millis(100), Duration::from_millis(300), 300, f)
        } else {
            measure(Duration::from_millis(500), Duration::from_secs(3), 3_000, f)
        }
    }

    /// Millisecond-to-second cases: at least 2 s and enough runs for a p90.
    fn large(&self, size: usize, f: impl FnMut()) -> Stats {
        let runs = if size >= 1_000_000 { 7 } else { 20 };
        if self.quick {
            measure(Duration::from_millis(50), Duration::from_millis(300), 3, f)
        } else {
            measure(Duration::from_millis(300), Duration::from_secs(3), runs, f)
        }
    }

    /// A case that is slow and cold by nature (loading a plugin): no warm-up, few runs.
    fn once(&self, f: impl FnMut()) -> Stats {
        if self.quick { measure(Duration::ZERO, Duration::ZERO, 1, f) } else { measure(Duration::ZERO, Duration::from_secs(2), 5, f) }
    }
}

#[derive(Debug, Clone)]
struct Stats {
    median: Duration,
    p90: Duration,
    min: Duration,
    samples: usize,
    /// Evaluations per sample (batching of sub-microsecond cases).
    batch: u32,
}

/// Warms up for `warmup`, then samples until both `min_time` has passed and `min_samples`
/// were taken. Cases under ~20 µs are timed in batches so that the clock's own cost
/// (~25 ns) stays below 1 %.
fn measure(warmup: Duration, min_time: Duration, min_samples: usize, mut f: impl FnMut()) -> Stats {
    let start = Instant::now();
    let mut one = Duration::MAX;
    loop {
        let t = Instant::now();
        f();
        one = one.min(t.elapsed());
        if start.elapsed() >= warmup {
            break;
        }
    }
    let batch = if one < Duration::from_micros(20) {
        (Duration::from_micros(20).as_nanos() / one.as_nanos().max(1)).clamp(1, 100_000) as u32
    } else {
        1
    };
    let max_samples = 1_000_000;
    let mut samples = Vec::with_capacity(min_samples);
    let start = Instant::now();
    while samples.len() < max_samples && (samples.len() < min_samples || start.elapsed() < min_time) {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        samples.push(t.elapsed() / batch);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    Stats { median: at(0.5), p90: at(0.9), min: samples[0], samples: samples.len(), batch }
}

// ---------------------------------------------------------------------------------------
// Report

struct Row {
    group: &'static str,
    case: String,
    includes: String,
    tags: Option<usize>,
    stats: Stats,
}

struct Ratio {
    size: usize,
    native: Option<Duration>,
    native_full: Option<Duration>,
    wasm: Option<Duration>,
    wasm_warm: Option<Duration>,
    /// The contract-0.1 build's configured policy: every column sent.
    wasm_warm_v01: Option<Duration>,
    /// The contract-0.2.0 build's configured policy: names matched in Wasm.
    wasm_warm_v020: Option<Duration>,
    noop: Option<Duration>,
    columns: Option<Duration>,
}

/// The interleaved reading at 100k tags (case `paired`).
struct Paired {
    rounds: usize,
    /// Median times of native `evaluate`, the configured policy, the 0.2.0 build's.
    medians: [Duration; 3],
    /// Median over rounds of configured policy ÷ native `evaluate`.
    current: f64,
    /// The same for the 0.2.0 build (names matched in Wasm).
    v020: f64,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    paired: Option<Paired>,
    ratios: Vec<Ratio>,
    overhead: Option<Duration>,
    overhead_warm: Option<Duration>,
    small_full: Option<Duration>,
    small_warm: Option<Duration>,
    wasm_create: Option<Duration>,
    wasm_create_empty: Option<Duration>,
    native_create: Option<Duration>,
}

impl Report {
    fn row(&mut self, group: &'static str, case: &str, includes: &str, tags: Option<usize>, stats: Stats) {
        eprintln!(
            "bench: {group:>4} | {case} | median {} p90 {} min {} ({} samples x {})",
            fmt_duration(stats.median),
            fmt_duration(stats.p90),
            fmt_duration(stats.min),
            stats.samples,
            stats.batch
        );
        self.rows.push(Row { group, case: case.to_owned(), includes: includes.to_owned(), tags, stats });
    }

    fn print(&self, machine: &Machine, options: &Options) {
        println!(
            "Machine: {} ({} cores), {}; 1-minute load average before / after: {} / {}",
            machine.cpu,
            machine.cores,
            machine.rustc,
            machine.load_before,
            common::load_average()
        );
        if options.quick {
            println!("Quick run (TAGWARDEN_BENCH_QUICK): few samples, no 1M list; not for the record.");
        }
        println!();
        println!("| tags | case | includes | median | p90 | min | median per tag | samples |");
        println!("|-----:|------|----------|-------:|----:|----:|---------------:|--------:|");
        for r in &self.rows {
            let per_tag = r.tags.map_or(String::new(), |n| fmt_duration(r.stats.median / n as u32));
            let samples = if r.stats.batch > 1 { format!("{} × {}", r.stats.samples, r.stats.batch) } else { r.stats.samples.to_string() };
            let tags = if r.group == "load" { "–".to_owned() } else { r.group.replace('m', "M") };
            println!(
                "| {tags} | {} | {} | {} | {} | {} | {per_tag} | {samples} |",
                r.case,
                r.includes,
                fmt_duration(r.stats.median),
                fmt_duration(r.stats.p90),
                fmt_duration(r.stats.min)
            );
        }
        println!();
        println!(
            "Native rows run gitlab-retention compiled into this benchmark (release profile); the `.wasm` is built with the \
             `plugin` profile (LTO, SIMD128). Both match names with the same code (a lazy DFA walked by `sdk::names::Matcher`), \
             which the Wasm build has the host run (`names`, contract 0.2.1). \
             Synthetic tags are allocated in name order, as a registry listing or a recording delivers them. Lists of 1k tags and \
             more run with a 2 GiB memory cap and a 60 s timeout; the 10-tag cases use the default limits."
        );
        let show =
            |a: Option<Duration>, b: Option<Duration>, f: fn(f64) -> String| a.zip(b).map_or("–".to_owned(), |(a, b)| f(ratio(a, b)));
        let times = |x: f64| format!("{x:.2}×");
        let percent = |x: f64| format!("{:.0} %", 100.0 * x);
        if !self.ratios.is_empty() {
            println!();
            println!(
                "| tags | Wasm, fresh store ÷ native `evaluate` | Wasm, configured policy ÷ native `evaluate` | 0.1 build, configured policy ÷ native `evaluate` | 0.2.0 build (names matched in Wasm), configured ÷ native `evaluate` | column selection: time saved (0.2 vs 0.1 build, configured) | (configured + list columns) ÷ native `evaluate` | (configured + list columns) ÷ native build + create + evaluate | noop plugin ÷ Wasm, fresh store |"
            );
            println!("|-----:|---:|---:|---:|---:|---:|---:|---:|---:|");
            let saved = |x: f64| format!("{:.0} %", 100.0 * (1.0 - x));
            for r in &self.ratios {
                let per_pass = r.wasm_warm.zip(r.columns).map(|(w, c)| w + c);
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    size_label(r.size),
                    show(r.wasm, r.native, times),
                    show(r.wasm_warm, r.native, times),
                    show(r.wasm_warm_v01, r.native, times),
                    show(r.wasm_warm_v020, r.native, times),
                    show(r.wasm_warm, r.wasm_warm_v01, saved),
                    show(per_pass, r.native, times),
                    show(per_pass, r.native_full, times),
                    show(r.noop, r.wasm, percent)
                );
            }
        }
        println!();
        if let Some(r) = self.ratios.iter().find(|r| r.size == 100_000)
            && let (Some(fresh), Some(warm), Some(native), Some(native_full), Some(columns)) =
                (r.wasm, r.wasm_warm, r.native, r.native_full, r.columns)
        {
            // Two like-for-like readings. Evaluation: each side has its input ready (the
            // list's columns; the native `Vec<Tag>`). Per listing: each side also builds
            // that input from the host's list (and native creates its policy).
            let (evaluation, per_listing) = (ratio(warm, native), ratio(warm + columns, native_full));
            let verdict = |x: f64| if x <= 2.0 { "met" } else { "missed" };
            println!(
                "- Target Wasm ≤ 2× native at 100k tags: evaluation {evaluation:.2}× (configured policy ÷ native `evaluate`): \
                 **{}**; per listing {per_listing:.2}× (list columns + configured policy ÷ native build input + `create` + \
                 `evaluate`): **{}**; a fresh store (what `tagwarden eval` uses) is {:.2}× native `evaluate`.",
                verdict(evaluation),
                verdict(per_listing),
                ratio(fresh, native)
            );
            let verdict = if evaluation <= 1.5 { "met" } else { "missed" };
            println!("- Target (contract 0.2) configured policy ≤ 1.5× native `evaluate` at 100k tags: {evaluation:.2}×: **{verdict}**.");
        }
        if let Some(p) = &self.paired {
            let verdict = if p.current <= 1.5 { "met" } else { "missed" };
            println!(
                "- Target (contract 0.2) configured policy ≤ 1.5× native `evaluate` at 100k tags, interleaved over {} rounds \
                 (median of per-round ratios): **{:.2}×: {verdict}**; the 0.2.0 build, which matches names in Wasm: {:.2}×. \
                 Median times: native {}, configured policy {}, 0.2.0 build {}.",
                p.rounds,
                p.current,
                p.v020,
                fmt_duration(p.medians[0]),
                fmt_duration(p.medians[1]),
                fmt_duration(p.medians[2])
            );
        }
        if let Some(o) = self.overhead {
            let verdict = if o <= Duration::from_micros(50) { "met" } else { "missed" };
            let warm = self.overhead_warm.map_or(String::new(), |w| format!("; {} with a warm instance", fmt_duration(w)));
            println!("- Target host overhead ≤ 50 µs per evaluation: {} (median, fresh store){warm}: **{verdict}**.", fmt_duration(o));
        }
        if let Some(full) = self.small_full {
            let mut line = format!("- gitlab-retention on 10 tags costs {} per evaluation (median)", fmt_duration(full));
            if let (Some(create), Some(empty)) = (self.wasm_create, self.wasm_create_empty) {
                let params = create.saturating_sub(empty);
                line += &format!(
                    "; params + regex compilation in Wasm take {} of it ({:.0} %)",
                    fmt_duration(params),
                    100.0 * ratio(params, full)
                );
            }
            if let Some(native) = self.native_create {
                line += &format!("; natively `create` takes {}", fmt_duration(native));
            }
            if let Some(warm) = self.small_warm {
                line += &format!("; with the instance kept warm between repositories it costs {}", fmt_duration(warm));
            }
            println!("{line}.");
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values[values.len() / 2]
}

fn size_label(n: usize) -> String {
    match n {
        1_000_000 => "1M".to_owned(),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// Three significant digits in the most readable unit.
fn fmt_duration(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}")
}

struct Machine {
    cpu: String,
    cores: usize,
    rustc: String,
    load_before: String,
}

impl Machine {
    fn probe() -> Self {
        Machine { cpu: common::cpu_model(), cores: common::cores(), rustc: common::rustc_version(), load_before: common::load_average() }
    }
}

/// The workspace root, where `tests/fixtures/` is.
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is in the workspace").to_path_buf()
}
