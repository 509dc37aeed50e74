//! Command line. Parsing errors exit with status 2 (clap's default).

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::capture::BackendChoice;
use crate::filter::{ContainerPattern, Glob};
use crate::follow::top::SortBy;
use crate::model::SockType;
use crate::timeline::{export::Format, rotate::Limit, summary::By, time::TimeSpec};

/// Who talks to whom over UNIX-domain sockets.
///
/// Without arguments, prints every UNIX socket of this network namespace,
/// one row per connection, with the processes holding each end.
#[derive(Debug, Parser)]
#[command(name = "unixtrace", version)]
pub struct Args {
    /// Follow live connect/accept/close events after the snapshot.
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Kernel attach strategy for --follow.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Stop following after this long (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop following after this many events.
    #[arg(long)]
    pub count: Option<u64>,

    /// Size of the kernel's event ring buffer for --follow (e.g. 64M, 512K;
    /// rounded up to a power of two). Default: 4 MiB per CPU, 8 to 256 MiB.
    /// A larger buffer rides out longer bursts; -v shows the size in use.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, requires = "follow")]
    pub buffer_size: Option<u64>,

    /// While following, serve Prometheus metrics at http://ADDR:PORT/metrics
    /// (e.g. 127.0.0.1:9632): connections by client, server and path,
    /// failed connects by errno, active connections, lost events.
    #[arg(long, value_name = "ADDR:PORT", requires = "follow")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Label sets (client, server, path) given series of their own under
    /// --metrics; later ones are counted as `other`, so that a burst of new
    /// names cannot overwhelm the Prometheus server.
    #[arg(long, value_name = "N", default_value_t = 500, requires = "metrics")]
    pub metrics_series: usize,

    /// Follow, showing instead of events the busiest connections and names
    /// by bytes (or --sort msgs) per second, both ends named, refreshed
    /// like top(1). Needs a kernel that counts bytes (see -v).
    #[arg(long)]
    pub top: bool,

    /// With --top: what ranks the rows.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = SortBy::Bytes, requires = "top")]
    pub sort: SortBy,

    /// With --top: seconds between refreshes (e.g. 1s, 500ms).
    #[arg(long, value_parser = parse_duration, default_value = "1s", requires = "top")]
    pub interval: Duration,

    /// With --top: stop after N refreshes, printing each after the last
    /// instead of redrawing the screen (for scripts, like top -b -n N).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "top")]
    pub iterations: Option<u64>,

    /// With --top: rows per table.
    #[arg(long, value_name = "N", default_value_t = 20, requires = "top")]
    pub limit: usize,

    /// Say more on stderr (repeat for more): which sources were used and why.
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// JSON Lines on stdout, one object per socket (see docs/json-schema.md).
    #[arg(long)]
    pub json: bool,

    /// Prefix live events with a timestamp.
    #[arg(short = 'T', long)]
    pub timestamp: bool,

    /// Cover every network namespace reachable through /proc/*/ns/net.
    #[arg(long)]
    pub all_netns: bool,

    /// How to find the processes holding each socket.
    #[arg(long, value_enum, default_value_t = HolderChoice::Auto)]
    pub holders: HolderChoice,

    /// Only connections where either end is held by this process (repeatable).
    #[arg(short = 'p', long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only connections where either end is held by this command name (repeatable).
    #[arg(long, value_name = "COMM")]
    pub comm: Vec<String>,

    /// Only connections where either end's name matches this glob
    /// (`*` also crosses `/`; abstract names start with `@`).
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub path: Option<Glob>,

    /// Only connections where either end has this type (repeatable).
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub sock_type: Vec<TypeArg>,

    /// Only listening sockets.
    #[arg(long)]
    pub listening: bool,

    /// Only connections where either end's process is in a systemd unit
    /// matching this glob (`nginx.service`, `session-*.scope`; repeatable).
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub unit: Vec<Glob>,

    /// Only connections where either end's process is in this container:
    /// its id, an id prefix of 12 or more characters, its name (docker's
    /// or podman's where their state gives it, an LXC container's), or a
    /// glob on them (repeatable).
    #[arg(long, value_name = "ID|NAME|GLOB", value_parser = parse_container)]
    pub container: Vec<ContainerPattern>,

    /// Only connections where either end's process runs as this user, by
    /// name or uid (repeatable).
    #[arg(long, value_name = "NAME")]
    pub user: Vec<String>,

    /// List every process holding a socket in the table (default: the
    /// first and +N; JSON always lists them all), and bus clients' D-Bus
    /// names as the bus daemon gives them (JSON has them too).
    #[arg(long)]
    pub wide: bool,

    /// With --follow, record a timeline into FILE (zstd-compressed when it
    /// ends in .zst); see docs/timeline-format.md.
    #[arg(short = 'w', long = "write", value_name = "FILE", requires = "follow")]
    pub write: Option<PathBuf>,

    /// With -w: write the recording in parts, starting the next when the
    /// current one is this old (30s, 15m, 1h, 1d) or this large on disk
    /// (512K, 100M, 1G; base 1024). Give both to rotate at whichever comes
    /// first. Parts are named FILE's stem, the part's number and its start
    /// (UTC), then FILE's extensions: capture-000003-20261204T053452Z.jsonl.zst.
    /// Each part is a complete timeline; `-r FILE` reads them all as one.
    #[arg(long, value_name = "AGE|SIZE", value_parser = crate::timeline::rotate::parse_limit, requires = "write")]
    pub rotate: Vec<Limit>,

    /// With --rotate: keep the N newest parts of FILE (the one being
    /// written included) and delete older ones.
    #[arg(long, value_name = "N", value_parser = crate::timeline::rotate::parse_keep, requires = "rotate")]
    pub keep: Option<usize>,

    /// Replay a timeline recorded with -w, with the same filters and output.
    /// Several FILEs (repeat -r or list them after it, e.g. a shell glob)
    /// are consecutive parts of one rotated recording, read as one timeline;
    /// a FILE that does not exist but was the -w name of a --rotate
    /// recording stands for all its parts.
    #[arg(short = 'r', long = "read", value_name = "FILE", num_args = 1.., conflicts_with_all = ["follow", "write"])]
    pub read: Vec<PathBuf>,

    /// While recording, print nothing on stdout.
    #[arg(short = 'q', long, requires = "write")]
    pub quiet: bool,

    /// Let -w replace an existing file.
    #[arg(long, requires = "write")]
    pub force: bool,

    /// With -r: the connection table as it stood at TIME
    /// (+1.5s from the start, 12:00:00 UTC, or 2026-11-27T12:00:00Z).
    #[arg(long, value_name = "TIME", requires = "read")]
    pub at: Option<TimeSpec>,

    /// With -r: only events at or after TIME.
    #[arg(long, value_name = "TIME", requires = "read", conflicts_with = "at")]
    pub since: Option<TimeSpec>,

    /// With -r: only events at or before TIME.
    #[arg(long, value_name = "TIME", requires = "read", conflicts_with = "at")]
    pub until: Option<TimeSpec>,

    /// With -r: per client, server and name: connections, lifetimes,
    /// failed connects; then the busiest processes.
    #[arg(long, requires = "read", conflicts_with = "at")]
    pub summary: bool,

    /// With --summary: name each end by its command, systemd unit or
    /// container.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = By::Comm, requires = "summary")]
    pub by: By,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Draw a recorded timeline: a graph, a Perfetto trace, or an HTML page.
    Export {
        /// The timeline recorded with -w (several: the parts of a rotated
        /// recording, as with `unixtrace -r`).
        #[arg(short = 'r', long = "read", value_name = "FILE", num_args = 1.., required = true)]
        read: Vec<PathBuf>,
        #[arg(long, value_enum)]
        format: Format,
        /// Where to write (refuses to overwrite without --force).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: PathBuf,
        #[arg(long)]
        force: bool,
        /// With --format dot, draw each unit's or container's processes
        /// inside a cluster named after it; with html, give each unit or
        /// container one lane.
        #[arg(long, value_enum, value_name = "WHAT", default_value_t = By::Comm)]
        by: By,
    },
    Capture(crate::payload::CaptureArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HolderChoice {
    /// The BPF task_file iterator when it can load, else /proc.
    Auto,
    /// Only the BPF task_file iterator.
    Iter,
    /// Only the /proc/*/fd scan.
    Proc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    Stream,
    Dgram,
    Seqpacket,
}

impl From<TypeArg> for SockType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::Stream => Self::Stream,
            TypeArg::Dgram => Self::Dgram,
            TypeArg::Seqpacket => Self::Seqpacket,
        }
    }
}

