//! Reports printed by commands: JSON for programs, aligned tables for people.

use std::io::{IsTerminal, Write};

use serde::Serialize;
use std::borrow::Cow;

use crate::untrusted::escape;

use crate::model::{Action, RetentionDecisions, TagList, Timestamp};
use crate::runtime::PluginMeta;

/// `eval`'s result: one entry per input tag and untagged manifest, in input order.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub repository: String,
    pub now: Timestamp,
    pub plugin: PluginRef,
    pub tags: Vec<TagVerdict>,
    pub untagged: Vec<UntaggedVerdict>,
    pub summary: EvalSummary,
}

#[derive(Debug, Serialize)]
pub struct PluginRef {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct TagVerdict {
    pub name: String,
    pub digest: String,
    pub action: Action,
    pub reason: String,
    /// The time the retention rules use: pushed-at, else created-at. Table only.
    #[serde(skip)]
    pub time: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
pub struct UntaggedVerdict {
    pub digest: String,
    pub action: Action,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct EvalSummary {
    pub tags: usize,
    pub tags_to_delete: usize,
    pub tags_to_keep: usize,
    pub untagged: usize,
    pub untagged_to_delete: usize,
}

impl EvalReport {
    pub fn new(list: &TagList, now: Timestamp, plugin: &PluginMeta, decisions: &RetentionDecisions) -> Self {
        let tags: Vec<TagVerdict> = list
            .tags()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let rule = decisions.tag(i);
                TagVerdict {
                    name: t.name.clone(),
                    digest: t.digest.to_string(),
                    action: rule.action,
                    reason: rule.reason.clone(),
                    time: t.pushed_at.or(t.created_at),
                }
            })
            .collect();
        let untagged: Vec<UntaggedVerdict> = list
            .untagged()
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let rule = decisions.untagged(i);
                UntaggedVerdict { digest: u.digest.to_string(), action: rule.action, reason: rule.reason.clone() }
            })
            .collect();
        let tags_to_delete = tags.iter().filter(|t| t.action == Action::Delete).count();
        let summary = EvalSummary {
            tags: tags.len(),
            tags_to_delete,
            tags_to_keep: tags.len() - tags_to_delete,
            untagged: untagged.len(),
            untagged_to_delete: untagged.iter().filter(|u| u.action == Action::Delete).count(),
        };
        EvalReport {
            repository: list.repository.clone(),
            now,
            plugin: PluginRef { name: plugin.name.clone(), version: plugin.version.clone(), sha256: plugin.sha256.clone() },
            tags,
            untagged,
            summary,
        }
    }
}

/// Prints any report as one JSON object on stdout.
pub fn print_json(report: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, report)?;
    writeln!(out)?;
    Ok(())
}

/// Terminal styling, off when stdout is not a terminal or NO_COLOR is set.
pub struct Style {
    on: bool,
}

impl Style {
    pub fn stdout() -> Self {
        Style { on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    pub fn delete(&self, s: &str) -> String {
        if self.on { format!("\x1b[1;31m{s}\x1b[0m") } else { s.to_owned() }
    }

    pub fn dim(&self, s: &str) -> String {
        if self.on { format!("\x1b[2m{s}\x1b[0m") } else { s.to_owned() }
    }
}

/// Shortens `sha256:<hex>` to its first 12 hex digits, as registries' UIs do.
pub fn short_digest(d: &str) -> &str {
    let hex_start = d.find(':').map_or(0, |i| i + 1);
    &d[..(hex_start + 12).min(d.len())]
}

/// Prints rows as left-aligned columns; the last column is not padded. Every cell is
/// escaped ([`crate::untrusted::escape`]): cells carry plugin reasons, tag and
/// repository names and error messages, none of which may restyle the terminal or
/// break a row in two.
pub fn print_columns(rows: &[Vec<String>], highlight: impl Fn(usize) -> bool, style: &Style) {
    let rows: Vec<Vec<Cow<'_, str>>> = rows.iter().map(|r| r.iter().map(|c| escape(c)).collect()).collect();
    let Some(cols) = rows.iter().map(Vec::len).max() else { return };
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = std::io::stdout().lock();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < row.len() {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            } else {
                line.push_str(cell);
            }
        }
        let line = if highlight(i) { style.delete(&line) } else { line };
        let _ = writeln!(out, "{line}");
    }
}

pub fn print_eval_table(r: &EvalReport) {
    let style = Style::stdout();
    let mut rows = vec![vec!["ACTION".into(), "TAG".into(), "DIGEST".into(), "TIME".into(), "REASON".into()]];
    for t in &r.tags {
        rows.push(vec![
            action_label(t.action).into(),
            t.name.clone(),
            short_digest(&t.digest).to_owned(),
            t.time.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339()),
            t.reason.clone(),
        ]);
    }
    for u in &r.untagged {
        rows.push(vec![
            action_label(u.action).into(),
            "<untagged>".into(),
            short_digest(&u.digest).to_owned(),
            "-".into(),
            u.reason.clone(),
        ]);
    }
    let deletes: Vec<bool> = std::iter::once(false)
        .chain(r.tags.iter().map(|t| t.action == Action::Delete))
        .chain(r.untagged.iter().map(|u| u.action == Action::Delete))
        .collect();
    print_columns(&rows, |i| deletes[i], &style);
    let s = &r.summary;
    println!(
        "\n{}: {} tags, {} to delete, {} to keep; {} untagged, {} to delete  {}",
        escape(&r.repository),
        s.tags,
        s.tags_to_delete,
        s.tags_to_keep,
        s.untagged,
        s.untagged_to_delete,
        style.dim(&format!("({} {} sha256:{}, now {})", r.plugin.name, r.plugin.version, &r.plugin.sha256[..12], r.now))
    );
}

fn action_label(a: Action) -> &'static str {
    match a {
        Action::Keep => "keep",
        Action::Delete => "DELETE",
    }
}

/// `plugins inspect`'s result.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub path: String,
    pub sha256: String,
    pub size_bytes: usize,
    pub loads: bool,
    pub error: Option<String>,
    pub plugin: Option<PluginMeta>,
}

pub fn print_inspect(r: &InspectReport) {
    println!("path:      {}", escape(&r.path));
    println!("sha256:    {}", r.sha256);
    println!("size:      {} bytes", r.size_bytes);
    if let Some(p) = &r.plugin {
        // Name and version are checked at load; the description is the plugin's own text.
        println!("plugin:    {} {}", p.name, p.version);
        println!("about:     {}", escape(&p.description));
        println!("kind:      {}", p.kind);
        println!("contract:  tagwarden:policy@{}", p.contract_version);
        println!("compiled:  {}", if p.from_compile_cache { "from cache" } else { "now" });
    }
    match &r.error {
        // Already escaped: a `PluginError`'s text.
        None => println!("loads:     yes"),
        Some(e) => println!("loads:     no: {e}"),
    }
}
