//! Undoing a deletion: pushing a deleted tag's manifest back, as the registry served it.
//!
//! Before a pass deletes a manifest it keeps the bytes and media type the registry served
//! (`deleted_manifests`, see [`crate::store::AuditLog::keep_manifest`]). A registry's delete
//! removes only the manifest: its blobs stay until the registry's garbage collector runs, so
//! until then the same bytes can be pushed again and the tag points at the same digest as
//! before. [`restore`] does that for the newest audit row that deleted the tag, after
//! checking that every blob (and, for an index, every platform manifest) the manifest
//! references is still there: a missing one is named in the error, and nothing is pushed.
//!
//! `tagwarden restore` and the HTTP API's restore action both call [`restore`]; each restore
//! is a row of the audit log (`restore_tag`: `restoring`, then `restored` or `failed`).

use std::fmt;

use crate::model::{Digest, Timestamp};
use crate::registry::{RegistryClient, RegistryError, references, validate_repository_name, validate_tag};
use crate::store::{AuditEntry, AuditLog, AuditOperation, AuditOutcome, KeptManifest};

/// Index nesting followed when looking for platform manifests to push back (an index of
/// indexes is rare; deeper is malformed).
const MAX_DEPTH: usize = 4;

/// What to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest<'a> {
    pub repository: &'a str,
    /// The deleted tag.
    pub tag: &'a str,
    /// Push it under this tag instead (the original stays as it is).
    pub as_tag: Option<&'a str>,
    /// Who asked, for the audit log (e.g. `operator via cli`).
    pub by: &'a str,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    pub repository: String,
    /// The tag now pointing at the manifest (the `--as` tag when given).
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// The audit row of the deletion undone, and when it happened.
    pub deletion_audit_id: i64,
    pub deleted_at: Timestamp,
    /// The tag already pointed at the digest: nothing was pushed.
    pub already_there: bool,
    /// Platform manifests of an index pushed back before it.
    pub manifests_pushed: usize,
    /// The audit row of this restore (`None` when nothing was pushed).
    pub audit_id: Option<i64>,
}

/// Why a restore could not be done; nothing was pushed unless [`RestoreErrorKind::Registry`]
/// says a push failed halfway (then the audit row says `failed` with what happened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreError {
    pub kind: RestoreErrorKind,
    pub message: String,
}

/// What kind of problem stopped a restore, for callers that map it (the API's statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreErrorKind {
    /// A malformed repository or tag name.
    Invalid,
    /// The audit log has no deletion of the tag.
    NotDeleted,
    /// The manifest was not kept (and the registry no longer has it).
    NotKept,
    /// The target tag exists and points at another manifest.
    Conflict,
    /// A blob or platform manifest it references is gone (garbage-collected).
    Gone,
    /// The registry failed (see the message for its error).
    Registry,
    /// The state database failed.
    Store,
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RestoreError {}

fn error(kind: RestoreErrorKind, message: String) -> RestoreError {
    RestoreError { kind, message }
}

fn registry_error(what: &str, e: RegistryError) -> RestoreError {
    error(RestoreErrorKind::Registry, format!("{what}: {e}"))
}

fn store_error(e: anyhow::Error) -> RestoreError {
    error(RestoreErrorKind::Store, format!("{e:#}"))
}

/// Pushes the manifest that the newest deletion of `req.tag` removed back under the tag (or
/// `req.as_tag`), audited. See the module documentation for what is checked first.
pub async fn restore(client: &RegistryClient, audit: &AuditLog, req: &RestoreRequest<'_>) -> Result<Restored, RestoreError> {
    let invalid = |e: anyhow::Error| error(RestoreErrorKind::Invalid, format!("{e:#}"));
    validate_repository_name(req.repository).map_err(invalid)?;
    validate_tag(req.tag).map_err(invalid)?;
    let target = req.as_tag.unwrap_or(req.tag);
    validate_tag(target).map_err(invalid)?;
    let (repo, tag) = (req.repository, req.tag);

    let deletion = audit.last_deletion(repo, tag).map_err(store_error)?.ok_or_else(|| {
        error(
            RestoreErrorKind::NotDeleted,
            format!(
                "{repo}:{tag}: the audit log has no deletion of this tag (`tagwarden audit --repository {repo}` lists what was deleted)"
            ),
        )
    })?;
    let digest = Digest::parse(&deletion.digest).map_err(|e| store_error(e.context(format!("audit row {}", deletion.id))))?;
    let mut restored = Restored {
        repository: repo.to_owned(),
        tag: target.to_owned(),
        digest: digest.to_string(),
        media_type: String::new(),
        deletion_audit_id: deletion.id,
        deleted_at: deletion.at,
        already_there: false,
        manifests_pushed: 0,
        audit_id: None,
    };

    // Never move a tag that points elsewhere: that would delete an image by other means.
    match client.resolve_tag(repo, target).await.map_err(|e| registry_error(&format!("resolving {repo}:{target}"), e))? {
        Some(current) if current == digest => {
            restored.already_there = true;
            return Ok(restored);
        }
        Some(current) => {
            return Err(error(
                RestoreErrorKind::Conflict,
                format!(
                    "{repo}:{target} exists and points at {current}, not at the deleted {digest}; restore under another name with `--as NEWTAG`"
                ),
            ));
        }
        None => {}
    }

    let manifest = manifest_of(client, audit, repo, &digest).await?.ok_or_else(|| {
        error(
            RestoreErrorKind::NotKept,
            format!(
                "{repo}:{tag}: manifest {digest} was not kept when it was deleted (before tagwarden kept manifests, larger than \
                 `deletion.keep_manifest_bytes`, or that setting is 0), and the registry no longer has it; push the image again from its source"
            ),
        )
    })?;
    restored.media_type = manifest.media_type.clone();

    let as_note = if target == tag { String::new() } else { format!(" as {target}") };
    let id = audit
        .restore_attempt(&AuditEntry {
            registry: client.base_url().as_str(),
            repository: repo,
            operation: AuditOperation::RestoreTag,
            digest: digest.as_str(),
            tags: std::slice::from_ref(&target.to_owned()),
            decided_by: req.by,
            run_id: None,
        })
        .map_err(store_error)?;
    restored.audit_id = Some(id);
    let result = push_back(client, audit, repo, target, &manifest).await;
    let finish = match &result {
        Ok(pushed) => {
            restored.manifests_pushed = *pushed;
            let detail = format!("{tag}{as_note}, deleted by audit row {} at {}", deletion.id, deletion.at);
            audit.finish(id, AuditOutcome::Restored, Some(&detail))
        }
        Err(e) => audit.finish(id, AuditOutcome::Failed, Some(&e.message)),
    };
    result?;
    finish.map_err(store_error)?;
    Ok(restored)
}

