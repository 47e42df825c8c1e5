//! `[plugins] dir`: the daemon's plugin directory, watched so that a new `.wasm` replaces the
//! version in service without a restart.
//!
//! A plugin's name is its file stem; policies name it. [`PluginDirectory::open`] loads every
//! `.wasm` at start; [`PluginDirectory::watch`] then looks at the directory every
//! `[plugins] watch_interval` from a thread of its own (compiling is seconds of CPU that must
//! not hold an async worker). Looking is a `stat` per file rather than inotify: it needs no
//! platform support, sees a Kubernetes ConfigMap's symlink swap and files on network
//! filesystems alike, and a file is only ever loaded once its size, modification time and
//! inode held still between two looks, so a copy in progress is not read half-way. The look
//! that confirms a change comes 15 ms after the one that saw it ([`CONFIRM_AFTER`]), not a
//! whole interval later: a file renamed into place is in service a compile after it lands.
//!
//! Loading a new or changed file: read → sha256 (the same bytes as in service: nothing to
//! do) → compile (the runtime's compile cache) and check the world and contract version →
//! check that it is a retention plugin → configure it with the params of every policy that
//! uses it (the plugin validates them) → swap the daemon's [`PolicySet`] in one step. The
//! daemon's backoff or stale plugin, when `[plugins] backoff`/`stale` names a file of the
//! directory ([`WatchedStrategy`]), is checked for its kind and tried with its params (the
//! checks of start, [`StrategyChecks`]) and swapped into the [`StrategySet`]; no canary (its
//! decisions delete no tags). Passes
//! already running keep the `Arc` of the version they started with. If a step fails, the
//! previous version stays in service and the failure is recorded (state `failed`, the file,
//! the step and why), unless the file changed within `[plugins] settle`: a copy still being
//! written is tried again once it settles, never reported broken for good.
//!
//! Canary: before a new version replaces the one in service, both decide over the latest tag
//! lists of (a sample of, `[plugins] canary_sample`) the repositories its policies cover
//! ([`CanaryLists`]; the daemon's lists them through its backend), and the difference
//! ([`crate::canary::Diff`]) is recorded (`plugins diff NAME` shows it). The brake: a version
//! that would delete more than `[plugins] canary_max_extra_deletions` of the compared tags
//! beyond the old one, or that fails where the old one decides, stays `pending` while the old
//! one serves, until `tagwarden plugins approve NAME`. Nothing is compared when nothing serves
//! (at start, or after a removal); a version that was pending when the daemon stopped is
//! pending again at start, its policies paused, since the version it would replace is gone.
//!
//! A removed file pauses the policies that use it (they are disabled in the state, so
//! nothing claims their repositories); nothing falls back to a default that could delete. A
//! removed backoff or stale plugin's file pauses nothing: its last good version keeps deciding
//! (state `removed`), since the daemon needs one and it deletes nothing; while one is
//! quarantined, the host's default backoff decides, and no work is judged stale. A
//! plugin whose evaluations trap, time out or exhaust memory or fuel `[plugins]
//! quarantine_after` times in a row is quarantined: its policies pause until a new file
//! replaces it or `tagwarden plugins release NAME`.
//!
//! What this module knows of plugins goes through [`crate::runtime`]; what it records goes
//! through [`crate::store::PluginTable`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::canary::{Diff, RepositoryDiff};
use crate::model::{TagList, Timestamp};
use crate::pass::{PassContext, Policy};
use crate::runtime::{BackoffPlugin, CallCounts, ConfiguredPolicy, Plugin, PluginLimits, PluginMeta, PluginRuntime, StalePlugin};
use crate::setup::{BoundPolicy, PolicySet, Strategies, StrategyChecks, StrategyRole, StrategySet};
use crate::store::{CanaryOutcome, CanaryRecord, PluginRecord, PluginState, PluginTable, StateStore, Store};

/// How the directory is watched (`[plugins]` in the config).
#[derive(Debug, Clone)]
pub struct DirectoryOptions {
    pub dir: PathBuf,
    pub watch_interval: Duration,
    pub settle: Duration,
    pub quarantine_after: u32,
    /// Repositories the canary compares on; 0: no canary.
    pub canary_sample: usize,
    /// The brake, a fraction of the compared tags.
    pub canary_max_extra_deletions: f64,
}

/// The daemon's backoff and stale plugins, for the directory to swap the ones that are its
/// files.
pub struct DirectoryStrategies {
    /// What the daemon and the import guard consult (loaded at start, as without a directory).
    pub set: Arc<StrategySet>,
    /// The roles whose plugin is a file of the directory ([`crate::setup::directory_strategy`]).
    pub watched: Vec<WatchedStrategy>,
    /// What a new version passes before it serves (the checks of start).
    pub checks: StrategyChecks,
}

