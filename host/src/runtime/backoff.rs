//! Backoff plugins: when to retry a failed registry operation.

use std::time::Duration;

use super::wire::{self, OperationKind as WireKind};
use super::{FailureCause, Plugin, PluginError};
use crate::model::{ErrorClass, Timestamp};

/// What kind of registry operation failed or is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    Cleanup,
    TagDeletion,
    RepositoryDeletion,
    Import,
}

impl From<OperationKind> for WireKind {
    fn from(k: OperationKind) -> Self {
        match k {
            OperationKind::Cleanup => WireKind::Cleanup,
            OperationKind::TagDeletion => WireKind::TagDeletion,
            OperationKind::RepositoryDeletion => WireKind::RepositoryDeletion,
            OperationKind::Import => WireKind::Import,
        }
    }
}

/// One failed attempt, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub operation: OperationKind,
    /// Failures so far including this one (1 = first).
    pub attempt: u32,
    pub class: ErrorClass,
    pub http_status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// Must not contain credentials (registry errors never do).
    pub message: String,
    pub now: Timestamp,
    /// Jitter seed: derive it from the operation's identity.
    pub seed: u64,
}

/// A backoff plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackoffDecision {
    RetryAfter(Duration),
    GiveUp(String),
}

/// A loaded plugin known to implement the backoff world.
#[derive(Clone, Debug)]
pub struct BackoffPlugin {
    plugin: Plugin,
}

impl BackoffPlugin {
    pub(super) fn new(plugin: Plugin) -> Self {
        BackoffPlugin { plugin }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Asks the plugin what to do after `failure`, in a fresh store.
    pub fn decide(&self, params: &str, failure: &Failure) -> Result<BackoffDecision, PluginError> {
        let started = std::time::Instant::now();
        let result = self.decide_fresh(params, failure);
        // Counted like evaluations: `plugins list` shows them, quarantine counts the faults.
        self.plugin.record_evaluation(result.as_ref().err());
        crate::metrics::get().plugin_call(&self.plugin.meta().name, "backoff", result.as_ref().err().map(|e| &e.cause), started.elapsed());
        result
    }

    fn decide_fresh(&self, params: &str, failure: &Failure) -> Result<BackoffDecision, PluginError> {
        let input = wire::Failure {
            operation: failure.operation.into(),
            attempt: failure.attempt,
            class: match failure.class {
                ErrorClass::Transient => wire::ErrorClass::Transient,
                ErrorClass::RateLimited => wire::ErrorClass::RateLimited,
                ErrorClass::NotFound => wire::ErrorClass::NotFound,
                ErrorClass::Unauthorized => wire::ErrorClass::Unauthorized,
                ErrorClass::Timeout => wire::ErrorClass::Timeout,
                ErrorClass::Permanent => wire::ErrorClass::Permanent,
            },
            http_status: failure.http_status,
            retry_after: failure.retry_after.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            message: &failure.message,
            now: failure.now.unix_micros(),
            seed: failure.seed,
        };
        let answer = self.plugin.call(failure.now, |store, pre| {
            let instance = pre.instance.instantiate(&mut *store)?;
            let handle = match pre.exports.create(store, &instance, params)? {
                Ok(handle) => handle,
                Err(message) => return Ok(Err(FailureCause::InvalidParams(message))),
            };
            Ok(Ok(pre.exports.call::<_, wire::BackoffDecision>(store, &instance, handle, &input)?))
        })?;
        match answer {
            wire::BackoffDecision::RetryAfter(micros) => Ok(BackoffDecision::RetryAfter(Duration::from_micros(micros))),
            wire::BackoffDecision::GiveUp(reason) => self.plugin.check_reason(&reason).map(|()| BackoffDecision::GiveUp(reason)),
        }
    }
}
