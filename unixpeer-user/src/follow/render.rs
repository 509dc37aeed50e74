//! Event lines for people and JSON Lines for tools.

use std::io::Write as _;

use serde_json::{Value, json};
use unixpeer_common::EventKind;

use super::{Holder, Peer, Resolved};
use crate::{
    events::{Inferred, event_name},
    identity::{Container, Identity, Processes},
    output::{
        JSON_SCHEMA, escape,
        jsonw::{bool, hex, int, null, opt_int, opt_str, str},
    },
};

/// Maps CLOCK_MONOTONIC event times to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Monotonic time at which capture started.
    pub start_mono_ns: u64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns.
    pub wall_offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let wall = clock_ns(libc::CLOCK_REALTIME);
        Self { start_mono_ns: mono, wall_offset_ns: i128::from(wall) - i128::from(mono) }
    }

    pub(crate) fn wall_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.wall_offset_ns
    }

    /// `HH:MM:SS.uuuuuu` in UTC.
    #[cfg(test)]
    pub(crate) fn wall_hms(&self, mono_ns: u64) -> String {
        let mut s = Vec::with_capacity(15);
        self.push_wall_hms(&mut s, mono_ns);
        String::from_utf8(s).unwrap_or_default()
    }

    fn push_wall_hms(&self, out: &mut Vec<u8>, mono_ns: u64) {
        let ns = self.wall_ns(mono_ns).max(0) as u128;
        let secs = (ns / 1_000_000_000) as u64;
        let us = ((ns % 1_000_000_000) / 1000) as u64;
        push_padded(out, (secs / 3600) % 24, 2);
        out.push(b':');
        push_padded(out, (secs / 60) % 60, 2);
        out.push(b':');
        push_padded(out, secs % 60, 2);
        out.push(b'.');
        push_padded(out, us, 6);
    }

    /// `2026-11-27T11:40:00.123456Z`.
    pub(crate) fn rfc3339(&self, mono_ns: u64) -> String {
        let mut s = Vec::with_capacity(27);
        self.push_rfc3339(&mut s, mono_ns);
        String::from_utf8(s).unwrap_or_default()
    }

    pub(crate) fn push_rfc3339(&self, out: &mut Vec<u8>, mono_ns: u64) {
        thread_local! {
            /// The last second formatted, `YYYY-MM-DDTHH:MM:SS`: events come
            /// thousands to the second, and the date is most of the work.
            static LAST: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
        }
        let ns = self.wall_ns(mono_ns).max(0) as u128;
        let secs = (ns / 1_000_000_000) as u64;
        let us = ((ns % 1_000_000_000) / 1000) as u64;
        let (last, mut text) = LAST.get();
        if last != secs {
            let mut v = Vec::with_capacity(19);
            let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
            let (y, m, d) = civil_from_days(days);
            push_padded(&mut v, y.max(0) as u64, 4);
            v.push(b'-');
            push_padded(&mut v, u64::from(m), 2);
            v.push(b'-');
            push_padded(&mut v, u64::from(d), 2);
            v.push(b'T');
            push_padded(&mut v, rem / 3600, 2);
            v.push(b':');
            push_padded(&mut v, (rem / 60) % 60, 2);
            v.push(b':');
            push_padded(&mut v, rem % 60, 2);
            match <[u8; 19]>::try_from(v.as_slice()) {
                Ok(t) => {
                    text = t;
                    LAST.set((secs, text));
                }
                // A year past 9999: not cached.
                Err(_) => {
                    out.extend_from_slice(&v);
                    out.push(b'.');
                    push_padded(out, us, 6);
                    out.push(b'Z');
                    return;
                }
            }
        }
        out.extend_from_slice(&text);
        out.push(b'.');
        push_padded(out, us, 6);
        out.push(b'Z');
    }

    /// Seconds since the start as `{:.6}` prints them, without a float.
    fn push_relative(&self, out: &mut Vec<u8>, mono_ns: u64) {
        let (sign, delta) = match mono_ns.checked_sub(self.start_mono_ns) {
            Some(d) => ("", d),
            None => ("-", self.start_mono_ns - mono_ns),
        };
        let us = (delta + 500) / 1000;
        out.extend_from_slice(sign.as_bytes());
        push_int(out, us / 1_000_000);
        out.push(b'.');
        push_padded(out, us % 1_000_000, 6);
    }
}

