//! `cargo xtask bench capture`: what `unixtrace capture` costs a busy
//! socket it does not capture, and what it does when it captures it.
//!
//! The workload is a ping-pong of 64-byte messages over a named stream
//! socket between two threads of this process, its rate counted in the
//! process's CPU time (the kernel's work for its syscalls included, time
//! stolen by other guests not). First, pairs of runs untraced and traced
//! by a capture whose --path matches only a quiet socket in the same
//! directory: every socket send of the system then runs the payload
//! program's filter, none the copy (goal: >= 0.95 of the untraced rate).
//! Pairs alternate which run comes first, so that drift in the machine's
//! speed, and what a capture's start and teardown leave behind, weigh on
//! both sides alike. Then a capture of the busy socket itself: its rate,
//! and every message sent either captured or reported lost, none
//! unaccounted. Beside them, a capture filtered to a process that sends
//! nothing, whose program returns at its first tests: the floor of any
//! hook on the send path, against which to read the other. Each series
//! runs pinned (both threads of the workload on one CPU, unixtrace on
//! another) and unpinned, with the capture's messages lost and peak RSS.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{GENERATOR_CPU, TRACER_CPU, median, pin_to};

const PAIRS: usize = 8;
const RUN: Duration = Duration::from_secs(2);
const MESSAGE: usize = 64;
const GOAL: f64 = 0.95;

struct Rate {
    round_trips: u64,
    /// Round trips per second of the process's CPU time.
    cpu_rate: f64,
}

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The calling thread on `cpu` alone.
fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; sched_setaffinity(0) sets the
    // calling thread's mask from it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Round trips over a fresh connection to a listener at `path` for `RUN`,
/// both ends on `cpu` if given, in threads of their own so that the
/// caller's affinity stays as it was.
fn ping_pong(path: &Path, cpu: Option<usize>) -> Result<Rate> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        if let Some(c) = cpu {
            pin_thread(c);
        }
        ping_pong_here(&path, cpu)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the ping-pong client panicked"))?
}

fn ping_pong_here(path: &Path, cpu: Option<usize>) -> Result<Rate> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some(c) = cpu {
            pin_thread(c);
        }
        let (mut conn, _) = listener.accept()?;
        let mut buf = [0u8; MESSAGE];
        while conn.read_exact(&mut buf).is_ok() {
            conn.write_all(&buf)?;
        }
        Ok(())
    });
    let mut client = UnixStream::connect(path).context("connect to the ping-pong server")?;
    let mut buf = [7u8; MESSAGE];
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut round_trips = 0u64;
    while start.elapsed() < RUN {
        client.write_all(&buf)?;
        client.read_exact(&mut buf)?;
        round_trips += 1;
    }
    let cpu = cpu_seconds() - cpu;
    drop(client);
    server.join().map_err(|_| anyhow::anyhow!("the ping-pong server panicked"))??;
    let _ = std::fs::remove_file(path);
    Ok(Rate { round_trips, cpu_rate: round_trips as f64 / cpu.max(1e-9) })
}

/// A running `unixtrace capture -w -` into nothing.
struct Capturer {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Capturer {
    fn start(unixtrace: &Path, filter: &[&std::ffi::OsStr], cpu: Option<usize>) -> Result<Self> {
        let mut cmd = Command::new(unixtrace);
        cmd.arg("capture").args(filter).args(["-w", "-"]).stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(c) = cpu {
            pin_to(&mut cmd, c);
        }
        let mut child = cmd.spawn().context("start unixtrace capture")?;
        let mut stderr = BufReader::new(child.stderr.take().context("piped stderr")?);
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        if !line.starts_with("unixtrace: capturing to") {
            let _ = child.kill();
            bail!("unixtrace capture did not start: {line}");
        }
        Ok(Self { child, stderr })
    }

