//! Imports to a GitLab-compatible registry and the long-running import guard (seed 000), against
//! the test bed's `ImportServer`: a STAND-IN, because no registry that can run here implements
//! GitLab's import API any more. It keeps per-repository import state and answers with the
//! documented codes and bodies; faults replace single answers. Everything else is real: the
//! HTTP client, the SQLite state, the bundled `stale-timeout` plugin in Wasm, and (for the
//! cleanup check) a real registry.
//!
//! Time is the `now` each round is given, so hours pass without sleeping.

use std::time::Duration;

use serde_json::json;
use tagwarden::model::Timestamp;
use tagwarden::registry::{RegistryClient, RegistryConfig};
use tagwarden::runtime::PluginLimits;
use tagwarden::scheduler::imports::{ImportSettings, ImportWorker, RoundReport};
use tagwarden::store::{ImportState, Store};
use tagwarden_testbed::{ImportFault, ImportServer, Progress};

use crate::pass::{self, gitlab, now, snapshot};
use crate::support;

const MIN: u64 = 60;

fn at(secs_after_now: u64) -> Timestamp {
    now().saturating_add(Duration::from_secs(secs_after_now))
}

fn settings(capacity: usize, max_retries: u32, timeout_per_tag: Option<Duration>) -> ImportSettings {
    ImportSettings {
        capacity,
        guard_interval: Duration::from_secs(60),
        max_retries,
        timeout_per_tag,
        delete_timeout: Duration::from_secs(250),
    }
}

/// A worker on `server` with the bundled stale-timeout (defaults: `import_timeout` 1 h) and no
/// request-level retries (every fault reaches the worker).
fn worker(server: &ImportServer, store: &Store, settings: ImportSettings) -> ImportWorker {
    let mut config = RegistryConfig::new(server.url().parse().unwrap());
    config.max_retries = 0;
    let client = RegistryClient::new(config, None).unwrap();
    let stale = support::plugin("stale-timeout", PluginLimits::default()).into_stale().unwrap();
    let strategies = tagwarden::setup::StrategySet::new(tagwarden::setup::Strategies { backoff: None, stale: Some((stale, "{}".into())) });
    ImportWorker::new(client, store.imports(), settings, strategies).unwrap()
}

fn state(store: &Store, path: &str) -> tagwarden::store::ImportRecord {
    store.imports().get(path).unwrap().unwrap_or_else(|| panic!("no import of {path}"))
}

async fn round(w: &ImportWorker, t: Timestamp) -> RoundReport {
    w.round(t).await.unwrap()
}

fn requests(server: &ImportServer, method: &str) -> Vec<String> {
    server.requests().into_iter().filter(|(m, _)| m == method).map(|(_, p)| p).collect()
}

