//! One conformance suite for [`StateStore`], run against SQLite (a database file) and against
//! PostgreSQL (a throwaway cluster from the testbed, one database per case). A case gets a way
//! to open another handle on the same database: another host, with its own connections.
//!
//! Every case runs even when one fails; the test lists the cases that failed.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use tagwarden::model::Timestamp;
use tagwarden::registry::Secret;
use tagwarden::store::{
    CleanupOutcome, CleanupStatus, DeletionOutcome, DeletionStatus, PgStateStore, PolicyState, RepositoryState, StateStore, Store, Work,
};
use tagwarden_testbed::PostgresCluster;

/// Opens another handle (another host) on the case's database.
type Open<'a> = &'a (dyn Fn() -> Arc<dyn StateStore> + Sync);

struct Case {
    name: &'static str,
    run: fn(Open),
}

const CASES: &[Case] = &[
    Case { name: "claim_order_table", run: claim_order_table },
    Case { name: "a_claim_is_leased_and_backoff_is_respected", run: a_claim_is_leased_and_backoff_is_respected },
    Case { name: "policies_and_repositories_are_added_and_moved", run: policies_and_repositories_are_added_and_moved },
    Case { name: "every_cleanup_outcome_is_recorded_for_its_holder_only", run: every_cleanup_outcome_is_recorded_for_its_holder_only },
    Case { name: "leases_are_renewed_and_recovered", run: leases_are_renewed_and_recovered },
    Case { name: "policies_advance_once_every_repository_started", run: policies_advance_once_every_repository_started },
    Case { name: "operator_retry_and_cleanup_now", run: operator_retry_and_cleanup_now },
    Case { name: "every_deletion_transition", run: every_deletion_transition },
    Case { name: "cleanup_and_deletion_never_run_together", run: cleanup_and_deletion_never_run_together },
    Case { name: "hosts_claiming_at_once_never_get_the_same_repository", run: hosts_claiming_at_once_never_get_the_same_repository },
    Case { name: "hosts_claiming_deletions_at_once_never_share_one", run: hosts_claiming_deletions_at_once_never_share_one },
    Case { name: "a_duty_has_one_holder_until_its_lease_expires", run: a_duty_has_one_holder_until_its_lease_expires },
    Case { name: "the_canary_samples_the_most_recently_cleaned_first", run: the_canary_samples_the_most_recently_cleaned_first },
    Case { name: "hosts_taking_a_duty_at_once_get_one_holder", run: hosts_taking_a_duty_at_once_get_one_holder },
];

fn run_all(open_case: &dyn Fn(usize) -> Box<dyn Fn() -> Arc<dyn StateStore> + Sync>) {
    let mut failed = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let open = open_case(i);
        if std::panic::catch_unwind(AssertUnwindSafe(|| (case.run)(&*open))).is_err() {
            failed.push(case.name);
        }
    }
    assert!(failed.is_empty(), "cases failed (their panics are printed above): {failed:?}");
}

#[test]
fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run_all(&|i| {
        let path = dir.path().join(format!("case-{i}.db"));
        Box::new(move || Arc::new(Store::open(&path).unwrap()) as Arc<dyn StateStore>)
    });
}

#[test]
fn postgres_conforms() {
    let cluster = PostgresCluster::start().unwrap();
    run_all(&|i| {
        let url = cluster.create_database(&format!("case_{i}")).unwrap();
        let password = cluster.password().to_owned();
        Box::new(move || Arc::new(PgStateStore::connect(&url, Some(Secret::new(password.clone()))).unwrap()) as Arc<dyn StateStore>)
    });
}

/// Hosts starting together on an empty database: the migrations run once, under the advisory
/// lock, and every host opens it.
#[test]
fn postgres_migrations_run_once_when_hosts_start_together() {
    let cluster = PostgresCluster::start().unwrap();
    let url = cluster.create_database("together").unwrap();
    let barrier = Barrier::new(4);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                barrier.wait();
                PgStateStore::connect(&url, Some(Secret::new(cluster.password()))).expect("every host opens the database")
            });
        }
    });
    assert_eq!(cluster.psql_in("together", "SELECT version FROM tagwarden_schema").unwrap().trim(), "3");
}

/// Bad input changes nothing and says what to do: a password in the URL, a wrong password (never
/// echoed), a database newer than the binary.
#[test]
fn postgres_refuses_bad_urls_wrong_passwords_and_newer_schemas() {
    let cluster = PostgresCluster::start().unwrap();
    let url = cluster.create_database("refusals").unwrap();
    let with_password = url.replace("postgres@", &format!("postgres:{}@", cluster.password()));
    let e = format!("{:#}", PgStateStore::connect(&with_password, None).unwrap_err());
    assert!(e.contains("password_env") && !e.contains(cluster.password()), "{e}");
    let e = format!("{:#}", PgStateStore::connect("mysql://x", None).unwrap_err());
    assert!(e.contains("postgres://user@host:port/database"), "{e}");

    let e = format!("{:#}", PgStateStore::connect(&url, Some(Secret::new("wrong-horse-battery"))).unwrap_err());
    assert!(e.contains(&url) && e.contains("password authentication failed") && !e.contains("wrong-horse-battery"), "{e}");
    assert_eq!(
        cluster.psql_in("refusals", "SELECT to_regclass('public.tagwarden_schema') IS NULL").unwrap().trim(),
        "t",
        "nothing created"
    );

    let store = PgStateStore::connect(&url, Some(Secret::new(cluster.password()))).unwrap();
    drop(store);
    cluster.psql_in("refusals", "UPDATE tagwarden_schema SET version = 99").unwrap();
    let e = format!("{:#}", PgStateStore::connect(&url, Some(Secret::new(cluster.password()))).unwrap_err());
    assert!(e.contains("schema version 99") && e.contains("this tagwarden's 3"), "{e}");
}

