//! The `manifest_metadata` table: what the registry said about a manifest digest's content.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::model::{Digest, Timestamp};

/// What a manifest's content says about the image, as the registry module derives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestMetadata {
    /// The manifest's media type (OCI or Docker, image or index).
    pub media_type: String,
    /// The image config's `created`; for an index the newest child's. `None` when the image does not
    /// say (cached as such: asking again gives the same answer).
    pub created_at: Option<Timestamp>,
    /// Config plus layers; for an index the sum over its children.
    pub size_bytes: Option<u64>,
    /// The config blob, for image manifests.
    pub config_digest: Option<Digest>,
    /// For an image index: the manifests it references, sorted, without duplicates. Empty otherwise.
    pub children: Vec<Digest>,
}

/// Where the metadata cache lives: the local SQLite file, or the PostgreSQL database several
/// hosts share (`[state] url`), so a manifest one host read is never fetched again by another.
/// Reached through [`MetadataCache`].
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// The cached entries among `digests` (missing ones are simply absent), read at once.
    fn get_many(&self, digests: &[Digest]) -> anyhow::Result<HashMap<Digest, ManifestMetadata>>;

    /// Stores `entries` in one transaction (replacing any entry for the same digest).
    fn put_many(&self, entries: &[(Digest, ManifestMetadata)]) -> anyhow::Result<()>;

    /// How many digests are cached.
    fn len(&self) -> anyhow::Result<usize>;

    /// Whether nothing is cached.
    fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Manifest metadata keyed by digest, wherever it lives; cheap to clone, shareable between tasks.
#[derive(Clone, Debug)]
pub struct MetadataCache(Arc<dyn MetadataStore>);

impl std::ops::Deref for MetadataCache {
    type Target = dyn MetadataStore;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl MetadataCache {
    pub(super) fn new(store: Arc<dyn MetadataStore>) -> Self {
        MetadataCache(store)
    }

    /// Opens (or creates) the database at `path` and returns its metadata table.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Store::open(path)?.metadata_cache())
    }

    /// A cache in a private in-memory database.
    pub fn in_memory() -> anyhow::Result<Self> {
        Ok(Store::in_memory()?.metadata_cache())
    }

    /// The entry for `digest`, if cached.
    pub fn get(&self, digest: &Digest) -> anyhow::Result<Option<ManifestMetadata>> {
        Ok(self.0.get_many(std::slice::from_ref(digest))?.remove(digest))
    }
}

/// The metadata cache in the local SQLite file.
#[derive(Clone, Debug)]
pub(super) struct SqliteMetadata {
    pub(super) store: Store,
}

