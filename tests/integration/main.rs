//! Integration tests: one binary, one module per area (fast to build, as in ripgrep).

mod api;
mod browser;
mod cli;
mod contract;
mod crash;
mod fleet;
mod golden;
mod imports;
mod pass;
mod plugin_dir;
mod plugin_tools;
mod properties;
mod registry;
mod restore;
mod runtime;
mod serve;
mod shared_log;
mod state_store;
mod support;
mod torture;
