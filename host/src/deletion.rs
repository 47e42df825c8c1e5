//! Safe deletion planning: turning per-tag verdicts into registry operations.
//!
//! The invariant: **no tag the policy keeps ever stops resolving to its digest.**
//! Deleting a manifest by digest removes every tag on it, so:
//!
//! - a digest is deleted by digest only when every tag on it is to be deleted (and,
//!   for an untagged manifest, when it was decided `delete`);
//! - a tag whose digest is shared with a kept tag is removed on its own: by the
//!   registry's tag delete (OCI 1.1) where supported, else by moving it onto a dummy
//!   manifest and deleting that (see [`crate::pass`] for the execution).
//!
//! [`DeletionPlan::new`] is pure and [`DeletionPlan::check`] re-proves the invariant
//! against the verdicts, so the executor can refuse a plan that would break it.

use std::collections::HashSet;

use anyhow::bail;

use crate::model::{Action, Digest, TagList};

/// The registry operations that carry out one repository's verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionPlan {
    /// Manifests to delete by digest, with the tags that go with them (empty for an
    /// untagged manifest). Every tag on these digests is to be deleted.
    pub digests: Vec<DigestDeletion>,
    /// Tags to remove one by one because a kept tag shares their digest.
    pub shared_tags: Vec<TagDeletion>,
}

/// One manifest to delete by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestDeletion {
    pub digest: Digest,
    pub tags: Vec<String>,
}

/// One tag to remove while its digest stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDeletion {
    pub tag: String,
    pub digest: Digest,
}

impl DeletionPlan {
    /// Plans deletions for `list` where `tag_actions[i]` is the final action for tag `i`
    /// and `untagged_actions[i]` for untagged manifest `i`.
    pub fn new(list: &TagList, tag_actions: &[Action], untagged_actions: &[Action]) -> anyhow::Result<Self> {
        let tags = list.tags();
        if tag_actions.len() != tags.len() || untagged_actions.len() != list.untagged().len() {
            bail!("verdicts do not cover the tag list ({} tags, {} verdicts)", tags.len(), tag_actions.len());
        }
        // Group by the list's digest ids (interned when the list was built) rather than
        // hashing digests again; `check` below re-proves the result without them.
        let columns = list.columns();
        let mut kept = vec![false; columns.digests().len()];
        let mut tagged = vec![false; columns.digests().len()];
        for (&id, action) in columns.tags().digests.iter().zip(tag_actions) {
            tagged[id as usize] = true;
            kept[id as usize] |= *action == Action::Keep;
        }
        let mut by_digest: Vec<Option<DigestDeletion>> = vec![None; columns.digests().len()];
        let mut shared_tags = Vec::new();
        for ((tag, &id), action) in tags.iter().zip(&columns.tags().digests).zip(tag_actions) {
            if *action != Action::Delete {
                continue;
            }
            if kept[id as usize] {
                shared_tags.push(TagDeletion { tag: tag.name.clone(), digest: tag.digest.clone() });
            } else {
                let deletion =
                    by_digest[id as usize].get_or_insert_with(|| DigestDeletion { digest: tag.digest.clone(), tags: Vec::new() });
                deletion.tags.push(tag.name.clone());
            }
        }
        for ((u, &id), action) in list.untagged().iter().zip(&columns.untagged().digests).zip(untagged_actions) {
            // A manifest listed as untagged but also tagged (an inconsistent listing) is
            // decided by its tags alone.
            if *action == Action::Delete && !tagged[id as usize] {
                by_digest[id as usize].get_or_insert_with(|| DigestDeletion { digest: u.digest.clone(), tags: Vec::new() });
            }
        }
        let mut digests: Vec<DigestDeletion> = by_digest.into_iter().flatten().collect();
        // A deterministic order (by digest) for plans, logs and tests.
        digests.sort_unstable_by(|a, b| a.digest.cmp(&b.digest));
        let plan = DeletionPlan { digests, shared_tags };
        plan.check(list, tag_actions)?;
        Ok(plan)
    }

    /// Proves the invariant: no digest deleted by digest carries a kept tag, and no kept
    /// tag is removed.
    pub fn check(&self, list: &TagList, tag_actions: &[Action]) -> anyhow::Result<()> {
        let kept: Vec<(&str, &Digest)> =
            list.tags().iter().zip(tag_actions).filter(|(_, a)| **a == Action::Keep).map(|(t, _)| (t.name.as_str(), &t.digest)).collect();
        let deleted_digests: HashSet<&Digest> = self.digests.iter().map(|d| &d.digest).collect();
        let removed_tags: HashSet<&str> = self
            .digests
            .iter()
            .flat_map(|d| d.tags.iter().map(String::as_str))
            .chain(self.shared_tags.iter().map(|t| t.tag.as_str()))
            .collect();
        for (name, digest) in kept {
            if deleted_digests.contains(digest) {
                bail!("refusing a plan that deletes {digest}, which kept tag `{name}` points at");
            }
            if removed_tags.contains(name) {
                bail!("refusing a plan that removes kept tag `{name}`");
            }
        }
        Ok(())
    }

