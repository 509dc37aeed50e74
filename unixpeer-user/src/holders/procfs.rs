//! Holders from a scan of `/proc/<pid>/fd`: needs no privilege beyond
//! reading other processes' fd tables, which only root has for all.

use std::ffi::{CStr, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};

use super::{Comm, Holder, HolderMap, HolderSource, Holders, HoldersError, normalize};

/// Scans `/proc/<pid>/fd` of every process.
#[derive(Debug, Default)]
pub struct ProcScan {
    /// Why the caller fell back to this source.
    pub why: String,
}

impl HolderSource for ProcScan {
    fn name(&self) -> &'static str {
        "proc"
    }

    fn collect(&mut self) -> Result<Holders, HoldersError> {
        let mut by_inode = HolderMap::default();
        let mut denied = 0usize;
        for entry in fs::read_dir("/proc").map_err(HoldersError::ListProc)? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = parse_pid(&entry.file_name()) else {
                continue;
            };
            match scan_pid(pid, &mut by_inode) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !is_kernel_thread(pid) => denied += 1,
                // The process exited while we looked: nothing to attribute.
                Err(_) => {}
            }
        }
        normalize(&mut by_inode);
        let blind_spot = (denied > 0).then(|| {
            format!(
                "could not read fds of {denied} processes owned by other users: \
                 run as root to attribute them"
            )
        });
        Ok(Holders { by_inode, source: "proc", why: self.why.clone(), blind_spot })
    }
}

fn parse_pid(name: &OsStr) -> Option<u32> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Reads every fd link of one process. Uses readlinkat() relative to the
/// open fd directory: resolving `/proc/<pid>/fd/<n>` from the root for each
/// of tens of thousands of fds costs measurably more.
fn scan_pid(pid: u32, out: &mut HolderMap) -> io::Result<()> {
    let dir = open_dir(&format!("/proc/{pid}/fd\0"))?;
    let names = list_dir(&dir)?;
    let mut comm: Option<Comm> = None;
    let mut link = [0u8; 64];
    for name in names {
        let Some(fd) = std::str::from_utf8(name.to_bytes()).ok().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // SAFETY: `name` is NUL-terminated, `link` is writable for its length.
        let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), link.as_mut_ptr().cast(), link.len()) };
        if n <= 0 {
            continue;
        }
        let Some(inode) = socket_inode(&link[..n as usize]) else {
            continue;
        };
        let comm = *comm.get_or_insert_with(|| read_comm(pid));
        out.entry(inode).or_default().push(Holder { pid, fd: Some(fd), comm });
    }
    Ok(())
}

/// Kernel threads hold no fds; counting them as unreadable would mislead.
fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let flags = rest.split_whitespace().nth(6).and_then(|f| f.parse::<u64>().ok());
    flags.is_some_and(|f| f & PF_KTHREAD != 0)
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn read_comm(pid: u32) -> Comm {
    fs::read(format!("/proc/{pid}/comm")).map(|c| Comm::new(c.strip_suffix(b"\n").unwrap_or(&c))).unwrap_or_default()
}

fn open_dir(path_nul: &str) -> io::Result<OwnedFd> {
    let path =
        CStr::from_bytes_with_nul(path_nul.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Entry names of an open directory via getdents64, keeping `dir` usable
/// for readlinkat().
fn list_dir(dir: &OwnedFd) -> io::Result<Vec<std::ffi::CString>> {
    let mut names = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(names);
        }
        parse_dirents(&buf[..n as usize], &mut names);
    }
}

/// Walks `struct linux_dirent64` records: u64 ino, i64 off, u16 reclen,
/// u8 type, then the NUL-terminated name.
fn parse_dirents(mut buf: &[u8], names: &mut Vec<std::ffi::CString>) {
    const NAME_OFFSET: usize = 19;
    while buf.len() > NAME_OFFSET {
        let reclen = usize::from(u16::from_ne_bytes([buf[16], buf[17]]));
        if reclen <= NAME_OFFSET || reclen > buf.len() {
            return;
        }
        let name = &buf[NAME_OFFSET..reclen];
        if let Ok(name) = CStr::from_bytes_until_nul(name)
            && name.to_bytes() != b"."
            && name.to_bytes() != b".."
        {
            names.push(name.to_owned());
        }
        buf = &buf[reclen..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_parse() {
        assert_eq!(socket_inode(b"socket:[16204]"), Some(16204));
        assert_eq!(socket_inode(b"pipe:[16204]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12"), None);
    }

    #[test]
    fn own_fds_are_found() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an fd we own, into a zeroed stat.
        assert_eq!(unsafe { libc::fstat(a.as_raw_fd(), &mut st) }, 0);
        let mut map = HolderMap::default();
        scan_pid(std::process::id(), &mut map).unwrap();
        let holders = &map[&st.st_ino];
        assert!(holders.iter().any(|h| h.fd == Some(a.as_raw_fd() as u32)));
    }

    #[test]
    fn bad_dirents_do_not_panic() {
        let mut names = Vec::new();
        parse_dirents(&[0xff; 40], &mut names);
        parse_dirents(&[0; 5], &mut names);
        assert!(names.is_empty());
    }
}
