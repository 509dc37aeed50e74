//! `--metrics ADDR:PORT`: what the capture saw, as Prometheus counters and
//! gauges, served over HTTP for a Prometheus server to scrape.
//!
//! Per event the consumer only adds to counts in a map indexed by label set
//! (no allocation once a label set is known); once a second the counts are
//! encoded (prometheus-client) into the text that scrapes are answered
//! with. A scrape never waits for the event loop, and at most a second old.
//!
//! Label sets are bounded (`--metrics-series`): the first N (client, server,
//! path) sets seen get series of their own and later ones are counted under
//! `other`, so that a fork bomb or a flood of random socket names cannot
//! blow up a Prometheus server. A series once given stays: a counter must
//! not move from one series to another.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use foldhash::{HashMap, HashMapExt};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use unixpeer_common::EventKind;

use super::{FollowSummary, Peer, Resolved, Tracker};
use crate::holders::Comm;

/// The label a series' values fall under past `--metrics-series`.
const OTHER: &str = "other";
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// (client, server, path) of a connection; `None` in the server for a
/// connect nobody was known to listen for.
type Key = (Comm, Option<Comm>, Option<Arc<str>>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    client: String,
    server: String,
    path: String,
}

/// A pair's labels and which way the bytes or messages went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    client: String,
    server: String,
    path: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    client: String,
    path: String,
    errno: String,
}

#[derive(Default)]
struct Pair {
    connections: u64,
    active: i64,
    /// Counted in the kernel, added when the client's socket closes:
    /// client to server, then server to client.
    bytes: [u64; 2],
    msgs: [u64; 2],
}

/// The `direction` label of `Pair::bytes` and `Pair::msgs`, in their order.
const DIRECTIONS: [&str; 2] = ["client_to_server", "server_to_client"];

type FailureKey = (Comm, Option<Arc<str>>, i32);

/// The consumer's side: counts by label set. Keys past the limit are not
/// remembered: they go to `other` by one failed lookup each.
pub(crate) struct Metrics {
    max_series: usize,
    pairs: HashMap<Key, usize>,
    pair_counts: Vec<(PairLabels, Pair)>,
    other_pair: Option<usize>,
    failures: HashMap<FailureKey, usize>,
    failure_counts: Vec<(FailureLabels, u64)>,
    other_failure: Option<usize>,
    /// Client sockets whose connection is open, and its series: the close
    /// of the client ends it. Bounded by the sockets the model has.
    open: HashMap<u64, usize>,
    /// Resyncs seen at the last publish: after one, `open` may hold
    /// sockets whose close was lost.
    resyncs: u64,
    /// What scrapes are answered with, refreshed by `publish`.
    text: Arc<Mutex<String>>,
}

impl Metrics {
    pub(crate) fn new(max_series: usize) -> Self {
        Self {
            max_series: max_series.max(1),
            pairs: HashMap::new(),
            pair_counts: Vec::new(),
            other_pair: None,
            failures: HashMap::new(),
            failure_counts: Vec::new(),
            other_failure: None,
            open: HashMap::new(),
            resyncs: 0,
            text: Arc::new(Mutex::new(String::new())),
        }
    }

