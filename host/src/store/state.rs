//! The cleanup state: policies (cadence, `next_run_at`) and repositories (status, start and
//! completion times, backoff, last failure, lease), and the atomic claim of the next
//! repository to clean.
//!
//! [`StateStore`] is the seam for a second implementation (PostgreSQL, several hosts sharing
//! one queue with `FOR UPDATE SKIP LOCKED`). It is synchronous: SQLite is, a claim is one short
//! transaction, and callers on async threads run it in `spawn_blocking`; a PostgreSQL
//! implementation keeps the same shape with a blocking pool. The claim query implements
//! [`crate::scheduler::claim_order`] and is tested against it.

use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::Store;
use crate::model::Timestamp;

/// Where a repository's cleanup stands (GitLab's statuses, plus `failed` and `gone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CleanupStatus {
    /// Nothing to do until its policy is due.
    Unscheduled,
    /// Its policy fired; it runs soon.
    Scheduled,
    /// A worker holds it (under a lease).
    Ongoing,
    /// A pass hit a limit (time budget, truncation, failed deletes); resumed when no
    /// scheduled work waits.
    Unfinished,
    /// The backoff plugin gave up; only an operator's retry brings it back.
    Failed,
    /// The registry no longer has it (seed 001): done, never retried in a loop.
    Gone,
}

impl CleanupStatus {
    pub const ALL: [CleanupStatus; 6] = [
        CleanupStatus::Unscheduled,
        CleanupStatus::Scheduled,
        CleanupStatus::Ongoing,
        CleanupStatus::Unfinished,
        CleanupStatus::Failed,
        CleanupStatus::Gone,
    ];

    /// The name stored and shown (`cleanup_unscheduled`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupStatus::Unscheduled => "cleanup_unscheduled",
            CleanupStatus::Scheduled => "cleanup_scheduled",
            CleanupStatus::Ongoing => "cleanup_ongoing",
            CleanupStatus::Unfinished => "cleanup_unfinished",
            CleanupStatus::Failed => "cleanup_failed",
            CleanupStatus::Gone => "cleanup_gone",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s).with_context(|| format!("unknown cleanup status `{s}` in the state database"))
    }
}

/// A policy's scheduling state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    pub name: String,
    pub enabled: bool,
    pub cadence: Duration,
    /// When it is next due; its repositories require cleanup once this has passed.
    pub next_run_at: Timestamp,
}

/// A repository's cleanup state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryState {
    pub path: String,
    pub policy: String,
    pub status: CleanupStatus,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// Backoff: not claimed before this.
    pub next_attempt_at: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    /// The last failure: what backoff decided on, and what `repos show` explains.
    pub last_failure: Option<LastFailure>,
    /// Tags the last pass deleted.
    pub last_deleted: Option<u64>,
}

/// A recorded failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFailure {
    /// The error class (`transient`, `unauthorized`, `permanent`, `refused`, ...).
    pub class: String,
    /// The registry's HTTP status, when one answered.
    pub http_status: Option<u16>,
    pub reason: String,
    pub at: Option<Timestamp>,
}

/// A repository a worker now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub path: String,
    pub policy: String,
    /// The status it was claimed from (`Unscheduled`, `Scheduled` or `Unfinished`).
    pub from: CleanupStatus,
    pub started_at: Timestamp,
}

/// How a claimed repository's pass ended, as the state records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupOutcome {
    /// Everything planned is done: unscheduled until its policy is due again.
    Done { deleted: usize },
    /// The repository no longer exists: done, never retried in a loop (seed 001).
    Gone,
    /// A limit was hit (budget, deletes that may pass): resumed when capacity allows.
    Unfinished { deleted: usize, reason: String },
    /// Nothing was attempted (the repository is being imported): tried again at `until`,
    /// no failure counted.
    Deferred { reason: String, until: Timestamp },
    /// The pass failed. `next_attempt_at` is when to try again; `None` means give up
    /// (`cleanup_failed` until an operator retries).
    Failed { class: String, http_status: Option<u16>, reason: String, next_attempt_at: Option<Timestamp> },
}

/// What a lease is held for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    /// A policy's cleanup pass (`cleanup_ongoing`).
    Cleanup,
    /// An operator's repository deletion (`delete_ongoing`).
    Deletion,
}

/// An ongoing cleanup or deletion and who holds it, for heartbeats, recovery and stale checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub path: String,
    pub work: Work,
    pub owner: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
}

/// The cleanup state, behind a seam for a second (shared) implementation.
pub trait StateStore: Send + Sync {
    /// Records how `owner`'s claim on `path` ended. `false` (nothing changed) when the claim
    /// is no longer `owner`'s: recovery took it back.
    fn finish_claim(&self, path: &str, owner: &str, outcome: &CleanupOutcome, now: Timestamp) -> anyhow::Result<bool>;

