//! One JSON object per line. Events are written by hand into a reused
//! buffer (the recorder must keep up with the full capture rate); reading
//! goes through serde, where speed matters less than clear errors.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use unixpeer_common::EventKind;

use super::{FORMAT_NAME, FORMAT_VERSION};
use crate::capture::Strategy;
use crate::events::Inferred;
use crate::events::{Carried, DgramTotal, Event, Passed, PassedFile, SockType, Traffic, event_name};
use crate::follow::Holder;
use crate::identity::Identity;
use crate::model::{KernelState, Model, SockName, Socket, Vfs};
use crate::output::jsonw::{int, json_str};

/// The first line of every timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT_NAME`].
    pub(crate) format: String,
    pub(crate) version: u32,
    /// unixtrace's version, for bug reports.
    pub(crate) writer: String,
    pub(crate) hostname: String,
    pub(crate) kernel: String,
    /// By name (`as_str`); a name this build does not know is refused.
    #[serde(with = "backend_name")]
    pub(crate) backend: Strategy,
    pub(crate) backend_why: String,
    /// Whether the live model deduced releases at exit (the tracepoint
    /// strategy): replay must do the same to rebuild the same model.
    pub infer_release_on_exit: bool,
    /// CLOCK_MONOTONIC at the start; every event time is on this clock.
    pub(crate) start_mono_ns: u64,
    /// CLOCK_REALTIME at the same instant, ns since the epoch.
    pub(crate) start_wall_ns: i128,
    pub(crate) start_time: String,
    pub(crate) command_line: Vec<String>,
    /// The same in every part of one capture, and in no other capture's:
    /// what `-r` checks before joining files. Absent in files written
    /// before rotation existed.
    #[serde(default)]
    pub(crate) capture_id: Option<String>,
    /// The part's number within its capture, from 0 (`--rotate`). A part
    /// after the first starts at the rotation: `start_*` is that instant
    /// and its seeds are the live model as it stood then.
    #[serde(default)]
    pub(crate) part: u64,
}

impl Header {
    pub(crate) fn clock(&self) -> crate::follow::render::Clock {
        crate::follow::render::Clock {
            start_mono_ns: self.start_mono_ns,
            wall_offset_ns: self.start_wall_ns - i128::from(self.start_mono_ns),
        }
    }

    pub fn new(
        backend: Strategy,
        why: &str,
        infer_release_on_exit: bool,
        clock: &crate::follow::render::Clock,
    ) -> Self {
        Self {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            writer: format!("unixtrace {}", env!("CARGO_PKG_VERSION")),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            backend,
            backend_why: why.into(),
            infer_release_on_exit,
            start_mono_ns: clock.start_mono_ns,
            start_wall_ns: clock.wall_ns(clock.start_mono_ns),
            start_time: clock.rfc3339(clock.start_mono_ns),
            command_line: std::env::args().collect(),
            capture_id: Some(read_trimmed("/proc/sys/kernel/random/uuid")).filter(|id| !id.is_empty()),
            part: 0,
        }
    }

