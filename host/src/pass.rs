//! One cleanup pass over one repository: list → evaluate → guard → delete → report.
//!
//! [`plan`] is the decision half (pure apart from the plugin call) and is what `eval`
//! shows; [`run_repository`] adds listing and deletion and is what `run --once` and the
//! daemon call. There is no second evaluator.
//!
//! Safety, in order: the plugin's answer is validated by the runtime (no partial
//! answers); host protection rules override it; the delete-fraction guard may refuse
//! the whole repository; [`DeletionPlan`] proves no kept tag loses its digest; every
//! deletion is written to the audit log before it is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use regex::Regex;
use serde::Serialize;

use crate::backend::Backend;
use crate::deletion::{DeletionPlan, DigestDeletion, TagDeletion};
use crate::model::{Action, Digest, ErrorClass, RetentionDecisions, TagList, Timestamp};
use crate::registry::{DeleteOutcome, RegistryError, TagDeleteOutcome};
use crate::runtime::{ConfiguredPolicy, PluginError, RetentionPlugin};
use crate::store::{AuditEntry, AuditLog, AuditOperation, AuditOutcome};

/// Host-level rules no plugin can override.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    /// Tag names matching any of these (whole name) are always kept.
    pub protect: Vec<Regex>,
    /// Refuse a repository whose plan deletes more than this fraction of its tags.
    pub max_delete_fraction: Option<f64>,
}

impl Guards {
    /// Compiles protection patterns; each matches the whole tag name.
    pub fn new(protect: &[String], max_delete_fraction: Option<f64>) -> anyhow::Result<Self> {
        let protect = protect
            .iter()
            .map(|p| {
                Regex::new(&format!(r"\A(?:{p})\z")).map_err(|e| anyhow::anyhow!("protection pattern `{p}` is not a valid regex: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Guards { protect, max_delete_fraction })
    }
}

/// A named retention policy: its plugin configured with the operator's params. Clones
/// share the configured plugin, and with it the instances it keeps warm.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub retention: Arc<ConfiguredPolicy>,
}

impl Policy {
    /// Configures `plugin` with `params` (JSON text), which the plugin validates.
    pub fn new(name: impl Into<String>, plugin: &RetentionPlugin, params: &str) -> Result<Self, PluginError> {
        Ok(Policy { name: name.into(), retention: Arc::new(plugin.configure(params)?) })
    }

    /// Who decided, for the audit log and reports.
    pub fn decided_by(&self) -> String {
        let m = self.retention.plugin().plugin().meta();
        format!("policy {} ({} {} sha256:{})", self.name, m.name, m.version, &m.sha256[..12])
    }
}

/// The final verdict for one tag or manifest, after host guards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub action: Action,
    pub reason: String,
    /// `plugin` or `host` (a protection rule overrode the plugin).
    pub decided_by: &'static str,
}

/// What a pass would do to one repository.
#[derive(Debug, Clone)]
pub struct RepositoryPlan {
    pub list: TagList,
    pub tags: Vec<Verdict>,
    pub untagged: Vec<Verdict>,
    pub deletion: DeletionPlan,
    /// Set when a guard refuses the repository: nothing is deleted.
    pub refusal: Option<String>,
}

impl RepositoryPlan {
    pub fn tags_to_delete(&self) -> usize {
        self.tags.iter().filter(|v| v.action == Action::Delete).count()
    }
}

/// Applies host guards to a plugin's decisions and plans the deletions.
pub fn apply_guards(list: TagList, decisions: &RetentionDecisions, guards: &Guards) -> anyhow::Result<RepositoryPlan> {
    let tags: Vec<Verdict> = list
        .tags()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let rule = decisions.tag(i);
            if rule.action == Action::Delete
                && let Some(p) = guards.protect.iter().find(|p| p.is_match(&t.name))
            {
                let pattern = p.as_str().trim_start_matches(r"\A(?:").trim_end_matches(r")\z");
                return Verdict { action: Action::Keep, reason: format!("protected by host rule `{pattern}`"), decided_by: "host" };
            }
            Verdict { action: rule.action, reason: rule.reason.clone(), decided_by: "plugin" }
        })
        .collect();
    let tag_actions: Vec<Action> = tags.iter().map(|v| v.action).collect();
    let plugin_untagged: Vec<Action> = (0..list.untagged().len()).map(|i| decisions.untagged(i).action).collect();
    // An untagged manifest that an index which stays references (a platform image of a
    // kept multi-arch tag) is kept whatever the plugin said.
    let referenced = crate::deletion::referenced_by_staying_indexes(&list, &tag_actions, &plugin_untagged);
    let untagged: Vec<Verdict> = list
        .untagged()
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let rule = decisions.untagged(i);
            match referenced.get(&u.digest) {
                Some(index) if rule.action == Action::Delete => {
                    Verdict { action: Action::Keep, reason: format!("referenced by index {index}, which stays"), decided_by: "host" }
                }
                _ => Verdict { action: rule.action, reason: rule.reason.clone(), decided_by: "plugin" },
            }
        })
        .collect();
    let untagged_actions: Vec<Action> = untagged.iter().map(|v| v.action).collect();
    let deletion = DeletionPlan::new(&list, &tag_actions, &untagged_actions)?;
    let to_delete = tag_actions.iter().filter(|a| **a == Action::Delete).count();
    let refusal = guards.max_delete_fraction.and_then(|max| {
        let total = list.tags().len();
        let fraction = if total == 0 { 0.0 } else { to_delete as f64 / total as f64 };
        (fraction > max).then(|| {
            format!(
                "the plan deletes {to_delete} of {total} tags ({:.0}%), more than `max_delete_fraction` allows ({:.0}%); nothing was deleted",
                fraction * 100.0,
                max * 100.0
            )
        })
    });
    Ok(RepositoryPlan { list, tags, untagged, deletion, refusal })
}

