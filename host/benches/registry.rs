//! Registry benchmark: how fast a tagwarden pass deletes from a real registry (CNCF
//! distribution 2.8 on tmpfs, started by the test bed) compared with the ceiling of the
//! same deletes sent by `curl --parallel` at the same concurrency, in the same run; the
//! speedup over one-at-a-time deletion; and tag-list metadata time with a cold and a warm
//! metadata cache. The figures in docs/benchmarks.md ("Registry") come from
//!
//! ```text
//! cargo xtask build-plugins && cargo bench -p tagwarden --bench registry
//! ```
//!
//! Every deletion scenario gets a FRESH registry seeded identically (`TAGWARDEN_BENCH_TAGS`
//! images, one tag each, unique digests, `created` set), because distribution's delete
//! time grows with the number of tags left in the repository. Scenarios:
//!
//! - `curl`: the ceiling. The digests are resolved first, untimed, by the same
//!   `RegistryClient::tag_list` a pass starts with (so the registry has served the same reads
//!   before its deletes as in a pass), then deleted with
//!   `curl --parallel --parallel-immediate --parallel-max C -X DELETE -K <file>`, one
//!   `url = .../v2/<repo>/manifests/<digest>` per digest, in the order the pass uses (by
//!   digest). Timed: the curl process, wall clock. (`curl-unlisted`, `curl-1-unlisted`: the
//!   same without that listing, digests from seeding; run only when named in the filter.)
//! - `pass`: `pass::run_repository` with the `hostile-retention` plugin in mode `delete`
//!   (every tag deleted), deletion concurrency C, a fresh on-disk store (so its listing
//!   runs with a cold metadata cache). The deletion phase is timed from the end of the
//!   evaluation to the last `Progress::Deleting` callback: the `Evaluating` callback's
//!   time plus the evaluation's duration (the same `pass::plan` call on the same list,
//!   timed after the pass, median of 5). The listing phase is reported separately.
//! - `pass-1`: the same pass with deletion concurrency 1 (one delete at a time).
//! - `curl-1`: curl one at a time (no `--parallel`, one kept-alive connection).
//! - `metadata`: `RegistryClient::tag_list` on a fresh registry, with a cold cache (a fresh
//!   store each time) and warm (a new client on the same store, as the next `run --once`
//!   would be); requests counted by `RegistryClient::stats`.
//!
//! Passes keep each manifest before deleting it (for `tagwarden restore`: one `GET` per
//! deleted manifest); `TAGWARDEN_BENCH_KEEP_MANIFESTS=0` runs them without.
//!
//! Per-request latencies of the pass's DELETEs come from the transport's `registry
//! request` debug events (captured by a tracing layer for that one target; set
//! `TAGWARDEN_BENCH_LATENCIES=0` to run without it); curl's from `-w %{time_total}`. The
//! transport logs whole milliseconds, truncated, so the pass's latencies (and its "in
//! flight") read ~0.5 ms low on average: ~3 % at concurrency 1, where a delete takes ~17 ms.
//! "In flight" is the sum of request latencies divided by the phase's wall time: the
//! average number of deletes the registry was working on. CPU figures come from `/proc`:
//! the bench process (the pass's client) or curl, the registry process (and the cores it kept
//! busy: its CPU time ÷ the phase's wall time), and everything else on the machine.
//!
//! Options (environment):
//! - `TAGWARDEN_BENCH_TAGS` (default 2000; 200 in quick mode), `TAGWARDEN_BENCH_CONCURRENCY`
//!   (default 8), `TAGWARDEN_BENCH_ROUNDS` (default 3: each deletion scenario three times,
//!   every other round in reverse order, so that slow drift in the machine's speed favours
//!   no scenario; each ratio is computed per round, from runs minutes apart, and the median
//!   over the rounds is reported);
//! - `TAGWARDEN_BENCH_RETRIES` (default 2; 0 in quick mode): extra attempts at a run during
//!   which other processes used more than 10 % of a core (the machine is shared; the
//!   "other processes" column is `/proc/stat` busy time minus the client and the registry);
//!   such runs are marked ⚠ and left out of the ratios;
//! - `TAGWARDEN_BENCH_QUICK=1`: smoke run (200 tags, one round, one metadata repetition);
//! - a filter argument or `TAGWARDEN_BENCH_FILTER`: comma-separated scenarios among
//!   `curl`, `pass`, `pass-1`, `curl-1`, `metadata` (the default set), `curl-unlisted`,
//!   `curl-1-unlisted`
//!   (`cargo bench -p tagwarden --bench registry -- curl,pass`).
//!
//! The output ends with markdown tables ready to paste into docs/benchmarks.md.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tagwarden::backend::Backend;
use tagwarden::model::Timestamp;
use tagwarden::pass::{self, DeletionLimits, Guards, PassContext, Policy, Progress, RepositoryStatus};
use tagwarden::registry::{RegistryClient, RegistryConfig, RequestStats};
use tagwarden::runtime::{PluginLimits, PluginRuntime, RuntimeConfig};
use tagwarden::store::Store;
use tagwarden_testbed::{ACCEPT_ALL_MANIFESTS, RegistryOptions, TestRegistry};

