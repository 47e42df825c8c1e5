//! Golden cases (`tests/golden/<case>/`) evaluated through the Wasm runtime.
//!
//! A case belongs to the plugin its `plugin` file names, `gitlab-retention` when it has
//! none. The same files are checked natively by each plugin crate's own tests, so a
//! difference between the two paths shows up as a failure in exactly one of them.

use serde_json::Value;
use tagwarden::recording::Recording;
use tagwarden::runtime::{PluginLimits, RetentionPlugin};

use crate::support;

fn retention() -> RetentionPlugin {
    plugin("gitlab-retention")
}

fn plugin(name: &str) -> RetentionPlugin {
    support::plugin(name, PluginLimits::default()).into_retention().unwrap()
}

/// The plugin a case belongs to: its `plugin` file, else gitlab-retention (the first cases).
fn case_plugin(case: &std::path::Path) -> String {
    std::fs::read_to_string(case.join("plugin")).map_or_else(|_| "gitlab-retention".to_owned(), |s| s.trim().to_owned())
}

/// Runs one case; returns a description of the mismatch, if any.
fn check(case: &std::path::Path, plugin: &RetentionPlugin) -> Result<(), String> {
    let recording = Recording::read(&case.join("recording.json")).map_err(|e| format!("{e:#}"))?;
    let params: Value = serde_json::from_str(&std::fs::read_to_string(case.join("params.json")).unwrap()).unwrap();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap()).unwrap();
    let result = plugin.evaluate(&params.to_string(), &recording.list, recording.recorded_at);
    if let Some(needles) = expected.get("error_contains") {
        let err = match result {
            Ok(_) => return Err("expected an error, got decisions".into()),
            Err(e) => e.to_string(),
        };
        for needle in needles.as_array().unwrap() {
            let needle = needle.as_str().unwrap();
            if !err.contains(needle) {
                return Err(format!("error `{err}` does not contain `{needle}`"));
            }
        }
        return Ok(());
    }
    let decisions = result.map_err(|e| e.to_string())?;
    let got_tags: Vec<Value> = recording
        .list
        .tags()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let r = decisions.tag(i);
            serde_json::json!({"name": t.name, "action": r.action, "reason": r.reason})
        })
        .collect();
    let got_untagged: Vec<Value> = recording
        .list
        .untagged()
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let r = decisions.untagged(i);
            serde_json::json!({"digest": u.digest, "action": r.action, "reason": r.reason})
        })
        .collect();
    let want_tags = expected["tags"].as_array().cloned().unwrap_or_default();
    let want_untagged = expected.get("untagged").and_then(Value::as_array).cloned().unwrap_or_default();
    if got_tags != want_tags {
        return Err(format!("tags differ\n  got:  {}\n  want: {}", Value::from(got_tags), Value::from(want_tags)));
    }
    if got_untagged != want_untagged {
        return Err(format!("untagged differ\n  got:  {}\n  want: {}", Value::from(got_untagged), Value::from(want_untagged)));
    }
    Ok(())
}

#[test]
fn every_golden_case_matches_through_wasm() {
    let dir = support::workspace().join("tests/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 20, "expected at least 20 golden cases in {}, found {}", dir.display(), cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let name = case_plugin(c);
            check(c, &plugin(&name)).err().map(|e| format!("{} ({name}): {e}", c.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} golden cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    // Every bundled retention plugin with cases has some here.
    for name in ["gitlab-retention", "ecr-lifecycle", "harbor-retention", "gar-cleanup", "acr-purge", "semver-lines"] {
        assert!(cases.iter().any(|c| case_plugin(c) == name), "no golden case for {name}");
    }
}

#[test]
fn gitlab_documented_example_deletes_exactly_dev_v42_v43_v42() {
    let recording = Recording::read(&support::workspace().join("examples/recordings/gitlab-docs-example.json")).unwrap();
    let params = std::fs::read_to_string(support::workspace().join("examples/gitlab-docs-example.params.json")).unwrap();
    let decisions = retention().evaluate(&params, &recording.list, recording.recorded_at).unwrap();
    let deleted: Vec<&str> = recording
        .list
        .tags()
        .iter()
        .enumerate()
        .filter(|&(i, _)| decisions.tag(i).action == tagwarden::model::Action::Delete)
        .map(|(_, t)| t.name.as_str())
        .collect();
    assert_eq!(deleted, ["dev-v42", "v42", "v43"]);
}