    /// The header of the part after this one, starting at `mono_ns`.
    pub(crate) fn next_part(&self, mono_ns: u64) -> Self {
        let clock = crate::follow::render::Clock { start_mono_ns: mono_ns, ..self.clock() };
        Self {
            start_mono_ns: mono_ns,
            start_wall_ns: clock.wall_ns(mono_ns),
            start_time: clock.rfc3339(mono_ns),
            part: self.part + 1,
            ..self.clone()
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// The header's `backend`: the strategy's name, as `-v` prints it.
mod backend_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::capture::Strategy;

    pub(super) fn serialize<S: Serializer>(b: &Strategy, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(b.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Strategy, D::Error> {
        let name = String::deserialize(d)?;
        Strategy::parse(&name).ok_or_else(|| {
            let known: Vec<&str> = Strategy::ALL.iter().map(|b| b.as_str()).collect();
            D::Error::custom(format!(
                "unknown backend {name:?} (this unixtrace knows {}): replay the file with the unixtrace \
                 named in its \"writer\"",
                known.join(", ")
            ))
        })
    }
}

/// One socket of the initial snapshot: the live model's seed plus the rest
/// of its UNIX_DIAG row, so `--at` before the first event shows a full table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedRecord {
    pub(crate) inode: u64,
    /// UNIX_DIAG's peer as reported: 0 for a peer that has no inode any more.
    pub(crate) peer: Option<u64>,
    #[serde(rename = "type", with = "sock_type_text")]
    pub(crate) sock_type: SockType,
    #[serde(with = "state_text")]
    pub(crate) state: KernelState,
    pub(crate) path: Option<String>,
    pub(crate) netns: u64,
    #[serde(default)]
    pub(crate) uid: Option<u32>,
    #[serde(default)]
    pub(crate) rq: Option<(u32, u32)>,
    #[serde(default)]
    pub(crate) icons: Vec<u64>,
    #[serde(default)]
    pub(crate) shutdown: u8,
    #[serde(default)]
    pub(crate) vfs: Option<(u32, u32)>,
    pub(crate) holders: Vec<Holder>,
    /// Who the holders' processes are, each given once per set of seeds
    /// (with its first socket). Absent in files written before identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) processes: Vec<ProcessRecord>,
}

/// A process's identity as recorded: the process is gone at replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub(crate) pid: u32,
    pub(crate) id: Identity,
}

impl SeedRecord {
    /// Every socket of a snapshot, in inode order.
    pub fn from_model(model: &Model) -> Vec<Self> {
        let mut given = foldhash::HashSet::default();
        model
            .sockets()
            .map(|s| Self {
                processes: model
                    .holders(s.inode)
                    .iter()
                    .filter(|h| given.insert(h.pid))
                    .filter_map(|h| Some(ProcessRecord { pid: h.pid, id: model.identity(h.pid)?.clone() }))
                    .filter(|p| p.id != Identity::default())
                    .collect(),
                inode: s.inode,
                peer: s.peer,
                sock_type: s.sock_type,
                state: s.state,
                path: s.name.as_ref().map(ToString::to_string),
                netns: s.netns,
                uid: s.uid,
                rq: s.rqlen,
                icons: s.icons.to_vec(),
                shutdown: s.shutdown,
                vfs: s.vfs.map(|v| (v.dev, v.ino)),
                holders: model.holders(s.inode).to_vec(),
            })
            .collect()
    }

    /// The live model as it stands (at a rotation): what a part begins
    /// with, so that it replays on its own. Queue lengths are left out (true
    /// only at a snapshot's instant), sockets first seen in events have no
    /// owner or VFS inode, and a client's `path` is the name it connected to.
    pub(crate) fn from_tracker(tracker: &crate::follow::Tracker) -> Vec<Self> {
        Self::from_model(&tracker.table_model(false, |_| false))
    }

    /// The snapshot a recording starts with (or checked the model against
    /// after lost events), as it was taken.
    pub fn model(records: &[SeedRecord]) -> Model {
        let holders = records.iter().map(|r| (r.inode, r.holders.iter().copied().collect())).collect();
        let mut model = Model::new(records.iter().map(SeedRecord::socket).collect(), holders);
        for p in records.iter().flat_map(|r| &r.processes) {
            model.processes_mut().learn(p.pid, p.id.clone());
        }
        model
    }

    pub(crate) fn socket(&self) -> Socket {
        Socket {
            inode: self.inode,
            sock_type: self.sock_type,
            state: self.state,
            name: self.path.as_deref().map(parse_name),
            peer: self.peer,
            icons: self.icons.clone().into_boxed_slice(),
            rqlen: self.rq,
            shutdown: self.shutdown,
            uid: self.uid,
            vfs: self.vfs.map(|(dev, ino)| Vfs { dev, ino }),
            netns: self.netns,
            path: None,
        }
    }
}

pub(crate) fn parse_name(s: &str) -> SockName {
    match s.strip_prefix('@') {
        Some(rest) => SockName::abstract_name(rest.as_bytes()),
        None => SockName::path(s.as_bytes()),
    }
}

/// A seed's socket type as the text the format has always carried.
mod sock_type_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::{Cow, SockType, parse_sock_type};

    pub(super) fn serialize<S: Serializer>(t: &SockType, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SockType, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        parse_sock_type(&text).ok_or_else(|| {
            D::Error::custom(format!("unknown socket type {text:?} (stream, dgram, seqpacket or typeN)"))
        })
    }
}

/// A seed's `sk_state` as text: `established`, `listen`, `close`, or the
/// kernel's number for any other state.
mod state_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::{Cow, KernelState};

