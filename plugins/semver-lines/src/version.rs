//! Semantic versions as tag names: `1.2.3`, `v1.2.3`, `1.2.3-rc.1`, `1.2.3+build.5`.

use std::cmp::Ordering;

/// A tag name read as a semantic version (semver.org 2.0.0, with an optional `v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version<'a> {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// The dot-separated pre-release identifiers; empty for a release.
    pub pre: Vec<&'a str>,
}

impl<'a> Version<'a> {
    /// `name` as a version, or `None` when it is not one. Build metadata (`+…`) is
    /// checked and ignored, as semver's precedence ignores it.
    pub fn parse(name: &'a str) -> Option<Self> {
        let text = name.strip_prefix('v').unwrap_or(name);
        let (text, build) = match text.split_once('+') {
            Some((text, build)) => (text, Some(build)),
            None => (text, None),
        };
        if let Some(build) = build
            && !build.split('.').all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return None;
        }
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let mut numbers = core.split('.').map(number);
        let (major, minor, patch) = (numbers.next()??, numbers.next()??, numbers.next()??);
        if numbers.next().is_some() {
            return None;
        }
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => {
                let ids: Vec<&str> = pre.split('.').collect();
                let valid = |id: &&str| {
                    !id.is_empty()
                        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !(id.len() > 1 && id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit()))
                };
                if !ids.iter().all(valid) {
                    return None;
                }
                ids
            }
        };
        Some(Version { major, minor, patch, pre })
    }

    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// The minor line, e.g. `(1, 2)` for `1.2.3`.
    pub fn line(&self) -> (u64, u64) {
        (self.major, self.minor)
    }

    /// Semver precedence: numbers, then a release above its pre-releases, then the
    /// pre-release identifiers (numeric below alphanumeric, numbers by value).
    pub fn precedence(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch)).then_with(|| {
            match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => compare_pre(&self.pre, &other.pre),
            }
        })
    }
}

/// A numeric identifier: digits, no leading zero (except `0` itself).
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

fn compare_pre(a: &[&str], b: &[&str]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = match (number(x), number(y)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_semver_with_an_optional_v() {
        let v = Version::parse("v1.20.3-rc.1+git.abc").unwrap();
        assert_eq!((v.major, v.minor, v.patch, v.pre.clone()), (1, 20, 3, vec!["rc", "1"]));
        assert_eq!(Version::parse("0.0.0").unwrap().line(), (0, 0));
        for bad in ["1.2", "1.2.3.4", "01.2.3", "1.2.3-", "1.2.3-rc..1", "1.2.3-01", "1.2.3+", "latest", "V1.2.3", "1.2.x", "-1.2.3", ""] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn precedence_follows_semver_org() {
        // The example chain of semver.org §11.
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "2.0.0",
        ];
        for pair in chain.windows(2) {
            let (a, b) = (Version::parse(pair[0]).unwrap(), Version::parse(pair[1]).unwrap());
            assert_eq!(a.precedence(&b), Ordering::Less, "{} < {}", pair[0], pair[1]);
            assert_eq!(b.precedence(&a), Ordering::Greater);
        }
        let (a, b) = (Version::parse("v1.0.0+a").unwrap(), Version::parse("1.0.0+b").unwrap());
        assert_eq!(a.precedence(&b), Ordering::Equal, "build metadata does not count");
    }
}
