//! A fault-injecting HTTP reverse proxy to put in front of a [`crate::TestRegistry`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::util::{self, Body, DropConnection};

/// A fault to inject into the proxied traffic. Counted faults (`Status`, `RateLimit`, `Reset`) are
/// answered by the proxy itself, so the faulted requests never reach the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are described in each variant's documentation
pub enum Fault {
    /// Answer `status` (e.g. 503, 500) with a small JSON errors body to the next `times` requests whose
    /// path-and-query contains `path_contains` (and whose method is `method`, when `Some`).
    Status { method: Option<String>, path_contains: String, status: u16, times: usize },
    /// Answer `429 Too Many Requests` with `Retry-After: retry_after_secs` to the next `times` matching requests.
    RateLimit { path_contains: String, retry_after_secs: u64, times: usize },
    /// Close the connection without answering the next `times` matching requests.
    Reset { path_contains: String, times: usize },
    /// Delay every matching answer by `millis` (until cleared), to test timeouts. The request
    /// reaches the registry only after the delay.
    Delay { path_contains: String, millis: u64 },
    /// Forward matching requests at once, then hold the registry's answer for `millis` (until
    /// cleared): the registry has acted, the client may have given up waiting. The ambiguous
    /// outcome of a timed-out delete.
    SlowAnswer { method: Option<String>, path_contains: String, millis: u64 },
    /// Forward the next `times` matching requests to the registry, then answer `status` instead
    /// of what it said: a fault *after* the registry acted (e.g. a 503 once an upload landed).
    StatusAfterForward { method: Option<String>, path_contains: String, status: u16, times: usize },
    /// Rewrite `GET /v2/<name>/tags/list` answers into pages of at most `page_size` tags (each page in
    /// reverse order, so clients must sort) with a relative `Link: </v2/<name>/tags/list?n=..&last=..>;
    /// rel="next"` header, as distribution 3 and GitLab do. Persistent until cleared.
    PaginateTags { page_size: usize },
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    requests: Vec<(String, String)>,
    holds: Vec<HoldRule>,
}

/// Requests to stop at the proxy until the test says what to do with them (see [`FaultProxy::hold`]).
struct HoldRule {
    method: Option<String>,
    path_contains: String,
    remaining: usize,
    held: tokio::sync::mpsc::UnboundedSender<HeldRequest>,
}

/// A request stopped at the proxy. Dropping it forwards the request.
pub struct HeldRequest {
    /// `(method, path-and-query)` of the request.
    pub request: (String, String),
    decision: tokio::sync::oneshot::Sender<Release>,
}

/// What to do with a held request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    Forward,
    Drop,
    ForwardThenDrop,
}

impl HeldRequest {
    /// Sends the request on to the registry (the default when dropped).
    pub fn forward(self) {
        let _ = self.decision.send(Release::Forward);
    }

    /// Closes the connection without forwarding: the registry never sees the request.
    pub fn drop_connection(self) {
        let _ = self.decision.send(Release::Drop);
    }

    /// Sends the request on, then closes the connection instead of answering: the registry
    /// acted, the client cannot know.
    pub fn forward_then_drop(self) {
        let _ = self.decision.send(Release::ForwardThenDrop);
    }
}

/// Receives the requests a [`FaultProxy::hold`] rule stops.
pub struct Held {
    rx: tokio::sync::mpsc::UnboundedReceiver<HeldRequest>,
}

impl Held {
    /// The next held request, or `None` after `timeout` (or when the proxy is gone).
    pub async fn next(&mut self, timeout: Duration) -> Option<HeldRequest> {
        tokio::time::timeout(timeout, self.rx.recv()).await.ok().flatten()
    }
}

