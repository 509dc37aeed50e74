//! `unixtrace capture`: real servers and clients talk over UNIX sockets
//! while the real capture programs copy what they send, and the real
//! `tshark` (Debian's package, installed by `cargo xtask test`) decodes
//! the file with its built-in dissectors.
//! Host only: the guests carry no tshark, curl, python3 or dbus-daemon.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use unixpeer_tests::capture::*;
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
