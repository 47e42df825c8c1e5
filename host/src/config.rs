//! `tagwarden.toml`: registry, state, deletion limits, host guards and policies.
//! Documented for operators in docs/configuration.md.
//!
//! Parsing is strict: unknown keys are errors, and every error names the file, the
//! key path and what was expected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

use crate::registry::{Credentials, Secret};

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub registry: RegistrySection,
    #[serde(default)]
    pub state: StateSection,
    #[serde(default)]
    pub deletion: DeletionSection,
    #[serde(rename = "policy", default)]
    pub policies: Vec<PolicySection>,
    #[serde(default)]
    pub serve: ServeSection,
    #[serde(default)]
    pub plugins: PluginsSection,
    #[serde(default)]
    pub imports: ImportsSection,
    /// The file it was read from.
    #[serde(skip)]
    pub path: PathBuf,
    /// Its directory: relative paths in the file are relative to it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[registry]`: a registry URL, or a directory of recordings to simulate one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    pub url: Option<String>,
    /// A directory of recordings (or one file) served from memory instead of a registry.
    pub recordings: Option<PathBuf>,
    pub username: Option<String>,
    /// The environment variable holding the password (preferred over a file).
    pub password_env: Option<String>,
    /// A file holding the password (e.g. a mounted secret); trailing newline ignored.
    pub password_file: Option<PathBuf>,
    #[serde(default = "defaults::request_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
}

/// `[state]`: where the state lives. `dir` holds the SQLite file (the cleanup state, the
/// metadata cache, the audit log and runs); with `url`, the cleanup state (claims, leases,
/// duties) is on that PostgreSQL database instead, shared by every host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    #[serde(default = "defaults::state_dir")]
    pub dir: PathBuf,
    /// `postgres://user@host:port/database`, never with a password in it.
    pub url: Option<String>,
    /// The environment variable holding the database password (preferred over a file).
    pub password_env: Option<String>,
    /// A file holding the database password; trailing newline ignored.
    pub password_file: Option<PathBuf>,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection { dir: defaults::state_dir(), url: None, password_env: None, password_file: None }
    }
}

/// `[deletion]`: limits and guards that apply to every policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletionSection {
    /// Time budget for deleting one repository's tags (GitLab's delete timeout).
    #[serde(default = "defaults::delete_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Deletes in flight at once per repository.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    /// Refuse a pass that would delete more than this fraction of a repository's tags.
    pub max_delete_fraction: Option<f64>,
    /// Tag-name patterns (regex, whole name) that are never deleted, whatever a plugin says.
    #[serde(default)]
    pub protect: Vec<String>,
    /// At most this many tags are deleted by one pass; the rest wait for the next pass
    /// (GitLab's `max_list_size` truncation). The plugin still decides over every tag.
    pub max_list_size: Option<usize>,
    /// Delete referrers (signatures, attestations, SBOMs) whose subject is no longer in the
    /// repository. Off by default: orphans are only reported.
    #[serde(default)]
    pub delete_orphaned_referrers: bool,
    /// Manifests up to this many bytes are read and kept before they are deleted, so that
    /// `tagwarden restore` can push them back; 0 keeps none.
    #[serde(default = "defaults::keep_manifest_bytes")]
    pub keep_manifest_bytes: usize,
}

impl Default for DeletionSection {
    fn default() -> Self {
        DeletionSection {
            timeout: defaults::delete_timeout(),
            concurrency: defaults::concurrency(),
            max_delete_fraction: None,
            protect: vec![],
            max_list_size: None,
            delete_orphaned_referrers: false,
            keep_manifest_bytes: defaults::keep_manifest_bytes(),
        }
    }
}

/// One `[[policy]]`: which repositories, which plugin, which params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub name: String,
    /// Glob patterns on repository paths (`*` within a path segment, `**` across).
    pub repositories: Vec<String>,
    /// A bundled plugin's name or a path to a `.wasm` file.
    pub plugin: String,
    #[serde(default)]
    pub params: toml::Table,
    #[serde(default = "defaults::plugin_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Linear memory cap in MiB: 1 to [`crate::runtime::MAX_PLUGIN_MEMORY_MIB`].
    #[serde(default = "defaults::plugin_memory_mib")]
    pub memory_mib: u64,
    #[serde(default)]
    pub fuel: Option<u64>,
    /// How often the daemon runs the policy (`1d`, `7d`, `14d`, `1month`, `3month`, or a
    /// duration).
    #[serde(default = "defaults::cadence", deserialize_with = "cadence")]
    pub cadence: crate::scheduler::Cadence,
    /// A disabled policy is never run by the daemon (its repositories are not claimed).
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
}

