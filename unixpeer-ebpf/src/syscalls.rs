//! The syscall-tracepoint strategy: `syscalls:sys_{enter,exit}_*`.
//!
//! Works wherever syscall tracepoints do (every kernel we target, and the
//! only strategy the CI host allows). The enter side stashes the arguments
//! per thread; the exit side resolves fd → file → socket in the kernel and
//! reports. accept and socketpair are observed here under every strategy,
//! because only the syscall knows the fds it returns.
//!
//! Cannot see: io_uring connect/accept/close, sockets released without a
//! close() (exit, exec with O_CLOEXEC, dup2 over the fd, close_range). The
//! exit case is reported as `TaskExit`, from which userspace infers the
//! release of sockets only that process held.
//!
//! Checked on: 6.18.44 (host), Debian 6.1.0 and 6.12 cloud kernels (QEMU).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use aya_log_ebpf::{info, warn};
use unixpeer_common::{AF_UNIX, Backend, EventKind};

use crate::{
    emit::{self, actor_wanted, begin, copy_sockaddr, describe, describe_released, name_from_kernel, submit},
    kernel::{self, off},
};

const SOCK_DGRAM: u32 = 2;

#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    fd: u64,
    /// A user pointer: the sockaddr for connect, the int[2] for socketpair.
    uptr: u64,
    len: u64,
}

/// Arguments of the syscalls now in flight, by pid_tgid.
#[map]
static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn arg(ctx: &TracePointContext, n: u64) -> Option<u64> {
    unsafe { ctx.read_at::<u64>((off!(tp_syscall_args) + n * 8) as usize).ok() }
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> Option<i64> {
    unsafe { ctx.read_at::<i64>(off!(tp_syscall_ret) as usize).ok() }
}

#[inline(always)]
fn stash(fd: u64, uptr: u64, len: u64) {
    let p = Pending { fd, uptr, len };
    let _ = PENDING.insert(&bpf_get_current_pid_tgid(), &p, 0);
}

#[inline(always)]
fn take() -> Option<Pending> {
    let key = bpf_get_current_pid_tgid();
    let p = unsafe { PENDING.get(&key) }.copied();
    if p.is_some() {
        let _ = PENDING.remove(&key);
    }
    p
}

#[inline(always)]
fn current_task() -> u64 {
    unsafe { bpf_get_current_task() }
}

#[inline(always)]
fn unix_fd(fd: u32) -> Option<(u64, kernel::UnixSocket)> {
    let file = kernel::file_of_fd(current_task(), fd)?;
    Some((file, kernel::unix_socket_of_file(file)?))
}

// --- connect(2): __sys_connect → unix_stream_connect / unix_dgram_connect

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if !actor_wanted() {
        return 0;
    }
    let (Some(fd), Some(uaddr), Some(len)) = (arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2)) else {
        return 0;
    };
    // Only AF_UNIX addresses: everything else costs one user read.
    let family = unsafe { bpf_probe_read_user(uaddr as *const u16) };
    if family == Ok(AF_UNIX) {
        stash(fd, uaddr, len);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let Some(p) = take() else { return 0 };
    let Some(rc) = ret(&ctx) else { return 0 };
    let sock = unix_fd(p.fd as u32).map(|(_, s)| s);
    let kind = if rc < 0 {
        EventKind::ConnectFailed
    } else if sock.is_some_and(|s| kernel::socket_type(s.socket) == SOCK_DGRAM) {
        EventKind::DgramConnect
    } else {
        EventKind::Connect
    };
    let Some(e) = begin(kind, Backend::Tracepoint) else { return 0 };
    e.fd = p.fd as i32;
    if let Some(s) = sock {
        describe(e, s);
    }
    if rc < 0 {
        e.errno = (-rc) as i32;
    }
    // The address the caller asked for names the connection even when it
    // failed or when the peer is unbound.
    copy_sockaddr(e, p.uptr, p.len as u32, true);
    if e.path_len == 0 {
        name_from_kernel(e);
    }
    submit(e);
    0
}

// --- accept(2)/accept4(2): do_accept → unix_accept

