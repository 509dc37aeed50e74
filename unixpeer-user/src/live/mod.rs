//! The live model: what is known about each socket, fed by the snapshot and
//! then by events, so that every event can name both ends of its
//! connection. Bounded: a socket leaves the model once its close has been
//! reported.

pub mod render;

use std::collections::{HashMap, VecDeque};

use unixpeer_common::EventKind;

use crate::events::Event;
#[cfg(test)]
use crate::events::SockType;

/// One process holding a socket through one fd.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub fd: Option<i32>,
}

#[derive(Clone, Debug, Default)]
struct Sock {
    holders: Vec<Holder>,
    peer_inode: Option<u64>,
    path: Option<String>,
    listener: bool,
}

/// What a socket looked like in the snapshot, to seed the model.
#[derive(Clone, Debug)]
pub struct SeedSocket {
    pub inode: u64,
    pub peer_inode: Option<u64>,
    pub path: Option<String>,
    pub listening: bool,
    pub netns: u32,
    pub holders: Vec<Holder>,
}

/// The other end of an event's socket, as far as the model knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The process(es) holding the peer socket.
    Holders(Vec<Holder>),
    /// The connection is not accepted yet: the process listening on the name.
    Listener(Holder),
    Unknown,
}

/// An event with its other end resolved: what output renders.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub event: Event,
    pub peer: Peer,
}

#[derive(Default)]
pub struct Tracker {
    socks: HashMap<u64, Sock>,
    /// Listening sockets by (netns, name): who a connect is talking to
    /// before the server accepts.
    listeners: HashMap<(u32, String), Holder>,
    /// Client inode by the server-side `struct sock` created at connect:
    /// accept returns that very sock.
    embryos: HashMap<u64, u64>,
    /// Who held recently closed sockets, so the close of the second end of
    /// a connection can still name the first. Bounded to `GRAVEYARD`.
    graveyard: HashMap<u64, Vec<Holder>>,
    graveyard_order: VecDeque<u64>,
}

