//! Repository deletions an operator asked for (`tagwarden repos delete`, seed 004): their
//! status, backoff and lease, separate from the repository's cleanup state so neither
//! overwrites the other. The [`super::StateStore`] methods for deletions are implemented here.

use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::state::{CleanupStatus, LastFailure};
use super::{Claim, Store};
use crate::model::Timestamp;

/// Where a repository deletion stands (GitLab's `delete_*` statuses, plus `deleted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeletionStatus {
    /// Asked for; a deletion worker takes it when capacity and backoff allow.
    Scheduled,
    /// A deletion worker holds it (under a lease).
    Ongoing,
    /// The backoff plugin gave up; `tagwarden repos retry` schedules it again.
    Failed,
    /// Every tag and manifest is gone.
    Deleted,
}

impl DeletionStatus {
    pub const ALL: [DeletionStatus; 4] =
        [DeletionStatus::Scheduled, DeletionStatus::Ongoing, DeletionStatus::Failed, DeletionStatus::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            DeletionStatus::Scheduled => "delete_scheduled",
            DeletionStatus::Ongoing => "delete_ongoing",
            DeletionStatus::Failed => "delete_failed",
            DeletionStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s).with_context(|| format!("unknown deletion status `{s}` in the state database"))
    }
}

/// One repository's deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionState {
    pub path: String,
    pub status: DeletionStatus,
    pub requested_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub last_failure: Option<LastFailure>,
    /// Tags deleted by all its passes so far.
    pub tags_deleted: u64,
    pub lease_owner: Option<String>,
}

/// How a deletion pass ended, as the state records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletionOutcome {
    /// Nothing is left (or the repository was already gone).
    Done { deleted: usize },
    /// A limit was hit with work left: scheduled again, no backoff.
    Unfinished { deleted: usize, reason: String },
    /// Failed: `next_attempt_at` from the backoff plugin, `None` to give up (`delete_failed`).
    Failed { deleted: usize, class: String, http_status: Option<u16>, reason: String, next_attempt_at: Option<Timestamp> },
}

