//! Sockets leaving an fd table without close(2): dup2 over the fd,
//! close_range, close-on-exec, and io_uring's connect and close. The fentry
//! and kprobe strategies see them in kernel functions; the syscall
//! tracepoints never did, and these tests pin down that they still do not
//! (ARCHITECTURE.md, "What each strategy cannot see").
//!
//! What users see: the close of a socket names the processes holding its
//! peer. A process that dropped the peer without close(2) must not be named.

use serde_json::Value;
use unixpeer_tests::tracer::*;

#[derive(Clone, Copy, Debug)]
enum Drop {
    Dup2,
    CloseRange,
    Exec,
}

fn sees_every_fd_drop(f: &Follower) -> bool {
    f.capture["backend"] != "tracepoint"
}

fn holders(v: &Value) -> Vec<(i64, Option<i64>)> {
    v["peer_holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no peer holders: {v}"))
        .iter()
        .map(|h| (h["pid"].as_i64().expect("holder pid"), h["fd"].as_i64()))
        .collect()
}

/// A child drops its copy of socket `a` by `how`, then makes the final
/// close of `a`'s peer `b`: that close names who still holds `a`.
fn a_holder_dropped_by(how: Drop, tag: &str) {
    let mut f = Follower::start(&["-vv"]);
    let p = pipe();
    let go = Gate::new();
    let parent = fork_child(&format!("{tag}-parent"), || {
        let [a, b] = socketpair(libc::SOCK_STREAM);
        let kid = fork_child(&format!("{tag}-kid"), || {
            go.wait();
            drop_fd(how, a, b);
            // SAFETY: a raw syscall in the child: the final close of `b`.
            unsafe { libc::close(b) };
            0
        });
        let facts = format!("{kid} {a} {b} {} {}", inode_of(a), inode_of(b));
        // SAFETY: a raw syscall; the kid keeps its copy.
        unsafe { libc::close(b) };
        report(&p.write, &facts);
        // `a` stays open here until the kid is gone.
        wait_child(kid)
    });
    let facts: Vec<i64> = numbers(&read_lines(&p, 1)[0]);
    let &[kid, a, _b, ia, ib] = &facts[..] else { panic!("report: {facts:?}") };
    go.open();
    assert_eq!(wait_child(parent), 0, "the kid failed to drop its fd by {how:?}");
    let close = f.wait_for("the final close of b", WAIT, |v| v["event"] == "close" && v["inode"] == ib);
    assert_eq!(close["pid"].as_i64(), Some(kid), "{close}");
    let named = holders(&close);
    if sees_every_fd_drop(&f) {
        assert_eq!(named, vec![(i64::from(parent), Some(a))], "only the parent still holds a: {close}");
        let dropped = f
            .wait_for("the kid's drop of a", WAIT, |v| v["event"] == "fd_close" && v["pid"] == kid && v["inode"] == ia);
        assert_eq!(dropped["inode"].as_i64(), Some(ia), "{dropped}");
        // The fd is known where a syscall names it; filp_close alone does not.
        match how {
            Drop::Dup2 => assert_eq!(dropped["fd"].as_i64(), Some(a), "{dropped}"),
            Drop::CloseRange | Drop::Exec => {
                assert!(dropped["fd"].is_null() || dropped["fd"].as_i64() == Some(a), "{dropped}")
            }
        }
    } else {
        assert!(
            named.contains(&(kid, Some(a))),
            "the syscall tracepoints do not see a drop by {how:?}; if they now do, update this test and \
             ARCHITECTURE.md: {close}"
        );
    }
}

/// In the kid, after fork: only syscalls, no allocation.
fn drop_fd(how: Drop, a: i32, b: i32) {
    // SAFETY: raw syscalls on the kid's own fds; the strings are
    // NUL-terminated literals or built before any syscall that needs them.
    unsafe {
        match how {
            Drop::Dup2 => {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                if null < 0 || libc::dup2(null, a) != a {
                    libc::_exit(3);
                }
            }
            Drop::CloseRange => {
                if libc::syscall(libc::SYS_close_range, a as u32, a as u32, 0u32) != 0 {
                    libc::_exit(3);
                }
            }
            Drop::Exec => {
                // `a` goes at the exec; `b` (close-on-exec, as the helper
                // makes every socket) must stay, on a digit the shell can
                // name, for the shell to close it.
                let low = if a == 9 { 8 } else { 9 };
                if b == low {
                    libc::fcntl(b, libc::F_SETFD, 0);
                }
                let moved = b == low || (libc::dup2(b, low) == low && libc::close(b) == 0);
                if libc::fcntl(a, libc::F_SETFD, libc::FD_CLOEXEC) != 0 || !moved {
                    libc::_exit(3);
                }
                let mut script = *b"exec 0>&-\0";
                script[5] = b'0' + low as u8;
                let argv = [c"sh".as_ptr(), c"-c".as_ptr(), script.as_ptr().cast(), std::ptr::null()];
                libc::execv(c"/bin/sh".as_ptr(), argv.as_ptr());
                libc::_exit(5);
            }
        }
    }
}

