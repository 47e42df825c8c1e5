//! One conformance suite for the audit log, the runs and the metadata cache, run against
//! SQLite (a database file) and against PostgreSQL (`[state] url`: a throwaway cluster from the
//! testbed, one database per case). Each case reaches them as every command does, through a
//! [`Store`]'s handles; it gets a way to open another host's handle on the same database.
//!
//! Every case runs even when one fails; the test lists the cases that failed.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Barrier;

use tagwarden::model::{Digest, Timestamp};
use tagwarden::registry::Secret;
use tagwarden::store::{
    AuditEntry, AuditOperation, AuditOutcome, AuditQuery, KeptManifest, ManifestMetadata, NewRun, PgStateStore, RunPlan, RunSummary, Store,
};
use tagwarden_testbed::PostgresCluster;

/// Opens another handle (another host) on the case's database.
type Open<'a> = &'a (dyn Fn() -> Store + Sync);

struct Case {
    name: &'static str,
    run: fn(Open),
}

const CASES: &[Case] = &[
    Case { name: "attempts_are_recorded_before_and_finished_after", run: attempts_are_recorded_before_and_finished_after },
    Case { name: "the_log_is_searched_and_paged_newest_first", run: the_log_is_searched_and_paged_newest_first },
    Case {
        name: "open_attempts_are_listed_with_their_run_and_resolved_once",
        run: open_attempts_are_listed_with_their_run_and_resolved_once,
    },
    Case { name: "a_batch_is_written_at_once_with_ids_in_order", run: a_batch_is_written_at_once_with_ids_in_order },
    Case { name: "restores_and_kept_manifests", run: restores_and_kept_manifests },
    Case { name: "runs_open_before_deleting_and_close_once", run: runs_open_before_deleting_and_close_once },
    Case { name: "metadata_round_trips_and_the_last_entry_wins", run: metadata_round_trips_and_the_last_entry_wins },
    Case { name: "hosts_writing_at_once_lose_no_row", run: hosts_writing_at_once_lose_no_row },
];

fn run_all(open_case: &dyn Fn(usize) -> Box<dyn Fn() -> Store + Sync>) {
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
fn sqlite_keeps_the_log() {
    let dir = tempfile::tempdir().unwrap();
    run_all(&|i| {
        let path = dir.path().join(format!("case-{i}.db"));
        Box::new(move || Store::open(&path).unwrap())
    });
}

/// With `[state] url`, the handles of a store go to PostgreSQL and the local file (here one
/// per host, in memory) holds none of it.
#[test]
fn postgres_keeps_the_log() {
    let cluster = PostgresCluster::start().unwrap();
    run_all(&|i| {
        let url = cluster.create_database(&format!("log_{i}")).unwrap();
        let password = cluster.password().to_owned();
        Box::new(move || {
            let pg = PgStateStore::connect(&url, Some(Secret::new(password.clone()))).unwrap();
            let local = Store::in_memory().unwrap();
            assert!(local.audit_log().recent(None, 1).unwrap().is_empty());
            local.share(pg)
        })
    });
}

// ---- the cases -------------------------------------------------------------------------------

const REGISTRY: &str = "http://registry";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn entry<'a>(repository: &'a str, digest: &'a str, tags: &'a [String], run_id: Option<i64>) -> AuditEntry<'a> {
    AuditEntry {
        registry: REGISTRY,
        repository,
        operation: AuditOperation::DeleteManifest,
        digest,
        tags,
        decided_by: "policy p (plugin keep 0.1.0 sha256:00)",
        run_id,
    }
}

fn digest(n: u32) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).unwrap()
}

fn attempts_are_recorded_before_and_finished_after(open: Open) {
    let log = open().audit_log();
    let tags = strings(&["a", "b"]);
    let id = log.attempt(&entry("g/app", "sha256:x", &tags, None)).unwrap();
    let row = &log.recent(Some("g/app"), 10).unwrap()[0];
    assert_eq!((row.id, row.outcome.as_str(), &row.tags, row.operation.as_str()), (id, "attempted", &tags, "delete_manifest"));
    log.finish(id, AuditOutcome::Failed, Some("405 UNSUPPORTED")).unwrap();
    let rows = log.recent(None, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].outcome.as_str(), rows[0].detail.as_deref()), ("failed", Some("405 UNSUPPORTED")));
    assert_eq!(rows[0].decided_by, "policy p (plugin keep 0.1.0 sha256:00)");
    assert!(log.recent(Some("other"), 10).unwrap().is_empty());
    let other_host = open().audit_log();
    assert_eq!(other_host.recent(None, 10).unwrap(), rows, "another handle reads the same log");
}

