//! Event lines for people and JSON Lines for tools.

use std::io::{self, Write};

use serde_json::{Value, json};
use unixpeer_common::EventKind;

use super::{Holder, Peer, Resolved};
use crate::events::event_name;

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

    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.wall_offset_ns
    }

    /// `HH:MM:SS.uuuuuu` in UTC.
    pub fn wall_hms(&self, mono_ns: u64) -> String {
        let ns = self.wall_ns(mono_ns).max(0) as u128;
        let secs = ns / 1_000_000_000;
        let us = (ns % 1_000_000_000) / 1000;
        format!("{:02}:{:02}:{:02}.{us:06}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
    }

    /// `2026-11-27T11:40:00.123456Z`.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        let ns = self.wall_ns(mono_ns).max(0) as u128;
        let secs = (ns / 1_000_000_000) as i64;
        let us = (ns % 1_000_000_000) / 1000;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z", rem / 3600, (rem / 60) % 60, rem % 60)
    }

    pub fn relative_s(&self, mono_ns: u64) -> f64 {
        (mono_ns as f64 - self.start_mono_ns as f64) / 1e9
    }
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

pub fn errno_name(errno: i32) -> String {
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
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

fn holder_text(h: &Holder) -> String {
    match h.fd {
        Some(fd) => format!("{}/{}:{fd}", h.pid, h.comm),
        None => format!("{}/{}", h.pid, h.comm),
    }
}

fn peer_text(peer: &Peer) -> String {
    match peer {
        Peer::Holders(hs) => {
            let mut s = hs.first().map(holder_text).unwrap_or_else(|| "?".into());
            if hs.len() > 1 {
                s.push_str(&format!(" +{}", hs.len() - 1));
            }
            s
        }
        Peer::Listener(h) => format!("{} (listening)", holder_text(h)),
        Peer::Unknown => "?".into(),
    }
}

pub const TEXT_HEADER: &str =
    "TIME             EVENT          PROCESS                      PEER                              TYPE       PATH";

pub fn write_text(out: &mut impl Write, r: &Resolved, clock: &Clock, wall: bool) -> io::Result<()> {
    let e = &r.event;
    let time = if wall { clock.wall_hms(e.ts_ns) } else { format!("{:.6}", clock.relative_s(e.ts_ns)) };
    let me = Holder { pid: e.pid, comm: e.comm.clone(), fd: e.fd };
    let mut me = holder_text(&me);
    if e.kind == EventKind::Socketpair
        && let Some(fd) = e.peer_fd
    {
        me.push_str(&format!(",{fd}"));
    }
    let peer = if e.kind == EventKind::Listen { String::new() } else { peer_text(&r.peer) };
    let path = e.path.as_deref().unwrap_or("-");
    write!(out, "{time:<16} {:<14} {me:<28} {peer:<33} {:<10} {path}", event_name(e.kind), e.sock_type.as_str())?;
    if e.errno != 0 {
        write!(out, "  {}", errno_name(e.errno))?;
    }
    if let Some(how) = e.inferred {
        write!(out, "  (released by {how})")?;
    }
    if let Some(child) = e.child_pid {
        write!(out, "  child {child}")?;
    }
    writeln!(out)
}

/// The JSON Lines record of one event. Serialized straight from borrowed
/// fields: building a `serde_json::Value` map first cost ~30 allocations an
/// event, which at connection rates made `--json` the bottleneck. Fields
/// are in key order, as the map used to print them (docs/json-schema.md).
#[derive(serde::Serialize)]
struct EventRecord<'a> {
    child_pid: Option<u32>,
    comm: &'a str,
    errno: Option<i32>,
    error: Option<String>,
    event: &'static str,
    fd: Option<i32>,
    inferred: Option<&'static str>,
    inode: Option<u64>,
    kind: &'static str,
    listen_fd: Option<i32>,
    netns: u32,
    path: Option<&'a str>,
    peer_comm: Option<&'a str>,
    peer_fd: Option<i32>,
    peer_holders: Option<HolderList<'a>>,
    peer_inode: Option<u64>,
    peer_is_listener: bool,
    peer_pid: Option<u32>,
    peer_sk: Hex,
    pid: u32,
    sk: Hex,
    tid: u32,
    time: String,
    ts: u64,
    #[serde(rename = "type")]
    sock_type: &'static str,
    uid: u32,
}

