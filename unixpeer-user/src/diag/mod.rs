//! UNIX_DIAG: the kernel's own list of UNIX sockets, over NETLINK_SOCK_DIAG.
//!
//! Needs no privilege and sees every socket of the calling thread's network
//! namespace.

mod decode;
#[cfg(test)]
mod fixtures;
mod request;

pub(crate) use request::{dump, exists};

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket")]
    Open(#[source] std::io::Error),
    #[error("cannot send the UNIX_DIAG dump request")]
    Send(#[source] std::io::Error),
    #[error("cannot receive the UNIX_DIAG dump")]
    Recv(#[source] std::io::Error),
    #[error("the kernel refused the UNIX_DIAG dump (is unix_diag available?)")]
    Kernel(#[source] std::io::Error),
    #[error("malformed UNIX_DIAG message: {0}")]
    Decode(netlink_packet_core::DecodeError),
    #[error("unexpected netlink message type {0} in a UNIX_DIAG dump")]
    Unexpected(u16),
}
