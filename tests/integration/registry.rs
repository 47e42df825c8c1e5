//! The registry client against a REAL registry (CNCF distribution 2.8 via `tagwarden-testbed`): one
//! registry per test, so tests run in parallel. Faults the real registry never produces (429,
//! pagination, resets) come from the test bed's fault proxy in front of it; GitLab's API from a
//! small mock server (see `gitlab_tags_api_replaces_per_tag_requests`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tagwarden::model::{Digest, ErrorClass, Timestamp};
use tagwarden::registry::{
    Credentials, DOCKER_MANIFEST, DeleteOutcome, OCI_INDEX, OCI_MANIFEST, RegistryClient, RegistryConfig, RegistryError, RequestStats,
    Secret, TagDeleteOutcome,
};
use tagwarden::store::MetadataCache;
use tagwarden_testbed::{Auth, Fault, FaultProxy, RegistryOptions, TestRegistry, TokenServerOptions};

async fn registry() -> TestRegistry {
    TestRegistry::start(RegistryOptions::default()).await.expect("starting the test registry")
}

fn config(url: &str) -> RegistryConfig {
    RegistryConfig::new(url.parse().expect("a registry URL"))
}

fn client(url: &str) -> RegistryClient {
    RegistryClient::new(config(url), None).unwrap()
}

fn client_with(config: RegistryConfig, cache: Option<MetadataCache>) -> RegistryClient {
    RegistryClient::new(config, cache).unwrap()
}

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic { username: user.to_string(), password: Secret::new(password) }
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).unwrap()
}

fn ts(s: &str) -> Option<Timestamp> {
    Some(Timestamp::parse_rfc3339(s).unwrap())
}

fn no_progress(_: usize, _: usize) {}

