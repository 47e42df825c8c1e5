//! The plugin author's tools: `plugins validate` (the checks a plugin file passes before
//! it serves, without installing it), `plugins test` (golden cases through the Wasm
//! runtime, with a readable diff per failing case) and `plugins new` (a complete plugin
//! crate to start from, written from `examples/plugin-template/`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::{OutputFormat, PluginOptions, output};
use crate::model::{Action, ErrorClass, Timestamp};
use crate::recording::Recording;
use crate::runtime::{ContractVersion, Failure, Operation, OperationKind, Plugin, PluginKind, PluginMeta};
use crate::untrusted::escape;

// ---------------------------------------------------------------------------------------
// plugins validate

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The plugin file (a `.wasm` component).
    path: PathBuf,
    /// The params a policy would give it: a JSON object, or `@file.json`.
    #[arg(long, value_name = "JSON|@FILE", default_value = "{}")]
    params: String,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    #[command(flatten)]
    plugin_options: PluginOptions,
}

/// What `validate` found: the plugin's identity and one entry per check, in order.
#[derive(Debug, Serialize)]
struct ValidateReport {
    path: String,
    sha256: String,
    size_bytes: usize,
    valid: bool,
    plugin: Option<PluginMeta>,
    checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Check {
    /// `load` (header, compilation, world, contract version, `info`) or `params`.
    step: &'static str,
    /// `ok`, `failed`, or `skipped` after an earlier failure.
    outcome: &'static str,
    detail: String,
}

/// The checks a new plugin file passes before the daemon puts it in service (issue #11
/// §2), short of the canary, which needs the version it would replace: the file loads as a
/// component of a known world at a contract version this host accepts, and its `create`
/// accepts the params.
pub fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let params = super::eval::load_params(&args.params)?;
    let bytes = crate::input::read_bytes(&args.path, "plugin file", crate::input::limits::PLUGIN_BYTES, "")?;
    let runtime = super::plugin_runtime(false)?;
    let shown = args.path.display().to_string();
    let mut report = ValidateReport {
        path: shown.clone(),
        sha256: crate::model::sha256_hex(&bytes),
        size_bytes: bytes.len(),
        valid: false,
        plugin: None,
        checks: Vec::new(),
    };
    let failure = match runtime.load_bytes(&shown, &bytes, args.plugin_options.limits()) {
        Err(e) => {
            report.checks.push(Check { step: "load", outcome: "failed", detail: e.to_string() });
            report.checks.push(Check { step: "params", outcome: "skipped", detail: "the plugin did not load".into() });
            Some(("load", e.to_string()))
        }
        Ok(plugin) => {
            let meta = plugin.meta().clone();
            report.checks.push(Check {
                step: "load",
                outcome: "ok",
                detail: format!(
                    "{} plugin {} {}, contract tagwarden:policy@{} (accepted by this host)",
                    meta.kind,
                    escape(&meta.name),
                    escape(&meta.version),
                    meta.contract_version
                ),
            });
            report.plugin = Some(meta);
            match check_params(plugin, &params) {
                Ok(note) => {
                    report.checks.push(Check { step: "params", outcome: "ok", detail: format!("accepted {params}{note}") });
                    None
                }
                Err(e) => {
                    report.checks.push(Check { step: "params", outcome: "failed", detail: e.clone() });
                    Some(("params", e))
                }
            }
        }
    };
    report.valid = failure.is_none();
    match args.output {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Table => print_validate(&report),
    }
    match failure {
        None => Ok(ExitCode::SUCCESS),
        Some((step, why)) => bail!("{shown} is not valid: the {step} check failed: {why}"),
    }
}

