//! What `unixtrace --follow` costs the syscalls it does not trace, for
//! `cargo xtask bench tax` (on the host, and inside each QEMU guest).
//!
//! Usage: taxbench KERNEL UNIXTRACE [PAIRS] [SECONDS]
//!
//! Three workloads without a UNIX socket in them: getppid(2), a 1-byte
//! pipe write and read, and `busybox tar` archiving a tree of 2,000 small
//! files (open, fstat, read and close of each, and getdents: close(2) is a
//! traced syscall); and one made of nothing else, `bench follow`'s
//! connection loop (seven events an iteration), so that what tracing
//! costs where it works is measured per strategy too, in the guests'
//! instruction-counting clocks as well as on the host. Each runs untraced
//! and then traced by each strategy the kernel has (`--backend`), in
//! pairs, so that drift in the machine's speed cancels; the "floor" is the
//! same pairs with the syscall tracepoints the tracepoint strategy needs
//! enabled empty (perf_event_open, counting, no program): the syscall slow
//! path alone, which no program on a syscall tracepoint can avoid.
//! "kprobe-hooks" is the kprobe strategy with every program returning at
//! its first test (`-p 1`: only init is traced): what the kprobes
//! themselves cost, which no program attached to them can avoid, beside
//! what kprobe costs in full. Rates are in the workload's CPU time
//! (its own and its children's, user and system), so time stolen by other
//! guests does not count. In the QEMU guests of `cargo xtask bench tax`
//! the guest's clock counts the instructions it executes (`-icount`), so
//! there a rate is operations per instruction: it repeats to within 0.1%
//! where TCG's real time swings by up to half. The workload is pinned to
//! CPU 0, or left to the scheduler; unixtrace is never pinned.
//!
//! One line per result:
//! `tax KERNEL STRATEGY WORKLOAD ratio=R placement=P untraced=U/s traced=T/s lost=L peak_rss=M MiB`

