//! The consumer side of a capture: raw kernel records are decoded, recorded,
//! applied to the model, filtered and written out, one at a time, with no
//! kernel involved. `follow::run` feeds it from the ring buffer;
//! `cargo xtask bench consume` feeds it a recorded stream.
//!
//! Per-event work is bounded: the model's lookups are by key, what the model
//! resolves goes through one reused vector, and lines are formatted into one
//! reused buffer before they reach the writer.

use std::io::{self, Write};

use unixpeer_common::EventKind;

use super::{FollowOptions, FollowSummary, Recorder, ResyncRecord};
use crate::{
    events::{self, Event},
    follow::{
        Resolved, Tracker,
        render::{self, Clock},
    },
    identity::Processes,
};

/// Bytes of lines gathered before they go to the writer.
const LINES: usize = 64 * 1024;

pub struct Consumer<'a, W: Write> {
    pub tracker: Tracker,
    out: W,
    pub summary: FollowSummary,
    write_error: Option<io::Error>,
    opts: &'a FollowOptions,
    clock: Clock,
    filter: &'a dyn Fn(&Resolved, &Processes) -> bool,
    recorder: Option<&'a mut dyn Recorder>,
    /// What the model resolved from the event at hand.
    resolved: Vec<Resolved>,
    /// Lines formatted since the last write to `out`: one copy per line,
    /// and large writes.
    lines: Vec<u8>,
    /// Records that did not decode, reported once a second.
    malformed: u64,
    paths: events::PathCache,
    metrics: Option<super::metrics::Metrics>,
    /// Whether the kernel counts bytes and messages; if not, the zeros in
    /// its close records mean nothing and are dropped.
    counting: bool,
    /// The kernel's per-socket counts: taken for releases the model
    /// infers, read whole by `--top`.
    released: Option<crate::capture::traffic::TrafficMap>,
    /// `--top`: a refreshed table instead of event lines, and which
    /// connections it shows.
    top: Option<(super::top::Top, &'a ConnectionFilter<'a>)>,
    dgram_pairs: Option<crate::capture::traffic::DgramPairs>,
    /// Receivers each datagram socket sent to by address (its `dgram_send`
    /// events) and the name each was sent to, whose counts its close
    /// takes. Bounded by `SENDERS`.
    sent_to: std::collections::HashMap<u64, Vec<Receiver>>,
    /// The counts last recorded per socket (`sample_counts`): bounded by
    /// the kernel's map, which it mirrors.
    sampled: std::collections::HashMap<u64, events::Traffic>,
}

/// The user's filter on a connection of the model: a socket, its peer.
pub(crate) type ConnectionFilter<'f> = dyn Fn(&crate::model::Model, u64, Option<u64>) -> bool + 'f;

/// A receiver a datagram socket sent to by address: its inode and the
/// name the datagrams went to.
type Receiver = (u64, Option<std::sync::Arc<str>>);

/// Datagram senders whose receivers are remembered; past this, the oldest
/// knowledge is dropped (their closes then lack per-receiver counts).
const SENDERS: usize = 65536;
/// Receivers remembered per sender.
const RECEIVERS: usize = 64;

impl<'a, W: Write> Consumer<'a, W> {
    pub fn new(
        tracker: Tracker,
        out: W,
        opts: &'a FollowOptions,
        clock: Clock,
        filter: &'a dyn Fn(&Resolved, &Processes) -> bool,
        recorder: Option<&'a mut dyn Recorder>,
    ) -> Self {
        Self {
            tracker,
            out,
            summary: FollowSummary::default(),
            write_error: None,
            opts,
            clock,
            filter,
            recorder,
            resolved: Vec::with_capacity(16),
            lines: Vec::with_capacity(LINES + 4096),
            malformed: 0,
            paths: events::PathCache::default(),
            metrics: None,
            counting: true,
            released: None,
            top: None,
            dgram_pairs: None,
            sent_to: std::collections::HashMap::new(),
            sampled: std::collections::HashMap::new(),
        }
    }

    /// Whether a recording samples the open sockets' counts: where the
    /// kernel counts, once a second.
    pub(crate) fn samples_counts(&self) -> bool {
        self.recorder.is_some() && self.counting && self.released.is_some()
    }

