//! `tagwarden status`, `tagwarden repos …` and `tagwarden runs list`: what the daemon's state
//! says, and the operator's actions on it. They read and write the state database directly,
//! so they work whether or not a daemon is running (a running daemon picks changes up at its
//! next claim).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use serde_json::{Value, json};

use super::{OutputFormat, output};
use crate::api::json::{audit_json, deletion_json, overview, repository_json, run_json};
use crate::config::Config;
use crate::model::Timestamp;
use crate::store::{CleanupStatus, DeletionState, DeletionStatus, LastFailure, RepositoryState, RunRecord, StateStore, Store};

/// The database of a config, which must exist, and the cleanup state it holds: the PostgreSQL
/// database of `[state] url`, else the SQLite file.
fn state(config: &Path) -> anyhow::Result<(Config, Store, Arc<dyn StateStore>)> {
    let config = Config::read(config)?;
    let store = existing(&config)?;
    let state = store.state();
    Ok((config, store, state))
}

fn existing(config: &Config) -> anyhow::Result<Store> {
    crate::setup::open_existing_store(config, "run `tagwarden serve --config FILE` first")
}

/// The database of a config, which must exist (for other commands reading it).
pub(super) fn store(config: &Path) -> anyhow::Result<Store> {
    existing(&Config::read(config)?)
}

fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
}

fn failure_text(f: &Option<LastFailure>) -> String {
    f.as_ref()
        .map(|f| {
            let status = f.http_status.map(|s| format!(" {s}")).unwrap_or_default();
            format!("{}{status}: {}", f.class, crate::untrusted::escape(&f.reason))
        })
        .unwrap_or_default()
}