use crate::output::jsonw::push_int;

/// `v` with leading zeros to `width` digits.
fn push_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let digits = v.checked_ilog10().unwrap_or(0) as usize + 1;
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits)));
    push_int(out, v);
}

/// Pads what was written since `from` with spaces to `width` characters.
fn pad_to(out: &mut Vec<u8>, from: usize, width: usize) {
    let written = &out[from..];
    let chars = if written.is_ascii() { written.len() } else { String::from_utf8_lossy(written).chars().count() };
    out.extend(std::iter::repeat_n(b' ', width.saturating_sub(chars)));
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// algorithm), so timestamps need no date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn errno_name(errno: i32) -> std::borrow::Cow<'static, str> {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EISCONN => "EISCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOMEM => "ENOMEM",
        libc::ENOBUFS => "ENOBUFS",
        libc::EALREADY => "EALREADY",
        _ => return format!("errno {errno}").into(),
    };
    name.into()
}

fn push_holder(out: &mut Vec<u8>, h: &Holder) {
    push_int(out, h.pid);
    out.push(b'/');
    escape::push_bytes(out, h.comm.as_bytes());
    if let Some(fd) = h.fd {
        out.push(b':');
        push_int(out, fd);
    }
}

fn push_peer(out: &mut Vec<u8>, peer: &Peer) {
    match peer {
        Peer::Holders(hs) => match hs.first() {
            Some(h) => {
                push_holder(out, h);
                if hs.len() > 1 {
                    out.extend_from_slice(b" +");
                    push_int(out, hs.len() - 1);
                }
            }
            None => out.push(b'?'),
        },
        Peer::Listener(h) => {
            push_holder(out, h);
            out.extend_from_slice(b" (listening)");
        }
        Peer::Unknown => out.push(b'?'),
    }
}

pub(crate) const TEXT_HEADER: &str =
    "TIME             EVENT          PROCESS                      PEER                              TYPE       PATH";

/// The process at the other end, as the PEER column names it.
fn peer_pid(peer: &Peer) -> Option<u32> {
    match peer {
        Peer::Holders(hs) => hs.first().map(|h| h.pid),
        Peer::Listener(h) => Some(h.pid),
        Peer::Unknown => None,
    }
}

/// `  [unit or container → the peer's]`, when either is known.
fn push_tags(out: &mut Vec<u8>, r: &Resolved, ids: &Processes) {
    let own = ids.get(r.event.pid);
    let peer = if r.event.kind == EventKind::Listen { None } else { peer_pid(&r.peer).and_then(|p| ids.get(p)) };
    let shown = |id: Option<&Identity>| id.is_some_and(|i| i.container.is_some() || i.unit.is_some());
    if !shown(own) && !shown(peer) {
        return;
    }
    out.extend_from_slice(b"  [");
    if !own.is_some_and(|i| i.push_tag(out)) {
        out.push(b'-');
    }
    if let Some(p) = peer.filter(|p| shown(Some(p))) {
        out.extend_from_slice(" \u{2192} ".as_bytes());
        p.push_tag(out);
    }
    out.push(b']');
}

