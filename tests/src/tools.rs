//! Running the workload and the tools, and reading their output.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

/// (pid, fd)
pub type Holders = BTreeSet<(u32, u32)>;

/// What one tool says about one socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub holders: Holders,
    /// Live peer inode; `None` when the tool shows none (or 0).
    pub peer: Option<u64>,
}

/// These tests load eBPF programs, inspect every process's sockets and enter
/// namespaces: as anything but root they would prove nothing, so they fail
/// instead of skipping.
pub fn require_root() {
    // SAFETY: geteuid has no failure mode.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests must run as root (cargo xtask test and CI do); euid is {euid}");
}

/// The unixtrace binary under test: `$UNIXTRACE_BIN`, else the newer of
/// target/{debug,release}/unixtrace (`$CARGO_TARGET_DIR` respected). Cargo
/// does not build another package's binary for these tests, so run
/// `cargo build -p unixpeer-user` first; a binary older than its sources
/// fails the test rather than testing stale code.
pub fn unixtrace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("UNIXTRACE_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let newest = ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("unixtrace"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    let Some((built, bin)) = newest else {
        panic!("no unixtrace binary in {}: run `cargo build -p unixpeer-user` or set UNIXTRACE_BIN", target.display());
    };
    let src = newest_mtime(&root.join("unixpeer-user/src"));
    assert!(
        src <= built,
        "{} is older than unixpeer-user/src: rebuild it (cargo build -p unixpeer-user)",
        bin.display()
    );
    bin
}

/// Whether this runs inside a guest of the VM matrix (`cargo xtask vm-test`).
pub fn in_vm() -> bool {
    std::env::var_os("UNIXPEER_IN_VM").is_some_and(|v| v == "1")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        let t = if meta.is_dir() { newest_mtime(&e.path()) } else { meta.modified().unwrap_or(newest) };
        newest = newest.max(t);
    }
    newest
}

/// A socket the workload says it holds.
#[derive(Clone, Debug)]
pub struct FarmSocket {
    pub pid: u32,
    pub fd: u32,
    pub inode: u64,
    pub label: String,
}

/// A running sockfarm; dropping it releases every socket.
pub struct Farm {
    child: Child,
    stdin: Option<ChildStdin>,
    pub sockets: Vec<FarmSocket>,
    pub pairs: Vec<(u64, u64)>,
    /// Lines other than S/P/R, e.g. LISTENING.
    pub notes: Vec<String>,
}

impl Farm {
    /// Starts `cmd` (a sockfarm invocation) and waits until it prints `until`.
    pub fn start(mut cmd: Command, until: &str) -> Farm {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start sockfarm");
        let stdin = child.stdin.take();
        let mut farm = Farm { child, stdin, sockets: Vec::new(), pairs: Vec::new(), notes: Vec::new() };
        farm.read_until(until);
        farm
    }

