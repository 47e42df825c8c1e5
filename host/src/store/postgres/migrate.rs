//! `tagwarden state migrate --to postgres://…`: copies a SQLite state (the cleanup state, runs,
//! audit log, kept manifests, metadata cache) into an empty PostgreSQL database, in one
//! transaction: the copy is all there or not at all, and a database that already holds a state
//! is refused, so nothing there is overwritten or mixed.
//!
//! A thread reads the SQLite file a batch at a time (by primary key, so a table of millions of
//! rows is never in memory at once) and hands the batches over a bounded channel to the copy,
//! which streams them into PostgreSQL with binary `COPY`. The plugin table and imports stay in
//! the local file: they are the host's own.

use anyhow::{Context, bail};
use rusqlite::types::Value;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{PgStateStore, client};
use crate::store::Store;

/// One copied table: its columns (as both databases name them) with PostgreSQL's types; the
/// first is the primary key the reader pages by.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Type)],
    /// A `BIGSERIAL` id whose sequence must continue after the copied ids.
    serial: bool,
}

const TEXT: Type = Type::TEXT;
const INT8: Type = Type::INT8;
const INT4: Type = Type::INT4;

/// In an order that satisfies the foreign keys (audit rows point at runs).
const TABLES: &[Table] = &[
    Table {
        name: "policies",
        columns: &[("name", TEXT), ("enabled", Type::BOOL), ("cadence_secs", INT8), ("next_run_at", INT8)],
        serial: false,
    },
    Table {
        name: "repositories",
        columns: &[
            ("path", TEXT),
            ("policy", TEXT),
            ("status", TEXT),
            ("started_at", INT8),
            ("completed_at", INT8),
            ("next_attempt_at", INT8),
            ("consecutive_failures", INT4),
            ("last_failure_class", TEXT),
            ("last_failure_status", INT4),
            ("last_failure_reason", TEXT),
            ("last_failure_at", INT8),
            ("last_deleted", INT8),
            ("lease_owner", TEXT),
            ("lease_expires_at", INT8),
        ],
        serial: false,
    },
    Table {
        name: "repository_deletions",
        columns: &[
            ("path", TEXT),
            ("status", TEXT),
            ("requested_at", INT8),
            ("started_at", INT8),
            ("completed_at", INT8),
            ("next_attempt_at", INT8),
            ("consecutive_failures", INT4),
            ("last_failure_class", TEXT),
            ("last_failure_status", INT4),
            ("last_failure_reason", TEXT),
            ("tags_deleted", INT8),
            ("lease_owner", TEXT),
            ("lease_expires_at", INT8),
        ],
        serial: false,
    },
    Table {
        name: "runs",
        columns: &[
            ("id", INT8),
            ("registry", TEXT),
            ("repository", TEXT),
            ("policy", TEXT),
            ("decided_by", TEXT),
            ("owner", TEXT),
            ("started_at", INT8),
            ("finished_at", INT8),
            ("status", TEXT),
            ("tags_seen", INT8),
            ("tags_to_delete", INT8),
            ("digests_planned", INT8),
            ("tags_planned", INT8),
            ("tags_deleted", INT8),
            ("manifests_deleted", INT8),
            ("failed", INT8),
            ("detail", TEXT),
        ],
        serial: true,
    },
    Table {
        name: "audit_log",
        columns: &[
            ("id", INT8),
            ("at", INT8),
            ("registry", TEXT),
            ("repository", TEXT),
            ("operation", TEXT),
            ("digest", TEXT),
            ("tags", TEXT),
            ("decided_by", TEXT),
            ("outcome", TEXT),
            ("detail", TEXT),
            ("run_id", INT8),
        ],
        serial: true,
    },
    Table {
        name: "deleted_manifests",
        columns: &[("digest", TEXT), ("media_type", TEXT), ("body", Type::BYTEA), ("kept_at", INT8)],
        serial: false,
    },
    Table {
        name: "manifest_metadata",
        columns: &[
            ("digest", TEXT),
            ("media_type", TEXT),
            ("created_at", INT8),
            ("size_bytes", INT8),
            ("config_digest", TEXT),
            ("children", TEXT),
            ("cached_at", INT8),
        ],
        serial: false,
    },
];

/// Rows read from SQLite per batch.
const BATCH: usize = 5_000;

/// What the reader hands the copy.
enum Message {
    Rows(Vec<Vec<Value>>),
    /// The table is done (`Err`: reading it failed; the copy rolls back).
    End(Result<(), String>),
}

/// Rows copied per table, in [`TABLES`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub tables: Vec<(&'static str, u64)>,
}

impl PgStateStore {
    /// Copies `local`'s state into this database, which must hold none yet. `progress` is told
    /// each table's row count so far as the copy goes.
    pub fn migrate_from(&self, local: &Store, progress: impl Fn(&str, u64) + Send + 'static) -> anyhow::Result<MigrationReport> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Message>(4);
        let source = local.clone();
        let reader = std::thread::Builder::new()
            .name("tagwarden-migrate".into())
            .spawn(move || read_tables(&source, &tx))
            .context("starting the reader thread")?;
        let result = self.run(move |pool| copy_tables(pool, rx, progress));
        // The reader ends once its channel is closed (the copy ended, failed or not).
        let _ = reader.join();
        result.with_context(|| format!("copying the state of {} into {}", local.describe(), self.describe()))
    }
}

/// Reads every table of `store` in pages by primary key and sends them; stops when the copy
/// stops listening. All pages come from one read transaction: one snapshot of the file (WAL),
/// so a process still writing it cannot make the copy a mix of two moments.
fn read_tables(store: &Store, tx: &tokio::sync::mpsc::Sender<Message>) {
    if let Err(e) = store.lock().execute_batch("BEGIN") {
        let _ = tx.blocking_send(Message::End(Err(format!("reading {}: {e}", store.describe()))));
        return;
    }
    read_snapshot(store, tx);
    let _ = store.lock().execute_batch("ROLLBACK");
}