/// `[serve]`: the daemon.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// Passes running at once.
    #[serde(default = "defaults::worker_capacity")]
    pub worker_capacity: usize,
    /// When a policy the daemon has never run is first due: `now` (at once), or
    /// `after-cadence` (GitLab's behaviour: one cadence after it is first seen).
    #[serde(default)]
    pub first_run: FirstRun,
    /// Repository deletions running at once (`tagwarden repos delete`).
    #[serde(default = "defaults::deletion_capacity")]
    pub deletion_capacity: usize,
    /// How often the registry's catalog is read again for new repositories.
    #[serde(default = "defaults::catalog_sync", deserialize_with = "duration")]
    pub catalog_sync: Duration,
    /// How often the stale plugin is asked about every ongoing cleanup and deletion.
    #[serde(default = "defaults::stale_check", deserialize_with = "duration")]
    pub stale_check: Duration,
    /// How long a claim stays valid without a heartbeat. The daemon renews its leases every
    /// quarter of this; a host that stops renewing loses its work to others after it.
    #[serde(default = "defaults::lease", deserialize_with = "duration")]
    pub lease: Duration,
    /// Where the HTTP API, `/metrics` and the status page listen (`host:port`; port 0 picks
    /// a free one, `off` serves nothing). Loopback by default.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// The environment variable holding the API's bearer token (preferred over a file).
    pub api_token_env: Option<String>,
    /// A file holding the API's bearer token; trailing newline ignored.
    pub api_token_file: Option<PathBuf>,
}

impl Default for ServeSection {
    fn default() -> Self {
        ServeSection {
            worker_capacity: defaults::worker_capacity(),
            first_run: FirstRun::default(),
            deletion_capacity: defaults::deletion_capacity(),
            catalog_sync: defaults::catalog_sync(),
            stale_check: defaults::stale_check(),
            lease: defaults::lease(),
            listen: defaults::listen(),
            api_token_env: None,
            api_token_file: None,
        }
    }
}

impl Default for PluginsSection {
    fn default() -> Self {
        PluginsSection {
            backoff: None,
            backoff_params: toml::Table::new(),
            backoff_limits: LimitsSection::default(),
            stale: None,
            stale_params: toml::Table::new(),
            stale_limits: LimitsSection::default(),
            dir: None,
            watch_interval: defaults::watch_interval(),
            settle: defaults::settle(),
            quarantine_after: defaults::quarantine_after(),
            canary_sample: defaults::canary_sample(),
            canary_max_extra_deletions: defaults::canary_max_extra_deletions(),
        }
    }
}

/// `[plugins]`: the plugins the daemon consults besides each policy's retention plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// A backoff plugin (bundled name or `.wasm` path) deciding when a failed cleanup is
    /// tried again, or given up. Unset: the host's default schedule (docs/operations.md).
    pub backoff: Option<String>,
    /// Its params, passed as a JSON object.
    #[serde(default)]
    pub backoff_params: toml::Table,
    /// Its limits for every call (`[plugins.backoff_limits]`).
    #[serde(default)]
    pub backoff_limits: LimitsSection,
    /// A stale plugin (bundled name or `.wasm` path) deciding whether a cleanup, deletion or
    /// import that has run long is abandoned. Unset: the bundled `stale-timeout` with its
    /// defaults.
    pub stale: Option<String>,
    /// Its params, passed as a JSON object.
    #[serde(default)]
    pub stale_params: toml::Table,
    /// Its limits for every call (`[plugins.stale_limits]`).
    #[serde(default)]
    pub stale_limits: LimitsSection,
    /// A directory of retention plugins (`NAME.wasm`) that `serve` loads at start and
    /// watches: a policy whose `plugin` is a bare name uses `DIR/NAME.wasm`, and a new file
    /// replaces the version in service without a restart (docs/operations.md).
    pub dir: Option<PathBuf>,
    /// How often the directory is looked at. A file is loaded once its size and modification
    /// time held still between two looks.
    #[serde(default = "defaults::watch_interval", deserialize_with = "duration")]
    pub watch_interval: Duration,
    /// A file that fails to load is reported as failed only once it has not changed for this
    /// long: a copy still being written is retried, never reported broken.
    #[serde(default = "defaults::settle", deserialize_with = "duration")]
    pub settle: Duration,
    /// Consecutive traps, timeouts or memory/fuel exhaustions after which a plugin is
    /// quarantined (its policies pause until a new file or `tagwarden plugins release`).
    #[serde(default = "defaults::quarantine_after")]
    pub quarantine_after: u32,
    /// Repositories the canary compares a new version of a plugin of `dir` on (with the
    /// version in service) before it replaces it; 0 turns the canary off.
    #[serde(default = "defaults::canary_sample")]
    pub canary_sample: usize,
    /// The brake: a new version that would delete more than this fraction of the compared
    /// tags beyond what the version in service deletes waits as `pending` until `tagwarden
    /// plugins approve NAME`.
    #[serde(default = "defaults::canary_max_extra_deletions")]
    pub canary_max_extra_deletions: f64,
}

/// A plugin's limits for one call: `[plugins.backoff_limits]` and `[plugins.stale_limits]`
/// (a policy's retention plugin takes the same keys in its `[[policy]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(default = "defaults::plugin_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Linear memory cap in MiB: 1 to [`crate::runtime::MAX_PLUGIN_MEMORY_MIB`].
    #[serde(default = "defaults::plugin_memory_mib")]
    pub memory_mib: u64,
    #[serde(default)]
    pub fuel: Option<u64>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection { timeout: defaults::plugin_timeout(), memory_mib: defaults::plugin_memory_mib(), fuel: None }
    }
}

