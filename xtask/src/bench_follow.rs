//! `cargo xtask bench follow`: a connection generator (connect + accept +
//! socketpair + four closes per iteration, on one core) untraced and traced
//! by `unixtrace --follow`, interleaved in one run. Reports the throughput
//! ratio, the events unixtrace printed against the events the generator
//! caused, the lost count, and unixtrace's RSS over a 1,000,000-connection run.
//! Each round also measures the hooks alone (the programs attached, every
//! event filtered out by their pid test, before any walk): the most any
//! work inside them could give back.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const ROUNDS: usize = 3;
const SECONDS: &str = "5";
/// connect, accept, socketpair and four closes.
const EVENTS_PER_ITERATION: u64 = 7;
/// The generator's listen() and the close of its listener.
const EVENTS_PER_RUN: u64 = 2;
const GENERATOR_CPU: &str = "0";
const TRACER_CPU: usize = 1;
const LONG_RUN: &str = "1000000";

struct Generated {
    iterations: u64,
    rate: f64,
}

fn generate(connloop: &Path, args: &[&str]) -> Result<Generated> {
    let out = Command::new(connloop).args(args).output().context("run connloop")?;
    if !out.status.success() {
        bail!("connloop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> Option<f64> {
        text.split_whitespace().find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    match (field("iterations"), field("rate")) {
        (Some(i), Some(r)) => Ok(Generated { iterations: i as u64, rate: r }),
        _ => bail!("unexpected connloop output: {text}"),
    }
}

struct Tracer {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Tracer {
    fn start(unixtrace: &Path) -> Result<Self> {
        Self::start_with(unixtrace, &["--comm", "connloop"])
    }

    fn start_with(unixtrace: &Path, filter: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(unixtrace);
        cmd.args(["--follow", "-v"])
            .args(filter)
            .stdout(Stdio::from(std::fs::File::create("/dev/null")?))
            .stderr(Stdio::piped());
        pin_to(&mut cmd, TRACER_CPU);
        let mut child = cmd.spawn().context("start unixtrace")?;
        let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
        // -v prints the backend once attached and snapshotted.
        let mut line = String::new();
        loop {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("unixtrace exited before it was ready");
            }
            if line.contains("backend") {
                eprintln!("  {}", line.trim());
                return Ok(Self { child, stderr });
            }
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGINT, then the summary line and peak RSS.
    fn stop(mut self) -> Result<(Summary, u64)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGINT) };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest)?;
        let maxrss_kib = wait_rss(self.pid())?;
        let summary = rest
            .lines()
            .find_map(Summary::parse)
            .with_context(|| format!("no summary from unixtrace; stderr:\n{rest}"))?;
        for l in rest.lines().filter(|l| l.contains("WARNING")) {
            eprintln!("  {l}");
        }
        Ok((summary, maxrss_kib))
    }
}

#[derive(Debug)]
struct Summary {
    received: u64,
    printed: u64,
    lost: u64,
}

impl Summary {
    /// `unixtrace: N events received, M printed, L lost, …`
    fn parse(line: &str) -> Option<Self> {
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        line.contains("events received").then_some(())?;
        Some(Self { received: *nums.first()?, printed: *nums.get(1)?, lost: *nums.get(2)? })
    }
}

