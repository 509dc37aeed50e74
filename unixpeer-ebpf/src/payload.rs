//! Payload capture for `unixtrace capture`: the bytes each write, writev,
//! sendto, sendmsg and sendmmsg on a UNIX socket sent, up to a snap
//! length, with who sent them on which socket, into the `PAYLOAD` ring
//! buffer. Attached only by the capture subcommand.
//!
//! From 6.3 the hook is `sock:sock_send_length` (tp_btf), which
//! `sock_sendmsg_nosec` fires once each message was sent, with its socket
//! and length: it runs for socket sends only, where a syscall tracepoint
//! puts every syscall of every process on the slow path. Which call sent,
//! and its arguments, come from the caller's saved registers
//! (`orig_ax`, then the arguments; `payload_send_length`). Checked on:
//! 6.18.44 (host) and Debian's 6.12.118 cloud kernel (QEMU).
//!
//! Before 6.3, hooks are the syscalls' exits, the only point where the count sent is
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
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use unixpeer_common::{
    Backend, EventKind, PAYLOAD_NAME_OWN, PAYLOAD_NAME_PEER, PAYLOAD_SNAP_MAX, PayloadFilter, PayloadHeader,
    PayloadRecords, UNIX_PATH_MAX, payload_call as call, payload_counter,
};

use crate::{
    calls::Regs,
    emit::{actor_wanted, begin, copy_sockaddr, name_from_kernel},
    kernel::{self, Current, off},
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

/// A name buffer that sits at a multiple of 8 bytes in its 8-aligned
/// struct (checked below), so that the filter compares it a word at a time:
/// BPF has no unaligned loads, and a byte at a time is four times the work
/// for every message on a socket the filter does not want.
struct AlignedName<'a>(&'a [u8; UNIX_PATH_MAX]);

const _: () = assert!(core::mem::offset_of!(PayloadHeader, path).is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<PayloadHeader>().is_multiple_of(8));
const _: () = assert!(core::mem::offset_of!(unixpeer_common::UnixEvent, path).is_multiple_of(8));
const _: () = assert!(core::mem::align_of::<unixpeer_common::UnixEvent>().is_multiple_of(8));

impl<'a> AlignedName<'a> {
    fn of_header(h: &'a PayloadHeader) -> Self {
        AlignedName(&h.path)
    }

    fn of_event(e: &'a unixpeer_common::UnixEvent) -> Self {
        AlignedName(&e.path)
    }
}

