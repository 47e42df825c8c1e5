//! Reading the operator's params: a JSON object whose every error names the param and
//! says what was expected.
//!
//! A plugin's `create` receives its params as JSON text (`{}` when the operator gave
//! none). [`Params::parse`] checks that the text is a JSON object whose keys are all
//! known to the plugin; the typed getters then read one key each. A missing key and an
//! explicit `null` both mean "not given" and yield the default. A value of the wrong kind
//! yields an error of the form
//!
//! ```text
//! <key>: expected <what>, got <value as JSON>
//! ```
//!
//! which `create` returns as is: the host shows it to the operator, prefixed with the
//! plugin's name.
//!
//! | getter                          | accepts                                           | `<what>` in the error                      |
//! |---------------------------------|---------------------------------------------------|--------------------------------------------|
//! | [`bool`](Params::bool)          | `true`, `false`                                   | `true or false`                            |
//! | [`number`](Params::number)      | a finite JSON number of at least `min`            | `a number of at least <min>`               |
//! | [`integer`](Params::integer)    | a JSON integer in a range                         | `an integer from <start> to <end>`         |
//! | [`choice`](Params::choice)      | one of a list of strings                          | `one of "a", "b"`                          |
//! | [`string`](Params::string)      | any JSON string                                   | `a string`                                 |
//! | [`strings`](Params::strings)    | a JSON list of strings (`[]` included)            | `a list of strings`; `a string` for `<key>[<i>]` |
//! | [`duration`](Params::duration), [`optional_duration`](Params::optional_duration) | a duration string, see [`parse_duration`] | `a duration such as …`, `a non-negative duration`, `a duration greater than zero` |
//!
//! For anything else, read the raw value with [`Params::get`] and build the error with
//! [`expected`], so that it reads like the others.
//!
//! ```
//! use tagwarden_plugin_sdk::Duration;
//! use tagwarden_plugin_sdk::params::{Params, expected};
//!
//! const KNOWN_PARAMS: &[&str] = &["timeout", "max_attempts", "jitter", "verbose"];
//!
//! let params = Params::parse(r#"{"timeout": "1h 30m", "max_attempts": 5, "verbose": null}"#, KNOWN_PARAMS)?;
//! assert_eq!(params.duration("timeout", Duration::from_secs(60), false)?, Duration::from_secs(90 * 60));
//! assert_eq!(params.integer("max_attempts", 1..=100, 10)?, 5);
//! assert_eq!(params.choice("jitter", &["none", "full"], "none")?, "none");
//! assert_eq!(params.bool("verbose", false)?, false);
//!
//! let params = Params::parse(r#"{"max_attempts": 0}"#, KNOWN_PARAMS)?;
//! let err = params.integer("max_attempts", 1..=100, 10).unwrap_err();
//! assert_eq!(err, "max_attempts: expected an integer from 1 to 100, got 0");
//!
//! let err = Params::parse(r#"{"timeot": "1h"}"#, KNOWN_PARAMS).err().unwrap();
//! assert_eq!(err, r#"unknown param "timeot"; known params are timeout, max_attempts, jitter, verbose"#);
//!
//! // A check of your own, worded like the getters' errors.
//! let params = Params::parse(r#"{"max_attempts": 13}"#, KNOWN_PARAMS)?;
//! if params.integer("max_attempts", 1..=100, 10)? == 13 {
//!     let err = expected("max_attempts", "a lucky number", params.get("max_attempts").unwrap());
//!     assert_eq!(err, "max_attempts: expected a lucky number, got 13");
//! }
//! # Ok::<(), String>(())
//! ```

use std::borrow::Cow;
use std::ops::RangeInclusive;

use core::time::Duration;
use serde_json::Map;
pub use serde_json::Value;

/// The operator's params: a JSON object checked against the keys the plugin knows.
///
/// See the [module documentation](self) for the getters and their errors.
#[derive(Debug, Clone)]
pub struct Params {
    map: Map<String, Value>,
    duration_examples: Option<&'static str>,
}

