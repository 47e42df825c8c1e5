//! Integration tests: one binary, one module per area (fast to build, as in ripgrep).

mod golden;
mod registry;
mod runtime;
mod support;