/// One line for people, appended to `out`. Every string another process
/// chose (command, path, unit, container) is escaped.
pub(crate) fn write_text(out: &mut Vec<u8>, r: &Resolved, clock: &Clock, wall: bool, ids: &Processes) {
    let e = &r.event;
    out.reserve(512);
    let mut col = out.len();
    if wall {
        clock.push_wall_hms(out, e.ts_ns);
    } else {
        clock.push_relative(out, e.ts_ns);
    }
    pad_to(out, col, 16);
    out.push(b' ');
    col = out.len();
    out.extend_from_slice(event_name(e.kind).as_bytes());
    pad_to(out, col, 14);
    out.push(b' ');
    col = out.len();
    push_holder(out, &Holder::of(e.pid, e.comm, e.fd));
    if e.kind == EventKind::Socketpair
        && let Some(fd) = e.peer_fd
    {
        out.push(b',');
        push_int(out, fd);
    }
    pad_to(out, col, 28);
    out.push(b' ');
    col = out.len();
    if e.kind != EventKind::Listen {
        push_peer(out, &r.peer);
    }
    pad_to(out, col, 33);
    out.push(b' ');
    col = out.len();
    out.extend_from_slice(e.sock_type.as_str().as_bytes());
    pad_to(out, col, 10);
    out.push(b' ');
    match &e.path {
        Some(p) => escape::push(out, p),
        None => out.push(b'-'),
    }
    if let Some(p) = &e.passed {
        push_passed(out, p);
    }
    if e.errno != 0 {
        out.extend_from_slice(b"  ");
        out.extend_from_slice(errno_name(e.errno).as_bytes());
    }
    if let Some(how) = e.inferred.map(Inferred::as_str) {
        out.extend_from_slice(b"  (released by ");
        out.extend_from_slice(how.as_bytes());
        out.push(b')');
    }
    if let Some(child) = e.child_pid {
        out.extend_from_slice(b"  child ");
        push_int(out, child);
    }
    // A listener, or a socket that moved nothing: JSON says 0, a line need not.
    if let Some(t) = e.traffic.as_ref().filter(|t| t.msgs_sent + t.msgs_received > 0) {
        out.extend_from_slice(b"  ");
        push_traffic(out, t);
    }
    push_sent_to(out, &e.sent_to);
    push_tags(out, r, ids);
    out.push(b'\n');
}

/// "  passed memfd \"memfd:shm\" inode 42", then whether it arrived.
fn push_passed(out: &mut Vec<u8>, p: &crate::events::Passed) {
    out.extend_from_slice(b"  passed ");
    out.extend_from_slice(p.kind().as_bytes());
    if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
        out.extend_from_slice(b" \"");
        escape::push(out, name);
        out.push(b'"');
    }
    out.extend_from_slice(b" inode ");
    push_int(out, p.file.inode);
    if p.file.peer_inode != 0 {
        out.extend_from_slice(b" peer ");
        push_int(out, p.file.peer_inode);
    }
    match p.received {
        Some(true) => {}
        Some(false) => out.extend_from_slice(b"  never received (receiving socket closed)"),
        None => out.extend_from_slice(b"  receipt not seen"),
    }
}

/// "3 msgs / 1.2 KiB sent, 5 msgs / 48 KiB received".
pub(crate) fn push_traffic(out: &mut Vec<u8>, t: &crate::events::Traffic) {
    for (i, (msgs, bytes, way)) in
        [(t.msgs_sent, t.bytes_sent, " sent"), (t.msgs_received, t.bytes_received, " received")].into_iter().enumerate()
    {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        push_int(out, msgs);
        out.extend_from_slice(if msgs == 1 { b" msg / " } else { b" msgs / " });
        push_bytes_size(out, bytes);
        out.extend_from_slice(way.as_bytes());
    }
}

/// "; to /run/x.sock journald[1]: 3 msgs / 60 B" per receiver, the first few.
fn push_sent_to(out: &mut Vec<u8>, sent_to: &[crate::events::DgramTotal]) {
    const SHOWN: usize = 3;
    for d in sent_to.iter().take(SHOWN) {
        out.extend_from_slice(b"; to ");
        match &d.path {
            Some(p) => escape::push(out, p),
            None => push_int(out, d.receiver),
        }
        if let Some(h) = d.holder {
            out.push(b' ');
            escape::push(out, &h.comm.to_str());
            out.push(b'[');
            push_int(out, h.pid);
            out.push(b']');
        }
        out.extend_from_slice(b": ");
        push_int(out, d.msgs);
        out.extend_from_slice(if d.msgs == 1 { b" msg / " } else { b" msgs / " });
        push_bytes_size(out, d.bytes);
    }
    if sent_to.len() > SHOWN {
        let _ = write!(out, "; +{} more", sent_to.len() - SHOWN);
    }
}