#[inline(always)]
fn enter_accept(ctx: &TracePointContext) -> u32 {
    if actor_wanted()
        && let Some(fd) = arg(ctx, 0)
    {
        stash(fd, 0, 0);
    }
    0
}

#[inline(always)]
fn exit_accept(ctx: &TracePointContext) -> u32 {
    let Some(p) = take() else { return 0 };
    let Some(newfd) = ret(ctx) else { return 0 };
    if newfd < 0 {
        return 0;
    }
    let Some((_, sock)) = unix_fd(newfd as u32) else { return 0 };
    let Some(e) = begin(EventKind::Accept, Backend::Tracepoint) else { return 0 };
    describe(e, sock);
    e.fd = newfd as i32;
    e.listen_fd = p.fd as i32;
    name_from_kernel(e);
    submit(e);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx)
}

// --- socketpair(2): __sys_socketpair → unix_socketpair

#[tracepoint(category = "syscalls", name = "sys_enter_socketpair")]
pub fn sys_enter_socketpair(ctx: TracePointContext) -> u32 {
    if !actor_wanted() {
        return 0;
    }
    if let (Some(family), Some(usockvec)) = (arg(&ctx, 0), arg(&ctx, 3))
        && family as u16 == AF_UNIX
    {
        stash(0, usockvec, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_socketpair")]
pub fn sys_exit_socketpair(ctx: TracePointContext) -> u32 {
    let Some(p) = take() else { return 0 };
    if ret(&ctx) != Some(0) {
        return 0;
    }
    let Ok(fds) = (unsafe { bpf_probe_read_user(p.uptr as *const [i32; 2]) }) else {
        emit::count(unixpeer_common::counter::READ_ERRORS);
        warn!(&ctx, "socketpair: the fds at user address {:x} could not be read", p.uptr);
        return 0;
    };
    let Some((_, sock)) = unix_fd(fds[0] as u32) else { return 0 };
    let Some(e) = begin(EventKind::Socketpair, Backend::Tracepoint) else { return 0 };
    describe(e, sock);
    e.fd = fds[0];
    e.peer_fd = fds[1];
    submit(e);
    0
}

// --- listen(2): __sys_listen → unix_listen

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    if actor_wanted()
        && let Some(fd) = arg(&ctx, 0)
    {
        stash(fd, 0, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    let Some(p) = take() else { return 0 };
    if ret(&ctx) != Some(0) {
        return 0;
    }
    let Some((_, sock)) = unix_fd(p.fd as u32) else { return 0 };
    let Some(e) = begin(EventKind::Listen, Backend::Tracepoint) else { return 0 };
    describe(e, sock);
    e.fd = p.fd as i32;
    name_from_kernel(e);
    // Rare enough to narrate: lets `-v` show that the programs' own log works.
    info!(&ctx, "listen: pid {} fd {} inode {}", e.pid, e.fd, e.inode);
    submit(e);
    0
}

// --- close(2): the close that drops the file's last reference releases
// the socket (unix_release → unix_release_sock); any other only removes a
// holder, which the model needs to keep holders true after fork.

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if !actor_wanted() {
        return 0;
    }
    let Some(fd) = arg(&ctx, 0) else { return 0 };
    let Some((file, sock)) = unix_fd(fd as u32) else { return 0 };
    let kind = if !kernel::file_is_last_ref(file) {
        EventKind::FdClose
    } else if emit::close_from_syscall() {
        EventKind::Close
    } else {
        // unix_release_sock will report it, with the same fields.
        return 0;
    };
    let Some(e) = begin(kind, Backend::Tracepoint) else { return 0 };
    describe_released(e, sock);
    e.fd = fd as i32;
    submit(e);
    0
}

// --- sched:sched_process_exit: fires in do_exit() before exit_files(), so
// the sockets a dying process held are released right after it. Attached
// under every strategy: the model drops the process from its holders.

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = ctx.as_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only the group leader: one event per process, not per thread.
    if (pid_tgid >> 32) as u32 != pid_tgid as u32 || !actor_wanted() {
        return 0;
    }
    if let Some(e) = begin(EventKind::TaskExit, Backend::Tracepoint) {
        submit(e);
    }
    0
}
