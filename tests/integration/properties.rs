//! Property tests for every parser of outside input: the config, the SDK's params readers,
//! recordings, durations and timestamps (registry JSON answers: `host/src/registry/media.rs`).
//! For each: valid input round-trips, invalid input is an error that says where, and
//! nothing panics on any input. `cargo xtask fuzz` runs a longer mutation campaign over the
//! example files (docs/benchmarks.md, "Reliability").

use std::time::Duration;

use proptest::prelude::*;
use tagwarden::config::Config;
use tagwarden::model::{Digest, MediaType, Tag, TagList, Timestamp, UntaggedManifest};
use tagwarden::recording::Recording;
use tagwarden_plugin_sdk::params::{Params, Value, parse_duration};

fn config() -> ProptestConfig {
    // Enough to find what the fuzz campaign finds in minutes, fast enough for every run.
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Timestamps

/// 0001-01-01 to 9999-12-31, the years RFC 3339 can write.
fn micros() -> impl Strategy<Value = i64> {
    -62_135_596_800_000_000i64..253_402_300_799_999_999i64
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn timestamps_round_trip(us in micros()) {
        let t = Timestamp::from_unix_micros(us);
        prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
    }

    #[test]
    fn a_timestamp_separator_other_than_t_is_refused(us in micros(), sep in any::<char>().prop_filter("not T", |c| !matches!(c, 'T' | 't'))) {
        let text = Timestamp::from_unix_micros(us).to_rfc3339();
        let bad = format!("{}{sep}{}", &text[..10], &text[11..]);
        let err = Timestamp::parse_rfc3339(&bad).unwrap_err().to_string();
        prop_assert!(err.contains("separated by `T`"), "{bad:?}: {err}");
    }

    #[test]
    fn timestamp_parsing_never_panics_and_accepts_only_t(s in "\\PC{0,40}|[0-9:TZ.+-]{0,30}") {
        if Timestamp::parse_rfc3339(&s).is_ok() {
            prop_assert!(matches!(s.as_bytes()[10], b'T' | b't'), "{s:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durations (the SDK's, which plugins use for their params)

const UNITS: &[(&str, u64)] =
    &[("ms", 1_000), ("s", 1_000_000), ("min", 60_000_000), ("h", 3_600_000_000), ("d", 86_400_000_000), ("w", 604_800_000_000)];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn durations_round_trip(parts in prop::collection::vec((0u64..100_000, 0..UNITS.len(), prop::sample::select(vec!["", " ", ", ", ","])), 1..5)) {
        let text: String = parts.iter().map(|(n, u, sep)| format!("{n}{}{sep}", UNITS[*u].0)).collect();
        let want: u64 = parts.iter().map(|(n, u, _)| n * UNITS[*u].1).sum();
        prop_assert_eq!(parse_duration(&text), Ok(Duration::from_micros(want)), "{}", text);
    }

    #[test]
    fn duration_parsing_never_panics(s in "\\PC{0,30}|[0-9a-z ,-]{0,20}") {
        if let Ok(d) = parse_duration(&s) {
            // Accepted text has a digit and a unit letter for every part.
            prop_assert!(s.chars().any(|c| c.is_ascii_digit()) && s.chars().any(|c| c.is_ascii_alphabetic()), "{s:?} -> {d:?}");
        }
    }

    #[test]
    fn a_negative_or_unitless_duration_is_refused(n in 0u64..1_000_000) {
        prop_assert_eq!(parse_duration(&format!("-{n}s")), Err("a non-negative duration"));
        prop_assert!(parse_duration(&n.to_string()).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// The SDK's params readers

const KEYS: &[&str] = &["a", "keep_n", "older_than", "name_regex", "x"];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn params_round_trip(map in prop::collection::btree_map(prop::sample::select(KEYS), json_value(), 0..KEYS.len())) {
        let text = serde_json::to_string(&map).unwrap();
        let params = Params::parse(&text, KEYS).unwrap();
        for (k, v) in &map {
            prop_assert_eq!(params.get(k), (!v.is_null()).then_some(v), "{}", k);
        }
    }

    #[test]
    fn a_param_given_twice_is_refused_naming_it(key in prop::sample::select(KEYS), a in json_value(), b in json_value()) {
        let text = format!("{{{key:?}: {a}, {key:?}: {b}}}");
        let err = Params::parse(&text, KEYS).unwrap_err();
        prop_assert!(err.contains(&format!("the key {key:?} is given twice at line 1")), "{text}: {err}");
    }

    #[test]
    fn an_unknown_param_is_named(key in "[a-z_]{1,10}".prop_filter("unknown", |k| !KEYS.contains(&k.as_str()))) {
        let err = Params::parse(&format!("{{{key:?}: 1}}"), KEYS).unwrap_err();
        prop_assert!(err.starts_with(&format!("unknown param {key:?}")), "{err}");
    }

    #[test]
    fn integer_params_are_checked_against_their_range(n in any::<u64>(), lo in 0u32..100, span in 0u32..1000) {
        let range = lo..=lo + span;
        let params = Params::parse(&format!("{{\"a\": {n}}}"), KEYS).unwrap();
        match params.integer("a", range.clone(), lo) {
            Ok(v) => prop_assert!(u64::from(v) == n && range.contains(&v)),
            Err(e) => {
                prop_assert!(u32::try_from(n).map_or(true, |v| !range.contains(&v)));
                prop_assert_eq!(e, format!("a: expected an integer from {} to {}, got {n}", range.start(), range.end()));
            }
        }
    }

    #[test]
    fn params_parsing_never_panics(text in "\\PC{0,60}|[{}\":,a-z0-9 \\[\\]]{0,40}") {
        if let Ok(p) = Params::parse(&text, KEYS) {
            for k in KEYS {
                let _ = (p.bool(k, false), p.integer(k, 0..=9, 0), p.duration(k, Duration::ZERO, true), p.string(k));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recordings

const MEDIA_TYPES: &[&str] = &["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json", "text/x-custom"];

fn time() -> impl Strategy<Value = Option<Timestamp>> {
    prop::option::of(micros().prop_map(Timestamp::from_unix_micros))
}

fn tag() -> impl Strategy<Value = Tag> {
    (
        "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}",
        any::<u16>(),
        time(),
        time(),
        time(),
        prop::option::of(0u64..1 << 50),
        prop::option::of(0..MEDIA_TYPES.len()),
    )
        .prop_map(|(name, image, created_at, pushed_at, last_pulled_at, size_bytes, media)| Tag {
            name,
            digest: Digest::sha256_of(&image.to_le_bytes()),
            created_at,
            pushed_at,
            last_pulled_at,
            size_bytes,
            media_type: media.map(|m| MediaType::new(MEDIA_TYPES[m])),
        })
}

fn tag_list() -> impl Strategy<Value = TagList> {
    (
        "[a-z]{1,8}(/[a-z0-9-]{1,8}){0,2}",
        prop::collection::vec(tag(), 0..12),
        prop::collection::btree_map(any::<u32>(), (time(), time()), 0..4),
    )
        .prop_filter_map("unique tag names", |(repository, tags, untagged)| {
            let untagged = untagged
                .into_iter()
                .map(|(id, (created_at, pushed_at))| UntaggedManifest {
                    digest: Digest::sha256_of(format!("untagged {id}").as_bytes()),
                    created_at,
                    pushed_at,
                })
                .collect();
            TagList::new(repository, tags, untagged).ok()
        })
}

fn written(r: &Recording) -> String {
    let mut out = Vec::new();
    r.write_to(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn recordings_round_trip(list in tag_list(), at in micros()) {
        let r = Recording { recorded_at: Timestamp::from_unix_micros(at), list };
        let text = written(&r);
        prop_assert_eq!(Recording::parse(&text).unwrap(), r);
    }

    #[test]
    fn data_after_a_recording_is_an_error_with_its_position(list in tag_list(), junk in "[\\[{,x0-9\"]{1,8}") {
        let text = written(&Recording { recorded_at: Timestamp::from_unix_micros(0), list }) + &junk;
        let err = format!("{:#}", Recording::parse(&text).unwrap_err());
        prop_assert!(err.contains("data after the end of the recording's JSON object"), "{err}");
        prop_assert!(err.split(':').next().is_some_and(|line| line.parse::<usize>().is_ok()), "no line:column: {err}");
    }

    #[test]
    fn a_cut_or_damaged_recording_is_an_error_naming_a_position(list in tag_list(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let text = written(&Recording { recorded_at: Timestamp::from_unix_micros(0), list });
        let at = cut.index(text.len());
        let mut damaged = text.as_bytes()[..at].to_vec();
        damaged.push(byte);
        damaged.extend_from_slice(&text.as_bytes()[at + 1..]);
        for candidate in [text[..at].to_owned(), String::from_utf8_lossy(&damaged).into_owned()] {
            if let Err(e) = Recording::parse(&candidate) {
                let e = format!("{e:#}");
                let positioned = e.split(':').next().is_some_and(|line| line.parse::<usize>().is_ok());
                prop_assert!(positioned || e.starts_with("not a tagwarden recording") || e.starts_with('`') || e.contains("repository"), "{e}");
            }
        }
    }

    #[test]
    fn recording_parsing_never_panics(text in "\\PC{0,200}") {
        let _ = Recording::parse(&text);
    }
}

// ---------------------------------------------------------------------------------------------
// The config

#[derive(Debug, Clone)]
struct PolicyFields {
    name: String,
    pattern: String,
    memory_mib: u64,
    timeout_ms: u64,
    fuel: Option<u64>,
    keep_n: u32,
}

fn policy_fields() -> impl Strategy<Value = PolicyFields> {
    ("[a-z][a-z0-9-]{0,12}", "[a-z]{1,8}(/\\*|/\\*\\*)?", 1..=4096u64, 1..=3_600_000u64, prop::option::of(1..=u64::MAX >> 1), any::<u32>())
        .prop_map(|(name, pattern, memory_mib, timeout_ms, fuel, keep_n)| PolicyFields {
            name,
            pattern,
            memory_mib,
            timeout_ms,
            fuel,
            keep_n,
        })
}

fn config_text(p: &PolicyFields) -> String {
    let fuel = p.fuel.map(|f| format!("fuel = {f}\n")).unwrap_or_default();
    format!(
        "[registry]\nurl = \"http://127.0.0.1:5000\"\n\n[[policy]]\nname = \"{}\"\nrepositories = [\"{}\"]\nplugin = \"gitlab-retention\"\n\
         memory_mib = {}\ntimeout = \"{}ms\"\n{fuel}params = {{ keep_n = {} }}\n",
        p.name, p.pattern, p.memory_mib, p.timeout_ms, p.keep_n
    )
}

/// Invalid edits of a valid config, each with the key path its error must name.
fn bad_edit() -> impl Strategy<Value = (String, String, &'static str)> {
    prop_oneof![
        (4097..=u64::MAX >> 1).prop_map(|n| ("memory_mib = ".to_owned(), format!("memory_mib = {n}\n#"), "policy[0].memory_mib")),
        Just(("memory_mib = ".to_owned(), "memory_mib = 0\n#".to_owned(), "policy[0].memory_mib")),
        prop::sample::select(vec!["0s", "0ms", "0h"]).prop_map(|z| (
            "timeout = ".to_owned(),
            format!("timeout = \"{z}\"\n#"),
            "policy[0].timeout"
        )),
        Just(("name = ".to_owned(), "name = \"\"\n#".to_owned(), "policy[0].name")),
        Just(("repositories = ".to_owned(), "repositories = [\"\"]\n#".to_owned(), "policy[0].repositories[0]")),
        Just(("url = ".to_owned(), "url = \"ftp://x\"\n#".to_owned(), "registry.url")),
        "[a-z]{3,8}".prop_map(|k| ("plugin = ".to_owned(), format!("{k}x = 1\nplugin = "), "unknown field")),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn configs_round_trip(p in policy_fields()) {
        let c = Config::parse(&config_text(&p)).unwrap();
        let got = &c.policies[0];
        prop_assert_eq!(&got.name, &p.name);
        prop_assert_eq!(&got.repositories, &vec![p.pattern.clone()]);
        prop_assert_eq!(got.limits().memory_bytes as u64, p.memory_mib << 20);
        prop_assert_eq!(got.timeout, Duration::from_millis(p.timeout_ms));
        prop_assert_eq!(got.fuel, p.fuel);
        let params: Value = serde_json::from_str(&got.params_json()).unwrap();
        prop_assert_eq!(&params["keep_n"], &Value::from(p.keep_n));
    }

    #[test]
    fn invalid_configs_name_the_key(p in policy_fields(), (find, replace, key) in bad_edit()) {
        let text = config_text(&p).replacen(&find, &replace, 1);
        let err = format!("{:#}", Config::parse(&text).unwrap_err());
        prop_assert!(err.contains(key), "{err}\n{text}");
    }

    #[test]
    fn config_parsing_never_panics(p in policy_fields(), at in any::<prop::sample::Index>(), insert in "\\PC{0,6}") {
        let text = config_text(&p);
        let at = (0..=at.index(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let mutated = format!("{}{insert}{}", &text[..at], &text[at..]);
        if let Ok(c) = Config::parse(&mutated) {
            // Whatever was accepted is within the validated bounds.
            for p in &c.policies {
                prop_assert!((1..=4096).contains(&p.memory_mib) && !p.timeout.is_zero() && !p.name.is_empty());
                prop_assert!(p.repositories.iter().all(|r| !r.is_empty()));
            }
        }
    }
}
