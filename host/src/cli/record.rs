//! `tagwarden record`: write a registry repository's tag list as a recording.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::model::Timestamp;
use crate::recording::Recording;
use crate::registry::{Credentials, RegistryClient, RegistryConfig, Secret};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The registry's base URL, e.g. https://registry.example.com
    #[arg(long, value_name = "URL")]
    registry: String,
    /// The repository to record.
    #[arg(long, value_name = "PATH", conflicts_with = "all", required_unless_present = "all")]
    repository: Option<String>,
    /// Record every repository of the catalog into the --output directory.
    #[arg(long, requires = "output")]
    all: bool,
    /// Output file (one repository; stdout when absent) or directory (--all).
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Username for basic or token auth.
    #[arg(long)]
    username: Option<String>,
    /// Environment variable holding the password.
    #[arg(long, value_name = "VAR", default_value = "TAGWARDEN_REGISTRY_PASSWORD")]
    password_env: String,
    /// File holding the password (instead of the environment).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Directory for the metadata cache (so a second recording fetches no manifests).
    #[arg(long, value_name = "DIR", default_value = ".tagwarden")]
    state_dir: PathBuf,
}

pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let shown = crate::registry::redact_userinfo(&args.registry);
    let url = url::Url::parse(&args.registry).map_err(|e| anyhow::anyhow!("--registry: `{shown}` is not a URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        bail!("--registry: pass credentials with --username and {} or --password-file, not in the URL", args.password_env);
    }
    let mut config = RegistryConfig::new(url);
    config.credentials = credentials(&args)?;
    let store = Store::open(&args.state_dir.join("tagwarden.db"))?;
    let client = RegistryClient::new(config, Some(store.metadata_cache()))?;
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    tokio.block_on(async {
        if args.all {
            let dir = args.output.as_ref().expect("clap: --all requires --output");
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let repos = client.catalog().await?;
            for (i, repo) in repos.iter().enumerate() {
                eprintln!("[{}/{}] {repo}", i + 1, repos.len());
                let Some(recording) = record(&client, repo).await? else {
                    eprintln!("  {repo} is listed in the catalog but has no tags endpoint (404); skipped");
                    continue;
                };
                recording.write(&dir.join(format!("{}.json", repo.replace('/', "__"))))?;
            }
            eprintln!("recorded {} repositories into {}", repos.len(), dir.display());
        } else {
            let repo = args.repository.as_deref().expect("clap: --repository or --all");
            let Some(recording) = record(&client, repo).await? else {
                bail!("repository `{repo}` does not exist in {shown} (404 NAME_UNKNOWN)");
            };
            match &args.output {
                Some(path) => {
                    recording.write(path)?;
                    eprintln!("recorded {} tags of {repo} into {}", recording.list.tags().len(), path.display());
                }
                None => recording.write_to(&mut std::io::stdout().lock())?,
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn record(client: &RegistryClient, repo: &str) -> anyhow::Result<Option<Recording>> {
    let recorded_at = Timestamp::now();
    let progress = |done: usize, total: usize| {
        if done == total || done.is_multiple_of(500) {
            eprintln!("  {repo}: {done}/{total} tags");
        }
    };
    Ok(client.tag_list(repo, &progress).await?.map(|list| Recording { recorded_at, list }))
}

fn credentials(args: &RecordArgs) -> anyhow::Result<Credentials> {
    let Some(username) = args.username.clone() else { return Ok(Credentials::Anonymous) };
    let password = match &args.password_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("--password-file: cannot read {}", f.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        None => std::env::var(&args.password_env).map_err(|_| {
            anyhow::anyhow!("--username is given but {} is not set; export the password there or use --password-file", args.password_env)
        })?,
    };
    Ok(Credentials::Basic { username, password: Secret::new(password) })
}
