//! `tagwarden audit`: the most recent deletion attempts from the audit log.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{OutputFormat, output};
use crate::config::Config;
use crate::model::Timestamp;

/// `--since`: a duration back from now, or an RFC 3339 time.
fn since(s: &str) -> Result<Timestamp, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Timestamp::now().saturating_sub(d));
    }
    Timestamp::parse_rfc3339(s)
        .map_err(|_| format!("expected a duration back from now (`24h`, `7d`) or an RFC 3339 time (`2026-12-01T00:00:00Z`), got `{s}`"))
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The configuration file (its `[state] dir`, or `[state] url` when set, holds the audit log).
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    /// Only this repository.
    #[arg(long, value_name = "PATH")]
    repository: Option<String>,
    /// How many entries, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only entries at or after this: a duration back from now (`24h`, `7d`) or an RFC 3339
    /// time (`2026-12-01T00:00:00Z`).
    #[arg(long, value_name = "WHEN", value_parser = since)]
    since: Option<Timestamp>,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let config = Config::read(&args.config)?;
    let store = crate::setup::open_existing_store(&config, "nothing has been deleted with this configuration")?;
    let records = store.audit_log().recent_since(args.repository.as_deref(), args.since, args.limit)?;
    match args.output {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = records
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id, "at": r.at, "registry": r.registry, "repository": r.repository,
                        "operation": r.operation, "digest": r.digest, "tags": r.tags,
                        "decided_by": r.decided_by, "outcome": r.outcome, "detail": r.detail,
                    })
                })
                .collect();
            output::print_json(&rows)?;
        }
        OutputFormat::Table => {
            let style = output::Style::stdout();
            let mut rows = vec![vec![
                "AT".into(),
                "REPOSITORY".into(),
                "OPERATION".into(),
                "DIGEST".into(),
                "TAGS".into(),
                "OUTCOME".into(),
                "DECIDED BY".into(),
            ]];
            for r in &records {
                let outcome = match &r.detail {
                    Some(d) => format!("{}: {d}", r.outcome),
                    None => r.outcome.clone(),
                };
                rows.push(vec![
                    r.at.to_rfc3339(),
                    r.repository.clone(),
                    r.operation.clone(),
                    output::short_digest(&r.digest).to_owned(),
                    if r.tags.is_empty() { "-".into() } else { r.tags.join(",") },
                    outcome,
                    // It carries the plugin's reason: escaped for the terminal.
                    crate::untrusted::escape(&r.decided_by).into_owned(),
                ]);
            }
            let failed: Vec<bool> = std::iter::once(false).chain(records.iter().map(|r| r.outcome == "failed")).collect();
            output::print_columns(&rows, |i| failed[i], &style);
        }
    }
    Ok(ExitCode::SUCCESS)
}
