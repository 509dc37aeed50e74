//! Pictures of a recording: a who-talks-to-whom graph (Graphviz dot), a
//! trace for the Perfetto UI, and a self-contained HTML timeline.
//!
//! They are for people, so names other processes chose are escaped as in
//! the terminal (`\xNN`), then quoted as each format needs; only `--json`
//! carries exact values.

pub(crate) mod dot;
pub(crate) mod html;
pub(crate) mod perfetto;

use std::io::{self, Write};

use super::conns::{Conn, ConnKind, Conns};
use super::summary::By;
use crate::output::escape;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Graphviz: processes as nodes, edges labelled with name and count
    /// (and the bytes each way, where counted).
    Dot,
    /// Chrome trace-event JSON, for ui.perfetto.dev or chrome://tracing.
    Perfetto,
    /// One HTML file, no external resources: a lane per process.
    Html,
}

pub(crate) fn write(out: &mut impl Write, conns: &Conns, format: Format, title: &str, by: By) -> io::Result<()> {
    match format {
        Format::Dot => dot::write(out, conns, by),
        Format::Perfetto => perfetto::write(out, conns),
        Format::Html => html::write(out, conns, title, by),
    }
}

/// What a connection is called where it is drawn: its name (escaped like
/// any name in a picture for people), or how it was made.
pub(crate) fn label(c: &Conn) -> String {
    match (&c.path, c.kind) {
        (Some(p), _) => escape::escaped(p).into_owned(),
        (None, ConnKind::Socketpair) => "(socketpair)".into(),
        (None, _) => "(unnamed)".into(),
    }
}

/// A stable colour per name, so one path keeps its colour across exports.
pub(crate) fn colour(name: &str) -> String {
    // FNV-1a: stable across runs and Rust versions, unlike the std hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("hsl({}, 65%, 50%)", h % 360)
}
