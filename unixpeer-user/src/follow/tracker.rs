//! The live model: what is known about each socket, fed by the snapshot and
//! then by events, so that every event can name both ends of its
//! connection. Holders follow fork, close and exit, so they name who holds
//! a socket now. Bounded: a socket leaves the model once its close has been
//! reported.

use foldhash::{HashMap, HashSet};

use unixpeer_common::EventKind;

use super::{graveyard::Graveyard, listeners::Listeners, passes::PendingPasses, pending::PendingAccepts};
use crate::{
    events::{Event, Inferred},
    holders::Comm,
    model::{KernelState, Model, SockType, Socket},
};

pub(crate) use crate::holders::Holder;

mod at;

pub(crate) use crate::holders::HolderList as Holders;

/// The other end of an event's socket, as far as the model knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// The process(es) holding the peer socket.
    Holders(Holders),
    /// The connection is not accepted yet: the process listening on the name.
    Listener(Holder),
    Unknown,
}

/// An event with its other end resolved: what output renders.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub(crate) event: Event,
    pub(crate) peer: Peer,
}

#[derive(Default)]
pub struct Tracker {
    /// The sockets and their holders: the snapshot's model, kept current.
    model: Model,
    /// Inodes each process holds: fork copies them, exit drops them.
    by_pid: HashMap<u32, HashSet<u64>>,
    /// The latest command name of each process seen in an event: a child
    /// inherits its parent's name at fork and often changes it afterwards.
    comms: HashMap<u32, Comm>,
    /// Listening sockets by (netns, name): who a connect is talking to
    /// before the server accepts.
    /// The inode, so that the holder named is whoever holds it now.
    listeners: Listeners,
    /// Client inode by the server-side `struct sock` created at connect:
    /// accept returns that very sock.
    embryos: HashMap<u64, u64>,
    /// Who held recently closed sockets, so the close of the second end of
    /// a connection can still name the first. Bounded (`graveyard::GRAVEYARD`).
    graveyard: Graveyard,
    /// Accepts that arrived before the connect naming their client.
    pending: PendingAccepts,
    /// Under the tracepoint strategy nothing reports a release at exit:
    /// infer it for sockets the exiting process alone held.
    infer_release_on_exit: bool,
    /// Under the tracepoint strategy, sockets whose last known fd was closed
    /// while something else still referenced the file (an fd in flight over
    /// SCM_RIGHTS, a /proc reader's moment): the release comes later, where
    /// no syscall of ours sees it. By inode, the fd close that left them.
    orphans: HashMap<u64, Orphan>,
    /// What sockets carried, noted just before the event that makes the
    /// model infer their release (the kernel reported nothing for them):
    /// taken by that release, and emptied after each event.
    released_traffic: HashMap<u64, crate::events::Carried>,
    /// Descriptors sent over SCM_RIGHTS, waiting for their receipt.
    passes: PendingPasses,
}

/// Connections not accepted yet that the model follows at most.
const EMBRYOS: usize = 16384;
/// Orphans watched at most; past this, a further one is not reported.
const ORPHANS: usize = 4096;
/// The first look at an orphan, after its fd close (event time); then
/// twice as long between looks, up to a minute, for fds in flight.
const ORPHAN_FIRST_LOOK_NS: u64 = 500_000_000;
const ORPHAN_MAX_WAIT_NS: u64 = 60_000_000_000;

struct Orphan {
    fd_close: Event,
    next_look_ns: u64,
    wait_ns: u64,
}
/// How long an accept may wait for its client's connect event (event time).
const ACCEPT_WAIT_NS: u64 = 100_000_000;

impl Tracker {
    pub fn new(infer_release_on_exit: bool) -> Self {
        Self { infer_release_on_exit, ..Self::default() }
    }

    /// Sockets the exit of `pid` will release as far as the model knows
    /// (it alone holds them), where it infers releases: their counts must
    /// be noted before that exit is applied.
    pub(crate) fn released_by_exit(&self, pid: u32) -> Vec<u64> {
        if !self.infer_release_on_exit {
            return Vec::new();
        }
        let Some(inodes) = self.by_pid.get(&pid) else { return Vec::new() };
        let mut out: Vec<u64> = inodes
            .iter()
            .copied()
            .filter(|&i| self.model.get(i).is_some() && self.model.holders(i).iter().all(|h| h.pid == pid))
            .collect();
        out.sort_unstable();
        out
    }

    /// What `inode` carried, for the release the next event makes the
    /// model infer (see `released_by_exit`, `release_orphan`).
    pub(crate) fn note_released_traffic(&mut self, inode: u64, carried: crate::events::Carried) {
        // Bounded by the sockets one exit releases; a note left by a
        // recording cut short is dropped at the next event.
        self.released_traffic.insert(inode, carried);
    }

    /// The snapshot (taken live, or read back from a recording) as the
    /// model's starting point.
    pub fn seed(&mut self, snapshot: &Model) {
        self.model.processes_mut().adopt(snapshot.processes());
        for (s, holders) in snapshot.iter() {
            self.seed_socket(snapshot, s, holders);
        }
    }

    /// A connection's name is this end's, else its peer's: a client is
    /// usually unbound and its peer carries the server's name.
    fn seed_socket(&mut self, snapshot: &Model, s: &Socket, holders: &[Holder]) {
        let name = s.name.as_ref().or_else(|| snapshot.get(s.peer_inode()?)?.name.as_ref());
        let path: Option<std::sync::Arc<str>> = name.map(|n| n.to_string().into());
        if s.state == KernelState::Listen
            && let Some(path) = &path
        {
            self.listeners.insert(netns_of(s), path, s.inode);
        }
        for h in holders {
            self.by_pid.entry(h.pid).or_default().insert(s.inode);
        }
        self.model.insert_socket(Socket { path, ..s.clone() });
        *self.model.holders_mut(s.inode) = holders.iter().copied().collect();
    }

