//! One self-contained HTML file: the data as JSON and a small script that
//! draws it as SVG. No external resource, so it opens anywhere, offline.
//!
//! The page reports what it drew in `#status` (`data-bars`, `data-errors`)
//! and in its title, so a headless browser can check it.

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;

use super::super::conns::{Conn, ConnKind, Conns, Flow};
use crate::holders::Holder;
use crate::identity::Identity;
use crate::output::escape;
use crate::timeline::summary::{By, size};

#[derive(Serialize)]
struct Data<'a> {
    title: &'a str,
    duration_us: f64,
    lanes: Vec<String>,
    bars: Vec<Bar>,
    marks: Vec<Mark>,
    paths: Vec<(String, String)>,
    lost: u64,
}

/// One connection drawn on one end's lane.
#[derive(Serialize)]
struct Bar {
    lane: usize,
    start_us: f64,
    end_us: f64,
    open: bool,
    path: usize,
    kind: &'static str,
    #[serde(rename = "type")]
    sock_type: String,
    client: String,
    server: String,
    /// What moved each way, for people (null when not counted).
    moved: Option<String>,
}

/// A failed connect: an instant, not a span.
#[derive(Serialize)]
struct Mark {
    lane: usize,
    at_us: f64,
    path: usize,
    client: String,
    server: String,
    errno: i32,
}

pub(crate) fn write(out: &mut impl Write, conns: &Conns, title: &str, by: By) -> io::Result<()> {
    // The title names the recording and its host, both read from outside.
    let title = escape::escaped(title);
    let us = |ns: u64| ns.saturating_sub(conns.start_ns) as f64 / 1e3;
    let mut lanes: Vec<String> = Vec::new();
    let mut lane_of: HashMap<Lane, usize> = HashMap::new();
    let mut paths: Vec<(String, String)> = Vec::new();
    let mut path_of: HashMap<String, usize> = HashMap::new();
    let mut bars = Vec::new();
    let mut marks = Vec::new();
    for c in &conns.list {
        let mut lane = |h: Holder, id: Option<&Identity>| {
            let (key, label) = Lane::of(by, h, id);
            *lane_of.entry(key).or_insert_with(|| {
                lanes.push(label);
                lanes.len() - 1
            })
        };
        let client_lane = lane(c.client, c.client_id.as_deref());
        let server_lane = c.server.map(|s| lane(s, c.server_id.as_deref()));
        let name = super::label(c);
        let path = *path_of.entry(name.clone()).or_insert_with(|| {
            paths.push((name.clone(), super::colour(&name)));
            paths.len() - 1
        });
        let end_fd = |h: Holder| match h.fd {
            Some(fd) => format!("{} fd {fd}", h.process_name()),
            None => h.process_name(),
        };
        let client = end_fd(c.client);
        let server = c.server.map_or_else(|| "?".to_owned(), end_fd);
        if c.kind == ConnKind::Failed {
            marks.push(Mark { lane: client_lane, at_us: us(c.start_ns), path, client, server, errno: c.errno });
            continue;
        }
        let end = c.end_ns.unwrap_or(conns.end_ns).max(c.start_ns);
        let mut ends = vec![client_lane];
        ends.extend(server_lane.filter(|&l| l != client_lane));
        for l in ends {
            bars.push(Bar {
                lane: l,
                start_us: us(c.start_ns),
                end_us: us(end),
                open: c.end_ns.is_none(),
                path,
                kind: c.kind.as_str(),
                sock_type: c.sock_type.to_string(),
                client: client.clone(),
                server: server.clone(),
                moved: moved(c),
            });
        }
    }
    let data =
        Data { title: &title, duration_us: us(conns.end_ns).max(1.0), lanes, bars, marks, paths, lost: conns.lost };
    // Inside a <script> element `</script>` would end it early and `<!--`
    // would change how the parser looks for its end; `<`, `>` and `&` occur
    // only inside JSON strings, where their \u escapes mean the same.
    let json = serde_json::to_string(&data)?.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026");
    // One pass over the template: a title may itself contain a marker.
    let (head, rest) = PAGE.split_once("{{TITLE}}").expect("template has a title marker");
    let (mid, tail) = rest.split_once("{{DATA}}").expect("template has a data marker");
    for part in [head, &html_text(&title), mid, &json, tail] {
        out.write_all(part.as_bytes())?;
    }
    Ok(())
}

