//! [`ImportServer`]: a STAND-IN for GitLab's repository import API (`/gitlab/v1/import/<path>/`).
//!
//! No registry that can run here implements this API any more (GitLab's registry fork retired it
//! once its migration was done, and it never ran outside GitLab), so the tests of tagwarden's
//! import guard talk to this small server of their own. It keeps per-repository import state and
//! answers with the codes and bodies `gitlab-cleanup-semantics.md` §5 documents:
//!
//! - `PUT ?import_type=pre|final`: 202 started, 200 already imported, 425 (pre-import running) or
//!   409 (import running), 424 final import without a finished pre-import, 429 more imports
//!   running than its capacity (with `Retry-After` when set), 404 unknown repository, 401 without
//!   the configured credentials;
//! - `GET`: `{"name", "path", "status"}`, 404 when unknown or never imported;
//! - `DELETE`: 202 when an import runs (it becomes `*_canceled`), else 400 `{"status": ...}`.
//!
//! How each repository's import progresses is chosen per repository ([`Progress`]): a started
//! step is reported in progress once, and then complete, still in progress, or failed. Faults
//! ([`ImportFault`]) replace the next matching answers, e.g. a cancel refused with 400 and a new
//! status. It also answers `GET /v2/<name>/tags/list` with the repository's tag count, for the
//! dynamic timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use base64::Engine as _;
use hyper::Response;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::util::{self, Body};

/// How a repository's import behaves once started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Progress {
    /// Each step is reported in progress once, then complete.
    #[default]
    Completes,
    /// Each step runs forever (until cancelled): the slow import the guard exists for.
    Never,
    /// Each step is reported in progress once, then failed.
    Fails,
}

/// An answer that replaces the next `times` requests with `method` whose path contains
/// `path_contains`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportFault {
    /// `PUT`, `GET` or `DELETE`.
    pub method: &'static str,
    /// A repository path, or any part of the request path.
    pub path_contains: String,
    /// The status to answer.
    pub status: u16,
    /// The JSON body to answer.
    pub body: serde_json::Value,
    /// How many matching requests it answers.
    pub times: usize,
}

#[derive(Clone, Debug)]
struct Repo {
    status: Option<String>,
    tags: usize,
    progress: Progress,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    requests: Vec<(String, String)>,
    faults: Vec<ImportFault>,
    capacity: Option<usize>,
    retry_after_secs: Option<u64>,
    credentials: Option<(String, String)>,
}

