//! ECR's tag patterns: `*` matches any run of characters (also none), everything else
//! matches itself, and a pattern must match the whole tag.

/// At most this many `*` in one pattern; AWS refuses more.
pub const MAX_WILDCARDS: usize = 4;

/// A `tagPatternList` entry, split at its wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPattern {
    /// The text between wildcards: `a*b*` is `["a", "b", ""]`.
    parts: Vec<String>,
}

impl TagPattern {
    /// The pattern; the caller has checked the wildcard count.
    pub fn new(pattern: &str) -> Self {
        TagPattern { parts: pattern.split('*').map(str::to_owned).collect() }
    }

    /// Whether the whole of `tag` matches. With only `*` as a wildcard, matching each
    /// literal part at its leftmost place is enough: a later place never helps.
    pub fn matches(&self, tag: &str) -> bool {
        let (first, rest) = self.parts.split_first().expect("split yields at least one part");
        let Some(mut tail) = tag.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return tail.is_empty(); // no wildcard: the whole tag is `first`
        };
        for part in middle {
            match tail.find(part.as_str()) {
                Some(at) => tail = &tail[at + part.len()..],
                None => return false,
            }
        }
        tail.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_any_run_and_the_rest_is_literal() {
        let table: &[(&str, &str, bool)] = &[
            ("prod", "prod", true),
            ("prod", "prod1", false),
            ("prod", "xprod", false),
            ("prod*", "prod", true),
            ("prod*", "prod-1", true),
            ("prod*", "pro", false),
            ("*prod", "my-prod", true),
            ("*prod", "prod-1", false),
            ("*", "", true),
            ("*", "anything", true),
            ("*test*1*2*3", "test123", true),
            ("*test*1*2*3", "a-test-1-2-3", true),
            ("*test*1*2*3", "a-test-1-2-3-x", false),
            ("test*1*2*3*", "test1x2y3z", true),
            ("a*a", "a", false), // the two literal parts cannot share the one `a`
            ("a*a", "aa", true),
            ("ab*bc", "abc", false),
            ("ab*bc", "abbc", true),
            ("v?.*", "v1.0", false), // `?` is no wildcard in ECR
            ("v?.*", "v?.0", true),
            ("Prod*", "prod", false), // case-sensitive
            ("é*", "été", true),
        ];
        for &(pattern, tag, want) in table {
            assert_eq!(TagPattern::new(pattern).matches(tag), want, "{pattern:?} against {tag:?}");
        }
    }
}
