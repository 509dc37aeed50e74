//! `iter/task_file`: walks every fd of every task in one read() from
//! userspace and writes a `TaskSocketFd` for each AF_UNIX socket. This is
//! what makes the attributed snapshot fast: no /proc walk, no readlink.
//!
//! Needs 5.8+ (bpf_iter task_file). Checked on: 6.18.44 (host), Debian
//! 6.1.0 and 6.12 in QEMU.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use unixpeer_common::{TASK_COMM_LEN, TaskSocketFd, iter_abi};

use crate::kernel::{self, off};

/// The context fields are loaded directly (not through probe_read) so the
/// verifier keeps their BTF types: `seq` must stay a `struct seq_file *`.
// SAFETY: as aya's program macros do: an unmangled name unique in the
// object, in the section that tells the loader the program type. The
// kernel calls it with one argument, the context, in r1, where rustc
// passes a single pointer argument.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn task_file(ctx: *mut c_void) -> i32 {
    let ctx = ctx as *const u8;
    // SAFETY: `ctx` is this iterator's `struct bpf_iter__task_file *`. The
    // verifier checks each of these loads against that type: one at an
    // offset or of a size that is not a field's is refused at load time,
    // so it never runs. Userspace also checks the offsets against the
    // running kernel's BTF before loading (btf::check_iter_abi). The
    // fields are 8-aligned pointers and a u32, read as integers.
    let (meta, task, fd, file) = unsafe {
        (
            *(ctx.add(iter_abi::TASK_FILE_META) as *const *const u8),
            *(ctx.add(iter_abi::TASK_FILE_TASK) as *const u64),
            *(ctx.add(iter_abi::TASK_FILE_FD) as *const u32),
            *(ctx.add(iter_abi::TASK_FILE_FILE) as *const u64),
        )
    };
    // The final call of an iteration has no task and no file.
    if meta.is_null() || task == 0 || file == 0 {
        return 0;
    }
    let Some(sock) = kernel::unix_socket_of_file(file) else { return 0 };
    let Some(pid) = kernel::read::<u32>(task + off!(task_struct_tgid)) else { return 0 };
    let comm = kernel::read::<[u8; TASK_COMM_LEN]>(task + off!(task_struct_comm)).unwrap_or([0; TASK_COMM_LEN]);
    let rec = TaskSocketFd { inode: kernel::inode_of_socket(sock.socket), pid, fd, comm };
    // SAFETY: `meta` is the verifier-typed `struct bpf_iter_meta *`, not
    // null (tested above), and the load of its `seq_file *` at META_SEQ is
    // checked against BTF like those above. The helper reads
    // size_of::<TaskSocketFd>() bytes from `rec`, exactly its size, and
    // the verifier checks that `seq` is the seq_file it expects.
    unsafe {
        let seq = *(meta.add(iter_abi::META_SEQ) as *const *mut c_void);
        bpf_seq_write(seq.cast(), (&raw const rec).cast(), core::mem::size_of::<TaskSocketFd>() as u32);
    }
    0
}
