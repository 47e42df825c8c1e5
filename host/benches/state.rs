//! Claim latency from a large state table (issues 9 §9 and 14 §6): `StateStore::claim_next` over
//! 1,000,000 repositories in 10 policies on SQLite (an on-disk database in a temp directory) and
//! on PostgreSQL (a throwaway cluster with default durability, over loopback TCP), in the same
//! run: 1, 3 and 6 workers claiming at once. Each claimed repository is then marked done, as a
//! finished pass would, so the queue moves. Targets: SQLite p99 < 1 ms; PostgreSQL p99 < 5 ms at
//! 6 workers.
//!
//! Then the daemon's overhead per pass on an empty repository (issue 9 §9, target < 5 ms):
//! claim → list → evaluate (gitlab-retention) → record the run and the claim's outcome, on a
//! database of its own, with the recordings backend serving an empty list.
//!
//! `cargo xtask build-plugins && cargo bench -p tagwarden --bench state`
//! (`TAGWARDEN_BENCH_REPOSITORIES=N` for another size). Figures in docs/benchmarks.md
//! ("State store").

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use tagwarden::model::Timestamp;
use tagwarden::registry::Secret;
use tagwarden::store::{CleanupStatus, PgStateStore, PolicyState, RepositoryState, StateStore, Store};
use tagwarden_testbed::{Durability, PostgresCluster};

const POLICIES: usize = 10;
const CLAIMS_PER_RUN: usize = 20_000;

fn main() -> anyhow::Result<()> {
    let repositories: usize = std::env::var("TAGWARDEN_BENCH_REPOSITORIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let now = Timestamp::parse_rfc3339("2026-11-20T12:00:00Z")?;
    let due = Timestamp::parse_rfc3339("2026-11-20T11:00:00Z")?;
    // Both stores on the machine at once would compete for it: one after the other.
    let dir = tempfile::tempdir()?;
    let sqlite = Store::open(&dir.path().join("tagwarden.db"))?;
    seed(&sqlite, repositories, due)?;
    let cluster = PostgresCluster::start_with(Durability::Full)?;
    let url = cluster.create_database("bench")?;
    let postgres = PgStateStore::connect(&url, Some(Secret::new(cluster.password())))?;
    seed(&postgres, repositories, due)?;
    // Fresh statistics, as autovacuum would have after a catalog sync.
    cluster.psql_in("bench", "VACUUM ANALYZE")?;
    println!("## State store\n");
    println!(
        "Command: `cargo bench -p tagwarden --bench state`; {repositories} repositories in {POLICIES} policies, SQLite on disk (WAL) \
         and PostgreSQL {} (a throwaway cluster from the testbed, default durability, over loopback TCP); \
         {} ({} cores), load {} at start{}.\n",
        cluster.psql("SHOW server_version")?.trim(),
        common::cpu_model(),
        common::cores(),
        common::load_average(),
        if std::env::var_os("TAGWARDEN_STORE_INLINE_CHECKPOINT").is_some() { ", SQLite's inline checkpoint" } else { "" }
    );
    println!("| store | workers | claims | p50 | p99 | max | claims/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for workers in [1, 3, 6] {
        claims("SQLite", &sqlite, workers, now)?;
        claims("PostgreSQL", &postgres, workers, now)?;
    }
    println!("\nclaims/s counts the claim and the bookkeeping write that marks the repository done.");
    drop(postgres);
    drop(cluster);
    pass_overhead(now, due)
}

fn seed<S: StateStore>(store: &S, repositories: usize, due: Timestamp) -> anyhow::Result<()> {
    let seeded = Instant::now();
    for p in 0..POLICIES {
        store.put_policy_state(&PolicyState {
            name: format!("p{p}"),
            enabled: true,
            cadence: Duration::from_secs(86_400),
            next_run_at: due,
        })?;
    }
    for p in 0..POLICIES {
        let paths: Vec<String> = (0..repositories / POLICIES).map(|i| format!("group-{p}/repo-{i:07}")).collect();
        store.add_repositories(&format!("p{p}"), &paths)?;
    }
    eprintln!("seeded {repositories} repositories in {:.1} s", seeded.elapsed().as_secs_f64());
    Ok(())
}

/// `workers` threads claiming at once (one store handle, as one host's workers share it), each
/// claim followed by the write a finished pass makes.
fn claims<S: StateStore + Clone + 'static>(name: &str, store: &S, workers: usize, now: Timestamp) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let store = store.clone();
                s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut out = Vec::with_capacity(CLAIMS_PER_RUN / workers);
                    for _ in 0..CLAIMS_PER_RUN / workers {
                        let t = Instant::now();
                        let claim = store.claim_next(now, &format!("worker-{w}"), Duration::from_secs(600))?;
                        out.push(t.elapsed());
                        let Some(claim) = claim else { anyhow::bail!("the queue ran dry") };
                        // The pass finished: done for this cycle.
                        store.put_repository_state(&RepositoryState {
                            path: claim.path,
                            policy: claim.policy,
                            status: CleanupStatus::Unscheduled,
                            started_at: Some(now),
                            completed_at: Some(now),
                            next_attempt_at: None,
                            consecutive_failures: 0,
                            lease_owner: None,
                            lease_expires_at: None,
                            last_failure: None,
                            last_deleted: None,
                        })?;
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect::<anyhow::Result<Vec<_>>>().map(|v| v.concat())
    })?;
    let wall = started.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| {name} | {workers} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} |",
        latencies.len(),
        us(pick(0.5)),
        us(pick(0.99)),
        us(*latencies.last().unwrap()),
        latencies.len() as f64 / wall.as_secs_f64()
    );
    Ok(())
}

