//! The HTTP API and `/metrics` of `tagwarden serve`, over real HTTP against the real binary,
//! a REAL registry (distribution 2.8) and the test bed's fault proxy: a repository whose
//! deletes are forbidden fails and shows why; an action without the token is refused and
//! changes nothing; retry with the token brings it back and the daemon cleans it; the audit
//! search finds a deleted tag and the restore action brings it back; `/metrics` parses as
//! Prometheus text with bounded labels.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tagwarden::model::Timestamp;
use tagwarden_testbed::{Fault, FaultProxy};

use crate::pass::{days, registry, snapshot};

pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";

pub(crate) fn ago(age: Duration) -> String {
    Timestamp::now().saturating_sub(age).to_rfc3339()
}

/// A running `tagwarden serve`, killed when dropped.
pub(crate) struct Daemon {
    child: Child,
    base: String,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon and waits for the line that names the API's address.
pub(crate) fn start(dir: &Path, config: &Path) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir)
        .args(["serve", "--config", &config.display().to_string()])
        .env("TAGWARDEN_CACHE_DIR", dir.join("compiled"))
        .env("TW_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Owned at once, so that a panic below still kills and reaps it.
    let mut daemon = Daemon { child, base: String::new(), stderr: rx };
    let mut seen = String::new();
    loop {
        let line =
            daemon.stderr.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|e| panic!("serve printed no API address ({e}):\n{seen}"));
        if let Some(addr) = line.strip_prefix("serve: API and /metrics on ") {
            daemon.base = addr.to_owned();
            return daemon;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
}

impl Daemon {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn get(&self, http: &reqwest::Client, path: &str) -> (StatusCode, Value) {
        let resp = http.get(self.url(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, http: &reqwest::Client, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut req = http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls `path` until `done` holds for its JSON (the daemon works at its own pace).
    pub(crate) async fn wait_for(&self, http: &reqwest::Client, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (_, v) = self.get(http, path).await;
            if done(&v) {
                return v;
            }
            if Instant::now() > deadline {
                let log: Vec<String> = self.stderr.try_iter().collect();
                panic!("{what}: gave up waiting; last answer {v:#}\nserve output:\n{}", log.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub(crate) fn write_config(dir: &Path, url: &str, listen: &str, token: bool) -> std::path::PathBuf {
    let plugin = crate::support::plugin_path("gitlab-retention").display().to_string();
    let token = if token { "api_token_env = \"TW_API_TOKEN\"\n" } else { "" };
    let config = format!(
        "[registry]\nurl = {url:?}\nmax_retries = 0\n\n[state]\ndir = \"state\"\n\n\
         [serve]\nlisten = {listen:?}\n{token}\n\
         [plugins]\nbackoff = \"exponential-backoff\"\nbackoff_params = {{ give_up_on_unauthorized = true }}\n\n\
         [[policy]]\nname = \"apps\"\nrepositories = [\"apps/*\"]\nplugin = {plugin:?}\ncadence = \"1d\"\n\
         params = {{ name_regex_delete = \".*\", older_than = \"7d\" }}\n"
    );
    let path = dir.join("tagwarden.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_a_failure_retry_it_search_the_audit_log_restore_a_tag_and_scrape_metrics_over_http() {
    let reg = registry().await;
    let seed = reg.client();
    for repo in ["apps/web", "apps/locked"] {
        seed.push_image(repo, "old", Some(&ago(days(30)))).await.unwrap();
        seed.push_image(repo, "new", Some(&ago(days(1)))).await.unwrap();
    }
    let web_before = snapshot(&seed, "apps/web").await;
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    proxy.inject(Fault::Status { method: Some("DELETE".into()), path_contains: "/v2/apps/locked/".into(), status: 403, times: usize::MAX });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), proxy.url(), "127.0.0.1:0", true);
    let daemon = start(dir.path(), &config);
    let http = reqwest::Client::new();

    let (status, v) = daemon.get(&http, "/healthz").await;
    assert_eq!((status, &v["status"]), (StatusCode::OK, &json!("ok")));
    let (status, v) = daemon.get(&http, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((&v["ready"], &v["state_store"], &v["plugins_loaded"]), (&json!(true), &json!("ok"), &json!(3)), "{v}");

    // The forbidden repository fails for good (the backoff plugin gives up on 403) and says why.
    let failed = daemon
        .wait_for(&http, "/api/v1/repositories?status=cleanup_failed", "apps/locked failed", |v| {
            v["repositories"].as_array().is_some_and(|a| a.iter().any(|r| r["path"] == "apps/locked"))
        })
        .await;
    let (status, one) = daemon.get(&http, "/api/v1/repositories/apps/locked").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let failure = &one["repository"]["last_failure"];
    assert_eq!(failure["class"], "unauthorized", "{failed:#}");
    assert!(failure["reason"].as_str().unwrap().contains("403"), "{one:#}");
    assert!(one["runs"].as_array().is_some_and(|r| !r.is_empty()), "{one:#}");
    let web = daemon
        .wait_for(&http, "/api/v1/repositories/apps/web", "apps/web cleaned", |v| v["repository"]["status"] == "cleanup_unscheduled")
        .await;
    assert!(web["audit"].as_array().unwrap().iter().any(|a| a["tags"] == json!(["old"]) && a["outcome"] == "deleted"), "{web:#}");
    assert_eq!(seed.resolve("apps/web", "old").await.unwrap(), None);

    // Listing: search and paging.
    let (_, page) = daemon.get(&http, "/api/v1/repositories?search=apps/&limit=1").await;
    assert_eq!(page["repositories"][0]["path"], "apps/locked", "{page}");
    assert_eq!(page["next"], "apps/locked", "{page}");
    let (_, page) = daemon.get(&http, "/api/v1/repositories?search=apps/&limit=1&after=apps/locked").await;
    assert_eq!(page["repositories"][0]["path"], "apps/web", "{page}");

    // Bad requests: a JSON error saying what was wrong.
    for (path, needle) in [
        ("/api/v1/repositories?limit=0", "limit 0"),
        ("/api/v1/repositories?status=broken", "unknown status `broken`"),
        ("/api/v1/repositories?colour=red", "colour"),
        ("/api/v1/audit?since=yesterday", "RFC 3339"),
        ("/api/v1/audit?digest=sha256:xyz", "digest"),
    ] {
        let (status, v) = daemon.get(&http, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{path}: {v}");
    }
    let (status, v) = daemon.get(&http, "/api/v1/nothing-here").await;
    assert_eq!((status, &v["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_found")), "{v}");
    let (status, v) = daemon.get(&http, "/api/v1/repositories/apps/unknown").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    // Actions need the token; refused ones change nothing.
    proxy.clear();
    let retry = json!({"repository": "apps/locked"});
    for token in [None, Some("wrong-token-0123456789abcdef"), Some("")] {
        let (status, v) = daemon.post(&http, "/api/v1/actions/retry", token, retry.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("Authorization: Bearer"), "{v}");
    }
    let (_, still) = daemon.get(&http, "/api/v1/repositories/apps/locked").await;
    assert_eq!(still["repository"]["status"], "cleanup_failed", "{still}");
    for (body, status, needle) in [
        (json!({"repo": "apps/locked"}), StatusCode::BAD_REQUEST, "repo"),
        (json!({"repository": "Apps/Locked"}), StatusCode::BAD_REQUEST, "not a valid repository name"),
        (json!({"repository": "apps/unknown"}), StatusCode::NOT_FOUND, "not in the state"),
    ] {
        let (got, v) = daemon.post(&http, "/api/v1/actions/retry", Some(TOKEN), body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{body}: {v}");
    }

    // Retry with the token: back in the queue at once, then cleaned by the daemon.
    let (status, v) = daemon.post(&http, "/api/v1/actions/retry", Some(TOKEN), retry).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["repository"]["status"], "cleanup_unfinished", "{v}");
    assert_eq!(v["repository"]["next_attempt_at"], Value::Null, "{v}");
    daemon
        .wait_for(&http, "/api/v1/repositories/apps/locked", "apps/locked cleaned after the retry", |v| {
            v["repository"]["status"] == "cleanup_unscheduled"
        })
        .await;
    assert_eq!(seed.resolve("apps/locked", "old").await.unwrap(), None);

    // The audit search finds the deleted tag, by tag and by digest, a page at a time.
    let (_, found) = daemon.get(&http, "/api/v1/audit?repository=apps/web&tag=old").await;
    let entries = found["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{found:#}");
    assert_eq!((&entries[0]["digest"], &entries[0]["outcome"]), (&json!(web_before["old"]), &json!("deleted")), "{found:#}");
    let (_, by_digest) = daemon.get(&http, &format!("/api/v1/audit?digest={}", web_before["old"])).await;
    assert_eq!(by_digest["entries"].as_array().unwrap().len(), 1, "{by_digest:#}");
    let (_, first) = daemon.get(&http, "/api/v1/audit?limit=1").await;
    let next = first["next"].as_i64().expect("a next page");
    let (_, second) = daemon.get(&http, &format!("/api/v1/audit?limit=1&before={next}")).await;
    assert!(second["entries"][0]["id"].as_i64().unwrap() < next, "{second:#}");

    // Restore through the API: the original digest, and the restore is in the audit log.
    let (status, v) = daemon.post(&http, "/api/v1/actions/restore", None, json!({"repository": "apps/web", "tag": "old"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let (status, v) = daemon.post(&http, "/api/v1/actions/restore", Some(TOKEN), json!({"repository": "apps/web", "tag": "old"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["restored"]["digest"], web_before["old"], "{v}");
    assert_eq!(snapshot(&seed, "apps/web").await, web_before);
    let (status, v) = daemon.post(&http, "/api/v1/actions/restore", Some(TOKEN), json!({"repository": "apps/web", "tag": "never"})).await;
    assert_eq!((status, &v["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_deleted")), "{v}");
    let (_, restored) = daemon.get(&http, "/api/v1/audit?repository=apps/web&tag=old").await;
    assert_eq!(restored["entries"][0]["operation"], "restore_tag", "{restored:#}");
    assert_eq!(restored["entries"][0]["outcome"], "restored", "{restored:#}");
    assert_eq!(restored["entries"][0]["decided_by"], "operator via api", "{restored:#}");

    // /metrics: valid Prometheus text, the counters that matter, no tag or path in a label.
    let resp = http.get(daemon.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(value("tagwarden_passes_total", &[("outcome", "completed")]) >= 2.0, "{text}");
    assert!(value("tagwarden_passes_total", &[("outcome", "failed")]) >= 1.0, "{text}");
    assert!(value("tagwarden_tags_deleted_total", &[]) >= 2.0, "{text}");
    assert!(value("tagwarden_registry_requests_total", &[("method", "DELETE"), ("status", "403")]) >= 1.0, "{text}");
    assert!(value("tagwarden_registry_requests_total", &[("method", "DELETE"), ("status", "202")]) >= 2.0, "{text}");
    assert!(value("tagwarden_plugin_evaluations_total", &[("kind", "retention"), ("outcome", "ok")]) >= 3.0, "{text}");
    assert!(value("tagwarden_plugin_evaluations_total", &[("kind", "backoff"), ("outcome", "ok")]) >= 1.0, "{text}");
    assert!(value("tagwarden_backoff_decisions_total", &[("work", "cleanup"), ("decision", "give_up")]) >= 1.0, "{text}");
    assert_eq!(value("tagwarden_repositories", &[("status", "cleanup_unscheduled")]), 2.0, "{text}");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "tagwarden_registry_request_duration_seconds" && matches!(s.value, prometheus_parse::Value::Histogram(_))),
        "{text}"
    );
    for s in &scrape.samples {
        assert!(s.metric.starts_with("tagwarden_"), "{}", s.metric);
        for (k, v) in s.labels.iter() {
            assert!(!["old", "new"].contains(&v.as_str()) && !v.contains("apps/"), "{}: {k}={v}", s.metric);
        }
    }
    drop(daemon);
}

#[test]
fn a_daemon_listening_beyond_loopback_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9", "0.0.0.0:0", false);
    let out = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir.path())
        .args(["serve", "--until-idle", "--config", &config.display().to_string()])
        .env("TAGWARDEN_CACHE_DIR", dir.path().join("compiled"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a loopback address") && stderr.contains("api_token_env"), "{stderr}");
    // A malformed address is named with the key.
    let text = std::fs::read_to_string(&config).unwrap().replace("0.0.0.0:0", "localhost");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tagwarden"))
        .current_dir(dir.path())
        .args(["serve", "--until-idle", "--config", &config.display().to_string()])
        .env("TAGWARDEN_CACHE_DIR", dir.path().join("compiled"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && stderr.contains("serve.listen") && stderr.contains("host:port"), "{stderr}");
}
