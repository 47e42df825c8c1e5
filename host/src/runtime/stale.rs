//! Stale-detection plugins: is an operation in progress abandoned?

use std::time::Duration;

use super::backoff::OperationKind;
use super::wire;
use super::{FailureCause, Plugin, PluginError};
use crate::model::Timestamp;

/// An operation the host's state says is in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub kind: OperationKind,
    /// The host's state name, e.g. `cleanup_ongoing`.
    pub state: String,
    pub started_at: Option<Timestamp>,
    pub now: Timestamp,
    pub delete_timeout: Duration,
    pub registry_status: Option<String>,
}

/// What to do with a stale operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaleAction {
    MarkUnfinished,
    Reschedule,
    Cancel,
    Abort,
}

/// A stale plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleVerdict {
    Healthy,
    Stale { action: StaleAction, reason: String },
}

/// A loaded plugin known to implement the stale world.
#[derive(Clone, Debug)]
pub struct StalePlugin {
    plugin: Plugin,
}

impl StalePlugin {
    pub(super) fn new(plugin: Plugin) -> Self {
        StalePlugin { plugin }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Judges one operation, in a fresh store.
    pub fn check(&self, params: &str, op: &Operation) -> Result<StaleVerdict, PluginError> {
        let started = std::time::Instant::now();
        let result = self.check_fresh(params, op);
        // Counted like evaluations: `plugins list` shows them, quarantine counts the faults.
        self.plugin.record_evaluation(result.as_ref().err());
        crate::metrics::get().plugin_call(&self.plugin.meta().name, "stale", result.as_ref().err().map(|e| &e.cause), started.elapsed());
        result
    }

    fn check_fresh(&self, params: &str, op: &Operation) -> Result<StaleVerdict, PluginError> {
        let input = wire::Operation {
            kind: op.kind.into(),
            state: &op.state,
            started_at: op.started_at.map(Timestamp::unix_micros),
            now: op.now.unix_micros(),
            limits: wire::Limits { delete_timeout: u64::try_from(op.delete_timeout.as_micros()).unwrap_or(u64::MAX) },
            registry_status: op.registry_status.as_deref(),
        };
        let answer = self.plugin.call(op.now, |store, pre| {
            let instance = pre.instance.instantiate(&mut *store)?;
            let handle = match pre.exports.create(store, &instance, params)? {
                Ok(handle) => handle,
                Err(message) => return Ok(Err(FailureCause::InvalidParams(message))),
            };
            Ok(Ok(pre.exports.call::<_, wire::Verdict>(store, &instance, handle, &input)?))
        })?;
        if let wire::Verdict::Stale(f) = &answer {
            self.plugin.check_reason(&f.reason)?;
        }
        Ok(match answer {
            wire::Verdict::Healthy => StaleVerdict::Healthy,
            wire::Verdict::Stale(f) => StaleVerdict::Stale {
                action: match f.action {
                    wire::StaleAction::MarkUnfinished => StaleAction::MarkUnfinished,
                    wire::StaleAction::Reschedule => StaleAction::Reschedule,
                    wire::StaleAction::Cancel => StaleAction::Cancel,
                    wire::StaleAction::Abort => StaleAction::Abort,
                },
                reason: f.reason,
            },
        })
    }
}
