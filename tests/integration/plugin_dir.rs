//! `serve`'s plugin directory (`[plugins] dir`) end to end: the real binary against a REAL
//! registry (distribution, behind the test bed's fault proxy), files dropped into the
//! directory while the daemon runs. Every wait is on a log line or on the state database.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tagwarden::store::{CleanupStatus, PluginState, StateStore, Store};
use tagwarden_testbed::FaultProxy;

use crate::pass::{days, registry};
use crate::serve::tagwarden;
use tagwarden::model::Timestamp;

const REACH: Duration = Duration::from_secs(60);

fn ago(age: Duration) -> String {
    Timestamp::now().saturating_sub(age).to_rfc3339()
}

/// `bytes` with a custom section appended: the same plugin, another sha256 (a "new version").
fn with_custom_section(bytes: &[u8], payload: &str) -> Vec<u8> {
    let name = b"tagwarden-test";
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(payload.as_bytes());
    assert!(content.len() < 128, "one LEB128 byte");
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(content.len() as u8);
    out.extend(content);
    out
}

/// Writes `bytes` under a temporary name and renames it into place, as deployment tools do.
fn install(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A running `serve` whose stderr lines arrive on a channel.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    output: String,
}

impl Daemon {
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
            .current_dir(dir)
            .args(args)
            .env("NO_COLOR", "1")
            .env("TAGWARDEN_CACHE_DIR", dir.join("compiled"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Daemon { child, lines, output: String::new() }
    }

    /// Waits for a line containing every one of `parts`; returns the lines up to it.
    pub(crate) async fn expect(&mut self, parts: &[&str]) -> String {
        let mut seen = String::new();
        let found = tokio::time::timeout(REACH, async {
            while let Some(line) = self.lines.recv().await {
                seen.push_str(&line);
                seen.push('\n');
                if parts.iter().all(|p| line.contains(p)) {
                    return true;
                }
            }
            false
        })
        .await;
        self.output.push_str(&seen);
        assert!(matches!(found, Ok(true)), "no line with {parts:?}:\n{}", self.output);
        seen
    }

    pub(crate) async fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        while let Some(line) = self.lines.recv().await {
            self.output.push_str(&line);
            self.output.push('\n');
        }
        let code = tokio::task::block_in_place(|| self.child.wait()).unwrap().code();
        assert_eq!(code, Some(0), "{}", self.output);
        std::mem::take(&mut self.output)
    }
}

/// A test that fails before `stop` leaves no daemon behind.
impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn plugin_row(store: &Store, name: &str) -> tagwarden::store::PluginRecord {
    store.plugin_table().list().unwrap().into_iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no row for plugin {name}"))
}

/// Waits until plugin `name`'s row satisfies `ok` (the daemon writes it right after its log
/// line), then returns it.
async fn row_when(store: &Store, name: &str, ok: impl Fn(&tagwarden::store::PluginRecord) -> bool) -> tagwarden::store::PluginRecord {
    crate::crash::wait_until(|| {
        let done = store.plugin_table().list().unwrap().iter().any(|p| p.name == name && ok(p));
        async move { done }
    })
    .await;
    plugin_row(store, name)
}

