//! Safe deletion planning: turning per-tag verdicts into registry operations.
//!
//! The invariant: **no tag the policy keeps ever stops resolving to its digest, and no
//! manifest that an image index which stays references is deleted** (a kept multi-arch
//! tag must still pull on every platform). Deleting a manifest by digest removes every
//! tag on it, so:
//!
//! - a manifest *stays* when a kept tag points at it, when it is untagged and not
//!   decided `delete`, or when an index that stays references it (transitively);
//! - a digest is deleted by digest only when it does not stay and every tag on it is to
//!   be deleted (and, for an untagged manifest, when it was decided `delete`);
//! - a tag to delete whose manifest stays is removed on its own: by the registry's tag
//!   delete (OCI 1.1) where supported, else by moving it onto a dummy manifest and
//!   deleting that (see [`crate::pass`] for the execution).
//!
//!
//! Referrers (signatures, attestations, SBOMs: [`crate::model::Referrer`]) follow their
//! subject: [`referrer_fates`] keeps a referrer whose subject stays and deletes one whose
//! subject the plan deletes by digest (transitively: a signature of an attestation follows
//! the attestation). A referrer's deletion names its subject ([`DigestDeletion::subject`])
//! so the executor sends it only once the subject is gone: an interruption can leave an
//! orphan (reported, harmless), never a kept image without its signature.
//!
//! [`DeletionPlan::new`] is pure and [`DeletionPlan::check`] re-proves the invariant
//! against the verdicts, so the executor can refuse a plan that would break it.

use std::collections::{HashMap, HashSet};

use anyhow::bail;

use crate::model::{Action, Digest, TagList};

/// The registry operations that carry out one repository's verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionPlan {
    /// Manifests to delete by digest, with the tags that go with them (empty for an
    /// untagged manifest). Every tag on these digests is to be deleted.
    pub digests: Vec<DigestDeletion>,
    /// Tags to remove one by one because their manifest stays: a kept tag shares it, or
    /// an image index that stays references it.
    pub shared_tags: Vec<TagDeletion>,
}

/// One manifest to delete by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestDeletion {
    pub digest: Digest,
    pub tags: Vec<String>,
    /// For a referrer deleted with its subject: the subject, which this plan deletes too
    /// and which must be gone before this is sent.
    pub subject: Option<Digest>,
}

/// One tag to remove while its digest stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDeletion {
    pub tag: String,
    pub digest: Digest,
    /// For a referrer's tag removed with its subject: the subject (as for [`DigestDeletion`]).
    pub subject: Option<Digest>,
}

/// Why a referrer is kept or deleted: it follows its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferrerFate {
    /// Its subject stays: kept.
    SubjectStays,
    /// Its subject is deleted by this plan: deleted after it.
    SubjectDeleted,
    /// Its subject exists untagged, outside the list: nothing decides on it; kept.
    SubjectUntagged,
    /// Its subject is not in the repository: kept, unless orphans are to be deleted.
    Orphan { delete: bool },
}

impl ReferrerFate {
    pub fn action(self) -> Action {
        match self {
            ReferrerFate::SubjectDeleted | ReferrerFate::Orphan { delete: true } => Action::Delete,
            _ => Action::Keep,
        }
    }
}

/// What becomes of each of the list's referrers given the final verdicts on its tags and
/// untagged manifests: the fixed point of "a referrer is deleted when the plan deletes its
/// subject by digest". Starting from every referrer kept (orphans deleted when
/// `delete_orphans`), each round deletes the referrers whose subject the plan now deletes;
/// deletions only grow, so it ends within the depth of the longest referrer chain.
pub fn referrer_fates(list: &TagList, tag_actions: &[Action], untagged_actions: &[Action], delete_orphans: bool) -> Vec<ReferrerFate> {
    let referrers = list.referrers();
    let manifests = if referrers.is_empty() { HashSet::new() } else { list.manifest_digests() };
    let mut fates: Vec<ReferrerFate> = referrers
        .iter()
        .map(|r| {
            if r.subject_untagged {
                ReferrerFate::SubjectUntagged
            } else if manifests.contains(&r.subject) {
                ReferrerFate::SubjectStays
            } else {
                ReferrerFate::Orphan { delete: delete_orphans }
            }
        })
        .collect();
    if referrers.is_empty() || tag_actions.len() != list.tags().len() || untagged_actions.len() != list.untagged().len() {
        return fates;
    }
    loop {
        let actions: Vec<Action> = fates.iter().map(|f| f.action()).collect();
        let plan = DeletionPlan::build(list, tag_actions, untagged_actions, &actions);
        let deleted: HashSet<&Digest> = plan.digests.iter().map(|d| &d.digest).collect();
        let mut changed = false;
        for (fate, r) in fates.iter_mut().zip(referrers) {
            if *fate == ReferrerFate::SubjectStays && deleted.contains(&r.subject) {
                *fate = ReferrerFate::SubjectDeleted;
                changed = true;
            }
        }
        if !changed {
            return fates;
        }
    }
}

