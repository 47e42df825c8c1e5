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

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::dummy::{self, DIGEST};
use super::{PassContext, Progress, RepositoryStatus};
use crate::deletion::{DeletionPlan, DigestDeletion, TagDeletion};
use crate::model::{Digest, ErrorClass};
use crate::registry::{DeleteOutcome, RegistryError, TagDeleteOutcome};
use crate::store::{AuditEntry, AuditOperation, AuditOutcome};

/// How long a pass deletes on the strength of one re-check before listing again. Deleting
/// from a 2,000-tag repository runs at ~100 manifests/s; re-checking it costs a listing
/// with a warm metadata cache (docs/benchmarks.md): this keeps that under a few percent.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Digest deletions sent between two looks at the re-check interval, at first.
///
/// Against the recordings backend, each batch's audit rows are written in one transaction
/// before its first request and finished in one after its last (a row per request cost one
/// commit each: at 10M tags that was most of a simulated pass), and batches grow. Against a
/// registry an audit write is ~1 % of a delete, so rows are written one by one right around
/// their request: a crash leaves open only the requests in flight (crash.rs counts them),
/// where a batch would leave all of its rows open. In memory, a crash loses the deletions
/// anyway.
const BATCH_PER_SLOT: usize = 8;

/// Batches double while they finish within half of this and halve when they take twice as
/// long: against a registry (~10 ms a delete) they stay at the first size; against the
/// recordings backend (microseconds) they grow to [`MAX_BATCH`].
const BATCH_TARGET: Duration = Duration::from_millis(50);

/// The most deletions in one batch: what a crash can leave `attempted` for the next pass to
/// settle.
const MAX_BATCH: usize = 4096;

/// One deletion's result.
pub(super) enum Done {
    /// Gone from the registry; `proved` when this request deleted it (a 404 proves
    /// nothing about whether deletes work).
    Deleted {
        proved: bool,
    },
    Failed {
        message: String,
        class: ErrorClass,
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
    /// The class of the first error that stopped a deletion (permanent ones win).
    pub failure_class: Option<ErrorClass>,
    deletes_work: bool,
}

impl Tally {
    /// The status this tally ends a pass with.
    pub fn status(&self, timeout: Duration) -> RepositoryStatus {
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
            Done::Failed { message, class } => {
                if !class.is_retryable() || self.failure_class.is_none() {
                    self.failure_class = Some(class);
                }
                self.failed += d.tags.len().max(1);
                self.not_deleted.extend(d.tags.iter().cloned());
                if !class.is_retryable() {
                    self.permanent.get_or_insert_with(|| message.clone());
                }
                self.errors.push(message);
            }
            Done::Unsettled { message } => {
                self.failure_class.get_or_insert(ErrorClass::Transient);
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

/// An audit row's outcome waiting for its batch to end: (row, outcome, detail).
type Finish = (i64, AuditOutcome, Option<String>);

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
    progress: &'a (dyn Fn(Progress) + Send + Sync),
    total: AtomicUsize,
    done: AtomicUsize,
    /// Outcomes that could not be written to the audit log (their rows stay `attempted`).
    audit_errors: Mutex<Vec<String>>,
    /// While a batch runs, the outcomes to write when it ends (see [`Self::audit_finish`]).
    finishes: Mutex<Option<Vec<Finish>>>,
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
            progress,
            total: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            audit_errors: Mutex::default(),
            finishes: Mutex::default(),
        }
    }

    /// Writes an `attempted` audit row for an operation this pass's policy decided.
    pub fn audit_attempt(&self, operation: AuditOperation, digest: &Digest, tags: &[String]) -> anyhow::Result<i64> {
        self.audit_attempt_as(operation, digest, tags, &self.decided_by)
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
    /// the row stays `attempted` and the next pass settles it against the registry. During a
    /// batch the outcome is written with the batch's others when it ends ([`Self::end_batch`]).
    pub fn audit_finish(&self, id: i64, outcome: AuditOutcome, detail: Option<&str>) {
        if let Some(pending) = self.finishes.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            pending.push((id, outcome, detail.map(str::to_owned)));
            return;
        }
        if let Err(e) = self.ctx.audit.finish(id, outcome, detail) {
            self.audit_error(e);
        }
    }

