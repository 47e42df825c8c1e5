//! The crash-and-fault torture test (issue 8): seeded random repositories in a REAL registry,
//! a `tagwarden run --once` interrupted at a random point — SIGKILL of the process, or a fault
//! on a random deletion request — then passes until convergence. After every interrupted run
//! and at the end:
//!
//! - no tag that the policy keeps (decided on the original listing) lost its digest;
//! - the final registry equals what an uninterrupted pass leaves (exactly the kept tags);
//! - no tag is left on tagwarden's dummy manifest, no audit row is left `attempted`;
//! - every manifest the registry lost, and every tag removed on its own, has its audit row.
//!
//! A short run is part of the suite. The long run is a documented command
//! (docs/reliability.md):
//! `TAGWARDEN_TORTURE_ITERATIONS=200 cargo test --release -p tagwarden --test integration torture -- --nocapture`
//! (`TAGWARDEN_TORTURE_SEED` replays one sequence).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;
use tagwarden::model::{Action, Timestamp};
use tagwarden::pass::{DUMMY_DIGEST, Guards};
use tagwarden::store::Store;
use tagwarden_testbed::{FaultProxy, Seeder};

use crate::crash::{run_once, spawn_run, write_config_for};
use crate::pass::{NOW, audit, client, gitlab, registry};

/// Iterations in the suite's short run.
const SHORT_RUN: usize = 6;

/// A small deterministic generator (xorshift64*), so a seed replays a run exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Seeds a random repository: images a day apart (some without a creation time), some tags
/// sharing a digest, a few multi-arch indexes. Returns the policy params.
async fn seed_repository(seed: &Seeder, repo: &str, rng: &mut Rng) -> serde_json::Value {
    let now = Timestamp::parse_rfc3339(NOW).unwrap();
    let images = 8 + rng.below(25) as usize;
    let mut digests = Vec::new();
    for i in 0..images {
        let created = (!rng.chance(10)).then(|| now.saturating_sub(Duration::from_secs(86_400 * (images - i) as u64)).to_rfc3339());
        let prefix = if rng.chance(30) { "rel" } else { "ci" };
        let tag = format!("{prefix}-{i:03}");
        let digest = if rng.chance(12) {
            let child = created.clone();
            seed.push_index(repo, &tag, [child.as_deref(), None]).await.unwrap()
        } else {
            seed.push_image(repo, &tag, created.as_deref()).await.unwrap()
        };
        digests.push(digest);
    }
    // Extra tags on existing digests: what makes deletions go one by one (the dummy method).
    for j in 0..rng.below(images as u64 / 2 + 1) {
        let digest = &digests[rng.below(digests.len() as u64) as usize];
        let prefix = if rng.chance(50) { "pin" } else { "ci-alias" };
        seed.retag(repo, digest, &format!("{prefix}-{j:03}")).await.unwrap();
    }
    let mut params = json!({"name_regex_delete": ".*", "keep_n": rng.below(6)});
    if rng.chance(70) {
        params["name_regex_keep"] = json!(if rng.chance(50) { "pin-.*" } else { "rel-.*" });
    }
    if rng.chance(30) {
        params["older_than"] = json!(format!("{}d", 1 + rng.below(10)));
    }
    params
}

/// Tags the policy keeps on `repo` as it is now (what an uninterrupted pass leaves), and how
/// many deletion requests the plan makes (digests, then tags removed one by one plus the
/// dummy method's few requests), so interruptions can land in every phase.
async fn kept_tags(url: &str, repo: &str, params: &serde_json::Value) -> (BTreeMap<String, String>, usize) {
    let store = Store::in_memory().unwrap();
    let list = client(url, &store).tag_list(repo, &|_, _| {}).await.unwrap().expect("the repository exists");
    let plan = tagwarden::pass::plan(&gitlab(params.clone()), list, Timestamp::parse_rfc3339(NOW).unwrap(), &Guards::default()).unwrap();
    let requests = plan.deletion.digests.len() + if plan.deletion.shared_tags.is_empty() { 0 } else { plan.deletion.shared_tags.len() + 4 };
    let kept = plan
        .list
        .tags()
        .iter()
        .zip(&plan.tags)
        .filter(|(_, v)| v.action == Action::Keep)
        .map(|(t, _)| (t.name.clone(), t.digest.to_string()))
        .collect();
    (kept, requests)
}