/// Manifests that stay only because an image index that stays references them, each
/// with the index that references it (the first one found). An index stays when a kept
/// tag points at it, when it is untagged and not decided `delete`, or when an index that
/// stays references it.
///
/// `referrer_actions` are the referrers' actions; a kept referrer stays like a kept tag
/// (an OCI fallback tag points at an index of referrers). Empty means all kept.
pub fn referenced_by_staying_indexes<'a>(
    list: &'a TagList,
    tag_actions: &[Action],
    untagged_actions: &[Action],
    referrer_actions: &[Action],
) -> HashMap<&'a Digest, &'a Digest> {
    let children = list.index_children();
    let mut referenced = HashMap::new();
    if children.is_empty() {
        return referenced;
    }
    let mut staying: Vec<&Digest> = list
        .tags()
        .iter()
        .zip(tag_actions)
        .filter(|(_, a)| **a == Action::Keep)
        .map(|(t, _)| &t.digest)
        .chain(list.untagged().iter().zip(untagged_actions).filter(|(_, a)| **a == Action::Keep).map(|(u, _)| &u.digest))
        .chain(
            list.referrers()
                .iter()
                .enumerate()
                .filter(|(i, _)| referrer_actions.get(*i).is_none_or(|a| *a == Action::Keep))
                .map(|(_, r)| &r.digest),
        )
        .collect();
    let mut seen: HashSet<&Digest> = staying.iter().copied().collect();
    while let Some(index) = staying.pop() {
        for child in children.get(index).into_iter().flatten() {
            if seen.insert(child) {
                referenced.insert(child, index);
                staying.push(child);
            }
        }
    }
    referenced
}

impl DeletionPlan {
    /// Plans deletions for `list` where `tag_actions[i]` is the final action for tag `i`
    /// and `untagged_actions[i]` for untagged manifest `i`; every referrer is kept (see
    /// [`DeletionPlan::with_referrers`]).
    pub fn new(list: &TagList, tag_actions: &[Action], untagged_actions: &[Action]) -> anyhow::Result<Self> {
        Self::with_referrers(list, tag_actions, untagged_actions, &vec![Action::Keep; list.referrers().len()])
    }

    /// Plans deletions as [`DeletionPlan::new`] does, with `referrer_actions[i]` the action
    /// for referrer `i` (from [`referrer_fates`]), and proves the plan ([`DeletionPlan::check_with_referrers`]).
    pub fn with_referrers(
        list: &TagList,
        tag_actions: &[Action],
        untagged_actions: &[Action],
        referrer_actions: &[Action],
    ) -> anyhow::Result<Self> {
        let tags = list.tags();
        if tag_actions.len() != tags.len() || untagged_actions.len() != list.untagged().len() {
            bail!("verdicts do not cover the tag list ({} tags, {} verdicts)", tags.len(), tag_actions.len());
        }
        if referrer_actions.len() != list.referrers().len() {
            bail!("verdicts do not cover the referrers ({} referrers, {} verdicts)", list.referrers().len(), referrer_actions.len());
        }
        let plan = Self::build(list, tag_actions, untagged_actions, referrer_actions);
        plan.check_with_referrers(list, tag_actions, untagged_actions, referrer_actions)?;
        Ok(plan)
    }

    /// The plan, unchecked; the lengths of the actions are the caller's to check.
    fn build(list: &TagList, tag_actions: &[Action], untagged_actions: &[Action], referrer_actions: &[Action]) -> Self {
        let tags = list.tags();
        // Group by the list's digest ids (interned when the list was built) rather than
        // hashing digests again; `check` below re-proves the result without them.
        let columns = list.columns();
        let mut kept = vec![false; columns.digests().len()];
        let mut tagged = vec![false; columns.digests().len()];
        for (&id, action) in columns.tags().digests.iter().zip(tag_actions) {
            tagged[id as usize] = true;
            kept[id as usize] |= *action == Action::Keep;
        }
        // Manifests an index that stays references stay too (hashing digests only when
        // the list has indexes), and so do kept referrers.
        let referrers = list.referrers();
        let mut staying: HashSet<&Digest> =
            referenced_by_staying_indexes(list, tag_actions, untagged_actions, referrer_actions).into_keys().collect();
        staying.extend(referrers.iter().zip(referrer_actions).filter(|(_, a)| **a == Action::Keep).map(|(r, _)| &r.digest));
        if !staying.is_empty() {
            let tags = tags.iter().map(|t| &t.digest).zip(&columns.tags().digests);
            let untagged = list.untagged().iter().map(|u| &u.digest).zip(&columns.untagged().digests);
            for (digest, &id) in tags.chain(untagged) {
                kept[id as usize] |= staying.contains(digest);
            }
        }
        let mut by_digest: Vec<Option<DigestDeletion>> = vec![None; columns.digests().len()];
        let mut shared_tags = Vec::new();
        for ((tag, &id), action) in tags.iter().zip(&columns.tags().digests).zip(tag_actions) {
            if *action != Action::Delete {
                continue;
            }
            if kept[id as usize] {
                shared_tags.push(TagDeletion { tag: tag.name.clone(), digest: tag.digest.clone(), subject: None });
            } else {
                let deletion = by_digest[id as usize].get_or_insert_with(|| DigestDeletion {
                    digest: tag.digest.clone(),
                    tags: Vec::new(),
                    subject: None,
                });
                deletion.tags.push(tag.name.clone());
            }
        }
        for ((u, &id), action) in list.untagged().iter().zip(&columns.untagged().digests).zip(untagged_actions) {
            // A manifest listed as untagged but also tagged (an inconsistent listing) is
            // decided by its tags alone.
            if *action == Action::Delete && !tagged[id as usize] && !kept[id as usize] {
                by_digest[id as usize].get_or_insert_with(|| DigestDeletion { digest: u.digest.clone(), tags: Vec::new(), subject: None });
            }
        }
        let mut digests: Vec<DigestDeletion> = by_digest.into_iter().flatten().collect();
        if !referrers.is_empty() {
            // Referrers to delete, after their subject. A referrer whose digest also stays
            // for another reason (a kept tag, a kept index) loses only its tag.
            let kept_digest: HashSet<&Digest> = tags
                .iter()
                .zip(&columns.tags().digests)
                .filter(|(_, id)| kept[**id as usize])
                .map(|(t, _)| &t.digest)
                .chain(list.untagged().iter().zip(untagged_actions).filter(|(_, a)| **a == Action::Keep).map(|(u, _)| &u.digest))
                .chain(staying.iter().copied())
                .collect();
            let in_plan: HashSet<Digest> = digests.iter().map(|d| d.digest.clone()).collect();
            // What goes by digest: a referrer waits for its subject among these (an image, or
            // a referrer itself: a signature of an attestation).
            let going: HashSet<&Digest> = in_plan
                .iter()
                .chain(
                    referrers
                        .iter()
                        .zip(referrer_actions)
                        .filter(|(r, a)| **a == Action::Delete && !kept_digest.contains(&r.digest))
                        .map(|(r, _)| &r.digest),
                )
                .collect();
            let mut extra: HashMap<&Digest, DigestDeletion> = HashMap::new();
            for (r, action) in referrers.iter().zip(referrer_actions) {
                if *action != Action::Delete {
                    continue;
                }
                let subject = going.contains(&r.subject).then(|| r.subject.clone());
                if kept_digest.contains(&r.digest) {
                    if let Some(tag) = &r.tag {
                        shared_tags.push(TagDeletion { tag: tag.clone(), digest: r.digest.clone(), subject });
                    }
                    continue;
                }
                if let Some(d) = in_plan.contains(&r.digest).then(|| digests.iter_mut().find(|d| d.digest == r.digest)).flatten() {
                    // Image tags to delete on a referrer's manifest: one deletion, after the subject.
                    d.tags.extend(r.tag.clone());
                    d.subject = d.subject.take().or(subject);
                    continue;
                }
                let d = extra.entry(&r.digest).or_insert_with(|| DigestDeletion { digest: r.digest.clone(), tags: Vec::new(), subject });
                d.tags.extend(r.tag.clone());
            }
            digests.extend(extra.into_values());
        }
        // A deterministic order (by digest) for plans, logs and tests.
        digests.sort_unstable_by(|a, b| a.digest.cmp(&b.digest));
        DeletionPlan { digests, shared_tags }
    }

