//! Instants in a recording, as users write them: `+1.5s` from the start,
//! `12:00:00` on the recording's day, or `2026-11-27T12:00:00Z`. Wall-clock
//! times are UTC, like the timestamps unixtrace prints.

use std::str::FromStr;

use super::{TimelineError, format::Header};

const NS: i128 = 1_000_000_000;
const DAY: i128 = 86_400 * NS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    /// Nanoseconds after the recording started.
    Relative(i128),
    /// Nanoseconds since the epoch.
    Absolute(i128),
    /// Nanoseconds since midnight, on the recording's day.
    TimeOfDay(i128),
}

impl FromStr for TimeSpec {
    type Err = TimelineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| TimelineError::Time(s.to_owned(), why.to_owned());
        let t = s.trim();
        if let Some(rel) = t.strip_prefix('+') {
            return parse_span(rel).map(Self::Relative).ok_or_else(|| bad("use e.g. +1.5s, +500ms, +2m"));
        }
        if let Some((date, clock)) = t.split_once(['T', ' ']) {
            let days = parse_date(date).ok_or_else(|| bad("use e.g. 2026-11-27T12:00:00Z"))?;
            let clock = clock.strip_suffix('Z').unwrap_or(clock);
            let tod = parse_clock(clock).ok_or_else(|| bad("use e.g. 2026-11-27T12:00:00Z"))?;
            return Ok(Self::Absolute(i128::from(days) * DAY + tod));
        }
        parse_clock(t.strip_suffix('Z').unwrap_or(t))
            .map(Self::TimeOfDay)
            .ok_or_else(|| bad("use +1.5s (from the start), 12:00:00 (UTC) or 2026-11-27T12:00:00Z"))
    }
}

impl TimeSpec {
    /// The instant on the recording's monotonic clock (what event times use).
    pub(crate) fn resolve(&self, h: &Header) -> u64 {
        let wall = match *self {
            Self::Relative(ns) => h.start_wall_ns + ns,
            Self::Absolute(ns) => ns,
            Self::TimeOfDay(tod) => {
                let mut t = h.start_wall_ns.div_euclid(DAY) * DAY + tod;
                // 00:30 in a recording started at 23:50 means the next day.
                if t < h.start_wall_ns - DAY / 2 {
                    t += DAY;
                }
                t
            }
        };
        let mono = wall - h.start_wall_ns + i128::from(h.start_mono_ns);
        mono.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// `1.5s`, `500ms`, `250us`, `2m`, `1h`, or plain seconds.
fn parse_span(s: &str) -> Option<i128> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let scale: i128 = match unit {
        "" | "s" => NS,
        "ms" => 1_000_000,
        "us" | "µs" => 1_000,
        "ns" => 1,
        "m" => 60 * NS,
        "h" => 3600 * NS,
        _ => return None,
    };
    decimal(num, scale)
}

/// A non-negative decimal times `scale`, exactly (no float rounding).
fn decimal(num: &str, scale: i128) -> Option<i128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    if int.len() > 12 || frac.len() > 9 {
        return None;
    }
    let whole: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut part: i128 = 0;
    let mut div: i128 = 1;
    for c in frac.chars() {
        part = part * 10 + i128::from(c.to_digit(10)?);
        div *= 10;
    }
    Some(whole * scale + part * scale / div)
}

/// `HH:MM`, `HH:MM:SS` or `HH:MM:SS.ffffff`, as nanoseconds since midnight.
fn parse_clock(s: &str) -> Option<i128> {
    let mut parts = s.split(':');
    let h: i128 = parts.next()?.parse().ok()?;
    let m: i128 = parts.next()?.parse().ok()?;
    let sec = match parts.next() {
        Some(x) => decimal(x, NS)?,
        None => 0,
    };
    if parts.next().is_some() || h > 23 || m > 59 || sec >= 61 * NS {
        return None;
    }
    Some((h * 3600 + m * 60) * NS + sec)
}

/// `YYYY-MM-DD` as days since 1970-01-01 (H. Hinnant's days_from_civil).
fn parse_date(s: &str) -> Option<i64> {
    let mut parts = s.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(0..=9999).contains(&y) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        let clock = crate::follow::render::Clock { start_mono_ns: 5 * NS as u64, wall_offset_ns: 1_795_780_800 * NS };
        // Starts 2026-11-27T12:00:05Z, monotonic 5 s.
        Header::new(crate::capture::Strategy::Tracepoint, "test", true, &clock)
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!("+1.5s".parse::<TimeSpec>().unwrap(), TimeSpec::Relative(1_500_000_000));
        assert_eq!("+500ms".parse::<TimeSpec>().unwrap(), TimeSpec::Relative(500_000_000));
        assert_eq!("+2m".parse::<TimeSpec>().unwrap(), TimeSpec::Relative(120 * NS));
        assert_eq!("12:00:01.25".parse::<TimeSpec>().unwrap(), TimeSpec::TimeOfDay((12 * 3600 + 1) * NS + NS / 4));
        assert_eq!(
            "2026-11-27T12:00:00Z".parse::<TimeSpec>().unwrap(),
            TimeSpec::Absolute(1_795_780_800 * NS),
            "2026-11-27T12:00:00Z is 1795780800 s after the epoch"
        );
        for bad in ["", "+", "+1x", "25:00", "2026-13-01T00:00:00Z", "noon", "+1.2.3s", "12:00:00:00"] {
            let e = bad.parse::<TimeSpec>().unwrap_err().to_string();
            assert!(e.contains("bad time"), "{bad}: {e}");
        }
    }

    #[test]
    fn resolves_onto_the_recording_clock() {
        let h = header();
        assert_eq!("+1s".parse::<TimeSpec>().unwrap().resolve(&h), 6 * NS as u64);
        assert_eq!("12:00:06".parse::<TimeSpec>().unwrap().resolve(&h), 6 * NS as u64);
        assert_eq!("2026-11-27T12:00:07Z".parse::<TimeSpec>().unwrap().resolve(&h), 7 * NS as u64);
        // Long before the start clamps to the clock's origin.
        assert_eq!("2000-01-01T00:00:00Z".parse::<TimeSpec>().unwrap().resolve(&h), 0);
    }
}
