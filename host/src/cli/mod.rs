//! Command-line interface: argument parsing and output. Thin glue over the library.

mod audit;
mod eval;
mod imports;
mod inspect;
mod output;
mod plugin_diff;
mod plugin_tools;
mod plugins;
mod record;
mod repos;
mod restore;
mod run;
mod serve;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Runs container-registry cleanup policies as sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "tagwarden", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug); or set TAGWARDEN_LOG (e.g. `tagwarden=debug`).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines as text for people, or one JSON object per line for log collectors.
    #[arg(long, value_enum, default_value_t, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Evaluate a retention plugin over a recorded tag list (a dry run: nothing is deleted).
    Eval(eval::EvalArgs),
    /// Run a cleanup pass over the configured policies and repositories.
    Run(run::RunArgs),
    /// Write a registry repository's tag list as a recording (for `eval` and simulations).
    Record(record::RecordArgs),
    /// Show the most recent deletion attempts from the audit log.
    Audit(audit::AuditArgs),
    /// Push a deleted tag's manifest back, as the registry served it before the delete.
    Restore(restore::RestoreArgs),
    /// Run the cleanup daemon: policies on their cadence, a bounded pool of workers.
    Serve(serve::ServeArgs),
    /// Repositories by status, workers busy, the last 24 hours' runs, failures by class.
    Status(repos::StatusArgs),
    /// Repositories in the daemon's state: list, show, retry, clean now, delete.
    Repos {
        #[command(subcommand)]
        command: repos::ReposCommand,
    },
    /// Passes recorded in the state database.
    Runs {
        #[command(subcommand)]
        command: repos::RunsCommand,
    },
    /// Repository imports to a GitLab-compatible registry: start, check, list, show, retry.
    Imports {
        #[command(subcommand)]
        command: imports::ImportsCommand,
    },
    /// The state database: move a SQLite state into PostgreSQL (`state migrate --to`).
    State {
        #[command(subcommand)]
        command: state::StateCommand,
    },
    /// Work with plugin files.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Show a plugin's kind, contract version, sha256, size, and whether it loads.
    Inspect(inspect::InspectArgs),
    /// Check a plugin file as the daemon would before using it: loads, contract version, params.
    Validate(plugin_tools::ValidateArgs),
    /// Run golden cases (recording.json, params.json, expected.json) through a retention plugin.
    Test(plugin_tools::TestArgs),
    /// Write a complete, buildable plugin crate to start from (tests, recording, golden cases).
    New(plugin_tools::NewArgs),
    /// The daemon's plugin directory: each plugin's version in service, use and state.
    List(plugins::ListArgs),
    /// Put a quarantined plugin back in service (its policies resume).
    Release(plugins::ReleaseArgs),
    /// What a new plugin version deletes that the old keeps, and the reverse: two files over
    /// recordings (for CI), or the daemon's recorded canary for plugin NAME.
    Diff(plugin_diff::DiffArgs),
    /// Put in service the new version of a plugin that its canary held back (pending).
    Approve(plugins::ApproveArgs),
}

/// Output format for commands that report results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON object for programs.
    Json,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Options shared by commands that load plugins.
#[derive(Debug, clap::Args)]
struct PluginOptions {
    /// Extra directory to look for plugins named without a path (repeatable).
    #[arg(long = "plugin-dir", value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// Wall-clock limit for one plugin call (more than zero).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = positive_duration)]
    timeout: std::time::Duration,
    /// Memory cap for one plugin call, in MiB (1 to 4096).
    #[arg(long = "memory-mib", value_name = "MIB", default_value_t = crate::runtime::DEFAULT_PLUGIN_MEMORY_MIB,
          value_parser = clap::value_parser!(u64).range(1..=crate::runtime::MAX_PLUGIN_MEMORY_MIB))]
    memory_mib: u64,
}

impl PluginOptions {
    fn limits(&self) -> crate::runtime::PluginLimits {
        // In range (clap checked), so the shift cannot overflow.
        crate::runtime::PluginLimits { timeout: self.timeout, memory_bytes: (self.memory_mib as usize) << 20, fuel: None }
    }
}

/// A duration such as `500ms` or `2s`; zero is refused (every call would time out).
fn positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("expected a duration greater than zero, such as \"1s\"".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; expected a duration such as \"500ms\" or \"2s\"")),
    }
}

/// The plugin runtime for one command, caching compiled plugins on disk so the next
/// command does not compile them again ([`crate::plugins::compile_cache_dir`]).
fn plugin_runtime(fuel: bool) -> anyhow::Result<std::sync::Arc<crate::runtime::PluginRuntime>> {
    Ok(std::sync::Arc::new(crate::runtime::PluginRuntime::new(plugin_runtime_config(fuel))?))
}

/// The settings of [`plugin_runtime`], for a command that changes some.
fn plugin_runtime_config(fuel: bool) -> crate::runtime::RuntimeConfig {
    crate::runtime::RuntimeConfig { fuel, compile_cache: crate::plugins::compile_cache_dir(), ..crate::runtime::RuntimeConfig::default() }
}

/// Sets up logging to stderr: warnings by default (plugin warnings included).
pub fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TAGWARDEN_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        // One object per line, with the pass span's repository and run id on each.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Eval(args) => eval::run(args),
        Command::Run(args) => run::run(args),
        Command::Record(args) => record::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Restore(args) => restore::run(args),
        Command::Serve(args) => serve::serve(args),
        Command::Status(args) => repos::status(args),
        Command::Repos { command } => repos::repos(command),
        Command::Runs { command } => repos::runs(command),
        Command::Imports { command } => imports::imports(command),
        Command::State { command } => state::state(command),
        Command::Plugins { command: PluginsCommand::Inspect(args) } => inspect::run(args),
        Command::Plugins { command: PluginsCommand::Validate(args) } => plugin_tools::validate(args),
        Command::Plugins { command: PluginsCommand::Test(args) } => plugin_tools::test(args),
        Command::Plugins { command: PluginsCommand::New(args) } => plugin_tools::new(args),
        Command::Plugins { command: PluginsCommand::List(args) } => plugins::list(args),
        Command::Plugins { command: PluginsCommand::Release(args) } => plugins::release(args),
        Command::Plugins { command: PluginsCommand::Diff(args) } => plugin_diff::diff(args),
        Command::Plugins { command: PluginsCommand::Approve(args) } => plugins::approve(args),
    }
}