    /// Stops it; returns (messages captured, messages lost, peak RSS in KiB).
    fn stop(mut self) -> Result<(u64, u64, u64)> {
        std::thread::sleep(Duration::from_millis(100));
        let peak_kib = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix(" kB")?.parse().ok()))
            .unwrap_or(0);
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("unixtrace capture failed: {rest}");
        }
        rest.lines()
            .find_map(|l| {
                let r = l.strip_prefix("unixtrace: captured ")?;
                let captured = r.split(' ').next()?.parse().ok()?;
                let lost = r.rsplit(", ").next()?.strip_suffix(" lost")?.parse().ok()?;
                Some((captured, lost, peak_kib))
            })
            .with_context(|| format!("no closing line from unixtrace capture: {rest}"))
    }
}

pub fn run(release: &Path) -> Result<()> {
    let unixtrace = release.join("unixtrace");
    let dir = std::env::temp_dir().join(format!("unixpeer-bench-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let busy = dir.join("busy.sock");
    let quiet = dir.join("quiet.sock");
    let _quiet = UnixListener::bind(&quiet).context("bind the quiet socket")?;
    // A process that sends nothing: the programs return at their first
    // test, so this is close to the floor every syscall hook pays (the
    // syscall slow path for all syscalls), against which to read the other.
    let mut idle = Command::new("sleep").arg("3600").spawn().context("start sleep")?;
    let idle_pid = idle.id().to_string();
    let mut untraced = Vec::new();
    let series: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        ("other-pid", vec!["-p".as_ref(), idle_pid.as_ref()]),
        ("other-path", vec!["--path".as_ref(), quiet.as_os_str()]),
    ];
    let mut verdicts = Vec::new();
    println!(
        "capture: 64-byte ping-pong; pinned: both threads on CPU {GENERATOR_CPU}, unixtrace on CPU {TRACER_CPU}; \
         unpinned: neither; {PAIRS} pairs of {} s runs",
        RUN.as_secs()
    );
    for pinned in [true, false] {
        let mode = if pinned { "pinned" } else { "unpinned" };
        let (work, tracer) = if pinned { (Some(GENERATOR_CPU), Some(TRACER_CPU)) } else { (None, None) };
        for (name, filter) in &series {
            let mut ratios = Vec::new();
            for i in 0..PAIRS {
                // Every other pair runs traced first, so that a drift in the
                // machine's speed, or what a capture's start and teardown
                // leave behind, weighs on both sides alike.
                let untraced_first = i % 2 == 0;
                let before = if untraced_first { Some(ping_pong(&busy, work)?) } else { None };
                let cap = Capturer::start(&unixtrace, filter, tracer)?;
                let traced = ping_pong(&busy, work)?;
                let (captured, lost, peak_kib) = cap.stop()?;
                let base = match before {
                    Some(b) => b,
                    None => ping_pong(&busy, work)?,
                };
                let ratio = traced.cpu_rate / base.cpu_rate;
                println!(
                    "capture {mode} {name} untraced={:.0}/s traced={:.0}/s ratio={ratio:.3} captured={captured} \
                     lost={lost} peak_rss={:.1}MiB",
                    base.cpu_rate,
                    traced.cpu_rate,
                    peak_kib as f64 / 1024.0
                );
                ratios.push(ratio);
                untraced.push(base.cpu_rate);
            }
            let verdict = median(ratios);
            println!("capture {mode} {name} median ratio={verdict:.3}");
            if *name == "other-path" {
                verdicts.push((mode, verdict));
            }
        }
    }
    let _ = idle.kill();
    let _ = idle.wait();
    for (mode, verdict) in verdicts {
        println!("capture {mode} other-path goal >= {GOAL}: {}", if verdict >= GOAL { "met" } else { "MISSED" });
    }
    let cap = Capturer::start(&unixtrace, &["--path".as_ref(), busy.as_os_str()], None)?;
    let traced = ping_pong(&busy, None)?;
    let (captured, lost, peak_kib) = cap.stop()?;
    let sent = traced.round_trips * 2;
    println!(
        "capture unpinned busy-path traced={:.0}/s ratio={:.3} messages={sent} captured={captured} lost={lost} \
         peak_rss={:.1}MiB",
        traced.cpu_rate,
        traced.cpu_rate / median(untraced),
        peak_kib as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    if captured + lost != sent {
        bail!("{} of {sent} messages neither captured nor reported lost", sent as i64 - (captured + lost) as i64);
    }
    Ok(())
}
