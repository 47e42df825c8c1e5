//! Several hosts, one queue (issue 14 §5): three `tagwarden serve` processes, each under a host
//! name of its own (so they see each other only through the shared state, as on three machines),
//! one PostgreSQL state, and one real registry of 200 repositories behind a fault proxy per host
//! (so the test can hold the requests of one host). One test, in phases:
//!
//! 1. capacity: with every tag listing held at the proxies, exactly 2 + 3 + 4 passes are in
//!    flight, and still are after every host has gone round its loop again;
//! 2. SIGKILL of the 4-worker host while its passes' deletes are held (two then reach the
//!    registry, two never do): the others take its repositories back once its leases expire;
//! 3. PostgreSQL stopped while five passes run to their end, then started again: the hosts keep
//!    running, record those outcomes once it answers, and go on;
//! 4. convergence, then a second cadence: every repository cleaned exactly once per cadence;
//! 5. the audit log deletes nothing twice, and the registry keeps exactly what the policies keep.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tagwarden::model::Timestamp;
use tagwarden::registry::Secret;
use tagwarden::store::{CleanupStatus, PgStateStore, RepositoryState, StateStore};
use tagwarden_testbed::{FaultProxy, Held, HeldRequest, PostgresCluster, Seeder};

use crate::api::ago;
use crate::pass::{days, registry, snapshot};

/// The hosts: host name and `worker_capacity` (different, so the sum shows whose they are).
const HOSTS: [(&str, usize); 3] = [("fleet-a", 2), ("fleet-b", 3), ("fleet-c", 4)];
/// The host the test kills.
const KILLED: usize = 2;
/// `[serve] lease`: a dead host's claims move after it (heartbeats every quarter of it). Long
/// enough that the PostgreSQL restart (well under three quarters of it) costs no live lease.
const LEASE: Duration = Duration::from_secs(10);
/// The bound on every wait: generous, since a slow machine only makes waits longer.
const REACH: Duration = Duration::from_secs(90);
const DATABASE: &str = "fleet";

