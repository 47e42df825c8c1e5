//! A mutation campaign over every parser of outside input, for a bounded time:
//!
//! ```text
//! cargo xtask fuzz                      # 60 s
//! cargo xtask fuzz -- --seconds 600 --seed 7
//! ```
//!
//! Seeds are the example inputs (`examples/`, `tests/golden/`). Each execution mutates
//! one (byte flips, inserts, deletions, repeated ranges, splices from another seed,
//! and tokens that broke parsers before: duplicate keys, huge numbers, other timestamp
//! separators, NUL, escape sequences), runs a parser on it, and counts:
//!
//! - **crashes**: the parser panicked (the input is saved under `<target>/fuzz-findings/`);
//! - **hangs**: one execution took longer than 1 s (a plugin call: its deadline + 50 ms);
//! - **accepted-invalid**: the parser accepted input that an independent check says is
//!   invalid (trailing data, a duplicate key, a timestamp separator other than `T`, a
//!   config value out of its bounds).
//!
//! Targets: `recording`, `config`, `params` (the SDK's reader and gitlab-retention's
//! `create`, natively), `timestamp`, `duration` (the SDK's), `plugin` (gitlab-retention
//! through Wasm with mutated params over the docs example). The output is the markdown
//! table in docs/benchmarks.md ("Reliability"). Exit status 1 if anything was found.

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gitlab_retention::GitlabRetention;
use tagwarden::config::Config;
use tagwarden::model::Timestamp;
use tagwarden::recording::Recording;
use tagwarden::runtime::{FailureCause, PluginLimits, PluginRuntime, RetentionPlugin, RuntimeConfig};
use tagwarden_plugin_sdk::RetentionPolicy;
use tagwarden_plugin_sdk::params::{Params, parse_duration};

/// A parser execution slower than this is a hang.
const HANG: Duration = Duration::from_secs(1);
/// The plugin's deadline in the `plugin` target; a call past it by more than 50 ms is a hang.
const PLUGIN_TIMEOUT: Duration = Duration::from_millis(200);

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Fragments that broke or could break a parser.
const TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\\u0000",
    "\0",
    "\x1b[31m",
    "\n",
    "\r",
    "18446744073709551616",
    "18446744073709551615",
    "17592186044416",
    "-1",
    "0",
    "1e400",
    "-0",
    "0s",
    "\"\"",
    "null",
    "true",
    "X",
    "T",
    " ",
    "t",
    "2026-10-01X12:00:00Z",
    "\"keep_n\": 1000, \"keep_n\": 1",
    "\"tags\": [], ",
    "} {",
    "\u{202e}",
    "é",
    "\u{ffff}",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "\"sha256:",
    "7d",
    "1h 30m",
    "999999999y",
    "memory_mib = 18446744073709551615\n",
    "timeout = \"0s\"\n",
    "repositories = [\"\"]\n",
    "name = \"\"\n",
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                data.splice(at..at, token.iter().copied());
            }
            2 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 if at < data.len() => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(end..end, copy);
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(64)).min(other.len());
                data.splice(at..at, other[from..end].iter().copied());
            }
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data
}

/// What one execution found.
enum Verdict {
    Rejected,
    Accepted,
    AcceptedInvalid(String),
}

#[derive(Default)]
struct Tally {
    executions: u64,
    accepted: u64,
    crashes: u64,
    hangs: u64,
    accepted_invalid: u64,
    slowest: Duration,
}

/// Runs one parser on one input and judges what it did.
type Run = Box<dyn Fn(&[u8]) -> Verdict>;

struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: Run,
    hang_after: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<u64>().ok());
    let seconds = arg("--seconds").unwrap_or(60);
    let seed = arg("--seed").unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    let workspace = workspace();
    let findings = target_dir(&workspace).join("fuzz-findings");
    // Panics are counted, not printed: the input that caused one is saved instead.
    std::panic::set_hook(Box::new(|_| {}));

    let targets = targets(&workspace);
    let mut rng = Rng(seed);
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut examples: BTreeMap<String, String> = BTreeMap::new();
    while Instant::now() < deadline {
        for (t, tally) in targets.iter().zip(tallies.iter_mut()) {
            for _ in 0..64 {
                let seed_input = &t.seeds[rng.below(t.seeds.len())];
                let other = &t.seeds[rng.below(t.seeds.len())];
                let input = mutate(&mut rng, seed_input, other);
                let started = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
                let took = started.elapsed();
                tally.executions += 1;
                tally.slowest = tally.slowest.max(took);
                if took > t.hang_after {
                    tally.hangs += 1;
                    save(&findings, t.name, "hang", tally.hangs, &input);
                }
                match outcome {
                    Err(_) => {
                        tally.crashes += 1;
                        save(&findings, t.name, "crash", tally.crashes, &input);
                    }
                    Ok(Verdict::Rejected) => {}
                    Ok(Verdict::Accepted) => tally.accepted += 1,
                    Ok(Verdict::AcceptedInvalid(why)) => {
                        tally.accepted += 1;
                        tally.accepted_invalid += 1;
                        examples.entry(t.name.to_owned()).or_insert(why);
                        save(&findings, t.name, "accepted-invalid", tally.accepted_invalid, &input);
                    }
                }
            }
        }
    }
    let _ = std::panic::take_hook();

    println!(
        "fuzz: {seconds} s, seed {seed}, on {} ({} cores), {}, load before: {}",
        common::cpu_model(),
        common::cores(),
        common::rustc_version(),
        common::load_average()
    );
    println!();
    println!("| target | executions | accepted | crashes | hangs | accepted-invalid | slowest |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (t, tally) in targets.iter().zip(&tallies) {
        println!(
            "| `{}` | {} | {} | {} | {} | {} | {:.1?} |",
            t.name, tally.executions, tally.accepted, tally.crashes, tally.hangs, tally.accepted_invalid, tally.slowest
        );
    }
    for (target, why) in &examples {
        println!("\n{target}: accepted invalid input, e.g. {why}");
    }
    let found: u64 = tallies.iter().map(|t| t.crashes + t.hangs + t.accepted_invalid).sum();
    if found > 0 {
        println!("\ninputs saved in {}", findings.display());
        std::process::exit(1);
    }
}

fn save(dir: &Path, target: &str, kind: &str, n: u64, input: &[u8]) {
    // The first few of each kind are enough to reproduce.
    if n <= 5 {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("{target}-{kind}-{n}")), input);
    }
}

