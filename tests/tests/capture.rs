//! `unixtrace capture`: real servers and clients talk over UNIX sockets
//! while the real capture programs copy what they send, and the real
//! `tshark` (Debian's package, installed by `cargo xtask test`) decodes
//! the file with its built-in dissectors.
//! Host only: the guests carry no tshark, curl, python3 or dbus-daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use unixpeer_tests::sys;
use unixpeer_tests::tracer::*;

const PYTHON: &str = "/usr/bin/python3";

/// An HTTP/1.0 server on a UNIX socket: python's http.server cannot bind
/// one, socketserver's UnixStreamServer can. GET /status/N answers N.
const HTTP_SERVER: &str = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
        body = ("you asked for " + self.path).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def address_string(self):
        return "unix"
    def log_message(self, *a):
        pass
s = socketserver.UnixStreamServer(sys.argv[1], H)
print("ready", flush=True)
s.serve_forever()
"#;

/// A scratch folder, and the children to kill, gone however the test ends.
struct Scratch {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("unixpeer-capture-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self { dir, children: Vec::new() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `cmd` and waits for its first line on stdout.
    fn start_until_line(&mut self, cmd: &mut Command) -> String {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read its first line");
        self.children.push(child);
        assert!(!line.is_empty(), "{cmd:?} printed nothing");
        line
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill_and_reap(c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `unixtrace capture`, started once its programs are attached.
struct Capture {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

impl Capture {
    fn start(args: &[&str], stdout: Stdio) -> Self {
        require_root();
        let mut child = Command::new(unixtrace_bin())
            .arg("capture")
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start unixtrace capture");
        let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut first = String::new();
        err.read_line(&mut first).expect("read unixtrace's stderr");
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            rest
        });
        if !first.starts_with("unixtrace: capturing to ") {
            kill_and_reap(&mut child);
            panic!("unixtrace capture did not start: {first}{}", stderr.join().unwrap_or_default());
        }
        Self { child, stderr }
    }

    /// Ctrl-C, then its exit status and stderr.
    fn stop(mut self) -> String {
        // What was sent last is drained at most 20 ms later.
        std::thread::sleep(Duration::from_millis(200));
        interrupt(&self.child);
        let status = self.child.wait().expect("wait for unixtrace");
        let err = self.stderr.join().unwrap_or_default();
        assert!(status.success(), "unixtrace capture failed: {err}");
        err
    }
}

fn tshark(file: &Path, args: &[&str]) -> Vec<Vec<String>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=/t"])
        .args(args)
        .output()
        .expect("run tshark (cargo xtask test installs it)");
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').map(str::to_owned).collect()).collect()
}

fn curl(sock: &Path, url: &str) -> (u32, String) {
    let child = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(sock)
        .arg(url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run curl (cargo xtask test installs it)");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for curl");
    assert!(out.status.success(), "curl {url} failed");
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn http_over_a_unix_socket_decodes_as_http() {
    let mut s = Scratch::new("http");
    let sock = s.path("http.sock");
    let ready = s.start_until_line(Command::new(PYTHON).args(["-c", HTTP_SERVER]).arg(&sock));
    assert_eq!(ready.trim(), "ready");
    let file = s.path("http.pcapng");
    let cap =
        Capture::start(&["-w", file.to_str().expect("utf-8"), "--path", sock.to_str().expect("utf-8")], Stdio::null());
    let (curl_pid, body) = curl(&sock, "http://localhost/status/418");
    assert_eq!(body, "you asked for /status/418");
    let (_, body) = curl(&sock, "http://localhost/hello?x=1");
    assert_eq!(body, "you asked for /hello?x=1");
    let err = cap.stop();
    assert!(err.contains(", 0 lost"), "{err}");

    let requests = tshark(&file, &["-Y", "http.request", "-e", "http.request.uri", "-e", "frame.comment"]);
    let uris: Vec<&str> = requests.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(uris, ["/status/418", "/hello?x=1"], "{requests:?}");
    assert!(
        requests[0][1].starts_with(&format!("from pid {curl_pid} (curl) "))
            && requests[0][1].contains(&format!("via {}", sock.display())),
        "{requests:?}"
    );
    let responses = tshark(&file, &["-Y", "http.response", "-e", "http.response.code", "-e", "frame.comment"]);
    let codes: Vec<&str> = responses.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(codes, ["418", "200"], "{responses:?}");
    // The server's answer names curl as its receiver.
    assert!(responses[0][1].contains(&format!(" to pid {curl_pid} (curl) ")), "{responses:?}");
    // Each curl is a flow of its own: two TCP streams, each with its handshake.
    let syns = tshark(&file, &["-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0", "-e", "tcp.stream"]);
    assert_eq!(syns.len(), 2, "{syns:?}");
}

#[test]
fn a_large_message_is_marked_truncated_with_its_true_length() {
    const LEN: usize = 1 << 20;
    let s = Scratch::new("big");
    let file = s.path("big.pcapng");
    let me = std::process::id().to_string();
    let cap = Capture::start(
        &["-w", file.to_str().expect("utf-8"), "-p", &me, "-s", "256", "--type", "stream"],
        Stdio::null(),
    );
    let (a, b) = sys::socketpair(libc::SOCK_STREAM).expect("socketpair");
    // SAFETY: fresh fds from socketpair, owned here alone.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(a), OwnedFd::from_raw_fd(b)) };
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 16];
        while got < LEN {
            let n = sys::read_fd(std::os::fd::AsRawFd::as_raw_fd(&b), &mut buf).expect("read");
            assert!(n > 0, "early EOF");
            got += n;
        }
        got
    });
    let message: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = std::fs::File::from(a);
    // One write(2): a blocking stream socket sends it all before returning.
    let n = writer.write(&message).expect("write");
    assert_eq!(n, LEN);
    assert_eq!(reader.join().expect("reader"), LEN);
    let err = cap.stop();
    assert!(err.contains("1 truncated to -s 256"), "{err}");

