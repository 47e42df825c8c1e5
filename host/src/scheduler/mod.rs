//! Scheduling: which repository a worker cleans next, and when policies run again — as
//! pure functions of state and time. No SQL, HTTP or wasmtime here: the state lives behind
//! [`crate::store::StateStore`], whose claim query implements [`claim_order`] atomically.
//!
//! GitLab's rules (`gitlab-cleanup-semantics.md` §2), which tagwarden keeps: a repository
//! *requires cleanup* when its policy is enabled and due, its status is unscheduled or
//! scheduled, it has no backoff pending, and it has not started since the policy became due;
//! those are claimed first (unscheduled before scheduled, oldest start first), and only then
//! the unfinished ones (oldest start first), so one huge repository that never finishes in a
//! pass cannot starve the rest. An ongoing repository is never claimed.
//!
//! `daemon.rs` drives it: `tagwarden serve`. `imports.rs` schedules imports to a
//! GitLab-compatible registry and runs the long-running import guard (seed 000).

pub mod cadence;
pub mod daemon;
pub mod imports;

pub use cadence::{Cadence, claim_order, requires_cleanup};
