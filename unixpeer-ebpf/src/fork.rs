//! `tp_btf/sched_process_fork`: a new process inherits every fd of its
//! parent, so it becomes one more holder of each of the parent's sockets.
//! Threads share the fd table and are skipped.
//!
//! Attaches to: the sched_process_fork tracepoint (kernel/fork.c,
//! copy_process → trace_sched_process_fork). Needs 5.5+ (BTF-enabled raw
//! tracepoints). Checked on: 6.18.44 (host), Debian 5.10.0, 6.1.0 and 6.12.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use unixpeer_common::{Backend, EventKind};

use crate::{
    emit::{actor_wanted, begin, submit},
    kernel::{self, Current, off},
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let cur = Current::get();
    if !actor_wanted(cur) {
        return 0;
    }
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let (Some(pid), Some(tgid)) =
        (kernel::read::<i32>(child + off!(task_struct_pid)), kernel::read::<i32>(child + off!(task_struct_tgid)))
    else {
        return 0;
    };
    let files = |t: u64| kernel::read::<u64>(t + off!(task_struct_files));
    // A thread, or CLONE_FILES: the fd table is shared, no new holder.
    if pid != tgid || files(parent) == files(child) {
        return 0;
    }
    if let Some(e) = begin(cur, EventKind::Fork, Backend::Tracepoint) {
        e.child_pid = pid as u32;
        submit(e);
    }
    0
}