impl DirectoryStrategies {
    /// No backoff or stale plugin is a file of the directory (benchmarks of the directory).
    pub fn none() -> DirectoryStrategies {
        DirectoryStrategies {
            set: StrategySet::new(Strategies::default()),
            watched: Vec::new(),
            checks: StrategyChecks { delete_timeout: Duration::from_secs(250), import_timeout_per_tag: None },
        }
    }
}

/// `[plugins] backoff` or `stale`, naming a file of the directory.
#[derive(Debug, Clone)]
pub struct WatchedStrategy {
    pub role: StrategyRole,
    /// The file stem.
    pub plugin: String,
    /// Its params (JSON) and limits, to check and run each new version with.
    pub params: String,
    pub limits: PluginLimits,
}

/// Where the canary finds the latest tag lists of the repositories a plugin's policies cover.
pub trait CanaryLists: Send + Sync {
    /// Up to `sample` repositories of `policies`, each with its policy and its tag list as
    /// it is now.
    fn sample(&self, policies: &[String], sample: usize) -> anyhow::Result<Vec<SampledList>>;
}

/// One repository of the canary's sample.
pub struct SampledList {
    pub repository: String,
    pub policy: String,
    /// `Ok(None)`: the repository is gone; `Err`: it could not be listed.
    pub list: Result<Option<TagList>, String>,
}

/// The daemon's [`CanaryLists`]: repositories of the state (cleaned most recently first),
/// listed through the pass's backend (the registry, with its metadata cache, or recordings)
/// from the directory's thread. The state holds no tag lists, so these are fresh listings.
pub struct BackendLists {
    /// The cleanup state (PostgreSQL with `[state] url`): which repositories to sample.
    pub state: Arc<dyn StateStore>,
    pub ctx: Arc<PassContext>,
    pub runtime: tokio::runtime::Handle,
}

impl CanaryLists for BackendLists {
    fn sample(&self, policies: &[String], sample: usize) -> anyhow::Result<Vec<SampledList>> {
        let repositories = self.state.canary_sample(policies, sample)?;
        Ok(repositories
            .into_iter()
            .map(|(repository, policy)| {
                let list = self.runtime.block_on(self.ctx.backend.tag_list(&repository, &|_, _| {})).map_err(|e| e.to_string());
                SampledList { repository, policy, list }
            })
            .collect())
    }
}

/// What the plugin directory reports (`serve` prints these).
#[derive(Debug)]
pub enum PluginEvent<'a> {
    /// A version went into service; `elapsed` from reading the file to the swap, the canary
    /// excluded (it has its own event).
    Loaded {
        name: &'a str,
        file: &'a Path,
        meta: &'a PluginMeta,
        elapsed: Duration,
        policies: &'a [String],
        /// The daemon's strategy it serves as, for a backoff or stale plugin.
        role: Option<StrategyRole>,
        replaced: Option<&'a str>,
    },
    /// A file failed at `step`; `serving` is the sha256 of the version still in service.
    LoadFailed {
        name: &'a str,
        file: &'a Path,
        step: &'static str,
        why: &'a str,
        serving: Option<&'a str>,
    },
    /// A file failed while it was still changing: tried again once it settles.
    Settling {
        name: &'a str,
        file: &'a Path,
        why: &'a str,
    },
    /// The file is gone: its policies pause.
    Removed {
        name: &'a str,
        file: &'a Path,
        policies: &'a [String],
    },
    /// The file of the daemon's backoff or stale plugin is gone: the version in service
    /// (`serving`, its sha256) keeps deciding.
    StrategyRemoved {
        name: &'a str,
        file: &'a Path,
        role: StrategyRole,
        serving: &'a str,
    },
    Quarantined {
        name: &'a str,
        reason: &'a str,
        policies: &'a [String],
    },
    /// An operator released a quarantined plugin (`tagwarden plugins release`).
    Released {
        name: &'a str,
    },
    /// A new version was compared with the one in service; `held`: why it waits for approval.
    Canary {
        name: &'a str,
        meta: &'a PluginMeta,
        diff: &'a Diff,
        elapsed: Duration,
        held: Option<&'a str>,
    },
    /// An operator approved the version a canary held (`tagwarden plugins approve`): in service.
    Approved {
        name: &'a str,
        meta: &'a PluginMeta,
        replaced: Option<&'a str>,
    },
}

type OnEvent = dyn Fn(PluginEvent<'_>) + Send + Sync;

/// A file as one look saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp { len: metadata.len(), modified: metadata.modified().ok(), inode: metadata.ino() }
    }

    /// How long ago the file last changed (zero when unknown or in the future).
    fn age(&self) -> Duration {
        self.modified.and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default()
    }
}

/// A version of the daemon's backoff or stale plugin, checked with its params.
#[derive(Clone)]
enum Strategy {
    Backoff(BackoffPlugin),
    Stale(StalePlugin),
}

impl Strategy {
    fn plugin(&self) -> &Plugin {
        match self {
            Strategy::Backoff(b) => b.plugin(),
            Strategy::Stale(s) => s.plugin(),
        }
    }
}