    pub(super) fn serialize<S: Serializer>(state: &KernelState, s: S) -> Result<S::Ok, S::Error> {
        match state {
            KernelState::Established => s.serialize_str("established"),
            KernelState::Listen => s.serialize_str("listen"),
            KernelState::Close => s.serialize_str("close"),
            KernelState::Other(n) => s.collect_str(n),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KernelState, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        match &*text {
            "established" => Ok(KernelState::Established),
            "listen" => Ok(KernelState::Listen),
            "close" => Ok(KernelState::Close),
            n => n.parse().map(KernelState::Other).map_err(|_| {
                D::Error::custom(format!("unknown socket state {text:?} (established, listen, close or a number)"))
            }),
        }
    }
}

/// `stream`, `dgram`, `seqpacket`, or `typeN` for anything else (as
/// [`SockType`]'s Display writes it).
pub(crate) fn parse_sock_type(s: &str) -> Option<SockType> {
    match s {
        "stream" => Some(SockType::Stream),
        "dgram" => Some(SockType::Dgram),
        "seqpacket" => Some(SockType::Seqpacket),
        other => other.strip_prefix("type")?.parse().ok().map(SockType::Other),
    }
}

pub(crate) fn parse_event_kind(s: &str) -> Option<EventKind> {
    Some(match s {
        "connect" => EventKind::Connect,
        "connect_failed" => EventKind::ConnectFailed,
        "accept" => EventKind::Accept,
        "socketpair" => EventKind::Socketpair,
        "close" => EventKind::Close,
        "dgram_connect" => EventKind::DgramConnect,
        "dgram_send" => EventKind::DgramSend,
        "listen" => EventKind::Listen,
        "exit" => EventKind::TaskExit,
        "fd_close" => EventKind::FdClose,
        "fork" => EventKind::Fork,
        "rename" => EventKind::Rename,
        "fd_sent" => EventKind::FdSent,
        "fd_received" => EventKind::FdReceived,
        _ => return None,
    })
}

/// Appends one event line (with its newline) to `out`. Absent optional
/// fields are left out, which keeps the common line near 200 bytes.
pub(crate) fn write_event(out: &mut Vec<u8>, e: &Event) {
    out.extend_from_slice(b"{\"k\":\"e\",\"ev\":\"");
    out.extend_from_slice(event_name(e.kind).as_bytes());
    out.push(b'"');
    int(out, ",\"ts\":", e.ts_ns);
    int(out, ",\"pid\":", e.pid);
    int(out, ",\"tid\":", e.tid);
    int(out, ",\"uid\":", e.uid);
    out.extend_from_slice(b",\"comm\":");
    json_str(out, &e.comm.to_str());
    int(out, ",\"netns\":", e.netns);
    match e.sock_type {
        SockType::Other(t) => int(out, ",\"type\":\"type", t),
        t => {
            out.extend_from_slice(b",\"type\":\"");
            out.extend_from_slice(t.as_str().as_bytes());
        }
    }
    out.push(b'"');
    if e.errno != 0 {
        int(out, ",\"errno\":", e.errno);
    }
    for (key, v) in [(",\"fd\":", e.fd), (",\"peer_fd\":", e.peer_fd), (",\"listen_fd\":", e.listen_fd)] {
        if let Some(v) = v {
            int(out, key, v);
        }
    }
    for (key, v) in [(",\"inode\":", e.inode), (",\"peer_inode\":", e.peer_inode)] {
        if let Some(v) = v {
            int(out, key, v);
        }
    }
    for (key, v) in [(",\"sk\":", e.sk), (",\"peer_sk\":", e.peer_sk)] {
        if v != 0 {
            int(out, key, v);
        }
    }
    if let Some(p) = &e.path {
        out.extend_from_slice(b",\"path\":");
        json_str(out, p);
    }
    if let Some(c) = e.child_pid {
        int(out, ",\"child_pid\":", c);
    }
    if let Some(why) = e.inferred {
        out.extend_from_slice(b",\"inferred\":");
        json_str(out, why.as_str());
    }
    if let Some(t) = &e.traffic {
        write_traffic(out, t);
    }
    write_sent_to(out, &e.sent_to);
    if let Some(p) = &e.passed {
        write_passed(out, p);
    }
    out.extend_from_slice(b"}\n");
}

/// A passed descriptor's keys (`fd_sent`, `fd_received`).
fn write_passed(out: &mut Vec<u8>, p: &Passed) {
    int(out, ",\"file\":", p.file.file);
    int(out, ",\"file_inode\":", p.file.inode);
    int(out, ",\"file_mode\":", p.file.mode);
    if p.file.peer_inode != 0 {
        int(out, ",\"file_peer_inode\":", p.file.peer_inode);
    }
    if let Some(name) = &p.name {
        out.extend_from_slice(b",\"file_name\":");
        json_str(out, name);
    }
    if let Some(fd) = p.socket_fd {
        int(out, ",\"socket_fd\":", fd);
    }
    int(out, ",\"index\":", p.index);
    int(out, ",\"count\":", p.count);
}

fn write_traffic(out: &mut Vec<u8>, t: &Traffic) {
    int(out, ",\"bytes_sent\":", t.bytes_sent);
    int(out, ",\"bytes_received\":", t.bytes_received);
    int(out, ",\"msgs_sent\":", t.msgs_sent);
    int(out, ",\"msgs_received\":", t.msgs_received);
}

/// What a socket whose release the model infers from the next event
/// carried (see `Recorder::released_traffic`).
pub(crate) fn write_released_traffic(out: &mut Vec<u8>, inode: u64, c: &Carried) {
    int(out, "{\"k\":\"traffic\",\"inode\":", inode);
    write_traffic(out, &c.traffic);
    write_sent_to(out, &c.sent_to);
    out.extend_from_slice(b"}\n");
}

/// What open socket `inode` carried so far, sampled at `ts_ns` (see
/// `Recorder::counts`): `--at` shows it for a connection still open.
pub(crate) fn write_counts(out: &mut Vec<u8>, ts_ns: u64, inode: u64, t: &Traffic) {
    int(out, "{\"k\":\"counts\",\"ts\":", ts_ns);
    int(out, ",\"inode\":", inode);
    write_traffic(out, t);
    out.extend_from_slice(b"}\n");
}

fn write_sent_to(out: &mut Vec<u8>, sent_to: &[DgramTotal]) {
    if sent_to.is_empty() {
        return;
    }
    out.extend_from_slice(b",\"sent_to\":[");
    for (i, d) in sent_to.iter().enumerate() {
        int(out, if i == 0 { "[" } else { ",[" }, d.receiver);
        int(out, ",", d.bytes);
        int(out, ",", d.msgs);
        out.push(b']');
    }
    out.push(b']');
}

impl Line<'_> {
    fn sent_to(&self) -> Vec<DgramTotal> {
        let total =
            |&[receiver, bytes, msgs]: &[u64; 3]| DgramTotal { receiver, bytes, msgs, holder: None, path: None };
        self.sent_to.iter().map(total).collect()
    }

