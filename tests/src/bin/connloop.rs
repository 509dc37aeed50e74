//! Connection generator for `cargo xtask bench follow`: connect + accept +
//! socketpair + four closes per iteration, as fast as one core allows.
//!
//! Usage: connloop SECONDS|-n ITERATIONS [CPU]
//! Prints `iterations=N seconds=S rate=R cpu_seconds=C cpu_rate=CR` on
//! stdout: the rate in wall-clock time and in the process's CPU time (which
//! includes the kernel's work for its syscalls, tracing programs included,
//! but not time stolen by other guests of the machine).

use std::{os::unix::ffi::OsStrExt, time::Instant};

fn fail(what: &str) -> ! {
    eprintln!("connloop: {what}: {}", std::io::Error::last_os_error());
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

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: connloop SECONDS|-n ITERATIONS [CPU]");
        std::process::exit(2)
    };
    let (limit_secs, limit_iters, rest) = match args.get(1).map(String::as_str) {
        Some("-n") => (None, Some(args.get(2).and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| usage())), 3),
        Some(s) => (Some(s.parse::<f64>().unwrap_or_else(|_| usage())), None, 2),
        None => usage(),
    };
    if let Some(cpu) = args.get(rest).and_then(|c| c.parse().ok()) {
        pin(cpu);
    }
    let path = std::env::temp_dir().join(format!("connloop-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // SAFETY: plain socket syscalls on fds this loop owns.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in path.as_os_str().as_bytes().iter().enumerate() {
            addr.sun_path[i] = *b as libc::c_char;
        }
        let len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let listener = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if listener < 0 || libc::bind(listener, (&raw const addr).cast(), len) != 0 || libc::listen(listener, 128) != 0
        {
            fail("listen");
        }
        let start = Instant::now();
        let cpu_start = cpu_seconds();
        let mut n = 0u64;
        loop {
            let c = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if c < 0 || libc::connect(c, (&raw const addr).cast(), len) != 0 {
                fail("connect");
            }
            let s = libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC);
            if s < 0 {
                fail("accept");
            }
            let mut pair = [0; 2];
            if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) != 0 {
                fail("socketpair");
            }
            libc::close(c);
            libc::close(s);
            libc::close(pair[0]);
            libc::close(pair[1]);
            n += 1;
            if n.is_multiple_of(256) {
                let t = start.elapsed().as_secs_f64();
                if limit_secs.is_some_and(|l| t >= l) {
                    break;
                }
            }
            if limit_iters.is_some_and(|l| n >= l) {
                break;
            }
        }
        let t = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_start;
        libc::close(listener);
        let _ = std::fs::remove_file(&path);
        println!(
            "iterations={n} seconds={t:.3} rate={:.0} cpu_seconds={cpu:.3} cpu_rate={:.0}",
            n as f64 / t,
            n as f64 / cpu
        );
    }
}