/// Holders with their keys in order, as the map printed them.
struct HolderList<'a>(&'a [Holder]);

impl serde::Serialize for HolderList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Sorted<'a> {
            comm: &'a str,
            fd: Option<i32>,
            pid: u32,
        }
        s.collect_seq(self.0.iter().map(|h| Sorted { comm: &h.comm, fd: h.fd, pid: h.pid }))
    }
}

/// A kernel address, as `"0x…"`.
struct Hex(u64);

impl serde::Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// Writes one event as a JSON line.
pub fn write_json(out: &mut impl Write, r: &Resolved, clock: &Clock) -> io::Result<()> {
    let e = &r.event;
    let (peer_pid, peer_comm, peer_fd, peer_holders) = match &r.peer {
        Peer::Holders(hs) => {
            let first = hs.first();
            (first.map(|h| h.pid), first.map(|h| h.comm.as_str()), first.and_then(|h| h.fd), Some(HolderList(hs)))
        }
        Peer::Listener(h) => (Some(h.pid), Some(h.comm.as_str()), h.fd, None),
        Peer::Unknown => (None, None, None, None),
    };
    let record = EventRecord {
        child_pid: e.child_pid,
        comm: &e.comm,
        errno: (e.errno != 0).then_some(e.errno),
        error: (e.errno != 0).then(|| errno_name(e.errno)),
        event: event_name(e.kind),
        fd: e.fd,
        inferred: e.inferred,
        inode: e.inode,
        kind: "event",
        listen_fd: e.listen_fd,
        netns: e.netns,
        path: e.path.as_deref(),
        peer_comm,
        peer_fd: if e.kind == EventKind::Socketpair { e.peer_fd } else { peer_fd },
        peer_holders,
        peer_inode: e.peer_inode,
        peer_is_listener: matches!(r.peer, Peer::Listener(_)),
        peer_pid,
        peer_sk: Hex(e.peer_sk),
        pid: e.pid,
        sk: Hex(e.sk),
        tid: e.tid,
        time: clock.rfc3339(e.ts_ns),
        ts: e.ts_ns,
        sock_type: e.sock_type.as_str(),
        uid: e.uid,
    };
    serde_json::to_writer(&mut *out, &record)?;
    out.write_all(b"\n")
}

pub fn lost_json(count: u64, total: u64, ts_ns: u64) -> Value {
    json!({ "kind": "lost", "count": count, "total": total, "ts": ts_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let r = Resolved { event, peer: Peer::Holders(holders) };
        let mut out = Vec::new();
        write_json(&mut out, &r, &clock).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            concat!(
                r#"{"child_pid":null,"comm":"client","errno":null,"error":null,"event":"connect","fd":3,"#,
                r#""inferred":null,"inode":1001,"kind":"event","listen_fd":null,"netns":1,"path":"/run/app.sock","#,
                r#""peer_comm":"server","peer_fd":9,"peer_holders":[{"comm":"server","fd":9,"pid":7}],"#,
                r#""peer_inode":1002,"peer_is_listener":false,"peer_pid":7,"peer_sk":"0xffff888100002000","#,
                r#""pid":42,"sk":"0xffff888100001000","tid":42,"time":"2026-11-27T11:40:00.123461Z","#,
                r#""ts":5000,"type":"stream","uid":0}"#,
                "\n"
            )
        );
        let mut out = Vec::new();
        let failed = Resolved {
            event: crate::events::Event { errno: libc::ECONNREFUSED, ..r.event.clone() },
            peer: Peer::Listener(Holder { pid: 7, comm: "server".into(), fd: None }),
        };
        write_json(&mut out, &failed, &clock).expect("write");
        let line = String::from_utf8(out).expect("utf-8");
        assert!(line.contains(r#""errno":111,"error":"ECONNREFUSED""#), "{line}");
        assert!(line.contains(r#""peer_comm":"server","peer_fd":null,"peer_holders":null"#), "{line}");
        assert!(line.contains(r#""peer_is_listener":true,"peer_pid":7"#), "{line}");
    }

    #[test]
    fn names_errnos() {
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(4095), "errno 4095");
    }
}
