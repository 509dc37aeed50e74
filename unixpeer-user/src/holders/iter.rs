//! Holders from the BPF `iter/task_file` iterator (`capture/iter.rs` loads
//! and runs it): every fd of every process in one read, for any user's
//! processes, given the capture's privileges.

use std::{path::Path, time::Instant};

use unixpeer_common::TaskSocketFd;

use super::{HolderSource, Holders, HoldersError, ProcScan, holders_from_records};
use crate::{btf::VMLINUX_BTF, privileges};

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
        let records = match crate::capture::iter::run_alone() {
            Ok(r) => r,
            Err(e) => {
                let mut scan = ProcScan { why: format!("BPF task_file iterator failed ({e})") };
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
