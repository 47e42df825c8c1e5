//! `tagwarden serve` end to end against a REAL registry (distribution 2.8), the real binary,
//! and the test bed's fault proxy: repositories under two policies, capacity 2, one
//! repository whose deletes are forbidden until the test lifts the fault, and a SIGKILL of
//! the daemon while a pass is in flight.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tagwarden::store::{CleanupStatus, StateStore, Store};
use tagwarden_testbed::{Fault, FaultProxy};

use tagwarden::model::Timestamp;

use crate::pass::{audit, days, registry, snapshot};

/// RFC 3339 time `age` before the real clock: the daemon evaluates at the time of each pass.
fn ago(age: Duration) -> String {
    Timestamp::now().saturating_sub(age).to_rfc3339()
}

pub(crate) fn tagwarden(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_tagwarden"))
            .current_dir(dir)
            .args(args)
            .env("NO_COLOR", "1")
            .env("TAGWARDEN_CACHE_DIR", dir.join("compiled"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
    })
    .unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn write_config(dir: &Path, url: &str) -> std::path::PathBuf {
    let plugin = crate::support::plugin_path("gitlab-retention").display().to_string();
    let config = format!(
        "[registry]\nurl = {url:?}\nmax_retries = 0\n\n[state]\ndir = \"state\"\n\n\
         [deletion]\ntimeout = \"60s\"\nconcurrency = 2\n\n[serve]\nworker_capacity = 2\nlisten = \"127.0.0.1:0\"\n\n\
         [plugins]\nbackoff = \"exponential-backoff\"\nbackoff_params = {{ initial_delay = \"5m\" }}\n\n\
         [[policy]]\nname = \"builds\"\nrepositories = [\"builds/*\"]\nplugin = {plugin:?}\ncadence = \"7d\"\n\
         params = {{ name_regex_delete = \"b-.*\", keep_n = 2 }}\n\n\
         [[policy]]\nname = \"apps\"\nrepositories = [\"apps/*\"]\nplugin = {plugin:?}\ncadence = \"1d\"\n\
         params = {{ name_regex_delete = \".*\", name_regex_keep = \"stable\", older_than = \"7d\" }}\n"
    );
    let path = dir.join("tagwarden.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_until_idle_cleans_every_repository_backs_off_a_forbidden_one_and_recovers_from_sigkill() {
    let reg = registry().await;
    let seed = reg.client();
    // builds/r0..r3: b-0..b-4 a day apart (keep the 2 newest); apps/a0..a1: old and new
    // images, `stable` kept.
    for r in 0..4 {
        for i in 0..5u64 {
            seed.push_image(&format!("builds/r{r}"), &format!("b-{i}"), Some(&ago(days(10 - i)))).await.unwrap();
        }
    }
    for a in 0..2 {
        let repo = format!("apps/a{a}");
        seed.push_image(&repo, "old", Some(&ago(days(30)))).await.unwrap();
        seed.push_image(&repo, "stable", Some(&ago(days(30)))).await.unwrap();
        seed.push_image(&repo, "new", Some(&ago(days(1)))).await.unwrap();
    }
    let mut before = BTreeMap::new();
    for repo in ["builds/r0", "builds/r1", "builds/r2", "builds/r3", "apps/a0", "apps/a1"] {
        before.insert(repo, snapshot(&seed, repo).await);
    }
    let kept = |repo: &str| -> BTreeMap<String, String> {
        let keep: &[&str] = if repo.starts_with("builds") { &["b-3", "b-4"] } else { &["stable", "new"] };
        before[repo].iter().filter(|(t, _)| keep.contains(&t.as_str())).map(|(t, d)| (t.clone(), d.clone())).collect()
    };

    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let config = write_config(dir.path(), proxy.url());
    let config_arg = config.display().to_string();
    // apps/a1 may not delete (403) until the test lifts it.
    proxy.inject(Fault::Status { method: Some("DELETE".into()), path_contains: "/v2/apps/a1/".into(), status: 403, times: usize::MAX });

    // SIGKILL the daemon while it holds a delete of builds/r0 in flight.
    let mut held = proxy.hold(Some("DELETE"), "/v2/builds/r0/", 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir.path())
        .args(["serve", "--until-idle", "--config", &config_arg])
        .env("TAGWARDEN_CACHE_DIR", dir.path().join("compiled"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let request = held.next(Duration::from_secs(60)).await.expect("the daemon deletes in builds/r0");
    child.kill().unwrap();
    child.wait().unwrap();
    request.forward();
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    assert_eq!(store.repository("builds/r0").unwrap().unwrap().status, CleanupStatus::Ongoing, "killed mid-pass");

    // Restart: the dead daemon's claim is taken back at once, everything converges; the
    // forbidden repository backs off.
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("builds/r0: taken back"), "{output}");
    for repo in ["builds/r0", "builds/r1", "builds/r2", "builds/r3", "apps/a0"] {
        assert_eq!(snapshot(&seed, repo).await, kept(repo), "{repo}: {output}");
        let state = store.repository(repo).unwrap().unwrap();
        assert_eq!(state.status, CleanupStatus::Unscheduled, "{repo}: {state:?}\n{output}");
        assert!(state.completed_at.is_some(), "{repo}: {state:?}");
    }
    assert_eq!(snapshot(&seed, "apps/a1").await, before["apps/a1"], "nothing deleted while forbidden");
    let a1 = store.repository("apps/a1").unwrap().unwrap();
    assert_eq!((a1.status, a1.consecutive_failures), (CleanupStatus::Unfinished, 1), "{a1:?}\n{output}");
    // The backoff plugin decided: a 403 is retried (give_up_on_unauthorized is off), after
    // its initial_delay of 5 minutes.
    let retry_in = a1.next_attempt_at.expect("backs off").unix_micros() - Timestamp::now().unix_micros();
    assert!(retry_in > 4 * 60 * 1_000_000 && retry_in <= 5 * 60 * 1_000_000, "next attempt in {retry_in} µs: {a1:?}");
    let failure = a1.last_failure.clone().expect("the failure is recorded");
    let (class, reason) = (failure.class, failure.reason);
    assert!(class == "unauthorized" && reason.contains("403"), "{class}: {reason}");

    // Every manifest the registry lost has its audit row; none is left open.
    for repo in ["builds/r0", "builds/r1", "builds/r2", "builds/r3", "apps/a0"] {
        let rows = audit(&store, repo);
        assert!(rows.iter().all(|r| r.outcome != "attempted"), "{repo}: {rows:#?}");
        for (tag, digest) in &before[repo] {
            if !kept(repo).contains_key(tag) {
                assert!(
                    rows.iter().any(|r| &r.digest == digest && (r.outcome == "deleted" || r.outcome == "already_gone")),
                    "{repo}: {tag} lost without an audit row: {rows:#?}"
                );
            }
        }
    }

    // The operator lifts the restriction and retries: it succeeds.
    proxy.clear();
    let (code, output) = tagwarden(dir.path(), &["repos", "retry", "--config", &config_arg, "apps/a1"]);
    assert_eq!(code, Some(0), "{output}");
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(snapshot(&seed, "apps/a1").await, kept("apps/a1"), "{output}");
    assert_eq!(store.repository("apps/a1").unwrap().unwrap().status, CleanupStatus::Unscheduled);

    // Nothing is due again before the cadence: a further run claims nothing.
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("0 passes"), "{output}");
    let (code, output) = tagwarden(dir.path(), &["status", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("cleanup_unscheduled") && output.contains('6'), "{output}");
}

#[test]
fn bad_backoff_params_fail_at_start_naming_the_key_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: the error must come before any request.
    let config = write_config(dir.path(), "http://127.0.0.1:9");
    let text = std::fs::read_to_string(&config).unwrap().replace("initial_delay = \"5m\"", "initial_delay = \"soon\"");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir.path())
        .args(["serve", "--until-idle", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("TAGWARDEN_CACHE_DIR", dir.path().join("compiled"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("plugins.backoff_params") && stderr.contains("initial_delay"), "{stderr}");
    assert!(!dir.path().join("state/tagwarden.db").exists(), "no state written: {stderr}");
}

/// The config of the twenty-repository run: a small deletion budget behind slow deletes
/// forces unfinished passes; the backoff plugin retries after a second and gives up after
/// three failures.
fn write_fleet_config(dir: &Path, url: &str) -> std::path::PathBuf {
    let plugin = crate::support::plugin_path("gitlab-retention").display().to_string();
    let config = format!(
        "[registry]\nurl = {url:?}\nmax_retries = 0\n\n[state]\ndir = \"state\"\n\n\
         [deletion]\ntimeout = \"250ms\"\nconcurrency = 1\n\n[serve]\nworker_capacity = 2\nlisten = \"127.0.0.1:0\"\nstale_check = \"1s\"\n\n\
         [plugins]\nbackoff = \"exponential-backoff\"\nbackoff_params = {{ initial_delay = \"1s\", max_attempts = 3 }}\n\n\
         [[policy]]\nname = \"builds\"\nrepositories = [\"builds/*\", \"locked/*\"]\nplugin = {plugin:?}\ncadence = \"7d\"\n\
         params = {{ name_regex_delete = \"b-.*\", keep_n = 2 }}\n\n\
         [[policy]]\nname = \"apps\"\nrepositories = [\"apps/*\"]\nplugin = {plugin:?}\ncadence = \"1d\"\n\
         params = {{ name_regex_delete = \".*\", name_regex_keep = \"stable\", older_than = \"7d\" }}\n"
    );
    let path = dir.join("tagwarden.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Digests the registry lost in `repo` since `before` must be exactly the digests of the
/// repository's `deleted`/`already_gone` audit rows, and no row may stay open.
async fn assert_audit_matches_the_registry(store: &Store, seed: &tagwarden_testbed::Seeder, repo: &str, before: &BTreeMap<String, String>) {
    let now: std::collections::BTreeSet<String> = snapshot(seed, repo).await.into_values().collect();
    let lost: std::collections::BTreeSet<String> = before.values().filter(|d| !now.contains(*d)).cloned().collect();
    let rows = audit(store, repo);
    assert!(rows.iter().all(|r| r.outcome != "attempted"), "{repo}: {rows:#?}");
    let audited: std::collections::BTreeSet<String> =
        rows.iter().filter(|r| r.outcome == "deleted" || r.outcome == "already_gone").map(|r| r.digest.clone()).collect();
    assert_eq!(lost, audited, "{repo}: what the registry lost vs what the audit log says");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_repositories_converge_through_budgets_a_sigkill_a_forbidden_repository_and_a_deletion() {
    let reg = registry().await;
    let seed = reg.client();
    // builds/r0..r11 and locked/l0: b-0..b-5 a day apart (keep the 2 newest: 4 to delete
    // each); apps/a0..a6: old, stable, new (old goes).
    let builds: Vec<String> = (0..12).map(|r| format!("builds/r{r}")).chain(["locked/l0".to_owned()]).collect();
    let apps: Vec<String> = (0..7).map(|a| format!("apps/a{a}")).collect();
    for repo in &builds {
        for i in 0..6u64 {
            seed.push_image(repo, &format!("b-{i}"), Some(&ago(days(10 - i)))).await.unwrap();
        }
    }
    for repo in &apps {
        seed.push_image(repo, "old", Some(&ago(days(30)))).await.unwrap();
        seed.push_image(repo, "stable", Some(&ago(days(30)))).await.unwrap();
        seed.push_image(repo, "new", Some(&ago(days(1)))).await.unwrap();
    }
    let all: Vec<&String> = builds.iter().chain(&apps).collect();
    assert_eq!(all.len(), 20);
    let mut before = BTreeMap::new();
    for repo in &all {
        before.insert(repo.as_str(), snapshot(&seed, repo).await);
    }
    let kept = |repo: &str| -> BTreeMap<String, String> {
        let keep: &[&str] = if repo.starts_with("apps") { &["stable", "new"] } else { &["b-4", "b-5"] };
        before[repo].iter().filter(|(t, _)| keep.contains(&t.as_str())).map(|(t, d)| (t.clone(), d.clone())).collect()
    };

    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let config = write_fleet_config(dir.path(), proxy.url());
    let config_arg = config.display().to_string();
    // Every delete answers slowly (the registry has acted): with a 250 ms budget a pass gets
    // through a few, and the rest is unfinished work.
    proxy.inject(Fault::SlowAnswer { method: Some("DELETE".into()), path_contains: "/v2/".into(), millis: 80 });
    proxy.inject(Fault::Status { method: Some("DELETE".into()), path_contains: "/v2/locked/l0/".into(), status: 403, times: usize::MAX });

    // SIGKILL the daemon while a delete of builds/r3 is in flight.
    let mut held = proxy.hold(Some("DELETE"), "/v2/builds/r3/", 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir.path())
        .args(["serve", "--until-idle", "--config", &config_arg])
        .env("TAGWARDEN_CACHE_DIR", dir.path().join("compiled"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let request = held.next(Duration::from_secs(120)).await.expect("the daemon deletes in builds/r3");
    child.kill().unwrap();
    child.wait().unwrap();
    request.forward();
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    assert_eq!(store.repository("builds/r3").unwrap().unwrap().status, CleanupStatus::Ongoing, "killed mid-pass");

    // Restart: everything converges with no operator; the forbidden one backs off and is
    // given up.
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("builds/r3: taken back"), "{output}");
    for repo in all.iter().filter(|r| r.as_str() != "locked/l0") {
        assert_eq!(snapshot(&seed, repo).await, kept(repo), "{repo}: {output}");
        let state = store.repository(repo).unwrap().unwrap();
        assert_eq!(state.status, CleanupStatus::Unscheduled, "{repo}: {state:?}\n{output}");
        assert_audit_matches_the_registry(&store, &seed, repo, &before[repo.as_str()]).await;
    }
    // The budget forced unfinished passes, which resumed.
    let runs = store.runs().recent(None, 1000).unwrap();
    assert!(
        runs.iter().any(|r| r.status == "unfinished" && r.detail.as_deref().is_some_and(|d| d.contains("delete timeout"))),
        "{runs:#?}"
    );
    let locked = store.repository("locked/l0").unwrap().unwrap();
    assert_eq!((locked.status, locked.consecutive_failures), (CleanupStatus::Failed, 3), "{locked:?}\n{output}");
    let failure = locked.last_failure.clone().unwrap();
    assert_eq!((failure.class.as_str(), failure.http_status), ("unauthorized", Some(403)), "{failure:?}");
    assert!(failure.reason.contains("gave up"), "{failure:?}");
    assert_eq!(snapshot(&seed, "locked/l0").await, before["locked/l0"], "nothing deleted while forbidden");
    let (code, shown) = tagwarden(dir.path(), &["repos", "show", "--config", &config_arg, "locked/l0"]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("cleanup_failed") && shown.contains("unauthorized 403") && shown.contains("repos retry"), "{shown}");

    // The operator fixes the permission and retries: it succeeds.
    proxy.clear();
    let (code, output) = tagwarden(dir.path(), &["repos", "retry", "--config", &config_arg, "locked/l0"]);
    assert_eq!(code, Some(0), "{output}");
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(snapshot(&seed, "locked/l0").await, kept("locked/l0"), "{output}");
    assert_eq!(store.repository("locked/l0").unwrap().unwrap().status, CleanupStatus::Unscheduled);
    assert_audit_matches_the_registry(&store, &seed, "locked/l0", &before["locked/l0"]).await;

    // Repository deletion: every tag and manifest goes, audited, decided by the operator.
    let (code, output) = tagwarden(dir.path(), &["repos", "delete", "--config", &config_arg, "apps/a0"]);
    assert_eq!(code, Some(0), "{output}");
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert!(snapshot(&seed, "apps/a0").await.is_empty(), "{output}");
    let deletion = store.deletion("apps/a0").unwrap().unwrap();
    assert_eq!((deletion.status, deletion.tags_deleted), (tagwarden::store::DeletionStatus::Deleted, 2), "{deletion:?}\n{output}");
    assert_audit_matches_the_registry(&store, &seed, "apps/a0", &before["apps/a0"]).await;
    assert!(audit(&store, "apps/a0").iter().any(|r| r.decided_by.contains("repository deletion")));
    // A deleted repository is not cleaned; nothing else is due.
    assert!(output.contains(" 0 passes"), "{output}");

    // cleanup-now: one pass, whatever the cadence says.
    let (code, output) = tagwarden(dir.path(), &["repos", "cleanup-now", "--config", &config_arg, "builds/r1"]);
    assert_eq!(code, Some(0), "{output}");
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("builds/r1: completed") && output.contains(" 1 passes"), "{output}");
    let (code, output) = tagwarden(dir.path(), &["runs", "list", "--config", &config_arg, "--repository", "builds/r1", "--output", "json"]);
    assert_eq!(code, Some(0), "{output}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&output).unwrap();
    assert!(listed.iter().all(|r| r["repository"] == "builds/r1") && !listed.is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_the_stale_plugin_judges_abandoned_is_stopped_at_a_safe_point_and_resumed() {
    let reg = registry().await;
    let seed = reg.client();
    for i in 0..6u64 {
        seed.push_image("builds/s0", &format!("b-{i}"), Some(&ago(days(10 - i)))).await.unwrap();
    }
    let before = snapshot(&seed, "builds/s0").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let config = write_fleet_config(dir.path(), proxy.url());
    // A 10 s budget; the stale plugin judges a cleanup abandoned after it plus no grace...
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout = \"250ms\"", "timeout = \"1s\"")
        .replace("[plugins]\n", "[plugins]\nstale_params = { cleanup_grace = \"0s\" }\n");
    std::fs::write(&config, text).unwrap();
    let config_arg = config.display().to_string();
    // ...and the first delete hangs at the proxy (the registry never answers) until released.
    let mut held = proxy.hold(Some("DELETE"), "/v2/builds/s0/", 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir.path())
        .args(["serve", "--until-idle", "--config", &config_arg])
        .env("NO_COLOR", "1")
        .env("TAGWARDEN_CACHE_DIR", dir.path().join("compiled"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The daemon's lines, as they come.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let request = held.next(Duration::from_secs(60)).await.expect("the daemon deletes in builds/s0");
    // The stale check runs every second: once the pass has run past its limit, the daemon
    // says so and asks the pass to stop (it cannot before the hung delete returns).
    let mut output = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.recv().await {
            output.push_str(&line);
            output.push('\n');
            if line.contains("builds/s0: cleanup stale") {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no stale verdict in time:\n{output}"));
    assert!(output.contains("stopping it at its next safe point"), "{output}");
    request.forward();
    while let Some(line) = lines.recv().await {
        output.push_str(&line);
        output.push('\n');
    }
    let code = tokio::task::block_in_place(|| child.wait()).unwrap().code();
    assert_eq!(code, Some(0), "{output}");
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let runs = store.runs().recent(Some("builds/s0"), 10).unwrap();
    assert!(
        runs.iter().any(|r| r.status == "unfinished" && r.detail.as_deref().is_some_and(|d| d.contains("stopped (stale"))),
        "{runs:#?}\n{output}"
    );
    // The stopped pass was resumed by the next claim and finished the job.
    let kept: BTreeMap<String, String> =
        before.iter().filter(|(t, _)| ["b-4", "b-5"].contains(&t.as_str())).map(|(t, d)| (t.clone(), d.clone())).collect();
    assert_eq!(snapshot(&seed, "builds/s0").await, kept, "{output}");
    assert_eq!(store.repository("builds/s0").unwrap().unwrap().status, CleanupStatus::Unscheduled);
    assert_audit_matches_the_registry(&store, &seed, "builds/s0", &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_readable_catalog_the_daemon_cleans_the_paths_policies_name_and_stops_cleanly_on_sigterm() {
    let reg = registry().await;
    let seed = reg.client();
    for i in 0..6u64 {
        seed.push_image("builds/named", &format!("b-{i}"), Some(&ago(days(10 - i)))).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let config = write_fleet_config(dir.path(), proxy.url());
    // The policy names the repository outright; the catalog answers 403 (no catalog scope).
    let text = std::fs::read_to_string(&config).unwrap().replace("[\"builds/*\", \"locked/*\"]", "[\"builds/named\"]");
    std::fs::write(&config, text).unwrap();
    proxy.inject(Fault::Status { method: None, path_contains: "/v2/_catalog".into(), status: 403, times: usize::MAX });
    let config_arg = config.display().to_string();

    // A script asking for `--until-idle` hears about the catalog at once.
    let (code, output) = tagwarden(dir.path(), &["serve", "--until-idle", "--config", &config_arg]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("listing the repositories") && output.contains("403"), "{output}");

    // A daemon keeps working from what it knows and says it will read the catalog again.
    let child = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir.path())
        .args(["serve", "--config", &config_arg])
        .env("NO_COLOR", "1")
        .env("TAGWARDEN_CACHE_DIR", dir.path().join("compiled"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    crate::crash::wait_until(|| {
        let done =
            store.repository("builds/named").unwrap().is_some_and(|r| r.status == CleanupStatus::Unscheduled && r.completed_at.is_some());
        async move { done }
    })
    .await;
    // SIGTERM: it stops claiming and exits 0 with nothing left ongoing.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{output}");
    assert!(output.contains("reading the catalog failed, trying again in"), "{output}");
    let kept: Vec<String> = snapshot(&seed, "builds/named").await.into_keys().collect();
    assert_eq!(kept, ["b-4", "b-5"], "{output}");
    assert!(store.leases().unwrap().is_empty(), "nothing left ongoing");
}
