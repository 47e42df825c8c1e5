//! One cleanup pass over one repository: list → reconcile → evaluate → guard → re-check →
//! delete → report.
//!
//! [`plan`] is the decision half (pure apart from the plugin call) and is what `eval`
//! shows; [`run_repository`] adds listing, reconciliation and deletion and is what
//! `run --once` and the daemon call. There is no second evaluator. Layout: `plan.rs`
//! decides, `execute.rs` deletes, `dummy.rs` is GitLab's dummy-manifest method,
//! `reconcile.rs` settles what interrupted passes left.
//!
//! Safety, in order: the plugin's answer is validated by the runtime (no partial
//! answers); host protection rules override it; the delete-fraction guard may refuse
//! the whole repository; [`DeletionPlan`](crate::deletion::DeletionPlan) proves no kept
//! tag loses its digest; a re-check just before deleting drops every digest that gained a
//! tag since the listing; every deletion is written to the audit log before it is sent.
//!
//! Crash safety: at every instant of a pass, every kept tag resolves to its digest (only
//! digests without a kept tag are deleted; only tags decided `delete` are moved onto the
//! dummy), every request sent has an audit row written before it, and the run row says a
//! pass is under way. What an interruption leaves — `attempted` audit rows, tags on the
//! dummy, an open run — is recognised and settled by the next pass over the repository
//! before it decides anything, so it never sees a half-done removal as a tag.

mod dummy;
mod execute;
mod plan;
mod reconcile;

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use dummy::DIGEST as DUMMY_DIGEST;
pub use execute::RECHECK_INTERVAL;
pub use plan::{Decider, Guards, Policy, REPOSITORY_DELETION, RepositoryPlan, RuleTally, Verdict, apply_guards, plan};
pub use reconcile::Reconciliation;

use crate::backend::Backend;
use crate::model::{ErrorClass, TagList, Timestamp};
use crate::registry::RegistryError;
use crate::runtime::PluginError;
use crate::store::{AuditLog, ImportLog, NewRun, RunLog, RunPlan, RunSummary};
use execute::Execution;

/// Why a repository's pass produced no plan.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{0}")]
    Plugin(PluginError),
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Registry(RegistryError),
}

/// The default of [`DeletionLimits::keep_manifest_bytes`]: far above any image manifest or
/// index seen in practice (a few KiB), a sixteenth of distribution's own 4 MiB limit.
pub const KEEP_MANIFEST_BYTES: usize = 256 * 1024;

/// Limits of the deletion half.
#[derive(Debug, Clone)]
pub struct DeletionLimits {
    /// Budget for one repository's deletions (GitLab's delete timeout).
    pub timeout: Duration,
    /// Deletes in flight at once.
    pub concurrency: usize,
    /// At most this many tags deleted per pass (`deletion.max_list_size`).
    pub max_list_size: Option<usize>,
    /// A manifest up to this size is read and kept before it is deleted, for `tagwarden
    /// restore` (`deletion.keep_manifest_bytes`); 0 keeps none.
    pub keep_manifest_bytes: usize,
}

/// Everything a pass needs besides the policy.
pub struct PassContext {
    pub backend: Backend,
    pub audit: AuditLog,
    pub runs: RunLog,
    /// Asked before anything is deleted: no cleanup deletes in a repository being imported.
    pub imports: ImportLog,
    pub guards: Guards,
    pub limits: DeletionLimits,
    pub dry_run: bool,
    /// The evaluation time; `None`: the wall clock when each pass starts (the daemon).
    pub now: Option<Timestamp>,
}

/// Progress of one repository, for a progress line.
#[derive(Debug, Clone)]
pub enum Progress {
    Listing { done: usize, total: usize },
    Evaluating { tags: usize },
    Deleting { done: usize, total: usize },
}

