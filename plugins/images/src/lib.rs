//! Images: a retention input's tags grouped by manifest digest.
//!
//! tagwarden's input is a list of tags, each naming its manifest digest, plus the
//! untagged manifests. The products whose policies the peer plugins reproduce (ECR,
//! Harbor, Artifact Registry, ACR) decide per *image*: a manifest with all of its tags.
//! [`group`] builds those images once; [`Images::spread`] turns one verdict per image
//! back into one verdict per tag and per untagged manifest, so every tag of an image
//! always shares its image's fate.

use std::collections::HashMap;

use tagwarden_plugin_sdk::{Decisions, RetentionInput, Tag, Timestamp, Verdict};

/// One manifest and every tag that points at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image<'a> {
    /// The manifest digest.
    pub digest: &'a str,
    /// Positions of its tags in `input.tags`, in input order. Empty for an untagged manifest.
    pub tags: Vec<usize>,
    /// Its positions in `input.untagged`, when it is listed there (normally at most once).
    pub untagged: Vec<usize>,
}

impl Image<'_> {
    /// Whether no tag points at this manifest.
    pub fn is_untagged(&self) -> bool {
        self.tags.is_empty()
    }
}

/// The images of one input, in listing order: images with tags in the order of their
/// first tag (the host passes tags sorted by name), then untagged manifests in their
/// order. That order is what "listed later" means wherever a product's tie-break needs one.
#[derive(Debug, Clone)]
pub struct Images<'a> {
    pub images: Vec<Image<'a>>,
}

/// Groups `input`'s tags by digest. An untagged manifest whose digest a tag also names is
/// merged into that tag's image (it is tagged after all), and so is one listed twice.
pub fn group<'a>(input: &RetentionInput<'a>) -> Images<'a> {
    let mut by_digest: HashMap<&'a str, usize> = HashMap::with_capacity(input.tags.len() + input.untagged.len());
    let mut images: Vec<Image<'a>> = Vec::new();
    for (i, tag) in input.tags.iter().enumerate() {
        let at = *by_digest.entry(tag.digest()).or_insert_with(|| {
            images.push(Image { digest: tag.digest(), tags: Vec::new(), untagged: Vec::new() });
            images.len() - 1
        });
        images[at].tags.push(i);
    }
    for (i, manifest) in input.untagged.iter().enumerate() {
        let at = *by_digest.entry(manifest.digest()).or_insert_with(|| {
            images.push(Image { digest: manifest.digest(), tags: Vec::new(), untagged: Vec::new() });
            images.len() - 1
        });
        images[at].untagged.push(i);
    }
    Images { images }
}

impl<'a> Images<'a> {
    /// The tags of `image`, read from `input`.
    pub fn tags<'i>(&'i self, input: &'i RetentionInput<'a>, image: &'i Image<'a>) -> impl Iterator<Item = Tag<'a>> + 'i {
        image.tags.iter().map(|&i| input.tags.at(i))
    }

    /// The earliest of `field` over the image's tags, or for an untagged manifest its
    /// own value; `None` when none is known.
    pub fn earliest(
        &self,
        input: &RetentionInput<'a>,
        image: &Image<'a>,
        tag_field: impl Fn(&Tag<'a>) -> Option<Timestamp>,
        untagged_field: impl Fn(&tagwarden_plugin_sdk::UntaggedManifest<'a>) -> Option<Timestamp>,
    ) -> Option<Timestamp> {
        let from_tags = image.tags.iter().filter_map(|&i| tag_field(&input.tags.at(i))).min();
        from_tags.or_else(|| image.untagged.iter().filter_map(|&u| untagged_field(&input.untagged[u])).min())
    }

    /// The latest of `field` over the image's tags; `None` when no tag knows it.
    pub fn latest(
        &self,
        input: &RetentionInput<'a>,
        image: &Image<'a>,
        tag_field: impl Fn(&Tag<'a>) -> Option<Timestamp>,
    ) -> Option<Timestamp> {
        image.tags.iter().filter_map(|&i| tag_field(&input.tags.at(i))).max()
    }

    /// One verdict per tag and untagged manifest of `input`, each its image's verdict.
    /// `verdicts` holds one verdict per image, in the order of [`Images::images`].
    pub fn spread(&self, input: &RetentionInput<'a>, verdicts: Vec<Verdict>) -> Decisions {
        assert_eq!(verdicts.len(), self.images.len(), "one verdict per image");
        let mut tags: Vec<Option<Verdict>> = vec![None; input.tags.len()];
        let mut untagged: Vec<Option<Verdict>> = vec![None; input.untagged.len()];
        for (image, verdict) in self.images.iter().zip(verdicts) {
            for &i in &image.tags {
                tags[i] = Some(verdict.clone());
            }
            for &u in &image.untagged {
                untagged[u] = Some(verdict.clone());
            }
        }
        let every = |v: Vec<Option<Verdict>>| v.into_iter().map(|v| v.expect("every tag and manifest belongs to an image")).collect();
        Decisions { tags: every(tags), untagged: every(untagged) }
    }
}

#[cfg(test)]
mod tests;
