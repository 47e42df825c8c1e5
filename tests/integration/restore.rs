//! Restoring deleted tags against a REAL registry (distribution 2.8): a pass deletes by policy,
//! then `restore` pushes the kept manifest back; the registry's own answers are checked (the
//! tag resolves to the original digest, the manifest and every blob it references are
//! fetchable). After the registry's garbage collector ran, the error names the blob it lost.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use tagwarden::registry::references;
use tagwarden::restore::{RestoreErrorKind, RestoreRequest, restore};
use tagwarden::store::Store;
use tagwarden_testbed::Seeder;

use crate::pass::{ago, audit, client, context, days, gitlab, registry, run, snapshot};

/// The manifest `reference` of `repo` and every blob (and platform manifest) it references,
/// fetched with the test bed's own client; returns the manifest's digest.
async fn assert_fully_fetchable(seed: &Seeder, repo: &str, reference: &str) -> String {
    let resp = seed.request(Method::GET, &format!("/v2/{repo}/manifests/{reference}")).await.unwrap();
    assert!(resp.status().is_success(), "{repo}:{reference}: {}", resp.status());
    let body = resp.bytes().await.unwrap();
    let digest = tagwarden::model::Digest::sha256_of(&body).to_string();
    let refs = references(&body).unwrap();
    for (blob, role) in &refs.blobs {
        let resp = seed.request(Method::GET, &format!("/v2/{repo}/blobs/{blob}")).await.unwrap();
        assert!(resp.status().is_success(), "{repo}:{reference}: {role} {blob}: {}", resp.status());
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(tagwarden::model::Digest::sha256_of(&bytes), *blob, "{role} content");
    }
    for child in &refs.manifests {
        Box::pin(assert_fully_fetchable(seed, repo, child.as_str())).await;
    }
    digest
}

