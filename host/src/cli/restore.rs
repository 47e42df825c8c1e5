//! `tagwarden restore REPOSITORY:TAG [--as NEWTAG]`: undo a deletion (see [`crate::restore`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{OutputFormat, output};
use crate::config::Config;
use crate::restore::{RestoreRequest, restore};
use crate::setup;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The configuration file (its registry, and its `[state] dir` with the audit log).
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    /// The deleted tag, as `REPOSITORY:TAG` (e.g. `group/app:v1.2`).
    #[arg(value_name = "REPOSITORY:TAG")]
    target: String,
    /// Push it back under this tag instead.
    #[arg(long = "as", value_name = "NEWTAG")]
    as_tag: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let Some((repository, tag)) = args.target.rsplit_once(':') else {
        bail!("`{}`: expected REPOSITORY:TAG, e.g. `group/app:v1.2`", crate::untrusted::escape(&args.target));
    };
    let config = Config::read(&args.config)?;
    let store = setup::open_existing_store(&config, "nothing has been deleted with this configuration")?;
    let backend = setup::backend(&config, &store)?;
    let Some(client) = backend.registry() else {
        bail!("restore needs a registry: {} simulates one from recordings (`registry.recordings`)", config.path.display());
    };
    let request = RestoreRequest { repository, tag, as_tag: args.as_tag.as_deref(), by: "operator via cli" };
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let restored = tokio.block_on(restore(client, &store.audit_log(), &request))?;
    match args.output {
        OutputFormat::Json => output::print_json(&restored)?,
        OutputFormat::Table if restored.already_there => {
            println!("{repository}:{} already points at {}: nothing to restore", restored.tag, restored.digest)
        }
        OutputFormat::Table => {
            println!(
                "{repository}:{} restored → {} ({}; deleted {} by audit row {})",
                restored.tag, restored.digest, restored.media_type, restored.deleted_at, restored.deletion_audit_id
            );
            // The policy that deleted it has not changed its mind.
            println!(
                "note: the policy that deleted it will delete it again at its next pass unless it keeps it \
                 (a `deletion.protect` pattern, or a policy change)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
