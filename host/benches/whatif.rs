//! What-if at scale over recordings (issue 9 §9): `tagwarden run --once` with the recordings
//! backend over 10,000 repositories of 1,000 tags plus one of 1,000,000 (11M tags), as a dry
//! run and as a real pass that deletes from the backend's in-memory view (audited in an on-disk
//! state database, as any pass). Targets: < 60 s wall each on a 2-core machine, peak RSS < 2 GiB.
//!
//! The recordings are synthetic, generated here from a seed into a temporary directory (never
//! committed): GitLab-like names (`main-…`, `feature-…`, `pr-…`, `v1.2.…`, `production-…`),
//! push times spread over a year, one tag in ten sharing its manifest with the tag before, one
//! untagged manifest per 50 tags. The policy is GitLab's documented shape: delete everything
//! older than 90 days beyond the 10 newest, keep `production-…`; the host protects `v*.*.0`.
//!
//! `cargo xtask build-plugins && cargo bench -p tagwarden --bench whatif`
//!
//! Environment: `TAGWARDEN_WHATIF_REPOSITORIES` (10000), `TAGWARDEN_WHATIF_TAGS` (1000),
//! `TAGWARDEN_WHATIF_LARGE` (1000000; 0 for none), `TAGWARDEN_WHATIF_SEED` (9),
//! `TAGWARDEN_WHATIF_DIR` (generate there and keep it for the next run, instead of a
//! temporary directory), `TAGWARDEN_WHATIF_RUNS` (`dry,real`), `TAGWARDEN_WHATIF_JOBS` (4:
//! `run --once --jobs`, repositories in flight; a pass blocks its thread while it reads a
//! recording or writes the state database, so twice the cores keeps both busy). Each run is a child process;
//! its peak RSS is the kernel's `ru_maxrss` for it (`wait4`). Figures in docs/benchmarks.md
//! ("What-if at scale").

#[allow(dead_code)]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tagwarden::model::Timestamp;

const SECOND: i64 = 1_000_000;
const DAY: i64 = 86_400 * SECOND;
/// 2026-11-20T12:00:00Z: the recordings' `recorded_at` and the passes' `--now`.
const NOW: Timestamp = Timestamp::from_unix_micros(1_795_176_000 * SECOND);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let repositories: usize = env_or("TAGWARDEN_WHATIF_REPOSITORIES", 10_000);
    let tags: usize = env_or("TAGWARDEN_WHATIF_TAGS", 1_000);
    let large: usize = env_or("TAGWARDEN_WHATIF_LARGE", 1_000_000);
    let seed: u64 = env_or("TAGWARDEN_WHATIF_SEED", 9);
    let runs: String = env_or("TAGWARDEN_WHATIF_RUNS", "dry,real".to_owned());
    let jobs: usize = env_or("TAGWARDEN_WHATIF_JOBS", 4);

    let temp;
    let dir = match std::env::var_os("TAGWARDEN_WHATIF_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let recordings = dir.join("recordings");
    let stamp = dir.join(format!("generated-{repositories}x{tags}+{large}-seed{seed}"));
    if !stamp.exists() {
        let _ = std::fs::remove_dir_all(&recordings);
        std::fs::create_dir_all(&recordings)?;
        let started = Instant::now();
        let bytes = generate(&recordings, repositories, tags, large, seed)?;
        std::fs::write(&stamp, "")?;
        eprintln!(
            "generated {repositories} recordings of {tags} tags + 1 of {large} ({:.0} MB of JSON) in {:.1} s",
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    let config = dir.join("tagwarden.toml");
    std::fs::write(
        &config,
        r#"[registry]
recordings = "recordings"

[state]
dir = "state"

[deletion]
timeout = "250s"
concurrency = 8
protect = ['v\d+\.\d+\.0']

[[policy]]
name = "all"
repositories = ["**"]
plugin = "gitlab-retention"
params = { name_regex_delete = ".*", name_regex_keep = "production-.*", keep_n = 10, older_than = "90d" }
"#,
    )?;

    let binary = env!("CARGO_BIN_EXE_tagwarden");
    println!("## What-if at scale\n");
    println!(
        "Command: `cargo bench -p tagwarden --bench whatif`; {repositories} recordings of {tags} tags + 1 of {large} tags \
         (seed {seed}), `run --once --jobs {jobs}`; {} ({} cores), load {} at start.\n",
        common::cpu_model(),
        common::cores(),
        common::load_average()
    );
    println!("| run | wall | CPU (user + sys) | peak RSS | repositories | tags seen | to delete | deleted | rules reported | report |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in runs.split(',') {
        let dry = match run {
            "dry" => true,
            "real" => false,
            other => anyhow::bail!("TAGWARDEN_WHATIF_RUNS: unknown run `{other}` (dry, real)"),
        };
        // Each real pass starts from an empty state database (no earlier audit rows).
        let _ = std::fs::remove_dir_all(dir.join("state"));
        let report_path = dir.join(format!("report-{run}.json"));
        let mut cmd = Command::new(binary);
        cmd.args(["run", "--once", "--jobs", &jobs.to_string(), "--config"]).arg(&config).args([
            "--now",
            &NOW.to_rfc3339(),
            "--output",
            "json",
        ]);
        if dry {
            cmd.arg("--dry-run");
        }
        cmd.stdout(std::fs::File::create(&report_path)?).stderr(std::fs::File::create(dir.join(format!("progress-{run}.log")))?);
        let (wall, cpu, peak_kib, status) = measure(cmd.stdin(Stdio::null()))?;
        let text = std::fs::read_to_string(&report_path)?;
        let report: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{run}: the report is not JSON ({e}); exit {status}; see {}", dir.display()))?;
        let repos = report["repositories"].as_array().map(Vec::as_slice).unwrap_or_default();
        let sum = |field: &str| repos.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum::<u64>();
        let rules: usize = repos.iter().map(|r| r["rules"].as_array().map_or(0, Vec::len)).sum();
        let not_done = repos.iter().filter(|r| !matches!(r["status"].as_str(), Some("completed" | "planned"))).count();
        println!(
            "| {} | {:.1} s | {:.1} s | {:.0} MiB | {} | {} | {} | {} | {rules} | {:.1} MB |",
            if dry { "dry run" } else { "in-memory deletion" },
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            peak_kib as f64 / 1024.0,
            repos.len(),
            sum("tags_seen"),
            sum("tags_to_delete"),
            if dry { "–".to_owned() } else { sum("tags_deleted").to_string() },
            text.len() as f64 / 1e6,
        );
        if status != 0 || not_done > 0 {
            anyhow::bail!("{run}: exit status {status}, {not_done} repositories not completed; see {}", dir.display());
        }
    }
    println!("\nrules reported: (repository, rule) rows in the JSON report's `rules`; peak RSS is the child's `ru_maxrss`.");
    Ok(())
}

/// Runs `cmd` and returns its wall time, CPU time (user + system, all threads), peak RSS in
/// KiB and exit status. CPU time says what a busy machine's wall time cannot.
fn measure(cmd: &mut Command) -> anyhow::Result<(Duration, Duration, i64, i32)> {
    let started = Instant::now();
    let child = cmd.spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 reaps our own child by pid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if pid < 0 {
        anyhow::bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let wall = started.elapsed();
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok((wall, tv(usage.ru_utime) + tv(usage.ru_stime), usage.ru_maxrss, code))
}

/// splitmix64: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn digest(&mut self) -> String {
        format!("sha256:{:016x}{:016x}{:016x}{:016x}", self.next(), self.next(), self.next(), self.next())
    }
}

/// Writes the recordings; returns the bytes written.
fn generate(dir: &Path, repositories: usize, tags: usize, large: usize, seed: u64) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for i in 0..repositories {
        bytes += write_recording(dir, &format!("group-{:02}/app-{i:05}", i % 100), tags, seed ^ (i as u64).wrapping_mul(0x2545_f491))?;
    }
    if large > 0 {
        bytes += write_recording(dir, "big/monorepo", large, seed.rotate_left(17))?;
    }
    Ok(bytes)
}

