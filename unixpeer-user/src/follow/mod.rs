//! `--follow`: capture, snapshot, then one line per event until told to stop.
//!
//! Capture starts before the snapshot so nothing falls between the two;
//! events from that overlap update the same records in the model, which is
//! idempotent, so they are not counted twice.

mod consumer;
mod graveyard;
mod listeners;
mod metrics;
mod passes;
mod pending;
pub mod render;
mod resync;
pub mod top;
mod tracker;

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};
use unixpeer_common::TaskSocketFd;

use self::render::Clock;
use self::resync::Resync;
pub(crate) use self::tracker::{Holder, Peer};
pub use self::{
    consumer::Consumer,
    tracker::{Resolved, Tracker},
};
use crate::model::Model;
use crate::{
    capture::{Capture, CaptureError, CaptureOptions, Chosen},
    events::Event,
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
    /// Serve Prometheus metrics here (`--metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Label sets with series of their own (`--metrics-series`).
    pub metrics_series: usize,
    /// `--top`: the busiest connections, refreshed, instead of events.
    pub top: Option<top::TopOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("taking the initial snapshot failed: {0}")]
    Snapshot(String),
    #[error("resynchronizing with the kernel after lost events failed: {0}")]
    Resync(String),
    #[error("writing output failed: {0}")]
    Output(#[from] io::Error),
    #[error("cannot install a signal handler: {0}")]
    Signal(io::Error),
    #[error(transparent)]
    Recorder(RecorderError),
    #[error("--top needs bytes and messages counted, and this kernel cannot: {0}")]
    NoTraffic(String),
    #[error("cannot serve metrics on {addr}: {error}\nchoose another address with --metrics ADDR:PORT")]
    Metrics { addr: std::net::SocketAddr, error: io::Error },
}

pub(crate) type RecorderError = Box<dyn std::error::Error + Send + Sync>;

/// Takes a snapshot from the iterator's records (or why they could not be
/// had): the model's starting point, or what it is checked against.
pub(crate) type SnapshotHook<'a> =
    dyn FnMut(SnapshotPurpose, Result<Vec<TaskSocketFd>, String>) -> Result<Model, String> + 'a;

/// Gets every raw event before the model does (`-w`), so that a replay
/// rebuilds the same model.
pub trait Recorder {
    /// Once, after the capture started and before the snapshot.
    fn start(&mut self, chosen: &Chosen, clock: &Clock, infer_release_on_exit: bool) -> Result<(), RecorderError>;
    fn event(&mut self, e: &Event);
    /// Who process `pid` is: written before the first event that needs it.
    fn process(&mut self, _pid: u32, _id: &crate::identity::Identity) {}
    /// What a socket whose release the model will infer from the next
    /// event carried (see `Tracker::note_released_traffic`).
    fn released_traffic(&mut self, _inode: u64, _carried: &crate::events::Carried) {}
    fn lost(&mut self, ts_ns: u64, count: u64);
    /// The model is checked against the kernel after `lost` events were
    /// lost; the seeds of that check follow (see `SnapshotPurpose::Resync`).
    fn resync(&mut self, ts_ns: u64, lost: u64, netns: u32);
    /// Called at least once a second: what was recorded reaches the file.
    fn flush(&mut self) -> Result<(), RecorderError>;
    /// What open socket `inode` carried so far, sampled at `ts_ns` after
    /// every event before it was recorded.
    fn counts(&mut self, _ts_ns: u64, _inode: u64, _traffic: &crate::events::Traffic) {}
    /// Called between two batches of events, when the model (`tracker`)
    /// has applied every event recorded so far: a recorder that writes in
    /// parts (`--rotate`) may start the next one here, seeded with it.
    /// Whether it did.
    fn rotate(&mut self, _now_ns: u64, _tracker: &Tracker) -> Result<bool, RecorderError> {
        Ok(false)
    }
    fn finish(&mut self, summary: &FollowSummary) -> Result<(), RecorderError>;
}

#[derive(Debug, Default)]
pub struct FollowSummary {
    pub(crate) printed: u64,
    pub received: u64,
    pub(crate) lost: u64,
    /// Times the model was checked against the kernel after loss.
    pub(crate) resyncs: u64,
}

/// One check of the model against the kernel, after lost events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResyncRecord {
    pub(crate) ts_ns: u64,
    /// Events lost since the previous check.
    pub(crate) lost: u64,
    /// The network namespace whose sockets the check covered.
    pub(crate) netns: u32,
    /// Sockets the model had that the kernel no longer has.
    pub(crate) gone: u64,
    /// Sockets the kernel has that the model had missed.
    pub(crate) found: u64,
    /// Sockets in the model after the check.
    pub(crate) sockets: u64,
}

/// Why the caller is asked for a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotPurpose {
    /// Before the first event: printed, and recorded as the seeds.
    Initial,
    /// After lost events, of our own network namespace only (the
    /// capabilities to enter others are gone): recorded after a resync
    /// record, not printed.
    Resync,
}

