//! Native tests: one per documented rule of Artifact Registry's cleanup policies.

use super::*;
use tagwarden_plugin_sdk::{Action, Duration, Tag, UntaggedManifest};

const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);
const K: Action = Action::Keep;
const D: Action = Action::Delete;

fn digest(n: usize) -> &'static str {
    Box::leak(format!("sha256:{n:064x}").into_boxed_str())
}

/// Versions: (tags, uploaded days ago); none: unknown time.
fn run_in(repo: &str, policies: &str, versions: &[(&'static [&'static str], Option<f64>)]) -> Result<Vec<(Action, String)>, String> {
    let at = |d: f64| Timestamp::from_unix_micros(NOW.unix_micros() - (d * 86_400e6) as i64);
    let mut tags = Vec::new();
    let mut untagged = Vec::new();
    for (n, (names, days)) in versions.iter().enumerate() {
        for &name in *names {
            tags.push(Tag::new(name, digest(n + 1)).with_pushed_at(days.map(at)));
        }
        if names.is_empty() {
            untagged.push(UntaggedManifest::new(digest(n + 1)).with_pushed_at(days.map(at)));
        }
    }
    tags.sort_by_key(|t| t.name);
    let input = RetentionInput { repository: repo, now: NOW, tags: tags.into(), untagged };
    let decisions = GarCleanup::create(&format!(r#"{{"cleanupPolicies": {policies}}}"#))?.evaluate(&input)?;
    Ok((0..versions.len())
        .map(|n| {
            let d = digest(n + 1);
            let v = input
                .tags
                .iter()
                .zip(&decisions.tags)
                .find(|(t, _)| t.digest() == d)
                .map(|(_, v)| v)
                .or_else(|| input.untagged.iter().zip(&decisions.untagged).find(|(u, _)| u.digest() == d).map(|(_, v)| v))
                .unwrap();
            (v.action, v.reason.to_string())
        })
        .collect())
}

fn run(policies: &str, versions: &[(&'static [&'static str], Option<f64>)]) -> Vec<Action> {
    run_in("team/app", policies, versions).unwrap_or_else(|e| panic!("{policies}: {e}")).into_iter().map(|(a, _)| a).collect()
}

#[test]
fn delete_policies_delete_what_matches_and_nothing_else() {
    let p = r#"[{"name": "old", "action": {"type": "Delete"}, "condition": {"olderThan": "30d"}}]"#;
    let got = run_in("team/app", p, &[(&["a"], Some(31.0)), (&["b"], Some(29.0)), (&[], Some(40.0))]).unwrap();
    assert_eq!(got[0], (D, "delete policy old: matches, no keep policy does".into()));
    assert_eq!(got[1], (K, "no delete policy matches".into()));
    assert_eq!(got[2].0, D);
}

#[test]
fn keep_wins_over_delete_whatever_the_order() {
    for p in [
        r#"[{"name": "all", "action": {"type": "Delete"}, "condition": {}}, {"name": "rel", "action": {"type": "Keep"}, "condition": {"tagPrefixes": ["release"]}}]"#,
        r#"[{"name": "rel", "action": {"type": "Keep"}, "condition": {"tagPrefixes": ["release"]}}, {"name": "all", "action": {"type": "Delete"}, "condition": {}}]"#,
    ] {
        let got = run_in("team/app", p, &[(&["release-1"], Some(1.0)), (&["dev"], Some(1.0))]).unwrap();
        assert_eq!(got, [(K, "keep policy rel: matches".into()), (D, "delete policy all: matches, no keep policy does".into())]);
    }
}

#[test]
fn conditions_are_anded_and_prefixes_ored() {
    let p = r#"[{"name": "d", "action": {"type": "Delete"}, "condition": {"tagState": "tagged", "tagPrefixes": ["dev-", "pr-"], "olderThan": "7d"}}]"#;
    let versions: &[(&[&str], Option<f64>)] =
        &[(&["dev-1"], Some(8.0)), (&["pr-2"], Some(8.0)), (&["dev-3"], Some(6.0)), (&["v1"], Some(8.0)), (&[], Some(8.0))];
    assert_eq!(run(p, versions), [D, D, K, K, K]);
}

#[test]
fn a_version_with_one_matching_tag_matches_and_goes_whole() {
    let p = r#"[{"name": "d", "action": "DELETE", "condition": {"tagPrefixes": ["tmp"]}}]"#;
    assert_eq!(run(p, &[(&["keepme", "tmp-1"], Some(1.0))]), [D]);
}

#[test]
fn tag_state() {
    let p = |state: &str| format!(r#"[{{"name": "d", "action": {{"type": "Delete"}}, "condition": {{"tagState": "{state}"}}}}]"#);
    let versions: &[(&[&str], Option<f64>)] = &[(&["v1"], Some(1.0)), (&[], Some(1.0))];
    assert_eq!(run(&p("TAGGED"), versions), [D, K]);
    assert_eq!(run(&p("untagged"), versions), [K, D]);
    assert_eq!(run(&p("ANY"), versions), [D, D]);
}

#[test]
fn older_and_newer_than_are_strict() {
    let older = r#"[{"name": "d", "action": {"type": "Delete"}, "condition": {"olderThan": "2592000s"}}]"#;
    assert_eq!(run(older, &[(&["exactly"], Some(30.0)), (&["over"], Some(30.001))]), [K, D]);
    let newer = r#"[{"name": "d", "action": {"type": "Delete"}, "condition": {"newerThan": "1d"}}]"#;
    assert_eq!(run(newer, &[(&["exactly"], Some(1.0)), (&["under"], Some(0.999))]), [K, D]);
}

#[test]
fn most_recent_versions_keeps_n_and_counts_every_version() {
    let p = r#"[{"name": "all", "action": {"type": "Delete"}, "condition": {"tagState": "any"}},
                {"name": "recent", "action": {"type": "Keep"}, "mostRecentVersions": {"keepCount": 2}}]"#;
    let got = run_in("team/app", p, &[(&["a"], Some(4.0)), (&[], Some(1.0)), (&["c"], Some(2.0)), (&["d"], Some(3.0))]).unwrap();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [D, K, K, D]);
    assert_eq!(got[1].1, "keep policy recent: among the 2 most recent versions");
    // Equal times: the later listed version is the more recent.
    let one = r#"[{"name": "all", "action": {"type": "Delete"}, "condition": {}}, {"name": "r", "action": {"type": "Keep"}, "mostRecentVersions": {"keepCount": 1}}]"#;
    assert_eq!(run(one, &[(&["a"], Some(1.0)), (&["b"], Some(1.0))]), [D, K]);
}