    /// An event as output shows it (past the filters).
    pub(crate) fn observe(&mut self, r: &Resolved) {
        let e = &r.event;
        let server = || match &r.peer {
            Peer::Holders(h) => h.first().map(|h| h.comm),
            Peer::Listener(h) => Some(h.comm),
            Peer::Unknown => None,
        };
        match e.kind {
            // A datagram socket's first send to an address: a connection
            // of a sort, with nothing left open.
            EventKind::DgramSend => {
                let at = self.pair((e.comm, server(), e.path.clone()));
                self.pair_counts[at].1.connections += 1;
            }
            EventKind::Connect | EventKind::DgramConnect => {
                let at = self.pair((e.comm, server(), e.path.clone()));
                let pair = &mut self.pair_counts[at].1;
                pair.connections += 1;
                if let Some(inode) = e.inode {
                    pair.active += 1;
                    if let Some(before) = self.open.insert(inode, at) {
                        // A socket connected again (datagram): the old
                        // connection is over.
                        self.pair_counts[before].1.active -= 1;
                    }
                }
            }
            EventKind::ConnectFailed => {
                let at = self.failure(e.comm, e.path.clone(), e.errno);
                self.failure_counts[at].1 += 1;
            }
            EventKind::Close => {
                if let Some(at) = e.inode.and_then(|i| self.open.remove(&i)) {
                    let pair = &mut self.pair_counts[at].1;
                    pair.active -= 1;
                    if let Some(t) = e.traffic {
                        pair.bytes[0] += t.bytes_sent;
                        pair.bytes[1] += t.bytes_received;
                        pair.msgs[0] += t.msgs_sent;
                        pair.msgs[1] += t.msgs_received;
                    }
                }
                for to in &e.sent_to {
                    let at = self.pair((e.comm, to.holder.as_ref().map(|h| h.comm), to.path.clone()));
                    let pair = &mut self.pair_counts[at].1;
                    pair.bytes[0] += to.bytes;
                    pair.msgs[0] += to.msgs;
                }
            }
            _ => {}
        }
    }

    fn pair(&mut self, key: Key) -> usize {
        if let Some(&at) = self.pairs.get(&key) {
            return at;
        }
        // One series is kept for `other`.
        if self.pair_counts.len() + 1 >= self.max_series {
            let counts = &mut self.pair_counts;
            return *self.other_pair.get_or_insert_with(|| {
                counts.push((
                    PairLabels { client: OTHER.into(), server: OTHER.into(), path: OTHER.into() },
                    Pair::default(),
                ));
                counts.len() - 1
            });
        }
        let labels = PairLabels {
            client: key.0.to_str().into_owned(),
            server: key.1.map_or_else(|| "?".to_owned(), |s| s.to_str().into_owned()),
            path: key.2.as_deref().unwrap_or("").to_owned(),
        };
        self.pair_counts.push((labels, Pair::default()));
        self.pairs.insert(key, self.pair_counts.len() - 1);
        self.pair_counts.len() - 1
    }

    fn failure(&mut self, client: Comm, path: Option<Arc<str>>, errno: i32) -> usize {
        let key = (client, path, errno);
        if let Some(&at) = self.failures.get(&key) {
            return at;
        }
        if self.failure_counts.len() + 1 >= self.max_series {
            let counts = &mut self.failure_counts;
            return *self.other_failure.get_or_insert_with(|| {
                let labels = FailureLabels { client: OTHER.into(), path: OTHER.into(), errno: OTHER.into() };
                counts.push((labels, 0));
                counts.len() - 1
            });
        }
        let labels = FailureLabels {
            client: client.to_str().into_owned(),
            path: key.1.as_deref().unwrap_or("").to_owned(),
            errno: super::render::errno_name(errno).into_owned(),
        };
        self.failure_counts.push((labels, 0));
        self.failures.insert(key, self.failure_counts.len() - 1);
        self.failure_counts.len() - 1
    }

