//! Native, table-driven tests.

use super::*;

const NOW: Timestamp = Timestamp::from_unix_secs(1_800_000_000);
const MIN: i64 = 60;
/// The host's delete_timeout in these tests: GitLab's 250 s.
const DELETE_TIMEOUT: Duration = Duration::from_secs(250);

/// An operation of `kind` that started `secs_ago` seconds before `NOW` (`None`: never recorded).
fn op(kind: OperationKind, state: &str, secs_ago: Option<i64>, registry_status: Option<&str>) -> Operation {
    Operation {
        kind,
        state: state.to_owned(),
        started_at: secs_ago.map(|s| Timestamp::from_unix_secs(1_800_000_000 - s)),
        now: NOW,
        delete_timeout: DELETE_TIMEOUT,
        registry_status: registry_status.map(str::to_owned),
    }
}

fn stale(action: StaleAction, reason: &str) -> StaleVerdict {
    StaleVerdict::Stale { action, reason: reason.to_owned() }
}

const HEALTHY: StaleVerdict = StaleVerdict::Healthy;

#[test]
fn verdicts() {
    use OperationKind::*;
    use StaleAction::*;
    // Cleanup threshold with defaults: 250 s + 30 min = 34m10s.
    let cleanup_limit = 250 + 30 * MIN;
    let table: Vec<(&str, &str, Operation, StaleVerdict)> = vec![
        ("cleanup just started", "{}", op(Cleanup, "cleanup_ongoing", Some(MIN), None), HEALTHY),
        ("cleanup exactly at the threshold is healthy", "{}", op(Cleanup, "cleanup_ongoing", Some(cleanup_limit), None), HEALTHY),
        (
            "cleanup one second past the threshold",
            "{}",
            op(Cleanup, "cleanup_ongoing", Some(cleanup_limit + 1), None),
            stale(MarkUnfinished, "cleanup has run for 34m11s, longer than delete_timeout 4m10s + cleanup_grace 30m"),
        ),
        (
            "cleanup without a start time",
            "{}",
            op(Cleanup, "cleanup_ongoing", None, None),
            stale(MarkUnfinished, "cleanup has no recorded start time"),
        ),
        (
            "cleanup in any state",
            "{}",
            op(Cleanup, "cleanup_scheduled", Some(3 * 3600), None),
            stale(MarkUnfinished, "cleanup has run for 3h, longer than delete_timeout 4m10s + cleanup_grace 30m"),
        ),
        ("cleanup_grace", r#"{"cleanup_grace": "2h"}"#, op(Cleanup, "cleanup_ongoing", Some(2 * 3600), None), HEALTHY),
        (
            "cleanup_grace zero",
            r#"{"cleanup_grace": "0m"}"#,
            op(Cleanup, "cleanup_ongoing", Some(251), None),
            stale(MarkUnfinished, "cleanup has run for 4m11s, longer than delete_timeout 4m10s + cleanup_grace 0s"),
        ),
        ("cleanup started in the future (clock skew) is healthy", "{}", op(Cleanup, "cleanup_ongoing", Some(-3600), None), HEALTHY),
        ("deletion within 30 min", "{}", op(RepositoryDeletion, "delete_ongoing", Some(29 * MIN), None), HEALTHY),
        ("deletion exactly at 30 min is healthy", "{}", op(RepositoryDeletion, "delete_ongoing", Some(30 * MIN), None), HEALTHY),
        (
            "repository deletion past 30 min",
            "{}",
            op(RepositoryDeletion, "delete_ongoing", Some(30 * MIN + 1), None),
            stale(Reschedule, "repository deletion has run for 30m1s, longer than deletion_timeout 30m"),
        ),
        (
            "tag deletion past 30 min",
            "{}",
            op(TagDeletion, "delete_ongoing", Some(2 * 86_400 + 61), None),
            stale(Reschedule, "tag deletion has run for 2d1m1s, longer than deletion_timeout 30m"),
        ),
        (
            "deletion without a start time",
            "{}",
            op(TagDeletion, "delete_ongoing", None, None),
            stale(Reschedule, "tag deletion has no recorded start time"),
        ),
        (
            "deletion_timeout",
            r#"{"deletion_timeout": "10m"}"#,
            op(RepositoryDeletion, "delete_ongoing", Some(11 * MIN), None),
            stale(Reschedule, "repository deletion has run for 11m, longer than deletion_timeout 10m"),
        ),
        ("import within 1 h", "{}", op(Import, "importing", Some(59 * MIN), Some("import_in_progress")), HEALTHY),
        ("import exactly at 1 h is healthy", "{}", op(Import, "importing", Some(60 * MIN), Some("import_in_progress")), HEALTHY),
        (
            "import past 1 h, registry still importing: cancel",
            "{}",
            op(Import, "importing", Some(60 * MIN + 1), Some("import_in_progress")),
            stale(Cancel, "import has run for 1h1s, longer than import_timeout 1h; the registry reports import_in_progress"),
        ),
        (
            "pre-import past 1 h, registry still pre-importing: cancel",
            "{}",
            op(Import, "pre_importing", Some(2 * 3600), Some("pre_import_in_progress")),
            stale(Cancel, "import has run for 2h, longer than import_timeout 1h; the registry reports pre_import_in_progress"),
        ),
        (
            "import past 1 h, registry not importing: abort",
            "{}",
            op(Import, "importing", Some(2 * 3600), Some("import_failed")),
            stale(Abort, "import has run for 2h, longer than import_timeout 1h; the registry reports import_failed"),
        ),
        (
            "import past 1 h, registry done: abort",
            "{}",
            op(Import, "pre_import_done", Some(2 * 3600), Some("pre_import_complete")),
            stale(Abort, "import has run for 2h, longer than import_timeout 1h; the registry reports pre_import_complete"),
        ),
        (
            "import past 1 h, registry status unknown: abort",
            "{}",
            op(Import, "importing", Some(2 * 3600), None),
            stale(Abort, "import has run for 2h, longer than import_timeout 1h; the registry status is unknown"),
        ),
        (
            "import past 1 h, empty registry status counts as unknown",
            "{}",
            op(Import, "importing", Some(2 * 3600), Some("")),
            stale(Abort, "import has run for 2h, longer than import_timeout 1h; the registry status is unknown"),
        ),
        (
            "import without a start time",
            "{}",
            op(Import, "importing", None, Some("import_in_progress")),
            stale(Cancel, "import has no recorded start time; the registry reports import_in_progress"),
        ),
        ("import_timeout", r#"{"import_timeout": "3h"}"#, op(Import, "importing", Some(2 * 3600), Some("import_in_progress")), HEALTHY),
        ("explicit null is the default", r#"{"import_timeout": null}"#, op(Import, "importing", Some(59 * MIN), None), HEALTHY),
    ];
    for (what, params, operation, expect) in table {
        let rule = StaleTimeout::create(params).unwrap_or_else(|e| panic!("create({params}) failed: {e}"));
        assert_eq!(rule.check(&operation), expect, "{what}");
    }
}

#[test]
fn huge_values_do_not_overflow() {
    let rule = StaleTimeout::create(r#"{"cleanup_grace": "500000y"}"#).unwrap();
    let mut operation = op(OperationKind::Cleanup, "cleanup_ongoing", Some(100 * 365 * 86_400), None);
    operation.delete_timeout = Duration::MAX;
    assert_eq!(rule.check(&operation), HEALTHY);
    operation.started_at = Some(Timestamp::from_unix_micros(i64::MIN));
    operation.now = Timestamp::from_unix_micros(i64::MAX);
    operation.delete_timeout = Duration::ZERO;
    assert!(matches!(StaleTimeout::create("{}").unwrap().check(&operation), StaleVerdict::Stale { .. }));
}

#[test]
fn human_durations() {
    let table: &[(Duration, &str)] = &[
        (Duration::ZERO, "0s"),
        (Duration::from_micros(1), "1ms"),
        (Duration::from_millis(250), "250ms"),
        (Duration::from_secs(250), "4m10s"),
        (Duration::from_secs(3600), "1h"),
        (Duration::from_secs(86_400 + 3600 + 1), "1d1h1s"),
        (Duration::from_millis(1500), "1s"),
    ];
    for &(d, expect) in table {
        assert_eq!(human(d), expect, "{d:?}");
    }
}

#[test]
fn invalid_params_name_the_param_and_what_was_expected() {
    let table: &[(&str, &[&str])] = &[
        (r#"{"cleanup_grace": "soon"}"#, &["cleanup_grace: expected a duration such as", r#"got "soon""#]),
        (r#"{"cleanup_grace": "-5m"}"#, &[r#"cleanup_grace: expected a non-negative duration, got "-5m""#]),
        (r#"{"deletion_timeout": "0s"}"#, &[r#"deletion_timeout: expected a duration greater than zero, got "0s""#]),
        (r#"{"deletion_timeout": 1800}"#, &["deletion_timeout: expected a duration", "got 1800"]),
        (r#"{"import_timeout": "1 fortnight"}"#, &["import_timeout: expected a duration", r#"got "1 fortnight""#]),
        (r#"{"timeout": "1h"}"#, &[r#"unknown param "timeout""#, "cleanup_grace, deletion_timeout, import_timeout"]),
        ("null", &["params: expected a JSON object, got null"]),
    ];
    for (params, needles) in table {
        let err = StaleTimeout::create(params).expect_err(params);
        for needle in *needles {
            assert!(err.contains(needle), "create({params}) = {err:?}, missing {needle:?}");
        }
    }
}