/// A reverse proxy on `127.0.0.1:<free port>` that forwards every header and body unchanged (rewriting
/// absolute `Location` headers that point at the upstream), records requests and injects [`Fault`]s.
pub struct FaultProxy {
    url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

struct Shared {
    upstream: String,
    own_url: String,
    http: reqwest::Client,
    state: Arc<Mutex<State>>,
}

/// What the proxy decided to do with one request.
enum Action {
    Forward,
    Answer(Response<Body>),
    Drop,
    /// Forward, then answer this instead of the registry's answer.
    ForwardThenAnswer(Response<Body>),
    /// Wait for the test's decision: forward (`true`) or drop.
    Hold(tokio::sync::oneshot::Receiver<Release>),
}

fn method_matches(rule: &Option<String>, method: &str) -> bool {
    rule.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
}

impl FaultProxy {
    /// Starts the proxy in front of `upstream_url` (e.g. [`crate::TestRegistry::url`]).
    pub async fn start(upstream_url: &str) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("fault proxy: binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("fault proxy: building the upstream HTTP client")?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared =
            Arc::new(Shared { upstream: upstream_url.trim_end_matches('/').to_string(), own_url: url.clone(), http, state: state.clone() });
        let task = util::serve(listener, move |req| {
            let shared = shared.clone();
            async move { shared.handle(req).await }
        });
        Ok(FaultProxy { url, state, task })
    }

    /// The proxy's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Queues a fault; counted faults apply to the next matching requests, in the order queued.
    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// Removes every queued or persistent fault and hold rule.
    pub fn clear(&self) {
        let mut st = self.state.lock().unwrap();
        st.faults.clear();
        st.holds.clear();
    }

    /// Requests seen so far (faulted ones included), as `(method, path-and-query)`, in arrival order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many requests seen so far had method `method` (case-insensitive; `""` or `"*"` for any)
    /// and a path-and-query containing `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(m, p)| (method.is_empty() || method == "*" || m.eq_ignore_ascii_case(method)) && p.contains(path_contains))
            .count()
    }

    /// Stops the next `times` requests with method `method` (any when `None`) whose path-and-query
    /// contains `path_contains` before they reach the registry, and hands each to the test, which
    /// decides to forward it or drop its connection — e.g. after killing the client, or after
    /// changing the registry behind the client's back. Requests that are held see no other fault.
    pub fn hold(&self, method: Option<&str>, path_contains: &str, times: usize) -> Held {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.state.lock().unwrap().holds.push(HoldRule {
            method: method.map(str::to_owned),
            path_contains: path_contains.to_owned(),
            remaining: times,
            held: tx,
        });
        Held { rx }
    }