/// Why a pass did nothing and is to be tried again later without a failure counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "snake_case")]
pub enum Deferral {
    /// The repository is being imported (GitLab refuses cleanups meanwhile).
    Importing(String),
    /// The state store did not take the pass's run: nothing was deleted.
    StateUnavailable(String),
}

impl Deferral {
    pub fn reason(&self) -> &str {
        match self {
            Deferral::Importing(r) | Deferral::StateUnavailable(r) => r,
        }
    }
}

/// How a repository's pass ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum RepositoryStatus {
    /// Everything the plan asked for is done (possibly nothing).
    #[default]
    Completed,
    /// The repository does not exist in the registry: a success with nothing to do.
    NotFound,
    /// `--dry-run`: the plan was made, nothing deleted.
    Planned,
    /// A guard refused the plan; nothing deleted.
    Refused(String),
    /// Stopped early (time budget, transient errors); resume later.
    Unfinished(String),
    /// Could not proceed (plugin failure, permanent registry error).
    Failed(String),
}

impl RepositoryStatus {
    /// Whether this counts as success for an exit code.
    pub fn is_success(&self) -> bool {
        matches!(self, RepositoryStatus::Completed | RepositoryStatus::NotFound | RepositoryStatus::Planned)
    }

    /// A one-word name for state tables and JSON.
    pub fn key(&self) -> &'static str {
        match self {
            RepositoryStatus::Completed => "completed",
            RepositoryStatus::NotFound => "not_found",
            RepositoryStatus::Planned => "planned",
            RepositoryStatus::Refused(_) => "refused",
            RepositoryStatus::Unfinished(_) => "unfinished",
            RepositoryStatus::Failed(_) => "failed",
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            RepositoryStatus::Completed => "completed",
            RepositoryStatus::NotFound => "not found (nothing to do)",
            RepositoryStatus::Planned => "planned (dry run)",
            RepositoryStatus::Refused(_) => "refused",
            RepositoryStatus::Unfinished(_) => "unfinished",
            RepositoryStatus::Failed(_) => "failed",
        }
    }
}

/// What stopped or failed a pass, structured for the backoff plugin and the state store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FailureCause {
    pub class: ErrorClass,
    /// The HTTP status, when a registry answered.
    pub http_status: Option<u16>,
    /// How long the registry asked to wait (`Retry-After`), when it did.
    #[serde(serialize_with = "as_secs")]
    pub retry_after: Option<Duration>,
}

impl FailureCause {
    /// A failure no registry answer explains (a plugin's, a plan's).
    pub fn permanent() -> Self {
        FailureCause { class: ErrorClass::Permanent, http_status: None, retry_after: None }
    }
}

impl From<&RegistryError> for FailureCause {
    fn from(e: &RegistryError) -> Self {
        FailureCause { class: e.class, http_status: e.status, retry_after: e.retry_after() }
    }
}

fn as_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_some(&d.map(|d| d.as_secs()))
}

/// The result of one repository's pass.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryReport {
    pub repository: String,
    pub policy: String,
    #[serde(flatten)]
    pub status: RepositoryStatus,
    pub tags_seen: usize,
    pub tags_to_delete: usize,
    /// Signatures, attestations, SBOMs and other artifacts that follow a subject: not in
    /// `tags_seen`; deleted with their subject.
    pub referrers_seen: usize,
    pub referrers_to_delete: usize,
    /// Referrers whose subject is not in the repository, one sentence each: kept, unless
    /// `[deletion] delete_orphaned_referrers` is set.
    pub orphaned_referrers: Vec<String>,
    pub tags_deleted: usize,
    /// Tags decided `delete` beyond `max_list_size`: left for the next pass.
    pub tags_truncated: usize,
    /// Why the pass did nothing and should be tried later, no failure counted.
    pub deferred: Option<Deferral>,
    pub manifests_deleted: usize,
    pub failed: usize,
    /// What stopped or failed the pass (a registry error's class, status and
    /// `Retry-After`, or `permanent` for a plugin failure): what a backoff plugin branches on.
    pub failure: Option<FailureCause>,
    /// Tags whose deletion was attempted or due but did not happen (failed, or not
    /// attempted before the time budget ran out). Empty for refused and dry-run passes.
    pub not_deleted: Vec<String>,
    pub errors: Vec<String>,
    /// What the re-check before deleting took out of the plan (a digest that gained a tag,
    /// a tag that moved), one sentence each: kept this pass, decided again next pass.
    pub changed_since_listing: Vec<String>,
    /// What this pass settled of interrupted earlier passes before deciding (nothing on a
    /// dry run: then `reconciliation.finished_removals` lists the tags waiting on the dummy).
    pub reconciliation: Reconciliation,
    /// What the plan decides, per rule: tags and untagged manifests each rule deletes or
    /// keeps (empty when no plan was made).
    pub rules: Vec<RuleTally>,
    /// The run row of this pass, when it was allowed to delete.
    pub run_id: Option<i64>,
    pub elapsed_ms: u128,
    #[serde(skip)]
    pub plan: Option<RepositoryPlan>,
}

