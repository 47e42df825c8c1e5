use super::*;
use tagwarden_plugin_sdk::{Action, UntaggedManifest};

fn tag(name: &'static str, digest: &'static str) -> Tag<'static> {
    Tag::new(name, digest)
}

fn untagged(digest: &'static str) -> UntaggedManifest<'static> {
    UntaggedManifest::new(digest)
}

#[test]
fn tags_group_by_digest_in_first_listing_order_then_untagged() {
    let input = RetentionInput {
        repository: "r",
        now: Timestamp::from_unix_secs(0),
        tags: vec![tag("a", "sha256:2"), tag("b", "sha256:1"), tag("c", "sha256:2")].into(),
        untagged: vec![untagged("sha256:3"), untagged("sha256:1"), untagged("sha256:3")],
    };
    let images = group(&input);
    let shape: Vec<(&str, Vec<usize>, Vec<usize>)> = images.images.iter().map(|i| (i.digest, i.tags.clone(), i.untagged.clone())).collect();
    assert_eq!(shape, [("sha256:2", vec![0, 2], vec![]), ("sha256:1", vec![1], vec![1]), ("sha256:3", vec![], vec![0, 2])]);

    let decisions = images.spread(&input, vec![Verdict::delete("x"), Verdict::keep("y"), Verdict::delete("z")]);
    let tags: Vec<Action> = decisions.tags.iter().map(|v| v.action).collect();
    let untagged: Vec<&str> = decisions.untagged.iter().map(|v| v.reason.as_ref()).collect();
    assert_eq!(tags, [Action::Delete, Action::Keep, Action::Delete]);
    assert_eq!(untagged, ["z", "y", "z"]);
}

#[test]
fn earliest_prefers_tags_and_falls_back_to_the_untagged_listing() {
    let at = Timestamp::from_unix_secs;
    let a = tag("a", "sha256:1").with_pushed_at(at(20));
    let b = tag("b", "sha256:1").with_pushed_at(at(10));
    let input = RetentionInput {
        repository: "r",
        now: at(0),
        tags: vec![a, b, tag("c", "sha256:2")].into(),
        untagged: vec![UntaggedManifest::new("sha256:3").with_pushed_at(at(5))],
    };
    let images = group(&input);
    let pushed = |i: usize| images.earliest(&input, &images.images[i], |t| t.pushed_at(), |u| u.pushed_at());
    assert_eq!((pushed(0), pushed(1), pushed(2)), (Some(at(10)), None, Some(at(5))));
    assert_eq!(images.latest(&input, &images.images[0], |t| t.pushed_at()), Some(at(20)));
}
