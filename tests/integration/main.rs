//! Integration tests: one binary, one module per area (fast to build, as in ripgrep).

mod cli;
mod crash;
mod golden;
mod imports;
mod pass;
mod properties;
mod registry;
mod runtime;
mod serve;
mod support;
mod torture;
