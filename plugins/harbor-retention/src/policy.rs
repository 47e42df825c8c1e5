//! Reading a Harbor retention policy document (what Harbor's API returns for
//! `GET /retentions/{id}`) and refusing what Harbor refuses.
//!
//! Harbor's own error texts (`latestPushedK is less than zero`, `rule evaluator X is not
//! registered`, ...) are kept and prefixed with where the problem is, then followed by
//! what to do.

use serde_json::{Map, Value};

use crate::doublestar;

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// 1-based position in the document's `rules`, for reasons and errors.
    pub number: usize,
    pub template: Template,
    /// ANDed, in order.
    pub tag_selectors: Vec<TagSelector>,
    /// ANDed, in order; empty means every repository.
    pub repository_selectors: Vec<RepositorySelector>,
}

/// What a rule retains among the artifacts its tag selectors pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `latestPushedK`: the K most recently pushed.
    LatestPushed(i64),
    /// `latestPulledN`: the N most recently pulled (never pulled ones last, but counted).
    LatestPulled(i64),
    /// `latestActiveK`: the K most recently pushed or pulled, whichever is later.
    LatestActive(i64),
    /// `nDaysSinceLastPush`: pushed within the last N days.
    DaysSinceLastPush(i64),
    /// `nDaysSinceLastPull`: pulled within the last N days.
    DaysSinceLastPull(i64),
    /// `lastXDays`: pushed in the last X days (an older template, strict comparison).
    LastXDays(i64),
    /// `always`.
    Always,
}

impl Template {
    /// Whether the template reads pull times.
    pub fn needs_pull_times(self) -> bool {
        matches!(self, Template::LatestPulled(_) | Template::DaysSinceLastPull(_) | Template::LatestActive(_))
    }

    /// The template's name and parameter, as Harbor's UI shows the rule.
    pub fn describe(self) -> String {
        match self {
            Template::LatestPushed(k) => format!("retain the {k} most recently pushed"),
            Template::LatestPulled(n) => format!("retain the {n} most recently pulled"),
            Template::LatestActive(k) => format!("retain the {k} most recently pushed or pulled"),
            Template::DaysSinceLastPush(n) => format!("retain those pushed within the last {n} days"),
            Template::DaysSinceLastPull(n) => format!("retain those pulled within the last {n} days"),
            Template::LastXDays(x) => format!("retain those pushed in the last {x} days"),
            Template::Always => "retain always".to_owned(),
        }
    }
}

/// A `doublestar` tag selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSelector {
    /// `excludes` rather than `matches`.
    pub excludes: bool,
    pub pattern: String,
    /// The "untagged artifacts" switch (see [`TagSelector::selects`]).
    pub untagged: bool,
}

/// A `doublestar` repository selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySelector {
    /// `repoExcludes` rather than `repoMatches`.
    pub excludes: bool,
    pub pattern: String,
}

/// Reads the policy. Disabled rules are dropped here: Harbor skips them.
pub fn parse(document: &Map<String, Value>) -> Result<Vec<Rule>, String> {
    check_keys("policy", document, &["id", "algorithm", "rules", "trigger", "scope"])?;
    match document.get("algorithm") {
        Some(Value::String(a)) if a == "or" => {}
        other => {
            return Err(format!(
                "algorithm: Harbor accepts only \"or\" (rules are ORed over what they retain), got {}; set \"algorithm\": \"or\"",
                shown(other)
            ));
        }
    }
    let rules = match document.get("rules") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(rules)) => rules,
        Some(other) => return Err(format!("rules: expected a list of rules, got {}", shown(Some(other)))),
    };
    let mut parsed = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if let Some(rule) = parse_rule(i, rule)? {
            parsed.push(rule);
        }
    }
    Ok(parsed)
}

