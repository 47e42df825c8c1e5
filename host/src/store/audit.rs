//! The audit log: every deletion tagwarden attempts, written before the request
//! (`attempted`) and updated after it (`deleted`, `already_gone`, `failed`). A crash
//! between the two, or an answer that does not say what happened (a timeout), leaves an
//! `attempted` row, so nothing is ever deleted unrecorded; the next pass over the
//! repository checks the registry and resolves it (`deleted`, or `not_deleted`).
//!
//! Before a manifest is deleted, the bytes and media type the registry served for it are
//! kept here too (`deleted_manifests`, by digest, up to a configured size), so that an
//! operator can push it back (`tagwarden restore`); a restore is a row of its own
//! (`restore_tag`: `restoring`, then `restored` or `failed`), which reconciliation never
//! looks at: it only settles `attempted` rows.

use std::sync::Arc;

use rusqlite::params;

use super::Store;
use crate::model::Timestamp;

/// What was deleted and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOperation {
    /// `DELETE /v2/<repo>/manifests/<digest>`: the manifest and every tag on it.
    DeleteManifest,
    /// OCI 1.1 tag delete: one tag, the manifest stays.
    DeleteTag,
    /// GitLab's fallback: the tag moved onto a dummy manifest, which is then deleted.
    UntagViaDummy,
    /// An operator's restore: a deleted manifest pushed back under a tag.
    RestoreTag,
}

impl AuditOperation {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AuditOperation::DeleteManifest => "delete_manifest",
            AuditOperation::DeleteTag => "delete_tag",
            AuditOperation::UntagViaDummy => "untag_via_dummy",
            AuditOperation::RestoreTag => "restore_tag",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    Deleted,
    AlreadyGone,
    Failed,
    /// Found undone when an interrupted or ambiguous attempt was checked afterwards: the
    /// registry still has it, and the current policy decides about it again.
    NotDeleted,
    /// A restore pushed the manifest back.
    Restored,
}

impl AuditOutcome {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Deleted => "deleted",
            AuditOutcome::AlreadyGone => "already_gone",
            AuditOutcome::Failed => "failed",
            AuditOutcome::NotDeleted => "not_deleted",
            AuditOutcome::Restored => "restored",
        }
    }
}

/// One deletion about to be attempted.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    pub operation: AuditOperation,
    pub digest: &'a str,
    /// The tags this operation removes (comma-separated in the table).
    pub tags: &'a [String],
    /// The policy and plugin that decided it, e.g. `policy apps (plugin gitlab-retention 0.1.0 sha256:<64 hex>)`.
    pub decided_by: &'a str,
    /// The run (see [`super::RunLog`]) this attempt belongs to.
    pub run_id: Option<i64>,
}

/// An attempt whose outcome is not known yet (`attempted`), with what reconciliation needs
/// to decide whether it may be resolved now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAttempt {
    pub id: i64,
    pub operation: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub run_id: Option<i64>,
    /// The owner of the attempt's run (see `crate::owner`), `None` without a run.
    pub run_owner: Option<String>,
    /// Whether that run has been closed.
    pub run_finished: bool,
}

/// A row of the audit log, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: Timestamp,
    pub registry: String,
    pub repository: String,
    pub operation: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub decided_by: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub run_id: Option<i64>,
}

/// A manifest as the registry served it before tagwarden deleted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptManifest {
    pub digest: String,
    pub media_type: String,
    pub body: Vec<u8>,
}

/// What [`AuditLog::search`] looks for; every field narrows it, `None` does not.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery<'a> {
    pub repository: Option<&'a str>,
    /// A tag among the row's tags (exact).
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
    /// Rows written at or after this time.
    pub since: Option<Timestamp>,
    /// Rows written before this time.
    pub until: Option<Timestamp>,
    /// Rows older than this id: the next page after a page ending at it.
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// An audit row about to be written: the entry, its outcome (`None`: `attempted`) and detail.
pub type AuditRow<'a> = (AuditEntry<'a>, Option<AuditOutcome>, Option<&'a str>);

