//! `tagwarden plugins diff`: what a new version of a retention plugin would decide
//! differently from the old one. Two forms, one report ([`crate::canary::Diff`]):
//!
//! - `plugins diff OLD.wasm NEW.wasm --params P --recordings DIR`: both files over every
//!   recording in DIR, evaluated as `eval` does; for CI, with an exit status
//!   (`--max-extra-deletions`).
//! - `plugins diff NAME`: the difference the daemon's canary recorded when a new file of
//!   plugin NAME arrived in `[plugins] dir`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Serialize;

use super::{OutputFormat, PluginOptions, output};
use crate::canary::{Diff, RepositoryDiff, percent};
use crate::model::Timestamp;
use crate::recording::Recording;
use crate::runtime::RetentionPlugin;
use crate::untrusted::escape;

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// `NAME`: the difference the daemon's canary recorded for plugin NAME of `[plugins] dir`.
    /// `OLD NEW`: two retention plugins (`.wasm` files or bundled names) compared over
    /// `--recordings`.
    #[arg(value_name = "NAME | OLD NEW", num_args = 1..=2, required = true)]
    plugins: Vec<String>,
    /// The params both versions decide with: a JSON object, or `@file.json`.
    #[arg(long, value_name = "JSON|@FILE")]
    params: Option<String>,
    /// Other params for the new version (default: `--params`), e.g. to see what a params
    /// change would do.
    #[arg(long, value_name = "JSON|@FILE")]
    new_params: Option<String>,
    /// A directory of recordings (`*.json`, as `tagwarden record` writes them), or one.
    #[arg(long, value_name = "DIR")]
    recordings: Option<PathBuf>,
    /// Exit with status 2 when the new version deletes more than this fraction of the tags
    /// (0 to 1) that the old one keeps.
    #[arg(long, value_name = "FRACTION", value_parser = fraction)]
    max_extra_deletions: Option<f64>,
    /// The evaluation time (RFC 3339); defaults to each recording's `recorded_at`, so a CI
    /// run decides the same way every day.
    #[arg(long, value_name = "RFC3339")]
    now: Option<String>,
    /// The configuration whose state database holds the canaries (`plugins diff NAME`).
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    #[command(flatten)]
    plugin_options: PluginOptions,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a fraction of the tags from 0 to 1, such as 0.05".to_owned()),
    }
}

/// One side of the comparison.
#[derive(Debug, Serialize)]
struct Side {
    name: String,
    version: String,
    sha256: String,
    /// The file compared (offline form).
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct DiffReport {
    /// The plugin of `[plugins] dir` (recorded form).
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin: Option<String>,
    old: Side,
    new: Side,
    /// When the daemon compared them, and what became of the new version (recorded form).
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<crate::store::CanaryOutcome>,
    /// The brake: `--max-extra-deletions`, or the daemon's `canary_max_extra_deletions`.
    max_extra_deletions: Option<f64>,
    extra_fraction: f64,
    /// Whether the brake is exceeded (or the new version failed where the old one decided).
    exceeded: bool,
    diff: Diff,
}

pub fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    match args.plugins.as_slice() {
        [name] => recorded(&args, name),
        [old, new] => offline(&args, old, new),
        _ => unreachable!("clap takes one or two"),
    }
}

