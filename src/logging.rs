//! Log output: human lines by default, JSON lines when `FLASHSALE_LOG`
//! contains `json`; the rest of the value is a tracing filter (`info`,
//! `debug`, `flashsale=trace`, ...). Also how log fields write durations
//! (`19.5ms`) and times (RFC 3339), so every line reads the same.

use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

pub fn init(json: bool, filter: &str) {
    // The postgres crate logs every server NOTICE (e.g. "relation already
    // exists, skipping" on each start) at info; keep those out unless asked.
    let filter = if filter.contains("postgres") {
        filter.to_string()
    } else {
        format!("{filter},postgres=warn")
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("invalid FLASHSALE_LOG filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// A duration as people write it, in one unit: `850µs`, `19.5ms`, `1.25s`,
/// `2m05s`. For log fields: `elapsed = %Human(started.elapsed())`.
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let secs = d.as_secs_f64();
        if d < Duration::from_millis(1) {
            write!(f, "{}µs", d.as_micros())
        } else if d < Duration::from_secs(1) {
            let ms = secs * 1000.0;
            if ms.fract() < 0.05 || ms >= 100.0 {
                write!(f, "{ms:.0}ms")
            } else {
                write!(f, "{ms:.1}ms")
            }
        } else if d < Duration::from_secs(60) {
            let text = format!("{secs:.2}");
            write!(f, "{}s", text.trim_end_matches('0').trim_end_matches('.'))
        } else {
            write!(f, "{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
        }
    }
}

/// A Unix time in seconds, as RFC 3339 in UTC: `2026-12-02T13:00:00Z`. For
/// log fields: `starts_at = %Rfc3339(sale.starts_at)`.
pub struct Rfc3339(pub i64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UNIX_EPOCH + Duration::from_secs(self.0.max(0) as u64);
        write!(f, "{}", humantime::format_rfc3339_seconds(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let cases = [
            (Duration::from_nanos(850_400), "850µs"),
            (Duration::from_micros(19_522), "19.5ms"),
            (Duration::from_micros(276_364), "276ms"),
            (Duration::from_millis(5), "5ms"),
            (Duration::from_millis(1_250), "1.25s"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_secs(125), "2m05s"),
        ];
        for (d, text) in cases {
            assert_eq!(Human(d).to_string(), text, "{d:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(Rfc3339(1_796_212_800).to_string(), "2026-12-02T12:00:00Z");
    }
}