    /// Records, at `ts_ns`, the counts of every socket whose counts changed
    /// since the last sample: `--at` then shows what a connection still
    /// open had carried. One pass over the kernel's map (at most its 65,536
    /// sockets) a second.
    pub(crate) fn sample_counts(&mut self, ts_ns: u64) {
        let (Some(rec), Some(map)) = (self.recorder.as_mut(), self.released.as_ref()) else { return };
        let now = map.read_all();
        for (inode, t) in &now {
            if self.sampled.get(inode) != Some(t) {
                rec.counts(ts_ns, *inode, t);
            }
        }
        self.sampled = now.into_iter().collect();
    }

    /// Where to take what datagram sockets sent to each receiver.
    pub(crate) fn set_dgram_pairs(&mut self, pairs: Option<crate::capture::traffic::DgramPairs>) {
        self.dgram_pairs = pairs;
    }

    /// A datagram sender's receivers noted; its close takes their counts.
    fn dgram_bookkeeping(&mut self, e: &mut Event) {
        if self.dgram_pairs.is_none() {
            return;
        }
        match (e.kind, e.inode) {
            (EventKind::DgramSend, Some(sender)) => {
                if self.sent_to.len() >= SENDERS && !self.sent_to.contains_key(&sender) {
                    self.sent_to.clear();
                }
                let receivers = self.sent_to.entry(sender).or_default();
                if let Some(r) = e.peer_inode
                    && receivers.len() < RECEIVERS
                    && !receivers.iter().any(|(known, _)| *known == r)
                {
                    receivers.push((r, e.path.clone()));
                }
            }
            (EventKind::Close, Some(sender)) => e.sent_to = self.take_sent_to(sender),
            _ => {}
        }
    }

    /// What `sender` sent to each receiver it sent to by address, out of
    /// the kernel's map.
    fn take_sent_to(&mut self, sender: u64) -> Vec<events::DgramTotal> {
        let (Some(pairs), Some(receivers)) = (self.dgram_pairs.as_mut(), self.sent_to.remove(&sender)) else {
            return Vec::new();
        };
        receivers
            .into_iter()
            .filter_map(|(receiver, path)| {
                let (bytes, msgs) = pairs.take(sender, receiver)?;
                Some(events::DgramTotal { receiver, bytes, msgs, holder: None, path })
            })
            .collect()
    }

    /// Show the busiest connections instead of events (`--top`), those
    /// `wanted` says yes to.
    pub(crate) fn set_top(&mut self, top: super::top::Top, wanted: &'a ConnectionFilter<'a>) {
        self.top = Some((top, wanted));
    }

    /// `--top`: one refresh from the kernel's counts at `now_ns`.
    pub(crate) fn refresh_top(&mut self, now_ns: u64) {
        let Some((top, wanted)) = self.top.as_mut() else { return };
        let counts = self.released.as_ref().map(|m| m.read_all()).unwrap_or_default();
        top.refresh(&mut self.lines, counts, (self.tracker.model(), *wanted), now_ns, self.opts.json);
        self.spill();
    }

    /// Whether the kernel counts bytes and messages, and where to take the
    /// counts of releases the model infers.
    pub(crate) fn set_traffic(&mut self, counting: bool, released: Option<crate::capture::traffic::TrafficMap>) {
        self.counting = counting;
        self.released = released;
    }

    /// Count what is shown in Prometheus metrics too (`--metrics`).
    pub(crate) fn set_metrics(&mut self, metrics: super::metrics::Metrics) {
        self.metrics = Some(metrics);
    }

    /// The counts so far, for the next scrapes.
    pub(crate) fn publish_metrics(&mut self) {
        if let Some(m) = self.metrics.as_mut() {
            m.publish(&self.summary, &self.tracker);
        }
    }

    /// Stop once `--count` lines were printed, or `--top` made its
    /// `--iterations`.
    pub(crate) fn done(&self) -> bool {
        self.opts.count.is_some_and(|c| self.summary.printed >= c)
            || self.top.as_ref().is_some_and(|(t, _)| t.finished())
    }

    /// One record as the ring buffer hands it over.
    pub fn record(&mut self, bytes: &[u8]) {
        match events::decode_cached(bytes, &mut self.paths) {
            Ok(mut e) => {
                if !self.counting {
                    e.traffic = None;
                }
                self.event(e)
            }
            Err(e) => {
                if self.malformed == 0 {
                    log::warn!("dropping malformed kernel record: {e}");
                }
                self.malformed += 1;
            }
        }
    }

