//! The `iter/task_file` program: one read() walks every fd of every
//! process in the kernel (the snapshot's holders, `holders/iter.rs`).

use std::{io::Read, path::Path};

use aya::{Ebpf, EbpfLoader, programs::Iter};
use unixpeer_common::TaskSocketFd;

use super::{CaptureError, attach_btf::Target, program_error};
use crate::btf::{KernelBtf, VMLINUX_BTF};

/// Loads and runs the iterator in `ebpf` (already loaded with this kernel's
/// offsets), returning one record per socket fd.
pub(crate) fn task_socket_fds(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    kbtf: &KernelBtf,
) -> Result<Vec<TaskSocketFd>, CaptureError> {
    kbtf.check_iter_abi()?;
    let name = "task_file";
    let target = "iter/task_file";
    let prog: &mut Iter = ebpf
        .program_mut(name)
        .ok_or_else(|| program_error(name, target, aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(|e| program_error(name, target, e))?;
    if prog.fd().is_err() {
        prog.load(name, btf).map_err(|e| program_error(name, target, e))?;
    }
    let link_id = prog.attach().map_err(|e| program_error(name, target, e))?;
    let link = prog.take_link(link_id).map_err(|e| program_error(name, target, e))?;
    let mut file = link.into_file().map_err(|e| CaptureError::Io(std::io::Error::other(e.to_string())))?;
    let mut bytes = Vec::with_capacity(1 << 20);
    file.read_to_end(&mut bytes)?;
    let size = size_of::<TaskSocketFd>();
    Ok(bytes
        .chunks_exact(size)
        // SAFETY: TaskSocketFd is plain old data, valid for any bytes.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<TaskSocketFd>()) })
        .collect())
}

/// The kernel function aya looks up to attach `iter/task_file`.
pub(crate) const ITER_TARGET_FUNC: &str = "bpf_iter_task_file";

/// Loads only what the iterator needs: the same object, with the event ring
/// buffer shrunk since nothing will read it.
pub(crate) fn load_for_iter(kbtf: &KernelBtf) -> Result<Ebpf, CaptureError> {
    let offsets = kbtf.kernel_offsets()?;
    EbpfLoader::new()
        .override_global("OFFSETS", &offsets, true)
        .map_max_entries("EVENTS", 4096)
        .map_max_entries("AYA_LOGS", 4096)
        .load(super::object_for(kbtf, &offsets).bytes())
        .map_err(super::load_error)
}

/// Loads the iterator on its own and runs it once.
pub(crate) fn run_alone() -> Result<Vec<TaskSocketFd>, CaptureError> {
    let kbtf = KernelBtf::open(Path::new(VMLINUX_BTF))?;
    let btf = super::attach_btf::stand_in(&kbtf, &[Target::Func(ITER_TARGET_FUNC)])?;
    let mut ebpf = load_for_iter(&kbtf)?;
    task_socket_fds(&mut ebpf, &btf, &kbtf)
}
