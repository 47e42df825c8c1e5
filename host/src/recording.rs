//! Recorded tag lists (`tagwarden.recording.v1`, `.v2` and `.v3`, documented in
//! docs/recording-format.md). v2 adds `indexes`, what each image index references; v3 adds
//! `referrers`, the artifacts that follow a subject.
//!
//! A recording is one repository's tags as a registry reported them at `recorded_at`.
//! `tagwarden record` writes them, `eval` and the `recording` backend read them, and the
//! golden tests are made of them. Reading is strict: an unknown field, a bad digest or
//! a bad timestamp is an error naming the file, the position and the field.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::model::{Digest, Referrer, Tag, TagList, Timestamp, UntaggedManifest};

/// The `format` value of a recording without `indexes`.
pub const FORMAT_V1: &str = "tagwarden.recording.v1";
/// The `format` value of a recording that may carry `indexes`. Written only when the list
/// has image indexes, so that recordings older tagwardens can read stay v1.
pub const FORMAT_V2: &str = "tagwarden.recording.v2";
/// The `format` value of a recording that may carry `referrers` (and `indexes`). Written
/// only when the list has referrers.
pub const FORMAT_V3: &str = "tagwarden.recording.v3";

/// One repository's recorded tag list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// When it was recorded; golden tests evaluate "as of" this time.
    pub recorded_at: Timestamp,
    pub list: TagList,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordingFile {
    format: String,
    repository: String,
    recorded_at: Timestamp,
    tags: Vec<Tag>,
    #[serde(default)]
    untagged: Vec<UntaggedManifest>,
    /// Image index digest → the manifests it references (absent in older recordings).
    #[serde(default, deserialize_with = "map_without_duplicates")]
    indexes: BTreeMap<Digest, Vec<Digest>>,
    /// Signatures, attestations, SBOMs… and their subjects (v3).
    #[serde(default)]
    referrers: Vec<Referrer>,
}

