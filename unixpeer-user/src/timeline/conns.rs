//! Connections as spans: from the replayed events, who connected to whom,
//! when, over which name, and when the first end closed. What `--summary`
//! counts and `export` draws.
//!
//! Only connections made during the recording have a start; those already
//! open in the snapshot are left out rather than given a made-up one.
//!
//! What moved over a connection comes from its ends' closes, each counted
//! from that end's point of view; a recording made without counting has
//! none, and then nothing is shown rather than zeros.

use std::collections::HashMap;

use unixpeer_common::EventKind;

use super::{
    TimelineError,
    replay::{Replay, Step},
};
use crate::events::Traffic;
use crate::follow::{Holder, Peer, Resolved};
use crate::identity::{Identity, Processes};
use crate::model::SockType;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ConnKind {
    /// connect() then accept().
    Connected,
    Socketpair,
    /// connect() on a datagram socket: a default destination.
    Dgram,
    /// connect() that failed.
    Failed,
}

impl ConnKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connect",
            Self::Socketpair => "socketpair",
            Self::Dgram => "dgram_connect",
            Self::Failed => "connect_failed",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub(crate) kind: ConnKind,
    pub(crate) sock_type: SockType,
    /// Who connected, with the fd it connected.
    pub(crate) client: Holder,
    /// Who accepted, with the accepted fd (or, until then, who listened);
    /// None when nobody is known.
    pub(crate) server: Option<Holder>,
    pub(crate) path: Option<String>,
    pub(crate) start_ns: u64,
    /// The first close of either end; None if still open at the end.
    pub(crate) end_ns: Option<u64>,
    pub(crate) errno: i32,
    /// Whether the accept() was seen.
    pub(crate) accepted: bool,
    /// Who the client's and the server's processes were when they acted.
    pub(crate) client_id: Option<Arc<Identity>>,
    pub(crate) server_id: Option<Arc<Identity>>,
    /// What each end counted in its life, as its close carried it; None
    /// while that close is unseen or was not counted.
    pub(crate) client_traffic: Option<Traffic>,
    pub(crate) server_traffic: Option<Traffic>,
}

/// What moved one way over a connection (or several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) bytes: u64,
    pub(crate) msgs: u64,
}

impl Flow {
    /// Adds `f` to a running total that stays None until something known
    /// is added: a sum of unknowns must not read as a measured zero.
    pub(crate) fn add(total: &mut Option<Self>, f: Option<Self>) {
        if let Some(f) = f {
            let t = total.get_or_insert_default();
            t.bytes = t.bytes.saturating_add(f.bytes);
            t.msgs = t.msgs.saturating_add(f.msgs);
        }
    }

    /// Both ways together, None when neither is known.
    pub(crate) fn both(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        let mut t = a;
        Self::add(&mut t, b);
        t
    }
}

/// One way: the sender's own count, else (its close unseen) what the
/// receiver counted; they differ only by what was still queued.
fn flow(sender: Option<Traffic>, receiver: Option<Traffic>) -> Option<Flow> {
    sender
        .map(|t| Flow { bytes: t.bytes_sent, msgs: t.msgs_sent })
        .or_else(|| receiver.map(|t| Flow { bytes: t.bytes_received, msgs: t.msgs_received }))
}

impl Conn {
    pub(crate) fn lifetime_ns(&self) -> Option<u64> {
        self.end_ns.map(|e| e.saturating_sub(self.start_ns))
    }

    pub(crate) fn to_server(&self) -> Option<Flow> {
        flow(self.client_traffic, self.server_traffic)
    }

    pub(crate) fn to_client(&self) -> Option<Flow> {
        flow(self.server_traffic, self.client_traffic)
    }
}

pub struct Conns {
    pub(crate) list: Vec<Conn>,
    pub(crate) start_ns: u64,
    /// The last instant the recording covers.
    pub(crate) end_ns: u64,
    pub(crate) lost: u64,
}