/// Bytes as people read them: exact below 1 KiB, else one decimal in
/// binary units (as `ls -lh` and `ss` print them).
pub(crate) fn push_bytes_size(out: &mut Vec<u8>, bytes: u64) {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        push_int(out, bytes);
        out.extend_from_slice(b" B");
        return;
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let _ = if value < 10.0 {
        write!(out, "{value:.1} {}", UNITS[unit])
    } else {
        write!(out, "{value:.0} {}", UNITS[unit])
    };
}

/// One event as a JSON line, appended to `out`. Keys in alphabetical order
/// and always present (null when unknown), as docs/json-schema.md lists
/// them: tools may diff outputs.
pub(crate) fn write_json(out: &mut Vec<u8>, r: &Resolved, clock: &Clock, ids: &Processes) {
    let e = &r.event;
    let (peer_pid, peer_comm, peer_fd, peer_holders) = match &r.peer {
        Peer::Holders(hs) => {
            let first = hs.first();
            (first.map(|h| h.pid), first.map(|h| h.comm.to_str()), first.and_then(|h| h.fd), Some(hs.as_slice()))
        }
        Peer::Listener(h) => (Some(h.pid), Some(h.comm.to_str()), h.fd, None),
        Peer::Unknown => (None, None, None, None),
    };
    // One growth check for the whole line instead of one per field.
    out.reserve(1024);
    let t = e.traffic.as_ref();
    opt_int(out, "{\"bytes_received\":", t.map(|t| t.bytes_received));
    opt_int(out, ",\"bytes_sent\":", t.map(|t| t.bytes_sent));
    opt_int(out, ",\"child_pid\":", e.child_pid);
    str(out, ",\"comm\":", &e.comm.to_str());
    let own = ids.get(e.pid);
    let peer = peer_pid.and_then(|p| ids.get(p));
    container(out, ",\"container\":", own);
    opt_int(out, ",\"errno\":", (e.errno != 0).then_some(e.errno));
    opt_str(out, ",\"error\":", (e.errno != 0).then(|| errno_name(e.errno)).as_deref());
    str(out, ",\"event\":", event_name(e.kind));
    opt_int(out, ",\"fd\":", e.fd);
    // Only on pass_fd lines: the descriptor passed.
    if let Some(p) = &e.passed {
        int(out, ",\"file_inode\":", p.file.inode);
        str(out, ",\"file_kind\":", p.kind());
        opt_str(out, ",\"file_name\":", p.name.as_deref().filter(|n| !n.is_empty()));
        opt_int(out, ",\"file_peer_inode\":", (p.file.peer_inode != 0).then_some(p.file.peer_inode));
    }
    opt_str(out, ",\"inferred\":", e.inferred.map(Inferred::as_str));
    opt_int(out, ",\"inode\":", e.inode);
    out.extend_from_slice(b",\"kind\":\"event\"");
    opt_int(out, ",\"listen_fd\":", e.listen_fd);
    opt_int(out, ",\"msgs_received\":", t.map(|t| t.msgs_received));
    opt_int(out, ",\"msgs_sent\":", t.map(|t| t.msgs_sent));
    int(out, ",\"netns\":", e.netns);
    opt_str(out, ",\"path\":", e.path.as_deref());
    opt_str(out, ",\"peer_comm\":", peer_comm.as_deref());
    container(out, ",\"peer_container\":", peer);
    let peer_fd = if e.kind == EventKind::Socketpair { e.peer_fd.map(i64::from) } else { peer_fd.map(i64::from) };
    opt_int(out, ",\"peer_fd\":", peer_fd);
    match peer_holders {
        Some(hs) => {
            out.extend_from_slice(b",\"peer_holders\":[");
            for (i, h) in hs.iter().enumerate() {
                let id = ids.get(h.pid);
                str(out, if i == 0 { "{\"comm\":" } else { ",{\"comm\":" }, &h.comm.to_str());
                container(out, ",\"container\":", id);
                opt_int(out, ",\"fd\":", h.fd);
                int(out, ",\"pid\":", h.pid);
                unit_user(out, ",\"unit\":", ",\"user\":", id);
                out.push(b'}');
            }
            out.push(b']');
        }
        None => null(out, ",\"peer_holders\":"),
    }
    opt_int(out, ",\"peer_inode\":", e.peer_inode);
    bool(out, ",\"peer_is_listener\":", matches!(r.peer, Peer::Listener(_)));
    opt_int(out, ",\"peer_pid\":", peer_pid);
    hex(out, ",\"peer_sk\":", e.peer_sk);
    unit_user(out, ",\"peer_unit\":", ",\"peer_user\":", peer);
    int(out, ",\"pid\":", e.pid);
    if let Some(p) = &e.passed {
        match p.received {
            Some(r) => bool(out, ",\"received\":", r),
            None => null(out, ",\"received\":"),
        }
    }
    int(out, ",\"schema\":", JSON_SCHEMA);
    if e.sent_to.is_empty() {
        null(out, ",\"sent_to\":");
    } else {
        out.extend_from_slice(b",\"sent_to\":[");
        for (i, d) in e.sent_to.iter().enumerate() {
            int(out, if i == 0 { "{\"bytes\":" } else { ",{\"bytes\":" }, d.bytes);
            int(out, ",\"msgs\":", d.msgs);
            opt_str(out, ",\"path\":", d.path.as_deref());
            let comm = d.holder.as_ref().map(|h| h.comm.to_str());
            opt_str(out, ",\"peer_comm\":", comm.as_deref());
            int(out, ",\"peer_inode\":", d.receiver);
            opt_int(out, ",\"peer_pid\":", d.holder.map(|h| h.pid));
            out.push(b'}');
        }
        out.push(b']');
    }
    hex(out, ",\"sk\":", e.sk);
    int(out, ",\"tid\":", e.tid);
    out.extend_from_slice(b",\"time\":\"");
    clock.push_rfc3339(out, e.ts_ns);
    out.push(b'"');
    int(out, ",\"ts\":", e.ts_ns);
    str(out, ",\"type\":", e.sock_type.as_str());
    int(out, ",\"uid\":", e.uid);
    unit_user(out, ",\"unit\":", ",\"user\":", own);
    out.push(b'}');
    out.push(b'\n');
}

