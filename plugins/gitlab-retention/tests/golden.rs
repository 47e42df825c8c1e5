//! Runs every golden case in `tests/golden/` natively through `GitlabRetention` and
//! compares the decisions with `expected.json`. The host runs the same files through the
//! Wasm runtime; this proves the files themselves right.

use std::fs;
use std::path::{Path, PathBuf};

use gitlab_retention::GitlabRetention;
use serde::Deserialize;
use tagwarden_plugin_sdk::{Action, RetentionInput, RetentionPolicy, Tag, Timestamp, UntaggedManifest, Verdict};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
#[serde(deny_unknown_fields)] // strict, like the host
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
#[serde(deny_unknown_fields)] // strict, like the host
struct RecordedUntagged {
    digest: String,
    created_at: Option<String>,
    pushed_at: Option<String>,
}

/// `expected.json`: the decisions, or the substrings of the `create` error.
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

fn golden_dir() -> PathBuf {
    manifest_dir().join("../../tests/golden")
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

/// Runs one case; `Err` describes the first mismatch.
fn run_case(dir: &Path) -> Result<(), String> {
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
        tags.push(Tag {
            name: &t.name,
            digest: &t.digest,
            created_at: timestamp(&t.created_at)?,
            pushed_at: timestamp(&t.pushed_at)?,
            last_pulled_at: timestamp(&t.last_pulled_at)?,
            size_bytes: t.size_bytes,
            media_type: t.media_type.as_deref(),
        });
    }
    let mut untagged = Vec::new();
    for m in &recording.untagged {
        check_digest(&m.digest)?;
        untagged.push(UntaggedManifest { digest: &m.digest, created_at: timestamp(&m.created_at)?, pushed_at: timestamp(&m.pushed_at)? });
    }
    let now = timestamp(&Some(recording.recorded_at.clone()))?.expect("recorded_at");
    let input = RetentionInput { repository: &recording.repository, now, tags: tags.into(), untagged };

    let (policy, want_tags, want_untagged) = match (expected, GitlabRetention::create(&params)) {
        (Expected::Error { error_contains }, Err(err)) => {
            return match error_contains.iter().find(|needle| !err.contains(needle.as_str())) {
                Some(missing) => Err(format!("error {err:?} does not contain {missing:?}")),
                None => Ok(()),
            };
        }
        (Expected::Error { .. }, Ok(_)) => {
            return Err("expected create to fail, it succeeded".into());
        }
        (Expected::Decisions { .. }, Err(err)) => return Err(format!("create failed: {err}")),
        (Expected::Decisions { tags, untagged }, Ok(policy)) => (policy, tags, untagged),
    };
    let decisions = policy.evaluate(&input).map_err(|e| format!("evaluate failed: {e}"))?;
    if decisions.tags.len() != input.tags.len() || decisions.untagged.len() != input.untagged.len() {
        return Err("not one verdict per tag and untagged manifest".into());
    }
    let got_tags: Vec<ExpectedTag> = input
        .tags
        .iter()
        .zip(&decisions.tags)
        .map(|(t, v)| ExpectedTag { name: t.name.to_owned(), action: action(v).into(), reason: v.reason.to_string() })
        .collect();
    let got_untagged: Vec<ExpectedUntagged> = input
        .untagged
        .iter()
        .zip(&decisions.untagged)
        .map(|(m, v)| ExpectedUntagged { digest: m.digest.to_owned(), action: action(v).into(), reason: v.reason.to_string() })
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

#[test]
fn every_golden_case_matches_natively() {
    let mut cases: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.expect("readable entry").path())
        // A case whose `plugin` file names another plugin is that plugin's (ecr-lifecycle, ...).
        .filter(|p| p.is_dir() && fs::read_to_string(p.join("plugin")).map_or(true, |name| name.trim() == "gitlab-retention"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 22, "expected at least 22 golden cases, found {}", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|dir| run_case(dir).err().map(|e| format!("{}:\n{e}", dir.file_name().unwrap_or_default().to_string_lossy())))
        .collect();
    assert!(failures.is_empty(), "{} of {} golden cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// This crate's directory, as Cargo reports it when it runs us. The compile-time
/// value is only a fallback: a build cache shared between clones (as `.ci/run` uses)
/// can hand one clone a binary compiled in another whose path no longer exists.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