    let frames = tshark(
        &file,
        &[
            "-Y",
            "tcp.len > 0",
            "-e",
            "frame.len",
            "-e",
            "frame.cap_len",
            "-e",
            "tcp.len",
            "-e",
            "tcp.payload",
            "-e",
            "frame.comment",
        ],
    );
    assert!(!frames.is_empty());
    let total: usize = frames.iter().map(|f| f[2].parse::<usize>().expect("tcp.len")).sum();
    assert_eq!(
        total,
        LEN,
        "the segments add up to the message: {:?}",
        frames.iter().map(|f| &f[..3]).collect::<Vec<_>>()
    );
    let first = &frames[0];
    assert_eq!(first[1], (40 + 256).to_string(), "captured: headers and 256 bytes");
    assert!(first[0].parse::<usize>().expect("frame.len") > 40 + 256, "{first:?}");
    let want: String = message[..256].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(first[3].replace(':', ""), want, "the first 256 bytes as written");
    assert!(first[4].contains(&format!("write of {LEN} bytes, truncated: 256 captured")), "{first:?}");
}

#[test]
fn dbus_send_decodes_as_dbus_method_calls() {
    let mut s = Scratch::new("dbus");
    let bus = s.path("bus");
    let config = s.path("bus.conf");
    std::fs::write(
        &config,
        format!(
            "<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
             <policy context=\"default\"><allow send_destination=\"*\"/><allow receive_sender=\"*\"/>\
             <allow own=\"*\"/></policy></busconfig>",
            bus.display()
        ),
    )
    .expect("write bus.conf");
    let daemon = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--nopidfile"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbus-daemon (cargo xtask test installs it)");
    s.children.push(daemon);
    let deadline = Instant::now() + WAIT;
    while !bus.exists() {
        assert!(Instant::now() < deadline, "dbus-daemon did not listen on {}", bus.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = s.path("dbus.pcapng");
    let cap =
        Capture::start(&["-w", file.to_str().expect("utf-8"), "--path", bus.to_str().expect("utf-8")], Stdio::null());
    let out = Command::new("dbus-send")
        .arg(format!("--bus=unix:path={}", bus.display()))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetNameOwner",
            "string:org.freedesktop.DBus",
        ])
        .output()
        .expect("run dbus-send (cargo xtask test installs it)");
    assert!(out.status.success(), "dbus-send: {}", String::from_utf8_lossy(&out.stderr));
    let err = cap.stop();
    assert!(err.contains(", 0 lost"), "{err}");

    let calls = tshark(&file, &["-Y", "dbus.message_type == 1", "-e", "dbus.member", "-e", "frame.comment"]);
    let members: Vec<&str> = calls.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(members, ["Hello", "GetNameOwner"], "{calls:?}");
    assert!(calls[1][1].contains("(dbus-send)"), "{calls:?}");
    // The bus answers both, and says who owns the name asked for.
    let replies = tshark(&file, &["-Y", "dbus.message_type == 2", "-e", "dbus.type.string"]);
    assert!(replies.iter().any(|r| r[0] == "org.freedesktop.DBus"), "{replies:?}");
}

