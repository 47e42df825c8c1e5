//! What GitLab's API accepts beyond the SDK's params getters.

use tagwarden_plugin_sdk::Duration;
use tagwarden_plugin_sdk::params::{Params, Value, expected};

/// The examples in the error for a malformed duration param.
pub(crate) const DURATION_EXAMPLES: &str = r#""7d", "14d", "1 day", "2 weeks", "1month" or "12h""#;

/// GitLab-specific getters on the SDK's [`Params`].
pub(crate) trait GitlabParams {
    /// A non-negative integer, also given as a string of digits (GitLab's API accepts `"5"`).
    fn count(&self, key: &str) -> Result<Option<u64>, String>;

    /// A duration string such as `7d`, zero allowed; returns the duration and the text as given.
    fn duration_as_given(&self, key: &str) -> Result<Option<(Duration, &str)>, String>;
}

impl GitlabParams for Params {
    fn count(&self, key: &str) -> Result<Option<u64>, String> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let parsed = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
            _ => None,
        };
        // A whole number past u64 reaches here as a float (serde_json) or as digits that do
        // not parse: it is a non-negative integer, so say what the limit is instead.
        let too_large = match value {
            Value::Number(n) => n.as_f64().is_some_and(|f| f >= u64::MAX as f64),
            Value::String(s) => !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
            _ => false,
        };
        parsed.map(Some).ok_or_else(|| {
            if too_large {
                expected(key, &format!("a non-negative integer no larger than {}", u64::MAX), value)
            } else {
                expected(key, "a non-negative integer", value)
            }
        })
    }

    fn duration_as_given(&self, key: &str) -> Result<Option<(Duration, &str)>, String> {
        let Some(duration) = self.optional_duration(key, true)? else {
            return Ok(None);
        };
        let text = self.get(key).and_then(Value::as_str).unwrap_or_default();
        Ok(Some((duration, text.trim())))
    }
}
