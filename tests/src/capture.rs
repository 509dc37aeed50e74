//! Running `unixtrace capture` and reading what it wrote back.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tracer::{interrupt, kill_and_reap, require_root, unixtrace_bin};

/// A scratch folder, and the children to kill, gone however the test ends.
pub struct Scratch {
    pub dir: PathBuf,
    pub children: Vec<Child>,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("unixpeer-capture-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self { dir, children: Vec::new() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `cmd` and waits for its first line on stdout.
    pub fn start_until_line(&mut self, cmd: &mut Command) -> String {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read its first line");
        self.children.push(child);
        assert!(!line.is_empty(), "{cmd:?} printed nothing");
        line
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill_and_reap(c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `unixtrace capture`, started once its programs are attached.
pub struct Capture {
    child: Child,
    /// Its first line: where it captures, and at which hooks.
    first: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Capture {
    pub fn start(args: &[&str], stdout: Stdio) -> Self {
        require_root();
        let mut child = Command::new(unixtrace_bin())
            .arg("capture")
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start unixtrace capture");
        let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut first = String::new();
        err.read_line(&mut first).expect("read unixtrace's stderr");
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            rest
        });
        if !first.starts_with("unixtrace: capturing to ") {
            kill_and_reap(&mut child);
            panic!("unixtrace capture did not start: {first}{}", stderr.join().unwrap_or_default());
        }
        Self { child, first, stderr }
    }

    /// Ctrl-C, then its exit status and stderr.
    pub fn stop(mut self) -> String {
        // What was sent last is drained at most 20 ms later.
        std::thread::sleep(Duration::from_millis(200));
        interrupt(&self.child);
        let status = self.child.wait().expect("wait for unixtrace");
        let err = self.first + &self.stderr.join().unwrap_or_default();
        assert!(status.success(), "unixtrace capture failed: {err}");
        err
    }
}

/// An enhanced packet block as written: interface, lengths, bytes, comment.
#[derive(Debug)]
pub struct Packet {
    pub interface: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
    pub comment: String,
}

/// (block type, body) of every block of a pcapng file, checking the
/// framing every reader relies on: lengths a multiple of 4 and repeated at
/// the end of each block.
pub fn blocks(file: &Path) -> Vec<(u32, Vec<u8>)> {
    let b = std::fs::read(file).expect("read the capture");
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        assert!(len >= 12 && len % 4 == 0 && at + len <= b.len(), "a bad block at {at}");
        assert_eq!(u32_at(at + len - 4) as usize, len, "the trailing length of the block at {at}");
        out.push((kind, b[at + 8..at + len - 4].to_vec()));
        at += len;
    }
    out
}

/// The options of a block whose fixed part is `fixed` bytes long.
fn options(body: &[u8], fixed: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut o = fixed;
    while o + 4 <= body.len() {
        let code = u16::from_le_bytes([body[o], body[o + 1]]);
        let len = u16::from_le_bytes([body[o + 2], body[o + 3]]) as usize;
        if code == 0 {
            break;
        }
        out.push((code, &body[o + 4..o + 4 + len]));
        o += 4 + len.next_multiple_of(4);
    }
    out
}

/// Every enhanced packet block of the file.
pub fn packets(file: &Path) -> Vec<Packet> {
    blocks(file)
        .into_iter()
        .filter(|(kind, _)| *kind == 6)
        .map(|(_, body)| {
            let u = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
            let cap = u(12) as usize;
            let comment = options(&body, 20 + cap.next_multiple_of(4))
                .into_iter()
                .find(|(code, _)| *code == 1)
                .map(|(_, v)| String::from_utf8(v.to_vec()).expect("comments are UTF-8"))
                .unwrap_or_default();
            Packet { interface: u(0), orig_len: u(16), data: body[20..20 + cap].to_vec(), comment }
        })
        .collect()
}

/// The `isb_ifdrop` of the last interface statistics block for interface 0.
pub fn last_ifdrop(file: &Path) -> Option<u64> {
    blocks(file)
        .into_iter()
        .filter(|(kind, body)| *kind == 5 && body[..4] == [0, 0, 0, 0])
        .filter_map(|(_, body)| {
            let drop = options(&body, 12).into_iter().find(|(code, _)| *code == 5)?.1.to_vec();
            Some(u64::from_le_bytes(drop.try_into().ok()?))
        })
        .next_back()
}

/// The numbers in capture's closing line: (messages captured, lost).
pub fn closing_counts(stderr: &str) -> (usize, usize) {
    stderr
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("unixtrace: captured ")?;
            let captured = rest.split(' ').next()?.parse().ok()?;
            let lost = rest.rsplit(", ").next()?.strip_suffix(" lost")?.parse().ok()?;
            Some((captured, lost))
        })
        .unwrap_or_else(|| panic!("no closing line: {stderr}"))
}
