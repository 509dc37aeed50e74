//! The message workload of `cargo xtask bench follow` (alone: `cargo xtask
//! bench messages`): 64-byte ping-pong over one UNIX stream connection
//! (tests/src/bin/pingpong.rs) untraced and traced by `unixtrace --follow`
//! (text output, its default per-connection counting on where it has it),
//! interleaved, pinned and unpinned. Reports the round-trip rate's ratio,
//! the events printed, loss and peak RSS, and the ratio with every event
//! filtered out in the kernel (what attaching alone costs); then checks, in one `--json`
//! run, that the close lines carry what each end sent and received, when
//! this unixtrace reports it.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

use super::{GENERATOR_CPU, Rates, Results, TRACER_CPU, Tracer, median, met, mib, run_generator, traced_pair};

/// As for the connection loop, the median of pairs of short runs; 7 pairs
/// of 1.5 s runs, pinned and unpinned, keep the workload near a minute.
const PAIRS: usize = 7;
const SECONDS: &str = "1.5";
/// Round trips of the `--json` run whose close lines are checked.
const COUNTED_TRIPS: &str = "-n 20000";
const RATIO_GOAL: f64 = 0.9;
/// listen, connect, accept, and the closes of the listener and of both
/// ends of the connection.
const EVENTS_PER_RUN: u64 = 6;

/// What one run of pingpong did.
struct Pinged {
    /// Round trips per second of wall-clock time.
    rate: f64,
    /// Round trips per second of the two processes' CPU time together:
    /// waiting for the other end does not count.
    cpu_rate: f64,
    /// Messages each end sent and received (64 bytes each).
    messages: u64,
    bytes: u64,
    client_pid: u64,
    server_pid: u64,
}

impl Rates for Pinged {
    fn cpu_rate(&self) -> f64 {
        self.cpu_rate
    }
    fn rate(&self) -> f64 {
        self.rate
    }
}

fn ping(pingpong: &Path, limit: &str, cpu: Option<usize>) -> Result<Pinged> {
    let out = run_generator(pingpong, limit, cpu)?;
    let get = |k| out.get(k).with_context(|| format!("no {k}= in pingpong's output: {out}"));
    Ok(Pinged {
        rate: get("rate")?,
        cpu_rate: get("cpu_rate")?,
        messages: get("messages")? as u64,
        bytes: get("bytes")? as u64,
        client_pid: get("client_pid")? as u64,
        server_pid: get("server_pid")? as u64,
    })
}

/// The measurements of [`measure`], printed by [`Report::print`].
pub struct Report {
    pinned: Results,
    unpinned: Results,
    /// Pinned ratios with the programs attached but every event filtered
    /// out by their pid test: what attaching alone costs the round trip.
    hooks_only: Vec<f64>,
    counts: Counts,
}

enum Counts {
    /// Not even the close events: something else is wrong, said without
    /// failing the run's other figures.
    NoClose,
    NotReported,
    /// This unixtrace counts, but not with this kernel and strategy: why,
    /// as its capture record says.
    NotCounted(String),
    /// Per end (client, then server): what its close line carried, if it
    /// had one, against what pingpong did.
    Reported {
        expected: [u64; 4],
        ends: [(u64, Option<[u64; 4]>); 2],
    },
}

const COUNT_KEYS: [&str; 4] = ["bytes_sent", "bytes_received", "msgs_sent", "msgs_received"];

pub fn run(release: &Path) -> Result<()> {
    measure(release)?.print();
    Ok(())
}

pub fn measure(release: &Path) -> Result<Report> {
    let unixtrace = release.join("unixtrace");
    let pingpong = release.join("pingpong");
    // Pinned, both ends share CPU 0 and unixtrace has CPU 1, as the
    // connection loop and unixtrace are placed: every round trip is two
    // switches on one core, so its CPU time is the whole round trip and
    // the tracer never competes with the workload. Ends on separate cores
    // would leave unixtrace sharing one of the two cores with an end, and
    // each round trip would wait on cross-core wakeups, whose latency
    // swings more than the hooks cost.
    println!(
        "\nmessages: 64-byte ping-pong over one connection; pinned: both ends on CPU {GENERATOR_CPU}, unixtrace on CPU {TRACER_CPU}; unpinned: neither; {PAIRS} pairs of {SECONDS} s runs"
    );
    let mut results = [Results::default(), Results::default()];
    let mut hooks_only = Vec::new();
    for pair in 1..=PAIRS {
        for (pinned, res) in [true, false].into_iter().zip(results.iter_mut()) {
            let cpu = |pin: usize| pinned.then_some(pin);
            let p = traced_pair(&unixtrace, &["--comm", "pingpong"], cpu(TRACER_CPU), || {
                ping(&pingpong, SECONDS, cpu(GENERATOR_CPU))
            })?;
            println!(
                "pair {pair} messages {:<8} untraced {:>6.0}/s traced {:>6.0}/s (round trips, CPU time) ratio {:.3}, wall {:.3}; printed {} of {EVENTS_PER_RUN}, {} lost; peak RSS {:.1} MiB",
                if pinned { "pinned" } else { "unpinned" },
                p.untraced.cpu_rate,
                p.traced.cpu_rate,
                p.ratio(),
                p.wall_ratio(),
                p.summary.printed,
                p.summary.lost,
                mib(p.peak_kib)
            );
            for l in &p.said {
                println!("  {l}");
            }
            res.add(&p, EVENTS_PER_RUN);
        }
        // `-p 1` (init's events only): every program runs, and the
        // tracepoint strategy's syscall tracepoints put every syscall on
        // the slow path, but none gets past its pid test. The floor that
        // counting adds to. Its own untraced run first.
        let base = ping(&pingpong, SECONDS, Some(GENERATOR_CPU))?;
        let idle = Tracer::start(&unixtrace, &["-p", "1"], Some(TRACER_CPU), None)?;
        let floor = ping(&pingpong, SECONDS, Some(GENERATOR_CPU));
        idle.stop()?;
        let ratio = floor?.cpu_rate / base.cpu_rate;
        println!("pair {pair} messages hooks only (every event filtered in the kernel): ratio {ratio:.3}");
        hooks_only.push(ratio);
    }
    let counts = counts(&unixtrace, &pingpong)?;
    let [pinned, unpinned] = results;
    Ok(Report { pinned, unpinned, hooks_only, counts })
}