/// Creates the plugin's policy (strategy, rule) with `params` in a fresh instance, as
/// the host does before a policy uses it. Backoff and stale plugins are created by their
/// one call, so they are asked about a sample failure or operation. A retention policy
/// says which columns it reads (a note for the report).
fn check_params(plugin: Plugin, params: &str) -> Result<String, String> {
    let now = Timestamp::now();
    let declares = ContractVersion::parse(&plugin.meta().contract_version).is_some_and(ContractVersion::declares_columns);
    let result = match plugin.meta().kind {
        PluginKind::Retention => plugin.into_retention().and_then(|p| p.reads(params)).map(|reads| {
            let declared = if declares { "reads" } else { "it cannot declare its columns (contract 0.1): sent" };
            format!("; {declared} {}", reads.describe())
        }),
        PluginKind::Backoff => plugin.into_backoff().and_then(|p| {
            let failure = Failure {
                operation: OperationKind::Cleanup,
                attempt: 1,
                class: ErrorClass::Transient,
                http_status: Some(503),
                retry_after: None,
                message: "sample failure from `tagwarden plugins validate`".into(),
                now,
                seed: 0,
            };
            p.decide(params, &failure).map(|_| String::new())
        }),
        PluginKind::Stale => plugin.into_stale().and_then(|p| {
            let operation = Operation {
                kind: OperationKind::Cleanup,
                state: "cleanup_ongoing".into(),
                started_at: Some(now),
                now,
                delete_timeout: std::time::Duration::from_secs(30 * 60),
                registry_status: None,
            };
            p.check(params, &operation).map(|_| String::new())
        }),
    };
    result.map_err(|e| e.to_string())
}

fn print_validate(report: &ValidateReport) {
    let mut text = format!("{} ({} bytes, sha256 {})\n", escape(&report.path), report.size_bytes, report.sha256);
    for check in &report.checks {
        let _ = writeln!(text, "  {:<8} {:<7} {}", check.step, check.outcome, check.detail);
    }
    if report.valid {
        text.push_str("valid: the daemon would load it and accept these params\n");
    }
    print!("{text}");
}

// ---------------------------------------------------------------------------------------
// plugins test

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// A directory of golden cases (one directory each, holding `recording.json`,
    /// `params.json` and `expected.json`), or one case directory.
    dir: PathBuf,
    /// The retention plugin to test: a `.wasm` file or a bundled plugin's name.
    #[arg(long, value_name = "NAME|PATH.wasm")]
    plugin: String,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    #[command(flatten)]
    plugin_options: PluginOptions,
}

