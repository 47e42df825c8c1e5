//! The status page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `cargo xtask setup`) driven over the W3C WebDriver protocol,
//! against `tagwarden serve` with a REAL registry. The failed repository shows its reason;
//! retry (confirmed, with the token) puts it back in the queue and the daemon cleans it; the
//! audit search finds a deleted tag and restore brings it back with its digest. A screenshot
//! of every page is kept under `<target>/browser-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tagwarden_testbed::{Fault, FaultProxy};

use crate::api::{TOKEN, ago, start, write_config};
use crate::pass::{days, registry, snapshot};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session on a chromedriver this test started; both end when dropped.
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    driver_url: String,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    async fn start() -> Browser {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: `cargo xtask setup` (or `cargo xtask test`) installs Debian's {package}"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let shots = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| crate::support::workspace().join("target"), PathBuf::from)
            .join("browser-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let mut b =
            Browser { http: reqwest::Client::new(), session: String::new(), driver, driver_url: format!("http://127.0.0.1:{port}"), shots };
        let deadline = Instant::now() + Duration::from_secs(30);
        while b.http.get(format!("{}/status", b.driver_url)).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            // --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }}}});
        let v = b.raw("POST", "/session", Some(caps)).await;
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_owned();
        // A form post's click can return before the next page is there: finds wait for it.
        b.cmd("POST", "/timeouts", Some(json!({"implicit": 10_000}))).await;
        b
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.driver_url);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.raw(method, &format!("/session/{}{path}", self.session), body).await
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v[ELEMENT].as_str().unwrap().to_owned()
    }

    /// Clicks a link or button that loads another page, and waits until that page is there
    /// (a mark left on the old page's window is gone and the new one has loaded).
    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.script("window.__twOld = true").await;
        self.cmd("POST", &format!("/element/{el}/click"), None).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.script("return window.__twOld === undefined && document.readyState === 'complete'").await != json!(true) {
            assert!(Instant::now() < deadline, "clicking {css} loaded no page within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn script(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/clear"), None).await;
        self.cmd("POST", &format!("/element/{el}/value"), Some(json!({"text": text}))).await;
    }

    /// The element's visible text, whitespace runs (cell and line breaks) as one space.
    async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        let text = self.cmd("GET", &format!("/element/{el}/text"), None).await;
        text.as_str().unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
    }

    async fn title(&self) -> String {
        self.cmd("GET", "/title", None).await.as_str().unwrap().to_owned()
    }

    async fn window(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    /// Scrolls the element `css` to the top and saves a PNG of the viewport as `<name>.png`.
    async fn screenshot_of(&self, css: &str, name: &str) {
        let script = json!({"script": "document.querySelector(arguments[0]).scrollIntoView()", "args": [css]});
        self.cmd("POST", "/execute/sync", Some(script)).await;
        self.screenshot(name).await;
    }

    /// Saves a PNG of the viewport as `<name>.png`.
    async fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }
}