/// Where the audit log lives: the local SQLite file, or the PostgreSQL database several hosts
/// share (`[state] url`), so that every host reads, and reconciles, one log. Reached through
/// [`AuditLog`].
pub trait AuditStore: Send + Sync + std::fmt::Debug {
    /// Inserts `rows` in one transaction (all or none); their ids in order.
    fn insert(&self, rows: &[AuditRow<'_>]) -> anyhow::Result<Vec<i64>>;

    /// Records how several attempts ended, in one transaction (all or none).
    fn finish_all(&self, outcomes: &[(i64, AuditOutcome, Option<String>)]) -> anyhow::Result<()>;

    /// Leaves attempt `id` open (`attempted`: its outcome is unknown) with a note saying why;
    /// the next pass over the repository checks the registry and resolves it.
    fn leave_open(&self, id: i64, detail: &str) -> anyhow::Result<()>;

    /// Resolves attempt `id` if it is still open; `false` when its owner finished it first
    /// (whose answer, having seen the registry's reply, is the better one).
    fn resolve(&self, id: i64, outcome: AuditOutcome, detail: &str) -> anyhow::Result<bool>;

    /// Every open attempt on `repository` of `registry`, oldest first, with its run's owner.
    fn open_attempts(&self, registry: &str, repository: &str) -> anyhow::Result<Vec<OpenAttempt>>;

    /// Repositories of `registry` with open attempts, sorted.
    fn repositories_with_open_attempts(&self, registry: &str) -> anyhow::Result<Vec<String>>;

    /// Rows matching `q`, newest first.
    fn search(&self, q: &AuditQuery<'_>) -> anyhow::Result<Vec<AuditRecord>>;

    /// The newest row that deleted `tag` from `repository` (`deleted` or `already_gone`, by
    /// any operation but a restore): what a restore of the tag starts from.
    fn last_deletion(&self, repository: &str, tag: &str) -> anyhow::Result<Option<AuditRecord>>;

    /// Records a restore about to be pushed (`restoring`; [`AuditLog::finish`] completes it).
    /// Not `attempted`: reconciliation settles deletions only.
    fn restore_attempt(&self, e: &AuditEntry<'_>) -> anyhow::Result<i64>;

    /// Keeps a manifest about to be deleted, for a later restore. The same digest kept
    /// before is left as it is (the bytes are the digest's).
    fn keep_manifest(&self, m: &KeptManifest) -> anyhow::Result<()>;

    /// Whether manifest `digest` is kept already (no need to read it again).
    fn has_kept_manifest(&self, digest: &str) -> anyhow::Result<bool>;

    /// The kept manifest `digest`, if any.
    fn kept_manifest(&self, digest: &str) -> anyhow::Result<Option<KeptManifest>>;
}

/// The audit log, wherever it lives; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog(Arc<dyn AuditStore>);

impl std::ops::Deref for AuditLog {
    type Target = dyn AuditStore;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl AuditLog {
    pub(super) fn new(store: Arc<dyn AuditStore>) -> Self {
        AuditLog(store)
    }

    /// Records an attempt before it is made; returns its id for [`AuditLog::finish`].
    pub fn attempt(&self, e: &AuditEntry<'_>) -> anyhow::Result<i64> {
        let ids = self.attempt_all(std::slice::from_ref(e))?;
        Ok(ids[0])
    }

    /// Records several attempts, before any of them is made, in one transaction (all or
    /// none); returns their ids in order. One commit for a batch of deletions instead of one
    /// each: a pass over recordings deletes ~100,000 manifests a second, and a commit per row
    /// was most of its time (docs/benchmarks.md, "What-if at scale").
    pub fn attempt_all(&self, entries: &[AuditEntry<'_>]) -> anyhow::Result<Vec<i64>> {
        let rows: Vec<_> = entries.iter().map(|e| (e.clone(), None, None)).collect();
        self.0.insert(&rows)
    }

    /// Records several deletions already carried out, each with its outcome (`None`: not
    /// known, the row stays `attempted` for the next pass), in one transaction. Only for a
    /// backend whose deletions end with the process (recordings): with nothing outliving a
    /// crash there is nothing to record beforehand, and one insert per row, a commit per
    /// thousands, is what keeps a what-if pass over millions of tags fast.
    pub fn record_all(&self, rows: &[AuditRow<'_>]) -> anyhow::Result<()> {
        self.0.insert(rows).map(drop)
    }

    /// Records how attempt `id` ended.
    pub fn finish(&self, id: i64, outcome: AuditOutcome, detail: Option<&str>) -> anyhow::Result<()> {
        self.0.finish_all(&[(id, outcome, detail.map(str::to_owned))])
    }

    /// The most recent `limit` rows for `repository` (all repositories when `None`), newest first.
    pub fn recent(&self, repository: Option<&str>, limit: usize) -> anyhow::Result<Vec<AuditRecord>> {
        self.recent_since(repository, None, limit)
    }

    /// [`AuditLog::recent`], only rows written at or after `since`.
    pub fn recent_since(&self, repository: Option<&str>, since: Option<Timestamp>, limit: usize) -> anyhow::Result<Vec<AuditRecord>> {
        self.0.search(&AuditQuery { repository, since, limit, ..AuditQuery::default() })
    }
}

/// The audit log in the local SQLite file.
#[derive(Clone, Debug)]
pub(super) struct SqliteAudit {
    pub(super) store: Store,
}

impl AuditStore for SqliteAudit {
    fn insert(&self, rows: &[AuditRow<'_>]) -> anyhow::Result<Vec<i64>> {
        let mut conn = self.store.lock();
        let write = |conn: &mut rusqlite::Connection| -> rusqlite::Result<Vec<i64>> {
            let tx = conn.transaction()?;
            let mut ids = Vec::with_capacity(rows.len());
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO audit_log (at, registry, repository, operation, digest, tags, decided_by, outcome, detail, run_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                let at = Timestamp::now().unix_micros();
                for (e, outcome, detail) in rows {
                    stmt.execute(params![
                        at,
                        e.registry,
                        e.repository,
                        e.operation.as_str(),
                        e.digest,
                        e.tags.join(","),
                        e.decided_by,
                        outcome.map_or("attempted", AuditOutcome::as_str),
                        detail,
                        e.run_id
                    ])?;
                    ids.push(tx.last_insert_rowid());
                }
            }
            tx.commit()?;
            Ok(ids)
        };
        write(&mut conn).map_err(|err| anyhow::anyhow!("writing {} audit rows in {}: {err}", rows.len(), self.store.describe()))
    }

    fn finish_all(&self, outcomes: &[(i64, AuditOutcome, Option<String>)]) -> anyhow::Result<()> {
        let mut conn = self.store.lock();
        let write = |conn: &mut rusqlite::Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached("UPDATE audit_log SET outcome = ?2, detail = ?3 WHERE id = ?1")?;
                for (id, outcome, detail) in outcomes {
                    stmt.execute(params![id, outcome.as_str(), detail])?;
                }
            }
            tx.commit()
        };
        write(&mut conn).map_err(|err| {
            let first = outcomes.first().map_or(0, |o| o.0);
            anyhow::anyhow!("writing the outcomes of {} audit rows (from row {first}) in {}: {err}", outcomes.len(), self.store.describe())
        })
    }

    fn leave_open(&self, id: i64, detail: &str) -> anyhow::Result<()> {
        self.store
            .lock()
            .execute("UPDATE audit_log SET detail = ?2 WHERE id = ?1 AND outcome = 'attempted'", params![id, detail])
            .map_err(|err| self.write_error(id, err))?;
        Ok(())
    }

    fn resolve(&self, id: i64, outcome: AuditOutcome, detail: &str) -> anyhow::Result<bool> {
        let changed = self
            .store
            .lock()
            .execute(
                "UPDATE audit_log SET outcome = ?2, detail = ?3 WHERE id = ?1 AND outcome = 'attempted'",
                params![id, outcome.as_str(), detail],
            )
            .map_err(|err| self.write_error(id, err))?;
        Ok(changed == 1)
    }

    fn open_attempts(&self, registry: &str, repository: &str) -> anyhow::Result<Vec<OpenAttempt>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT a.id, a.operation, a.digest, a.tags, a.run_id, r.owner, r.finished_at IS NOT NULL
             FROM audit_log a LEFT JOIN runs r ON r.id = a.run_id
             WHERE a.outcome = 'attempted' AND a.registry = ?1 AND a.repository = ?2 ORDER BY a.id",
        )?;
        let rows = stmt.query_map(params![registry, repository], |r| {
            let tags: String = r.get(3)?;
            Ok(OpenAttempt {
                id: r.get(0)?,
                operation: r.get(1)?,
                digest: r.get(2)?,
                tags: split_tags(&tags),
                run_id: r.get(4)?,
                run_owner: r.get(5)?,
                run_finished: r.get::<_, Option<bool>>(6)?.unwrap_or(false),
            })
        })?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading open audit rows in {}: {e}", self.store.describe()))
    }

    fn repositories_with_open_attempts(&self, registry: &str) -> anyhow::Result<Vec<String>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT repository FROM audit_log WHERE outcome = 'attempted' AND registry = ?1 ORDER BY repository",
        )?;
        let rows = stmt.query_map(params![registry], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading open audit rows in {}: {e}", self.store.describe()))
    }

    fn search(&self, q: &AuditQuery<'_>) -> anyhow::Result<Vec<AuditRecord>> {
        let conn = self.store.lock();
        // Tags are stored comma-separated: a tag matches when `,tag,` is in `,tags,`
        // (instr, not LIKE: `_` is a wildcard there and common in tags).
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, registry, repository, operation, digest, tags, decided_by, outcome, detail, run_id FROM audit_log
             WHERE (?1 IS NULL OR repository = ?1) AND (?3 IS NULL OR at >= ?3) AND (?4 IS NULL OR at < ?4)
               AND (?5 IS NULL OR instr(',' || tags || ',', ',' || ?5 || ',') > 0) AND (?6 IS NULL OR digest = ?6)
               AND (?7 IS NULL OR id < ?7)
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![
                q.repository,
                q.limit as i64,
                q.since.map(Timestamp::unix_micros),
                q.until.map(Timestamp::unix_micros),
                q.tag,
                q.digest,
                q.before_id
            ],
            record,
        )?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading the audit log in {}: {e}", self.store.describe()))
    }

    fn last_deletion(&self, repository: &str, tag: &str) -> anyhow::Result<Option<AuditRecord>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, registry, repository, operation, digest, tags, decided_by, outcome, detail, run_id FROM audit_log
             WHERE repository = ?1 AND instr(',' || tags || ',', ',' || ?2 || ',') > 0
               AND outcome IN ('deleted', 'already_gone') AND operation != 'restore_tag'
             ORDER BY id DESC LIMIT 1",
        )?;
        let mut rows = stmt.query_map(params![repository, tag], record)?;
        rows.next().transpose().map_err(|e| anyhow::anyhow!("reading the audit log in {}: {e}", self.store.describe()))
    }

