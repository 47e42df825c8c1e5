//! `ecr-lifecycle`: an AWS ECR lifecycle policy, taken verbatim, as a tagwarden
//! retention plugin.
//!
//! ECR decides per image (a manifest with all of its tags), so the tags are grouped by
//! digest first. Then, as AWS documents it:
//! 1. every rule, in ascending `rulePriority`, *identifies* the images its selection
//!    matches and marks some of them for expiry (the oldest beyond `countNumber`, or
//!    those pushed more than `countNumber` days ago) — counting every image it
//!    identifies, including those a higher-priority rule identified too;
//! 2. an image is decided by the first rule that identifies it: it expires if that rule
//!    marked it, and is kept otherwise. A lower-priority rule can never expire it.
//! 3. an expired image loses every tag and its manifest; an image no rule identifies is kept.
//!
//! See README.md for the operator's view and every choice made where AWS is silent.

mod pattern;
mod policy;

use std::borrow::Cow;

use serde_json::Value;
use tagwarden_images::{Image, Images};
use tagwarden_plugin_sdk::params::expected;
use tagwarden_plugin_sdk::{Columns, Decisions, Duration, RetentionInput, RetentionPolicy, Timestamp, Verdict, export_retention};

use policy::{Count, Rule, Selection};

const DAY: Duration = Duration::from_secs(86_400);

/// A validated ECR lifecycle policy, rules in ascending priority, with their reasons.
#[derive(Debug)]
pub struct EcrLifecycle {
    rules: Vec<PreparedRule>,
}

#[derive(Debug)]
struct PreparedRule {
    rule: Rule,
    /// The verdict for an image this rule decides and expires.
    expire: Verdict,
    /// The verdict for an image this rule decides and does not expire.
    keep: Verdict,
}

mod reason {
    pub const NO_RULE: &str = "no rule selects this image";
}

impl RetentionPolicy for EcrLifecycle {
    fn create(params: &str) -> Result<Self, String> {
        let document: Value = serde_json::from_str(params)
            .map_err(|e| format!("params: expected an ECR lifecycle policy ({{\"rules\": [...]}}), could not parse it: {e}"))?;
        let Value::Object(document) = &document else {
            return Err(expected("params", "an ECR lifecycle policy, a JSON object {\"rules\": [...]}", &document));
        };
        let rules = policy::parse(document)?;
        Ok(EcrLifecycle { rules: rules.into_iter().map(PreparedRule::new).collect() })
    }

    /// Only what it reads is sent: it images are grouped by digest and aged by push time (build time as fallback).
    fn reads(&self) -> Columns {
        Columns::DIGESTS | Columns::PUSHED_AT | Columns::CREATED_AT
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        let images = tagwarden_images::group(input);
        // Each image's push time, and its rank in listing order for ties.
        let pushed: Vec<Option<Timestamp>> = images.images.iter().map(|image| push_time(&images, input, image)).collect();

        // `decided[i]`: the index of the first rule that identified image i, and whether it expires it.
        let mut decided: Vec<Option<(usize, bool)>> = vec![None; images.images.len()];
        for (r, prepared) in self.rules.iter().enumerate() {
            let identified: Vec<usize> =
                (0..images.images.len()).filter(|&i| prepared.rule.selects(&images, input, &images.images[i])).collect();
            if identified.is_empty() {
                continue;
            }
            let times = identified
                .iter()
                .map(|&i| pushed[i].map(|t| (t, i)).ok_or_else(|| no_push_time(input, &images.images[i], prepared.rule.priority)))
                .collect::<Result<Vec<(Timestamp, usize)>, String>>()?;
            for (i, expires) in prepared.rule.marks(times, input.now) {
                decided[i].get_or_insert((r, expires));
            }
        }

        let verdicts = decided
            .into_iter()
            .map(|d| match d {
                None => Verdict::keep(reason::NO_RULE),
                Some((r, true)) => self.rules[r].expire.clone(),
                Some((r, false)) => self.rules[r].keep.clone(),
            })
            .collect();
        Ok(images.spread(input, verdicts))
    }
}

export_retention!(EcrLifecycle);

impl PreparedRule {
    fn new(rule: Rule) -> Self {
        let p = rule.priority;
        let (expire, keep) = match rule.count {
            Count::MoreThan(n) => (
                format!("rule {p}: expire, beyond the {n} most recently pushed images it selects"),
                format!("rule {p}: keep, among the {n} most recently pushed images it selects"),
            ),
            Count::SincePushedDays(n) => (
                format!("rule {p}: expire, pushed more than {n} {} ago", days(n)),
                format!("rule {p}: keep, pushed {n} {} ago or less", days(n)),
            ),
        };
        PreparedRule { rule, expire: Verdict::delete(Cow::Owned(expire)), keep: Verdict::keep(Cow::Owned(keep)) }
    }
}

fn days(n: u32) -> &'static str {
    if n == 1 { "day" } else { "days" }
}

impl Rule {
    /// Whether this rule identifies `image`.
    fn selects(&self, images: &Images<'_>, input: &RetentionInput<'_>, image: &Image<'_>) -> bool {
        match &self.selection {
            Selection::Any => true,
            Selection::Untagged => image.is_untagged(),
            // Every pattern (prefix) must match some tag of the image: ["alpha*", "beta*"]
            // selects only images that carry both an alpha and a beta tag.
            Selection::TaggedPatterns(patterns) => {
                !image.is_untagged() && patterns.iter().all(|p| images.tags(input, image).any(|t| p.matches(t.name)))
            }
            Selection::TaggedPrefixes(prefixes) => {
                !image.is_untagged() && prefixes.iter().all(|p| images.tags(input, image).any(|t| t.name.starts_with(p.as_str())))
            }
        }
    }

    /// Whether each identified image (push time, image index) is marked for expiry.
    fn marks(&self, mut identified: Vec<(Timestamp, usize)>, now: Timestamp) -> Vec<(usize, bool)> {
        match self.count {
            Count::MoreThan(n) => {
                // Most recent first; of two images pushed at the same time, the one listed
                // later counts as more recent.
                identified.sort_unstable_by(|a, b| b.cmp(a));
                identified.iter().enumerate().map(|(rank, &(_, i))| (i, rank >= n as usize)).collect()
            }
            Count::SincePushedDays(n) => {
                let cutoff = now.saturating_sub(DAY * n);
                identified.iter().map(|&(t, i)| (i, t < cutoff)).collect()
            }
        }
    }
}

/// When the image was pushed: the earliest `pushed_at` of its tags (the manifest has been
/// in the repository since then), else its build time `created_at`, which is what a plain
/// OCI registry offers.
fn push_time(images: &Images<'_>, input: &RetentionInput<'_>, image: &Image<'_>) -> Option<Timestamp> {
    images
        .earliest(input, image, |t| t.pushed_at(), |u| u.pushed_at())
        .or_else(|| images.earliest(input, image, |t| t.created_at(), |u| u.created_at()))
}

/// The error for an image that a rule identifies but whose age nothing in the input tells.
fn no_push_time(input: &RetentionInput<'_>, image: &Image<'_>, priority: u32) -> String {
    let what = match image.tags.first() {
        Some(&t) => format!("image {} (tag {:?})", image.digest, input.tags.at(t).name),
        None => format!("untagged image {}", image.digest),
    };
    format!(
        "{what} has neither pushed_at nor created_at, and rule {priority} needs its push time; record the repository from a registry that reports pushed_at or image creation times"
    )
}

#[cfg(test)]
mod tests;