fn targets(workspace: &Path) -> Vec<Target> {
    let read_all = |paths: Vec<PathBuf>| -> Vec<Vec<u8>> { paths.iter().map(|p| std::fs::read(p).expect("seed file")).collect() };
    let goldens: Vec<PathBuf> = std::fs::read_dir(workspace.join("tests/golden")).unwrap().map(|e| e.unwrap().path()).collect();
    let recordings = read_all(
        std::fs::read_dir(workspace.join("examples/recordings"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .chain(goldens.iter().map(|g| g.join("recording.json")))
            .collect(),
    );
    let params = read_all(
        std::iter::once(workspace.join("examples/gitlab-docs-example.params.json"))
            .chain(goldens.iter().map(|g| g.join("params.json")))
            .collect(),
    );
    let configs = read_all(vec![workspace.join("examples/tagwarden.toml"), workspace.join("examples/tagwarden-recordings.toml")]);
    let timestamps: Vec<Vec<u8>> =
        ["2026-11-20T12:00:00Z", "2026-11-01T10:00:00.5+02:00", "1970-01-01t00:00:00z", "2026-11-20T12:00:00.123456789-00:30"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
    let durations: Vec<Vec<u8>> =
        ["7d", "1h 30m", "2 weeks", "1month", "500ms", "1d,12h", "0s"].iter().map(|s| s.as_bytes().to_vec()).collect();

    let runtime = Arc::new(PluginRuntime::new(RuntimeConfig::default()).expect("runtime"));
    let plugin_path = tagwarden::plugins::resolve("gitlab-retention", &[]).expect("build the plugins first: cargo xtask build-plugins");
    let limits = PluginLimits { timeout: PLUGIN_TIMEOUT, ..PluginLimits::default() };
    let plugin: RetentionPlugin = runtime.load_file(&plugin_path, limits).expect("gitlab-retention loads").into_retention().unwrap();
    let example = Recording::read(&workspace.join("examples/recordings/gitlab-docs-example.json")).unwrap();

    vec![
        Target { name: "recording", seeds: recordings, run: Box::new(recording), hang_after: HANG },
        Target { name: "config", seeds: configs, run: Box::new(config), hang_after: HANG },
        Target { name: "params", seeds: params.clone(), run: Box::new(params_target), hang_after: HANG },
        Target { name: "timestamp", seeds: timestamps, run: Box::new(timestamp), hang_after: HANG },
        Target { name: "duration", seeds: durations, run: Box::new(duration), hang_after: HANG },
        Target {
            name: "plugin",
            seeds: params,
            run: Box::new(move |input| {
                let Ok(text) = std::str::from_utf8(input) else { return Verdict::Rejected };
                match plugin.evaluate(text, &example.list, example.recorded_at) {
                    Ok(_) => strict_json(text).map_or(Verdict::Accepted, Verdict::AcceptedInvalid),
                    // A deadline hit is counted as a hang by its time; other errors are answers.
                    Err(e) if matches!(e.cause, FailureCause::Timeout(_)) => Verdict::Rejected,
                    Err(_) => Verdict::Rejected,
                }
            }),
            hang_after: PLUGIN_TIMEOUT + Duration::from_millis(50),
        },
    ]
}

/// Why `text` is not one JSON value without duplicate keys, if it is not.
fn strict_json(text: &str) -> Option<String> {
    tagwarden::input::json_without_duplicate_keys(text).err().map(|e| format!("{e} in {text:?}"))
}

/// Every timestamp field (`*_at`) in `value` must separate date and time with `T`.
fn timestamps_strict(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Array(a) => a.iter().find_map(timestamps_strict),
        serde_json::Value::Object(o) => o.iter().find_map(|(k, v)| match v {
            serde_json::Value::String(s) if k.ends_with("_at") && looks_like_a_date(s) => {
                (!matches!(s.as_bytes()[10], b'T' | b't')).then(|| format!("{k} {s:?}"))
            }
            other => timestamps_strict(other),
        }),
        _ => None,
    }
}

/// `YYYY-MM-DD` and more: a date-time, or a tag name that happens to look like one.
fn looks_like_a_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > 10 && b[..10].iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
}

fn recording(input: &[u8]) -> Verdict {
    let Ok(text) = tagwarden::input::utf8(input.to_vec()) else { return Verdict::Rejected };
    let Ok(r) = Recording::parse(&text) else { return Verdict::Rejected };
    if let Some(why) = strict_json(&text) {
        return Verdict::AcceptedInvalid(why);
    }
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    if let Some(why) = timestamps_strict(&value) {
        return Verdict::AcceptedInvalid(why);
    }
    // What was accepted reads back identically once written.
    let mut out = Vec::new();
    r.write_to(&mut out).unwrap();
    match Recording::parse(std::str::from_utf8(&out).unwrap()) {
        Ok(again) if again == r => Verdict::Accepted,
        _ => Verdict::AcceptedInvalid("did not read back identically".to_owned()),
    }
}

fn config(input: &[u8]) -> Verdict {
    let Ok(text) = tagwarden::input::utf8(input.to_vec()) else { return Verdict::Rejected };
    let Ok(c) = Config::parse(&text) else { return Verdict::Rejected };
    for p in &c.policies {
        let bad = if !(1..=4096).contains(&p.memory_mib) {
            Some(format!("memory_mib = {}", p.memory_mib))
        } else if p.timeout.is_zero() {
            Some("timeout 0".to_owned())
        } else if p.name.trim().is_empty() || p.plugin.is_empty() {
            Some("empty name or plugin".to_owned())
        } else if p.repositories.iter().any(String::is_empty) {
            Some("empty repository pattern".to_owned())
        } else {
            None
        };
        if let Some(why) = bad {
            return Verdict::AcceptedInvalid(why);
        }
    }
    Verdict::Accepted
}

fn params_target(input: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(input) else { return Verdict::Rejected };
    let sdk = Params::parse(
        text,
        &["name_regex_delete", "name_regex", "name_regex_keep", "keep_n", "older_than", "keep_latest", "delete_untagged"],
    );
    let native = GitlabRetention::create(text);
    if sdk.is_err() && native.is_err() {
        return Verdict::Rejected;
    }
    strict_json(text).map_or(Verdict::Accepted, Verdict::AcceptedInvalid)
}

fn timestamp(input: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(input) else { return Verdict::Rejected };
    let Ok(t) = Timestamp::parse_rfc3339(text) else { return Verdict::Rejected };
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b[16] == b':'
        && matches!(b[b.len() - 1], b'Z' | b'z' | b'0'..=b'9');
    if !shape {
        return Verdict::AcceptedInvalid(format!("{text:?}"));
    }
    // Written back, it reads as the same instant.
    match Timestamp::parse_rfc3339(&t.to_rfc3339()) {
        Ok(again) if again == t => Verdict::Accepted,
        _ => Verdict::AcceptedInvalid(format!("{text:?} does not round-trip")),
    }
}

fn duration(input: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(input) else { return Verdict::Rejected };
    if parse_duration(text).is_err() {
        return Verdict::Rejected;
    }
    // Every accepted part is digits then letters; nothing else but spaces and commas.
    // Spaces and commas separate parts, also after the last one.
    let t = text.trim_matches(|c: char| c == ',' || c.is_ascii_whitespace());
    let ok = t.starts_with(|c: char| c.is_ascii_digit())
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == ',' || c.is_ascii_whitespace())
        && t.ends_with(|c: char| c.is_ascii_alphabetic());
    if ok { Verdict::Accepted } else { Verdict::AcceptedInvalid(format!("{text:?}")) }
}

fn workspace() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    manifest.parent().unwrap().to_path_buf()
}

fn target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from)
}
