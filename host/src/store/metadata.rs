//! The `manifest_metadata` table: what the registry said about a manifest digest's content.

use std::collections::HashMap;
use std::path::Path;

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

/// Manifest metadata keyed by digest; cheap to clone, shareable between tasks.
#[derive(Clone, Debug)]
pub struct MetadataCache {
    store: Store,
}

impl MetadataCache {
    pub(super) fn new(store: Store) -> Self {
        MetadataCache { store }
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
        Ok(self.get_many(std::slice::from_ref(digest))?.remove(digest))
    }

    /// The cached entries among `digests` (missing ones are simply absent), read in one transaction.
    pub fn get_many(&self, digests: &[Digest]) -> anyhow::Result<HashMap<Digest, ManifestMetadata>> {
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
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, Option<i64>>(1)?,
                            row.get::<_, Option<i64>>(2)?,
                            row.get::<_, Option<String>>(3)?,
                            row.get::<_, Option<String>>(4)?,
                        ))
                    })
                    .optional()
                    .with_context(|| self.context("reading"))?;
                let Some((media_type, created, size, config, children)) = row else {
                    continue;
                };
                let config_digest = config
                    .map(|c| Digest::parse(&c))
                    .transpose()
                    .with_context(|| format!("{}: corrupt config digest for {digest}", self.context("reading")))?;
                let children = children
                    .as_deref()
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .map(Digest::parse)
                    .collect::<anyhow::Result<Vec<_>>>()
                    .with_context(|| format!("{}: corrupt index children for {digest}", self.context("reading")))?;
                let meta = ManifestMetadata {
                    media_type,
                    created_at: created.map(Timestamp::from_unix_micros),
                    size_bytes: size.and_then(|s| u64::try_from(s).ok()),
                    config_digest,
                    children,
                };
                found.insert(digest.clone(), meta);
            }
        }
        tx.commit().with_context(|| self.context("reading"))?;
        Ok(found)
    }

    /// Stores `entries` in one transaction (replacing any entry for the same digest).
    pub fn put_many(&self, entries: &[(Digest, ManifestMetadata)]) -> anyhow::Result<()> {
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
                stmt.execute(params![
                    digest.as_str(),
                    meta.media_type,
                    meta.created_at.map(Timestamp::unix_micros),
                    meta.size_bytes.and_then(|s| i64::try_from(s).ok()),
                    meta.config_digest.as_ref().map(Digest::as_str),
                    (!meta.children.is_empty()).then(|| meta.children.iter().map(Digest::as_str).collect::<Vec<_>>().join(" ")),
                    now,
                ])
                .with_context(|| self.context("writing"))?;
            }
        }
        tx.commit().with_context(|| self.context("writing"))?;
        Ok(())
    }

    /// How many digests are cached.
    pub fn len(&self) -> anyhow::Result<usize> {
        let n: i64 = self
            .store
            .lock()
            .query_row("SELECT count(*) FROM manifest_metadata", [], |r| r.get(0))
            .with_context(|| self.context("counting"))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }

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
