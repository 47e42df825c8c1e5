//! The daemon loop behind `tagwarden serve`: sync policies and repositories into the state,
//! recover what a dead predecessor held, then claim repositories in GitLab's order with at
//! most `worker_capacity` cleanup passes and `deletion_capacity` repository deletions at
//! once, record how each ended (the backoff plugin deciding after failures), renew the
//! leases it holds, ask the stale plugin about work that has run long, and read the catalog
//! again periodically. The passes are [`crate::pass::run_repository_until`], the same as
//! `run --once`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::config::FirstRun;
use crate::model::ErrorClass;
use crate::model::Timestamp;
use crate::owner::{self, Liveness};
use crate::pass::{self, PassContext, Policy, Progress, RepositoryReport, RepositoryStatus, StopFlag};
use crate::runtime::{BackoffDecision, BackoffPlugin, Failure, Operation, OperationKind, StaleVerdict};
use crate::setup::{self, BoundPolicy, PolicySet, StrategySet};
use crate::store::{Claim, CleanupOutcome, DeletionOutcome, Lease, StateStore, Work};

/// Longest sleep between looks at the state when nothing is running.
const IDLE_POLL: Duration = Duration::from_secs(30);
/// `--until-idle` exits when nothing becomes claimable sooner than this.
const IDLE_HORIZON: Duration = Duration::from_secs(60);
/// How long running passes get to reach a safe point after SIGTERM/SIGINT before they are
/// cut off (a cut-off pass is safe too: the next start settles what it left).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// A failed catalog read is tried again after this (or the sync interval, if shorter).
const SYNC_RETRY: Duration = Duration::from_secs(60);
/// The host's backoff, used without a backoff plugin and when the plugin itself fails:
/// 2^n minutes after the n-th consecutive failure (GitLab's schedule), at most a day, and
/// never sooner than the registry's `Retry-After`.
const BACKOFF_CAP: Duration = Duration::from_secs(86_400);
/// Host default: consecutive failures after which work is given up (`cleanup_failed`,
/// `delete_failed`), for errors retrying may fix (5xx, timeouts) and for those it cannot
/// (401/403, 405, plugin).
const GIVE_UP_RETRYABLE: u32 = 8;
/// How long a cleanup waits when the repository is being imported (no failure counted).
const DEFERRED_WAIT: Duration = Duration::from_secs(300);
/// How long a cleanup waits when the state store did not take its run (no failure counted):
/// long enough not to spin while PostgreSQL restarts, short enough not to lose a cadence.
const STATE_WAIT: Duration = Duration::from_secs(10);
const GIVE_UP_PERMANENT: u32 = 3;
/// After the state store failed to answer, it is asked again after this.
const STATE_RETRY: Duration = Duration::from_secs(1);

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub worker_capacity: usize,
    /// Repository deletions at once (their own workers: a deletion never waits behind cleanups).
    pub deletion_capacity: usize,
    pub first_run: FirstRun,
    /// Exit once nothing is due, running, or waiting on a backoff shorter than a minute.
    pub until_idle: bool,
    /// How long a claim stays valid without a heartbeat; renewed every quarter of it.
    pub lease: Duration,
    /// How often the catalog is read again.
    pub catalog_sync: Duration,
    /// How often the stale plugin judges ongoing work.
    pub stale_check: Duration,
    /// The deletion budget the stale plugin measures cleanups against.
    pub delete_timeout: Duration,
    /// The backoff plugin (`None`: the host's default schedule) and the stale plugin, each
    /// with its params (JSON); read at each use, so a version the plugin directory swaps in
    /// decides from then on.
    pub strategies: Arc<StrategySet>,
    /// Notified when an operator changed the state (the API's actions): look at it now
    /// rather than at the next poll.
    pub wake: Arc<tokio::sync::Notify>,
}

