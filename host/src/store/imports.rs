//! Import state per repository (`imports`) and its history (`import_events`), with GitLab's
//! transition table (`gitlab-cleanup-semantics.md` §5) enforced here and only here: every state
//! change goes through [`ImportLog::apply`] (or [`ImportLog::abort`], which is `abort_import`
//! plus the retry rule), which checks the table inside the write transaction. An event the
//! table does not allow from the current state is refused with a [`TransitionRefused`] naming
//! both, and nothing changes.

use std::fmt;

use anyhow::Context;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::Store;
use crate::model::Timestamp;

/// Where a repository's import stands (GitLab's `migration_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImportState {
    /// Not started (queued when it has a row).
    Default,
    PreImporting,
    PreImportDone,
    Importing,
    ImportDone,
    /// Stopped; retried by the scheduler until `max_retries`.
    ImportAborted,
    /// Given up for good (reason: `too_many_retries`, `migration_canceled`, `not_found`, ...).
    ImportSkipped,
}

impl ImportState {
    pub const ALL: [ImportState; 7] = [
        ImportState::Default,
        ImportState::PreImporting,
        ImportState::PreImportDone,
        ImportState::Importing,
        ImportState::ImportDone,
        ImportState::ImportAborted,
        ImportState::ImportSkipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImportState::Default => "default",
            ImportState::PreImporting => "pre_importing",
            ImportState::PreImportDone => "pre_import_done",
            ImportState::Importing => "importing",
            ImportState::ImportDone => "import_done",
            ImportState::ImportAborted => "import_aborted",
            ImportState::ImportSkipped => "import_skipped",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s).with_context(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown import state `{s}`; expected one of {}", known.join(", "))
        })
    }

    /// The states the guard watches and during which a cleanup must not delete (GitLab
    /// refused cleanups of repositories in an active import state).
    pub fn is_active(self) -> bool {
        matches!(self, ImportState::PreImporting | ImportState::PreImportDone | ImportState::Importing)
    }
}

impl fmt::Display for ImportState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event of the import state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportEvent {
    StartPreImport,
    FinishPreImport,
    StartImport,
    FinishImport,
    AbortImport,
    SkipImport,
    RetryPreImport,
    RetryImport,
    /// tagwarden's operator action (`imports retry`): an aborted or skipped import back in the
    /// queue with its retry count reset. Not in GitLab's table, where only a console could.
    Reset,
}

impl ImportEvent {
    pub const ALL: [ImportEvent; 9] = [
        ImportEvent::StartPreImport,
        ImportEvent::FinishPreImport,
        ImportEvent::StartImport,
        ImportEvent::FinishImport,
        ImportEvent::AbortImport,
        ImportEvent::SkipImport,
        ImportEvent::RetryPreImport,
        ImportEvent::RetryImport,
        ImportEvent::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImportEvent::StartPreImport => "start_pre_import",
            ImportEvent::FinishPreImport => "finish_pre_import",
            ImportEvent::StartImport => "start_import",
            ImportEvent::FinishImport => "finish_import",
            ImportEvent::AbortImport => "abort_import",
            ImportEvent::SkipImport => "skip_import",
            ImportEvent::RetryPreImport => "retry_pre_import",
            ImportEvent::RetryImport => "retry_import",
            ImportEvent::Reset => "reset",
        }
    }

    /// The states the event is allowed from: §5's table, verbatim (plus `reset`).
    pub fn allowed_from(self) -> &'static [ImportState] {
        use ImportState::*;
        match self {
            ImportEvent::StartPreImport => &[Default, PreImporting, Importing, ImportAborted],
            ImportEvent::FinishPreImport => &[PreImporting, Importing, ImportAborted],
            ImportEvent::StartImport => &[PreImportDone, PreImporting, Importing, ImportAborted],
            ImportEvent::FinishImport => &[Default, PreImporting, Importing, ImportAborted],
            ImportEvent::AbortImport => &[Default, PreImporting, PreImportDone, Importing],
            ImportEvent::SkipImport => &[Default, PreImporting, PreImportDone, Importing, ImportAborted],
            ImportEvent::RetryPreImport | ImportEvent::RetryImport => &[PreImporting, Importing, ImportAborted],
            ImportEvent::Reset => &[ImportAborted, ImportSkipped],
        }
    }

    /// Where the event leads.
    pub fn target(self) -> ImportState {
        match self {
            ImportEvent::StartPreImport | ImportEvent::RetryPreImport => ImportState::PreImporting,
            ImportEvent::FinishPreImport => ImportState::PreImportDone,
            ImportEvent::StartImport | ImportEvent::RetryImport => ImportState::Importing,
            ImportEvent::FinishImport => ImportState::ImportDone,
            ImportEvent::AbortImport => ImportState::ImportAborted,
            ImportEvent::SkipImport => ImportState::ImportSkipped,
            ImportEvent::Reset => ImportState::Default,
        }
    }
}