/// `→ 3 msgs / 1.2 KiB, ← 5 msgs / 48 KiB`: the arrows as between the
/// client and the server in the bar's first line.
fn moved(c: &Conn) -> Option<String> {
    let (to_server, to_client) = (c.to_server(), c.to_client());
    if to_server.is_none() && to_client.is_none() {
        return None;
    }
    let way = |f: Option<Flow>| match f {
        Some(f) => format!("{} msg{} / {}", f.msgs, if f.msgs == 1 { "" } else { "s" }, size(Some(f.bytes))),
        None => "?".into(),
    };
    Some(format!("→ {}, ← {}", way(to_server), way(to_client)))
}

/// What a lane stands for: a process, or with `--by`, the unit or
/// container its process is in (processes outside any keep their own).
/// Lanes come in order of first appearance: the first clients on top.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Lane {
    Process(Holder),
    Group(String),
}

impl Lane {
    /// The lane and its label (escaped).
    fn of(by: By, h: Holder, id: Option<&Identity>) -> (Self, String) {
        let group = by.name(&h, id);
        if by == By::Comm || group == "-" {
            (Self::Process(h.process()), h.process_name())
        } else {
            let label = by.shown(&group);
            (Self::Group(group), label)
        }
    }
}

/// Text for the page's markup (element content or a quoted attribute).
fn html_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

const PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>unixtrace timeline</title>
<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
</script>
<style>
  body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330; background: #fafbfc; }
  header { padding: 14px 20px 6px; }
  h1 { font-size: 17px; margin: 0 0 4px; font-weight: 600; }
  .sub { color: #5b6472; }
  #legend { padding: 4px 20px 10px; display: flex; flex-wrap: wrap; gap: 6px 16px; }
  #legend span { display: inline-flex; align-items: center; gap: 6px; }
  #legend i { width: 12px; height: 12px; border-radius: 3px; display: inline-block; }
  #chart { padding: 0 20px 20px; overflow-x: auto; }
  svg { background: #fff; border: 1px solid #e1e5eb; border-radius: 6px; }
  .lane-label { font-size: 12px; fill: #1d2330; }
  .tick { font-size: 11px; fill: #5b6472; }
  .grid { stroke: #eef0f3; }
  .bar { rx: 3px; opacity: 0.9; }
  .bar:hover, .mark:hover { opacity: 1; stroke: #1d2330; stroke-width: 1.5px; }
  #tip { position: fixed; pointer-events: none; background: #1d2330; color: #fff; padding: 6px 9px; border-radius: 5px;
         font-size: 12px; white-space: pre; display: none; box-shadow: 0 2px 8px rgba(0,0,0,.25); }
  .warn { color: #a33; }
</style>
</head>
<body>
<header><h1>{{TITLE}}</h1><div class="sub" id="sub"></div></header>
<div id="legend"></div>
<div id="chart"></div>
<div id="tip"></div>
<div id="status" data-state="loading" data-bars="0" data-errors=""></div>
<script type="application/json" id="data">{{DATA}}</script>
<script>
(function () {
  var drawn = 0;
  try {
    var d = JSON.parse(document.getElementById("data").textContent);
    var NS = "http://www.w3.org/2000/svg";
    var LABEL = 210, LANE = 24, BAR = 14, TOP = 28, RIGHT = 24;
    var width = Math.max(900, Math.min(1800, window.innerWidth - 64));
    var plot = width - LABEL - RIGHT;
    var height = TOP + d.lanes.length * LANE + 10;
    var x = function (us) { return LABEL + (us / d.duration_us) * plot; };
    var el = function (name, attrs, parent) {
      var e = document.createElementNS(NS, name);
      for (var k in attrs) e.setAttribute(k, attrs[k]);
      if (parent) parent.appendChild(e);
      return e;
    };
    var fmt = function (us) {
      if (us < 1000) return us.toFixed(1) + " µs";
      if (us < 1e6) return (us / 1000).toFixed(2) + " ms";
      return (us / 1e6).toFixed(3) + " s";
    };
    document.getElementById("sub").textContent =
      d.lanes.length + " processes, " + d.bars.length + " connection ends, " + d.marks.length +
      " failed connects over " + fmt(d.duration_us) + (d.lost ? " (" + d.lost + " events lost while recording)" : "");
    var legend = document.getElementById("legend");
    d.paths.forEach(function (p) {
      var s = document.createElement("span");
      var i = document.createElement("i");
      i.style.background = p[1];
      s.appendChild(i);
      s.appendChild(document.createTextNode(p[0]));
      legend.appendChild(s);
    });
    var svg = el("svg", { width: width, height: height, role: "img" });
    var step = Math.pow(10, Math.floor(Math.log10(d.duration_us / 4)));
    if (d.duration_us / step > 10) step *= 2;
    if (d.duration_us / step > 10) step *= 2.5;
    for (var t = 0; t <= d.duration_us + 1e-9; t += step) {
      el("line", { x1: x(t), x2: x(t), y1: TOP - 6, y2: height - 6, class: "grid" }, svg);
      el("text", { x: x(t) + 3, y: TOP - 10, class: "tick" }, svg).textContent = t === 0 ? "start" : "+" + fmt(t);
    }
    d.lanes.forEach(function (name, i) {
      var y = TOP + i * LANE;
      if (i % 2 === 1) el("rect", { x: 0, y: y, width: width, height: LANE, fill: "#f6f8fa" }, svg);
      el("text", { x: 10, y: y + LANE / 2 + 4, class: "lane-label" }, svg).textContent =
        name.length > 30 ? name.slice(0, 29) + "…" : name;
    });
    var tip = document.getElementById("tip");
    var hover = function (node, text) {
      node.addEventListener("mousemove", function (ev) {
        tip.textContent = text;
        tip.style.display = "block";
        tip.style.left = (ev.clientX + 12) + "px";
        tip.style.top = (ev.clientY + 12) + "px";
      });
      node.addEventListener("mouseleave", function () { tip.style.display = "none"; });
      el("title", {}, node).textContent = text;
    };
    d.bars.forEach(function (b) {
      var x0 = x(b.start_us), w = Math.max(2, x(b.end_us) - x0);
      var r = el("rect", {
        x: x0, y: TOP + b.lane * LANE + (LANE - BAR) / 2, width: w, height: BAR,
        fill: d.paths[b.path][1], class: "bar", "data-bar": "1"
      }, svg);
      hover(r, b.client + "  →  " + b.server + "\n" + d.paths[b.path][0] + " (" + b.type + ", " + b.kind + ")\n" +
        "+" + fmt(b.start_us) + " for " + fmt(b.end_us - b.start_us) + (b.open ? " (still open)" : "") +
        (b.moved ? "\n" + b.moved : ""));
      drawn++;
    });
    d.marks.forEach(function (m) {
      var cx = x(m.at_us), cy = TOP + m.lane * LANE + LANE / 2;
      var p = el("path", {
        d: "M" + (cx - 5) + " " + (cy - 5) + "L" + (cx + 5) + " " + (cy + 5) + "M" + (cx + 5) + " " + (cy - 5) + "L" + (cx - 5) + " " + (cy + 5),
        stroke: "#c62828", "stroke-width": 2.5, class: "mark"
      }, svg);
      hover(p, "failed connect (errno " + m.errno + ")\n" + m.client + "  →  " + m.server + "\n" + d.paths[m.path][0] + "  at +" + fmt(m.at_us));
    });
    document.getElementById("chart").appendChild(svg);
  } catch (e) {
    window.__errors.push(String(e && e.stack || e));
  } finally {
    var st = document.getElementById("status");
    st.setAttribute("data-state", "drawn");
    st.setAttribute("data-bars", String(drawn));
    st.setAttribute("data-errors", window.__errors.join(" | "));
    document.title = "unixtrace timeline: " + drawn + " bars, " + window.__errors.length + " errors";
  }
})();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::conns::collect;
    use crate::timeline::replay::tests::{open, recording};

    #[test]
    fn the_page_carries_its_data_and_no_external_resource() {
        let conns = collect(&mut open(recording())).unwrap();
        let mut out = Vec::new();
        write(&mut out, &conns, "a </script> title", By::Comm).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(!page.contains("src=") && !page.contains("href="), "no external resources");
        assert!(page.contains("a &lt;/script&gt; title"));
        let data = page.split("id=\"data\">").nth(1).unwrap().split("</script>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["bars"].as_array().unwrap().len(), 2, "one bar per end");
        assert_eq!(v["lanes"], serde_json::json!(["client[20]", "server[10]"]));
        assert!(v["bars"][0]["moved"].is_null(), "nothing counted, nothing shown");
    }

    #[test]
    fn a_bar_tells_what_moved_each_way() {
        let mut conns = collect(&mut open(crate::timeline::conns::counted_recording(&[300]))).unwrap();
        let mut one = conns.list[0].clone();
        one.client_traffic = Some(crate::events::Traffic { bytes_sent: 1, msgs_sent: 1, ..Default::default() });
        one.server_traffic = None;
        conns.list.push(one);
        let mut out = Vec::new();
        write(&mut out, &conns, "t", By::Comm).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains("(b.moved ? \"\\n\" + b.moved : \"\")"), "the tooltip shows it");
        let data = page.split("id=\"data\">").nth(1).unwrap().split("</script>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        let moved: Vec<&serde_json::Value> = v["bars"].as_array().unwrap().iter().map(|b| &b["moved"]).collect();
        let counted = "→ 3 msgs / 1.2 KiB, ← 5 msgs / 48 KiB";
        let one = "→ 1 msg / 1 B, ← 0 msgs / 0 B";
        assert_eq!(moved, [counted, counted, one, one], "from the server's close alone; on both ends' bars");
    }

    #[test]
    fn by_unit_a_lane_per_unit() {
        use std::sync::Arc;
        let mut conns = crate::timeline::conns::hostile_conns("client", "server");
        let mut second = conns.list[0].clone();
        second.client = Holder { pid: 21, ..second.client };
        conns.list.push(second);
        let unit = Arc::new(Identity { unit: Some("app\u{1b}.service".into()), ..Identity::default() });
        for c in &mut conns.list {
            c.client_id = Some(unit.clone());
        }
        let mut out = Vec::new();
        write(&mut out, &conns, "t", By::Unit).unwrap();
        let page = String::from_utf8(out).unwrap();
        let data = page.split("id=\"data\">").nth(1).unwrap().split("</script>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["lanes"], serde_json::json!(["app\\x1b.service", "server[10]"]), "both clients on one lane");
        assert!(v["bars"].as_array().unwrap().iter().any(|b| b["client"] == "client[21] fd 3"), "{v}");
    }

    #[test]
    fn names_cannot_end_the_data_or_add_markup() {
        let conns = crate::timeline::conns::hostile_conns("<!--<script>", "ev\u{1b}'&amp;");
        let mut out = Vec::new();
        write(&mut out, &conns, "t\u{7}<b>'\"", By::Comm).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(!page.chars().any(|c| c.is_control() && c != '\n'), "no raw control character");
        assert!(!page.contains("<b>") && !page.contains("<!--"), "{page}");
        assert_eq!(page.matches("</script>").count(), PAGE.matches("</script>").count(), "only the template's");
        assert!(page.contains("<h1>t\\x07&lt;b&gt;&#39;&quot;</h1>"), "the title as text");
        let data = page.split("id=\"data\">").nth(1).unwrap().split("</script>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["lanes"], serde_json::json!(["<!--<script>[20]", "ev\\x1b'&amp;[10]"]));
        assert_eq!(v["paths"][0][0], "@</script><b>x\\x0a\"");
    }
}