/// One pinned run traced with `--json`: the close lines of the two ends
/// against what pingpong says each end sent and received.
fn counts(unixtrace: &Path, pingpong: &Path) -> Result<Counts> {
    let scratch = std::env::temp_dir().join(format!("unixpeer-bench-messages-{}.jsonl", std::process::id()));
    let out = std::fs::File::create(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let tracer = Tracer::start_to(unixtrace, &["--comm", "pingpong", "--json"], Some(TRACER_CPU), None, out)?;
    let run = ping(pingpong, COUNTED_TRIPS, Some(GENERATOR_CPU));
    std::thread::sleep(Duration::from_millis(300));
    let stopped = tracer.stop();
    let text = std::fs::read_to_string(&scratch);
    let _ = std::fs::remove_file(&scratch);
    let (run, text) = (run?, text?);
    stopped?;
    Ok(counted(&text, [run.bytes, run.bytes, run.messages, run.messages], [run.client_pid, run.server_pid]))
}

/// What the close lines in `--json` output `text` carried for the ends
/// held by `pids`, each of which moved `expected`.
fn counted(text: &str, expected: [u64; 4], pids: [u64; 2]) -> Counts {
    let closes: Vec<Vec<(&str, &str)>> = text
        .lines()
        .map(top_level)
        .filter(|f| value(f, "kind") == Some("\"event\"") && value(f, "event") == Some("\"close\""))
        .collect();
    if closes.is_empty() {
        return Counts::NoClose;
    }
    // Null where the capture does not count, absent before unixtrace did.
    if !closes.iter().any(|f| value(f, COUNT_KEYS[0]).is_some_and(|v| v.parse::<u64>().is_ok())) {
        let why = text.lines().map(top_level).find_map(|f| {
            let why = value(&f, "traffic_unavailable")?;
            (value(&f, "kind") == Some("\"capture\"") && why != "null").then(|| why.to_owned())
        });
        return why.map_or(Counts::NotReported, Counts::NotCounted);
    }
    let of = |pid: u64| -> (u64, Option<[u64; 4]>) {
        let mine = closes.iter().filter(|f| value(f, "pid").and_then(|p| p.parse().ok()) == Some(pid));
        let carried = mine.filter_map(|f| {
            let n = |k| value(f, k).and_then(|v| v.parse::<u64>().ok());
            Some([n(COUNT_KEYS[0])?, n(COUNT_KEYS[1])?, n(COUNT_KEYS[2])?, n(COUNT_KEYS[3])?])
        });
        // The listener's close is the server's too, with nothing moved:
        // the connection's is the one that carried the most.
        (pid, carried.max_by_key(|c| c[0] + c[1]))
    };
    Counts::Reported { expected, ends: pids.map(of) }
}

/// The raw value of `key` among [`top_level`]'s fields.
fn value<'a>(fields: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The top-level `"key": value` pairs of one JSON object, values as raw
/// text (strings with their quotes): enough to read unixtrace's lines
/// without a JSON library in xtask, and without mistaking a holder's `pid`
/// for the event's, whatever order the keys come in.
fn top_level(line: &str) -> Vec<(&str, &str)> {
    let mut fields = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
    let (mut string_start, mut last_string) = (0, None);
    let (mut key, mut value_start) = (None, None);
    for (i, c) in line.bytes().enumerate() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    last_string = Some(&line[string_start..i]);
                }
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b':' if depth == 1 => {
                key = last_string;
                value_start = Some(i + 1);
            }
            b',' | b'}' | b']' if depth == 1 => {
                if let (Some(k), Some(v)) = (key.take(), value_start.take()) {
                    fields.push((k, line[v..i].trim()));
                }
            }
            _ => {}
        }
        match c {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    fields
}