/// What the daemon reports as it goes (the CLI prints these).
#[derive(Debug)]
pub enum DaemonEvent<'a> {
    Synced {
        policies: usize,
        repositories: usize,
    },
    SyncFailed {
        error: &'a anyhow::Error,
        retry_in: Duration,
    },
    /// The state store did not answer; the daemon keeps its passes running and asks again.
    StateUnavailable {
        error: &'a anyhow::Error,
        retry_in: Duration,
    },
    Recovered {
        path: &'a str,
        work: Work,
    },
    Stale {
        path: &'a str,
        work: Work,
        reason: &'a str,
        held_here: bool,
    },
    PassFinished {
        report: &'a RepositoryReport,
        outcome: &'a CleanupOutcome,
    },
    DeletionFinished {
        report: &'a RepositoryReport,
        outcome: &'a DeletionOutcome,
    },
    PolicyScheduled {
        policy: &'a str,
        next_run_at: Timestamp,
    },
    Idle,
    ShuttingDown {
        running: usize,
    },
}

/// What a daemon run did, for `--until-idle` callers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DaemonSummary {
    pub passes: usize,
    pub deletions: usize,
    pub tags_deleted: usize,
    pub recovered: usize,
    pub stale: usize,
}

/// A pass in flight.
struct Job {
    claim: Claim,
    work: Work,
}

type Running = JoinSet<(Job, RepositoryReport)>;
type Stops = HashMap<(Work, String), StopFlag>;

