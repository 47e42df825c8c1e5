//! The manifest metadata cache on PostgreSQL: one cache for every host, so a manifest one host
//! read is never fetched again by another. Rows as SQLite's (`store/metadata.rs`).

use std::collections::HashMap;

use anyhow::Context;

use super::{PgStateStore, client};
use crate::model::{Digest, Timestamp};
use crate::store::metadata::{ManifestMetadata, MetadataRow, MetadataStore};

impl MetadataStore for PgStateStore {
    fn get_many(&self, digests: &[Digest]) -> anyhow::Result<HashMap<Digest, ManifestMetadata>> {
        if digests.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<String> = digests.iter().map(|d| d.as_str().to_owned()).collect();
        let rows = self
            .run(move |pool| async move {
                let rows = client(&pool)
                    .await?
                    .query(
                        "SELECT digest, media_type, created_at, size_bytes, config_digest, children
                         FROM manifest_metadata WHERE digest = ANY($1)",
                        &[&keys],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let row = MetadataRow {
                            media_type: r.get(1),
                            created_at: r.get(2),
                            size_bytes: r.get(3),
                            config_digest: r.get(4),
                            children: r.get(5),
                        };
                        (r.get::<_, String>(0), row)
                    })
                    .collect::<Vec<_>>())
            })
            .with_context(|| self.context("reading"))?;
        let mut found = HashMap::with_capacity(rows.len());
        for (digest, row) in rows {
            let digest = Digest::parse(&digest).with_context(|| format!("{}: corrupt digest {digest:?}", self.context("reading")))?;
            let meta = row.decode(&digest).with_context(|| self.context("reading"))?;
            found.insert(digest, meta);
        }
        Ok(found)
    }

    fn put_many(&self, entries: &[(Digest, ManifestMetadata)]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // One row per digest, the last entry winning (as SQLite's `INSERT OR REPLACE` of each
        // in turn): `ON CONFLICT DO UPDATE` refuses to touch one row twice in a statement.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for (i, (digest, _)) in entries.iter().enumerate() {
            last.insert(digest.as_str(), i);
        }
        let mut c = MetadataColumns::default();
        for (i, (digest, meta)) in entries.iter().enumerate() {
            if last[digest.as_str()] != i {
                continue;
            }
            let row = MetadataRow::encode(meta);
            c.digest.push(digest.as_str().to_owned());
            c.media_type.push(row.media_type);
            c.created_at.push(row.created_at);
            c.size_bytes.push(row.size_bytes);
            c.config_digest.push(row.config_digest);
            c.children.push(row.children);
        }
        let now = Timestamp::now().unix_micros();
        self.run(move |pool| async move {
            client(&pool)
                .await?
                .execute(
                    "INSERT INTO manifest_metadata (digest, media_type, created_at, size_bytes, config_digest, children, cached_at)
                     SELECT digest, media_type, created_at, size_bytes, config_digest, children, $7
                     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[])
                       AS u(digest, media_type, created_at, size_bytes, config_digest, children)
                     ON CONFLICT (digest) DO UPDATE SET media_type = excluded.media_type, created_at = excluded.created_at,
                       size_bytes = excluded.size_bytes, config_digest = excluded.config_digest, children = excluded.children,
                       cached_at = excluded.cached_at",
                    &[&c.digest, &c.media_type, &c.created_at, &c.size_bytes, &c.config_digest, &c.children, &now],
                )
                .await?;
            Ok(())
        })
        .with_context(|| self.context("writing"))
    }

    fn len(&self) -> anyhow::Result<usize> {
        let n =
            self.run(|pool| async move {
                Ok(client(&pool).await?.query_one("SELECT count(*) FROM manifest_metadata", &[]).await?.get::<_, i64>(0))
            })
            .with_context(|| self.context("counting"))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

impl PgStateStore {
    fn context(&self, what: &str) -> String {
        format!("{what} the manifest metadata cache in {}", self.describe())
    }
}

/// A batch of cache rows, column by column: what `unnest` takes.
#[derive(Default)]
struct MetadataColumns {
    digest: Vec<String>,
    media_type: Vec<String>,
    created_at: Vec<Option<i64>>,
    size_bytes: Vec<Option<i64>>,
    config_digest: Vec<Option<String>>,
    children: Vec<Option<String>>,
}
