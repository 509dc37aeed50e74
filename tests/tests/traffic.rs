//! Bytes and messages per connection end to end: real processes move known
//! amounts each way, count their own successful calls, and the close lines
//! of `unixtrace --follow --json` must say the same, field by field. Run as
//! root on the host (tracepoint strategy, sock:sock_*_length tracepoints)
//! and in the VM matrix under every strategy. Where a kernel has no hook to
//! count with (the tracepoint strategy before 6.3), the capture must say so
//! and the counts be null: never zeros that look measured.

use std::time::Duration;

use serde_json::Value;
use unixpeer_tests::{sys, tracer::*};

/// What one process did on its end, as it counted it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Did {
    bytes_sent: u64,
    bytes_received: u64,
    msgs_sent: u64,
    msgs_received: u64,
}

impl Did {
    fn line(&self, tag: &str) -> String {
        format!("{tag} {} {} {} {}", self.bytes_sent, self.bytes_received, self.msgs_sent, self.msgs_received)
    }

    /// A report line, `TAG INODE COUNTS…`: the socket and what was done on it.
    fn parse(line: &str) -> (u64, Self) {
        let n: Vec<u64> = numbers(line.split_once(' ').map_or("", |(_, rest)| rest));
        (n[0], Self { bytes_sent: n[1], bytes_received: n[2], msgs_sent: n[3], msgs_received: n[4] })
    }

    fn send(&mut self, fd: i32, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            match sys::write_fd(fd, buf) {
                Ok(n) if n > 0 => {
                    self.bytes_sent += n as u64;
                    self.msgs_sent += 1;
                    buf = &buf[n..];
                }
                _ => return false,
            }
        }
        true
    }

    /// Reads until `want` bytes came, one counted call each.
    fn receive(&mut self, fd: i32, want: u64) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < want {
            match sys::read_fd(fd, &mut buf) {
                Ok(n) if n > 0 => {
                    got += n as u64;
                    self.bytes_received += n as u64;
                    self.msgs_received += 1;
                }
                _ => return false,
            }
        }
        true
    }
}

/// Whether this capture counts; if not, it must say why.
fn counting(f: &Follower) -> bool {
    let how = &f.capture["traffic"];
    let why = &f.capture["traffic_unavailable"];
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (major, minor) = kernel_version(&kernel);
    // sock:sock_send_length came in 6.3; fentry and kprobe hook af_unix.
    let can = (major, minor) >= (6, 3) || f.capture["backend"] != "tracepoint";
    if can {
        assert!(how.is_string(), "kernel {kernel} should count bytes under {}: {}", f.capture["backend"], f.capture);
    } else {
        assert!(
            how.is_null() && why.as_str().is_some_and(|w| w.contains("sock_send_length")),
            "kernel {kernel}: the capture must say why nothing is counted: {}",
            f.capture
        );
    }
    can
}

fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn close_of(f: &mut Follower, what: &str, inode: u64) -> Value {
    f.wait_for(what, WAIT, |v| v["kind"] == "event" && v["event"] == "close" && v["inode"] == inode)
}

fn assert_counts(close: &Value, did: Option<&Did>) {
    let got = [&close["bytes_sent"], &close["bytes_received"], &close["msgs_sent"], &close["msgs_received"]];
    match did {
        Some(d) => assert_eq!(
            got.map(Value::as_u64),
            [d.bytes_sent, d.bytes_received, d.msgs_sent, d.msgs_received].map(Some),
            "close line against what the process did ({d:?}): {close}"
        ),
        None => assert!(got.iter().all(|v| v.is_null()), "nothing counted must show as null: {close}"),
    }
}

