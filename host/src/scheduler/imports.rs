//! Imports to a GitLab-compatible registry: scheduling and the long-running import guard
//! (seed 000, `gitlab-cleanup-semantics.md` §5).
//!
//! One [`ImportWorker::round`] does, in order:
//!
//! 1. **The guard**, over every import the registry should be working on (`pre_importing`,
//!    `importing`, and `pre_import_done` waiting for its final import): ask the registry's
//!    status. A status that contradicts the local state is reconciled to it ([`classify`]); one
//!    that confirms a step in progress, or says nothing (404, unknown), goes to the stale plugin
//!    with the step's start time. A stale import the registry still runs is cancelled
//!    (`DELETE`): on 202 it is skipped (`migration_canceled`) when one more abort would reach
//!    `max_retries`, else aborted; on 400 it is reconciled to the status in the answer's body
//!    (GitLab's own guard read that body under the wrong key and always aborted); on anything
//!    else it is aborted ([`after_cancel`]). Entering `import_aborted` counts a retry, and at
//!    `max_retries` the import is skipped with `too_many_retries` ([`ImportLog::abort`]).
//! 2. **Scheduling**, while fewer than `capacity` imports run: final imports of finished
//!    pre-imports first, then retries of aborted imports, then queued ones (`PUT`). A `429`
//!    backs that import off (`Retry-After`, else 30 s doubling up to 30 min) and ends the
//!    round's scheduling: the registry is full.
//!
//! Every state change goes through the store's transition table; the decisions are pure
//! functions ([`classify`], [`on_verdict`], [`after_cancel`]), table-tested below and against
//! a stand-in import server in `tests/integration/imports.rs`.
//!
//! The dynamic timeout: with `[imports] timeout_per_tag`, a pre-import's stale check gets the
//! stale plugin's params with `import_timeout` set to the repository's tag count (read when
//! the pre-import started) times that rate, as GitLab's guard did for pre-imports. The plugin
//! contract (0.1) has no tag count of its own, so the host hands the figure over as a param.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use crate::model::{ErrorClass, Timestamp};
use crate::registry::{CancelOutcome, ImportStart, ImportType, RegistryClient, RegistryImportStatus};
use crate::runtime::{Operation, OperationKind, StaleAction, StalePlugin, StaleVerdict};
use crate::setup::StrategySet;
use crate::store::{Change, ImportEvent, ImportLog, ImportRecord, ImportState, transition};

/// First backoff after a 429 without `Retry-After`; doubles with each further 429.
const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(30);
/// The longest backoff after 429s (also the most `Retry-After` is honoured for).
const RATE_LIMIT_BACKOFF_CAP: Duration = Duration::from_secs(30 * 60);

/// `[imports]` and the limits the stale plugin is told about.
#[derive(Debug, Clone)]
pub struct ImportSettings {
    pub capacity: usize,
    pub guard_interval: Duration,
    pub max_retries: u32,
    pub timeout_per_tag: Option<Duration>,
    /// The host's delete timeout, passed to the stale plugin with every operation.
    pub delete_timeout: Duration,
}

impl ImportSettings {
    pub fn from_config(config: &Config) -> Self {
        let i = &config.imports;
        ImportSettings {
            capacity: i.capacity,
            guard_interval: i.guard_interval,
            max_retries: i.max_retries,
            timeout_per_tag: i.timeout_per_tag,
            delete_timeout: config.deletion.timeout,
        }
    }
}

/// What the guard makes of the registry's status, before any plugin is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// Consistent and nothing to judge (e.g. a pre-import done on both sides).
    Leave,
    /// The registry says otherwise: move the local state to match (`AbortImport` goes through
    /// the retry rule).
    Reconcile { event: ImportEvent, reason: Option<String> },
    /// A step in progress on both sides, or the registry said nothing usable: the stale
    /// plugin decides.
    AskPlugin,
}