    /// All four counts or none: a record with some is damaged.
    fn traffic(&self) -> Result<Option<Traffic>, String> {
        match (self.bytes_sent, self.bytes_received, self.msgs_sent, self.msgs_received) {
            (None, None, None, None) => Ok(None),
            (Some(bytes_sent), Some(bytes_received), Some(msgs_sent), Some(msgs_received)) => {
                Ok(Some(Traffic { bytes_sent, bytes_received, msgs_sent, msgs_received }))
            }
            _ => Err(format!(
                "{} record has only some of `bytes_sent`, `bytes_received`, `msgs_sent` and `msgs_received`",
                self.k
            )),
        }
    }
}

/// Every line after the header, as read: one flat object whose `k` says
/// which fields matter.
#[derive(Debug, Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    k: Cow<'a, str>,
    #[serde(borrow, default)]
    ev: Option<Cow<'a, str>>,
    ts: Option<u64>,
    pid: Option<u32>,
    tid: Option<u32>,
    uid: Option<u32>,
    #[serde(borrow, default)]
    comm: Option<Cow<'a, str>>,
    netns: Option<u32>,
    #[serde(borrow, default, rename = "type")]
    sock_type: Option<Cow<'a, str>>,
    errno: Option<i32>,
    fd: Option<i32>,
    peer_fd: Option<i32>,
    listen_fd: Option<i32>,
    inode: Option<u64>,
    peer_inode: Option<u64>,
    sk: Option<u64>,
    peer_sk: Option<u64>,
    path: Option<String>,
    child_pid: Option<u32>,
    #[serde(borrow, default)]
    inferred: Option<Cow<'a, str>>,
    count: Option<u64>,
    seed: Option<SeedRecord>,
    id: Option<Identity>,
    received: Option<u64>,
    lost: Option<u64>,
    bytes_sent: Option<u64>,
    bytes_received: Option<u64>,
    /// (receiver inode, bytes, datagrams) per receiver sent to by address.
    #[serde(default)]
    sent_to: Vec<[u64; 3]>,
    msgs_sent: Option<u64>,
    msgs_received: Option<u64>,
    file: Option<u64>,
    file_inode: Option<u64>,
    file_mode: Option<u32>,
    file_peer_inode: Option<u64>,
    file_name: Option<String>,
    socket_fd: Option<i32>,
    index: Option<u32>,
}