impl fmt::Display for ImportEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one place the table is read: where `event` leads from `from`, or why not.
pub fn transition(from: ImportState, event: ImportEvent) -> Result<ImportState, TransitionRefused> {
    if event.allowed_from().contains(&from) {
        Ok(event.target())
    } else {
        Err(TransitionRefused { path: None, event, from, expected: None })
    }
}

/// An event the table does not allow from the repository's state (or a state that changed
/// since the caller read it). Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TransitionRefused {
    pub path: Option<String>,
    pub event: ImportEvent,
    pub from: ImportState,
    /// The state the caller decided from, when it differed from the current one.
    pub expected: Option<ImportState>,
}

impl fmt::Display for TransitionRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "import of {path}: ")?;
        }
        if let Some(expected) = self.expected {
            return write!(
                f,
                "event `{}` was decided for state `{expected}`, but the import is now `{}`; nothing changed",
                self.event, self.from
            );
        }
        let allowed: Vec<&str> = self.event.allowed_from().iter().map(|s| s.as_str()).collect();
        write!(f, "event `{}` is not allowed from state `{}` (only from {}); nothing changed", self.event, self.from, allowed.join(", "))
    }
}

/// One repository's import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRecord {
    pub path: String,
    pub state: ImportState,
    /// Stop after the pre-import (`imports start --pre-only`).
    pub pre_only: bool,
    /// When it was queued (or queued again by `imports retry`).
    pub requested_at: Timestamp,
    /// When the current step started (pre-import, wait for the final import, final import).
    pub step_started_at: Option<Timestamp>,
    pub pre_import_started_at: Option<Timestamp>,
    pub pre_import_done_at: Option<Timestamp>,
    pub import_started_at: Option<Timestamp>,
    pub import_done_at: Option<Timestamp>,
    pub aborted_at: Option<Timestamp>,
    pub skipped_at: Option<Timestamp>,
    /// Times it entered `import_aborted`.
    pub retries: u32,
    /// Why it is in its state: the abort or skip reason (`too_many_retries`,
    /// `migration_canceled`, ...), or `native_import`.
    pub reason: Option<String>,
    /// The status the registry last reported.
    pub registry_status: Option<String>,
    /// Not started before this (the registry answered 429).
    pub next_attempt_at: Option<Timestamp>,
    /// Consecutive 429 answers.
    pub rate_limited: u32,
    /// Tags in the repository when its pre-import started (for a dynamic timeout).
    pub tags: Option<u64>,
    /// The last request about it that failed, for operators.
    pub last_error: Option<String>,
    pub updated_at: Timestamp,
}

/// What else a state change records besides the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Refuse unless the current state is this (the state the caller decided from).
    pub expect: Option<ImportState>,
    /// The reason (abort, skip, finish); starts clear it when `None`.
    pub reason: Option<String>,
    pub registry_status: Option<String>,
    pub tags: Option<u64>,
    /// Forget that the pre-import finished (the registry said it failed: redo it on retry).
    pub clear_pre_import_done: bool,
}

/// One line of an import's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportHistory {
    pub at: Timestamp,
    /// An event name, or `cancel` (a cancel request and its outcome).
    pub event: String,
    pub from: String,
    pub to: String,
    /// For cancels: `accepted`, `nothing_to_cancel`, `not_found` or `error`.
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

/// What `enqueue` did with one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new row in `default`.
    Queued,
    /// A `--pre-only` import queued again without it: its final import follows the pre-import.
    FinalImportQueued(ImportState),
    /// Already known; left as it is (`imports retry` requeues aborted or skipped ones).
    Known(ImportState),
}

/// The import tables. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ImportLog {
    store: Store,
}

