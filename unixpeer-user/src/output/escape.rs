//! Strings other processes chose (command names, socket names, paths) in
//! human-readable output: a control character could move the reader's
//! cursor, recolour the terminal or ring its bell, and a bidirectional
//! override could make a terminal that supports bidi show the text in
//! another order, so each is shown as `\xNN`. JSON carries the exact value
//! instead.

use std::borrow::Cow;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whether `c` must be shown as `\xNN` rather than sent to a terminal: C0,
/// DEL, C1, and the Unicode bidi controls (embeddings, overrides, isolates,
/// marks), which reorder what follows them.
pub(crate) fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Appends `s` with every character `must_escape` names as `\xNN`.
pub(crate) fn push(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        if must_escape(c) {
            push_hex(out, c as u32);
        } else {
            let mut b = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
}

/// Appends bytes that should be UTF-8 (a command name is whatever the
/// process wrote): control characters and invalid bytes as `\xNN`.
pub(crate) fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    for chunk in b.utf8_chunks() {
        push(out, chunk.valid());
        for &x in chunk.invalid() {
            push_hex(out, u32::from(x));
        }
    }
}

/// `s` as `push` would write it.
pub(crate) fn escaped(s: &str) -> Cow<'_, str> {
    if !needs_escape(s) {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len() + 8);
    push(&mut out, s);
    into_string(out)
}

/// `b` as `push_bytes` would write it.
pub(crate) fn escaped_bytes(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => escaped(s),
        Err(_) => {
            let mut out = Vec::with_capacity(b.len() + 8);
            push_bytes(&mut out, b);
            into_string(out)
        }
    }
}

/// A path for a message: its bytes, not a lossy copy, so two paths that
/// differ only in invalid UTF-8 still read differently.
pub fn path(p: &Path) -> Cow<'_, str> {
    escaped_bytes(p.as_os_str().as_bytes())
}

/// An error and its causes on one line, `: ` between them, escaped like
/// `message`: they may quote names other processes chose.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    message(&s).into_owned()
}

/// One of our own messages, which may span lines on purpose (a verifier
/// log) but quotes what the kernel, a file or another process said: every
/// line escaped, the line breaks kept.
pub fn message(s: &str) -> Cow<'_, str> {
    if !s.split('\n').any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len() + 8);
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        push(&mut out, line);
    }
    into_string(out)
}

fn into_string(out: Vec<u8>) -> Cow<'static, str> {
    // `push` writes only ASCII and whole UTF-8 characters.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

fn needs_escape(s: &str) -> bool {
    // C0 and DEL are ASCII; C1 controls start with 0xC2 in UTF-8, U+061C
    // with 0xD8, the other bidi controls with 0xE2.
    s.bytes().any(|b| b < 0x20 || matches!(b, 0x7f | 0xc2 | 0xd8 | 0xe2)) && s.chars().any(must_escape)
}

fn push_hex(out: &mut Vec<u8>, v: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\x");
    if v > 0xff {
        out.push(HEX[(v >> 12) as usize & 0xf]);
        out.push(HEX[(v >> 8) as usize & 0xf]);
    }
    out.push(HEX[(v >> 4) as usize & 0xf]);
    out.push(HEX[v as usize & 0xf]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(escaped("ev\u{1b}[31mil\u{7}"), "ev\\x1b[31mil\\x07");
        assert_eq!(escaped("a\nb\tc\u{7f}\u{9b}"), "a\\x0ab\\x09c\\x7f\\x9b");
        assert!(matches!(escaped("/run/dbus/system_bus_socket"), Cow::Borrowed(_)));
        assert_eq!(escaped("héllo ©"), "héllo ©");
        let mut out = Vec::new();
        push_bytes(&mut out, b"a\xff\x1bb\xc3\xa9");
        assert_eq!(String::from_utf8(out).expect("ASCII and UTF-8 only"), "a\\xff\\x1bbé");
    }

    #[test]
    fn bidi_controls_cannot_reorder_a_line() {
        assert_eq!(escaped("txt.\u{202e}exe"), "txt.\\x202eexe");
        assert_eq!(escaped("a\u{2066}b\u{2069}\u{200f}\u{61c}"), "a\\x2066b\\x2069\\x200f\\x061c");
        // Other characters those lead bytes start stay as they are.
        assert!(matches!(escaped("€ “quoted” ؛"), Cow::Borrowed(_)));
    }

    #[test]
    fn bytes_and_paths_show_invalid_utf8() {
        assert_eq!(escaped_bytes(b"ok"), "ok");
        assert_eq!(escaped_bytes(b"x\xff\x07"), "x\\xff\\x07");
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/a\nb\xfe"));
        assert_eq!(path(p), "/tmp/a\\x0ab\\xfe");
    }

    #[test]
    fn messages_keep_their_own_line_breaks() {
        assert_eq!(message("log:\n  \u{1b}]0;x\u{7}\n"), "log:\n  \\x1b]0;x\\x07\n");
        assert!(matches!(message("two\nlines"), Cow::Borrowed(_)));
    }
}
