//! Running the real `unixtrace --follow --json` and real child processes.
//!
//! Helpers panic with what they saw rather than return errors: a failing
//! end-to-end test should print the tracer's output and stderr.

use std::{
    io::{BufRead, BufReader, Read},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, Output, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::sys;
pub use crate::sys::sockaddr;
pub use crate::tools::{in_vm, require_root, unixtrace_bin};

/// How long a test waits for what it caused to show.
pub const WAIT: Duration = Duration::from_secs(30);

/// `unixtrace ARGS`, run to the end.
pub fn unixtrace(args: &[&str]) -> Output {
    Command::new(unixtrace_bin()).args(args).output().expect("run unixtrace")
}

/// `--backend` for this run: the VM matrix sets UNIXTRACE_BACKEND per strategy.
pub fn backend_args() -> Vec<String> {
    match std::env::var("UNIXTRACE_BACKEND") {
        Ok(b) if !b.is_empty() => vec!["--backend".into(), b],
        _ => Vec::new(),
    }
}

/// `unixtrace --follow` with this run's backend and a piped stderr, for
/// the caller's further arguments. Capturing takes root.
pub fn follow_command() -> Command {
    require_root();
    let mut c = Command::new(unixtrace_bin());
    c.arg("--follow").args(backend_args()).stderr(Stdio::piped());
    c
}

/// A `unixtrace --follow -v ARGS` whose plain output is read at the end.
pub struct Plain {
    child: Child,
    stderr: thread::JoinHandle<String>,
}

/// Starts `unixtrace --follow -v ARGS` (with the run's backend) and waits
/// until `-v` says which backend is attached: a fixed sleep is not enough
/// under QEMU's emulation.
pub fn spawn_unixtrace(args: &[&str], stdout: Stdio) -> Plain {
    let mut child = follow_command().arg("-v").args(args).stdout(stdout).spawn().expect("start unixtrace");
    let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
    let (tx, rx) = channel();
    let stderr = thread::spawn(move || {
        let mut all = String::new();
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with("unixtrace: backend ") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            line.clear();
        }
        all
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        kill_and_reap(&mut child);
        panic!("unixtrace never attached:\n{}", stderr.join().unwrap_or_default());
    }
    Plain { child, stderr }
}

impl Plain {
    /// Ctrl-C: a capture without `--duration` stops as it would for a person.
    pub fn interrupt(&self) {
        interrupt(&self.child);
    }

    /// Waits for it to exit; returns its exit code, stdout and stderr.
    pub fn finish(mut self) -> (Option<i32>, String, String) {
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let status = self.child.wait().expect("wait for unixtrace");
        (status.code(), out, self.stderr.join().unwrap_or_default())
    }
}

/// A running `unixtrace --follow --json`.
pub struct Follower {
    child: Child,
    lines: Receiver<String>,
    stderr: thread::JoinHandle<String>,
    /// Every JSON record seen so far.
    pub seen: Vec<Value>,
    pub capture: Value,
}

impl Follower {
    /// Starts the tracer and waits until its programs are attached.
    pub fn start(extra: &[&str]) -> Self {
        let mut child = follow_command()
            .arg("--json")
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unixtrace: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut f = Self { child, lines, stderr, seen: Vec::new(), capture: Value::Null };
        f.capture = f.wait_for("the capture record", Duration::from_secs(60), |v| v["kind"] == "capture");
        f
    }

    /// Waits for a record matching `pred`, or panics with everything seen.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v = json_line(&line);
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.fail(&format!("timed out waiting for {what}")),
                Err(RecvTimeoutError::Disconnected) => self.fail(&format!("unixtrace exited before {what}")),
            }
        }
    }

    /// Waits up to `timeout` for the next line, then takes every line
    /// already there; returns how many came (0: none within `timeout`).
    pub fn lines_within(&mut self, timeout: Duration) -> usize {
        let mut n = 0;
        let mut wait = timeout;
        while let Ok(line) = self.lines.recv_timeout(wait) {
            self.seen.push(json_line(&line));
            n += 1;
            wait = Duration::ZERO;
        }
        n
    }

    /// Every record matching `pred` until `count` of them arrived.
    pub fn wait_for_n(
        &mut self,
        what: &str,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        // Kept across lines: refiltering everything seen on every line made
        // this quadratic, which under QEMU took minutes.
        let mut got: Vec<Value> = self.seen.iter().filter(|v| pred(v)).cloned().collect();
        loop {
            if got.len() >= count {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if pred(&v) {
                            got.push(v.clone());
                        }
                        self.seen.push(v)
                    }
                    Err(e) => panic!("unixtrace printed a line that is not JSON ({e}): {line}"),
                },
                Err(_) => self.fail(&format!("got {} of {count} {what}", got.len())),
            }
        }
    }

    pub fn fail(&mut self, why: &str) -> ! {
        kill_and_reap(&mut self.child);
        let tail: Vec<String> = self.seen.iter().rev().take(40).map(|v| v.to_string()).collect();
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new));
        let stderr = stderr.join().unwrap_or_default();
        panic!("{why}\n--- last records (newest first):\n{}\n--- unixtrace stderr:\n{stderr}", tail.join("\n"));
    }

    /// Stops the tracer with SIGINT, as Ctrl-C would, and returns its stderr.
    pub fn stop(&mut self) -> (Option<i32>, String) {
        interrupt(&self.child);
        let status = self.child.wait().expect("wait for unixtrace");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            if let Ok(v) = serde_json::from_str(&line) {
                self.seen.push(v);
            }
        }
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new));
        (status.code(), stderr.join().unwrap_or_default())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// SIGINT to a child, as Ctrl-C would send it.