    /// One decoded kernel event: recorded first, so that a replay rebuilds
    /// the same model, then applied and shown.
    pub(crate) fn event(&mut self, mut e: Event) {
        self.summary.received += 1;
        self.dgram_bookkeeping(&mut e);
        // Bookkeeping events name processes the model already met (or, for
        // a rename, threads): only socket events bring new ones.
        if !matches!(e.kind, EventKind::TaskExit | EventKind::Fork | EventKind::Rename) {
            self.tracker.observe(e.pid);
        }
        if self.tracker.processes().has_learnt() {
            let learnt = self.tracker.processes_mut().take_learnt();
            if let Some(rec) = self.recorder.as_mut() {
                for (pid, id) in learnt {
                    rec.process(pid, id);
                }
            }
        }
        if e.kind == EventKind::TaskExit {
            self.note_released_by_exit(e.pid);
        }
        if let Some(rec) = self.recorder.as_mut() {
            rec.event(&e);
        }
        let mut resolved = std::mem::take(&mut self.resolved);
        self.tracker.apply(e, &mut resolved);
        self.emit_all(&mut resolved);
        self.resolved = resolved;
    }

    /// The kernel saw no release of the sockets this exit leaves without a
    /// holder: their counts are still in its map. Noted for the model, and
    /// recorded before the exit, so that a replay infers the same closes.
    fn note_released_by_exit(&mut self, pid: u32) {
        if self.released.is_none() {
            return;
        }
        for inode in self.tracker.released_by_exit(pid) {
            let traffic = self.released.as_mut().map(|m| m.take(inode)).unwrap_or_default();
            let carried = events::Carried { traffic, sent_to: self.take_sent_to(inode) };
            if let Some(rec) = self.recorder.as_mut() {
                rec.released_traffic(inode, &carried);
            }
            self.tracker.note_released_traffic(inode, carried);
        }
    }

    /// Accepts whose wait for their connect is over at `now_ns`.
    pub(crate) fn expire(&mut self, now_ns: u64) {
        let mut resolved = std::mem::take(&mut self.resolved);
        self.tracker.expire(now_ns, &mut resolved);
        self.emit_all(&mut resolved);
        self.resolved = resolved;
    }

    /// At the end: whatever still waits.
    pub fn finish(&mut self) {
        let mut resolved = std::mem::take(&mut self.resolved);
        self.tracker.finish(&mut resolved);
        self.emit_all(&mut resolved);
        self.resolved = resolved;
    }

    /// An event the model deduced (an orphan's release): recorded like a
    /// kernel event, since a replay cannot deduce it again.
    fn deduced(&mut self, resolved: &mut Vec<Resolved>) {
        for r in resolved.iter() {
            if let Some(rec) = self.recorder.as_mut() {
                rec.event(&r.event);
            }
        }
        self.emit_all(resolved);
    }

    fn emit_all(&mut self, resolved: &mut Vec<Resolved>) {
        // By reference: a resolved event is a few hundred bytes, not worth
        // moving again.
        for r in resolved.iter() {
            self.emit(r);
        }
        resolved.clear();
    }

    fn emit(&mut self, r: &Resolved) {
        // Bookkeeping events keep the model's holders true; people want
        // them only when asking for detail.
        let bookkeeping =
            matches!(r.event.kind, EventKind::TaskExit | EventKind::Fork | EventKind::FdClose | EventKind::Rename);
        if (bookkeeping && self.opts.verbose < 2) || !(self.filter)(r, self.tracker.processes()) || self.done() {
            return;
        }
        if let Some((top, _)) = self.top.as_mut() {
            if r.event.kind == EventKind::Close {
                top.closed(r);
            }
            return;
        }
        self.summary.printed += 1;
        if let Some(m) = self.metrics.as_mut() {
            m.observe(r);
        }
        if self.opts.quiet {
            return;
        }
        if self.opts.json {
            render::write_json(&mut self.lines, r, &self.clock, self.tracker.processes());
        } else {
            render::write_text(&mut self.lines, r, &self.clock, self.opts.wall_time, self.tracker.processes());
        }
        if self.lines.len() >= LINES {
            self.spill();
        }
    }

