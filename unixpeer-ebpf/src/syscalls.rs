//! The syscall-tracepoint strategy, on the raw syscall tracepoints
//! `tp_btf/sys_enter` and `tp_btf/sys_exit`.
//!
//! Works wherever BTF does (5.5+; the CI host allows nothing else). One
//! program per side sees every syscall and acts on connect, accept, accept4,
//! socketpair, listen (exit) and close (enter), resolving fd → file → socket
//! in the kernel. The per-syscall `syscalls:sys_*_*` tracepoints would each
//! copy the record into a perf buffer before the program runs and need the
//! arguments stashed in a map from enter to exit; here the exit side reads
//! them from the task's saved registers, which the syscall leaves intact.
//! accept, socketpair and listen are observed here under every strategy,
//! because only the syscall knows the fds it returns.
//!
//! Cannot see: io_uring connect/accept/close, sockets released without a
//! close() (exit, exec with O_CLOEXEC, dup2 over the fd, close_range). The
//! exit case is reported as `TaskExit`, from which userspace infers the
//! release of sockets only that process held. 32-bit (compat) syscalls are
//! skipped, as the syscalls:* tracepoints skip them.
//!
//! Attaches to: the sys_enter and sys_exit raw tracepoints
//! (kernel/entry/common.c, trace_sys_enter/trace_sys_exit).
//! Checked on: 6.18.44 (host), Debian 5.10.0, 6.1.0 and 6.12 cloud kernels (QEMU).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_task, bpf_probe_read_user},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::{info, warn};
use unixpeer_common::{AF_UNIX, Backend, EventKind, SyscallNumbers};

use crate::{
    emit::{self, actor_wanted, begin, copy_sockaddr, describe, describe_released, name_from_kernel, submit},
    kernel::{self, Current, off},
};

const SOCK_DGRAM: u32 = 2;

#[unsafe(no_mangle)]
static SYSCALLS: SyscallNumbers = SyscallNumbers::zeroed();

macro_rules! nr {
    ($name:ident) => {
        // SAFETY: SYSCALLS is a valid, aligned static; the loader writes it
        // before the program loads, and it is read-only from then on.
        unsafe { core::ptr::read_volatile(&raw const SYSCALLS.$name) }
    };
}

/// A saved user register: `regs` is a BTF pointer the verifier checks
/// against `struct pt_regs`, so a plain load.
#[inline(always)]
fn reg(regs: u64, offset: u64) -> u64 {
    kernel::load(regs + offset)
}

#[inline(always)]
fn arg(regs: u64, n: usize) -> u64 {
    let offset = match n {
        0 => off!(pt_regs_args)[0],
        1 => off!(pt_regs_args)[1],
        2 => off!(pt_regs_args)[2],
        _ => off!(pt_regs_args)[3],
    };
    reg(regs, offset)
}

/// A 32-bit syscall: its numbers name other calls.
#[inline(always)]
fn compat(cur: Current) -> bool {
    let flag = nr!(ts_compat);
    if flag == 0 {
        return false;
    }
    let status = match cur.btf() {
        Some(task) => Some(kernel::load::<u32>(task + off!(task_struct_thread_status))),
        // SAFETY: a helper without arguments; the task it returns is read
        // only through bpf_probe_read_kernel (`kernel::read`).
        None => kernel::read::<u32>(unsafe { bpf_get_current_task() } + off!(task_struct_thread_status)),
    };
    status.is_some_and(|s| u64::from(s) & flag != 0)
}

#[inline(always)]
fn unix_fd(cur: Current, fd: u32) -> Option<(u64, kernel::UnixSocket)> {
    let file = cur.file_of_fd(fd)?;
    Some((file, kernel::unix_socket_of_file(file)?))
}

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    if id != nr!(close) {
        return 0;
    }
    let cur = Current::get();
    if !actor_wanted(cur) || compat(cur) {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    enter_close(cur, arg(regs, 0) as u32);
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let id = reg(regs, off!(pt_regs_syscall_nr));
    // The cheap test first: this runs after every syscall in the system.
    let ours = id == nr!(accept)
        || id == nr!(accept4)
        || id == nr!(socketpair)
        || id == nr!(listen)
        || (id == nr!(connect) && emit::syscall_strategy());
    if !ours {
        return 0;
    }
    let cur = Current::get();
    if !actor_wanted(cur) || compat(cur) {
        return 0;
    }
    if id == nr!(connect) {
        exit_connect(cur, regs, ret);
    } else if id == nr!(socketpair) {
        exit_socketpair(&ctx, cur, regs, ret);
    } else if id == nr!(listen) {
        exit_listen(&ctx, cur, regs, ret);
    } else {
        exit_accept(cur, regs, ret);
    }
    0
}

// --- connect(2): __sys_connect → unix_stream_connect / unix_dgram_connect

