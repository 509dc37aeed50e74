//! Building events and handing them to userspace.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::{bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user},
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use unixpeer_common::{
    Backend, EventKind, KernelFilter, SUN_PATH_OFFSET, TASK_COMM_LEN, UNIX_PATH_MAX, UnixEvent, counter,
};

use crate::kernel::{self, Current, UnixSocket, off};

// SAFETY: unmangled so that the loader can find it by name
// (override_global); no other symbol in the object has this name.
#[unsafe(no_mangle)]
static FILTER: KernelFilter = KernelFilter::zeroed();

/// 8 MiB: at the benchmark's ~300k events/s that is ~100 ms of slack for
/// userspace, while its pages stay well inside the RSS budget.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::MAX, 0);

/// Events are built here rather than on the 512-byte stack.
#[map]
static SCRATCH: PerCpuArray<UnixEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a successful lookup returns this CPU's copy of the slot,
        // a valid, aligned u64 that the kernel frees only with the map,
        // which this program holds. A program that runs on this CPU in the
        // middle of this one (where the kernel preempts BPF programs) can at
        // worst make the two increments lose one count.
        unsafe { *c += 1 };
    }
}

/// Whether the current task passes the in-kernel pid filter. Cheap enough
/// for the entry of every program, before any map or pointer work.
#[inline(always)]
pub fn actor_wanted(cur: Current) -> bool {
    let (tgid, _) = cur.tgid_pid();
    // SAFETY: a field of a static, so valid and aligned. FILTER sits in
    // .rodata, which the loader writes before loading the programs and
    // then freezes (BPF_F_RDONLY_PROG, bpf_map_freeze): nothing writes it
    // while a program runs. Volatile, so the zero initialiser is not
    // folded into the code.
    let self_pid = unsafe { core::ptr::read_volatile(&raw const FILTER.self_pid) };
    // SAFETY: as above.
    let pid = unsafe { core::ptr::read_volatile(&raw const FILTER.pid) };
    tgid != self_pid && (pid == 0 || tgid == pid)
}

#[inline(always)]
fn comm_wanted(comm: &[u8; TASK_COMM_LEN]) -> bool {
    // SAFETY: FILTER is a frozen .rodata static, as in `actor_wanted`.
    if unsafe { core::ptr::read_volatile(&raw const FILTER.comm_enabled) } == 0 {
        return true;
    }
    // SAFETY: transmute moves the 16 bytes by value (its sizes are checked
    // at compile time, and no alignment is involved), and any bytes are a
    // valid u64.
    let words = |b: [u8; TASK_COMM_LEN]| unsafe { core::mem::transmute::<[u8; TASK_COMM_LEN], [u64; 2]>(b) };
    let have = words(*comm);
    // SAFETY: FILTER is a frozen .rodata static, as in `actor_wanted`.
    let want = words(unsafe { core::ptr::read_volatile(&raw const FILTER.comm) });
    // SAFETY: as for `want`.
    let mask = words(unsafe { core::ptr::read_volatile(&raw const FILTER.comm_mask) });
    have[0] & mask[0] == want[0] && have[1] & mask[1] == want[1]
}

