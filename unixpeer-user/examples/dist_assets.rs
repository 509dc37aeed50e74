//! The shell completions and man pages of `unixtrace`, generated from its
//! clap definitions (`cli::Args`), for `cargo xtask package`. An example
//! rather than a subcommand, so the installed binary's CLI carries nothing
//! that only packaging needs.
//!
//! Usage: dist_assets OUT_DIR
//!
//! Writes into OUT_DIR: `unixtrace.bash`, `_unixtrace` (zsh),
//! `unixtrace.fish`, `unixtrace.8` and one `unixtrace-SUBCOMMAND.8` per
//! subcommand, and prints each file's name on stdout.

use std::{fs::File, io::BufWriter, io::Write, path::PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use unixpeer_user::cli::Args;

/// Administrators' commands: unixtrace's live mode needs root or CAP_BPF.
const SECTION: &str = "8";

fn main() -> Result<()> {
    let out = std::env::args_os().nth(1).map(PathBuf::from).context("usage: dist_assets OUT_DIR")?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cmd = Args::command();
    cmd.build();
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, &name, &out)
            .with_context(|| format!("cannot write the {shell} completion"))?;
        println!("{}", path.file_name().unwrap_or_default().to_string_lossy());
    }
    man_page(&out, &format!("{name}.{SECTION}"), cmd.clone())?;
    // After build(), a subcommand's display name is `unixtrace-export`:
    // its page's title, and what the main page's SEE ALSO names.
    for sub in cmd.get_subcommands() {
        let page = sub.get_display_name().unwrap_or(sub.get_name());
        man_page(&out, &format!("{page}.{SECTION}"), sub.clone())?;
    }
    Ok(())
}

fn man_page(out: &std::path::Path, file: &str, cmd: clap::Command) -> Result<()> {
    let path = out.join(file);
    let mut w = BufWriter::new(File::create(&path).with_context(|| format!("cannot create {}", path.display()))?);
    clap_mangen::Man::new(cmd).section(SECTION).render(&mut w)?;
    w.flush()?;
    println!("{file}");
    Ok(())
}
