//! What a syscall on a socket fd did, however it was observed: the syscall
//! tracepoints (`syscalls`) and the syscall functions' fentry/fexit and
//! kprobes (`sysfns`) read the same arguments and return value and hand
//! them here, so the strategies cannot disagree about an event's fields.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::LruHashMap,
};
use aya_log_ebpf::{info, warn};
use unixpeer_common::{AF_UNIX, Backend, EventKind};

use crate::{
    emit::{self, begin, copy_sockaddr, describe, describe_released, name_from_kernel, submit},
    kernel::{self, Current, off},
};

const SOCK_DGRAM: u32 = 2;

/// A syscall's saved user registers (`struct pt_regs`), where its
/// arguments are.
#[derive(Clone, Copy)]
pub enum Regs {
    /// A BTF pointer (a tp_btf or fentry argument): plain loads.
    Btf(u64),
    /// An untyped address (a kprobe's argument): probe reads.
    Raw(u64),
}

impl Regs {
    /// Argument `n` (0-5). An unreadable one is all ones: no fd, and an
    /// address no read succeeds at.
    #[inline(always)]
    pub fn arg(self, n: usize) -> u64 {
        let offset = match n {
            0 => off!(pt_regs_args)[0],
            1 => off!(pt_regs_args)[1],
            2 => off!(pt_regs_args)[2],
            3 => off!(pt_regs_args)[3],
            4 => off!(pt_regs_args)[4],
            _ => off!(pt_regs_args)[5],
        };
        self.word(offset)
    }

    /// The syscall's return value, at its exit.
    #[inline(always)]
    pub fn ret(self) -> i64 {
        self.word(off!(pt_regs_return)) as i64
    }

    #[inline(always)]
    fn word(self, offset: u64) -> u64 {
        match self {
            Self::Btf(regs) => kernel::load(regs + offset),
            Self::Raw(regs) => kernel::read(regs + offset).unwrap_or(u64::MAX),
        }
    }
}

#[inline(always)]
fn unix_fd(cur: Current, fd: u32) -> Option<(u64, kernel::UnixSocket)> {
    let file = cur.file_of_fd(fd)?;
    Some((file, kernel::unix_socket_of_file(file)?))
}

/// connect(fd, uaddr, len) returned `rc`. Only the tracepoint strategy
/// reports connects from the syscall; the others see them in af_unix.
#[inline(always)]
pub fn connected(cur: Current, fd: u32, uaddr: u64, len: u32, rc: i64, backend: Backend) {
    let sock = unix_fd(cur, fd).map(|(_, s)| s);
    // A UNIX socket that connected is named by its peer, from the kernel:
    // reading the caller's address costs two reads of user memory, a
    // fifth of this program on the connection loop.
    // Plain values, not an Option, that every path sets: 5.10's verifier
    // refuses the read of an unset stack slot that LLVM makes of one.
    let (name, name_len, user) =
        match sock.and_then(|s| if rc == 0 { emit::peer_address(kernel::peer_of(s.sk)) } else { None }) {
            Some((sockaddr, n)) => (sockaddr, n, false),
            None => (uaddr, len, true),
        };
    // Otherwise only AF_UNIX addresses: everything else costs one user
    // read. (That also leaves out an AF_UNSPEC connect, which dissolves a
    // datagram socket's association and leaves it no peer.)
    // SAFETY: `uaddr` is whatever the caller passed to connect(). The
    // helper returns an error for an unreadable address (NULL, unmapped,
    // a kernel address) instead of faulting, and aya's wrapper reads the
    // local it copies into only after a success; any two bytes are a
    // valid u16.
    if user && unsafe { bpf_probe_read_user(uaddr as *const u16) } != Ok(AF_UNIX) {
        return;
    }
    let kind = if rc < 0 {
        EventKind::ConnectFailed
    } else if sock.is_some_and(|s| s.sock_type == SOCK_DGRAM) {
        EventKind::DgramConnect
    } else {
        EventKind::Connect
    };
    let Some(e) = begin(cur, kind, backend) else { return };
    e.fd = fd as i32;
    if let Some(s) = sock {
        describe(e, s);
    }
    if rc < 0 {
        e.errno = (-rc) as i32;
    }
    // The peer's name, or for a connect that failed (or a peer without
    // one) the address the caller asked for.
    copy_sockaddr(e, name, name_len, user);
    if e.path_len == 0 {
        name_from_kernel(e);
    }
    submit(e);
}