/// Every branch of the guard, one row each: the local state and its step's age, the retries so
/// far, what the registry says and answers, and what the import becomes. `max_retries` is 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_takes_every_branch() {
    struct Row {
        what: &'static str,
        local: ImportState,
        age_secs: u64,
        retries: u32,
        /// The registry's status (`None`: never imported, 404).
        registry: Option<&'static str>,
        fault: Option<(&'static str, u16, serde_json::Value)>,
        want: ImportState,
        want_reason: &'static str,
        want_retries: u32,
        /// The cancel outcome recorded, if a cancel was sent.
        want_cancel: Option<&'static str>,
    }
    let row = |what, local, age_secs, retries, registry, want, want_reason, want_retries, want_cancel| Row {
        what,
        local,
        age_secs,
        retries,
        registry,
        fault: None,
        want,
        want_reason,
        want_retries,
        want_cancel,
    };
    use ImportState::*;
    let hour = 60 * MIN;
    let table = vec![
        row("running within its timeout: left alone", Importing, 30 * MIN, 0, Some("import_in_progress"), Importing, "", 0, None),
        row(
            "running past its timeout, far from the limit: cancelled (202), aborted",
            Importing,
            2 * hour,
            0,
            Some("import_in_progress"),
            ImportAborted,
            "canceled: import has run for 2h",
            1,
            Some("accepted"),
        ),
        row(
            "running past its timeout, near the limit: cancelled (202), skipped",
            PreImporting,
            2 * hour,
            2,
            Some("pre_import_in_progress"),
            ImportSkipped,
            "migration_canceled",
            2,
            Some("accepted"),
        ),
        Row {
            fault: Some(("DELETE", 400, json!({"status": "import_complete"}))),
            ..row(
                "cancel refused (400), the body says import_complete: reconciled to import_done (GitLab aborted)",
                Importing,
                2 * hour,
                0,
                Some("import_in_progress"),
                ImportDone,
                "",
                0,
                Some("nothing_to_cancel"),
            )
        },
        Row {
            fault: Some(("DELETE", 400, json!({"status": "pre_import_complete"}))),
            ..row(
                "cancel refused (400), the body says pre_import_complete: reconciled to pre_import_done",
                PreImporting,
                2 * hour,
                1,
                Some("pre_import_in_progress"),
                PreImportDone,
                "",
                1,
                Some("nothing_to_cancel"),
            )
        },
        Row {
            fault: Some(("DELETE", 400, json!({"status": "import_failed"}))),
            ..row(
                "cancel refused (400), the body says import_failed: aborted",
                Importing,
                2 * hour,
                0,
                Some("import_in_progress"),
                ImportAborted,
                "cancel refused (400): the registry reports import_failed",
                1,
                Some("nothing_to_cancel"),
            )
        },
        Row {
            fault: Some(("DELETE", 400, json!({}))),
            ..row(
                "cancel refused (400) without a status: aborted",
                Importing,
                2 * hour,
                0,
                Some("import_in_progress"),
                ImportAborted,
                "without a status",
                1,
                Some("nothing_to_cancel"),
            )
        },
        Row {
            fault: Some(("DELETE", 404, json!({"errors": [{"code": "NAME_UNKNOWN"}]}))),
            ..row(
                "cancel answered 404: aborted",
                Importing,
                2 * hour,
                0,
                Some("import_in_progress"),
                ImportAborted,
                "(404)",
                1,
                Some("not_found"),
            )
        },
        Row {
            fault: Some(("DELETE", 503, json!({"errors": [{"code": "UNAVAILABLE"}]}))),
            ..row(
                "cancel answered 503: aborted",
                Importing,
                2 * hour,
                0,
                Some("import_in_progress"),
                ImportAborted,
                "cancel failed",
                1,
                Some("error"),
            )
        },
        row(
            "not importing at the registry (failed): aborted at once",
            Importing,
            MIN,
            0,
            Some("import_failed"),
            ImportAborted,
            "the registry reports import_failed",
            1,
            None,
        ),
        row(
            "the registry does not know the import (404), past the timeout: aborted",
            Importing,
            2 * hour,
            0,
            None,
            ImportAborted,
            "the registry status is unknown",
            1,
            None,
        ),
        row("the registry does not know the import (404), within the timeout: left", Importing, 10 * MIN, 0, None, Importing, "", 0, None),
        row(
            "aborted at the retry limit: skipped, too_many_retries",
            Importing,
            MIN,
            2,
            Some("import_failed"),
            ImportSkipped,
            "too_many_retries",
            3,
            None,
        ),
        row(
            "the registry finished the pre-import: reconciled",
            PreImporting,
            MIN,
            0,
            Some("pre_import_complete"),
            PreImportDone,
            "",
            0,
            None,
        ),
        row("the registry finished the import: reconciled", Importing, 3 * hour, 0, Some("import_complete"), ImportDone, "", 0, None),
        row("native at the registry: import_done", Importing, MIN, 0, Some("native"), ImportDone, "native_import", 0, None),
    ];
    for (i, r) in table.iter().enumerate() {
        let server = ImportServer::start().await.unwrap();
        let store = Store::in_memory().unwrap();
        let w = worker(&server, &store, settings(4, 3, None));
        let path = format!("g/row{i}");
        server.add_repository(&path, 10, Progress::Never);
        server.set_status(&path, r.registry);
        if let Some((method, status, body)) = &r.fault {
            server.inject(ImportFault { method, path_contains: path.clone(), status: *status, body: body.clone(), times: 1 });
        }
        store.put_import_state(&path, r.local, Some(now().saturating_sub(Duration::from_secs(r.age_secs))), r.retries).unwrap();
        let mut report = RoundReport::default();
        w.guard(now(), &mut report).await.unwrap();
        let after = state(&store, &path);
        assert_eq!(after.state, r.want, "row {i}: {}: {report:?}", r.what);
        assert!(after.reason.as_deref().unwrap_or("").contains(r.want_reason), "row {i}: {}: reason {:?}", r.what, after.reason);
        assert_eq!(after.retries, r.want_retries, "row {i}: {}", r.what);
        let cancels = store.imports().cancel_counts().unwrap();
        match r.want_cancel {
            Some(outcome) => {
                assert_eq!(cancels, [(outcome.to_owned(), 1)], "row {i}: {}", r.what);
                assert_eq!(requests(&server, "DELETE").len(), 1, "row {i}");
            }
            None => assert!(cancels.is_empty() && requests(&server, "DELETE").is_empty(), "row {i}: {}: {cancels:?}", r.what),
        }
        if r.want_cancel == Some("accepted") {
            assert!(server.status(&path).unwrap().ends_with("_canceled"), "row {i}: the registry cancelled it");
        }
    }
}