const GRAVEYARD: usize = 4096;

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn seed(&mut self, s: SeedSocket) {
        if s.listening
            && let (Some(path), Some(h)) = (&s.path, s.holders.first())
        {
            self.listeners.insert((s.netns, path.clone()), h.clone());
        }
        let sock = Sock { holders: s.holders, peer_inode: s.peer_inode, path: s.path, listener: s.listening };
        self.socks.insert(s.inode, sock);
    }

    /// Sockets currently tracked: the model's memory footprint.
    pub fn len(&self) -> usize {
        self.socks.len() + self.embryos.len() + self.graveyard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inodes that only `pid` holds: released if that process went away.
    pub fn held_only_by(&self, pid: u32) -> Vec<u64> {
        self.socks
            .iter()
            .filter(|(_, s)| !s.holders.is_empty() && s.holders.iter().all(|h| h.pid == pid))
            .map(|(i, _)| *i)
            .collect()
    }

    fn holders_of(&self, inode: Option<u64>) -> Option<Vec<Holder>> {
        let inode = inode?;
        let live = self.socks.get(&inode).map(|s| &s.holders);
        live.or_else(|| self.graveyard.get(&inode)).cloned().filter(|h| !h.is_empty())
    }

    fn bury(&mut self, inode: u64, holders: Vec<Holder>) {
        if self.graveyard_order.len() >= GRAVEYARD
            && let Some(old) = self.graveyard_order.pop_front()
        {
            self.graveyard.remove(&old);
        }
        self.graveyard.insert(inode, holders);
        self.graveyard_order.push_back(inode);
    }

    fn listener_for(&self, e: &Event) -> Option<Holder> {
        let path = e.path.as_ref()?;
        self.listeners.get(&(e.netns, path.clone())).cloned()
    }

    fn upsert(&mut self, inode: Option<u64>, holder: Holder, peer_inode: Option<u64>, path: &Option<String>) {
        let Some(inode) = inode else { return };
        let s = self.socks.entry(inode).or_default();
        if !s.holders.iter().any(|h| h.pid == holder.pid && h.fd == holder.fd) {
            s.holders.push(holder);
        }
        if peer_inode.is_some() {
            s.peer_inode = peer_inode;
        }
        if s.path.is_none() {
            s.path.clone_from(path);
        }
    }

    /// Applies one event and says who is at the other end.
    pub fn apply(&mut self, mut e: Event) -> Resolved {
        let actor = |fd| Holder { pid: e.pid, comm: e.comm.clone(), fd };
        let peer = match e.kind {
            EventKind::Socketpair => {
                self.upsert(e.inode, actor(e.fd), e.peer_inode, &None);
                self.upsert(e.peer_inode, actor(e.peer_fd), e.inode, &None);
                Peer::Holders(vec![actor(e.peer_fd)])
            }
            EventKind::Listen => {
                self.upsert(e.inode, actor(e.fd), None, &e.path);
                if let Some(i) = e.inode
                    && let Some(s) = self.socks.get_mut(&i)
                {
                    s.listener = true;
                }
                if let Some(p) = &e.path {
                    self.listeners.insert((e.netns, p.clone()), actor(e.fd));
                }
                Peer::Unknown
            }
            EventKind::Connect => {
                self.upsert(e.inode, actor(e.fd), e.peer_inode, &e.path);
                if e.peer_inode.is_none()
                    && e.peer_sk != 0
                    && let Some(i) = e.inode
                {
                    self.embryos.insert(e.peer_sk, i);
                }
                self.peer_of_connect(&e)
            }
            EventKind::DgramConnect => {
                self.upsert(e.inode, actor(e.fd), None, &e.path);
                self.holders_of(e.peer_inode).map_or(Peer::Unknown, Peer::Holders)
            }
            EventKind::ConnectFailed => self.listener_for(&e).map_or(Peer::Unknown, Peer::Listener),
            EventKind::Accept => {
                self.embryos.remove(&e.sk);
                self.upsert(e.inode, actor(e.fd), e.peer_inode, &e.path);
                if let (Some(client), Some(me)) = (e.peer_inode, e.inode)
                    && let Some(c) = self.socks.get_mut(&client)
                {
                    c.peer_inode = Some(me);
                }
                self.holders_of(e.peer_inode).map_or(Peer::Unknown, Peer::Holders)
            }
            EventKind::Close => self.close(&mut e),
            EventKind::TaskExit => Peer::Unknown,
        };
        Resolved { event: e, peer }
    }

    fn peer_of_connect(&self, e: &Event) -> Peer {
        if let Some(h) = self.holders_of(e.peer_inode) {
            return Peer::Holders(h);
        }
        self.listener_for(e).map_or(Peer::Unknown, Peer::Listener)
    }

    fn close(&mut self, e: &mut Event) -> Peer {
        self.embryos.remove(&e.sk);
        let Some(inode) = e.inode else { return Peer::Unknown };
        let sock = self.socks.remove(&inode);
        // The kernel may already have cut the peer link (the peer closed
        // first); the model remembers it.
        if e.peer_inode.is_none() {
            e.peer_inode = sock.as_ref().and_then(|s| s.peer_inode);
        }
        if e.path.is_none() {
            e.path = sock.as_ref().and_then(|s| s.path.clone());
        }
        if let Some(s) = &sock
            && s.listener
            && let Some(p) = &s.path
        {
            self.listeners.remove(&(e.netns, p.clone()));
        }
        if let Some(s) = sock {
            self.bury(inode, s.holders);
        }
        if let Some(h) = self.holders_of(e.peer_inode) {
            return Peer::Holders(h);
        }
        // A client whose connection was never accepted.
        if e.peer_sk != 0 && self.embryos.contains_key(&e.peer_sk) {
            return self.listener_for(e).map_or(Peer::Unknown, Peer::Listener);
        }
        Peer::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graveyard_is_bounded() {
        let mut t = Tracker::new();
        for i in 1..=(GRAVEYARD as u64 + 100) {
            t.apply(ev(EventKind::Socketpair, 1, "p", i * 2, i * 2 + 1));
            t.apply(ev(EventKind::Close, 1, "p", i * 2, 0));
            t.apply(ev(EventKind::Close, 1, "p", i * 2 + 1, 0));
        }
        assert_eq!(t.len(), GRAVEYARD);
    }

    fn ev(kind: EventKind, pid: u32, comm: &str, inode: u64, peer_inode: u64) -> Event {
        Event {
            ts_ns: 1,
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
            path: Some("/run/s.sock".into()),
        }
    }

    #[test]
    fn connect_then_accept_names_both_ends_and_close_evicts() {
        let mut t = Tracker::new();
        t.apply(ev(EventKind::Listen, 10, "server", 100, 0));
        let mut c = ev(EventKind::Connect, 20, "client", 200, 0);
        c.peer_sk = 0xabc;
        let r = t.apply(c);
        assert_eq!(r.peer, Peer::Listener(Holder { pid: 10, comm: "server".into(), fd: Some(3) }));
        let mut a = ev(EventKind::Accept, 10, "server", 300, 200);
        a.sk = 0xabc;
        let r = t.apply(a);
        assert_eq!(r.peer, Peer::Holders(vec![Holder { pid: 20, comm: "client".into(), fd: Some(3) }]));
        // The client closes: the model still knows who was at the other end
        // even though the kernel reported no peer.
        let r = t.apply(ev(EventKind::Close, 20, "client", 200, 0));
        assert_eq!(r.event.peer_inode, Some(300));
        assert!(matches!(r.peer, Peer::Holders(ref h) if h[0].pid == 10));
        let r = t.apply(ev(EventKind::Close, 10, "server", 300, 0));
        assert!(matches!(r.peer, Peer::Holders(ref h) if h[0].pid == 20), "second close names the first");
        t.apply(ev(EventKind::Close, 10, "server", 100, 0));
        assert!(t.socks.is_empty() && t.embryos.is_empty(), "closed sockets must be evicted");
        assert_eq!(t.graveyard.len(), 3);
    }

    #[test]
    fn seeded_sockets_resolve_close_of_a_connection_from_before_start() {
        let mut t = Tracker::new();
        let h = |pid, comm: &str| Holder { pid, comm: comm.into(), fd: Some(4) };
        t.seed(SeedSocket {
            inode: 1,
            peer_inode: Some(2),
            path: None,
            listening: false,
            netns: 1,
            holders: vec![h(5, "a")],
        });
        t.seed(SeedSocket {
            inode: 2,
            peer_inode: Some(1),
            path: None,
            listening: false,
            netns: 1,
            holders: vec![h(6, "b")],
        });
        let r = t.apply(ev(EventKind::Close, 5, "a", 1, 0));
        assert_eq!(r.peer, Peer::Holders(vec![h(6, "b")]));
        assert_eq!(t.held_only_by(6), vec![2]);
    }
}