fn read_snapshot(store: &Store, tx: &tokio::sync::mpsc::Sender<Message>) {
    for table in TABLES {
        let result = read_table(store, table, tx);
        let end = match result {
            Ok(true) => Ok(()),
            Ok(false) => return, // the copy is gone
            Err(e) => Err(format!("reading table {} of {}: {e:#}", table.name, store.describe())),
        };
        if tx.blocking_send(Message::End(end)).is_err() {
            return;
        }
    }
}

/// `Ok(false)` when the copy stopped listening.
fn read_table(store: &Store, table: &Table, tx: &tokio::sync::mpsc::Sender<Message>) -> anyhow::Result<bool> {
    let names: Vec<&str> = table.columns.iter().map(|c| c.0).collect();
    let key = names[0];
    let sql = format!("SELECT {} FROM {} WHERE ?1 IS NULL OR {key} > ?1 ORDER BY {key} LIMIT {BATCH}", names.join(", "), table.name);
    let mut after: Value = Value::Null;
    loop {
        let rows: Vec<Vec<Value>> = {
            let conn = store.lock();
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows =
                stmt.query_map([&after], |r| (0..names.len()).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<Vec<_>>>())?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let Some(last) = rows.last() else { return Ok(true) };
        after = last[0].clone();
        let full = rows.len() == BATCH;
        if tx.blocking_send(Message::Rows(rows)).is_err() {
            return Ok(false);
        }
        if !full {
            return Ok(true);
        }
    }
}

async fn copy_tables(
    pool: deadpool_postgres::Pool,
    mut rx: tokio::sync::mpsc::Receiver<Message>,
    progress: impl Fn(&str, u64),
) -> anyhow::Result<MigrationReport> {
    let mut client = client(&pool).await?;
    let tx = client.transaction().await?;
    // Nothing another host could be writing meanwhile: the copy holds the tables it checks.
    tx.batch_execute("LOCK TABLE policies, repositories, repository_deletions, runs, audit_log IN EXCLUSIVE MODE").await?;
    let held: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM policies) + (SELECT count(*) FROM repositories)
                  + (SELECT count(*) FROM repository_deletions) + (SELECT count(*) FROM runs) + (SELECT count(*) FROM audit_log)",
            &[],
        )
        .await?
        .get(0);
    if held > 0 {
        bail!(
            "the target database already holds a state ({held} policies, repositories, deletions, runs and audit rows): \
             migrate into an empty database, or point `[state] url` at this one and leave it as it is"
        );
    }
    let mut report = MigrationReport { tables: Vec::with_capacity(TABLES.len()) };
    for table in TABLES {
        let names: Vec<&str> = table.columns.iter().map(|c| c.0).collect();
        let types: Vec<Type> = table.columns.iter().map(|c| c.1.clone()).collect();
        let sink = tx.copy_in(&format!("COPY {} ({}) FROM STDIN BINARY", table.name, names.join(", "))).await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures::pin_mut!(writer);
        let mut copied = 0u64;
        loop {
            match rx.recv().await {
                Some(Message::Rows(rows)) => {
                    for row in rows {
                        let cells = row.into_iter().zip(&types).map(|(v, t)| cell(v, t)).collect::<anyhow::Result<Vec<_>>>()?;
                        let refs: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| &**c as &(dyn ToSql + Sync)).collect();
                        writer.as_mut().write(&refs).await.with_context(|| format!("copying into {}", table.name))?;
                        copied += 1;
                    }
                    progress(table.name, copied);
                }
                Some(Message::End(Ok(()))) => break,
                Some(Message::End(Err(e))) => bail!("{e}"),
                None => bail!("the reader of the SQLite file stopped before table {} was read", table.name),
            }
        }
        writer.as_mut().finish().await.with_context(|| format!("copying into {}", table.name))?;
        if table.serial {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE((SELECT max(id) FROM {0}), 0) + 1, false)",
                    table.name
                ),
                &[],
            )
            .await?;
        }
        report.tables.push((table.name, copied));
    }
    tx.commit().await.context("committing the copy")?;
    Ok(report)
}

/// A SQLite value as the PostgreSQL column type wants it. SQLite is loosely typed, so a value
/// of another kind than its column's is an error naming both, not a guess.
fn cell(v: Value, t: &Type) -> anyhow::Result<Box<dyn ToSql + Sync + Send>> {
    Ok(match (v, t) {
        (Value::Null, t) if *t == Type::INT8 => Box::new(None::<i64>),
        (Value::Null, t) if *t == Type::INT4 => Box::new(None::<i32>),
        (Value::Null, t) if *t == Type::BOOL => Box::new(None::<bool>),
        (Value::Null, t) if *t == Type::BYTEA => Box::new(None::<Vec<u8>>),
        (Value::Null, _) => Box::new(None::<String>),
        (Value::Integer(n), t) if *t == Type::INT8 => Box::new(n),
        (Value::Integer(n), t) if *t == Type::INT4 => {
            Box::new(i32::try_from(n).with_context(|| format!("{n} does not fit a 32-bit column"))?)
        }
        (Value::Integer(n), t) if *t == Type::BOOL => Box::new(n != 0),
        (Value::Text(s), t) if *t == Type::TEXT => Box::new(s),
        (Value::Blob(b), t) if *t == Type::BYTEA => Box::new(b),
        (v, t) => bail!("a {:?} value in a column of type {t}", v.data_type()),
    })
}
