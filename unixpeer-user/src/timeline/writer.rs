//! Recording: lines are built in one reused buffer and handed to the file
//! (or the zstd encoder) in large writes, from the event loop itself.
//!
//! Crash safety: everything handed over before a flush is in the file as
//! whole lines, so a reader after `kill -9` sees at worst one partial last
//! line. Under zstd, a flush ends the frame: each second of recording is a
//! complete, checksummed frame that decodes without the ones after it.
//!
//! Rotation (`--rotate`, see `rotate.rs`): between two batches of events,
//! when the part is old or large enough, it gets its end record and is
//! closed, and the next part begins with a header and the live model as
//! seeds. Every event is in exactly one part: the ones the model had
//! applied before the rotation in the old, the rest in the new.

use std::{
    cell::RefCell,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::{
    TimelineError,
    format::{self, Header, SeedRecord},
    rotate::{self, Rotation},
};
use crate::{
    capture::Chosen,
    events::Event,
    follow::render::{Clock, clock_ns},
    follow::{FollowSummary, Recorder, RecorderError, Tracker},
    model::Model,
};

/// Lines pile up here until this many bytes, then go out in one write.
const CHUNK: usize = 256 * 1024;
/// zstd's fast level -3: the recorder must keep up with the capture on one
/// core, and -3 still shrinks these lines about thirteenfold (a
/// 200,000-connection loop: 314.6 MB of lines, 24.5 MB compressed).
const ZSTD_LEVEL: i32 = -3;

enum Sink {
    Plain(Counted),
    /// `None` only while a frame is being finished.
    Zstd(Option<zstd::Encoder<'static, Counted>>),
}

impl Sink {
    fn new(file: File, compressed: bool) -> io::Result<Self> {
        let file = Counted { file, bytes: 0 };
        Ok(if compressed { Self::Zstd(Some(encoder(file)?)) } else { Self::Plain(file) })
    }

    /// Bytes in the file so far.
    fn bytes(&self) -> u64 {
        match self {
            Self::Plain(f) => f.bytes,
            Self::Zstd(enc) => enc.as_ref().map_or(0, |e| e.get_ref().bytes),
        }
    }
}

/// The file, counting what it was given: `--rotate SIZE` without a stat.
struct Counted {
    file: File,
    bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

pub struct TimelineWriter {
    path: PathBuf,
    sink: Sink,
    buf: Vec<u8>,
    /// The first write error; reported at the next flush so the event
    /// path stays infallible and cheap.
    error: Option<io::Error>,
    /// Written records, for `-v` and the end record.
    pub events: u64,
    lost: u64,
    rotating: Option<Rotating>,
}

/// A recording in parts.
struct Rotating {
    /// The `-w` name the parts are named after.
    base: PathBuf,
    rotation: Rotation,
    force: bool,
    /// The current part's file number (see `rotate.rs`).
    number: u64,
    /// The current part's header, once written: the next one's template.
    header: Option<Header>,
    /// Events and lost events of the current part, for its end record.
    events: u64,
    lost: u64,
    /// Parts written, the current one included.
    parts: u64,
}

impl TimelineWriter {
    /// Creates `path` (see [`create_private`]); `.zst` means compressed.
    pub fn create(path: &Path, force: bool) -> Result<Self, TimelineError> {
        let sink = open_sink(path, force)?;
        Ok(Self {
            path: path.to_owned(),
            sink,
            buf: Vec::with_capacity(CHUNK + 4096),
            error: None,
            events: 0,
            lost: 0,
            rotating: None,
        })
    }

    /// A recording in parts named after `base` (see `rotate.rs`); the
    /// first is created now, numbered after any part of `base` already
    /// there. Compressed when `base` ends in `.zst`.
    pub fn create_rotating(base: &Path, force: bool, rotation: Rotation) -> Result<Self, TimelineError> {
        let number =
            rotate::next_number(base).map_err(|source| TimelineError::Open { path: base.to_owned(), source })?;
        let path = rotate::part_path(base, number, clock_ns(libc::CLOCK_REALTIME).into());
        // The part keeps the name's extensions, `.zst` included.
        let mut w = Self::create(&path, force)?;
        w.rotating = Some(Rotating {
            base: base.to_owned(),
            rotation,
            force,
            number,
            header: None,
            events: 0,
            lost: 0,
            parts: 1,
        });
        w.keep();
        Ok(w)
    }

    /// The file being written (under `--rotate`, the current part).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parts written so far under `--rotate` (the current one included).
    pub fn parts(&self) -> Option<u64> {
        self.rotating.as_ref().map(|r| r.parts)
    }

    pub fn header(&mut self, h: &Header) -> Result<(), TimelineError> {
        if let Some(r) = &mut self.rotating {
            r.header = Some(h.clone());
        }
        let line = serde_json::to_vec(h).map_err(|e| write_error(&self.path, e.into()))?;
        self.buf.extend_from_slice(&line);
        self.buf.push(b'\n');
        self.flush()
    }

    /// The initial snapshot, then the marker that ends it.
    pub fn seeds(&mut self, model: &Model) -> Result<(), TimelineError> {
        self.seed_records(SeedRecord::from_model(model))
    }

    fn seed_records(&mut self, seeds: Vec<SeedRecord>) -> Result<(), TimelineError> {
        for s in seeds {
            format::write_seed(&mut self.buf, &s).map_err(|e| write_error(&self.path, e.into()))?;
            self.spill();
        }
        self.buf.extend_from_slice(format::SEEDS_DONE);
        self.flush()
    }

    pub fn event(&mut self, e: &Event) {
        format::write_event(&mut self.buf, e);
        self.events += 1;
        if let Some(r) = &mut self.rotating {
            r.events += 1;
        }
        if self.buf.len() >= CHUNK {
            self.spill();
        }
    }

    /// Who a process is, before the events that name it.
    pub(crate) fn process(&mut self, pid: u32, id: &crate::identity::Identity) {
        if let Err(e) = format::write_process(&mut self.buf, pid, id) {
            log::warn!("cannot record the identity of process {pid}: {e}");
        }
    }

    pub(crate) fn released_traffic(&mut self, inode: u64, carried: &crate::events::Carried) {
        format::write_released_traffic(&mut self.buf, inode, carried);
    }

    pub(crate) fn counts(&mut self, ts_ns: u64, inode: u64, traffic: &crate::events::Traffic) {
        format::write_counts(&mut self.buf, ts_ns, inode, traffic);
    }

    pub(crate) fn lost(&mut self, ts_ns: u64, count: u64) {
        self.lost += count;
        if let Some(r) = &mut self.rotating {
            r.lost += count;
        }
        format::write_lost(&mut self.buf, ts_ns, count);
    }

    /// The seeds of the check (`seeds`) follow.
    pub(crate) fn resync(&mut self, ts_ns: u64, lost: u64, netns: u32) {
        format::write_resync(&mut self.buf, ts_ns, lost, netns);
    }

    /// Hands the buffer to the file or encoder, keeping any error for later.
    fn spill(&mut self) {
        if self.buf.is_empty() || self.error.is_some() {
            self.buf.clear();
            return;
        }
        let res = match &mut self.sink {
            Sink::Plain(f) => f.write_all(&self.buf),
            Sink::Zstd(Some(enc)) => enc.write_all(&self.buf),
            Sink::Zstd(None) => Ok(()),
        };
        self.buf.clear();
        if let Err(e) = res {
            self.error = Some(e);
        }
    }

    /// Puts everything recorded so far into the file as whole lines (and
    /// under zstd, complete frames).
    pub fn flush(&mut self) -> Result<(), TimelineError> {
        self.spill();
        if self.error.is_none()
            && let Sink::Zstd(slot) = &mut self.sink
            && let Some(enc) = slot.take()
        {
            match enc.finish().and_then(encoder) {
                Ok(next) => *slot = Some(next),
                Err(e) => self.error = Some(e),
            }
        }
        match self.error.take() {
            Some(e) => Err(write_error(&self.path, e)),
            None => Ok(()),
        }
    }

    /// The end record and a last flush: a file without one was cut off.
    /// A part's end record counts the events recorded into it and lost
    /// while it was written.
    pub fn finish(&mut self, received: u64) -> Result<(), TimelineError> {
        self.end_record(clock_ns(libc::CLOCK_MONOTONIC), received);
        self.flush()
    }

    fn end_record(&mut self, ts_ns: u64, received: u64) {
        let (received, lost) = match &self.rotating {
            Some(r) => (r.events, r.lost),
            None => (received, self.lost),
        };
        format::write_end(&mut self.buf, ts_ns, received, lost);
    }

    /// Whether the current part is due to end at `now_ns`.
    fn due(&self, now_ns: u64) -> bool {
        let Some(r) = &self.rotating else { return false };
        let Some(h) = &r.header else { return false };
        let old = r
            .rotation
            .every
            .is_some_and(|d| now_ns.saturating_sub(h.start_mono_ns) >= u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let large = r.rotation.size.is_some_and(|s| self.sink.bytes() + self.buf.len() as u64 >= s);
        old || large
    }

    /// Between two events, under `--rotate`: when the part is due, ends it
    /// and begins the next with a header and `seeds()`, the live model as
    /// it stands, then applies `--keep`. Says whether it rotated.
    pub fn rotate(&mut self, now_ns: u64, seeds: impl FnOnce() -> Vec<SeedRecord>) -> Result<bool, TimelineError> {
        if !self.due(now_ns) {
            return Ok(false);
        }
        let Some(r) = &self.rotating else { return Ok(false) };
        let (Some(header), base, force, number) = (r.header.clone(), r.base.clone(), r.force, r.number + 1) else {
            return Ok(false);
        };
        self.end_record(now_ns, 0);
        self.close()?;
        let next = header.next_part(now_ns);
        let path = rotate::part_path(&base, number, next.start_wall_ns);
        self.sink = open_sink(&path, force)?;
        self.path = path;
        if let Some(r) = &mut self.rotating {
            r.number = number;
            r.events = 0;
            r.lost = 0;
            r.parts += 1;
        }
        self.header(&next)?;
        self.seed_records(seeds())?;
        self.keep();
        Ok(true)
    }

    /// The current part's last bytes reach its file, which is closed.
    fn close(&mut self) -> Result<(), TimelineError> {
        self.spill();
        if let Sink::Zstd(slot) = &mut self.sink
            && let Some(enc) = slot.take()
            && let Err(e) = enc.finish()
        {
            self.error.get_or_insert(e);
        }
        match self.error.take() {
            Some(e) => Err(write_error(&self.path, e)),
            None => Ok(()),
        }
    }

    /// `--keep N`: the oldest parts beyond the N newest go.
    fn keep(&self) {
        let Some(r) = &self.rotating else { return };
        let Some(keep) = r.rotation.keep else { return };
        for p in rotate::prune(&r.base, keep) {
            log::info!("--keep {keep}: deleted {}", crate::output::escape::path(&p));
        }
    }
}

/// Creates `path`, compressed when it ends in `.zst`.
fn open_sink(path: &Path, force: bool) -> Result<Sink, TimelineError> {
    let file = create_private(path, force)?;
    let compressed = path.extension().is_some_and(|e| e == "zst");
    Sink::new(file, compressed).map_err(|e| write_error(path, e))
}

impl Drop for TimelineWriter {
    /// Error paths leave without `finish`: what was recorded still lands.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Creates `path` with mode 0600: recordings and their pictures name
/// processes and paths. An existing file is only replaced with `force`.
pub(crate) fn create_private(path: &Path, force: bool) -> Result<File, TimelineError> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let file = opts.open(path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => TimelineError::Exists { path: path.to_owned() },
        _ => TimelineError::Open { path: path.to_owned(), source },
    })?;
    // An overwritten file keeps its old mode unless told; a device
    // (`-o /dev/stdout`) is not ours to change.
    let meta = file.metadata().map_err(|source| TimelineError::Open { path: path.to_owned(), source })?;
    if meta.is_file() {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|source| TimelineError::Open { path: path.to_owned(), source })?;
    }
    Ok(file)
}

fn encoder(file: Counted) -> io::Result<zstd::Encoder<'static, Counted>> {
    let mut enc = zstd::Encoder::new(file, ZSTD_LEVEL)?;
    // A checksum per frame tells a corrupted frame from a good one.
    enc.include_checksum(true)?;
    Ok(enc)
}

fn write_error(path: &Path, source: io::Error) -> TimelineError {
    TimelineError::Write { path: path.to_owned(), source }
}

/// The follow loop's view of a writer that the snapshot step (which writes
/// the seeds) shares with it.
impl Recorder for &RefCell<TimelineWriter> {
    fn start(&mut self, chosen: &Chosen, clock: &Clock, infer_release_on_exit: bool) -> Result<(), RecorderError> {
        let header = Header::new(chosen.backend, &chosen.why, infer_release_on_exit, clock);
        Ok(self.borrow_mut().header(&header)?)
    }

    fn event(&mut self, e: &Event) {
        self.borrow_mut().event(e);
    }

    fn process(&mut self, pid: u32, id: &crate::identity::Identity) {
        self.borrow_mut().process(pid, id);
    }

    fn released_traffic(&mut self, inode: u64, carried: &crate::events::Carried) {
        self.borrow_mut().released_traffic(inode, carried);
    }

    fn lost(&mut self, ts_ns: u64, count: u64) {
        self.borrow_mut().lost(ts_ns, count);
    }

    fn resync(&mut self, ts_ns: u64, lost: u64, netns: u32) {
        self.borrow_mut().resync(ts_ns, lost, netns);
    }

    fn flush(&mut self) -> Result<(), RecorderError> {
        Ok(self.borrow_mut().flush()?)
    }

    fn counts(&mut self, ts_ns: u64, inode: u64, traffic: &crate::events::Traffic) {
        self.borrow_mut().counts(ts_ns, inode, traffic);
    }

    fn rotate(&mut self, now_ns: u64, tracker: &Tracker) -> Result<bool, RecorderError> {
        Ok(self.borrow_mut().rotate(now_ns, || SeedRecord::from_tracker(tracker))?)
    }

    fn finish(&mut self, summary: &FollowSummary) -> Result<(), RecorderError> {
        Ok(self.borrow_mut().finish(summary.received)?)
    }
}

#[cfg(test)]
mod tests {
    use unixpeer_common::EventKind;

    use super::*;
    use crate::follow::{Peer, Resolved};
    use crate::timeline::{
        reader::Reader,
        replay::{Replay, Step, tests::event},
    };

    const S: u64 = 1_000_000_000;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("unixtrace-writer-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Records a listener (seeded), a connection made in the first part and
    /// closed in the second, as the live loop does: each event recorded,
    /// then applied; the rotation between them.
    fn record_in_two_parts(base: &Path, keep: Option<usize>) -> Vec<PathBuf> {
        record_in_parts(base, keep, &[(2, 2 * S + S / 2)])
    }

    /// The same, rotating again before the last close.
    fn record_in_three_parts(base: &Path) -> Vec<PathBuf> {
        record_in_parts(base, None, &[(2, 2 * S + S / 2), (3, 4 * S + S / 2)])
    }

    /// Rotations due before event `i` at `now`.
    fn record_in_parts(base: &Path, keep: Option<usize>, rotations: &[(usize, u64)]) -> Vec<PathBuf> {
        let rotation = Rotation { every: Some(std::time::Duration::from_secs(2)), size: None, keep };
        let mut w = TimelineWriter::create_rotating(base, false, rotation).unwrap();
        let clock = Clock { start_mono_ns: 0, wall_offset_ns: 1_796_362_492_000_000_000 };
        w.header(&Header::new(crate::capture::Strategy::Tracepoint, "test", true, &clock)).unwrap();
        let listener = SeedRecord {
            inode: 100,
            peer: None,
            sock_type: crate::model::SockType::Stream,
            state: crate::model::KernelState::Listen,
            path: Some("/run/app.sock".into()),
            netns: 1,
            uid: Some(0),
            rq: None,
            icons: vec![],
            shutdown: 0,
            vfs: None,
            holders: vec![crate::follow::Holder { pid: 10, comm: "server".into(), fd: Some(3) }],
            processes: Vec::new(),
        };
        let model = SeedRecord::model(&[listener]);
        w.seeds(&model).unwrap();
        let mut tracker = Tracker::new(true);
        tracker.seed(&model);
        let mut connect = event(EventKind::Connect, 1, 20, "client", 200);
        connect.peer_sk = 0xabc;
        let mut accept = event(EventKind::Accept, 1, 10, "server", 300);
        accept.sk = 0xabc;
        accept.fd = Some(4);
        let closes = [event(EventKind::Close, 3, 20, "client", 200), event(EventKind::Close, 4, 10, "server", 300)];
        let mut out = Vec::new();
        for (i, e) in [connect, accept].into_iter().chain(closes).enumerate() {
            for &(_, now) in rotations.iter().filter(|r| r.0 == i) {
                assert!(!w.rotate(now - S, || SeedRecord::from_tracker(&tracker)).unwrap(), "not due yet");
                assert!(w.rotate(now, || SeedRecord::from_tracker(&tracker)).unwrap());
            }
            w.event(&e);
            tracker.apply(e, &mut out);
        }
        w.finish(4).unwrap();
        assert_eq!(w.events, 4);
        assert_eq!(w.parts(), Some(rotations.len() as u64 + 1));
        drop(w);
        // The parts there, this capture's last.
        rotate::parts(base).unwrap().into_iter().map(|(_, p)| p).collect()
    }

    fn replayed(paths: &[PathBuf]) -> Vec<Resolved> {
        let mut r = Replay::open(paths).unwrap();
        let mut got = Vec::new();
        r.run::<TimelineError>(None, &mut |s| {
            if let Step::Event(e, _) = s {
                got.push(e.clone());
            }
            Ok(())
        })
        .unwrap();
        assert!(r.reader.take_warnings().is_empty());
        got
    }

    fn peer_comm(r: &Resolved) -> String {
        match &r.peer {
            Peer::Holders(h) => h[0].comm.to_string(),
            Peer::Listener(h) => h.comm.to_string(),
            Peer::Unknown => "?".into(),
        }
    }

    #[test]
    fn each_part_replays_alone_and_the_parts_replay_as_one() {
        for name in ["t.jsonl", "t.jsonl.zst"] {
            let dir = scratch(name);
            let parts = record_in_two_parts(&dir.join(name), None);
            assert_eq!(parts.len(), 2, "{parts:?}");
            assert!(parts.iter().all(|p| p.to_string_lossy().ends_with(&name[1..])), "{parts:?}");
            let second = Reader::open(&parts[1]).unwrap().header;
            assert_eq!((second.part, second.start_mono_ns), (1, 2 * S + S / 2));
            let first = Reader::open(&parts[0]).unwrap().header;
            assert_eq!(first.capture_id, second.capture_id);
            assert!(first.capture_id.is_some());

            // As one: every event once, both ends named.
            let all = replayed(&parts);
            let seen: Vec<(EventKind, String)> = all.iter().map(|r| (r.event.kind, peer_comm(r))).collect();
            assert_eq!(
                seen,
                [
                    (EventKind::Connect, "server".into()),
                    (EventKind::Accept, "client".into()),
                    (EventKind::Close, "server".into()),
                    (EventKind::Close, "client".into())
                ],
                "{name}"
            );
            // The second part alone: the connection open at the rotation
            // is named on both closes, from the seeds of the live model.
            let alone = replayed(&parts[1..]);
            let seen: Vec<(EventKind, String)> = alone.iter().map(|r| (r.event.kind, peer_comm(r))).collect();
            assert_eq!(seen, [(EventKind::Close, "server".into()), (EventKind::Close, "client".into())], "{name}");
            assert_eq!(alone[0].event.path.as_deref(), Some("/run/app.sock"));

            // Out of order, or a part missing, or another capture's: refused.
            let back = [parts[1].clone(), parts[0].clone()];
            let e = Replay::open(&back).err().unwrap().to_string();
            assert!(e.contains("give the parts in recording order"), "{e}");
            let more = record_in_two_parts(&dir.join(name), Some(3));
            assert_eq!(more.len(), 3, "--keep 3 left the newest three: {more:?}");
            assert!(!more.contains(&parts[0]) && more.contains(&parts[1]));
            let e = Replay::open(&more[..2]).err().unwrap().to_string();
            assert!(e.contains("not the same capture"), "{e}");
            // The -w name stands for its newest capture's parts.
            let (set, notes) = rotate::expand(&[dir.join(name)]);
            assert_eq!(set, more[1..], "{notes:?}");
            assert_eq!(notes.len(), 1);
            assert!(notes[0].contains("the 1 parts before it are another capture's"), "{notes:?}");
            // Three parts of one capture read as one.
            let three = record_in_three_parts(&dir.join(name));
            let three = &three[three.len() - 3..];
            let kinds: Vec<EventKind> = replayed(three).iter().map(|r| r.event.kind).collect();
            assert_eq!(kinds, [EventKind::Connect, EventKind::Accept, EventKind::Close, EventKind::Close], "{name}");
            let e = Replay::open(&[parts[0].clone(), more[2].clone()]).err().unwrap().to_string();
            assert!(e.contains("not the same capture") || e.contains("No such file"), "{e}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_gap_between_parts_is_named() {
        let dir = scratch("gap");
        let base = dir.join("g.jsonl");
        let parts = record_in_two_parts(&base, None);
        // A third part, then the middle one taken away.
        let text = std::fs::read_to_string(&parts[1]).unwrap();
        let third = rotate::part_path(&base, 2, 0);
        std::fs::write(&third, text.replacen("\"part\":1", "\"part\":2", 1)).unwrap();
        let e = Replay::open(&[parts[0].clone(), third]).err().unwrap().to_string();
        assert!(e.contains("the parts between are missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