    /// Proves the invariant: no digest deleted by digest carries a kept tag or is
    /// referenced by an index that stays, and no kept tag is removed. Every referrer
    /// counts as kept ([`DeletionPlan::check_with_referrers`] takes their actions).
    pub fn check(&self, list: &TagList, tag_actions: &[Action], untagged_actions: &[Action]) -> anyhow::Result<()> {
        self.check_with_referrers(list, tag_actions, untagged_actions, &vec![Action::Keep; list.referrers().len()])
    }

    /// [`DeletionPlan::check`] with the referrers' actions: a kept referrer is protected
    /// like a kept tag (its tag, its digest and what it references), and a referrer is
    /// deleted only with its subject (or as an orphan, its subject not in the repository)
    /// and only after it.
    pub fn check_with_referrers(
        &self,
        list: &TagList,
        tag_actions: &[Action],
        untagged_actions: &[Action],
        referrer_actions: &[Action],
    ) -> anyhow::Result<()> {
        let referrers = list.referrers();
        if referrer_actions.len() != referrers.len() {
            bail!("verdicts do not cover the referrers ({} referrers, {} verdicts)", referrers.len(), referrer_actions.len());
        }
        let kept: Vec<(&str, &Digest)> = list
            .tags()
            .iter()
            .zip(tag_actions)
            .filter(|(_, a)| **a == Action::Keep)
            .map(|(t, _)| (t.name.as_str(), &t.digest))
            .chain(
                referrers
                    .iter()
                    .zip(referrer_actions)
                    .filter(|(_, a)| **a == Action::Keep)
                    .map(|(r, _)| (r.tag.as_deref().unwrap_or(""), &r.digest)),
            )
            .collect();
        let deleted_digests: HashSet<&Digest> = self.digests.iter().map(|d| &d.digest).collect();
        let removed_tags: HashSet<&str> = self
            .digests
            .iter()
            .flat_map(|d| d.tags.iter().map(String::as_str))
            .chain(self.shared_tags.iter().map(|t| t.tag.as_str()))
            .collect();
        for (name, digest) in kept {
            if deleted_digests.contains(digest) {
                if name.is_empty() {
                    bail!("refusing a plan that deletes referrer {digest}, which stays with its subject");
                }
                bail!("refusing a plan that deletes {digest}, which kept tag `{name}` points at");
            }
            if !name.is_empty() && removed_tags.contains(name) {
                bail!("refusing a plan that removes kept tag `{name}`");
            }
        }
        // A referrer goes only with its subject, and after it; an orphan (subject not in the
        // repository) has nothing to wait for.
        let order: HashMap<&Digest, Option<&Digest>> = self
            .digests
            .iter()
            .map(|d| (&d.digest, d.subject.as_ref()))
            .chain(self.shared_tags.iter().map(|t| (&t.digest, t.subject.as_ref())))
            .collect();
        let manifests = if referrers.is_empty() { HashSet::new() } else { list.manifest_digests() };
        let tagged: HashSet<&Digest> = if referrers.is_empty() { HashSet::new() } else { list.tags().iter().map(|t| &t.digest).collect() };
        for (r, action) in referrers.iter().zip(referrer_actions) {
            if *action != Action::Delete
                || !(deleted_digests.contains(&r.digest) || r.tag.as_deref().is_some_and(|t| removed_tags.contains(t)))
            {
                continue;
            }
            if r.subject_untagged || manifests.contains(&r.subject) {
                if !deleted_digests.contains(&r.subject) {
                    bail!("refusing a plan that deletes referrer {} of {}, which stays", r.digest, r.subject);
                }
                if order.get(&r.digest).copied().flatten() != Some(&r.subject) && !tagged.contains(&r.digest) {
                    bail!("refusing a plan that deletes referrer {} without waiting for its subject {}", r.digest, r.subject);
                }
            }
        }
        // Indexes that stay, found again from the plan itself: every manifest in the
        // list that the plan does not delete by digest. (Nothing to walk without indexes.)
        let mut staying: Vec<&Digest> = if list.index_children().is_empty() {
            Vec::new()
        } else {
            list.tags()
                .iter()
                .map(|t| &t.digest)
                .chain(list.untagged().iter().map(|u| &u.digest))
                .chain(referrers.iter().map(|r| &r.digest))
                .filter(|d| !deleted_digests.contains(d))
                .collect()
        };
        let mut seen: HashSet<&Digest> = staying.iter().copied().collect();
        while let Some(index) = staying.pop() {
            for child in list.index_children().get(index).into_iter().flatten() {
                if deleted_digests.contains(child) {
                    bail!("refusing a plan that deletes {child}, which index {index} references and keeps");
                }
                if seen.insert(child) {
                    staying.push(child);
                }
            }
        }
        // Untagged manifests are deleted only when decided so.
        for (u, action) in list.untagged().iter().zip(untagged_actions) {
            if *action == Action::Keep && deleted_digests.contains(&u.digest) && !list.tags().iter().any(|t| t.digest == u.digest) {
                bail!("refusing a plan that deletes untagged manifest {}, which was decided keep", u.digest);
            }
        }
        Ok(())
    }