impl LimitsSection {
    /// The runtime's limits (validated: the memory cap cannot overflow).
    pub fn limits(&self) -> crate::runtime::PluginLimits {
        limits(self.timeout, self.memory_mib, self.fuel)
    }
}

/// `[imports]`: repository imports to a GitLab-compatible registry (`tagwarden imports`), and
/// the guard that cancels those that run too long.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportsSection {
    /// Imports the registry runs at once (pre-imports and final imports together).
    #[serde(default = "defaults::import_capacity")]
    pub capacity: usize,
    /// How often the daemon looks at imports: asks the registry's status, runs the guard,
    /// starts queued ones.
    #[serde(default = "defaults::guard_interval", deserialize_with = "duration")]
    pub guard_interval: Duration,
    /// Aborts after which an import is skipped (`too_many_retries`); GitLab's default 3.
    #[serde(default = "defaults::import_max_retries")]
    pub max_retries: u32,
    /// A dynamic pre-import timeout: the stale plugin's `import_timeout` for a pre-import
    /// becomes the repository's tag count times this (GitLab's `pre_import_tags_rate`).
    /// Unset: the stale plugin's own `import_timeout` for every step.
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout_per_tag: Option<Duration>,
}

impl Default for ImportsSection {
    fn default() -> Self {
        ImportsSection {
            capacity: defaults::import_capacity(),
            guard_interval: defaults::guard_interval(),
            max_retries: defaults::import_max_retries(),
            timeout_per_tag: None,
        }
    }
}

/// See [`ServeSection::first_run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstRun {
    #[default]
    Now,
    AfterCadence,
}

fn cadence<'de, D: Deserializer<'de>>(d: D) -> Result<crate::scheduler::Cadence, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|e: anyhow::Error| serde::de::Error::custom(format!("{e:#}")))
}

mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn cadence() -> crate::scheduler::Cadence {
        "1d".parse().expect("a valid cadence")
    }
    pub fn enabled() -> bool {
        true
    }
    pub fn worker_capacity() -> usize {
        2
    }

    pub fn deletion_capacity() -> usize {
        2
    }

    pub fn catalog_sync() -> Duration {
        Duration::from_secs(3600)
    }

    pub fn stale_check() -> Duration {
        Duration::from_secs(300)
    }

    pub fn lease() -> Duration {
        Duration::from_secs(120)
    }

    pub fn request_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn concurrency() -> usize {
        8
    }
    pub fn listen() -> String {
        "127.0.0.1:9464".to_owned()
    }
    pub fn keep_manifest_bytes() -> usize {
        crate::pass::KEEP_MANIFEST_BYTES
    }
    pub fn max_retries() -> u32 {
        3
    }
    pub fn state_dir() -> PathBuf {
        PathBuf::from(".tagwarden")
    }
    /// GitLab's default delete timeout.
    pub fn delete_timeout() -> Duration {
        Duration::from_secs(250)
    }
    pub fn plugin_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn plugin_memory_mib() -> u64 {
        crate::runtime::DEFAULT_PLUGIN_MEMORY_MIB
    }
    /// Cheap (a `stat` per file) and well under the half second a new version may take
    /// to reach its first evaluation.
    pub fn watch_interval() -> Duration {
        Duration::from_millis(100)
    }
    pub fn settle() -> Duration {
        Duration::from_secs(2)
    }
    pub fn quarantine_after() -> u32 {
        3
    }
    pub fn canary_sample() -> usize {
        50
    }
    pub fn canary_max_extra_deletions() -> f64 {
        0.05
    }
    pub fn import_capacity() -> usize {
        2
    }
    pub fn guard_interval() -> Duration {
        Duration::from_secs(60)
    }
    /// GitLab's `container_registry_import_max_retries`.
    pub fn import_max_retries() -> u32 {
        3
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration ({e}); expected e.g. \"30s\", \"5m\", \"1h\"")))
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl Config {
    /// Reads and validates a config file.
    pub fn read(path: &Path) -> anyhow::Result<Config> {
        let text = crate::input::read_text(path, "config", crate::input::limits::CONFIG_BYTES, "")?;
        let mut config = Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.path = path.to_path_buf();
        Ok(config)
    }

    /// Parses config text. Errors name the key path and, where known, line and column.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let de = toml::Deserializer::parse(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = crate::input::plain_expectations(&e.into_inner().to_string(), "a table");
            anyhow::anyhow!("at `{path}`: {}", inner.trim_end())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let r = &self.registry;
        match (&r.url, &r.recordings) {
            (None, None) => bail!("at `registry`: set `url` (a registry) or `recordings` (a directory of recorded tag lists)"),
            (Some(_), Some(_)) => bail!("at `registry`: set either `url` or `recordings`, not both"),
            (Some(url), None) => {
                // Never echo credentials someone put into the URL.
                let shown = crate::registry::redact_userinfo(url);
                let parsed = url::Url::parse(url).map_err(|e| {
                    anyhow::anyhow!("at `registry.url`: `{shown}` is not a URL ({e}); expected e.g. \"https://registry.example.com\"")
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    bail!("at `registry.url`: expected an http:// or https:// URL, got `{shown}`");
                }
                if !parsed.username().is_empty() || parsed.password().is_some() {
                    bail!("at `registry.url`: put credentials in `username` and `password_env`/`password_file`, not in the URL");
                }
            }
            (None, Some(dir)) => {
                if dir.as_os_str().is_empty() {
                    bail!("at `registry.recordings`: empty path; expected a directory of recordings or one recording file");
                }
            }
        }
        if r.timeout.is_zero() {
            bail!("at `registry.timeout`: expected a positive duration such as \"30s\" (with 0 every request would time out)");
        }
        if r.password_env.is_some() && r.password_file.is_some() {
            bail!("at `registry`: set `password_env` or `password_file`, not both");
        }
        self.validate_state()?;
        if (r.password_env.is_some() || r.password_file.is_some()) && r.username.is_none() {
            bail!("at `registry.username`: a password is configured but no username");
        }
        if r.username.is_some() && r.password_env.is_none() && r.password_file.is_none() {
            bail!("at `registry`: `username` is set; also set `password_env` (an environment variable) or `password_file`");
        }
        if r.concurrency == 0 {
            bail!("at `registry.concurrency`: expected at least 1");
        }
        let d = &self.deletion;
        if d.timeout.is_zero() {
            bail!("at `deletion.timeout`: expected a positive duration such as \"250s\" (with 0 nothing would ever be deleted)");
        }
        if d.concurrency == 0 {
            bail!("at `deletion.concurrency`: expected at least 1");
        }
        self.api_listen()?;
        if self.serve.worker_capacity == 0 {
            bail!("at `serve.worker_capacity`: expected at least 1 (passes running at once)");
        }
        if self.serve.deletion_capacity == 0 {
            bail!("at `serve.deletion_capacity`: expected at least 1 (repository deletions running at once)");
        }
        for (key, value, least) in [
            ("serve.catalog_sync", self.serve.catalog_sync, Duration::from_secs(1)),
            ("serve.stale_check", self.serve.stale_check, Duration::from_secs(1)),
            ("serve.lease", self.serve.lease, Duration::from_secs(4)),
        ] {
            if value < least {
                bail!("at `{key}`: expected at least {} (got {})", humantime::format_duration(least), humantime::format_duration(value));
            }
        }
        // Distribution refuses manifests over 4 MiB: a larger limit only costs memory.
        if d.keep_manifest_bytes > 4 << 20 {
            bail!("at `deletion.keep_manifest_bytes`: expected at most 4194304 (registries refuse larger manifests), or 0 to keep none");
        }
        if d.max_list_size == Some(0) {
            bail!("at `deletion.max_list_size`: expected at least 1 (tags deleted per pass), or leave it out for no limit");
        }
        let pl = &self.plugins;
        if pl.watch_interval.is_zero() {
            bail!("at `plugins.watch_interval`: expected a positive duration such as \"100ms\"");
        }
        if !(0.0..=1.0).contains(&pl.canary_max_extra_deletions) {
            bail!(
                "at `plugins.canary_max_extra_deletions`: expected a fraction of the tags from 0 to 1, such as 0.05; got {}",
                pl.canary_max_extra_deletions
            );
        }
        check_limits("plugins.backoff_limits", pl.backoff_limits.timeout, pl.backoff_limits.memory_mib, pl.backoff_limits.fuel)?;
        check_limits("plugins.stale_limits", pl.stale_limits.timeout, pl.stale_limits.memory_mib, pl.stale_limits.fuel)?;
        if pl.quarantine_after == 0 {
            bail!("at `plugins.quarantine_after`: expected at least 1 (consecutive traps or timeouts before a plugin is quarantined)");
        }
        let i = &self.imports;
        if i.capacity == 0 {
            bail!("at `imports.capacity`: expected at least 1 (imports the registry runs at once)");
        }
        if i.guard_interval.is_zero() {
            bail!("at `imports.guard_interval`: expected a positive duration such as \"1m\"");
        }
        if i.max_retries == 0 {
            bail!("at `imports.max_retries`: expected at least 1 (with 0 the first abort would skip the import)");
        }
        if i.timeout_per_tag.is_some_and(|d| d.is_zero()) {
            bail!("at `imports.timeout_per_tag`: expected a positive duration such as \"500ms\" (or leave it out)");
        }
        if let Some(f) = d.max_delete_fraction
            && !(0.0..=1.0).contains(&f)
        {
            bail!("at `deletion.max_delete_fraction`: expected a number from 0.0 to 1.0, got {f}");
        }
        for (i, p) in d.protect.iter().enumerate() {
            regex::Regex::new(p).map_err(|e| anyhow::anyhow!("at `deletion.protect[{i}]`: `{p}` is not a valid regex: {e}"))?;
        }
        if self.policies.is_empty() {
            bail!("no `[[policy]]` is configured; add one with `name`, `repositories`, `plugin` and `params`");
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            if p.name.trim().is_empty() {
                bail!("at `policy[{i}].name`: empty; expected a name for reports and the audit log, e.g. \"apps\"");
            }
            if !names.insert(p.name.as_str()) {
                bail!("at `policy[{i}].name`: `{}` is used by two policies", p.name);
            }
            if p.repositories.is_empty() {
                bail!("at `policy[{i}].repositories`: expected at least one pattern, e.g. [\"group/*\"]");
            }
            for (j, pattern) in p.repositories.iter().enumerate() {
                if pattern.is_empty() {
                    bail!("at `policy[{i}].repositories[{j}]`: empty pattern, which matches no repository; expected e.g. \"group/*\"");
                }
                globset::Glob::new(pattern).map_err(|e| anyhow::anyhow!("at `policy[{i}].repositories[{j}]`: {e}"))?;
            }
            if p.plugin.is_empty() {
                bail!(
                    "at `policy[{i}].plugin`: empty; expected a bundled plugin's name such as \"gitlab-retention\" or a path to a .wasm file"
                );
            }
            check_limits(&format!("policy[{i}]"), p.timeout, p.memory_mib, p.fuel)?;
        }
        Ok(())
    }

    /// Whether any plugin has a fuel budget: the runtime then meters fuel for every plugin.
    pub fn uses_fuel(&self) -> bool {
        let pl = &self.plugins;
        self.policies.iter().any(|p| p.fuel.is_some()) || pl.backoff_limits.fuel.is_some() || pl.stale_limits.fuel.is_some()
    }

    /// Resolves a path from the config relative to the config file's directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    /// The registry credentials, read from the environment or a file. The secret never
    /// appears in errors.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let r = &self.registry;
        let Some(username) = r.username.clone() else { return Ok(Credentials::Anonymous) };
        let Some(password) = self.secret("registry", r.password_env.as_deref(), r.password_file.as_deref())? else {
            bail!("`registry.username` is set but neither `password_env` nor `password_file` is");
        };
        Ok(Credentials::Basic { username, password })
    }

    /// The PostgreSQL state database's password (`[state] password_env` / `password_file`),
    /// if one is set. Like the registry's, it never appears in errors.
    pub fn state_password(&self) -> anyhow::Result<Option<Secret>> {
        let s = &self.state;
        self.secret("state", s.password_env.as_deref(), s.password_file.as_deref())
    }

    /// A secret from the environment variable `env` or the file `file` (relative to the
    /// config) of section `section`; `None` when neither is set.
    fn secret(&self, section: &str, env: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<Secret>> {
        let secret = if let Some(var) = env {
            std::env::var(var)
                .map_err(|_| anyhow::anyhow!("`{section}.password_env` names {var}, which is not set; export it or use `password_file`"))?
        } else if let Some(file) = file {
            let file = self.resolve_path(file);
            let what = format!("`{section}.password_file`");
            let text = crate::input::read_text(&file, &what, crate::input::limits::SECRET_BYTES, "")?;
            text.trim_end_matches(['\n', '\r']).to_owned()
        } else {
            return Ok(None);
        };
        Ok(Some(Secret::new(secret)))
    }

    /// `[state]`: a PostgreSQL URL without a password in it, and at most one password source,
    /// which only a URL uses.
    fn validate_state(&self) -> anyhow::Result<()> {
        let s = &self.state;
        if s.password_env.is_some() && s.password_file.is_some() {
            bail!("at `state`: set `password_env` or `password_file`, not both");
        }
        let Some(url) = &s.url else {
            if s.password_env.is_some() || s.password_file.is_some() {
                bail!(
                    "at `state`: a password is configured but no `url`; set `url = \"postgres://user@host:port/database\"` or remove the password"
                );
            }
            return Ok(());
        };
        let expected = "expected e.g. \"postgres://tagwarden@db.example.com:5432/tagwarden\"";
        let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("at `state.url`: not a URL ({e}); {expected}"))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            bail!(
                "at `state.url`: only PostgreSQL is supported (postgres://), got `{}://`; {expected}, or leave `url` out to use the SQLite file in `dir`",
                parsed.scheme()
            );
        }
        if parsed.password().is_some() {
            bail!("at `state.url`: put the password in `password_env` or `password_file` of `[state]`, not in the URL");
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            bail!("at `state.url`: no host; {expected}");
        }
        if parsed.path().trim_start_matches('/').is_empty() {
            bail!("at `state.url`: no database name; {expected}");
        }
        Ok(())
    }
}

