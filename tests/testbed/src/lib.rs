//! Test bed for tagwarden: runs a REAL registry (CNCF distribution 2.8, Debian's `docker-registry`)
//! per test, with optional HTTP Basic or token authentication ([`TokenServer`]), pushes fixtures with
//! a plain-HTTP [`Seeder`], and puts a fault-injecting [`FaultProxy`] in front of it on demand.
//! [`PostgresCluster`] is a throwaway PostgreSQL cluster for the state store's tests and benchmarks;
//! [`on_own_machine`] runs a process under a host name of its own, as if on another machine.
//! [`ImportServer`] is a stand-in for GitLab's repository import API, which no registry that can run
//! here implements.
//!
//! Every instance gets its own port and storage directory (on `/dev/shm` when available), so tests can
//! run in parallel; everything is stopped and removed when the values are dropped (also on panic).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tagwarden_testbed::{RegistryOptions, TestRegistry};
//! let registry = TestRegistry::start(RegistryOptions::default()).await?;
//! let seeder = registry.client();
//! let digest = seeder.push_image("team/app", "v1", Some("2024-01-01T00:00:00Z")).await?;
//! assert_eq!(seeder.resolve("team/app", "v1").await?, Some(digest));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod imports;
mod machine;
mod postgres;
mod proxy;
mod seeder;
mod token;
mod util;

use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

pub use imports::{ImportFault, ImportServer, Progress};
pub use machine::on_own_machine;
pub use postgres::{Durability, POSTGRES_BIN_ENV, POSTGRES_USER, PostgresCluster, postgres_bin};
pub use proxy::{Fault, FaultProxy, Held, HeldRequest};
pub use seeder::{ACCEPT_ALL_MANIFESTS, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, Seeder};
pub use token::{IssuedToken, TOKEN_ISSUER, TOKEN_LIFETIME_SECS, TOKEN_SERVICE, TokenServer, TokenServerOptions};

use seeder::SeederAuth;

/// Where Debian's `docker-registry` package puts the binary.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// Environment variable that overrides the registry binary (skips the apt install).
pub const REGISTRY_BINARY_ENV: &str = "TAGWARDEN_REGISTRY_BIN";
/// The htpasswd realm of registries started with [`Auth::Basic`].
pub const BASIC_REALM: &str = "tagwarden-test";
/// Header (with a per-instance value) the registry adds to every answer, so the test bed can tell its
/// own registry from another process that grabbed the same port.
const INSTANCE_HEADER: &str = "X-Tagwarden-Testbed-Instance";

/// How the test registry authenticates clients.
#[derive(Clone, Debug, Default)]
#[allow(missing_docs)] // the fields are described in each variant's documentation
pub enum Auth {
    /// Anonymous access to everything.
    #[default]
    None,
    /// HTTP Basic against an htpasswd file (bcrypt) holding this one user.
    Basic { user: String, password: String },
    /// Docker token authentication against a [`TokenServer`] the test bed starts.
    Token(TokenServerOptions),
}

/// Options for [`TestRegistry::start`]; the default is no auth with deletes enabled.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Authentication scheme.
    pub auth: Auth,
    /// `storage.delete.enabled`: when false every delete answers `405 UNSUPPORTED`.
    pub deletes_enabled: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions { auth: Auth::None, deletes_enabled: true }
    }
}

/// Returns the registry binary, installing Debian's `docker-registry` package with apt first when
/// `/usr/bin/docker-registry` is missing (concurrent installs, also across processes, are serialized
/// with a lock file). `TAGWARDEN_REGISTRY_BIN` overrides the path.
pub fn registry_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(REGISTRY_BINARY_ENV) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{REGISTRY_BINARY_ENV}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let bin = PathBuf::from(REGISTRY_BINARY);
    if bin.is_file() {
        return Ok(bin);
    }
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let lock_path = std::env::temp_dir().join("tagwarden-testbed-apt.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening the install lock {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    if bin.is_file() {
        return Ok(bin); // another test or process installed it while we waited
    }
    apt_install("docker-registry")
        .context("installing the registry (apt-get install -y docker-registry); install it by hand or set TAGWARDEN_REGISTRY_BIN")?;
    if !bin.is_file() {
        bail!("apt-get installed docker-registry but {REGISTRY_BINARY} is still missing");
    }
    Ok(bin)
}

