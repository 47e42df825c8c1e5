//! `acr-purge`: Azure's `acr purge` (Azure/acr-cli) as a tagwarden retention plugin.
//!
//! Unlike the other peer plugins, acr purge works on *tags*: it untags, and deletes a
//! manifest only as a dangling (untagged) one. As acr-cli does (`cmd/acr/purge.go`):
//! 1. a repository is purged only when some `filter`'s repository regex matches its whole
//!    name; the tag regexes of every such filter are joined with `|`;
//! 2. a tag is a candidate when the tag regex matches **somewhere** in its name and its last
//!    update is strictly before `now - ago`;
//! 3. candidates are taken newest first and the first `keep` of them are kept;
//! 4. with `untagged` (or `untagged-only`, which leaves tags alone), untagged manifests last
//!    updated at or before `now - ago` are deleted, except the `keep` newest; a manifest
//!    whose time is unknown is kept (acr-cli since PR #532).
//!
//! See README.md for the operator's view and where tagwarden differs.

mod flags;

use std::borrow::Cow;
use std::cmp::Reverse;

use regex::Regex;
use serde_json::Value;
use tagwarden_plugin_sdk::params::expected;
use tagwarden_plugin_sdk::{Columns, Decisions, RetentionInput, RetentionPolicy, Timestamp, Verdict, export_retention};

use flags::Flags;

pub use flags::{parse_ago, split_filter};

mod reason {
    pub const NO_FILTER: &str = "no filter matches this repository: acr purge leaves it alone";
    pub const NO_MATCH: &str = "filter: the tag regex does not match";
    pub const TIME_UNKNOWN: &str = "last update time unknown: kept";
    pub const UNTAGGED_ONLY: &str = "untagged-only: tags are not purged";
    pub const UNTAGGED_NOT_PURGED: &str = "untagged manifests are purged only with untagged or untagged-only";
    pub const UNTAGGED_TIME_UNKNOWN: &str = "untagged: last update time unknown, kept (acr-cli since #532)";
}

/// `acr purge`'s flags, checked, with the reasons that carry their values.
#[derive(Debug)]
pub struct AcrPurge {
    flags: Flags,
    too_recent: Verdict,
    keep_tag: Verdict,
    delete_tag: Verdict,
    manifest_too_recent: Verdict,
    keep_manifest: Verdict,
    delete_manifest: Verdict,
}

impl RetentionPolicy for AcrPurge {
    fn create(params: &str) -> Result<Self, String> {
        let document: Value =
            serde_json::from_str(params).map_err(|e| format!("params: expected a JSON object, could not parse it: {e}"))?;
        let Value::Object(document) = &document else {
            return Err(expected("params", "a JSON object such as {\"filter\": \"my-repo:.*\", \"ago\": \"30d\"}", &document));
        };
        let flags = flags::parse(document)?;
        let ago = flags.ago.as_ref().map_or("0s (no ago given)".to_owned(), |(_, text)| text.clone());
        let keep = flags.keep;
        let owned = |text: String| Cow::Owned(text);
        Ok(AcrPurge {
            too_recent: Verdict::keep(owned(format!("ago: not older than {ago}"))),
            keep_tag: Verdict::keep(owned(format!("keep: among the {keep} most recent tags to purge"))),
            delete_tag: Verdict::delete(owned(format!("purge: tag matches the filter, older than {ago}"))),
            manifest_too_recent: Verdict::keep(owned(format!("untagged: updated within {ago}"))),
            keep_manifest: Verdict::keep(owned(format!("keep: among the {keep} most recent untagged manifests to purge"))),
            delete_manifest: Verdict::delete(owned(format!("untagged: dangling, updated {ago} ago or earlier"))),
            flags,
        })
    }

