//! The plugin runtime against real components: hostile plugins fail cleanly with
//! their cause and produce no decisions, the sandbox holds, and the host keeps
//! serving afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tagwarden::model::{Action, Digest, Tag, TagList, Timestamp};
use tagwarden::recording::Recording;
use tagwarden::runtime::{FailureCause, PluginError, PluginKind, PluginLimits, PluginRuntime, RetentionPlugin, RuntimeConfig, Tier};

use crate::support;

fn tags(n: usize) -> TagList {
    let tags = (0..n).map(|i| Tag::new(format!("v{i}"), Digest::sha256_of(format!("image {i}").as_bytes()))).collect();
    TagList::new("group/app", tags, vec![]).unwrap()
}

fn now() -> Timestamp {
    Timestamp::parse_rfc3339("2026-11-20T12:00:00Z").unwrap()
}

fn hostile(mode: &str, limits: PluginLimits) -> Result<tagwarden::model::RetentionDecisions, PluginError> {
    let plugin = support::plugin("hostile-retention", limits).into_retention().unwrap();
    plugin.evaluate(&mode_params(mode), &tags(3), now())
}

/// The hostile plugin's params for `mode`.
fn mode_params(mode: &str) -> String {
    serde_json::json!({ "mode": mode }).to_string()
}

fn quick() -> PluginLimits {
    PluginLimits { timeout: Duration::from_millis(200), memory_bytes: 16 << 20, fuel: None }
}

/// After any failure the same runtime must still evaluate a well-behaved plugin.
fn assert_host_still_serves() {
    let ok = hostile("delete", PluginLimits::default()).expect("a good evaluation after a failure");
    assert_eq!(ok.tags_to_delete(), 3);
}

#[test]
fn infinite_loop_times_out_with_its_deadline() {
    let started = Instant::now();
    let err = hostile("loop", quick()).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.cause, FailureCause::Timeout(Duration::from_millis(200)), "{err}");
    assert!(err.to_string().starts_with("plugin hostile-retention: timed out"), "{err}");
    assert!(elapsed < Duration::from_secs(3), "deadline not enforced promptly: {elapsed:?}");
    assert_host_still_serves();
}

#[test]
fn memory_hog_hits_the_cap() {
    let err = hostile("hog", quick()).unwrap_err();
    assert_eq!(err.cause, FailureCause::MemoryExhausted(16 << 20), "{err}");
    assert!(err.to_string().contains("memory cap of 16 MiB"), "{err}");
    assert_host_still_serves();
}

#[test]
fn panic_is_reported_with_its_message() {
    let err = hostile("panic", quick()).unwrap_err();
    match &err.cause {
        FailureCause::Panic(m) => assert!(m.contains("hostile plugin panics on purpose"), "{m}"),
        other => panic!("expected a panic, got {other:?}: {err}"),
    }
    // The SDK names the call, and no advice the plugin cannot follow is passed on.
    let text = err.to_string();
    assert!(text.starts_with("plugin hostile-retention: panicked in `evaluate` at "), "{text}");
    assert!(text.contains("hostile-retention/src/lib.rs:"), "{text}");
    assert!(!text.contains("RUST_BACKTRACE"), "{text}");
    assert_host_still_serves();
}

/// The daemon makes backoff and stale decisions on its async worker threads. A plugin that
/// panics there (its panic message goes through WASI's blocking stderr flush, which blocks
/// on the tokio runtime) fails that call; it does not take the host down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_panics_on_an_async_worker_thread_fails_its_call_not_the_host() {
    use tagwarden::model::ErrorClass;
    use tagwarden::runtime::{BackoffDecision, Failure, OperationKind};
    let plugin = support::plugin("hostile-backoff", PluginLimits::default()).into_backoff().unwrap();
    let failure = |attempt| Failure {
        operation: OperationKind::Cleanup,
        attempt,
        class: ErrorClass::Transient,
        http_status: Some(503),
        retry_after: None,
        message: "503 Service Unavailable".into(),
        now: now(),
        seed: 7,
    };
    let params = r#"{"delay": "1s", "panic_from_attempt": 2}"#;
    assert_eq!(plugin.decide(params, &failure(1)).unwrap(), BackoffDecision::RetryAfter(Duration::from_secs(1)));
    let err = plugin.decide(params, &failure(2)).unwrap_err();
    assert!(matches!(&err.cause, FailureCause::Panic(m) if m.contains("attempt 2 (panic_from_attempt 2)")), "{err}");
    // The worker thread goes on with async work and plugin calls.
    tokio::task::yield_now().await;
    assert_eq!(plugin.decide(params, &failure(1)).unwrap(), BackoffDecision::RetryAfter(Duration::from_secs(1)));
}

#[test]
fn wrong_length_answer_is_rejected_whole() {
    let err = hostile("short", quick()).unwrap_err();
    match &err.cause {
        FailureCause::InvalidAnswer(m) => assert!(m.contains("2 tag verdicts for 3 tags"), "{m}"),
        other => panic!("expected an invalid answer, got {other:?}"),
    }
    assert_host_still_serves();
}