impl RepositoryReport {
    /// An empty report (status `completed`, nothing seen) for `repository` under `policy`.
    pub fn new(repository: &str, policy: &str) -> Self {
        RepositoryReport {
            repository: repository.to_owned(),
            policy: policy.to_owned(),
            status: RepositoryStatus::Completed,
            tags_seen: 0,
            tags_to_delete: 0,
            referrers_seen: 0,
            referrers_to_delete: 0,
            orphaned_referrers: vec![],
            tags_deleted: 0,
            tags_truncated: 0,
            deferred: None,
            manifests_deleted: 0,
            failed: 0,
            failure: None,
            not_deleted: vec![],
            errors: vec![],
            changed_since_listing: vec![],
            reconciliation: Reconciliation::default(),
            rules: Vec::new(),
            run_id: None,
            elapsed_ms: 0,
            plan: None,
        }
    }
}

/// Asks a running pass to stop at its next safe point (before its next deletion): the
/// daemon's shutdown, a stale verdict. Clones share the flag; the first reason stays.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<Mutex<Option<String>>>);

impl StopFlag {
    pub fn stop(&self, reason: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| reason.to_owned());
    }

    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// Runs one repository's pass. Never panics on registry or plugin failures: they end
/// up in the report's status.
pub async fn run_repository(
    ctx: &PassContext,
    policy: &Policy,
    repository: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> RepositoryReport {
    run_repository_until(ctx, policy, repository, progress, &StopFlag::default()).await
}

/// [`run_repository`], stopping between deletions once `stop` is set (the pass then ends
/// `unfinished`, with every row it wrote settled or left for the next pass to settle).
pub async fn run_repository_until(
    ctx: &PassContext,
    policy: &Policy,
    repository: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
    stop: &StopFlag,
) -> RepositoryReport {
    let started = Instant::now();
    let mut report = RepositoryReport::new(repository, &policy.name);
    let span = tracing::info_span!("pass", repository, policy = policy.name, run_id = tracing::field::Empty);
    pass(ctx, policy, repository, progress, stop, &mut report).instrument(span).await;
    ctx.backend.release(repository);
    report.elapsed_ms = started.elapsed().as_millis();
    report
}

/// Evaluations (CPU-bound plugin calls) run on blocking threads, at most one per core at
/// once, so async workers keep serving registry I/O while a big repository is decided.
async fn evaluate(policy: &Policy, list: TagList, now: Timestamp, guards: &Guards) -> Result<RepositoryPlan, PassError> {
    static SLOTS: LazyLock<Semaphore> =
        LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)));
    let _slot = SLOTS.acquire().await.expect("the semaphore is never closed");
    let (policy, guards) = (policy.clone(), guards.clone());
    tokio::task::spawn_blocking(move || plan(&policy, list, now, &guards))
        .await
        .unwrap_or_else(|e| Err(PassError::Plan(format!("the evaluation thread failed: {e}"))))
}