    /// Every ongoing cleanup and deletion with its lease.
    fn leases(&self) -> anyhow::Result<Vec<Lease>>;

    /// Extends every lease `owner` holds to `expires_at` (the daemon's heartbeat). Returns
    /// how many it still holds.
    fn renew_leases(&self, owner: &str, expires_at: Timestamp) -> anyhow::Result<usize>;

    /// Takes back ongoing work whose holder is gone or stale, if `lease.owner` still holds
    /// it: a cleanup goes back to `cleanup_unfinished`, a deletion to `delete_scheduled`,
    /// claimed again as soon as capacity allows. The failure count is not increased
    /// (GitLab's rule); `why` is recorded as the last reason when given.
    fn recover(&self, lease: &Lease, why: Option<&str>) -> anyhow::Result<bool>;

    /// Asks for `path` to be cleaned as soon as no scheduled work waits, ahead of other
    /// unfinished work and whatever its backoff says (`tagwarden repos cleanup-now`).
    /// `false` when it is unknown or ongoing.
    fn cleanup_now(&self, path: &str) -> anyhow::Result<bool>;

    /// Schedules the deletion of repository `path` (`tagwarden repos delete`). An error
    /// when one is ongoing.
    fn schedule_deletion(&self, path: &str, now: Timestamp) -> anyhow::Result<()>;

    /// Claims the oldest requested deletion that is due (no backoff pending, no cleanup of
    /// the repository ongoing): it becomes `delete_ongoing`, leased to `owner`.
    fn claim_deletion(&self, now: Timestamp, owner: &str, lease: Duration) -> anyhow::Result<Option<Claim>>;

    /// Records how `owner`'s deletion of `path` ended; `false` when recovery took it back.
    fn finish_deletion(&self, path: &str, owner: &str, outcome: &crate::store::DeletionOutcome, now: Timestamp) -> anyhow::Result<bool>;

    /// One repository's deletion state, if a deletion was ever asked for.
    fn deletion(&self, path: &str) -> anyhow::Result<Option<crate::store::DeletionState>>;

    /// Every deletion (or those in `status`), by path.
    fn deletions(&self, status: Option<crate::store::DeletionStatus>) -> anyhow::Result<Vec<crate::store::DeletionState>>;

    /// Schedules the next run of every due policy all of whose repositories have started
    /// since it became due (GitLab: `next_run_at = now + cadence`). Returns the policies moved.
    fn advance_policies(&self, now: Timestamp) -> anyhow::Result<Vec<String>>;

    /// The earliest future time something becomes claimable (a policy due, a backoff over).
    fn next_wakeup(&self, now: Timestamp) -> anyhow::Result<Option<Timestamp>>;

    /// How many repositories are in each status.
    fn status_counts(&self) -> anyhow::Result<Vec<(CleanupStatus, usize)>>;

    /// Repositories (all, or in `status`), by path.
    fn repositories(&self, status: Option<CleanupStatus>) -> anyhow::Result<Vec<RepositoryState>>;

    /// Puts a `cleanup_failed` (or any not ongoing) repository back in the queue with no
    /// backoff (as unfinished work: claimed as soon as no scheduled work waits), and a
    /// `delete_failed` deletion back to `delete_scheduled`: an operator's retry.
    fn retry(&self, path: &str) -> anyhow::Result<bool>;

    /// Creates or updates a policy. A new policy is due at `first_run_at`.
    fn upsert_policy(&self, name: &str, enabled: bool, cadence: Duration, first_run_at: Timestamp) -> anyhow::Result<()>;

    /// Adds `paths` under `policy` (new ones unscheduled) and moves existing ones to it.
    fn add_repositories(&self, policy: &str, paths: &[String]) -> anyhow::Result<()>;

    /// Claims the next repository in GitLab's order ([`crate::scheduler::claim_order`]),
    /// atomically: it becomes ongoing, started now, leased to `owner` until `now + lease`.
    fn claim_next(&self, now: Timestamp, owner: &str, lease: Duration) -> anyhow::Result<Option<Claim>>;

    /// The state of one repository.
    fn repository(&self, path: &str) -> anyhow::Result<Option<RepositoryState>>;

    /// The state of one policy.
    fn policy(&self, name: &str) -> anyhow::Result<Option<PolicyState>>;

    /// Sets a repository's state as given, failure details aside (tests, benchmarks, and
    /// copying state between stores).
    fn put_repository_state(&self, s: &RepositoryState) -> anyhow::Result<()>;

    /// Sets a policy's state as given (tests, benchmarks, and copying state between stores).
    fn put_policy_state(&self, p: &PolicyState) -> anyhow::Result<()>;