const REPO: &str = "bench/app";
const CURL: &str = "/usr/bin/curl";
/// 2024-01-01T00:00:00Z; image `i` was created `i` minutes later.
const CREATED_BASE_MICROS: i64 = 1_704_067_200 * 1_000_000;
const SCENARIOS: [&str; 7] = ["curl", "pass", "pass-1", "curl-1", "metadata", "curl-unlisted", "curl-1-unlisted"];
/// Run unless a filter names scenarios.
const DEFAULT_SCENARIOS: [&str; 5] = ["curl", "pass", "pass-1", "curl-1", "metadata"];

fn main() -> anyhow::Result<()> {
    let options = Options::from_env()?;
    let machine = Machine::probe();
    clock_ticks(); // runs `getconf` now rather than inside a progress callback
    if options.latencies {
        latency::install();
    }
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    tokio.block_on(run(&options, &machine))
}

async fn run(options: &Options, machine: &Machine) -> anyhow::Result<()> {
    eprintln!(
        "registry benchmark: {} tags, concurrency {}, {} round(s), scenarios {}",
        options.tags,
        options.concurrency,
        options.rounds,
        options.scenarios.join(",")
    );
    let runtime = Arc::new(PluginRuntime::new(RuntimeConfig::default()).context("creating the plugin runtime")?);
    let path = tagwarden::plugins::resolve("hostile-retention", &[])
        .map_err(|e| anyhow::anyhow!("{e:#}\n(build the plugins first: cargo xtask build-plugins)"))?;
    let plugin = runtime.load_file(&path, PluginLimits::default())?.into_retention()?;
    let policy = Policy::new("bench", &plugin, r#"{"mode": "delete"}"#)?;

    let mut runs: Vec<DeleteRun> = Vec::new();
    let mut seeds: Vec<Duration> = Vec::new();
    let c = options.concurrency;
    for round in 0..options.rounds {
        let mut order: Vec<&str> =
            ["curl", "pass", "pass-1", "curl-1", "curl-unlisted", "curl-1-unlisted"].into_iter().filter(|s| options.wants(s)).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for scenario in order {
            for attempt in 0.. {
                let seeded = Seeded::new(options.tags).await?;
                seeds.push(seeded.seed_time);
                let mut run = match scenario {
                    "curl" => curl_deletes(&seeded, Some(c), true).await?,
                    "curl-1" => curl_deletes(&seeded, None, true).await?,
                    "curl-unlisted" => curl_deletes(&seeded, Some(c), false).await?,
                    "curl-1-unlisted" => curl_deletes(&seeded, None, false).await?,
                    "pass" => pass_deletes(&seeded, &policy, c, c).await?,
                    "pass-1" => pass_deletes(&seeded, &policy, c, 1).await?,
                    _ => unreachable!(),
                };
                let left = seeded.registry.client().tags(REPO).await?;
                ensure!(left.is_empty(), "{scenario}: {} tags left after deleting everything", left.len());
                drop(seeded);
                run.round = round;
                eprintln!("  {}", run.summary());
                let disturbed = run.disturbed();
                runs.push(run);
                if !disturbed || attempt >= options.retries {
                    break;
                }
                eprintln!("  other processes used more than {:.0} % of a core during that run: repeating it", BUSY_SHARE * 100.0);
                wait_for_quiet().await;
            }
        }
    }
    let metadata = if options.wants("metadata") { Some(metadata(options).await?) } else { None };
    print_report(options, machine, &runs, &seeds, metadata.as_ref());
    Ok(())
}

/// A run is disturbed when other processes (builds, tests) used more than this share of one
/// core during its deletion phase; disturbed runs are repeated and left out of the ratios.
const BUSY_SHARE: f64 = 0.10;

/// Waits (up to 5 minutes) until other processes use less than [`BUSY_SHARE`] of a core over 5 s.
async fn wait_for_quiet() {
    for _ in 0..60 {
        let before = machine_cpu().0;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let share = (machine_cpu().0 - before) / 5.0;
        if share < BUSY_SHARE {
            return;
        }
        eprintln!("  waiting for a quiet machine: {:.0} % of a core busy", share * 100.0);
    }
}

/// A fresh registry holding `n` single-tag images with unique digests.
struct Seeded {
    registry: TestRegistry,
    /// `(tag, digest)`, sorted by digest (the order a pass deletes in).
    images: Vec<(String, String)>,
    seed_time: Duration,
}

impl Seeded {
    async fn new(n: usize) -> anyhow::Result<Self> {
        let registry = TestRegistry::start(RegistryOptions::default()).await?;
        let started = Instant::now();
        let created = |i: usize| Some(Timestamp::from_unix_micros(CREATED_BASE_MICROS + i as i64 * 60_000_000).to_rfc3339());
        let digests = registry.client().push_many(REPO, "build-", n, created).await?;
        let seed_time = started.elapsed();
        let mut images: Vec<(String, String)> = digests.into_iter().enumerate().map(|(i, d)| (format!("build-{i}"), d)).collect();
        images.sort_by(|a, b| a.1.cmp(&b.1));
        let distinct = images.windows(2).all(|w| w[0].1 != w[1].1);
        ensure!(distinct, "seeding produced two images with the same digest");
        eprintln!("  seeded {n} images in {:.1} s ({:.0} images/s)", seed_time.as_secs_f64(), n as f64 / seed_time.as_secs_f64());
        Ok(Seeded { registry, images, seed_time })
    }
}

/// One deletion scenario's measurements.
struct DeleteRun {
    scenario: String,
    /// 0-based round.
    round: usize,
    concurrency: usize,
    deletes: usize,
    /// The deletion phase, wall clock.
    wall: Duration,
    /// Per-delete request latencies (ms, as measured by the client).
    latencies_ms: Vec<f64>,
    /// CPU seconds in the phase.
    cpu: CpuUse,
    /// curl only: TCP connections opened (`%{num_connects}` summed).
    connections: Option<usize>,
    /// Pass only.
    pass: Option<PassDetail>,
}

struct PassDetail {
    /// Start of the pass to the `Evaluating` callback (listing with a cold cache).
    listing: Duration,
    /// `pass::plan` on the same list, median of 5.
    evaluation: Duration,
    /// `Evaluating` callback to the last `Deleting` callback (evaluation included).
    evaluating_to_last: Duration,
    /// The first delete goes alone: `Evaluating` callback to its completion, minus evaluation.
    first_delete: Duration,
    report_elapsed: Duration,
    delete_requests: u64,
    retries: u64,
}

impl DeleteRun {
    fn disturbed(&self) -> bool {
        self.cpu.others / self.wall.as_secs_f64() > BUSY_SHARE
    }

    fn rate(&self) -> f64 {
        self.deletes as f64 / self.wall.as_secs_f64()
    }

    fn mean_latency_ms(&self) -> Option<f64> {
        (!self.latencies_ms.is_empty()).then(|| self.latencies_ms.iter().sum::<f64>() / self.latencies_ms.len() as f64)
    }

    /// Mean latency of the first and the last tenth of the deletes (in completion order): how
    /// delete time changes as the repository empties.
    fn first_last_tenth_ms(&self) -> Option<(f64, f64)> {
        let n = self.latencies_ms.len() / 10;
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        (n > 0).then(|| (mean(&self.latencies_ms[..n]), mean(&self.latencies_ms[self.latencies_ms.len() - n..])))
    }

    fn in_flight(&self) -> Option<f64> {
        (!self.latencies_ms.is_empty()).then(|| self.latencies_ms.iter().sum::<f64>() / 1000.0 / self.wall.as_secs_f64())
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{} (concurrency {}): {} deletes in {:.2} s = {:.1} deletes/s",
            self.scenario,
            self.concurrency,
            self.deletes,
            self.wall.as_secs_f64(),
            self.rate()
        );
        if let (Some(mean), Some(flight)) = (self.mean_latency_ms(), self.in_flight()) {
            let _ = write!(s, ", mean latency {mean:.1} ms, {flight:.2} in flight");
        }
        if let Some((first, last)) = self.first_last_tenth_ms() {
            let _ = write!(s, " (first tenth {first:.1} ms, last tenth {last:.1} ms)");
        }
        let c = &self.cpu;
        let _ = write!(s, ", CPU client {:.2} s registry {:.2} s others {:.2} s steal {:.2} s", c.client, c.registry, c.others, c.steal);
        if let Some(n) = self.connections {
            let _ = write!(s, ", {n} connections opened");
        }
        if let Some(p) = &self.pass {
            let _ = write!(
                s,
                "; listing {:.2} s, evaluation {:.1} ms, first delete {:.1} ms, report elapsed {:.2} s, {} DELETE requests, {} retries",
                p.listing.as_secs_f64(),
                ms(p.evaluation),
                ms(p.first_delete),
                p.report_elapsed.as_secs_f64(),
                p.delete_requests,
                p.retries
            );
        }
        s
    }
}