const COLUMNS: &str = "path, state, pre_only, requested_at, step_started_at, pre_import_started_at, pre_import_done_at,
    import_started_at, import_done_at, aborted_at, skipped_at, retries, reason, registry_status, next_attempt_at,
    rate_limited, tags, last_error, updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ImportRecord, String)> {
    let ts = |i: usize| -> rusqlite::Result<Option<Timestamp>> { Ok(r.get::<_, Option<i64>>(i)?.map(Timestamp::from_unix_micros)) };
    let state: String = r.get(1)?;
    Ok((
        ImportRecord {
            path: r.get(0)?,
            state: ImportState::Default,
            pre_only: r.get(2)?,
            requested_at: Timestamp::from_unix_micros(r.get(3)?),
            step_started_at: ts(4)?,
            pre_import_started_at: ts(5)?,
            pre_import_done_at: ts(6)?,
            import_started_at: ts(7)?,
            import_done_at: ts(8)?,
            aborted_at: ts(9)?,
            skipped_at: ts(10)?,
            retries: r.get(11)?,
            reason: r.get(12)?,
            registry_status: r.get(13)?,
            next_attempt_at: ts(14)?,
            rate_limited: r.get(15)?,
            tags: r.get::<_, Option<i64>>(16)?.map(|t| t.max(0) as u64),
            last_error: r.get(17)?,
            updated_at: Timestamp::from_unix_micros(r.get(18)?),
        },
        state,
    ))
}

fn finish_row((mut record, state): (ImportRecord, String)) -> anyhow::Result<ImportRecord> {
    record.state = ImportState::parse(&state).with_context(|| format!("import of {} in the state database", record.path))?;
    Ok(record)
}

fn read(conn: &rusqlite::Connection, path: &str) -> anyhow::Result<Option<ImportRecord>> {
    let found = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM imports WHERE path = ?1"))?.query_row(params![path], row).optional()?;
    found.map(finish_row).transpose()
}

impl ImportLog {
    pub(super) fn new(store: Store) -> Self {
        ImportLog { store }
    }

    /// Queues `paths` for import (new rows in `default`); known ones are left as they are, except
    /// that queueing a `--pre-only` import without `pre_only` lets its final import follow.
    pub fn enqueue(&self, paths: &[String], pre_only: bool, now: Timestamp) -> anyhow::Result<Vec<(String, Enqueued)>> {
        let mut conn = self.store.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::new();
        for path in paths {
            match read(&tx, path)? {
                Some(existing) if existing.pre_only && !pre_only => {
                    tx.execute("UPDATE imports SET pre_only = 0, updated_at = ?2 WHERE path = ?1", params![path, now.unix_micros()])?;
                    out.push((path.clone(), Enqueued::FinalImportQueued(existing.state)));
                }
                Some(existing) => out.push((path.clone(), Enqueued::Known(existing.state))),
                None => {
                    tx.execute(
                        "INSERT INTO imports (path, state, pre_only, requested_at, updated_at) VALUES (?1, 'default', ?2, ?3, ?3)",
                        params![path, pre_only, now.unix_micros()],
                    )?;
                    out.push((path.clone(), Enqueued::Queued));
                }
            }
        }
        tx.commit().with_context(|| format!("queueing imports in {}", self.store.describe()))?;
        Ok(out)
    }

    /// One repository's import.
    pub fn get(&self, path: &str) -> anyhow::Result<Option<ImportRecord>> {
        read(&self.store.lock(), path)
    }