impl Line<'_> {
    /// `fd_sent` and `fd_received`: the descriptor, which they must name.
    fn passed(&self, kind: EventKind) -> Result<Option<Box<Passed>>, String> {
        if !crate::events::passes_fd(kind) {
            return Ok(None);
        }
        let (Some(file), Some(inode), Some(mode)) = (self.file, self.file_inode, self.file_mode) else {
            return Err("a passed descriptor's record lacks `file`, `file_inode` or `file_mode`".into());
        };
        Ok(Some(Box::new(Passed {
            file: PassedFile { file, inode, mode, peer_inode: self.file_peer_inode.unwrap_or(0) },
            name: self.file_name.as_deref().map(Into::into),
            socket_fd: self.socket_fd,
            index: self.index.unwrap_or(0),
            count: self.count.unwrap_or(0) as u32,
            received: None,
        })))
    }
}

/// One record after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Seed(SeedRecord),
    /// Ends the initial snapshot: events follow.
    SeedsDone,
    Event(Event),
    /// `count` events dropped in the kernel, noticed at `ts_ns`.
    Lost {
        ts_ns: u64,
        count: u64,
    },
    /// After `lost` events were lost, the model was checked against the
    /// kernel's sockets of `netns`: the seeds that follow, up to
    /// `SeedsDone`, are what the kernel had.
    Resync {
        ts_ns: u64,
        lost: u64,
        netns: u32,
    },
    /// Who process `pid` is, read when it was first met or after its
    /// exec; before the events that need it.
    Process(ProcessRecord),
    /// What socket `inode` carried: its release is inferred from the event
    /// that follows (an exit, under the tracepoint strategy).
    ReleasedTraffic {
        inode: u64,
        carried: Carried,
    },
    /// What open socket `inode` had carried by `ts_ns`.
    Counts {
        ts_ns: u64,
        inode: u64,
        traffic: Traffic,
    },
    /// Written on a clean stop; a killed recorder leaves none.
    End {
        ts_ns: u64,
        received: u64,
        lost: u64,
    },
}

/// Parses one line after the header; the error says what is wrong without
/// the position, which the reader adds.
pub(crate) fn parse_record(line: &[u8]) -> Result<Record, String> {
    let l: Line<'_> = serde_json::from_slice(line).map_err(|e| format!("bad record: {e}"))?;
    let need = |v: Option<u64>, what: &str| v.ok_or_else(|| format!("{} record lacks `{what}`", l.k));
    match l.k.as_ref() {
        "seed" => l.seed.clone().map(Record::Seed).ok_or_else(|| "seed record lacks `seed`".into()),
        "seeds_done" => Ok(Record::SeedsDone),
        "proc" => Ok(Record::Process(ProcessRecord {
            pid: l.pid.ok_or("proc record lacks `pid`")?,
            id: l.id.clone().ok_or("proc record lacks `id`")?,
        })),
        "lost" => Ok(Record::Lost { ts_ns: need(l.ts, "ts")?, count: need(l.count, "count")? }),
        "end" => {
            Ok(Record::End { ts_ns: need(l.ts, "ts")?, received: l.received.unwrap_or(0), lost: l.lost.unwrap_or(0) })
        }
        "e" => event(&l).map(Record::Event),
        "traffic" => Ok(Record::ReleasedTraffic {
            inode: need(l.inode, "inode")?,
            carried: Carried {
                traffic: l.traffic()?.ok_or("traffic record lacks `bytes_sent`")?,
                sent_to: l.sent_to(),
            },
        }),
        "counts" => Ok(Record::Counts {
            ts_ns: need(l.ts, "ts")?,
            inode: need(l.inode, "inode")?,
            traffic: l.traffic()?.ok_or("counts record lacks `bytes_sent`")?,
        }),
        "resync" => Ok(Record::Resync {
            ts_ns: need(l.ts, "ts")?,
            lost: l.lost.unwrap_or(0),
            netns: l.netns.ok_or("resync record lacks `netns`")?,
        }),
        other => Err(format!("unknown record kind {other:?}")),
    }
}