#[test]
fn plugin_errors_carry_captured_stderr() {
    let err = hostile("stderr", quick()).unwrap_err();
    assert_eq!(err.cause, FailureCause::Rejected("failed on purpose".into()));
    assert!(err.stderr.as_deref().unwrap_or_default().contains("hostile plugin: about to fail"), "{err:?}");
    assert!(err.to_string().contains("plugin stderr: hostile plugin: about to fail"), "{err}");
}

#[test]
fn rejected_params_are_invalid_params() {
    let err = hostile("reject", quick()).unwrap_err();
    assert_eq!(err.cause, FailureCause::InvalidParams("mode: rejected on purpose".into()));
    let plugin = support::plugin("hostile-retention", quick()).into_retention().unwrap();
    assert!(plugin.validate_params(&mode_params("reject")).is_err());
    assert!(plugin.validate_params(&mode_params("noop")).is_ok());
}

#[test]
fn sandbox_exposes_no_files_env_network_or_real_clock() {
    let decisions = hostile("probe", quick()).unwrap();
    let seen = &decisions.tag(0).reason;
    assert!(seen.contains("fs=denied"), "{seen}");
    assert!(seen.contains("file=denied"), "{seen}");
    assert!(seen.contains("env=0"), "{seen}");
    assert!(seen.contains("net=denied"), "{seen}");
    // The wall clock is frozen at the evaluation's `now`; the monotonic clock does not move.
    assert!(seen.contains(&format!("clock={}", now().unix_micros() / 1_000_000)), "{seen}");
    assert!(seen.contains("elapsed=0"), "{seen}");
    // Hash seeds come from fixed randomness: the same input gives the same answer.
    let again = hostile("probe", quick()).unwrap();
    assert_eq!(&again.tag(0).reason, seen, "two evaluations of the same input differ");
}

#[test]
fn file_that_is_not_wasm_is_refused() {
    let err = support::runtime().load_bytes("notes.txt", b"just some text", PluginLimits::default()).unwrap_err();
    assert!(matches!(err.cause, FailureCause::Load(ref m) if m.contains("not a WebAssembly file")), "{err}");
    assert!(err.to_string().starts_with("plugin notes.txt: cannot load"), "{err}");
}

#[test]
fn core_module_and_truncated_component_are_refused() {
    let err = support::runtime().load_bytes("core.wasm", b"\0asm\x01\0\0\0", PluginLimits::default()).unwrap_err();
    assert!(err.to_string().contains("core WebAssembly module, not a component"), "{err}");
    let bytes = std::fs::read(support::plugin_path("gitlab-retention")).unwrap();
    let err = support::runtime().load_bytes("cut.wasm", &bytes[..bytes.len() / 2], PluginLimits::default()).unwrap_err();
    assert!(err.to_string().contains("not a valid WebAssembly component"), "{err}");
}

#[test]
fn component_of_the_wrong_world_is_refused_naming_its_exports() {
    let err = support::runtime().load_file(&support::plugin_path("wrong-world"), PluginLimits::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("exports none of tagwarden:policy/retention"), "{msg}");
    assert!(msg.contains("wasi:cli/run"), "{msg}");
}

#[test]
fn plugin_of_another_kind_is_refused_where_retention_is_needed() {
    let backoff = support::plugin("exponential-backoff", PluginLimits::default());
    assert_eq!(backoff.meta().kind, PluginKind::Backoff);
    let err = backoff.into_retention().unwrap_err();
    assert!(err.to_string().contains("is a backoff plugin, but a retention plugin is needed"), "{err}");
}

#[test]
fn metadata_comes_from_the_plugin() {
    let p = support::plugin("gitlab-retention", PluginLimits::default());
    let meta = p.meta();
    assert_eq!((meta.name.as_str(), meta.kind, meta.contract_version.as_str()), ("gitlab-retention", PluginKind::Retention, "0.2.1"));
    assert_eq!(meta.sha256.len(), 64);
    assert!(!meta.description.is_empty());
}

#[test]
fn failures_and_successes_interleave_across_threads() {
    std::thread::scope(|s| {
        let handles: Vec<_> = ["loop", "delete", "panic", "delete", "hog", "delete"]
            .into_iter()
            .map(|mode| s.spawn(move || (mode, hostile(mode, quick()))))
            .collect();
        for h in handles {
            let (mode, result) = h.join().unwrap();
            match mode {
                "delete" => assert_eq!(result.unwrap().tags_to_delete(), 3),
                _ => assert!(result.is_err(), "{mode} should fail"),
            }
        }
    });
}

#[test]
fn large_lists_round_trip_in_order() {
    let list = tags(50_000);
    let plugin = support::plugin("hostile-retention", PluginLimits::default()).into_retention().unwrap();
    let d = plugin.evaluate(&mode_params("delete"), &list, now()).unwrap();
    assert_eq!(d.tag_count(), 50_000);
    assert!((0..d.tag_count()).all(|i| d.tag(i).action == Action::Delete));
}