fn parse_glob(s: &str) -> Result<Glob, String> {
    Glob::new(s).map_err(|e| e.to_string())
}

fn parse_container(s: &str) -> Result<ContainerPattern, String> {
    ContainerPattern::new(s).map_err(|e| e.to_string())
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit {unit:?} (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// A number and the unit after it (`64M` -> 64, "M").
pub(crate) fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    Some((num.parse().ok()?, unit))
}

/// The power of two a size unit stands for: K, M, G (base 1024), with or
/// without B or iB; none or B alone is bytes.
pub(crate) fn size_shift(unit: &str) -> Option<u32> {
    match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => Some(0),
        "K" => Some(10),
        "M" => Some(20),
        "G" => Some(30),
        _ => None,
    }
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) =
        number_and_unit(s).ok_or_else(|| format!("bad size {s:?}: expected a number of bytes such as 64M or 512K"))?;
    let shift = size_shift(unit).ok_or_else(|| format!("bad size unit {unit:?} in {s:?} (use K, M or G)"))?;
    match n.checked_mul(1 << shift) {
        Some(b) if (1..=1 << 31).contains(&b) => Ok(b),
        _ => Err(format!("size {s:?} is out of range: the ring buffer takes 4K to 2G")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("3T").is_err() && parse_size("0").is_err() && parse_size("4G").is_err());
        assert!(parse_size("many").unwrap_err().contains("64M"));
    }

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from(["unixtrace", "--pid", "1", "--pid", "2", "--type", "dgram", "-vv"]).unwrap();
        assert_eq!(a.pid, vec![1, 2]);
        assert_eq!(a.sock_type, vec![TypeArg::Dgram]);
        assert_eq!(a.verbose, 2);
        let a = Args::try_parse_from(["unixtrace", "-r", "t.jsonl", "--at", "+1.5s"]).unwrap();
        assert_eq!(a.at, Some(TimeSpec::Relative(1_500_000_000)));
        assert!(Args::try_parse_from(["unixtrace", "-w", "t.jsonl"]).is_err(), "-w needs --follow");
        assert!(Args::try_parse_from(["unixtrace", "-r", "t", "--at", "noon"]).is_err());
        let a = Args::try_parse_from(["unixtrace", "export", "-r", "t", "--format", "html", "-o", "x.html"]).unwrap();
        assert!(matches!(a.command, Some(Command::Export { format: Format::Html, .. })));
        let a =
            Args::try_parse_from(["unixtrace", "--top", "--sort", "msgs", "--iterations", "3", "--interval", "250ms"])
                .unwrap();
        assert_eq!(
            (a.top, a.sort, a.iterations, a.interval),
            (true, SortBy::Msgs, Some(3), Duration::from_millis(250))
        );
        assert!(Args::try_parse_from(["unixtrace", "--iterations", "3"]).is_err(), "--iterations needs --top");
        assert!(Args::try_parse_from(["unixtrace", "--top", "--iterations", "0"]).is_err());
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn rotation_flags() {
        let a = Args::try_parse_from([
            "unixtrace",
            "-f",
            "-w",
            "c.jsonl",
            "--rotate",
            "1h",
            "--rotate",
            "100M",
            "--keep",
            "24",
        ])
        .unwrap();
        assert_eq!(a.rotate, vec![Limit::Every(Duration::from_secs(3600)), Limit::Size(100 << 20)]);
        assert_eq!(a.keep, Some(24));
        let err = |args: &[&str]| Args::try_parse_from(args).unwrap_err().to_string();
        assert!(err(&["unixtrace", "-f", "-w", "c", "--rotate", "0"]).contains("no unit"));
        assert!(err(&["unixtrace", "-f", "-w", "c", "--rotate", "0s"]).contains("zero"));
        assert!(err(&["unixtrace", "-f", "-w", "c", "--rotate", "5x"]).contains("bad rotation unit"));
        assert!(err(&["unixtrace", "-f", "-w", "c", "--rotate", "1h", "--keep", "0"]).contains("at least 1"));
        assert!(err(&["unixtrace", "-f", "-w", "c", "--keep", "2"]).contains("--rotate"));
        assert!(err(&["unixtrace", "-f", "--rotate", "1h"]).contains("--write"));
        let a = Args::try_parse_from(["unixtrace", "-r", "a", "b", "-r", "c", "--summary"]).unwrap();
        assert_eq!(a.read, ["a", "b", "c"].map(PathBuf::from));
        let a = Args::try_parse_from(["unixtrace", "export", "-r", "a", "b", "--format", "dot", "-o", "x"]).unwrap();
        assert!(matches!(a.command, Some(Command::Export { read, .. }) if read.len() == 2));
    }
}
