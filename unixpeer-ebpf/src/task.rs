//! `task:task_rename`: the kernel renamed a task (prctl(PR_SET_NAME), exec,
//! or a write to /proc/PID/comm). A child renamed after fork would
//! otherwise keep its parent's name in the model until its next event.
//!
//! Attaches to: the task_rename tracepoint (fs/exec.c, __set_task_comm).
//! Checked on: 6.18.44 (host), Debian 5.10.0, 6.1.0 and 6.12 in QEMU.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use unixpeer_common::{Backend, EventKind, TASK_COMM_LEN};

use crate::{
    emit::{actor_wanted, begin, submit},
    kernel::{Current, off},
};

#[tracepoint(category = "task", name = "task_rename")]
pub fn task_rename(ctx: TracePointContext) -> u32 {
    let cur = Current::get();
    if !actor_wanted(cur) {
        return 0;
    }
    // SAFETY: read_at is bpf_probe_read_kernel at ctx + offset: an offset
    // that misses the record's fields (they come from its tracefs format
    // at load time) reads other kernel memory or fails, never faults, and
    // the copy is taken only after a success. Any bytes are a valid i32 or
    // byte array.
    let pid = unsafe { ctx.read_at::<i32>(off!(tp_task_rename_pid) as usize) };
    // SAFETY: as for `pid`.
    let comm = unsafe { ctx.read_at::<[u8; TASK_COMM_LEN]>(off!(tp_task_rename_newcomm) as usize) };
    let (Ok(pid), Ok(comm)) = (pid, comm) else {
        return 0;
    };
    if let Some(e) = begin(cur, EventKind::Rename, Backend::Tracepoint) {
        // The renamed task, which need not be the one doing the renaming.
        e.pid = pid as u32;
        e.tid = pid as u32;
        e.comm = comm;
        submit(e);
    }
    0
}
