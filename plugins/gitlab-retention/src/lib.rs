//! `gitlab-retention`: GitLab's container-registry cleanup policy (`CleanupTagsService`),
//! reproduced case for case as a tagwarden retention plugin.
//!
//! Steps, in order (see README.md for the operator's view):
//! 1. `keep_latest` (default true) keeps the tag named `latest`;
//! 2. a tag stays a candidate iff it matches `\A<name_regex_delete>\z` and not
//!    `\A<name_regex_keep>\z` (plain string interpolation, exactly like GitLab);
//! 3. `keep_n` keeps the N most recent candidates;
//! 4. `older_than` keeps candidates that are not older than the duration;
//! 5. every remaining candidate is deleted.
//!
//! Untagged manifests are outside GitLab's model: they are kept unless `delete_untagged`.

mod params;

use serde_json::Value;
use tagwarden_plugin_sdk::params::{Params, expected};
use tagwarden_plugin_sdk::{
    Columns, Decisions, Duration, RetentionInput, RetentionPolicy, Tag, Timestamp, Verdict, export_retention, interned, log,
};

use params::{DURATION_EXAMPLES, GitlabParams};
use tagwarden_plugin_sdk::names::NamePattern;

/// Every param this plugin accepts.
const KNOWN_PARAMS: &[&str] =
    &["name_regex_delete", "name_regex", "name_regex_keep", "keep_n", "older_than", "keep_latest", "delete_untagged"];

/// The reasons given to operators. Those that carry a param value are built in `create`.
mod reason {
    pub const KEEP_LATEST: &str = "keep_latest";
    pub const DELETE_REGEX_NOT_SET: &str = "name_regex_delete: not set";
    pub const NO_MATCH: &str = "name_regex_delete: no match";
    pub const NO_MATCH_ALIAS: &str = "name_regex: no match";
    pub const KEEP_MATCH: &str = "name_regex_keep: match";
    pub const TIME_UNKNOWN: &str = "older_than: time unknown";
    pub const DELETE: &str = "delete: matched name_regex_delete, not kept by any rule";
    pub const DELETE_ALIAS: &str = "delete: matched name_regex, not kept by any rule";
    pub const UNTAGGED_NOT_MANAGED: &str = "untagged: not managed by gitlab-retention (delete_untagged is false)";
    pub const DELETE_UNTAGGED: &str = "delete_untagged: untagged manifest";
}

/// GitLab's cleanup policy, configured and with its regexes compiled.
#[derive(Debug)]
pub struct GitlabRetention {
    keep_latest: bool,
    /// `\A<name_regex_delete>\z`; `None` when not given (GitLab's `\A\z`, which matches no tag).
    delete: Option<NamePattern>,
    /// `\A<name_regex_keep>\z`; `None` when not given (protects nothing).
    keep: Option<NamePattern>,
    /// Verdict for a tag the delete regex does not match.
    no_match: Verdict,
    /// Verdict for a tag that passed every step.
    delete_verdict: Verdict,
    keep_n: Option<(usize, Verdict)>,
    older_than: Option<OlderThan>,
    delete_untagged: bool,
}

#[derive(Debug)]
struct OlderThan {
    duration: Duration,
    /// `older_than: not older than <duration as given>`.
    not_old_enough: Verdict,
}

impl RetentionPolicy for GitlabRetention {
    fn create(params: &str) -> Result<Self, String> {
        let params = Params::parse(params, KNOWN_PARAMS)?.with_duration_examples(DURATION_EXAMPLES);

        // GitLab validates both regexes even though `name_regex_delete` wins.
        let delete_primary = regex_param(&params, "name_regex_delete")?;
        let delete_alias = regex_param(&params, "name_regex")?;
        let keep = regex_param(&params, "name_regex_keep")?;
        let keep_n = params
            .count("keep_n")?
            .map(|n| (usize::try_from(n).unwrap_or(usize::MAX), Verdict::keep(interned(format!("keep_n: among the {n} most recent")))));
        let older_than = params.duration_as_given("older_than")?.map(|(duration, text)| OlderThan {
            duration,
            not_old_enough: Verdict::keep(interned(format!("older_than: not older than {text}"))),
        });
        let keep_latest = params.bool("keep_latest", true)?;
        let delete_untagged = params.bool("delete_untagged", false)?;

        // Valid: now warn, once, about what is likely a mistake.
        if let (Some(primary), Some(alias)) = (&delete_primary, &delete_alias)
            && primary.as_str() != alias.as_str()
        {
            log::warn("name_regex is ignored because name_regex_delete is given");
        }
        let (delete, no_match, delete_reason) = match (delete_primary, delete_alias) {
            (Some(regex), _) => {
                warn_if_top_level_alternation("name_regex_delete", &regex);
                (Some(regex), reason::NO_MATCH, reason::DELETE)
            }
            (None, Some(regex)) => {
                warn_if_top_level_alternation("name_regex", &regex);
                (Some(regex), reason::NO_MATCH_ALIAS, reason::DELETE_ALIAS)
            }
            (None, None) => (None, reason::DELETE_REGEX_NOT_SET, reason::DELETE),
        };
        if let Some(regex) = &keep {
            warn_if_top_level_alternation("name_regex_keep", regex);
        }

        Ok(GitlabRetention {
            keep_latest,
            delete,
            keep,
            no_match: Verdict::keep(no_match),
            delete_verdict: Verdict::delete(delete_reason),
            keep_n,
            older_than,
            delete_untagged,
        })
    }

