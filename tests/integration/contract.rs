//! Contract versions: plugins built for `tagwarden:policy@0.1.0` keep working unchanged
//! (the 0.1.0 builds in `tests/fixtures/contract-0.1/` are kept for this, forever), a 0.2
//! policy gets only the columns it declares, and a component built for a version this
//! host does not accept is refused with both versions named.

use std::path::PathBuf;
use std::time::Duration;

use tagwarden::model::{Digest, ErrorClass, Tag, TagList, Timestamp, UntaggedManifest};
use tagwarden::runtime::{
    BackoffDecision, Columns, FailureCause, Operation, OperationKind, Plugin, PluginKind, PluginLimits, StaleVerdict,
};

use crate::support;

/// A plugin as built for contract 0.1.0 (by tagwarden-plugin-sdk 0.1.0, before 0.2 existed).
fn contract_0_1(name: &str) -> Plugin {
    let path: PathBuf = support::workspace().join("tests/fixtures/contract-0.1").join(format!("{name}.wasm"));
    support::runtime().load_file(&path, PluginLimits::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn at(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// 60 tags over 20 images with every column filled in, and two untagged manifests.
fn list() -> TagList {
    let tags = (0..60)
        .map(|i| {
            let mut tag = Tag::new(format!("v1.{}.{i}", i % 4), Digest::sha256_of(format!("image {}", i / 3).as_bytes()));
            tag.created_at = Some(Timestamp::from_unix_micros(1_700_000_000_000_000 + i * 3_600_000_000));
            tag.pushed_at = (i % 5 != 0).then(|| Timestamp::from_unix_micros(1_760_000_000_000_000 + i * 86_400_000_000));
            tag.last_pulled_at = (i % 2 == 0).then(|| Timestamp::from_unix_micros(1_763_000_000_000_000));
            tag.size_bytes = Some(1000 + i as u64);
            tag
        })
        .collect();
    let untagged = (0..2)
        .map(|i| UntaggedManifest {
            digest: Digest::sha256_of(format!("untagged {i}").as_bytes()),
            created_at: Some(at("2025-01-01T00:00:00Z")),
            pushed_at: None,
        })
        .collect();
    TagList::new("group/app", tags, untagged).unwrap()
}

#[test]
fn a_retention_plugin_built_for_0_1_decides_exactly_as_its_0_2_build() {
    let old = contract_0_1("gitlab-retention");
    let new = support::plugin("gitlab-retention", PluginLimits::default());
    assert_eq!((old.meta().contract_version.as_str(), new.meta().contract_version.as_str()), ("0.1.0", "0.2.1"));
    assert_eq!((old.meta().kind, old.meta().name.as_str()), (PluginKind::Retention, "gitlab-retention"));
    let (old, new) = (old.into_retention().unwrap(), new.into_retention().unwrap());
    let now = at("2026-01-01T00:00:00Z");
    for params in [
        r#"{"name_regex_delete": ".*", "keep_n": 5}"#,
        r#"{"name_regex_delete": "v1\\.[12]\\..*", "older_than": "30d", "delete_untagged": true}"#,
        r#"{"name_regex": ".*", "name_regex_keep": ".*\\.1\\..*", "keep_n": 2, "older_than": "7d"}"#,
    ] {
        let (a, b) = (old.evaluate(params, &list(), now).unwrap(), new.evaluate(params, &list(), now).unwrap());
        assert!(b.tags_to_delete() > 0, "the case deletes something: {params}");
        assert_eq!(a, b, "params {params}");
        // A policy configured once (kept warm) serves both versions the same way.
        assert_eq!(old.configure(params).unwrap().evaluate(&list(), now).unwrap(), b);
    }
    // The 0.1 plugin cannot declare: it is sent everything. The 0.2 build declares the
    // two times it reads, so the host leaves out digests, sizes, pull times and media types.
    assert_eq!(old.reads("{}").unwrap(), Columns::all());
    assert_eq!(new.reads("{}").unwrap(), Columns::PUSHED_AT | Columns::CREATED_AT);
}

/// gitlab-retention as built for contract 0.2.0 (tagwarden-plugin-sdk 0.2.0), which
/// matches names inside the plugin; its 0.2.1 build has the host match them (`names`).
fn contract_0_2_0_gitlab_retention() -> Plugin {
    let path = support::workspace().join("tests/fixtures/contract-0.2/gitlab-retention.wasm");
    support::runtime().load_file(&path, PluginLimits::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_retention_plugin_built_for_0_2_0_decides_exactly_as_its_0_2_1_build_that_matches_names_in_the_host() {
    let old = contract_0_2_0_gitlab_retention();
    let new = support::plugin("gitlab-retention", PluginLimits::default());
    assert_eq!((old.meta().contract_version.as_str(), new.meta().contract_version.as_str()), ("0.2.0", "0.2.1"));
    let (old, new) = (old.into_retention().unwrap(), new.into_retention().unwrap());
    let now = at("2026-01-01T00:00:00Z");
    for params in [
        r#"{"name_regex_delete": ".*", "keep_n": 5}"#,
        r#"{"name_regex_delete": "v1\\.[12]\\..*", "name_regex_keep": ".*\\.1[0-9]", "older_than": "30d", "delete_untagged": true}"#,
        // A top-level alternation: anchored at one end each, as GitLab does.
        r#"{"name_regex": "v1\\.0|7", "keep_n": 1}"#,
        // Unicode word boundaries: no lazy DFA, the host's matcher falls back to the regex crate.
        r#"{"name_regex_delete": ".*\\b3\\b.*|v1\\.1\\..*"}"#,
        // Over the host's size limit for a pattern (1 MiB), within the regex crate's: the
        // host refuses it and the plugin matches it itself.
        r#"{"name_regex_delete": "(?:v1\\.[23]\\.[0-9]+|\\w{100})", "keep_n": 3}"#,
    ] {
        let (a, b) = (old.evaluate(params, &list(), now).unwrap(), new.evaluate(params, &list(), now).unwrap());
        assert!(b.tags_to_delete() > 0 && b.tags_to_delete() < 60, "the case deletes some, not all: {params}");
        assert_eq!(a, b, "params {params}");
        // Warm, the host matches each evaluation's own names.
        let configured = new.configure(params).unwrap();
        for _ in 0..2 {
            assert_eq!(configured.evaluate(&list(), now).unwrap(), a, "params {params}, configured");
        }
    }
    // An invalid regex gets the same message from both builds.
    let params = r#"{"name_regex_delete": "v1.("}"#;
    let (a, b) = (old.validate_params(params).unwrap_err(), new.validate_params(params).unwrap_err());
    assert_eq!(a.cause, b.cause);
}

#[test]
fn backoff_and_stale_plugins_built_for_0_1_answer_exactly_as_their_0_2_builds() {
    let (old, new) = (contract_0_1("exponential-backoff"), support::plugin("exponential-backoff", PluginLimits::default()));
    assert_eq!((old.meta().contract_version.as_str(), old.meta().kind), ("0.1.0", PluginKind::Backoff));
    let (old, new) = (old.into_backoff().unwrap(), new.into_backoff().unwrap());
    for (attempt, class, status) in
        [(1, ErrorClass::Transient, Some(503)), (4, ErrorClass::RateLimited, Some(429)), (2, ErrorClass::Permanent, Some(405))]
    {
        let failure = tagwarden::runtime::Failure {
            operation: OperationKind::TagDeletion,
            attempt,
            class,
            http_status: status,
            retry_after: Some(Duration::from_secs(3)),
            message: "registry said no".into(),
            now: at("2026-01-01T00:00:00Z"),
            seed: 42 + u64::from(attempt),
        };
        let (a, b) = (old.decide("{}", &failure).unwrap(), new.decide("{}", &failure).unwrap());
        assert_eq!(a, b, "{failure:?}");
        if class == ErrorClass::Transient {
            assert!(matches!(a, BackoffDecision::RetryAfter(_)), "{a:?}");
        }
    }

    let (old, new) = (contract_0_1("stale-timeout"), support::plugin("stale-timeout", PluginLimits::default()));
    assert_eq!((old.meta().contract_version.as_str(), old.meta().kind), ("0.1.0", PluginKind::Stale));
    let (old, new) = (old.into_stale().unwrap(), new.into_stale().unwrap());
    for started_hours_ago in [0, 1, 48] {
        let now = at("2026-01-01T12:00:00Z");
        let op = Operation {
            kind: OperationKind::Cleanup,
            state: "cleanup_ongoing".into(),
            started_at: Some(Timestamp::from_unix_micros(now.unix_micros() - started_hours_ago * 3_600_000_000)),
            now,
            delete_timeout: Duration::from_secs(300),
            registry_status: None,
        };
        let (a, b) = (old.check("{}", &op).unwrap(), new.check("{}", &op).unwrap());
        assert_eq!(a, b, "{op:?}");
        assert_eq!(matches!(a, StaleVerdict::Healthy), started_hours_ago == 0, "{a:?}");
    }
}

#[test]
fn reading_a_column_the_policy_did_not_declare_fails_naming_it_and_deletes_nothing() {
    let plugin = support::plugin("hostile-retention", PluginLimits::default()).into_retention().unwrap();
    let params = r#"{"mode": "undeclared"}"#;
    assert_eq!(plugin.reads(params).unwrap(), Columns::empty());
    let err = plugin.evaluate(params, &list(), at("2026-01-01T00:00:00Z")).unwrap_err();
    let FailureCause::Panic(message) = &err.cause else { panic!("expected a panic, got {err}") };
    assert!(message.contains("read Tag::digest, a column this policy does not declare"), "{message}");
    assert!(message.contains("add `Columns::DIGESTS`"), "{message}");
    // The panic names the plugin's own line, not the SDK's.
    assert!(message.contains("hostile-retention/src/lib.rs"), "{message}");
}

#[test]
fn a_component_built_for_a_contract_version_this_host_does_not_accept_is_refused_naming_both() {
    let patched = built_for_contract_0_9(&std::fs::read(support::plugin_path("semver-lines")).unwrap());
    let err = support::runtime().load_bytes("semver-lines.wasm", &patched, PluginLimits::default()).unwrap_err();
    let FailureCause::Load(message) = &err.cause else { panic!("expected a load error, got {err}") };
    assert!(message.contains("was built for tagwarden:policy@0.9.1"), "{message}");
    assert!(message.contains("this host accepts tagwarden:policy@0.1.x (up to 0.1.0) and @0.2.x (up to 0.2.1)"), "{message}");
    assert!(message.contains("rebuild the plugin against tagwarden-plugin-sdk 0.2"), "{message}");
}

/// `component` as if built for contract 0.9.0. The version is spelled in the component's
/// import and export names: every `@0.2.` becomes `@0.9.` (the same length, so the
/// binary stays valid), the patch kept.
pub fn built_for_contract_0_9(component: &[u8]) -> Vec<u8> {
    let mut patched = component.to_vec();
    let needle = b"@0.2.";
    let mut replaced = 0;
    for i in 0..patched.len().saturating_sub(needle.len() - 1) {
        if &patched[i..i + needle.len()] == needle {
            patched[i + 3] = b'9';
            replaced += 1;
        }
    }
    assert!(replaced >= 2, "the component names its contract version (found {replaced})");
    patched
}
