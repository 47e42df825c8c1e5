//! A backoff plugin for the host's tests: it retries after a fixed `delay`, but panics on
//! every failure from attempt `panic_from_attempt` on. The host tries a backoff plugin
//! once at start with a first failure (attempt 1), so with `panic_from_attempt = 2` it
//! loads and is put in service, then faults on the first real retry: what a plugin with
//! a bug in a path its author never tried does. Its params are its own (`delay`,
//! `panic_from_attempt`), so configured with another plugin's params it rejects them, as
//! a new version that changed its params would.

use tagwarden_plugin_sdk::params::Params;
use tagwarden_plugin_sdk::{BackoffDecision, BackoffStrategy, Duration, Failure, export_backoff};

pub struct HostileBackoff {
    delay: Duration,
    panic_from_attempt: u32,
}

impl BackoffStrategy for HostileBackoff {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, &["delay", "panic_from_attempt"])?;
        Ok(HostileBackoff {
            delay: params.duration("delay", Duration::from_secs(1), false)?,
            panic_from_attempt: params.integer("panic_from_attempt", 1..=u32::MAX, 2)?,
        })
    }

    fn decide(&self, failure: &Failure) -> BackoffDecision {
        if failure.attempt >= self.panic_from_attempt {
            panic!("hostile-backoff: attempt {} (panic_from_attempt {})", failure.attempt, self.panic_from_attempt);
        }
        BackoffDecision::RetryAfter(self.delay)
    }
}

export_backoff!(HostileBackoff);
