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
pub(crate) fn dump(netns: u64, out: &mut dyn FnMut(Socket)) -> Result<(), DiagError> {
    let mut socket = open()?;
    // Best effort: a smaller buffer only means more round trips.
    let _ = socket.set_rx_buf_sz(RCVBUF);
    let show = ShowFlags::NAME
        | ShowFlags::VFS
        | ShowFlags::PEER
        | ShowFlags::ICONS
        | ShowFlags::RQLEN
        | ShowFlags::from_bits_retain(UDIAG_SHOW_UID);
    socket.send(&request_bytes(NLM_F_DUMP, 0, show), 0).map_err(DiagError::Send)?;

    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = recv(&mut socket, &mut buf)?;
        if n == 0 || decode_chunk(&buf[..n.min(buf.len())], netns, out)? == Progress::Done {
            return Ok(());
        }
    }
}

/// Whether the kernel still has a UNIX socket with this inode in the
/// calling thread's network namespace: one exact lookup, not a dump.
pub(crate) fn exists(inode: u64) -> Result<bool, DiagError> {
    // Socket inode numbers are 32-bit (get_next_ino); a larger one names nothing.
    let Ok(ino) = u32::try_from(inode) else { return Ok(false) };
    let mut socket = open()?;
    socket.send(&request_bytes(0, ino, ShowFlags::empty()), 0).map_err(DiagError::Send)?;
    let mut buf = vec![0u8; 4096];
    let n = recv(&mut socket, &mut buf)?;
    let mut found = false;
    match decode_chunk(&buf[..n.min(buf.len())], 0, &mut |s| found |= s.inode == inode) {
        Ok(_) => Ok(found),
        Err(DiagError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn open() -> Result<NetlinkSocket, DiagError> {
    let mut socket = NetlinkSocket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Open)?;
    socket.bind_auto().map_err(DiagError::Open)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(DiagError::Open)?;
    Ok(socket)
}

fn recv(socket: &mut NetlinkSocket, buf: &mut [u8]) -> Result<usize, DiagError> {
    loop {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DiagError::Recv(e)),
        }
    }
}

/// A request: a dump of every socket (`NLM_F_DUMP`, inode 0) or the one
/// socket with `inode`.
fn request_bytes(flags: u16, inode: u32, show: ShowFlags) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let request = UnixRequest {
        // Every sk_state, not just the two the crate names: unconnected
        // sockets are TCP_CLOSE.
        state_flags: StateFlags::from_bits_retain(u32::MAX),
        inode,
        show_flags: show,
        // No cookie: the kernel then matches on the inode alone.
        cookie: [0xff; 8],
    };
    let mut message = NetlinkMessage::new(header, SockDiagMessage::UnixRequest(request).into());
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode_of(fd: i32) -> u64 {
        // SAFETY: fstat on our own fd into a zeroed stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        st.st_ino
    }

    /// Against this machine's kernel: the lookup sees a live socket and
    /// stops seeing it once it is closed.
    #[test]
    fn exists_follows_a_real_socket() {
        let mut fds = [0; 2];
        // SAFETY: a socketpair into a 2-element array.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }, 0);
        let (a, b) = (inode_of(fds[0]), inode_of(fds[1]));
        assert!(exists(a).expect("lookup") && exists(b).expect("lookup"));
        // SAFETY: closing our own fds.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert!(!exists(a).expect("lookup") && !exists(b).expect("lookup"));
    }
}
