//! Graphviz: one node per command name, one edge per (client, server, name)
//! with its count. Command names rather than pids: a server forking per
//! client stays one node.

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::super::conns::{ConnKind, Conns};
use crate::output::escape;

pub(crate) fn write(out: &mut impl Write, conns: &Conns) -> io::Result<()> {
    // (client, server, label) -> (connections, failed)
    let mut edges: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
    let mut pids: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let shown = |comm: &str| escape::escaped(comm).into_owned();
    for c in &conns.list {
        let server = c.server.map_or_else(|| "?".to_owned(), |s| shown(&s.comm.to_str()));
        for p in std::iter::once(&c.client).chain(c.server.as_ref()) {
            let list = pids.entry(shown(&p.comm.to_str())).or_default();
            if !list.contains(&p.pid) {
                list.push(p.pid);
            }
        }
        if c.server.is_none() {
            pids.entry(server.clone()).or_default();
        }
        let e = edges.entry((shown(&c.client.comm.to_str()), server, super::label(c))).or_default();
        if c.kind == ConnKind::Failed {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    writeln!(out, "digraph unixtrace {{")?;
    writeln!(out, "  rankdir=LR;")?;
    writeln!(out, "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"sans-serif\"];")?;
    writeln!(out, "  edge [fontname=\"sans-serif\", fontsize=10];")?;
    for (comm, list) in &pids {
        let mut shown: Vec<String> = list.iter().take(3).map(u32::to_string).collect();
        if list.len() > 3 {
            shown.push(format!("+{} more", list.len() - 3));
        }
        let label = if list.is_empty() { comm.clone() } else { format!("{comm}\npid {}", shown.join(", ")) };
        writeln!(out, "  {} [label={}];", quote(comm), quote(&label))?;
    }
    for ((client, server, name), (n, failed)) in &edges {
        let mut label = format!("{name}\n{n} conn{}", if *n == 1 { "" } else { "s" });
        if *failed > 0 {
            label.push_str(&format!(", {failed} failed"));
        }
        let style = if *n == 0 { ", style=dashed, color=red" } else { "" };
        writeln!(
            out,
            "  {} -> {} [label={}, color=\"{}\"{style}];",
            quote(client),
            quote(server),
            quote(&label),
            super::colour(name)
        )?;
    }
    writeln!(out, "}}")
}

/// A dot string literal. Names arrive escaped, so a newline here is one of
/// ours; a control character left is dropped rather than trusted.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c if c.is_control() => {}
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::conns::collect;
    use crate::timeline::replay::tests::{open, recording};

    #[test]
    fn one_edge_per_pair_and_name() {
        let conns = collect(&mut open(recording())).unwrap();
        let mut out = Vec::new();
        write(&mut out, &conns).unwrap();
        let dot = String::from_utf8(out).unwrap();
        assert!(dot.contains("\"client\" -> \"server\" [label=\"/run/app.sock\\n1 conn\""), "{dot}");
        assert!(dot.contains("\"server\" [label=\"server\\npid 10\"]"), "{dot}");
        assert_eq!(quote("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\"");
    }

    #[test]
    fn hostile_names_cannot_add_lines_or_leave_the_string() {
        let conns = crate::timeline::conns::hostile_conns("a\"];x[\npid 1", "ev\u{1b}[31m\\N");
        let mut out = Vec::new();
        write(&mut out, &conns).unwrap();
        let dot = String::from_utf8(out).unwrap();
        assert!(!dot.chars().any(|c| c.is_control() && c != '\n'), "{dot:?}");
        // The client's node: the quote and newline it chose are text, so
        // its label still has one line break, ours, before the real pid.
        let node = r#"  "a\"];x[\\x0apid 1" [label="a\"];x[\\x0apid 1\npid 20"];"#;
        assert!(dot.lines().any(|l| l == node), "{dot}");
        assert!(dot.contains(r#""ev\\x1b[31m\\N" [label="ev\\x1b[31m\\N\npid 10"]"#), "{dot}");
        assert!(dot.contains(r#"[label="@</script><b>x\\x0a\"\n1 conn""#), "{dot}");
    }
}
