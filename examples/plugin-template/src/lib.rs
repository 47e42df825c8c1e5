//! `plugin-template`: a retention policy to start from.
//!
//! 1. a tag listed in `protect` is kept;
//! 2. the `keep` most recently pushed tags are kept;
//! 3. a tag pushed less than `older_than` ago, or at an unknown time, is kept;
//! 4. every other tag is deleted. Untagged manifests are kept.
//!
//! Replace the rules with yours; keep the shape: params read and checked once in `create`
//! (their errors are what the operator sees), reasons built there too, one verdict per tag.

use tagwarden_plugin_sdk::params::Params;
use tagwarden_plugin_sdk::{Columns, Decisions, Duration, RetentionInput, RetentionPolicy, Verdict, export_retention, interned};

/// Every param this plugin accepts; any other is refused, naming it.
const KNOWN_PARAMS: &[&str] = &["keep", "older_than", "protect"];

mod reason {
    pub const PROTECTED: &str = "protect: listed";
    pub const TIME_UNKNOWN: &str = "older_than: push time unknown";
    pub const UNTAGGED: &str = "untagged: not managed by this policy";
}

/// The policy, configured from the operator's params.
#[derive(Debug)]
pub struct KeepRecent {
    keep: usize,
    older_than: Duration,
    protect: Vec<String>,
    /// Reasons that name a param value: built once, here, not per tag (the host accepts
    /// at most 256 distinct reasons per answer).
    among_newest: Verdict,
    too_recent: Verdict,
    delete: Verdict,
}

impl RetentionPolicy for KeepRecent {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, KNOWN_PARAMS)?;
        let keep = params.integer("keep", 0..=100_000, 5)?;
        let older_than = params.duration("older_than", Duration::from_secs(30 * 86_400), true)?;
        let protect = params.strings("protect")?.into_iter().map(str::to_owned).collect();
        let age = params.string("older_than")?.unwrap_or("30d").trim().to_owned();
        Ok(KeepRecent {
            keep: keep as usize,
            older_than,
            protect,
            among_newest: Verdict::keep(interned(format!("keep: among the {keep} most recently pushed"))),
            too_recent: Verdict::keep(interned(format!("older_than: pushed less than {age} ago"))),
            delete: Verdict::delete(interned(format!("delete: not among the {keep} newest, pushed {age} ago or earlier"))),
        })
    }

    /// Only what it reads is sent: it ages tags by push time only.
    fn reads(&self) -> Columns {
        Columns::PUSHED_AT
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        let cutoff = input.now.saturating_sub(self.older_than);
        // Newest first; an unknown push time sorts last. Ties by name, for a fixed answer.
        let mut by_age: Vec<usize> = (0..input.tags.len()).collect();
        by_age.sort_by_key(|&i| (std::cmp::Reverse(input.tags.at(i).pushed_at()), i));
        let mut tags = vec![self.delete.clone(); input.tags.len()];
        for (rank, &i) in by_age.iter().enumerate() {
            let tag = input.tags.at(i);
            tags[i] = if self.protect.iter().any(|p| p == tag.name) {
                Verdict::keep(reason::PROTECTED)
            } else if rank < self.keep {
                self.among_newest.clone()
            } else {
                match tag.pushed_at() {
                    None => Verdict::keep(reason::TIME_UNKNOWN),
                    Some(at) if at >= cutoff => self.too_recent.clone(),
                    Some(_) => self.delete.clone(),
                }
            };
        }
        Ok(Decisions { tags, untagged: vec![Verdict::keep(reason::UNTAGGED); input.untagged.len()] })
    }
}

export_retention!(KeepRecent);

#[cfg(test)]
mod tests;
