//! Socket attribution through the `iter/task_file` program: one read()
//! walks every fd of every process in the kernel.

use std::{io::Read, path::Path, time::Instant};

use aya::{Ebpf, EbpfLoader, programs::Iter};
use unixpeer_common::TaskSocketFd;

use super::{CaptureError, attach_btf::Target, program_error};
use crate::{
    btf::{KernelBtf, VMLINUX_BTF},
    holders::{HolderSource, Holders, HoldersError, holders_from_records},
    privileges,
};

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
        .map_err(|e| CaptureError::Load(Box::new(e)))
}

/// The iterator as a holder source for the snapshot.
pub struct IterSource {
    why: String,
}

impl IterSource {
    /// Checks that the iterator can run here, or says why not.
    pub fn probe() -> Result<Self, String> {
        if let Err(e) = privileges::check_capture() {
            return Err(e.to_string().lines().next().unwrap_or_default().to_owned());
        }
        if !Path::new(VMLINUX_BTF).exists() {
            return Err(format!("{VMLINUX_BTF} is missing"));
        }
        Ok(Self { why: "BPF iter/task_file loads on this kernel".into() })
    }
}

impl HolderSource for IterSource {
    fn name(&self) -> &'static str {
        "bpf-iter"
    }

    fn collect(&mut self) -> Result<Holders, HoldersError> {
        let start = Instant::now();
        let run = || -> Result<Vec<TaskSocketFd>, CaptureError> {
            let kbtf = KernelBtf::open(Path::new(VMLINUX_BTF))?;
            let btf = super::attach_btf::stand_in(&kbtf, &[Target::Func(ITER_TARGET_FUNC)])?;
            let mut ebpf = load_for_iter(&kbtf)?;
            task_socket_fds(&mut ebpf, &btf, &kbtf)
        };
        let records = match run() {
            Ok(r) => r,
            Err(e) => {
                let mut scan = crate::holders::ProcScan { why: format!("BPF task_file iterator failed ({e})") };
                return scan.collect();
            }
        };
        log::debug!("iter/task_file: {} socket fds in {:?}", records.len(), start.elapsed());
        Ok(Holders {
            by_inode: holders_from_records(&records),
            source: "bpf-iter",
            why: self.why.clone(),
            blind_spot: None,
        })
    }
}

/// Records gathered earlier (by a running capture) handed to the snapshot.
pub struct Precomputed {
    pub records: Vec<TaskSocketFd>,
    pub why: String,
}

impl HolderSource for Precomputed {
    fn name(&self) -> &'static str {
        "bpf-iter"
    }

    fn collect(&mut self) -> Result<Holders, HoldersError> {
        let records = std::mem::take(&mut self.records);
        Ok(Holders {
            by_inode: holders_from_records(&records),
            source: "bpf-iter",
            why: self.why.clone(),
            blind_spot: None,
        })
    }
}