    /// Only what it reads is sent: GitLab orders and ages tags by push time, falling back to build time; it never reads digests, sizes or media types.
    fn reads(&self) -> Columns {
        Columns::PUSHED_AT | Columns::CREATED_AT
    }

    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String> {
        let now = input.now;
        let age_rule = self.older_than.as_ref().map(|o| (o, now.saturating_sub(o.duration)));

        // Steps 1 and 2: name rules. The host matches every name against each regex in
        // one call (`RetentionInput::matching`); the keep regex is asked only of tags
        // the delete regex matched, so matching it for every tag changes no verdict.
        // Candidates hold each tag's time and index, in input (name) order: the later
        // steps need nothing else of the tag.
        let deletable = self.delete.as_ref().map(|re| input.matching(re));
        let protected = self.keep.as_ref().map(|re| input.matching(re));
        let mut tags = Vec::with_capacity(input.tags.len());
        let mut candidates: Vec<(Option<Timestamp>, u32)> = Vec::new();
        for (i, tag) in input.tags.iter().enumerate() {
            let verdict = if self.keep_latest && is_latest(tag.name) {
                Verdict::keep(reason::KEEP_LATEST)
            } else if !deletable.as_ref().is_some_and(|m| m.get(i)) {
                self.no_match.clone()
            } else if protected.as_ref().is_some_and(|m| m.get(i)) {
                Verdict::keep(reason::KEEP_MATCH)
            } else {
                candidates.push((tag_time(&tag), u32::try_from(i).map_err(|_| "more than 4294967295 tags")?));
                self.delete_verdict.clone()
            };
            tags.push(verdict);
        }

        // Step 3: keep the N most recent. GitLab sorts ascending by time (unknown = now)
        // with a stable sort over the name order, reverses, and keeps the first N: that is
        // the N greatest (time, index) keys, which are unique, so a selection finds them
        // without sorting everything.
        if let Some((n, kept)) = &self.keep_n {
            let first_kept = candidates.len().saturating_sub(*n);
            if first_kept > 0 && first_kept < candidates.len() {
                candidates.select_nth_unstable_by_key(first_kept, |&(time, i)| (time.unwrap_or(now), i));
            }
            for &(_, i) in &candidates[first_kept..] {
                tags[i as usize] = kept.clone();
            }
            candidates.truncate(first_kept);
        }

        // Step 4: delete only what is strictly older than the cutoff.
        if let Some((older_than, cutoff)) = age_rule {
            for &(time, i) in &candidates {
                if let Some(keep) = older_than.keeps(time, cutoff) {
                    tags[i as usize] = keep;
                }
            }
        }

        let untagged = input
            .untagged
            .iter()
            .map(|m| {
                if !self.delete_untagged {
                    return Verdict::keep(reason::UNTAGGED_NOT_MANAGED);
                }
                let time = m.pushed_at().or(m.created_at());
                age_rule
                    .and_then(|(older_than, cutoff)| older_than.keeps(time, cutoff))
                    .unwrap_or_else(|| Verdict::delete(reason::DELETE_UNTAGGED))
            })
            .collect();

        Ok(Decisions { tags, untagged })
    }
}

export_retention!(GitlabRetention);

