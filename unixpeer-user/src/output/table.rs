//! The human view: one row per connection, both ends side by side.

use std::io::Write;

use super::OutputError;
use crate::filter::Filter;
use crate::holders::Holder;
use crate::model::{Connection, Link, Model, Status};

const HEADERS: [&str; COLUMNS] =
    ["TYPE", "STATE", "INODE", "PROCESS", "PEER", "PEER PROCESS", "NAME", "NETNS", "QUEUE"];
const COLUMNS: usize = 9;
/// Columns that give up width (and wrap) when the terminal is narrow.
const SHRINKABLE: [usize; 3] = [3, 5, 6];
const MIN_SHRUNK: usize = 12;
/// Words longer than this (long paths) may still be cut.
const MAX_WORD: usize = 40;
const GAP: usize = 2;

/// All cells of a row in one string: one allocation per row instead of
/// nine keeps a 50k-socket table small.
struct Row {
    text: String,
    ends: [u32; COLUMNS],
    /// Named sockets first, grouped by name with the listener on top.
    key: (bool, Status, u64),
}

impl Row {
    fn new(cells: [&str; COLUMNS], key: (bool, Status, u64)) -> Self {
        let mut text = String::with_capacity(cells.iter().map(|c| c.len()).sum());
        let mut ends = [0u32; COLUMNS];
        for (end, cell) in ends.iter_mut().zip(cells) {
            text.push_str(cell);
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Self { text, ends, key }
    }

    fn cell(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).unwrap_or("")
    }

    fn cells(&self) -> [&str; COLUMNS] {
        std::array::from_fn(|i| self.cell(i))
    }
}

/// How many holders a cell lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holders {
    /// The first and `+N` for the rest: a socket held by a whole process
    /// tree must not widen every row.
    First,
    /// Every one (`--wide`).
    All,
}

pub fn write(
    out: &mut impl Write,
    model: &Model,
    filter: &Filter,
    width: Option<usize>,
    holders: Holders,
) -> Result<(), OutputError> {
    let mut rows: Vec<Row> = model
        .connections()
        .into_iter()
        .filter(|c| filter.matches(model, c.a, c.b))
        .map(|c| row(model, &c, holders))
        .collect();
    rows.sort_by(|x, y| (x.key.0, x.cell(6), x.key.1, x.key.2).cmp(&(y.key.0, y.cell(6), y.key.1, y.key.2)));
    let widths = layout(&rows, width);
    write_line(out, &HEADERS, &widths)?;
    for row in &rows {
        write_line(out, &row.cells(), &widths)?;
    }
    out.flush()?;
    Ok(())
}

fn row(model: &Model, c: &Connection, list: Holders) -> Row {
    let a = model.get(c.a);
    let status = a.map_or(Status::Unknown, |s| model.status(s));
    let name = model.name_of(c).map(ToString::to_string);
    let peer = match (c.b, c.link, status) {
        (Some(b), Some(Link::OneWay), _) => format!("->{b}"),
        (Some(b), _, _) => b.to_string(),
        (None, _, Status::PeerClosed) => "gone".to_owned(),
        (None, _, _) => "-".to_owned(),
    };
    let peer_holders = c.b.map_or_else(String::new, |b| holders_cell(model, b, list));
    let b_socket = c.b.and_then(|b| model.get(b));
    let netns = match (a.map(|s| s.netns), b_socket.map(|s| s.netns)) {
        (Some(x), Some(y)) if x != y => format!("{x}/{y}"),
        (Some(x), _) => x.to_string(),
        (None, _) => "-".to_owned(),
    };
    let queue = match (a, status) {
        (Some(s), Status::Listening) => s.rqlen.map_or_else(String::new, |(n, max)| format!("{n}/{max} waiting")),
        (Some(s), _) => match (s.rqlen, b_socket.and_then(|b| b.rqlen), c.link) {
            (Some((r, _)), Some((pr, _)), Some(Link::Pair)) => format!("rq {r}/{pr}"),
            (Some((r, _)), _, _) => format!("rq {r}"),
            _ => String::new(),
        },
        (None, _) => String::new(),
    };
    // What `a` carried so far, where a recording sampled it (`--at`).
    let queue = match model.traffic(c.a) {
        Some(t) => {
            let mut moved = Vec::with_capacity(64);
            crate::follow::render::push_traffic(&mut moved, t);
            let moved = String::from_utf8_lossy(&moved);
            if queue.is_empty() { moved.into_owned() } else { format!("{queue}; {moved}") }
        }
        None => queue,
    };
    let sock_type = a.map_or_else(String::new, |s| s.sock_type.to_string());
    let inode = c.a.to_string();
    let holders = holders_cell(model, c.a, list);
    let peer_holders = if c.b.is_some() { peer_holders } else { String::new() };
    Row::new(
        [
            &sock_type,
            status.as_str(),
            &inode,
            &holders,
            &peer,
            &peer_holders,
            name.as_deref().unwrap_or("-"),
            &netns,
            &queue,
        ],
        (name.is_none(), status, c.a),
    )
}

