//! Graphviz: one node per command name, one edge per (client, server, name)
//! with its count and, where counted, the bytes each way, which also make
//! the edge heavier and thicker. Command names rather than pids: a server
//! forking per client stays one node. With `--by unit` or `--by container`, one node
//! per command in each unit or container, drawn inside a cluster named
//! after it.

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::super::conns::{ConnKind, Conns, Flow};
use crate::follow::Holder;
use crate::identity::Identity;
use crate::output::escape;
use crate::timeline::summary::{By, size};

/// A node: its cluster (the unit or container, shown escaped; none for
/// processes outside any, and without `--by`) and its command.
type Node = (Option<String>, String);

fn node(by: By, h: &Holder, id: Option<&Identity>) -> Node {
    let comm = escape::escaped(&h.comm.to_str()).into_owned();
    let group = by.name(h, id);
    ((by != By::Comm && group != "-").then(|| by.shown(&group)), comm)
}

/// The node's dot id: its command, within its cluster's.
fn node_id((group, comm): &Node) -> String {
    match group {
        Some(g) => format!("{g}/{comm}"),
        None => comm.clone(),
    }
}

#[derive(Default)]
struct Edge {
    connections: u64,
    failed: u64,
    to_server: Option<Flow>,
    to_client: Option<Flow>,
}

impl Edge {
    fn bytes(&self) -> Option<u64> {
        Flow::both(self.to_server, self.to_client).map(|f| f.bytes)
    }
}

/// Layout weight (an integer to dot) and pen width for an edge that moved
/// `bytes`, on a log scale: a bulk transfer must not dwarf every other edge.
fn heft(bytes: u64, most: u64) -> (u64, f64) {
    let log = |b: u64| (b as f64).ln_1p();
    let width = if most == 0 { 1.0 } else { 1.0 + 5.0 * log(bytes) / log(most) };
    (1 + u64::from(u64::BITS - bytes.leading_zeros()), width)
}

