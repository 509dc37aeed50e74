//! Kernel records decoded into owned events: the second stage of
//! kernel → events → model → output.

use unixpeer_common::{EventKind, UNIX_EVENT_HEADER, UNIX_PATH_MAX, UnixEvent};
pub use unixpeer_common::{PassedFile, Traffic};

use crate::holders::Comm;
use std::sync::Arc;

pub use crate::model::SockType;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub kind: EventKind,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: Comm,
    pub netns: u32,
    pub sock_type: SockType,
    pub errno: i32,
    pub fd: Option<i32>,
    pub peer_fd: Option<i32>,
    pub listen_fd: Option<i32>,
    /// None while the kernel has not given the socket an inode.
    pub inode: Option<u64>,
    pub peer_inode: Option<u64>,
    /// Kernel address of `struct sock`: joins a connect to its accept.
    pub sk: u64,
    pub peer_sk: u64,
    /// A path, `@name` for an abstract name, or None. Shared: the same few
    /// names come back in most events, and the model keeps them too.
    pub path: Option<Arc<str>>,
    /// The new process of a `Fork`.
    pub child_pid: Option<u32>,
    /// For a `Close`, where bytes and messages are counted: what the socket
    /// sent and received in its life.
    pub traffic: Option<Traffic>,
    /// For the `Close` of an unconnected datagram socket: what it sent to
    /// each receiver it sent to by address.
    pub sent_to: Vec<DgramTotal>,
    /// Not seen by the kernel but deduced (a release at process exit under
    /// the tracepoint strategy): says from what.
    pub inferred: Option<Inferred>,
    /// `FdSent`, `FdReceived` and `PassFd`: the descriptor passed (boxed:
    /// every other event carries a null pointer only).
    pub passed: Option<Box<Passed>>,
}

/// A descriptor passed over SCM_RIGHTS, as the kernel described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passed {
    /// Its `struct file *`, inode number and mode, and for a UNIX socket
    /// its peer's inode.
    pub file: PassedFile,
    /// The file's dentry name: a file's own name (not its directory),
    /// `memfd:NAME`, `[eventfd]`; empty for a pipe.
    pub name: Option<Arc<str>>,
    /// The fd of the socket the message went through.
    pub socket_fd: Option<i32>,
    /// Its place in the message, and how many descriptors the message's
    /// SCM_RIGHTS header carried.
    pub index: u32,
    pub count: u32,
    /// `PassFd` only: true when received, false when the receiving
    /// socket closed with it in flight, None when unknown (its receipt
    /// was not seen before the table of waiting sends overflowed).
    pub received: Option<bool>,
}

impl Passed {
    /// What the descriptor is, from its mode and name: `file`, `directory`,
    /// `pipe`, `fifo`, `socket`, `memfd`, `dmabuf`, `char_device`,
    /// `block_device`, `symlink`, an anonymous inode's name without its
    /// brackets (`eventfd`, `timerfd`, `signalfd`, `pidfd`, `eventpoll`,
    /// ...), or `anon_inode`.
    pub fn kind(&self) -> &str {
        let name = self.name.as_deref().unwrap_or("");
        if let Some(anon) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            return anon;
        }
        if name == "dmabuf" || name.starts_with("dmabuf:") {
            return "dmabuf";
        }
        match self.file.mode & 0o170000 {
            0o140000 => "socket",
            0o010000 if name.is_empty() => "pipe",
            0o010000 => "fifo",
            0o100000 if name.starts_with("memfd:") => "memfd",
            0o100000 => "file",
            0o040000 => "directory",
            0o020000 => "char_device",
            0o060000 => "block_device",
            0o120000 => "symlink",
            _ => "anon_inode",
        }
    }
}

/// Whether events of this kind carry a [`Passed`].
pub(crate) fn passes_fd(kind: EventKind) -> bool {
    matches!(kind, EventKind::FdSent | EventKind::FdReceived | EventKind::PassFd)
}

