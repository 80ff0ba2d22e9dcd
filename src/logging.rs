//! Log output: human lines by default, JSON lines when `FLASHSALE_LOG`
//! contains `json`; the rest of the value is a tracing filter (`info`,
//! `debug`, `flashsale=trace`, ...).

use std::io::IsTerminal;

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
