//! The netlink conversation: one dump request, then datagrams until DONE.

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket as NetlinkSocket, SocketAddr};

use super::DiagError;
use super::decode::{Progress, decode_chunk};
use crate::model::Socket;

/// `UDIAG_SHOW_UID` (Linux 5.3+). Not `1 << UNIX_DIAG_UID`: SHUTDOWN has
/// an attribute but no show flag, so the two numberings part there.
const UDIAG_SHOW_UID: u32 = 0x40;
/// The kernel queues up to this much dump output before we read it; large
/// so a 50k-socket dump never waits on a full receive queue.
const RCVBUF: usize = 1 << 20;
/// The kernel caps one dump datagram at about 32 KiB; room for two.
const CHUNK: usize = 64 * 1024;

/// Dumps every UNIX socket of the calling thread's network namespace into
/// `out`. `netns` only labels the sockets.
pub fn dump(netns: u64, out: &mut dyn FnMut(Socket)) -> Result<(), DiagError> {
    let mut socket = NetlinkSocket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Open)?;
    // Best effort: a smaller buffer only means more round trips.
    let _ = socket.set_rx_buf_sz(RCVBUF);
    socket.bind_auto().map_err(DiagError::Open)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(DiagError::Open)?;
    socket.send(&request_bytes(), 0).map_err(DiagError::Send)?;

    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DiagError::Recv(e)),
            }
        };
        if n == 0 || decode_chunk(&buf[..n.min(buf.len())], netns, out)? == Progress::Done {
            return Ok(());
        }
    }
}

fn request_bytes() -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let show = ShowFlags::NAME
        | ShowFlags::VFS
        | ShowFlags::PEER
        | ShowFlags::ICONS
        | ShowFlags::RQLEN
        | ShowFlags::from_bits_retain(UDIAG_SHOW_UID);
    let request = UnixRequest {
        // Every sk_state, not just the two the crate names: unconnected
        // sockets are TCP_CLOSE.
        state_flags: StateFlags::from_bits_retain(u32::MAX),
        inode: 0,
        show_flags: show,
        cookie: [0xff; 8],
    };
    let mut message = NetlinkMessage::new(header, SockDiagMessage::UnixRequest(request).into());
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}
