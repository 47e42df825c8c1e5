//! The deletion half of a pass: carries out a [`DeletionPlan`] against the backend within
//! the time budget, every request audited before it is sent.
//!
//! Order matters for what an interruption can leave behind:
//! 1. re-check the repository (one listing; only tags that may have moved are resolved) and
//!    drop from the plan every digest that gained a tag the plan did not decide on, and
//!    again before each batch once [`RECHECK_INTERVAL`] has passed;
//! 2. delete whole manifests by digest, the first alone (a 405 or 401 stops everything
//!    before a second request), then the rest concurrently;
//! 3. remove tags whose manifest stays one by one: the registry's tag delete, else the
//!    dummy-manifest method ([`super::dummy`]).
//!
//! An answer that does not say whether a delete happened (a timeout, a reset, a 5xx) is
//! settled with a `HEAD`; when even that cannot tell, the audit row stays `attempted` and
//! the next pass resolves it ([`super::reconcile`]). Transient trouble ends a pass
//! `unfinished`, never `failed`.
//!
//! A backend whose deletions end with the process (recordings: a what-if pass) has nothing
//! a crash could leave unrecorded, so its manifest deletions are audited after the fact,
//! thousands of rows a commit ([`DEFERRED_ROWS`]), each written once with its outcome.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::dummy::{self, DIGEST};
use super::{FailureCause, PassContext, Progress, RepositoryStatus, StopFlag};
use crate::deletion::{DeletionPlan, DigestDeletion, TagDeletion};
use crate::model::{Digest, ErrorClass};
use crate::registry::{DeleteOutcome, RegistryError, TagDeleteOutcome};
use crate::store::{AuditEntry, AuditOperation, AuditOutcome, KeptManifest};

/// How long a pass deletes on the strength of one re-check before listing again. Deleting
/// from a 2,000-tag repository runs at ~100 manifests/s; re-checking it costs a listing
/// with a warm metadata cache (docs/benchmarks.md): this keeps that under a few percent.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Digest deletions sent between two looks at the clock (and at the re-check interval).
const BATCH_PER_SLOT: usize = 8;

/// Audit rows of deletions that end with the process, written a transaction at a time. A
/// commit per batch of 64 rewrote the same few pages into the write-ahead log 220,000
/// times in a what-if pass over 11M tags: 16 % of its time (docs/benchmarks.md).
const DEFERRED_ROWS: usize = 16_384;

/// Where the audit row of a manifest deletion is.
#[derive(Debug, Clone, Copy)]
enum AuditRow {
    /// Written as `attempted` before the request: its outcome updates it.
    Written(i64),
    /// Not written yet (a deletion that ends with the process): entry `i` of
    /// [`Execution::deferred`], written with its outcome.
    Deferred(usize),
}

/// A deletion that ends with the process, audited at the next flush.
struct DeferredRow {
    operation: AuditOperation,
    digest: Digest,
    tags: Vec<String>,
    decided_by: String,
    /// `None`: not known yet, or not knowable (written `attempted`).
    outcome: Option<AuditOutcome>,
    detail: Option<String>,
}

/// One deletion's result.
pub(super) enum Done {
    /// Gone from the registry; `proved` when this request deleted it (a 404 proves
    /// nothing about whether deletes work).
    Deleted {
        proved: bool,
    },
    Failed {
        message: String,
        cause: FailureCause,
    },
    /// The answer did not say and a check could not either: the audit row stays open for
    /// the next pass to settle.
    Unsettled {
        message: String,
    },
    /// Not attempted: the time budget ran out first.
    Skipped,
}

/// What an execution did, for the report.
#[derive(Default)]
pub(super) struct Tally {
    pub tags_deleted: usize,
    pub manifests_deleted: usize,
    pub failed: usize,
    /// Deletions whose outcome is not known yet (audit rows left open).
    pub unsettled: usize,
    pub not_deleted: Vec<String>,
    pub errors: Vec<String>,
    /// What the re-check took out of the plan, one sentence each.
    pub changed_since_listing: Vec<String>,
    /// An error that retrying cannot fix; the pass fails with it.
    pub permanent: Option<String>,
    /// The repository disappeared while the pass ran.
    pub gone: bool,
    /// The first error that stopped a deletion (permanent ones win).
    pub failure: Option<FailureCause>,
    deletes_work: bool,
}

