//! Bytes and datagrams moved by real programs: `socat` against a Python
//! server, both ways, and `logger` sending to a datagram socket by path,
//! as it does to /dev/log. Each close line must say what the programs
//! moved. Host only: the guests carry neither socat, Python nor logger;
//! `traffic` runs the same checks with processes of its own under every
//! strategy.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::Value;
use unixpeer_tests::tracer::*;

const PYTHON: &str = "/usr/bin/python3";

/// Reads until the client's EOF, counting its calls, then answers twice
/// as much and reports `INODE RECEIVED_BYTES RECV_CALLS SENT_BYTES
/// SEND_CALLS` on stdout.
const SERVER: &str = r#"
import os, socket, sys
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
got = calls = 0
while True:
    d = conn.recv(65536)
    if not d:
        break
    got += len(d)
    calls += 1
sent = sends = 0
reply = b"r" * (2 * got)
while sent < len(reply):
    sent += conn.send(reply[sent:])
    sends += 1
print(os.fstat(conn.fileno()).st_ino, got, calls, sent, sends, flush=True)
conn.close()
srv.close()
"#;

fn tmp(name: &str) -> String {
    let p = format!("/tmp/unixpeer-tools-{}-{name}.sock", std::process::id());
    let _ = std::fs::remove_file(&p);
    p
}

fn counted(f: &Follower) {
    assert!(f.capture["traffic"].is_string(), "the host kernel counts bytes: {}", f.capture);
}

#[test]
fn socat_and_a_python_server_both_ways() {
    let path = tmp("socat");
    let mut server = Command::new(PYTHON)
        .args(["-c", SERVER, &path])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python server");
    let mut out = BufReader::new(server.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready");
    let mut f = Follower::start(&[]);
    counted(&f);
    let request = vec![b'q'; 10_000];
    let mut socat = Command::new("socat")
        .args(["-t", "5", "STDIO", &format!("UNIX-CONNECT:{path}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start socat (xtask installs it)");
    socat.stdin.take().expect("stdin").write_all(&request).expect("write to socat");
    let reply = socat.wait_with_output().expect("socat");
    assert!(reply.status.success(), "socat failed: {reply:?}");
    assert_eq!(reply.stdout.len(), 20_000, "socat got the whole answer");
    line.clear();
    out.read_line(&mut line).expect("the server's report");
    let _ = server.wait();
    let _ = std::fs::remove_file(&path);
    let n: Vec<u64> = numbers(line.trim());
    let (server_inode, got, recv_calls, sent, send_calls) = (n[0], n[1], n[2], n[3], n[4]);
    assert_eq!((got, sent), (10_000, 20_000));
    let closed = |v: &Value, comm: &str| v["kind"] == "event" && v["event"] == "close" && v["comm"] == comm;
    let s = f.wait_for("the server's close", WAIT, |v| closed(v, "python3") && v["inode"] == server_inode);
    assert_eq!(
        [&s["bytes_received"], &s["msgs_received"], &s["bytes_sent"], &s["msgs_sent"]].map(Value::as_u64),
        [got, recv_calls, sent, send_calls].map(Some),
        "the server's counts against its own: {s}"
    );
    let c = f.wait_for("socat's close", WAIT, |v| closed(v, "socat") && v["path"].as_str() == Some(path.as_str()));
    assert_eq!((c["bytes_sent"].as_u64(), c["bytes_received"].as_u64()), (Some(10_000), Some(20_000)), "{c}");
    assert!(c["msgs_sent"].as_u64() >= Some(1) && c["msgs_received"].as_u64() >= Some(1), "{c}");
    assert_eq!(c["peer_inode"].as_u64(), Some(server_inode), "socat's close names the server's end: {c}");
}

/// Binds a datagram socket, reports its inode, then the size of each of
/// the `n` datagrams it receives.
const SINK: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print(os.fstat(s.fileno()).st_ino, flush=True)
for _ in range(int(sys.argv[2])):
    print(len(s.recv(65536)), flush=True)
"#;

/// Sends `n` datagrams of `size` bytes to a path with sendto, unconnected.
const SENDTO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"p" * int(sys.argv[3]), sys.argv[1])
"#;

#[test]
fn logger_and_python_sendto_name_the_receiving_socket() {
    let path = tmp("log");
    let mut sink =
        Command::new(PYTHON).args(["-c", SINK, &path, "3"]).stdout(Stdio::piped()).spawn().expect("start the sink");
    let mut out = BufReader::new(sink.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the sink's inode");
    let sink_inode: u64 = line.trim().parse().expect("inode");
    let mut f = Follower::start(&[]);
    counted(&f);
    // logger connects its datagram socket to the path, then sends.
    let logger = Command::new("logger").args(["-u", &path, "-d", "unixtrace was here"]).status().expect("logger");
    assert!(logger.success(), "logger failed");
    // Python sends two by address, unconnected.
    let sendto = Command::new(PYTHON).args(["-c", SENDTO, &path, "2", "100"]).status().expect("python sendto");
    assert!(sendto.success(), "python sendto failed");
    let sizes: Vec<u64> = (0..3)
        .map(|_| {
            line.clear();
            out.read_line(&mut line).expect("a datagram's size");
            line.trim().parse().expect("size")
        })
        .collect();
    let _ = sink.wait();
    let _ = std::fs::remove_file(&path);
    let names_sink = |v: &Value| v["peer_inode"].as_u64() == Some(sink_inode) && v["peer_comm"] == "python3";
    let c = f.wait_for("logger's dgram_connect", WAIT, |v| v["event"] == "dgram_connect" && v["comm"] == "logger");
    assert!(names_sink(&c) && c["path"].as_str() == Some(path.as_str()), "{c}");
    let logger_inode = c["inode"].as_u64().expect("logger's socket");
    let close = f.wait_for("logger's close", WAIT, |v| v["event"] == "close" && v["inode"] == logger_inode);
    assert_eq!((close["bytes_sent"].as_u64(), close["msgs_sent"].as_u64()), (Some(sizes[0]), Some(1)), "{close}");
    let send = f.wait_for("python's dgram_send", WAIT, |v| v["event"] == "dgram_send" && v["comm"] == "python3");
    assert!(names_sink(&send) && send["path"].as_str() == Some(path.as_str()), "{send}");
    let sender = send["inode"].as_u64().expect("python's socket");
    let close = f.wait_for("python's close", WAIT, |v| v["event"] == "close" && v["inode"] == sender);
    assert_eq!((close["bytes_sent"].as_u64(), close["msgs_sent"].as_u64()), (Some(200), Some(2)), "{close}");
    let to = &close["sent_to"][0];
    assert_eq!(
        (to["peer_inode"].as_u64(), to["bytes"].as_u64(), to["msgs"].as_u64()),
        (Some(sink_inode), Some(200), Some(2))
    );
    assert_eq!(sizes[1..], [100, 100], "python's datagrams arrived whole");
    assert!(
        f.seen.iter().filter(|v| v["event"] == "dgram_send" && v["inode"] == sender).count() == 1,
        "one event per pair"
    );
}
