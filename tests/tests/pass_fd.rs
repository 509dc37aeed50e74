//! Descriptors passed over SCM_RIGHTS end to end: real processes pass a
//! regular file, a pipe end, a memfd and a connected socket with
//! sendmsg/recvmsg, and the `pass_fd` lines of `unixtrace --follow --json`
//! must name both ends and each descriptor as the programs saw them, field
//! by field; descriptors sent to a socket closed before it read them must
//! be reported as never received. Run as root on the host and in the VM
//! matrix under every strategy (no Python there: the processes are this
//! test's own children). `pass_fd_python` does the same with Python's
//! `socket.send_fds` on the host.

use std::time::Duration;

use serde_json::Value;
use unixpeer_tests::{sys, tracer::*};

const WAIT: Duration = Duration::from_secs(60);

/// What a pass_fd line says of the descriptor and its two ends.
fn gist(v: &Value) -> Vec<Value> {
    ["pid", "fd", "peer_pid", "peer_fd", "inode", "peer_inode", "file_kind", "file_inode", "file_name", "received"]
        .iter()
        .map(|k| v[*k].clone())
        .collect()
}

fn pass_of(f: &mut Follower, sender: i32, fd: i64) -> Value {
    f.wait_for(&format!("the pass_fd of fd {fd} by {sender}"), WAIT, |v| {
        v["kind"] == "event" && v["event"] == "pass_fd" && v["pid"] == sender && v["fd"] == fd
    })
}

#[test]
fn pass_fd_names_sender_receiver_and_each_descriptor() {
    let mut f = Follower::start(&[]);
    let file_path = format!("/tmp/unixpeer-passfd-{}.txt", std::process::id());
    let file = std::fs::File::create(&file_path).expect("create the file to pass");
    let file_fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let (pipe_r, pipe_w) = sys::pipe().expect("pipe");
    let memfd = sys::memfd(c"unixpeer-shm").expect("memfd_create");
    let [s1, s2] = socketpair(libc::SOCK_STREAM);
    let [a, b] = socketpair(libc::SOCK_STREAM);
    let passed = [file_fd, pipe_r, memfd, s1];
    let p = pipe();
    let gate = Gate::new();
    let receiver = fork_child("pf-recv", || {
        let mut fds = [-1; sys::MAX_PASSED];
        let Ok(n) = sys::recv_fds(b, &mut fds) else { return 1 };
        let inodes: Vec<String> = fds[..n].iter().map(|&fd| sys::inode_of(fd).unwrap_or(0).to_string()).collect();
        let fds: Vec<String> = fds[..n].iter().map(i32::to_string).collect();
        report(&p.write, &format!("recv {} {}", fds.join(" "), inodes.join(" ")));
        0
    });
    let sender = fork_child("pf-send", || {
        gate.wait();
        if sys::send_fds(a, &passed).is_err() {
            return 1;
        }
        0
    });
    gate.open();
    assert_eq!(wait_child(sender), 0, "sender failed");
    assert_eq!(wait_child(receiver), 0, "receiver failed");
    let line = read_lines(&p, 1).remove(0);
    let got: Vec<i64> = numbers(line.trim_start_matches("recv "));
    assert_eq!(got.len(), 8, "the receiver got four descriptors: {line}");
    let (recv_fds, recv_inodes) = got.split_at(4);
    let kinds = ["file", "pipe", "memfd", "socket"];
    for (i, &fd) in passed.iter().enumerate() {
        let v = pass_of(&mut f, sender, i64::from(fd));
        let want_inode = inode_of(fd);
        assert_eq!(v["comm"], "pf-send", "{v}");
        assert_eq!(v["peer_pid"], receiver, "{v}");
        assert_eq!(v["peer_comm"], "pf-recv", "{v}");
        assert_eq!(v["peer_fd"], recv_fds[i], "the fd recvmsg returned: {v}");
        assert_eq!(v["received"], true, "{v}");
        assert_eq!(v["file_kind"], kinds[i], "{v}");
        assert_eq!(v["file_inode"], want_inode, "{v}");
        assert_eq!(recv_inodes[i] as u64, want_inode, "the receiver has the same file");
        assert_eq!((v["inode"].as_u64(), v["peer_inode"].as_u64()), (Some(inode_of(a)), Some(inode_of(b))), "{v}");
        assert_eq!(v["type"], "stream", "{v}");
        match kinds[i] {
            "file" => assert_eq!(v["file_name"].as_str(), file_path.rsplit('/').next(), "{v}"),
            "memfd" => assert_eq!(v["file_name"], "memfd:unixpeer-shm", "{v}"),
            "socket" => assert_eq!(v["file_peer_inode"], inode_of(s2), "the passed socket's peer: {v}"),
            _ => assert!(v["file_name"].is_null(), "a pipe has no name: {v}"),
        }
    }
    let _ = std::fs::remove_file(&file_path);
    for fd in [pipe_r, pipe_w, memfd, s1, s2, a, b] {
        sys::close(fd);
    }
}