/// Whether a name passes the prefix filter.
#[inline(always)]
fn path_wanted(name: AlignedName<'_>, len: u32) -> bool {
    let path = name.0;
    let want = rodata!(PAYLOAD_FILTER.prefix_len);
    if want == 0 {
        return true;
    }
    if len < want {
        return false;
    }
    let prefix = &raw const PAYLOAD_FILTER.prefix;
    const WORDS: usize = UNIX_PATH_MAX / 8;
    for w in 0..WORDS {
        let at = w * 8;
        if at as u32 >= want {
            return true;
        }
        // SAFETY: `at + 8 <= UNIX_PATH_MAX`: both reads stay inside their
        // arrays, the first 8-aligned (`AlignedName`); the prefix sits in
        // frozen .rodata, as `rodata!` says, and is read as bytes.
        let (a, b) = unsafe {
            (
                core::ptr::read(path.as_ptr().add(at).cast::<u64>()),
                core::ptr::read_volatile(prefix.cast::<u8>().add(at).cast::<[u8; 8]>()),
            )
        };
        let left = want - at as u32;
        let mask = if left >= 8 { u64::MAX } else { (1u64 << (left * 8)) - 1 };
        if (a ^ u64::from_ne_bytes(b)) & mask != 0 {
            return false;
        }
    }
    // The bytes past the whole words.
    for (i, &byte) in path.iter().enumerate().skip(WORDS * 8) {
        if i as u32 >= want {
            break;
        }
        if byte != rodata!(PAYLOAD_FILTER.prefix[i]) {
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
    if !socket_wanted(&sock, kernel::peer_of(sock.sk)) {
        return None;
    }
    describe_socket(cur, fd, sock, which, to)
}

/// Whether `stage`'s path buffer, read from the kernel name at
/// `sockaddr` (`len` bytes, a `struct sockaddr_un`), starts with the
/// filter's prefix.
#[inline(always)]
fn kernel_name_wanted(stage: &mut Staging, (sockaddr, len): (u64, u32)) -> bool {
    let want = rodata!(PAYLOAD_FILTER.prefix_len);
    // sun_path follows the 2-byte family.
    let have = len.saturating_sub(2);
    if have < want {
        return false;
    }
    let n = want & 0x7f;
    if n as usize > UNIX_PATH_MAX {
        return false;
    }
    let dst = stage.header.path.as_mut_ptr().cast();
    // SAFETY: n <= UNIX_PATH_MAX bytes into the header's path buffer, as
    // the verifier checks too; the helper fails instead of faulting on an
    // unreadable kernel address, and zeroes the buffer then.
    let rc = unsafe { aya_ebpf::helpers::generated::bpf_probe_read_kernel(dst, n, (sockaddr + 2) as *const _) };
    rc == 0 && path_wanted(AlignedName::of_header(&stage.header), want)
}

/// `kernel_name_wanted` without the copy, where the kernel has
/// `bpf_rdonly_cast` (6.2+): the name's words compared where they lie, each
/// load at an offset the verifier sees as a constant (hence the macro, not
/// a loop that LLVM may keep rolled). On the send path of every socket
/// that the filter leaves out, this saves the staging lookup and a
/// bpf_probe_read_kernel call. The last words first: names in one
/// directory differ at their end, so a socket left out costs one or two
/// loads, not a walk along the shared directory.
#[inline(always)]
fn kernel_name_wanted_in_place(addr: u64, len: u32) -> bool {
    let want = rodata!(PAYLOAD_FILTER.prefix_len);
    // sun_path follows the 2-byte family.
    if len.saturating_sub(2) < want {
        return false;
    }
    let prefix = &raw const PAYLOAD_FILTER.prefix;
    const _: () = assert!(UNIX_PATH_MAX == 108);
    // Bytes 104..108, the last of sun_path.
    if want > 104 {
        let mask = if want >= 108 { u32::MAX } else { (1u32 << ((want - 104) * 8)) - 1 };
        // SAFETY: bytes 104..108 of the 108-byte prefix array, which sits
        // in frozen .rodata, as `rodata!` says; read as bytes.
        let b = unsafe { core::ptr::read_volatile(prefix.cast::<u8>().add(104).cast::<[u8; 4]>()) };
        if (kernel::sun_path_u32(addr, 104) ^ u32::from_ne_bytes(b)) & mask != 0 {
            return false;
        }
    }
    macro_rules! words {
        ($($w:literal)+) => {$(
            let at: u32 = $w * 8;
            if at < want {
                let left = want - at;
                let mask = if left >= 8 { u64::MAX } else { (1u64 << (left * 8)) - 1 };
                // SAFETY: bytes at..at + 8 <= 104 of the prefix array, as above.
                let b = unsafe { core::ptr::read_volatile(prefix.cast::<u8>().add(at as usize).cast::<[u8; 8]>()) };
                if (kernel::sun_path_u64(addr, u64::from(at)) ^ u64::from_ne_bytes(b)) & mask != 0 {
                    return false;
                }
            }
        )+};
    }
    words!(12 11 10 9 8 7 6 5 4 3 2 1 0);
    true
}

/// The filters that the socket alone decides, before anything is read for
/// an event: its type, and for a connected one the name it goes by (its
/// own if bound, else its peer's, as `name_from_kernel` picks). An
/// unconnected one's name is the destination in the call: decided later.
#[inline(always)]
fn socket_wanted(sock: &kernel::UnixSocket, peer_sk: u64) -> bool {
    let types = rodata!(PAYLOAD_FILTER.sock_types);
    if types != 0 && types & (1 << (sock.sock_type & 31)) == 0 {
        return false;
    }
    if rodata!(PAYLOAD_FILTER.prefix_len) == 0 || peer_sk == 0 {
        return true;
    }
    let Some((addr, len)) = kernel::bound_address(sock.sk).or_else(|| kernel::bound_address(peer_sk)) else {
        return false;
    };
    if kernel::cast_loads() {
        return kernel_name_wanted_in_place(addr, len);
    }
    let named = (addr + off!(unix_address_name), len);
    // SAFETY: the helper takes no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(stage) = PAYLOAD_STAGING.get_ptr_mut(cpu) else { return false };
    // SAFETY: this CPU's entry, as in `describe_socket`; only its path
    // buffer is used, which `describe_socket` fills again.
    kernel_name_wanted(unsafe { &mut *stage }, named)
}

/// `describe` for a socket already found, that `socket_wanted`.
#[inline(always)]
fn describe_socket(
    cur: Current,
    fd: u64,
    sock: kernel::UnixSocket,
    which: u32,
    to: To,
) -> Option<&'static mut Staging> {
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
    if !path_wanted(AlignedName::of_event(e), e.path_len) {
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

// --- 6.3+: tp_btf sock_send_length(struct sock *sk, int ret, int flags),
// traced in sock_sendmsg_nosec (net/socket.c) once per message sent.

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl), read
/// from the caller's `orig_ax`: which call sent decides where its bytes are.
const NR_WRITE: u64 = 1;
const NR_WRITEV: u64 = 20;
const NR_SENDTO: u64 = 44;
const NR_SENDMSG: u64 = 46;
const NR_SENDMMSG: u64 = 307;

/// sendmmsg sends its messages one by one, each firing the tracepoint:
/// the next index, per thread, with the vector it belongs to. A call that
/// sent them all leaves an index past its length, so the next call on the
/// same vector starts again at 0. (A call that failed part way and is
/// called again on the same vector would be taken for its continuation.)
#[map]
static PAYLOAD_MMSG_NEXT: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(8192, 0);

#[btf_tracepoint(function = "sock_send_length")]
pub fn payload_send_length(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    // Every socket send of the system comes here: the family first.
    if ret <= 0 || !kernel::is_unix(sk) {
        return 0;
    }
    let cur = Current::get();
    if !actor_wanted(cur) {
        return 0;
    }
    // The socket is the tracepoint's: no fd table walk to find it, and
    // the filters it decides alone come before anything else is read.
    let sock = kernel::UnixSocket::of_socket(kernel::socket_of_sk(sk), sk);
    if !socket_wanted(&sock, kernel::peer_of(sk)) {
        return 0;
    }
    // 6.3+ always has bpf_task_pt_regs (5.15).
    let Some(regs) = cur.user_regs() else { return 0 };
    let nr: u64 = kernel::load(regs + off!(pt_regs_syscall_nr));
    let r = Regs::Btf(regs);
    // Which call, where the message went, and where its bytes are: one
    // buffer (`iovlen` 0) or an iovec array. One copy path for all, so
    // that the verifier walks its loop once.
    let (which, to, buf, iovlen) = match nr {
        NR_WRITE => (call::WRITE, To::Peer, r.arg(1), 0),
        NR_SENDTO => (call::SENDTO, To::Sockaddr(r.arg(4), r.arg(5)), r.arg(1), 0),
        NR_WRITEV => (call::WRITEV, To::Peer, r.arg(1), r.arg(2)),
        NR_SENDMSG | NR_SENDMMSG => {
            let (which, msg) = if nr == NR_SENDMSG { (call::SENDMSG, r.arg(1)) } else { (call::SENDMMSG, mmsg_hdr(r)) };
            let Some([iov, iovlen]) = msghdr_iov(msg) else { return 0 };
            (which, To::Msghdr(msg), iov, iovlen)
        }
        // io_uring, splice, sendfile: not these calls' arguments.
        _ => return 0,
    };
    let Some(stage) = describe_socket(cur, r.arg(0), sock, which, to) else { return 0 };
    let len = ret as u64;
    let snap = len.min(u64::from(snaplen())) as u32;
    let cap = if iovlen == 0 { copy(stage, 0, buf, snap) } else { copy_iov::<MAX_IOV>(stage, buf, iovlen, snap) };
    submit(stage, len, cap);
    0
}

/// The `struct mmsghdr` (UAPI, 64 bytes) of the message sendmmsg is
/// sending now: the thread's next index into the vector it passed.
#[inline(always)]
fn mmsg_hdr(r: Regs) -> u64 {
    let (mmsg, vlen) = (r.arg(1), r.arg(2));
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the element is copied out at once; elements are preallocated
    // integers, valid whatever a concurrent eviction did.
    let i = match unsafe { PAYLOAD_MMSG_NEXT.get(&key) }.copied() {
        Some([v, next]) if v == mmsg && next < vlen => next,
        _ => 0,
    };
    let _ = PAYLOAD_MMSG_NEXT.insert(&key, &[mmsg, i + 1], 0);
    mmsg + i * 64
}
