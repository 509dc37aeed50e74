//! Boots one kernel in QEMU (software emulation: KVM does not work on these machines)
//! and reads the guest's verdicts from its serial console.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::kernel::Kernel;

/// LSMs as Debian enables them, plus BPF LSM. Expedited RCU grace
/// periods: every start and stop of unixtrace waits for some (registering
/// and removing tracepoints, kprobes and trampolines), which under TCG took
/// about a second of each test; expedited, they take a fraction of that
/// (6.12, start and stop: fentry 5.3 -> 3.9 s, kprobe 4.6 -> 3.2 s,
/// tracepoint 3.1 -> 2.3 s). Nothing the programs do depends on them.
const CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 rcupdate.rcu_expedited=1 lsm=lockdown,capability,landlock,yama,apparmor,bpf";

#[derive(Clone, Copy, PartialEq)]
pub enum Status {
    Pass,
    Fail,
    Unsupported,
}

/// One column's verdict in one guest.
pub struct Cell {
    pub column: String,
    pub status: Status,
    pub reason: String,
}

impl Cell {
    pub fn summary(&self) -> String {
        let status = match self.status {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Unsupported => "not supported",
        };
        format!("{status} ({})", self.reason)
    }
}

/// What one boot reported.
pub struct Boot {
    pub cells: Vec<Cell>,
    /// Why the boot as a whole failed: a panic, a timeout, a fatal setup error, no DONE.
    pub problem: Option<String>,
    pub elapsed: Duration,
}

/// What the guest's clocks count.
#[derive(Clone, Copy, PartialEq)]
pub enum GuestClock {
    /// The host's time: what the tests need, as fast as TCG goes.
    Host,
    /// Instructions the guest executed (`-icount shift=1`: each one 2 ns
    /// of guest time; an idle guest skips ahead to its next timer). For
    /// measuring: under TCG the host's time swings by up to half between
    /// runs with the host's other load, while instructions executed do
    /// not; the same workload's CPU-time rate repeats to within 0.1%
    /// (`cargo xtask bench tax`). They count work, not the cache misses
    /// or stalls it causes on real hardware. Single-threaded TCG (below)
    /// is what icount requires.
    ///
    /// One vCPU: the vCPUs take turns on one host thread and their
    /// instructions advance one shared clock, so while one ran a busy
    /// unixtrace the other's workload was charged for it (the connection
    /// loop came out at 0.45-0.51 under every strategy, whose hooks alone
    /// cost it 0.83). With one vCPU each task is charged its own.
    Instructions,
}

fn parse_result(rest: &str) -> Option<Cell> {
    let rest = rest.strip_prefix("RESULT col=")?;
    let (column, rest) = rest.split_once(" status=")?;
    let (status, reason) = rest.split_once(" reason=").unwrap_or((rest, ""));
    let status = match status {
        "pass" => Status::Pass,
        "unsupported" => Status::Unsupported,
        _ => Status::Fail,
    };
    Some(Cell { column: column.to_string(), status, reason: reason.trim().to_string() })
}

/// Sends each console line (lossily decoded, without `\r`) until QEMU closes it.
fn forward_lines(out: impl Read, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
        if tx.send(line).is_err() {
            return;
        }
        buf.clear();
    }
}

/// Boots `kernel` with `initrd`, writes its console to `log`, and collects the
/// lines marked with `marker` until the guest powers off or `timeout` passes.
/// `cmdline` (which carries the marker) is handed to the guest's init.
pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    (marker, cmdline): (&str, &str),
    log: &Path,
    timeout: Duration,
    clock: GuestClock,
) -> Result<Boot> {
    let start = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64");
    let vcpus = match clock {
        GuestClock::Host => "2",
        GuestClock::Instructions => {
            qemu.args(["-icount", "shift=1,sleep=on"]);
            "1"
        }
    };
    let mut child = qemu
        // One host thread for both vCPUs: with multi-threaded TCG, live
        // patching of kernel text (attaching and detaching BPF trampolines
        // while another vCPU runs the function) took an int3 Oops in
        // unix_stream_connect+0x5 on 6.12; single-threaded TCG serialises it.
        // qemu64, not max: under max (QEMU 7.2's TCG emulates AVX2) the
        // guest kernel picks vector code that TCG runs slowly; the same
        // tests took 12% less guest time under qemu64 (105.8 s against
        // 121.2 s, `--filter traffic_` on 6.12). The programs use no CPU
        // feature. Two vCPUs stay for the tests: per-CPU maps and buffers
        // are under test.
        .args(["-accel", "tcg,thread=single", "-cpu", "qemu64", "-m", "1024", "-smp", vcpus])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("{CMDLINE} {cmdline} UNIXPEER_KERNEL={}", kernel.release))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let tx2 = tx.clone();
    thread::spawn(move || forward_lines(stdout, tx));
    thread::spawn(move || forward_lines(stderr, tx2));

    let mut log_file = fs::File::create(log)?;
    let tag = format!("@@UNIXPEER {marker} ");
    let mut boot = Boot { cells: Vec::new(), problem: None, elapsed: Duration::ZERO };
    let mut done = false;
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                boot.problem = Some(format!("timed out after {} s", timeout.as_secs()));
                child.kill().ok();
                break;
            }
        };
        writeln!(log_file, "{line}")?;
        if line.contains("Kernel panic") && boot.problem.is_none() {
            boot.problem = Some(line.trim().to_string());
        }
        let Some((_, rest)) = line.split_once(&tag) else {
            continue;
        };
        if let Some(cell) = parse_result(rest) {
            eprintln!("vm-test: {} {}: {}", kernel.release, cell.column, cell.summary());
            boot.cells.push(cell);
        } else if let Some(why) = rest.strip_prefix("FATAL ") {
            boot.problem = Some(format!("guest setup failed: {why}"));
        } else if rest == "DONE" {
            done = true;
        } else {
            eprintln!("vm-test: {}: {rest}", kernel.release);
        }
    }
    let status = child.wait()?;
    boot.elapsed = start.elapsed();
    if boot.problem.is_none() && !done {
        boot.problem = Some(format!("the guest stopped before it was done (qemu: {status})"));
    }
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines() {
        let c = parse_result("RESULT col=kprobe status=unsupported reason=no kprobe (x)").unwrap();
        assert_eq!(c.column, "kprobe");
        assert!(c.status == Status::Unsupported);
        assert_eq!(c.reason, "no kprobe (x)");
        let c = parse_result("RESULT col=auto status=pass reason=3 tests passed").unwrap();
        assert!(c.status == Status::Pass);
        assert!(parse_result("BOOTED kernel=6.1").is_none());
    }
}
