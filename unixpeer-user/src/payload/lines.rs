//! `unixtrace capture` without `-w`: one line per message on stdout, as
//! tcpdump prints packets, with `-X` the first bytes in hex and ASCII; or
//! with `--json` one object per message, the bytes as exact hex.

use std::io::Write;

use serde_json::json;

use crate::output::{JSON_SCHEMA, escape};

/// One message as the lines show it.
pub(super) struct Shown<'a> {
    /// Seconds since the capture started.
    pub(super) since_start: f64,
    /// RFC 3339 wall-clock time.
    pub(super) time: String,
    pub(super) pid: u32,
    pub(super) comm: &'a str,
    pub(super) fd: i32,
    pub(super) inode: u64,
    pub(super) peer: Option<(u32, &'a str, i32)>,
    pub(super) peer_inode: u64,
    pub(super) path: Option<&'a str>,
    pub(super) call: &'static str,
    pub(super) len: u32,
    pub(super) data: &'a [u8],
}

/// Bytes a text dump shows per row, as tcpdump -X.
const ROW: usize = 16;

pub(super) fn write_text(out: &mut Vec<u8>, m: &Shown<'_>, hex: bool) {
    let _ = write!(out, "{:.6} ", m.since_start);
    escape::push(out, m.comm);
    let _ = write!(out, "[{}]:{} → ", m.pid, m.fd);
    match m.peer {
        Some((pid, comm, fd)) => {
            escape::push(out, comm);
            let _ = write!(out, "[{pid}]:{fd}");
        }
        None if m.peer_inode != 0 => {
            let _ = write!(out, "inode {}", m.peer_inode);
        }
        None => out.push(b'?'),
    }
    out.push(b' ');
    match m.path {
        Some(p) => escape::push(out, p),
        None => out.push(b'-'),
    }
    let _ = write!(out, " {} {} bytes", m.call, m.len);
    if (m.data.len() as u64) < u64::from(m.len) {
        let _ = write!(out, " ({} captured)", m.data.len());
    }
    out.push(b'\n');
    if hex {
        push_dump(out, m.data);
    }
}

/// `\t0x0000:  4745 5420 2f20 4854 5450 2f31 2e31 0d0a  GET./.HTTP/1.1..`
fn push_dump(out: &mut Vec<u8>, data: &[u8]) {
    for (row, chunk) in data.chunks(ROW).enumerate() {
        let _ = write!(out, "\t0x{:04x}:  ", row * ROW);
        for i in 0..ROW {
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02x}");
                }
                None => out.extend_from_slice(b"  "),
            }
            if i % 2 == 1 {
                out.push(b' ');
            }
        }
        out.push(b' ');
        // Visible ASCII only, as tcpdump: anything else could drive the terminal.
        out.extend(chunk.iter().map(|&b| if (0x21..0x7f).contains(&b) { b } else { b'.' }));
        out.push(b'\n');
    }
}

pub(super) fn write_json(out: &mut Vec<u8>, m: &Shown<'_>, hex: bool) {
    let data_hex = hex.then(|| m.data.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let v = json!({
        "kind": "message", "schema": JSON_SCHEMA, "ts": m.since_start, "time": m.time,
        "pid": m.pid, "comm": m.comm, "fd": m.fd, "inode": m.inode,
        "peer_pid": m.peer.map(|p| p.0), "peer_comm": m.peer.map(|p| p.1), "peer_fd": m.peer.map(|p| p.2),
        "peer_inode": (m.peer_inode != 0).then_some(m.peer_inode),
        "path": m.path, "call": m.call, "len": m.len, "captured": m.data.len(),
        "truncated": (m.data.len() as u64) < u64::from(m.len), "data_hex": data_hex,
    });
    let _ = writeln!(out, "{v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown<'a>(data: &'a [u8], comm: &'a str) -> Shown<'a> {
        Shown {
            since_start: 1.5,
            time: "2026-12-04T12:00:00.000000Z".into(),
            pid: 7,
            comm,
            fd: 3,
            inode: 11,
            peer: Some((9, "server", 4)),
            peer_inode: 12,
            path: Some("/run/app.sock"),
            call: "write",
            len: 40,
            data,
        }
    }

    #[test]
    fn hex_and_ascii_like_tcpdump_with_nothing_that_drives_a_terminal() {
        let mut out = Vec::new();
        write_text(&mut out, &shown(b"GET / HTTP/1.1\r\n\x1b[2J", "curl\x1b"), true);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "1.500000 curl\\x1b[7]:3 → server[9]:4 /run/app.sock write 40 bytes (20 captured)");
        assert_eq!(lines[1], "\t0x0000:  4745 5420 2f20 4854 5450 2f31 2e31 0d0a  GET./.HTTP/1.1..");
        assert_eq!(lines[2], "\t0x0010:  1b5b 324a                                .[2J");
        assert!(!text.contains('\x1b'), "{text:?}");
    }

    #[test]
    fn json_carries_the_exact_bytes() {
        let mut out = Vec::new();
        write_json(&mut out, &shown(b"\x00\xffok", "c"), true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["data_hex"].as_str(), v["captured"].as_u64(), v["truncated"].as_bool()),
            (Some("00ff6f6b"), Some(4), Some(true))
        );
        let mut out = Vec::new();
        write_json(&mut out, &shown(b"x", "c"), false);
        assert!(serde_json::from_slice::<serde_json::Value>(&out).unwrap()["data_hex"].is_null());
    }
}
