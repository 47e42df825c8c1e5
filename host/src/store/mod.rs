//! Owns every SQL statement: one SQLite database per tagwarden installation.
//!
//! [`Store`] opens (or creates) the database file, switches it to WAL mode and brings its schema up
//! to date; the tables are reached through typed handles:
//!
//! - [`MetadataCache`] (`manifest_metadata`): what a manifest digest's content says (media type, the
//!   image config's `created`, size, config digest). A digest names immutable content, so entries never
//!   go stale and are never expired.
//!
//! - [`AuditLog`] (`audit_log`, `deleted_manifests`): every deletion attempt, written before the
//!   request and completed after it; rows still `attempted` are what reconciliation resolves.
//!   Also the manifests deleted (bytes and media type, by digest) and the restores of tags.
//!
//! - [`RunLog`] (`runs`): one row per pass that reached a plan, opened before its first deletion
//!   request and closed after its last; its audit rows point at it.
//!
//! - [`StateStore`] (`policies`, `repositories`): the cleanup state the scheduler works from,
//!   and the atomic claim of the next repository.
//!
//! - [`ImportLog`] (`imports`, `import_events`): each repository's import to a GitLab-compatible
//!   registry, with §5's transition table enforced in [`ImportLog::apply`], and its history.
//!
//! - [`PluginTable`] (`plugins`, `plugin_canaries`): the daemon's plugin directory, what `plugins
//!   list` shows, and each canary's difference, what `plugins diff NAME` shows.
//!
//! With `[state] url`, the cleanup state, audit log, runs and metadata cache live in a
//! PostgreSQL database the hosts share instead ([`PgStateStore`], same tables and meaning);
//! the handles above are the same types either way, and `state migrate` copies one into the
//! other.
//!
//! Architecture invariant: no other module contains SQL or touches `rusqlite`.
//!
//! The connection sits behind a mutex held for one statement or transaction at a time. Lookups are
//! primary-key reads of microseconds, so async callers may call them directly; batch writes
//! ([`MetadataCache::put_many`]) run in one transaction and belong on `spawn_blocking`.

mod audit;
mod browse;
mod deletions;
mod imports;
mod metadata;
mod plugins;
mod postgres;
mod runs;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::Connection;

