//! Stale-operation detection.

use crate::{Duration, OperationKind, Timestamp};

/// An operation the host's state says is in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub kind: OperationKind,
    /// The host's state name, e.g. `cleanup_ongoing`, `delete_ongoing`, `importing`.
    pub state: String,
    /// When it started; `None` when the host never recorded it.
    pub started_at: Option<Timestamp>,
    pub now: Timestamp,
    /// How long one deletion pass may run before it stops by itself.
    pub delete_timeout: Duration,
    /// What the registry itself reports, when it was asked.
    pub registry_status: Option<String>,
}

/// What to do with a stale operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaleAction {
    /// Record it as unfinished so it is resumed later (cleanups).
    MarkUnfinished,
    /// Put it back in the queue without counting a failure (deletions).
    Reschedule,
    /// Ask the registry to cancel it (imports).
    Cancel,
    /// Record it as aborted, counting a retry.
    Abort,
}

/// The answer for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleVerdict {
    /// Still plausibly running.
    Healthy,
    /// Abandoned: take `action`, for `reason`.
    Stale { action: StaleAction, reason: String },
}

/// A stale-detection rule. Implement it and export it with [`crate::export_stale!`].
pub trait StaleRule: Sized + 'static {
    /// Validates the operator's params (JSON text) and prepares the rule.
    fn create(params: &str) -> Result<Self, String>;

    /// Judges one operation.
    fn check(&self, operation: &Operation) -> StaleVerdict;
}

#[doc(hidden)]
pub mod wire {
    use super::*;
    use crate::bindings::stale::exports::tagwarden::policy::stale as w;
    use crate::bindings::stale::tagwarden::policy::types::OperationKind as WireKind;

    /// The resource representation behind the exported `rule`.
    pub struct RuleResource<R>(pub R);

    impl<R: StaleRule> w::GuestRule for RuleResource<R> {
        fn create(params: String) -> Result<w::Rule, String> {
            let _call = crate::panic::Call::enter("create");
            R::create(&params).map(|r| w::Rule::new(RuleResource(r)))
        }

        fn check(&self, op: w::Operation) -> w::Verdict {
            let _call = crate::panic::Call::enter("check");
            let op = Operation {
                kind: match op.kind {
                    WireKind::Cleanup => OperationKind::Cleanup,
                    WireKind::TagDeletion => OperationKind::TagDeletion,
                    WireKind::RepositoryDeletion => OperationKind::RepositoryDeletion,
                    WireKind::Import => OperationKind::Import,
                },
                state: op.state,
                started_at: op.started_at.map(Timestamp::from_unix_micros),
                now: Timestamp::from_unix_micros(op.now),
                delete_timeout: Duration::from_micros(op.limits.delete_timeout),
                registry_status: op.registry_status,
            };
            match self.0.check(&op) {
                StaleVerdict::Healthy => w::Verdict::Healthy,
                StaleVerdict::Stale { action, reason } => w::Verdict::Stale(w::StaleFinding {
                    action: match action {
                        StaleAction::MarkUnfinished => w::StaleAction::MarkUnfinished,
                        StaleAction::Reschedule => w::StaleAction::Reschedule,
                        StaleAction::Cancel => w::StaleAction::Cancel,
                        StaleAction::Abort => w::StaleAction::Abort,
                    },
                    reason,
                }),
            }
        }
    }
}

/// Exports a [`StaleRule`] as this component's `stale` interface.
#[macro_export]
macro_rules! export_stale {
    ($rule:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::stale::exports::tagwarden::policy as __exports;
            struct __TagwardenStalePlugin;
            impl __exports::stale::Guest for __TagwardenStalePlugin {
                fn info() -> $crate::bindings::stale::tagwarden::policy::types::PluginInfo {
                    $crate::bindings::stale::tagwarden::policy::types::PluginInfo {
                        name: env!("CARGO_PKG_NAME").into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        description: env!("CARGO_PKG_DESCRIPTION").into(),
                    }
                }
                type Rule = $crate::__stale_wire::RuleResource<$rule>;
            }
    $crate::bindings::stale::__export_stale_world!(__TagwardenStalePlugin with_types_in $crate::bindings::stale);
        };
    };
}
