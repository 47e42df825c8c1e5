//! Matching tag names against the policy's regexes.
//!
//! [`NamePattern::is_match`] gives exactly `Regex::is_match`'s answer, but walks the
//! name through a lazy DFA built from the same pattern in a loop of a few lines. Two
//! matches per tag are most of an evaluation, and `Regex::is_match` spends much of its
//! time around the match rather than in it: choosing a strategy, taking a cache from
//! its pool, UTF-8 bookkeeping for empty matches. Inside Wasm that general search loop
//! is also one large function whose state Cranelift keeps on the stack, while this
//! small loop keeps it in registers (`host/benches/runtime.rs` measures both targets).

use std::cell::{OnceCell, RefCell};

use regex::Regex;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::start;

/// The `regex` crate's limit on a compiled pattern (`RegexBuilder::size_limit`), applied
/// to the DFA's NFA too so that both accept the same patterns.
const NFA_SIZE_LIMIT: usize = 10 << 20;

/// A compiled name regex, `\A<pattern>\z` as GitLab interpolates it.
#[derive(Debug)]
pub struct NamePattern {
    anchored: String,
    /// `None` when the pattern has something a lazy DFA does not support (Unicode
    /// word boundaries).
    dfa: Option<LazyDfa>,
    /// The `regex` crate's compilation of the same pattern: built at once when there
    /// is no DFA, else only if the DFA ever gives up (with the default configuration
    /// it has no byte to quit on and never gives up). Compiling both up front had
    /// doubled the cost of `create`.
    regex: OnceCell<Regex>,
}

#[derive(Debug)]
struct LazyDfa {
    dfa: DFA,
    /// The states computed so far. A policy evaluates one repository at a time; the
    /// cell only lends the cache to one match at a time.
    cache: RefCell<Cache>,
}

impl NamePattern {
    /// Compiles `anchored` (already wrapped in `\A..\z`). The error is the `regex`
    /// crate's, whose messages operators see.
    pub fn new(anchored: String) -> Result<NamePattern, regex::Error> {
        let config = thompson::Config::new().nfa_size_limit(Some(NFA_SIZE_LIMIT));
        match DFA::builder().thompson(config).build(&anchored) {
            Ok(dfa) => {
                Ok(NamePattern { dfa: Some(LazyDfa { cache: RefCell::new(dfa.create_cache()), dfa }), anchored, regex: OnceCell::new() })
            }
            // Invalid, or beyond a lazy DFA: the regex crate says which.
            Err(_) => {
                let regex = Regex::new(&anchored)?;
                Ok(NamePattern { anchored, dfa: None, regex: OnceCell::from(regex) })
            }
        }
    }

    /// The pattern as compiled, `\A<pattern>\z`.
    pub fn as_str(&self) -> &str {
        &self.anchored
    }

    /// Whether the regex matches anywhere in `name` (it is anchored by `\A..\z`, which
    /// makes that the whole name, except around a top-level `|`).
    #[inline]
    pub fn is_match(&self, name: &str) -> bool {
        match self.dfa.as_ref().and_then(|dfa| dfa.is_match(name.as_bytes())) {
            Some(matched) => matched,
            None => self.regex().is_match(name),
        }
    }

    fn regex(&self) -> &Regex {
        self.regex.get_or_init(|| {
            // The DFA was built from this text with the regex crate's syntax defaults
            // and size limit, so the regex crate compiles it as well.
            Regex::new(&self.anchored).unwrap_or_else(|e| panic!("pattern {:?} built a DFA but not a regex: {e}", self.anchored))
        })
    }

    /// Whether the lazy DFA serves this pattern (for tests).
    #[cfg(test)]
    fn has_dfa(&self) -> bool {
        self.dfa.is_some()
    }
}

