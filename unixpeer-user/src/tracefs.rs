//! tracefs: where tracepoints are named, and where their record layouts
//! are described.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it on {TRACEFS} failed: {0}\n\
         mount it yourself (`mount -t tracefs tracefs {TRACEFS}`) or run unixtrace as root"
    )]
    Mount(std::io::Error),
    #[error(
        "tracefs at {TRACEFS} is mounted but only root may read it (permission denied).\n\
         run unixtrace as root, or grant CAP_DAC_READ_SEARCH beside CAP_BPF and CAP_PERFMON: \
         `sudo setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep $(which unixtrace)`"
    )]
    Unreadable,
    #[error("cannot read tracepoint format {path}: {source}")]
    Format { path: PathBuf, source: std::io::Error },
    #[error("tracepoint format {path} has no field `{field}`")]
    NoField { path: PathBuf, field: String },
    #[error(
        "this kernel has no syscall tracepoints ({0} is missing): it was built without \
         CONFIG_FTRACE_SYSCALLS, so the tracepoint backend cannot run"
    )]
    NoSyscallTracepoints(PathBuf),
    #[error("the syscall tracepoints' records are not laid out alike: {0}")]
    Layout(String),
}

/// Returns the tracefs root, mounting it when nothing is (as on a machine
/// that booted without it).
pub(crate) fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(PathBuf::from(TRACEFS));
    }
    // Mounted with its usual mode 0700: a user with CAP_BPF and CAP_PERFMON
    // but not root cannot look inside, and could not mount it either.
    if let Err(e) = fs::read_dir(TRACEFS)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(TracefsError::Unreadable);
    }
    let src = CString::new("tracefs").unwrap_or_default();
    let target = CString::new(TRACEFS).unwrap_or_default();
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        log::info!("mounted tracefs on {TRACEFS}");
        return Ok(PathBuf::from(TRACEFS));
    }
    let error = std::io::Error::last_os_error();
    // Older setups only have it under debugfs (which mounts it on access).
    if Path::new(DEBUGFS_TRACING).join("events").is_dir() {
        return Ok(PathBuf::from(DEBUGFS_TRACING));
    }
    Err(TracefsError::Mount(error))
}

/// Offset of `field` in a tracepoint's record, from its `format` file
/// (lines like `\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;`).
pub(crate) fn field_offset(root: &Path, category: &str, name: &str, field: &str) -> Result<u64, TracefsError> {
    let dir = root.join("events").join(category).join(name);
    let path = dir.join("format");
    if category == "syscalls" && !root.join("events/syscalls").is_dir() {
        return Err(TracefsError::NoSyscallTracepoints(root.join("events/syscalls")));
    }
    let text = fs::read_to_string(&path).map_err(|source| TracefsError::Format { path: path.clone(), source })?;
    parse_field_offset(&text, field).ok_or(TracefsError::NoField { path, field: field.to_owned() })
}

/// Where the tracepoint strategy's programs find the arguments and return
/// values they read, by the kernel's field names.
pub(crate) fn syscall_records(root: &Path) -> Result<unixpeer_common::SyscallRecords, TracefsError> {
    let at = |name: &str, field: &str| field_offset(root, "syscalls", name, field);
    Ok(unixpeer_common::SyscallRecords {
        close_fd: at("sys_enter_close", "fd")?,
        connect_fd: at("sys_enter_connect", "fd")?,
        connect_uservaddr: at("sys_enter_connect", "uservaddr")?,
        connect_addrlen: at("sys_enter_connect", "addrlen")?,
        accept_fd: at("sys_enter_accept", "fd")?,
        accept4_fd: at("sys_enter_accept4", "fd")?,
        socketpair_family: at("sys_enter_socketpair", "family")?,
        socketpair_usockvec: at("sys_enter_socketpair", "usockvec")?,
        listen_fd: at("sys_enter_listen", "fd")?,
        sendmsg_fd: at("sys_enter_sendmsg", "fd")?,
        sendmsg_msg: at("sys_enter_sendmsg", "msg")?,
        sendmsg_flags: at("sys_enter_sendmsg", "flags")?,
        recvmsg_fd: at("sys_enter_recvmsg", "fd")?,
        recvmsg_msg: at("sys_enter_recvmsg", "msg")?,
        recvmsg_flags: at("sys_enter_recvmsg", "flags")?,
        exit_ret: exit_ret(root)?,
    })
}

/// `ret`, which one program offset serves for every sys_exit_* record.
fn exit_ret(root: &Path) -> Result<u64, TracefsError> {
    let at = |name: &str| field_offset(root, "syscalls", name, "ret");
    let ret = at("sys_exit_connect")?;
    for name in [
        "sys_exit_accept",
        "sys_exit_accept4",
        "sys_exit_socketpair",
        "sys_exit_listen",
        "sys_exit_sendmsg",
        "sys_exit_recvmsg",
    ] {
        let other = at(name)?;
        if other != ret {
            return Err(TracefsError::Layout(format!("`ret` at {other} in {name}, at {ret} in sys_exit_connect")));
        }
    }
    Ok(ret)
}

fn parse_field_offset(format: &str, field: &str) -> Option<u64> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        // `char newcomm[16]` declares `newcomm`.
        let name = decl.split_whitespace().last()?.trim_start_matches('*').split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';').find_map(|kv| kv.trim().strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verbatim from /sys/kernel/tracing/events/syscalls/sys_enter_connect/format on 6.18.
    const SYS_ENTER_CONNECT: &str = "name: sys_enter_connect
ID: 1570
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;
";

    #[test]
    fn parses_offsets_from_a_format_file() {
        assert_eq!(parse_field_offset(SYS_ENTER_CONNECT, "fd"), Some(16));
        assert_eq!(parse_field_offset(SYS_ENTER_CONNECT, "uservaddr"), Some(24));
        assert_eq!(parse_field_offset(SYS_ENTER_CONNECT, "addrlen"), Some(32));
        assert_eq!(parse_field_offset(SYS_ENTER_CONNECT, "ret"), None);
        let rename = "\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:char newcomm[16];\toffset:28;\tsize:16;\tsigned:0;\n";
        assert_eq!(parse_field_offset(rename, "newcomm"), Some(28));
    }
}
