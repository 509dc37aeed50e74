//! The snapshot model: every UNIX socket keyed by inode, who holds it, and
//! how sockets pair up into connections.
//!
//! Sockets are keyed by inode because sockfs inode numbers are unique across
//! network namespaces: the accepted end of a cross-netns connection lives in
//! the client's netns, and joining on the UNIX_DIAG peer inode still finds it.

use std::fmt;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::dbus::BusLabel;
use crate::holders::{Holder, HolderList, HolderMap};
use crate::identity::{Identity, Processes};

/// `sk_type` of a UNIX socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockType {
    Stream,
    Dgram,
    Seqpacket,
    Other(u8),
}

impl SockType {
    pub(crate) fn from_kernel(sk_type: u8) -> Self {
        match i32::from(sk_type) {
            libc::SOCK_STREAM => Self::Stream,
            libc::SOCK_DGRAM => Self::Dgram,
            libc::SOCK_SEQPACKET => Self::Seqpacket,
            _ => Self::Other(sk_type),
        }
    }

    /// The kernel's `sk_type` value: the inverse of `from_kernel`.
    pub(crate) fn to_kernel(self) -> u8 {
        match self {
            Self::Stream => libc::SOCK_STREAM as u8,
            Self::Dgram => libc::SOCK_DGRAM as u8,
            Self::Seqpacket => libc::SOCK_SEQPACKET as u8,
            Self::Other(t) => t,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Dgram => "dgram",
            Self::Seqpacket => "seqpacket",
            Self::Other(_) => "other",
        }
    }

    /// Only connection-oriented sockets have listeners and accepted ends.
    pub(crate) fn is_connection_oriented(self) -> bool {
        matches!(self, Self::Stream | Self::Seqpacket)
    }
}

impl fmt::Display for SockType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stream => f.write_str("stream"),
            Self::Dgram => f.write_str("dgram"),
            Self::Seqpacket => f.write_str("seqpacket"),
            Self::Other(t) => write!(f, "type{t}"),
        }
    }
}

/// `sk_state` as UNIX sockets use it (a subset of the TCP states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KernelState {
    Established,
    Listen,
    /// TCP_CLOSE: never connected, or a datagram socket without a default peer.
    Close,
    Other(u8),
}

impl KernelState {
    pub(crate) fn from_kernel(state: u8) -> Self {
        // Values from include/net/tcp_states.h.
        match state {
            1 => Self::Established,
            10 => Self::Listen,
            7 => Self::Close,
            s => Self::Other(s),
        }
    }
}

/// The address a socket is bound to (`unix_sock.addr`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SockName {
    /// A filesystem path, without the trailing NUL.
    Path(Box<[u8]>),
    /// An abstract name, without the leading NUL.
    Abstract(Box<[u8]>),
}

impl SockName {
    pub(crate) fn path(bytes: &[u8]) -> Self {
        Self::Path(bytes.into())
    }

    pub(crate) fn abstract_name(bytes: &[u8]) -> Self {
        Self::Abstract(bytes.into())
    }
}

impl fmt::Display for SockName {
    /// Abstract names get a leading `@` and show embedded NULs as `@`, as
    /// `ss` does, so names can be compared across tools.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, bytes) = match self {
            Self::Path(p) => ("", p),
            Self::Abstract(a) => ("@", a),
        };
        f.write_str(prefix)?;
        for chunk in bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\0' => f.write_str("@")?,
                    c if crate::output::escape::must_escape(c) => write!(f, "\\x{:02x}", c as u32)?,
                    c => write!(f, "{c}")?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Device and inode of the filesystem entry a path socket is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Vfs {
    pub(crate) dev: u32,
    pub(crate) ino: u32,
}