/// How a registry status maps onto the local state (GitLab's `reconcile_import_status`,
/// with failures aborting so that they count against the retry limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciliation {
    /// The local state already says it.
    Nothing,
    Event {
        event: ImportEvent,
        reason: Option<String>,
    },
    /// A status this tagwarden does not know.
    Unknown,
}

/// The event that brings `local` in line with the registry's `status`.
pub fn reconcile(local: ImportState, status: &RegistryImportStatus) -> Reconciliation {
    use RegistryImportStatus as R;
    let event = |event, reason: Option<&str>| Reconciliation::Event { event, reason: reason.map(str::to_owned) };
    match status {
        R::Native => event(ImportEvent::FinishImport, Some("native_import")),
        R::PreImportInProgress if local == ImportState::PreImporting => Reconciliation::Nothing,
        R::PreImportInProgress => event(ImportEvent::StartPreImport, None),
        R::ImportInProgress if local == ImportState::Importing => Reconciliation::Nothing,
        R::ImportInProgress => event(ImportEvent::StartImport, None),
        R::PreImportComplete if local == ImportState::PreImportDone => Reconciliation::Nothing,
        R::PreImportComplete => event(ImportEvent::FinishPreImport, None),
        R::ImportComplete => event(ImportEvent::FinishImport, None),
        R::PreImportFailed | R::PreImportCanceled | R::ImportFailed | R::ImportCanceled => {
            Reconciliation::Event { event: ImportEvent::AbortImport, reason: Some(format!("the registry reports {status}")) }
        }
        R::Other(_) => Reconciliation::Unknown,
    }
}

/// Reconciliation as a guard step: an event the table refuses from `local` becomes an abort
/// (GitLab's fallback when reconciling fails).
fn reconcile_or_abort(local: ImportState, status: &RegistryImportStatus) -> Option<(ImportEvent, Option<String>)> {
    match reconcile(local, status) {
        Reconciliation::Nothing => None,
        Reconciliation::Event { event, reason } if transition(local, event).is_ok() => Some((event, reason)),
        Reconciliation::Event { event, .. } => {
            Some((ImportEvent::AbortImport, Some(format!("the registry reports {status}, which `{event}` cannot record from `{local}`"))))
        }
        Reconciliation::Unknown => Some((ImportEvent::AbortImport, Some(format!("the registry reports an unknown status `{status}`")))),
    }
}

/// The status the registry reports while `local` is what it should be.
fn expected(local: ImportState) -> Option<RegistryImportStatus> {
    match local {
        ImportState::PreImporting => Some(RegistryImportStatus::PreImportInProgress),
        ImportState::Importing => Some(RegistryImportStatus::ImportInProgress),
        ImportState::PreImportDone => Some(RegistryImportStatus::PreImportComplete),
        _ => None,
    }
}

/// The guard's first step for one import: `status` is the registry's answer (`None`: 404).
pub fn classify(local: ImportState, status: Option<&RegistryImportStatus>) -> Classification {
    let Some(status) = status else { return Classification::AskPlugin };
    if matches!(status, RegistryImportStatus::Other(_)) {
        return Classification::AskPlugin;
    }
    if expected(local).as_ref() == Some(status) {
        return if status.is_in_progress() { Classification::AskPlugin } else { Classification::Leave };
    }
    match reconcile_or_abort(local, status) {
        None => Classification::Leave,
        Some((event, reason)) => Classification::Reconcile { event, reason },
    }
}

/// What the guard does after the stale plugin's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    Leave,
    Cancel(String),
    Abort(String),
}

pub fn on_verdict(verdict: &StaleVerdict) -> GuardAction {
    match verdict {
        StaleVerdict::Healthy => GuardAction::Leave,
        StaleVerdict::Stale { action: StaleAction::Cancel, reason } => GuardAction::Cancel(reason.clone()),
        StaleVerdict::Stale { action: StaleAction::Abort, reason } => GuardAction::Abort(reason.clone()),
        // Actions meant for cleanups and deletions: for an import, stopping it is aborting it.
        StaleVerdict::Stale { action, reason } => {
            GuardAction::Abort(format!("{reason} (stale plugin action {action:?}, an abort for imports)"))
        }
    }
}