/// The ceiling: the same deletes sent by curl, `Some(c)` in parallel or `None` one at a time.
///
/// With `listed`, the digests come from the same (untimed) `tag_list` a pass starts with, so the
/// registry has served the same reads before the deletes as in a pass.
async fn curl_deletes(seeded: &Seeded, parallel: Option<usize>, listed: bool) -> anyhow::Result<DeleteRun> {
    let dir = tempfile::tempdir()?;
    let mut digests: Vec<String> = seeded.images.iter().map(|(_, d)| d.clone()).collect();
    if listed {
        let store = Store::open(&dir.path().join("tagwarden.db"))?;
        let mut rc = RegistryConfig::new(url::Url::parse(seeded.registry.url())?);
        rc.concurrency = parallel.unwrap_or(1).max(8);
        let client = RegistryClient::new(rc, Some(store.metadata_cache()))?;
        let list = client.tag_list(REPO, &|_, _| {}).await?.context("repository not found")?;
        let mut listed: Vec<String> = list.tags().iter().map(|t| t.digest.as_str().to_owned()).collect();
        listed.sort();
        ensure!(listed == digests, "the listing's digests differ from the seeded ones");
        digests = listed;
    }
    let config = dir.path().join("deletes.curl");
    let mut text = String::new();
    for digest in &digests {
        let _ = writeln!(text, "url = \"{}/v2/{REPO}/manifests/{digest}\"\noutput = \"/dev/null\"", seeded.registry.url());
    }
    std::fs::write(&config, text)?;
    let mut cmd = Command::new(CURL);
    cmd.args(["--silent", "--show-error", "--no-progress-meter", "-X", "DELETE", "-H"]).arg(format!("Accept: {ACCEPT_ALL_MANIFESTS}"));
    cmd.args(["-w", "%{http_code} %{time_total} %{num_connects}\\n"]);
    if let Some(c) = parallel {
        cmd.args(["--parallel", "--parallel-immediate", "--parallel-max"]).arg(c.to_string());
    }
    cmd.arg("-K").arg(&config).stdin(Stdio::null()).stderr(Stdio::inherit());
    let pid = seeded.registry.pid();
    let before = Cpu::now(pid);
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| cmd.output()).context("running curl")?;
    let wall = started.elapsed();
    let after = Cpu::now(pid);
    ensure!(out.status.success(), "curl failed: {}", out.status);
    let stdout = String::from_utf8(out.stdout)?;
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut latencies_ms = Vec::new();
    let mut connections = 0;
    for line in stdout.lines() {
        let mut fields = line.split(' ');
        let (Some(code), Some(total), Some(connects)) = (fields.next(), fields.next(), fields.next()) else {
            bail!("unexpected curl -w output {line:?}");
        };
        *codes.entry(code.to_owned()).or_default() += 1;
        latencies_ms.push(total.parse::<f64>()? * 1000.0);
        connections += connects.parse::<usize>()?;
    }
    ensure!(
        codes.get("202") == Some(&seeded.images.len()) && codes.len() == 1,
        "curl: expected {} answers 202, got {codes:?}",
        seeded.images.len()
    );
    Ok(DeleteRun {
        round: 0,
        scenario: match (parallel.is_some(), listed) {
            (true, true) => "curl --parallel".into(),
            (false, true) => "curl, one at a time".into(),
            (true, false) => "curl --parallel, no listing first".into(),
            (false, false) => "curl, one at a time, no listing first".into(),
        },
        concurrency: parallel.unwrap_or(1),
        deletes: seeded.images.len(),
        wall,
        latencies_ms,
        cpu: before.until(&after),
        connections: Some(connections),
        pass: None,
    })
}

