//! The runs on PostgreSQL: the same rows and rules as SQLite's (`store/runs.rs`), beside the
//! audit rows that point at them.

use anyhow::Context;

use super::{PgStateStore, client};
use crate::model::Timestamp;
use crate::store::runs::{DayTotals, NewRun, OpenRun, RunPlan, RunRecord, RunStore, RunSummary, RunTotals};

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl RunStore for PgStateStore {
    fn begin(&self, run: &NewRun<'_>) -> anyhow::Result<i64> {
        let values = (
            run.registry.to_owned(),
            run.repository.to_owned(),
            run.policy.to_owned(),
            run.decided_by.to_owned(),
            run.owner.to_owned(),
            run.tags_seen as i64,
        );
        let at = Timestamp::now().unix_micros();
        self.run(move |pool| async move {
            let (registry, repository, policy, decided_by, owner, tags_seen) = values;
            let row = client(&pool)
                .await?
                .query_one(
                    "INSERT INTO runs (registry, repository, policy, decided_by, owner, started_at, status,
                                       tags_seen, tags_to_delete, digests_planned, tags_planned)
                     VALUES ($1, $2, $3, $4, $5, $6, 'deleting', $7, 0, 0, 0) RETURNING id",
                    &[&registry, &repository, &policy, &decided_by, &owner, &at, &tags_seen],
                )
                .await?;
            Ok(row.get(0))
        })
        .with_context(|| format!("recording the run of {} in {}", run.repository, self.describe()))
    }

    fn set_plan(&self, id: i64, plan: RunPlan) -> anyhow::Result<()> {
        let counts = [plan.tags_to_delete as i64, plan.digests_planned as i64, plan.tags_planned as i64];
        self.run(move |pool| async move {
            client(&pool)
                .await?
                .execute(
                    "UPDATE runs SET tags_to_delete = $2, digests_planned = $3, tags_planned = $4 WHERE id = $1",
                    &[&id, &counts[0], &counts[1], &counts[2]],
                )
                .await?;
            Ok(())
        })
        .with_context(|| format!("recording the plan of run {id} in {}", self.describe()))
    }

    fn finish(&self, id: i64, s: &RunSummary<'_>) -> anyhow::Result<()> {
        let status = s.status.to_owned();
        let counts = [s.tags_deleted as i64, s.manifests_deleted as i64, s.failed as i64];
        let detail = s.detail.map(str::to_owned);
        let at = Timestamp::now().unix_micros();
        self.run(move |pool| async move {
            client(&pool)
                .await?
                .execute(
                    "UPDATE runs SET finished_at = $2, status = $3, tags_deleted = $4, manifests_deleted = $5, failed = $6, detail = $7
                     WHERE id = $1",
                    &[&id, &at, &status, &counts[0], &counts[1], &counts[2], &detail],
                )
                .await?;
            Ok(())
        })
        .with_context(|| format!("closing run {id} in {}", self.describe()))
    }

    fn close_interrupted(&self, id: i64, detail: &str) -> anyhow::Result<()> {
        let detail = detail.to_owned();
        let at = Timestamp::now().unix_micros();
        self.run(move |pool| async move {
            client(&pool)
                .await?
                .execute(
                    "UPDATE runs SET finished_at = $2, status = 'interrupted', detail = $3 WHERE id = $1 AND finished_at IS NULL",
                    &[&id, &at, &detail],
                )
                .await?;
            Ok(())
        })
        .with_context(|| format!("closing run {id} in {}", self.describe()))
    }

    fn open(&self, registry: &str, repository: &str) -> anyhow::Result<Vec<OpenRun>> {
        let (registry, repository) = (registry.to_owned(), repository.to_owned());
        self.run(move |pool| async move {
            let rows = client(&pool)
                .await?
                .query(
                    "SELECT id, owner, started_at FROM runs WHERE finished_at IS NULL AND registry = $1 AND repository = $2 ORDER BY id",
                    &[&registry, &repository],
                )
                .await?;
            Ok(rows.iter().map(|r| OpenRun { id: r.get(0), owner: r.get(1), started_at: Timestamp::from_unix_micros(r.get(2)) }).collect())
        })
        .with_context(|| format!("reading open runs in {}", self.describe()))
    }

    fn repositories_with_open_runs(&self, registry: &str) -> anyhow::Result<Vec<String>> {
        let registry = registry.to_owned();
        self.run(move |pool| async move {
            let rows = client(&pool)
                .await?
                .query("SELECT DISTINCT repository FROM runs WHERE finished_at IS NULL AND registry = $1 ORDER BY repository", &[&registry])
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .with_context(|| format!("reading open runs in {}", self.describe()))
    }

    fn since(&self, since: Timestamp) -> anyhow::Result<RunTotals> {
        let since = since.unix_micros();
        self.run(move |pool| async move {
            let r = client(&pool)
                .await?
                .query_one(
                    "SELECT COUNT(*), COALESCE(SUM(tags_deleted), 0)::bigint, COUNT(*) FILTER (WHERE status = 'failed')
                     FROM runs WHERE started_at >= $1",
                    &[&since],
                )
                .await?;
            Ok(RunTotals { runs: count(r.get(0)), tags_deleted: count(r.get(1)), failed_runs: count(r.get(2)) })
        })
        .with_context(|| format!("reading runs in {}", self.describe()))
    }

    fn by_day(&self, since: Timestamp) -> anyhow::Result<Vec<DayTotals>> {
        let since = since.unix_micros();
        self.run(move |pool| async move {
            let rows = client(&pool)
                .await?
                .query(
                    "SELECT started_at / 86400000000 AS day, COUNT(*), COALESCE(SUM(tags_deleted), 0)::bigint,
                            COUNT(*) FILTER (WHERE status = 'failed')
                     FROM runs WHERE started_at >= $1 GROUP BY day ORDER BY day",
                    &[&since],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| DayTotals { day: r.get(0), runs: count(r.get(1)), tags_deleted: count(r.get(2)), failed_runs: count(r.get(3)) })
                .collect())
        })
        .with_context(|| format!("reading runs in {}", self.describe()))
    }

    fn recent(&self, repository: Option<&str>, limit: usize) -> anyhow::Result<Vec<RunRecord>> {
        let repository = repository.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |pool| async move {
            let rows = client(&pool)
                .await?
                .query(
                    "SELECT id, repository, policy, decided_by, started_at, finished_at, status, tags_seen, tags_to_delete,
                            tags_deleted, failed, detail
                     FROM runs WHERE $1::text IS NULL OR repository = $1 ORDER BY id DESC LIMIT $2",
                    &[&repository, &limit],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| RunRecord {
                    id: r.get(0),
                    repository: r.get(1),
                    policy: r.get(2),
                    decided_by: r.get(3),
                    started_at: Timestamp::from_unix_micros(r.get(4)),
                    finished_at: r.get::<_, Option<i64>>(5).map(Timestamp::from_unix_micros),
                    status: r.get(6),
                    tags_seen: count(r.get(7)),
                    tags_to_delete: count(r.get(8)),
                    tags_deleted: r.get::<_, Option<i64>>(9).map(count),
                    failed: r.get::<_, Option<i64>>(10).map(count),
                    detail: r.get(11),
                })
                .collect())
        })
        .with_context(|| format!("reading runs in {}", self.describe()))
    }

    fn status(&self, id: i64) -> anyhow::Result<Option<String>> {
        self.run(move |pool| async move {
            let row = client(&pool).await?.query_opt("SELECT status FROM runs WHERE id = $1", &[&id]).await?;
            Ok(row.map(|r| r.get(0)))
        })
        .with_context(|| format!("reading runs in {}", self.describe()))
    }
}