/// Pre-import then final import for every repository, never more than `capacity` running at the
/// registry; a `--pre-only` one stops after its pre-import until it is queued again without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_run_pre_then_final_within_capacity() {
    let server = ImportServer::start().await.unwrap();
    let store = Store::in_memory().unwrap();
    let w = worker(&server, &store, settings(2, 3, None));
    let paths: Vec<String> = (0..3).map(|i| format!("g/app{i}")).collect();
    for p in &paths {
        server.add_repository(p, 5, Progress::Completes);
    }
    server.add_repository("g/pre", 5, Progress::Completes);
    store.imports().enqueue(&paths, false, now()).unwrap();
    store.imports().enqueue(&["g/pre".into()], true, now()).unwrap();
    let mut rounds = 0;
    while paths.iter().any(|p| state(&store, p).state != ImportState::ImportDone) {
        rounds += 1;
        assert!(rounds < 20, "imports did not finish: {:?}", store.imports().list(None).unwrap());
        round(&w, at(rounds * MIN)).await;
        let running = ["g/app0", "g/app1", "g/app2", "g/pre"]
            .iter()
            .filter(|p| server.status(p).is_some_and(|s| s.ends_with("_in_progress")))
            .count();
        assert!(running <= 2, "round {rounds}: {running} imports running at once");
    }
    for p in &paths {
        let r = state(&store, p);
        assert!(r.pre_import_done_at.is_some() && r.import_started_at.is_some() && r.import_done_at.is_some(), "{r:?}");
        let events: Vec<String> = store.imports().history(p).unwrap().into_iter().map(|h| h.event).collect();
        assert_eq!(events, ["start_pre_import", "finish_pre_import", "start_import", "finish_import"], "{p}");
    }
    for _ in 0..3 {
        rounds += 1;
        round(&w, at(rounds * MIN)).await;
    }
    assert_eq!(state(&store, "g/pre").state, ImportState::PreImportDone, "pre-only stops after its pre-import");
    assert!(!requests(&server, "PUT").iter().any(|p| p.starts_with("/gitlab/v1/import/g/pre/?import_type=final")));
    store.imports().enqueue(&["g/pre".into()], false, at(rounds * MIN)).unwrap();
    for _ in 0..3 {
        rounds += 1;
        round(&w, at(rounds * MIN)).await;
    }
    assert_eq!(state(&store, "g/pre").state, ImportState::ImportDone, "queued again without --pre-only: the final import followed");
}

