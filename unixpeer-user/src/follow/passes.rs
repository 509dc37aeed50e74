//! Descriptors passed over SCM_RIGHTS, each side waiting for the other.
//! A send waits for the receipt of the same `struct file *` on the socket
//! it was sent to, or for that socket's close (never received). A receipt
//! can come first: the receiver's recvmsg() may return, on another CPU,
//! before the sender's sendmsg() reaches its exit hook; it waits for its
//! send a little (`RECEIPT_WAIT_NS` of event time), then leaves unshown
//! (its send was before the capture, or filtered out in the kernel).
//! Bounded: at most `PASSES` of each wait, the oldest leaving first. Every
//! operation is a keyed lookup: events in arrival order, indexed by file
//! and by socket.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use crate::events::Event;

/// Sends, and receipts, waiting at most.
pub(crate) const PASSES: usize = 4096;
/// How long a receipt waits for its send (event time).
pub(crate) const RECEIPT_WAIT_NS: u64 = 1_000_000_000;

/// Events of one side, by arrival, indexed by the passed file and by a
/// socket (a send's receiving socket, a receipt's own).
#[derive(Default)]
struct Waiting {
    next: u64,
    events: BTreeMap<u64, (Option<u64>, Event)>,
    by_file: HashMap<u64, BTreeSet<u64>>,
    by_socket: HashMap<u64, BTreeSet<u64>>,
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

impl Waiting {
    /// `e` waits, known by `socket`; returns the oldest if it was full.
    fn push(&mut self, e: Event, socket: Option<u64>) -> Option<Event> {
        let dropped = if self.events.len() >= PASSES { self.oldest().and_then(|s| self.remove(s)) } else { None };
        let seq = self.next;
        self.next += 1;
        self.by_file.entry(file_of(&e)).or_default().insert(seq);
        if let Some(s) = socket {
            self.by_socket.entry(s).or_default().insert(seq);
        }
        self.events.insert(seq, (socket, e));
        dropped
    }

    fn oldest(&self) -> Option<u64> {
        self.events.first_key_value().map(|(s, _)| *s)
    }

    fn remove(&mut self, seq: u64) -> Option<Event> {
        let (socket, e) = self.events.remove(&seq)?;
        unindex(&mut self.by_file, file_of(&e), seq);
        if let Some(s) = socket {
            unindex(&mut self.by_socket, s, seq);
        }
        Some(e)
    }

    /// The oldest of `file` whose socket is `socket`, where both are known.
    fn take(&mut self, file: u64, socket: Option<u64>) -> Option<Event> {
        let seq =
            self.by_file.get(&file)?.iter().copied().find(|seq| {
                self.events.get(seq).is_some_and(|(s, _)| s.is_none() || socket.is_none() || *s == socket)
            })?;
        self.remove(seq)
    }

    fn take_socket(&mut self, socket: u64) -> Vec<Event> {
        let Some(seqs) = self.by_socket.get(&socket).cloned() else { return Vec::new() };
        seqs.into_iter().filter_map(|seq| self.remove(seq)).collect()
    }
}

#[derive(Default)]
pub(crate) struct PendingPasses {
    sends: Waiting,
    receipts: Waiting,
}

impl PendingPasses {
    /// A send waits for its receipt; returns the oldest send if full.
    pub(crate) fn push_send(&mut self, e: Event) -> Option<Event> {
        let receiver = e.peer_inode;
        self.sends.push(e, receiver)
    }

    /// A receipt whose send has not come yet waits for it.
    pub(crate) fn push_receipt(&mut self, e: Event) {
        let socket = e.inode;
        self.receipts.push(e, socket);
    }

    /// The oldest send of `file` to socket `receiver` (or to a socket not
    /// known at send time).
    pub(crate) fn take_send(&mut self, file: u64, receiver: Option<u64>) -> Option<Event> {
        self.sends.take(file, receiver)
    }