use std::{
    io::{BufRead, BufReader, Read},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const WORKLOADS: [&str; 4] = ["getppid", "pipe", "tar", "connloop"];
const STRATEGIES: [&str; 3] = ["fentry", "kprobe", "tracepoint"];
/// The per-syscall tracepoints a syscall-tracepoint strategy needs: close
/// at entry, and the calls that return fds at exit.
const FLOOR_TRACEPOINTS: [&str; 6] = [
    "sys_enter_close",
    "sys_exit_connect",
    "sys_exit_accept",
    "sys_exit_accept4",
    "sys_exit_socketpair",
    "sys_exit_listen",
];
/// The kprobe strategy traced for pid 1 only: the hooks without the work.
const KPROBE_HOOKS: &str = "kprobe-hooks";
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const TREE_DIRS: usize = 50;
const TREE_FILES: usize = 40;

fn die(what: &str) -> ! {
    eprintln!("taxbench: {what}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("work") {
        let (Some(w), Some(s)) = (args.get(2), args.get(3).and_then(|s| s.parse::<f64>().ok())) else {
            die("usage: taxbench work WORKLOAD SECONDS [TREE]")
        };
        work(w, Duration::from_secs_f64(s), args.get(4).map(PathBuf::from));
        return;
    }
    let (Some(kernel), Some(unixtrace)) = (args.get(1), args.get(2)) else {
        die("usage: taxbench KERNEL UNIXTRACE [PAIRS] [SECONDS]")
    };
    let pairs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let seconds: f64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let scratch = std::env::temp_dir().join(format!("unixpeer-tax-{}", std::process::id()));
    let tree = make_tree(&scratch);
    let bench = Bench { me: std::env::current_exe().unwrap_or_else(|e| die(&format!("own path: {e}"))), tree, seconds };
    let mut modes = vec!["floor"];
    for s in STRATEGIES {
        match Tracer::start(Path::new(unixtrace), s) {
            Ok(t) => {
                let _ = t.stop();
                modes.push(s);
            }
            Err(why) => println!("tax {kernel} {s} - unsupported: {}", why.lines().last().unwrap_or("")),
        }
    }
    if modes.contains(&"kprobe") {
        modes.push(KPROBE_HOOKS);
    }
    println!("taxbench: {pairs} pairs of {seconds} s runs per workload, strategy and placement; CPU-time rates");
    for pinned in [true, false] {
        for mode in &modes {
            let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); WORKLOADS.len()];
            let mut rates = vec![(Vec::new(), Vec::new()); WORKLOADS.len()];
            let (mut lost, mut peak_kib) = (0u64, 0u64);
            for _ in 0..pairs {
                let base: Vec<f64> = WORKLOADS.iter().map(|w| bench.rate(w, pinned)).collect();
                let traced: Vec<f64> = if *mode == "floor" {
                    let _on = Floor::enable();
                    WORKLOADS.iter().map(|w| bench.rate(w, pinned)).collect()
                } else {
                    let t = Tracer::start(Path::new(unixtrace), mode).unwrap_or_else(|e| die(&e));
                    let r = WORKLOADS.iter().map(|w| bench.rate(w, pinned)).collect();
                    let (l, kib) = t.stop();
                    lost += l;
                    peak_kib = peak_kib.max(kib);
                    r
                };
                for i in 0..WORKLOADS.len() {
                    ratios[i].push(traced[i] / base[i]);
                    rates[i].0.push(base[i]);
                    rates[i].1.push(traced[i]);
                }
            }
            for (i, w) in WORKLOADS.iter().enumerate() {
                let rss =
                    if *mode == "floor" { "-".to_owned() } else { format!("{:.1} MiB", peak_kib as f64 / 1024.0) };
                let lost = if *mode == "floor" { "-".to_owned() } else { lost.to_string() };
                println!(
                    "tax {kernel} {mode} {w} ratio={:.3} placement={} untraced={:.0}/s traced={:.0}/s lost={lost} peak_rss={rss}",
                    median(ratios[i].clone()),
                    if pinned { "pinned" } else { "unpinned" },
                    median(rates[i].0.clone()),
                    median(rates[i].1.clone()),
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// 2,000 files of 512 bytes in 50 directories.
fn make_tree(scratch: &Path) -> PathBuf {
    let tree = scratch.join("tree");
    for d in 0..TREE_DIRS {
        let dir = tree.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(&format!("mkdir {}: {e}", dir.display())));
        for f in 0..TREE_FILES {
            std::fs::write(dir.join(format!("f{f:02}")), [b'x'; 512])
                .unwrap_or_else(|e| die(&format!("write in {}: {e}", dir.display())));
        }
    }
    tree
}

struct Bench {
    me: PathBuf,
    tree: PathBuf,
    seconds: f64,
}

impl Bench {
    /// Operations per CPU second of one run of `workload` in a child.
    // The child is reaped by wait4, which also reports its CPU time.
    #[allow(clippy::zombie_processes)]
    fn rate(&self, workload: &str, pinned: bool) -> f64 {
        let mut cmd = Command::new(&self.me);
        cmd.args(["work", workload, &self.seconds.to_string()]).arg(&self.tree).stdout(Stdio::piped());
        if pinned {
            use std::os::unix::process::CommandExt;
            // SAFETY: only sched_setaffinity between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut set);
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| die(&format!("spawn a workload: {e}")));
        let mut out = String::new();
        let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
        let (status, cpu, _) = wait4(&child);
        if status != 0 {
            die(&format!("workload {workload} failed ({status:#x})"));
        }
        let ops: f64 = out.trim().parse().unwrap_or_else(|_| die(&format!("workload {workload} printed {out:?}")));
        ops / cpu
    }
}

/// Waits for `child`: its wait status, the CPU seconds it and the children
/// it waited for used, and its peak RSS in KiB.
fn wait4(child: &Child) -> (i32, f64, u64) {
    let mut status = 0;
    // SAFETY: a zeroed rusage, filled by wait4 for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as i32;
    // SAFETY: as above.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid {
        die(&format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (status, secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss as u64)
}

/// In the child: runs `workload` for about `limit` of wall-clock time and
/// prints how many operations it did.
fn work(workload: &str, limit: Duration, tree: Option<PathBuf>) {
    let start = Instant::now();
    let mut ops: u64 = 0;
    match workload {
        "getppid" => {
            while start.elapsed() < limit {
                for _ in 0..10_000 {
                    // SAFETY: a syscall without arguments.
                    unsafe { libc::syscall(libc::SYS_getppid) };
                }
                ops += 10_000;
            }
        }
        "pipe" => {
            let mut fds = [0; 2];
            // SAFETY: two ints for pipe2 to fill.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                die("pipe2");
            }
            // SAFETY: fresh fds, owned from here.
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            let mut b = [0u8; 1];
            while start.elapsed() < limit {
                for _ in 0..10_000 {
                    // SAFETY: one byte from and to a valid buffer.
                    unsafe {
                        libc::write(w.as_raw_fd(), b.as_ptr().cast(), 1);
                        libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
                    }
                }
                ops += 10_000;
            }
        }
        "tar" => {
            let tree = tree.unwrap_or_else(|| die("tar needs the tree"));
            while start.elapsed() < limit {
                let ok = Command::new("/bin/busybox")
                    .args(["tar", "-cf", "/dev/null", "-C"])
                    .arg(&tree)
                    .arg(".")
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    die("busybox tar failed");
                }
                ops += (TREE_DIRS * TREE_FILES) as u64;
            }
        }
        "connloop" => ops = connloop(limit),
        _ => die(&format!("unknown workload {workload}")),
    }
    println!("{ops}");
}

/// What unixtrace exists to see: `cargo xtask bench follow`'s connection
/// loop, the `connloop` beside this program (tests/src/bin/connloop.rs,
/// seven events an iteration). It is this child's child, so the wait4 of
/// `Bench::rate` counts its CPU time. Returns the iterations done.
fn connloop(limit: Duration) -> u64 {
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("own path: {e}"))).with_file_name("connloop");
    let out = Command::new(&exe)
        .arg(limit.as_secs_f64().to_string())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| die(&format!("run {}: {e}", exe.display())));
    let said = String::from_utf8_lossy(&out.stdout);
    // `iterations=N seconds=... rate=...`
    said.split_whitespace()
        .find_map(|w| w.strip_prefix("iterations="))
        .and_then(|n| n.parse().ok())
        .filter(|_| out.status.success())
        .unwrap_or_else(|| die(&format!("connloop failed ({}): {said}", out.status)))
}