/// A PostgreSQL restart between calls: the pool drops its dead connections and the next call
/// works; what was committed is there.
#[test]
fn postgres_store_survives_a_server_restart() {
    let mut cluster = PostgresCluster::start().unwrap();
    let url = cluster.create_database("restart").unwrap();
    let store = PgStateStore::connect(&url, Some(Secret::new(cluster.password()))).unwrap();
    store.upsert_policy("p", true, Duration::from_secs(86_400), t("2026-11-20T11:00:00Z")).unwrap();
    store.add_repositories("p", &["g/a".into(), "g/b".into()]).unwrap();
    let first = store.claim_next(t(NOW), "host-a", Duration::from_secs(60)).unwrap().unwrap();
    cluster.stop().unwrap();
    let e = format!("{:#}", store.claim_next(t(NOW), "host-a", Duration::from_secs(60)).unwrap_err());
    assert!(e.contains(&url), "the error names the database: {e}");
    cluster.restart().unwrap();
    let second = store.claim_next(t(NOW), "host-a", Duration::from_secs(60)).unwrap().expect("claims again after the restart");
    assert_ne!(first.path, second.path);
    assert_eq!(store.repository(&first.path).unwrap().unwrap().status, CleanupStatus::Ongoing, "the first claim was kept");
}

// ---- the cases -------------------------------------------------------------------------------

fn t(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

const NOW: &str = "2026-11-20T12:00:00Z";
const LEASE: Duration = Duration::from_secs(120);

fn repo(path: &str, policy: &str, status: CleanupStatus, started_at: Option<&str>) -> RepositoryState {
    RepositoryState {
        path: path.into(),
        policy: policy.into(),
        status,
        started_at: started_at.map(t),
        completed_at: None,
        next_attempt_at: None,
        consecutive_failures: 0,
        lease_owner: None,
        lease_expires_at: None,
        last_failure: None,
        last_deleted: None,
    }
}

/// The policy states of GitLab's worker spec.
fn policy(name: &str, kind: &str) -> PolicyState {
    let (enabled, next_run_at) = match kind {
        "runnable" => (true, "2026-11-20T11:00:00Z"),     // due an hour ago
        "not runnable" => (true, "2026-11-21T12:00:00Z"), // due tomorrow
        "disabled" => (false, "2026-11-20T11:00:00Z"),
        _ => unreachable!(),
    };
    PolicyState { name: name.into(), enabled, cadence: Duration::from_secs(86_400), next_run_at: t(next_run_at) }
}

fn status(store: &dyn StateStore, path: &str) -> CleanupStatus {
    store.repository(path).unwrap().expect("a repository row").status
}

/// The claim order as GitLab's worker spec has it (the same table as the SQLite unit test):
/// two repositories × policy runnable / not runnable / disabled.
fn claim_order_table(open: Open) {
    use CleanupStatus::*;
    let store = open();
    let before = Some("2026-11-20T10:00:00Z");
    let after = Some("2026-11-20T11:30:00Z");
    let older = Some("2026-11-19T10:00:00Z");
    type Row<'a> = (CleanupStatus, Option<&'a str>, CleanupStatus, Option<&'a str>, &'a str, Option<&'a str>);
    #[rustfmt::skip]
    let table: &[Row] = &[
        (Unscheduled, before, Scheduled,   older,  "runnable",     Some("a")), // unscheduled before scheduled
        (Scheduled,   older,  Unscheduled, before, "runnable",     Some("b")),
        (Unscheduled, before, Unscheduled, older,  "runnable",     Some("b")), // oldest start first
        (Unscheduled, None,   Unscheduled, older,  "runnable",     Some("a")), // never started first
        (Unscheduled, after,  Unscheduled, after,  "runnable",     None),      // both ran this cycle
        (Unscheduled, after,  Unfinished,  before, "runnable",     Some("b")), // then unfinished work
        (Unfinished,  before, Unscheduled, before, "runnable",     Some("b")), // scheduled work first
        (Unfinished,  before, Unfinished,  older,  "runnable",     Some("b")),
        (Unfinished,  None,   Unfinished,  older,  "runnable",     Some("a")), // never started first here too
        (Ongoing,     older,  Ongoing,     older,  "runnable",     None),      // never an ongoing one
        (Ongoing,     older,  Unfinished,  before, "runnable",     Some("b")),
        (Failed,      older,  Gone,        older,  "runnable",     None),
        (Unscheduled, before, Scheduled,   older,  "not runnable", None),
        (Unfinished,  before, Unscheduled, before, "not runnable", Some("a")), // unfinished resumes any time
        (Unscheduled, before, Unfinished,  before, "disabled",     None),
        (Unfinished,  before, Unfinished,  older,  "disabled",     None),
    ];
    for (i, (sa, ta, sb, tb, kind, expected)) in table.iter().enumerate() {
        // Each row under a policy of its own, so rows do not see each other.
        let p = format!("p{i}");
        store.put_policy_state(&policy(&p, kind)).unwrap();
        store.put_repository_state(&repo(&format!("{i}/a"), &p, *sa, *ta)).unwrap();
        store.put_repository_state(&repo(&format!("{i}/b"), &p, *sb, *tb)).unwrap();
        let got = store.claim_next(t(NOW), "me", LEASE).unwrap().map(|c| c.path);
        assert_eq!(got, expected.map(|e| format!("{i}/{e}")), "row {i}: {sa:?} {ta:?} / {sb:?} {tb:?}, policy {kind}");
        // Put it out of the way of the next rows: its policy off.
        store.put_policy_state(&policy(&p, "disabled")).unwrap();
    }
}

fn a_claim_is_leased_and_backoff_is_respected(open: Open) {
    let store = open();
    store.put_policy_state(&policy("p", "runnable")).unwrap();
    let mut waiting = repo("waiting", "p", CleanupStatus::Unscheduled, None);
    waiting.next_attempt_at = Some(t("2026-11-20T12:05:00Z"));
    store.put_repository_state(&waiting).unwrap();
    store.put_repository_state(&repo("ready", "p", CleanupStatus::Unscheduled, Some("2026-11-20T10:00:00Z"))).unwrap();
    let claim = store.claim_next(t(NOW), "host-a", Duration::from_secs(300)).unwrap().unwrap();
    assert_eq!((claim.path.as_str(), claim.policy.as_str(), claim.from), ("ready", "p", CleanupStatus::Unscheduled));
    let state = store.repository("ready").unwrap().unwrap();
    assert_eq!(state.status, CleanupStatus::Ongoing);
    assert_eq!(state.started_at, Some(t(NOW)));
    assert_eq!(state.lease_owner.as_deref(), Some("host-a"));
    assert_eq!(state.lease_expires_at, Some(t("2026-11-20T12:05:00Z")));
    // `waiting` backs off until 12:05; nothing else is claimable, from any host.
    assert_eq!(open().claim_next(t(NOW), "host-b", Duration::from_secs(300)).unwrap(), None);
    let later = open().claim_next(t("2026-11-20T12:05:00Z"), "host-b", Duration::from_secs(300)).unwrap().unwrap();
    assert_eq!(later.path, "waiting");
}

fn policies_and_repositories_are_added_and_moved(open: Open) {
    let store = open();
    store.upsert_policy("a", true, Duration::from_secs(86_400), t(NOW)).unwrap();
    store.upsert_policy("b", true, Duration::from_secs(7 * 86_400), t(NOW)).unwrap();
    store.add_repositories("a", &["g/x".into(), "g/y".into()]).unwrap();
    store.add_repositories("b", &["g/y".into()]).unwrap();
    assert_eq!(store.repository("g/y").unwrap().unwrap().policy, "b");
    assert_eq!(status(&*store, "g/x"), CleanupStatus::Unscheduled);
    assert_eq!(store.repository("g/nope").unwrap(), None);
    // Updating a policy keeps its next run.
    store.upsert_policy("a", false, Duration::from_secs(3_600), t("2030-01-01T00:00:00Z")).unwrap();
    let a = store.policy("a").unwrap().unwrap();
    assert_eq!((a.enabled, a.cadence, a.next_run_at), (false, Duration::from_secs(3_600), t(NOW)));
    assert_eq!(store.policy("nope").unwrap(), None);
    let paths: Vec<String> = store.repositories(None).unwrap().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["g/x", "g/y"]);
    let counts = store.status_counts().unwrap();
    assert_eq!(counts.iter().find(|(s, _)| *s == CleanupStatus::Unscheduled).unwrap().1, 2);
    assert_eq!(counts.len(), CleanupStatus::ALL.len(), "every status is counted, zeros too");
}