async fn pass(
    ctx: &PassContext,
    policy: &Policy,
    repository: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
    stop: &StopFlag,
    report: &mut RepositoryReport,
) {
    // GitLab refused cleanups of a repository being imported: nothing is listed or deleted,
    // and the pass ends unfinished, deferred (the daemon waits without counting a failure).
    if !ctx.dry_run
        && let Some(why) = import_in_progress(ctx, repository)
    {
        report.status = RepositoryStatus::Unfinished(why.clone());
        report.deferred = Some(Deferral::Importing(why));
        return;
    }
    let listing = ctx.backend.tag_list(repository, &|done, total| progress(Progress::Listing { done, total })).await;
    let mut list = match listing {
        // Seed 001: a repository gone from the registry is done, not retried forever.
        Ok(None) => {
            report.status = RepositoryStatus::NotFound;
            if !ctx.dry_run {
                let ex = Execution::new(ctx, repository, policy.decided_by(), None, progress);
                report.reconciliation = reconcile::reconcile(&ex, None, &[]).await;
            }
            return;
        }
        Ok(Some(list)) => list,
        Err(e) => {
            report.status = status_for_error(&e, "listing tags");
            report.failure = Some(FailureCause::from(&e));
            report.errors.push(e.to_string());
            return;
        }
    };
    // Tags on tagwarden's dummy are removals in progress: never shown to a plugin.
    let leftovers = dummy::split_leftovers(&mut list);
    report.tags_seen = list.tags().len();
    report.referrers_seen = list.referrers().len();
    let mut execution = if ctx.dry_run {
        report.reconciliation.finished_removals = leftovers;
        None
    } else {
        match begin_run(ctx, policy, repository, &list, progress) {
            Ok(mut ex) => {
                ex.stop = stop.clone();
                report.run_id = ex.run_id;
                if let Some(id) = ex.run_id {
                    tracing::Span::current().record("run_id", id);
                }
                report.reconciliation = reconcile::reconcile(&ex, Some(&list), &leftovers).await;
                Some(ex)
            }
            Err(e) => {
                // No record of the pass, no deletion. The state store did not take the run
                // (PostgreSQL restarting, a disk full): the host's trouble, not the
                // repository's, so no failure is counted against it.
                let why = format!("{e:#}; nothing was deleted");
                report.status = RepositoryStatus::Unfinished(why.clone());
                report.deferred = Some(Deferral::StateUnavailable(why));
                report.errors.push(format!("{e:#}"));
                return;
            }
        }
    };
    report.errors.extend(report.reconciliation.errors.iter().cloned());

    progress(Progress::Evaluating { tags: list.tags().len() });
    let planned = evaluate(policy, list, ctx.now.unwrap_or_else(Timestamp::now), &ctx.guards).await;
    let repository_plan = match planned {
        Ok(p) => p,
        Err(e) => {
            report.status = RepositoryStatus::Failed(format!("{e}; nothing was deleted"));
            report.failure = Some(match &e {
                PassError::Registry(r) => FailureCause::from(r),
                PassError::Plugin(_) | PassError::Plan(_) => FailureCause::permanent(),
            });
            report.errors.push(e.to_string());
            close_run(execution.as_ref(), report);
            return;
        }
    };
    let mut repository_plan = repository_plan;
    report.tags_to_delete = repository_plan.tags_to_delete();
    if let Some(max) = ctx.limits.max_list_size {
        match repository_plan.truncate(max) {
            Ok(waiting) => report.tags_truncated = waiting,
            Err(e) => {
                report.status = RepositoryStatus::Failed(format!("{e:#}; nothing was deleted"));
                report.failure = Some(FailureCause::permanent());
                report.errors.push(format!("{e:#}"));
                close_run(execution.as_ref(), report);
                return;
            }
        }
    }
    report.referrers_to_delete = repository_plan.referrers_to_delete();
    report.orphaned_referrers = repository_plan.orphaned_referrers();
    for orphan in &report.orphaned_referrers {
        tracing::info!(repository, "orphaned referrer {orphan}");
    }
    report.rules = repository_plan.rule_tallies();
    if let Some(refusal) = &repository_plan.refusal {
        report.status = RepositoryStatus::Refused(refusal.clone());
    } else if ctx.dry_run {
        report.status = RepositoryStatus::Planned;
    } else if let Some(ex) = &mut execution {
        let deletion = &repository_plan.deletion;
        let intent =
            RunPlan { tags_to_delete: report.tags_to_delete, digests_planned: deletion.digests.len(), tags_planned: deletion.tag_count() };
        if let Some(id) = ex.run_id
            && let Err(e) = ctx.runs.set_plan(id, intent)
        {
            report.status = RepositoryStatus::Failed(format!("{e:#}; nothing was deleted"));
            report.errors.push(format!("{e:#}"));
            close_run(execution.as_ref(), report);
            return;
        }
        if let Some(why) = stop.reason().filter(|_| !deletion.is_empty()) {
            report.status = RepositoryStatus::Unfinished(format!("stopped ({why}) before deleting; nothing was deleted"));
            let digest_tags = deletion.digests.iter().flat_map(|d| d.tags.iter().cloned());
            report.not_deleted = digest_tags.chain(deletion.shared_tags.iter().map(|t| t.tag.clone())).collect();
        } else if !deletion.is_empty() {
            ex.rules = repository_plan.rules_of_deletions();
            let tally = ex.run(deletion).await;
            report.status = tally.status(ctx.limits.timeout, stop.reason());
            report.tags_deleted = tally.tags_deleted;
            report.manifests_deleted = tally.manifests_deleted;
            report.failed = tally.failed;
            report.failure = tally.failure;
            report.not_deleted = tally.not_deleted;
            report.errors.extend(tally.errors);
            report.changed_since_listing = tally.changed_since_listing;
        }
    }
    if report.status == RepositoryStatus::Completed && report.tags_truncated > 0 {
        report.status = RepositoryStatus::Unfinished(format!(
            "deleted at most `max_list_size` = {} tags; {} wait for the next pass",
            ctx.limits.max_list_size.unwrap_or_default(),
            report.tags_truncated
        ));
    }
    if report.status == RepositoryStatus::Completed && !report.reconciliation.errors.is_empty() {
        report.status =
            RepositoryStatus::Unfinished(format!("settling what an interrupted pass left: {}", report.reconciliation.errors.join("; ")));
    }
    report.plan = Some(repository_plan);
    close_run(execution.as_ref(), report);
}

