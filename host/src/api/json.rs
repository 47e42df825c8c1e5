//! The JSON shapes of the state, shared by the API and the CLI's `--output json`, so both
//! describe a repository, a run or an audit row with the same fields.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::model::Timestamp;
use crate::owner::{self, Liveness};
use crate::store::{
    AuditRecord, CanaryRecord, CleanupStatus, DeletionState, DeletionStatus, LastFailure, PluginRecord, RepositoryState, RunRecord,
    RunTotals, StateStore, Store,
};

/// What `tagwarden status` and the API's overview show.
pub struct Overview {
    pub repositories: Vec<(CleanupStatus, usize)>,
    pub deletions: BTreeMap<&'static str, usize>,
    /// Leases held by a process that is alive (or on another host, as far as this one knows).
    pub workers_busy: usize,
    pub last_24h: RunTotals,
    /// Repositories failing now (a failure in a row, or given up), by error class.
    pub failing_by_class: BTreeMap<String, usize>,
    /// Imports to a GitLab-compatible registry by state (states with none left out).
    pub imports: BTreeMap<&'static str, usize>,
}

/// Reads the [`Overview`] from the state.
pub fn overview(store: &Store, state: &dyn StateStore) -> anyhow::Result<Overview> {
    let mut deletions: BTreeMap<&'static str, usize> = DeletionStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for d in state.deletions(None)? {
        *deletions.entry(d.status.as_str()).or_default() += 1;
    }
    let workers_busy = state.leases()?.iter().filter(|l| l.owner.as_deref().is_some_and(|o| owner::liveness(o) != Liveness::Gone)).count();
    let mut failing_by_class: BTreeMap<String, usize> = BTreeMap::new();
    for r in state.repositories(None)? {
        if let (true, Some(f)) = (r.consecutive_failures > 0 || r.status == CleanupStatus::Failed, &r.last_failure) {
            *failing_by_class.entry(f.class.clone()).or_default() += 1;
        }
    }
    Ok(Overview {
        repositories: state.status_counts()?,
        deletions,
        workers_busy,
        last_24h: store.runs().since(Timestamp::now().saturating_sub(Duration::from_secs(86_400)))?,
        failing_by_class,
        imports: store.imports().counts()?.into_iter().filter(|(_, n)| *n > 0).map(|(s, n)| (s.as_str(), n)).collect(),
    })
}

impl Overview {
    /// The overview with the plugins in use (role → plugin).
    pub fn to_json(&self, plugins: &BTreeMap<String, String>) -> Value {
        let day = &self.last_24h;
        json!({
            "repositories": self.repositories.iter().map(|(s, n)| (s.as_str(), n)).collect::<BTreeMap<_, _>>(),
            "deletions": self.deletions,
            "workers_busy": self.workers_busy,
            "last_24h": {"runs": day.runs, "tags_deleted": day.tags_deleted, "failed_runs": day.failed_runs},
            "failing_by_class": self.failing_by_class,
            "imports": self.imports,
            "plugins": plugins,
        })
    }
}

/// A repository's or a deletion's last failure.
pub fn failure_json(f: &Option<LastFailure>) -> Value {
    f.as_ref().map_or(Value::Null, |f| json!({"class": f.class, "http_status": f.http_status, "reason": f.reason, "at": f.at}))
}

/// A repository's cleanup state.
pub fn repository_json(r: &RepositoryState) -> Value {
    json!({
        "path": r.path, "policy": r.policy, "status": r.status.as_str(),
        "started_at": r.started_at, "completed_at": r.completed_at,
        "next_attempt_at": r.next_attempt_at, "consecutive_failures": r.consecutive_failures,
        "last_deleted": r.last_deleted, "lease_owner": r.lease_owner, "lease_expires_at": r.lease_expires_at,
        "last_failure": failure_json(&r.last_failure),
    })
}

/// A repository deletion's state.
pub fn deletion_json(d: &DeletionState) -> Value {
    json!({
        "path": d.path, "status": d.status.as_str(), "requested_at": d.requested_at, "started_at": d.started_at,
        "completed_at": d.completed_at, "next_attempt_at": d.next_attempt_at, "consecutive_failures": d.consecutive_failures,
        "tags_deleted": d.tags_deleted, "lease_owner": d.lease_owner, "last_failure": failure_json(&d.last_failure),
    })
}

/// A recorded pass.
pub fn run_json(r: &RunRecord) -> Value {
    json!({
        "id": r.id, "repository": r.repository, "policy": r.policy, "decided_by": r.decided_by,
        "started_at": r.started_at, "finished_at": r.finished_at, "status": r.status,
        "tags_seen": r.tags_seen, "tags_to_delete": r.tags_to_delete, "tags_deleted": r.tags_deleted,
        "failed": r.failed, "detail": r.detail,
    })
}

/// An audit row.
pub fn audit_json(r: &AuditRecord) -> Value {
    json!({
        "id": r.id, "at": r.at, "registry": r.registry, "repository": r.repository, "operation": r.operation,
        "digest": r.digest, "tags": r.tags, "decided_by": r.decided_by, "outcome": r.outcome, "detail": r.detail,
        "run_id": r.run_id,
    })
}

/// A plugin of `[plugins] dir` as `plugins list --output json` and `GET /api/v1/plugins`
/// show it: its row, and its latest canary (`null` when none ran) with the extra deletions
/// against the brake.
pub fn directory_plugin(record: &PluginRecord, canary: Option<&CanaryRecord>) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    v["canary"] = canary.map_or(Value::Null, |c| {
        json!({
            "at": c.at.to_rfc3339(),
            "outcome": c.outcome.as_str(),
            "old_version": c.old_version,
            "old_sha256": c.old_sha256,
            "new_version": c.new_version,
            "new_sha256": c.new_sha256,
            "tags": c.diff.tags,
            "extra_deletions": c.diff.extra_deletions,
            "fewer_deletions": c.diff.fewer_deletions,
            "extra_fraction": c.diff.extra_fraction(),
            "max_extra_fraction": c.max_extra_fraction,
            "new_failed": c.diff.new_failed,
            "not_compared": c.diff.not_compared,
            "brake": c.diff.against_brake(c.max_extra_fraction),
            "summary": c.diff.summary(),
        })
    });
    v
}
