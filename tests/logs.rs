//! The server's log lines, as an operator reads them: durations written as
//! people write them (`19.5ms`, not `19ms 522us 791ns`) and times in RFC 3339
//! (`starts_at=2026-12-02T13:00:00Z`, not Unix seconds).

mod common;

use std::time::Duration;

use common::*;

/// The value of `field=` in the first log line that contains `message`.
fn field<'a>(log: &'a str, message: &str, field: &str) -> Option<&'a str> {
    let line = log.lines().find(|l| l.contains(message))?;
    let start = line.find(&format!(" {field}="))? + field.len() + 2;
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// `123µs`, `19.5ms`, `1.25s`, `2m05s`: a number and one unit.
fn is_human_duration(text: &str) -> bool {
    let units = ["µs", "ms", "s"];
    if let Some((m, s)) = text.split_once('m')
        && let Some(s) = s.strip_suffix('s')
        && !s.is_empty()
    {
        return m.bytes().all(|b| b.is_ascii_digit()) && s.bytes().all(|b| b.is_ascii_digit());
    }
    units.iter().any(|unit| {
        text.strip_suffix(unit).is_some_and(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && n.parse::<f64>().is_ok()
        })
    })
}

/// `2026-12-02T13:00:00Z`.
fn is_rfc3339_utc(text: &str) -> bool {
    let text = text.trim_matches('"');
    text.len() == 20 && text.ends_with('Z') && timestamp_secs(&OwnedValue::from(text)).is_some()
}

#[test]
fn log_lines_write_durations_and_times_as_people_do() {
    let s = TestServer::start(Opts::default().items(50));
    let mut log = String::new();
    eventually(
        Duration::from_secs(20),
        "the rotator to log the sales it prepared",
        || {
            log = s.log_tail(200);
            log.contains("sale prepared") && log.contains("sale items created")
        },
    );
    let starts_at = field(&log, "sale prepared", "starts_at").expect("starts_at field");
    assert!(
        is_rfc3339_utc(starts_at),
        "starts_at should be RFC 3339, got {starts_at:?}:\n{log}"
    );
    let elapsed = field(&log, "sale items created", "elapsed").expect("elapsed field");
    assert!(
        is_human_duration(elapsed),
        "elapsed should read like 19.5ms, got {elapsed:?}:\n{log}"
    );
    let flush_after = field(&log, "Postgres writer started", "flush_after").expect("flush_after");
    assert!(
        is_human_duration(flush_after),
        "flush_after should read like 5ms, got {flush_after:?}:\n{log}"
    );
}