/// 429 backs the import off (Retry-After when sent, else 30 s doubling), and nothing else is
/// started in that round; 404 skips; 401 changes nothing; 424 aborts and the retry redoes the
/// pre-import; 200 is done; 409 is reconciled from the registry's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_answers_are_each_handled() {
    let server = ImportServer::start().await.unwrap();
    let store = Store::in_memory().unwrap();
    let w = worker(&server, &store, settings(5, 3, None));
    let log = store.imports();
    // 429 with Retry-After: 120 s.
    server.limit(1, Some(120));
    for p in ["g/a", "g/b", "g/c"] {
        server.add_repository(p, 1, Progress::Never);
    }
    log.enqueue(&["g/a".into(), "g/b".into(), "g/c".into()], false, now()).unwrap();
    let r = round(&w, now()).await;
    assert_eq!(state(&store, "g/a").state, ImportState::PreImporting);
    assert_eq!(r.rate_limited, [("g/b".to_owned(), at(120))]);
    assert_eq!(requests(&server, "PUT").len(), 2, "g/c is not tried once the registry said it is full");
    let b = state(&store, "g/b");
    assert_eq!((b.state, b.rate_limited, b.next_attempt_at), (ImportState::Default, 1, Some(at(120))));
    server.clear_requests();
    round(&w, at(60)).await;
    assert!(requests(&server, "PUT").iter().all(|p| !p.contains("g/b")), "g/b backs off until 120 s");
    // Without Retry-After: the second 429 in a row waits 60 s.
    server.limit(1, None);
    let r = round(&w, at(121)).await;
    assert_eq!(r.rate_limited, [("g/b".to_owned(), at(181))]);
    server.limit(100, None);

    // 404: skipped, not_found.
    log.enqueue(&["g/unknown".into()], false, now()).unwrap();
    // 200: already imported.
    server.add_repository("g/done", 1, Progress::Never);
    server.set_status("g/done", Some("import_complete"));
    log.enqueue(&["g/done".into()], false, now()).unwrap();
    // 409: the registry is already importing it: recorded as started, then reconciled.
    server.add_repository("g/busy", 1, Progress::Never);
    server.set_status("g/busy", Some("import_in_progress"));
    log.enqueue(&["g/busy".into()], false, now()).unwrap();
    // 424: a final import whose pre-import failed.
    server.add_repository("g/prefail", 1, Progress::Never);
    // The registry still says pre_import_complete (so the guard leaves it), but refuses the final import.
    server.set_status("g/prefail", Some("pre_import_complete"));
    server.inject(ImportFault {
        method: "PUT",
        path_contains: "g/prefail/?import_type=final".into(),
        status: 424,
        body: json!({"status": "pre_import_failed"}),
        times: 1,
    });
    store.put_import_state("g/prefail", ImportState::Importing, Some(now()), 0).unwrap();
    log.apply("g/prefail", tagwarden::store::ImportEvent::FinishPreImport, now(), &Default::default()).unwrap();
    assert!(state(&store, "g/prefail").pre_import_done_at.is_some());
    round(&w, at(200)).await;
    let unknown = state(&store, "g/unknown");
    assert_eq!((unknown.state, unknown.reason.as_deref()), (ImportState::ImportSkipped, Some("not_found")));
    let done = state(&store, "g/done");
    assert_eq!((done.state, done.reason.as_deref()), (ImportState::ImportDone, Some("already_imported")));
    assert_eq!(state(&store, "g/busy").state, ImportState::PreImporting);
    let prefail = state(&store, "g/prefail");
    assert_eq!((prefail.state, prefail.pre_import_done_at), (ImportState::ImportAborted, None), "424: aborted, pre-import to redo");
    round(&w, at(300)).await;
    assert_eq!(state(&store, "g/busy").state, ImportState::Importing, "reconciled to the registry's import_in_progress");
    assert_eq!(state(&store, "g/prefail").state, ImportState::PreImporting, "the retry redoes the pre-import");
    assert!(requests(&server, "PUT").iter().any(|p| p == "/gitlab/v1/import/g/prefail/?import_type=pre"));

    // 401: nothing changes, the error is reported.
    server.require_credentials("u", "p");
    log.enqueue(&["g/c2".into()], false, now()).unwrap();
    let r = round(&w, at(400)).await;
    assert!(r.errors.iter().any(|e| e.contains("401")), "{:?}", r.errors);
    assert_eq!(state(&store, "g/c2").state, ImportState::Default);
}

/// The dynamic timeout: with `timeout_per_tag`, a pre-import may run its tag count times that
/// long (read when it started), where the fixed `import_timeout` (1 h) would have cancelled it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_import_timeout_grows_with_the_tag_count() {
    let server = ImportServer::start().await.unwrap();
    let store = Store::in_memory().unwrap();
    let w = worker(&server, &store, settings(4, 3, Some(Duration::from_secs(1))));
    server.add_repository("g/big", 3 * 3600, Progress::Never); // 3 h at 1 s a tag
    server.add_repository("g/small", 60, Progress::Never); // 1 min
    store.imports().enqueue(&["g/big".into(), "g/small".into()], false, now()).unwrap();
    round(&w, now()).await;
    assert_eq!(state(&store, "g/big").tags, Some(3 * 3600));
    assert_eq!(state(&store, "g/small").tags, Some(60));
    // The guard alone: a round would also retry what it aborts.
    let mut r = RoundReport::default();
    w.guard(at(2 * 3600), &mut r).await.unwrap();
    assert_eq!(state(&store, "g/big").state, ImportState::PreImporting, "2 h < 3 h: healthy: {r:?}");
    let small = state(&store, "g/small");
    assert_eq!(small.state, ImportState::ImportAborted, "2 h > 1 min: cancelled");
    assert!(small.reason.as_deref().unwrap().contains("longer than import_timeout 1m"), "{:?}", small.reason);
    w.guard(at(3 * 3600 + 1), &mut r).await.unwrap();
    assert_eq!(state(&store, "g/big").state, ImportState::ImportAborted, "past 3 h: cancelled");
}