/// `unixtrace --follow -v` with one strategy, output to /dev/null.
struct Tracer {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Tracer {
    /// Returns once attached and snapshotted, or why it could not start.
    /// `KPROBE_HOOKS` is the kprobe strategy filtered in the kernel to
    /// init, which runs none of the workloads.
    fn start(unixtrace: &Path, mode: &str) -> Result<Self, String> {
        let (strategy, only): (&str, &[&str]) =
            if mode == KPROBE_HOOKS { ("kprobe", &["-p", "1"]) } else { (mode, &[]) };
        let mut child = Command::new(unixtrace)
            .args(["--follow", "-v", "--backend", strategy])
            .args(only)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {}: {e}", unixtrace.display()))?;
        let mut stderr = BufReader::new(child.stderr.take().ok_or("no stderr")?);
        let mut said = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.wait();
                return Err(format!("unixtrace ({strategy}) exited: {said}"));
            }
            if line.contains("ring buffer") {
                return Ok(Self { child, stderr });
            }
            said.push_str(&line);
        }
    }

    /// SIGINT; the events it said were lost and its peak RSS (KiB).
    fn stop(mut self) -> (u64, u64) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        let _ = self.stderr.read_to_string(&mut rest);
        let (_, _, kib) = wait4(&self.child);
        // `unixtrace: N events received, M printed, L lost, …`
        let lost = rest
            .lines()
            .find(|l| l.contains("events received"))
            .and_then(|l| l.split(", ").find(|p| p.ends_with(" lost")))
            .and_then(|p| p.trim_end_matches(" lost").trim().parse().ok())
            .unwrap_or_else(|| die(&format!("no summary from unixtrace:\n{rest}")));
        (lost, kib)
    }
}

/// The floor's tracepoints enabled on every CPU, counting only, for as
/// long as this lives (the fds are held only to be closed on drop).
struct Floor(#[allow(dead_code)] Vec<OwnedFd>);

impl Floor {
    fn enable() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut fds = Vec::new();
        for tp in FLOOR_TRACEPOINTS {
            let path = format!("/sys/kernel/tracing/events/syscalls/{tp}/id");
            let id: u64 = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| die(&format!("cannot read {path}")));
            for cpu in 0..cpus {
                // SAFETY: a zeroed perf_event_attr with its size, type and
                // config set is a valid request.
                let fd = unsafe {
                    let mut attr: PerfEventAttr = std::mem::zeroed();
                    attr.kind = 2; // PERF_TYPE_TRACEPOINT
                    attr.size = size_of::<PerfEventAttr>() as u32;
                    attr.config = id;
                    libc::syscall(libc::SYS_perf_event_open, &raw const attr, -1, cpu as i32, -1, PERF_FLAG_FD_CLOEXEC)
                };
                if fd < 0 {
                    die(&format!("perf_event_open {tp} on CPU {cpu}: {}", std::io::Error::last_os_error()));
                }
                // SAFETY: a fresh fd, owned from here.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
        }
        Self(fds)
    }
}

/// The start of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0 is 64
/// bytes); zeroed fields are the defaults: enabled, counting.
#[repr(C)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    rest: [u64; 6],
}