/// Every tag of `repo` and the digest it resolves to. Deletions forwarded after a kill may
/// land while this runs: a tag listed but gone by the time it is resolved is left out.
async fn snapshot(seed: &Seeder, repo: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for tag in seed.tags(repo).await.unwrap() {
        if let Some(digest) = seed.resolve(repo, &tag).await.unwrap() {
            out.insert(tag, digest);
        }
    }
    out
}

#[derive(Default, Debug)]
struct Figures {
    iterations: usize,
    kills: usize,
    faults: usize,
    passes_after: usize,
    tags: usize,
    violations: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_passes_converge_without_losing_a_kept_tag() {
    let iterations: usize = std::env::var("TAGWARDEN_TORTURE_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(SHORT_RUN);
    let seed_value: u64 = std::env::var("TAGWARDEN_TORTURE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x7a67_7761_7264_656e);
    eprintln!("torture: {iterations} iterations, seed {seed_value} (TAGWARDEN_TORTURE_SEED replays it)");
    let started = Instant::now();
    let reg = registry().await;
    let seed = reg.client();
    let proxy = FaultProxy::start(reg.url()).await.unwrap();
    let mut rng = Rng(seed_value | 1);
    let mut figures = Figures::default();

    for iteration in 0..iterations {
        let repo = format!("t/r{iteration}");
        let params = seed_repository(&seed, &repo, &mut rng).await;
        let before = snapshot(&seed, &repo).await;
        let (kept, requests) = kept_tags(reg.url(), &repo, &params).await;
        figures.tags += before.len();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config_for(dir.path(), proxy.url(), &params, &[&repo]);
        let context = format!("iteration {iteration} ({repo}, params {params})");

        // Interrupt the k-th mutating request (a delete, or a manifest PUT moving a tag).
        let k = rng.below(requests as u64 + 1) as usize;
        let kill = rng.chance(60);
        let mut held_deletes = proxy.hold(Some("DELETE"), &format!("/v2/{repo}/"), usize::MAX);
        let mut held_puts = proxy.hold(Some("PUT"), &format!("/v2/{repo}/manifests/"), usize::MAX);
        let mut child = spawn_run(dir.path(), &config);
        let mut seen = 0;
        let mut interrupted = false;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let next = tokio::select! {
                d = held_deletes.next(Duration::from_millis(100)) => d,
                p = held_puts.next(Duration::from_millis(100)) => p,
            };
            let Some(request) = next else {
                // Nothing held: the pass may have ended before its k-th mutating request.
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "{context}: the run neither finished nor sent a request");
                continue;
            };
            if seen < k {
                seen += 1;
                request.forward();
                continue;
            }
            interrupted = true;
            if kill {
                figures.kills += 1;
                child.kill().unwrap();
                let _ = child.wait();
                proxy.clear();
                // Whatever was in flight lands, or not, at random.
                let mut in_flight = vec![request];
                while let Some(r) = held_deletes.next(Duration::from_millis(50)).await {
                    in_flight.push(r);
                }
                while let Some(r) = held_puts.next(Duration::from_millis(50)).await {
                    in_flight.push(r);
                }
                for r in in_flight {
                    match rng.below(3) {
                        0 => r.forward(),
                        1 => r.drop_connection(),
                        _ => r.forward_then_drop(),
                    }
                }
            } else {
                figures.faults += 1;
                proxy.clear();
                if rng.chance(50) {
                    request.drop_connection()
                } else {
                    request.forward_then_drop()
                }
                // Let everything after it through.
                while let Some(r) = held_deletes.next(Duration::from_millis(20)).await {
                    r.forward();
                }
                while let Some(r) = held_puts.next(Duration::from_millis(20)).await {
                    r.forward();
                }
            }
            break;
        }
        proxy.clear();
        drop((held_deletes, held_puts));
        if !kill || !interrupted {
            let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
            assert!(out.status.code().is_some(), "{context}: the run ended by itself");
        }
        // Requests forwarded after a kill land asynchronously: wait until two snapshots
        // 100 ms apart agree.
        let mut last = snapshot(&seed, &repo).await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = snapshot(&seed, &repo).await;
            if now == last {
                break;
            }
            last = now;
        }
        check_kept(&kept, &last, &format!("{context}, after the interrupted run"), &mut figures.violations);

        // Passes until convergence (one should do; a fault in the last one is not retried).
        let mut converged = false;
        for pass in 0..3 {
            figures.passes_after += 1;
            let (code, output) = run_once(dir.path(), &config);
            let now = snapshot(&seed, &repo).await;
            check_kept(&kept, &now, &format!("{context}, pass {pass} after"), &mut figures.violations);
            if now == kept {
                converged = true;
                assert_eq!(code, Some(0), "{context}: {output}");
                break;
            }
        }
        let after = snapshot(&seed, &repo).await;
        if !converged {
            figures.violations.push(format!("{context}: did not converge: {after:#?} != {kept:#?}"));
            continue;
        }
        if after.values().any(|d| d.as_str() == DUMMY_DIGEST.as_str()) {
            figures.violations.push(format!("{context}: a tag is left on the dummy"));
        }
        let store = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
        let rows = audit(&store, &repo);
        let open: Vec<_> = rows.iter().filter(|r| r.outcome == "attempted").collect();
        if !open.is_empty() {
            figures.violations.push(format!("{context}: audit rows left attempted: {open:#?}"));
        }
        // Every manifest the registry lost, and every tag removed on its own, is audited.
        let remaining: BTreeSet<&str> = after.values().map(String::as_str).collect();
        let deleted_digests: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.operation == "delete_manifest" && (r.outcome == "deleted" || r.outcome == "already_gone"))
            .map(|r| r.digest.as_str())
            .collect();
        let removed_tags: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.outcome == "deleted" || r.outcome == "already_gone")
            .flat_map(|r| r.tags.iter().map(String::as_str))
            .collect();
        for (tag, digest) in &before {
            if after.contains_key(tag) {
                continue;
            }
            if !remaining.contains(digest.as_str()) && !deleted_digests.contains(digest.as_str()) && !removed_tags.contains(tag.as_str()) {
                figures.violations.push(format!("{context}: manifest {digest} (tag {tag}) was lost without a `deleted` audit row"));
            } else if remaining.contains(digest.as_str()) && !removed_tags.contains(tag.as_str()) {
                figures.violations.push(format!("{context}: tag {tag} was removed without an audit row"));
            }
        }
        figures.iterations += 1;
    }
    eprintln!(
        "torture: {} iterations, {} tags, {} SIGKILLs, {} faults, {} passes after, violations: {} ({:.1}s)",
        figures.iterations,
        figures.tags,
        figures.kills,
        figures.faults,
        figures.passes_after,
        figures.violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(figures.violations.is_empty(), "{:#?}", figures.violations);
    assert_eq!(figures.iterations, iterations);
    assert!(figures.kills + figures.faults > 0, "the run interrupted something: {figures:?}");
}

fn check_kept(kept: &BTreeMap<String, String>, now: &BTreeMap<String, String>, context: &str, violations: &mut Vec<String>) {
    for (tag, digest) in kept {
        if now.get(tag) != Some(digest) {
            violations.push(format!("{context}: kept tag {tag} lost its digest {digest} (now {:?})", now.get(tag)));
        }
    }
}
