//! `-r FILE --summary`: per client, server and name, how many connections,
//! how long they lived, how many failed, what they moved each way; then the
//! busiest processes by connections and the busiest pairs by bytes.
//!
//! Processes are grouped by command name (or with `--by`, by systemd unit
//! or container): a server that forks per client, or a client run a
//! thousand times, is one line rather than a thousand.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use serde_json::json;

use super::conns::{Conn, ConnKind, Conns, Flow};
use crate::holders::Holder;
use crate::identity::Identity;
use crate::output::JSON_SCHEMA;
use crate::output::escape::escaped;

#[derive(Debug, Default)]
struct Group {
    connections: u64,
    failed: u64,
    open: u64,
    lifetimes: Vec<u64>,
    moved: Moved,
}

/// What connections moved, each way; None where none was counted.
#[derive(Debug, Default)]
struct Moved {
    /// Connections whose counts are known (closed while counting).
    counted: u64,
    to_server: Option<Flow>,
    to_client: Option<Flow>,
}

impl Moved {
    fn add(&mut self, c: &Conn) {
        let (to_server, to_client) = (c.to_server(), c.to_client());
        if to_server.is_some() || to_client.is_some() {
            self.counted += 1;
        }
        Flow::add(&mut self.to_server, to_server);
        Flow::add(&mut self.to_client, to_client);
    }

    fn both(&self) -> Option<Flow> {
        Flow::both(self.to_server, self.to_client)
    }

    /// The JSON keys, null where unknown.
    fn json(&self) -> impl Iterator<Item = (String, serde_json::Value)> {
        let bytes = |f: Option<Flow>| json!(f.map(|f| f.bytes));
        let msgs = |f: Option<Flow>| json!(f.map(|f| f.msgs));
        [
            ("counted", json!(self.counted)),
            ("bytes_client_to_server", bytes(self.to_server)),
            ("bytes_server_to_client", bytes(self.to_client)),
            ("msgs_client_to_server", msgs(self.to_server)),
            ("msgs_server_to_client", msgs(self.to_client)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
    }

    /// The text cells: bytes each way and messages both ways.
    fn cells(&self) -> [String; 3] {
        [
            size(self.to_server.map(|f| f.bytes)),
            size(self.to_client.map(|f| f.bytes)),
            count(self.both().map(|f| f.msgs)),
        ]
    }
}

/// (client, server, path, type), the ends named as `By` says.
type Key = (String, String, String, String);

/// What names each end of a summary's rows (`--by`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// The command name.
    #[default]
    Comm,
    /// The systemd unit (`-` outside any).
    Unit,
    /// The container, as `runtime:id` (`-` outside any).
    Container,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            Self::Comm => "comm",
            Self::Unit => "unit",
            Self::Container => "container",
        }
    }

    /// The exact name of one end, for grouping and JSON.
    pub(crate) fn name(self, who: &Holder, id: Option<&Identity>) -> String {
        match self {
            Self::Comm => who.comm.to_str().into_owned(),
            Self::Unit => id.and_then(|i| i.unit.as_deref()).unwrap_or("-").to_owned(),
            Self::Container => id
                .and_then(|i| i.container.as_ref())
                .map_or_else(|| "-".to_owned(), |c| format!("{}:{}", c.runtime.as_str(), c.id)),
        }
    }

    /// A name as people see it: escaped, a container id cut to 12
    /// characters as `docker ps` shows it.
    pub(crate) fn shown(self, name: &str) -> String {
        match (self, name.split_once(':')) {
            (Self::Container, Some((runtime, id))) => {
                escaped(&format!("{runtime}:{}", id.chars().take(12).collect::<String>())).into_owned()
            }
            _ => escaped(name).into_owned(),
        }
    }

    fn headers(self) -> [&'static str; 2] {
        match self {
            Self::Comm => ["CLIENT", "SERVER"],
            Self::Unit => ["CLIENT UNIT", "SERVER UNIT"],
            Self::Container => ["CLIENT CONTAINER", "SERVER CONTAINER"],
        }
    }
}

