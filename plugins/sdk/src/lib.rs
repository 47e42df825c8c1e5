//! The tagwarden plugin SDK: write a policy plugin in plain Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. It implements one trait and
//! exports it with one macro; the SDK hides the WIT bindings and the columnar wire
//! format (`wit/policy.wit`) behind ordinary typed values:
//!
//! | kind      | feature     | trait               | export macro          |
//! |-----------|-------------|---------------------|-----------------------|
//! | retention | `retention` | [`RetentionPolicy`] | [`export_retention!`] |
//! | backoff   | `backoff`   | [`BackoffStrategy`] | [`export_backoff!`]   |
//! | stale     | `stale`     | [`StaleRule`]       | [`export_stale!`]     |
//!
//! ```ignore
//! use tagwarden_plugin_sdk::{export_retention, Decisions, RetentionInput, RetentionPolicy, Verdict};
//!
//! struct DeleteEverything;
//!
//! impl RetentionPolicy for DeleteEverything {
//!     fn create(_params: &str) -> Result<Self, String> { Ok(DeleteEverything) }
//!     fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
//!         Ok(Decisions::uniform(input, Verdict::delete("everything goes")))
//!     }
//! }
//!
//! export_retention!(DeleteEverything);
//! ```
//!
//! [`params::Params`] reads the JSON params given to `create`: typed getters whose errors
//! name the param and what was expected, and GitLab-style durations such as `7d`.
//!
//! Plugins are pure functions of their input: there is no clock but `now` in the input,
//! no filesystem, network or environment. The trait methods are ordinary Rust and can
//! be unit-tested natively; the export macros expand to nothing outside wasm.
//! [`testing`] builds inputs from tag names and checks answers as the host does (one
//! verdict per tag, at most 256 distinct reasons), so a native test fails where
//! production would.
//!
//! A retention policy declares the columns it reads ([`RetentionPolicy::reads`],
//! [`Columns`]); the host sends only those, and reading another panics with the column to
//! declare. [`testing::evaluate`] gives native tests only the declared columns too.
//!
//! With the `names` feature, [`names::NamePattern`] matches tag names against a regex,
//! in the host at native speed when the plugin runs there
//! ([`RetentionInput::matching`]).
//!
//! Versions: this crate's major.minor is the contract's (`tagwarden:policy@0.2.x` for
//! 0.2.x); a patch release only adds helpers. The contract (`wit/policy.wit`) ships in
//! the crate. Hosts that accept 0.2 keep accepting plugins built with SDK 0.1.

mod time;
pub use core::time::Duration;
pub use time::Timestamp;

mod rng;
pub use rng::SeededRng;

#[cfg(feature = "backoff")]
mod backoff;
#[cfg(feature = "backoff")]
#[doc(hidden)]
pub use backoff::wire as __backoff_wire;
#[cfg(feature = "backoff")]
pub use backoff::{BackoffDecision, BackoffStrategy, ErrorClass, Failure};

#[cfg(feature = "retention")]
mod retention;
#[cfg(feature = "retention")]
#[doc(hidden)]
pub use retention::wire as __retention_wire;
#[cfg(feature = "retention")]
pub use retention::{
    Action, Columns, Decisions, MAX_REASON_BYTES, MAX_RULES, RetentionInput, RetentionPolicy, Tag, Tags, TagsIter, UntaggedManifest,
    Verdict, interned,
};

#[cfg(feature = "stale")]
mod stale;
#[cfg(feature = "stale")]
#[doc(hidden)]
pub use stale::wire as __stale_wire;
#[cfg(feature = "stale")]
pub use stale::{Operation, StaleAction, StaleRule, StaleVerdict};

#[cfg(feature = "names")]
pub mod names;

pub mod log;
mod panic;
pub mod params;
pub mod testing;

/// What kind of registry operation a backoff or stale decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    /// Applying a cleanup policy to one repository.
    Cleanup,
    /// Deleting one tag or manifest.
    TagDeletion,
    /// Deleting a whole repository.
    RepositoryDeletion,
    /// Importing a repository into a registry's metadata database.
    Import,
}

/// Generated WIT bindings, one module per world. Plugin authors never need these; they
/// are public only so that the export macros can reach them from the plugin's crate.
#[doc(hidden)]
pub mod bindings {
    #[cfg(feature = "retention")]
    pub mod retention {
        wit_bindgen::generate!({
            path: "wit",
            world: "retention-plugin",
            default_bindings_module: "tagwarden_plugin_sdk::bindings::retention",
            pub_export_macro: true,
            export_macro_name: "__export_retention_world",
        });
    }
    #[cfg(feature = "backoff")]
    pub mod backoff {
        wit_bindgen::generate!({
            path: "wit",
            world: "backoff-plugin",
            default_bindings_module: "tagwarden_plugin_sdk::bindings::backoff",
            pub_export_macro: true,
            export_macro_name: "__export_backoff_world",
        });
    }
    #[cfg(feature = "stale")]
    pub mod stale {
        wit_bindgen::generate!({
            path: "wit",
            world: "stale-plugin",
            default_bindings_module: "tagwarden_plugin_sdk::bindings::stale",
            pub_export_macro: true,
            export_macro_name: "__export_stale_world",
        });
    }
}

/// The plugin's identity, filled in by the export macros from its `Cargo.toml`.
#[doc(hidden)]
pub struct PluginIdentity {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
}