    /// Tags this plan removes.
    pub fn tag_count(&self) -> usize {
        self.digests.iter().map(|d| d.tags.len()).sum::<usize>() + self.shared_tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty() && self.shared_tags.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::model::{Tag, UntaggedManifest};

    fn d(n: u32) -> Digest {
        Digest::sha256_of(&n.to_le_bytes())
    }

    /// (name, digest number) pairs and the names to delete.
    fn plan(tags: &[(&str, u32)], delete: &[&str]) -> anyhow::Result<DeletionPlan> {
        let list = TagList::new("r", tags.iter().map(|(n, i)| Tag::new(*n, d(*i))).collect(), vec![]).unwrap();
        let actions: Vec<Action> =
            list.tags().iter().map(|t| if delete.contains(&t.name.as_str()) { Action::Delete } else { Action::Keep }).collect();
        DeletionPlan::new(&list, &actions, &[])
    }

    #[test]
    fn unshared_digests_are_deleted_by_digest() {
        let p = plan(&[("a", 1), ("b", 2), ("c", 3)], &["a", "c"]).unwrap();
        assert_eq!(p.digests.len(), 2);
        assert!(p.shared_tags.is_empty());
        assert_eq!(p.tag_count(), 2);
    }

    #[test]
    fn a_digest_shared_with_a_kept_tag_is_never_deleted() {
        let p = plan(&[("a", 1), ("b", 1)], &["a"]).unwrap();
        assert!(p.digests.is_empty(), "{p:?}");
        assert_eq!(p.shared_tags, vec![TagDeletion { tag: "a".into(), digest: d(1) }]);
    }

    #[test]
    fn a_digest_whose_tags_all_go_is_one_deletion() {
        let p = plan(&[("a", 1), ("b", 1), ("c", 2)], &["a", "b"]).unwrap();
        assert_eq!(p.digests, vec![DigestDeletion { digest: d(1), tags: vec!["a".into(), "b".into()] }]);
        assert!(p.shared_tags.is_empty());
    }

    #[test]
    fn untagged_manifests_are_deleted_only_when_decided_and_truly_untagged() {
        let list = TagList::new(
            "r",
            vec![Tag::new("a", d(1))],
            vec![
                UntaggedManifest { digest: d(9), created_at: None, pushed_at: None },
                UntaggedManifest { digest: d(8), created_at: None, pushed_at: None },
                UntaggedManifest { digest: d(1), created_at: None, pushed_at: None },
            ],
        )
        .unwrap();
        let p = DeletionPlan::new(&list, &[Action::Keep], &[Action::Delete, Action::Keep, Action::Delete]).unwrap();
        assert_eq!(p.digests, vec![DigestDeletion { digest: d(9), tags: vec![] }]);
    }

    #[test]
    fn check_refuses_a_plan_that_would_break_a_kept_tag() {
        let list = TagList::new("r", vec![Tag::new("a", d(1)), Tag::new("b", d(1))], vec![]).unwrap();
        let bad = DeletionPlan { digests: vec![DigestDeletion { digest: d(1), tags: vec!["a".into()] }], shared_tags: vec![] };
        let err = bad.check(&list, &[Action::Delete, Action::Keep]).unwrap_err().to_string();
        assert!(err.contains("kept tag `b`"), "{err}");
        let bad = DeletionPlan { digests: vec![], shared_tags: vec![TagDeletion { tag: "b".into(), digest: d(1) }] };
        assert!(bad.check(&list, &[Action::Delete, Action::Keep]).is_err());
    }

    #[test]
    fn random_lists_never_lose_a_kept_tag() {
        // A small deterministic generator: many digests shared by several tags.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..500 {
            let n = (next() % 40) as usize + 1;
            let tags: Vec<(String, u32)> = (0..n).map(|i| (format!("t{i}"), (next() % (n as u64 / 2 + 1)) as u32)).collect();
            let delete: Vec<String> = tags.iter().filter(|_| next() % 2 == 0).map(|(n, _)| n.clone()).collect();
            let tag_refs: Vec<(&str, u32)> = tags.iter().map(|(n, i)| (n.as_str(), *i)).collect();
            let delete_refs: Vec<&str> = delete.iter().map(String::as_str).collect();
            let p = plan(&tag_refs, &delete_refs).unwrap();
            // Apply the plan to a model registry and check every kept tag still resolves.
            let mut registry: BTreeMap<String, u32> = tags.iter().cloned().collect();
            for dd in &p.digests {
                registry.retain(|_, v| d(*v) != dd.digest);
            }
            for t in &p.shared_tags {
                registry.remove(&t.tag);
            }
            for (name, digest) in &tags {
                if delete.contains(name) {
                    assert!(!registry.contains_key(name), "round {round}: {name} survived");
                } else {
                    assert_eq!(registry.get(name), Some(digest), "round {round}: kept tag {name} lost");
                }
            }
        }
    }
}
