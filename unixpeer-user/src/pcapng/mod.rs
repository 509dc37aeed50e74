//! pcapng output for `unixtrace capture`: messages sent on UNIX sockets as
//! packets that Wireshark and tshark dissect with their built-in
//! dissectors. Stream and seqpacket connections become synthetic IPv4/TCP
//! flows (addresses and ports from the socket inodes, a handshake first,
//! sequence numbers advancing by what was sent), datagrams UDP, and D-Bus
//! conversations whole messages on a second interface of link type
//! LINKTYPE_DBUS, the only way Wireshark's D-Bus dissector takes them.

pub mod block;
mod dbus;
mod flows;
mod net;

use std::io::Write;

use self::{
    block::{Interface, Packet, SectionInfo, Statistics},
    dbus::Split,
    flows::{FirstSight, Flow, Flows},
    net::{Endpoint, MAX_TCP_SEGMENT, MAX_UDP_PAYLOAD},
};

const LINKTYPE_RAW: u16 = 101;
const LINKTYPE_DBUS: u16 = 231;
const IF_IP: u32 = 0;
const IF_DBUS: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PcapngError {
    #[error("writing the capture failed: {0}")]
    Write(#[source] std::io::Error),
}

impl PcapngError {
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Write(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// One message as the kernel saw it sent.
pub struct Message<'a> {
    /// Nanoseconds since the epoch.
    pub ts_ns: u64,
    /// The sender's `struct sock` and its peer's (0 for none).
    pub sk: u64,
    pub peer_sk: u64,
    /// Their inodes (0 for a socket not accepted yet).
    pub inode: u64,
    pub peer_inode: u64,
    pub sender_bound: bool,
    pub peer_bound: bool,
    /// SOCK_STREAM=1, SOCK_DGRAM=2, SOCK_SEQPACKET=5.
    pub sock_type: u32,
    /// Bytes sent.
    pub len: u32,
    /// The first of them, as captured.
    pub data: &'a [u8],
    /// The connection's name, as bytes.
    pub path: &'a [u8],
    /// Who sent it to whom, for the packets' comments.
    pub comment: &'a str,
}

pub struct PcapngWriter<W: Write> {
    out: W,
    flows: Flows,
    start_ns: u64,
    received: [u64; 2],
    dropped: u64,
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the section header and both interfaces.
    pub fn new(mut out: W, info: &SectionInfo<'_>, snaplen: u32, start_ns: u64) -> Result<Self, PcapngError> {
        block::section_header(&mut out, info)?;
        // Headers on top of the payload's snap length.
        let ip = Interface {
            linktype: LINKTYPE_RAW,
            snaplen: snaplen.saturating_add(40),
            name: "unix",
            description: "UNIX socket messages as synthetic IPv4 flows (addresses and ports from socket inodes)",
        };
        block::interface(&mut out, &ip)?;
        let dbus = Interface {
            linktype: LINKTYPE_DBUS,
            snaplen: 0,
            name: "unix-dbus",
            description: "D-Bus messages on UNIX sockets, one per packet",
        };
        block::interface(&mut out, &dbus)?;
        Ok(Self { out, flows: Flows::default(), start_ns, received: [0; 2], dropped: 0 })
    }

    pub fn message(&mut self, m: &Message<'_>) -> Result<(), PcapngError> {
        if m.sock_type == SOCK_DGRAM {
            let len = m.len.min(MAX_UDP_PAYLOAD);
            let (src, dst) = (Endpoint::of_socket(m.inode, m.sk), Endpoint::of_socket(m.peer_inode, m.peer_sk));
            let mut pkt = net::udp(src, dst, len);
            pkt.extend_from_slice(&m.data[..m.data.len().min(len as usize)]);
            return self.packet(IF_IP, m.ts_ns, &pkt, 28 + len, m.comment);
        }
        let seen = FirstSight {
            sk: m.sk,
            peer_sk: m.peer_sk,
            inode: m.inode,
            peer_inode: m.peer_inode,
            sender_bound: m.sender_bound,
            peer_bound: m.peer_bound,
            path: m.path,
            data: m.data,
        };
        let Self { out, flows, received, .. } = self;
        let flow = flows.get(&seen);
        let mut emit = |iface: u32, data: &[u8], orig: u32| -> Result<(), PcapngError> {
            received[iface as usize] += 1;
            block::packet(out, &Packet { interface: iface, ts_ns: m.ts_ns, data, orig_len: orig, comment: m.comment })
        };
        if !flow.started {
            flow.started = true;
            handshake(flow, &mut emit)?;
        }
        let dir = flow.direction(m.sk);
        let truncated = (m.data.len() as u64) < u64::from(m.len);
        let split = match flow.dbus.as_mut() {
            None => return tcp_data(flow, dir, m.data, m.len, &mut emit),
            // A message cut short cannot be framed, nor can what follows it.
            Some(_) if truncated => Split::Lost,
            Some(d) => {
                let split = d[dir].push(m.data, dir == 0);
                if d[0].messages {
                    d[1].messages = true;
                }
                split
            }
        };
        match split {
            Split::Ok { auth, messages } => {
                if auth > 0 {
                    tcp_data(flow, dir, &m.data[..auth], auth as u32, &mut emit)?;
                }
                for msg in &messages {
                    emit(IF_DBUS, msg, msg.len() as u32)?;
                }
                Ok(())
            }
            Split::Lost => {
                flow.dbus = None;
                tcp_data(flow, dir, m.data, m.len, &mut emit)
            }
        }
    }

    fn packet(&mut self, iface: u32, ts_ns: u64, data: &[u8], orig: u32, comment: &str) -> Result<(), PcapngError> {
        self.received[iface as usize] += 1;
        block::packet(&mut self.out, &Packet { interface: iface, ts_ns, data, orig_len: orig, comment })
    }

    /// Messages the kernel could not queue, said where they went missing:
    /// an interface statistics block with the running count.
    pub fn loss(&mut self, ts_ns: u64, lost: u64) -> Result<(), PcapngError> {
        self.dropped += lost;
        let comment = format!(
            "unixtrace: {lost} messages lost here (the kernel's buffer was full, or a sendmmsg sent more than it \
             copies), {} in all",
            self.dropped
        );
        self.statistics(IF_IP, ts_ns, None, &comment)
    }

    fn statistics(&mut self, iface: u32, ts_ns: u64, end: Option<u64>, comment: &str) -> Result<(), PcapngError> {
        let s = Statistics {
            interface: iface,
            ts_ns,
            start_ns: self.start_ns,
            end_ns: end,
            received: self.received[iface as usize],
            // The kernel's count does not say which interface a lost
            // message would have gone to: all of it is on the first.
            dropped: if iface == IF_IP { self.dropped } else { 0 },
            comment,
        };
        block::statistics(&mut self.out, &s)
    }

    pub fn flush(&mut self) -> Result<(), PcapngError> {
        self.out.flush().map_err(PcapngError::Write)
    }

    /// Final statistics for both interfaces; returns the output.
    pub fn finish(mut self, ts_ns: u64) -> Result<W, PcapngError> {
        self.statistics(IF_IP, ts_ns, Some(ts_ns), "")?;
        self.statistics(IF_DBUS, ts_ns, Some(ts_ns), "")?;
        self.flush()?;
        Ok(self.out)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

type Emit<'e> = dyn FnMut(u32, &[u8], u32) -> Result<(), PcapngError> + 'e;

/// SYN, SYN-ACK, ACK: without them Wireshark marks the flow as joined
/// midway and some dissectors hold back.
fn handshake(flow: &mut Flow, emit: &mut Emit<'_>) -> Result<(), PcapngError> {
    let [c, s] = flow.ends;
    emit(IF_IP, &net::tcp(c, s, 0, 0, net::SYN, 0), 40)?;
    emit(IF_IP, &net::tcp(s, c, 0, 1, net::SYN_ACK, 0), 40)?;
    emit(IF_IP, &net::tcp(c, s, 1, 1, net::ACK, 0), 40)
}

/// `len` bytes sent in direction `dir`, of which `data` were captured: as
/// many segments as IPv4 needs, the captured bytes in the first ones, so
/// a truncated message keeps its true length and the sequence numbers
/// stay right.
fn tcp_data(flow: &mut Flow, dir: usize, data: &[u8], len: u32, emit: &mut Emit<'_>) -> Result<(), PcapngError> {
    let (src, dst) = (flow.ends[dir], flow.ends[1 - dir]);
    let mut sent = 0u32;
    while sent < len {
        let seg = (len - sent).min(MAX_TCP_SEGMENT);
        let (from, to) = ((sent as usize).min(data.len()), ((sent + seg) as usize).min(data.len()));
        let mut pkt = net::tcp(src, dst, flow.next_seq[dir], flow.next_seq[1 - dir], net::PSH_ACK, seg);
        pkt.extend_from_slice(&data[from..to]);
        emit(IF_IP, &pkt, 40 + seg)?;
        flow.next_seq[dir] = flow.next_seq[dir].wrapping_add(seg);
        sent += seg;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