impl LazyDfa {
    /// An unanchored earliest-match search, as `Regex::is_match` runs it. `None` when
    /// the DFA gives up (a quit byte, or a cache that keeps filling): ask the regex.
    fn is_match(&self, haystack: &[u8]) -> Option<bool> {
        let mut cache = self.cache.try_borrow_mut().ok()?;
        let cache = &mut *cache;
        let mut state = self.dfa.start_state(cache, &start::Config::new()).ok()?;
        for &byte in haystack {
            // From an untagged state the next one is one table lookup; only a transition
            // not computed yet (unknown) or a tagged state takes `next_state`'s checked path.
            // In Wasm the `Result` of `next_state` on every byte cost a tenth of the walk.
            let next = if state.is_tagged() { None } else { Some(self.dfa.next_state_untagged(cache, state, byte)) };
            state = match next {
                Some(next) if !next.is_unknown() => next,
                _ => self.dfa.next_state(cache, state, byte).ok()?,
            };
            if state.is_tagged() {
                // Matches show one byte late: a match state here means a match ended
                // before `byte`, which is all `is_match` asks.
                if state.is_match() {
                    return Some(true);
                }
                if state.is_dead() {
                    return Some(false);
                }
                if state.is_quit() {
                    return None;
                }
            }
        }
        Some(self.dfa.next_eoi_state(cache, state).ok()?.is_match())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names that exercise ASCII, multi-byte UTF-8, empty names, newlines and prefixes
    /// of one another.
    const NAMES: &[&str] = &[
        "",
        "a",
        "ab",
        "abc",
        "b",
        "latest",
        "main",
        "main-",
        "main-0a1b2c3",
        "production-v44",
        "production",
        "dev-v42",
        "v1.2.3",
        "v1.2.3-rc.4",
        "feature-login-17",
        "stable-2026",
        "x\ny",
        "\n",
        "é",
        "café-1",
        "日本-1",
        "αβ-1",
        "ß",
        "1234567890abcdef1234567890abcdef12345678",
        "FOO",
        "foo",
        "foobar",
        "barfoo",
        "foo bar",
    ];

    /// Patterns as operators write them; each is wrapped as `\A..\z` like the policy does.
    const PATTERNS: &[&str] = &[
        ".*",
        ".+",
        "",
        "(main|production)-.*",
        "main|production",
        "a|ab",
        "ab|a",
        "v.+",
        r"v\d+\.\d+\.\d+",
        r"v\d+\.\d+\.\d+(-rc\.\d+)?",
        "[0-9a-f]{40}",
        r"\w+",
        r"\w+-\d+",
        r"[\w-]+",
        "(?i)foo.*",
        "(?s).*",
        "(?m)^foo$",
        "foo|bar",
        r"\bfoo\b",
        r"(?-u:\b)foo",
        ".",
        "..?",
        "[α-ω]+-1",
        "caf.-1",
        "[^a-z].*",
        "(?:dev|production)-v4[2-4]",
        "a*b*c*",
    ];

    fn anchored(pattern: &str) -> String {
        format!(r"\A{pattern}\z")
    }

    fn compile(pattern: &str) -> NamePattern {
        NamePattern::new(anchored(pattern)).unwrap()
    }

    #[test]
    fn answers_exactly_as_the_regex_does() {
        for pattern in PATTERNS {
            let regex = Regex::new(&anchored(pattern)).unwrap();
            let fast = compile(pattern);
            for name in NAMES {
                // Twice: the second answer comes from states the first one cached.
                for round in 0..2 {
                    assert_eq!(fast.is_match(name), regex.is_match(name), "pattern {pattern:?}, name {name:?}, round {round}");
                }
            }
        }
    }

    #[test]
    fn common_patterns_use_the_dfa() {
        for pattern in [".*", "(main|production)-.*", r"v\d+\.\d+\.\d+", "[0-9a-f]{40}", "(?i)foo.*"] {
            assert!(compile(pattern).has_dfa(), "{pattern}");
        }
    }

    #[test]
    fn unicode_word_boundaries_fall_back_to_the_regex() {
        let fast = compile(r"\bfoo\b");
        assert!(!fast.has_dfa());
        assert!(fast.is_match("foo"));
        assert!(!fast.is_match("foobar"));
    }

    #[test]
    fn a_top_level_alternation_matches_at_either_end() {
        // `\Amain|production\z`: starts with `main` or ends with `production`.
        let fast = compile("main|production");
        assert!(fast.is_match("main-1"));
        assert!(fast.is_match("pre-production"));
        assert!(!fast.is_match("production-1"));
    }
}

#[cfg(test)]
mod invalid {
    use super::NamePattern;

    #[test]
    fn invalid_patterns_get_the_regex_crates_error() {
        for pattern in [r"\A(\z", r"\A[z-a]\z", r"\A(?<n\z", r"\A\p{NotAProperty}\z"] {
            let ours = NamePattern::new(pattern.to_owned()).unwrap_err().to_string();
            assert_eq!(ours, regex::Regex::new(pattern).unwrap_err().to_string(), "{pattern}");
        }
    }

    #[test]
    fn patterns_over_the_regex_crates_size_limit_are_rejected() {
        let pattern = r"\A(?:\w{100}){100}\z";
        assert!(regex::Regex::new(pattern).is_err(), "the regex crate rejects it");
        assert!(NamePattern::new(pattern.to_owned()).is_err());
    }
}