async fn names(client: &RegistryClient, repo: &str) -> Vec<String> {
    client.tag_names(repo).await.unwrap().expect("the repository exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_names_are_sorted_and_unknown_repositories_are_none() {
    let reg = registry().await;
    let seeder = reg.client();
    for tag in ["v10", "b", "a", "v2", "Z", "latest"] {
        seeder.push_image("group/app", tag, None).await.unwrap();
    }
    let c = client(reg.url());
    assert_eq!(names(&c, "group/app").await, ["Z", "a", "b", "latest", "v10", "v2"]);
    assert_eq!(c.tag_names("group/nothing").await.unwrap(), None);
    assert_eq!(c.tag_list("group/nothing", &no_progress).await.unwrap(), None);
    assert_eq!(c.resolve_tag("group/nothing", "v1").await.unwrap(), None);
    assert_eq!(c.resolve_tag("group/app", "missing").await.unwrap(), None);
    let err = c.tag_names("Bad/../Name").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.to_string().contains("not a valid repository name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_every_tag_leaves_an_empty_list_not_an_unknown_repository() {
    let reg = registry().await;
    let seeder = reg.client();
    let a = seeder.push_image("app", "a", None).await.unwrap();
    let b = seeder.push_image("app", "b", None).await.unwrap();
    let c = client(reg.url());
    for d in [&a, &b] {
        assert_eq!(c.delete_manifest("app", &digest(d)).await.unwrap(), DeleteOutcome::Deleted);
    }
    // distribution answers `"tags": null` here.
    assert_eq!(c.tag_names("app").await.unwrap(), Some(vec![]));
    let list = c.tag_list("app", &no_progress).await.unwrap().expect("the repository still exists");
    assert!(list.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_every_repository_sorted() {
    let reg = registry().await;
    let seeder = reg.client();
    for repo in ["zeta", "group/app", "alpha", "group/sub/tool"] {
        seeder.push_image(repo, "v1", None).await.unwrap();
    }
    assert_eq!(client(reg.url()).catalog().await.unwrap(), ["alpha", "group/app", "group/sub/tool", "zeta"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_carry_created_times_from_oci_and_docker_configs() {
    let reg = registry().await;
    let seeder = reg.client();
    let oci = seeder.push_image("app", "oci", Some("2024-01-02T03:04:05Z")).await.unwrap();
    let docker = seeder.push_docker_image("app", "docker", Some("2023-06-07T08:09:10.123456Z")).await.unwrap();
    let bare = seeder.push_image("app", "no-created", None).await.unwrap();
    seeder.retag("app", &oci, "oci-again").await.unwrap();
    let calls = AtomicUsize::new(0);
    let last = Mutex::new((0, 0));
    let progress = |done: usize, total: usize| {
        calls.fetch_add(1, Ordering::Relaxed);
        *last.lock().unwrap() = (done, total);
    };
    let c = client(reg.url());
    let list = c.tag_list("app", &progress).await.unwrap().unwrap();
    let tags = list.tags();
    let names: Vec<&str> = tags.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["docker", "no-created", "oci", "oci-again"]);
    let by = |n: &str| tags.iter().find(|t| t.name == n).unwrap();
    assert_eq!((by("oci").digest.as_str(), by("oci").created_at), (oci.as_str(), ts("2024-01-02T03:04:05Z")));
    assert_eq!(by("oci").media_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!((by("docker").digest.as_str(), by("docker").created_at), (docker.as_str(), ts("2023-06-07T08:09:10.123456Z")));
    assert_eq!(by("docker").media_type.as_deref(), Some(DOCKER_MANIFEST));
    assert_eq!((by("no-created").digest.as_str(), by("no-created").created_at), (bare.as_str(), None));
    assert_eq!(by("oci-again").digest, by("oci").digest);
    assert!(by("oci").size_bytes.is_some_and(|s| s > 0));
    assert_eq!(*last.lock().unwrap(), (4, 4));
    assert_eq!(calls.load(Ordering::Relaxed), 5, "(0, 4) then once per tag");
    // Three distinct digests: the retagged one is fetched once.
    let stats = c.stats();
    assert_eq!((stats.manifest_head, stats.manifest_get, stats.blob_get), (4, 3, 3), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_as_new_as_its_newest_child() {
    let reg = registry().await;
    let seeder = reg.client();
    let index = seeder.push_index("multi", "v1", [Some("2024-03-01T00:00:00Z"), Some("2024-05-01T00:00:00Z")]).await.unwrap();
    seeder.push_index("multi", "one-known", [None, Some("2022-01-01T00:00:00Z")]).await.unwrap();
    seeder.push_index("multi", "none-known", [None, None]).await.unwrap();
    let list = client(reg.url()).tag_list("multi", &no_progress).await.unwrap().unwrap();
    let by = |n: &str| list.tags().iter().find(|t| t.name == n).unwrap().clone();
    assert_eq!(by("v1").digest.as_str(), index);
    assert_eq!(by("v1").created_at, ts("2024-05-01T00:00:00Z"));
    assert_eq!(by("v1").media_type.as_deref(), Some(OCI_INDEX));
    assert!(by("v1").size_bytes.is_some_and(|s| s > 0));
    assert_eq!(by("one-known").created_at, ts("2022-01-01T00:00:00Z"));
    assert_eq!(by("none-known").created_at, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_digest_removes_every_tag_and_a_repeat_is_already_gone() {
    let reg = registry().await;
    let seeder = reg.client();
    let d = seeder.push_image("app", "v1", None).await.unwrap();
    seeder.retag("app", &d, "also-v1").await.unwrap();
    seeder.push_image("app", "keep", None).await.unwrap();
    let c = client(reg.url());
    assert_eq!(c.delete_manifest("app", &digest(&d)).await.unwrap(), DeleteOutcome::Deleted);
    assert_eq!(names(&c, "app").await, ["keep"]);
    assert_eq!(c.delete_manifest("app", &digest(&d)).await.unwrap(), DeleteOutcome::AlreadyGone);
    // distribution answers 404 MANIFEST_UNKNOWN even for an unknown repository.
    assert_eq!(c.delete_manifest("no/such/repo", &digest(&d)).await.unwrap(), DeleteOutcome::AlreadyGone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_delete_is_unsupported_on_distribution_2_8_and_remembered() {
    let reg = registry().await;
    let seeder = reg.client();
    let d = seeder.push_image("app", "v1", None).await.unwrap();
    let c = client(reg.url());
    assert_eq!(c.delete_tag("app", "v1").await.unwrap(), TagDeleteOutcome::Unsupported);
    assert_eq!(c.stats().delete, 1);
    assert_eq!(c.delete_tag("app", "v1").await.unwrap(), TagDeleteOutcome::Unsupported);
    assert_eq!(c.stats().delete, 1, "the second call must not send a request");
    assert_eq!(c.resolve_tag("app", "v1").await.unwrap(), Some(digest(&d)), "the tag is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_deletes_are_a_permanent_405_unsupported_error_that_says_what_to_do() {
    let reg = TestRegistry::start(RegistryOptions { deletes_enabled: false, ..Default::default() }).await.unwrap();
    let d = reg.client().push_image("group/app", "v1", None).await.unwrap();
    let err: RegistryError = client(reg.url()).delete_manifest("group/app", &digest(&d)).await.unwrap_err();
    assert_eq!((err.status, err.code.as_deref(), err.class), (Some(405), Some("UNSUPPORTED"), ErrorClass::Permanent));
    assert_eq!(err.repository.as_deref(), Some("group/app"));
    let text = err.to_string();
    let want = format!("DELETE {}/v2/group/app/manifests/{d} on group/app: 405 UNSUPPORTED: ", reg.url());
    assert!(text.starts_with(&want), "{text}");
    assert!(text.contains("storage.delete.enabled"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_sent_on_every_request_and_a_wrong_password_is_unauthorized() {
    let auth = Auth::Basic { user: "robot".into(), password: "right-password".into() };
    let reg = TestRegistry::start(RegistryOptions { auth, ..Default::default() }).await.unwrap();
    let d = reg.client().push_image("app", "v1", Some("2024-01-01T00:00:00Z")).await.unwrap();

    let wrong = client_with(RegistryConfig { credentials: basic("robot", "wrong-password"), ..config(reg.url()) }, None);
    let err = wrong.tag_names("app").await.unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Unauthorized, Some(401)));
    assert!(!format!("{err} {err:?}").contains("wrong-password"));
    assert!(err.to_string().contains("check the username and password"), "{err}");
    let anonymous = client(reg.url());
    assert_eq!(anonymous.tag_names("app").await.unwrap_err().class, ErrorClass::Unauthorized);

    let right = client_with(RegistryConfig { credentials: basic("robot", "right-password"), ..config(reg.url()) }, None);
    let list = right.tag_list("app", &no_progress).await.unwrap().unwrap();
    assert_eq!(list.tags()[0].created_at, ts("2024-01-01T00:00:00Z"));
    // Uploads: the Location URL carries no credentials, so they must be sent there too.
    let blob = right.push_blob("app", b"hello".to_vec()).await.unwrap();
    assert_eq!(blob, Digest::sha256_of(b"hello"));
    assert_eq!(right.delete_manifest("app", &digest(&d)).await.unwrap(), DeleteOutcome::Deleted);
}

/// A token-authenticated registry and a client logged in as the token server's (non-admin) user.
async fn token_registry(grant_delete: bool) -> (TestRegistry, RegistryClient) {
    let options = TokenServerOptions { grant_delete, ..Default::default() };
    let reg = TestRegistry::start(RegistryOptions { auth: Auth::Token(options), ..Default::default() }).await.unwrap();
    let (user, password) = reg.credentials().unwrap();
    let c = client_with(RegistryConfig { credentials: basic(user, password), ..config(reg.url()) }, None);
    (reg, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_fetches_one_token_per_scope_and_reuses_it() {
    let (reg, c) = token_registry(true).await;
    let seeder = reg.client();
    let digests = seeder.push_many("team/app", "t", 20, |i| Some(format!("2024-01-{:02}T00:00:00Z", i + 1))).await.unwrap();
    let tokens = reg.token_server().unwrap();
    let before = tokens.tokens_issued();

    let list = c.tag_list("team/app", &no_progress).await.unwrap().unwrap();
    assert_eq!(list.tags().len(), 20);
    assert_eq!(list.tags().iter().find(|t| t.name == "t19").unwrap().created_at, ts("2024-01-20T00:00:00Z"));
    for d in &digests[..3] {
        assert_eq!(c.delete_manifest("team/app", &digest(d)).await.unwrap(), DeleteOutcome::Deleted);
    }
    assert_eq!(c.catalog().await.unwrap(), ["team/app"]);
    assert_eq!(names(&c, "team/app").await.len(), 17);

    // ~64 requests; one token each for pull, pull+delete and the catalog.
    let issued = tokens.tokens_issued() - before;
    let stats = c.stats();
    assert_eq!(stats.token, 3, "{stats:?}");
    assert_eq!(issued, 3, "{:?}", tokens.issued());
    assert!(stats.total() > 60, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_delete_scope_is_unauthorized_and_says_so() {
    let (reg, c) = token_registry(false).await;
    let d = reg.client().push_image("app", "v1", None).await.unwrap();
    assert_eq!(c.resolve_tag("app", "v1").await.unwrap(), Some(digest(&d)), "pull works");
    let err = c.delete_manifest("app", &digest(&d)).await.unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Unauthorized, Some(401)));
    let text = err.to_string();
    assert!(text.contains("lack the `delete` scope"), "{text}");
    let (_, password) = reg.credentials().unwrap();
    assert!(!format!("{text} {err:?}").contains(password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_a_wrong_password_names_the_user() {
    let options = TokenServerOptions::default();
    let reg = TestRegistry::start(RegistryOptions { auth: Auth::Token(options), ..Default::default() }).await.unwrap();
    let c = client_with(RegistryConfig { credentials: basic("tagwarden", "nope"), ..config(reg.url()) }, None);
    let err = c.tag_names("app").await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Unauthorized);
    assert!(err.to_string().contains("rejected the credentials of user `tagwarden`"), "{err}");
}

/// A registry behind a fault proxy, and a client talking to the proxy.
async fn proxied(configure: impl FnOnce(&mut RegistryConfig)) -> (TestRegistry, FaultProxy, RegistryClient) {
    let reg = registry().await;
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let mut config = config(proxy.url());
    configure(&mut config);
    let c = client_with(config, None);
    (reg, proxy, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_503s_are_retried_until_success() {
    let (reg, proxy, c) = proxied(|_| {}).await;
    reg.client().push_image("app", "v1", None).await.unwrap();
    proxy.inject(Fault::Status { method: Some("GET".into()), path_contains: "/tags/list".into(), status: 503, times: 2 });
    assert_eq!(names(&c, "app").await, ["v1"]);
    assert_eq!(c.stats().retries, 2);
    assert_eq!((c.stats().tag_list, proxy.count("GET", "/tags/list")), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_give_up_after_max_retries_with_a_transient_error() {
    let (reg, proxy, c) = proxied(|c| c.max_retries = 1).await;
    reg.client().push_image("app", "v1", None).await.unwrap();
    proxy.inject(Fault::Status { method: None, path_contains: "/tags/list".into(), status: 500, times: 5 });
    let err = c.tag_names("app").await.unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Transient, Some(500)));
    assert!(err.to_string().contains("gave up after 2 attempts"), "{err}");
    assert_eq!(proxy.count("GET", "/tags/list"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_after_is_honoured() {
    let (reg, proxy, c) = proxied(|_| {}).await;
    reg.client().push_image("app", "v1", None).await.unwrap();
    proxy.inject(Fault::RateLimit { path_contains: "/tags/list".into(), retry_after_secs: 1, times: 1 });
    let started = Instant::now();
    assert_eq!(names(&c, "app").await, ["v1"]);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "waited only {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "waited {elapsed:?}");
    assert_eq!(c.stats().retries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_allowed_fails_at_once_as_rate_limited() {
    let (reg, proxy, c) = proxied(|c| c.max_retry_after = Duration::from_secs(2)).await;
    reg.client().push_image("app", "v1", None).await.unwrap();
    proxy.inject(Fault::RateLimit { path_contains: "/tags/list".into(), retry_after_secs: 120, times: 1 });
    let started = Instant::now();
    let err = c.tag_names("app").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!((err.class, err.status), (ErrorClass::RateLimited, Some(429)));
    assert!(err.to_string().contains("asked to wait 120 s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_is_retried() {
    let (reg, proxy, c) = proxied(|_| {}).await;
    let d = reg.client().push_image("app", "v1", None).await.unwrap();
    proxy.inject(Fault::Reset { path_contains: "/manifests/".into(), times: 1 });
    assert_eq!(c.resolve_tag("app", "v1").await.unwrap(), Some(digest(&d)));
    let stats = c.stats();
    assert_eq!((stats.retries, stats.manifest_head), (1, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_registry_times_out() {
    let (reg, proxy, c) = proxied(|c| {
        c.request_timeout = Duration::from_millis(300);
        c.max_retries = 1;
    })
    .await;
    reg.client().push_image("app", "v1", None).await.unwrap();
    proxy.inject(Fault::Delay { path_contains: "/tags/list".into(), millis: 2_000 });
    let err = c.tag_names("app").await.unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Timeout, None));
    assert!(err.to_string().contains("request_timeout"), "{err}");
    assert_eq!(c.stats().retries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_tag_lists_are_followed_and_sorted() {
    let (reg, proxy, c) = proxied(|_| {}).await;
    let seeder = reg.client();
    let d = seeder.push_image("group/app", "t0", None).await.unwrap();
    for i in 1..10 {
        seeder.retag("group/app", &d, &format!("t{i}")).await.unwrap();
    }
    proxy.inject(Fault::PaginateTags { page_size: 3 });
    let want: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    assert_eq!(names(&c, "group/app").await, want);
    assert_eq!(proxy.count("GET", "/tags/list"), 4, "{:?}", proxy.requests());
    let list = c.tag_list("group/app", &no_progress).await.unwrap().unwrap();
    assert_eq!(list.tags().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_cache_makes_a_second_listing_cost_one_head_per_tag() {
    const TAGS: usize = 200;
    let reg = registry().await;
    let seeder = reg.client();
    let created = |i: usize| Some(format!("2024-{:02}-{:02}T00:00:00Z", i % 12 + 1, i % 28 + 1));
    let pushed = Instant::now();
    let digests = seeder.push_many("big", "v", TAGS - 10, created).await.unwrap();
    // Ten more tags on existing digests, and an index: not every tag is a distinct digest.
    for (i, d) in digests.iter().take(9).enumerate() {
        seeder.retag("big", d, &format!("alias{i}")).await.unwrap();
    }
    seeder.push_index("big", "multi", [Some("2025-01-01T00:00:00Z"), None]).await.unwrap();
    eprintln!("pushed {TAGS} tags in {:?}", pushed.elapsed());

    let cache = MetadataCache::in_memory().unwrap();
    let cold = client_with(config(reg.url()), Some(cache.clone()));
    let started = Instant::now();
    let first = cold.tag_list("big", &no_progress).await.unwrap().unwrap();
    let cold_time = started.elapsed();
    let cold_stats = cold.stats();

    // A new client (the next run) over the same cache.
    let warm = client_with(config(reg.url()), Some(cache.clone()));
    let started = Instant::now();
    let second = warm.tag_list("big", &no_progress).await.unwrap().unwrap();
    let warm_time = started.elapsed();
    let warm_stats = warm.stats();
    eprintln!("{TAGS} tags, cold cache: {cold_time:?} {cold_stats:?}");
    eprintln!("{TAGS} tags, warm cache: {warm_time:?} {warm_stats:?}");

    assert_eq!(first, second);
    assert_eq!(first.tags().len(), TAGS);
    assert!(first.tags().iter().filter(|t| t.name.starts_with('v')).all(|t| t.created_at.is_some()));
    // 190 images + 1 index + its 2 children.
    assert_eq!((cold_stats.manifest_head, cold_stats.manifest_get, cold_stats.blob_get), (TAGS as u64, 193, 192));
    assert_eq!(cache.len().unwrap(), 193);
    assert_eq!((warm_stats.manifest_head, warm_stats.manifest_get, warm_stats.blob_get), (TAGS as u64, 0, 0));
    assert_eq!(warm_stats.tag_list, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_file_survives_reopening() {
    let reg = registry().await;
    let seeder = reg.client();
    seeder.push_many("app", "v", 5, |_| Some("2024-01-01T00:00:00Z".to_string())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/tagwarden.db");
    {
        let c = client_with(config(reg.url()), Some(MetadataCache::open(&path).unwrap()));
        c.tag_list("app", &no_progress).await.unwrap().unwrap();
        assert_eq!(c.stats().manifest_get, 5);
    }
    let reopened = MetadataCache::open(&path).unwrap();
    assert_eq!(reopened.len().unwrap(), 5);
    let c = client_with(config(reg.url()), Some(reopened));
    let list = c.tag_list("app", &no_progress).await.unwrap().unwrap();
    assert!(list.tags().iter().all(|t| t.created_at == ts("2024-01-01T00:00:00Z")));
    let stats = c.stats();
    assert_eq!((stats.manifest_get, stats.blob_get), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_blobs_and_manifests_list_like_any_image() {
    let reg = registry().await;
    let c = client(reg.url());
    let config_json = br#"{"created":"2021-02-03T04:05:06Z","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = c.push_blob("group/app", config_json.to_vec()).await.unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_json.len()},
        "layers": [],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let d = c.put_manifest("group/app", "dummy", OCI_MANIFEST, bytes.clone()).await.unwrap();
    assert_eq!(d, Digest::sha256_of(&bytes));
    assert_eq!(c.resolve_tag("group/app", "dummy").await.unwrap(), Some(d.clone()));
    let list = c.tag_list("group/app", &no_progress).await.unwrap().unwrap();
    assert_eq!(list.tags()[0].created_at, ts("2021-02-03T04:05:06Z"));
    assert_eq!(list.tags()[0].digest, d);
    let stats = c.stats();
    assert_eq!((stats.upload, stats.put), (1, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_registry_is_probed_for_the_gitlab_api_once() {
    let reg = registry().await;
    reg.client().push_image("app", "v1", None).await.unwrap();
    let c = client(reg.url());
    for _ in 0..3 {
        c.tag_list("app", &no_progress).await.unwrap().unwrap();
    }
    assert_eq!(c.stats().probe, 1);
}

/// A stand-in for GitLab's container registry API. It is a MOCK: GitLab's registry cannot run on
/// this machine (no GitLab, no package for its registry fork), so this serves canned answers in
/// the documented format (`registry-protocol-notes.md`, "GitLab registry extensions").
struct GitlabMock {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitlabMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitlabMock {
    async fn start() -> GitlabMock {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    seen.lock().unwrap().push(target.clone());
                    let (status, link, body) = GitlabMock::answer(&target);
                    let link = link.map(|l| format!("Link: <{l}>; rel=\"next\"\r\n")).unwrap_or_default();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{link}Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        GitlabMock { url, requests, task }
    }

    /// The index `group/multi:v1` points at: children `sha256:fff…` and `sha256:eee…`.
    fn index() -> String {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest('f'), "size": 1},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest('e'), "size": 1},
            ],
        })
        .to_string()
    }

    fn index_digest() -> String {
        Digest::sha256_of(Self::index().as_bytes()).to_string()
    }

    fn answer(target: &str) -> (u16, Option<&'static str>, String) {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let tag = |name: &str, d: char, created: &str, updated: Option<&str>, published: Option<&str>| {
            serde_json::json!({
                "name": name, "digest": digest(d), "config_digest": digest('c'),
                "media_type": "application/vnd.oci.image.manifest.v1+json", "size_bytes": 1234,
                "created_at": created, "updated_at": updated, "published_at": published,
            })
        };
        match target {
            "/gitlab/v1/" => (200, None, "{}".into()),
            "/gitlab/v1/repositories/group/app/tags/list/?n=1000" => (
                200,
                Some("/gitlab/v1/repositories/group/app/tags/list/?last=b&n=1000"),
                serde_json::json!([
                    tag("b", 'b', "2024-02-01T00:00:00Z", Some("2024-02-03T00:00:00Z"), Some("2024-02-02T00:00:00Z")),
                    tag("a", 'a', "2024-01-01T00:00:00Z", None, Some("2024-01-02T00:00:00Z")),
                ])
                .to_string(),
            ),
            "/gitlab/v1/repositories/group/app/tags/list/?last=b&n=1000" => {
                (200, None, serde_json::json!([tag("c", 'a', "2024-03-01T00:00:00.5Z", None, None)]).to_string())
            }
            // `group/multi`: one multi-arch tag; the API gives its media type, not its children.
            "/gitlab/v1/repositories/group/multi/tags/list/?n=1000" => {
                let mut v1 = tag("v1", 'd', "2024-01-01T00:00:00Z", None, None);
                v1["digest"] = Self::index_digest().into();
                v1["media_type"] = "application/vnd.oci.image.index.v1+json".into();
                (200, None, serde_json::json!([v1]).to_string())
            }
            t if t == format!("/v2/group/multi/manifests/{}", Self::index_digest()) => (200, None, Self::index()),
            t if t.starts_with("/gitlab/v1/repositories/") => {
                (404, None, r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#.into())
            }
            _ => (404, None, "404 page not found".into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_tags_api_replaces_per_tag_requests() {
    let mock = GitlabMock::start().await;
    let c = client(&mock.url);
    let list = c.tag_list("group/app", &no_progress).await.unwrap().unwrap();
    let tags = list.tags();
    assert_eq!(tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!((tags[0].created_at, tags[0].pushed_at), (ts("2024-01-01T00:00:00Z"), ts("2024-01-02T00:00:00Z")));
    assert_eq!(tags[1].pushed_at, ts("2024-02-03T00:00:00Z"), "updated_at wins over published_at");
    assert_eq!((tags[2].created_at, tags[2].pushed_at), (ts("2024-03-01T00:00:00.5Z"), None));
    assert_eq!(tags[2].digest, tags[0].digest);
    assert_eq!((tags[0].size_bytes, tags[0].media_type.as_deref()), (Some(1234), Some(OCI_MANIFEST)));
    assert_eq!(c.tag_list("group/unknown", &no_progress).await.unwrap(), None);

    let stats: RequestStats = c.stats();
    assert_eq!((stats.probe, stats.tag_list, stats.manifest_head, stats.manifest_get, stats.blob_get), (1, 3, 0, 0, 0), "{stats:?}");
    // Besides GitLab's API, one probe of the referrers API (the mock has none), remembered.
    assert_eq!(stats.referrers, 1, "{stats:?}");
    let requests = mock.requests.lock().unwrap().clone();
    let (referrers, gitlab): (Vec<&String>, Vec<&String>) = requests.iter().partition(|r| r.starts_with("/v2/group/app/referrers/"));
    assert_eq!(referrers.len(), 1, "{requests:?}");
    assert!(gitlab.iter().all(|r| r.starts_with("/gitlab/v1/")), "{requests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_tags_api_lists_gain_what_each_index_references() {
    // A mock: GitLab's registry API cannot run here (see `GitlabMock`).
    let mock = GitlabMock::start().await;
    let c = client(&mock.url);
    let list = c.tag_list("group/multi", &no_progress).await.unwrap().unwrap();
    let d = |ch: char| Digest::parse(&format!("sha256:{}", ch.to_string().repeat(64))).unwrap();
    let index = Digest::parse(&GitlabMock::index_digest()).unwrap();
    assert_eq!(list.index_children().get(&index), Some(&vec![d('e'), d('f')]), "children sorted");
    // The index manifest once, then its children for their metadata (gone here: 404).
    let stats: RequestStats = c.stats();
    assert_eq!((stats.tag_list, stats.manifest_get), (1, 3), "{stats:?}");
}
