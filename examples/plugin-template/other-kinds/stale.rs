//! `plugin-template`: a stale rule to start from.
//!
//! An operation running longer than `timeout` (or whose start the host never recorded) is
//! stale: a cleanup is marked unfinished, anything else rescheduled. Replace the rules with yours.

use tagwarden_plugin_sdk::params::Params;
use tagwarden_plugin_sdk::{Duration, Operation, OperationKind, StaleAction, StaleRule, StaleVerdict, export_stale};

/// Every param this plugin accepts; any other is refused, naming it.
const KNOWN_PARAMS: &[&str] = &["timeout"];

/// The rule, configured from the operator's params.
#[derive(Debug)]
pub struct Timeout {
    timeout: Duration,
}

impl StaleRule for Timeout {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, KNOWN_PARAMS)?;
        Ok(Timeout { timeout: params.duration("timeout", Duration::from_secs(3600), false)? })
    }

    fn check(&self, op: &Operation) -> StaleVerdict {
        let action = if op.kind == OperationKind::Cleanup { StaleAction::MarkUnfinished } else { StaleAction::Reschedule };
        match op.started_at {
            None => StaleVerdict::Stale { action, reason: "start time unknown".into() },
            Some(started) if op.now.duration_since(started) > self.timeout => {
                StaleVerdict::Stale { action, reason: format!("running for longer than {:?}", self.timeout) }
            }
            Some(_) => StaleVerdict::Healthy,
        }
    }
}

export_stale!(Timeout);

#[cfg(test)]
mod tests {
    use super::*;
    use tagwarden_plugin_sdk::testing::NOW;

    fn op(minutes: u64) -> Operation {
        Operation {
            kind: OperationKind::Cleanup,
            state: "cleanup_ongoing".into(),
            started_at: Some(NOW.saturating_sub(Duration::from_secs(minutes * 60))),
            now: NOW,
            delete_timeout: Duration::from_secs(1800),
            registry_status: None,
        }
    }

    #[test]
    fn stale_after_the_timeout() {
        let rule = Timeout::create(r#"{"timeout": "30m"}"#).unwrap();
        assert_eq!(rule.check(&op(10)), StaleVerdict::Healthy);
        assert!(matches!(rule.check(&op(31)), StaleVerdict::Stale { action: StaleAction::MarkUnfinished, .. }));
    }

    #[test]
    fn bad_params_say_which() {
        assert!(Timeout::create(r#"{"timeout": "0s"}"#).unwrap_err().starts_with("timeout: expected a duration greater than zero"));
    }
}
