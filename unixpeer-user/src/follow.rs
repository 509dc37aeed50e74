//! `--follow`: capture, snapshot, then one line per event until told to stop.
//!
//! Capture starts before the snapshot so nothing falls between the two;
//! events from that overlap update the same records in the model, which is
//! idempotent, so they are not counted twice.

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};
use unixpeer_common::{EventKind, TaskSocketFd};

use crate::{
    capture::{Capture, CaptureError, CaptureOptions, Chosen, Record},
    events::Event,
    live::{
        Resolved, SeedSocket, Tracker,
        render::{self, Clock},
    },
    privileges,
};

#[derive(Clone, Debug, Default)]
pub struct FollowOptions {
    pub capture: CaptureOptions,
    pub json: bool,
    /// Wall-clock times instead of seconds since start (`-T`).
    pub wall_time: bool,
    pub duration: Option<Duration>,
    /// Stop after this many events were printed.
    pub count: Option<u64>,
    pub verbose: u8,
    /// Print nothing on stdout (`-q`, when recording with `-w`).
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("taking the initial snapshot failed: {0}")]
    Snapshot(String),
    #[error("writing output failed: {0}")]
    Output(#[from] io::Error),
    #[error("cannot install a signal handler: {0}")]
    Signal(io::Error),
    #[error(transparent)]
    Recorder(RecorderError),
}

pub type RecorderError = Box<dyn std::error::Error + Send + Sync>;

/// Gets every raw event before the model does (`-w`), so that a replay
/// rebuilds the same model.
pub trait Recorder {
    /// Once, after the capture started and before the snapshot.
    fn start(&mut self, chosen: &Chosen, clock: &Clock, infer_release_on_exit: bool) -> Result<(), RecorderError>;
    fn event(&mut self, e: &Event);
    fn lost(&mut self, ts_ns: u64, count: u64);
    /// Called at least once a second: what was recorded reaches the file.
    fn flush(&mut self) -> Result<(), RecorderError>;
    fn finish(&mut self, summary: &FollowSummary) -> Result<(), RecorderError>;
}

#[derive(Debug, Default)]
pub struct FollowSummary {
    pub printed: u64,
    pub received: u64,
    pub lost: u64,
}

/// Everything the caller plugs in: the snapshot (printed by the caller and
/// returned as seeds) and the user's output filter.
pub struct Hooks<'a> {
    /// Gets the capture's iterator records (or why they could not be had).
    pub snapshot: &'a mut dyn FnMut(Result<Vec<TaskSocketFd>, String>) -> Result<Vec<SeedSocket>, String>,
    pub filter: &'a dyn Fn(&Resolved) -> bool,
    pub recorder: Option<&'a mut dyn Recorder>,
}

pub async fn run(opts: &FollowOptions, mut hooks: Hooks<'_>) -> Result<FollowSummary, FollowError> {
    // First: a Ctrl-C while the programs load or the snapshot is taken, or
    // right after the ready line, must end the capture cleanly (summary,
    // recording closed) rather than kill the process.
    let mut sigterm = signal(SignalKind::terminate()).map_err(FollowError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(FollowError::Signal)?;
    let mut capture = Capture::start(&opts.capture)?;
    let clock = Clock::now();
    // Only the tracepoint strategy misses releases done by exit().
    let infer = capture.chosen.backend == "tracepoint";
    let mut tracker = Tracker::new(infer);
    if let Some(r) = hooks.recorder.as_mut() {
        r.start(&capture.chosen, &clock, infer).map_err(FollowError::Recorder)?;
    }
    let records = capture.task_socket_fds().map_err(|e| e.to_string());
    for s in (hooks.snapshot)(records).map_err(FollowError::Snapshot)? {
        tracker.seed(s);
    }
    if opts.verbose > 0 {
        eprintln!("unixtrace: backend {} ({})", capture.chosen.backend, capture.chosen.why);
    }
    // Attached and snapshotted: only the lost-event counters may still need
    // a capability, on kernels whose bpf() wants one for map reads. Ask a
    // throwaway thread (capabilities are per thread) whether it can read
    // them with none, and keep CAP_BPF only if it cannot.
    let counters = capture.lost_counters();
    let readable_without_caps = std::thread::scope(|s| {
        s.spawn(|| privileges::drop_all().is_ok() && counters.readable()).join().unwrap_or(false)
    });
    let dropped = if readable_without_caps { privileges::drop_all() } else { privileges::drop_all_but_bpf() };
    match dropped {
        Ok(()) if !readable_without_caps => {
            log::info!("kept CAP_BPF only: this kernel's bpf() needs it to read the lost-event counters")
        }
        Ok(()) => log::debug!("dropped every capability"),
        Err(e) => log::warn!("{e}"),
    }

    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    if opts.quiet {
        // -q: the recording is the only output.
    } else if opts.json {
        let status = serde_json::json!({
            "kind": "capture",
            "backend": capture.chosen.backend,
            "why": capture.chosen.why,
            "start_ts": clock.start_mono_ns,
            "start_time": clock.rfc3339(clock.start_mono_ns),
        });
        writeln!(out, "{status}")?;
    } else {
        // A blank line between the snapshot table and the event stream.
        writeln!(out, "\n{}", render::TEXT_HEADER)?;
    }
    out.flush()?;

    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut lost_tick = tokio::time::interval(Duration::from_secs(1));
    // Network namespace inode numbers fit the events' 32-bit field.
    let own_netns = crate::netns::own().ok().and_then(|n| u32::try_from(n.inode).ok());
    let mut sink = Sink {
        tracker,
        out,
        summary: FollowSummary::default(),
        write_error: None,
        opts,
        clock,
        filter: hooks.filter,
        recorder: hooks.recorder.map(|r| r as &mut dyn Recorder),
    };

    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let mut on_record = |rec| sink.on_record(rec);
        let mut stop = false;
        let mut tick = false;
        tokio::select! {
            r = capture.next_batch(&mut on_record) => r?,
            _ = lost_tick.tick() => tick = true,
            _ = until_deadline => stop = true,
            _ = sigint.recv() => stop = true,
            _ = sigterm.recv() => stop = true,
        }
        if tick {
            for r in sink.tracker.expire(render::clock_ns(libc::CLOCK_MONOTONIC)) {
                sink.emit(&r);
            }
            sink.release_orphans(own_netns);
            sink.report_lost(&mut capture)?;
            if let Some(r) = sink.recorder.as_mut() {
                r.flush().map_err(FollowError::Recorder)?;
            }
        }
        if let Some(e) = sink.write_error.take() {
            // A closed pipe (`| head`) is the reader's way of saying stop.
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(sink.summary);
            }
            return Err(e.into());
        }
        if stop || sink.done() {
            break;
        }
        sink.out.flush()?;
    }
    capture.drain_now(&mut |rec| sink.on_record(rec));
    for r in sink.tracker.finish() {
        sink.emit(&r);
    }
    sink.report_lost(&mut capture)?;
    sink.out.flush()?;
    if let Some(r) = sink.recorder.as_mut() {
        r.finish(&sink.summary).map_err(FollowError::Recorder)?;
    }
    if opts.verbose > 0 {
        eprintln!(
            "unixtrace: {} events received, {} printed, {} lost, {} sockets tracked",
            sink.summary.received,
            sink.summary.printed,
            sink.summary.lost,
            sink.tracker.len()
        );
    }
    Ok(sink.summary)
}

