//! Native tests that fail where production would.
//!
//! A plugin's trait methods are plain Rust, so most of its tests run natively, fast. This
//! module spares those tests the boilerplate and holds them to the host's rules:
//!
//! - [`tag`] and [`input`] build tags from names, with [`fake_digest`]s that are valid
//!   `sha256:<64 hex>` digests (recordings and the host require them);
//! - [`check`] applies the host's checks to an answer (one verdict per tag and untagged
//!   manifest, at most [`MAX_RULES`](crate::MAX_RULES) distinct (action, reason) pairs,
//!   reasons of at most [`MAX_REASON_BYTES`](crate::MAX_REASON_BYTES)), through the same
//!   encoding the plugin's answer takes in Wasm;
//! - [`evaluate`] runs `create`, `evaluate` and [`check`] in one call, like the host,
//!   with only the columns the policy declares in [`RetentionPolicy::reads`](crate::RetentionPolicy::reads)
//!   (reading another panics, as it would in the plugin);
//! - [`deleted`] lists the names of the tags an answer deletes, for short assertions.
//!
//! An example is at [`evaluate`] (with the `retention` feature).

use crate::{Duration, Timestamp};

/// The `now` of [`input`]: 2026-01-01T00:00:00Z.
pub const NOW: Timestamp = Timestamp::from_unix_secs(1_767_225_600);

/// The repository of [`input`].
pub const REPOSITORY: &str = "group/app";

/// `n` days.
pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// A valid, made-up digest: `sha256:` and 64 lowercase hex digits derived from `seed`.
/// The same seed gives the same digest, different seeds (in practice) different ones,
/// so tags built from equal seeds share a manifest. Not a real sha256 of anything.
pub fn fake_digest(seed: &str) -> String {
    let mut digest = String::with_capacity(71);
    digest.push_str("sha256:");
    // Four FNV-1a hashes with different offsets: 256 bits that depend on every byte.
    for lane in 0u64..4 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ lane.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for &b in seed.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        digest.push_str(&format!("{h:016x}"));
    }
    digest
}

#[cfg(feature = "retention")]
pub use self::retention::*;

#[cfg(feature = "retention")]
mod retention {
    use super::{NOW, REPOSITORY, fake_digest};
    use crate::{Action, Decisions, MAX_REASON_BYTES, RetentionInput, RetentionPolicy, Tag};

