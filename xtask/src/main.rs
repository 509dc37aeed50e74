//! Project tasks: `cargo xtask <command>`.

mod vm;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "unixtrace project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot Debian kernels in QEMU and run the integration suite under every strategy.
    VmTest {
        /// Kernel to test: a series (5.10, 6.1, 6.12) or a package name
        /// (linux-image-6.1.0-50-cloud-amd64); repeat for several. Default: 5.10, 6.1, 6.12.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Go on with the other kernels after one fails.
        #[arg(long)]
        keep_going: bool,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::VmTest {
            kernels,
            keep_going,
        } => vm::run(
            &workspace_root(),
            &vm::VmOpts {
                kernels,
                keep_going,
            },
        ),
    }
}