pub use audit::{
    AuditEntry, AuditLog, AuditOperation, AuditOutcome, AuditQuery, AuditRecord, AuditRow, AuditStore, KeptManifest, OpenAttempt,
};
pub use deletions::{DeletionOutcome, DeletionState, DeletionStatus};
pub use imports::{Change, Enqueued, ImportEvent, ImportHistory, ImportLog, ImportRecord, ImportState, TransitionRefused, transition};
pub use metadata::{ManifestMetadata, MetadataCache, MetadataStore};
pub use plugins::{CanaryOutcome, CanaryRecord, PluginRecord, PluginState, PluginTable};
pub use postgres::{MigrationReport, PgStateStore};
pub use runs::{DayTotals, NewRun, OpenRun, RunLog, RunPlan, RunRecord, RunStore, RunSummary, RunTotals};
pub use state::{Claim, CleanupOutcome, CleanupStatus, LastFailure, Lease, PolicyState, RepositoryState, StateStore, Work};

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many have run.
/// Append only: never edit an entry that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the manifest metadata cache. Timestamps are microseconds since the Unix epoch (UTC).
    "CREATE TABLE manifest_metadata (
        digest        TEXT PRIMARY KEY NOT NULL,
        media_type    TEXT NOT NULL,
        created_at    INTEGER,
        size_bytes    INTEGER,
        config_digest TEXT,
        cached_at     INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: the audit log of every deletion attempt (see audit.rs).
    "CREATE TABLE audit_log (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        registry    TEXT NOT NULL,
        repository  TEXT NOT NULL,
        operation   TEXT NOT NULL,
        digest      TEXT NOT NULL,
        tags        TEXT NOT NULL,
        decided_by  TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        detail      TEXT
    );
    CREATE INDEX audit_log_repository ON audit_log (repository, id);",
    // 3: the manifests an image index references (digests separated by spaces; NULL for
    // image manifests). Index entries cached before this have no children recorded, so
    // they are dropped and fetched again: the deletion planner relies on the children.
    "ALTER TABLE manifest_metadata ADD COLUMN children TEXT;
    DELETE FROM manifest_metadata WHERE media_type IN (
        'application/vnd.oci.image.index.v1+json',
        'application/vnd.docker.distribution.manifest.list.v2+json'
    );",
    // 4: runs (one row per pass that reached a plan: the pass-level intent, written before its
    // first deletion request and closed after its last) and the audit rows they own. Open rows
    // (`outcome = 'attempted'`) are what reconciliation looks for, so they have their own index.
    "CREATE TABLE runs (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        registry          TEXT NOT NULL,
        repository        TEXT NOT NULL,
        policy            TEXT NOT NULL,
        decided_by        TEXT NOT NULL,
        owner             TEXT NOT NULL,
        started_at        INTEGER NOT NULL,
        finished_at       INTEGER,
        status            TEXT NOT NULL,
        tags_seen         INTEGER NOT NULL,
        tags_to_delete    INTEGER NOT NULL,
        digests_planned   INTEGER NOT NULL,
        tags_planned      INTEGER NOT NULL,
        tags_deleted      INTEGER,
        manifests_deleted INTEGER,
        failed            INTEGER,
        detail            TEXT
    );
    CREATE INDEX runs_repository ON runs (registry, repository, id);
    CREATE INDEX runs_open ON runs (registry, repository) WHERE finished_at IS NULL;
    ALTER TABLE audit_log ADD COLUMN run_id INTEGER REFERENCES runs (id);
    CREATE INDEX audit_log_open ON audit_log (registry, repository) WHERE outcome = 'attempted';",
    // 5: the cleanup state (state.rs). Times are microseconds since the epoch. The claim
    // query probes (policy, status) in started_at order: that index makes it one seek.
    "CREATE TABLE policies (
        name         TEXT PRIMARY KEY NOT NULL,
        enabled      INTEGER NOT NULL,
        cadence_secs INTEGER NOT NULL,
        next_run_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE repositories (
        path                 TEXT PRIMARY KEY NOT NULL,
        policy               TEXT NOT NULL,
        status               TEXT NOT NULL,
        started_at           INTEGER,
        completed_at         INTEGER,
        next_attempt_at      INTEGER,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        last_failure_class   TEXT,
        last_failure_status  INTEGER,
        last_failure_reason  TEXT,
        last_deleted         INTEGER,
        lease_owner          TEXT,
        lease_expires_at     INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX repositories_claim ON repositories (policy, status, started_at);",
    // 6: repository deletions an operator asked for (deletions.rs): their own status,
    // backoff and lease, claimed by their own workers; and when the last failure happened.
    "CREATE TABLE repository_deletions (
        path                 TEXT PRIMARY KEY NOT NULL,
        status               TEXT NOT NULL,
        requested_at         INTEGER NOT NULL,
        started_at           INTEGER,
        completed_at         INTEGER,
        next_attempt_at      INTEGER,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        last_failure_class   TEXT,
        last_failure_status  INTEGER,
        last_failure_reason  TEXT,
        tags_deleted         INTEGER NOT NULL DEFAULT 0,
        lease_owner          TEXT,
        lease_expires_at     INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX repository_deletions_claim ON repository_deletions (status, requested_at);
    ALTER TABLE repositories ADD COLUMN last_failure_at INTEGER;",
    // 7: imports to a GitLab-compatible registry (imports.rs): one row per repository, its
    // history (transitions and cancel requests with their outcome). The guard and the
    // scheduler look up rows by state.
    "CREATE TABLE imports (
        path                  TEXT PRIMARY KEY NOT NULL,
        state                 TEXT NOT NULL,
        pre_only              INTEGER NOT NULL DEFAULT 0,
        requested_at          INTEGER NOT NULL,
        step_started_at       INTEGER,
        pre_import_started_at INTEGER,
        pre_import_done_at    INTEGER,
        import_started_at     INTEGER,
        import_done_at        INTEGER,
        aborted_at            INTEGER,
        skipped_at            INTEGER,
        retries               INTEGER NOT NULL DEFAULT 0,
        reason                TEXT,
        registry_status       TEXT,
        next_attempt_at       INTEGER,
        rate_limited          INTEGER NOT NULL DEFAULT 0,
        tags                  INTEGER,
        last_error            TEXT,
        updated_at            INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX imports_state ON imports (state, step_started_at);
    CREATE TABLE import_events (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        path       TEXT NOT NULL,
        event      TEXT NOT NULL,
        from_state TEXT NOT NULL,
        to_state   TEXT NOT NULL,
        outcome    TEXT,
        detail     TEXT
    );
    CREATE INDEX import_events_path ON import_events (path, id);",
    // 8: the manifests tagwarden deleted, as the registry served them just before (audit.rs),
    // so `tagwarden restore` can push them back. Keyed by digest: the bytes are the digest's,
    // shared by every audit row and repository that deleted it.
    "CREATE TABLE deleted_manifests (
        digest      TEXT PRIMARY KEY NOT NULL,
        media_type  TEXT NOT NULL,
        body        BLOB NOT NULL,
        kept_at     INTEGER NOT NULL
    );",
    // 9: the daemon's plugin directory: per plugin name (file stem), the version in service,
    // its state and counts (written by `serve`), and an operator's request (`release`,
    // written by the CLI and taken by the daemon).
    "CREATE TABLE plugins (
        name                TEXT PRIMARY KEY NOT NULL,
        state               TEXT NOT NULL,
        reason              TEXT,
        kind                TEXT,
        contract_version    TEXT,
        declared_name       TEXT,
        declared_version    TEXT,
        sha256              TEXT,
        from_compile_cache  INTEGER NOT NULL DEFAULT 0,
        loaded_at           INTEGER,
        policies            TEXT NOT NULL DEFAULT '',
        evaluations         INTEGER NOT NULL DEFAULT 0,
        failures            INTEGER NOT NULL DEFAULT 0,
        consecutive_faults  INTEGER NOT NULL DEFAULT 0,
        updated_at          INTEGER NOT NULL,
        requested           TEXT
    );",
    // 10: the plugin directory's canaries (plugins.rs): each comparison of a new version with
    // the one in service, what became of it (`swapped`, `pending`, `approved`, `superseded`)
    // and the difference itself as JSON (`canary::Diff`), which `plugins diff NAME` shows.
    "CREATE TABLE plugin_canaries (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        plugin              TEXT NOT NULL,
        at                  INTEGER NOT NULL,
        old_sha256          TEXT NOT NULL,
        old_version         TEXT NOT NULL,
        new_sha256          TEXT NOT NULL,
        new_version         TEXT NOT NULL,
        outcome             TEXT NOT NULL,
        max_extra_fraction  REAL NOT NULL,
        diff                TEXT NOT NULL
    );
    CREATE INDEX plugin_canaries_plugin ON plugin_canaries (plugin, id);",
    // 11: periodic duties (catalog sync, stale detection, cadence scheduling), each run by one
    // host at a time: whoever holds the row's unexpired lease (state.rs `take_duty`).
    "CREATE TABLE duties (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );",
    // 12: which compiler's code each plugin of the directory runs (`baseline` while its
    // optimized code is compiled in the background, then `optimized`), for `plugins list`.
    "ALTER TABLE plugins ADD COLUMN tier TEXT;",
];

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The lock around the one connection: parking_lot's, which is eventually fair. A thread that
/// lets go of the lock and asks again at once (a worker's claim, its bookkeeping write, its
/// next claim) usually gets it back, and with std's lock two workers claiming back to back
/// left the other one's claim waiting for many of them: p99 3.5–5.8 ms at 2 workers against
/// 0.2 ms at one. parking_lot hands the lock to a waiting thread once it has waited ~0.5 ms,
/// without making every release a context switch (a strictly fair lock halved the daemon's
/// passes per second at 2 workers). docs/benchmarks.md, "State store".
type Mutex<T> = parking_lot::Mutex<T>;