pub fn interrupt(child: &Child) {
    sys::kill(child.id() as i32, libc::SIGINT);
}

/// SIGKILL to a child, and waits for it: nothing of it outlives the test.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A pipe a child reports facts through (fds and inodes it created).
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

pub fn pipe() -> Pipe {
    let (read, write) = sys::pipe().unwrap_or_else(|e| panic!("pipe: {e}"));
    // SAFETY: both fds were just created and are owned here.
    unsafe { Pipe { read: OwnedFd::from_raw_fd(read), write: OwnedFd::from_raw_fd(write) } }
}

/// Writes one line into a pipe from a child.
pub fn report(fd: &OwnedFd, line: &str) {
    let _ = sys::write_all(fd.as_raw_fd(), format!("{line}\n").as_bytes());
}

/// The space-separated numbers of a report line.
pub fn numbers<T: std::str::FromStr>(line: &str) -> Vec<T> {
    line.split(' ').map(|x| x.parse().unwrap_or_else(|_| panic!("not a number: {x:?} in {line:?}"))).collect()
}

/// Word `i` (0 is the tag) of the report line that starts with `tag`, a number.
pub fn tagged(lines: &[String], tag: &str, i: usize) -> i64 {
    let line = lines.iter().find(|l| l.starts_with(tag)).unwrap_or_else(|| panic!("no {tag} report in {lines:?}"));
    line.split_whitespace().nth(i).and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("no number {i} in {line:?}"))
}

/// Holds a child until the test lets it go. If the test dies, the child
/// sees EOF and goes on instead of hanging forever.
pub struct Gate(Pipe);

impl Gate {
    pub fn new() -> Self {
        Self(pipe())
    }

    /// In the child: blocks until `open`, or until the test is gone. The
    /// child's own copy of the write end is closed first, or that EOF could
    /// never come (the child exits without running destructors).
    pub fn wait(&self) {
        sys::close(self.0.write.as_raw_fd());
        let _ = sys::read_fd(self.0.read.as_raw_fd(), &mut [0u8; 1]);
    }

