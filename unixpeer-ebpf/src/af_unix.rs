//! What the fentry and kprobe strategies report from inside af_unix. Both
//! hand the same kernel arguments here, so they cannot disagree.

use unixpeer_common::{Backend, EventKind};

use crate::{
    emit::{self, begin, copy_sockaddr, describe, name_from_kernel, submit},
    kernel::{self, Current, UnixSocket},
    traffic,
};

/// After `unix_stream_connect` or `unix_dgram_connect(struct socket *sock,
/// struct sockaddr *uaddr, int addr_len, int flags)` returned `rc`. `uaddr`
/// is the kernel's copy of the caller's address.
#[inline(always)]
pub fn connect_returned(socket: u64, uaddr: u64, addr_len: i32, rc: i64, dgram: bool, backend: Backend, cur: Current) {
    let kind = match (rc < 0, dgram) {
        (true, _) => EventKind::ConnectFailed,
        (false, true) => EventKind::DgramConnect,
        (false, false) => EventKind::Connect,
    };
    let Some(e) = begin(cur, kind, backend) else { return };
    if let Some(sk) = kernel::socket_sk(socket) {
        describe(e, UnixSocket::of_socket(socket, sk));
    }
    if rc < 0 {
        e.errno = (-rc) as i32;
    }
    // As `calls::connected` names it, so that the strategies agree.
    match emit::peer_address(if rc < 0 { 0 } else { e.peer_sk }) {
        Some((sockaddr, len)) => copy_sockaddr(e, sockaddr, len, false),
        None if addr_len > 0 => copy_sockaddr(e, uaddr, addr_len as u32, false),
        None => {}
    }
    if e.path_len == 0 {
        name_from_kernel(e);
    }
    submit(e);
}

/// On entry to `unix_release_sock(struct sock *sk, int embrion)`: the last
/// reference to the socket is gone, whoever held it and however it went
/// (close, exit, exec, an embryo never accepted).
#[inline(always)]
pub fn release(sk: u64, backend: Backend, cur: Current) {
    let Some(e) = begin(cur, EventKind::Close, backend) else { return };
    let socket = kernel::socket_of_sk(sk);
    describe(e, UnixSocket::of_socket(socket, sk));
    name_from_kernel(e);
    traffic::take(e);
    submit(e);
}