impl Tally {
    /// The status this tally ends a pass with.
    pub fn status(&self, timeout: Duration, stopped: Option<String>) -> RepositoryStatus {
        if let Some(reason) = &self.permanent {
            RepositoryStatus::Failed(reason.clone())
        } else if self.gone {
            RepositoryStatus::NotFound
        } else if self.failed > 0 || self.unsettled > 0 {
            let unsettled = match self.unsettled {
                0 => String::new(),
                n => format!(" ({n} could not be confirmed yet)"),
            };
            RepositoryStatus::Unfinished(format!("{} deletions did not complete{unsettled}; the next pass retries them", self.failed))
        } else if let (false, Some(why)) = (self.not_deleted.is_empty(), stopped) {
            RepositoryStatus::Unfinished(format!("stopped ({why}) with {} tags not yet deleted", self.not_deleted.len()))
        } else if !self.not_deleted.is_empty() {
            RepositoryStatus::Unfinished(format!(
                "delete timeout of {} reached with {} tags not yet deleted",
                humantime::format_duration(timeout),
                self.not_deleted.len()
            ))
        } else if !self.errors.is_empty() {
            RepositoryStatus::Unfinished(self.errors.join("; "))
        } else {
            RepositoryStatus::Completed
        }
    }

    fn record_digest(&mut self, d: &DigestDeletion, done: Done) {
        match done {
            Done::Deleted { proved } => {
                self.deletes_work |= proved;
                self.tags_deleted += d.tags.len();
                self.manifests_deleted += 1;
            }
            Done::Failed { message, cause } => {
                let class = cause.class;
                if !class.is_retryable() || self.failure.is_none() {
                    self.failure = Some(cause);
                }
                self.failed += d.tags.len().max(1);
                self.not_deleted.extend(d.tags.iter().cloned());
                if !class.is_retryable() {
                    self.permanent.get_or_insert_with(|| message.clone());
                }
                self.errors.push(message);
            }
            Done::Unsettled { message } => {
                self.failure.get_or_insert(FailureCause { class: ErrorClass::Transient, http_status: None, retry_after: None });
                self.unsettled += 1;
                self.failed += d.tags.len().max(1);
                self.not_deleted.extend(d.tags.iter().cloned());
                self.errors.push(message);
            }
            Done::Skipped => self.not_deleted.extend(d.tags.iter().cloned()),
        }
    }

    fn not_attempted(&mut self, digests: &[DigestDeletion], tags: &[TagDeletion]) {
        self.not_deleted.extend(digests.iter().flat_map(|d| d.tags.iter().cloned()));
        self.not_deleted.extend(tags.iter().map(|t| t.tag.clone()));
    }
}

/// One repository's deletions in progress: what every request needs to be audited and
/// reported.
pub(super) struct Execution<'a> {
    pub ctx: &'a PassContext,
    pub repository: &'a str,
    /// The backend's label, as the audit log names registries.
    pub registry: String,
    pub decided_by: String,
    pub run_id: Option<i64>,
    pub deadline: Instant,
    /// Set by the daemon (shutdown, a stale verdict): stop before the next deletion.
    pub stop: StopFlag,
    /// The rule behind each deletion (tag name, or digest of an untagged manifest → the
    /// verdict's reason), recorded in its audit row.
    pub rules: std::collections::HashMap<String, String>,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
    total: AtomicUsize,
    done: AtomicUsize,
    /// Outcomes that could not be written to the audit log (their rows stay `attempted`).
    audit_errors: Mutex<Vec<String>>,
    /// Outcomes of the current batch of manifest deletions not written yet: written together
    /// after the batch (and at the latest when the pass closes). Until then their rows read `attempted`, exactly as after
    /// a crash between a request and its outcome, which the next pass settles.
    outcomes: Mutex<Vec<(i64, AuditOutcome, Option<String>)>>,
    /// Deletions that end with the process (see [`AuditRow::Deferred`]), not audited yet.
    deferred: Mutex<Vec<DeferredRow>>,
}

impl<'a> Execution<'a> {
    pub fn new(
        ctx: &'a PassContext,
        repository: &'a str,
        decided_by: String,
        run_id: Option<i64>,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
    ) -> Self {
        Execution {
            ctx,
            repository,
            registry: ctx.backend.label(),
            decided_by,
            run_id,
            deadline: Instant::now() + ctx.limits.timeout,
            stop: StopFlag::default(),
            rules: Default::default(),
            progress,
            total: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            audit_errors: Mutex::default(),
            outcomes: Mutex::default(),
            deferred: Mutex::default(),
        }
    }