fn the_log_is_searched_and_paged_newest_first(open: Open) {
    let log = open().audit_log();
    let (t1, t2, t3) = (strings(&["v1_0"]), strings(&["v1x0", "latest"]), strings(&["v2"]));
    let before = Timestamp::now();
    let a = log.attempt(&entry("g/app", "sha256:1", &t1, None)).unwrap();
    let b = log.attempt(&entry("g/app", "sha256:2", &t2, None)).unwrap();
    let c = log.attempt(&entry("g/other", "sha256:3", &t3, None)).unwrap();
    let ids = |q: AuditQuery| log.search(&q).unwrap().iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(AuditQuery { limit: 10, ..Default::default() }), [c, b, a]);
    assert_eq!(ids(AuditQuery { repository: Some("g/app"), limit: 10, ..Default::default() }), [b, a]);
    assert_eq!(ids(AuditQuery { tag: Some("v1_0"), limit: 10, ..Default::default() }), [a], "`_` is no wildcard");
    assert_eq!(ids(AuditQuery { tag: Some("latest"), limit: 10, ..Default::default() }), [b], "a tag among several");
    assert_eq!(ids(AuditQuery { tag: Some("v1"), limit: 10, ..Default::default() }), Vec::<i64>::new(), "whole tags only");
    assert_eq!(ids(AuditQuery { digest: Some("sha256:3"), limit: 10, ..Default::default() }), [c]);
    assert_eq!(ids(AuditQuery { before_id: Some(c), limit: 1, ..Default::default() }), [b], "the next page");
    assert_eq!(ids(AuditQuery { since: Some(before), limit: 10, ..Default::default() }).len(), 3);
    assert_eq!(ids(AuditQuery { until: Some(before), limit: 10, ..Default::default() }), Vec::<i64>::new());
    assert_eq!(log.recent_since(None, Some(Timestamp::now().saturating_add(std::time::Duration::from_secs(60))), 10).unwrap(), []);
}

fn open_attempts_are_listed_with_their_run_and_resolved_once(open: Open) {
    let store = open();
    let log = store.audit_log();
    let run = store
        .runs()
        .begin(&NewRun {
            registry: REGISTRY,
            repository: "g/app",
            policy: "p",
            decided_by: "p (x 1)",
            owner: "host:boot:1:2",
            tags_seen: 3,
        })
        .unwrap();
    let tags = strings(&["a"]);
    let first = log.attempt(&entry("g/app", "sha256:1", &tags, Some(run))).unwrap();
    let second = log.attempt(&entry("g/app", "sha256:2", &tags, Some(run))).unwrap();
    log.finish(second, AuditOutcome::Deleted, None).unwrap();
    let open_rows = log.open_attempts(REGISTRY, "g/app").unwrap();
    assert_eq!(open_rows.len(), 1);
    assert_eq!(
        (open_rows[0].id, open_rows[0].run_id, open_rows[0].run_owner.as_deref(), open_rows[0].run_finished),
        (first, Some(run), Some("host:boot:1:2"), false)
    );
    assert_eq!(log.repositories_with_open_attempts(REGISTRY).unwrap(), ["g/app"]);
    assert!(log.open_attempts("http://other", "g/app").unwrap().is_empty());
    log.leave_open(first, "timed out; checked next pass").unwrap();
    let left = log.open_attempts(REGISTRY, "g/app").unwrap();
    assert_eq!(left.len(), 1, "leave_open keeps it open");
    store.runs().finish(run, &RunSummary { status: "completed", tags_deleted: 1, manifests_deleted: 1, failed: 0, detail: None }).unwrap();
    assert!(log.open_attempts(REGISTRY, "g/app").unwrap()[0].run_finished, "the run's close is seen");
    let other_host = open().audit_log();
    assert!(other_host.resolve(first, AuditOutcome::NotDeleted, "still there").unwrap(), "any host settles it");
    assert!(!log.resolve(first, AuditOutcome::Deleted, "late").unwrap(), "a resolved row is not resolved again");
    assert!(!log.resolve(second, AuditOutcome::NotDeleted, "x").unwrap(), "a finished row is left alone");
    let rows = log.recent(None, 10).unwrap();
    assert_eq!(rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(), ["deleted", "not_deleted"]);
    assert_eq!(rows[1].detail.as_deref(), Some("still there"));
    assert!(log.open_attempts(REGISTRY, "g/app").unwrap().is_empty());
    assert!(log.repositories_with_open_attempts(REGISTRY).unwrap().is_empty());
}

