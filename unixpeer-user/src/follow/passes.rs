//! Descriptors sent over SCM_RIGHTS and not received yet: each `fd_sent`
//! waits here for the `fd_received` of the same `struct file *` on the
//! socket it was sent to, or for that socket's close (never received).
//! Bounded: at most `PASSES` sends wait; past that the oldest leaves
//! unjoined. Every operation is a keyed lookup: sends in arrival order,
//! indexed by file and by receiving socket.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use crate::events::Event;

/// Sends waiting at most.
pub(crate) const PASSES: usize = 4096;

#[derive(Default)]
pub(crate) struct PendingPasses {
    next: u64,
    /// `fd_sent` events by arrival.
    sends: BTreeMap<u64, Event>,
    by_file: HashMap<u64, BTreeSet<u64>>,
    /// By the receiving socket's inode, where the sender's socket had a
    /// peer (an unconnected datagram's receiver is not known at send).
    by_receiver: HashMap<u64, BTreeSet<u64>>,
}

fn file_of(e: &Event) -> u64 {
    e.passed.as_ref().map_or(0, |p| p.file.file)
}

fn unindex(index: &mut HashMap<u64, BTreeSet<u64>>, key: u64, seq: u64) {
    if let Some(set) = index.get_mut(&key) {
        set.remove(&seq);
        if set.is_empty() {
            index.remove(&key);
        }
    }
}

impl PendingPasses {
    /// A send waits; returns the oldest if the table was full.
    pub(crate) fn push(&mut self, e: Event) -> Option<Event> {
        let oldest = if self.sends.len() >= PASSES { self.sends.first_key_value().map(|(s, _)| *s) } else { None };
        let dropped = oldest.and_then(|seq| self.remove(seq));
        let seq = self.next;
        self.next += 1;
        self.by_file.entry(file_of(&e)).or_default().insert(seq);
        if let Some(r) = e.peer_inode {
            self.by_receiver.entry(r).or_default().insert(seq);
        }
        self.sends.insert(seq, e);
        dropped
    }

    fn remove(&mut self, seq: u64) -> Option<Event> {
        let e = self.sends.remove(&seq)?;
        unindex(&mut self.by_file, file_of(&e), seq);
        if let Some(r) = e.peer_inode {
            unindex(&mut self.by_receiver, r, seq);
        }
        Some(e)
    }

    /// The oldest send of `file` to socket `receiver` (or to a socket not
    /// known at send time).
    pub(crate) fn take_received(&mut self, file: u64, receiver: Option<u64>) -> Option<Event> {
        let seqs = self.by_file.get(&file)?;
        let seq = seqs.iter().copied().find(|s| {
            self.sends.get(s).is_some_and(|e| e.peer_inode.is_none() || receiver.is_none() || e.peer_inode == receiver)
        })?;
        self.remove(seq)
    }

    /// Every send to socket `receiver`, which closed: never received.
    pub(crate) fn take_receiver(&mut self, receiver: u64) -> Vec<Event> {
        let Some(seqs) = self.by_receiver.remove(&receiver) else { return Vec::new() };
        seqs.into_iter()
            .filter_map(|seq| {
                let e = self.sends.remove(&seq)?;
                unindex(&mut self.by_file, file_of(&e), seq);
                Some(e)
            })
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Passed;
    use unixpeer_common::EventKind;

    fn sent(file: u64, receiver: u64, fd: i32) -> Event {
        let mut e = Event::sample(EventKind::FdSent, 1, 10, "sender", 100, receiver);
        e.fd = Some(fd);
        let mut p = Passed::sample();
        p.file.file = file;
        e.passed = Some(Box::new(p));
        e
    }

    #[test]
    fn joins_by_file_and_receiver_in_order() {
        let mut t = PendingPasses::default();
        assert!(t.push(sent(1, 200, 5)).is_none());
        assert!(t.push(sent(1, 200, 6)).is_none());
        assert!(t.push(sent(2, 300, 7)).is_none());
        assert!(t.take_received(1, Some(999)).is_none());
        assert_eq!(t.take_received(1, Some(200)).and_then(|e| e.fd), Some(5));
        assert_eq!(t.take_received(1, Some(200)).and_then(|e| e.fd), Some(6));
        assert!(t.take_received(1, Some(200)).is_none());
        assert_eq!(t.take_receiver(200).len(), 0);
        assert_eq!(t.take_receiver(300).iter().map(|e| e.fd).collect::<Vec<_>>(), [Some(7)]);
        assert_eq!(t.len(), 0);
        assert!(t.by_file.is_empty() && t.by_receiver.is_empty());
    }

    #[test]
    fn the_oldest_leaves_when_full() {
        let mut t = PendingPasses::default();
        for i in 0..PASSES as u64 {
            assert!(t.push(sent(i, 200, 3)).is_none());
        }
        let dropped = t.push(sent(u64::MAX, 200, 4)).expect("oldest");
        assert_eq!(dropped.passed.map(|p| p.file.file), Some(0));
        assert_eq!(t.len(), PASSES);
        assert!(t.take_received(0, Some(200)).is_none());
        assert_eq!(t.take_receiver(200).len(), PASSES);
    }
}
