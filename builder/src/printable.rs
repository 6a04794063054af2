//! Text from inputs made safe to print: control characters are shown as escapes, never sent to
//! the terminal. A tar entry named `\x1b]0;…\x07` or a spec value holding `\x1b[2J` would
//! otherwise retitle or clear the terminal of whoever reads the error, and a newline could
//! forge a line of airlock's own output.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as is: C0 controls, DEL and C1 controls (which some
/// terminals read as escape sequences too).
fn is_control(c: char) -> bool {
    c.is_control()
}

/// `s` with every control character (newlines and tabs too) written as `\n`, `\t`, `\r` or
/// `\u{..}`; borrowed when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_except(s, &[])
}

/// Like [`escape`], but keeps `\n` and `\t`: for whole messages whose line structure is
/// airlock's own (the input-derived parts of them went through [`escape`] already).
pub fn escape_keeping_lines(s: &str) -> Cow<'_, str> {
    escape_except(s, &['\n', '\t'])
}

fn escape_except<'a>(s: &'a str, keep: &[char]) -> Cow<'a, str> {
    if !s.chars().any(|c| is_control(c) && !keep.contains(&c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_control(c) && !keep.contains(&c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        _ => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// Raw bytes (a path inside an archive) as text: UTF-8 where it is, `\xNN` for bytes that are
/// not, control characters escaped as in [`escape`].
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape("etc/hostname"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("x\ny\tz\r"), "x\\ny\\tz\\r");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("\x7f"), "\\u{7f}");
        assert_eq!(escape_keeping_lines("failed:\n  a\x1bb"), "failed:\n  a\\u{1b}b");
        assert_eq!(escape_bytes(b"ok/\xff\x1b/\xc3\xa9"), "ok/\\xff\\u{1b}/\u{e9}");
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_holds_no_control_character(s in ".*") {
            proptest::prop_assert!(!escape(&s).chars().any(char::is_control));
            let kept = escape_keeping_lines(&s);
            proptest::prop_assert!(!kept.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        }

        #[test]
        fn escaped_bytes_hold_no_control_character(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert!(!escape_bytes(&bytes).chars().any(char::is_control));
        }
    }
}