/// What the progress callback saw.
#[derive(Default)]
struct Timeline {
    evaluating: Option<(Instant, Cpu)>,
    first_delete: Option<Instant>,
    last_delete: Option<(Instant, Cpu)>,
    deletes: usize,
}

/// A tagwarden pass deleting every tag, `delete_concurrency` deletes in flight.
async fn pass_deletes(seeded: &Seeded, policy: &Policy, client_concurrency: usize, delete_concurrency: usize) -> anyhow::Result<DeleteRun> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("tagwarden.db"))?;
    let mut rc = RegistryConfig::new(url::Url::parse(seeded.registry.url())?);
    rc.concurrency = client_concurrency.max(delete_concurrency);
    let client = RegistryClient::new(rc, Some(store.metadata_cache()))?;
    let ctx = PassContext {
        backend: Backend::Oci(client.clone()),
        audit: store.audit_log(),
        runs: store.runs(),
        imports: store.imports(),
        guards: Guards::default(),
        limits: DeletionLimits {
            timeout: Duration::from_secs(3600),
            concurrency: delete_concurrency,
            max_list_size: None,
            // What a pass pays for restorability (one GET per deleted manifest): compare with
            // TAGWARDEN_BENCH_KEEP_MANIFESTS=0.
            keep_manifest_bytes: match std::env::var("TAGWARDEN_BENCH_KEEP_MANIFESTS").as_deref() {
                Ok("0") => 0,
                _ => tagwarden::pass::KEEP_MANIFEST_BYTES,
            },
        },
        dry_run: false,
        now: Some(Timestamp::now()),
    };
    let pid = seeded.registry.pid();
    let timeline = Mutex::new(Timeline::default());
    let progress = |p: Progress| match p {
        Progress::Evaluating { .. } => timeline.lock().unwrap().evaluating = Some((Instant::now(), Cpu::now(pid))),
        Progress::Deleting { done, total } => {
            let now = Instant::now();
            let mut t = timeline.lock().unwrap();
            t.first_delete.get_or_insert(now);
            t.deletes = done;
            if done == total {
                drop(t);
                let cpu = Cpu::now(pid);
                timeline.lock().unwrap().last_delete = Some((now, cpu));
            }
        }
        Progress::Listing { .. } => {}
    };
    latency::clear();
    let started = Instant::now();
    let report = pass::run_repository(&ctx, policy, REPO, &progress).await;
    let samples = latency::take();
    let n = seeded.images.len();
    ensure!(report.status == RepositoryStatus::Completed, "pass ended {:?}: {:?}", report.status, report.errors);
    ensure!(
        report.tags_deleted == n && report.manifests_deleted == n && report.failed == 0,
        "pass deleted {} tags / {} manifests of {n}, {} failed",
        report.tags_deleted,
        report.manifests_deleted,
        report.failed
    );
    let timeline = timeline.into_inner().unwrap();
    let (evaluating, cpu_eval) = timeline.evaluating.context("no Evaluating callback")?;
    let (last, cpu_last) = timeline.last_delete.context("no final Deleting callback")?;
    let first = timeline.first_delete.context("no Deleting callback")?;
    ensure!(timeline.deletes == n, "{} deletion callbacks for {n} deletes", timeline.deletes);

    // The evaluation inside the pass, timed on the same list after the fact.
    let list = report.plan.as_ref().context("the report has no plan")?.list.clone();
    let mut evals: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let plan = tokio::task::block_in_place(|| {
                pass::plan(policy, list.clone(), ctx.now.unwrap_or_else(Timestamp::now), &Guards::default())
            });
            let elapsed = started.elapsed();
            assert_eq!(plan.expect("plan").tags_to_delete(), n);
            elapsed
        })
        .collect();
    evals.sort();
    let evaluation = evals[evals.len() / 2];
    let evaluating_to_last = last - evaluating;
    let wall = evaluating_to_last.saturating_sub(evaluation);
    let stats = client.stats();
    let latencies_ms: Vec<f64> =
        samples.iter().filter(|s| s.method == "DELETE" && s.at >= evaluating && s.at <= last).map(|s| s.elapsed_ms as f64).collect();
    Ok(DeleteRun {
        round: 0,
        scenario: "tagwarden pass".into(),
        concurrency: delete_concurrency,
        deletes: n,
        wall,
        latencies_ms,
        cpu: cpu_eval.until(&cpu_last),
        connections: None,
        pass: Some(PassDetail {
            listing: evaluating - started,
            evaluation,
            evaluating_to_last,
            first_delete: (first - evaluating).saturating_sub(evaluation),
            report_elapsed: Duration::from_millis(report.elapsed_ms as u64),
            delete_requests: stats.delete,
            retries: stats.retries,
        }),
    })
}

