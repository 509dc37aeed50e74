//! sockfarm: holds a known set of UNIX sockets open for tests and benches.
//!
//! Every process writes what it holds to stdout, one line per socket:
//! `S <pid> <fd> <inode> <label>`, and `P <inode> <inode>` for each pair the
//! kernel must report as each other's peer. When everything is in place the
//! first process prints `READY`. All processes then block until stdin
//! reaches end of file, so the workload stays frozen while tools look at it.
//!
//! Modes:
//!   sockfarm [--procs N] [--per-proc M] [--scenarios] [--dir D] [--tag T] [--quiet]
//!   sockfarm --serve NAME     listen, accept one connection (NAME: a path, or @abstract)
//!   sockfarm --connect NAME   connect once
//!
//! The hard RLIMIT_NOFILE can be as low as 20000 and cannot be raised, so
//! large workloads are spread over several processes.

use std::io::{self, Read, Write};
use std::os::unix::io::RawFd;

use unixpeer_tests::{farm::Manifest, sys::*};

struct Options {
    procs: usize,
    per_proc: usize,
    scenarios: bool,
    dir: String,
    tag: String,
    quiet: bool,
    serve: Option<String>,
    connect: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        procs: 1,
        per_proc: 100,
        scenarios: false,
        dir: "/tmp".into(),
        tag: format!("sockfarm-{}", std::process::id()),
        quiet: false,
        serve: None,
        connect: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--procs" => o.procs = value()?.parse().map_err(|e| format!("--procs: {e}"))?,
            "--per-proc" => o.per_proc = value()?.parse().map_err(|e| format!("--per-proc: {e}"))?,
            "--scenarios" => o.scenarios = true,
            "--dir" => o.dir = value()?,
            "--tag" => o.tag = value()?,
            "--quiet" => o.quiet = true,
            "--serve" => o.serve = Some(value()?),
            "--connect" => o.connect = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sockfarm: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&o) {
        eprintln!("sockfarm: {e}");
        std::process::exit(1);
    }
}

fn run(o: &Options) -> io::Result<()> {
    let mut out = Manifest::new(o.quiet);
    if let Some(path) = &o.serve {
        let l = listener(libc::SOCK_STREAM, path, 4)?;
        out.line("LISTENING")?;
        out.flush()?;
        let a = accept(l)?;
        out.socket(l, "serve-listener")?;
        out.socket(a, "serve-accepted")?;
        return finish(out, &[]);
    }
    if let Some(path) = &o.connect {
        let c = connect(libc::SOCK_STREAM, path)?;
        out.socket(c, "connect-client")?;
        return finish(out, &[]);
    }
    raise_nofile()?;
    let (ready_r, ready_w) = pipe()?;
    let mut children = Vec::new();
    let mut expected = 0;
    for k in 0..o.procs {
        children.push(spawn(|out| bulk(out, o, k), ready_w, o.quiet)?);
        expected += 1;
    }
    if o.scenarios {
        children.push(spawn(|out| scenarios(out, o, ready_w), ready_w, o.quiet)?);
        // The scenario worker forks one child of its own.
        expected += 2;
    }
    close(ready_w);
    let mut byte = [0u8; 1];
    for _ in 0..expected {
        let n = read_fd(ready_r, &mut byte)?;
        if n == 0 {
            return Err(io::Error::other("a worker died before it was ready"));
        }
    }
    out.line("READY")?;
    out.flush()?;
    wait_stdin_eof();
    for pid in children {
        let _ = wait_pid(pid);
    }
    Ok(())
}

/// Writes the manifest, tells the coordinator, and blocks until stdin closes.
fn finish(mut out: Manifest, ready: &[RawFd]) -> io::Result<()> {
    out.line(&format!("R {}", std::process::id()))?;
    out.flush()?;
    for &fd in ready {
        write_fd(fd, b"r")?;
        close(fd);
    }
    if ready.is_empty() {
        out.line("READY")?;
        out.flush()?;
    }
    wait_stdin_eof();
    Ok(())
}

fn wait_stdin_eof() {
    let mut sink = [0u8; 64];
    let mut stdin = io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}

/// Forks a worker that runs `body` and then parks.
fn spawn(body: impl FnOnce(&mut Manifest) -> io::Result<()>, ready_w: RawFd, quiet: bool) -> io::Result<libc::pid_t> {
    let pid = fork()?;
    if pid != 0 {
        return Ok(pid);
    }
    die_with_parent();
    let mut out = Manifest::new(quiet);
    let code = match body(&mut out).and_then(|()| finish(out, &[ready_w])) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sockfarm worker: {e}");
            1
        }
    };
    exit_child(code)
}