    /// Makes the model agree with the kernel's sockets of network namespace
    /// `netns` (a snapshot taken after lost events): sockets the kernel no
    /// longer has leave without a line (their close was lost), the others
    /// take the kernel's holders and peers. Returns how many left and how
    /// many the model had missed.
    pub(crate) fn resync(&mut self, kernel: &Model, netns: u32) -> (u64, u64) {
        let before = self.model.len();
        self.model.retain(|s| netns_of(s) != netns || kernel.get(s.inode).is_some());
        let gone = (before - self.model.len()) as u64;
        let found = kernel.iter().filter(|(s, _)| !self.model.contains(s.inode)).count() as u64;
        self.listeners.retain(|n, inode| n != netns || kernel.get(inode).is_some());
        self.seed(kernel);
        // Holders come from the kernel now: rebuild who holds what.
        self.by_pid.clear();
        for (s, holders) in self.model.iter() {
            for h in holders {
                self.by_pid.entry(h.pid).or_default().insert(s.inode);
            }
        }
        let by_pid = &self.by_pid;
        self.model.processes_mut().retain(|pid| by_pid.contains_key(&pid));
        let (model, graveyard) = (&self.model, &self.graveyard);
        self.comms.retain(|pid, _| self.by_pid.contains_key(pid));
        // A client that closed before its accept (its close seen, so it is
        // in the graveyard) is what the embryo is kept for.
        self.embryos.retain(|_, client| model.contains(*client) || graveyard.get(*client).is_some());
        self.orphans.retain(|inode, _| model.contains(*inode));
        (gone, found)
    }

    /// Reads who process `pid` is, if the model does not know yet (live
    /// only: a replay has what the recording says).
    pub(crate) fn observe(&mut self, pid: u32) {
        self.model.processes_mut().observe(pid);
    }

    /// Who the processes are, for output.
    pub(crate) fn model(&self) -> &Model {
        &self.model
    }

    /// What open socket `inode` carried so far (a recording's `counts`), for
    /// `--at`; nothing if the model does not know it, or no longer.
    pub(crate) fn note_counts(&mut self, inode: u64, traffic: crate::events::Traffic) {
        self.model.set_traffic(inode, traffic);
    }

    pub(crate) fn processes(&self) -> &crate::identity::Processes {
        self.model.processes()
    }

    pub(crate) fn processes_mut(&mut self) -> &mut crate::identity::Processes {
        self.model.processes_mut()
    }

    /// Whether the model has the socket `inode` (open, as far as it knows).
    pub(crate) fn has_socket(&self, inode: u64) -> bool {
        self.model.contains(inode)
    }

    /// Sockets the model knows now.
    pub(crate) fn sockets_len(&self) -> usize {
        self.model.len()
    }

