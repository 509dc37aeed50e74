//! `cargo xtask bench consume`: the consumer alone. A real capture of the
//! 1,000,000-connection loop is recorded (7,000,002 kernel events, none
//! lost), then replayed as kernel records through decode, model and each
//! output on one core with no kernel involved (`examples/consume.rs`), and
//! set against the rate at which the kernel produces those events with the
//! loop untraced at full speed: the consumer must be at least 5x faster.
//!
//! A first round of every output runs before the counted ones and is shown
//! but not counted: on this VM the first write into never-touched memory
//! costs about four times a later one (420 MB with dd: 0.71 s of system time
//! the first time, 0.17 s after), which the recordings' 1.4 GB of page cache
//! pay once in the life of the machine, not per recording.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{GENERATOR_CPU, TRACER_CPU, Tracer, generate, mib, pin_to, wait_rss};

const ITERATIONS: &str = "-n 1000000";
const OUTPUTS: [&str; 5] = ["model", "text", "json", "record", "record-zst"];
const ROUNDS: usize = 3;
const GOAL: f64 = 2_000_000.0;
const HEADROOM: f64 = 5.0;

pub fn run(release: &Path, consume: &Path) -> Result<()> {
    let unixtrace = release.join("unixtrace");
    let connloop = release.join("connloop");
    let scratch = std::env::temp_dir().join(format!("unixpeer-bench-consume-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = run_in(&unixtrace, &connloop, consume, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_in(unixtrace: &Path, connloop: &Path, consume: &Path, scratch: &Path) -> Result<()> {
    let untraced = generate(connloop, "3", Some(GENERATOR_CPU))?;
    let kernel_rate = untraced.rate * super::EVENTS_PER_ITERATION as f64;
    println!(
        "the loop untraced on CPU {GENERATOR_CPU}: {:.0} iterations/s, so the kernel produces {kernel_rate:.0} events/s",
        untraced.rate
    );
    let recording = record(unixtrace, connloop, scratch)?;
    let stream = scratch.join("loop.raw");
    crate::util::run(Command::new(consume).arg("encode").arg(&recording).arg(&stream))?;
    let mut rates: Vec<(&str, Vec<f64>, u64)> = OUTPUTS.iter().map(|o| (*o, Vec::new(), 0)).collect();
    for round in 0..=ROUNDS {
        for (output, samples, peak) in &mut rates {
            let mut cmd = Command::new(consume);
            cmd.arg(&stream).arg(*output).stdout(Stdio::piped()).stderr(Stdio::inherit());
            pin_to(&mut cmd, TRACER_CPU);
            let child = cmd.spawn().context("start the consume harness")?;
            let pid = child.id() as i32;
            let mut stdout = String::new();
            std::io::Read::read_to_string(&mut child.stdout.context("stdout")?, &mut stdout)?;
            let rss = wait_rss(pid)?;
            let rate = field(&stdout, "cpu_rate").with_context(|| format!("consume said: {stdout}"))?;
            let events = field(&stdout, "events").unwrap_or(0.0);
            let warm_up = if round == 0 { " (warm-up, not counted)" } else { "" };
            println!(
                "round {round} {output:<10} {rate:>10.0} events/s (CPU time) over {events:.0} events, peak RSS {:.1} MiB{warm_up}",
                mib(rss)
            );
            if round > 0 {
                samples.push(rate);
            }
            *peak = (*peak).max(rss);
        }
    }
    println!("\n| output | events/s, one core (median of {ROUNDS}) | x the kernel's rate | goal | peak RSS |");
    println!("| --- | --- | --- | --- | --- |");
    for (output, samples, peak) in rates {
        let rate = super::median(samples);
        let goal = if output == "model" {
            "(breakdown)"
        } else if rate >= GOAL.max(HEADROOM * kernel_rate) {
            "met"
        } else {
            "MISSED"
        };
        println!("| {output} | {rate:.0} | {:.1}x | {goal} | {:.1} MiB |", rate / kernel_rate, mib(peak));
    }
    println!("(goal: >= {GOAL:.0} events/s and >= {HEADROOM}x the kernel's {kernel_rate:.0} events/s)");
    Ok(())
}

/// Records the loop at full rate; a recording that lost events is no
/// stream of every kernel event, so it is made again (three tries).
fn record(unixtrace: &Path, connloop: &Path, scratch: &Path) -> Result<std::path::PathBuf> {
    let path = scratch.join("loop.jsonl.zst");
    let p = path.to_string_lossy();
    for attempt in 1..=3 {
        let tracer =
            Tracer::start(unixtrace, &["--comm", "connloop", "-w", &p, "-q", "--force"], Some(TRACER_CPU), None)?;
        let run = generate(connloop, ITERATIONS, Some(GENERATOR_CPU))?;
        std::thread::sleep(Duration::from_millis(300));
        let (summary, rss, _) = tracer.stop()?;
        println!(
            "recording {attempt}: {} iterations at {:.0}/s, {} of {} events recorded ({} with bookkeeping), {} lost, recorder peak RSS {:.1} MiB",
            run.iterations,
            run.rate,
            summary.printed,
            run.events(),
            summary.received,
            summary.lost,
            mib(rss)
        );
        if summary.lost == 0 && summary.printed == run.events() {
            return Ok(path);
        }
    }
    bail!("three recordings of the loop lost events: the consumer cannot be measured on a complete stream")
}

fn field(text: &str, key: &str) -> Option<f64> {
    text.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}