fn event(l: &Line<'_>) -> Result<Event, String> {
    let ev = l.ev.as_deref().ok_or("event record lacks `ev`")?;
    let kind = parse_event_kind(ev).ok_or_else(|| format!("unknown event {ev:?}"))?;
    let ty = l.sock_type.as_deref().ok_or("event record lacks `type`")?;
    let sock_type = parse_sock_type(ty).ok_or_else(|| format!("unknown socket type {ty:?}"))?;
    let need = |v: Option<u32>, what: &str| v.ok_or_else(|| format!("event record lacks `{what}`"));
    Ok(Event {
        ts_ns: l.ts.ok_or("event record lacks `ts`")?,
        kind,
        pid: need(l.pid, "pid")?,
        tid: need(l.tid, "tid")?,
        uid: need(l.uid, "uid")?,
        comm: l.comm.as_deref().ok_or("event record lacks `comm`")?.into(),
        netns: need(l.netns, "netns")?,
        sock_type,
        errno: l.errno.unwrap_or(0),
        fd: l.fd,
        peer_fd: l.peer_fd,
        listen_fd: l.listen_fd,
        inode: l.inode,
        peer_inode: l.peer_inode,
        sk: l.sk.unwrap_or(0),
        peer_sk: l.peer_sk.unwrap_or(0),
        path: l.path.as_deref().map(Into::into),
        child_pid: l.child_pid,
        traffic: l.traffic()?,
        sent_to: l.sent_to(),
        inferred: match l.inferred.as_deref() {
            None => None,
            Some(why) => Some(Inferred::parse(why).ok_or_else(|| format!("unknown `inferred` reason {why:?}"))?),
        },
        passed: l.passed(kind)?,
    })
}

pub(crate) fn write_seed(out: &mut Vec<u8>, s: &SeedRecord) -> serde_json::Result<()> {
    #[derive(Serialize)]
    struct Wrap<'a> {
        k: &'static str,
        seed: &'a SeedRecord,
    }
    serde_json::to_writer(&mut *out, &Wrap { k: "seed", seed: s })?;
    out.push(b'\n');
    Ok(())
}

pub(crate) fn write_process(out: &mut Vec<u8>, pid: u32, id: &Identity) -> serde_json::Result<()> {
    #[derive(Serialize)]
    struct Wrap<'a> {
        k: &'static str,
        pid: u32,
        id: &'a Identity,
    }
    serde_json::to_writer(&mut *out, &Wrap { k: "proc", pid, id })?;
    out.push(b'\n');
    Ok(())
}

pub(crate) fn write_lost(out: &mut Vec<u8>, ts_ns: u64, count: u64) {
    out.extend_from_slice(format!("{{\"k\":\"lost\",\"ts\":{ts_ns},\"count\":{count}}}\n").as_bytes());
}

pub(crate) fn write_resync(out: &mut Vec<u8>, ts_ns: u64, lost: u64, netns: u32) {
    out.extend_from_slice(
        format!("{{\"k\":\"resync\",\"ts\":{ts_ns},\"lost\":{lost},\"netns\":{netns}}}\n").as_bytes(),
    );
}

pub(crate) fn write_end(out: &mut Vec<u8>, ts_ns: u64, received: u64, lost: u64) {
    out.extend_from_slice(
        format!("{{\"k\":\"end\",\"ts\":{ts_ns},\"received\":{received},\"lost\":{lost}}}\n").as_bytes(),
    );
}

