//! `tagwarden:policy/names` (contract 0.2.1): the host matches the tag names of the
//! evaluation in progress against a plugin's regex.
//!
//! Matching names is most of a name-based policy's work, and in Wasm it ran at about half
//! native speed (docs/benchmarks.md). Here it runs natively over the names the host
//! already holds for the call ([`Patterns::call_names`]), so none is copied back out
//! of the guest, with the SDK's own matcher (`tagwarden_plugin_sdk::names::Matcher`):
//! a plugin matching in the host and the same plugin compiled natively answer alike.
//!
//! It is pure computation over the call's own input and stays inside the sandbox's
//! limits: the host memory a store's patterns may take is bounded (size of one compiled
//! pattern, patterns per store, pattern text), and matching checks the call's deadline,
//! trapping as a timeout would. A pattern the host refuses is not an error for the
//! policy: the SDK then compiles it inside the plugin, whose memory cap applies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tagwarden_plugin_sdk::names::Matcher;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime::{StoreContextMut, Trap};

use super::CONTRACT_PACKAGE;
use super::sandbox::SandboxState;
use super::wire::ContractVersion;
use crate::model::StringTable;

/// Largest compiled form of one pattern (the `regex` crate's size limit; its default,
/// which a plugin's own matcher keeps, is 10 MiB).
pub(crate) const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Patterns one store may hold at once: with the lazy DFA's cache (at most 2 MiB each)
/// this bounds a store's host memory for patterns to a few tens of MiB.
pub(crate) const PATTERNS_PER_STORE: usize = 8;
/// Longest pattern text the host parses.
pub(crate) const PATTERN_TEXT_BYTES: usize = 16 << 10;
/// Most names matched between two looks at the clock (~30 µs of work for ordinary patterns).
const MAX_NAMES_PER_DEADLINE_CHECK: usize = 1024;
/// Time between two looks at the clock beyond which the next look comes after one name.
const DEADLINE_CHECK_SPAN: Duration = Duration::from_micros(250);

/// A pattern a plugin compiled, in its store's resource table.
pub(crate) struct HostPattern(Matcher);

/// The pattern state of one store.
#[derive(Default)]
pub(crate) struct Patterns {
    /// The tag names of the `evaluate` call in progress; `None` between calls.
    pub(crate) call_names: Option<Arc<StringTable>>,
    /// When the call in progress must end.
    pub(crate) deadline: Option<Instant>,
    /// Patterns alive in the store.
    live: usize,
}

/// Defines `names@<version>`: the resource and its two functions.
pub(super) fn add_to_linker(linker: &mut Linker<SandboxState>, version: ContractVersion) -> wasmtime::Result<()> {
    let mut names = linker.instance(&format!("{CONTRACT_PACKAGE}/names@{version}"))?;
    names.resource("name-pattern", ResourceType::host::<HostPattern>(), |mut cx: StoreContextMut<'_, SandboxState>, rep| {
        drop_pattern(cx.data_mut(), rep)
    })?;
    names.func_wrap("[static]name-pattern.compile", |mut cx: StoreContextMut<'_, SandboxState>, (regex,): (String,)| {
        Ok((compile(cx.data_mut(), &regex),))
    })?;
    names.func_wrap(
        "[method]name-pattern.match-tags",
        |mut cx: StoreContextMut<'_, SandboxState>, (pattern,): (Resource<HostPattern>,)| Ok((match_tags(cx.data_mut(), &pattern)?,)),
    )?;
    Ok(())
}

/// `[static]name-pattern.compile`: the error is for the plugin (the SDK then matches in
/// the plugin), never a trap.
fn compile(state: &mut SandboxState, regex: &str) -> Result<Resource<HostPattern>, String> {
    if state.patterns.live >= PATTERNS_PER_STORE {
        return Err(format!("the host holds at most {PATTERNS_PER_STORE} name patterns per plugin instance"));
    }
    if regex.len() > PATTERN_TEXT_BYTES {
        return Err(format!("the host compiles patterns of at most {PATTERN_TEXT_BYTES} bytes (this one has {})", regex.len()));
    }
    let matcher = Matcher::with_size_limit(regex, PATTERN_SIZE_LIMIT).map_err(|e| e.to_string())?;
    let pattern = state.table.push(HostPattern(matcher)).map_err(|e| e.to_string())?;
    state.patterns.live += 1;
    Ok(pattern)
}

/// The guest dropped its handle: the pattern's memory goes and its place is free.
fn drop_pattern(state: &mut SandboxState, rep: u32) -> wasmtime::Result<()> {
    state.table.delete(Resource::<HostPattern>::new_own(rep))?;
    state.patterns.live -= 1;
    Ok(())
}

/// `[method]name-pattern.match-tags`: one answer per name of the call in progress, 1 for
/// a match.
fn match_tags(state: &mut SandboxState, pattern: &Resource<HostPattern>) -> wasmtime::Result<Vec<u8>> {
    let Some(names) = state.patterns.call_names.clone() else {
        wasmtime::bail!("`names.name-pattern.match-tags` was called outside `retention.policy.evaluate`: there are no tag names to match");
    };
    let deadline = state.patterns.deadline;
    let HostPattern(matcher) = state.table.get(pattern)?;
    let (data, ends) = (names.data(), names.ends());
    let mut matches = Vec::with_capacity(ends.len());
    let mut start = 0;
    // How often to look at the clock adapts to the pattern: a name usually takes tens of
    // nanoseconds, but one whose lazy DFA keeps missing its cache can take ~0.2 ms (measured:
    // `(?:a|b)*a(?:a|b){120}` over 128-byte names), so a fixed 1024 names between looks let a
    // call run ~0.2 s past its deadline. The span doubles while names match fast and drops to
    // one name when they do not, so the call ends within about a millisecond of its deadline
    // at the cost of ~100 looks per 100k fast names.
    let (mut next_check, mut span, mut last_check) = (0, 1, Instant::now());
    for (i, &end) in ends.iter().enumerate() {
        if i == next_check {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Trap::Interrupt.into());
            }
            span = if now - last_check < DEADLINE_CHECK_SPAN { (span * 2).min(MAX_NAMES_PER_DEADLINE_CHECK) } else { 1 };
            (next_check, last_check) = (i + span, now);
        }
        let end = end as usize;
        let Some(name) = data.get(start..end) else { wasmtime::bail!("tag name {i} is not a valid range of the name table") };
        matches.push(u8::from(matcher.is_match(name)));
        start = end;
    }
    Ok(matches)
}

