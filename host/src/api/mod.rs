//! The operator's HTTP API, `/metrics`, `/healthz` and `/readyz`, served by `tagwarden
//! serve` on `[serve] listen` (docs/operations.md has the reference).
//!
//! It reads the state store and changes it through the same [`StateStore`] methods as the
//! `repos` commands; the daemon picks changes up at its next claim (woken at once through
//! [`Api::wake`]). It never speaks to the registry itself: a restore goes through
//! [`crate::restore::restore`], the function `tagwarden restore` calls.
//!
//! Actions (`POST /api/v1/actions/…`) need `Authorization: Bearer <token>` when a token is
//! configured; reads are open on a loopback address and need the token on any other (a
//! non-loopback address without a token is refused at start). Every error is JSON,
//! `{"error": {"code", "message"}}`, and a refused request changes nothing.

pub mod json;
mod ui;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::model::{Digest, Timestamp};
use crate::registry::{RegistryClient, Secret};
use crate::restore::{RestoreErrorKind, RestoreRequest};
use crate::runtime::{PluginMeta, Tier};
use crate::setup::{PolicySet, StrategyRole, StrategySet};
use crate::store::{AuditQuery, CleanupStatus, DeletionStatus, StateStore, Store};

/// Most items one page returns.
pub const MAX_PAGE: usize = 1000;
/// Items a page returns when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;

/// A plugin the daemon consults, what it is for, and where it stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedPlugin {
    /// `policy NAME`, `backoff` or `stale`.
    pub role: String,
    /// Its name in `[plugins] dir` (the file stem), when it is a file of the directory.
    pub plugin: Option<String>,
    /// `active`; for a file of the directory, its state there: `pending` (a canary holds a
    /// new version back), `failed` (the last file did not load), `quarantined`, `paused`
    /// (its file is gone: its policies pause) or `removed` (the backoff or stale plugin's file
    /// is gone; the version in service keeps deciding).
    pub state: String,
    /// Why it is not active, or what the last failed attempt said.
    pub reason: Option<String>,
    /// The version in service; absent when none serves (its policy pauses).
    #[serde(flatten)]
    pub meta: Option<PluginMeta>,
    /// The code the version in service runs now: `baseline` until the background compile of
    /// its optimized code is done (`loaded_tier` says what it was loaded with).
    pub tier: Option<Tier>,
}

/// Where the API finds the plugins in force, which the plugin directory swaps.
pub struct PluginsInForce {
    pub policies: Arc<PolicySet>,
    pub strategies: Arc<StrategySet>,
    /// The backoff and stale plugins that are files of `[plugins] dir`: their file stems.
    pub strategy_files: Vec<(StrategyRole, String)>,
}

/// What the API serves from.
pub struct Api {
    /// The local SQLite file: runs, the audit log (and, without `[state] url`, the state).
    pub store: Store,
    /// The cleanup state: repositories, deletions, leases (PostgreSQL with `[state] url`).
    pub state: Arc<dyn StateStore>,
    /// The registry client restores go through (`None` with a recordings backend).
    pub registry: Option<RegistryClient>,
    pub plugins: PluginsInForce,
    /// The bearer token actions (and, off loopback, reads) need.
    pub token: Option<Secret>,
    /// Whether reads need the token too (the address is not loopback).
    pub reads_need_token: bool,
    /// Notified after an action, so the daemon looks at the state at once.
    pub wake: Arc<Notify>,
}

