//! Bytes and messages per socket, counted here and handed to userspace
//! once, with the socket's `Close`: a busy connection costs a map update per
//! send or receive, never a ring-buffer record.
//!
//! Each socket counts what it sent and what it received, keyed by its
//! inode: a sender's sock always has its socket, and data reaches a server's
//! embryo sock before accept() only as queued data, received (and counted)
//! once it has one. The cheapest hook each kernel has, chosen by userspace:
//! - `sock:sock_send_length` / `sock:sock_recv_length` (tp_btf, 6.3+; on
//!   every socket of the system, so the family is checked first). They fire
//!   in sock_sendmsg_nosec / sock_recvmsg_nosec (net/socket.c), which
//!   write, writev, send*, sendmmsg, read, recv* and io_uring reach.
//!   Checked on: 6.18.44 (host), Debian 6.12.
//! - fexit (fentry strategy) or kprobe + kretprobe on
//!   `unix_{stream,dgram,seqpacket}_{sendmsg,recvmsg}` (net/unix/af_unix.c)
//!   where the tracepoints do not exist. The seqpacket functions call the
//!   dgram ones, which the compiler may inline there (Debian's 6.1 does for
//!   recvmsg): a seqpacket socket is counted in its own functions only, and
//!   the dgram hooks pass it by. Checked on: Debian 5.10.0 and 6.1.0.
//!
//! An unconnected datagram socket's sends are also counted per (sender,
//! receiver) pair, and the pair's first datagram is reported as a
//! `DgramSend` event. The receiver comes from `sock:sk_data_ready` (tp_btf,
//! 6.3+), else fentry or a kprobe on `sock_def_readable` (net/core/sock.c),
//! which the tracepoint sits in. Checked on: 6.18.44 (host), Debian 5.10.0,
//! 6.1.0 and 6.12.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map},
    maps::{Array, LruHashMap},
    programs::{BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use unixpeer_common::{Backend, DgramPair, EventKind, Traffic, UnixEvent};

use crate::{
    emit::{actor_wanted, begin, copy_sockaddr, describe, submit},
    kernel::{self, Current, UnixSocket},
};

/// Sockets that carried data and are still open. LRU: a socket whose
/// release was never seen (the tracepoint strategy's exits) is evicted
/// rather than kept for ever; userspace takes those it infers closed.
#[map]
static TRAFFIC: LruHashMap<u64, Traffic> = LruHashMap::with_max_entries(65536, 0);

/// How many `TRAFFIC` entries this program made, per slot of inodes
/// (`inode % LIVE_SLOTS`), less those a close took: a close whose slot
/// holds 0 skips the hash lookup. Every close in the system asks, and most
/// sockets never carry data (a connection-per-request loop none at all);
/// the lookup's random bucket was a cache miss, about a third of the
/// close program's time. An entry evicted by the LRU, or taken by
/// userspace, leaves its slot counted: a lookup that finds nothing, as
/// before. 64 KiB, so that the slots of recent inodes stay in cache.
#[map]
static LIVE: Array<u32> = Array::with_max_entries(LIVE_SLOTS, 0);

const LIVE_SLOTS: u32 = 16384;

#[inline(always)]
fn live_slot(inode: u64) -> Option<*mut u32> {
    LIVE.get_ptr_mut((inode % u64::from(LIVE_SLOTS)) as u32)
}

/// Adds `delta` (wrapping: `u32::MAX` is -1) to an inode's slot.
#[inline(always)]
fn live_add(inode: u64, delta: u32) {
    if let Some(p) = live_slot(inode) {
        // SAFETY: a successful lookup returns the element, an aligned u32
        // that the map keeps while the program runs; other CPUs update it
        // too, only atomically (BPF_ATOMIC BPF_ADD, 32-bit, result unused).
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// A new slot's value, from .rodata: built on the stack, it would be a
/// call to memset, a byte-at-a-time loop.
static NOTHING_YET: Traffic = Traffic::zeroed();

/// `MSG_PEEK` (include/linux/socket.h): a peek leaves the data queued.
const MSG_PEEK: i64 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Sent,
    Received,
}

#[inline(always)]
fn add(socket: u64, bytes: i64, way: Way) {
    let inode = kernel::inode_of_socket(socket);
    if inode == 0 {
        return;
    }
    if way == Way::Sent {
        sent_to(socket, inode, bytes);
    }
    let slot = match TRAFFIC.get_ptr_mut(&inode) {
        Some(p) => p,
        None => {
            // BPF_NOEXIST: another CPU may have just made it; either way
            // the lookup below finds one slot for both, and only the one
            // whose insert made it counts it live.
            if TRAFFIC.insert(&inode, &NOTHING_YET, 1).is_ok() {
                live_add(inode, 1);
            }
            let Some(p) = TRAFFIC.get_ptr_mut(&inode) else { return };
            p
        }
    };
    // SAFETY: a successful lookup returns the element's value, a valid,
    // aligned Traffic that the map keeps allocated (LRU maps preallocate)
    // while the program runs. Other CPUs add to the same socket's counters
    // at the same time (two threads sending on one socket), hence atomic
    // adds; an eviction racing with this can at worst land the counts on a
    // recycled element's fields, all plain integers.
    let t = unsafe { &*slot };
    let (b, m) = match way {
        Way::Sent => (&t.bytes_sent, &t.msgs_sent),
        Way::Received => (&t.bytes_received, &t.msgs_received),
    };
    // SAFETY: `b` and `m` are aligned u64 fields of that element, valid
    // for atomic access; nothing accesses them non-atomically while
    // programs run (userspace reads them with a syscall that copies). The
    // intrinsic rather than AtomicU64, which the BPF target leaves out (it
    // has no compare-and-swap before v3); with its result unused, it is
    // BPF_ATOMIC BPF_ADD, which every kernel's verifier takes.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(core::ptr::from_ref(b).cast_mut(), bytes as u64);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(core::ptr::from_ref(m).cast_mut(), 1);
    }
}

// --- Datagrams sent by address. The receiver is not among the send's
// arguments: the kernel names it when it wakes it (`sk->sk_data_ready`,
// sock_def_readable, in the sender's context, inside unix_dgram_sendmsg),
// which the hooks below note for the sending thread; the send's own hook
// (after it) then joins the two.

/// `SOCK_DGRAM`, `SOCK_SEQPACKET`.
const SOCK_DGRAM: u32 = 2;
const SOCK_SEQPACKET: u32 = 5;

/// The receiver the current thread's datagram just woke, by pid_tgid.
#[map]
static WOKEN: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Bytes and datagrams per (sender, receiver) pair of unconnected sends.
#[map]
static DGRAM_PAIRS: LruHashMap<DgramPair, Traffic> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn woken(sk: u64) {
    if !kernel::is_unix(sk) || kernel::socket_type(kernel::socket_of_sk(sk)) != SOCK_DGRAM {
        return;
    }
    let _ = WOKEN.insert(&bpf_get_current_pid_tgid(), &sk, 0);
}

#[inline(always)]
fn sent_to(socket: u64, inode: u64, bytes: i64) {
    if kernel::socket_type(socket) != SOCK_DGRAM {
        return;
    }
    let key = bpf_get_current_pid_tgid();
    // SAFETY: held only for the copy; only this thread writes its key.
    let Some(receiver_sk) = (unsafe { WOKEN.get(&key) }).copied() else { return };
    let _ = WOKEN.remove(&key);
    let Some(sk) = kernel::socket_sk(socket) else { return };
    // A connected sender's datagrams are its connection's, counted per socket.
    if kernel::peer_of(sk) == receiver_sk {
        return;
    }
    let receiver = kernel::inode_of_socket(kernel::socket_of_sk(receiver_sk));
    if receiver == 0 {
        return;
    }
    let pair = DgramPair { sender: inode, receiver };
    let slot = match DGRAM_PAIRS.get_ptr_mut(&pair) {
        Some(p) => p,
        None => {
            // The first datagram of the pair is the one event it gets.
            if DGRAM_PAIRS.insert(&pair, &NOTHING_YET, 1).is_ok() {
                report_first(socket, sk, receiver_sk, receiver);
            }
            let Some(p) = DGRAM_PAIRS.get_ptr_mut(&pair) else { return };
            p
        }
    };
    // SAFETY: as in `add`: a preallocated element of integers, atomic adds.
    let t = unsafe { &*slot };
    // SAFETY: as in `add`.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            core::ptr::from_ref(&t.bytes_sent).cast_mut(),
            bytes as u64,
        );
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(core::ptr::from_ref(&t.msgs_sent).cast_mut(), 1);
    }
}

