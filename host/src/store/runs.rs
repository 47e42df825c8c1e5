//! The `runs` table: one row per pass that reached a plan and was allowed to delete.
//!
//! A run is the pass-level intent: it is written (with what the plan is about to do) before
//! the pass's first deletion request, and closed with what happened after its last. A run
//! that is still open when its owner is gone was interrupted; reconciliation closes it as
//! `interrupted` once its open audit rows are resolved. The daemon's scheduling state builds
//! on these rows.

use std::sync::Arc;

use rusqlite::params;

use super::Store;
use crate::model::Timestamp;

/// A run about to start deleting.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    pub policy: &'a str,
    pub decided_by: &'a str,
    /// Who runs it (see `crate::owner`): lets a later process tell a live run from a dead one.
    pub owner: &'a str,
    pub tags_seen: usize,
}

/// What a run's plan is about to do, recorded before its first deletion request.
#[derive(Debug, Clone, Copy)]
pub struct RunPlan {
    pub tags_to_delete: usize,
    /// Manifests the plan deletes by digest.
    pub digests_planned: usize,
    /// Tags the plan removes (with those digests, and one by one).
    pub tags_planned: usize,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary<'a> {
    /// `completed`, `unfinished`, `failed`, ... (the pass's status label).
    pub status: &'a str,
    pub tags_deleted: usize,
    pub manifests_deleted: usize,
    pub failed: usize,
    pub detail: Option<&'a str>,
}

/// Totals over runs (see [`RunLog::since`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTotals {
    pub runs: u64,
    pub tags_deleted: u64,
    pub failed_runs: u64,
}

/// A run as read back (`tagwarden runs list`, `repos show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: i64,
    pub repository: String,
    pub policy: String,
    pub decided_by: String,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// `deleting` while open, then the pass's status (`completed`, `unfinished`, ...,
    /// `interrupted`).
    pub status: String,
    pub tags_seen: u64,
    pub tags_to_delete: u64,
    pub tags_deleted: Option<u64>,
    pub failed: Option<u64>,
    pub detail: Option<String>,
}

/// A run that has not been closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRun {
    pub id: i64,
    pub owner: String,
    pub started_at: Timestamp,
}