impl OlderThan {
    /// The keep verdict when `time` is not strictly before `cutoff`; an unknown time is
    /// never old enough.
    fn keeps(&self, time: Option<Timestamp>, cutoff: Timestamp) -> Option<Verdict> {
        match time {
            None => Some(Verdict::keep(reason::TIME_UNKNOWN)),
            Some(t) if t >= cutoff => Some(self.not_old_enough.clone()),
            Some(_) => None,
        }
    }
}

/// `name == "latest"`, compared as a fixed-size array: in Wasm the `str` comparison
/// was a `memcmp` call for every six-character name (2 % of a 100k-tag evaluation).
fn is_latest(name: &str) -> bool {
    <[u8; 6]>::try_from(name.as_bytes()).is_ok_and(|b| b == *b"latest")
}

/// When the tag was last pushed, else when its image was built: GitLab's `updated_at || created_at`.
fn tag_time(tag: &Tag<'_>) -> Option<Timestamp> {
    tag.pushed_at().or(tag.created_at())
}

/// Reads a regex param and compiles it as GitLab does: first the pattern alone (GitLab's
/// `valid_regex?`, and its model's validation when a policy is saved), then anchored as
/// `\A<pattern>\z`, no group. Checking the anchored text alone is not enough: anchoring
/// can make a mistake valid (`*prod*` becomes `\A*prod*\z`, a repeated assertion, which
/// compiles and matches almost nothing, so the tags it was meant to keep would go).
fn regex_param(params: &Params, key: &str) -> Result<Option<NamePattern>, String> {
    let pattern = match params.get(key) {
        None => return Ok(None),
        Some(Value::String(pattern)) => pattern,
        Some(other) => return Err(expected(key, "a regex string", other)),
    };
    if let Err(e) = regex::Regex::new(pattern) {
        let hint = glob_as_regex(pattern).map(|regex| format!(". It looks like a glob; as a regex that is {regex:?}")).unwrap_or_default();
        return Err(format!("{key}: invalid regex: {} (pattern {pattern:?}){hint}", one_line(&e)));
    }
    NamePattern::new(&format!(r"\A{pattern}\z"))
        .map(Some)
        .map_err(|e| format!("{key}: invalid regex: {} (pattern {pattern:?})", one_line(&e)))
}

/// The regex a pattern that is not a valid regex probably meant, when it looks like a
/// shell glob (it has a `*` or `?`): `*` → `.*`, `?` → `.`, other regex syntax escaped
/// except character classes (`[...]` means the same in both). `None` when it does not
/// look like one, or when the translation is no valid regex either.
fn glob_as_regex(pattern: &str) -> Option<String> {
    if !pattern.contains(['*', '?']) {
        return None;
    }
    let mut regex = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '*' => regex.push_str(".*"),
            '?' => regex.push('.'),
            '.' | '+' | '(' | ')' | '|' | '^' | '$' | '{' | '}' | '\\' => {
                regex.push('\\');
                regex.push(c);
            }
            _ => regex.push(c),
        }
    }
    regex::Regex::new(&regex).is_ok().then_some(regex)
}

/// The gist of a regex error on one line: its syntax errors span several lines (the
/// pattern, a caret, then `error: <what>`).
fn one_line(error: &regex::Error) -> String {
    let text = error.to_string();
    match text.lines().find_map(|line| line.strip_prefix("error: ")) {
        Some(what) => what.to_owned(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Warns about the `\A..\z` trap: `C|D` becomes `\AC|D\z`, "starts with C or ends with D".
fn warn_if_top_level_alternation(key: &str, regex: &NamePattern) {
    let anchored = regex.as_str();
    let pattern = &anchored[2..anchored.len() - 2];
    if has_top_level_alternation(pattern) {
        log::warn(&format!(
            r"{key}: {pattern:?} has a top-level `|`, so it becomes {anchored}: each alternative is anchored at one end only, as in GitLab. Write ({pattern}) to match whole names."
        ));
    }
}

/// Whether `pattern` has a `|` outside every group and character class.
fn has_top_level_alternation(pattern: &str) -> bool {
    let mut groups = 0usize;
    let mut classes = 0usize;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' => {
                classes += 1;
                // `]` first in a class (`[]a]`, `[^]a]`) is a literal.
                chars.next_if_eq(&'^');
                chars.next_if_eq(&']');
            }
            ']' if classes > 0 => classes -= 1,
            '(' if classes == 0 => groups += 1,
            ')' if classes == 0 => groups = groups.saturating_sub(1),
            '|' if classes == 0 && groups == 0 => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests;
