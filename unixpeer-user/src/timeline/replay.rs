//! Replay: the recorded seeds and raw events go through a fresh live model,
//! exactly as they did while recording, so every line comes out resolved
//! the same way.

use std::collections::HashSet;
use std::path::PathBuf;

use unixpeer_common::EventKind;

use super::{
    TimelineError,
    format::{Record, SeedRecord},
    reader::Reader,
};
use crate::{
    follow::ResyncRecord,
    follow::{Resolved, Tracker},
    identity::Processes,
    model::Model,
};

/// One thing a replay produces, in recorded order.
pub(crate) enum Step<'a> {
    /// With who the processes are as the event leaves them.
    Event(&'a Resolved, &'a Processes),
    Lost {
        ts_ns: u64,
        count: u64,
    },
    /// The model was checked against the kernel after lost events.
    Resync(&'a ResyncRecord),
}

pub struct Replay {
    pub(crate) reader: Reader,
    pub(crate) tracker: Tracker,
    /// A record read ahead while looking for the end of the seeds or of `--at`.
    ahead: Option<Record>,
    /// Sockets seen closing: a peer pointing at one of them is gone.
    closed: HashSet<u64>,
    pub(crate) events: u64,
    /// Time of the last record read: where the recording ends so far.
    pub(crate) last_ts: u64,
    /// What the model resolved from one record, reused.
    resolved: Vec<Resolved>,
}

impl Replay {
    /// Opens the file (or the parts of a rotated recording, as one
    /// timeline) and loads its seeds into a fresh model.
    pub(crate) fn open(paths: &[PathBuf]) -> Result<Self, TimelineError> {
        Self::from_reader(Reader::open_set(paths)?)
    }

    pub fn from_reader(reader: Reader) -> Result<Self, TimelineError> {
        let tracker = Tracker::new(reader.header.infer_release_on_exit);
        let last_ts = reader.header.start_mono_ns;
        let mut r =
            Self { reader, tracker, ahead: None, closed: HashSet::new(), events: 0, last_ts, resolved: Vec::new() };
        let mut seeds = Vec::new();
        while let Some(rec) = r.reader.next_record()? {
            match rec {
                Record::Seed(s) => seeds.push(s),
                Record::SeedsDone => break,
                other => {
                    r.ahead = Some(other);
                    break;
                }
            }
        }
        r.tracker.seed(&SeedRecord::model(&seeds));
        Ok(r)
    }

    /// Applies records in order, handing each resolved event to `f`, and
    /// stops before the first event later than `until`.
    pub(crate) fn run<E: From<TimelineError>>(
        &mut self,
        until: Option<u64>,
        f: &mut dyn FnMut(Step<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            let rec = match self.ahead.take() {
                Some(r) => r,
                None => match self.reader.next_record()? {
                    Some(r) => r,
                    None => {
                        // Accepts still waiting for a connect, as live mode
                        // shows them when it stops.
                        let mut out = std::mem::take(&mut self.resolved);
                        self.tracker.finish(&mut out);
                        for r in out.drain(..) {
                            f(Step::Event(&r, self.tracker.processes()))?;
                        }
                        self.resolved = out;
                        return Ok(());
                    }
                },
            };
            let ts = match &rec {
                Record::Event(e) => e.ts_ns,
                Record::Lost { ts_ns, .. }
                | Record::End { ts_ns, .. }
                | Record::Resync { ts_ns, .. }
                | Record::Counts { ts_ns, .. } => *ts_ns,
                Record::Seed(_) | Record::SeedsDone | Record::Process(_) | Record::ReleasedTraffic { .. } => {
                    self.last_ts
                }
            };
            if until.is_some_and(|u| ts > u) {
                self.ahead = Some(rec);
                return Ok(());
            }
            self.last_ts = self.last_ts.max(ts);
            match rec {
                Record::Event(e) => {
                    self.events += 1;
                    let mut out = std::mem::take(&mut self.resolved);
                    self.tracker.apply(e, &mut out);
                    for r in out.drain(..) {
                        if r.event.kind == EventKind::Close
                            && let Some(i) = r.event.inode
                        {
                            self.closed.insert(i);
                        }
                        f(Step::Event(&r, self.tracker.processes()))?;
                    }
                    self.resolved = out;
                }
                Record::Process(p) => self.tracker.processes_mut().learn(p.pid, p.id),
                Record::ReleasedTraffic { inode, carried } => self.tracker.note_released_traffic(inode, carried),
                Record::Counts { inode, traffic, .. } => self.tracker.note_counts(inode, traffic),
                Record::Lost { ts_ns, count } => f(Step::Lost { ts_ns, count })?,
                Record::Resync { ts_ns, lost, netns } => {
                    if let Some((released, r)) = self.resync(ts_ns, lost, netns)? {
                        for a in &released {
                            f(Step::Event(a, self.tracker.processes()))?;
                        }
                        f(Step::Resync(&r))?;
                    }
                }
                // Seeds after events would be a writer bug; they add nothing.
                Record::Seed(_) | Record::SeedsDone | Record::End { .. } => {}
            }
        }
    }