#[inline(always)]
fn report_first(socket: u64, sk: u64, receiver_sk: u64, receiver: u64) {
    let Some(e) = begin(Current::get(), EventKind::DgramSend, Backend::Tracepoint) else { return };
    describe(e, UnixSocket::of_socket(socket, sk));
    e.peer_sk = receiver_sk;
    e.peer_inode = receiver;
    if let Some((sockaddr, len)) = kernel::bound_name(receiver_sk) {
        copy_sockaddr(e, sockaddr, len, false);
    }
    submit(e);
}

/// The socket's counts into its `Close`, and out of the map.
#[inline(always)]
pub fn take(e: &mut UnixEvent) {
    if e.inode == 0 {
        return;
    }
    // SAFETY: a successful lookup returns an aligned u32 of the map's,
    // read once; a racing update can only make the answer stale, which
    // costs a lookup or, for a socket that sent as it closed, the counts
    // of that last send, as the lookup below could anyway.
    if live_slot(e.inode).is_some_and(|p| unsafe { core::ptr::read_volatile(p) } == 0) {
        return;
    }
    // SAFETY: the reference into the element is held only for the copy;
    // the element is preallocated and plain integers, so even a copy torn
    // by a concurrent eviction is a valid value.
    if let Some(t) = unsafe { TRAFFIC.get(&e.inode) }.copied() {
        e.traffic = t;
        // Only the CPU whose remove succeeds gives the slot back.
        if TRAFFIC.remove(&e.inode).is_ok() {
            live_add(e.inode, u32::MAX);
        }
    }
}