/// Standard base64 (WebDriver's screenshot encoding), without pulling in a crate for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | (u32::from(value(*c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_failure_retries_it_and_restores_a_tag_found_in_the_audit_log() {
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
    daemon
        .wait_for(&http, "/api/v1/repositories/apps/locked", "apps/locked failed", |v| v["repository"]["status"] == "cleanup_failed")
        .await;
    daemon
        .wait_for(&http, "/api/v1/repositories/apps/web", "apps/web cleaned", |v| v["repository"]["status"] == "cleanup_unscheduled")
        .await;

    let b = Browser::start().await;
    let base = daemon.url("");
    b.goto(&format!("{base}/")).await;
    assert_eq!(b.title().await, "Overview · tagwarden");
    let overview = b.text("main").await;
    assert!(overview.contains("cleanup_failed 1") && overview.contains("unauthorized 1"), "{overview}");
    b.screenshot("overview").await;
    // The chart: one day with a deletion and one with a failure, drawn as bars with titles.
    let chart = b.text("figure").await;
    assert!(chart.contains("tags deleted (max 1)") && chart.contains("failed passes (max 1)"), "{chart}");
    b.screenshot_of("figure", "overview-chart").await;
    let html = http.get(daemon.url("/")).send().await.unwrap().text().await.unwrap();
    std::fs::write(b.shots.join("overview.html"), html).unwrap();

    // The failed repository, from the filtered list, shows its reason.
    b.goto(&format!("{base}/repositories?status=cleanup_failed")).await;
    b.screenshot("repositories-failed").await;
    b.click("a[href='/repositories/apps/locked']").await;
    assert_eq!(b.text("#status").await, "cleanup_failed");
    let reason = b.text("#last-failure").await;
    assert!(reason.contains("unauthorized 403") && reason.contains("DENIED"), "{reason}");
    b.screenshot("repository-failed").await;

    // Retry: a confirmation page asks for the token; a wrong one does nothing.
    proxy.clear();
    b.click("a[href^='/actions/retry']").await;
    b.screenshot("confirm-retry").await;
    b.type_into("#token", "not-the-token-0123456789").await;
    b.click("button[type=submit]").await;
    assert!(b.text("#result").await.contains("token is missing or wrong"));
    b.screenshot("retry-refused").await;
    let (_, v) = daemon.get(&http, "/api/v1/repositories/apps/locked").await;
    assert_eq!(v["repository"]["status"], "cleanup_failed", "a refused action changes nothing: {v}");
    b.goto(&format!("{base}/actions/retry?repository=apps/locked")).await;
    b.type_into("#token", TOKEN).await;
    b.click("button[type=submit]").await;
    assert!(b.text("#result").await.contains("back in the queue"));
    b.screenshot("retry-done").await;
    daemon
        .wait_for(&http, "/api/v1/repositories/apps/locked", "apps/locked cleaned after the retry", |v| {
            v["repository"]["status"] == "cleanup_unscheduled"
        })
        .await;
    assert_eq!(seed.resolve("apps/locked", "old").await.unwrap(), None);

    // The audit search finds the deleted tag; restore brings it back.
    b.goto(&format!("{base}/audit")).await;
    b.type_into("#repository", "apps/web").await;
    b.type_into("#tag", "old").await;
    b.click("form.filters button").await;
    let found = b.text("main table").await;
    assert!(found.contains("delete_manifest") && found.contains("deleted") && found.contains("old"), "{found}");
    b.screenshot("audit-search").await;
    b.click("a[aria-label='Restore apps/web:old']").await;
    b.screenshot("confirm-restore").await;
    b.type_into("#token", TOKEN).await;
    b.click("button[type=submit]").await;
    let result = b.text("#result").await;
    assert!(result.contains("apps/web:old restored") && result.contains(&web_before["old"]), "{result}");
    b.screenshot("restore-done").await;
    assert_eq!(snapshot(&seed, "apps/web").await, web_before, "the tag is back with its digest");

    b.goto(&format!("{base}/repositories/apps/web")).await;
    let page = b.text("main").await;
    assert!(page.contains("restore_tag") && page.contains("restored") && page.contains("operator via status page"), "{page}");
    b.screenshot("repository-restored").await;
    b.goto(&format!("{base}/plugins")).await;
    assert!(b.text("main table").await.contains("gitlab-retention"));
    b.screenshot("plugins").await;

    // A phone's width: the same pages, tables scroll inside their box.
    b.window(390, 844).await;
    for (page, name) in [("/", "overview-phone"), ("/repositories/apps/locked", "repository-phone")] {
        b.goto(&format!("{base}{page}")).await;
        b.screenshot(name).await;
    }
    let overflow = b
        .cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return document.documentElement.scrollWidth - window.innerWidth", "args": []})),
        )
        .await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page is wider than a phone: {overflow}");
    b.cmd("DELETE", "", None).await;
}