/// Passes timed one by one over an empty repository, after a warm-up.
const PASSES: usize = 2_000;

fn pass_overhead(now: Timestamp, due: Timestamp) -> anyhow::Result<()> {
    use tagwarden::backend::{Backend, RecordingBackend};
    use tagwarden::model::TagList;
    use tagwarden::pass::{self, DeletionLimits, Guards, PassContext, Policy};
    use tagwarden::runtime::{PluginLimits, PluginRuntime, RuntimeConfig};
    use tagwarden::store::CleanupOutcome;

    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("tagwarden.db"))?;
    let runtime = std::sync::Arc::new(PluginRuntime::new(RuntimeConfig::default())?);
    let path = tagwarden::plugins::resolve("gitlab-retention", &[])?;
    let plugin = runtime.load_file(&path, PluginLimits::default())?.into_retention()?;
    let policy = Policy::new("p", &plugin, r#"{"name_regex_delete": ".*", "keep_n": 10, "older_than": "90d"}"#)?;
    let ctx = PassContext {
        backend: Backend::Recordings(RecordingBackend::from_lists("bench", [TagList::new("group/empty", vec![], vec![])?])),
        audit: store.audit_log(),
        runs: store.runs(),
        imports: store.imports(),
        guards: Guards::default(),
        limits: DeletionLimits { timeout: Duration::from_secs(250), concurrency: 8, max_list_size: None, keep_manifest_bytes: 0 },
        dry_run: false,
        now: Some(now),
    };
    store.put_policy_state(&PolicyState { name: "p".into(), enabled: true, cadence: Duration::from_secs(86_400), next_run_at: due })?;
    store.add_repositories("p", &["group/empty".to_owned()])?;
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut times = Vec::with_capacity(PASSES);
    for i in 0..PASSES + PASSES / 10 {
        // Claimable again: never started, as after a new cadence.
        store.put_repository_state(&RepositoryState {
            path: "group/empty".into(),
            policy: "p".into(),
            status: CleanupStatus::Unscheduled,
            started_at: None,
            completed_at: None,
            next_attempt_at: None,
            consecutive_failures: 0,
            lease_owner: None,
            lease_expires_at: None,
            last_failure: None,
            last_deleted: None,
        })?;
        let t = Instant::now();
        let claim = store.claim_next(now, "bench", Duration::from_secs(600))?.expect("claimable");
        let report = tokio.block_on(pass::run_repository(&ctx, &policy, &claim.path, &|_| {}));
        anyhow::ensure!(report.status.is_success(), "{report:?}");
        anyhow::ensure!(store.finish_claim(&claim.path, "bench", &CleanupOutcome::Done { deleted: report.tags_deleted }, now)?);
        if i >= PASSES / 10 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    let pick = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!("\n### Daemon overhead per pass\n");
    println!("{PASSES} passes over an empty repository: claim → list → evaluate → run row opened and closed → claim finished.\n");
    println!("| p50 | p99 | max |");
    println!("|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("| {:.2} ms | {:.2} ms | {:.2} ms |", ms(pick(0.5)), ms(pick(0.99)), ms(*times.last().unwrap()));
    Ok(())
}
