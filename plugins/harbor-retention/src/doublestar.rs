//! Harbor's tag and repository patterns: `Match` of bmatcuk/doublestar v1.3.4, the
//! library Harbor's `doublestar` selector calls, reimplemented here with the same
//! results, quirks included (tested case by case in `tests`).
//!
//! Syntax: `*` any run within one `/`-separated component, `**` as a whole component any
//! number of components, `?` one character, `[a-z]` / `[^a-z]` a class (`^` negates; `!`
//! does not), `{a,b}` alternatives (nestable), `\x` a literal `x`. Tags never contain `/`,
//! so for them `*` and `**` mean the same.
//!
//! doublestar reports a malformed pattern only when matching reaches the bad part, and
//! Harbor then fails the whole run. [`check`] finds every such error up front, so that a
//! policy is refused when it is created instead.

/// A malformed pattern (doublestar's `ErrBadPattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPattern;

/// Whether `name` (a tag, or a repository path with `/`) matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let components: Vec<&str> = split_on_slash(name);
    do_matching(pattern, &components)
}

/// Refuses a pattern that doublestar would reject on some input: an unclosed `[` or `{`,
/// an empty class, a class range without an end, a `-` where a class expects a
/// character, or a `\` at the very end.
pub fn check(pattern: &str) -> Result<(), BadPattern> {
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match c {
            '\\' => {
                let escaped = after.chars().next().ok_or(BadPattern)?;
                rest = &after[escaped.len_utf8()..];
            }
            '[' => {
                let end = index_with_escaping(after, ']').ok_or(BadPattern)?;
                let class: Vec<char> = after[..end].chars().collect();
                class_matches(&class, '\0')?;
                rest = &after[end + 1..];
            }
            '{' => {
                let (options, end) = split_alternatives(after).ok_or(BadPattern)?;
                // Each alternative is matched as `option + rest`; check each the same way.
                for option in options {
                    check(&format!("{option}{}", &after[end..]))?;
                }
                return Ok(());
            }
            _ => rest = after,
        }
    }
    Ok(())
}

/// `name` split at every unescaped `/`, as doublestar splits names (a trailing `/` gives
/// an empty last component).
fn split_on_slash(name: &str) -> Vec<&str> {
    if !name.contains('/') {
        return vec![name];
    }
    let mut components = Vec::new();
    let mut start = 0;
    let mut empty_end = false;
    while start < name.len() {
        match index_with_escaping(&name[start..], '/') {
            Some(end) => {
                components.push(&name[start..start + end]);
                start += end + 1;
                empty_end = true;
            }
            None => {
                components.push(&name[start..]);
                start = name.len();
                empty_end = false;
            }
        }
    }
    if empty_end {
        components.push("");
    }
    components
}

/// The first `r` in `s` not preceded by a `\` (doublestar's `indexRuneWithEscaping`).
fn index_with_escaping(s: &str, r: char) -> Option<usize> {
    let end = s.find(r)?;
    if end > 0 && s.as_bytes()[end - 1] == b'\\' {
        let start = end + r.len_utf8();
        return index_with_escaping(&s[start..], r).map(|e| e + start);
    }
    Some(end)
}

