//! Matching tag names against regexes, fast, in a plugin and natively alike.
//!
//! [`NamePattern`] is what a retention policy uses: in a plugin the host compiles the
//! pattern and matches the names of the evaluation in progress at native speed
//! (`tagwarden:policy/names`, contract 0.2.1), so the names are never walked in Wasm;
//! natively, and for a pattern the host refuses (over its size limits), the same
//! matcher runs in the plugin. Either way the answer is exactly `Regex::is_match`'s.
//!
//! [`Matcher`] is that matcher, also used by the host: a lazy DFA built from the
//! pattern, walked by a loop of a few lines. `Regex::is_match` spends much of its time
//! around the match rather than in it (choosing a strategy, taking a cache from its pool,
//! UTF-8 bookkeeping for empty matches); in Wasm its general search loop is also one
//! large function whose state Cranelift keeps on the stack, while this loop keeps it in
//! registers (`host/benches/runtime.rs` measures both targets).

use std::cell::{OnceCell, RefCell};

use regex::{Regex, RegexBuilder};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson;
use regex_automata::util::start;

/// The `regex` crate's default limit on a compiled pattern (`RegexBuilder::size_limit`).
/// [`Matcher::new`] applies it to the DFA's NFA too, so that both accept the same patterns.
pub const REGEX_SIZE_LIMIT: usize = 10 << 20;

/// A compiled regex: `Regex::is_match`'s answer, from a lazy DFA where one serves.
///
/// Not `Sync`: the DFA's cache of computed states is lent to one match at a time.
#[derive(Debug)]
pub struct Matcher {
    pattern: String,
    /// `None` when the pattern has something a lazy DFA does not support (Unicode
    /// word boundaries).
    dfa: Option<LazyDfa>,
    /// The `regex` crate's compilation of the same pattern: built at once when there
    /// is no DFA, else only if the DFA ever gives up (with the default configuration
    /// it has no byte to quit on and never gives up). Compiling both up front had
    /// doubled the cost of a policy's `create`.
    regex: OnceCell<Regex>,
    size_limit: usize,
}

#[derive(Debug)]
struct LazyDfa {
    dfa: DFA,
    /// The states computed so far.
    cache: RefCell<Cache>,
}

impl Matcher {
    /// Compiles `pattern` with the `regex` crate's syntax and size limit. The error is
    /// the `regex` crate's, whose messages operators see.
    pub fn new(pattern: &str) -> Result<Matcher, regex::Error> {
        Matcher::with_size_limit(pattern, REGEX_SIZE_LIMIT)
    }

    /// Compiles `pattern`, refusing one whose compiled form would exceed `size_limit`
    /// bytes (the host compiles plugins' patterns with a smaller limit than the default).
    pub fn with_size_limit(pattern: &str, size_limit: usize) -> Result<Matcher, regex::Error> {
        let config = thompson::Config::new().nfa_size_limit(Some(size_limit));
        match DFA::builder().thompson(config).build(pattern) {
            Ok(dfa) => Ok(Matcher {
                pattern: pattern.to_owned(),
                dfa: Some(LazyDfa { cache: RefCell::new(dfa.create_cache()), dfa }),
                regex: OnceCell::new(),
                size_limit,
            }),
            // Invalid, or beyond a lazy DFA: the regex crate says which.
            Err(_) => {
                let regex = RegexBuilder::new(pattern).size_limit(size_limit).build()?;
                Ok(Matcher { pattern: pattern.to_owned(), dfa: None, regex: OnceCell::from(regex), size_limit })
            }
        }
    }

    /// The pattern as compiled.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the regex matches anywhere in `name`, exactly as `Regex::is_match`.
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
            // and this size limit, so the regex crate compiles it as well.
            RegexBuilder::new(&self.pattern)
                .size_limit(self.size_limit)
                .build()
                .unwrap_or_else(|e| panic!("pattern {:?} built a DFA but not a regex: {e}", self.pattern))
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

/// For every tag of an evaluation, in input order, whether a [`NamePattern`] matches its
/// name: `matches[i]` or [`Matches::get`].
///
/// In a plugin whose pattern the host compiled, the host matched every name at once and
/// this holds its answer, a byte per tag. Otherwise (natively, or for a pattern the host
/// refused) a tag's name is matched when its answer is asked for, so a policy that asks
/// only about some tags (a second pattern, consulted only where the first matched) does
/// only that work, exactly as calling [`NamePattern::is_match`] there would.
#[cfg(feature = "retention")]
#[derive(Debug)]
pub struct Matches<'a>(MatchesRepr<'a>);