#[test]
fn package_prefixes_match_the_repository_path() {
    let p = r#"[{"name": "d", "action": {"type": "Delete"}, "condition": {"packageNamePrefixes": ["team/web", "other"]}}]"#;
    assert_eq!(run_in("team/webapp", p, &[(&["a"], Some(1.0))]).unwrap()[0].0, D);
    assert_eq!(run_in("team/app", p, &[(&["a"], Some(1.0))]).unwrap()[0].0, K);
    let recent = r#"[{"name": "d", "action": {"type": "Delete"}, "condition": {}}, {"name": "r", "action": {"type": "Keep"}, "mostRecentVersions": {"keepCount": 5, "packageNamePrefixes": ["web"]}}]"#;
    assert_eq!(run_in("team/app", recent, &[(&["a"], Some(1.0))]).unwrap()[0].0, D);
}

#[test]
fn version_name_prefixes_match_the_digest() {
    let p = format!(r#"[{{"name": "d", "action": {{"type": "Delete"}}, "condition": {{"versionNamePrefixes": ["{}"]}}}}]"#, digest(1));
    assert_eq!(run(&p, &[(&["a"], Some(1.0)), (&["b"], Some(1.0))]), [D, K]);
}

#[test]
fn the_rest_api_map_and_dry_run() {
    let map = r#"{"old": {"id": "old", "action": "DELETE", "condition": {"olderThan": "86400s"}}}"#;
    assert_eq!(run(map, &[(&["a"], Some(2.0))]), [D]);
    let text = r#"{"cleanupPolicies": [{"name": "all", "action": {"type": "Delete"}, "condition": {}}], "cleanupPolicyDryRun": true}"#;
    let input = RetentionInput { repository: "r", now: NOW, tags: Vec::new().into(), untagged: vec![UntaggedManifest::new(digest(1))] };
    let decisions = GarCleanup::create(text).unwrap().evaluate(&input).unwrap();
    assert_eq!(decisions.untagged[0], Verdict::keep("cleanupPolicyDryRun: Artifact Registry deletes nothing"));
}

#[test]
fn an_age_condition_needs_the_upload_time() {
    let p = r#"[{"name": "d", "action": {"type": "Delete"}, "condition": {"tagState": "tagged", "olderThan": "1d"}}]"#;
    let err = run_in("r", p, &[(&["a"], None)]).unwrap_err();
    assert!(
        err.contains("policy d needs the version's upload time, but version sha256:")
            && err.contains("(tag \"a\") has neither pushed_at nor created_at"),
        "{err}"
    );
    // An untagged version this condition cannot match needs no time.
    assert_eq!(run(p, &[(&[], None)]), [K]);
}

#[test]
fn durations() {
    let ok: &[(&str, u64)] =
        &[("2592000s", 2_592_000), ("30d", 2_592_000), ("12h", 43_200), ("90m", 5_400), ("1d12h", 129_600), ("45s", 45)];
    for &(text, secs) in ok {
        assert_eq!(parse_duration(text), Some(Duration::from_secs(secs)), "{text}");
    }
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1_500)));
    for bad in ["", "30", "-1d", "1.s", "P30D", "1w", "1.5d", "d"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn invalid_policies_name_the_policy_and_the_fix() {
    let table: &[(&str, &str)] = &[
        (
            r#"[{"name": "r", "action": {"type": "Delete"}, "mostRecentVersions": {"keepCount": 3}}]"#,
            "cleanupPolicies[0].mostRecentVersions: may only be specified with a Keep action",
        ),
        (
            r#"[{"name": "r", "action": {"type": "Keep"}, "condition": {}, "mostRecentVersions": {"keepCount": 3}}]"#,
            "either a condition or mostRecentVersions, not both",
        ),
        (
            r#"[{"name": "r", "action": {"type": "Remove"}, "condition": {}}]"#,
            "cleanupPolicies[0].action: expected {\"type\": \"Delete\"} or {\"type\": \"Keep\"}",
        ),
        (
            r#"[{"name": "r", "action": {"type": "Delete"}, "condition": {"olderThan": "a month"}}]"#,
            "cleanupPolicies[0].condition.olderThan: expected a duration such as \"30d\"",
        ),
        (
            r#"[{"name": "r", "action": {"type": "Delete"}, "condition": {"tagState": "untagged", "tagPrefixes": ["v"]}}]"#,
            "tagPrefixes with tagState \"untagged\" can match nothing",
        ),
        (
            r#"[{"name": "r", "action": {"type": "Delete"}, "condition": {"tagPrefix": ["v"]}}]"#,
            "cleanupPolicies[0].condition: unknown key \"tagPrefix\"",
        ),
        (
            r#"[{"name": "a", "action": {"type": "Delete"}, "condition": {}}, {"name": "a", "action": {"type": "Keep"}, "condition": {}}]"#,
            "the policy name \"a\" is used twice",
        ),
        (
            r#"[{"name": "r", "action": {"type": "Keep"}, "mostRecentVersions": {"keepCount": -1}}]"#,
            "keepCount: expected the number of versions to keep",
        ),
        (r#""none""#, "cleanupPolicies: expected the list of a gcloud policy file or the map of the REST API"),
    ];
    for (policies, needle) in table {
        let err =
            GarCleanup::create(&format!(r#"{{"cleanupPolicies": {policies}}}"#)).err().unwrap_or_else(|| panic!("accepted {policies}"));
        assert!(err.contains(needle), "{err:?} does not contain {needle:?}");
    }
    let eleven: Vec<String> =
        (0..11).map(|i| format!(r#"{{"name": "p{i}", "action": {{"type": "Delete"}}, "condition": {{}}}}"#)).collect();
    let err = GarCleanup::create(&format!(r#"{{"cleanupPolicies": [{}]}}"#, eleven.join(","))).err().unwrap();
    assert!(err.contains("11 policies, but Artifact Registry applies at most 10"), "{err}");
    assert!(GarCleanup::create(r#"{"policies": []}"#).err().unwrap().contains("unknown key \"policies\""));
}