fn parse_rule(i: usize, rule: &Value) -> Result<Option<Rule>, String> {
    let at = format!("rules[{i}]");
    let Value::Object(rule) = rule else {
        return Err(format!("{at}: expected a rule object, got {}", shown(Some(rule))));
    };
    check_keys(&at, rule, &["id", "priority", "disabled", "action", "template", "params", "tag_selectors", "scope_selectors"])?;
    for key in ["id", "priority"] {
        if let Some(v) = rule.get(key)
            && !v.is_i64()
        {
            return Err(format!("{at}.{key}: expected an integer, got {}", shown(Some(v))));
        }
    }
    let disabled = match rule.get("disabled") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        other => return Err(format!("{at}.disabled: expected true or false, got {}", shown(other))),
    };

    let template_id = match rule.get("template") {
        Some(Value::String(t)) if !t.is_empty() => t.as_str(),
        other => return Err(format!("{at}.template: Can not be empty (got {}); name a template such as \"latestPushedK\"", shown(other))),
    };
    let at = format!("rules[{i}] ({template_id})");
    match rule.get("action") {
        Some(Value::String(a)) if a == "retain" => {}
        other => return Err(format!("{at}.action: Harbor's only action is \"retain\", got {}", shown(other))),
    }
    let params = match rule.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(other) => {
            return Err(format!("{at}.params: expected an object such as {{\"{template_id}\": 10}}, got {}", shown(Some(other))));
        }
    };
    let template = template(&at, template_id, &params)?;

    let tag_selectors = match rule.get("tag_selectors") {
        Some(Value::Array(list)) if !list.is_empty() => {
            list.iter().enumerate().map(|(j, s)| tag_selector(&format!("{at}.tag_selectors[{j}]"), s)).collect::<Result<Vec<_>, _>>()?
        }
        other => {
            return Err(format!(
                "{at}.tag_selectors: Can not be empty (got {}); give at least one, e.g. {{\"kind\": \"doublestar\", \"decoration\": \"matches\", \"pattern\": \"**\"}}",
                shown(other)
            ));
        }
    };
    let repository_selectors = match rule.get("scope_selectors") {
        Some(Value::Object(scopes)) => {
            check_keys(&format!("{at}.scope_selectors"), scopes, &["repository"])?;
            match scopes.get("repository") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(list)) => list
                    .iter()
                    .enumerate()
                    .map(|(j, s)| repository_selector(&format!("{at}.scope_selectors.repository[{j}]"), s))
                    .collect::<Result<Vec<_>, _>>()?,
                Some(other) => {
                    return Err(format!("{at}.scope_selectors.repository: expected a list of selectors, got {}", shown(Some(other))));
                }
            }
        }
        other => {
            return Err(format!(
                "{at}.scope_selectors: Can not be empty (got {}); give {{\"repository\": [{{\"kind\": \"doublestar\", \"decoration\": \"repoMatches\", \"pattern\": \"**\"}}]}}",
                shown(other)
            ));
        }
    };
    if disabled {
        return Ok(None);
    }
    Ok(Some(Rule { number: i + 1, template, tag_selectors, repository_selectors }))
}

/// The template and its parameter, validated as Harbor's rule index does.
fn template(at: &str, id: &str, params: &Map<String, Value>) -> Result<Template, String> {
    // Harbor's validators: the upper bounds differ by template, and two templates have none.
    let (bound, build): (Option<Bound>, fn(i64) -> Template) = match id {
        "latestPushedK" => (Some((i64::from(i16::MAX), true)), Template::LatestPushed),
        "latestPulledN" => (Some((i64::from(i16::MAX), true)), Template::LatestPulled),
        "nDaysSinceLastPush" => (Some((20_190_904, false)), Template::DaysSinceLastPush),
        "nDaysSinceLastPull" => (Some((20_190_904, false)), Template::DaysSinceLastPull),
        "latestActiveK" => (None, Template::LatestActive),
        "lastXDays" => (None, Template::LastXDays),
        "always" => return Ok(Template::Always),
        other => {
            return Err(format!(
                "{at}: rule evaluator {other} is not registered; use one of latestPushedK, latestPulledN, nDaysSinceLastPush, nDaysSinceLastPull, always (or latestActiveK, lastXDays)"
            ));
        }
    };
    let Some(value) = params.get(id) else {
        return Err(format!("{at}: missing required parameter {id} for rule {id}; add \"params\": {{\"{id}\": <number>}}"));
    };
    let Some(n) = json_int(value) else {
        return Err(format!("{at}.params: {id} type error: expected a number, got {}", shown(Some(value))));
    };
    match bound {
        Some(_) if n < 0 => Err(format!("{at}.params: {id} is less than zero ({n}); use 0 or more")),
        Some((max, exclusive)) if (exclusive && n >= max) || (!exclusive && n > max) => {
            let limit = if exclusive { max - 1 } else { max };
            Err(format!("{at}.params: {id} is too large ({n}); Harbor accepts at most {limit}"))
        }
        Some(_) => Ok(build(n)),
        // No validator: Harbor's evaluator falls back to its default (10) for a negative value.
        None if n < 0 => {
            tagwarden_plugin_sdk::log::warn(&format!("{at}: {id} is {n}, so Harbor uses its default 10"));
            Ok(build(10))
        }
        None => Ok(build(n)),
    }
}