    /// Writes an `attempted` audit row for an operation this pass's policy decided.
    /// The row names who decided and the rule each of its tags (or, untagged, its digest)
    /// was deleted by, e.g. `policy p (plugin gitlab-retention 0.1.0 sha256:<64 hex>); rule: older than 7d`.
    pub fn audit_attempt(&self, operation: AuditOperation, digest: &Digest, tags: &[String]) -> anyhow::Result<i64> {
        self.audit_attempt_as(operation, digest, tags, &self.decided_by_with_rules(digest, tags))
    }

    /// The audit row of an operation this pass's policy decided: written `attempted` now,
    /// or deferred for a deletion that ends with the process (see [`AuditRow`]).
    fn audit_attempt_row(&self, operation: AuditOperation, digest: &Digest, tags: &[String]) -> anyhow::Result<AuditRow> {
        if self.ctx.backend.deletions_outlive_process() {
            return self.audit_attempt(operation, digest, tags).map(AuditRow::Written);
        }
        let mut deferred = lock(&self.deferred);
        deferred.push(DeferredRow {
            operation,
            digest: digest.clone(),
            tags: tags.to_vec(),
            decided_by: self.decided_by_with_rules(digest, tags),
            outcome: None,
            detail: None,
        });
        Ok(AuditRow::Deferred(deferred.len() - 1))
    }

    /// Who decided a deletion and by which rules (see [`Execution::audit_attempt`]).
    fn decided_by_with_rules(&self, digest: &Digest, tags: &[String]) -> String {
        let mut rules: Vec<&str> = Vec::new();
        let digest_key;
        let keys: &[String] = if tags.is_empty() {
            digest_key = [digest.to_string()];
            &digest_key
        } else {
            tags
        };
        for rule in keys.iter().filter_map(|k| self.rules.get(k)) {
            if !rules.contains(&rule.as_str()) {
                rules.push(rule);
            }
        }
        if rules.is_empty() { self.decided_by.clone() } else { format!("{}; rule: {}", self.decided_by, rules.join(" | ")) }
    }

    /// The audit rows of a batch of manifest deletions, in order: `attempted` rows written in
    /// one transaction before any of them is sent, or, for deletions that end with the
    /// process, rows deferred until their outcomes are known.
    fn audit_attempt_manifests(&self, batch: &[&DigestDeletion]) -> anyhow::Result<Vec<AuditRow>> {
        if !self.ctx.backend.deletions_outlive_process() {
            let mut deferred = lock(&self.deferred);
            return Ok(batch
                .iter()
                .map(|d| {
                    deferred.push(DeferredRow {
                        operation: AuditOperation::DeleteManifest,
                        digest: d.digest.clone(),
                        tags: d.tags.clone(),
                        decided_by: self.decided_by_with_rules(&d.digest, &d.tags),
                        outcome: None,
                        detail: None,
                    });
                    AuditRow::Deferred(deferred.len() - 1)
                })
                .collect());
        }
        let decided: Vec<String> = batch.iter().map(|d| self.decided_by_with_rules(&d.digest, &d.tags)).collect();
        let entries: Vec<AuditEntry<'_>> = batch
            .iter()
            .zip(&decided)
            .map(|(d, decided_by)| AuditEntry {
                registry: &self.registry,
                repository: self.repository,
                operation: AuditOperation::DeleteManifest,
                digest: d.digest.as_str(),
                tags: &d.tags,
                decided_by,
                run_id: self.run_id,
            })
            .collect();
        Ok(self.ctx.audit.attempt_all(&entries)?.into_iter().map(AuditRow::Written).collect())
    }

    pub fn audit_attempt_as(&self, operation: AuditOperation, digest: &Digest, tags: &[String], decided_by: &str) -> anyhow::Result<i64> {
        self.ctx.audit.attempt(&AuditEntry {
            registry: &self.registry,
            repository: self.repository,
            operation,
            digest: digest.as_str(),
            tags,
            decided_by,
            run_id: self.run_id,
        })
    }

