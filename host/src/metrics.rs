//! The process's Prometheus metrics: one handle ([`get`]) that the registry transport, the
//! plugin runtime and the daemon's events record into, and [`encode`] for `GET /metrics`.
//!
//! Names follow Prometheus conventions (`tagwarden_` prefix, counters end in `_total`,
//! durations in `_seconds`), and every label value comes from a small fixed set (statuses,
//! error classes, HTTP methods and status codes, plugin names from the configuration):
//! never a tag, a repository path or a credential, so the number of series stays bounded
//! however large the registry. docs/operations.md lists them with their meanings.
//!
//! The handle is process-wide, as a Prometheus client's default registry is: what it counts
//! (requests, plugin calls, passes) happens all over the process, and threading a handle
//! through every constructor would change every signature for a counter increment.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::pass::{RepositoryReport, RepositoryStatus};
use crate::runtime::FailureCause;
use crate::scheduler::daemon::DaemonEvent;
use crate::store::{CleanupOutcome, DeletionOutcome, Work};

/// The `Content-Type` of [`encode`]'s output (the Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Class {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCall {
    plugin: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginKind {
    plugin: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginStep {
    plugin: String,
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginName {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    method: String,
    /// The HTTP status code, or `error` when no answer came (timeout, connection failure).
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Decision {
    work: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Recovery {
    work: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Plugin calls take from ~50 µs (a warm evaluation) to their deadline (seconds).
fn plugin_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

/// Registry requests take from ~1 ms (loopback) to their timeout (30 s by default).
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 3.0, 11))
}

/// Every metric tagwarden exports.
pub struct Metrics {
    registry: Registry,
    passes: Family<Outcome, Counter>,
    tags_deleted: Counter,
    deletion_failures: Family<Class, Counter>,
    plugin_calls: Family<PluginCall, Counter>,
    plugin_duration: HistogramFamily<PluginKind>,
    requests: Family<Request, Counter>,
    request_duration: HistogramFamily<Method>,
    backoff_decisions: Family<Decision, Counter>,
    recoveries: Family<Recovery, Counter>,
    repositories: Family<Status, Gauge>,
    deletions: Family<Status, Gauge>,
    workers_busy: Gauge,
    plugin_load_failures: Family<PluginStep, Counter>,
    plugin_loads: Family<PluginName, Counter>,
    plugin_quarantines: Family<PluginName, Counter>,
    /// Calls and failures by plugin name, for the status page (a family cannot be read back).
    plugin_totals: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("tagwarden"),
            passes: Family::default(),
            tags_deleted: Counter::default(),
            deletion_failures: Family::default(),
            plugin_calls: Family::default(),
            plugin_duration: Family::new_with_constructor(plugin_buckets),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            backoff_decisions: Family::default(),
            recoveries: Family::default(),
            repositories: Family::default(),
            deletions: Family::default(),
            workers_busy: Gauge::default(),
            plugin_load_failures: Family::default(),
            plugin_loads: Family::default(),
            plugin_quarantines: Family::default(),
            plugin_totals: Mutex::default(),
        };
        let r = &mut m.registry;
        r.register("passes", "Cleanup passes and repository deletions finished, by outcome", m.passes.clone());
        r.register("tags_deleted", "Tags deleted", m.tags_deleted.clone());
        r.register("deletion_failures", "Deletions that failed, by error class", m.deletion_failures.clone());
        r.register("plugin_evaluations", "Plugin calls, by plugin, kind and outcome", m.plugin_calls.clone());
        r.register_with_unit("plugin_evaluation_duration", "How long plugin calls took", Unit::Seconds, m.plugin_duration.clone());
        r.register("registry_requests", "HTTP requests to the registry, by method and status", m.requests.clone());
        r.register_with_unit("registry_request_duration", "How long registry requests took", Unit::Seconds, m.request_duration.clone());
        r.register("backoff_decisions", "Decisions after a failure: retry later or give up", m.backoff_decisions.clone());
        r.register("stale_recoveries", "Ongoing work taken back: judged stale, or its holder gone", m.recoveries.clone());
        r.register("repositories", "Repositories by cleanup status (the queue)", m.repositories.clone());
        r.register("repository_deletions", "Repository deletions by status", m.deletions.clone());
        r.register("workers_busy", "Passes and deletions running now", m.workers_busy.clone());
        r.register(
            "plugin_load_failures",
            "Plugin files of the plugin directory that failed to load, by plugin (file stem) and step",
            m.plugin_load_failures.clone(),
        );
        r.register("plugin_loads", "Plugin versions put in service from the plugin directory", m.plugin_loads.clone());
        r.register("plugin_quarantines", "Plugins quarantined after faults in a row", m.plugin_quarantines.clone());
        m
    }

    /// One HTTP request to the registry (every attempt, retries included).
    pub fn registry_request(&self, method: &str, status: Option<u16>, elapsed: Duration) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.requests.get_or_create(&Request { method: method.to_owned(), status }).inc();
        self.request_duration.get_or_create(&Method { method: method.to_owned() }).observe(elapsed.as_secs_f64());
    }

    /// One plugin call (`kind`: retention, backoff, stale) and how it ended.
    pub fn plugin_call(&self, plugin: &str, kind: &'static str, failure: Option<&FailureCause>, elapsed: Duration) {
        let outcome = failure.map_or("ok", failure_label);
        self.plugin_calls.get_or_create(&PluginCall { plugin: plugin.to_owned(), kind, outcome }).inc();
        self.plugin_duration.get_or_create(&PluginKind { plugin: plugin.to_owned(), kind }).observe(elapsed.as_secs_f64());
        let mut totals = self.plugin_totals.lock().unwrap_or_else(|e| e.into_inner());
        let entry = totals.entry(plugin.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += u64::from(failure.is_some());
    }

    /// A file of the plugin directory failed at `step` (read, load, kind, params).
    pub fn plugin_load_failed(&self, plugin: &str, step: &'static str) {
        self.plugin_load_failures.get_or_create(&PluginStep { plugin: plugin.to_owned(), step }).inc();
    }

    /// A version of plugin `plugin` went into service.
    pub fn plugin_loaded(&self, plugin: &str) {
        self.plugin_loads.get_or_create(&PluginName { plugin: plugin.to_owned() }).inc();
    }

    /// Plugin `plugin` was quarantined.
    pub fn plugin_quarantined(&self, plugin: &str) {
        self.plugin_quarantines.get_or_create(&PluginName { plugin: plugin.to_owned() }).inc();
    }

    /// Calls of plugin `name` so far, and how many failed.
    pub fn plugin_totals(&self, name: &str) -> (u64, u64) {
        self.plugin_totals.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or_default()
    }

    /// What the daemon reports: passes, deletions, backoff decisions, recoveries.
    pub fn daemon_event(&self, event: &DaemonEvent<'_>) {
        match event {
            DaemonEvent::PassFinished { report, outcome } => {
                self.pass(report);
                if let CleanupOutcome::Failed { next_attempt_at, .. } = outcome {
                    self.backoff("cleanup", next_attempt_at.is_some());
                }
            }
            DaemonEvent::DeletionFinished { report, outcome } => {
                self.pass(report);
                if let DeletionOutcome::Failed { next_attempt_at, .. } = outcome {
                    self.backoff("deletion", next_attempt_at.is_some());
                }
            }
            DaemonEvent::Stale { work, .. } => {
                self.recoveries.get_or_create(&Recovery { work: work_label(*work), reason: "stale" }).inc();
            }
            DaemonEvent::Recovered { work, .. } => {
                self.recoveries.get_or_create(&Recovery { work: work_label(*work), reason: "holder_gone" }).inc();
            }
            _ => {}
        }
    }

    fn pass(&self, report: &RepositoryReport) {
        self.passes.get_or_create(&Outcome { outcome: status_label(&report.status) }).inc();
        self.tags_deleted.inc_by(report.tags_deleted as u64);
        if report.failed > 0 {
            let class = report.failure.as_ref().map_or("transient", |f| f.class.as_str()).to_owned();
            self.deletion_failures.get_or_create(&Class { class }).inc_by(report.failed as u64);
        }
    }

    fn backoff(&self, work: &'static str, retry: bool) {
        self.backoff_decisions.get_or_create(&Decision { work, decision: if retry { "retry" } else { "give_up" } }).inc();
    }

    /// Sets the gauges read from the state at scrape time: repositories and deletions by
    /// status, and the workers busy.
    pub fn set_queue(&self, repositories: &[(&'static str, usize)], deletions: &[(&'static str, usize)], workers_busy: usize) {
        for (status, n) in repositories {
            self.repositories.get_or_create(&Status { status }).set(*n as i64);
        }
        for (status, n) in deletions {
            self.deletions.get_or_create(&Status { status }).set(*n as i64);
        }
        self.workers_busy.set(workers_busy as i64);
    }
}

