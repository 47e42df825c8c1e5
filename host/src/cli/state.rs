//! `tagwarden state migrate --to postgres://…`: moves a host's SQLite state into the PostgreSQL
//! database several hosts will share (docs/operations.md, "When to move, and how").

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{OutputFormat, output};
use crate::config::Config;
use crate::registry::Secret;
use crate::store::PgStateStore;

#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Copy the SQLite state of a config (cleanup state, runs, audit log, kept manifests,
    /// metadata cache) into an empty PostgreSQL database, all or nothing. Stop the daemon
    /// first; then set `[state] url` to the same URL.
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The configuration file: its `[state] dir` holds the SQLite state to copy.
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    /// The target database, `postgres://user@host:port/database` (no password in it).
    #[arg(long, value_name = "URL")]
    to: String,
    /// The environment variable holding the target's password (default: the config's `[state]
    /// password_env` or `password_file`, if it has them already).
    #[arg(long, value_name = "VAR", conflicts_with = "password_file")]
    password_env: Option<String>,
    /// A file holding the target's password.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

/// The target's password: from `--password-env` or `--password-file`, else from the config.
fn password(args: &MigrateArgs, config: &Config) -> anyhow::Result<Option<Secret>> {
    if let Some(var) = &args.password_env {
        let value = std::env::var(var).map_err(|_| anyhow::anyhow!("`--password-env` names {var}, which is not set; export it"))?;
        return Ok(Some(Secret::new(value)));
    }
    if let Some(file) = &args.password_file {
        let text = crate::input::read_text(file, "`--password-file`", crate::input::limits::SECRET_BYTES, "")?;
        return Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r']).to_owned())));
    }
    config.state_password().with_context(|| format!("the password of the target, from `[state]` of {}", config.path.display()))
}

pub fn state(command: StateCommand) -> anyhow::Result<ExitCode> {
    match command {
        StateCommand::Migrate(args) => migrate(args),
    }
}

fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let config = Config::read(&args.config)?;
    let db = crate::setup::local_store_path(&config);
    if !db.is_file() {
        bail!("no SQLite state at {} to migrate: `[state] dir` of {} names where it is", db.display(), config.path.display());
    }
    let password = password(&args, &config)?;
    let target = PgStateStore::connect(&args.to, password).context("opening the target database (`--to`)")?;
    let local = crate::setup::open_local_store(&config)?;
    eprintln!("copying {} into {} ...", db.display(), target.describe());
    let report = target.migrate_from(&local, |table, rows| {
        // Fixed width: the next table's line overwrites this one whole.
        eprint!("\r  {table:<22} {rows:>10} rows");
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    match args.output {
        OutputFormat::Json => {
            let tables: serde_json::Map<String, serde_json::Value> =
                report.tables.iter().map(|(t, n)| ((*t).to_owned(), (*n).into())).collect();
            output::print_json(&serde_json::json!({ "from": db, "to": target.describe(), "tables": tables }))?;
        }
        OutputFormat::Table => {
            for (table, rows) in &report.tables {
                println!("{table:<22} {rows:>10} rows");
            }
            println!(
                "copied into {}. Next: set `url = \"{}\"` and `password_env` or `password_file` in `[state]` of {}, and start the hosts.",
                target.describe(),
                args.to,
                config.path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