    /// Records how attempt `id` ended. A failure to write it is reported, never dropped:
    /// the row stays `attempted` and the next pass settles it against the registry.
    pub fn audit_finish(&self, id: i64, outcome: AuditOutcome, detail: Option<&str>) {
        if let Err(e) = self.ctx.audit.finish(id, outcome, detail) {
            self.audit_error(e);
        }
    }

    /// Records how manifest deletion `row` of the current batch ended, written with the
    /// batch's other outcomes by the next [`Execution::flush_audit`].
    fn audit_finish_later(&self, row: AuditRow, outcome: AuditOutcome, detail: Option<&str>) {
        match row {
            AuditRow::Written(id) => lock(&self.outcomes).push((id, outcome, detail.map(str::to_owned))),
            AuditRow::Deferred(i) => {
                let mut deferred = lock(&self.deferred);
                deferred[i].outcome = Some(outcome);
                deferred[i].detail = detail.map(str::to_owned);
            }
        }
    }

    /// Records how manifest deletion `row` ended, now for a written row.
    fn audit_finish_row(&self, row: AuditRow, outcome: AuditOutcome, detail: Option<&str>) {
        match row {
            AuditRow::Written(id) => self.audit_finish(id, outcome, detail),
            AuditRow::Deferred(_) => self.audit_finish_later(row, outcome, detail),
        }
    }

    /// Leaves manifest deletion `row` open (`attempted`) with a note; the next pass settles it.
    fn audit_leave_row_open(&self, row: AuditRow, detail: &str) {
        match row {
            AuditRow::Written(id) => self.audit_leave_open(id, detail),
            AuditRow::Deferred(i) => lock(&self.deferred)[i].detail = Some(detail.to_owned()),
        }
    }

    /// Writes the outcomes recorded since the last flush, in one transaction, and the
    /// deferred rows once there are [`DEFERRED_ROWS`] of them. Called between batches, when
    /// no deletion is in flight.
    pub fn flush_audit(&self) {
        self.flush_outcomes();
        if lock(&self.deferred).len() >= DEFERRED_ROWS {
            self.flush_deferred();
        }
    }

    fn flush_outcomes(&self) {
        let outcomes = std::mem::take(&mut *lock(&self.outcomes));
        if outcomes.is_empty() {
            return;
        }
        if let Err(e) = self.ctx.audit.finish_all(&outcomes) {
            self.audit_error(e);
        }
    }

    /// Writes every deferred row, in one transaction.
    fn flush_deferred(&self) {
        let deferred = std::mem::take(&mut *lock(&self.deferred));
        if deferred.is_empty() {
            return;
        }
        let rows: Vec<(AuditEntry<'_>, Option<AuditOutcome>, Option<&str>)> = deferred
            .iter()
            .map(|d| {
                let entry = AuditEntry {
                    registry: &self.registry,
                    repository: self.repository,
                    operation: d.operation,
                    digest: d.digest.as_str(),
                    tags: &d.tags,
                    decided_by: &d.decided_by,
                    run_id: self.run_id,
                };
                (entry, d.outcome, d.detail.as_deref())
            })
            .collect();
        if let Err(e) = self.ctx.audit.record_all(&rows) {
            self.audit_error(e);
        }
    }

    /// Leaves attempt `id` open with a note; the next pass settles it.
    pub fn audit_leave_open(&self, id: i64, detail: &str) {
        if let Err(e) = self.ctx.audit.leave_open(id, detail) {
            self.audit_error(e);
        }
    }

    /// Resolves an open attempt of an earlier pass (see [`crate::store::AuditLog::resolve`]).
    pub fn audit_resolve(&self, id: i64, outcome: AuditOutcome, detail: &str) {
        if let Err(e) = self.ctx.audit.resolve(id, outcome, detail) {
            self.audit_error(e);
        }
    }

    fn audit_error(&self, e: anyhow::Error) {
        tracing::error!(repository = self.repository, "{e:#}; the next pass settles this row against the registry");
        lock(&self.audit_errors).push(format!("{e:#}"));
    }

    /// The audit write errors so far, taken, after writing every row and outcome not
    /// written yet.
    pub fn take_audit_errors(&self) -> Vec<String> {
        self.flush_outcomes();
        self.flush_deferred();
        std::mem::take(&mut *lock(&self.audit_errors))
    }

    /// Whether no further deletion may start: the time budget is spent or the pass was
    /// asked to stop. Checked before each one, so a pass stops between deletions.
    pub fn must_stop(&self) -> bool {
        Instant::now() >= self.deadline || self.stop.is_stopped()
    }

    pub fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        (self.progress)(Progress::Deleting { done, total: self.total.load(Ordering::Relaxed) });
    }