/// Every holder, or the first and `+N`, then with `--wide` a bus client's
/// names as its bus gave them.
fn holders_cell(model: &Model, inode: u64, list: Holders) -> String {
    let mut s = holder_names(model, model.holders(inode), list);
    if list == Holders::All
        && let Some(label) = model.bus_label(inode)
    {
        s.push_str(&label.cell());
    }
    s
}

/// `comm[pid]:fd` (`:?` when the fd is unknown) and the process's unit or
/// container in parentheses when it has one, space separated: every
/// holder, or the first and `+N`. Names show escaped: widths are then
/// counted on what the terminal shows.
fn holder_names(model: &Model, holders: &[Holder], list: Holders) -> String {
    use std::fmt::Write as _;
    if holders.is_empty() {
        return "-".to_owned();
    }
    let shown = match list {
        Holders::First => &holders[..1],
        Holders::All => holders,
    };
    let mut s = String::new();
    for (i, h) in shown.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{}[{}]:", h.comm, h.pid);
        match h.fd {
            Some(fd) => {
                let _ = write!(s, "{fd}");
            }
            None => s.push('?'),
        }
        if let Some(tag) = model.identity(h.pid).and_then(crate::identity::Identity::tag) {
            let _ = write!(s, " ({tag})");
        }
    }
    if shown.len() < holders.len() {
        let _ = write!(s, " +{}", holders.len() - shown.len());
    }
    s
}

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// Natural column widths, shrunk (widest shrinkable first) to fit `limit`.
fn layout(rows: &[Row], limit: Option<usize>) -> [usize; COLUMNS] {
    let mut widths = HEADERS.map(width_of);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.cells()) {
            *w = (*w).max(width_of(cell));
        }
    }
    let Some(limit) = limit else { return widths };
    // Never narrower than the longest holder or name, so wrapping happens
    // between words, not inside `comm[pid]:fd`.
    let mut floor = [0usize; COLUMNS];
    for row in rows {
        for &i in &SHRINKABLE {
            let longest = row.cell(i).split(' ').map(width_of).max().unwrap_or(0);
            floor[i] = floor[i].max(longest.min(MAX_WORD));
        }
    }
    let total = |w: &[usize; COLUMNS]| w.iter().sum::<usize>() + GAP * (COLUMNS - 1);
    while total(&widths) > limit {
        let Some(&widest) =
            SHRINKABLE.iter().filter(|&&i| widths[i] > MIN_SHRUNK.max(floor[i])).max_by_key(|&&i| widths[i])
        else {
            break;
        };
        widths[widest] -= 1;
    }
    widths
}

/// Writes one row, wrapping cells wider than their column onto extra lines.
fn write_line(out: &mut impl Write, cells: &[&str; COLUMNS], widths: &[usize; COLUMNS]) -> std::io::Result<()> {
    if cells.iter().zip(widths).all(|(c, &w)| width_of(c) <= w) {
        return write_physical(out, cells, widths);
    }
    let wrapped: Vec<Vec<String>> = cells.iter().zip(widths).map(|(c, &w)| wrap(c, w)).collect();
    let height = wrapped.iter().map(Vec::len).max().unwrap_or(1);
    for i in 0..height {
        let parts: [&str; COLUMNS] = std::array::from_fn(|col| wrapped[col].get(i).map_or("", String::as_str));
        write_physical(out, &parts, widths)?;
    }
    Ok(())
}

/// One line of output: cells padded to their widths, no trailing blanks.
fn write_physical(out: &mut impl Write, cells: &[&str; COLUMNS], widths: &[usize; COLUMNS]) -> std::io::Result<()> {
    const SPACES: [u8; 128] = [b' '; 128];
    let last = cells.iter().rposition(|c| !c.is_empty()).unwrap_or(0);
    for (col, cell) in cells.iter().enumerate().take(last + 1) {
        out.write_all(cell.as_bytes())?;
        if col < last {
            let mut pad = widths[col].saturating_sub(width_of(cell)) + GAP;
            while pad > 0 {
                let n = pad.min(SPACES.len());
                out.write_all(&SPACES[..n])?;
                pad -= n;
            }
        }
    }
    out.write_all(b"\n")
}