    /// The plan narrowed to what is still safe given `current`, the repository as re-listed
    /// just before deleting (every tag except those this plan deletes by digest): a digest
    /// that gained a tag the plan did not decide on, or that an image index a current tag
    /// points at references, is dropped; a tag to remove on its own that has moved or gone
    /// is dropped. Each drop comes with a sentence for the report. Nothing is ever added.
    pub fn recheck(&self, current: &TagList) -> (DeletionPlan, Vec<String>) {
        let planned: HashMap<&Digest, &DigestDeletion> = self.digests.iter().map(|d| (&d.digest, d)).collect();
        let mut dropped: HashMap<&Digest, String> = HashMap::new();
        // Referrers' fallback tags are tags like any other here.
        let current_tags: Vec<(&str, &Digest)> = current
            .tags()
            .iter()
            .map(|t| (t.name.as_str(), &t.digest))
            .chain(current.referrers().iter().filter_map(|r| Some((r.tag.as_deref()?, &r.digest))))
            .collect();
        for &(name, digest) in &current_tags {
            if let Some(d) = planned.get(digest)
                && !d.tags.iter().any(|t| t == name)
            {
                dropped.entry(&d.digest).or_insert_with(|| {
                    format!("kept {}: tag `{name}` points at it since the listing; it is decided again next pass", d.digest)
                });
            }
        }
        // Everything current tags point at stays, and with it what those indexes reference.
        let children = current.index_children();
        if !children.is_empty() {
            let mut staying: Vec<(&Digest, &str)> = current_tags.iter().map(|&(n, d)| (d, n)).collect();
            let mut seen: HashSet<&Digest> = staying.iter().map(|(d, _)| *d).collect();
            while let Some((index, via)) = staying.pop() {
                for child in children.get(index).into_iter().flatten() {
                    if planned.contains_key(child) {
                        dropped
                            .entry(child)
                            .or_insert_with(|| format!("kept {child}: image index {index} (tag `{via}`) references it since the listing"));
                    }
                    if seen.insert(child) {
                        staying.push((child, via));
                    }
                }
            }
        }
        // A referrer waits for its subject: when the subject is kept now, so is the referrer
        // (transitively, for a referrer of a referrer).
        loop {
            let follower = self
                .digests
                .iter()
                .find(|d| !dropped.contains_key(&d.digest) && d.subject.as_ref().is_some_and(|s| dropped.contains_key(s)));
            let Some(d) = follower else { break };
            let subject = d.subject.as_ref().expect("a follower has a subject");
            dropped.insert(&d.digest, format!("kept referrer {}: its subject {subject} is kept this pass", d.digest));
        }
        let now: HashMap<&str, &Digest> = current_tags.iter().copied().collect();
        let mut notes: Vec<String> = Vec::new();
        let shared_tags = self
            .shared_tags
            .iter()
            .filter(|t| match now.get(t.tag.as_str()) {
                _ if t.subject.as_ref().is_some_and(|s| dropped.contains_key(s)) => {
                    let subject = t.subject.as_ref().expect("checked");
                    notes.push(format!("kept referrer tag `{}`: its subject {subject} is kept this pass", t.tag));
                    false
                }
                Some(d) if **d == t.digest => true,
                Some(d) => {
                    notes.push(format!("kept tag `{}`: it points at {d} since the listing, not {}", t.tag, t.digest));
                    false
                }
                None => {
                    notes.push(format!("tag `{}` is gone since the listing", t.tag));
                    false
                }
            })
            .cloned()
            .collect();
        let digests = self.digests.iter().filter(|d| !dropped.contains_key(&d.digest)).cloned().collect();
        let mut dropped: Vec<String> = dropped.into_values().collect();
        dropped.sort();
        dropped.extend(notes);
        (DeletionPlan { digests, shared_tags }, dropped)
    }

