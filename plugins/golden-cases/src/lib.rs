//! Runs golden cases (`tests/golden/<case>/`) natively through a retention policy and
//! compares its decisions with `expected.json`. The host runs the same files through the
//! Wasm runtime (`tests/integration/golden.rs`); a difference between the two paths shows
//! up as a failure in exactly one of them.
//!
//! A case belongs to the plugin named in its `plugin` file; a case without one belongs to
//! `gitlab-retention` (the cases that came first). Each plugin's `tests/golden.rs` calls
//! [`check_plugin_cases`] with its own policy type.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tagwarden_plugin_sdk::{Action, RetentionInput, RetentionPolicy, Tag, Timestamp, UntaggedManifest, Verdict};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The plugin a case without a `plugin` file belongs to.
pub const DEFAULT_PLUGIN: &str = "gitlab-retention";

/// `recording.json`, format `tagwarden.recording.v1`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)] // strict, like the host
struct Recording {
    format: String,
    repository: String,
    recorded_at: String,
    tags: Vec<RecordedTag>,
    #[serde(default)]
    untagged: Vec<RecordedUntagged>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedTag {
    name: String,
    digest: String,
    created_at: Option<String>,
    pushed_at: Option<String>,
    last_pulled_at: Option<String>,
    size_bytes: Option<u64>,
    media_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedUntagged {
    digest: String,
    created_at: Option<String>,
    pushed_at: Option<String>,
}

/// `expected.json`: the decisions, or substrings of the `create` (or `evaluate`) error.
#[derive(Deserialize)]
#[serde(untagged)]
enum Expected {
    Error { error_contains: Vec<String> },
    Decisions { tags: Vec<ExpectedTag>, untagged: Vec<ExpectedUntagged> },
}

#[derive(Deserialize, Debug, PartialEq)]
struct ExpectedTag {
    name: String,
    action: String,
    reason: String,
}

#[derive(Deserialize, Debug, PartialEq)]
struct ExpectedUntagged {
    digest: String,
    action: String,
    reason: String,
}

/// `tests/golden/` of the workspace that `crate_dir` (a plugin crate) belongs to.
pub fn golden_dir(crate_dir: &Path) -> PathBuf {
    crate_dir.join("../../tests/golden")
}

/// The plugin a case belongs to: its `plugin` file, trimmed, else [`DEFAULT_PLUGIN`].
pub fn case_plugin(case: &Path) -> String {
    fs::read_to_string(case.join("plugin")).map_or_else(|_| DEFAULT_PLUGIN.to_owned(), |s| s.trim().to_owned())
}

/// Every case directory of `plugin` under `golden`, sorted.
pub fn cases_of(golden: &Path, plugin: &str) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(golden)
        .unwrap_or_else(|e| panic!("{}: {e}", golden.display()))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir() && case_plugin(p) == plugin)
        .collect();
    cases.sort();
    cases
}

/// Runs every case of `plugin` through `P` and panics with every mismatch; at least
/// `min_cases` must exist, so that a misnamed `plugin` file cannot pass by running nothing.
pub fn check_plugin_cases<P: RetentionPolicy>(crate_dir: &Path, plugin: &str, min_cases: usize) {
    let cases = cases_of(&golden_dir(crate_dir), plugin);
    assert!(cases.len() >= min_cases, "expected at least {min_cases} golden cases for {plugin}, found {}", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|dir| run_case::<P>(dir).err().map(|e| format!("{}:\n{e}", dir.file_name().unwrap_or_default().to_string_lossy())))
        .collect();
    assert!(failures.is_empty(), "{} of {} golden cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn timestamp(text: &Option<String>) -> Result<Option<Timestamp>, String> {
    text.as_deref()
        .map(|t| {
            let at = OffsetDateTime::parse(t, &Rfc3339).map_err(|e| format!("timestamp {t:?}: {e}"))?;
            i64::try_from(at.unix_timestamp_nanos() / 1_000)
                .map(Timestamp::from_unix_micros)
                .map_err(|_| format!("timestamp {t:?} out of range"))
        })
        .transpose()
}

fn check_digest(digest: &str) -> Result<(), String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(format!("digest {digest:?} is not sha256:<64 lowercase hex>"))
    }
}

fn action(v: &Verdict) -> &'static str {
    match v.action {
        Action::Keep => "keep",
        Action::Delete => "delete",
    }
}

