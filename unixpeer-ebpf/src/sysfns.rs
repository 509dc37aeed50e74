//! Under fentry and kprobe, what the syscall tracepoints see under the
//! tracepoint strategy, from kernel functions instead: only the calls that
//! concern us pay, and no syscall of the system takes the slow path.
//!
//! - accept, accept4, socketpair, listen: their syscall functions
//!   (`__x64_sys_*`, whose one argument is the caller's saved registers),
//!   at exit, because only the syscall knows the fds it returns.
//! - close(2): its syscall function at entry, where the fd is still in the
//!   table.
//! - every other drop of an fd (close_range, dup2/dup3 over it,
//!   close-on-exec, io_uring's close): `filp_close`. dup2/dup3 leave the fd
//!   they replace for it first.
//!
//! A kretprobe holds one of a few instances for as long as its function
//! runs, and an accept() can block for hours: under kprobe, accept is
//! seen where its new file is installed (`fd_install`), joined to the
//! listener its syscall noted at entry.
//!
//! Attaches to: `__x64_sys_{close,accept,accept4,socketpair,listen,dup2,dup3}`,
//! `__x64_sys_{sendmsg,recvmsg}` (SCM_RIGHTS: fexit; kprobe, and kretprobe on sendmsg)
//! (arch/x86/include/asm/syscall_wrapper.h), `filp_close` (fs/open.c),
//! `fd_install` (fs/file.c, kprobe only). Checked on: Debian 5.10.0, 6.1.0
//! and 6.12 cloud kernels in QEMU.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use unixpeer_common::{Backend, EventKind};

use crate::{
    calls::{self, Regs},
    emit::actor_wanted,
    kernel::{self, Current, off},
    passfd,
};

// --- fentry/fexit: the saved registers are a BTF pointer.

/// fexit of a function of one argument: the return value follows it.
const RET: usize = 1;

#[inline(always)]
fn wanted() -> Option<Current> {
    let cur = Current::get();
    actor_wanted(cur).then_some(cur)
}

#[fentry(function = "__x64_sys_close")]
pub fn fentry_sys_close(ctx: FEntryContext) -> i32 {
    if let Some(cur) = wanted() {
        calls::closing(cur, Regs::Btf(ctx.arg(0)).arg(0) as u32, Backend::Fentry);
    }
    0
}

#[inline(always)]
fn fexit_accept(ctx: &FExitContext) {
    if let Some(cur) = wanted() {
        let ret: i64 = ctx.arg(RET);
        calls::accepted(cur, Regs::Btf(ctx.arg(0)).arg(0) as u32, ret, Backend::Fentry);
    }
}

#[fexit(function = "__x64_sys_accept")]
pub fn fexit_sys_accept(ctx: FExitContext) -> i32 {
    fexit_accept(&ctx);
    0
}

#[fexit(function = "__x64_sys_accept4")]
pub fn fexit_sys_accept4(ctx: FExitContext) -> i32 {
    fexit_accept(&ctx);
    0
}

#[fexit(function = "__x64_sys_socketpair")]
pub fn fexit_sys_socketpair(ctx: FExitContext) -> i32 {
    if let Some(cur) = wanted() {
        let regs = Regs::Btf(ctx.arg(0));
        let ret: i64 = ctx.arg(RET);
        calls::socketpair_made(&ctx, cur, regs.arg(0), regs.arg(3), ret, Backend::Fentry);
    }
    0
}

#[fexit(function = "__x64_sys_listen")]
pub fn fexit_sys_listen(ctx: FExitContext) -> i32 {
    if let Some(cur) = wanted() {
        let ret: i64 = ctx.arg(RET);
        calls::listened(&ctx, cur, Regs::Btf(ctx.arg(0)).arg(0) as u32, ret, Backend::Fentry);
    }
    0
}

#[inline(always)]
fn dup_entry(regs: Regs) {
    if let Some(cur) = wanted() {
        calls::dup_over(cur, regs.arg(0) as u32, regs.arg(1) as u32);
    }
}

#[fentry(function = "__x64_sys_dup2")]
pub fn fentry_sys_dup2(ctx: FEntryContext) -> i32 {
    dup_entry(Regs::Btf(ctx.arg(0)));
    0
}

#[fentry(function = "__x64_sys_dup3")]
pub fn fentry_sys_dup3(ctx: FEntryContext) -> i32 {
    dup_entry(Regs::Btf(ctx.arg(0)));
    0
}

/// sendmsg(fd, msg, flags) and recvmsg(fd, msg, flags): descriptors
/// passed over SCM_RIGHTS (`passfd`), at exit, under fentry (the kprobe
/// strategy's are below: a kretprobe would hold an instance for every
/// blocked recvmsg). Checked on Debian 6.1 and 6.12
/// cloud kernels in QEMU; Debian 5.10's BTF leaves `struct pt_regs`
/// incomplete, and there the tracepoints are used.
#[inline(always)]
fn fexit_passfd(ctx: &FExitContext, kind: EventKind) {
    let regs = Regs::Btf(ctx.arg(0));
    if !passfd::has_control(regs.arg(1)) {
        return;
    }
    if let Some(cur) = wanted() {
        let ret: i64 = ctx.arg(RET);
        passfd::passed(cur, kind, [regs.arg(0), regs.arg(1), regs.arg(2)], ret, Backend::Fentry);
    }
}