impl Params {
    /// Parses `text` as a JSON object and rejects every key not in `known`, and every key
    /// given twice, at any depth (JSON parsers differ on which of the two wins; serde_json
    /// would keep the last silently).
    ///
    /// Errors: `params: expected a JSON object, could not parse it: <serde error>`,
    /// `params: expected a JSON object, got <value>`,
    /// `params: the key "a" is given twice at line L column C`, or
    /// `unknown param "a", "b"; known params are <known, comma-separated>`.
    pub fn parse(text: &str, known: &[&str]) -> Result<Self, String> {
        let value = without_duplicate_keys(text).map_err(|e| {
            if e.is_data() { format!("params: {e}") } else { format!("params: expected a JSON object, could not parse it: {e}") }
        })?;
        let Value::Object(map) = value else {
            return Err(format!("params: expected a JSON object, got {}", shown(&value)));
        };
        let unknown: Vec<String> = map.keys().filter(|k| !known.contains(&k.as_str())).map(|k| format!("{k:?}")).collect();
        if !unknown.is_empty() {
            return Err(format!("unknown param {}; known params are {}", unknown.join(", "), known.join(", ")));
        }
        Ok(Params { map, duration_examples: None })
    }

    /// Replaces the examples in the error for a malformed duration, so that they suit the
    /// plugin's params: `examples` goes after `expected a duration such as `, e.g.
    /// `"7d", "2 weeks" or "1month"` (quotes included). Without it the examples are
    /// those of [`parse_duration`]'s error.
    pub fn with_duration_examples(mut self, examples: &'static str) -> Self {
        self.duration_examples = Some(examples);
        self
    }

    /// The raw value of `key`; `None` when it is missing or an explicit `null`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// `true` or `false`; `default` when not given.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(expected(key, "true or false", other)),
        }
    }

    /// A finite JSON number (integer or not) of at least `min`; `default` when not given.
    /// A number in a string, such as `"2"`, is refused.
    pub fn number(&self, key: &str, min: f64, default: f64) -> Result<f64, String> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        match value.as_f64() {
            Some(x) if x.is_finite() && x >= min => Ok(x),
            _ => Err(expected(key, &format!("a number of at least {min}"), value)),
        }
    }

    /// A JSON integer within `range`; `default` (not checked against `range`) when not
    /// given. `2.5`, `"2"` and numbers outside the range are refused.
    pub fn integer(&self, key: &str, range: RangeInclusive<u32>, default: u32) -> Result<u32, String> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if range.contains(&n) => Ok(n),
            _ => Err(expected(key, &format!("an integer from {} to {}", range.start(), range.end()), value)),
        }
    }

    /// One of the strings in `choices`, compared exactly; `default` when not given.
    pub fn choice<'c>(&self, key: &str, choices: &[&'c str], default: &'c str) -> Result<&'c str, String> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        let found = value.as_str().and_then(|s| choices.iter().find(|c| **c == s));
        found.copied().ok_or_else(|| expected(key, &format!("one of \"{}\"", choices.join("\", \"")), value))
    }

    /// Any JSON string, as given; `None` when not given.
    pub fn string(&self, key: &str) -> Result<Option<&str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(expected(key, "a string", other)),
        }
    }

    /// A JSON list of strings, in the order given; empty when not given. A value that
    /// is not a list is refused as `<key>: expected a list of strings, got …`, an element
    /// that is not a string as `<key>[<i>]: expected a string, got …`.
    ///
    /// ```
    /// # use tagwarden_plugin_sdk::params::Params;
    /// let params = Params::parse(r#"{"deployed": ["v1.2.0", "v1.3.1"]}"#, &["deployed", "protected"])?;
    /// assert_eq!(params.strings("deployed")?, ["v1.2.0", "v1.3.1"]);
    /// assert!(params.strings("protected")?.is_empty());
    /// # Ok::<(), String>(())
    /// ```
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, String> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| item.as_str().ok_or_else(|| expected(&format!("{key}[{i}]"), "a string", item)))
                .collect(),
            Some(other) => Err(expected(key, "a list of strings", other)),
        }
    }

    /// A duration string as read by [`parse_duration`]; `default` when not given.
    ///
    /// A zero duration (`"0s"`, `"0d"`) is accepted only when `allow_zero`; otherwise the
    /// error says `expected a duration greater than zero`.
    pub fn duration(&self, key: &str, default: Duration, allow_zero: bool) -> Result<Duration, String> {
        Ok(self.optional_duration(key, allow_zero)?.unwrap_or(default))
    }

    /// Like [`duration`](Params::duration), but `None` when not given, for params whose
    /// absence means something else than a default value (e.g. "no cap").
    pub fn optional_duration(&self, key: &str, allow_zero: bool) -> Result<Option<Duration>, String> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let parsed = match value {
            Value::String(text) => parse(text),
            _ => Err(DurationError::Malformed),
        };
        match parsed {
            Ok(d) if d.is_zero() && !allow_zero => Err(expected(key, "a duration greater than zero", value)),
            Ok(d) => Ok(Some(d)),
            Err(DurationError::Malformed) => Err(expected(key, &self.duration_expected(), value)),
            Err(error) => Err(expected(key, error.expected(), value)),
        }
    }

    /// What a malformed duration was expected to be, with this plugin's examples.
    fn duration_expected(&self) -> Cow<'static, str> {
        match self.duration_examples {
            None => Cow::Borrowed(DURATION_EXPECTED),
            Some(examples) => Cow::Owned(format!("a duration such as {examples}")),
        }
    }
}