    /// Only what it reads is sent: it ages by push time (build time as fallback); untagged manifests are named by digest.
    fn reads(&self) -> Columns {
        Columns::DIGESTS | Columns::PUSHED_AT | Columns::CREATED_AT
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        let tag_regexes: Vec<&str> =
            self.flags.filters.iter().filter(|f| f.repository.is_match(input.repository)).map(|f| f.tag.as_str()).collect();
        // Without a filter, untagged-only purges every repository.
        let in_scope = !tag_regexes.is_empty() || (self.flags.untagged_only && self.flags.filters.is_empty());
        if !in_scope {
            return Ok(Decisions::uniform(input, Verdict::keep(reason::NO_FILTER)));
        }
        let ago = self.flags.ago.as_ref().map_or(Default::default(), |(d, _)| *d);
        let cutoff = input.now.saturating_sub(ago);

        let tags = if self.flags.untagged_only {
            vec![Verdict::keep(reason::UNTAGGED_ONLY); input.tags.len()]
        } else {
            self.purge_tags(input, &tag_regexes.join("|"), cutoff)?
        };
        let untagged = if self.flags.untagged || self.flags.untagged_only {
            self.purge_untagged(input, cutoff)
        } else {
            vec![Verdict::keep(reason::UNTAGGED_NOT_PURGED); input.untagged.len()]
        };
        Ok(Decisions { tags, untagged })
    }
}

export_retention!(AcrPurge);

impl AcrPurge {
    fn purge_tags(&self, input: &RetentionInput<'_>, tag_regex: &str, cutoff: Timestamp) -> Result<Vec<Verdict>, String> {
        // Each filter's tag regex compiled alone; joined they may not (`a)|(b` is two valid halves).
        let regex: Regex = flags::compile("filter: joined tag expressions", tag_regex)?;
        let mut verdicts = Vec::with_capacity(input.tags.len());
        let mut candidates: Vec<(Timestamp, usize)> = Vec::new();
        for (i, tag) in input.tags.iter().enumerate() {
            let verdict = if !regex.is_match(tag.name) {
                Verdict::keep(reason::NO_MATCH)
            } else {
                // A tag's last update: when it was pushed or moved; else its image's build time.
                match tag.pushed_at().or(tag.created_at()) {
                    None => Verdict::keep(reason::TIME_UNKNOWN),
                    Some(t) if t < cutoff => {
                        candidates.push((t, i));
                        self.delete_tag.clone()
                    }
                    Some(_) => self.too_recent.clone(),
                }
            };
            verdicts.push(verdict);
        }
        // ACR lists tags newest first ("timedesc"); of equal times, the later listed first.
        candidates.sort_unstable_by_key(|&(t, i)| Reverse((t, i)));
        for &(_, i) in candidates.iter().take(self.flags.keep as usize) {
            verdicts[i] = self.keep_tag.clone();
        }
        Ok(verdicts)
    }

    fn purge_untagged(&self, input: &RetentionInput<'_>, cutoff: Timestamp) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(input.untagged.len());
        let mut candidates: Vec<(Timestamp, &str, usize)> = Vec::new();
        for (i, manifest) in input.untagged.iter().enumerate() {
            verdicts.push(match manifest.pushed_at().or(manifest.created_at()) {
                None => Verdict::keep(reason::UNTAGGED_TIME_UNKNOWN),
                // Protected only when updated strictly after the cutoff.
                Some(t) if t > cutoff => self.manifest_too_recent.clone(),
                Some(t) => {
                    candidates.push((t, manifest.digest(), i));
                    self.delete_manifest.clone()
                }
            });
        }
        // acr-cli: with keep, nothing goes unless there are more candidates than keep; then
        // the newest `keep` stay, equal times ordered by digest.
        let keep = self.flags.keep as usize;
        if keep > 0 {
            candidates.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            for &(_, _, i) in candidates.iter().take(keep) {
                verdicts[i] = self.keep_manifest.clone();
            }
        }
        verdicts
    }
}

#[cfg(test)]
mod tests;
