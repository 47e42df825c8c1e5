//! Panic messages that say which plugin call panicked.
//!
//! Rust's default hook prints `thread '<unnamed>' panicked at <file>:<line>:<col>:`, the
//! message, and `note: run with RUST_BACKTRACE=1 …`, advice a plugin cannot follow (it
//! has no environment) and which leaves out whether `create` or `evaluate` failed. The
//! export macros' calls enter a [`Call`], and the hook installed then prints
//!
//! ```text
//! panicked in `evaluate` at src/lib.rs:42:17:
//! <message>
//! ```
//!
//! to stderr, which the host shows as the failure.

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// The plugin call running on this thread, if any.
    static CURRENT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Marks a plugin call (`create`, `evaluate`, …) as running until dropped.
#[must_use = "the call is marked only while the guard lives"]
pub(crate) struct Call {
    previous: Option<&'static str>,
}

impl Call {
    /// Enters `name`, installing the SDK's panic hook on first use.
    #[allow(dead_code)] // unused when no world feature is enabled
    pub(crate) fn enter(name: &'static str) -> Call {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{}", message(CURRENT.get(), info)))));
        Call { previous: CURRENT.replace(Some(name)) }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        CURRENT.set(self.previous);
    }
}

/// What the hook prints for a panic during `call`.
pub(crate) fn message(call: Option<&str>, info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload_as_str().unwrap_or("(a panic without a message)");
    let location = info.location().map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
    match call {
        Some(call) => format!("panicked in `{call}`{location}:\n{payload}"),
        None => format!("panicked{location}:\n{payload}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Runs `f` under the SDK's hook, returning what it would have printed. Hooks are
    /// process-wide: the lock keeps this module's tests from swapping them concurrently.
    fn printed(call: &'static str, f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        static LOCK: Mutex<()> = Mutex::new(());
        let _lock = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        thread_local!(static SEEN: Cell<Option<&'static str>> = const { Cell::new(None) });
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| SEEN.set(Some(Box::leak(message(CURRENT.get(), info).into_boxed_str())))));
        let guard = Call { previous: CURRENT.replace(Some(call)) };
        let _ = std::panic::catch_unwind(f);
        drop(guard);
        std::panic::set_hook(previous);
        SEEN.take().expect("the closure panicked").to_owned()
    }

    #[test]
    fn the_message_names_the_call_and_the_line_without_backtrace_advice() {
        let line = line!() + 1;
        let text = printed("evaluate", || panic!("boom {}", 7));
        assert!(text.starts_with(&format!("panicked in `evaluate` at {}:{line}:", file!())), "{text}");
        assert!(text.ends_with(":\nboom 7"), "{text}");
        assert!(!text.contains("RUST_BACKTRACE"));
        assert_eq!(CURRENT.get(), None, "leaving the call clears it");
    }

    #[cfg(feature = "retention")]
    #[test]
    fn an_out_of_range_tag_points_at_the_callers_line() {
        let tags: crate::Tags<'static> = vec![crate::Tag::new("a", "d")].into();
        let line = line!() + 2; // the `tags.at(3)` below, not the SDK's own line
        let text = printed("evaluate", move || {
            let _ = tags.at(3);
        });
        assert!(text.starts_with(&format!("panicked in `evaluate` at {}:{line}:", file!())), "{text}");
        assert!(text.ends_with(":\ntag index 3 out of range for 1 tags"), "{text}");
    }
}
