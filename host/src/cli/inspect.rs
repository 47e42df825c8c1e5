//! `tagwarden plugins inspect`: what a plugin file is and whether it loads.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{OutputFormat, output};
use crate::runtime::PluginLimits;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The plugin file.
    path: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let bytes = crate::input::read_bytes(&args.path, "plugin file", crate::input::limits::PLUGIN_BYTES, "")?;
    let runtime = super::plugin_runtime(false)?;
    let loaded = runtime.load_bytes(&args.path.display().to_string(), &bytes, PluginLimits::default());
    let report = output::InspectReport {
        path: args.path.display().to_string(),
        sha256: crate::model::sha256_hex(&bytes),
        size_bytes: bytes.len(),
        loads: loaded.is_ok(),
        error: loaded.as_ref().err().map(|e| e.to_string()),
        plugin: loaded.as_ref().ok().map(|p| p.meta().clone()),
    };
    match args.output {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Table => output::print_inspect(&report),
    }
    Ok(if report.loads { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
