//! The plugin author's tools, run as the binary: `plugins validate`, `plugins test`,
//! `plugins new`, including what they do with bad input (one clear error, nothing changed).

use std::path::Path;

use crate::cli::{tagwarden, tempdir};
use crate::support;

fn wasm(name: &str) -> String {
    support::plugin_path(name).display().to_string()
}

/// Copies golden case `name` of `tests/golden/` into `dir`.
fn copy_case(name: &str, dir: &Path) {
    let from = support::workspace().join("tests/golden").join(name);
    std::fs::create_dir_all(dir.join(name)).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(name).join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn validate_reports_each_check_and_accepts_good_params() {
    let dir = tempdir();
    let out = tagwarden(dir.path(), &["plugins", "validate", &wasm("semver-lines"), "--params", r#"{"keep_per_minor": 2}"#]);
    out.assert_success();
    assert!(out.stdout.contains("load     ok      retention plugin semver-lines 0.1.0, contract tagwarden:policy@0.2.1"), "{}", out.stdout);
    assert!(out.stdout.contains(r#"params   ok      accepted {"keep_per_minor":2}; reads tag names only"#), "{}", out.stdout);
    assert!(out.stdout.contains("valid: "), "{}", out.stdout);

    // What a policy declares it reads, and what a 0.1 plugin (which cannot declare) is sent.
    let out = tagwarden(dir.path(), &["plugins", "validate", &wasm("gitlab-retention")]);
    assert!(out.stdout.contains("accepted {}; reads tag names, created-at and pushed-at"), "{}", out.stdout);
    let old = support::workspace().join("tests/fixtures/contract-0.1/gitlab-retention.wasm");
    let out = tagwarden(dir.path(), &["plugins", "validate", old.to_str().unwrap()]);
    out.assert_success();
    assert!(out.stdout.contains("contract tagwarden:policy@0.1.0 (accepted by this host)"), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "it cannot declare its columns (contract 0.1): sent tag names, digests, created-at, pushed-at, last-pulled-at, size-bytes and media-types"
        ),
        "{}",
        out.stdout
    );

    let out = tagwarden(dir.path(), &["plugins", "validate", &wasm("exponential-backoff"), "--output", "json"]);
    out.assert_success();
    let report = out.json();
    assert_eq!((report["valid"].as_bool(), report["plugin"]["kind"].as_str()), (Some(true), Some("backoff")), "{report}");
    assert_eq!(report["checks"].as_array().unwrap().len(), 2);
}

#[test]
fn validate_refuses_params_the_plugin_rejects_naming_the_param() {
    let dir = tempdir();
    let out = tagwarden(dir.path(), &["plugins", "validate", &wasm("semver-lines"), "--params", r#"{"keep_per_minor": 0}"#]);
    out.assert_error(&["is not valid: the params check failed", "keep_per_minor: expected an integer from 1 to 10000, got 0"]);
    assert!(out.stdout.contains("params   failed"), "{}", out.stdout);
    // Backoff and stale plugins are asked too.
    let out = tagwarden(dir.path(), &["plugins", "validate", &wasm("exponential-backoff"), "--params", r#"{"factor": "x"}"#]);
    out.assert_error(&["the params check failed", "factor"]);
    let out = tagwarden(dir.path(), &["plugins", "validate", &wasm("stale-timeout"), "--params", r#"{"nope": 1}"#]);
    out.assert_error(&["the params check failed", r#"unknown param "nope""#]);
}

#[test]
fn validate_refuses_files_that_do_not_load() {
    let dir = tempdir();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho not wasm\n").unwrap();
    let out = tagwarden(dir.path(), &["plugins", "validate", junk.to_str().unwrap()]);
    out.assert_error(&["junk.wasm is not valid: the load check failed", "not a WebAssembly file"]);
    assert!(out.stdout.contains("params   skipped"), "{}", out.stdout);

    let out = tagwarden(dir.path(), &["plugins", "validate", &wasm("wrong-world")]);
    out.assert_error(&["the load check failed"]);

    let out = tagwarden(dir.path(), &["plugins", "validate", "missing.wasm"]);
    out.assert_error(&["missing.wasm"]);
    let out = tagwarden(dir.path(), &["plugins", "validate", &wasm("semver-lines"), "--params", "[1]"]);
    out.assert_error(&["--params: expected a JSON object"]);
}

#[test]
fn test_runs_the_golden_cases_of_the_plugin_and_skips_the_others() {
    let dir = tempdir();
    let golden = support::workspace().join("tests/golden");
    let out = tagwarden(dir.path(), &["plugins", "test", golden.to_str().unwrap(), "--plugin", &wasm("semver-lines")]);
    out.assert_success();
    assert!(out.stdout.contains("passed  semver-lines-deployed"), "{}", out.stdout);
    let summary = out.stdout.lines().last().unwrap();
    assert!(summary.starts_with("plugin semver-lines 0.1.0: 7 passed, 0 failed, "), "{summary}");

    // One case directory on its own works too.
    let case = golden.join("acr-purge-docs-keep-latest-2");
    let out = tagwarden(dir.path(), &["plugins", "test", case.to_str().unwrap(), "--plugin", &wasm("acr-purge"), "--output", "json"]);
    out.assert_success();
    assert_eq!(out.json()["passed"], 1);
}

#[test]
fn test_prints_a_readable_diff_per_failing_case_and_fails() {
    let dir = tempdir();
    let cases = dir.path().join("cases");
    copy_case("semver-lines-deployed", &cases);
    copy_case("semver-lines-no-release", &cases);
    copy_case("semver-lines-invalid-deployed", &cases);
    // Break two: another verdict expected, and an error that cannot happen.
    let expected = cases.join("semver-lines-deployed/expected.json");
    let text = std::fs::read_to_string(&expected).unwrap().replacen(r#""action": "delete""#, r#""action": "keep""#, 1);
    std::fs::write(&expected, text).unwrap();
    std::fs::write(cases.join("semver-lines-no-release/expected.json"), r#"{"error_contains": ["boom"]}"#).unwrap();

    let out = tagwarden(dir.path(), &["plugins", "test", cases.to_str().unwrap(), "--plugin", &wasm("semver-lines")]);
    out.assert_error(&["2 of 3 golden cases failed for plugin semver-lines"]);
    assert!(
        out.stdout.contains(r#"tag 1.0.1: expected keep ("delete: older than the 1 newest releases of its minor line"), got delete ("delete: older than the 1 newest releases of its minor line")"#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("failed  semver-lines-no-release\n        expected an error, but the plugin decided (0 of 3 tags deleted)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("passed  semver-lines-invalid-deployed"), "{}", out.stdout);
}

#[test]
fn test_refuses_bad_case_directories_clearly() {
    let dir = tempdir();
    let out = tagwarden(dir.path(), &["plugins", "test", dir.path().to_str().unwrap(), "--plugin", &wasm("semver-lines")]);
    out.assert_error(&["no golden cases in", "recording.json, params.json and expected.json"]);

    let cases = dir.path().join("cases");
    copy_case("semver-lines-deployed", &cases);
    std::fs::write(cases.join("semver-lines-deployed/expected.json"), r#"{"tags": [{"name": "x", "verdict": "keep"}]}"#).unwrap();
    let out = tagwarden(dir.path(), &["plugins", "test", cases.to_str().unwrap(), "--plugin", &wasm("semver-lines")]);
    out.assert_error(&["1 of 1 golden cases failed"]);
    assert!(out.stdout.contains("expected.json: expected {\"tags\""), "{}", out.stdout);

    // Only cases for this plugin run; none here.
    let out = tagwarden(
        dir.path(),
        &[
            "plugins",
            "test",
            support::workspace().join("tests/golden/acr-purge-invalid-ago").to_str().unwrap(),
            "--plugin",
            &wasm("semver-lines"),
        ],
    );
    out.assert_error(&["no golden case under", "is for plugin semver-lines"]);
    let out = tagwarden(dir.path(), &["plugins", "test", cases.to_str().unwrap(), "--plugin", &wasm("exponential-backoff")]);
    out.assert_error(&["runs retention plugins", "is a backoff plugin"]);
}

#[test]
fn new_writes_a_complete_plugin_named_as_asked() {
    let dir = tempdir();
    let sdk = support::workspace().join("plugins/sdk");
    let out = tagwarden(dir.path(), &["plugins", "new", "keep-releases", "--sdk-path", sdk.to_str().unwrap()]);
    out.assert_success();
    let root = dir.path().join("keep-releases");
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(cargo.contains(r#"name = "keep-releases""#), "{cargo}");
    assert!(cargo.contains(&format!(r#"path = "{}", features = ["retention"]"#, sdk.display())), "{cargo}");
    assert!(cargo.contains("lto = true"), "the bundled plugins' release profile: {cargo}");
    for file in ["Cargo.lock", "src/lib.rs", "src/tests.rs", "README.md", "recordings/sample.json", "golden/defaults/expected.json"] {
        assert!(root.join(file).is_file(), "{file} missing");
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("release/keep_releases.wasm") && !readme.contains("plugin-template"), "{readme}");
    // Its golden cases pass through the bundled template's build (same policy, other name).
    let recording = root.join("recordings/sample.json");
    assert!(tagwarden::recording::Recording::read(&recording).is_ok());

    // Other kinds, from the published SDK: no golden cases, no lock file pinning a path.
    let out = tagwarden(dir.path(), &["plugins", "new", "slow-retry", "--kind", "backoff"]);
    out.assert_success();
    let cargo = std::fs::read_to_string(dir.path().join("slow-retry/Cargo.toml")).unwrap();
    assert!(cargo.contains(r#"tagwarden-plugin-sdk = { version = "0.2", features = ["backoff"] }"#), "{cargo}");
    assert!(std::fs::read_to_string(dir.path().join("slow-retry/src/lib.rs")).unwrap().contains("export_backoff!"));
    assert!(!dir.path().join("slow-retry/golden").exists() && !dir.path().join("slow-retry/Cargo.lock").exists());
}

#[test]
fn new_refuses_bad_names_and_existing_directories_writing_nothing() {
    let dir = tempdir();
    for name in ["Keep", "1st", "keep_releases", "keep-", "../escape"] {
        let out = tagwarden(dir.path(), &["plugins", "new", name]);
        out.assert_error(&["expected lowercase ASCII letters, digits and `-`"]);
    }
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").unwrap();
    let out = tagwarden(dir.path(), &["plugins", "new", "taken"]);
    out.assert_error(&["taken already exists and is not an empty directory", "nothing was written"]);
    assert_eq!(std::fs::read_dir(dir.path().join("taken")).unwrap().count(), 1);
    let out = tagwarden(dir.path(), &["plugins", "new", "fine", "--sdk-path", "/nonexistent/sdk"]);
    out.assert_error(&["--sdk-path /nonexistent/sdk: no Cargo.toml there"]);
    assert!(!dir.path().join("fine").exists());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "only `taken`: {names:?}");
}

/// Writes a recording of `repository` with `n` tags `1.{i/4}.{i%4}`, one a day, the newest
/// the day before `recorded_at` (2026-11-20T12:00:00Z).
pub(crate) fn write_recording(dir: &Path, file: &str, repository: &str, n: usize) {
    let tags: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let created = tagwarden::model::Timestamp::parse_rfc3339("2026-11-20T12:00:00Z")
                .unwrap()
                .saturating_sub(std::time::Duration::from_secs(86_400 * (n - i) as u64));
            serde_json::json!({
                "name": format!("1.{}.{}", i / 4, i % 4),
                "digest": tagwarden::model::Digest::sha256_of(format!("{repository} {i}").as_bytes()).to_string(),
                "created_at": created.to_rfc3339(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "format": "tagwarden.recording.v1", "repository": repository, "recorded_at": "2026-11-20T12:00:00Z", "tags": tags,
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

#[test]
fn diff_compares_two_versions_over_recordings_with_an_exit_status_for_ci() {
    let dir = tempdir();
    let recs = dir.path().join("recs");
    write_recording(&recs, "a.json", "builds/a", 10);
    write_recording(&recs, "b.json", "builds/b", 10);
    let gitlab = wasm("gitlab-retention");
    let keep = |n: u32| format!(r#"{{"name_regex_delete": ".*", "keep_n": {n}}}"#);
    let (old, new) = (keep(5), keep(3));
    let args = |extra: &[&str]| {
        let mut a = vec!["plugins", "diff", &gitlab, &gitlab, "--params", &old, "--new-params", &new, "--recordings", "recs"];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        tagwarden(dir.path(), &a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // keep_n 5 → 3: per repository, the 4th and 5th newest go; nothing comes back.
    let out = run(&[]);
    out.assert_success();
    assert!(out.stdout.contains("builds/a: new deletes, old keeps (2): 1.1.1, 1.1.2"), "{}", out.stdout);
    assert!(!out.stdout.contains("old deletes, new keeps"), "{}", out.stdout);
    assert!(
        out.stdout.contains("total: 2 repositories, 20 tags compared: the new version deletes 4 tags the old one keeps (20.0%)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&format!("sha256:{}", tagwarden::model::sha256_hex(&std::fs::read(&gitlab).unwrap()))));

    let json = run(&["--output", "json"]);
    json.assert_success();
    let report = json.json();
    assert_eq!((report["diff"]["tags"].as_u64(), report["diff"]["extra_deletions"].as_u64()), (Some(20), Some(4)), "{report:#}");
    assert_eq!((report["diff"]["old_deletes"].as_u64(), report["diff"]["new_deletes"].as_u64()), (Some(10), Some(14)));
    assert_eq!(report["diff"]["repositories"][1]["extra_names"], serde_json::json!(["1.1.1", "1.1.2"]), "{report:#}");
    assert_eq!(report["new"]["params"]["keep_n"], 3);

    // The brake for CI: status 2 over it, 0 within it.
    let over = run(&["--max-extra-deletions", "0.1"]);
    assert_eq!(over.code, Some(2), "{over:#?}");
    assert!(
        over.stderr.contains("deletes 4 tags the old one keeps, 20.0% of the 20 tags compared: more than --max-extra-deletions 10.0%"),
        "{}",
        over.stderr
    );
    assert!(over.stdout.contains("brake: 10.0% extra deletions allowed; exceeded"), "{}", over.stdout);
    run(&["--max-extra-deletions", "0.2"]).assert_success();

    // The reverse direction, and two different plugins: semver-lines deletes 2 of the 10 where
    // gitlab-retention with no params deletes none.
    let out = tagwarden(dir.path(), &["plugins", "diff", &wasm("semver-lines"), "gitlab-retention", "--recordings", "recs"]);
    out.assert_success();
    assert!(out.stdout.contains("builds/b: old deletes, new keeps (2): 1.0.0, 1.1.0"), "{}", out.stdout);
    assert!(out.stdout.contains("deletes 0 tags the old one keeps (0.0%) and keeps 4 the old one deletes"), "{}", out.stdout);
}

#[test]
fn diff_refuses_bad_input_saying_what_where_and_what_to_do() {
    let dir = tempdir();
    let recs = dir.path().join("recs");
    write_recording(&recs, "a.json", "builds/a", 4);
    let gitlab = wasm("gitlab-retention");
    let diff = |extra: &[&str]| {
        let mut a = vec!["plugins", "diff"];
        a.extend_from_slice(extra);
        tagwarden(dir.path(), &a)
    };
    diff(&[&gitlab, &gitlab]).assert_error(&["add `--recordings DIR`"]);
    diff(&[&gitlab, &gitlab, "--recordings", "nowhere"]).assert_error(&["cannot read --recordings nowhere"]);
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    diff(&[&gitlab, &gitlab, "--recordings", "empty"]).assert_error(&["no recordings (`*.json`) in --recordings empty"]);
    diff(&[&gitlab, "missing.wasm", "--recordings", "recs"]).assert_error(&["the new plugin", "plugin file missing.wasm does not exist"]);
    diff(&[&gitlab, &wasm("exponential-backoff"), "--recordings", "recs"])
        .assert_error(&["compares retention plugins", "is a backoff plugin"]);
    diff(&[&gitlab, &wasm("semver-lines"), "--recordings", "recs", "--params", r#"{"keep_n": 2}"#]).assert_error(&[
        "the new plugin",
        "rejects --params",
        "plugins validate",
    ]);
    diff(&[&gitlab, &gitlab, "--recordings", "recs", "--new-params", "[1]"]).assert_error(&["--new-params", "expected a JSON object"]);
    diff(&[&gitlab, &gitlab, "--recordings", "recs", "--max-extra-deletions", "5"]).assert_error(&["from 0 to 1"]);
    write_recording(&recs, "b.json", "builds/a", 4);
    diff(&[&gitlab, &gitlab, "--recordings", "recs"]).assert_error(&["a.json and", "b.json are both recordings of repository builds/a"]);
    std::fs::write(recs.join("b.json"), "{\"format\": \"tagwarden.recording.v1\", \"repository\": \"x\"").unwrap();
    diff(&[&gitlab, &gitlab, "--recordings", "recs"]).assert_error(&["fix or remove", "b.json"]);
    // The recorded form needs a daemon's state.
    std::fs::write(
        dir.path().join("tagwarden.toml"),
        "[registry]\nrecordings = \"recs\"\n\n[state]\ndir = \"state\"\n\n\
         [[policy]]\nname = \"p\"\nrepositories = [\"builds/*\"]\nplugin = \"gitlab-retention\"\nparams = {}\n",
    )
    .unwrap();
    diff(&["keep"]).assert_error(&["no state at state/tagwarden.db yet", "tagwarden serve"]);
    drop(tagwarden::store::Store::open(&dir.path().join("state/tagwarden.db")).unwrap());
    diff(&["keep"]).assert_error(&["no canary recorded for plugin `keep`", "plugins diff OLD.wasm NEW.wasm"]);
    diff(&["keep", "--recordings", "recs"]).assert_error(&["shows what the daemon's canary recorded"]);
}