fn request<'a>(repo: &'a str, tag: &'a str, as_tag: Option<&'a str>) -> RestoreRequest<'a> {
    RestoreRequest { repository: repo, tag, as_tag, by: "test" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_deleted_by_a_policy_come_back_with_their_digest_until_the_registry_collects_their_blobs() {
    let reg = registry().await;
    let seed = reg.client();
    let repo = "group/app";
    // Old images and an old multi-arch index are deleted; `latest` (the newest) is kept.
    for (tag, age) in [("v1", 30), ("v2", 20), ("v3", 15), ("latest", 1)] {
        seed.push_image(repo, tag, Some(&ago(days(age)))).await.unwrap();
    }
    seed.push_index(repo, "multi", [Some(&ago(days(25))), Some(&ago(days(25)))]).await.unwrap();
    let before = snapshot(&seed, repo).await;

    let store = Store::in_memory().unwrap();
    let ctx = context(client(reg.url(), &store), &store);
    let report = run(&ctx, &gitlab(json!({"name_regex_delete": ".*", "older_than": "7d"})), repo).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(snapshot(&seed, repo).await.keys().collect::<Vec<_>>(), ["latest"], "{report:#?}");

    let c = ctx.backend.registry().unwrap();
    let log = store.audit_log();
    // An image: same digest, manifest and every blob fetchable.
    let restored = restore(c, &log, &request(repo, "v1", None)).await.unwrap();
    assert_eq!((restored.tag.as_str(), restored.digest.as_str()), ("v1", before["v1"].as_str()));
    assert!(!restored.already_there);
    assert_eq!(seed.resolve(repo, "v1").await.unwrap().as_deref(), Some(before["v1"].as_str()));
    assert_eq!(assert_fully_fetchable(&seed, repo, "v1").await, before["v1"]);
    // An index: its platform manifests too (pushed back when the pass deleted them as well).
    let restored = restore(c, &log, &request(repo, "multi", None)).await.unwrap();
    assert_eq!(restored.digest, before["multi"]);
    assert_eq!(restored.media_type, "application/vnd.oci.image.index.v1+json");
    assert_eq!(assert_fully_fetchable(&seed, repo, "multi").await, before["multi"]);
    // Under another name; the original name stays deleted.
    let restored = restore(c, &log, &request(repo, "v2", Some("v2-restored"))).await.unwrap();
    assert_eq!(restored.digest, before["v2"]);
    assert_eq!(seed.resolve(repo, "v2-restored").await.unwrap().as_deref(), Some(before["v2"].as_str()));
    assert_eq!(seed.resolve(repo, "v2").await.unwrap(), None);

    // Again: nothing to do. A tag now pointing elsewhere is never moved.
    assert!(restore(c, &log, &request(repo, "v1", None)).await.unwrap().already_there);
    let err = restore(c, &log, &request(repo, "v3", Some("latest"))).await.unwrap_err();
    assert_eq!(err.kind, RestoreErrorKind::Conflict, "{err}");
    assert!(err.message.contains(&before["latest"]) && err.message.contains("--as"), "{err}");
    assert_eq!(seed.resolve(repo, "latest").await.unwrap().as_deref(), Some(before["latest"].as_str()));
    // Never deleted, and not a tag at all: clear errors, nothing pushed.
    let err = restore(c, &log, &request(repo, "never-there", None)).await.unwrap_err();
    assert!(err.kind == RestoreErrorKind::NotDeleted && err.message.contains("tagwarden audit"), "{err}");
    let err = restore(c, &log, &request(repo, "-bad", None)).await.unwrap_err();
    assert!(err.kind == RestoreErrorKind::Invalid && err.message.contains("not a valid tag"), "{err}");

    // The registry's garbage collector removes what only deleted manifests referenced: v3's
    // config blob (its layer is shared with images that remain).
    reg.garbage_collect(false).await.unwrap();
    let err = restore(c, &log, &request(repo, "v3", None)).await.unwrap_err();
    assert_eq!(err.kind, RestoreErrorKind::Gone, "{err}");
    let v3_manifest = log.kept_manifest(&before["v3"]).unwrap().expect("kept before the delete");
    let config = &references(&v3_manifest.body).unwrap().blobs[0];
    assert_eq!(config.1, "config");
    assert!(err.message.contains(&format!("blob {} (config", config.0)) && err.message.contains("garbage collector"), "{err}");
    assert_eq!(seed.resolve(repo, "v3").await.unwrap(), None, "nothing pushed");

    // Every restore is in the audit log: three restored, the collected one failed.
    let rows: Vec<_> = audit(&store, repo).into_iter().filter(|r| r.operation == "restore_tag").collect();
    let outcomes: BTreeSet<(String, String)> = rows.iter().map(|r| (r.tags.join(","), r.outcome.clone())).collect();
    let expected: BTreeSet<(String, String)> = [("v1", "restored"), ("multi", "restored"), ("v2-restored", "restored"), ("v3", "failed")]
        .iter()
        .map(|(t, o)| (t.to_string(), o.to_string()))
        .collect();
    assert_eq!(outcomes, expected, "{rows:#?}");
    assert!(rows.iter().all(|r| r.decided_by == "test"), "{rows:#?}");
    let failed = rows.iter().find(|r| r.outcome == "failed").unwrap();
    assert!(failed.detail.as_deref().unwrap_or("").contains(config.0.as_str()), "{failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_command_undoes_a_run_and_explains_what_it_cannot_do() {
    let reg = registry().await;
    let seed = reg.client();
    let repo = "team/svc";
    for (tag, age) in [("old", 30), ("new", 1)] {
        seed.push_image(repo, tag, Some(&ago(days(age)))).await.unwrap();
    }
    let before = snapshot(&seed, repo).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = crate::support::plugin_path("gitlab-retention").display().to_string();
    let config = format!(
        "[registry]\nurl = {:?}\n\n[state]\ndir = \"state\"\n\n[[policy]]\nname = \"svc\"\nrepositories = [\"team/*\"]\n\
         plugin = {plugin:?}\nparams = {{ name_regex_delete = \".*\", keep_n = 1 }}\n",
        reg.url()
    );
    std::fs::write(dir.path().join("tagwarden.toml"), config).unwrap();
    let tagwarden = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new(env!("CARGO_BIN_EXE_tagwarden"))
                .current_dir(dir.path())
                .args(args)
                .env("NO_COLOR", "1")
                .env("TAGWARDEN_CACHE_DIR", dir.path().join("compiled"))
                .output()
                .unwrap()
        });
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, out, err) = tagwarden(&["run", "--once"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(seed.resolve(repo, "old").await.unwrap(), None);

    let (code, out, err) = tagwarden(&["restore", "team/svc:old", "--output", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["tag"].as_str(), v["digest"].as_str()), (Some("old"), Some(before["old"].as_str())), "{v}");
    assert_eq!(snapshot(&seed, repo).await, before);
    assert_eq!(assert_fully_fetchable(&seed, repo, "old").await, before["old"]);

    for (args, needles) in [
        (&["restore", "team/svc"][..], &["expected REPOSITORY:TAG"][..]),
        (&["restore", "Team/svc:old"], &["not a valid repository name"]),
        (&["restore", "team/svc:new"], &["no deletion of this tag", "tagwarden audit --repository team/svc"]),
        (&["restore", "team/svc:old", "--as", "new"], &["team/svc:new exists", "--as NEWTAG"]),
    ] {
        let (code, out, err) = tagwarden(args);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(err.lines().filter(|l| l.starts_with("error: ")).count() == 1, "{args:?}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
        }
    }
    assert_eq!(snapshot(&seed, repo).await, before, "failed restores change nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_cannot_be_read_first_is_not_deleted_and_the_next_pass_keeps_and_deletes_it() {
    let reg = registry().await;
    let seed = reg.client();
    let repo = "group/keep";
    for (tag, age) in [("old-1", 30), ("old-2", 20), ("new", 1)] {
        seed.push_image(repo, tag, Some(&ago(days(age)))).await.unwrap();
    }
    let before = snapshot(&seed, repo).await;
    let proxy = tagwarden_testbed::FaultProxy::start(reg.url()).await.unwrap();
    let store = Store::in_memory().unwrap();
    let ctx = context(crate::pass::client_with(proxy.url(), &store, |c| c.max_retries = 0), &store);
    let policy = gitlab(json!({"name_regex_delete": "old-.*", "older_than": "7d"}));
    // Listed once (metadata cached), so the only GETs by digest are the reads before deleting.
    ctx.backend.registry().unwrap().tag_list(repo, &|_, _| {}).await.unwrap();
    proxy.inject(tagwarden_testbed::Fault::Status {
        method: Some("GET".into()),
        path_contains: "/manifests/sha256:".into(),
        status: 503,
        times: usize::MAX,
    });
    let report = run(&ctx, &policy, repo).await;
    assert!(matches!(report.status, tagwarden::pass::RepositoryStatus::Unfinished(_)), "{report:#?}");
    assert!(report.errors.iter().any(|e| e.contains("to keep it for restore")), "{report:#?}");
    assert_eq!(proxy.count("DELETE", "/manifests/"), 0, "nothing deleted without its copy");
    assert_eq!(snapshot(&seed, repo).await, before);

    proxy.clear();
    let report = run(&ctx, &policy, repo).await;
    assert!(report.status.is_success(), "{report:#?}");
    for tag in ["old-1", "old-2"] {
        assert_eq!(seed.resolve(repo, tag).await.unwrap(), None);
        let kept = store.audit_log().kept_manifest(&before[tag]).unwrap().expect("kept before the delete");
        assert_eq!(tagwarden::model::Digest::sha256_of(&kept.body).to_string(), before[tag]);
        assert_eq!(kept.media_type, "application/vnd.oci.image.manifest.v1+json");
    }
}