    fn restore_attempt(&self, e: &AuditEntry<'_>) -> anyhow::Result<i64> {
        let conn = self.store.lock();
        conn.execute(
            "INSERT INTO audit_log (at, registry, repository, operation, digest, tags, decided_by, outcome, run_id)
             VALUES (?1, ?2, ?3, 'restore_tag', ?4, ?5, ?6, 'restoring', NULL)",
            params![Timestamp::now().unix_micros(), e.registry, e.repository, e.digest, e.tags.join(","), e.decided_by],
        )
        .map_err(|err| anyhow::anyhow!("writing the audit log in {}: {err}", self.store.describe()))?;
        Ok(conn.last_insert_rowid())
    }

    fn keep_manifest(&self, m: &KeptManifest) -> anyhow::Result<()> {
        self.store
            .lock()
            .execute(
                "INSERT OR IGNORE INTO deleted_manifests (digest, media_type, body, kept_at) VALUES (?1, ?2, ?3, ?4)",
                params![m.digest, m.media_type, m.body, Timestamp::now().unix_micros()],
            )
            .map_err(|err| anyhow::anyhow!("keeping manifest {} in {}: {err}", m.digest, self.store.describe()))?;
        Ok(())
    }

    fn has_kept_manifest(&self, digest: &str) -> anyhow::Result<bool> {
        let conn = self.store.lock();
        let n: i64 = conn.query_row("SELECT count(*) FROM deleted_manifests WHERE digest = ?1", params![digest], |r| r.get(0))?;
        Ok(n > 0)
    }

