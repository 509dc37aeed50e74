//! `run` and `test`.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result};

use crate::{
    ebpf, toolchain,
    util::{apt_install, is_root, output, run as sh},
};

fn cargo(root: &Path, toolchain: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root).arg(toolchain);
    c
}

pub fn build_unixtrace(root: &Path) -> Result<std::path::PathBuf> {
    Ok(build_release(root, &["unixpeer-user"])?.join("unixtrace"))
}

/// Builds the binaries of `packages` in release mode; returns their folder.
pub fn build_release(root: &Path, packages: &[&str]) -> Result<std::path::PathBuf> {
    let tc = toolchain::stable()?;
    let mut c = cargo(root, &tc);
    c.args(["build", "--release", "--locked", "--bins"]);
    for p in packages {
        c.args(["-p", p]);
    }
    sh(&mut c)?;
    Ok(root.join("target/release"))
}

/// Builds one example in release mode; returns its path.
pub fn build_example(root: &Path, package: &str, example: &str) -> Result<std::path::PathBuf> {
    let tc = toolchain::stable()?;
    sh(cargo(root, &tc).args(["build", "--release", "--locked", "-p", package, "--example", example]))?;
    Ok(root.join("target/release/examples").join(example))
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let bin = build_unixtrace(root)?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        eprintln!("xtask: unixtrace needs root for eBPF; running it through sudo");
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=TERM,COLUMNS").arg(&bin);
        c
    };
    cmd.args(args);
    let status = cmd.status().with_context(|| format!("could not start {}", bin.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Long enough to get past the seeds into new shapes, short enough for every run.
const FUZZ_SECONDS: u32 = 30;

/// Runs the timeline reader's fuzz target for `seconds`, installing
/// cargo-fuzz first if needed. The corpus grows under target/, the
/// committed seeds stay as they are.
pub fn fuzz(root: &Path, seconds: u32) -> Result<()> {
    let nightly = toolchain::nightly()?;
    if output(Command::new("cargo").args([nightly.as_str(), "fuzz", "--version"])).is_none() {
        sh(Command::new("cargo").args([nightly.as_str(), "install", "cargo-fuzz", "--locked"]))?;
    }
    let corpus = root.join("target/fuzz-corpus/timeline_reader");
    std::fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    // No AddressSanitizer: the reader is safe Rust (no `unsafe` in
    // timeline/), and what the target looks for is a panic or an abort,
    // which libFuzzer catches without it. Instrumenting every dependency
    // for ASan took a third of the stage's CPU time (501 s against 335 s
    // of compiling, measured here).
    sh(cargo(root, &nightly)
        .args(["fuzz", "run", "--fuzz-dir", "fuzz", "--sanitizer", "none", "timeline_reader"])
        .arg(&corpus)
        .arg(root.join("fuzz/seeds/timeline_reader"))
        .args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048", "-print_final_stats=1"]))
}

struct Stage {
    name: &'static str,
    took: std::time::Duration,
}

pub fn test(root: &Path, with_vm: bool) -> Result<()> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        eprintln!("\nxtask: ==== {name}");
        let start = Instant::now();
        f().with_context(|| format!("stage `{name}` failed"))?;
        stages.push(Stage { name, took: start.elapsed() });
        Ok(())
    };
    let tc = toolchain::stable()?;
    let user_crates = ["-p", "unixpeer-common", "-p", "unixpeer-user", "-p", "xtask", "-p", "unixpeer-tests"];

    stage("rustfmt", &mut || sh(cargo(root, &tc).args(["fmt", "--all", "--", "--check"])))?;
    stage("clippy (user crates)", &mut || {
        sh(cargo(root, &tc)
            .args(["clippy", "--locked", "--all-targets"])
            .args(user_crates)
            .args(["--", "-D", "warnings"]))
    })?;
    stage("clippy (eBPF crate)", &mut || {
        let nightly = toolchain::nightly()?;
        sh(cargo(root, &nightly)
            .args(["clippy", "--locked", "-p", "unixpeer-ebpf", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"]))
    })?;
    stage("unit tests", &mut || {
        sh(cargo(root, &tc).args(["test", "--locked", "-p", "unixpeer-common", "-p", "unixpeer-user", "-p", "xtask"]))
    })?;
    stage("root integration tests (host kernel)", &mut || {
        if is_root() {
            // The HTML export test renders the page in a real browser; the
            // metrics test has a real Prometheus server scrape unixtrace;
            // the D-Bus test runs a real bus, service and client; the
            // capture test decodes its files with the real tshark, one of
            // them a real PostgreSQL's.
            apt_install(&[
                "chromium",
                "prometheus",
                "curl",
                "dbus-daemon",
                "dbus-bin",
                "python3-dbus",
                "tshark",
                "postgresql",
            ])?;
            // The traffic test moves bytes through socat.
            apt_install(&["socat"])?;
        }
        let bin = build_release(root, &["unixpeer-user", "unixpeer-tests"])?.join("unixtrace");
        let mut c = cargo(root, &tc);
        c.args(["test", "--release", "--locked", "-p", "unixpeer-tests", "--", "--test-threads=1"])
            .env("UNIXTRACE_BIN", &bin);
        if !is_root() {
            // The tests load eBPF programs: run only the test binaries as root.
            c.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E");
        }
        sh(&mut c)
    })?;
    stage("package (build, install, use, remove the .deb)", &mut || crate::package::check(root))?;
    if with_vm {
        stage("VM kernel matrix", &mut || crate::vm::run(root, &crate::vm::VmOpts::default()))?;
    }
    stage("check-ebpf", &mut || ebpf::check(root))?;
    stage("fuzz the timeline reader", &mut || fuzz(root, FUZZ_SECONDS))?;

    eprintln!("\nxtask: all stages passed");
    for s in &stages {
        eprintln!("  {:<40} {:>7.1} s", s.name, s.took.as_secs_f64());
    }
    Ok(())
}
