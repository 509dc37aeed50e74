//! Events the kernel never let the programs see: a tracing program that
//! finds itself already running on its CPU (a task preempted inside it, and
//! another one entering the same hook there) is skipped, and the kernel only
//! counts it, per program (`bpf_prog_info.recursion_misses`, 5.12+). Such an
//! event is neither in the ring buffer nor in our lost counter, so it is
//! read here and reported with the lost events.

use std::os::fd::{AsFd, AsRawFd};

use aya::Ebpf;
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

/// The programs' recursion misses, summed, since they were loaded; None
/// where the kernel does not say (before 5.12, or bpf() refused).
pub(crate) fn total(ebpf: &Ebpf) -> Option<u64> {
    let mut sum = 0;
    for (_, prog) in ebpf.programs() {
        let Ok(fd) = prog.fd() else { continue };
        sum += prog_misses(fd.as_fd())?;
    }
    Some(sum)
}

fn prog_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: both are plain C structs, valid zeroed.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // The `info` member, as BPF_OBJ_GET_INFO_BY_FD reads it.
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&raw mut info) as u64;
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, which
    // outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<bpf_attr>(),
        )
    };
    (rc == 0).then_some(info.recursion_misses)
}