/// A process, its connection count, and its peers by count.
type Busy = (Holder, u64, Vec<(Holder, u64)>);

/// A client and a server process, what their connections moved, and how
/// many connections.
type BusyPair = ((Holder, Holder), u64, Moved);

/// How many busiest processes (and pairs) to list.
const BUSIEST: usize = 10;

pub fn write(out: &mut impl Write, conns: &Conns, json_out: bool, by: By) -> io::Result<()> {
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    let mut per_proc: HashMap<Holder, HashMap<Holder, u64>> = HashMap::new();
    let mut per_pair: HashMap<(Holder, Holder), (u64, Moved)> = HashMap::new();
    for c in &conns.list {
        let server = c.server.map_or_else(|| "?".to_owned(), |s| by.name(&s, c.server_id.as_deref()));
        let path =
            c.path.clone().unwrap_or_else(|| if c.kind == ConnKind::Socketpair { "(socketpair)" } else { "-" }.into());
        let client = by.name(&c.client, c.client_id.as_deref());
        let g = groups.entry((client, server, path, c.sock_type.to_string())).or_default();
        if c.kind == ConnKind::Failed {
            g.failed += 1;
            continue;
        }
        g.connections += 1;
        g.moved.add(c);
        match c.lifetime_ns() {
            Some(l) => g.lifetimes.push(l),
            None => g.open += 1,
        }
        if let Some(s) = c.server {
            let (client, server) = (c.client.process(), s.process());
            *per_proc.entry(client).or_default().entry(server).or_default() += 1;
            if server != client {
                *per_proc.entry(server).or_default().entry(client).or_default() += 1;
            }
            let pair = per_pair.entry((client, server)).or_default();
            pair.0 += 1;
            pair.1.add(c);
        }
    }
    let mut busiest: Vec<Busy> = per_proc
        .into_iter()
        .map(|(p, peers)| {
            let total = peers.values().sum();
            let mut peers: Vec<(Holder, u64)> = peers.into_iter().collect();
            peers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            (p, total, peers)
        })
        .collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    busiest.truncate(BUSIEST);
    let busiest_bytes = busiest_by_bytes(per_pair);

    if json_out {
        for ((client, server, path, ty), g) in &mut groups {
            let (min, median, max) = stats(&mut g.lifetimes);
            let mut rec = json!({
                "kind": "pair", "schema": JSON_SCHEMA, "by": by.as_str(), "client": client, "server": server, "path": path, "type": ty,
                "connections": g.connections, "failed": g.failed, "open": g.open,
                "lifetime_min_ns": min, "lifetime_median_ns": median, "lifetime_max_ns": max,
            });
            rec.as_object_mut().expect("an object").extend(g.moved.json());
            writeln!(out, "{rec}")?;
        }
        for (p, total, peers) in &busiest {
            let peers: Vec<_> =
                peers.iter().map(|(q, n)| json!({"pid": q.pid, "comm": q.comm, "connections": n})).collect();
            writeln!(
                out,
                "{}",
                json!({"kind": "busiest", "schema": JSON_SCHEMA, "pid": p.pid, "comm": p.comm, "connections": total, "peers": peers})
            )?;
        }
        for ((client, server), connections, moved) in &busiest_bytes {
            let mut rec = json!({
                "kind": "busiest_bytes", "schema": JSON_SCHEMA,
                "client_pid": client.pid, "client_comm": client.comm, "server_pid": server.pid, "server_comm": server.comm,
                "connections": connections, "bytes": moved.both().map(|f| f.bytes), "msgs": moved.both().map(|f| f.msgs),
            });
            rec.as_object_mut().expect("an object").extend(moved.json());
            writeln!(out, "{rec}")?;
        }
        let moved = total_moved(conns);
        writeln!(
            out,
            "{}",
            json!({"kind": "totals", "schema": JSON_SCHEMA, "connections": conns.list.len(), "lost": conns.lost, "duration_ns": conns.end_ns.saturating_sub(conns.start_ns),
                "bytes": moved.map(|f| f.bytes), "msgs": moved.map(|f| f.msgs)})
        )?;
        return Ok(());
    }

    let [client_header, server_header] = by.headers();
    let mut rows = vec![
        [
            client_header,
            server_header,
            "PATH",
            "TYPE",
            "CONNS",
            "FAILED",
            "OPEN",
            "MIN",
            "MEDIAN",
            "MAX",
            "BYTES C>S",
            "BYTES S>C",
            "MSGS",
        ]
        .map(String::from),
    ];
    for ((client, server, path, ty), g) in &mut groups {
        let (min, median, max) = stats(&mut g.lifetimes);
        let [to_server, to_client, msgs] = g.moved.cells();
        // The groups keep the exact names for JSON; people see them escaped.
        rows.push([
            by.shown(client),
            by.shown(server),
            escaped(path).into_owned(),
            ty.clone(),
            g.connections.to_string(),
            g.failed.to_string(),
            g.open.to_string(),
            span(min),
            span(median),
            span(max),
            to_server,
            to_client,
            msgs,
        ]);
    }
    write_rows(out, &rows, &[4, 5, 6, 7, 8, 9, 10, 11, 12])?;
    writeln!(out)?;
    let mut rows = vec![["BUSIEST PROCESS", "CONNS", "TOP PEERS"].map(String::from)];
    for (p, total, peers) in &busiest {
        let top: Vec<String> = peers.iter().take(3).map(|(q, n)| format!("{} ({n})", q.process_name())).collect();
        rows.push([p.process_name(), total.to_string(), top.join(", ")]);
    }
    write_rows(out, &rows, &[1])?;
    writeln!(out)?;
    if busiest_bytes.is_empty() {
        writeln!(out, "BUSIEST PAIRS BY BYTES: none counted (recorded without byte counts, or no connection closed)")?;
    } else {
        let mut rows = vec![["BUSIEST PAIRS BY BYTES", "CONNS", "BYTES C>S", "BYTES S>C", "MSGS"].map(String::from)];
        for ((client, server), connections, moved) in &busiest_bytes {
            let [to_server, to_client, msgs] = moved.cells();
            let pair = format!("{} -> {}", client.process_name(), server.process_name());
            rows.push([pair, connections.to_string(), to_server, to_client, msgs]);
        }
        write_rows(out, &rows, &[1, 2, 3, 4])?;
    }
    let secs = conns.end_ns.saturating_sub(conns.start_ns) as f64 / 1e9;
    let made = conns.list.iter().filter(|c| c.kind != ConnKind::Failed).count();
    match total_moved(conns) {
        Some(f) => {
            writeln!(out, "\n{made} connections in {secs:.3} s, {} in {} msgs counted", size(Some(f.bytes)), f.msgs)?
        }
        None => writeln!(out, "\n{made} connections in {secs:.3} s")?,
    }
    if conns.lost > 0 {
        writeln!(out, "WARNING: {} events were lost while recording: counts are a lower bound", conns.lost)?;
    }
    Ok(())
}

