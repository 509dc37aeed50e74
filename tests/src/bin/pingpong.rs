//! Message generator for `cargo xtask bench follow` (and `bench messages`):
//! 64-byte ping-pong over one UNIX stream connection made by connect and
//! accept on a path, so that a tracer names both ends and their process.
//! The parent connects and pings: it writes 64 bytes and reads 64 back;
//! the child it forked accepts and answers each 64 bytes read with 64.
//!
//! Usage: pingpong SECONDS|-n ROUND_TRIPS [CPU]
//! With CPU, both processes run on that one core. Prints
//! `round_trips=N seconds=S rate=R cpu_seconds=C cpu_rate=CR messages=M
//! bytes=B client_pid=P server_pid=Q` on stdout: the timed round trips, their
//! rate in wall-clock time and in the CPU time of both processes together
//! (the kernel's work for their syscalls, tracing programs included, but
//! not time stolen by other guests nor time spent waiting for the other
//! side); each end sent and received M messages of B = 64 × M bytes in all
//! (one untimed round trip more than N).

use std::{os::unix::ffi::OsStrExt, time::Instant};

const MESSAGE: usize = 64;

fn fail(what: &str) -> ! {
    eprintln!("pingpong: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            fail("sched_setaffinity");
        }
    }
}

fn seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn tv_seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Reads exactly one message; false at end of stream.
///
/// # Safety
/// `fd` is an open socket.
unsafe fn read_message(fd: i32, buf: &mut [u8; MESSAGE]) -> bool {
    let mut got = 0;
    while got < MESSAGE {
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), MESSAGE - got) };
        match n {
            0 if got == 0 => return false,
            n if n <= 0 => fail("read"),
            n => got += n as usize,
        }
    }
    true
}

/// # Safety
/// `fd` is an open socket.
unsafe fn write_message(fd: i32, buf: &[u8; MESSAGE]) {
    // A blocking stream socket with room for far more than 64 bytes takes
    // them whole: a short write would mean something else is wrong.
    if unsafe { libc::write(fd, buf.as_ptr().cast(), MESSAGE) } != MESSAGE as isize {
        fail("write");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: pingpong SECONDS|-n ROUND_TRIPS [CPU]");
        std::process::exit(2)
    };
    let (limit_secs, limit_trips, rest) = match args.get(1).map(String::as_str) {
        Some("-n") => (None, Some(args.get(2).and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| usage())), 3),
        Some(s) => (Some(s.parse::<f64>().unwrap_or_else(|_| usage())), None, 2),
        None => usage(),
    };
    // Before the fork: the child inherits the affinity.
    if let Some(cpu) = args.get(rest).and_then(|c| c.parse().ok()) {
        pin(cpu);
    }
    let path = std::env::temp_dir().join(format!("pingpong-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // SAFETY: plain socket syscalls on fds these two processes own; the
    // child only makes syscalls and leaves with _exit.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in path.as_os_str().as_bytes().iter().enumerate() {
            addr.sun_path[i] = *b as libc::c_char;
        }
        let len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let listener = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if listener < 0 || libc::bind(listener, (&raw const addr).cast(), len) != 0 || libc::listen(listener, 1) != 0 {
            fail("listen");
        }
        let server = libc::fork();
        if server < 0 {
            fail("fork");
        }
        let mut buf = [0u8; MESSAGE];
        if server == 0 {
            let s = libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC);
            if s < 0 {
                fail("accept");
            }
            libc::close(listener);
            while read_message(s, &mut buf) {
                write_message(s, &buf);
            }
            libc::close(s);
            libc::_exit(0);
        }
        // The child holds the listener until it has accepted.
        libc::close(listener);
        let c = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if c < 0 || libc::connect(c, (&raw const addr).cast(), len) != 0 {
            fail("connect");
        }
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        // The first round trip waits for the child to be scheduled and
        // accept: keep it out of the timed loop.
        write_message(c, &buf);
        if !read_message(c, &mut buf) {
            fail("the server closed early");
        }
        let start = Instant::now();
        let cpu_start = seconds(libc::CLOCK_PROCESS_CPUTIME_ID);
        let mut n = 0u64;
        loop {
            write_message(c, &buf);
            if !read_message(c, &mut buf) {
                fail("the server closed early");
            }
            n += 1;
            if n.is_multiple_of(256) && limit_secs.is_some_and(|l| start.elapsed().as_secs_f64() >= l) {
                break;
            }
            if limit_trips.is_some_and(|l| n >= l) {
                break;
            }
        }
        let t = start.elapsed().as_secs_f64();
        let client_cpu = seconds(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
        libc::close(c);
        // The child's whole life is the loop but for its accept and exit,
        // which are small beside a run of many round trips.
        let mut status = 0;
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::wait4(server, &mut status, 0, &mut ru) != server {
            fail("wait4");
        }
        let _ = std::fs::remove_file(&path);
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            eprintln!("pingpong: the server failed");
            std::process::exit(1);
        }
        let cpu = client_cpu + tv_seconds(ru.ru_utime) + tv_seconds(ru.ru_stime);
        // The untimed first round trip is part of what each end moved.
        let trips = n + 1;
        println!(
            "round_trips={n} seconds={t:.3} rate={:.0} cpu_seconds={cpu:.3} cpu_rate={:.0} messages={trips} bytes={} client_pid={} server_pid={server}",
            n as f64 / t,
            n as f64 / cpu,
            trips * MESSAGE as u64,
            std::process::id()
        );
    }
}