impl Config {
    /// `[serve] listen` as an address, `None` for `off`.
    pub fn api_listen(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        let listen = self.serve.listen.trim();
        if listen == "off" {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "at `serve.listen` of {}: `{listen}` is not an address; expected host:port such as \"127.0.0.1:9464\" (port 0 picks one), or \"off\"",
                self.path.display()
            )
        })
    }

    /// The API's bearer token (`serve.api_token_env` or `serve.api_token_file`), if one is set.
    pub fn api_token(&self) -> anyhow::Result<Option<Secret>> {
        let s = &self.serve;
        let token = if let Some(var) = &s.api_token_env {
            std::env::var(var)
                .map_err(|_| anyhow::anyhow!("`serve.api_token_env` names {var}, which is not set; export it or use `api_token_file`"))?
        } else if let Some(file) = &s.api_token_file {
            let file = self.resolve_path(file);
            let text = crate::input::read_text(&file, "`serve.api_token_file`", crate::input::limits::SECRET_BYTES, "")?;
            text.trim_end_matches(['\n', '\r']).to_owned()
        } else {
            return Ok(None);
        };
        if token.len() < 16 {
            bail!(
                "the API token (`serve.api_token_env` / `api_token_file`) is {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
                token.len()
            );
        }
        Ok(Some(Secret::new(token)))
    }
}