    /// Forgets the requests seen so far.
    pub fn reset_counts(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error_body(status: u16, code: &str, message: &str) -> Response<Body> {
    util::json_response(
        status,
        &json!({"errors": [{"code": code, "message": message, "detail": "injected by tagwarden-testbed FaultProxy"}]}),
    )
}

fn status_code(status: u16) -> &'static str {
    match status {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NAME_UNKNOWN",
        429 => "TOOMANYREQUESTS",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// Hop-by-hop headers a proxy must not forward (plus `host`, which reqwest sets for the upstream).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// `/v2/<name>/tags/list` → `Some(name)`.
fn tags_list_repo(path: &str) -> Option<&str> {
    path.strip_prefix("/v2/")?.strip_suffix("/tags/list").filter(|n| !n.is_empty())
}

impl Shared {
    /// Decides what to do with a request and takes counted faults off the queue.
    fn decide(&self, method: &str, path_and_query: &str) -> (Action, u64, u64, Option<usize>) {
        let mut st = self.state.lock().unwrap();
        st.requests.push((method.to_string(), path_and_query.to_string()));
        if let Some(rule) = st
            .holds
            .iter_mut()
            .find(|h| h.remaining > 0 && method_matches(&h.method, method) && path_and_query.contains(h.path_contains.as_str()))
        {
            rule.remaining -= 1;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let held = HeldRequest { request: (method.to_string(), path_and_query.to_string()), decision: tx };
            if rule.held.send(held).is_ok() {
                return (Action::Hold(rx), 0, 0, None);
            }
        }
        let mut slow_answer = 0;
        let mut delay = 0;
        let mut paginate = None;
        let mut action = Action::Forward;
        let mut remove = None;
        let mut decided = false;
        for (i, fault) in st.faults.iter_mut().enumerate() {
            match fault {
                Fault::Delay { path_contains, millis } if path_and_query.contains(path_contains.as_str()) => {
                    delay = delay.max(*millis);
                }
                Fault::PaginateTags { page_size } => paginate = Some((*page_size).max(1)),
                Fault::SlowAnswer { method: m, path_contains, millis }
                    if method_matches(m, method) && path_and_query.contains(path_contains.as_str()) =>
                {
                    slow_answer = slow_answer.max(*millis);
                }
                Fault::StatusAfterForward { method: m, path_contains, status, times }
                    if !decided && *times > 0 && path_and_query.contains(path_contains.as_str()) && method_matches(m, method) =>
                {
                    *times -= 1;
                    decided = true;
                    action = Action::ForwardThenAnswer(error_body(*status, status_code(*status), "injected fault after forwarding"));
                    if *times == 0 {
                        remove = Some(i);
                    }
                }
                Fault::Status { method: m, path_contains, status, times }
                    if !decided
                        && *times > 0
                        && path_and_query.contains(path_contains.as_str())
                        && m.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method)) =>
                {
                    *times -= 1;
                    decided = true;
                    let code = status_code(*status);
                    action = Action::Answer(error_body(*status, code, "injected fault"));
                    if *times == 0 {
                        remove = Some(i);
                    }
                }
                Fault::RateLimit { path_contains, retry_after_secs, times }
                    if !decided && *times > 0 && path_and_query.contains(path_contains.as_str()) =>
                {
                    *times -= 1;
                    decided = true;
                    let mut resp = error_body(429, "TOOMANYREQUESTS", "rate limit exceeded (injected)");
                    resp.headers_mut().insert("Retry-After", HeaderValue::from_str(&retry_after_secs.to_string()).expect("digits"));
                    action = Action::Answer(resp);
                    if *times == 0 {
                        remove = Some(i);
                    }
                }
                Fault::Reset { path_contains, times } if !decided && *times > 0 && path_and_query.contains(path_contains.as_str()) => {
                    *times -= 1;
                    decided = true;
                    action = Action::Drop;
                    if *times == 0 {
                        remove = Some(i);
                    }
                }
                _ => {}
            }
        }
        if let Some(i) = remove {
            st.faults.remove(i);
        }
        (action, delay, slow_answer, paginate)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, DropConnection> {
        let method = req.method().as_str().to_string();
        let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
        let (action, delay, slow_answer, paginate) = self.decide(&method, &path_and_query);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut replace_answer = None;
        match action {
            Action::Answer(resp) => return Ok(resp),
            Action::Drop => return Err(DropConnection),
            Action::Hold(decision) => {
                // Read the request now and decide in a task of its own: a client killed while
                // its request is held must not cancel the request the test chooses to forward.
                let (parts, body) = req.into_parts();
                let body = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return Err(DropConnection),
                };
                let me = self.clone();
                let task = tokio::spawn(async move {
                    // A dropped `HeldRequest` forwards.
                    let release = decision.await.unwrap_or(Release::Forward);
                    if release == Release::Drop {
                        return None;
                    }
                    let answer = me.forward_parts(parts, body, &path_and_query).await;
                    (release == Release::Forward).then_some(answer)
                });
                return match task.await {
                    Ok(Some(resp)) => {
                        Ok(resp.unwrap_or_else(|e| error_body(502, "UNKNOWN", &format!("fault proxy could not reach the upstream: {e:#}"))))
                    }
                    _ => Err(DropConnection),
                };
            }
            Action::ForwardThenAnswer(resp) => replace_answer = Some(resp),
            Action::Forward => {}
        }
        let resp = match (paginate, tags_list_repo(req.uri().path())) {
            (Some(page_size), Some(repo)) if req.method() == hyper::Method::GET => {
                let repo = repo.to_string();
                self.paginated_tags(req, &repo, page_size).await
            }
            _ => self.forward(req, &path_and_query).await,
        };
        if slow_answer > 0 {
            tokio::time::sleep(Duration::from_millis(slow_answer)).await;
        }
        if let Some(resp) = replace_answer {
            return Ok(resp);
        }
        Ok(resp.unwrap_or_else(|e| error_body(502, "UNKNOWN", &format!("fault proxy could not reach the upstream: {e:#}"))))
    }

    /// Sends the request upstream; returns status, headers and the whole body.
    async fn send_upstream(&self, req: Request<Incoming>, path_and_query: &str) -> anyhow::Result<reqwest::Response> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.context("reading the request body")?.to_bytes();
        self.send_parts(&parts, body, path_and_query).await
    }