/// Runs one case; `Err` describes every mismatch.
pub fn run_case<P: RetentionPolicy>(dir: &Path) -> Result<(), String> {
    let recording: Recording = read(&dir.join("recording.json"))?;
    let params = fs::read_to_string(dir.join("params.json")).map_err(|e| format!("params.json: {e}"))?;
    let expected: Expected = read(&dir.join("expected.json"))?;
    if recording.format != "tagwarden.recording.v1" {
        return Err(format!("unknown recording format {:?}", recording.format));
    }

    // As the host does: tags sorted by name, byte-wise; `now` is the recording time.
    let mut recorded: Vec<&RecordedTag> = recording.tags.iter().collect();
    recorded.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut tags = Vec::new();
    for t in &recorded {
        check_digest(&t.digest)?;
        let mut tag = Tag::new(&t.name, &t.digest);
        if let Some(at) = timestamp(&t.created_at)? {
            tag = tag.with_created_at(at);
        }
        if let Some(at) = timestamp(&t.pushed_at)? {
            tag = tag.with_pushed_at(at);
        }
        if let Some(at) = timestamp(&t.last_pulled_at)? {
            tag = tag.with_last_pulled_at(at);
        }
        if let Some(bytes) = t.size_bytes {
            tag = tag.with_size_bytes(bytes);
        }
        if let Some(media_type) = t.media_type.as_deref() {
            tag = tag.with_media_type(media_type);
        }
        tags.push(tag);
    }
    let mut untagged = Vec::new();
    for m in &recording.untagged {
        check_digest(&m.digest)?;
        let mut manifest = UntaggedManifest::new(&m.digest);
        if let Some(at) = timestamp(&m.created_at)? {
            manifest = manifest.with_created_at(at);
        }
        if let Some(at) = timestamp(&m.pushed_at)? {
            manifest = manifest.with_pushed_at(at);
        }
        untagged.push(manifest);
    }
    let now = timestamp(&Some(recording.recorded_at.clone()))?.expect("recorded_at");
    let input = RetentionInput { repository: &recording.repository, now, tags: tags.into(), untagged };

    // An expected error may come from `create` (bad params) or `evaluate` (missing data).
    // As the host does: only the columns the policy declares (reading another panics).
    let outcome = P::create(&params).and_then(|policy| policy.evaluate(&input.clone().restricted_to(policy.reads())));
    let (want_tags, want_untagged, decisions) = match (expected, outcome) {
        (Expected::Error { error_contains }, Err(err)) => {
            return match error_contains.iter().find(|needle| !err.contains(needle.as_str())) {
                Some(missing) => Err(format!("error {err:?} does not contain {missing:?}")),
                None => Ok(()),
            };
        }
        (Expected::Error { .. }, Ok(_)) => return Err("expected an error, got decisions".into()),
        (Expected::Decisions { .. }, Err(err)) => return Err(format!("failed: {err}")),
        (Expected::Decisions { tags, untagged }, Ok(decisions)) => (tags, untagged, decisions),
    };
    if decisions.tags.len() != input.tags.len() || decisions.untagged.len() != input.untagged.len() {
        return Err("not one verdict per tag and untagged manifest".into());
    }
    let got_tags: Vec<ExpectedTag> = input
        .tags
        .iter()
        .zip(&decisions.tags)
        .map(|(t, v)| ExpectedTag { name: t.name.to_owned(), action: action(v).into(), reason: v.reason.to_string() })
        .collect();
    let got_untagged: Vec<ExpectedUntagged> = recording
        .untagged
        .iter()
        .zip(&decisions.untagged)
        .map(|(m, v)| ExpectedUntagged { digest: m.digest.clone(), action: action(v).into(), reason: v.reason.to_string() })
        .collect();
    let mut differences = diff("tag", &want_tags, &got_tags);
    differences.extend(diff("untagged", &want_untagged, &got_untagged));
    if differences.is_empty() { Ok(()) } else { Err(differences.join("\n")) }
}

/// One line per position where `want` and `got` differ.
fn diff<T: std::fmt::Debug + PartialEq>(what: &str, want: &[T], got: &[T]) -> Vec<String> {
    let mut lines = Vec::new();
    if want.len() != got.len() {
        lines.push(format!("  {} {what} entries expected, {} got", want.len(), got.len()));
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w != g {
            lines.push(format!("  {what} #{i}: expected {w:?}\n  {what} #{i}: got      {g:?}"));
        }
    }
    lines
}

/// The calling crate's directory, as Cargo reports it when it runs the test. (A build
/// cache shared between clones can hand one clone a binary compiled in another.)
pub fn manifest_dir(compiled: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| compiled.into(), Into::into)
}