impl PolicySection {
    /// The plugin's limits for this policy (validated: the memory cap cannot overflow).
    pub fn limits(&self) -> crate::runtime::PluginLimits {
        limits(self.timeout, self.memory_mib, self.fuel)
    }

    /// The params as the JSON text plugins receive.
    pub fn params_json(&self) -> String {
        toml_to_json(&toml::Value::Table(self.params.clone())).to_string()
    }

    /// Whether this policy applies to `repository`.
    pub fn matcher(&self) -> globset::GlobSet {
        let mut b = globset::GlobSetBuilder::new();
        for p in &self.repositories {
            // Validated in `Config::validate`.
            b.add(globset::GlobBuilder::new(p).literal_separator(true).build().expect("validated glob"));
        }
        b.build().expect("validated globs")
    }
}

/// Checks one plugin's limits; `at` is the table they are keys of (`policy[0]`,
/// `plugins.stale_limits`), named in the error.
fn check_limits(at: &str, timeout: Duration, memory_mib: u64, fuel: Option<u64>) -> anyhow::Result<()> {
    let max = crate::runtime::MAX_PLUGIN_MEMORY_MIB;
    if !(1..=max).contains(&memory_mib) {
        bail!("at `{at}.memory_mib`: expected 1 to {max} (MiB; a WebAssembly memory cannot exceed 4 GiB), got {memory_mib}");
    }
    if timeout.is_zero() {
        bail!("at `{at}.timeout`: expected a positive duration such as \"1s\" (with 0 every plugin call would time out)");
    }
    if fuel == Some(0) {
        bail!("at `{at}.fuel`: expected at least 1 (or leave it out for no fuel budget)");
    }
    Ok(())
}

/// The runtime's limits from checked config values.
fn limits(timeout: Duration, memory_mib: u64, fuel: Option<u64>) -> crate::runtime::PluginLimits {
    crate::runtime::PluginLimits { timeout, memory_bytes: (memory_mib as usize) << 20, fuel }
}

/// TOML values as JSON; TOML dates become their RFC 3339 text (serde would otherwise
/// expose toml's private datetime wrapper to plugins).
fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[registry]
url = "http://127.0.0.1:5000"

[deletion]
timeout = "30s"
max_delete_fraction = 0.9
protect = ["release-.*"]

