//! Native tests: one per rule of acr-cli's purge.

use super::*;
use tagwarden_plugin_sdk::{Action, Duration, Tag, UntaggedManifest};

const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);
const K: Action = Action::Keep;
const D: Action = Action::Delete;
const HOUR: i64 = 3_600;

fn ago(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(NOW.unix_micros() - secs * 1_000_000)
}

fn digest(n: usize) -> &'static str {
    Box::leak(format!("sha256:{n:064x}").into_boxed_str())
}

/// One verdict, as (action, reason).
type Got = (Action, String);

/// Tags (name, updated hours ago) and untagged manifests (updated hours ago), in `repo`.
fn run_in(
    repo: &str,
    params: &str,
    tags: &[(&'static str, Option<i64>)],
    untagged: &[Option<i64>],
) -> Result<(Vec<Got>, Vec<Got>), String> {
    let mut list: Vec<Tag<'static>> = tags
        .iter()
        .enumerate()
        .map(|(n, &(name, hours))| {
            let tag = Tag::new(name, digest(n + 1));
            match hours {
                Some(h) => tag.with_pushed_at(ago(h * HOUR)),
                None => tag,
            }
        })
        .collect();
    list.sort_by_key(|t| t.name);
    let untagged: Vec<UntaggedManifest<'static>> = untagged
        .iter()
        .enumerate()
        .map(|(n, h)| {
            let manifest = UntaggedManifest::new(digest(100 + n));
            match h {
                Some(h) => manifest.with_pushed_at(ago(h * HOUR)),
                None => manifest,
            }
        })
        .collect();
    let input = RetentionInput { repository: repo, now: NOW, tags: list.into(), untagged };
    let decisions = AcrPurge::create(params)?.evaluate(&input)?;
    let by_name = tags
        .iter()
        .map(|(name, _)| {
            let v = input.tags.iter().zip(&decisions.tags).find(|(t, _)| t.name == *name).unwrap().1;
            (v.action, v.reason.to_string())
        })
        .collect();
    Ok((by_name, decisions.untagged.iter().map(|v| (v.action, v.reason.to_string())).collect()))
}

fn actions(params: &str, tags: &[(&'static str, Option<i64>)], untagged: &[Option<i64>]) -> (Vec<Action>, Vec<Action>) {
    let (t, u) = run_in("hello-world", params, tags, untagged).unwrap_or_else(|e| panic!("{params}: {e}"));
    (t.into_iter().map(|x| x.0).collect(), u.into_iter().map(|x| x.0).collect())
}

#[test]
fn deletes_matching_tags_older_than_ago_and_nothing_else() {
    let p = r#"{"filter": "hello-world:.*", "ago": "1d"}"#;
    let (tags, untagged) = actions(p, &[("v1", Some(48)), ("v2", Some(24)), ("v3", Some(1))], &[Some(100)]);
    assert_eq!(tags, [D, K, K], "strictly before now - 1d; exactly 1 day old stays");
    assert_eq!(untagged, [K], "untagged manifests stay without untagged");
    let (t, _) = run_in("hello-world", p, &[("v1", Some(48)), ("v3", Some(1))], &[]).unwrap();
    assert_eq!(t[0].1, "purge: tag matches the filter, older than 1d");
    assert_eq!(t[1].1, "ago: not older than 1d");
}

#[test]
fn the_tag_regex_is_searched_not_anchored() {
    let p = r#"{"filter": "hello-world:test", "ago": "1h"}"#;
    assert_eq!(actions(p, &[("test", Some(9)), ("my-test-1", Some(9)), ("prod", Some(9))], &[]).0, [D, D, K]);
    let anchored = r#"{"filter": "hello-world:^hello.*", "ago": "1h"}"#;
    assert_eq!(actions(anchored, &[("hello-1", Some(9)), ("x-hello", Some(9))], &[]).0, [D, K]);
}

#[test]
fn the_repository_regex_must_match_the_whole_name() {
    let p = r#"{"filter": "hello:.*", "ago": "1h"}"#;
    let (tags, _) = run_in("hello-world", p, &[("v1", Some(9))], &[]).unwrap();
    assert_eq!(tags[0], (K, "no filter matches this repository: acr purge leaves it alone".into()));
    let p = r#"{"filter": "team/.*:.*", "ago": "1h"}"#;
    assert_eq!(run_in("team/app", p, &[("v1", Some(9))], &[]).unwrap().0[0].0, D);
}

#[test]
fn filters_for_one_repository_are_ored() {
    let p = r#"{"filter": ["hello-world:^dev-", "hello-.*:^pr-", "other:.*"], "ago": "1h"}"#;
    assert_eq!(actions(p, &[("dev-1", Some(9)), ("pr-2", Some(9)), ("v1", Some(9))], &[]).0, [D, D, K]);
}

#[test]
fn keep_spares_the_newest_candidates_only() {
    // Newer tags that are too recent do not count toward keep.
    let p = r#"{"filter": "hello-world:.*", "ago": "1d", "keep": 2}"#;
    let tags = [("fresh", Some(1)), ("a", Some(30)), ("b", Some(40)), ("c", Some(50)), ("d", Some(60))];
    assert_eq!(actions(p, &tags, &[]).0, [K, K, K, D, D]);
    let (t, _) = run_in("hello-world", p, &tags, &[]).unwrap();
    assert_eq!(t[1].1, "keep: among the 2 most recent tags to purge");
}

#[test]
fn equal_times_keep_the_later_listed_tag() {
    let p = r#"{"filter": "hello-world:.*", "ago": "1h", "keep": 1}"#;
    assert_eq!(actions(p, &[("a", Some(5)), ("b", Some(5))], &[]).0, [D, K]);
}

#[test]
fn untagged_manifests_with_untagged() {
    // Manifests go when updated at or before the cutoff (tags only strictly before).
    let p = r#"{"filter": "hello-world:.*", "ago": "1d", "untagged": true}"#;
    let (_, untagged) = actions(p, &[], &[Some(48), Some(24), Some(1), None]);
    assert_eq!(untagged, [D, D, K, K]);
    let (_, u) = run_in("hello-world", p, &[], &[None]).unwrap();
    assert_eq!(u[0].1, "untagged: last update time unknown, kept (acr-cli since #532)");
}

#[test]
fn keep_applies_to_untagged_manifests_too() {
    let p = r#"{"filter": "hello-world:.*", "ago": "1d", "keep": 2, "untagged": true}"#;
    assert_eq!(actions(p, &[], &[Some(30), Some(40), Some(50)]).1, [K, K, D]);
    // No more candidates than keep: none goes.
    assert_eq!(actions(p, &[], &[Some(30), Some(40)]).1, [K, K]);
    // Equal times: the smaller digest is kept first.
    let one = r#"{"filter": "hello-world:.*", "ago": "1d", "keep": 1, "untagged": true}"#;
    assert_eq!(actions(one, &[], &[Some(30), Some(30)]).1, [K, D]);
}

#[test]
fn untagged_only_leaves_tags_alone() {
    let p = r#"{"untagged-only": true}"#;
    let (t, u) = run_in("any/repo", p, &[("v1", Some(9000))], &[Some(1), None]).unwrap();
    assert_eq!(t, [(K, "untagged-only: tags are not purged".into())]);
    assert_eq!(u.iter().map(|x| x.0).collect::<Vec<_>>(), [D, K], "no ago: every manifest updated before now");
    let scoped = r#"{"untagged-only": true, "filter": "hello-world:ignored", "ago": "3d", "keep": 1}"#;
    assert_eq!(actions(scoped, &[], &[Some(100), Some(90), Some(1)]).1, [D, K, K]);
    assert_eq!(run_in("other", scoped, &[], &[Some(100)]).unwrap().1[0].0, K);
}

#[test]
fn a_tag_without_a_time_is_kept() {
    let p = r#"{"filter": "hello-world:.*", "ago": "1h"}"#;
    assert_eq!(run_in("hello-world", p, &[("v1", None)], &[]).unwrap().0[0], (K, "last update time unknown: kept".into()));
}

#[test]
fn ago_reads_days_then_a_go_duration() {
    let ok: &[(&str, u64)] = &[
        ("1d", 86_400),
        ("7d", 604_800),
        ("2h", 7_200),
        ("1d12h", 129_600),
        ("2d3h6m", 183_960),
        ("30m", 1_800),
        ("1.5h", 5_400),
        ("0", 0),
        ("0d", 0),
    ];
    for &(text, secs) in ok {
        assert_eq!(parse_ago(text), Ok(Duration::from_secs(secs)), "{text}");
    }
    assert_eq!(parse_ago("100000d"), Ok(Duration::from_secs(150 * 365 * 86_400)), "capped at 150 years");
    for bad in ["", "d", "1dx", "abc", "-1d", "30", "7 days", "1w"] {
        assert!(parse_ago(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn filters_split_at_the_one_separating_colon() {
    assert_eq!(split_filter("hello-world:^hello.*"), Ok(("hello-world", "^hello.*")));
    assert_eq!(split_filter("repo:(?i:Release)-.*"), Ok(("repo", "(?i:Release)-.*")));
    assert_eq!(split_filter("repo:(?:a|b)"), Ok(("repo", "(?:a|b)")));
    assert_eq!(split_filter("repo:[[:alpha:]]+"), Ok(("repo", "[[:alpha:]]+")));
    assert!(split_filter("repo").unwrap_err().contains("unable to correctly parse filter flag"));
    assert!(split_filter("a:b:c").unwrap_err().contains("found 2"));
    assert!(split_filter(":v1").unwrap_err().contains("missing repository name/expression"));
    assert!(split_filter("repo:").unwrap_err().contains("missing tag name/expression"));
}

#[test]
fn invalid_flags_are_refused() {
    let table: &[(&str, &str)] = &[
        (r#"{"ago": "1d"}"#, "filter: --filter is required when not using --untagged-only"),
        (r#"{"filter": "r:.*"}"#, "ago: --ago is required when not using --untagged-only"),
        (r#"{"filter": "r:.*", "ago": "1d", "untagged": true, "untagged-only": true}"#, "none of the others can be"),
        (r#"{"filter": "r:.*", "ago": "1d", "keep": -1}"#, "keep: expected a non-negative integer"),
        (r#"{"filter": "r:(?<=v)1", "ago": "1d"}"#, "lookaround"),
        (r#"{"filter": "r:.*", "ago": "1 day"}"#, "ago: expected a duration such as \"7d\""),
        (r#"{"filter": "r:.*", "ago": "1d", "dry-run": true}"#, "unknown param \"dry-run\""),
    ];
    for (params, needle) in table {
        let err = AcrPurge::create(params).err().unwrap_or_else(|| panic!("accepted {params}"));
        assert!(err.contains(needle), "{err:?} does not contain {needle:?}");
    }
}
