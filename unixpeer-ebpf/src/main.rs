//! unixtrace's kernel programs.
//!
//! Three attach strategies share one event format and one set of pointer
//! walks (`kernel`) and one set of syscall handlers (`calls`): per-syscall
//! tracepoints (`syscalls`), fentry/fexit (`trampoline`, with `sysfns` on
//! the syscall functions) and kprobes (`probes`, with `sysfns`). Userspace
//! attaches only the programs of the strategy it picked. `iter` attributes socket fds to tasks for the
//! snapshot.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::undocumented_unsafe_blocks)]

mod af_unix;
mod calls;
mod emit;
mod fork;
mod iter;
mod kernel;
mod probes;
mod syscalls;
mod sysfns;
mod task;
mod trampoline;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: no code path here can panic: the deny above rules out
    // unwrap, expect and panic!, indexes are constants or bounded by their
    // loops, and the release build has no overflow checks. Were a panic
    // path left in, the verifier would still check every memory access and
    // reject a program that can run past its last instruction.
    unsafe { core::hint::unreachable_unchecked() }
}