    /// The plan cut to at most `max_tags` tags (GitLab's `max_list_size`: the rest waits for
    /// a later pass), keeping plan order; an untagged manifest counts as one. Only deletions
    /// are ever cut; a manifest that an index whose deletion was cut references is cut too
    /// (an index that stays keeps every manifest it references), and so is a referrer whose
    /// subject's deletion was cut (it follows its subject).
    pub fn truncate(&self, list: &TagList, max_tags: usize) -> DeletionPlan {
        let mut budget = max_tags;
        let mut digests: Vec<DigestDeletion> = Vec::new();
        for d in &self.digests {
            let cost = d.tags.len().max(1);
            if cost > budget {
                break;
            }
            budget -= cost;
            digests.push(d.clone());
        }
        let shared_tags: Vec<TagDeletion> = self.shared_tags.iter().take(budget).cloned().collect();
        let children = list.index_children();
        if !children.is_empty() {
            let kept: HashSet<&Digest> = digests.iter().map(|d| &d.digest).collect();
            let mut staying: Vec<&Digest> = self.digests.iter().map(|d| &d.digest).filter(|d| !kept.contains(d)).collect();
            let mut seen: HashSet<&Digest> = staying.iter().copied().collect();
            let mut cut: HashSet<Digest> = HashSet::new();
            while let Some(index) = staying.pop() {
                for child in children.get(index).into_iter().flatten() {
                    if kept.contains(child) {
                        cut.insert(child.clone());
                    }
                    if seen.insert(child) {
                        staying.push(child);
                    }
                }
            }
            digests.retain(|d| !cut.contains(&d.digest));
        }
        // A referrer goes only with its subject: one whose subject's deletion was cut stays.
        let kept: HashSet<Digest> = digests.iter().map(|d| d.digest.clone()).collect();
        let follows = |subject: &Option<Digest>| subject.as_ref().is_none_or(|s| kept.contains(s));
        digests.retain(|d| follows(&d.subject));
        let shared_tags = shared_tags.into_iter().filter(|t| follows(&t.subject)).collect();
        DeletionPlan { digests, shared_tags }
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
        assert_eq!(p.shared_tags, vec![TagDeletion { tag: "a".into(), digest: d(1), subject: None }]);
    }

    #[test]
    fn a_digest_whose_tags_all_go_is_one_deletion() {
        let p = plan(&[("a", 1), ("b", 1), ("c", 2)], &["a", "b"]).unwrap();
        assert_eq!(p.digests, vec![DigestDeletion { digest: d(1), tags: vec!["a".into(), "b".into()], subject: None }]);
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
        assert_eq!(p.digests, vec![DigestDeletion { digest: d(9), tags: vec![], subject: None }]);
    }

    #[test]
    fn check_refuses_a_plan_that_would_break_a_kept_tag() {
        let list = TagList::new("r", vec![Tag::new("a", d(1)), Tag::new("b", d(1))], vec![]).unwrap();
        let bad =
            DeletionPlan { digests: vec![DigestDeletion { digest: d(1), tags: vec!["a".into()], subject: None }], shared_tags: vec![] };
        let err = bad.check(&list, &[Action::Delete, Action::Keep], &[]).unwrap_err().to_string();
        assert!(err.contains("kept tag `b`"), "{err}");
        let bad = DeletionPlan { digests: vec![], shared_tags: vec![TagDeletion { tag: "b".into(), digest: d(1), subject: None }] };
        assert!(bad.check(&list, &[Action::Delete, Action::Keep], &[]).is_err());
    }

    #[test]
    fn truncation_cuts_deletions_only_and_never_orphans_an_index() {
        let tags = [("a", 1), ("b", 2), ("b2", 2), ("c", 3), ("k", 4), ("s", 4)];
        let list = TagList::new("r", tags.iter().map(|(n, i)| Tag::new(*n, d(*i))).collect(), vec![]).unwrap();
        let actions: Vec<Action> = list.tags().iter().map(|t| if t.name == "k" { Action::Keep } else { Action::Delete }).collect();
        let p = DeletionPlan::new(&list, &actions, &[]).unwrap();
        assert_eq!(p.tag_count(), 5);
        for max in 0..=6 {
            let cut = p.truncate(&list, max);
            assert!(cut.tag_count() <= max, "max {max}: {cut:?}");
            cut.check(&list, &actions, &[]).unwrap();
            // Only what the plan had, in its order.
            assert!(cut.digests.iter().all(|x| p.digests.contains(x)) && cut.shared_tags.iter().all(|x| p.shared_tags.contains(x)));
        }
        assert_eq!(p.truncate(&list, 5), p);
        // A digest's tags go together or not at all: 1 fits, 2 (two tags) does not, 3 would
        // but plan order stops at the first that does not fit.
        assert_eq!(p.truncate(&list, 2).digests, vec![p.digests[0].clone()]);

        // Index 10 (tag `multi`, to delete) references 11 (untagged, to delete). Cut the
        // index and its child is cut too, whatever room is left.
        let list =
            TagList::new("r", vec![Tag::new("multi", d(10))], vec![UntaggedManifest { digest: d(11), created_at: None, pushed_at: None }])
                .unwrap()
                .with_index_children([(d(10), vec![d(11)])]);
        let mut p = DeletionPlan::new(&list, &[Action::Delete], &[Action::Delete]).unwrap();
        p.digests.reverse(); // the child first, so a budget of one would take it alone
        let cut = p.truncate(&list, 1);
        assert!(cut.is_empty(), "{cut:?}");

        // A referrer goes only with its subject: budget for the signature alone cuts both.
        let list = TagList::new("r", vec![Tag::new("a", d(1)), Tag::new("b", d(1))], vec![]).unwrap();
        let signature = DigestDeletion { digest: d(2), tags: vec!["sha256-x.sig".into()], subject: Some(d(1)) };
        let image = DigestDeletion { digest: d(1), tags: vec!["a".into(), "b".into()], subject: None };
        let p = DeletionPlan { digests: vec![signature.clone(), image.clone()], shared_tags: vec![] };
        assert!(p.truncate(&list, 1).is_empty());
        let p = DeletionPlan { digests: vec![image.clone(), signature.clone()], shared_tags: vec![] };
        assert_eq!(p.truncate(&list, 2).digests, vec![image.clone()], "the signature does not fit; the image goes alone");
        assert_eq!(p.truncate(&list, 3).digests, vec![image, signature]);
        cut.check(&list, &[Action::Delete], &[Action::Delete]).unwrap();
    }

