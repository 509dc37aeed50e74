//! Accepts that arrived before the connect naming their client: a queue in
//! arrival order, expired from the front, with indexes by client inode and
//! by the accepted socket's inode so that a connect or a close takes its
//! accept out without a scan. Bounded: past `CAPACITY` the oldest leaves
//! early, resolved with whatever is known.

use std::collections::VecDeque;

use foldhash::HashMap;

use crate::events::Event;

/// How many accepts may wait at once. Only a lost connect (or a connect
/// reported after its accept on another CPU) makes an accept wait, so a
/// healthy capture holds a handful; under loss this caps the model.
pub(crate) const CAPACITY: usize = 4096;

#[derive(Default)]
pub(crate) struct PendingAccepts {
    /// Arrival order; a slot is emptied when its accept leaves early.
    queue: VecDeque<Option<Event>>,
    /// Sequence number of `queue[0]`.
    base: u64,
    by_client: HashMap<u64, u64>,
    by_inode: HashMap<u64, u64>,
    len: usize,
}

impl PendingAccepts {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Queues `e` (whose `peer_inode` is the client it waits for); returns
    /// the oldest accept when the queue was full.
    pub(crate) fn push(&mut self, e: Event) -> Option<Event> {
        let evicted = if self.len >= CAPACITY { self.pop_front() } else { None };
        let seq = self.base + self.queue.len() as u64;
        if let Some(c) = e.peer_inode {
            self.by_client.insert(c, seq);
        }
        if let Some(i) = e.inode {
            self.by_inode.insert(i, seq);
        }
        self.queue.push_back(Some(e));
        self.len += 1;
        evicted
    }

    /// The accept waiting for client `inode`, if any.
    pub(crate) fn take_client(&mut self, inode: u64) -> Option<Event> {
        let seq = *self.by_client.get(&inode)?;
        self.take(seq)
    }

    /// The accept that returned socket `inode`, if it waits.
    pub(crate) fn take_accepted(&mut self, inode: u64) -> Option<Event> {
        let seq = *self.by_inode.get(&inode)?;
        self.take(seq)
    }

    /// The oldest accept if it arrived before `deadline` (event time).
    pub(crate) fn pop_older_than(&mut self, deadline: u64) -> Option<Event> {
        self.skip_empty();
        match self.queue.front() {
            Some(Some(e)) if e.ts_ns < deadline => self.pop_front(),
            _ => None,
        }
    }

    pub(crate) fn pop_front(&mut self) -> Option<Event> {
        self.skip_empty();
        let e = self.queue.pop_front()??;
        self.unindex(self.base, &e);
        self.base += 1;
        self.len -= 1;
        Some(e)
    }

    fn take(&mut self, seq: u64) -> Option<Event> {
        let slot = self.queue.get_mut(usize::try_from(seq.checked_sub(self.base)?).ok()?)?;
        let e = slot.take()?;
        self.unindex(seq, &e);
        self.len -= 1;
        self.skip_empty();
        Some(e)
    }

    fn unindex(&mut self, seq: u64, e: &Event) {
        for (map, key) in [(&mut self.by_client, e.peer_inode), (&mut self.by_inode, e.inode)] {
            if let Some(k) = key
                && map.get(&k) == Some(&seq)
            {
                map.remove(&k);
            }
        }
    }

    /// Empty slots at the front carry nothing: drop them so the front is
    /// always the oldest waiting accept.
    fn skip_empty(&mut self) {
        while let Some(None) = self.queue.front() {
            self.queue.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use unixpeer_common::EventKind;

    use super::*;

    fn accept(ts_ns: u64, inode: u64, client: u64) -> Event {
        Event { ts_ns, ..Event::sample(EventKind::Accept, ts_ns, 1, "srv", inode, client) }
    }

    #[test]
    fn leaves_by_client_by_inode_or_by_age() {
        let mut p = PendingAccepts::default();
        for i in 0..4 {
            assert!(p.push(accept(i * 10, 100 + i, 200 + i)).is_none());
        }
        assert_eq!(p.take_client(201).map(|e| e.inode), Some(Some(101)));
        assert_eq!(p.take_accepted(100).map(|e| e.inode), Some(Some(100)));
        assert!(p.take_client(201).is_none() && p.take_accepted(100).is_none(), "taken once");
        assert_eq!(p.len(), 2);
        // The front is now the accept at ts 20.
        assert!(p.pop_older_than(20).is_none());
        assert_eq!(p.pop_older_than(21).map(|e| e.ts_ns), Some(20));
        assert_eq!(p.pop_front().map(|e| e.ts_ns), Some(30));
        assert!(p.len() == 0 && p.queue.is_empty() && p.by_client.is_empty() && p.by_inode.is_empty());
    }

    #[test]
    fn is_bounded_and_gives_back_the_oldest() {
        let mut p = PendingAccepts::default();
        for i in 0..CAPACITY as u64 {
            assert!(p.push(accept(i, 1_000_000 + i, 2_000_000 + i)).is_none());
        }
        let evicted = p.push(accept(u64::MAX, 1, 2)).expect("the oldest leaves");
        assert_eq!(evicted.ts_ns, 0);
        assert_eq!(p.len(), CAPACITY);
        assert!(p.take_client(2_000_000).is_none(), "its index left with it");
        assert!(p.take_client(2).is_some());
    }
}