fn work_label(work: Work) -> &'static str {
    match work {
        Work::Cleanup => "cleanup",
        Work::Deletion => "deletion",
    }
}

/// A pass's outcome as a label (the status without its detail).
fn status_label(status: &RepositoryStatus) -> &'static str {
    match status {
        RepositoryStatus::Completed => "completed",
        RepositoryStatus::NotFound => "not_found",
        RepositoryStatus::Planned => "planned",
        RepositoryStatus::Refused(_) => "refused",
        RepositoryStatus::Unfinished(_) => "unfinished",
        RepositoryStatus::Failed(_) => "failed",
    }
}

fn failure_label(cause: &FailureCause) -> &'static str {
    match cause {
        FailureCause::Load(_) => "load",
        FailureCause::InvalidParams(_) => "invalid_params",
        FailureCause::Rejected(_) => "rejected",
        FailureCause::Timeout(_) => "timeout",
        FailureCause::MemoryExhausted(_) => "memory",
        FailureCause::FuelExhausted(_) => "fuel",
        FailureCause::Panic(_) => "panic",
        FailureCause::Trap(_) => "trap",
        FailureCause::InvalidAnswer(_) => "invalid_answer",
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Every metric in the Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &get().registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        get().registry_request("GET", Some(200), Duration::from_millis(3));
        let text = encode();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("tagwarden_"), "{line}");
            if line.ends_with(" counter") {
                assert!(name.ends_with("_total"), "{line}");
            }
            if line.ends_with(" histogram") {
                assert!(name.ends_with("_seconds"), "{line}");
            }
        }
        assert!(text.contains("tagwarden_registry_requests_total{method=\"GET\",status=\"200\"}"), "{text}");
    }
}
