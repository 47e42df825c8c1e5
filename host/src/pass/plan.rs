//! The decision half of a pass: the plugin's verdicts, host guards over them, and the
//! deletion plan. Pure apart from the plugin call; this is what `eval` and `--dry-run` show.

use std::sync::Arc;

use regex::Regex;
use serde::Serialize;

use super::PassError;
use crate::deletion::{DeletionPlan, ReferrerFate, referrer_fates};
use crate::model::{Action, RetentionDecisions, Rule, TagList, Timestamp};
use crate::runtime::{ConfiguredPolicy, PluginError, RetentionPlugin};

/// Host-level rules no plugin can override.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    /// Tag names matching any of these (whole name) are always kept.
    pub protect: Vec<Regex>,
    /// Refuse a repository whose plan deletes more than this fraction of its tags.
    pub max_delete_fraction: Option<f64>,
    /// Delete referrers whose subject is not in the repository (orphans); otherwise they
    /// are kept and reported.
    pub delete_orphaned_referrers: bool,
}

impl Guards {
    /// Compiles protection patterns; each matches the whole tag name.
    pub fn new(protect: &[String], max_delete_fraction: Option<f64>) -> anyhow::Result<Self> {
        let protect = protect
            .iter()
            .map(|p| {
                Regex::new(&format!(r"\A(?:{p})\z")).map_err(|e| anyhow::anyhow!("protection pattern `{p}` is not a valid regex: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Guards { protect, max_delete_fraction, delete_orphaned_referrers: false })
    }

    /// The same guards, deleting orphaned referrers or not (`[deletion] delete_orphaned_referrers`).
    pub fn deleting_orphaned_referrers(mut self, delete: bool) -> Self {
        self.delete_orphaned_referrers = delete;
        self
    }
}

/// A named retention policy: its plugin configured with the operator's params. Clones
/// share the configured plugin, and with it the instances it keeps warm.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub decider: Decider,
}

/// Who decides what a pass deletes.
#[derive(Clone, Debug)]
pub enum Decider {
    /// A retention plugin configured with the policy's params.
    Plugin(Arc<ConfiguredPolicy>),
    /// An operator asked for the whole repository to go (`tagwarden repos delete`): every
    /// tag and untagged manifest is to be deleted, through the same audited, checked
    /// execution as any pass. Protection rules still hold; the fraction guard does not
    /// (deleting everything is the request).
    DeleteRepository,
    /// The policy's plugin is not in service (its file was removed, it never loaded, or it
    /// is quarantined): nothing is decided and nothing deleted until it is back. The daemon
    /// does not claim such a policy's repositories; this is the answer if a pass asks anyway.
    Paused(String),
}

/// The policy name the daemon's repository deletions run under.
pub const REPOSITORY_DELETION: &str = "repository-deletion";

impl Policy {
    /// Configures `plugin` with `params` (JSON text), which the plugin validates.
    pub fn new(name: impl Into<String>, plugin: &RetentionPlugin, params: &str) -> Result<Self, PluginError> {
        Ok(Policy { name: name.into(), decider: Decider::Plugin(Arc::new(plugin.configure(params)?)) })
    }

    /// The host's policy for an operator's repository deletion.
    pub fn delete_repository() -> Self {
        Policy { name: REPOSITORY_DELETION.to_owned(), decider: Decider::DeleteRepository }
    }

    /// A policy whose plugin is out of service, for `why`.
    pub fn paused(name: impl Into<String>, why: impl Into<String>) -> Self {
        Policy { name: name.into(), decider: Decider::Paused(why.into()) }
    }

    /// Why the policy is paused, if it is.
    pub fn paused_because(&self) -> Option<&str> {
        match &self.decider {
            Decider::Paused(why) => Some(why),
            _ => None,
        }
    }

    /// The configured retention plugin, unless this is a repository deletion.
    pub fn retention(&self) -> Option<&ConfiguredPolicy> {
        match &self.decider {
            Decider::Plugin(p) => Some(p),
            Decider::DeleteRepository | Decider::Paused(_) => None,
        }
    }

    /// Who decided, for the runs and the audit log: the policy and its plugin's declared name,
    /// version and full sha256 (issue #11 §7: which exact file decided).
    pub fn decided_by(&self) -> String {
        match &self.decider {
            Decider::Plugin(p) => {
                let m = p.plugin().plugin().meta();
                format!("policy {} (plugin {} {} sha256:{})", self.name, m.name, m.version, m.sha256)
            }
            Decider::DeleteRepository => "operator: repository deletion (`tagwarden repos delete`)".to_owned(),
            Decider::Paused(why) => format!("policy {} (paused: {why})", self.name),
        }
    }
}

/// The final verdict for one tag or manifest, after host guards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub action: Action,
    pub reason: String,
    /// `plugin` or `host` (a protection rule overrode the plugin).
    pub decided_by: &'static str,
}

/// What a pass would do to one repository.
#[derive(Debug, Clone)]
pub struct RepositoryPlan {
    pub list: TagList,
    pub tags: Vec<Verdict>,
    pub untagged: Vec<Verdict>,
    /// One per referrer of the list ([`TagList::referrers`]), decided by the host: each
    /// follows its subject.
    pub referrers: Vec<Verdict>,
    pub deletion: DeletionPlan,
    /// Set when a guard refuses the repository: nothing is deleted.
    pub refusal: Option<String>,
}

impl RepositoryPlan {
    pub fn tags_to_delete(&self) -> usize {
        self.tags.iter().filter(|v| v.action == Action::Delete).count()
    }

    /// Cuts the deletion plan to at most `max_tags` tags (`deletion.max_list_size`) and
    /// proves the cut plan safe again. Returns how many tags wait for a later pass.
    pub fn truncate(&mut self, max_tags: usize) -> anyhow::Result<usize> {
        let before = self.deletion.tag_count();
        if before <= max_tags {
            return Ok(0);
        }
        let cut = self.deletion.truncate(&self.list, max_tags);
        let tag_actions: Vec<Action> = self.tags.iter().map(|v| v.action).collect();
        let untagged_actions: Vec<Action> = self.untagged.iter().map(|v| v.action).collect();
        let referrer_actions: Vec<Action> = self.referrers.iter().map(|v| v.action).collect();
        cut.check_with_referrers(&self.list, &tag_actions, &untagged_actions, &referrer_actions)?;
        self.deletion = cut;
        Ok(before - self.deletion.tag_count())
    }

    /// The rule (the verdict's reason) behind each deletion, by tag name, and by digest for
    /// untagged manifests: what the audit log records beside who decided.
    pub fn rules_of_deletions(&self) -> std::collections::HashMap<String, String> {
        let deleting = |v: &&Verdict| v.action == Action::Delete;
        let tags = self.list.tags().iter().zip(&self.tags).filter(|(_, v)| deleting(v)).map(|(t, v)| (t.name.clone(), v.reason.clone()));
        let untagged = self
            .list
            .untagged()
            .iter()
            .zip(&self.untagged)
            .filter(|(_, v)| deleting(v))
            .map(|(u, v)| (u.digest.to_string(), v.reason.clone()));
        let referrers = self
            .list
            .referrers()
            .iter()
            .zip(&self.referrers)
            .filter(|(_, v)| deleting(v))
            .map(|(r, v)| (r.tag.clone().unwrap_or_else(|| r.digest.to_string()), v.reason.clone()));
        tags.chain(untagged).chain(referrers).collect()
    }

    /// Referrers the plan deletes.
    pub fn referrers_to_delete(&self) -> usize {
        self.referrers.iter().filter(|v| v.action == Action::Delete).count()
    }

    /// Referrers whose subject is not in the repository, one sentence each (whether they
    /// are deleted or kept).
    pub fn orphaned_referrers(&self) -> Vec<String> {
        self.list
            .referrers()
            .iter()
            .zip(&self.referrers)
            .filter(|(_, v)| v.reason.starts_with(ORPHAN))
            .map(|(r, v)| format!("{} {}: {}", r.tag.as_deref().map_or("(untagged)", |t| t), r.digest, v.reason))
            .collect()
    }
    /// How many tags and untagged manifests each (action, reason, decider) covers, in the
    /// order first met: what a pass would delete or keep, and why, without a line per tag.
    pub fn rule_tallies(&self) -> Vec<RuleTally> {
        let mut out: Vec<RuleTally> = Vec::new();
        let mut seen: std::collections::HashMap<(Action, &str, &str), usize> = std::collections::HashMap::new();
        for (v, untagged) in self.tags.iter().map(|v| (v, false)).chain(self.untagged.iter().map(|v| (v, true))) {
            let i = *seen.entry((v.action, v.reason.as_str(), v.decided_by)).or_insert_with(|| {
                out.push(RuleTally { action: v.action, reason: v.reason.clone(), decided_by: v.decided_by, tags: 0, untagged: 0 });
                out.len() - 1
            });
            if untagged {
                out[i].untagged += 1;
            } else {
                out[i].tags += 1;
            }
        }
        out
    }
}

/// One rule's share of a plan (see [`RepositoryPlan::rule_tallies`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTally {
    pub action: Action,
    pub reason: String,
    /// `plugin` or `host`.
    pub decided_by: &'static str,
    pub tags: usize,
    pub untagged: usize,
}

/// How the reason of an orphaned referrer's verdict starts.
const ORPHAN: &str = "orphan:";

/// Applies host guards to a plugin's decisions and plans the deletions.
pub fn apply_guards(list: TagList, decisions: &RetentionDecisions, guards: &Guards) -> anyhow::Result<RepositoryPlan> {
    let tags: Vec<Verdict> = list
        .tags()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let rule = decisions.tag(i);
            if rule.action == Action::Delete
                && let Some(p) = guards.protect.iter().find(|p| p.is_match(&t.name))
            {
                let pattern = p.as_str().trim_start_matches(r"\A(?:").trim_end_matches(r")\z");
                return Verdict { action: Action::Keep, reason: format!("protected by host rule `{pattern}`"), decided_by: "host" };
            }
            Verdict { action: rule.action, reason: rule.reason.clone(), decided_by: "plugin" }
        })
        .collect();
    let tag_actions: Vec<Action> = tags.iter().map(|v| v.action).collect();
    let plugin_untagged: Vec<Action> = (0..list.untagged().len()).map(|i| decisions.untagged(i).action).collect();
    // An untagged manifest that an index which stays references (a platform image of a
    // kept multi-arch tag) is kept whatever the plugin said.
    let referenced = crate::deletion::referenced_by_staying_indexes(&list, &tag_actions, &plugin_untagged, &[]);
    let untagged: Vec<Verdict> = list
        .untagged()
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let rule = decisions.untagged(i);
            match referenced.get(&u.digest) {
                Some(index) if rule.action == Action::Delete => {
                    Verdict { action: Action::Keep, reason: format!("referenced by index {index}, which stays"), decided_by: "host" }
                }
                _ => Verdict { action: rule.action, reason: rule.reason.clone(), decided_by: "plugin" },
            }
        })
        .collect();
    let untagged_actions: Vec<Action> = untagged.iter().map(|v| v.action).collect();
    // Referrers follow their subject; no plugin decides on them.
    let fates = referrer_fates(&list, &tag_actions, &untagged_actions, guards.delete_orphaned_referrers);
    let referrers: Vec<Verdict> = list
        .referrers()
        .iter()
        .zip(&fates)
        .map(|(r, fate)| {
            let subject = &r.subject;
            let reason = match fate {
                ReferrerFate::SubjectStays => format!("referrer: its subject {subject} stays"),
                ReferrerFate::SubjectDeleted => format!("referrer: its subject {subject} is deleted"),
                ReferrerFate::SubjectUntagged => format!("referrer: its subject {subject} is untagged and stays"),
                ReferrerFate::Orphan { delete: true } => {
                    format!("{ORPHAN} its subject {subject} is not in the repository (deletion.delete_orphaned_referrers)")
                }
                ReferrerFate::Orphan { delete: false } => format!(
                    "{ORPHAN} its subject {subject} is not in the repository; kept (set deletion.delete_orphaned_referrers to delete it)"
                ),
            };
            Verdict { action: fate.action(), reason, decided_by: "host" }
        })
        .collect();
    let referrer_actions: Vec<Action> = referrers.iter().map(|v| v.action).collect();
    let deletion = DeletionPlan::with_referrers(&list, &tag_actions, &untagged_actions, &referrer_actions)?;
    let to_delete = tag_actions.iter().filter(|a| **a == Action::Delete).count();
    let refusal = guards.max_delete_fraction.and_then(|max| {
        let total = list.tags().len();
        let fraction = if total == 0 { 0.0 } else { to_delete as f64 / total as f64 };
        (fraction > max).then(|| {
            format!(
                "the plan deletes {to_delete} of {total} tags ({:.0}%), more than `max_delete_fraction` allows ({:.0}%); nothing was deleted",
                fraction * 100.0,
                max * 100.0
            )
        })
    });
    Ok(RepositoryPlan { list, tags, untagged, referrers, deletion, refusal })
}