/// Runs the daemon until `shutdown` resolves (or, with `until_idle`, until idle).
pub async fn run(
    ctx: Arc<PassContext>,
    policies: Arc<PolicySet>,
    state: Arc<dyn StateStore>,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
    on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync),
) -> anyhow::Result<DaemonSummary> {
    let me = owner::current();
    let state = &*state;
    let mut summary = DaemonSummary::default();
    record_policies(&policies.current(), state, &options)?;
    summary.recovered = recover(state, on_event)?;
    let mut duties = Duties::new(&options);
    let heartbeat = options.lease / 4;
    let started = Instant::now();
    let (mut next_sync, mut next_heartbeat, mut next_stale) = (started, started + heartbeat, started + options.stale_check);
    let mut synced = false;
    let deletion = Policy::delete_repository();
    let mut running: Running = JoinSet::new();
    let mut stops: Stops = HashMap::new();
    tokio::pin!(shutdown);
    // Passes that ended but whose outcome the state store has not taken yet: recorded at the
    // start of the next round, before anything is claimed.
    let mut unrecorded: Vec<(Job, RepositoryReport)> = Vec::new();
    // After the state store failed to answer: not asked again before this.
    let mut state_retry_at: Option<Instant> = None;
    loop {
        let round = async {
            if let Some(at) = state_retry_at.filter(|at| Instant::now() < *at) {
                return Ok(Round::Wait(at));
            }
            while let Some((job, report)) = unrecorded.first() {
                record(state, me, job, report, options.strategies.current().backoff.as_ref(), &mut summary, on_event)?;
                unrecorded.remove(0);
            }
            if Instant::now() >= next_sync && !duties.catalog_sync.held(state, me)? {
                // Another host syncs the catalog; this one asks again at the next interval.
                next_sync = Instant::now() + options.catalog_sync;
            }
            if Instant::now() >= next_sync {
                next_sync = match sync_catalog(&ctx, &policies.current(), state, on_event).await {
                    Ok(()) => {
                        synced = true;
                        Instant::now() + options.catalog_sync
                    }
                    // A script (`--until-idle`) wants to know at once; a daemon keeps going on
                    // what its state knows and reads the catalog again soon.
                    Err(e) if options.until_idle && !synced => return Ok(Round::Fail(e)),
                    Err(e) => {
                        let retry_in = SYNC_RETRY.min(options.catalog_sync);
                        on_event(DaemonEvent::SyncFailed { error: &e, retry_in });
                        Instant::now() + retry_in
                    }
                };
            }
            if Instant::now() >= next_heartbeat {
                state.renew_leases(me, Timestamp::now().saturating_add(options.lease))?;
                summary.recovered += recover(state, on_event)?;
                next_heartbeat = Instant::now() + heartbeat;
            }
            if Instant::now() >= next_stale {
                if duties.stale_check.held(state, me)? {
                    summary.stale += check_stale(state, &options, me, &stops, on_event)?;
                }
                next_stale = Instant::now() + options.stale_check;
            }
            let now = Timestamp::now();
            let policies_due = if duties.cadence.held(state, me)? { state.advance_policies(now)? } else { Vec::new() };
            for policy in policies_due {
                if let Some(p) = state.policy(&policy)? {
                    on_event(DaemonEvent::PolicyScheduled { policy: &policy, next_run_at: p.next_run_at });
                }
            }
            while busy(&stops, Work::Cleanup) < options.worker_capacity {
                let Some(claim) = state.claim_next(Timestamp::now(), me, options.lease)? else { break };
                // The set in force now: a plugin swapped in since the last claim is used from here on.
                let current = policies.current();
                let Some(policy) = setup::policy_by_name(&current, &claim.policy).cloned() else {
                    // The policy left the config: hand the repository back, untouched.
                    state.recover(&held(&claim, Work::Cleanup, me), None)?;
                    continue;
                };
                if policy.paused_because().is_some() {
                    // Its plugin went out of service between the state's `enabled` (which the
                    // plugin directory clears first) and this claim: hand it back, claim no more
                    // this round (claiming again would find it again).
                    state.recover(&held(&claim, Work::Cleanup, me), None)?;
                    break;
                }
                spawn(&mut running, &mut stops, &ctx, policy, claim, Work::Cleanup);
            }
            while busy(&stops, Work::Deletion) < options.deletion_capacity {
                let Some(claim) = state.claim_deletion(Timestamp::now(), me, options.lease)? else { break };
                spawn(&mut running, &mut stops, &ctx, deletion.clone(), claim, Work::Deletion);
            }
            let next_duty = next_sync.min(next_heartbeat).min(next_stale);
            if !running.is_empty() {
                return Ok(Round::Wait(next_duty));
            }
            let wakeup = state.next_wakeup(now)?;
            let until = wakeup.map(|w| Duration::from_micros((w.unix_micros() - now.unix_micros()).max(0) as u64));
            if options.until_idle && until.is_none_or(|u| u >= IDLE_HORIZON) {
                return Ok(Round::Idle);
            }
            let sleep = until.unwrap_or(IDLE_POLL).min(IDLE_POLL).min(next_duty.saturating_duration_since(Instant::now()));
            anyhow::Ok(Round::Wait(Instant::now() + sleep))
        }
        .await;
        let wait_until = match round {
            Ok(Round::Wait(until)) => until,
            Ok(Round::Idle) => {
                on_event(DaemonEvent::Idle);
                duties.release_all(state, me);
                return Ok(summary);
            }
            Ok(Round::Fail(e)) => return Err(e),
            // The state store did not answer (PostgreSQL restarting, a network blip): passes in
            // flight go on, their outcomes wait in `unrecorded`, and the store is asked again
            // shortly; the leases this host holds outlast a short outage.
            Err(e) => {
                on_event(DaemonEvent::StateUnavailable { error: &e, retry_in: STATE_RETRY });
                let at = Instant::now() + STATE_RETRY;
                state_retry_at = Some(at);
                at
            }
        };
        tokio::select! {
            finished = running.join_next(), if !running.is_empty() => {
                let (job, report) = finished.expect("running is not empty").context("a pass task panicked")?;
                stops.remove(&(job.work, job.claim.path.clone()));
                unrecorded.push((job, report));
            }
            _ = tokio::time::sleep_until(wait_until.into()) => {}
            _ = options.wake.notified() => {}
            _ = &mut shutdown => {
                if running.is_empty() && unrecorded.is_empty() {
                    duties.release_all(state, me);
                    return Ok(summary);
                }
                on_event(DaemonEvent::ShuttingDown { running: running.len() });
                stops.values().for_each(|s| s.stop("the daemon is shutting down"));
                let drain = async {
                    for (job, report) in std::mem::take(&mut unrecorded) {
                        record(state, me, &job, &report, options.strategies.current().backoff.as_ref(), &mut summary, on_event)?;
                    }
                    while let Some(done) = running.join_next().await {
                        if let Ok((job, report)) = done {
                            record(state, me, &job, &report, options.strategies.current().backoff.as_ref(), &mut summary, on_event)?;
                        }
                    }
                    anyhow::Ok(())
                };
                if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
                    // Cut off: their rows and runs are settled by the next start.
                    running.abort_all();
                    for lease in state.leases()?.iter().filter(|l| l.owner.as_deref() == Some(me)) {
                        state.recover(lease, Some("the daemon shut down before the pass reached a safe point"))?;
                    }
                }
                duties.release_all(state, me);
                return Ok(summary);
            }
        }
    }
}

