//! Recording throughput: synthetic events through the real timeline writer,
//! plain and zstd, then read back. `cargo run --release --example
//! timeline_bench [EVENTS]`; the live capture peaks near 300k events/s.

use std::time::Instant;

use unixpeer_common::EventKind;
use unixpeer_user::events::{Event, SockType};
use unixpeer_user::timeline::{format::Record, reader::Reader, writer::TimelineWriter};

fn event(i: u64) -> Event {
    let kinds = [EventKind::Connect, EventKind::Accept, EventKind::Close, EventKind::Close, EventKind::FdClose];
    Event {
        ts_ns: 1_000_000_000 + i * 3_000,
        kind: kinds[(i % kinds.len() as u64) as usize],
        pid: 4000 + (i % 7) as u32,
        tid: 4000 + (i % 7) as u32,
        uid: 1000,
        comm: "sockfarm-client".into(),
        netns: 4_026_531_840,
        sock_type: SockType::Stream,
        errno: 0,
        fd: Some((i % 1000) as i32 + 3),
        peer_fd: None,
        listen_fd: Some(3),
        inode: Some(100_000 + i),
        peer_inode: Some(200_000 + i),
        sk: 0xffff_8880_0000_0000 + i * 64,
        peer_sk: 0xffff_8880_1000_0000 + i * 64,
        path: Some("/run/unixpeer-bench/server.sock".into()),
        child_pid: None,
        traffic: None,
        sent_to: Vec::new(),
        inferred: None,
        passed: None,
    }
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(2_000_000), |s| s.parse())?;
    let events: Vec<Event> = (0..n).map(event).collect();
    let dir = std::env::temp_dir().join(format!("unixpeer-tl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for name in ["bench.jsonl", "bench.jsonl.zst"] {
        let path = dir.join(name);
        let clock = unixpeer_user::follow::render::Clock { start_mono_ns: 0, wall_offset_ns: 0 };
        let start = Instant::now();
        let mut w = TimelineWriter::create(&path, true)?;
        w.header(&unixpeer_user::timeline::format::Header::new(
            unixpeer_user::capture::Strategy::Tracepoint,
            "bench",
            true,
            &clock,
        ))?;
        w.seeds(&unixpeer_user::model::Model::default())?;
        // Flush as the follow loop does, once per 300k events (a second at full rate).
        for (i, e) in events.iter().enumerate() {
            w.event(e);
            if i % 300_000 == 299_999 {
                w.flush()?;
            }
        }
        w.finish(n)?;
        drop(w);
        let took = start.elapsed().as_secs_f64();
        let size = std::fs::metadata(&path)?.len();
        let start = Instant::now();
        let mut r = Reader::open(&path)?;
        let mut read = 0u64;
        while let Some(rec) = r.next_record()? {
            read += u64::from(matches!(rec, Record::Event(_)));
        }
        let read_took = start.elapsed().as_secs_f64();
        assert_eq!(read, n, "every event reads back");
        println!(
            "{name:<16} write {:>9.0} events/s ({:.2} s for {n}), {:.1} bytes/event; read {:>9.0} events/s",
            n as f64 / took,
            took,
            size as f64 / n as f64,
            n as f64 / read_took
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