/// What follows a cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCancel {
    Leave,
    /// `import_skipped` with this reason.
    Skip(String),
    Abort(String),
    /// Move to what the registry's 400 said.
    Reconcile {
        event: ImportEvent,
        reason: Option<String>,
    },
}

/// The state after cancelling an import in `local` that has been aborted `retries` times,
/// given the registry's answer (`Err`: no usable answer).
pub fn after_cancel(local: ImportState, answer: &Result<CancelOutcome, String>, why: &str, retries: u32, max_retries: u32) -> AfterCancel {
    match answer {
        // GitLab's `nearing_or_exceeded_retry_limit?`: one more abort would reach the limit.
        Ok(CancelOutcome::Accepted) if retries.saturating_add(1) >= max_retries => AfterCancel::Skip("migration_canceled".into()),
        Ok(CancelOutcome::Accepted) => AfterCancel::Abort(format!("canceled: {why}")),
        Ok(CancelOutcome::NothingToCancel(Some(status))) => match reconcile_or_abort(local, status) {
            None => AfterCancel::Leave,
            Some((ImportEvent::AbortImport, reason)) => {
                AfterCancel::Abort(format!("cancel refused (400): {}", reason.unwrap_or_else(|| status.to_string())))
            }
            Some((event, reason)) => AfterCancel::Reconcile { event, reason },
        },
        Ok(CancelOutcome::NothingToCancel(None)) => AfterCancel::Abort("cancel refused (400) without a status in the answer".into()),
        Ok(CancelOutcome::NotFound) => AfterCancel::Abort("cancel: the registry does not know the repository (404)".into()),
        Err(e) => AfterCancel::Abort(format!("cancel failed: {e}")),
    }
}

/// The label a cancel outcome is counted under.
fn cancel_label(answer: &Result<CancelOutcome, String>) -> &'static str {
    match answer {
        Ok(CancelOutcome::Accepted) => "accepted",
        Ok(CancelOutcome::NothingToCancel(_)) => "nothing_to_cancel",
        Ok(CancelOutcome::NotFound) => "not_found",
        Err(_) => "error",
    }
}

/// The backoff after the `n`-th consecutive 429 (1-based) without `Retry-After`.
pub fn rate_limit_backoff(n: u32) -> Duration {
    RATE_LIMIT_BACKOFF.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(RATE_LIMIT_BACKOFF_CAP)
}

/// One state change a round made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportChange {
    pub path: String,
    pub from: ImportState,
    pub to: ImportState,
    /// What led to it, for people.
    pub why: String,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// Imports whose status was asked.
    pub checked: usize,
    pub changes: Vec<ImportChange>,
    /// Cancel requests: path and outcome.
    pub cancels: Vec<(String, String)>,
    /// Imports backing off after a 429, until when.
    pub rate_limited: Vec<(String, Timestamp)>,
    /// Requests or plugin calls that failed (nothing changed for those imports).
    pub errors: Vec<String>,
}

/// Runs import rounds against one registry.
pub struct ImportWorker {
    client: RegistryClient,
    log: ImportLog,
    settings: ImportSettings,
    /// The stale plugin judges imports (the one in force at each judgement: the plugin
    /// directory may swap it).
    strategies: Arc<StrategySet>,
    last_round: Mutex<Option<Instant>>,
}

/// The import worker for `backend`'s registry with `config`'s settings; `None` when the
/// backend is recordings (there is no registry to import into).
pub fn worker_for(
    config: &Config,
    store: &crate::store::Store,
    backend: &crate::backend::Backend,
    strategies: Arc<StrategySet>,
) -> anyhow::Result<Option<ImportWorker>> {
    let Some(client) = backend.registry() else { return Ok(None) };
    ImportWorker::new(client.clone(), store.imports(), ImportSettings::from_config(config), strategies).map(Some)
}

