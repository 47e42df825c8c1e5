use tagwarden_plugin_sdk::testing::{self, deleted, evaluate, input, tags};
use tagwarden_plugin_sdk::{Action, UntaggedManifest};

use super::*;

fn decide(params: &str, names: &[&str]) -> Vec<String> {
    let input = input(tags(names));
    let decisions = evaluate::<SemverLines>(params, &input).unwrap();
    deleted(&input, &decisions).into_iter().map(str::to_owned).collect()
}

#[test]
fn keeps_the_newest_n_releases_of_each_minor_line() {
    let names = ["1.0.0", "1.0.1", "1.0.2", "1.1.0", "1.1.1", "2.0.0", "v2.0.1", "2.0.10", "2.0.9"];
    assert_eq!(decide(r#"{"keep_per_minor": 2}"#, &names), ["1.0.0", "2.0.0", "v2.0.1"]);
    assert_eq!(decide(r#"{"keep_per_minor": 1}"#, &names), ["1.0.0", "1.0.1", "1.1.0", "2.0.0", "2.0.9", "v2.0.1"]);
}

#[test]
fn keeps_prereleases_newer_than_the_newest_release_only() {
    let names = ["1.0.0", "1.1.0-rc.1", "1.0.1-rc.1", "1.0.0-rc.2", "2.0.0-alpha"];
    assert_eq!(decide(r#"{"keep_per_minor": 1}"#, &names), ["1.0.0-rc.2"]);
    // Without a release, every pre-release is newer.
    assert!(decide("{}", &["1.0.0-rc.1", "0.1.0-alpha"]).is_empty());
}

#[test]
fn deployed_tags_are_kept_whatever_else_holds() {
    let names = ["1.0.0", "1.0.1", "1.0.2", "0.9.0-rc.1", "nightly"];
    let params = r#"{"keep_per_minor": 1, "deployed": ["1.0.0", "0.9.0-rc.1", "nightly", "not-here"], "name_pattern": ".*"}"#;
    assert_eq!(decide(params, &names), ["1.0.1"]);
}

#[test]
fn only_selected_tags_can_go_and_selected_non_semver_tags_do() {
    // Default: semver names only; `latest` and `main` are not selected.
    assert_eq!(decide(r#"{"keep_per_minor": 1}"#, &["latest", "main", "1.0.0", "1.0.1"]), ["1.0.0"]);
    assert_eq!(decide(r#"{"name_pattern": "release-.*|[0-9.]+"}"#, &["release-x", "1.0", "1.0.0", "main"]), ["1.0", "release-x"]);
}

#[test]
fn reasons_say_which_rule_and_stay_few() {
    let names: Vec<String> = (0..300).map(|i| format!("1.{}.{}", i % 7, i)).collect();
    let input = input(names.iter().map(|n| testing::tag(n)));
    let decisions = evaluate::<SemverLines>(r#"{"keep_per_minor": 2}"#, &input).unwrap();
    assert_eq!(decisions.tags.iter().filter(|v| v.action == Action::Keep).count(), 14);
    assert_eq!(decisions.tags[0].reason, "delete: older than the 2 newest releases of its minor line");
    let untagged = input.clone().with_untagged(vec![UntaggedManifest::new("d")]);
    let d = evaluate::<SemverLines>("{}", &untagged).unwrap();
    assert_eq!((d.untagged[0].action, d.untagged[0].reason.as_ref()), (Action::Keep, "untagged: not managed by semver-lines"));
}

#[test]
fn bad_params_name_the_param() {
    let err = |params| SemverLines::create(params).unwrap_err();
    assert_eq!(err(r#"{"keep_per_minor": 0}"#), "keep_per_minor: expected an integer from 1 to 10000, got 0");
    assert_eq!(err(r#"{"deployed": "1.0.0"}"#), r#"deployed: expected a list of strings, got "1.0.0""#);
    assert_eq!(err(r#"{"deployed": ["1.0.0", 2]}"#), "deployed[1]: expected a string, got 2");
    assert!(err(r#"{"name_pattern": "("}"#).starts_with(r#"name_pattern: invalid regex "(": "#));
    assert!(err(r#"{"keep": 1}"#).starts_with(r#"unknown param "keep""#));
}