    /// Carries out `plan` within the time budget, which starts now (reconciliation and
    /// evaluation before it do not spend it).
    pub async fn run(&mut self, plan: &DeletionPlan) -> Tally {
        self.deadline = Instant::now() + self.ctx.limits.timeout;
        self.execute(plan).await
    }

    async fn execute(&self, plan: &DeletionPlan) -> Tally {
        let mut tally = Tally::default();
        self.total.store(plan.digests.len() + plan.shared_tags.len(), Ordering::Relaxed);
        let Some(mut plan) = self.recheck(plan, &mut tally).await else {
            return tally;
        };
        let mut checked = Instant::now();

        // 1. Whole manifests. The first goes alone: if deletes are disabled or forbidden,
        //    that one answer stops the pass before anything else is tried. Referrers wait
        //    for their subject: each joins the queue once its subject is deleted, so an
        //    interruption or a failure never leaves a kept image without its signature.
        let (ready, mut waiting): (Vec<DigestDeletion>, Vec<DigestDeletion>) =
            std::mem::take(&mut plan.digests).into_iter().partition(|d| d.subject.is_none());
        plan.digests = ready;
        let mut deleted: HashSet<Digest> = HashSet::new();
        let batch_size = self.ctx.limits.concurrency.max(1) * BATCH_PER_SLOT;
        let mut next = 0;
        loop {
            if next == plan.digests.len() && !waiting.is_empty() && tally.permanent.is_none() {
                let (ready, rest): (Vec<DigestDeletion>, Vec<DigestDeletion>) =
                    waiting.into_iter().partition(|d| d.subject.as_ref().is_some_and(|s| deleted.contains(s)));
                waiting = rest;
                plan.digests.extend(ready);
            }
            if next >= plan.digests.len() || tally.permanent.is_some() {
                break;
            }
            if next > 0 && checked.elapsed() >= RECHECK_INTERVAL {
                let mut digests = plan.digests.split_off(next);
                digests.append(&mut waiting);
                let rest = DeletionPlan { digests, shared_tags: std::mem::take(&mut plan.shared_tags) };
                let Some(checked_rest) = self.recheck(&rest, &mut tally).await else {
                    return tally;
                };
                let (ready, rest): (Vec<DigestDeletion>, Vec<DigestDeletion>) =
                    checked_rest.digests.into_iter().partition(|d| d.subject.as_ref().is_none_or(|s| deleted.contains(s)));
                plan.digests.extend(ready);
                waiting = rest;
                plan.shared_tags = checked_rest.shared_tags;
                checked = Instant::now();
            }
            let end = if next == 0 { 1 } else { (next + batch_size).min(plan.digests.len()) };
            // Owned items: a closure over borrowed ones makes the pass's future !Send (the
            // compiler cannot prove it for every lifetime), and the daemon spawns passes.
            let batch = self.prepare_batch(plan.digests[next..end].to_vec()).await;
            let mut results = futures::stream::iter(batch.into_iter().map(|(d, prepared)| async move {
                let done = match prepared {
                    Ok(id) => self.delete_prepared(&d.digest, id).await,
                    Err(done) => done,
                };
                (d, done)
            }))
            .buffer_unordered(self.ctx.limits.concurrency.max(1));
            while let Some((d, done)) = results.next().await {
                if matches!(done, Done::Deleted { .. }) {
                    deleted.insert(d.digest.clone());
                }
                tally.record_digest(&d, done);
                self.tick();
            }
            drop(results);
            self.flush_audit();
            next = end;
        }
        tally.not_attempted(&plan.digests[next..], &[]);
        // Referrers whose subject was not deleted (it failed, was kept by the re-check, or
        // the budget ran out) stay with it.
        tally.not_attempted(&waiting, &[]);
        // Their tags too, when they are removed on their own.
        let (shared, kept): (Vec<TagDeletion>, Vec<TagDeletion>) =
            std::mem::take(&mut plan.shared_tags).into_iter().partition(|t| t.subject.as_ref().is_none_or(|s| deleted.contains(s)));
        plan.shared_tags = shared;
        tally.not_attempted(&[], &kept);

        // 2. Tags that share a digest with a kept tag.
        if plan.shared_tags.is_empty() {
            return tally;
        }
        if let Some(reason) = tally.permanent.clone() {
            tally.not_attempted(&[], &plan.shared_tags);
            tally.errors.push(format!("{} shared-digest tags not attempted after: {reason}", plan.shared_tags.len()));
            return tally;
        }
        if checked.elapsed() >= RECHECK_INTERVAL {
            let rest = DeletionPlan { digests: Vec::new(), shared_tags: std::mem::take(&mut plan.shared_tags) };
            let Some(checked_rest) = self.recheck(&rest, &mut tally).await else {
                return tally;
            };
            plan.shared_tags = checked_rest.shared_tags;
        }
        self.remove_shared_tags(&plan.shared_tags, &mut tally).await;
        tally
    }