/// Starts an event for the current task, or `None` when it is filtered out.
#[inline(always)]
pub fn begin(cur: Current, kind: EventKind, backend: Backend) -> Option<&'static mut UnixEvent> {
    let ptr = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a successful lookup returns this CPU's slot, a valid, aligned
    // UnixEvent that the kernel frees only with the map (so `'static` is
    // true of the memory), and this program holds no other reference to
    // it; callers use it only until they submit. A program that runs on
    // this CPU before this one submits (where the kernel preempts BPF
    // programs) reuses the slot: that can mix two events' fields, all
    // plain integers, but not reach outside the slot.
    let e = unsafe { &mut *ptr };
    let (tgid, tid) = cur.tgid_pid();
    // SAFETY: the helper takes no arguments and returns a plain u64: there
    // is no pointer for it to misuse. aya marks every helper unsafe.
    e.ts_ns = unsafe { bpf_ktime_get_ns() };
    // Volatile: LLVM merges four plain zero stores into a call to memset,
    // which for BPF is a byte-at-a-time loop of ~100 instructions.
    // SAFETY: fields of `e`, an exclusive &mut UnixEvent, so valid and
    // aligned for writes.
    unsafe {
        core::ptr::write_volatile(&raw mut e.sk, 0);
        core::ptr::write_volatile(&raw mut e.peer_sk, 0);
        core::ptr::write_volatile(&raw mut e.inode, 0);
        core::ptr::write_volatile(&raw mut e.peer_inode, 0);
        core::ptr::write_volatile(&raw mut e.traffic.bytes_sent, 0);
        core::ptr::write_volatile(&raw mut e.traffic.bytes_received, 0);
        core::ptr::write_volatile(&raw mut e.traffic.msgs_sent, 0);
        core::ptr::write_volatile(&raw mut e.traffic.msgs_received, 0);
    }
    e.kind = kind as u32;
    e.pid = tgid;
    e.tid = tid;
    fill_uid_comm(cur, e);
    e.netns = 0;
    e.sock_type = 0;
    e.errno = 0;
    e.fd = -1;
    e.peer_fd = -1;
    e.listen_fd = -1;
    e.backend = backend as u32;
    e.path_len = 0;
    e.child_pid = 0;
    if !comm_wanted(&e.comm) {
        return None;
    }
    Some(e)
}

/// The current task's uid and its process's command: the thread group
/// leader's, as ps, ss -p and lsof name a process (a worker thread's own
/// name would make one process look like several). Through the task's BTF
/// pointer these are five loads; the helpers copy the command with strscpy
/// and map the uid through a namespace, several times the cost at
/// connection rates.
#[inline(always)]
fn fill_uid_comm(cur: Current, e: &mut UnixEvent) {
    if let Some(task) = cur.btf() {
        let cred: u64 = kernel::load(task + off!(task_struct_cred));
        e.uid = if cred == 0 { 0 } else { kernel::load(cred + off!(cred_uid)) };
        let leader: u64 = kernel::load(task + off!(task_struct_group_leader));
        let comm = if leader == 0 { task } else { leader } + off!(task_struct_comm);
        let halves: [u64; 2] = [kernel::load(comm), kernel::load(comm + 8)];
        // SAFETY: two u64 are the 16 bytes of [u8; TASK_COMM_LEN] (the sizes
        // are checked at compile time), and any bytes are valid u8s.
        e.comm = unsafe { core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>(halves) };
    } else {
        e.uid = bpf_get_current_uid_gid() as u32;
        // Before 5.11 the task is read with probe reads; should they fail,
        // the calling thread's own name is better than none.
        // SAFETY: the helper takes no arguments. The task address it returns
        // is kept as an integer and read only through kernel::read, that is
        // bpf_probe_read_kernel, never dereferenced as a Rust pointer.
        let task = unsafe { bpf_get_current_task() };
        let leader = kernel::read::<u64>(task + off!(task_struct_group_leader)).unwrap_or(0);
        match kernel::read::<[u8; TASK_COMM_LEN]>(leader + off!(task_struct_comm)) {
            Some(comm) if leader != 0 => e.comm = comm,
            // SAFETY: the helper writes at most its size argument,
            // TASK_COMM_LEN bytes, at `e.comm`, which is exactly that long
            // and exclusively ours through `e`.
            _ => unsafe {
                bpf_get_current_comm(e.comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32);
            },
        }
    }
}

/// Never wakes userspace: it drains on a 20 ms timer instead. A wakeup per
/// event (the ring buffer's default whenever the reader has caught up) costs
/// an irq_work and a cross-CPU IPI each time, and so did waking past a fill
/// threshold, since at connection rates the backlog sits above any threshold
/// for most of each drain interval. 8 MiB fills in 20 ms only above ~1.5M
/// events/s, far beyond what a core can generate.
///
/// Only the part of `path` in use is written (`UnixEvent::record_len`):
/// most events carry no name, and each cache line the ring takes costs.
#[inline(always)]
pub fn submit(e: &UnixEvent) {
    // SAFETY: `record_len` is at most the size of `e` (the header and at
    // most all of `path`), so the bytes are inside the one UnixEvent that
    // `e` borrows, and any bytes are valid u8s.
    let record = unsafe { core::slice::from_raw_parts(core::ptr::from_ref(e).cast::<u8>(), e.record_len()) };
    if EVENTS.output(record, BPF_RB_NO_WAKEUP as u64).is_err() {
        count(counter::LOST);
    }
}