#[test]
fn traffic_of_a_stream_connection_is_what_each_end_sent_and_received() {
    let path = format!("/tmp/unixpeer-traffic-{}.sock", std::process::id());
    let listener = listen_on(&path, libc::SOCK_STREAM, 8);
    let mut f = Follower::start(&[]);
    let counts = counting(&f);
    let p = pipe();
    let server = fork_child("tr-server", || {
        let Ok(c) = sys::accept(listener) else { return 1 };
        let mut did = Did::default();
        // Three requests, one reply in two writes, then the client's EOF.
        let ok = did.receive(c, 300) && did.send(c, &[b's'; 3000]) && did.send(c, &[b't'; 2000]);
        let _ = sys::read_fd(c, &mut [0u8; 1]);
        report(&p.write, &did.line(&format!("server {}", inode_of(c))));
        sys::close(c);
        if ok { 0 } else { 2 }
    });
    // SAFETY: the server has the listener; the parent does not need it.
    unsafe { libc::close(listener) };
    let client = fork_child("tr-client", || {
        let Ok(c) = connect_to(&path, libc::SOCK_STREAM, false) else { return 1 };
        let mut did = Did::default();
        let mut ok = true;
        for _ in 0..3 {
            ok &= did.send(c, &[b'c'; 100]);
            std::thread::sleep(Duration::from_millis(20));
        }
        ok &= did.receive(c, 5000);
        report(&p.write, &did.line(&format!("client {}", inode_of(c))));
        sys::close(c);
        if ok { 0 } else { 2 }
    });
    assert_eq!(wait_child(client), 0, "client failed");
    assert_eq!(wait_child(server), 0, "server failed");
    let _ = std::fs::remove_file(&path);
    let lines = read_lines(&p, 2);
    for tag in ["client", "server"] {
        let line = lines.iter().find(|l| l.starts_with(tag)).expect("report");
        let (inode, did) = Did::parse(line);
        let close = close_of(&mut f, &format!("the {tag}'s close"), inode);
        assert_eq!(close["path"].as_str(), Some(path.as_str()), "{close}");
        assert_counts(&close, counts.then_some(&did));
    }
}

