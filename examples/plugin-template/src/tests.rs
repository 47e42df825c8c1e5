//! Native tests: fast, and held to the host's rules by `tagwarden_plugin_sdk::testing`.

use tagwarden_plugin_sdk::testing::{self, NOW, days, deleted, evaluate, input};

use super::*;

/// A tag pushed `age` days before `NOW`.
fn pushed(name: &str, age: u64) -> tagwarden_plugin_sdk::Tag<'_> {
    testing::tag(name).with_pushed_at(NOW.saturating_sub(days(age)))
}

#[test]
fn deletes_old_tags_beyond_the_newest_n() {
    let input = input([pushed("a", 90), pushed("b", 60), pushed("c", 40), pushed("d", 1)]);
    let decisions = evaluate::<KeepRecent>(r#"{"keep": 2, "older_than": "30d"}"#, &input).unwrap();
    assert_eq!(deleted(&input, &decisions), ["a", "b"]);
    assert_eq!(decisions.tags[2].reason, "keep: among the 2 most recently pushed");
}

#[test]
fn protected_recent_and_unknown_tags_stay() {
    let input = input([pushed("old", 90), pushed("release", 400), pushed("new", 3), testing::tag("unknown")]);
    let decisions = evaluate::<KeepRecent>(r#"{"keep": 0, "older_than": "7d", "protect": ["release"]}"#, &input).unwrap();
    assert_eq!(deleted(&input, &decisions), ["old"]);
}

#[test]
fn bad_params_say_which_and_what_was_expected() {
    let err = |params| KeepRecent::create(params).unwrap_err();
    assert_eq!(err(r#"{"keep": -1}"#), "keep: expected an integer from 0 to 100000, got -1");
    assert_eq!(err(r#"{"protect": "v1"}"#), r#"protect: expected a list of strings, got "v1""#);
    assert!(err(r#"{"older_than": "soon"}"#).starts_with("older_than: expected a duration such as"));
    assert!(err(r#"{"keepp": 1}"#).starts_with(r#"unknown param "keepp""#));
}

#[test]
fn a_thousand_tags_stay_within_the_hosts_rules() {
    let names: Vec<String> = (0..1000).map(|i| format!("build-{i:04}")).collect();
    let input = input(names.iter().enumerate().map(|(i, n)| pushed(n, i as u64)));
    // `evaluate` checks the answer as the host would: one verdict per tag, ≤ 256 reasons.
    let decisions = evaluate::<KeepRecent>("{}", &input).unwrap();
    assert_eq!(deleted(&input, &decisions).len(), 1000 - 31);
}
