//! The `tagwarden` binary end to end: `eval`, `plugins inspect`, `run --once` and `record`, run as
//! a child process from a temporary directory, against a REAL registry where one is needed.
//! Checks exit codes, what is printed (and what must never be: credentials), and what happened in
//! the registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tagwarden::model::{Action, Timestamp};
use tagwarden::recording::Recording;
use tagwarden::runtime::PluginLimits;
use tagwarden::store::Store;
use tagwarden_testbed::{Auth, FaultProxy, RegistryOptions, Seeder, TestRegistry};

use crate::support;

const NOW: &str = "2026-11-20T12:00:00Z";

/// What one invocation did.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Outcome {
    pub(crate) fn assert_success(&self) {
        assert_eq!(self.code, Some(0), "expected success:\n{self:#?}");
    }

    /// A failed command: non-zero exit (not a crash), one `error: ...` line naming the problem
    /// (causes may follow as `caused by:` lines), and every needle somewhere on stderr.
    pub(crate) fn assert_error(&self, needles: &[&str]) {
        assert!(matches!(self.code, Some(c) if c != 0), "expected a non-zero exit:\n{self:#?}");
        assert!(!self.stderr.contains("panicked"), "the binary panicked:\n{}", self.stderr);
        let errors: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "expected exactly one `error: ` line:\n{}", self.stderr);
        assert!(errors[0].len() > "error: ".len() + 10, "an empty error line:\n{}", self.stderr);
        for needle in needles {
            assert!(self.stderr.contains(needle), "stderr does not mention `{needle}`:\n{}", self.stderr);
        }
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the binary in `dir` with a clean environment for the variables it reads.
fn tagwarden_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tagwarden"));
    // Compiled plugins are cached per test, not in the user's ~/.cache.
    cmd.current_dir(dir).args(args).env("NO_COLOR", "1").env("TAGWARDEN_CACHE_DIR", dir.join("compiled"));
    for var in ["TAGWARDEN_LOG", "TAGWARDEN_PLUGIN_DIR", "TAGWARDEN_REGISTRY_PASSWORD", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running the tagwarden binary");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn tagwarden(dir: &Path, args: &[&str]) -> Outcome {
    tagwarden_env(dir, args, &[])
}

/// The same from an async test: the child runs while the runtime keeps serving the test bed.
fn tagwarden_blocking(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    tokio::task::block_in_place(|| tagwarden_env(dir, args, env))
}

pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("tagwarden-cli-").tempdir().unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

fn example_params() -> String {
    format!("@{}", support::workspace().join("examples/gitlab-docs-example.params.json").display())
}

fn example_recording() -> PathBuf {
    support::workspace().join("examples/recordings/gitlab-docs-example.json")
}

fn sha256_hex(bytes: &[u8]) -> String {
    tagwarden::model::Digest::sha256_of(bytes).as_str().trim_start_matches("sha256:").to_owned()
}

// ---------------------------------------------------------------------------------------------
// eval

