//! `plugin-template`: a backoff strategy to start from.
//!
//! Waits `delay` after every failure and gives up after `max_attempts` failures; honours the
//! registry's `Retry-After` when it asks for longer. Replace the rules with yours.

use tagwarden_plugin_sdk::params::Params;
use tagwarden_plugin_sdk::{BackoffDecision, BackoffStrategy, Duration, Failure, export_backoff};

/// Every param this plugin accepts; any other is refused, naming it.
const KNOWN_PARAMS: &[&str] = &["delay", "max_attempts"];

/// The strategy, configured from the operator's params.
#[derive(Debug)]
pub struct FixedDelay {
    delay: Duration,
    max_attempts: u32,
}

impl BackoffStrategy for FixedDelay {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, KNOWN_PARAMS)?;
        Ok(FixedDelay {
            delay: params.duration("delay", Duration::from_secs(60), false)?,
            max_attempts: params.integer("max_attempts", 1..=1000, 5)?,
        })
    }

    fn decide(&self, failure: &Failure) -> BackoffDecision {
        if failure.attempt >= self.max_attempts {
            return BackoffDecision::GiveUp(format!("failed {} times", failure.attempt));
        }
        BackoffDecision::RetryAfter(failure.retry_after.map_or(self.delay, |asked| asked.max(self.delay)))
    }
}

export_backoff!(FixedDelay);

#[cfg(test)]
mod tests {
    use super::*;
    use tagwarden_plugin_sdk::testing::NOW;
    use tagwarden_plugin_sdk::{ErrorClass, OperationKind};

    fn failure(attempt: u32, retry_after: Option<Duration>) -> Failure {
        Failure {
            operation: OperationKind::Cleanup,
            attempt,
            class: ErrorClass::Transient,
            http_status: Some(503),
            retry_after,
            message: "unavailable".into(),
            now: NOW,
            seed: 7,
        }
    }

    #[test]
    fn retries_after_the_delay_then_gives_up() {
        let s = FixedDelay::create(r#"{"delay": "2m", "max_attempts": 3}"#).unwrap();
        assert_eq!(s.decide(&failure(1, None)), BackoffDecision::RetryAfter(Duration::from_secs(120)));
        assert_eq!(s.decide(&failure(1, Some(Duration::from_secs(600)))), BackoffDecision::RetryAfter(Duration::from_secs(600)));
        assert_eq!(s.decide(&failure(3, None)), BackoffDecision::GiveUp("failed 3 times".into()));
    }

    #[test]
    fn bad_params_say_which() {
        assert_eq!(FixedDelay::create(r#"{"max_attempts": 0}"#).unwrap_err(), "max_attempts: expected an integer from 1 to 1000, got 0");
    }
}