/// Datagrams one socket sent to one receiver by address, in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DgramTotal {
    /// The receiving socket's inode.
    pub receiver: u64,
    pub bytes: u64,
    pub msgs: u64,
    /// Its first holder and bound name, as the model knew them at the close.
    pub(crate) holder: Option<crate::holders::Holder>,
    pub(crate) path: Option<Arc<str>>,
}

/// What a socket carried in its life: its counts, and what it sent to
/// each receiver by address. Noted for a release the model infers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub traffic: Traffic,
    pub sent_to: Vec<DgramTotal>,
}

/// Why a close the kernel did not report was deduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inferred {
    /// The last process holding the socket exited (tracepoint strategy).
    Exit,
    /// The last fd was closed while the file was still referenced (in
    /// flight over SCM_RIGHTS, a /proc reader's moment), and UNIX_DIAG later
    /// no longer had the socket.
    ReleasedLater,
}

impl Inferred {
    pub(crate) const ALL: [Self; 2] = [Self::Exit, Self::ReleasedLater];

    /// As JSON output and recordings carry it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Exit => "exit",
            Self::ReleasedLater => "the last fd close, released later",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == s)
    }
}

#[cfg(test)]
impl Passed {
    pub(crate) fn sample() -> Self {
        Passed {
            file: PassedFile { file: 0xffff_8881_0000_4000, inode: 4242, mode: 0o100644, peer_inode: 0 },
            name: Some("notes.txt".into()),
            socket_fd: Some(3),
            index: 0,
            count: 1,
            received: None,
        }
    }
}

