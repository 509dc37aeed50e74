//! One attributed snapshot: UNIX_DIAG dump(s) plus holder attribution, run
//! side by side since neither waits for the other.

use std::time::{Duration, Instant};

use crate::diag::{self, DiagError};
use crate::holders::{HolderSource, Holders, HoldersError};
use crate::model::Model;
use crate::netns::{self, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Diag(#[from] DiagError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot attribute sockets to processes")]
    Holders(#[from] HoldersError),
    #[error("the holder attribution thread panicked")]
    HolderThread,
}

pub struct Snapshot {
    pub model: Model,
    /// Which holder source ran, and why (for `-v`).
    pub source: &'static str,
    pub why: String,
    /// What could not be seen, one line each, for stderr.
    pub blind_spots: Vec<String>,
    /// Namespaces dumped.
    pub namespaces: usize,
    pub dump_time: Duration,
    pub holders_time: Duration,
}

/// Takes the snapshot. With `all_netns`, dumps every reachable network
/// namespace; otherwise only our own.
pub fn take(all_netns: bool, source: &mut (dyn HolderSource + Send)) -> Result<Snapshot, SnapshotError> {
    let mut blind_spots = Vec::new();
    let mut model = Model::default();
    let (dumped, holders) = std::thread::scope(|scope| {
        let holders = scope.spawn(|| {
            let start = Instant::now();
            source.collect().map(|h| (h, start.elapsed()))
        });
        let start = Instant::now();
        let dumped = dump(all_netns, &mut model, &mut blind_spots).map(|n| (n, start.elapsed()));
        (dumped, holders.join())
    });
    let (namespaces, dump_time) = dumped?;
    let (holders, holders_time): (Holders, Duration) = holders.map_err(|_| SnapshotError::HolderThread)??;
    blind_spots.extend(holders.blind_spot);
    let mut by_inode = holders.by_inode;
    // unixtrace may have inherited sockets from whoever started it; the
    // user asked about everyone else.
    let me = std::process::id();
    for list in by_inode.values_mut() {
        list.retain(|h| h.pid != me);
    }
    model.set_all_holders(by_inode);
    model.resolve_processes(crate::identity::Processes::from_proc());
    Ok(Snapshot { model, source: holders.source, why: holders.why, blind_spots, namespaces, dump_time, holders_time })
}

/// Fills `model` and returns how many namespaces were dumped.
fn dump(all_netns: bool, model: &mut Model, blind_spots: &mut Vec<String>) -> Result<usize, SnapshotError> {
    let own = netns::own()?;
    // Our own netns needs no setns() and no privilege: dump it here so an
    // unprivileged run still lists it.
    diag::dump(own.inode, &mut |s| model.insert_socket(s))?;
    if !all_netns {
        return Ok(1);
    }
    let (namespaces, denied) = netns::reachable()?;
    let others: Vec<_> = namespaces.into_iter().filter(|n| n.inode != own.inode).collect();
    let count = others.len() + 1;
    let multi = netns::dump_each(others)?;
    for socket in multi.sockets {
        model.insert_socket(socket);
    }
    if denied > 0 {
        blind_spots.push(format!(
            "could not see the network namespace of {denied} processes owned by other users: \
             run as root to include them"
        ));
    }
    if let Some((_, why)) = multi.failed.first() {
        blind_spots.push(format!(
            "could not dump {} of {count} network namespaces ({why}): run as root to include them",
            multi.failed.len()
        ));
    }
    Ok(count - multi.failed.len())
}