/// One socket: as UNIX_DIAG reported it, and then as live events changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Socket {
    pub(crate) inode: u64,
    pub(crate) sock_type: SockType,
    pub(crate) state: KernelState,
    pub(crate) name: Option<SockName>,
    /// UNIX_DIAG_PEER: `Some(0)` means the kernel still has a peer pointer
    /// but the peer has no inode any more (it was closed, or it is the
    /// not-yet-accepted server end of a connection).
    pub(crate) peer: Option<u64>,
    /// UNIX_DIAG_ICONS: client inodes whose connections wait in accept().
    pub(crate) icons: Box<[u64]>,
    /// UNIX_DIAG_RQLEN: for listeners (pending count, backlog); otherwise
    /// (bytes queued to read, bytes written and not yet read by the peer).
    pub(crate) rqlen: Option<(u32, u32)>,
    /// UNIX_DIAG_SHUTDOWN: RCV_SHUTDOWN=1 | SEND_SHUTDOWN=2.
    pub(crate) shutdown: u8,
    pub(crate) uid: Option<u32>,
    pub(crate) vfs: Option<Vfs>,
    /// Inode of the network namespace whose dump reported the socket.
    pub(crate) netns: u64,
    /// The connection's name as events carry it (`@` for an abstract name):
    /// the socket's own, or for a client the name it connected to, which
    /// UNIX_DIAG does not give. Shared with the events; kept so that a
    /// close line still names a connection whose other end is gone.
    pub(crate) path: Option<Arc<str>>,
}

impl Socket {
    /// A socket of which nothing but its identity is known yet.
    pub(crate) fn new(inode: u64, sock_type: SockType, state: KernelState, netns: u64) -> Self {
        Socket {
            inode,
            sock_type,
            state,
            name: None,
            peer: None,
            icons: Box::default(),
            rqlen: None,
            shutdown: 0,
            uid: None,
            vfs: None,
            netns,
            path: None,
        }
    }

    /// A stream socket in netns 1 with nothing but what a test sets.
    #[cfg(test)]
    pub(crate) fn sample(inode: u64, state: KernelState, peer: Option<u64>) -> Self {
        Socket { peer, ..Self::new(inode, SockType::Stream, state, 1) }
    }

    /// A socket first heard of from an event: only what events say is known.
    pub(crate) fn live(inode: u64, netns: u32, sock_type: SockType) -> Self {
        Self::new(inode, sock_type, KernelState::Close, u64::from(netns))
    }

    /// A live peer inode, if any.
    pub(crate) fn peer_inode(&self) -> Option<u64> {
        self.peer.filter(|&p| p != 0)
    }
}

/// What a user wants to know about a socket's situation, derived from the
/// kernel state plus the rest of the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Status {
    Listening,
    Connected,
    /// Connected by connect() but still waiting in a listener's accept queue.
    Pending,
    /// The peer was closed: the kernel keeps a dangling peer (half-closed).
    PeerClosed,
    /// Never connected, or a datagram socket without a default peer.
    Unconnected,
    Unknown,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Listening => "listening",
            Self::Connected => "connected",
            Self::Pending => "pending",
            Self::PeerClosed => "peer-closed",
            Self::Unconnected => "unconnected",
            Self::Unknown => "unknown",
        }
    }
}

/// How two ends relate on one output row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    /// Each end is the other's peer.
    Pair,
    /// Datagram connect(): `a` sends to `b` by default, `b` has another (or no) peer.
    OneWay,
}

/// A row of the connection view: one socket, or two joined through their peer inodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Connection {
    pub(crate) a: u64,
    /// The peer inode, even when the peer itself is not in the snapshot
    /// (another netns that was not dumped).
    pub(crate) b: Option<u64>,
    pub(crate) link: Option<Link>,
}

/// All sockets and their holders: what a snapshot found, and what the live
/// tracker (`follow::tracker`) keeps up to date from events.
#[derive(Clone, Debug, Default)]
pub struct Model {
    sockets: HashMap<u64, Socket>,
    holders: HolderMap,
    /// Client inode -> listener inode, from the listeners' ICONS.
    pending: HashMap<u64, u64>,
    /// Bus client inode -> its names on the bus (`dbus.rs`).
    bus_labels: HashMap<u64, Arc<BusLabel>>,
    /// Who the holders' processes are, by pid.
    processes: Processes,
    /// What open sockets carried so far, where a recording sampled it
    /// (`--at`); at most one entry per socket, dropped with it.
    traffic: HashMap<u64, crate::events::Traffic>,
}