struct MetadataRun {
    cold: Vec<(Duration, RequestStats, CpuUse)>,
    warm: Vec<(Duration, RequestStats, CpuUse)>,
    /// The re-check a pass makes before deleting, with no tag skipped (its worst case: every
    /// tag is resolved again), on a warm cache.
    recheck: Vec<(Duration, RequestStats, CpuUse)>,
    tags: usize,
}

/// `tag_list` with a cold cache (fresh store) and warm (a new client on the same store).
async fn metadata(options: &Options) -> anyhow::Result<MetadataRun> {
    let seeded = Seeded::new(options.tags).await?;
    let url = url::Url::parse(seeded.registry.url())?;
    let client_for = |store: &Store| {
        let mut rc = RegistryConfig::new(url.clone());
        rc.concurrency = options.concurrency;
        RegistryClient::new(rc, Some(store.metadata_cache()))
    };
    let pid = seeded.registry.pid();
    let list = |client: RegistryClient| async move {
        let cpu = Cpu::now(pid);
        let started = Instant::now();
        let list = client.tag_list(REPO, &|_, _| {}).await?.context("repository not found")?;
        let elapsed = started.elapsed();
        let cpu = cpu.until(&Cpu::now(pid));
        ensure!(list.tags().len() == options.tags, "listed {} tags of {}", list.tags().len(), options.tags);
        ensure!(list.tags().iter().all(|t| t.created_at.is_some()), "a tag without a creation time");
        Ok::<_, anyhow::Error>((elapsed, client.stats(), cpu))
    };
    let recheck = |client: RegistryClient| async move {
        let cpu = Cpu::now(pid);
        let started = Instant::now();
        let list = client.recheck(REPO, &std::collections::HashSet::new()).await?.context("repository not found")?;
        let elapsed = started.elapsed();
        let cpu = cpu.until(&Cpu::now(pid));
        ensure!(list.tags().len() == options.tags, "re-checked {} tags of {}", list.tags().len(), options.tags);
        Ok::<_, anyhow::Error>((elapsed, client.stats(), cpu))
    };
    let mut run = MetadataRun { cold: vec![], warm: vec![], recheck: vec![], tags: options.tags };
    for _ in 0..options.metadata_repetitions {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("tagwarden.db"))?;
        run.cold.push(list(client_for(&store)?).await?);
        run.warm.push(list(client_for(&store)?).await?);
        run.recheck.push(recheck(client_for(&store)?).await?);
        eprintln!(
            "  metadata: cold {:.2} s, warm {:.3} s, re-check {:.3} s",
            run.cold.last().unwrap().0.as_secs_f64(),
            run.warm.last().unwrap().0.as_secs_f64(),
            run.recheck.last().unwrap().0.as_secs_f64()
        );
    }
    Ok(run)
}