#[cfg(test)]
mod tests {
    use wasmtime::{Engine, Store};

    use super::*;
    use crate::runtime::PluginLimits;
    use crate::runtime::sandbox::new_store;

    const NAMES: &[&str] = &["", "latest", "main-1", "production-2", "v1.2.3", "café-1", "x\ny", "foo bar", "feature-foo"];

    fn store() -> Store<SandboxState> {
        new_store(&Engine::default(), &Arc::from("test"), &PluginLimits::default())
    }

    /// Puts `NAMES`, in this order, in the store as the names of a call whose deadline
    /// is `deadline` away.
    fn begin_evaluate(store: &mut Store<SandboxState>, deadline: Duration) {
        let state = store.data_mut();
        state.patterns.call_names = Some(Arc::new(NAMES.iter().copied().collect()));
        state.patterns.deadline = Some(Instant::now() + deadline);
    }

    #[test]
    fn matches_as_the_regex_crate_does_for_every_name_in_order() {
        for pattern in [r"\A.*\z", r"\A(main|production)-.*\z", r"\bfoo\b", "é", r"(?s)x.y", r"\A\z", "main|2"] {
            let mut store = store();
            begin_evaluate(&mut store, Duration::from_secs(10));
            let compiled = compile(store.data_mut(), pattern).unwrap();
            let regex = regex::Regex::new(pattern).unwrap();
            let expected: Vec<u8> = NAMES.iter().map(|n| u8::from(regex.is_match(n))).collect();
            assert_eq!(match_tags(store.data_mut(), &compiled).unwrap(), expected, "{pattern}");
        }
    }

    #[test]
    fn outside_an_evaluation_there_is_nothing_to_match_and_the_call_traps() {
        let mut store = store();
        let compiled = compile(store.data_mut(), ".*").unwrap();
        let err = match_tags(store.data_mut(), &compiled).unwrap_err();
        assert!(err.to_string().contains("outside `retention.policy.evaluate`"), "{err}");
    }

    #[test]
    fn matching_past_the_calls_deadline_traps_as_a_timeout() {
        let mut store = store();
        begin_evaluate(&mut store, Duration::ZERO);
        let compiled = compile(store.data_mut(), ".*").unwrap();
        let err = match_tags(store.data_mut(), &compiled).unwrap_err();
        assert_eq!(err.downcast_ref::<Trap>(), Some(&Trap::Interrupt), "{err}");
    }

    #[test]
    fn slow_matching_ends_close_to_the_deadline() {
        // ~0.15 ms a name (its lazy DFA keeps missing its cache): 2000 names would take ~0.3 s,
        // and looking at the clock every 1024 names ran ~0.15 s past a 20 ms deadline.
        let names: Vec<String> = (0..2000u32)
            .map(|i| (0..128).map(|j| if (i.wrapping_mul(2_654_435_761) >> (j % 32)) & 1 == 0 { 'a' } else { 'b' }).collect())
            .collect();
        let deadline = Duration::from_millis(20);
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let mut store = store();
            let state = store.data_mut();
            state.patterns.call_names = Some(Arc::new(names.iter().map(String::as_str).collect()));
            let compiled = compile(state, r"(?:a|b)*a(?:a|b){120}").unwrap();
            let started = Instant::now();
            state.patterns.deadline = Some(started + deadline);
            let err = match_tags(state, &compiled).unwrap_err();
            assert_eq!(err.downcast_ref::<Trap>(), Some(&Trap::Interrupt), "{err}");
            best = best.min(started.elapsed());
        }
        // The project's bound for any call: its deadline plus 50 ms (best of 3, for a loaded machine).
        assert!(best < deadline + Duration::from_millis(50), "matching ended {best:?} after its start; deadline {deadline:?}");
    }

    #[test]
    fn invalid_oversized_and_too_many_patterns_are_refused_with_a_reason_not_a_trap() {
        let mut store = store();
        let state = store.data_mut();
        assert!(compile(state, "(").unwrap_err().contains("unclosed group"));
        // Within the regex crate's default limit (what the plugin's own matcher allows),
        // beyond the host's.
        let large = r"\w{100}";
        assert!(regex::Regex::new(large).is_ok());
        assert!(compile(state, large).unwrap_err().contains("size limit"), "{large}");
        let long = "a".repeat(PATTERN_TEXT_BYTES + 1);
        assert!(compile(state, &long).unwrap_err().contains("at most"));
        let held: Vec<_> = (0..PATTERNS_PER_STORE).map(|i| compile(state, &format!("v{i}")).unwrap()).collect();
        assert!(compile(state, "one-more").unwrap_err().contains("at most 8 name patterns"));
        // Dropping one (the guest drops its handle) frees a place.
        drop_pattern(state, held[0].rep()).unwrap();
        assert!(compile(state, "one-more").is_ok());
    }
}