fn every_cleanup_outcome_is_recorded_for_its_holder_only(open: Open) {
    let store = open();
    store.upsert_policy("p", true, Duration::from_secs(86_400), t("2026-11-20T11:00:00Z")).unwrap();
    let paths: Vec<String> = ["done", "gone", "unfinished", "deferred", "backoff", "given-up"].iter().map(|p| p.to_string()).collect();
    store.add_repositories("p", &paths).unwrap();
    let now = t(NOW);
    for _ in &paths {
        store.claim_next(now, "me", LEASE).unwrap().expect("every repository is due");
    }
    let later = t("2026-11-20T13:00:00Z");
    let failed = |next: Option<Timestamp>| CleanupOutcome::Failed {
        class: "unauthorized".into(),
        http_status: Some(401),
        reason: "token refused".into(),
        next_attempt_at: next,
    };
    let outcomes = [
        ("done", CleanupOutcome::Done { deleted: 7 }),
        ("gone", CleanupOutcome::Gone),
        ("unfinished", CleanupOutcome::Unfinished { deleted: 3, reason: "time budget".into() }),
        ("deferred", CleanupOutcome::Deferred { reason: "being imported".into(), until: later }),
        ("backoff", failed(Some(later))),
        ("given-up", failed(None)),
    ];
    for (path, outcome) in &outcomes {
        assert!(!open().finish_claim(path, "someone-else", outcome, now).unwrap(), "{path}: not the holder's");
        assert_eq!(status(&*store, path), CleanupStatus::Ongoing, "{path}: untouched by the wrong holder");
        assert!(store.finish_claim(path, "me", outcome, now).unwrap(), "{path}");
        assert!(!store.finish_claim(path, "me", outcome, now).unwrap(), "{path}: a claim ends once");
    }
    let get = |p: &str| store.repository(p).unwrap().unwrap();
    let done = get("done");
    assert_eq!(
        (done.status, done.completed_at, done.last_deleted, done.lease_owner),
        (CleanupStatus::Unscheduled, Some(now), Some(7), None)
    );
    assert_eq!((get("gone").status, get("gone").last_deleted), (CleanupStatus::Gone, Some(0)));
    let unfinished = get("unfinished");
    assert_eq!((unfinished.status, unfinished.last_deleted, unfinished.next_attempt_at), (CleanupStatus::Unfinished, Some(3), None));
    let deferred = get("deferred");
    assert_eq!((deferred.status, deferred.next_attempt_at, deferred.consecutive_failures), (CleanupStatus::Unfinished, Some(later), 0));
    let backoff = get("backoff");
    assert_eq!((backoff.status, backoff.next_attempt_at, backoff.consecutive_failures), (CleanupStatus::Unfinished, Some(later), 1));
    let f = backoff.last_failure.unwrap();
    assert_eq!((f.class.as_str(), f.http_status, f.reason.as_str(), f.at), ("unauthorized", Some(401), "token refused", Some(now)));
    let given_up = get("given-up");
    assert_eq!((given_up.status, given_up.next_attempt_at), (CleanupStatus::Failed, None));
    // Nothing is claimable now: done/gone/failed are not, the others back off until `later`.
    assert_eq!(store.claim_next(now, "me", LEASE).unwrap().map(|c| c.path), Some("unfinished".into()));
    assert_eq!(store.claim_next(now, "me", LEASE).unwrap(), None);
    assert_eq!(store.next_wakeup(now).unwrap(), Some(later));
    let failed_only: Vec<String> = store.repositories(Some(CleanupStatus::Failed)).unwrap().into_iter().map(|r| r.path).collect();
    assert_eq!(failed_only, ["given-up"]);
}