/// The version of a plugin in service.
struct Serving {
    meta: PluginMeta,
    /// Each policy that uses it, configured with its params and limits.
    configured: Vec<(String, Arc<ConfiguredPolicy>)>,
    /// What it serves as when it is the daemon's backoff or stale plugin.
    strategy: Option<Strategy>,
    loaded_at: Timestamp,
}

impl Serving {
    /// Every loaded instance of this version (one per policy, or the strategy's).
    fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.configured.iter().map(|(_, c)| c.plugin().plugin()).chain(self.strategy.iter().map(Strategy::plugin))
    }

    fn counts(&self) -> CallCounts {
        let mut total = CallCounts::default();
        for p in self.plugins() {
            let n = p.call_counts();
            total.evaluations += n.evaluations;
            total.failures += n.failures;
            if n.consecutive_faults >= total.consecutive_faults {
                total.consecutive_faults = n.consecutive_faults;
                total.last_fault = n.last_fault.or(total.last_fault);
            }
        }
        total
    }
}

/// A version the canary held back, and its canary's id.
struct Held {
    version: Serving,
    canary: Option<i64>,
}

/// One plugin name of the directory.
struct Entry {
    serving: Option<Serving>,
    /// A newer version waiting for an operator's approval.
    pending: Option<Held>,
    state: PluginState,
    reason: Option<String>,
    /// The file at the last look.
    seen: Option<Stamp>,
    /// The file as last tried.
    tried: Option<Stamp>,
    /// The last try failed while the file was still changing: try once more once it settles.
    provisional: bool,
    /// The row last written, so unchanged rows are not written again.
    written: Option<PluginRecord>,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            serving: None,
            pending: None,
            state: PluginState::Paused,
            reason: None,
            seen: None,
            tried: None,
            provisional: false,
            written: None,
        }
    }

    /// Why policies that use it cannot run, if they cannot.
    fn out_of_service(&self, name: &str) -> Option<String> {
        match (&self.serving, self.state) {
            (_, PluginState::Quarantined) => {
                Some(format!("plugin `{name}` is quarantined: {}", self.reason.as_deref().unwrap_or("faults in a row")))
            }
            (None, _) => Some(self.reason.clone().unwrap_or_else(|| format!("plugin `{name}` is not loaded"))),
            (Some(_), _) => None,
        }
    }
}

/// The daemon's plugin directory. See the module documentation.
pub struct PluginDirectory {
    options: DirectoryOptions,
    runtime: Arc<PluginRuntime>,
    /// The cleanup state, where pausing and resuming a policy is recorded.
    state: Arc<dyn StateStore>,
    table: PluginTable,
    /// The policies as configured (watched ones with whatever decider they had last).
    bound: Vec<BoundPolicy>,
    policies: Arc<PolicySet>,
    strategies: DirectoryStrategies,
    entries: BTreeMap<String, Entry>,
    /// Where the canary's tag lists come from; `None`: no canary.
    canary: Option<Arc<dyn CanaryLists>>,
    /// Whether the daemon runs: from then on, pausing and resuming policies is written to
    /// the state (before that the daemon records the policies itself, with their first run).
    started: bool,
    /// A file changed at the last look and waits to be seen unchanged once more: the next
    /// look comes after [`CONFIRM_AFTER`] rather than a whole `watch_interval`.
    unconfirmed: bool,
}

/// How soon a changed file is looked at again to confirm it holds still. A file renamed
/// into place (what deployment tools do) is whole at once, so this is most of what a swap
/// waits for besides compiling; a copy still in progress shows another size or time by
/// then, or fails to load and is tried again once it settles (`[plugins] settle`).
const CONFIRM_AFTER: Duration = Duration::from_millis(15);

impl PluginDirectory {
    /// Loads every `.wasm` of the directory and every plugin the policies name, and builds
    /// the policy set from them. A plugin that does not load leaves its policies paused (shown
    /// by `plugins list` and `status`); only a missing or unreadable directory fails here.
    pub fn open(
        options: DirectoryOptions,
        runtime: Arc<PluginRuntime>,
        store: &Store,
        state: Arc<dyn StateStore>,
        bound: Vec<BoundPolicy>,
        strategies: DirectoryStrategies,
        on_event: &OnEvent,
    ) -> anyhow::Result<PluginDirectory> {
        check_dir(&options.dir)?;
        let policies = PolicySet::new(bound.clone());
        let mut dir = PluginDirectory {
            options,
            runtime,
            state,
            table: store.plugin_table(),
            bound,
            policies,
            strategies,
            entries: BTreeMap::new(),
            canary: None,
            started: false,
            unconfirmed: false,
        };
        dir.look(on_event)?;
        Ok(dir)
    }

    /// Compares each new version with the one in service over `lists` before it replaces it.
    pub fn with_canary(mut self, lists: Arc<dyn CanaryLists>) -> Self {
        self.canary = Some(lists);
        self
    }