#[test]
fn traffic_of_sockets_released_at_exit_counts_their_datagrams() {
    let mut f = Follower::start(&[]);
    let counts = counting(&f);
    let p = pipe();
    let child = fork_child("tr-exiter", || {
        let [a, b] = socketpair(libc::SOCK_SEQPACKET);
        let (mut da, mut db) = (Did::default(), Did::default());
        let mut ok = true;
        for n in [10usize, 20, 30] {
            ok &= da.send(a, &vec![b'd'; n]);
        }
        // A peek leaves the datagram queued: not a message received.
        let mut buf = [0u8; 64];
        // SAFETY: recv into a buffer of ours, of its length.
        let peeked = unsafe { libc::recv(b, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        ok &= peeked == 10;
        for n in [10u64, 20, 30] {
            ok &= db.receive(b, n);
        }
        ok &= db.send(b, b"ack") && da.receive(a, 3);
        report(&p.write, &da.line(&format!("a {}", inode_of(a))));
        report(&p.write, &db.line(&format!("b {}", inode_of(b))));
        // Exits without close(): the kernel releases both ends.
        if ok { 0 } else { 2 }
    });
    assert_eq!(wait_child(child), 0, "child failed");
    let lines = read_lines(&p, 2);
    for line in &lines {
        let (inode, did) = Did::parse(line);
        let close = close_of(&mut f, &format!("the release of end {line}"), inode);
        assert_eq!(close["type"], "seqpacket", "{close}");
        assert_counts(&close, counts.then_some(&did));
    }
}

#[test]
fn traffic_top_shows_the_busy_connection_with_both_ends_and_every_byte_once() {
    const SENT: usize = 100_000;
    const REPLY: usize = 5_000;
    let path = format!("/tmp/unixpeer-top-{}.sock", std::process::id());
    let listener = listen_on(&path, libc::SOCK_STREAM, 8);
    let mut c = follow_command();
    // Only the connections to this path: the decoy's bytes, busier than
    // any, must not show.
    c.args(["--top", "--json", "--interval", "500ms", "--iterations", "6", "--path", &path])
        .stdout(std::process::Stdio::piped());
    let mut top = c.spawn().expect("start unixtrace --top");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(top.stdout.take().expect("stdout")));
    let Some(Ok(first)) = lines.next() else {
        // No capture record: it must have refused, saying why.
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut top.stderr.take().expect("stderr"), &mut err);
        let status = top.wait().expect("wait for unixtrace");
        assert!(!status.success() && err.contains("--top needs bytes and messages counted"), "{status:?}: {err}");
        let _ = std::fs::remove_file(&path);
        return;
    };
    let capture = json_line(&first);
    let go = Gate::new();
    let server = fork_child("top-server", || {
        let Ok(c) = sys::accept(listener) else { return 1 };
        let mut did = Did::default();
        let ok = did.receive(c, SENT as u64) && did.send(c, &[b'r'; REPLY]);
        // Open until the tracer is done: the counts come from the map.
        let _ = sys::read_fd(c, &mut [0u8; 1]);
        if ok { 0 } else { 2 }
    });
    // SAFETY: the server has the listener now.
    unsafe { libc::close(listener) };
    let client = fork_child("top-client", || {
        let Ok(c) = connect_to(&path, libc::SOCK_STREAM, false) else { return 1 };
        go.wait();
        let mut did = Did::default();
        let ok = (0..10).all(|_| did.send(c, &[b'q'; SENT / 10])) && did.receive(c, REPLY as u64);
        // Idle, then gone: the close carries the last counts.
        std::thread::sleep(Duration::from_millis(700));
        if ok { 0 } else { 2 }
    });
    let decoy_go = Gate::new();
    let decoy = fork_child("top-decoy", || {
        let Ok((a, b)) = sys::socketpair(libc::SOCK_STREAM) else { return 1 };
        decoy_go.wait();
        let mut did = Did::default();
        let ok = (0..20).all(|_| did.send(a, &[b'd'; SENT / 10]) && did.receive(b, (SENT / 10) as u64));
        std::thread::sleep(Duration::from_millis(700));
        if ok { 0 } else { 2 }
    });
    let counts = capture["traffic"].is_string();
    go.open();
    decoy_go.open();
    assert_eq!(wait_child(decoy), 0, "decoy failed");
    assert_eq!(wait_child(client), 0, "client failed");
    assert_eq!(wait_child(server), 0, "server failed");
    let _ = std::fs::remove_file(&path);
    let rows: Vec<Value> = lines.map_while(Result::ok).map(|l| json_line(&l)).collect();
    let status = top.wait().expect("wait for unixtrace");
    if !counts {
        assert!(!status.success(), "--top without counting must fail, it printed: {rows:?}");
        return;
    }
    assert!(status.success(), "--top --iterations 6 must end by itself: {status:?}");
    for r in rows.iter().filter(|r| r["kind"] == "top" || r["kind"] == "top_path") {
        assert_eq!(r["path"].as_str(), Some(path.as_str()), "--path {path} showed another connection: {r}");
    }
    let ours: Vec<&Value> =
        rows.iter().filter(|r| r["kind"] == "top" && r["path"].as_str() == Some(path.as_str())).collect();
    assert!(!ours.is_empty(), "no row for {path}: {rows:?}");
    let mut comms: Vec<&str> =
        ours.iter().flat_map(|r| [r["a"]["comm"].as_str(), r["b"]["comm"].as_str()]).flatten().collect();
    comms.sort_unstable();
    comms.dedup();
    assert_eq!(comms, ["top-client", "top-server"], "both ends named: {ours:?}");
    let pids: Vec<i64> = ours.iter().flat_map(|r| [r["a"]["pid"].as_i64(), r["b"]["pid"].as_i64()]).flatten().collect();
    assert!(pids.iter().all(|&p| p == i64::from(client) || p == i64::from(server)), "{ours:?}");
    // Each refresh shows what moved since the previous one: summed, every
    // byte once, whichever end A is.
    let total: u64 =
        ours.iter().map(|r| r["bytes_a_to_b"].as_u64().unwrap_or(0) + r["bytes_b_to_a"].as_u64().unwrap_or(0)).sum();
    assert_eq!(total, (SENT + REPLY) as u64, "bytes over all refreshes: {ours:?}");
    assert!(rows.iter().any(|r| r["kind"] == "top_path" && r["path"].as_str() == Some(path.as_str())), "{rows:?}");
}