fn print_report(options: &Options, machine: &Machine, runs: &[DeleteRun], seeds: &[Duration], metadata: Option<&MetadataRun>) {
    let c = options.concurrency;
    println!();
    println!("## Registry");
    println!();
    println!("Command: `{}`", options.command());
    println!();
    println!(
        "Machine: {} × {} (nproc {}), {}; load average {} before, {} after. Registry: {}, storage on tmpfs (/dev/shm); client: {}.",
        machine.cores,
        machine.cpu,
        machine.cores,
        machine.rustc,
        machine.load_before,
        common::load_average(),
        machine.registry,
        machine.curl
    );
    if !seeds.is_empty() {
        let rates: Vec<f64> = seeds.iter().map(|d| options.tags as f64 / d.as_secs_f64()).collect();
        println!();
        println!(
            "Each deletion run starts from a fresh registry seeded with {} single-tag images (unique digests; seeding {:.0}-{:.0} images/s, not timed).",
            options.tags,
            rates.iter().cloned().fold(f64::INFINITY, f64::min),
            rates.iter().cloned().fold(0.0, f64::max)
        );
    }
    if !runs.is_empty() {
        println!();
        println!("### Deleting {} of {} tags (one manifest each)", options.tags, options.tags);
        println!();
        println!(
            "| run | concurrency | deletion phase | deletes/s | DELETE latency: mean (first → last tenth) | in flight | CPU: client | CPU: registry (cores busy) | CPU: other processes | listing (cold cache) | evaluation |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in runs {
            let (listing, eval) = r.pass.as_ref().map_or(("–".to_owned(), "–".to_owned()), |p| {
                (format!("{:.2} s", p.listing.as_secs_f64()), format!("{:.1} ms", ms(p.evaluation)))
            });
            println!(
                "| {} | {} | {:.2} s | {:.1} | {} | {} | {:.2} s | {:.2} s ({:.2}) | {:.2} s | {listing} | {eval} |",
                if r.disturbed() { format!("{} ⚠", r.scenario) } else { r.scenario.clone() },
                r.concurrency,
                r.wall.as_secs_f64(),
                r.rate(),
                match (r.mean_latency_ms(), r.first_last_tenth_ms()) {
                    (Some(m), Some((a, b))) => format!("{m:.1} ms ({a:.0} → {b:.0})"),
                    (Some(m), None) => format!("{m:.1} ms"),
                    _ => "–".into(),
                },
                r.in_flight().map_or("–".into(), |f| format!("{f:.2}")),
                r.cpu.client,
                r.cpu.registry,
                r.cpu.registry / r.wall.as_secs_f64(),
                r.cpu.others.max(0.0),
            );
        }
        if runs.iter().any(DeleteRun::disturbed) {
            println!();
            println!(
                "⚠ disturbed: other processes used more than {:.0} % of a core during the deletion phase; repeated, and not used in the ratios \
                 (unless a scenario has no undisturbed run in that round).",
                BUSY_SHARE * 100.0
            );
        }
        // The run standing for a scenario in a round: its last undisturbed attempt, else its last.
        let pick = |round: usize, (scenario, conc): (&str, usize)| {
            let all: Vec<&DeleteRun> =
                runs.iter().filter(|r| r.round == round && r.scenario == scenario && r.concurrency == conc).collect();
            all.iter().rev().find(|r| !r.disturbed()).or(all.last()).copied()
        };
        let (pass_c, pass_1) = (("tagwarden pass", c), ("tagwarden pass", 1));
        let (curl_c, curl_1) = (("curl --parallel", c), ("curl, one at a time", 1));
        let rate = DeleteRun::rate as fn(&DeleteRun) -> f64;
        let registry_cores = (|r: &DeleteRun| r.cpu.registry / r.wall.as_secs_f64()) as fn(&DeleteRun) -> f64;
        let rows = [
            (format!("pass ÷ curl ceiling, deletes/s at concurrency {c} (target ≥ 0.8)"), pass_c, curl_c, rate, ""),
            (format!("pass ÷ curl, registry CPU use (cores busy) at concurrency {c}"), pass_c, curl_c, registry_cores, ""),
            ("pass ÷ curl, deletes/s one at a time".to_owned(), pass_1, curl_1, rate, ""),
            (format!("pass speedup, concurrency {c} vs 1"), pass_c, pass_1, rate, "×"),
            (format!("curl speedup, concurrency {c} vs 1"), curl_c, curl_1, rate, "×"),
        ];
        println!();
        let rounds: Vec<usize> = (0..options.rounds).collect();
        let header: String = rounds.iter().map(|r| format!(" round {} |", r + 1)).collect();
        println!("| ratio (each round's runs paired) |{header} median |");
        println!("|---|{}---:|", "---:|".repeat(rounds.len()));
        for (label, a, b, metric, unit) in &rows {
            let values: Vec<Option<f64>> =
                rounds.iter().map(|&round| pick(round, *a).zip(pick(round, *b)).map(|(a, b)| metric(a) / metric(b))).collect();
            if values.iter().all(Option::is_none) {
                continue;
            }
            let cells: String = values.iter().map(|v| v.map_or(" – |".to_owned(), |v| format!(" {v:.2}{unit} |"))).collect();
            let median = median(values.iter().flatten().copied().collect()).map_or("–".to_owned(), |m| format!("{m:.2}{unit}"));
            println!("| {label} |{cells} **{median}** |");
        }
        println!();
        println!(
            "| pass run | round | `Evaluating` → last delete | of which evaluation | first delete (sent alone) | whole pass (`elapsed_ms`) | DELETE requests | retries |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in runs.iter().filter(|r| r.pass.is_some()) {
            let p = r.pass.as_ref().unwrap();
            println!(
                "| concurrency {}{} | {} | {:.2} s | {:.1} ms | {:.1} ms | {:.2} s | {} | {} |",
                r.concurrency,
                if r.disturbed() { " ⚠" } else { "" },
                r.round + 1,
                p.evaluating_to_last.as_secs_f64(),
                ms(p.evaluation),
                ms(p.first_delete),
                p.report_elapsed.as_secs_f64(),
                p.delete_requests,
                p.retries
            );
        }
    }
    if let Some(m) = metadata {
        println!();
        println!("### Tag-list metadata, {} tags (`RegistryClient::tag_list`, concurrency {c})", m.tags);
        println!();
        println!("| cache | median | min | per tag | requests | of which | CPU: client | CPU: registry | CPU: other processes (max) |");
        println!("|---|---:|---:|---:|---:|---|---:|---:|---:|");
        for (label, samples) in [
            ("cold (fresh store)", &m.cold),
            ("warm (same store, new client)", &m.warm),
            ("re-check before deleting (`RegistryClient::recheck`, no tag skipped)", &m.recheck),
        ] {
            let mut times: Vec<Duration> = samples.iter().map(|s| s.0).collect();
            times.sort();
            let mid = times[times.len() / 2];
            let stats = samples[0].1;
            ensure_same(samples);
            let cpu = |f: fn(&CpuUse) -> f64| median(samples.iter().map(|s| f(&s.2)).collect()).unwrap_or(0.0);
            let others = samples.iter().map(|s| s.2.others).fold(0.0, f64::max);
            println!(
                "| {label} | {:.3} s | {:.3} s | {:.2} ms | {} | {} | {:.2} s | {:.2} s | {:.2} s |",
                mid.as_secs_f64(),
                times[0].as_secs_f64(),
                ms(mid) / m.tags as f64,
                stats.total(),
                describe(&stats),
                cpu(|c| c.client),
                cpu(|c| c.registry),
                others
            );
        }
        println!();
        println!(
            "{} repetitions, cold and warm alternating; each cold listing uses a fresh on-disk store; CPU figures are medians.",
            m.cold.len()
        );
    }
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    (n > 0).then(|| if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 })
}

