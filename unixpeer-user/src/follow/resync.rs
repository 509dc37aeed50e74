//! After the kernel dropped events, the model may keep sockets whose close
//! was lost and miss sockets whose connect was lost. It is checked against
//! the kernel with the snapshot's own sources (UNIX_DIAG and the
//! `iter/task_file` program of the running capture) and made to agree, so
//! that nothing lingers and later connections are named right.

use std::io::Write;

use super::render;
use super::{Consumer, FollowError, ResyncRecord, SnapshotHook, SnapshotPurpose};
use crate::capture::Capture;

/// At most one check this often: under sustained overload a check every
/// second would cost more than the loss it repairs.
const MIN_INTERVAL_NS: u64 = 2_000_000_000;

pub(crate) struct Resync<'h> {
    snapshot: &'h mut SnapshotHook<'h>,
    /// Network namespace inode numbers fit the events' 32-bit field.
    pub(crate) own_netns: Option<u32>,
    /// Events lost since the last check.
    lost: u64,
    last_ns: Option<u64>,
}

impl<'h> Resync<'h> {
    pub(crate) fn new(snapshot: &'h mut SnapshotHook<'h>) -> Self {
        let own_netns = crate::netns::own().ok().and_then(|n| u32::try_from(n.inode).ok());
        Self { snapshot, own_netns, lost: 0, last_ns: None }
    }

    /// Called once a second with the events lost since the last call.
    pub(crate) fn after_loss<W: Write>(
        &mut self,
        lost: u64,
        now_ns: u64,
        sink: &mut Consumer<'_, W>,
        capture: &mut Capture,
    ) -> Result<(), FollowError> {
        self.lost += lost;
        let Some(netns) = self.own_netns else { return Ok(()) };
        if self.lost == 0 || self.last_ns.is_some_and(|t| now_ns < t.saturating_add(MIN_INTERVAL_NS)) {
            return Ok(());
        }
        self.last_ns = Some(now_ns);
        // What the kernel queued before the check is applied before it.
        capture.drain_now(&mut |rec| sink.record(rec));
        let ts_ns = render::clock_ns(libc::CLOCK_MONOTONIC);
        let lost = std::mem::take(&mut self.lost);
        if let Some(r) = sink.recorder() {
            r.resync(ts_ns, lost, netns);
        }
        let records = capture.task_socket_fds().map_err(|e| e.to_string());
        let kernel = match (self.snapshot)(SnapshotPurpose::Resync, records) {
            Ok(kernel) => kernel,
            Err(e) => {
                // The recording's resync record has no seeds after it: a
                // replay leaves its model as it was, as this one stays.
                log::warn!("cannot check the model against the kernel after lost events: {e}");
                return Ok(());
            }
        };
        let (gone, found) = sink.resync(&kernel, netns);
        let record = ResyncRecord { ts_ns, lost, netns, gone, found, sockets: sink.tracker.sockets_len() as u64 };
        sink.resynced(&record)?;
        Ok(())
    }
}