/// `expected.json`: the decisions, or substrings the error must contain.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Expected {
    Error {
        error_contains: Vec<String>,
    },
    Decisions {
        tags: Vec<ExpectedTag>,
        #[serde(default)]
        untagged: Vec<ExpectedUntagged>,
    },
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ExpectedTag {
    name: String,
    action: Action,
    reason: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ExpectedUntagged {
    digest: String,
    action: Action,
    reason: String,
}

/// What `plugins test` found.
#[derive(Debug, Serialize)]
struct TestReport {
    plugin: output::PluginRef,
    passed: usize,
    failed: usize,
    /// Cases whose `plugin` file names another plugin.
    skipped: usize,
    cases: Vec<CaseResult>,
}

#[derive(Debug, Serialize)]
struct CaseResult {
    case: String,
    /// `passed`, `failed` or `skipped`.
    outcome: &'static str,
    /// For a failure, one line per difference or problem.
    differences: Vec<String>,
}

/// Runs every golden case under `dir` through the plugin, in the Wasm runtime, exactly as
/// `eval` would (the evaluation time is the recording's `recorded_at`).
pub fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let path = crate::plugins::resolve(&args.plugin, &args.plugin_options.plugin_dirs)?;
    let cases = case_dirs(&args.dir)?;
    let runtime = super::plugin_runtime(false)?;
    let plugin = runtime.load_file(&path, args.plugin_options.limits())?;
    let meta = plugin.meta().clone();
    let plugin = plugin.into_retention().with_context(|| {
        format!("`plugins test` runs retention plugins; {} is a {} plugin (check it with `plugins validate`)", path.display(), meta.kind)
    })?;
    let mut results = Vec::new();
    for case in &cases {
        let name = case.file_name().map_or_else(|| case.display().to_string(), |n| n.to_string_lossy().into_owned());
        // A case may name the plugin it belongs to (the layout of tests/golden/).
        let owner = std::fs::read_to_string(case.join("plugin")).ok().map(|s| s.trim().to_owned());
        if owner.as_deref().is_some_and(|owner| owner != meta.name) {
            results.push(CaseResult { case: name, outcome: "skipped", differences: Vec::new() });
            continue;
        }
        let differences = run_case(case, &plugin).unwrap_or_else(|e| vec![format!("{e:#}")]);
        let outcome = if differences.is_empty() { "passed" } else { "failed" };
        results.push(CaseResult { case: name, outcome, differences });
    }
    let count = |outcome| results.iter().filter(|r| r.outcome == outcome).count();
    let report = TestReport {
        plugin: output::PluginRef { name: meta.name.clone(), version: meta.version.clone(), sha256: meta.sha256.clone() },
        passed: count("passed"),
        failed: count("failed"),
        skipped: count("skipped"),
        cases: results,
    };
    match args.output {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Table => print_test(&report),
    }
    if report.failed > 0 {
        bail!("{} of {} golden cases failed for plugin {}", report.failed, report.failed + report.passed, escape(&meta.name));
    }
    if report.passed == 0 {
        bail!(
            "no golden case under {} is for plugin {} (every case has a `plugin` file naming another)",
            args.dir.display(),
            escape(&meta.name)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The case directories under `dir`, sorted; `dir` itself when it is one case.
fn case_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.join("expected.json").is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read golden case directory {}; pass a directory of case directories", dir.display()))?;
    let mut cases = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if path.is_dir() && path.join("expected.json").is_file() {
            cases.push(path);
        }
    }
    cases.sort();
    if cases.is_empty() {
        bail!(
            "no golden cases in {}: a case is a directory holding recording.json, params.json and expected.json \
             (`tagwarden plugins new` writes examples)",
            dir.display()
        );
    }
    Ok(cases)
}

/// One case; each returned line describes a difference between expected and actual.
fn run_case(case: &Path, plugin: &crate::runtime::RetentionPlugin) -> anyhow::Result<Vec<String>> {
    let recording = Recording::read(&case.join("recording.json"))?;
    let params = super::eval::load_params(&format!("@{}", case.join("params.json").display()))?;
    let expected_path = case.join("expected.json");
    let text = crate::input::read_text(&expected_path, "expected.json", crate::input::limits::PARAMS_BYTES, "")?;
    let expected: Expected = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"tags\": [{{\"name\", \"action\", \"reason\"}}, …], \"untagged\": [{{\"digest\", \"action\", \"reason\"}}, …]}} \
             or {{\"error_contains\": [\"…\"]}}",
            expected_path.display()
        )
    })?;
    let result = plugin.evaluate(&params, &recording.list, recording.recorded_at);
    match (expected, result) {
        (Expected::Error { error_contains }, Err(e)) => {
            let message = e.to_string();
            Ok(error_contains
                .iter()
                .filter(|needle| !message.contains(needle.as_str()))
                .map(|needle| format!("the error does not contain {needle:?}; it is: {message}"))
                .collect())
        }
        (Expected::Error { .. }, Ok(decisions)) => Ok(vec![format!(
            "expected an error, but the plugin decided ({} of {} tags deleted)",
            decisions.tags_to_delete(),
            decisions.tag_count()
        )]),
        (Expected::Decisions { .. }, Err(e)) => Ok(vec![format!("expected decisions, but the plugin failed: {e}")]),
        (Expected::Decisions { tags, untagged }, Ok(decisions)) => {
            let got_tags: Vec<ExpectedTag> = (recording.list.tags().iter().enumerate())
                .map(|(i, t)| ExpectedTag {
                    name: t.name.clone(),
                    action: decisions.tag(i).action,
                    reason: decisions.tag(i).reason.clone(),
                })
                .collect();
            let got_untagged: Vec<ExpectedUntagged> = (recording.list.untagged().iter().enumerate())
                .map(|(i, u)| ExpectedUntagged {
                    digest: u.digest.to_string(),
                    action: decisions.untagged(i).action,
                    reason: decisions.untagged(i).reason.clone(),
                })
                .collect();
            let mut lines = diff("tag", &tags, &got_tags, |t| t.name.clone(), |t| (t.action, t.reason.clone()));
            lines.extend(diff("untagged", &untagged, &got_untagged, |u| u.digest.clone(), |u| (u.action, u.reason.clone())));
            Ok(lines)
        }
    }
}

