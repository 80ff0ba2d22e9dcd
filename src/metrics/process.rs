//! What the process is and what it costs, read at scrape time: the build
//! (`flashsale_build_info`) and the standard Prometheus process metrics
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`) from
//! `/proc/self`, and in a `count-allocs` build the core threads' allocations.
//! A value that cannot be read is left out, not faked.

use std::fmt::Write as _;

/// `flashsale_build_info{version, commit} 1`.
pub fn render_build_info(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP flashsale_build_info The running build (always 1).\n\
         # TYPE flashsale_build_info gauge\n\
         flashsale_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        env!("FLASHSALE_COMMIT")
    );
}

/// The fields of `/proc/self/stat` this module reads.
#[derive(Debug, PartialEq)]
struct Stat {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// Start after boot, in clock ticks.
    start_ticks: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest starts at field 3 (state); field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse().ok()
}

/// `btime` of `/proc/stat`: boot time, Unix seconds.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as u64)
}

fn gauge(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The standard process metrics.
pub fn render_process(out: &mut String) {
    let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t));
    if let Some(stat) = &stat {
        gauge(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stat.cpu_ticks as f64 / ticks,
        );
        gauge(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (stat.rss_pages * page) as f64,
        );
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_boot_time(&t));
        if let Some(boot) = boot {
            gauge(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + stat.start_ticks as f64 / ticks,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries; leave it out.
        let open = dir.count().saturating_sub(1);
        gauge(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open as f64,
        );
    }
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| parse_max_fds(&t));
    if let Some(max) = max {
        gauge(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
    if let Some(n) = crate::allocator::core_allocations() {
        gauge(
            out,
            "flashsale_core_allocations_total",
            "counter",
            "Heap allocations made on core threads (a count-allocs build only).",
            n as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (flash (sale) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 5 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 300,
                start_ticks: 123_456,
                rss_pages: 2048
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn limits_and_boot_time_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(parse_max_fds(limits), Some(1_048_576));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1764633600\n"),
            Some(1_764_633_600)
        );
    }

    #[test]
    fn this_process_is_measured() {
        let mut out = String::new();
        render_process(&mut out);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(out.contains(name), "{name} missing from\n{out}");
        }
        render_build_info(&mut out);
        assert!(out.contains("flashsale_build_info{version=\""));
    }
}