impl Model {
    pub(crate) fn new(sockets: Vec<Socket>, holders: HolderMap) -> Self {
        let mut model = Self {
            sockets: HashMap::with_capacity(sockets.len()),
            holders,
            pending: HashMap::new(),
            bus_labels: HashMap::new(),
            processes: Processes::default(),
            traffic: HashMap::new(),
        };
        for socket in sockets {
            model.insert_socket(socket);
        }
        model
    }

    /// Adds or replaces a socket, keeping the accept-queue index current.
    pub(crate) fn insert_socket(&mut self, socket: Socket) {
        if let Some(old) = self.sockets.remove(&socket.inode) {
            self.forget_icons(&old);
        }
        for &client in socket.icons.iter() {
            if client != 0 {
                self.pending.insert(client, socket.inode);
            }
        }
        self.sockets.insert(socket.inode, socket);
    }

    /// Drops a socket and returns it with its holders; its peer keeps
    /// pointing at it, as in the kernel, and so becomes peer-closed.
    pub(crate) fn remove(&mut self, inode: u64) -> Option<(Socket, HolderList)> {
        let holders = self.holders.remove(&inode).unwrap_or_default();
        self.bus_labels.remove(&inode);
        self.traffic.remove(&inode);
        let socket = self.sockets.remove(&inode)?;
        self.forget_icons(&socket);
        Some((socket, holders))
    }

    /// `remove` for the live model's closes: only the holders come back,
    /// so the socket itself is not moved out.
    pub(crate) fn discard(&mut self, inode: u64) -> HolderList {
        if let Some(s) = self.sockets.remove(&inode)
            && !s.icons.is_empty()
        {
            self.forget_icons(&s);
        }
        self.bus_labels.remove(&inode);
        self.traffic.remove(&inode);
        self.holders.remove(&inode).unwrap_or_default()
    }