#[cfg(feature = "retention")]
#[derive(Debug)]
enum MatchesRepr<'a> {
    /// The host's answer: 1 for a match.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code, reason = "only the host answers in bytes"))]
    Bytes(Vec<u8>),
    OnDemand {
        matcher: &'a Matcher,
        tags: &'a crate::Tags<'a>,
    },
}

#[cfg(feature = "retention")]
impl Matches<'_> {
    /// Whether the pattern matches tag `i`'s name; panics when `i` is out of range.
    // Always in Wasm: there the answer is the host's, one byte load, and a call per tag
    // (the matcher in the other arm kept it from being inlined) cost ~10 % of an
    // evaluation. Natively the matcher runs here, and inlining it into the caller's loop
    // made native `evaluate` ~30 % slower.
    #[cfg_attr(target_arch = "wasm32", inline(always))]
    #[cfg_attr(not(target_arch = "wasm32"), inline)]
    #[track_caller]
    pub fn get(&self, i: usize) -> bool {
        match &self.0 {
            MatchesRepr::Bytes(bytes) => bytes[i] != 0,
            MatchesRepr::OnDemand { matcher, tags } => matcher.is_match(tags.name(i)),
        }
    }

    /// How many tags there are (all of the input's).
    pub fn len(&self) -> usize {
        match &self.0 {
            MatchesRepr::Bytes(bytes) => bytes.len(),
            MatchesRepr::OnDemand { tags, .. } => tags.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the pattern matches each tag's name, in input order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = bool> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

#[cfg(feature = "retention")]
impl std::ops::Index<usize> for Matches<'_> {
    type Output = bool;

    #[inline]
    #[track_caller]
    fn index(&self, i: usize) -> &bool {
        if self.get(i) { &true } else { &false }
    }
}

/// A name regex for a retention policy: matched by the host in a plugin, by [`Matcher`]
/// natively and for a pattern the host refuses. See the module documentation.
#[cfg(feature = "retention")]
#[derive(Debug)]
pub struct NamePattern {
    repr: PatternRepr,
}

#[cfg(feature = "retention")]
#[derive(Debug)]
enum PatternRepr {
    /// Compiled by the host; matches the names of the evaluation in progress.
    #[cfg(target_arch = "wasm32")]
    Host {
        pattern: crate::bindings::retention::tagwarden::policy::names::NamePattern,
        text: String,
        /// For names that are not the host's (a [`crate::Tags`] built in the plugin).
        local: OnceCell<Matcher>,
    },
    Local(Matcher),
}

#[cfg(feature = "retention")]
impl NamePattern {
    /// Compiles `pattern` (not anchored for you: write `\A(?:...)\z` to match whole
    /// names). The host compiles it when it can; a pattern beyond the host's limits is
    /// compiled in the plugin instead, so every pattern the `regex` crate accepts works.
    /// The error is the `regex` crate's.
    pub fn new(pattern: &str) -> Result<NamePattern, regex::Error> {
        #[cfg(target_arch = "wasm32")]
        {
            use crate::bindings::retention::tagwarden::policy::names;
            if let Ok(compiled) = names::NamePattern::compile(pattern) {
                let repr = PatternRepr::Host { pattern: compiled, text: pattern.to_owned(), local: OnceCell::new() };
                return Ok(NamePattern { repr });
            }
            // Refused: invalid (the local compile says why, in the regex crate's words)
            // or over the host's limits (the local compile has the regex crate's).
        }
        Matcher::new(pattern).map(|m| NamePattern { repr: PatternRepr::Local(m) })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        match &self.repr {
            #[cfg(target_arch = "wasm32")]
            PatternRepr::Host { text, .. } => text,
            PatternRepr::Local(m) => m.as_str(),
        }
    }

    /// Whether the host matches this pattern (false natively, and for a pattern the
    /// host refused).
    pub fn in_host(&self) -> bool {
        !matches!(self.repr, PatternRepr::Local(_))
    }

    /// Whether the pattern matches anywhere in `name`. To match every tag of an
    /// evaluation, [`RetentionInput::matching`](crate::RetentionInput::matching) is
    /// faster in a plugin.
    pub fn is_match(&self, name: &str) -> bool {
        self.matcher().is_match(name)
    }

    /// For every tag of `tags`, in order, whether the pattern matches its name.
    pub(crate) fn match_tags<'s>(&'s self, tags: &'s crate::Tags<'s>) -> Matches<'s> {
        #[cfg(target_arch = "wasm32")]
        if let PatternRepr::Host { pattern, .. } = &self.repr
            && tags.is_from_host()
        {
            let matches = pattern.match_tags();
            // The host matched the call's own names, which these are.
            assert_eq!(matches.len(), tags.len(), "the host matched another number of names than the evaluation has");
            return Matches(MatchesRepr::Bytes(matches));
        }
        Matches(MatchesRepr::OnDemand { matcher: self.matcher(), tags })
    }

    fn matcher(&self) -> &Matcher {
        match &self.repr {
            #[cfg(target_arch = "wasm32")]
            PatternRepr::Host { text, local, .. } => local.get_or_init(|| {
                Matcher::new(text).unwrap_or_else(|e| panic!("pattern {text:?} compiled in the host but not in the plugin: {e}"))
            }),
            PatternRepr::Local(m) => m,
        }
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

    fn compile(pattern: &str) -> Matcher {
        Matcher::new(&anchored(pattern)).unwrap()
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

#[cfg(all(test, feature = "retention"))]
mod name_pattern {
    use super::NamePattern;
    use crate::{RetentionInput, Timestamp, testing};

    #[test]
    fn matching_answers_for_every_tag_in_input_order_as_is_match() {
        let input = RetentionInput::new("group/app", Timestamp::from_unix_secs(0), testing::tags(&["v2", "main-1", "v1", "latest", "v10"]));
        let pattern = NamePattern::new(r"\Av\d+\z").unwrap();
        assert!(!pattern.in_host(), "natively the plugin's own matcher runs");
        let expected: Vec<bool> = input.tags.iter().map(|t| regex::Regex::new(r"\Av\d+\z").unwrap().is_match(t.name)).collect();
        let matches = input.matching(&pattern);
        assert_eq!(matches.iter().collect::<Vec<_>>(), expected);
        assert_eq!((matches[2], matches.get(1), matches.len()), (true, false, 5));
        assert_eq!(expected, [false, false, true, true, true], "sorted by name: latest, main-1, v1, v10, v2");
        assert_eq!(pattern.as_str(), r"\Av\d+\z");
    }

    #[test]
    fn an_invalid_pattern_gets_the_regex_crates_error() {
        let invalid = std::hint::black_box("(");
        assert_eq!(NamePattern::new(invalid).unwrap_err().to_string(), regex::Regex::new(invalid).unwrap_err().to_string());
    }
}

#[cfg(test)]
mod invalid {
    use super::Matcher;

    #[test]
    fn invalid_patterns_get_the_regex_crates_error() {
        for pattern in [r"\A(\z", r"\A[z-a]\z", r"\A(?<n\z", r"\A\p{NotAProperty}\z"] {
            let ours = Matcher::new(pattern).unwrap_err().to_string();
            assert_eq!(ours, regex::Regex::new(pattern).unwrap_err().to_string(), "{pattern}");
        }
    }

    #[test]
    fn patterns_over_the_regex_crates_size_limit_are_rejected() {
        let pattern = r"\A(?:\w{100}){100}\z";
        assert!(regex::Regex::new(pattern).is_err(), "the regex crate rejects it");
        assert!(Matcher::new(pattern).is_err());
    }
}
