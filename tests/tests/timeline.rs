//! Timelines end to end: the real `unixtrace --follow -w` records real
//! processes, `-r` replays what live mode printed, a `kill -9` leaves a
//! readable file, bad files give one clear error, the HTML export
//! renders in headless Chromium, and names a hostile process chose reach
//! people escaped and JSON exact. Run as root (`cargo xtask test`).

use std::{
    fs,
    os::fd::AsRawFd,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use unixpeer_tests::tracer::*;

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("unixpeer-timeline-{}", std::process::id()))
}

/// A path in the scratch directory, with nothing there yet.
fn scratch(name: &str) -> PathBuf {
    let dir = scratch_dir();
    fs::create_dir_all(&dir).expect("scratch dir");
    let p = dir.join(name);
    let _ = fs::remove_file(&p);
    p
}

fn stdout_json(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout).lines().map(json_line).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running `unixtrace --follow -w FILE`, ready once its seeds are on disk.
struct Recorder {
    child: Child,
    file: PathBuf,
}

impl Recorder {
    fn start(file: &Path, extra: &[&str], stdout: Stdio) -> Self {
        let child = follow_command().arg("-w").arg(file).args(extra).stdout(stdout).spawn().expect("start unixtrace");
        let mut r = Self { child, file: file.to_owned() };
        // The capture is attached before the header is written: from then
        // on nothing is missed.
        r.wait_for_events("the header", "", 0);
        r
    }

