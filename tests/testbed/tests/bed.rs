//! Self-tests of the test bed against the real registry.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use tagwarden_testbed::{ACCEPT_ALL_MANIFESTS, Auth, Fault, FaultProxy, RegistryOptions, TestRegistry, TokenServerOptions};

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn start_default() -> TestRegistry {
    TestRegistry::start(RegistryOptions::default()).await.expect("registry starts")
}

#[tokio::test]
async fn push_tags_resolve_retag_index() {
    let reg = start_default().await;
    assert!(reg.url().starts_with("http://127.0.0.1:"));
    let config = std::fs::read_to_string(reg.config_path()).unwrap();
    assert!(config.contains("enabled: true"), "{config}");
    let s = reg.client();

    let a = s.push_image("team/app", "v2", Some("2024-01-02T03:04:05Z")).await.unwrap();
    let b = s.push_image("team/app", "v1", None).await.unwrap();
    assert_ne!(a, b, "every push has unique content");
    let d = s.push_docker_image("team/app", "docker", Some("2023-05-06T07:08:09Z")).await.unwrap();
    let idx = s.push_index("team/app", "multi", [Some("2022-01-01T00:00:00Z"), Some("2022-01-02T00:00:00Z")]).await.unwrap();
    s.retag("team/app", &a, "latest").await.unwrap();

    assert_eq!(s.tags("team/app").await.unwrap(), ["docker", "latest", "multi", "v1", "v2"]);
    assert_eq!(s.resolve("team/app", "v2").await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.resolve("team/app", "latest").await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.resolve("team/app", "docker").await.unwrap().as_ref(), Some(&d));
    assert_eq!(s.resolve("team/app", "multi").await.unwrap().as_ref(), Some(&idx));
    assert_eq!(s.resolve("team/app", "nope").await.unwrap(), None);
    assert!(s.tags("team/unknown").await.is_err());
    assert_eq!(s.catalog().await.unwrap(), ["team/app"]);

    // The config blob carries `created`, and the index lists two platforms.
    let c = http();
    let manifest: serde_json::Value = c
        .get(format!("{}/v2/team/app/manifests/v2", reg.url()))
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value =
        c.get(format!("{}/v2/team/app/blobs/{config_digest}", reg.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(config["created"], "2024-01-02T03:04:05Z");
    let index: serde_json::Value = c
        .get(format!("{}/v2/team/app/manifests/multi", reg.url()))
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);

    // Deleting a manifest removes every tag on it; deleting all leaves `"tags": null` → [].
    s.delete_manifest("team/app", &a).await.unwrap();
    assert_eq!(s.tags("team/app").await.unwrap(), ["docker", "multi", "v1"]);
    for digest in [&b, &d, &idx] {
        s.delete_manifest("team/app", digest).await.unwrap();
    }
    assert!(s.tags("team/app").await.unwrap().is_empty());
}

#[tokio::test]
async fn push_many_is_concurrent_and_ordered() {
    let reg = start_default().await;
    let s = reg.client();
    let digests = s.push_many("many", "t", 40, |i| Some(format!("2024-01-01T00:00:{:02}Z", i % 60))).await.unwrap();
    assert_eq!(digests.len(), 40);
    let tags = s.tags("many").await.unwrap();
    assert_eq!(tags.len(), 40);
    assert_eq!(s.resolve("many", "t17").await.unwrap().as_ref(), Some(&digests[17]));
}

#[tokio::test]
async fn deletes_disabled_answer_405() {
    let reg = TestRegistry::start(RegistryOptions { deletes_enabled: false, ..Default::default() }).await.unwrap();
    let s = reg.client();
    let digest = s.push_image("r", "t", None).await.unwrap();
    let resp = s.request(Method::DELETE, &format!("/v2/r/manifests/{digest}")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(s.delete_manifest("r", &digest).await.is_err());
    assert_eq!(s.resolve("r", "t").await.unwrap(), Some(digest));
}

#[tokio::test]
async fn basic_auth() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: Auth::Basic { user: "alice".into(), password: "s3cret".into() },
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(reg.credentials(), Some(("alice", "s3cret")));
    let c = http();
    let url = format!("{}/v2/", reg.url());
    let anon = c.get(&url).send().await.unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let challenge = anon.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("tagwarden-test"), "{challenge}");
    let wrong = c.get(&url).basic_auth("alice", Some("nope")).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let ok = c.get(&url).basic_auth("alice", Some("s3cret")).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    let s = reg.client();
    let digest = s.push_image("private", "v1", None).await.unwrap();
    assert_eq!(s.resolve("private", "v1").await.unwrap(), Some(digest));
}