/// The manifest `digest`: kept by the pass that deleted it, else (a tag removed from a
/// manifest that stayed) still in the registry.
async fn manifest_of(client: &RegistryClient, audit: &AuditLog, repo: &str, digest: &Digest) -> Result<Option<KeptManifest>, RestoreError> {
    if let Some(kept) = audit.kept_manifest(digest.as_str()).map_err(store_error)? {
        return Ok(Some(kept));
    }
    let served = client.manifest(repo, digest).await.map_err(|e| registry_error(&format!("reading manifest {digest} of {repo}"), e))?;
    Ok(served.map(|m| KeptManifest { digest: m.digest.to_string(), media_type: m.media_type, body: m.body.to_vec() }))
}

/// Checks what `manifest` references, then pushes the platform manifests the registry lost
/// (by digest) and `manifest` under `tag`. Returns how many platform manifests were pushed.
async fn push_back(
    client: &RegistryClient,
    audit: &AuditLog,
    repo: &str,
    tag: &str,
    manifest: &KeptManifest,
) -> Result<usize, RestoreError> {
    // Everything referenced, checked before anything is pushed: children first.
    let mut to_push: Vec<KeptManifest> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let mut pending = vec![(manifest.clone(), 0usize)];
    while let Some((m, depth)) = pending.pop() {
        let refs = references(&m.body).map_err(|e| error(RestoreErrorKind::NotKept, format!("manifest {}: {e:#}", m.digest)))?;
        for (blob, role) in &refs.blobs {
            let there = client.blob_exists(repo, blob).await.map_err(|e| registry_error(&format!("checking blob {blob}"), e))?;
            if !there {
                missing.push(format!("blob {blob} ({role} of {})", m.digest));
            }
        }
        for child in &refs.manifests {
            let there = client.manifest_exists(repo, child).await.map_err(|e| registry_error(&format!("checking manifest {child}"), e))?;
            if there {
                continue;
            }
            match audit.kept_manifest(child.as_str()).map_err(store_error)? {
                Some(kept) if depth < MAX_DEPTH => pending.push((kept, depth + 1)),
                _ => missing.push(format!("manifest {child} (platform image of {}, not kept)", m.digest)),
            }
        }
        if m.digest != manifest.digest {
            to_push.push(m);
        }
    }
    if !missing.is_empty() {
        return Err(error(
            RestoreErrorKind::Gone,
            format!(
                "cannot restore {repo}:{tag} ({}): the registry no longer has {}; its garbage collector removed what the deleted \
                 manifest referenced, so only pushing the image again from its source brings it back",
                manifest.digest,
                missing.join(", ")
            ),
        ));
    }
    // Deepest first: an index is accepted only once its platform manifests exist.
    let pushed = to_push.len();
    for m in to_push.iter().rev() {
        client
            .put_manifest(repo, &m.digest, &m.media_type, m.body.clone())
            .await
            .map_err(|e| registry_error(&format!("pushing platform manifest {} back", m.digest), e))?;
    }
    let digest = client
        .put_manifest(repo, tag, &manifest.media_type, manifest.body.clone())
        .await
        .map_err(|e| registry_error(&format!("pushing {repo}:{tag} back"), e))?;
    if digest.as_str() != manifest.digest {
        return Err(error(
            RestoreErrorKind::Registry,
            format!("the registry stored {repo}:{tag} as {digest}, not as the deleted {}: it rewrote the manifest", manifest.digest),
        ));
    }
    Ok(pushed)
}