    /// Entries the model holds: its memory footprint.
    pub fn len(&self) -> usize {
        self.model.len() + self.embryos.len() + self.graveyard.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn holders_of(&self, inode: Option<u64>) -> Option<Holders> {
        let inode = inode?;
        let live = self.model.contains(inode).then(|| self.model.holders(inode));
        live.or_else(|| self.graveyard.get(inode).map(|h| h.as_slice()))
            .filter(|h| !h.is_empty())
            .map(Holders::from_slice)
    }

    /// A process's name changed: its holders say so from now on. Names
    /// change rarely, so this is done here rather than looked up each
    /// time holders are shown.
    fn rename_holders(&mut self, pid: u32, comm: Comm) {
        let Some(inodes) = self.by_pid.get(&pid) else { return };
        for &inode in inodes {
            if self.model.contains(inode) {
                self.model.holders_mut(inode).iter_mut().filter(|h| h.pid == pid).for_each(|h| h.comm = comm);
            }
        }
    }

    fn listener_for(&self, e: &Event) -> Option<Holder> {
        let path = e.path.as_ref()?;
        let inode = self.listeners.get(e.netns, path)?;
        self.holders_of(Some(inode))?.into_iter().next()
    }

    fn upsert(&mut self, inode: Option<u64>, holder: Holder, peer_inode: Option<u64>, e: &Event) {
        let Some(inode) = inode else { return };
        self.orphans.remove(&inode);
        self.by_pid.entry(holder.pid).or_default().insert(inode);
        let holders = self.model.holders_mut(inode);
        if !holders.iter().any(|h| h.pid == holder.pid && h.fd == holder.fd) {
            holders.push(holder);
        }
        let s = self.model.socket_mut(inode, || Socket::live(inode, e.netns, e.sock_type));
        // Every event that names a socket's holder connects it, except
        // listen, which says so itself.
        s.state = KernelState::Established;
        if peer_inode.is_some() {
            s.peer = peer_inode;
        }
        if s.path.is_none() && e.kind != EventKind::Socketpair {
            s.path.clone_from(&e.path);
        }
        s.netns = u64::from(e.netns);
        s.sock_type = e.sock_type;
    }

    /// The sender stays unconnected; the receiver, if the model had not
    /// met it, is known by the name it was sent to from now on.
    fn on_dgram_send(&mut self, e: &Event) -> Peer {
        if let Some(inode) = e.inode {
            self.by_pid.entry(e.pid).or_default().insert(inode);
            let holder = actor(e, e.fd);
            let holders = self.model.holders_mut(inode);
            if !holders.iter().any(|h| h.pid == holder.pid) {
                holders.push(holder);
            }
            self.model.socket_mut(inode, || Socket::live(inode, e.netns, e.sock_type));
        }
        if let Some(receiver) = e.peer_inode {
            let s = self.model.socket_mut(receiver, || Socket::live(receiver, e.netns, e.sock_type));
            if s.path.is_none() {
                s.path.clone_from(&e.path);
            }
        }
        self.peer_holders(e.peer_inode)
    }

    fn drop_holder(&mut self, inode: u64, pid: u32, fd: Option<i32>) {
        let fd = fd.and_then(|f| u32::try_from(f).ok());
        if self.model.contains(inode) {
            let holders = self.model.holders_mut(inode);
            // An fd the kernel could not name (close_range, close-on-exec,
            // io_uring) is one of the process's fds: drop one, the unnamed
            // first, and keep the others it may still hold.
            let at = match fd {
                Some(_) => holders.iter().position(|h| h.pid == pid && h.fd == fd),
                None => holders
                    .iter()
                    .position(|h| h.pid == pid && h.fd.is_none())
                    .or_else(|| holders.iter().position(|h| h.pid == pid)),
            };
            if let Some(at) = at {
                holders.remove(at);
            }
            if !holders.iter().any(|h| h.pid == pid) {
                self.by_pid.get_mut(&pid).map(|set| set.remove(&inode));
            }
        }
    }

    /// Applies one event and appends to `out` what it resolves, with who is
    /// at the other end. Most events give one line; an exit may give one
    /// inferred close per socket released, and an event may first release
    /// accepts whose wait is over.
    pub(crate) fn apply(&mut self, mut e: Event, out: &mut Vec<Resolved>) {
        self.expire(e.ts_ns, out);
        if e.kind != EventKind::TaskExit && self.comms.get(&e.pid) != Some(&e.comm) {
            // (A rename of an untracked thread is undone below.)
            self.comms.insert(e.pid, e.comm);
            self.rename_holders(e.pid, e.comm);
        }
        if e.kind != EventKind::TaskExit && !self.released_traffic.is_empty() {
            self.released_traffic.clear();
        }
        let peer = match e.kind {
            EventKind::Connect => return self.on_connect(e, out),
            EventKind::Accept => return self.on_accept(e, out),
            EventKind::TaskExit => return self.exit(e, out),
            EventKind::Socketpair => self.on_socketpair(&e),
            EventKind::Listen => self.on_listen(&e),
            EventKind::DgramSend => self.on_dgram_send(&e),
            EventKind::DgramConnect => {
                self.upsert(e.inode, actor(&e, e.fd), None, &e);
                self.peer_holders(e.peer_inode)
            }
            EventKind::ConnectFailed => self.listener_for(&e).map_or(Peer::Unknown, Peer::Listener),
            EventKind::Close => {
                if let Some(a) = e.inode.and_then(|i| self.pending.take_accepted(i)) {
                    self.resolve_accept(a, out);
                }
                if let Some(inode) = e.inode {
                    self.never_received(inode, &e, out);
                }
                self.close(&mut e)
            }
            EventKind::FdClose => self.on_fd_close(&e),
            EventKind::FdSent => return self.on_fd_sent(e, out),
            EventKind::FdReceived => return self.on_fd_received(e, out),
            // Made here, never applied.
            EventKind::PassFd => return,
            EventKind::Fork => {
                if let Some(child) = e.child_pid {
                    self.fork(e.pid, child);
                    self.model.processes_mut().fork(e.pid, child);
                }
                Peer::Unknown
            }
            // A tid that is no process we track is a thread: ignore it.
            EventKind::Rename => {
                self.model.processes_mut().exec(e.pid);
                if !self.by_pid.contains_key(&e.pid) {
                    self.comms.remove(&e.pid);
                }
                Peer::Unknown
            }
        };
        out.push(Resolved { event: e, peer });
    }

    /// A descriptor sent: joined to its receipt if that came first, else
    /// reported never received if its receiving socket is already gone,
    /// else it waits for one of the two. Nothing is shown while it waits.
    fn on_fd_sent(&mut self, s: Event, out: &mut Vec<Resolved>) {
        let Some(file) = s.passed.as_ref().map(|p| p.file.file) else { return };
        if let Some(r) = self.passes.take_receipt(file, s.peer_inode) {
            return self.joined(s, r, out);
        }
        // The receiver's close can reach us before the sender's exit hook.
        if let Some(gone) = s.peer_inode.filter(|i| !self.model.contains(*i))
            && let Some(h) = self.graveyard.get(gone).and_then(|hs| hs.first().copied())
        {
            let closer = Holder { fd: None, ..h };
            return self.show_pass(s, Some(false), Peer::Holders(smallvec::smallvec![closer]), out);
        }
        if let Some(oldest) = self.passes.push_send(s) {
            // Its receipt was not seen while PASSES others waited.
            self.show_pass(oldest, None, Peer::Unknown, out);
        }
    }

    /// A descriptor received: joined to its send, shown as one `pass_fd`
    /// named by the sender, with the receiver as its peer. A receipt whose
    /// send has not come waits for it (see `passes`).
    fn on_fd_received(&mut self, r: Event, out: &mut Vec<Resolved>) {
        let Some(file) = r.passed.as_ref().map(|p| p.file.file) else { return };
        self.socket_received(&r);
        match self.passes.take_send(file, r.inode) {
            Some(s) => self.joined(s, r, out),
            None => self.passes.push_receipt(r),
        }
    }

    /// Send `sent` and receipt `r` of one descriptor: one `pass_fd`, at
    /// the receipt's time.
    fn joined(&mut self, mut sent: Event, r: Event, out: &mut Vec<Resolved>) {
        sent.ts_ns = sent.ts_ns.max(r.ts_ns);
        if r.inode.is_some() {
            sent.peer_inode = r.inode;
        }
        let receiver = Holder::of(r.pid, r.comm, r.fd);
        self.show_pass(sent, Some(true), Peer::Holders(smallvec::smallvec![receiver]), out);
    }

    /// A UNIX socket the model knows, received: its receiver holds it from
    /// now on (else the model would learn so only when it acted on it), and
    /// it is no orphan waiting for its release any more.
    fn socket_received(&mut self, r: &Event) {
        let Some(p) = r.passed.as_deref() else { return };
        let inode = p.file.inode;
        if p.file.mode & 0o170000 != 0o140000 || !self.model.contains(inode) {
            return;
        }
        self.orphans.remove(&inode);
        self.by_pid.entry(r.pid).or_default().insert(inode);
        let holder = Holder::of(r.pid, r.comm, r.fd);
        let holders = self.model.holders_mut(inode);
        if !holders.iter().any(|h| h.pid == holder.pid && h.fd == holder.fd) {
            holders.push(holder);
        }
    }

    /// Socket `inode` closes (`e`): what was sent to it and not received
    /// never will be. Named by who closed it.
    fn never_received(&mut self, inode: u64, e: &Event, out: &mut Vec<Resolved>) {
        for mut sent in self.passes.take_sends_to(inode) {
            sent.ts_ns = e.ts_ns;
            let closer = Holder::of(e.pid, e.comm, None);
            self.show_pass(sent, Some(false), Peer::Holders(smallvec::smallvec![closer]), out);
        }
    }

    fn show_pass(&self, mut sent: Event, received: Option<bool>, peer: Peer, out: &mut Vec<Resolved>) {
        sent.kind = EventKind::PassFd;
        if let Some(p) = sent.passed.as_mut() {
            p.received = received;
        }
        // The name of the connection, as other events carry it: the
        // sender's socket's, else its peer's.
        sent.path = [sent.inode, sent.peer_inode]
            .into_iter()
            .flatten()
            .find_map(|i| self.model.get(i).and_then(|s| s.path.clone()));
        out.push(Resolved { event: sent, peer });
    }

    fn peer_holders(&self, inode: Option<u64>) -> Peer {
        self.holders_of(inode).map_or(Peer::Unknown, Peer::Holders)
    }

    fn on_socketpair(&mut self, e: &Event) -> Peer {
        self.upsert(e.inode, actor(e, e.fd), e.peer_inode, e);
        self.upsert(e.peer_inode, actor(e, e.peer_fd), e.inode, e);
        Peer::Holders(smallvec::smallvec![actor(e, e.peer_fd)])
    }

    fn on_listen(&mut self, e: &Event) -> Peer {
        self.upsert(e.inode, actor(e, e.fd), None, e);
        if let Some(i) = e.inode
            && let Some(s) = self.model.get_mut(i)
        {
            s.state = KernelState::Listen;
        }
        if let (Some(p), Some(i)) = (&e.path, e.inode) {
            self.listeners.insert(e.netns, p, i);
        }
        Peer::Unknown
    }

    fn on_connect(&mut self, e: Event, out: &mut Vec<Resolved>) {
        self.upsert(e.inode, actor(&e, e.fd), e.peer_inode, &e);
        // Kept even when the server's end already has an inode (the server
        // accepted before the connect returned): by the time the accept is
        // reported the client may have closed, and the kernel no longer
        // names it.
        if e.sock_type != SockType::Dgram
            && e.peer_sk != 0
            && let Some(i) = e.inode
        {
            self.add_embryo(e.peer_sk, i);
        }
        let peer = self.peer_of_connect(&e);
        let client = e.inode;
        out.push(Resolved { event: e, peer });
        // The accept that came first can now name its client.
        if let Some(a) = client.and_then(|c| self.pending.take_client(c)) {
            self.resolve_accept(a, out);
        }
    }

    fn on_accept(&mut self, mut e: Event, out: &mut Vec<Resolved>) {
        // A client that closed before the accept is no longer the embryo's
        // peer in the kernel; the connect told us who it was.
        let client = self.embryos.remove(&e.sk);
        if e.peer_inode.is_none() {
            e.peer_inode = client;
        }
        // accept() can return before the client's connect() does: wait a
        // little for the connect to name the client.
        if self.holders_of(e.peer_inode).is_none() && e.peer_inode.is_some() {
            if let Some(oldest) = self.pending.push(e) {
                self.resolve_accept(oldest, out);
            }
            return;
        }
        self.resolve_accept(e, out);
    }

    fn on_fd_close(&mut self, e: &Event) -> Peer {
        if let Some(i) = e.inode {
            self.drop_holder(i, e.pid, e.fd);
            let orphaned = self.model.contains(i) && self.model.holders(i).is_empty();
            if orphaned && self.infer_release_on_exit && self.orphans.len() < ORPHANS {
                let next_look_ns = e.ts_ns.saturating_add(ORPHAN_FIRST_LOOK_NS);
                let orphan = Orphan { fd_close: e.clone(), next_look_ns, wait_ns: ORPHAN_FIRST_LOOK_NS };
                self.orphans.insert(i, orphan);
            }
        }
        self.peer_holders(e.inode)
    }

    /// Joins a connect to its later accept. Embryos of connections that are
    /// never accepted (the client closed first and the server never
    /// accepts) are only released with their listener, which the syscall
    /// strategy does not see: past the cap, the dead ones are swept out,
    /// and if the rest still fill it the join is given up (the accept then
    /// names its client from the kernel's peer, if the client lives).
    fn add_embryo(&mut self, sk: u64, client: u64) {
        if self.embryos.len() >= EMBRYOS {
            let model = &self.model;
            self.embryos.retain(|_, c| model.contains(*c));
            if self.embryos.len() >= EMBRYOS / 2 {
                return;
            }
        }
        self.embryos.insert(sk, client);
    }

    fn accept(&mut self, e: &mut Event) -> Peer {
        // An accept that waited for its connect: that connect left an embryo.
        self.embryos.remove(&e.sk);
        self.upsert(e.inode, actor(e, e.fd), e.peer_inode, e);
        if let (Some(client), Some(me)) = (e.peer_inode, e.inode)
            && let Some(c) = self.model.get_mut(client)
        {
            c.peer = Some(me);
        }
        self.holders_of(e.peer_inode).map_or(Peer::Unknown, Peer::Holders)
    }

    /// A waiting accept, resolved with whatever is known now.
    fn resolve_accept(&mut self, mut a: Event, out: &mut Vec<Resolved>) {
        let peer = self.accept(&mut a);
        out.push(Resolved { event: a, peer });
    }

    /// Accepts whose wait is over at `now_ns` (CLOCK_MONOTONIC): called
    /// with every event, and on a timer for a stream that has gone quiet.
    pub(crate) fn expire(&mut self, now_ns: u64, out: &mut Vec<Resolved>) {
        while let Some(a) = self.pending.pop_older_than(now_ns.saturating_sub(ACCEPT_WAIT_NS)) {
            self.resolve_accept(a, out);
        }
        self.passes.expire_receipts(now_ns);
    }

    /// Orphaned sockets (see `orphans`) due for a look at `now_ns`, with
    /// their network namespace: the caller asks the kernel whether each
    /// still exists, then calls `release_orphan` or `orphan_lives`.
    pub(crate) fn orphans_due(&self, now_ns: u64) -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = self
            .orphans
            .iter()
            .filter(|(_, o)| o.next_look_ns <= now_ns)
            .filter_map(|(i, _)| Some((*i, netns_of(self.model.get(*i)?))))
            .collect();
        v.sort_unstable();
        v
    }

