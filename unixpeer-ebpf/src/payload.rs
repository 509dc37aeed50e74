//! Payload capture for `unixtrace capture`: the bytes each write, writev,
//! sendto, sendmsg and sendmmsg on a UNIX socket sent, up to a snap
//! length, with who sent them on which socket, into the `PAYLOAD` ring
//! buffer. Attached only by the capture subcommand.
//!
//! Hooks are the syscalls' exits, the only point where the count sent is
//! known: the tracepoints `syscalls:sys_exit_{write,writev,sendto,sendmsg,
//! sendmmsg}` (kernel/trace/trace_syscalls.c). From 5.15 the exit reads the
//! caller's arguments from its saved registers (`bpf_task_pt_regs`);
//! before, `syscalls:sys_enter_*` of the same calls leave them per thread
//! in `PAYLOAD_ARGS`. The user memory is read at exit, after the call:
//! a thread of the same process that rewrote the buffer in between would
//! show its bytes instead, as with every tracer that copies at exit.
//! Record layouts come from tracefs `format` files (`PAYLOAD_RECORDS`);
//! `struct iovec`, `struct user_msghdr` and `struct mmsghdr` are UAPI.
//! Cannot see: io_uring sends, splice/sendfile into a socket, and
//! 32-bit (compat) syscalls, which the syscalls:* tracepoints skip. An
//! unconnected datagram is named by the receiver's address: sendto's
//! fifth argument (r8 from 5.15, carried from entry before), or the
//! `msg_name` of sendmsg's and sendmmsg's headers.
//! Checked on: 6.18.44 (host) and Debian's 6.1.0-57 cloud kernel (QEMU), exits
//! reading registers; Debian's 5.10.0-46 cloud kernel (QEMU), entries carrying
//! the arguments.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, generated::bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use unixpeer_common::{
    Backend, EventKind, PAYLOAD_NAME_OWN, PAYLOAD_NAME_PEER, PAYLOAD_SNAP_MAX, PayloadFilter, PayloadHeader,
    PayloadRecords, UNIX_PATH_MAX, payload_call as call, payload_counter,
};

use crate::{
    calls::Regs,
    emit::{actor_wanted, begin, copy_sockaddr, name_from_kernel},
    kernel::{self, Current},
};

// SAFETY: unmangled so that the loader can find it by name
// (override_global); no other symbol in the object has this name.
#[unsafe(no_mangle)]
static PAYLOAD_FILTER: PayloadFilter = PayloadFilter::zeroed();

// SAFETY: as above.
#[unsafe(no_mangle)]
static PAYLOAD_RECORDS: PayloadRecords = PayloadRecords::zeroed();

/// Reads a field of a frozen .rodata static.
macro_rules! rodata {
    ($($path:tt)+) => {{
        // SAFETY: a field of a static, so valid and aligned. It sits in
        // .rodata, which the loader writes before loading the programs and
        // then freezes: nothing writes it while a program runs. Volatile,
        // so that the zero initialiser is not folded into the code.
        unsafe { core::ptr::read_volatile(&raw const $($path)+) }
    }};
}

/// Offsets and lengths into the staging buffer are masked with this (in
/// `masked`) for the verifier: both stay below 64 KiB, so their sum stays
/// inside `data`.
const _: () = assert!(PAYLOAD_SNAP_MAX == 0xffff);

/// Most iovec entries copied of one writev or sendmsg; later ones are
/// counted in the message's length but not copied (so it shows truncated).
const MAX_IOV: u64 = 16;
/// Most messages of one sendmmsg recorded, and iovec entries copied of
/// each: nested loops multiply what the verifier walks, and 8 by 16 went
/// past its million instructions on 6.1. Messages past these are counted
/// lost, never dropped silently.
const MAX_MMSG: u64 = 4;
const MMSG_IOV: u64 = 4;

/// A record being built: the header, then room for a copy that starts
/// anywhere below 64 KiB and is up to 64 KiB long.
#[repr(C)]
pub struct Staging {
    header: PayloadHeader,
    data: [u8; 2 << 16],
}

/// Too large for a per-CPU map (values are limited to 32 KiB): one entry
/// per CPU, which userspace sizes to the possible CPUs, indexed by the
/// CPU the program runs on (tracepoint programs cannot migrate).
#[map]
static PAYLOAD_STAGING: Array<Staging> = Array::with_max_entries(1, 0);

/// One page as built, so that the other modes, which load the same object
/// but never read it, pay nothing for it; `capture` sets its size.
#[map]
static PAYLOAD: RingBuf = RingBuf::with_byte_size(4096, 0);

#[map]
static PAYLOAD_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(payload_counter::MAX, 0);

