//! Timelines: `--follow -w FILE` records the seeds and every raw event,
//! `-r FILE` replays them through the same live model, and `export` draws
//! them. The file format is in docs/timeline-format.md.

pub mod cmd;
pub mod conns;
pub(crate) mod export;
pub mod format;
pub mod reader;
pub mod replay;
pub mod rotate;
pub mod summary;
pub(crate) mod time;
pub mod writer;

use std::path::PathBuf;

use crate::output::escape;

/// The format version this build writes and the only one it reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The value of the header's `format` key: tells a timeline from any other JSON.
pub(crate) const FORMAT_NAME: &str = "unixtrace-timeline";

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

/// Paths are shown escaped, and so is `why`: it may quote the file (a
/// parser's "unknown variant" repeats the bad value).
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("{}: {source}", escape::path(path))]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{} already exists: pass --force to overwrite it", escape::path(path))]
    Exists { path: PathBuf },
    #[error("{}: the file is empty, not a unixtrace timeline", escape::path(path))]
    Empty { path: PathBuf },
    #[error("{}: {at}: {}", escape::path(path), escape::escaped(why))]
    Bad { path: PathBuf, at: Position, why: String },
    #[error("{}: reading failed at {at}: {source}", escape::path(path))]
    Read { path: PathBuf, at: Position, source: std::io::Error },
    #[error("cannot write {}: {source}", escape::path(path))]
    Write { path: PathBuf, source: std::io::Error },
    #[error("bad time {0:?}: {1}")]
    Time(String, String),
    #[error("--by groups processes in --format dot and html only")]
    ByNotDrawn,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_show_what_the_file_said_escaped() {
        let path = std::path::Path::new("/tmp/a\nb");
        let e = TimelineError::bad(path, Position::Line(3), "bad record: unknown variant `\u{1b}[2J`");
        assert_eq!(e.to_string(), "/tmp/a\\x0ab: line 3: bad record: unknown variant `\\x1b[2J`");
    }
}