/// Settles what interrupted passes left on `repository` without deciding anything: the
/// start-up check for repositories no policy will visit this time. Its run row names no
/// policy.
pub async fn reconcile_repository(ctx: &PassContext, repository: &str) -> Result<Reconciliation, RegistryError> {
    const RECONCILER: &str = "host: reconciliation at start-up";
    let no_progress = |_: Progress| {};
    let list = ctx.backend.tag_list(repository, &|_, _| {}).await?;
    let registry = ctx.backend.label();
    let run_id = match &list {
        Some(list) => ctx
            .runs
            .begin(&NewRun {
                registry: &registry,
                repository,
                policy: "-",
                decided_by: RECONCILER,
                owner: crate::owner::current(),
                tags_seen: list.tags().len(),
            })
            .map_err(|e| tracing::error!(repository, "{e:#}"))
            .ok(),
        None => None,
    };
    let ex = Execution::new(ctx, repository, RECONCILER.to_owned(), run_id, &no_progress);
    let rec = match list {
        Some(mut list) => {
            let leftovers = dummy::split_leftovers(&mut list);
            reconcile::reconcile(&ex, Some(&list), &leftovers).await
        }
        None => reconcile::reconcile(&ex, None, &[]).await,
    };
    if let Some(id) = run_id {
        let status = if rec.errors.is_empty() { "completed" } else { "unfinished" };
        let detail = rec.errors.join("; ");
        let summary = RunSummary {
            status,
            tags_deleted: rec.finished_removals.len(),
            manifests_deleted: 0,
            failed: 0,
            detail: Some(detail.as_str()).filter(|d| !d.is_empty()),
        };
        if let Err(e) = ctx.runs.finish(id, &summary) {
            tracing::error!(repository, "{e:#}");
        }
    }
    Ok(rec)
}

