//! The audit log: every deletion tagwarden attempts, written before the request
//! (`attempted`) and updated after it (`deleted`, `already_gone`, `failed`). A crash
//! between the two leaves an `attempted` row, so nothing is ever deleted unrecorded.

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
}

impl AuditOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Deleted => "deleted",
            AuditOutcome::AlreadyGone => "already_gone",
            AuditOutcome::Failed => "failed",
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
        conn.execute(
            "INSERT INTO audit_log (at, registry, repository, operation, digest, tags, decided_by, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'attempted')",
            params![
                Timestamp::now().unix_micros(),
                e.registry,
                e.repository,
                e.operation.as_str(),
                e.digest,
                e.tags.join(","),
                e.decided_by
            ],
        )
        .map_err(|err| anyhow::anyhow!("writing the audit log in {}: {err}", self.store.describe()))?;
        Ok(conn.last_insert_rowid())
    }

    /// Records how attempt `id` ended.
    pub fn finish(&self, id: i64, outcome: AuditOutcome, detail: Option<&str>) -> anyhow::Result<()> {
        self.store
            .lock()
            .execute("UPDATE audit_log SET outcome = ?2, detail = ?3 WHERE id = ?1", params![id, outcome.as_str(), detail])
            .map_err(|err| anyhow::anyhow!("writing the audit log in {}: {err}", self.store.describe()))?;
        Ok(())
    }

    /// The most recent `limit` rows for `repository` (all repositories when `None`), newest first.
    pub fn recent(&self, repository: Option<&str>, limit: usize) -> anyhow::Result<Vec<AuditRecord>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare(
            "SELECT id, at, registry, repository, operation, digest, tags, decided_by, outcome, detail FROM audit_log
             WHERE ?1 IS NULL OR repository = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![repository, limit as i64], |r| {
            let tags: String = r.get(6)?;
            Ok(AuditRecord {
                id: r.get(0)?,
                at: Timestamp::from_unix_micros(r.get(1)?),
                registry: r.get(2)?,
                repository: r.get(3)?,
                operation: r.get(4)?,
                digest: r.get(5)?,
                tags: if tags.is_empty() { vec![] } else { tags.split(',').map(str::to_owned).collect() },
                decided_by: r.get(7)?,
                outcome: r.get(8)?,
                detail: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
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
}
