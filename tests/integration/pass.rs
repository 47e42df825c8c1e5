//! Whole cleanup passes (`pass::run_repository`) against a REAL registry (CNCF distribution 2.8
//! via `tagwarden-testbed`), not mocks: listing, evaluation by a real plugin, host guards,
//! deletion, the audit log and the metadata cache. One registry per test, so tests run in
//! parallel; faults the registry never produces come from the test bed's fault proxy.
//!
//! Every test checks the registry itself afterwards (tag → digest, read with the test bed's own
//! client), not only the report.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;
use tagwarden::backend::Backend;
use tagwarden::model::{Action, Timestamp};
use tagwarden::pass::{self, DeletionLimits, Guards, PassContext, Policy, Progress, RepositoryReport, RepositoryStatus};
use tagwarden::recording::Recording;
use tagwarden::registry::{Credentials, RegistryClient, RegistryConfig, Secret};
use tagwarden::runtime::PluginLimits;
use tagwarden::store::{AuditRecord, Store};
use tagwarden_testbed::{Auth, Fault, FaultProxy, RegistryOptions, Seeder, TestRegistry, TokenServerOptions};

use crate::support;

/// The evaluation time of every pass here; fixtures are created relative to it.
pub(crate) const NOW: &str = "2026-11-20T12:00:00Z";

pub(crate) fn now() -> Timestamp {
    Timestamp::parse_rfc3339(NOW).unwrap()
}

pub(crate) fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// RFC 3339 time `age` before [`NOW`], for a fixture's config `created`.
pub(crate) fn ago(age: Duration) -> String {
    now().saturating_sub(age).to_rfc3339()
}

pub(crate) async fn registry() -> TestRegistry {
    TestRegistry::start(RegistryOptions::default()).await.expect("starting the test registry")
}

async fn registry_with(options: RegistryOptions) -> TestRegistry {
    TestRegistry::start(options).await.expect("starting the test registry")
}

/// A client for `url` with the store's metadata cache, as `run` builds it.
pub(crate) fn client_with(url: &str, store: &Store, configure: impl FnOnce(&mut RegistryConfig)) -> RegistryClient {
    let mut config = RegistryConfig::new(url.parse().expect("a registry URL"));
    configure(&mut config);
    RegistryClient::new(config, Some(store.metadata_cache())).unwrap()
}

pub(crate) fn client(url: &str, store: &Store) -> RegistryClient {
    client_with(url, store, |_| {})
}

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic { username: user.to_string(), password: Secret::new(password) }
}

/// A pass context over `client`: no guards, a generous budget, not a dry run.
pub(crate) fn context(client: RegistryClient, store: &Store) -> PassContext {
    PassContext {
        backend: Backend::Oci(client),
        audit: store.audit_log(),
        runs: store.runs(),
        imports: store.imports(),
        guards: Guards::default(),
        limits: DeletionLimits {
            timeout: Duration::from_secs(60),
            concurrency: 4,
            max_list_size: None,
            keep_manifest_bytes: tagwarden::pass::KEEP_MANIFEST_BYTES,
        },
        dry_run: false,
        now: Some(now()),
    }
}

pub(crate) fn policy(plugin: &str, params: serde_json::Value) -> Policy {
    let plugin = support::plugin(plugin, PluginLimits::default()).into_retention().unwrap();
    Policy::new("test-policy", &plugin, &params.to_string()).unwrap()
}

pub(crate) fn gitlab(params: serde_json::Value) -> Policy {
    policy("gitlab-retention", params)
}

pub(crate) async fn run(ctx: &PassContext, policy: &Policy, repo: &str) -> RepositoryReport {
    pass::run_repository(ctx, policy, repo, &|_: Progress| {}).await
}

pub(crate) fn stats(ctx: &PassContext) -> tagwarden::registry::RequestStats {
    ctx.backend.registry().expect("an OCI backend").stats()
}

fn no_progress(_: usize, _: usize) {}

/// Every tag of `repo` and the digest it resolves to, read with the test bed's own client.
pub(crate) async fn snapshot(seed: &Seeder, repo: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for tag in seed.tags(repo).await.unwrap() {
        let digest = seed.resolve(repo, &tag).await.unwrap().unwrap_or_else(|| panic!("listed tag {tag} does not resolve"));
        out.insert(tag, digest);
    }
    out
}

pub(crate) fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names.into_iter().map(str::to_owned).collect()
}

/// `before` without the tags in `gone`.
pub(crate) fn without(before: &BTreeMap<String, String>, gone: &BTreeSet<String>) -> BTreeMap<String, String> {
    before.iter().filter(|(t, _)| !gone.contains(*t)).map(|(t, d)| (t.clone(), d.clone())).collect()
}

pub(crate) fn audit(store: &Store, repo: &str) -> Vec<AuditRecord> {
    let mut rows = store.audit_log().recent(Some(repo), 10_000).unwrap();
    rows.reverse();
    rows
}

/// Tags named in audit rows whose outcome is `deleted`.
pub(crate) fn audited_deletions(rows: &[AuditRecord]) -> BTreeSet<String> {
    rows.iter().filter(|r| r.outcome == "deleted").flat_map(|r| r.tags.iter().cloned()).collect()
}

fn tags_planned_for_deletion(report: &RepositoryReport) -> BTreeSet<String> {
    let plan = report.plan.as_ref().expect("the report carries its plan");
    plan.list.tags().iter().zip(&plan.tags).filter(|(_, v)| v.action == Action::Delete).map(|(t, _)| t.name.clone()).collect()
}