#[test]
fn traffic_of_datagrams_sent_by_address_names_the_receiver_once() {
    let path = format!("/tmp/unixpeer-dgram-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&path);
    let ready = pipe();
    let (start, done) = (Gate::new(), Gate::new());
    // The receiver is there before the capture, as journald's socket is.
    // It receives only once the capture runs: an fexit or a return probe
    // cannot see the end of a call begun before it was attached.
    let receiver = fork_child("dg-receiver", || {
        let Ok(r) = sys::bound(libc::SOCK_DGRAM, &path) else { return 1 };
        report(&ready.write, &format!("r {}", inode_of(r)));
        start.wait();
        let mut did = Did::default();
        let ok = (0..3).all(|_| did.receive(r, 1));
        report(&ready.write, &did.line(&format!("got {}", inode_of(r))));
        done.wait();
        if ok { 0 } else { 2 }
    });
    let receiver_inode = tagged(&read_lines(&ready, 1), "r", 1);
    let mut f = Follower::start(&[]);
    let counts = counting(&f);
    start.open();
    let sender = fork_child("dg-sender", || {
        let Ok(s) = sys::socket(libc::SOCK_DGRAM) else { return 1 };
        let (addr, len) = sockaddr(&path);
        let mut did = Did::default();
        for n in [10usize, 20, 30] {
            let buf = vec![b'g'; n];
            // SAFETY: sendto with a buffer and an address of ours, of their lengths.
            let rc = unsafe { libc::sendto(s, buf.as_ptr().cast(), n, 0, (&raw const addr).cast(), len) };
            if rc != n as isize {
                return 2;
            }
            did.bytes_sent += n as u64;
            did.msgs_sent += 1;
        }
        report(&ready.write, &did.line(&format!("sent {}", inode_of(s))));
        0
    });
    assert_eq!(wait_child(sender), 0, "sender failed");
    let lines = read_lines(&ready, 2);
    done.open();
    assert_eq!(wait_child(receiver), 0, "receiver failed");
    let _ = std::fs::remove_file(&path);
    let (sender_inode, sent) = Did::parse(lines.iter().find(|l| l.starts_with("sent")).expect("sender's report"));
    let (_, got) = Did::parse(lines.iter().find(|l| l.starts_with("got")).expect("receiver's report"));
    if !counts {
        // Nothing names the unconnected sender here, nor counts: the
        // receiver's release is seen, and no dgram_send.
        let close = close_of(&mut f, "the receiver's close", receiver_inode as u64);
        assert_counts(&close, None);
        assert!(!f.seen.iter().any(|v| v["event"] == "dgram_send"), "no hook here can see the receiver");
        return;
    }
    let sender_close = close_of(&mut f, "the sender's close", sender_inode);
    assert_counts(&sender_close, counts.then_some(&sent));
    let close = close_of(&mut f, "the receiver's close", receiver_inode as u64);
    assert_counts(&close, counts.then_some(&got));
    let sends: Vec<&Value> = f.seen.iter().filter(|v| v["event"] == "dgram_send" && v["pid"] == sender).collect();
    assert_eq!(sends.len(), 1, "one event for the pair, not one per datagram: {sends:?}");
    let s = sends[0];
    assert_eq!(
        (s["comm"].as_str(), s["inode"].as_u64(), s["type"].as_str()),
        (Some("dg-sender"), Some(sender_inode), Some("dgram")),
        "{s}"
    );
    assert_eq!(s["peer_inode"].as_i64(), Some(receiver_inode), "{s}");
    assert_eq!(
        (s["peer_pid"].as_i64(), s["peer_comm"].as_str()),
        (Some(i64::from(receiver)), Some("dg-receiver")),
        "{s}"
    );
    assert_eq!(s["path"].as_str(), Some(path.as_str()), "{s}");
    // Then as counts: the sender's close says what went to each receiver.
    let to = &sender_close["sent_to"];
    assert_eq!(to.as_array().map(Vec::len), Some(1), "one receiver: {sender_close}");
    assert_eq!(
        (to[0]["peer_inode"].as_i64(), to[0]["bytes"].as_u64(), to[0]["msgs"].as_u64()),
        (Some(receiver_inode), Some(60), Some(3)),
        "{sender_close}"
    );
    assert_eq!((to[0]["peer_pid"].as_i64(), to[0]["path"].as_str()), (Some(i64::from(receiver)), Some(path.as_str())));
}

/// A recording samples what open connections carried, once a second:
/// `--at` an instant before the close shows each end's counts so far, in
/// JSON and in the table, equal to what the processes did by then.
#[test]
fn at_a_time_before_the_close_a_recording_shows_what_each_end_carried_so_far() {
    let path = format!("/tmp/unixpeer-traffic-at-{}.sock", std::process::id());
    let recording = format!("/tmp/unixpeer-traffic-at-{}.jsonl", std::process::id());
    let _ = std::fs::remove_file(&recording);
    let listener = listen_on(&path, libc::SOCK_STREAM, 8);
    let mut f = Follower::start(&["-w", &recording]);
    let counts = counting(&f);
    let p = pipe();
    let server = fork_child("tr-at-server", || {
        let Ok(c) = sys::accept(listener) else { return 1 };
        let mut did = Did::default();
        let ok = did.receive(c, 100) && did.send(c, &[b'r'; 30]);
        report(&p.write, &did.line(&format!("server {}", inode_of(c))));
        // Open well past two samples, then the client's EOF.
        let _ = sys::read_fd(c, &mut [0u8; 1]);
        sys::close(c);
        if ok { 0 } else { 2 }
    });
    // SAFETY: the server has the listener; the parent does not need it.
    unsafe { libc::close(listener) };
    let client = fork_child("tr-at-client", || {
        let Ok(c) = connect_to(&path, libc::SOCK_STREAM, false) else { return 1 };
        let mut did = Did::default();
        let ok = did.send(c, &[b'q'; 100]) && did.receive(c, 30);
        report(&p.write, &did.line(&format!("client {}", inode_of(c))));
        std::thread::sleep(Duration::from_millis(2500));
        sys::close(c);
        if ok { 0 } else { 2 }
    });
    assert_eq!(wait_child(client), 0, "client failed");
    assert_eq!(wait_child(server), 0, "server failed");
    let _ = std::fs::remove_file(&path);
    let lines = read_lines(&p, 2);
    let ends: Vec<(u64, Did)> = ["client", "server"]
        .iter()
        .map(|tag| Did::parse(lines.iter().find(|l| l.starts_with(tag)).expect("report")))
        .collect();
    let close = close_of(&mut f, "the client's close", ends[0].0);
    close_of(&mut f, "the server's close", ends[1].0);
    let (code, stderr) = f.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let start = f.capture["start_ts"].as_u64().expect("start_ts");
    // 300 ms before the close: the exchange was over 2.2 s before, past a
    // sample, and both ends are still open.
    let at = format!("+{}ns", close["ts"].as_u64().expect("ts") - start - 300_000_000);
    let out = unixtrace(&["-r", &recording, "--json", "--at", &at]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(json_line).collect();
    let text = unixtrace(&["-r", &recording, "--at", &at]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let _ = std::fs::remove_file(&recording);
    for (inode, did) in &ends {
        let row =
            rows.iter().find(|r| r["inode"] == *inode).unwrap_or_else(|| panic!("no row {inode} at {at}: {rows:?}"));
        assert_eq!(row["state"], "connected", "{row}");
        assert_counts(row, counts.then_some(did));
    }
    // The table's row of the client's end says what it carried.
    let client_row = text.lines().find(|l| l.contains(&format!(" {} ", ends[0].0)));
    if counts {
        let row = client_row.unwrap_or_else(|| panic!("no row for {} at {at}:\n{text}", ends[0].0));
        let shown = ["1 msg / 100 B sent, 1 msg / 30 B received", "1 msg / 30 B sent, 1 msg / 100 B received"];
        assert!(shown.iter().any(|s| row.contains(s)), "{row}");
    }
}
