//! Who held recently closed sockets, so that the close of the second end
//! of a connection can still name the first.
//!
//! Two generations instead of an eviction queue: the queue's per-close
//! removal of the oldest entry missed the cache on every close (7% of the
//! consumer's time in `cargo xtask bench consume`); dropping a whole
//! generation at once is one pass over memory just written.

use foldhash::HashMap;

use super::tracker::Holders;

/// Closed sockets remembered at most.
pub(crate) const GRAVEYARD: usize = 4096;

pub(crate) struct Graveyard {
    recent: HashMap<u64, Holders>,
    older: HashMap<u64, Holders>,
    /// Entries per generation: the graveyard holds at most twice this,
    /// and always at least the last `generation` sockets closed.
    generation: usize,
}

impl Default for Graveyard {
    fn default() -> Self {
        Graveyard::new(GRAVEYARD)
    }
}

impl Graveyard {
    pub(crate) fn new(capacity: usize) -> Self {
        Graveyard { recent: HashMap::default(), older: HashMap::default(), generation: (capacity / 2).max(1) }
    }

    pub(crate) fn bury(&mut self, inode: u64, holders: Holders) {
        if self.recent.len() >= self.generation {
            // The older generation's allocation is reused for the next one.
            std::mem::swap(&mut self.recent, &mut self.older);
            self.recent.clear();
        }
        self.recent.insert(inode, holders);
    }

    pub(crate) fn get(&self, inode: u64) -> Option<&Holders> {
        self.recent.get(&inode).or_else(|| self.older.get(&inode))
    }

    pub(crate) fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::tracker::Holder;

    fn holders(pid: u32) -> Holders {
        smallvec::smallvec![Holder { pid, comm: "p".into(), fd: Some(3) }]
    }

    #[test]
    fn keeps_the_latest_and_stays_bounded() {
        let mut g = Graveyard::new(100);
        for inode in 1..=1000u64 {
            g.bury(inode, holders(inode as u32));
            assert!(g.len() <= 100, "{} entries after {inode} burials", g.len());
        }
        for inode in 951..=1000u64 {
            assert_eq!(g.get(inode), Some(&holders(inode as u32)), "one of the last 50 closed");
        }
        assert_eq!(g.get(1), None);
    }

    #[test]
    fn a_reused_inode_names_its_latest_holders() {
        let mut g = Graveyard::new(4);
        g.bury(7, holders(1));
        g.bury(8, holders(2));
        g.bury(7, holders(3));
        assert_eq!(g.get(7), Some(&holders(3)));
    }
}
