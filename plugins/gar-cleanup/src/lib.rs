//! `gar-cleanup`: Google Artifact Registry cleanup policies, taken verbatim, as a
//! tagwarden retention plugin.
//!
//! Artifact Registry decides per *version* (for Docker, a manifest digest with all of its
//! tags), so the tags are grouped by digest first. Then, as Google documents it:
//! - a version matches a policy's condition when every field set in it holds, and a prefix
//!   list holds when any prefix matches;
//! - a version that any KEEP policy matches is kept ("if an artifact version matches
//!   criteria in both a delete policy and a keep policy, Artifact Registry applies the
//!   keep policy"), `mostRecentVersions` keeping the N most recent versions of a package;
//! - otherwise, a version that any DELETE policy matches is deleted; every other one is kept.
//!
//! One tagwarden repository is one Artifact Registry package. See README.md for the
//! operator's view and every choice made where Google is unclear.

mod policy;

use std::borrow::Cow;

use serde_json::Value;
use tagwarden_images::{Image, Images};
use tagwarden_plugin_sdk::params::expected;
use tagwarden_plugin_sdk::{Columns, Decisions, RetentionInput, RetentionPolicy, Timestamp, Verdict, export_retention};

use policy::{Condition, Policy, Rule, TagState};

pub use policy::parse_duration;

mod reason {
    pub const NO_DELETE: &str = "no delete policy matches";
    pub const DRY_RUN: &str = "cleanupPolicyDryRun: Artifact Registry deletes nothing";
}

/// Validated cleanup policies, with their verdicts.
#[derive(Debug)]
pub struct GarCleanup {
    policies: Vec<(Policy, Verdict)>,
    dry_run: bool,
}

impl RetentionPolicy for GarCleanup {
    fn create(params: &str) -> Result<Self, String> {
        let document: Value = serde_json::from_str(params)
            .map_err(|e| format!("params: expected {{\"cleanupPolicies\": [...]}}, could not parse it: {e}"))?;
        let Value::Object(document) = &document else {
            return Err(expected("params", "an object {\"cleanupPolicies\": [...]}", &document));
        };
        let (policies, dry_run) = policy::parse(document)?;
        let policies = policies
            .into_iter()
            .map(|p| {
                let verdict = if p.keep {
                    let what = match &p.rule {
                        Rule::MostRecent { keep_count, .. } => format!("keep policy {}: among the {keep_count} most recent versions", p.id),
                        Rule::Condition(_) => format!("keep policy {}: matches", p.id),
                    };
                    Verdict::keep(Cow::Owned(what))
                } else {
                    Verdict::delete(Cow::Owned(format!("delete policy {}: matches, no keep policy does", p.id)))
                };
                (p, verdict)
            })
            .collect();
        Ok(GarCleanup { policies, dry_run })
    }

