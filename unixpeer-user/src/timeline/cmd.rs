//! The `-r FILE` and `export` commands: read, replay, print.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use unixpeer_common::EventKind;

use super::{
    TimelineError, conns,
    export::{self, Format},
    replay::{Replay, Step},
    rotate, summary,
    time::TimeSpec,
};
use crate::{
    filter::Filter,
    follow::render,
    output::{self, OutputError, escape},
};

#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    pub json: bool,
    pub wall_time: bool,
    pub verbose: u8,
    pub at: Option<TimeSpec>,
    pub since: Option<TimeSpec>,
    pub until: Option<TimeSpec>,
    pub summary: bool,
    /// `--by`: what names the summary's ends.
    pub by: summary::By,
    /// `--wide`: every holder in the `--at` table.
    pub wide: bool,
}

/// `--wide` lists every holder; otherwise the first and `+N`.
pub fn holder_list(wide: bool) -> output::table::Holders {
    if wide { output::table::Holders::All } else { output::table::Holders::First }
}

/// Opens what `-r` names: one timeline, or the parts of a rotated one
/// (see `rotate::expand` and `Reader::open_set`). Returns the first file.
fn open(paths: &[PathBuf]) -> Result<(Replay, PathBuf), TimelineError> {
    let (paths, notes) = rotate::expand(paths);
    for n in notes {
        eprintln!("unixtrace: note: {n}");
    }
    let replay = Replay::open(&paths)?;
    Ok((replay, paths.first().cloned().unwrap_or_default()))
}

pub fn replay(
    paths: &[PathBuf],
    opts: &ReplayOptions,
    filter: &Filter,
    out: &mut impl Write,
) -> Result<(), TimelineError> {
    let (mut replay, first) = open(paths)?;
    let path = first.as_path();
    let h = replay.reader.header.clone();
    if opts.verbose > 0 {
        // Every field but the path was read from the file, which anyone may have written.
        let line = format!(
            "{} recorded on {} (kernel {}) from {} with the {} backend ({}): {}",
            escape::path(path),
            h.hostname,
            h.kernel,
            h.start_time,
            h.backend,
            h.backend_why,
            h.command_line.join(" ")
        );
        eprintln!("unixtrace: {}", escape::escaped(&line));
    }
    let result = if opts.summary {
        conns::collect(&mut replay)
            .and_then(|c| Ok(summary::write(out, &c, opts.json, opts.by).map_err(OutputError::from)?))
    } else if let Some(at) = opts.at {
        table_at(&mut replay, at, opts, filter, out)
    } else {
        events(&mut replay, opts, filter, out, path)
    };
    report_warnings(&mut replay);
    result
}

fn table_at(
    replay: &mut Replay,
    at: TimeSpec,
    opts: &ReplayOptions,
    filter: &Filter,
    out: &mut impl Write,
) -> Result<(), TimelineError> {
    let t = at.resolve(&replay.reader.header);
    replay.run::<TimelineError>(Some(t), &mut |_| Ok(()))?;
    if replay.exhausted() && t > replay.last_ts {
        eprintln!(
            "unixtrace: note: {} ends before that time; showing its last state",
            escape::path(replay.reader.path())
        );
    }
    let model = replay.model();
    if opts.json {
        output::json::write(out, &model, filter)?;
    } else {
        let clock = replay.reader.header.clock();
        writeln!(out, "# as of {}", clock.rfc3339(t)).map_err(OutputError::from)?;
        output::table::write(out, &model, filter, output::term::width(), holder_list(opts.wide))?;
    }
    Ok(())
}

fn events(
    replay: &mut Replay,
    opts: &ReplayOptions,
    filter: &Filter,
    out: &mut impl Write,
    path: &Path,
) -> Result<(), TimelineError> {
    let h = &replay.reader.header;
    let clock = h.clock();
    let since = opts.since.map(|t| t.resolve(h));
    let until = opts.until.map(|t| t.resolve(h));
    if opts.json {
        let status = serde_json::json!({
            "kind": "capture",
            "schema": crate::output::JSON_SCHEMA,
            "backend": h.backend.as_str(),
            "why": h.backend_why,
            "start_ts": h.start_mono_ns,
            "start_time": h.start_time,
            "recording": path.display().to_string(),
        });
        writeln!(out, "{status}").map_err(OutputError::from)?;
    } else {
        writeln!(out, "{}", render::TEXT_HEADER).map_err(OutputError::from)?;
    }
    let mut lost_total = 0;
    let mut line = Vec::with_capacity(512);
    let shown = |ts: u64| since.is_none_or(|s| ts >= s);
    replay.run::<TimelineError>(until, &mut |step| {
        match step {
            Step::Event(r, ids) => {
                // As live: bookkeeping only when asked for detail.
                let bookkeeping = matches!(
                    r.event.kind,
                    EventKind::TaskExit | EventKind::Fork | EventKind::FdClose | EventKind::Rename
                );
                if (bookkeeping && opts.verbose < 2) || !shown(r.event.ts_ns) || !filter.matches_event(r, ids) {
                    return Ok(());
                }
                line.clear();
                if opts.json {
                    render::write_json(&mut line, r, &clock, ids);
                } else {
                    render::write_text(&mut line, r, &clock, opts.wall_time, ids);
                }
                out.write_all(&line).map_err(OutputError::from)?;
            }
            Step::Lost { ts_ns, count } => {
                lost_total += count;
                eprintln!(
                    "unixtrace: WARNING: {count} events were lost in the kernel while recording, {lost_total} in total"
                );
                if opts.json && shown(ts_ns) {
                    writeln!(out, "{}", render::lost_json(count, lost_total, ts_ns)).map_err(OutputError::from)?;
                }
            }
            Step::Resync(r) => {
                eprintln!(
                    "unixtrace: the recording resynchronized with the kernel after {} lost events: {} sockets gone, {} missed",
                    r.lost, r.gone, r.found
                );
                if opts.json && shown(r.ts_ns) {
                    writeln!(out, "{}", render::resync_json(r)).map_err(OutputError::from)?;
                }
            }
        }
        Ok(())
    })
}

fn report_warnings(replay: &mut Replay) {
    for w in replay.reader.take_warnings() {
        eprintln!("unixtrace: warning: {}", escape::escaped(&w));
    }
}

/// `unixtrace export -r FILE --format F -o OUT`.
pub fn export(
    paths: &[PathBuf],
    format: Format,
    output: &Path,
    force: bool,
    by: summary::By,
) -> Result<(), TimelineError> {
    if by != summary::By::Comm && format == Format::Perfetto {
        return Err(TimelineError::ByNotDrawn);
    }
    let (mut replay, path) = open(paths)?;
    let conns = conns::collect(&mut replay);
    report_warnings(&mut replay);
    let conns = conns?;
    let h = &replay.reader.header;
    let title = format!("unixtrace: {} on {}, from {}", path.display(), h.hostname, h.start_time);
    let file = super::writer::create_private(output, force)?;
    let mut w = BufWriter::new(file);
    let werr = |source| TimelineError::Write { path: output.to_owned(), source };
    export::write(&mut w, &conns, format, &title, by).map_err(werr)?;
    w.flush().map_err(werr)?;
    eprintln!("unixtrace: wrote {} connections to {}", conns.list.len(), escape::path(output));
    Ok(())
}
