//! Retry and backoff decisions.

use crate::{Duration, OperationKind, Timestamp};

/// How the host classified a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Connection reset, 5xx, or another error that may pass.
    Transient,
    /// The registry asked to slow down (429).
    RateLimited,
    /// The thing operated on does not exist (404).
    NotFound,
    /// Credentials missing, wrong, or lacking a permission (401, 403).
    Unauthorized,
    /// No answer in time.
    Timeout,
    /// Retrying cannot help (e.g. deletes disabled).
    Permanent,
}

/// One failed attempt of a registry operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub operation: OperationKind,
    /// How many times the operation has failed, counting this one (1 = first failure).
    pub attempt: u32,
    pub class: ErrorClass,
    pub http_status: Option<u16>,
    /// The delay the registry asked for in `Retry-After`.
    pub retry_after: Option<Duration>,
    pub message: String,
    pub now: Timestamp,
    /// Seed for jitter: same failure, same answer. See [`crate::SeededRng`].
    pub seed: u64,
}

/// What to do after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackoffDecision {
    /// Try again after this long.
    RetryAfter(Duration),
    /// Stop retrying; the reason is stored and shown to operators.
    GiveUp(String),
}

/// A retry/backoff strategy. Implement it and export it with [`crate::export_backoff!`].
pub trait BackoffStrategy: Sized + 'static {
    /// Validates the operator's params (JSON text) and prepares the strategy.
    fn create(params: &str) -> Result<Self, String>;

    /// Decides what to do after `failure`.
    fn decide(&self, failure: &Failure) -> BackoffDecision;
}

#[doc(hidden)]
pub mod wire {
    use super::*;
    use crate::bindings::backoff::exports::tagwarden::policy::backoff as w;
    use crate::bindings::backoff::tagwarden::policy::types::OperationKind as WireKind;

    /// The resource representation behind the exported `strategy`.
    pub struct StrategyResource<S>(pub S);

    impl<S: BackoffStrategy> w::GuestStrategy for StrategyResource<S> {
        fn create(params: String) -> Result<w::Strategy, String> {
            let _call = crate::panic::Call::enter("create");
            S::create(&params).map(|s| w::Strategy::new(StrategyResource(s)))
        }

        fn decide(&self, f: w::Failure) -> w::Decision {
            let _call = crate::panic::Call::enter("decide");
            match self.0.decide(&decode(f)) {
                BackoffDecision::RetryAfter(d) => w::Decision::RetryAfter(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                BackoffDecision::GiveUp(reason) => w::Decision::GiveUp(reason),
            }
        }
    }

    pub(crate) fn kind(k: WireKind) -> OperationKind {
        match k {
            WireKind::Cleanup => OperationKind::Cleanup,
            WireKind::TagDeletion => OperationKind::TagDeletion,
            WireKind::RepositoryDeletion => OperationKind::RepositoryDeletion,
            WireKind::Import => OperationKind::Import,
        }
    }

    fn decode(f: w::Failure) -> Failure {
        Failure {
            operation: kind(f.operation),
            attempt: f.attempt,
            class: match f.class {
                w::ErrorClass::Transient => ErrorClass::Transient,
                w::ErrorClass::RateLimited => ErrorClass::RateLimited,
                w::ErrorClass::NotFound => ErrorClass::NotFound,
                w::ErrorClass::Unauthorized => ErrorClass::Unauthorized,
                w::ErrorClass::Timeout => ErrorClass::Timeout,
                w::ErrorClass::Permanent => ErrorClass::Permanent,
            },
            http_status: f.http_status,
            retry_after: f.retry_after.map(Duration::from_micros),
            message: f.message,
            now: Timestamp::from_unix_micros(f.now),
            seed: f.seed,
        }
    }
}

/// Exports a [`BackoffStrategy`] as this component's `backoff` interface.
#[macro_export]
macro_rules! export_backoff {
    ($strategy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::backoff::exports::tagwarden::policy as __exports;
            struct __TagwardenBackoffPlugin;
            impl __exports::backoff::Guest for __TagwardenBackoffPlugin {
                fn info() -> $crate::bindings::backoff::tagwarden::policy::types::PluginInfo {
                    $crate::bindings::backoff::tagwarden::policy::types::PluginInfo {
                        name: env!("CARGO_PKG_NAME").into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        description: env!("CARGO_PKG_DESCRIPTION").into(),
                    }
                }
                type Strategy = $crate::__backoff_wire::StrategyResource<$strategy>;
            }
    $crate::bindings::backoff::__export_backoff_world!(__TagwardenBackoffPlugin with_types_in $crate::bindings::backoff);
        };
    };
}
