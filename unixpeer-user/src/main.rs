use std::process::ExitCode;

use clap::Parser;
use unixpeer_user::{
    capture::{BackendChoice, Capture, CaptureOptions, Record},
    events::event_name,
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
    let mut cap = Capture::start(&CaptureOptions { backend: args.backend, ..Default::default() })?;
    eprintln!("backend: {} ({})", cap.chosen.backend, cap.chosen.why);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + std::time::Duration::from_secs_f64(d));
    let mut print = |rec: Record| match rec {
        Record::Event(e) => println!(
            "{} {} {} {:?} {:?} {:?} {:?} {:?} {}",
            e.ts_ns,
            event_name(e.kind),
            e.pid,
            e.comm,
            e.fd,
            e.inode,
            e.peer_inode,
            e.path,
            e.errno
        ),
        Record::Lost { count } => println!("lost {count}"),
    };
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = cap.next_batch(&mut print) => r?,
            _ = sleep => break,
        }
    }
    Ok(())
}
