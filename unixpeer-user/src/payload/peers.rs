//! Who holds a socket, to name the receiving end of each message: learnt
//! from the messages themselves and, for a socket that has sent nothing
//! yet, from the `iter/task_file` iterator, run again at most every
//! `REFRESH` so that a burst of new connections costs a few walks at most.

use std::time::{Duration, Instant};

use unixpeer_common::TaskSocketFd;

use crate::holders::Comm;

const REFRESH: Duration = Duration::from_millis(200);
/// Sockets remembered; past this the table starts over.
const MAX_SOCKETS: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    pub pid: u32,
    pub comm: Comm,
    pub fd: i32,
}

#[derive(Default)]
pub struct Peers {
    by_inode: foldhash::HashMap<u64, Who>,
    refreshed: Option<Instant>,
}

impl Peers {
    pub fn learn(&mut self, inode: u64, who: Who) {
        if self.by_inode.len() >= MAX_SOCKETS && !self.by_inode.contains_key(&inode) {
            self.by_inode.clear();
        }
        self.by_inode.insert(inode, who);
    }

    /// The holder of `inode`; `walk` lists every socket fd when a walk is due.
    pub fn lookup(&mut self, inode: u64, walk: &mut dyn FnMut() -> Option<Vec<TaskSocketFd>>) -> Option<Who> {
        if inode == 0 {
            return None;
        }
        if let Some(w) = self.by_inode.get(&inode) {
            return Some(*w);
        }
        if self.refreshed.is_some_and(|t| t.elapsed() < REFRESH) {
            return None;
        }
        self.refreshed = Some(Instant::now());
        for r in walk()? {
            let who = Who { pid: r.pid, comm: Comm::new(&r.comm), fd: r.fd as i32 };
            // The first holder found stands for a socket shared by several.
            if !self.by_inode.contains_key(&r.inode) {
                self.learn(r.inode, who);
            }
        }
        self.by_inode.get(&inode).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_on_a_miss_but_not_again_at_once() {
        let mut peers = Peers::default();
        let mut walks = 0;
        let mut walk = || {
            walks += 1;
            let mut comm = [0u8; 16];
            comm[..2].copy_from_slice(b"db");
            Some(vec![TaskSocketFd { inode: 9, pid: 42, fd: 3, comm }])
        };
        assert_eq!(peers.lookup(9, &mut walk).map(|w| (w.pid, w.fd)), Some((42, 3)));
        assert_eq!(peers.lookup(10, &mut walk), None);
        assert_eq!(peers.lookup(9, &mut walk).map(|w| w.comm.to_string()), Some("db".into()));
        drop(walk);
        assert_eq!(walks, 1);
        peers.learn(10, Who { pid: 1, comm: Comm::new(b"x"), fd: 4 });
        assert_eq!(peers.lookup(10, &mut || None).map(|w| w.pid), Some(1));
    }
}