[[policy]]
name = "apps"
repositories = ["group/*"]
plugin = "gitlab-retention"
params = { keep_n = 5, name_regex_delete = ".*" }
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.deletion.timeout, Duration::from_secs(30));
        assert_eq!(c.registry.concurrency, 8);
        assert_eq!(c.policies[0].timeout, Duration::from_secs(1));
        let json: serde_json::Value = serde_json::from_str(&c.policies[0].params_json()).unwrap();
        assert_eq!(json["keep_n"], 5);
        let m = c.policies[0].matcher();
        assert!(m.is_match("group/app"));
        assert!(!m.is_match("group/sub/app"), "`*` stays within one path segment");
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn the_plugin_directory_keys_have_defaults_and_refuse_zero() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            (c.plugins.dir.as_deref(), c.plugins.watch_interval, c.plugins.settle, c.plugins.quarantine_after),
            (None, Duration::from_millis(100), Duration::from_secs(2), 3)
        );
        let with = |lines: &str| GOOD.replace("[[policy]]", &format!("[plugins]\n{lines}\n\n[[policy]]"));
        let c = Config::parse(&with("dir = \"plugins\"\nwatch_interval = \"50ms\"\nquarantine_after = 5")).unwrap();
        assert_eq!((c.plugins.dir.as_deref(), c.plugins.quarantine_after), (Some(Path::new("plugins")), 5));
        let e = err(&with("watch_interval = \"0s\""));
        assert!(e.contains("plugins.watch_interval") && e.contains("positive"), "{e}");
        let e = err(&with("quarantine_after = 0"));
        assert!(e.contains("plugins.quarantine_after") && e.contains("at least 1"), "{e}");
        let e = err(&with("settle = \"soon\""));
        assert!(e.contains("plugins.settle") && e.contains("not a duration"), "{e}");
        assert_eq!((c.plugins.canary_sample, c.plugins.canary_max_extra_deletions), (50, 0.05));
        let c = Config::parse(&with("canary_sample = 0\ncanary_max_extra_deletions = 0.2")).unwrap();
        assert_eq!((c.plugins.canary_sample, c.plugins.canary_max_extra_deletions), (0, 0.2));
        let e = err(&with("canary_max_extra_deletions = 5.0"));
        assert!(e.contains("plugins.canary_max_extra_deletions") && e.contains("from 0 to 1"), "{e}");
    }

    #[test]
    fn the_backoff_and_stale_plugins_take_limits_and_bad_ones_name_the_key_and_file() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.plugins.stale_limits.limits(), crate::runtime::PluginLimits::default());
        assert!(!c.uses_fuel());
        let with = |lines: &str| GOOD.replace("[[policy]]", &format!("{lines}\n\n[[policy]]"));
        let c = Config::parse(&with(
            "[plugins.backoff_limits]\ntimeout = \"250ms\"\nmemory_mib = 16\n\n[plugins.stale_limits]\nfuel = 1000000",
        ))
        .unwrap();
        let b = c.plugins.backoff_limits.limits();
        assert_eq!((b.timeout, b.memory_bytes, b.fuel), (Duration::from_millis(250), 16 << 20, None));
        assert_eq!(c.plugins.stale_limits.limits().fuel, Some(1_000_000));
        assert!(c.uses_fuel(), "a stale fuel budget turns fuel metering on");
        for (table, line, expected) in [
            ("backoff_limits", "memory_mib = 0", "expected 1 to 4096"),
            ("backoff_limits", "memory_mib = 4097", "expected 1 to 4096"),
            ("stale_limits", "timeout = \"0s\"", "positive duration"),
            ("stale_limits", "fuel = 0", "at least 1"),
            ("stale_limits", "timeout = \"soon\"", "not a duration"),
        ] {
            let key = line.split(' ').next().unwrap();
            let e = err(&with(&format!("[plugins.{table}]\n{line}")));
            assert!(e.contains(&format!("plugins.{table}.{key}")) && e.contains(expected), "{line}: {e}");
        }
        let e = err(&with("[plugins.stale_limits]\nmemory = 5"));
        assert!(e.contains("plugins.stale_limits") && e.contains("unknown field `memory`"), "{e}");
        // Read from a file, the error names the file too.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tagwarden.toml");
        std::fs::write(&file, with("[plugins.backoff_limits]\nmemory_mib = 0")).unwrap();
        let e = format!("{:#}", Config::read(&file).unwrap_err());
        assert!(e.contains(&file.display().to_string()) && e.contains("plugins.backoff_limits.memory_mib"), "{e}");
    }

    #[test]
    fn bad_configs_name_the_key_and_the_expectation() {
        let e = err(&GOOD.replace("timeout = \"30s\"", "timeout = \"soon\""));
        assert!(e.contains("deletion.timeout") && e.contains("not a duration"), "{e}");
        let e = err(&GOOD.replace("max_delete_fraction = 0.9", "max_delete_fraction = 3"));
        assert!(e.contains("deletion.max_delete_fraction"), "{e}");
        let e = err(&GOOD.replace("protect = [\"release-.*\"]", "protect = [\"(\"]"));
        assert!(e.contains("deletion.protect[0]") && e.contains("not a valid regex"), "{e}");
        let e = err(&GOOD.replace("url = ", "uri = "));
        assert!(e.contains("unknown field `uri`"), "{e}");
        let e = err(&GOOD.replace("\"http://127.0.0.1:5000\"", "\"ftp://x\""));
        assert!(e.contains("registry.url"), "{e}");
        let e = err(&GOOD.replace("repositories = [\"group/*\"]", "repositories = []"));
        assert!(e.contains("policy[0].repositories"), "{e}");
        let e = err(&GOOD.replace("[[policy]]", "[[policy]]\nmemory_mib = \"lots\""));
        assert!(e.contains("policy") && e.contains("memory_mib"), "{e}");
        let e = err("[registry]\nurl = \"http://x\"\n");
        assert!(e.contains("no `[[policy]]`"), "{e}");
        let e = err(&GOOD.replace("timeout = \"30s\"", "timeout = \"0s\""));
        assert!(e.contains("deletion.timeout") && e.contains("positive"), "{e}");
        let e = err(&GOOD.replace("[deletion]", "username = \"u\"\n\n[deletion]"));
        assert!(e.contains("password_env"), "{e}");
        let c = Config::parse(&GOOD.replace("keep_n = 5", "keep_n = 5, since = 2026-01-01T00:00:00Z")).unwrap();
        assert!(c.policies[0].params_json().contains(r#""since":"2026-01-01T00:00:00Z""#), "{}", c.policies[0].params_json());
        let e = err("[registry\n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn values_that_would_change_meaning_are_refused() {
        let policy = |line: &str| GOOD.replace("plugin = \"gitlab-retention\"", &format!("plugin = \"gitlab-retention\"\n{line}"));
        // `<< 20` would wrap: 2^64-1 MiB gave a 4 GiB cap, 2^44 MiB a cap of 0.
        for mib in ["9223372036854775807", "17592186044416", "4097", "0"] {
            let e = err(&policy(&format!("memory_mib = {mib}")));
            assert!(e.contains("policy[0].memory_mib") && e.contains("expected 1 to 4096"), "{mib}: {e}");
        }
        assert_eq!(Config::parse(&policy("memory_mib = 4096")).unwrap().policies[0].limits().memory_bytes, 4 << 30);
        let e = err(&policy("timeout = \"0s\""));
        assert!(e.contains("policy[0].timeout") && e.contains("positive"), "{e}");
        let e = err(&policy("fuel = 0"));
        assert!(e.contains("policy[0].fuel"), "{e}");
        let e = err(&GOOD.replace("repositories = [\"group/*\"]", "repositories = [\"\"]"));
        assert!(e.contains("policy[0].repositories[0]") && e.contains("empty pattern"), "{e}");
        let e = err(&GOOD.replace("name = \"apps\"", "name = \"\""));
        assert!(e.contains("policy[0].name") && e.contains("empty"), "{e}");
        let e = err(&GOOD.replace("plugin = \"gitlab-retention\"", "plugin = \"\""));
        assert!(e.contains("policy[0].plugin"), "{e}");
        let e = err(&GOOD.replace("url = \"http://127.0.0.1:5000\"", "recordings = \"\""));
        assert!(e.contains("registry.recordings") && e.contains("empty path"), "{e}");
        let e = err(&GOOD.replace("[deletion]", "timeout = \"0s\"\n\n[deletion]"));
        assert!(e.contains("registry.timeout"), "{e}");
    }

    #[test]
    fn the_imports_section_has_defaults_and_checks_its_values() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!((c.imports.capacity, c.imports.guard_interval, c.imports.max_retries), (2, Duration::from_secs(60), 3));
        assert_eq!(c.imports.timeout_per_tag, None);
        let with = |lines: &str| format!("{GOOD}\n[imports]\n{lines}\n");
        let c = Config::parse(&with("capacity = 5\nguard_interval = \"10m\"\nmax_retries = 1\ntimeout_per_tag = \"500ms\"")).unwrap();
        assert_eq!(
            (c.imports.capacity, c.imports.guard_interval, c.imports.max_retries, c.imports.timeout_per_tag),
            (5, Duration::from_secs(600), 1, Some(Duration::from_millis(500)))
        );
        for (line, key) in [
            ("capacity = 0", "imports.capacity"),
            ("guard_interval = \"0s\"", "imports.guard_interval"),
            ("max_retries = 0", "imports.max_retries"),
            ("timeout_per_tag = \"0s\"", "imports.timeout_per_tag"),
            ("timeout_per_tag = \"fast\"", "imports.timeout_per_tag"),
            ("capcity = 1", "capcity"),
        ] {
            let e = err(&with(line));
            assert!(e.contains(key), "{line}: {e}");
        }
    }

    #[test]
    fn errors_use_plain_words_not_rust_types() {
        let e = err(&GOOD.replace("[deletion]", "concurrency = -1\n\n[deletion]"));
        assert!(e.contains("registry.concurrency") && e.contains("a non-negative integer"), "{e}");
        assert!(!e.contains("usize"), "{e}");
    }

    #[test]
    fn special_files_and_huge_files_are_refused() {
        let e = format!("{:#}", Config::read(Path::new("/dev/zero")).unwrap_err());
        assert_eq!(e, "config /dev/zero is a character device; expected a regular file");
    }

    #[test]
    fn the_state_url_is_checked_and_its_password_read_like_the_registrys() {
        let state = |body: &str| GOOD.replace("[deletion]", &format!("[state]\n{body}\n\n[deletion]"));
        let c = Config::parse(&state("url = \"postgres://tw@db:5432/tagwarden\"\npassword_env = \"TW_TEST_STATE_PW\"")).unwrap();
        assert_eq!(c.state.url.as_deref(), Some("postgres://tw@db:5432/tagwarden"));
        let e = c.state_password().unwrap_err().to_string();
        assert!(e.contains("`state.password_env` names TW_TEST_STATE_PW") && e.contains("not set"), "{e}");
        assert!(Config::parse(&state("")).unwrap().state_password().unwrap().is_none());
        for (body, expected) in [
            ("url = \"postgres://tw:hunter2@db/tw\"", "not in the URL"),
            ("url = \"mysql://tw@db/tw\"", "only PostgreSQL is supported"),
            ("url = \"db:5432\"", "state.url"),
            ("url = \"postgres://tw@db:5432/\"", "no database name"),
            ("password_env = \"X\"", "no `url`"),
            ("url = \"postgres://tw@db/tw\"\npassword_env = \"X\"\npassword_file = \"pw\"", "not both"),
        ] {
            let e = err(&state(body));
            assert!(e.contains(expected) && !e.contains("hunter2"), "{body}: {e}");
        }
    }

    #[test]
    fn credentials_come_from_env_or_file_and_never_leak() {
        let mut c =
            Config::parse(&GOOD.replace("[deletion]", "username = \"u\"\npassword_env = \"TW_TEST_PW_UNSET_123\"\n\n[deletion]")).unwrap();
        let e = c.credentials().unwrap_err().to_string();
        assert!(e.contains("TW_TEST_PW_UNSET_123") && e.contains("not set"), "{e}");
        let dir = std::env::temp_dir().join(format!("tw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret-value\n").unwrap();
        c.registry.password_env = None;
        c.registry.password_file = Some(dir.join("pw"));
        let creds = c.credentials().unwrap();
        assert!(!format!("{creds:?}").contains("s3cret-value"));
        match creds {
            Credentials::Basic { username, password } => assert_eq!((username.as_str(), password.expose()), ("u", "s3cret-value")),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