/// Installs Debian package `package` with apt-get, keeping its init script from starting a
/// system-wide service (the registry's on :5000, PostgreSQL's on :5432): tests run their own.
fn apt_install(package: &str) -> anyhow::Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let wrote_policy = !policy.exists() && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok() && {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755)).is_ok()
    };
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running apt-get {}", args.join(" ")))?;
        if !out.status.success() {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("apt-get {} failed ({}):\n{}", args.join(" "), out.status, tail.join("\n"));
        }
        Ok(())
    };
    let result = run(&["update"]).and_then(|_| run(&["install", "-y", package]));
    if wrote_policy {
        let _ = std::fs::remove_file(policy);
    }
    if Path::new("/run/systemd/system").exists() {
        let _ = std::process::Command::new("systemctl")
            .args(["disable", "--now", package])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    result
}

/// Owns the registry process: killed on drop (SIGKILL) and reaped synchronously.
struct RegistryProcess {
    child: tokio::process::Child,
    pid: u32,
}

impl RegistryProcess {
    fn kill_and_wait(&mut self) {
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// One running `docker-registry serve` process on 127.0.0.1 with its own port, config, storage
/// directory, log file and (for [`Auth::Token`]) token server; all stopped and deleted on drop.
pub struct TestRegistry {
    // Field order matters: the process dies before the token server and the directory go away.
    process: RegistryProcess,
    url: String,
    config_path: PathBuf,
    log_path: PathBuf,
    storage_dir: PathBuf,
    binary: PathBuf,
    deletes_enabled: bool,
    seeder_auth: SeederAuth,
    credentials: Option<(String, String)>,
    token_server: Option<TokenServer>,
    dir: tempfile::TempDir,
}

fn temp_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("tagwarden-testbed-").tempdir_in(shm)
    {
        return Ok(dir);
    }
    tempfile::Builder::new().prefix("tagwarden-testbed-").tempdir().context("creating a temporary directory for the registry")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// YAML-quotes a string (JSON strings are valid YAML flow scalars).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

enum Ready {
    Up,
    PortTaken,
}

impl TestRegistry {
    /// Starts a registry (installing the binary first if needed) and waits until it answers `GET /v2/`.
    /// Errors say what failed and include the tail of the registry's log.
    pub async fn start(opts: RegistryOptions) -> anyhow::Result<TestRegistry> {
        let binary = tokio::task::spawn_blocking(registry_binary).await.context("registry_binary panicked")??;
        let dir = temp_dir()?;
        let storage_dir = dir.path().join("storage");
        std::fs::create_dir_all(&storage_dir).with_context(|| format!("creating {}", storage_dir.display()))?;
        let config_path = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        let instance = util::unique_id();

        let mut token_server = None;
        let (auth_yaml, seeder_auth, credentials) = match &opts.auth {
            Auth::None => (String::new(), SeederAuth::None, None),
            Auth::Basic { user, password } => {
                let hash = bcrypt::hash_with_result(password, 4)
                    .context("bcrypt-hashing the test password")?
                    .format_for_version(bcrypt::Version::TwoY);
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).with_context(|| format!("writing {}", htpasswd.display()))?;
                (
                    format!("auth:\n  htpasswd:\n    realm: {}\n    path: {}\n", q(BASIC_REALM), q(&htpasswd.to_string_lossy())),
                    SeederAuth::Basic { user: user.clone(), password: password.clone() },
                    Some((user.clone(), password.clone())),
                )
            }
            Auth::Token(topts) => {
                let ts = TokenServer::start(topts.clone()).await.context("starting the token server")?;
                let cert = dir.path().join("token-cert.pem");
                ts.write_cert(&cert)?;
                let (admin, admin_password) = ts.admin_credentials();
                let yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    q(ts.realm()),
                    q(ts.service()),
                    q(ts.issuer()),
                    q(&cert.to_string_lossy())
                );
                let seeder_auth = SeederAuth::Token {
                    realm: ts.realm().to_string(),
                    service: ts.service().to_string(),
                    user: admin.to_string(),
                    password: admin_password.to_string(),
                };
                token_server = Some(ts);
                (yaml, seeder_auth, Some((topts.user.clone(), topts.password.clone())))
            }
        };

        let mut last_error = None;
        for _attempt in 0..8 {
            let port = free_port()?;
            let url = format!("http://127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: {}\n  headers:\n    {INSTANCE_HEADER}: [{}]\n\
                 {auth_yaml}",
                q(&storage_dir.to_string_lossy()),
                opts.deletes_enabled,
                q(&format!("testbed-{instance}")),
                q(&instance),
            );
            std::fs::write(&config_path, &config).with_context(|| format!("writing {}", config_path.display()))?;
            let mut process = spawn_registry(&binary, &config_path, &log_path)?;
            match wait_ready(&mut process, &url, &instance, &log_path, &config_path).await? {
                Ready::Up => {
                    return Ok(TestRegistry {
                        process,
                        url,
                        config_path,
                        log_path,
                        storage_dir,
                        binary,
                        deletes_enabled: opts.deletes_enabled,
                        seeder_auth,
                        credentials,
                        token_server,
                        dir,
                    });
                }
                Ready::PortTaken => {
                    process.kill_and_wait();
                    last_error = Some(format!("port {port} was taken; registry log:\n{}", util::tail_file(&log_path, 40)));
                }
            }
        }
        Err(anyhow!("could not start the registry on a free port after 8 attempts; last: {}", last_error.unwrap_or_default()))
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The YAML config the registry runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The registry's combined stdout/stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of the registry's log (for error messages).
    pub fn log_tail(&self) -> String {
        util::tail_file(&self.log_path, 40)
    }

    /// `storage.filesystem.rootdirectory`.
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// The instance's temporary directory (config, log, storage, htpasswd, certificate), removed on drop.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// Whether `storage.delete.enabled` is on.
    pub fn deletes_enabled(&self) -> bool {
        self.deletes_enabled
    }

    /// The `(user, password)` the system under test should log in with: the Basic user, or the token
    /// server's configured (non-admin) user; `None` without auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A [`Seeder`] authenticated as admin (all scopes, including delete and catalog).
    pub fn client(&self) -> Seeder {
        Seeder::new(&self.url, self.seeder_auth.clone()).expect("building a reqwest client")
    }

    /// The token server, for registries started with [`Auth::Token`].
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// Runs `docker-registry garbage-collect` (with `--delete-untagged` when asked) on the live
    /// storage and returns its output. Fine for tests that do not write at the same time.
    pub async fn garbage_collect(&self, delete_untagged: bool) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("garbage-collect");
        if delete_untagged {
            cmd.arg("--delete-untagged");
        }
        let out = cmd
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running docker-registry garbage-collect")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("garbage-collect failed ({}):\n{text}", out.status);
        }
        Ok(text)
    }
}

