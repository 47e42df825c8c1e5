//! Shared helpers for the integration tests.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tagwarden::runtime::{Plugin, PluginLimits, PluginRuntime, RuntimeConfig};

/// The workspace root.
pub fn workspace() -> PathBuf {
    manifest_dir().parent().unwrap().to_path_buf()
}

/// A plugin component built by `cargo xtask build-plugins`.
pub fn plugin_path(name: &str) -> PathBuf {
    tagwarden::plugins::resolve(name, &[])
        .unwrap_or_else(|e| panic!("{e:#}\n(the test command `cargo xtask test` builds the plugins before running the tests)"))
}

/// One runtime for the whole test binary, as in production: one engine per process.
pub fn runtime() -> Arc<PluginRuntime> {
    static RUNTIME: OnceLock<Arc<PluginRuntime>> = OnceLock::new();
    RUNTIME.get_or_init(|| Arc::new(PluginRuntime::new(RuntimeConfig::default()).expect("runtime"))).clone()
}

/// Loads a plugin by name with the given limits, cached per name (compiling is slow).
pub fn plugin(name: &str, limits: PluginLimits) -> Plugin {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, Plugin>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let loaded = {
        let mut cache = cache.lock().unwrap();
        if let Some(p) = cache.get(name) {
            p.clone()
        } else {
            let p = runtime().load_file(&plugin_path(name), PluginLimits::default()).unwrap_or_else(|e| panic!("loading {name}: {e}"));
            cache.insert(name.to_owned(), p.clone());
            p
        }
    };
    loaded.with_limits(limits)
}

/// This crate's directory, as Cargo reports it when it runs us. The compile-time
/// value is only a fallback: a build cache shared between clones (as `.ci/run` uses)
/// can hand one clone a binary compiled in another whose path no longer exists.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