pub(crate) const SEEDS_DONE: &[u8] = b"{\"k\":\"seeds_done\"}\n";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_event() -> Event {
        Event {
            ts_ns: 123_456_789,
            kind: EventKind::Connect,
            pid: 42,
            tid: 43,
            uid: 1000,
            comm: "we\"ird\\\n\u{1}name".into(),
            netns: 4_026_531_840,
            sock_type: SockType::Stream,
            errno: 0,
            fd: Some(5),
            peer_fd: None,
            listen_fd: None,
            inode: Some(1234),
            peer_inode: None,
            sk: 0xffff_8880_1234_5678,
            peer_sk: 0xffff_8880_8765_4321,
            path: Some("/run/ü.sock".into()),
            child_pid: None,
            traffic: None,
            sent_to: Vec::new(),
            inferred: None,
            passed: None,
        }
    }

    #[test]
    fn events_round_trip_through_a_line() {
        let mut variants = vec![sample_event()];
        let mut e = sample_event();
        e.kind = EventKind::ConnectFailed;
        e.errno = -111;
        e.sock_type = SockType::Other(9);
        e.path = None;
        e.fd = None;
        e.child_pid = Some(77);
        e.peer_fd = Some(-3);
        variants.push(e);
        for why in Inferred::ALL {
            variants.push(Event { kind: EventKind::Close, inferred: Some(why), ..sample_event() });
        }
        let traffic = Traffic { bytes_sent: u64::MAX, bytes_received: 0, msgs_sent: 1, msgs_received: 2 };
        variants.push(Event { kind: EventKind::Close, traffic: Some(traffic), ..sample_event() });
        let to = |receiver, bytes, msgs| DgramTotal { receiver, bytes, msgs, holder: None, path: None };
        variants.push(Event { kind: EventKind::Close, sent_to: vec![to(7, 60, 3), to(9, 1, 1)], ..sample_event() });
        let mut passed = Passed::sample();
        variants.push(Event { kind: EventKind::FdSent, passed: Some(Box::new(passed.clone())), ..sample_event() });
        passed.file.peer_inode = 99;
        passed.name = Some("a \"hostile\"\n\u{1b}[31mname".into());
        passed.socket_fd = None;
        variants.push(Event { kind: EventKind::FdReceived, passed: Some(Box::new(passed)), ..sample_event() });
        for e in variants {
            let mut line = Vec::new();
            write_event(&mut line, &e);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line: {}", String::from_utf8_lossy(&line));
            assert_eq!(parse_record(&line), Ok(Record::Event(e)));
        }
    }

    #[test]
    fn a_passed_descriptor_must_say_which_file() {
        let line =
            br#"{"k":"e","ev":"fd_sent","ts":1,"pid":1,"tid":1,"uid":0,"comm":"x","netns":1,"type":"stream","fd":4}"#;
        assert!(parse_record(line).is_err_and(|e| e.contains("file")));
    }

    #[test]
    fn counts_come_all_four_or_not_at_all() {
        let line = br#"{"k":"e","ev":"close","ts":1,"pid":1,"tid":1,"uid":0,"comm":"x","netns":1,"type":"stream","bytes_sent":5}"#;
        assert!(parse_record(line).unwrap_err().contains("only some of `bytes_sent`"));
        assert!(parse_record(br#"{"k":"traffic","inode":3}"#).unwrap_err().contains("lacks `bytes_sent`"));
        assert!(parse_record(br#"{"k":"counts","ts":1,"inode":3}"#).unwrap_err().contains("lacks `bytes_sent`"));
        assert!(parse_record(br#"{"k":"counts","inode":3,"bytes_sent":1}"#).unwrap_err().contains("lacks `ts`"));
    }

    #[test]
    fn an_unknown_inferred_reason_is_refused_by_name() {
        let line = br#"{"k":"e","ev":"close","ts":1,"pid":1,"tid":1,"uid":0,"comm":"x","netns":1,"type":"stream","inferred":"magic"}"#;
        assert_eq!(parse_record(line), Err(r#"unknown `inferred` reason "magic""#.to_owned()));
    }

    #[test]
    fn other_records_round_trip() {
        let mut out = Vec::new();
        write_lost(&mut out, 5, 7);
        write_end(&mut out, 6, 100, 7);
        let traffic = Traffic { bytes_sent: 64, bytes_received: 128, msgs_sent: 1, msgs_received: 2 };
        let to = DgramTotal { receiver: 3, bytes: 5, msgs: 1, holder: None, path: None };
        let carried = Carried { traffic, sent_to: vec![to] };
        write_released_traffic(&mut out, 11, &carried);
        write_counts(&mut out, 8, 12, &traffic);
        out.extend_from_slice(SEEDS_DONE);
        let seed = SeedRecord {
            inode: 9,
            peer: Some(0),
            sock_type: SockType::Stream,
            state: KernelState::Established,
            path: Some("@abs".into()),
            netns: 1,
            uid: Some(0),
            rq: Some((1, 2)),
            icons: vec![],
            shutdown: 0,
            vfs: None,
            holders: vec![Holder { pid: 1, comm: "init".into(), fd: Some(3) }],
            processes: Vec::new(),
        };
        write_seed(&mut out, &seed).unwrap();
        let got: Vec<Record> =
            out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| parse_record(l).unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Record::Lost { ts_ns: 5, count: 7 },
                Record::End { ts_ns: 6, received: 100, lost: 7 },
                Record::ReleasedTraffic { inode: 11, carried },
                Record::Counts { ts_ns: 8, inode: 12, traffic },
                Record::SeedsDone,
                Record::Seed(seed)
            ]
        );
    }

    #[test]
    fn seed_types_and_states_keep_their_text_and_refuse_others() {
        let seed = |ty: &str, state: &str| {
            format!(
                r#"{{"k":"seed","seed":{{"inode":1,"peer":null,"type":"{ty}","state":"{state}","path":null,"netns":1,"holders":[]}}}}"#
            )
        };
        for (ty, state) in [("stream", "established"), ("dgram", "close"), ("seqpacket", "listen"), ("type9", "12")] {
            let line = seed(ty, state);
            let Ok(Record::Seed(s)) = parse_record(line.as_bytes()) else { panic!("{line}") };
            let mut out = Vec::new();
            write_seed(&mut out, &s).unwrap();
            let back = String::from_utf8(out).unwrap();
            assert!(back.contains(&format!(r#""type":"{ty}","state":"{state}""#)), "{back}");
        }
        let err = parse_record(seed("stream", "sleepy").as_bytes()).unwrap_err();
        assert!(err.contains(r#"unknown socket state "sleepy""#), "{err}");
        let err = parse_record(seed("carrier-pigeon", "listen").as_bytes()).unwrap_err();
        assert!(err.contains(r#"unknown socket type "carrier-pigeon""#), "{err}");
    }

    /// Each process once per set of seeds, with its first socket; its later
    /// identity in a record of its own, read back to the model.
    #[test]
    fn identities_are_recorded_once_and_read_back() {
        use crate::identity::{Container, Runtime};
        let holder = |pid| Holder { pid, comm: "app".into(), fd: Some(3) };
        let sock = |inode| Socket::new(inode, SockType::Stream, KernelState::Close, 1);
        let holders = [(1, [holder(10)].into_iter().collect()), (2, [holder(10), holder(11)].into_iter().collect())];
        let mut model = Model::new(vec![sock(1), sock(2)], holders.into_iter().collect());
        let docker =
            Container { runtime: Runtime::Docker, id: "ab".repeat(32).into(), name: None, pod_uid: None, qos: None };
        let id = Identity { uid: Some(0), user: Some("root".into()), unit: None, container: Some(docker) };
        model.processes_mut().learn(10, id.clone());
        model.processes_mut().learn(11, Identity::default());
        let seeds = SeedRecord::from_model(&model);
        let given: Vec<Vec<u32>> = seeds.iter().map(|s| s.processes.iter().map(|p| p.pid).collect()).collect();
        assert_eq!(given, vec![vec![10], vec![]], "once, and nothing for what is unknown");
        let mut out = Vec::new();
        for s in &seeds {
            write_seed(&mut out, s).unwrap();
        }
        write_process(&mut out, 12, &id).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains(r#"{"k":"proc","pid":12,"id":{"uid":0,"user":"root","unit":null,"container":{"#),
            "{text}"
        );
        let mut back = Vec::new();
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match parse_record(line).unwrap() {
                Record::Seed(s) => back.push(s),
                Record::Process(p) => assert_eq!((p.pid, &p.id), (12, &id)),
                other => panic!("{other:?}"),
            }
        }
        let replayed = SeedRecord::model(&back);
        assert_eq!(replayed.identity(10), Some(&id));
        assert_eq!(replayed.identity(11), None);
        assert!(parse_record(br#"{"k":"proc","pid":1}"#).unwrap_err().contains("lacks `id`"));
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        assert!(
            parse_record(b"{\"k\":\"e\",\"ev\":\"teleport\",\"type\":\"stream\"}").unwrap_err().contains("teleport")
        );
        assert!(parse_record(b"{\"k\":\"x\"}").unwrap_err().contains("unknown record kind"));
        assert!(parse_record(b"{\"k\":\"lost\"}").unwrap_err().contains("lacks `ts`"));
        assert!(parse_record(b"nonsense").unwrap_err().starts_with("bad record"));
    }
}