/// The pairs that moved the most bytes (both ways), then messages; only
/// pairs with counts, as a pair without any is not known to be quiet.
fn busiest_by_bytes(per_pair: HashMap<(Holder, Holder), (u64, Moved)>) -> Vec<BusyPair> {
    let mut pairs: Vec<BusyPair> =
        per_pair.into_iter().filter(|(_, (_, m))| m.counted > 0).map(|(k, (n, m))| (k, n, m)).collect();
    let rank = |p: &BusyPair| p.2.both().map(|f| (f.bytes, f.msgs));
    pairs.sort_by(|a, b| rank(b).cmp(&rank(a)).then_with(|| a.0.cmp(&b.0)));
    pairs.truncate(BUSIEST);
    pairs
}

fn total_moved(conns: &Conns) -> Option<Flow> {
    let mut total = None;
    for c in &conns.list {
        Flow::add(&mut total, Flow::both(c.to_server(), c.to_client()));
    }
    total
}

fn stats(v: &mut [u64]) -> (Option<u64>, Option<u64>, Option<u64>) {
    if v.is_empty() {
        return (None, None, None);
    }
    v.sort_unstable();
    (v.first().copied(), Some(v[v.len() / 2]), v.last().copied())
}

/// A duration people can read at a glance: `850ns`, `12.3us`, `4.56ms`, `1.20s`.
pub(crate) fn span(ns: Option<u64>) -> String {
    let Some(ns) = ns else { return "-".into() };
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

/// Bytes as people read them (`1.2 KiB`), `-` when not counted.
pub(crate) fn size(bytes: Option<u64>) -> String {
    let Some(bytes) = bytes else { return "-".into() };
    let mut out = Vec::new();
    crate::follow::render::push_bytes_size(&mut out, bytes);
    String::from_utf8_lossy(&out).into_owned()
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

fn write_rows<const N: usize>(out: &mut impl Write, rows: &[[String; N]], right: &[usize]) -> io::Result<()> {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if right.contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(pad));
            }
            line.push_str("  ");
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::conns::collect;
    use crate::timeline::replay::tests::{open, recording};

    #[test]
    fn summary_counts_and_times_the_connection() {
        let conns = collect(&mut open(recording())).unwrap();
        let mut out = Vec::new();
        write(&mut out, &conns, false, By::Comm).unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["client", "server", "/run/app.sock", "stream", "1", "0", "0", "2.00s", "2.00s", "2.00s", "-", "-", "-"],
            "nothing counted shows as unknown, not zero: {text}"
        );
        assert!(text.contains("server[10]") && text.contains("client[20] (1)"), "{text}");
        assert!(text.contains("BUSIEST PAIRS BY BYTES: none counted"), "{text}");
        assert!(text.ends_with("1 connections in 5.000 s\n"), "{text}");
        let mut out = Vec::new();
        write(&mut out, &conns, true, By::Comm).unwrap();
        let records: Vec<serde_json::Value> =
            out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert!(!records.iter().any(|r| r["kind"] == "busiest_bytes"), "{records:?}");
        for key in
            ["bytes_client_to_server", "bytes_server_to_client", "msgs_client_to_server", "msgs_server_to_client"]
        {
            assert!(records[0][key].is_null(), "{key}: {}", records[0]);
        }
        assert_eq!(records[0]["counted"], 0);
        assert!(records.last().unwrap()["bytes"].is_null());
    }

    #[test]
    fn counts_each_way_and_the_busiest_pairs_by_bytes() {
        use crate::timeline::conns::counted_recording;
        let mut conns = collect(&mut open(counted_recording(&[200, 300]))).unwrap();
        // A second, quieter pair, and a connection of the first pair still
        // open at the end: it adds a connection but no count.
        let mut quiet = conns.list[0].clone();
        quiet.client.pid = 21;
        quiet.client_traffic =
            Some(crate::events::Traffic { bytes_sent: 10, bytes_received: 0, msgs_sent: 1, msgs_received: 0 });
        quiet.server_traffic = None;
        let mut open_one = conns.list[0].clone();
        (open_one.end_ns, open_one.client_traffic, open_one.server_traffic) = (None, None, None);
        conns.list.extend([quiet, open_one]);

        let mut out = Vec::new();
        write(&mut out, &conns, false, By::Comm).unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().nth(1).unwrap();
        assert!(row.ends_with("1.2 KiB     48 KiB     9"), "both client[20]s and client[21] in one row: {text}");
        let busiest: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("BUSIEST PAIRS BY BYTES")).collect();
        assert_eq!(busiest[1], "client[20] -> server[10]      2    1.2 KiB     48 KiB     8", "{text}");
        assert_eq!(busiest[2], "client[21] -> server[10]      1       10 B        0 B     1", "{text}");
        assert!(text.ends_with("3 connections in 5.000 s, 49 KiB in 9 msgs counted\n"), "{text}");

        let mut out = Vec::new();
        write(&mut out, &conns, true, By::Comm).unwrap();
        let records: Vec<serde_json::Value> =
            out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        let pair = &records[0];
        assert_eq!(
            (&pair["connections"], &pair["counted"], &pair["bytes_client_to_server"], &pair["bytes_server_to_client"]),
            (&3.into(), &2.into(), &1239.into(), &49152.into())
        );
        assert_eq!((&pair["msgs_client_to_server"], &pair["msgs_server_to_client"]), (&4.into(), &5.into()));
        let busiest: Vec<_> = records.iter().filter(|r| r["kind"] == "busiest_bytes").collect();
        assert_eq!(busiest.len(), 2);
        assert_eq!(
            (&busiest[0]["client_pid"], &busiest[0]["server_comm"], &busiest[0]["bytes"], &busiest[0]["msgs"]),
            (&20.into(), &"server".into(), &(1229 + 49152).into(), &8.into())
        );
        assert_eq!((&busiest[0]["connections"], &busiest[0]["counted"]), (&2.into(), &1.into()));
        assert_eq!(busiest[1]["bytes_server_to_client"], 0, "the client counted it received nothing");
        let totals = records.last().unwrap();
        assert_eq!((&totals["bytes"], &totals["msgs"]), (&(1239 + 49152).into(), &9.into()));
    }

    #[test]
    fn text_shows_names_escaped_and_json_keeps_them_exact() {
        let conns = crate::timeline::conns::hostile_conns("ev\u{1b}[31mil\u{7}", "srv\u{202e}x");
        let mut out = Vec::new();
        write(&mut out, &conns, false, By::Comm).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.chars().any(|c| crate::output::escape::must_escape(c) && c != '\n'), "{text:?}");
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("ev\\x1b[31mil\\x07  srv\\x202ex  @</script><b>x\\x0a\"  stream"), "{text}");
        assert!(text.contains("ev\\x1b[31mil\\x07[20]  ") && text.contains("srv\\x202ex[10] (1)"), "{text}");
        // The header's CONNS column ends where the row's count does.
        let header = text.lines().next().unwrap();
        assert_eq!(header.find("CONNS").map(|i| i + 5), row.find(" 1 ").map(|i| i + 2), "{text}");

        let mut out = Vec::new();
        write(&mut out, &conns, true, By::Comm).unwrap();
        let pair: serde_json::Value = serde_json::from_slice(out.split(|&b| b == b'\n').next().unwrap()).unwrap();
        assert_eq!(pair["client"], "ev\u{1b}[31mil\u{7}");
        assert_eq!(pair["path"], "@</script><b>x\n\"");
    }

    #[test]
    fn ends_group_by_unit_or_container() {
        use crate::identity::{Container, Runtime};
        use std::sync::Arc;
        let mut conns = crate::timeline::conns::hostile_conns("client", "server");
        let id = "e\u{1b}".repeat(32);
        let container =
            Container { runtime: Runtime::Docker, id: id.clone().into(), name: None, pod_uid: None, qos: None };
        conns.list[0].client_id = Some(Arc::new(Identity { container: Some(container), ..Identity::default() }));
        conns.list[0].server_id = Some(Arc::new(Identity { unit: Some("db.service".into()), ..Identity::default() }));
        let first_json = |by| {
            let mut out = Vec::new();
            write(&mut out, &conns, true, by).unwrap();
            serde_json::from_slice::<serde_json::Value>(out.split(|&b| b == b'\n').next().unwrap()).unwrap()
        };
        let pair = first_json(By::Unit);
        assert_eq!(
            (&pair["by"], &pair["client"], &pair["server"]),
            (&"unit".into(), &"-".into(), &"db.service".into())
        );
        let pair = first_json(By::Container);
        assert_eq!((&pair["client"], &pair["server"]), (&format!("docker:{id}").into(), &"-".into()));
        let mut out = Vec::new();
        write(&mut out, &conns, false, By::Container).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("CLIENT CONTAINER ") && text.contains("  SERVER CONTAINER  "), "{text}");
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with(&format!("docker:{}  -  ", "e\\x1b".repeat(6))), "{text}");
    }

    #[test]
    fn spans_read_well() {
        assert_eq!(span(Some(850)), "850ns");
        assert_eq!(span(Some(12_300)), "12.3us");
        assert_eq!(span(Some(4_560_000)), "4.56ms");
        assert_eq!(span(None), "-");
    }
}