/// Repositories with something an interrupted pass left open (audit rows, runs).
pub fn repositories_to_reconcile(ctx: &PassContext) -> anyhow::Result<Vec<String>> {
    let registry = ctx.backend.label();
    let mut repos = ctx.audit.repositories_with_open_attempts(&registry)?;
    repos.extend(ctx.runs.repositories_with_open_runs(&registry)?);
    repos.sort();
    repos.dedup();
    Ok(repos)
}

/// Opens the run row of a pass that may delete: the pass-level intent, before any request.
fn begin_run<'a>(
    ctx: &'a PassContext,
    policy: &Policy,
    repository: &'a str,
    list: &TagList,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
) -> anyhow::Result<Execution<'a>> {
    let decided_by = policy.decided_by();
    let registry = ctx.backend.label();
    let id = ctx.runs.begin(&NewRun {
        registry: &registry,
        repository,
        policy: &policy.name,
        decided_by: &decided_by,
        owner: crate::owner::current(),
        tags_seen: list.tags().len(),
    })?;
    Ok(Execution::new(ctx, repository, decided_by, Some(id), progress))
}

/// Closes the run with the report's outcome; audit rows that could not be completed are
/// reported (they stay `attempted`, and the next pass settles them).
fn close_run(execution: Option<&Execution<'_>>, report: &mut RepositoryReport) {
    let Some(ex) = execution else { return };
    let audit_errors = ex.take_audit_errors();
    if !audit_errors.is_empty() {
        let message = format!(
            "{} audit rows could not be completed (the next pass settles them against the registry): {}",
            audit_errors.len(),
            audit_errors[0]
        );
        if report.status.is_success() {
            report.status = RepositoryStatus::Unfinished(message.clone());
        }
        report.errors.push(message);
    }
    let Some(id) = ex.run_id else { return };
    let detail = match &report.status {
        RepositoryStatus::Refused(d) | RepositoryStatus::Unfinished(d) | RepositoryStatus::Failed(d) => Some(d.as_str()),
        _ => None,
    };
    let summary = RunSummary {
        status: report.status.key(),
        tags_deleted: report.tags_deleted,
        manifests_deleted: report.manifests_deleted,
        failed: report.failed,
        detail,
    };
    if let Err(e) = ex.ctx.runs.finish(id, &summary) {
        // The run stays open; the next pass closes it once this process is gone.
        tracing::error!(repository = report.repository, "{e:#}");
        report.errors.push(format!("{e:#}"));
    }
}

/// Why `repository` must not be cleaned now, if it is being imported. A state that cannot be
/// read blocks too: deleting during an import is what this check exists to prevent.
fn import_in_progress(ctx: &PassContext, repository: &str) -> Option<String> {
    match ctx.imports.active_state(repository) {
        Ok(None) => None,
        Ok(Some(state)) => Some(format!("the repository is being imported ({state}); nothing deleted until the import is done")),
        Err(e) => Some(format!("cannot tell whether the repository is being imported ({e:#}); nothing deleted")),
    }
}

fn status_for_error(e: &RegistryError, doing: &str) -> RepositoryStatus {
    let msg = format!("{doing}: {e}");
    if e.class.is_retryable() { RepositoryStatus::Unfinished(msg) } else { RepositoryStatus::Failed(msg) }
}