    /// Imports (all, or in `state`), by path.
    pub fn list(&self, state: Option<ImportState>) -> anyhow::Result<Vec<ImportRecord>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM imports WHERE ?1 IS NULL OR state = ?1 ORDER BY path"))?;
        let rows: Vec<_> = stmt.query_map(params![state.map(ImportState::as_str)], row)?.collect::<Result<_, _>>()?;
        rows.into_iter().map(finish_row).collect()
    }

    /// How many imports are in each state (every state listed, zeros included).
    pub fn counts(&self) -> anyhow::Result<Vec<(ImportState, usize)>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM imports GROUP BY state")?;
        let rows: Vec<(String, i64)> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        let mut counts: Vec<(ImportState, usize)> = ImportState::ALL.iter().map(|s| (*s, 0)).collect();
        for (state, n) in rows {
            let state = ImportState::parse(&state)?;
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
                c.1 = n as usize;
            }
        }
        Ok(counts)
    }

    /// Cancel requests sent, by outcome.
    pub fn cancel_counts(&self) -> anyhow::Result<Vec<(String, usize)>> {
        let conn = self.store.lock();
        let mut stmt =
            conn.prepare_cached("SELECT outcome, COUNT(*) FROM import_events WHERE event = 'cancel' GROUP BY outcome ORDER BY outcome")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Imports the registry is working on (`pre_importing`, `importing`): what capacity counts.
    pub fn running(&self) -> anyhow::Result<usize> {
        let n: i64 =
            self.store.lock().query_row("SELECT COUNT(*) FROM imports WHERE state IN ('pre_importing', 'importing')", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// The state during which a cleanup must not delete in `path`, if it is in one.
    pub fn active_state(&self, path: &str) -> anyhow::Result<Option<ImportState>> {
        let state: Option<String> =
            self.store.lock().query_row("SELECT state FROM imports WHERE path = ?1", params![path], |r| r.get(0)).optional()?;
        Ok(state.map(|s| ImportState::parse(&s)).transpose()?.filter(|s| s.is_active()))
    }

    /// The history of one import, oldest first.
    pub fn history(&self, path: &str) -> anyhow::Result<Vec<ImportHistory>> {
        let conn = self.store.lock();
        let mut stmt =
            conn.prepare_cached("SELECT at, event, from_state, to_state, outcome, detail FROM import_events WHERE path = ?1 ORDER BY id")?;
        let rows = stmt
            .query_map(params![path], |r| {
                Ok(ImportHistory {
                    at: Timestamp::from_unix_micros(r.get(0)?),
                    event: r.get(1)?,
                    from: r.get(2)?,
                    to: r.get(3)?,
                    outcome: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Applies `event` to `path`'s import if the table allows it from the current state (and
    /// the state is `change.expect`, when given), recording the step's timestamps and a history
    /// line. A refusal is a [`TransitionRefused`] (inside the `anyhow::Error`) and changes nothing.
    pub fn apply(&self, path: &str, event: ImportEvent, now: Timestamp, change: &Change) -> anyhow::Result<ImportRecord> {
        let mut conn = self.store.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let record = apply_in(&tx, path, event, now, change)?;
        tx.commit().with_context(|| format!("recording `{event}` for the import of {path} in {}", self.store.describe()))?;
        Ok(record)
    }

    /// `abort_import` with the retry rule, in one transaction: entering `import_aborted` counts a
    /// retry, and at `max_retries` the import is skipped with reason `too_many_retries`.
    pub fn abort(&self, path: &str, now: Timestamp, change: &Change, max_retries: u32) -> anyhow::Result<ImportRecord> {
        let mut conn = self.store.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut record = apply_in(&tx, path, ImportEvent::AbortImport, now, change)?;
        if record.retries >= max_retries {
            let skip = Change { reason: Some("too_many_retries".into()), ..Change::default() };
            record = apply_in(&tx, path, ImportEvent::SkipImport, now, &skip)?;
        }
        tx.commit().with_context(|| format!("recording the abort of the import of {path} in {}", self.store.describe()))?;
        Ok(record)
    }

    /// Records a 429: not started again before `until`.
    pub fn back_off(&self, path: &str, until: Timestamp, message: &str, now: Timestamp) -> anyhow::Result<()> {
        self.store.lock().execute(
            "UPDATE imports SET next_attempt_at = ?2, rate_limited = rate_limited + 1, last_error = ?3, updated_at = ?4 WHERE path = ?1",
            params![path, until.unix_micros(), message, now.unix_micros()],
        )?;
        Ok(())
    }

    /// Records what the registry said (a status, or a failed request), without a state change.
    pub fn note(&self, path: &str, registry_status: Option<&str>, error: Option<&str>, now: Timestamp) -> anyhow::Result<()> {
        self.store.lock().execute(
            "UPDATE imports SET registry_status = COALESCE(?2, registry_status), last_error = ?3, updated_at = ?4 WHERE path = ?1",
            params![path, registry_status, error, now.unix_micros()],
        )?;
        Ok(())
    }

    /// Records a cancel request and its outcome (`accepted`, `nothing_to_cancel`, `not_found`,
    /// `error`) in the history: what the cancels-by-outcome figures count.
    pub fn record_cancel(&self, path: &str, state: ImportState, outcome: &str, detail: &str, now: Timestamp) -> anyhow::Result<()> {
        self.store.lock().execute(
            "INSERT INTO import_events (at, path, event, from_state, to_state, outcome, detail) VALUES (?1, ?2, 'cancel', ?3, ?3, ?4, ?5)",
            params![now.unix_micros(), path, state.as_str(), outcome, detail],
        )?;
        Ok(())
    }

    /// Imports the scheduler may start or advance now, in the order it takes them: finished
    /// pre-imports waiting for their final import, then aborted ones under the retry limit, then
    /// queued ones; oldest first within each, none backing off, none a cleanup holds (a cleanup
    /// and an import never run on one repository at once).
    pub fn startable(&self, now: Timestamp, max_retries: u32) -> anyhow::Result<Vec<ImportRecord>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM imports
             WHERE (next_attempt_at IS NULL OR next_attempt_at <= ?1)
               AND ((state = 'pre_import_done' AND NOT pre_only) OR (state = 'import_aborted' AND retries < ?2) OR state = 'default')
               AND path NOT IN (SELECT path FROM repositories WHERE status = 'cleanup_ongoing')
             ORDER BY CASE state WHEN 'pre_import_done' THEN 0 WHEN 'import_aborted' THEN 1 ELSE 2 END, updated_at, path"
        ))?;
        let rows: Vec<_> = stmt.query_map(params![now.unix_micros(), max_retries], row)?.collect::<Result<_, _>>()?;
        rows.into_iter().map(finish_row).collect()
    }

    /// Imports the guard looks at: in `pre_importing`, `importing`, or `pre_import_done` waiting
    /// for its final import (not `--pre-only` ones, which are meant to wait).
    pub fn watched(&self) -> anyhow::Result<Vec<ImportRecord>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM imports
             WHERE state IN ('pre_importing', 'importing') OR (state = 'pre_import_done' AND NOT pre_only)
             ORDER BY step_started_at, path"
        ))?;
        let rows: Vec<_> = stmt.query_map([], row)?.collect::<Result<_, _>>()?;
        rows.into_iter().map(finish_row).collect()
    }
}

/// [`ImportLog::apply`] inside the caller's transaction.
fn apply_in(
    tx: &rusqlite::Transaction<'_>,
    path: &str,
    event: ImportEvent,
    now: Timestamp,
    change: &Change,
) -> anyhow::Result<ImportRecord> {
    let Some(current) = read(tx, path)? else {
        anyhow::bail!("no import of {path} in the state: queue it with `tagwarden imports start {path}`");
    };
    if let Some(expected) = change.expect
        && expected != current.state
    {
        return Err(TransitionRefused { path: Some(path.to_owned()), event, from: current.state, expected: Some(expected) }.into());
    }
    let to = transition(current.state, event).map_err(|e| TransitionRefused { path: Some(path.to_owned()), ..e })?;
    let now_us = now.unix_micros();
    // Each target state records its own step time; the rest of the row is kept.
    let step = match to {
        ImportState::PreImporting => "step_started_at = ?2, pre_import_started_at = ?2, next_attempt_at = NULL, rate_limited = 0",
        ImportState::PreImportDone => "step_started_at = ?2, pre_import_done_at = ?2",
        ImportState::Importing => "step_started_at = ?2, import_started_at = ?2, next_attempt_at = NULL, rate_limited = 0",
        ImportState::ImportDone => "step_started_at = NULL, import_done_at = ?2",
        ImportState::ImportAborted => "step_started_at = NULL, aborted_at = ?2, retries = retries + 1",
        ImportState::ImportSkipped => "step_started_at = NULL, skipped_at = ?2",
        ImportState::Default => {
            "step_started_at = NULL, requested_at = ?2, retries = 0, next_attempt_at = NULL, rate_limited = 0, last_error = NULL"
        }
    };
    let clear = if change.clear_pre_import_done { ", pre_import_done_at = NULL" } else { "" };
    tx.execute(
        &format!(
            "UPDATE imports SET state = ?3, {step}{clear}, reason = ?4, registry_status = COALESCE(?5, registry_status),
               tags = COALESCE(?6, tags), updated_at = ?2 WHERE path = ?1"
        ),
        params![path, now_us, to.as_str(), change.reason, change.registry_status, change.tags.map(|t| t as i64)],
    )?;
    tx.execute(
        "INSERT INTO import_events (at, path, event, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![now_us, path, event.as_str(), current.state.as_str(), to.as_str(), change.reason],
    )?;
    read(tx, path)?.context("the import row vanished inside its transaction")
}

impl Store {
    /// The import state and history.
    pub fn imports(&self) -> ImportLog {
        ImportLog::new(self.clone())
    }

    /// Sets an import's state as given, bypassing the table (tests set up every state this way).
    pub fn put_import_state(&self, path: &str, state: ImportState, step_started_at: Option<Timestamp>, retries: u32) -> anyhow::Result<()> {
        let now = Timestamp::now().unix_micros();
        self.lock().execute(
            "INSERT INTO imports (path, state, pre_only, requested_at, step_started_at, retries, updated_at) VALUES (?1, ?2, 0, ?5, ?3, ?4, ?5)
             ON CONFLICT (path) DO UPDATE SET state = excluded.state, step_started_at = excluded.step_started_at, retries = excluded.retries",
            params![path, state.as_str(), step_started_at.map(Timestamp::unix_micros), retries, now],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    /// §5's table as data: (event, the states it is allowed from).
    fn table() -> Vec<(ImportEvent, Vec<ImportState>)> {
        use ImportEvent::*;
        use ImportState::*;
        vec![
            (StartPreImport, vec![Default, PreImporting, Importing, ImportAborted]),
            (FinishPreImport, vec![PreImporting, Importing, ImportAborted]),
            (StartImport, vec![PreImportDone, PreImporting, Importing, ImportAborted]),
            (FinishImport, vec![Default, PreImporting, Importing, ImportAborted]),
            (AbortImport, vec![Default, PreImporting, PreImportDone, Importing]),
            (SkipImport, vec![Default, PreImporting, PreImportDone, Importing, ImportAborted]),
            (RetryPreImport, vec![PreImporting, Importing, ImportAborted]),
            (RetryImport, vec![PreImporting, Importing, ImportAborted]),
            (Reset, vec![ImportAborted, ImportSkipped]),
        ]
    }

    /// Every event from every state, through the store: allowed ones move to the event's target
    /// and add one history line; refused ones name both the event and the state, and leave the
    /// row and the history exactly as they were.
    #[test]
    fn every_event_from_every_state() {
        let now = t("2026-11-20T12:00:00Z");
        let started = t("2026-11-20T11:00:00Z");
        let mut moved = 0;
        let mut refused = 0;
        for (event, allowed) in table() {
            assert_eq!(event.allowed_from(), allowed.as_slice(), "{event}: the table in code differs from §5");
            for from in ImportState::ALL {
                let store = Store::in_memory().unwrap();
                let log = store.imports();
                store.put_import_state("g/app", from, Some(started), 1).unwrap();
                let before = log.get("g/app").unwrap().unwrap();
                let result = log.apply("g/app", event, now, &Change { reason: Some("why".into()), ..Change::default() });
                if allowed.contains(&from) {
                    let after = result.unwrap_or_else(|e| panic!("{event} from {from}: {e:#}"));
                    assert_eq!(after.state, event.target(), "{event} from {from}");
                    assert_eq!(after.updated_at, now);
                    let history = log.history("g/app").unwrap();
                    assert_eq!(history.len(), 1);
                    assert_eq!(
                        (history[0].event.as_str(), history[0].from.as_str(), history[0].to.as_str()),
                        (event.as_str(), from.as_str(), event.target().as_str())
                    );
                    // The step's own timestamp.
                    match after.state {
                        ImportState::PreImporting => {
                            assert_eq!((after.step_started_at, after.pre_import_started_at), (Some(now), Some(now)))
                        }
                        ImportState::PreImportDone => assert_eq!((after.step_started_at, after.pre_import_done_at), (Some(now), Some(now))),
                        ImportState::Importing => assert_eq!((after.step_started_at, after.import_started_at), (Some(now), Some(now))),
                        ImportState::ImportDone => assert_eq!((after.step_started_at, after.import_done_at), (None, Some(now))),
                        ImportState::ImportAborted => assert_eq!((after.aborted_at, after.retries), (Some(now), 2), "a retry counted"),
                        ImportState::ImportSkipped => assert_eq!((after.skipped_at, after.reason.as_deref()), (Some(now), Some("why"))),
                        ImportState::Default => assert_eq!((after.retries, after.requested_at), (0, now)),
                    }
                    moved += 1;
                } else {
                    let err = result.unwrap_err();
                    let refusal = err.downcast_ref::<TransitionRefused>().unwrap_or_else(|| panic!("{event} from {from}: {err:#}"));
                    assert_eq!((refusal.event, refusal.from), (event, from));
                    let text = err.to_string();
                    assert!(
                        text.contains(&format!("`{event}`")) && text.contains(&format!("`{from}`")) && text.contains("nothing changed"),
                        "{text}"
                    );
                    assert_eq!(log.get("g/app").unwrap().unwrap(), before, "{event} from {from} changed the row");
                    assert!(log.history("g/app").unwrap().is_empty(), "{event} from {from} wrote history");
                    refused += 1;
                }
            }
        }
        // 9 events x 7 states.
        assert_eq!((moved, refused), (32, 31));
    }

    #[test]
    fn a_state_changed_since_it_was_read_is_refused() {
        let store = Store::in_memory().unwrap();
        store.put_import_state("g/app", ImportState::Importing, None, 0).unwrap();
        let change = Change { expect: Some(ImportState::PreImporting), ..Change::default() };
        let err = store.imports().apply("g/app", ImportEvent::FinishPreImport, Timestamp::now(), &change).unwrap_err();
        assert!(err.to_string().contains("decided for state `pre_importing`, but the import is now `importing`"), "{err}");
        assert_eq!(store.imports().get("g/app").unwrap().unwrap().state, ImportState::Importing);
        let err = store.imports().apply("g/none", ImportEvent::StartPreImport, Timestamp::now(), &Change::default()).unwrap_err();
        assert!(err.to_string().contains("no import of g/none") && err.to_string().contains("imports start"), "{err}");
    }

    #[test]
    fn aborting_counts_retries_and_skips_at_the_limit() {
        let store = Store::in_memory().unwrap();
        let log = store.imports();
        let now = t("2026-11-20T12:00:00Z");
        log.enqueue(&["g/app".into()], false, now).unwrap();
        for round in 1..=3u32 {
            let event = if round == 1 { ImportEvent::StartPreImport } else { ImportEvent::RetryPreImport };
            log.apply("g/app", event, now, &Change::default()).unwrap_or_else(|e| panic!("{e:#}"));
            let r = log.abort("g/app", now, &Change { reason: Some("timeout".into()), ..Change::default() }, 3).unwrap();
            assert_eq!(r.retries, round);
            if round < 3 {
                assert_eq!((r.state, r.reason.as_deref()), (ImportState::ImportAborted, Some("timeout")));
            } else {
                assert_eq!((r.state, r.reason.as_deref()), (ImportState::ImportSkipped, Some("too_many_retries")));
            }
        }
        let events: Vec<String> = log.history("g/app").unwrap().into_iter().map(|h| h.event).collect();
        assert_eq!(events.last().map(String::as_str), Some("skip_import"));
    }

    #[test]
    fn enqueue_keeps_known_imports_and_startable_orders_the_work() {
        let store = Store::in_memory().unwrap();
        let log = store.imports();
        let now = t("2026-11-20T12:00:00Z");
        let queued = log.enqueue(&["a".into(), "b".into()], false, now).unwrap();
        assert_eq!(queued, [("a".into(), Enqueued::Queued), ("b".into(), Enqueued::Queued)]);
        store.put_import_state("b", ImportState::PreImportDone, Some(now), 0).unwrap();
        store.put_import_state("c", ImportState::ImportAborted, None, 1).unwrap();
        store.put_import_state("d", ImportState::ImportAborted, None, 3).unwrap();
        store.put_import_state("e", ImportState::Importing, Some(now), 0).unwrap();
        assert_eq!(log.enqueue(&["e".into()], false, now).unwrap(), [("e".into(), Enqueued::Known(ImportState::Importing))]);
        let order: Vec<String> = log.startable(now, 3).unwrap().into_iter().map(|r| r.path).collect();
        assert_eq!(order, ["b", "c", "a"], "final imports first, then retries under the limit, then queued");
        log.back_off("a", t("2026-11-20T12:05:00Z"), "429", now).unwrap();
        let order: Vec<String> = log.startable(now, 3).unwrap().into_iter().map(|r| r.path).collect();
        assert_eq!(order, ["b", "c"], "a backs off");
        assert_eq!(log.running().unwrap(), 1);
        assert_eq!(log.active_state("e").unwrap(), Some(ImportState::Importing));
        assert_eq!(log.active_state("d").unwrap(), None);
        assert_eq!(log.active_state("zz").unwrap(), None);
    }
}
