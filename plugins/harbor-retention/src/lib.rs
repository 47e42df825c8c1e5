//! `harbor-retention`: a Harbor tag retention policy, taken verbatim, as a tagwarden
//! retention plugin.
//!
//! Harbor works on artifacts (a manifest with all of its tags), so tags are grouped by
//! digest first. Then, as Harbor's retention job does (`src/pkg/retention`):
//! 1. only enabled rules whose repository selectors match this repository apply; when
//!    none does, Harbor runs no job here and nothing is deleted;
//! 2. each rule keeps the artifacts its tag selectors all pick (a tag selector picks an
//!    artifact when *any* of its tags matches, or by the "untagged" switch for an artifact
//!    with none), and its template retains some of them;
//! 3. rules are ORed: an artifact any rule retains is kept whole, with every tag; every
//!    other artifact of the repository is deleted.
//!
//! See README.md for the operator's view and every choice made where Harbor is unclear.

mod doublestar;
mod policy;

use std::borrow::Cow;

use serde_json::Value;
use tagwarden_images::{Image, Images};
use tagwarden_plugin_sdk::params::expected;
use tagwarden_plugin_sdk::{Columns, Decisions, RetentionInput, RetentionPolicy, Verdict, export_retention};

use policy::{RepositorySelector, Rule, TagSelector, Template};

const DAY_SECS: i64 = 86_400;

mod reason {
    pub const NOT_RETAINED: &str = "retained by no rule";
    pub const NO_RULES: &str = "the policy has no enabled rule: Harbor retains everything";
}

/// A validated Harbor retention policy: its enabled rules, with their reasons.
#[derive(Debug)]
pub struct HarborRetention {
    rules: Vec<(Rule, Verdict)>,
}

impl RetentionPolicy for HarborRetention {
    fn create(params: &str) -> Result<Self, String> {
        let document: Value = serde_json::from_str(params).map_err(|e| {
            format!("params: expected a Harbor retention policy ({{\"algorithm\": \"or\", \"rules\": [...]}}), could not parse it: {e}")
        })?;
        let Value::Object(document) = &document else {
            return Err(expected(
                "params",
                "a Harbor retention policy, a JSON object {\"algorithm\": \"or\", \"rules\": [...]}",
                &document,
            ));
        };
        let rules = policy::parse(document)?;
        let rules = rules
            .into_iter()
            .map(|rule| {
                let reason = format!("rule {}: {}", rule.number, rule.template.describe());
                (rule, Verdict::keep(Cow::Owned(reason)))
            })
            .collect();
        Ok(HarborRetention { rules })
    }

    /// Only what it reads is sent: it artifacts are digests; rules look at push, build and pull times.
    fn reads(&self) -> Columns {
        Columns::DIGESTS | Columns::PUSHED_AT | Columns::CREATED_AT | Columns::LAST_PULLED_AT
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        if self.rules.is_empty() {
            return Ok(Decisions::uniform(input, Verdict::keep(reason::NO_RULES)));
        }
        // Harbor's repository selectors see the name without the project (its first segment).
        let repository = repository_in_project(input.repository);
        let mut applicable = Vec::new();
        for (rule, verdict) in &self.rules {
            if selects_repository(&rule.repository_selectors, repository)? {
                applicable.push((rule, verdict));
            }
        }
        if applicable.is_empty() {
            let why = format!("no rule's repositories include {repository:?}: Harbor runs no retention here");
            return Ok(Decisions::uniform(input, Verdict::keep(Cow::Owned(why))));
        }

        let images = tagwarden_images::group(input);
        let times = Times::of(&images, input);
        let mut retained_by: Vec<Option<&Verdict>> = vec![None; images.images.len()];
        for (rule, verdict) in applicable {
            let mut picked = Vec::new();
            for (i, image) in images.images.iter().enumerate() {
                if selects_artifact(&rule.tag_selectors, &images, input, image)? {
                    picked.push(i);
                }
            }
            for i in retain(rule, picked, &times, &images, input)? {
                retained_by[i].get_or_insert(verdict);
            }
        }
        let verdicts = retained_by.into_iter().map(|v| v.cloned().unwrap_or_else(|| Verdict::delete(reason::NOT_RETAINED))).collect();
        Ok(images.spread(input, verdicts))
    }
}

export_retention!(HarborRetention);

/// Harbor's `ParseRepository`: `project/rest` gives `rest`; a name without `/` is itself.
fn repository_in_project(path: &str) -> &str {
    let path = path.trim_matches('/');
    path.split_once('/').map_or(path, |(_, rest)| rest)
}