#[test]
fn streamed_to_stdout_tshark_reads_it_live() {
    let mut s = Scratch::new("live");
    let sock = s.path("live.sock");
    s.start_until_line(Command::new(PYTHON).args(["-c", HTTP_SERVER]).arg(&sock));
    let mut tshark = Command::new("tshark")
        .args(["-l", "-i", "-", "-T", "fields", "-e", "http.request.uri", "-Y", "http.request"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tshark");
    let pipe = tshark.stdin.take().expect("tshark's stdin");
    let cap = Capture::start(&["-w", "-", "--path", sock.to_str().expect("utf-8")], Stdio::from(pipe));
    let mut lines = BufReader::new(tshark.stdout.take().expect("tshark's stdout")).lines();
    curl(&sock, "http://localhost/live");
    // Shown before the capture ends: the file is flushed batch by batch.
    let first = lines.next().expect("a line from tshark").expect("read tshark");
    assert_eq!(first, "/live");
    cap.stop();
    let status = tshark.wait().expect("wait for tshark");
    assert!(status.success());
}

#[test]
fn bad_arguments_fail_clearly() {
    let out = unixtrace(&["capture", "-w", "x.pcapng", "-s", "70000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 to 65535"), "{out:?}");
    let out = unixtrace(&["capture", "-w", "/nonexistent-dir/x.pcapng"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot create /nonexistent-dir/x.pcapng") && !err.contains("panicked"), "{err}");
    let s = Scratch::new("exists");
    let taken = s.path("taken.pcapng");
    std::fs::write(&taken, b"keep").expect("write");
    let out = unixtrace(&["capture", "-w", taken.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"), "{out:?}");
    assert_eq!(std::fs::read(&taken).expect("read"), b"keep");
}

/// Sends `parts` on `fd` with `call`; returns the bytes sent.
fn send_with(fd: i32, call: &str, parts: &[&[u8]]) -> usize {
    let mut iov: Vec<libc::iovec> =
        parts.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }).collect();
    let whole = parts.concat();
    // SAFETY: every pointer is to a live buffer or iovec array of the
    // length given, for the duration of the call.
    let n = unsafe {
        match call {
            "write" => libc::write(fd, whole.as_ptr().cast(), whole.len()),
            "writev" => libc::writev(fd, iov.as_ptr(), iov.len() as i32),
            "sendto" => libc::sendto(fd, whole.as_ptr().cast(), whole.len(), 0, std::ptr::null(), 0),
            "sendmsg" => {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = iov.len() as _;
                libc::sendmsg(fd, &msg, 0)
            }
            // Each part a message of its own.
            "sendmmsg" => {
                let mut msgs: Vec<libc::mmsghdr> = iov
                    .iter_mut()
                    .map(|v| {
                        let mut m: libc::mmsghdr = std::mem::zeroed();
                        m.msg_hdr.msg_iov = v;
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                let sent = libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as _, 0);
                assert_eq!(sent, msgs.len() as i32, "sendmmsg sent {sent}");
                msgs.iter().map(|m| m.msg_len as isize).sum()
            }
            _ => unreachable!("no call {call}"),
        }
    };
    assert_eq!(n, whole.len() as isize, "{call} sent {n}: {}", std::io::Error::last_os_error());
    whole.len()
}

#[test]
fn every_send_call_on_every_socket_type_is_captured() {
    let s = Scratch::new("calls");
    let file = s.path("calls.pcapng");
    let me = std::process::id().to_string();
    let cap = Capture::start(&["-w", file.to_str().expect("utf-8"), "-p", &me], Stdio::null());
    let mut want = Vec::new();
    let mut keep = Vec::new();
    for (ty, name, payload_field) in [
        (libc::SOCK_STREAM, "stream", "tcp.payload"),
        (libc::SOCK_DGRAM, "dgram", "udp.payload"),
        (libc::SOCK_SEQPACKET, "seqpacket", "tcp.payload"),
    ] {
        let (a, b) = sys::socketpair(ty).expect("socketpair");
        for call in ["write", "writev", "sendto", "sendmsg", "sendmmsg"] {
            let first = format!("{call}-");
            let parts: [&[u8]; 2] = [first.as_bytes(), name.as_bytes()];
            send_with(a, call, &parts);
            if call == "sendmmsg" {
                want.push((payload_field, call, first.clone()));
                want.push((payload_field, call, name.to_owned()));
            } else {
                want.push((payload_field, call, format!("{call}-{name}")));
            }
        }
        keep.push((a, b));
    }
    let err = cap.stop();
    for (a, b) in keep {
        sys::close(a);
        sys::close(b);
    }
    assert!(err.contains("captured 18 messages"), "{err}");
    let rows =
        tshark(&file, &["-Y", "tcp.len > 0 || udp", "-e", "tcp.payload", "-e", "udp.payload", "-e", "frame.comment"]);
    let got: Vec<(&str, String, String)> = rows
        .iter()
        .map(|r| {
            let (field, hex) = if r[0].is_empty() { ("udp.payload", &r[1]) } else { ("tcp.payload", &r[0]) };
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
            let call = r[2].rsplit("; ").next().and_then(|t| t.split(' ').next()).unwrap_or_default().to_owned();
            (field, call, String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    let want: Vec<(&str, String, String)> = want.into_iter().map(|(f, c, p)| (f, c.to_owned(), p)).collect();
    assert_eq!(got, want);
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// `cmd` as the postgres user, which initdb and postgres insist on.
fn as_postgres(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    let out = Command::new("id").args(["-u", "postgres"]).output().expect("id -u postgres");
    let uid: u32 =
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("postgres has a uid (apt-get install postgresql)");
    let out = Command::new("id").args(["-g", "postgres"]).output().expect("id -g postgres");
    let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("postgres has a gid");
    cmd.uid(uid).gid(gid);
    cmd
}

#[test]
fn psql_decodes_as_pgsql_with_the_query() {
    let mut s = Scratch::new("pgsql");
    let chown = Command::new("chown").args(["postgres:postgres"]).arg(&s.dir).status().expect("chown");
    assert!(chown.success());
    let data = s.path("data");
    let initdb = as_postgres(Command::new(format!("{PG_BIN}/initdb")))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .output()
        .expect("run initdb (cargo xtask test installs postgresql)");
    assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));
    let server = as_postgres(Command::new(format!("{PG_BIN}/postgres")))
        .arg("-D")
        .arg(&data)
        .args(["-c", "listen_addresses=", "-c"])
        .arg(format!("unix_socket_directories={}", s.dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    s.children.push(server);
    let sock = s.path(".s.PGSQL.5432");
    let psql = |sql: &str| {
        as_postgres(Command::new("psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(&s.dir)
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .expect("run psql (cargo xtask test installs postgresql)")
    };
    let deadline = Instant::now() + WAIT;
    while !sock.exists() || !psql("select 1").status.success() {
        assert!(Instant::now() < deadline, "postgres did not accept connections on {}", sock.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    let file = s.path("pgsql.pcapng");
    let cap = Capture::start(&["-w", file.to_str().expect("utf-8"), "--path", "*/.s.PGSQL.*"], Stdio::null());
    let query = format!("select 'unixtrace ' || {} as probe", std::process::id());
    let out = psql(&query);
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("unixtrace {}", std::process::id()));
    let err = cap.stop();
    assert!(err.contains(", 0 lost"), "{err}");

    let queries = tshark(&file, &["-Y", "pgsql.query", "-e", "pgsql.query", "-e", "frame.comment"]);
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(queries[0][0], query);
    assert!(queries[0][1].contains("(psql)"), "{queries:?}");
    // The server's row comes back decoded too.
    let rows = tshark(&file, &["-Y", "pgsql.type == \"Data row\"", "-e", "pgsql.text"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
}

/// The `isb_ifdrop` of the last interface statistics block for interface 0.
fn last_ifdrop(file: &Path) -> Option<u64> {
    let b = std::fs::read(file).expect("read the capture");
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let mut at = 0;
    let mut drop = None;
    while at + 12 <= b.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        assert!(len >= 12 && at + len <= b.len(), "a block runs past the end at {at}");
        // ISB: interface id, timestamp, then options.
        if kind == 5 && u32_at(at + 8) == 0 {
            let mut o = at + 20;
            while o + 4 <= at + len - 4 {
                let code = u16::from_le_bytes([b[o], b[o + 1]]);
                let olen = u16::from_le_bytes([b[o + 2], b[o + 3]]) as usize;
                if code == 0 {
                    break;
                }
                if code == 5 {
                    drop = Some(u64::from_le_bytes(b[o + 4..o + 12].try_into().expect("8 bytes")));
                }
                o += 4 + olen.next_multiple_of(4);
            }
        }
        at += len;
    }
    drop
}

#[test]
fn messages_lost_to_a_full_buffer_are_counted_in_the_file_and_on_stderr() {
    const SENT: usize = 3000;
    let s = Scratch::new("loss");
    let file = s.path("loss.pcapng");
    let me = std::process::id().to_string();
    // One page of ring buffer holds three of these: most must be lost.
    let args = ["-w", file.to_str().expect("utf-8"), "-p", &me, "-s", "1024", "--buffer-size", "4K"];
    let cap = Capture::start(&args, Stdio::null());
    let (a, b) = sys::socketpair(libc::SOCK_DGRAM).expect("socketpair");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..SENT {
            sys::read_fd(b, &mut buf).expect("read");
        }
        b
    });
    for i in 0..SENT {
        let msg = [(i % 256) as u8; 1000];
        assert_eq!(sys::write_fd(a, &msg).expect("write"), 1000);
    }
    let b = reader.join().expect("reader");
    let err = cap.stop();
    sys::close(a);
    sys::close(b);
    let (captured, lost) = err
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("unixtrace: captured ")?;
            let captured: usize = rest.split(' ').next()?.parse().ok()?;
            let lost: usize = rest.rsplit(", ").next()?.strip_suffix(" lost")?.parse().ok()?;
            Some((captured, lost))
        })
        .unwrap_or_else(|| panic!("no closing line: {err}"));
    assert!(lost > 0, "a 4 KiB buffer kept up with {SENT} messages of 1000 bytes: {err}");
    assert!(err.contains("messages lost: the kernel's buffer (4 KiB) was full"), "{err}");
    assert_eq!(captured + lost, SENT, "every message captured or counted lost: {err}");
    assert_eq!(tshark(&file, &["-Y", "udp", "-e", "frame.number"]).len(), captured);
    assert_eq!(last_ifdrop(&file), Some(lost as u64), "{err}");
}

#[test]
fn an_unconnected_datagram_is_named_by_its_receiver() {
    let s = Scratch::new("dgram");
    let path = s.path("receiver.sock");
    let receiver = sys::bound(libc::SOCK_DGRAM, path.to_str().expect("utf-8")).expect("bind");
    let file = s.path("dgram.pcapng");
    let cap =
        Capture::start(&["-w", file.to_str().expect("utf-8"), "--path", path.to_str().expect("utf-8")], Stdio::null());
    let sender = sys::socket(libc::SOCK_DGRAM).expect("socket");
    let (addr, len) = sockaddr(path.to_str().expect("utf-8"));
    let payload = b"to whoever listens";
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
    // SAFETY: msghdr zeroed, then pointed at live locals for the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &addr as *const _ as *mut _;
        msg.msg_namelen = len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        libc::sendmsg(sender, &msg, 0)
    };
    assert_eq!(n, payload.len() as isize, "{}", std::io::Error::last_os_error());
    let err = cap.stop();
    sys::close(sender);
    sys::close(receiver);
    let rows = tshark(&file, &["-Y", "udp", "-e", "udp.payload", "-e", "frame.comment"]);
    assert_eq!(rows.len(), 1, "{rows:?} {err}");
    assert_eq!(rows[0][0], payload.iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert!(rows[0][1].contains(&format!("via {}; sendmsg of 18 bytes", path.display())), "{rows:?}");
}