#[fexit(function = "__x64_sys_sendmsg")]
pub fn fexit_sys_sendmsg(ctx: FExitContext) -> i32 {
    fexit_passfd(&ctx, EventKind::FdSent);
    0
}

#[fexit(function = "__x64_sys_recvmsg")]
pub fn fexit_sys_recvmsg(ctx: FExitContext) -> i32 {
    fexit_passfd(&ctx, EventKind::FdReceived);
    0
}

#[fentry(function = "filp_close")]
pub fn fentry_filp_close(ctx: FEntryContext) -> i32 {
    if let Some(cur) = wanted() {
        calls::file_closing(cur, ctx.arg(0), Backend::Fentry);
    }
    0
}

// --- kprobes: the saved registers are an untyped address, read with
// probe reads.

#[inline(always)]
fn probe_regs(ctx: &ProbeContext) -> Regs {
    Regs::Raw(ctx.arg::<u64>(0).unwrap_or(0))
}

#[kprobe(function = "__x64_sys_close")]
pub fn kprobe_sys_close(ctx: ProbeContext) -> u32 {
    if let Some(cur) = wanted() {
        calls::closing(cur, probe_regs(&ctx).arg(0) as u32, Backend::Kprobe);
    }
    0
}

#[kprobe(function = "__x64_sys_dup2")]
pub fn kprobe_sys_dup2(ctx: ProbeContext) -> u32 {
    dup_entry(probe_regs(&ctx));
    0
}

#[kprobe(function = "__x64_sys_dup3")]
pub fn kprobe_sys_dup3(ctx: ProbeContext) -> u32 {
    dup_entry(probe_regs(&ctx));
    0
}

#[kprobe(function = "filp_close")]
pub fn kprobe_filp_close(ctx: ProbeContext) -> u32 {
    if let Some(cur) = wanted()
        && let Some(file) = ctx.arg::<u64>(0)
    {
        calls::file_closing(cur, file, Backend::Kprobe);
    }
    0
}

/// The saved registers of a socketpair() or listen() in progress, for its
/// return probe. Both return without blocking, so a kretprobe instance is
/// held only briefly.
#[map]
static IN_SYSCALL: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn stash_regs(ctx: &ProbeContext) {
    if wanted().is_some()
        && let Some(regs) = ctx.arg::<u64>(0)
    {
        let _ = IN_SYSCALL.insert(&bpf_get_current_pid_tgid(), &regs, 0);
    }
}

#[inline(always)]
fn stashed_regs() -> Option<Regs> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the reference into the map's element is held only for the
    // copy. LRU elements are preallocated, so the memory stays the map's
    // while the program runs even if another CPU's insert evicts and
    // reuses it meanwhile; then the copy may be another address, still a
    // valid u64, which Regs::Raw reads only with probe reads. Only this
    // thread's programs insert or remove this key.
    let regs = unsafe { IN_SYSCALL.get(&key) }.copied()?;
    let _ = IN_SYSCALL.remove(&key);
    Some(Regs::Raw(regs))
}

#[kprobe(function = "__x64_sys_socketpair")]
pub fn kprobe_sys_socketpair(ctx: ProbeContext) -> u32 {
    stash_regs(&ctx);
    0
}

#[kretprobe(function = "__x64_sys_socketpair")]
pub fn kretprobe_sys_socketpair(ctx: RetProbeContext) -> u32 {
    if let Some(regs) = stashed_regs() {
        let ret: i64 = ctx.ret();
        calls::socketpair_made(&ctx, Current::get(), regs.arg(0), regs.arg(3), ret, Backend::Kprobe);
    }
    0
}

#[kprobe(function = "__x64_sys_listen")]
pub fn kprobe_sys_listen(ctx: ProbeContext) -> u32 {
    stash_regs(&ctx);
    0
}

#[kretprobe(function = "__x64_sys_listen")]
pub fn kretprobe_sys_listen(ctx: RetProbeContext) -> u32 {
    if let Some(regs) = stashed_regs() {
        let ret: i64 = ctx.ret();
        calls::listened(&ctx, Current::get(), regs.arg(0) as u32, ret, Backend::Kprobe);
    }
    0
}

/// sendmsg(fd, msg, flags) with a control buffer, under kprobe: the
/// descriptors it sent, read at its return (`passfd`). sendmsg blocks only
/// while the receiver's queue is full, so its kretprobe instance is held
/// briefly; recvmsg, which may block for hours, has no return probe.
#[kprobe(function = "__x64_sys_sendmsg")]
pub fn kprobe_sys_sendmsg(ctx: ProbeContext) -> u32 {
    if passfd::has_control(probe_regs(&ctx).arg(1)) {
        stash_regs(&ctx);
    }
    0
}

