//! Compiled components on disk, so a CLI start does not recompile a plugin it has
//! compiled before.
//!
//! A cache file is named by the component's sha256 and a hash of this engine's
//! configuration and wasmtime version (`precompile_compatibility_hash`), and holds the
//! sha256 of its payload followed by the payload `Component::serialize` wrote. The baseline
//! and optimizing engines hash differently, so each tier's code has its own entry.
//!
//! What is trusted: loading compiled code runs it natively, outside the sandbox, so a
//! cache file must be one this host wrote. The directory is the user's own (like the
//! binary itself); the payload's sha256 is checked before wasmtime sees it, so a torn or
//! damaged file is recompiled, never loaded; wasmtime itself refuses payloads from
//! another version or configuration. Every failure here falls back to compiling: the
//! cache can make loading faster, never make it fail.
//!
//! The cache stays bounded: a hit sets the entry's modification time (its last use), and
//! every new entry prunes the least recently used ones beyond [`MAX_ENTRIES`] or
//! [`MAX_BYTES`], plus temporary files that a killed writer left behind.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Entries kept: one per plugin file and tagwarden build, so this covers many versions.
const MAX_ENTRIES: usize = 64;
/// Bytes kept (a bundled plugin compiles to 1-3 MB).
const MAX_BYTES: u64 = 256 << 20;
/// A temporary file this old belongs to a writer that died (a write takes milliseconds).
const STALE_TMP: Duration = Duration::from_secs(3600);

/// The compiled component whose sha256 is `sha256`, from `dir`, if a valid entry for
/// `engine` exists there.
pub(super) fn load(engine: &Engine, dir: &Path, sha256: &str) -> Option<Component> {
    let path = entry(engine, dir, sha256);
    let file = std::fs::read(&path).ok()?;
    match deserialize(engine, &file) {
        Some(component) => {
            mark_used(&path);
            Some(component)
        }
        None => {
            tracing::warn!(path = %path.display(), "ignoring a damaged or incompatible compiled plugin; compiling again");
            None
        }
    }
}

/// Stores `component` (compiled by `engine` from bytes whose sha256 is `sha256`) in `dir`
/// for next time. A failure is logged: the cache is only ever a shortcut.
pub(super) fn insert(engine: &Engine, dir: &Path, sha256: &str, component: &Component) {
    let path = entry(engine, dir, sha256);
    match store(component, &path) {
        Ok(()) => prune(dir, &path, MAX_ENTRIES, MAX_BYTES),
        Err(e) => tracing::warn!(path = %path.display(), "cannot cache the compiled plugin: {e:#}"),
    }
}

/// The entry for `sha256` compiled by `engine`.
fn entry(engine: &Engine, dir: &Path, sha256: &str) -> PathBuf {
    // `DefaultHasher` may hash differently under another Rust release: that only means a
    // cache miss, and wasmtime rejects a payload from another build anyway.
    let mut config = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut config);
    dir.join(format!("{sha256}-{:016x}.cwasm", config.finish()))
}

/// Records a use of `path` as its modification time, which [`prune`] orders by.
fn mark_used(path: &Path) {
    let touched = std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!(path = %path.display(), "cannot mark the compiled plugin as used: {e}");
    }
}

/// Removes the least recently used entries of `dir` beyond `max_entries` or `max_bytes`
/// (never `keep`, the entry just written), and stale temporary files. Errors are logged:
/// a cache that could not be pruned still works.
fn prune(dir: &Path, keep: &Path, max_entries: usize, max_bytes: u64) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for entry in listing.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            if now.duration_since(used).is_ok_and(|age| age > STALE_TMP) {
                remove(&path);
            }
        } else if name.ends_with(".cwasm") && meta.is_file() && path != keep {
            entries.push((used, meta.len(), path));
        }
    }
    // Newest first; the entry just written counts against the limits first.
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut bytes = std::fs::metadata(keep).map_or(0, |m| m.len());
    let mut count = 1;
    for (_, len, path) in entries {
        count += 1;
        bytes += len;
        if count > max_entries || bytes > max_bytes {
            remove(&path);
        }
    }
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "pruned from the compile cache"),
        // Another process may have pruned it first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "cannot prune the compile cache: {e}"),
    }
}

fn deserialize(engine: &Engine, file: &[u8]) -> Option<Component> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates `name` in `dir` with `len` bytes, last used `age_s` seconds ago.
    fn file(dir: &Path, name: &str, len: usize, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s)).unwrap();
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn prune_keeps_the_most_recently_used_entries_within_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, age) in [("a.cwasm", 50), ("b.cwasm", 40), ("c.cwasm", 30), ("d.cwasm", 20)] {
            file(d, name, 10, age);
        }
        // The entry just written is kept even though it is the oldest file here.
        let keep = file(d, "new.cwasm", 10, 100);
        file(d, "notes.txt", 10, 1000);
        prune(d, &keep, 3, u64::MAX);
        assert_eq!(names(d), ["c.cwasm", "d.cwasm", "new.cwasm", "notes.txt"]);
    }

    #[test]
    fn prune_keeps_the_most_recently_used_entries_within_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        file(d, "old.cwasm", 60, 30);
        file(d, "recent.cwasm", 30, 10);
        let keep = file(d, "new.cwasm", 50, 0);
        prune(d, &keep, 100, 100);
        assert_eq!(names(d), ["new.cwasm", "recent.cwasm"]);
    }

    #[test]
    fn prune_removes_temporary_files_only_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        file(d, ".x.cwasm.1.tmp", 10, 2 * 3600);
        file(d, ".y.cwasm.2.tmp", 10, 5);
        let keep = file(d, "new.cwasm", 10, 0);
        prune(d, &keep, 100, u64::MAX);
        assert_eq!(names(d), [".y.cwasm.2.tmp", "new.cwasm"]);
    }

    #[test]
    fn a_use_moves_an_entry_to_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old = file(d, "old.cwasm", 10, 50);
        file(d, "mid.cwasm", 10, 40);
        mark_used(&old);
        let keep = file(d, "new.cwasm", 10, 0);
        prune(d, &keep, 2, u64::MAX);
        assert_eq!(names(d), ["new.cwasm", "old.cwasm"]);
    }
}