fn leases_are_renewed_and_recovered(open: Open) {
    let (a, b) = (open(), open());
    a.upsert_policy("p", true, Duration::from_secs(86_400), t("2026-11-20T11:00:00Z")).unwrap();
    a.add_repositories("p", &["g/1".into(), "g/2".into(), "g/3".into()]).unwrap();
    let now = t(NOW);
    a.claim_next(now, "host-a", LEASE).unwrap().unwrap();
    a.claim_next(now, "host-a", LEASE).unwrap().unwrap();
    let mine = b.claim_next(now, "host-b", LEASE).unwrap().unwrap();
    let renewed = t("2026-11-20T12:05:00Z");
    assert_eq!(a.renew_leases("host-a", renewed).unwrap(), 2);
    let leases = b.leases().unwrap();
    assert_eq!(leases.len(), 3);
    for l in &leases {
        let expected = if l.owner.as_deref() == Some("host-a") { renewed } else { t("2026-11-20T12:02:00Z") };
        assert_eq!((l.work, l.expires_at, l.started_at), (Work::Cleanup, Some(expected), Some(now)), "{l:?}");
    }
    // host-a died: host-b takes its rows back (unfinished, no failure counted, reason kept).
    for l in leases.iter().filter(|l| l.owner.as_deref() == Some("host-a")) {
        assert!(b.recover(l, Some("host-a stopped renewing")).unwrap());
        assert!(!b.recover(l, None).unwrap(), "taken back once");
        let r = b.repository(&l.path).unwrap().unwrap();
        assert_eq!((r.status, r.consecutive_failures, r.lease_owner), (CleanupStatus::Unfinished, 0, None));
    }
    // A stale lease value (another owner now) changes nothing.
    let stale = tagwarden::store::Lease { owner: Some("host-a".into()), ..leases.iter().find(|l| l.path == mine.path).unwrap().clone() };
    assert!(!a.recover(&stale, None).unwrap());
    assert_eq!(status(&*a, &mine.path), CleanupStatus::Ongoing);
    assert_eq!(a.renew_leases("host-a", renewed).unwrap(), 0, "host-a holds nothing now");
    let taken = leases.iter().find(|l| l.owner.as_deref() == Some("host-a")).unwrap();
    assert!(!a.finish_claim(&taken.path, "host-a", &CleanupOutcome::Done { deleted: 0 }, now).unwrap(), "recovery won");
}

fn policies_advance_once_every_repository_started(open: Open) {
    let store = open();
    let due = t("2026-11-20T11:00:00Z");
    store.upsert_policy("p", true, Duration::from_secs(3_600), due).unwrap();
    store.upsert_policy("off", false, Duration::from_secs(3_600), due).unwrap();
    store.add_repositories("p", &["g/1".into(), "g/2".into()]).unwrap();
    let now = t(NOW);
    assert_eq!(store.advance_policies(now).unwrap(), Vec::<String>::new(), "nothing started yet");
    store.claim_next(now, "me", LEASE).unwrap().unwrap();
    store.claim_next(now, "me", LEASE).unwrap().unwrap();
    assert_eq!(store.advance_policies(now).unwrap(), Vec::<String>::new(), "still ongoing");
    store.finish_claim("g/1", "me", &CleanupOutcome::Done { deleted: 0 }, now).unwrap();
    store.finish_claim("g/2", "me", &CleanupOutcome::Done { deleted: 0 }, now).unwrap();
    let later = t("2026-11-20T12:00:01Z");
    // Two hosts advancing at once move it once.
    let (x, y) = (open(), open());
    let moved: Vec<Vec<String>> = std::thread::scope(|s| {
        let hx = s.spawn(|| x.advance_policies(later).unwrap());
        let hy = s.spawn(|| y.advance_policies(later).unwrap());
        vec![hx.join().unwrap(), hy.join().unwrap()]
    });
    assert_eq!(moved.concat(), ["p"], "{moved:?}");
    let next = t("2026-11-20T13:00:01Z");
    assert_eq!(store.policy("p").unwrap().unwrap().next_run_at, next);
    assert_eq!(store.next_wakeup(later).unwrap(), Some(next));
    assert_eq!(store.claim_next(later, "me", LEASE).unwrap(), None, "both ran this cycle");
    let after = store.claim_next(t("2026-11-20T13:00:02Z"), "me", LEASE).unwrap().expect("due again");
    assert_eq!(after.from, CleanupStatus::Unscheduled);
}