    /// The daemon's policies, which this directory keeps up to date.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.clone()
    }

    /// The daemon's backoff and stale plugins, which this directory keeps up to date.
    pub fn strategies(&self) -> Arc<StrategySet> {
        self.strategies.set.clone()
    }

    /// Watches the directory from a thread of its own until the returned flag is set (or the
    /// process ends). `wake` is notified after every change, so the daemon claims at once.
    pub fn watch(mut self, wake: Arc<tokio::sync::Notify>, on_event: Arc<OnEvent>) -> anyhow::Result<Arc<AtomicBool>> {
        self.started = true;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("tagwarden-plugins".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    let wait = if self.unconfirmed { CONFIRM_AFTER.min(self.options.watch_interval) } else { self.options.watch_interval };
                    std::thread::sleep(wait);
                    match self.look(&*on_event) {
                        Ok(true) => wake.notify_one(),
                        Ok(false) => {}
                        Err(e) => tracing::warn!("watching the plugin directory {}: {e:#}", self.options.dir.display()),
                    }
                }
            })
            .context("starting the plugin directory's thread")?;
        Ok(stop)
    }

    /// One look at the directory: loads what changed and settled, pauses what is gone,
    /// quarantines and releases. Returns whether the policies changed.
    pub fn look(&mut self, on_event: &OnEvent) -> anyhow::Result<bool> {
        let mut names: Vec<String> = self.bound.iter().filter_map(|b| b.watched_plugin.clone()).collect();
        names.extend(self.strategies.watched.iter().map(|w| w.plugin.clone()));
        let listing = std::fs::read_dir(&self.options.dir)
            .with_context(|| format!("reading the plugin directory {} (`plugins.dir`)", self.options.dir.display()))?;
        for item in listing.flatten() {
            let path = item.path();
            if path.extension().is_some_and(|e| e == "wasm")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                names.push(stem.to_owned());
            }
        }
        names.sort();
        names.dedup();
        let mut changed = false;
        self.unconfirmed = false;
        for name in &names {
            changed |= self.look_at(name, on_event);
        }
        if changed {
            self.rebuild()?;
        }
        for name in &names {
            self.record(name)?;
        }
        Ok(changed)
    }

    /// Looks at one plugin's file; returns whether what serves its policies changed.
    fn look_at(&mut self, name: &str, on_event: &OnEvent) -> bool {
        let file = self.options.dir.join(format!("{name}.wasm"));
        let users = self.users(name);
        let quarantine_after = self.options.quarantine_after;
        let settle = self.options.settle;
        let requested = self.table.take_request(name).unwrap_or_else(|e| {
            tracing::warn!("reading requests for plugin {name}: {e:#}");
            None
        });
        let entry = self.entries.entry(name.to_owned()).or_insert_with(Entry::new);
        let mut changed = false;

        let stamp = std::fs::metadata(&file).ok().filter(|m| m.is_file()).map(|m| Stamp::of(&m));
        let role = self.strategies.watched.iter().find(|w| w.plugin == name).map(|w| w.role);
        if let (None, Some(role), Some(serving)) = (stamp, role, &entry.serving) {
            // The daemon's backoff or stale plugin: pausing is no option (cleanups still fail,
            // work still runs long), and its decisions delete no tags, so the version in
            // service keeps deciding until a file is back.
            if entry.state != PluginState::Removed && entry.state != PluginState::Quarantined {
                if let Some(held) = entry.pending.take() {
                    supersede(&self.table, name, &held);
                }
                entry.state = PluginState::Removed;
                entry.reason = Some(format!(
                    "its file {} was removed; the {} plugin in service (sha256:{}) keeps deciding until a file is back",
                    file.display(),
                    role.as_str(),
                    &serving.meta.sha256[..12]
                ));
                (entry.seen, entry.tried, entry.provisional) = (None, None, false);
                on_event(PluginEvent::StrategyRemoved { name, file: &file, role, serving: &serving.meta.sha256 });
            }
            return false;
        }
        let Some(stamp) = stamp else {
            if entry.serving.is_some() || entry.reason.is_none() || entry.state != PluginState::Paused {
                let was_serving = entry.serving.take().is_some();
                if let Some(held) = entry.pending.take() {
                    supersede(&self.table, name, &held);
                }
                entry.state = PluginState::Paused;
                entry.reason = Some(if was_serving {
                    format!("its file {} was removed; its policies pause until it is back", file.display())
                } else {
                    format!("there is no file {}; its policies pause until it is there", file.display())
                });
                (entry.seen, entry.tried, entry.provisional) = (None, None, false);
                on_event(PluginEvent::Removed { name, file: &file, policies: &users });
                changed = true;
            }
            return changed;
        };
        // Loaded once it held still between two looks, or has not changed for `settle`; at
        // start, at once (a copy still being written then fails provisionally, tried again
        // once it settles).
        let stable = !self.started || entry.seen == Some(stamp) || stamp.age() >= settle;
        entry.seen = Some(stamp);
        let retry = entry.tried != Some(stamp) || (entry.provisional && stamp.age() >= settle);
        self.unconfirmed |= retry && !stable;
        if stable && retry {
            entry.tried = Some(stamp);
            entry.provisional = false;
            changed |= self.load(name, &file, &users, stamp, on_event);
        }

        let entry = self.entries.get_mut(name).expect("inserted above");
        if requested.as_deref() == Some("release") && entry.state == PluginState::Quarantined {
            for p in entry.serving.iter().flat_map(Serving::plugins) {
                p.clear_faults();
            }
            entry.state = PluginState::Active;
            entry.reason = None;
            on_event(PluginEvent::Released { name });
            changed = true;
        }
        if let Some(sha) = requested.as_deref().and_then(|r| r.strip_prefix("approve ")) {
            match entry.pending.take() {
                Some(held) if held.version.meta.sha256 == sha => {
                    if let Some(id) = held.canary
                        && let Err(e) = self.table.set_canary_outcome(id, CanaryOutcome::Approved)
                    {
                        tracing::warn!("plugin {name}: {e:#}");
                    }
                    let replaced = entry.serving.replace(held.version).map(|s| s.meta.sha256);
                    entry.state = PluginState::Active;
                    entry.reason = None;
                    crate::metrics::get().plugin_loaded(name);
                    let meta = &entry.serving.as_ref().expect("just set").meta;
                    on_event(PluginEvent::Approved { name, meta, replaced: replaced.as_deref() });
                    changed = true;
                }
                other => {
                    let waiting = other.as_ref().map(|h| format!("sha256:{} waits", h.version.meta.sha256));
                    tracing::warn!(
                        "plugin {name}: an approval of sha256:{sha} arrived, but {}; nothing changed",
                        waiting.unwrap_or_else(|| "no version waits for approval".to_owned())
                    );
                    entry.pending = other;
                }
            }
        }
        if let Some(serving) = &entry.serving
            && matches!(entry.state, PluginState::Active | PluginState::Failed | PluginState::Pending | PluginState::Removed)
        {
            let counts = serving.counts();
            if counts.consecutive_faults >= quarantine_after {
                let meanwhile = match role {
                    Some(StrategyRole::Backoff) => "; meanwhile the host's default backoff decides",
                    Some(StrategyRole::Stale) => "; meanwhile no work is judged stale (leases still end a dead holder's work)",
                    None => "",
                };
                let reason = format!(
                    "{} evaluations in a row trapped, timed out or ran out of memory or fuel (the last: {}); \
                     a new file or `tagwarden plugins release {name}` puts it back in service{meanwhile}",
                    counts.consecutive_faults,
                    counts.last_fault.as_deref().unwrap_or("unknown")
                );
                entry.state = PluginState::Quarantined;
                entry.reason = Some(reason.clone());
                crate::metrics::get().plugin_quarantined(name);
                on_event(PluginEvent::Quarantined { name, reason: &reason, policies: &users });
                changed = true;
            }
        }
        changed
    }

    /// Tries to put the file's version in service. Returns whether it did.
    fn load(&mut self, name: &str, file: &Path, users: &[String], stamp: Stamp, on_event: &OnEvent) -> bool {
        let started = Instant::now();
        let attempt = self.prepare(file);
        let entry = self.entries.get_mut(name).expect("inserted by look_at");
        let result = match attempt {
            Ok((sha256, bytes)) => {
                if entry.serving.as_ref().is_some_and(|s| s.meta.sha256 == sha256) {
                    // The bytes in service (touched, a bad copy replaced by the good one again,
                    // or the old file put back over a version the canary held).
                    if let Some(held) = entry.pending.take() {
                        supersede(&self.table, name, &held);
                    }
                    if matches!(entry.state, PluginState::Failed | PluginState::Pending | PluginState::Removed) {
                        entry.state = PluginState::Active;
                        entry.reason = None;
                    }
                    return false;
                }
                if entry.pending.as_ref().is_some_and(|h| h.version.meta.sha256 == sha256) {
                    // The version already waiting for approval (touched).
                    return false;
                }
                configure(&self.runtime, file, &bytes, &self.bound, &self.strategies, name)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((meta, configured, strategy)) => {
                let version = Serving { meta, configured, strategy, loaded_at: Timestamp::now() };
                // This file supersedes any version waiting for approval.
                if let Some(held) = entry.pending.take() {
                    supersede(&self.table, name, &held);
                }
                let mut canary_time = Duration::ZERO;
                let held = match (&entry.serving, &self.canary) {
                    // Backoff and stale decisions delete no tags: no canary for them.
                    (Some(old), Some(lists)) if self.options.canary_sample > 0 && version.strategy.is_none() => {
                        let canary_started = Instant::now();
                        let diff = run_canary(old, &version, &**lists, users, self.options.canary_sample);
                        let max = self.options.canary_max_extra_deletions;
                        let held = diff.held_because(max);
                        let record = CanaryRecord {
                            id: 0,
                            plugin: name.to_owned(),
                            at: Timestamp::now(),
                            old_sha256: old.meta.sha256.clone(),
                            old_version: format!("{} {}", old.meta.name, old.meta.version),
                            new_sha256: version.meta.sha256.clone(),
                            new_version: format!("{} {}", version.meta.name, version.meta.version),
                            outcome: if held.is_some() { CanaryOutcome::Pending } else { CanaryOutcome::Swapped },
                            max_extra_fraction: max,
                            diff,
                        };
                        canary_time = canary_started.elapsed();
                        let id = self.table.record_canary(&record).map_err(|e| tracing::warn!("plugin {name}: {e:#}")).ok();
                        on_event(PluginEvent::Canary {
                            name,
                            meta: &version.meta,
                            diff: &record.diff,
                            elapsed: canary_time,
                            held: held.as_deref(),
                        });
                        held.map(|why| (why, record.diff.summary(), id))
                    }
                    // Nothing serves: a version the canary held before a restart waits again
                    // (the version it would replace is gone), its policies paused.
                    (None, _) => match self.table.latest_canary(name, Some(&version.meta.sha256)) {
                        Ok(Some(c)) => {
                            let why = "a canary held it before the daemon restarted; the version it would replace is no longer \
                                       loaded, so its policies pause until it is approved";
                            on_event(PluginEvent::Canary {
                                name,
                                meta: &version.meta,
                                diff: &c.diff,
                                elapsed: Duration::ZERO,
                                held: Some(why),
                            });
                            Some((why.to_owned(), c.diff.summary(), Some(c.id)))
                        }
                        Ok(None) => None,
                        Err(e) => {
                            tracing::warn!("plugin {name}: {e:#}");
                            None
                        }
                    },
                    _ => None,
                };
                if let Some((why, summary, canary)) = held {
                    let m = &version.meta;
                    entry.state = PluginState::Pending;
                    entry.reason = Some(format!(
                        "version {} {} (sha256:{}) waits for approval: {why}. Canary: {summary}. \
                         `tagwarden plugins diff {name}` shows the difference, `tagwarden plugins approve {name}` puts it in service{}",
                        m.name,
                        m.version,
                        m.sha256,
                        match &entry.serving {
                            Some(s) => format!("; the version in service (sha256:{}) keeps serving", s.meta.sha256),
                            None => String::new(),
                        }
                    ));
                    entry.pending = Some(Held { version, canary });
                    // Policies change only when nothing served (they now say why they pause).
                    return entry.serving.is_none();
                }
                let replaced = entry.serving.as_ref().map(|s| s.meta.sha256.clone());
                entry.serving = Some(version);
                entry.state = PluginState::Active;
                entry.reason = None;
                let meta = &entry.serving.as_ref().expect("just set").meta;
                crate::metrics::get().plugin_loaded(name);
                on_event(PluginEvent::Loaded {
                    name,
                    file,
                    meta,
                    elapsed: started.elapsed().saturating_sub(canary_time),
                    policies: users,
                    role: self.strategies.watched.iter().find(|w| w.plugin == name).map(|w| w.role),
                    replaced: replaced.as_deref(),
                });
                true
            }
            Err((_, why)) if stamp.age() < self.options.settle => {
                // Still being written, perhaps: once more when it settles.
                entry.provisional = true;
                on_event(PluginEvent::Settling { name, file, why: &why });
                false
            }
            Err((step, why)) => {
                if let Some(held) = entry.pending.take() {
                    supersede(&self.table, name, &held);
                }
                let serving = entry.serving.as_ref().map(|s| s.meta.sha256.as_str());
                entry.state = PluginState::Failed;
                entry.reason = Some(format!(
                    "{} failed at step `{step}`: {why}{}",
                    file.display(),
                    match serving {
                        Some(sha) => format!(" (the previous version, sha256:{}, stays in service)", &sha[..12]),
                        None => " (no version of it is in service: its policies pause)".to_owned(),
                    }
                ));
                crate::metrics::get().plugin_load_failed(name, step);
                let nothing_serves = serving.is_none();
                on_event(PluginEvent::LoadFailed { name, file, step, why: &why, serving });
                // Its paused policies now say why.
                nothing_serves
            }
        }
    }

    /// Reads the file and its sha256.
    fn prepare(&self, file: &Path) -> Result<(String, Vec<u8>), (&'static str, String)> {
        let bytes = crate::input::read_bytes(file, "plugin file", crate::input::limits::PLUGIN_BYTES, "")
            .map_err(|e| ("read", format!("{e:#}")))?;
        Ok((crate::model::sha256_hex(&bytes), bytes))
    }

    /// The policies that use plugin `name`.
    fn users(&self, name: &str) -> Vec<String> {
        self.bound.iter().filter(|b| b.watched_plugin.as_deref() == Some(name)).map(|b| b.policy.name.clone()).collect()
    }

    /// Builds the policy set from the entries and puts it in force. A policy going out of
    /// service is disabled in the state before the swap, one coming back enabled after it, so
    /// the daemon never claims a repository for a policy that cannot run.
    fn rebuild(&mut self) -> anyhow::Result<()> {
        let mut pausing = Vec::new();
        let mut resuming = Vec::new();
        for b in &mut self.bound {
            let Some(name) = &b.watched_plugin else { continue };
            let was_paused = b.policy.paused_because().is_some();
            let entry = self.entries.get(name);
            b.policy = match entry.map_or(Some(format!("plugin `{name}` is not loaded")), |e| e.out_of_service(name)) {
                Some(why) => Policy::paused(&b.policy.name, why),
                None => {
                    let serving = entry.and_then(|e| e.serving.as_ref()).expect("in service");
                    let configured = serving.configured.iter().find(|(p, _)| *p == b.policy.name).map(|(_, c)| c.clone());
                    match configured {
                        Some(c) => Policy { name: b.policy.name.clone(), decider: crate::pass::Decider::Plugin(c) },
                        None => Policy::paused(&b.policy.name, format!("plugin `{name}` was not configured for this policy")),
                    }
                }
            };
            match (was_paused, b.policy.paused_because().is_some()) {
                (false, true) => pausing.push(b.clone()),
                (true, false) => resuming.push(b.clone()),
                _ => {}
            }
        }
        self.rebuild_strategies();
        let now = Timestamp::now();
        if self.started {
            for b in &pausing {
                self.state.upsert_policy(&b.policy.name, false, b.cadence.every(), b.cadence.next_after(now))?;
            }
        }
        self.policies.replace(self.bound.clone());
        if self.started {
            for b in &resuming {
                self.state.upsert_policy(&b.policy.name, b.enabled, b.cadence.every(), b.cadence.next_after(now))?;
            }
        }
        Ok(())
    }

    /// Puts the backoff and stale plugins of the entries in force: the version in service,
    /// also after its file was removed; none while it is quarantined (the host's default
    /// backoff; no stale verdicts); the one loaded at start while nothing else ever loaded.
    fn rebuild_strategies(&self) {
        if self.strategies.watched.is_empty() {
            return;
        }
        let mut strategies: Strategies = (*self.strategies.set.current()).clone();
        for w in &self.strategies.watched {
            let Some(entry) = self.entries.get(&w.plugin) else { continue };
            let serving = match (entry.state, &entry.serving) {
                (PluginState::Quarantined, _) => None,
                (_, Some(s)) => s.strategy.clone(),
                (_, None) => continue,
            };
            match (w.role, serving) {
                (StrategyRole::Backoff, Some(Strategy::Backoff(b))) => strategies.backoff = Some((b, w.params.clone())),
                (StrategyRole::Stale, Some(Strategy::Stale(p))) => strategies.stale = Some((p, w.params.clone())),
                (StrategyRole::Backoff, _) => strategies.backoff = None,
                (StrategyRole::Stale, _) => strategies.stale = None,
            }
        }
        self.strategies.set.replace(strategies);
    }

    /// Writes plugin `name`'s row if it changed.
    fn record(&mut self, name: &str) -> anyhow::Result<()> {
        let users = self.users(name);
        let Some(entry) = self.entries.get_mut(name) else { return Ok(()) };
        let counts = entry.serving.as_ref().map(Serving::counts).unwrap_or_default();
        let meta = entry.serving.as_ref().map(|s| &s.meta);
        let record = PluginRecord {
            name: name.to_owned(),
            state: entry.state,
            reason: entry.reason.clone(),
            kind: meta.map(|m| m.kind.to_string()),
            contract_version: meta.map(|m| m.contract_version.clone()),
            declared_name: meta.map(|m| m.name.clone()),
            declared_version: meta.map(|m| m.version.clone()),
            sha256: meta.map(|m| m.sha256.clone()),
            from_compile_cache: meta.is_some_and(|m| m.from_compile_cache),
            // Every instance of a version shares its code: the first says which.
            tier: entry.serving.as_ref().and_then(|s| s.plugins().next()).map(|p| p.tier().as_str().to_owned()),
            loaded_at: entry.serving.as_ref().map(|s| s.loaded_at),
            policies: users,
            evaluations: counts.evaluations,
            failures: counts.failures,
            consecutive_faults: counts.consecutive_faults,
            updated_at: Timestamp::now(),
        };
        let same = entry.written.as_ref().is_some_and(|w| PluginRecord { updated_at: w.updated_at, ..record.clone() } == *w);
        if !same {
            self.table.put(&record)?;
            entry.written = Some(record);
        }
        Ok(())
    }
}

