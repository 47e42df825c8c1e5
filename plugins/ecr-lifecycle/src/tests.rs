//! Native, table-driven tests: one row per behaviour.

use super::*;
use tagwarden_plugin_sdk::{Action, Tag, UntaggedManifest};

const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);
const DAY_SECS: i64 = 86_400;

fn ago(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(NOW.unix_micros() - secs * 1_000_000)
}

/// A digest from a small number, so that images are easy to write.
fn digest(n: u8) -> &'static str {
    Box::leak(format!("sha256:{n:064x}").into_boxed_str())
}

/// An image: its tags (none for untagged), and when it was pushed, in seconds ago.
struct Img {
    tags: &'static [&'static str],
    pushed_ago: Option<i64>,
    created_ago: Option<i64>,
}

fn img(tags: &'static [&'static str], days: i64) -> Img {
    Img { tags, pushed_ago: Some(days * DAY_SECS), created_ago: None }
}

/// Evaluates `images` (image n has digest n+1) and returns the action for each image, by
/// its first tag or, untagged, by `<untagged n>`.
fn run(policy: &str, images: &[Img]) -> Result<Vec<(String, Action, String)>, String> {
    let mut tags: Vec<Tag<'static>> = Vec::new();
    let mut untagged = Vec::new();
    for (n, image) in images.iter().enumerate() {
        let d = digest(n as u8 + 1);
        for &name in image.tags {
            tags.push(Tag::new(name, d).with_created_at(image.created_ago.map(ago)).with_pushed_at(image.pushed_ago.map(ago)));
        }
        if image.tags.is_empty() {
            untagged.push(UntaggedManifest::new(d).with_created_at(image.created_ago.map(ago)).with_pushed_at(image.pushed_ago.map(ago)));
        }
    }
    tags.sort_by_key(|t| t.name);
    let input = RetentionInput { repository: "r", now: NOW, tags: tags.into(), untagged };
    let decisions = EcrLifecycle::create(policy)?.evaluate(&input)?;
    // Every tag of an image shares its verdict.
    for (n, image) in images.iter().enumerate() {
        let d = digest(n as u8 + 1);
        let verdicts: Vec<&Verdict> = input.tags.iter().zip(&decisions.tags).filter(|(t, _)| t.digest() == d).map(|(_, v)| v).collect();
        assert!(verdicts.windows(2).all(|w| w[0] == w[1]), "image {n} ({:?}) got different verdicts per tag", image.tags);
    }
    let mut out = Vec::new();
    let mut untagged_n = 0;
    for (n, image) in images.iter().enumerate() {
        let d = digest(n as u8 + 1);
        let (label, v) = match image.tags.first() {
            Some(&first) => (first.to_owned(), input.tags.iter().zip(&decisions.tags).find(|(t, _)| t.digest() == d).unwrap().1),
            None => {
                untagged_n += 1;
                (
                    format!("<untagged {untagged_n}>"),
                    input.untagged.iter().zip(&decisions.untagged).find(|(u, _)| u.digest() == d).unwrap().1,
                )
            }
        };
        out.push((label, v.action, v.reason.to_string()));
    }
    Ok(out)
}