    async fn send_parts(
        &self,
        parts: &hyper::http::request::Parts,
        body: hyper::body::Bytes,
        path_and_query: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())?;
        let mut rb = self.http.request(method, format!("{}{}", self.upstream, path_and_query));
        for (name, value) in parts.headers.iter() {
            if !is_hop_by_hop(name) && name != hyper::header::CONTENT_LENGTH {
                rb = rb.header(name.as_str(), value.as_bytes());
            }
        }
        if !body.is_empty() || parts.headers.contains_key(hyper::header::CONTENT_LENGTH) {
            rb = rb.body(body);
        }
        rb.send().await.context("forwarding to the upstream")
    }

    async fn forward(&self, req: Request<Incoming>, path_and_query: &str) -> anyhow::Result<Response<Body>> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.context("reading the request body")?.to_bytes();
        self.forward_parts(parts, body, path_and_query).await
    }

    async fn forward_parts(
        &self,
        parts: hyper::http::request::Parts,
        body: hyper::body::Bytes,
        path_and_query: &str,
    ) -> anyhow::Result<Response<Body>> {
        let is_head = parts.method == hyper::Method::HEAD;
        let upstream = self.send_parts(&parts, body, path_and_query).await?;
        let status = upstream.status().as_u16();
        let headers = upstream.headers().clone();
        let body = upstream.bytes().await.context("reading the upstream body")?;
        let mut resp = Response::builder().status(status).body(Full::new(body)).context("building the response")?;
        for (name, value) in headers.iter() {
            let name = HeaderName::from_bytes(name.as_str().as_bytes())?;
            if is_hop_by_hop(&name) || (!is_head && name == hyper::header::CONTENT_LENGTH) {
                continue;
            }
            let value = if name == hyper::header::LOCATION {
                let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                match v.strip_prefix(&self.upstream) {
                    Some(rest) => HeaderValue::from_str(&format!("{}{rest}", self.own_url))?,
                    None => HeaderValue::from_bytes(value.as_bytes())?,
                }
            } else {
                HeaderValue::from_bytes(value.as_bytes())?
            };
            resp.headers_mut().append(name, value);
        }
        Ok(resp)
    }

    /// Fetches the full tag list upstream and serves the page that `n`/`last` ask for.
    async fn paginated_tags(&self, req: Request<Incoming>, repo: &str, page_size: usize) -> anyhow::Result<Response<Body>> {
        let query = util::parse_query(req.uri().query().unwrap_or(""));
        let n = query
            .iter()
            .find(|(k, _)| k == "n")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .map_or(page_size, |n| n.min(page_size));
        let last = query.iter().find(|(k, _)| k == "last").map(|(_, v)| v.clone());
        // distribution 2.8 ignores n/last anyway; ask for everything.
        let upstream_path = format!("/v2/{repo}/tags/list");
        let upstream = self.send_upstream(req, &upstream_path).await?;
        let status = upstream.status().as_u16();
        let headers = upstream.headers().clone();
        let body = upstream.bytes().await.context("reading the upstream body")?;
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let tags = parsed.as_ref().and_then(|v| v.get("tags")).and_then(|t| t.as_array());
        let (Some(tags), 200) = (tags, status) else {
            // Errors and `"tags": null` pass through unchanged.
            let mut resp = Response::builder().status(status).body(Full::new(body)).context("building the response")?;
            for (name, value) in headers.iter() {
                let name = HeaderName::from_bytes(name.as_str().as_bytes())?;
                if !is_hop_by_hop(&name) && name != hyper::header::CONTENT_LENGTH {
                    resp.headers_mut().append(name, HeaderValue::from_bytes(value.as_bytes())?);
                }
            }
            return Ok(resp);
        };
        let mut all: Vec<String> = tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect();
        all.sort();
        let rest: Vec<String> = match &last {
            Some(last) => all.into_iter().filter(|t| t > last).collect(),
            None => all,
        };
        let more = rest.len() > n;
        let mut page: Vec<String> = rest.into_iter().take(n).collect();
        let next_last = page.last().cloned();
        page.reverse();
        let mut resp = util::json_response(200, &json!({"name": repo, "tags": page}));
        if let (true, Some(next_last)) = (more, next_last) {
            let link = format!("</v2/{repo}/tags/list?n={n}&last={}>; rel=\"next\"", util::percent_encode(&next_last));
            resp.headers_mut().insert("Link", HeaderValue::from_str(&link)?);
        }
        for name in ["docker-distribution-api-version"] {
            if let Some(v) = headers.get(name) {
                resp.headers_mut().insert(name, HeaderValue::from_bytes(v.as_bytes())?);
            }
        }
        Ok(resp)
    }
}
