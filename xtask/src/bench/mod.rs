//! Benchmarks that run the baseline and unixtrace side by side in one run
//! and report their ratio, with loss and peak RSS beside every figure.

pub mod capture;
pub mod consume;
pub mod follow;
pub mod messages;
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

/// What a generator (connloop, pingpong) printed: `key=value` words.
pub struct Printed(String);

impl Printed {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }
}

impl std::fmt::Display for Printed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs a generator with its limit (`SECONDS` or `-n COUNT`), pinned to
/// `cpu` if given (the generator pins itself, so that what it forks shares
/// the core).
pub fn run_generator(bin: &Path, limit: &str, cpu: Option<usize>) -> Result<Printed> {
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    let mut cmd = Command::new(bin);
    cmd.args(limit.split_whitespace());
    if let Some(cpu) = cpu {
        cmd.arg(cpu.to_string());
    }
    let out = cmd.output().with_context(|| format!("run {name}"))?;
    if !out.status.success() {
        bail!("{name} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Printed(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Runs connloop (`SECONDS` or `-n ITERATIONS`), pinned to `cpu` if given.
pub fn generate(connloop: &Path, limit: &str, cpu: Option<usize>) -> Result<Generated> {
    let out = run_generator(connloop, limit, cpu)?;
    match (out.get("iterations"), out.get("rate"), out.get("cpu_rate")) {
        (Some(i), Some(r), Some(c)) => Ok(Generated { iterations: i as u64, rate: r, cpu_rate: c }),
        _ => bail!("unexpected connloop output: {out}"),
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
        Self::start_to(unixtrace, args, cpu, nice, std::fs::File::create("/dev/null")?)
    }

    /// [`Tracer::start`] with stdout to `out`.
    pub fn start_to(
        unixtrace: &Path,
        args: &[&str],
        cpu: Option<usize>,
        nice: Option<i32>,
        out: std::fs::File,
    ) -> Result<Self> {
        let mut cmd = match nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.args(["-n", &n.to_string()]).arg(unixtrace);
                c
            }
            None => Command::new(unixtrace),
        };
        cmd.args(["--follow", "-v"]).args(args).stdout(Stdio::from(out)).stderr(Stdio::piped());
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

/// What a generator's run reports of its speed.
pub trait Rates {
    /// Per second of the generator's CPU time: the kernel's work for its
    /// syscalls counts, time stolen by other guests does not.
    fn cpu_rate(&self) -> f64;
    /// Per second of wall-clock time.
    fn rate(&self) -> f64;
}

impl Rates for Generated {
    fn cpu_rate(&self) -> f64 {
        self.cpu_rate
    }
    fn rate(&self) -> f64 {
        self.rate
    }
}

/// A run untraced and the same run traced: see [`traced_pair`].
pub struct Pair<T> {
    pub untraced: T,
    pub traced: T,
    pub summary: Summary,
    pub peak_kib: u64,
    /// unixtrace's warnings and resync lines.
    pub said: Vec<String>,
}

/// `run` untraced, then again under unixtrace with `args` (pinned to
/// `tracer_cpu` if given): the traced run is set against the untraced one
/// just before it, as the machines' speed drifts within minutes.
pub fn traced_pair<T>(
    unixtrace: &Path,
    args: &[&str],
    tracer_cpu: Option<usize>,
    mut run: impl FnMut() -> Result<T>,
) -> Result<Pair<T>> {
    let untraced = run()?;
    let tracer = Tracer::start(unixtrace, args, tracer_cpu, None)?;
    let traced = run()?;
    // Let unixtrace drain its ring buffer before it is stopped.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (summary, peak_kib, said) = tracer.stop()?;
    Ok(Pair { untraced, traced, summary, peak_kib, said })
}

impl<T: Rates> Pair<T> {
    /// Traced against untraced, in CPU time.
    pub fn ratio(&self) -> f64 {
        self.traced.cpu_rate() / self.untraced.cpu_rate()
    }

    /// Traced against untraced in wall-clock time, which other guests'
    /// steal disturbs.
    pub fn wall_ratio(&self) -> f64 {
        self.traced.rate() / self.untraced.rate()
    }
}

/// One configuration's pairs.
pub struct Results {
    pub ratios: Vec<f64>,
    pub wall_ratios: Vec<f64>,
    /// The untraced and the traced runs' rates in CPU time.
    pub untraced: Vec<f64>,
    pub traced: Vec<f64>,
    pub lost: u64,
    /// unixtrace printed every event the generator caused in every run.
    pub exact: bool,
    pub peak_kib: u64,
}

impl Default for Results {
    fn default() -> Self {
        Self {
            ratios: Vec::new(),
            wall_ratios: Vec::new(),
            untraced: Vec::new(),
            traced: Vec::new(),
            lost: 0,
            exact: true,
            peak_kib: 0,
        }
    }
}

impl Results {
    /// Adds `pair`, whose traced run caused `events` events.
    pub fn add<T: Rates>(&mut self, pair: &Pair<T>, events: u64) {
        self.ratios.push(pair.ratio());
        self.wall_ratios.push(pair.wall_ratio());
        self.untraced.push(pair.untraced.cpu_rate());
        self.traced.push(pair.traced.cpu_rate());
        self.lost += pair.summary.lost;
        self.exact &= pair.summary.printed == events;
        self.peak_kib = self.peak_kib.max(pair.peak_kib);
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

/// A ratio against its goal, as the reports say it.
pub fn met(ratio: f64, goal: f64) -> &'static str {
    if ratio >= goal { "met" } else { "not met" }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