impl Recording {
    /// Reads and validates a recording file: a regular file of at most 1 GiB, or what
    /// `TAGWARDEN_MAX_RECORDING_MIB` says ([`crate::input::recording_limit`]).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let raise = format!("set {} to a larger number of MiB to read it", crate::input::limits::RECORDING_MIB_ENV);
        let text = crate::input::read_text(path, "recording", crate::input::recording_limit()?, &raise)?;
        Self::parse(&text).with_context(|| format!("invalid recording {}", path.display()))
    }

    /// Why `text` is not a recording's JSON: `line:column`, the field path and what was
    /// expected; `None` if it parses after all.
    fn explain(text: &str) -> Option<anyhow::Error> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let position = |e: &serde_json::Error| format!("{}:{}", e.line(), e.column());
        let parsed: Result<RecordingFile, _> = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let inner = e.inner();
            let path = e.path().to_string();
            let msg = crate::input::plain_expectations(&strip_position(&inner.to_string()), "an object");
            // A syntax error has no meaningful field path (serde shows `?`).
            if path == "." || path.contains('?') {
                anyhow::anyhow!("{}: {msg}", position(inner))
            } else {
                anyhow::anyhow!("{}: at `{path}`: {msg}", position(inner))
            }
        });
        if let Err(e) = parsed {
            return Some(e);
        }
        // Anything after the object would be silently ignored otherwise.
        de.end().err().map(|e| {
            anyhow::anyhow!(
                "{}: data after the end of the recording's JSON object; a recording file holds exactly one object",
                position(&e)
            )
        })
    }

    /// Parses recording text; errors give `line:column`, the field path and what was
    /// expected. The text is one JSON object and nothing after it but whitespace.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if !text.trim_start().starts_with('{') {
            bail!(
                "not a tagwarden recording: it does not start with a JSON object; a recording looks like \
                 {{\"format\": \"{FORMAT_V1}\", \"repository\": …, \"recorded_at\": …, \"tags\": […]}} (docs/recording-format.md)"
            );
        }
        // The fast path: tracking the field path costs a quarter of the parse, and only a
        // bad file needs it, so a bad file is parsed again to explain itself.
        let file: RecordingFile = match serde_json::from_str(text) {
            Ok(file) => file,
            Err(e) => return Err(Self::explain(text).unwrap_or_else(|| anyhow::anyhow!("{}:{}: {e}", e.line(), e.column()))),
        };
        if ![FORMAT_V1, FORMAT_V2, FORMAT_V3].contains(&file.format.as_str()) {
            bail!("`format` is `{}`; this tagwarden reads `{FORMAT_V1}`, `{FORMAT_V2}` and `{FORMAT_V3}`", file.format);
        }
        if file.format == FORMAT_V1 && !file.indexes.is_empty() {
            bail!("`indexes` is a `{FORMAT_V2}` field; set `format` to `{FORMAT_V2}`");
        }
        if file.format != FORMAT_V3 && !file.referrers.is_empty() {
            bail!("`referrers` is a `{FORMAT_V3}` field; set `format` to `{FORMAT_V3}`");
        }
        if let Some((i, r)) =
            file.referrers.iter().enumerate().find(|(_, r)| r.tag.as_deref().is_some_and(|t| file.tags.iter().any(|x| x.name == t)))
        {
            bail!("`referrers[{i}].tag` `{}` is also in `tags`; a tag is one or the other", r.tag.as_deref().unwrap_or_default());
        }
        if file.repository.is_empty() {
            bail!("`repository` is empty; expected a repository path such as `group/app`");
        }
        if let Some((index, _)) = file.indexes.iter().find(|(_, children)| children.is_empty()) {
            bail!("`indexes.{index}` lists no children; expected the digests the index references, or leave the index out");
        }
        // Fallback tags (`sha256-<hex>.sig`, …) in `tags` are referrers too, whatever the
        // version: a v1 recording of a signed repository is read as the registry is now listed.
        let list = TagList::new(file.repository, file.tags, file.untagged)?
            .with_index_children(file.indexes)
            .split_referrer_tags()
            .with_referrers(file.referrers);
        Ok(Recording { recorded_at: file.recorded_at, list })
    }

    /// Writes the recording as JSON, one tag per line, atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let result = (|| -> anyhow::Result<()> {
            let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
            self.write_to(&mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.with_context(|| format!("cannot write recording {}", path.display()))
    }

    /// Writes the recording as JSON to `out`: a readable layout with one entry per line.
    pub fn write_to(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let head = serde_json::json!({
            "format": if !self.list.referrers().is_empty() {
                FORMAT_V3
            } else if !self.list.index_children().is_empty() {
                FORMAT_V2
            } else {
                FORMAT_V1
            },
            "repository": self.list.repository,
            "recorded_at": self.recorded_at,
        });
        let head = serde_json::to_string(&head)?;
        // `{..}` without its closing brace, so the lists can follow one entry per line.
        write!(out, "{},\n \"tags\": [", &head[..head.len() - 1])?;
        write_entries(out, self.list.tags())?;
        write!(out, "],\n \"untagged\": [")?;
        write_entries(out, self.list.untagged())?;
        write!(out, "]")?;
        if !self.list.index_children().is_empty() {
            write!(out, ",\n \"indexes\": {{")?;
            for (i, (index, children)) in self.list.index_children().iter().enumerate() {
                out.write_all(if i == 0 { b"\n  " } else { b",\n  " })?;
                write!(out, "{}: {}", serde_json::to_string(index)?, serde_json::to_string(children)?)?;
            }
            write!(out, "\n }}")?;
        }
        if !self.list.referrers().is_empty() {
            write!(out, ",\n \"referrers\": [")?;
            write_entries(out, self.list.referrers())?;
            write!(out, "]")?;
        }
        writeln!(out, "}}")?;
        Ok(())
    }
}

fn write_entries<T: Serialize>(out: &mut impl Write, entries: &[T]) -> anyhow::Result<()> {
    for (i, entry) in entries.iter().enumerate() {
        out.write_all(if i == 0 { b"\n  " } else { b",\n  " })?;
        serde_json::to_writer(&mut *out, entry)?;
    }
    if !entries.is_empty() {
        out.write_all(b"\n ")?;
    }
    Ok(())
}

/// A JSON object as a map, refusing a key given twice (serde would keep the last one).
fn map_without_duplicates<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + std::fmt::Display,
    V: Deserialize<'de>,
{
    struct Visitor<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de> + Ord + std::fmt::Display, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<K, V> {
        type Value = BTreeMap<K, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<K, V>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("`{k}` is given twice")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Visitor(std::marker::PhantomData))
}