    /// Re-lists the repository and narrows `plan` to what is still safe. `None` ends the
    /// execution: the repository is gone, or it could not be re-checked (then nothing more
    /// is deleted this pass).
    async fn recheck(&self, plan: &DeletionPlan, tally: &mut Tally) -> Option<DeletionPlan> {
        let skip: HashSet<&str> = plan.digests.iter().flat_map(|d| d.tags.iter().map(String::as_str)).collect();
        match self.ctx.backend.recheck(self.repository, &skip).await {
            Ok(Some(mut current)) => {
                // Tags on the dummy are removals in progress, not tags anyone decided to keep.
                dummy::split_leftovers(&mut current);
                let (narrowed, changed) = plan.recheck(&current);
                for c in &changed {
                    tracing::info!(repository = self.repository, "{c}");
                }
                tally.changed_since_listing.extend(changed);
                Some(narrowed)
            }
            Ok(None) => {
                tally.gone = true;
                None
            }
            Err(e) => {
                tally.not_attempted(&plan.digests, &plan.shared_tags);
                let message = format!("re-checking the tags before deleting (nothing more deleted this pass): {e}");
                if e.class.is_retryable() {
                    tally.errors.push(message);
                } else {
                    tally.permanent.get_or_insert(message);
                }
                None
            }
        }
    }

    /// Readies a batch of manifest deletions: unless the budget is spent, keeps a copy of
    /// each manifest for restore (concurrently), then writes the `attempted` audit rows of
    /// those that may go, together, before any request is sent. Each comes back with its audit
    /// row, or with why it is not deleted.
    async fn prepare_batch(&self, batch: Vec<DigestDeletion>) -> Vec<(DigestDeletion, Result<AuditRow, Done>)> {
        if self.must_stop() {
            return batch.into_iter().map(|d| (d, Err(Done::Skipped))).collect();
        }
        let kept: Vec<Result<(), Done>> = if self.ctx.limits.keep_manifest_bytes == 0 || !self.ctx.backend.serves_manifests() {
            batch.iter().map(|_| Ok(())).collect()
        } else {
            // Owned digests: a closure over borrowed ones makes the pass's future !Send.
            let digests: Vec<Digest> = batch.iter().map(|d| d.digest.clone()).collect();
            futures::stream::iter(digests.into_iter().map(|digest| async move { self.keep_manifest(&digest).await }))
                .buffered(self.ctx.limits.concurrency.max(1))
                .collect()
                .await
        };
        let ready: Vec<&DigestDeletion> = batch.iter().zip(&kept).filter(|(_, k)| k.is_ok()).map(|(d, _)| d).collect();
        let mut ids = match self.audit_attempt_manifests(&ready) {
            Ok(ids) => ids.into_iter(),
            // No audit record, no deletion: an unwritable audit log stops the pass.
            Err(e) => {
                let message = format!("{e:#}");
                return batch
                    .into_iter()
                    .map(|d| (d, Err(Done::Failed { message: message.clone(), cause: FailureCause::permanent() })))
                    .collect();
            }
        };
        batch
            .into_iter()
            .zip(kept)
            .map(|(d, kept)| {
                let prepared = kept.map(|()| ids.next().expect("an audit row for every manifest kept"));
                (d, prepared)
            })
            .collect()
    }

    /// Deletes a manifest whose audit row is ready, unless the budget ran out meanwhile
    /// (then the row says it was not sent).
    async fn delete_prepared(&self, digest: &Digest, row: AuditRow) -> Done {
        if self.must_stop() {
            self.audit_finish_later(row, AuditOutcome::NotDeleted, Some("not sent: the pass stopped first (time budget or stop)"));
            return Done::Skipped;
        }
        self.delete_and_settle(digest, row).await
    }

