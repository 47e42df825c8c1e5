//! The audit log: every deletion tagwarden attempts, written before the request
//! (`attempted`) and updated after it (`deleted`, `already_gone`, `failed`). A crash
//! between the two, or an answer that does not say what happened (a timeout), leaves an
//! `attempted` row, so nothing is ever deleted unrecorded; the next pass over the
//! repository checks the registry and resolves it (`deleted`, or `not_deleted`).

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
}

impl AuditOperation {
    fn as_str(self) -> &'static str {
        match self {
            AuditOperation::DeleteManifest => "delete_manifest",
            AuditOperation::DeleteTag => "delete_tag",
            AuditOperation::UntagViaDummy => "untag_via_dummy",
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
}

impl AuditOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Deleted => "deleted",
            AuditOutcome::AlreadyGone => "already_gone",
            AuditOutcome::Failed => "failed",
            AuditOutcome::NotDeleted => "not_deleted",
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
    /// The policy and plugin that decided it, e.g. `apps (gitlab-retention 0.1.0 sha256:…)`.
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

/// The audit table.
#[derive(Clone, Debug)]
pub struct AuditLog {
    store: Store,
}

impl AuditLog {
    pub(super) fn new(store: Store) -> Self {
        AuditLog { store }
    }

    /// Records an attempt before it is made; returns its id for [`AuditLog::finish`].
    pub fn attempt(&self, e: &AuditEntry<'_>) -> anyhow::Result<i64> {
        let conn = self.store.lock();
        conn.prepare_cached(
            "INSERT INTO audit_log (at, registry, repository, operation, digest, tags, decided_by, outcome, run_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'attempted', ?8)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                Timestamp::now().unix_micros(),
                e.registry,
                e.repository,
                e.operation.as_str(),
                e.digest,
                e.tags.join(","),
                e.decided_by,
                e.run_id
            ])
        })
        .map_err(|err| anyhow::anyhow!("writing the audit log in {}: {err}", self.store.describe()))?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how attempt `id` ended.
    pub fn finish(&self, id: i64, outcome: AuditOutcome, detail: Option<&str>) -> anyhow::Result<()> {
        self.store
            .lock()
            .prepare_cached("UPDATE audit_log SET outcome = ?2, detail = ?3 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(params![id, outcome.as_str(), detail]))
            .map_err(|err| self.write_error(id, err))?;
        Ok(())
    }

    /// Leaves attempt `id` open (`attempted`: its outcome is unknown) with a note saying why;
    /// the next pass over the repository checks the registry and resolves it.
    pub fn leave_open(&self, id: i64, detail: &str) -> anyhow::Result<()> {
        self.store
            .lock()
            .execute("UPDATE audit_log SET detail = ?2 WHERE id = ?1 AND outcome = 'attempted'", params![id, detail])
            .map_err(|err| self.write_error(id, err))?;
        Ok(())
    }

    /// Resolves attempt `id` if it is still open; `false` when its owner finished it first
    /// (whose answer, having seen the registry's reply, is the better one).
    pub fn resolve(&self, id: i64, outcome: AuditOutcome, detail: &str) -> anyhow::Result<bool> {
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

    /// Every open attempt on `repository` of `registry`, oldest first, with its run's owner.
    pub fn open_attempts(&self, registry: &str, repository: &str) -> anyhow::Result<Vec<OpenAttempt>> {
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

    /// Repositories of `registry` with open attempts, sorted.
    pub fn repositories_with_open_attempts(&self, registry: &str) -> anyhow::Result<Vec<String>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT repository FROM audit_log WHERE outcome = 'attempted' AND registry = ?1 ORDER BY repository",
        )?;
        let rows = stmt.query_map(params![registry], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading open audit rows in {}: {e}", self.store.describe()))
    }

    fn write_error(&self, id: i64, err: rusqlite::Error) -> anyhow::Error {
        anyhow::anyhow!("writing the outcome of audit row {id} in {}: {err}", self.store.describe())
    }

    /// The most recent `limit` rows for `repository` (all repositories when `None`), newest first.
    pub fn recent(&self, repository: Option<&str>, limit: usize) -> anyhow::Result<Vec<AuditRecord>> {
        self.recent_since(repository, None, limit)
    }

    /// [`AuditLog::recent`], only rows written at or after `since`.
    pub fn recent_since(&self, repository: Option<&str>, since: Option<Timestamp>, limit: usize) -> anyhow::Result<Vec<AuditRecord>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare(
            "SELECT id, at, registry, repository, operation, digest, tags, decided_by, outcome, detail, run_id FROM audit_log
             WHERE (?1 IS NULL OR repository = ?1) AND (?3 IS NULL OR at >= ?3) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![repository, limit as i64, since.map(Timestamp::unix_micros)], |r| {
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
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The `tags` column: comma-separated (tag names cannot contain commas).
fn split_tags(tags: &str) -> Vec<String> {
    if tags.is_empty() { vec![] } else { tags.split(',').map(str::to_owned).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_recorded_before_and_finished_after() {
        let log = Store::in_memory().unwrap().audit_log();
        let tags = vec!["a".to_owned(), "b".to_owned()];
        let entry = AuditEntry {
            registry: "http://r",
            repository: "g/app",
            operation: AuditOperation::DeleteManifest,
            digest: "sha256:x",
            tags: &tags,
            decided_by: "p",
            run_id: None,
        };
        let id = log.attempt(&entry).unwrap();
        assert_eq!(log.recent(Some("g/app"), 10).unwrap()[0].outcome, "attempted");
        log.finish(id, AuditOutcome::Failed, Some("405 UNSUPPORTED")).unwrap();
        let rows = log.recent(None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].outcome.as_str(), rows[0].detail.as_deref()), ("failed", Some("405 UNSUPPORTED")));
        assert_eq!(rows[0].tags, tags);
        assert!(log.recent(Some("other"), 10).unwrap().is_empty());
    }

    #[test]
    fn open_attempts_are_listed_with_their_run_and_resolved_only_once() {
        let store = Store::in_memory().unwrap();
        let log = store.audit_log();
        let run = store
            .runs()
            .begin(&crate::store::NewRun {
                registry: "http://r",
                repository: "g/app",
                policy: "p",
                decided_by: "p (x 1)",
                owner: "host:boot:1:2",
                tags_seen: 3,
            })
            .unwrap();
        let tags = vec!["a".to_owned()];
        let entry = |digest| AuditEntry {
            registry: "http://r",
            repository: "g/app",
            operation: AuditOperation::DeleteManifest,
            digest,
            tags: &tags,
            decided_by: "p",
            run_id: Some(run),
        };
        let first = log.attempt(&entry("sha256:1")).unwrap();
        let second = log.attempt(&entry("sha256:2")).unwrap();
        log.finish(second, AuditOutcome::Deleted, None).unwrap();
        let open = log.open_attempts("http://r", "g/app").unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].id, open[0].run_id, open[0].run_owner.as_deref(), open[0].run_finished),
            (first, Some(run), Some("host:boot:1:2"), false)
        );
        assert_eq!(log.repositories_with_open_attempts("http://r").unwrap(), ["g/app"]);
        assert!(log.open_attempts("http://other", "g/app").unwrap().is_empty());
        log.leave_open(first, "timed out; checked next pass").unwrap();
        assert_eq!(log.open_attempts("http://r", "g/app").unwrap().len(), 1, "leave_open keeps it open");
        assert!(log.resolve(first, AuditOutcome::NotDeleted, "still there").unwrap());
        assert!(!log.resolve(first, AuditOutcome::Deleted, "late").unwrap(), "a resolved row is not resolved again");
        assert!(!log.resolve(second, AuditOutcome::NotDeleted, "x").unwrap(), "a finished row is left alone");
        let rows = log.recent(None, 10).unwrap();
        assert_eq!(rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(), ["deleted", "not_deleted"]);
        assert!(log.open_attempts("http://r", "g/app").unwrap().is_empty());
    }
}
