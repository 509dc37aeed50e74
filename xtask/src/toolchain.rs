//! Pinned toolchains, installed through rustup when missing. Never relies
//! on rust-toolchain.toml auto-install (rustup 1.29 does not do it).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{apt_install, output, run};

/// aya 0.16 and aya-obj 0.6 need rustc >= 1.98.
const MIN_STABLE_MINOR: u32 = 98;
pub const PINNED_STABLE: &str = "1.99";
/// The nightly whose LLVM major (22) matches bpf-linker's: bpf-linker reads
/// rustc's bitcode, and a mismatch fails with "Invalid record".
pub const PINNED_NIGHTLY: &str = "nightly-2026-07-01";
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";

fn rustup() -> Command {
    Command::new("rustup")
}

fn installed(toolchain: &str) -> bool {
    output(rustup().args(["toolchain", "list"])).is_some_and(|l| l.lines().any(|t| t.starts_with(toolchain)))
}

fn ensure_installed(toolchain: &str, components: &[&str], targets: &[&str]) -> Result<()> {
    if !installed(toolchain) {
        let mut c = rustup();
        c.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
        for comp in components {
            c.args(["--component", comp]);
        }
        run(&mut c).context("rustup could not install a pinned toolchain")?;
    } else if !components.is_empty() {
        let mut c = rustup();
        c.args(["component", "add", "--toolchain", toolchain]).args(components);
        run(&mut c)?;
    }
    if !targets.is_empty() {
        let mut c = rustup();
        c.args(["target", "add", "--toolchain", toolchain]).args(targets);
        run(&mut c)?;
    }
    Ok(())
}

/// The toolchain to build the workspace with, as a `+toolchain` argument:
/// the active one (`cargo +T xtask`, else rustup's default) when it is new
/// enough, else the pinned stable.
pub fn stable() -> Result<String> {
    if let Ok(t) = std::env::var("UNIXPEER_TOOLCHAIN") {
        return Ok(format!("+{t}"));
    }
    let default_minor = output(Command::new("rustc").arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .and_then(|v| v.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()));
    // The toolchain whose rustc answered above: `cargo +1.99 xtask` runs
    // with RUSTUP_TOOLCHAIN=1.99, which is not rustup's default.
    let active = std::env::var("RUSTUP_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| output(rustup().arg("default")).and_then(|s| s.split_whitespace().next().map(str::to_owned)));
    let toolchain = match (default_minor, active) {
        (Some(m), Some(name)) if m >= MIN_STABLE_MINOR => name,
        _ => PINNED_STABLE.to_owned(),
    };
    ensure_installed(&toolchain, &["clippy", "rustfmt"], &[])?;
    Ok(format!("+{toolchain}"))
}

pub fn nightly() -> Result<String> {
    ensure_installed(PINNED_NIGHTLY, &["rust-src", "clippy", "rustfmt"], &[])?;
    Ok(format!("+{PINNED_NIGHTLY}"))
}

pub fn llvm_bin() -> PathBuf {
    PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}/bin"))
}

/// bpf-linker linked against LLVM `LLVM_MAJOR`, built from crates.io when
/// absent or linked against another LLVM.
pub fn ensure_bpf_linker() -> Result<()> {
    apt_install(&[
        &format!("llvm-{LLVM_MAJOR}-dev"),
        &format!("libpolly-{LLVM_MAJOR}-dev"),
        "libzstd-dev",
        "zlib1g-dev",
    ])?;
    if bpf_linker_ok() {
        return Ok(());
    }
    let tc = stable()?;
    let path = format!("{}:{}", llvm_bin().display(), std::env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .arg(&tc)
        .args(["install", "bpf-linker", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")])
        .env("PATH", path))?;
    if !bpf_linker_ok() {
        bail!("bpf-linker {BPF_LINKER_VERSION} was installed but is not linked against LLVM {LLVM_MAJOR}");
    }
    Ok(())
}

fn bpf_linker_ok() -> bool {
    let Some(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    let version_ok = output(Command::new(path.trim()).arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    let llvm_ok =
        output(Command::new("ldd").arg(path.trim())).is_some_and(|l| l.contains(&format!("libLLVM.so.{LLVM_MAJOR}")));
    version_ok && llvm_ok
}