fn operator_retry_and_cleanup_now(open: Open) {
    let store = open();
    store.put_policy_state(&policy("p", "not runnable")).unwrap();
    let mut failed = repo("g/failed", "p", CleanupStatus::Failed, Some("2026-11-19T10:00:00Z"));
    failed.consecutive_failures = 5;
    failed.next_attempt_at = Some(t("2030-01-01T00:00:00Z"));
    store.put_repository_state(&failed).unwrap();
    store.put_repository_state(&repo("g/idle", "p", CleanupStatus::Unscheduled, Some("2026-11-19T10:00:00Z"))).unwrap();
    store.put_repository_state(&repo("g/busy", "p", CleanupStatus::Ongoing, Some("2026-11-19T10:00:00Z"))).unwrap();
    assert_eq!(store.claim_next(t(NOW), "me", LEASE).unwrap(), None);
    assert!(store.retry("g/failed").unwrap());
    let r = store.repository("g/failed").unwrap().unwrap();
    assert_eq!((r.status, r.consecutive_failures, r.next_attempt_at), (CleanupStatus::Unfinished, 0, None));
    assert!(store.cleanup_now("g/idle").unwrap());
    assert!(!store.cleanup_now("g/busy").unwrap(), "an ongoing one is left alone");
    assert!(!store.retry("g/busy").unwrap());
    assert!(!store.cleanup_now("g/unknown").unwrap());
    // cleanup-now goes ahead of other unfinished work (a null start sorts first).
    assert_eq!(store.claim_next(t(NOW), "me", LEASE).unwrap().unwrap().path, "g/idle");
    assert_eq!(store.claim_next(t(NOW), "me", LEASE).unwrap().unwrap().path, "g/failed");
}

fn deletion_status(store: &dyn StateStore, path: &str) -> DeletionStatus {
    store.deletion(path).unwrap().expect("a deletion row").status
}

fn every_deletion_transition(open: Open) {
    let store = open();
    let now = t(NOW);
    assert_eq!(store.claim_deletion(now, "me", LEASE).unwrap(), None, "nothing asked for");
    store.schedule_deletion("g/a", now).unwrap();
    assert_eq!(deletion_status(&*store, "g/a"), DeletionStatus::Scheduled);
    let claim = store.claim_deletion(now, "me", LEASE).unwrap().expect("claimed");
    assert_eq!((claim.path.as_str(), deletion_status(&*store, "g/a")), ("g/a", DeletionStatus::Ongoing));
    let err = store.schedule_deletion("g/a", now).unwrap_err().to_string();
    assert!(err.contains("already running"), "{err}");
    assert_eq!(deletion_status(&*store, "g/a"), DeletionStatus::Ongoing, "refused, changed nothing");
    assert!(!store.finish_deletion("g/a", "other", &DeletionOutcome::Done { deleted: 1 }, now).unwrap(), "not the holder");
    assert!(store.finish_deletion("g/a", "me", &DeletionOutcome::Done { deleted: 3 }, now).unwrap());
    let done = store.deletion("g/a").unwrap().unwrap();
    assert_eq!((done.status, done.tags_deleted, done.lease_owner), (DeletionStatus::Deleted, 3, None));

    store.schedule_deletion("g/b", now).unwrap();
    store.claim_deletion(now, "me", LEASE).unwrap().unwrap();
    store.finish_deletion("g/b", "me", &DeletionOutcome::Unfinished { deleted: 2, reason: "budget".into() }, now).unwrap();
    assert_eq!(deletion_status(&*store, "g/b"), DeletionStatus::Scheduled);
    store.claim_deletion(now, "me", LEASE).unwrap().unwrap();
    let later = t("2026-11-20T12:10:00Z");
    let failed = |next| DeletionOutcome::Failed {
        deleted: 0,
        class: "unauthorized".into(),
        http_status: Some(403),
        reason: "denied".into(),
        next_attempt_at: next,
    };
    store.finish_deletion("g/b", "me", &failed(Some(later)), now).unwrap();
    assert_eq!(deletion_status(&*store, "g/b"), DeletionStatus::Scheduled);
    assert_eq!(store.claim_deletion(now, "me", LEASE).unwrap(), None, "backoff pending");
    assert_eq!(store.next_wakeup(now).unwrap(), Some(later));
    store.claim_deletion(later, "me", LEASE).unwrap().unwrap();
    store.finish_deletion("g/b", "me", &failed(None), later).unwrap();
    let b = store.deletion("g/b").unwrap().unwrap();
    assert_eq!((b.status, b.consecutive_failures, b.tags_deleted), (DeletionStatus::Failed, 2, 2));
    let f = b.last_failure.unwrap();
    assert_eq!((f.class.as_str(), f.http_status, f.reason.as_str()), ("unauthorized", Some(403), "denied"));
    assert_eq!(store.claim_deletion(later, "me", LEASE).unwrap(), None, "failed is not claimed");
    let failed_only: Vec<String> = store.deletions(Some(DeletionStatus::Failed)).unwrap().into_iter().map(|d| d.path).collect();
    assert_eq!(failed_only, ["g/b"]);
    assert_eq!(store.deletions(None).unwrap().len(), 2);
    assert!(store.retry("g/b").unwrap());
    assert_eq!(deletion_status(&*store, "g/b"), DeletionStatus::Scheduled);

    let claim = store.claim_deletion(later, "dead", LEASE).unwrap().unwrap();
    let held = store.leases().unwrap().into_iter().find(|l| l.path == claim.path).unwrap();
    assert_eq!((held.work, held.owner.as_deref()), (Work::Deletion, Some("dead")));
    assert!(store.recover(&held, Some("holder gone")).unwrap());
    assert_eq!(deletion_status(&*store, "g/b"), DeletionStatus::Scheduled);
    assert_eq!(store.deletion("g/never").unwrap(), None);
}

