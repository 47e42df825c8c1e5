//! `tagwarden plugins list`, `plugins release` and `plugins approve`: the daemon's plugin directory
//! (`[plugins] dir`) as the state database records it. Like `status`, they read and write the
//! database directly; a running daemon takes a release at its next look at the directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::{OutputFormat, output};
use crate::store::{CanaryOutcome, CanaryRecord, PluginRecord, PluginState};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    /// The plugin's name (its file stem in the plugin directory).
    name: String,
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    /// The plugin's name (its file stem in the plugin directory).
    name: String,
}

/// `plugins list`: name, kind, contract, sha256, loaded at, policies, evaluations,
/// failures, state and latest canary (extra deletions against the brake) of every plugin of
/// the directory; the reason under each that is not active.
pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let store = super::repos::store(&args.config)?;
    let table = store.plugin_table();
    let plugins = table.list()?;
    let canaries = plugins.iter().map(|p| table.latest_canary(&p.name, None)).collect::<anyhow::Result<Vec<_>>>()?;
    match args.output {
        OutputFormat::Json => {
            let shown: Vec<_> = plugins.iter().zip(&canaries).map(|(p, c)| crate::api::json::directory_plugin(p, c.as_ref())).collect();
            output::print_json(&serde_json::json!({ "plugins": shown }))?
        }
        OutputFormat::Table => print_table(&plugins, &canaries),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(plugins: &[PluginRecord], canaries: &[Option<CanaryRecord>]) {
    if plugins.is_empty() {
        println!("no plugins recorded: `tagwarden serve` records those of `[plugins] dir` as it loads them");
        return;
    }
    let mut rows = vec![
        [
            "NAME",
            "STATE",
            "KIND",
            "DECLARED",
            "CONTRACT",
            "CODE",
            "SHA256",
            "LOADED AT",
            "POLICIES",
            "EVALUATIONS",
            "FAILURES",
            "LAST CANARY",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let dash = || "-".to_owned();
    for (p, canary) in plugins.iter().zip(canaries) {
        rows.push(vec![
            p.name.clone(),
            p.state.to_string(),
            p.kind.clone().unwrap_or_else(dash),
            match (&p.declared_name, &p.declared_version) {
                (Some(n), Some(v)) => format!("{n} {v}"),
                _ => dash(),
            },
            p.contract_version.clone().unwrap_or_else(dash),
            p.tier.clone().unwrap_or_else(dash),
            p.sha256.as_deref().map(|s| s[..12.min(s.len())].to_owned()).unwrap_or_else(dash),
            p.loaded_at.map(|t| t.to_rfc3339()).unwrap_or_else(dash),
            if p.policies.is_empty() { dash() } else { p.policies.join(",") },
            p.evaluations.to_string(),
            p.failures.to_string(),
            canary.as_ref().map(|c| format!("{}: {}", c.outcome.as_str(), c.diff.against_brake(c.max_extra_fraction))).unwrap_or_else(dash),
        ]);
    }
    let style = output::Style::stdout();
    output::print_columns(&rows, |i| i > 0 && plugins[i - 1].state != PluginState::Active, &style);
    for p in plugins.iter().filter(|p| p.reason.is_some()) {
        println!("\n{} ({}): {}", p.name, p.state, crate::untrusted::escape(p.reason.as_deref().unwrap_or_default()));
    }
}

/// `plugins release NAME`: puts a quarantined plugin back in service (the daemon clears its
/// faults and resumes its policies at its next look). Refused, changing nothing, for a
/// plugin that is not quarantined.
pub fn release(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    let store = super::repos::store(&args.config)?;
    let table = store.plugin_table();
    let plugins = table.list()?;
    match plugins.iter().find(|p| p.name == args.name) {
        Some(p) if p.state == PluginState::Quarantined => {}
        Some(p) => bail!("plugin `{}` is {}, not quarantined: there is nothing to release", p.name, p.state),
        None => {} // `request` names the plugins there are.
    }
    table.request(&args.name, "release")?;
    println!("plugin {}: release requested; the daemon puts it back in service at its next look at the plugin directory", args.name);
    Ok(ExitCode::SUCCESS)
}

/// `plugins approve NAME`: puts in service the version of plugin NAME that its canary held
/// back (`pending`). The request names that version's sha256, so a newer file that arrives
/// in the meantime is not approved by it; the daemon swaps at its next look.
pub fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let store = super::repos::store(&args.config)?;
    let table = store.plugin_table();
    let plugins = table.list()?;
    match plugins.iter().find(|p| p.name == args.name) {
        Some(p) if p.state == PluginState::Pending => {}
        Some(p) => bail!(
            "plugin `{}` is {}, not pending: no new version of it waits for approval (`tagwarden plugins list` shows each plugin's state)",
            p.name,
            p.state
        ),
        None => bail!(
            "no plugin named `{}` in the daemon's plugin directory (known: {}); `tagwarden plugins list` shows them",
            args.name,
            if plugins.is_empty() { "none yet".to_owned() } else { plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ") }
        ),
    }
    let waiting = table.latest_canary(&args.name, None)?.filter(|c| c.outcome == CanaryOutcome::Pending);
    let Some(canary) = waiting else {
        bail!(
            "plugin `{}`: no canary waiting for approval is recorded; `tagwarden plugins diff {}` shows the last one",
            args.name,
            args.name
        );
    };
    table.request(&args.name, &format!("approve {}", canary.new_sha256))?;
    println!(
        "plugin {}: approval of {} (sha256:{}) requested; the daemon puts it in service at its next look at the plugin directory",
        args.name,
        crate::untrusted::escape(&canary.new_version),
        canary.new_sha256
    );
    Ok(ExitCode::SUCCESS)
}
