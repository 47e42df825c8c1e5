//! Project automation: `cargo xtask <command>`.
//!
//! - `setup`          install what a fresh machine lacks (wasm32-wasip2 target, docker-registry, chromium, chromium-driver)
//! - `build-plugins`  build every plugin component and copy it to `<target>/plugins/<name>.wasm`
//! - `test`           setup + build-plugins + the whole test suite
//! - `demo`           setup + build-plugins + the main job against a local registry
//! - `bench`          setup + build-plugins + the benchmarks (figures for docs/benchmarks.md)
//! - `fuzz`           build-plugins + a mutation campaign over every input parser
//!   (`-- --seconds N --seed S`; 60 s by default; docs/benchmarks.md)
//!
//! Everything runs in the release profile: one build of wasmtime serves tests,
//! benchmarks and the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Plugin crates built for wasm32-wasip2: (crate name, kind of artifact).
const PLUGINS: &[&str] = &[
    "gitlab-retention",
    "ecr-lifecycle",
    "harbor-retention",
    "gar-cleanup",
    "acr-purge",
    "semver-lines",
    "exponential-backoff",
    "stale-timeout",
    "hostile-retention",
    "hostile-backoff",
    "hostile-stale",
    "wrong-world",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("build-plugins") => build_plugins(),
        Some("test") => setup().and_then(|_| build_plugins()).and_then(|_| test(&args[1..])),
        Some("demo") => setup().and_then(|_| build_plugins()).and_then(|_| demo(&args[1..])),
        Some("bench") => setup().and_then(|_| build_plugins()).and_then(|_| bench(&args[1..])),
        Some("fuzz") => build_plugins().and_then(|_| fuzz(&args[1..])),
        _ => {
            eprintln!("usage: cargo xtask <setup|build-plugins|test|demo|bench|fuzz> [args]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn workspace_root() -> PathBuf {
    manifest_dir().parent().expect("xtask lives in the workspace").to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("xtask: running {:?}", cmd);
    let status = cmd.status().map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() { Ok(()) } else { Err(format!("{:?} failed with {status}", cmd.get_program())) }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Installs the wasm target and the registry used by tests and the demo, if missing.
fn setup() -> Result {
    let installed =
        Command::new("rustup").args(["target", "list", "--installed"]).output().map_err(|e| format!("cannot run rustup: {e}"))?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    // Debian packages the tests need: the registry, headless Chromium with its WebDriver
    // for the status page's browser test (tests/integration/browser.rs), and PostgreSQL's
    // server binaries for the state store's throwaway clusters (tests/testbed/src/postgres.rs).
    let mut missing: Vec<&str> =
        [("/usr/bin/docker-registry", "docker-registry"), ("/usr/bin/chromium", "chromium"), ("/usr/bin/chromedriver", "chromium-driver")]
            .iter()
            .filter(|(path, _)| !Path::new(path).exists())
            .map(|(_, package)| *package)
            .collect();
    let has_postgres = std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| versions.filter_map(|v| v.ok()).any(|v| v.path().join("bin/initdb").is_file()))
        .unwrap_or(false);
    if !has_postgres {
        missing.push("postgresql");
    }
    if !missing.is_empty() {
        let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
        let apt = |args: &[&str]| {
            let mut c = Command::new(sudo.first().copied().unwrap_or("apt-get"));
            if !sudo.is_empty() {
                c.arg("apt-get");
            }
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        run(&mut apt(&["update"]))?;
        let mut install = vec!["install", "-y", "--no-install-recommends"];
        install.extend(&missing);
        run(&mut apt(&install))?;
        // These packages start system services (the registry on :5000, PostgreSQL on :5432);
        // tests run their own.
        for service in ["docker-registry", "postgresql"].iter().filter(|s| missing.contains(s)) {
            let _ = Command::new("systemctl").args(["disable", "--now", service]).status();
        }
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// The Cargo profile plugins are built with (see the workspace `Cargo.toml`).
const PLUGIN_PROFILE: &str = "plugin";

/// Builds every plugin as a component and copies it to `<target>/plugins/<name>.wasm`,
/// where `tagwarden` finds bundled plugins by name.
fn build_plugins() -> Result {
    let mut build = cargo();
    build.args(["build", "--profile", PLUGIN_PROFILE, "--target", "wasm32-wasip2"]);
    for p in PLUGINS {
        build.args(["-p", p]);
    }
    run(&mut build)?;
    let out = target_dir().join("plugins");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    for p in PLUGINS {
        // Libraries' artifacts use underscores, binaries keep the package name.
        let dir = target_dir().join("wasm32-wasip2").join(PLUGIN_PROFILE);
        let built = [dir.join(format!("{}.wasm", p.replace('-', "_"))), dir.join(format!("{p}.wasm"))]
            .into_iter()
            .find(|f| f.is_file())
            .ok_or_else(|| format!("cargo built no {p}.wasm in {}", dir.display()))?;
        let dest = out.join(format!("{p}.wasm"));
        std::fs::copy(&built, &dest).map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), dest.display()))?;
    }
    eprintln!("xtask: plugins in {}", out.display());
    Ok(())
}

fn test(extra: &[String]) -> Result {
    run(cargo().args(["test", "--release", "--workspace"]).args(extra))?;
    plugin_template()
}

/// `examples/plugin-template/` (what `tagwarden plugins new` writes) as its author would use
/// it: native tests, the Wasm build with its own release profile, then its golden cases
/// through the Wasm runtime with `tagwarden plugins test`.
fn plugin_template() -> Result {
    let dir = workspace_root().join("examples/plugin-template");
    let manifest = dir.join("Cargo.toml");
    // Outside the workspace, a crate would build in its own `target/`: share ours instead.
    let cargo = || {
        let mut c = cargo();
        c.env("CARGO_TARGET_DIR", target_dir());
        c
    };
    run(cargo().args(["test", "--release", "--locked", "--manifest-path"]).arg(&manifest))?;
    run(cargo().args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"]).arg(&manifest))?;
    let wasm = target_dir().join("wasm32-wasip2/release/plugin_template.wasm");
    run(tagwarden().args(["plugins", "test"]).arg(dir.join("golden")).arg("--plugin").arg(wasm))?;
    // The other kinds `plugins new` writes, from the binary, built and checked the same way.
    for kind in ["backoff", "stale"] {
        let name = format!("template-{kind}");
        let out = target_dir().join("plugin-template-kinds").join(&name);
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(|e| format!("cannot remove {}: {e}", out.display()))?;
        }
        let sdk = workspace_root().join("plugins/sdk");
        run(tagwarden().args(["plugins", "new", &name, "--kind", kind, "--dir"]).arg(&out).arg("--sdk-path").arg(sdk))?;
        let manifest = out.join("Cargo.toml");
        run(cargo().args(["test", "--release", "--locked", "--manifest-path"]).arg(&manifest))?;
        run(cargo().args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"]).arg(&manifest))?;
        let wasm = target_dir().join(format!("wasm32-wasip2/release/{}.wasm", name.replace('-', "_")));
        run(tagwarden().args(["plugins", "validate"]).arg(wasm))?;
    }
    Ok(())
}

/// The `tagwarden` binary, through Cargo (built in release, like the tests).
fn tagwarden() -> Command {
    let mut c = cargo();
    c.args(["run", "--quiet", "--release", "-p", "tagwarden", "--bin", "tagwarden", "--"]);
    c
}

fn bench(extra: &[String]) -> Result {
    run(cargo().args(["bench", "-p", "tagwarden"]).args(extra))
}

/// The mutation campaign (`host/benches/fuzz.rs`); arguments after `--` go to it.
fn fuzz(extra: &[String]) -> Result {
    let extra: Vec<&String> = extra.iter().filter(|a| *a != "--").collect();
    run(cargo().args(["bench", "-p", "tagwarden", "--bench", "fuzz", "--"]).args(extra))
}

/// The main job: a cleanup pass against a local registry seeded from `examples/`.
fn demo(extra: &[String]) -> Result {
    run(cargo().args(["build", "--release", "-p", "tagwarden", "--bin", "tagwarden"]))?;
    run(cargo().args(["run", "--quiet", "--release", "-p", "tagwarden-testbed", "--bin", "tagwarden-demo", "--"]).args(extra))
}

/// This crate's directory, as Cargo reports it when it runs us. The compile-time
/// value is only a fallback: a build cache shared between clones (as `.ci/run` uses)
/// can hand one clone a binary compiled in another whose path no longer exists.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