/// The plugins a config uses, by role (`policy NAME`, `backoff`, `stale`).
pub(crate) fn configured_plugins(config: &Config) -> BTreeMap<String, String> {
    let mut plugins: BTreeMap<String, String> = config.policies.iter().map(|p| (format!("policy {}", p.name), p.plugin.clone())).collect();
    plugins.insert("backoff".into(), config.plugins.backoff.clone().unwrap_or_else(|| "(host default)".into()));
    plugins.insert("stale".into(), config.plugins.stale.clone().unwrap_or_else(|| "stale-timeout".into()));
    plugins
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (config, store, state) = state(&args.config)?;
    let o = overview(&store, &*state)?;
    let (counts, deletions, busy, day, failures) = (&o.repositories, &o.deletions, o.workers_busy, &o.last_24h, &o.failing_by_class);
    let imports = &o.imports;
    let plugins = configured_plugins(&config);
    match args.output {
        OutputFormat::Json => output::print_json(&o.to_json(&plugins))?,
        OutputFormat::Table => {
            let style = output::Style::stdout();
            let mut rows = vec![vec!["STATUS".to_owned(), "REPOSITORIES".to_owned()]];
            rows.extend(counts.iter().map(|(s, n)| vec![s.as_str().to_owned(), n.to_string()]));
            rows.extend(deletions.iter().filter(|(_, n)| **n > 0).map(|(s, n)| vec![(*s).to_owned(), n.to_string()]));
            let failed: Vec<bool> = rows.iter().map(|r| (r[0] == "cleanup_failed" || r[0] == "delete_failed") && r[1] != "0").collect();
            output::print_columns(&rows, |i| failed[i], &style);
            println!("\nworkers busy: {busy}");
            println!("last 24 h: {} runs, {} tags deleted, {} runs failed", day.runs, day.tags_deleted, day.failed_runs);
            if !imports.is_empty() {
                let shown: Vec<String> = imports.iter().map(|(s, n)| format!("{s} {n}")).collect();
                println!("imports: {}", shown.join(", "));
            }
            if !failures.is_empty() {
                let shown: Vec<String> = failures.iter().map(|(c, n)| format!("{c} {n}")).collect();
                println!("failing repositories by error class: {}", shown.join(", "));
            }
            let shown: Vec<String> = plugins.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("plugins: {}", shown.join("; "));
            // The plugin directory's plugins that do not serve as they should.
            for p in store.plugin_table().list()?.iter().filter(|p| p.state != crate::store::PluginState::Active) {
                let reason = crate::untrusted::escape(p.reason.as_deref().unwrap_or_default());
                println!("{}", style.delete(&format!("plugin {} {}: {reason}", p.name, p.state)));
            }
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
        /// Only this status (e.g. cleanup_failed, or a deletion status such as delete_failed).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// One repository: status, last failure with its reason, next attempt, deletion, runs
    /// and audit entries.
    Show {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        path: String,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Put a failed cleanup (or a failed repository deletion) back in the queue, with no backoff.
    Retry {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        path: String,
    },
    /// Clean a repository as soon as no scheduled work waits, whatever its policy's cadence
    /// and its backoff say.
    CleanupNow {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        path: String,
    },
    /// Schedule the deletion of a whole repository: every tag and manifest, audited.
    Delete {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        path: String,
    },
}

pub fn repos(command: ReposCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReposCommand::List { config, status, output: format } => list(&config, status.as_deref(), format),
        ReposCommand::Show { config, path, output: format } => show(&config, &path, format),
        ReposCommand::Retry { config, path } => {
            let (_, _, store) = state(&config)?;
            if !store.retry(&path)? {
                bail!("{path}: no such repository in the state, or a pass holds it right now (`tagwarden repos show {path}`)");
            }
            match store.deletion(&path)? {
                Some(d) if d.status == DeletionStatus::Scheduled => println!("{path}: deletion back in the queue (delete_scheduled)"),
                _ => println!("{path}: back in the queue (cleanup_unfinished, no backoff)"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ReposCommand::CleanupNow { config, path } => {
            let (_, _, store) = state(&config)?;
            if !store.cleanup_now(&path)? {
                bail!("{path}: no such repository in the state, or a pass holds it right now (`tagwarden repos show {path}`)");
            }
            println!("{path}: cleaned as soon as no scheduled work waits");
            Ok(ExitCode::SUCCESS)
        }
        ReposCommand::Delete { config, path } => {
            crate::registry::validate_repository_name(&path)?;
            let (_, _, store) = state(&config)?;
            store.schedule_deletion(&path, Timestamp::now())?;
            println!("{path}: deletion scheduled (delete_scheduled); a running `tagwarden serve` deletes every tag and manifest");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(config: &Path, status: Option<&str>, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let (_, _, store) = state(config)?;
    let deletion_status = status.and_then(|s| DeletionStatus::parse(s).ok());
    let cleanup_status = match (status, deletion_status) {
        (Some(s), None) => Some(CleanupStatus::parse(s).map_err(|_| {
            let known: Vec<&str> =
                CleanupStatus::ALL.iter().map(|s| s.as_str()).chain(DeletionStatus::ALL.iter().map(|s| s.as_str())).collect();
            anyhow::anyhow!("unknown status `{s}`; expected one of {}", known.join(", "))
        })?),
        _ => None,
    };
    let deletions: BTreeMap<String, DeletionState> = store.deletions(deletion_status)?.into_iter().map(|d| (d.path.clone(), d)).collect();
    let repos: Vec<RepositoryState> = match deletion_status {
        Some(_) => deletions.keys().filter_map(|p| store.repository(p).transpose()).collect::<anyhow::Result<_>>()?,
        None => store.repositories(cleanup_status)?,
    };
    match format {
        OutputFormat::Json => output::print_json(
            &repos
                .iter()
                .map(|r| {
                    let mut v = repository_json(r);
                    v["deletion"] = deletions.get(&r.path).map_or(Value::Null, deletion_json);
                    v
                })
                .collect::<Vec<_>>(),
        )?,
        OutputFormat::Table => {
            let mut rows = vec![
                ["REPOSITORY", "POLICY", "STATUS", "DELETION", "STARTED", "NEXT ATTEMPT", "FAILURES", "LAST FAILURE"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            for r in &repos {
                rows.push(vec![
                    r.path.clone(),
                    r.policy.clone(),
                    r.status.as_str().to_owned(),
                    deletions.get(&r.path).map_or("-".into(), |d| d.status.as_str().to_owned()),
                    time(r.started_at),
                    time(r.next_attempt_at),
                    r.consecutive_failures.to_string(),
                    failure_text(&r.last_failure),
                ]);
            }
            let failed: Vec<bool> = std::iter::once(false)
                .chain(repos.iter().map(|r| {
                    r.status == CleanupStatus::Failed || deletions.get(&r.path).is_some_and(|d| d.status == DeletionStatus::Failed)
                }))
                .collect();
            output::print_columns(&rows, |i| failed[i], &output::Style::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(config: &Path, path: &str, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let (_, store, state) = state(config)?;
    let repository = state.repository(path)?;
    let deletion = state.deletion(path)?;
    if repository.is_none() && deletion.is_none() {
        bail!(
            "{path}: not in the state (no policy's `repositories` patterns matched it at the last catalog sync); `tagwarden repos list` shows what is"
        );
    }
    let runs = store.runs().recent(Some(path), 5)?;
    let audit = store.audit_log().recent(Some(path), 10)?;
    match format {
        OutputFormat::Json => output::print_json(&json!({
            "repository": repository.as_ref().map(repository_json),
            "deletion": deletion.as_ref().map(deletion_json),
            "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
            "audit": audit.iter().map(audit_json).collect::<Vec<_>>(),
        }))?,
        OutputFormat::Table => {
            println!("{path}");
            if let Some(r) = &repository {
                println!("  policy:           {}", r.policy);
                println!("  cleanup status:   {}", r.status.as_str());
                println!("  started:          {}", time(r.started_at));
                println!("  completed:        {}", time(r.completed_at));
                println!("  last deleted:     {}", r.last_deleted.map_or("-".into(), |n| n.to_string()));
                println!("  failures in a row: {}", r.consecutive_failures);
                if r.last_failure.is_some() {
                    println!(
                        "  last failure:     {} (at {})",
                        failure_text(&r.last_failure),
                        time(r.last_failure.as_ref().and_then(|f| f.at))
                    );
                }
                println!("  next attempt:     {}", time(r.next_attempt_at));
                if let Some(owner) = &r.lease_owner {
                    println!("  held by:          {owner} until {}", time(r.lease_expires_at));
                }
                if r.status == CleanupStatus::Failed {
                    println!("  → fix the cause above, then `tagwarden repos retry {path}`");
                }
            }
            if let Some(d) = &deletion {
                println!("  deletion:         {} (asked {}, {} tags deleted so far)", d.status.as_str(), d.requested_at, d.tags_deleted);
                if d.last_failure.is_some() {
                    println!("  deletion failure: {}", failure_text(&d.last_failure));
                }
                if d.next_attempt_at.is_some() {
                    println!("  deletion retry:   {}", time(d.next_attempt_at));
                }
                if d.status == DeletionStatus::Failed {
                    println!("  → fix the cause above, then `tagwarden repos retry {path}`");
                }
            }
            if !runs.is_empty() {
                println!("\nlast runs:");
                print_runs(&runs);
            }
            if !audit.is_empty() {
                println!("\nlast audit entries:");
                let mut rows = vec![["AT", "OPERATION", "DIGEST", "TAGS", "OUTCOME"].map(str::to_owned).to_vec()];
                for a in &audit {
                    rows.push(vec![
                        a.at.to_rfc3339(),
                        a.operation.clone(),
                        output::short_digest(&a.digest).to_owned(),
                        if a.tags.is_empty() { "-".into() } else { a.tags.join(",") },
                        a.outcome.clone(),
                    ]);
                }
                output::print_columns(&rows, |_| false, &output::Style::stdout());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_runs(runs: &[RunRecord]) {
    let mut rows = vec![
        ["RUN", "REPOSITORY", "POLICY", "STARTED", "STATUS", "SEEN", "TO DELETE", "DELETED", "FAILED", "DETAIL"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for r in runs {
        rows.push(vec![
            r.id.to_string(),
            r.repository.clone(),
            r.policy.clone(),
            r.started_at.to_rfc3339(),
            r.status.clone(),
            r.tags_seen.to_string(),
            r.tags_to_delete.to_string(),
            r.tags_deleted.map_or("-".into(), |n| n.to_string()),
            r.failed.map_or("-".into(), |n| n.to_string()),
            r.detail.as_deref().map(|d| crate::untrusted::escape(d).into_owned()).unwrap_or_default(),
        ]);
    }
    let failed: Vec<bool> = std::iter::once(false).chain(runs.iter().map(|r| r.status == "failed")).collect();
    output::print_columns(&rows, |i| failed[i], &output::Style::stdout());
}

#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// The most recent passes that reached a plan, newest first.
    List {
        #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
        config: PathBuf,
        /// Only this repository.
        #[arg(long, value_name = "PATH")]
        repository: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

pub fn runs(command: RunsCommand) -> anyhow::Result<ExitCode> {
    let RunsCommand::List { config, repository, limit, output: format } = command;
    let store = store(&config)?;
    let runs = store.runs().recent(repository.as_deref(), limit)?;
    match format {
        OutputFormat::Json => output::print_json(&runs.iter().map(run_json).collect::<Vec<_>>())?,
        OutputFormat::Table => print_runs(&runs),
    }
    Ok(ExitCode::SUCCESS)
}