    /// Only what it reads is sent: it versions are digests, aged by push time (build time as fallback).
    fn reads(&self) -> Columns {
        Columns::DIGESTS | Columns::PUSHED_AT | Columns::CREATED_AT
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        if self.dry_run {
            return Ok(Decisions::uniform(input, Verdict::keep(reason::DRY_RUN)));
        }
        let images = tagwarden_images::group(input);
        let uploaded: Vec<Option<Timestamp>> = images.images.iter().map(|image| upload_time(&images, input, image)).collect();
        let package = input.repository;

        // Which versions each mostRecentVersions policy keeps: the N most recent, the later
        // listed first among equal times.
        let mut most_recent: Vec<Option<Vec<bool>>> = Vec::with_capacity(self.policies.len());
        for (p, _) in &self.policies {
            most_recent.push(match &p.rule {
                Rule::MostRecent { keep_count, package_prefixes } if any_prefix(package_prefixes, package) => {
                    let mut order = Vec::with_capacity(images.images.len());
                    for (i, t) in uploaded.iter().enumerate() {
                        order.push((t.ok_or_else(|| no_time(&images, input, i, &p.id))?, i));
                    }
                    order.sort_unstable_by(|a, b| b.cmp(a));
                    let mut kept = vec![false; images.images.len()];
                    for &(_, i) in order.iter().take(*keep_count as usize) {
                        kept[i] = true;
                    }
                    Some(kept)
                }
                _ => None,
            });
        }

        let mut verdicts = Vec::with_capacity(images.images.len());
        for (i, image) in images.images.iter().enumerate() {
            let mut keep = None;
            let mut delete = None;
            for (n, (p, verdict)) in self.policies.iter().enumerate() {
                let matched = match &p.rule {
                    Rule::MostRecent { .. } => most_recent[n].as_ref().is_some_and(|kept| kept[i]),
                    Rule::Condition(c) => {
                        // Only look at times when the condition has an age.
                        if (c.older_than.is_some() || c.newer_than.is_some())
                            && uploaded[i].is_none()
                            && self.decides(c, &images, input, image, package)
                        {
                            return Err(no_time(&images, input, i, &p.id));
                        }
                        matches(c, &images, input, image, package, uploaded[i], input.now)
                    }
                };
                if matched {
                    if p.keep {
                        keep.get_or_insert(verdict);
                    } else {
                        delete.get_or_insert(verdict);
                    }
                }
            }
            verdicts.push(match (keep, delete) {
                (Some(k), _) => k.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) => Verdict::keep(reason::NO_DELETE),
            });
        }
        Ok(images.spread(input, verdicts))
    }
}

export_retention!(GarCleanup);

impl GarCleanup {
    /// Whether every part of `c` but its ages holds: only then does a missing time matter.
    fn decides(&self, c: &Condition, images: &Images<'_>, input: &RetentionInput<'_>, image: &Image<'_>, package: &str) -> bool {
        let ageless = Condition { older_than: None, newer_than: None, ..c.clone() };
        matches(&ageless, images, input, image, package, None, input.now)
    }
}

/// Whether `image` meets every field set in `c`.
fn matches(
    c: &Condition,
    images: &Images<'_>,
    input: &RetentionInput<'_>,
    image: &Image<'_>,
    package: &str,
    uploaded: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    let state_ok = match c.tag_state {
        TagState::Any => true,
        TagState::Tagged => !image.is_untagged(),
        TagState::Untagged => image.is_untagged(),
    };
    let tags_ok = c.tag_prefixes.is_empty() || images.tags(input, image).any(|t| any_prefix(&c.tag_prefixes, t.name));
    let version_ok = c.version_prefixes.is_empty() || any_prefix(&c.version_prefixes, image.digest);
    let package_ok = any_prefix(&c.package_prefixes, package);
    // Age is how long ago the version was uploaded; strictly older / strictly newer.
    let age = |t: Timestamp| now.duration_since(t);
    let older_ok = c.older_than.is_none_or(|d| uploaded.is_some_and(|t| t < now && age(t) > d));
    let newer_ok = c.newer_than.is_none_or(|d| uploaded.is_some_and(|t| t >= now || age(t) < d));
    state_ok && tags_ok && version_ok && package_ok && older_ok && newer_ok
}

/// An empty list matches everything; otherwise any prefix must match.
fn any_prefix(prefixes: &[String], name: &str) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// When the version was uploaded: the earliest `pushed_at` of its tags (or its own, when
/// untagged), else its build time `created_at`.
fn upload_time(images: &Images<'_>, input: &RetentionInput<'_>, image: &Image<'_>) -> Option<Timestamp> {
    images
        .earliest(input, image, |t| t.pushed_at(), |u| u.pushed_at())
        .or_else(|| images.earliest(input, image, |t| t.created_at(), |u| u.created_at()))
}

fn no_time(images: &Images<'_>, input: &RetentionInput<'_>, i: usize, policy: &str) -> String {
    let image = &images.images[i];
    let what = match image.tags.first() {
        Some(&t) => format!("version {} (tag {:?})", image.digest, input.tags.at(t).name),
        None => format!("untagged version {}", image.digest),
    };
    format!("policy {policy} needs the version's upload time, but {what} has neither pushed_at nor created_at")
}

#[cfg(test)]
mod tests;