#[test]
fn eval_prints_the_gitlab_docs_example_as_json() {
    let dir = tempdir();
    let recording_path = example_recording();
    let out = tagwarden(
        dir.path(),
        &[
            "eval",
            "--plugin",
            "gitlab-retention",
            "--params",
            &example_params(),
            "--recording",
            path_str(&recording_path),
            "--now",
            NOW,
            "--output",
            "json",
        ],
    );
    out.assert_success();
    let v = out.json();
    assert_eq!(v["repository"], "group/app");
    assert_eq!(v["now"], NOW);
    let meta = support::plugin("gitlab-retention", PluginLimits::default()).meta().clone();
    assert_eq!(v["plugin"]["name"], "gitlab-retention");
    assert_eq!(v["plugin"]["version"], meta.version.as_str());
    let wasm = std::fs::read(support::plugin_path("gitlab-retention")).unwrap();
    assert_eq!(v["plugin"]["sha256"], sha256_hex(&wasm).as_str());

    // One entry per tag in the order the plugin saw them (the recording's list), each with its
    // action and reason, matching an evaluation through the library.
    let recording = Recording::read(&recording_path).unwrap();
    let params = std::fs::read_to_string(support::workspace().join("examples/gitlab-docs-example.params.json")).unwrap();
    let plugin = support::plugin("gitlab-retention", PluginLimits::default()).into_retention().unwrap();
    let decisions = plugin.evaluate(&params, &recording.list, Timestamp::parse_rfc3339(NOW).unwrap()).unwrap();
    let tags = v["tags"].as_array().expect("a tags array");
    assert_eq!(tags.len(), recording.list.tags().len());
    for (i, (t, want)) in tags.iter().zip(recording.list.tags()).enumerate() {
        assert_eq!(t["name"], want.name.as_str(), "tag {i}");
        assert_eq!(t["digest"], want.digest.as_str(), "tag {i}");
        let rule = decisions.tag(i);
        assert_eq!(t["action"], rule.action.to_string().as_str(), "tag {i}");
        assert_eq!(t["reason"], rule.reason.as_str(), "tag {i}");
        assert!(!rule.reason.is_empty());
    }
    let deleted: Vec<&str> = tags.iter().filter(|t| t["action"] == "delete").map(|t| t["name"].as_str().unwrap()).collect();
    let mut sorted = deleted.clone();
    sorted.sort();
    assert_eq!(sorted, ["dev-v42", "v42", "v43"], "GitLab's documented outcome");
    let untagged = v["untagged"].as_array().expect("an untagged array");
    assert_eq!(untagged.len(), 1);
    assert_eq!(untagged[0]["digest"], recording.list.untagged()[0].digest.as_str());
    assert_eq!(untagged[0]["action"], decisions.untagged(0).action.to_string().as_str());
    assert!(untagged[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let untagged_deletes = usize::from(decisions.untagged(0).action == Action::Delete);
    assert_eq!(
        v["summary"],
        serde_json::json!({"tags": 10, "tags_to_delete": 3, "tags_to_keep": 7, "untagged": 1, "untagged_to_delete": untagged_deletes})
    );
}

#[test]
fn eval_prints_a_table_with_delete_rows_and_a_summary_line() {
    let dir = tempdir();
    let recording = example_recording();
    let out = tagwarden(
        dir.path(),
        &["eval", "--plugin", "gitlab-retention", "--params", &example_params(), "--recording", path_str(&recording), "--now", NOW],
    );
    out.assert_success();
    let mut deleted: Vec<&str> =
        out.stdout.lines().filter(|l| l.starts_with("DELETE")).filter_map(|l| l.split_whitespace().nth(1)).collect();
    deleted.sort();
    assert_eq!(deleted, ["dev-v42", "v42", "v43"], "{}", out.stdout);
    assert!(out.stdout.lines().next().is_some_and(|h| h.starts_with("ACTION") && h.contains("REASON")), "{}", out.stdout);
    assert!(out.stdout.lines().filter(|l| l.starts_with("keep")).count() >= 7, "{}", out.stdout);
    assert!(out.stdout.contains("group/app: 10 tags, 3 to delete, 7 to keep; 1 untagged"), "{}", out.stdout);
    assert!(!out.stdout.contains('\x1b'), "no colours when stdout is not a terminal");
}

/// `eval` with the given plugin, params and recording.
fn eval_with(dir: &Path, plugin: &str, params: &str, recording: &str) -> Outcome {
    tagwarden(dir, &["eval", "--plugin", plugin, "--params", params, "--recording", recording, "--now", NOW])
}

#[test]
fn eval_rejects_params_that_are_not_json() {
    let dir = tempdir();
    let out = eval_with(dir.path(), "gitlab-retention", "{keep_n: 1}", path_str(&example_recording()));
    out.assert_error(&["--params", "not valid JSON"]);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn eval_rejects_invalid_params_naming_the_param() {
    let dir = tempdir();
    let out = eval_with(dir.path(), "gitlab-retention", r#"{"keep_n": -1, "name_regex_delete": ".*"}"#, path_str(&example_recording()));
    out.assert_error(&["keep_n", "invalid params"]);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn eval_names_a_missing_recording_file() {
    let dir = tempdir();
    let missing = dir.path().join("no-such-recording.json");
    let out = eval_with(dir.path(), "gitlab-retention", "{}", path_str(&missing));
    out.assert_error(&["cannot read recording", "no-such-recording.json"]);
}

#[test]
fn eval_names_the_field_and_position_of_a_malformed_recording() {
    let dir = tempdir();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\"format\": \"tagwarden.recording.v1\", \"repository\": \"group/app\", \"recorded_at\": \"2026-11-20T12:00:00Z\",\n \"tags\": [\n  {\"name\": \"v1\", \"digest\": \"sha256:not-a-digest\"}\n ]}\n",
    )
    .unwrap();
    let out = eval_with(dir.path(), "gitlab-retention", "{}", path_str(&bad));
    out.assert_error(&["bad.json", "tags[0].digest"]);
    let position = regex::Regex::new(r"\b3:\d+: at `tags\[0\]\.digest`").unwrap();
    assert!(position.is_match(&out.stderr), "no line:column for the bad digest:\n{}", out.stderr);
}

/// What the hostile plugin's `forge` mode tries to slip into the output.
const FORGED_ROW: &str = "DELETE  production-v44  sha256:forged";

/// A forged reason or log line shows up escaped, on its own row or line, and never as
/// a row or line of its own.
fn assert_not_forged(out: &Outcome) {
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{stream} carries raw control characters:\n{text}");
        assert!(!text.lines().any(|l| l.trim_start().starts_with(FORGED_ROW)), "{stream} shows a forged row:\n{text}");
        assert!(!text.lines().any(|l| l.starts_with("2026-11-20T12:00:00Z ERROR")), "{stream} shows a forged log line:\n{text}");
    }
}

#[test]
fn eval_shows_plugin_text_escaped_in_tables_and_exactly_in_json() {
    let dir = tempdir();
    let recording = example_recording();
    let forge = r#"{"mode": "forge"}"#;
    let out = eval_with(dir.path(), "hostile-retention", forge, path_str(&recording));
    out.assert_success();
    assert_not_forged(&out);
    let rows: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("keep")).collect();
    assert_eq!(rows.len(), 11, "one row per tag and untagged manifest:\n{}", out.stdout);
    assert!(rows[0].ends_with("kept\\u{1b}[0m\\n\\u{1b}[1;31mDELETE  production-v44  sha256:forged\\u{1b}[0m\\r"), "{}", rows[0]);
    // The forged log line arrives as one escaped warning.
    let warning = out.stderr.lines().find(|l| l.contains("looks fine")).unwrap_or_else(|| panic!("no log line:\n{}", out.stderr));
    assert!(warning.contains("looks fine\\n2026-11-20T12:00:00Z ERROR tagwarden: forged log line\\u{1b}[2K"), "{warning}");

    let out = tagwarden(
        dir.path(),
        &["eval", "--plugin", "hostile-retention", "--params", forge, "--recording", path_str(&recording), "--output", "json"],
    );
    out.assert_success();
    let reason = out.json()["tags"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("\x1b[1;31mDELETE  production-v44  sha256:forged\x1b[0m\r"), "JSON keeps the exact text: {reason:?}");
}

#[test]
fn run_plan_shows_plugin_text_escaped() {
    let dir = tempdir();
    let config = dir.path().join("tagwarden.toml");
    let text = format!(
        "[registry]\nrecordings = \"{}\"\n\n[state]\ndir = \"{}\"\n\n\
         [[policy]]\nname = \"forge\"\nrepositories = [\"**\"]\nplugin = \"hostile-retention\"\nparams = {{ mode = \"forge\" }}\n",
        example_recording().display(),
        dir.path().join("state").display()
    );
    std::fs::write(&config, text).unwrap();
    let out = tagwarden(dir.path(), &["run", "--once", "--config", path_str(&config), "--now", NOW, "--plan", "--dry-run"]);
    out.assert_success();
    assert_not_forged(&out);
    assert!(out.stdout.lines().filter(|l| l.trim_start().starts_with("keep")).count() == 11, "{}", out.stdout);
}

#[test]
fn the_hostile_plugin_runs_from_the_cli_with_object_params() {
    let dir = tempdir();
    let out = eval_with(dir.path(), "hostile-retention", r#"{"mode": "sleep"}"#, path_str(&example_recording()));
    out.assert_success();
    assert!(out.stdout.lines().filter(|l| l.starts_with("keep") && l.ends_with("slept 60s")).count() == 11, "{}", out.stdout);
    let out = eval_with(dir.path(), "hostile-retention", r#"{"mode": "abort"}"#, path_str(&example_recording()));
    out.assert_error(&["plugin hostile-retention: trapped: aborted"]);
}

#[test]
fn eval_refuses_limits_that_would_wrap_or_mean_nothing() {
    let dir = tempdir();
    let recording = example_recording();
    for (flag, value, needle) in [
        ("--memory-mib", "18446744073709551615", "1..=4096"),
        ("--memory-mib", "17592186044416", "1..=4096"),
        ("--memory-mib", "0", "1..=4096"),
        ("--timeout", "0s", "greater than zero"),
    ] {
        let out = tagwarden(dir.path(), &["eval", "--plugin", "gitlab-retention", "--recording", path_str(&recording), flag, value]);
        assert_eq!(out.code, Some(2), "{flag} {value}: {out:#?}");
        assert!(out.stderr.contains(flag) && out.stderr.contains(needle), "{flag} {value}: {}", out.stderr);
    }
}

#[test]
fn eval_refuses_params_with_a_key_given_twice() {
    let dir = tempdir();
    let out = eval_with(dir.path(), "gitlab-retention", r#"{"keep_n": 1, "keep_n": 1000}"#, path_str(&example_recording()));
    out.assert_error(&["--params", r#"the key "keep_n" is given twice"#]);
}

#[test]
fn eval_refuses_files_that_never_end_or_block() {
    let dir = tempdir();
    let out = eval_with(dir.path(), "gitlab-retention", "{}", "/dev/zero");
    out.assert_error(&["recording /dev/zero is a character device; expected a regular file"]);
    let out = eval_with(dir.path(), "gitlab-retention", "@/dev/zero", path_str(&example_recording()));
    out.assert_error(&["--params file /dev/zero is a character device"]);
    let fifo = dir.path().join("pipe.wasm");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = tagwarden(dir.path(), &["plugins", "inspect", path_str(&fifo)]);
    out.assert_error(&["is a named pipe; expected a regular file"]);
    let out = tagwarden(dir.path(), &["run", "--once", "--config", "/dev/zero"]);
    out.assert_error(&["config /dev/zero is a character device"]);

    // `recordings` naming a device, or a directory holding a pipe among its recordings.
    let recordings = dir.path().join("recordings");
    std::fs::create_dir(&recordings).unwrap();
    std::fs::copy(example_recording(), recordings.join("app.json")).unwrap();
    assert!(Command::new("mkfifo").arg(recordings.join("web.json")).status().unwrap().success());
    for (target, needle) in
        [("/dev/zero", "recording /dev/zero is a character device"), (path_str(&recordings), "web.json is a named pipe")]
    {
        let config = dir.path().join("tagwarden.toml");
        let text = format!(
            "[registry]\nrecordings = \"{target}\"\n\n[state]\ndir = \"{}\"\n\n\
             [[policy]]\nname = \"all\"\nrepositories = [\"**\"]\nplugin = \"gitlab-retention\"\n",
            dir.path().join("state").display()
        );
        std::fs::write(&config, text).unwrap();
        let out = tagwarden(dir.path(), &["run", "--once", "--dry-run", "--config", path_str(&config)]);
        out.assert_error(&["at `registry.recordings`", needle]);
    }
}

#[test]
fn eval_says_where_a_recording_is_not_utf8_or_not_a_recording() {
    let dir = tempdir();
    let bad = dir.path().join("latin1.json");
    std::fs::write(&bad, b"{\"format\": \"caf\xe9\"}").unwrap();
    let out = eval_with(dir.path(), "gitlab-retention", "{}", path_str(&bad));
    out.assert_error(&["is not UTF-8 text: invalid byte 0xe9 at line 1, column 16"]);
    let out = eval_with(dir.path(), "gitlab-retention", "{}", "/etc/passwd");
    out.assert_error(&["not a tagwarden recording", "docs/recording-format.md"]);
}

#[test]
fn eval_explains_how_to_get_an_unknown_plugin() {
    let dir = tempdir();
    let out = eval_with(dir.path(), "no-such-plugin", "{}", path_str(&example_recording()));
    out.assert_error(&["no-such-plugin", "cargo xtask build-plugins"]);
}

#[test]
fn eval_refuses_a_plugin_file_that_is_not_wasm() {
    let dir = tempdir();
    let fake = dir.path().join("notes.wasm");
    std::fs::write(&fake, "just some text, not a component\n").unwrap();
    let out = eval_with(dir.path(), path_str(&fake), "{}", path_str(&example_recording()));
    out.assert_error(&["cannot load", "not a WebAssembly file"]);
}

// ---------------------------------------------------------------------------------------------
// plugins inspect

/// The value of a `key:   value` line of `plugins inspect`.
fn field<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')).map(str::trim))
}

#[test]
fn plugins_inspect_describes_a_bundled_plugin() {
    let dir = tempdir();
    let path = support::plugin_path("gitlab-retention");
    let out = tagwarden(dir.path(), &["plugins", "inspect", path_str(&path)]);
    out.assert_success();
    let wasm = std::fs::read(&path).unwrap();
    assert_eq!(field(&out.stdout, "kind"), Some("retention"), "{}", out.stdout);
    assert_eq!(field(&out.stdout, "contract"), Some("tagwarden:policy@0.2.1"), "{}", out.stdout);
    assert_eq!(field(&out.stdout, "sha256"), Some(sha256_hex(&wasm).as_str()), "{}", out.stdout);
    assert_eq!(field(&out.stdout, "loads"), Some("yes"), "{}", out.stdout);
    assert!(field(&out.stdout, "plugin").is_some_and(|p| p.starts_with("gitlab-retention ")), "{}", out.stdout);
}

#[test]
fn compiled_plugins_are_cached_and_a_damaged_cache_entry_is_compiled_again() {
    let dir = tempdir();
    let path = support::plugin_path("hostile-retention");
    let inspect = || {
        let out = tagwarden(dir.path(), &["plugins", "inspect", path_str(&path)]);
        out.assert_success();
        assert_eq!(field(&out.stdout, "loads"), Some("yes"), "{}", out.stdout);
        field(&out.stdout, "compiled").unwrap_or_else(|| panic!("no compiled line:\n{}", out.stdout)).to_owned()
    };
    assert_eq!(inspect(), "now");
    assert_eq!(inspect(), "from cache", "the second process reuses the first one's compiled code");

    // Flip one byte of the compiled code: the checksum no longer matches, so the entry
    // is compiled again (and rewritten), never loaded.
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("compiled")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "one entry, no temporary files left: {entries:?}");

    // A hit records its use in the entry's modification time (what pruning orders by).
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&entries[0]).unwrap().set_modified(an_hour_ago).unwrap();
    assert_eq!(inspect(), "from cache");
    let used = std::fs::metadata(&entries[0]).unwrap().modified().unwrap();
    assert!(used > an_hour_ago + std::time::Duration::from_secs(3000), "the hit did not mark the entry used");

    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();
    assert_eq!(inspect(), "now");
    assert_eq!(inspect(), "from cache");

    // `off` turns the cache off.
    let out = tagwarden_env(dir.path(), &["plugins", "inspect", path_str(&path)], &[("TAGWARDEN_CACHE_DIR", "off")]);
    assert_eq!(field(&out.stdout, "compiled"), Some("now"), "{}", out.stdout);
}

#[test]
fn plugins_inspect_says_a_wrong_world_plugin_does_not_load() {
    let dir = tempdir();
    let path = support::plugin_path("wrong-world");
    let out = tagwarden(dir.path(), &["plugins", "inspect", path_str(&path)]);
    assert!(matches!(out.code, Some(c) if c != 0), "{out:#?}");
    let loads = field(&out.stdout, "loads").unwrap_or_else(|| panic!("no loads line:\n{}", out.stdout));
    assert!(loads.starts_with("no"), "{}", out.stdout);
    assert!(loads.contains("tagwarden:policy/retention"), "the reason names what is missing: {loads}");
    assert!(field(&out.stdout, "sha256").is_some_and(|s| s.len() == 64), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------------
// run --once

fn days_ago(n: u64) -> String {
    Timestamp::parse_rfc3339(NOW).unwrap().saturating_sub(Duration::from_secs(n * 86_400)).to_rfc3339()
}

async fn snapshot(seed: &Seeder, repo: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for tag in seed.tags(repo).await.unwrap() {
        let digest = seed.resolve(repo, &tag).await.unwrap().expect("a listed tag resolves");
        out.insert(tag, digest);
    }
    out
}

const REPOS: [&str; 3] = ["group/app", "group/web", "other/tool"];

/// The registry's state of every repository `run` tests seed.
async fn state(seed: &Seeder) -> BTreeMap<&'static str, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for repo in REPOS {
        out.insert(repo, snapshot(seed, repo).await);
    }
    out
}

/// A registry with `group/app` (old-1, old-2, new-1), `group/web` (old-1, new-1) and `other/tool`
/// (old-1), where `old-*` are 30 days old and `new-*` one day before [`NOW`].
async fn seeded_registry(options: RegistryOptions) -> TestRegistry {
    let reg = TestRegistry::start(options).await.expect("starting the test registry");
    let seed = reg.client();
    for (repo, tag, age) in [
        ("group/app", "old-1", 30),
        ("group/app", "old-2", 30),
        ("group/app", "new-1", 1),
        ("group/web", "old-1", 30),
        ("group/web", "new-1", 1),
        ("other/tool", "old-1", 30),
    ] {
        seed.push_image(repo, tag, Some(&days_ago(age))).await.unwrap();
    }
    reg
}

const POLICY_PARAMS: &str = r#"{ name_regex_delete = ".*", older_than = "7d" }"#;

/// Writes `tagwarden.toml` into `dir` for the registry at `url`; `policy_params` is the TOML inline
/// table of the policy's params and `extra` is appended to the `[deletion]` section.
fn write_config(dir: &Path, url: &str, registry_extra: &str, deletion_extra: &str, policy_params: &str) -> PathBuf {
    let state = dir.join("state");
    let text = format!(
        "[registry]\nurl = \"{url}\"\n{registry_extra}\n\n\
         [state]\ndir = \"{}\"\n\n\
         [deletion]\ntimeout = \"30s\"\n{deletion_extra}\n\n\
         [[policy]]\nname = \"apps\"\nrepositories = [\"group/*\"]\nplugin = \"gitlab-retention\"\nparams = {policy_params}\n",
        state.display()
    );
    let path = dir.join("tagwarden.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn run_once_refuses_a_glob_typed_as_a_name_pattern_when_the_config_loads() {
    let dir = tempdir();
    // Nothing listens at this address: the policy is refused before any request.
    let params = r#"{ name_regex_delete = ".*", name_regex_keep = "*prod*" }"#;
    let config = write_config(dir.path(), "http://127.0.0.1:9", "", "", params);
    let out = tagwarden(dir.path(), &["run", "--once", "--config", path_str(&config), "--now", NOW]);
    out.assert_error(&[
        "cannot load policy `apps`",
        "name_regex_keep: invalid regex",
        r#"(pattern "*prod*")"#,
        r#"as a regex that is ".*prod.*""#,
    ]);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_deletes_per_policy_and_prints_a_summary() {
    let reg = seeded_registry(RegistryOptions::default()).await;
    let seed = reg.client();
    let before = state(&seed).await;
    let dir = tempdir();
    let config = write_config(dir.path(), reg.url(), "", "", POLICY_PARAMS);
    let out = tagwarden_blocking(dir.path(), &["run", "--once", "--config", path_str(&config), "--now", NOW], &[]);
    out.assert_success();
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert!(rows[0].starts_with("REPOSITORY"), "{}", out.stdout);
    for repo in ["group/app", "group/web"] {
        let row = rows.iter().find(|l| l.starts_with(repo)).unwrap_or_else(|| panic!("no row for {repo}:\n{}", out.stdout));
        assert!(row.contains("apps") && row.contains("completed"), "{row}");
    }
    assert!(!out.stdout.contains("other/tool"), "no policy matches other/tool:\n{}", out.stdout);
    assert!(out.stdout.contains("2 repositories, 5 tags, 3 to delete, 3 deleted"), "{}", out.stdout);

    let after = state(&seed).await;
    assert_eq!(after["group/app"].keys().collect::<Vec<_>>(), ["new-1"]);
    assert_eq!(after["group/app"]["new-1"], before["group/app"]["new-1"]);
    assert_eq!(after["group/web"].keys().collect::<Vec<_>>(), ["new-1"]);
    assert_eq!(after["other/tool"], before["other/tool"], "a repository no policy matches is untouched");

    // The audit log lives in the configured state directory.
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let rows = store.audit_log().recent(None, 100).unwrap();
    let mut deleted: Vec<String> =
        rows.iter().filter(|r| r.outcome == "deleted").flat_map(|r| r.tags.iter().map(|t| format!("{}:{t}", r.repository))).collect();
    deleted.sort();
    assert_eq!(deleted, ["group/app:old-1", "group/app:old-2", "group/web:old-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_dry_run_deletes_nothing_in_table_or_json() {
    let reg = seeded_registry(RegistryOptions::default()).await;
    let seed = reg.client();
    let before = state(&seed).await;
    let dir = tempdir();
    let config = write_config(dir.path(), reg.url(), "", "", POLICY_PARAMS);
    let config = path_str(&config);

    let out = tagwarden_blocking(dir.path(), &["run", "--once", "--config", config, "--now", NOW, "--dry-run", "--plan"], &[]);
    out.assert_success();
    assert!(out.stdout.contains("2 repositories, 5 tags, 3 to delete, nothing deleted (dry run)"), "{}", out.stdout);
    assert!(
        out.stdout.lines().any(|l| l.trim_start().starts_with("DELETE") && l.contains("old-1")),
        "--plan shows verdicts:\n{}",
        out.stdout
    );
    assert_eq!(state(&seed).await, before);

    let out = tagwarden_blocking(dir.path(), &["run", "--once", "--config", config, "--now", NOW, "--dry-run", "--output", "json"], &[]);
    out.assert_success();
    let v = out.json();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["now"], NOW);
    let repos = v["repositories"].as_array().unwrap();
    assert_eq!(repos.iter().map(|r| r["repository"].as_str().unwrap()).collect::<Vec<_>>(), ["group/app", "group/web"]);
    for r in repos {
        assert_eq!((r["status"].as_str(), r["tags_deleted"].as_u64()), (Some("planned"), Some(0)), "{r}");
    }
    assert_eq!(repos[0]["tags_to_delete"], 2);
    assert_eq!(state(&seed).await, before, "a dry run deletes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_for_one_repository_prints_json_and_leaves_the_others() {
    let reg = seeded_registry(RegistryOptions::default()).await;
    let seed = reg.client();
    let before = state(&seed).await;
    let dir = tempdir();
    let config = write_config(dir.path(), reg.url(), "", "", POLICY_PARAMS);
    let config = path_str(&config);
    let out = tagwarden_blocking(
        dir.path(),
        &["run", "--once", "--config", config, "--now", NOW, "--repository", "group/app", "--output", "json"],
        &[],
    );
    out.assert_success();
    let v = out.json();
    assert_eq!(v["dry_run"], false);
    let repos = v["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 1, "{v:#}");
    let r = &repos[0];
    assert_eq!(
        (r["repository"].as_str(), r["policy"].as_str(), r["status"].as_str()),
        (Some("group/app"), Some("apps"), Some("completed"))
    );
    assert_eq!((r["tags_seen"].as_u64(), r["tags_to_delete"].as_u64(), r["tags_deleted"].as_u64()), (Some(3), Some(2), Some(2)), "{r}");
    assert_eq!(r["not_deleted"], serde_json::json!([]));
    let after = state(&seed).await;
    assert_eq!(after["group/app"].keys().collect::<Vec<_>>(), ["new-1"]);
    assert_eq!(after["group/web"], before["group/web"], "--repository limits the pass to one repository");
    assert_eq!(after["other/tool"], before["other/tool"]);

    // A repository no policy matches is an error, not a silent no-op.
    let out = tagwarden_blocking(dir.path(), &["run", "--once", "--config", config, "--repository", "other/tool"], &[]);
    out.assert_error(&["other/tool"]);
    assert_eq!(state(&seed).await["other/tool"], before["other/tool"]);

    // A repository a policy matches but the registry does not have: nothing to do, a success.
    let out =
        tagwarden_blocking(dir.path(), &["run", "--once", "--config", config, "--repository", "group/missing", "--output", "json"], &[]);
    out.assert_success();
    let v = out.json();
    assert_eq!(v["repositories"][0]["status"], "not_found", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_exits_non_zero_when_a_repository_fails_and_says_why() {
    let reg = seeded_registry(RegistryOptions { deletes_enabled: false, ..Default::default() }).await;
    let seed = reg.client();
    let before = state(&seed).await;
    let dir = tempdir();
    let config = write_config(dir.path(), reg.url(), "", "", POLICY_PARAMS);
    let out = tagwarden_blocking(dir.path(), &["run", "--once", "--config", path_str(&config), "--now", NOW], &[]);
    assert!(matches!(out.code, Some(c) if c != 0), "a failed repository must fail the run:\n{out:#?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    for repo in ["group/app", "group/web"] {
        let row = out.stdout.lines().find(|l| l.starts_with(repo)).unwrap_or_else(|| panic!("no row for {repo}:\n{}", out.stdout));
        assert!(row.contains("failed") && row.contains("405 UNSUPPORTED"), "{row}");
    }
    assert!(out.stdout.contains("2 repositories, 5 tags, 3 to delete, 0 deleted, 2 not completed"), "{}", out.stdout);
    assert_eq!(state(&seed).await, before, "nothing was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_applies_the_configured_host_guards() {
    let reg = seeded_registry(RegistryOptions::default()).await;
    let seed = reg.client();
    let before = state(&seed).await;
    let dir = tempdir();

    // group/app would lose 2 of 3 tags (67%): refused. group/web loses 1 of 2 (50%): allowed.
    let config = write_config(dir.path(), reg.url(), "", "max_delete_fraction = 0.5", POLICY_PARAMS);
    let out = tagwarden_blocking(dir.path(), &["run", "--once", "--config", path_str(&config), "--now", NOW, "--output", "json"], &[]);
    assert!(matches!(out.code, Some(c) if c != 0), "a refused repository is not a success:\n{out:#?}");
    let v = out.json();
    let repos = v["repositories"].as_array().unwrap();
    let app = repos.iter().find(|r| r["repository"] == "group/app").expect("group/app reported");
    let web = repos.iter().find(|r| r["repository"] == "group/web").expect("group/web reported");
    assert_eq!(app["status"], "refused", "{app:#}");
    assert!(app["detail"].as_str().is_some_and(|d| d.contains("max_delete_fraction")), "{app:#}");
    assert_eq!((app["tags_to_delete"].as_u64(), app["tags_deleted"].as_u64()), (Some(2), Some(0)), "{app:#}");
    assert_eq!((web["status"].as_str(), web["tags_deleted"].as_u64()), (Some("completed"), Some(1)), "{web:#}");
    let after = state(&seed).await;
    assert_eq!(after["group/app"], before["group/app"], "the refused repository is untouched");
    assert_eq!(after["group/web"].keys().collect::<Vec<_>>(), ["new-1"]);

    // A protection rule keeps old-1 whatever the plugin says.
    let config = write_config(dir.path(), reg.url(), "", "protect = [\"old-1\"]", POLICY_PARAMS);
    let out = tagwarden_blocking(dir.path(), &["run", "--once", "--config", path_str(&config), "--now", NOW, "--plan"], &[]);
    out.assert_success();
    let protected = out
        .stdout
        .lines()
        .find(|l| l.contains("old-1") && l.contains("protected"))
        .unwrap_or_else(|| panic!("--plan shows the protected tag and why:\n{}", out.stdout));
    assert!(protected.trim_start().starts_with("keep") && protected.contains("host rule"), "{protected}");
    let after = state(&seed).await;
    assert_eq!(after["group/app"].keys().collect::<Vec<_>>(), ["new-1", "old-1"]);
    assert_eq!(after["group/app"]["old-1"], before["group/app"]["old-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_with_a_bad_config_names_the_key_and_contacts_no_registry() {
    let reg = seeded_registry(RegistryOptions::default()).await;
    let seed = reg.client();
    let before = state(&seed).await;
    // The config points at a proxy, so any request tagwarden sends is seen.
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let cases: [(&str, &str, &str, &[&str]); 4] = [
        ("keep_n = -1", "", r#"{ name_regex_delete = ".*", keep_n = -1 }"#, &["keep_n", "apps"]),
        ("timeout = \"soon\"", "", POLICY_PARAMS, &["deletion.timeout", "soon"]),
        ("an unknown key", "colour = \"blue\"", POLICY_PARAMS, &["colour"]),
        ("an unknown param", "", r#"{ name_regex_delete = ".*", keep_nn = 3 }"#, &["keep_nn"]),
    ];
    for (what, registry_extra, params, needles) in cases {
        let dir = tempdir();
        let config = write_config(dir.path(), proxy.url(), registry_extra, "", params);
        if what.starts_with("timeout") {
            let text = std::fs::read_to_string(&config).unwrap().replace("timeout = \"30s\"", "timeout = \"soon\"");
            std::fs::write(&config, text).unwrap();
        }
        let out = tagwarden_blocking(dir.path(), &["run", "--once", "--config", path_str(&config), "--now", NOW], &[]);
        out.assert_error(needles);
        assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
        assert_eq!(proxy.requests(), vec![], "{what}: the registry was contacted before the config was validated");
    }
    assert_eq!(state(&seed).await, before, "nothing was deleted");
}

// ---------------------------------------------------------------------------------------------
// record

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_writes_a_recording_of_the_registrys_tags() {
    let reg = seeded_registry(RegistryOptions::default()).await;
    let seed = reg.client();
    let shared = seed.resolve("group/app", "old-1").await.unwrap().unwrap();
    seed.retag("group/app", &shared, "alias").await.unwrap();
    let before = snapshot(&seed, "group/app").await;
    let dir = tempdir();
    let file = dir.path().join("app.json");
    let out =
        tagwarden_blocking(dir.path(), &["record", "--registry", reg.url(), "--repository", "group/app", "--output", path_str(&file)], &[]);
    out.assert_success();
    assert!(out.stderr.contains("recorded 4 tags of group/app"), "{}", out.stderr);
    let recording = Recording::read(&file).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(recording.list.repository, "group/app");
    let recorded: BTreeMap<String, String> = recording.list.tags().iter().map(|t| (t.name.clone(), t.digest.as_str().to_owned())).collect();
    assert_eq!(recorded, before);
    let by = |n: &str| recording.list.tags().iter().find(|t| t.name == n).unwrap();
    assert_eq!(by("old-1").created_at, Some(Timestamp::parse_rfc3339(&days_ago(30)).unwrap()));
    assert_eq!(by("new-1").created_at, Some(Timestamp::parse_rfc3339(&days_ago(1)).unwrap()));
    assert_eq!(by("alias").digest, by("old-1").digest);
    assert!(recording.list.untagged().is_empty());
    let age = Timestamp::now().unix_micros() - recording.recorded_at.unix_micros();
    assert!((0..600_000_000).contains(&age), "recorded_at is the time of recording: {}", recording.recorded_at);

    // Without --output the recording goes to stdout.
    let out = tagwarden_blocking(dir.path(), &["record", "--registry", reg.url(), "--repository", "group/app"], &[]);
    out.assert_success();
    let to_stdout = Recording::parse(&out.stdout).unwrap_or_else(|e| panic!("{e:#}\n{}", out.stdout));
    assert_eq!(to_stdout.list, recording.list);

    // The recording evaluates like any other.
    let out = tagwarden_blocking(
        dir.path(),
        &["eval", "--plugin", "gitlab-retention", "--params", r#"{"name_regex_delete": "old-.*"}"#, "--recording", path_str(&file)],
        &[],
    );
    out.assert_success();
    assert!(out.stdout.contains("group/app: 4 tags, 2 to delete, 2 to keep"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_of_an_unknown_repository_fails_clearly() {
    let reg = seeded_registry(RegistryOptions::default()).await;
    let dir = tempdir();
    let file = dir.path().join("missing.json");
    let out = tagwarden_blocking(
        dir.path(),
        &["record", "--registry", reg.url(), "--repository", "group/missing", "--output", path_str(&file)],
        &[],
    );
    out.assert_error(&["group/missing", "does not exist"]);
    assert!(!file.exists(), "no recording is written for a missing repository");
}

/// Standard base64 (for the `Authorization: Basic` value that must never be printed either).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_base64_helper_is_right() {
    assert_eq!(base64(b"robot:pw"), "cm9ib3Q6cHc=");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"abc"), "YWJj");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_any_output() {
    let auth = Auth::Basic { user: "robot".into(), password: "right-Password-9931".into() };
    let reg = seeded_registry(RegistryOptions { auth, ..Default::default() }).await;
    let seed = reg.client();
    let before = state(&seed).await;
    let secret = "Zebra-Secret-4471-wrong";
    let forbidden = |password: &str| vec![password.to_owned(), base64(format!("robot:{password}").as_bytes())];
    let check = |what: &str, out: &Outcome, password: &str| {
        for needle in forbidden(password) {
            assert!(!out.stdout.contains(&needle), "{what}: stdout shows a credential:\n{}", out.stdout);
            assert!(!out.stderr.contains(&needle), "{what}: stderr shows a credential:\n{}", out.stderr);
        }
    };
    let dir = tempdir();
    let file = dir.path().join("app.json");
    let record = |verbose: &[&'static str], password: &str| {
        let mut args: Vec<&str> = verbose.to_vec();
        args.extend(["record", "--registry", reg.url(), "--repository", "group/app", "--output", path_str(&file), "--username", "robot"]);
        tagwarden_blocking(dir.path(), &args, &[("TAGWARDEN_REGISTRY_PASSWORD", password)])
    };

    // A wrong password, quietly and with debug logging.
    for verbose in [&[][..], &["-vv"][..]] {
        let out = record(verbose, secret);
        check(&format!("record {verbose:?} with a wrong password"), &out, secret);
        out.assert_error(&["401"]);
        assert!(out.stderr.contains("check the username and password"), "{}", out.stderr);
    }
    // The right password, with debug logging: it works and is not printed either.
    let out = record(&["-vv"], "right-Password-9931");
    out.assert_success();
    check("record -vv with the right password", &out, "right-Password-9931");
    assert!(Recording::read(&file).is_ok());

    // `run` with the password in the environment variable the config names.
    let config = write_config(dir.path(), reg.url(), "username = \"robot\"\npassword_env = \"TW_CLI_TEST_SECRET\"", "", POLICY_PARAMS);
    for verbose in ["-v", "-vv"] {
        let out = tagwarden_blocking(
            dir.path(),
            &[verbose, "run", "--once", "--config", path_str(&config), "--now", NOW],
            &[("TW_CLI_TEST_SECRET", secret)],
        );
        check(&format!("run {verbose} with a wrong password"), &out, secret);
        assert!(matches!(out.code, Some(c) if c != 0), "{out:#?}");
        assert!(out.stderr.contains("401") || out.stdout.contains("401"), "{out:#?}");
    }
    assert_eq!(state(&seed).await, before, "nothing was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_debug_output() {
    let reg = seeded_registry(RegistryOptions { auth: Auth::Token(Default::default()), ..Default::default() }).await;
    let (user, password) = reg.credentials().unwrap();
    let (user, password) = (user.to_owned(), password.to_owned());
    let dir = tempdir();
    let file = dir.path().join("app.json");
    let out = tagwarden_blocking(
        dir.path(),
        &["-vv", "record", "--registry", reg.url(), "--repository", "group/app", "--output", path_str(&file), "--username", &user],
        &[("TAGWARDEN_REGISTRY_PASSWORD", &password)],
    );
    out.assert_success();
    assert!(reg.token_server().unwrap().tokens_issued() > 1, "tokens were used");
    let both = format!("{}\n{}", out.stdout, out.stderr);
    assert!(!both.contains(&password), "the password is printed:\n{both}");
    assert!(!both.contains(&base64(format!("{user}:{password}").as_bytes())), "the Basic credentials are printed:\n{both}");
    // Every JWT starts with the base64 of `{"`.
    assert!(!both.contains("eyJ"), "a token is printed:\n{both}");
    assert_eq!(Recording::read(&file).unwrap().list.tags().len(), 3);
}

#[test]
fn credentials_in_a_registry_url_are_never_echoed() {
    // A password in the URL is refused (credentials belong in the credentials setting) and must
    // not be printed back, whether or not the rest of the URL parses: error output ends up in CI
    // logs.
    let dir = tempdir();
    let secret = "Url-Secret-5521";
    let mut leaks = Vec::new();
    for url in [format!("http://robot:{secret}@127.0.0.1:1"), format!("http://robot:{secret}@[::1")] {
        let out = tagwarden(dir.path(), &["record", "--registry", &url, "--repository", "group/app"]);
        out.assert_error(&["registry"]);
        if out.stderr.contains(secret) || out.stdout.contains(secret) {
            leaks.push(format!("record --registry {url}:\n{}", out.stderr));
        }
        let config = write_config(dir.path(), &url, "", "", POLICY_PARAMS);
        let out = tagwarden(dir.path(), &["run", "--once", "--config", path_str(&config)]);
        out.assert_error(&["registry"]);
        if out.stderr.contains(secret) || out.stdout.contains(secret) {
            leaks.push(format!("run with registry.url = {url}:\n{}", out.stderr));
        }
    }
    assert!(leaks.is_empty(), "the password in the URL is echoed:\n{}", leaks.join("\n"));
}

/// A pass over recordings audits its deletions after the fact, thousands of rows a commit
/// (they end with the process: nothing a crash could leave unrecorded). Past one commit's
/// worth of rows, every deletion — whole manifests and tags removed from a kept manifest —
/// has exactly one row, written with its outcome and the pass's run, none left `attempted`.
#[test]
fn a_pass_over_recordings_audits_every_deletion_once_with_its_outcome() {
    const TAGS: usize = 20_000;
    let dir = tempdir();
    let recordings = dir.path().join("recordings");
    std::fs::create_dir_all(&recordings).unwrap();
    let digest = |i: usize| format!("sha256:{i:064x}");
    let mut tags = Vec::new();
    for k in 0..TAGS {
        // Every tenth `old-` tag shares its manifest with a `keep-` tag: that tag goes alone.
        let (name, d) = match k % 10 {
            0 => (format!("keep-{k:05}"), digest(k)),
            1 => (format!("old-{k:05}"), digest(k - 1)),
            _ => (format!("old-{k:05}"), digest(k)),
        };
        tags.push(format!(
            r#"{{"name": "{name}", "digest": "{d}", "created_at": "2025-01-01T00:00:00Z", "pushed_at": "2025-01-01T00:00:00Z"}}"#
        ));
    }
    let text = format!(
        r#"{{"format": "tagwarden.recording.v1", "repository": "group/big", "recorded_at": "{NOW}", "tags": [{}]}}"#,
        tags.join(",\n")
    );
    std::fs::write(recordings.join("big.json"), text).unwrap();
    let config = dir.path().join("tagwarden.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\nrecordings = \"{}\"\n\n[state]\ndir = \"{}\"\n\n\
             [[policy]]\nname = \"apps\"\nrepositories = [\"**\"]\nplugin = \"gitlab-retention\"\n\
             params = {{ name_regex_delete = \"old-.*\", keep_n = 0 }}\n",
            recordings.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = tagwarden(dir.path(), &["run", "--once", "--config", path_str(&config), "--now", NOW, "--output", "json"]);
    out.assert_success();
    let report = &out.json()["repositories"][0];
    let to_delete = TAGS - TAGS / 10;
    assert_eq!((report["status"].as_str(), report["tags_deleted"].as_u64()), (Some("completed"), Some(to_delete as u64)), "{report}");

    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let rows = store.audit_log().recent(None, 2 * TAGS).unwrap();
    assert!(rows.iter().all(|r| r.outcome == "deleted"), "every row has its outcome: {:?}", rows.iter().find(|r| r.outcome != "deleted"));
    let runs: BTreeMap<Option<i64>, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.run_id).or_default() += 1;
        m
    });
    assert!(runs.len() == 1 && runs.keys().all(Option::is_some), "every row names the pass's run: {runs:?}");
    let mut deleted: Vec<&str> = rows.iter().flat_map(|r| r.tags.iter().map(String::as_str)).collect();
    deleted.sort_unstable();
    let before = deleted.len();
    deleted.dedup();
    assert_eq!((before, deleted.len()), (to_delete, to_delete), "one row per deleted tag, none twice");
    assert!(deleted.iter().all(|t| t.starts_with("old-")), "no kept tag in the audit log");
    let shared: Vec<&str> = rows.iter().filter(|r| r.operation == "delete_tag").flat_map(|r| r.tags.iter().map(String::as_str)).collect();
    assert_eq!(shared.len(), TAGS / 10, "tags on a kept manifest are removed one by one");
    assert!(shared.iter().all(|t| t.ends_with('1')), "{:?}", &shared[..3]);
    assert!(rows.iter().all(|r| r.decided_by.starts_with("policy apps (plugin gitlab-retention 0.1.0 sha256:")), "{}", rows[0].decided_by);
}