/// Everything the caller plugs in: the snapshot (printed by the caller and
/// returned as seeds) and the user's output filter.
pub struct Hooks<'a> {
    /// Gets the capture's iterator records (or why they could not be had).
    pub snapshot: &'a mut SnapshotHook<'a>,
    pub filter: &'a dyn Fn(&Resolved, &crate::identity::Processes) -> bool,
    /// The same filter on a connection of the model (a socket and its
    /// peer): which rows `--top` shows.
    pub connection_filter: &'a dyn Fn(&crate::model::Model, u64, Option<u64>) -> bool,
    pub recorder: Option<&'a mut dyn Recorder>,
}

pub async fn run<'a>(opts: &'a FollowOptions, hooks: Hooks<'a>) -> Result<FollowSummary, FollowError> {
    // First: a Ctrl-C while the programs load or the snapshot is taken, or
    // right after the ready line, must end the capture cleanly (summary,
    // recording closed) rather than kill the process.
    let mut sigterm = signal(SignalKind::terminate()).map_err(FollowError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(FollowError::Signal)?;
    // Bound first: a port in use is said before any program loads, and a
    // port below 1024 needs a capability that is dropped later.
    let metrics_listener = opts
        .metrics
        .map(|addr| metrics::bind(addr).map_err(|error| FollowError::Metrics { addr, error }))
        .transpose()?;
    let mut capture = Capture::start(&opts.capture)?;
    let clock = Clock::now();
    let infer = capture.chosen.backend.infers_releases();
    let Hooks { snapshot, filter, connection_filter, mut recorder } = hooks;
    if let Some(r) = recorder.as_mut() {
        r.start(&capture.chosen, &clock, infer).map_err(FollowError::Recorder)?;
    }
    let mut tracker = Tracker::new(infer);
    let records = capture.task_socket_fds().map_err(|e| e.to_string());
    tracker.seed(&snapshot(SnapshotPurpose::Initial, records).map_err(FollowError::Snapshot)?);
    if opts.verbose > 0 {
        eprintln!("unixtrace: backend {} ({})", capture.chosen.backend, capture.chosen.why);
        eprintln!("unixtrace: ring buffer {}", capture.buffer_size_text());
        match &capture.chosen.traffic {
            Ok(how) => eprintln!("unixtrace: bytes and messages counted by {how}"),
            Err(why) => eprintln!("unixtrace: bytes and messages not counted: {why}"),
        }
    }
    drop_privileges(&capture);

    // Counts from before the ready line are not the first refresh's: a
    // script that starts its traffic on that line sees all of it.
    let top = match &opts.top {
        Some(t) => {
            if let Err(why) = &capture.chosen.traffic {
                return Err(FollowError::NoTraffic(why.clone()));
            }
            let mut top = top::Top::new(t.clone(), render::clock_ns(libc::CLOCK_MONOTONIC));
            top.prime(capture.traffic_now());
            Some(top)
        }
        None => None,
    };
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    write_ready_line(&mut out, opts, &capture, &clock)?;
    let mut sink = Consumer::new(tracker, out, opts, clock, filter, recorder);
    sink.set_traffic(capture.chosen.traffic.is_ok(), capture.take_traffic_map());
    sink.set_dgram_pairs(capture.take_dgram_pairs());
    let mut top_tick = match top {
        Some(top) => {
            let interval = top.interval();
            sink.set_top(top, connection_filter);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some(tick)
        }
        None => None,
    };
    if let Some(listener) = metrics_listener {
        let m = metrics::Metrics::new(opts.metrics_series);
        tokio::spawn(metrics::serve(listener, m.shared_text()));
        sink.set_metrics(m);
        sink.publish_metrics();
    }
    let mut resync = Resync::new(snapshot);

    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let (mut stop, mut tick, mut refresh) = (false, false, false);
        let top_due = async {
            match top_tick.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        let mut on_record = |rec: &[u8]| sink.record(rec);
        tokio::select! {
            r = capture.next_batch(&mut on_record) => r?,
            _ = second.tick() => tick = true,
            _ = top_due => refresh = true,
            _ = until_deadline => stop = true,
            _ = sigint.recv() => stop = true,
            _ = sigterm.recv() => stop = true,
        }
        if tick {
            every_second(&mut sink, &mut capture, &mut resync)?;
        }
        if refresh {
            // What the ring buffer holds first: closes count with their totals.
            capture.drain_now(&mut |rec| sink.record(rec));
            sink.refresh_top(render::clock_ns(libc::CLOCK_MONOTONIC));
        }
        if let Some(e) = sink.take_write_error() {
            // A closed pipe (`| head`) is the reader's way of saying stop.
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(sink.summary);
            }
            return Err(e.into());
        }
        if stop || sink.done() {
            break;
        }
        sink.rotate(render::clock_ns(libc::CLOCK_MONOTONIC)).map_err(FollowError::Recorder)?;
        sink.flush()?;
    }
    finish(&mut sink, &mut capture, resync.own_netns)?;
    Ok(sink.summary)
}