    fn kept_manifest(&self, digest: &str) -> anyhow::Result<Option<KeptManifest>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached("SELECT media_type, body FROM deleted_manifests WHERE digest = ?1")?;
        let mut rows =
            stmt.query_map(params![digest], |r| Ok(KeptManifest { digest: digest.to_owned(), media_type: r.get(0)?, body: r.get(1)? }))?;
        rows.next().transpose().map_err(|e| anyhow::anyhow!("reading kept manifests in {}: {e}", self.store.describe()))
    }
}

impl SqliteAudit {
    fn write_error(&self, id: i64, err: rusqlite::Error) -> anyhow::Error {
        anyhow::anyhow!("writing the outcome of audit row {id} in {}: {err}", self.store.describe())
    }
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let tags: String = r.get(6)?;
    Ok(AuditRecord {
        id: r.get(0)?,
        at: Timestamp::from_unix_micros(r.get(1)?),
        registry: r.get(2)?,
        repository: r.get(3)?,
        operation: r.get(4)?,
        digest: r.get(5)?,
        tags: split_tags(&tags),
        decided_by: r.get(7)?,
        outcome: r.get(8)?,
        detail: r.get(9)?,
        run_id: r.get(10)?,
    })
}

/// The `tags` column: comma-separated (tag names cannot contain commas).
pub(super) fn split_tags(tags: &str) -> Vec<String> {
    if tags.is_empty() { vec![] } else { tags.split(',').map(str::to_owned).collect() }
}

// Tested for SQLite and PostgreSQL alike by tests/integration/shared_log.rs.
