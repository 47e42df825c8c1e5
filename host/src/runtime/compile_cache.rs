//! Compiled components on disk, so a CLI start does not recompile a plugin it has
//! compiled before.
//!
//! A cache file is named by the component's sha256 and a hash of this engine's
//! configuration and wasmtime version (`precompile_compatibility_hash`), and holds the
//! sha256 of its payload followed by the payload `Component::serialize` wrote.
//!
//! What is trusted: loading compiled code runs it natively, outside the sandbox, so a
//! cache file must be one this host wrote. The directory is the user's own (like the
//! binary itself); the payload's sha256 is checked before wasmtime sees it, so a torn or
//! damaged file is recompiled, never loaded; wasmtime itself refuses payloads from
//! another version or configuration. Every failure here falls back to compiling: the
//! cache can make loading faster, never make it fail.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The compiled form of `bytes` (whose sha256 is `sha256`), from `dir` when a valid
/// entry exists, else compiled now and stored for next time. The flag says which.
pub(super) fn load_or_compile(engine: &Engine, dir: &Path, sha256: &str, bytes: &[u8]) -> wasmtime::Result<(Component, bool)> {
    // `DefaultHasher` may hash differently under another Rust release: that only means a
    // cache miss, and wasmtime rejects a payload from another build anyway.
    let mut config = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut config);
    let path = dir.join(format!("{sha256}-{:016x}.cwasm", config.finish()));
    if let Ok(file) = std::fs::read(&path) {
        match load(engine, &file) {
            Some(component) => return Ok((component, true)),
            None => tracing::warn!(path = %path.display(), "ignoring a damaged or incompatible compiled plugin; compiling again"),
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(&component, &path) {
        tracing::warn!(path = %path.display(), "cannot cache the compiled plugin: {e:#}");
    }
    Ok((component, false))
}

fn load(engine: &Engine, file: &[u8]) -> Option<Component> {
    let (checksum, payload) = file.split_at_checked(32)?;
    if Sha256::digest(payload).as_slice() != checksum {
        return None;
    }
    // SAFETY: `payload` is byte for byte what `store` wrote from `Component::serialize`
    // (its sha256 matches the one written beside it), in the user's own cache directory;
    // wasmtime checks that it was compiled by this version with this configuration.
    unsafe { Component::deserialize(engine, payload) }.ok()
}

fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let payload = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir)?;
    // Write beside it, then rename: a reader never sees half a file.
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = Vec::with_capacity(32 + payload.len());
    file.extend_from_slice(&Sha256::digest(&payload));
    file.extend_from_slice(&payload);
    let written = std::fs::write(&tmp, &file).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}