    /// Up to `limit` repository paths after `after` (by path), in `status` when given,
    /// containing `search` when given: a page of the API's listing.
    fn repository_paths(
        &self,
        status: Option<CleanupStatus>,
        search: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<String>>;

    /// Up to `limit` repositories under `policies`, with their policy: those cleaned most
    /// recently first, then by path (what the plugin directory's canary compares on).
    fn canary_sample(&self, policies: &[String], limit: usize) -> anyhow::Result<Vec<(String, String)>>;

    /// Whether the store answers (`/readyz`): an error naming it when it does not.
    fn ping(&self) -> anyhow::Result<()>;

    /// Takes or renews the lease on periodic duty `name` (catalog sync, stale detection,
    /// cadence scheduling) for `owner` until `now + ttl`, in one statement: `true` when
    /// `owner` holds it now (it was free, its lease had expired, or it was already
    /// `owner`'s), `false` while another owner's lease runs.
    fn take_duty(&self, name: &str, owner: &str, now: Timestamp, ttl: Duration) -> anyhow::Result<bool>;

    /// Who holds (or last held) duty `name`, if anyone took it.
    fn duty_holder(&self, name: &str) -> anyhow::Result<Option<String>>;

    /// Gives up duty `name` if `owner` still holds it (a daemon shutting down, or a holder
    /// on this machine that is gone): the next host to ask takes it at once.
    fn release_duty(&self, name: &str, owner: &str) -> anyhow::Result<bool>;
}

/// The duty lease statement, the same on both stores: an upsert whose update only happens
/// for the holder or once the lease has expired (0 rows changed otherwise).
pub(super) const TAKE_DUTY: &str = "INSERT INTO duties (name, owner, expires_at) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
     WHERE duties.owner = excluded.owner OR duties.expires_at <= $4";

/// Clause shared by the two claim queries: claimable now (no backoff pending), and not
/// being deleted (a deletion asked for, running or done wins over cleanup; a failed one
/// leaves the repository to its policy until an operator retries it).
const NO_BACKOFF: &str = "(next_attempt_at IS NULL OR next_attempt_at <= ?2)
    AND NOT EXISTS (SELECT 1 FROM repository_deletions d WHERE d.path = repositories.path AND d.status != 'delete_failed')";

impl StateStore for Store {
    fn upsert_policy(&self, name: &str, enabled: bool, cadence: Duration, first_run_at: Timestamp) -> anyhow::Result<()> {
        let cadence = i64::try_from(cadence.as_secs()).context("cadence too long")?;
        self.lock()
            .execute(
                "INSERT INTO policies (name, enabled, cadence_secs, next_run_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, cadence_secs = excluded.cadence_secs",
                params![name, enabled, cadence, first_run_at.unix_micros()],
            )
            .with_context(|| format!("recording policy `{name}` in {}", self.describe()))?;
        Ok(())
    }