fn write_recording(dir: &Path, repository: &str, tags: usize, seed: u64) -> anyhow::Result<u64> {
    let mut rng = Rng(seed);
    let path = dir.join(format!("{}.json", repository.replace('/', "__")));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    write!(
        out,
        "{{\"format\": \"tagwarden.recording.v1\", \"repository\": \"{repository}\", \"recorded_at\": \"{}\",\n \"tags\": [",
        NOW.to_rfc3339()
    )?;
    let mut digest = rng.digest();
    for k in 0..tags {
        let name = match rng.below(100) {
            0..40 => format!("main-{k:07}"),
            40..70 => format!("feature-{}-{k}", rng.below(50)),
            70..85 => format!("pr-{k}"),
            85..95 => format!("v{}.{}.{k}", rng.below(5), rng.below(20)),
            _ => format!("production-{k}"),
        };
        // One tag in ten shares the previous tag's manifest (e.g. `main-…` and `v1.2.…`).
        if k == 0 || rng.below(10) != 0 {
            digest = rng.digest();
        }
        let pushed = NOW.unix_micros() - rng.below(365 * DAY as u64) as i64;
        let created = pushed - rng.below(3_600 * SECOND as u64) as i64;
        write!(
            out,
            "{}\n  {{\"name\": \"{name}\", \"digest\": \"{digest}\", \"created_at\": \"{}\", \"pushed_at\": \"{}\", \"size_bytes\": {}, \
             \"media_type\": \"application/vnd.oci.image.manifest.v1+json\"}}",
            if k == 0 { "" } else { "," },
            Timestamp::from_unix_micros(created).to_rfc3339(),
            Timestamp::from_unix_micros(pushed).to_rfc3339(),
            10_000_000 + rng.below(500_000_000),
        )?;
    }
    write!(out, "\n ],\n \"untagged\": [")?;
    for k in 0..tags / 50 {
        let created = NOW.unix_micros() - rng.below(365 * DAY as u64) as i64;
        write!(
            out,
            "{}\n  {{\"digest\": \"{}\", \"created_at\": \"{}\"}}",
            if k == 0 { "" } else { "," },
            rng.digest(),
            Timestamp::from_unix_micros(created).to_rfc3339()
        )?;
    }
    writeln!(out, "\n ]}}")?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    Ok(file.metadata()?.len())
}