    /// The orphaned socket `inode` still exists at `now_ns`: look again later.
    pub(crate) fn orphan_lives(&mut self, inode: u64, now_ns: u64) {
        if let Some(o) = self.orphans.get_mut(&inode) {
            o.wait_ns = (o.wait_ns * 2).min(ORPHAN_MAX_WAIT_NS);
            o.next_look_ns = now_ns.saturating_add(o.wait_ns);
        }
    }

    /// The kernel no longer has the orphaned socket `inode`: reports its
    /// release at `now_ns`, naming the process whose fd close left it.
    pub(crate) fn release_orphan(&mut self, inode: u64, now_ns: u64, out: &mut Vec<Resolved>) {
        let Some(orphan) = self.orphans.remove(&inode) else { return };
        let mut close = orphan.fd_close;
        close.kind = EventKind::Close;
        close.ts_ns = now_ns.max(close.ts_ns);
        close.inferred = Some(Inferred::ReleasedLater);
        if let Some(c) = self.released_traffic.remove(&inode) {
            close.traffic = Some(c.traffic);
            close.sent_to = c.sent_to;
        }
        if self.model.contains(inode) {
            self.model.holders_mut(inode).push(Holder::of(close.pid, close.comm, close.fd));
        }
        self.apply(close, out);
    }