    /// A list where digest 10 is an index of 11 and 12, tagged `multi`; 11 is also tagged
    /// `multi-amd64`; 12 is listed untagged; 20 is an unrelated image tagged `other`.
    fn current(tags: &[(&str, u32)]) -> TagList {
        TagList::new("r", tags.iter().map(|(n, i)| Tag::new(*n, d(*i))).collect(), vec![]).unwrap()
    }

    #[test]
    fn recheck_drops_a_digest_that_gained_a_tag_and_keeps_the_rest() {
        // a → 1 and b → 2 go by digest; c (kept) shares 3 with d, which is removed on its own.
        let p = plan(&[("a", 1), ("b", 2), ("c", 3), ("d", 3)], &["a", "b", "d"]).unwrap();
        // Since the listing: `new` was pushed onto 1; nothing else changed.
        let (after, dropped) = p.recheck(&current(&[("c", 3), ("d", 3), ("new", 1)]));
        assert_eq!(after.digests, vec![DigestDeletion { digest: d(2), tags: vec!["b".into()], subject: None }]);
        assert_eq!(after.shared_tags, p.shared_tags);
        assert_eq!(dropped.len(), 1);
        assert!(dropped[0].contains(&d(1).to_string()) && dropped[0].contains("`new`"), "{dropped:?}");
    }

    #[test]
    fn recheck_drops_a_digest_a_kept_tag_moved_onto() {
        let p = plan(&[("a", 1), ("keep", 2)], &["a"]).unwrap();
        let (after, dropped) = p.recheck(&current(&[("keep", 1)]));
        assert!(after.is_empty(), "{after:?}");
        assert!(dropped[0].contains("`keep`"), "{dropped:?}");
    }

    #[test]
    fn recheck_drops_single_tag_removals_whose_tag_moved_or_went() {
        let p = plan(&[("c", 3), ("d", 3), ("e", 3)], &["d", "e"]).unwrap();
        assert_eq!(p.shared_tags.len(), 2);
        // `d` was pushed again (now on 4); `e` was deleted by someone else.
        let (after, dropped) = p.recheck(&current(&[("c", 3), ("d", 4)]));
        assert!(after.is_empty(), "{after:?}");
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert!(dropped.iter().any(|m| m.contains("`d`") && m.contains(&d(4).to_string())), "{dropped:?}");
        assert!(dropped.iter().any(|m| m.contains("`e`") && m.contains("gone")), "{dropped:?}");
    }

    #[test]
    fn recheck_protects_what_a_newly_tagged_index_references() {
        // `old` (digest 11) goes by digest; since the listing an index 10 over 11 was tagged `multi`.
        let p = plan(&[("old", 11), ("other", 20)], &["old"]).unwrap();
        let now = current(&[("multi", 10), ("other", 20)]).with_index_children([(d(10), vec![d(11)])]);
        let (after, dropped) = p.recheck(&now);
        assert!(after.is_empty(), "{after:?}");
        assert!(dropped[0].contains("image index") && dropped[0].contains("`multi`"), "{dropped:?}");
    }

    #[test]
    fn recheck_of_an_unchanged_repository_changes_nothing() {
        let p = plan(&[("a", 1), ("b", 2), ("c", 3), ("d", 3)], &["a", "d"]).unwrap();
        // The re-listing skips tags deleted by digest (`a`).
        let (after, dropped) = p.recheck(&current(&[("b", 2), ("c", 3), ("d", 3)]));
        assert_eq!(after, p);
        assert!(dropped.is_empty(), "{dropped:?}");
    }

    fn multi_arch() -> TagList {
        TagList::new(
            "r",
            vec![Tag::new("multi", d(10)), Tag::new("multi-amd64", d(11)), Tag::new("other", d(20))],
            vec![UntaggedManifest { digest: d(12), created_at: None, pushed_at: None }],
        )
        .unwrap()
        .with_index_children([(d(10), vec![d(11), d(12)])])
    }

    #[test]
    fn a_platform_image_of_a_kept_index_loses_only_its_own_tag() {
        let list = multi_arch();
        // Keep `multi`, delete `multi-amd64`, `other` and the untagged arm64 image.
        let tags = [Action::Keep, Action::Delete, Action::Delete];
        let p = DeletionPlan::new(&list, &tags, &[Action::Delete]).unwrap();
        assert_eq!(p.shared_tags, vec![TagDeletion { tag: "multi-amd64".into(), digest: d(11), subject: None }], "{p:?}");
        assert_eq!(p.digests, vec![DigestDeletion { digest: d(20), tags: vec!["other".into()], subject: None }], "{p:?}");
    }

    #[test]
    fn a_deleted_index_no_longer_protects_its_children() {
        let list = multi_arch();
        let p = DeletionPlan::new(&list, &[Action::Delete, Action::Delete, Action::Keep], &[Action::Delete]).unwrap();
        let deleted: Vec<&Digest> = p.digests.iter().map(|x| &x.digest).collect();
        assert!(deleted.contains(&&d(10)) && deleted.contains(&&d(11)) && deleted.contains(&&d(12)), "{p:?}");
        assert!(p.shared_tags.is_empty());
    }

    #[test]
    fn nested_indexes_protect_their_grandchildren() {
        // `top` -> index 30 -> index 31 -> image 32, which is also tagged `leaf`.
        let list = TagList::new("r", vec![Tag::new("leaf", d(32)), Tag::new("top", d(30))], vec![])
            .unwrap()
            .with_index_children([(d(30), vec![d(31)]), (d(31), vec![d(32)])]);
        let p = DeletionPlan::new(&list, &[Action::Delete, Action::Keep], &[]).unwrap();
        assert!(p.digests.is_empty(), "{p:?}");
        assert_eq!(p.shared_tags, vec![TagDeletion { tag: "leaf".into(), digest: d(32), subject: None }]);
        let referenced = referenced_by_staying_indexes(&list, &[Action::Delete, Action::Keep], &[], &[]);
        assert_eq!(referenced.get(&d(32)), Some(&&d(31)));
    }

