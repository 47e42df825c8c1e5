//! Native, table-driven tests.

use super::*;
use tagwarden_plugin_sdk::{OperationKind, Timestamp};

const MIN: u64 = 60;

fn failure(attempt: u32, class: ErrorClass) -> Failure {
    Failure {
        operation: OperationKind::RepositoryDeletion,
        attempt,
        class,
        http_status: None,
        retry_after: None,
        message: String::new(),
        now: Timestamp::from_unix_secs(1_800_000_000),
        seed: 42,
    }
}

fn retry(secs: u64) -> BackoffDecision {
    BackoffDecision::RetryAfter(Duration::from_secs(secs))
}

fn give_up(reason: &str) -> BackoffDecision {
    BackoffDecision::GiveUp(reason.to_owned())
}

fn decide(params: &str, f: &Failure) -> BackoffDecision {
    ExponentialBackoff::create(params).unwrap_or_else(|e| panic!("create({params}) failed: {e}")).decide(f)
}

#[test]
fn decisions() {
    let transient = |attempt| failure(attempt, ErrorClass::Transient);
    let with = |mut f: Failure, status: u16, message: &str| {
        f.http_status = Some(status);
        f.message = message.to_owned();
        f
    };
    let retry_after = |mut f: Failure, secs: u64| {
        f.retry_after = Some(Duration::from_secs(secs));
        f
    };
    let table: Vec<(&str, &str, Failure, BackoffDecision)> = vec![
        ("GitLab default: attempt 1 waits 1 min", "{}", transient(1), retry(MIN)),
        ("GitLab default: attempt 2 waits 2 min", "{}", transient(2), retry(2 * MIN)),
        ("GitLab default: attempt 3 waits 4 min", "{}", transient(3), retry(4 * MIN)),
        ("GitLab default: attempt 9 waits 256 min", "{}", transient(9), retry(256 * MIN)),
        ("GitLab default: attempt 10 gives up", "{}", transient(10), give_up("failed 10 times, max_attempts is 10")),
        (
            "give-up reason carries the last error",
            "{}",
            with(transient(11), 500, "internal error"),
            give_up("failed 11 times, max_attempts is 10: HTTP 500: internal error"),
        ),
        ("attempt 0 counts as the first", "{}", transient(0), retry(MIN)),
        ("initial_delay", r#"{"initial_delay": "30s"}"#, transient(3), retry(120)),
        ("factor", r#"{"factor": 3}"#, transient(3), retry(9 * MIN)),
        ("factor 1 is constant", r#"{"factor": 1}"#, transient(7), retry(MIN)),
        (
            "fractional factor",
            r#"{"initial_delay": "10s", "factor": 1.5}"#,
            transient(3),
            BackoffDecision::RetryAfter(Duration::from_millis(22_500)),
        ),
        ("cap", r#"{"cap": "5m"}"#, transient(4), retry(5 * MIN)),
        ("below the cap", r#"{"cap": "5m"}"#, transient(3), retry(4 * MIN)),
        ("cap equal to initial_delay", r#"{"cap": "1m"}"#, transient(5), retry(MIN)),
        ("max_attempts", r#"{"max_attempts": 3}"#, transient(3), give_up("failed 3 times, max_attempts is 3")),
        ("max_attempts 1 never retries", r#"{"max_attempts": 1}"#, transient(1), give_up("failed 1 times, max_attempts is 1")),
        ("huge attempt saturates at the cap", r#"{"cap": "24h", "max_attempts": 4294967295}"#, transient(u32::MAX - 1), retry(24 * 3600)),
        (
            "huge attempt without a cap saturates at the maximum",
            r#"{"max_attempts": 4294967295}"#,
            transient(5000),
            BackoffDecision::RetryAfter(MAX_DELAY),
        ),
        ("huge factor saturates", r#"{"factor": 1e308, "cap": "1h"}"#, transient(3), retry(3600)),
        ("Retry-After longer than the delay wins", "{}", retry_after(transient(1), 300), retry(300)),
        ("Retry-After shorter than the delay is not a reason to hurry", "{}", retry_after(transient(3), 10), retry(4 * MIN)),
        ("Retry-After wins over the cap", r#"{"cap": "2m"}"#, retry_after(transient(1), 600), retry(600)),
        ("Retry-After ignored when told", r#"{"honor_retry_after": false}"#, retry_after(transient(1), 300), retry(MIN)),
        ("rate limited is retried like any other", "{}", failure(2, ErrorClass::RateLimited), retry(2 * MIN)),
        (
            "permanent gives up at once, with the message",
            "{}",
            with(failure(1, ErrorClass::Permanent), 405, "deletes are disabled"),
            give_up("permanent error, not retried: HTTP 405: deletes are disabled"),
        ),
        ("permanent without status or message", "{}", failure(1, ErrorClass::Permanent), give_up("permanent error, not retried")),
        ("permanent retried when told", r#"{"give_up_on_permanent": false}"#, failure(2, ErrorClass::Permanent), retry(2 * MIN)),
        ("unauthorized is retried by default", "{}", failure(1, ErrorClass::Unauthorized), retry(MIN)),
        (
            "unauthorized gives up when told",
            r#"{"give_up_on_unauthorized": true}"#,
            with(failure(1, ErrorClass::Unauthorized), 403, "denied"),
            give_up("unauthorized, not retried (give_up_on_unauthorized): HTTP 403: denied"),
        ),
        ("explicit null is the default", r#"{"jitter": null, "factor": null}"#, transient(2), retry(2 * MIN)),
    ];
    for (what, params, f, expect) in table {
        assert_eq!(decide(params, &f), expect, "{what}");
    }
}

#[test]
fn jitter_stays_in_range_and_is_deterministic() {
    let delay = |params: &str, seed: u64, attempt: u32| {
        let mut f = failure(attempt, ErrorClass::Transient);
        f.seed = seed;
        match decide(params, &f) {
            BackoffDecision::RetryAfter(d) => d,
            other => panic!("{other:?}"),
        }
    };
    // (params, attempt, low, high) for the jittered delay of that attempt, whose base is 4 min.
    let table: &[(&str, u32, u64, u64)] = &[
        (r#"{"jitter": "none"}"#, 3, 4 * MIN, 4 * MIN),
        (r#"{"jitter": "full"}"#, 3, 0, 4 * MIN),
        (r#"{"jitter": "equal"}"#, 3, 2 * MIN, 4 * MIN),
    ];
    for &(params, attempt, low, high) in table {
        let draws: Vec<Duration> = (0..500).map(|seed| delay(params, seed, attempt)).collect();
        assert!(draws.iter().all(|d| (Duration::from_secs(low)..=Duration::from_secs(high)).contains(d)), "{params}");
        if low != high {
            let distinct: std::collections::HashSet<_> = draws.iter().collect();
            assert!(distinct.len() > 400, "{params}: jitter should spread, got {} distinct", distinct.len());
            let mean = draws.iter().map(|d| d.as_secs_f64()).sum::<f64>() / draws.len() as f64;
            let mid = (low + high) as f64 / 2.0;
            assert!((mean - mid).abs() < (high - low) as f64 * 0.1, "{params}: mean {mean}, expected about {mid}");
        }
        assert_eq!(delay(params, 7, attempt), delay(params, 7, attempt), "{params}: same failure, same answer");
    }
    assert_ne!(delay(r#"{"jitter": "full"}"#, 7, 3), delay(r#"{"jitter": "full"}"#, 7, 4));
    // Retry-After is a floor even after jitter.
    let mut f = failure(3, ErrorClass::RateLimited);
    f.retry_after = Some(Duration::from_secs(200));
    for seed in 0..100 {
        f.seed = seed;
        let BackoffDecision::RetryAfter(d) = decide(r#"{"jitter": "full"}"#, &f) else { panic!() };
        assert!(d >= Duration::from_secs(200));
    }
}

#[test]
fn uniform_up_to_covers_the_bounds() {
    let mut rng = SeededRng::new(1);
    assert!((0..100).all(|_| uniform_up_to(&mut rng, 0) == 0));
    let draws: Vec<u64> = (0..1000).map(|_| uniform_up_to(&mut rng, 3)).collect();
    assert!((0..=3).all(|v| draws.contains(&v)));
    // The widest range neither overflows nor collapses.
    let wide: std::collections::HashSet<u64> = (0..10).map(|_| uniform_up_to(&mut rng, u64::MAX)).collect();
    assert!(wide.len() > 1);
}

#[test]
fn invalid_params_name_the_param_and_what_was_expected() {
    let table: &[(&str, &[&str])] = &[
        (r#"{"initial_delay": "soon"}"#, &["initial_delay: expected a duration such as", r#"got "soon""#]),
        (r#"{"initial_delay": "60"}"#, &["initial_delay: expected a duration", r#"got "60""#]),
        (r#"{"initial_delay": "0s"}"#, &[r#"initial_delay: expected a duration greater than zero, got "0s""#]),
        (r#"{"initial_delay": 60}"#, &["initial_delay: expected a duration", "got 60"]),
        (r#"{"factor": 0.5}"#, &["factor: expected a number of at least 1, got 0.5"]),
        (r#"{"factor": "2"}"#, &[r#"factor: expected a number of at least 1, got "2""#]),
        (r#"{"cap": "-1h"}"#, &[r#"cap: expected a non-negative duration, got "-1h""#]),
        (r#"{"cap": "30s"}"#, &[r#"cap: expected a duration of at least initial_delay, got "30s""#]),
        (r#"{"max_attempts": 0}"#, &["max_attempts: expected an integer from 1 to 4294967295, got 0"]),
        (r#"{"max_attempts": 2.5}"#, &["max_attempts: expected an integer from 1", "got 2.5"]),
        (r#"{"max_attempts": 4294967296}"#, &["max_attempts: expected an integer", "got 4294967296"]),
        (r#"{"jitter": "half"}"#, &[r#"jitter: expected one of "none", "full", "equal", got "half""#]),
        (r#"{"jitter": true}"#, &["jitter: expected one of", "got true"]),
        (r#"{"honor_retry_after": "yes"}"#, &[r#"honor_retry_after: expected true or false, got "yes""#]),
        (r#"{"give_up_on_permanent": 0}"#, &["give_up_on_permanent: expected true or false, got 0"]),
        (r#"{"give_up_on_unauthorized": "no"}"#, &["give_up_on_unauthorized: expected true or false"]),
        (
            r#"{"delay": "1m"}"#,
            &[
                r#"unknown param "delay""#,
                "initial_delay, factor, cap, max_attempts, jitter, honor_retry_after, give_up_on_permanent, give_up_on_unauthorized",
            ],
        ),
        ("[1]", &["params: expected a JSON object, got [1]"]),
        ("{", &["params: expected a JSON object, could not parse it"]),
    ];
    for (params, needles) in table {
        let err = ExponentialBackoff::create(params).expect_err(params);
        for needle in *needles {
            assert!(err.contains(needle), "create({params}) = {err:?}, missing {needle:?}");
        }
    }
}

#[test]
fn durations() {
    let table: &[(&str, Result<u64, &str>)] = &[
        ("500ms", Ok(500)),
        ("30s", Ok(30_000)),
        ("1m", Ok(60_000)),
        ("2h", Ok(7_200_000)),
        ("24h", Ok(86_400_000)),
        ("1h 30m", Ok(5_400_000)),
        ("1 minute", Ok(60_000)),
        ("1d", Ok(86_400_000)),
        ("-1m", Err("a non-negative duration")),
    ];
    for &(text, expect) in table {
        assert_eq!(params::parse_duration(text).map(|d| d.as_millis() as u64), expect, "{text}");
    }
    for bad in ["", "m", "1", "1 fortnight", "1.5m", "1m!"] {
        assert!(params::parse_duration(bad).is_err(), "{bad:?}");
    }
}
