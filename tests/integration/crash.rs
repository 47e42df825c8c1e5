//! Interrupted passes never cost a kept tag (issue 8): each case below is what an operator hit
//! on main before crash-safe deletion, replayed against a REAL registry (distribution 2.8) with
//! the test bed's fault proxy in front of it, and — for SIGKILL — the real `tagwarden` binary.
//!
//! Every test reads the registry itself afterwards (tag → digest), not only the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tagwarden::pass::{DUMMY_DIGEST, RepositoryStatus};
use tagwarden::store::{AuditRecord, Store};
use tagwarden_testbed::{Fault, FaultProxy, Held, Seeder};

use crate::pass::{ago, audit, client, client_with, context, days, gitlab, registry, run, set, snapshot, without};

/// How long a test waits for the pass to reach a held request before giving up.
const REACH: Duration = Duration::from_secs(60);

/// Open (`attempted`) audit rows.
fn open_rows(rows: &[AuditRecord]) -> Vec<&AuditRecord> {
    rows.iter().filter(|r| r.outcome == "attempted").collect()
}

/// `build-1`…`build-6`, one a day (build-6 the newest), and `stable` on build-1's manifest.
async fn six_builds_and_stable(seed: &Seeder, repo: &str) -> BTreeMap<String, String> {
    for i in 1..=6u64 {
        let digest = seed.push_image(repo, &format!("build-{i}"), Some(&ago(days(10 - i)))).await.unwrap();
        if i == 1 {
            seed.retag(repo, &digest, "stable").await.unwrap();
        }
    }
    snapshot(seed, repo).await
}

/// Case 1: a tag left on the dummy (its delete answered 503) was listed by the next pass as a
/// tag with no creation time, kept by `keep_n` as the newest, and a kept tag was deleted instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_left_on_the_dummy_is_finished_by_the_next_pass_never_kept_in_place_of_a_kept_tag() {
    let reg = registry().await;
    let seed = reg.client();
    let before = six_builds_and_stable(&seed, "app").await;
    let expected = without(&before, &set(["build-1", "build-2", "build-3"]));
    let policy = gitlab(json!({"name_regex_delete": "build-.*", "keep_n": 3}));
    let store = Store::in_memory().unwrap();

    // Pass 1: the dummy's delete fails however often it is retried.
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    proxy.inject(Fault::Status {
        method: Some("DELETE".into()),
        path_contains: format!("/manifests/{}", *DUMMY_DIGEST),
        status: 503,
        times: 1_000,
    });
    let ctx = context(client_with(proxy.url(), &store, |c| c.max_retries = 1), &store);
    let first = run(&ctx, &policy, "app").await;
    assert!(matches!(first.status, RepositoryStatus::Unfinished(_)), "transient: unfinished, not failed: {first:#?}");
    assert_eq!(seed.resolve("app", "build-1").await.unwrap().as_deref(), Some(DUMMY_DIGEST.as_str()), "left on the dummy");
    assert_eq!(seed.resolve("app", "stable").await.unwrap(), before.get("stable").cloned(), "the kept tag never moved");
    let moved = audit(&store, "app").into_iter().find(|r| r.operation == "untag_via_dummy").expect("the move is audited");
    assert_eq!(moved.outcome, "attempted", "the removal is in progress, not failed: {moved:#?}");

    // Pass 2, no faults (the same registry URL, as the audit log names registries by it):
    // build-1 is an unfinished removal, not the newest tag.
    proxy.clear();
    let ctx = context(client(proxy.url(), &store), &store);
    let second = run(&ctx, &policy, "app").await;
    assert_eq!(second.status, RepositoryStatus::Completed, "{second:#?}");
    assert_eq!(second.reconciliation.finished_removals, ["build-1"], "{second:#?}");
    assert_eq!(second.tags_seen, 4, "stable, build-4…6: the tag on the dummy is never shown to the plugin: {second:#?}");
    assert_eq!(snapshot(&seed, "app").await, expected, "build-4 (kept by keep_n) still has its digest");
    let rows = audit(&store, "app");
    assert!(open_rows(&rows).is_empty(), "{rows:#?}");
    let finished = rows.iter().find(|r| r.id == moved.id).unwrap();
    assert_eq!(finished.outcome, "deleted", "completed as the same attempt: {finished:#?}");
    assert!(finished.detail.as_deref().unwrap_or_default().contains("interrupted"), "{finished:#?}");

    // Pass 3 has nothing to do.
    let third = run(&ctx, &policy, "app").await;
    assert_eq!((&third.status, third.tags_to_delete), (&RepositoryStatus::Completed, 0), "{third:#?}");
    assert_eq!(snapshot(&seed, "app").await, expected);
}

