//! Finding plugin files: bundled plugins by name, or any `.wasm` by path.
//!
//! Search order for a bare name `NAME`: each directory of `--plugin-dir` /
//! `TAGWARDEN_PLUGIN_DIR` (colon-separated), then `<target>/plugins/` next to the
//! running binary, where `cargo xtask build-plugins` puts the bundled plugins.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// The environment variable naming extra plugin directories.
pub const PLUGIN_DIR_ENV: &str = "TAGWARDEN_PLUGIN_DIR";

/// The environment variable naming the directory for compiled plugins (`off` turns
/// the cache off).
pub const CACHE_DIR_ENV: &str = "TAGWARDEN_CACHE_DIR";

/// Where the CLI keeps compiled plugins: `TAGWARDEN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tagwarden/compiled`, else `~/.cache/tagwarden/compiled`; `None`
/// (compile every time) when it is `off` or no home directory is known.
pub fn compile_cache_dir() -> Option<PathBuf> {
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    match from_env(CACHE_DIR_ENV) {
        Some(dir) if dir.as_os_str() == "off" => None,
        Some(dir) => Some(dir),
        None => from_env("XDG_CACHE_HOME")
            .or_else(|| from_env("HOME").map(|home| home.join(".cache")))
            .map(|cache| cache.join("tagwarden").join("compiled")),
    }
}

/// Directories searched for bundled plugins, in order.
pub fn search_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(env) = std::env::var_os(PLUGIN_DIR_ENV) {
        dirs.extend(std::env::split_paths(&env));
    }
    if let Ok(exe) = std::env::current_exe() {
        // <target>/release/tagwarden or <target>/release/deps/<test binary>
        for up in exe.ancestors().skip(1).take(3) {
            let candidate = up.join("plugins");
            if candidate.is_dir() && !dirs.contains(&candidate) {
                dirs.push(candidate);
                break;
            }
        }
    }
    dirs
}

/// Resolves `--plugin NAME|PATH.wasm` to a file.
pub fn resolve(spec: &str, extra_dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let looks_like_path = spec.ends_with(".wasm") || spec.contains('/') || spec.contains(std::path::MAIN_SEPARATOR);
    if looks_like_path {
        let path = Path::new(spec);
        if !path.is_file() {
            bail!("plugin file {spec} does not exist");
        }
        return Ok(path.to_path_buf());
    }
    let dirs = search_dirs(extra_dirs);
    for dir in &dirs {
        let candidate = dir.join(format!("{spec}.wasm"));
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let searched = if dirs.is_empty() {
        "no plugin directory exists yet".to_owned()
    } else {
        format!("searched {}", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))
    };
    bail!(
        "no plugin named `{spec}` ({searched}); build the bundled plugins with `cargo xtask build-plugins`, \
         pass a path to a .wasm file, or set {PLUGIN_DIR_ENV}"
    )
}
