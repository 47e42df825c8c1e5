//! The daemon loop behind `tagwarden serve`: sync policies and repositories into the state,
//! recover what a dead predecessor held, then claim repositories in GitLab's order with at
//! most `worker_capacity` passes at once, record how each ended, and move policies to their
//! next run. The passes are [`crate::pass::run_repository`], the same as `run --once`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;

use crate::config::FirstRun;
use crate::model::ErrorClass;
use crate::model::Timestamp;
use crate::owner::{self, Liveness};
use crate::pass::{self, PassContext, Progress, RepositoryReport, RepositoryStatus};
use crate::runtime::{BackoffDecision, BackoffPlugin, Failure, OperationKind, StalePlugin};
use crate::setup::{self, BoundPolicy};
use crate::store::{Claim, CleanupOutcome, StateStore};

/// Longest sleep between looks at the state when nothing is running.
const IDLE_POLL: Duration = Duration::from_secs(30);
/// `--until-idle` exits when nothing becomes claimable sooner than this.
const IDLE_HORIZON: Duration = Duration::from_secs(60);
/// How long running passes get to finish after SIGTERM/SIGINT before they are cut off (a
/// cut-off pass is safe: the next start settles what it left).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Host default backoff until the backoff plugin is wired in: 2^n minutes after the n-th
/// consecutive failure (GitLab's schedule), at most a day.
const BACKOFF_CAP: Duration = Duration::from_secs(86_400);
/// Host default: consecutive failures after which a repository is `cleanup_failed`, for
/// errors retrying may fix (5xx, timeouts) and for those it cannot (401/403, 405, plugin).
const GIVE_UP_RETRYABLE: u32 = 8;
const GIVE_UP_PERMANENT: u32 = 3;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub worker_capacity: usize,
    pub first_run: FirstRun,
    /// Exit once nothing is due, running, or waiting on a backoff shorter than a minute.
    pub until_idle: bool,
    /// How long a claim is held before another process may take it back. A pass is bounded
    /// by the deletion budget; the lease adds room for listing and evaluation.
    pub lease: Duration,
    /// The backoff plugin and its params (JSON); `None`: the host's default schedule.
    pub backoff: Option<(BackoffPlugin, String)>,
    /// The stale plugin and its params (JSON): judges passes that have run too long.
    pub stale: (StalePlugin, String),
}

/// What the daemon reports as it goes (the CLI prints these).
#[derive(Debug)]
pub enum DaemonEvent<'a> {
    Synced { policies: usize, repositories: usize },
    Recovered { path: &'a str },
    PassFinished { report: &'a RepositoryReport, outcome: &'a CleanupOutcome },
    PolicyScheduled { policy: &'a str, next_run_at: Timestamp },
    Idle,
    ShuttingDown { running: usize },
}

/// What a daemon run did, for `--until-idle` callers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DaemonSummary {
    pub passes: usize,
    pub tags_deleted: usize,
    pub recovered: usize,
}

/// Runs the daemon until `shutdown` resolves (or, with `until_idle`, until idle).
pub async fn run<S: StateStore + Clone + 'static>(
    ctx: Arc<PassContext>,
    policies: Arc<Vec<BoundPolicy>>,
    state: S,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
    on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync),
) -> anyhow::Result<DaemonSummary> {
    let me = owner::current();
    let mut summary = DaemonSummary::default();
    sync(&ctx, &policies, &state, &options, on_event).await?;
    summary.recovered = recover(&state, on_event)?;
    let mut running: JoinSet<(Claim, RepositoryReport)> = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let now = Timestamp::now();
        for policy in state.advance_policies(now)? {
            if let Some(p) = state.policy(&policy)? {
                on_event(DaemonEvent::PolicyScheduled { policy: &policy, next_run_at: p.next_run_at });
            }
        }
        while running.len() < options.worker_capacity {
            let Some(claim) = state.claim_next(Timestamp::now(), me, options.lease)? else { break };
            let Some(policy) = setup::policy_by_name(&policies, &claim.policy).cloned() else {
                // The policy left the config: hand the repository back, untouched.
                state.recover(&claim.path, Some(me))?;
                continue;
            };
            let ctx = ctx.clone();
            running.spawn(async move {
                let report = pass::run_repository(&ctx, &policy, &claim.path, &|_: Progress| {}).await;
                (claim, report)
            });
        }
        if running.is_empty() {
            let wakeup = state.next_wakeup(now)?;
            let until = wakeup.map(|w| Duration::from_micros((w.unix_micros() - now.unix_micros()).max(0) as u64));
            if options.until_idle && until.is_none_or(|u| u >= IDLE_HORIZON) {
                on_event(DaemonEvent::Idle);
                return Ok(summary);
            }
            tokio::select! {
                _ = tokio::time::sleep(until.unwrap_or(IDLE_POLL).min(IDLE_POLL)) => continue,
                _ = &mut shutdown => return Ok(summary),
            }
        }
        tokio::select! {
            finished = running.join_next() => {
                let (claim, report) = finished.expect("running is not empty").context("a pass task panicked")?;
                finish(&state, me, &claim, &report, options.backoff.as_ref(), on_event)?;
                summary.passes += 1;
                summary.tags_deleted += report.tags_deleted;
            }
            _ = &mut shutdown => {
                on_event(DaemonEvent::ShuttingDown { running: running.len() });
                let drain = async {
                    while let Some(done) = running.join_next().await {
                        if let Ok((claim, report)) = done {
                            finish(&state, me, &claim, &report, options.backoff.as_ref(), on_event)?;
                            summary.passes += 1;
                        }
                    }
                    anyhow::Ok(())
                };
                if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
                    // Cut off: their rows and runs are settled by the next start.
                    running.abort_all();
                    for lease in state.leases()?.iter().filter(|l| l.owner.as_deref() == Some(me)) {
                        state.recover(&lease.path, Some(me))?;
                    }
                }
                return Ok(summary);
            }
        }
    }
}

