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

    /// The value of `key`; an explicit `null` counts as not given, as in GitLab's API.
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

    /// A non-negative integer, also given as a string of digits (GitLab's API accepts `"5"`).
    pub(crate) fn count(&self, key: &str) -> Result<Option<u64>, String> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let parsed = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| expected(key, "a non-negative integer", value))
    }

    /// A duration string such as `7d`; returns the duration and the text as given.
    pub(crate) fn duration(&self, key: &str) -> Result<Option<(Duration, &str)>, String> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let Value::String(text) = value else {
            return Err(expected(key, DURATION_EXPECTED, value));
        };
        parse_duration(text)
            .map(|d| Some((d, text.trim())))
            .map_err(|what| expected(key, what, value))
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
    r#"a duration such as "7d", "14d", "1 day", "2 weeks", "1month" or "12h""#;

/// Parses a GitLab (ChronicDuration) style duration: one or more `<integer><unit>` parts,
/// optionally separated by spaces or commas, e.g. `7d`, `1 day`, `3months`, `1h 30m`.
///
/// `m` is minutes and a month is 30 days, a year 365 days, as in ChronicDuration. Unlike
/// ChronicDuration, a bare number without a unit is refused: `"7"` would mean 7 seconds,
/// which is never what a retention policy means.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        const MIN: u64 = 60;
        const DAY: u64 = 86_400;
        let ok: &[(&str, u64)] = &[
            ("7d", 7 * DAY),
            ("14d", 14 * DAY),
            ("30d", 30 * DAY),
            ("90d", 90 * DAY),
            ("1 day", DAY),
            ("2 days", 2 * DAY),
            ("1month", 30 * DAY),
            ("3months", 90 * DAY),
            ("1h", 60 * MIN),
            ("30m", 30 * MIN),
            ("1w", 7 * DAY),
            ("1y", 365 * DAY),
            ("1h 30m", 90 * MIN),
            ("1d,12h", DAY + 720 * MIN),
            ("  2 Weeks ", 14 * DAY),
            ("0d", 0),
            ("45s", 45),
        ];
        for &(text, secs) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "soon",
            "7",
            "d",
            "7 fortnights",
            "-7d",
            "1.5d",
            "7d!",
            "99999999999999y",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_duration("-7d"), Err("a non-negative duration"));
    }
}