    #[test]
    fn check_refuses_a_plan_that_would_break_a_kept_index() {
        let list = multi_arch();
        let tags = [Action::Keep, Action::Delete, Action::Keep];
        let bad = DeletionPlan {
            digests: vec![DigestDeletion { digest: d(11), tags: vec!["multi-amd64".into()], subject: None }],
            shared_tags: vec![],
        };
        let err = bad.check(&list, &tags, &[Action::Keep]).unwrap_err().to_string();
        assert!(err.contains(&format!("deletes {}, which index {} references", d(11), d(10))), "{err}");
        let bad = DeletionPlan { digests: vec![DigestDeletion { digest: d(12), tags: vec![], subject: None }], shared_tags: vec![] };
        assert!(bad.check(&list, &tags, &[Action::Delete]).is_err(), "the untagged child is referenced too");
    }

    fn referrer(tag: Option<&str>, digest: u32, subject: u32) -> crate::model::Referrer {
        crate::model::Referrer {
            tag: tag.map(str::to_owned),
            digest: d(digest),
            subject: d(subject),
            artifact_type: None,
            subject_untagged: false,
        }
    }

    /// `keep` → 1 and `old` → 2, each signed (`.sig` tags on 11 and 12); 12 is attested by
    /// an untagged 22, which is itself signed by untagged 32; 40 is a signature of 9, which
    /// is gone; 50 signs 8, which exists untagged outside the list.
    fn signed() -> TagList {
        let mut untagged_subject = referrer(Some("sha256-sig-of-8"), 50, 8);
        untagged_subject.subject_untagged = true;
        TagList::new("r", vec![Tag::new("keep", d(1)), Tag::new("old", d(2))], vec![]).unwrap().with_referrers([
            referrer(Some("sig-keep"), 11, 1),
            referrer(Some("sig-old"), 12, 2),
            referrer(None, 22, 12),
            referrer(None, 32, 22),
            referrer(Some("orphan"), 40, 9),
            untagged_subject,
        ])
    }

    fn fate_of(list: &TagList, fates: &[ReferrerFate], digest: u32) -> ReferrerFate {
        fates[list.referrers().iter().position(|r| r.digest == d(digest)).unwrap()]
    }

    #[test]
    fn referrers_follow_their_subject_transitively() {
        let list = signed();
        let tags = [Action::Keep, Action::Delete];
        let fates = referrer_fates(&list, &tags, &[], false);
        assert_eq!(fate_of(&list, &fates, 11), ReferrerFate::SubjectStays);
        for gone in [12, 22, 32] {
            assert_eq!(fate_of(&list, &fates, gone), ReferrerFate::SubjectDeleted, "{gone}");
        }
        assert_eq!(fate_of(&list, &fates, 40), ReferrerFate::Orphan { delete: false });
        assert_eq!(fate_of(&list, &fates, 50), ReferrerFate::SubjectUntagged);
        let actions: Vec<Action> = fates.iter().map(|f| f.action()).collect();
        let p = DeletionPlan::with_referrers(&list, &tags, &[], &actions).unwrap();
        let by: HashMap<&Digest, &DigestDeletion> = p.digests.iter().map(|x| (&x.digest, x)).collect();
        assert_eq!(by.len(), 4, "{p:?}");
        assert_eq!((by[&d(2)].tags.as_slice(), &by[&d(2)].subject), (["old".to_owned()].as_slice(), &None));
        assert_eq!((by[&d(12)].tags.as_slice(), &by[&d(12)].subject), (["sig-old".to_owned()].as_slice(), &Some(d(2))));
        assert_eq!(by[&d(22)].subject, Some(d(12)), "an attestation waits for its subject");
        assert_eq!(by[&d(32)].subject, Some(d(22)), "a signature of an attestation waits for the attestation");
        // Orphans go only when the config says so, with nothing to wait for.
        let fates = referrer_fates(&list, &tags, &[], true);
        assert_eq!(fate_of(&list, &fates, 40), ReferrerFate::Orphan { delete: true });
        let actions: Vec<Action> = fates.iter().map(|f| f.action()).collect();
        let p = DeletionPlan::with_referrers(&list, &tags, &[], &actions).unwrap();
        assert!(p.digests.iter().any(|x| x.digest == d(40) && x.subject.is_none() && x.tags == ["orphan"]), "{p:?}");
        // Nothing deleted: every referrer stays; `new` keeps them all.
        let fates = referrer_fates(&list, &[Action::Keep, Action::Keep], &[], false);
        assert!(fates.iter().all(|f| f.action() == Action::Keep), "{fates:?}");
        assert!(DeletionPlan::new(&list, &tags, &[]).unwrap().digests.iter().all(|x| x.subject.is_none()));
    }

    #[test]
    fn check_refuses_a_referrer_deleted_without_its_subject_or_before_it() {
        let list = signed();
        let tags = [Action::Keep, Action::Delete];
        let n = list.referrers().len();
        let mut actions = vec![Action::Keep; n];
        let sig_keep = list.referrers().iter().position(|r| r.digest == d(11)).unwrap();
        actions[sig_keep] = Action::Delete;
        // The kept image's signature, deleted: refused whoever asks.
        let bad = DeletionPlan {
            digests: vec![DigestDeletion { digest: d(11), tags: vec!["sig-keep".into()], subject: Some(d(1)) }],
            shared_tags: vec![],
        };
        let err = bad.check_with_referrers(&list, &tags, &[], &actions).unwrap_err().to_string();
        assert!(err.contains(&format!("deletes referrer {} of {}, which stays", d(11), d(1))), "{err}");
        let err = bad.check(&list, &tags, &[]).unwrap_err().to_string();
        assert!(err.contains("kept tag `sig-keep`"), "every referrer counts as kept without their actions: {err}");
        // A referrer of a deleted image that does not wait for it.
        let sig_old = list.referrers().iter().position(|r| r.digest == d(12)).unwrap();
        let mut actions = vec![Action::Keep; n];
        actions[sig_old] = Action::Delete;
        let bad = DeletionPlan {
            digests: vec![
                DigestDeletion { digest: d(2), tags: vec!["old".into()], subject: None },
                DigestDeletion { digest: d(12), tags: vec!["sig-old".into()], subject: None },
            ],
            shared_tags: vec![],
        };
        let err = bad.check_with_referrers(&list, &tags, &[], &actions).unwrap_err().to_string();
        assert!(err.contains("without waiting for its subject"), "{err}");
    }

