//! Connections as synthetic flows: which end plays the client, the
//! endpoints and the next sequence number of each direction, and whether
//! the connection speaks D-Bus.

use super::{dbus, net::Endpoint};

/// Connections remembered at once; the least recently used is forgotten
/// first (its next message starts a new flow).
const MAX_FLOWS: usize = 16384;

/// Ports the built-in dissectors look for.
const HTTP_PORT: u16 = 80;
const PGSQL_PORT: u16 = 5432;

const HTTP_METHODS: &[&[u8]] =
    &[b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ", b"CONNECT ", b"TRACE "];

#[derive(Debug)]
pub struct Flow {
    /// The client end's `struct sock`, which unlike its inode exists
    /// before accept().
    pub client_sk: u64,
    pub ends: [Endpoint; 2],
    /// Next sequence number per direction (0: client to server).
    pub next_seq: [u32; 2],
    pub started: bool,
    /// Some while the connection is being split into D-Bus messages.
    pub dbus: Option<[dbus::Direction; 2]>,
    last_used: u64,
}

impl Flow {
    /// The direction of a message sent from the socket `sk`.
    pub fn direction(&self, sk: u64) -> usize {
        usize::from(sk != self.client_sk)
    }
}

/// What the first message of a connection shows about it.
pub struct FirstSight<'a> {
    pub sk: u64,
    pub peer_sk: u64,
    /// The sockets' inodes, 0 for one not accepted yet.
    pub inode: u64,
    pub peer_inode: u64,
    /// Whether the sender's own socket has the name, or its peer's.
    pub sender_bound: bool,
    pub peer_bound: bool,
    pub path: &'a [u8],
    pub data: &'a [u8],
}

/// The well-known server port for a name or a first message, if any.
fn server_port(path: &[u8], client_data: &[u8]) -> Option<u16> {
    let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    if base.starts_with(b".s.PGSQL.") {
        return Some(PGSQL_PORT);
    }
    HTTP_METHODS.iter().any(|m| client_data.starts_with(m)).then_some(HTTP_PORT)
}

#[derive(Debug, Default)]
pub struct Flows {
    map: foldhash::HashMap<(u64, u64), Flow>,
    clock: u64,
}

impl Flows {
    /// The flow of the connection between `sk` and `peer_sk`, made on
    /// first sight.
    pub fn get(&mut self, seen: &FirstSight<'_>) -> &mut Flow {
        let key = (seen.sk.min(seen.peer_sk), seen.sk.max(seen.peer_sk));
        self.clock += 1;
        if !self.map.contains_key(&key) && self.map.len() >= MAX_FLOWS {
            self.evict();
        }
        let clock = self.clock;
        let flow = self.map.entry(key).or_insert_with(|| new_flow(seen));
        flow.last_used = clock;
        flow
    }

    fn evict(&mut self) {
        if let Some(key) = self.map.iter().min_by_key(|(_, f)| f.last_used).map(|(k, _)| *k) {
            self.map.remove(&key);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

fn new_flow(seen: &FirstSight<'_>) -> Flow {
    let dbus_start = dbus::is_client_start(seen.data);
    let http = HTTP_METHODS.iter().any(|m| seen.data.starts_with(m));
    // The client: whoever starts a D-Bus or HTTP conversation, else the
    // end without the name (connect()'s side), else the lower address.
    let sender_is_client = dbus_start
        || http
        || (seen.peer_bound && !seen.sender_bound)
        || (seen.peer_bound == seen.sender_bound && seen.sk <= seen.peer_sk);
    let ours = (seen.sk, Endpoint::of_socket(seen.inode, seen.sk));
    let theirs = (seen.peer_sk, Endpoint::of_socket(seen.peer_inode, seen.peer_sk));
    let ((client_sk, client_end), (_, mut server_end)) = if sender_is_client { (ours, theirs) } else { (theirs, ours) };
    let client_data = if sender_is_client { seen.data } else { b"" };
    if let Some(port) = server_port(seen.path, client_data) {
        server_end = server_end.with_port(port);
    }
    let dbus = if dbus_start {
        Some(Default::default())
    } else if dbus::is_message_start(seen.data) && seen.path.windows(3).any(|w| w == b"bus") {
        // Joined after the handshake: both directions are messages.
        Some([dbus::Direction::in_messages(), dbus::Direction::in_messages()])
    } else {
        None
    };
    Flow { client_sk, ends: [client_end, server_end], next_seq: [1, 1], started: false, dbus, last_used: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sight<'a>(sk: u64, peer: u64, sender_bound: bool, path: &'a [u8], data: &'a [u8]) -> FirstSight<'a> {
        FirstSight { sk, peer_sk: peer, inode: sk, peer_inode: 0, sender_bound, peer_bound: !sender_bound, path, data }
    }

    #[test]
    fn roles_and_ports() {
        let mut flows = Flows::default();
        // A PostgreSQL server answering first is still the server.
        let f = flows.get(&sight(20, 10, true, b"/run/postgresql/.s.PGSQL.5432", b"R"));
        assert_eq!((f.client_sk, f.ends[1].port), (10, 5432));
        assert_eq!(f.direction(20), 1);
        let f = flows.get(&sight(30, 31, false, b"/run/docker.sock", b"GET /v1.43/info HTTP/1.1\r\n"));
        assert_eq!((f.client_sk, f.ends[1].port), (30, 80));
        assert!(f.ends[0].port >= 32768);
        let f = flows.get(&sight(40, 41, false, b"/run/dbus/system_bus_socket", b"\0"));
        assert!(f.dbus.is_some());
        let f = flows.get(&sight(50, 51, false, b"", b"\x01\x02"));
        assert!(f.dbus.is_none() && f.ends[1].port >= 32768);
        // The same connection from its other end is the same flow.
        assert_eq!(flows.get(&sight(10, 20, false, b"", b"Q")).client_sk, 10);
        assert_eq!(flows.len(), 4);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut flows = Flows::default();
        for i in 0..(MAX_FLOWS as u64 + 10) {
            flows.get(&sight(2 * i, 2 * i + 1, false, b"", b"x"));
        }
        assert_eq!(flows.len(), MAX_FLOWS);
    }
}