/// accept/accept4(listen_fd, ...) returned `newfd`.
#[inline(always)]
pub fn accepted(cur: Current, listen_fd: u32, newfd: i64, backend: Backend) {
    if newfd < 0 {
        return;
    }
    let Some((_, sock)) = unix_fd(cur, newfd as u32) else { return };
    let Some(e) = begin(cur, EventKind::Accept, backend) else { return };
    describe(e, sock);
    e.fd = newfd as i32;
    e.listen_fd = listen_fd as i32;
    name_from_kernel(e);
    submit(e);
}

/// `fd_install(fd, file)` in a thread whose accept(listen_fd) is in
/// progress: reports the accept if `file` is the socket accepted from that
/// listener, which shares the listener's address (unix_stream_connect
/// hands the embryo `otheru->addr`). Anything else the thread installs
/// (a socket(), an fd received, after an accept that failed) is not.
#[inline(always)]
pub fn installed_by_accept(cur: Current, listen_fd: u32, fd: u32, file: u64, backend: Backend) -> bool {
    let Some(sock) = kernel::unix_socket_of_file(file) else { return false };
    let Some((_, listener)) = unix_fd(cur, listen_fd) else { return false };
    let addr = kernel::unix_addr(sock.sk);
    if addr == 0 || addr != kernel::unix_addr(listener.sk) || kernel::peer_of(sock.sk) == 0 {
        return false;
    }
    if let Some(e) = begin(cur, EventKind::Accept, backend) {
        describe(e, sock);
        e.fd = fd as i32;
        e.listen_fd = listen_fd as i32;
        name_from_kernel(e);
        submit(e);
    }
    true
}

/// socketpair(family, type, protocol, usockvec) returned `rc`.
#[inline(always)]
pub fn socketpair_made<C: EbpfContext>(ctx: &C, cur: Current, family: u64, usockvec: u64, rc: i64, backend: Backend) {
    if rc != 0 || family as u16 != AF_UNIX {
        return;
    }
    // SAFETY: `usockvec` is whatever the caller passed to socketpair().
    // The helper returns an error where it is not readable instead of
    // faulting, aya's wrapper takes the copy only after a success, and any
    // eight bytes are a valid [i32; 2].
    let Ok(fds) = (unsafe { bpf_probe_read_user(usockvec as *const [i32; 2]) }) else {
        emit::count(unixpeer_common::counter::READ_ERRORS);
        warn!(ctx, "socketpair: the fds at user address {:x} could not be read", usockvec);
        return;
    };
    let Some((_, sock)) = unix_fd(cur, fds[0] as u32) else { return };
    let Some(e) = begin(cur, EventKind::Socketpair, backend) else { return };
    describe(e, sock);
    e.fd = fds[0];
    e.peer_fd = fds[1];
    submit(e);
}

/// listen(fd, backlog) returned `rc`.
#[inline(always)]
pub fn listened<C: EbpfContext>(ctx: &C, cur: Current, fd: u32, rc: i64, backend: Backend) {
    if rc != 0 {
        return;
    }
    let Some((_, sock)) = unix_fd(cur, fd) else { return };
    let Some(e) = begin(cur, EventKind::Listen, backend) else { return };
    describe(e, sock);
    e.fd = fd as i32;
    name_from_kernel(e);
    // Rare enough to narrate: lets `-v` show that the programs' own log works.
    info!(ctx, "listen: pid {} fd {} inode {}", e.pid, e.fd, e.inode);
    submit(e);
}

