//! JSON lines written by hand into a reused buffer: the live and recorded
//! event lines go out at hundreds of thousands a second, where a serde
//! serializer's per-field calls and `fmt` machinery were most of the cost.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `key` (already quoted, with its separator) and an integer.
pub fn int<I: itoa::Integer>(out: &mut Vec<u8>, key: &str, v: I) {
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A JSON string literal. Command names and paths come from other
/// processes: quotes, backslashes and control bytes must be escaped, and
/// nothing else is changed, so JSON carries the exact value.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
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

/// One JSON object, its keys written in the order the caller gives them.
pub struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    pub fn key(&mut self, k: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub fn int<I: itoa::Integer>(&mut self, k: &str, v: I) {
        let out = self.key(k);
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    pub fn opt_int<I: itoa::Integer>(&mut self, k: &str, v: Option<I>) {
        match v {
            Some(v) => self.int(k, v),
            None => self.key(k).extend_from_slice(b"null"),
        }
    }

    pub fn str(&mut self, k: &str, v: &str) {
        let out = self.key(k);
        json_str(out, v);
    }

    pub fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.key(k).extend_from_slice(b"null"),
        }
    }

    pub fn bool(&mut self, k: &str, v: bool) {
        self.key(k).extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// A kernel address as `"0x…"`, as `{:#x}` prints it.
    pub fn hex(&mut self, k: &str, v: u64) {
        let out = self.key(k);
        out.extend_from_slice(b"\"0x");
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
        }
        out.push(b'"');
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_serde_json_reads_back() {
        let mut out = Vec::new();
        let mut o = Obj::new(&mut out);
        o.int("a", -5i32);
        o.opt_int::<u32>("b", None);
        o.str("c", "q\"\\\n\u{1b}é");
        o.hex("d", 0xffff_8881_0000_1000);
        o.hex("e", 0);
        o.bool("f", true);
        o.end();
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["a"], -5);
        assert!(v["b"].is_null());
        assert_eq!(v["c"], "q\"\\\n\u{1b}é");
        assert_eq!(v["d"], "0xffff888100001000");
        assert_eq!(v["e"], "0x0");
        assert_eq!(v["f"], true);
    }
}
