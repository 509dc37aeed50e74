//! Long-running recordings: `-w FILE --rotate 1h|100M --keep N` writes a
//! series of parts instead of FILE, each a complete timeline of its own.
//!
//! A part is named after FILE with its file number and the UTC instant it
//! started inserted before FILE's extensions: `-w capture.jsonl.zst`
//! writes `capture-000000-20261204T053452Z.jsonl.zst`,
//! `capture-000001-20261204T063452Z.jsonl.zst`, ... The number comes first
//! and is zero-padded, so `ls` and shell globs list the parts in recording
//! order (up to 999999; then the number grows a digit), whatever the wall
//! clock did. A new capture with the same FILE numbers on from the highest
//! part already there, so a restarted recorder never collides with (or
//! overwrites) an earlier one's parts. `--keep N` keeps the N newest parts
//! of FILE's name (the one being written included) and deletes the others.

use std::{
    ffi::OsString,
    io,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::follow::render::Clock;

/// When to start the next part: whichever of the limits is reached first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub every: Option<Duration>,
    /// Bytes on disk (compressed, under zstd).
    pub size: Option<u64>,
    /// Parts kept at most, the one being written included.
    pub keep: Option<usize>,
}

impl Rotation {
    /// From the `--rotate` limits (repeatable: one of time, one of size;
    /// the smaller wins when one is given twice) and `--keep`.
    pub fn new(limits: &[Limit], keep: Option<usize>) -> Self {
        let every = limits.iter().filter_map(|l| if let Limit::Every(d) = l { Some(*d) } else { None }).min();
        let size = limits.iter().filter_map(|l| if let Limit::Size(s) = l { Some(*s) } else { None }).min();
        Self { every, size, keep }
    }
}

/// One `--rotate` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Every(Duration),
    Size(u64),
}

/// `--rotate`: a duration (`30s`, `15m`, `1h`, `1d`) or a size (`512K`,
/// `100M`, `1G`; base 1024, an optional `B` or `iB` after the unit).
pub fn parse_limit(s: &str) -> Result<Limit, String> {
    let usage = "use a duration (30s, 15m, 1h, 1d) or a size (512K, 100M, 1G)";
    let (n, unit) = crate::cli::number_and_unit(s).ok_or_else(|| format!("bad rotation {s:?}: {usage}"))?;
    let (secs, shift) = match unit.to_ascii_uppercase().as_str() {
        "" => return Err(format!("rotation {s:?} has no unit: {usage}")),
        "S" => (Some(1), 0),
        "M" if unit == "m" => (Some(60), 0),
        "H" => (Some(3600), 0),
        "D" => (Some(86_400), 0),
        _ => match crate::cli::size_shift(unit) {
            Some(shift) => (None, shift),
            None => return Err(format!("bad rotation unit {unit:?} in {s:?}: {usage}")),
        },
    };
    if n == 0 {
        return Err(format!("rotation {s:?} is zero: {usage}"));
    }
    let too_big = || format!("rotation {s:?} is too large");
    match secs {
        Some(mul) => Ok(Limit::Every(Duration::from_secs(n.checked_mul(mul).ok_or_else(too_big)?))),
        None => Ok(Limit::Size(n.checked_mul(1 << shift).ok_or_else(too_big)?)),
    }
}

/// `--keep`: at least one part.
pub fn parse_keep(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("--keep 0 would delete the part being written: keep at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("bad --keep {s:?}: a number of files, such as 24")),
    }
}

/// FILE's name split before its extensions: `capture.jsonl.zst` →
/// (`capture`, `.jsonl.zst`). A leading dot belongs to the stem.
fn split_name(base: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = base.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    let dot = name.iter().skip(1).position(|&b| b == b'.').map_or(name.len(), |i| i + 1);
    let (stem, ext) = name.split_at(dot);
    (dir, stem.to_vec(), ext.to_vec())
}

/// The path of part number `seq` of `base`, started at `wall_ns`.
pub(crate) fn part_path(base: &Path, seq: u64, wall_ns: i128) -> PathBuf {
    let (dir, stem, ext) = split_name(base);
    // 2026-12-04T05:34:52.123456Z → 20261204T053452Z
    let t = Clock { start_mono_ns: 0, wall_offset_ns: wall_ns }.rfc3339(0);
    let stamp: String = t[..19].chars().filter(|c| *c != '-' && *c != ':').collect();
    let mut name = stem;
    name.extend_from_slice(format!("-{seq:06}-{stamp}Z").as_bytes());
    name.extend_from_slice(&ext);
    dir.join(OsString::from_vec(name))
}

