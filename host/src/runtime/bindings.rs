//! Host-side bindings generated from `wit/policy.wit`, one module per world.
//!
//! The worlds share the `types` and `log` interfaces; the backoff and stale bindings
//! reuse the retention bindings' copies (`with`) so there is one `log::Host` to
//! implement and one set of shared types.

pub mod retention {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "retention-plugin",
    });
}

pub mod backoff {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "backoff-plugin",
        with: {
            "tagwarden:policy/types": super::retention::tagwarden::policy::types,
            "tagwarden:policy/log": super::retention::tagwarden::policy::log,
        },
    });
}

pub mod stale {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "stale-plugin",
        with: {
            "tagwarden:policy/types": super::retention::tagwarden::policy::types,
            "tagwarden:policy/log": super::retention::tagwarden::policy::log,
        },
    });
}

pub use retention::tagwarden::policy::types::{LogLevel, PluginInfo};