impl Api {
    /// Checks the address against the token: off loopback, a token is required.
    pub fn new(
        store: Store,
        state: Arc<dyn StateStore>,
        registry: Option<RegistryClient>,
        plugins: PluginsInForce,
        token: Option<Secret>,
        listen: SocketAddr,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Api> {
        let loopback = listen.ip().is_loopback();
        if !loopback && token.is_none() {
            anyhow::bail!(
                "`serve.listen` is {listen}, not a loopback address: set `serve.api_token_env` or `serve.api_token_file` so that \
                 only holders of the token can read the state or act on it"
            );
        }
        Ok(Api { store, state, registry, plugins, token, reads_need_token: !loopback, wake })
    }
}

/// The routes, over `api`.
pub fn router(api: Arc<Api>) -> Router {
    let actions = Router::new()
        .route("/api/v1/actions/retry", post(retry))
        .route("/api/v1/actions/cleanup-now", post(cleanup_now))
        .route("/api/v1/actions/delete-repository", post(delete_repository))
        .route("/api/v1/actions/restore", post(restore))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token));
    let reads = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/repositories", get(repositories))
        .route("/api/v1/repositories/{*path}", get(repository))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/plugins", get(plugins))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token_for_reads));
    // The status page: reads open like the API's; its actions check the token themselves
    // (a browser form cannot send a bearer header).
    let pages = Router::new()
        .route("/", get(ui::overview))
        .route("/repositories", get(ui::repositories))
        .route("/repositories/{*path}", get(ui::repository))
        .route("/audit", get(ui::audit))
        .route("/plugins", get(ui::plugins))
        .route("/actions/{action}", get(ui::confirm).post(ui::act))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token_for_reads));
    Router::new()
        .merge(pages)
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(actions)
        .merge(reads)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint (see docs/operations.md)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
        })
        .with_state(api)
}

/// Serves `router(api)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api)).with_graceful_shutdown(shutdown).await
}

// ---------------------------------------------------------------------------------------------
// Errors and extractors

/// A JSON error: what was wrong, with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!("API: {e:#}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{e:#}"))
    }
}

/// `Json` whose rejections are [`ApiError`]s.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::bad_request(json_rejection(e))),
        }
    }
}

fn json_rejection(e: JsonRejection) -> String {
    match e {
        JsonRejection::MissingJsonContentType(_) => "send the body as JSON (Content-Type: application/json)".to_owned(),
        other => format!("the body is not what this action takes: {}", other.body_text()),
    }
}

/// `Query` whose rejections are [`ApiError`]s.
struct QueryParams<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(QueryParams(v)),
            Err(e) => Err(ApiError::bad_request(query_rejection(e))),
        }
    }
}

fn query_rejection(e: QueryRejection) -> String {
    format!("bad query parameters: {}", e.body_text())
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit {n}: expected 1 to {MAX_PAGE}"))),
    }
}

fn time_param(name: &str, value: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|v| {
            Timestamp::parse_rfc3339(v)
                .map_err(|_| ApiError::bad_request(format!("{name} `{v}`: expected an RFC 3339 time such as 2026-12-01T00:00:00Z")))
        })
        .transpose()
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// Whether `headers` carry the configured token (or none is configured). Both sides are
/// hashed first, so the comparison takes the same time whatever the length or content.
fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    if api.token.is_none() {
        return true;
    }
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| authorized_token(api, g))
}

/// Whether `given` is the configured token (or none is configured).
fn authorized_token(api: &Api, given: &str) -> bool {
    let Some(token) = &api.token else { return true };
    let (a, b) = (Digest::sha256_of(given.trim().as_bytes()), Digest::sha256_of(token.expose().as_bytes()));
    a.as_str().as_bytes().ct_eq(b.as_str().as_bytes()).into()
}

fn unauthorized() -> Response {
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this needs the API token: send `Authorization: Bearer <token>` (serve.api_token_env / api_token_file)",
    )
    .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

async fn require_token(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    if authorized(&api, req.headers()) { next.run(req).await } else { unauthorized() }
}

async fn require_token_for_reads(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    if !api.reads_need_token || authorized(&api, req.headers()) { next.run(req).await } else { unauthorized() }
}

