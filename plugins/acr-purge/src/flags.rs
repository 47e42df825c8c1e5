//! `acr purge`'s flags as params, read as Azure/acr-cli reads them.

use regex::Regex;
use serde_json::{Map, Value};
use tagwarden_plugin_sdk::Duration;

/// acr-cli caps `--ago` at 150 years "to prevent overflow".
const MAX_AGO: Duration = Duration::from_secs(150 * 365 * 86_400);

/// One `--filter`: a repository regex (matched whole) and a tag regex (searched).
#[derive(Debug, Clone)]
pub struct Filter {
    pub repository: Regex,
    pub tag: String,
}

/// Splits `repository:tag-regex` at the one colon that is not part of a non-capturing
/// group (`(?:`, `(?i:`) or a POSIX class (`[[:alpha:]]`), as acr-cli does.
pub fn split_filter(filter: &str) -> Result<(&str, &str), String> {
    let bytes = filter.as_bytes();
    let separators: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == b':' && is_separator(filter, i)).collect();
    if separators.len() != 1 {
        return Err(format!(
            "filter {filter:?}: unable to correctly parse filter flag: expected <repository regex>:<tag regex> with one separating colon, found {}",
            separators.len()
        ));
    }
    let (repository, tag) = (&filter[..separators[0]], &filter[separators[0] + 1..]);
    if repository.is_empty() {
        return Err(format!("filter {filter:?}: missing repository name/expression"));
    }
    if tag.is_empty() {
        return Err(format!("filter {filter:?}: missing tag name/expression"));
    }
    Ok((repository, tag))
}

/// acr-cli's `(?<!\(\?[imsU-]{0,5}|\[*\^*\[\^*):(?!\]\]*)`: a colon separates unless it
/// ends `(?flags`, follows a `[` (optionally then `^`s), or comes before a `]`.
fn is_separator(text: &str, colon: usize) -> bool {
    let before = &text[..colon];
    if text[colon + 1..].starts_with(']') {
        return false;
    }
    // `(?` then at most five of i, m, s, U, -.
    let flags = before.bytes().rev().take_while(|b| b"imsU-".contains(b)).count();
    if flags <= 5 && before[..before.len() - flags].ends_with("(?") {
        return false;
    }
    // `[` then any number of `^`.
    let carets = before.bytes().rev().take_while(|&b| b == b'^').count();
    if before[..before.len() - carets].ends_with('[') {
        return false;
    }
    true
}

/// Compiles a regex, explaining what cannot be compiled: acr-cli's regexp2 backtracks and
/// accepts lookaround and backreferences; tagwarden's matcher runs in linear time and does not.
pub fn compile(what: &str, pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| {
        let detail = e.to_string();
        let gist = detail.lines().find_map(|l| l.strip_prefix("error: ")).unwrap_or(&detail).to_owned();
        format!(
            "{what} {pattern:?}: {gist}; lookaround ((?=, (?!, (?<=, (?<!) and backreferences (\\1), which acr-cli's regexp2 accepts, are not supported: rewrite the expression without them"
        )
    })
}

/// `--ago`: `[<days>d][<Go duration>]`, e.g. `7d`, `1d12h`, `30m`, `2h45m30s`.
///
/// acr-cli reads some malformed values silently as something else (`1dx` and `abc` as its
/// 150-year cap, `-1d` as one day in the future, `d` as zero): those are refused here.
pub fn parse_ago(text: &str) -> Result<Duration, String> {
    let refuse = || format!("ago: expected a duration such as \"7d\", \"1d12h\" or \"30m\" ([<days>d][Go duration]), got {text:?}");
    let (days, rest) = match text.find('d') {
        Some(at) => {
            let digits = &text[..at];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(refuse());
            }
            (digits.parse::<u64>().map_err(|_| refuse())?, &text[at + 1..])
        }
        None => (0, text),
    };
    let mut total = Duration::from_secs(days.min(150 * 365).saturating_mul(86_400));
    if !rest.is_empty() {
        total = total.saturating_add(go_duration(rest).ok_or_else(refuse)?);
    }
    if text.is_empty() {
        return Err(refuse());
    }
    Ok(total.min(MAX_AGO))
}

/// Go's `time.ParseDuration` for non-negative values: `<decimal><unit>` parts with units
/// `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`; a lone `0` is zero.
fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let value: f64 = number.parse().ok()?;
        total = total.saturating_add(Duration::from_nanos((value * nanos_per).min(u64::MAX as f64) as u64));
    }
    Some(total)
}

/// The params, checked.
#[derive(Debug)]
pub struct Flags {
    pub filters: Vec<Filter>,
    /// `None` only with `untagged-only` and no `ago`.
    pub ago: Option<(Duration, String)>,
    pub keep: u32,
    pub untagged: bool,
    pub untagged_only: bool,
}

pub const KNOWN: &[&str] = &["filter", "ago", "keep", "untagged", "untagged-only"];

pub fn parse(params: &Map<String, Value>) -> Result<Flags, String> {
    let unknown: Vec<String> = params.keys().filter(|k| !KNOWN.contains(&k.as_str())).map(|k| format!("{k:?}")).collect();
    if !unknown.is_empty() {
        return Err(format!("unknown param {}; known params are {}", unknown.join(", "), KNOWN.join(", ")));
    }
    let flag = |key: &str| -> Result<bool, String> {
        match params.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!("{key}: expected true or false, got {other}")),
        }
    };
    let untagged = flag("untagged")?;
    let untagged_only = flag("untagged-only")?;
    if untagged && untagged_only {
        return Err(
            "untagged, untagged-only: if any flags in the group [untagged untagged-only] are set none of the others can be; use one".into(),
        );
    }
    let raw_filters: Vec<&str> = match params.get("filter") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(f)) => vec![f.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|f| {
                f.as_str()
                    .ok_or_else(|| format!("filter: expected a string \"<repository regex>:<tag regex>\" or a list of them, found {f}"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("filter: expected a string \"<repository regex>:<tag regex>\" or a list of them, got {other}")),
    };
    let ago_text = match params.get("ago") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(other) => return Err(format!("ago: expected a duration string such as \"7d\", got {other}")),
    };
    if !untagged_only {
        if raw_filters.is_empty() {
            return Err("filter: --filter is required when not using --untagged-only; give e.g. \"filter\": \"my-repo:.*\"".into());
        }
        if ago_text.is_none() {
            return Err("ago: --ago is required when not using --untagged-only; give e.g. \"ago\": \"30d\"".into());
        }
    }
    let keep = match params.get("keep") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|k| k <= u64::from(u32::MAX)) => n.as_u64().unwrap() as u32,
        Some(other) => {
            return Err(format!("keep: expected a non-negative integer (the number of latest to-be-deleted items to keep), got {other}"));
        }
    };
    let mut filters = Vec::with_capacity(raw_filters.len());
    for raw in raw_filters {
        let (repository, tag) = split_filter(raw)?;
        filters.push(Filter { repository: compile("filter: repository expression", &format!("^{repository}$"))?, tag: tag.to_owned() });
        compile("filter: tag expression", tag)?;
    }
    let ago = ago_text.map(|t| parse_ago(t).map(|d| (d, t.to_owned()))).transpose()?;
    Ok(Flags { filters, ago, keep, untagged, untagged_only })
}