/// (fd, buffer, count, address, address length) from entry to exit, per
/// thread, before 5.15; the last two only for sendto.
#[map]
static PAYLOAD_ARGS: LruHashMap<u64, [u64; 5]> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn count(index: u32) {
    count_n(index, 1);
}

#[inline(always)]
fn count_n(index: u32, n: u64) {
    if let Some(c) = PAYLOAD_COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's copy of the slot, a valid, aligned u64 the
        // map keeps while the program holds it; a program nested on this
        // CPU can at worst make the two increments lose one count.
        unsafe { *c += n };
    }
}

/// A u64 of the tracepoint record at the offset tracefs gave for it.
#[inline(always)]
fn record_field(ctx: &TracePointContext, at: u64) -> u64 {
    // SAFETY: read_at is bpf_probe_read_kernel at ctx + `at`: a wrong
    // offset reads other kernel memory or fails, never faults, and any 8
    // bytes are a valid u64.
    unsafe { ctx.read_at::<u64>(at as usize) }.unwrap_or(u64::MAX)
}

#[inline(always)]
pub(crate) fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: `addr` is whatever the caller passed to the syscall: the
    // helper returns an error where it is not readable instead of
    // faulting, aya's wrapper takes the copy only after a success, and
    // every caller reads integers, valid for any bytes.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr as *const T) }.ok()
}

#[inline(always)]
fn enter<const N: usize>(ctx: &TracePointContext, fields: [u64; N]) -> u32 {
    if actor_wanted(Current::get()) {
        let mut args = [0u64; 5];
        for (a, at) in args.iter_mut().zip(fields) {
            *a = record_field(ctx, at);
        }
        let _ = PAYLOAD_ARGS.insert(&bpf_get_current_pid_tgid(), &args, 0);
    }
    0
}

/// The returning call's (fd, buffer, count), sendto's (address, address
/// length) after them (zeros for the other calls), and its return value.
#[inline(always)]
fn exit(ctx: &TracePointContext, cur: Current) -> Option<([u64; 5], i64)> {
    let args = match cur.user_regs() {
        Some(regs) if actor_wanted(cur) => {
            let r = Regs::Btf(regs);
            [r.arg(0), r.arg(1), r.arg(2), r.arg(4), r.arg(5)]
        }
        Some(_) => return None,
        None => {
            let key = bpf_get_current_pid_tgid();
            // SAFETY: the reference into the LRU element is held only for
            // the copy; elements are preallocated, so the memory stays the
            // map's even if another CPU evicts it meanwhile, and any bytes
            // are a valid [u64; 5], each used only through checked reads.
            let args = unsafe { PAYLOAD_ARGS.get(&key) }.copied()?;
            let _ = PAYLOAD_ARGS.remove(&key);
            args
        }
    };
    Some((args, record_field(ctx, rodata!(PAYLOAD_RECORDS.exit_ret)) as i64))
}

/// Whether a name passes the prefix filter.
#[inline(always)]
fn path_wanted(path: &[u8; UNIX_PATH_MAX], len: u32) -> bool {
    let want = rodata!(PAYLOAD_FILTER.prefix_len);
    if want == 0 {
        return true;
    }
    if len < want {
        return false;
    }
    let prefix = rodata!(PAYLOAD_FILTER.prefix);
    for i in 0..UNIX_PATH_MAX {
        if i as u32 >= want {
            break;
        }
        if path[i] != prefix[i] {
            return false;
        }
    }
    true
}

/// Where the caller said a message goes, read only when the socket has no
/// peer: the `struct user_msghdr` at an address, or a sockaddr and its
/// length (sendto's).
#[derive(Clone, Copy)]
enum To {
    Peer,
    Msghdr(u64),
    Sockaddr(u64, u64),
}