fn pin_to(cmd: &mut Command, cpu: usize) {
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

fn wait_rss(pid: i32) -> Result<u64> {
    let mut status = 0;
    // SAFETY: wait4 on our own child with a zeroed rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok(ru.ru_maxrss as u64)
}

fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(release: &Path) -> Result<()> {
    let unixtrace = release.join("unixtrace");
    let connloop = release.join("connloop");
    println!(
        "generator pinned to CPU {GENERATOR_CPU}, unixtrace to CPU {TRACER_CPU}; {ROUNDS} rounds of {SECONDS} s each"
    );
    let (mut untraced, mut traced, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut floors = Vec::new();
    let mut all_exact = true;
    let mut total_lost = 0;
    for round in 1..=ROUNDS {
        let base = generate(&connloop, &[SECONDS, GENERATOR_CPU])?;
        let tracer = Tracer::start(&unixtrace)?;
        let gen_traced = generate(&connloop, &[SECONDS, GENERATOR_CPU])?;
        // Let unixtrace drain its ring buffer before it is stopped.
        std::thread::sleep(Duration::from_millis(500));
        let (summary, rss) = tracer.stop()?;
        let expected = gen_traced.iterations * EVENTS_PER_ITERATION + EVENTS_PER_RUN;
        let ratio = gen_traced.rate / base.rate;
        println!(
            "round {round}: untraced {:.0}/s, traced {:.0}/s, ratio {ratio:.3}; events printed {} of {expected} expected, {} received, {} lost; peak RSS {:.1} MiB",
            base.rate,
            gen_traced.rate,
            summary.printed,
            summary.received,
            summary.lost,
            rss as f64 / 1024.0
        );
        all_exact &= summary.printed == expected;
        total_lost += summary.lost;

        // The same programs attached, with every event of the generator
        // filtered out by their pid test, before any walk (`-p 1`: only init's):
        // what the strategy's hooks cost before the programs do any work.
        // Its own untraced run right before it: the machine's speed drifts.
        let floor_base = generate(&connloop, &[SECONDS, GENERATOR_CPU])?;
        let idle = Tracer::start_with(&unixtrace, &["-p", "1"])?;
        let gen_floor = generate(&connloop, &[SECONDS, GENERATOR_CPU])?;
        idle.stop()?;
        let floor = gen_floor.rate / floor_base.rate;
        println!(
            "  hooks only (every event filtered in the kernel): untraced {:.0}/s, {:.0}/s, ratio {floor:.3}",
            floor_base.rate, gen_floor.rate
        );
        floors.push(floor);
        untraced.push(base.rate);
        traced.push(gen_traced.rate);
        ratios.push(ratio);
    }

    println!("\nRSS over {LONG_RUN} connections:");
    let tracer = Tracer::start(&unixtrace)?;
    let pid = tracer.pid();
    let sampler = std::thread::spawn(move || {
        let mut samples = Vec::new();
        let start = Instant::now();
        while let Some(kib) = rss_kib(pid) {
            samples.push((start.elapsed().as_secs_f64(), kib));
            std::thread::sleep(Duration::from_millis(500));
            if samples.len() > 600 {
                break;
            }
        }
        samples
    });
    let long = generate(&connloop, &["-n", LONG_RUN, GENERATOR_CPU])?;
    std::thread::sleep(Duration::from_millis(500));
    let (summary, peak) = tracer.stop()?;
    let samples = sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let mib = |k: u64| k as f64 / 1024.0;
    let quarter = |q: usize| samples.get(samples.len() * q / 4).map_or(0, |s| s.1);
    println!(
        "  {} iterations in {:.1} s; RSS at 0/25/50/75% of the run: {:.1} / {:.1} / {:.1} / {:.1} MiB, last {:.1} MiB, peak {:.1} MiB",
        long.iterations,
        long.iterations as f64 / long.rate,
        mib(quarter(0)),
        mib(quarter(1)),
        mib(quarter(2)),
        mib(quarter(3)),
        mib(samples.last().map_or(0, |s| s.1)),
        mib(peak)
    );
    let expected = long.iterations * EVENTS_PER_ITERATION + EVENTS_PER_RUN;
    println!("  events printed {} of {expected} expected, {} lost", summary.printed, summary.lost);
    all_exact &= summary.printed == expected;
    total_lost += summary.lost;

    println!("\n| | untraced | traced | ratio (target >= 0.90) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| iterations/s (median of {ROUNDS}) | {:.0} | {:.0} | {:.3} |",
        median(untraced),
        median(traced),
        median(ratios)
    );
    println!("| hooks only, every event filtered in the kernel (median of {ROUNDS}) | | | {:.3} |", median(floors));
    println!(
        "events lost: {total_lost} (target 0); every event printed: {all_exact}; peak RSS {:.1} MiB (target <= 50)",
        mib(peak)
    );
    Ok(())
}