/// `per_proc` sockets: a fifth each of stream, dgram and seqpacket
/// socketpairs, connect/accept pairs over a path, and over an abstract name.
fn bulk(out: &mut Manifest, o: &Options, k: usize) -> io::Result<()> {
    raise_nofile()?;
    let share = o.per_proc / 5;
    for (ty, label) in
        [(libc::SOCK_STREAM, "pair-stream"), (libc::SOCK_DGRAM, "pair-dgram"), (libc::SOCK_SEQPACKET, "pair-seqpacket")]
    {
        for _ in 0..share / 2 {
            let (a, b) = socketpair(ty)?;
            out.pair(a, b, label)?;
        }
    }
    let path = format!("{}/{}-w{k}.sock", o.dir, o.tag);
    let abs = format!("@{}-w{k}", o.tag);
    let rest = o.per_proc.saturating_sub(3 * (share / 2) * 2);
    for (i, addr) in [path, abs].iter().enumerate() {
        let count = if i == 0 { rest / 2 } else { rest - rest / 2 };
        let l = listener(libc::SOCK_STREAM, addr, 128)?;
        out.socket(l, if i == 0 { "listener-path" } else { "listener-abstract" })?;
        for _ in 0..count.saturating_sub(1) / 2 {
            let c = connect(libc::SOCK_STREAM, addr)?;
            let a = accept(l)?;
            out.pair(c, a, if i == 0 { "conn-path" } else { "conn-abstract" })?;
        }
    }
    Ok(())
}

/// The corner cases: a socket shared by parent and child after fork, an fd
/// passed with SCM_RIGHTS, connections nobody accepted, a half-closed
/// socket, datagram clients of a bound server, an unconnected socket.
fn scenarios(out: &mut Manifest, o: &Options, ready_w: RawFd) -> io::Result<()> {
    let (shared_a, shared_b) = socketpair(libc::SOCK_STREAM)?;
    let (chan_here, chan_there) = socketpair(libc::SOCK_STREAM)?;
    let pid = fork()?;
    if pid == 0 {
        set_comm("sockfarm-child");
        close(chan_here);
        let mut child = Manifest::new(o.quiet);
        let received = recv_fd(chan_there)?;
        child.pair(shared_a, shared_b, "forked")?;
        child.socket(chan_there, "scm-channel")?;
        child.socket(received, "scm-received")?;
        let code = i32::from(finish(child, &[ready_w]).is_err());
        exit_child(code)
    }
    close(chan_there);
    out.pair(shared_a, shared_b, "forked")?;
    out.socket(chan_here, "scm-channel")?;
    let (passed, kept) = socketpair(libc::SOCK_SEQPACKET)?;
    out.expect_peer(passed, kept)?;
    send_fd(chan_here, passed)?;
    close(passed);
    out.socket(kept, "scm-kept")?;

    let pending = format!("{}/{}-pending.sock", o.dir, o.tag);
    let l = listener(libc::SOCK_STREAM, &pending, 16)?;
    out.socket(l, "pending-listener")?;
    for _ in 0..3 {
        let c = connect(libc::SOCK_STREAM, &pending)?;
        out.socket(c, "pending-client")?;
    }

    let (half, gone) = socketpair(libc::SOCK_STREAM)?;
    close(gone);
    out.socket(half, "half-closed")?;

    let server_addr = format!("{}/{}-dgram.sock", o.dir, o.tag);
    let server = bound(libc::SOCK_DGRAM, &server_addr)?;
    out.socket(server, "dgram-server")?;
    for _ in 0..2 {
        let c = connect(libc::SOCK_DGRAM, &server_addr)?;
        out.socket(c, "dgram-client")?;
    }

    let abs = format!("@{}-scenario", o.tag);
    let l = listener(libc::SOCK_STREAM, &abs, 4)?;
    out.socket(l, "abstract-listener")?;
    let c = connect(libc::SOCK_STREAM, &abs)?;
    let a = accept(l)?;
    out.pair(c, a, "abstract-conn")?;

    let lone = socket(libc::SOCK_STREAM)?;
    out.socket(lone, "unconnected")?;
    out.flush()?;
    let _ = io::stdout().flush();
    Ok(())
}