/// Where the runs live: the local SQLite file, or the PostgreSQL database several hosts share
/// (`[state] url`), beside the audit rows that point at them. Reached through [`RunLog`].
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// Opens a run; returns its id.
    fn begin(&self, run: &NewRun<'_>) -> anyhow::Result<i64>;

    /// Records what run `id`'s plan is about to do.
    fn set_plan(&self, id: i64, plan: RunPlan) -> anyhow::Result<()>;

    /// Closes run `id` with how it ended.
    fn finish(&self, id: i64, s: &RunSummary<'_>) -> anyhow::Result<()>;

    /// Closes run `id` as interrupted, unless it was closed meanwhile.
    fn close_interrupted(&self, id: i64, detail: &str) -> anyhow::Result<()>;

    /// Runs on `repository` of `registry` that were never closed, oldest first.
    fn open(&self, registry: &str, repository: &str) -> anyhow::Result<Vec<OpenRun>>;

    /// Repositories of `registry` with runs never closed, sorted.
    fn repositories_with_open_runs(&self, registry: &str) -> anyhow::Result<Vec<String>>;

    /// Runs started since `since`: how many, tags deleted, how many failed.
    fn since(&self, since: Timestamp) -> anyhow::Result<RunTotals>;

    /// Runs started since `since`, by UTC day (days since the epoch), oldest first: for the
    /// status page's chart of deletions and failures over time.
    fn by_day(&self, since: Timestamp) -> anyhow::Result<Vec<DayTotals>>;

    /// The most recent `limit` runs (of `repository`, or all), newest first.
    fn recent(&self, repository: Option<&str>, limit: usize) -> anyhow::Result<Vec<RunRecord>>;

    /// The status of run `id` (`deleting` while open), for tests and reports.
    fn status(&self, id: i64) -> anyhow::Result<Option<String>>;
}

/// The runs, wherever they live; cheap to clone.
#[derive(Clone, Debug)]
pub struct RunLog(Arc<dyn RunStore>);

impl std::ops::Deref for RunLog {
    type Target = dyn RunStore;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl RunLog {
    pub(super) fn new(store: Arc<dyn RunStore>) -> Self {
        RunLog(store)
    }
}

/// One UTC day's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayTotals {
    /// Days since 1970-01-01.
    pub day: i64,
    pub runs: u64,
    pub tags_deleted: u64,
    pub failed_runs: u64,
}

/// The runs in the local SQLite file.
#[derive(Clone, Debug)]
pub(super) struct SqliteRuns {
    pub(super) store: Store,
}

impl RunStore for SqliteRuns {
    fn begin(&self, run: &NewRun<'_>) -> anyhow::Result<i64> {
        let conn = self.store.lock();
        conn.execute(
            "INSERT INTO runs (registry, repository, policy, decided_by, owner, started_at, status,
                               tags_seen, tags_to_delete, digests_planned, tags_planned)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'deleting', ?7, 0, 0, 0)",
            params![
                run.registry,
                run.repository,
                run.policy,
                run.decided_by,
                run.owner,
                Timestamp::now().unix_micros(),
                run.tags_seen as i64,
            ],
        )
        .map_err(|e| anyhow::anyhow!("recording the run of {} in {}: {e}", run.repository, self.store.describe()))?;
        Ok(conn.last_insert_rowid())
    }

    fn set_plan(&self, id: i64, plan: RunPlan) -> anyhow::Result<()> {
        self.store
            .lock()
            .execute(
                "UPDATE runs SET tags_to_delete = ?2, digests_planned = ?3, tags_planned = ?4 WHERE id = ?1",
                params![id, plan.tags_to_delete as i64, plan.digests_planned as i64, plan.tags_planned as i64],
            )
            .map_err(|e| anyhow::anyhow!("recording the plan of run {id} in {}: {e}", self.store.describe()))?;
        Ok(())
    }

    fn finish(&self, id: i64, s: &RunSummary<'_>) -> anyhow::Result<()> {
        self.store
            .lock()
            .execute(
                "UPDATE runs SET finished_at = ?2, status = ?3, tags_deleted = ?4, manifests_deleted = ?5, failed = ?6, detail = ?7
                 WHERE id = ?1",
                params![
                    id,
                    Timestamp::now().unix_micros(),
                    s.status,
                    s.tags_deleted as i64,
                    s.manifests_deleted as i64,
                    s.failed as i64,
                    s.detail
                ],
            )
            .map_err(|e| anyhow::anyhow!("closing run {id} in {}: {e}", self.store.describe()))?;
        Ok(())
    }

    fn close_interrupted(&self, id: i64, detail: &str) -> anyhow::Result<()> {
        self.store
            .lock()
            .execute(
                "UPDATE runs SET finished_at = ?2, status = 'interrupted', detail = ?3 WHERE id = ?1 AND finished_at IS NULL",
                params![id, Timestamp::now().unix_micros(), detail],
            )
            .map_err(|e| anyhow::anyhow!("closing run {id} in {}: {e}", self.store.describe()))?;
        Ok(())
    }

    fn open(&self, registry: &str, repository: &str) -> anyhow::Result<Vec<OpenRun>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, owner, started_at FROM runs WHERE finished_at IS NULL AND registry = ?1 AND repository = ?2 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![registry, repository], |r| {
            Ok(OpenRun { id: r.get(0)?, owner: r.get(1)?, started_at: Timestamp::from_unix_micros(r.get(2)?) })
        })?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading open runs in {}: {e}", self.store.describe()))
    }

    fn repositories_with_open_runs(&self, registry: &str) -> anyhow::Result<Vec<String>> {
        let conn = self.store.lock();
        let mut stmt =
            conn.prepare_cached("SELECT DISTINCT repository FROM runs WHERE finished_at IS NULL AND registry = ?1 ORDER BY repository")?;
        let rows = stmt.query_map(params![registry], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading open runs in {}: {e}", self.store.describe()))
    }

    fn since(&self, since: Timestamp) -> anyhow::Result<RunTotals> {
        let conn = self.store.lock();
        Ok(conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(tags_deleted), 0), COUNT(*) FILTER (WHERE status = 'failed') FROM runs WHERE started_at >= ?1",
            params![since.unix_micros()],
            |r| {
                Ok(RunTotals {
                    runs: r.get::<_, i64>(0)? as u64,
                    tags_deleted: r.get::<_, i64>(1)? as u64,
                    failed_runs: r.get::<_, i64>(2)? as u64,
                })
            },
        )?)
    }

    fn by_day(&self, since: Timestamp) -> anyhow::Result<Vec<DayTotals>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT started_at / 86400000000 AS day, COUNT(*), COALESCE(SUM(tags_deleted), 0), COUNT(*) FILTER (WHERE status = 'failed')
             FROM runs WHERE started_at >= ?1 GROUP BY day ORDER BY day",
        )?;
        let rows = stmt.query_map(params![since.unix_micros()], |r| {
            Ok(DayTotals {
                day: r.get(0)?,
                runs: r.get::<_, i64>(1)? as u64,
                tags_deleted: r.get::<_, i64>(2)? as u64,
                failed_runs: r.get::<_, i64>(3)? as u64,
            })
        })?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading runs in {}: {e}", self.store.describe()))
    }

    fn recent(&self, repository: Option<&str>, limit: usize) -> anyhow::Result<Vec<RunRecord>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, repository, policy, decided_by, started_at, finished_at, status, tags_seen, tags_to_delete, tags_deleted, failed, detail
             FROM runs WHERE ?1 IS NULL OR repository = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let count = |v: Option<i64>| v.map(|n| n.max(0) as u64);
        let rows = stmt.query_map(params![repository, limit as i64], |r| {
            Ok(RunRecord {
                id: r.get(0)?,
                repository: r.get(1)?,
                policy: r.get(2)?,
                decided_by: r.get(3)?,
                started_at: Timestamp::from_unix_micros(r.get(4)?),
                finished_at: r.get::<_, Option<i64>>(5)?.map(Timestamp::from_unix_micros),
                status: r.get(6)?,
                tags_seen: r.get::<_, i64>(7)?.max(0) as u64,
                tags_to_delete: r.get::<_, i64>(8)?.max(0) as u64,
                tags_deleted: count(r.get(9)?),
                failed: count(r.get(10)?),
                detail: r.get(11)?,
            })
        })?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading runs in {}: {e}", self.store.describe()))
    }

    fn status(&self, id: i64) -> anyhow::Result<Option<String>> {
        use rusqlite::OptionalExtension;
        Ok(self.store.lock().query_row("SELECT status FROM runs WHERE id = ?1", params![id], |r| r.get(0)).optional()?)
    }
}

// Tested for SQLite and PostgreSQL alike by tests/integration/shared_log.rs.
