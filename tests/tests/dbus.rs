//! D-Bus names: a real `dbus-daemon` (Debian's package, installed by
//! `cargo xtask test`) run as another user, the way a desktop session bus
//! is; a Python service (python3-dbus) owning a well-known name; a
//! `dbus-send` client waiting for its reply. The snapshot names both
//! clients' connections as the bus knows them.
//! Host only: the names come from the bus daemon, not the kernel, and the
//! guests carry no dbus-daemon; the snapshot under them is `snapshot`'s.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use unixpeer_tests::tracer::*;

const NOBODY: u32 = 65534;
const PYTHON: &str = "/usr/bin/python3";

/// Children killed and the scratch folder removed however the test ends.
struct Session {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill_and_reap(c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Session {
    /// A session bus of user nobody at DIR/bus, which, like any session
    /// bus, lets in only its own user.
    fn start(tag: &str) -> (Self, String) {
        let dir = std::env::temp_dir().join(format!("unixpeer-dbus-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let chown = Command::new("chown").arg(format!("{NOBODY}:{NOBODY}")).arg(&dir).status().expect("chown");
        assert!(chown.success(), "chown the scratch dir");
        let bus = dir.join("bus");
        let config = dir.join("bus.conf");
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
        let mut session = Session { dir, children: Vec::new() };
        let daemon = as_nobody(Command::new("dbus-daemon"))
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon (cargo xtask test installs it)");
        session.children.push(daemon);
        let deadline = Instant::now() + WAIT;
        while !bus.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not listen on {}", bus.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        let address = format!("unix:path={}", bus.display());
        (session, address)
    }

    fn bus(&self) -> String {
        self.dir.join("bus").display().to_string()
    }

    /// A Python client of the bus as nobody, running `script` after
    /// connecting; returns what it printed first (one line).
    fn python(&mut self, address: &str, script: &str) -> (u32, String) {
        assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing: install python3-dbus (cargo xtask test does)");
        let mut child = as_nobody(Command::new(PYTHON))
            .args(["-c", script])
            .env("DBUS_SESSION_BUS_ADDRESS", address)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read the service's line");
        let pid = child.id();
        self.children.push(child);
        assert!(!line.is_empty(), "the Python client printed nothing: is python3-dbus installed?");
        (pid, line.trim().to_owned())
    }
}

fn as_nobody(mut c: Command) -> Command {
    c.uid(NOBODY).gid(NOBODY);
    c
}

fn snapshot(args: &[&str]) -> (Vec<Value>, String) {
    let out = unixtrace(args);
    assert!(out.status.success(), "unixtrace {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(json_line).collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The socket record held by `pid`.
fn held_by(records: &[Value], pid: u32) -> &Value {
    records
        .iter()
        .find(|r| r["holders"].as_array().is_some_and(|h| h.iter().any(|h| h["pid"] == pid)))
        .unwrap_or_else(|| panic!("no socket of pid {pid} in {records:#?}"))
}

/// Waits until `pid` holds a socket connected to the bus (dbus-send is
/// another process: it connects when it gets to it).
fn wait_connected(bus: &str, pid: u32) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (records, _) = snapshot(&["--json", "--path", bus]);
        if records.iter().any(|r| {
            r["holders"].as_array().is_some_and(|h| h.iter().any(|h| h["pid"] == pid)) && r["dbus"].is_object()
        }) {
            return records;
        }
        assert!(Instant::now() < deadline, "pid {pid} never showed as a named client of {bus}: {records:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bus_clients_are_named_by_the_bus() {
    let (mut session, address) = Session::start("names");
    let bus = session.bus();
    let name = format!("org.unixtrace.Test{}", std::process::id());
    // The service takes a well-known name and never answers a call, so a
    // caller stays connected, waiting.
    let (service, unique) = session.python(
        &address,
        &format!(
            "import dbus, time\nb = dbus.SessionBus()\nb.request_name('{name}')\n\
             print(b.get_unique_name(), flush=True)\ntime.sleep(600)"
        ),
    );
    assert!(unique.starts_with(":1."), "the service's unique name: {unique}");
    let sender = as_nobody(Command::new("dbus-send"))
        .arg(format!("--bus={address}"))
        .args(["--print-reply", "--reply-timeout=120000", &format!("--dest={name}"), "/", &format!("{name}.Hold")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbus-send (cargo xtask test installs it)");
    let sender_pid = sender.id();
    session.children.push(sender);

    let records = wait_connected(&bus, sender_pid);
    let svc = held_by(&records, service);
    assert_eq!(svc["dbus"]["bus"], bus.as_str(), "{svc}");
    assert_eq!(svc["dbus"]["unique_name"], unique.as_str(), "{svc}");
    assert_eq!(svc["dbus"]["names"], serde_json::json!([name]), "{svc}");
    let send = held_by(&records, sender_pid);
    let send_unique = send["dbus"]["unique_name"].as_str().expect("dbus-send's unique name");
    assert!(send_unique.starts_with(":1.") && send_unique != unique, "{send}");
    assert_eq!(send["dbus"]["names"], serde_json::json!([]), "dbus-send owns no name: {send}");
    // The daemon's end of each connection says who is on the other side.
    let daemon_end = records
        .iter()
        .find(|r| r["peer_inode"] == svc["inode"])
        .unwrap_or_else(|| panic!("the daemon's end of the service's connection: {records:#?}"));
    assert_eq!(daemon_end["peer_dbus"], svc["dbus"], "{daemon_end}");

    // The wide table shows the names beside the holder; the default one,
    // which does not ask the bus, does not.
    let wide = unixtrace(&["--wide", "--path", &bus]);
    let text = String::from_utf8_lossy(&wide.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("[{service}]:")))
        .unwrap_or_else(|| panic!("no row for the service in:\n{text}"));
    assert!(line.contains(&format!("({unique} {name})")), "the service's names in its row: {line}");
    let narrow = unixtrace(&["--path", &bus]);
    assert!(!String::from_utf8_lossy(&narrow.stdout).contains(&unique), "names only with --wide");
}

/// A process with two connections to one bus: the bus does not say which
/// socket carries which name, so neither is named rather than one guessed.
#[test]
fn a_process_with_two_connections_is_not_guessed_at() {
    let (mut session, address) = Session::start("two");
    let bus = session.bus();
    let (client, _) = session.python(
        &address,
        "import dbus, time\na = dbus.bus.BusConnection(dbus.bus.BUS_SESSION)\n\
         b = dbus.bus.BusConnection(dbus.bus.BUS_SESSION)\nprint(a.get_unique_name(), b.get_unique_name(), flush=True)\n\
         time.sleep(600)",
    );
    let (records, stderr) = snapshot(&["--json", "-v", "--path", &bus]);
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["holders"].as_array().is_some_and(|h| h.iter().any(|h| h["pid"] == client)))
        .collect();
    assert_eq!(mine.len(), 2, "two connections: {records:#?}");
    assert!(mine.iter().all(|r| r.get("dbus").is_none()), "neither is named: {mine:#?}");
    assert!(
        stderr.contains("D-Bus names: 0 clients of") && stderr.contains("2 not (their process has several connections"),
        "-v says why: {stderr}"
    );
}

/// A bus that does not answer (stopped) costs the snapshot a bounded wait
/// and its names, nothing else.
#[test]
fn a_hung_bus_does_not_hold_up_the_snapshot() {
    let (mut session, address) = Session::start("hung");
    let bus = session.bus();
    let (client, _) =
        session.python(&address, "import dbus, time\nb = dbus.SessionBus()\nprint('up', flush=True)\ntime.sleep(600)");
    let daemon = session.children[0].id();
    unixpeer_tests::sys::kill(daemon as i32, libc::SIGSTOP);
    let (records, stderr) = snapshot(&["--json", "-v", "--path", &bus]);
    unixpeer_tests::sys::kill(daemon as i32, libc::SIGCONT);
    let held = held_by(&records, client);
    assert!(held.get("dbus").is_none(), "no names from a stopped bus: {held}");
    assert!(stderr.contains(&format!("D-Bus names: {bus} did not answer within")), "-v says so: {stderr}");
}