/// What a round of the daemon's loop decided.
enum Round {
    /// Wait for a pass to end, an operator, a signal, or this instant.
    Wait(Instant),
    /// `--until-idle`, and nothing is due soon.
    Idle,
    /// Stop with this error.
    Fail(anyhow::Error),
}

/// A periodic duty that one host at a time runs: whoever holds its lease in the state store
/// ([`StateStore::take_duty`]). The holder renews it each time it asks; another host gets it
/// once the lease has expired, so a dead host's duty moves within `ttl` plus the asking
/// host's interval (docs/operations.md states the bound).
struct Duty {
    name: &'static str,
    ttl: Duration,
    /// When this host last asked, and the answer: asked again after a quarter of `ttl`
    /// (the cadence duty is consulted on every loop, the store only this often).
    asked: Option<(Instant, bool)>,
}

impl Duty {
    fn new(name: &'static str, ttl: Duration) -> Self {
        Duty { name, ttl, asked: None }
    }

    /// Whether `me` holds the duty now (taking or renewing its lease when it is time to ask).
    fn held<S: StateStore + ?Sized>(&mut self, state: &S, me: &str) -> anyhow::Result<bool> {
        if let Some((at, held)) = self.asked
            && at.elapsed() < self.ttl / 4
        {
            return Ok(held);
        }
        let mut held = state.take_duty(self.name, me, Timestamp::now(), self.ttl)?;
        if !held
            && let Some(holder) = state.duty_holder(self.name)?
            && owner::liveness(&holder) == Liveness::Gone
        {
            // A predecessor on this machine died holding it: no waiting for its lease.
            state.release_duty(self.name, &holder)?;
            held = state.take_duty(self.name, me, Timestamp::now(), self.ttl)?;
        }
        self.asked = Some((Instant::now(), held));
        Ok(held)
    }

    /// Gives the duty up (a clean shutdown): another host takes it at its next look.
    fn release<S: StateStore + ?Sized>(&self, state: &S, me: &str) {
        if let Err(e) = state.release_duty(self.name, me) {
            tracing::warn!("releasing duty `{}`: {e:#}; it moves when its lease ends", self.name);
        }
    }
}

/// The daemon's periodic duties. A holder asks again well before its lease ends (each
/// interval, or each quarter of the lease), so it keeps the duty while it lives.
struct Duties {
    /// Reading the catalog (every `catalog_sync`; the lease lasts two intervals).
    catalog_sync: Duty,
    /// Asking the stale plugin about ongoing work (every `stale_check`; two intervals).
    stale_check: Duty,
    /// Scheduling the next run of due policies (every loop; the lease is the claims' `lease`).
    cadence: Duty,
}

impl Duties {
    fn release_all<S: StateStore + ?Sized>(&self, state: &S, me: &str) {
        for duty in [&self.catalog_sync, &self.stale_check, &self.cadence] {
            duty.release(state, me);
        }
    }

    fn new(options: &DaemonOptions) -> Self {
        Duties {
            catalog_sync: Duty::new("catalog_sync", options.catalog_sync.saturating_mul(2)),
            stale_check: Duty::new("stale_check", options.stale_check.saturating_mul(2)),
            cadence: Duty::new("cadence", options.lease),
        }
    }
}

/// Passes of `work` in flight.
fn busy(stops: &Stops, work: Work) -> usize {
    stops.keys().filter(|(w, _)| *w == work).count()
}

/// The lease `me` holds on a fresh claim.
fn held(claim: &Claim, work: Work, me: &str) -> Lease {
    Lease { path: claim.path.clone(), work, owner: Some(me.to_owned()), expires_at: None, started_at: Some(claim.started_at) }
}