    /// At the end of a capture or a replay: what is still waiting.
    pub(crate) fn finish(&mut self, out: &mut Vec<Resolved>) {
        while let Some(a) = self.pending.pop_front() {
            self.resolve_accept(a, out);
        }
    }

    fn fork(&mut self, parent: u32, child: u32) {
        let Some(inodes) = self.by_pid.get(&parent).cloned() else { return };
        for &inode in &inodes {
            if self.model.contains(inode) {
                let holders = self.model.holders_mut(inode);
                let inherited: Holders =
                    holders.iter().filter(|h| h.pid == parent).map(|h| Holder { pid: child, ..*h }).collect();
                holders.extend(inherited);
            }
        }
        self.by_pid.insert(child, inodes);
    }

    /// The process is gone: it holds nothing. Under the tracepoint strategy
    /// the sockets it alone held were released by its exit; report those.
    fn exit(&mut self, e: Event, out: &mut Vec<Resolved>) {
        let mut noted = std::mem::take(&mut self.released_traffic);
        self.comms.remove(&e.pid);
        self.model.processes_mut().exit(e.pid);
        let Some(inodes) = self.by_pid.remove(&e.pid) else { return };
        let mut released = Vec::new();
        for inode in inodes {
            let Some(s) = self.model.get(inode) else { continue };
            let (netns, sock_type) = (netns_of(s), s.sock_type);
            let holders = self.model.holders_mut(inode);
            let fd = holders.iter().find(|h| h.pid == e.pid).and_then(|h| h.fd);
            holders.retain(|h| h.pid != e.pid);
            if holders.is_empty() && self.infer_release_on_exit {
                let mut close = e.clone();
                close.kind = EventKind::Close;
                close.inode = Some(inode);
                close.fd = fd.and_then(|f| i32::try_from(f).ok());
                close.netns = netns;
                close.sock_type = sock_type;
                close.inferred = Some(Inferred::Exit);
                if let Some(c) = noted.remove(&inode) {
                    close.traffic = Some(c.traffic);
                    close.sent_to = c.sent_to;
                }
                // Keep the exiting process as the last holder for the line.
                holders.push(Holder { pid: e.pid, comm: e.comm, fd });
                released.push(close);
            }
        }
        released.sort_by_key(|c| c.inode);
        for c in released {
            self.apply(c, out);
        }
    }

    fn peer_of_connect(&self, e: &Event) -> Peer {
        if let Some(h) = self.holders_of(e.peer_inode) {
            return Peer::Holders(h);
        }
        self.listener_for(e).map_or(Peer::Unknown, Peer::Listener)
    }

    fn close(&mut self, e: &mut Event) -> Peer {
        self.embryos.remove(&e.sk);
        // A receiver that closed first (it read what it waited for and
        // exited) is named from the graveyard and its name at the send.
        for d in &mut e.sent_to {
            d.holder = self.holders_of(Some(d.receiver)).and_then(|h| h.first().copied());
            if let Some(path) = self.model.get(d.receiver).and_then(|s| s.path.clone()) {
                d.path = Some(path);
            }
        }
        let Some(inode) = e.inode else { return Peer::Unknown };
        self.orphans.remove(&inode);
        if let Some(s) = self.model.get(inode) {
            // The kernel may already have cut the peer link (the peer
            // closed first); the model remembers it.
            if e.peer_inode.is_none() {
                e.peer_inode = s.peer_inode();
            }
            if e.path.is_none() {
                e.path.clone_from(&s.path);
            }
            // The syscall strategy reports a close with its identity only.
            if e.netns == 0 {
                e.netns = netns_of(s);
            }
            if e.sock_type == SockType::Other(0) {
                e.sock_type = s.sock_type;
            }
            if s.state == KernelState::Listen
                && let Some(p) = &s.path
            {
                self.listeners.remove(netns_of(s), p);
            }
            let holders = self.model.discard(inode);
            // unix_release_sock does not know the fd; the model does.
            if e.fd.is_none() {
                e.fd = holders.iter().find(|h| h.pid == e.pid).and_then(Holder::event_fd);
            }
            for h in &holders {
                self.by_pid.get_mut(&h.pid).map(|set| set.remove(&inode));
            }
            self.graveyard.bury(inode, holders);
        }
        if let Some(h) = self.holders_of(e.peer_inode) {
            return Peer::Holders(h);
        }
        // A client whose connection was never accepted.
        if e.peer_sk != 0 && self.embryos.contains_key(&e.peer_sk) {
            return self.listener_for(e).map_or(Peer::Unknown, Peer::Listener);
        }
        Peer::Unknown
    }
}

/// Network namespaces are inode numbers, which the kernel keeps in 32 bits
/// (`ns_common.inum`); events carry them so.
fn netns_of(s: &Socket) -> u32 {
    s.netns as u32
}

