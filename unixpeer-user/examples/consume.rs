//! The consumer alone, for `cargo xtask bench consume`: a recorded stream
//! of kernel events goes through decode, model and one output on the
//! calling thread, with no kernel involved.
//!
//! Usage:
//!   consume encode RECORDING STREAM   the recording's seeds and events, as
//!                                     the kernel's records (`events::encode`)
//!   consume STREAM OUTPUT...          OUTPUT: text, json, record, record-zst,
//!                                     or model (decode and model alone)
//!
//! Each output reads the stream in chunks and only the time spent consuming
//! them is counted. One line per output: `consume OUTPUT events=N
//! seconds=S cpu_seconds=C rate=R cpu_rate=CR tracked=T`. Encoding is a
//! separate run so that the reader's memory is not the consumer's.

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    path::Path,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use unixpeer_common::UnixEvent;
use unixpeer_user::{
    events,
    follow::{Consumer, FollowOptions, Recorder, Tracker, render::clock_ns},
    timeline::{
        format::{Record, SeedRecord},
        reader::Reader,
        writer::TimelineWriter,
    },
};

/// A record in the stream is framed as the ring buffer frames it: an 8-byte
/// header (the length, then 4 bytes the ring keeps for itself), the record,
/// and zeros up to a multiple of 8. Records are of different lengths (the
/// kernel writes only the part of the name in use).
const FRAME_HEADER: usize = 8;
/// Bytes read from the scratch file at a time: 8192 of the longest records.
const CHUNK: usize = 8192 * (FRAME_HEADER + size_of::<UnixEvent>());

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, recording, stream] if cmd == "encode" => {
            let n = encode(Path::new(recording), Path::new(stream))?;
            eprintln!("consume: {n} kernel records from {recording} in {stream}");
            Ok(())
        }
        [stream, outputs @ ..] if !outputs.is_empty() => {
            let scratch = std::env::temp_dir().join(format!("unixpeer-consume-{}", std::process::id()));
            std::fs::create_dir_all(&scratch)?;
            let result = run(Path::new(stream), outputs, &scratch);
            let _ = std::fs::remove_dir_all(&scratch);
            result
        }
        _ => bail!(
            "usage: consume encode RECORDING STREAM | consume STREAM OUTPUT... (text, json, record, record-zst, model)"
        ),
    }
}

fn run(stream: &Path, outputs: &[String], scratch: &Path) -> Result<()> {
    let (seeds, infer): (Vec<SeedRecord>, bool) = serde_json::from_slice(&std::fs::read(seeds_path(stream))?)?;
    let raw = stream;
    for output in outputs {
        let quiet = output.starts_with("record") || output == "model";
        let opts = FollowOptions { json: output == "json", quiet, ..Default::default() };
        let writer = match output.as_str() {
            "text" | "json" | "model" => None,
            "record" => Some(TimelineWriter::create(&scratch.join("out.jsonl"), true)?),
            "record-zst" => Some(TimelineWriter::create(&scratch.join("out.jsonl.zst"), true)?),
            other => bail!("unknown output {other:?}: text, json, record, record-zst or model"),
        };
        let writer = writer.map(std::cell::RefCell::new);
        let mut recorder = writer.as_ref();
        let mut tracker = Tracker::new(infer);
        tracker.seed(&SeedRecord::model(&seeds));
        let devnull = BufWriter::with_capacity(1 << 16, File::create("/dev/null")?);
        let clock = unixpeer_user::follow::render::Clock::now();
        let filter = |_: &unixpeer_user::follow::Resolved, _: &unixpeer_user::identity::Processes| true;
        let mut sink =
            Consumer::new(tracker, devnull, &opts, clock, &filter, recorder.as_mut().map(|r| r as &mut dyn Recorder));
        let (seconds, cpu_seconds) = feed(raw, &mut sink)?;
        let tracked = sink.tracker.len();
        let events = sink.summary.received;
        if let Some(w) = &writer {
            w.borrow_mut().finish(events).context("finishing the recording")?;
        }
        println!(
            "consume {output} events={events} seconds={seconds:.3} cpu_seconds={cpu_seconds:.3} rate={:.0} cpu_rate={:.0} tracked={tracked}",
            events as f64 / seconds,
            events as f64 / cpu_seconds
        );
    }
    Ok(())
}

/// Every record of `raw` through the consumer; returns the wall and CPU
/// seconds spent in it (reading the file is not counted).
fn feed<W: Write>(raw: &Path, sink: &mut Consumer<'_, W>) -> Result<(f64, f64)> {
    let mut file = File::open(raw)?;
    let mut buf = vec![0u8; CHUNK];
    let (mut wall, mut cpu) = (0.0, 0u64);
    // Bytes at the front of `buf` that the last read left: a record cut
    // by the chunk's end.
    let mut have = 0;
    loop {
        let n = read_full(&mut file, &mut buf[have..])?;
        have += n;
        let (t0, c0) = (Instant::now(), clock_ns(libc::CLOCK_THREAD_CPUTIME_ID));
        let mut at = 0;
        while let Some(len) = buf.get(at..at + 4).filter(|_| at + FRAME_HEADER <= have) {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let start = at + FRAME_HEADER;
            if start + len > have {
                break;
            }
            sink.record(&buf[start..start + len]);
            at = (start + len.next_multiple_of(8)).min(have);
        }
        sink.finish_batch()?;
        wall += t0.elapsed().as_secs_f64();
        cpu += clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - c0;
        if n == 0 {
            if at < have {
                bail!("{}: the stream ends inside a record ({} bytes left)", raw.display(), have - at);
            }
            break;
        }
        buf.copy_within(at..have, 0);
        have -= at;
    }
    let (t0, c0) = (Instant::now(), clock_ns(libc::CLOCK_THREAD_CPUTIME_ID));
    sink.finish();
    sink.finish_batch()?;
    if let Some(r) = sink.recorder() {
        r.flush().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    wall += t0.elapsed().as_secs_f64();
    cpu += clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - c0;
    Ok((wall, cpu as f64 / 1e9))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Where the seeds of a stream are kept, beside it.
fn seeds_path(stream: &Path) -> std::path::PathBuf {
    let mut p = stream.as_os_str().to_owned();
    p.push(".seeds.json");
    p.into()
}

/// The recording's events written as kernel records to `raw`, and its
/// seeds (with whether it infers releases at exit) beside it.
fn encode(recording: &Path, raw: &Path) -> Result<u64> {
    let mut reader = Reader::open(recording)?;
    let infer = reader.header.infer_release_on_exit;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(raw)?);
    let (mut seeds, mut n) = (Vec::new(), 0u64);
    let mut in_seeds = true;
    while let Some(rec) = reader.next_record()? {
        match rec {
            Record::Seed(s) if in_seeds => seeds.push(s),
            Record::SeedsDone => in_seeds = false,
            Record::Event(e) => {
                in_seeds = false;
                let raw = events::encode(&e);
                let record = events::record_bytes(&raw);
                out.write_all(&(record.len() as u32).to_le_bytes())?;
                out.write_all(&[0; FRAME_HEADER - 4])?;
                out.write_all(record)?;
                out.write_all(&[0; 8][..record.len().next_multiple_of(8) - record.len()])?;
                n += 1;
            }
            _ => {}
        }
    }
    out.flush()?;
    if n == 0 {
        bail!("{} holds no events", recording.display());
    }
    std::fs::write(seeds_path(raw), serde_json::to_vec(&(&seeds, infer))?)?;
    Ok(n)
}
