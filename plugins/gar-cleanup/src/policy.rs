//! Reading Artifact Registry cleanup policies: the list of a gcloud policy file
//! (`gcloud artifacts repositories set-cleanup-policies --policy=FILE`) or the map of the
//! REST API's `cleanupPolicies` (what Terraform and `repositories describe` show).

use serde_json::{Map, Value};
use tagwarden_plugin_sdk::Duration;

/// Artifact Registry applies at most this many policies to a repository.
pub const MAX_POLICIES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy's `name` or `id`, or `#<position>` when it has neither.
    pub id: String,
    pub keep: bool,
    pub rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Condition(Condition),
    /// Keep the `keep_count` most recent versions of packages matching the prefixes.
    MostRecent {
        keep_count: u32,
        package_prefixes: Vec<String>,
    },
}

/// Every set field must hold; within a prefix list, any prefix may match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    pub tag_state: TagState,
    pub tag_prefixes: Vec<String>,
    pub version_prefixes: Vec<String>,
    pub package_prefixes: Vec<String>,
    pub older_than: Option<Duration>,
    pub newer_than: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TagState {
    #[default]
    Any,
    Tagged,
    Untagged,
}

/// The params: `{"cleanupPolicies": [...] | {...}, "cleanupPolicyDryRun": bool}`.
pub fn parse(params: &Map<String, Value>) -> Result<(Vec<Policy>, bool), String> {
    check_keys("params", params, &["cleanupPolicies", "cleanupPolicyDryRun"])?;
    let dry_run = match params.get("cleanupPolicyDryRun") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("cleanupPolicyDryRun: expected true or false, got {other}")),
    };
    let entries: Vec<(String, Option<&str>, &Value)> = match params.get("cleanupPolicies") {
        Some(Value::Array(list)) => list.iter().enumerate().map(|(i, p)| (format!("cleanupPolicies[{i}]"), None, p)).collect(),
        Some(Value::Object(map)) => map.iter().map(|(k, p)| (format!("cleanupPolicies.{k}"), Some(k.as_str()), p)).collect(),
        other => {
            return Err(format!(
                "cleanupPolicies: expected the list of a gcloud policy file or the map of the REST API, got {}; write {{\"cleanupPolicies\": [<policy>, ...]}}",
                other.map_or("nothing".to_owned(), Value::to_string)
            ));
        }
    };
    if entries.len() > MAX_POLICIES {
        return Err(format!(
            "cleanupPolicies: {} policies, but Artifact Registry applies at most {MAX_POLICIES} to a repository; merge some",
            entries.len()
        ));
    }
    let mut policies: Vec<Policy> = Vec::with_capacity(entries.len());
    for (i, (at, key, value)) in entries.into_iter().enumerate() {
        let policy = parse_policy(&at, key, i, value)?;
        if policies.iter().any(|p| p.id == policy.id) {
            return Err(format!("{at}: the policy name {:?} is used twice; names must be unique within a repository", policy.id));
        }
        policies.push(policy);
    }
    Ok((policies, dry_run))
}

fn parse_policy(at: &str, key: Option<&str>, i: usize, value: &Value) -> Result<Policy, String> {
    let Value::Object(p) = value else {
        return Err(format!("{at}: expected a policy object, got {value}"));
    };
    check_keys(at, p, &["name", "id", "action", "condition", "mostRecentVersions"])?;
    let mut id = None;
    for field in ["name", "id"] {
        match p.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.is_empty() => {
                if id.is_some_and(|known: &str| known != s) {
                    return Err(format!("{at}: name {:?} and id {s:?} differ; give one", id.unwrap_or_default()));
                }
                id = Some(s.as_str());
            }
            Some(other) => return Err(format!("{at}.{field}: expected a non-empty string, got {other}")),
        }
    }
    let id = id.or(key).map_or_else(|| format!("#{}", i + 1), str::to_owned);

    // gcloud files write {"type": "Delete"}; the REST API writes "DELETE".
    let action = match p.get("action") {
        Some(Value::String(a)) => Some(a.as_str()),
        Some(Value::Object(a)) => {
            check_keys(&format!("{at}.action"), a, &["type"])?;
            a.get("type").and_then(Value::as_str)
        }
        _ => None,
    };
    let keep = match action.map(str::to_ascii_uppercase).as_deref() {
        Some("DELETE") => false,
        Some("KEEP") => true,
        _ => {
            return Err(format!(
                "{at}.action: expected {{\"type\": \"Delete\"}} or {{\"type\": \"Keep\"}} (or \"DELETE\"/\"KEEP\"), got {}",
                p.get("action").map_or("nothing".to_owned(), Value::to_string)
            ));
        }
    };

    let rule = match (p.get("condition"), p.get("mostRecentVersions")) {
        (Some(_), Some(_)) => {
            return Err(format!("{at}: a policy has either a condition or mostRecentVersions, not both; split it into two policies"));
        }
        (None, None) => return Err(format!("{at}: a policy needs a condition or mostRecentVersions")),
        (Some(condition), None) => Rule::Condition(parse_condition(&format!("{at}.condition"), condition)?),
        (None, Some(recent)) => {
            if !keep {
                return Err(format!("{at}.mostRecentVersions: may only be specified with a Keep action"));
            }
            let at = format!("{at}.mostRecentVersions");
            let Value::Object(recent) = recent else {
                return Err(format!("{at}: expected an object such as {{\"keepCount\": 5}}, got {recent}"));
            };
            check_keys(&at, recent, &["keepCount", "packageNamePrefixes"])?;
            let keep_count = match recent.get("keepCount") {
                Some(Value::Number(n)) if n.as_u64().is_some_and(|c| c <= u64::from(u32::MAX)) => n.as_u64().unwrap() as u32,
                other => {
                    return Err(format!(
                        "{at}.keepCount: expected the number of versions to keep, a non-negative integer, got {}",
                        other.map_or("nothing".to_owned(), Value::to_string)
                    ));
                }
            };
            Rule::MostRecent { keep_count, package_prefixes: prefixes(&at, "packageNamePrefixes", recent)? }
        }
    };
    Ok(Policy { id, keep, rule })
}