/// One open tagwarden database; cheap to clone (the connection is shared). With `[state] url`
/// it also holds the PostgreSQL database the hosts share ([`Store::share`]): the cleanup
/// state, audit log, runs and metadata cache are then there, and the local file keeps what
/// is this host's own (its plugin directory, imports).
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Option<PathBuf>,
    shared: Option<PgStateStore>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(p) => write!(f, "Store({})", p.display()),
            None => f.write_str("Store(:memory:)"),
        }
    }
}

impl Store {
    /// Opens the database at `path`, creating its parent directories, the file and the schema as
    /// needed. Errors name the file.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        Self::open_inner(path).with_context(|| format!("opening the tagwarden database {}", path.display()))
    }

    fn open_inner(path: &Path) -> anyhow::Result<Store> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating directory {}", parent.display()))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers never block the writer, and a crash cannot corrupt the file.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("the file system does not support SQLite's WAL mode (journal_mode is {mode})");
        }
        // With WAL, NORMAL loses at most the last transactions on power loss, never consistency.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints move off the writers' path (see `checkpointer`): SQLite's automatic one
        // runs inside the commit that crosses 1,000 WAL pages, holding the connection (and so
        // every claim waiting on it) for as long as copying and syncing 4 MB takes.
        // `TAGWARDEN_STORE_INLINE_CHECKPOINT` keeps SQLite's own, for the benchmark that
        // compares the two (docs/benchmarks.md, "State store").
        let background = std::env::var_os("TAGWARDEN_STORE_INLINE_CHECKPOINT").is_none();
        if background {
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        }
        let store = Self::with_connection(conn, Some(path.to_path_buf()))?;
        if background {
            checkpointer(path, &store)?;
        }
        Ok(store)
    }

    /// A private database in memory, for tests and one-shot runs.
    pub fn in_memory() -> anyhow::Result<Store> {
        let conn = Connection::open_in_memory().context("opening an in-memory SQLite database")?;
        Self::with_connection(conn, None)
    }

    fn with_connection(mut conn: Connection, path: Option<PathBuf>) -> anyhow::Result<Store> {
        migrate(&mut conn)?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)), path, shared: None })
    }

    /// The database file, `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// This store with the PostgreSQL database several hosts share: the cleanup state, audit
    /// log, runs and metadata cache are read and written there from now on.
    pub fn share(mut self, shared: PgStateStore) -> Store {
        self.shared = Some(shared);
        self
    }

    /// The shared PostgreSQL database, if [`Store::share`] gave one.
    pub fn shared(&self) -> Option<&PgStateStore> {
        self.shared.as_ref()
    }

    /// The cleanup state: the shared database's, else this file's.
    pub fn state(&self) -> Arc<dyn StateStore> {
        match &self.shared {
            Some(pg) => Arc::new(pg.clone()),
            None => Arc::new(self.clone()),
        }
    }

    /// The audit log of deletions.
    pub fn audit_log(&self) -> AuditLog {
        AuditLog::new(match &self.shared {
            Some(pg) => Arc::new(pg.clone()),
            None => Arc::new(audit::SqliteAudit { store: self.clone() }),
        })
    }

    /// The runs: one row per pass that reached a plan.
    pub fn runs(&self) -> RunLog {
        RunLog::new(match &self.shared {
            Some(pg) => Arc::new(pg.clone()),
            None => Arc::new(runs::SqliteRuns { store: self.clone() }),
        })
    }

    /// The plugins table: the daemon's plugin directory (this host's own).
    pub fn plugin_table(&self) -> PluginTable {
        PluginTable { store: self.clone() }
    }

    /// The manifest metadata cache.
    pub fn metadata_cache(&self) -> MetadataCache {
        MetadataCache::new(match &self.shared {
            Some(pg) => Arc::new(pg.clone()),
            None => Arc::new(metadata::SqliteMetadata { store: self.clone() }),
        })
    }

    /// The connection, for one statement or transaction. A panic while it was held cannot leave
    /// SQLite inconsistent (an open transaction rolls back when dropped); the lock is not
    /// poisoned by one.
    fn lock(&self) -> parking_lot::MutexGuard<'_, Connection> {
        self.conn.lock()
    }

    /// Describes the database for error messages.
    fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => ":memory:".to_string(),
        }
    }
}

