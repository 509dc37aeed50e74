//! Strings other processes chose (command names, socket names, paths) in
//! human-readable output: a control character could move the reader's
//! cursor, recolour the terminal or ring its bell, so each is shown as
//! `\xNN`. JSON carries the exact value instead.

use std::borrow::Cow;

/// Appends `s` with every control character as `\xNN`.
pub fn push(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        if c.is_control() {
            push_hex(out, c as u32);
        } else {
            let mut b = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
}

/// Appends bytes that should be UTF-8 (a command name is whatever the
/// process wrote): control characters and invalid bytes as `\xNN`.
pub fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    for chunk in b.utf8_chunks() {
        push(out, chunk.valid());
        for &x in chunk.invalid() {
            push_hex(out, u32::from(x));
        }
    }
}

/// `s` as `push` would write it.
pub fn escaped(s: &str) -> Cow<'_, str> {
    if !needs_escape(s) {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len() + 8);
    push(&mut out, s);
    Cow::Owned(String::from_utf8(out).unwrap_or_default())
}

fn needs_escape(s: &str) -> bool {
    // C0 and DEL are ASCII; C1 controls start with 0xC2 in UTF-8.
    s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) && s.chars().any(char::is_control)
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
}
