//! The syscall-tracepoint strategy, on the per-syscall tracepoints
//! `syscalls:sys_enter_*` and `sys_exit_*` of the calls it concerns:
//! close (entry, where the fd is still in the table), and connect, accept,
//! accept4, socketpair and listen (exit, since only the syscall knows the
//! fds it returns). The exit record does not carry the arguments: from
//! 5.15 the exit reads them from the caller's saved registers
//! (`bpf_task_pt_regs`); before, each entry leaves them in `IN_CALL`,
//! which cost a second program and a map insert and delete per call.
//!
//! Why these and not the raw `sys_enter`/`sys_exit` tracepoints: enabling
//! any syscall tracepoint sends every syscall of the system down the slow
//! path, which no program attached there can avoid (the "floor" of
//! `cargo xtask bench tax`); but a raw tracepoint then also runs our
//! program on every syscall, while the per-syscall ones test a bit per
//! syscall number and run nothing for the others. Measured on the 6.18
//! host, getppid under the raw pair ran at 0.43-0.62x against 0.75-0.80x
//! for the floor (ARCHITECTURE.md has the figures).
//!
//! Cannot see: io_uring connect/accept/close, sockets released without a
//! close() (exit, exec with O_CLOEXEC, dup2 over the fd, close_range). The
//! exit case is reported as `TaskExit`, from which userspace infers the
//! release of sockets only that process held. The syscalls:* tracepoints
//! skip 32-bit (compat) syscalls themselves.
//!
//! Record layouts come from tracefs `format` files (`SYSCALL_RECORDS`).
//! Attaches to: syscalls:sys_enter_close and
//! syscalls:sys_exit_{connect,accept,accept4,socketpair,listen}; before
//! 5.15 also the matching sys_enter_* (kernel/trace/trace_syscalls.c).
//! Checked on: 6.18.44 (host), Debian 5.10.0, 6.1.0 and 6.12 cloud kernels (QEMU).
//! The `passfd_*` programs on syscalls:sys_{enter,exit}_{sendmsg,recvmsg}
//! (see `passfd`) attach under every strategy; checked on 6.18.44 (host)
//! and Debian 5.10.0, 6.1.0 and 6.12 cloud kernels (QEMU).

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use unixpeer_common::{Backend, EventKind, SyscallRecords};

use crate::{
    calls,
    emit::{actor_wanted, begin, submit},
    kernel::Current,
    passfd,
};

// SAFETY: unmangled so that the loader can find it by name
// (override_global); no other symbol in the object has this name.
#[unsafe(no_mangle)]
static SYSCALL_RECORDS: SyscallRecords = SyscallRecords::zeroed();

/// A field of the record at hand, at the offset tracefs gave for it; all
/// ones if it cannot be read (no fd, an address no read succeeds at).
macro_rules! field {
    ($ctx:expr, $name:ident) => {{
        // SAFETY: a field of a static, so valid and aligned.
        // SYSCALL_RECORDS sits in .rodata, which the loader writes before
        // loading the programs and then freezes: nothing writes it while a
        // program runs.
        let at = unsafe { core::ptr::read_volatile(&raw const SYSCALL_RECORDS.$name) } as usize;
        // SAFETY: read_at is bpf_probe_read_kernel at ctx + `at`: an offset
        // past the record (a wrong or unset entry above) reads other kernel
        // memory or fails, never faults, and the copy is taken only after a
        // success. Any 8 bytes are a valid u64 (the record stores every
        // syscall argument in 8).
        unsafe { $ctx.read_at::<u64>(at) }.unwrap_or(u64::MAX)
    }};
}

/// The arguments of a call in progress, from its entry to its exit, per
/// thread (pid_tgid): one call at a time each; an accept that blocks for
/// hours keeps its entry until a busier thread's evicts it.
#[map]
static IN_CALL: LruHashMap<u64, [u64; 3]> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn enter(args: [u64; 3]) {
    if actor_wanted(Current::get()) {
        let _ = IN_CALL.insert(&bpf_get_current_pid_tgid(), &args, 0);
    }
}