    pub fn open(&self) {
        report(&self.0.write, "go");
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads `n` report lines from children that are still running. The test
/// holds a write end too, so a child that died before reporting shows as
/// silence, not EOF: two minutes of it fail the test.
pub fn read_lines(p: &Pipe, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    while lines.len() < n {
        let mut poll = libc::pollfd { fd: p.read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, valid for the call.
        let ready = unsafe { libc::poll(&raw mut poll, 1, 120_000) };
        assert!(ready > 0, "no report from the children for 2 minutes ({} of {n} lines): did one die?", lines.len());
        let mut buf = [0u8; 256];
        let got = sys::read_fd(p.read.as_raw_fd(), &mut buf).unwrap_or_else(|e| panic!("read reports: {e}"));
        assert!(got > 0, "children exited before reporting ({} of {n} lines)", lines.len());
        pending.push_str(&String::from_utf8_lossy(&buf[..got]));
        while let Some(i) = pending.find('\n') {
            lines.push(pending[..i].to_owned());
            pending.drain(..=i);
        }
    }
    lines
}

/// Reads the lines children wrote, until all write ends are closed.
pub fn read_reports(p: Pipe) -> Vec<String> {
    drop(p.write);
    let mut s = String::new();
    std::fs::File::from(p.read).read_to_string(&mut s).expect("read child reports");
    s.lines().map(str::to_owned).collect()
}

/// Forks a child process named `comm` that runs `f` and exits with its
/// result. Only async-signal-safe work belongs in `f`: system calls such
/// as [`sys`]'s, no locks.
pub fn fork_child(comm: &str, f: impl FnOnce() -> i32) -> i32 {
    let pid = sys::fork().unwrap_or_else(|e| panic!("fork: {e}"));
    if pid == 0 {
        sys::set_comm(comm);
        sys::exit_child(f());
    }
    pid
}

pub fn wait_child(pid: i32) -> i32 {
    let status = sys::wait_pid(pid).unwrap_or_else(|e| panic!("waitpid({pid}): {e}"));
    assert!(libc::WIFEXITED(status), "child {pid} did not exit normally: {status:#x}");
    libc::WEXITSTATUS(status)
}

pub fn inode_of(fd: i32) -> u64 {
    sys::inode_of(fd).unwrap_or_else(|e| panic!("fstat({fd}): {e}"))
}

pub fn socketpair(ty: i32) -> [i32; 2] {
    let (a, b) = sys::socketpair(ty | libc::SOCK_CLOEXEC).unwrap_or_else(|e| panic!("socketpair: {e}"));
    [a, b]
}

/// A listening socket on `name` (bound only, for a datagram one).
/// CLOEXEC: the tracer the test starts must not inherit it.
pub fn listen_on(name: &str, ty: i32, backlog: i32) -> i32 {
    let fd = if ty == libc::SOCK_DGRAM {
        sys::bound(ty | libc::SOCK_CLOEXEC, name)
    } else {
        sys::listener(ty | libc::SOCK_CLOEXEC, name, backlog)
    };
    fd.unwrap_or_else(|e| panic!("listen on {name}: {e}"))
}

/// connect(); returns the fd, or the errno on failure. Safe in a child.
/// Non-blocking sockets fail with EAGAIN on a full backlog instead of waiting.
pub fn connect_to(name: &str, ty: i32, nonblock: bool) -> Result<i32, i32> {
    let flags = if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    sys::connect(ty | flags, name).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Events of one kind from one process.
pub fn is_event(v: &Value, event: &str, pid: i32) -> bool {
    v["kind"] == "event" && v["event"] == event && v["pid"] == pid
}

/// The server side of a test's traffic, run in a forked child: accepts `n`
/// connections on `listener`, reads the client's one byte from each and,
/// with `reply`, answers one byte before closing, which keeps the client
/// connected until its connection has been accepted. Returns the child's
/// exit code: 0, or 1 when an accept fails.
pub fn serve(listener: i32, n: usize, reply: bool) -> i32 {
    for _ in 0..n {
        let Ok(c) = sys::accept(listener) else { return 1 };
        let _ = sys::read_fd(c, &mut [0u8; 1]);
        if reply {
            let _ = sys::write_fd(c, b"y");
        }
        sys::close(c);
    }
    0
}

/// Forks a server named `comm` that listens on `path` itself (so that a
/// capture sees its listen and can name it at connect time) with
/// `backlog`, then [`serve`]s `n` connections with a reply. Returns its
/// pid once it listens; the server exits with 4 if it could not.
pub fn spawn_server(comm: &str, path: &str, backlog: i32, n: usize) -> i32 {
    let _ = std::fs::remove_file(path);
    let ready = pipe();
    let server = fork_child(comm, || {
        let Ok(listener) = sys::fresh_listener(libc::SOCK_STREAM, path, backlog) else { return 4 };
        report(&ready.write, "ready");
        serve(listener, n, true)
    });
    assert_eq!(read_lines(&ready, 1), ["ready"], "server did not start");
    server
}

/// The client side of [`serve`], in a forked child: connects to `name`,
/// writes one byte and, with `reply`, reads the server's answer before
/// closing. A failed connect gives its errno.
pub fn talk(name: &str, reply: bool) -> Result<(), i32> {
    let fd = connect_to(name, libc::SOCK_STREAM, false)?;
    let _ = sys::write_fd(fd, b"x");
    if reply {
        let _ = sys::read_fd(fd, &mut [0u8; 1]);
    }
    sys::close(fd);
    Ok(())
}

/// One line of `--json` output: JSON, carrying the schema version that
/// docs/json-schema.md describes (log pipelines select lines by it).
pub fn json_line(line: &str) -> Value {
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("unixtrace printed a line that is not JSON ({e}): {line}"));
    assert_eq!(v["schema"], 1, "a JSON line without schema 1: {line}");
    v
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}
