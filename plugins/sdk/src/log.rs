//! Structured logging through the host.
//!
//! Inside wasm, lines go to the host's `log` import, which routes them to its tracing
//! output with the plugin's name attached. In native builds (unit tests, benchmarks)
//! they are discarded.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Sends one line to the host.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    imp::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;

    // Every world imports the same `log` interface; use whichever world is compiled in.
    macro_rules! forward {
        ($world:ident) => {
            pub fn log(level: Level, message: &str) {
                use crate::bindings::$world::tagwarden::policy::{log, types::LogLevel};
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                log::log(level, message);
            }
        };
    }

    #[cfg(feature = "retention")]
    forward!(retention);
    #[cfg(all(feature = "backoff", not(feature = "retention")))]
    forward!(backoff);
    #[cfg(all(feature = "stale", not(any(feature = "retention", feature = "backoff"))))]
    forward!(stale);
    #[cfg(not(any(feature = "retention", feature = "backoff", feature = "stale")))]
    pub fn log(_level: Level, _message: &str) {}
}