fn parse_condition(at: &str, value: &Value) -> Result<Condition, String> {
    let Value::Object(c) = value else {
        return Err(format!("{at}: expected an object, got {value}"));
    };
    check_keys(at, c, &["tagState", "tagPrefixes", "versionNamePrefixes", "packageNamePrefixes", "olderThan", "newerThan"])?;
    let tag_state = match c.get("tagState") {
        None | Some(Value::Null) => TagState::Any,
        Some(Value::String(s)) => match s.to_ascii_uppercase().as_str() {
            "ANY" | "TAG_STATE_UNSPECIFIED" => TagState::Any,
            "TAGGED" => TagState::Tagged,
            "UNTAGGED" => TagState::Untagged,
            _ => return Err(format!("{at}.tagState: expected \"tagged\", \"untagged\" or \"any\", got {s:?}")),
        },
        Some(other) => return Err(format!("{at}.tagState: expected \"tagged\", \"untagged\" or \"any\", got {other}")),
    };
    let tag_prefixes = prefixes(at, "tagPrefixes", c)?;
    if tag_state == TagState::Untagged && !tag_prefixes.is_empty() {
        return Err(format!(
            "{at}: tagPrefixes with tagState \"untagged\" can match nothing (an untagged version has no tag); remove one of them"
        ));
    }
    Ok(Condition {
        tag_state,
        tag_prefixes,
        version_prefixes: prefixes(at, "versionNamePrefixes", c)?,
        package_prefixes: prefixes(at, "packageNamePrefixes", c)?,
        older_than: duration(at, "olderThan", c)?,
        newer_than: duration(at, "newerThan", c)?,
    })
}

fn prefixes(at: &str, key: &str, map: &Map<String, Value>) -> Result<Vec<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("{at}.{key}: expected a list of strings, found {other}")),
            })
            .collect(),
        Some(other) => Err(format!("{at}.{key}: expected a list of strings, got {other}")),
    }
}

/// A duration as Artifact Registry takes it: the API's `"2592000s"` (seconds, fractions
/// allowed) or gcloud's `"30d"`, `"12h"`, `"90m"`, `"1d12h"`.
fn duration(at: &str, key: &str, map: &Map<String, Value>) -> Result<Option<Duration>, String> {
    let text = match map.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("{at}.{key}: expected a duration string such as \"30d\" or \"2592000s\", got {other}")),
    };
    parse_duration(text)
        .map(Some)
        .ok_or_else(|| format!("{at}.{key}: expected a duration such as \"30d\", \"12h\" or \"2592000s\" (seconds), got {text:?}"))
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    // The API's form: decimal seconds with at most nine fractional digits.
    if let Some(secs) = text.strip_suffix('s')
        && let Some((whole, frac)) = secs.split_once('.').or(Some((secs, "")))
        && !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(secs.contains('.') && frac.is_empty())
    {
        let nanos = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse::<u32>().ok()? };
        return Some(Duration::new(whole.parse().ok()?, nanos));
    }
    // gcloud's form: <integer><unit> parts.
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        let unit = match rest.as_bytes()[digits] {
            b's' => 1,
            b'm' => 60,
            b'h' => 3_600,
            b'd' => 86_400,
            _ => return None,
        };
        total = total.checked_add(Duration::from_secs(n.checked_mul(unit)?))?;
        rest = &rest[digits + 1..];
    }
    (!text.is_empty()).then_some(total)
}

fn check_keys(at: &str, map: &Map<String, Value>, known: &[&str]) -> Result<(), String> {
    let unknown: Vec<String> = map.keys().filter(|k| !known.contains(&k.as_str())).map(|k| format!("{k:?}")).collect();
    if unknown.is_empty() { Ok(()) } else { Err(format!("{at}: unknown key {}; known keys are {}", unknown.join(", "), known.join(", "))) }
}