/// Evaluates `policy` over `list` and applies the guards: the decision half of a pass.
pub fn plan(policy: &Policy, list: TagList, now: Timestamp, guards: &Guards) -> Result<RepositoryPlan, PassError> {
    let decisions = policy.retention.evaluate(&list, now).map_err(PassError::Plugin)?;
    apply_guards(list, &decisions, guards).map_err(|e| PassError::Plan(format!("{e:#}")))
}

/// Why a repository's pass produced no plan.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{0}")]
    Plugin(PluginError),
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Registry(RegistryError),
}

/// Limits of the deletion half.
#[derive(Debug, Clone)]
pub struct DeletionLimits {
    /// Budget for one repository's deletions (GitLab's delete timeout).
    pub timeout: Duration,
    /// Deletes in flight at once.
    pub concurrency: usize,
}

/// Everything a pass needs besides the policy.
pub struct PassContext {
    pub backend: Backend,
    pub audit: AuditLog,
    pub guards: Guards,
    pub limits: DeletionLimits,
    pub dry_run: bool,
    pub now: Timestamp,
}

/// Progress of one repository, for a progress line.
#[derive(Debug, Clone)]
pub enum Progress {
    Listing { done: usize, total: usize },
    Evaluating { tags: usize },
    Deleting { done: usize, total: usize },
}

/// How a repository's pass ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum RepositoryStatus {
    /// Everything the plan asked for is done (possibly nothing).
    #[default]
    Completed,
    /// The repository does not exist in the registry: a success with nothing to do.
    NotFound,
    /// `--dry-run`: the plan was made, nothing deleted.
    Planned,
    /// A guard refused the plan; nothing deleted.
    Refused(String),
    /// Stopped early (time budget, transient errors); resume later.
    Unfinished(String),
    /// Could not proceed (plugin failure, permanent registry error).
    Failed(String),
}

impl RepositoryStatus {
    /// Whether this counts as success for an exit code.
    pub fn is_success(&self) -> bool {
        matches!(self, RepositoryStatus::Completed | RepositoryStatus::NotFound | RepositoryStatus::Planned)
    }

