//! `semver-lines`: keep what a release stream needs, delete the rest.
//!
//! Of the tags `name_pattern` selects (whole name; by default every semver tag):
//! 1. every tag listed in `deployed` is kept, whatever else holds;
//! 2. a selected tag that is not a semantic version is deleted;
//! 3. a release (no pre-release part) is kept when it is among the `keep_per_minor` newest
//!    releases of its minor line (`MAJOR.MINOR`), by semver precedence;
//! 4. a pre-release is kept when it is newer than the newest release of the repository
//!    (every pre-release, when there is no release);
//! 5. everything else selected is deleted. Tags the pattern does not select, and untagged
//!    manifests, are kept.
//!
//! No built-in registry retention offers this (aws/containers-roadmap#1078 "keep what is
//! deployed", Harbor#12877, gcr-cleaner#16 "keep N per release stream"). See README.md.

mod version;

use std::collections::{BTreeMap, HashSet};

use tagwarden_plugin_sdk::names::NamePattern;
use tagwarden_plugin_sdk::params::Params;
use tagwarden_plugin_sdk::{Columns, Decisions, RetentionInput, RetentionPolicy, Verdict, export_retention, interned};

pub use version::Version;

/// Every param this plugin accepts.
const KNOWN_PARAMS: &[&str] = &["keep_per_minor", "deployed", "name_pattern"];

/// Selects semver tags, with or without a leading `v`; the parser decides the details.
const DEFAULT_NAME_PATTERN: &str = r"v?[0-9]+\.[0-9]+\.[0-9]+([-+].*)?";

mod reason {
    pub const DEPLOYED: &str = "deployed: listed in the deployed param";
    pub const NOT_SELECTED: &str = "name_pattern: not selected";
    pub const NOT_SEMVER: &str = "delete: selected by name_pattern, not a semantic version";
    pub const PRERELEASE_NEWER: &str = "pre-release: newer than the newest release";
    pub const PRERELEASE_OLDER: &str = "delete: pre-release not newer than the newest release";
    pub const UNTAGGED: &str = "untagged: not managed by semver-lines";
}

/// The policy, configured.
#[derive(Debug)]
pub struct SemverLines {
    keep_per_minor: usize,
    deployed: HashSet<String>,
    /// `^(?:<name_pattern>)$`, matched by the host (contract 0.2.1).
    selects: NamePattern,
    /// `keep_per_minor: among the N newest releases of its minor line`.
    among_newest: Verdict,
    /// `delete: older than the N newest releases of its minor line`.
    older: Verdict,
}

impl RetentionPolicy for SemverLines {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, KNOWN_PARAMS)?;
        let keep_per_minor = params.integer("keep_per_minor", 1..=10_000, 3)?;
        let deployed = params.strings("deployed")?.into_iter().map(str::to_owned).collect();
        let pattern = params.string("name_pattern")?.unwrap_or(DEFAULT_NAME_PATTERN);
        let selects = NamePattern::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("name_pattern: invalid regex {pattern:?}: {}", e.to_string().lines().last().unwrap_or_default()))?;
        // Built once: the reasons carry a param value, and the host allows 256 per answer.
        let among_newest = Verdict::keep(interned(format!("keep_per_minor: among the {keep_per_minor} newest releases of its minor line")));
        let older = Verdict::delete(interned(format!("delete: older than the {keep_per_minor} newest releases of its minor line")));
        Ok(SemverLines { keep_per_minor: keep_per_minor as usize, deployed, selects, among_newest, older })
    }

    /// Only what it reads is sent: it decides from tag names and the params alone.
    fn reads(&self) -> Columns {
        Columns::NONE
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        let mut tags: Vec<Verdict> = Vec::with_capacity(input.tags.len());
        // Selected semver tags: releases by minor line, pre-releases apart.
        let mut releases: BTreeMap<(u64, u64), Vec<(Version<'_>, usize)>> = BTreeMap::new();
        let mut prereleases: Vec<(Version<'_>, usize)> = Vec::new();
        let selected = input.matching(&self.selects);
        for (i, tag) in input.tags.iter().enumerate() {
            let verdict = if !selected.get(i) {
                Verdict::keep(reason::NOT_SELECTED)
            } else {
                match Version::parse(tag.name) {
                    None => Verdict::delete(reason::NOT_SEMVER),
                    Some(v) if v.is_prerelease() => {
                        prereleases.push((v, i));
                        Verdict::delete(reason::PRERELEASE_OLDER)
                    }
                    Some(v) => {
                        releases.entry(v.line()).or_default().push((v, i));
                        self.older.clone()
                    }
                }
            };
            tags.push(verdict);
        }

        let mut newest_release: Option<&Version<'_>> = None;
        for line in releases.values_mut() {
            // Newest first; equal precedence (`v1.2.3` and `1.2.3`) by name, for a fixed order.
            line.sort_by(|(a, i), (b, j)| b.precedence(a).then(j.cmp(i)));
            for (_, i) in line.iter().take(self.keep_per_minor) {
                tags[*i] = self.among_newest.clone();
            }
            if let Some((top, _)) = line.first()
                && newest_release.is_none_or(|n| top.precedence(n).is_gt())
            {
                newest_release = Some(top);
            }
        }
        for (v, i) in &prereleases {
            if newest_release.is_none_or(|n| v.precedence(n).is_gt()) {
                tags[*i] = Verdict::keep(reason::PRERELEASE_NEWER);
            }
        }
        // Last, so that it wins over every other rule.
        for (i, tag) in input.tags.iter().enumerate() {
            if self.deployed.contains(tag.name) {
                tags[i] = Verdict::keep(reason::DEPLOYED);
            }
        }

        Ok(Decisions { tags, untagged: vec![Verdict::keep(reason::UNTAGGED); input.untagged.len()] })
    }
}

export_retention!(SemverLines);

#[cfg(test)]
mod tests;
