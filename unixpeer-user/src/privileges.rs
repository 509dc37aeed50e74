//! What unixtrace needs (CAP_BPF + CAP_PERFMON, or root) and giving it up
//! once the programs are attached.

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "live capture needs root, or the capabilities CAP_BPF and CAP_PERFMON \
         (this process has {have}), and CAP_DAC_READ_SEARCH to read tracefs as another user.\n\
         run it with sudo, or grant them: \
         `sudo setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep $(which unixtrace)`"
    )]
    Missing { have: String },
    #[error("could not drop capabilities: {0}")]
    Drop(std::io::Error),
}

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

pub(crate) fn check_capture() -> Result<(), PrivilegeError> {
    let caps = effective_caps();
    if has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON)) {
        return Ok(());
    }
    let mut have: Vec<&str> = Vec::new();
    if has(caps, CAP_BPF) {
        have.push("CAP_BPF");
    }
    if has(caps, CAP_PERFMON) {
        have.push("CAP_PERFMON");
    }
    let have = if have.is_empty() { "neither".to_owned() } else { format!("only {}", have.join(", ")) };
    Err(PrivilegeError::Missing { have })
}

/// Drops every capability of the calling thread for good. Called once the
/// programs are attached and the snapshot is taken, from the only thread
/// left: capabilities are per thread.
pub(crate) fn drop_all() -> Result<(), PrivilegeError> {
    drop_all_but(None)
}

/// Like `drop_all`, but keeps CAP_BPF: where unprivileged BPF is disabled
/// (Debian's default) kernels before 6.x refuse every bpf() call without
/// it, including the lost-event counter reads.
pub(crate) fn drop_all_but_bpf() -> Result<(), PrivilegeError> {
    drop_all_but(Some(CAP_BPF))
}

fn drop_all_but(keep: Option<u32>) -> Result<(), PrivilegeError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    if let Some(cap) = keep {
        let word = &mut data[(cap / 32) as usize];
        word.effective |= 1 << (cap % 32);
        word.permitted |= 1 << (cap % 32);
    }
    // SAFETY: capset with a v3 header and two data words, as capset(2) says.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(PrivilegeError::Drop(std::io::Error::last_os_error()));
    }
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let msg = PrivilegeError::Missing { have: "only CAP_BPF".into() }.to_string();
        assert!(msg.contains("CAP_BPF and CAP_PERFMON") && msg.contains("only CAP_BPF"), "{msg}");
    }
}
