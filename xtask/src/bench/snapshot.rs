//! `cargo xtask bench snapshot`: unixtrace's full attributed snapshot side by
//! side with `ss -xap` and `lsof +E -U` over ~48,000 sockets.
//!
//! The tools run interleaved (one of each per round) so machine noise hits
//! them alike; each round's output goes to /dev/null. Wall time is measured
//! around spawn..wait4, peak RSS is wait4's `ru_maxrss`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const PROCS: &str = "5";
const PER_PROC: &str = "9600";
const ROUNDS: usize = 3;
/// Targets from the issue: unixtrace against `ss -xap`.
const WALL_TARGET: f64 = 0.2;
const RSS_TARGET: f64 = 2.0;

/// Runs the bench with `sockfarm` taken from next to `unixtrace_bin` (both
/// come from `cargo build --release -p unixpeer-user -p unixpeer-tests`).
pub fn run(workspace_root: &Path, unixtrace_bin: &Path) -> Result<()> {
    let sockfarm = unixtrace_bin.with_file_name("sockfarm");
    if !sockfarm.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p unixpeer-tests --bin sockfarm`",
            sockfarm.display()
        );
    }
    run_with(workspace_root, unixtrace_bin, &sockfarm)
}

pub fn run_with(_workspace_root: &Path, unixtrace_bin: &Path, sockfarm_bin: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("unixtrace-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let farm = Farm::start(sockfarm_bin, &dir)?;
    let sockets = count_sockets()?;
    println!("workload: {sockets} UNIX sockets on this host ({PROCS} sockfarm processes of {PER_PROC})");
    print_verbose(unixtrace_bin)?;

    let ut = unixtrace_bin.to_string_lossy().into_owned();
    let commands: Vec<(&str, Vec<String>)> = vec![
        ("unixtrace", vec![ut.clone()]),
        ("unixtrace --json", vec![ut.clone(), "--json".into()]),
        ("ss -xap", vec!["ss".into(), "-xap".into()]),
        ("ss -xa", vec!["ss".into(), "-xa".into()]),
        ("lsof +E -U", vec!["lsof".into(), "+E".into(), "-U".into()]),
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); commands.len()];
    for _ in 0..ROUNDS {
        for (i, (_, argv)) in commands.iter().enumerate() {
            samples[i].push(measure(argv)?);
        }
    }
    drop(farm);
    let _ = std::fs::remove_dir_all(&dir);

    println!("\n{:<18} {:>12} {:>12}   (median of {ROUNDS}, output to /dev/null)", "command", "wall", "peak RSS");
    let medians: Vec<Sample> = samples.iter().map(|s| median(s)).collect();
    for ((name, _), m) in commands.iter().zip(&medians) {
        println!("{name:<18} {:>10.1}ms {:>9.1}MiB", m.wall.as_secs_f64() * 1e3, m.rss_kib as f64 / 1024.0);
    }
    let (ut, ss) = (&medians[0], &medians[2]);
    let wall_ratio = ut.wall.as_secs_f64() / ss.wall.as_secs_f64();
    let rss_ratio = ut.rss_kib as f64 / ss.rss_kib as f64;
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    println!(
        "\nunixtrace / ss -xap: wall {wall_ratio:.2}x ({} target <= {WALL_TARGET}x), peak RSS {rss_ratio:.2}x ({} target <= {RSS_TARGET}x)",
        verdict(wall_ratio <= WALL_TARGET),
        verdict(rss_ratio <= RSS_TARGET)
    );
    let lsof = &medians[4];
    println!(
        "unixtrace / lsof +E -U: wall {:.2}x, peak RSS {:.2}x",
        ut.wall.as_secs_f64() / lsof.wall.as_secs_f64(),
        ut.rss_kib as f64 / lsof.rss_kib as f64
    );
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: Duration,
    rss_kib: i64,
}

/// Middle value of wall time and of peak RSS, each on its own.
fn median(samples: &[Sample]) -> Sample {
    let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let mut rss: Vec<i64> = samples.iter().map(|s| s.rss_kib).collect();
    walls.sort();
    rss.sort();
    Sample { wall: walls[walls.len() / 2], rss_kib: rss[rss.len() / 2] }
}

fn measure(argv: &[String]) -> Result<Sample> {
    let start = Instant::now();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", argv[0]))?;
    let (status, rusage) = wait4(&child)?;
    let wall = start.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{} failed (wait status {status:#x})", argv.join(" "));
    }
    Ok(Sample { wall, rss_kib: rusage.ru_maxrss })
}

/// Reaps `child` with wait4() to get its own rusage (std's wait() drops it).
fn wait4(child: &Child) -> Result<(i32, libc::rusage)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers to locals that outlive the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if rc == pid {
            return Ok((status, rusage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
}

fn count_sockets() -> Result<usize> {
    let out = Command::new("ss").arg("-xaH").output().context("cannot run ss")?;
    Ok(out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count())
}

/// Shows which holder source unixtrace picked and its own timings.
fn print_verbose(unixtrace: &Path) -> Result<()> {
    let out = Command::new(unixtrace).arg("-v").stdout(Stdio::null()).output().context("cannot run unixtrace")?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("  {line}");
    }
    Ok(())
}

/// The workload, released on drop.
struct Farm(Child);

impl Farm {
    fn start(bin: &Path, dir: &Path) -> Result<Self> {
        let tag = format!("bench-{}", std::process::id());
        let dir = dir.to_string_lossy();
        let mut child = Command::new(bin)
            .args(["--procs", PROCS, "--per-proc", PER_PROC, "--quiet", "--dir", &dir, "--tag", &tag])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("sockfarm stdout")?;
        let farm = Farm(child);
        for line in BufReader::new(stdout).lines() {
            if line? == "READY" {
                return Ok(farm);
            }
        }
        bail!("sockfarm exited before it was ready")
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}