/// `plugins diff NAME`: the latest canary the daemon recorded for plugin NAME.
fn recorded(args: &DiffArgs, name: &str) -> anyhow::Result<ExitCode> {
    if args.recordings.is_some() || args.params.is_some() || args.new_params.is_some() {
        bail!(
            "`plugins diff {name}` shows what the daemon's canary recorded; to compare two files over recordings, \
             give both: `tagwarden plugins diff OLD.wasm NEW.wasm --params JSON --recordings DIR`"
        );
    }
    let store = super::repos::store(&args.config)?;
    let table = store.plugin_table();
    let Some(c) = table.latest_canary(name, None)? else {
        let known: Vec<String> = table.list()?.into_iter().map(|p| p.name).collect();
        bail!(
            "no canary recorded for plugin `{name}` (plugins of the daemon's directory: {}): the daemon compares a new file \
             with the version in service when one replaces it; to compare two files yourself, \
             `tagwarden plugins diff OLD.wasm NEW.wasm --params JSON --recordings DIR`",
            if known.is_empty() { "none recorded".to_owned() } else { known.join(", ") }
        );
    };
    let side = |version: &str, sha256: &str| {
        let (name, version) = version.split_once(' ').unwrap_or((version, ""));
        Side { name: name.to_owned(), version: version.to_owned(), sha256: sha256.to_owned(), file: None, params: None }
    };
    let report = DiffReport {
        plugin: Some(c.plugin.clone()),
        old: side(&c.old_version, &c.old_sha256),
        new: side(&c.new_version, &c.new_sha256),
        at: Some(c.at),
        outcome: Some(c.outcome),
        max_extra_deletions: Some(c.max_extra_fraction),
        extra_fraction: c.diff.extra_fraction(),
        exceeded: c.diff.held_because(c.max_extra_fraction).is_some(),
        diff: c.diff,
    };
    match args.output {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Table => print_report(&report),
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugins diff OLD NEW --recordings DIR`.
fn offline(args: &DiffArgs, old_spec: &str, new_spec: &str) -> anyhow::Result<ExitCode> {
    let Some(dir) = &args.recordings else {
        bail!(
            "`plugins diff {old_spec} {new_spec}` compares the two over recorded tag lists: add `--recordings DIR` \
             (a directory of recordings, as `tagwarden record` writes them)"
        );
    };
    let params = super::eval::load_params(args.params.as_deref().unwrap_or("{}"))?;
    let new_params = match &args.new_params {
        Some(p) => super::eval::load_params(p).context("--new-params")?,
        None => params.clone(),
    };
    let now = match &args.now {
        Some(s) => Some(Timestamp::parse_rfc3339(s).map_err(|e| anyhow::anyhow!("--now: {e}"))?),
        None => None,
    };
    let files = recording_files(dir)?;
    let runtime = super::plugin_runtime(false)?;
    let load = |which: &str, spec: &str, params: &str, flag: &str| -> anyhow::Result<(RetentionPlugin, PathBuf)> {
        let path = crate::plugins::resolve(spec, &args.plugin_options.plugin_dirs).with_context(|| format!("the {which} plugin"))?;
        let plugin = runtime
            .load_file(&path, args.plugin_options.limits())
            .with_context(|| format!("the {which} plugin {} does not load; `tagwarden plugins validate` says why", path.display()))?;
        let kind = plugin.meta().kind;
        let plugin = plugin.into_retention().with_context(|| {
            format!("`plugins diff` compares retention plugins; the {which} plugin {} is a {kind} plugin", path.display())
        })?;
        plugin.validate_params(params).with_context(|| {
            format!(
                "the {which} plugin {} rejects {flag} {params}; check them with `tagwarden plugins validate {} --params '{params}'`",
                path.display(),
                path.display()
            )
        })?;
        Ok((plugin, path))
    };
    let (old, old_path) = load("old", old_spec, &params, "--params")?;
    let new_flag = if args.new_params.is_some() { "--new-params" } else { "--params" };
    let (new, new_path) = load("new", new_spec, &new_params, new_flag)?;

    let mut diff = Diff::default();
    let mut seen: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
    for file in &files {
        // One recording in memory at a time: a directory may hold large ones.
        let recording =
            Recording::read(file).with_context(|| format!("in --recordings {}: fix or remove {}", dir.display(), file.display()))?;
        let repository = recording.list.repository.clone();
        if let Some(previous) = seen.insert(repository.clone(), file.clone()) {
            bail!(
                "{} and {} are both recordings of repository {}; keep one in {}",
                previous.display(),
                file.display(),
                escape(&repository),
                dir.display()
            );
        }
        let at = now.unwrap_or(recording.recorded_at);
        let list = &recording.list;
        let r = match (old.evaluate(&params, list, at), new.evaluate(&new_params, list, at)) {
            (Ok(a), Ok(b)) => crate::canary::compare(list, None, &a, &b),
            (Ok(_), Err(e)) => RepositoryDiff::not_compared(&repository, None, format!("the new version failed: {e}"), true),
            (Err(e), _) => RepositoryDiff::not_compared(&repository, None, format!("the old version failed: {e}"), false),
        };
        diff.push(r);
    }
    let side = |p: &RetentionPlugin, path: &Path, params: &str| {
        let m = p.plugin().meta();
        Side {
            name: m.name.clone(),
            version: m.version.clone(),
            sha256: m.sha256.clone(),
            file: Some(path.display().to_string()),
            params: serde_json::from_str(params).ok(),
        }
    };
    let exceeded = args.max_extra_deletions.is_some_and(|max| diff.extra_fraction() > max);
    let report = DiffReport {
        plugin: None,
        old: side(&old, &old_path, &params),
        new: side(&new, &new_path, &new_params),
        at: None,
        outcome: None,
        max_extra_deletions: args.max_extra_deletions,
        extra_fraction: diff.extra_fraction(),
        exceeded,
        diff,
    };
    match args.output {
        OutputFormat::Json => output::print_json(&report)?,
        OutputFormat::Table => print_report(&report),
    }
    let failed = report.diff.not_compared;
    if failed > 0 {
        bail!(
            "{failed} of {} recordings could not be compared (a version failed on them; see above): \
             `tagwarden eval --plugin FILE --recording FILE` shows the failure",
            files.len()
        );
    }
    if exceeded {
        eprintln!(
            "error: the new version deletes {} tags the old one keeps, {} of the {} tags compared: more than --max-extra-deletions {} allows",
            report.diff.extra_deletions,
            percent(report.extra_fraction),
            report.diff.tags,
            percent(args.max_extra_deletions.unwrap_or_default())
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// The recordings in `dir` (its `*.json`, sorted), or `dir` itself when it is a file.
fn recording_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!("cannot read --recordings {}; give a directory of recordings (`tagwarden record` writes them)", dir.display())
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list --recordings {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no recordings (`*.json`) in --recordings {}; write some with `tagwarden record`", dir.display());
    }
    Ok(files)
}

/// Names shown per repository and side in the table (JSON has up to [`crate::canary::NAMES_KEPT`]).
const NAMES_SHOWN: usize = 10;

fn print_report(r: &DiffReport) {
    let mut text = String::new();
    if let (Some(plugin), Some(at), Some(outcome)) = (&r.plugin, r.at, r.outcome) {
        let _ = writeln!(text, "plugin {}: canary at {}, outcome: {outcome}", escape(plugin), at.to_rfc3339());
    }
    for (label, side) in [("old", &r.old), ("new", &r.new)] {
        let _ = write!(text, "{label}: {} {} sha256:{}", escape(&side.name), escape(&side.version), side.sha256);
        if let Some(file) = &side.file {
            let _ = write!(text, " ({})", escape(file));
        }
        if let Some(params) = &side.params {
            let _ = write!(text, " params {}", escape(&params.to_string()));
        }
        text.push('\n');
    }
    print!("{text}");
    let d = &r.diff;
    let mut rows = vec![["REPOSITORY", "TAGS", "OLD DELETES", "NEW DELETES", "EXTRA", "FEWER"].map(str::to_owned).to_vec()];
    for rep in d.repositories.iter().filter(|x| x.error.is_none()) {
        rows.push(vec![
            rep.repository.clone(),
            rep.tags.to_string(),
            rep.old_deletes.to_string(),
            rep.new_deletes.to_string(),
            format!("+{}", rep.extra_deletions),
            format!("-{}", rep.fewer_deletions),
        ]);
    }
    if rows.len() > 1 {
        output::print_columns(
            &rows,
            |i| i > 0 && d.repositories.iter().filter(|x| x.error.is_none()).nth(i - 1).is_some_and(|x| x.extra_deletions > 0),
            &output::Style::stdout(),
        );
    }
    let mut text = String::new();
    let names = |count: usize, list: &[String]| {
        let shown: Vec<_> = list.iter().take(NAMES_SHOWN).map(|n| escape(n).into_owned()).collect();
        let more = count - shown.len();
        if more > 0 { format!("{} … and {more} more", shown.join(", ")) } else { shown.join(", ") }
    };
    for rep in &d.repositories {
        let repo = escape(&rep.repository);
        if let Some(e) = &rep.error {
            let _ = writeln!(text, "{repo}: not compared: {}", escape(e));
            continue;
        }
        if rep.extra_deletions > 0 {
            let _ = writeln!(
                text,
                "{repo}: new deletes, old keeps ({}): {}",
                rep.extra_deletions,
                names(rep.extra_deletions, &rep.extra_names)
            );
        }
        if rep.fewer_deletions > 0 {
            let _ = writeln!(
                text,
                "{repo}: old deletes, new keeps ({}): {}",
                rep.fewer_deletions,
                names(rep.fewer_deletions, &rep.fewer_names)
            );
        }
    }
    let _ = writeln!(text, "total: {}", d.summary());
    if let Some(max) = r.max_extra_deletions {
        let _ = writeln!(text, "brake: {} extra deletions allowed; {}", percent(max), if r.exceeded { "exceeded" } else { "within it" });
    }
    print!("{text}");
}