#[test]
fn exponential_backoff_through_wasm_follows_gitlab_defaults() {
    use tagwarden::model::ErrorClass;
    use tagwarden::runtime::{BackoffDecision, Failure, OperationKind};
    let plugin = support::plugin("exponential-backoff", PluginLimits::default()).into_backoff().unwrap();
    let failure = |attempt, class| Failure {
        operation: OperationKind::RepositoryDeletion,
        attempt,
        class,
        http_status: Some(503),
        retry_after: None,
        message: "503 Service Unavailable".into(),
        now: now(),
        seed: 7,
    };
    // GitLab: 2^(failures before this one) minutes; give up at the 10th failure.
    assert_eq!(plugin.decide("{}", &failure(1, ErrorClass::Transient)).unwrap(), BackoffDecision::RetryAfter(Duration::from_secs(60)));
    assert_eq!(plugin.decide("{}", &failure(4, ErrorClass::Transient)).unwrap(), BackoffDecision::RetryAfter(Duration::from_secs(8 * 60)));
    assert!(matches!(plugin.decide("{}", &failure(10, ErrorClass::Transient)).unwrap(), BackoffDecision::GiveUp(_)));
    assert!(
        matches!(plugin.decide("{}", &failure(1, ErrorClass::Permanent)).unwrap(), BackoffDecision::GiveUp(r) if r.contains("permanent"))
    );
    let capped = plugin.decide(r#"{"cap": "5m"}"#, &failure(9, ErrorClass::Transient)).unwrap();
    assert_eq!(capped, BackoffDecision::RetryAfter(Duration::from_secs(300)));
    let jitter = r#"{"jitter": "full"}"#;
    assert_eq!(
        plugin.decide(jitter, &failure(3, ErrorClass::Transient)).unwrap(),
        plugin.decide(jitter, &failure(3, ErrorClass::Transient)).unwrap()
    );
    let err = plugin.decide(r#"{"factor": "fast"}"#, &failure(1, ErrorClass::Transient)).unwrap_err();
    assert!(matches!(err.cause, FailureCause::InvalidParams(ref m) if m.contains("factor")), "{err}");
}

#[test]
fn stale_timeout_through_wasm_follows_gitlab_rules() {
    use tagwarden::runtime::{Operation, OperationKind, StaleAction, StaleVerdict};
    let plugin = support::plugin("stale-timeout", PluginLimits::default()).into_stale().unwrap();
    let op = |kind, started_minutes_ago: Option<u64>| Operation {
        kind,
        state: "cleanup_ongoing".into(),
        started_at: started_minutes_ago.map(|m| now().saturating_sub(Duration::from_secs(m * 60))),
        now: now(),
        delete_timeout: Duration::from_secs(250),
        registry_status: None,
    };
    // Stale after delete_timeout (250 s) + 30 min.
    assert_eq!(plugin.check("{}", &op(OperationKind::Cleanup, Some(30))).unwrap(), StaleVerdict::Healthy);
    assert!(matches!(
        plugin.check("{}", &op(OperationKind::Cleanup, Some(40))).unwrap(),
        StaleVerdict::Stale { action: StaleAction::MarkUnfinished, .. }
    ));
    assert!(matches!(
        plugin.check("{}", &op(OperationKind::Cleanup, None)).unwrap(),
        StaleVerdict::Stale { action: StaleAction::MarkUnfinished, .. }
    ));
    assert!(matches!(
        plugin.check("{}", &op(OperationKind::RepositoryDeletion, Some(31))).unwrap(),
        StaleVerdict::Stale { action: StaleAction::Reschedule, .. }
    ));
}

#[test]
fn fuel_budget_stops_a_loop_deterministically() {
    let runtime = std::sync::Arc::new(
        tagwarden::runtime::PluginRuntime::new(tagwarden::runtime::RuntimeConfig {
            fuel: true,
            max_concurrent_evaluations: 4,
            ..Default::default()
        })
        .unwrap(),
    );
    let limits = PluginLimits { timeout: Duration::from_secs(30), memory_bytes: 16 << 20, fuel: Some(5_000_000) };
    let plugin = runtime.load_file(&support::plugin_path("hostile-retention"), limits).unwrap().into_retention().unwrap();
    let err = plugin.evaluate(&mode_params("loop"), &tags(3), now()).unwrap_err();
    assert_eq!(err.cause, FailureCause::FuelExhausted(5_000_000), "{err}");
    // A budget large enough for real work still succeeds.
    assert_eq!(plugin.evaluate(&mode_params("delete"), &tags(3), now()).unwrap().tags_to_delete(), 3);
}

/// A runtime of its own, so that counting warm instances does not race other tests.
fn private_plugin(name: &str, config: RuntimeConfig) -> RetentionPlugin {
    let runtime = Arc::new(PluginRuntime::new(config).unwrap());
    runtime.load_file(&support::plugin_path(name), quick()).unwrap().into_retention().unwrap()
}

#[test]
fn configured_policy_decides_like_fresh_stores_across_many_repositories() {
    let plugin = support::plugin("gitlab-retention", PluginLimits::default()).into_retention().unwrap();
    let params =
        r#"{"name_regex_delete": ".*", "name_regex_keep": "production-.*", "keep_n": 2, "older_than": "7d", "delete_untagged": true}"#;
    let policy = plugin.configure(params).unwrap();
    let mut repositories = 0;
    for case in std::fs::read_dir(support::workspace().join("tests/golden")).unwrap() {
        let case = case.unwrap().path();
        let recording = Recording::read(&case.join("recording.json")).unwrap();
        // Every recording, at its own time, through the one configured policy.
        let warm = policy.evaluate(&recording.list, recording.recorded_at).unwrap();
        let fresh = plugin.evaluate(params, &recording.list, recording.recorded_at).unwrap();
        assert_eq!(warm, fresh, "{}: a warm instance decided differently from a fresh store", case.display());
        repositories += 1;
    }
    assert!(repositories >= 20, "only {repositories} recordings");
}

#[test]
fn a_fresh_store_in_a_reused_slot_sees_nothing_of_the_previous_call() {
    // One pool slot and no warm instances: every evaluation reuses the same memory, which
    // the runtime keeps resident (`keep_resident_bytes`) and must reset.
    let plugin =
        private_plugin("hostile-retention", RuntimeConfig { max_concurrent_evaluations: 1, max_warm_instances: 0, ..Default::default() });
    let limits_ok = |mode: &str| plugin.evaluate(&mode_params(mode), &tags(3), now());
    for round in 0..3 {
        assert_eq!(limits_ok("fill").unwrap().tag(0).reason, "filled", "round {round}");
        let clean = limits_ok("residue").unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(clean.tag(0).reason, "no residue");
    }
}

#[test]
fn warm_instances_see_each_calls_time_and_still_nothing_else() {
    let plugin = private_plugin("hostile-retention", RuntimeConfig::default());
    let probe = plugin.configure(&mode_params("probe")).unwrap();
    for days in [0, 1, 30] {
        let at = Timestamp::from_unix_micros(now().unix_micros() + days * 86_400 * 1_000_000);
        let decisions = probe.evaluate(&tags(3), at).unwrap();
        assert_eq!(probe.warm_instances(), 1, "the instance is reused");
        let seen = &decisions.tag(0).reason;
        assert!(seen.contains(&format!("clock={}", at.unix_micros() / 1_000_000)), "day {days}: {seen}");
        for denied in ["fs=denied", "file=denied", "env=0", "net=denied", "elapsed=0"] {
            assert!(seen.contains(denied), "day {days}: {seen}");
        }
    }
}

#[test]
fn warm_instances_are_bounded_and_dropped_after_a_failure() {
    let plugin =
        private_plugin("hostile-retention", RuntimeConfig { max_warm_instances: 1, max_concurrent_evaluations: 4, ..Default::default() });
    let delete = plugin.configure(&mode_params("delete")).unwrap();
    assert_eq!(delete.warm_instances(), 1, "the instance that validated the params stays warm");
    assert_eq!(delete.evaluate(&tags(3), now()).unwrap().tags_to_delete(), 3);
    assert_eq!(delete.warm_instances(), 1);

    // The runtime's only warm slot is taken: another policy still works, in fresh stores.
    let noop = plugin.configure(&mode_params("noop")).unwrap();
    assert_eq!(noop.evaluate(&tags(3), now()).unwrap().tags_to_delete(), 0);
    assert_eq!(noop.warm_instances(), 0);
    drop(delete);
    noop.evaluate(&tags(3), now()).unwrap();
    assert_eq!(noop.warm_instances(), 1, "a dropped policy frees its warm slot");
    drop(noop);

    // A call that fails (here after writing to stderr) never leaves its instance warm.
    let failing = plugin.configure(&mode_params("stderr")).unwrap();
    assert_eq!(failing.warm_instances(), 1);
    let err = failing.evaluate(&tags(3), now()).unwrap_err();
    assert!(matches!(err.cause, FailureCause::Rejected(_)), "{err}");
    assert_eq!(failing.warm_instances(), 0);

    // Rejected params configure nothing.
    let err = plugin.configure(&mode_params("reject")).unwrap_err();
    assert!(matches!(err.cause, FailureCause::InvalidParams(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Time: no plugin call outlives its deadline by more than a small bound, whatever the plugin
// does. Waits run on a virtual clock and never block the host (`runtime/virtual_time.rs`).

/// How far past its deadline a plugin call may end in these tests. The mechanism ends a
/// call within one epoch tick (5 ms) of its deadline; measured (`--nocapture` prints each
/// figure) 8–30 ms over, with outliers to 115 ms at a load average of 5.5 on 2 cores. The
/// bound is generous because the tests run on shared machines, where a busy run queue
/// alone adds that much; a wait that blocked the host would take the full 60 s, or forever.
const PAST_DEADLINE: Duration = Duration::from_millis(500);

/// One `evaluate` call of `mode` with the `quick` limits: the answer and how long the call
/// held the host. The policy is created first (`configure`, its own call with its own
/// deadline), so what is timed is exactly one plugin call.
fn timed(mode: &str) -> (Result<tagwarden::model::RetentionDecisions, PluginError>, Duration) {
    let plugin = support::plugin("hostile-retention", quick()).into_retention().unwrap();
    let policy = plugin.configure(&mode_params(mode)).unwrap();
    let started = Instant::now();
    let result = policy.evaluate(&tags(3), now());
    let elapsed = started.elapsed();
    // Shown with --nocapture: the figures in docs/plugin-contract.md.
    eprintln!("{mode}: {elapsed:?} for a deadline of {:?}", quick().timeout);
    (result, elapsed)
}

#[test]
fn a_sleep_or_a_poll_on_a_timer_returns_at_once_on_the_virtual_clock() {
    for (mode, reason) in [("sleep", "slept 60s"), ("poll", "polled 60s")] {
        let (result, elapsed) = timed(mode);
        let decisions = result.unwrap_or_else(|e| panic!("{mode}: {e}"));
        // The plugin's own clock says the whole minute passed...
        assert_eq!(decisions.tag(0).reason, reason, "{mode}");
        // ...and the host was held for none of it.
        assert!(elapsed < quick().timeout + PAST_DEADLINE, "{mode} held the host for {elapsed:?}");
    }
}

/// The bound the issue sets: a call ends within its deadline plus this, whatever the guest does.
const WITHIN_DEADLINE: Duration = Duration::from_millis(50);

#[test]
fn sleeping_polling_or_spinning_forever_ends_within_the_deadline() {
    // `match-forever` spends its time in the host, matching names (`runtime/names.rs`).
    for mode in ["loop", "sleep-forever", "poll-forever", "match-forever"] {
        // Every call ends (bounded generously: the suite shares two cores with itself), and
        // the best of a few ends within deadline + 50 ms. Scheduling noise on a loaded machine
        // delays the thread that sees the call end, not the guest; the best run measures the
        // mechanism (an epoch tick every 5 ms).
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let (result, elapsed) = timed(mode);
            let err = result.unwrap_err();
            assert_eq!(err.cause, FailureCause::Timeout(quick().timeout), "{mode}: {err}");
            assert!(
                elapsed < quick().timeout + PAST_DEADLINE,
                "{mode} held the host for {elapsed:?}; its deadline is {:?}",
                quick().timeout
            );
            best = best.min(elapsed);
            if best < quick().timeout + WITHIN_DEADLINE {
                break;
            }
        }
        assert!(
            best < quick().timeout + WITHIN_DEADLINE,
            "{mode}: the best of 5 calls took {best:?}; its deadline is {:?}",
            quick().timeout
        );
    }
    assert_host_still_serves();
}

// ---------------------------------------------------------------------------------------------
// Output: what a plugin says is kept exactly, bounded, and escaped wherever it is printed.

#[test]
fn forged_reasons_are_kept_exactly_for_json() {
    let decisions = hostile("forge", quick()).unwrap();
    let reason = &decisions.tag(0).reason;
    assert!(reason.contains("\x1b[1;31mDELETE  production-v44") && reason.contains('\n'), "{reason:?}");
}

#[test]
fn a_reason_longer_than_the_contract_allows_is_an_invalid_answer() {
    let err = hostile("long-reason", quick()).unwrap_err();
    match &err.cause {
        FailureCause::InvalidAnswer(m) => assert_eq!(m, "rule 0's reason is 102400 bytes long; at most 1024 are allowed"),
        other => panic!("expected an invalid answer, got {other:?}"),
    }
}

#[test]
fn plugin_error_text_and_stderr_cannot_forge_terminal_output() {
    let err = hostile("stderr", quick()).unwrap_err();
    assert!(err.stderr.as_deref().unwrap_or_default().contains('\x1b'), "the captured stderr is exact: {err:?}");
    let shown = err.to_string();
    assert!(!shown.contains('\x1b'), "{shown:?}");
    assert!(shown.contains("plugin stderr: hostile plugin: about to fail\\u{1b}[2J"), "{shown:?}");
}

// ---------------------------------------------------------------------------------------------
// Traps say what happened.

#[test]
fn traps_name_their_cause() {
    for (mode, want) in [
        ("recurse", "trapped: stack overflow: recursion too deep or unbounded"),
        ("abort", "trapped: aborted (`std::process::abort`"),
        ("exit", "trapped: called exit(1); a plugin must return its answer"),
    ] {
        let err = hostile(mode, quick()).unwrap_err();
        assert!(matches!(err.cause, FailureCause::Trap(_)), "{mode}: {err:?}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("plugin hostile-retention: {want}")), "{mode}: {shown}");
        assert!(!shown.contains("backtrace"), "{mode}: {shown}");
    }
    assert_host_still_serves();
}

#[test]
fn running_out_of_fuel_says_what_to_change() {
    let runtime = Arc::new(PluginRuntime::new(RuntimeConfig { fuel: true, max_concurrent_evaluations: 2, ..Default::default() }).unwrap());
    let limits = PluginLimits { fuel: Some(1), ..quick() };
    // Even loading (which calls `info`) needs more than one unit.
    let err = runtime.load_file(&support::plugin_path("hostile-retention"), limits).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("ran out of fuel: it used its whole budget of 1 units"), "{shown}");
    assert!(shown.contains("raise the policy's `fuel`"), "{shown}");
}

#[test]
fn a_truncated_component_error_gives_the_offset() {
    let bytes = std::fs::read(support::plugin_path("gitlab-retention")).unwrap();
    let err = support::runtime().load_bytes("cut.wasm", &bytes[..bytes.len() / 2], PluginLimits::default()).unwrap_err();
    let shown = err.to_string();
    // The cause with its byte range, not just "failed to parse WebAssembly module".
    assert!(shown.contains(&format!("not a valid WebAssembly component ({} bytes", bytes.len() / 2)), "{shown}");
    assert!(shown.contains("is out of bounds (bound = "), "{shown}");
}

#[test]
fn a_plugin_file_that_is_a_device_or_a_pipe_is_refused_without_reading_it() {
    let err = support::runtime().load_file(std::path::Path::new("/dev/zero"), PluginLimits::default()).unwrap_err();
    assert!(err.to_string().contains("is a character device; expected a regular file"), "{err}");
}

/// A new version of a plugin the runtime compiled before (same code, new bytes: here a
/// custom section) compiles every function from the in-memory function cache; a rebuilt
/// plugin (the 0.1 build of gitlab-retention, then its 0.2 build) reuses what did not change.
/// Counted by the cache, not timed.
#[test]
fn a_new_version_compiles_only_the_functions_the_runtime_has_not_compiled_before() {
    let runtime = std::sync::Arc::new(PluginRuntime::new(RuntimeConfig::default()).unwrap());
    let bytes = std::fs::read(support::plugin_path("gitlab-retention")).unwrap();
    runtime.load_bytes("v1", &bytes, PluginLimits::default()).unwrap();
    // A component repeats some functions (equal bodies): those hit even the first time.
    let first = runtime.function_cache_stats();
    assert!(first.misses > 100, "{first:?}");

    let mut v2 = bytes.clone();
    v2.extend_from_slice(&[0, 5, 4, b'n', b'e', b'w', b'!']);
    let plugin = runtime.load_bytes("v2", &v2, PluginLimits::default()).unwrap();
    assert_ne!(plugin.meta().sha256, crate::support::plugin("gitlab-retention", PluginLimits::default()).meta().sha256);
    let second = runtime.function_cache_stats();
    // Cranelift looks every function up again, and all but a few hit (137 of 2,246 for
    // gitlab-retention when this was written: those are compiled again every time).
    let looked_up = first.hits + first.misses;
    let compiled_again = second.misses - first.misses;
    assert_eq!(second.hits + second.misses, 2 * looked_up, "{second:?}");
    assert!(compiled_again * 10 < looked_up, "at most a tenth compiled again: {compiled_again} of {looked_up}");

    let fresh = std::sync::Arc::new(PluginRuntime::new(RuntimeConfig::default()).unwrap());
    let old = std::fs::read(support::workspace().join("tests/fixtures/contract-0.1/gitlab-retention.wasm")).unwrap();
    fresh.load_bytes("0.1", &old, PluginLimits::default()).unwrap();
    let before = fresh.function_cache_stats();
    fresh.load_bytes("0.2", &bytes, PluginLimits::default()).unwrap();
    let after = fresh.function_cache_stats();
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    eprintln!("gitlab-retention 0.2 after 0.1: {hits} functions from the cache, {misses} compiled");
    assert!(hits > misses, "most of a rebuilt plugin is unchanged: {hits} hits, {misses} misses");
}

/// A plugin loaded from the compile cache is not compiled, so it leaves no functions in the
/// function cache; with `warm_function_cache` (the daemon's setting when it has a plugin
/// directory) the runtime compiles it once more in the background, so a new version after
/// a restart also compiles only what changed. Without the setting nothing is compiled in the
/// background (commands that load and exit). Counted, not timed.
#[test]
fn a_plugin_loaded_from_the_compile_cache_is_compiled_again_in_the_background_to_fill_the_function_cache() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(support::plugin_path("gitlab-retention")).unwrap();
    let config = RuntimeConfig { compile_cache: Some(cache.path().to_owned()), ..RuntimeConfig::default() };
    // The compile cache gets the component.
    let first = std::sync::Arc::new(PluginRuntime::new(config.clone()).unwrap());
    assert!(!first.load_bytes("v1", &bytes, PluginLimits::default()).unwrap().meta().from_compile_cache);
    assert_eq!(first.wait_for_background_compiles(), 0, "off unless asked for");

    // A restart without the setting: loaded from the compile cache, nothing compiled.
    let plain = std::sync::Arc::new(PluginRuntime::new(config.clone()).unwrap());
    assert!(plain.load_bytes("v1", &bytes, PluginLimits::default()).unwrap().meta().from_compile_cache);
    assert_eq!(plain.wait_for_background_compiles(), 0);
    assert_eq!(plain.function_cache_stats().misses + plain.function_cache_stats().hits, 0);

    // With it: compiled once in the background, however often it is loaded.
    let daemon = std::sync::Arc::new(PluginRuntime::new(RuntimeConfig { warm_function_cache: true, ..config }).unwrap());
    assert!(daemon.load_bytes("v1", &bytes, PluginLimits::default()).unwrap().meta().from_compile_cache);
    assert!(daemon.load_bytes("v1 again", &bytes, PluginLimits::default()).unwrap().meta().from_compile_cache);
    assert_eq!(daemon.wait_for_background_compiles(), 1);
    let warmed = daemon.function_cache_stats();
    assert!(warmed.misses > 100, "{warmed:?}");

    // A new version then compiles from the cache, as on a daemon that compiled v1 itself.
    let mut v2 = bytes.clone();
    v2.extend_from_slice(&[0, 5, 4, b'n', b'e', b'w', b'2']);
    assert!(!daemon.load_bytes("v2", &v2, PluginLimits::default()).unwrap().meta().from_compile_cache);
    let after = daemon.function_cache_stats();
    let looked_up = warmed.hits + warmed.misses;
    let compiled = after.misses - warmed.misses;
    assert!(compiled * 10 < looked_up, "at most a tenth compiled: {compiled} of {looked_up}");
    // v2 was compiled, not loaded from the compile cache: nothing more to warm.
    assert_eq!(daemon.wait_for_background_compiles(), 1);
}

/// A runtime with tiered compilation (the daemon's setting with a plugin directory) and a
/// compile cache in `cache`.
fn tiered(cache: &std::path::Path) -> Arc<PluginRuntime> {
    let config = RuntimeConfig { tiered_compilation: true, compile_cache: Some(cache.to_owned()), ..RuntimeConfig::default() };
    Arc::new(PluginRuntime::new(config).unwrap())
}

/// Winch is the baseline compiler on x86_64 only; elsewhere tiered compilation does nothing.
const BASELINE: Tier = if cfg!(target_arch = "x86_64") { Tier::Baseline } else { Tier::Optimized };

/// With tiered compilation a plugin the runtime has never compiled serves at once with
/// baseline code; the background compile then switches its calls, and the instances its
/// configured policy keeps warm, to optimized code, with the same decisions. The compile
/// cache holds both: a start before the tier-up serves the baseline code without compiling,
/// and a start after it the optimized code.
#[test]
fn a_new_plugin_serves_with_baseline_code_until_its_optimized_code_is_compiled_in_the_background() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = tiered(cache.path());
    let hold = runtime.hold_background_compiles();
    let plugin = runtime.load_file(&support::plugin_path("gitlab-retention"), PluginLimits::default()).unwrap();
    assert_eq!((plugin.meta().loaded_tier, plugin.tier(), plugin.meta().from_compile_cache), (BASELINE, BASELINE, false));
    let retention = plugin.into_retention().unwrap();
    let params = r#"{"name_regex_delete": ".*", "name_regex_keep": "production-.*", "keep_n": 2, "older_than": "7d"}"#;
    let policy = retention.configure(params).unwrap();
    let recordings: Vec<Recording> = std::fs::read_dir(support::workspace().join("tests/golden"))
        .unwrap()
        .map(|case| Recording::read(&case.unwrap().path().join("recording.json")).unwrap())
        .collect();
    let baseline: Vec<_> = recordings.iter().map(|r| policy.evaluate(&r.list, r.recorded_at).unwrap()).collect();
    assert_eq!(policy.warm_instance_tiers(), vec![BASELINE]);

    // A daemon stopped before the tier-up: its successor loads the baseline code from the
    // compile cache (no compile before serving) and compiles the optimized code itself.
    let stopped_early = tiered(cache.path());
    let _held = stopped_early.hold_background_compiles();
    let plugin = stopped_early.load_file(&support::plugin_path("gitlab-retention"), PluginLimits::default()).unwrap();
    assert_eq!((plugin.tier(), plugin.meta().from_compile_cache), (BASELINE, BASELINE == Tier::Baseline));

    drop(hold);
    let expected_compiles = u64::from(BASELINE == Tier::Baseline);
    assert_eq!(runtime.wait_for_background_compiles(), expected_compiles);
    assert_eq!(retention.plugin().tier(), Tier::Optimized);
    assert_eq!(retention.plugin().meta().loaded_tier, BASELINE, "what it was loaded with does not change");
    let entries = std::fs::read_dir(cache.path()).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "cwasm"));
    assert_eq!(entries.count(), 1 + usize::from(BASELINE == Tier::Baseline), "one compile cache entry per tier");
    let optimized: Vec<_> = recordings.iter().map(|r| policy.evaluate(&r.list, r.recorded_at).unwrap()).collect();
    assert_eq!(baseline, optimized, "baseline and optimized code decided differently");
    assert_eq!(policy.warm_instance_tiers(), vec![Tier::Optimized], "the baseline instance is dropped, not kept warm");

    // A restart: the optimized code comes from the compile cache; nothing to compile.
    drop(stopped_early);
    let restarted = tiered(cache.path());
    let again = restarted.load_file(&support::plugin_path("gitlab-retention"), PluginLimits::default()).unwrap();
    assert_eq!((again.tier(), again.meta().from_compile_cache), (Tier::Optimized, true));
    assert_eq!(restarted.wait_for_background_compiles(), 0);

    // Commands that load and exit compile optimized code at once.
    let plain = Arc::new(PluginRuntime::new(RuntimeConfig::default()).unwrap());
    let plugin = plain.load_file(&support::plugin_path("gitlab-retention"), PluginLimits::default()).unwrap();
    assert_eq!((plugin.meta().loaded_tier, plugin.tier()), (Tier::Optimized, Tier::Optimized));
    assert_eq!(plain.wait_for_background_compiles(), 0);
}

/// Baseline code runs in the same sandbox with the same limits as optimized code: the
/// deadline, the memory cap, the fuel budget, stack overflow and panics are caught alike,
/// and a copy of the plugin with other limits shares the baseline code.
#[test]
fn baseline_code_is_held_to_the_same_limits() {
    let cache = tempfile::tempdir().unwrap();
    let config =
        RuntimeConfig { tiered_compilation: true, fuel: true, compile_cache: Some(cache.path().to_owned()), ..RuntimeConfig::default() };
    let runtime = Arc::new(PluginRuntime::new(config).unwrap());
    let _hold = runtime.hold_background_compiles();
    let plugin = runtime.load_file(&support::plugin_path("hostile-retention"), quick()).unwrap();
    let evaluate = |mode: &str, limits: PluginLimits| {
        let copy = plugin.with_limits(limits).into_retention().unwrap();
        let result = copy.evaluate(&mode_params(mode), &tags(3), now());
        assert_eq!(copy.plugin().tier(), BASELINE, "the call ran baseline code");
        result
    };
    let started = Instant::now();
    assert_eq!(evaluate("loop", quick()).unwrap_err().cause, FailureCause::Timeout(Duration::from_millis(200)));
    assert!(started.elapsed() < Duration::from_secs(3), "deadline not enforced promptly: {:?}", started.elapsed());
    assert_eq!(evaluate("hog", quick()).unwrap_err().cause, FailureCause::MemoryExhausted(16 << 20));
    let fuel = PluginLimits { fuel: Some(5_000_000), timeout: Duration::from_secs(30), ..quick() };
    assert_eq!(evaluate("loop", fuel).unwrap_err().cause, FailureCause::FuelExhausted(5_000_000));
    let err = evaluate("recurse", quick()).unwrap_err();
    assert!(matches!(&err.cause, FailureCause::Trap(m) if m.contains("stack overflow")), "{err}");
    let err = evaluate("panic", quick()).unwrap_err();
    assert!(matches!(&err.cause, FailureCause::Panic(m) if m.contains("hostile plugin panics on purpose")), "{err}");
    assert_eq!(evaluate("delete", quick()).unwrap().tags_to_delete(), 3);
    #[cfg(target_os = "linux")]
    assert_background_thread_is_niced();
}

/// The background compile thread (started by the tier-up queued above, and waiting on the
/// hold) runs at nice 10: it yields to passes but is not starved by them.
#[cfg(target_os = "linux")]
fn assert_background_thread_is_niced() {
    let nice_of_compile_threads = || -> Vec<i64> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| {
                let task = task.ok()?.path();
                let comm = std::fs::read_to_string(task.join("comm")).ok()?;
                // `stat` is `pid (comm) state …`; the nice value is the 19th field.
                let stat = std::fs::read_to_string(task.join("stat")).ok()?;
                let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                comm.starts_with("tagwarden-compi").then(|| fields[16].parse().unwrap())
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = nice_of_compile_threads();
    // Other tests' runtimes have compile threads too: this one's is among them.
    while !seen.contains(&10) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        seen = nice_of_compile_threads();
    }
    assert!(seen.contains(&10), "compile threads' nice values: {seen:?}");
    assert!(seen.iter().all(|&n| n == 10 || n == 0), "{seen:?}");
}