    #[test]
    fn recheck_keeps_the_referrers_of_a_subject_it_keeps() {
        let list = signed();
        let tags = [Action::Keep, Action::Delete];
        let actions: Vec<Action> = referrer_fates(&list, &tags, &[], false).iter().map(|f| f.action()).collect();
        let p = DeletionPlan::with_referrers(&list, &tags, &[], &actions).unwrap();
        // Since the listing, `again` was pushed onto 2: the image stays, and so do its
        // signature, its attestation and the attestation's signature.
        let now = current(&[("keep", 1), ("again", 2)]).with_referrers([referrer(Some("sig-keep"), 11, 1)]);
        let (after, dropped) = p.recheck(&now);
        assert!(after.digests.is_empty(), "{after:?}");
        assert_eq!(dropped.len(), 4, "{dropped:?}");
        assert!(dropped.iter().any(|m| m.contains(&format!("kept referrer {}", d(32)))), "{dropped:?}");
        // A referrer tag that gained … an image tag since the listing is kept like any digest.
        let (after, _) =
            p.recheck(&current(&[("keep", 1)]).with_referrers([referrer(Some("sig-keep"), 11, 1), referrer(Some("new-sig"), 12, 2)]));
        assert!(!after.digests.iter().any(|x| x.digest == d(12) || x.digest == d(22)), "{after:?}");
    }

    /// A small deterministic random generator (xorshift64) for the randomized tests.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn random_lists_never_lose_a_kept_tag() {
        // Many digests shared by several tags.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for round in 0..500 {
            let n = (next() % 40) as usize + 1;
            let tags: Vec<(String, u32)> = (0..n).map(|i| (format!("t{i}"), (next() % (n as u64 / 2 + 1)) as u32)).collect();
            let delete: Vec<String> = tags.iter().filter(|_| next().is_multiple_of(2)).map(|(n, _)| n.clone()).collect();
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

    #[test]
    fn random_lists_with_indexes_never_break_a_kept_image() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for round in 0..500 {
            let digests = (next() % 12) as u32 + 2;
            // Some digests are indexes over higher-numbered ones (no cycles).
            let mut children: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
            for i in 0..digests {
                if next().is_multiple_of(3) && i + 1 < digests {
                    let kids: Vec<Digest> = (i + 1..digests).filter(|_| next().is_multiple_of(2)).map(d).collect();
                    if !kids.is_empty() {
                        children.insert(d(i), kids);
                    }
                }
            }
            let n = (next() % 16) as usize + 1;
            let tags: Vec<Tag> = (0..n).map(|i| Tag::new(format!("t{i}"), d((next() % u64::from(digests)) as u32))).collect();
            let untagged: Vec<UntaggedManifest> = (0..digests)
                .filter(|i| !tags.iter().any(|t| t.digest == d(*i)) && next().is_multiple_of(2))
                .map(|i| UntaggedManifest { digest: d(i), created_at: None, pushed_at: None })
                .collect();
            let list = TagList::new("r", tags, untagged).unwrap().with_index_children(children.clone());
            let tag_actions: Vec<Action> =
                list.tags().iter().map(|_| if next().is_multiple_of(2) { Action::Delete } else { Action::Keep }).collect();
            let untagged_actions: Vec<Action> =
                list.untagged().iter().map(|_| if next().is_multiple_of(2) { Action::Delete } else { Action::Keep }).collect();
            let p = DeletionPlan::new(&list, &tag_actions, &untagged_actions).unwrap();

            // Apply the plan to a model registry: manifests by digest, tags by name.
            let mut manifests: HashSet<Digest> = (0..digests).map(d).collect();
            let mut registry: BTreeMap<&str, &Digest> = list.tags().iter().map(|t| (t.name.as_str(), &t.digest)).collect();
            for dd in &p.digests {
                manifests.remove(&dd.digest);
                registry.retain(|_, v| **v != dd.digest);
            }
            for t in &p.shared_tags {
                registry.remove(t.tag.as_str());
            }
            // Every kept tag resolves, and everything it references (transitively) exists.
            for (t, a) in list.tags().iter().zip(&tag_actions) {
                if *a == Action::Delete {
                    assert!(!registry.contains_key(t.name.as_str()), "round {round}: {} survived", t.name);
                    continue;
                }
                assert_eq!(registry.get(t.name.as_str()), Some(&&t.digest), "round {round}: kept tag {} lost", t.name);
                let mut stack = vec![&t.digest];
                while let Some(x) = stack.pop() {
                    assert!(manifests.contains(x), "round {round}: {x}, needed by kept tag {}, was deleted", t.name);
                    stack.extend(children.get(x).into_iter().flatten());
                }
            }
            // Untagged manifests decided keep stay.
            for (u, a) in list.untagged().iter().zip(&untagged_actions) {
                if *a == Action::Keep {
                    assert!(manifests.contains(&u.digest), "round {round}: kept untagged {} deleted", u.digest);
                }
            }
        }
    }
}