/// One line per entry whose verdict differs, and per entry present on one side only,
/// keyed by name (tags) or digest (untagged manifests), in expected order.
fn diff<T>(what: &str, want: &[T], got: &[T], key: impl Fn(&T) -> String, verdict: impl Fn(&T) -> (Action, String)) -> Vec<String> {
    let mut lines = Vec::new();
    let got_by_key: std::collections::HashMap<String, &T> = got.iter().map(|g| (key(g), g)).collect();
    let want_keys: std::collections::HashSet<String> = want.iter().map(&key).collect();
    for w in want {
        let k = key(w);
        let (want_action, want_reason) = verdict(w);
        match got_by_key.get(&k) {
            None => {
                lines.push(format!("{what} {}: expected {want_action} ({want_reason:?}), but the recording has no such {what}", escape(&k)))
            }
            Some(g) => {
                let (got_action, got_reason) = verdict(g);
                if (got_action, &got_reason) != (want_action, &want_reason) {
                    lines.push(format!(
                        "{what} {}: expected {want_action} ({}), got {got_action} ({})",
                        escape(&k),
                        escape(&format!("{want_reason:?}")),
                        escape(&format!("{got_reason:?}"))
                    ));
                }
            }
        }
    }
    for g in got.iter().filter(|g| !want_keys.contains(&key(g))) {
        let (action, reason) = verdict(g);
        lines.push(format!(
            "{what} {}: not in expected.json; the plugin says {action} ({})",
            escape(&key(g)),
            escape(&format!("{reason:?}"))
        ));
    }
    lines
}

fn print_test(report: &TestReport) {
    let mut text = String::new();
    for case in &report.cases {
        let _ = writeln!(text, "{:<7} {}", case.outcome, escape(&case.case));
        for line in &case.differences {
            let _ = writeln!(text, "        {line}");
        }
    }
    let _ = writeln!(
        text,
        "plugin {} {}: {} passed, {} failed, {} skipped (cases for other plugins)",
        escape(&report.plugin.name),
        escape(&report.plugin.version),
        report.passed,
        report.failed,
        report.skipped
    );
    print!("{text}");
}

// ---------------------------------------------------------------------------------------
// plugins new

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's name, which is also its crate's and its `.wasm` file's: lowercase ASCII
    /// letters, digits and `-`, starting with a letter.
    name: String,
    /// What the plugin decides.
    #[arg(long, value_enum, default_value_t = NewKind::Retention)]
    kind: NewKind,
    /// The directory to write; defaults to `./NAME`. It must not exist, or be empty.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Depend on the SDK at this path (e.g. a tagwarden checkout's `plugins/sdk`) instead
    /// of the published crate.
    #[arg(long, value_name = "PATH")]
    sdk_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NewKind {
    Retention,
    Backoff,
    Stale,
}

/// `examples/plugin-template/`, built into the binary: `(path, text)`.
const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../examples/plugin-template/Cargo.toml")),
    ("Cargo.lock", include_str!("../../../examples/plugin-template/Cargo.lock")),
    (".gitignore", include_str!("../../../examples/plugin-template/.gitignore")),
    ("README.md", include_str!("../../../examples/plugin-template/README.md")),
    ("src/lib.rs", include_str!("../../../examples/plugin-template/src/lib.rs")),
    ("src/tests.rs", include_str!("../../../examples/plugin-template/src/tests.rs")),
    ("recordings/sample.json", include_str!("../../../examples/plugin-template/recordings/sample.json")),
    ("golden/defaults/recording.json", include_str!("../../../examples/plugin-template/golden/defaults/recording.json")),
    ("golden/defaults/params.json", include_str!("../../../examples/plugin-template/golden/defaults/params.json")),
    ("golden/defaults/expected.json", include_str!("../../../examples/plugin-template/golden/defaults/expected.json")),
    (
        "golden/keep-2-protect-release/recording.json",
        include_str!("../../../examples/plugin-template/golden/keep-2-protect-release/recording.json"),
    ),
    (
        "golden/keep-2-protect-release/params.json",
        include_str!("../../../examples/plugin-template/golden/keep-2-protect-release/params.json"),
    ),
    (
        "golden/keep-2-protect-release/expected.json",
        include_str!("../../../examples/plugin-template/golden/keep-2-protect-release/expected.json"),
    ),
    ("golden/invalid-keep/recording.json", include_str!("../../../examples/plugin-template/golden/invalid-keep/recording.json")),
    ("golden/invalid-keep/params.json", include_str!("../../../examples/plugin-template/golden/invalid-keep/params.json")),
    ("golden/invalid-keep/expected.json", include_str!("../../../examples/plugin-template/golden/invalid-keep/expected.json")),
];

