//! The kprobe strategy: the same af_unix functions as `trampoline`, for
//! kernels where BPF trampolines are unavailable (no
//! CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, or fentry refused) but kprobes
//! exist. The return probe cannot see arguments, so the entry probe stashes
//! them per thread.
//!
//! Attaches to: unix_stream_connect, unix_dgram_connect (kprobe +
//! kretprobe), unix_release_sock (kprobe). Checked on: Debian 5.10.0, 6.1.0
//! and 6.12 cloud kernels in QEMU. The fds come from kprobes on the
//! syscall functions (`sysfns`).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, kretprobe, map},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext},
};
use unixpeer_common::Backend;

use crate::{af_unix, emit::actor_wanted, kernel::Current};

#[derive(Clone, Copy)]
#[repr(C)]
struct ConnectArgs {
    socket: u64,
    uaddr: u64,
    addr_len: i64,
}

#[map]
static CONNECT_ARGS: HashMap<u64, ConnectArgs> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn stash(ctx: &ProbeContext) {
    if !actor_wanted(Current::get()) {
        return;
    }
    let (Some(socket), Some(uaddr), Some(addr_len)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<i32>(2)) else {
        return;
    };
    let args = ConnectArgs { socket, uaddr, addr_len: i64::from(addr_len) };
    let _ = CONNECT_ARGS.insert(&bpf_get_current_pid_tgid(), &args, 0);
}

#[inline(always)]
fn returned(ctx: &RetProbeContext, dgram: bool) {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the reference into the map's element is held only for the
    // copy. The map is preallocated (no BPF_F_NO_PREALLOC), so the memory
    // stays the map's while the program runs; only this thread's programs
    // insert or remove its pid_tgid key (the entry probe above, the remove
    // below), so no one frees and reuses the element in the meantime.
    // `ConnectArgs` is integers only, and the socket address in it is
    // read only through checked reads.
    let Some(args) = (unsafe { CONNECT_ARGS.get(&key) }).copied() else { return };
    let _ = CONNECT_ARGS.remove(&key);
    let rc: i32 = ctx.ret();
    af_unix::connect_returned(
        args.socket,
        args.uaddr,
        args.addr_len as i32,
        i64::from(rc),
        dgram,
        Backend::Kprobe,
        Current::get(),
    );
}

#[kprobe(function = "unix_stream_connect")]
pub fn kprobe_unix_stream_connect(ctx: ProbeContext) -> u32 {
    stash(&ctx);
    0
}

#[kretprobe(function = "unix_stream_connect")]
pub fn kretprobe_unix_stream_connect(ctx: RetProbeContext) -> u32 {
    returned(&ctx, false);
    0
}

#[kprobe(function = "unix_dgram_connect")]
pub fn kprobe_unix_dgram_connect(ctx: ProbeContext) -> u32 {
    stash(&ctx);
    0
}

#[kretprobe(function = "unix_dgram_connect")]
pub fn kretprobe_unix_dgram_connect(ctx: RetProbeContext) -> u32 {
    returned(&ctx, true);
    0
}

#[kprobe(function = "unix_release_sock")]
pub fn kprobe_unix_release_sock(ctx: ProbeContext) -> u32 {
    let cur = Current::get();
    if actor_wanted(cur)
        && let Some(sk) = ctx.arg::<u64>(0)
    {
        af_unix::release(sk, Backend::Kprobe, cur);
    }
    0
}