    /// Once a second: the counts, and unixtrace's own health, as the text
    /// the next scrapes get.
    pub(crate) fn publish(&mut self, summary: &FollowSummary, tracker: &Tracker) {
        if summary.resyncs != self.resyncs {
            // Closes were lost: connections whose client the model no
            // longer has are over.
            self.resyncs = summary.resyncs;
            let counts = &mut self.pair_counts;
            self.open.retain(|&inode, &mut at| {
                let open = tracker.has_socket(inode);
                if !open {
                    counts[at].1.active -= 1;
                }
                open
            });
        }
        let mut registry = Registry::default();
        let connections = Family::<PairLabels, Counter>::default();
        let active = Family::<PairLabels, Gauge>::default();
        let bytes = Family::<FlowLabels, Counter>::default();
        let msgs = Family::<FlowLabels, Counter>::default();
        // Two keys may give the same labels (names that differ only in
        // bytes that are not UTF-8): their series add up.
        for (labels, pair) in &self.pair_counts {
            connections.get_or_create(labels).inc_by(pair.connections);
            active.get_or_create(labels).inc_by(pair.active);
            for (i, direction) in DIRECTIONS.into_iter().enumerate() {
                if pair.bytes[i] == 0 && pair.msgs[i] == 0 {
                    continue;
                }
                let flow = FlowLabels {
                    client: labels.client.clone(),
                    server: labels.server.clone(),
                    path: labels.path.clone(),
                    direction,
                };
                bytes.get_or_create(&flow).inc_by(pair.bytes[i]);
                msgs.get_or_create(&flow).inc_by(pair.msgs[i]);
            }
        }
        registry.register(
            "unixtrace_connections",
            "Connections made (connect, or a datagram socket's first send to an address), by client command, \
             server command and socket path",
            connections,
        );
        registry.register(
            "unixtrace_bytes",
            "Bytes that went across connections closed so far (counted in the kernel where it can), by client, \
             server, path and direction",
            bytes,
        );
        registry.register(
            "unixtrace_messages",
            "Send or receive calls that moved bytes on connections closed so far, by client, server, path and \
             direction",
            msgs,
        );
        registry.register(
            "unixtrace_active_connections",
            "Connections whose client socket is still open, by client, server and path",
            active,
        );
        let failures = Family::<FailureLabels, Counter>::default();
        for (labels, n) in &self.failure_counts {
            failures.get_or_create(labels).inc_by(*n);
        }
        registry.register("unixtrace_connect_failures", "Failed connects, by client, path and errno", failures);
        let counter = |n: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(n);
            c
        };
        registry.register("unixtrace_events", "Events received from the kernel", counter(summary.received));
        registry.register(
            "unixtrace_lost_events",
            "Events the kernel dropped (ring buffer full)",
            counter(summary.lost),
        );
        registry.register(
            "unixtrace_resyncs",
            "Checks of the model against the kernel after loss",
            counter(summary.resyncs),
        );
        let gauge = |n: i64| {
            let g = Gauge::<i64>::default();
            g.set(n);
            g
        };
        registry.register(
            "unixtrace_tracked_sockets",
            "Sockets the live model holds",
            gauge(tracker.sockets_len() as i64),
        );
        registry.register(
            "unixtrace_series_limit",
            "Label sets given series of their own (--metrics-series); later ones count as other",
            gauge(self.max_series as i64),
        );
        registry.register("unixtrace_resident_memory_bytes", "unixtrace's resident memory", gauge(resident_bytes()));
        let mut text = String::with_capacity(4096);
        if encode(&mut text, &registry).is_ok()
            && let Ok(mut shared) = self.text.lock()
        {
            *shared = text;
        }
    }

    /// What the server task answers with.
    pub(crate) fn shared_text(&self) -> Arc<Mutex<String>> {
        Arc::clone(&self.text)
    }
}

fn resident_bytes() -> i64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<i64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0)
}