/// The `src/lib.rs` of the other kinds; they have no golden cases (those are tag lists).
const BACKOFF_LIB: &str = include_str!("../../../examples/plugin-template/other-kinds/backoff.rs");
const STALE_LIB: &str = include_str!("../../../examples/plugin-template/other-kinds/stale.rs");

/// The template's SDK dependency, rewritten for the new crate.
const TEMPLATE_SDK_DEPENDENCY: &str = r#"tagwarden-plugin-sdk = { version = "0.2", path = "../../plugins/sdk", features = ["retention"] }"#;

/// Writes a complete plugin crate: the template with the new name, for the kind asked.
/// Nothing is written unless the name and the directory are acceptable.
pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && name.len() <= 64;
    if !valid {
        bail!(
            "plugin name {:?}: expected lowercase ASCII letters, digits and `-`, starting with a letter \
             (at most 64 characters), such as `keep-releases`; it names the crate, the .wasm file and the plugin",
            escape(name)
        );
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        let empty = dir.is_dir() && std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?.next().is_none();
        if !empty {
            bail!("{} already exists and is not an empty directory; choose another with --dir, nothing was written", dir.display());
        }
    }
    let (kind, feature) = match args.kind {
        NewKind::Retention => ("retention", "retention"),
        NewKind::Backoff => ("backoff", "backoff"),
        NewKind::Stale => ("stale", "stale"),
    };
    let sdk = match &args.sdk_path {
        None => format!(r#"tagwarden-plugin-sdk = {{ version = "0.2", features = ["{feature}"] }}"#),
        Some(path) => {
            if !path.join("Cargo.toml").is_file() {
                bail!(
                    "--sdk-path {}: no Cargo.toml there; give the SDK's directory, e.g. <tagwarden checkout>/plugins/sdk",
                    path.display()
                );
            }
            let path = toml::Value::String(path.display().to_string());
            format!(r#"tagwarden-plugin-sdk = {{ version = "0.2", path = {path}, features = ["{feature}"] }}"#)
        }
    };
    let crate_name = name.replace('-', "_");
    let rename = |text: &str| text.replace("plugin-template", name).replace("plugin_template", &crate_name);
    let mut files: Vec<(String, String)> = Vec::new();
    for (path, text) in TEMPLATE {
        let retention_only = path.starts_with("golden/") || path.starts_with("recordings/") || *path == "src/tests.rs";
        let text = match *path {
            _ if retention_only && args.kind != NewKind::Retention => continue,
            "Cargo.toml" => {
                anyhow::ensure!(text.contains(TEMPLATE_SDK_DEPENDENCY), "the built-in template's SDK dependency line changed");
                let text = text.replace(TEMPLATE_SDK_DEPENDENCY, &sdk);
                match text.lines().find(|l| l.starts_with("description = ")) {
                    Some(line) if args.kind != NewKind::Retention => {
                        text.replace(line, &format!("description = \"A tagwarden {kind} plugin\""))
                    }
                    _ => text,
                }
            }
            // The lock file pins the SDK by path; from the registry, Cargo writes its own.
            "Cargo.lock" if args.sdk_path.is_none() => continue,
            "src/lib.rs" if args.kind == NewKind::Backoff => BACKOFF_LIB.to_owned(),
            "src/lib.rs" if args.kind == NewKind::Stale => STALE_LIB.to_owned(),
            "README.md" if args.kind != NewKind::Retention => format!(
                "# {name}\n\nA tagwarden {kind} plugin.\n\n```sh\nrustup target add wasm32-wasip2\ncargo test --release\n\
                 cargo build --release --target wasm32-wasip2\ntagwarden plugins validate target/wasm32-wasip2/release/{crate_name}.wasm\n```\n"
            ),
            _ => text.to_string(),
        };
        files.push((path.to_string(), rename(&text)));
    }
    for (path, text) in &files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("cannot write {}", target.display()))?;
    }
    println!("wrote a {kind} plugin `{name}` in {} ({} files). Next:", dir.display(), files.len());
    println!("  cd {} && cargo test --release && cargo build --release --target wasm32-wasip2", dir.display());
    if args.kind == NewKind::Retention {
        println!("  tagwarden plugins test golden --plugin target/wasm32-wasip2/release/{crate_name}.wasm");
    }
    Ok(ExitCode::SUCCESS)
}