fn rule(priority: u32, selection: &str, count: &str) -> String {
    format!(r#"{{"rulePriority": {priority}, "selection": {{{selection}, {count}}}, "action": {{"type": "expire"}}}}"#)
}

fn policy(rules: &[String]) -> String {
    format!(r#"{{"rules": [{}]}}"#, rules.join(","))
}

const K: Action = Action::Keep;
const D: Action = Action::Delete;

/// The actions only, image by image.
fn actions(policy: &str, images: &[Img]) -> Vec<Action> {
    run(policy, images).unwrap_or_else(|e| panic!("{policy}: {e}")).into_iter().map(|(_, a, _)| a).collect()
}

#[test]
fn aws_example_multiple_rules_a() {
    // AWS "Filtering on multiple rules", example A: only Image A expires. Rule 2 would
    // also mark B, but rule 1 identified B first (and kept it).
    let p = policy(&[
        rule(1, r#""tagStatus": "tagged", "tagPrefixList": ["prod"]"#, r#""countType": "imageCountMoreThan", "countNumber": 1"#),
        rule(2, r#""tagStatus": "tagged", "tagPrefixList": ["beta"]"#, r#""countType": "imageCountMoreThan", "countNumber": 1"#),
    ]);
    let images = [img(&["beta-1", "prod-1"], 10), img(&["beta-2", "prod-2"], 9), img(&["beta-3"], 8)];
    let got = run(&p, &images).unwrap();
    assert_eq!(
        got,
        [
            ("beta-1".into(), D, "rule 1: expire, beyond the 1 most recently pushed images it selects".into()),
            ("beta-2".into(), K, "rule 1: keep, among the 1 most recently pushed images it selects".into()),
            ("beta-3".into(), K, "rule 2: keep, among the 1 most recently pushed images it selects".into()),
        ]
    );
}

#[test]
fn aws_example_multiple_rules_b() {
    // Example B: A and B expire; rule 2 marks C too, but rule 1 identified C (and kept it).
    let p = policy(&[
        rule(1, r#""tagStatus": "tagged", "tagPrefixList": ["prod"]"#, r#""countType": "imageCountMoreThan", "countNumber": 1"#),
        rule(2, r#""tagStatus": "tagged", "tagPrefixList": ["beta"]"#, r#""countType": "imageCountMoreThan", "countNumber": 1"#),
    ]);
    let images = [img(&["beta-1", "prod-1"], 10), img(&["beta-2", "prod-2"], 9), img(&["beta-3", "prod-3"], 8), img(&["beta-4"], 7)];
    assert_eq!(actions(&p, &images), [D, D, K, K]);
}

#[test]
fn every_pattern_must_match_some_tag() {
    // AWS "Filtering on multiple tags in a single rule": ["alpha*", "beta*"] selects only
    // C and F; older than 5 days expires C; keeping 1 expires C as well.
    let images = [
        img(&["alpha-1"], 12),
        img(&["beta-1"], 11),
        img(&["alpha-2", "beta-2"], 10),
        img(&["alpha-3"], 4),
        img(&["beta-3"], 3),
        img(&["alpha-4", "beta-4"], 2),
    ];
    let selection = r#""tagStatus": "tagged", "tagPatternList": ["alpha*", "beta*"]"#;
    let by_age = policy(&[rule(1, selection, r#""countType": "sinceImagePushed", "countUnit": "days", "countNumber": 5"#)]);
    assert_eq!(actions(&by_age, &images), [K, K, D, K, K, K]);
    let by_count = policy(&[rule(1, selection, r#""countType": "imageCountMoreThan", "countNumber": 1"#)]);
    assert_eq!(actions(&by_count, &images), [K, K, D, K, K, K]);
    let got = run(&by_age, &images).unwrap();
    assert_eq!(got[0].2, "no rule selects this image");
    assert_eq!(got[2].2, "rule 1: expire, pushed more than 5 days ago");
    assert_eq!(got[5].2, "rule 1: keep, pushed 5 days ago or less");
}

#[test]
fn every_prefix_must_start_some_tag() {
    let p = policy(&[rule(
        1,
        r#""tagStatus": "tagged", "tagPrefixList": ["alpha", "beta"]"#,
        r#""countType": "imageCountMoreThan", "countNumber": 1"#,
    )]);
    let images = [img(&["alpha-1", "beta-1"], 3), img(&["alpha-2"], 2), img(&["xalpha", "xbeta"], 2), img(&["alpha-3", "beta-3"], 1)];
    assert_eq!(actions(&p, &images), [D, K, K, K]);
}

#[test]
fn any_selects_tagged_and_untagged_images() {
    // AWS "Filtering on all images", first example: A, B and C expire.
    let p = policy(&[rule(1, r#""tagStatus": "any""#, r#""countType": "imageCountMoreThan", "countNumber": 1"#)]);
    let images = [img(&["alpha-1"], 4), img(&["beta-1"], 3), img(&[], 2), img(&["alpha-2"], 1)];
    assert_eq!(actions(&p, &images), [D, D, D, K]);
}

#[test]
fn tagged_rules_never_select_untagged_images_and_untagged_rules_never_tagged() {
    let images = [img(&[], 30), img(&["v1"], 30), img(&[], 1)];
    let untagged =
        policy(&[rule(1, r#""tagStatus": "untagged""#, r#""countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7"#)]);
    assert_eq!(actions(&untagged, &images), [D, K, K]);
    let tagged = policy(&[rule(
        1,
        r#""tagStatus": "tagged", "tagPatternList": ["*"]"#,
        r#""countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7"#,
    )]);
    assert_eq!(actions(&tagged, &images), [K, D, K]);
}

#[test]
fn identified_images_still_count_in_lower_rules() {
    // Rule 1 identifies `keep-*` (and keeps all 10); rule 3 (any, keep 2) counts them, so
    // the two newest images overall are keep-* images and every other image expires.
    let p = policy(&[
        rule(1, r#""tagStatus": "tagged", "tagPatternList": ["keep-*"]"#, r#""countType": "imageCountMoreThan", "countNumber": 10"#),
        rule(3, r#""tagStatus": "any""#, r#""countType": "imageCountMoreThan", "countNumber": 2"#),
    ]);
    let images = [img(&["old"], 5), img(&["keep-a"], 4), img(&["mid"], 3), img(&["keep-b"], 2), img(&["keep-c"], 1)];
    assert_eq!(actions(&p, &images), [D, K, D, K, K]);
}

#[test]
fn an_image_expired_by_a_higher_rule_stays_expired_and_counts_below() {
    let p = policy(&[
        rule(
            1,
            r#""tagStatus": "tagged", "tagPatternList": ["tmp-*"]"#,
            r#""countType": "sinceImagePushed", "countUnit": "days", "countNumber": 1"#,
        ),
        rule(2, r#""tagStatus": "any""#, r#""countType": "imageCountMoreThan", "countNumber": 2"#),
    ]);
    // tmp-new is the newest image and expires under rule 1 (2 days old); it still takes one
    // of rule 2's two places, so only `b` is kept by rule 2.
    let images = [img(&["a"], 9), img(&["b"], 5), img(&["tmp-new"], 2)];
    let got = run(&p, &images).unwrap();
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [D, K, D]);
    assert_eq!(got[2].2, "rule 1: expire, pushed more than 1 day ago");
}

#[test]
fn since_pushed_expires_strictly_older_than_the_days() {
    let p = policy(&[rule(1, r#""tagStatus": "any""#, r#""countType": "sinceImagePushed", "countUnit": "days", "countNumber": 14"#)]);
    let exactly = Img { tags: &["exactly"], pushed_ago: Some(14 * DAY_SECS), created_ago: None };
    let just_over = Img { tags: &["over"], pushed_ago: Some(14 * DAY_SECS + 1), created_ago: None };
    let future = Img { tags: &["future"], pushed_ago: Some(-DAY_SECS), created_ago: None };
    assert_eq!(actions(&p, &[exactly, just_over, future]), [K, D, K]);
}

#[test]
fn equal_push_times_rank_the_later_listed_image_as_more_recent() {
    // Tags reach the plugin sorted by name; untagged manifests come after every tag.
    let p = policy(&[rule(1, r#""tagStatus": "any""#, r#""countType": "imageCountMoreThan", "countNumber": 1"#)]);
    assert_eq!(actions(&p, &[img(&["a"], 1), img(&["b"], 1)]), [D, K]);
    assert_eq!(actions(&p, &[img(&["b"], 1), img(&["a"], 1)]), [K, D]);
    assert_eq!(actions(&p, &[img(&[], 1), img(&["z"], 1)]), [K, D]);
}

#[test]
fn push_time_is_the_earliest_tag_push_else_the_build_time() {
    let p = policy(&[rule(1, r#""tagStatus": "any""#, r#""countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7"#)]);
    let built_long_ago = Img { tags: &["built"], pushed_ago: None, created_ago: Some(30 * DAY_SECS) };
    let pushed_recently = Img { tags: &["pushed"], pushed_ago: Some(DAY_SECS), created_ago: Some(30 * DAY_SECS) };
    assert_eq!(actions(&p, &[built_long_ago, pushed_recently]), [D, K]);
}

#[test]
fn an_identified_image_with_no_time_is_an_error_naming_the_fields() {
    let p =
        policy(&[rule(1, r#""tagStatus": "tagged", "tagPatternList": ["v*"]"#, r#""countType": "imageCountMoreThan", "countNumber": 1"#)]);
    let unknown = Img { tags: &["v1"], pushed_ago: None, created_ago: None };
    let err = run(&p, &[unknown]).unwrap_err();
    assert!(err.contains("(tag \"v1\") has neither pushed_at nor created_at, and rule 1 needs its push time"), "{err}");
    // Not identified by any rule: no time needed.
    let other = Img { tags: &["x1"], pushed_ago: None, created_ago: None };
    assert_eq!(actions(&p, &[other]), [K]);
}

#[test]
fn rules_apply_in_priority_order_not_document_order() {
    let p = policy(&[
        rule(20, r#""tagStatus": "any""#, r#""countType": "imageCountMoreThan", "countNumber": 1"#),
        rule(5, r#""tagStatus": "tagged", "tagPatternList": ["release-*"]"#, r#""countType": "imageCountMoreThan", "countNumber": 5"#),
    ]);
    assert_eq!(actions(&p, &[img(&["release-1"], 3), img(&["dev"], 2), img(&["release-2"], 1)]), [K, D, K]);
}

#[test]
fn no_rule_selects_means_keep() {
    let p = policy(&[rule(1, r#""tagStatus": "untagged""#, r#""countType": "imageCountMoreThan", "countNumber": 1"#)]);
    let got = run(&p, &[img(&["v1"], 100)]).unwrap();
    assert_eq!(got, [("v1".into(), K, "no rule selects this image".into())]);
}

/// `create` errors: (what, policy, substrings of the error).
#[test]
fn invalid_policies_are_refused_with_aws_wording() {
    let tagged = r#""tagStatus": "tagged", "tagPatternList": ["v*"]"#;
    let count1 = r#""countType": "imageCountMoreThan", "countNumber": 1"#;
    let table: Vec<(&str, String, &[&str])> = vec![
        (
            "countUnit with imageCountMoreThan",
            policy(&[rule(1, tagged, r#""countType": "imageCountMoreThan", "countUnit": "days", "countNumber": 1"#)]),
            &["rules[0] (rulePriority 1).selection.countUnit", "Lifecycle policy validation failure", "instance failed to match exactly one schema", "remove countUnit"],
        ),
        (
            "countNumber 0",
            policy(&[rule(1, tagged, r#""countType": "imageCountMoreThan", "countNumber": 0"#)]),
            &["selection.countNumber", "numeric instance is lower than the required minimum (minimum: 1, found: 0)"],
        ),
        ("countNumber -3", policy(&[rule(1, tagged, r#""countType": "sinceImagePushed", "countUnit": "days", "countNumber": -3"#)]), &["found: -3"]),
        ("countNumber 1.5", policy(&[rule(1, tagged, r#""countType": "imageCountMoreThan", "countNumber": 1.5"#)]), &["instance type (number)", "[\"integer\"]"]),
        (
            "both lists",
            policy(&[rule(1, r#""tagStatus": "tagged", "tagPatternList": ["v*"], "tagPrefixList": ["v"]"#, count1)]),
            &["rules[0] (rulePriority 1).selection", "tagPrefixList and tagPatternList cannot both be specified"],
        ),
        (
            "tagged without a list",
            policy(&[rule(1, r#""tagStatus": "tagged""#, count1)]),
            &["Must specify tagPrefixList or tagPatternList when tagStatus=TAGGED."],
        ),
        (
            "five wildcards",
            policy(&[rule(1, r#""tagStatus": "tagged", "tagPatternList": ["*a*b*c*d*"]"#, count1)]),
            &["tagPatternList", "\"*a*b*c*d*\" has 5 wildcards (*), but at most 4 are allowed per pattern"],
        ),
        (
            "duplicate priorities",
            policy(&[rule(3, tagged, count1), rule(3, r#""tagStatus": "untagged""#, count1)]),
            &["rules[1] (rulePriority 3)", "rulePriority 3 is used by more than one rule (rules[0] and rules[1])", "unique"],
        ),
        (
            "any not last",
            policy(&[rule(1, r#""tagStatus": "any""#, count1), rule(2, tagged, count1)]),
            &["rules[0] (rulePriority 1)", "Rule for tagStatus=ANY must have the lowest priority per storage class", "highest rulePriority value"],
        ),
        (
            "sinceImagePulled with expire",
            policy(&[rule(1, tagged, r#""countType": "sinceImagePulled", "countUnit": "days", "countNumber": 30"#)]),
            &["selection.countType", "sinceImagePulled can only be used with action type transition"],
        ),
        (
            "transition",
            r#"{"rules": [{"rulePriority": 1, "selection": {"tagStatus": "any", "countType": "sinceImagePulled", "countUnit": "days", "countNumber": 30}, "action": {"type": "transition", "targetStorageClass": "archive"}}]}"#.into(),
            &["rules[0] (rulePriority 1).action", "\"transition\"", "is not supported", "cannot archive"],
        ),
        (
            "archive storage class",
            policy(&[rule(1, r#""tagStatus": "any", "storageClass": "archive""#, r#""countType": "sinceImageTransitioned", "countUnit": "days", "countNumber": 90"#)]),
            &["selection.storageClass", "\"archive\" is not supported"],
        ),
        (
            "sinceImageTransitioned",
            policy(&[rule(1, r#""tagStatus": "any""#, r#""countType": "sinceImageTransitioned", "countUnit": "days", "countNumber": 90"#)]),
            &["sinceImageTransitioned", "not supported"],
        ),
        (
            "sinceImagePushed without countUnit",
            policy(&[rule(1, tagged, r#""countType": "sinceImagePushed", "countNumber": 3"#)]),
            &["object has missing required properties ([\"countUnit\"])"],
        ),
        (
            "countUnit hours",
            policy(&[rule(1, tagged, r#""countType": "sinceImagePushed", "countUnit": "hours", "countNumber": 3"#)]),
            &["selection.countUnit", "instance value (\"hours\") not found in enum (possible values: [\"days\"])"],
        ),
        ("unknown tagStatus", policy(&[rule(1, r#""tagStatus": "TAGGED""#, count1)]), &["selection.tagStatus", "instance value (\"TAGGED\") not found in enum"]),
        (
            "prefix list on untagged",
            policy(&[rule(1, r#""tagStatus": "untagged", "tagPrefixList": ["v"]"#, count1)]),
            &["tagPrefixList can only be specified when tagStatus=TAGGED, not UNTAGGED"],
        ),
        ("empty pattern list", policy(&[rule(1, r#""tagStatus": "tagged", "tagPatternList": []"#, count1)]), &["tagPatternList", "at least 1"]),
        ("unknown selection key", policy(&[rule(1, r#""tagStatus": "any", "tagFilter": "x""#, count1)]), &["not allowed by the schema: ([\"tagFilter\"])"]),
        ("missing action", r#"{"rules": [{"rulePriority": 1, "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1}}]}"#.into(), &["rules[0] (rulePriority 1)", "missing required properties ([\"action\"])"]),
        ("missing rulePriority", r#"{"rules": [{"selection": {}, "action": {"type": "expire"}}]}"#.into(), &["rules[0]", "[\"rulePriority\"]"]),
        ("rulePriority 0", policy(&[rule(0, tagged, count1)]), &["rules[0].rulePriority", "minimum: 1, found: 0"]),
        ("no rules", r#"{"rules": []}"#.into(), &["rules", "at least 1"]),
        ("not a policy", r#"{"rulez": []}"#.into(), &["missing required properties ([\"rules\"])"]),
        ("params not an object", "[]".into(), &["params: expected an ECR lifecycle policy"]),
        ("unknown action type", policy(&[rule(1, tagged, count1)]).replace("expire", "delete"), &["action.type", "not found in enum"]),
    ];
    for (what, policy, needles) in table {
        let err = EcrLifecycle::create(&policy).err().unwrap_or_else(|| panic!("{what}: accepted {policy}"));
        for needle in needles {
            assert!(err.contains(needle), "{what}: {err:?} does not contain {needle:?}");
        }
    }
}

#[test]
fn aws_documented_wildcard_limits() {
    // AWS: ["*test*1*2*3", "test*1*2*3*"] is valid, ["test*1*2*3*4*5*6"] is not.
    let ok = policy(&[rule(
        1,
        r#""tagStatus": "tagged", "tagPatternList": ["*test*1*2*3", "test*1*2*3*"]"#,
        r#""countType": "imageCountMoreThan", "countNumber": 1"#,
    )]);
    assert!(EcrLifecycle::create(&ok).is_ok());
    let bad = policy(&[rule(
        1,
        r#""tagStatus": "tagged", "tagPatternList": ["test*1*2*3*4*5*6"]"#,
        r#""countType": "imageCountMoreThan", "countNumber": 1"#,
    )]);
    assert!(EcrLifecycle::create(&bad).unwrap_err().contains("has 6 wildcards"));
}

#[test]
fn a_description_and_standard_storage_class_are_accepted() {
    let p = r#"{"rules": [{"rulePriority": 1, "description": "Keep only one untagged image, expire all others",
        "selection": {"tagStatus": "untagged", "storageClass": "standard", "countType": "imageCountMoreThan", "countNumber": 1},
        "action": {"type": "expire"}}]}"#;
    assert_eq!(actions(p, &[img(&[], 3), img(&[], 2), img(&["v1"], 9)]), [D, K, K]);
}