    /// A tag named `name` pointing at [`fake_digest`]`(name)`, every other field unknown;
    /// add what the test needs with [`Tag::with_pushed_at`] and the like. (The digest text
    /// is leaked so that the tag can borrow it: a few bytes per call, for tests.)
    pub fn tag(name: &str) -> Tag<'_> {
        Tag::new(name, Box::leak(fake_digest(name).into_boxed_str()))
    }

    /// Tags named `names`, each as [`tag`] builds it.
    pub fn tags<'a>(names: &[&'a str]) -> Vec<Tag<'a>> {
        names.iter().map(|name| tag(name)).collect()
    }

    /// The input the host would send for `tags` of [`REPOSITORY`] at [`NOW`]: tags sorted
    /// by name, no untagged manifest (add some with [`RetentionInput::with_untagged`]).
    pub fn input<'a>(tags: impl IntoIterator<Item = Tag<'a>>) -> RetentionInput<'a> {
        RetentionInput::new(REPOSITORY, NOW, tags)
    }

    /// Checks `decisions` as the host checks a plugin's answer for `input`, through the
    /// encoding it takes in Wasm: one verdict per tag and per untagged manifest, at most
    /// 256 distinct (action, reason) pairs, reasons of at most 1024 bytes. The error is
    /// what the host would report.
    pub fn check(input: &RetentionInput<'_>, decisions: &Decisions) -> Result<(), String> {
        if decisions.tags.len() != input.tags.len() {
            return Err(format!("answer has {} tag verdicts for {} tags", decisions.tags.len(), input.tags.len()));
        }
        if decisions.untagged.len() != input.untagged.len() {
            return Err(format!(
                "answer has {} untagged verdicts for {} untagged manifests",
                decisions.untagged.len(),
                input.untagged.len()
            ));
        }
        let encoded = crate::retention::wire::encode(decisions.clone())?;
        if let Some((i, rule)) = encoded.rules.iter().enumerate().find(|(_, r)| r.reason.len() > MAX_REASON_BYTES) {
            return Err(format!("rule {i}'s reason is {} bytes long; at most {MAX_REASON_BYTES} are allowed", rule.reason.len()));
        }
        Ok(())
    }

    /// Creates `P` with `params` and evaluates `input`, then [`check`]s the answer: what
    /// the host does with a plugin, natively.
    ///
    /// ```
    /// use tagwarden_plugin_sdk::testing::{self, days, NOW};
    /// use tagwarden_plugin_sdk::{Columns, Decisions, RetentionInput, RetentionPolicy, Verdict};
    ///
    /// struct DeleteOld;
    /// impl RetentionPolicy for DeleteOld {
    ///     fn create(_: &str) -> Result<Self, String> { Ok(DeleteOld) }
    ///     fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
    ///         let cutoff = input.now.saturating_sub(days(30));
    ///         let tags = input.tags.iter().map(|t| match t.pushed_at() {
    ///             Some(at) if at < cutoff => Verdict::delete("older than 30 days"),
    ///             _ => Verdict::keep("recent or unknown"),
    ///         }).collect();
    ///         Ok(Decisions { tags, untagged: vec![] })
    ///     }
    ///     fn reads(&self) -> Columns { Columns::PUSHED_AT }
    /// }
    ///
    /// let input = testing::input([
    ///     testing::tag("v1").with_pushed_at(NOW.saturating_sub(days(40))),
    ///     testing::tag("v2").with_pushed_at(NOW.saturating_sub(days(2))),
    /// ]);
    /// let decisions = testing::evaluate::<DeleteOld>("{}", &input)?;
    /// assert_eq!(testing::deleted(&input, &decisions), ["v1"]);
    /// # Ok::<(), String>(())
    /// ```
    pub fn evaluate<P: RetentionPolicy>(params: &str, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        let policy = P::create(params).map_err(|e| format!("invalid params: {e}"))?;
        let restricted = input.clone().restricted_to(policy.reads());
        let decisions = policy.evaluate(&restricted).map_err(|e| format!("could not decide: {e}"))?;
        check(input, &decisions).map_err(|e| format!("returned an invalid answer: {e}"))?;
        Ok(decisions)
    }

    /// The names of the tags `decisions` deletes, in input order.
    pub fn deleted<'a>(input: &RetentionInput<'a>, decisions: &Decisions) -> Vec<&'a str> {
        input.tags.iter().zip(&decisions.tags).filter(|(_, v)| v.action == Action::Delete).map(|(t, _)| t.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_digests_are_valid_stable_and_distinct() {
        let d = fake_digest("v1");
        let hex = d.strip_prefix("sha256:").unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{d}");
        assert_eq!(d, fake_digest("v1"));
        assert_ne!(d, fake_digest("v2"));
        assert_ne!(fake_digest(""), fake_digest("\0"));
    }

    #[cfg(feature = "retention")]
    mod retention {
        use super::super::*;
        use crate::{Decisions, RetentionInput, RetentionPolicy, UntaggedManifest, Verdict, interned};

        #[test]
        fn input_sorts_tags_by_name_like_the_host() {
            let input = input(tags(&["b", "a", "B"]));
            assert_eq!(input.tags.iter().map(|t| t.name).collect::<Vec<_>>(), ["B", "a", "b"]);
            assert_eq!((input.repository, input.now), (REPOSITORY, NOW));
            assert_eq!(input.tags.at(1).digest(), fake_digest("a"));
        }

        #[test]
        fn check_refuses_a_missing_verdict() {
            let input = input(tags(&["a", "b"]));
            let d = Decisions { tags: vec![Verdict::keep("x")], untagged: vec![] };
            assert_eq!(check(&input, &d).unwrap_err(), "answer has 1 tag verdicts for 2 tags");
            let input = input.with_untagged(vec![UntaggedManifest::new("d")]);
            let d = Decisions { tags: vec![Verdict::keep("x"); 2], untagged: vec![] };
            assert_eq!(check(&input, &d).unwrap_err(), "answer has 0 untagged verdicts for 1 untagged manifests");
        }

        /// The mistake the 17-tag tests of a first plugin did not catch: a reason
        /// `format!`ted per tag passes until 257 tags.
        struct ReasonPerTag;
        impl RetentionPolicy for ReasonPerTag {
            fn create(_: &str) -> Result<Self, String> {
                Ok(ReasonPerTag)
            }
            fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
                Ok(Decisions { tags: input.tags.iter().map(|t| Verdict::keep(format!("keep {}", t.name))).collect(), untagged: vec![] })
            }
        }

        #[test]
        fn evaluate_refuses_more_than_256_distinct_reasons() {
            let names: Vec<String> = (0..257).map(|i| format!("t{i:03}")).collect();
            let few = input(names[..256].iter().map(|n| tag(n)));
            assert!(evaluate::<ReasonPerTag>("{}", &few).is_ok());
            let many = input(names.iter().map(|n| tag(n)));
            let err = evaluate::<ReasonPerTag>("{}", &many).unwrap_err();
            assert!(err.starts_with("returned an invalid answer: more than 256 distinct (action, reason) pairs"), "{err}");
            assert!(err.contains("interned"), "the error says what to do: {err}");
        }

        /// Reads digests but declares only push times.
        struct UndeclaredDigest;
        impl RetentionPolicy for UndeclaredDigest {
            fn create(_: &str) -> Result<Self, String> {
                Ok(UndeclaredDigest)
            }
            fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
                Ok(Decisions { tags: input.tags.iter().map(|t| Verdict::keep(interned(t.digest()))).collect(), untagged: vec![] })
            }
            fn reads(&self) -> crate::Columns {
                crate::Columns::PUSHED_AT
            }
        }

        #[test]
        fn evaluate_gives_only_the_declared_columns_so_an_undeclared_read_fails_natively() {
            let input = input(tags(&["a"]));
            assert!(UndeclaredDigest.evaluate(&input).is_ok(), "a plain input has every column");
            let panic = std::panic::catch_unwind(|| evaluate::<UndeclaredDigest>("{}", &input)).unwrap_err();
            let message = panic.downcast_ref::<String>().unwrap();
            assert!(message.contains("add `Columns::DIGESTS`"), "{message}");
        }

        #[test]
        fn check_refuses_a_reason_longer_than_the_host_allows() {
            let input = input(tags(&["a"]));
            let d = Decisions { tags: vec![Verdict::delete("x".repeat(1025))], untagged: vec![] };
            assert_eq!(check(&input, &d).unwrap_err(), "rule 0's reason is 1025 bytes long; at most 1024 are allowed");
            let d = Decisions { tags: vec![Verdict::delete("x".repeat(1024))], untagged: vec![] };
            assert!(check(&input, &d).is_ok());
        }

        #[test]
        fn deleted_lists_names_in_input_order() {
            let input = input(tags(&["c", "a", "b"]));
            let d = Decisions { tags: vec![Verdict::delete("x"), Verdict::keep("y"), Verdict::delete("x")], untagged: vec![] };
            assert_eq!(deleted(&input, &d), ["a", "c"]);
        }

        #[test]
        fn interned_reasons_are_shared_by_address() {
            let a = interned(format!("keep_n: among the {} most recent", 5));
            let b = interned(String::from("keep_n: among the 5 most recent"));
            assert!(matches!((&a, &b), (std::borrow::Cow::Borrowed(_), std::borrow::Cow::Borrowed(_))));
            assert!(std::ptr::eq(a.as_ptr(), b.as_ptr()));
            assert_ne!(interned("other").as_ptr(), a.as_ptr());
        }
    }
}