/// Records the policies of the config and the registry's repositories (first matching
/// policy) in the state.
async fn sync<S: StateStore>(
    ctx: &PassContext,
    policies: &[BoundPolicy],
    state: &S,
    options: &DaemonOptions,
    on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync),
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    for p in policies {
        let first = match options.first_run {
            // Due strictly before the first claim (GitLab's rule is `next_run_at < now`).
            FirstRun::Now => now.saturating_sub(Duration::from_secs(1)),
            FirstRun::AfterCadence => p.cadence.next_after(now),
        };
        state.upsert_policy(&p.policy.name, p.enabled, p.cadence.every(), first)?;
    }
    let repositories = ctx.backend.repositories().await.with_context(|| format!("listing the repositories of {}", ctx.backend.label()))?;
    let mut bound = 0;
    for p in policies {
        let mine: Vec<String> =
            repositories.iter().filter(|r| setup::policy_for(policies, r).is_some_and(|q| q.name == p.policy.name)).cloned().collect();
        bound += mine.len();
        state.add_repositories(&p.policy.name, &mine)?;
    }
    on_event(DaemonEvent::Synced { policies: policies.len(), repositories: bound });
    Ok(())
}

/// Takes back every repository whose holder is gone (a process on this machine that died,
/// or a lease that expired): no waiting for a stale timeout after a restart.
fn recover<S: StateStore>(state: &S, on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync)) -> anyhow::Result<usize> {
    let now = Timestamp::now();
    let mut recovered = 0;
    for lease in state.leases()? {
        let dead = match &lease.owner {
            None => true,
            Some(o) => owner::liveness(o) == Liveness::Gone || lease.expires_at.is_some_and(|e| e < now),
        };
        if dead && state.recover(&lease.path, lease.owner.as_deref())? {
            on_event(DaemonEvent::Recovered { path: &lease.path });
            recovered += 1;
        }
    }
    Ok(recovered)
}

/// Records how a pass ended.
fn finish<S: StateStore>(
    state: &S,
    me: &str,
    claim: &Claim,
    report: &RepositoryReport,
    backoff: Option<&(BackoffPlugin, String)>,
    on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync),
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let failures = state.repository(&claim.path)?.map_or(0, |r| r.consecutive_failures) + 1;
    let mut outcome = outcome(report, failures, now);
    if let (Some((plugin, params)), CleanupOutcome::Failed { class, http_status, reason, next_attempt_at }) = (backoff, &mut outcome) {
        // The plugin decides; the host's default stands only when the plugin itself fails.
        let failure = Failure {
            operation: OperationKind::Cleanup,
            attempt: failures,
            class: report.failure_class.unwrap_or(if class == "transient" { ErrorClass::Transient } else { ErrorClass::Permanent }),
            http_status: report.failure_http_status,
            retry_after: None,
            message: reason.clone(),
            now,
            seed: seed_of(&claim.path),
        };
        *http_status = report.failure_http_status;
        *class = failure.class.as_str().to_owned();
        match plugin.decide(params, &failure) {
            Ok(BackoffDecision::RetryAfter(d)) => *next_attempt_at = Some(now.saturating_add(d)),
            Ok(BackoffDecision::GiveUp(why)) => {
                *next_attempt_at = None;
                *reason = format!("{reason} (backoff plugin gave up: {why})");
            }
            Err(e) => tracing::warn!(repository = claim.path, "{e}; using the host's default backoff"),
        }
    }
    if !state.finish_claim(&claim.path, me, &outcome, now)? {
        tracing::warn!(repository = claim.path, "the claim was taken back while the pass ran; its outcome is not recorded");
    }
    on_event(DaemonEvent::PassFinished { report, outcome: &outcome });
    Ok(())
}

