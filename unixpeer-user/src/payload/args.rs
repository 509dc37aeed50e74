//! `unixtrace capture`'s command line.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::PayloadOptions;
use crate::{cli::TypeArg, filter::Glob};

/// tcpdump's classic snap length, and the most one message copies: the
/// kernel stages each copy in a per-CPU buffer of twice this, whose
/// offsets the verifier bounds with a 16-bit mask. It holds an HTTP
/// request's headers or a D-Bus message whole; longer messages are kept
/// with their true length and marked truncated.
const DEFAULT_SNAPLEN: u32 = unixpeer_common::PAYLOAD_SNAP_MAX;

/// Copy the messages sent on UNIX sockets into a pcapng file that
/// Wireshark and tshark decode: each connection a TCP flow (HTTP and
/// PostgreSQL by their usual ports), datagrams UDP, D-Bus as D-Bus
/// messages. Every packet's comment names the sending and the receiving
/// process, fd, socket inode and path.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Where to write the pcapng; `-` for stdout (`| tshark -i -`).
    /// Without it, one line per message on stdout, as tcpdump prints.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,

    /// Without -w: each message's first bytes (-s) in hex and ASCII, as
    /// tcpdump -X shows them; with --json, as `data_hex`.
    #[arg(short = 'X', conflicts_with = "write")]
    pub hex: bool,

    /// Without -w: one JSON object per message (see docs/capture.md).
    #[arg(long, conflicts_with = "write")]
    pub json: bool,

    /// Let -w replace an existing file.
    #[arg(long, requires = "write")]
    pub force: bool,

    /// Only messages this process sends.
    #[arg(short = 'p', long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only messages processes of this command name send.
    #[arg(long, value_name = "COMM")]
    pub comm: Option<String>,

    /// Only connections whose name (either end's) matches this glob
    /// (`*` also crosses `/`; abstract names start with `@`). The kernel
    /// copies only for names starting with the glob's literal prefix.
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub path: Option<Glob>,

    /// Only sockets of this type (repeatable).
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub sock_type: Vec<TypeArg>,

    /// Bytes copied of each message, 1 to 65535 (0: 65535). Longer
    /// messages keep their true length and are marked truncated.
    #[arg(short = 's', long = "snaplen", value_name = "BYTES", default_value_t = DEFAULT_SNAPLEN,
          value_parser = parse_snaplen)]
    pub snaplen: u32,

    /// Stop after this long (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many messages.
    #[arg(short = 'c', long)]
    pub count: Option<u64>,

    /// Size of the kernel's ring buffer (e.g. 64M; rounded up to a power
    /// of two). Default: 4 MiB per CPU, 8 to 256 MiB.
    #[arg(long, value_name = "BYTES", value_parser = crate::cli::parse_size)]
    pub buffer_size: Option<u64>,
}

fn parse_glob(s: &str) -> Result<Glob, String> {
    Glob::new(s).map_err(|e| e.to_string())
}

fn parse_snaplen(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Ok(DEFAULT_SNAPLEN),
        Ok(n) if n <= DEFAULT_SNAPLEN => Ok(n),
        _ => Err(format!("bad snap length {s:?}: expected 0 to {DEFAULT_SNAPLEN} bytes")),
    }
}

impl CaptureArgs {
    pub(crate) fn options(&self) -> PayloadOptions {
        // SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5.
        let sock_types = self.sock_type.iter().fold(0u32, |m, t| {
            m | 1
                << match t {
                    TypeArg::Stream => 1,
                    TypeArg::Dgram => 2,
                    TypeArg::Seqpacket => 5,
                }
        });
        let prefix = self.path.as_ref().map(Glob::literal_prefix).unwrap_or_default();
        let prefix = match prefix.strip_prefix('@') {
            Some(rest) => [&[0u8][..], rest.as_bytes()].concat(),
            None => prefix.into_bytes(),
        };
        PayloadOptions {
            pid: self.pid,
            comm: self.comm.clone(),
            sock_types,
            prefix,
            snaplen: self.snaplen,
            buffer_size: self.buffer_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CaptureArgs,
    }

    fn parse(args: &[&str]) -> Result<CaptureArgs, String> {
        Cli::try_parse_from(std::iter::once("capture").chain(args.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn options_from_arguments() {
        let a = parse(&["-w", "-", "--path", "/run/*.sock", "--type", "dgram", "--type", "seqpacket", "-s", "256"])
            .unwrap();
        let o = a.options();
        assert_eq!((o.prefix.as_slice(), o.sock_types, o.snaplen), (&b"/run/"[..], 0b100100, 256));
        assert_eq!(parse(&["-w", "f", "--path", "@dbus*"]).unwrap().options().prefix, b"\0dbus");
        assert_eq!(parse(&["-w", "f", "-s", "0"]).unwrap().snaplen, 65535);
        assert_eq!(parse(&["-w", "f"]).unwrap().snaplen, 65535);
        assert!(parse(&["-w", "f", "-s", "65536"]).unwrap_err().contains("0 to 65535"));
        assert!(parse(&["-w", "f", "-s", "-1"]).is_err());
        assert!(parse(&["--pid", "1"]).unwrap().write.is_none(), "without -w: lines on stdout");
        let a = parse(&["-X", "--json"]).unwrap();
        assert!(a.hex && a.json);
        assert!(parse(&["-w", "f", "-X"]).is_err(), "-X is for lines, not the pcapng");
        assert!(parse(&["--force"]).is_err(), "--force needs -w");
        assert!(parse(&["-w", "f", "--path", "[x"]).is_err());
    }
}
