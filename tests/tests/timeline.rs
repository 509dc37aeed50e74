//! Timelines end to end: the real `unixtrace --follow -w` records real
//! processes, `-r` replays what live mode printed, a `kill -9` leaves a
//! readable file, bad files give one clear error, and the HTML export
//! renders in headless Chromium. Run as root (`cargo xtask test`).

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

const WAIT: Duration = Duration::from_secs(30);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unixpeer-timeline-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    let p = dir.join(name);
    let _ = fs::remove_file(&p);
    p
}

fn unixtrace(args: &[&str]) -> Output {
    Command::new(unixtrace_bin()).args(args).output().expect("run unixtrace")
}

fn stdout_json(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
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
        // SAFETY: plain kill on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"));
        let o = out.wait_with_output().expect("wait for unixtrace");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn kill9(mut self) {
        // SAFETY: plain kill on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server (`comm`) accepting `n` connections and a client (`comm` too,
/// so one in-kernel --comm filter keeps both) making them, plus one
/// failed connect. Returns (server pid, client pid).
fn traffic(comm: &str, sock: &str, n: usize) -> (i32, i32) {
    let _ = fs::remove_file(sock);
    let ready = pipe();
    // The server listens itself, under its name, so the recording sees the
    // listen and can name the server at connect time.
    let server = fork_child(comm, || {
        // SAFETY: raw syscalls in the child.
        let listener = unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let (addr, len) = sockaddr(sock);
            if libc::bind(fd, (&raw const addr).cast(), len) != 0 || libc::listen(fd, 128) != 0 {
                return 4;
            }
            fd
        };
        report(&ready.write, "ready");
        // Every connection is open at its accept.
        serve(listener, n, true)
    });
    assert_eq!(read_lines(&ready, 1), ["ready"], "server did not start");
    let missing = format!("{sock}.missing");
    let client = fork_child(comm, || {
        if connect_to(&missing, libc::SOCK_STREAM, false).is_ok() {
            return 3;
        }
        for _ in 0..n {
            let Ok(fd) = connect_to(sock, libc::SOCK_STREAM, false) else { return 2 };
            // SAFETY: raw syscalls in the child.
            unsafe {
                libc::write(fd, b"x".as_ptr().cast(), 1);
                let mut b = [0u8; 1];
                libc::read(fd, b.as_mut_ptr().cast(), 1);
                libc::close(fd);
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
    if std::env::var_os("UNIXPEER_IN_VM").is_some_and(|v| v == "1") {
        let page = fs::read_to_string(&html).expect("html");
        assert!(page.contains("<svg") || page.contains("<script"), "a self-contained page");
        eprintln!("the HTML page is rendered in Chromium by the host run, not in the VM guest");
        return;
    }
    let browser = chromium();
    let profile = scratch("chromium-profile");
    let shot = scratch("timeline.png");
    let base = |c: &mut Command| {
        c.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            .args(["--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,700"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null());
    };
    let url = format!("file://{}", html.display());
    let mut c = Command::new(&browser);
    base(&mut c);
    let o = c.arg(format!("--screenshot={}", shot.display())).arg(&url).output().expect("run chromium");
    assert!(o.status.success() && shot.is_file(), "screenshot failed: {}", stderr(&o));
    let mut c = Command::new(&browser);
    base(&mut c);
    let o = c.arg("--dump-dom").arg(&url).output().expect("run chromium");
    let dom = String::from_utf8_lossy(&o.stdout);
    let status = dom
        .split("id=\"status\"")
        .nth(1)
        .and_then(|s| s.split('>').next())
        .unwrap_or_else(|| panic!("no #status in the dumped DOM: {}", &dom[..dom.len().min(2000)]));
    let attr = |name: &str| status.split(&format!("{name}=\"")).nth(1).and_then(|s| s.split('"').next()).unwrap_or("?");
    assert_eq!(attr("data-state"), "drawn", "{status}");
    assert_eq!(attr("data-errors"), "", "the page had script errors: {status}");
    assert_eq!(attr("data-bars"), (2 * N).to_string(), "{status}");
    eprintln!("screenshot: {}", shot.display());
}

fn scratch_existing(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("unixpeer-timeline-{}", std::process::id())).join(name)
}