#[test]
fn dup2_over_a_socket_fd_drops_that_holder() {
    a_holder_dropped_by(Drop::Dup2, "dp");
}

#[test]
fn close_range_drops_that_holder() {
    a_holder_dropped_by(Drop::CloseRange, "cr");
}

#[test]
fn close_on_exec_drops_that_holder() {
    a_holder_dropped_by(Drop::Exec, "ce");
}

mod uring {
    use io_uring::{IoUring, opcode, types::Fd};

    /// Runs one operation and returns its result (a negative errno).
    pub fn run(ring: &mut IoUring, op: io_uring::squeue::Entry) -> i32 {
        // SAFETY: every buffer the entry points to (the address for
        // connect) outlives the wait below.
        unsafe { ring.submission().push(&op).expect("submission queue full") };
        ring.submit_and_wait(1).expect("io_uring_enter");
        ring.completion().next().expect("a completion").result()
    }

    pub fn connect(ring: &mut IoUring, fd: i32, path: &str) -> i32 {
        let (addr, len) = super::sockaddr(path);
        run(ring, opcode::Connect::new(Fd(fd), (&raw const addr).cast(), len).build())
    }

    pub fn close(ring: &mut IoUring, fd: i32) -> i32 {
        run(ring, opcode::Close::new(Fd(fd)).build())
    }
}

#[test]
fn io_uring_connect_and_close_are_reported() {
    let mut f = Follower::start(&["-vv"]);
    let path = format!("/tmp/unixpeer-fdpaths-{}-uring.sock", std::process::id());
    let listener = listen_on(&path, libc::SOCK_STREAM, 8);
    let me = std::process::id() as i32;
    let mut ring = io_uring::IoUring::new(4).unwrap_or_else(|e| panic!("io_uring_setup on this kernel: {e}"));
    // SAFETY: a raw syscall; the fd is closed through the ring below.
    let s = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(s >= 0, "socket");
    let is = inode_of(s);
    assert_eq!(uring::connect(&mut ring, s, &path), 0, "IORING_OP_CONNECT to {path}");
    // SAFETY: raw syscalls on fds of this test.
    let (server, copy) = unsafe { (libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()), libc::dup(s)) };
    assert!(server >= 0 && copy >= 0, "accept, dup");
    let iserver = inode_of(server);
    assert_eq!(uring::close(&mut ring, copy), 0, "IORING_OP_CLOSE of the copy");
    assert_eq!(uring::close(&mut ring, s), 0, "IORING_OP_CLOSE of the last fd");
    // SAFETY: raw syscalls on fds of this test.
    unsafe {
        libc::close(server);
        libc::close(listener);
    }
    let _ = std::fs::remove_file(&path);
    // The server end's close(2) is seen by every strategy: everything of
    // the client's is in by then.
    f.wait_for("the server end's close", WAIT, |v| v["event"] == "close" && v["inode"] == iserver);
    let mine = |event: &'static str| move |v: &Value| v["event"] == event && v["pid"] == me && v["inode"] == is;
    if sees_every_fd_drop(&f) {
        let c = f.wait_for("the io_uring connect", WAIT, mine("connect"));
        assert_eq!(c["path"].as_str(), Some(path.as_str()), "{c}");
        // Not accepted yet: the other end is the listener's.
        assert_eq!((c["peer_is_listener"].as_bool(), c["peer_pid"].as_i64()), (Some(true), Some(i64::from(me))), "{c}");
        f.wait_for("the io_uring close of the copy", WAIT, mine("fd_close"));
        let closed = f.wait_for("the io_uring close of the last fd", WAIT, mine("close"));
        assert_eq!(closed["peer_inode"].as_u64(), Some(iserver), "{closed}");
    } else {
        assert!(
            !f.seen.iter().any(mine("connect")),
            "the syscall tracepoints do not see io_uring's connect; if they now do, update this test and \
             ARCHITECTURE.md"
        );
    }
}