/// Evaluates `policy` over `list` and applies the guards: the decision half of a pass.
pub fn plan(policy: &Policy, list: TagList, now: Timestamp, guards: &Guards) -> Result<RepositoryPlan, PassError> {
    let plan_error = |e: anyhow::Error| PassError::Plan(format!("{e:#}"));
    match &policy.decider {
        Decider::Plugin(retention) => {
            let decisions = retention.evaluate(&list, now).map_err(PassError::Plugin)?;
            apply_guards(list, &decisions, guards).map_err(plan_error)
        }
        Decider::DeleteRepository => {
            let everything = Rule { action: Action::Delete, reason: "the repository is being deleted (requested by an operator)".into() };
            let (tags, untagged) = (vec![0; list.tags().len()], vec![0; list.untagged().len()]);
            let decisions = RetentionDecisions::validate(&list, vec![everything], tags, untagged).map_err(plan_error)?;
            let guards = Guards { protect: guards.protect.clone(), max_delete_fraction: None, delete_orphaned_referrers: true };
            apply_guards(list, &decisions, &guards).map_err(plan_error)
        }
        Decider::Paused(why) => Err(PassError::Plan(format!("policy {} is paused ({why}); nothing is decided", policy.name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Digest, Tag, UntaggedManifest};

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn untagged(n: u8) -> UntaggedManifest {
        UntaggedManifest { digest: d(n), created_at: None, pushed_at: None }
    }

    #[test]
    fn untagged_platform_images_of_a_kept_index_are_kept_by_the_host() {
        // `v1` → index 1 over 2 and 3, both listed untagged; 4 is an unrelated untagged image.
        let list = TagList::new("r", vec![Tag::new("v1", d(1))], vec![untagged(2), untagged(3), untagged(4)])
            .unwrap()
            .with_index_children([(d(1), vec![d(2), d(3)])]);
        let rules = vec![Rule { action: Action::Keep, reason: "keep".into() }, Rule { action: Action::Delete, reason: "untagged".into() }];
        let decisions = RetentionDecisions::validate(&list, rules, vec![0], vec![1, 1, 1]).unwrap();
        let plan = apply_guards(list, &decisions, &Guards::default()).unwrap();
        for v in &plan.untagged[..2] {
            assert_eq!((v.action, v.decided_by), (Action::Keep, "host"), "{v:?}");
            assert_eq!(v.reason, format!("referenced by index {}, which stays", d(1)));
        }
        assert_eq!((plan.untagged[2].action, plan.untagged[2].decided_by), (Action::Delete, "plugin"));
        assert_eq!(plan.deletion.digests.iter().map(|x| &x.digest).collect::<Vec<_>>(), [&d(4)]);
    }
}