/// Where records go: the model, then the user's filter, then output.
struct Sink<'a, W: Write> {
    tracker: Tracker,
    out: W,
    summary: FollowSummary,
    write_error: Option<io::Error>,
    opts: &'a FollowOptions,
    clock: Clock,
    filter: &'a dyn Fn(&Resolved) -> bool,
    recorder: Option<&'a mut dyn Recorder>,
}

impl<W: Write> Sink<'_, W> {
    fn done(&self) -> bool {
        self.opts.count.is_some_and(|c| self.summary.printed >= c)
    }

    fn on_record(&mut self, rec: Record) {
        let Record::Event(e) = rec else { return };
        self.summary.received += 1;
        if let Some(rec) = self.recorder.as_mut() {
            rec.event(&e);
        }
        for r in self.tracker.apply(e) {
            self.emit(&r);
        }
    }

    fn emit(&mut self, r: &Resolved) {
        // Bookkeeping events keep the model's holders true; people want
        // them only when asking for detail.
        let bookkeeping =
            matches!(r.event.kind, EventKind::TaskExit | EventKind::Fork | EventKind::FdClose | EventKind::Rename);
        if (bookkeeping && self.opts.verbose < 2) || !(self.filter)(r) || self.done() {
            return;
        }
        self.summary.printed += 1;
        let res = if self.opts.quiet {
            Ok(())
        } else if self.opts.json {
            render::write_json(&mut self.out, r, &self.clock)
        } else {
            render::write_text(&mut self.out, r, &self.clock, self.opts.wall_time)
        };
        if let Err(e) = res
            && self.write_error.is_none()
        {
            self.write_error = Some(e);
        }
    }

    /// Reports the release of orphaned sockets (see `Tracker::orphans_due`)
    /// the kernel no longer has. Only our own network namespace can be
    /// asked; the others' orphans stay unreported.
    fn release_orphans(&mut self, own_netns: Option<u32>) {
        let Some(own_netns) = own_netns else { return };
        let now = render::clock_ns(libc::CLOCK_MONOTONIC);
        for (inode, netns) in self.tracker.orphans_due(now) {
            if netns != own_netns {
                // Cannot be asked from here: back off like a live one
                // rather than collect it again every tick.
                self.tracker.orphan_lives(inode, now);
                continue;
            }
            match crate::diag::exists(inode) {
                Ok(true) => self.tracker.orphan_lives(inode, now),
                Ok(false) => {
                    for r in self.tracker.release_orphan(inode, now) {
                        if let Some(rec) = self.recorder.as_mut() {
                            rec.event(&r.event);
                        }
                        self.emit(&r);
                    }
                }
                Err(e) => {
                    log::debug!("cannot look up orphaned socket {inode}: {e}");
                    return;
                }
            }
        }
    }

    fn report_lost(&mut self, capture: &mut Capture) -> Result<(), FollowError> {
        let lost = capture.take_lost()?;
        if lost == 0 {
            return Ok(());
        }
        self.summary.lost += lost;
        let ts = render::clock_ns(libc::CLOCK_MONOTONIC);
        if let Some(r) = self.recorder.as_mut() {
            r.lost(ts, lost);
        }
        eprintln!(
            "unixtrace: WARNING: {lost} events lost in the kernel (ring buffer full), {} in total",
            self.summary.lost
        );
        if self.opts.json && !self.opts.quiet {
            writeln!(self.out, "{}", render::lost_json(lost, self.summary.lost, ts))?;
        }
        Ok(())
    }
}
