//! One process, two names: the main thread listens and accepts, a worker
//! thread named `conn-worker` connects to it. A tracer must name both ends
//! as the one process it is (ps, ss -p and lsof show the thread group
//! leader's command), not as `conn-worker`.
//!
//! Usage: threaded PATH. Prints `pid=P worker_tid=T` once done.

use std::os::unix::net::{UnixListener, UnixStream};
use std::{io::Read, io::Write};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: threaded PATH");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap_or_else(|e| fail("bind", e));
    let worker = std::thread::Builder::new()
        .name("conn-worker".into())
        .spawn({
            let path = path.clone();
            move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let mut s = UnixStream::connect(&path).unwrap_or_else(|e| fail("connect", e));
                s.write_all(b"x").unwrap_or_else(|e| fail("write", e));
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap_or_else(|e| fail("read", e));
                tid
            }
        })
        .unwrap_or_else(|e| fail("spawn", e));
    let (mut conn, _) = listener.accept().unwrap_or_else(|e| fail("accept", e));
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).unwrap_or_else(|e| fail("read", e));
    conn.write_all(b"y").unwrap_or_else(|e| fail("write", e));
    let tid = worker.join().unwrap_or_else(|_| fail("join", "the worker panicked"));
    drop(conn);
    drop(listener);
    let _ = std::fs::remove_file(&path);
    println!("pid={} worker_tid={tid}", std::process::id());
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("threaded: {what}: {e}");
    std::process::exit(1);
}