fn a_batch_is_written_at_once_with_ids_in_order(open: Open) {
    let log = open().audit_log();
    let digests: Vec<String> = (0..5_000).map(|i| format!("sha256:{i}")).collect();
    let tags: Vec<Vec<String>> = (0..5_000).map(|i| vec![format!("t{i}")]).collect();
    let entries: Vec<AuditEntry> = digests.iter().zip(&tags).map(|(d, t)| entry("g/big", d, t, None)).collect();
    let ids = log.attempt_all(&entries).unwrap();
    assert_eq!(ids.len(), 5_000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in the order of the entries");
    let outcomes: Vec<(i64, AuditOutcome, Option<String>)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, if i.is_multiple_of(2) { AuditOutcome::Deleted } else { AuditOutcome::Failed }, None))
        .collect();
    log.finish_all(&outcomes).unwrap();
    let rows = log.recent(Some("g/big"), 10_000).unwrap();
    assert_eq!(rows.len(), 5_000);
    for row in &rows {
        let i: usize = row.digest["sha256:".len()..].parse().unwrap();
        assert_eq!(row.id, ids[i], "row {i} has the id returned for it");
        assert_eq!(row.tags, tags[i]);
        assert_eq!(row.outcome, if i.is_multiple_of(2) { "deleted" } else { "failed" });
    }
    // Recorded after the fact (a what-if pass): each with its outcome.
    let done = [
        (entry("g/whatif", "sha256:w1", &tags[0], None), Some(AuditOutcome::Deleted), None),
        (entry("g/whatif", "sha256:w2", &tags[1], None), None, Some("unknown")),
    ];
    log.record_all(&done).unwrap();
    let rows = log.recent(Some("g/whatif"), 10).unwrap();
    assert_eq!(
        rows.iter().map(|r| (r.digest.as_str(), r.outcome.as_str())).collect::<Vec<_>>(),
        [("sha256:w2", "attempted"), ("sha256:w1", "deleted")]
    );
    assert_eq!(log.attempt_all(&[]).unwrap(), Vec::<i64>::new());
}

fn restores_and_kept_manifests(open: Open) {
    let log = open().audit_log();
    let tags = strings(&["v1", "v1.0"]);
    let deleted = log.attempt(&entry("g/app", "sha256:aa", &tags, None)).unwrap();
    log.finish(deleted, AuditOutcome::Deleted, None).unwrap();
    let failed = log.attempt(&entry("g/app", "sha256:bb", &tags, None)).unwrap();
    log.finish(failed, AuditOutcome::Failed, Some("500")).unwrap();
    assert_eq!(log.last_deletion("g/app", "v1.0").unwrap().map(|r| r.id), Some(deleted), "a failed deletion deleted nothing");
    assert_eq!(log.last_deletion("g/app", "v2").unwrap(), None);
    let restore_tags = strings(&["v1"]);
    let restore =
        AuditEntry { operation: AuditOperation::RestoreTag, decided_by: "operator", ..entry("g/app", "sha256:aa", &restore_tags, None) };
    let r = log.restore_attempt(&restore).unwrap();
    assert_eq!(log.recent(Some("g/app"), 1).unwrap()[0].outcome, "restoring");
    log.finish(r, AuditOutcome::Restored, None).unwrap();
    assert_eq!(log.last_deletion("g/app", "v1").unwrap().map(|r| r.id), Some(deleted), "a restore is not a deletion");
    assert!(log.open_attempts(REGISTRY, "g/app").unwrap().is_empty(), "a restore is never reconciled");

    let body = b"{\"schemaVersion\":2,\x00binary\xff}".to_vec();
    let kept =
        KeptManifest { digest: "sha256:aa".into(), media_type: "application/vnd.oci.image.manifest.v1+json".into(), body: body.clone() };
    assert!(!log.has_kept_manifest("sha256:aa").unwrap());
    log.keep_manifest(&kept).unwrap();
    log.keep_manifest(&KeptManifest { body: b"other".to_vec(), ..kept.clone() }).unwrap();
    assert!(log.has_kept_manifest("sha256:aa").unwrap());
    assert_eq!(open().audit_log().kept_manifest("sha256:aa").unwrap(), Some(kept), "the first bytes kept, byte for byte");
    assert_eq!(log.kept_manifest("sha256:zz").unwrap(), None);
}