#[kretprobe(function = "__x64_sys_sendmsg")]
pub fn kretprobe_sys_sendmsg(ctx: RetProbeContext) -> u32 {
    if let Some(regs) = stashed_regs() {
        let ret: i64 = ctx.ret();
        passfd::passed(
            Current::get(),
            EventKind::FdSent,
            [regs.arg(0), regs.arg(1), regs.arg(2)],
            ret,
            Backend::Kprobe,
        );
    }
    0
}

/// Each thread's recvmsg() in progress that may receive descriptors: its
/// saved registers and how many it installed so far. Without a return
/// probe nothing removes an entry: `fd_install` takes it only while the
/// thread's current syscall is still recvmsg, and drops it otherwise.
#[map]
static RECEIVING: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

/// x86_64's recvmsg (arch/x86/entry/syscalls/syscall_64.tbl), read from
/// the saved registers' `orig_ax`.
const NR_RECVMSG: u64 = 47;
/// x86_64's accept and accept4, as `NR_RECVMSG`.
const NR_ACCEPT: u64 = 43;
const NR_ACCEPT4: u64 = 288;

#[kprobe(function = "__x64_sys_recvmsg")]
pub fn kprobe_sys_recvmsg(ctx: ProbeContext) -> u32 {
    let regs = probe_regs(&ctx);
    if regs.arg(2) & passfd::MSG_PEEK == 0 && passfd::has_control(regs.arg(1)) && wanted().is_some() {
        let _ = RECEIVING.insert(&bpf_get_current_pid_tgid(), &[ctx.arg::<u64>(0).unwrap_or(0), 0], 0);
    }
    0
}

/// A descriptor received over SCM_RIGHTS: `fd_install` in the thread's
/// recvmsg (`receive_fd`, fs/file.c), after the fd was written to the
/// caller's control buffer.
#[inline(always)]
fn installed_by_recvmsg(key: u64, fd: u32, file: u64) -> bool {
    // SAFETY: the reference into the map's element is held only for the
    // copy; elements are preallocated integers, as in `stashed_regs`.
    let Some([regs, n]) = (unsafe { RECEIVING.get(&key) }).copied() else { return false };
    let nr = kernel::read::<u64>(regs + off!(pt_regs_syscall_nr)).unwrap_or(u64::MAX);
    if nr != NR_RECVMSG {
        let _ = RECEIVING.remove(&key);
        return false;
    }
    let _ = RECEIVING.insert(&key, &[regs, n + 1], 0);
    passfd::installed(Current::get(), Regs::Raw(regs).arg(0) as u32, (fd as i32, file), n as u32);
    true
}

/// The listening fd of each thread's accept() in progress. Nothing removes
/// the note of an accept that failed (no return probe): the next one of the
/// thread replaces it, and `installed_by_accept` checks the listener.
#[map]
static ACCEPTING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn accept_entry(ctx: &ProbeContext) {
    if wanted().is_some() {
        let fd = probe_regs(ctx).arg(0) as u32;
        let _ = ACCEPTING.insert(&bpf_get_current_pid_tgid(), &fd, 0);
    }
}

#[kprobe(function = "__x64_sys_accept")]
pub fn kprobe_sys_accept(ctx: ProbeContext) -> u32 {
    accept_entry(&ctx);
    0
}

#[kprobe(function = "__x64_sys_accept4")]
pub fn kprobe_sys_accept4(ctx: ProbeContext) -> u32 {
    accept_entry(&ctx);
    0
}

/// `fd_install(unsigned int fd, struct file *file)`: in a thread that is
/// in recvmsg(), a descriptor received; in accept(), the accepted socket
/// getting its fd. The recvmsg first, checked by the syscall running, so
/// that a note left by an accept that failed cannot take a received
/// socket for an accepted one.
///
/// Every open(), pipe() and socket() of the system installs an fd, so the
/// syscall is tested first, where the kernel hands us the caller's saved
/// registers (5.15+): two helpers and a load instead of two hash lookups.
#[kprobe(function = "fd_install")]
pub fn kprobe_fd_install(ctx: ProbeContext) -> u32 {
    if let Some(regs) = Current::get().user_regs() {
        let nr: u64 = kernel::load(regs + off!(pt_regs_syscall_nr));
        if nr != NR_RECVMSG && nr != NR_ACCEPT && nr != NR_ACCEPT4 {
            return 0;
        }
    }
    let key = bpf_get_current_pid_tgid();
    let (Some(fd), Some(file)) = (ctx.arg::<u32>(0), ctx.arg::<u64>(1)) else { return 0 };
    if installed_by_recvmsg(key, fd, file) {
        return 0;
    }
    // SAFETY: the reference into the map's element is held only for the
    // copy. LRU elements are preallocated, so the memory stays the map's
    // while the program runs even if another CPU's insert evicts and
    // reuses it meanwhile; then the copy may be another fd, still a valid
    // u32, which installed_by_accept checks against the new socket's
    // address. Only this thread's programs insert or remove this key.
    if let Some(listen_fd) = (unsafe { ACCEPTING.get(&key) }).copied()
        && calls::installed_by_accept(Current::get(), listen_fd, fd, file, Backend::Kprobe)
    {
        let _ = ACCEPTING.remove(&key);
    }
    0
}