/// Attached and snapshotted: only the lost-event counters and the iterator
/// (for a resync) may still need a capability, on kernels whose bpf() wants
/// one for anything. Ask a throwaway thread (capabilities are per thread)
/// whether it can read the counters with none, and keep CAP_BPF only if it
/// cannot.
fn drop_privileges(capture: &Capture) {
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
}

fn write_ready_line(out: &mut impl Write, opts: &FollowOptions, capture: &Capture, clock: &Clock) -> io::Result<()> {
    if opts.quiet || (opts.top.is_some() && !opts.json) {
        // -q: the recording is the only output.
    } else if opts.json {
        let status = serde_json::json!({
            "kind": "capture",
            "schema": crate::output::JSON_SCHEMA,
            "backend": capture.chosen.backend.as_str(),
            "why": capture.chosen.why,
            "start_ts": clock.start_mono_ns,
            "start_time": clock.rfc3339(clock.start_mono_ns),
            "buffer_size": capture.buffer_size,
            "traffic": capture.chosen.traffic.as_ref().ok(),
            "traffic_unavailable": capture.chosen.traffic.as_ref().err(),
        });
        writeln!(out, "{status}")?;
    } else {
        // A blank line between the snapshot table and the event stream.
        writeln!(out, "\n{}", render::TEXT_HEADER)?;
    }
    out.flush()
}

/// Once a second: accepts whose wait is over, orphans to look at, lost
/// events to report (and the resync they call for), the recording flushed.
fn every_second<W: Write>(
    sink: &mut Consumer<'_, W>,
    capture: &mut Capture,
    resync: &mut Resync<'_>,
) -> Result<(), FollowError> {
    let now = render::clock_ns(libc::CLOCK_MONOTONIC);
    sink.expire(now);
    sink.release_orphans(resync.own_netns, now, false);
    let malformed = sink.take_malformed();
    if malformed > 0 {
        log::warn!("{malformed} malformed kernel records dropped");
    }
    let lost = report_lost(sink, capture)?;
    resync.after_loss(lost, now, sink, capture)?;
    if sink.samples_counts() {
        // Every event before the sample first, so that a replay meets the
        // sample after them (a close the sample no longer holds included).
        let at = render::clock_ns(libc::CLOCK_MONOTONIC);
        capture.drain_now(&mut |rec| sink.record(rec));
        sink.sample_counts(at);
    }
    if let Some(r) = sink.recorder() {
        r.flush().map_err(FollowError::Recorder)?;
    }
    sink.publish_metrics();
    Ok(())
}

/// Events the kernel could not queue, or never ran the programs for, since
/// the last look: counted, said on stderr and in JSON, recorded.
fn report_lost<W: Write>(sink: &mut Consumer<'_, W>, capture: &mut Capture) -> Result<u64, FollowError> {
    let full = capture.take_lost()?;
    let missed = capture.take_missed();
    let lost = full + missed;
    if lost == 0 {
        return Ok(0);
    }
    sink.summary.lost += lost;
    let total = sink.summary.lost;
    let ts = render::clock_ns(libc::CLOCK_MONOTONIC);
    if let Some(r) = sink.recorder() {
        r.lost(ts, lost);
    }
    match (full, missed) {
        (_, 0) => {
            eprintln!("unixtrace: WARNING: {lost} events lost in the kernel (ring buffer full), {total} in total")
        }
        (0, _) => eprintln!(
            "unixtrace: WARNING: {lost} events missed in the kernel (a hook skipped while busy on its CPU), {total} in total"
        ),
        _ => eprintln!(
            "unixtrace: WARNING: {lost} events lost in the kernel ({full} ring buffer full, {missed} skipped hooks), {total} in total"
        ),
    }
    if sink.json_out() {
        sink.line(format_args!("{}", render::lost_json(lost, total, ts)));
    }
    Ok(lost)
}

/// Stopping: what is left in the ring buffer, accepts still waiting,
/// orphans whose release is not seen yet (their first look may still be
/// due), the last loss count, the recording's end.
fn finish<W: Write>(
    sink: &mut Consumer<'_, W>,
    capture: &mut Capture,
    own_netns: Option<u32>,
) -> Result<(), FollowError> {
    capture.drain_now(&mut |rec| sink.record(rec));
    sink.finish();
    sink.release_orphans(own_netns, render::clock_ns(libc::CLOCK_MONOTONIC), true);
    report_lost(sink, capture)?;
    sink.flush()?;
    let summary = std::mem::take(&mut sink.summary);
    if let Some(r) = sink.recorder() {
        r.finish(&summary).map_err(FollowError::Recorder)?;
    }
    if sink.verbose() > 0 {
        eprintln!(
            "unixtrace: {} events received, {} printed, {} lost, {} resyncs, {} sockets tracked",
            summary.received,
            summary.printed,
            summary.lost,
            summary.resyncs,
            sink.tracker.len()
        );
    }
    sink.summary = summary;
    Ok(())
}
