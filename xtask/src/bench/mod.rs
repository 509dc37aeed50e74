//! Benchmarks that run the baseline and unixtrace side by side in one run
//! and report their ratio, with loss and peak RSS beside every figure.

pub mod capture;
pub mod consume;
pub mod follow;
pub mod snapshot;
pub mod tax;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// connect, accept, socketpair and four closes.
pub const EVENTS_PER_ITERATION: u64 = 7;
/// The generator's listen() and the close of its listener.
pub const EVENTS_PER_RUN: u64 = 2;
pub const GENERATOR_CPU: usize = 0;
pub const TRACER_CPU: usize = 1;

/// What one run of the connection generator did.
pub struct Generated {
    pub iterations: u64,
    /// Iterations per second of wall-clock time.
    pub rate: f64,
    /// Iterations per second of the generator's CPU time: the kernel's work
    /// for its syscalls counts, time stolen by other guests does not.
    pub cpu_rate: f64,
}

impl Generated {
    /// Events the kernel reports for this run of connloop.
    pub fn events(&self) -> u64 {
        self.iterations * EVENTS_PER_ITERATION + EVENTS_PER_RUN
    }
}

/// Runs connloop (`SECONDS` or `-n ITERATIONS`), pinned to `cpu` if given.
pub fn generate(connloop: &Path, limit: &str, cpu: Option<usize>) -> Result<Generated> {
    let mut cmd = Command::new(connloop);
    cmd.args(limit.split_whitespace());
    if let Some(cpu) = cpu {
        cmd.arg(cpu.to_string());
    }
    let out = cmd.output().context("run connloop")?;
    if !out.status.success() {
        bail!("connloop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> Option<f64> {
        text.split_whitespace().find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    match (field("iterations"), field("rate"), field("cpu_rate")) {
        (Some(i), Some(r), Some(c)) => Ok(Generated { iterations: i as u64, rate: r, cpu_rate: c }),
        _ => bail!("unexpected connloop output: {text}"),
    }
}

/// `unixtrace --follow -v` running in the background.
pub struct Tracer {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
}

/// The `-v` summary unixtrace prints when it stops.
#[derive(Debug)]
pub struct Summary {
    pub received: u64,
    pub printed: u64,
    pub lost: u64,
    pub resyncs: u64,
}

impl Summary {
    /// `unixtrace: N events received, M printed, L lost, R resyncs, …`
    fn parse(line: &str) -> Option<Self> {
        line.contains("events received").then_some(())?;
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        Some(Self { received: *nums.first()?, printed: *nums.get(1)?, lost: *nums.get(2)?, resyncs: *nums.get(3)? })
    }
}

impl Tracer {
    /// Starts unixtrace with `args` (after `--follow -v`), stdout to
    /// /dev/null, pinned to `cpu` if given and at `nice` if given; returns
    /// once it is attached and snapshotted.
    pub fn start(unixtrace: &Path, args: &[&str], cpu: Option<usize>, nice: Option<i32>) -> Result<Self> {
        let mut cmd = match nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.args(["-n", &n.to_string()]).arg(unixtrace);
                c
            }
            None => Command::new(unixtrace),
        };
        cmd.args(["--follow", "-v"])
            .args(args)
            .stdout(Stdio::from(std::fs::File::create("/dev/null")?))
            .stderr(Stdio::piped());
        if let Some(cpu) = cpu {
            pin_to(&mut cmd, cpu);
        }
        let mut child = cmd.spawn().context("start unixtrace")?;
        let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
        // -v prints the ring buffer's size once attached and snapshotted.
        let mut line = String::new();
        loop {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("unixtrace exited before it was ready");
            }
            if line.contains("ring buffer") {
                return Ok(Self { child, stderr });
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGINT, then the summary line, peak RSS (KiB) and what it said
    /// about loss and resyncs.
    pub fn stop(mut self) -> Result<(Summary, u64, Vec<String>)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest)?;
        let maxrss_kib = wait_rss(self.pid())?;
        let summary = rest
            .lines()
            .find_map(Summary::parse)
            .with_context(|| format!("no summary from unixtrace; stderr:\n{rest}"))?;
        let said = rest.lines().filter(|l| l.contains("WARNING") || l.contains("resynchronized")).map(String::from);
        Ok((summary, maxrss_kib, said.collect()))
    }
}

pub fn pin_to(cmd: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only sched_setaffinity between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
}

/// Waits for our child `pid`; returns its peak RSS in KiB.
pub fn wait_rss(pid: i32) -> Result<u64> {
    let mut status = 0;
    // SAFETY: wait4 on our own child with a zeroed rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok(ru.ru_maxrss as u64)
}

pub fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
