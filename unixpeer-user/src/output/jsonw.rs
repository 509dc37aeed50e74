//! JSON lines written by hand into a reused buffer: the live and recorded
//! event lines go out at hundreds of thousands a second, where a serde
//! serializer's per-field calls and `fmt` machinery were most of the cost.

const HEX: &[u8; 16] = b"0123456789abcdef";
const PAIRS: &[u8; 200] =
    b"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
    5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// `key` (already quoted, with its separator) and an integer.
#[inline(always)]
pub(crate) fn int<I: Int>(out: &mut Vec<u8>, key: &str, v: I) {
    out.extend_from_slice(key.as_bytes());
    push_int(out, v);
}

/// The integers lines carry.
pub(crate) trait Int: Copy {
    /// Whether it is negative, and its magnitude.
    fn split(self) -> (bool, u64);
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(impl Int for $t {
        #[inline(always)]
        fn split(self) -> (bool, u64) { (false, self as u64) }
    })*};
}
macro_rules! signed {
    ($($t:ty),*) => {$(impl Int for $t {
        #[inline(always)]
        fn split(self) -> (bool, u64) { (self < 0, self.unsigned_abs() as u64) }
    })*};
}
unsigned!(u8, u16, u32, u64, usize);
signed!(i32, i64);

/// An integer in decimal, its digits written straight into `out`, two per
/// division, right to left: a scratch array copied afterwards stalled on
/// store forwarding, and a copy of the digits' own length was a call to
/// memmove for every number of every line.
#[inline(always)]
pub(crate) fn push_int(out: &mut Vec<u8>, v: impl Int) {
    let (negative, mut n) = v.split();
    if negative {
        out.push(b'-');
    }
    let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
    out.reserve(digits);
    let len = out.len();
    // SAFETY: `reserve` made room for `digits` bytes past `len`; every one
    // of them is written below (the loop writes pairs from the end, the
    // last one or two digits go first), then set_len keeps exactly those.
    unsafe {
        let dst = out.as_mut_ptr().add(len);
        let mut end = digits;
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            end -= 2;
            std::ptr::copy_nonoverlapping(PAIRS.as_ptr().add(pair), dst.add(end), 2);
        }
        if n >= 10 {
            std::ptr::copy_nonoverlapping(PAIRS.as_ptr().add(n as usize * 2), dst, 2);
        } else {
            *dst = b'0' + n as u8;
        }
        out.set_len(len + digits);
    }
}

/// Bytes a JSON string cannot carry as they are.
const ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

/// A JSON string literal. Command names and paths come from other
/// processes: quotes, backslashes and control bytes must be escaped, and
/// nothing else is changed, so JSON carries the exact value.
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // A table load per byte rather than four comparisons: json_str's share
    // of the JSON consumer's profile fell from 11% to 7%.
    let Some(first) = bytes.iter().position(|&b| ESCAPED[usize::from(b)]) else {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    };
    out.extend_from_slice(&bytes[..first]);
    let mut start = first;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

// The helpers below take `key` as the literal that precedes the value,
// separator included (`",\"fd\":"`): inlined, each literal becomes a few
// stores instead of a call to memmove.

#[inline(always)]
pub(crate) fn opt_int<I: Int>(out: &mut Vec<u8>, key: &str, v: Option<I>) {
    match v {
        Some(v) => int(out, key, v),
        None => null(out, key),
    }
}

#[inline(always)]
pub(crate) fn null(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"null");
}

#[inline(always)]
pub(crate) fn str(out: &mut Vec<u8>, key: &str, v: &str) {
    out.extend_from_slice(key.as_bytes());
    json_str(out, v);
}

#[inline(always)]
pub(crate) fn opt_str(out: &mut Vec<u8>, key: &str, v: Option<&str>) {
    match v {
        Some(v) => str(out, key, v),
        None => null(out, key),
    }
}

#[inline(always)]
pub(crate) fn bool(out: &mut Vec<u8>, key: &str, v: bool) {
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// A kernel address as `"0x…"`, as `{:#x}` prints it.
#[inline(always)]
pub(crate) fn hex(out: &mut Vec<u8>, key: &str, v: u64) {
    out.extend_from_slice(key.as_bytes());
    let mut b = *b"\"0x0000000000000000\"";
    for (i, byte) in v.to_be_bytes().iter().enumerate() {
        b[3 + 2 * i] = HEX[usize::from(byte >> 4)];
        b[4 + 2 * i] = HEX[usize::from(byte & 0xf)];
    }
    // Leading zeros go, but one digit stays.
    let skip = ((v.leading_zeros() / 4) as usize).min(15);
    b[2 + skip] = b'x';
    b[1 + skip] = b'0';
    b[skip] = b'"';
    out.extend_from_slice(&b[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_print_as_display_does() {
        for v in [0u64, 1, 9, 10, 99, 12345, u64::from(u32::MAX), u64::MAX] {
            let mut out = b"x".to_vec();
            push_int(&mut out, v);
            assert_eq!(out, format!("x{v}").into_bytes());
        }
        for v in [0i64, -1, -10, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            push_int(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
    }

    #[test]
    fn writes_what_serde_json_reads_back() {
        let mut out = Vec::new();
        int(&mut out, "{\"a\":", -5i32);
        opt_int::<u32>(&mut out, ",\"b\":", None);
        str(&mut out, ",\"c\":", "q\"\\\n\u{1b}é");
        hex(&mut out, ",\"d\":", 0xffff_8881_0000_1000);
        hex(&mut out, ",\"e\":", 0);
        bool(&mut out, ",\"f\":", true);
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["a"], -5);
        assert!(v["b"].is_null());
        assert_eq!(v["c"], "q\"\\\n\u{1b}é");
        assert_eq!(v["d"], "0xffff888100001000");
        assert_eq!(v["e"], "0x0");
        assert_eq!(v["f"], true);
    }
}