    pub fn label(&self) -> &'static str {
        match self {
            RepositoryStatus::Completed => "completed",
            RepositoryStatus::NotFound => "not found (nothing to do)",
            RepositoryStatus::Planned => "planned (dry run)",
            RepositoryStatus::Refused(_) => "refused",
            RepositoryStatus::Unfinished(_) => "unfinished",
            RepositoryStatus::Failed(_) => "failed",
        }
    }
}

/// The result of one repository's pass.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryReport {
    pub repository: String,
    pub policy: String,
    #[serde(flatten)]
    pub status: RepositoryStatus,
    pub tags_seen: usize,
    pub tags_to_delete: usize,
    pub tags_deleted: usize,
    pub manifests_deleted: usize,
    pub failed: usize,
    /// Tags whose deletion was attempted or due but did not happen (failed, or not
    /// attempted before the time budget ran out). Empty for refused and dry-run passes.
    pub not_deleted: Vec<String>,
    pub errors: Vec<String>,
    pub elapsed_ms: u128,
    #[serde(skip)]
    pub plan: Option<RepositoryPlan>,
}

impl RepositoryReport {
    fn new(repository: &str, policy: &str) -> Self {
        RepositoryReport {
            repository: repository.to_owned(),
            policy: policy.to_owned(),
            status: RepositoryStatus::Completed,
            tags_seen: 0,
            tags_to_delete: 0,
            tags_deleted: 0,
            manifests_deleted: 0,
            failed: 0,
            not_deleted: vec![],
            errors: vec![],
            elapsed_ms: 0,
            plan: None,
        }
    }
}

