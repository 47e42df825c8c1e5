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
    /// The file of the daemon's backoff or stale plugin is gone: the version in service keeps
    /// deciding (those decisions delete no tags), until a file is back.
    Removed,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Active => "active",
            PluginState::Pending => "pending",
            PluginState::Failed => "failed",
            PluginState::Quarantined => "quarantined",
            PluginState::Paused => "paused",
            PluginState::Removed => "removed",
        }
    }

    fn parse(s: &str) -> PluginState {
        match s {
            "active" => PluginState::Active,
            "pending" => PluginState::Pending,
            "quarantined" => PluginState::Quarantined,
            "paused" => PluginState::Paused,
            "removed" => PluginState::Removed,
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
    /// Which compiler's code the version in service runs: `baseline` until its optimized
    /// code is compiled in the background (tiered compilation), then `optimized`.
    pub tier: Option<String>,
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
                       from_compile_cache, loaded_at, policies, evaluations, failures, consecutive_faults, updated_at, tier";

impl PluginTable {
    /// Writes `record` (all of it), keeping any request an operator left.
    pub fn put(&self, r: &PluginRecord) -> anyhow::Result<()> {
        let conn = self.store.lock();
        conn.execute(
            &format!(
                "INSERT INTO plugins ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state, reason = excluded.reason, kind = excluded.kind,
                   contract_version = excluded.contract_version, declared_name = excluded.declared_name,
                   declared_version = excluded.declared_version, sha256 = excluded.sha256,
                   from_compile_cache = excluded.from_compile_cache, loaded_at = excluded.loaded_at,
                   policies = excluded.policies, evaluations = excluded.evaluations, failures = excluded.failures,
                   consecutive_faults = excluded.consecutive_faults, updated_at = excluded.updated_at, tier = excluded.tier"
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
                r.tier,
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
                tier: row.get(15)?,
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

/// What became of a canary (`plugin_canaries.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryOutcome {
    /// Under the brake: the new version went into service at once.
    Swapped,
    /// Over the brake: the new version waits for `tagwarden plugins approve`; the old one serves.
    Pending,
    /// An operator approved it: in service.
    Approved,
    /// Another file (or the old one back) replaced it before it was approved.
    Superseded,
}

impl CanaryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryOutcome::Swapped => "swapped",
            CanaryOutcome::Pending => "pending",
            CanaryOutcome::Approved => "approved",
            CanaryOutcome::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> CanaryOutcome {
        match s {
            "swapped" => CanaryOutcome::Swapped,
            "pending" => CanaryOutcome::Pending,
            "approved" => CanaryOutcome::Approved,
            _ => CanaryOutcome::Superseded,
        }
    }
}

impl std::fmt::Display for CanaryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One canary: a new version of plugin `plugin` compared with the one in service.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CanaryRecord {
    /// Set by the store.
    pub id: i64,
    pub plugin: String,
    pub at: Timestamp,
    pub old_sha256: String,
    /// The declared name and version, e.g. `gitlab-retention 0.1.0`.
    pub old_version: String,
    pub new_sha256: String,
    pub new_version: String,
    pub outcome: CanaryOutcome,
    /// `[plugins] canary_max_extra_deletions` when it ran.
    pub max_extra_fraction: f64,
    pub diff: crate::canary::Diff,
}

const CANARY_COLUMNS: &str = "id, plugin, at, old_sha256, old_version, new_sha256, new_version, outcome, max_extra_fraction, diff";

fn canary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(CanaryRecord, String)> {
    let record = CanaryRecord {
        id: row.get(0)?,
        plugin: row.get(1)?,
        at: Timestamp::from_unix_micros(row.get(2)?),
        old_sha256: row.get(3)?,
        old_version: row.get(4)?,
        new_sha256: row.get(5)?,
        new_version: row.get(6)?,
        outcome: CanaryOutcome::parse(&row.get::<_, String>(7)?),
        max_extra_fraction: row.get(8)?,
        diff: crate::canary::Diff::default(),
    };
    Ok((record, row.get(9)?))
}

impl PluginTable {
    /// Records a canary; returns its id.
    pub fn record_canary(&self, r: &CanaryRecord) -> anyhow::Result<i64> {
        let diff = serde_json::to_string(&r.diff)?;
        let conn = self.store.lock();
        conn.execute(
            "INSERT INTO plugin_canaries (plugin, at, old_sha256, old_version, new_sha256, new_version, outcome, max_extra_fraction, diff)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                r.plugin,
                r.at.unix_micros(),
                r.old_sha256,
                r.old_version,
                r.new_sha256,
                r.new_version,
                r.outcome.as_str(),
                r.max_extra_fraction,
                diff
            ],
        )
        .map_err(|e| {
            anyhow::Error::from(e).context(format!("recording the canary of plugin `{}` in {}", r.plugin, self.store.describe()))
        })?;
        Ok(conn.last_insert_rowid())
    }

    /// Sets what became of canary `id`.
    pub fn set_canary_outcome(&self, id: i64, outcome: CanaryOutcome) -> anyhow::Result<()> {
        self.store
            .lock()
            .execute("UPDATE plugin_canaries SET outcome = ?2 WHERE id = ?1", params![id, outcome.as_str()])
            .map_err(|e| anyhow::Error::from(e).context(format!("recording a canary's outcome in {}", self.store.describe())))?;
        Ok(())
    }

    /// Plugin `name`'s latest canary; with `pending_sha256`, its latest canary still waiting
    /// for approval of that version.
    pub fn latest_canary(&self, name: &str, pending_sha256: Option<&str>) -> anyhow::Result<Option<CanaryRecord>> {
        let found = {
            let conn = self.store.lock();
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CANARY_COLUMNS} FROM plugin_canaries
                 WHERE plugin = ?1 AND (?2 IS NULL OR (outcome = 'pending' AND new_sha256 = ?2)) ORDER BY id DESC LIMIT 1"
            ))?;
            stmt.query_row(params![name, pending_sha256], canary_row).optional()?
        };
        let Some((mut record, diff)) = found else { return Ok(None) };
        record.diff = serde_json::from_str(&diff).map_err(|e| {
            anyhow::anyhow!("canary {} of plugin `{name}` in {}: unreadable difference: {e}", record.id, self.store.describe())
        })?;
        Ok(Some(record))
    }
}