/// `apps/a00..a49`: `old` goes, `stable` and `new` stay. `builds/b000..b149`: `b-0` goes, the
/// two newest stay; every fifth has only those two (nothing to delete).
fn fixture() -> Vec<(String, Vec<(&'static str, u64)>)> {
    let apps = (0..50).map(|i| (format!("apps/a{i:02}"), vec![("old", 30), ("stable", 30), ("new", 1)]));
    let builds = (0..150).map(|i| {
        let tags = if i % 5 == 0 { vec![("b-1", 9), ("b-2", 8)] } else { vec![("b-0", 10), ("b-1", 9), ("b-2", 8)] };
        (format!("builds/b{i:03}"), tags)
    });
    apps.chain(builds).collect()
}

/// The tags the policies keep.
fn kept_tag(repository: &str, tag: &str) -> bool {
    if repository.starts_with("apps/") { tag != "old" } else { tag != "b-0" }
}

fn write_config(dir: &Path, registry: &str, state_url: &str, workers: usize) {
    let plugin = crate::support::plugin_path("gitlab-retention").display().to_string();
    let config = format!(
        "[registry]\nurl = {registry:?}\nmax_retries = 0\n\n\
         [state]\ndir = \"state\"\nurl = {state_url:?}\npassword_file = \"pg-password\"\n\n\
         [deletion]\ntimeout = \"60s\"\nconcurrency = 1\n\n\
         [serve]\nworker_capacity = {workers}\nlisten = \"off\"\nlease = \"{}s\"\n\n\
         [[policy]]\nname = \"apps\"\nrepositories = [\"apps/*\"]\nplugin = {plugin:?}\ncadence = \"7d\"\n\
         params = {{ name_regex_delete = \".*\", name_regex_keep = \"stable\", older_than = \"7d\" }}\n\n\
         [[policy]]\nname = \"builds\"\nrepositories = [\"builds/*\"]\nplugin = {plugin:?}\ncadence = \"7d\"\n\
         params = {{ name_regex_delete = \"b-.*\", keep_n = 2 }}\n",
        LEASE.as_secs()
    );
    std::fs::write(dir.join("tagwarden.toml"), config).unwrap();
}

/// One `tagwarden serve` under its own host name, with its own directory and fault proxy;
/// killed when dropped (also when the test fails).
struct Host {
    name: &'static str,
    workers: usize,
    dir: tempfile::TempDir,
    proxy: FaultProxy,
    child: Mutex<Option<Child>>,
    log: Arc<Mutex<String>>,
}

impl Host {
    fn start(&self, compile_cache: &Path) {
        let mut child = tagwarden_testbed::on_own_machine(Path::new(env!("CARGO_BIN_EXE_tagwarden")), self.name)
            .current_dir(self.dir.path())
            .args(["serve", "--config", "tagwarden.toml"])
            .env("NO_COLOR", "1")
            .env("TAGWARDEN_CACHE_DIR", compile_cache)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tagwarden serve under unshare (util-linux)");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        *self.child.lock().unwrap() = Some(child);
    }

    /// Whether `owner` (a lease owner token, `host/boot/pid/start`) is this host.
    fn owns(&self, owner: Option<&str>) -> bool {
        owner.is_some_and(|o| o.split('/').next() == Some(self.name))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `Some(status)` once the process has exited (`None` also before it started).
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().unwrap())
    }

    fn sigkill(&self) {
        let mut child = self.child.lock().unwrap();
        let child = child.as_mut().expect("started");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; the daemon must exit 0.
    fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        let child = child.as_mut().expect("started");
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let status = tokio::task::block_in_place(|| child.wait()).unwrap();
        assert_eq!(status.code(), Some(0), "{}:\n{}", self.name, self.log());
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(child) = self.child.get_mut().unwrap().as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The end of every host's log, for failure messages.
fn logs(hosts: &[Host]) -> String {
    hosts
        .iter()
        .map(|h| {
            let log = h.log();
            let lines: Vec<&str> = log.lines().collect();
            format!("--- {} (last lines) ---\n{}", h.name, lines[lines.len().saturating_sub(40)..].join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `check` until it returns `Some` (bounded by [`REACH`]). A host that exits on its own
/// fails the test at once, with its log.
async fn poll<T>(what: &str, hosts: &[Host], expected_dead: &[usize], mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + REACH;
    loop {
        if let Some(v) = tokio::task::block_in_place(&mut check) {
            return v;
        }
        for (i, h) in hosts.iter().enumerate() {
            if !expected_dead.contains(&i)
                && let Some(status) = h.exited()
            {
                panic!("{} exited ({status}) while waiting for {what}:\n{}", h.name, logs(hosts));
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", logs(hosts));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `n` requests a hold rule stopped.
async fn take(held: &mut Held, n: usize, what: &str, hosts: &[Host]) -> Vec<HeldRequest> {
    let mut taken = Vec::new();
    while taken.len() < n {
        let request = held.next(REACH).await;
        taken.push(request.unwrap_or_else(|| panic!("{what}: {} of {n} requests arrived:\n{}", taken.len(), logs(hosts))));
    }
    taken
}

/// `/v2/<repository>/tags/list?…` or `/v2/<repository>/manifests/<digest>` → the repository.
fn repository_of(request: &HeldRequest) -> String {
    let path = request.request.1.split('?').next().unwrap();
    let path = path.strip_prefix("/v2/").unwrap();
    let end = path.rfind("/tags/list").or_else(|| path.rfind("/manifests/")).unwrap();
    path[..end].to_owned()
}

/// Repositories in `cleanup_ongoing`, per host (in [`HOSTS`] order); a claim owned by anyone
/// else fails the test.
fn ongoing_by_host(pg: &PgStateStore, hosts: &[Host]) -> Vec<BTreeSet<String>> {
    let mut by_host = vec![BTreeSet::new(); hosts.len()];
    for r in pg.repositories(Some(CleanupStatus::Ongoing)).unwrap() {
        let host = hosts.iter().position(|h| h.owns(r.lease_owner.as_deref()));
        let host = host.unwrap_or_else(|| panic!("{} is ongoing under an unknown owner: {r:?}", r.path));
        by_host[host].insert(r.path);
    }
    by_host
}

/// A run as the hosts recorded it.
#[derive(Debug)]
struct Run {
    repository: String,
    status: String,
    started_at: i64,
}

/// An audit row as the hosts recorded it.
#[derive(Debug)]
struct Audited {
    repository: String,
    digest: String,
    outcome: String,
}

/// Every host's runs and audit rows: in PostgreSQL, where `[state] url` puts them.
fn history(cluster: &PostgresCluster) -> (Vec<Run>, Vec<Audited>) {
    let rows = |sql: &str| -> Vec<Vec<String>> {
        let out = cluster.psql_in(DATABASE, sql).unwrap();
        out.lines().filter(|l| !l.is_empty()).map(|l| l.split('|').map(str::to_owned).collect()).collect()
    };
    let runs = rows("SELECT repository, status, started_at FROM runs")
        .into_iter()
        .map(|r| Run { repository: r[0].clone(), status: r[1].clone(), started_at: r[2].parse().unwrap() })
        .collect();
    let audit = rows("SELECT repository, digest, outcome FROM audit_log")
        .into_iter()
        .map(|r| Audited { repository: r[0].clone(), digest: r[1].clone(), outcome: r[2].clone() })
        .collect();
    (runs, audit)
}

/// Pushes the fixture, 16 repositories at once; returns every repository's tag → digest.
async fn seed(seeder: &Seeder) -> BTreeMap<String, BTreeMap<String, String>> {
    futures::stream::iter(fixture())
        .map(|(repository, tags)| async move {
            let mut pushed = BTreeMap::new();
            for (tag, age_days) in tags {
                let digest = seeder.push_image(&repository, tag, Some(&ago(days(age_days)))).await.unwrap();
                pushed.insert(tag.to_owned(), digest);
            }
            (repository, pushed)
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Every repository clean as of `since`: `cleanup_unscheduled`, completed, claimed at or after
/// `since`, no lease, and both policies' next runs a cadence ahead.
fn all_cleaned_since(pg: &PgStateStore, since: Timestamp) -> Option<Vec<RepositoryState>> {
    // Errors (the pool's first call after the restart) are a "not yet".
    let repositories = pg.repositories(None).ok()?;
    let clean = |r: &RepositoryState| {
        r.status == CleanupStatus::Unscheduled
            && r.lease_owner.is_none()
            && r.started_at.is_some_and(|s| s >= since)
            && r.completed_at.is_some_and(|c| Some(c) >= r.started_at)
    };
    let scheduled = ["apps", "builds"].iter().all(|p| pg.policy(p).ok().flatten().is_some_and(|p| p.next_run_at > Timestamp::now()));
    (repositories.len() == 200 && repositories.iter().all(clean) && scheduled).then_some(repositories)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_clean_every_repository_once_per_cadence_at_their_capacity_through_a_sigkill_and_a_postgres_restart() {
    let started = Instant::now();
    let phase = |name: &str| eprintln!("fleet: {name} at {:.1}s", started.elapsed().as_secs_f64());
    let reg = registry().await;
    let seeder = reg.client();
    let mut cluster = PostgresCluster::start().unwrap();
    let state_url = cluster.create_database(DATABASE).unwrap();
    let before = seed(&seeder).await;
    assert_eq!(before.len(), 200);
    phase("seeded");

    let work = tempfile::tempdir().unwrap();
    let compile_cache: PathBuf = work.path().join("compiled");
    let mut hosts = Vec::new();
    for (name, workers) in HOSTS {
        let dir = tempfile::Builder::new().prefix(name).tempdir_in(work.path()).unwrap();
        let proxy = FaultProxy::start(reg.url()).await.unwrap();
        write_config(dir.path(), proxy.url(), &state_url, workers);
        std::fs::write(dir.path().join("pg-password"), cluster.password()).unwrap();
        hosts.push(Host { name, workers, dir, proxy, child: Mutex::new(None), log: Arc::default() });
    }
    let pg = PgStateStore::connect(&state_url, Some(Secret::new(cluster.password()))).unwrap();

    // 1. Capacity. Every pass starts by listing its repository's tags: held at each host's
    // proxy, so every pass a host claims stays in flight. The first host alone compiles the
    // plugins into the shared compile cache; the others start once it is saturated.
    let mut lists: Vec<Held> = hosts.iter().map(|h| h.proxy.hold(Some("GET"), "/tags/list", usize::MAX)).collect();
    hosts[0].start(&compile_cache);
    let mut held_lists = vec![take(&mut lists[0], hosts[0].workers, "fleet-a's first passes", &hosts).await];
    for host in &hosts[1..] {
        host.start(&compile_cache);
    }
    for (i, host) in hosts.iter().enumerate().skip(1) {
        held_lists.push(take(&mut lists[i], host.workers, &format!("{}'s first passes", host.name), &hosts).await);
    }
    phase("saturated");
    let capacity: Vec<usize> = hosts.iter().map(|h| h.workers).collect();
    let in_flight = ongoing_by_host(&pg, &hosts);
    assert_eq!(in_flight.iter().map(BTreeSet::len).collect::<Vec<_>>(), capacity, "{in_flight:?}");
    for (held, ongoing) in held_lists.iter().zip(&in_flight) {
        assert_eq!(&held.iter().map(repository_of).collect::<BTreeSet<_>>(), ongoing, "each host lists what it claimed");
    }
    // Not a snapshot on the way up: every host renews its leases (all in one statement) once a
    // round, before it claims. Once each has renewed after this moment and then again, a whole
    // round of claiming ran in between on every host.
    let saturated = Timestamp::now();
    let lease_ends = |pg: &PgStateStore| -> Option<Vec<Timestamp>> {
        let leases = pg.repositories(Some(CleanupStatus::Ongoing)).ok()?;
        hosts.iter().map(|h| leases.iter().filter(|r| h.owns(r.lease_owner.as_deref())).filter_map(|r| r.lease_expires_at).min()).collect()
    };
    let renewed = poll("a heartbeat of every host", &hosts, &[], || {
        lease_ends(&pg).filter(|e| e.iter().all(|e| *e >= saturated.saturating_add(LEASE)))
    })
    .await;
    poll("another heartbeat of every host", &hosts, &[], || {
        lease_ends(&pg).filter(|e| e.iter().zip(&renewed).all(|(now, then)| now > then)).map(|_| ())
    })
    .await;
    let still = ongoing_by_host(&pg, &hosts);
    assert_eq!(still, in_flight, "the fleet runs exactly 2 + 3 + 4 passes at once");
    for (host, workers) in hosts.iter().zip(&capacity) {
        assert_eq!(host.proxy.count("GET", "/tags/list"), *workers, "{}: one listing per pass in flight", host.name);
    }
    phase("capacity checked");

    // 2. SIGKILL mid-pass. The killed host's passes go on to their first delete, held; then it
    // dies. Two of those deletes reach the registry afterwards (it acted, the host never knew),
    // two never do.
    let killed = &hosts[KILLED];
    killed.proxy.clear();
    let mut deletes = killed.proxy.hold(Some("DELETE"), "/manifests/", usize::MAX);
    held_lists[KILLED].drain(..).for_each(HeldRequest::forward);
    // A pass with nothing to delete ends and another is claimed: wait for one delete per worker.
    let held_deletes = take(&mut deletes, killed.workers, "the killed host's deletes", &hosts).await;
    let orphaned: BTreeSet<String> = held_deletes.iter().map(repository_of).collect();
    assert_eq!(ongoing_by_host(&pg, &hosts)[KILLED], orphaned, "the killed host holds the repositories it deletes in");
    killed.sigkill();
    killed.proxy.clear();
    for (i, request) in held_deletes.into_iter().enumerate() {
        if i % 2 == 0 { request.forward() } else { request.drop_connection() }
    }
    phase("killed fleet-c");

    // 3. PostgreSQL restart mid-run. The live hosts' passes go on while the database is down:
    // their tag lists arrive, but the run of a pass cannot be recorded, so it deletes nothing
    // and is deferred (no failure counted). The daemons must not exit, must notice, and must
    // record those outcomes once it answers again; the repositories are cleaned afterwards.
    tokio::task::block_in_place(|| cluster.stop()).unwrap();
    for (i, host) in hosts.iter().enumerate().filter(|(i, _)| *i != KILLED) {
        host.proxy.clear();
        held_lists[i].drain(..).for_each(HeldRequest::forward);
    }
    poll("every live host to notice PostgreSQL is down", &hosts, &[KILLED], || {
        hosts.iter().enumerate().all(|(i, h)| i == KILLED || h.log().contains("the state store did not answer")).then_some(())
    })
    .await;
    tokio::task::block_in_place(|| cluster.restart()).unwrap();
    phase("restarted PostgreSQL");

    // 4. Convergence: the killed host's repositories come back when its leases expire, and
    // everything is cleaned.
    let first = poll("every repository cleaned", &hosts, &[KILLED], || all_cleaned_since(&pg, Timestamp::from_unix_micros(0))).await;
    phase("first cadence done");
    let reasons = cluster
        .psql_in(
            DATABASE,
            "SELECT path || '|' || COALESCE(last_failure_reason, '') FROM repositories WHERE last_failure_reason IS NOT NULL",
        )
        .unwrap();
    for repository in &orphaned {
        let reason = reasons.lines().find_map(|l| l.strip_prefix(&format!("{repository}|")));
        assert!(
            reason.is_some_and(|r| r.contains("expired without a heartbeat") && r.contains("fleet-c/")),
            "{repository} was taken back from the killed host by lease expiry: {reason:?}"
        );
    }
    assert!(first.iter().all(|r| r.consecutive_failures == 0), "nothing failed");

    // A second cadence, as if a week had passed: each policy due again.
    let second = Timestamp::now();
    for name in ["apps", "builds"] {
        let mut policy = pg.policy(name).unwrap().unwrap();
        assert!(policy.next_run_at > second.saturating_add(days(6)), "the first cadence scheduled the next: {policy:?}");
        // Every first-cadence claim started before `second`: all are due again.
        policy.next_run_at = second;
        pg.put_policy_state(&policy).unwrap();
    }
    poll("every repository cleaned again", &hosts, &[KILLED], || all_cleaned_since(&pg, second)).await;
    phase("second cadence done");
    for (i, host) in hosts.iter().enumerate() {
        if i != KILLED {
            host.stop();
        }
    }
    let counts = pg.status_counts().unwrap();
    assert!(counts.iter().all(|(s, n)| (*s == CleanupStatus::Unscheduled) == (*n == 200)), "{counts:?}");

    // Exactly once per cadence: one completed run per repository before the second cadence
    // began, one after. The only other runs are the killed host's, left open.
    let (runs, audit) = history(&cluster);
    let mut completed: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for run in &runs {
        match run.status.as_str() {
            "completed" => {
                let slot = completed.entry(run.repository.as_str()).or_default();
                if run.started_at < second.unix_micros() { slot.0 += 1 } else { slot.1 += 1 }
            }
            "deleting" | "interrupted" => assert!(orphaned.contains(&run.repository), "{run:?}"),
            _ => panic!("{run:?}"),
        }
    }
    for repository in before.keys() {
        assert_eq!(completed.get(repository.as_str()), Some(&(1, 1)), "{repository}: completed runs per cadence\n{runs:#?}");
    }

    // No deletion twice; open attempts only where the killed host was deleting; the registry
    // lost exactly what the policies delete, each loss audited.
    let mut deleted: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut accounted: BTreeSet<(&str, &str)> = BTreeSet::new();
    for row in &audit {
        let key = (row.repository.as_str(), row.digest.as_str());
        match row.outcome.as_str() {
            "deleted" => *deleted.entry(key).or_default() += 1,
            "already_gone" => {}
            "attempted" => assert!(orphaned.contains(&row.repository), "an open attempt outside the killed host's work: {row:?}"),
            _ => panic!("{row:?}"),
        }
        accounted.insert(key);
    }
    assert!(deleted.values().all(|n| *n == 1), "deleted twice: {:?}", deleted.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>());
    let seeder = &seeder;
    let now: BTreeMap<String, BTreeMap<String, String>> = futures::stream::iter(before.keys())
        .map(|r| async move { (r.clone(), snapshot(seeder, r).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    for (repository, tags) in &before {
        let kept: BTreeMap<String, String> =
            tags.iter().filter(|(t, _)| kept_tag(repository, t)).map(|(t, d)| (t.clone(), d.clone())).collect();
        assert_eq!(now[repository], kept, "{repository}: the registry keeps exactly what the policy keeps");
        for (tag, digest) in tags.iter().filter(|(t, _)| !kept_tag(repository, t)) {
            assert!(accounted.contains(&(repository.as_str(), digest.as_str())), "{repository}:{tag} ({digest}) lost without an audit row");
        }
    }
    for (repository, digest) in deleted.keys() {
        let deletable = before[*repository].iter().any(|(t, d)| d == digest && !kept_tag(repository, t));
        assert!(deletable, "{repository}: deleted {digest}, which no tag the policy deletes names");
    }
    phase("checked");
}