    fn add_repositories(&self, policy: &str, paths: &[String]) -> anyhow::Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO repositories (path, policy, status) VALUES (?1, ?2, 'cleanup_unscheduled')
                 ON CONFLICT (path) DO UPDATE SET policy = excluded.policy",
            )?;
            for path in paths {
                stmt.execute(params![path, policy])?;
            }
        }
        tx.commit().with_context(|| format!("recording the repositories of policy `{policy}` in {}", self.describe()))?;
        Ok(())
    }

    fn claim_next(&self, now: Timestamp, owner: &str, lease: Duration) -> anyhow::Result<Option<Claim>> {
        let mut conn = self.lock();
        // IMMEDIATE: the write lock is taken before reading, so two processes never claim
        // the same repository.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now_us = now.unix_micros();
        let policies: Vec<(String, i64)> = {
            let mut stmt = tx.prepare_cached("SELECT name, next_run_at FROM policies WHERE enabled ORDER BY name")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        // Tier 0: requiring cleanup, unscheduled before scheduled, oldest start first (never
        // started first). One indexed probe per due policy and status; policies are few.
        let mut found: Option<(String, String, CleanupStatus, Option<i64>)> = None;
        'tiers: for status in [CleanupStatus::Unscheduled, CleanupStatus::Scheduled] {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT path, started_at FROM repositories
                 WHERE policy = ?1 AND status = ?3 AND (started_at IS NULL OR started_at < ?4) AND {NO_BACKOFF}
                 ORDER BY started_at LIMIT 1"
            ))?;
            for (policy, next_run_at) in policies.iter().filter(|(_, next)| *next < now_us) {
                let candidate: Option<(String, Option<i64>)> =
                    stmt.query_row(params![policy, now_us, status.as_str(), next_run_at], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                if let Some((path, started)) = candidate
                    && found.as_ref().is_none_or(|(_, _, _, best)| earlier(started, *best))
                {
                    found = Some((path, policy.clone(), status, started));
                }
            }
            if found.is_some() {
                break 'tiers;
            }
        }
        // Tier 1: unfinished work, oldest start first.
        if found.is_none() {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT path, started_at FROM repositories
                 WHERE policy = ?1 AND status = 'cleanup_unfinished' AND {NO_BACKOFF}
                 ORDER BY started_at LIMIT 1"
            ))?;
            for (policy, _) in &policies {
                let candidate: Option<(String, Option<i64>)> =
                    stmt.query_row(params![policy, now_us], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                if let Some((path, started)) = candidate
                    && found.as_ref().is_none_or(|(_, _, _, best)| earlier(started, *best))
                {
                    found = Some((path, policy.clone(), CleanupStatus::Unfinished, started));
                }
            }
        }
        let Some((path, policy, from, _)) = found else {
            return Ok(None);
        };
        let expires = now.unix_micros().saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let changed = tx.execute(
            "UPDATE repositories SET status = 'cleanup_ongoing', started_at = ?2, lease_owner = ?3, lease_expires_at = ?4
             WHERE path = ?1 AND status = ?5",
            params![path, now_us, owner, expires, from.as_str()],
        )?;
        if changed != 1 {
            bail!("claiming {path} in {}: its row changed under an immediate transaction", self.describe());
        }
        tx.commit().with_context(|| format!("claiming {path} in {}", self.describe()))?;
        Ok(Some(Claim { path, policy, from, started_at: now }))
    }

    fn finish_claim(&self, path: &str, owner: &str, outcome: &CleanupOutcome, now: Timestamp) -> anyhow::Result<bool> {
        let now = now.unix_micros();
        let conn = self.lock();
        let guard = "WHERE path = ?1 AND lease_owner = ?2 AND status = 'cleanup_ongoing'";
        let changed = match outcome {
            CleanupOutcome::Done { deleted } => conn.execute(
                &format!(
                    "UPDATE repositories SET status = 'cleanup_unscheduled', completed_at = ?3, last_deleted = ?4,
                       consecutive_failures = 0, next_attempt_at = NULL, lease_owner = NULL, lease_expires_at = NULL {guard}"
                ),
                params![path, owner, now, *deleted as i64],
            )?,
            CleanupOutcome::Gone => conn.execute(
                &format!(
                    "UPDATE repositories SET status = 'cleanup_gone', completed_at = ?3, last_deleted = 0, consecutive_failures = 0,
                       next_attempt_at = NULL, lease_owner = NULL, lease_expires_at = NULL {guard}"
                ),
                params![path, owner, now],
            )?,
            CleanupOutcome::Unfinished { deleted, reason } => conn.execute(
                &format!(
                    "UPDATE repositories SET status = 'cleanup_unfinished', last_deleted = ?3, consecutive_failures = 0,
                       next_attempt_at = NULL, last_failure_reason = ?4, lease_owner = NULL, lease_expires_at = NULL {guard}"
                ),
                params![path, owner, *deleted as i64, reason],
            )?,
            CleanupOutcome::Deferred { reason, until } => conn.execute(
                &format!(
                    "UPDATE repositories SET status = 'cleanup_unfinished', next_attempt_at = ?3, last_failure_reason = ?4,
                       lease_owner = NULL, lease_expires_at = NULL {guard}"
                ),
                params![path, owner, until.unix_micros(), reason],
            )?,
            CleanupOutcome::Failed { class, http_status, reason, next_attempt_at } => conn.execute(
                &format!(
                    "UPDATE repositories SET status = ?3, next_attempt_at = ?4, consecutive_failures = consecutive_failures + 1,
                       last_failure_class = ?5, last_failure_status = ?6, last_failure_reason = ?7, last_failure_at = ?8,
                       lease_owner = NULL, lease_expires_at = NULL {guard}"
                ),
                params![
                    path,
                    owner,
                    if next_attempt_at.is_some() { "cleanup_unfinished" } else { "cleanup_failed" },
                    next_attempt_at.map(Timestamp::unix_micros),
                    class,
                    http_status,
                    reason,
                    now
                ],
            )?,
        };
        Ok(changed == 1)
    }

    fn leases(&self) -> anyhow::Result<Vec<Lease>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT path, 0, lease_owner, lease_expires_at, started_at FROM repositories WHERE status = 'cleanup_ongoing'
             UNION ALL
             SELECT path, 1, lease_owner, lease_expires_at, started_at FROM repository_deletions WHERE status = 'delete_ongoing'",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Lease {
                path: r.get(0)?,
                work: if r.get::<_, i64>(1)? == 0 { Work::Cleanup } else { Work::Deletion },
                owner: r.get(2)?,
                expires_at: r.get::<_, Option<i64>>(3)?.map(Timestamp::from_unix_micros),
                started_at: r.get::<_, Option<i64>>(4)?.map(Timestamp::from_unix_micros),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn renew_leases(&self, owner: &str, expires_at: Timestamp) -> anyhow::Result<usize> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let until = expires_at.unix_micros();
        let cleanups = tx.execute(
            "UPDATE repositories SET lease_expires_at = ?2 WHERE lease_owner = ?1 AND status = 'cleanup_ongoing'",
            params![owner, until],
        )?;
        let deletions = tx.execute(
            "UPDATE repository_deletions SET lease_expires_at = ?2 WHERE lease_owner = ?1 AND status = 'delete_ongoing'",
            params![owner, until],
        )?;
        tx.commit().with_context(|| format!("renewing the leases of {owner} in {}", self.describe()))?;
        Ok(cleanups + deletions)
    }

    fn recover(&self, lease: &Lease, why: Option<&str>) -> anyhow::Result<bool> {
        let sql = match lease.work {
            Work::Cleanup => {
                "UPDATE repositories SET status = 'cleanup_unfinished', lease_owner = NULL, lease_expires_at = NULL,
                   last_failure_reason = COALESCE(?3, last_failure_reason)
                 WHERE path = ?1 AND status = 'cleanup_ongoing' AND lease_owner IS ?2"
            }
            Work::Deletion => {
                "UPDATE repository_deletions SET status = 'delete_scheduled', lease_owner = NULL, lease_expires_at = NULL,
                   last_failure_reason = COALESCE(?3, last_failure_reason)
                 WHERE path = ?1 AND status = 'delete_ongoing' AND lease_owner IS ?2"
            }
        };
        let changed = self.lock().execute(sql, params![lease.path, lease.owner, why])?;
        Ok(changed == 1)
    }

    fn cleanup_now(&self, path: &str) -> anyhow::Result<bool> {
        // A null start sorts first among unfinished work (never started first).
        let changed = self.lock().execute(
            "UPDATE repositories SET status = 'cleanup_unfinished', started_at = NULL, next_attempt_at = NULL
             WHERE path = ?1 AND status != 'cleanup_ongoing'",
            params![path],
        )?;
        Ok(changed == 1)
    }

    fn schedule_deletion(&self, path: &str, now: Timestamp) -> anyhow::Result<()> {
        self.schedule_deletion_row(path, now)
    }

    fn claim_deletion(&self, now: Timestamp, owner: &str, lease: Duration) -> anyhow::Result<Option<Claim>> {
        self.claim_deletion_row(now, owner, lease)
    }

    fn finish_deletion(&self, path: &str, owner: &str, outcome: &crate::store::DeletionOutcome, now: Timestamp) -> anyhow::Result<bool> {
        self.finish_deletion_row(path, owner, outcome, now)
    }

    fn deletion(&self, path: &str) -> anyhow::Result<Option<crate::store::DeletionState>> {
        self.deletion_row(path)
    }

    fn deletions(&self, status: Option<crate::store::DeletionStatus>) -> anyhow::Result<Vec<crate::store::DeletionState>> {
        self.deletion_rows(status)
    }

    fn advance_policies(&self, now: Timestamp) -> anyhow::Result<Vec<String>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let due: Vec<(String, i64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT p.name, p.cadence_secs FROM policies p WHERE p.enabled AND p.next_run_at < ?1 AND NOT EXISTS (
                   SELECT 1 FROM repositories r WHERE r.policy = p.name
                     AND r.status NOT IN ('cleanup_gone', 'cleanup_failed')
                     AND (r.status = 'cleanup_ongoing' OR r.started_at IS NULL OR r.started_at < p.next_run_at))",
            )?;
            stmt.query_map(params![now.unix_micros()], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        for (name, cadence) in &due {
            tx.execute(
                "UPDATE policies SET next_run_at = ?2 WHERE name = ?1",
                params![name, now.unix_micros().saturating_add(cadence.saturating_mul(1_000_000))],
            )?;
        }
        tx.commit()?;
        Ok(due.into_iter().map(|(n, _)| n).collect())
    }

    fn next_wakeup(&self, now: Timestamp) -> anyhow::Result<Option<Timestamp>> {
        let conn = self.lock();
        let next: Option<i64> = conn.query_row(
            "SELECT MIN(t) FROM (
               SELECT next_run_at AS t FROM policies WHERE enabled AND next_run_at > ?1
               UNION ALL
               SELECT next_attempt_at FROM repositories WHERE status = 'cleanup_unfinished' AND next_attempt_at > ?1
               UNION ALL
               SELECT next_attempt_at FROM repository_deletions WHERE status = 'delete_scheduled' AND next_attempt_at > ?1)",
            params![now.unix_micros()],
            |r| r.get(0),
        )?;
        Ok(next.map(Timestamp::from_unix_micros))
    }

    fn status_counts(&self) -> anyhow::Result<Vec<(CleanupStatus, usize)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM repositories GROUP BY status")?;
        let rows: Vec<(String, i64)> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        let mut counts: Vec<(CleanupStatus, usize)> = CleanupStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for (status, n) in rows {
            let status = CleanupStatus::parse(&status)?;
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == status) {
                c.1 = n as usize;
            }
        }
        Ok(counts)
    }

    fn repositories(&self, status: Option<CleanupStatus>) -> anyhow::Result<Vec<RepositoryState>> {
        let paths: Vec<String> = {
            let conn = self.lock();
            let mut stmt = conn.prepare_cached("SELECT path FROM repositories WHERE ?1 IS NULL OR status = ?1 ORDER BY path")?;
            stmt.query_map(params![status.map(CleanupStatus::as_str)], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        paths.iter().filter_map(|p| self.repository(p).transpose()).collect()
    }

    fn retry(&self, path: &str) -> anyhow::Result<bool> {
        let conn = self.lock();
        // A failed deletion is what an operator retries first: the cleanup of a repository
        // being deleted would not run anyway.
        let deletion = conn.execute(
            "UPDATE repository_deletions SET status = 'delete_scheduled', next_attempt_at = NULL, consecutive_failures = 0
             WHERE path = ?1 AND status = 'delete_failed'",
            params![path],
        )?;
        if deletion == 1 {
            return Ok(true);
        }
        let changed = conn.execute(
            "UPDATE repositories SET status = 'cleanup_unfinished', next_attempt_at = NULL, consecutive_failures = 0
             WHERE path = ?1 AND status != 'cleanup_ongoing'",
            params![path],
        )?;
        Ok(changed == 1)
    }

    fn repository(&self, path: &str) -> anyhow::Result<Option<RepositoryState>> {
        let conn = self.lock();
        let row = conn
            .query_row(
                "SELECT path, policy, status, started_at, completed_at, next_attempt_at, consecutive_failures, lease_owner, lease_expires_at,
                        last_failure_class, last_failure_reason, last_deleted, last_failure_status, last_failure_at
                 FROM repositories WHERE path = ?1",
                params![path],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, u32>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                        (r.get::<_, Option<String>>(9)?, r.get::<_, Option<String>>(10)?, r.get::<_, Option<i64>>(11)?),
                        (r.get::<_, Option<u16>>(12)?, r.get::<_, Option<i64>>(13)?),
                    ))
                },
            )
            .optional()?;
        let Some((
            path,
            policy,
            status,
            started,
            completed,
            next_attempt,
            failures,
            owner,
            expires,
            (class, reason, deleted),
            (http_status, at),
        )) = row
        else {
            return Ok(None);
        };
        let ts = |t: Option<i64>| t.map(Timestamp::from_unix_micros);
        Ok(Some(RepositoryState {
            path,
            policy,
            status: CleanupStatus::parse(&status)?,
            started_at: ts(started),
            completed_at: ts(completed),
            next_attempt_at: ts(next_attempt),
            consecutive_failures: failures,
            lease_owner: owner,
            lease_expires_at: ts(expires),
            last_failure: class.map(|class| LastFailure { class, http_status, reason: reason.unwrap_or_default(), at: ts(at) }),
            last_deleted: deleted.map(|d| d.max(0) as u64),
        }))
    }

    fn policy(&self, name: &str) -> anyhow::Result<Option<PolicyState>> {
        let conn = self.lock();
        Ok(conn
            .query_row("SELECT name, enabled, cadence_secs, next_run_at FROM policies WHERE name = ?1", params![name], |r| {
                Ok(PolicyState {
                    name: r.get(0)?,
                    enabled: r.get(1)?,
                    cadence: Duration::from_secs(r.get::<_, i64>(2)?.max(0) as u64),
                    next_run_at: Timestamp::from_unix_micros(r.get(3)?),
                })
            })
            .optional()?)
    }

    fn put_repository_state(&self, s: &RepositoryState) -> anyhow::Result<()> {
        let us = |t: Option<Timestamp>| t.map(Timestamp::unix_micros);
        self.lock().execute(
            "INSERT INTO repositories (path, policy, status, started_at, completed_at, next_attempt_at, consecutive_failures, lease_owner, lease_expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (path) DO UPDATE SET policy = excluded.policy, status = excluded.status, started_at = excluded.started_at,
               completed_at = excluded.completed_at, next_attempt_at = excluded.next_attempt_at,
               consecutive_failures = excluded.consecutive_failures, lease_owner = excluded.lease_owner,
               lease_expires_at = excluded.lease_expires_at",
            params![
                s.path,
                s.policy,
                s.status.as_str(),
                us(s.started_at),
                us(s.completed_at),
                us(s.next_attempt_at),
                s.consecutive_failures,
                s.lease_owner,
                us(s.lease_expires_at)
            ],
        )?;
        Ok(())
    }

    fn take_duty(&self, name: &str, owner: &str, now: Timestamp, ttl: Duration) -> anyhow::Result<bool> {
        let expires = now.saturating_add(ttl).unix_micros();
        let changed = self
            .lock()
            .execute(TAKE_DUTY, params![name, owner, expires, now.unix_micros()])
            .with_context(|| format!("taking duty `{name}` in {}", self.describe()))?;
        Ok(changed == 1)
    }

    fn repository_paths(
        &self,
        status: Option<CleanupStatus>,
        search: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<String>> {
        Store::repository_paths(self, status, search, after, limit)
    }

    fn canary_sample(&self, policies: &[String], limit: usize) -> anyhow::Result<Vec<(String, String)>> {
        Store::canary_sample(self, policies, limit)
    }

    fn ping(&self) -> anyhow::Result<()> {
        Store::ping(self)
    }

    fn duty_holder(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.lock().query_row("SELECT owner FROM duties WHERE name = ?1", params![name], |r| r.get(0)).optional()?)
    }

    fn release_duty(&self, name: &str, owner: &str) -> anyhow::Result<bool> {
        Ok(self.lock().execute("DELETE FROM duties WHERE name = ?1 AND owner = ?2", params![name, owner])? == 1)
    }

    fn put_policy_state(&self, p: &PolicyState) -> anyhow::Result<()> {
        self.lock().execute(
            "INSERT INTO policies (name, enabled, cadence_secs, next_run_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, cadence_secs = excluded.cadence_secs, next_run_at = excluded.next_run_at",
            params![p.name, p.enabled, p.cadence.as_secs() as i64, p.next_run_at.unix_micros()],
        )?;
        Ok(())
    }
}