fn ensure_same(samples: &[(Duration, RequestStats, CpuUse)]) {
    if samples.windows(2).any(|w| w[0].1 != w[1].1) {
        eprintln!("warning: request counts differ between repetitions: {:?}", samples.iter().map(|s| s.1).collect::<Vec<_>>());
    }
}

fn describe(s: &RequestStats) -> String {
    let parts = [
        ("probe", s.probe),
        ("tags/list", s.tag_list),
        ("HEAD manifest", s.manifest_head),
        ("GET manifest", s.manifest_get),
        ("GET blob", s.blob_get),
        ("retries", s.retries),
    ];
    parts.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Options {
    tags: usize,
    concurrency: usize,
    rounds: usize,
    /// Extra attempts at a disturbed run.
    retries: usize,
    quick: bool,
    latencies: bool,
    metadata_repetitions: usize,
    scenarios: Vec<String>,
}

impl Options {
    fn from_env() -> anyhow::Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let number = |k: &str, default: usize| -> anyhow::Result<usize> {
            match var(k) {
                Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).with_context(|| format!("{k}={v}: expected a positive number")),
                None => Ok(default),
            }
        };
        let quick = var("TAGWARDEN_BENCH_QUICK").is_some_and(|v| v != "0");
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).or_else(|| var("TAGWARDEN_BENCH_FILTER"));
        let scenarios: Vec<String> = match filter {
            Some(f) => f.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
            None => DEFAULT_SCENARIOS.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(bad) = scenarios.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
            bail!("unknown scenario `{bad}`; expected some of {}", SCENARIOS.join(","));
        }
        Ok(Options {
            tags: number("TAGWARDEN_BENCH_TAGS", if quick { 200 } else { 2000 })?,
            concurrency: number("TAGWARDEN_BENCH_CONCURRENCY", 8)?,
            rounds: number("TAGWARDEN_BENCH_ROUNDS", if quick { 1 } else { 3 })?,
            retries: match var("TAGWARDEN_BENCH_RETRIES") {
                Some(v) => v.parse().with_context(|| format!("TAGWARDEN_BENCH_RETRIES={v}: expected a number"))?,
                None => {
                    if quick {
                        0
                    } else {
                        2
                    }
                }
            },
            quick,
            latencies: var("TAGWARDEN_BENCH_LATENCIES").is_none_or(|v| v != "0"),
            metadata_repetitions: if quick { 1 } else { 5 },
            scenarios,
        })
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }

    /// The command that reproduces this run.
    fn command(&self) -> String {
        let mut env = String::new();
        if self.quick {
            env.push_str("TAGWARDEN_BENCH_QUICK=1 ");
        }
        if self.tags != if self.quick { 200 } else { 2000 } {
            let _ = write!(env, "TAGWARDEN_BENCH_TAGS={} ", self.tags);
        }
        if self.concurrency != 8 {
            let _ = write!(env, "TAGWARDEN_BENCH_CONCURRENCY={} ", self.concurrency);
        }
        if self.rounds != if self.quick { 1 } else { 3 } {
            let _ = write!(env, "TAGWARDEN_BENCH_ROUNDS={} ", self.rounds);
        }
        if self.retries != if self.quick { 0 } else { 2 } {
            let _ = write!(env, "TAGWARDEN_BENCH_RETRIES={} ", self.retries);
        }
        if !self.latencies {
            env.push_str("TAGWARDEN_BENCH_LATENCIES=0 ");
        }
        let filter = if self.scenarios == DEFAULT_SCENARIOS { String::new() } else { format!(" -- {}", self.scenarios.join(",")) };
        format!("cargo xtask build-plugins && {env}cargo bench -p tagwarden --bench registry{filter}")
    }
}