fn selects_repository(selectors: &[RepositorySelector], repository: &str) -> Result<bool, String> {
    for s in selectors {
        let matched = doublestar::matches(&s.pattern, repository).map_err(|_| bad_pattern(&s.pattern))?;
        if matched == s.excludes {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether every tag selector picks the artifact, as Harbor's doublestar selector does.
fn selects_artifact(selectors: &[TagSelector], images: &Images<'_>, input: &RetentionInput<'_>, image: &Image<'_>) -> Result<bool, String> {
    for s in selectors {
        let picked = if image.is_untagged() {
            // The switch reads "untagged artifacts are part of the pattern": `matches`
            // picks them when it is on, `excludes` when it is off.
            s.untagged != s.excludes
        } else {
            let mut any = false;
            for tag in images.tags(input, image) {
                let matched = doublestar::matches(&s.pattern, tag.name).map_err(|_| bad_pattern(&s.pattern))?;
                // `matches`: some tag matches; `excludes`: some tag does not.
                if matched != s.excludes {
                    any = true;
                    break;
                }
            }
            any
        };
        if !picked {
            return Ok(false);
        }
    }
    Ok(true)
}

fn bad_pattern(pattern: &str) -> String {
    format!("pattern {pattern:?}: syntax error")
}

/// Each artifact's push and pull time in whole seconds, as Harbor keeps them: the latest
/// of its tags' (and for an untagged manifest its own). `None` pull time: never pulled.
struct Times {
    pushed: Vec<Option<i64>>,
    pulled: Vec<Option<i64>>,
    /// Whether any tag of the input has a pull time: if none has, the registry does not
    /// record pulls, and a rule that reads them cannot be evaluated.
    pulls_recorded: bool,
}

impl Times {
    fn of(images: &Images<'_>, input: &RetentionInput<'_>) -> Self {
        let secs = |t: tagwarden_plugin_sdk::Timestamp| t.unix_micros().div_euclid(1_000_000);
        let pushed = images
            .images
            .iter()
            .map(|image| {
                let latest_push = images
                    .latest(input, image, |t| t.pushed_at())
                    .or_else(|| image.untagged.iter().filter_map(|&u| input.untagged[u].pushed_at()).max());
                let latest_build = || {
                    images
                        .latest(input, image, |t| t.created_at())
                        .or_else(|| image.untagged.iter().filter_map(|&u| input.untagged[u].created_at()).max())
                };
                latest_push.or_else(latest_build).map(secs)
            })
            .collect();
        let pulled = images.images.iter().map(|image| images.latest(input, image, |t| t.last_pulled_at()).map(secs)).collect();
        let pulls_recorded = input.tags.iter().any(|t| t.last_pulled_at().is_some());
        Times { pushed, pulled, pulls_recorded }
    }
}

/// The artifacts `rule` retains among those its selectors `picked` (listing order).
fn retain(rule: &Rule, picked: Vec<usize>, times: &Times, images: &Images<'_>, input: &RetentionInput<'_>) -> Result<Vec<usize>, String> {
    if picked.is_empty() {
        return Ok(picked);
    }
    if rule.template.needs_pull_times() && !times.pulls_recorded {
        return Err(format!(
            "rule {} ({}) needs pull times, but no tag in the recording has last_pulled_at (the registry does not report pulls); record from a registry that does, or use a push-based rule",
            rule.number,
            rule.template.describe()
        ));
    }
    let pushed = |i: usize| -> Result<i64, String> {
        times.pushed[i].ok_or_else(|| {
            let image = &images.images[i];
            let what = match image.tags.first() {
                Some(&t) => format!("artifact {} (tag {:?})", image.digest, input.tags.at(t).name),
                None => format!("untagged artifact {}", image.digest),
            };
            format!("rule {} ({}) needs push times, but {what} has neither pushed_at nor created_at", rule.number, rule.template.describe())
        })
    };
    // Never pulled sorts after every pull, as Harbor's zero time does.
    let pulled = |i: usize| times.pulled[i].unwrap_or(i64::MIN);
    let now = input.now.unix_micros();
    let now_secs = now.div_euclid(1_000_000);
    // The K most recent by `key`; of equal keys, the artifact listed later counts as more
    // recent (Harbor's sort is not stable, so it has no order of its own there).
    let latest = |k: i64, key: &dyn Fn(usize) -> Result<i64, String>| -> Result<Vec<usize>, String> {
        let mut keyed = picked.iter().map(|&i| key(i).map(|t| (t, i))).collect::<Result<Vec<_>, _>>()?;
        keyed.sort_unstable_by(|a, b| b.cmp(a));
        Ok(keyed.into_iter().take(usize::try_from(k).unwrap_or(usize::MAX)).map(|(_, i)| i).collect())
    };
    let retained = match rule.template {
        Template::Always => picked,
        Template::LatestPushed(k) => latest(k, &pushed)?,
        Template::LatestPulled(n) => latest(n, &|i| Ok(pulled(i)))?,
        Template::LatestActive(k) => latest(k, &|i| Ok(pushed(i)?.max(pulled(i))))?,
        Template::DaysSinceLastPush(n) => {
            let min = now_secs - n.saturating_mul(DAY_SECS);
            let mut kept = Vec::new();
            for i in picked {
                if pushed(i)? >= min {
                    kept.push(i);
                }
            }
            kept
        }
        Template::DaysSinceLastPull(n) => {
            let min = now_secs - n.saturating_mul(DAY_SECS);
            picked.into_iter().filter(|&i| times.pulled[i].is_some_and(|t| t >= min)).collect()
        }
        Template::LastXDays(x) => {
            // `time.Unix(pushed, 0).After(now - x days)`: whole-second push time against the exact cutoff.
            let cutoff = now.saturating_sub(x.saturating_mul(DAY_SECS).saturating_mul(1_000_000));
            let mut kept = Vec::new();
            for i in picked {
                if pushed(i)?.saturating_mul(1_000_000) > cutoff {
                    kept.push(i);
                }
            }
            kept
        }
    };
    Ok(retained)
}

#[cfg(test)]
mod tests;
