//! unixtrace: who talks to whom over UNIX-domain sockets.

use std::cell::RefCell;
use std::io::{BufWriter, IsTerminal as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use unixpeer_user::capture::CaptureOptions;
use unixpeer_user::cli::{Args, Command, HolderChoice};
use unixpeer_user::filter::Filter;
use unixpeer_user::follow::{self, FollowOptions, Hooks, Recorder, SnapshotPurpose, top::TopOptions};
use unixpeer_user::holders::{HolderSource, IterSource, Precomputed, ProcScan};
use unixpeer_user::model::Model;
use unixpeer_user::output::{self, OutputError, escape};
use unixpeer_user::snapshot::{self, Snapshot};
use unixpeer_user::timeline::{self, rotate::Rotation, writer::TimelineWriter};

/// How long a snapshot waits for bus daemons to name their clients: a slow
/// or hung bus must not hold up the table.
const DBUS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

fn main() -> ExitCode {
    // One malloc arena: the snapshot attributes holders on one thread while
    // it dumps sockets on another, and memory the first frees (the kernel's
    // BTF, the eBPF object) should serve the second instead of adding to the
    // peak.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let args = Args::parse();
    init_logging(args.verbose);
    let result = match (&args.command, &args.read) {
        (Some(Command::Export { read, format, output, force, by }), _) => {
            timeline::cmd::export(read, *format, output, *force, *by).map_err(Into::into)
        }
        (Some(Command::Capture(c)), _) => unixpeer_user::payload::run(c).map_err(Into::into),
        (None, paths) if !paths.is_empty() => replay_main(&args, paths),
        (None, _) if args.follow || args.top => follow_main(&args),
        (None, _) => snapshot_main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<OutputError>().is_some_and(OutputError::is_broken_pipe)
                || e.downcast_ref::<timeline::TimelineError>().is_some_and(timeline::TimelineError::is_broken_pipe)
            {
                return ExitCode::SUCCESS;
            }
            // Causes quote paths, files and the kernel's logs: shown escaped,
            // keeping the line breaks of our own multi-line messages.
            eprintln!("unixtrace: error: {}", escape::message(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn snapshot_main(args: &Args) -> anyhow::Result<()> {
    let mut source = holder_source(args.holders)?;
    let mut snap = snapshot::take(args.all_netns, source.as_mut()).context("cannot take the snapshot")?;
    name_bus_clients(args, &mut snap.model);
    print_snapshot(args, &snap)
}

/// Only the views that show bus names ask the buses for them.
fn name_bus_clients(args: &Args, model: &mut Model) {
    if args.json || args.wide {
        let notes = unixpeer_user::dbus::label(model, DBUS_TIMEOUT);
        if args.verbose > 0 {
            for note in notes {
                eprintln!("unixtrace: {note}");
            }
        }
    }
}

fn print_snapshot(args: &Args, snap: &Snapshot) -> anyhow::Result<()> {
    if args.verbose > 0 {
        eprintln!("unixtrace: holders from {}: {}", snap.source, snap.why);
        eprintln!(
            "unixtrace: {} sockets in {} network namespace(s); dump {:.1} ms, holders {:.1} ms",
            snap.model.len(),
            snap.namespaces,
            snap.dump_time.as_secs_f64() * 1e3,
            snap.holders_time.as_secs_f64() * 1e3,
        );
    }
    for line in &snap.blind_spots {
        eprintln!("unixtrace: {line}");
    }
    let filter = filter_from(args);
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if args.json {
        output::json::write(&mut out, &snap.model, &filter)?;
    } else {
        output::table::write(
            &mut out,
            &snap.model,
            &filter,
            output::term::width(),
            timeline::cmd::holder_list(args.wide),
        )?;
    }
    out.flush().map_err(OutputError::from)?;
    Ok(())
}

fn follow_main(args: &Args) -> anyhow::Result<()> {
    if args.holders == HolderChoice::Proc {
        log::debug!("--holders proc: the snapshot under --follow still uses the running capture's iterator");
    }
    // In-kernel filters take one pid and one command; more are filtered here.
    let opts = FollowOptions {
        capture: CaptureOptions {
            backend: args.backend,
            pid: single(&args.pid),
            comm: single(&args.comm),
            kernel_logs: args.verbose > 0,
            buffer_size: args.buffer_size,
        },
        json: args.json,
        wall_time: args.timestamp,
        duration: args.duration,
        count: args.count,
        verbose: args.verbose,
        quiet: args.quiet,
        metrics: args.metrics,
        metrics_series: args.metrics_series,
        top: args.top.then(|| TopOptions {
            interval: args.interval,
            iterations: args.iterations,
            sort: args.sort,
            limit: args.limit,
            redraw: args.iterations.is_none() && std::io::stdout().is_terminal(),
        }),
    };
    // Opened before the capture starts: a name already taken fails fast.
    let writer = args
        .write
        .as_deref()
        .map(|p| match args.rotate.as_slice() {
            [] => TimelineWriter::create(p, args.force),
            limits => TimelineWriter::create_rotating(p, args.force, Rotation::new(limits, args.keep)),
        })
        .transpose()?
        .map(RefCell::new);
    let filter = filter_from(args);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
    let mut take_snapshot = |purpose, records: Result<Vec<_>, String>| -> Result<Model, String> {
        let mut source: Box<dyn HolderSource + Send> = match records {
            Ok(records) => Box::new(Precomputed { records, why: "BPF iter/task_file of the running capture".into() }),
            Err(why) => Box::new(ProcScan { why: format!("BPF task_file iterator failed ({why})") }),
        };
        let initial = purpose == SnapshotPurpose::Initial;
        let snap = snapshot::take(args.all_netns && initial, source.as_mut()).map_err(|e| e.to_string())?;
        if let Some(w) = &writer {
            w.borrow_mut().seeds(&snap.model).map_err(|e| e.to_string())?;
        }
        // Bus names are not asked for here: the capture is running, and our
        // own connection to each bus would show as the daemon's accept and
        // close.
        if initial && !args.quiet && !args.top {
            print_snapshot(args, &snap).map_err(|e| format!("{e:#}"))?;
        }
        Ok(snap.model)
    };
    let mut recorder = writer.as_ref();
    let hooks = Hooks {
        snapshot: &mut take_snapshot,
        filter: &|r, ids| filter.matches_event(r, ids),
        connection_filter: &|model, a, b| filter.matches(model, a, b),
        recorder: recorder.as_mut().map(|r| r as &mut dyn Recorder),
    };
    let result = rt.block_on(follow::run(&opts, hooks));
    if let Some(w) = writer {
        let w = w.into_inner();
        if result.is_err() && w.events == 0 {
            // Nothing was recorded: leave no empty file behind.
            let _ = std::fs::remove_file(w.path());
        } else if let Some(parts) = w.parts() {
            eprintln!("unixtrace: recorded {} events in {parts} parts, the last {}", w.events, escape::path(w.path()));
        } else {
            eprintln!("unixtrace: recorded {} events to {}", w.events, escape::path(w.path()));
        }
    }
    result?;
    Ok(())
}

fn replay_main(args: &Args, paths: &[PathBuf]) -> anyhow::Result<()> {
    let opts = timeline::cmd::ReplayOptions {
        json: args.json,
        wall_time: args.timestamp,
        verbose: args.verbose,
        at: args.at,
        since: args.since,
        until: args.until,
        summary: args.summary,
        by: args.by,
        wide: args.wide,
    };
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    timeline::cmd::replay(paths, &opts, &filter_from(args), &mut out)?;
    out.flush().map_err(OutputError::from)?;
    Ok(())
}

fn single<T: Clone>(v: &[T]) -> Option<T> {
    if v.len() == 1 { v.first().cloned() } else { None }
}

fn filter_from(args: &Args) -> Filter {
    Filter {
        pids: args.pid.clone(),
        comms: args.comm.clone(),
        path: args.path.clone(),
        types: args.sock_type.iter().map(|&t| t.into()).collect(),
        listening: args.listening,
        units: args.unit.clone(),
        containers: args.container.clone(),
        users: args.user.clone(),
    }
}

/// The BPF task_file iterator when it is available, else the /proc scan.
fn holder_source(choice: HolderChoice) -> anyhow::Result<Box<dyn HolderSource + Send>> {
    match (choice, IterSource::probe()) {
        (HolderChoice::Proc, _) => Ok(Box::new(ProcScan { why: "requested with --holders proc".into() })),
        (HolderChoice::Iter | HolderChoice::Auto, Ok(it)) => Ok(Box::new(it)),
        (HolderChoice::Iter, Err(why)) => bail!("the BPF task_file iterator is unavailable: {why}"),
        (HolderChoice::Auto, Err(why)) => {
            Ok(Box::new(ProcScan { why: format!("BPF task_file iterator unavailable ({why})") }))
        }
    }
}

/// Log records (ours, and the kernel programs' through aya-log) on stderr:
/// warnings always, more with each -v.
fn init_logging(verbose: u8) {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                // Records quote errors and the kernel programs' logs.
                let text = r.args().to_string();
                eprintln!("unixtrace: {}: {}", r.level().as_str().to_lowercase(), escape::message(&text));
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
}