    /// Applies a recorded check against the kernel: its seeds follow, up to
    /// `SeedsDone`. Without them (the check failed while recording) the
    /// model stays as it was, as the live one did.
    /// Accepts still waiting stop waiting first, as they did live; they
    /// are returned to be shown before the resync.
    fn resync(
        &mut self,
        ts_ns: u64,
        lost: u64,
        netns: u32,
    ) -> Result<Option<(Vec<Resolved>, ResyncRecord)>, TimelineError> {
        let mut seeds = Vec::new();
        loop {
            match self.reader.next_record()? {
                Some(Record::Seed(s)) => seeds.push(s),
                Some(Record::SeedsDone) => break,
                other => {
                    self.ahead = other;
                    return Ok(None);
                }
            }
        }
        let mut released = Vec::new();
        self.tracker.finish(&mut released);
        let (gone, found) = self.tracker.resync(&SeedRecord::model(&seeds), netns);
        let sockets = self.tracker.sockets_len() as u64;
        Ok(Some((released, ResyncRecord { ts_ns, lost, netns, gone, found, sockets })))
    }

    /// Whether every record was applied.
    pub(crate) fn exhausted(&self) -> bool {
        self.ahead.is_none() && self.reader.at_end()
    }

    /// The connection table as the model knows it now, in the snapshot's
    /// shape so it prints like a snapshot.
    pub fn model(&self) -> Model {
        self.tracker.table_model(self.events == 0, |inode| self.closed.contains(&inode))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::events::Event;
    use crate::follow::Holder;
    use crate::model::{SockType, Status};
    use crate::timeline::format::{self, Header};

    pub(crate) fn event(kind: EventKind, ts_s: u64, pid: u32, comm: &str, inode: u64) -> Event {
        Event::sample(kind, ts_s * 1_000_000_000, pid, comm, inode, 0)
    }

    /// A small recording: a listener from the snapshot, one client that
    /// connects at 1 s and closes at 3 s, the server closing at 4 s.
    pub(crate) fn recording() -> Vec<u8> {
        let clock = crate::follow::render::Clock { start_mono_ns: 0, wall_offset_ns: 1_795_780_800_000_000_000 };
        let mut out =
            serde_json::to_vec(&Header::new(crate::capture::Strategy::Tracepoint, "test", true, &clock)).unwrap();
        out.push(b'\n');
        let seed = SeedRecord {
            inode: 100,
            peer: None,
            sock_type: SockType::Stream,
            state: crate::model::KernelState::Listen,
            path: Some("/run/app.sock".into()),
            netns: 1,
            uid: Some(0),
            rq: Some((0, 128)),
            icons: vec![],
            shutdown: 0,
            vfs: None,
            holders: vec![Holder { pid: 10, comm: "server".into(), fd: Some(3) }],
            processes: Vec::new(),
        };
        format::write_seed(&mut out, &seed).unwrap();
        out.extend_from_slice(format::SEEDS_DONE);
        let mut c = event(EventKind::Connect, 1, 20, "client", 200);
        c.peer_sk = 0xabc;
        format::write_event(&mut out, &c);
        let mut a = event(EventKind::Accept, 2, 10, "server", 300);
        a.sk = 0xabc;
        a.fd = Some(4);
        format::write_event(&mut out, &a);
        format::write_event(&mut out, &event(EventKind::Close, 3, 20, "client", 200));
        format::write_event(&mut out, &event(EventKind::Close, 4, 10, "server", 300));
        format::write_end(&mut out, 5_000_000_000, 4, 0);
        out
    }

    pub(crate) fn open(bytes: Vec<u8>) -> Replay {
        let reader = Reader::from_reader(std::path::Path::new("test.jsonl"), std::io::Cursor::new(bytes)).unwrap();
        Replay::from_reader(reader).unwrap()
    }

    fn status_of(m: &Model, inode: u64) -> Status {
        m.status(m.get(inode).unwrap_or_else(|| panic!("no socket {inode}")))
    }

    #[test]
    fn the_table_follows_the_recording() {
        let mut r = open(recording());
        let at = |r: &mut Replay, s: u64| {
            r.run::<TimelineError>(Some(s * 1_000_000_000 + 500_000_000), &mut |_| Ok(())).unwrap();
            r.model()
        };
        let m = at(&mut r, 0);
        assert_eq!(m.len(), 1);
        assert_eq!(status_of(&m, 100), Status::Listening);
        assert_eq!(m.get(100).unwrap().rqlen, Some((0, 128)), "the snapshot's rows show in full before any event");
        let m = at(&mut r, 1);
        assert_eq!(status_of(&m, 200), Status::Pending);
        assert_eq!(m.listener_of(200), Some(100));
        let m = at(&mut r, 2);
        assert_eq!(status_of(&m, 200), Status::Connected);
        assert_eq!(m.holders(300)[0].comm.to_string(), "server");
        let m = at(&mut r, 3);
        assert!(m.get(200).is_none());
        assert_eq!(status_of(&m, 300), Status::PeerClosed);
        let m = at(&mut r, 9);
        assert_eq!(m.len(), 1, "only the listener is left");
        assert!(r.reader.saw_end);
    }

    #[test]
    fn replayed_events_name_both_ends() {
        let mut r = open(recording());
        let mut lines = Vec::new();
        r.run::<TimelineError>(None, &mut |s| {
            if let Step::Event(e, _) = s {
                lines.push((crate::events::event_name(e.event.kind), e.peer.clone()));
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(lines.len(), 4);
        assert!(matches!(&lines[0].1, crate::follow::Peer::Listener(h) if h.comm == "server"));
        assert!(matches!(&lines[1].1, crate::follow::Peer::Holders(h) if h[0].comm == "client"));
    }
}
