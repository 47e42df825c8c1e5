//! Reading an ECR lifecycle policy document and refusing what AWS refuses.
//!
//! Errors name the rule (`rules[i] (rulePriority P)`) and the property, carry AWS's
//! wording after `Lifecycle policy validation failure:` (the prefix of AWS's own
//! `InvalidParameterException` messages), and end with what to do.

use serde_json::{Map, Value};

use crate::pattern::{MAX_WILDCARDS, TagPattern};

/// AWS's prefix for every policy it refuses.
const FAILURE: &str = "Lifecycle policy validation failure";

/// One rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    pub selection: Selection,
    pub count: Count,
}

/// Which images a rule identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Images with at least one tag, where every pattern matches some tag.
    TaggedPatterns(Vec<TagPattern>),
    /// Images with at least one tag, where every prefix starts some tag.
    TaggedPrefixes(Vec<String>),
    Untagged,
    Any,
}

/// What a rule expires among the images it identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Keep the `n` most recently pushed; expire the rest.
    MoreThan(u32),
    /// Expire those pushed strictly more than `days` days before now.
    SincePushedDays(u32),
}

/// Reads `{"rules": [...]}`, already parsed, as AWS's `PutLifecyclePolicy` would.
pub fn parse(document: &Map<String, Value>) -> Result<Vec<Rule>, String> {
    check_properties("policy", document, &["rules"], &["rules"])?;
    let rules = match &document["rules"] {
        Value::Array(rules) => rules,
        other => return Err(type_error("rules", other, "array", "give \"rules\" as a list of rule objects")),
    };
    if rules.is_empty() {
        return Err(format!(
            "rules: {FAILURE}: array is too short: must have at least 1 elements but instance has 0 elements; give at least one rule"
        ));
    }
    let mut parsed: Vec<(Rule, TagStatus)> = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        parsed.push(parse_rule(i, rule)?);
    }

    // Across rules: unique priorities, and `any` last.
    for (i, (rule, _)) in parsed.iter().enumerate() {
        if let Some(j) = parsed[..i].iter().position(|(earlier, _)| earlier.priority == rule.priority) {
            return Err(format!(
                "rules[{i}] (rulePriority {p}): {FAILURE}: rulePriority {p} is used by more than one rule (rules[{j}] and rules[{i}]); give each rule a unique rulePriority",
                p = rule.priority
            ));
        }
    }
    let highest = parsed.iter().map(|(r, _)| r.priority).max().expect("at least one rule");
    if let Some((i, (rule, _))) = parsed.iter().enumerate().find(|(_, (r, status))| *status == TagStatus::Any && r.priority != highest) {
        return Err(format!(
            "rules[{i}] (rulePriority {}): {FAILURE}: Rule for tagStatus=ANY must have the lowest priority per storage class; give it the highest rulePriority value in the policy (now {highest})",
            rule.priority
        ));
    }

    let mut rules: Vec<Rule> = parsed.into_iter().map(|(rule, _)| rule).collect();
    rules.sort_by_key(|r| r.priority);
    Ok(rules)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagStatus {
    Tagged,
    Untagged,
    Any,
}