    /// Writes the `attempted` rows of a batch of deletions (digest and tags removed) in one
    /// transaction, and holds back the outcomes until [`Self::end_batch`].
    fn begin_batch<'b>(
        &self,
        operation: AuditOperation,
        batch: impl Iterator<Item = (&'b Digest, &'b [String])>,
    ) -> anyhow::Result<Vec<i64>> {
        let entries: Vec<AuditEntry<'_>> = batch
            .map(|(digest, tags)| AuditEntry {
                registry: &self.registry,
                repository: self.repository,
                operation,
                digest: digest.as_str(),
                tags,
                decided_by: &self.decided_by,
                run_id: self.run_id,
            })
            .collect();
        let ids = self.ctx.audit.attempt_many(&entries)?;
        *self.finishes.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::with_capacity(ids.len()));
        Ok(ids)
    }

    /// Writes the outcomes of the batch's deletions, in one transaction.
    fn end_batch(&self) {
        let Some(pending) = self.finishes.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        if pending.is_empty() {
            return;
        }
        if let Err(e) = self.ctx.audit.finish_many(&pending) {
            tracing::error!(repository = self.repository, "{e:#}; the next pass settles these rows against the registry");
            // One entry per row: the pass reports how many rows stay open.
            let message = format!("{e:#}");
            self.audit_errors.lock().unwrap_or_else(|e| e.into_inner()).extend(pending.iter().map(|_| message.clone()));
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
        self.audit_errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{e:#}"));
    }

    /// The audit write errors so far, taken.
    pub fn take_audit_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.audit_errors.lock().unwrap_or_else(|e| e.into_inner()))
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
        //    that one answer stops the pass before anything else is tried.
        let batched = self.ctx.backend.registry().is_none();
        let first_batch = self.ctx.limits.concurrency.max(1) * BATCH_PER_SLOT;
        let mut batch_size = first_batch;
        let mut next = 0;
        while next < plan.digests.len() && tally.permanent.is_none() {
            if next > 0 && checked.elapsed() >= RECHECK_INTERVAL {
                let rest = DeletionPlan { digests: plan.digests.split_off(next), shared_tags: std::mem::take(&mut plan.shared_tags) };
                let Some(checked_rest) = self.recheck(&rest, &mut tally).await else {
                    return tally;
                };
                plan.digests.extend(checked_rest.digests);
                plan.shared_tags = checked_rest.shared_tags;
                checked = Instant::now();
            }
            let end = if next == 0 { 1 } else { (next + batch_size).min(plan.digests.len()) };
            // Owned items: a closure over borrowed ones makes the pass's future !Send (the
            // compiler cannot prove it for every lifetime), and the daemon spawns passes.
            if Instant::now() >= self.deadline {
                break;
            }
            let started = Instant::now();
            let batch = plan.digests[next..end].to_vec();
            let ids = match batched {
                true => self.begin_batch(AuditOperation::DeleteManifest, batch.iter().map(|d| (&d.digest, d.tags.as_slice()))),
                false => Ok(Vec::new()),
            };
            let ids = match ids {
                Ok(ids) => ids.into_iter().map(Some).chain(std::iter::repeat(None)),
                Err(e) => {
                    // No audit record, no deletion: an unwritable audit log stops the pass.
                    for d in &batch {
                        tally.record_digest(d, Done::Failed { message: format!("{e:#}"), class: ErrorClass::Permanent });
                    }
                    next = end;
                    break;
                }
            };
            let mut results = futures::stream::iter(batch.into_iter().zip(ids).map(|(d, id)| async move {
                let done = self.delete_digest(&d, id).await;
                (d, done)
            }))
            .buffer_unordered(self.ctx.limits.concurrency.max(1));
            while let Some((d, done)) = results.next().await {
                tally.record_digest(&d, done);
                self.tick();
            }
            drop(results);
            self.end_batch();
            next = end;
            let took = started.elapsed();
            if batched && took < BATCH_TARGET / 2 {
                batch_size = (batch_size * 2).min(MAX_BATCH);
            } else if took > BATCH_TARGET * 2 {
                batch_size = (batch_size / 2).max(first_batch);
            }
        }
        tally.not_attempted(&plan.digests[next..], &[]);

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

    /// Deletes one manifest by digest, audited (`id`: the row its batch wrote), unless the
    /// budget is spent: then a batch's row says the request was never sent.
    async fn delete_digest(&self, d: &DigestDeletion, id: Option<i64>) -> Done {
        if Instant::now() >= self.deadline {
            if let Some(id) = id {
                self.audit_finish(id, AuditOutcome::NotDeleted, Some("not sent: the delete timeout was reached first"));
            }
            return Done::Skipped;
        }
        let id = match id {
            Some(id) => id,
            None => match self.audit_attempt(AuditOperation::DeleteManifest, &d.digest, &d.tags) {
                Ok(id) => id,
                // No audit record, no deletion: an unwritable audit log stops the pass.
                Err(e) => return Done::Failed { message: format!("{e:#}"), class: ErrorClass::Permanent },
            },
        };
        self.delete_and_settle(&d.digest, id).await
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
            Err(e) if e.class.is_retryable() => self.settle(&DIGEST, ids, e).await,
            Err(e) => {
                let note = format!("moved onto tagwarden's dummy manifest, which could not be deleted: {e}; the next pass finishes it");
                ids.iter().for_each(|id| self.audit_leave_open(*id, &note));
                Done::Failed { message: e.to_string(), class: e.class }
            }
        }
    }

    /// `DELETE` by digest, then its audit row: done, failed, or — when the answer
    /// does not say and a `HEAD` cannot either — left open for the next pass.
    async fn delete_and_settle(&self, digest: &Digest, id: i64) -> Done {
        match self.ctx.backend.delete_manifest(self.repository, digest).await {
            Ok(DeleteOutcome::Deleted) => {
                self.audit_finish(id, AuditOutcome::Deleted, None);
                Done::Deleted { proved: true }
            }
            Ok(DeleteOutcome::AlreadyGone) => {
                self.audit_finish(id, AuditOutcome::AlreadyGone, None);
                Done::Deleted { proved: false }
            }
            Err(e) if e.class.is_retryable() => self.settle(digest, &[id], e).await,
            Err(e) => {
                self.audit_finish(id, AuditOutcome::Failed, Some(&e.to_string()));
                Done::Failed { message: e.to_string(), class: e.class }
            }
        }
    }

    /// After an ambiguous failure: a `HEAD` says whether the manifest is gone.
    async fn settle(&self, digest: &Digest, ids: &[i64], e: RegistryError) -> Done {
        match self.ctx.backend.manifest_exists(self.repository, digest).await {
            Ok(false) => {
                let detail = format!("confirmed gone by HEAD after: {e}");
                ids.iter().for_each(|id| self.audit_finish(*id, AuditOutcome::Deleted, Some(&detail)));
                Done::Deleted { proved: false }
            }
            Ok(true) | Err(_) => {
                // It may still happen (a request the registry has yet to act on): not `failed`.
                let detail = format!("outcome unknown after: {e}; the next pass checks the registry");
                ids.iter().for_each(|id| self.audit_leave_open(*id, &detail));
                Done::Unsettled { message: e.to_string() }
            }
        }
    }

    /// Removes tags whose digest must stay: the registry's tag delete where supported,
    /// else GitLab's dummy-manifest method, used only once deletes are known to work.
    async fn remove_shared_tags(&self, tags: &[TagDeletion], tally: &mut Tally) {
        // Try the OCI 1.1 tag delete; the client remembers "unsupported" per registry. Against
        // recordings, after the first tag, in batches as for digests: their audit rows written
        // and finished one transaction each.
        let mut remaining: Vec<&TagDeletion> = Vec::new();
        let mut batch_size = 1;
        let mut i = 0;
        'batches: while i < tags.len() {
            if Instant::now() >= self.deadline {
                tally.not_attempted(&[], &tags[i..]);
                return;
            }
            let started = Instant::now();
            let end = (i + batch_size).min(tags.len());
            let batch = &tags[i..end];
            let ids = match self.begin_batch(AuditOperation::DeleteTag, batch.iter().map(|t| (&t.digest, std::slice::from_ref(&t.tag)))) {
                Ok(ids) => ids,
                Err(e) => {
                    tally.failed += 1;
                    tally.not_deleted.push(tags[i].tag.clone());
                    tally.permanent.get_or_insert(format!("{e:#}"));
                    return tally.not_attempted(&[], &tags[i + 1..]);
                }
            };
            // Rows of the batch whose request is not sent after all.
            let not_sent = |ids: &[i64], why: &str| {
                ids.iter().for_each(|id| self.audit_finish(*id, AuditOutcome::NotDeleted, Some(&format!("not sent: {why}"))));
            };
            for (k, (t, &id)) in batch.iter().zip(&ids).enumerate() {
                if Instant::now() >= self.deadline {
                    not_sent(&ids[k..], "the delete timeout was reached first");
                    self.end_batch();
                    tally.not_attempted(&[], &tags[i + k..]);
                    return;
                }
                match self.ctx.backend.delete_tag(self.repository, &t.tag).await {
                    Ok(TagDeleteOutcome::Deleted) => {
                        self.audit_finish(id, AuditOutcome::Deleted, None);
                        tally.tags_deleted += 1;
                        self.tick();
                    }
                    Ok(TagDeleteOutcome::AlreadyGone) => {
                        self.audit_finish(id, AuditOutcome::AlreadyGone, None);
                        tally.tags_deleted += 1;
                        self.tick();
                    }
                    Ok(TagDeleteOutcome::Unsupported) => {
                        self.audit_finish(
                            id,
                            AuditOutcome::Failed,
                            Some("tag delete unsupported by this registry; using the dummy-manifest method"),
                        );
                        not_sent(&ids[k + 1..], "tag delete unsupported by this registry; using the dummy-manifest method");
                        self.end_batch();
                        remaining.extend(&tags[i + k..]);
                        break 'batches;
                    }
                    Err(e) => {
                        // The row stays open when the answer was ambiguous: the next pass sees
                        // whether the tag is gone.
                        if e.class.is_retryable() {
                            self.audit_leave_open(id, &format!("outcome unknown after: {e}; the next pass checks"));
                        } else {
                            self.audit_finish(id, AuditOutcome::Failed, Some(&e.to_string()));
                        }
                        tally.failed += 1;
                        tally.not_deleted.push(t.tag.clone());
                        if !e.class.is_retryable() {
                            tally.permanent = Some(e.to_string());
                            not_sent(&ids[k + 1..], &format!("stopped after: {e}"));
                            self.end_batch();
                            return tally.not_attempted(&[], &tags[i + k + 1..]);
                        }
                        tally.errors.push(e.to_string());
                        self.tick();
                    }
                }
            }
            self.end_batch();
            i = end;
            let took = started.elapsed();
            if self.ctx.backend.registry().is_some() {
                // One row per transaction, right around its request (see BATCH_PER_SLOT).
            } else if batch_size == 1 {
                batch_size = self.ctx.limits.concurrency.max(1) * BATCH_PER_SLOT;
            } else if took < BATCH_TARGET / 2 {
                batch_size = (batch_size * 2).min(MAX_BATCH);
            } else if took > BATCH_TARGET * 2 {
                batch_size = (batch_size / 2).max(1);
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