fn spawn(running: &mut Running, stops: &mut Stops, ctx: &Arc<PassContext>, policy: Policy, claim: Claim, work: Work) {
    let stop = StopFlag::default();
    stops.insert((work, claim.path.clone()), stop.clone());
    let ctx = ctx.clone();
    running.spawn(async move {
        let report = pass::run_repository_until(&ctx, &policy, &claim.path, &|_: Progress| {}, &stop).await;
        (Job { claim, work }, report)
    });
}

/// Records the policies of the config in the state (a new one is due per `first_run`).
fn record_policies<S: StateStore + ?Sized>(policies: &[BoundPolicy], state: &S, options: &DaemonOptions) -> anyhow::Result<()> {
    let now = Timestamp::now();
    for p in policies {
        let first = match options.first_run {
            // Due strictly before the first claim (GitLab's rule is `next_run_at < now`).
            FirstRun::Now => now.saturating_sub(Duration::from_secs(1)),
            FirstRun::AfterCadence => p.cadence.next_after(now),
        };
        // A policy whose plugin is out of service is recorded disabled, so nothing claims it.
        state.upsert_policy(&p.policy.name, p.enabled && p.policy.paused_because().is_none(), p.cadence.every(), first)?;
    }
    Ok(())
}

/// Reads the registry's repositories and records each under its policy (the first whose
/// patterns match), with the paths policies name outright (no glob characters), which are
/// recorded even when the catalog cannot be read. One that left the registry stays in the
/// state until its next pass finds it gone (`cleanup_gone`, seed 001).
async fn sync_catalog<S: StateStore + ?Sized>(
    ctx: &PassContext,
    policies: &[BoundPolicy],
    state: &S,
    on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync),
) -> anyhow::Result<()> {
    let catalog = ctx.backend.repositories().await.with_context(|| format!("listing the repositories of {}", ctx.backend.label()));
    let mut repositories: Vec<String> = policies.iter().flat_map(|p| p.named.iter().cloned()).collect();
    if let Ok(listed) = &catalog {
        repositories.extend(listed.iter().cloned());
    }
    repositories.sort();
    repositories.dedup();
    let mut bound = 0;
    for p in policies {
        let mine: Vec<String> =
            repositories.iter().filter(|r| setup::policy_for(policies, r).is_some_and(|q| q.name == p.policy.name)).cloned().collect();
        bound += mine.len();
        state.add_repositories(&p.policy.name, &mine)?;
    }
    catalog?;
    on_event(DaemonEvent::Synced { policies: policies.len(), repositories: bound });
    Ok(())
}

/// Takes back every cleanup and deletion whose holder is gone (a process on this machine
/// that died, or a lease that was not renewed in time): no waiting for a stale timeout.
fn recover<S: StateStore + ?Sized>(state: &S, on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync)) -> anyhow::Result<usize> {
    let now = Timestamp::now();
    let mut recovered = 0;
    for lease in state.leases()? {
        let (dead, why) = match &lease.owner {
            None => (true, "no holder recorded".to_owned()),
            Some(o) if owner::liveness(o) == Liveness::Gone => (true, format!("its holder {o} is gone")),
            Some(o) => (lease.expires_at.is_some_and(|e| e < now), format!("the lease of {o} expired without a heartbeat")),
        };
        if dead && state.recover(&lease, Some(&format!("taken back: {why}")))? {
            on_event(DaemonEvent::Recovered { path: &lease.path, work: lease.work });
            recovered += 1;
        }
    }
    Ok(recovered)
}