fn parse_rule(i: usize, rule: &Value) -> Result<(Rule, TagStatus), String> {
    let Value::Object(rule) = rule else {
        return Err(type_error(&format!("rules[{i}]"), rule, "object", "give each rule as an object"));
    };
    // Name the rule by its priority as soon as it is known.
    let priority = match rule.get("rulePriority") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|p| (1..=u64::from(u32::MAX)).contains(&p)) => n.as_u64().unwrap() as u32,
        Some(Value::Number(n)) if n.as_i64().is_some_and(|p| p < 1) => {
            return Err(format!(
                "rules[{i}].rulePriority: {FAILURE}: numeric instance is lower than the required minimum (minimum: 1, found: {n}); use a positive integer"
            ));
        }
        Some(other @ Value::Number(n)) if n.is_f64() => {
            return Err(type_error(&format!("rules[{i}].rulePriority"), other, "integer", "give a positive integer"));
        }
        Some(other @ Value::Number(_)) => {
            return Err(format!("rules[{i}].rulePriority: {FAILURE}: expected an integer from 1 to {}, got {other}", u32::MAX));
        }
        Some(other) => return Err(type_error(&format!("rules[{i}].rulePriority"), other, "integer", "give a positive integer")),
        None => {
            return Err(format!(
                "rules[{i}]: {FAILURE}: object has missing required properties ([\"rulePriority\"]); give every rule a rulePriority"
            ));
        }
    };
    let at = format!("rules[{i}] (rulePriority {priority})");
    check_properties(&at, rule, &["rulePriority", "description", "selection", "action"], &["rulePriority", "selection", "action"])?;
    if let Some(description) = rule.get("description")
        && !description.is_string()
    {
        return Err(type_error(&format!("{at}.description"), description, "string", "give the description as text"));
    }

    let action = object(&at, "action", &rule["action"])?;
    check_properties(&format!("{at}.action"), action, &["type", "targetStorageClass"], &["type"])?;
    let action_type = enumerated(&format!("{at}.action.type"), &action["type"], &["expire", "transition"])?;
    if action_type == "transition" || action.contains_key("targetStorageClass") {
        return Err(format!(
            "{at}.action: action type \"transition\" (moving images to the archive storage class) is not supported: tagwarden only deletes images, it cannot archive them. Remove this rule, or make it an \"expire\" rule if deleting is what you want"
        ));
    }

    let selection = object(&at, "selection", &rule["selection"])?;
    let sel = format!("{at}.selection");
    check_properties(
        &sel,
        selection,
        &["tagStatus", "tagPatternList", "tagPrefixList", "storageClass", "countType", "countUnit", "countNumber"],
        &["tagStatus", "countType", "countNumber"],
    )?;
    if let Some(class) = selection.get("storageClass") {
        match enumerated(&format!("{sel}.storageClass"), class, &["standard", "archive"])? {
            "standard" => {}
            _ => {
                return Err(format!(
                    "{sel}.storageClass: storage class \"archive\" is not supported: tagwarden sees no archived images. Remove this rule, or select \"standard\" images"
                ));
            }
        }
    }
    let status = match enumerated(&format!("{sel}.tagStatus"), &selection["tagStatus"], &["tagged", "untagged", "any"])? {
        "tagged" => TagStatus::Tagged,
        "untagged" => TagStatus::Untagged,
        _ => TagStatus::Any,
    };
    let patterns = string_list(&sel, "tagPatternList", selection)?;
    let prefixes = string_list(&sel, "tagPrefixList", selection)?;
    let selected = match (status, patterns, prefixes) {
        (TagStatus::Tagged, Some(_), Some(_)) => {
            return Err(format!(
                "{sel}: {FAILURE}: tagPrefixList and tagPatternList cannot both be specified; keep one (a prefix \"p\" is the pattern \"p*\")"
            ));
        }
        (TagStatus::Tagged, None, None) => {
            return Err(format!(
                "{sel}: {FAILURE}: Must specify tagPrefixList or tagPatternList when tagStatus=TAGGED. Add one, e.g. \"tagPatternList\": [\"*\"] for every tagged image"
            ));
        }
        (TagStatus::Tagged, Some(patterns), None) => {
            for pattern in &patterns {
                let wildcards = pattern.matches('*').count();
                if wildcards > MAX_WILDCARDS {
                    return Err(format!(
                        "{sel}.tagPatternList: {FAILURE}: the pattern {pattern:?} has {wildcards} wildcards (*), but at most {MAX_WILDCARDS} are allowed per pattern; use fewer"
                    ));
                }
            }
            Selection::TaggedPatterns(patterns.iter().map(|p| TagPattern::new(p)).collect())
        }
        (TagStatus::Tagged, None, Some(prefixes)) => Selection::TaggedPrefixes(prefixes),
        (TagStatus::Untagged | TagStatus::Any, patterns, prefixes) => {
            if let Some(key) = [(patterns.is_some(), "tagPatternList"), (prefixes.is_some(), "tagPrefixList")]
                .iter()
                .find(|(given, _)| *given)
                .map(|(_, k)| k)
            {
                let status = if status == TagStatus::Untagged { "UNTAGGED" } else { "ANY" };
                return Err(format!(
                    "{sel}.{key}: {FAILURE}: {key} can only be specified when tagStatus=TAGGED, not {status}; remove it, or make the rule tagged"
                ));
            }
            if status == TagStatus::Untagged { Selection::Untagged } else { Selection::Any }
        }
    };

    let count_type = enumerated(
        &format!("{sel}.countType"),
        &selection["countType"],
        &["imageCountMoreThan", "sinceImagePushed", "sinceImagePulled", "sinceImageTransitioned"],
    )?;
    let number = count_number(&sel, &selection["countNumber"])?;
    let unit = selection.get("countUnit");
    let count = match count_type {
        "imageCountMoreThan" => {
            if let Some(unit) = unit {
                return Err(format!(
                    "{sel}.countUnit: {FAILURE}: instance failed to match exactly one schema (matched 0 out of 2): countUnit ({unit}) is only allowed with countType sinceImagePushed; remove countUnit from this imageCountMoreThan rule"
                ));
            }
            Count::MoreThan(number)
        }
        "sinceImagePushed" => {
            match unit {
                None => {
                    return Err(format!(
                        "{sel}: {FAILURE}: object has missing required properties ([\"countUnit\"]); a sinceImagePushed rule needs \"countUnit\": \"days\""
                    ));
                }
                Some(unit) => {
                    enumerated(&format!("{sel}.countUnit"), unit, &["days"])?;
                }
            }
            Count::SincePushedDays(number)
        }
        "sinceImagePulled" => {
            return Err(format!(
                "{sel}.countType: {FAILURE}: countType sinceImagePulled can only be used with action type transition, not expire; tagwarden does not support transition either. Use sinceImagePushed to expire by age"
            ));
        }
        _ => {
            return Err(format!(
                "{sel}.countType: countType sinceImageTransitioned selects archived images, which tagwarden does not see (archiving is not supported). Remove this rule"
            ));
        }
    };

    Ok((Rule { priority, selection: selected, count }, status))
}

