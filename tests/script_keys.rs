//! Every key a Lua script touches is one it was given in `KEYS`: what Redis
//! Cluster needs to route a script and to check a migrating slot before the
//! script runs (an undeclared key fails mid-script, after earlier writes were
//! applied). The server runs on a private Redis that the test watches with
//! `MONITOR`: each command a script runs is listed right after the script's
//! `EVALSHA`/`EVAL`, and Redis's own `COMMAND GETKEYS` says which of its
//! arguments are keys.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::services::*;
use common::*;
use simd_json::prelude::*;

/// The arguments of one `MONITOR` line and whether a script ran it.
struct Logged {
    from_script: bool,
    args: Vec<String>,
}

/// Parses `1700000000.123 [0 127.0.0.1:5555] "EVALSHA" "abc" ...`.
fn parse_monitor_line(line: &str) -> Option<Logged> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let from_script = line[open..close].ends_with(" lua");
    let mut args = Vec::new();
    let mut chars = line[close + 1..].chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        arg.push(u8::from_str_radix(&hex, 16).unwrap_or(b'?') as char);
                    }
                    Some('n') => arg.push('\n'),
                    Some('r') => arg.push('\r'),
                    Some('t') => arg.push('\t'),
                    Some(other) => arg.push(other),
                    None => break,
                },
                c => arg.push(c),
            }
        }
        args.push(arg);
    }
    Some(Logged { from_script, args })
}

/// Collects every `MONITOR` line of a Redis until `finish`.
struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<Mutex<bool>>,
    watcher: thread::JoinHandle<()>,
}

impl Monitor {
    fn start(port: u16) -> Monitor {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(Mutex::new(false));
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect for MONITOR");
        stream.write_all(b"MONITOR\r\n").expect("send MONITOR");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).expect("MONITOR answer");
        assert_eq!(first.trim_end(), "+OK", "MONITOR refused: {first}");
        let watcher = {
            let (lines, stop) = (lines.clone(), stop.clone());
            thread::spawn(move || {
                let mut line = String::new();
                loop {
                    if *stop.lock().unwrap() {
                        return;
                    }
                    match reader.read_line(&mut line) {
                        Ok(0) => return,
                        Ok(_) if line.ends_with('\n') => {
                            lines.lock().unwrap().push(line.trim_end().to_string());
                            line.clear();
                        }
                        _ => {}
                    }
                }
            })
        };
        Monitor {
            lines,
            stop,
            watcher,
        }
    }

    /// Stops watching; every line seen.
    fn finish(self) -> Vec<String> {
        // The last commands' lines may still be on their way.
        thread::sleep(Duration::from_millis(500));
        *self.stop.lock().unwrap() = true;
        self.watcher.join().unwrap();
        let lines = self.lines.lock().unwrap();
        lines.clone()
    }
}

#[test]
fn scripts_touch_only_the_keys_they_are_given() {
    let dir = FaultDir::new();
    let redis = PrivateRedis::start(&dir);
    let monitor = Monitor::start(redis.port);
    let s = TestServer::start(
        Opts::default()
            .items(40)
            .limit(3)
            .env("REDIS_URL", &redis.url()),
    );
    let sale = s.active_sale();

    // Checkouts and purchases, concurrent so that batches carry several calls.
    let codes: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (1..=8)
            .map(|user| {
                let (s, sale) = (&s, &sale);
                scope.spawn(move || {
                    let mut c = s.connect();
                    let mut code = String::new();
                    for n in 0..2u32 {
                        let r = c.checkout(user, sale.item(1 + (user as u32 - 1) * 2 + n));
                        r.assert_status(200);
                        code = r.json()["code"].as_str().unwrap().to_string();
                    }
                    c.purchase(&code).assert_status(200);
                    code
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // A replay, an unknown code, a sold item.
    s.purchase(&codes[0]).assert_status(200);
    s.purchase(&random_code(sale.id)).assert_status(404);
    s.checkout(20, sale.item(1)).assert_status(409);

    // Redis loses the sale: the rotator restores what Postgres recorded.
    s.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE sale_id = $1",
        &[&sale.id],
        16,
    );
    let mut con = redis.connect();
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    eventually(Duration::from_secs(30), "the sale restored", || {
        redis::cmd("EXISTS")
            .arg(keys::meta(sale.id))
            .query::<bool>(&mut con)
            .unwrap_or(false)
    });
    // User 1 bought 2 of a limit of 3: one more fits, a second does not.
    let r = s.checkout(1, sale.item(30));
    r.assert_status(200);
    s.checkout(1, sale.item(31)).assert_status(409);
    let code = r.json()["code"].as_str().unwrap().to_string();
    s.purchase(&code).assert_status(200);

    let lines = monitor.finish();

    let mut declared: Option<BTreeSet<String>> = None;
    let mut script_runs = 0;
    let mut violations = Vec::new();
    for line in &lines {
        let Some(logged) = parse_monitor_line(line) else {
            continue;
        };
        let Some(command) = logged.args.first().map(|c| c.to_ascii_uppercase()) else {
            continue;
        };
        if !logged.from_script {
            declared = None;
            if matches!(command.as_str(), "EVALSHA" | "EVAL") {
                let numkeys: usize = logged.args[2].parse().unwrap();
                declared = Some(logged.args[3..3 + numkeys].iter().cloned().collect());
                script_runs += 1;
            }
            continue;
        }
        let Some(declared) = &declared else {
            violations.push(format!("script command outside a script: {line}"));
            continue;
        };
        let touched: Vec<String> = redis::cmd("COMMAND")
            .arg("GETKEYS")
            .arg(&logged.args)
            .query(&mut con)
            .unwrap_or_default();
        for key in touched {
            if !declared.contains(&key) {
                violations.push(format!("undeclared key {key:?} in {line}"));
            }
        }
    }
    assert!(script_runs >= 10, "too few scripts seen: {script_runs}");
    assert!(
        violations.is_empty(),
        "{} commands of scripts touched keys not in KEYS, e.g.:\n{}",
        violations.len(),
        violations
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_consistent(&redis.url(), &s.database_url(), sale.id);
}
