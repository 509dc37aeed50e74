//! Chrome trace-event JSON (what the Perfetto UI and chrome://tracing
//! load): each process a track, each connection a slice on both ends'
//! tracks, each failed connect an instant.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::super::conns::{ConnKind, Conns};

pub(crate) fn write(out: &mut impl Write, conns: &Conns) -> io::Result<()> {
    let us = |ns: u64| ns.saturating_sub(conns.start_ns) as f64 / 1e3;
    let mut events: Vec<Value> = Vec::new();
    let mut named = std::collections::BTreeMap::new();
    for c in &conns.list {
        let name = super::label(c);
        let end = c.end_ns.unwrap_or(conns.end_ns).max(c.start_ns);
        let args = json!({
            "client": c.client.process_name(),
            "client_fd": c.client.fd,
            "server": c.server.map(|s| s.process_name()),
            "server_fd": c.server.and_then(|s| s.fd),
            "type": c.sock_type.to_string(),
            "kind": c.kind.as_str(),
            "still_open": c.end_ns.is_none(),
            "errno": (c.errno != 0).then_some(c.errno),
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
    for (pid, comm) in named {
        let name = format!("{comm} [{pid}]");
        events.push(json!({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": name}}));
    }
    let trace = json!({ "traceEvents": events, "displayTimeUnit": "ms" });
    serde_json::to_writer(&mut *out, &trace)?;
    writeln!(out)
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
