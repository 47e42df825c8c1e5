//! Text from parties the operator does not control — plugins above all — made safe to
//! print.
//!
//! A plugin's reasons, log lines, error messages and stderr reach terminals and log files.
//! Printed raw, an ANSI escape sequence could recolour or erase what the host printed, a
//! carriage return or newline could fake a table row or a log line, and a bidirectional
//! override could reorder what a reader sees. [`escape`] writes every such character as a
//! visible escape (`\n`, `\u{1b}`) and leaves all other text alone, so ordinary reasons
//! read as they were written. JSON output is never passed through it: serde_json escapes
//! control characters itself, and programs get the exact text.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every character that could change how surrounding output looks written as
/// an escape; borrowed when there is none (the common case).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Like [`escape`], but keeps line breaks, each followed by `indent`: for multi-line text
/// (a plugin's stderr) shown under a line of the host's own, where every line the plugin
/// wrote is visibly part of the block and none can pass for a line of the host's.
pub fn escape_lines(s: &str, indent: &str) -> String {
    s.lines().map(|line| escape(line)).collect::<Vec<_>>().join(&format!("\n{indent}"))
}

/// Control characters (C0, DEL, C1), Unicode line and paragraph separators, and the
/// bidirectional formatting characters ("Trojan Source", CVE-2021-42574).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in ["keep_n: among the 5 most recent", "matched `^v\\d+$`", "é → ✓", ""] {
            assert!(matches!(escape(s), Cow::Borrowed(t) if t == s), "{s}");
        }
    }

    #[test]
    fn controls_newlines_and_bidi_overrides_become_visible() {
        assert_eq!(escape("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escape("\x1b[1;31mDELETE\x1b[0m"), "\\u{1b}[1;31mDELETE\\u{1b}[0m");
        assert_eq!(escape("x\u{202e}y\u{2028}z\u{7f}\u{9b}\0"), "x\\u{202e}y\\u{2028}z\\u{7f}\\u{9b}\\u{0}");
    }

    #[test]
    fn lines_stay_lines_under_an_indent() {
        assert_eq!(escape_lines("one\ntwo\x1b[2K\r\nthree", "    "), "one\n    two\\u{1b}[2K\n    three");
    }
}
