//! The main job, end to end: start a real registry on 127.0.0.1, seed it from the
//! recordings in `examples/recordings/`, show the plan (`tagwarden run --once --dry-run
//! --plan`), run the daemon until it is idle (`tagwarden serve --until-idle`) with
//! `examples/tagwarden.toml`, print `tagwarden status`, show what is left, and clean up.
//!
//! Run it with `cargo xtask demo` (which builds the plugins and the binary first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use tagwarden_testbed::{RegistryOptions, TestRegistry};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = manifest_dir().join("../..").canonicalize()?;
    let examples = root.join("examples");
    let tagwarden = sibling_binary("tagwarden")?;

    eprintln!("demo: starting a registry (CNCF distribution) on 127.0.0.1 …");
    let registry = TestRegistry::start(RegistryOptions::default()).await?;
    eprintln!("demo: registry at {}", registry.url());

    let repos = seed(&registry, &examples.join("recordings")).await?;

    let work = tempfile::tempdir()?;
    let config = std::fs::read_to_string(examples.join("tagwarden.toml"))?.replace("http://127.0.0.1:5000", registry.url());
    let config_path = work.path().join("tagwarden.toml");
    std::fs::write(&config_path, config)?;

    let tagwarden_step = |what: &str, args: &[&str]| -> anyhow::Result<bool> {
        eprintln!("\ndemo: {what}: `tagwarden {}`\n", args.join(" "));
        let status = Command::new(&tagwarden)
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .status()
            .with_context(|| format!("running {}", tagwarden.display()))?;
        Ok(status.success())
    };
    // The plan first (nothing deleted), then the daemon does it, then its state.
    let planned = tagwarden_step("the plan, nothing deleted", &["run", "--once", "--dry-run", "--plan"])?;
    let served = tagwarden_step("the daemon, until nothing is due", &["serve", "--until-idle"])?;
    let status = tagwarden_step("what the daemon's state says", &["status"])?;

    println!("\nWhat the registry holds now:");
    let seeder = registry.client();
    for repo in &repos {
        let tags = seeder.tags(repo).await?;
        println!("  {repo}: {} tags: {}", tags.len(), tags.join(", "));
    }
    drop(registry);
    eprintln!("\ndemo: registry stopped and its storage removed");
    if !(planned && served && status) {
        bail!("a tagwarden command failed (see above)");
    }
    Ok(())
}

/// The `tagwarden` binary built next to this one (`<target>/release/`).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!("{} not found; run `cargo xtask demo`, which builds it", path.display());
    }
    Ok(path)
}

/// Pushes one synthetic image per distinct recorded digest (tags sharing a digest in
/// the recording share one here too), with `created` shifted so the recording's
/// `recorded_at` becomes now. Returns the repositories seeded.
async fn seed(registry: &TestRegistry, dir: &Path) -> anyhow::Result<Vec<String>> {
    let seeder = registry.client();
    let now = OffsetDateTime::now_utc();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    let mut repos = Vec::new();
    for file in files {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file)?).with_context(|| format!("reading {}", file.display()))?;
        let repo = doc["repository"].as_str().context("recording without repository")?.to_owned();
        let recorded_at = OffsetDateTime::parse(doc["recorded_at"].as_str().unwrap_or_default(), &Rfc3339)?;
        let shift = now - recorded_at;
        let mut pushed: HashMap<String, String> = HashMap::new();
        let tags = doc["tags"].as_array().cloned().unwrap_or_default();
        for tag in &tags {
            let name = tag["name"].as_str().context("tag without name")?;
            let recorded_digest = tag["digest"].as_str().context("tag without digest")?.to_owned();
            if let Some(digest) = pushed.get(&recorded_digest) {
                seeder.retag(&repo, digest, name).await?;
                continue;
            }
            let created = match tag["created_at"].as_str() {
                Some(t) => Some((OffsetDateTime::parse(t, &Rfc3339)? + shift).format(&Rfc3339)?),
                None => None,
            };
            let digest = seeder.push_image(&repo, name, created.as_deref()).await?;
            pushed.insert(recorded_digest, digest);
        }
        eprintln!("demo: seeded {repo} with {} tags from {}", tags.len(), file.file_name().unwrap_or_default().to_string_lossy());
        repos.push(repo);
    }
    Ok(repos)
}

/// This crate's directory, as Cargo reports it when it runs us. The compile-time
/// value is only a fallback: a build cache shared between clones (as `.ci/run` uses)
/// can hand one clone a binary compiled in another whose path no longer exists.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
