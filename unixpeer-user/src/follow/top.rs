//! `--top`: the busiest connections and names by bytes (or messages) per
//! second, both ends named, refreshed like top(1). Each refresh reads the
//! kernel's per-socket counts (the `TRAFFIC` map, bounded by its size) and
//! takes the difference from the previous reading; sockets closed in
//! between count with the totals their close carried.

use std::collections::HashMap;
use std::io::Write as _;

use serde_json::json;

use super::{Holder, Peer, Resolved, consumer::ConnectionFilter, render};
use crate::events::Traffic;
use crate::model::Model;
use crate::output::{JSON_SCHEMA, escape};

/// What ranks the rows (`--sort`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    #[default]
    Bytes,
    Msgs,
}

#[derive(Clone, Debug)]
pub struct TopOptions {
    pub interval: std::time::Duration,
    /// Stop after this many refreshes (`--iterations`), printing each
    /// below the last instead of redrawing the screen.
    pub iterations: Option<u64>,
    pub sort: SortBy,
    /// Rows per table.
    pub limit: usize,
    /// Redraw in place (a terminal, no `--iterations`).
    pub redraw: bool,
}

/// One end of a connection, as the model (or its close) named it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct End {
    inode: u64,
    holder: Option<Holder>,
}

/// A socket closed since the last refresh: the model has let it go, so its
/// names are kept from its close line.
struct Closed {
    me: End,
    peer: End,
    path: Option<String>,
    total: Traffic,
}

/// One connection's movement over the interval, A being its lower inode.
#[derive(Debug, Default)]
struct Row {
    a: Option<End>,
    b: Option<End>,
    path: Option<String>,
    /// Bytes and messages A sent (or B received, where A's count is gone).
    a_to_b: (u64, u64),
    b_to_a: (u64, u64),
}

impl Row {
    fn bytes(&self) -> u64 {
        self.a_to_b.0 + self.b_to_a.0
    }

    fn msgs(&self) -> u64 {
        self.a_to_b.1 + self.b_to_a.1
    }
}

pub(crate) struct Top {
    opts: TopOptions,
    /// The counts each socket had at the last refresh. Bounded by the
    /// kernel map: only sockets it holds are kept.
    last: HashMap<u64, Traffic>,
    closed: Vec<Closed>,
    last_ns: u64,
    pub(crate) done: u64,
}

/// Closed sockets kept between refreshes, beyond which the oldest go: a
/// connection storm must not grow this without bound.
const CLOSED_MAX: usize = 65536;

impl Top {
    pub(crate) fn new(opts: TopOptions, now_ns: u64) -> Self {
        Self { opts, last: HashMap::new(), closed: Vec::new(), last_ns: now_ns, done: 0 }
    }

    /// The counts before the first refresh: its rates are of its interval,
    /// not of every socket's life so far.
    pub(crate) fn prime(&mut self, counts: Vec<(u64, Traffic)>) {
        self.last = counts.into_iter().collect();
    }

    pub(crate) fn interval(&self) -> std::time::Duration {
        self.opts.interval
    }

    pub(crate) fn finished(&self) -> bool {
        self.opts.iterations.is_some_and(|n| self.done >= n)
    }

    /// A close line: the socket's last counts, and who it was.
    pub(crate) fn closed(&mut self, r: &Resolved) {
        let e = &r.event;
        let (Some(inode), Some(total)) = (e.inode, e.traffic) else { return };
        if self.closed.len() >= CLOSED_MAX {
            self.closed.remove(0);
        }
        let peer_holder = match &r.peer {
            Peer::Holders(h) => h.first().copied(),
            Peer::Listener(h) => Some(*h),
            Peer::Unknown => None,
        };
        self.closed.push(Closed {
            me: End { inode, holder: Some(Holder::of(e.pid, e.comm, e.fd)) },
            peer: End { inode: e.peer_inode.unwrap_or(0), holder: peer_holder },
            path: e.path.as_deref().map(str::to_owned),
            total,
        });
    }

