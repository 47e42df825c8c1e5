//! Native tests: one per behaviour of Harbor's retention job.

use super::*;
use tagwarden_plugin_sdk::{Action, Tag, Timestamp, UntaggedManifest};

const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);
const K: Action = Action::Keep;
const D: Action = Action::Delete;

fn ago(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(NOW.unix_micros() - secs * 1_000_000)
}

fn digest(n: usize) -> &'static str {
    Box::leak(format!("sha256:{n:064x}").into_boxed_str())
}

/// An artifact: tags (none: untagged), pushed and pulled, in days ago.
struct Art {
    tags: &'static [&'static str],
    pushed: Option<f64>,
    pulled: Option<f64>,
}

fn art(tags: &'static [&'static str], pushed: f64, pulled: Option<f64>) -> Art {
    Art { tags, pushed: Some(pushed), pulled }
}

fn days(d: f64) -> Timestamp {
    ago((d * 86_400.0) as i64)
}

/// Runs `policy` on repository `repo` and returns one (action, reason) per artifact.
fn run_in(repo: &str, policy: &str, arts: &[Art]) -> Result<Vec<(Action, String)>, String> {
    let mut tags = Vec::new();
    let mut untagged = Vec::new();
    for (n, a) in arts.iter().enumerate() {
        for &name in a.tags {
            tags.push(Tag::new(name, digest(n + 1)).with_pushed_at(a.pushed.map(days)).with_last_pulled_at(a.pulled.map(days)));
        }
        if a.tags.is_empty() {
            untagged.push(UntaggedManifest::new(digest(n + 1)).with_pushed_at(a.pushed.map(days)));
        }
    }
    tags.sort_by_key(|t| t.name);
    let input = RetentionInput { repository: repo, now: NOW, tags: tags.into(), untagged };
    let decisions = HarborRetention::create(policy)?.evaluate(&input)?;
    Ok(arts
        .iter()
        .enumerate()
        .map(|(n, _)| {
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

fn run(policy: &str, arts: &[Art]) -> Vec<Action> {
    run_in("library/app", policy, arts).unwrap_or_else(|e| panic!("{policy}: {e}")).into_iter().map(|(a, _)| a).collect()
}

/// One rule: template, its parameter, tag selectors (decoration, pattern, extras), repository pattern.
fn rule(template: &str, n: Option<i64>, tags: &[(&str, &str, Option<&str>)], repo: &str) -> String {
    let params = n.map_or("{}".to_owned(), |n| format!(r#"{{"{template}": {n}}}"#));
    let selectors: Vec<String> = tags
        .iter()
        .map(|(d, p, e)| {
            let extras = e.map_or(String::new(), |e| format!(r#", "extras": {}"#, serde_json::Value::from(e)));
            format!(r#"{{"kind": "doublestar", "decoration": "{d}", "pattern": "{p}"{extras}}}"#)
        })
        .collect();
    format!(
        r#"{{"action": "retain", "template": "{template}", "params": {params}, "tag_selectors": [{}],
            "scope_selectors": {{"repository": [{{"kind": "doublestar", "decoration": "repoMatches", "pattern": "{repo}"}}]}}}}"#,
        selectors.join(",")
    )
}

fn policy(rules: &[String]) -> String {
    format!(
        r#"{{"algorithm": "or", "rules": [{}], "trigger": {{"kind": "Schedule", "settings": {{"cron": "0 0 0 * * *"}}}}, "scope": {{"level": "project", "ref": 1}}}}"#,
        rules.join(",")
    )
}

const ALL: &[(&str, &str, Option<&str>)] = &[("matches", "**", Some(r#"{"untagged":false}"#))];

#[test]
fn latest_pushed_k_keeps_the_k_newest_artifacts_and_deletes_the_rest() {
    let p = policy(&[rule("latestPushedK", Some(2), ALL, "**")]);
    assert_eq!(run(&p, &[art(&["a"], 3.0, None), art(&["b"], 1.0, None), art(&["c"], 2.0, None), art(&["d"], 4.0, None)]), [D, K, K, D]);
    let got = run_in("library/app", &p, &[art(&["a"], 3.0, None), art(&["b"], 1.0, None)]).unwrap();
    assert_eq!(got[0].1, "rule 1: retain the 2 most recently pushed");
}

#[test]
fn a_retained_tag_keeps_every_tag_of_its_artifact() {
    // Harbor's documented example: four tags on one digest, "retain the two latest
    // harbor-*": the artifact is retained, so all four are.
    let p = policy(&[rule("latestPushedK", Some(2), &[("matches", "harbor-*", None)], "**")]);
    let one = [art(&["harbor-1.8", "harbor-latest", "harbor-nightly", "harbor-release"], 1.0, None), art(&["other"], 0.5, None)];
    assert_eq!(run(&p, &one), [K, D]);
}

#[test]
fn latest_pulled_n_counts_never_pulled_artifacts_last() {
    let p = policy(&[rule("latestPulledN", Some(2), ALL, "**")]);
    assert_eq!(run(&p, &[art(&["a"], 1.0, None), art(&["b"], 1.0, Some(9.0)), art(&["c"], 1.0, Some(3.0))]), [D, K, K]);
    // Fewer artifacts than N: every one is retained, pulled or not (Harbor's example 1).
    assert_eq!(run(&p, &[art(&["a"], 1.0, None), art(&["b"], 1.0, Some(90.0))]), [K, K]);
}

#[test]
fn days_since_last_pull_retains_only_recent_pulls() {
    let p = policy(&[rule("nDaysSinceLastPull", Some(7), ALL, "**")]);
    assert_eq!(
        run(&p, &[art(&["a"], 1.0, None), art(&["b"], 1.0, Some(7.0)), art(&["c"], 1.0, Some(7.01)), art(&["d"], 1.0, Some(0.5))]),
        [D, K, D, K]
    );
}

#[test]
fn days_since_last_push_is_inclusive_to_the_second() {
    let p = policy(&[rule("nDaysSinceLastPush", Some(7), ALL, "**")]);
    let exactly = Art { tags: &["exactly"], pushed: Some(7.0), pulled: None };
    let second_more = Art { tags: &["over"], pushed: Some(7.0 + 1.0 / 86_400.0), pulled: None };
    assert_eq!(run(&p, &[exactly, second_more]), [K, D]);
}

#[test]
fn last_x_days_is_strict() {
    let p = policy(&[rule("lastXDays", Some(7), ALL, "**")]);
    assert_eq!(run(&p, &[art(&["exactly"], 7.0, None), art(&["newer"], 6.99, None)]), [D, K]);
}

#[test]
fn latest_active_takes_the_later_of_push_and_pull() {
    let p = policy(&[rule("latestActiveK", Some(1), ALL, "**")]);
    assert_eq!(run(&p, &[art(&["pulled"], 9.0, Some(0.5)), art(&["pushed"], 1.0, None)]), [K, D]);
}

#[test]
fn rules_are_ored_over_what_they_retain() {
    // Harbor's example 4: pulled in the last 7 days OR the 10 most recently pulled.
    let p = policy(&[rule("nDaysSinceLastPull", Some(7), ALL, "**"), rule("latestPulledN", Some(10), ALL, "**")]);
    let six_old: Vec<Art> = (0..6).map(|i| art(&["x"], 60.0, Some(40.0 + f64::from(i)))).collect();
    assert_eq!(run(&p, &six_old), [K; 6]);
    let got = run_in("p/r", &p, &[art(&["x"], 1.0, Some(1.0))]).unwrap();
    assert_eq!(got[0].1, "rule 1: retain those pulled within the last 7 days");
}

#[test]
fn matches_picks_an_artifact_when_any_tag_matches() {
    let p = policy(&[rule("always", None, &[("matches", "v*", None)], "**")]);
    assert_eq!(run(&p, &[art(&["dev", "v1"], 1.0, None), art(&["dev2"], 1.0, None)]), [K, D]);
}

#[test]
fn excludes_picks_an_artifact_when_any_tag_does_not_match() {
    let p = policy(&[rule("always", None, &[("excludes", "v*", None)], "**")]);
    assert_eq!(run(&p, &[art(&["dev", "v1"], 1.0, None), art(&["v2"], 1.0, None), art(&["dev2"], 1.0, None)]), [K, D, K]);
}

#[test]
fn the_untagged_switch_as_harbor_reads_it() {
    let untagged = || art(&[], 1.0, None);
    let with = |decoration: &'static str, extras: Option<&'static str>| {
        let selectors: &'static [(&'static str, &'static str, Option<&'static str>)] =
            Box::leak(vec![(decoration, "**", extras)].into_boxed_slice());
        run(&policy(&[rule("always", None, selectors, "**")]), &[untagged()])[0]
    };
    // No extras: Harbor's default, kept for upgrades, picks untagged artifacts either way
    // (matches starts with the switch on; excludes with it off, which it inverts).
    assert_eq!(with("matches", None), K);
    assert_eq!(with("excludes", None), K);
    assert_eq!(with("matches", Some(r#"{"untagged":true}"#)), K);
    assert_eq!(with("matches", Some(r#"{"untagged":false}"#)), D);
    // The switch makes untagged artifacts part of the pattern, so `excludes` leaves them out.
    assert_eq!(with("excludes", Some(r#"{"untagged":true}"#)), D);
    assert_eq!(with("excludes", Some(r#"{"untagged":false}"#)), K);
    // Go's decoder: `{}` leaves the field false; the key's case does not matter; garbage is ignored.
    assert_eq!(with("matches", Some("{}")), D);
    assert_eq!(with("matches", Some(r#"{"Untagged":true}"#)), K);
    assert_eq!(with("matches", Some("not json")), K);
    assert_eq!(with("excludes", Some(r#"{"untagged":"yes"}"#)), K);
}

#[test]
fn tag_selectors_are_anded() {
    let p = policy(&[rule("always", None, &[("matches", "v*", None), ("excludes", "*-rc", None)], "**")]);
    assert_eq!(run(&p, &[art(&["v1"], 1.0, None), art(&["v2-rc"], 1.0, None), art(&["dev"], 1.0, None)]), [K, D, D]);
}

#[test]
fn repository_selectors_see_the_name_without_the_project() {
    let p = policy(&[rule("latestPushedK", Some(1), ALL, "app")]);
    let arts = || [art(&["a"], 2.0, None), art(&["b"], 1.0, None)];
    assert_eq!(run_in("library/app", &p, &arts()).unwrap().iter().map(|g| g.0).collect::<Vec<_>>(), [D, K]);
    assert_eq!(run_in("app", &p, &arts()).unwrap().iter().map(|g| g.0).collect::<Vec<_>>(), [D, K]);
    // Outside every rule's repositories: Harbor runs nothing there.
    let got = run_in("library/other", &p, &arts()).unwrap();
    let outside = (K, r#"no rule's repositories include "other": Harbor runs no retention here"#.to_owned());
    assert_eq!(got, [outside.clone(), outside]);
    // `*` stays within one path segment, `**` does not.
    let star = policy(&[rule("latestPushedK", Some(1), ALL, "team/*")]);
    assert_eq!(run_in("library/team/sub/app", &star, &arts()).unwrap()[0].0, K);
    let stars = policy(&[rule("latestPushedK", Some(1), ALL, "team/**")]);
    assert_eq!(run_in("library/team/sub/app", &stars, &arts()).unwrap()[0].0, D);
}

#[test]
fn disabled_rules_do_nothing() {
    let disabled = rule("always", None, ALL, "**").replacen('{', r#"{"disabled": true, "#, 1);
    let p = policy(&[disabled, rule("latestPushedK", Some(1), ALL, "**")]);
    assert_eq!(run(&p, &[art(&["a"], 2.0, None), art(&["b"], 1.0, None)]), [D, K]);
    let only_disabled = policy(&[rule("always", None, ALL, "**").replacen('{', r#"{"disabled": true, "#, 1)]);
    assert_eq!(run(&only_disabled, &[art(&["a"], 2.0, None)]), [K]);
}

#[test]
fn equal_push_seconds_rank_the_later_listed_artifact_first() {
    let p = policy(&[rule("latestPushedK", Some(1), ALL, "**")]);
    assert_eq!(run(&p, &[art(&["a"], 1.0, None), art(&["b"], 1.0, None)]), [D, K]);
}

#[test]
fn pull_rules_need_pull_times_in_the_recording() {
    let p = policy(&[rule("latestPulledN", Some(1), ALL, "**")]);
    let err = run_in("p/r", &p, &[art(&["a"], 1.0, None)]).unwrap_err();
    assert!(
        err.contains("rule 1 (retain the 1 most recently pulled) needs pull times, but no tag in the recording has last_pulled_at"),
        "{err}"
    );
    let push = policy(&[rule("latestPushedK", Some(1), ALL, "**")]);
    let unknown = Art { tags: &["a"], pushed: None, pulled: None };
    let err = run_in("p/r", &push, &[unknown]).unwrap_err();
    assert!(
        err.contains("needs push times, but artifact sha256:") && err.contains("(tag \"a\") has neither pushed_at nor created_at"),
        "{err}"
    );
}

#[test]
fn invalid_policies_are_refused_with_harbors_words() {
    let ok = rule("latestPushedK", Some(1), ALL, "**");
    let table: Vec<(String, &[&str])> = vec![
        (policy(&[rule("latestPushedK", Some(-1), ALL, "**")]), &["rules[0] (latestPushedK).params: latestPushedK is less than zero (-1)"]),
        (policy(&[rule("latestPushedK", Some(32767), ALL, "**")]), &["latestPushedK is too large (32767); Harbor accepts at most 32766"]),
        (policy(&[rule("nDaysSinceLastPull", Some(20190905), ALL, "**")]), &["nDaysSinceLastPull is too large"]),
        (policy(&[rule("latestPulledN", None, ALL, "**")]), &["missing required parameter latestPulledN for rule latestPulledN"]),
        (policy(&[ok.replace(r#"{"latestPushedK": 1}"#, r#"{"latestPushedK": "1"}"#)]), &["latestPushedK type error"]),
        (policy(&[rule("nothing", None, ALL, "**")]), &["rule evaluator nothing is not registered"]),
        (policy(&[ok.replace(r#""retain""#, r#""delete""#)]), &["rules[0] (latestPushedK).action", "\"retain\""]),
        (
            policy(&[ok.replace(r#""kind": "doublestar", "decoration": "matches""#, r#""kind": "label", "decoration": "matches""#)]),
            &["tag_selectors[0].kind"],
        ),
        (
            policy(&[ok.replace(r#""decoration": "matches""#, r#""decoration": "matching""#)]),
            &["tag_selectors[0].decoration: expected \"matches\" or \"excludes\""],
        ),
        (policy(&[rule("always", None, &[("matches", "v[", None)], "**")]), &["tag_selectors[0].pattern: syntax error in pattern \"v[\""]),
        (policy(&[rule("always", None, &[("matches", "", None)], "**")]), &["pattern: Can not be empty"]),
        (policy(&[rule("always", None, &[], "**")]), &["tag_selectors: Can not be empty"]),
        (
            policy(std::slice::from_ref(&ok)).replace(r#""algorithm": "or""#, r#""algorithm": "and""#),
            &["algorithm: Harbor accepts only \"or\""],
        ),
        (policy(&[ok.replace(r#""template""#, r#""tempalte""#)]), &["unknown key \"tempalte\""]),
        ("[]".to_owned(), &["params: expected a Harbor retention policy"]),
    ];
    for (p, needles) in table {
        let err = HarborRetention::create(&p).err().unwrap_or_else(|| panic!("accepted {p}"));
        for needle in needles {
            assert!(err.contains(needle), "{err:?} does not contain {needle:?}");
        }
    }
}

#[test]
fn parameters_are_read_as_harbor_reads_json_numbers() {
    // 2.7 is truncated to 2.
    let p = policy(&[rule("latestPushedK", Some(0), ALL, "**").replace(": 0}", ": 2.7}")]);
    assert_eq!(run(&p, &[art(&["a"], 3.0, None), art(&["b"], 2.0, None), art(&["c"], 1.0, None)]), [D, K, K]);
    // latestActiveK has no validator: a negative K falls back to Harbor's default 10.
    let p = policy(&[rule("latestActiveK", Some(-5), ALL, "**")]);
    assert_eq!(run(&p, &[art(&["a"], 3.0, Some(1.0))]), [K]);
}