/// Fills the socket fields of `e` from `sk` and its peer.
#[inline(always)]
pub fn describe(e: &mut UnixEvent, sock: UnixSocket) {
    e.sk = sock.sk;
    e.inode = kernel::inode_of_socket(sock.socket);
    e.sock_type = sock.sock_type;
    e.netns = kernel::netns_of(sock.sk);
    let peer = kernel::peer_of(sock.sk);
    e.peer_sk = peer;
    if peer != 0 {
        e.peer_inode = kernel::inode_of_socket(kernel::socket_of_sk(peer));
    }
}

/// For a socket going away: its identity, and its type, which the walk to
/// it already read (a socket the model never saw, such as one whose connect
/// failed, still shows as a stream). Its netns, name and peer are in
/// userspace's model, and every read saved here is saved on each close()
/// in the system.
#[inline(always)]
pub fn describe_released(e: &mut UnixEvent, sock: UnixSocket) {
    e.sk = sock.sk;
    e.sock_type = sock.sock_type;
    e.inode = kernel::inode_of_socket(sock.socket);
    e.peer_sk = kernel::peer_of(sock.sk);
}

/// The name that identifies the connection: ours if bound, else the peer's
/// (a client is usually unbound; the server end carries the listener's name).
#[inline(always)]
pub fn name_from_kernel(e: &mut UnixEvent) {
    let named = kernel::bound_name(e.sk).or_else(|| kernel::bound_name(e.peer_sk));
    if let Some((sockaddr, len)) = named {
        copy_sockaddr(e, sockaddr, len, false);
    }
}

/// The name of a connect that succeeded: its peer's address, which for a
/// stream is the listener's (unix_stream_connect hands the embryo
/// `otheru->addr`) and for a datagram socket the target's, as the snapshot
/// and `ss -x` name the same connection. Read from the kernel, where the
/// caller's address would cost reads of user memory (`connect` by
/// tracepoint), and the same whether the caller went through a symlink or
/// a relative path. `None` if the peer has no address.
#[inline(always)]
pub fn peer_address(peer_sk: u64) -> Option<(u64, u32)> {
    if peer_sk == 0 {
        return None;
    }
    kernel::bound_name(peer_sk)
}

/// Copies `sun_path` out of a `sockaddr_un` of `len` bytes, in kernel or user memory.
#[inline(always)]
pub fn copy_sockaddr(e: &mut UnixEvent, sockaddr: u64, len: u32, user: bool) {
    if len as u64 <= SUN_PATH_OFFSET {
        return;
    }
    let mut n = len - SUN_PATH_OFFSET as u32;
    // The verifier needs a visible bound on the size.
    n &= 0x7f;
    if n as usize > UNIX_PATH_MAX {
        n = UNIX_PATH_MAX as u32;
    }
    let src = (sockaddr + SUN_PATH_OFFSET) as *const core::ffi::c_void;
    let dst = e.path.as_mut_ptr().cast();
    // SAFETY: `n` <= UNIX_PATH_MAX, the length of `e.path`, so the helper
    // writes only inside it (the verifier checks that bound too). `src` is
    // any address the caller or the kernel handed us: both probe-read
    // helpers return an error where it is not readable instead of
    // faulting, and zero the destination, so `e.path` holds bytes either way.
    let rc = unsafe { if user { bpf_probe_read_user(dst, n, src) } else { bpf_probe_read_kernel(dst, n, src) } };
    if rc == 0 {
        // A path name is NUL-terminated inside the buffer; an abstract one
        // (leading NUL) is exactly `n` bytes.
        e.path_len = n;
    } else {
        count(counter::READ_ERRORS);
    }
}