/// How often the checkpointer looks at the WAL.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// WAL frames (4 KiB pages) past which the checkpointer makes sure the WAL restarts.
const WAL_RESTART_FRAMES: i64 = 4096;

/// Starts the thread that checkpoints `store`'s WAL from its own connection, in place of
/// SQLite's automatic checkpoint in the committing writer. A `PASSIVE` checkpoint waits for
/// no reader or writer, so neither waits for it: with four workers claiming at once, the
/// automatic one put a checkpoint (5–200 ms of copying and `fsync`) in front of every claim
/// queued behind the commit that triggered it, and was the whole p99 (docs/benchmarks.md,
/// "State store"). The thread ends soon after the last clone of the store is dropped.
///
/// A passive checkpoint alone never catches up with writers that do not pause: frames
/// committed while it copies are left over, a writer restarts the WAL only when nothing is
/// left over, and the WAL grew without bound (1.5 GB in the claim benchmark, every write
/// past its end paying for fresh zeroed pages). So once the WAL is past
/// `WAL_RESTART_FRAMES`, the checkpointer copies the rest while holding the writers' lock:
/// only the few frames committed since the unlocked copy, so the pause is short and rare.
fn checkpointer(path: &Path, store: &Store) -> anyhow::Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let owner = Arc::downgrade(&store.conn);
    let passive = move || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)));
    std::thread::Builder::new()
        .name("tagwarden-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(CHECKPOINT_INTERVAL);
                let Some(writers) = owner.upgrade() else { break };
                // Copies what it can of the WAL into the database; a writer restarts the WAL
                // once all of it was copied.
                match passive() {
                    Ok((frames, copied)) if frames > WAL_RESTART_FRAMES && copied < frames => {
                        let held = writers.lock();
                        if let Err(e) = passive() {
                            tracing::warn!("checkpointing the tagwarden database: {e}");
                        }
                        drop(held);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("checkpointing the tagwarden database: {e}"),
                }
                drop(writers);
            }
        })
        .context("starting the database checkpoint thread")?;
    Ok(())
}