/// Runs one repository's pass. Never panics on registry or plugin failures: they end
/// up in the report's status.
pub async fn run_repository(
    ctx: &PassContext,
    policy: &Policy,
    repository: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> RepositoryReport {
    let started = Instant::now();
    let mut report = RepositoryReport::new(repository, &policy.name);
    let listing = ctx.backend.tag_list(repository, &|done, total| progress(Progress::Listing { done, total })).await;
    let list = match listing {
        // Seed 001: a repository gone from the registry is done, not retried forever.
        Ok(None) => {
            report.status = RepositoryStatus::NotFound;
            report.elapsed_ms = started.elapsed().as_millis();
            return report;
        }
        Ok(Some(list)) => list,
        Err(e) => {
            report.status = status_for_error(&e, "listing tags");
            report.errors.push(e.to_string());
            report.elapsed_ms = started.elapsed().as_millis();
            return report;
        }
    };
    report.tags_seen = list.tags().len();
    progress(Progress::Evaluating { tags: list.tags().len() });
    // Evaluation is CPU-bound: keep it off the async workers' hot path.
    let planned = tokio::task::block_in_place(|| plan(policy, list, ctx.now, &ctx.guards));
    let plan = match planned {
        Ok(p) => p,
        Err(e) => {
            report.status = RepositoryStatus::Failed(format!("{e}; nothing was deleted"));
            report.errors.push(e.to_string());
            report.elapsed_ms = started.elapsed().as_millis();
            return report;
        }
    };
    report.tags_to_delete = plan.tags_to_delete();
    if let Some(refusal) = &plan.refusal {
        report.status = RepositoryStatus::Refused(refusal.clone());
    } else if ctx.dry_run {
        report.status = RepositoryStatus::Planned;
    } else if !plan.deletion.is_empty() {
        let outcome = execute(ctx, policy, repository, &plan.list, &plan.deletion, progress).await;
        report.tags_deleted = outcome.tags_deleted;
        report.manifests_deleted = outcome.manifests_deleted;
        report.failed = outcome.failed;
        report.not_deleted = outcome.not_deleted;
        report.errors = outcome.errors;
        report.status = outcome.status;
    }
    report.plan = Some(plan);
    report.elapsed_ms = started.elapsed().as_millis();
    report
}

fn status_for_error(e: &RegistryError, doing: &str) -> RepositoryStatus {
    let msg = format!("{doing}: {e}");
    if e.class.is_retryable() { RepositoryStatus::Unfinished(msg) } else { RepositoryStatus::Failed(msg) }
}

#[derive(Default)]
struct Execution {
    tags_deleted: usize,
    manifests_deleted: usize,
    failed: usize,
    not_deleted: Vec<String>,
    errors: Vec<String>,
    status: RepositoryStatus,
}

/// One deletion's result.
enum Done {
    /// Gone from the registry; `proved` when this request deleted it (a 404 proves
    /// nothing about whether deletes work).
    Deleted {
        proved: bool,
    },
    Failed {
        message: String,
        class: ErrorClass,
    },
    /// Not attempted: the time budget ran out first.
    Skipped,
}

/// Carries out a deletion plan within the time budget.
async fn execute(
    ctx: &PassContext,
    policy: &Policy,
    repository: &str,
    list: &TagList,
    plan: &DeletionPlan,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Execution {
    let deadline = Instant::now() + ctx.limits.timeout;
    let decided_by = policy.decided_by();
    let registry = ctx.backend.label();
    let total = plan.digests.len() + plan.shared_tags.len();
    let done_count = AtomicUsize::new(0);
    let tick = || {
        let done = done_count.fetch_add(1, Ordering::Relaxed) + 1;
        progress(Progress::Deleting { done, total });
    };
    let mut ex = Execution::default();
    let mut permanent: Option<String> = None;
    let mut deletes_work = false;

    // 1. Whole manifests. The first goes alone: if deletes are disabled or forbidden,
    //    that one answer stops the pass before anything else is tried.
    let (registry, decided_by) = (registry.as_str(), decided_by.as_str());
    let delete_digest = |d| delete_manifest(ctx, repository, registry, decided_by, deadline, d);
    let record_digest = |ex: &mut Execution, d: &DigestDeletion, done: Done, permanent: &mut Option<String>, deletes_work: &mut bool| {
        match done {
            Done::Deleted { proved } => {
                *deletes_work |= proved;
                ex.tags_deleted += d.tags.len();
                ex.manifests_deleted += 1;
            }
            Done::Failed { message, class } => {
                ex.failed += d.tags.len().max(1);
                ex.not_deleted.extend(d.tags.iter().cloned());
                if !class.is_retryable() {
                    permanent.get_or_insert_with(|| message.clone());
                }
                ex.errors.push(message);
            }
            Done::Skipped => ex.not_deleted.extend(d.tags.iter().cloned()),
        }
        tick();
    };
    let mut digests = plan.digests.iter();
    if let Some(first) = digests.next() {
        let done = delete_digest(first).await;
        record_digest(&mut ex, first, done, &mut permanent, &mut deletes_work);
    }
    if permanent.is_none() {
        let mut results =
            futures::stream::iter(digests.map(|d| async move { (d, delete_digest(d).await) })).buffer_unordered(ctx.limits.concurrency);
        while let Some((d, done)) = results.next().await {
            record_digest(&mut ex, d, done, &mut permanent, &mut deletes_work);
        }
    } else {
        for d in digests {
            ex.not_deleted.extend(d.tags.iter().cloned());
        }
    }

    // 2. Tags that share a digest with a kept tag.
    if !plan.shared_tags.is_empty() {
        if let Some(reason) = &permanent {
            ex.not_deleted.extend(plan.shared_tags.iter().map(|t| t.tag.clone()));
            ex.errors.push(format!("{} shared-digest tags not attempted after: {reason}", plan.shared_tags.len()));
        } else {
            let shared =
                remove_shared_tags(ctx, repository, list, &plan.shared_tags, deadline, deletes_work, decided_by, registry, &tick).await;
            ex.tags_deleted += shared.removed;
            ex.failed += shared.failed;
            ex.not_deleted.extend(shared.not_removed);
            if let Some(e) = shared.permanent {
                permanent.get_or_insert(e.clone());
                ex.errors.push(e);
            }
            ex.errors.extend(shared.errors);
        }
    }

    ex.status = if let Some(reason) = permanent {
        RepositoryStatus::Failed(reason)
    } else if ex.failed > 0 {
        RepositoryStatus::Unfinished(format!("{} deletions failed; they will be retried", ex.failed))
    } else if !ex.not_deleted.is_empty() {
        RepositoryStatus::Unfinished(format!(
            "delete timeout of {} reached with {} tags not yet deleted",
            humantime::format_duration(ctx.limits.timeout),
            ex.not_deleted.len()
        ))
    } else {
        RepositoryStatus::Completed
    };
    ex
}

/// Deletes one manifest by digest, audited, unless the budget is spent.
async fn delete_manifest(
    ctx: &PassContext,
    repository: &str,
    registry: &str,
    decided_by: &str,
    deadline: Instant,
    d: &DigestDeletion,
) -> Done {
    if Instant::now() >= deadline {
        return Done::Skipped;
    }
    let entry = AuditEntry {
        registry,
        repository,
        operation: AuditOperation::DeleteManifest,
        digest: d.digest.as_str(),
        tags: &d.tags,
        decided_by,
    };
    let id = match ctx.audit.attempt(&entry) {
        Ok(id) => id,
        // No audit record, no deletion: an unwritable audit log stops the pass.
        Err(e) => return Done::Failed { message: format!("{e:#}"), class: ErrorClass::Permanent },
    };
    let result = ctx.backend.delete_manifest(repository, &d.digest).await;
    let (outcome, detail) = match &result {
        Ok(DeleteOutcome::Deleted) => (AuditOutcome::Deleted, None),
        Ok(DeleteOutcome::AlreadyGone) => (AuditOutcome::AlreadyGone, None),
        Err(e) => (AuditOutcome::Failed, Some(e.to_string())),
    };
    let _ = ctx.audit.finish(id, outcome, detail.as_deref());
    match result {
        Ok(outcome) => Done::Deleted { proved: outcome == DeleteOutcome::Deleted },
        Err(e) => Done::Failed { message: e.to_string(), class: e.class },
    }
}

#[derive(Default)]
struct SharedOutcome {
    removed: usize,
    failed: usize,
    not_removed: Vec<String>,
    errors: Vec<String>,
    permanent: Option<String>,
}

/// Removes tags whose digest must stay: the registry's tag delete where supported,
/// else GitLab's dummy-manifest method, used only once deletes are known to work.
#[allow(clippy::too_many_arguments)]
async fn remove_shared_tags(
    ctx: &PassContext,
    repository: &str,
    list: &TagList,
    tags: &[TagDeletion],
    deadline: Instant,
    deletes_work: bool,
    decided_by: &str,
    registry: &str,
    tick: &(dyn Fn() + Sync),
) -> SharedOutcome {
    let mut out = SharedOutcome::default();
    let audit_attempt = |op: AuditOperation, t: &TagDeletion| {
        ctx.audit.attempt(&AuditEntry {
            registry,
            repository,
            operation: op,
            digest: t.digest.as_str(),
            tags: std::slice::from_ref(&t.tag),
            decided_by,
        })
    };

    // Try the OCI 1.1 tag delete; the client remembers "unsupported" per registry.
    let mut remaining: Vec<&TagDeletion> = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        if Instant::now() >= deadline {
            out.not_removed.extend(tags[i..].iter().map(|t| t.tag.clone()));
            return out;
        }
        let id = match audit_attempt(AuditOperation::DeleteTag, t) {
            Ok(id) => id,
            Err(e) => {
                out.failed += 1;
                out.not_removed.push(t.tag.clone());
                out.errors.push(format!("{e:#}"));
                continue;
            }
        };
        match ctx.backend.delete_tag(repository, &t.tag).await {
            Ok(TagDeleteOutcome::Deleted) => {
                let _ = ctx.audit.finish(id, AuditOutcome::Deleted, None);
                out.removed += 1;
                tick();
            }
            Ok(TagDeleteOutcome::AlreadyGone) => {
                let _ = ctx.audit.finish(id, AuditOutcome::AlreadyGone, None);
                out.removed += 1;
                tick();
            }
            Ok(TagDeleteOutcome::Unsupported) => {
                let _ = ctx.audit.finish(
                    id,
                    AuditOutcome::Failed,
                    Some("tag delete unsupported by this registry; using the dummy-manifest method"),
                );
                remaining.extend(&tags[i..]);
                break;
            }
            Err(e) => {
                let _ = ctx.audit.finish(id, AuditOutcome::Failed, Some(&e.to_string()));
                out.failed += 1;
                out.not_removed.push(t.tag.clone());
                if !e.class.is_retryable() {
                    out.permanent = Some(e.to_string());
                    out.not_removed.extend(tags[i + 1..].iter().map(|t| t.tag.clone()));
                    return out;
                }
                out.errors.push(e.to_string());
                tick();
            }
        }
    }
    if remaining.is_empty() {
        return out;
    }
    let Some(client) = ctx.backend.registry() else {
        out.not_removed.extend(remaining.iter().map(|t| t.tag.clone()));
        out.permanent = Some("this backend can neither delete single tags nor use the dummy-manifest method".into());
        return out;
    };
    match dummy::untag(client, repository, list, &remaining, deadline, deletes_work, &ctx.audit, decided_by, registry, tick).await {
        Ok(d) => {
            out.removed += d.removed;
            out.failed += d.failed;
            out.not_removed.extend(d.not_removed);
            out.errors.extend(d.errors);
        }
        Err(e) => {
            out.not_removed.extend(remaining.iter().map(|t| t.tag.clone()));
            out.failed += remaining.len();
            // Only an error retrying cannot fix fails the repository; the rest waits
            // for the next pass.
            if e.class.is_retryable() {
                out.errors.push(e.message);
            } else {
                out.permanent = Some(e.message);
            }
        }
    }
    out
}

/// GitLab's way to remove one tag of several on a digest, for registries without tag
/// delete: point the tag at a tiny dummy manifest, then delete the dummy by digest.
mod dummy {
    use super::*;
    use crate::registry::RegistryClient;

    /// A fixed, layer-less image: the same bytes (and digest) everywhere.
    const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","config":{"Labels":{"org.tagwarden.dummy":"true"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";

    fn manifest() -> Vec<u8> {
        let config = Digest::sha256_of(CONFIG);
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"{CONFIG_TYPE}","size":{},"digest":"{config}"}},"layers":[]}}"#,
            CONFIG.len()
        )
        .into_bytes()
    }

    pub(super) struct Untagged {
        pub removed: usize,
        pub failed: usize,
        pub not_removed: Vec<String>,
        pub errors: Vec<String>,
    }

    /// Why the method could not run at all, classified like the error behind it.
    pub(super) struct UntagError {
        pub message: String,
        pub class: ErrorClass,
    }

    fn fail(context: &str, e: RegistryError) -> UntagError {
        UntagError { message: format!("{context}: {e}"), class: e.class }
    }

    /// Moves `tags` onto the dummy manifest and deletes it. Errors (as an operator
    /// message) before moving anything when deletes cannot be shown to work, so no tag
    /// is ever left on a dummy that cannot be deleted.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn untag(
        client: &RegistryClient,
        repository: &str,
        list: &TagList,
        tags: &[&TagDeletion],
        deadline: Instant,
        deletes_work: bool,
        audit: &AuditLog,
        decided_by: &str,
        registry: &str,
        tick: &(dyn Fn() + Sync),
    ) -> Result<Untagged, UntagError> {
        let body = manifest();
        let dummy = Digest::sha256_of(&body);
        if let Some(kept) = list.tags().iter().find(|t| t.digest == dummy && !tags.iter().any(|d| d.tag == t.name)) {
            return Err(UntagError {
                message: format!(
                    "tag `{}` points at tagwarden's dummy manifest {dummy}; refusing to use the dummy-manifest method",
                    kept.name
                ),
                class: ErrorClass::Permanent,
            });
        }
        client.push_blob(repository, CONFIG.to_vec()).await.map_err(|e| fail("uploading the dummy config", e))?;
        if !deletes_work {
            // Prove deletes work with an untagged copy of the dummy before moving tags.
            client
                .put_manifest(repository, dummy.as_str(), MANIFEST_TYPE, body.clone())
                .await
                .map_err(|e| fail("pushing the dummy manifest", e))?;
            client.delete_manifest(repository, &dummy).await.map_err(|e| {
                let context = if e.class.is_retryable() {
                    "could not confirm that deletes work (no tag was moved onto a dummy manifest)"
                } else {
                    "deletes do not work on this registry, so no tag was moved onto a dummy manifest"
                };
                fail(context, e)
            })?;
        }
        let mut out = Untagged { removed: 0, failed: 0, not_removed: vec![], errors: vec![] };
        let mut moved: Vec<(&TagDeletion, i64)> = Vec::new();
        for (i, t) in tags.iter().enumerate() {
            if Instant::now() >= deadline {
                out.not_removed.extend(tags[i..].iter().map(|t| t.tag.clone()));
                break;
            }
            let entry = AuditEntry {
                registry,
                repository,
                operation: AuditOperation::UntagViaDummy,
                digest: t.digest.as_str(),
                tags: std::slice::from_ref(&t.tag),
                decided_by,
            };
            let id = audit.attempt(&entry).map_err(|e| UntagError { message: format!("{e:#}"), class: ErrorClass::Permanent })?;
            match client.put_manifest(repository, &t.tag, MANIFEST_TYPE, body.clone()).await {
                Ok(_) => moved.push((t, id)),
                Err(e) => {
                    let _ = audit.finish(id, AuditOutcome::Failed, Some(&e.to_string()));
                    out.not_removed.push(t.tag.clone());
                    out.failed += 1;
                    out.errors.push(e.to_string());
                }
            }
        }
        if moved.is_empty() {
            return Ok(out);
        }
        // Always finish what was started, even past the budget: the moved tags are to
        // be deleted anyway, and this is one request.
        match client.delete_manifest(repository, &dummy).await {
            Ok(_) => {
                for (_, id) in &moved {
                    let _ = audit.finish(*id, AuditOutcome::Deleted, None);
                    out.removed += 1;
                    tick();
                }
                Ok(out)
            }
            Err(e) => {
                for (_, id) in &moved {
                    let _ = audit.finish(*id, AuditOutcome::Failed, Some(&e.to_string()));
                }
                Err(fail(&format!("deleting the dummy manifest {dummy} (tags moved onto it remain until the next pass)"), e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Digest, Rule, Tag, UntaggedManifest};

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn untagged(n: u8) -> UntaggedManifest {
        UntaggedManifest { digest: d(n), created_at: None, pushed_at: None }
    }

    #[test]
    fn untagged_platform_images_of_a_kept_index_are_kept_by_the_host() {
        // `v1` → index 1 over 2 and 3, both listed untagged; 4 is an unrelated untagged image.
        let list = TagList::new("r", vec![Tag::new("v1", d(1))], vec![untagged(2), untagged(3), untagged(4)])
            .unwrap()
            .with_index_children([(d(1), vec![d(2), d(3)])]);
        let rules = vec![Rule { action: Action::Keep, reason: "keep".into() }, Rule { action: Action::Delete, reason: "untagged".into() }];
        let decisions = RetentionDecisions::validate(&list, rules, vec![0], vec![1, 1, 1]).unwrap();
        let plan = apply_guards(list, &decisions, &Guards::default()).unwrap();
        for v in &plan.untagged[..2] {
            assert_eq!((v.action, v.decided_by), (Action::Keep, "host"), "{v:?}");
            assert_eq!(v.reason, format!("referenced by index {}, which stays", d(1)));
        }
        assert_eq!((plan.untagged[2].action, plan.untagged[2].decided_by), (Action::Delete, "plugin"));
        assert_eq!(plan.deletion.digests.iter().map(|x| &x.digest).collect::<Vec<_>>(), [&d(4)]);
    }
}
