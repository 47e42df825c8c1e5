//! Claim latency from a large state table (issues 9 §9 and 14 §6): `StateStore::claim_next` over
//! 1,000,000 repositories in 10 policies on SQLite (an on-disk database in a temp directory) and
//! on PostgreSQL (a throwaway cluster with default durability, over loopback TCP), in the same
//! run: 1, 2 (`worker_capacity`), 3 and 6 workers claiming at once. Each claimed repository is then marked done, as a
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
use tagwarden::store::{CleanupOutcome, PgStateStore, PolicyState, StateStore, Store};
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
    for workers in [1, 2, 3, 6] {
        claims("SQLite", &sqlite, workers, now)?;
        claims("PostgreSQL", &postgres, workers, now)?;
    }
    println!("\nclaims/s counts the claim and the bookkeeping write that marks the repository done.");
    drop(postgres);
    drop(cluster);
    pass_overhead(now, due, repositories)
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
                        // The pass finished: done for this cycle, as the daemon records it.
                        let owner = format!("worker-{w}");
                        store.finish_claim(&claim.path, &owner, &CleanupOutcome::Done { deleted: 0 }, now)?;
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

/// Passes per worker count, after a warm-up of a tenth as many.
const PASSES: usize = 2_000;

/// The daemon's worker loop over empty repositories (the state table as large as the claim
/// benchmark's, every repository with an empty recording): claim → list → evaluate → run row
/// opened and closed → claim finished, back to back, with 1 and `worker_capacity` workers.
/// Empty repositories make it the highest claim rate a daemon can reach (every pass takes
/// a fraction of a millisecond), so this is where claims contend most in service. Each
/// worker count gets a database of its own.
fn pass_overhead(now: Timestamp, due: Timestamp, repositories: usize) -> anyhow::Result<()> {
    println!("\n### The daemon's loop: claims in service and overhead per pass\n");
    println!(
        "{PASSES} passes over empty repositories, back to back: claim (from {repositories} repositories in {POLICIES} policies, all due) → \
         list → evaluate → run row opened and closed → claim finished.\n"
    );
    println!("| workers | passes | claim p50 | claim p99 | pass p50 | pass p99 | pass max | passes/s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for workers in [1, 2] {
        daemon_loop(now, due, repositories, workers)?;
    }
    Ok(())
}

fn daemon_loop(now: Timestamp, due: Timestamp, repositories: usize, workers: usize) -> anyhow::Result<()> {
    use tagwarden::backend::{Backend, RecordingBackend};
    use tagwarden::model::TagList;
    use tagwarden::pass::{self, DeletionLimits, Guards, PassContext, Policy};
    use tagwarden::runtime::{PluginLimits, PluginRuntime, RuntimeConfig};

    let warm_up = PASSES / 10;
    let paths: Vec<Vec<String>> =
        (0..POLICIES).map(|p| (0..repositories / POLICIES).map(|i| format!("group-{p}/empty-{i:07}")).collect()).collect();
    let lists = paths.iter().flatten().map(|p| TagList::new(p, vec![], vec![])).collect::<Result<Vec<_>, _>>()?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("tagwarden.db"))?;
    let runtime = std::sync::Arc::new(PluginRuntime::new(RuntimeConfig::default())?);
    let path = tagwarden::plugins::resolve("gitlab-retention", &[])?;
    let plugin = runtime.load_file(&path, PluginLimits::default())?.into_retention()?;
    let policy = Policy::new("p", &plugin, r#"{"name_regex_delete": ".*", "keep_n": 10, "older_than": "90d"}"#)?;
    let ctx = PassContext {
        backend: Backend::Recordings(RecordingBackend::from_lists("bench", lists)),
        audit: store.audit_log(),
        runs: store.runs(),
        imports: store.imports(),
        guards: Guards::default(),
        limits: DeletionLimits { timeout: Duration::from_secs(250), concurrency: 8, max_list_size: None, keep_manifest_bytes: 0 },
        dry_run: false,
        now: Some(now),
    };
    for (p, paths) in paths.iter().enumerate() {
        let name = format!("p{p}");
        store.put_policy_state(&PolicyState {
            name: name.clone(),
            enabled: true,
            cadence: Duration::from_secs(86_400),
            next_run_at: due,
        })?;
        store.add_repositories(&name, paths)?;
    }
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let claimed = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let mut timed: Vec<(Duration, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (store, ctx, policy, tokio, claimed) = (&store, &ctx, &policy, &tokio, &claimed);
                s.spawn(move || -> anyhow::Result<Vec<(Duration, Duration)>> {
                    let owner = format!("worker-{w}");
                    let mut out = Vec::new();
                    loop {
                        // The table holds far more due repositories than are timed: stop after
                        // PASSES; the first `warm_up` (plugin instances, page cache) are not timed.
                        let n = claimed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= PASSES + warm_up {
                            break;
                        }
                        let t = Instant::now();
                        let Some(claim) = store.claim_next(now, &owner, Duration::from_secs(600))? else { break };
                        let claim_took = t.elapsed();
                        let report = tokio.block_on(pass::run_repository(ctx, policy, &claim.path, &|_| {}));
                        anyhow::ensure!(report.status.is_success(), "{report:?}");
                        anyhow::ensure!(store.finish_claim(
                            &claim.path,
                            &owner,
                            &CleanupOutcome::Done { deleted: report.tags_deleted },
                            now
                        )?);
                        if n >= warm_up {
                            out.push((claim_took, t.elapsed()));
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect::<anyhow::Result<Vec<_>>>().map(|v| v.concat())
    })?;
    let wall = started.elapsed();
    let pick = |v: &[Duration], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    let mut claims: Vec<Duration> = timed.iter().map(|t| t.0).collect();
    claims.sort();
    timed.sort_by_key(|t| t.1);
    let passes: Vec<Duration> = timed.iter().map(|t| t.1).collect();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {workers} | {} | {:.0} µs | {:.0} µs | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
        passes.len(),
        us(pick(&claims, 0.5)),
        us(pick(&claims, 0.99)),
        ms(pick(&passes, 0.5)),
        ms(pick(&passes, 0.99)),
        ms(*passes.last().unwrap()),
        (PASSES + warm_up) as f64 / wall.as_secs_f64()
    );
    Ok(())
}