/// Whether start time `a` sorts before `b` in the claim order (never started first).
pub(super) fn earlier(a: Option<i64>, b: Option<i64>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::claim_order;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    const NOW: &str = "2026-11-20T12:00:00Z";

    fn repo(path: &str, policy: &str, status: CleanupStatus, started_at: Option<&str>) -> RepositoryState {
        RepositoryState {
            path: path.into(),
            policy: policy.into(),
            status,
            started_at: started_at.map(t),
            completed_at: None,
            next_attempt_at: None,
            consecutive_failures: 0,
            lease_owner: None,
            lease_expires_at: None,
            last_failure: None,
            last_deleted: None,
        }
    }

    /// The policy states of GitLab's worker spec.
    fn policy(name: &str, kind: &str) -> PolicyState {
        let (enabled, next_run_at) = match kind {
            "runnable" => (true, "2026-11-20T11:00:00Z"),     // due an hour ago
            "not runnable" => (true, "2026-11-21T12:00:00Z"), // due tomorrow
            "disabled" => (false, "2026-11-20T11:00:00Z"),
            _ => unreachable!(),
        };
        PolicyState { name: name.into(), enabled, cadence: Duration::from_secs(86_400), next_run_at: t(next_run_at) }
    }

    /// What the store claims first from `repos` (all under one policy state `kind`).
    fn claimed(kind: &str, repos: &[RepositoryState]) -> Option<String> {
        let store = Store::in_memory().unwrap();
        store.put_policy_state(&policy("p", kind)).unwrap();
        for r in repos {
            store.put_repository_state(r).unwrap();
        }
        store.claim_next(t(NOW), "me", Duration::from_secs(60)).unwrap().map(|c| c.path)
    }

    /// The claim order as a table, as GitLab's worker spec has it: two repositories' statuses
    /// (and starts) × policy runnable / not runnable / disabled. The store's query and the
    /// pure [`claim_order`] must agree on every row.
    #[test]
    fn claim_order_table() {
        use CleanupStatus::*;
        let before = Some("2026-11-20T10:00:00Z"); // started before the policy became due
        let after = Some("2026-11-20T11:30:00Z"); // started since
        let older = Some("2026-11-19T10:00:00Z");
        /// a status, a started, b status, b started, policy, claimed first.
        type Row<'a> = (CleanupStatus, Option<&'a str>, CleanupStatus, Option<&'a str>, &'a str, Option<&'a str>);
        #[rustfmt::skip]
        let table: &[Row] = &[
            // a status, a started, b status, b started, policy, claimed first
            (Unscheduled, before, Scheduled,   older,  "runnable",     Some("a")), // unscheduled before scheduled
            (Scheduled,   older,  Unscheduled, before, "runnable",     Some("b")),
            (Unscheduled, before, Unscheduled, older,  "runnable",     Some("b")), // oldest start first
            (Unscheduled, None,   Unscheduled, older,  "runnable",     Some("a")), // never started first
            (Unscheduled, after,  Unscheduled, after,  "runnable",     None),      // both ran this cycle
            (Unscheduled, after,  Unfinished,  before, "runnable",     Some("b")), // then unfinished work
            (Unfinished,  before, Unscheduled, before, "runnable",     Some("b")), // scheduled work first
            (Unfinished,  before, Unfinished,  older,  "runnable",     Some("b")),
            (Ongoing,     older,  Ongoing,     older,  "runnable",     None),      // never an ongoing one
            (Ongoing,     older,  Unfinished,  before, "runnable",     Some("b")),
            (Failed,      older,  Gone,        older,  "runnable",     None),
            (Unscheduled, before, Scheduled,   older,  "not runnable", None),
            (Unfinished,  before, Unscheduled, before, "not runnable", Some("a")), // unfinished resumes any time
            (Unscheduled, before, Unfinished,  before, "disabled",     None),
            (Unfinished,  before, Unfinished,  older,  "disabled",     None),
        ];
        for (i, (sa, ta, sb, tb, kind, expected)) in table.iter().enumerate() {
            let (a, b) = (repo("a", "p", *sa, *ta), repo("b", "p", *sb, *tb));
            let got = claimed(kind, &[a.clone(), b.clone()]);
            assert_eq!(got.as_deref(), *expected, "row {i}: {sa:?} {ta:?} / {sb:?} {tb:?}, policy {kind}");
            // The pure order agrees: the winner sorts first, and nothing claimable is missed.
            let p = policy("p", kind);
            let first = match claim_order((&p, &a), (&p, &b), t(NOW)) {
                std::cmp::Ordering::Greater => &b,
                _ => &a,
            };
            if let Some(winner) = expected {
                assert_eq!(&first.path, winner, "row {i}: claim_order disagrees with the store");
            }
        }
    }

    #[test]
    fn a_claim_is_atomic_and_leased_and_backoff_is_respected() {
        let store = Store::in_memory().unwrap();
        store.put_policy_state(&policy("p", "runnable")).unwrap();
        let mut waiting = repo("waiting", "p", CleanupStatus::Unscheduled, None);
        waiting.next_attempt_at = Some(t("2026-11-20T12:05:00Z"));
        store.put_repository_state(&waiting).unwrap();
        store.put_repository_state(&repo("ready", "p", CleanupStatus::Unscheduled, Some("2026-11-20T10:00:00Z"))).unwrap();
        let claim = store.claim_next(t(NOW), "host-a", Duration::from_secs(300)).unwrap().unwrap();
        assert_eq!((claim.path.as_str(), claim.from), ("ready", CleanupStatus::Unscheduled));
        let state = store.repository("ready").unwrap().unwrap();
        assert_eq!(state.status, CleanupStatus::Ongoing);
        assert_eq!(state.started_at, Some(t(NOW)));
        assert_eq!(state.lease_owner.as_deref(), Some("host-a"));
        assert_eq!(state.lease_expires_at, Some(t("2026-11-20T12:05:00Z")));
        // `waiting` backs off until 12:05; nothing else is claimable.
        assert_eq!(store.claim_next(t(NOW), "host-b", Duration::from_secs(300)).unwrap(), None);
        let later = store.claim_next(t("2026-11-20T12:05:00Z"), "host-b", Duration::from_secs(300)).unwrap().unwrap();
        assert_eq!(later.path, "waiting");
    }

    #[test]
    fn policies_and_repositories_are_added_and_moved() {
        let store = Store::in_memory().unwrap();
        store.upsert_policy("a", true, Duration::from_secs(86_400), t(NOW)).unwrap();
        store.upsert_policy("b", true, Duration::from_secs(7 * 86_400), t(NOW)).unwrap();
        store.add_repositories("a", &["g/x".into(), "g/y".into()]).unwrap();
        store.add_repositories("b", &["g/y".into()]).unwrap();
        assert_eq!(store.repository("g/y").unwrap().unwrap().policy, "b");
        assert_eq!(store.repository("g/x").unwrap().unwrap().status, CleanupStatus::Unscheduled);
        // Updating a policy keeps its next run.
        store.upsert_policy("a", false, Duration::from_secs(3_600), t("2030-01-01T00:00:00Z")).unwrap();
        let a = store.policy("a").unwrap().unwrap();
        assert_eq!((a.enabled, a.cadence, a.next_run_at), (false, Duration::from_secs(3_600), t(NOW)));
    }
}