#[test]
fn pass_fd_to_a_socket_closed_unread_is_never_received_and_replays_alike() {
    let recording = format!("/tmp/unixpeer-passfd-{}.jsonl", std::process::id());
    let _ = std::fs::remove_file(&recording);
    let mut f = Follower::start(&["-w", &recording, "-v"]);
    let p = pipe();
    let child = fork_child("pf-lost", || {
        let Ok((r, w)) = sys::pipe() else { return 1 };
        let Ok((c, d)) = sys::socketpair(libc::SOCK_DGRAM) else { return 1 };
        if sys::send_fds(c, &[w]).is_err() {
            return 2;
        }
        report(&p.write, &format!("lost {w} {} {} {}", inode_of(w), inode_of(c), inode_of(d)));
        // The receiving end goes with the descriptor still in its queue.
        sys::close(d);
        sys::close(c);
        sys::close(r);
        0
    });
    assert_eq!(wait_child(child), 0, "child failed");
    let line = read_lines(&p, 1).remove(0);
    let n: Vec<u64> = numbers(line.trim_start_matches("lost "));
    let v = pass_of(&mut f, child, n[0] as i64);
    assert_eq!(v["received"], false, "{v}");
    assert!(v["peer_fd"].is_null(), "nobody got an fd: {v}");
    assert_eq!(v["peer_pid"], child, "who closed the receiving socket: {v}");
    assert_eq!(v["file_kind"], "pipe", "{v}");
    assert_eq!(v["file_inode"], n[1], "{v}");
    assert_eq!((v["inode"].as_u64(), v["peer_inode"].as_u64()), (Some(n[2]), Some(n[3])), "{v}");
    assert_eq!(v["type"], "dgram", "{v}");
    // The recording keeps both sides; its replay joins them alike.
    let (_, stderr) = f.stop();
    // Under fentry the syscall functions' fexit, where their BTF is whole
    // (not Debian's 5.10), and under kprobe their kprobes: no syscall
    // tracepoint.
    let hooks = stderr.lines().find(|l| l.contains("SCM_RIGHTS")).unwrap_or_default().to_owned();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!("{} on {release}: {hooks}", f.capture["backend"]);
    if f.capture["backend"] == "fentry" && !release.starts_with("5.10") {
        assert!(hooks.contains("fexit on __x64_sys_"), "{hooks}\n{stderr}");
    } else if f.capture["backend"] == "kprobe" {
        assert!(hooks.contains("kprobes on __x64_sys_"), "{hooks}\n{stderr}");
    } else {
        assert!(hooks.contains("sys_exit_"), "{hooks}\n{stderr}");
    }
    let live: Vec<Vec<Value>> = f.seen.iter().filter(|v| v["event"] == "pass_fd").map(gist).collect();
    let out = unixtrace(&["-r", &recording, "--json"]);
    let _ = std::fs::remove_file(&recording);
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    let replayed: Vec<Vec<Value>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(json_line)
        .filter(|v| v["event"] == "pass_fd")
        .map(|v| gist(&v))
        .collect();
    assert_eq!(replayed, live, "replay against live");
    assert!(live.contains(&gist(&v)));
}