#[tokio::test]
async fn token_auth_end_to_end() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: Auth::Token(TokenServerOptions { grant_delete: false, user: "ci".into(), password: "ci-pass".into() }),
        ..Default::default()
    })
    .await
    .unwrap();
    let ts = reg.token_server().expect("token server");
    assert_eq!(ts.users(), ["ci", "testbed-admin"]);
    let c = http();

    // Anonymous: Bearer challenge pointing at our realm; the realm itself wants credentials.
    let anon = c.get(format!("{}/v2/", reg.url())).send().await.unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let challenge = anon.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains(ts.realm()), "{challenge}");
    let anon_token = c.get(ts.realm()).send().await.unwrap();
    assert_eq!(anon_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ts.tokens_issued(), 0);

    // The admin seeder pushes (token flow inside) and lists the catalog.
    let s = reg.client();
    let digest = s.push_image("secure/app", "v1", None).await.unwrap();
    assert_eq!(s.catalog().await.unwrap(), ["secure/app"]);
    let after_seeding = ts.tokens_issued();
    assert!(after_seeding >= 1);

    // The configured user asks for pull,push,delete and gets no delete.
    let token_resp: serde_json::Value = c
        .get(ts.realm())
        .query(&[("service", ts.service()), ("scope", "repository:secure/app:pull,push,delete")])
        .basic_auth("ci", Some("ci-pass"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token_resp["expires_in"], 300);
    assert_eq!(token_resp["token"], token_resp["access_token"]);
    let token = token_resp["token"].as_str().unwrap();
    assert_eq!(ts.tokens_issued(), after_seeding + 1);
    assert_eq!(ts.issued().last().unwrap().granted, ["repository:secure/app:pull,push"]);

    let pull = c
        .head(format!("{}/v2/secure/app/manifests/v1", reg.url()))
        .header("Accept", ACCEPT_ALL_MANIFESTS)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(pull.status(), StatusCode::OK);
    assert_eq!(pull.headers()["docker-content-digest"], digest.as_str());

    let delete = c.delete(format!("{}/v2/secure/app/manifests/{digest}", reg.url())).bearer_auth(token).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::UNAUTHORIZED);
    let challenge = delete.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");

    // The admin may delete.
    s.delete_manifest("secure/app", &digest).await.unwrap();
    assert_eq!(s.resolve("secure/app", "v1").await.unwrap(), None);
}

#[tokio::test]
async fn proxy_faults_and_counting() {
    let reg = start_default().await;
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let direct = reg.client();
    // Seeding through the proxy also proves upload Locations are rewritten to the proxy.
    let via = direct.with_base_url(proxy.url()).unwrap();
    let digest = via.push_image("p/app", "keep", None).await.unwrap();
    assert!(proxy.count("PUT", "/blobs/uploads/") >= 1);
    assert_eq!(proxy.count("PUT", "/manifests/keep"), 1);
    proxy.reset_counts();
    assert!(proxy.requests().is_empty());

    // 503 twice for DELETE, then pass through; faulted deletes never reach the registry.
    proxy.inject(Fault::Status { method: Some("DELETE".into()), path_contains: "/manifests/".into(), status: 503, times: 2 });
    let path = format!("/v2/p/app/manifests/{digest}");
    for _ in 0..2 {
        let r = via.request(Method::DELETE, &path).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["errors"].is_array());
        assert_eq!(direct.resolve("p/app", "keep").await.unwrap().as_ref(), Some(&digest));
    }
    // GETs were not affected by the DELETE-only fault.
    assert_eq!(via.resolve("p/app", "keep").await.unwrap().as_ref(), Some(&digest));

    // 429 with Retry-After, then pass through.
    proxy.inject(Fault::RateLimit { path_contains: "/manifests/".into(), retry_after_secs: 7, times: 1 });
    let r = via.request(Method::DELETE, &path).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "7");
    assert!(direct.resolve("p/app", "keep").await.unwrap().is_some());
    let r = via.request(Method::DELETE, &path).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(direct.resolve("p/app", "keep").await.unwrap(), None);
    assert_eq!(proxy.count("DELETE", "/manifests/"), 4);
    assert_eq!(proxy.count("*", ""), proxy.requests().len());

    // Reset: the connection closes without an answer, once.
    proxy.inject(Fault::Reset { path_contains: "/tags/list".into(), times: 1 });
    assert!(via.tags("p/app").await.is_err());
    assert!(via.tags("p/app").await.unwrap().is_empty());

    // Delay: a client with a short timeout gives up.
    proxy.inject(Fault::Delay { path_contains: "/v2/".into(), millis: 300 });
    let impatient = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(50)).build().unwrap();
    let err = impatient.get(format!("{}/v2/", proxy.url())).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    proxy.clear();
}