/// Applies the migrations this database has not seen yet, all in one transaction.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        bail!("the database has schema version {version}, newer than this tagwarden knows ({known}); upgrade tagwarden");
    }
    if version == known {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).with_context(|| format!("applying schema migration {}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_parent_directories_and_sets_wal_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/tagwarden.db");
        let store = Store::open(&path).unwrap();
        assert!(path.is_file());
        let conn = store.lock();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn open_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the database file should be.
        let path = dir.path().join("db");
        std::fs::create_dir(&path).unwrap();
        let err = format!("{:#}", Store::open(&path).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn migrating_drops_cached_indexes_whose_children_were_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagwarden.db");
        // A database as tagwarden left it before migration 3: an image and an index cached.
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..2] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 2).unwrap();
        tx.commit().unwrap();
        for (digest, media_type) in
            [("sha256:aa", "application/vnd.oci.image.manifest.v1+json"), ("sha256:bb", "application/vnd.oci.image.index.v1+json")]
        {
            conn.execute(
                "INSERT INTO manifest_metadata (digest, media_type, cached_at) VALUES (?1, ?2, 0)",
                rusqlite::params![digest, media_type],
            )
            .unwrap();
        }
        drop(conn);
        let conn = Store::open(&path).unwrap();
        let conn = conn.lock();
        let left: Vec<String> = conn
            .prepare("SELECT digest FROM manifest_metadata")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, ["sha256:aa"], "the index is fetched again, with its children");
    }

    #[test]
    fn checkpoints_run_off_the_writers_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagwarden.db");
        let store = Store::open(&path).unwrap();
        let auto: i64 = store.lock().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(auto, 0, "no checkpoint inside a writer's commit");
        let before = std::fs::metadata(&path).unwrap().len();
        // ~8 MB through the WAL: past SQLite's 1,000-page automatic threshold.
        let blob = "x".repeat(4000);
        for i in 0..2000 {
            store
                .lock()
                .execute(
                    "INSERT INTO manifest_metadata (digest, media_type, cached_at) VALUES (?1, ?2, 0)",
                    rusqlite::params![i.to_string(), blob],
                )
                .unwrap();
        }
        // The checkpoint thread copies the WAL into the database file (polled, not slept on).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < before + (4 << 20) {
            assert!(std::time::Instant::now() < deadline, "the WAL was not checkpointed into {}", path.display());
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_wal_restarts_under_writers_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagwarden.db");
        let wal = dir.path().join("tagwarden.db-wal");
        let store = Store::open(&path).unwrap();
        // Bytes 16..20 of the WAL header: salt-1, which changes every time a writer restarts
        // the WAL from its beginning.
        let salt = || std::fs::read(&wal).ok().filter(|h| h.len() >= 32).map(|h| h[16..20].to_vec());
        let blob = "x".repeat(4000);
        let mut first = None;
        // Without the locked catch-up, a passive checkpoint never catches up with a writer
        // that does not pause, and the WAL only grows (~500 MB here).
        for i in 0..128 * 1024 {
            store
                .lock()
                .execute(
                    "INSERT INTO manifest_metadata (digest, media_type, cached_at) VALUES (?1, ?2, 0)",
                    rusqlite::params![i.to_string(), blob],
                )
                .unwrap();
            let now = salt();
            if first.is_none() {
                first = now;
            } else if now != first {
                let frames = std::fs::metadata(&wal).unwrap().len() / 4120;
                assert!(frames < 16 * WAL_RESTART_FRAMES as u64, "the WAL restarted only after {frames} frames");
                return;
            }
        }
        panic!("512 MB written without a pause and the WAL never restarted");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagwarden.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = format!("{:#}", Store::open(&path).unwrap_err());
        assert!(err.contains("schema version 99") && err.contains("upgrade tagwarden"), "{err}");
    }
}
