//! GitLab's way to remove one tag of several on a digest, for registries without tag
//! delete: point the tag at a tiny dummy manifest, then delete the dummy by digest.
//!
//! There is **one** dummy, the same bytes in every repository, registry and pass: its
//! content (a config labelled `org.tagwarden.dummy`) fixes its digest, so a tag on it is
//! recognised from the listing alone — no request, no doubt — by any later pass, host or
//! version. A tag found on it is an unfinished removal (a pass was interrupted between
//! moving the tag and deleting the dummy): it is never shown to a plugin or counted by a
//! rule, and the next pass that may delete finishes it (see `reconcile.rs`). A dummy per
//! pass would need a manifest read to be recognised and would leave one orphan per
//! interrupted pass; sharing one is safe because only tags already decided `delete` are
//! ever moved onto it, so deleting it on behalf of any pass removes nothing else.
//!
//! These bytes are frozen: changing them would make tags left on the old dummy ordinary
//! tags again.

use std::sync::LazyLock;

use super::execute::{Done, Execution};
use crate::deletion::TagDeletion;
use crate::model::{Digest, ErrorClass, TagList};
use crate::registry::{RegistryClient, RegistryError};
use crate::store::{AuditOperation, AuditOutcome};

/// A fixed, layer-less image: the same bytes (and digest) everywhere.
const CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","config":{"Labels":{"org.tagwarden.dummy":"true"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";

static MANIFEST: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let config = Digest::sha256_of(CONFIG);
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"{CONFIG_TYPE}","size":{},"digest":"{config}"}},"layers":[]}}"#,
        CONFIG.len()
    )
    .into_bytes()
});

/// The dummy manifest's digest.
pub static DIGEST: LazyLock<Digest> = LazyLock::new(|| Digest::sha256_of(&MANIFEST));

/// Takes the tags on the dummy manifest (and the dummy itself, if listed untagged) out of
/// `list`; returns their names, sorted.
pub fn split_leftovers(list: &mut TagList) -> Vec<String> {
    let on_dummy: Vec<String> = list.tags().iter().filter(|t| t.digest == *DIGEST).map(|t| t.name.clone()).collect();
    if !on_dummy.is_empty() || list.untagged().iter().any(|u| u.digest == *DIGEST) {
        list.remove_digest(&DIGEST);
    }
    on_dummy
}

/// Why the method could not run at all, classified like the error behind it.
pub(super) struct UntagError {
    pub message: String,
    pub class: ErrorClass,
}

fn fail(context: &str, e: RegistryError) -> UntagError {
    UntagError { message: format!("{context}: {e}"), class: e.class }
}

/// Pushes the dummy (config blob, then the manifest under `reference`: a tag, or its digest
/// for an untagged copy).
async fn push(client: &RegistryClient, repository: &str, reference: &str) -> Result<(), RegistryError> {
    client.put_manifest(repository, reference, MANIFEST_TYPE, MANIFEST.clone()).await.map(|_| ())
}

/// Makes sure the dummy's config blob is in `repository` (its upload survives lost sessions).
async fn push_config(client: &RegistryClient, repository: &str) -> Result<(), UntagError> {
    client.push_blob(repository, CONFIG.to_vec()).await.map(|_| ()).map_err(|e| fail("uploading the dummy config", e))
}

/// What moving tags onto the dummy achieved.
#[derive(Default)]
pub(super) struct Untagged {
    pub removed: usize,
    pub failed: usize,
    /// Moved onto the dummy, but the dummy could not be deleted: the next pass finishes them.
    pub left_on_dummy: usize,
    pub not_removed: Vec<String>,
    pub errors: Vec<String>,
}

