//! Descriptors passed with Python's `socket.send_fds`/`recv_fds` (Debian's
//! `/usr/bin/python3`, not whatever is first on PATH): a regular file, a
//! pipe end, a memfd and a connected socket received by another process,
//! and one pipe end sent to a datagram socket closed unread. Each
//! `pass_fd` line of `unixtrace --follow --json` is checked field by field
//! against what the script says it did (pids, fds, `os.fstat` inodes).
//! Host only (the VM guests have no Python): `pass_fd` runs the same
//! checks with this test's own children everywhere.

use std::{process::Command, time::Duration};

use serde_json::Value;
use unixpeer_tests::tracer::*;

const PYTHON: &str = "/usr/bin/python3";

const SCRIPT: &str = r#"
import json, os, socket, sys, time
ino = lambda fd: os.fstat(fd).st_ino
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
f = open(sys.argv[1], "w")
r, w = os.pipe()
m = os.memfd_create("py-shm")
s1, s2 = socket.socketpair()
fds = [f.fileno(), r, m, s1.fileno()]
child = os.fork()
if child == 0:
    _, got, _, _ = socket.recv_fds(b, 16, 8)
    print(json.dumps({"recv": os.getpid(), "fds": got, "inodes": [ino(x) for x in got]}), flush=True)
    os._exit(0)
socket.send_fds(a, [b"x"], fds)
os.waitpid(child, 0)
print(json.dumps({"send": os.getpid(), "fds": fds, "inodes": [ino(x) for x in fds],
                  "a": ino(a.fileno()), "b": ino(b.fileno()), "s2": ino(s2.fileno())}), flush=True)
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
socket.send_fds(c, [b"y"], [w])
print(json.dumps({"lost": w, "inode": ino(w), "c": ino(c.fileno()), "d": ino(d.fileno())}), flush=True)
d.close()
"#;

#[test]
fn pass_fd_python_send_fds_is_reported_field_by_field() {
    if !std::path::Path::new(PYTHON).exists() {
        panic!("{PYTHON} is missing: this host test needs Debian's python3");
    }
    let file = format!("/tmp/unixpeer-passfd-py-{}.txt", std::process::id());
    let mut f = Follower::start(&[]);
    let out = Command::new(PYTHON).args(["-c", SCRIPT, &file]).output().expect("run python3");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    let said: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("python3 said {l:?}: {e}")))
        .collect();
    let find = |key: &str| said.iter().find(|v| !v[key].is_null()).unwrap_or_else(|| panic!("no {key} in {said:?}"));
    let (recv, send, lost) = (find("recv"), find("send"), find("lost"));
    let wait = Duration::from_secs(60);
    let kinds = ["file", "pipe", "memfd", "socket"];
    for (i, kind) in kinds.iter().enumerate() {
        let fd = &send["fds"][i];
        let v = f.wait_for(&format!("the pass_fd of {kind} fd {fd}"), wait, |v| {
            v["event"] == "pass_fd" && v["pid"] == send["send"] && v["fd"] == *fd && v["received"] == true
        });
        assert_eq!(v["peer_pid"], recv["recv"], "{v}");
        assert_eq!(v["peer_fd"], recv["fds"][i], "the fd recv_fds returned: {v}");
        assert_eq!(v["file_kind"], *kind, "{v}");
        assert_eq!(v["file_inode"], send["inodes"][i], "{v}");
        assert_eq!(recv["inodes"][i], send["inodes"][i], "the receiver has the same file");
        assert_eq!((&v["inode"], &v["peer_inode"]), (&send["a"], &send["b"]), "{v}");
        assert_eq!((&v["comm"], &v["peer_comm"]), (&Value::from("python3"), &Value::from("python3")), "{v}");
        match *kind {
            "file" => assert_eq!(v["file_name"].as_str(), file.rsplit('/').next(), "{v}"),
            "memfd" => assert_eq!(v["file_name"], "memfd:py-shm", "{v}"),
            "socket" => assert_eq!(v["file_peer_inode"], send["s2"], "{v}"),
            _ => {}
        }
    }
    let v = f.wait_for("the pass_fd never received", wait, |v| {
        v["event"] == "pass_fd" && v["pid"] == send["send"] && v["fd"] == lost["lost"] && v["received"] == false
    });
    assert!(v["peer_fd"].is_null(), "{v}");
    assert_eq!(v["file_kind"], "pipe", "{v}");
    assert_eq!(v["file_inode"], lost["inode"], "{v}");
    assert_eq!((&v["inode"], &v["peer_inode"], &v["type"]), (&lost["c"], &lost["d"], &Value::from("dgram")), "{v}");
}