    /// Keeps the sockets `keep` accepts, dropping the others and their holders.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Socket) -> bool) {
        let gone: Vec<u64> = self.sockets.values().filter(|s| !keep(s)).map(|s| s.inode).collect();
        for inode in gone {
            self.remove(inode);
        }
    }

    /// The socket `inode`, made by `make` if the model does not have it.
    /// Live updates go through here: they never change `icons`, which only
    /// `insert_socket` indexes.
    pub(crate) fn socket_mut(&mut self, inode: u64, make: impl FnOnce() -> Socket) -> &mut Socket {
        self.sockets.entry(inode).or_insert_with(make)
    }

    /// An existing socket, to change (not its `icons`, see `socket_mut`).
    pub(crate) fn get_mut(&mut self, inode: u64) -> Option<&mut Socket> {
        self.sockets.get_mut(&inode)
    }

    pub(crate) fn contains(&self, inode: u64) -> bool {
        self.sockets.contains_key(&inode)
    }

    /// The holders of `inode`, an empty list if it has none yet.
    pub(crate) fn holders_mut(&mut self, inode: u64) -> &mut HolderList {
        self.holders.entry(inode).or_default()
    }

    /// Every socket with its holders, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Socket, &[Holder])> {
        self.sockets.values().map(|s| (s, self.holders(s.inode)))
    }

    fn forget_icons(&mut self, listener: &Socket) {
        for client in listener.icons.iter() {
            if self.pending.get(client) == Some(&listener.inode) {
                self.pending.remove(client);
            }
        }
    }

    /// Replaces every holder at once, as after a fresh attribution pass.
    pub(crate) fn set_all_holders(&mut self, holders: HolderMap) {
        self.holders = holders;
    }

    pub(crate) fn set_bus_label(&mut self, inode: u64, label: BusLabel) {
        self.bus_labels.insert(inode, Arc::new(label));
    }

    /// What open socket `inode` carried so far, if the model has it.
    pub(crate) fn set_traffic(&mut self, inode: u64, traffic: crate::events::Traffic) {
        if self.sockets.contains_key(&inode) {
            self.traffic.insert(inode, traffic);
        }
    }

    /// Every count `other` has, for a model of the same sockets.
    pub(crate) fn traffic_from(&mut self, other: &Model) {
        self.traffic.clone_from(&other.traffic);
    }

    /// What socket `inode` carried by the time the model shows, if sampled.
    pub(crate) fn traffic(&self, inode: u64) -> Option<&crate::events::Traffic> {
        self.traffic.get(&inode)
    }

    /// The names a bus gave the connection whose client end is `inode`.
    pub(crate) fn bus_label(&self, inode: u64) -> Option<&BusLabel> {
        self.bus_labels.get(&inode).map(|l| &**l)
    }

    /// The identity of process `pid`, when it was resolved.
    pub(crate) fn identity(&self, pid: u32) -> Option<&Identity> {
        self.processes.get(pid)
    }

    pub(crate) fn processes(&self) -> &Processes {
        &self.processes
    }

    pub(crate) fn processes_mut(&mut self) -> &mut Processes {
        &mut self.processes
    }

    /// Resolves the process of every holder with `processes`.
    pub(crate) fn resolve_processes(&mut self, mut processes: Processes) {
        processes.resolve_all(self.holders.values().flatten().map(|h| h.pid));
        self.processes = processes;
    }

    pub(crate) fn get(&self, inode: u64) -> Option<&Socket> {
        self.sockets.get(&inode)
    }

    pub(crate) fn holders(&self, inode: u64) -> &[Holder] {
        self.holders.get(&inode).map_or(&[], |h| h.as_slice())
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Sockets in inode order, so output is stable from run to run.
    pub(crate) fn sockets(&self) -> impl Iterator<Item = &Socket> {
        let mut sorted: Vec<&Socket> = self.sockets.values().collect();
        sorted.sort_unstable_by_key(|s| s.inode);
        sorted.into_iter()
    }

    /// The listener whose accept queue holds this client, if any.
    pub(crate) fn listener_of(&self, client: u64) -> Option<u64> {
        self.pending.get(&client).copied()
    }

    pub(crate) fn status(&self, socket: &Socket) -> Status {
        match socket.state {
            KernelState::Listen => Status::Listening,
            KernelState::Close => Status::Unconnected,
            KernelState::Other(_) => Status::Unknown,
            KernelState::Established => {
                if socket.peer_inode().is_some() {
                    Status::Connected
                } else if self.pending.contains_key(&socket.inode) {
                    Status::Pending
                } else if socket.peer.is_some() || socket.sock_type.is_connection_oriented() {
                    Status::PeerClosed
                } else {
                    Status::Unconnected
                }
            }
        }
    }

    /// The connection `inode` takes part in, as it would show on one row.
    pub(crate) fn connection_of(&self, inode: u64) -> Option<Connection> {
        let socket = self.sockets.get(&inode)?;
        let Some(peer) = socket.peer_inode() else {
            return Some(Connection { a: inode, b: None, link: None });
        };
        let mutual = self.sockets.get(&peer).is_none_or(|p| p.peer_inode() == Some(inode));
        let link = if mutual { Link::Pair } else { Link::OneWay };
        Some(Connection { a: inode, b: Some(peer), link: Some(link) })
    }

    /// One entry per row: mutual pairs once, everything else once per socket.
    /// A datagram server that several clients connect() to keeps its own
    /// row, and each client row points at it.
    pub(crate) fn connections(&self) -> Vec<Connection> {
        let mut seen = HashSet::with_capacity(self.sockets.len());
        let mut rows = Vec::with_capacity(self.sockets.len());
        for socket in self.sockets() {
            if seen.contains(&socket.inode) {
                continue;
            }
            let Some(conn) = self.connection_of(socket.inode) else {
                continue;
            };
            seen.insert(conn.a);
            if let (Some(b), Some(Link::Pair)) = (conn.b, conn.link) {
                seen.insert(b);
            }
            rows.push(self.oriented(conn));
        }
        rows
    }

    /// Puts the unnamed end (the client) first, so rows read client → server.
    fn oriented(&self, conn: Connection) -> Connection {
        let (Some(b), Some(Link::Pair)) = (conn.b, conn.link) else {
            return conn;
        };
        let named = |i: u64| self.sockets.get(&i).is_some_and(|s| s.name.is_some());
        if named(conn.a) && !named(b) { Connection { a: b, b: Some(conn.a), link: conn.link } } else { conn }
    }

    /// The bound name shown for a connection: whichever end has one, or for
    /// a client still waiting in accept(), the listener's.
    pub(crate) fn name_of(&self, conn: &Connection) -> Option<&SockName> {
        let name = |i: u64| self.sockets.get(&i).and_then(|s| s.name.as_ref());
        name(conn.a).or_else(|| conn.b.and_then(name)).or_else(|| self.listener_of(conn.a).and_then(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sock(inode: u64, state: KernelState, peer: Option<u64>) -> Socket {
        Socket::sample(inode, state, peer)
    }

    #[test]
    fn pairs_take_one_row_client_first() {
        let mut server = sock(11, KernelState::Established, Some(10));
        server.name = Some(SockName::path(b"/tmp/x"));
        let client = sock(10, KernelState::Established, Some(11));
        let m = Model::new(vec![server, client], HolderMap::default());
        let rows = m.connections();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].a, 10);
        assert_eq!(rows[0].b, Some(11));
        assert_eq!(m.name_of(&rows[0]), Some(&SockName::path(b"/tmp/x")));
    }

    #[test]
    fn statuses_are_told_apart() {
        let mut listener = sock(1, KernelState::Listen, None);
        listener.icons = Box::new([2]);
        let waiting = sock(2, KernelState::Established, Some(0));
        let orphan = sock(3, KernelState::Established, Some(0));
        let idle = sock(4, KernelState::Close, None);
        let m = Model::new(vec![listener, waiting, orphan, idle], HolderMap::default());
        let st = |i| m.status(m.get(i).unwrap());
        assert_eq!(st(1), Status::Listening);
        assert_eq!(st(2), Status::Pending);
        assert_eq!(st(3), Status::PeerClosed);
        assert_eq!(st(4), Status::Unconnected);
        assert_eq!(m.listener_of(2), Some(1));
    }

    #[test]
    fn dgram_clients_point_at_a_server_that_keeps_its_row() {
        let mut server = sock(5, KernelState::Close, None);
        server.sock_type = SockType::Dgram;
        let mut c1 = sock(6, KernelState::Established, Some(5));
        c1.sock_type = SockType::Dgram;
        let mut c2 = sock(7, KernelState::Established, Some(5));
        c2.sock_type = SockType::Dgram;
        let m = Model::new(vec![server, c1, c2], HolderMap::default());
        let rows = m.connections();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().filter(|r| r.link == Some(Link::OneWay)).count() == 2);
    }

    #[test]
    fn remove_leaves_the_peer_closed_and_unlists_pending() {
        let mut listener = sock(1, KernelState::Listen, None);
        listener.icons = Box::new([2]);
        let waiting = sock(2, KernelState::Established, Some(0));
        let mut m = Model::new(vec![listener, waiting], HolderMap::default());
        m.remove(1);
        assert_eq!(m.status(m.get(2).unwrap()), Status::PeerClosed);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn abstract_names_show_with_at() {
        assert_eq!(SockName::abstract_name(b"a\0b").to_string(), "@a@b");
        assert_eq!(SockName::path(b"/p\n").to_string(), "/p\\x0a");
        assert_eq!(SockName::path("/p\u{202e}q".as_bytes()).to_string(), "/p\\x202eq");
    }
}