/// A stable jitter seed for a repository (FNV-1a of its path).
fn seed_of(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The state a pass's report leads to with the host's default backoff. `failures` counts
/// this failure too.
pub fn outcome(report: &RepositoryReport, failures: u32, now: Timestamp) -> CleanupOutcome {
    let failed = |class: &str, reason: &str, give_up_after: u32| {
        let next_attempt_at = (failures < give_up_after).then(|| now.saturating_add(backoff(failures)));
        CleanupOutcome::Failed { class: class.into(), http_status: None, reason: reason.into(), next_attempt_at }
    };
    match &report.status {
        RepositoryStatus::Completed | RepositoryStatus::Planned => CleanupOutcome::Done { deleted: report.tags_deleted },
        RepositoryStatus::NotFound => CleanupOutcome::Gone,
        // No progress and an error (the registry unreachable, 5xx): back off, never a tight loop.
        RepositoryStatus::Unfinished(reason) if report.tags_deleted == 0 && !report.errors.is_empty() => {
            failed("transient", reason, GIVE_UP_RETRYABLE)
        }
        RepositoryStatus::Unfinished(reason) => CleanupOutcome::Unfinished { deleted: report.tags_deleted, reason: reason.clone() },
        // A guard refused the plan: an operator must look.
        RepositoryStatus::Refused(reason) => failed("refused", reason, 1),
        RepositoryStatus::Failed(reason) => failed("permanent", reason, GIVE_UP_PERMANENT),
    }
}

/// The host's default backoff: 2^n minutes after the n-th consecutive failure, capped.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(60u64.saturating_mul(1u64 << failures.min(20))).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: RepositoryStatus, deleted: usize, errors: &[&str]) -> RepositoryReport {
        let mut r = RepositoryReport::new("g/app", "p");
        r.status = status;
        r.tags_deleted = deleted;
        r.errors = errors.iter().map(|e| e.to_string()).collect();
        r
    }

    #[test]
    fn backoff_doubles_from_two_minutes_and_caps_at_a_day() {
        let mins: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs() / 60).collect();
        assert_eq!(mins, [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1440, 1440]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn outcomes_follow_the_report() {
        let now = Timestamp::parse_rfc3339("2026-11-20T12:00:00Z").unwrap();
        assert_eq!(outcome(&report(RepositoryStatus::Completed, 3, &[]), 1, now), CleanupOutcome::Done { deleted: 3 });
        assert_eq!(outcome(&report(RepositoryStatus::NotFound, 0, &[]), 1, now), CleanupOutcome::Gone);
        // Progress: resume without backoff.
        let budget = RepositoryStatus::Unfinished("delete timeout".into());
        assert!(matches!(outcome(&report(budget, 5, &[]), 1, now), CleanupOutcome::Unfinished { deleted: 5, .. }));
        // No progress and an error: backoff, then give up.
        let down = RepositoryStatus::Unfinished("listing tags: 503".into());
        match outcome(&report(down.clone(), 0, &["503"]), 1, now) {
            CleanupOutcome::Failed { next_attempt_at: Some(t), class, .. } => {
                assert_eq!((t.to_rfc3339().as_str(), class.as_str()), ("2026-11-20T12:02:00Z", "transient"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome(&report(down, 0, &["503"]), GIVE_UP_RETRYABLE, now),
            CleanupOutcome::Failed { next_attempt_at: None, .. }
        ));
        let denied = RepositoryStatus::Failed("401".into());
        assert!(matches!(outcome(&report(denied.clone(), 0, &[]), 2, now), CleanupOutcome::Failed { next_attempt_at: Some(_), .. }));
        assert!(matches!(outcome(&report(denied, 0, &[]), GIVE_UP_PERMANENT, now), CleanupOutcome::Failed { next_attempt_at: None, .. }));
        assert!(matches!(
            outcome(&report(RepositoryStatus::Refused("90%".into()), 0, &[]), 1, now),
            CleanupOutcome::Failed { next_attempt_at: None, .. }
        ));
    }
}
