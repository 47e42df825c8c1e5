//! Claim latency from a large state table (issue 9 §9): `StateStore::claim_next` over
//! 1,000,000 repositories in 10 policies on SQLite (an on-disk database in a temp directory),
//! one worker and `worker_capacity` (4) workers claiming at once. Each claimed repository is
//! then marked done, as a finished pass would, so the queue moves. Target: p99 < 1 ms.
//!
//! `cargo bench -p tagwarden --bench state` (`TAGWARDEN_BENCH_REPOSITORIES=N` for another
//! size). Figures in docs/benchmarks.md ("State store").

use std::time::{Duration, Instant};

use tagwarden::model::Timestamp;
use tagwarden::store::{CleanupStatus, PolicyState, RepositoryState, StateStore, Store};

const POLICIES: usize = 10;
const CLAIMS_PER_RUN: usize = 20_000;

fn main() -> anyhow::Result<()> {
    let repositories: usize = std::env::var("TAGWARDEN_BENCH_REPOSITORIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("tagwarden.db"))?;
    let now = Timestamp::parse_rfc3339("2026-11-20T12:00:00Z")?;
    let due = Timestamp::parse_rfc3339("2026-11-20T11:00:00Z")?;
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
    println!("## State store\n");
    println!(
        "Command: `cargo bench -p tagwarden --bench state`; {repositories} repositories in {POLICIES} policies, SQLite on disk (WAL).\n"
    );
    println!("| workers | claims | p50 | p99 | max | claims/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for workers in [1, 4] {
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
            "| {workers} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} |",
            latencies.len(),
            us(pick(0.5)),
            us(pick(0.99)),
            us(*latencies.last().unwrap()),
            latencies.len() as f64 / wall.as_secs_f64()
        );
    }
    println!("\nclaims/s counts the claim and the bookkeeping write that marks the repository done.");
    Ok(())
}
