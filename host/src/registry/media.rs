//! Manifest and image-config media types, and the few fields tagwarden reads from them.

use std::collections::HashMap;

use serde::Deserialize;

use crate::model::{Digest, Timestamp};

pub use crate::model::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Sent on every manifest read. Without the OCI types distribution 2.8 answers an OCI manifest with
/// `404 MANIFEST_UNKNOWN`; without the Docker v2 type it rewrites to schema 1.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The OCI annotation some builders set instead of (or as well as) the config's `created`.
const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// A descriptor inside a manifest (config, layer, or index entry).
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: Option<u64>,
    /// An artifact's type, in a referrers API answer.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    /// Where a foreign layer lives outside the registry (Windows base layers): not a blob of
    /// the repository.
    #[serde(default)]
    pub urls: Vec<String>,
}

/// The parts of an image manifest or index that tagwarden reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Index entries (present for indexes and manifest lists).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

impl Manifest {
    pub fn parse(body: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(body)
    }

    /// Whether this is an index (multi-arch) rather than an image manifest: by media type when the
    /// registry or the document names one, else by shape.
    pub fn is_index(&self, content_type: Option<&str>) -> bool {
        match content_type.or(self.media_type.as_deref()) {
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            _ => self.config.is_none() && !self.manifests.is_empty(),
        }
    }

    /// The config blob's digest, when it is an image config worth reading for `created` (artifacts
    /// such as Helm charts have other config types without it).
    pub fn image_config(&self) -> Option<Digest> {
        let config = self.config.as_ref()?;
        let readable = match config.media_type.as_deref() {
            Some(OCI_CONFIG | DOCKER_CONFIG) | None => true,
            Some(other) => other.ends_with("+json") && other.contains("image.config"),
        };
        if !readable {
            return None;
        }
        Digest::parse(&config.digest).ok()
    }

    /// Config plus layers, when every size is given.
    pub fn image_size(&self) -> Option<u64> {
        self.config.iter().chain(&self.layers).map(|d| d.size).sum()
    }

    /// `org.opencontainers.image.created`, when present and valid.
    pub fn created_annotation(&self) -> Option<Timestamp> {
        self.annotations.get(CREATED_ANNOTATION).and_then(|s| parse_created(s))
    }

