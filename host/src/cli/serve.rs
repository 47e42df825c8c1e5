//! `tagwarden serve`: the daemon, and what it prints as it goes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::api::{Api, PluginsInForce};
use crate::config::Config;
use crate::pass::RepositoryStatus;
use crate::plugin_dir::{DirectoryOptions, DirectoryStrategies, PluginDirectory, PluginEvent, WatchedStrategy};
use crate::scheduler::daemon::{self, DaemonEvent, DaemonOptions};
use crate::setup;
use crate::store::{CleanupOutcome, DeletionOutcome, Work};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    /// Exit 0 once nothing is due, running, or waiting on a backoff shorter than a minute
    /// (for scripts, tests and the demo).
    #[arg(long)]
    until_idle: bool,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::read(&args.config)?;
    // With a plugin directory, new versions land while the daemon runs: each goes into
    // service with baseline code while Cranelift compiles it in the background, and the
    // functions of the plugins loaded from the compile cache are compiled in the background
    // too, so that a new version's optimizing compile does only what changed.
    let directory = setup::plugin_dir(&config).is_some();
    let runtime_config = crate::runtime::RuntimeConfig {
        warm_function_cache: directory,
        tiered_compilation: directory,
        ..super::plugin_runtime_config(config.uses_fuel())
    };
    let runtime = Arc::new(crate::runtime::PluginRuntime::new(runtime_config)?);
    let bound = setup::load_policies(&config, &runtime, true)?;
    let backoff = setup::load_backoff(&config, &runtime)?;
    let stale = setup::load_stale(&config, &runtime)?;
    let strategies = setup::StrategySet::new(setup::Strategies { backoff, stale: Some(stale) });
    // The backoff and stale plugins that are files of `[plugins] dir`: swapped like policies' plugins.
    let strategy_files: Vec<(setup::StrategyRole, String)> = [setup::StrategyRole::Backoff, setup::StrategyRole::Stale]
        .into_iter()
        .filter_map(|role| setup::directory_strategy(&config, role).map(|f| (role, f)))
        .collect();
    // Before the state is opened (or created): a wrong `plugins.dir` changes nothing.
    if let Some(dir) = setup::plugin_dir(&config) {
        crate::plugin_dir::check_dir(&dir).with_context(|| format!("in {}", config.path.display()))?;
    }
    let (store, state) = setup::open_state(&config)?;
    let on_plugin_event: Arc<dyn Fn(PluginEvent<'_>) + Send + Sync> = Arc::new(print_plugin_event);
    let (policies, directory) = match setup::plugin_dir(&config) {
        Some(dir) => {
            let p = &config.plugins;
            let options = DirectoryOptions {
                dir,
                watch_interval: p.watch_interval,
                settle: p.settle,
                quarantine_after: p.quarantine_after,
                canary_sample: p.canary_sample,
                canary_max_extra_deletions: p.canary_max_extra_deletions,
            };
            let watched = strategy_files
                .iter()
                .map(|(role, plugin)| {
                    let (params, limits) = match role {
                        setup::StrategyRole::Backoff => (&p.backoff_params, &p.backoff_limits),
                        setup::StrategyRole::Stale => (&p.stale_params, &p.stale_limits),
                    };
                    Ok(WatchedStrategy {
                        role: *role,
                        plugin: plugin.clone(),
                        params: serde_json::to_string(params)?,
                        limits: limits.limits(),
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            let strategies = DirectoryStrategies { set: strategies.clone(), watched, checks: setup::StrategyChecks::from_config(&config) };
            let started = std::time::Instant::now();
            let directory = PluginDirectory::open(options, runtime.clone(), &store, state.clone(), bound, strategies, &*on_plugin_event)
                .with_context(|| format!("in {}", config.path.display()))?;
            eprintln!("serve: plugin directory loaded in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
            (directory.policies(), Some(directory))
        }
        None => (setup::PolicySet::new(bound), None),
    };
    let ctx = Arc::new(setup::pass_context(&config, &store, false, None)?);
    let imports = crate::scheduler::imports::worker_for(&config, &store, &ctx.backend, strategies.clone())?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let in_force = PluginsInForce { policies: policies.clone(), strategies: strategies.clone(), strategy_files };
    let api = api_for(&config, (&store, &state), &ctx, in_force, &wake)?;
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The canary lists the repositories it compares on through the passes' backend.
    let directory = directory.map(|d| {
        d.with_canary(Arc::new(crate::plugin_dir::BackendLists { state: state.clone(), ctx: ctx.clone(), runtime: tokio.handle().clone() }))
    });
    // Stops the watching thread when `serve` returns.
    let _watching = directory.map(|d| d.watch(wake.clone(), on_plugin_event)).transpose()?.map(StopOnDrop);
    let options = DaemonOptions {
        worker_capacity: config.serve.worker_capacity,
        first_run: config.serve.first_run,
        until_idle: args.until_idle,
        deletion_capacity: config.serve.deletion_capacity,
        lease: config.serve.lease,
        catalog_sync: config.serve.catalog_sync,
        stale_check: config.serve.stale_check,
        delete_timeout: config.deletion.timeout,
        strategies,
        wake,
    };
    let summary = tokio.block_on(async {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        // Imports have their own task: a long pass never delays the import guard.
        if let Some(worker) = imports {
            tokio::spawn(async move { worker.run_forever().await });
        }
        // The API beside the daemon, stopped when it returns.
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api_task = match api {
            Some((addr, api)) => {
                let listener =
                    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} (`serve.listen`)"))?;
                eprintln!("serve: API and /metrics on http://{}", listener.local_addr()?);
                Some(tokio::spawn(crate::api::serve(listener, api, async move {
                    let _ = api_stopped.await;
                })))
            }
            None => None,
        };
        let on_event = |event: DaemonEvent<'_>| {
            crate::metrics::get().daemon_event(&event);
            print_event(event)
        };
        let summary = daemon::run(ctx, policies, state, options, shutdown, &on_event).await;
        let _ = stop_api.send(());
        if let Some(task) = api_task {
            task.await.context("the API server panicked")?.context("serving the API")?;
        }
        summary
    })?;
    eprintln!(
        "serve: {} passes, {} repository deletions, {} tags deleted, {} recovered, {} stale",
        summary.passes, summary.deletions, summary.tags_deleted, summary.recovered, summary.stale
    );
    Ok(ExitCode::SUCCESS)
}

/// The API's address and server state (over the local SQLite file and the cleanup state),
/// unless `serve.listen` is `off`.
fn api_for(
    config: &Config,
    (store, state): (&crate::store::Store, &Arc<dyn crate::store::StateStore>),
    ctx: &crate::pass::PassContext,
    plugins: PluginsInForce,
    wake: &Arc<tokio::sync::Notify>,
) -> anyhow::Result<Option<(std::net::SocketAddr, Arc<Api>)>> {
    let Some(addr) = config.api_listen()? else { return Ok(None) };
    let registry = ctx.backend.registry().cloned();
    let api = Api::new(store.clone(), state.clone(), registry, plugins, config.api_token()?, addr, wake.clone())
        .with_context(|| format!("in {}", config.path.display()))?;
    Ok(Some((addr, Arc::new(api))))
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The plugin directory's log lines: file, step and why for every failure.
fn print_plugin_event(event: PluginEvent<'_>) {
    use crate::untrusted::escape;
    match event {
        PluginEvent::Loaded { name, file, meta, elapsed, policies, role, replaced } => eprintln!(
            "serve: plugin {name}: {} {} ({} {}, contract {}, sha256:{}, {}) in {:.1} ms{}; {}",
            if replaced.is_some() { "swapped in" } else { "loaded" },
            file.display(),
            meta.name,
            meta.version,
            meta.contract_version,
            &meta.sha256[..12],
            match (meta.from_compile_cache, meta.loaded_tier) {
                (true, _) => "from the compile cache",
                (false, crate::runtime::Tier::Baseline) => "compiled by the baseline compiler; optimizing in the background",
                (false, crate::runtime::Tier::Optimized) => "compiled",
            },
            elapsed.as_secs_f64() * 1000.0,
            replaced.map(|r| format!(", replacing sha256:{}", &r[..12])).unwrap_or_default(),
            match role {
                Some(role) => format!("the daemon's {} plugin", role.as_str()),
                None => format!("policies: {}", if policies.is_empty() { "none".to_owned() } else { policies.join(", ") }),
            }
        ),
        PluginEvent::LoadFailed { name, file, step, why, serving } => eprintln!(
            "serve: plugin {name}: {} failed to load at step `{step}`: {}; {}",
            file.display(),
            escape(why),
            match serving {
                Some(sha) => format!("the previous version (sha256:{}) stays in service", &sha[..12]),
                None => "no version of it is in service: its policies pause".to_owned(),
            }
        ),
        PluginEvent::Settling { name, file, why } => {
            eprintln!("serve: plugin {name}: {} does not load yet ({}); trying again once it settles", file.display(), escape(why))
        }
        PluginEvent::Removed { name, file, policies } => eprintln!(
            "serve: plugin {name}: no file {}; policies paused: {}",
            file.display(),
            if policies.is_empty() { "none".to_owned() } else { policies.join(", ") }
        ),
        PluginEvent::StrategyRemoved { name, file, role, serving } => eprintln!(
            "serve: plugin {name}: no file {}; the {} plugin in service (sha256:{}) keeps deciding until a file is back",
            file.display(),
            role.as_str(),
            &serving[..12]
        ),
        PluginEvent::Quarantined { name, reason, policies } => eprintln!(
            "serve: plugin {name}: quarantined: {}; policies paused: {}",
            escape(reason),
            if policies.is_empty() { "none".to_owned() } else { policies.join(", ") }
        ),
        PluginEvent::Released { name } => eprintln!("serve: plugin {name}: released from quarantine; back in service"),
        PluginEvent::Canary { name, meta, diff, elapsed, held } => eprintln!(
            "serve: plugin {name}: canary of {} {} (sha256:{}) in {:.1} ms: {}; {}",
            meta.name,
            meta.version,
            &meta.sha256[..12],
            elapsed.as_secs_f64() * 1000.0,
            diff.summary(),
            match held {
                Some(why) => format!(
                    "pending: {}; the version in service keeps serving until `tagwarden plugins approve {name}` (`tagwarden plugins diff {name}` shows the difference)",
                    escape(why)
                ),
                None => "under the brake".to_owned(),
            }
        ),
        PluginEvent::Approved { name, meta, replaced } => eprintln!(
            "serve: plugin {name}: approved {} {} (sha256:{}) swapped in{}",
            meta.name,
            meta.version,
            &meta.sha256[..12],
            replaced.map(|r| format!(", replacing sha256:{}", &r[..12])).unwrap_or_default()
        ),
    }
}

fn print_event(event: DaemonEvent<'_>) {
    match event {
        DaemonEvent::Synced { policies, repositories } => eprintln!("serve: {policies} policies, {repositories} repositories"),
        DaemonEvent::SyncFailed { error, retry_in } => {
            eprintln!("serve: reading the catalog failed, trying again in {}: {error:#}", humantime::format_duration(retry_in))
        }
        DaemonEvent::StateUnavailable { error, retry_in } => eprintln!(
            "serve: the state store did not answer, asking again in {} (passes in flight go on): {error:#}",
            humantime::format_duration(retry_in)
        ),
        DaemonEvent::Recovered { path, work } => {
            let then = if work == Work::Cleanup { "cleanup_unfinished" } else { "delete_scheduled" };
            eprintln!("serve: {path}: taken back from a holder that is gone ({then})")
        }
        DaemonEvent::Stale { path, work, reason, held_here } => {
            let what = if work == Work::Cleanup { "cleanup" } else { "deletion" };
            let how = if held_here { "stopping it at its next safe point" } else { "taken back from its holder" };
            eprintln!("serve: {path}: {what} {}; {how}", crate::untrusted::escape(reason))
        }
        DaemonEvent::DeletionFinished { report, outcome } => {
            let then = match outcome {
                DeletionOutcome::Done { .. } => "deleted".to_owned(),
                DeletionOutcome::Unfinished { .. } => "delete_scheduled (resumes)".to_owned(),
                DeletionOutcome::Failed { next_attempt_at: Some(t), .. } => format!("retry at {t}"),
                DeletionOutcome::Failed { next_attempt_at: None, reason, .. } => {
                    format!("delete_failed: {} (repos retry PATH brings it back)", crate::untrusted::escape(reason))
                }
            };
            eprintln!(
                "serve: {}: repository deletion {}, {} tags deleted ({:.1}s) → {then}",
                crate::untrusted::escape(&report.repository),
                report.status.label(),
                report.tags_deleted,
                report.elapsed_ms as f64 / 1000.0
            );
        }
        DaemonEvent::PassFinished { report, outcome } => {
            let then = match outcome {
                CleanupOutcome::Done { .. } => "cleanup_unscheduled".to_owned(),
                CleanupOutcome::Gone => "cleanup_gone".to_owned(),
                CleanupOutcome::Unfinished { .. } => "cleanup_unfinished".to_owned(),
                CleanupOutcome::Deferred { until, .. } => format!("waits until {until}"),
                CleanupOutcome::Failed { next_attempt_at: Some(t), .. } => format!("retry at {t}"),
                CleanupOutcome::Failed { next_attempt_at: None, .. } => "cleanup_failed (repos retry PATH brings it back)".to_owned(),
            };
            let detail = match &report.status {
                RepositoryStatus::Refused(d) | RepositoryStatus::Unfinished(d) | RepositoryStatus::Failed(d) => format!(": {d}"),
                _ => String::new(),
            };
            // The detail may carry a plugin's words: escaped for the terminal.
            eprintln!(
                "serve: {}: {}{}, {} tags, {} deleted ({:.1}s) → {then}",
                crate::untrusted::escape(&report.repository),
                report.status.label(),
                crate::untrusted::escape(&detail),
                report.tags_seen,
                report.tags_deleted,
                report.elapsed_ms as f64 / 1000.0
            );
        }
        DaemonEvent::PolicyScheduled { policy, next_run_at } => eprintln!("serve: policy {policy}: next run {next_run_at}"),
        DaemonEvent::Idle => eprintln!("serve: idle (nothing due within a minute)"),
        DaemonEvent::ShuttingDown { running } => {
            eprintln!("serve: stopping; waiting up to {}s for {running} passes", daemon::SHUTDOWN_GRACE.as_secs())
        }
    }
}
