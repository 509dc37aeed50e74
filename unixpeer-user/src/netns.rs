//! Network namespaces: which ones exist, and dumping UNIX sockets inside each.
//!
//! UNIX_DIAG only reports the sockets of the requesting socket's netns, so
//! covering every netns means creating a netlink socket inside each one.
//! setns() switches only the calling thread, so a throwaway thread does it
//! and the rest of the process never changes namespace.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::diag::{self, DiagError};
use crate::model::Socket;
use crate::output::escape::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot identify our own network namespace via /proc/self/ns/net")]
    Own(#[source] io::Error),
    #[error("cannot list /proc")]
    ListProc(#[source] io::Error),
    #[error("the netns worker thread failed")]
    Thread,
}

/// A network namespace and a file that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Netns {
    /// nsfs inode number, what `readlink /proc/PID/ns/net` shows as `net:[N]`.
    pub(crate) inode: u64,
    pub(crate) handle: PathBuf,
}

/// The netns this process runs in.
pub(crate) fn own() -> Result<Netns, NetnsError> {
    let handle = PathBuf::from("/proc/self/ns/net");
    let inode = fs::metadata(&handle).map_err(NetnsError::Own)?.ino();
    Ok(Netns { inode, handle })
}

/// Every netns reachable through `/proc/*/ns/net` or `ip netns` bind mounts,
/// once each, plus how many processes' namespaces we were not allowed to see.
pub(crate) fn reachable() -> Result<(Vec<Netns>, usize), NetnsError> {
    let mut found = BTreeMap::new();
    let mut denied = 0;
    for entry in fs::read_dir("/proc").map_err(NetnsError::ListProc)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let handle = entry.path().join("ns/net");
        match fs::metadata(&handle) {
            Ok(m) => {
                found.entry(m.ino()).or_insert(handle);
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied += 1,
            Err(_) => {}
        }
    }
    // `ip netns add` namespaces may have no process in them at all.
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            if let Ok(m) = fs::metadata(entry.path()) {
                found.entry(m.ino()).or_insert(entry.path());
            }
        }
    }
    let list = found.into_iter().map(|(inode, handle)| Netns { inode, handle }).collect();
    Ok((list, denied))
}

/// What a multi-netns dump produced.
#[derive(Debug, Default)]
pub(crate) struct MultiDump {
    pub(crate) sockets: Vec<Socket>,
    /// Namespaces we could not enter or dump, with the reason.
    pub(crate) failed: Vec<(Netns, String)>,
}

/// Dumps each namespace from inside it, on a dedicated thread.
pub(crate) fn dump_each(namespaces: Vec<Netns>) -> Result<MultiDump, NetnsError> {
    std::thread::Builder::new()
        .name("unixtrace-netns".into())
        .spawn(move || {
            let mut out = MultiDump::default();
            for ns in namespaces {
                let sockets = &mut out.sockets;
                let dumped = enter(&ns.handle).map_err(|e| e.to_string()).and_then(|()| {
                    diag::dump(ns.inode, &mut |s| sockets.push(s)).map_err(|e: DiagError| error_chain(&e))
                });
                if let Err(why) = dumped {
                    out.failed.push((ns, why));
                }
            }
            out
        })
        .map_err(|_| NetnsError::Thread)?
        .join()
        .map_err(|_| NetnsError::Thread)
}

fn enter(handle: &Path) -> io::Result<()> {
    let file = File::open(handle)?;
    // SAFETY: setns on an fd we own; it changes only this thread's netns.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
