//! `tagwarden serve`: the daemon; `tagwarden status` and `tagwarden repos`: what its state
//! says. The latter read the state database directly, so they work with or without a
//! daemon running.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::{OutputFormat, output};
use crate::config::Config;
use crate::model::Timestamp;
use crate::pass::RepositoryStatus;
use crate::scheduler::daemon::{self, DaemonEvent, DaemonOptions};
use crate::setup;
use crate::store::{CleanupOutcome, CleanupStatus, StateStore, Store};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    /// Exit 0 once nothing is due, running, or waiting on a backoff shorter than a minute
    /// (for scripts, tests and the demo).
    #[arg(long)]
    until_idle: bool,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::read(&args.config)?;
    let fuel = config.policies.iter().any(|p| p.fuel.is_some());
    let runtime = super::plugin_runtime(fuel)?;
    let policies = Arc::new(setup::load_policies(&config, &runtime)?);
    let backoff = setup::load_backoff(&config, &runtime)?;
    let stale = setup::load_stale(&config, &runtime)?;
    let store = setup::open_store(&config)?;
    let ctx = Arc::new(setup::pass_context(&config, &store, false, None)?);
    let imports = crate::scheduler::imports::worker_for(&config, &store, &ctx.backend, stale.clone())?;
    let options = DaemonOptions {
        worker_capacity: config.serve.worker_capacity,
        first_run: config.serve.first_run,
        until_idle: args.until_idle,
        lease: config.deletion.timeout + Duration::from_secs(30 * 60),
        backoff,
        stale,
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = tokio.block_on(async {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        // Imports have their own task: a long pass never delays the import guard.
        if let Some(worker) = imports {
            tokio::spawn(async move { worker.run_forever().await });
        }
        daemon::run(ctx, policies, store, options, shutdown, &print_event).await
    })?;
    eprintln!("serve: {} passes, {} tags deleted, {} repositories recovered", summary.passes, summary.tags_deleted, summary.recovered);
    Ok(ExitCode::SUCCESS)
}

fn print_event(event: DaemonEvent<'_>) {
    match event {
        DaemonEvent::Synced { policies, repositories } => eprintln!("serve: {policies} policies, {repositories} repositories"),
        DaemonEvent::Recovered { path } => eprintln!("serve: {path}: taken back from a process that is gone (cleanup_unfinished)"),
        DaemonEvent::PassFinished { report, outcome } => {
            let then = match outcome {
                CleanupOutcome::Done { .. } => "cleanup_unscheduled".to_owned(),
                CleanupOutcome::Gone => "cleanup_gone".to_owned(),
                CleanupOutcome::Unfinished { .. } => "cleanup_unfinished".to_owned(),
                CleanupOutcome::Failed { next_attempt_at: Some(t), .. } => format!("retry at {t}"),
                CleanupOutcome::Failed { next_attempt_at: None, .. } => "cleanup_failed (repos retry PATH brings it back)".to_owned(),
            };
            let detail = match &report.status {
                RepositoryStatus::Refused(d) | RepositoryStatus::Unfinished(d) | RepositoryStatus::Failed(d) => format!(": {d}"),
                _ => String::new(),
            };
            // The detail may carry a plugin's words: escaped for the terminal.
            eprintln!(
                "serve: {}: {}{}, {} tags, {} deleted ({:.1}s) → {then}",
                crate::untrusted::escape(&report.repository),
                report.status.label(),
                crate::untrusted::escape(&detail),
                report.tags_seen,
                report.tags_deleted,
                report.elapsed_ms as f64 / 1000.0
            );
        }
        DaemonEvent::PolicyScheduled { policy, next_run_at } => eprintln!("serve: policy {policy}: next run {next_run_at}"),
        DaemonEvent::Idle => eprintln!("serve: idle (nothing due within a minute)"),
        DaemonEvent::ShuttingDown { running } => {
            eprintln!("serve: stopping; waiting up to {}s for {running} passes", daemon::SHUTDOWN_GRACE.as_secs())
        }
    }
}

/// The state database of a config, which must exist.
pub(super) fn state(config: &std::path::Path) -> anyhow::Result<Store> {
    let config = Config::read(config)?;
    let db = config.resolve_path(&config.state.dir).join("tagwarden.db");
    if !db.is_file() {
        anyhow::bail!("no state at {} yet: run `tagwarden serve --config FILE` first", db.display());
    }
    Store::open(&db)
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let store = state(&args.config)?;
    let counts = store.status_counts()?;
    let day = store.runs().since(Timestamp::now().saturating_sub(Duration::from_secs(86_400)))?;
    match args.output {
        OutputFormat::Json => output::print_json(&serde_json::json!({
            "repositories": counts.iter().map(|(s, n)| (s.as_str(), n)).collect::<std::collections::BTreeMap<_, _>>(),
            "last_24h": {"runs": day.runs, "tags_deleted": day.tags_deleted, "failed_runs": day.failed_runs},
        }))?,
        OutputFormat::Table => {
            let mut rows = vec![vec!["STATUS".to_owned(), "REPOSITORIES".to_owned()]];
            rows.extend(counts.iter().map(|(s, n)| vec![s.as_str().to_owned(), n.to_string()]));
            output::print_columns(&rows, |_| false, &output::Style::stdout());
            println!("\nlast 24 h: {} runs, {} tags deleted, {} runs failed", day.runs, day.tags_deleted, day.failed_runs);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Subcommand)]
pub enum ReposCommand {
    /// Repositories and their cleanup status.
    List {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        /// Only this status (e.g. cleanup_failed).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Put a failed repository back in the queue, with no backoff.
    Retry {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        path: String,
    },
}

pub fn repos(command: ReposCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReposCommand::List { config, status, output: format } => {
            let store = state(&config)?;
            let status = status.as_deref().map(CleanupStatus::parse).transpose()?;
            let repos = store.repositories(status)?;
            let time = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
            match format {
                OutputFormat::Json => output::print_json(
                    &repos
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "path": r.path, "policy": r.policy, "status": r.status.as_str(),
                                "started_at": r.started_at, "completed_at": r.completed_at,
                                "next_attempt_at": r.next_attempt_at, "consecutive_failures": r.consecutive_failures,
                                "last_deleted": r.last_deleted,
                                "last_failure": r.last_failure.as_ref().map(|(c, m)| serde_json::json!({"class": c, "reason": m})),
                            })
                        })
                        .collect::<Vec<_>>(),
                )?,
                OutputFormat::Table => {
                    let mut rows = vec![
                        ["REPOSITORY", "POLICY", "STATUS", "STARTED", "NEXT ATTEMPT", "FAILURES", "LAST FAILURE"]
                            .map(str::to_owned)
                            .to_vec(),
                    ];
                    for r in &repos {
                        rows.push(vec![
                            r.path.clone(),
                            r.policy.clone(),
                            r.status.as_str().to_owned(),
                            time(r.started_at),
                            time(r.next_attempt_at),
                            r.consecutive_failures.to_string(),
                            r.last_failure.as_ref().map(|(c, m)| format!("{c}: {m}")).unwrap_or_default(),
                        ]);
                    }
                    let failed: Vec<bool> = std::iter::once(false).chain(repos.iter().map(|r| r.status == CleanupStatus::Failed)).collect();
                    output::print_columns(&rows, |i| failed[i], &output::Style::stdout());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ReposCommand::Retry { config, path } => {
            let store = state(&config)?;
            if !store.retry(&path)? {
                anyhow::bail!("{path}: no such repository in the state, or a pass holds it right now");
            }
            println!("{path}: back in the queue (cleanup_unfinished, no backoff)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
