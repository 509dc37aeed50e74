//! `--metrics`: a real Prometheus server (Debian's `prometheus` package,
//! installed by `cargo xtask test`) scrapes unixtrace while real processes
//! connect, and the counts are read back through Prometheus's query API.
//! Host only: the metrics sit above the capture layer, which `live` covers
//! in every VM column, and the guests carry no Prometheus.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use unixpeer_tests::tracer::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const CONNECTIONS: usize = 100;
const FAILURES: usize = 3;
const DATAGRAMS: usize = 3;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// `curl` GET, body as text; None if the server does not answer (yet).
fn get(url: &str, query: Option<&str>) -> Option<String> {
    let mut c = Command::new("curl");
    c.args(["-sf", "--max-time", "5"]);
    if let Some(q) = query {
        c.args(["--get", "--data-urlencode", &format!("query={q}")]);
    }
    let out = c.arg(url).output().expect("run curl (cargo xtask test installs it)");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prometheus's answer to an instant query: its result vector.
fn query(prometheus: u16, q: &str) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{prometheus}/api/v1/query");
    let Some(body) = get(&url, Some(q)) else { return Vec::new() };
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("Prometheus answered no JSON ({e}): {body}"));
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Waits until the query's single series has `value`; returns its labels.
fn wait_for_value(prometheus: u16, q: &str, value: &str, log: &Path) -> Value {
    let deadline = Instant::now() + WAIT * 2;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = query(prometheus, q);
        if last.len() == 1 && last[0]["value"][1] == value {
            return last[0]["metric"].clone();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("`{q}` never became {value}: last answer {last:?}\nPrometheus log:\n{log}");
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

fn start_prometheus(dir: &Path, target: &str, port: u16) -> Prometheus {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install Debian's prometheus package (cargo xtask test does)"
    );
    let config = dir.join("prometheus.yml");
    let yaml = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: unixtrace\n    \
         static_configs:\n      - targets: [\"{target}\"]\n"
    );
    std::fs::write(&config, yaml).expect("write prometheus.yml");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus(child)
}

#[test]
fn prometheus_scrapes_the_connections_unixtrace_counted() {
    let dir = std::env::temp_dir().join(format!("unixpeer-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let (ours, theirs) = (free_port(), free_port());
    // A datagram receiver bound before unixtrace starts, as journald's
    // /dev/log is: the snapshot names its holder.
    let dgram = dir.join("log.sock").to_string_lossy().into_owned();
    let ready = pipe();
    let receiver = fork_child("metricsdgram", || {
        let Ok(fd) = unixpeer_tests::sys::bound(libc::SOCK_DGRAM, &dgram) else { return 4 };
        // Not for ever if the test fails before it sends.
        let limit = libc::timeval { tv_sec: 60, tv_usec: 0 };
        // SAFETY: a live timeval of the length given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const limit).cast(),
                size_of_val(&limit) as _,
            )
        };
        report(&ready.write, "ready");
        for _ in 0..DATAGRAMS {
            if unixpeer_tests::sys::read_fd(fd, &mut [0u8; 64]).ok() != Some(10) {
                return 5;
            }
        }
        0
    });
    assert_eq!(read_lines(&ready, 1), ["ready"], "the datagram receiver did not start");
    let target = format!("127.0.0.1:{ours}");
    let tracer = spawn_unixtrace(&["--metrics", &target], Stdio::null());
    let own = format!("http://{target}/metrics");
    let deadline = Instant::now() + WAIT;
    while !get(&own, None).is_some_and(|t| t.contains("unixtrace_events_total")) {
        assert!(Instant::now() < deadline, "unixtrace never served its metrics at {own}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(get(&format!("http://{target}/other"), None).is_none(), "only /metrics is served");
    let prometheus = start_prometheus(&dir, &target, theirs);
    let log = dir.join("prometheus.log");
    wait_for_value(theirs, "up{job=\"unixtrace\"}", "1", &log);

    let path = dir.join("app.sock").to_string_lossy().into_owned();
    let missing = dir.join("missing.sock").to_string_lossy().into_owned();
    let server = spawn_server("metricsserver", &path, 128, CONNECTIONS);
    let (p, m) = (path.clone(), missing.clone());
    let client = fork_child("metricsclient", move || {
        for _ in 0..CONNECTIONS {
            if talk(&p, true).is_err() {
                return 1;
            }
        }
        for _ in 0..FAILURES {
            if connect_to(&m, libc::SOCK_STREAM, false) != Err(libc::ENOENT) {
                return 2;
            }
        }
        0
    });
    assert_eq!(wait_child(client), 0, "the client's connects did not go as planned");
    assert_eq!(wait_child(server), 0, "the server did not accept every connection");

    let labels = wait_for_value(
        theirs,
        &format!("unixtrace_connections_total{{path=\"{path}\"}}"),
        &CONNECTIONS.to_string(),
        &log,
    );
    assert_eq!((labels["client"].as_str(), labels["server"].as_str()), (Some("metricsclient"), Some("metricsserver")));
    wait_for_value(theirs, &format!("unixtrace_active_connections{{path=\"{path}\"}}"), "0", &log);
    let failed = wait_for_value(
        theirs,
        &format!("unixtrace_connect_failures_total{{path=\"{missing}\"}}"),
        &FAILURES.to_string(),
        &log,
    );
    assert_eq!((failed["client"].as_str(), failed["errno"].as_str()), (Some("metricsclient"), Some("ENOENT")));
    // Each connection: one byte each way, counted at the client's close.
    for direction in ["client_to_server", "server_to_client"] {
        let labels = wait_for_value(
            theirs,
            &format!("unixtrace_bytes_total{{path=\"{path}\",direction=\"{direction}\"}}"),
            &CONNECTIONS.to_string(),
            &log,
        );
        assert_eq!(labels["client"].as_str(), Some("metricsclient"), "{labels}");
        wait_for_value(
            theirs,
            &format!("unixtrace_messages_total{{path=\"{path}\",direction=\"{direction}\"}}"),
            &CONNECTIONS.to_string(),
            &log,
        );
    }

    // Datagrams sent by address: a pair of its own, its bytes the sender's.
    let sender = fork_child("metricssender", || {
        let Ok(fd) = unixpeer_tests::sys::socket(libc::SOCK_DGRAM) else { return 4 };
        let (addr, len) = unixpeer_tests::sys::sockaddr(&dgram);
        for _ in 0..DATAGRAMS {
            // SAFETY: a live 10-byte buffer and address of the lengths given.
            let n = unsafe { libc::sendto(fd, b"0123456789".as_ptr().cast(), 10, 0, (&raw const addr).cast(), len) };
            if n != 10 {
                return 5;
            }
        }
        unixpeer_tests::sys::close(fd);
        0
    });
    assert_eq!(wait_child(sender), 0, "the sender's datagrams did not all go");
    assert_eq!(wait_child(receiver), 0, "the receiver did not get every datagram");
    let labels = wait_for_value(theirs, &format!("unixtrace_connections_total{{path=\"{dgram}\"}}"), "1", &log);
    assert_eq!((labels["client"].as_str(), labels["server"].as_str()), (Some("metricssender"), Some("metricsdgram")));
    let bytes = (DATAGRAMS * 10).to_string();
    let q = format!("unixtrace_bytes_total{{path=\"{dgram}\",direction=\"client_to_server\"}}");
    wait_for_value(theirs, &q, &bytes, &log);
    let q = format!("unixtrace_messages_total{{path=\"{dgram}\",direction=\"client_to_server\"}}");
    wait_for_value(theirs, &q, &DATAGRAMS.to_string(), &log);
    wait_for_value(theirs, "unixtrace_lost_events_total", "0", &log);

    drop(prometheus);
    tracer.interrupt();
    let (code, _, stderr) = tracer.finish();
    assert_eq!(code, Some(0), "unixtrace: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
