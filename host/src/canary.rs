//! The canary: what a new version of a retention plugin would decide differently from the
//! version it replaces, over the same tag lists (issue #11 §3).
//!
//! Pure: the caller evaluates both versions (through [`crate::runtime`], as `eval` does) and
//! hands the two answers here. `tagwarden plugins diff OLD.wasm NEW.wasm` compares two files
//! over recordings, for CI; the plugin directory ([`crate::plugin_dir`]) compares a new file
//! with the version in service over the latest tag lists of the repositories its policies
//! cover, records the [`Diff`] (`store::PluginTable::record_canary`) and holds the new version
//! back when [`Diff::held_because`] says so.

use serde::{Deserialize, Serialize};

use crate::model::{Action, RetentionDecisions, TagList};

/// Tag names kept per repository and side of a difference; the counts are always whole.
pub const NAMES_KEPT: usize = 20;

/// One repository compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryDiff {
    pub repository: String,
    /// The policy whose params both versions decided with (the daemon's canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub tags: usize,
    pub old_deletes: usize,
    pub new_deletes: usize,
    /// Tags the new version deletes and the old one keeps.
    pub extra_deletions: usize,
    /// The first [`NAMES_KEPT`] of them, in the list's order.
    pub extra_names: Vec<String>,
    /// Tags the old version deletes and the new one keeps.
    pub fewer_deletions: usize,
    pub fewer_names: Vec<String>,
    /// Why this repository was not compared (an evaluation failed, the list could not be
    /// read); its counts are then zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The new version failed where the old one decided: a reason to hold it back.
    #[serde(default)]
    pub new_failed: bool,
}

impl RepositoryDiff {
    /// A repository that was not compared, for `why`. `new_failed`: the new version failed
    /// where the old one decided.
    pub fn not_compared(repository: &str, policy: Option<&str>, why: String, new_failed: bool) -> RepositoryDiff {
        RepositoryDiff {
            repository: repository.to_owned(),
            policy: policy.map(str::to_owned),
            tags: 0,
            old_deletes: 0,
            new_deletes: 0,
            extra_deletions: 0,
            extra_names: Vec::new(),
            fewer_deletions: 0,
            fewer_names: Vec::new(),
            error: Some(why),
            new_failed,
        }
    }
}

/// Compares two answers for the same `list`: tag by tag, what each version deletes.
pub fn compare(list: &TagList, policy: Option<&str>, old: &RetentionDecisions, new: &RetentionDecisions) -> RepositoryDiff {
    let mut diff = RepositoryDiff::not_compared(&list.repository, policy, String::new(), false);
    diff.error = None;
    diff.tags = list.tags().len();
    for (i, tag) in list.tags().iter().enumerate() {
        let (o, n) = (old.tag(i).action == Action::Delete, new.tag(i).action == Action::Delete);
        diff.old_deletes += usize::from(o);
        diff.new_deletes += usize::from(n);
        let (count, names) = match (o, n) {
            (false, true) => (&mut diff.extra_deletions, &mut diff.extra_names),
            (true, false) => (&mut diff.fewer_deletions, &mut diff.fewer_names),
            _ => continue,
        };
        *count += 1;
        if names.len() < NAMES_KEPT {
            names.push(tag.name.clone());
        }
    }
    diff
}

/// The comparison over every repository, with totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub repositories: Vec<RepositoryDiff>,
    /// Totals over the repositories compared.
    pub tags: usize,
    pub old_deletes: usize,
    pub new_deletes: usize,
    pub extra_deletions: usize,
    pub fewer_deletions: usize,
    /// Repositories not compared (see [`RepositoryDiff::error`]).
    pub not_compared: usize,
    /// Of those, the ones where the new version failed and the old one decided.
    pub new_failed: usize,
}

impl Diff {
    pub fn push(&mut self, r: RepositoryDiff) {
        self.tags += r.tags;
        self.old_deletes += r.old_deletes;
        self.new_deletes += r.new_deletes;
        self.extra_deletions += r.extra_deletions;
        self.fewer_deletions += r.fewer_deletions;
        self.not_compared += usize::from(r.error.is_some());
        self.new_failed += usize::from(r.new_failed);
        self.repositories.push(r);
    }

    /// Tags the new version deletes and the old one keeps, as a fraction of the tags compared.
    pub fn extra_fraction(&self) -> f64 {
        if self.tags == 0 { 0.0 } else { self.extra_deletions as f64 / self.tags as f64 }
    }