#[inline(always)]
fn exit_connect(cur: Current, regs: u64, rc: i64) {
    let (fd, uaddr, len) = (arg(regs, 0), arg(regs, 1), arg(regs, 2));
    // Only AF_UNIX addresses: everything else costs one user read.
    // SAFETY: bpf_probe_read_user tolerates any address: where `uaddr` is
    // not readable it returns an error instead of faulting.
    if unsafe { bpf_probe_read_user(uaddr as *const u16) } != Ok(AF_UNIX) {
        return;
    }
    let sock = unix_fd(cur, fd as u32).map(|(_, s)| s);
    let kind = if rc < 0 {
        EventKind::ConnectFailed
    } else if sock.is_some_and(|s| s.sock_type == SOCK_DGRAM) {
        EventKind::DgramConnect
    } else {
        EventKind::Connect
    };
    let Some(e) = begin(cur, kind, Backend::Tracepoint) else { return };
    e.fd = fd as i32;
    if let Some(s) = sock {
        describe(e, s);
    }
    if rc < 0 {
        e.errno = (-rc) as i32;
    }
    // The address the caller asked for names the connection even when it
    // failed or when the peer is unbound.
    copy_sockaddr(e, uaddr, len as u32, true);
    if e.path_len == 0 {
        name_from_kernel(e);
    }
    submit(e);
}

// --- accept(2)/accept4(2): do_accept → unix_accept

#[inline(always)]
fn exit_accept(cur: Current, regs: u64, newfd: i64) {
    if newfd < 0 {
        return;
    }
    let Some((_, sock)) = unix_fd(cur, newfd as u32) else { return };
    let Some(e) = begin(cur, EventKind::Accept, Backend::Tracepoint) else { return };
    describe(e, sock);
    e.fd = newfd as i32;
    e.listen_fd = arg(regs, 0) as i32;
    name_from_kernel(e);
    submit(e);
}

// --- socketpair(2): __sys_socketpair → unix_socketpair

#[inline(always)]
fn exit_socketpair(ctx: &BtfTracePointContext, cur: Current, regs: u64, rc: i64) {
    if rc != 0 || arg(regs, 0) as u16 != AF_UNIX {
        return;
    }
    let usockvec = arg(regs, 3);
    // SAFETY: bpf_probe_read_user tolerates any address: where `usockvec`
    // is not readable it returns an error instead of faulting.
    let Ok(fds) = (unsafe { bpf_probe_read_user(usockvec as *const [i32; 2]) }) else {
        emit::count(unixpeer_common::counter::READ_ERRORS);
        warn!(ctx, "socketpair: the fds at user address {:x} could not be read", usockvec);
        return;
    };
    let Some((_, sock)) = unix_fd(cur, fds[0] as u32) else { return };
    let Some(e) = begin(cur, EventKind::Socketpair, Backend::Tracepoint) else { return };
    describe(e, sock);
    e.fd = fds[0];
    e.peer_fd = fds[1];
    submit(e);
}

// --- listen(2): __sys_listen → unix_listen

#[inline(always)]
fn exit_listen(ctx: &BtfTracePointContext, cur: Current, regs: u64, rc: i64) {
    if rc != 0 {
        return;
    }
    let fd = arg(regs, 0);
    let Some((_, sock)) = unix_fd(cur, fd as u32) else { return };
    let Some(e) = begin(cur, EventKind::Listen, Backend::Tracepoint) else { return };
    describe(e, sock);
    e.fd = fd as i32;
    name_from_kernel(e);
    // Rare enough to narrate: lets `-v` show that the programs' own log works.
    info!(ctx, "listen: pid {} fd {} inode {}", e.pid, e.fd, e.inode);
    submit(e);
}

// --- close(2): the close that drops the file's last reference releases
// the socket (unix_release → unix_release_sock); any other only removes a
// holder, which the model needs to keep holders true after fork.

#[inline(always)]
fn enter_close(cur: Current, fd: u32) {
    let Some((_, sock)) = unix_fd(cur, fd) else { return };
    let kind = if !kernel::file_is_last_ref(&sock) {
        EventKind::FdClose
    } else if emit::syscall_strategy() {
        EventKind::Close
    } else {
        // unix_release_sock will report it, with the same fields.
        return;
    };
    let Some(e) = begin(cur, kind, Backend::Tracepoint) else { return };
    describe_released(e, sock);
    e.fd = fd as i32;
    submit(e);
}

// --- sched:sched_process_exit: fires in do_exit() before exit_files(), so
// the sockets a dying process held are released right after it. Attached
// under every strategy: the model drops the process from its holders.

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = ctx.as_ptr();
    let cur = Current::get();
    let (tgid, pid) = cur.tgid_pid();
    // Only the group leader: one event per process, not per thread.
    if tgid != pid || !actor_wanted(cur) {
        return 0;
    }
    if let Some(e) = begin(cur, EventKind::TaskExit, Backend::Tracepoint) {
        submit(e);
    }
    0
}