/// `countNumber`: an integer of at least 1 (AWS's schema minimum).
fn count_number(sel: &str, value: &Value) -> Result<u32, String> {
    let key = format!("{sel}.countNumber");
    match value {
        Value::Number(n) if n.as_u64().is_some_and(|c| (1..=u64::from(u32::MAX)).contains(&c)) => Ok(n.as_u64().unwrap() as u32),
        Value::Number(n) if n.as_i64().is_some_and(|c| c < 1) => {
            Err(format!("{key}: {FAILURE}: numeric instance is lower than the required minimum (minimum: 1, found: {n}); use 1 or more"))
        }
        Value::Number(n) if n.is_f64() => Err(type_error(&key, value, "integer", "give a whole number such as 10")),
        Value::Number(n) => Err(format!("{key}: {FAILURE}: expected an integer from 1 to {}, got {n}", u32::MAX)),
        other => Err(type_error(&key, other, "integer", "give a whole number such as 10")),
    }
}

/// A list of strings, when given: `tagPatternList`, `tagPrefixList`.
fn string_list(sel: &str, key: &str, selection: &Map<String, Value>) -> Result<Option<Vec<String>>, String> {
    let Some(value) = selection.get(key) else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(type_error(&format!("{sel}.{key}"), value, "array", "give a list of strings, e.g. [\"prod\"]"));
    };
    if items.is_empty() {
        return Err(format!(
            "{sel}.{key}: {FAILURE}: array is too short: must have at least 1 elements but instance has 0 elements; list at least one, or remove {key}"
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(j, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(type_error(&format!("{sel}.{key}[{j}]"), other, "string", "give each entry as a string")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `value` as an object; `key` names it under `at`.
fn object<'v>(at: &str, key: &str, value: &'v Value) -> Result<&'v Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(type_error(&format!("{at}.{key}"), other, "object", &format!("give {key} as an object"))),
    }
}

/// One of `allowed`, as AWS's schema words a miss.
fn enumerated<'a>(key: &str, value: &Value, allowed: &[&'a str]) -> Result<&'a str, String> {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    match value {
        Value::String(s) => allowed.iter().find(|a| **a == s).copied().ok_or_else(|| {
            format!(
                "{key}: {FAILURE}: instance value ({value}) not found in enum (possible values: [{}]); use one of them",
                quoted.join(",")
            )
        }),
        other => Err(type_error(key, other, "string", &format!("use one of {}", quoted.join(", ")))),
    }
}

/// Refuses missing required properties and properties AWS's schema does not allow.
fn check_properties(at: &str, map: &Map<String, Value>, allowed: &[&str], required: &[&str]) -> Result<(), String> {
    let missing: Vec<String> = required.iter().filter(|k| !map.contains_key(**k)).map(|k| format!("\"{k}\"")).collect();
    if !missing.is_empty() {
        return Err(format!("{at}: {FAILURE}: object has missing required properties ([{}]); add them", missing.join(",")));
    }
    let unknown: Vec<String> = map.keys().filter(|k| !allowed.contains(&k.as_str())).map(|k| format!("\"{k}\"")).collect();
    if !unknown.is_empty() {
        return Err(format!(
            "{at}: {FAILURE}: object instance has properties which are not allowed by the schema: ([{}]); allowed here: {}",
            unknown.join(","),
            allowed.join(", ")
        ));
    }
    Ok(())
}

/// AWS's schema error for a value of the wrong JSON type.
fn type_error(key: &str, value: &Value, allowed: &str, fix: &str) -> String {
    let found = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    format!("{key}: {FAILURE}: instance type ({found}) does not match any allowed primitive type (allowed: [\"{allowed}\"]); {fix}")
}
