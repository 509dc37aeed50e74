//! Timelines: `--follow -w FILE` records the seeds and every raw event,
//! `-r FILE` replays them through the same live model, and `export` draws
//! them. The file format is in docs/timeline-format.md.

pub mod cmd;
pub mod conns;
pub mod export;
pub mod format;
pub mod reader;
pub mod replay;
pub mod summary;
pub mod time;
pub mod writer;

use std::path::PathBuf;

/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The value of the header's `format` key: tells a timeline from any other JSON.
pub const FORMAT_NAME: &str = "unixtrace-timeline";

/// Where in a file something went wrong: a line of the (decompressed) JSON
/// Lines text, or a byte offset in the compressed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Line(u64),
    Offset(u64),
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Line(n) => write!(f, "line {n}"),
            Self::Offset(n) => write!(f, "byte offset {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("{}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{} already exists: pass --force to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("{}: the file is empty, not a unixtrace timeline", path.display())]
    Empty { path: PathBuf },
    #[error("{}: {at}: {why}", path.display())]
    Bad { path: PathBuf, at: Position, why: String },
    #[error("{}: reading failed at {at}: {source}", path.display())]
    Read { path: PathBuf, at: Position, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("bad time {0:?}: {1}")]
    Time(String, String),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
}

impl TimelineError {
    /// The reader of our output went away (`| head`): not worth an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.is_broken_pipe())
    }

    pub(crate) fn bad(path: &std::path::Path, at: Position, why: impl Into<String>) -> Self {
        Self::Bad { path: path.to_owned(), at, why: why.into() }
    }
}