/// A validator's upper limit, and whether the limit itself is refused.
type Bound = (i64, bool);

/// Harbor's `ParseJSONInt`: a JSON number, truncated toward zero (`2.7` is 2).
fn json_int(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite() && f.abs() < 9.2e18).map(|f| f.trunc() as i64))
}

fn tag_selector(at: &str, value: &Value) -> Result<TagSelector, String> {
    let (decoration, pattern, extras) = selector(at, value, &["matches", "excludes"])?;
    let excludes = decoration == "excludes";
    // Harbor's default, "for upgrade": the switch starts on for `matches` and off for
    // `excludes`, which inverts it, so either way untagged artifacts are picked.
    let mut untagged = !excludes;
    if let Some(extras) = extras {
        // Harbor ignores extras that do not decode into {"untagged": bool}; Go's decoder
        // matches the key without regard to case and leaves it false when it is absent.
        if let Ok(decoded) = serde_json::from_str::<Value>(extras) {
            match decoded {
                Value::Null => untagged = false,
                Value::Object(map) => {
                    let field = map.iter().filter(|(k, _)| k.eq_ignore_ascii_case("untagged")).map(|(_, v)| v).next_back();
                    match field {
                        None | Some(Value::Null) => untagged = false,
                        Some(Value::Bool(b)) => untagged = *b,
                        Some(_) => {} // a type error: Harbor keeps the default
                    }
                }
                _ => {}
            }
        }
    }
    Ok(TagSelector { excludes, pattern, untagged })
}

fn repository_selector(at: &str, value: &Value) -> Result<RepositorySelector, String> {
    let (decoration, pattern, _) = selector(at, value, &["repoMatches", "repoExcludes"])?;
    Ok(RepositorySelector { excludes: decoration == "repoExcludes", pattern })
}

/// A selector's decoration, pattern and extras.
fn selector<'v>(at: &str, value: &'v Value, decorations: &[&'static str]) -> Result<(&'static str, String, Option<&'v str>), String> {
    let Value::Object(map) = value else {
        return Err(format!("{at}: expected a selector object, got {}", shown(Some(value))));
    };
    check_keys(at, map, &["kind", "decoration", "pattern", "extras"])?;
    match map.get("kind") {
        Some(Value::String(k)) if k == "doublestar" => {}
        other => return Err(format!("{at}.kind: Harbor's retention selectors are of kind \"doublestar\", got {}", shown(other))),
    }
    let decoration = match map.get("decoration") {
        Some(Value::String(d)) => decorations.iter().find(|x| **x == d).copied(),
        _ => None,
    }
    .ok_or_else(|| format!("{at}.decoration: expected \"{}\", got {}", decorations.join("\" or \""), shown(map.get("decoration"))))?;
    let pattern = match map.get("pattern") {
        Some(Value::String(p)) if !p.is_empty() => p.clone(),
        other => return Err(format!("{at}.pattern: Can not be empty (got {}); use \"**\" for everything", shown(other))),
    };
    if doublestar::check(&pattern).is_err() {
        return Err(format!(
            "{at}.pattern: syntax error in pattern {pattern:?} (an unclosed [ or {{, an empty or malformed [class], or a trailing \\); Harbor would fail the run on it"
        ));
    }
    let extras = match map.get("extras") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) => Some(e.as_str()),
        Some(other) => {
            return Err(format!("{at}.extras: expected a JSON string such as \"{{\\\"untagged\\\":true}}\", got {}", shown(Some(other))));
        }
    };
    Ok((decoration, pattern, extras))
}

/// Refuses keys Harbor's policy document does not have: most likely a typo, which Harbor's
/// decoder would silently ignore.
fn check_keys(at: &str, map: &Map<String, Value>, known: &[&str]) -> Result<(), String> {
    let unknown: Vec<String> = map.keys().filter(|k| !known.contains(&k.as_str())).map(|k| format!("{k:?}")).collect();
    if unknown.is_empty() { Ok(()) } else { Err(format!("{at}: unknown key {}; known keys are {}", unknown.join(", "), known.join(", "))) }
}

/// A value for an error message, short.
fn shown(value: Option<&Value>) -> String {
    match value {
        None => "nothing".to_owned(),
        Some(v) => {
            let text = v.to_string();
            if text.len() > 80 { format!("{}…", &text[..text.floor_char_boundary(80)]) } else { text }
        }
    }
}