/// §5 of the issue: a cleanup pass does not delete in a repository being imported; it ends
/// unfinished with that reason and touches nothing. Once the import is done, it deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_pass_does_not_delete_in_a_repository_being_imported() {
    let reg = pass::registry().await;
    let seed = reg.client();
    for tag in ["a", "b"] {
        seed.push_image("g/app", tag, Some(&pass::ago(pass::days(30)))).await.unwrap();
    }
    let before = snapshot(&seed, "g/app").await;
    let store = Store::in_memory().unwrap();
    let ctx = pass::context(pass::client(reg.url(), &store), &store);
    let policy = gitlab(json!({"name_regex_delete": ".*", "keep_latest": false}));
    for state in [ImportState::PreImporting, ImportState::PreImportDone, ImportState::Importing] {
        store.put_import_state("g/app", state, Some(now()), 0).unwrap();
        let report = pass::run(&ctx, &policy, "g/app").await;
        match &report.status {
            tagwarden::pass::RepositoryStatus::Unfinished(why) => {
                assert!(why.contains(&format!("being imported ({state})")), "{why}")
            }
            other => panic!("{state}: {other:?}"),
        }
        assert_eq!((report.tags_seen, report.tags_deleted), (0, 0));
        assert_eq!(snapshot(&seed, "g/app").await, before, "{state}: nothing deleted");
        assert!(pass::audit(&store, "g/app").is_empty());
    }
    store.put_import_state("g/app", ImportState::ImportDone, None, 0).unwrap();
    let report = pass::run(&ctx, &policy, "g/app").await;
    assert_eq!((report.status.clone(), report.tags_deleted), (tagwarden::pass::RepositoryStatus::Completed, 2));
}

/// The operator's commands, through the real binary: start (capacity 1), list, show, check, a
/// refused retry, and bad input that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_imports_commands() {
    let server = ImportServer::start().await.unwrap();
    for p in ["g/a", "g/b"] {
        server.add_repository(p, 3, Progress::Never);
    }
    let dir = tempfile::tempdir().unwrap();
    let plugin = support::plugin_path("gitlab-retention").display().to_string();
    let config = format!(
        "[registry]\nurl = {:?}\nmax_retries = 0\n\n[state]\ndir = \"state\"\n\n[imports]\ncapacity = 1\n\n\
         [[policy]]\nname = \"all\"\nrepositories = [\"**\"]\nplugin = {plugin:?}\n",
        server.url()
    );
    std::fs::write(dir.path().join("tagwarden.toml"), config).unwrap();
    let run = |args: &[&str]| crate::serve::tagwarden(dir.path(), args);

    let (code, out) = run(&["imports", "start", "g/a", "Bad/Name"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("`Bad/Name` is not a valid repository name"), "{out}");
    let (code, out) = run(&["imports", "start", "g/a", "g/b"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("g/a: queued") && out.contains("g/a: default → pre_importing: pre import started"), "{out}");
    let (code, out) = run(&["imports", "list"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("by state: default 1, pre_importing 1"), "capacity 1 holds g/b back: {out}");

    let (code, out) = run(&["imports", "retry", "g/a"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("event `reset` is not allowed from state `pre_importing`"), "{out}");
    let (code, out) = run(&["imports", "list", "--state", "bogus"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("unknown import state `bogus`") && out.contains("import_skipped"), "{out}");

    let (code, out) = run(&["imports", "check"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("checked 1 imports, 0 changed"), "within its timeout: {out}");
    let (code, out) = run(&["imports", "show", "g/a", "--output", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["state"].as_str(), v["registry_status"].as_str()), (Some("pre_importing"), Some("pre_import_in_progress")));
    assert_eq!(v["history"][0]["event"], "start_pre_import");
}