/// Asks the stale plugin about every ongoing cleanup and deletion, live leases included
/// (seed 002: work that runs far too long while its holder keeps renewing). A stale pass
/// this daemon runs is asked to stop at its next safe point and records `unfinished`; one
/// another host holds is taken back in the state (that host's outcome is then not
/// recorded; its run is settled by the next pass). If the plugin fails, the work is left
/// alone: leases still bound a dead holder.
fn check_stale<S: StateStore + ?Sized>(
    state: &S,
    options: &DaemonOptions,
    me: &str,
    stops: &Stops,
    on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync),
) -> anyhow::Result<usize> {
    let now = Timestamp::now();
    let strategies = options.strategies.current();
    // The directory's stale plugin is quarantined: no work is judged stale until it is back.
    let Some((plugin, params)) = &strategies.stale else { return Ok(0) };
    let mut stale = 0;
    for lease in state.leases()? {
        let (kind, name) = match lease.work {
            Work::Cleanup => (OperationKind::Cleanup, "cleanup_ongoing"),
            Work::Deletion => (OperationKind::RepositoryDeletion, "delete_ongoing"),
        };
        let op = Operation {
            kind,
            state: name.to_owned(),
            started_at: lease.started_at,
            now,
            delete_timeout: options.delete_timeout,
            registry_status: None,
        };
        let reason = match plugin.check(params, &op) {
            Ok(StaleVerdict::Healthy) => continue,
            Ok(StaleVerdict::Stale { action, reason }) => format!("stale ({action:?}): {reason}"),
            Err(e) => {
                tracing::warn!(repository = lease.path, "the stale plugin failed ({e}); leaving the work to its lease");
                continue;
            }
        };
        let held_here = lease.owner.as_deref() == Some(me);
        match stops.get(&(lease.work, lease.path.clone())) {
            Some(stop) if held_here => stop.stop(&reason),
            _ => {
                if !state.recover(&lease, Some(&reason))? {
                    continue;
                }
            }
        }
        on_event(DaemonEvent::Stale { path: &lease.path, work: lease.work, reason: &reason, held_here });
        stale += 1;
    }
    Ok(stale)
}