/// Polls `GET /v2/` every 10 ms for up to 10 s; any answer carrying this instance's header means up.
async fn wait_ready(
    process: &mut RegistryProcess,
    url: &str,
    instance: &str,
    log_path: &Path,
    config_path: &Path,
) -> anyhow::Result<Ready> {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = format!("{url}/v2/");
    loop {
        if let Some(status) = process.child.try_wait()? {
            let tail = util::tail_file(log_path, 40);
            if tail.contains("address already in use") {
                return Ok(Ready::PortTaken);
            }
            bail!(
                "the registry exited during startup ({status}); log tail:\n{tail}\nconfig:\n{}",
                std::fs::read_to_string(config_path).unwrap_or_default()
            );
        }
        if let Ok(resp) = http.get(&probe).send().await {
            let ours = resp.headers().get(INSTANCE_HEADER).and_then(|v| v.to_str().ok()) == Some(instance);
            return Ok(if ours { Ready::Up } else { Ready::PortTaken });
        }
        if Instant::now() > deadline {
            bail!(
                "the registry did not answer GET {probe} within 10 s; log tail:\n{}\nconfig:\n{}",
                util::tail_file(log_path, 40),
                std::fs::read_to_string(config_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spawn_registry(binary: &Path, config: &Path, log_path: &Path) -> anyhow::Result<RegistryProcess> {
    let mut log = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let _ = writeln!(log, "# tagwarden-testbed: {} serve {}", binary.display(), config.display());
    let stderr = log.try_clone().context("duplicating the log file handle")?;
    let child = tokio::process::Command::new(binary)
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {} serve {}", binary.display(), config.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("the registry exited at once"))?;
    Ok(RegistryProcess { child, pid })
}
