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
//! - `curl`: the ceiling. The digests (known from seeding, not timed) are deleted with
//!   `curl --parallel --parallel-immediate --parallel-max C -X DELETE -K <file>`, one
//!   `url = .../v2/<repo>/manifests/<digest>` per digest, in the order the pass uses (by
//!   digest). Timed: the curl process, wall clock.
//! - `pass`: `pass::run_repository` with the `hostile-retention` plugin in mode `"delete"`
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
//! Per-request latencies of the pass's DELETEs come from the transport's `registry
//! request` debug events (captured by a tracing layer for that one target; set
//! `TAGWARDEN_BENCH_LATENCIES=0` to run without it); curl's from `-w %{time_total}`.
//! "In flight" is the sum of request latencies divided by the phase's wall time: the
//! average number of deletes the registry was working on. CPU figures come from
//! `/proc`: the bench process (the pass's client), curl, and the registry process.
//!
//! Options (environment):
//! - `TAGWARDEN_BENCH_TAGS` (default 2000; 200 in quick mode), `TAGWARDEN_BENCH_CONCURRENCY`
//!   (default 8), `TAGWARDEN_BENCH_ROUNDS` (default 1: each deletion scenario once; with
//!   more, odd rounds run the scenarios in reverse order);
//! - `TAGWARDEN_BENCH_QUICK=1`: smoke run (200 tags, one metadata repetition);
//! - a filter argument or `TAGWARDEN_BENCH_FILTER`: comma-separated scenarios among
//!   `curl`, `pass`, `pass-1`, `curl-1`, `metadata`
//!   (`cargo bench -p tagwarden --bench registry -- curl,pass`).
//!
//! The output ends with markdown tables ready to paste into docs/benchmarks.md.

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
const SCENARIOS: [&str; 5] = ["curl", "pass", "pass-1", "curl-1", "metadata"];

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
    let policy = Policy { name: "bench".into(), plugin, params: r#""delete""#.into() };

    let mut runs: Vec<DeleteRun> = Vec::new();
    let mut seeds: Vec<Duration> = Vec::new();
    let c = options.concurrency;
    for round in 0..options.rounds {
        let mut order: Vec<&str> = ["curl", "pass", "pass-1", "curl-1"].into_iter().filter(|s| options.wants(s)).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for scenario in order {
            let seeded = Seeded::new(options.tags).await?;
            seeds.push(seeded.seed_time);
            let run = match scenario {
                "curl" => curl_deletes(&seeded, Some(c)).await?,
                "curl-1" => curl_deletes(&seeded, None).await?,
                "pass" => pass_deletes(&seeded, &policy, c, c).await?,
                "pass-1" => pass_deletes(&seeded, &policy, c, 1).await?,
                _ => unreachable!(),
            };
            let left = seeded.registry.client().tags(REPO).await?;
            ensure!(left.is_empty(), "{scenario}: {} tags left after deleting everything", left.len());
            eprintln!("  {}", run.summary());
            runs.push(run);
        }
    }
    let metadata = if options.wants("metadata") { Some(metadata(options).await?) } else { None };
    print_report(options, machine, &runs, &seeds, metadata.as_ref());
    Ok(())
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
    concurrency: usize,
    deletes: usize,
    /// The deletion phase, wall clock.
    wall: Duration,
    /// Per-delete request latencies (ms, as measured by the client).
    latencies_ms: Vec<f64>,
    /// CPU seconds in the phase: the client (bench process or curl), the registry.
    client_cpu: f64,
    registry_cpu: f64,
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
    fn rate(&self) -> f64 {
        self.deletes as f64 / self.wall.as_secs_f64()
    }

    fn mean_latency_ms(&self) -> Option<f64> {
        (!self.latencies_ms.is_empty()).then(|| self.latencies_ms.iter().sum::<f64>() / self.latencies_ms.len() as f64)
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
        let _ = write!(s, ", CPU client {:.2} s registry {:.2} s", self.client_cpu, self.registry_cpu);
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
async fn curl_deletes(seeded: &Seeded, parallel: Option<usize>) -> anyhow::Result<DeleteRun> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("deletes.curl");
    let mut text = String::new();
    for (_, digest) in &seeded.images {
        let _ = writeln!(text, "url = \"{}/v2/{REPO}/manifests/{digest}\"\noutput = \"/dev/null\"", seeded.registry.url());
    }
    std::fs::write(&config, text)?;
    let mut cmd = Command::new(CURL);
    cmd.args(["--silent", "--show-error", "--no-progress-meter", "-X", "DELETE", "-H"]).arg(format!("Accept: {ACCEPT_ALL_MANIFESTS}"));
    cmd.args(["-w", "%{http_code} %{time_total}\\n"]);
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
    for line in stdout.lines() {
        let (code, total) = line.split_once(' ').context("curl -w output")?;
        *codes.entry(code.to_owned()).or_default() += 1;
        latencies_ms.push(total.parse::<f64>()? * 1000.0);
    }
    ensure!(
        codes.get("202") == Some(&seeded.images.len()) && codes.len() == 1,
        "curl: expected {} answers 202, got {codes:?}",
        seeded.images.len()
    );
    Ok(DeleteRun {
        scenario: if parallel.is_some() { "curl --parallel".into() } else { "curl, one at a time".into() },
        concurrency: parallel.unwrap_or(1),
        deletes: seeded.images.len(),
        wall,
        latencies_ms,
        client_cpu: after.children - before.children,
        registry_cpu: after.registry - before.registry,
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
        guards: Guards::default(),
        limits: DeletionLimits { timeout: Duration::from_secs(3600), concurrency: delete_concurrency },
        dry_run: false,
        now: Timestamp::now(),
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
            let plan = tokio::task::block_in_place(|| pass::plan(policy, list.clone(), ctx.now, &Guards::default()));
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
        scenario: "tagwarden pass".into(),
        concurrency: delete_concurrency,
        deletes: n,
        wall,
        latencies_ms,
        client_cpu: cpu_last.own - cpu_eval.own,
        registry_cpu: cpu_last.registry - cpu_eval.registry,
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
    cold: Vec<(Duration, RequestStats)>,
    warm: Vec<(Duration, RequestStats)>,
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
    let list = |client: RegistryClient| async move {
        let started = Instant::now();
        let list = client.tag_list(REPO, &|_, _| {}).await?.context("repository not found")?;
        let elapsed = started.elapsed();
        ensure!(list.tags().len() == options.tags, "listed {} tags of {}", list.tags().len(), options.tags);
        ensure!(list.tags().iter().all(|t| t.created_at.is_some()), "a tag without a creation time");
        Ok::<_, anyhow::Error>((elapsed, client.stats()))
    };
    let mut run = MetadataRun { cold: vec![], warm: vec![], tags: options.tags };
    for _ in 0..options.metadata_repetitions {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("tagwarden.db"))?;
        run.cold.push(list(client_for(&store)?).await?);
        run.warm.push(list(client_for(&store)?).await?);
        eprintln!(
            "  metadata: cold {:.2} s, warm {:.3} s",
            run.cold.last().unwrap().0.as_secs_f64(),
            run.warm.last().unwrap().0.as_secs_f64()
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
        load_average(),
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
            "| run | concurrency | deletion phase | deletes/s | mean DELETE latency | in flight | CPU: client | CPU: registry | listing (cold cache) | evaluation |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in runs {
            let (listing, eval) = r.pass.as_ref().map_or(("–".to_owned(), "–".to_owned()), |p| {
                (format!("{:.2} s", p.listing.as_secs_f64()), format!("{:.1} ms", ms(p.evaluation)))
            });
            println!(
                "| {} | {} | {:.2} s | {:.1} | {} | {} | {:.2} s | {:.2} s | {listing} | {eval} |",
                r.scenario,
                r.concurrency,
                r.wall.as_secs_f64(),
                r.rate(),
                r.mean_latency_ms().map_or("–".into(), |m| format!("{m:.1} ms")),
                r.in_flight().map_or("–".into(), |f| format!("{f:.2}")),
                r.client_cpu,
                r.registry_cpu,
            );
        }
        let median_rate = |scenario: &str, conc: usize| {
            let mut rates: Vec<f64> =
                runs.iter().filter(|r| r.scenario == scenario && r.concurrency == conc).map(DeleteRun::rate).collect();
            rates.sort_by(f64::total_cmp);
            (!rates.is_empty()).then(|| rates[rates.len() / 2])
        };
        let curl_c = median_rate("curl --parallel", c);
        let curl_1 = median_rate("curl, one at a time", 1);
        let pass_c = median_rate("tagwarden pass", c);
        let pass_1 = median_rate("tagwarden pass", 1);
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or("–".to_owned(), |(a, b)| format!("{:.2}", a / b));
        println!();
        let rounds = if options.rounds > 1 { format!(" (medians of {} rounds)", options.rounds) } else { String::new() };
        println!("| ratio{rounds} | value |");
        println!("|---|---:|");
        println!("| pass ÷ curl ceiling, concurrency {c} (target ≥ 0.8) | {} |", ratio(pass_c, curl_c));
        println!("| pass ÷ curl, one at a time | {} |", ratio(pass_1, curl_1));
        println!("| pass speedup, concurrency {c} vs 1 | {}× |", ratio(pass_c, pass_1));
        println!("| curl speedup, concurrency {c} vs 1 | {}× |", ratio(curl_c, curl_1));
        for r in runs.iter().filter(|r| r.pass.is_some()) {
            let p = r.pass.as_ref().unwrap();
            println!();
            println!(
                "Pass at concurrency {}: `Evaluating` to last delete {:.2} s (of which evaluation {:.1} ms, the first delete, sent alone, {:.1} ms); \
                 whole pass (report `elapsed_ms`) {:.2} s; {} DELETE requests, {} retries.",
                r.concurrency,
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
        println!("| cache | median | min | per tag | requests | of which |");
        println!("|---|---:|---:|---:|---:|---|");
        for (label, samples) in [("cold (fresh store)", &m.cold), ("warm (same store, new client)", &m.warm)] {
            let mut times: Vec<Duration> = samples.iter().map(|s| s.0).collect();
            times.sort();
            let median = times[times.len() / 2];
            let stats = samples[0].1;
            ensure_same(samples);
            println!(
                "| {label} | {:.3} s | {:.3} s | {:.2} ms | {} | {} |",
                median.as_secs_f64(),
                times[0].as_secs_f64(),
                ms(median) / m.tags as f64,
                stats.total(),
                describe(&stats)
            );
        }
        println!();
        println!("{} repetition(s); each cold listing uses a fresh on-disk store.", m.cold.len());
    }
}

fn ensure_same(samples: &[(Duration, RequestStats)]) {
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
            None => SCENARIOS.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(bad) = scenarios.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
            bail!("unknown scenario `{bad}`; expected some of {}", SCENARIOS.join(","));
        }
        Ok(Options {
            tags: number("TAGWARDEN_BENCH_TAGS", if quick { 200 } else { 2000 })?,
            concurrency: number("TAGWARDEN_BENCH_CONCURRENCY", 8)?,
            rounds: number("TAGWARDEN_BENCH_ROUNDS", 1)?,
            quick,
            latencies: var("TAGWARDEN_BENCH_LATENCIES").is_none_or(|v| v != "0"),
            metadata_repetitions: if quick { 1 } else { 3 },
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
        if self.rounds != 1 {
            let _ = write!(env, "TAGWARDEN_BENCH_ROUNDS={} ", self.rounds);
        }
        if !self.latencies {
            env.push_str("TAGWARDEN_BENCH_LATENCIES=0 ");
        }
        let filter = if self.scenarios.len() == SCENARIOS.len() { String::new() } else { format!(" -- {}", self.scenarios.join(",")) };
        format!("cargo xtask build-plugins && {env}cargo bench -p tagwarden --bench registry{filter}")
    }
}

/// CPU seconds used so far: this process, its waited-for children, the registry process.
#[derive(Clone, Copy)]
struct Cpu {
    own: f64,
    children: f64,
    registry: f64,
}

impl Cpu {
    fn now(registry_pid: u32) -> Cpu {
        let own = proc_stat("self");
        let registry = proc_stat(&registry_pid.to_string());
        Cpu { own: own.0, children: own.1, registry: registry.0 + registry.1 }
    }
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
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let first_line = |program: &str, arg: &str| {
            Command::new(program)
                .arg(arg)
                .output()
                .ok()
                .and_then(|o| String::from_utf8(if o.stdout.is_empty() { o.stderr } else { o.stdout }).ok())
                .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
                .unwrap_or_else(|| format!("{program} (version unknown)"))
        };
        let rustc = first_line(&std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()), "--version");
        let registry = tagwarden_testbed::registry_binary()
            .map(|p| first_line(&p.to_string_lossy(), "--version"))
            .unwrap_or_else(|e| format!("registry unavailable: {e:#}"));
        let curl = first_line(CURL, "--version").split(" (").next().unwrap_or("curl").to_owned();
        Machine { cpu, cores, rustc, registry, curl, load_before: load_average() }
    }
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
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
