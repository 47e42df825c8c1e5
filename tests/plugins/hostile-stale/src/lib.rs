//! A stale plugin for the host's tests: it judges every operation healthy, but panics on
//! any operation that has run for `panic_after` or longer. The host tries a stale plugin
//! once at start with a cleanup that has just started, so it loads and is put in service,
//! then faults on the first check of work that runs long: what a plugin with a bug in a path
//! its author never tried does.

use tagwarden_plugin_sdk::params::Params;
use tagwarden_plugin_sdk::{Duration, Operation, StaleRule, StaleVerdict, export_stale};

pub struct HostileStale {
    panic_after: Duration,
}

impl StaleRule for HostileStale {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, &["panic_after"])?;
        Ok(HostileStale { panic_after: params.duration("panic_after", Duration::from_secs(1), false)? })
    }

    fn check(&self, op: &Operation) -> StaleVerdict {
        let age = op.started_at.map(|t| op.now.duration_since(t));
        if age.is_some_and(|age| age >= self.panic_after) {
            panic!("hostile-stale: an operation {:?} old (panic_after {:?})", age.unwrap_or_default(), self.panic_after);
        }
        StaleVerdict::Healthy
    }
}

export_stale!(HostileStale);
