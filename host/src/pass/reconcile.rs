//! What a pass settles before it decides anything: the leftovers of passes that were
//! interrupted (SIGKILL, a crash, a lost answer).
//!
//! - **Open audit rows** (`attempted`) whose run's owner is gone, or whose run closed
//!   without knowing the outcome, are checked against the registry: a manifest or tag that
//!   is gone is confirmed `deleted`; one that is still there is `not_deleted`, and the
//!   current policy decides about it again in this very pass.
//! - **Tags on tagwarden's dummy manifest** are removals that were interrupted between
//!   moving the tag and deleting the dummy: they are finished (the dummy deleted by digest),
//!   audited as the completion of the earlier attempt where its row is found.
//! - **Runs** whose owner is gone are closed as `interrupted`.
//!
//! Rows of a run whose owner may still be running (this process, a live process on this
//! machine, another host) are left alone: that owner settles them.

use serde::Serialize;

use super::dummy::DIGEST;
use super::execute::{Done, Execution};
use crate::model::TagList;
use crate::owner::{self, Liveness};
use crate::store::{AuditOperation, AuditOutcome, OpenAttempt};

/// Who finishes a removal found on the dummy without an audit row of its own.
const FINISHER: &str = "host: finishing a removal interrupted earlier (the tag was left on tagwarden's dummy manifest)";

/// What reconciliation found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciliation {
    /// Tags found on tagwarden's dummy manifest (removed now unless `errors` says otherwise).
    pub finished_removals: Vec<String>,
    /// Open audit rows confirmed `deleted` (the registry no longer has what they deleted).
    pub confirmed_deleted: usize,
    /// Open audit rows found undone (`not_deleted`).
    pub found_not_deleted: usize,
    /// Interrupted runs closed.
    pub runs_closed: usize,
    /// Open rows left for another time (their owner may be running, or the registry could
    /// not be asked).
    pub left_open: usize,
    pub errors: Vec<String>,
}

impl Reconciliation {
    pub fn is_empty(&self) -> bool {
        self.finished_removals.is_empty()
            && self.confirmed_deleted == 0
            && self.found_not_deleted == 0
            && self.runs_closed == 0
            && self.left_open == 0
            && self.errors.is_empty()
    }
}

/// Whether an open attempt may be settled now, by someone other than its owner.
fn abandoned(a: &OpenAttempt, this_run: Option<i64>) -> bool {
    if a.run_id.is_some() && a.run_id == this_run {
        return false;
    }
    // A closed run left it open on purpose (an ambiguous answer); a row without a run
    // predates runs.
    a.run_finished || a.run_owner.as_deref().is_none_or(|o| owner::liveness(o) == Liveness::Gone)
}

