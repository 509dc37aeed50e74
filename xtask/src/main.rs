//! `cargo xtask`: build, run, test and bench unixtrace.
//!
//! xtask itself builds on the machine's default Rust; everything else is
//! built with toolchains it installs on demand (see `toolchain`).

mod bench;
mod ebpf;
mod package;
mod run;
mod toolchain;
mod util;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and bench unixtrace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild the committed eBPF object (unixpeer-user/ebpf/unixpeer.bpf.o)
    /// with the pinned nightly and bpf-linker, installing them if missing.
    BuildEbpf,
    /// Fail, showing the difference, when the committed eBPF object is not
    /// what the sources build.
    CheckEbpf,
    /// Build unixtrace in release mode and run it as root (via sudo if needed).
    Run {
        /// Arguments for unixtrace, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the release binary and a Debian package of it (binary, man
    /// pages, shell completions, systemd unit) with dpkg-deb; prints the
    /// .deb's path last.
    Package {
        /// Then what `cargo xtask test` checks of it: install it with dpkg,
        /// run the binary, render the man page, complete in bash, verify
        /// the unit, remove it (root, or sudo).
        #[arg(long)]
        check: bool,
    },
    /// fmt, clippy, unit tests, root integration tests, the VM kernel
    /// matrix and check-ebpf: what CI runs.
    Test {
        /// Skip the QEMU kernel matrix (for quick local iterations only).
        #[arg(long)]
        no_vm: bool,
    },
    /// Fuzz the timeline reader (`cargo fuzz`, pinned nightly) for a while.
    Fuzz {
        #[arg(long, default_value_t = 300)]
        seconds: u32,
    },
    /// Benchmarks that run the baseline and unixtrace side by side and
    /// report their ratio.
    Bench {
        #[arg(value_enum)]
        what: BenchKind,
    },
    /// Boot Debian kernels in QEMU and run the integration suite under every strategy.
    VmTest {
        /// Kernel to test: a series (5.10, 6.1, 6.12) or a package name
        /// (linux-image-6.1.0-50-cloud-amd64); repeat for several. Default: 5.10, 6.1, 6.12.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Go on with the other kernels after one fails.
        #[arg(long)]
        keep_going: bool,
        /// Run only the tests whose name contains this (libtest's filter), for
        /// chasing one failure; a column where nothing matches fails.
        #[arg(long)]
        filter: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchKind {
    /// The attributed snapshot against `ss -xap` and `lsof +E -U`.
    Snapshot,
    /// A connection generator untraced and traced by `unixtrace --follow`,
    /// per output, pinned and unpinned; a soak and an overload.
    Follow,
    /// Only follow's message workload: 64-byte ping-pong over one
    /// connection, untraced and traced, pinned and unpinned.
    Messages,
    /// The consumer alone: a recorded 1M-connection stream through decode,
    /// model and each output on one core.
    Consume,
    /// What a running capture costs syscalls it does not trace, per
    /// strategy, beside the empty-tracepoint floor; host and QEMU guests.
    Tax,
    /// A ping-pong on one socket untraced and under `unixtrace capture` of
    /// another path, then under a capture of its own: rate and losses.
    Capture,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::BuildEbpf => ebpf::build(&root),
        Command::CheckEbpf => ebpf::check(&root),
        Command::Run { args } => run::run(&root, &args),
        Command::Package { check: true } => package::check(&root),
        Command::Package { check: false } => {
            let deb = package::package(&root)?;
            println!("{}", deb.display());
            Ok(())
        }
        Command::Test { no_vm } => run::test(&root, !no_vm),
        Command::Fuzz { seconds } => run::fuzz(&root, seconds),
        Command::Bench { what: BenchKind::Snapshot } => {
            let bin = run::build_release(&root, &["unixpeer-user", "unixpeer-tests"])?;
            bench::snapshot::run(&root, &bin.join("unixtrace"))
        }
        Command::Bench { what: BenchKind::Follow } => {
            bench::follow::run(&run::build_release(&root, &["unixpeer-user", "unixpeer-tests"])?)
        }
        Command::Bench { what: BenchKind::Messages } => {
            bench::messages::run(&run::build_release(&root, &["unixpeer-user", "unixpeer-tests"])?)
        }
        Command::Bench { what: BenchKind::Consume } => {
            let bin = run::build_release(&root, &["unixpeer-user", "unixpeer-tests"])?;
            bench::consume::run(&bin, &run::build_example(&root, "unixpeer-user", "consume")?)
        }
        Command::Bench { what: BenchKind::Tax } => {
            bench::tax::run(&root, &run::build_release(&root, &["unixpeer-user", "unixpeer-tests"])?)
        }
        Command::Bench { what: BenchKind::Capture } => {
            bench::capture::run(&run::build_release(&root, &["unixpeer-user", "unixpeer-tests"])?)
        }
        Command::VmTest { kernels, keep_going, filter } => vm::run(&root, &vm::VmOpts { kernels, keep_going, filter }),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}