fn do_matching(pattern: &str, names: &[&str]) -> Result<bool, BadPattern> {
    if pattern.is_empty() {
        return Ok(names.is_empty() || (names.len() == 1 && names[0].is_empty()));
    }
    if names.is_empty() {
        return Ok(false);
    }
    let slash = index_with_escaping(pattern, '/');
    let head = &pattern[..slash.unwrap_or(pattern.len())];
    if head == "**" {
        let Some(slash) = slash else {
            return Ok(true); // a final `**` matches whatever is left
        };
        for i in 0..names.len() {
            // doublestar ignores errors from these attempts.
            if do_matching(&pattern[slash + 1..], &names[i..]).unwrap_or(false) {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    let Some(rests) = match_component(pattern, names[0])? else {
        return Ok(false);
    };
    if rests.is_empty() && names.len() == 1 {
        return Ok(true);
    }
    if names.len() > 1 {
        for rest in rests {
            if do_matching(&rest, &names[1..])? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Matches one name component. `None`: no match. `Some(rests)`: a match, with what is
/// left of the pattern for the next components (empty when the pattern is used up).
fn match_component(pattern: &str, name: &str) -> Result<Option<Vec<String>>, BadPattern> {
    let (mut p, mut n) = (0, 0);
    while p < pattern.len() && n < name.len() {
        let pc = pattern[p..].chars().next().expect("in range");
        let nc = name[n..].chars().next().expect("in range");
        match pc {
            '/' => {
                p += 1;
                break;
            }
            '\\' => {
                p += 1;
                let escaped = pattern[p..].chars().next().ok_or(BadPattern)?;
                if escaped != nc {
                    return Ok(None);
                }
                p += escaped.len_utf8();
                n += nc.len_utf8();
            }
            '*' => {
                p += 1;
                if p >= pattern.len() {
                    return Ok(Some(Vec::new()));
                }
                if pattern.as_bytes()[p] == b'/' {
                    return Ok(Some(vec![pattern[p + 1..].to_owned()]));
                }
                // Every non-empty remainder of the name, shortest skip first.
                while n < name.len() {
                    if let Some(m) = match_component(&pattern[p..], &name[n..])? {
                        return Ok(Some(m));
                    }
                    n += name[n..].chars().next().expect("in range").len_utf8();
                }
                return Ok(None);
            }
            '[' => {
                p += 1;
                let end = index_with_escaping(&pattern[p..], ']').ok_or(BadPattern)? + p;
                let class: Vec<char> = pattern[p..end].chars().collect();
                if !class_matches(&class, nc)? {
                    return Ok(None);
                }
                p = end + 1;
                n += nc.len_utf8();
            }
            '{' => {
                p += 1;
                let (options, end) = split_alternatives(&pattern[p..]).ok_or(BadPattern)?;
                p += end;
                let mut all: Option<Vec<String>> = None;
                for option in options {
                    if let Some(m) = match_component(&format!("{option}{}", &pattern[p..]), &name[n..])? {
                        all.get_or_insert_with(Vec::new).extend(m);
                    }
                }
                return Ok(all);
            }
            '?' => {
                p += 1;
                n += nc.len_utf8();
            }
            _ if pc == nc => {
                p += pc.len_utf8();
                n += nc.len_utf8();
            }
            _ => return Ok(None),
        }
    }
    if n < name.len() {
        return Ok(None);
    }
    if p >= pattern.len() {
        return Ok(Some(Vec::new()));
    }
    // The name is used up: what is left of this component must be able to match nothing.
    let rest = &pattern[p..];
    let slash = index_with_escaping(rest, '/');
    if is_zero_length(&rest[..slash.unwrap_or(rest.len())])? {
        return Ok(Some(match slash {
            None => Vec::new(),
            Some(s) => vec![rest[s + 1..].to_owned()],
        }));
    }
    Ok(None)
}

/// Whether `c` is in the class `[class]` (`class` without the brackets). Errors as
/// doublestar does: an empty class, a `-` where a character is expected, a range or
/// escape without its end.
fn class_matches(class: &[char], c: char) -> Result<bool, BadPattern> {
    if class.is_empty() {
        return Err(BadPattern);
    }
    let negated = class[0] == '^';
    let mut i = usize::from(negated);
    let mut found = false;
    while i < class.len() {
        let mut low = class[i];
        if low == '-' {
            return Err(BadPattern);
        }
        i += 1;
        if low == '\\' {
            low = *class.get(i).ok_or(BadPattern)?;
            i += 1;
        }
        let mut high = low;
        if class.get(i) == Some(&'-') {
            i += 1;
            high = *class.get(i).ok_or(BadPattern)?;
            if high == '-' {
                return Err(BadPattern);
            }
            i += 1;
            if high == '\\' {
                high = *class.get(i).ok_or(BadPattern)?;
                i += 1;
            }
        }
        if low <= c && c <= high {
            found = true;
        }
    }
    Ok(found != negated)
}

/// Splits `{a,b}` alternatives; `s` starts just after the `{`. Returns the options and the
/// offset just past the closing `}`, or `None` when it is never closed.
fn split_alternatives(s: &str) -> Option<(Vec<&str>, usize)> {
    let mut options = Vec::new();
    let mut depth = 1;
    let mut escaped = false;
    let mut start = 0;
    let mut chars = s.char_indices();
    while depth > 0 {
        let (i, c) = chars.next()?;
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '{' {
            depth += 1;
        } else if c == '}' {
            depth -= 1;
            if depth == 0 {
                options.push(&s[start..i]);
                return Some((options, i + 1));
            }
        } else if c == ',' && depth == 1 {
            options.push(&s[start..i]);
            start = i + 1;
        }
    }
    unreachable!("the loop returns when depth reaches 0")
}

/// Whether a component pattern can match the empty string, as doublestar decides it:
/// only `""`, `*`, `**`, or alternatives (followed by such a pattern) of which one can.
fn is_zero_length(pattern: &str) -> Result<bool, BadPattern> {
    if pattern.is_empty() || pattern == "*" || pattern == "**" {
        return Ok(true);
    }
    if let Some(after) = pattern.strip_prefix('{') {
        let (options, end) = split_alternatives(after).ok_or(BadPattern)?;
        if !is_zero_length(&after[end..])? {
            return Ok(false);
        }
        for option in options {
            if is_zero_length(option)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_as_doublestar_v1_does() {
        // (pattern, name, matches); most rows are doublestar v1.3.4's own test cases.
        let table: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "/", false),
            ("/*", "/", true),
            ("/*", "/debug/", false),
            ("/*", "//", false),
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("*/", "a/", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*", "axbxcxdxe", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("a?b", "a?b", true),
            ("[!a]", "b", false), // `!` does not negate in doublestar v1
            ("[!a]", "!", true),
            ("**", "", true),
            ("a/**", "a", false),
            ("a/**", "a/", true),
            ("a/**", "a/b", true),
            ("a/**", "a/b/c", true),
            ("**/c", "c", true),
            ("**/c", "b/c", true),
            ("**/c", "a/b/c", true),
            ("**/c", "a/b", false),
            ("**/c", "abcd", false),
            ("**/c", "a/abc", false),
            ("a/**/b", "a/b", true),
            ("a/**/c", "a/b/c", true),
            ("a/**/d", "a/b/c/d", true),
            ("a/\\**", "a/b/c", false),
            ("ab{c,d}", "abc", true),
            ("ab{c,d,*}", "abcde", true),
            ("a{,bc}", "a", true),
            ("a{,bc}", "abc", true),
            ("a/{b/c,c/b}", "a/b/c", true),
            ("a/{b/c,c/b}", "a/c/b", true),
            ("{a/{b,c},abc}", "a/b", true),
            ("{a/{b,c},abc}", "abc", true),
            ("{a/{b,c},abc}", "a/b/c", false),
            ("a//b/c", "a/b/c", false),
            ("a/b/c", "a/b//c", false),
            ("a/", "a", false),
            ("abc**", "abc/b", false),
            ("**/*.txt", "abc/【test】.txt", true),
            ("*x", "xxx", true),
            ("a[", "a", false),
            ("abc**", "abc", true),
            ("**abc", "abc", true),
            ("abc*", "abc/", false),
            ("{a,b}", "a", true),
            ("{a,b}", "c", false),
            ("v{1,2}.*", "v1.0", true),
            ("v1{,-rc}", "v1", true),
            ("*{,x}", "ab", false), // a quirk: `*` never tries to leave nothing for the rest
            ("a*{,x}", "a", false),
            ("release-*", "release-1.2", true),
            ("**", "latest", true),
            ("{latest,stable}", "stable", true),
            ("[0-9]*", "1.0", true),
            ("[0-9]*", "v1", false),
        ];
        for &(pattern, name, want) in table {
            assert_eq!(matches(pattern, name), Ok(want), "{pattern:?} against {name:?}");
        }
    }

    #[test]
    fn malformed_patterns_are_found_up_front() {
        for bad in ["[", "a[", "[]a]", "[-]", "[x-]", "[-x]", "ab{c,d", "a\\", "[a-\\", "{a,[}", "x{a,b}[z"] {
            assert_eq!(check(bad), Err(BadPattern), "{bad:?}");
        }
        for good in ["*", "**", "a\\*b", "[\\]a]", "{a,b}", "v{1,{2,3}}", "[^a-z]", "**/c", "{,x}"] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
        // doublestar reports it only when a name reaches the bad part.
        assert_eq!(matches("ab{c,d}[", "abcd"), Err(BadPattern));
        assert_eq!(matches("[a-b-c]", "a"), Err(BadPattern));
        assert_eq!(matches("\\", "a"), Err(BadPattern));
        assert_eq!(matches("ab[", "abc"), Err(BadPattern));
        assert_eq!(matches("ab[", "xyz"), Ok(false));
    }
}