/// Tries `stale` once on a pre-import with an `import_timeout` param, as `[imports]
/// timeout_per_tag` will give it, so a plugin that does not take one fails before it serves.
pub fn check_import_timeout(stale: &StalePlugin, params: &str, rate: Duration, delete_timeout: Duration) -> anyhow::Result<()> {
    let params = params_with_timeout(params, rate.saturating_mul(100))?;
    let now = Timestamp::now();
    let trial = Operation {
        kind: OperationKind::Import,
        state: ImportState::PreImporting.as_str().into(),
        started_at: Some(now),
        now,
        delete_timeout,
        registry_status: Some(RegistryImportStatus::PreImportInProgress.as_str().into()),
    };
    stale.check(&params, &trial).context(
        "`imports.timeout_per_tag` gives the stale plugin an `import_timeout` param, which it refused; \
         use the bundled stale-timeout or leave `timeout_per_tag` out",
    )?;
    Ok(())
}

/// The stale plugin's params (a JSON object) with `import_timeout` set to `timeout`.
fn params_with_timeout(params: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(params).context("the stale plugin's params are not a JSON object")?;
    // Whole seconds (the plugins' duration syntax), at least one.
    params.insert("import_timeout".into(), format!("{}s", timeout.as_secs().max(1)).into());
    Ok(serde_json::Value::Object(params).to_string())
}

impl ImportWorker {
    /// A worker; with `timeout_per_tag` set, the stale plugin in force is tried once with an
    /// `import_timeout` param, so a plugin that does not take one fails here, at start.
    pub fn new(client: RegistryClient, log: ImportLog, settings: ImportSettings, strategies: Arc<StrategySet>) -> anyhow::Result<Self> {
        if let (Some(rate), Some((stale, params))) = (settings.timeout_per_tag, &strategies.current().stale) {
            check_import_timeout(stale, params, rate, settings.delete_timeout)?;
        }
        Ok(ImportWorker { client, log, settings, strategies, last_round: Mutex::new(None) })
    }