    /// Keeps manifest `digest` as the registry serves it, before deleting it, so that a tag
    /// deleted by mistake can be restored (`crate::restore`). A manifest that cannot be read
    /// is not deleted this pass (the next one tries again); one larger than the limit is
    /// deleted without being kept, with a warning.
    async fn keep_manifest(&self, digest: &Digest) -> Result<(), Done> {
        let limit = self.ctx.limits.keep_manifest_bytes;
        if limit == 0 || self.ctx.audit.has_kept_manifest(digest.as_str()).unwrap_or(false) {
            return Ok(());
        }
        let failed = |message: String, cause| Done::Failed { message, cause };
        match self.ctx.backend.manifest(self.repository, digest).await {
            Ok(Some(m)) if m.body.len() > limit => {
                tracing::warn!(
                    repository = self.repository,
                    "manifest {digest} is {} bytes, more than deletion.keep_manifest_bytes ({limit}): deleted without a copy to restore",
                    m.body.len()
                );
                Ok(())
            }
            Ok(Some(m)) => self
                .ctx
                .audit
                .keep_manifest(&KeptManifest { digest: m.digest.to_string(), media_type: m.media_type, body: m.body.to_vec() })
                .map_err(|e| failed(format!("{e:#} (not deleted: it could not be restored)"), FailureCause::permanent())),
            // Gone already: the delete will find it so.
            Ok(None) => Ok(()),
            Err(e) => Err(failed(
                format!("reading manifest {digest} to keep it for restore (not deleted this pass): {e}"),
                FailureCause::from(&e),
            )),
        }
    }

    /// Deletes tagwarden's dummy manifest, settling the open audit rows `ids` (the tags
    /// moved onto it) with its outcome. Whatever goes wrong, the rows stay open: the tags
    /// wait on the dummy, and the next pass finishes them.
    pub async fn delete_dummy(&self, ids: &[i64], detail: &str) -> Done {
        let detail = Some(detail).filter(|d| !d.is_empty());
        match self.ctx.backend.delete_manifest(self.repository, &DIGEST).await {
            // Already gone: another pass deleted it, and the tags moved onto it with it.
            Ok(outcome) => {
                ids.iter().for_each(|id| self.audit_finish(*id, AuditOutcome::Deleted, detail));
                Done::Deleted { proved: outcome == DeleteOutcome::Deleted }
            }
            Err(e) if e.class.is_retryable() => {
                let rows: Vec<AuditRow> = ids.iter().copied().map(AuditRow::Written).collect();
                self.settle(&DIGEST, &rows, e).await
            }
            Err(e) => {
                let note = format!("moved onto tagwarden's dummy manifest, which could not be deleted: {e}; the next pass finishes it");
                ids.iter().for_each(|id| self.audit_leave_open(*id, &note));
                Done::Failed { message: e.to_string(), cause: FailureCause::from(&e) }
            }
        }
    }

    /// `DELETE` by digest, then its audit row: done, failed, or — when the answer
    /// does not say and a `HEAD` cannot either — left open for the next pass.
    async fn delete_and_settle(&self, digest: &Digest, row: AuditRow) -> Done {
        match self.ctx.backend.delete_manifest(self.repository, digest).await {
            Ok(DeleteOutcome::Deleted) => {
                self.audit_finish_later(row, AuditOutcome::Deleted, None);
                Done::Deleted { proved: true }
            }
            Ok(DeleteOutcome::AlreadyGone) => {
                self.audit_finish_later(row, AuditOutcome::AlreadyGone, None);
                Done::Deleted { proved: false }
            }
            Err(e) if e.class.is_retryable() => self.settle(digest, &[row], e).await,
            Err(e) => {
                self.audit_finish_later(row, AuditOutcome::Failed, Some(&e.to_string()));
                Done::Failed { message: e.to_string(), cause: FailureCause::from(&e) }
            }
        }
    }

