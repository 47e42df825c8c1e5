//! A throwaway PostgreSQL cluster per test or benchmark: `initdb` in a temporary directory, one
//! server on a free loopback port, reached over TCP with a password; stopped and removed on drop
//! (also when the test panics).
//!
//! These machines run everything as root, which `initdb` and `postgres` refuse: as root the
//! binaries run as the `postgres` user Debian's package creates (`runuser -u postgres --`), on a
//! data directory owned by it. The binaries are the newest `/usr/lib/postgresql/*/bin`
//! (`TAGWARDEN_POSTGRES_BIN` overrides the directory); when there are none, Debian's `postgresql`
//! package is installed first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, bail};

/// Environment variable naming a directory holding `initdb`, `pg_ctl` and `psql`.
pub const POSTGRES_BIN_ENV: &str = "TAGWARDEN_POSTGRES_BIN";
/// The superuser the cluster is created with.
pub const POSTGRES_USER: &str = "postgres";

/// How a cluster trades durability for speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `fsync = off`: what tests want (a crash of the machine loses nothing they need).
    #[default]
    Off,
    /// PostgreSQL's defaults (`fsync`, `synchronous_commit`): what benchmarks measure.
    Full,
}

/// A running throwaway cluster. Dropping it stops the server (`pg_ctl stop -m immediate`) and
/// removes its directory.
pub struct PostgresCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    durability: Durability,
    running: bool,
}

impl std::fmt::Debug for PostgresCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of debug output.
        f.debug_struct("PostgresCluster").field("dir", &self.dir.path()).field("port", &self.port).finish_non_exhaustive()
    }
}

impl PostgresCluster {
    /// Initialises and starts a cluster for tests ([`Durability::Off`]).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(Durability::Off)
    }

    /// Initialises and starts a cluster; returns once it accepts connections.
    pub fn start_with(durability: Durability) -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let dir = tempfile::Builder::new().prefix("tagwarden-pg-").tempdir().context("creating the cluster's directory")?;
        // The server runs as `postgres`: it must reach its directory through ours.
        set_mode(dir.path(), 0o755)?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        set_mode(&data, 0o700)?;
        let password = crate::util::unique_id();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).context("writing the password file")?;
        if let Some((uid, gid)) = server_user()? {
            for p in [&data, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).with_context(|| format!("giving {} to postgres", p.display()))?;
            }
        }
        let mut initdb = server_command(&bin.join("initdb"))?;
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", POSTGRES_USER, "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale"])
            .arg(format!("--pwfile={}", pwfile.display()));
        if durability == Durability::Off {
            initdb.arg("--no-sync");
        }
        checked(&mut initdb, "initdb")?;
        std::fs::remove_file(&pwfile).ok();
        let mut cluster = PostgresCluster { dir, bin, port: 0, password, durability, running: false };
        // A free port can be taken between our probe and the server's bind: try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.running = true;
                    return Ok(cluster);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("data").join("server.log")
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.data_dir().display()
        );
        if self.durability == Durability::Off {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let mut cmd = server_command(&self.bin.join("pg_ctl"))?;
        cmd.arg("-D").arg(self.data_dir()).arg("-l").arg(self.log_path()).args(["-w", "-t", "60", "-o", &options, "start"]);
        checked(&mut cmd, "pg_ctl start").map(|_| ()).with_context(|| format!("server log:\n{}", self.log_tail()))
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (random per cluster).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A URL for database `postgres` without the password (give it separately, as operators do).
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// A URL for `database` without the password.
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://{POSTGRES_USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database named `name` and returns its URL (without the password), so
    /// tests sharing one cluster each get a schema of their own.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("database name `{name}`: use letters, digits and `_`");
        }
        self.psql(&format!("CREATE DATABASE {name}"))?;
        Ok(self.database_url(name))
    }

    /// Runs one SQL command in database `postgres` with `psql` over TCP as the superuser;
    /// returns its output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_in("postgres", sql)
    }

    /// Runs one SQL command in `database` (see [`PostgresCluster::psql`]).
    pub fn psql_in(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = checked(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", POSTGRES_USER, "-d", database])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-c")
                .arg(sql)
                .env("PGPASSWORD", &self.password),
            "psql",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (fast shutdown: sessions are ended), keeping its data.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let mut cmd = server_command(&self.bin.join("pg_ctl"))?;
        cmd.arg("-D").arg(self.data_dir()).args(["-m", "fast", "-w", "-t", "60", "stop"]);
        checked(&mut cmd, "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.running {
            self.stop()?;
        }
        self.pg_ctl_start()?;
        self.running = true;
        Ok(())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if self.running
            && let Ok(mut cmd) = server_command(&self.bin.join("pg_ctl"))
        {
            let _ = cmd
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // The TempDir removes the directory (root may remove postgres's files).
    }
}

/// The directory holding PostgreSQL's server binaries, installing Debian's `postgresql` package
/// when none is there.
pub fn postgres_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(POSTGRES_BIN_ENV) {
        let p = PathBuf::from(p);
        if !p.join("initdb").is_file() {
            bail!("{POSTGRES_BIN_ENV}={} has no initdb", p.display());
        }
        return Ok(p);
    }
    if let Some(found) = newest_installed() {
        return Ok(found);
    }
    // Tests start clusters in parallel, in several processes: one install at a time.
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let lock_path = std::env::temp_dir().join("tagwarden-testbed-apt.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening the install lock {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    if let Some(found) = newest_installed() {
        return Ok(found); // another test or process installed it while we waited
    }
    crate::apt_install("postgresql").context(
        "installing PostgreSQL (apt-get install -y postgresql); install it by hand or set TAGWARDEN_POSTGRES_BIN to its bin directory",
    )?;
    newest_installed().context("apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb exists")
}

fn newest_installed() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `(uid, gid)` of the `postgres` user when we are root (the server refuses to run as root).
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    if !is_root() {
        return Ok(None);
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = checked(Command::new("id").args([flag, POSTGRES_USER]), "id")
            .context("finding the `postgres` user (created by Debian's postgresql package)")?;
        String::from_utf8_lossy(&out.stdout).trim().parse().context("reading the output of id")
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A command for a server binary, run as `postgres` when we are root.
fn server_command(program: &Path) -> anyhow::Result<Command> {
    Ok(if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", POSTGRES_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    })
}

fn checked(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("setting the mode of {}", path.display()))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