/// Records that `held` will not go into service (another file replaced it).
fn supersede(table: &PluginTable, name: &str, held: &Held) {
    if let Some(id) = held.canary
        && let Err(e) = table.set_canary_outcome(id, CanaryOutcome::Superseded)
    {
        tracing::warn!("plugin {name}: {e:#}");
    }
}

/// Evaluates `old` and `new` side by side over the sample of the repositories of `policies`.
/// Each evaluation runs in a fresh store, as `eval`'s: the canary neither warms instances
/// nor counts toward either version's evaluations and faults (nor its quarantine).
fn run_canary(old: &Serving, new: &Serving, lists: &dyn CanaryLists, policies: &[String], sample: usize) -> Diff {
    let now = Timestamp::now();
    let mut diff = Diff::default();
    let sampled = match lists.sample(policies, sample) {
        Ok(s) => s,
        Err(e) => {
            diff.push(RepositoryDiff::not_compared("(the sample)", None, format!("{e:#}"), false));
            return diff;
        }
    };
    let find = |s: &Serving, policy: &str| s.configured.iter().find(|(p, _)| p == policy).map(|(_, c)| c.clone());
    for s in sampled {
        let policy = Some(s.policy.as_str());
        let not_compared = |why: String, new_failed| RepositoryDiff::not_compared(&s.repository, policy, why, new_failed);
        let list = match &s.list {
            Ok(Some(list)) => list,
            Ok(None) => {
                diff.push(not_compared("the repository does not exist".into(), false));
                continue;
            }
            Err(e) => {
                diff.push(not_compared(format!("listing failed: {e}"), false));
                continue;
            }
        };
        let (Some(o), Some(n)) = (find(old, &s.policy), find(new, &s.policy)) else {
            diff.push(not_compared(format!("policy `{}` does not use this plugin", s.policy), false));
            continue;
        };
        match (o.plugin().evaluate(o.params(), list, now), n.plugin().evaluate(n.params(), list, now)) {
            (Ok(a), Ok(b)) => diff.push(crate::canary::compare(list, policy, &a, &b)),
            (Ok(_), Err(e)) => diff.push(not_compared(format!("the new version failed: {e}"), true)),
            (Err(e), _) => diff.push(not_compared(format!("the version in service failed: {e}"), false)),
        }
    }
    diff
}