/// `{"runtime":…,"id":…,"pod_uid":…,"qos":…}` or null, in the order the
/// snapshot's JSON has them.
fn container(out: &mut Vec<u8>, key: &str, id: Option<&Identity>) {
    let Some(c): Option<&Container> = id.and_then(|i| i.container.as_ref()) else {
        return null(out, key);
    };
    out.extend_from_slice(key.as_bytes());
    str(out, "{\"runtime\":", c.runtime.as_str());
    str(out, ",\"id\":", &c.id);
    opt_str(out, ",\"pod_uid\":", c.pod_uid.as_deref());
    opt_str(out, ",\"qos\":", c.qos.map(|q| q.as_str()));
    out.push(b'}');
}

fn unit_user(out: &mut Vec<u8>, unit: &str, user: &str, id: Option<&Identity>) {
    opt_str(out, unit, id.and_then(|i| i.unit.as_deref()));
    opt_str(out, user, id.and_then(|i| i.user.as_deref()));
}

pub(crate) fn lost_json(count: u64, total: u64, ts_ns: u64) -> Value {
    json!({ "kind": "lost", "schema": JSON_SCHEMA, "count": count, "total": total, "ts": ts_ns })
}

/// The model was checked against the kernel after lost events.
pub(crate) fn resync_json(r: &crate::follow::ResyncRecord) -> Value {
    json!({
        "kind": "resync",
        "schema": JSON_SCHEMA,
        "ts": r.ts_ns,
        "lost": r.lost,
        "netns": r.netns,
        "gone": r.gone,
        "found": r.found,
        "sockets": r.sockets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Traffic};

    #[test]
    fn formats_wall_clock_time() {
        // 2026-11-27T11:40:00.123456Z is 1795779600.123456 s after the epoch.
        let clock = Clock { start_mono_ns: 0, wall_offset_ns: 1_795_779_600_123_456_000 };
        assert_eq!(clock.rfc3339(0), "2026-11-27T11:40:00.123456Z");
        assert_eq!(clock.wall_hms(1_000_000_000), "11:40:01.123456");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    /// One line per event, keys in this order: tools may diff outputs.
    #[test]
    fn json_event_line_is_stable() {
        let clock = Clock { start_mono_ns: 0, wall_offset_ns: 1_795_779_600_123_456_000 };
        let mut event = crate::events::Event::sample(EventKind::Connect, 5_000, 42, "client", 1001, 1002);
        event.sk = 0xffff_8881_0000_1000;
        event.peer_sk = 0xffff_8881_0000_2000;
        let holders = vec![Holder { pid: 7, comm: "server".into(), fd: Some(9) }];
        let r = Resolved { event, peer: Peer::Holders(holders.into()) };
        let mut ids = Processes::default();
        ids.learn(
            42,
            Identity { uid: Some(0), user: Some("root".into()), unit: Some("a.service".into()), container: None },
        );
        let pod = Container {
            runtime: crate::identity::Runtime::Crio,
            id: "c0ffee".into(),
            name: None,
            pod_uid: Some("p-1".into()),
            qos: Some(crate::identity::Qos::Burstable),
        };
        ids.learn(7, Identity { container: Some(pod), ..Identity::default() });
        let mut out = Vec::new();
        write_json(&mut out, &r, &clock, &ids);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            concat!(
                r#"{"bytes_received":null,"bytes_sent":null,"#,
                r#""child_pid":null,"comm":"client","container":null,"errno":null,"error":null,"event":"connect","#,
                r#""fd":3,"inferred":null,"inode":1001,"kind":"event","listen_fd":null,"#,
                r#""msgs_received":null,"msgs_sent":null,"netns":1,"path":"/run/app.sock","#,
                r#""peer_comm":"server","#,
                r#""peer_container":{"runtime":"cri-o","id":"c0ffee","pod_uid":"p-1","qos":"Burstable"},"peer_fd":9,"#,
                r#""peer_holders":[{"comm":"server","#,
                r#""container":{"runtime":"cri-o","id":"c0ffee","pod_uid":"p-1","qos":"Burstable"},"#,
                r#""fd":9,"pid":7,"unit":null,"user":null}],"#,
                r#""peer_inode":1002,"peer_is_listener":false,"peer_pid":7,"peer_sk":"0xffff888100002000","#,
                r#""peer_unit":null,"peer_user":null,"#,
                r#""pid":42,"schema":1,"sent_to":null,"sk":"0xffff888100001000","tid":42,"#,
                r#""time":"2026-11-27T11:40:00.123461Z","#,
                r#""ts":5000,"type":"stream","uid":0,"unit":"a.service","user":"root"}"#,
                "\n"
            )
        );
        let mut text = Vec::new();
        write_text(&mut text, &r, &clock, false, &ids);
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.ends_with("  [a.service \u{2192} cri-o:c0ffee]\n"), "{text}");
        let mut out = Vec::new();
        let failed = Resolved {
            event: crate::events::Event { errno: libc::ECONNREFUSED, ..r.event.clone() },
            peer: Peer::Listener(Holder { pid: 7, comm: "server".into(), fd: None }),
        };
        write_json(&mut out, &failed, &clock, &Processes::default());
        let mut text = Vec::new();
        write_text(&mut text, &failed, &clock, false, &Processes::default());
        assert!(!String::from_utf8_lossy(&text).contains('['), "no tags when nothing is known");
        let line = String::from_utf8(out).expect("utf-8");
        assert!(line.contains(r#""errno":111,"error":"ECONNREFUSED""#), "{line}");
        assert!(
            line.contains(r#""peer_comm":"server","peer_container":null,"peer_fd":null,"peer_holders":null"#),
            "{line}"
        );
        assert!(line.contains(r#""peer_is_listener":true,"peer_pid":7"#), "{line}");
    }

    #[test]
    fn a_close_says_what_the_socket_carried() {
        let clock = Clock { start_mono_ns: 0, wall_offset_ns: 0 };
        let traffic = Traffic { bytes_sent: 1229, bytes_received: 48 << 10, msgs_sent: 3, msgs_received: 5 };
        let mut event = Event::sample(EventKind::Close, 1, 42, "client", 1001, 1002);
        event.traffic = Some(traffic);
        let r = Resolved { event, peer: Peer::Unknown };
        let mut text = Vec::new();
        write_text(&mut text, &r, &clock, false, &Processes::default());
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.ends_with("  3 msgs / 1.2 KiB sent, 5 msgs / 48 KiB received\n"), "{text}");
        let mut json = Vec::new();
        write_json(&mut json, &r, &clock, &Processes::default());
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(
            [&v["bytes_sent"], &v["bytes_received"], &v["msgs_sent"], &v["msgs_received"]],
            [&json!(1229), &json!(49152), &json!(3), &json!(5)]
        );
        let quiet = Resolved { event: Event { traffic: Some(Traffic::default()), ..r.event.clone() }, ..r };
        let mut text = Vec::new();
        write_text(&mut text, &quiet, &clock, false, &Processes::default());
        assert!(!String::from_utf8_lossy(&text).contains("msg"), "nothing moved, nothing said");
        let sizes: Vec<String> = [0, 1023, 1024, 10 * 1024 + 600, 3 << 30]
            .into_iter()
            .map(|b| {
                let mut out = Vec::new();
                push_bytes_size(&mut out, b);
                String::from_utf8(out).expect("utf-8")
            })
            .collect();
        assert_eq!(sizes, ["0 B", "1023 B", "1.0 KiB", "11 KiB", "3.0 GiB"]);
    }

    #[test]
    fn a_pass_fd_names_both_ends_and_the_descriptor_with_hostile_names_inert() {
        let clock = Clock { start_mono_ns: 0, wall_offset_ns: 0 };
        let mut event = Event::sample(EventKind::PassFd, 1, 42, "sender", 1001, 1002);
        event.fd = Some(5);
        let mut p = crate::events::Passed::sample();
        p.name = Some("memfd:\u{1b}[31mred\"\n".into());
        p.file.mode = 0o100777;
        p.received = Some(true);
        event.passed = Some(Box::new(p));
        let receiver = Holder { pid: 43, comm: "recv\u{1b}]0;x\u{7}".into(), fd: Some(9) };
        let r = Resolved { event, peer: Peer::Holders(smallvec::smallvec![receiver]) };
        let mut text = Vec::new();
        write_text(&mut text, &r, &clock, false, &Processes::default());
        let text = String::from_utf8(text).expect("utf-8");
        assert!(!text.bytes().any(|b| b == 0x1b || b == 0x07), "no terminal escape gets through: {text:?}");
        assert!(text.contains("pass_fd"), "{text}");
        assert!(text.contains("42/sender:5"), "{text}");
        assert!(text.contains("passed memfd \"memfd:"), "{text}");
        assert!(text.contains(" inode 4242"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text:?}");
        let mut json = Vec::new();
        write_json(&mut json, &r, &clock, &Processes::default());
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(
            [&v["event"], &v["pid"], &v["fd"], &v["peer_pid"], &v["peer_fd"], &v["received"]],
            [&json!("pass_fd"), &json!(42), &json!(5), &json!(43), &json!(9), &json!(true)]
        );
        assert_eq!(
            [&v["file_kind"], &v["file_inode"], &v["file_name"]],
            [&json!("memfd"), &json!(4242), &json!("memfd:\u{1b}[31mred\"\n")]
        );
        assert!(v["file_peer_inode"].is_null());
        // Other events carry none of these keys.
        let mut json = Vec::new();
        let connect = Resolved { event: Event::sample(EventKind::Connect, 1, 42, "c", 1, 2), peer: Peer::Unknown };
        write_json(&mut json, &connect, &clock, &Processes::default());
        let line = String::from_utf8(json).expect("utf-8");
        assert!(!line.contains("file_") && !line.contains("\"received\""), "{line}");
    }

    #[test]
    fn names_errnos() {
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(4095), "errno 4095");
    }
}