/// The staging entry of this CPU with its header filled for a message on
/// `fd` sent `to`, or `None` when `fd` is no UNIX socket or the filters
/// say no.
#[inline(always)]
fn describe(cur: Current, fd: u64, which: u32, to: To) -> Option<&'static mut Staging> {
    let sock = kernel::unix_socket_of_file(cur.file_of_fd(fd as u32)?)?;
    let types = rodata!(PAYLOAD_FILTER.sock_types);
    if types != 0 && types & (1 << (sock.sock_type & 31)) == 0 {
        return None;
    }
    // `begin` applies the command filter and reads the process's command
    // as the connection events name it; the event itself is not sent.
    let e = begin(cur, EventKind::Connect, Backend::Tracepoint)?;
    e.sk = sock.sk;
    e.peer_sk = kernel::peer_of(sock.sk);
    // An unconnected datagram names its receiver in the message: that
    // name, not the sender's own, says where it went.
    let mut to_named = false;
    if e.peer_sk == 0 {
        let (name, len) = match to {
            To::Peer => (0, 0),
            // struct user_msghdr (UAPI): msg_name at 0, msg_namelen at 8.
            To::Msghdr(msg) => (user::<u64>(msg).unwrap_or(0), user::<u32>(msg + 8).unwrap_or(0)),
            // sendto's addr_len is an int.
            To::Sockaddr(name, len) => (name, len as u32),
        };
        if name != 0 {
            copy_sockaddr(e, name, len, true);
            to_named = e.path_len != 0;
        }
    }
    if !to_named {
        name_from_kernel(e);
    }
    if !path_wanted(&e.path, e.path_len) {
        return None;
    }
    // SAFETY: the helper takes no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let stage = PAYLOAD_STAGING.get_ptr_mut(cpu)?;
    // SAFETY: a successful lookup returns this CPU's entry, valid and
    // aligned, which the kernel frees only with the map. Only programs on
    // this CPU use it, one at a time but for one nested in another, which
    // can mix two records' integers but not reach outside the entry.
    let stage = unsafe { &mut *stage };
    let h = &mut stage.header;
    // SAFETY: the helper takes no arguments and returns a plain u64.
    h.ts_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    h.sk = e.sk;
    h.peer_sk = e.peer_sk;
    h.inode = kernel::inode_of_socket(sock.socket);
    h.peer_inode = if e.peer_sk == 0 { 0 } else { kernel::inode_of_socket(kernel::socket_of_sk(e.peer_sk)) };
    h.pid = e.pid;
    h.tid = e.tid;
    h.fd = fd as i32;
    h.sock_type = sock.sock_type;
    h.call = which;
    h.name_flags = if kernel::unix_addr(e.sk) != 0 { PAYLOAD_NAME_OWN } else { 0 }
        | if to_named || (e.peer_sk != 0 && kernel::unix_addr(e.peer_sk) != 0) { PAYLOAD_NAME_PEER } else { 0 };
    h.path_len = e.path_len;
    h._pad = 0;
    h.comm = e.comm;
    h.path = e.path;
    h._tail = 0;
    Some(stage)
}

/// `v & MASK`, done where LLVM cannot drop it: it knows offsets stay
/// below 64 KiB from the loops' conditions and would remove a plain mask,
/// but the verifier tracks the sum of a loop's copies and needs to see it.
#[inline(always)]
fn masked(v: u32) -> u32 {
    let mut v = u64::from(v);
    // SAFETY: one ALU instruction on a register the asm owns; no memory,
    // no stack, no flags.
    unsafe { core::arch::asm!("{0} &= 65535", inout(reg) v, options(pure, nomem, nostack)) };
    v as u32
}

/// Copies up to `want` bytes at user address `src` to `data[at..]`;
/// returns how many it copied.
#[inline(always)]
fn copy(stage: &mut Staging, at: u32, src: u64, want: u32) -> u32 {
    let at = masked(at);
    let n = masked(want);
    // SAFETY: `at` and `n` are below 64 KiB, so the n bytes from `at` lie
    // inside `data` (128 KiB), as the masks show the verifier. `src` is
    // the caller's: the helper returns an error where it is not readable
    // instead of faulting (and zeroes the destination).
    let rc = unsafe { bpf_probe_read_user(stage.data.as_mut_ptr().add(at as usize).cast(), n, src as *const _) };
    if rc != 0 {
        count(payload_counter::READ_ERRORS);
        return 0;
    }
    n
}

/// Copies from an iovec array, at most `N` entries; returns the bytes
/// copied, at most `snap`.
#[inline(always)]
fn copy_iov<const N: u64>(stage: &mut Staging, iov: u64, iovlen: u64, snap: u32) -> u32 {
    let mut done = 0u32;
    for i in 0..N {
        if i >= iovlen || done >= snap {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; } (UAPI).
        let Some([base, len]) = user::<[u64; 2]>(iov + i * 16) else { break };
        let want = len.min(u64::from(snap - done)) as u32;
        let got = copy(stage, done, base, want);
        if got < want {
            break;
        }
        done += got;
    }
    done
}

#[inline(always)]
fn snaplen() -> u32 {
    rodata!(PAYLOAD_FILTER.snaplen).min(PAYLOAD_SNAP_MAX)
}

#[inline(always)]
fn submit(stage: &mut Staging, len: u64, cap: u32) {
    stage.header.len = len.min(u64::from(u32::MAX)) as u32;
    let cap = masked(cap);
    stage.header.cap_len = cap;
    let bytes = core::mem::size_of::<PayloadHeader>() + cap as usize;
    // SAFETY: the header and the first `cap` (< 64 KiB) bytes of `data`
    // that follow it are inside the entry, which is plain bytes.
    let record = unsafe { core::slice::from_raw_parts((stage as *const Staging).cast::<u8>(), bytes) };
    if PAYLOAD.output(record, 0).is_err() {
        count(payload_counter::LOST);
    }
}

