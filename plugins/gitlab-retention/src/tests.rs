//! Native, table-driven tests: one row per behaviour.

use super::*;
use std::borrow::Cow;
use tagwarden_plugin_sdk::{Action, UntaggedManifest};

const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);
const DAY: i64 = 86_400;

/// A tag's timestamps, in seconds before `NOW` (negative: in the future).
#[derive(Clone, Copy)]
struct T {
    name: &'static str,
    created_ago: Option<i64>,
    pushed_ago: Option<i64>,
}

/// A tag created `days` ago.
fn t(name: &'static str, days: i64) -> T {
    T { name, created_ago: Some(days * DAY), pushed_ago: None }
}

/// A tag with no known time.
fn nil(name: &'static str) -> T {
    T { name, created_ago: None, pushed_ago: None }
}

fn ago(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(NOW.unix_micros() - secs * 1_000_000)
}

/// Evaluates `tags` (sorted by name, as the host does) under `params`.
fn run(params: &str, tags: &[T], untagged: &[UntaggedManifest<'static>]) -> Decisions {
    let mut tags = tags.to_vec();
    tags.sort_by_key(|t| t.name);
    let input = RetentionInput {
        repository: "group/app",
        now: NOW,
        tags: tags
            .iter()
            .map(|t| {
                Tag::new(t.name, "sha256:0000000000000000000000000000000000000000000000000000000000000000")
                    .with_created_at(t.created_ago.map(ago))
                    .with_pushed_at(t.pushed_ago.map(ago))
            })
            .collect(),
        untagged: untagged.to_vec(),
    };
    let policy = GitlabRetention::create(params).unwrap_or_else(|e| panic!("create({params}) failed: {e}"));
    policy.evaluate(&input).expect("evaluate")
}

const K: Action = Action::Keep;
const D: Action = Action::Delete;

struct Row {
    what: &'static str,
    params: &'static str,
    tags: Vec<T>,
    /// Every tag, in name order: (name, action, reason).
    expect: &'static [(&'static str, Action, &'static str)],
}

fn rows() -> Vec<Row> {
    const DEL: &str = "delete: matched name_regex_delete, not kept by any rule";
    vec![
        Row {
            what: "no params: nothing is deleted",
            params: "{}",
            tags: vec![t("latest", 100), t("v1", 100)],
            expect: &[("latest", K, "keep_latest"), ("v1", K, "name_regex_delete: not set")],
        },
        Row {
            what: "step 1: latest is kept by default",
            params: r#"{"name_regex_delete": ".*"}"#,
            tags: vec![t("latest", 100), t("v1", 100)],
            expect: &[("latest", K, "keep_latest"), ("v1", D, DEL)],
        },
        Row {
            what: "step 1: keep_latest false lets latest go through the other steps",
            params: r#"{"name_regex_delete": ".*", "keep_latest": false}"#,
            tags: vec![t("latest", 100), t("v1", 100)],
            expect: &[("latest", D, DEL), ("v1", D, DEL)],
        },
        Row {
            what: "step 1: only the exact name latest",
            params: r#"{"name_regex_delete": ".*"}"#,
            tags: vec![t("Latest", 1), t("latest-1", 1)],
            expect: &[("Latest", D, DEL), ("latest-1", D, DEL)],
        },
        Row {
            what: "step 2: the delete regex must match the whole name",
            params: r#"{"name_regex_delete": "v1"}"#,
            tags: vec![t("av1", 1), t("v1", 1), t("v10", 1)],
            expect: &[("av1", K, "name_regex_delete: no match"), ("v1", D, DEL), ("v10", K, "name_regex_delete: no match")],
        },
        Row {
            what: "step 2: name_regex_keep overrides name_regex_delete",
            params: r#"{"name_regex_delete": ".*", "name_regex_keep": "prod-.*"}"#,
            tags: vec![t("dev-1", 1), t("prod-1", 1), t("xprod-1", 1)],
            expect: &[("dev-1", D, DEL), ("prod-1", K, "name_regex_keep: match"), ("xprod-1", D, DEL)],
        },
        Row {
            what: "step 2: name_regex is an alias of name_regex_delete",
            params: r#"{"name_regex": "v.*"}"#,
            tags: vec![t("v1", 1), t("x1", 1)],
            expect: &[("v1", D, "delete: matched name_regex, not kept by any rule"), ("x1", K, "name_regex: no match")],
        },
        Row {
            what: "step 2: name_regex_delete wins over name_regex",
            params: r#"{"name_regex_delete": "a.*", "name_regex": ".*"}"#,
            tags: vec![t("a1", 1), t("b1", 1)],
            expect: &[("a1", D, DEL), ("b1", K, "name_regex_delete: no match")],
        },
        Row {
            what: "step 2: an explicit null counts as not given",
            params: r#"{"name_regex_delete": null, "name_regex": "a.*", "keep_n": null, "older_than": null}"#,
            tags: vec![t("a1", 1), t("b1", 1)],
            expect: &[("a1", D, "delete: matched name_regex, not kept by any rule"), ("b1", K, "name_regex: no match")],
        },
        Row {
            what: r"step 2: C|D becomes \AC|D\z: starts with C or ends with D",
            params: r#"{"name_regex_delete": "C|D"}"#,
            tags: vec![t("C", 1), t("CD", 1), t("Cx", 1), t("D", 1), t("DC", 1), t("xCx", 1), t("xD", 1)],
            expect: &[
                ("C", D, DEL),
                ("CD", D, DEL),
                ("Cx", D, DEL),
                ("D", D, DEL),
                ("DC", K, "name_regex_delete: no match"),
                ("xCx", K, "name_regex_delete: no match"),
                ("xD", D, DEL),
            ],
        },
        Row {
            what: "step 2: (C|D) matches whole names only",
            params: r#"{"name_regex_delete": "(C|D)"}"#,
            tags: vec![t("C", 1), t("Cx", 1), t("D", 1), t("xD", 1)],
            expect: &[("C", D, DEL), ("Cx", K, "name_regex_delete: no match"), ("D", D, DEL), ("xD", K, "name_regex_delete: no match")],
        },
        Row {
            what: "step 2: the keep regex is interpolated the same way",
            params: r#"{"name_regex_delete": ".*", "name_regex_keep": "a|b"}"#,
            tags: vec![t("ax", 1), t("xa", 1), t("xb", 1)],
            expect: &[("ax", K, "name_regex_keep: match"), ("xa", D, DEL), ("xb", K, "name_regex_keep: match")],
        },
        Row {
            what: "step 3: keep_n keeps the N most recent candidates",
            params: r#"{"name_regex_delete": ".*", "keep_n": 2}"#,
            tags: vec![t("a", 1), t("b", 3), t("c", 2), t("d", 4)],
            expect: &[
                ("a", K, "keep_n: among the 2 most recent"),
                ("b", D, DEL),
                ("c", K, "keep_n: among the 2 most recent"),
                ("d", D, DEL),
            ],
        },
        Row {
            what: "step 3: keep_n 0 keeps nothing",
            params: r#"{"name_regex_delete": ".*", "keep_n": 0}"#,
            tags: vec![t("a", 1), t("b", 2)],
            expect: &[("a", D, DEL), ("b", D, DEL)],
        },
        Row {
            what: "step 3: keep_n as a string of digits",
            params: r#"{"name_regex_delete": ".*", "keep_n": "1"}"#,
            tags: vec![t("a", 2), t("b", 1)],
            expect: &[("a", D, DEL), ("b", K, "keep_n: among the 1 most recent")],
        },
        Row {
            what: "step 3: keep_n larger than the candidates keeps them all",
            params: r#"{"name_regex_delete": ".*", "keep_n": 10}"#,
            tags: vec![t("a", 2), t("b", 1)],
            expect: &[("a", K, "keep_n: among the 10 most recent"), ("b", K, "keep_n: among the 10 most recent")],
        },
        Row {
            what: "step 3: equal timestamps end in reverse name order",
            params: r#"{"name_regex_delete": ".*", "keep_n": 2}"#,
            tags: vec![t("c", 5), t("a", 5), t("b", 5), t("d", 9)],
            expect: &[
                ("a", D, DEL),
                ("b", K, "keep_n: among the 2 most recent"),
                ("c", K, "keep_n: among the 2 most recent"),
                ("d", D, DEL),
            ],
        },
        Row {
            what: "step 3: an unknown time sorts as now, among the newest",
            params: r#"{"name_regex_delete": ".*", "keep_n": 1}"#,
            tags: vec![t("a", 1), nil("b"), t("c", 2)],
            expect: &[("a", D, DEL), ("b", K, "keep_n: among the 1 most recent"), ("c", D, DEL)],
        },
        Row {
            what: "step 3: an unknown time ties with a tag timed exactly now (name order decides)",
            params: r#"{"name_regex_delete": ".*", "keep_n": 1}"#,
            tags: vec![nil("a"), T { name: "b", created_ago: Some(0), pushed_ago: None }],
            expect: &[("a", D, DEL), ("b", K, "keep_n: among the 1 most recent")],
        },
        Row {
            what: "step 3: a future time is newer than an unknown one",
            params: r#"{"name_regex_delete": ".*", "keep_n": 1}"#,
            tags: vec![t("a", -1), nil("b")],
            expect: &[("a", K, "keep_n: among the 1 most recent"), ("b", D, DEL)],
        },
        Row {
            what: "step 3: keep_n counts only candidates (not latest, not kept by name)",
            params: r#"{"name_regex_delete": ".*", "name_regex_keep": "prod", "keep_n": 1}"#,
            tags: vec![t("latest", 0), t("prod", 0), t("x1", 1), t("x2", 2)],
            expect: &[
                ("latest", K, "keep_latest"),
                ("prod", K, "name_regex_keep: match"),
                ("x1", K, "keep_n: among the 1 most recent"),
                ("x2", D, DEL),
            ],
        },
        Row {
            what: "step 4: older_than deletes only what is older",
            params: r#"{"name_regex_delete": ".*", "older_than": "7d"}"#,
            tags: vec![t("a", 8), t("b", 6), nil("c")],
            expect: &[("a", D, DEL), ("b", K, "older_than: not older than 7d"), ("c", K, "older_than: time unknown")],
        },
        Row {
            what: "step 4: exactly older_than old is not older (strictly before the cutoff)",
            params: r#"{"name_regex_delete": ".*", "older_than": "1 day"}"#,
            tags: vec![
                T { name: "at", created_ago: Some(DAY), pushed_ago: None },
                T { name: "before", created_ago: Some(DAY + 1), pushed_ago: None },
            ],
            expect: &[("at", K, "older_than: not older than 1 day"), ("before", D, DEL)],
        },
        Row {
            what: "step 4: 1month is 30 days",
            params: r#"{"name_regex_delete": ".*", "older_than": "1month"}"#,
            tags: vec![t("a", 29), t("b", 31)],
            expect: &[("a", K, "older_than: not older than 1month"), ("b", D, DEL)],
        },
        Row {
            what: "tag time: pushed_at when known, else created_at",
            params: r#"{"name_regex_delete": ".*", "older_than": "7d"}"#,
            tags: vec![
                T { name: "created-old-pushed-new", created_ago: Some(30 * DAY), pushed_ago: Some(DAY) },
                T { name: "created-new-pushed-old", created_ago: Some(DAY), pushed_ago: Some(30 * DAY) },
                T { name: "created-only", created_ago: Some(30 * DAY), pushed_ago: None },
                T { name: "pushed-only", created_ago: None, pushed_ago: Some(30 * DAY) },
            ],
            expect: &[
                ("created-new-pushed-old", D, DEL),
                ("created-old-pushed-new", K, "older_than: not older than 7d"),
                ("created-only", D, DEL),
                ("pushed-only", D, DEL),
            ],
        },
        Row {
            what: "steps 3 and 4: keep_n first, then older_than on the rest",
            params: r#"{"name_regex_delete": ".*", "keep_n": 1, "older_than": "7d"}"#,
            tags: vec![t("a", 20), t("b", 5), t("c", 1), t("d", 10)],
            expect: &[("a", D, DEL), ("b", K, "older_than: not older than 7d"), ("c", K, "keep_n: among the 1 most recent"), ("d", D, DEL)],
        },
        Row {
            what: "steps 3 and 4: an unknown time beyond keep_n is still never old enough",
            params: r#"{"name_regex_delete": ".*", "keep_n": 1, "older_than": "7d"}"#,
            tags: vec![nil("a"), nil("b"), t("c", 30)],
            expect: &[("a", K, "older_than: time unknown"), ("b", K, "keep_n: among the 1 most recent"), ("c", D, DEL)],
        },
        Row {
            what: "GitLab's documented example",
            params: r#"{"keep_n": 1, "name_regex_keep": "production-.*", "older_than": "7d", "name_regex_delete": ".*"}"#,
            tags: vec![
                t("latest", 0),
                t("production-v44", 3),
                t("production-v43", 6),
                t("production-v42", 11),
                t("dev-v44", 2),
                t("dev-v43", 5),
                t("dev-v42", 10),
                t("v44", 1),
                t("v43", 12),
                t("v42", 20),
            ],
            expect: &[
                ("dev-v42", D, DEL),
                ("dev-v43", K, "older_than: not older than 7d"),
                ("dev-v44", K, "older_than: not older than 7d"),
                ("latest", K, "keep_latest"),
                ("production-v42", K, "name_regex_keep: match"),
                ("production-v43", K, "name_regex_keep: match"),
                ("production-v44", K, "name_regex_keep: match"),
                ("v42", D, DEL),
                ("v43", D, DEL),
                ("v44", K, "keep_n: among the 1 most recent"),
            ],
        },
        Row { what: "an empty repository", params: r#"{"name_regex_delete": ".*"}"#, tags: vec![], expect: &[] },
    ]
}

#[test]
fn each_step_behaves_like_gitlab() {
    for row in rows() {
        let got = run(row.params, &row.tags, &[]);
        let mut names: Vec<&str> = row.tags.iter().map(|t| t.name).collect();
        names.sort();
        let got: Vec<(&str, Action, &str)> = names.iter().zip(&got.tags).map(|(n, v)| (*n, v.action, v.reason.as_ref())).collect();
        assert_eq!(got, row.expect, "{}", row.what);
    }
}

#[test]
fn untagged_manifests() {
    let m = |created: Option<i64>, pushed: Option<i64>| {
        UntaggedManifest::new("sha256:1111111111111111111111111111111111111111111111111111111111111111")
            .with_created_at(created.map(|d| ago(d * DAY)))
            .with_pushed_at(pushed.map(|d| ago(d * DAY)))
    };
    let manifests = [m(Some(30), None), m(None, Some(30)), m(Some(30), Some(1)), m(None, None)];
    const NOT_MANAGED: (Action, &str) = (K, "untagged: not managed by gitlab-retention (delete_untagged is false)");
    const DEL: (Action, &str) = (D, "delete_untagged: untagged manifest");
    let table: &[(&str, [(Action, &str); 4])] = &[
        (r#"{"name_regex_delete": ".*"}"#, [NOT_MANAGED; 4]),
        (r#"{"delete_untagged": false}"#, [NOT_MANAGED; 4]),
        (r#"{"delete_untagged": true}"#, [DEL; 4]),
        (
            r#"{"delete_untagged": true, "older_than": "7d"}"#,
            [DEL, DEL, (K, "older_than: not older than 7d"), (K, "older_than: time unknown")],
        ),
    ];
    for (params, expect) in table {
        let got = run(params, &[], &manifests);
        let got: Vec<(Action, &str)> = got.untagged.iter().map(|v| (v.action, v.reason.as_ref())).collect();
        assert_eq!(got, expect, "{params}");
    }
}

#[test]
fn invalid_params_name_the_param_and_what_was_expected() {
    let table: &[(&str, &[&str])] = &[
        (r#"{"name_regex_delete": "("}"#, &["name_regex_delete: invalid regex:"]),
        (r#"{"name_regex": "[z-a]"}"#, &["name_regex: invalid regex:"]),
        (r#"{"name_regex_keep": "["}"#, &[r#"name_regex_keep: invalid regex: unclosed character class (pattern "[")"#]),
        (r#"{"name_regex_delete": ".*", "name_regex": "("}"#, &["name_regex: invalid regex:"]),
        // Each pattern is checked alone before it is anchored: `\A*prod*\z` compiles, `*prod*` does not.
        (
            r#"{"name_regex_delete": ".*", "name_regex_keep": "*prod*"}"#,
            &[
                r#"name_regex_keep: invalid regex: repetition operator missing expression (pattern "*prod*")"#,
                r#"as a regex that is ".*prod.*""#,
            ],
        ),
        (r#"{"name_regex_delete": "*"}"#, &[r#"name_regex_delete: invalid regex:"#, r#"as a regex that is ".*""#]),
        (r#"{"name_regex": "*.dev"}"#, &[r#"name_regex: invalid regex:"#, r#"as a regex that is ".*\\.dev""#]),
        (r#"{"name_regex_keep": 5}"#, &["name_regex_keep: expected a regex string, got 5"]),
        (r#"{"keep_n": -1}"#, &["keep_n: expected a non-negative integer, got -1"]),
        (r#"{"keep_n": "abc"}"#, &[r#"keep_n: expected a non-negative integer, got "abc""#]),
        (r#"{"keep_n": 1.5}"#, &["keep_n: expected a non-negative integer, got 1.5"]),
        (r#"{"keep_n": ""}"#, &[r#"keep_n: expected a non-negative integer, got """#]),
        (r#"{"keep_n": 18446744073709551616}"#, &["keep_n: expected a non-negative integer no larger than 18446744073709551615, got"]),
        (r#"{"keep_n": "18446744073709551616"}"#, &["keep_n: expected a non-negative integer no larger than 18446744073709551615"]),
        (r#"{"older_than": "soon"}"#, &["older_than: expected a duration such as", r#"got "soon""#]),
        (r#"{"older_than": "7"}"#, &["older_than: expected a duration", r#"got "7""#]),
        (r#"{"older_than": "-7d"}"#, &[r#"older_than: expected a non-negative duration, got "-7d""#]),
        (r#"{"older_than": 7}"#, &["older_than: expected a duration", "got 7"]),
        (r#"{"keep_latest": "yes"}"#, &[r#"keep_latest: expected true or false, got "yes""#]),
        (r#"{"delete_untagged": 1}"#, &["delete_untagged: expected true or false, got 1"]),
        (
            r#"{"keep": 1, "name_regex_delete": ".*"}"#,
            &[
                r#"unknown param "keep""#,
                "name_regex_delete, name_regex, name_regex_keep, keep_n, older_than, keep_latest, delete_untagged",
            ],
        ),
        ("[]", &["params: expected a JSON object, got []"]),
        ("", &["params: expected a JSON object"]),
    ];
    for (params, needles) in table {
        let err = GitlabRetention::create(params).expect_err(params);
        for needle in *needles {
            assert!(err.contains(needle), "create({params}) = {err:?}, missing {needle:?}");
        }
    }
}

#[test]
fn patterns_are_validated_alone_before_anchoring() {
    // The gap GitLab's order closes: anchoring makes these compile.
    for pattern in ["*prod*", "*", "?x", "+v1"] {
        assert!(NamePattern::new(&format!(r"\A{pattern}\z")).is_ok(), "{pattern} anchored compiles");
        let params = format!(r#"{{"name_regex_keep": {pattern:?}}}"#);
        let err = GitlabRetention::create(&params).expect_err(&params);
        assert!(err.starts_with("name_regex_keep: invalid regex:"), "{err}");
    }
    // A valid pattern alone is anchored as before, whatever it means alone.
    assert!(GitlabRetention::create(r#"{"name_regex_keep": "v.*|x", "name_regex_delete": "^a$"}"#).is_ok());
}

#[test]
fn a_glob_gets_its_regex_suggested_and_nothing_else_does() {
    let table: &[(&str, Option<&str>)] = &[
        ("*prod*", Some(".*prod.*")),
        ("*", Some(".*")),
        ("release-?.*", Some("release-.\\..*")),
        ("v[0-9]*", Some("v[0-9].*")),
        ("release-[", None),
        ("(", None),
    ];
    for &(pattern, expect) in table {
        assert_eq!(glob_as_regex(pattern).as_deref(), expect, "{pattern}");
    }
}

#[test]
fn top_level_alternation_is_detected() {
    let table: &[(&str, bool)] = &[
        ("C|D", true),
        ("a|", true),
        ("(C|D)", false),
        ("(?:a|b)c", false),
        ("[|]", false),
        ("[]|]", false),
        ("[^]|]x", false),
        (r"a\|b", false),
        ("(a)|(b)", true),
        ("[[:alpha:]|]", false),
        ("v.*", false),
    ];
    for &(pattern, expect) in table {
        assert_eq!(has_top_level_alternation(pattern), expect, "{pattern}");
    }
}

#[test]
fn reasons_with_numbers_are_shared_not_allocated_per_tag() {
    let policy = GitlabRetention::create(r#"{"name_regex_delete": ".*", "keep_n": 3, "older_than": "7d"}"#).unwrap();
    assert!(matches!(policy.keep_n.as_ref().unwrap().1.reason, Cow::Borrowed(_)));
    assert!(matches!(policy.older_than.as_ref().unwrap().not_old_enough.reason, Cow::Borrowed(_)));
    let again = GitlabRetention::create(r#"{"keep_n": 3}"#).unwrap();
    assert!(std::ptr::eq(policy.keep_n.unwrap().1.reason.as_ref(), again.keep_n.unwrap().1.reason.as_ref()));
}