    /// Waits until a replay of what was flushed so far shows `n` events
    /// named `event` (bookkeeping ones included).
    fn wait_for_events(&mut self, what: &str, event: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        let needle = format!("\"event\":\"{event}\"");
        loop {
            let o = unixtrace(&["-r", self.file.to_str().expect("utf-8 path"), "--json", "-vv"]);
            if o.status.success() && String::from_utf8_lossy(&o.stdout).matches(&needle).count() >= n {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("unixtrace exited ({status}) before {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what} in {}", self.file.display());
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) -> (Option<i32>, String, String) {
        interrupt(&self.child);
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"));
        let o = out.wait_with_output().expect("wait for unixtrace");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn kill9(mut self) {
        kill_and_reap(&mut self.child);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// A server (`comm`) accepting `n` connections and a client (`comm` too,
/// so one in-kernel --comm filter keeps both) making them, plus one
/// failed connect. Returns (server pid, client pid).
fn traffic(comm: &str, sock: &str, n: usize) -> (i32, i32) {
    // The server listens itself, under its name, so the recording sees the
    // listen and can name the server at connect time. Every connection is
    // open at its accept: the server answers before it closes.
    let server = spawn_server(comm, sock, 128, n);
    let missing = format!("{sock}.missing");
    let client = fork_child(comm, || {
        if connect_to(&missing, libc::SOCK_STREAM, false).is_ok() {
            return 3;
        }
        for _ in 0..n {
            if talk(sock, true).is_err() {
                return 2;
            }
        }
        0
    });
    assert_eq!(wait_child(client), 0, "client failed");
    assert_eq!(wait_child(server), 0, "server failed");
    (server, client)
}

fn events_of(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|v| v["kind"] == "event").collect()
}

#[test]
fn replay_prints_what_live_mode_printed_and_answers_at_and_summary() {
    const N: usize = 20;
    let file = scratch("live.jsonl");
    let sock = scratch("live.sock");
    let sock = sock.to_str().expect("utf-8");
    let comm = "tl-live";
    // Live output goes to a file: a pipe nobody reads would stall the tracer.
    let live_file = scratch("live.out");
    let mut rec = Recorder::start(
        &file,
        &["--json", "--comm", comm],
        Stdio::from(fs::File::create(&live_file).expect("live.out")),
    );
    let (server, client) = traffic(comm, sock, N);
    // Both ends of every connection, and the listener released at the server's exit.
    rec.wait_for_events("every close", "close", 2 * N + 1);
    let (code, _, live_err) = rec.stop();
    let live_out = fs::read_to_string(&live_file).expect("live output");
    assert_eq!(code, Some(0), "{live_err}");
    assert!(live_err.contains("recorded"), "{live_err}");
    let mode = fs::metadata(&file).expect("recording").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "recordings name processes and paths: owner only");

    let live: Vec<Value> = live_out.lines().map(|l| serde_json::from_str(l).expect("live JSON")).collect::<Vec<_>>();
    let f = file.to_str().expect("utf-8");
    let replayed = unixtrace(&["-r", f, "--json", "--comm", comm]);
    assert_eq!(replayed.status.code(), Some(0), "{}", stderr(&replayed));
    let replayed = stdout_json(&replayed);
    let live_events = events_of(&live);
    assert!(live_events.len() >= 4 * N, "live saw {} events", live_events.len());
    assert_eq!(events_of(&replayed), live_events, "replay must resolve every event as live mode did");

    // Filters work on replay as live: only the client's lines.
    let by_pid = stdout_json(&unixtrace(&["-r", f, "--json", "--pid", &client.to_string(), "--type", "stream"]));
    let connects: Vec<&Value> = events_of(&by_pid).into_iter().filter(|v| v["event"] == "connect").collect();
    assert_eq!(connects.len(), N);
    assert!(connects.iter().all(|c| c["peer_comm"] == comm && c["pid"] == client), "{connects:?}");

    // --at the instant of the last accept: that connection is open, with both ends named.
    let accepts: Vec<&Value> =
        events_of(&replayed).into_iter().filter(|v| v["event"] == "accept" && v["pid"] == server).collect();
    let last = accepts.last().expect("an accept");
    let start = replayed[0]["start_ts"].as_u64().expect("start_ts");
    let at = format!("+{}ns", last["ts"].as_u64().expect("ts") - start);
    let table = stdout_json(&unixtrace(&["-r", f, "--json", "--at", &at]));
    let row = table.iter().find(|s| s["inode"] == last["inode"]).unwrap_or_else(|| panic!("no row at {at}: {table:?}"));
    assert_eq!(row["state"], "connected", "{row}");
    assert_eq!(row["holders"][0]["pid"], server, "{row}");
    assert_eq!(row["peer_holders"][0]["pid"], client, "{row}");
    // The client's fd is what its connect said: known at the syscall
    // (tracepoint), unknown inside unix_stream_connect (fentry, kprobe),
    // and then shown as unknown, never as a made-up number.
    let connect = events_of(&replayed)
        .into_iter()
        .find(|v| v["event"] == "connect" && v["inode"] == last["peer_inode"])
        .unwrap_or_else(|| panic!("no connect for {last}"));
    assert_eq!(row["peer_holders"][0]["fd"], connect["fd"], "{row} vs {connect}");
    let text = unixtrace(&["-r", f, "--at", &at]);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = text.lines().find(|l| l.contains(&last["inode"].to_string())).unwrap_or_else(|| panic!("{text}"));
    let shown = match connect["fd"].as_u64() {
        Some(fd) => format!("[{client}]:{fd}"),
        None => format!("[{client}]:?"),
    };
    assert!(line.contains(&shown) && !line.contains("4294967295"), "{shown} in {line}");
    let later = stdout_json(&unixtrace(&["-r", f, "--json", "--at", "+1h"]));
    assert!(later.iter().all(|s| s["inode"] != last["inode"]), "closed by the end");

    // --until before the first event shows none.
    let none = stdout_json(&unixtrace(&["-r", f, "--json", "--until", "+0s"]));
    assert!(events_of(&none).is_empty());

    let summary = stdout_json(&unixtrace(&["-r", f, "--summary", "--json"]));
    let pair = summary
        .iter()
        .find(|v| v["kind"] == "pair" && v["path"] == sock)
        .unwrap_or_else(|| panic!("no pair for {sock}: {summary:?}"));
    assert_eq!((pair["client"].as_str(), pair["server"].as_str()), (Some(comm), Some(comm)));
    assert_eq!(
        (pair["connections"].as_u64(), pair["failed"].as_u64(), pair["open"].as_u64()),
        (Some(N as u64), Some(0), Some(0))
    );
    assert!(pair["lifetime_min_ns"].as_u64() <= pair["lifetime_max_ns"].as_u64());
    let failed =
        summary.iter().find(|v| v["kind"] == "pair" && v["path"] == format!("{sock}.missing")).expect("failed row");
    assert_eq!(failed["failed"], 1);
    // What moved each way: the sum of what the senders' closes said live
    // (the client's sockets are the connects', the server's the accepts'),
    // or nothing at all where the kernel did not count.
    let sent_from = |ends: &[&Value]| -> u64 {
        let inodes: Vec<&Value> = ends.iter().map(|e| &e["inode"]).collect();
        let closes = events_of(&live).into_iter().filter(|v| v["event"] == "close" && inodes.contains(&&v["inode"]));
        closes.map(|v| v["bytes_sent"].as_u64().unwrap_or_else(|| panic!("no count in {v}"))).sum()
    };
    let connects: Vec<&Value> =
        events_of(&live).into_iter().filter(|v| v["event"] == "connect" && v["path"] == sock).collect();
    let capture = live.iter().find(|v| v["kind"] == "capture").expect("a capture record");
    if capture["traffic"].is_null() {
        assert!(pair["bytes_client_to_server"].is_null() && pair["counted"] == 0, "{pair}");
    } else {
        assert_eq!(pair["counted"].as_u64(), Some(N as u64), "{pair}");
        assert_eq!(pair["bytes_client_to_server"].as_u64(), Some(sent_from(&connects)), "{pair}");
        assert_eq!(pair["bytes_server_to_client"].as_u64(), Some(sent_from(&accepts)), "{pair}");
    }

    let again = unixtrace(&["--follow", "-w", f]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists: pass --force"), "{}", stderr(&again));
}

#[test]
fn kill_9_leaves_a_recording_that_replays_up_to_the_last_flush() {
    for name in ["killed.jsonl", "killed.jsonl.zst"] {
        let file = scratch(name);
        let sock = scratch(&format!("{name}.sock"));
        let comm = "tl-kill";
        let mut rec = Recorder::start(&file, &["-q", "--comm", comm], Stdio::null());
        let stop = pipe();
        let sock_s = sock.to_str().expect("utf-8").to_owned();
        let listener = listen_on(&sock_s, libc::SOCK_STREAM, 128);
        // Keeps connecting until the recorder is dead, so the kill lands mid-stream.
        let busy = fork_child(comm, || {
            // SAFETY: raw syscalls in the child.
            unsafe {
                libc::fcntl(stop.read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
                loop {
                    let mut b = [0u8; 1];
                    if libc::read(stop.read.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 1 {
                        return 0;
                    }
                    let Ok(fd) = connect_to(&sock_s, libc::SOCK_STREAM, false) else { return 2 };
                    let c = libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
                    libc::close(fd);
                    libc::close(c);
                    // A steady stream, not a flood: the waits above replay the
                    // growing file, which a flood makes slow under QEMU.
                    libc::usleep(2000);
                }
            }
        });
        rec.wait_for_events("flushed connections", "accept", 50);
        rec.kill9();
        report(&stop.write, "stop");
        assert_eq!(wait_child(busy), 0);
        // SAFETY: closing our listener.
        unsafe { libc::close(listener) };

        let f = file.to_str().expect("utf-8");
        let o = unixtrace(&["-r", f, "--json"]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let accepts = events_of(&stdout_json(&o)).into_iter().filter(|v| v["event"] == "accept").count();
        assert!(accepts >= 50, "{name}: {accepts} accepts read back, at least 50 were flushed before the kill");
        assert!(!stderr(&o).contains("error"), "{name}: {}", stderr(&o));

        // Cut after the seeds, inside a record (not just after a newline,
        // which would leave a whole file): still readable, with a warning.
        let bytes = fs::read(&file).expect("read");
        let mut at = bytes.len() - bytes.len() / 7;
        while bytes[at - 1] == b'\n' {
            at -= 1;
        }
        let cut = scratch(&format!("cut-{name}"));
        fs::write(&cut, &bytes[..at]).expect("write cut");
        let o = unixtrace(&["-r", cut.to_str().expect("utf-8"), "--summary"]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("warning: ") && stderr(&o).contains("cut off"), "{name}: {}", stderr(&o));
    }
}

/// CLOCK_MONOTONIC in ns, as the recording's `ts`. Safe in a child.
fn mono_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[test]
fn rotated_parts_keep_the_newest_and_replay_as_one_timeline() {
    const N: usize = 120;
    let dir = scratch_dir().join("rotate");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("rotate dir");
    let base = dir.join("cap.jsonl.zst");
    let b = base.to_str().expect("utf-8");
    let sock = scratch("rot.sock");
    let long_sock = scratch("rot-long.sock");
    let (sock, long_sock) = (sock.to_str().expect("utf-8"), long_sock.to_str().expect("utf-8").to_owned());
    let comm = "tl-rot";
    let rec = Recorder::start(&base, &["-q", "--comm", comm, "--rotate", "1s", "--keep", "2"], Stdio::null());

    // One connection open from the first part to the last (its server
    // holds it until the client closes), and N short ones meanwhile, one
    // every 40 ms: five seconds, so four rotations or more.
    let server = spawn_server(comm, sock, 128, N);
    let _ = fs::remove_file(&long_sock);
    let ready = pipe();
    let long_server = fork_child(comm, || {
        let Ok(l) = unixpeer_tests::sys::fresh_listener(libc::SOCK_STREAM, &long_sock, 1) else { return 4 };
        report(&ready.write, "ready");
        let Ok(c) = unixpeer_tests::sys::accept(l) else { return 1 };
        // Until the client closes.
        let _ = unixpeer_tests::sys::read_fd(c, &mut [0u8; 1]);
        unixpeer_tests::sys::close(c);
        0
    });
    assert_eq!(read_lines(&ready, 1), ["ready"]);
    let reports = pipe();
    let client = fork_child(comm, || {
        let Ok(long) = connect_to(&long_sock, libc::SOCK_STREAM, false) else { return 2 };
        report(&reports.write, &format!("long {}", inode_of(long)));
        for _ in 0..N {
            let before = mono_ns();
            let Ok(fd) = connect_to(sock, libc::SOCK_STREAM, false) else { return 3 };
            report(&reports.write, &format!("short {before} {}", inode_of(fd)));
            let _ = unixpeer_tests::sys::write_fd(fd, b"x");
            let _ = unixpeer_tests::sys::read_fd(fd, &mut [0u8; 1]);
            unixpeer_tests::sys::close(fd);
            // SAFETY: a plain sleep.
            unsafe { libc::usleep(40_000) };
        }
        unixpeer_tests::sys::close(long);
        0
    });
    assert_eq!(wait_child(client), 0, "client failed");
    assert_eq!(wait_child(server), 0, "server failed");
    assert_eq!(wait_child(long_server), 0, "long server failed");
    let lines = read_reports(reports);
    let (code, _, err) = rec.stop();
    assert_eq!(code, Some(0), "{err}");

    // Exactly the two newest parts are left, the last one finished.
    let parts: Vec<u64> =
        err.lines().find_map(|l| l.split(" in ").nth(1)?.split(" parts").next()?.parse().ok()).into_iter().collect();
    assert!(parts.first().is_some_and(|&n| n >= 4), "at least three rotations: {err}");
    let mut files: Vec<String> = fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "--keep 2: {files:?}");
    let n = parts[0];
    for (f, want) in files.iter().zip([n - 2, n - 1]) {
        assert!(f.starts_with(&format!("cap-{want:06}-")) && f.ends_with("Z.jsonl.zst"), "{f} is not part {want}");
        let mode = fs::metadata(dir.join(f)).expect("part").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // Read as one: by the -w name, or by the files in order; out of order
    // is refused.
    let o = unixtrace(&["-r", b, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let replayed = stdout_json(&o);
    let paths: Vec<String> = files.iter().map(|f| dir.join(f).to_str().expect("utf-8").to_owned()).collect();
    let listed = unixtrace(&["-r", &paths[0], &paths[1], "--json"]);
    assert_eq!(stdout_json(&listed), replayed, "-r FILE and -r PART PART read the same");
    let back = unixtrace(&["-r", &paths[1], "-r", &paths[0]]);
    assert_eq!(back.status.code(), Some(1));
    assert!(stderr(&back).contains("give the parts in recording order"), "{}", stderr(&back));

    // Every connection begun after the first kept part started is there
    // once, both ends named at connect, accept and both closes.
    let start = replayed[0]["start_ts"].as_u64().expect("start_ts");
    let events = events_of(&replayed);
    let of = |kind: &str, key: &str, inode: u64| -> Vec<&Value> {
        events.iter().copied().filter(|v| v["event"] == kind && v[key] == inode).collect()
    };
    let mut checked = 0;
    for l in lines.iter().filter(|l| l.starts_with("short ")) {
        let [before, inode] = numbers::<u64>(&l["short ".len()..])[..] else { panic!("{l}") };
        if before <= start {
            continue;
        }
        checked += 1;
        let connect = of("connect", "inode", inode);
        assert_eq!(connect.len(), 1, "one connect for {inode}: {connect:?}");
        assert_eq!((&connect[0]["pid"], &connect[0]["peer_pid"]), (&client.into(), &server.into()), "{}", connect[0]);
        let accept = of("accept", "peer_inode", inode);
        assert_eq!(accept.len(), 1, "one accept for {inode}: {accept:?}");
        assert_eq!((&accept[0]["pid"], &accept[0]["peer_pid"]), (&server.into(), &client.into()), "{}", accept[0]);
        let server_end = accept[0]["inode"].as_u64().expect("accepted inode");
        for (end, pid, peer) in [(inode, client, server), (server_end, server, client)] {
            let close = of("close", "inode", end);
            assert_eq!(close.len(), 1, "one close of {end}: {close:?}");
            assert_eq!((&close[0]["pid"], &close[0]["peer_pid"]), (&pid.into(), &peer.into()), "{}", close[0]);
        }
    }
    assert!(checked >= 10, "only {checked} connections in the kept parts' time");

    // The connection open across every rotation: its connect was in a
    // deleted part; its closes name both ends from the seeds, and --at
    // shows it connected.
    let long = tagged(&lines, "long", 1) as u64;
    assert!(of("connect", "inode", long).is_empty(), "its connect was in a deleted part");
    let close = of("close", "inode", long);
    assert_eq!(close.len(), 1, "{close:?}");
    assert_eq!((&close[0]["pid"], &close[0]["peer_pid"]), (&client.into(), &long_server.into()), "{}", close[0]);
    let peer = close[0]["peer_inode"].as_u64().expect("peer inode");
    let close = of("close", "inode", peer);
    assert_eq!(close.len(), 1, "{close:?}");
    assert_eq!((&close[0]["pid"], &close[0]["peer_pid"]), (&long_server.into(), &client.into()), "{}", close[0]);
    let at = format!("+{}ns", close[0]["ts"].as_u64().expect("ts") - start - 50_000_000);
    // The last part alone names both ends too: its seeds are the live
    // model at its rotation.
    let alone = stdout_json(&unixtrace(&["-r", &paths[1], "--json"]));
    let named: Vec<&Value> =
        events_of(&alone).into_iter().filter(|v| v["event"] == "close" && v["inode"] == long).collect();
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0]["peer_pid"], long_server, "{}", named[0]);
    let table = stdout_json(&unixtrace(&["-r", b, "--json", "--at", &at]));
    let row = table.iter().find(|s| s["inode"] == long).unwrap_or_else(|| panic!("no long row at {at}: {table:?}"));
    assert_eq!(row["state"], "connected", "{row}");
    assert_eq!((&row["holders"][0]["pid"], &row["peer_holders"][0]["pid"]), (&client.into(), &long_server.into()));

    // --summary and the exports cover the whole set.
    let summary = stdout_json(&unixtrace(&["-r", b, "--summary", "--json"]));
    let pair = summary.iter().find(|v| v["kind"] == "pair" && v["path"] == sock).expect("a pair row");
    assert!(pair["connections"].as_u64() >= Some(checked as u64), "{pair}");
    let out = scratch("rot.dot");
    let o = unixtrace(&["export", "-r", b, "--format", "dot", "-o", out.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(fs::read_to_string(&out).expect("dot").contains(sock));
}

#[test]
fn bad_files_give_one_clear_error() {
    let header = r#"{"format":"unixtrace-timeline","version":1,"writer":"t","hostname":"h","kernel":"k","backend":"tracepoint","backend_why":"w","infer_release_on_exit":true,"start_mono_ns":0,"start_wall_ns":0,"start_time":"1970-01-01T00:00:00Z","command_line":[]}"#;
    let event = r#"{"k":"e","ev":"connect","ts":5,"pid":1,"tid":1,"uid":0,"comm":"a","netns":1,"type":"stream","fd":3,"inode":9}"#;
    let good = format!("{header}\n{{\"k\":\"seeds_done\"}}\n{event}\n{event}\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "the file is empty"),
        ("cut-header", header.as_bytes()[..60].to_vec(), "line 1: the header is cut off"),
        ("corrupt", good.replacen("\"ev\":\"connect\"", "\"ev\":connect", 1).into_bytes(), "line 3: bad record"),
        ("version", good.replace("\"version\":1", "\"version\":9").into_bytes(), "line 1: timeline format version 9"),
        ("not-timeline", b"\x7fELF\x02\x01\x01\0\0\0".to_vec(), "byte offset 0: not a unixtrace timeline"),
        ("other-json", b"{\"hello\":1}\n".to_vec(), "line 1: not a unixtrace timeline"),
        ("zstd-garbage", [&[0x28u8, 0xb5, 0x2f, 0xfd][..], &[0xff; 64][..]].concat(), "line 1: the header is cut off"),
    ];
    let out = scratch("bad.dot");
    for (name, bytes, want) in cases {
        let p = scratch(name);
        fs::write(&p, &bytes).expect("write");
        for args in [
            vec!["-r", p.to_str().expect("utf-8")],
            vec!["export", "-r", p.to_str().expect("utf-8"), "--format", "dot", "-o", out.to_str().expect("utf-8")],
        ] {
            let o = unixtrace(&args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{name}: {err}");
            assert!(
                err.contains(&format!("{}: ", p.display())) && err.contains(want),
                "{name}: want {want:?}, got {err}"
            );
            assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
            assert!(!err.contains("panicked"), "{name}: {err}");
        }
    }
    let p = scratch("good");
    fs::write(&p, &good).expect("write");
    let o = unixtrace(&["-r", p.to_str().expect("utf-8"), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "a complete file reads without a word: {}", stderr(&o));
}

/// Chromium from Debian; installed here when missing, since the check is
/// worthless without a real browser.
fn chromium() -> PathBuf {
    let find = || {
        ["chromium", "chromium-browser"].iter().find_map(|b| {
            std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(b)).find(|p| p.is_file()))
        })
    };
    if let Some(p) = find() {
        return p;
    }
    require_root();
    eprintln!("chromium is missing: installing Debian's chromium package");
    let ok = |c: &mut Command| c.env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success());
    let installed = ok(Command::new("apt-get").args(["install", "-y", "-q", "chromium"]))
        || (ok(Command::new("apt-get").args(["update", "-q"]))
            && ok(Command::new("apt-get").args(["install", "-y", "-q", "chromium"])));
    assert!(installed, "could not install chromium (apt-get install -y chromium): the HTML export test needs it");
    find().expect("chromium installed but not on PATH")
}

#[test]
fn html_export_draws_every_connection_in_headless_chromium() {
    const N: usize = 12;
    let file = scratch("html.jsonl.zst");
    let sock = scratch("html.sock");
    let comm = "tl-html";
    let mut rec = Recorder::start(&file, &["-q", "--comm", comm], Stdio::null());
    traffic(comm, sock.to_str().expect("utf-8"), N);
    // Both ends of every connection, and the listener released at the server's exit.
    rec.wait_for_events("every close", "close", 2 * N + 1);
    let (code, _, err) = rec.stop();
    assert_eq!(code, Some(0), "{err}");

    let f = file.to_str().expect("utf-8");
    let html = scratch("timeline.html");
    let o = unixtrace(&["export", "-r", f, "--format", "html", "-o", html.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (format, out) in [("dot", "graph.dot"), ("perfetto", "trace.json")] {
        let p = scratch(out);
        let o = unixtrace(&["export", "-r", f, "--format", format, "-o", p.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(0), "{format}: {}", stderr(&o));
    }
    let trace: Value =
        serde_json::from_slice(&fs::read(scratch_existing("trace.json")).expect("trace")).expect("trace JSON");
    let slices = trace["traceEvents"].as_array().expect("traceEvents").iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(slices, 2 * N, "one slice per connection end");
    let dot = fs::read_to_string(scratch_existing("graph.dot")).expect("dot");
    assert!(dot.contains(&format!("\"{comm}\" -> \"{comm}\"")) && dot.contains(&format!("{N} conns")), "{dot}");

    // The guests of the VM matrix are a busybox initramfs: no browser can
    // run there. The recording and the exports above ran under that
    // kernel's strategy; the page itself is rendered on the host run.
    if in_vm() {
        let page = fs::read_to_string(&html).expect("html");
        assert!(page.contains("<svg") || page.contains("<script"), "a self-contained page");
        eprintln!("the HTML page is rendered in Chromium by the host run, not in the VM guest");
        return;
    }
    let shot = scratch("timeline.png");
    let url = format!("file://{}", html.display());
    let o =
        headless_chromium().arg(format!("--screenshot={}", shot.display())).arg(&url).output().expect("run chromium");
    assert!(o.status.success() && shot.is_file(), "screenshot failed: {}", stderr(&o));
    let dom = dump_dom(&html);
    let status = page_status(&dom);
    assert_eq!(status.attr("data-state"), "drawn", "{}", status.0);
    assert_eq!(status.attr("data-errors"), "", "the page had script errors: {}", status.0);
    assert_eq!(status.attr("data-bars"), (2 * N).to_string(), "{}", status.0);
    eprintln!("screenshot: {}", shot.display());
}

/// Chromium, headless, with a profile of its own and nothing fetched.
fn headless_chromium() -> Command {
    let mut c = Command::new(chromium());
    c.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,700"])
        .arg(format!("--user-data-dir={}", scratch("chromium-profile").display()))
        .stdin(Stdio::null());
    c
}

/// The page's DOM once its scripts have run.
fn dump_dom(html: &Path) -> String {
    let o = headless_chromium().arg("--dump-dom").arg(format!("file://{}", html.display())).output().expect("chromium");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The attributes of the page's `#status` element.
struct Status(String);

impl Status {
    fn attr(&self, name: &str) -> &str {
        self.0.split(&format!("{name}=\"")).nth(1).and_then(|s| s.split('"').next()).unwrap_or("?")
    }
}

fn page_status(dom: &str) -> Status {
    let status = dom
        .split("id=\"status\"")
        .nth(1)
        .and_then(|s| s.split('>').next())
        .unwrap_or_else(|| panic!("no #status in the dumped DOM: {}", &dom[..dom.len().min(2000)]));
    Status(status.to_owned())
}

/// A path in the scratch directory, as it is.
fn scratch_existing(name: &str) -> PathBuf {
    scratch_dir().join(name)
}

/// What a hostile process may call itself (comm is at most 15 bytes) and
/// its socket, and how people must see them.
const HOSTILE_COMM: &str = "ev\x1b[31mil\x07";
const SHOWN_COMM: &str = "ev\\x1b[31mil\\x07";
const HOSTILE_NAME: &str = "@<!--<script></script><script>document.write('PWN'+'ED')</script><b>x\n\"\x1b[2J";
const SHOWN_NAME: &str = "@<!--<script></script><script>document.write('PWN'+'ED')</script><b>x\\x0a\"\\x1b[2J";

/// unixtrace with rows kept whole, whatever COLUMNS the tests run under.
fn unixtrace_unwrapped(args: &[&str]) -> Output {
    Command::new(unixtrace_bin()).args(args).env_remove("COLUMNS").output().expect("run unixtrace")
}

/// `bytes` reach a terminal: no control character may be among them but
/// the line breaks, and each of `shown` must be there.
fn assert_for_people(what: &str, bytes: &[u8], shown: &[&str]) {
    let text = String::from_utf8_lossy(bytes);
    let raw: Vec<char> = text.chars().filter(|&c| c.is_control() && c != '\n').collect();
    assert!(raw.is_empty(), "{what}: raw control characters {raw:?} in:\n{}", text.escape_debug());
    for s in shown {
        assert!(text.contains(s), "{what}: no {s:?} in:\n{}", text.escape_debug());
    }
}

fn ok_for_people(what: &str, o: &Output, shown: &[&str]) -> String {
    assert_eq!(o.status.code(), Some(0), "{what}: {}", stderr(o).escape_debug());
    assert_for_people(what, &o.stdout, shown);
    assert_for_people(&format!("{what} (stderr)"), &o.stderr, &[]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn names_other_processes_chose_are_shown_escaped_and_exact_only_in_json() {
    let file = scratch("hostile.jsonl");
    let live_file = scratch("hostile.out");
    let mut rec = Recorder::start(
        &file,
        &["--comm", HOSTILE_COMM],
        Stdio::from(fs::File::create(&live_file).expect("hostile.out")),
    );
    // A listener and both ends of one connection, all held by the process
    // with the hostile name, until the test lets it go.
    let ready = pipe();
    let gate = Gate::new();
    let holder = fork_child(HOSTILE_COMM, || {
        let listener = listen_on(HOSTILE_NAME, libc::SOCK_STREAM, 8);
        let Ok(_client) = connect_to(HOSTILE_NAME, libc::SOCK_STREAM, false) else { return 2 };
        // SAFETY: accept on the child's own listener.
        if unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) } < 0 {
            return 3;
        }
        report(&ready.write, "ready");
        gate.wait();
        0
    });
    assert_eq!(read_lines(&ready, 1), ["ready"], "the hostile process did not start");
    let pid = holder.to_string();
    let shown_holder = format!("{SHOWN_COMM}[{pid}]:");

    // The snapshot table, and its JSON with the exact command.
    let table = unixtrace_unwrapped(&["--pid", &pid]);
    let table = ok_for_people("the snapshot table", &table, &[&shown_holder, SHOWN_NAME]);
    let connected = table.lines().find(|l| l.contains("connected")).unwrap_or_else(|| panic!("{table}"));
    assert_eq!(connected.matches(&shown_holder).count(), 2, "PROCESS and PEER PROCESS: {connected}");
    let snap = unixtrace_unwrapped(&["--pid", &pid, "--json"]);
    let snap = stdout_json(&snap);
    let listener = snap.iter().find(|s| s["state"] == "listening").unwrap_or_else(|| panic!("{snap:?}"));
    assert_eq!(listener["holders"][0]["comm"], HOSTILE_COMM, "{listener}");
    // As docs/json-schema.md says of `path`: control bytes as \xNN.
    assert_eq!(listener["path"], SHOWN_NAME, "{listener}");

    rec.wait_for_events("the accept", "accept", 1);
    gate.open();
    assert_eq!(wait_child(holder), 0, "the hostile process failed");
    rec.wait_for_events("the closes at its exit", "close", 3);
    let (code, _, live_err) = rec.stop();
    assert_eq!(code, Some(0), "{}", live_err.escape_debug());
    let live = fs::read(&live_file).expect("live output");
    let shown_actor = format!("{pid}/{SHOWN_COMM}");
    assert_for_people("--follow", &live, &[&shown_actor, SHOWN_NAME]);
    assert_for_people("--follow (stderr)", live_err.as_bytes(), &[]);

    let f = file.to_str().expect("utf-8");
    ok_for_people("-r", &unixtrace_unwrapped(&["-r", f]), &[&shown_actor, SHOWN_NAME]);
    let summary = ok_for_people("--summary", &unixtrace_unwrapped(&["-r", f, "--summary"]), &[SHOWN_NAME]);
    let row = summary.lines().find(|l| l.contains(SHOWN_NAME)).unwrap_or_else(|| panic!("{summary}"));
    assert!(row.starts_with(&format!("{SHOWN_COMM}  {SHOWN_COMM}  {SHOWN_NAME}  stream")), "{row}");
    assert!(summary.contains(&format!("{SHOWN_COMM}[{pid}]")), "{summary}");

    // JSON carries the exact values.
    let replayed = stdout_json(&unixtrace(&["-r", f, "--json"]));
    let event = |name: &str| {
        events_of(&replayed)
            .into_iter()
            .find(|v| v["event"] == name)
            .unwrap_or_else(|| panic!("no {name}: {replayed:?}"))
            .clone()
    };
    let connect = event("connect");
    assert_eq!((connect["comm"].as_str(), connect["path"].as_str()), (Some(HOSTILE_COMM), Some(HOSTILE_NAME)));
    assert_eq!(connect["peer_comm"], HOSTILE_COMM, "{connect}");
    let accept = event("accept");
    let pair = stdout_json(&unixtrace(&["-r", f, "--summary", "--json"]));
    let pair = pair.iter().find(|v| v["kind"] == "pair").unwrap_or_else(|| panic!("{pair:?}"));
    assert_eq!((pair["client"].as_str(), pair["path"].as_str()), (Some(HOSTILE_COMM), Some(HOSTILE_NAME)));

    // The table as of the accept, when all three sockets were open.
    let start = replayed[0]["start_ts"].as_u64().expect("start_ts");
    let at = format!("+{}ns", accept["ts"].as_u64().expect("ts") - start);
    let at_table = unixtrace_unwrapped(&["-r", f, "--at", &at]);
    ok_for_people("--at", &at_table, &[&shown_holder, SHOWN_NAME]);

    // A recording is a file anyone may have written: its header too.
    let text = fs::read_to_string(&file).expect("recording");
    let (header, rest) = text.split_once('\n').expect("a header line");
    let mut header: Value = serde_json::from_str(header).expect("header JSON");
    header["hostname"] = "evil<b>host\x1b]0;t\x07".into();
    let forged = scratch("hostile-header.jsonl");
    fs::write(&forged, format!("{header}\n{rest}")).expect("write");
    let forged_s = forged.to_str().expect("utf-8");
    let o = unixtrace_unwrapped(&["-r", forged_s, "-v", "--summary"]);
    assert_for_people("-r -v (stderr)", &o.stderr, &["evil<b>host\\x1b]0;t\\x07"]);

    let html = scratch("hostile.html");
    let o = unixtrace(&["export", "-r", forged_s, "--format", "html", "-o", html.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o).escape_debug());
    if in_vm() {
        eprintln!("the HTML page is rendered in Chromium by the host run, not in the VM guest");
        return;
    }
    let dom = dump_dom(&html);
    let status = page_status(&dom);
    assert_eq!(status.attr("data-state"), "drawn", "{}", status.0);
    assert_eq!(status.attr("data-errors"), "", "the page had script errors: {}", status.0);
    assert_eq!(status.attr("data-bars"), "1", "one connection, both ends on one lane: {}", status.0);
    // Had the name ended the data's <script>, its own script would have
    // written PWNED into the page and its <b> would be an element; had its
    // `<!--<script>` moved the data's end, the page's script would be data
    // and nothing would be drawn.
    assert!(!dom.contains("PWNED") && !dom.contains("<b>"), "markup from a name: {}", dom.escape_debug());
    assert_for_people(
        "the HTML page's DOM",
        dom.as_bytes(),
        &[
            "@&lt;!--&lt;script&gt;&lt;/script&gt;&lt;script&gt;document.write('PWN'+'ED')&lt;/script&gt;&lt;b&gt;x\\x0a\"\\x1b[2J",
            &format!("{SHOWN_COMM}[{pid}]"),
            "evil&lt;b&gt;host\\x1b]0;t\\x07",
        ],
    );
}
