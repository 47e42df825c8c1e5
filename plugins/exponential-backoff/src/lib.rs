//! `exponential-backoff`: when to retry a failed registry operation.
//!
//! With the default params it reproduces GitLab's repository-deletion retries: wait
//! 1, 2, 4, 8, ... minutes (`initial_delay * factor^(attempt-1)`) and give up when the
//! operation has failed `max_attempts` (10) times. On top of that it can cap the delay,
//! spread concurrent workers with seeded jitter, honour the registry's `Retry-After`,
//! and give up at once on errors that retrying cannot fix. See README.md.

use tagwarden_plugin_sdk::params::{self, Params};
use tagwarden_plugin_sdk::{BackoffDecision, BackoffStrategy, Duration, ErrorClass, Failure, SeededRng, export_backoff};

/// Every param this plugin accepts.
const KNOWN_PARAMS: &[&str] =
    &["initial_delay", "factor", "cap", "max_attempts", "jitter", "honor_retry_after", "give_up_on_permanent", "give_up_on_unauthorized"];

/// The examples in the error for a malformed duration param.
const DURATION_EXAMPLES: &str = r#""500ms", "30s", "1m", "2h", "1h 30m" or "1d""#;

/// The longest delay ever returned when no `cap` is set: the largest span a host
/// timestamp (`i64` microseconds) can add, about 292,000 years.
const MAX_DELAY: Duration = Duration::from_micros(i64::MAX as u64);

/// How the delay is randomised, so that workers that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jitter {
    /// The delay as computed.
    None,
    /// Uniform in `[0, delay]`.
    Full,
    /// `delay/2` plus uniform in `[0, delay/2]`.
    Equal,
}

/// An exponential backoff strategy configured with the operator's params.
#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    initial_delay: Duration,
    factor: f64,
    cap: Option<Duration>,
    max_attempts: u32,
    jitter: Jitter,
    honor_retry_after: bool,
    give_up_on_permanent: bool,
    give_up_on_unauthorized: bool,
}

impl BackoffStrategy for ExponentialBackoff {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, KNOWN_PARAMS)?.with_duration_examples(DURATION_EXAMPLES);
        let initial_delay = params.duration("initial_delay", Duration::from_secs(60), false)?;
        let cap = params.optional_duration("cap", false)?;
        if let Some(cap) = cap
            && cap < initial_delay
        {
            return Err(params::expected("cap", "a duration of at least initial_delay", params.get("cap").unwrap_or_default()));
        }
        let jitter = match params.choice("jitter", &["none", "full", "equal"], "none")? {
            "full" => Jitter::Full,
            "equal" => Jitter::Equal,
            _ => Jitter::None,
        };
        Ok(ExponentialBackoff {
            initial_delay,
            factor: params.number("factor", 1.0, 2.0)?,
            cap,
            max_attempts: params.integer("max_attempts", 1..=u32::MAX, 10)?,
            jitter,
            honor_retry_after: params.bool("honor_retry_after", true)?,
            give_up_on_permanent: params.bool("give_up_on_permanent", true)?,
            give_up_on_unauthorized: params.bool("give_up_on_unauthorized", false)?,
        })
    }

    fn decide(&self, failure: &Failure) -> BackoffDecision {
        if self.give_up_on_permanent && failure.class == ErrorClass::Permanent {
            return BackoffDecision::GiveUp(with_error("permanent error, not retried", failure));
        }
        if self.give_up_on_unauthorized && failure.class == ErrorClass::Unauthorized {
            return BackoffDecision::GiveUp(with_error("unauthorized, not retried (give_up_on_unauthorized)", failure));
        }
        if failure.attempt >= self.max_attempts {
            let summary = format!("failed {} times, max_attempts is {}", failure.attempt, self.max_attempts);
            return BackoffDecision::GiveUp(with_error(&summary, failure));
        }
        let delay = self.jittered(self.delay(failure.attempt), failure);
        let delay = match failure.retry_after {
            Some(asked) if self.honor_retry_after => delay.max(asked),
            _ => delay,
        };
        BackoffDecision::RetryAfter(delay)
    }
}

export_backoff!(ExponentialBackoff);

impl ExponentialBackoff {
    /// `initial_delay * factor^(attempt-1)`, at most `cap` (or [`MAX_DELAY`]). Attempt 0
    /// is treated as 1. Computed in floating point, which saturates instead of overflowing.
    fn delay(&self, attempt: u32) -> Duration {
        let limit = self.cap.unwrap_or(MAX_DELAY);
        let exponent = f64::from(attempt.saturating_sub(1));
        let micros = self.initial_delay.as_micros() as f64 * self.factor.powf(exponent);
        if micros < limit.as_micros() as f64 { Duration::from_micros(micros as u64) } else { limit }
    }

    /// Randomises `delay` with a generator seeded by the failure's seed and attempt: the
    /// same failure always gets the same delay, and successive attempts differ.
    fn jittered(&self, delay: Duration, failure: &Failure) -> Duration {
        let mut rng = SeededRng::new(failure.seed ^ u64::from(failure.attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let jittered = match self.jitter {
            Jitter::None => micros,
            Jitter::Full => uniform_up_to(&mut rng, micros),
            Jitter::Equal => micros / 2 + uniform_up_to(&mut rng, micros - micros / 2),
        };
        Duration::from_micros(jittered)
    }
}

/// A uniformly distributed integer in `[0, max]` (Lemire's multiply-shift, no modulo bias
/// worth mentioning and no overflow).
fn uniform_up_to(rng: &mut SeededRng, max: u64) -> u64 {
    ((u128::from(rng.next_u64()) * (u128::from(max) + 1)) >> 64) as u64
}

/// `<summary>: HTTP <status>: <message>`, leaving out what is unknown.
fn with_error(summary: &str, failure: &Failure) -> String {
    let mut reason = summary.to_owned();
    if let Some(status) = failure.http_status {
        reason.push_str(&format!(": HTTP {status}"));
    }
    if !failure.message.is_empty() {
        reason.push_str(": ");
        reason.push_str(&failure.message);
    }
    reason
}

#[cfg(test)]
mod tests;