/// Waits until policy `name` is enabled (or not) in the state.
async fn policy_enabled(store: &Store, name: &str, enabled: bool) {
    crate::crash::wait_until(|| {
        let done = store.policy(name).unwrap().is_some_and(|p| p.enabled == enabled);
        async move { done }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_is_swapped_in_while_a_pass_runs_bad_files_leave_the_old_version_serving_and_removal_pauses() {
    let reg = registry().await;
    let seed = reg.client();
    for r in 0..2 {
        for i in 0..5u64 {
            seed.push_image(&format!("builds/r{r}"), &format!("b-{i}"), Some(&ago(days(10 - i)))).await.unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let v1 = std::fs::read(crate::support::plugin_path("gitlab-retention")).unwrap();
    let v2 = with_custom_section(&v1, "version 2");
    let (sha1, sha2) = (tagwarden::model::sha256_hex(&v1), tagwarden::model::sha256_hex(&v2));
    install(&plugins, "keep.wasm", &v1);
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let config = dir.path().join("tagwarden.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\nurl = {:?}\nmax_retries = 0\n\n[state]\ndir = \"state\"\n\n[deletion]\ntimeout = \"60s\"\nconcurrency = 1\n\n\
             [serve]\nworker_capacity = 1\nlisten = \"off\"\n\n\
             [plugins]\ndir = \"plugins\"\nwatch_interval = \"50ms\"\nsettle = \"2s\"\n\n\
             [[policy]]\nname = \"builds\"\nrepositories = [\"builds/r0\", \"builds/r1\"]\nplugin = \"keep\"\ncadence = \"7d\"\n\
             params = {{ name_regex_delete = \"b-.*\", keep_n = 2 }}\n",
            proxy.url()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();

    // The first pass (on v1) is held at its first delete; one worker, so the other repository waits.
    let mut held = proxy.hold(Some("DELETE"), "/v2/builds/", 1);
    let mut daemon = Daemon::start(dir.path(), &["serve", "--config", &config_arg]);
    let loaded = daemon.expect(&["plugin keep: loaded", "compiled", "policies: builds"]).await;
    assert!(loaded.contains(&sha1[..12]), "{loaded}");
    let request = held.next(REACH).await.expect("the first pass deletes");
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let row = plugin_row(&store, "keep");
    assert_eq!(
        (row.state, row.sha256.as_deref(), row.declared_name.as_deref()),
        (PluginState::Active, Some(&*sha1), Some("gitlab-retention"))
    );

    // Bad files, each failing at its step while v1 stays in service.
    for (bytes, step, why) in [
        (b"not a plugin at all".to_vec(), "load", "is not a WebAssembly file"),
        (std::fs::read(crate::support::plugin_path("wrong-world")).unwrap(), "load", "exports none of"),
        (crate::contract::built_for_contract_0_9(&v2), "load", "was built for tagwarden:policy@0.9.1, but this host accepts"),
        (std::fs::read(crate::support::plugin_path("hostile-retention")).unwrap(), "params", "policy `builds`"),
    ] {
        install(&plugins, "keep.wasm", &bytes);
        let line = daemon.expect(&["plugin keep:", "failed to load at step"]).await;
        assert!(line.contains(&format!("step `{step}`")) && line.contains(why), "{line}");
        assert!(line.contains(&format!("previous version (sha256:{}) stays in service", &sha1[..12])), "{line}");
        let row = row_when(&store, "keep", |r| r.reason.as_deref().is_some_and(|r| r.contains(why))).await;
        assert_eq!((row.state, row.sha256.as_deref()), (PluginState::Failed, Some(&*sha1)), "{row:?}");
    }
    let (code, status) = tagwarden(dir.path(), &["status", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{status}");
    assert!(status.contains("plugin keep failed") && status.contains("stays in service"), "{status}");

    // Half a file (a copy in progress) is tried, not reported broken; the whole file is swapped in.
    std::fs::write(plugins.join("keep.wasm"), &v2[..v2.len() / 2]).unwrap();
    daemon.expect(&["plugin keep:", "does not load yet"]).await;
    std::fs::write(plugins.join("keep.wasm"), &v2).unwrap();
    let swapped = daemon.expect(&["plugin keep: swapped in"]).await;
    assert!(!swapped.contains("failed to load"), "the half-written file was reported broken:\n{swapped}");
    assert!(swapped.contains(&sha2[..12]) && swapped.contains(&format!("replacing sha256:{}", &sha1[..12])), "{swapped}");
    row_when(&store, "keep", |r| r.state == PluginState::Active && r.sha256.as_deref() == Some(&*sha2)).await;

    // The held pass finishes on v1; the next one runs on v2.
    request.forward();
    crate::crash::wait_until(|| {
        let done = ["builds/r0", "builds/r1"]
            .iter()
            .all(|r| store.repository(r).unwrap().is_some_and(|s| s.status == CleanupStatus::Unscheduled && s.completed_at.is_some()));
        async move { done }
    })
    .await;
    let mut runs = store.runs().recent(None, 10).unwrap();
    runs.sort_by_key(|r| r.id);
    let by: Vec<(&str, bool, bool)> = runs
        .iter()
        .map(|r| (r.status.as_str(), r.decided_by.contains(&format!("sha256:{sha1})")), r.decided_by.contains(&format!("sha256:{sha2})"))))
        .collect();
    assert_eq!(by, [("completed", true, false), ("completed", false, true)], "{runs:#?}\n{}", daemon.output);
    // v2's counts: the evaluation of the second pass only.
    let row = row_when(&store, "keep", |r| r.evaluations == 1).await;
    assert_eq!((row.evaluations, row.failures), (1, 0), "{row:?}");

    // Removing the file pauses the policy: disabled in the state, shown as paused.
    std::fs::remove_file(plugins.join("keep.wasm")).unwrap();
    daemon.expect(&["plugin keep: no file", "policies paused: builds"]).await;
    policy_enabled(&store, "builds", false).await;
    row_when(&store, "keep", |r| r.state == PluginState::Paused).await;
    let (code, list) = tagwarden(dir.path(), &["plugins", "list", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{list}");
    assert!(list.contains("keep") && list.contains("paused") && list.contains("was removed"), "{list}");
    daemon.stop().await;

    // A restart with the file back and a warm compile cache compiles nothing.
    install(&plugins, "keep.wasm", &v2);
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("plugin keep: loaded") && output.contains("from the compile cache"), "{output}");
    let row = plugin_row(&store, "keep");
    assert!(row.from_compile_cache && row.state == PluginState::Active && row.sha256.as_deref() == Some(&*sha2), "{row:?}");
    assert!(store.policy("builds").unwrap().unwrap().enabled, "back in service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_traps_k_times_in_a_row_is_quarantined_until_released() {
    let reg = registry().await;
    let seed = reg.client();
    for r in 0..2 {
        seed.push_image(&format!("builds/q{r}"), "b-0", Some(&ago(days(3)))).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    install(&plugins, "wild.wasm", &std::fs::read(crate::support::plugin_path("hostile-retention")).unwrap());
    let config = dir.path().join("tagwarden.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\nurl = {:?}\nmax_retries = 0\n\n[state]\ndir = \"state\"\n\n[serve]\nworker_capacity = 2\nlisten = \"off\"\n\n\
             [plugins]\ndir = \"plugins\"\nwatch_interval = \"50ms\"\nquarantine_after = 2\n\n\
             [[policy]]\nname = \"wild\"\nrepositories = [\"builds/q0\", \"builds/q1\"]\nplugin = \"wild\"\ncadence = \"7d\"\n\
             params = {{ mode = \"panic\" }}\n",
            reg.url()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    // A plugin directory that is not there stops `serve` at start, naming it; nothing runs.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("dir = \"plugins\"", "dir = \"missing\"")).unwrap();
    let (code, out) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("missing (`plugins.dir`) does not exist or is not a directory"), "{out}");
    assert!(!dir.path().join("state").exists(), "no state was created");
    std::fs::write(&config, text).unwrap();
    let (code, refused) = tagwarden(dir.path(), &["plugins", "release", "wild", "--config", &config_arg]);
    assert_eq!(code, Some(1), "{refused}");
    assert!(refused.contains("no state at"), "{refused}");

    let mut daemon = Daemon::start(dir.path(), &["serve", "--config", &config_arg]);
    let line = daemon.expect(&["plugin wild: quarantined"]).await;
    assert!(line.contains("2 evaluations in a row") && line.contains("panicked") && line.contains("policies paused: wild"), "{line}");
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    policy_enabled(&store, "wild", false).await;
    let row = row_when(&store, "wild", |r| r.state == PluginState::Quarantined).await;
    assert_eq!((row.evaluations, row.failures, row.consecutive_faults), (2, 2, 2), "{row:?}");
    // Nothing was deleted by the quarantined plugin.
    for r in 0..2 {
        assert_eq!(crate::pass::snapshot(&seed, &format!("builds/q{r}")).await.len(), 1);
    }

    // Releasing something that is not quarantined, or not there, is refused and changes nothing.
    let (code, out) = tagwarden(dir.path(), &["plugins", "release", "nothere", "--config", &config_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no plugin named `nothere`") && out.contains("known: wild"), "{out}");

    let (code, out) = tagwarden(dir.path(), &["plugins", "release", "wild", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{out}");
    daemon.expect(&["plugin wild: released from quarantine"]).await;
    policy_enabled(&store, "wild", true).await;
    let row = row_when(&store, "wild", |r| r.state == PluginState::Active).await;
    assert_eq!(row.consecutive_faults, 0, "{row:?}");
    let (code, out) = tagwarden(dir.path(), &["plugins", "release", "wild", "--config", &config_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is active, not quarantined"), "{out}");
    daemon.stop().await;
}

/// The canary (issue #11 §3) over the recordings backend: a new version that decides like the
/// old one swaps in at once; one that would delete more than the brake allows waits as
/// `pending` (across a restart too, its policies then paused) until `plugins approve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_over_the_brake_waits_for_approval_and_one_under_it_swaps_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let recs = dir.path().join("recs");
    crate::plugin_tools::write_recording(&recs, "a.json", "builds/a", 10);
    crate::plugin_tools::write_recording(&recs, "b.json", "builds/b", 10);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    // With no params, gitlab-retention deletes nothing; semver-lines deletes 2 of each 10.
    let v1 = std::fs::read(crate::support::plugin_path("gitlab-retention")).unwrap();
    let v2 = with_custom_section(&v1, "version 2");
    let v3 = std::fs::read(crate::support::plugin_path("semver-lines")).unwrap();
    let [sha1, sha2, sha3] = [&v1, &v2, &v3].map(|b| tagwarden::model::sha256_hex(b));
    install(&plugins, "keep.wasm", &v1);
    let config = dir.path().join("tagwarden.toml");
    std::fs::write(
        &config,
        "[registry]\nrecordings = \"recs\"\n\n[state]\ndir = \"state\"\n\n[serve]\nworker_capacity = 1\nlisten = \"off\"\n\n\
         [plugins]\ndir = \"plugins\"\nwatch_interval = \"50ms\"\nsettle = \"2s\"\ncanary_max_extra_deletions = 0.1\n\n\
         [[policy]]\nname = \"builds\"\nrepositories = [\"builds/*\"]\nplugin = \"keep\"\ncadence = \"7d\"\nparams = {}\n",
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let cli = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--config", &config_arg]);
        tokio::task::block_in_place(|| crate::cli::tagwarden(dir.path(), &a))
    };

    let mut daemon = Daemon::start(dir.path(), &["serve", "--config", &config_arg]);
    daemon.expect(&["plugin keep: loaded", "policies: builds"]).await;
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    // The canary compares on the repositories of the state: wait for the first passes.
    crate::crash::wait_until(|| {
        let done = ["builds/a", "builds/b"].iter().all(|r| store.repository(r).unwrap().is_some_and(|s| s.completed_at.is_some()));
        async move { done }
    })
    .await;

    // Under the brake (the same decisions): swapped in at once, the difference recorded.
    install(&plugins, "keep.wasm", &v2);
    let line = daemon.expect(&["plugin keep: canary of gitlab-retention"]).await;
    assert!(
        line.contains("2 repositories, 20 tags compared: the new version deletes 0 tags") && line.contains("under the brake"),
        "{line}"
    );
    daemon.expect(&["plugin keep: swapped in", &format!("replacing sha256:{}", &sha1[..12])]).await;
    row_when(&store, "keep", |r| r.state == PluginState::Active && r.sha256.as_deref() == Some(&*sha2)).await;
    let diff = cli(&["plugins", "diff", "keep", "--output", "json"]);
    diff.assert_success();
    let report = diff.json();
    assert_eq!((report["outcome"].as_str(), report["diff"]["tags"].as_u64()), (Some("swapped"), Some(20)), "{report:#}");
    assert_eq!((report["old"]["sha256"].as_str(), report["new"]["sha256"].as_str()), (Some(&*sha1), Some(&*sha2)));

    // Over the brake (4 of 20 tags more, 20% > 10%): pending, and the old version keeps serving.
    install(&plugins, "keep.wasm", &v3);
    let line = daemon.expect(&["plugin keep: canary of semver-lines"]).await;
    assert!(line.contains("deletes 4 tags the old one keeps (20.0%)") && line.contains("pending:"), "{line}");
    let row = row_when(&store, "keep", |r| r.state == PluginState::Pending).await;
    assert_eq!(row.sha256.as_deref(), Some(&*sha2), "the old version serves: {row:?}");
    assert!(row.reason.as_deref().unwrap().contains(&format!("sha256:{sha3}) waits for approval")), "{row:?}");
    assert!(store.policy("builds").unwrap().unwrap().enabled, "the policy runs on the old version");
    let list = cli(&["plugins", "list"]);
    list.assert_success();
    assert!(list.stdout.contains("pending") && list.stdout.contains("tagwarden plugins approve keep"), "{}", list.stdout);
    // The canary against the brake, in its column and in JSON (the API's `directory` shares it).
    assert!(list.stdout.contains("pending: +4 tags (20.0%), over the 10.0% brake"), "{}", list.stdout);
    let listed = cli(&["plugins", "list", "--output", "json"]).json();
    let keep = listed["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "keep").unwrap().clone();
    // Which compiler's code the version in service runs, in its column and in JSON.
    assert!(list.stdout.contains("CODE"), "{}", list.stdout);
    assert!(matches!(keep["tier"].as_str(), Some("baseline" | "optimized")), "{keep:#}");
    assert_eq!(
        (
            keep["state"].as_str(),
            keep["canary"]["outcome"].as_str(),
            keep["canary"]["extra_deletions"].as_u64(),
            keep["canary"]["tags"].as_u64()
        ),
        (Some("pending"), Some("pending"), Some(4), Some(20)),
        "{keep:#}"
    );
    let diff = cli(&["plugins", "diff", "keep"]);
    diff.assert_success();
    assert!(diff.stdout.contains("outcome: pending"), "{}", diff.stdout);
    assert!(diff.stdout.contains("builds/a: new deletes, old keeps (2): 1.0.0, 1.1.0"), "{}", diff.stdout);
    assert!(diff.stdout.contains("brake: 10.0% extra deletions allowed; exceeded"), "{}", diff.stdout);

    // A restart does not put the held version in service: nothing else serves, so it pauses.
    daemon.stop().await;
    let mut daemon = Daemon::start(dir.path(), &["serve", "--config", &config_arg]);
    let line = daemon.expect(&["plugin keep: canary of semver-lines"]).await;
    assert!(line.contains("pending: a canary held it before the daemon restarted"), "{line}");
    let row = row_when(&store, "keep", |r| r.state == PluginState::Pending && r.sha256.is_none()).await;
    assert!(row.reason.as_deref().unwrap().contains("its policies pause until it is approved"), "{row:?}");
    policy_enabled(&store, "builds", false).await;

    // Approved: swapped in, the policy runs again; approving again is refused.
    let approve = cli(&["plugins", "approve", "keep"]);
    approve.assert_success();
    assert!(approve.stdout.contains(&format!("approval of semver-lines 0.1.0 (sha256:{sha3}) requested")), "{}", approve.stdout);
    daemon.expect(&["plugin keep: approved semver-lines", "swapped in"]).await;
    row_when(&store, "keep", |r| r.state == PluginState::Active && r.sha256.as_deref() == Some(&*sha3)).await;
    policy_enabled(&store, "builds", true).await;
    let report = cli(&["plugins", "diff", "keep", "--output", "json"]).json();
    assert_eq!(report["outcome"], "approved", "{report:#}");
    cli(&["plugins", "approve", "keep"]).assert_error(&["plugin `keep` is active, not pending"]);
    cli(&["plugins", "approve", "nothere"]).assert_error(&["no plugin named `nothere`", "known: keep"]);
    daemon.stop().await;
}

/// The backoff and stale plugins named in `[plugins]` as files of the directory are swapped
/// like retention plugins (issue #11 §2): a new version decides from then on without a
/// restart, a file of the wrong kind leaves the old one serving, and a removed file keeps the
/// last good version deciding (backoff and stale decisions delete no tags). The API and the
/// status page show each plugin's state with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_and_stale_plugins_of_the_directory_are_swapped_and_a_removed_one_keeps_deciding() {
    let dir = tempfile::tempdir().unwrap();
    crate::plugin_tools::write_recording(&dir.path().join("recs"), "a.json", "builds/a", 5);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let b1 = std::fs::read(crate::support::plugin_path("exponential-backoff")).unwrap();
    let s1 = std::fs::read(crate::support::plugin_path("stale-timeout")).unwrap();
    let (b2, s2) = (with_custom_section(&b1, "backoff 2"), with_custom_section(&s1, "stale 2"));
    let [sha_b1, sha_b2, sha_s1, sha_s2] = [&b1, &b2, &s1, &s2].map(|b| tagwarden::model::sha256_hex(b));
    install(&plugins, "retry.wasm", &b1);
    install(&plugins, "judge.wasm", &s1);
    // Every pass fails (the policy's plugin panics), so the backoff plugin decides every second.
    install(&plugins, "wild.wasm", &std::fs::read(crate::support::plugin_path("hostile-retention")).unwrap());
    let config = dir.path().join("tagwarden.toml");
    std::fs::write(
        &config,
        "[registry]\nrecordings = \"recs\"\n\n[state]\ndir = \"state\"\n\n[serve]\nworker_capacity = 1\nlisten = \"127.0.0.1:0\"\n\n\
         [plugins]\ndir = \"plugins\"\nwatch_interval = \"50ms\"\nsettle = \"1s\"\nquarantine_after = 1000\n\
         backoff = \"retry\"\nbackoff_params = { initial_delay = \"1s\", factor = 1.0, max_attempts = 1000, give_up_on_permanent = false }\n\
         stale = \"judge\"\n\n[plugins.backoff_limits]\nmemory_mib = 64\ntimeout = \"2s\"\n\n\
         [[policy]]\nname = \"wild\"\nrepositories = [\"builds/*\"]\nplugin = \"wild\"\ncadence = \"7d\"\nparams = { mode = \"panic\" }\n",
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let daemon = crate::api::start(dir.path(), &config);
    let http = reqwest::Client::new();
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let role = |v: &serde_json::Value, role: &str| -> serde_json::Value {
        v["plugins"].as_array().unwrap().iter().find(|p| p["role"] == role).cloned().unwrap_or_default()
    };
    let serving = |role_name: &'static str, sha: String, state: &'static str| {
        move |v: &serde_json::Value| {
            let r = role(v, role_name);
            r["sha256"].as_str() == Some(&*sha) && r["state"] == state
        }
    };

    // At start: both from the directory, in service.
    let v = daemon.wait_for(&http, "/api/v1/plugins", "both loaded", serving("backoff", sha_b1.clone(), "active")).await;
    assert_eq!((role(&v, "backoff")["plugin"].as_str(), role(&v, "stale")["plugin"].as_str()), (Some("retry"), Some("judge")), "{v:#}");
    assert_eq!(role(&v, "stale")["sha256"].as_str(), Some(&*sha_s1), "{v:#}");
    row_when(&store, "retry", |r| r.evaluations >= 1 && r.kind.as_deref() == Some("backoff")).await;

    // A new version of each: swapped in, and the new backoff version decides from then on
    // (its counts are its own, from zero).
    install(&plugins, "retry.wasm", &b2);
    install(&plugins, "judge.wasm", &s2);
    let v = daemon.wait_for(&http, "/api/v1/plugins", "backoff v2 in service", serving("backoff", sha_b2.clone(), "active")).await;
    // A version the compile cache does not hold serves at once with baseline code (tiered
    // compilation, x86_64), then with optimized code once the background compile (at low
    // priority, beside the tests running in parallel) is done; the API says which.
    let loaded = if cfg!(target_arch = "x86_64") { "baseline" } else { "optimized" };
    assert_eq!(role(&v, "backoff")["loaded_tier"], loaded, "{v:#}");
    let optimized =
        |v: &serde_json::Value| role(v, "backoff")["sha256"].as_str() == Some(&*sha_b2) && role(v, "backoff")["tier"] == "optimized";
    daemon.wait_for(&http, "/api/v1/plugins", "backoff v2 runs optimized code", optimized).await;
    // `plugins list` (the store's row) says so too.
    row_when(&store, "retry", |r| r.sha256.as_deref() == Some(&*sha_b2) && r.tier.as_deref() == Some("optimized")).await;
    daemon.wait_for(&http, "/api/v1/plugins", "stale v2 in service", serving("stale", sha_s2.clone(), "active")).await;
    row_when(&store, "retry", |r| r.sha256.as_deref() == Some(&*sha_b2) && r.evaluations >= 1).await;

    // A file of the wrong kind fails at `kind`; the version in service keeps deciding.
    install(&plugins, "retry.wasm", &s1);
    let v = daemon.wait_for(&http, "/api/v1/plugins", "the wrong kind fails", serving("backoff", sha_b2.clone(), "failed")).await;
    let reason = role(&v, "backoff")["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("step `kind`") && reason.contains("stays in service"), "{reason}");

    // A new version that rejects the configured params (`hostile-backoff` has params of its
    // own) fails at `params`; the version in service keeps deciding.
    install(&plugins, "retry.wasm", &std::fs::read(crate::support::plugin_path("hostile-backoff")).unwrap());
    let rejected = |v: &serde_json::Value| role(v, "backoff")["reason"].as_str().is_some_and(|r| r.contains("step `params`"));
    let v = daemon.wait_for(&http, "/api/v1/plugins", "new params rejected", rejected).await;
    let backoff = role(&v, "backoff");
    assert_eq!((backoff["state"].as_str(), backoff["sha256"].as_str()), (Some("failed"), Some(&*sha_b2)), "{v:#}");
    let reason = backoff["reason"].as_str().unwrap();
    assert!(
        reason.contains(r#"unknown param "factor", "give_up_on_permanent", "initial_delay", "max_attempts""#)
            && reason.contains("stays in service"),
        "{reason}"
    );
    let before = plugin_row(&store, "retry").evaluations;
    let row = row_when(&store, "retry", |r| r.evaluations > before).await;
    assert_eq!(row.sha256.as_deref(), Some(&*sha_b2), "the old version decided: {row:?}");

    // Removed: the last good version keeps deciding, shown `removed` with why.
    std::fs::remove_file(plugins.join("retry.wasm")).unwrap();
    let v = daemon.wait_for(&http, "/api/v1/plugins", "removed", serving("backoff", sha_b2.clone(), "removed")).await;
    let reason = role(&v, "backoff")["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("was removed") && reason.contains("keeps deciding"), "{reason}");
    let before = row_when(&store, "retry", |r| r.state == PluginState::Removed).await.evaluations;
    row_when(&store, "retry", |r| r.evaluations > before).await;
    let directory = &daemon.get(&http, "/api/v1/plugins").await.1["directory"];
    let row = directory.as_array().unwrap().iter().find(|p| p["name"] == "retry").unwrap();
    assert_eq!((row["state"].as_str(), row["kind"].as_str()), (Some("removed"), Some("backoff")), "{row:#}");
    let page = http.get(daemon.url("/plugins")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("removed") && page.contains("keeps deciding") && page.contains("retry.wasm"), "{page}");
    let list = tokio::task::block_in_place(|| crate::cli::tagwarden(dir.path(), &["plugins", "list", "--config", &config_arg]));
    list.assert_success();
    assert!(list.stdout.contains("removed") && list.stdout.contains("keeps deciding"), "{}", list.stdout);

    // Back: active again.
    install(&plugins, "retry.wasm", &b2);
    daemon.wait_for(&http, "/api/v1/plugins", "back", serving("backoff", sha_b2.clone(), "active")).await;
    assert!(store.repository("builds/a").unwrap().is_some_and(|r| r.consecutive_failures > 3), "retried, never given up");
}

/// A backoff plugin of the directory that faults `quarantine_after` times in a row is
/// quarantined like a retention plugin (issue #11 §6), but nothing pauses: the host's default
/// backoff decides meanwhile (no quick retries from a broken plugin), until `plugins release`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_plugin_that_faults_is_quarantined_the_hosts_default_decides_until_released() {
    let dir = tempfile::tempdir().unwrap();
    crate::plugin_tools::write_recording(&dir.path().join("recs"), "a.json", "builds/a", 5);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    // Passes the host's trial at start (a first failure), then panics from the second on.
    install(&plugins, "fragile.wasm", &std::fs::read(crate::support::plugin_path("hostile-backoff")).unwrap());
    // Every pass fails with an error the plugin answers (a failure, not a fault: only the
    // backoff plugin faults here, and `quarantine_after` is one setting for both).
    install(&plugins, "wild.wasm", &std::fs::read(crate::support::plugin_path("hostile-retention")).unwrap());
    let config = dir.path().join("tagwarden.toml");
    std::fs::write(
        &config,
        "[registry]\nrecordings = \"recs\"\n\n[state]\ndir = \"state\"\n\n[serve]\nworker_capacity = 1\nlisten = \"127.0.0.1:0\"\n\n\
         [plugins]\ndir = \"plugins\"\nwatch_interval = \"50ms\"\nquarantine_after = 1\n\
         backoff = \"fragile\"\nbackoff_params = { delay = \"1s\", panic_from_attempt = 2 }\n\n\
         [[policy]]\nname = \"wild\"\nrepositories = [\"builds/*\"]\nplugin = \"wild\"\ncadence = \"7d\"\nparams = { mode = \"stderr\" }\n",
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let daemon = crate::api::start(dir.path(), &config);
    let http = reqwest::Client::new();
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let backoff =
        |v: &serde_json::Value| v["plugins"].as_array().unwrap().iter().find(|p| p["role"] == "backoff").cloned().unwrap_or_default();

    // The first failure: the plugin decides (1 s). The second: it panics, the host's default
    // decides that retry, and the plugin is quarantined.
    let row = row_when(&store, "fragile", |r| r.state == PluginState::Quarantined).await;
    assert_eq!((row.kind.as_deref(), row.evaluations, row.failures, row.consecutive_faults), (Some("backoff"), 2, 1, 1), "{row:?}");
    let reason = row.reason.unwrap();
    assert!(reason.contains("panicked") && reason.contains("the host's default backoff decides"), "{reason}");
    let v = daemon.wait_for(&http, "/api/v1/plugins", "quarantine shown", |v| backoff(v)["state"] == "quarantined").await;
    assert_eq!(backoff(&v)["plugin"].as_str(), Some("fragile"), "{v:#}");
    let repo = store.repository("builds/a").unwrap().unwrap();
    let wait = repo.next_attempt_at.map(|t| t.unix_micros() - Timestamp::now().unix_micros());
    assert_eq!(repo.consecutive_failures, 2, "{repo:?}");
    assert!(wait.is_some_and(|w| w > 100_000_000), "the host's default (4 min after a 2nd failure), not the plugin's 1 s: {repo:?}");
    // Its policies do not pause: the daemon's backoff plugin decides no tags.
    assert!(store.policy("wild").unwrap().is_some_and(|p| p.enabled), "the cleanup policy keeps running");

    let out =
        tokio::task::block_in_place(|| crate::cli::tagwarden(dir.path(), &["plugins", "release", "fragile", "--config", &config_arg]));
    out.assert_success();
    let row = row_when(&store, "fragile", |r| r.state == PluginState::Active).await;
    assert_eq!(row.consecutive_faults, 0, "{row:?}");
    daemon.wait_for(&http, "/api/v1/plugins", "back in service", |v| backoff(v)["state"] == "active").await;
}

/// A stale plugin of the directory that faults `quarantine_after` times in a row is
/// quarantined like a retention plugin (issue #11 §6); meanwhile no work is judged stale (a
/// pass held far past the plugin's threshold is left to run and finishes), and nothing pauses;
/// `plugins release` puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_plugin_that_faults_is_quarantined_no_work_is_judged_stale_until_released() {
    let reg = registry().await;
    let seed = reg.client();
    for i in 0..5u64 {
        seed.push_image("builds/r0", &format!("b-{i}"), Some(&ago(days(10 - i)))).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    install(&plugins, "keep.wasm", &std::fs::read(crate::support::plugin_path("gitlab-retention")).unwrap());
    // Passes the host's trial at start (a cleanup that has just started), then panics on
    // every check of work that has run for a second.
    install(&plugins, "judge.wasm", &std::fs::read(crate::support::plugin_path("hostile-stale")).unwrap());
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let config = dir.path().join("tagwarden.toml");
    std::fs::write(
        &config,
        format!(
            "[registry]\nurl = {:?}\nmax_retries = 0\n\n[state]\ndir = \"state\"\n\n[deletion]\ntimeout = \"60s\"\nconcurrency = 1\n\n\
             [serve]\nworker_capacity = 1\nlisten = \"off\"\nstale_check = \"1s\"\n\n\
             [plugins]\ndir = \"plugins\"\nwatch_interval = \"50ms\"\nquarantine_after = 2\n\
             stale = \"judge\"\nstale_params = {{ panic_after = \"1s\" }}\n\n\
             [[policy]]\nname = \"builds\"\nrepositories = [\"builds/r0\"]\nplugin = \"keep\"\ncadence = \"7d\"\n\
             params = {{ name_regex_delete = \"b-.*\", keep_n = 2 }}\n",
            proxy.url()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();

    // The pass is held at its first delete; the stale check asks the plugin every second.
    let mut held = proxy.hold(Some("DELETE"), "/v2/builds/", 1);
    let daemon = Daemon::start(dir.path(), &["serve", "--config", &config_arg]);
    let request = held.next(REACH).await.expect("the pass deletes");
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let row = row_when(&store, "judge", |r| r.state == PluginState::Quarantined).await;
    assert_eq!(row.kind.as_deref(), Some("stale"), "{row:?}");
    assert!(row.consecutive_faults >= 2 && row.failures >= 2, "two faults in a row: {row:?}");
    let reason = row.reason.unwrap();
    assert!(reason.contains("panicked") && reason.contains("no work is judged stale"), "{reason}");
    assert!(store.policy("builds").unwrap().is_some_and(|p| p.enabled), "the cleanup policy keeps running");

    // Quarantined, the plugin is not asked again, though the held pass is still in progress:
    // its counts stay put over two and a half stale checks (that nothing happens takes a
    // while to see). The pass is left alone and finishes once its delete goes through.
    let faults = row.failures;
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        assert_eq!(plugin_row(&store, "judge").failures, faults, "asked again while quarantined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    request.forward();
    crate::crash::wait_until(|| {
        let done =
            store.repository("builds/r0").unwrap().is_some_and(|s| s.status == CleanupStatus::Unscheduled && s.completed_at.is_some());
        async move { done }
    })
    .await;
    assert_eq!(plugin_row(&store, "judge").failures, faults, "asked again while quarantined");

    let (code, out) = tokio::task::block_in_place(|| tagwarden(dir.path(), &["plugins", "release", "judge", "--config", &config_arg]));
    assert_eq!(code, Some(0), "{out}");
    let row = row_when(&store, "judge", |r| r.state == PluginState::Active).await;
    assert_eq!(row.consecutive_faults, 0, "{row:?}");
    let output = daemon.stop().await;
    assert!(!output.contains("cleanup stale"), "no work was judged stale:\n{output}");
}
