//! The audit log on PostgreSQL: the same rows and rules as SQLite's (`store/audit.rs`), shared
//! by every host, so a deletion is in one log whichever host made it and any host's next pass
//! over the repository settles what a dead host left `attempted`.

use anyhow::Context;
use tokio_postgres::Row;

use super::{PgStateStore, client};
use crate::model::Timestamp;
use crate::store::audit::{AuditEntry, AuditOutcome, AuditQuery, AuditRecord, AuditRow, AuditStore, KeptManifest, OpenAttempt, split_tags};

const RECORD_COLUMNS: &str = "id, at, registry, repository, operation, digest, tags, decided_by, outcome, detail, run_id";

fn record(r: &Row) -> AuditRecord {
    AuditRecord {
        id: r.get(0),
        at: Timestamp::from_unix_micros(r.get(1)),
        registry: r.get(2),
        repository: r.get(3),
        operation: r.get(4),
        digest: r.get(5),
        tags: split_tags(r.get(6)),
        decided_by: r.get(7),
        outcome: r.get(8),
        detail: r.get(9),
        run_id: r.get(10),
    }
}

impl AuditStore for PgStateStore {
    fn insert(&self, rows: &[AuditRow<'_>]) -> anyhow::Result<Vec<i64>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the whole batch (a round trip per row would be most of a large
        // pass's time). Ids are taken from the sequence first, so they come back in the order
        // of `rows` whatever order the server inserts them in.
        let at = Timestamp::now().unix_micros();
        let mut columns = AuditColumns::default();
        for (e, outcome, detail) in rows {
            columns.registry.push(e.registry.to_owned());
            columns.repository.push(e.repository.to_owned());
            columns.operation.push(e.operation.as_str().to_owned());
            columns.digest.push(e.digest.to_owned());
            columns.tags.push(e.tags.join(","));
            columns.decided_by.push(e.decided_by.to_owned());
            columns.outcome.push(outcome.map_or("attempted", AuditOutcome::as_str).to_owned());
            columns.detail.push(detail.map(str::to_owned));
            columns.run_id.push(e.run_id);
        }
        let n = rows.len() as i64;
        let what = format!("writing {} audit rows in {}", rows.len(), self.describe());
        self.run(move |pool| async move {
            let mut client = client(&pool).await?;
            let tx = client.transaction().await?;
            let ids: Vec<i64> = tx
                .query("SELECT nextval(pg_get_serial_sequence('audit_log', 'id')) FROM generate_series(1, $1::bigint)", &[&n])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let c = &columns;
            tx.execute(
                "INSERT INTO audit_log (id, at, registry, repository, operation, digest, tags, decided_by, outcome, detail, run_id)
                 SELECT id, $2, registry, repository, operation, digest, tags, decided_by, outcome, detail, run_id
                 FROM unnest($1::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                             $10::text[], $11::bigint[])
                   AS u(id, registry, repository, operation, digest, tags, decided_by, outcome, detail, run_id)",
                &[&ids, &at, &c.registry, &c.repository, &c.operation, &c.digest, &c.tags, &c.decided_by, &c.outcome, &c.detail, &c.run_id],
            )
            .await?;
            tx.commit().await?;
            Ok(ids)
        })
        .context(what)
    }

    fn finish_all(&self, outcomes: &[(i64, AuditOutcome, Option<String>)]) -> anyhow::Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = outcomes.iter().map(|o| o.0).collect();
        let kinds: Vec<&'static str> = outcomes.iter().map(|o| o.1.as_str()).collect();
        let details: Vec<Option<String>> = outcomes.iter().map(|o| o.2.clone()).collect();
        let what = format!("writing the outcomes of {} audit rows (from row {}) in {}", outcomes.len(), ids[0], self.describe());
        self.run(move |pool| async move {
            client(&pool)
                .await?
                .execute(
                    "UPDATE audit_log a SET outcome = u.outcome, detail = u.detail
                     FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, outcome, detail) WHERE a.id = u.id",
                    &[&ids, &kinds, &details],
                )
                .await?;
            Ok(())
        })
        .context(what)
    }

    fn leave_open(&self, id: i64, detail: &str) -> anyhow::Result<()> {
        let detail = detail.to_owned();
        self.run(move |pool| async move {
            client(&pool)
                .await?
                .execute("UPDATE audit_log SET detail = $2 WHERE id = $1 AND outcome = 'attempted'", &[&id, &detail])
                .await?;
            Ok(())
        })
        .with_context(|| format!("writing the outcome of audit row {id} in {}", self.describe()))
    }

    fn resolve(&self, id: i64, outcome: AuditOutcome, detail: &str) -> anyhow::Result<bool> {
        let (outcome, detail) = (outcome.as_str(), detail.to_owned());
        self.run(move |pool| async move {
            let changed = client(&pool)
                .await?
                .execute(
                    "UPDATE audit_log SET outcome = $2, detail = $3 WHERE id = $1 AND outcome = 'attempted'",
                    &[&id, &outcome, &detail],
                )
                .await?;
            Ok(changed == 1)
        })
        .with_context(|| format!("writing the outcome of audit row {id} in {}", self.describe()))
    }

    fn open_attempts(&self, registry: &str, repository: &str) -> anyhow::Result<Vec<OpenAttempt>> {
        let (registry, repository) = (registry.to_owned(), repository.to_owned());
        self.run(move |pool| async move {
            let rows = client(&pool)
                .await?
                .query(
                    "SELECT a.id, a.operation, a.digest, a.tags, a.run_id, r.owner, r.finished_at IS NOT NULL
                     FROM audit_log a LEFT JOIN runs r ON r.id = a.run_id
                     WHERE a.outcome = 'attempted' AND a.registry = $1 AND a.repository = $2 ORDER BY a.id",
                    &[&registry, &repository],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| OpenAttempt {
                    id: r.get(0),
                    operation: r.get(1),
                    digest: r.get(2),
                    tags: split_tags(r.get(3)),
                    run_id: r.get(4),
                    run_owner: r.get(5),
                    run_finished: r.get::<_, Option<bool>>(6).unwrap_or(false),
                })
                .collect())
        })
        .with_context(|| format!("reading open audit rows in {}", self.describe()))
    }

    fn repositories_with_open_attempts(&self, registry: &str) -> anyhow::Result<Vec<String>> {
        let registry = registry.to_owned();
        self.run(move |pool| async move {
            let rows = client(&pool)
                .await?
                .query(
                    "SELECT DISTINCT repository FROM audit_log WHERE outcome = 'attempted' AND registry = $1 ORDER BY repository",
                    &[&registry],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .with_context(|| format!("reading open audit rows in {}", self.describe()))
    }

    fn search(&self, q: &AuditQuery<'_>) -> anyhow::Result<Vec<AuditRecord>> {
        let repository = q.repository.map(str::to_owned);
        let tag = q.tag.map(str::to_owned);
        let digest = q.digest.map(str::to_owned);
        let (since, until) = (q.since.map(Timestamp::unix_micros), q.until.map(Timestamp::unix_micros));
        let (before_id, limit) = (q.before_id, i64::try_from(q.limit).unwrap_or(i64::MAX));
        self.run(move |pool| async move {
            // Tags are stored comma-separated: a tag matches when `,tag,` is in `,tags,`
            // (strpos, not LIKE: `_` is a wildcard there and common in tags).
            let rows = client(&pool)
                .await?
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM audit_log
                         WHERE ($1::text IS NULL OR repository = $1) AND ($3::bigint IS NULL OR at >= $3)
                           AND ($4::bigint IS NULL OR at < $4)
                           AND ($5::text IS NULL OR strpos(',' || tags || ',', ',' || $5 || ',') > 0)
                           AND ($6::text IS NULL OR digest = $6) AND ($7::bigint IS NULL OR id < $7)
                         ORDER BY id DESC LIMIT $2"
                    ),
                    &[&repository, &limit, &since, &until, &tag, &digest, &before_id],
                )
                .await?;
            Ok(rows.iter().map(record).collect())
        })
        .with_context(|| format!("reading the audit log in {}", self.describe()))
    }

    fn last_deletion(&self, repository: &str, tag: &str) -> anyhow::Result<Option<AuditRecord>> {
        let (repository, tag) = (repository.to_owned(), tag.to_owned());
        self.run(move |pool| async move {
            let row = client(&pool)
                .await?
                .query_opt(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM audit_log
                         WHERE repository = $1 AND strpos(',' || tags || ',', ',' || $2 || ',') > 0
                           AND outcome IN ('deleted', 'already_gone') AND operation <> 'restore_tag'
                         ORDER BY id DESC LIMIT 1"
                    ),
                    &[&repository, &tag],
                )
                .await?;
            Ok(row.as_ref().map(record))
        })
        .with_context(|| format!("reading the audit log in {}", self.describe()))
    }

    fn restore_attempt(&self, e: &AuditEntry<'_>) -> anyhow::Result<i64> {
        let values = (e.registry.to_owned(), e.repository.to_owned(), e.digest.to_owned(), e.tags.join(","), e.decided_by.to_owned());
        let at = Timestamp::now().unix_micros();
        self.run(move |pool| async move {
            let (registry, repository, digest, tags, decided_by) = values;
            let row = client(&pool)
                .await?
                .query_one(
                    "INSERT INTO audit_log (at, registry, repository, operation, digest, tags, decided_by, outcome, run_id)
                     VALUES ($1, $2, $3, 'restore_tag', $4, $5, $6, 'restoring', NULL) RETURNING id",
                    &[&at, &registry, &repository, &digest, &tags, &decided_by],
                )
                .await?;
            Ok(row.get(0))
        })
        .with_context(|| format!("writing the audit log in {}", self.describe()))
    }

    fn keep_manifest(&self, m: &KeptManifest) -> anyhow::Result<()> {
        let m = m.clone();
        let what = format!("keeping manifest {} in {}", m.digest, self.describe());
        let at = Timestamp::now().unix_micros();
        self.run(move |pool| async move {
            client(&pool)
                .await?
                .execute(
                    "INSERT INTO deleted_manifests (digest, media_type, body, kept_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (digest) DO NOTHING",
                    &[&m.digest, &m.media_type, &m.body, &at],
                )
                .await?;
            Ok(())
        })
        .context(what)
    }

    fn has_kept_manifest(&self, digest: &str) -> anyhow::Result<bool> {
        let digest = digest.to_owned();
        self.run(move |pool| async move {
            let row = client(&pool).await?.query_opt("SELECT 1 FROM deleted_manifests WHERE digest = $1", &[&digest]).await?;
            Ok(row.is_some())
        })
        .with_context(|| format!("reading kept manifests in {}", self.describe()))
    }

    fn kept_manifest(&self, digest: &str) -> anyhow::Result<Option<KeptManifest>> {
        let digest = digest.to_owned();
        self.run(move |pool| async move {
            let row =
                client(&pool).await?.query_opt("SELECT media_type, body FROM deleted_manifests WHERE digest = $1", &[&digest]).await?;
            Ok(row.map(|r| KeptManifest { digest, media_type: r.get(0), body: r.get(1) }))
        })
        .with_context(|| format!("reading kept manifests in {}", self.describe()))
    }
}

/// A batch of audit rows, column by column: what `unnest` takes.
#[derive(Default)]
struct AuditColumns {
    registry: Vec<String>,
    repository: Vec<String>,
    operation: Vec<String>,
    digest: Vec<String>,
    tags: Vec<String>,
    decided_by: Vec<String>,
    outcome: Vec<String>,
    detail: Vec<Option<String>>,
    run_id: Vec<Option<i64>>,
}