    /// Reads manifest lines until one equals `until`.
    pub fn read_until(&mut self, until: &str) {
        let stdout = self.child.stdout.as_mut().expect("stdout is piped");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("cannot read sockfarm output");
            assert!(n > 0, "sockfarm exited before printing {until}");
            let l = line.trim_end();
            if l == until {
                return;
            }
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["S", pid, fd, inode, label] => self.sockets.push(FarmSocket {
                    pid: pid.parse().unwrap(),
                    fd: fd.parse().unwrap(),
                    inode: inode.parse().unwrap(),
                    label: (*label).to_owned(),
                }),
                ["P", a, b] => self.pairs.push((a.parse().unwrap(), b.parse().unwrap())),
                ["R", _] => {}
                _ => self.notes.push(l.to_owned()),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Inode -> (pid, fd) of every holder, as the workload created them.
    pub fn holders(&self) -> HashMap<u64, Holders> {
        let mut map: HashMap<u64, Holders> = HashMap::new();
        for s in &self.sockets {
            map.entry(s.inode).or_default().insert((s.pid, s.fd));
        }
        map
    }

    /// Inode -> peer inode for every pair the workload made.
    pub fn peers(&self) -> HashMap<u64, u64> {
        self.pairs.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect()
    }

    pub fn labelled(&self, label: &str) -> Vec<&FarmSocket> {
        self.sockets.iter().filter(|s| s.label == label).collect()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

pub fn sockfarm(bin: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args);
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("output is UTF-8")
}

/// `unixtrace --json` output, keyed by inode.
pub fn parse_json(text: &str) -> HashMap<u64, serde_json::Value> {
    text.lines().map(crate::tracer::json_line).map(|v| (v["inode"].as_u64().expect("inode is a number"), v)).collect()
}

/// The (pid, fd) pairs of a `holders`/`peer_holders` array.
pub fn json_holders(v: &serde_json::Value) -> Holders {
    v.as_array()
        .expect("holders is an array")
        .iter()
        .map(|h| (h["pid"].as_u64().unwrap() as u32, h["fd"].as_u64().unwrap() as u32))
        .collect()
}

pub fn json_seen(v: &serde_json::Value) -> Seen {
    Seen { holders: json_holders(&v["holders"]), peer: v["peer_inode"].as_u64() }
}

/// `ss -xap`: `Netid State Recv-Q Send-Q Local Port Peer Port Process`,
/// where Port is the inode and the peer's Port its inode (0: none).
/// Lines that do not parse are not ours and are skipped.
pub fn parse_ss(text: &str) -> HashMap<u64, Seen> {
    let mut map = HashMap::new();
    for line in text.lines().skip(1) {
        let (head, users) = match line.find("users:((") {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, ""),
        };
        let tokens: Vec<&str> = head.split_whitespace().collect();
        if tokens.len() < 8 {
            continue;
        }
        let n = tokens.len();
        let (Ok(inode), Ok(peer)) = (tokens[n - 3].parse::<u64>(), tokens[n - 1].parse::<u64>()) else {
            continue;
        };
        map.insert(inode, Seen { holders: ss_users(users), peer: (peer != 0).then_some(peer) });
    }
    map
}

/// `users:(("comm",pid=1,fd=3),("comm",pid=2,fd=3))`
fn ss_users(users: &str) -> Holders {
    let mut out = Holders::new();
    let mut rest = users;
    while let Some(i) = rest.find(",pid=") {
        rest = &rest[i + 5..];
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Some(j) = rest.find(",fd=") else { break };
        rest = &rest[j + 4..];
        let fd: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let (Ok(pid), Ok(fd)) = (pid.parse(), fd.parse()) {
            out.insert((pid, fd));
        }
    }
    out
}

/// `lsof +E -U -F pfinT`: field output, one field per line, so names with
/// spaces cannot shift columns. The peer comes from the `->INO=` endpoint
/// note, trusted only for CONNECTED sockets (for listeners lsof names a
/// waiting client there).
pub fn parse_lsof(text: &str) -> HashMap<u64, Seen> {
    #[derive(Default)]
    struct Record {
        fd: Option<u32>,
        inode: Option<u64>,
        peer: Option<u64>,
        connected: bool,
    }
    let mut map: HashMap<u64, Seen> = HashMap::new();
    let mut commit = |pid: u32, r: &Record| {
        if let (Some(fd), Some(inode)) = (r.fd, r.inode) {
            let seen = map.entry(inode).or_default();
            seen.holders.insert((pid, fd));
            if r.connected && r.peer.is_some() {
                seen.peer = r.peer;
            }
        }
    };
    let mut pid = 0u32;
    let mut rec = Record::default();
    for line in text.lines() {
        let (tag, value) = line.split_at(line.len().min(1));
        match tag {
            "p" | "f" => {
                commit(pid, &rec);
                rec = Record::default();
                if tag == "p" {
                    pid = value.parse().unwrap_or(0);
                } else {
                    rec.fd = value.parse().ok();
                }
            }
            "i" => rec.inode = value.parse().ok(),
            "n" => {
                rec.peer = value.split_whitespace().find_map(|w| w.strip_prefix("->INO=")).and_then(|v| v.parse().ok());
            }
            "T" if value == "ST=CONNECTED" => rec.connected = true,
            _ => {}
        }
    }
    commit(pid, &rec);
    map
}

/// Copies a binary where an unprivileged user can run it (target/ may sit
/// under a private home directory).
pub fn copy_for_everyone(bin: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dst = dir.join(bin.file_name().unwrap());
    std::fs::copy(bin, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_lines_parse() {
        let text = "Netid State  Recv-Q Send-Q Local Address:Port  Peer Address:Port Process\n\
            u_str ESTAB  0      0                  * 16204            * 16206 users:((\"python3\",pid=9392,fd=8),(\"python3\",pid=9350,fd=8))\n\
            u_str LISTEN 1      5        /tmp/x.sock 16203            * 0     users:((\"py\",pid=9,fd=7))\n\
            u_str ESTAB  0      0                  * 1450             * 1449\n";
        let m = parse_ss(text);
        assert_eq!(m[&16204].peer, Some(16206));
        assert_eq!(m[&16204].holders, [(9350, 8), (9392, 8)].into_iter().collect());
        assert_eq!(m[&16203].peer, None);
        assert!(m[&1450].holders.is_empty());
    }

    #[test]
    fn lsof_fields_parse() {
        let text = "p21771\ncsockfarm\nf5\ni38707\nntype=STREAM ->INO=38708 21772,sockfarm-,6u\nTST=CONNECTED\n\
                    f7\ni38709\n n/tmp/x type=STREAM ->INO=1\nTST=LISTEN\np3\ncx\nf9\ni38707\nntype=STREAM\nTST=CONNECTED\n";
        let m = parse_lsof(text);
        assert_eq!(m[&38707].peer, Some(38708));
        assert_eq!(m[&38707].holders, [(3, 9), (21771, 5)].into_iter().collect());
        assert_eq!(m[&38709].peer, None);
    }
}
