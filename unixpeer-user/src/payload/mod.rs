//! `unixtrace capture`: the bytes sent on UNIX sockets, into pcapng.

mod args;
mod lines;
mod peers;

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::Path,
    time::Instant,
};

use tokio::signal::unix::{SignalKind, signal};
use unixpeer_common::{PAYLOAD_NAME_OWN, PAYLOAD_NAME_PEER, PayloadHeader, payload_call};

pub use self::args::CaptureArgs;
use self::peers::{Peers, Who};
use crate::{
    capture::{
        CaptureError,
        payload::{PayloadCapture, PayloadOptions, parse_record},
    },
    follow::render::Clock,
    holders::Comm,
    output::escape,
    pcapng::{Message, PcapngError, PcapngWriter, block::SectionInfo},
};

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Pcapng(#[from] PcapngError),
    #[error("{} exists; --force replaces it", escape::path(.0))]
    Exists(std::path::PathBuf),
    #[error("cannot create {}: {source}", escape::path(path))]
    Create { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot start the runtime or a signal handler: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What the run did, for the closing line on stderr.
#[derive(Debug, Default)]
struct Tally {
    messages: u64,
    bytes: u64,
    truncated: u64,
}

pub fn run(args: &CaptureArgs) -> Result<(), PayloadError> {
    let opts = args.options();
    let file = args.write.as_deref().filter(|w| w.as_os_str() != "-");
    // Opened before the capture starts: a name already taken fails fast.
    let out: Box<dyn Write> = match file {
        None => Box::new(BufWriter::with_capacity(1 << 16, std::io::stdout())),
        Some(f) => Box::new(BufWriter::with_capacity(1 << 16, create(f, args.force)?)),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(PayloadError::Runtime)?;
    let result = rt.block_on(capture(args, &opts, out));
    if let Err(e) = &result
        && let Some(f) = file
        && matches!(e, PayloadError::Capture(_))
    {
        // Nothing was captured: leave no file behind.
        let _ = std::fs::remove_file(f);
    }
    match result {
        Err(PayloadError::Pcapng(e)) if e.is_broken_pipe() => Ok(()),
        other => other,
    }
}

fn create(path: &Path, force: bool) -> Result<std::fs::File, PayloadError> {
    let mut o = OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    o.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => PayloadError::Exists(path.to_owned()),
        _ => PayloadError::Create { path: path.to_owned(), source: e },
    })
}

async fn capture(args: &CaptureArgs, opts: &PayloadOptions, out: Box<dyn Write>) -> Result<(), PayloadError> {
    let mut cap = PayloadCapture::start(opts)?;
    let clock = Clock::now();
    let wall = |mono: u64| clock.wall_ns(mono).max(0) as u64;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let command: Vec<String> = std::env::args().skip(1).collect();
    let info = SectionInfo {
        os: &format!("Linux {}", release.trim()),
        userappl: concat!("unixtrace ", env!("CARGO_PKG_VERSION")),
        comment: &format!("unixtrace {}; messages taken at {}", escape::escaped(&command.join(" ")), cap.hooks),
    };
    let mut sink = match &args.write {
        Some(_) => {
            let mut w = PcapngWriter::new(out, &info, opts.snaplen, wall(clock.start_mono_ns))?;
            w.flush()?;
            Sink::Pcapng(w)
        }
        None => Sink::Lines { out, buf: Vec::with_capacity(1 << 16), dropped: 0 },
    };
    // As tcpdump says it is listening: from here on, nothing sent is missed.
    let dest = match &args.write {
        None => "stdout, one line per message".into(),
        Some(w) if w.as_os_str() == "-" => "stdout".into(),
        Some(w) => escape::path(w),
    };
    eprintln!("unixtrace: capturing to {dest}, {} bytes of each message, at {}", opts.snaplen, cap.hooks);
    let mut sigterm = signal(SignalKind::terminate()).map_err(PayloadError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(PayloadError::Runtime)?;
    let started = Instant::now();
    let mut peers = Peers::default();
    let mut tally = Tally::default();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut signalled = false;
    loop {
        // A last drain after the stop, so what was sent before it is kept.
        let stop = signalled
            || args.duration.is_some_and(|d| started.elapsed() >= d)
            || args.count.is_some_and(|c| tally.messages >= c);
        let mut keep = |b: &[u8]| batch.push(b.to_vec());
        tokio::select! {
            r = cap.next_batch(&mut keep) => r?,
            _ = sigterm.recv() => signalled = true,
            _ = sigint.recv() => signalled = true,
        }
        let mut records: Vec<(PayloadHeader, &[u8])> = batch.iter().filter_map(|b| parse_record(b)).collect();
        // CPUs fill the ring buffer side by side: in time order, each
        // direction's bytes stay in the order they were sent.
        records.sort_by_key(|(h, _)| h.ts_ns);
        for (h, data) in records {
            if args.count.is_some_and(|c| tally.messages >= c) {
                break;
            }
            let path = name_bytes(&h);
            if let Some(glob) = &args.path
                && !glob.matches(&name_text(&path))
            {
                continue;
            }
            peers.learn(h.inode, Who { pid: h.pid, comm: Comm::new(&h.comm), fd: h.fd });
            let peer = peers.lookup(h.peer_inode, &mut || cap.task_socket_fds().ok());
            if let Sink::Lines { buf, .. } = &mut sink {
                let (comm, peer_comm) = (Comm::new(&h.comm), peer.map(|p| p.comm));
                let (comm, peer_comm) = (comm.to_str(), peer_comm.as_ref().map(Comm::to_str));
                let text = (!path.is_empty()).then(|| name_text(&path));
                let shown = lines::Shown {
                    since_start: h.ts_ns.saturating_sub(clock.start_mono_ns) as f64 / 1e9,
                    time: clock.rfc3339(h.ts_ns),
                    pid: h.pid,
                    comm: &comm,
                    fd: h.fd,
                    inode: h.inode,
                    peer: peer
                        .map(|p| p.pid)
                        .zip(peer_comm.as_deref())
                        .zip(peer.map(|p| p.fd))
                        .map(|((a, b), c)| (a, b, c)),
                    peer_inode: h.peer_inode,
                    path: text.as_deref(),
                    call: call_name(h.call),
                    len: h.len,
                    data,
                };
                if args.json {
                    lines::write_json(buf, &shown, args.hex);
                } else {
                    lines::write_text(buf, &shown, args.hex);
                }
                tally.messages += 1;
                tally.bytes += u64::from(h.len);
                tally.truncated += u64::from(h.cap_len < h.len);
                continue;
            }
            let comment = comment(&h, peer, &path);
            let msg = Message {
                ts_ns: wall(h.ts_ns),
                sk: h.sk,
                peer_sk: h.peer_sk,
                inode: h.inode,
                peer_inode: h.peer_inode,
                sender_bound: h.name_flags & PAYLOAD_NAME_OWN != 0,
                peer_bound: h.name_flags & PAYLOAD_NAME_PEER != 0,
                sock_type: h.sock_type,
                len: h.len,
                data,
                path: &path,
                comment: &comment,
            };
            sink.message(&msg)?;
            tally.messages += 1;
            tally.bytes += u64::from(h.len);
            tally.truncated += u64::from(h.cap_len < h.len);
        }
        batch.clear();
        let lost = cap.take_lost()?;
        if lost > 0 {
            sink.loss(wall(crate::follow::render::clock_ns(libc::CLOCK_MONOTONIC)), lost, args.json)?;
            eprintln!(
                "unixtrace: {lost} messages lost: the kernel's buffer ({} KiB) was full (--buffer-size enlarges it), \
                 or a sendmmsg sent more than the 4 messages it copies",
                cap.buffer_size >> 10
            );
        }
        sink.flush()?;
        if stop {
            break;
        }
    }
    let dropped = sink.finish(wall(crate::follow::render::clock_ns(libc::CLOCK_MONOTONIC)))?;
    eprintln!(
        "unixtrace: captured {} messages ({} bytes sent, {} truncated to -s {}), {} lost",
        tally.messages, tally.bytes, tally.truncated, opts.snaplen, dropped
    );
    Ok(())
}

/// Where messages go: a pcapng file (`-w`), or lines on stdout.
enum Sink {
    Pcapng(PcapngWriter<Box<dyn Write>>),
    Lines { out: Box<dyn Write>, buf: Vec<u8>, dropped: u64 },
}

impl Sink {
    fn message(&mut self, m: &Message<'_>) -> Result<(), PayloadError> {
        match self {
            Self::Pcapng(w) => Ok(w.message(m)?),
            Self::Lines { .. } => Ok(()),
        }
    }

    fn loss(&mut self, ts_ns: u64, lost: u64, json: bool) -> Result<(), PayloadError> {
        match self {
            Self::Pcapng(w) => Ok(w.loss(ts_ns, lost)?),
            Self::Lines { buf, dropped, .. } => {
                *dropped += lost;
                if json {
                    let v = serde_json::json!({"kind": "lost", "schema": crate::output::JSON_SCHEMA, "count": lost});
                    let _ = writeln!(buf, "{v}");
                } else {
                    let _ = writeln!(buf, "{lost} messages lost");
                }
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<(), PayloadError> {
        match self {
            Self::Pcapng(w) => Ok(w.flush()?),
            Self::Lines { out, buf, .. } => {
                let r = out.write_all(buf).and_then(|()| out.flush());
                buf.clear();
                r.map_err(|e| PayloadError::Pcapng(PcapngError::Write(e)))
            }
        }
    }

    /// Closes it; returns the messages counted lost.
    fn finish(mut self, ts_ns: u64) -> Result<u64, PayloadError> {
        self.flush()?;
        match self {
            Self::Pcapng(w) => {
                let dropped = w.dropped();
                w.finish(ts_ns)?;
                Ok(dropped)
            }
            Self::Lines { dropped, .. } => Ok(dropped),
        }
    }
}

/// The connection's name as the kernel gave it: a path up to its NUL, or
/// an abstract name (leading NUL) whole.
fn name_bytes(h: &PayloadHeader) -> Vec<u8> {
    let raw = &h.path[..(h.path_len as usize).min(h.path.len())];
    match raw.first() {
        Some(0) => raw.to_vec(),
        _ => raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())].to_vec(),
    }
}

/// The name as filters and people see it: abstract names with `@`.
fn name_text(path: &[u8]) -> String {
    match path.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(path).into_owned(),
    }
}

fn call_name(call: u32) -> &'static str {
    match call {
        payload_call::WRITE => "write",
        payload_call::WRITEV => "writev",
        payload_call::SENDTO => "sendto",
        payload_call::SENDMSG => "sendmsg",
        payload_call::SENDMMSG => "sendmmsg",
        _ => "?",
    }
}

/// The packet comment: sender, receiver, name, and what was cut. Escaped,
/// so it is valid UTF-8 without control characters whatever processes
/// call themselves or their sockets.
fn comment(h: &PayloadHeader, peer: Option<Who>, path: &[u8]) -> String {
    let comm = Comm::new(&h.comm);
    let mut s = format!("from pid {} ({comm}) tid {} fd {} inode {}", h.pid, h.tid, h.fd, h.inode);
    match peer {
        Some(p) => s += &format!(" to pid {} ({}) fd {} inode {}", p.pid, p.comm, p.fd, h.peer_inode),
        None if h.peer_inode != 0 => s += &format!(" to inode {}", h.peer_inode),
        None if h.peer_sk != 0 => s += " to a connection not accepted yet",
        None => s += " to no connected peer",
    }
    if !path.is_empty() {
        s += &format!(" via {}", escape::escaped(&name_text(path)));
    }
    s += &format!("; {} of {} bytes", call_name(h.call), h.len);
    if h.cap_len < h.len {
        s += &format!(", truncated: {} captured", h.cap_len);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &[u8]) -> PayloadHeader {
        // SAFETY: all fields are integers.
        let mut h: PayloadHeader = unsafe { std::mem::zeroed() };
        h.path[..path.len()].copy_from_slice(path);
        h.path_len = path.len() as u32;
        h
    }

    #[test]
    fn names_and_hostile_comments() {
        assert_eq!(name_text(&name_bytes(&header(b"/run/a.sock\0\0\0"))), "/run/a.sock");
        assert_eq!(name_text(&name_bytes(&header(b"\0abs\0x"))), "@abs\u{0}x");
        let mut h = header(b"/tmp/\x1b[31mevil\xff");
        h.comm[..4].copy_from_slice(b"a\x07b\xfe");
        (h.pid, h.fd, h.inode, h.peer_inode, h.len, h.cap_len, h.call) = (7, 3, 11, 12, 1000, 256, 1);
        let c = comment(&h, None, &name_bytes(&h));
        assert_eq!(
            c,
            "from pid 7 (a\\x07b\\xfe) tid 0 fd 3 inode 11 to inode 12 via /tmp/\\x1b[31mevil\u{fffd}; write of 1000 \
             bytes, truncated: 256 captured"
        );
        assert!(!c.chars().any(char::is_control));
    }
}