/// Records how a pass ended, with the backoff plugin's decision after a failure.
fn record<S: StateStore + ?Sized>(
    state: &S,
    me: &str,
    job: &Job,
    report: &RepositoryReport,
    backoff: Option<&(BackoffPlugin, String)>,
    summary: &mut DaemonSummary,
    on_event: &(dyn Fn(DaemonEvent<'_>) + Send + Sync),
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let path = &job.claim.path;
    // Counted once the state took the outcome: a failed call is made again later.
    match job.work {
        Work::Cleanup => {
            let failures = state.repository(path)?.map_or(0, |r| r.consecutive_failures) + 1;
            let outcome = decide(outcome(report, failures, now), report, OperationKind::Cleanup, failures, backoff, now, path);
            if !state.finish_claim(path, me, &outcome, now)? {
                tracing::warn!(repository = path, "the claim was taken back while the pass ran; its outcome is not recorded");
            }
            summary.passes += 1;
            on_event(DaemonEvent::PassFinished { report, outcome: &outcome });
        }
        Work::Deletion => {
            let failures = state.deletion(path)?.map_or(0, |d| d.consecutive_failures) + 1;
            let outcome =
                decide(deletion_ending(report, failures, now), report, OperationKind::RepositoryDeletion, failures, backoff, now, path);
            let deleted = report.tags_deleted;
            let outcome = match outcome {
                CleanupOutcome::Done { deleted } => DeletionOutcome::Done { deleted },
                CleanupOutcome::Gone => DeletionOutcome::Done { deleted },
                CleanupOutcome::Unfinished { deleted, reason } => DeletionOutcome::Unfinished { deleted, reason },
                CleanupOutcome::Deferred { reason, until } => {
                    DeletionOutcome::Failed { deleted, class: "deferred".into(), http_status: None, reason, next_attempt_at: Some(until) }
                }
                CleanupOutcome::Failed { class, http_status, reason, next_attempt_at } => {
                    DeletionOutcome::Failed { deleted, class, http_status, reason, next_attempt_at }
                }
            };
            if !state.finish_deletion(path, me, &outcome, now)? {
                tracing::warn!(repository = path, "the deletion was taken back while it ran; its outcome is not recorded");
            }
            summary.deletions += 1;
            on_event(DaemonEvent::DeletionFinished { report, outcome: &outcome });
        }
    }
    summary.tags_deleted += report.tags_deleted;
    Ok(())
}

/// Lets the backoff plugin decide when a failed pass is tried again, or that it is given
/// up. The host's default (already in `outcome`) stands only when the plugin itself fails.
fn decide(
    mut outcome: CleanupOutcome,
    report: &RepositoryReport,
    operation: OperationKind,
    failures: u32,
    backoff: Option<&(BackoffPlugin, String)>,
    now: Timestamp,
    path: &str,
) -> CleanupOutcome {
    let (Some((plugin, params)), CleanupOutcome::Failed { class, http_status, reason, next_attempt_at }) = (backoff, &mut outcome) else {
        return outcome;
    };
    let cause = report.failure;
    let failure = Failure {
        operation,
        attempt: failures,
        class: cause.map_or(if class == "transient" { ErrorClass::Transient } else { ErrorClass::Permanent }, |c| c.class),
        http_status: *http_status,
        retry_after: cause.and_then(|c| c.retry_after),
        message: reason.clone(),
        now,
        seed: seed_of(path),
    };
    match plugin.decide(params, &failure) {
        Ok(BackoffDecision::RetryAfter(d)) => *next_attempt_at = Some(now.saturating_add(d)),
        Ok(BackoffDecision::GiveUp(why)) => {
            *next_attempt_at = None;
            *reason = format!("{reason} (backoff plugin gave up: {why})");
        }
        Err(e) => tracing::warn!(repository = path, "{e}; using the host's default backoff"),
    }
    outcome
}

/// What a repository deletion's pass leads to: done only when nothing is left; tags the
/// host's protection rules keep stop it for an operator to decide.
fn deletion_ending(report: &RepositoryReport, failures: u32, now: Timestamp) -> CleanupOutcome {
    let protected: Vec<&str> = report
        .plan
        .as_ref()
        .map(|p| {
            p.list
                .tags()
                .iter()
                .zip(&p.tags)
                .filter(|(_, v)| v.action == crate::model::Action::Keep)
                .map(|(t, _)| t.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    if report.status == RepositoryStatus::Completed && !protected.is_empty() {
        let shown: Vec<&str> = protected.iter().take(5).copied().collect();
        return CleanupOutcome::Failed {
            class: "refused".into(),
            http_status: None,
            reason: format!(
                "{} tags are protected by `deletion.protect` and stay ({}{}): remove the rule or the tags, then `tagwarden repos retry`",
                protected.len(),
                shown.join(", "),
                if protected.len() > shown.len() { ", ..." } else { "" }
            ),
            next_attempt_at: None,
        };
    }
    outcome(report, failures, now)
}

/// A stable jitter seed for a repository (FNV-1a of its path).
fn seed_of(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The state a pass's report leads to with the host's default backoff. `failures` counts
/// this failure too.
pub fn outcome(report: &RepositoryReport, failures: u32, now: Timestamp) -> CleanupOutcome {
    let failed = |default_class: &str, reason: &str, give_up_after: u32| {
        let wait = backoff(failures).max(report.failure.and_then(|c| c.retry_after).unwrap_or_default());
        let next_attempt_at = (failures < give_up_after).then(|| now.saturating_add(wait));
        let class = report.failure.map_or(default_class, |c| c.class.as_str());
        let class = if default_class == "refused" { default_class } else { class };
        CleanupOutcome::Failed {
            class: class.into(),
            http_status: report.failure.and_then(|c| c.http_status),
            reason: reason.into(),
            next_attempt_at,
        }
    };
    if let Some(deferral) = &report.deferred {
        let wait = match deferral {
            pass::Deferral::Importing(_) => DEFERRED_WAIT,
            pass::Deferral::StateUnavailable(_) => STATE_WAIT,
        };
        return CleanupOutcome::Deferred { reason: deferral.reason().to_owned(), until: now.saturating_add(wait) };
    }
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
    fn the_default_backoff_waits_at_least_as_long_as_the_registry_asked() {
        let now = Timestamp::parse_rfc3339("2026-11-20T12:00:00Z").unwrap();
        let mut r = report(RepositoryStatus::Unfinished("429".into()), 0, &["429"]);
        r.failure = Some(pass::FailureCause {
            class: ErrorClass::RateLimited,
            http_status: Some(429),
            retry_after: Some(Duration::from_secs(600)),
        });
        match outcome(&r, 1, now) {
            CleanupOutcome::Failed { next_attempt_at: Some(t), class, http_status, .. } => {
                assert_eq!((t.to_rfc3339().as_str(), class.as_str(), http_status), ("2026-11-20T12:10:00Z", "rate-limited", Some(429)))
            }
            other => panic!("{other:?}"),
        }
        // Shorter than the schedule: the schedule wins.
        r.failure.as_mut().unwrap().retry_after = Some(Duration::from_secs(5));
        assert!(
            matches!(outcome(&r, 1, now), CleanupOutcome::Failed { next_attempt_at: Some(t), .. } if t.to_rfc3339() == "2026-11-20T12:02:00Z")
        );
    }

    #[test]
    fn leases_that_lapse_are_taken_back_and_renewed_ones_are_not() {
        let store = crate::store::Store::in_memory().unwrap();
        let now = Timestamp::now();
        store.upsert_policy("p", true, Duration::from_secs(86_400), now.saturating_sub(Duration::from_secs(3600))).unwrap();
        store.add_repositories("p", &["g/a".into(), "g/b".into()]).unwrap();
        // Two claims by a host this one cannot check (another machine): one renews its
        // lease, the other stopped renewing.
        let other = "otherhost/0/1/1";
        store.claim_next(now.saturating_sub(Duration::from_secs(600)), other, Duration::from_secs(120)).unwrap().unwrap();
        store.claim_next(now, other, Duration::from_secs(120)).unwrap().unwrap();
        let events = std::sync::Mutex::new(Vec::new());
        let on_event = |e: DaemonEvent<'_>| {
            if let DaemonEvent::Recovered { path, .. } = e {
                events.lock().unwrap().push(path.to_owned());
            }
        };
        assert_eq!(recover(&store, &on_event).unwrap(), 1);
        assert_eq!(*events.lock().unwrap(), ["g/a"]);
        let a = store.repository("g/a").unwrap().unwrap();
        assert_eq!(a.status, crate::store::CleanupStatus::Unfinished);
        assert!(a.last_failure.is_none(), "a recovery is not a failure");
        assert_eq!(store.repository("g/b").unwrap().unwrap().status, crate::store::CleanupStatus::Ongoing);
    }

    #[test]
    fn a_duty_moves_at_once_from_a_gone_holder_here_and_waits_for_another_machines_lease() {
        let store = crate::store::Store::in_memory().unwrap();
        let (me, now, ttl) = (owner::current(), Timestamp::now(), Duration::from_secs(600));
        // A predecessor on this machine that died holding it (same pid, another start time).
        let gone = format!("{}/1", me.rsplit_once('/').unwrap().0);
        assert!(store.take_duty("catalog_sync", &gone, now, ttl).unwrap());
        assert!(Duty::new("catalog_sync", ttl).held(&store, me).unwrap(), "taken at once from a holder that is gone");
        assert_eq!(store.duty_holder("catalog_sync").unwrap().as_deref(), Some(me));
        // A holder on another machine cannot be checked from here: its lease decides.
        assert!(store.release_duty("catalog_sync", me).unwrap());
        assert!(store.take_duty("catalog_sync", "otherhost/boot/1/1", now, ttl).unwrap());
        assert!(!Duty::new("catalog_sync", ttl).held(&store, me).unwrap());
        assert_eq!(store.duty_holder("catalog_sync").unwrap().as_deref(), Some("otherhost/boot/1/1"));
    }

    #[test]
    fn outcomes_follow_the_report() {
        let now = Timestamp::parse_rfc3339("2026-11-20T12:00:00Z").unwrap();
        assert_eq!(outcome(&report(RepositoryStatus::Completed, 3, &[]), 1, now), CleanupOutcome::Done { deleted: 3 });
        assert_eq!(outcome(&report(RepositoryStatus::NotFound, 0, &[]), 1, now), CleanupOutcome::Gone);
        // Being imported: wait, no failure counted, however often.
        let mut importing = report(RepositoryStatus::Unfinished("importing".into()), 0, &[]);
        importing.deferred = Some(pass::Deferral::Importing("importing".into()));
        assert_eq!(
            outcome(&importing, 50, now),
            CleanupOutcome::Deferred { reason: "importing".into(), until: now.saturating_add(DEFERRED_WAIT) }
        );
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