/// The stand-in import server (see the module documentation). Stops when dropped.
pub struct ImportServer {
    url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for ImportServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ImportServer {
    /// Starts a server on 127.0.0.1 with no repositories and unlimited capacity.
    pub async fn start() -> anyhow::Result<ImportServer> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("import server: binding 127.0.0.1:0")?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = util::serve(listener, move |req| {
            let state = shared.clone();
            async move {
                let method = req.method().as_str().to_owned();
                let target = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
                let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                Ok(answer(&mut state.lock().unwrap(), &method, &target, auth.as_deref()))
            }
        });
        Ok(ImportServer { url, state, task })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Adds (or replaces) a repository with `tags` tags whose imports behave as `progress`.
    pub fn add_repository(&self, path: &str, tags: usize, progress: Progress) {
        self.state.lock().unwrap().repos.insert(path.to_owned(), Repo { status: None, tags, progress });
    }

    /// Sets a repository's registry-side status (`None`: never imported), as if the registry
    /// had moved on by itself.
    pub fn set_status(&self, path: &str, status: Option<&str>) {
        if let Some(r) = self.state.lock().unwrap().repos.get_mut(path) {
            r.status = status.map(str::to_owned);
        }
    }

    /// A repository's registry-side status.
    pub fn status(&self, path: &str) -> Option<String> {
        self.state.lock().unwrap().repos.get(path).and_then(|r| r.status.clone())
    }

    /// At most `capacity` imports in progress at once; more answer 429 (with `Retry-After:
    /// retry_after_secs` when given).
    pub fn limit(&self, capacity: usize, retry_after_secs: Option<u64>) {
        let mut st = self.state.lock().unwrap();
        st.capacity = Some(capacity);
        st.retry_after_secs = retry_after_secs;
    }

    /// Requires HTTP Basic credentials; anything else answers 401.
    pub fn require_credentials(&self, user: &str, password: &str) {
        self.state.lock().unwrap().credentials = Some((user.to_owned(), password.to_owned()));
    }

    /// Queues a fault.
    pub fn inject(&self, fault: ImportFault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// Requests so far, as `(method, path-and-query)`.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

fn json_answer(status: u16, body: serde_json::Value) -> Response<Body> {
    util::json_response(status, &body)
}

fn unknown(path: &str) -> Response<Body> {
    json_answer(
        404,
        json!({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry", "detail": {"name": path}}]}),
    )
}

fn answer(st: &mut State, method: &str, target: &str, authorization: Option<&str>) -> Response<Body> {
    st.requests.push((method.to_owned(), target.to_owned()));
    if let Some((user, password)) = &st.credentials {
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        if authorization != Some(expected.as_str()) {
            let mut resp = json_answer(401, json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}));
            resp.headers_mut().insert("www-authenticate", "Basic realm=\"import-stand-in\"".parse().unwrap());
            return resp;
        }
    }
    if let Some(i) = st.faults.iter().position(|f| f.method == method && target.contains(&f.path_contains)) {
        let fault = st.faults[i].clone();
        st.faults[i].times -= 1;
        if st.faults[i].times == 0 {
            st.faults.remove(i);
        }
        return json_answer(fault.status, fault.body);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(name) = path.strip_prefix("/v2/").and_then(|p| p.strip_suffix("/tags/list")) {
        return match st.repos.get(name) {
            Some(r) => json_answer(200, json!({"name": name, "tags": (0..r.tags).map(|i| format!("t{i}")).collect::<Vec<_>>()})),
            None => unknown(name),
        };
    }
    let Some(repo_path) = path.strip_prefix("/gitlab/v1/import/").and_then(|p| p.strip_suffix('/')) else {
        return json_answer(404, json!({"errors": [{"code": "UNKNOWN", "message": "404 page not found"}]}));
    };
    let running = st.repos.values().filter(|r| r.status.as_deref().is_some_and(|s| s.ends_with("_in_progress"))).count();
    let (capacity, retry_after) = (st.capacity, st.retry_after_secs);
    let Some(repo) = st.repos.get_mut(repo_path) else { return unknown(repo_path) };
    let status = repo.status.clone();
    match method {
        "PUT" => {
            let final_import = query.contains("import_type=final");
            match status.as_deref() {
                Some("import_complete" | "native") => return json_answer(200, json!({"status": status})),
                Some("pre_import_in_progress") => return json_answer(425, json!({"status": status})),
                Some("import_in_progress") => return json_answer(409, json!({"status": status})),
                Some("pre_import_complete" | "import_failed" | "import_canceled") if final_import => {}
                _ if final_import => return json_answer(424, json!({"status": status})),
                _ => {}
            }
            if capacity.is_some_and(|c| running >= c) {
                let mut resp = json_answer(429, json!({"errors": [{"code": "TOOMANYREQUESTS", "message": "too many imports"}]}));
                if let Some(secs) = retry_after {
                    resp.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
                }
                return resp;
            }
            repo.status = Some(if final_import { "import_in_progress" } else { "pre_import_in_progress" }.to_owned());
            json_answer(202, json!({"status": repo.status}))
        }
        "GET" => {
            let Some(current) = status else { return unknown(repo_path) };
            let next = match (repo.progress, current.as_str()) {
                (Progress::Completes, "pre_import_in_progress") => "pre_import_complete",
                (Progress::Completes, "import_in_progress") => "import_complete",
                (Progress::Fails, "pre_import_in_progress") => "pre_import_failed",
                (Progress::Fails, "import_in_progress") => "import_failed",
                (_, other) => other,
            }
            .to_owned();
            repo.status = Some(next.clone());
            // What it reports is what it was: a step is seen in progress at least once.
            json_answer(200, json!({"name": repo_path.rsplit('/').next(), "path": repo_path, "status": current}))
        }
        "DELETE" => match status.as_deref() {
            Some(s @ ("pre_import_in_progress" | "import_in_progress")) => {
                repo.status = Some(s.replace("_in_progress", "_canceled"));
                json_answer(202, json!({}))
            }
            _ => json_answer(400, json!({"status": status})),
        },
        _ => json_answer(405, json!({"errors": [{"code": "UNSUPPORTED", "message": "method not allowed"}]})),
    }
}