    pub fn log(&self) -> &ImportLog {
        &self.log
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// A round, if `guard_interval` has passed since the last one (the daemon calls this on
    /// every turn of its loop). Failures are logged, never fatal to the daemon.
    pub async fn tick(&self) -> Option<RoundReport> {
        {
            let mut last = self.last_round.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.settings.guard_interval) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match self.round(Timestamp::now()).await {
            Ok(report) => {
                for c in &report.changes {
                    tracing::info!(repository = c.path, "import: {} → {}: {}", c.from, c.to, crate::untrusted::escape(&c.why));
                }
                for e in &report.errors {
                    tracing::warn!("import: {}", crate::untrusted::escape(e));
                }
                Some(report)
            }
            Err(e) => {
                tracing::error!("import round failed: {e:#}");
                None
            }
        }
    }

    /// Rounds every `guard_interval`, for the daemon (`serve` runs this as a task of its own,
    /// so a long cleanup pass never delays the guard). Dropping the future mid-round is safe:
    /// a start whose answer was lost is answered 409 next time and reconciled.
    pub async fn run_forever(&self) {
        loop {
            self.tick().await;
            tokio::time::sleep(self.settings.guard_interval).await;
        }
    }

    /// The guard, then scheduling, at time `now`.
    pub async fn round(&self, now: Timestamp) -> anyhow::Result<RoundReport> {
        let mut report = RoundReport::default();
        self.guard(now, &mut report).await?;
        self.schedule(now, &mut report).await?;
        Ok(report)
    }

    /// Step 1 of a round (see the module's documentation).
    pub async fn guard(&self, now: Timestamp, report: &mut RoundReport) -> anyhow::Result<()> {
        for record in self.log.watched()? {
            let path = record.path.as_str();
            report.checked += 1;
            let status = match self.client.import_status(path).await {
                Ok(s) => s,
                Err(e) => {
                    // No answer is no evidence: leave the import as it is until one comes.
                    self.log.note(path, None, Some(&e.to_string()), now)?;
                    report.errors.push(format!("{path}: asking the import status: {e}"));
                    if e.class == ErrorClass::Unauthorized {
                        break;
                    }
                    continue;
                }
            };
            self.log.note(path, status.as_ref().map(RegistryImportStatus::as_str), None, now)?;
            match classify(record.state, status.as_ref()) {
                Classification::Leave => {}
                Classification::Reconcile { event, reason } => {
                    let why = format!("the registry reports {}", status.as_ref().map_or("nothing", |s| s.as_str()));
                    self.change(&record, event, reason, &why, status.as_ref(), false, now, report)?;
                }
                Classification::AskPlugin => self.judge(&record, status.as_ref(), now, report).await?,
            }
        }
        Ok(())
    }

    /// The stale plugin's verdict on one import, and what follows it.
    async fn judge(
        &self,
        record: &ImportRecord,
        status: Option<&RegistryImportStatus>,
        now: Timestamp,
        report: &mut RoundReport,
    ) -> anyhow::Result<()> {
        let path = record.path.as_str();
        let op = Operation {
            kind: OperationKind::Import,
            state: record.state.as_str().into(),
            started_at: record.step_started_at,
            now,
            delete_timeout: self.settings.delete_timeout,
            registry_status: status.map(|s| s.as_str().to_owned()),
        };
        let strategies = self.strategies.current();
        let Some((stale, stale_params)) = &strategies.stale else {
            // The directory's stale plugin is quarantined: nothing judges the import.
            return Ok(());
        };
        let params = self.params_for(record, stale_params)?;
        let verdict = match stale.check(&params, &op) {
            Ok(v) => v,
            Err(e) => {
                // A failing plugin decides nothing: the import is left as it is.
                report.errors.push(format!("{path}: {e}"));
                return Ok(());
            }
        };
        match on_verdict(&verdict) {
            GuardAction::Leave => Ok(()),
            GuardAction::Abort(why) => self.change(record, ImportEvent::AbortImport, Some(why.clone()), &why, status, false, now, report),
            GuardAction::Cancel(why) => {
                let answer = self.client.cancel_import(path).await.map_err(|e| e.to_string());
                let label = cancel_label(&answer);
                let detail = match &answer {
                    Ok(CancelOutcome::NothingToCancel(Some(s))) => format!("{why}; the registry reports {s}"),
                    Err(e) => format!("{why}; {e}"),
                    _ => why.clone(),
                };
                self.log.record_cancel(path, record.state, label, &detail, now)?;
                report.cancels.push((path.to_owned(), label.to_owned()));
                match after_cancel(record.state, &answer, &why, record.retries, self.settings.max_retries) {
                    AfterCancel::Leave => Ok(()),
                    AfterCancel::Skip(reason) => {
                        let why = format!("canceled near the retry limit: {why}");
                        self.change(record, ImportEvent::SkipImport, Some(reason), &why, status, false, now, report)
                    }
                    AfterCancel::Abort(reason) => {
                        self.change(record, ImportEvent::AbortImport, Some(reason.clone()), &reason, status, false, now, report)
                    }
                    AfterCancel::Reconcile { event, reason } => {
                        let s = match &answer {
                            Ok(CancelOutcome::NothingToCancel(Some(s))) => s.to_string(),
                            _ => String::new(),
                        };
                        let why = format!("cancel refused (400): the registry reports {s}");
                        self.change(record, event, reason, &why, None, false, now, report)
                    }
                }
            }
        }
    }

    /// Applies `event` (aborts through the retry rule) and reports it; a refusal (the state
    /// moved under us) is reported, not fatal.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        record: &ImportRecord,
        event: ImportEvent,
        reason: Option<String>,
        why: &str,
        status: Option<&RegistryImportStatus>,
        clear_pre_import_done: bool,
        now: Timestamp,
        report: &mut RoundReport,
    ) -> anyhow::Result<()> {
        let change = Change {
            expect: Some(record.state),
            reason,
            registry_status: status.map(|s| s.as_str().to_owned()),
            tags: None,
            clear_pre_import_done: clear_pre_import_done || matches!(status, Some(RegistryImportStatus::PreImportFailed)),
        };
        let result = if event == ImportEvent::AbortImport {
            self.log.abort(&record.path, now, &change, self.settings.max_retries)
        } else {
            self.log.apply(&record.path, event, now, &change)
        };
        match result {
            Ok(after) => {
                report.changes.push(ImportChange { path: record.path.clone(), from: record.state, to: after.state, why: why.to_owned() });
                Ok(())
            }
            Err(e) if e.downcast_ref::<crate::store::TransitionRefused>().is_some() => {
                report.errors.push(format!("{e:#}"));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The stale params for `record`: the operator's (`params`), with a dynamic
    /// `import_timeout` for a pre-import when `timeout_per_tag` is set and its tag count is known.
    fn params_for(&self, record: &ImportRecord, params: &str) -> anyhow::Result<String> {
        match (self.settings.timeout_per_tag, record.state, record.tags) {
            (Some(rate), ImportState::PreImporting, Some(tags)) => {
                params_with_timeout(params, rate.saturating_mul(u32::try_from(tags).unwrap_or(u32::MAX)))
            }
            _ => Ok(params.to_owned()),
        }
    }

    /// Step 2 of a round (see the module's documentation).
    pub async fn schedule(&self, now: Timestamp, report: &mut RoundReport) -> anyhow::Result<()> {
        let mut free = self.settings.capacity.saturating_sub(self.log.running()?);
        for record in self.log.startable(now, self.settings.max_retries)? {
            if free == 0 {
                break;
            }
            let path = record.path.as_str();
            let (import_type, event) = match record.state {
                ImportState::PreImportDone => (ImportType::Final, ImportEvent::StartImport),
                ImportState::ImportAborted if record.pre_import_done_at.is_some() => (ImportType::Final, ImportEvent::RetryImport),
                ImportState::ImportAborted => (ImportType::Pre, ImportEvent::RetryPreImport),
                _ => (ImportType::Pre, ImportEvent::StartPreImport),
            };
            let tags = match (import_type, self.settings.timeout_per_tag) {
                (ImportType::Pre, Some(_)) => match self.client.tag_names(path).await {
                    Ok(names) => names.map(|n| n.len() as u64),
                    Err(e) => {
                        report.errors.push(format!("{path}: counting tags for the dynamic timeout: {e}"));
                        None
                    }
                },
                _ => None,
            };
            let started = |why: String, report: &mut RoundReport| -> anyhow::Result<bool> {
                let change = Change { expect: Some(record.state), tags, ..Change::default() };
                match self.log.apply(path, event, now, &change) {
                    Ok(after) => {
                        report.changes.push(ImportChange { path: path.to_owned(), from: record.state, to: after.state, why });
                        Ok(true)
                    }
                    Err(e) if e.downcast_ref::<crate::store::TransitionRefused>().is_some() => {
                        report.errors.push(format!("{e:#}"));
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            };
            match self.client.start_import(path, import_type).await {
                Ok(ImportStart::Started) => {
                    if started(format!("{} import started", import_type.as_str()), report)? {
                        free -= 1;
                    }
                }
                Ok(ImportStart::AlreadyRunning(code)) => {
                    // The registry is on it (an earlier request whose answer was lost): the guard
                    // reconciles the exact step from its status next round.
                    if started(format!("the registry was already importing it ({code})"), report)? {
                        free -= 1;
                    }
                }
                Ok(ImportStart::AlreadyImported) => {
                    let mut from = record.clone();
                    if record.state == ImportState::PreImportDone {
                        // `finish_import` is not allowed from `pre_import_done`: through `importing`.
                        self.change(&from, ImportEvent::StartImport, None, "already imported (200)", None, false, now, report)?;
                        from.state = ImportState::Importing;
                    }
                    self.change(
                        &from,
                        ImportEvent::FinishImport,
                        Some("already_imported".into()),
                        "already imported (200)",
                        None,
                        false,
                        now,
                        report,
                    )?;
                }
                Ok(ImportStart::PreImportFailed) => {
                    let why = "the registry refused the final import: its pre-import failed (424)";
                    self.change(&record, ImportEvent::AbortImport, Some(why.into()), why, None, true, now, report)?;
                }
                Ok(ImportStart::NotFound) => {
                    let why = "the registry does not know the repository (404)";
                    self.change(&record, ImportEvent::SkipImport, Some("not_found".into()), why, None, false, now, report)?;
                }
                Ok(ImportStart::TooManyImports { retry_after }) => {
                    let wait = retry_after
                        .unwrap_or_else(|| rate_limit_backoff(record.rate_limited.saturating_add(1)))
                        .min(RATE_LIMIT_BACKOFF_CAP);
                    let until = now.saturating_add(wait);
                    let message = format!("too many imports (429): not before {until}");
                    self.log.back_off(path, until, &message, now)?;
                    report.rate_limited.push((path.to_owned(), until));
                    // The registry is full: starting others now would only collect more 429s.
                    break;
                }
                Err(e) => {
                    // Possibly started (a timeout after the registry acted): the next PUT says 409.
                    self.log.note(path, None, Some(&e.to_string()), now)?;
                    report.errors.push(format!("{path}: starting the {} import: {e}", import_type.as_str()));
                    if e.class == ErrorClass::Unauthorized {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ImportEvent as E;
    use ImportState as S;
    use RegistryImportStatus as R;

    fn ev(event: ImportEvent, reason: Option<&str>) -> Classification {
        Classification::Reconcile { event, reason: reason.map(str::to_owned) }
    }

    /// Every branch of the guard's first step: what each registry status means for each
    /// state the guard watches.
    #[test]
    fn classification_table() {
        let abort_reported = |s: &str| ev(E::AbortImport, Some(&format!("the registry reports {s}")));
        #[rustfmt::skip]
        let table: Vec<(ImportState, Option<RegistryImportStatus>, Classification)> = vec![
            // In progress as expected: the plugin judges the step's age.
            (S::PreImporting, Some(R::PreImportInProgress), Classification::AskPlugin),
            (S::Importing, Some(R::ImportInProgress), Classification::AskPlugin),
            // Done as expected: nothing to do (the scheduler starts the final import).
            (S::PreImportDone, Some(R::PreImportComplete), Classification::Leave),
            // No answer or an unknown one: the plugin (stale-timeout aborts past its timeout).
            (S::PreImporting, None, Classification::AskPlugin),
            (S::Importing, Some(R::Other("mystery".into())), Classification::AskPlugin),
            // The registry finished or moved on: reconciled at once.
            (S::PreImporting, Some(R::PreImportComplete), ev(E::FinishPreImport, None)),
            (S::PreImporting, Some(R::ImportInProgress), ev(E::StartImport, None)),
            (S::PreImporting, Some(R::ImportComplete), ev(E::FinishImport, None)),
            (S::Importing, Some(R::ImportComplete), ev(E::FinishImport, None)),
            (S::Importing, Some(R::Native), ev(E::FinishImport, Some("native_import"))),
            (S::Importing, Some(R::PreImportInProgress), ev(E::StartPreImport, None)),
            (S::PreImportDone, Some(R::ImportInProgress), ev(E::StartImport, None)),
            // Failed or canceled at the registry: aborted (a retry counted).
            (S::PreImporting, Some(R::PreImportFailed), abort_reported("pre_import_failed")),
            (S::Importing, Some(R::ImportFailed), abort_reported("import_failed")),
            (S::Importing, Some(R::ImportCanceled), abort_reported("import_canceled")),
            (S::PreImportDone, Some(R::PreImportCanceled), abort_reported("pre_import_canceled")),
            // What the table cannot record from the local state: aborted (GitLab's fallback).
            (S::PreImportDone, Some(R::PreImportInProgress), ev(E::AbortImport, Some(
                "the registry reports pre_import_in_progress, which `start_pre_import` cannot record from `pre_import_done`"))),
            (S::PreImportDone, Some(R::Native), ev(E::AbortImport, Some(
                "the registry reports native, which `finish_import` cannot record from `pre_import_done`"))),
        ];
        for (local, status, want) in table {
            assert_eq!(classify(local, status.as_ref()), want, "{local} / {status:?}");
        }
    }

    #[test]
    fn verdicts_become_actions() {
        let stale = |action| StaleVerdict::Stale { action, reason: "too long".into() };
        assert_eq!(on_verdict(&StaleVerdict::Healthy), GuardAction::Leave);
        assert_eq!(on_verdict(&stale(StaleAction::Cancel)), GuardAction::Cancel("too long".into()));
        assert_eq!(on_verdict(&stale(StaleAction::Abort)), GuardAction::Abort("too long".into()));
        assert!(matches!(on_verdict(&stale(StaleAction::Reschedule)), GuardAction::Abort(r) if r.contains("Reschedule")));
    }

    /// Every branch after a cancel: 202 near/at/far from the limit, 400 with each kind of
    /// status (reconciled, consistent, refused by the table, unknown, missing), 404, no answer.
    #[test]
    fn after_cancel_table() {
        let ok = |o| Ok::<_, String>(o);
        let nothing = |s: Option<R>| ok(CancelOutcome::NothingToCancel(s));
        #[rustfmt::skip]
        let table: Vec<(ImportState, Result<CancelOutcome, String>, u32, AfterCancel)> = vec![
            (S::Importing, ok(CancelOutcome::Accepted), 0, AfterCancel::Abort("canceled: slow".into())),
            (S::Importing, ok(CancelOutcome::Accepted), 1, AfterCancel::Skip("migration_canceled".into())), // near: 1 + 1 >= 2
            (S::Importing, ok(CancelOutcome::Accepted), 5, AfterCancel::Skip("migration_canceled".into())), // past
            (S::PreImporting, nothing(Some(R::PreImportComplete)), 0, AfterCancel::Reconcile { event: E::FinishPreImport, reason: None }),
            (S::Importing, nothing(Some(R::ImportComplete)), 0, AfterCancel::Reconcile { event: E::FinishImport, reason: None }),
            (S::Importing, nothing(Some(R::Native)), 0, AfterCancel::Reconcile { event: E::FinishImport, reason: Some("native_import".into()) }),
            (S::PreImporting, nothing(Some(R::ImportInProgress)), 0, AfterCancel::Reconcile { event: E::StartImport, reason: None }),
            (S::PreImporting, nothing(Some(R::PreImportInProgress)), 0, AfterCancel::Leave),
            (S::Importing, nothing(Some(R::ImportFailed)), 0, AfterCancel::Abort("cancel refused (400): the registry reports import_failed".into())),
            (S::Importing, nothing(Some(R::Other("odd".into()))), 0, AfterCancel::Abort("cancel refused (400): the registry reports an unknown status `odd`".into())),
            (S::Importing, nothing(None), 0, AfterCancel::Abort("cancel refused (400) without a status in the answer".into())),
            (S::Importing, ok(CancelOutcome::NotFound), 0, AfterCancel::Abort("cancel: the registry does not know the repository (404)".into())),
            (S::Importing, Err("503 Service Unavailable".into()), 0, AfterCancel::Abort("cancel failed: 503 Service Unavailable".into())),
        ];
        for (local, answer, retries, want) in table {
            assert_eq!(after_cancel(local, &answer, "slow", retries, 2), want, "{local} {answer:?} retries {retries}");
        }
    }

    #[test]
    fn rate_limit_backoff_doubles_from_30s_and_caps_at_30min() {
        let secs: Vec<u64> = (1..=8).map(|n| rate_limit_backoff(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1800, 1800]);
        assert_eq!(rate_limit_backoff(u32::MAX), RATE_LIMIT_BACKOFF_CAP);
    }
}
