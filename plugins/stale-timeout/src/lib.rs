//! `stale-timeout`: finds operations whose worker has most likely died, by how long they
//! have been running, and says what to do with them.
//!
//! | kind | stale when started before `now -` | action |
//! |---|---|---|
//! | cleanup | `delete_timeout + cleanup_grace` | mark unfinished (resume later) |
//! | tag / repository deletion | `deletion_timeout` | reschedule (no failure counted) |
//! | import | `import_timeout` | cancel if the registry still imports, else abort |
//!
//! An operation with no recorded start time is stale: nothing proves it is still running,
//! and leaving it would block it forever (GitLab's seed 002). Exactly at the threshold
//! is still healthy: stale means strictly before. See README.md.

use std::fmt::Write;

use tagwarden_plugin_sdk::params::Params;
use tagwarden_plugin_sdk::{Duration, Operation, OperationKind, StaleAction, StaleRule, StaleVerdict, Timestamp, export_stale};

/// Every param this plugin accepts.
const KNOWN_PARAMS: &[&str] = &["cleanup_grace", "deletion_timeout", "import_timeout"];

/// The examples in the error for a malformed duration param.
const DURATION_EXAMPLES: &str = r#""30m", "1h", "1h 30m", "90s" or "1d""#;

/// Registry import statuses that mean the registry is still working on it.
const IMPORT_IN_PROGRESS: &[&str] = &["pre_import_in_progress", "import_in_progress"];

/// Timeout-based stale detection configured with the operator's params.
#[derive(Debug, Clone)]
pub struct StaleTimeout {
    /// Added to the host's `delete_timeout` for cleanups: time to finish after deleting stopped.
    cleanup_grace: Duration,
    deletion_timeout: Duration,
    import_timeout: Duration,
}

impl StaleRule for StaleTimeout {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, KNOWN_PARAMS)?.with_duration_examples(DURATION_EXAMPLES);
        Ok(StaleTimeout {
            cleanup_grace: params.duration("cleanup_grace", Duration::from_secs(30 * 60), true)?,
            deletion_timeout: params.duration("deletion_timeout", Duration::from_secs(30 * 60), false)?,
            import_timeout: params.duration("import_timeout", Duration::from_secs(60 * 60), false)?,
        })
    }

    fn check(&self, op: &Operation) -> StaleVerdict {
        match op.kind {
            OperationKind::Cleanup => {
                let limit = op.delete_timeout.saturating_add(self.cleanup_grace);
                let threshold = || format!("delete_timeout {} + cleanup_grace {}", human(op.delete_timeout), human(self.cleanup_grace));
                match overdue("cleanup", op, limit, threshold) {
                    Some(reason) => StaleVerdict::Stale { action: StaleAction::MarkUnfinished, reason },
                    None => StaleVerdict::Healthy,
                }
            }
            OperationKind::TagDeletion | OperationKind::RepositoryDeletion => {
                let what = if op.kind == OperationKind::TagDeletion { "tag deletion" } else { "repository deletion" };
                let threshold = || format!("deletion_timeout {}", human(self.deletion_timeout));
                match overdue(what, op, self.deletion_timeout, threshold) {
                    Some(reason) => StaleVerdict::Stale { action: StaleAction::Reschedule, reason },
                    None => StaleVerdict::Healthy,
                }
            }
            OperationKind::Import => {
                let threshold = || format!("import_timeout {}", human(self.import_timeout));
                let Some(mut reason) = overdue("import", op, self.import_timeout, threshold) else {
                    return StaleVerdict::Healthy;
                };
                // Cancel only what the registry is still doing; anything else is aborted locally.
                let action = match op.registry_status.as_deref().filter(|s| !s.is_empty()) {
                    Some(status) => {
                        let _ = write!(reason, "; the registry reports {status}");
                        if IMPORT_IN_PROGRESS.contains(&status) { StaleAction::Cancel } else { StaleAction::Abort }
                    }
                    None => {
                        reason.push_str("; the registry status is unknown");
                        StaleAction::Abort
                    }
                };
                StaleVerdict::Stale { action, reason }
            }
        }
    }
}

export_stale!(StaleTimeout);

/// The reason `op` is stale when it started strictly before `now - limit` or has no
/// recorded start; `None` while it is within its limit.
fn overdue(what: &str, op: &Operation, limit: Duration, threshold: impl FnOnce() -> String) -> Option<String> {
    let Some(started_at) = op.started_at else {
        return Some(format!("{what} has no recorded start time"));
    };
    let deadline: Timestamp = op.now.saturating_sub(limit);
    (started_at < deadline).then(|| format!("{what} has run for {}, longer than {}", human(op.now.duration_since(started_at)), threshold()))
}

/// A duration for operators: `1d2h`, `4m10s`, `250ms`, `0s`. Whole seconds from one second up.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return if d.is_zero() { "0s".to_owned() } else { format!("{}ms", d.as_millis().max(1)) };
    }
    let mut out = String::new();
    for (n, unit) in [(secs / 86_400, "d"), (secs / 3_600 % 24, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests;