// --- tp_btf: sock_send_length(struct sock *sk, int ret, int flags) and
// sock_recv_length(struct sock *sk, int ret, int flags).

#[inline(always)]
fn sock_length(ctx: &BtfTracePointContext, way: Way) {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret <= 0 || (way == Way::Received && i64::from(flags) & MSG_PEEK != 0) || !kernel::is_unix(sk) {
        return;
    }
    if actor_wanted(Current::get()) {
        add(kernel::socket_of_sk(sk), i64::from(ret), way);
    }
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    sock_length(&ctx, Way::Sent);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    sock_length(&ctx, Way::Received);
    0
}

#[btf_tracepoint(function = "sk_data_ready")]
pub fn sk_data_ready(ctx: BtfTracePointContext) -> i32 {
    woken(ctx.arg(0));
    0
}

// --- fexit: unix_{stream,dgram}_sendmsg(struct socket *sock, struct msghdr
// *msg, size_t len) and unix_{stream,dgram}_recvmsg(struct socket *sock,
// struct msghdr *msg, size_t size, int flags). Userspace checks the
// argument counts in BTF: the return value follows the arguments.

const SENDMSG_NR_ARGS: usize = 3;
const RECVMSG_NR_ARGS: usize = 4;

/// Whether a hook on the dgram functions should leave `socket` to the
/// seqpacket ones (see the module's comment).
#[inline(always)]
fn seqpacket_in_dgram_fn(socket: u64, dgram_fn: bool) -> bool {
    dgram_fn && kernel::socket_type(socket) == SOCK_SEQPACKET
}

#[inline(always)]
fn fexit_sendmsg(ctx: &FExitContext, dgram_fn: bool) {
    let ret: i32 = ctx.arg(SENDMSG_NR_ARGS);
    let socket: u64 = ctx.arg(0);
    if ret > 0 && !seqpacket_in_dgram_fn(socket, dgram_fn) && actor_wanted(Current::get()) {
        add(socket, i64::from(ret), Way::Sent);
    }
}

#[inline(always)]
fn fexit_recvmsg(ctx: &FExitContext, dgram_fn: bool) {
    let ret: i32 = ctx.arg(RECVMSG_NR_ARGS);
    let flags: i32 = ctx.arg(3);
    let socket: u64 = ctx.arg(0);
    if ret > 0
        && i64::from(flags) & MSG_PEEK == 0
        && !seqpacket_in_dgram_fn(socket, dgram_fn)
        && actor_wanted(Current::get())
    {
        add(socket, i64::from(ret), Way::Received);
    }
}

#[fexit(function = "unix_stream_sendmsg")]
pub fn fexit_unix_stream_sendmsg(ctx: FExitContext) -> i32 {
    fexit_sendmsg(&ctx, false);
    0
}

#[fexit(function = "unix_dgram_sendmsg")]
pub fn fexit_unix_dgram_sendmsg(ctx: FExitContext) -> i32 {
    fexit_sendmsg(&ctx, true);
    0
}

#[fexit(function = "unix_seqpacket_sendmsg")]
pub fn fexit_unix_seqpacket_sendmsg(ctx: FExitContext) -> i32 {
    fexit_sendmsg(&ctx, false);
    0
}

#[fexit(function = "unix_stream_recvmsg")]
pub fn fexit_unix_stream_recvmsg(ctx: FExitContext) -> i32 {
    fexit_recvmsg(&ctx, false);
    0
}

#[fexit(function = "unix_dgram_recvmsg")]
pub fn fexit_unix_dgram_recvmsg(ctx: FExitContext) -> i32 {
    fexit_recvmsg(&ctx, true);
    0
}

#[fexit(function = "unix_seqpacket_recvmsg")]
pub fn fexit_unix_seqpacket_recvmsg(ctx: FExitContext) -> i32 {
    fexit_recvmsg(&ctx, false);
    0
}