/// Moves `tags` onto the dummy manifest and deletes it. Errors (as an operator message)
/// before moving anything when deletes cannot be shown to work, so no tag is ever left on a
/// dummy that cannot be deleted. When the dummy cannot be deleted after tags were moved,
/// their audit rows stay open and the tags wait on the dummy for the next pass, which
/// finishes them before deciding anything.
pub(super) async fn untag(
    ex: &Execution<'_>,
    client: &RegistryClient,
    tags: &[&TagDeletion],
    deletes_work: bool,
) -> Result<Untagged, UntagError> {
    let repository = ex.repository;
    push_config(client, repository).await?;
    if !deletes_work {
        // Prove deletes work with an untagged copy of the dummy before moving tags.
        push(client, repository, DIGEST.as_str()).await.map_err(|e| fail("pushing the dummy manifest", e))?;
        client.delete_manifest(repository, &DIGEST).await.map_err(|e| {
            let context = if e.class.is_retryable() {
                "could not confirm that deletes work (no tag was moved onto a dummy manifest)"
            } else {
                "deletes do not work on this registry, so no tag was moved onto a dummy manifest"
            };
            fail(context, e)
        })?;
    }
    let mut out = Untagged::default();
    let mut moved: Vec<(&TagDeletion, i64)> = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        if ex.must_stop() {
            out.not_removed.extend(tags[i..].iter().map(|t| t.tag.clone()));
            break;
        }
        let id = ex
            .audit_attempt(AuditOperation::UntagViaDummy, &t.digest, std::slice::from_ref(&t.tag))
            .map_err(|e| UntagError { message: format!("{e:#}"), class: ErrorClass::Permanent })?;
        match push(client, repository, &t.tag).await {
            Ok(()) => moved.push((t, id)),
            Err(e) => {
                // A failed PUT may still have moved the tag (a fault after the registry acted).
                match client.resolve_tag(repository, &t.tag).await {
                    Ok(Some(d)) if d == *DIGEST => {
                        moved.push((t, id));
                        continue;
                    }
                    Ok(Some(d)) if d == t.digest => ex.audit_finish(id, AuditOutcome::Failed, Some(&e.to_string())),
                    _ => ex.audit_leave_open(id, &format!("outcome unknown after: {e}; the next pass checks")),
                }
                out.not_removed.push(t.tag.clone());
                out.failed += 1;
                out.errors.push(e.to_string());
            }
        }
    }
    if moved.is_empty() {
        return Ok(out);
    }
    // Always finish what was started, even past the budget: the moved tags are to be deleted
    // anyway, and this is one request.
    let ids: Vec<i64> = moved.iter().map(|(_, id)| *id).collect();
    match ex.delete_dummy(&ids, "").await {
        Done::Deleted { .. } => {
            out.removed += moved.len();
            for _ in &moved {
                ex.tick();
            }
        }
        Done::Failed { message, .. } | Done::Unsettled { message } => {
            out.left_on_dummy += moved.len();
            out.not_removed.extend(moved.iter().map(|(t, _)| t.tag.clone()));
            out.errors.push(format!(
                "deleting tagwarden's dummy manifest {}: {message} ({} tags moved onto it are removed by the next pass)",
                *DIGEST,
                moved.len()
            ));
        }
        Done::Skipped => unreachable!("the dummy is deleted whatever the budget"),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tag;

    #[test]
    fn the_dummy_digest_is_frozen() {
        // Tags left on the dummy by any earlier version must stay recognisable.
        assert_eq!(DIGEST.as_str(), "sha256:f82025e200194c7c7268edc22f79b0f3421e608f2e8229f81a6a456d3b0ee96d");
    }

    #[test]
    fn tags_on_the_dummy_are_taken_out_of_the_list() {
        let other = Digest::sha256_of(b"x");
        let mut list =
            TagList::new("r", vec![Tag::new("a", DIGEST.clone()), Tag::new("b", other.clone()), Tag::new("c", DIGEST.clone())], vec![])
                .unwrap();
        assert_eq!(split_leftovers(&mut list), ["a", "c"]);
        assert_eq!(list.tags().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert!(split_leftovers(&mut list).is_empty());
    }
}
