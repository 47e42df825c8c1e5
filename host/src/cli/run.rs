//! `tagwarden run --once`: one cleanup pass over every configured policy.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;

use super::{OutputFormat, output};
use crate::config::Config;
use crate::model::{Action, Timestamp};
use crate::pass::{self, PassContext, Policy, Progress, RepositoryReport};
use crate::setup::{self, BoundPolicy};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run one pass and exit (the daemon is `tagwarden serve`).
    #[arg(long)]
    once: bool,
    /// The configuration file.
    #[arg(long, value_name = "FILE", default_value = "tagwarden.toml")]
    config: PathBuf,
    /// Decide and print the plan, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only this repository (it must match a policy).
    #[arg(long, value_name = "PATH")]
    repository: Option<String>,
    /// Also print every tag's verdict.
    #[arg(long)]
    plan: bool,
    /// Evaluation time (RFC 3339) instead of now, e.g. to replay a recording.
    #[arg(long, value_name = "RFC3339")]
    now: Option<String>,
    /// Repositories worked on at once (default: `[serve] worker_capacity`, as the daemon).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !args.once {
        anyhow::bail!("`run` makes one pass: add --once (for the daemon, use `tagwarden serve`)");
    }
    let config = Config::read(&args.config)?;
    let now = match &args.now {
        Some(s) => Timestamp::parse_rfc3339(s).map_err(|e| anyhow::anyhow!("--now: {e}"))?,
        None => Timestamp::now(),
    };
    // Everything that can be wrong with the config or the plugins fails here, before
    // the registry is contacted.
    // Fuel metering slows every plugin, so it is on only when some policy sets a budget.
    let runtime = super::plugin_runtime(config.uses_fuel())?;
    let policies = setup::load_policies(&config, &runtime, false)?;
    let store = setup::open_store(&config)?;
    let ctx = Arc::new(setup::pass_context(&config, &store, args.dry_run, Some(now))?);
    let jobs = args.jobs.map_or(config.serve.worker_capacity, usize::from);
    // A pass blocks its worker thread while it reads a recording or writes the state
    // database: a thread per job keeps the cores busy with the other passes meanwhile.
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(jobs.max(cores)).enable_all().build()?;
    let reports = tokio.block_on(run_pass(&ctx, &policies, args.repository.as_deref(), args.plan, jobs))?;
    match args.output {
        OutputFormat::Json => {
            let mut repositories = serde_json::to_value(&reports)?;
            if args.plan {
                // Per-tag verdicts only on request: they can be 100k entries per repository.
                for (value, report) in repositories.as_array_mut().into_iter().flatten().zip(&reports) {
                    if let (Some(obj), Some(plan)) = (value.as_object_mut(), &report.plan) {
                        obj.insert("tags".into(), plan_json(plan));
                    }
                }
            }
            output::print_json(&serde_json::json!({
                "registry": ctx.backend.label(),
                "now": now,
                "dry_run": args.dry_run,
                "repositories": repositories,
            }))?
        }
        OutputFormat::Table => {
            if args.plan {
                for r in &reports {
                    print_plan(r);
                }
            }
            print_summary(&reports, args.dry_run);
        }
    }
    Ok(if reports.iter().all(|r| r.status.is_success()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs every (repository, policy) pair: each repository goes to the first policy
/// whose patterns match it; `jobs` repositories at once, each pass a task of its own (as the
/// daemon's workers), so that reading one repository's list and evaluating another's use
/// both cores. Reports come back in the order of the repositories.
/// Plans are kept for printing only with `--plan`: a plan holds the repository's whole
/// list, and a what-if over 10,000 recordings must not hold them all.
async fn run_pass(
    ctx: &Arc<PassContext>,
    policies: &[BoundPolicy],
    only: Option<&str>,
    keep_plans: bool,
    jobs: usize,
) -> anyhow::Result<Vec<RepositoryReport>> {
    let repositories = match only {
        Some(repo) => vec![repo.to_owned()],
        None => ctx.backend.repositories().await.with_context(|| format!("listing the repositories of {}", ctx.backend.label()))?,
    };
    let work: Vec<(String, Policy)> =
        repositories.into_iter().filter_map(|repo| setup::policy_for(policies, &repo).cloned().map(|p| (repo, p))).collect();
    if let Some(repo) = only
        && work.is_empty()
    {
        anyhow::bail!("no policy's `repositories` patterns match `{repo}`");
    }
    // The start-up check: what interrupted passes left on repositories that no policy
    // visits this time (the others are settled by their own pass, first thing).
    if !ctx.dry_run && only.is_none() {
        let visited: std::collections::HashSet<&str> = work.iter().map(|(r, _)| r.as_str()).collect();
        for repo in pass::repositories_to_reconcile(ctx)?.iter().filter(|r| !visited.contains(r.as_str())) {
            match pass::reconcile_repository(ctx, repo).await {
                Ok(rec) if !rec.is_empty() => {
                    eprintln!("{}", crate::untrusted::escape(&format!("{repo}: {}", describe_reconciliation(&rec))))
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{}", crate::untrusted::escape(&format!("{repo}: could not settle what an interrupted pass left: {e}")))
                }
            }
        }
    }
    let printer = Arc::new(ProgressPrinter::new(work.len()));
    let mut reports: Vec<Option<RepositoryReport>> = (0..work.len()).map(|_| None).collect();
    let mut work = work.into_iter().enumerate();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < jobs.max(1) {
            let Some((i, (repo, policy))) = work.next() else { break };
            let (ctx, printer) = (Arc::clone(ctx), Arc::clone(&printer));
            running.spawn(async move {
                printer.start(i, &repo);
                let mut report = pass::run_repository(&ctx, &policy, &repo, &|p| printer.update(i, &repo, p)).await;
                printer.finish(i, &report);
                if !keep_plans {
                    report.plan = None;
                }
                (i, report)
            });
        }
        match running.join_next().await {
            Some(done) => {
                let (i, report) = done.context("a repository's pass panicked")?;
                reports[i] = Some(report);
            }
            None => break,
        }
    }
    Ok(reports.into_iter().map(|r| r.expect("every repository's pass reported")).collect())
}

/// Progress on stderr: one updating line on a terminal, a line per repository otherwise.
struct ProgressPrinter {
    total: usize,
    tty: bool,
    last: Mutex<Instant>,
}

impl ProgressPrinter {
    fn new(total: usize) -> Self {
        ProgressPrinter { total, tty: std::io::stderr().is_terminal(), last: Mutex::new(Instant::now()) }
    }

    fn line(&self, text: &str) {
        // Repository names come from the registry or a recording.
        let text = crate::untrusted::escape(text);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
        } else {
            let _ = writeln!(err, "{text}");
        }
    }

    fn start(&self, i: usize, repo: &str) {
        self.line(&format!("[{}/{}] {repo}: listing tags", i + 1, self.total));
    }

    fn update(&self, i: usize, repo: &str, p: Progress) {
        if !self.tty {
            // In logs, only the phase changes matter.
            if let Progress::Evaluating { tags } = p {
                self.line(&format!("[{}/{}] {repo}: evaluating {tags} tags", i + 1, self.total));
            }
            return;
        }
        let mut last = self.last.lock().unwrap();
        if last.elapsed().as_millis() < 100 && !matches!(p, Progress::Evaluating { .. }) {
            return;
        }
        *last = Instant::now();
        let what = match p {
            Progress::Listing { done, total } => format!("reading tag metadata {done}/{total}"),
            Progress::Evaluating { tags } => format!("evaluating {tags} tags"),
            Progress::Deleting { done, total } => format!("deleting {done}/{total}"),
        };
        self.line(&format!("[{}/{}] {repo}: {what}", i + 1, self.total));
    }

    fn finish(&self, i: usize, r: &RepositoryReport) {
        if !r.reconciliation.is_empty() {
            self.line(&format!("[{}/{}] {}: {}", i + 1, self.total, r.repository, describe_reconciliation(&r.reconciliation)));
            if self.tty {
                let _ = writeln!(std::io::stderr());
            }
        }
        for change in &r.changed_since_listing {
            self.line(&format!("[{}/{}] {}: {change}", i + 1, self.total, r.repository));
            if self.tty {
                let _ = writeln!(std::io::stderr());
            }
        }
        self.line(&format!(
            "[{}/{}] {}: {}, {} tags, {} to delete, {} deleted ({:.1}s)",
            i + 1,
            self.total,
            r.repository,
            r.status.label(),
            r.tags_seen,
            r.tags_to_delete,
            r.tags_deleted,
            r.elapsed_ms as f64 / 1000.0
        ));
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Every tag's final verdict, in list order.
fn plan_json(plan: &pass::RepositoryPlan) -> serde_json::Value {
    plan.list
        .tags()
        .iter()
        .zip(&plan.tags)
        .map(|(t, v)| serde_json::json!({"name": t.name, "digest": t.digest, "action": v.action, "reason": v.reason, "decided_by": v.decided_by}))
        .collect()
}

fn print_plan(r: &RepositoryReport) {
    let Some(plan) = &r.plan else { return };
    let style = output::Style::stdout();
    println!("{} (policy {}):", crate::untrusted::escape(&r.repository), crate::untrusted::escape(&r.policy));
    let mut rows = vec![vec!["  ACTION".into(), "TAG".into(), "DIGEST".into(), "REASON".into()]];
    let mut deletes = vec![false];
    for (t, v) in plan.list.tags().iter().zip(&plan.tags) {
        let action = if v.action == Action::Delete { "  DELETE" } else { "  keep" };
        rows.push(vec![action.into(), t.name.clone(), output::short_digest(t.digest.as_str()).into(), v.reason.clone()]);
        deletes.push(v.action == Action::Delete);
    }
    for (u, v) in plan.list.untagged().iter().zip(&plan.untagged) {
        let action = if v.action == Action::Delete { "  DELETE" } else { "  keep" };
        rows.push(vec![action.into(), "<untagged>".into(), output::short_digest(u.digest.as_str()).into(), v.reason.clone()]);
        deletes.push(v.action == Action::Delete);
    }
    output::print_columns(&rows, |i| deletes[i], &style);
    println!();
}

fn print_summary(reports: &[RepositoryReport], dry_run: bool) {
    let style = output::Style::stdout();
    let mut rows = vec![vec![
        "REPOSITORY".into(),
        "POLICY".into(),
        "TAGS".into(),
        "TO DELETE".into(),
        "DELETED".into(),
        "FAILED".into(),
        "TIME".into(),
        "STATUS".into(),
    ]];
    for r in reports {
        let detail = match &r.status {
            pass::RepositoryStatus::Refused(d) | pass::RepositoryStatus::Unfinished(d) | pass::RepositoryStatus::Failed(d) => {
                format!(": {d}")
            }
            _ => String::new(),
        };
        rows.push(vec![
            r.repository.clone(),
            r.policy.clone(),
            r.tags_seen.to_string(),
            r.tags_to_delete.to_string(),
            r.tags_deleted.to_string(),
            r.failed.to_string(),
            format!("{:.1}s", r.elapsed_ms as f64 / 1000.0),
            format!("{}{detail}", r.status.label()),
        ]);
    }
    let bad: Vec<bool> = std::iter::once(false).chain(reports.iter().map(|r| !r.status.is_success())).collect();
    output::print_columns(&rows, |i| bad[i], &style);
    let seen: usize = reports.iter().map(|r| r.tags_seen).sum();
    let to_delete: usize = reports.iter().map(|r| r.tags_to_delete).sum();
    let deleted: usize = reports.iter().map(|r| r.tags_deleted).sum();
    println!(
        "\n{} repositories, {seen} tags, {to_delete} to delete, {}{}",
        reports.len(),
        if dry_run { "nothing deleted (dry run)".to_owned() } else { format!("{deleted} deleted") },
        match reports.iter().filter(|r| !r.status.is_success()).count() {
            0 => String::new(),
            n => format!(", {n} not completed"),
        }
    );
    print_rules(reports);
}

/// Tags and untagged manifests per rule over every repository (each repository's share is
/// in the JSON output's `rules`): what goes and why, in one short table.
fn print_rules(reports: &[RepositoryReport]) {
    let mut totals: Vec<(&pass::RuleTally, usize, usize, usize)> = Vec::new();
    let mut at: std::collections::HashMap<(Action, &str, &str), usize> = std::collections::HashMap::new();
    for r in reports {
        for t in &r.rules {
            let i = *at.entry((t.action, t.reason.as_str(), t.decided_by)).or_insert_with(|| {
                totals.push((t, 0, 0, 0));
                totals.len() - 1
            });
            totals[i].1 += 1;
            totals[i].2 += t.tags;
            totals[i].3 += t.untagged;
        }
    }
    if totals.is_empty() {
        return;
    }
    totals.sort_by(|a, b| {
        (a.0.action != Action::Delete, std::cmp::Reverse(a.2)).cmp(&(b.0.action != Action::Delete, std::cmp::Reverse(b.2)))
    });
    let style = output::Style::stdout();
    // Counts first: the rows of the per-tag plan (`--plan`) start with an action.
    let mut rows =
        vec![vec!["TAGS".into(), "UNTAGGED".into(), "REPOSITORIES".into(), "ACTION".into(), "DECIDED BY".into(), "REASON".into()]];
    for (t, repos, tags, untagged) in &totals {
        rows.push(vec![
            tags.to_string(),
            untagged.to_string(),
            repos.to_string(),
            t.action.to_string(),
            t.decided_by.into(),
            t.reason.clone(),
        ]);
    }
    println!();
    let deletes: Vec<bool> = std::iter::once(false).chain(totals.iter().map(|t| t.0.action == Action::Delete)).collect();
    output::print_columns(&rows, |i| deletes[i], &style);
}

/// One line on what a pass settled of interrupted earlier passes.
fn describe_reconciliation(rec: &pass::Reconciliation) -> String {
    let mut parts = Vec::new();
    if !rec.finished_removals.is_empty() {
        parts.push(format!("{} tags found on tagwarden's dummy manifest (removals an interrupted pass left)", rec.finished_removals.len()));
    }
    if rec.confirmed_deleted > 0 {
        parts.push(format!("{} interrupted deletions confirmed", rec.confirmed_deleted));
    }
    if rec.found_not_deleted > 0 {
        parts.push(format!("{} interrupted deletions found undone (decided again)", rec.found_not_deleted));
    }
    if rec.runs_closed > 0 {
        parts.push(format!("{} interrupted runs closed", rec.runs_closed));
    }
    if rec.left_open > 0 {
        parts.push(format!("{} open deletions left to their owner or a later pass", rec.left_open));
    }
    parts.extend(rec.errors.iter().cloned());
    format!("settled what interrupted passes left: {}", parts.join(", "))
}