    /// The digests of an index's entries (malformed ones skipped).
    pub fn children(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = self.manifests.iter().filter_map(|d| Digest::parse(&d.digest).ok()).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// What a manifest needs from its repository to be pushed: blobs (an image's config and
/// layers, foreign layers left out) and manifests (an index's entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Each blob with what it is (`config`, `layer 1 of 3`), for error messages.
    pub blobs: Vec<(Digest, String)>,
    pub manifests: Vec<Digest>,
}

/// The blobs and manifests `body` references; an error when it is not a manifest or names a
/// malformed digest.
pub fn references(body: &[u8]) -> anyhow::Result<References> {
    let m = Manifest::parse(body).map_err(|e| anyhow::anyhow!("not a manifest ({e})"))?;
    let parse = |d: &Descriptor| Digest::parse(&d.digest).map_err(|e| anyhow::anyhow!("bad digest `{}` in the manifest: {e:#}", d.digest));
    let mut out = References::default();
    if let Some(config) = &m.config {
        out.blobs.push((parse(config)?, "config".to_owned()));
    }
    let n = m.layers.len();
    for (i, layer) in m.layers.iter().enumerate() {
        if layer.urls.is_empty() {
            out.blobs.push((parse(layer)?, format!("layer {} of {n}", i + 1)));
        }
    }
    for child in &m.manifests {
        out.manifests.push(parse(child)?);
    }
    Ok(out)
}

/// The media type a manifest was served as: the `Content-Type` when it names one, else the
/// document's own `mediaType`, else an OCI image manifest (the only type that may omit both).
pub fn served_media_type(content_type: Option<&str>, body: &[u8]) -> String {
    match content_type.map(essence) {
        Some(t) if !t.is_empty() && !matches!(t, "application/json" | "application/octet-stream" | "text/plain") => t.to_owned(),
        _ => Manifest::parse(body).ok().and_then(|m| m.media_type).unwrap_or_else(|| OCI_MANIFEST.to_owned()),
    }
}

/// The `created` field of an image config, `None` when absent, empty or unparsable.
pub fn config_created(body: &[u8]) -> Option<Timestamp> {
    #[derive(Deserialize)]
    struct Config {
        created: Option<String>,
    }
    serde_json::from_slice::<Config>(body).ok()?.created.as_deref().and_then(parse_created)
}

/// Parses a `created` time; Go's zero time (`0001-01-01T00:00:00Z`), which some tools write for
/// "unknown", counts as absent.
fn parse_created(s: &str) -> Option<Timestamp> {
    if s.starts_with("0001-01-01") {
        return None;
    }
    Timestamp::parse_rfc3339(s).ok()
}

/// The media type of a `Content-Type` value, without parameters.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_manifests_yield_config_size_and_created_annotation() {
        let m = Manifest::parse(
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
                "config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:{a}","size":100}},
                "layers":[{{"mediaType":"x","digest":"sha256:{b}","size":1000}},{{"digest":"sha256:{b}","size":24}}],
                "annotations":{{"org.opencontainers.image.created":"2024-05-01T10:00:00Z"}}}}"#,
                a = "a".repeat(64),
                b = "b".repeat(64)
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(!m.is_index(Some(OCI_MANIFEST)));
        assert_eq!(m.image_config().unwrap().as_str(), format!("sha256:{}", "a".repeat(64)));
        assert_eq!(m.image_size(), Some(1124));
        assert_eq!(m.created_annotation(), Some(Timestamp::parse_rfc3339("2024-05-01T10:00:00Z").unwrap()));
    }

    #[test]
    fn indexes_are_recognised_by_media_type_or_shape() {
        let body = format!(r#"{{"manifests":[{{"digest":"sha256:{a}","size":5}},{{"digest":"bogus"}}]}}"#, a = "c".repeat(64));
        let m = Manifest::parse(body.as_bytes()).unwrap();
        assert!(m.is_index(None));
        assert!(m.is_index(Some(DOCKER_MANIFEST_LIST)));
        assert_eq!(m.children().len(), 1);
        assert_eq!(m.image_config(), None);
    }

    #[test]
    fn artifact_configs_are_not_read() {
        let body = format!(
            r#"{{"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:{a}","size":1}}}}"#,
            a = "d".repeat(64)
        );
        assert_eq!(Manifest::parse(body.as_bytes()).unwrap().image_config(), None);
    }

    #[test]
    fn config_created_is_optional() {
        assert_eq!(
            config_created(br#"{"created":"2023-01-02T03:04:05.123456789Z","architecture":"amd64"}"#).map(|t| t.to_rfc3339()),
            Some("2023-01-02T03:04:05.123456Z".to_string())
        );
        assert_eq!(config_created(br#"{"architecture":"amd64"}"#), None);
        assert_eq!(config_created(br#"{"created":null}"#), None);
        assert_eq!(config_created(br#"{"created":"0001-01-01T00:00:00Z"}"#), None);
        assert_eq!(config_created(br#"{"created":"last tuesday"}"#), None);
        assert_eq!(config_created(b"not json"), None);
    }

    #[test]
    fn content_type_parameters_are_ignored() {
        assert_eq!(essence("application/vnd.oci.image.index.v1+json; charset=utf-8"), OCI_INDEX);
    }

    // Registry answers are outside input too: whatever the bytes, reading them never
    // panics, and what is read back is what was written.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn cases() -> ProptestConfig {
            ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
        }

        proptest! {
            #![proptest_config(cases())]

            #[test]
            fn any_answer_is_read_without_panicking(body in prop::collection::vec(any::<u8>(), 0..200), text in "\\PC{0,120}") {
                for bytes in [body.as_slice(), text.as_bytes()] {
                    if let Ok(m) = Manifest::parse(bytes) {
                        let _ = (m.is_index(None), m.image_config(), m.image_size(), m.created_annotation(), m.children());
                    }
                    let _ = config_created(bytes);
                }
            }

            #[test]
            fn created_times_and_index_children_round_trip(
                us in 0i64..253_402_300_799_999_999,
                children in prop::collection::btree_set(any::<u32>(), 0..6),
            ) {
                let t = Timestamp::from_unix_micros(us);
                prop_assert_eq!(config_created(format!(r#"{{"created":"{t}"}}"#).as_bytes()), Some(t));
                let digests: Vec<Digest> = children.iter().map(|c| Digest::sha256_of(&c.to_le_bytes())).collect();
                let entries: Vec<String> = digests.iter().map(|d| format!(r#"{{"digest":"{d}","size":1}}"#)).collect();
                let m = Manifest::parse(format!(r#"{{"manifests":[{}]}}"#, entries.join(",")).as_bytes()).unwrap();
                let mut want = digests.clone();
                want.sort();
                prop_assert_eq!(m.children(), want);
            }
        }
    }
}
