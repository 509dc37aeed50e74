//! Connections as spans: from the replayed events, who connected to whom,
//! when, over which name, and when the first end closed. What `--summary`
//! counts and `export` draws.
//!
//! Only connections made during the recording have a start; those already
//! open in the snapshot are left out rather than given a made-up one.

use std::collections::HashMap;

use unixpeer_common::EventKind;

use super::{
    TimelineError,
    replay::{Replay, Step},
};
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
}

impl Conn {
    pub(crate) fn lifetime_ns(&self) -> Option<u64> {
        self.end_ns.map(|e| e.saturating_sub(self.start_ns))
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
    };
    Conns { list: vec![conn], start_ns: 0, end_ns: 3, lost: 0 }
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

#[derive(Default)]
struct Builder {
    list: Vec<Conn>,
    /// Socket inode -> its connection, until that socket closes.
    open: HashMap<u64, usize>,
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
                    self.open.insert(inode, i);
                }
            }
            EventKind::Socketpair => {
                let i = self.push(r, ConnKind::Socketpair, ids);
                self.list[i].server = Some(Holder::of(e.pid, e.comm, e.peer_fd));
                self.list[i].server_id = ids.shared(e.pid);
                for inode in [e.inode, e.peer_inode].into_iter().flatten() {
                    self.open.insert(inode, i);
                }
            }
            EventKind::ConnectFailed => {
                self.push(r, ConnKind::Failed, ids);
            }
            EventKind::Accept => {
                let Some(i) = e.peer_inode.and_then(|c| self.open.get(&c).copied()) else {
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
                    self.open.insert(inode, i);
                }
            }
            EventKind::Close => {
                let Some(inode) = e.inode else { return };
                let Some(&i) = self.open.get(&inode) else { return };
                let c = &mut self.list[i];
                c.end_ns.get_or_insert(e.ts_ns);
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
            | EventKind::DgramSend => {}
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
    }
}