/// Settles what interrupted passes left on `ex.repository`. `list` is the repository as
/// just listed, with the tags on the dummy already taken out into `leftovers`; `None` when
/// the repository no longer exists.
pub(super) async fn reconcile(ex: &Execution<'_>, list: Option<&TagList>, leftovers: &[String]) -> Reconciliation {
    let mut rec = Reconciliation::default();
    let ctx = ex.ctx;
    let attempts = match ctx.audit.open_attempts(&ex.registry, ex.repository) {
        Ok(a) => a,
        Err(e) => {
            rec.errors.push(format!("{e:#}"));
            Vec::new()
        }
    };
    // Open rows of removals found on the dummy: finished below with the dummy.
    let mut on_dummy: Vec<(String, i64)> = Vec::new();
    for a in &attempts {
        if !abandoned(a, ex.run_id) {
            rec.left_open += 1;
            continue;
        }
        let Some(list) = list else {
            ex.audit_resolve(a.id, AuditOutcome::Deleted, "confirmed after an interrupted pass: the repository no longer exists");
            rec.confirmed_deleted += 1;
            continue;
        };
        let tag = a.tags.first().map(String::as_str).unwrap_or_default();
        let gone = match a.operation.as_str() {
            "delete_manifest" => {
                let digest = match crate::model::Digest::parse(&a.digest) {
                    Ok(d) => d,
                    Err(e) => {
                        rec.errors.push(format!("audit row {}: {e:#}", a.id));
                        continue;
                    }
                };
                match ctx.backend.manifest_exists(ex.repository, &digest).await {
                    Ok(exists) => !exists,
                    Err(e) => {
                        rec.left_open += 1;
                        rec.errors.push(format!("checking {} left by an interrupted pass: {e}", a.digest));
                        continue;
                    }
                }
            }
            "delete_tag" | "untag_via_dummy" if leftovers.iter().any(|l| l == tag) => {
                on_dummy.push((tag.to_owned(), a.id));
                continue;
            }
            "delete_tag" | "untag_via_dummy" => !list.tags().iter().any(|t| t.name == tag),
            other => {
                rec.errors.push(format!("audit row {}: unknown operation `{other}`", a.id));
                continue;
            }
        };
        if gone {
            ex.audit_resolve(
                a.id,
                AuditOutcome::Deleted,
                "confirmed after an interrupted or ambiguous attempt: the registry no longer has it",
            );
            rec.confirmed_deleted += 1;
        } else {
            ex.audit_resolve(
                a.id,
                AuditOutcome::NotDeleted,
                "found undone after an interrupted or ambiguous attempt; the current policy decides again",
            );
            rec.found_not_deleted += 1;
        }
    }

    if !leftovers.is_empty() && list.is_some() {
        let mut ids: Vec<i64> = Vec::with_capacity(leftovers.len());
        for tag in leftovers {
            match on_dummy.iter().find(|(t, _)| t == tag) {
                Some((_, id)) => ids.push(*id),
                None => match ex.audit_attempt_as(AuditOperation::UntagViaDummy, &DIGEST, std::slice::from_ref(tag), FINISHER) {
                    Ok(id) => ids.push(id),
                    Err(e) => {
                        // No audit row, no deletion.
                        rec.errors.push(format!("{e:#}; tags on tagwarden's dummy manifest are removed by a later pass"));
                        ids.clear();
                        break;
                    }
                },
            }
        }
        if ids.len() == leftovers.len() {
            match ex.delete_dummy(&ids, "finished after an interrupted pass: the tag was on tagwarden's dummy manifest, now deleted").await
            {
                Done::Deleted { .. } => rec.finished_removals = leftovers.to_vec(),
                Done::Failed { message, .. } | Done::Unsettled { message } => {
                    rec.left_open += ids.len();
                    rec.errors.push(format!(
                        "finishing {} removals left on tagwarden's dummy manifest {}: {message}",
                        leftovers.len(),
                        *DIGEST
                    ));
                }
                Done::Skipped => unreachable!("the dummy is deleted whatever the budget"),
            }
        }
    }

    match ctx.runs.open(&ex.registry, ex.repository) {
        Ok(runs) => {
            for run in runs.iter().filter(|r| Some(r.id) != ex.run_id && owner::liveness(&r.owner) == Liveness::Gone) {
                let detail = "interrupted: its process is gone; its open deletions were checked against the registry by a later pass";
                match ctx.runs.close_interrupted(run.id, detail) {
                    Ok(()) => rec.runs_closed += 1,
                    Err(e) => rec.errors.push(format!("{e:#}")),
                }
            }
        }
        Err(e) => rec.errors.push(format!("{e:#}")),
    }
    if !rec.is_empty() {
        tracing::info!(
            repository = ex.repository,
            finished = rec.finished_removals.len(),
            confirmed_deleted = rec.confirmed_deleted,
            found_not_deleted = rec.found_not_deleted,
            runs_closed = rec.runs_closed,
            left_open = rec.left_open,
            "reconciled what interrupted passes left"
        );
    }
    rec
}