/// The process an event is about, holding `fd`.
fn actor(e: &Event, fd: Option<i32>) -> Holder {
    Holder::of(e.pid, e.comm, fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Carried, Traffic};

    impl Tracker {
        pub(super) fn applied(&mut self, e: Event) -> Vec<Resolved> {
            let mut out = Vec::new();
            self.apply(e, &mut out);
            out
        }

        fn orphan_released(&mut self, inode: u64, now_ns: u64) -> Vec<Resolved> {
            let mut out = Vec::new();
            self.release_orphan(inode, now_ns, &mut out);
            out
        }

        fn finished(&mut self) -> Vec<Resolved> {
            let mut out = Vec::new();
            self.finish(&mut out);
            out
        }
    }

    fn one(t: &mut Tracker, e: Event) -> Resolved {
        let mut v = t.applied(e);
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn a_release_inferred_at_exit_carries_the_counts_noted_before_it() {
        let mut t = Tracker::new(true);
        let mut pair = ev(EventKind::Socketpair, 1, "p", 10, 11);
        pair.fd = Some(3);
        pair.peer_fd = Some(4);
        t.applied(pair);
        let mut other = ev(EventKind::Socketpair, 5, "q", 20, 21);
        other.fd = Some(3);
        t.applied(other);
        assert_eq!(t.released_by_exit(1), vec![10, 11]);
        let sent = Traffic { bytes_sent: 64, msgs_sent: 1, ..Traffic::default() };
        t.note_released_traffic(10, Carried { traffic: sent, sent_to: Vec::new() });
        t.note_released_traffic(11, Carried::default());
        let out = t.applied(ev(EventKind::TaskExit, 1, "p", 0, 0));
        let got: Vec<_> = out.iter().map(|r| (r.event.inode, r.event.traffic)).collect();
        assert_eq!(got, vec![(Some(10), Some(sent)), (Some(11), Some(Traffic::default()))]);
        // A note the next event does not use is not kept for a later one.
        t.note_released_traffic(20, Carried { traffic: sent, sent_to: Vec::new() });
        t.applied(ev(EventKind::Listen, 7, "r", 30, 0));
        let out = t.applied(ev(EventKind::TaskExit, 5, "q", 0, 0));
        assert_eq!(out.iter().map(|r| r.event.traffic).collect::<Vec<_>>(), vec![None, None]);
        // Without inferring there is nothing to note.
        assert!(Tracker::new(false).released_by_exit(1).is_empty());
    }

    #[test]
    fn fork_close_and_exit_keep_holders_true() {
        let mut t = Tracker::new(true);
        let mut pair = ev(EventKind::Socketpair, 1, "parent", 10, 11);
        pair.fd = Some(3);
        pair.peer_fd = Some(4);
        t.applied(pair);
        let mut fork = ev(EventKind::Fork, 1, "parent", 0, 0);
        fork.child_pid = Some(2);
        t.applied(fork);
        // The parent keeps end 10, the child keeps end 11.
        let mut c = ev(EventKind::FdClose, 1, "parent", 11, 10);
        c.fd = Some(4);
        t.applied(c);
        // The child renamed itself after fork.
        let mut c = ev(EventKind::FdClose, 2, "child", 10, 11);
        c.fd = Some(3);
        t.applied(c);
        let r = one(&mut t, ev(EventKind::Close, 1, "parent", 10, 11));
        assert_eq!(r.peer, Peer::Holders(smallvec::smallvec![Holder { pid: 2, comm: "child".into(), fd: Some(4) }]));
        // The child exits without close(): its end is released by the exit.
        let out = t.applied(ev(EventKind::TaskExit, 2, "parent", 0, 0));
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].event.kind, out[0].event.inode, out[0].event.inferred),
            (EventKind::Close, Some(11), Some(Inferred::Exit))
        );
        assert_eq!(out[0].event.fd, Some(4));
        assert!(t.model.is_empty() && t.by_pid.values().all(|s| s.is_empty()));
    }

    #[test]
    fn a_drop_with_no_fd_named_takes_one_holder_of_that_process() {
        let mut t = Tracker::new(false);
        let mut pair = ev(EventKind::Socketpair, 1, "p", 10, 11);
        pair.fd = Some(3);
        pair.peer_fd = Some(4);
        t.applied(pair);
        // A dup of fd 3, seen as a second holder, then one of the two goes
        // by close_range: the kernel names the file, not the fd.
        let mut dup = ev(EventKind::Accept, 1, "p", 10, 0);
        dup.fd = Some(5);
        t.applied(dup);
        t.applied(Event { fd: None, ..ev(EventKind::FdClose, 1, "p", 10, 11) });
        let r = one(&mut t, ev(EventKind::Close, 1, "p", 11, 10));
        let Peer::Holders(h) = r.peer else { panic!("{:?}", r.peer) };
        assert_eq!(h.len(), 1, "one of the two fds of 10 is still held: {h:?}");
    }

    #[test]
    fn an_orphaned_socket_is_looked_at_then_released() {
        let mut t = Tracker::new(true);
        t.applied(ev(EventKind::Socketpair, 1, "p", 10, 11));
        // The last fd of 10 closed while the file was still referenced.
        let mut c = ev(EventKind::FdClose, 1, "p", 10, 11);
        c.ts_ns = 1_000;
        t.applied(c);
        assert!(t.orphans_due(1_000 + ORPHAN_FIRST_LOOK_NS - 1).is_empty(), "not before its first look");
        let due = 1_000 + ORPHAN_FIRST_LOOK_NS;
        assert_eq!(t.orphans_due(due), vec![(10, 1)]);
        // Still in the kernel (in flight): the next look waits twice as long.
        t.orphan_lives(10, due);
        assert!(t.orphans_due(due + 2 * ORPHAN_FIRST_LOOK_NS - 1).is_empty());
        assert_eq!(t.orphans_due(due + 2 * ORPHAN_FIRST_LOOK_NS), vec![(10, 1)]);
        // Gone: one inferred close, naming whoever closed the last fd.
        let out = t.orphan_released(10, 5_000_000_000);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(
            (r.event.kind, r.event.inode, r.event.inferred),
            (EventKind::Close, Some(10), Some(Inferred::ReleasedLater))
        );
        assert_eq!((r.event.pid, r.event.ts_ns), (1, 5_000_000_000));
        assert!(t.orphans_due(u64::MAX).is_empty() && !t.model.contains(10));
    }

    #[test]
    fn a_recorded_orphan_release_applies_like_the_live_one() {
        let setup = || {
            let mut t = Tracker::new(true);
            t.applied(ev(EventKind::Socketpair, 1, "p", 10, 11));
            let mut c = ev(EventKind::FdClose, 1, "p", 10, 11);
            c.fd = Some(3);
            t.applied(c);
            t
        };
        let live = setup().orphan_released(10, 9_000);
        assert_eq!(live.len(), 1);
        // What the recorder wrote for it, applied as replay does.
        let mut replayed = setup();
        let out = replayed.applied(live[0].event.clone());
        assert_eq!(out, live);
        assert!(replayed.orphans_due(u64::MAX).is_empty() && !replayed.model.contains(10));
    }

    #[test]
    fn an_orphan_held_again_or_closed_is_no_longer_watched() {
        let mut t = Tracker::new(true);
        t.applied(ev(EventKind::Socketpair, 1, "p", 10, 11));
        t.applied(ev(EventKind::FdClose, 1, "p", 10, 11));
        // (The sample socketpair gave the second end no fd.)
        t.applied(Event { fd: None, ..ev(EventKind::FdClose, 1, "p", 11, 10) });
        assert_eq!(t.orphans_due(u64::MAX).len(), 2);
        // Received over SCM_RIGHTS and used: a holder again.
        t.applied(ev(EventKind::Accept, 2, "q", 10, 0));
        t.applied(ev(EventKind::Close, 3, "r", 11, 0));
        assert!(t.orphans_due(u64::MAX).is_empty());
        // Other strategies see every release: nothing to watch.
        let mut t = Tracker::new(false);
        t.applied(ev(EventKind::Socketpair, 1, "p", 10, 11));
        t.applied(ev(EventKind::FdClose, 1, "p", 10, 11));
        assert!(t.orphans_due(u64::MAX).is_empty());
    }

    #[test]
    fn exit_infers_nothing_when_the_kernel_reports_releases() {
        let mut t = Tracker::new(false);
        t.applied(ev(EventKind::Socketpair, 1, "p", 10, 11));
        assert!(t.applied(ev(EventKind::TaskExit, 1, "p", 0, 0)).is_empty());
    }

    #[test]
    fn an_accept_that_returns_before_its_connect_still_names_the_client() {
        let mut t = Tracker::new(true);
        t.applied(ev(EventKind::Listen, 10, "server", 100, 0));
        let mut a = ev(EventKind::Accept, 10, "server", 300, 200);
        a.sk = 0xabc;
        assert!(t.applied(a).is_empty(), "the accept waits for its connect");
        let mut c = ev(EventKind::Connect, 20, "client", 200, 0);
        c.peer_sk = 0xabc;
        let out = t.applied(c);
        assert_eq!(out.iter().map(|r| r.event.kind).collect::<Vec<_>>(), vec![EventKind::Connect, EventKind::Accept]);
        assert_eq!(
            out[1].peer,
            Peer::Holders(smallvec::smallvec![Holder { pid: 20, comm: "client".into(), fd: Some(3) }])
        );
        assert!(t.embryos.is_empty(), "the connection is accepted: the client is no longer shown as pending");
        // One that never gets its connect is shown once its wait is over.
        let mut a = ev(EventKind::Accept, 10, "server", 301, 201);
        a.ts_ns = 1;
        assert!(t.applied(a).is_empty());
        let mut later = ev(EventKind::Socketpair, 30, "other", 400, 401);
        later.ts_ns = 1 + ACCEPT_WAIT_NS + 1;
        let out = t.applied(later);
        assert_eq!((out[0].event.kind, &out[0].peer), (EventKind::Accept, &Peer::Unknown));
        assert!(t.finished().is_empty());
    }

    /// A server (pid 10) listening on inode 100; a client (pid 20, inode
    /// 200) connects, its embryo at 0xabc, and closes before the accept.
    fn client_connected_and_gone(peer_inode_at_connect: u64) -> Tracker {
        let mut t = Tracker::new(true);
        t.applied(ev(EventKind::Listen, 10, "server", 100, 0));
        let mut c = ev(EventKind::Connect, 20, "client", 200, peer_inode_at_connect);
        c.peer_sk = 0xabc;
        t.applied(c);
        t.applied(ev(EventKind::Close, 20, "client", 200, 0));
        t
    }

    /// The server's accept of that embryo as inode 300, reported after the
    /// client's close: the kernel no longer names the client.
    fn late_accept(t: &mut Tracker) -> Resolved {
        let mut a = ev(EventKind::Accept, 10, "server", 300, 0);
        a.sk = 0xabc;
        let r = one(t, a);
        assert_eq!(r.peer, Peer::Holders(smallvec::smallvec![Holder { pid: 20, comm: "client".into(), fd: Some(3) }]));
        r
    }

    #[test]
    fn an_accept_reported_after_its_client_closed_still_names_the_client() {
        // The server accepted before the client's connect returned: the
        // connect already sees the server's inode.
        let mut t = client_connected_and_gone(300);
        assert_eq!(late_accept(&mut t).event.peer_inode, Some(200));
        t.applied(ev(EventKind::Close, 10, "server", 300, 0));
        t.applied(ev(EventKind::Close, 10, "server", 100, 0));
        assert!(t.model.is_empty() && t.embryos.is_empty(), "closed sockets must be evicted");
    }

    #[test]
    fn a_resync_keeps_the_embryo_of_a_client_that_closed_before_the_accept() {
        let mut t = client_connected_and_gone(0);
        // Lost events elsewhere; the kernel still has the listener only.
        let server = Holder { pid: 10, comm: "server".into(), fd: Some(3) };
        t.resync(&snapshot(vec![(100, KernelState::Listen, None, Some("/run/s.sock"), server)]), 1);
        late_accept(&mut t);
    }

    fn passed(kind: EventKind, pid: u32, inode: u64, peer_inode: u64, fd: i32, file: u64) -> Event {
        let mut e = ev(kind, pid, "p", inode, peer_inode);
        e.fd = Some(fd);
        e.path = None;
        let mut p = crate::events::Passed::sample();
        p.file.file = file;
        p.file.inode = 500;
        p.file.mode = 0o140777;
        e.passed = Some(Box::new(p));
        e
    }

    #[test]
    fn a_pass_is_shown_at_its_receipt_or_at_the_receivers_close() {
        let mut t = Tracker::new(true);
        t.applied(ev(EventKind::Socketpair, 1, "p", 100, 200));
        t.applied(ev(EventKind::Socketpair, 1, "p", 500, 501));
        assert!(t.applied(passed(EventKind::FdSent, 1, 100, 200, 5, 0xf1)).is_empty(), "shown when received");
        let r = one(&mut t, passed(EventKind::FdReceived, 2, 200, 100, 7, 0xf1));
        assert_eq!((r.event.kind, r.event.pid, r.event.fd, r.event.inode), (EventKind::PassFd, 1, Some(5), Some(100)));
        assert_eq!(r.peer, Peer::Holders(smallvec::smallvec![Holder { pid: 2, comm: "p".into(), fd: Some(7) }]));
        assert_eq!(r.event.passed.as_ref().and_then(|p| p.received), Some(true));
        assert!(t.model.holders(500).iter().any(|h| h.pid == 2 && h.fd == Some(7)), "the receiver holds the socket");
        // A receipt before its send (the receiver's recvmsg returned first)
        // waits for it.
        assert!(t.applied(passed(EventKind::FdReceived, 2, 200, 100, 8, 0xf3)).is_empty());
        let r = one(&mut t, passed(EventKind::FdSent, 1, 100, 200, 4, 0xf3));
        assert_eq!((r.event.kind, r.event.fd), (EventKind::PassFd, Some(4)));
        assert_eq!(r.peer, Peer::Holders(smallvec::smallvec![Holder { pid: 2, comm: "p".into(), fd: Some(8) }]));
        // Sent, then the receiving end closes unread.
        assert!(t.applied(passed(EventKind::FdSent, 1, 100, 200, 6, 0xf2)).is_empty());
        let out = t.applied(ev(EventKind::Close, 2, "p", 200, 0));
        assert_eq!(out.iter().map(|r| r.event.kind).collect::<Vec<_>>(), [EventKind::PassFd, EventKind::Close]);
        assert_eq!(out[0].event.passed.as_ref().and_then(|p| p.received), Some(false));
        assert_eq!(out[0].event.fd, Some(6));
        // A send whose receiving socket's close came first: never received.
        let r = one(&mut t, passed(EventKind::FdSent, 1, 100, 200, 3, 0xf4));
        assert_eq!(r.event.passed.as_ref().and_then(|p| p.received), Some(false));
        // Named by its last holder the model knew (the socketpair's maker).
        assert_eq!(r.peer, Peer::Holders(smallvec::smallvec![Holder { pid: 1, comm: "p".into(), fd: None }]));
    }

    #[test]
    fn graveyard_is_bounded() {
        let mut t = Tracker::new(true);
        for i in 1..=(crate::follow::graveyard::GRAVEYARD as u64 + 100) {
            t.applied(ev(EventKind::Socketpair, 1, "p", i * 2, i * 2 + 1));
            t.applied(ev(EventKind::Close, 1, "p", i * 2, 0));
            t.applied(ev(EventKind::Close, 1, "p", i * 2 + 1, 0));
        }
        assert!(t.model.is_empty());
        assert!(t.len() <= crate::follow::graveyard::GRAVEYARD, "{} entries", t.len());
    }

    pub(super) fn ev(kind: EventKind, pid: u32, comm: &str, inode: u64, peer_inode: u64) -> Event {
        Event { path: Some("/run/s.sock".into()), ..Event::sample(kind, 1, pid, comm, inode, peer_inode) }
    }

    #[test]
    fn connect_then_accept_names_both_ends_and_close_evicts() {
        let mut t = Tracker::new(true);
        t.applied(ev(EventKind::Listen, 10, "server", 100, 0));
        let mut c = ev(EventKind::Connect, 20, "client", 200, 0);
        c.peer_sk = 0xabc;
        let r = one(&mut t, c);
        assert_eq!(r.peer, Peer::Listener(Holder { pid: 10, comm: "server".into(), fd: Some(3) }));
        let mut a = ev(EventKind::Accept, 10, "server", 300, 200);
        a.sk = 0xabc;
        let r = one(&mut t, a);
        assert_eq!(r.peer, Peer::Holders(smallvec::smallvec![Holder { pid: 20, comm: "client".into(), fd: Some(3) }]));
        // The client closes: the model still knows who was at the other end
        // even though the kernel reported no peer.
        let r = one(&mut t, ev(EventKind::Close, 20, "client", 200, 0));
        assert_eq!(r.event.peer_inode, Some(300));
        assert!(matches!(r.peer, Peer::Holders(ref h) if h[0].pid == 10));
        let r = one(&mut t, ev(EventKind::Close, 10, "server", 300, 0));
        assert!(matches!(r.peer, Peer::Holders(ref h) if h[0].pid == 20), "second close names the first");
        t.applied(ev(EventKind::Close, 10, "server", 100, 0));
        assert!(t.model.is_empty() && t.embryos.is_empty(), "closed sockets must be evicted");
        assert_eq!(t.graveyard.len(), 3);
    }

    /// (inode, state, peer, name, holder)
    pub(super) type Row<'a> = (u64, KernelState, Option<u64>, Option<&'a str>, Holder);

    /// A snapshot of stream sockets in netns 1, one holder each.
    pub(super) fn snapshot(sockets: Vec<Row<'_>>) -> Model {
        let mut holders = crate::holders::HolderMap::default();
        let sockets = sockets
            .into_iter()
            .map(|(inode, state, peer, name, holder)| {
                holders.insert(inode, smallvec::smallvec![holder]);
                Socket {
                    name: name.map(|n| crate::model::SockName::path(n.as_bytes())),
                    ..Socket::sample(inode, state, peer)
                }
            })
            .collect();
        Model::new(sockets, holders)
    }

    #[test]
    fn seeded_sockets_resolve_close_of_a_connection_from_before_start() {
        let mut t = Tracker::new(true);
        let h = |pid, comm: &str| Holder { pid, comm: comm.into(), fd: Some(4) };
        t.seed(&snapshot(vec![
            (1, KernelState::Established, Some(2), None, h(5, "a")),
            (2, KernelState::Established, Some(1), None, h(6, "b")),
        ]));
        let r = one(&mut t, ev(EventKind::Close, 5, "a", 1, 0));
        assert_eq!(r.peer, Peer::Holders(smallvec::smallvec![h(6, "b")]));
    }
}