/// Greedy word wrap; words longer than the column are cut.
fn wrap(cell: &str, width: usize) -> Vec<String> {
    if width_of(cell) <= width || width == 0 {
        return vec![cell.to_owned()];
    }
    let mut lines = vec![String::new()];
    for word in cell.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let cur = lines.last_mut().expect("lines is never empty");
            let used = width_of(cur);
            let sep = usize::from(used > 0);
            if used + sep + word.len() <= width {
                if sep == 1 {
                    cur.push(' ');
                }
                cur.extend(word.iter());
                break;
            }
            if used > 0 {
                lines.push(String::new());
                continue;
            }
            let rest = word.split_off(width);
            cur.extend(word.iter());
            lines.push(String::new());
            word = rest;
            if word.is_empty() {
                break;
            }
        }
    }
    if lines.last().is_some_and(String::is_empty) && lines.len() > 1 {
        lines.pop();
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_every_character() {
        let cell = "sockfarm[100]:3 sockfarm[101]:3 averyveryverylongcommand[7]:12";
        let lines = wrap(cell, 16);
        assert!(lines.iter().all(|l| width_of(l) <= 16), "{lines:?}");
        assert_eq!(lines.concat().replace(' ', ""), cell.replace(' ', ""));
    }

    #[test]
    fn names_other_processes_chose_are_shown_escaped_and_aligned() {
        use crate::holders::{Comm, HolderMap};
        use crate::model::{KernelState, SockName, Socket};
        let sock = |inode, peer, name: Option<SockName>| Socket {
            name,
            ..Socket::sample(inode, KernelState::Established, Some(peer))
        };
        let hostile = Comm::new(b"ev\x1b[31mil\x07");
        let mut holders = HolderMap::default();
        holders.insert(10, [Holder { pid: 7, fd: Some(3), comm: hostile }].into_iter().collect());
        holders.insert(11, [Holder { pid: 8, fd: Some(4), comm: "server".into() }].into_iter().collect());
        let name = SockName::abstract_name(b"</script><b>x\n\"");
        let model = Model::new(vec![sock(10, 11, None), sock(11, 10, Some(name))], holders);
        let mut out = Vec::new();
        write(&mut out, &model, &Filter::default(), None, Holders::First).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert_eq!(text.lines().count(), 2, "{text}");
        let (header, row) = (text.lines().next().unwrap(), text.lines().nth(1).unwrap());
        assert!(row.contains("ev\\x1b[31mil\\x07[7]:3"), "{text}");
        assert!(row.contains("@</script><b>x\\x0a\""), "{text}");
        // Columns line up on what is shown, escapes included.
        let column = |line: &str, at: &str| line.find(at).unwrap();
        assert_eq!(column(header, "PEER PROCESS"), column(row, "server[8]:4"), "{text}");
        assert_eq!(column(header, "PEER "), column(row, "11"), "{text}");
    }

    #[test]
    fn many_holders_show_as_the_first_and_a_count_unless_wide() {
        let holder = |pid, fd| Holder { pid, fd, comm: "chromium".into() };
        let many: Vec<Holder> = (0..8).map(|i| holder(12152 + i, Some(6))).collect();
        let m = Model::default();
        assert_eq!(holder_names(&m, &many, Holders::First), "chromium[12152]:6 +7");
        let all = holder_names(&m, &many, Holders::All);
        assert_eq!((all.split(' ').count(), all.starts_with("chromium[12152]:6 chromium[12153]:6")), (8, true));
        // An fd nobody reported is unknown, not 4294967295.
        assert_eq!(holder_names(&m, &[holder(9, None)], Holders::First), "chromium[9]:?");
        assert_eq!(holder_names(&m, &[], Holders::All), "-");
    }

    #[test]
    fn a_holder_shows_its_container_or_unit_escaped() {
        use crate::identity::{Container, Identity, Runtime};
        let mut m = Model::default();
        let unit = Identity { unit: Some("evil\u{1b}[2J.service".into()), ..Identity::default() };
        m.processes_mut().learn(1, unit);
        let container =
            Container { runtime: Runtime::Docker, id: "0123456789abcdef".into(), name: None, pod_uid: None, qos: None };
        m.processes_mut()
            .learn(2, Identity { container: Some(container), unit: Some("x.scope".into()), ..Identity::default() });
        let h = |pid| Holder { pid, fd: Some(3), comm: "app".into() };
        assert_eq!(holder_names(&m, &[h(1)], Holders::First), "app[1]:3 (evil\\x1b[2J.service)");
        assert_eq!(holder_names(&m, &[h(2), h(3)], Holders::All), "app[2]:3 (docker:0123456789ab) app[3]:3");
    }

    #[test]
    fn short_cells_stay_whole() {
        assert_eq!(wrap("abc", 10), vec!["abc"]);
    }
}