fn runs_open_before_deleting_and_close_once(open: Open) {
    let runs = open().runs();
    let new = NewRun { registry: REGISTRY, repository: "g/app", policy: "p", decided_by: "p (x)", owner: "me", tags_seen: 10 };
    let before = Timestamp::now();
    let a = runs.begin(&new).unwrap();
    runs.set_plan(a, RunPlan { tags_to_delete: 4, digests_planned: 3, tags_planned: 4 }).unwrap();
    let b = runs.begin(&new).unwrap();
    let c = runs.begin(&NewRun { repository: "g/other", ..new.clone() }).unwrap();
    assert_eq!(runs.open(REGISTRY, "g/app").unwrap().iter().map(|r| (r.id, r.owner.as_str())).collect::<Vec<_>>(), [(a, "me"), (b, "me")]);
    assert_eq!(runs.repositories_with_open_runs(REGISTRY).unwrap(), ["g/app", "g/other"]);
    runs.finish(a, &RunSummary { status: "completed", tags_deleted: 4, manifests_deleted: 3, failed: 0, detail: None }).unwrap();
    runs.finish(c, &RunSummary { status: "failed", tags_deleted: 1, manifests_deleted: 1, failed: 2, detail: Some("503") }).unwrap();
    runs.close_interrupted(b, "owner gone").unwrap();
    runs.close_interrupted(a, "too late").unwrap();
    assert_eq!(runs.status(a).unwrap().as_deref(), Some("completed"), "a closed run is not closed again");
    assert_eq!(runs.status(b).unwrap().as_deref(), Some("interrupted"));
    assert_eq!(runs.status(i64::MAX).unwrap(), None);
    assert!(runs.open(REGISTRY, "g/app").unwrap().is_empty());
    let recent = runs.recent(Some("g/app"), 10).unwrap();
    assert_eq!(recent.iter().map(|r| (r.id, r.status.as_str())).collect::<Vec<_>>(), [(b, "interrupted"), (a, "completed")]);
    assert_eq!((recent[1].tags_seen, recent[1].tags_to_delete, recent[1].tags_deleted, recent[1].failed), (10, 4, Some(4), Some(0)));
    assert_eq!(recent[0].detail.as_deref(), Some("owner gone"));
    assert!(recent[1].finished_at.is_some_and(|f| f >= recent[1].started_at));
    assert_eq!(runs.recent(None, 1).unwrap().len(), 1);
    let totals = runs.since(before).unwrap();
    assert_eq!((totals.runs, totals.tags_deleted, totals.failed_runs), (3, 5, 1));
    let days = runs.by_day(before).unwrap();
    let today = before.unix_micros() / 86_400_000_000;
    assert!(!days.is_empty() && days.iter().all(|d| d.day >= today), "{days:?}");
    assert_eq!((days.iter().map(|d| d.runs).sum::<u64>(), days.iter().map(|d| d.failed_runs).sum::<u64>()), (3, 1));
    let later = Timestamp::now().saturating_add(std::time::Duration::from_secs(3600));
    assert_eq!(runs.since(later).unwrap().runs, 0);
}

fn metadata_round_trips_and_the_last_entry_wins(open: Open) {
    let cache = open().metadata_cache();
    assert!(cache.is_empty().unwrap());
    let image = |created: Option<i64>| ManifestMetadata {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        created_at: created.map(Timestamp::from_unix_micros),
        size_bytes: Some(1234),
        config_digest: Some(digest(9)),
        children: Vec::new(),
    };
    let index = ManifestMetadata {
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        created_at: Some(Timestamp::from_unix_micros(7)),
        size_bytes: None,
        config_digest: None,
        children: vec![digest(3), digest(5)],
    };
    let entries = vec![
        (digest(1), image(Some(1_700_000_000_123_456))),
        (digest(2), image(None)),
        (digest(4), index.clone()),
        (digest(1), image(Some(42))),
    ];
    cache.put_many(&entries).unwrap();
    let got = open().metadata_cache().get_many(&[digest(1), digest(2), digest(3), digest(4)]).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[&digest(1)], image(Some(42)), "the last entry for a digest wins");
    assert_eq!(got[&digest(2)], image(None), "\"created unknown\" is cached too");
    assert_eq!(got[&digest(4)], index);
    assert_eq!(cache.get(&digest(3)).unwrap(), None);
    assert_eq!(cache.len().unwrap(), 3);
    cache.put_many(&[]).unwrap();
    assert!(cache.get_many(&[]).unwrap().is_empty());
}

