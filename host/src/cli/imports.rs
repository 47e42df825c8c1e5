//! `tagwarden imports`: queue repository imports to a GitLab-compatible registry, run a round of
//! the guard and the scheduler now, and show what the state says. `list`, `show` and `retry`
//! read the state database only; `start` and `check` also talk to the registry.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{OutputFormat, output};
use crate::config::Config;
use crate::model::Timestamp;
use crate::scheduler::imports::{ImportWorker, RoundReport, worker_for};
use crate::setup;
use crate::store::{Change, Enqueued, ImportEvent, ImportRecord, ImportState};

#[derive(Debug, clap::Subcommand)]
pub enum ImportsCommand {
    /// Queue repositories for import (pre-import, then the final import) and start as many as
    /// `imports.capacity` allows; the daemon (or `imports check`) does the rest.
    Start {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        /// Repository paths, e.g. group/app.
        #[arg(value_name = "PATH", required_unless_present = "all", conflicts_with = "all")]
        paths: Vec<String>,
        /// Every repository in the registry's catalog.
        #[arg(long)]
        all: bool,
        /// Stop after the pre-import (the repository stays writable). `imports start PATH`
        /// without it later lets the final import follow.
        #[arg(long)]
        pre_only: bool,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// One round now: ask the registry about each running import, cancel or abort those the
    /// stale plugin finds too long, start queued ones.
    Check {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Imports and their state, with counts by state and cancels by outcome.
    List {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        /// Only this state (e.g. import_skipped).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// One import: state, step timestamps, retries, reason, and its history.
    Show {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        path: String,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Put an aborted or skipped import back in the queue, its retry count reset.
    Retry {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        path: String,
    },
}

pub fn imports(command: ImportsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImportsCommand::Start { config, paths, all, pre_only, output: format } => start(&config, paths, all, pre_only, format),
        ImportsCommand::Check { config, output: format } => {
            let (worker, tokio) = worker(&config)?;
            let report = tokio.block_on(worker.round(Timestamp::now()))?;
            print_round(&report, format)?;
            Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        ImportsCommand::List { config, state, output: format } => list(&config, state.as_deref(), format),
        ImportsCommand::Show { config, path, output: format } => show(&config, &path, format),
        ImportsCommand::Retry { config, path } => {
            let store = super::repos::store(&config)?;
            let log = store.imports();
            if log.get(&path)?.is_none() {
                bail!("{path}: no import in the state; queue it with `tagwarden imports start {path}`");
            }
            let change = Change { reason: None, ..Change::default() };
            log.apply(&path, ImportEvent::Reset, Timestamp::now(), &change).with_context(|| {
                format!("{path}: `imports retry` takes aborted or skipped imports; see `tagwarden imports show {path}`")
            })?;
            println!("{path}: back in the queue (default, retries reset)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The config's import worker and a runtime to drive it.
fn worker(config: &std::path::Path) -> anyhow::Result<(ImportWorker, tokio::runtime::Runtime)> {
    let config = Config::read(config)?;
    let runtime = super::plugin_runtime(config.uses_fuel())?;
    let stale = setup::load_stale(&config, &runtime)?;
    let store = setup::open_store(&config)?;
    let backend = setup::backend(&config, &store)?;
    let strategies = setup::StrategySet::new(setup::Strategies { backoff: None, stale: Some(stale) });
    let Some(worker) = worker_for(&config, &store, &backend, strategies)? else {
        bail!("imports need a registry: `registry.recordings` of {} cannot import; set `registry.url`", config.path.display());
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok((worker, tokio))
}

fn start(config: &std::path::Path, paths: Vec<String>, all: bool, pre_only: bool, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let (worker, tokio) = worker(config)?;
    let client = worker.client().clone();
    let paths = if all {
        tokio.block_on(client.catalog()).context("listing the registry's repositories for `--all`")?
    } else {
        for p in &paths {
            // Bad names fail before anything is queued.
            client.check_repository(p)?;
        }
        paths
    };
    let queued = worker.log().enqueue(&paths, pre_only, Timestamp::now())?;
    let report = tokio.block_on(worker.round(Timestamp::now()))?;
    match format {
        OutputFormat::Json => output::print_json(&serde_json::json!({
            "queued": queued.iter().map(|(p, e)| serde_json::json!({
                "path": p,
                "queued": !matches!(e, Enqueued::Known(_)),
                "state": match e { Enqueued::Queued => "default", Enqueued::FinalImportQueued(s) | Enqueued::Known(s) => s.as_str() },
            })).collect::<Vec<_>>(),
            "round": round_json(&report),
        }))?,
        OutputFormat::Table => {
            for (p, e) in &queued {
                match e {
                    Enqueued::Queued => println!("{p}: queued{}", if pre_only { " (pre-import only)" } else { "" }),
                    Enqueued::FinalImportQueued(s) => println!("{p}: the final import follows its pre-import ({s})"),
                    Enqueued::Known(s) => println!("{p}: already known ({s}); `imports retry {p}` requeues an aborted or skipped one"),
                }
            }
            print_round(&report, OutputFormat::Table)?;
        }
    }
    Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn round_json(r: &RoundReport) -> serde_json::Value {
    serde_json::json!({
        "checked": r.checked,
        "changes": r.changes.iter().map(|c| serde_json::json!({"path": c.path, "from": c.from.as_str(), "to": c.to.as_str(), "why": c.why})).collect::<Vec<_>>(),
        "cancels": r.cancels.iter().map(|(p, o)| serde_json::json!({"path": p, "outcome": o})).collect::<Vec<_>>(),
        "rate_limited": r.rate_limited.iter().map(|(p, t)| serde_json::json!({"path": p, "until": t})).collect::<Vec<_>>(),
        "errors": r.errors,
    })
}

fn print_round(r: &RoundReport, format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(&round_json(r));
    }
    let esc = crate::untrusted::escape;
    for c in &r.changes {
        println!("{}: {} → {}: {}", c.path, c.from, c.to, esc(&c.why));
    }
    for (p, o) in &r.cancels {
        println!("{p}: cancel requested: {o}");
    }
    for (p, t) in &r.rate_limited {
        println!("{p}: the registry runs too many imports (429): next attempt at {t}");
    }
    for e in &r.errors {
        eprintln!("error: {}", esc(e));
    }
    println!("checked {} imports, {} changed", r.checked, r.changes.len());
    Ok(())
}

fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
}

fn record_json(r: &ImportRecord) -> serde_json::Value {
    serde_json::json!({
        "path": r.path, "state": r.state.as_str(), "pre_only": r.pre_only, "requested_at": r.requested_at,
        "step_started_at": r.step_started_at, "pre_import_started_at": r.pre_import_started_at,
        "pre_import_done_at": r.pre_import_done_at, "import_started_at": r.import_started_at,
        "import_done_at": r.import_done_at, "aborted_at": r.aborted_at, "skipped_at": r.skipped_at,
        "retries": r.retries, "reason": r.reason, "registry_status": r.registry_status,
        "next_attempt_at": r.next_attempt_at, "rate_limited": r.rate_limited, "tags": r.tags, "last_error": r.last_error,
        "updated_at": r.updated_at,
    })
}

fn list(config: &std::path::Path, state: Option<&str>, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let store = super::repos::store(config)?;
    let log = store.imports();
    let state = state.map(ImportState::parse).transpose().context("at `--state`")?;
    let records = log.list(state)?;
    let counts = log.counts()?;
    let cancels = log.cancel_counts()?;
    match format {
        OutputFormat::Json => output::print_json(&serde_json::json!({
            "by_state": counts.iter().map(|(s, n)| (s.as_str(), n)).collect::<std::collections::BTreeMap<_, _>>(),
            "cancels_by_outcome": cancels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "imports": records.iter().map(record_json).collect::<Vec<_>>(),
        }))?,
        OutputFormat::Table => {
            let mut rows = vec![["REPOSITORY", "STATE", "STEP STARTED", "RETRIES", "REGISTRY", "REASON"].map(str::to_owned).to_vec()];
            for r in &records {
                rows.push(vec![
                    r.path.clone(),
                    r.state.as_str().to_owned(),
                    time(r.step_started_at),
                    r.retries.to_string(),
                    r.registry_status.clone().unwrap_or_else(|| "-".into()),
                    crate::untrusted::escape(r.reason.as_deref().unwrap_or("")).to_string(),
                ]);
            }
            let skipped: Vec<bool> = std::iter::once(false).chain(records.iter().map(|r| r.state == ImportState::ImportSkipped)).collect();
            output::print_columns(&rows, |i| skipped[i], &output::Style::stdout());
            let nonzero: Vec<String> = counts.iter().filter(|(_, n)| *n > 0).map(|(s, n)| format!("{s} {n}")).collect();
            println!("\nby state: {}", if nonzero.is_empty() { "none".to_owned() } else { nonzero.join(", ") });
            let c: Vec<String> = cancels.iter().map(|(o, n)| format!("{o} {n}")).collect();
            println!("cancels: {}", if c.is_empty() { "none".to_owned() } else { c.join(", ") });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(config: &std::path::Path, path: &str, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let store = super::repos::store(config)?;
    let log = store.imports();
    let Some(record) = log.get(path)? else {
        bail!("{path}: no import in the state; queue it with `tagwarden imports start {path}`");
    };
    let history = log.history(path)?;
    match format {
        OutputFormat::Json => {
            let mut v = record_json(&record);
            v["history"] = history
                .iter()
                .map(|h| serde_json::json!({"at": h.at, "event": h.event, "from": h.from, "to": h.to, "outcome": h.outcome, "detail": h.detail}))
                .collect::<Vec<_>>()
                .into();
            output::print_json(&v)?;
        }
        OutputFormat::Table => {
            let esc = crate::untrusted::escape;
            println!("{path}: {}{}", record.state, if record.pre_only { " (pre-import only)" } else { "" });
            for (label, value) in [
                ("requested", Some(record.requested_at)),
                ("step started", record.step_started_at),
                ("pre-import started", record.pre_import_started_at),
                ("pre-import done", record.pre_import_done_at),
                ("import started", record.import_started_at),
                ("import done", record.import_done_at),
                ("aborted", record.aborted_at),
                ("skipped", record.skipped_at),
                ("next attempt", record.next_attempt_at),
            ] {
                if value.is_some() {
                    println!("  {label:<19}{}", time(value));
                }
            }
            println!("  {:<19}{}", "retries", record.retries);
            if let Some(r) = &record.reason {
                println!("  {:<19}{}", "reason", esc(r));
            }
            if let Some(s) = &record.registry_status {
                println!("  {:<19}{}", "registry says", esc(s));
            }
            if let Some(t) = record.tags {
                println!("  {:<19}{t}", "tags");
            }
            if let Some(e) = &record.last_error {
                println!("  {:<19}{}", "last error", esc(e));
            }
            if !history.is_empty() {
                println!("history:");
                for h in &history {
                    let what = match &h.outcome {
                        Some(o) => format!("cancel ({o})"),
                        None => format!("{}: {} → {}", h.event, h.from, h.to),
                    };
                    let detail = h.detail.as_deref().map(|d| format!(" — {}", esc(d))).unwrap_or_default();
                    println!("  {}  {what}{detail}", h.at);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
