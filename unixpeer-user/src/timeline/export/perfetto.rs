//! Chrome trace-event JSON (what the Perfetto UI and chrome://tracing
//! load): each process a track, each connection a slice on both ends'
//! tracks, each failed connect an instant. Where the recording counted
//! traffic, each process also has `bytes` and `msgs` counters: what its
//! connections had sent and received when they closed, so far.

use std::collections::HashMap;
use std::io::{self, Write};

use serde_json::{Value, json};

use super::super::conns::{Conn, ConnKind, Conns, Flow};

pub(crate) fn write(out: &mut impl Write, conns: &Conns) -> io::Result<()> {
    let us = |ns: u64| ns.saturating_sub(conns.start_ns) as f64 / 1e3;
    let mut events: Vec<Value> = Vec::new();
    let mut named = std::collections::BTreeMap::new();
    for c in &conns.list {
        let name = super::label(c);
        let end = c.end_ns.unwrap_or(conns.end_ns).max(c.start_ns);
        let (to_server, to_client) = (c.to_server(), c.to_client());
        let args = json!({
            "client": c.client.process_name(),
            "client_fd": c.client.fd,
            "server": c.server.map(|s| s.process_name()),
            "server_fd": c.server.and_then(|s| s.fd),
            "type": c.sock_type.to_string(),
            "kind": c.kind.as_str(),
            "still_open": c.end_ns.is_none(),
            "errno": (c.errno != 0).then_some(c.errno),
            "bytes_client_to_server": to_server.map(|f| f.bytes),
            "bytes_server_to_client": to_client.map(|f| f.bytes),
            "msgs_client_to_server": to_server.map(|f| f.msgs),
            "msgs_server_to_client": to_client.map(|f| f.msgs),
        });
        named.insert(c.client.pid, c.client.comm);
        if let Some(s) = &c.server {
            named.insert(s.pid, s.comm);
        }
        if c.kind == ConnKind::Failed {
            events.push(json!({
                "name": format!("failed connect {name}"), "cat": "connect_failed", "ph": "i", "s": "t",
                "ts": us(c.start_ns), "pid": c.client.pid, "tid": c.client.pid, "args": args,
            }));
            continue;
        }
        let ends = std::iter::once(&c.client).chain(c.server.as_ref().filter(|s| s.pid != c.client.pid));
        for p in ends {
            events.push(json!({
                "name": name, "cat": c.kind.as_str(), "ph": "X",
                "ts": us(c.start_ns), "dur": us(end) - us(c.start_ns),
                "pid": p.pid, "tid": p.pid, "args": args,
            }));
        }
    }
    counters(conns, &mut events);
    for (pid, comm) in named {
        let name = format!("{comm} [{pid}]");
        events.push(json!({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": name}}));
    }
    let trace = json!({ "traceEvents": events, "displayTimeUnit": "ms" });
    serde_json::to_writer(&mut *out, &trace)?;
    writeln!(out)
}

/// Each process's running totals, a step at each close of a counted
/// connection it was an end of. Only closes: a count is known only then.
fn counters(conns: &Conns, events: &mut Vec<Value>) {
    let us = |ns: u64| ns.saturating_sub(conns.start_ns) as f64 / 1e3;
    let mut closes: Vec<(u64, &Conn)> = conns
        .list
        .iter()
        .filter(|c| c.to_server().is_some() || c.to_client().is_some())
        .filter_map(|c| Some((c.end_ns?, c)))
        .collect();
    closes.sort_by_key(|&(t, _)| t);
    // pid -> (sent, received)
    let mut totals: HashMap<u32, (Option<Flow>, Option<Flow>)> = HashMap::new();
    for (t, c) in closes {
        let ends = std::iter::once((c.client.pid, c.to_server(), c.to_client()))
            .chain(c.server.map(|s| (s.pid, c.to_client(), c.to_server())));
        for (pid, sent, received) in ends {
            let (s, r) = totals.entry(pid).or_default();
            Flow::add(s, sent);
            Flow::add(r, received);
            let (s, r) = (s.unwrap_or_default(), r.unwrap_or_default());
            for (name, sent, received) in [("bytes", s.bytes, r.bytes), ("msgs", s.msgs, r.msgs)] {
                events.push(json!({
                    "name": name, "ph": "C", "ts": us(t), "pid": pid,
                    "args": {"sent": sent, "received": received},
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::conns::collect;
    use crate::timeline::replay::tests::{open, recording};

    #[test]
    fn slices_on_both_ends() {
        let conns = collect(&mut open(recording())).unwrap();
        let mut out = Vec::new();
        write(&mut out, &conns).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let slices: Vec<&Value> = v["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(slices.len(), 2);
        assert_eq!((slices[0]["ts"].as_f64(), slices[0]["dur"].as_f64()), (Some(1e6), Some(2e6)));
        assert_eq!(slices[1]["pid"], 10);
        assert!(slices[0]["args"]["bytes_client_to_server"].is_null(), "nothing counted: {}", slices[0]);
        assert!(!v["traceEvents"].as_array().unwrap().iter().any(|e| e["ph"] == "C"), "no counters without counts");
    }

    #[test]
    fn counters_step_at_each_counted_close() {
        let mut conns = collect(&mut open(crate::timeline::conns::counted_recording(&[200, 300]))).unwrap();
        // The same client again, later, and once more still open at the end.
        let mut again = conns.list[0].clone();
        again.start_ns += 1_000;
        again.end_ns = again.end_ns.map(|e| e + 1_000_000_000);
        let mut open_one = again.clone();
        (open_one.end_ns, open_one.client_traffic, open_one.server_traffic) = (None, None, None);
        // Listed first: the counters follow the closes' order, not the list's.
        conns.list.insert(0, again);
        conns.list.push(open_one);
        let mut out = Vec::new();
        write(&mut out, &conns).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let events = v["traceEvents"].as_array().unwrap();
        let slice = events.iter().find(|e| e["ph"] == "X").unwrap();
        assert_eq!(
            (&slice["args"]["bytes_client_to_server"], &slice["args"]["msgs_server_to_client"]),
            (&1229.into(), &5.into())
        );
        let counters: Vec<(f64, u64, &str, u64, u64)> = events
            .iter()
            .filter(|e| e["ph"] == "C")
            .map(|e| {
                let n = |k: &str| e["args"][k].as_u64().unwrap();
                (
                    e["ts"].as_f64().unwrap(),
                    e["pid"].as_u64().unwrap(),
                    e["name"].as_str().unwrap(),
                    n("sent"),
                    n("received"),
                )
            })
            .collect();
        assert_eq!(
            counters,
            [
                (3e6, 20, "bytes", 1229, 49152),
                (3e6, 20, "msgs", 3, 5),
                (3e6, 10, "bytes", 49152, 1229),
                (3e6, 10, "msgs", 5, 3),
                (4e6, 20, "bytes", 2458, 98304),
                (4e6, 20, "msgs", 6, 10),
                (4e6, 10, "bytes", 98304, 2458),
                (4e6, 10, "msgs", 10, 6),
            ]
        );
    }

    #[test]
    fn names_are_shown_escaped_in_valid_json() {
        let conns = crate::timeline::conns::hostile_conns("ev\u{1b}[31mil\u{7}", "\"},{\"x\":1");
        let mut out = Vec::new();
        write(&mut out, &conns).unwrap();
        assert!(!out[..out.len() - 1].iter().any(|b| b.is_ascii_control()), "{}", String::from_utf8_lossy(&out));
        let v: Value = serde_json::from_slice(&out).unwrap();
        let events = v["traceEvents"].as_array().unwrap();
        assert_eq!(events[0]["name"], "@</script><b>x\\x0a\"");
        assert_eq!(events[0]["args"]["client"], "ev\\x1b[31mil\\x07[20]");
        let names: Vec<&Value> = events.iter().filter(|e| e["ph"] == "M").map(|e| &e["args"]["name"]).collect();
        assert_eq!(names, ["\"},{\"x\":1 [10]", "ev\\x1b[31mil\\x07 [20]"]);
    }
}