    /// One refresh from the kernel's counts `now`, written to `out`.
    pub(crate) fn refresh(
        &mut self,
        out: &mut Vec<u8>,
        now: Vec<(u64, Traffic)>,
        (model, wanted): (&Model, &ConnectionFilter<'_>),
        now_ns: u64,
        json: bool,
    ) {
        let secs = (now_ns.saturating_sub(self.last_ns) as f64 / 1e9).max(1e-3);
        let mut rows: HashMap<(u64, u64), Row> = HashMap::new();
        let mut add = |me: End, peer: End, path: Option<String>, moved: Traffic| {
            if moved.msgs_sent + moved.msgs_received == 0 {
                return;
            }
            let me_is_a = peer.inode == 0 || me.inode < peer.inode;
            let key = if me_is_a { (me.inode, peer.inode) } else { (peer.inode, me.inode) };
            let row = rows.entry(key).or_default();
            let (mine, theirs) =
                if me_is_a { (&mut row.a_to_b, &mut row.b_to_a) } else { (&mut row.b_to_a, &mut row.a_to_b) };
            // Each direction once: from its sender where it is counted,
            // else from its receiver.
            mine.0 = mine.0.max(moved.bytes_sent);
            mine.1 = mine.1.max(moved.msgs_sent);
            theirs.0 = theirs.0.max(moved.bytes_received);
            theirs.1 = theirs.1.max(moved.msgs_received);
            if row.path.is_none() {
                row.path = path;
            }
            let (a, b) = if me_is_a { (&mut row.a, &mut row.b) } else { (&mut row.b, &mut row.a) };
            if a.as_ref().is_none_or(|e| e.holder.is_none()) {
                *a = Some(me);
            }
            if b.as_ref().is_none_or(|e| e.holder.is_none()) && peer.inode != 0 {
                *b = Some(peer);
            }
        };
        let mut seen = HashMap::with_capacity(now.len());
        for (inode, t) in now {
            let before = self.last.get(&inode).copied();
            let moved = minus(t, before.unwrap_or_default());
            let peer = model.get(inode).and_then(|s| s.peer_inode()).unwrap_or(0);
            // The closes that reach `closed` have passed the filter already.
            if !wanted(model, inode, (peer != 0).then_some(peer)) {
                // A socket the model does not know yet (its accept still
                // waits for the connect) may match once it does: what it
                // moved meanwhile is shown then.
                if model.contains(inode) {
                    seen.insert(inode, t);
                } else if let Some(before) = before {
                    seen.insert(inode, before);
                }
                continue;
            }
            seen.insert(inode, t);
            let path = model.get(inode).and_then(|s| s.path.as_deref().map(str::to_owned));
            add(end_of(model, inode), end_of(model, peer), path, moved);
        }
        for c in std::mem::take(&mut self.closed) {
            let moved = minus(c.total, self.last.get(&c.me.inode).copied().unwrap_or_default());
            seen.remove(&c.me.inode);
            add(c.me, c.peer, c.path, moved);
        }
        self.last = seen;
        self.last_ns = now_ns;
        self.done += 1;
        let mut rows: Vec<Row> = rows.into_values().collect();
        let rank = |r: &Row| match self.opts.sort {
            SortBy::Bytes => (r.bytes(), r.msgs()),
            SortBy::Msgs => (r.msgs(), r.bytes()),
        };
        rows.sort_by(|x, y| rank(y).cmp(&rank(x)).then_with(|| key_of(x).cmp(&key_of(y))));
        if json {
            self.write_json(out, &rows, secs, now_ns);
        } else {
            self.write_text(out, &rows, secs);
        }
    }

    fn write_text(&self, out: &mut Vec<u8>, rows: &[Row], secs: f64) {
        if self.opts.redraw {
            // Home and clear, as top does.
            out.extend_from_slice(b"\x1b[H\x1b[2J");
        } else if self.done > 1 {
            out.push(b'\n');
        }
        let sort = match self.opts.sort {
            SortBy::Bytes => "bytes",
            SortBy::Msgs => "messages",
        };
        let _ = writeln!(
            out,
            "unixtrace --top: {} connections moved data in the last {secs:.1} s, by {sort}/s",
            rows.len()
        );
        let _ = writeln!(
            out,
            "{:>10} {:>8} {:>10} {:>10}  {:<28} {:<28} PATH",
            "BYTES/S", "MSGS/S", "A→B/S", "B→A/S", "A", "B"
        );
        let rate = |n: u64| (n as f64 / secs).round() as u64;
        for r in rows.iter().take(self.opts.limit) {
            let mut line = Vec::new();
            let _ = write!(line, "{:>10} {:>8} ", size(rate(r.bytes())), rate(r.msgs()));
            let _ = write!(line, "{:>10} {:>10}  ", size(rate(r.a_to_b.0)), size(rate(r.b_to_a.0)));
            push_end(&mut line, r.a.as_ref(), 28);
            line.push(b' ');
            push_end(&mut line, r.b.as_ref(), 28);
            line.push(b' ');
            match &r.path {
                Some(p) => escape::push(&mut line, p),
                None => line.push(b'-'),
            }
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        let paths = by_path(rows);
        if !paths.is_empty() {
            let _ = writeln!(out, "\n{:>10} {:>8} {:>6}  PATH", "BYTES/S", "MSGS/S", "CONNS");
            for (path, bytes, msgs, conns) in paths.iter().take(self.opts.limit) {
                let _ = write!(out, "{:>10} {:>8} {:>6}  ", size(rate(*bytes)), rate(*msgs), conns);
                escape::push(out, path);
                out.push(b'\n');
            }
        }
    }

    fn write_json(&self, out: &mut Vec<u8>, rows: &[Row], secs: f64, now_ns: u64) {
        let end = |e: Option<&End>| {
            e.map(|e| {
                let h = e.holder;
                json!({"inode": e.inode, "pid": h.map(|h| h.pid), "comm": h.map(|h| h.comm.to_str().into_owned()), "fd": h.and_then(|h| h.fd)})
            })
        };
        for r in rows.iter().take(self.opts.limit) {
            let rec = json!({
                "kind": "top", "schema": JSON_SCHEMA, "iteration": self.done, "ts": now_ns, "interval_s": secs,
                "a": end(r.a.as_ref()), "b": end(r.b.as_ref()), "path": r.path,
                "bytes_a_to_b": r.a_to_b.0, "msgs_a_to_b": r.a_to_b.1,
                "bytes_b_to_a": r.b_to_a.0, "msgs_b_to_a": r.b_to_a.1,
                "bytes_per_s": r.bytes() as f64 / secs, "msgs_per_s": r.msgs() as f64 / secs,
            });
            let _ = writeln!(out, "{rec}");
        }
        for (path, bytes, msgs, conns) in by_path(rows).iter().take(self.opts.limit) {
            let rec = json!({
                "kind": "top_path", "schema": JSON_SCHEMA, "iteration": self.done, "ts": now_ns, "interval_s": secs,
                "path": path, "connections": conns, "bytes": bytes, "msgs": msgs,
                "bytes_per_s": *bytes as f64 / secs, "msgs_per_s": *msgs as f64 / secs,
            });
            let _ = writeln!(out, "{rec}");
        }
    }
}

fn key_of(r: &Row) -> (u64, u64) {
    (r.a.as_ref().map_or(0, |e| e.inode), r.b.as_ref().map_or(0, |e| e.inode))
}

/// Names with what moved through them: (path, bytes, msgs, connections),
/// busiest first.
fn by_path(rows: &[Row]) -> Vec<(String, u64, u64, u64)> {
    let mut paths: HashMap<&str, (u64, u64, u64)> = HashMap::new();
    for r in rows {
        if let Some(p) = &r.path {
            let e = paths.entry(p).or_default();
            *e = (e.0 + r.bytes(), e.1 + r.msgs(), e.2 + 1);
        }
    }
    let mut v: Vec<_> = paths.into_iter().map(|(p, (b, m, c))| (p.to_owned(), b, m, c)).collect();
    v.sort_by(|x, y| (y.1, y.2).cmp(&(x.1, x.2)).then_with(|| x.0.cmp(&y.0)));
    v
}

fn end_of(model: &Model, inode: u64) -> End {
    End { inode, holder: (inode != 0).then(|| model.holders(inode).first().copied()).flatten() }
}

fn minus(now: Traffic, before: Traffic) -> Traffic {
    // A smaller count than before: the map evicted the socket and began
    // again; all of it is new.
    if now.msgs_sent < before.msgs_sent || now.msgs_received < before.msgs_received {
        return now;
    }
    Traffic {
        bytes_sent: now.bytes_sent.saturating_sub(before.bytes_sent),
        bytes_received: now.bytes_received.saturating_sub(before.bytes_received),
        msgs_sent: now.msgs_sent - before.msgs_sent,
        msgs_received: now.msgs_received - before.msgs_received,
    }
}

fn size(bytes: u64) -> String {
    let mut out = Vec::new();
    render::push_bytes_size(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// `comm[pid]:fd`, escaped, padded to `width` columns.
fn push_end(out: &mut Vec<u8>, end: Option<&End>, width: usize) {
    let start = out.len();
    match end.and_then(|e| e.holder) {
        Some(h) => {
            escape::push(out, &h.comm.to_str());
            let _ = write!(out, "[{}]", h.pid);
            if let Some(fd) = h.fd {
                let _ = write!(out, ":{fd}");
            }
        }
        None => out.push(b'?'),
    }
    let shown = String::from_utf8_lossy(&out[start..]).chars().count();
    out.extend(std::iter::repeat_n(b' ', width.saturating_sub(shown)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::model::{KernelState, Socket};
    use unixpeer_common::EventKind;

    fn t(bytes_sent: u64, bytes_received: u64, msgs_sent: u64, msgs_received: u64) -> Traffic {
        Traffic { bytes_sent, bytes_received, msgs_sent, msgs_received }
    }

    fn opts(sort: SortBy) -> TopOptions {
        TopOptions { interval: std::time::Duration::from_secs(1), iterations: Some(2), sort, limit: 10, redraw: false }
    }

    /// Two connected sockets 1 and 2 held by server[10] and client[20].
    fn model() -> Model {
        let mut m = Model::default();
        for (inode, peer, pid, comm) in [(1, 2, 10, "server"), (2, 1, 20, "client")] {
            let mut s = Socket::sample(inode, KernelState::Established, Some(peer));
            s.path = Some("/run/app.sock".into());
            m.insert_socket(s);
            m.holders_mut(inode).push(Holder { pid, comm: comm.into(), fd: Some(3) });
        }
        m
    }

    fn all(_: &Model, _: u64, _: Option<u64>) -> bool {
        true
    }

    fn json_rows(out: &[u8]) -> Vec<serde_json::Value> {
        out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
    }

    #[test]
    fn both_ends_make_one_row_with_each_direction_once() {
        let mut top = Top::new(opts(SortBy::Bytes), 0);
        top.prime(vec![(1, t(100, 50, 1, 1)), (2, t(50, 100, 1, 1))]);
        let mut out = Vec::new();
        // The server sent 1000 more, the client read 900 of them so far.
        top.refresh(
            &mut out,
            vec![(1, t(1100, 60, 3, 2)), (2, t(60, 1000, 2, 3))],
            (&model(), &all),
            1_000_000_000,
            true,
        );
        let rows = json_rows(&out);
        assert_eq!(rows.len(), 2, "one connection row and one path row: {rows:?}");
        let r = &rows[0];
        assert_eq!((r["a"]["comm"].as_str(), r["b"]["comm"].as_str()), (Some("server"), Some("client")));
        assert_eq!((r["bytes_a_to_b"].as_u64(), r["bytes_b_to_a"].as_u64()), (Some(1000), Some(10)));
        assert_eq!((r["msgs_a_to_b"].as_u64(), r["msgs_b_to_a"].as_u64()), (Some(2), Some(1)));
        assert_eq!((rows[1]["kind"].as_str(), rows[1]["bytes"].as_u64()), (Some("top_path"), Some(1010)));
        assert!(!top.finished());
    }

    #[test]
    fn a_socket_closed_between_refreshes_counts_what_it_moved_since_the_last() {
        let mut top = Top::new(opts(SortBy::Msgs), 0);
        top.prime(vec![(2, t(10, 0, 1, 0))]);
        let mut close = Event::sample(EventKind::Close, 5, 20, "client", 2, 1);
        close.traffic = Some(t(70, 0, 4, 0));
        let peer = Peer::Holders(smallvec::smallvec![Holder { pid: 10, comm: "server".into(), fd: Some(3) }]);
        top.closed(&Resolved { event: close, peer });
        let mut out = Vec::new();
        top.refresh(&mut out, Vec::new(), (&Model::default(), &all), 2_000_000_000, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("by messages/s"), "{text}");
        // 60 bytes in 3 messages over 2 s.
        let row = text.lines().find(|l| l.contains("client[20]:3")).unwrap_or_else(|| panic!("{text}"));
        assert!(row.contains("server[10]:3") && row.contains("/run/app.sock"), "{row}");
        assert_eq!(row.split_whitespace().take(3).collect::<Vec<_>>(), ["30", "B", "2"], "{row}");
        top.refresh(&mut Vec::new(), Vec::new(), (&Model::default(), &all), 3_000_000_000, false);
        assert!(top.finished());
    }

    #[test]
    fn only_the_connections_the_filter_wants_are_shown() {
        let mut top = Top::new(opts(SortBy::Bytes), 0);
        let mut m = model();
        // A third socket, alone, held by a process the filter leaves out.
        m.insert_socket(Socket::sample(3, KernelState::Established, None));
        m.holders_mut(3).push(Holder { pid: 30, comm: "other".into(), fd: Some(4) });
        let server_or_client = |m: &Model, a: u64, b: Option<u64>| {
            [Some(a), b].into_iter().flatten().any(|i| m.holders(i).iter().any(|h| h.pid == 20))
        };
        let mut out = Vec::new();
        let now = vec![(1, t(100, 0, 1, 0)), (2, t(0, 100, 0, 1)), (3, t(5000, 0, 9, 0))];
        top.refresh(&mut out, now, (&m, &server_or_client), 1_000_000_000, true);
        let rows = json_rows(&out);
        let comms: Vec<_> = rows.iter().filter_map(|r| r["a"]["comm"].as_str()).collect();
        assert_eq!(comms, ["server"], "{rows:?}");
    }

    #[test]
    fn a_socket_the_model_learns_late_shows_what_it_moved_before() {
        let mut top = Top::new(opts(SortBy::Bytes), 0);
        let named = |m: &Model, a: u64, _: Option<u64>| !m.holders(a).is_empty();
        let mut out = Vec::new();
        // Its accept is still waiting for the connect: not in the model.
        top.refresh(&mut out, vec![(1, t(0, 500, 0, 2))], (&Model::default(), &named), 1_000_000_000, true);
        assert!(json_rows(&out).iter().all(|r| r["kind"] != "top"), "{out:?}");
        out.clear();
        top.refresh(&mut out, vec![(1, t(0, 700, 0, 3))], (&model(), &named), 2_000_000_000, true);
        let rows = json_rows(&out);
        assert_eq!(rows[0]["bytes_b_to_a"].as_u64(), Some(700), "{rows:?}");
    }

    #[test]
    fn counts_that_went_down_were_evicted_and_start_again() {
        assert_eq!(minus(t(5, 0, 1, 0), t(900, 0, 9, 0)), t(5, 0, 1, 0));
        assert_eq!(minus(t(905, 3, 10, 1), t(900, 0, 9, 0)), t(5, 3, 1, 1));
    }
}