impl Report {
    pub fn print(&self) {
        println!(
            "\n| messages (64-byte ping-pong) | ratio in CPU time (median of {PAIRS} pairs, goal >= {RATIO_GOAL}) | wall-clock ratio | round trips/s untraced / traced (CPU time, medians) | events lost | every event printed | peak RSS |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for (name, r) in [("pinned", &self.pinned), ("unpinned", &self.unpinned)] {
            println!(
                "| {name} | {:.3} | {:.3} | {:.0} / {:.0} | {} | {} | {:.1} MiB |",
                median(r.ratios.clone()),
                median(r.wall_ratios.clone()),
                median(r.untraced.clone()),
                median(r.traced.clone()),
                r.lost,
                r.exact,
                mib(r.peak_kib)
            );
        }
        println!(
            "| hooks only, pinned: every event filtered in the kernel | {:.3} | | | | | |",
            median(self.hooks_only.clone())
        );
        let said = |r: &Results| {
            let ratio = median(r.ratios.clone());
            format!("{} ({ratio:.3})", met(ratio, RATIO_GOAL))
        };
        println!(
            "messages goal traced/untraced >= {RATIO_GOAL}: pinned {}, unpinned {}",
            said(&self.pinned),
            said(&self.unpinned)
        );
        match &self.counts {
            Counts::NoClose => println!("counts: unixtrace --json printed no close line for pingpong"),
            Counts::NotReported => println!("counts: not reported by this unixtrace"),
            Counts::NotCounted(why) => println!("counts: not counted here: {why}"),
            Counts::Reported { expected, ends } => {
                let matched = ends.iter().all(|(_, c)| c.as_ref() == Some(expected));
                println!("counts match: {matched}");
                if !matched {
                    let show = |c: &[u64; 4]| {
                        COUNT_KEYS.iter().zip(c).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
                    };
                    println!("  each end did: {}", show(expected));
                    for ((pid, carried), end) in ends.iter().zip(["client", "server"]) {
                        match carried {
                            Some(c) => println!("  {end} (pid {pid}) close line: {}", show(c)),
                            None => println!("  {end} (pid {pid}): no close line with the counts"),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(pid: u64, counts: &str) -> String {
        format!(r#"{{{counts}"event":"close","kind":"event","peer_holders":[{{"pid":9,"fd":3}}],"pid":{pid}}}"#)
    }

    #[test]
    fn counts_are_read_per_end_from_close_lines() {
        let c =
            |s, r, ms, mr| format!(r#""bytes_received":{r},"bytes_sent":{s},"msgs_received":{mr},"msgs_sent":{ms},"#);
        let text = [
            r#"{"kind":"event","event":"connect","pid":10}"#.to_owned(),
            close(20, &c(0, 0, 0, 0)),
            close(10, &c(640, 640, 10, 10)),
            close(20, &c(640, 640, 10, 10)),
        ]
        .join("\n");
        let Counts::Reported { expected, ends } = counted(&text, [640, 640, 10, 10], [10, 20]) else {
            panic!("counts not found");
        };
        assert_eq!(ends, [(10, Some(expected)), (20, Some(expected))]);
        let Counts::Reported { ends, .. } = counted(&text, [640, 640, 10, 10], [10, 30]) else {
            panic!("counts not found");
        };
        assert_eq!(ends[1], (30, None));
        assert!(matches!(counted(&close(10, ""), [0; 4], [10, 20]), Counts::NotReported));
        let nulls = close(10, r#""bytes_received":null,"bytes_sent":null,"msgs_received":null,"msgs_sent":null,"#);
        assert!(matches!(counted(&nulls, [0; 4], [10, 20]), Counts::NotReported));
        let capture = r#"{"kind":"capture","traffic":null,"traffic_unavailable":"no hooks"}"#;
        let Counts::NotCounted(why) = counted(&format!("{capture}\n{nulls}"), [0; 4], [10, 20]) else {
            panic!("the capture record's reason not read");
        };
        assert_eq!(why, "\"no hooks\"");
        assert!(matches!(counted("", [0; 4], [10, 20]), Counts::NoClose));
    }

    #[test]
    fn top_level_fields_skip_nested_objects_and_strings() {
        let line =
            r#"{"kind":"event","peer_holders":[{"pid":7,"comm":"a,\"b}"}],"pid":42,"path":null,"bytes_sent":1280}"#;
        let f = top_level(line);
        assert_eq!(value(&f, "pid"), Some("42"));
        assert_eq!(value(&f, "kind"), Some("\"event\""));
        assert_eq!(value(&f, "path"), Some("null"));
        assert_eq!(value(&f, "bytes_sent"), Some("1280"));
        assert_eq!(value(&f, "comm"), None);
        assert_eq!(value(&f, "peer_holders"), Some(r#"[{"pid":7,"comm":"a,\"b}"}]"#));
    }
}
