//! unixtrace: who talks to whom over UNIX-domain sockets.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use unixpeer_user::cli::{Args, HolderChoice};
use unixpeer_user::filter::Filter;
use unixpeer_user::holders::{HolderSource, ProcScan};
use unixpeer_user::output::{self, OutputError};
use unixpeer_user::snapshot;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<OutputError>()
                .is_some_and(OutputError::is_broken_pipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("unixtrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.follow {
        bail!("--follow is not available in this build yet");
    }
    let filter = filter_from(args);
    let mut source = holder_source(args.holders)?;
    let snap =
        snapshot::take(args.all_netns, source.as_mut()).context("cannot take the snapshot")?;
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
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if args.json {
        output::json::write(&mut out, &snap.model, &filter)?;
    } else {
        output::table::write(&mut out, &snap.model, &filter, output::term::width())?;
    }
    out.flush().map_err(OutputError::from)?;
    Ok(())
}

fn filter_from(args: &Args) -> Filter {
    Filter {
        pids: args.pid.clone(),
        comms: args.comm.clone(),
        path: args.path.clone(),
        types: args.sock_type.iter().map(|&t| t.into()).collect(),
        listening: args.listening,
    }
}

/// The BPF task_file iterator when it is available, else the /proc scan.
fn holder_source(choice: HolderChoice) -> anyhow::Result<Box<dyn HolderSource + Send>> {
    let iterator = bpf_iterator();
    match (choice, iterator) {
        (HolderChoice::Proc, _) => Ok(Box::new(ProcScan {
            why: "requested with --holders proc".into(),
        })),
        (HolderChoice::Iter, Ok(it)) | (HolderChoice::Auto, Ok(it)) => Ok(it),
        (HolderChoice::Iter, Err(why)) => bail!("the BPF task_file iterator is unavailable: {why}"),
        (HolderChoice::Auto, Err(why)) => Ok(Box::new(ProcScan {
            why: format!("BPF task_file iterator unavailable ({why})"),
        })),
    }
}

/// Where the lead plugs in the `iter/task_file` loader; it reports why it
/// cannot run so `-v` can say so.
fn bpf_iterator() -> Result<Box<dyn HolderSource + Send>, String> {
    Err("not built into this binary yet".into())
}
