//! The status page: server-rendered HTML (askama templates in `host/templates/`, escaped by
//! default), served by the daemon beside the API. Every page reads without JavaScript; an
//! action (retry, clean up now, restore) is a confirmation page whose form posts back here,
//! carrying the API token when one is configured, and runs the same code as the API's
//! action. Nothing is loaded from elsewhere: the stylesheet is inline and the chart is SVG.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::{Api, ApiError, authorized_token, page_limit};
use crate::model::{Digest, Timestamp};
use crate::restore::RestoreRequest;
use crate::store::{AuditQuery, AuditRecord, CleanupStatus, DeletionStatus};

/// Days the overview's chart covers.
const CHART_DAYS: i64 = 14;

fn render(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => ApiError::from(anyhow::anyhow!("rendering the page: {e}")).into_response(),
    }
}

fn time(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "–".to_owned(), |t| t.to_rfc3339())
}

fn failure_text(f: Option<&crate::store::LastFailure>) -> String {
    f.map(|f| {
        let status = f.http_status.map(|s| format!(" {s}")).unwrap_or_default();
        format!("{}{status}: {}", f.class, f.reason)
    })
    .unwrap_or_else(|| "–".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Overview

struct StatusRow {
    status: &'static str,
    count: usize,
    alarming: bool,
}

struct Bar {
    x: usize,
    x_failed: usize,
    w: usize,
    deleted_y: usize,
    deleted_h: usize,
    failed_y: usize,
    failed_h: usize,
    deleted: u64,
    failed: u64,
    runs: u64,
    label: String,
    short: String,
    show_label: bool,
}

struct Chart {
    days: i64,
    width: usize,
    height: usize,
    max_deleted: u64,
    max_failed: u64,
    bars: Vec<Bar>,
}

struct PluginRow {
    role: String,
    /// The file stem in `[plugins] dir`, or empty.
    file: String,
    /// `active`, `pending`, `failed`, `quarantined`, `paused` or `removed`, and why.
    state: String,
    reason: String,
    name: String,
    version: String,
    kind: String,
    contract: String,
    /// `optimized`, or `baseline` while the optimized code compiles.
    code: String,
    sha256: String,
    calls: u64,
    failures: u64,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    section: &'static str,
    runs_24h: u64,
    deleted_24h: u64,
    failed_24h: u64,
    workers_busy: usize,
    statuses: Vec<StatusRow>,
    failures: Vec<(String, usize)>,
    chart: Chart,
    plugins: Vec<PluginRow>,
}

fn plugin_rows(api: &Api) -> anyhow::Result<Vec<PluginRow>> {
    Ok(super::loaded_plugins(api)?
        .into_iter()
        .map(|p| {
            let m = p.meta.as_ref();
            let (calls, failures) = m.map_or((0, 0), |m| crate::metrics::get().plugin_totals(&m.name));
            PluginRow {
                role: p.role.clone(),
                file: p.plugin.clone().unwrap_or_default(),
                state: p.state.clone(),
                reason: p.reason.clone().unwrap_or_default(),
                name: m.map_or_else(|| "(none in service)".to_owned(), |m| m.name.clone()),
                version: m.map(|m| m.version.clone()).unwrap_or_default(),
                kind: m.and_then(|m| serde_json::to_value(m.kind).ok()).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                contract: m.map(|m| m.contract_version.clone()).unwrap_or_default(),
                code: p.tier.map(|t| t.as_str().to_owned()).unwrap_or_default(),
                sha256: m.map(|m| m.sha256.clone()).unwrap_or_default(),
                calls,
                failures,
            }
        })
        .collect())
}

/// A plugin of `[plugins] dir` on the plugins page, with its latest canary.
struct DirectoryRow {
    name: String,
    state: String,
    reason: String,
    kind: String,
    declared: String,
    sha256: String,
    policies: String,
    evaluations: u64,
    failures: u64,
    /// The latest canary: outcome and extra deletions against the brake; empty when none ran.
    canary: String,
}

fn directory_rows(api: &Api) -> anyhow::Result<Vec<DirectoryRow>> {
    let table = api.store.plugin_table();
    let mut rows = Vec::new();
    for p in table.list()? {
        let canary = table.latest_canary(&p.name, None)?;
        rows.push(DirectoryRow {
            state: p.state.as_str().to_owned(),
            reason: p.reason.clone().unwrap_or_default(),
            kind: p.kind.clone().unwrap_or_default(),
            declared: match (&p.declared_name, &p.declared_version) {
                (Some(n), Some(v)) => format!("{n} {v}"),
                _ => String::new(),
            },
            sha256: p.sha256.clone().unwrap_or_default(),
            policies: p.policies.join(", "),
            evaluations: p.evaluations,
            failures: p.failures,
            canary: canary.map(|c| format!("{}: {}", c.outcome.as_str(), c.diff.against_brake(c.max_extra_fraction))).unwrap_or_default(),
            name: p.name,
        });
    }
    Ok(rows)
}

/// Two bars a day (deleted, failed), scaled separately so failures stay visible next to
/// thousands of deletions; the legend gives each scale's maximum.
fn chart(api: &Api) -> anyhow::Result<Chart> {
    let today = Timestamp::now().unix_micros().div_euclid(86_400_000_000);
    let first = today - CHART_DAYS + 1;
    let totals = api.store.runs().by_day(Timestamp::from_unix_micros(first * 86_400_000_000))?;
    let (w, gap, plot) = (14usize, 8usize, 120usize);
    let max_deleted = totals.iter().map(|t| t.tags_deleted).max().unwrap_or(0);
    let max_failed = totals.iter().map(|t| t.failed_runs).max().unwrap_or(0);
    let scale = |v: u64, max: u64| if max == 0 { 0 } else { ((v as f64 / max as f64) * plot as f64).round() as usize };
    let mut bars = Vec::new();
    for (i, day) in (first..=today).enumerate() {
        let t = totals.iter().find(|t| t.day == day);
        let (deleted, failed, runs) = t.map_or((0, 0, 0), |t| (t.tags_deleted, t.failed_runs, t.runs));
        let date = Timestamp::from_unix_micros(day * 86_400_000_000).to_rfc3339();
        let x = 4 + i * (2 * w + gap);
        let (deleted_h, failed_h) = (scale(deleted, max_deleted), scale(failed, max_failed));
        bars.push(Bar {
            x,
            x_failed: x + w,
            w,
            deleted_y: 4 + plot - deleted_h,
            deleted_h,
            failed_y: 4 + plot - failed_h,
            failed_h,
            deleted,
            failed,
            runs,
            label: date[..10].to_owned(),
            short: date[5..10].to_owned(),
            show_label: i % 2 == 0,
        });
    }
    Ok(Chart { days: CHART_DAYS, width: 8 + CHART_DAYS as usize * (2 * w + gap), height: plot + 22, max_deleted, max_failed, bars })
}

pub(super) async fn overview(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let o = super::json::overview(&api.store, &*api.state)?;
    let statuses = o
        .repositories
        .iter()
        .map(|(s, n)| StatusRow { status: s.as_str(), count: *n, alarming: *s == CleanupStatus::Failed })
        .chain(o.deletions.iter().map(|(s, n)| StatusRow { status: s, count: *n, alarming: *s == DeletionStatus::Failed.as_str() }))
        .collect();
    Ok(render(OverviewPage {
        section: "overview",
        runs_24h: o.last_24h.runs,
        deleted_24h: o.last_24h.tags_deleted,
        failed_24h: o.last_24h.failed_runs,
        workers_busy: o.workers_busy,
        statuses,
        failures: o.failing_by_class.into_iter().collect(),
        chart: chart(&api)?,
        plugins: plugin_rows(&api)?,
    }))
}

#[derive(Template)]
#[template(path = "plugins.html")]
struct PluginsPage {
    section: &'static str,
    plugins: Vec<PluginRow>,
    directory: Vec<DirectoryRow>,
}

pub(super) async fn plugins(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    Ok(render(PluginsPage { section: "plugins", plugins: plugin_rows(&api)?, directory: directory_rows(&api)? }))
}

// ---------------------------------------------------------------------------------------------
// Repositories

struct RepositoryRow {
    path: String,
    policy: String,
    status: String,
    failed: bool,
    next_attempt: String,
    failures: u32,
    last_failure: String,
}

#[derive(Template)]
#[template(path = "repositories.html")]
struct RepositoriesPage {
    section: &'static str,
    status_options: Vec<&'static str>,
    status: String,
    search: String,
    rows: Vec<RepositoryRow>,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RepositoriesForm {
    #[serde(default)]
    status: String,
    #[serde(default)]
    search: String,
    after: Option<String>,
}

pub(super) async fn repositories(State(api): State<Arc<Api>>, Query(q): Query<RepositoriesForm>) -> Result<Response, ApiError> {
    let limit = page_limit(None)?;
    let status = match q.status.as_str() {
        "" => None,
        s => Some(CleanupStatus::parse(s).map_err(|_| ApiError::bad_request(format!("unknown cleanup status `{s}`")))?),
    };
    let search = Some(q.search.as_str()).filter(|s| !s.is_empty());
    let paths = api.state.repository_paths(status, search, q.after.as_deref(), limit)?;
    let mut rows = Vec::new();
    for path in &paths {
        if let Some(r) = api.state.repository(path)? {
            rows.push(RepositoryRow {
                path: r.path.clone(),
                policy: r.policy.clone(),
                status: r.status.as_str().to_owned(),
                failed: r.status == CleanupStatus::Failed,
                next_attempt: time(r.next_attempt_at),
                failures: r.consecutive_failures,
                last_failure: failure_text(r.last_failure.as_ref()),
            });
        }
    }
    let next = if paths.len() == limit { paths.last().cloned() } else { None };
    Ok(render(RepositoriesPage {
        section: "repositories",
        status_options: CleanupStatus::ALL.iter().map(|s| s.as_str()).collect(),
        status: q.status,
        search: q.search,
        rows,
        next,
    }))
}

struct RunRow {
    started: String,
    status: String,
    seen: u64,
    to_delete: u64,
    deleted: String,
    failed: String,
    duration: String,
    detail: String,
}

struct AuditRow {
    at: String,
    repository: String,
    operation: String,
    tags: String,
    digest: String,
    short_digest: String,
    outcome: String,
    decided_by: String,
    /// Tags this row deleted, each with a restore link.
    restorable: Vec<String>,
}

fn audit_rows(rows: &[AuditRecord]) -> Vec<AuditRow> {
    rows.iter()
        .map(|r| AuditRow {
            at: r.at.to_rfc3339(),
            repository: r.repository.clone(),
            operation: r.operation.clone(),
            tags: if r.tags.is_empty() { "(untagged)".into() } else { r.tags.join(", ") },
            digest: r.digest.clone(),
            short_digest: r.digest.chars().take(19).collect(),
            outcome: r.outcome.clone(),
            decided_by: r.decided_by.clone(),
            restorable: if r.operation != "restore_tag" && matches!(r.outcome.as_str(), "deleted" | "already_gone") {
                r.tags.clone()
            } else {
                vec![]
            },
        })
        .collect()
}

#[derive(Template)]
#[template(path = "repository.html")]
struct RepositoryPage {
    section: &'static str,
    path: String,
    policy: String,
    status: String,
    failed: bool,
    last_failure: String,
    failures: u32,
    next_attempt: String,
    completed: String,
    deletion: String,
    runs: Vec<RunRow>,
    entries: Vec<AuditRow>,
}

pub(super) async fn repository(State(api): State<Arc<Api>>, Path(path): Path<String>) -> Result<Response, ApiError> {
    let (repository, deletion) = (api.state.repository(&path)?, api.state.deletion(&path)?);
    let Some(r) = repository else {
        return Err(ApiError::not_found(format!("{path}: not in the state")));
    };
    let runs = api.store.runs().recent(Some(&path), 10)?;
    let audit = api.store.audit_log().recent(Some(&path), 50)?;
    Ok(render(RepositoryPage {
        section: "repositories",
        policy: r.policy.clone(),
        status: r.status.as_str().to_owned(),
        failed: r.status == CleanupStatus::Failed,
        last_failure: failure_text(r.last_failure.as_ref()),
        failures: r.consecutive_failures,
        next_attempt: time(r.next_attempt_at),
        completed: time(r.completed_at),
        deletion: deletion.map(|d| format!("{} ({} tags deleted)", d.status.as_str(), d.tags_deleted)).unwrap_or_default(),
        runs: runs
            .iter()
            .map(|run| RunRow {
                started: run.started_at.to_rfc3339(),
                status: run.status.clone(),
                seen: run.tags_seen,
                to_delete: run.tags_to_delete,
                deleted: run.tags_deleted.map_or("–".into(), |n| n.to_string()),
                failed: run.failed.map_or("–".into(), |n| n.to_string()),
                duration: run
                    .finished_at
                    .map_or("–".into(), |f| format!("{:.1} s", (f.unix_micros() - run.started_at.unix_micros()).max(0) as f64 / 1e6)),
                detail: run.detail.clone().unwrap_or_default(),
            })
            .collect(),
        entries: audit_rows(&audit),
        path,
    }))
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    section: &'static str,
    repository: String,
    tag: String,
    digest: String,
    error: String,
    entries: Vec<AuditRow>,
    next: Option<i64>,
}

#[derive(Deserialize, Default)]
pub(super) struct AuditForm {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    digest: String,
    before: Option<i64>,
}

pub(super) async fn audit(State(api): State<Arc<Api>>, Query(q): Query<AuditForm>) -> Result<Response, ApiError> {
    let limit = page_limit(None)?;
    let some = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let (repository, tag, digest) = (some(&q.repository), some(&q.tag), some(&q.digest));
    let mut error = String::new();
    let rows = match digest.as_deref().map(Digest::parse) {
        Some(Err(e)) => {
            error = format!("digest: {e:#}");
            vec![]
        }
        _ => api.store.audit_log().search(&AuditQuery {
            repository: repository.as_deref(),
            tag: tag.as_deref(),
            digest: digest.as_deref(),
            before_id: q.before,
            limit,
            ..AuditQuery::default()
        })?,
    };
    let next = if rows.len() == limit { rows.last().map(|r| r.id) } else { None };
    Ok(render(AuditPage {
        section: "audit",
        repository: q.repository,
        tag: q.tag,
        digest: q.digest,
        error,
        entries: audit_rows(&rows),
        next,
    }))
}

// ---------------------------------------------------------------------------------------------
// Actions: a confirmation page, then a form post.

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    section: &'static str,
    title: String,
    explanation: String,
    action: &'static str,
    repository: String,
    tag: String,
    needs_token: bool,
    button: &'static str,
    back: String,
}

#[derive(Template)]
#[template(path = "result.html")]
struct ResultPage {
    section: &'static str,
    ok: bool,
    message: String,
    back: String,
}

#[derive(Deserialize, Default)]
pub(super) struct ActionForm {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: String,
    #[serde(default, rename = "as")]
    as_tag: String,
    #[serde(default)]
    token: String,
}

fn back_to(repository: &str) -> String {
    format!("/repositories/{repository}")
}

pub(super) async fn confirm(
    State(api): State<Arc<Api>>,
    Path(action): Path<String>,
    Query(f): Query<ActionForm>,
) -> Result<Response, ApiError> {
    let r = &f.repository;
    let (action, title, explanation, button) = match action.as_str() {
        "retry" => ("retry", format!("Retry {r}?"), "Its failed cleanup (or repository deletion) goes back in the queue with no backoff, and the daemon picks it up at once.".to_owned(), "Retry"),
        "cleanup-now" => ("cleanup-now", format!("Clean up {r} now?"), "It is cleaned as soon as no scheduled work waits, whatever its policy's cadence and backoff say.".to_owned(), "Clean up now"),
        "restore" => ("restore", format!("Restore {r}:{}?", f.tag), "The manifest the registry served before the deletion is pushed back under the tag (or the tag you give), with the same digest. The policy that deleted it will delete it again at its next pass unless it keeps it.".to_owned(), "Restore"),
        other => return Err(ApiError::not_found(format!("no action `{other}`"))),
    };
    Ok(render(ConfirmPage {
        section: "repositories",
        title,
        explanation,
        action,
        repository: f.repository.clone(),
        tag: f.tag.clone(),
        needs_token: api.token.is_some(),
        button,
        back: back_to(r),
    }))
}

pub(super) async fn act(State(api): State<Arc<Api>>, Path(action): Path<String>, Form(f): Form<ActionForm>) -> Response {
    let back = back_to(&f.repository);
    let result = if !authorized_token(&api, &f.token) {
        Err("the API token is missing or wrong: nothing was done".to_owned())
    } else {
        match action.as_str() {
            "retry" => super::retry_action(&api, &f.repository).map(|()| format!("{}: back in the queue, no backoff.", f.repository)),
            "cleanup-now" => super::cleanup_now_action(&api, &f.repository)
                .map(|()| format!("{}: cleaned as soon as no scheduled work waits.", f.repository)),
            "restore" => {
                let as_tag = Some(f.as_tag.trim()).filter(|s| !s.is_empty());
                let request = RestoreRequest { repository: &f.repository, tag: &f.tag, as_tag, by: "operator via status page" };
                super::restore_action(&api, &request)
                    .await
                    .map(|r| format!("{}:{} restored: it points at {} again.", r.repository, r.tag, r.digest))
            }
            other => Err(ApiError::not_found(format!("no action `{other}`"))),
        }
        .map_err(|e| e.message)
    };
    let (ok, message) = match result {
        Ok(m) => {
            api.wake.notify_one();
            (true, m)
        }
        Err(m) => (false, m),
    };
    render(ResultPage { section: "repositories", ok, message, back })
}