/// GitLab's documented example: keep one, keep `production-*`, delete the rest older than 7 days.
fn gitlab_docs_params() -> serde_json::Value {
    json!({"keep_n": 1, "name_regex_keep": "production-.*", "older_than": "7d", "name_regex_delete": ".*"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_deletes_exactly_what_eval_decides_over_a_recording_of_the_same_repository() {
    let reg = registry().await;
    let seed = reg.client();
    let repo = "group/app";
    let fixture = [
        ("latest", Duration::from_secs(3_600)),
        ("production-v44", days(3)),
        ("production-v43", days(6)),
        ("production-v42", days(11)),
        ("dev-v44", days(2)),
        ("dev-v43", days(5)),
        ("dev-v42", days(10)),
        ("v44", days(1)),
        ("v43", days(12)),
        ("v42", days(20)),
    ];
    for (tag, age) in fixture {
        seed.push_image(repo, tag, Some(&ago(age))).await.unwrap();
    }
    let before = snapshot(&seed, repo).await;
    assert_eq!(before.len(), fixture.len());

    // Record the repository as `tagwarden record` does, through the file format, and evaluate
    // the recording as `tagwarden eval` does.
    let store = Store::in_memory().unwrap();
    let c = client(reg.url(), &store);
    let list = c.tag_list(repo, &no_progress).await.unwrap().expect("the repository exists");
    let mut file = Vec::new();
    Recording { recorded_at: now(), list }.write_to(&mut file).unwrap();
    let recording = Recording::parse(std::str::from_utf8(&file).unwrap()).unwrap();
    let policy = gitlab(gitlab_docs_params());
    let retention = policy.retention().unwrap();
    let decisions = retention.plugin().evaluate(retention.params(), &recording.list, recording.recorded_at).unwrap();
    let eval_deletes: BTreeSet<String> = recording
        .list
        .tags()
        .iter()
        .enumerate()
        .filter(|(i, _)| decisions.tag(*i).action == Action::Delete)
        .map(|(_, t)| t.name.clone())
        .collect();
    assert_eq!(eval_deletes, set(["dev-v42", "v43", "v42"]), "GitLab's documented outcome");

    let ctx = context(c, &store);
    let report = run(&ctx, &policy, repo).await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert!(report.status.is_success());
    assert_eq!(
        (report.tags_seen, report.tags_to_delete, report.tags_deleted, report.manifests_deleted, report.failed),
        (10, 3, 3, 3, 0),
        "{report:#?}"
    );
    assert!(report.not_deleted.is_empty() && report.errors.is_empty(), "{report:#?}");
    // The pass decided exactly what eval decided, with the same reasons.
    let plan = report.plan.as_ref().unwrap();
    assert_eq!(plan.list.tags(), recording.list.tags(), "the pass saw what was recorded");
    for (i, v) in plan.tags.iter().enumerate() {
        let rule = decisions.tag(i);
        assert_eq!((v.action, v.reason.as_str(), v.decided_by), (rule.action, rule.reason.as_str(), "plugin"), "tag {i}");
    }

    // The registry lost exactly eval's deletions; every other tag still has its digest.
    assert_eq!(snapshot(&seed, repo).await, without(&before, &eval_deletes));

    // One `deleted` audit row per deletion, naming the tag, its digest and the policy.
    let rows = audit(&store, repo);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for row in &rows {
        assert_eq!((row.operation.as_str(), row.outcome.as_str(), row.tags.len()), ("delete_manifest", "deleted", 1), "{row:#?}");
        assert_eq!(row.digest, before[&row.tags[0]], "{row:#?}");
        // Who decided: the policy, and the plugin's name, version and full sha256 (issue #11 §7).
        let m = retention.plugin().plugin().meta();
        let by = format!("policy test-policy (plugin gitlab-retention {} sha256:{})", m.version, m.sha256);
        assert!(m.sha256.len() == 64 && row.decided_by.starts_with(&by), "{row:#?}");
        // ...and the rule that deleted its tag: the plugin's reason, as eval gives it.
        let i = recording.list.tags().iter().position(|t| t.name == row.tags[0]).unwrap();
        assert!(row.decided_by.ends_with(&format!("; rule: {}", decisions.tag(i).reason)), "{row:#?}");
        assert!(row.registry.starts_with(reg.url()), "{row:#?}");
    }
    assert_eq!(audited_deletions(&rows), eval_deletes);
    // The run names the same plugin identity.
    let runs = store.runs().recent(None, 10).unwrap();
    let m = retention.plugin().plugin().meta();
    assert!(runs.iter().all(|r| r.decided_by.ends_with(&format!("sha256:{})", m.sha256))), "{runs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_sharing_its_digest_with_a_kept_tag_is_removed_via_the_dummy_manifest() {
    let reg = registry().await;
    let seed = reg.client();
    let shared = seed.push_image("app", "a", Some(&ago(days(30)))).await.unwrap();
    seed.retag("app", &shared, "b").await.unwrap();
    seed.push_image("app", "c", Some(&ago(days(30)))).await.unwrap();
    let before = snapshot(&seed, "app").await;

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    let events = std::sync::Mutex::new(Vec::new());
    let progress = |p: Progress| events.lock().unwrap().push(p);
    let report = pass::run_repository(&ctx, &gitlab(json!({"name_regex_delete": "a"})), "app", &progress).await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!((report.tags_to_delete, report.tags_deleted, report.manifests_deleted, report.failed), (1, 1, 0, 0), "{report:#?}");

    let after = snapshot(&seed, "app").await;
    assert_eq!(after, without(&before, &set(["a"])), "`a` is gone, `b` and `c` keep their digests");
    assert_eq!(after["b"], shared, "`b` still resolves to the ORIGINAL digest");
    assert_eq!(seed.resolve("app", "a").await.unwrap(), None);

    // distribution 2.8 has no tag delete: the audit log shows the attempt, then the dummy method.
    let rows = audit(&store, "app");
    let dummy: Vec<&AuditRecord> = rows.iter().filter(|r| r.operation == "untag_via_dummy").collect();
    assert_eq!(dummy.len(), 1, "{rows:#?}");
    assert_eq!(
        (dummy[0].outcome.as_str(), dummy[0].tags.as_slice(), dummy[0].digest.as_str()),
        ("deleted", &["a".to_string()][..], shared.as_str())
    );
    assert!(rows.iter().all(|r| r.operation != "delete_manifest"), "the shared digest must never be deleted: {rows:#?}");
    assert_eq!(audited_deletions(&rows), set(["a"]));

    // Progress: listing up to 3 of 3, evaluation of 3 tags, deletion up to 1 of 1.
    let events = events.into_inner().unwrap();
    assert!(matches!(events.first(), Some(Progress::Listing { done: 0, total: 3 })), "{events:?}");
    assert!(events.iter().any(|p| matches!(p, Progress::Listing { done: 3, total: 3 })), "{events:?}");
    assert!(events.iter().any(|p| matches!(p, Progress::Evaluating { tags: 3 })), "{events:?}");
    assert!(matches!(events.last(), Some(Progress::Deleting { done: 1, total: 1 })), "{events:?}");
}

/// The platform images an index references, read from the registry with the test bed's client.
async fn index_children(seed: &Seeder, repo: &str, index: &str) -> Vec<String> {
    let body: serde_json::Value =
        seed.request(reqwest::Method::GET, &format!("/v2/{repo}/manifests/{index}")).await.unwrap().json().await.unwrap();
    body["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_string()).collect()
}

/// Repository `app`: `v1` is a two-platform index whose amd64 image is also tagged `v1-amd64`
/// (as `docker manifest create` workflows leave it), and `other` an ordinary image. Returns the
/// index digest, its children and the repository's tags.
async fn multi_arch_repository(seed: &Seeder, other: &str) -> (String, Vec<String>, BTreeMap<String, String>) {
    let index = seed.push_index("app", "v1", [Some(&ago(days(30))), Some(&ago(days(30)))]).await.unwrap();
    let children = index_children(seed, "app", &index).await;
    seed.retag("app", &children[0], "v1-amd64").await.unwrap();
    seed.push_image("app", other, Some(&ago(days(30)))).await.unwrap();
    (index, children, snapshot(seed, "app").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_tag_of_a_kept_multi_arch_image_loses_its_tag_but_never_its_manifest() {
    let reg = registry().await;
    let seed = reg.client();
    let (index, children, before) = multi_arch_repository(&seed, "old").await;

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    // Keep `v1`, delete every other tag.
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": ".*", "name_regex_keep": "v1"})), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!((report.tags_to_delete, report.tags_deleted, report.manifests_deleted, report.failed), (2, 2, 1, 0), "{report:#?}");

    let after = snapshot(&seed, "app").await;
    assert_eq!(after, without(&before, &set(["v1-amd64", "old"])));
    for child in &children {
        assert_eq!(seed.resolve("app", child).await.unwrap().as_deref(), Some(child.as_str()), "platform image {child} of kept `v1`");
    }
    let rows = audit(&store, "app");
    assert!(
        rows.iter().all(|r| r.operation != "delete_manifest" || !children.contains(&r.digest)),
        "no child of the kept index is deleted by digest: {rows:#?}"
    );
    assert!(rows.iter().any(|r| r.operation == "untag_via_dummy" && r.tags == ["v1-amd64"]), "{rows:#?}");
    assert_eq!(audited_deletions(&rows), set(["v1-amd64", "old"]));

    // A second listing reads the index's children from the metadata cache, not the registry.
    let gets = stats(&ctx).manifest_get;
    let list = ctx.backend.registry().unwrap().tag_list("app", &no_progress).await.unwrap().unwrap();
    let mut expected: Vec<tagwarden::model::Digest> = children.iter().map(|c| tagwarden::model::Digest::parse(c).unwrap()).collect();
    expected.sort();
    assert_eq!(list.index_children().get(&tagwarden::model::Digest::parse(&index).unwrap()), Some(&expected));
    assert_eq!(stats(&ctx).manifest_get, gets, "warm listing: no manifest GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_multi_arch_image_takes_its_platform_tags_with_it() {
    let reg = registry().await;
    let seed = reg.client();
    let (_, children, before) = multi_arch_repository(&seed, "keep").await;

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": "v1.*"})), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    // Nothing that stays references the amd64 image, so it goes by digest with its tag.
    assert_eq!((report.tags_deleted, report.manifests_deleted, report.failed), (2, 2, 0), "{report:#?}");
    assert_eq!(snapshot(&seed, "app").await, without(&before, &set(["v1", "v1-amd64"])));
    assert_eq!(seed.resolve("app", &children[0]).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_plan_deletes_by_digest_and_moves_several_shared_tags_onto_one_dummy() {
    let reg = registry().await;
    let seed = reg.client();
    let x = seed.push_image("app", "x-old", Some(&ago(days(30)))).await.unwrap();
    seed.retag("app", &x, "x-keep").await.unwrap();
    let y = seed.push_image("app", "y-old", Some(&ago(days(30)))).await.unwrap();
    seed.retag("app", &y, "y-keep").await.unwrap();
    seed.push_image("app", "z-old", Some(&ago(days(30)))).await.unwrap();
    let before = snapshot(&seed, "app").await;

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": ".*-old"})), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!((report.tags_to_delete, report.tags_deleted, report.manifests_deleted, report.failed), (3, 3, 1, 0), "{report:#?}");
    let after = snapshot(&seed, "app").await;
    assert_eq!(after, without(&before, &set(["x-old", "y-old", "z-old"])));
    assert_eq!((after["x-keep"].as_str(), after["y-keep"].as_str()), (x.as_str(), y.as_str()));
    let rows = audit(&store, "app");
    assert_eq!(audited_deletions(&rows), set(["x-old", "y-old", "z-old"]), "{rows:#?}");
    let dummy: BTreeSet<&str> =
        rows.iter().filter(|r| r.operation == "untag_via_dummy" && r.outcome == "deleted").map(|r| r.tags[0].as_str()).collect();
    assert_eq!(dummy, BTreeSet::from(["x-old", "y-old"]), "{rows:#?}");
    // 1 digest delete + 1 tag-delete probe + 1 dummy delete (deletes already known to work: no proof).
    assert_eq!(stats(&ctx).delete, 3, "{:?}", stats(&ctx));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_sharing_a_digest_that_all_go_are_one_manifest_delete() {
    let reg = registry().await;
    let seed = reg.client();
    let shared = seed.push_image("app", "a", Some(&ago(days(30)))).await.unwrap();
    seed.retag("app", &shared, "b").await.unwrap();
    seed.push_image("app", "c", Some(&ago(days(30)))).await.unwrap();
    let before = snapshot(&seed, "app").await;

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": "a|b"})), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!((report.tags_to_delete, report.tags_deleted, report.manifests_deleted), (2, 2, 1), "{report:#?}");
    assert_eq!(stats(&ctx).delete, 1, "one DELETE request: {:?}", stats(&ctx));
    assert_eq!(snapshot(&seed, "app").await, without(&before, &set(["a", "b"])));
    let rows = audit(&store, "app");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].operation.as_str(), rows[0].outcome.as_str(), rows[0].digest.as_str()),
        ("delete_manifest", "deleted", shared.as_str())
    );
    assert_eq!(rows[0].tags, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_deletes_fail_the_pass_with_405_and_change_nothing() {
    let reg = registry_with(RegistryOptions { deletes_enabled: false, ..Default::default() }).await;
    let seed = reg.client();
    for tag in ["v1", "v2", "v3", "keep"] {
        seed.push_image("app", tag, Some(&ago(days(30)))).await.unwrap();
    }
    let before = snapshot(&seed, "app").await;

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": "v.*"})), "app").await;
    let RepositoryStatus::Failed(message) = &report.status else { panic!("expected Failed: {report:#?}") };
    assert!(message.contains("405") && message.contains("UNSUPPORTED"), "{message}");
    assert!(!report.status.is_success());
    assert_eq!((report.tags_to_delete, report.tags_deleted, report.manifests_deleted), (3, 0, 0), "{report:#?}");
    assert_eq!(report.not_deleted.iter().cloned().collect::<BTreeSet<_>>(), set(["v1", "v2", "v3"]), "{report:#?}");
    // The first delete goes alone: its permanent answer stops the pass.
    assert_eq!(stats(&ctx).delete, 1, "{:?}", stats(&ctx));
    assert_eq!(snapshot(&seed, "app").await, before, "nothing changed");
    assert!(audited_deletions(&audit(&store, "app")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_deletes_never_leave_a_shared_tag_on_the_dummy_manifest() {
    let reg = registry_with(RegistryOptions { deletes_enabled: false, ..Default::default() }).await;
    let seed = reg.client();
    let shared = seed.push_image("app", "a", Some(&ago(days(30)))).await.unwrap();
    seed.retag("app", &shared, "b").await.unwrap();
    seed.retag("app", &shared, "c").await.unwrap();
    seed.push_image("app", "other", Some(&ago(days(30)))).await.unwrap();
    let before = snapshot(&seed, "app").await;

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    // Only shared-digest tags to remove: the dummy method must prove deletes work first.
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": "a|b"})), "app").await;
    let RepositoryStatus::Failed(message) = &report.status else { panic!("expected Failed: {report:#?}") };
    assert!(message.contains("405") && message.contains("UNSUPPORTED"), "{message}");
    assert_eq!((report.tags_to_delete, report.tags_deleted), (2, 0), "{report:#?}");
    assert_eq!(report.not_deleted.iter().cloned().collect::<BTreeSet<_>>(), set(["a", "b"]), "{report:#?}");
    // Every tag still resolves to its original digest: none was moved onto a dummy manifest.
    let after = snapshot(&seed, "app").await;
    assert_eq!(after, before, "nothing changed");
    assert!(["a", "b", "c"].iter().all(|t| after[*t] == shared));
    let rows = audit(&store, "app");
    assert!(rows.iter().all(|r| r.operation != "untag_via_dummy"), "no tag may be moved: {rows:#?}");
    assert!(audited_deletions(&rows).is_empty(), "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_repository_is_not_found_and_a_success() {
    let reg = registry().await;
    reg.client().push_image("other", "v1", None).await.unwrap();
    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": ".*"})), "group/missing").await;
    assert_eq!(report.status, RepositoryStatus::NotFound, "{report:#?}");
    assert!(report.status.is_success());
    assert!(report.errors.is_empty(), "{report:#?}");
    assert_eq!((report.tags_seen, report.tags_to_delete, report.tags_deleted), (0, 0, 0));
    assert_eq!(stats(&ctx).delete, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_deletes_with_the_right_password_and_fails_unauthorized_with_a_wrong_one() {
    let auth = Auth::Basic { user: "robot".into(), password: "right-password".into() };
    let reg = registry_with(RegistryOptions { auth, ..Default::default() }).await;
    let seed = reg.client();
    for tag in ["old-1", "old-2"] {
        seed.push_image("app", tag, Some(&ago(days(30)))).await.unwrap();
    }
    seed.push_image("app", "new", Some(&ago(days(1)))).await.unwrap();
    let before = snapshot(&seed, "app").await;
    let policy = gitlab(json!({"name_regex_delete": ".*", "older_than": "7d"}));

    let store = Store::in_memory().unwrap();
    let wrong = context(client_with(reg.url(), &store, |c| c.credentials = basic("robot", "wrong-password")), &store);
    let report = run(&wrong, &policy, "app").await;
    let RepositoryStatus::Failed(message) = &report.status else { panic!("expected Failed: {report:#?}") };
    assert!(message.contains("401") && message.contains("check the username and password"), "{message}");
    assert!(!format!("{report:?}").contains("wrong-password"));
    assert_eq!(snapshot(&seed, "app").await, before, "nothing deleted");
    assert_eq!(stats(&wrong).delete, 0);

    let right = context(client_with(reg.url(), &store, |c| c.credentials = basic("robot", "right-password")), &store);
    let report = run(&right, &policy, "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!(report.tags_deleted, 2);
    assert_eq!(snapshot(&seed, "app").await, without(&before, &set(["old-1", "old-2"])));
}

/// A token-auth registry with `app` seeded (two old tags, one new), and a pass context logged in as
/// the token server's non-admin user.
async fn token_setup(grant_delete: bool) -> (TestRegistry, Store, PassContext, BTreeMap<String, String>) {
    let options = TokenServerOptions { grant_delete, ..Default::default() };
    let reg = registry_with(RegistryOptions { auth: Auth::Token(options), ..Default::default() }).await;
    let seed = reg.client();
    for tag in ["old-1", "old-2"] {
        seed.push_image("app", tag, Some(&ago(days(30)))).await.unwrap();
    }
    seed.push_image("app", "new", Some(&ago(days(1)))).await.unwrap();
    let before = snapshot(&seed, "app").await;
    let (user, password) = reg.credentials().unwrap();
    let store = Store::in_memory().unwrap();
    let ctx = context(client_with(reg.url(), &store, |c| c.credentials = basic(user, password)), &store);
    (reg, store, ctx, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_the_delete_scope_deletes() {
    let (reg, store, ctx, before) = token_setup(true).await;
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": ".*", "older_than": "7d"})), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!(report.tags_deleted, 2);
    assert_eq!(snapshot(&reg.client(), "app").await, without(&before, &set(["old-1", "old-2"])));
    assert_eq!(audited_deletions(&audit(&store, "app")), set(["old-1", "old-2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_without_the_delete_scope_fails_naming_the_scope_and_deletes_nothing() {
    let (reg, store, ctx, before) = token_setup(false).await;
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": ".*", "older_than": "7d"})), "app").await;
    let RepositoryStatus::Failed(message) = &report.status else { panic!("expected Failed: {report:#?}") };
    assert!(message.contains("`delete` scope"), "{message}");
    assert_eq!((report.tags_to_delete, report.tags_deleted), (2, 0), "{report:#?}");
    assert_eq!(snapshot(&reg.client(), "app").await, before, "nothing deleted");
    assert!(audited_deletions(&audit(&store, "app")).is_empty());
    let (_, password) = reg.credentials().unwrap();
    assert!(!format!("{report:?}").contains(password));
}

/// A registry behind a fault proxy with `app` seeded: `old-0..old-{n-1}` (30 days old, to delete)
/// and `new-0`, `new-1` (kept); a pass context talking to the proxy.
async fn proxied(old: usize, configure: impl FnOnce(&mut RegistryConfig)) -> (TestRegistry, FaultProxy, Store, PassContext) {
    let reg = registry().await;
    let seed = reg.client();
    let created = ago(days(30));
    seed.push_many("app", "old-", old, |_| Some(created.clone())).await.unwrap();
    seed.push_many("app", "new-", 2, |_| Some(ago(days(1)))).await.unwrap();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let store = Store::in_memory().unwrap();
    let ctx = context(client_with(proxy.url(), &store, configure), &store);
    (reg, proxy, store, ctx)
}

fn old_new_policy() -> Policy {
    gitlab(json!({"name_regex_delete": ".*", "name_regex_keep": "new-.*", "older_than": "7d"}))
}

/// Lists the repository once through the context's client, so the metadata cache is warm and a pass
/// sends no request by digest before its deletes (faults on `/manifests/sha256:` hit deletes only).
async fn warm_cache(ctx: &PassContext, repo: &str) {
    ctx.backend.registry().unwrap().tag_list(repo, &no_progress).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_503_bursts_on_delete_are_retried_and_the_pass_completes() {
    let (reg, proxy, store, ctx) = proxied(5, |_| {}).await;
    let before = snapshot(&reg.client(), "app").await;
    // Fewer than max_retries (3) per request.
    proxy.inject(Fault::Status { method: Some("DELETE".into()), path_contains: "/manifests/".into(), status: 503, times: 2 });
    let report = run(&ctx, &old_new_policy(), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    let planned: BTreeSet<String> = (0..5).map(|i| format!("old-{i}")).collect();
    assert_eq!(tags_planned_for_deletion(&report), planned);
    assert_eq!((report.tags_to_delete, report.tags_deleted, report.failed), (5, 5, 0), "{report:#?}");
    assert_eq!(proxy.count("DELETE", "/manifests/"), 5 + 2, "{:?}", proxy.requests());
    assert_eq!(snapshot(&reg.client(), "app").await, without(&before, &planned), "every planned tag deleted, kept tags intact");
    assert_eq!(audited_deletions(&audit(&store, "app")), planned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_on_delete_is_honoured_and_the_pass_completes() {
    let (reg, proxy, _store, mut ctx) = proxied(3, |_| {}).await;
    // The 429 is for a DELETE: no GET of the manifest (kept for restore) goes first.
    ctx.limits.keep_manifest_bytes = 0;
    let before = snapshot(&reg.client(), "app").await;
    warm_cache(&ctx, "app").await;
    proxy.inject(Fault::RateLimit { path_contains: "/manifests/sha256:".into(), retry_after_secs: 1, times: 1 });
    let started = Instant::now();
    let report = run(&ctx, &old_new_policy(), "app").await;
    let elapsed = started.elapsed();
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    assert_eq!(report.tags_deleted, 3, "{report:#?}");
    assert!(elapsed >= Duration::from_secs(1), "Retry-After: 1 not honoured: the pass took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let deletes: Vec<_> = proxy.requests().into_iter().filter(|(m, _)| m == "DELETE").collect();
    assert_eq!(deletes.len(), 3 + 1, "{deletes:?}");
    assert_eq!(deletes[0].1, deletes[1].1, "the rate-limited DELETE is retried first: {deletes:?}");
    assert_eq!(stats(&ctx).retries, 1);
    let planned: BTreeSet<String> = (0..3).map(|i| format!("old-{i}")).collect();
    assert_eq!(snapshot(&reg.client(), "app").await, without(&before, &planned));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_503s_beyond_the_retries_leave_the_pass_unfinished_and_kept_tags_intact() {
    let (reg, proxy, store, ctx) = proxied(3, |c| c.max_retries = 1).await;
    let before = snapshot(&reg.client(), "app").await;
    proxy.inject(Fault::Status { method: Some("DELETE".into()), path_contains: "/manifests/".into(), status: 503, times: 1_000 });
    let report = run(&ctx, &old_new_policy(), "app").await;
    let RepositoryStatus::Unfinished(message) = &report.status else { panic!("expected Unfinished: {report:#?}") };
    assert!(message.contains("the next pass retries them"), "{message}");
    assert!(!report.status.is_success());
    assert!(report.failed > 0, "{report:#?}");
    assert_eq!((report.tags_to_delete, report.tags_deleted, report.failed), (3, 0, 3), "{report:#?}");
    assert!(report.errors.iter().all(|e| e.contains("503")), "{:?}", report.errors);
    assert_eq!(proxy.count("DELETE", "/manifests/"), 3 * 2, "each delete tried 1 + max_retries times");
    assert_eq!(snapshot(&reg.client(), "app").await, before, "the faulted deletes never reached the registry");
    // A 503 does not say whether the registry will still act: a HEAD found each manifest
    // there, so the rows stay open for the next pass to settle, never `failed` on a guess.
    let rows = audit(&store, "app");
    assert!(
        rows.iter().all(|r| r.outcome == "attempted" && r.detail.as_deref().unwrap_or_default().contains("outcome unknown")),
        "{rows:#?}"
    );
    proxy.clear();
    let next = run(&ctx, &old_new_policy(), "app").await;
    assert_eq!(next.status, RepositoryStatus::Completed, "{next:#?}");
    let rows = audit(&store, "app");
    assert_eq!(rows.iter().filter(|r| r.outcome == "not_deleted").count(), 3, "settled by the next pass: {rows:#?}");
    assert_eq!(rows.iter().filter(|r| r.outcome == "deleted").count(), 3, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_delete_failures_in_the_dummy_method_leave_the_pass_unfinished_not_failed() {
    let reg = registry().await;
    let seed = reg.client();
    let shared = seed.push_image("app", "a", Some(&ago(days(30)))).await.unwrap();
    seed.retag("app", &shared, "b").await.unwrap();
    let before = snapshot(&seed, "app").await;
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let store = Store::in_memory().unwrap();
    let ctx = context(client_with(proxy.url(), &store, |c| c.max_retries = 1), &store);
    warm_cache(&ctx, "app").await;
    // Every delete by digest answers 503 (the tag delete, `/manifests/a`, reaches the registry and
    // learns that 2.8 cannot delete tags): a registry having a bad minute, not one without deletes.
    proxy.inject(Fault::Status { method: Some("DELETE".into()), path_contains: "/manifests/sha256:".into(), status: 503, times: 1_000 });
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": "a"})), "app").await;
    assert_eq!(snapshot(&seed, "app").await, before, "nothing changed; no tag was moved onto the dummy");
    assert_eq!(report.tags_deleted, 0, "{report:#?}");
    assert!(
        matches!(&report.status, RepositoryStatus::Unfinished(_)),
        "a 503 is transient: the pass should be Unfinished (retried next pass), not {:?}",
        report.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_timeout_stops_a_big_pass_with_an_exact_account_of_what_was_deleted() {
    const TAGS: usize = 300;
    let (reg, proxy, store, mut ctx) = proxied(TAGS, |_| {}).await;
    let before = snapshot(&reg.client(), "app").await;
    assert_eq!(before.len(), TAGS + 2);
    warm_cache(&ctx, "app").await;
    ctx.limits = DeletionLimits {
        timeout: Duration::from_millis(300),
        concurrency: 2,
        max_list_size: None,
        keep_manifest_bytes: tagwarden::pass::KEEP_MANIFEST_BYTES,
    };
    proxy.inject(Fault::Delay { path_contains: "/manifests/sha256:".into(), millis: 50 });

    let report = run(&ctx, &old_new_policy(), "app").await;
    let RepositoryStatus::Unfinished(message) = &report.status else { panic!("expected Unfinished: {report:#?}") };
    assert!(message.contains("delete timeout"), "{message}");
    assert_eq!(report.tags_to_delete, TAGS);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.tags_deleted > 0, "some deletes fit in the budget");
    assert!(!report.not_deleted.is_empty(), "not all of them");
    assert_eq!(report.tags_deleted + report.not_deleted.len(), report.tags_to_delete, "{report:#?}");

    // The registry holds exactly the tags not deleted plus the kept ones.
    let not_deleted: BTreeSet<String> = report.not_deleted.iter().cloned().collect();
    assert_eq!(not_deleted.len(), report.not_deleted.len(), "no tag reported twice");
    let after = snapshot(&reg.client(), "app").await;
    let mut want: BTreeSet<String> = not_deleted.clone();
    want.extend(["new-0".to_string(), "new-1".to_string()]);
    assert_eq!(after.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(after.iter().all(|(t, d)| &before[t] == d), "surviving tags keep their digests");

    // Every audit row saying `deleted` is a tag really gone, and every deleted tag has one.
    let rows = audit(&store, "app");
    let audited = audited_deletions(&rows);
    assert!(audited.iter().all(|t| !after.contains_key(t)), "an audited deletion is still in the registry");
    let gone: BTreeSet<String> = before.keys().filter(|t| !after.contains_key(*t)).cloned().collect();
    assert_eq!(audited, gone);
    assert_eq!(audited.len(), report.tags_deleted);
    assert!(rows.iter().all(|r| r.outcome != "attempted"), "every attempt was finished: {rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_list_size_deletes_at_most_that_many_tags_per_pass_and_the_rest_next_pass() {
    let (reg, _proxy, store, mut ctx) = proxied(7, |_| {}).await;
    let before = snapshot(&reg.client(), "app").await;
    ctx.limits.max_list_size = Some(3);
    let policy = old_new_policy();
    let mut deleted = 0;
    let mut passes = Vec::new();
    loop {
        let report = run(&ctx, &policy, "app").await;
        passes.push((report.tags_deleted, report.tags_truncated, report.status.key()));
        assert!(report.tags_deleted <= 3, "{report:#?}");
        deleted += report.tags_deleted;
        if report.status == RepositoryStatus::Completed {
            break;
        }
        let RepositoryStatus::Unfinished(why) = &report.status else { panic!("{report:#?}") };
        assert!(why.contains("max_list_size") && why.contains("wait for the next pass"), "{why}");
        assert!(passes.len() < 5, "{passes:?}");
    }
    // The plugin decided over every tag each time; the host cut the deletions to 3 a pass.
    assert_eq!(passes, [(3, 4, "unfinished"), (3, 1, "unfinished"), (1, 0, "completed")]);
    assert_eq!(deleted, 7);
    let after = snapshot(&reg.client(), "app").await;
    assert_eq!(after.keys().cloned().collect::<BTreeSet<_>>(), set(["new-0", "new-1"]));
    assert!(after.iter().all(|(t, d)| &before[t] == d));
    assert_eq!(audited_deletions(&audit(&store, "app")).len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pass_over_an_unchanged_repository_reads_no_manifest_or_config() {
    const TAGS: usize = 50;
    let reg = registry().await;
    let seed = reg.client();
    seed.push_many("app", "v", TAGS, |i| Some(ago(days(i as u64)))).await.unwrap();
    let before = snapshot(&seed, "app").await;
    let store = Store::in_memory().unwrap();
    let policy = gitlab(json!({"name_regex_delete": ".*", "older_than": "7d"}));

    let mut first = context(client(reg.url(), &store), &store);
    first.dry_run = true;
    let report = run(&first, &policy, "app").await;
    assert_eq!(report.status, RepositoryStatus::Planned, "{report:#?}");
    assert_eq!((report.tags_seen, report.tags_deleted), (TAGS, 0));
    assert!(report.tags_to_delete > 0);
    let cold = stats(&first);
    assert_eq!((cold.manifest_get, cold.blob_get), (TAGS as u64, TAGS as u64), "{cold:?}");

    // The next run: a new client over the same store.
    let mut second = context(client(reg.url(), &store), &store);
    second.dry_run = true;
    let again = run(&second, &policy, "app").await;
    assert_eq!(again.status, RepositoryStatus::Planned, "{again:#?}");
    assert_eq!(tags_planned_for_deletion(&again), tags_planned_for_deletion(&report));
    let warm = stats(&second);
    assert_eq!((warm.manifest_get, warm.blob_get, warm.delete), (0, 0, 0), "{warm:?}");
    assert_eq!(warm.manifest_head, TAGS as u64, "{warm:?}");
    assert_eq!(snapshot(&seed, "app").await, before, "a dry run deletes nothing");
    assert!(audit(&store, "app").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_fraction_guard_refuses_the_whole_repository() {
    let reg = registry().await;
    let seed = reg.client();
    seed.push_many("app", "d", 8, |_| Some(ago(days(30)))).await.unwrap();
    seed.push_many("app", "k", 2, |_| Some(ago(days(30)))).await.unwrap();
    let before = snapshot(&seed, "app").await;
    let store = Store::in_memory().unwrap();
    let mut ctx = context(client(reg.url(), &store), &store);
    ctx.guards = Guards::new(&[], Some(0.5)).unwrap();
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": "d.*"})), "app").await;
    let RepositoryStatus::Refused(message) = &report.status else { panic!("expected Refused: {report:#?}") };
    assert!(message.contains("8 of 10") && message.contains("max_delete_fraction"), "{message}");
    assert!(!report.status.is_success());
    assert_eq!((report.tags_to_delete, report.tags_deleted), (8, 0));
    assert_eq!(stats(&ctx).delete, 0);
    assert_eq!(snapshot(&seed, "app").await, before, "nothing deleted");
    assert!(audit(&store, "app").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protection_rule_keeps_a_tag_the_plugin_would_delete() {
    let reg = registry().await;
    let seed = reg.client();
    for tag in ["release-1", "pre-release-1", "other-1", "other-2"] {
        seed.push_image("app", tag, Some(&ago(days(30)))).await.unwrap();
    }
    let before = snapshot(&seed, "app").await;
    let store = Store::in_memory().unwrap();
    let mut ctx = context(client(reg.url(), &store), &store);
    ctx.guards = Guards::new(&["release-.*".to_string()], None).unwrap();
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": ".*"})), "app").await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");
    let plan = report.plan.as_ref().unwrap();
    let verdict = |name: &str| {
        let i = plan.list.tags().iter().position(|t| t.name == name).unwrap();
        plan.tags[i].clone()
    };
    let protected = verdict("release-1");
    assert_eq!((protected.action, protected.decided_by), (Action::Keep, "host"));
    assert!(protected.reason.contains("host rule") && protected.reason.contains("release-.*"), "{}", protected.reason);
    // Patterns match whole names only.
    assert_eq!((verdict("pre-release-1").action, verdict("pre-release-1").decided_by), (Action::Delete, "plugin"));
    assert_eq!(report.tags_deleted, 3);
    assert_eq!(snapshot(&seed, "app").await, without(&before, &set(["pre-release-1", "other-1", "other-2"])));
    assert!(!audited_deletions(&audit(&store, "app")).contains("release-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_fails_the_pass_and_deletes_nothing() {
    let reg = registry().await;
    let seed = reg.client();
    for tag in ["v1", "v2", "v3"] {
        seed.push_image("app", tag, Some(&ago(days(30)))).await.unwrap();
    }
    let before = snapshot(&seed, "app").await;
    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    for (mode, want) in [("panic", "hostile plugin panics on purpose"), ("short", "2 tag verdicts for 3 tags")] {
        let report = run(&ctx, &policy("hostile-retention", json!({ "mode": mode })), "app").await;
        let RepositoryStatus::Failed(message) = &report.status else { panic!("{mode}: expected Failed: {report:#?}") };
        assert!(message.contains("hostile-retention") && message.contains(want), "{mode}: {message}");
        assert!(message.contains("nothing was deleted"), "{mode}: {message}");
        assert_eq!((report.tags_seen, report.tags_deleted), (3, 0), "{mode}: {report:#?}");
        assert!(report.plan.is_none());
    }
    assert_eq!(stats(&ctx).delete, 0);
    assert_eq!(snapshot(&seed, "app").await, before);
    assert!(audit(&store, "app").is_empty());
}

/// Issue 15: signatures, attestations and SBOMs follow their image. Three signed images on
/// a REAL registry (distribution 2.8, which has no referrers API: fallback tags only):
/// cosign `.sig`/`.att`/`.sbom` tags and an OCI 1.1 artifact with `subject` under the
/// fallback tag `sha256-<hex>`. With `keep_n = 1` over `.*`, keep_n counts images only (the
/// SBOM, which has no creation time and would sort as newest, takes no slot), the kept
/// image keeps its signature and SBOM, the deleted images' referrers go after them
/// (audited), and an orphan is reported, then deleted only once the config says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_follow_their_subject_and_keep_n_counts_images_only() {
    let reg = registry().await;
    let seed = reg.client();
    let repo = "group/signed";
    let v1 = seed.push_image(repo, "v1", Some(&ago(days(10)))).await.unwrap();
    let v2 = seed.push_image(repo, "v2", Some(&ago(days(5)))).await.unwrap();
    let v3 = seed.push_image(repo, "v3", Some(&ago(days(1)))).await.unwrap();
    let (v1_sig, _) = seed.push_cosign(repo, &v1, "sig").await.unwrap();
    let v1_fallback = v1.replace(':', "-");
    let v1_artifact = seed.push_artifact(repo, Some(&v1_fallback), &v1, "application/spdx+json").await.unwrap();
    let (v2_att, _) = seed.push_cosign(repo, &v2, "att").await.unwrap();
    let (v3_sig, _) = seed.push_cosign(repo, &v3, "sig").await.unwrap();
    let (v3_sbom, _) = seed.push_cosign(repo, &v3, "sbom").await.unwrap();
    // A signature whose image is gone (its subject never existed here).
    let gone = format!("sha256:{}", "ab".repeat(32));
    let (orphan, orphan_digest) = seed.push_cosign(repo, &gone, "sig").await.unwrap();
    let before = snapshot(&seed, repo).await;
    assert_eq!(before.len(), 9, "{before:?}");

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    let policy = gitlab(json!({"name_regex_delete": ".*", "keep_n": 1}));
    let report = run(&ctx, &policy, repo).await;
    assert_eq!(report.status, RepositoryStatus::Completed, "{report:#?}");

    // The plugin saw the three images and nothing else.
    let plan = report.plan.as_ref().unwrap();
    assert_eq!(plan.list.tags().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["v1", "v2", "v3"]);
    assert_eq!((report.tags_seen, report.tags_to_delete, report.referrers_seen, report.referrers_to_delete), (3, 2, 6, 3));
    assert_eq!(plan.tags[2].reason, "keep_n: among the 1 most recent", "keep_n counted images only");

    let after = snapshot(&seed, repo).await;
    let gone_tags = set(["v1", "v2", v1_sig.as_str(), v1_fallback.as_str(), v2_att.as_str()]);
    assert_eq!(after, without(&before, &gone_tags), "the kept image keeps its signature and SBOM; the orphan is kept");
    assert!(after.contains_key(&v3_sig) && after.contains_key(&v3_sbom) && after.contains_key(&orphan));
    assert_eq!(seed.resolve(repo, &v1_artifact).await.unwrap(), None, "the artifact went with its subject");

    // Every deletion audited, referrers included; each referrer after its subject.
    let rows = audit(&store, repo);
    assert_eq!(audited_deletions(&rows), gone_tags, "{rows:#?}");
    let position = |digest: &str| rows.iter().position(|r| r.digest == digest).unwrap_or_else(|| panic!("{digest} not audited"));
    assert!(position(&v1) < position(&v1_artifact), "{rows:#?}");

    // The orphan is reported, with what to do.
    assert_eq!(report.orphaned_referrers.len(), 1, "{report:#?}");
    assert!(report.orphaned_referrers[0].contains(&orphan) && report.orphaned_referrers[0].contains("delete_orphaned_referrers"));

    // A second pass changes nothing; with `delete_orphaned_referrers`, the orphan goes.
    let report = run(&ctx, &policy, repo).await;
    assert_eq!((report.status.clone(), report.tags_deleted, report.manifests_deleted), (RepositoryStatus::Completed, 0, 0), "{report:#?}");
    let mut ctx = ctx;
    ctx.guards = Guards::default().deleting_orphaned_referrers(true);
    let report = run(&ctx, &policy, repo).await;
    assert_eq!((report.tags_deleted, report.manifests_deleted), (1, 1), "{report:#?}");
    assert_eq!(seed.resolve(repo, &orphan_digest).await.unwrap(), None);
    assert_eq!(
        snapshot(&seed, repo).await.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        set(["v3", v3_sig.as_str(), v3_sbom.as_str()]).iter().map(String::as_str).collect()
    );
}
