//! Bytes of a UNIX_DIAG dump -> [`Socket`]s.
//!
//! Kept free of I/O so captured kernel responses can be replayed in tests.

use netlink_packet_core::{
    DecodeError, ErrorBuffer, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NetlinkBuffer, NlaBuffer, NlasIterator, Parseable,
};
use netlink_packet_sock_diag::constants::{SOCK_DIAG_BY_FAMILY, UNIX_DIAG_VFS};
use netlink_packet_sock_diag::unix::UnixResponseHeader;
use netlink_packet_sock_diag::unix::nlas::{Nla, UnixDiagName};

use super::DiagError;
use crate::model::{KernelState, SockName, SockType, Socket, Vfs};

/// `UNIX_DIAG_UID` (Linux 5.3+), which netlink-packet-sock-diag 0.5 does not name.
pub(crate) const UNIX_DIAG_UID: u16 = 7;
/// `sizeof(struct unix_diag_msg)`.
const UNIX_DIAG_MSG_LEN: usize = 16;
const NLMSG_HDRLEN: usize = 16;

/// Whether the kernel has more to send after a received chunk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    More,
    Done,
}

/// Decodes every netlink message of one received datagram, handing each
/// socket to `out` (straight into the model: no intermediate list).
pub(crate) fn decode_chunk(chunk: &[u8], netns: u64, out: &mut dyn FnMut(Socket)) -> Result<Progress, DiagError> {
    let mut rest = chunk;
    while rest.len() >= NLMSG_HDRLEN {
        let msg = NetlinkBuffer::new_checked(rest).map_err(DiagError::Decode)?;
        let len = msg.length() as usize;
        match msg.message_type() {
            NLMSG_DONE => return done_status(msg.payload()),
            NLMSG_ERROR => {
                let err = ErrorBuffer::new_checked(msg.payload()).map_err(DiagError::Decode)?;
                if let Some(code) = err.code() {
                    return Err(DiagError::Kernel(std::io::Error::from_raw_os_error(-code.get())));
                }
            }
            NLMSG_NOOP => {}
            SOCK_DIAG_BY_FAMILY => out(decode_socket(msg.payload(), netns)?),
            other => return Err(DiagError::Unexpected(other)),
        }
        // Messages are 4-byte aligned; the last one may lack its padding.
        let next = len.div_ceil(4) * 4;
        if next == 0 || next >= rest.len() {
            break;
        }
        rest = &rest[next..];
    }
    Ok(Progress::More)
}

/// NLMSG_DONE of a dump carries an int: negative errno if the dump failed.
fn done_status(payload: &[u8]) -> Result<Progress, DiagError> {
    match payload.get(..4) {
        Some(b) => {
            let code = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            if code < 0 { Err(DiagError::Kernel(std::io::Error::from_raw_os_error(-code))) } else { Ok(Progress::Done) }
        }
        None => Ok(Progress::Done),
    }
}

/// Decodes one `struct unix_diag_msg` and its attributes.
pub(crate) fn decode_socket(payload: &[u8], netns: u64) -> Result<Socket, DiagError> {
    let header_bytes = payload
        .get(..UNIX_DIAG_MSG_LEN)
        .ok_or_else(|| DiagError::Decode(DecodeError::buffer_too_small(payload.len(), UNIX_DIAG_MSG_LEN)))?;
    let header = UnixResponseHeader::parse(header_bytes).map_err(DiagError::Decode)?;
    let mut socket = Socket::new(
        u64::from(header.inode),
        SockType::from_kernel(header.kind),
        KernelState::from_kernel(header.state),
        netns,
    );
    for nla in NlasIterator::new(&payload[UNIX_DIAG_MSG_LEN..]) {
        let nla = nla.map_err(DiagError::Decode)?;
        apply_attribute(&mut socket, &nla)?;
    }
    Ok(socket)
}

fn apply_attribute(socket: &mut Socket, nla: &NlaBuffer<&[u8]>) -> Result<(), DiagError> {
    let value = nla.value();
    match nla.kind() {
        // The crate keeps the VFS fields private and does not know UID, so
        // these two are read by hand: struct unix_diag_vfs { u32 ino, dev }.
        UNIX_DIAG_VFS => {
            let ino = read_u32(value, 0)?;
            let dev = read_u32(value, 4)?;
            socket.vfs = Some(Vfs { dev, ino });
        }
        UNIX_DIAG_UID => socket.uid = Some(read_u32(value, 0)?),
        _ => match Nla::parse(nla).map_err(DiagError::Decode)? {
            Nla::Name(UnixDiagName::Pathname(p)) => {
                socket.name = Some(SockName::Path(std::os::unix::ffi::OsStringExt::into_vec(p).into()))
            }
            Nla::Name(UnixDiagName::Abstract(a)) => socket.name = Some(SockName::Abstract(a.into())),
            Nla::Peer(p) => socket.peer = Some(u64::from(p)),
            Nla::PendingConnections(icons) => socket.icons = icons.into_iter().map(u64::from).collect(),
            Nla::ReceiveQueueLength(r, w) => socket.rqlen = Some((r, w)),
            Nla::Shutdown(s) => socket.shutdown = s,
            // MEMINFO is not requested; newer kernels may add attributes.
            Nla::MemInfo(_) | Nla::Vfs(_) | Nla::Other(_) => {}
        },
    }
    Ok(())
}

fn read_u32(value: &[u8], at: usize) -> Result<u32, DiagError> {
    value
        .get(at..at + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| DiagError::Decode(DecodeError::buffer_too_small(value.len(), at + 4)))
}