impl Store {
    pub(super) fn schedule_deletion_row(&self, path: &str, now: Timestamp) -> anyhow::Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> =
            tx.query_row("SELECT status FROM repository_deletions WHERE path = ?1", params![path], |r| r.get(0)).optional()?;
        if current.as_deref() == Some(DeletionStatus::Ongoing.as_str()) {
            bail!("the deletion of {path} is already running; `tagwarden repos show {path}` shows its progress");
        }
        tx.execute(
            "INSERT INTO repository_deletions (path, status, requested_at) VALUES (?1, 'delete_scheduled', ?2)
             ON CONFLICT (path) DO UPDATE SET status = 'delete_scheduled', requested_at = excluded.requested_at,
               started_at = NULL, completed_at = NULL, next_attempt_at = NULL, consecutive_failures = 0, tags_deleted = 0",
            params![path, now.unix_micros()],
        )?;
        tx.commit().with_context(|| format!("scheduling the deletion of {path} in {}", self.describe()))
    }

    pub(super) fn claim_deletion_row(&self, now: Timestamp, owner: &str, lease: Duration) -> anyhow::Result<Option<Claim>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now_us = now.unix_micros();
        // A cleanup of the same repository that is still running finishes first: the two never
        // delete in one repository at once.
        let path: Option<String> = tx
            .query_row(
                "SELECT d.path FROM repository_deletions d
                 WHERE d.status = 'delete_scheduled' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= ?1)
                   AND NOT EXISTS (SELECT 1 FROM repositories r WHERE r.path = d.path AND r.status = ?2)
                 ORDER BY d.requested_at LIMIT 1",
                params![now_us, CleanupStatus::Ongoing.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(path) = path else { return Ok(None) };
        let expires = now_us.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        tx.execute(
            "UPDATE repository_deletions SET status = 'delete_ongoing', started_at = ?2, lease_owner = ?3, lease_expires_at = ?4
             WHERE path = ?1",
            params![path, now_us, owner, expires],
        )?;
        tx.commit().with_context(|| format!("claiming the deletion of {path} in {}", self.describe()))?;
        Ok(Some(Claim { path, policy: crate::pass::REPOSITORY_DELETION.to_owned(), from: CleanupStatus::Scheduled, started_at: now }))
    }

    pub(super) fn finish_deletion_row(&self, path: &str, owner: &str, outcome: &DeletionOutcome, now: Timestamp) -> anyhow::Result<bool> {
        let conn = self.lock();
        let guard = "WHERE path = ?1 AND lease_owner = ?2 AND status = 'delete_ongoing'";
        let now = now.unix_micros();
        let changed = match outcome {
            DeletionOutcome::Done { deleted } => conn.execute(
                &format!(
                    "UPDATE repository_deletions SET status = 'deleted', completed_at = ?3, tags_deleted = tags_deleted + ?4,
                       consecutive_failures = 0, next_attempt_at = NULL, lease_owner = NULL, lease_expires_at = NULL {guard}"
                ),
                params![path, owner, now, *deleted as i64],
            )?,
            DeletionOutcome::Unfinished { deleted, reason } => conn.execute(
                &format!(
                    "UPDATE repository_deletions SET status = 'delete_scheduled', tags_deleted = tags_deleted + ?3,
                       consecutive_failures = 0, next_attempt_at = NULL, last_failure_reason = ?4,
                       lease_owner = NULL, lease_expires_at = NULL {guard}"
                ),
                params![path, owner, *deleted as i64, reason],
            )?,
            DeletionOutcome::Failed { deleted, class, http_status, reason, next_attempt_at } => conn.execute(
                &format!(
                    "UPDATE repository_deletions SET status = ?3, next_attempt_at = ?4, tags_deleted = tags_deleted + ?5,
                       consecutive_failures = consecutive_failures + 1, last_failure_class = ?6, last_failure_status = ?7,
                       last_failure_reason = ?8, completed_at = ?9, lease_owner = NULL, lease_expires_at = NULL {guard}"
                ),
                params![
                    path,
                    owner,
                    if next_attempt_at.is_some() { "delete_scheduled" } else { "delete_failed" },
                    next_attempt_at.map(Timestamp::unix_micros),
                    *deleted as i64,
                    class,
                    http_status,
                    reason,
                    now
                ],
            )?,
        };
        Ok(changed == 1)
    }

    pub(super) fn deletion_row(&self, path: &str) -> anyhow::Result<Option<DeletionState>> {
        Ok(self.deletion_rows_where("path = ?1", path)?.pop())
    }

    pub(super) fn deletion_rows(&self, status: Option<DeletionStatus>) -> anyhow::Result<Vec<DeletionState>> {
        match status {
            Some(s) => self.deletion_rows_where("status = ?1", s.as_str()),
            None => self.deletion_rows_where("?1 IS NOT NULL", ""),
        }
    }

    fn deletion_rows_where(&self, clause: &str, arg: &str) -> anyhow::Result<Vec<DeletionState>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT path, status, requested_at, started_at, completed_at, next_attempt_at, consecutive_failures,
                    last_failure_class, last_failure_status, last_failure_reason, tags_deleted, lease_owner
             FROM repository_deletions WHERE {clause} ORDER BY path"
        ))?;
        let ts = |t: Option<i64>| t.map(Timestamp::from_unix_micros);
        let rows = stmt.query_map(params![arg], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                [r.get::<_, Option<i64>>(3)?, r.get::<_, Option<i64>>(4)?, r.get::<_, Option<i64>>(5)?],
                r.get::<_, u32>(6)?,
                (r.get::<_, Option<String>>(7)?, r.get::<_, Option<u16>>(8)?, r.get::<_, Option<String>>(9)?),
                r.get::<_, i64>(10)?,
                r.get::<_, Option<String>>(11)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (path, status, requested, [started, completed, next], failures, (class, http_status, reason), deleted, owner) = row?;
            out.push(DeletionState {
                path,
                status: DeletionStatus::parse(&status)?,
                requested_at: Timestamp::from_unix_micros(requested),
                started_at: ts(started),
                completed_at: ts(completed),
                next_attempt_at: ts(next),
                consecutive_failures: failures,
                last_failure: class.map(|class| LastFailure { class, http_status, reason: reason.unwrap_or_default(), at: ts(completed) }),
                tags_deleted: deleted.max(0) as u64,
                lease_owner: owner,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RepositoryState, StateStore, Work};

    fn t(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn state(store: &Store, path: &str) -> DeletionStatus {
        store.deletion(path).unwrap().expect("a deletion row").status
    }

    #[test]
    fn every_deletion_transition() {
        let store = Store::in_memory().unwrap();
        let now = t("2026-11-20T12:00:00Z");
        let lease = Duration::from_secs(120);
        assert_eq!(store.claim_deletion(now, "me", lease).unwrap(), None, "nothing asked for");

        // scheduled → ongoing → deleted
        store.schedule_deletion("g/a", now).unwrap();
        assert_eq!(state(&store, "g/a"), DeletionStatus::Scheduled);
        let claim = store.claim_deletion(now, "me", lease).unwrap().expect("claimed");
        assert_eq!((claim.path.as_str(), state(&store, "g/a")), ("g/a", DeletionStatus::Ongoing));
        let err = store.schedule_deletion("g/a", now).unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        assert!(!store.finish_deletion("g/a", "other", &DeletionOutcome::Done { deleted: 1 }, now).unwrap(), "not the holder");
        assert!(store.finish_deletion("g/a", "me", &DeletionOutcome::Done { deleted: 3 }, now).unwrap());
        let done = store.deletion("g/a").unwrap().unwrap();
        assert_eq!((done.status, done.tags_deleted, done.lease_owner), (DeletionStatus::Deleted, 3, None));

        // scheduled → ongoing → scheduled (unfinished: no backoff) → failed with backoff → failed for good
        store.schedule_deletion("g/b", now).unwrap();
        store.claim_deletion(now, "me", lease).unwrap().unwrap();
        store.finish_deletion("g/b", "me", &DeletionOutcome::Unfinished { deleted: 2, reason: "budget".into() }, now).unwrap();
        assert_eq!(state(&store, "g/b"), DeletionStatus::Scheduled);
        store.claim_deletion(now, "me", lease).unwrap().unwrap();
        let later = t("2026-11-20T12:10:00Z");
        let failed = |next| DeletionOutcome::Failed {
            deleted: 0,
            class: "unauthorized".into(),
            http_status: Some(403),
            reason: "denied".into(),
            next_attempt_at: next,
        };
        store.finish_deletion("g/b", "me", &failed(Some(later)), now).unwrap();
        assert_eq!(state(&store, "g/b"), DeletionStatus::Scheduled);
        assert_eq!(store.claim_deletion(now, "me", lease).unwrap(), None, "backoff pending");
        store.claim_deletion(later, "me", lease).unwrap().unwrap();
        store.finish_deletion("g/b", "me", &failed(None), later).unwrap();
        let b = store.deletion("g/b").unwrap().unwrap();
        assert_eq!((b.status, b.consecutive_failures, b.tags_deleted), (DeletionStatus::Failed, 2, 2));
        let f = b.last_failure.unwrap();
        assert_eq!((f.class.as_str(), f.http_status, f.reason.as_str()), ("unauthorized", Some(403), "denied"));
        assert_eq!(store.claim_deletion(later, "me", lease).unwrap(), None, "failed is not claimed");
        // retry → scheduled
        assert!(store.retry("g/b").unwrap());
        assert_eq!(state(&store, "g/b"), DeletionStatus::Scheduled);

        // ongoing → scheduled by recovery (a dead holder)
        let claim = store.claim_deletion(later, "dead", lease).unwrap().unwrap();
        let held = store.leases().unwrap().into_iter().find(|l| l.path == claim.path).unwrap();
        assert_eq!((held.work, held.owner.as_deref()), (Work::Deletion, Some("dead")));
        assert!(store.recover(&held, Some("holder gone")).unwrap());
        assert_eq!(state(&store, "g/b"), DeletionStatus::Scheduled);
    }

    #[test]
    fn cleanup_and_deletion_never_run_together() {
        let store = Store::in_memory().unwrap();
        let now = t("2026-11-20T12:00:00Z");
        let lease = Duration::from_secs(120);
        store.upsert_policy("p", true, Duration::from_secs(86_400), t("2026-11-20T11:00:00Z")).unwrap();
        store.add_repositories("p", &["g/a".into()]).unwrap();
        // A cleanup runs: the deletion waits for it.
        store.claim_next(now, "me", lease).unwrap().expect("cleanup claimed");
        store.schedule_deletion("g/a", now).unwrap();
        assert_eq!(store.claim_deletion(now, "me", lease).unwrap(), None, "cleanup still running");
        store.finish_claim("g/a", "me", &crate::store::CleanupOutcome::Done { deleted: 0 }, now).unwrap();
        // A deletion is asked for: no cleanup claims the repository, even when it is due.
        store.cleanup_now("g/a").unwrap();
        assert_eq!(store.claim_next(now, "me", lease).unwrap(), None, "being deleted");
        let RepositoryState { status, .. } = store.repository("g/a").unwrap().unwrap();
        assert_eq!(status, CleanupStatus::Unfinished);
        store.claim_deletion(now, "me", lease).unwrap().expect("deletion claimed");
        let heartbeat = t("2026-11-20T12:01:00Z");
        assert_eq!(store.renew_leases("me", heartbeat).unwrap(), 1);
        assert_eq!(store.leases().unwrap()[0].expires_at, Some(heartbeat));
    }
}
