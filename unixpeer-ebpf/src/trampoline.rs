//! The fentry/fexit strategy: BPF trampolines on af_unix functions
//! (net/unix/af_unix.c). Preferred: no syscall-path overhead for other
//! sockets, and it sees connects and releases however they were reached
//! (io_uring, exit, exec).
//!
//! Attaches to: unix_stream_connect and unix_dgram_connect (fexit),
//! unix_release_sock (fentry). Checked on: Debian 5.10.0, 6.1.0 and 6.12
//! cloud kernels in QEMU. accept, socketpair, listen, close and the other
//! ways an fd goes come from the syscall functions (`sysfns`), not from
//! any syscall tracepoint.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use unixpeer_common::Backend;

use crate::{af_unix, emit::actor_wanted, kernel::Current};

/// fexit's context holds the arguments and then the return value. Reading
/// it from there, rather than with bpf_get_func_ret (5.17+), keeps 5.10
/// working; userspace checks in BTF that both connect functions still take
/// four arguments before it attaches.
const CONNECT_NR_ARGS: usize = 4;

#[fexit(function = "unix_stream_connect")]
pub fn fexit_unix_stream_connect(ctx: FExitContext) -> i32 {
    let cur = Current::get();
    if actor_wanted(cur) {
        let rc: i32 = ctx.arg(CONNECT_NR_ARGS);
        af_unix::connect_returned(ctx.arg(0), ctx.arg(1), ctx.arg(2), i64::from(rc), false, Backend::Fentry, cur);
    }
    0
}

#[fexit(function = "unix_dgram_connect")]
pub fn fexit_unix_dgram_connect(ctx: FExitContext) -> i32 {
    let cur = Current::get();
    if actor_wanted(cur) {
        let rc: i32 = ctx.arg(CONNECT_NR_ARGS);
        af_unix::connect_returned(ctx.arg(0), ctx.arg(1), ctx.arg(2), i64::from(rc), true, Backend::Fentry, cur);
    }
    0
}

#[fentry(function = "unix_release_sock")]
pub fn fentry_unix_release_sock(ctx: FEntryContext) -> i32 {
    let cur = Current::get();
    if actor_wanted(cur) {
        af_unix::release(ctx.arg(0), Backend::Fentry, cur);
    }
    0
}