// ---------------------------------------------------------------------------------------------
// Reads

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    // Both: the local file (runs, audit log) and the cleanup state (PostgreSQL with `[state] url`).
    let store = api.store.ping().and_then(|()| api.state.ping());
    let loaded = loaded_plugins(&api).map(|p| p.iter().filter(|p| p.meta.is_some()).count()).unwrap_or(0);
    let ready = store.is_ok() && loaded > 0;
    let body = json!({
        "ready": ready,
        "state_store": store.as_ref().map_or_else(|e| format!("{e:#}"), |_| "ok".to_owned()),
        "plugins_loaded": loaded,
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// The plugins in force now, by role, each with its state in the plugin directory (the
/// `plugins` table) when it is a file of it.
pub(crate) fn loaded_plugins(api: &Api) -> anyhow::Result<Vec<LoadedPlugin>> {
    let rows = api.store.plugin_table().list()?;
    let state_of = |file: Option<&str>, paused: Option<&str>| match file.and_then(|f| rows.iter().find(|r| r.name == f)) {
        Some(r) => (r.state.as_str().to_owned(), r.reason.clone()),
        None => match paused {
            Some(why) => ("paused".to_owned(), Some(why.to_owned())),
            None => ("active".to_owned(), None),
        },
    };
    let mut out = Vec::new();
    for p in api.plugins.policies.current().iter() {
        let (state, reason) = state_of(p.watched_plugin.as_deref(), p.policy.paused_because());
        out.push(LoadedPlugin {
            role: format!("policy {}", p.policy.name),
            plugin: p.watched_plugin.clone(),
            state,
            reason,
            meta: p.policy.retention().map(|r| r.plugin().plugin().meta().clone()),
            tier: p.policy.retention().map(|r| r.plugin().plugin().tier()),
        });
    }
    let strategies = api.plugins.strategies.current();
    let backoff = strategies.backoff.as_ref().map(|(b, _)| b.plugin());
    let stale = strategies.stale.as_ref().map(|(s, _)| s.plugin());
    for (role, plugin) in [(StrategyRole::Backoff, backoff), (StrategyRole::Stale, stale)] {
        let (meta, tier) = (plugin.map(|p| p.meta().clone()), plugin.map(|p| p.tier()));
        let file = api.plugins.strategy_files.iter().find(|(r, _)| *r == role).map(|(_, f)| f.clone());
        if meta.is_none() && file.is_none() {
            continue; // No backoff plugin: the host's default schedule.
        }
        let (state, reason) = state_of(file.as_deref(), None);
        out.push(LoadedPlugin { role: role.as_str().to_owned(), plugin: file, state, reason, meta, tier });
    }
    Ok(out)
}

fn plugin_roles(plugins: &[LoadedPlugin]) -> BTreeMap<String, String> {
    plugins
        .iter()
        .map(|p| {
            let shown = match &p.meta {
                Some(m) => format!("{} {}", m.name, m.version),
                None => "(none in service)".to_owned(),
            };
            let shown = if p.state == "active" { shown } else { format!("{shown} ({})", p.state) };
            (p.role.clone(), shown)
        })
        .collect()
}

async fn status(State(api): State<Arc<Api>>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(json::overview(&api.store, &*api.state)?.to_json(&plugin_roles(&loaded_plugins(&api)?))))
}

/// The plugins in force by role, and every plugin of `[plugins] dir` with its latest canary.
async fn plugins(State(api): State<Arc<Api>>) -> Result<axum::Json<Value>, ApiError> {
    let table = api.store.plugin_table();
    let mut directory = Vec::new();
    for row in table.list()? {
        let canary = table.latest_canary(&row.name, None)?;
        directory.push(json::directory_plugin(&row, canary.as_ref()));
    }
    Ok(axum::Json(json!({ "plugins": loaded_plugins(&api)?, "directory": directory })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoriesQuery {
    status: Option<String>,
    search: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn repositories(State(api): State<Arc<Api>>, QueryParams(q): QueryParams<RepositoriesQuery>) -> Result<axum::Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let store = &api.state;
    let (cleanup, deletion) = match q.status.as_deref() {
        None => (None, None),
        Some(s) => match (CleanupStatus::parse(s), DeletionStatus::parse(s)) {
            (Ok(c), _) => (Some(c), None),
            (_, Ok(d)) => (None, Some(d)),
            _ => {
                let known: Vec<&str> =
                    CleanupStatus::ALL.iter().map(|s| s.as_str()).chain(DeletionStatus::ALL.iter().map(|s| s.as_str())).collect();
                return Err(ApiError::bad_request(format!("unknown status `{s}`; expected one of {}", known.join(", "))));
            }
        },
    };
    let paths: Vec<String> = match deletion {
        // Deletions are few (an operator asks for each): filtered here.
        Some(d) => store
            .deletions(Some(d))?
            .into_iter()
            .map(|d| d.path)
            .filter(|p| q.search.as_deref().is_none_or(|s| p.contains(s)) && q.after.as_deref().is_none_or(|a| p.as_str() > a))
            .take(limit)
            .collect(),
        None => store.repository_paths(cleanup, q.search.as_deref(), q.after.as_deref(), limit)?,
    };
    let mut items = Vec::with_capacity(paths.len());
    for path in &paths {
        let mut v = store.repository(path)?.as_ref().map_or_else(|| json!({"path": path}), json::repository_json);
        v["deletion"] = store.deletion(path)?.as_ref().map_or(Value::Null, json::deletion_json);
        items.push(v);
    }
    let next = if paths.len() == limit { paths.last().cloned() } else { None };
    Ok(axum::Json(json!({"repositories": items, "next": next})))
}

async fn repository(State(api): State<Arc<Api>>, Path(path): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let (repository, deletion) = (api.state.repository(&path)?, api.state.deletion(&path)?);
    if repository.is_none() && deletion.is_none() {
        return Err(ApiError::not_found(format!(
            "{path}: not in the state (no policy's `repositories` patterns matched it at the last catalog sync)"
        )));
    }
    let runs = api.store.runs().recent(Some(&path), 20)?;
    let audit = api.store.audit_log().recent(Some(&path), 50)?;
    Ok(axum::Json(json!({
        "repository": repository.as_ref().map(json::repository_json),
        "deletion": deletion.as_ref().map(json::deletion_json),
        "runs": runs.iter().map(json::run_json).collect::<Vec<_>>(),
        "audit": audit.iter().map(json::audit_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    repository: Option<String>,
    limit: Option<usize>,
}

async fn runs(State(api): State<Arc<Api>>, QueryParams(q): QueryParams<RunsQuery>) -> Result<axum::Json<Value>, ApiError> {
    let runs = api.store.runs().recent(q.repository.as_deref(), page_limit(q.limit)?)?;
    Ok(axum::Json(json!({"runs": runs.iter().map(json::run_json).collect::<Vec<_>>()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// The `next` of the previous page.
    before: Option<i64>,
    limit: Option<usize>,
}

async fn audit(State(api): State<Arc<Api>>, QueryParams(q): QueryParams<AuditParams>) -> Result<axum::Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(d) = &q.digest {
        Digest::parse(d).map_err(|e| ApiError::bad_request(format!("digest: {e:#}")))?;
    }
    let rows = api.store.audit_log().search(&AuditQuery {
        repository: q.repository.as_deref(),
        tag: q.tag.as_deref(),
        digest: q.digest.as_deref(),
        since: time_param("since", q.since.as_deref())?,
        until: time_param("until", q.until.as_deref())?,
        before_id: q.before,
        limit,
    })?;
    let next = if rows.len() == limit { rows.last().map(|r| r.id) } else { None };
    Ok(axum::Json(json!({"entries": rows.iter().map(json::audit_json).collect::<Vec<_>>(), "next": next})))
}

async fn metrics(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let o = json::overview(&api.store, &*api.state)?;
    let repositories: Vec<(&'static str, usize)> = o.repositories.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    let deletions: Vec<(&'static str, usize)> = o.deletions.iter().map(|(s, n)| (*s, *n)).collect();
    crate::metrics::get().set_queue(&repositories, &deletions, o.workers_busy);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::encode()).into_response())
}

// ---------------------------------------------------------------------------------------------
// Actions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryAction {
    repository: String,
}

fn known_repository(api: &Api, path: &str) -> Result<(), ApiError> {
    crate::registry::validate_repository_name(path).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    if api.state.repository(path)?.is_none() && api.state.deletion(path)?.is_none() {
        return Err(ApiError::not_found(format!("{path}: not in the state")));
    }
    Ok(())
}

/// The repository's state right after an action (read before the daemon is woken, so the
/// answer shows what the action did, not how far the daemon got since).
fn after_action(api: &Api, path: &str, done: &str) -> Result<axum::Json<Value>, ApiError> {
    let repository = api.state.repository(path)?;
    let deletion = api.state.deletion(path)?;
    api.wake.notify_one();
    Ok(axum::Json(json!({
        "done": done,
        "repository": repository.as_ref().map(json::repository_json),
        "deletion": deletion.as_ref().map(json::deletion_json),
    })))
}

fn busy(path: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "busy", format!("{path}: a pass holds it right now; try again when it ends"))
}

fn retry_action(api: &Api, path: &str) -> Result<(), ApiError> {
    known_repository(api, path)?;
    if !api.state.retry(path)? {
        return Err(busy(path));
    }
    Ok(())
}

fn cleanup_now_action(api: &Api, path: &str) -> Result<(), ApiError> {
    known_repository(api, path)?;
    if !api.state.cleanup_now(path)? {
        return Err(busy(path));
    }
    Ok(())
}

async fn retry(State(api): State<Arc<Api>>, JsonBody(a): JsonBody<RepositoryAction>) -> Result<axum::Json<Value>, ApiError> {
    retry_action(&api, &a.repository)?;
    after_action(&api, &a.repository, "retry")
}

async fn cleanup_now(State(api): State<Arc<Api>>, JsonBody(a): JsonBody<RepositoryAction>) -> Result<axum::Json<Value>, ApiError> {
    cleanup_now_action(&api, &a.repository)?;
    after_action(&api, &a.repository, "cleanup_now")
}

async fn delete_repository(State(api): State<Arc<Api>>, JsonBody(a): JsonBody<RepositoryAction>) -> Result<axum::Json<Value>, ApiError> {
    crate::registry::validate_repository_name(&a.repository).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    api.state
        .schedule_deletion(&a.repository, Timestamp::now())
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", format!("{e:#}")))?;
    after_action(&api, &a.repository, "delete_scheduled")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreAction {
    repository: String,
    tag: String,
    #[serde(rename = "as")]
    as_tag: Option<String>,
}

async fn restore(State(api): State<Arc<Api>>, JsonBody(a): JsonBody<RestoreAction>) -> Result<axum::Json<Value>, ApiError> {
    let request = RestoreRequest { repository: &a.repository, tag: &a.tag, as_tag: a.as_tag.as_deref(), by: "operator via api" };
    let restored = restore_action(&api, &request).await?;
    Ok(axum::Json(json!({"restored": restored})))
}

/// A restore through [`crate::restore::restore`], its errors as API errors.
async fn restore_action(api: &Api, request: &RestoreRequest<'_>) -> Result<crate::restore::Restored, ApiError> {
    let Some(client) = &api.registry else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_registry",
            "this daemon simulates a registry from recordings: nothing to restore",
        ));
    };
    crate::restore::restore(client, &api.store.audit_log(), request).await.map_err(|e| {
        let (status, code) = match e.kind {
            RestoreErrorKind::Invalid => (StatusCode::BAD_REQUEST, "bad_request"),
            RestoreErrorKind::NotDeleted => (StatusCode::NOT_FOUND, "not_deleted"),
            RestoreErrorKind::NotKept => (StatusCode::CONFLICT, "not_kept"),
            RestoreErrorKind::Conflict => (StatusCode::CONFLICT, "tag_exists"),
            RestoreErrorKind::Gone => (StatusCode::GONE, "blob_gone"),
            RestoreErrorKind::Registry => (StatusCode::BAD_GATEWAY, "registry"),
            RestoreErrorKind::Store => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.message)
    })
}