#[tokio::test]
async fn proxy_paginates_tags() {
    let reg = start_default().await;
    let s = reg.client();
    s.push_many("pages", "tag-", 7, |_| None).await.unwrap();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    proxy.inject(Fault::PaginateTags { page_size: 3 });

    let c = http();
    let mut url = format!("{}/v2/pages/tags/list", proxy.url());
    let mut seen = Vec::new();
    let mut links = Vec::new();
    loop {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let link = r.headers().get("link").map(|v| v.to_str().unwrap().to_string());
        let body: serde_json::Value = r.json().await.unwrap();
        let page: Vec<String> = body["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        assert!(page.len() <= 3);
        seen.extend(page);
        match link {
            Some(l) => {
                assert!(l.starts_with("</v2/pages/tags/list?n=3&last="), "{l}");
                assert!(l.ends_with(">; rel=\"next\""), "{l}");
                let target = &l[1..l.find('>').unwrap()];
                links.push(target.to_string());
                url = format!("{}{target}", proxy.url());
            }
            None => break,
        }
    }
    assert_eq!(links.len(), 2);
    seen.sort();
    assert_eq!(seen, (0..7).map(|i| format!("tag-{i}")).collect::<Vec<_>>());
    assert_eq!(proxy.count("GET", "/tags/list"), 3);

    // The seeder follows the Link pages too; clearing restores the single unpaginated answer.
    let via = s.with_base_url(proxy.url()).unwrap();
    assert_eq!(via.tags("pages").await.unwrap().len(), 7);
    assert_eq!(proxy.count("GET", "/tags/list"), 6);
    proxy.clear();
    let r = c.get(format!("{}/v2/pages/tags/list", proxy.url())).send().await.unwrap();
    assert!(r.headers().get("link").is_none());
    // Unknown repositories still answer 404 through the paginating proxy.
    proxy.inject(Fault::PaginateTags { page_size: 3 });
    let r = c.get(format!("{}/v2/nothing/tags/list", proxy.url())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn drop_kills_the_registry_and_removes_its_directory() {
    let reg = start_default().await;
    let pid = reg.pid();
    let dir = reg.work_dir().to_path_buf();
    let proc_path = format!("/proc/{pid}");
    assert!(std::path::Path::new(&proc_path).exists());
    assert!(dir.exists());
    drop(reg);
    assert!(!std::path::Path::new(&proc_path).exists(), "registry {pid} survived drop");
    assert!(!dir.exists());
}

#[tokio::test]
async fn parallel_instances_get_their_own_ports() {
    let regs = tokio::try_join!(
        TestRegistry::start(RegistryOptions::default()),
        TestRegistry::start(RegistryOptions::default()),
        TestRegistry::start(RegistryOptions::default()),
    )
    .unwrap();
    let urls = [regs.0.url(), regs.1.url(), regs.2.url()];
    assert_ne!(urls[0], urls[1]);
    assert_ne!(urls[1], urls[2]);
    assert_ne!(urls[0], urls[2]);
}

#[tokio::test]
async fn a_panicking_test_leaves_no_registry_behind() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let reg = TestRegistry::start(RegistryOptions::default()).await.unwrap();
        tx.send((reg.pid(), reg.work_dir().to_path_buf())).unwrap();
        panic!("simulated test failure");
    });
    let (pid, dir) = rx.await.unwrap();
    assert!(task.await.unwrap_err().is_panic());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

/// The throwaway PostgreSQL cluster: reachable over TCP with its password only, restartable on
/// the same port, and gone (server stopped, directory removed) once dropped, also when the test
/// that owns it panics.
#[test]
fn postgres_cluster_lives_and_dies_with_its_value() {
    use tagwarden_testbed::PostgresCluster;
    let mut cluster = PostgresCluster::start().expect("start a cluster");
    assert_eq!(cluster.psql("SELECT 40 + 2").unwrap().trim(), "42");
    let url = cluster.create_database("bed_check").unwrap();
    assert!(url.ends_with("/bed_check") && !url.contains(cluster.password()), "{url}");
    assert!(!format!("{cluster:?}").contains(cluster.password()), "Debug shows no password");
    // Without the password the server refuses (password authentication over TCP).
    let refused = std::process::Command::new(tagwarden_testbed::postgres_bin().unwrap().join("psql"))
        .args(["-X", "-w", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
        .arg("-p")
        .arg(cluster.port().to_string())
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "no password, no connection");
    cluster.restart().unwrap();
    assert_eq!(cluster.psql("SELECT datname FROM pg_database WHERE datname = 'bed_check'").unwrap().trim(), "bed_check");

    // A panicking owner still stops and removes its cluster (dropped while unwinding).
    let seen = std::sync::Mutex::new(None);
    let unwound = std::panic::catch_unwind(|| {
        let cluster = PostgresCluster::start().unwrap();
        let dir = cluster.psql("SHOW data_directory").unwrap().trim().to_owned();
        *seen.lock().unwrap() = Some((cluster.port(), dir));
        panic!("the test fails while its cluster runs");
    });
    assert!(unwound.is_err());
    let (port, dir) = seen.into_inner().unwrap().expect("the cluster started");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the server on {port} is stopped");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is removed");
}