/// One connection between processes named `client` and `server` (pids 20
/// and 10) on a hostile abstract name: for the tests that check what each
/// output does with names other processes chose.
#[cfg(test)]
pub(crate) fn hostile_conns(client: &str, server: &str) -> Conns {
    let proc = |pid, comm: &str, fd| Holder { pid, comm: comm.into(), fd: Some(fd) };
    let conn = Conn {
        kind: ConnKind::Connected,
        sock_type: SockType::Stream,
        client: proc(20, client, 3),
        server: Some(proc(10, server, 4)),
        path: Some("@</script><b>x\n\"".into()),
        start_ns: 1,
        end_ns: Some(2),
        errno: 0,
        accepted: true,
        client_id: None,
        server_id: None,
        client_traffic: None,
        server_traffic: None,
    };
    Conns { list: vec![conn], start_ns: 0, end_ns: 3, lost: 0 }
}

/// `recording()` with counts on the closes `counted` names (the client's,
/// inode 200, and the server's, 300): the client sent 1229 bytes in 3
/// messages and received 48 KiB in 5, and the server's end the reverse.
#[cfg(test)]
pub(crate) fn counted_recording(counted: &[u64]) -> Vec<u8> {
    let counts = |inode| match inode {
        200 => ",\"bytes_sent\":1229,\"bytes_received\":49152,\"msgs_sent\":3,\"msgs_received\":5}",
        _ => ",\"bytes_sent\":49152,\"bytes_received\":1229,\"msgs_sent\":5,\"msgs_received\":3}",
    };
    let text = String::from_utf8(super::replay::tests::recording()).expect("utf-8");
    let mut out = String::new();
    for line in text.lines() {
        match counted.iter().find(|i| line.contains("\"ev\":\"close\"") && line.contains(&format!("\"inode\":{i},"))) {
            Some(&i) => out.push_str(&format!("{}{}", line.strip_suffix('}').expect("an object"), counts(i))),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    assert_eq!(out.matches("bytes_sent").count(), counted.len(), "{out}");
    out.into_bytes()
}

/// Replays the whole file and gathers its connections.
pub fn collect(replay: &mut Replay) -> Result<Conns, TimelineError> {
    let mut b = Builder::default();
    let mut lost = 0;
    replay.run::<TimelineError>(None, &mut |step| {
        match step {
            Step::Event(r, ids) => b.event(r, ids),
            Step::Lost { count, .. } => lost += count,
            Step::Resync(_) => {}
        }
        Ok(())
    })?;
    Ok(Conns { list: b.list, start_ns: replay.reader.header.start_mono_ns, end_ns: replay.last_ts, lost })
}

/// Which end of its connection a socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Client,
    Server,
}

#[derive(Default)]
struct Builder {
    list: Vec<Conn>,
    /// Socket inode -> its connection and which end it is, until that
    /// socket closes.
    open: HashMap<u64, (usize, End)>,
}

fn first_peer(peer: &Peer) -> Option<&Holder> {
    match peer {
        Peer::Holders(h) => h.first(),
        Peer::Listener(h) => Some(h),
        Peer::Unknown => None,
    }
}

impl Builder {
    fn push(&mut self, r: &Resolved, kind: ConnKind, ids: &Processes) -> usize {
        let e = &r.event;
        let peer = first_peer(&r.peer);
        let (client_id, server_id) = (ids.shared(e.pid), peer.and_then(|p| ids.shared(p.pid)));
        self.list.push(Conn {
            kind,
            sock_type: e.sock_type,
            client: Holder::of(e.pid, e.comm, e.fd),
            server: peer.copied(),
            path: e.path.as_deref().map(str::to_owned),
            start_ns: e.ts_ns,
            end_ns: (kind == ConnKind::Failed).then_some(e.ts_ns),
            errno: e.errno,
            accepted: false,
            client_id,
            server_id,
            client_traffic: None,
            server_traffic: None,
        });
        self.list.len() - 1
    }

    fn event(&mut self, r: &Resolved, ids: &Processes) {
        let e = &r.event;
        match e.kind {
            EventKind::Connect | EventKind::DgramConnect => {
                let kind = if e.kind == EventKind::Connect { ConnKind::Connected } else { ConnKind::Dgram };
                let i = self.push(r, kind, ids);
                if let Some(inode) = e.inode {
                    self.open.insert(inode, (i, End::Client));
                }
            }
            EventKind::Socketpair => {
                let i = self.push(r, ConnKind::Socketpair, ids);
                self.list[i].server = Some(Holder::of(e.pid, e.comm, e.peer_fd));
                self.list[i].server_id = ids.shared(e.pid);
                for (inode, end) in [(e.inode, End::Client), (e.peer_inode, End::Server)] {
                    if let Some(inode) = inode {
                        self.open.insert(inode, (i, end));
                    }
                }
            }
            EventKind::ConnectFailed => {
                self.push(r, ConnKind::Failed, ids);
            }
            EventKind::Accept => {
                let Some((i, End::Client)) = e.peer_inode.and_then(|c| self.open.get(&c).copied()) else {
                    return;
                };
                let c = &mut self.list[i];
                c.server = Some(Holder::of(e.pid, e.comm, e.fd));
                c.server_id = ids.shared(e.pid);
                c.accepted = true;
                let client_closed = c.end_ns.is_some();
                if client_closed {
                    self.open.remove(&e.peer_inode.unwrap_or_default());
                }
                if let Some(inode) = e.inode {
                    self.open.insert(inode, (i, End::Server));
                }
            }
            EventKind::Close => {
                let Some(inode) = e.inode else { return };
                let Some(&(i, end)) = self.open.get(&inode) else { return };
                let c = &mut self.list[i];
                c.end_ns.get_or_insert(e.ts_ns);
                match end {
                    End::Client => c.client_traffic = e.traffic,
                    End::Server => c.server_traffic = e.traffic,
                }
                // A client may close before the server accepts: the accept
                // still needs to find its connection.
                if c.kind != ConnKind::Connected || c.accepted {
                    self.open.remove(&inode);
                }
                // A socketpair's other end usually went to a child by fork:
                // the close says who held it in the end.
                if c.kind == ConnKind::Socketpair
                    && let Some(h) = first_peer(&r.peer)
                    && h.pid != c.client.pid
                {
                    c.server = Some(*h);
                    c.server_id = ids.shared(h.pid);
                }
            }
            EventKind::Listen
            | EventKind::TaskExit
            | EventKind::FdClose
            | EventKind::Fork
            | EventKind::Rename
            | EventKind::DgramSend
            | EventKind::FdSent
            | EventKind::FdReceived
            | EventKind::PassFd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::replay::tests::{open, recording};

    #[test]
    fn a_connection_spans_connect_to_first_close() {
        let conns = collect(&mut open(recording())).unwrap();
        assert_eq!(conns.list.len(), 1);
        let c = &conns.list[0];
        assert_eq!(
            (c.client.process_name(), c.server.map(|s| s.process_name())),
            ("client[20]".into(), Some("server[10]".into()))
        );
        assert_eq!((c.start_ns, c.end_ns), (1_000_000_000, Some(3_000_000_000)));
        assert_eq!(c.server.and_then(|s| s.fd), Some(4), "the accepted fd, not the listener's");
        assert_eq!(conns.end_ns, 5_000_000_000, "the end record closes the recording");
        assert_eq!((c.to_server(), c.to_client()), (None, None), "nothing counted, nothing known");
    }

    #[test]
    fn each_way_from_its_sender_else_its_receiver() {
        let flow = |bytes, msgs| Some(Flow { bytes, msgs });
        let both = collect(&mut open(counted_recording(&[200, 300]))).unwrap();
        let c = &both.list[0];
        assert_eq!(c.client_traffic.map(|t| t.bytes_sent), Some(1229), "the client's close is the client's");
        assert_eq!((c.to_server(), c.to_client()), (flow(1229, 3), flow(49152, 5)));
        for one in [200, 300] {
            let c = &collect(&mut open(counted_recording(&[one]))).unwrap().list[0];
            assert_eq!((c.to_server(), c.to_client()), (flow(1229, 3), flow(49152, 5)), "only {one} counted");
        }
        let mut total = None;
        Flow::add(&mut total, None);
        assert_eq!(total, None);
        Flow::add(&mut total, flow(0, 0));
        assert_eq!(Flow::both(total, flow(2, 1)), flow(2, 1));
    }
}