/// CPU seconds used so far: this process, its waited-for children, the registry process, and
/// the whole machine (busy and stolen by the hypervisor, from `/proc/stat`).
#[derive(Clone, Copy)]
struct Cpu {
    own: f64,
    children: f64,
    registry: f64,
    machine_busy: f64,
    steal: f64,
}

impl Cpu {
    fn now(registry_pid: u32) -> Cpu {
        let own = proc_stat("self");
        let registry = proc_stat(&registry_pid.to_string());
        let (machine_busy, steal) = machine_cpu();
        Cpu { own: own.0, children: own.1, registry: registry.0 + registry.1, machine_busy, steal }
    }

    /// CPU seconds from `self` to `later`.
    fn until(&self, later: &Cpu) -> CpuUse {
        let client = (later.own - self.own) + (later.children - self.children);
        let registry = later.registry - self.registry;
        let busy = later.machine_busy - self.machine_busy;
        CpuUse { client, registry, others: busy - client - registry, steal: later.steal - self.steal }
    }
}

/// CPU seconds used during a phase.
#[derive(Clone, Copy, Debug)]
struct CpuUse {
    /// The bench process (the pass's client) and curl.
    client: f64,
    registry: f64,
    /// Everything else on the machine: other engineers' builds and tests (machine busy time
    /// minus the two above; slightly negative when the counters' rounding disagrees).
    others: f64,
    /// Time the hypervisor gave to other guests.
    steal: f64,
}

/// `(user + nice + system + irq + softirq, steal)` of the machine, in seconds.
fn machine_cpu() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else { return (0.0, 0.0) };
    let f: Vec<f64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
    if f.len() < 8 {
        return (0.0, 0.0);
    }
    let tick = clock_ticks();
    ((f[0] + f[1] + f[2] + f[5] + f[6]) / tick, f[7] / tick)
}

/// `(utime + stime, cutime + cstime)` of `/proc/<pid>/stat`, in seconds.
fn proc_stat(pid: &str) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(')') else { return (0.0, 0.0) };
    let fields: Vec<f64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
    if fields.len() < 15 {
        return (0.0, 0.0);
    }
    // After the command: state is field 3, so utime (14) is index 11.
    let tick = clock_ticks();
    ((fields[11] + fields[12]) / tick, (fields[13] + fields[14]) / tick)
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

struct Machine {
    cpu: String,
    cores: usize,
    rustc: String,
    registry: String,
    curl: String,
    load_before: String,
}

impl Machine {
    fn probe() -> Self {
        let registry = tagwarden_testbed::registry_binary()
            .map(|p| common::first_line(&p.to_string_lossy(), "--version"))
            .unwrap_or_else(|e| format!("registry unavailable: {e:#}"));
        let curl = common::first_line(CURL, "--version").split(" (").next().unwrap_or("curl").to_owned();
        Machine {
            cpu: common::cpu_model(),
            cores: common::cores(),
            rustc: common::rustc_version(),
            registry,
            curl,
            load_before: common::load_average(),
        }
    }
}

/// Captures the transport's `registry request` debug events (method, status, elapsed) for
/// that one target only, so nothing else (wasmtime, cranelift) is enabled.
mod latency {
    use std::sync::Mutex;
    use std::time::Instant;

    use tracing::field::{Field, Visit};
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    pub struct Sample {
        pub at: Instant,
        pub method: String,
        pub elapsed_ms: u64,
    }

    static SAMPLES: Mutex<Vec<Sample>> = Mutex::new(Vec::new());

    pub fn install() {
        let targets = Targets::new().with_target("tagwarden::registry::transport", tracing::Level::DEBUG);
        tracing_subscriber::registry().with(Capture.with_filter(targets)).init();
    }

    pub fn clear() {
        SAMPLES.lock().unwrap().clear();
    }

    pub fn take() -> Vec<Sample> {
        std::mem::take(&mut *SAMPLES.lock().unwrap())
    }

    struct Capture;

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let mut v = Fields::default();
            event.record(&mut v);
            if v.message == "registry request"
                && let Some(elapsed_ms) = v.elapsed_ms
            {
                SAMPLES.lock().unwrap().push(Sample { at: Instant::now(), method: v.method, elapsed_ms });
            }
        }
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        method: String,
        elapsed_ms: Option<u64>,
    }

    impl Visit for Fields {
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == "elapsed_ms" {
                self.elapsed_ms = Some(value);
            }
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            match field.name() {
                "message" => self.message = format!("{value:?}"),
                "method" => self.method = format!("{value:?}"),
                _ => {}
            }
        }
    }
}
