//! The live model as a connection table shows it at one instant (`--at`):
//! what UNIX_DIAG would have reported then, as far as the events tell.

use foldhash::{HashMap, HashSet};

use super::{Tracker, netns_of};
use crate::{
    holders::HolderMap,
    model::{KernelState, Model, Socket},
    timeline::format::parse_name,
};

impl Tracker {
    /// `fresh`: no event has been applied since the snapshot, whose queue
    /// lengths are true only at its instant. `closed`: whether a socket was
    /// seen closing, so that a peer pointing at it is shown gone.
    pub(crate) fn table_model(&self, fresh: bool, closed: impl Fn(u64) -> bool) -> Model {
        // Connected, not accepted yet: in the listener's accept queue, with
        // a peer that has no inode yet, as the kernel reports it.
        let waiting: HashSet<u64> = self.embryos.values().copied().collect();
        let mut icons: HashMap<u64, Vec<u64>> = HashMap::default();
        let mut holders = HolderMap::default();
        let mut sockets = Vec::with_capacity(self.model.len());
        for (s, h) in self.model.iter() {
            // The snapshot's queue, less the clients accepted since.
            let queued = s.icons.iter().filter(|&&c| self.model.get(c).is_some_and(|c| c.peer_inode().is_none()));
            icons.entry(s.inode).or_default().extend(queued);
            let mut s = Socket { icons: Box::default(), ..s.clone() };
            if waiting.contains(&s.inode) {
                if let Some(l) = s.path.as_deref().and_then(|p| self.listeners.get(netns_of(&s), p)) {
                    icons.entry(l).or_default().push(s.inode);
                }
                (s.state, s.peer) = (KernelState::Established, Some(0));
            } else if let Some(p) = s.peer_inode()
                && closed(p)
                && !self.model.contains(p)
            {
                s.peer = Some(0);
            }
            if !fresh {
                s.rqlen = None;
            }
            // A client's row is named after the server it connected to.
            if s.name.is_none() {
                s.name = s.path.as_deref().map(parse_name);
            }
            holders.insert(s.inode, h.iter().copied().collect());
            sockets.push(s);
        }
        for s in &mut sockets {
            if let Some(mut list) = icons.remove(&s.inode) {
                list.sort_unstable();
                list.dedup();
                s.icons = list.into_boxed_slice();
            }
        }
        let mut model = Model::new(sockets, holders);
        model.processes_mut().clone_from(self.model.processes());
        // The same sockets: what they carried comes along as it is.
        model.traffic_from(&self.model);
        model
    }
}

#[cfg(test)]
mod tests {
    use unixpeer_common::EventKind;

    use super::super::tests::{ev, snapshot};
    use crate::{
        follow::{Holder, Tracker},
        model::{KernelState, Status},
    };

    #[test]
    fn a_client_in_the_accept_queue_is_pending_until_accepted() {
        let h = |pid, fd| Holder { pid, comm: "p".into(), fd: Some(fd) };
        let mut seed = snapshot(vec![
            (1, KernelState::Listen, None, Some("/run/s.sock"), h(5, 3)),
            (2, KernelState::Established, Some(0), None, h(6, 3)),
        ]);
        // The snapshot's client 2 waits in listener 1's queue.
        let mut listener = seed.get(1).cloned().unwrap();
        listener.icons = Box::new([2]);
        seed.insert_socket(listener);
        let mut t = Tracker::new(true);
        t.seed(&seed);
        let m = t.table_model(true, |_| false);
        assert_eq!(m.status(m.get(2).unwrap()), Status::Pending);
        assert_eq!(&*m.get(1).unwrap().icons, &[2]);

        // A second client connects: it waits too, under the listener's name.
        let mut c = ev(EventKind::Connect, 7, "client", 3, 0);
        c.peer_sk = 0xabc;
        t.applied(c);
        let m = t.table_model(false, |_| false);
        assert_eq!(m.status(m.get(3).unwrap()), Status::Pending);
        assert_eq!(&*m.get(1).unwrap().icons, &[2, 3]);

        // The server accepts client 2 (as inode 4): connected, out of the queue.
        t.applied(ev(EventKind::Accept, 5, "p", 4, 2));
        let m = t.table_model(false, |_| false);
        assert_eq!(m.status(m.get(2).unwrap()), Status::Connected);
        assert_eq!(m.connection_of(2).and_then(|c| c.b), Some(4));
        assert_eq!(&*m.get(1).unwrap().icons, &[3]);

        // The server's end closes: the client's peer is gone.
        t.applied(ev(EventKind::Close, 5, "p", 4, 0));
        let m = t.table_model(false, |i| i == 4);
        assert_eq!(m.status(m.get(2).unwrap()), Status::PeerClosed);
    }
}