// --- Closes. The close that drops the file's last reference releases the
// socket (unix_release → unix_release_sock); any other only removes a
// holder, which the model needs to keep holders true after fork. Under
// fentry and kprobe the release is reported from unix_release_sock, and
// every other drop of an fd from filp_close(), which close_range, dup2 over
// the fd, close-on-exec and io_uring's close reach without close(2). The fd
// is not an argument of filp_close: the syscall that knows it leaves a note
// here for its thread first.

/// A file on its way out of a thread's fd table, noted where the fd is known.
#[derive(Clone, Copy)]
#[repr(C)]
struct Leaving {
    file: u64,
    /// With the file's address, so a note left behind (a dup2 that failed)
    /// cannot be taken for a later file at the same address.
    inode: u64,
    fd: i32,
    /// 1 when the fd's close was already reported.
    reported: u32,
}

/// Keyed by pid_tgid: one note per thread, and a stale one is evicted.
#[map]
static LEAVING: LruHashMap<u64, Leaving> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn note(file: u64, inode: u64, fd: u32, reported: bool) {
    let leaving = Leaving { file, inode, fd: fd as i32, reported: u32::from(reported) };
    let _ = LEAVING.insert(&bpf_get_current_pid_tgid(), &leaving, 0);
}

/// close(fd) is about to run.
#[inline(always)]
pub fn closing(cur: Current, fd: u32, backend: Backend) {
    let Some((file, sock)) = unix_fd(cur, fd) else { return };
    let kind = if !kernel::file_is_last_ref(&sock) {
        EventKind::FdClose
    } else if backend == Backend::Tracepoint {
        EventKind::Close
    } else {
        // unix_release_sock will report it, with the same fields.
        return;
    };
    let Some(e) = begin(cur, kind, backend) else { return };
    describe_released(e, sock);
    e.fd = fd as i32;
    let inode = e.inode;
    if kind == EventKind::Close {
        crate::traffic::take(e);
    }
    submit(e);
    if backend != Backend::Tracepoint {
        // Up to 6.7 close(2) ends in filp_close, which must not report it again.
        note(file, inode, fd, true);
    }
}

/// dup2/dup3(oldfd, newfd) is about to run: if it succeeds, whatever
/// `newfd` held goes through filp_close, which then knows its fd.
#[inline(always)]
pub fn dup_over(cur: Current, oldfd: u32, newfd: u32) {
    if oldfd == newfd {
        return;
    }
    let Some((file, sock)) = unix_fd(cur, newfd) else { return };
    note(file, kernel::inode_of_socket(sock.socket), newfd, false);
}

/// filp_close(file, id): one fd's reference to `file` is being dropped.
#[inline(always)]
pub fn file_closing(cur: Current, file: u64, backend: Backend) {
    let Some(sock) = kernel::unix_socket_of_file(file) else { return };
    if kernel::file_is_last_ref(&sock) {
        // unix_release_sock reports the release.
        return;
    }
    let inode = kernel::inode_of_socket(sock.socket);
    let key = bpf_get_current_pid_tgid();
    // SAFETY: `get` is unsafe because the reference points into the map's
    // element, which the map may recycle for another key (LRU eviction by
    // another CPU's insert) while it is held. It is held only for the copy
    // here. The element is preallocated (LRU maps always are), so its
    // memory stays the map's while the program runs, and `Leaving` is
    // integers only: even a copy torn by such a race is a valid value,
    // which the file and inode check then rejects. Only this thread's
    // programs (note, and the remove below) write this key.
    let noted = unsafe { LEAVING.get(&key) }.copied().filter(|n| n.file == file && n.inode == inode);
    let mut fd = -1;
    if let Some(n) = noted {
        let _ = LEAVING.remove(&key);
        if n.reported != 0 {
            return;
        }
        fd = n.fd;
    }
    // A dying process drops every fd at once; the model already dropped it
    // as a holder on sched_process_exit.
    if cur.exiting() {
        return;
    }
    let Some(e) = begin(cur, EventKind::FdClose, backend) else { return };
    describe_released(e, sock);
    e.fd = fd;
    submit(e);
}