/// Parses JSON text into a [`Value`], refusing an object that gives a key twice.
fn without_duplicate_keys(text: &str) -> Result<Value, serde_json::Error> {
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    struct Strict(Value);

    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor).map(Strict)
        }
    }

    struct StrictVisitor;

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Strict(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(A::Error::custom(format!("the key {key:?} is given twice")));
                }
                let Strict(v) = map.next_value()?;
                out.insert(key, v);
            }
            Ok(Value::Object(out))
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    let Strict(value) = Strict::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The error `<key>: expected <what>, got <value as JSON>`, as the getters word it.
///
/// The value is shown as JSON (strings in quotes) and cut after 80 bytes, so that a huge
/// param cannot flood the operator's terminal.
pub fn expected(key: &str, what: &str, got: &Value) -> String {
    format!("{key}: expected {what}, got {}", shown(got))
}

/// A value as JSON, shortened so that a huge param cannot flood the message.
fn shown(value: &Value) -> String {
    const MAX: usize = 80;
    let mut text = value.to_string();
    if text.len() > MAX {
        let cut = (0..=MAX).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

const DURATION_EXPECTED: &str = r#"a duration such as "30s", "1m", "2h", "1h 30m" or "7d""#;
const NEGATIVE: &str = "a non-negative duration";
const TOO_LONG: &str = "a duration that fits in 64-bit microseconds (about 584000 years)";

/// Why a duration string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DurationError {
    /// Not `<integer><unit>` parts: the caller may word the examples.
    Malformed,
    Negative,
    TooLong,
}

impl DurationError {
    fn expected(self) -> &'static str {
        match self {
            DurationError::Malformed => DURATION_EXPECTED,
            DurationError::Negative => NEGATIVE,
            DurationError::TooLong => TOO_LONG,
        }
    }
}

