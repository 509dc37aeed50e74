//! Live capture end to end: the real `unixtrace --follow --json` against
//! real processes, one scenario each. Run as root (`cargo xtask test`), on
//! the host (tracepoint strategy) and in the VM matrix under every strategy.

use serde_json::Value;
use unixpeer_tests::tracer::*;

/// A socket path of this test run, unlinked when the test ends, whether it
/// passed or not.
struct TmpSock(String);

impl TmpSock {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for TmpSock {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TmpSock {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl Drop for TmpSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tmp_path(name: &str) -> TmpSock {
    TmpSock(format!("/tmp/unixpeer-live-{}-{name}.sock", std::process::id()))
}

#[test]
fn socketpair_in_a_child_names_its_pid_and_command() {
    let mut f = Follower::start(&[]);
    let p = pipe();
    let child = fork_child("sp-child", || {
        let fds = socketpair(libc::SOCK_STREAM);
        report(&p.write, &format!("{} {} {} {}", fds[0], fds[1], inode_of(fds[0]), inode_of(fds[1])));
        0
    });
    assert_eq!(wait_child(child), 0);
    let facts: Vec<u64> = numbers(&read_reports(p)[0]);
    let ev = f.wait_for("the child's socketpair", WAIT, |v| is_event(v, "socketpair", child));
    assert_eq!(ev["comm"], "sp-child", "{ev}");
    assert_eq!((ev["fd"].as_u64(), ev["peer_fd"].as_u64()), (Some(facts[0]), Some(facts[1])), "{ev}");
    assert_eq!((ev["inode"].as_u64(), ev["peer_inode"].as_u64()), (Some(facts[2]), Some(facts[3])), "{ev}");
    assert_eq!(ev["type"], "stream");
    assert_eq!((ev["peer_pid"].as_i64(), &ev["peer_comm"]), (Some(i64::from(child)), &Value::from("sp-child")));
}

#[test]
fn short_lived_connections_are_all_reported_with_both_ends() {
    const N: usize = 1000;
    let path = tmp_path("short");
    let listener = listen_on(&path, libc::SOCK_STREAM, 4096);
    let listener_inode = inode_of(listener);
    let mut f = Follower::start(&[]);
    let ready = pipe();
    let server = fork_child("lp-server", || {
        // Named by now: connects that come before this would rightly name
        // the server by the name it had at fork.
        report(&ready.write, "ready");
        serve(listener, N, false)
    });
    // SAFETY: the parent no longer needs the listener; the server has it.
    unsafe { libc::close(listener) };
    read_lines(&ready, 1);
    let client = fork_child("lp-client", || {
        for _ in 0..N {
            if talk(&path, false).is_err() {
                return 2;
            }
        }
        0
    });
    assert_eq!(wait_child(client), 0, "client failed");
    assert_eq!(wait_child(server), 0, "server failed");

    let connects = f.wait_for_n("client connects", N, WAIT, |v| is_event(v, "connect", client));
    let accepts = f.wait_for_n("server accepts", N, WAIT, |v| is_event(v, "accept", server));
    let client_closes = f.wait_for_n("client closes", N, WAIT, |v| is_event(v, "close", client));
    // The accepted sockets, and the listener released when the server exits.
    let server_closes = f.wait_for_n("server closes", N + 1, WAIT, |v| is_event(v, "close", server));
    for c in &connects {
        assert_eq!((c["comm"].as_str(), c["path"].as_str()), (Some("lp-client"), Some(path.as_str())), "{c}");
        assert_eq!(
            (c["peer_pid"].as_i64(), c["peer_comm"].as_str()),
            (Some(i64::from(server)), Some("lp-server")),
            "{c}"
        );
    }
    for a in &accepts {
        assert_eq!(a["comm"], "lp-server", "{a}");
        assert_eq!(
            (a["peer_pid"].as_i64(), a["peer_comm"].as_str()),
            (Some(i64::from(client)), Some("lp-client")),
            "{a}"
        );
    }
    let inodes = |vs: &[Value], key: &str| {
        let mut v: Vec<u64> = vs.iter().filter_map(|x| x[key].as_u64()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let client_inodes = inodes(&connects, "inode");
    assert_eq!(client_inodes.len(), N, "every connection has its own client socket");
    assert_eq!(inodes(&accepts, "peer_inode"), client_inodes, "every accept is joined to its connect");
    assert_eq!(inodes(&client_closes, "inode"), client_inodes, "every client close is seen");
    let mut expected_server = inodes(&accepts, "inode");
    expected_server.push(listener_inode);
    expected_server.sort_unstable();
    assert_eq!(inodes(&server_closes, "inode"), expected_server, "every server close is seen, the listener's too");
    for c in server_closes.iter().filter(|c| c["inode"] != listener_inode) {
        assert_eq!(c["peer_pid"].as_i64(), Some(i64::from(client)), "server close names the client: {c}");
    }
    let (_, stderr) = f.stop();
    assert!(!stderr.contains("lost"), "no event may be lost at this rate: {stderr}");
}

#[test]
fn socketpair_across_fork_names_the_other_process_at_close() {
    let mut f = Follower::start(&[]);
    let go = Gate::new();
    let p = pipe();
    let parent = fork_child("sp-parent", || {
        let fds = socketpair(libc::SOCK_SEQPACKET);
        let kid = fork_child("sp-kid", || {
            // SAFETY: raw syscalls in the child.
            unsafe {
                libc::close(fds[0]);
                report(&p.write, &format!("kid {}", libc::getpid()));
                let mut b = [0u8; 1];
                // Returns when the parent's end goes away.
                libc::read(fds[1], b.as_mut_ptr().cast(), 1);
                libc::close(fds[1]);
            }
            0
        });
        // SAFETY: raw syscalls.
        unsafe { libc::close(fds[1]) };
        report(&p.write, &format!("parent {}", inode_of(fds[0])));
        go.wait();
        // SAFETY: the parent's final close of its end.
        unsafe { libc::close(fds[0]) };
        wait_child(kid)
    });
    let lines = read_lines(&p, 2);
    let (kid, parent_inode) = (tagged(&lines, "kid", 1), tagged(&lines, "parent", 1));
    let pair = f.wait_for("the socketpair", WAIT, |v| is_event(v, "socketpair", parent));
    let kid_inode = pair["peer_inode"].as_i64().expect("peer inode");
    assert_eq!(pair["inode"].as_i64(), Some(parent_inode), "{pair}");
    go.open();
    assert_eq!(wait_child(parent), 0);
    let pc = f.wait_for("the parent's final close", WAIT, |v| is_event(v, "close", parent));
    assert_eq!(pc["inode"].as_i64(), Some(parent_inode), "{pc}");
    assert_eq!((pc["peer_pid"].as_i64(), pc["peer_comm"].as_str()), (Some(kid), Some("sp-kid")), "{pc}");
    assert_eq!(pc["type"], "seqpacket");
    let kc = f.wait_for("the kid's final close", WAIT, |v| v["event"] == "close" && v["pid"] == kid);
    assert_eq!(kc["inode"].as_i64(), Some(kid_inode), "{kc}");
    assert_eq!(kc["peer_pid"].as_i64(), Some(i64::from(parent)), "the kid's close names the parent: {kc}");
}

#[test]
fn failed_connect_to_a_missing_path_reports_enoent() {
    let mut f = Follower::start(&[]);
    let path = tmp_path("missing");
    let _ = std::fs::remove_file(path.as_str());
    let child = fork_child("cf-client", || match connect_to(&path, libc::SOCK_STREAM, false) {
        Err(e) if e == libc::ENOENT => 0,
        _ => 1,
    });
    assert_eq!(wait_child(child), 0, "connect must fail with ENOENT");
    let ev = f.wait_for("connect_failed", WAIT, |v| is_event(v, "connect_failed", child));
    assert_eq!((ev["errno"].as_i64(), ev["error"].as_str()), (Some(i64::from(libc::ENOENT)), Some("ENOENT")), "{ev}");
    assert_eq!(ev["path"].as_str(), Some(path.as_str()), "{ev}");
    assert_eq!(ev["comm"], "cf-client");
    // The socket never connected, so only the kernel can say what it was.
    let inode = ev["inode"].as_u64().expect("the failed socket's inode");
    let close = f.wait_for("the failed socket's close", WAIT, |v| {
        is_event(v, "close", child) && v["inode"].as_u64() == Some(inode)
    });
    assert_eq!(close["type"], "stream", "{close}");
}

/// A connect that succeeds is named as its peer is bound, as the snapshot
/// and `ss -x` name the same connection, whichever path the client took
/// (here a symlink); a datagram socket's connect names its target so.
#[test]
fn a_connect_through_a_symlink_is_named_by_the_listener_bound_name() {
    let bound = tmp_path("bound");
    let link = tmp_path("link");
    let dgram = tmp_path("dgram");
    let dgram_link = tmp_path("dgram-link");
    let listener = listen_on(&bound, libc::SOCK_STREAM, 16);
    let target = listen_on(&dgram, libc::SOCK_DGRAM, 0);
    for (to, from) in [(&bound, &link), (&dgram, &dgram_link)] {
        std::os::unix::fs::symlink(to.as_str(), from.as_str()).expect("symlink");
    }
    let mut f = Follower::start(&[]);
    let client = fork_child("ln-client", || {
        let stream = connect_to(&link, libc::SOCK_STREAM, false).is_ok();
        let datagram = connect_to(&dgram_link, libc::SOCK_DGRAM, false).is_ok();
        if stream && datagram { 0 } else { 1 }
    });
    assert_eq!(wait_child(client), 0, "the client's connects through the symlinks must succeed");
    let c = f.wait_for("the connect through the symlink", WAIT, |v| is_event(v, "connect", client));
    assert_eq!(c["path"].as_str(), Some(bound.as_str()), "{c}");
    let d = f.wait_for("the datagram connect through the symlink", WAIT, |v| is_event(v, "dgram_connect", client));
    assert_eq!(d["path"].as_str(), Some(dgram.as_str()), "{d}");
    // SAFETY: the test's own fds, no longer used.
    unsafe {
        libc::close(listener);
        libc::close(target);
    }
}

#[test]
fn failed_connect_to_a_full_backlog_names_the_listener() {
    let name = format!("@unixpeer-live-{}-full", std::process::id());
    let mut f = Follower::start(&[]);
    let p = pipe();
    let go = Gate::new();
    let server = fork_child("bl-server", || {
        let l = listen_on(&name, libc::SOCK_STREAM, 0);
        report(&p.write, &l.to_string());
        // Hold the listener until the test has seen the refusal.
        go.wait();
        0
    });
    read_lines(&p, 1);
    let client = fork_child("bl-client", || {
        for _ in 0..64 {
            match connect_to(&name, libc::SOCK_STREAM, true) {
                Ok(_) => continue,
                Err(e) if e == libc::EAGAIN => return 0,
                Err(_) => return 2,
            }
        }
        1
    });
    assert_eq!(wait_child(client), 0, "the backlog must fill up and refuse with EAGAIN");
    let ev = f.wait_for("connect_failed EAGAIN", WAIT, |v| is_event(v, "connect_failed", client));
    go.open();
    assert_eq!(wait_child(server), 0);
    assert_eq!(ev["error"], "EAGAIN", "{ev}");
    assert_eq!(ev["path"].as_str(), Some(name.as_str()), "{ev}");
    assert_eq!(
        (ev["peer_pid"].as_i64(), ev["peer_comm"].as_str()),
        (Some(i64::from(server)), Some("bl-server")),
        "{ev}"
    );
}

#[test]
fn pid_filter_keeps_only_that_process() {
    let go = Gate::new();
    let wanted = fork_child("pf-wanted", || {
        // Act only once the tracer runs.
        go.wait();
        socketpair(libc::SOCK_DGRAM);
        0
    });
    let pid_arg = wanted.to_string();
    let mut f = Follower::start(&["--pid", &pid_arg]);
    let other = fork_child("pf-other", || {
        socketpair(libc::SOCK_DGRAM);
        0
    });
    assert_eq!(wait_child(other), 0);
    go.open();
    assert_eq!(wait_child(wanted), 0);
    f.wait_for("the wanted socketpair", WAIT, |v| is_event(v, "socketpair", wanted));
    f.stop();
    let strays: Vec<&Value> = f.seen.iter().filter(|v| v["kind"] == "event" && v["pid"] != wanted).collect();
    assert!(strays.is_empty(), "events of other processes passed the --pid filter: {strays:?}");
}

#[test]
fn without_privileges_the_error_names_the_capabilities() {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(unixtrace_bin())
        .args(["--follow", "--duration", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run unixtrace as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON") && stderr.contains("root"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `unixtrace --follow` as nobody holding only `caps`, with the
/// locked-memory limit raised first (as root may) if `unlimited_memlock`.
fn follow_as_nobody_with(caps: &'static [u32], unlimited_memlock: bool) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(unixtrace_bin());
    cmd.args(["--follow", "--duration", "1"]);
    // SAFETY: the closure only makes system calls (no allocation) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if unlimited_memlock {
                let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            unixpeer_tests::sys::become_user_with_caps(65534, 65534, caps)
        })
    };
    cmd.output().expect("run unixtrace as nobody with capabilities")
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the kernel and this machine's settings leave a user who is not
/// root, whatever capabilities it holds short of CAP_SYS_ADMIN and
/// CAP_SYS_RESOURCE: `--follow` must either work or say which of these
/// stands in its way and how to lift it.
fn expect_follow_or_named_obstacle(out: &std::process::Output, memlock_counts: bool) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .expect("perf_event_paranoid")
        .trim()
        .parse()
        .expect("a number");
    if memlock_counts {
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert!(stderr.contains("CAP_SYS_RESOURCE") && stderr.contains("ulimit -l"), "{stderr}");
    } else if paranoid > 2 && out.status.code() != Some(0) {
        // Debian's and Ubuntu's kernels refuse CAP_PERFMON alone at level 3;
        // an unpatched kernel treats 3 as 2 and lets it follow.
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert!(stderr.contains("perf_event_paranoid") && stderr.contains("sysctl"), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(0), "with the capabilities the errors name: stderr: {stderr}");
    }
}

#[test]
fn a_user_with_the_capabilities_the_error_names_can_follow() {
    // tracefs is usually mode 0700: CAP_BPF and CAP_PERFMON alone are then
    // not enough, and the error must say what is.
    let mode =
        std::fs::metadata("/sys/kernel/tracing").map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    if !mode.is_ok_and(|m| m & 0o005 == 0o005) {
        let out = follow_as_nobody_with(&[CAP_BPF, CAP_PERFMON], false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert!(stderr.contains("CAP_DAC_READ_SEARCH") && stderr.contains("setcap"), "{stderr}");
        assert!(!stderr.contains("not mounted") && !stderr.contains("panicked"), "{stderr}");
    }
    // Before 5.11 BPF maps count against RLIMIT_MEMLOCK, which a user
    // without CAP_SYS_RESOURCE cannot raise past its hard limit.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) }, 0);
    let memlock_counts = !kernel_at_least(5, 11) && lim.rlim_max != libc::RLIM_INFINITY;
    let caps = &[CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH];
    expect_follow_or_named_obstacle(&follow_as_nobody_with(caps, false), memlock_counts);
    if memlock_counts {
        // With the limit lifted as the error says, only the kernel's perf
        // policy may remain.
        expect_follow_or_named_obstacle(&follow_as_nobody_with(caps, true), false);
    }
}

#[test]
fn connection_opened_before_start_is_named_at_close() {
    let path = tmp_path("before");
    let listener = listen_on(&path, libc::SOCK_STREAM, 8);
    let (server_go, client_go) = (Gate::new(), Gate::new());
    let p = pipe();
    let server = fork_child("old-server", || {
        // SAFETY: raw syscalls in the child.
        let c = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        report(&p.write, &format!("server {}", inode_of(c)));
        server_go.wait();
        0
    });
    let client = fork_child("old-client", || {
        let Ok(fd) = connect_to(&path, libc::SOCK_STREAM, false) else { return 1 };
        report(&p.write, &format!("client {}", inode_of(fd)));
        client_go.wait();
        // SAFETY: the close the tracer must report.
        unsafe { libc::close(fd) };
        0
    });
    // SAFETY: the server child has its own copy.
    unsafe { libc::close(listener) };
    let lines = read_lines(&p, 2);
    let inode = |tag: &str| tagged(&lines, tag, 1);
    // Only now does the tracer start: the connection is in its snapshot.
    let mut f = Follower::start(&[]);
    client_go.open();
    assert_eq!(wait_child(client), 0);
    let ev = f.wait_for("the old client's close", WAIT, |v| is_event(v, "close", client));
    server_go.open();
    assert_eq!(wait_child(server), 0);
    assert_eq!(ev["comm"], "old-client", "{ev}");
    assert_eq!(ev["inode"].as_i64(), Some(inode("client")), "{ev}");
    assert_eq!(ev["peer_inode"].as_i64(), Some(inode("server")), "{ev}");
    assert_eq!(
        (ev["peer_pid"].as_i64(), ev["peer_comm"].as_str()),
        (Some(i64::from(server)), Some("old-server")),
        "{ev}"
    );
    assert_eq!(ev["path"].as_str(), Some(path.as_str()), "the name comes from the snapshot: {ev}");
}

#[test]
fn text_output_names_both_ends_on_one_line() {
    let run = spawn_unixtrace(&["--duration", "3", "--comm", "txt-child"], std::process::Stdio::piped());
    let child = fork_child("txt-child", || {
        let fds = socketpair(libc::SOCK_STREAM);
        // SAFETY: raw syscalls in the child.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        0
    });
    assert_eq!(wait_child(child), 0);
    let (code, text, stderr) = run.finish();
    assert_eq!(code, Some(0), "stderr: {stderr}");
    // The snapshot table comes first, then the event stream under its own header.
    assert!(text.lines().any(|h| h.starts_with("TIME") && h.contains("PEER")), "event header: {text}");
    let me = format!("{child}/txt-child:");
    let pair = text
        .lines()
        .find(|l| l.contains("socketpair") && l.contains(&me))
        .unwrap_or_else(|| panic!("no socketpair line for {me}:\n{text}"));
    assert_eq!(pair.matches(&me).count(), 2, "both ends are named on the line: {pair}");
    assert!(text.lines().filter(|l| l.contains(" close ") && l.contains(&me)).count() == 2, "two closes:\n{text}");
}

#[test]
fn verbose_shows_the_kernel_programs_log() {
    let run = spawn_unixtrace(&["--duration", "3", "--comm", "vlog-child"], std::process::Stdio::null());
    let name = format!("@unixpeer-vlog-{}", std::process::id());
    let child = fork_child("vlog-child", || {
        listen_on(&name, libc::SOCK_STREAM, 1);
        0
    });
    assert_eq!(wait_child(child), 0);
    let (_, _, stderr) = run.finish();
    assert!(stderr.contains("backend "), "-v names the backend: {stderr}");
    // The VM matrix's auto column: every Debian cloud kernel has BTF and BPF
    // trampolines, so unixtrace's own choice must be its cheapest strategy.
    if std::env::var_os("UNIXPEER_IN_VM").is_some() && backend_args().is_empty() {
        assert!(stderr.contains("backend fentry"), "auto picks fentry on a Debian cloud kernel: {stderr}");
    }
    assert!(stderr.contains(&format!("listen: pid {child} ")), "the listen program's aya-log line: {stderr}");
    if stderr.contains("backend tracepoint") {
        // 5.15 added bpf_task_pt_regs: from there the syscall exits read
        // their arguments from the caller's registers.
        let note = if kernel_at_least(5, 15) { "from the caller's registers" } else { "carried from entry to exit" };
        assert!(stderr.contains(note), "-v says how syscall arguments are read ({note}): {stderr}");
    }
}

#[test]
fn mounts_tracefs_when_it_is_not_mounted() {
    require_root();
    let mounted = || {
        std::fs::read_to_string("/proc/mounts")
            .expect("read /proc/mounts")
            .lines()
            .any(|l| l.split(' ').nth(2) == Some("tracefs"))
    };
    // As on the CI host at boot: no tracefs anywhere.
    while mounted() {
        let target = std::fs::read_to_string("/proc/mounts")
            .expect("read /proc/mounts")
            .lines()
            .find(|l| l.split(' ').nth(2) == Some("tracefs"))
            .and_then(|l| l.split(' ').nth(1).map(str::to_owned))
            .expect("tracefs mount point");
        let c = std::ffi::CString::new(target.clone()).expect("path");
        // SAFETY: umount of a path we just read from /proc/mounts.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        assert_eq!(rc, 0, "umount {target}: {}", std::io::Error::last_os_error());
    }
    let out = std::process::Command::new(unixtrace_bin())
        .args(["--follow", "--duration", "1"])
        .args(backend_args())
        .output()
        .expect("run unixtrace");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        std::path::Path::new("/sys/kernel/tracing/events").is_dir(),
        "unixtrace mounts tracefs itself, where it belongs"
    );
}

/// ia32 syscall 3 is read(), x86_64's 3 is close(): a 32-bit syscall (here
/// through `int 0x80`, as a 32-bit program makes them) must not be taken for
/// a close of the socket it reads from.
#[test]
fn a_32_bit_read_is_not_taken_for_a_close() {
    let mut f = Follower::start(&["--comm", "compat-child"]);
    let p = pipe();
    let child = fork_child("compat-child", || {
        let fds = socketpair(libc::SOCK_STREAM);
        let ret: i64;
        // SAFETY: ia32 read(fds[0], NULL, 0) touches no memory. rbx holds the
        // first argument but is reserved by LLVM, hence the exchange.
        unsafe {
            std::arch::asm!(
                "xchg {fd}, rbx",
                "int 0x80",
                "xchg {fd}, rbx",
                fd = inout(reg) i64::from(fds[0]) => _,
                inlateout("rax") 3i64 => ret,
                in("rcx") 0i64,
                in("rdx") 0i64,
            );
        }
        report(&p.write, &format!("{ret} {}", inode_of(fds[0])));
        // The socket really goes away only now.
        // SAFETY: closing the child's own fds.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        0
    });
    assert_eq!(wait_child(child), 0);
    let facts: Vec<i64> = numbers(&read_reports(p)[0]);
    assert_eq!(facts[0], 0, "the ia32 read of 0 bytes returns 0 (needs CONFIG_IA32_EMULATION, as Debian has)");
    let inode = facts[1] as u64;
    f.wait_for_n("closes of both ends", 2, WAIT, |v| is_event(v, "close", child));
    let (_, _) = f.stop();
    let closes: Vec<&Value> =
        f.seen.iter().filter(|v| is_event(v, "close", child) && v["inode"].as_u64() == Some(inode)).collect();
    assert_eq!(closes.len(), 1, "one close of inode {inode}, from the real close(): {closes:?}");
}

/// Every event carries the uid of the process that caused it.
#[test]
fn events_carry_the_callers_uid() {
    const NOBODY: u32 = 65534;
    let mut f = Follower::start(&["--comm", "uid-child"]);
    let child = fork_child("uid-child", || {
        // SAFETY: dropping to nobody (with another gid, so a uid read from
        // the gid would show) in the child only.
        if unsafe { libc::setgid(4242) != 0 || libc::setuid(NOBODY) != 0 } {
            return 1;
        }
        let fds = socketpair(libc::SOCK_STREAM);
        // SAFETY: closing the child's own fds.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        0
    });
    assert_eq!(wait_child(child), 0, "the child could not become nobody");
    let pair = f.wait_for("the socketpair of uid 65534", WAIT, |v| is_event(v, "socketpair", child));
    assert_eq!(pair["uid"].as_u64(), Some(u64::from(NOBODY)), "{pair}");
    let close = f.wait_for("a close of uid 65534", WAIT, |v| is_event(v, "close", child));
    assert_eq!(close["uid"].as_u64(), Some(u64::from(NOBODY)), "{close}");
}

/// A child that passes one end of a socketpair over a channel, closes it
/// (the message still holds it), then closes the channel, which releases
/// the passed socket outside any syscall on it. Returns the child and the
/// passed socket's inode.
fn release_in_flight(comm: &str) -> (i32, u64) {
    let p = pipe();
    let child = fork_child(comm, || {
        let passed = socketpair(libc::SOCK_STREAM);
        let chan = socketpair(libc::SOCK_STREAM);
        if unixpeer_tests::sys::send_fd(chan[0], passed[0]).is_err() {
            return 1;
        }
        report(&p.write, &inode_of(passed[0]).to_string());
        // SAFETY: closing the child's own fds: first the passed one (the
        // message still holds it), then the channel, which drops the message.
        unsafe {
            libc::close(passed[0]);
            libc::close(chan[0]);
            libc::close(chan[1]);
            libc::close(passed[1]);
        }
        0
    });
    assert_eq!(wait_child(child), 0, "the child could not pass the fd");
    (child, read_reports(p)[0].parse().expect("inode"))
}

/// Stopped right after such a release (before the tracepoint strategy's
/// first look at the orphan, half a second on): the close is still shown.
#[test]
fn a_socket_released_in_flight_just_before_the_stop_is_reported_closed() {
    let mut f = Follower::start(&["--comm", "inflight-stop"]);
    let (child, inode) = release_in_flight("inflight-stop");
    let (code, stderr) = f.stop();
    assert_eq!(code, Some(0), "unixtrace failed: {stderr}");
    let close = f.wait_for("the close, printed as the capture stopped", WAIT, |v| {
        v["kind"] == "event" && v["event"] == "close" && v["inode"].as_u64() == Some(inode)
    });
    assert_eq!(close["pid"].as_i64(), Some(i64::from(child)), "{close}");
}

/// A socket whose last fd is closed while the file is still in flight over
/// SCM_RIGHTS is released later, when the message carrying it is dropped,
/// outside any syscall of the process. Its close is still reported: under
/// fentry/kprobe from unix_release_sock, under the tracepoint strategy by
/// asking UNIX_DIAG whether the orphaned socket still exists. A recording
/// replays that close as it was shown live.
#[test]
fn a_socket_released_in_flight_is_reported_closed() {
    let recording = std::env::temp_dir().join(format!("unixtrace-inflight-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&recording);
    let file = recording.to_str().expect("utf-8 temp dir");
    let mut f = Follower::start(&["--comm", "inflight-child", "-w", file]);
    let (child, inode) = release_in_flight("inflight-child");
    let close = f.wait_for("the close of the socket released in flight", WAIT, |v| {
        v["kind"] == "event" && v["event"] == "close" && v["inode"].as_u64() == Some(inode)
    });
    assert_eq!(close["pid"].as_i64(), Some(i64::from(child)), "named after the process that closed it: {close}");
    if f.capture["backend"] == "tracepoint" {
        assert_eq!(close["inferred"], "the last fd close, released later", "{close}");
    }
    let (code, stderr) = f.stop();
    assert_eq!(code, Some(0), "unixtrace failed: {stderr}");
    let replay = unixtrace(&["-r", file, "--json", "--comm", "inflight-child"]);
    let _ = std::fs::remove_file(&recording);
    assert!(replay.status.success(), "replay failed: {}", String::from_utf8_lossy(&replay.stderr));
    let replayed: Vec<Value> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["kind"] == "event" && v["event"] == "close" && v["inode"].as_u64() == Some(inode))
        .collect();
    assert_eq!(replayed.len(), 1, "the replay shows the close once: {replayed:?}");
    for key in ["pid", "comm", "inferred", "type", "peer_inode"] {
        assert_eq!(replayed[0][key], close[key], "replayed `{key}` differs: {} against live {close}", replayed[0]);
    }
}

/// Where the kernel has the `bpf_rdonly_cast` kfunc (6.2+), the programs
/// walk kernel structs through casts. Were the verifier to refuse them,
/// unixtrace would load again with probe reads and every other test would
/// still pass: this one says which walks loaded, on each kernel. It stops
/// unixtrace right after its ready line, which must end cleanly too.
#[test]
fn the_walks_use_casts_where_the_kernel_has_the_kfunc() {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("read this kernel's BTF");
    let has_kfunc = btf.windows(17).any(|w| w == b"\0bpf_rdonly_cast\0");
    let mut f = Follower::start(&["-vv"]);
    let (code, stderr) = f.stop();
    assert_eq!(code, Some(0), "unixtrace failed: {stderr}");
    let want = if has_kfunc {
        "kernel pointer walks: bpf_rdonly_cast and plain loads"
    } else {
        "kernel pointer walks: bpf_probe_read_kernel"
    };
    let said: Vec<&str> =
        stderr.lines().filter(|l| l.contains("kernel pointer walks") || l.contains("refused")).collect();
    assert!(stderr.contains(want), "expected `{want}` (kfunc in BTF: {has_kfunc}); unixtrace said: {said:?}");
}

/// connect + accept + socketpair + four closes per iteration, as
/// `cargo xtask bench follow`'s generator does, on a listener the parent
/// made (no allocation in the forked child).
fn burst(listener: i32, path: &str, iterations: usize) -> i32 {
    let (addr, len) = sockaddr(path);
    for _ in 0..iterations {
        // SAFETY: raw socket syscalls on fds this child owns.
        unsafe {
            let c = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if c < 0 || libc::connect(c, (&raw const addr).cast(), len) != 0 {
                return 2;
            }
            let s = libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
            let mut pair = [0; 2];
            if s < 0 || libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) != 0 {
                return 3;
            }
            for fd in [c, s, pair[0], pair[1]] {
                libc::close(fd);
            }
        }
    }
    // SAFETY: the listener is this child's to close.
    unsafe { libc::close(listener) };
    0
}

/// UNIX sockets of this network namespace, as the kernel lists them.
fn kernel_sockets() -> usize {
    std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix").lines().count().saturating_sub(1)
}

#[test]
fn a_burst_beyond_the_ring_buffer_is_counted_resynced_and_the_next_connection_named() {
    const N: usize = 5000;
    // A one-page ring buffer holds about 18 records: the burst overflows
    // it between two drains. Only the burst's command is captured, so the
    // kernel's counts are this test's alone.
    let comm = "lb-burst";
    let recording = format!("/tmp/unixpeer-live-{}-burst.jsonl", std::process::id());
    // Without -v: the programs' own logging (aya-log) and the debug lines
    // would slow the consumer under emulation and are not what is tested.
    // Bookkeeping events (exit, rename) are then not printed, only lost.
    let mut f = Follower::start(&["--buffer-size", "4K", "--comm", comm, "-w", &recording, "--force"]);
    let path = tmp_path("burst");
    let listener = listen_on(&path, libc::SOCK_STREAM, 128);
    let burster = fork_child(comm, || burst(listener, &path, N));
    // SAFETY: the child has its own copy of the listener.
    unsafe { libc::close(listener) };
    assert_eq!(wait_child(burster), 0, "the burst failed");

    // Loss is counted in the kernel and reported once a second: wait until
    // every socket event of the burst was either printed or counted lost.
    // The burst's socket events: seven an iteration and the close of the
    // listener. The lost count may also hold bookkeeping events, which are
    // not printed when they do get through: the burster's exit and rename,
    // and under fentry and kprobe each close() (fd_close: the release
    // itself comes from unix_release_sock).
    let caused = 7 * N as u64 + 1;
    let closes = 4 * N as u64 + 1;
    let kinds = |seen: &[Value]| {
        let mut by_kind = std::collections::BTreeMap::<String, u64>::new();
        for v in seen.iter().filter(|v| v["kind"] == "event" && v["pid"] == burster) {
            *by_kind
                .entry(format!("{}{}", v["event"], if v["inferred"].is_null() { "" } else { " (inferred)" }))
                .or_default() += 1;
        }
        by_kind
    };
    // A kprobe the kernel skips (another probe already running on the CPU,
    // an exhausted kretprobe) is counted only where unixtrace cannot read it
    // before 6.7: under emulation a handful of a burst's events go that way.
    // Every other strategy accounts for each event.
    let uncounted = if f.capture["backend"] == "kprobe" && !kernel_at_least(6, 7) { caused / 100 } else { 0 };
    // Under emulation on a busy host the lines come slowly, for minutes:
    // what bounds the wait is a pause in them, not the clock. Counted once
    // per line (closes the model deduced at the burster's exit, for
    // sockets whose own close was lost, are lines, not kernel events).
    let (mut printed, mut lost, mut counted) = (0u64, 0u64, 0usize);
    loop {
        for v in &f.seen[counted..] {
            if v["kind"] == "event" && v["pid"] == burster && v["inferred"].is_null() {
                printed += 1;
            } else if v["kind"] == "lost" {
                lost += v["count"].as_u64().expect("lost count");
            }
        }
        counted = f.seen.len();
        if printed + lost + uncounted >= caused {
            let tail = format!("{printed} printed + {lost} lost, for {caused} socket events: {:?}", kinds(&f.seen));
            assert!(printed + lost <= caused + 2 + closes, "more than the burst caused: {tail}");
            break;
        }
        let more = f.lines_within(WAIT);
        if more == 0 {
            let tail = format!("{printed} printed + {lost} lost, for {caused} socket events: {:?}", kinds(&f.seen));
            f.fail(&format!("events neither printed nor counted lost, and no line for {WAIT:?}: {tail}"));
        }
    }
    assert!(lost > 0, "a {N}-iteration burst into a one-page ring buffer lost nothing");
    let last_lost = f.seen.iter().rposition(|v| v["kind"] == "lost").expect("a lost record");
    assert_eq!(f.seen[last_lost]["total"].as_u64(), Some(lost), "the running total: {}", f.seen[last_lost]);
    // After the last loss, the model is checked against the kernel.
    let earlier = f.seen[..last_lost].iter().filter(|v| v["kind"] == "resync").count();
    let resyncs = f.wait_for_n("a resync after the last loss", earlier + 1, WAIT, |v| v["kind"] == "resync");
    let resync = resyncs.last().expect("a resync").clone();
    let field = |k: &str| resyncs.iter().map(|r| r[k].as_u64().expect("a count")).sum::<u64>();
    let resync_at = f.seen.iter().rposition(|v| v["kind"] == "resync").expect("a resync");
    let lost_before: u64 =
        f.seen[..resync_at].iter().filter(|v| v["kind"] == "lost").map(|v| v["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(field("lost"), lost_before, "each resync says what was lost before it: {resyncs:?}");
    // Sockets whose close was lost left the model (what is left is what
    // the kernel has, plus what came and went during the check). Those
    // shown opened and never shown closed are such phantoms. There may be
    // none: when the burster's exit gets through, the model closes what it
    // still held (lines "inferred": "exit"), and the resync finds nothing
    // to remove (seen on 6.12 under the tracepoint strategy).
    let (mut opened, mut closed) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for v in f.seen.iter().filter(|v| v["kind"] == "event" && v["pid"] == burster) {
        let inode = v["inode"].as_u64();
        match v["event"].as_str() {
            Some("connect" | "accept") => opened.extend(inode),
            Some("socketpair") => opened.extend(inode.into_iter().chain(v["peer_inode"].as_u64())),
            Some("close") => closed.extend(inode),
            _ => {}
        }
    }
    let phantoms: Vec<&u64> = opened.difference(&closed).collect();
    if !phantoms.is_empty() {
        assert!(
            field("gone") > 0,
            "{} sockets shown opened and never shown closed (first: {:?}), yet no resync removed any: {resyncs:?}",
            phantoms.len(),
            &phantoms[..phantoms.len().min(5)]
        );
    }
    let tracked = resync["sockets"].as_u64().expect("sockets tracked") as usize;
    let in_kernel = kernel_sockets();
    assert!(tracked <= in_kernel + 64, "{tracked} sockets tracked after the resync, the kernel has {in_kernel}");

    // After the burst, a connection is named with both ends. The server
    // listens itself: the test process's own calls are not captured.
    let after = tmp_path("after");
    let server = spawn_server(comm, &after, 16, 1);
    let client = fork_child(comm, || if talk(&after, true).is_ok() { 0 } else { 2 });
    assert_eq!(wait_child(client), 0, "client failed");
    assert_eq!(wait_child(server), 0, "server failed");
    let connect = f.wait_for("the connect after the burst", WAIT, |v| is_event(v, "connect", client));
    assert_eq!(connect["peer_pid"].as_i64(), Some(i64::from(server)), "{connect}");
    assert_eq!(connect["path"].as_str(), Some(after.as_str()), "{connect}");
    let accept = f.wait_for("the accept after the burst", WAIT, |v| is_event(v, "accept", server));
    assert_eq!((accept["peer_pid"].as_i64(), accept["peer_comm"].as_str()), (Some(i64::from(client)), Some(comm)));

    let (code, stderr) = f.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("events lost in the kernel (") || stderr.contains("events missed in the kernel ("),
        "loss is said on stderr:\n{stderr}"
    );
    assert!(stderr.contains("resynchronized with the kernel after"), "the resync is said on stderr:\n{stderr}");
    // The recording says it too, and a replay rebuilds the same check.
    let replay = unixtrace(&["-r", &recording, "--json"]);
    let _ = std::fs::remove_file(&recording);
    let text = String::from_utf8_lossy(&replay.stdout);
    let replayed: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let again: Vec<&Value> = replayed.iter().filter(|v| v["kind"] == "resync").collect();
    // Every resync of the run, those after the burst's included.
    let resyncs: Vec<&Value> = f.seen.iter().filter(|v| v["kind"] == "resync").collect();
    assert_eq!(again.len(), resyncs.len(), "every resync is in the recording: {again:?}");
    for (r, live) in again.iter().zip(&resyncs) {
        assert_eq!((&r["lost"], &r["gone"]), (&live["lost"], &live["gone"]), "replayed {r} vs live {live}");
    }
    let named = replayed.iter().find(|v| is_event(v, "connect", client)).expect("the replayed connect after the burst");
    assert_eq!(named["peer_pid"].as_i64(), Some(i64::from(server)), "{named}");
}

#[test]
fn a_worker_thread_is_named_as_its_process() {
    let mut f = Follower::start(&[]);
    let path = tmp_path("threaded");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_threaded")).arg(&path).output().expect("run threaded");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "threaded failed: {said} {}", String::from_utf8_lossy(&out.stderr));
    let field = |k: &str| -> i64 {
        said.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {said:?}"))
    };
    let (pid, worker) = (field("pid") as i32, field("worker_tid"));
    assert_ne!(i64::from(pid), worker, "the connect must come from another thread");
    // The worker thread connects: the process is named as ps names it, the
    // thread keeps its own id.
    let connect = f.wait_for("the worker's connect", WAIT, |v| is_event(v, "connect", pid));
    assert_eq!((connect["comm"].as_str(), connect["tid"].as_i64()), (Some("threaded"), Some(worker)), "{connect}");
    assert_eq!((connect["peer_pid"].as_i64(), connect["peer_comm"].as_str()), (Some(i64::from(pid)), Some("threaded")));
    let accept = f.wait_for("the main thread's accept", WAIT, |v| is_event(v, "accept", pid));
    assert_eq!(
        (accept["comm"].as_str(), accept["peer_comm"].as_str()),
        (Some("threaded"), Some("threaded")),
        "{accept}"
    );
    // Nothing of this process goes by the thread's name, even once the
    // model has seen the thread.
    let closes =
        f.wait_for_n("both ends' closes", 2, WAIT, |v| is_event(v, "close", pid) && v["path"] == path.as_str());
    for v in f.seen.iter().filter(|v| v["pid"] == pid).chain(&closes) {
        assert_eq!(v["comm"], "threaded", "{v}");
        assert!(v["peer_comm"].is_null() || v["peer_comm"] == "threaded", "{v}");
    }
}