/// The listening socket, bound before privileges are dropped (a port below
/// 1024 takes CAP_NET_BIND_SERVICE).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Answers `GET /metrics` with the latest text, anything else with 404,
/// each connection in a task of its own so a slow client holds up no other.
pub(crate) async fn serve(listener: std::net::TcpListener, text: Arc<Mutex<String>>) {
    let Ok(listener) = TcpListener::from_std(listener) else { return };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: try again later rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let text = Arc::clone(&text);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &text)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, text: &Mutex<String>) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let path = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let wanted = line.starts_with(b"GET ") && (path == b"/metrics" || path.starts_with(b"/metrics?"));
    let response = if wanted {
        let body = text.lock().map(|t| t.clone()).unwrap_or_default();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = "unixtrace serves its metrics at /metrics\n";
        format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{DgramTotal, Event, Traffic},
        holders::Holder,
    };

    fn connect(inode: u64, client: &str, server: &str, path: &str) -> Resolved {
        let mut e = Event::sample(EventKind::Connect, 1, 10, client, inode, 0);
        e.path = Some(path.into());
        let peer = Peer::Listener(Holder { pid: 20, comm: server.into(), fd: Some(3) });
        Resolved { event: e, peer }
    }

    fn published(m: &mut Metrics) -> String {
        m.publish(&FollowSummary::default(), &Tracker::default());
        m.shared_text().lock().unwrap().clone()
    }

    #[test]
    fn connections_count_by_pair_and_close_ends_them() {
        let mut m = Metrics::new(100);
        for i in 0..3 {
            m.observe(&connect(100 + i, "curl", "dockerd", "/run/docker.sock"));
        }
        m.observe(&Resolved { event: Event::sample(EventKind::Close, 2, 10, "curl", 100, 0), peer: Peer::Unknown });
        let text = published(&mut m);
        let labels = r#"{client="curl",server="dockerd",path="/run/docker.sock"}"#;
        assert!(text.contains(&format!("unixtrace_connections_total{labels} 3\n")), "{text}");
        assert!(text.contains(&format!("unixtrace_active_connections{labels} 2\n")), "{text}");
    }

    #[test]
    fn bytes_count_at_the_clients_close_and_datagrams_by_address_by_receiver() {
        let mut m = Metrics::new(100);
        m.observe(&connect(100, "curl", "dockerd", "/run/docker.sock"));
        let mut close = Event::sample(EventKind::Close, 2, 10, "curl", 100, 0);
        close.traffic = Some(Traffic { bytes_sent: 300, bytes_received: 4900, msgs_sent: 3, msgs_received: 1 });
        m.observe(&Resolved { event: close, peer: Peer::Unknown });
        let mut send = Event::sample(EventKind::DgramSend, 3, 11, "logger", 200, 0);
        send.path = Some("/dev/log".into());
        let journald = Holder { pid: 1, comm: "journald".into(), fd: Some(3) };
        m.observe(&Resolved { event: send, peer: Peer::Holders(vec![journald].into()) });
        let mut close = Event::sample(EventKind::Close, 4, 11, "logger", 200, 0);
        close.sent_to =
            vec![DgramTotal { receiver: 7, bytes: 60, msgs: 3, holder: Some(journald), path: Some("/dev/log".into()) }];
        m.observe(&Resolved { event: close, peer: Peer::Unknown });
        let text = published(&mut m);
        let docker = r#"client="curl",server="dockerd",path="/run/docker.sock""#;
        for want in [
            format!("unixtrace_bytes_total{{{docker},direction=\"client_to_server\"}} 300\n"),
            format!("unixtrace_bytes_total{{{docker},direction=\"server_to_client\"}} 4900\n"),
            format!("unixtrace_messages_total{{{docker},direction=\"client_to_server\"}} 3\n"),
            format!("unixtrace_messages_total{{{docker},direction=\"server_to_client\"}} 1\n"),
            r#"unixtrace_connections_total{client="logger",server="journald",path="/dev/log"} 1"#.to_owned(),
            r#"unixtrace_bytes_total{client="logger",server="journald",path="/dev/log",direction="client_to_server"} 60"#
                .to_owned(),
        ] {
            assert!(text.contains(&want), "{want} in:\n{text}");
        }
        assert!(!text.contains(r#"path="/dev/log",direction="server_to_client""#), "nothing came back: {text}");
    }

    #[test]
    fn past_the_limit_label_sets_count_as_other_and_names_are_escaped() {
        let mut m = Metrics::new(3);
        m.observe(&connect(1, "a\"b\n", "s", "/p"));
        m.observe(&connect(2, "c", "s", "/p2"));
        m.observe(&connect(3, "d", "s", "/p3"));
        m.observe(&connect(4, "e", "s", "/p4"));
        let text = published(&mut m);
        assert!(text.contains(r#"unixtrace_connections_total{client="a\"b\n",server="s",path="/p"} 1"#), "{text}");
        assert!(
            text.contains(r#"unixtrace_connections_total{client="other",server="other",path="other"} 2"#),
            "{text}"
        );
        assert_eq!(text.matches("unixtrace_connections_total{").count(), 3, "{text}");
    }
}