/// Parses a duration in the style of GitLab's ChronicDuration: one or more
/// `<integer><unit>` parts, optionally separated by spaces or commas, such as `30s`, `7d`,
/// `1 day`, `3months`, `1h 30m` or `1d,12h`. Units are case-insensitive:
///
/// | unit         | spellings                                                |
/// |--------------|----------------------------------------------------------|
/// | millisecond  | `ms`, `msec`, `msecs`, `millisecond`, `milliseconds`     |
/// | second       | `s`, `sec`, `secs`, `second`, `seconds`                  |
/// | minute       | `m`, `min`, `mins`, `minute`, `minutes`                  |
/// | hour         | `h`, `hr`, `hrs`, `hour`, `hours`                        |
/// | day          | `d`, `day`, `days`                                       |
/// | week (7 d)   | `w`, `wk`, `wks`, `week`, `weeks`                        |
/// | month (30 d) | `mo`, `mon`, `mons`, `month`, `months`                   |
/// | year (365 d) | `y`, `yr`, `yrs`, `year`, `years`                        |
///
/// `m` is minutes, never months. Unlike ChronicDuration, a bare number without a unit is
/// refused: `"7"` would mean 7 seconds, which is rarely what an operator means. Fractions
/// (`1.5d`), signs and trailing text are refused too; zero (`0s`) is accepted, see
/// [`Params::duration`] to refuse it.
///
/// On error, returns what was expected, to go after `expected` in a message (see
/// [`expected`]): `a duration such as …`, `a non-negative duration`, or, past about
/// 584,000 years, `a duration that fits in 64-bit microseconds …`.
///
/// ```
/// use tagwarden_plugin_sdk::Duration;
/// use tagwarden_plugin_sdk::params::parse_duration;
///
/// assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(90 * 60)));
/// assert_eq!(parse_duration("2 weeks"), Ok(Duration::from_secs(14 * 86_400)));
/// assert_eq!(parse_duration("1month"), Ok(Duration::from_secs(30 * 86_400)));
/// assert_eq!(parse_duration("-7d"), Err("a non-negative duration"));
/// assert!(parse_duration("7").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    parse(text).map_err(DurationError::expected)
}