    /// Why the new version must wait for an operator, if it must: it deletes more than
    /// `max_extra` (a fraction of the tags compared) beyond the old one, or it failed on a
    /// repository the old one decided.
    pub fn held_because(&self, max_extra: f64) -> Option<String> {
        let mut why = Vec::new();
        if self.extra_fraction() > max_extra {
            why.push(format!(
                "it would delete {} tags the version in service keeps ({}), more than the brake allows ({})",
                self.extra_deletions,
                percent(self.extra_fraction()),
                percent(max_extra)
            ));
        }
        if self.new_failed > 0 {
            why.push(format!("it failed on {} repositories where the version in service decided", self.new_failed));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The extra deletions against the brake, for lists: `+4 tags (20.0%), over the 10.0% brake`.
    pub fn against_brake(&self, max_extra: f64) -> String {
        let side = if self.extra_fraction() > max_extra { "over" } else { "within" };
        let mut s = format!("+{} tags ({}), {side} the {} brake", self.extra_deletions, percent(self.extra_fraction()), percent(max_extra));
        if self.new_failed > 0 {
            s.push_str(&format!("; failed on {} repositories", self.new_failed));
        }
        s
    }

    /// One line: what was compared and what differs.
    pub fn summary(&self) -> String {
        let compared = self.repositories.len() - self.not_compared;
        let mut s = format!(
            "{compared} repositories, {} tags compared: the new version deletes {} tags the old one keeps ({}) and keeps {} the old one deletes ({} → {} deletions)",
            self.tags,
            self.extra_deletions,
            percent(self.extra_fraction()),
            self.fewer_deletions,
            self.old_deletes,
            self.new_deletes,
        );
        if self.not_compared > 0 {
            s.push_str(&format!("; {} repositories not compared", self.not_compared));
        }
        s
    }
}

/// `0.05` → `5.0%`.
pub fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Digest, Rule, Tag};

    fn decisions(list: &TagList, delete: &[&str]) -> RetentionDecisions {
        let rules = vec![Rule { action: Action::Keep, reason: "keep".into() }, Rule { action: Action::Delete, reason: "delete".into() }];
        let tags = list.tags().iter().map(|t| u8::from(delete.contains(&t.name.as_str()))).collect();
        RetentionDecisions::validate(list, rules, tags, vec![]).unwrap()
    }

    /// The brake is one fraction over the whole sample (every policy's repositories
    /// together), not per repository: 9 extra deletions in a 10-tag repository (90%) next to
    /// an unchanged 290-tag one are 3% of the 300 tags compared.
    #[test]
    fn the_brake_is_a_fraction_of_all_the_tags_compared_not_of_each_repository() {
        let list = |repository: &str, n: usize| {
            let tags = (0..n).map(|i| Tag::new(format!("t{i:03}"), Digest::sha256_of(&i.to_le_bytes()))).collect();
            TagList::new(repository, tags, vec![]).unwrap()
        };
        let (small, big) = (list("group/small", 10), list("group/big", 290));
        let nine: Vec<String> = (0..9).map(|i| format!("t{i:03}")).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        let mut diff = Diff::default();
        diff.push(compare(&small, Some("a"), &decisions(&small, &[]), &decisions(&small, &nine)));
        diff.push(compare(&big, Some("b"), &decisions(&big, &[]), &decisions(&big, &[])));
        assert_eq!((diff.tags, diff.extra_deletions), (300, 9));
        assert!((diff.extra_fraction() - 0.03).abs() < 1e-9, "{}", diff.extra_fraction());
        assert_eq!(diff.held_because(0.05), None, "90% in one repository, 3% of the sample: under a 5% brake");
        assert!(diff.held_because(0.02).unwrap().contains("9 tags"), "3% of the sample is over a 2% brake");
        assert_eq!(diff.against_brake(0.05), "+9 tags (3.0%), within the 5.0% brake");
        assert_eq!(diff.against_brake(0.02), "+9 tags (3.0%), over the 2.0% brake");
    }

    #[test]
    fn counts_both_directions_keeps_the_first_names_and_brakes_on_the_fraction() {
        let names: Vec<String> = (0..30).map(|i| format!("t{i:02}")).collect();
        let tags = names.iter().enumerate().map(|(i, n)| Tag::new(n, Digest::sha256_of(&[i as u8]))).collect();
        let list = TagList::new("group/app", tags, vec![]).unwrap();
        let old: Vec<&str> = vec!["t00", "t01", "t02"];
        let new: Vec<&str> = names.iter().skip(2).map(String::as_str).collect();
        let r = compare(&list, Some("p"), &decisions(&list, &old), &decisions(&list, &new));
        assert_eq!((r.tags, r.old_deletes, r.new_deletes, r.extra_deletions, r.fewer_deletions), (30, 3, 28, 27, 2));
        assert_eq!(r.extra_names.len(), NAMES_KEPT);
        assert_eq!(r.extra_names[0], "t03");
        assert_eq!(r.fewer_names, ["t00", "t01"]);

        let mut diff = Diff::default();
        diff.push(r);
        diff.push(RepositoryDiff::not_compared("group/other", Some("p"), "listing failed".into(), false));
        assert_eq!((diff.tags, diff.extra_deletions, diff.not_compared, diff.new_failed), (30, 27, 1, 0));
        assert!(diff.held_because(0.9).is_none());
        let why = diff.held_because(0.05).unwrap();
        assert!(why.contains("27 tags") && why.contains("90.0%") && why.contains("5.0%"), "{why}");
        assert!(diff.summary().starts_with("1 repositories, 30 tags compared"), "{}", diff.summary());

        diff.push(RepositoryDiff::not_compared("group/third", None, "the new version failed: trap".into(), true));
        assert!(diff.held_because(0.9).unwrap().contains("failed on 1 repositories"));
        // Round trip: what the store keeps is what `plugins diff NAME` shows.
        let text = serde_json::to_string(&diff).unwrap();
        assert_eq!(serde_json::from_str::<Diff>(&text).unwrap(), diff);
    }
}