fn cleanup_and_deletion_never_run_together(open: Open) {
    let store = open();
    let now = t(NOW);
    store.upsert_policy("p", true, Duration::from_secs(86_400), t("2026-11-20T11:00:00Z")).unwrap();
    store.add_repositories("p", &["g/a".into()]).unwrap();
    store.claim_next(now, "me", LEASE).unwrap().expect("cleanup claimed");
    store.schedule_deletion("g/a", now).unwrap();
    assert_eq!(store.claim_deletion(now, "me", LEASE).unwrap(), None, "cleanup still running");
    store.finish_claim("g/a", "me", &CleanupOutcome::Done { deleted: 0 }, now).unwrap();
    store.cleanup_now("g/a").unwrap();
    assert_eq!(store.claim_next(now, "me", LEASE).unwrap(), None, "being deleted");
    assert_eq!(status(&*store, "g/a"), CleanupStatus::Unfinished);
    store.claim_deletion(now, "me", LEASE).unwrap().expect("deletion claimed");
    let heartbeat = t("2026-11-20T12:01:00Z");
    assert_eq!(store.renew_leases("me", heartbeat).unwrap(), 1);
    assert_eq!(store.leases().unwrap()[0].expires_at, Some(heartbeat));
}

/// Six hosts (own handles, own connections) claim and finish until nothing is left: every
/// repository is claimed exactly once.
fn hosts_claiming_at_once_never_get_the_same_repository(open: Open) {
    const HOSTS: usize = 6;
    const REPOSITORIES: usize = 300;
    let setup = open();
    for p in ["p1", "p2", "p3"] {
        setup.upsert_policy(p, true, Duration::from_secs(86_400), t("2026-11-20T11:00:00Z")).unwrap();
    }
    for (i, p) in ["p1", "p2", "p3"].iter().enumerate() {
        let paths: Vec<String> = (0..REPOSITORIES / 3).map(|n| format!("g{i}/r{n:03}")).collect();
        setup.add_repositories(p, &paths).unwrap();
    }
    let hosts: Vec<Arc<dyn StateStore>> = (0..HOSTS).map(|_| open()).collect();
    let barrier = Barrier::new(HOSTS);
    let now = t(NOW);
    let claimed: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(h, store)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let me = format!("host-{h}");
                    barrier.wait();
                    let mut mine = Vec::new();
                    while let Some(c) = store.claim_next(now, &me, LEASE).unwrap() {
                        assert!(store.finish_claim(&c.path, &me, &CleanupOutcome::Done { deleted: 0 }, now).unwrap());
                        mine.push(c.path);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<&String> = claimed.iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), REPOSITORIES, "claims per host: {:?}", claimed.iter().map(Vec::len).collect::<Vec<_>>());
    assert_eq!(distinct.len(), REPOSITORIES, "no repository claimed twice");
    let counts = setup.status_counts().unwrap();
    assert_eq!(counts.iter().find(|(s, _)| *s == CleanupStatus::Unscheduled).unwrap().1, REPOSITORIES);
}

fn hosts_claiming_deletions_at_once_never_share_one(open: Open) {
    const HOSTS: usize = 4;
    let setup = open();
    let now = t(NOW);
    for i in 0..40 {
        setup.schedule_deletion(&format!("g/d{i:02}"), now).unwrap();
    }
    let hosts: Vec<Arc<dyn StateStore>> = (0..HOSTS).map(|_| open()).collect();
    let barrier = Barrier::new(HOSTS);
    let claimed: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(h, store)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    std::iter::from_fn(|| store.claim_deletion(now, &format!("host-{h}"), LEASE).unwrap().map(|c| c.path))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<&String> = claimed.iter().collect();
    assert_eq!((claimed.len(), distinct.len()), (40, 40));
    assert_eq!(setup.deletions(Some(DeletionStatus::Ongoing)).unwrap().len(), 40);
}

/// A periodic duty's lease: one owner gets it, the other not until it expires; the holder
/// renews it; a duty's lease is its own (another duty is free).
fn a_duty_has_one_holder_until_its_lease_expires(open: Open) {
    let (a, b) = (open(), open());
    let ttl = Duration::from_secs(60);
    let at = |s: u64| t(NOW).saturating_add(Duration::from_secs(s));
    assert!(a.take_duty("catalog_sync", "host-a", at(0), ttl).unwrap(), "free: a takes it");
    assert!(!b.take_duty("catalog_sync", "host-b", at(1), ttl).unwrap(), "a holds it");
    assert!(b.take_duty("stale_check", "host-b", at(1), ttl).unwrap(), "another duty is free");
    // The holder renews at 50 s: its lease now runs to 110 s, so b is refused at 70 s.
    assert!(a.take_duty("catalog_sync", "host-a", at(50), ttl).unwrap(), "the holder renews");
    assert!(!b.take_duty("catalog_sync", "host-b", at(70), ttl).unwrap(), "renewed: still a's");
    assert!(!b.take_duty("catalog_sync", "host-b", at(109), ttl).unwrap(), "not before expiry");
    // a stops renewing (dead): b gets it once the lease has expired, and a does not get it back.
    assert!(b.take_duty("catalog_sync", "host-b", at(110), ttl).unwrap(), "expired: b takes it");
    assert!(!a.take_duty("catalog_sync", "host-a", at(111), ttl).unwrap(), "now b's");
    assert_eq!(a.duty_holder("catalog_sync").unwrap().as_deref(), Some("host-b"));
    // Released by someone who no longer holds it: nothing changes; by its holder: free at once.
    assert!(!a.release_duty("catalog_sync", "host-a").unwrap());
    assert!(b.release_duty("catalog_sync", "host-b").unwrap());
    assert!(a.take_duty("catalog_sync", "host-a", at(112), ttl).unwrap(), "released: a takes it before b's lease would end");
    assert_eq!(b.duty_holder("nobody_took_this").unwrap(), None);
}

