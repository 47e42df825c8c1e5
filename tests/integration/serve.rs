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
         [deletion]\ntimeout = \"60s\"\nconcurrency = 2\n\n[serve]\nworker_capacity = 2\n\n\
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
    let (class, reason) = a1.last_failure.clone().expect("the failure is recorded");
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