    /// After an ambiguous failure: a `HEAD` says whether the manifest is gone.
    async fn settle(&self, digest: &Digest, rows: &[AuditRow], e: RegistryError) -> Done {
        match self.ctx.backend.manifest_exists(self.repository, digest).await {
            Ok(false) => {
                let detail = format!("confirmed gone by HEAD after: {e}");
                rows.iter().for_each(|row| self.audit_finish_row(*row, AuditOutcome::Deleted, Some(&detail)));
                Done::Deleted { proved: false }
            }
            Ok(true) | Err(_) => {
                // It may still happen (a request the registry has yet to act on): not `failed`.
                let detail = format!("outcome unknown after: {e}; the next pass checks the registry");
                rows.iter().for_each(|row| self.audit_leave_row_open(*row, &detail));
                Done::Unsettled { message: e.to_string() }
            }
        }
    }

    /// Removes tags whose digest must stay: the registry's tag delete where supported,
    /// else GitLab's dummy-manifest method, used only once deletes are known to work.
    async fn remove_shared_tags(&self, tags: &[TagDeletion], tally: &mut Tally) {
        // Try the OCI 1.1 tag delete; the client remembers "unsupported" per registry.
        let mut remaining: Vec<&TagDeletion> = Vec::new();
        for (i, t) in tags.iter().enumerate() {
            if self.must_stop() {
                tally.not_attempted(&[], &tags[i..]);
                return;
            }
            // Rows deferred since the last tag are written once there are enough of them.
            self.flush_audit();
            let row = match self.audit_attempt_row(AuditOperation::DeleteTag, &t.digest, std::slice::from_ref(&t.tag)) {
                Ok(row) => row,
                Err(e) => {
                    tally.failed += 1;
                    tally.not_deleted.push(t.tag.clone());
                    tally.permanent.get_or_insert(format!("{e:#}"));
                    return tally.not_attempted(&[], &tags[i + 1..]);
                }
            };
            match self.ctx.backend.delete_tag(self.repository, &t.tag).await {
                Ok(TagDeleteOutcome::Deleted) => {
                    self.audit_finish_row(row, AuditOutcome::Deleted, None);
                    tally.tags_deleted += 1;
                    self.tick();
                }
                Ok(TagDeleteOutcome::AlreadyGone) => {
                    self.audit_finish_row(row, AuditOutcome::AlreadyGone, None);
                    tally.tags_deleted += 1;
                    self.tick();
                }
                Ok(TagDeleteOutcome::Unsupported) => {
                    self.audit_finish_row(
                        row,
                        AuditOutcome::Failed,
                        Some("tag delete unsupported by this registry; using the dummy-manifest method"),
                    );
                    remaining.extend(&tags[i..]);
                    break;
                }
                Err(e) => {
                    // The row stays open when the answer was ambiguous: the next pass sees
                    // whether the tag is gone.
                    if e.class.is_retryable() {
                        self.audit_leave_row_open(row, &format!("outcome unknown after: {e}; the next pass checks"));
                    } else {
                        self.audit_finish_row(row, AuditOutcome::Failed, Some(&e.to_string()));
                    }
                    tally.failed += 1;
                    tally.not_deleted.push(t.tag.clone());
                    if !e.class.is_retryable() {
                        tally.permanent = Some(e.to_string());
                        return tally.not_attempted(&[], &tags[i + 1..]);
                    }
                    tally.errors.push(e.to_string());
                    self.tick();
                }
            }
        }
        if remaining.is_empty() {
            return;
        }
        let Some(client) = self.ctx.backend.registry() else {
            tally.not_deleted.extend(remaining.iter().map(|t| t.tag.clone()));
            tally.permanent = Some("this backend can neither delete single tags nor use the dummy-manifest method".into());
            return;
        };
        match dummy::untag(self, client, &remaining, tally.deletes_work).await {
            Ok(d) => {
                tally.tags_deleted += d.removed;
                tally.failed += d.failed + d.left_on_dummy;
                tally.unsettled += d.left_on_dummy;
                tally.not_deleted.extend(d.not_removed);
                tally.errors.extend(d.errors);
            }
            Err(e) => {
                tally.not_deleted.extend(remaining.iter().map(|t| t.tag.clone()));
                tally.failed += remaining.len();
                // Only an error retrying cannot fix fails the repository; the rest waits
                // for the next pass.
                if e.class.is_retryable() {
                    tally.errors.push(e.message);
                } else {
                    tally.permanent = Some(e.message);
                }
            }
        }
    }
}

/// A lock that a panic elsewhere does not poison for good: the data it guards (rows and
/// outcomes to write) stays consistent between statements.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