pub(crate) fn write(out: &mut impl Write, conns: &Conns, by: By) -> io::Result<()> {
    let mut edges: BTreeMap<(Node, Node, String), Edge> = BTreeMap::new();
    let mut pids: BTreeMap<Node, Vec<u32>> = BTreeMap::new();
    for c in &conns.list {
        let client = node(by, &c.client, c.client_id.as_deref());
        let server = c.server.map_or_else(|| (None, "?".to_owned()), |s| node(by, &s, c.server_id.as_deref()));
        pids.entry(server.clone()).or_default();
        for (n, p) in [(&client, Some(&c.client)), (&server, c.server.as_ref())] {
            let list = pids.entry(n.clone()).or_default();
            if let Some(p) = p
                && !list.contains(&p.pid)
            {
                list.push(p.pid);
            }
        }
        let e = edges.entry((client, server, super::label(c))).or_default();
        if c.kind == ConnKind::Failed {
            e.failed += 1;
        } else {
            e.connections += 1;
            Flow::add(&mut e.to_server, c.to_server());
            Flow::add(&mut e.to_client, c.to_client());
        }
    }
    let most = edges.values().filter_map(Edge::bytes).max().unwrap_or(0);
    writeln!(out, "digraph unixtrace {{")?;
    writeln!(out, "  rankdir=LR;")?;
    writeln!(out, "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"sans-serif\"];")?;
    writeln!(out, "  edge [fontname=\"sans-serif\", fontsize=10];")?;
    let mut clusters: BTreeMap<Option<&String>, Vec<(&Node, &Vec<u32>)>> = BTreeMap::new();
    for (n, list) in &pids {
        clusters.entry(n.0.as_ref()).or_default().push((n, list));
    }
    for (i, (group, nodes)) in clusters.iter().enumerate() {
        let indent = if let Some(g) = group {
            writeln!(out, "  subgraph \"cluster_{i}\" {{")?;
            writeln!(out, "    label={}; style=rounded; color=\"#8aa4c8\";", quote(g))?;
            "    "
        } else {
            "  "
        };
        for (n, list) in nodes {
            let mut shown: Vec<String> = list.iter().take(3).map(u32::to_string).collect();
            if list.len() > 3 {
                shown.push(format!("+{} more", list.len() - 3));
            }
            let label = if list.is_empty() { n.1.clone() } else { format!("{}\npid {}", n.1, shown.join(", ")) };
            writeln!(out, "{indent}{} [label={}];", quote(&node_id(n)), quote(&label))?;
        }
        if group.is_some() {
            writeln!(out, "  }}")?;
        }
    }
    for ((client, server, name), e) in &edges {
        let (client, server) = (node_id(client), node_id(server));
        let n = e.connections;
        let mut label = format!("{name}\n{n} conn{}", if n == 1 { "" } else { "s" });
        if e.failed > 0 {
            label.push_str(&format!(", {} failed", e.failed));
        }
        let mut style = if n == 0 { ", style=dashed, color=red".to_owned() } else { String::new() };
        if let Some(bytes) = e.bytes() {
            let way = |f: Option<Flow>| size(f.map(|f| f.bytes));
            label.push_str(&format!("\n→ {}, ← {}", way(e.to_server), way(e.to_client)));
            let (weight, width) = heft(bytes, most);
            style.push_str(&format!(", weight={weight}, penwidth={width:.1}"));
        }
        writeln!(
            out,
            "  {} -> {} [label={}, color=\"{}\"{style}];",
            quote(&client),
            quote(&server),
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
        write(&mut out, &conns, By::Comm).unwrap();
        let dot = String::from_utf8(out).unwrap();
        assert!(dot.contains("\"client\" -> \"server\" [label=\"/run/app.sock\\n1 conn\""), "{dot}");
        assert!(dot.contains("\"server\" [label=\"server\\npid 10\"]"), "{dot}");
        assert_eq!(quote("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\"");
        assert!(!dot.contains("penwidth") && !dot.contains('→'), "nothing counted, nothing drawn: {dot}");
    }

    #[test]
    fn bytes_label_and_weigh_the_edge() {
        let mut conns = collect(&mut open(crate::timeline::conns::counted_recording(&[200, 300]))).unwrap();
        let mut out = Vec::new();
        write(&mut out, &conns, By::Comm).unwrap();
        let dot = String::from_utf8(out).unwrap();
        let edge = "\"client\" -> \"server\" [label=\"/run/app.sock\\n1 conn\\n→ 1.2 KiB, ← 48 KiB\", ";
        assert!(
            dot.contains(&format!(
                "{edge}color=\"{}\", weight=17, penwidth=6.0];",
                super::super::colour("/run/app.sock")
            )),
            "{dot}"
        );
        // A quieter edge is thinner; one with no count has no weight.
        let mut quiet = conns.list[0].clone();
        quiet.path = Some("/run/quiet.sock".into());
        quiet.client_traffic = Some(crate::events::Traffic { bytes_sent: 100, ..Default::default() });
        quiet.server_traffic = None;
        let mut unknown = conns.list[0].clone();
        (unknown.path, unknown.client_traffic, unknown.server_traffic) = (Some("/run/old.sock".into()), None, None);
        conns.list.extend([quiet, unknown]);
        let mut out = Vec::new();
        write(&mut out, &conns, By::Comm).unwrap();
        let dot = String::from_utf8(out).unwrap();
        let line = |path: &str| dot.lines().find(|l| l.contains(path)).unwrap_or_else(|| panic!("{dot}"));
        assert!(line("quiet.sock").contains("\\n→ 100 B, ← 0 B\""), "{dot}");
        assert!(line("quiet.sock").ends_with(", weight=8, penwidth=3.1];"), "{dot}");
        assert!(line("app.sock").ends_with(", weight=17, penwidth=6.0];"), "{dot}");
        assert!(line("old.sock").contains("\\n1 conn\"") && !line("old.sock").contains("penwidth"), "{dot}");
        assert_eq!(heft(0, 0), (1, 1.0));
        assert_eq!(heft(100, 1 << 20).0, 8);
    }

    #[test]
    fn by_container_each_container_is_a_cluster() {
        use crate::identity::{Container, Runtime};
        use std::sync::Arc;
        let mut conns = crate::timeline::conns::hostile_conns("client", "server");
        let c = Container { runtime: Runtime::Lxc, id: "we\"b\u{1b}".into(), name: None, pod_uid: None, qos: None };
        conns.list[0].client_id = Some(Arc::new(Identity { container: Some(c), ..Identity::default() }));
        let mut out = Vec::new();
        write(&mut out, &conns, By::Container).unwrap();
        let dot = String::from_utf8(out).unwrap();
        assert!(!dot.chars().any(|c| c.is_control() && c != '\n'), "{dot:?}");
        let cluster = concat!(
            "  subgraph \"cluster_1\" {\n",
            "    label=\"lxc:we\\\"b\\\\x1b\"; style=rounded; color=\"#8aa4c8\";\n",
            "    \"lxc:we\\\"b\\\\x1b/client\" [label=\"client\\npid 20\"];\n",
            "  }\n"
        );
        assert!(dot.contains(cluster), "{dot}");
        // Outside any container: no cluster.
        assert!(dot.contains("\n  \"server\" [label=\"server\\npid 10\"];\n"), "{dot}");
        assert!(dot.contains("\"lxc:we\\\"b\\\\x1b/client\" -> \"server\""), "{dot}");
    }

    #[test]
    fn hostile_names_cannot_add_lines_or_leave_the_string() {
        let conns = crate::timeline::conns::hostile_conns("a\"];x[\npid 1", "ev\u{1b}[31m\\N");
        let mut out = Vec::new();
        write(&mut out, &conns, By::Comm).unwrap();
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