    /// The gathered lines to the writer; an error is kept for the caller.
    fn spill(&mut self) {
        if let Err(e) = self.out.write_all(&self.lines)
            && self.write_error.is_none()
        {
            self.write_error = Some(e);
        }
        self.lines.clear();
    }

    /// Everything gathered reaches the writer's target.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.spill();
        self.out.flush()
    }

    /// After a batch: the lines reach the writer's target, or the first
    /// error writing them is returned.
    pub fn finish_batch(&mut self) -> io::Result<()> {
        self.flush()?;
        match self.write_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The first write error since the last call.
    pub(crate) fn take_write_error(&mut self) -> Option<io::Error> {
        self.write_error.take()
    }

    /// Appends a line of the caller's (a lost-events record) in order.
    pub(crate) fn line(&mut self, args: std::fmt::Arguments<'_>) {
        let _ = self.lines.write_fmt(args);
        self.lines.push(b'\n');
    }

    /// Between batches: the recorder may start its next part, seeded with
    /// the model, which has applied every event recorded so far.
    pub(crate) fn rotate(&mut self, now_ns: u64) -> Result<(), super::RecorderError> {
        if let Some(r) = self.recorder.as_mut()
            && r.rotate(now_ns, &self.tracker)?
        {
            // A new part: it gets every socket's counts at the next sample.
            self.sampled.clear();
        }
        Ok(())
    }

    pub fn recorder(&mut self) -> Option<&mut (dyn Recorder + 'a)> {
        self.recorder.as_deref_mut()
    }

    /// Whether lines go out as JSON (and so do lost and resync records).
    pub(crate) fn json_out(&self) -> bool {
        self.opts.json && !self.opts.quiet
    }

    pub(crate) fn verbose(&self) -> u8 {
        self.opts.verbose
    }

    /// Makes the model agree with the kernel (see `Tracker::resync`).
    /// Accepts still waiting for a connect stop waiting first, so that a
    /// replay of the recording, which does the same at the resync record,
    /// ends up with the same model.
    pub(crate) fn resync(&mut self, kernel: &crate::model::Model, netns: u32) -> (u64, u64) {
        self.finish();
        self.tracker.resync(kernel, netns)
    }

    /// Says that the model was checked against the kernel, and what changed.
    pub(crate) fn resynced(&mut self, r: &ResyncRecord) -> io::Result<()> {
        self.summary.resyncs += 1;
        eprintln!(
            "unixtrace: resynchronized with the kernel after {} lost events: {} sockets gone, {} missed, {} tracked",
            r.lost, r.gone, r.found, r.sockets
        );
        if self.json_out() {
            writeln!(self.lines, "{}", render::resync_json(r))?;
        }
        Ok(())
    }

    /// Reports the release of orphaned sockets (see `Tracker::orphans_due`)
    /// the kernel no longer has. Only our own network namespace can be
    /// asked; the others' orphans stay unreported. `all`: every orphan,
    /// due or not, as the capture stops.
    pub(crate) fn release_orphans(&mut self, own_netns: Option<u32>, now: u64, all: bool) {
        let Some(own_netns) = own_netns else { return };
        let mut resolved = std::mem::take(&mut self.resolved);
        let due_by = if all { u64::MAX } else { now };
        for (inode, netns) in self.tracker.orphans_due(due_by) {
            if netns != own_netns {
                // Cannot be asked from here: back off like a live one
                // rather than collect it again every tick.
                self.tracker.orphan_lives(inode, now);
                continue;
            }
            match crate::diag::exists(inode) {
                Ok(true) => self.tracker.orphan_lives(inode, now),
                Ok(false) => {
                    if let Some(map) = self.released.as_mut() {
                        let traffic = map.take(inode);
                        let carried = events::Carried { traffic, sent_to: self.take_sent_to(inode) };
                        self.tracker.note_released_traffic(inode, carried);
                    }
                    self.tracker.release_orphan(inode, now, &mut resolved);
                    self.deduced(&mut resolved);
                }
                Err(e) => {
                    log::debug!("cannot look up orphaned socket {inode}: {e}");
                    break;
                }
            }
        }
        self.resolved = resolved;
    }

    /// Records that did not decode since the last call.
    pub(crate) fn take_malformed(&mut self) -> u64 {
        std::mem::take(&mut self.malformed)
    }
}