/// write/sendto(fd, buf, count[, flags, addr, addr_len]) sent `ret` bytes
/// from one buffer.
#[inline(always)]
fn sent_buffer(ctx: &TracePointContext, which: u32) {
    let cur = Current::get();
    let Some(([fd, buf, _, addr, addr_len], ret)) = exit(ctx, cur) else { return };
    if ret <= 0 {
        return;
    }
    let to = if which == call::SENDTO { To::Sockaddr(addr, addr_len) } else { To::Peer };
    let Some(stage) = describe(cur, fd, which, to) else { return };
    let want = (ret as u64).min(u64::from(snaplen())) as u32;
    let cap = copy(stage, 0, buf, want);
    submit(stage, ret as u64, cap);
}

/// sendmsg's `struct user_msghdr` (UAPI): msg_iov at 16, msg_iovlen at 24.
#[inline(always)]
fn msghdr_iov(msg: u64) -> Option<[u64; 2]> {
    user::<[u64; 2]>(msg + 16)
}

#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn payload_exit_write(ctx: TracePointContext) -> u32 {
    sent_buffer(&ctx, call::WRITE);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn payload_exit_sendto(ctx: TracePointContext) -> u32 {
    sent_buffer(&ctx, call::SENDTO);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_writev")]
pub fn payload_exit_writev(ctx: TracePointContext) -> u32 {
    let cur = Current::get();
    let Some(([fd, iov, iovlen, ..], ret)) = exit(&ctx, cur) else { return 0 };
    if ret <= 0 {
        return 0;
    }
    let Some(stage) = describe(cur, fd, call::WRITEV, To::Peer) else { return 0 };
    let snap = (ret as u64).min(u64::from(snaplen())) as u32;
    let cap = copy_iov::<MAX_IOV>(stage, iov, iovlen, snap);
    submit(stage, ret as u64, cap);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn payload_exit_sendmsg(ctx: TracePointContext) -> u32 {
    let cur = Current::get();
    let Some(([fd, msg, ..], ret)) = exit(&ctx, cur) else { return 0 };
    if ret <= 0 {
        return 0;
    }
    let Some(stage) = describe(cur, fd, call::SENDMSG, To::Msghdr(msg)) else { return 0 };
    let snap = (ret as u64).min(u64::from(snaplen())) as u32;
    let cap = match msghdr_iov(msg) {
        Some([iov, iovlen]) => copy_iov::<MAX_IOV>(stage, iov, iovlen, snap),
        None => 0,
    };
    submit(stage, ret as u64, cap);
    0
}

/// sendmmsg returns how many messages it sent; each `struct mmsghdr`
/// (UAPI: a user_msghdr, then `msg_len` at 56, 64 bytes in all) says how
/// long its message was.
#[tracepoint(category = "syscalls", name = "sys_exit_sendmmsg")]
pub fn payload_exit_sendmmsg(ctx: TracePointContext) -> u32 {
    let cur = Current::get();
    let Some(([fd, mmsg, ..], ret)) = exit(&ctx, cur) else { return 0 };
    if ret <= 0 {
        return 0;
    }
    // The first message's address names them all (each header has its
    // own, but one record names one receiver).
    let Some(stage) = describe(cur, fd, call::SENDMMSG, To::Msghdr(mmsg)) else { return 0 };
    for i in 0..MAX_MMSG {
        if i >= ret as u64 {
            break;
        }
        let hdr = mmsg + i * 64;
        let Some(len) = user::<u32>(hdr + 56) else { break };
        let snap = len.min(snaplen());
        let cap = match msghdr_iov(hdr) {
            Some([iov, iovlen]) => copy_iov::<MMSG_IOV>(stage, iov, iovlen, snap),
            None => 0,
        };
        submit(stage, u64::from(len), cap);
    }
    if ret as u64 > MAX_MMSG {
        count_n(payload_counter::LOST, ret as u64 - MAX_MMSG);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn payload_enter_write(ctx: TracePointContext) -> u32 {
    enter(&ctx, rodata!(PAYLOAD_RECORDS.write))
}

#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn payload_enter_writev(ctx: TracePointContext) -> u32 {
    enter(&ctx, rodata!(PAYLOAD_RECORDS.writev))
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn payload_enter_sendto(ctx: TracePointContext) -> u32 {
    enter(&ctx, rodata!(PAYLOAD_RECORDS.sendto))
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn payload_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, rodata!(PAYLOAD_RECORDS.sendmsg))
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmmsg")]
pub fn payload_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, rodata!(PAYLOAD_RECORDS.sendmmsg))
}