/// Arguments `which` of the call returning, and its return value: from
/// the caller's saved registers where the kernel can name them (5.15+),
/// else as its entry left them and from the record. The registers are
/// loads where the record is a probe read.
#[inline(always)]
fn exit(ctx: &TracePointContext, cur: Current, which: [usize; 3]) -> Option<([u64; 3], i64)> {
    if let Some(regs) = cur.user_regs() {
        if !actor_wanted(cur) {
            return None;
        }
        let regs = calls::Regs::Btf(regs);
        return Some(([regs.arg(which[0]), regs.arg(which[1]), regs.arg(which[2])], regs.ret()));
    }
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the reference into the map's element is held only for the
    // copy. LRU elements are preallocated, so the memory stays the map's
    // while the program runs even if another CPU's insert evicts and
    // reuses it meanwhile; then the copy may be another thread's
    // arguments, still a valid [u64; 3], and every use of them is a
    // checked read. Only this thread's programs write this key.
    let args = unsafe { IN_CALL.get(&key) }.copied()?;
    let _ = IN_CALL.remove(&key);
    Some((args, field!(ctx, exit_ret) as i64))
}

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let cur = Current::get();
    if actor_wanted(cur) {
        let fd = match cur.user_regs() {
            Some(regs) => calls::Regs::Btf(regs).arg(0),
            None => field!(ctx, close_fd),
        };
        calls::closing(cur, fd as u32, Backend::Tracepoint);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter([field!(ctx, connect_fd), field!(ctx, connect_uservaddr), field!(ctx, connect_addrlen)]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let cur = Current::get();
    if let Some(([fd, uaddr, len], rc)) = exit(&ctx, cur, [0, 1, 2]) {
        calls::connected(cur, fd as u32, uaddr, len as u32, rc, Backend::Tracepoint);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter([field!(ctx, accept_fd), 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter([field!(ctx, accept4_fd), 0, 0]);
    0
}

#[inline(always)]
fn exit_accept(ctx: &TracePointContext) {
    let cur = Current::get();
    if let Some(([fd, _, _], newfd)) = exit(ctx, cur, [0, 0, 0]) {
        calls::accepted(cur, fd as u32, newfd, Backend::Tracepoint);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_socketpair")]
pub fn sys_enter_socketpair(ctx: TracePointContext) -> u32 {
    enter([field!(ctx, socketpair_family), field!(ctx, socketpair_usockvec), 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_socketpair")]
pub fn sys_exit_socketpair(ctx: TracePointContext) -> u32 {
    let cur = Current::get();
    // socketpair(family, type, protocol, usockvec)
    if let Some(([family, usockvec, _], rc)) = exit(&ctx, cur, [0, 3, 3]) {
        calls::socketpair_made(&ctx, cur, family, usockvec, rc, Backend::Tracepoint);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    enter([field!(ctx, listen_fd), 0, 0]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    let cur = Current::get();
    if let Some(([fd, _, _], rc)) = exit(&ctx, cur, [0, 0, 0]) {
        calls::listened(&ctx, cur, fd as u32, rc, Backend::Tracepoint);
    }
    0
}

// --- SCM_RIGHTS (`passfd`): attached under every strategy, as their own
// group. Before 5.15 the entries leave (fd, msg, flags) in IN_CALL only
// for a message with a control buffer, so other sendmsg calls cost one
// user read and no map update.

#[inline(always)]
fn enter_with_control(args: [u64; 3]) {
    if passfd::has_control(args[1]) {
        enter(args);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn passfd_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter_with_control([field!(ctx, sendmsg_fd), field!(ctx, sendmsg_msg), field!(ctx, sendmsg_flags)]);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_recvmsg")]
pub fn passfd_enter_recvmsg(ctx: TracePointContext) -> u32 {
    enter_with_control([field!(ctx, recvmsg_fd), field!(ctx, recvmsg_msg), field!(ctx, recvmsg_flags)]);
    0
}

#[inline(always)]
fn exit_passfd(ctx: &TracePointContext, kind: EventKind) {
    let cur = Current::get();
    // From the registers (5.15+) the control buffer is tested here; from
    // IN_CALL, the entry already did.
    if let Some(regs) = cur.user_regs()
        && !passfd::has_control(calls::Regs::Btf(regs).arg(1))
    {
        return;
    }
    if let Some((args, rc)) = exit(ctx, cur, [0, 1, 2]) {
        passfd::passed(cur, kind, args, rc, Backend::Tracepoint);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn passfd_exit_sendmsg(ctx: TracePointContext) -> u32 {
    exit_passfd(&ctx, EventKind::FdSent);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_recvmsg")]
pub fn passfd_exit_recvmsg(ctx: TracePointContext) -> u32 {
    exit_passfd(&ctx, EventKind::FdReceived);
    0
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