/// Hosts asking for the same free duty at the same moment: exactly one gets it.
fn hosts_taking_a_duty_at_once_get_one_holder(open: Open) {
    let hosts: Vec<Arc<dyn StateStore>> = (0..6).map(|_| open()).collect();
    let barrier = Barrier::new(hosts.len());
    let won: usize = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    h.take_duty("cadence", &format!("host-{i}"), t(NOW), Duration::from_secs(60)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap() as usize).sum()
    });
    assert_eq!(won, 1, "one holder");
}

/// `serve --until-idle` with `[state] url`: every repository's state lands in PostgreSQL (none
/// in the local SQLite file), the daemon gives its duties up when it exits, and `repos list`
/// and `status` read the same database. A URL of another kind or a wrong password is an error
/// that names the key and what to do, shows no password, and changes nothing.
#[test]
fn serve_keeps_the_cleanup_state_in_postgres_when_state_url_is_set() {
    let cluster = PostgresCluster::start().unwrap();
    let url = cluster.create_database("serve").unwrap();
    let dir = tempfile::tempdir().unwrap();
    crate::plugin_tools::write_recording(&dir.path().join("recs"), "a.json", "builds/a", 10);
    crate::plugin_tools::write_recording(&dir.path().join("recs"), "b.json", "builds/b", 10);
    std::fs::write(dir.path().join("pg-password"), format!("{}\n", cluster.password())).unwrap();
    std::fs::write(dir.path().join("wrong-password"), "wrong-horse-battery\n").unwrap();
    let plugin = crate::support::plugin_path("gitlab-retention").display().to_string();
    let write_config = |url: &str, password_file: &str| {
        let config = format!(
            "[registry]\nrecordings = \"recs\"\n\n[state]\ndir = \"state\"\nurl = {url:?}\npassword_file = {password_file:?}\n\n\
             [serve]\nworker_capacity = 2\nlisten = \"off\"\n\n\
             [[policy]]\nname = \"builds\"\nrepositories = [\"builds/*\"]\nplugin = {plugin:?}\ncadence = \"7d\"\n\
             params = {{ name_regex_delete = \".*\", keep_n = 4 }}\n"
        );
        std::fs::write(dir.path().join("tagwarden.toml"), config).unwrap();
    };
    let tagwarden = |args: &[&str]| crate::serve::tagwarden(dir.path(), args);
    let nothing_changed = |database: &str| {
        assert!(!dir.path().join("state").exists(), "no SQLite file was created");
        let schema = cluster.psql_in(database, "SELECT to_regclass('public.tagwarden_schema') IS NULL").unwrap();
        assert_eq!(schema.trim(), "t", "nothing created in PostgreSQL");
    };

    // Refusals first: nothing exists afterwards.
    write_config(&url.replace("postgres://", "mysql://"), "pg-password");
    let (code, out) = tagwarden(&["serve", "--until-idle"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("at `state.url`") && out.contains("only PostgreSQL is supported"), "{out}");
    nothing_changed("serve");
    write_config(&url, "wrong-password");
    let (code, out) = tagwarden(&["serve", "--until-idle"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("`state.url`") && out.contains("password authentication failed"), "{out}");
    assert!(!out.contains("wrong-horse-battery") && !out.contains(cluster.password()), "no password is shown: {out}");
    nothing_changed("serve");

    write_config(&url, "pg-password");
    let (code, out) = tagwarden(&["serve", "--until-idle"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("serve: 2 passes"), "{out}");
    let pg = PgStateStore::connect(&url, Some(Secret::new(cluster.password()))).unwrap();
    for path in ["builds/a", "builds/b"] {
        let r = pg.repository(path).unwrap().unwrap_or_else(|| panic!("{path} is in PostgreSQL: {out}"));
        assert_eq!((r.status, r.policy.as_str(), r.last_deleted), (CleanupStatus::Unscheduled, "builds", Some(6)), "{r:?}");
        assert!(r.completed_at.is_some() && r.lease_owner.is_none(), "{r:?}");
    }
    let policy = pg.policy("builds").unwrap().unwrap();
    assert!(policy.enabled && policy.next_run_at > Timestamp::now(), "the next run is scheduled in PostgreSQL: {policy:?}");
    for duty in ["catalog_sync", "stale_check", "cadence"] {
        assert_eq!(pg.duty_holder(duty).unwrap(), None, "{duty} released on exit");
    }
    let local = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    assert!(local.repositories(None).unwrap().is_empty(), "the local file holds no cleanup state");
    assert!(local.runs().recent(None, 10).unwrap().is_empty(), "nor runs");
    assert!(local.audit_log().recent(None, 10).unwrap().is_empty(), "nor the audit log");
    assert!(local.metadata_cache().is_empty().unwrap(), "nor the metadata cache");
    let shared = Store::in_memory().unwrap().share(pg.clone());
    assert_eq!(shared.runs().recent(None, 10).unwrap().len(), 2, "the runs are in PostgreSQL");
    assert_eq!(shared.audit_log().recent(None, 100).unwrap().len(), 12, "and every deletion's audit row");

    // The operator's commands read (and change) PostgreSQL.
    let (code, out) = tagwarden(&["repos", "list", "--output", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let shown: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|r| (r["path"].as_str().unwrap(), r["status"].as_str().unwrap())).collect();
    assert_eq!(shown, [("builds/a", "cleanup_unscheduled"), ("builds/b", "cleanup_unscheduled")]);
    let (code, out) = tagwarden(&["status", "--output", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["repositories"]["cleanup_unscheduled"], 2, "{status:#}");
    let (code, out) = tagwarden(&["repos", "cleanup-now", "builds/a"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(pg.repository("builds/a").unwrap().unwrap().status, CleanupStatus::Unfinished);
}

/// Two daemons on one PostgreSQL state: only the holder of the `catalog_sync` duty reads the
/// catalog (the other's intervals pass without a sync), and when the holder stops (SIGTERM,
/// which releases its duties) the other takes the duty at its next interval. The other's HTTP
/// API shows the state, runs and audit log the first one left in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_at_a_time_syncs_the_catalog_and_the_other_takes_over_when_it_stops() {
    let cluster = PostgresCluster::start().unwrap();
    let url = cluster.create_database("duties").unwrap();
    let plugin = crate::support::plugin_path("gitlab-retention").display().to_string();
    let host = |name: &str, listen: &str| {
        let dir = tempfile::tempdir().unwrap();
        crate::plugin_tools::write_recording(&dir.path().join("recs"), "a.json", "builds/a", 10);
        crate::plugin_tools::write_recording(&dir.path().join("recs"), "b.json", "builds/b", 10);
        std::fs::write(dir.path().join("pg-password"), cluster.password()).unwrap();
        let config = format!(
            "[registry]\nrecordings = \"recs\"\n\n[state]\ndir = \"state-{name}\"\nurl = {url:?}\npassword_file = \"pg-password\"\n\n\
             [serve]\nworker_capacity = 1\nlisten = {listen:?}\ncatalog_sync = \"2s\"\n\n\
             [[policy]]\nname = \"builds\"\nrepositories = [\"builds/*\"]\nplugin = {plugin:?}\ncadence = \"7d\"\n\
             params = {{ name_regex_delete = \".*\", keep_n = 4 }}\n"
        );
        std::fs::write(dir.path().join("tagwarden.toml"), config).unwrap();
        dir
    };
    // b serves the HTTP API: its state reads come from PostgreSQL, where a did the work.
    let (dir_a, dir_b) = (host("a", "off"), host("b", "127.0.0.1:0"));
    let pg = PgStateStore::connect(&url, Some(Secret::new(cluster.password()))).unwrap();
    let holder_pid = || pg.duty_holder("catalog_sync").unwrap().and_then(|h| h.split('/').nth(2).map(str::to_owned));
    const SYNCED: &str = "1 policies, 2 repositories";

    let mut a = crate::plugin_dir::Daemon::start(dir_a.path(), &["serve"]);
    a.expect(&[SYNCED]).await;
    assert_eq!(holder_pid(), Some(a.child.id().to_string()), "a holds the duty");
    for _ in 0..2 {
        a.expect(&["6 deleted", "→ cleanup_unscheduled"]).await;
    }
    let mut b = crate::plugin_dir::Daemon::start(dir_b.path(), &["serve"]);
    let api_line = b.expect(&["serve: API and /metrics on "]).await;
    let api = api_line.lines().find_map(|l| l.strip_prefix("serve: API and /metrics on ")).unwrap().to_owned();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{api}{path}"));
        async move { http.get(url).send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let listed = get("/api/v1/repositories").await;
    let shown: Vec<(&str, &str)> =
        listed["repositories"].as_array().unwrap().iter().map(|r| (r["path"].as_str().unwrap(), r["status"].as_str().unwrap())).collect();
    assert_eq!(shown, [("builds/a", "cleanup_unscheduled"), ("builds/b", "cleanup_unscheduled")], "{listed:#}");
    let one = get("/api/v1/repositories/builds/a").await;
    assert_eq!((one["repository"]["last_deleted"].as_u64(), one["runs"].as_array().map(Vec::len)), (Some(6), Some(1)), "{one:#}");
    assert_eq!(one["audit"].as_array().map(Vec::len), Some(6), "b shows the deletions a made: {one:#}");
    assert_eq!(get("/api/v1/status").await["repositories"]["cleanup_unscheduled"], 2);
    assert_eq!(get("/readyz").await["state_store"], "ok");
    // Three of a's syncs (2 s apart) span at least two of b's intervals: b reads no catalog.
    for _ in 0..3 {
        a.expect(&[SYNCED]).await;
    }
    assert_eq!(holder_pid(), Some(a.child.id().to_string()), "still a's");
    let mut b_so_far = Vec::new();
    while let Ok(line) = b.lines.try_recv() {
        b_so_far.push(line);
    }
    assert!(!b_so_far.iter().any(|l| l.contains(SYNCED)), "b read the catalog while a held the duty: {b_so_far:?}");
    a.stop().await;
    // a released its duties: b syncs at its next interval and holds the duty from then on.
    b.expect(&[SYNCED]).await;
    assert_eq!(holder_pid(), Some(b.child.id().to_string()), "b holds the duty now");
    b.stop().await;
}

/// The canary's sample: repositories of the given policies only, most recently cleaned first,
/// never-cleaned ones last, by path among equals; at most `limit`.
fn the_canary_samples_the_most_recently_cleaned_first(open: Open) {
    let store = open();
    store.upsert_policy("p", true, Duration::from_secs(86_400), t(NOW)).unwrap();
    store.upsert_policy("q", true, Duration::from_secs(86_400), t(NOW)).unwrap();
    store.add_repositories("p", &["p/never".into(), "p/old".into(), "p/new".into(), "p/also-never".into()]).unwrap();
    store.add_repositories("q", &["q/newest".into()]).unwrap();
    for (path, policy, at) in [("p/old", "p", "2026-11-01T00:00:00Z"), ("p/new", "p", "2026-11-10T00:00:00Z"), ("q/newest", "q", NOW)] {
        let mut r = store.repository(path).unwrap().unwrap();
        r.completed_at = Some(t(at));
        assert_eq!(r.policy, policy);
        store.put_repository_state(&r).unwrap();
    }
    let sample = store.canary_sample(&["p".into()], 3).unwrap();
    let paths: Vec<&str> = sample.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, ["p/new", "p/old", "p/also-never"]);
    assert!(sample.iter().all(|(_, policy)| policy == "p"));
}
