//! Reading the operator's params: a JSON object whose every error names the param and
//! says what was expected.

use serde_json::{Map, Value};
use tagwarden_plugin_sdk::Duration;

/// The params object, checked against the list of known keys.
pub(crate) struct Params {
    map: Map<String, Value>,
}

impl Params {
    /// Parses `text` as a JSON object and rejects keys not in `known`.
    pub(crate) fn parse(text: &str, known: &[&str]) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("params: expected a JSON object, could not parse it: {e}"))?;
        let Value::Object(map) = value else {
            return Err(format!(
                "params: expected a JSON object, got {}",
                shown(&value)
            ));
        };
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| format!("{k:?}"))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "unknown param {}; known params are {}",
                unknown.join(", "),
                known.join(", ")
            ));
        }
        Ok(Params { map })
    }

    /// The value of `key`; an explicit `null` counts as not given.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(expected(key, "true or false", other)),
        }
    }

    /// A number at least `min`.
    pub(crate) fn number(&self, key: &str, min: f64, default: f64) -> Result<f64, String> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        match value.as_f64() {
            Some(x) if x.is_finite() && x >= min => Ok(x),
            _ => Err(expected(key, &format!("a number of at least {min}"), value)),
        }
    }

    /// An integer in `min..=u32::MAX`.
    pub(crate) fn integer(&self, key: &str, min: u32, default: u32) -> Result<u32, String> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n >= min => Ok(n),
            _ => Err(expected(
                key,
                &format!("an integer from {min} to {}", u32::MAX),
                value,
            )),
        }
    }

    /// One of `choices`.
    pub(crate) fn choice<'c>(
        &self,
        key: &str,
        choices: &[&'c str],
        default: &'c str,
    ) -> Result<&'c str, String> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        let found = value
            .as_str()
            .and_then(|s| choices.iter().find(|c| **c == s));
        found.copied().ok_or_else(|| {
            expected(
                key,
                &format!("one of \"{}\"", choices.join("\", \"")),
                value,
            )
        })
    }

    /// A positive duration string such as `30s`, `1m` or `24h`.
    pub(crate) fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let Value::String(text) = value else {
            return Err(expected(key, DURATION_EXPECTED, value));
        };
        match parse_duration(text) {
            Ok(d) if d.is_zero() => Err(expected(key, "a duration greater than zero", value)),
            Ok(d) => Ok(Some(d)),
            Err(what) => Err(expected(key, what, value)),
        }
    }
}

/// `<key>: expected <what>, got <value as JSON>`.
pub(crate) fn expected(key: &str, what: &str, got: &Value) -> String {
    format!("{key}: expected {what}, got {}", shown(got))
}

/// A value as JSON, shortened so that a huge param cannot flood the message.
fn shown(value: &Value) -> String {
    const MAX: usize = 80;
    let mut text = value.to_string();
    if text.len() > MAX {
        let cut = (0..=MAX)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

const TOO_LONG: &str = "a duration that fits in 64-bit microseconds (about 584000 years)";
const DURATION_EXPECTED: &str =
    r#"a duration such as "500ms", "30s", "1m", "2h", "1h 30m" or "1d""#;

/// Parses a duration: one or more `<integer><unit>` parts, optionally separated by spaces
/// or commas, e.g. `30s`, `1m`, `24h`, `1h 30m`. `m` is minutes; a month is 30 days and
/// a year 365 days, as in GitLab's ChronicDuration. A bare number without a unit is refused.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err("a non-negative duration");
    }
    let mut rest = text;
    let mut total: u64 = 0;
    let mut parts = 0;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| DURATION_EXPECTED)?;
        rest = rest[digits..].trim_start();
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = unit_micros(&rest[..letters].to_ascii_lowercase()).ok_or(DURATION_EXPECTED)?;
        rest = &rest[letters..];
        let part = number.checked_mul(unit).ok_or(TOO_LONG)?;
        total = total.checked_add(part).ok_or(TOO_LONG)?;
        parts += 1;
    }
    if parts == 0 {
        return Err(DURATION_EXPECTED);
    }
    Ok(Duration::from_micros(total))
}

fn unit_micros(unit: &str) -> Option<u64> {
    const SECOND: u64 = 1_000_000;
    const DAY: u64 = 86_400 * SECOND;
    Some(match unit {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1_000,
        "s" | "sec" | "secs" | "second" | "seconds" => SECOND,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * SECOND,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600 * SECOND,
        "d" | "day" | "days" => DAY,
        "w" | "wk" | "wks" | "week" | "weeks" => 7 * DAY,
        "mo" | "mon" | "mons" | "month" | "months" => 30 * DAY,
        "y" | "yr" | "yrs" | "year" | "years" => 365 * DAY,
        _ => return None,
    })
}