/// A tagwarden config running `run --once` against `url` with gitlab-retention and `params`
/// over every repository (`app`, `group/app`).
fn write_config(dir: &Path, url: &str, params: &serde_json::Value) -> std::path::PathBuf {
    write_config_for(dir, url, params, &["*", "*/*"])
}

/// The same, for the repositories matching `repositories`.
pub(crate) fn write_config_for(dir: &Path, url: &str, params: &serde_json::Value, repositories: &[&str]) -> std::path::PathBuf {
    // JSON strings and numbers are valid TOML values as they are.
    let params: Vec<String> = params.as_object().unwrap().iter().map(|(k, v)| format!("{k} = {v}")).collect();
    let repositories: Vec<String> = repositories.iter().map(|r| format!("{r:?}")).collect();
    let plugin = crate::support::plugin_path("gitlab-retention");
    let config = format!(
        "[registry]\nurl = {url:?}\ntimeout = \"5s\"\nconcurrency = 4\nmax_retries = 1\n\n\
         [state]\ndir = \"state\"\n\n\
         [deletion]\ntimeout = \"120s\"\nconcurrency = 4\n\n\
         [[policy]]\nname = \"crash\"\nrepositories = [{}]\nplugin = {:?}\nparams = {{ {} }}\n",
        repositories.join(", "),
        plugin.display().to_string(),
        params.join(", ")
    );
    let path = dir.join("tagwarden.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// `tagwarden run --once` as a child process (killed with SIGKILL by the caller, or awaited).
pub(crate) fn spawn_run(dir: &Path, config: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir)
        .args(["run", "--once", "--config"])
        .arg(config)
        .args(["--now", crate::pass::NOW])
        .env("NO_COLOR", "1")
        .env("TAGWARDEN_CACHE_DIR", dir.join("compiled"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the tagwarden binary")
}

/// Runs `tagwarden run --once` to the end; returns (exit code, stdout + stderr).
pub(crate) fn run_once(dir: &Path, config: &Path) -> (Option<i32>, String) {
    let out = tokio::task::block_in_place(|| spawn_run(dir, config).wait_with_output()).unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Polls `condition` until it holds (bounded by [`REACH`]): the test bed's forwarded requests
/// land asynchronously.
pub(crate) async fn wait_until<F: std::future::Future<Output = bool>>(mut condition: impl FnMut() -> F) {
    tokio::time::timeout(REACH, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the condition came true in time");
}

/// Forwards `n` held requests, then returns the next one, still held.
async fn forward_then_hold(held: &mut Held, n: usize) -> tagwarden_testbed::HeldRequest {
    for _ in 0..n {
        held.next(REACH).await.expect("the pass reached the request").forward();
    }
    held.next(REACH).await.expect("the pass reached the request")
}

/// Case 2: SIGKILL while tags are being moved onto the dummy. Every later pass used to refuse
/// the dummy method ("tag points at tagwarden's dummy manifest") after deleting tags that an
/// uninterrupted pass keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_moving_tags_onto_the_dummy_costs_no_kept_tag_and_the_next_pass_converges() {
    let reg = registry().await;
    let seed = reg.client();
    let start = tagwarden::model::Timestamp::parse_rfc3339(crate::pass::NOW).unwrap().saturating_sub(days(100));
    let digests = seed
        .push_many("app", "build-", 60, |i| Some(start.saturating_sub(Duration::from_secs(3_600 * (60 - i as u64))).to_rfc3339()))
        .await
        .unwrap();
    for (i, digest) in digests.iter().enumerate().take(20) {
        seed.retag("app", digest, &format!("pin-{i:02}")).await.unwrap();
    }
    let before = snapshot(&seed, "app").await;
    // push_many names tags `build-0`…`build-59`; the 20 newest (40…59) stay, 0…19 share a
    // digest with a pin and go one by one, 20…39 go by digest.
    let gone: BTreeSet<String> = (0..40).map(|i| format!("build-{i}")).collect();
    let expected = without(&before, &gone);
    let kept: BTreeMap<String, String> = expected.clone();

    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let config =
        write_config(dir.path(), proxy.url(), &json!({"name_regex_delete": "build-.*", "name_regex_keep": "pin-.*", "keep_n": 20}));
    // Hold the tag moves: forward 7, kill the process at the 8th, then let the 8th land.
    let mut held = proxy.hold(Some("PUT"), "/manifests/build-", usize::MAX);
    let mut child = spawn_run(dir.path(), &config);
    let eighth = forward_then_hold(&mut held, 7).await;
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.clear();
    eighth.forward();
    // The eighth move lands after the process died.
    wait_until(|| async { snapshot(&seed, "app").await.values().filter(|d| d.as_str() == DUMMY_DIGEST.as_str()).count() >= 8 }).await;

    let after_kill = snapshot(&seed, "app").await;
    for (tag, digest) in &kept {
        assert_eq!(after_kill.get(tag), Some(digest), "kept tag {tag} lost its digest after the kill");
    }
    let on_dummy = after_kill.values().filter(|d| d.as_str() == DUMMY_DIGEST.as_str()).count();
    assert!(on_dummy >= 1, "the kill left tags on the dummy: {after_kill:#?}");

    // The next pass finishes them, decides the rest exactly as an uninterrupted pass would.
    let (code, output) = run_once(dir.path(), &config);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("dummy manifest"), "the pass says it finished removals: {output}");
    assert_eq!(snapshot(&seed, "app").await, expected, "{output}");
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let rows = audit(&store, "app");
    assert!(open_rows(&rows).is_empty(), "{:#?}", open_rows(&rows));
    let untagged: BTreeSet<String> =
        rows.iter().filter(|r| r.outcome == "deleted" && r.operation != "delete_manifest").flat_map(|r| r.tags.clone()).collect();
    assert_eq!(untagged, (0..20).map(|i| format!("build-{i}")).collect(), "every removal one by one is audited once deleted");
    // A third pass: nothing left to do.
    let (code, output) = run_once(dir.path(), &config);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(snapshot(&seed, "app").await, expected);
}

/// Case 3: after a SIGKILL mid-deletion, the audit rows of requests in flight stayed
/// `attempted` forever although the registry had carried some of them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_deletion_leaves_no_audit_row_open_after_the_next_pass() {
    let reg = registry().await;
    let seed = reg.client();
    let start = tagwarden::model::Timestamp::parse_rfc3339(crate::pass::NOW).unwrap().saturating_sub(days(100));
    seed.push_many("app", "old-", 30, |i| Some(start.saturating_sub(Duration::from_secs(60 * i as u64)).to_rfc3339())).await.unwrap();
    seed.push_image("app", "latest", Some(&ago(days(1)))).await.unwrap();
    let before = snapshot(&seed, "app").await;
    let expected = without(&before, &(0..30).map(|i| format!("old-{i}")).collect());

    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let config = write_config(dir.path(), proxy.url(), &json!({"name_regex_delete": "old-.*"}));
    let mut held = proxy.hold(Some("DELETE"), "/manifests/sha256:", usize::MAX);
    let mut child = spawn_run(dir.path(), &config);
    // Five deletes land; then four are in flight when the process dies: two reach the
    // registry afterwards, two never do.
    let fifth = forward_then_hold(&mut held, 5).await;
    let mut in_flight = vec![fifth];
    for _ in 0..3 {
        in_flight.push(held.next(REACH).await.expect("concurrent deletes"));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.clear();
    let mut landing = Vec::new();
    for (i, request) in in_flight.into_iter().enumerate() {
        if i % 2 == 0 {
            landing.push(request.request.1.rsplit('/').next().unwrap().to_owned());
            request.forward();
        } else {
            request.drop_connection();
        }
    }
    for digest in &landing {
        wait_until(|| async { seed.resolve("app", digest).await.unwrap().is_none() }).await;
    }
    let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let left_open: Vec<(i64, String)> = open_rows(&audit(&store, "app")).iter().map(|r| (r.id, r.digest.clone())).collect();
    let open_after_kill = left_open.len();
    assert!(open_after_kill >= 4, "the killed pass left its in-flight rows open ({open_after_kill})");
    // What the registry still has: a row left open for a manifest it lost must end `deleted`,
    // one for a manifest it has `not_deleted`.
    let present: BTreeSet<String> = snapshot(&seed, "app").await.into_values().collect();

    let (code, output) = run_once(dir.path(), &config);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(snapshot(&seed, "app").await, expected, "{output}");
    let rows = audit(&store, "app");
    assert!(open_rows(&rows).is_empty(), "{:#?}", open_rows(&rows));
    // Every manifest the registry lost has a `deleted` row; every row the kill left open for a
    // manifest still there (the two dropped requests, and the rest of their batch, whose rows
    // are written together before any of its requests is sent) says it found it undone.
    let deleted: BTreeSet<&str> = rows.iter().filter(|r| r.outcome == "deleted").map(|r| r.digest.as_str()).collect();
    for tag in (0..30).map(|i| format!("old-{i}")) {
        assert!(deleted.contains(before[&tag].as_str()), "{tag} was deleted without a `deleted` audit row: {rows:#?}");
    }
    for (id, digest) in &left_open {
        let row = rows.iter().find(|r| r.id == *id).expect("rows are never removed");
        let expected = if present.contains(digest) { "not_deleted" } else { "deleted" };
        assert_eq!(row.outcome, expected, "{row:#?}");
    }
    assert!(rows.iter().filter(|r| r.outcome == "not_deleted").count() >= 2, "the two dropped requests found undone: {rows:#?}");
    assert!(output.contains("interrupted"), "{output}");
}

/// Case 4a: a 503 after the registry accepted the dummy's config upload made the retry answer
/// `404 BLOB_UPLOAD_UNKNOWN`, and the repository was marked failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_after_the_dummy_config_upload_landed_is_not_a_failure() {
    let reg = registry().await;
    let seed = reg.client();
    let before = six_builds_and_stable(&seed, "app").await;
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    proxy.inject(Fault::StatusAfterForward { method: Some("PUT".into()), path_contains: "/blobs/uploads/".into(), status: 503, times: 1 });
    let store = Store::in_memory().unwrap();
    let ctx = context(client(proxy.url(), &store), &store);
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": "build-1"})), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!(snapshot(&seed, "app").await, without(&before, &set(["build-1"])));
    let rows = audit(&store, "app");
    assert!(rows.iter().any(|r| r.operation == "untag_via_dummy" && r.outcome == "deleted"), "{rows:#?}");
}

/// Case 4b: with a 1 s request timeout and DELETE answers that take 2 s, deletions that
/// happened were reported and audited as `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_answer_timed_out_is_confirmed_by_head_not_reported_failed() {
    let reg = registry().await;
    let seed = reg.client();
    let before = six_builds_and_stable(&seed, "app").await;
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    proxy.inject(Fault::SlowAnswer { method: Some("DELETE".into()), path_contains: "/manifests/sha256:".into(), millis: 2_000 });
    let store = Store::in_memory().unwrap();
    let ctx = context(
        client_with(proxy.url(), &store, |c| {
            c.request_timeout = Duration::from_secs(1);
            c.max_retries = 0;
        }),
        &store,
    );
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": "build-[23]"})), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!((report.tags_deleted, report.failed), (2, 0), "{report:#?}");
    let rows = audit(&store, "app");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for row in &rows {
        assert_eq!(row.outcome, "deleted", "{row:#?}");
        assert!(row.detail.as_deref().unwrap_or_default().contains("confirmed gone by HEAD"), "{row:#?}");
    }
    assert_eq!(snapshot(&seed, "app").await, without(&before, &set(["build-2", "build-3"])));
}

/// Case 5: a tag pushed onto a digest planned for deletion after the listing was deleted with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pushed_onto_a_planned_digest_after_the_listing_keeps_that_digest() {
    let reg = registry().await;
    let seed = reg.client();
    let before = six_builds_and_stable(&seed, "app").await;
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    // The second tag listing is the re-check before deleting: push a tag just before it.
    let mut held = proxy.hold(Some("GET"), "/tags/list", 2);
    let store = Store::in_memory().unwrap();
    let ctx = context(client(proxy.url(), &store), &store);
    let policy = gitlab(json!({"name_regex_delete": "build-[23]"}));
    let pass = tokio::spawn(async move { run(&ctx, &policy, "app").await });
    held.next(REACH).await.expect("the listing").forward();
    let recheck = held.next(REACH).await.expect("the re-check");
    seed.retag("app", &before["build-2"], "hotfix").await.unwrap();
    recheck.forward();
    let report = pass.await.unwrap();
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!(report.changed_since_listing.len(), 1, "{report:#?}");
    assert!(report.changed_since_listing[0].contains("`hotfix`"), "{report:#?}");
    let after = snapshot(&seed, "app").await;
    assert_eq!(after.get("hotfix"), Some(&before["build-2"]), "the new tag still pulls");
    assert_eq!(after.get("build-2"), Some(&before["build-2"]), "its digest was kept, tags and all, for the next pass to decide");
    assert_eq!(after.get("build-3"), None, "the rest of the plan went ahead");
}
