//! `tagwarden eval`: a retention plugin over a recorded tag list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{OutputFormat, PluginOptions, output};
use crate::model::Timestamp;
use crate::recording::Recording;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A bundled plugin's name (e.g. `gitlab-retention`) or a path to a `.wasm` component.
    #[arg(long, value_name = "NAME|PATH.wasm")]
    plugin: String,
    /// The plugin's params: a JSON object, or `@file.json`.
    #[arg(long, value_name = "JSON|@FILE", default_value = "{}")]
    params: String,
    /// The recorded tag list to evaluate.
    #[arg(long, value_name = "FILE")]
    recording: PathBuf,
    /// The evaluation time (RFC 3339); defaults to now.
    #[arg(long, value_name = "RFC3339")]
    now: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    #[command(flatten)]
    plugin_options: PluginOptions,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let params = load_params(&args.params)?;
    let now = match &args.now {
        Some(s) => Timestamp::parse_rfc3339(s).map_err(|e| anyhow::anyhow!("--now: {e}"))?,
        None => Timestamp::now(),
    };
    let recording = Recording::read(&args.recording)?;
    let path = crate::plugins::resolve(&args.plugin, &args.plugin_options.plugin_dirs)?;
    let runtime = super::plugin_runtime(false)?;
    let plugin = runtime.load_file(&path, args.plugin_options.limits())?.into_retention()?;
    let decisions = plugin.evaluate(&params, &recording.list, now)?;
    let report = output::EvalReport::new(&recording.list, now, plugin.plugin().meta(), &decisions);
    match args.output {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Table => output::print_eval_table(&report),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads `--params`: inline JSON or `@file`, which must hold a JSON object. Returns the
/// canonical JSON text handed to the plugin.
pub(crate) fn load_params(spec: &str) -> anyhow::Result<String> {
    let (text, origin) = match spec.strip_prefix('@') {
        Some(file) => {
            let text = crate::input::read_text(Path::new(file), "--params file", crate::input::limits::PARAMS_BYTES, "")?;
            (text, file.to_owned())
        }
        None => (spec.to_owned(), "--params".to_owned()),
    };
    // A key given twice is refused: the plugin receives the canonical text, which would
    // otherwise silently carry only the last value.
    let value = crate::input::json_without_duplicate_keys(&text)
        .map_err(|e| anyhow::anyhow!("{origin}: not valid JSON ({e}); expected an object such as '{{\"keep_n\": 5}}'"))?;
    if !value.is_object() {
        anyhow::bail!("{origin}: expected a JSON object such as '{{\"keep_n\": 5}}', got {}", json_kind(&value));
    }
    Ok(value.to_string())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_must_be_a_json_object() {
        assert_eq!(load_params(r#"{"keep_n": 1}"#).unwrap(), r#"{"keep_n":1}"#);
        assert!(load_params("[1]").unwrap_err().to_string().contains("got an array"));
        assert!(load_params("{keep_n: 1}").unwrap_err().to_string().contains("not valid JSON"));
        assert!(load_params("@/nonexistent/params.json").unwrap_err().to_string().contains("cannot read"));
        let err = load_params(r#"{"keep_n":1,"keep_n":1000}"#).unwrap_err().to_string();
        assert!(err.contains(r#"the key "keep_n" is given twice"#), "{err}");
        let err = load_params("@/dev/zero").unwrap_err().to_string();
        assert!(err.contains("is a character device; expected a regular file"), "{err}");
    }
}
