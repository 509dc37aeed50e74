//! Process attribution: which processes hold a file descriptor for which
//! socket inode.
//!
//! Two sources fill the same map: the BPF `iter/task_file` iterator
//! (`iter.rs`: fast, needs privileges) and a scan of `/proc/*/fd`
//! (`procfs.rs`: works anywhere, slower, and blind to other users'
//! processes without root).

use std::io;

use unixpeer_common::{TASK_COMM_LEN, TaskSocketFd};

mod iter;
mod procfs;

pub use iter::{IterSource, Precomputed};
pub use procfs::ProcScan;

/// One file descriptor of one process that refers to a socket: in the
/// snapshot, in the live model and in recordings alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(crate) struct Holder {
    /// Thread group id.
    pub(crate) pid: u32,
    /// None when it is not known: a holder the live model learnt of from a
    /// kernel function that has no fd (fentry/kprobe connect).
    pub(crate) fd: Option<u32>,
    pub(crate) comm: Comm,
}

impl Holder {
    /// A holder as an event names it: the kernel's `int` fd, where a
    /// negative one means none.
    pub(crate) fn of(pid: u32, comm: Comm, fd: Option<i32>) -> Self {
        Holder { pid, comm, fd: fd.and_then(|f| u32::try_from(f).ok()) }
    }

    /// The process, whatever fd it holds: what per-process views (the
    /// summary's busiest, the HTML lanes) group by.
    pub(crate) fn process(&self) -> Holder {
        Holder { fd: None, ..*self }
    }

    /// `comm[pid]`, the command escaped: how timelines name a process.
    pub(crate) fn process_name(&self) -> String {
        format!("{}[{}]", self.comm, self.pid)
    }

    /// The fd as events carry it.
    pub(crate) fn event_fd(&self) -> Option<i32> {
        self.fd.and_then(|f| i32::try_from(f).ok())
    }
}

/// A task's comm, inline: tens of thousands of holders must not mean tens
/// of thousands of string allocations.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm([u8; TASK_COMM_LEN]);

impl Comm {
    /// Keeps the bytes before the first NUL, at most 15 like the kernel.
    pub(crate) fn new(bytes: &[u8]) -> Self {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len()).min(TASK_COMM_LEN - 1);
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..end].copy_from_slice(&bytes[..end]);
        Self(comm)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// The name as text; bytes that are not UTF-8 become U+FFFD.
    #[expect(clippy::wrong_self_convention, reason = "the name borrows the command's bytes; by value it could not")]
    pub(crate) fn to_str(&self) -> std::borrow::Cow<'_, str> {
        // Names are nearly always valid UTF-8: from_utf8 checks them a word
        // at a time, where the lossy decoder walks them in chunks (4% of
        // the JSON consumer's time).
        match std::str::from_utf8(self.as_bytes()) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(self.as_bytes()),
        }
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes())
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// For people: control characters and invalid bytes as `\xNN`, since any
/// process may name itself anything. `to_str` is the value for JSON.
impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::output::escape::escaped_bytes(self.as_bytes()))
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl serde::Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_str())
    }
}

impl<'de> serde::Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Self::new(s.as_bytes()))
    }
}

/// Almost every socket has exactly one holder: keep that one inline.
pub(crate) type HolderList = smallvec::SmallVec<[Holder; 1]>;

/// Socket inode -> every (process, fd) that holds it, sorted.
pub(crate) type HolderMap = foldhash::HashMap<u64, HolderList>;

/// The outcome of one attribution pass.
#[derive(Debug, Default)]
pub struct Holders {
    pub(crate) by_inode: HolderMap,
    /// Short name of the source, for `-v`.
    pub(crate) source: &'static str,
    /// Why this source was chosen, for `-v`.
    pub(crate) why: String,
    /// What the source could not see, said once to the user.
    pub(crate) blind_spot: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldersError {
    #[error("cannot list /proc")]
    ListProc(#[source] io::Error),
}

/// Something that can say who holds which socket.
pub trait HolderSource {
    /// Short name shown by `-v`.
    fn name(&self) -> &'static str;
    fn collect(&mut self) -> Result<Holders, HoldersError>;
}

/// Builds the map from the records the `iter/task_file` program emits.
pub(crate) fn holders_from_records(records: &[TaskSocketFd]) -> HolderMap {
    let mut map = HolderMap::default();
    for r in records {
        map.entry(r.inode).or_default().push(Holder { pid: r.pid, fd: Some(r.fd), comm: Comm::new(&r.comm) });
    }
    normalize(&mut map);
    map
}

/// Sorted and without duplicates, so output and comparisons are stable.
fn normalize(map: &mut HolderMap) {
    for holders in map.values_mut() {
        holders.sort_unstable();
        holders.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_sorted_holders() {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..3].copy_from_slice(b"cat");
        let r = |pid, fd| TaskSocketFd { inode: 7, pid, fd, comm };
        let map = holders_from_records(&[r(20, 4), r(10, 3), r(10, 3)]);
        let got: Vec<_> = map[&7].iter().map(|h| (h.pid, h.fd, h.comm.to_string())).collect();
        assert_eq!(got, vec![(10, Some(3), "cat".to_owned()), (20, Some(4), "cat".to_owned())]);
    }

    #[test]
    fn a_comm_is_shown_escaped_and_serialized_exact() {
        let c = Comm::new(b"ev\x1b[31mil\x07\xff");
        assert_eq!(c.to_string(), "ev\\x1b[31mil\\x07\\xff");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"ev\\u001b[31mil\\u0007\u{fffd}\"");
    }
}
