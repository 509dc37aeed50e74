//! Recording: lines are built in one reused buffer and handed to the file
//! (or the zstd encoder) in large writes, from the event loop itself.
//!
//! Crash safety: everything handed over before a flush is in the file as
//! whole lines, so a reader after `kill -9` sees at worst one partial last
//! line. Under zstd, a flush ends the frame: each second of recording is a
//! complete, checksummed frame that decodes without the ones after it.

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
};
use crate::{
    capture::Chosen,
    events::Event,
    follow::render::{Clock, clock_ns},
    follow::{FollowSummary, Recorder, RecorderError},
    model::Model,
};

/// Lines pile up here until this many bytes, then go out in one write.
const CHUNK: usize = 256 * 1024;
/// zstd's fast level -3: the recorder must keep up with the capture on one
/// core, and -3 still shrinks these lines about thirteenfold (a
/// 200,000-connection loop: 314.6 MB of lines, 24.5 MB compressed).
const ZSTD_LEVEL: i32 = -3;

enum Sink {
    Plain(File),
    /// `None` only while a frame is being finished.
    Zstd(Option<zstd::Encoder<'static, File>>),
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
}

impl TimelineWriter {
    /// Creates `path` (see [`create_private`]); `.zst` means compressed.
    pub fn create(path: &Path, force: bool) -> Result<Self, TimelineError> {
        let file = create_private(path, force)?;
        let compressed = path.extension().is_some_and(|e| e == "zst");
        let sink = if compressed {
            Sink::Zstd(Some(encoder(file).map_err(|e| write_error(path, e))?))
        } else {
            Sink::Plain(file)
        };
        Ok(Self { path: path.to_owned(), sink, buf: Vec::with_capacity(CHUNK + 4096), error: None, events: 0, lost: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&mut self, h: &Header) -> Result<(), TimelineError> {
        let line = serde_json::to_vec(h).map_err(|e| write_error(&self.path, e.into()))?;
        self.buf.extend_from_slice(&line);
        self.buf.push(b'\n');
        self.flush()
    }

    /// The initial snapshot, then the marker that ends it.
    pub fn seeds(&mut self, model: &Model) -> Result<(), TimelineError> {
        for s in SeedRecord::from_model(model) {
            format::write_seed(&mut self.buf, &s).map_err(|e| write_error(&self.path, e.into()))?;
            self.spill();
        }
        self.buf.extend_from_slice(format::SEEDS_DONE);
        self.flush()
    }

    pub fn event(&mut self, e: &Event) {
        format::write_event(&mut self.buf, e);
        self.events += 1;
        if self.buf.len() >= CHUNK {
            self.spill();
        }
    }

    pub(crate) fn lost(&mut self, ts_ns: u64, count: u64) {
        self.lost += count;
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
    pub fn finish(&mut self, received: u64) -> Result<(), TimelineError> {
        format::write_end(&mut self.buf, clock_ns(libc::CLOCK_MONOTONIC), received, self.lost);
        self.flush()
    }
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

fn encoder(file: File) -> io::Result<zstd::Encoder<'static, File>> {
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

    fn lost(&mut self, ts_ns: u64, count: u64) {
        self.borrow_mut().lost(ts_ns, count);
    }

    fn resync(&mut self, ts_ns: u64, lost: u64, netns: u32) {
        self.borrow_mut().resync(ts_ns, lost, netns);
    }

    fn flush(&mut self) -> Result<(), RecorderError> {
        Ok(self.borrow_mut().flush()?)
    }

    fn finish(&mut self, summary: &FollowSummary) -> Result<(), RecorderError> {
        Ok(self.borrow_mut().finish(summary.received)?)
    }
}
