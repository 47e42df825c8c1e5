//! The `plugins` table: each plugin of `serve`'s plugin directory (`[plugins] dir`), by
//! name, with the version in service, its state and counts. The daemon writes it as it
//! loads, swaps, quarantines and counts; `tagwarden plugins list` and `status` read it;
//! `tagwarden plugins release` leaves a request in it for the daemon to take.

use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::model::Timestamp;

/// Where a plugin of the directory stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// In service.
    Active,
    /// A new version waits for an operator's approval (canary); the old one serves.
    Pending,
    /// The file does not load (see the reason); the previous version serves, if there was one.
    Failed,
    /// Trapped or timed out too often in a row: its policies pause until a new file or a release.
    Quarantined,
    /// Its file is gone: its policies pause.
    Paused,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Active => "active",
            PluginState::Pending => "pending",
            PluginState::Failed => "failed",
            PluginState::Quarantined => "quarantined",
            PluginState::Paused => "paused",
        }
    }

    fn parse(s: &str) -> PluginState {
        match s {
            "active" => PluginState::Active,
            "pending" => PluginState::Pending,
            "quarantined" => PluginState::Quarantined,
            "paused" => PluginState::Paused,
            _ => PluginState::Failed,
        }
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the `plugins` table. The version fields describe the version in service
/// (`None` when none ever loaded).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginRecord {
    /// The file stem: what policies name.
    pub name: String,
    pub state: PluginState,
    /// Why it is not active, or what the last failed attempt said.
    pub reason: Option<String>,
    pub kind: Option<String>,
    pub contract_version: Option<String>,
    /// The name and version the component declares (`info`).
    pub declared_name: Option<String>,
    pub declared_version: Option<String>,
    pub sha256: Option<String>,
    /// Whether the version in service came out of the compile cache (no compilation).
    pub from_compile_cache: bool,
    pub loaded_at: Option<Timestamp>,
    /// The policies that use it.
    pub policies: Vec<String>,
    /// Evaluations and failures of the version in service since it was loaded.
    pub evaluations: u64,
    pub failures: u64,
    pub consecutive_faults: u32,
    pub updated_at: Timestamp,
}

/// The `plugins` table.
#[derive(Clone)]
pub struct PluginTable {
    pub(super) store: Store,
}

const COLUMNS: &str = "name, state, reason, kind, contract_version, declared_name, declared_version, sha256, \
                       from_compile_cache, loaded_at, policies, evaluations, failures, consecutive_faults, updated_at";

impl PluginTable {
    /// Writes `record` (all of it), keeping any request an operator left.
    pub fn put(&self, r: &PluginRecord) -> anyhow::Result<()> {
        let conn = self.store.lock();
        conn.execute(
            &format!(
                "INSERT INTO plugins ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state, reason = excluded.reason, kind = excluded.kind,
                   contract_version = excluded.contract_version, declared_name = excluded.declared_name,
                   declared_version = excluded.declared_version, sha256 = excluded.sha256,
                   from_compile_cache = excluded.from_compile_cache, loaded_at = excluded.loaded_at,
                   policies = excluded.policies, evaluations = excluded.evaluations, failures = excluded.failures,
                   consecutive_faults = excluded.consecutive_faults, updated_at = excluded.updated_at"
            ),
            params![
                r.name,
                r.state.as_str(),
                r.reason,
                r.kind,
                r.contract_version,
                r.declared_name,
                r.declared_version,
                r.sha256,
                r.from_compile_cache,
                r.loaded_at.map(|t| t.unix_micros()),
                r.policies.join(","),
                r.evaluations as i64,
                r.failures as i64,
                r.consecutive_faults,
                r.updated_at.unix_micros(),
            ],
        )
        .map_err(anyhow::Error::from)
        .map(drop)
        .map_err(|e| e.context(format!("recording plugin `{}` in {}", r.name, self.store.describe())))
    }

    /// Every plugin, by name.
    pub fn list(&self) -> anyhow::Result<Vec<PluginRecord>> {
        let conn = self.store.lock();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM plugins ORDER BY name"))?;
        let rows = stmt.query_map([], |row| {
            let policies: String = row.get(10)?;
            Ok(PluginRecord {
                name: row.get(0)?,
                state: PluginState::parse(&row.get::<_, String>(1)?),
                reason: row.get(2)?,
                kind: row.get(3)?,
                contract_version: row.get(4)?,
                declared_name: row.get(5)?,
                declared_version: row.get(6)?,
                sha256: row.get(7)?,
                from_compile_cache: row.get(8)?,
                loaded_at: row.get::<_, Option<i64>>(9)?.map(Timestamp::from_unix_micros),
                policies: policies.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect(),
                evaluations: row.get::<_, i64>(11)? as u64,
                failures: row.get::<_, i64>(12)? as u64,
                consecutive_faults: row.get(13)?,
                updated_at: Timestamp::from_unix_micros(row.get(14)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Leaves `action` (`release`) for the daemon on plugin `name`. Errors (changing
    /// nothing) when no such plugin is known, naming those that are.
    pub fn request(&self, name: &str, action: &str) -> anyhow::Result<()> {
        let conn = self.store.lock();
        let n = conn.execute("UPDATE plugins SET requested = ?2 WHERE name = ?1", params![name, action])?;
        if n == 0 {
            let mut stmt = conn.prepare("SELECT name FROM plugins ORDER BY name")?;
            let known: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            anyhow::bail!(
                "no plugin named `{name}` in the daemon's plugin directory (known: {}); `tagwarden plugins list` shows them",
                if known.is_empty() { "none yet; is `serve` running with `[plugins] dir`?".to_owned() } else { known.join(", ") }
            );
        }
        Ok(())
    }

    /// Takes (and clears) the request left on `name`, if any.
    pub fn take_request(&self, name: &str) -> anyhow::Result<Option<String>> {
        let mut conn = self.store.lock();
        let tx = conn.transaction()?;
        let requested: Option<String> =
            tx.query_row("SELECT requested FROM plugins WHERE name = ?1", params![name], |r| r.get(0)).optional()?.flatten();
        if requested.is_some() {
            tx.execute("UPDATE plugins SET requested = NULL WHERE name = ?1", params![name])?;
        }
        tx.commit()?;
        Ok(requested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_request_is_taken_once() {
        let store = Store::in_memory().unwrap();
        let table = store.plugin_table();
        let e = table.request("keep-n", "release").unwrap_err().to_string();
        assert!(e.contains("no plugin named `keep-n`") && e.contains("none yet"), "{e}");
        let r = PluginRecord {
            name: "keep-n".into(),
            state: PluginState::Quarantined,
            reason: Some("trapped 3 times in a row".into()),
            kind: Some("retention".into()),
            contract_version: Some("0.1.0".into()),
            declared_name: Some("gitlab-retention".into()),
            declared_version: Some("0.1.0".into()),
            sha256: Some("ab".repeat(32)),
            from_compile_cache: true,
            loaded_at: Some(Timestamp::from_unix_micros(1_000_000)),
            policies: vec!["a".into(), "b".into()],
            evaluations: 7,
            failures: 3,
            consecutive_faults: 3,
            updated_at: Timestamp::from_unix_micros(2_000_000),
        };
        table.put(&r).unwrap();
        assert_eq!(table.list().unwrap(), std::slice::from_ref(&r));
        table.request("keep-n", "release").unwrap();
        // Writing the row again keeps the request.
        table.put(&r).unwrap();
        assert_eq!(table.take_request("keep-n").unwrap().as_deref(), Some("release"));
        assert_eq!(table.take_request("keep-n").unwrap(), None);
    }
}