fn parse(text: &str) -> Result<Duration, DurationError> {
    // ASCII whitespace only, here and between parts, as documented: a no-break space or a
    // vertical tab is not a separator an operator means.
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let mut rest = text;
    let mut total: u64 = 0;
    let mut parts = 0;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| DurationError::Malformed)?;
        rest = rest[digits..].trim_start_matches(|c: char| c.is_ascii_whitespace());
        let letters = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = unit_micros(&rest[..letters].to_ascii_lowercase()).ok_or(DurationError::Malformed)?;
        rest = &rest[letters..];
        let part = number.checked_mul(unit).ok_or(DurationError::TooLong)?;
        total = total.checked_add(part).ok_or(DurationError::TooLong)?;
        parts += 1;
    }
    if parts == 0 {
        return Err(DurationError::Malformed);
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
        const MIN: u64 = 60_000;
        const DAY: u64 = 86_400_000;
        let ok: &[(&str, u64)] = &[
            ("500ms", 500),
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
            ("1 minute", MIN),
            ("1w", 7 * DAY),
            ("1y", 365 * DAY),
            ("1h 30m", 90 * MIN),
            ("1h30m", 90 * MIN),
            ("1d,12h", DAY + 720 * MIN),
            ("  2 Weeks ", 14 * DAY),
            ("0d", 0),
            ("45s", 45_000),
        ];
        for &(text, millis) in ok {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(millis)), "{text}");
        }
        for bad in ["", " , ", "soon", "7", "d", "m", "7 fortnights", "-7d", "+7d", "1.5d", "7d!", "99999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_duration("-7d"), Err(NEGATIVE));
        assert_eq!(parse_duration("7"), Err(DURATION_EXPECTED));
        assert_eq!(parse_duration("99999999999999y"), Err(TOO_LONG));
        assert_eq!(parse_duration("584000y"), Ok(Duration::from_secs(584_000 * 365 * 86_400)));
        assert_eq!(parse_duration("585000y"), Err(TOO_LONG));
    }

    #[test]
    fn parse_accepts_only_an_object_of_known_keys() {
        let known = &["a", "b"];
        assert!(Params::parse("{}", known).is_ok());
        assert!(Params::parse(r#"{"a": 1, "b": null}"#, known).is_ok());
        let err = |text| Params::parse(text, known).err().unwrap();
        assert_eq!(err("[1]"), "params: expected a JSON object, got [1]");
        assert_eq!(err("null"), "params: expected a JSON object, got null");
        assert!(err("{").starts_with("params: expected a JSON object, could not parse it: "));
        assert!(err("").starts_with("params: expected a JSON object, could not parse it: "));
        assert_eq!(err(r#"{"c": 1, "a": 1, "d": 2}"#), r#"unknown param "c", "d"; known params are a, b"#);
    }

    #[test]
    fn only_ascii_spaces_separate_duration_parts() {
        assert_eq!(parse_duration(" 2 weeks\n"), Ok(Duration::from_secs(14 * 86_400)));
        for text in ["2\u{b} weeks", "2\u{a0}weeks", "\u{a0}7d"] {
            assert!(parse_duration(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_in_either_order() {
        for text in [r#"{"k": 1, "k": 1000}"#, r#"{"k": 1000, "k": 1}"#, r#"{"k": {"x": 1, "x": 2}}"#] {
            let err = Params::parse(text, &["k"]).unwrap_err();
            assert!(err.starts_with("params: the key ") && err.contains("is given twice at line 1"), "{text}: {err}");
        }
    }

    fn params(text: &str) -> Params {
        Params::parse(text, &["k"]).unwrap()
    }

    #[test]
    fn missing_and_null_mean_not_given() {
        for text in ["{}", r#"{"k": null}"#] {
            let p = params(text);
            assert_eq!(p.get("k"), None);
            assert_eq!(p.bool("k", true), Ok(true));
            assert_eq!(p.number("k", 1.0, 2.5), Ok(2.5));
            assert_eq!(p.integer("k", 1..=5, 3), Ok(3));
            assert_eq!(p.choice("k", &["x", "y"], "y"), Ok("y"));
            assert_eq!(p.string("k"), Ok(None));
            assert_eq!(p.strings("k"), Ok(vec![]));
            assert_eq!(p.duration("k", Duration::from_secs(9), false), Ok(Duration::from_secs(9)));
            assert_eq!(p.optional_duration("k", false), Ok(None));
        }
    }

    #[test]
    fn getters_read_good_values() {
        assert_eq!(params(r#"{"k": false}"#).bool("k", true), Ok(false));
        assert_eq!(params(r#"{"k": 1.5}"#).number("k", 1.0, 2.0), Ok(1.5));
        assert_eq!(params(r#"{"k": 3}"#).number("k", 1.0, 2.0), Ok(3.0));
        assert_eq!(params(r#"{"k": 5}"#).integer("k", 1..=5, 3), Ok(5));
        assert_eq!(params(r#"{"k": 4294967295}"#).integer("k", 1..=u32::MAX, 3), Ok(u32::MAX));
        assert_eq!(params(r#"{"k": "x"}"#).choice("k", &["x", "y"], "y"), Ok("x"));
        assert_eq!(params(r#"{"k": " a b "}"#).string("k"), Ok(Some(" a b ")));
        assert_eq!(params(r#"{"k": ["b", "a", "b"]}"#).strings("k"), Ok(vec!["b", "a", "b"]));
        assert_eq!(params(r#"{"k": []}"#).strings("k"), Ok(vec![]));
        assert_eq!(params(r#"{"k": "1h"}"#).duration("k", Duration::ZERO, false), Ok(Duration::from_secs(3600)));
        assert_eq!(params(r#"{"k": "0s"}"#).duration("k", Duration::from_secs(9), true), Ok(Duration::ZERO));
        assert_eq!(params(r#"{"k": "0d"}"#).optional_duration("k", true), Ok(Some(Duration::ZERO)));
    }

    /// Reads the param `k` with one getter, dropping the value.
    type Getter = fn(&Params) -> Result<(), String>;

    #[test]
    fn getters_name_the_key_what_was_expected_and_the_value() {
        let table: &[(&str, Getter, &str)] = &[
            (r#""yes""#, |p| p.bool("k", true).map(drop), r#"k: expected true or false, got "yes""#),
            ("0", |p| p.bool("k", true).map(drop), "k: expected true or false, got 0"),
            ("0.5", |p| p.number("k", 1.0, 2.0).map(drop), "k: expected a number of at least 1, got 0.5"),
            (r#""2""#, |p| p.number("k", 1.0, 2.0).map(drop), r#"k: expected a number of at least 1, got "2""#),
            ("0", |p| p.integer("k", 1..=u32::MAX, 3).map(drop), "k: expected an integer from 1 to 4294967295, got 0"),
            ("6", |p| p.integer("k", 1..=5, 3).map(drop), "k: expected an integer from 1 to 5, got 6"),
            ("2.5", |p| p.integer("k", 1..=5, 3).map(drop), "k: expected an integer from 1 to 5, got 2.5"),
            ("-1", |p| p.integer("k", 0..=5, 3).map(drop), "k: expected an integer from 0 to 5, got -1"),
            ("4294967296", |p| p.integer("k", 0..=u32::MAX, 3).map(drop), "k: expected an integer from 0 to 4294967295, got 4294967296"),
            (r#""half""#, |p| p.choice("k", &["none", "full"], "none").map(drop), r#"k: expected one of "none", "full", got "half""#),
            ("true", |p| p.choice("k", &["none", "full"], "none").map(drop), r#"k: expected one of "none", "full", got true"#),
            ("5", |p| p.string("k").map(drop), "k: expected a string, got 5"),
            (r#""v1""#, |p| p.strings("k").map(drop), r#"k: expected a list of strings, got "v1""#),
            (r#"["v1", 2]"#, |p| p.strings("k").map(drop), "k[1]: expected a string, got 2"),
            (r#"[null]"#, |p| p.strings("k").map(drop), "k[0]: expected a string, got null"),
            ("60", |p| p.duration("k", Duration::ZERO, true).map(drop), &format!("k: expected {DURATION_EXPECTED}, got 60")),
            (r#""60""#, |p| p.duration("k", Duration::ZERO, true).map(drop), &format!(r#"k: expected {DURATION_EXPECTED}, got "60""#)),
            (r#""-1h""#, |p| p.duration("k", Duration::ZERO, true).map(drop), r#"k: expected a non-negative duration, got "-1h""#),
            (r#""0s""#, |p| p.duration("k", Duration::ZERO, false).map(drop), r#"k: expected a duration greater than zero, got "0s""#),
            (r#""0m""#, |p| p.optional_duration("k", false).map(drop), r#"k: expected a duration greater than zero, got "0m""#),
            (r#""999999999y""#, |p| p.optional_duration("k", true).map(drop), &format!(r#"k: expected {TOO_LONG}, got "999999999y""#)),
        ];
        for (value, get, want) in table {
            let p = params(&format!(r#"{{"k": {value}}}"#));
            assert_eq!(get(&p).unwrap_err(), *want, "{value}");
        }
    }

    #[test]
    fn duration_examples_can_suit_the_plugin() {
        let p = params(r#"{"k": "soon"}"#).with_duration_examples(r#""7d" or "2 weeks""#);
        assert_eq!(p.optional_duration("k", true).unwrap_err(), r#"k: expected a duration such as "7d" or "2 weeks", got "soon""#);
        // Only the malformed case carries examples.
        let p = params(r#"{"k": "-7d"}"#).with_duration_examples(r#""7d""#);
        assert_eq!(p.optional_duration("k", true).unwrap_err(), r#"k: expected a non-negative duration, got "-7d""#);
        assert!(DURATION_EXPECTED.starts_with("a duration such as "));
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let value = Value::String("é".repeat(100));
        let err = expected("k", "short", &value);
        let shown = err.strip_prefix("k: expected short, got ").unwrap();
        assert!(shown.ends_with('…'));
        assert!(shown.len() <= 80 + '…'.len_utf8(), "{shown}");
        assert!(shown.starts_with("\"éé"));
    }
}