impl MetadataStore for SqliteMetadata {
    fn get_many(&self, digests: &[Digest]) -> anyhow::Result<HashMap<Digest, ManifestMetadata>> {
        let mut found = HashMap::with_capacity(digests.len());
        if digests.is_empty() {
            return Ok(found);
        }
        let mut conn = self.store.lock();
        let tx = conn.transaction().with_context(|| self.context("reading"))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT media_type, created_at, size_bytes, config_digest, children FROM manifest_metadata WHERE digest = ?1",
                )
                .with_context(|| self.context("reading"))?;
            for digest in digests {
                let row = stmt
                    .query_row([digest.as_str()], |row| {
                        Ok(MetadataRow {
                            media_type: row.get(0)?,
                            created_at: row.get(1)?,
                            size_bytes: row.get(2)?,
                            config_digest: row.get(3)?,
                            children: row.get(4)?,
                        })
                    })
                    .optional()
                    .with_context(|| self.context("reading"))?;
                let Some(row) = row else { continue };
                let meta = row.decode(digest).with_context(|| self.context("reading"))?;
                found.insert(digest.clone(), meta);
            }
        }
        tx.commit().with_context(|| self.context("reading"))?;
        Ok(found)
    }

    fn put_many(&self, entries: &[(Digest, ManifestMetadata)]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now().unix_micros();
        let mut conn = self.store.lock();
        let tx = conn.transaction().with_context(|| self.context("writing"))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO manifest_metadata
                     (digest, media_type, created_at, size_bytes, config_digest, children, cached_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .with_context(|| self.context("writing"))?;
            for (digest, meta) in entries {
                let row = MetadataRow::encode(meta);
                stmt.execute(params![
                    digest.as_str(),
                    row.media_type,
                    row.created_at,
                    row.size_bytes,
                    row.config_digest,
                    row.children,
                    now,
                ])
                .with_context(|| self.context("writing"))?;
            }
        }
        tx.commit().with_context(|| self.context("writing"))?;
        Ok(())
    }

    fn len(&self) -> anyhow::Result<usize> {
        let n: i64 = self
            .store
            .lock()
            .query_row("SELECT count(*) FROM manifest_metadata", [], |r| r.get(0))
            .with_context(|| self.context("counting"))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// A cache row's columns, as both databases hold them: times in microseconds since the
/// epoch, an index's children separated by spaces (`NULL` for an image manifest).
pub(super) struct MetadataRow {
    pub media_type: String,
    pub created_at: Option<i64>,
    pub size_bytes: Option<i64>,
    pub config_digest: Option<String>,
    pub children: Option<String>,
}

impl MetadataRow {
    pub fn encode(meta: &ManifestMetadata) -> MetadataRow {
        MetadataRow {
            media_type: meta.media_type.clone(),
            created_at: meta.created_at.map(Timestamp::unix_micros),
            size_bytes: meta.size_bytes.and_then(|s| i64::try_from(s).ok()),
            config_digest: meta.config_digest.as_ref().map(|d| d.as_str().to_owned()),
            children: (!meta.children.is_empty()).then(|| meta.children.iter().map(Digest::as_str).collect::<Vec<_>>().join(" ")),
        }
    }

    /// The entry of `digest`; an error names what is corrupt.
    pub fn decode(self, digest: &Digest) -> anyhow::Result<ManifestMetadata> {
        let config_digest =
            self.config_digest.map(|c| Digest::parse(&c)).transpose().with_context(|| format!("corrupt config digest for {digest}"))?;
        let children = self
            .children
            .as_deref()
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(Digest::parse)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("corrupt index children for {digest}"))?;
        Ok(ManifestMetadata {
            media_type: self.media_type,
            created_at: self.created_at.map(Timestamp::from_unix_micros),
            size_bytes: self.size_bytes.and_then(|s| u64::try_from(s).ok()),
            config_digest,
            children,
        })
    }
}

impl SqliteMetadata {
    fn context(&self, what: &str) -> String {
        format!("{what} the manifest metadata cache in {}", self.store.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn meta(created: Option<i64>) -> ManifestMetadata {
        ManifestMetadata {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            created_at: created.map(Timestamp::from_unix_micros),
            size_bytes: Some(1234),
            config_digest: Some(digest(9)),
            children: Vec::new(),
        }
    }

    #[test]
    fn index_children_round_trip() {
        let cache = MetadataCache::in_memory().unwrap();
        let index = ManifestMetadata {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            config_digest: None,
            children: vec![digest(3), digest(5)],
            ..meta(Some(7))
        };
        cache.put_many(&[(digest(1), index.clone())]).unwrap();
        assert_eq!(cache.get(&digest(1)).unwrap(), Some(index));
    }

    #[test]
    fn put_many_then_get_many_round_trips_including_unknown_created() {
        let cache = MetadataCache::in_memory().unwrap();
        assert!(cache.is_empty().unwrap());
        let entries = vec![(digest(1), meta(Some(1_700_000_000_123_456))), (digest(2), meta(None))];
        cache.put_many(&entries).unwrap();
        let got = cache.get_many(&[digest(1), digest(2), digest(3)]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[&digest(1)], entries[0].1);
        assert_eq!(got[&digest(2)], entries[1].1, "\"created unknown\" is cached too");
        assert_eq!(cache.get(&digest(3)).unwrap(), None);
        assert_eq!(cache.len().unwrap(), 2);
    }

    #[test]
    fn entries_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/tagwarden.db");
        MetadataCache::open(&path).unwrap().put_many(&[(digest(7), meta(Some(42)))]).unwrap();
        let reopened = MetadataCache::open(&path).unwrap();
        assert_eq!(reopened.get(&digest(7)).unwrap(), Some(meta(Some(42))));
    }

    #[test]
    fn clones_share_one_database() {
        let cache = MetadataCache::in_memory().unwrap();
        let other = cache.clone();
        std::thread::spawn(move || other.put_many(&[(digest(4), meta(None))]).unwrap()).join().unwrap();
        assert!(cache.get(&digest(4)).unwrap().is_some());
    }
}