fn hosts_writing_at_once_lose_no_row(open: Open) {
    const HOSTS: usize = 4;
    const ROWS: usize = 50;
    let barrier = Barrier::new(HOSTS);
    let ids: Vec<Vec<i64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..HOSTS)
            .map(|h| {
                let (barrier, log) = (&barrier, open().audit_log());
                s.spawn(move || {
                    barrier.wait();
                    (0..ROWS)
                        .map(|i| {
                            let (repo, digest, tags) = (format!("g/h{h}"), format!("sha256:{i}"), vec![format!("t{i}")]);
                            let id = log.attempt(&entry(&repo, &digest, &tags, None)).unwrap();
                            log.finish(id, AuditOutcome::Deleted, None).unwrap();
                            id
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: HashSet<i64> = ids.iter().flatten().copied().collect();
    assert_eq!(all.len(), HOSTS * ROWS, "every row its own id");
    let rows = open().audit_log().recent(None, 10_000).unwrap();
    assert_eq!(rows.len(), HOSTS * ROWS);
    assert!(rows.iter().all(|r| r.outcome == "deleted" && all.contains(&r.id)));
}

/// `tagwarden state migrate --to`: a SQLite state (cleanup state, runs, audit log, kept
/// manifests, metadata) arrives in PostgreSQL as it was, its ids continue there, and a second
/// copy into a database that holds a state is refused and changes nothing; so is a wrong
/// password, which is never shown.
#[test]
fn state_migrate_copies_a_sqlite_state_into_an_empty_postgres_database() {
    use tagwarden::store::StateStore;
    let cluster = PostgresCluster::start().unwrap();
    let url = cluster.create_database("target").unwrap();
    let dir = tempfile::tempdir().unwrap();
    crate::plugin_tools::write_recording(&dir.path().join("recs"), "a.json", "builds/a", 3);
    let plugin = crate::support::plugin_path("gitlab-retention").display().to_string();
    let write_config = || {
        let config = format!(
            "[registry]\nrecordings = \"recs\"\n\n[state]\ndir = \"state\"\n\n\
             [[policy]]\nname = \"builds\"\nrepositories = [\"builds/*\"]\nplugin = {plugin:?}\ncadence = \"7d\"\n\
             params = {{ name_regex_delete = \".*\", keep_n = 4 }}\n"
        );
        std::fs::write(dir.path().join("tagwarden.toml"), config).unwrap();
    };
    std::fs::write(dir.path().join("pg-password"), cluster.password()).unwrap();
    std::fs::write(dir.path().join("wrong-password"), "wrong-horse-battery").unwrap();
    let tagwarden = |args: &[&str]| crate::serve::tagwarden(dir.path(), args);

    write_config();
    let migrate = |password_file: &str, more: &[&str]| {
        let mut args = vec!["state", "migrate", "--to", &url, "--password-file", password_file];
        args.extend(more);
        tagwarden(&args)
    };
    let (code, out) = migrate("pg-password", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no SQLite state at") && out.contains("state/tagwarden.db"), "{out}");

    // A state with something in every table.
    let local = Store::open(&dir.path().join("state/tagwarden.db")).unwrap();
    let now = Timestamp::now();
    let hour_ago = Timestamp::from_unix_micros(now.unix_micros() - 3_600_000_000);
    local.upsert_policy("builds", true, std::time::Duration::from_secs(7 * 86_400), hour_ago).unwrap();
    local.add_repositories("builds", &strings(&["builds/a", "builds/b", "builds/c"])).unwrap();
    local.claim_next(now, "host-a", std::time::Duration::from_secs(60)).unwrap().expect("a claim");
    local.schedule_deletion("builds/c", now).unwrap();
    let run = local
        .runs()
        .begin(&NewRun { registry: REGISTRY, repository: "builds/a", policy: "builds", decided_by: "d", owner: "host-a", tags_seen: 3 })
        .unwrap();
    local.runs().finish(run, &RunSummary { status: "completed", tags_deleted: 2, manifests_deleted: 2, failed: 0, detail: None }).unwrap();
    let tags = strings(&["old"]);
    for d in ["sha256:1", "sha256:2"] {
        let id = local.audit_log().attempt(&entry("builds/a", d, &tags, Some(run))).unwrap();
        local.audit_log().finish(id, AuditOutcome::Deleted, None).unwrap();
    }
    local.audit_log().attempt(&entry("builds/a", "sha256:3", &tags, Some(run))).unwrap();
    let kept = KeptManifest { digest: "sha256:1".into(), media_type: "application/json".into(), body: vec![0, 1, 2, 255] };
    local.audit_log().keep_manifest(&kept).unwrap();
    let meta = ManifestMetadata {
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        created_at: Some(now),
        size_bytes: Some(9),
        config_digest: None,
        children: vec![digest(1), digest(2)],
    };
    local.metadata_cache().put_many(&[(digest(7), meta.clone())]).unwrap();

    let (code, out) = migrate("wrong-password", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("password authentication failed") && !out.contains("wrong-horse-battery"), "{out}");
    assert_eq!(cluster.psql_in("target", "SELECT to_regclass('public.audit_log') IS NULL").unwrap().trim(), "t", "nothing created");

    let (code, out) = migrate("pg-password", &["--output", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let json_start = out.find('{').unwrap_or_else(|| panic!("a JSON report: {out}"));
    // stdout's JSON, with the progress on stderr around it.
    let report: serde_json::Value = serde_json::Deserializer::from_str(&out[json_start..]).into_iter().next().unwrap().unwrap();
    let counts: Vec<(&str, u64)> =
        report["tables"].as_object().unwrap().iter().map(|(t, n)| (t.as_str(), n.as_u64().unwrap())).collect::<Vec<_>>();
    for (table, rows) in [
        ("policies", 1),
        ("repositories", 3),
        ("repository_deletions", 1),
        ("runs", 1),
        ("audit_log", 3),
        ("deleted_manifests", 1),
        ("manifest_metadata", 1),
    ] {
        assert!(counts.contains(&(table, rows)), "{table}: {rows} rows in {counts:?}");
    }

    let pg = PgStateStore::connect(&url, Some(Secret::new(cluster.password()))).unwrap();
    let shared = Store::in_memory().unwrap().share(pg.clone());
    assert_eq!(pg.policy("builds").unwrap(), local.policy("builds").unwrap());
    assert_eq!(pg.repositories(None).unwrap(), local.repositories(None).unwrap(), "leases and statuses as they were");
    assert_eq!(pg.deletions(None).unwrap(), local.deletions(None).unwrap());
    assert_eq!(shared.runs().recent(None, 10).unwrap(), local.runs().recent(None, 10).unwrap());
    assert_eq!(shared.audit_log().recent(None, 10).unwrap(), local.audit_log().recent(None, 10).unwrap());
    assert_eq!(shared.audit_log().open_attempts(REGISTRY, "builds/a").unwrap().len(), 1, "the open attempt is still open");
    assert_eq!(shared.audit_log().kept_manifest("sha256:1").unwrap(), Some(kept));
    assert_eq!(shared.metadata_cache().get(&digest(7)).unwrap(), Some(meta));
    let last = local.audit_log().recent(None, 1).unwrap()[0].id;
    let next = shared.audit_log().attempt(&entry("builds/b", "sha256:9", &tags, None)).unwrap();
    assert!(next > last, "ids continue after the copied ones: {next} after {last}");
    let new_run = NewRun { registry: REGISTRY, repository: "builds/b", policy: "builds", decided_by: "d", owner: "h", tags_seen: 0 };
    assert!(shared.runs().begin(&new_run).unwrap() > run, "run ids continue too");

    let (code, out) = migrate("pg-password", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("already holds a state"), "{out}");
    assert_eq!(shared.audit_log().recent(None, 10).unwrap().len(), 4, "nothing copied twice");
    assert_eq!(pg.repositories(None).unwrap().len(), 3);
}