/// serde_json appends " at line L column C"; the caller reports the position first.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn doc(tags: &str) -> String {
        format!(
            r#"{{"format": "tagwarden.recording.v1", "repository": "group/app", "recorded_at": "2026-11-20T12:00:00Z", "tags": {tags}}}"#
        )
    }

    #[test]
    fn minimal_recording_parses_with_optional_fields_absent() {
        let r = Recording::parse(&doc(&format!(
            r#"[{{"name": "b", "digest": "{D1}"}}, {{"name": "a", "digest": "{D1}", "created_at": null}}]"#
        )))
        .unwrap();
        assert_eq!(r.list.tags().len(), 2);
        assert_eq!(r.list.tags()[0].name, "a", "tags are sorted by name");
        assert!(r.list.untagged().is_empty());
    }

    #[test]
    fn errors_name_position_field_and_expectation() {
        let err = format!("{:#}", Recording::parse(&doc(r#"[{"name": "a", "digest": "sha256:abc"}]"#)).unwrap_err());
        assert!(err.contains("tags[0].digest"), "{err}");
        assert!(err.contains("64 lowercase hex"), "{err}");
        assert!(err.starts_with("1:"), "{err}");

        let err = format!(
            "{:#}",
            Recording::parse(&doc(&format!(r#"[{{"name": "a", "digest": "{D1}", "created_at": "last week"}}]"#))).unwrap_err()
        );
        assert!(err.contains("tags[0].created_at") && err.contains("RFC 3339"), "{err}");

        let err = format!("{:#}", Recording::parse(&doc(&format!(r#"[{{"digest": "{D1}"}}]"#))).unwrap_err());
        assert!(err.contains("missing field `name`"), "{err}");

        let err = format!("{:#}", Recording::parse(&doc("[]").replace("v1", "v9")).unwrap_err());
        assert!(
            err.contains("tagwarden.recording.v9")
                && err.contains("reads `tagwarden.recording.v1`, `tagwarden.recording.v2` and `tagwarden.recording.v3`"),
            "{err}"
        );

        let err = format!("{:#}", Recording::parse(&doc("[]").replace("\"tags\"", "\"tagz\"")).unwrap_err());
        assert!(err.contains("unknown field `tagz`"), "{err}");

        let err = format!("{:#}", Recording::parse("{\"format\": ").unwrap_err());
        assert!(err.contains("1:"), "{err}");
    }

    #[test]
    fn data_after_the_object_is_refused() {
        // Once, the `untagged` list after a stray `}` was silently dropped.
        let text = doc("[]").trim_end_matches('}').to_owned() + "}, \"untagged\": []}";
        let err = format!("{:#}", Recording::parse(&text).unwrap_err());
        assert!(err.contains("data after the end of the recording's JSON object"), "{err}");
        assert!(err.starts_with("1:"), "{err}");
        assert!(Recording::parse(&format!("{}\n\n", doc("[]"))).is_ok(), "trailing whitespace is fine");
    }

    #[test]
    fn an_index_given_twice_is_refused() {
        let text = doc(&format!(r#"[{{"name": "m", "digest": "{D1}"}}], "indexes": {{"{D1}": ["{D2}"], "{D1}": ["{D3}"]}}"#))
            .replace(FORMAT_V1, FORMAT_V2);
        let err = format!("{:#}", Recording::parse(&text).unwrap_err());
        assert!(err.contains("indexes") && err.contains(&format!("`{D1}` is given twice")), "{err}");
    }

    #[test]
    fn something_else_than_a_recording_is_named_as_such() {
        for text in ["root:x:0:0:root:/root:/bin/bash\n", "", "[1, 2]"] {
            let err = format!("{:#}", Recording::parse(text).unwrap_err());
            assert!(err.starts_with("not a tagwarden recording"), "{text:?}: {err}");
        }
        let err = format!("{:#}", Recording::parse(&doc(r#"[{"name": "a", "digest": 5}]"#)).unwrap_err());
        assert!(!err.contains("struct") && !err.contains("u64"), "{err}");
    }

    #[test]
    fn written_recordings_read_back_identically() {
        let r = Recording::parse(&doc(&format!(
            r#"[{{"name": "v1", "digest": "{D1}", "created_at": "2026-11-01T10:00:00.5Z", "size_bytes": 12, "media_type": "application/vnd.oci.image.manifest.v1+json"}}]"#
        )))
        .unwrap();
        let mut out = Vec::new();
        r.write_to(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(Recording::parse(&text).unwrap(), r, "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        r.write(&path).unwrap();
        assert_eq!(Recording::read(&path).unwrap(), r);
    }

    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn index_children_are_read_and_written() {
        let text = doc(&format!(r#"[{{"name": "multi", "digest": "{D1}"}}], "indexes": {{"{D1}": ["{D2}", "{D3}"]}}"#));
        let err = format!("{:#}", Recording::parse(&text).unwrap_err());
        assert!(err.contains("`indexes` is a `tagwarden.recording.v2` field"), "{err}");
        let r = Recording::parse(&text.replace(FORMAT_V1, FORMAT_V2)).unwrap();
        let d = |s: &str| Digest::parse(s).unwrap();
        assert_eq!(r.list.index_children().get(&d(D1)), Some(&vec![d(D2), d(D3)]));
        let mut out = Vec::new();
        r.write_to(&mut out).unwrap();
        let written = String::from_utf8(out).unwrap();
        assert!(written.contains("\"indexes\"") && written.contains(FORMAT_V2), "{written}");
        assert_eq!(Recording::parse(&written).unwrap(), r, "{written}");
    }

    #[test]
    fn referrers_are_read_and_written_in_v3_and_fallback_tags_become_referrers_in_any_version() {
        let hex1 = &D1["sha256:".len()..];
        // A v1 recording of a signed repository: the signature tag is a referrer, not a tag.
        let v1 = doc(&format!(r#"[{{"name": "v1", "digest": "{D1}"}}, {{"name": "sha256-{hex1}.sig", "digest": "{D2}"}}]"#));
        let r = Recording::parse(&v1).unwrap();
        assert_eq!(r.list.tags().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["v1"]);
        let d = |s: &str| Digest::parse(s).unwrap();
        assert_eq!(r.list.referrers().len(), 1);
        let sig = &r.list.referrers()[0];
        assert_eq!((sig.tag.as_deref(), &sig.digest, &sig.subject), (Some(format!("sha256-{hex1}.sig").as_str()), &d(D2), &d(D1)));
        // Written back, it is a v3 recording that reads back identically.
        let mut out = Vec::new();
        r.write_to(&mut out).unwrap();
        let written = String::from_utf8(out).unwrap();
        assert!(written.contains(FORMAT_V3) && written.contains("\"referrers\""), "{written}");
        assert_eq!(Recording::parse(&written).unwrap(), r, "{written}");
        // An untagged referrer, explicitly.
        let v3 = doc(&format!(
            r#"[{{"name": "v1", "digest": "{D1}"}}], "referrers": [{{"digest": "{D3}", "subject": "{D1}", "artifact_type": "application/spdx+json"}}]"#
        ));
        let err = format!("{:#}", Recording::parse(&v3).unwrap_err());
        assert!(err.contains("`referrers` is a `tagwarden.recording.v3` field"), "{err}");
        let r = Recording::parse(&v3.replace(FORMAT_V1, FORMAT_V3)).unwrap();
        assert_eq!(
            (r.list.referrers()[0].tag.as_deref(), r.list.referrers()[0].artifact_type.as_deref()),
            (None, Some("application/spdx+json"))
        );
        let bad = doc(&format!(r#"[], "referrers": [{{"digest": "{D3}", "subject": "sha256:1"}}]"#)).replace(FORMAT_V1, FORMAT_V3);
        let err = format!("{:#}", Recording::parse(&bad).unwrap_err());
        assert!(err.contains("referrers[0].subject") && err.contains("64 lowercase hex"), "{err}");
    }

    #[test]
    fn bad_index_entries_are_refused_with_where_and_what() {
        let bad_child =
            doc(&format!(r#"[{{"name": "multi", "digest": "{D1}"}}], "indexes": {{"{D1}": ["sha256:12"]}}"#)).replace(FORMAT_V1, FORMAT_V2);
        let err = format!("{:#}", Recording::parse(&bad_child).unwrap_err());
        assert!(err.contains("indexes") && err.contains("64 lowercase hex"), "{err}");
        let empty = doc(&format!(r#"[{{"name": "multi", "digest": "{D1}"}}], "indexes": {{"{D1}": []}}"#)).replace(FORMAT_V1, FORMAT_V2);
        let err = format!("{:#}", Recording::parse(&empty).unwrap_err());
        assert!(err.contains(&format!("`indexes.{D1}` lists no children")), "{err}");
    }
}
