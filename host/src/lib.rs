//! tagwarden: container-registry cleanup policies as sandboxed WebAssembly plugins.
//!
//! The host owns everything with side effects; plugins only decide. The modules
//! follow that split (see ARCHITECTURE.md for the code map and its invariants):
//!
//! - [`model`]: tags, tag lists, timestamps, verdicts — plain data.
//! - [`recording`]: the recorded tag-list format read by `eval` and written by `record`.
//! - [`runtime`]: the only module that touches wasmtime; loads and runs plugins.
//! - [`registry`]: the only module that speaks HTTP to registries.
//! - [`store`]: the only module that owns SQL (metadata cache, audit log, runs, the daemon's state).
//! - [`metrics`]: the Prometheus metrics every module records into (served at `/metrics`).
//! - [`pass`]: one cleanup pass over one repository (plan, execute, reconcile).
//! - [`plugins`]: finding plugin files by name or path.
//! - [`plugin_dir`]: `serve`'s watched plugin directory: hot swap, canary, pause, quarantine.
//! - [`canary`]: what a new plugin version decides differently from the old (`plugins diff`).
//! - [`scheduler`]: cadence and claim order as pure functions of state and time.
//! - [`restore`]: pushing a deleted tag's kept manifest back (CLI and API).
//! - [`setup`]: config → policies, store, backend and pass context, for every command.
//! - [`input`]: reading operator-supplied files: regular files only, bounded, UTF-8 with positions.
//! - [`untrusted`]: plugin-supplied text made safe for terminals and logs.
//! - [`api`]: the operator's HTTP API and `/metrics`, served beside the daemon.
//! - [`cli`]: the command line; glue over the rest.

pub mod api;
pub mod backend;
pub mod canary;
pub mod cli;
pub mod config;
pub mod deletion;
pub mod input;
pub mod metrics;
pub mod model;
pub mod owner;
pub mod pass;
pub mod plugin_dir;
pub mod plugins;
pub mod recording;
pub mod registry;
pub mod restore;
pub mod runtime;
pub mod scheduler;
pub mod setup;
pub mod store;
pub mod untrusted;