#[cfg(test)]
impl Event {
    /// A stream-socket event of process `pid` on fd 3, for model tests.
    pub(crate) fn sample(kind: EventKind, ts_ns: u64, pid: u32, comm: &str, inode: u64, peer_inode: u64) -> Event {
        Event {
            ts_ns,
            kind,
            pid,
            tid: pid,
            uid: 0,
            comm: comm.into(),
            netns: 1,
            sock_type: SockType::Stream,
            errno: 0,
            fd: Some(3),
            peer_fd: None,
            listen_fd: None,
            inode: (inode != 0).then_some(inode),
            peer_inode: (peer_inode != 0).then_some(peer_inode),
            sk: 0,
            peer_sk: 0,
            path: Some("/run/app.sock".into()),
            child_pid: None,
            traffic: None,
            sent_to: Vec::new(),
            inferred: None,
            passed: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("ring buffer record is {got} bytes, expected {want} to {max}", max = size_of::<UnixEvent>())]
    Size { got: usize, want: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
}

/// Names already rendered, by their raw bytes: a connection loop names the
/// same path in most of its events, and rendering and allocating it each
/// time was a good part of the model's cost. Bounded: emptied when full.
#[derive(Default)]
pub(crate) struct PathCache {
    names: foldhash::HashMap<Box<[u8]>, Arc<str>>,
}

const PATH_CACHE: usize = 4096;

impl PathCache {
    fn get(&mut self, raw: &[u8]) -> Option<Arc<str>> {
        if let Some(name) = self.names.get(raw) {
            return Some(name.clone());
        }
        let name: Arc<str> = sun_path(raw)?.into();
        if self.names.len() >= PATH_CACHE {
            self.names.clear();
        }
        self.names.insert(raw.into(), name.clone());
        Some(name)
    }
}

#[cfg(test)]
pub(crate) fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_cached(bytes, &mut PathCache::default())
}

/// `decode`, with names looked up in `cache` first.
pub(crate) fn decode_cached(bytes: &[u8], cache: &mut PathCache) -> Result<Event, DecodeError> {
    let want = UNIX_EVENT_HEADER;
    if bytes.len() < want || bytes.len() > size_of::<UnixEvent>() {
        return Err(DecodeError::Size { got: bytes.len(), want });
    }
    let mut copy;
    let raw: &UnixEvent = if bytes.len() == size_of::<UnixEvent>() && bytes.as_ptr().cast::<UnixEvent>().is_aligned() {
        // SAFETY: UnixEvent is plain old data valid for any bit pattern, the
        // slice holds its size and the pointer is aligned: no copy.
        unsafe { &*bytes.as_ptr().cast::<UnixEvent>() }
    } else {
        // The kernel writes only the part of `path` in use; the rest of
        // the event is zero, as the kernel's is.
        copy = UnixEvent::zeroed();
        // SAFETY: `bytes` is no longer than UnixEvent (checked above), the
        // two do not overlap, and UnixEvent is plain old data valid for any
        // bit pattern.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut copy).cast::<u8>(), bytes.len());
        }
        // A name cannot run past the record.
        copy.path_len = copy.path_len.min((bytes.len() - UNIX_EVENT_HEADER) as u32);
        &copy
    };
    let kind = EventKind::from_u32(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    let fd = |v: i32| (v >= 0).then_some(v);
    let ino = |v: u64| (v != 0).then_some(v);
    // A passed descriptor's record reuses the path, peer_fd, listen_fd
    // and child_pid slots (see `EventKind::FdSent`).
    let passed = passes_fd(kind).then(|| {
        let name = &raw.path[..(raw.path_len as usize).min(UNIX_PATH_MAX)];
        Box::new(Passed {
            file: PassedFile::from_traffic(&raw.traffic),
            name: Some(String::from_utf8_lossy(name).into()),
            socket_fd: fd(raw.listen_fd),
            index: raw.peer_fd.max(0) as u32,
            count: raw.child_pid,
            received: None,
        })
    });
    let socket_event = passed.is_none();
    Ok(Event {
        ts_ns: raw.ts_ns,
        kind,
        pid: raw.pid,
        tid: raw.tid,
        uid: raw.uid,
        comm: Comm::new(&raw.comm),
        netns: raw.netns,
        sock_type: SockType::from_kernel(raw.sock_type as u8),
        errno: raw.errno,
        fd: fd(raw.fd),
        peer_fd: fd(raw.peer_fd).filter(|_| socket_event),
        listen_fd: fd(raw.listen_fd).filter(|_| socket_event),
        inode: ino(raw.inode),
        peer_inode: ino(raw.peer_inode),
        sk: raw.sk,
        peer_sk: raw.peer_sk,
        path: if socket_event { cache.get(&raw.path[..(raw.path_len as usize).min(UNIX_PATH_MAX)]) } else { None },
        child_pid: (socket_event && raw.child_pid != 0).then_some(raw.child_pid),
        // The kernel fills it for every close; the consumer drops it where
        // nothing counts.
        traffic: (kind == EventKind::Close).then_some(raw.traffic),
        sent_to: Vec::new(),
        inferred: None,
        passed,
    })
}

/// The kernel record an event was decoded from, as far as the event keeps
/// it: replays a recorded stream through `decode` (`cargo xtask bench
/// consume`). `decode(encode(e)) == e` for every event the kernel can make.
pub fn encode(e: &Event) -> UnixEvent {
    let mut raw = UnixEvent::zeroed();
    raw.ts_ns = e.ts_ns;
    raw.kind = e.kind as u32;
    raw.pid = e.pid;
    raw.tid = e.tid;
    raw.uid = e.uid;
    let comm = e.comm.as_bytes();
    raw.comm[..comm.len()].copy_from_slice(comm);
    raw.netns = e.netns;
    raw.sock_type = u32::from(e.sock_type.to_kernel());
    raw.errno = e.errno;
    raw.fd = e.fd.unwrap_or(-1);
    raw.peer_fd = e.peer_fd.unwrap_or(-1);
    raw.listen_fd = e.listen_fd.unwrap_or(-1);
    raw.inode = e.inode.unwrap_or(0);
    raw.peer_inode = e.peer_inode.unwrap_or(0);
    raw.sk = e.sk;
    raw.peer_sk = e.peer_sk;
    if let Some(path) = &e.path {
        // `@name` is an abstract name: a leading NUL in the kernel.
        let (lead, name) = match path.strip_prefix('@') {
            Some(name) => (Some(0u8), name.as_bytes()),
            None => (None, path.as_bytes()),
        };
        let bytes: Vec<u8> = lead.into_iter().chain(name.iter().copied()).take(UNIX_PATH_MAX).collect();
        raw.path[..bytes.len()].copy_from_slice(&bytes);
        raw.path_len = bytes.len() as u32;
    }
    raw.child_pid = e.child_pid.unwrap_or(0);
    raw.traffic = e.traffic.unwrap_or_default();
    if let Some(p) = &e.passed {
        raw.traffic = p.file.to_traffic();
        raw.listen_fd = p.socket_fd.unwrap_or(-1);
        raw.peer_fd = p.index as i32;
        raw.child_pid = p.count;
        let name = p.name.as_deref().unwrap_or("").as_bytes();
        let n = name.len().min(UNIX_PATH_MAX - 1);
        raw.path = [0; UNIX_PATH_MAX];
        raw.path[..n].copy_from_slice(&name[..n]);
        raw.path_len = n as u32;
    }
    raw
}

/// The bytes of a kernel record, as the ring buffer hands them over: the
/// header and the part of `path` in use.
pub fn record_bytes(raw: &UnixEvent) -> &[u8] {
    // SAFETY: UnixEvent is plain old data with explicit padding fields, and
    // `record_len` is at most its size.
    unsafe { std::slice::from_raw_parts((raw as *const UnixEvent).cast::<u8>(), raw.record_len()) }
}

fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Renders `sun_path` the way ss does: a path up to its NUL, or `@` and the
/// abstract name with embedded NULs shown as `@`.
pub(crate) fn sun_path(b: &[u8]) -> Option<String> {
    match b.first() {
        None => None,
        Some(0) if b.len() == 1 => None,
        Some(0) => {
            let name: Vec<u8> = b[1..].iter().map(|c| if *c == 0 { b'@' } else { *c }).collect();
            Some(format!("@{}", String::from_utf8_lossy(&name)))
        }
        Some(_) => Some(c_str(b)).filter(|s| !s.is_empty()),
    }
}

pub(crate) fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Connect => "connect",
        EventKind::ConnectFailed => "connect_failed",
        EventKind::Accept => "accept",
        EventKind::Socketpair => "socketpair",
        EventKind::Close => "close",
        EventKind::DgramConnect => "dgram_connect",
        EventKind::Listen => "listen",
        EventKind::TaskExit => "exit",
        EventKind::FdClose => "fd_close",
        EventKind::Fork => "fork",
        EventKind::Rename => "rename",
        EventKind::DgramSend => "dgram_send",
        EventKind::FdSent => "fd_sent",
        EventKind::FdReceived => "fd_received",
        EventKind::PassFd => "pass_fd",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: EventKind) -> UnixEvent {
        let mut e = UnixEvent::zeroed();
        e.kind = kind as u32;
        e.ts_ns = 42;
        e.pid = 100;
        e.tid = 101;
        e.inode = 7;
        e.sock_type = 5;
        e.comm[..4].copy_from_slice(b"demo");
        e
    }

    fn bytes(e: &UnixEvent) -> Vec<u8> {
        record_bytes(e).to_vec()
    }

    #[test]
    fn encode_inverts_decode() {
        let mut samples = vec![Event::sample(EventKind::Connect, 9, 7, "client", 11, 12)];
        samples.push(Event { path: Some("@bus".into()), sk: 0xffff_0001, peer_sk: 0xffff_0002, ..samples[0].clone() });
        samples.push(Event { path: None, peer_fd: Some(4), sock_type: SockType::Seqpacket, ..samples[0].clone() });
        samples.push(Event { kind: EventKind::Fork, child_pid: Some(99), errno: 0, fd: None, ..samples[0].clone() });
        samples.push(Event {
            kind: EventKind::ConnectFailed,
            errno: libc::ENOENT,
            sock_type: SockType::Other(0),
            ..samples[0].clone()
        });
        let traffic = Traffic { bytes_sent: 1 << 40, bytes_received: 7, msgs_sent: 3, msgs_received: 1 };
        samples.push(Event { kind: EventKind::Close, traffic: Some(traffic), ..samples[0].clone() });
        for kind in [EventKind::FdSent, EventKind::FdReceived] {
            samples.push(Event { kind, path: None, passed: Some(Box::new(Passed::sample())), ..samples[0].clone() });
        }
        for e in samples {
            assert_eq!(decode(record_bytes(&encode(&e))).expect("decode"), e);
        }
    }

    #[test]
    fn decodes_a_passed_descriptor() {
        let mut e = raw(EventKind::FdSent);
        e.fd = 5;
        e.listen_fd = 3;
        e.peer_fd = 1;
        e.child_pid = 2;
        e.traffic = PassedFile { file: 0xffff_8881_dead_0000, inode: 77, mode: 0o100644, peer_inode: 0 }.to_traffic();
        e.path[..12].copy_from_slice(b"memfd:shared");
        e.path_len = 12;
        let ev = decode(&bytes(&e)).expect("decode");
        let p = ev.passed.as_deref().expect("passed");
        assert_eq!((ev.fd, ev.peer_fd, ev.listen_fd, ev.traffic, ev.path), (Some(5), None, None, None, None));
        assert_eq!(
            (p.file.file, p.file.inode, p.socket_fd, p.index, p.count),
            (0xffff_8881_dead_0000, 77, Some(3), 1, 2)
        );
        assert_eq!((p.name.as_deref(), p.kind()), (Some("memfd:shared"), "memfd"));
    }

    #[test]
    fn names_what_a_descriptor_is() {
        let kind = |mode: u32, name: &str| {
            let mut p = Passed::sample();
            p.file.mode = mode;
            p.name = Some(name.into());
            p.kind().to_owned()
        };
        assert_eq!(kind(0o100644, "notes.txt"), "file");
        assert_eq!(kind(0o100777, "memfd:wayland-shm"), "memfd");
        assert_eq!(kind(0o010600, ""), "pipe");
        assert_eq!(kind(0o010644, "myfifo"), "fifo");
        assert_eq!(kind(0o140777, ""), "socket");
        assert_eq!(kind(0o600, "[eventfd]"), "eventfd");
        assert_eq!(kind(0o100600, "[timerfd]"), "timerfd");
        assert_eq!(kind(0o600, "dmabuf"), "dmabuf");
        assert_eq!(kind(0o600, "weird"), "anon_inode");
    }

    #[test]
    fn only_a_close_carries_traffic() {
        let mut e = raw(EventKind::Close);
        e.traffic.bytes_sent = 64;
        e.traffic.msgs_received = 2;
        let want = Traffic { bytes_sent: 64, msgs_received: 2, ..Traffic::default() };
        assert_eq!(decode(&bytes(&e)).expect("decode").traffic, Some(want));
        e.kind = EventKind::FdClose as u32;
        assert_eq!(decode(&bytes(&e)).expect("decode").traffic, None);
    }

    #[test]
    fn decodes_a_socketpair_record() {
        let mut e = raw(EventKind::Socketpair);
        e.fd = 3;
        e.peer_fd = 4;
        let ev = decode(&bytes(&e)).expect("decode");
        assert_eq!(ev.kind, EventKind::Socketpair);
        assert_eq!((ev.pid, ev.tid, ev.comm.to_str().as_ref()), (100, 101, "demo"));
        assert_eq!((ev.fd, ev.peer_fd, ev.listen_fd), (Some(3), Some(4), None));
        assert_eq!((ev.inode, ev.peer_inode), (Some(7), None));
        assert_eq!(ev.sock_type, SockType::Seqpacket);
        assert_eq!(ev.path, None);
    }

    #[test]
    fn decodes_path_and_abstract_names() {
        let mut e = raw(EventKind::Connect);
        e.path[..10].copy_from_slice(b"/run/x.sk\0");
        e.path_len = 108;
        assert_eq!(decode(&bytes(&e)).expect("decode").path.as_deref(), Some("/run/x.sk"));
        let mut e = raw(EventKind::Connect);
        e.path[..6].copy_from_slice(b"\0bus\0x");
        e.path_len = 6;
        assert_eq!(decode(&bytes(&e)).expect("decode").path.as_deref(), Some("@bus@x"));
    }

    /// A close as the kernel writes it, byte by byte: the 144-byte header
    /// and no name. Pins the layout the kernel programs write.
    #[test]
    fn decodes_a_close_record_of_header_bytes_only() {
        let mut b = vec![0u8; UNIX_EVENT_HEADER];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0, &5_000u64.to_le_bytes()); // ts_ns
        put(8, &0xffff_8880_0000_1000u64.to_le_bytes()); // sk
        put(24, &4242u64.to_le_bytes()); // inode
        put(40, &1200u64.to_le_bytes()); // traffic.bytes_sent
        put(48, &48_000u64.to_le_bytes()); // traffic.bytes_received
        put(56, &3u64.to_le_bytes()); // traffic.msgs_sent
        put(64, &5u64.to_le_bytes()); // traffic.msgs_received
        put(72, &(EventKind::Close as u32).to_le_bytes());
        put(76, &300u32.to_le_bytes()); // pid
        put(80, &301u32.to_le_bytes()); // tid
        put(92, &1u32.to_le_bytes()); // sock_type
        put(100, &7i32.to_le_bytes()); // fd
        put(104, &(-1i32).to_le_bytes()); // peer_fd
        put(108, &(-1i32).to_le_bytes()); // listen_fd
        put(128, b"psql");
        assert_eq!(b.len(), 144);
        let ev = decode(&b).expect("decode");
        assert_eq!((ev.kind, ev.ts_ns, ev.pid, ev.tid), (EventKind::Close, 5_000, 300, 301));
        assert_eq!((ev.sk, ev.inode, ev.fd, ev.peer_fd), (0xffff_8880_0000_1000, Some(4242), Some(7), None));
        assert_eq!((ev.comm.to_str().as_ref(), ev.sock_type, ev.path.as_deref()), ("psql", SockType::Stream, None));
        let t = ev.traffic.expect("a close carries its counts");
        assert_eq!((t.bytes_sent, t.bytes_received, t.msgs_sent, t.msgs_received), (1200, 48_000, 3, 5));
    }

    #[test]
    fn a_record_carries_only_the_name_in_use_and_a_name_cannot_run_past_it() {
        let mut e = raw(EventKind::Connect);
        e.path[..9].copy_from_slice(b"/run/x.sk");
        e.path_len = 9;
        assert_eq!(bytes(&e).len(), UNIX_EVENT_HEADER + 9);
        assert_eq!(decode(&bytes(&e)).expect("decode").path.as_deref(), Some("/run/x.sk"));
        let mut cut = bytes(&e);
        cut.truncate(UNIX_EVENT_HEADER + 4);
        assert_eq!(decode(&cut).expect("decode").path.as_deref(), Some("/run"));
        let whole = {
            let mut w = bytes(&e);
            w.resize(size_of::<UnixEvent>(), 0);
            w
        };
        assert_eq!(decode(&whole).expect("decode").path.as_deref(), Some("/run/x.sk"));
        let mut over = whole;
        over.push(0);
        assert!(matches!(decode(&over), Err(DecodeError::Size { got: 257, .. })));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(decode(&[0u8; 10]), Err(DecodeError::Size { got: 10, .. })));
        assert!(matches!(decode(&[0u8; 143]), Err(DecodeError::Size { got: 143, .. })));
        let mut e = raw(EventKind::Close);
        e.kind = 99;
        assert!(matches!(decode(&bytes(&e)), Err(DecodeError::Kind(99))));
    }
}
