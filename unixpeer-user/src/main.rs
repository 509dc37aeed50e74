use std::{process::ExitCode, time::Duration};

use clap::Parser;
use unixpeer_user::{
    capture::{BackendChoice, CaptureOptions},
    follow::{self, FollowOptions, Hooks},
};

#[derive(Parser, Debug)]
#[command(name = "unixtrace", version, about = "Who talks to whom over UNIX-domain sockets")]
struct Args {
    /// Follow: print events as they happen.
    #[arg(short, long)]
    follow: bool,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    #[arg(long)]
    json: bool,
    #[arg(short = 'T', long)]
    timestamp: bool,
    #[arg(short, long)]
    pid: Option<u32>,
    #[arg(long)]
    comm: Option<String>,
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unixtrace: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unixtrace: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let opts = FollowOptions {
        capture: CaptureOptions {
            backend: args.backend,
            pid: args.pid,
            comm: args.comm,
            kernel_logs: args.verbose > 0,
        },
        json: args.json,
        wall_time: args.timestamp,
        duration: args.duration.map(Duration::from_secs_f64),
        count: args.count,
        verbose: args.verbose,
    };
    let hooks = Hooks { snapshot: &mut || Ok(Vec::new()), filter: &|_| true };
    follow::run(&opts, hooks).await?;
    Ok(())
}