/// The file number of `name` when it is a part of `base`'s recording.
fn part_number(stem: &[u8], ext: &[u8], name: &[u8]) -> Option<u64> {
    let mid = name.strip_prefix(stem)?.strip_prefix(b"-")?.strip_suffix(ext)?;
    let mid = std::str::from_utf8(mid).ok()?;
    let (seq, stamp) = mid.split_once('-')?;
    let stamp_ok = stamp.len() == 16
        && stamp.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    (seq.len() >= 6 && seq.bytes().all(|b| b.is_ascii_digit()) && stamp_ok).then(|| seq.parse().ok())?
}

/// Every part of `base`'s recordings there is, oldest first.
pub fn parts(base: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (dir, stem, ext) = split_name(base);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        if let Some(seq) = part_number(&stem, &ext, entry.file_name().as_bytes()) {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The number the next capture's first part takes.
pub(crate) fn next_number(base: &Path) -> io::Result<u64> {
    match parts(base) {
        Ok(p) => Ok(p.last().map_or(0, |(seq, _)| seq + 1)),
        // The directory is missing: creating the part will say so.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The oldest parts beyond the `keep` newest, in deletion order.
pub(crate) fn beyond(parts: &[(u64, PathBuf)], keep: usize) -> &[(u64, PathBuf)] {
    &parts[..parts.len().saturating_sub(keep)]
}

/// Deletes the parts of `base` beyond the `keep` newest; says which went.
pub(crate) fn prune(base: &Path, keep: usize) -> Vec<PathBuf> {
    let all = match parts(base) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("cannot list the parts of {} to apply --keep: {e}", crate::output::escape::path(base));
            return Vec::new();
        }
    };
    let mut gone = Vec::new();
    for (_, p) in beyond(&all, keep) {
        match std::fs::remove_file(p) {
            Ok(()) => gone.push(p.clone()),
            Err(e) => log::warn!("--keep: cannot delete {}: {e}", crate::output::escape::path(p)),
        }
    }
    gone
}

/// What `-r` reads: each FILE as given, except a FILE that does not exist
/// but names a rotating recording (the `-w` name), which stands for its
/// parts, oldest first: those of its newest capture, when a restarted
/// recorder left older captures' parts beside them (each left out is
/// said in a note).
pub fn expand(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    for p in paths {
        let found = match std::fs::symlink_metadata(p).is_err().then(|| parts(p)) {
            Some(Ok(found)) if !found.is_empty() => found,
            _ => {
                out.push(p.clone());
                continue;
            }
        };
        let found: Vec<PathBuf> = found.into_iter().map(|(_, p)| p).collect();
        let ids: Vec<Option<String>> = found.iter().map(|f| super::reader::capture_id_of(f)).collect();
        let newest = ids.last().cloned().flatten();
        // An unreadable newest part: all of them, for the reader to say why.
        let from = match newest {
            Some(_) => ids.iter().rposition(|id| *id != newest).map_or(0, |i| i + 1),
            None => 0,
        };
        if from > 0 {
            notes.push(format!(
                "{}: reading its newest capture, {} parts from {}; the {from} parts before it are another \
                 capture's (name them to read them)",
                crate::output::escape::path(p),
                found.len() - from,
                crate::output::escape::path(&found[from]),
            ));
        }
        out.extend_from_slice(&found[from..]);
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_bad_ones_say_why() {
        assert_eq!(parse_limit("1h"), Ok(Limit::Every(Duration::from_secs(3600))));
        assert_eq!(parse_limit("30s"), Ok(Limit::Every(Duration::from_secs(30))));
        assert_eq!(parse_limit("15m"), Ok(Limit::Every(Duration::from_secs(900))));
        assert_eq!(parse_limit("2d"), Ok(Limit::Every(Duration::from_secs(172_800))));
        assert_eq!(parse_limit("100M"), Ok(Limit::Size(100 << 20)));
        assert_eq!(parse_limit("512K"), Ok(Limit::Size(512 << 10)));
        assert_eq!(parse_limit("1GiB"), Ok(Limit::Size(1 << 30)));
        assert_eq!(parse_limit("64kb"), Ok(Limit::Size(64 << 10)));
        assert!(parse_limit("0").unwrap_err().contains("no unit"));
        assert!(parse_limit("0h").unwrap_err().contains("zero"));
        assert!(parse_limit("0M").unwrap_err().contains("zero"));
        assert!(parse_limit("5x").unwrap_err().contains("bad rotation unit \"x\""));
        assert!(parse_limit("1.5h").is_err());
        assert!(parse_limit("-1h").is_err());
        assert!(parse_limit("h").is_err());
        assert!(parse_limit("99999999999999999999G").is_err());
        assert!(parse_limit("18446744073709551615G").unwrap_err().contains("too large"));
    }

    #[test]
    fn keep_is_at_least_one() {
        assert_eq!(parse_keep("24"), Ok(24));
        assert!(parse_keep("0").unwrap_err().contains("at least 1"));
        assert!(parse_keep("-1").is_err() && parse_keep("x").is_err());
    }

    #[test]
    fn the_smaller_limit_of_each_kind_wins() {
        let r = Rotation::new(
            &[Limit::Every(Duration::from_secs(60)), Limit::Size(10), Limit::Every(Duration::from_secs(5))],
            Some(2),
        );
        assert_eq!(r, Rotation { every: Some(Duration::from_secs(5)), size: Some(10), keep: Some(2) });
    }

    const WALL: i128 = 1_796_362_492_123_456_789; // 2026-12-04T05:34:52.123Z

    #[test]
    fn parts_are_named_before_the_extensions_and_sort_in_order() {
        let base = Path::new("/var/log/unixtrace/capture.jsonl.zst");
        assert_eq!(part_path(base, 3, WALL), Path::new("/var/log/unixtrace/capture-000003-20261204T053452Z.jsonl.zst"));
        assert_eq!(part_path(Path::new("cap"), 0, WALL), Path::new("./cap-000000-20261204T053452Z"));
        assert_eq!(
            part_path(Path::new(".hidden.jsonl"), 1, WALL),
            Path::new("./.hidden-000001-20261204T053452Z.jsonl")
        );
        // The number decides the order, not the clock.
        let a = part_path(base, 9, WALL);
        let b = part_path(base, 10, WALL - 86_400_000_000_000);
        assert!(a.as_os_str() < b.as_os_str());
    }

    #[test]
    fn only_parts_of_this_name_are_counted() {
        let (_, stem, ext) = split_name(Path::new("capture.jsonl"));
        let n = |name: &str| part_number(&stem, &ext, name.as_bytes());
        assert_eq!(n("capture-000007-20261204T053452Z.jsonl"), Some(7));
        assert_eq!(n("capture-1000000-20261204T053452Z.jsonl"), Some(1_000_000));
        assert_eq!(n("capture.jsonl"), None);
        assert_eq!(n("capture-000007-20261204T053452Z.jsonl.zst"), None, "another FILE's parts");
        assert_eq!(n("capture-x-000007-20261204T053452Z.jsonl"), None);
        assert_eq!(n("capture-07-20261204T053452Z.jsonl"), None);
        assert_eq!(n("capture-000007-2026120xT053452Z.jsonl"), None);
        assert_eq!(n("other-000007-20261204T053452Z.jsonl"), None);
    }

    #[test]
    fn keep_deletes_the_oldest_and_a_new_capture_numbers_on() {
        let dir = std::env::temp_dir().join(format!("unixtrace-rotate-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("c.jsonl");
        assert_eq!(next_number(&base).unwrap(), 0);
        assert_eq!(next_number(&dir.join("missing/c.jsonl")).unwrap(), 0);
        for seq in [0, 1, 2, 10] {
            std::fs::write(part_path(&base, seq, WALL + i128::from(seq)), b"x").unwrap();
        }
        std::fs::write(dir.join("c.jsonl"), b"not a part").unwrap();
        std::fs::write(dir.join("c-000003-20261204T053452Z.jsonl.zst"), b"not a part").unwrap();
        let seqs = |base: &Path| parts(base).unwrap().into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(&base), vec![0, 1, 2, 10]);
        assert_eq!(next_number(&base).unwrap(), 11);
        let all = parts(&base).unwrap();
        assert_eq!(beyond(&all, 3).len(), 1);
        assert_eq!(beyond(&all, 9).len(), 0);
        let gone = prune(&base, 2);
        assert_eq!(gone, vec![part_path(&base, 0, WALL), part_path(&base, 1, WALL + 1)]);
        assert_eq!(seqs(&base), vec![2, 10]);
        assert!(dir.join("c.jsonl").exists(), "FILE itself is not a part");
        // -r FILE stands for the parts only when FILE itself is not there.
        assert_eq!(expand(std::slice::from_ref(&base)).0, vec![base.clone()]);
        std::fs::remove_file(&base).unwrap();
        assert_eq!(
            expand(std::slice::from_ref(&base)).0,
            parts(&base).unwrap().into_iter().map(|(_, p)| p).collect::<Vec<_>>()
        );
        let nothing = dir.join("nothing.jsonl");
        assert_eq!(expand(std::slice::from_ref(&nothing)), (vec![nothing], vec![]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