    /// The oldest receipt of `file` on socket `receiver`, come before its send.
    pub(crate) fn take_receipt(&mut self, file: u64, receiver: Option<u64>) -> Option<Event> {
        self.receipts.take(file, receiver)
    }

    /// Every send to socket `receiver`, which closed: never received.
    pub(crate) fn take_sends_to(&mut self, receiver: u64) -> Vec<Event> {
        self.sends.take_socket(receiver)
    }

    /// Receipts that waited for their send past `RECEIPT_WAIT_NS` by `now`
    /// leave, unshown.
    pub(crate) fn expire_receipts(&mut self, now_ns: u64) {
        while let Some(seq) = self.receipts.oldest()
            && self.receipts.events.get(&seq).is_some_and(|(_, e)| e.ts_ns.saturating_add(RECEIPT_WAIT_NS) < now_ns)
        {
            self.receipts.remove(seq);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.sends.events.len(), self.receipts.events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Passed;
    use unixpeer_common::EventKind;

    fn passing(kind: EventKind, file: u64, inode: u64, peer: u64, fd: i32) -> Event {
        let mut e = Event::sample(kind, 1, 10, "p", inode, peer);
        e.fd = Some(fd);
        let mut p = Passed::sample();
        p.file.file = file;
        e.passed = Some(Box::new(p));
        e
    }

    fn sent(file: u64, receiver: u64, fd: i32) -> Event {
        passing(EventKind::FdSent, file, 100, receiver, fd)
    }

    #[test]
    fn joins_by_file_and_receiver_in_order() {
        let mut t = PendingPasses::default();
        assert!(t.push_send(sent(1, 200, 5)).is_none());
        assert!(t.push_send(sent(1, 200, 6)).is_none());
        assert!(t.push_send(sent(2, 300, 7)).is_none());
        assert!(t.take_send(1, Some(999)).is_none());
        assert_eq!(t.take_send(1, Some(200)).and_then(|e| e.fd), Some(5));
        assert_eq!(t.take_send(1, Some(200)).and_then(|e| e.fd), Some(6));
        assert!(t.take_send(1, Some(200)).is_none());
        assert_eq!(t.take_sends_to(200).len(), 0);
        assert_eq!(t.take_sends_to(300).iter().map(|e| e.fd).collect::<Vec<_>>(), [Some(7)]);
        assert_eq!(t.len(), (0, 0));
        assert!(t.sends.by_file.is_empty() && t.sends.by_socket.is_empty());
    }

    #[test]
    fn a_receipt_before_its_send_waits_a_little() {
        let mut t = PendingPasses::default();
        let mut r = passing(EventKind::FdReceived, 1, 200, 100, 9);
        r.ts_ns = 1_000;
        t.push_receipt(r);
        assert!(t.take_receipt(1, Some(300)).is_none(), "another socket's");
        assert_eq!(t.take_receipt(1, Some(200)).and_then(|e| e.fd), Some(9));
        let mut r = passing(EventKind::FdReceived, 2, 200, 100, 9);
        r.ts_ns = 1_000;
        t.push_receipt(r);
        t.expire_receipts(1_000 + RECEIPT_WAIT_NS);
        assert_eq!(t.len(), (0, 1));
        t.expire_receipts(1_001 + RECEIPT_WAIT_NS);
        assert_eq!(t.len(), (0, 0));
    }

    #[test]
    fn the_oldest_leaves_when_full() {
        let mut t = PendingPasses::default();
        for i in 0..PASSES as u64 {
            assert!(t.push_send(sent(i, 200, 3)).is_none());
        }
        let dropped = t.push_send(sent(u64::MAX, 200, 4)).expect("oldest");
        assert_eq!(dropped.passed.map(|p| p.file.file), Some(0));
        assert_eq!(t.len(), (PASSES, 0));
        assert!(t.take_send(0, Some(200)).is_none());
        assert_eq!(t.take_sends_to(200).len(), PASSES);
    }
}
