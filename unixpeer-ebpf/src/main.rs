//! unixtrace's kernel programs.
//!
//! Three attach strategies share one event format and one set of pointer
//! walks (`kernel`): syscall tracepoints (`syscalls`), fentry/fexit
//! (`trampoline`) and kprobes (`probes`). Userspace loads only the programs
//! of the strategy it picked. `iter` attributes socket fds to tasks for the
//! snapshot.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod af_unix;
mod emit;
mod fork;
mod iter;
mod kernel;
mod probes;
mod syscalls;
mod task;
mod trampoline;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path here can panic (see the deny above); the verifier would
    // reject the unreachable loop if one did.
    unsafe { core::hint::unreachable_unchecked() }
}
