//! unixtrace's kernel programs.
//!
//! Three attach strategies share one event format and one set of pointer
//! walks (`kernel`) and one set of syscall handlers (`calls`): per-syscall
//! tracepoints (`syscalls`), fentry/fexit (`trampoline`, with `sysfns` on
//! the syscall functions) and kprobes (`probes`, with `sysfns`). Userspace
//! attaches only the programs of the strategy it picked, and `traffic` counts
//! bytes and messages per socket with the cheapest hooks the kernel has. `iter` attributes socket fds to tasks for the
//! snapshot.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::undocumented_unsafe_blocks)]

mod af_unix;
mod calls;
mod emit;
mod fork;
mod iter;
mod kernel;
mod passfd;
mod payload;
mod probes;
mod syscalls;
mod sysfns;
mod task;
mod traffic;
mod trampoline;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: sound only because no panic is reachable: the deny above
    // rules out unwrap, expect and panic!, indexes are constants or
    // bounded by their loops, and the release build (the only one xtask
    // makes) has no overflow checks. Checked on the object: with this
    // handler calling an undefined extern fn instead, the release build
    // keeps no reference to it nor any core::panicking symbol, while one
    // out-of-bounds index added for the test brings both in. Were a panic
    // path left in, this would let LLVM treat it as dead code; the verifier
    // would still check every memory access of what remains, and refuse a
    // program that can run past its last instruction.
    unsafe { core::hint::unreachable_unchecked() }
}