/// Fails unless `dir` is a directory, naming it and the config key.
pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!(
            "the plugin directory {} (`plugins.dir`) does not exist or is not a directory; create it and put the policies' plugins in it",
            dir.display()
        );
    }
    Ok(())
}

/// Compiles `bytes` (through the runtime's compile cache), checks its kind, and configures
/// it: for the daemon's backoff or stale plugin, the checks of start with its params; else
/// for every policy that uses plugin `name`. The pipeline's steps after reading, each failure
/// naming its step.
#[allow(clippy::type_complexity)]
fn configure(
    runtime: &Arc<PluginRuntime>,
    file: &Path,
    bytes: &[u8],
    bound: &[BoundPolicy],
    strategies: &DirectoryStrategies,
    name: &str,
) -> Result<(PluginMeta, Vec<(String, Arc<ConfiguredPolicy>)>, Option<Strategy>), (&'static str, String)> {
    let origin = file.display().to_string();
    if let Some(w) = strategies.watched.iter().find(|w| w.plugin == name) {
        let plugin = runtime.load_bytes(&origin, bytes, w.limits.clone()).map_err(|e| ("load", e.to_string()))?;
        let meta = plugin.meta().clone();
        let params = |e: anyhow::Error| ("params", format!("{e:#}"));
        let strategy = match w.role {
            StrategyRole::Backoff => {
                let b = plugin.into_backoff().map_err(|e| ("kind", e.to_string()))?;
                strategies.checks.backoff(&b, &w.params).map_err(params)?;
                Strategy::Backoff(b)
            }
            StrategyRole::Stale => {
                let s = plugin.into_stale().map_err(|e| ("kind", e.to_string()))?;
                strategies.checks.stale(&s, &w.params).map_err(params)?;
                Strategy::Stale(s)
            }
        };
        return Ok((meta, Vec::new(), Some(strategy)));
    }
    let plugin = runtime.load_bytes(&origin, bytes, PluginLimits::default()).map_err(|e| ("load", e.to_string()))?;
    let meta = plugin.meta().clone();
    let retention = plugin.into_retention().map_err(|e| ("kind", e.to_string()))?;
    let mut configured = Vec::new();
    for b in bound.iter().filter(|b| b.watched_plugin.as_deref() == Some(name)) {
        let policy = retention
            .plugin()
            .with_limits(b.limits.clone())
            .into_retention()
            .and_then(|r| r.configure(&b.params))
            .map_err(|e| ("params", format!("policy `{}`: {e}", b.policy.name)))?;
        configured.push((b.policy.name.clone(), Arc::new(policy)));
    }
    Ok((meta, configured, None))
}