/// Before 6.3, `sock_def_readable(struct sock *sk)`, where the tracepoint
/// later went: af_unix's sockets keep it as their `sk_data_ready`.
#[fentry(function = "sock_def_readable")]
pub fn fentry_sock_def_readable(ctx: FEntryContext) -> i32 {
    woken(ctx.arg(0));
    0
}

// --- kprobe + kretprobe on the same functions: the return probe sees no
// arguments, so the entry leaves the socket (and for a receive, whether it
// peeks) for its thread.

/// LRU: a return the kernel missed (a kretprobe out of instances while
/// many receives block) leaves a note behind, evicted in time.
#[map]
static SENDING_OR_RECEIVING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn entered(ctx: &ProbeContext, peek_arg: Option<usize>, dgram_fn: bool) {
    if !actor_wanted(Current::get()) {
        return;
    }
    let Some(socket) = ctx.arg::<u64>(0) else { return };
    if seqpacket_in_dgram_fn(socket, dgram_fn) {
        return;
    }
    if let Some(n) = peek_arg
        && ctx.arg::<i32>(n).is_some_and(|f| i64::from(f) & MSG_PEEK != 0)
    {
        return;
    }
    let _ = SENDING_OR_RECEIVING.insert(&bpf_get_current_pid_tgid(), &socket, 0);
}

#[inline(always)]
fn returned(ctx: &RetProbeContext, way: Way) {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: held only for the copy; the map is preallocated and only
    // this thread's programs write its key.
    let Some(socket) = (unsafe { SENDING_OR_RECEIVING.get(&key) }).copied() else { return };
    let _ = SENDING_OR_RECEIVING.remove(&key);
    let ret: i32 = ctx.ret();
    if ret > 0 {
        add(socket, i64::from(ret), way);
    }
}

#[kprobe(function = "sock_def_readable")]
pub fn kprobe_sock_def_readable(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        woken(sk);
    }
    0
}

#[kprobe(function = "unix_stream_sendmsg")]
pub fn kprobe_unix_stream_sendmsg(ctx: ProbeContext) -> u32 {
    entered(&ctx, None, false);
    0
}

#[kretprobe(function = "unix_stream_sendmsg")]
pub fn kretprobe_unix_stream_sendmsg(ctx: RetProbeContext) -> u32 {
    returned(&ctx, Way::Sent);
    0
}

#[kprobe(function = "unix_dgram_sendmsg")]
pub fn kprobe_unix_dgram_sendmsg(ctx: ProbeContext) -> u32 {
    entered(&ctx, None, true);
    0
}

#[kretprobe(function = "unix_dgram_sendmsg")]
pub fn kretprobe_unix_dgram_sendmsg(ctx: RetProbeContext) -> u32 {
    returned(&ctx, Way::Sent);
    0
}

#[kprobe(function = "unix_stream_recvmsg")]
pub fn kprobe_unix_stream_recvmsg(ctx: ProbeContext) -> u32 {
    entered(&ctx, Some(3), false);
    0
}

#[kretprobe(function = "unix_stream_recvmsg")]
pub fn kretprobe_unix_stream_recvmsg(ctx: RetProbeContext) -> u32 {
    returned(&ctx, Way::Received);
    0
}

#[kprobe(function = "unix_dgram_recvmsg")]
pub fn kprobe_unix_dgram_recvmsg(ctx: ProbeContext) -> u32 {
    entered(&ctx, Some(3), true);
    0
}

#[kretprobe(function = "unix_dgram_recvmsg")]
pub fn kretprobe_unix_dgram_recvmsg(ctx: RetProbeContext) -> u32 {
    returned(&ctx, Way::Received);
    0
}

#[kprobe(function = "unix_seqpacket_sendmsg")]
pub fn kprobe_unix_seqpacket_sendmsg(ctx: ProbeContext) -> u32 {
    entered(&ctx, None, false);
    0
}

#[kretprobe(function = "unix_seqpacket_sendmsg")]
pub fn kretprobe_unix_seqpacket_sendmsg(ctx: RetProbeContext) -> u32 {
    returned(&ctx, Way::Sent);
    0
}

#[kprobe(function = "unix_seqpacket_recvmsg")]
pub fn kprobe_unix_seqpacket_recvmsg(ctx: ProbeContext) -> u32 {
    entered(&ctx, Some(3), false);
    0
}

#[kretprobe(function = "unix_seqpacket_recvmsg")]
pub fn kretprobe_unix_seqpacket_recvmsg(ctx: RetProbeContext) -> u32 {
    returned(&ctx, Way::Received);
    0
}