impl Store {
    /// Up to `limit` repositories of the state under `policies`, with their policy: those
    /// cleaned most recently first, then by path (what the canary compares on).
    pub fn canary_sample(&self, policies: &[String], limit: usize) -> anyhow::Result<Vec<(String, String)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT path, policy FROM repositories WHERE policy IN (SELECT value FROM json_each(?1))
             ORDER BY completed_at IS NULL, completed_at DESC, path LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![serde_json::to_string(policies)?, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("reading the canary's repositories in {}: {e}", self.describe()))
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
            tier: Some("baseline".into()),
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

    #[test]
    fn canaries_read_back_latest_first_and_pending_by_version() {
        use crate::canary::{Diff, RepositoryDiff};
        let store = Store::in_memory().unwrap();
        let table = store.plugin_table();
        assert_eq!(table.latest_canary("keep-n", None).unwrap(), None);
        let mut diff = Diff::default();
        diff.push(RepositoryDiff::not_compared("a/b", Some("p"), "gone".into(), false));
        let mut r = CanaryRecord {
            id: 0,
            plugin: "keep-n".into(),
            at: Timestamp::from_unix_micros(1_000_000),
            old_sha256: "aa".repeat(32),
            old_version: "gitlab-retention 0.1.0".into(),
            new_sha256: "bb".repeat(32),
            new_version: "gitlab-retention 0.2.0".into(),
            outcome: CanaryOutcome::Pending,
            max_extra_fraction: 0.05,
            diff,
        };
        r.id = table.record_canary(&r).unwrap();
        assert_eq!(table.latest_canary("keep-n", None).unwrap().as_ref(), Some(&r));
        assert_eq!(table.latest_canary("keep-n", Some(&"bb".repeat(32))).unwrap().map(|c| c.id), Some(r.id));
        assert_eq!(table.latest_canary("keep-n", Some(&"cc".repeat(32))).unwrap(), None);
        table.set_canary_outcome(r.id, CanaryOutcome::Approved).unwrap();
        assert_eq!(table.latest_canary("keep-n", Some(&"bb".repeat(32))).unwrap(), None);
        assert_eq!(table.latest_canary("keep-n", None).unwrap().unwrap().outcome, CanaryOutcome::Approved);

        // The sample: the policies' repositories, most recently cleaned first.
        use crate::store::{CleanupOutcome, StateStore};
        store.add_repositories("p", &["r/1".into(), "r/2".into(), "r/3".into()]).unwrap();
        store.add_repositories("other", &["x/1".into()]).unwrap();
        let now = Timestamp::from_unix_micros(10_000_000);
        store.upsert_policy("p", true, std::time::Duration::from_secs(60), Timestamp::from_unix_micros(0)).unwrap();
        let claim = store.claim_next(now, "me", std::time::Duration::from_secs(60)).unwrap().unwrap();
        store.finish_claim(&claim.path, "me", &CleanupOutcome::Done { deleted: 0 }, now).unwrap();
        let sample = store.canary_sample(&["p".into()], 2).unwrap();
        assert_eq!(sample.len(), 2);
        assert_eq!(sample[0], (claim.path.clone(), "p".to_owned()));
        assert!(sample.iter().all(|(path, policy)| path.starts_with("r/") && policy == "p"), "{sample:?}");
    }
}
