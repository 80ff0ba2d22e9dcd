//! Hostile clients: limits set from the environment, slowloris and idle
//! connections, the per-core connection and in-flight bounds, a barrage of
//! malformed requests that must change nothing, and guessed or altered codes
//! that must buy nothing.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use simd_json::prelude::*;

/// The error codes a rejected request may carry (docs/api.md).
const CLIENT_ERROR_CODES: [&str; 10] = [
    "bad_request",
    "request_line_too_large",
    "headers_too_large",
    "body_too_large",
    "invalid_params",
    "not_found",
    "method_not_allowed",
    "unknown_code",
    "sale_not_found",
    "item_not_found",
];

/// The server still answers on a fresh connection.
#[track_caller]
fn assert_still_serving(s: &TestServer) {
    let mut c = s.connect();
    c.get("/health").assert_status(200);
}

/// Sends `bytes` on a fresh connection; the answer must be `status` with
/// error `code`, and the server must then close the connection.
#[track_caller]
fn assert_refused_and_closed(s: &TestServer, what: &str, bytes: &[u8], status: u16, code: &str) {
    let mut c = s.connect();
    c.send(bytes)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let r = c
        .read_response()
        .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    assert_eq!(r.status, status, "{what}: {r}");
    r.assert_error(status, code);
    assert!(
        r.closes_connection(),
        "{what}: response does not announce the close: {r}"
    );
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "{what}: connection still open after {status}"
    );
    assert_still_serving(s);
}

/// Reads from `stream` until EOF or reset; returns what arrived and whether
/// the server closed the connection before `limit` passed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match stream.read(&mut tmp) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return (got, true);
            }
            Err(_) => return (got, false), // timed out
        }
    }
}

/// The soft limit on open files of this process (and of the servers it spawns).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Makes sure this process (and so the server it spawns) may open `needed`
/// files, raising the soft limit to the hard one with prlimit(1) if needed.
fn ensure_open_files(needed: u64) {
    if open_files_limit().is_some_and(|n| n >= needed) {
        return;
    }
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=unlimited:"])
        .status();
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
        })
        .unwrap_or_default();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:")])
        .status();
    let now = open_files_limit();
    assert!(
        now.is_some_and(|n| n >= needed),
        "this test needs {needed} open files; the limit is {now:?} (raise it with `ulimit -n`)"
    );
}

// ---------------------------------------------------------------------------
// limits from the environment
// ---------------------------------------------------------------------------

#[test]
fn limits_set_in_the_environment_are_enforced() {
    let s = TestServer::start(
        Opts::default()
            .items(20)
            .env("FLASHSALE_MAX_REQUEST_LINE_BYTES", "200")
            .env("FLASHSALE_MAX_HEADER_BYTES", "1024")
            .env("FLASHSALE_MAX_HEADERS", "5")
            .env("FLASHSALE_MAX_BODY_BYTES", "10"),
    );
    let item = item_id(s.active_sale().id, 1);

    // Request line: "GET <target> HTTP/1.1\r\n" of 190 bytes passes, of 260 does not.
    let target = |len: usize| format!("/health?pad={}", "a".repeat(len - "/health?pad=".len()));
    let mut c = s.connect();
    c.get(&target(170)).assert_status(200);
    let long = build_request("GET", &target(250), &[], b"");
    assert_refused_and_closed(&s, "request line", &long, 431, "request_line_too_large");
    // Refused as soon as the line is too long, before it even ends.
    let mut unfinished = b"GET /health?pad=".to_vec();
    unfinished.resize(400, b'b');
    assert_refused_and_closed(
        &s,
        "unfinished request line",
        &unfinished,
        431,
        "request_line_too_large",
    );

    // Header block: 1024 bytes in all. (Host is the first of the headers.)
    c.request("GET", "/health", &[("X-Pad", &"p".repeat(900))], b"")
        .assert_status(200);
    let big = build_request("GET", "/health", &[("X-Pad", &"p".repeat(1100))], b"");
    assert_refused_and_closed(&s, "header block", &big, 431, "headers_too_large");
    // Unfinished, but already past the limit: no waiting for the rest.
    let mut unfinished = b"GET /health HTTP/1.1\r\nX-Pad: ".to_vec();
    unfinished.resize(1500, b'p');
    assert_refused_and_closed(
        &s,
        "unfinished header block",
        &unfinished,
        431,
        "headers_too_large",
    );

    // Header count: Host + 4 = 5 is fine, Host + 5 is one too many.
    let names: Vec<String> = (0..5).map(|i| format!("X-H{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|k| (k.as_str(), "v")).collect();
    c.request("GET", "/health", &headers[..4], b"")
        .assert_status(200);
    let bytes = build_request("GET", "/health", &headers, b"");
    assert_refused_and_closed(&s, "six headers", &bytes, 431, "headers_too_large");

    // Body: 10 bytes are accepted (and ignored), 11 are refused before any work.
    let path = checkout_path(7, item);
    let too_big = build_request("POST", &path, &[], b"12345678901");
    assert_refused_and_closed(&s, "11-byte body", &too_big, 413, "body_too_large");
    let r = c.request("POST", &path, &[], b"1234567890");
    r.assert_status(200);
    assert_eq!(r.ids("items"), vec![item], "{r}");
    // Only the accepted checkout reached Postgres.
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], 1);
    c.get("/health").assert_status(200);
}

// ---------------------------------------------------------------------------
// slow and idle clients
// ---------------------------------------------------------------------------

#[test]
fn slowloris_is_cut_off_and_does_not_block_others() {
    let s = TestServer::start(
        Opts::default()
            .items(20)
            .env("FLASHSALE_CORES", "1")
            .env("FLASHSALE_READ_TIMEOUT_MS", "1000"),
    );
    let request = build_request("GET", "/health", &[("X-Request-Id", "drip-drip-drip")], b"");
    assert!(
        request.len() > 40,
        "the drip must take far past the timeout"
    );

    let mut drip = TcpStream::connect(s.addr).expect("connect");
    drip.set_nodelay(true).expect("nodelay");
    let mut writer = drip.try_clone().expect("clone stream");
    let started = Instant::now();
    let dripper = thread::spawn(move || {
        let mut sent = 0;
        for &b in &request {
            if writer.write_all(&[b]).is_err() {
                break;
            }
            sent += 1;
            thread::sleep(Duration::from_millis(200));
        }
        (sent, request.len())
    });

    // While it drips, a normal client on the same (only) core is answered.
    let mut c = s.connect();
    for _ in 0..5 {
        c.get("/health").assert_status(200);
        thread::sleep(Duration::from_millis(100));
    }

    let (got, closed) = read_until_closed(&mut drip, Duration::from_secs(5));
    let took = started.elapsed();
    assert!(
        closed,
        "a client sending a byte every 200 ms is still connected after {took:?} (read timeout 1 s)"
    );
    if !got.is_empty() {
        // A server may say 408 before closing; it must not have served the request.
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 4"),
            "the dripping client got {text:?}"
        );
    }
    let (sent, total) = dripper.join().expect("dripper thread");
    assert!(
        sent < total,
        "the whole request was accepted byte by byte ({sent} of {total})"
    );
    c.get("/health").assert_status(200);
    assert_still_serving(&s);
}

#[test]
fn a_pipelining_client_that_keeps_sending_is_not_cut_off() {
    // The read timeout bounds one request, not a busy connection: a client
    // whose every request completes quickly, but whose writes always end in
    // the middle of the next request, must be served for as long as it sends.
    let s = TestServer::start(
        Opts::default()
            .items(20)
            .env("FLASHSALE_CORES", "1")
            .env("FLASHSALE_READ_TIMEOUT_MS", "1000"),
    );
    let one = build_request("GET", "/health", &[], b"");
    let cut = one.len() / 2;
    let mut c = s.connect();
    c.send(&one[..cut]).expect("send");
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(100));
        // The rest of this request and the start of the next one.
        let mut piece = one[cut..].to_vec();
        piece.extend_from_slice(&one[..cut]);
        if let Err(e) = c.send(&piece) {
            panic!(
                "after {answered} answers in {:?} the server closed the connection: {e}",
                started.elapsed()
            );
        }
        let r = c.read_response().unwrap_or_else(|e| {
            panic!(
                "after {answered} answers in {:?}, each request completing within ~100 ms, \
                 the server dropped the connection: {e}",
                started.elapsed()
            )
        });
        r.assert_status(200);
        answered += 1;
    }
    assert!(answered >= 10, "{answered}");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let s = TestServer::start(
        Opts::default()
            .items(20)
            .env("FLASHSALE_IDLE_TIMEOUT_SECS", "1"),
    );
    // A kept-alive connection after one request.
    let mut c = s.connect();
    c.get("/health").assert_status(200);
    let idle_from = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "an idle keep-alive connection is still open after 5 s (idle timeout 1 s)"
    );
    assert!(
        idle_from.elapsed() >= Duration::from_millis(500),
        "closed after only {:?}; the idle timeout is 1 s",
        idle_from.elapsed()
    );
    // A connection that never sends anything.
    let mut silent = s.connect();
    assert!(
        silent.closed_within(Duration::from_secs(5)),
        "a silent connection is still open after 5 s (idle timeout 1 s)"
    );
    // A connection that keeps talking stays open past the idle timeout.
    let mut busy = s.connect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        busy.get("/health").assert_status(200);
        thread::sleep(Duration::from_millis(300));
    }
    assert_still_serving(&s);
}

#[test]
fn a_thousand_idle_connections_do_not_starve_real_clients() {
    const IDLE: usize = 1000;
    ensure_open_files(2 * IDLE as u64 + 500);
    let s = TestServer::start(
        Opts::default()
            .items(50)
            .env("FLASHSALE_CORES", "1")
            .env("FLASHSALE_READ_TIMEOUT_MS", "120000"),
    );
    let sale = s.active_sale();

    let idle: Vec<Conn> = (0..IDLE)
        .map(|i| Conn::try_connect(s.addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}")))
        .collect();
    // Half of them have started a request and stopped mid-way.
    let mut idle = idle;
    for c in idle.iter_mut().step_by(2) {
        c.send(b"GET /heal").expect("send a partial request");
    }

    let mut c = s.connect();
    for n in 0..50u32 {
        let r = if n % 2 == 0 {
            c.get("/sales/active")
        } else {
            c.checkout(i64::from(n), sale.item(1 + n % 50))
        };
        r.assert_status(200);
    }
    for n in 0..10 {
        let mut fresh = s.connect();
        fresh
            .request("GET", "/health", &[("Connection", "close")], b"")
            .assert_status(200);
        assert!(fresh.closed_within(Duration::from_secs(5)), "fresh {n}");
    }
    // The idle connections were held open, not refused: each still works
    // (the half-sent ones finish their request).
    for (i, c) in idle.iter_mut().enumerate() {
        let rest: &[u8] = if i % 2 == 0 {
            b"th HTTP/1.1\r\nHost: x\r\n\r\n"
        } else {
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        };
        c.send(rest)
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        assert_eq!(r.status, 200, "idle connection {i}: {r}");
    }
}

// ---------------------------------------------------------------------------
// bounds per core
// ---------------------------------------------------------------------------

#[test]
fn connections_past_the_per_core_bound_get_503_and_close() {
    const MAX: usize = 20;
    const OPENED: usize = 30;
    let s = TestServer::start(
        Opts::default()
            .items(20)
            .env("FLASHSALE_CORES", "1")
            .env("FLASHSALE_MAX_CONNS_PER_CORE", &MAX.to_string()),
    );
    // Start from a quiet server: only the scraping connection itself is open.
    eventually(Duration::from_secs(10), "no connection open", || {
        s.open_connections() <= 1
    });

    let mut conns: Vec<Conn> = (0..OPENED).map(|_| s.connect()).collect();
    // Collect the 503s; accepted connections stay silent.
    let mut refused: BTreeMap<usize, Response> = BTreeMap::new();
    // One look at every connection not yet refused, waiting `wait` on each.
    let look = |conns: &mut [Conn], refused: &mut BTreeMap<usize, Response>, wait: Duration| {
        for (i, c) in conns.iter_mut().enumerate() {
            if refused.contains_key(&i) {
                continue;
            }
            c.set_read_timeout(wait);
            match c.read_response() {
                Ok(r) => {
                    refused.insert(i, r);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("connection {i}: {e}"),
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.len() < OPENED - MAX && Instant::now() < deadline {
        look(&mut conns, &mut refused, Duration::from_millis(20));
    }
    // One more look at the rest, for a refusal still on its way.
    look(&mut conns, &mut refused, Duration::from_millis(100));
    assert!(
        refused.len() >= OPENED - MAX,
        "{} of {OPENED} connections were refused with a bound of {MAX}: {refused:?}",
        refused.len()
    );
    for (i, r) in &refused {
        r.assert_error(503, "overloaded");
        assert!(r.header("retry-after").is_some(), "connection {i}: {r}");
        assert!(r.closes_connection(), "connection {i}: {r}");
        assert!(
            conns[*i].closed_within(Duration::from_secs(5)),
            "refused connection {i} left open"
        );
    }
    // The others were accepted, in order: they are served.
    for (i, c) in conns.iter_mut().enumerate() {
        if refused.contains_key(&i) {
            continue;
        }
        c.set_read_timeout(Duration::from_secs(15));
        let r = c.get("/health");
        if r.status == 503 {
            // A late refusal, counted like the others.
            r.assert_error(503, "overloaded");
            refused.insert(i, r);
        } else {
            assert_eq!(r.status, 200, "connection {i}: {r}");
        }
    }
    // At most one more than the bound demands: the scraping connection may
    // still have been counted when these arrived.
    assert!(
        refused.len() <= OPENED - MAX + 1,
        "{} of {OPENED} refused with a bound of {MAX}: {:?}",
        refused.len(),
        refused.keys().collect::<Vec<_>>()
    );
    assert!(
        refused.keys().all(|&i| i >= MAX - 1),
        "early connections were refused: {:?}",
        refused.keys().collect::<Vec<_>>()
    );

    eprintln!(
        "connection bound {MAX}: refused {:?}",
        refused.keys().collect::<Vec<_>>()
    );
    // Once they are closed, new connections are served again.
    drop(conns);
    eventually(
        Duration::from_secs(10),
        "a new connection is served after the others closed",
        || {
            let mut c = s.connect();
            c.try_request("GET", "/health", &[], b"")
                .is_ok_and(|r| r.status == 200)
        },
    );
    let mut c = s.connect();
    for _ in 0..5 {
        c.get("/sales/active").assert_status(200);
    }
}

#[test]
fn in_flight_work_past_the_per_core_bound_is_shed_with_retry_after() {
    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 20;
    let s = TestServer::start(
        Opts::default()
            .items(50)
            .env("FLASHSALE_CORES", "1")
            .env("FLASHSALE_MAX_INFLIGHT_PER_CORE", "1"),
    );
    let sale = s.active_sale();
    let start = Arc::new(Barrier::new(CLIENTS));
    let addr = s.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let start = start.clone();
            let sale_id = sale.id;
            thread::spawn(move || {
                let mut c = Conn::connect(addr);
                let mut bytes = Vec::new();
                for k in 0..PER_CLIENT {
                    // One user per request: no limit is ever reached.
                    let user = (1 + t * PER_CLIENT + k) as i64;
                    let item = item_id(sale_id, 1 + ((t * 7 + k) % 50) as u32);
                    bytes.extend(build_request("POST", &checkout_path(user, item), &[], b""));
                }
                start.wait();
                c.send(&bytes).expect("send the pipeline");
                (0..PER_CLIENT)
                    .map(|k| {
                        c.read_response()
                            .unwrap_or_else(|e| panic!("client {t}, response {k}: {e}"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ok = 0i64;
    let mut shed = 0;
    for client in clients {
        for r in client.join().expect("client thread") {
            match r.status {
                200 => ok += 1,
                409 => {}
                503 => {
                    r.assert_error(503, "overloaded");
                    let retry = r
                        .header("retry-after")
                        .unwrap_or_else(|| panic!("503 without Retry-After: {r}"));
                    assert!(
                        retry.parse::<u64>().is_ok_and(|n| n >= 1),
                        "Retry-After {retry:?}: {r}"
                    );
                    shed += 1;
                }
                _ => panic!("unexpected answer under overload: {r}"),
            }
        }
    }
    eprintln!("in-flight bound 1: {ok} accepted, {shed} shed");
    assert!(
        shed > 0,
        "{} checkouts from {CLIENTS} connections at once with one in-flight slot, none shed",
        CLIENTS * PER_CLIENT
    );
    assert!(ok > 0, "nothing got through the bound");
    // Shed requests are not recorded; every accepted one is.
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], ok);
    // The slots were all given back: one request at a time always passes.
    let mut c = s.connect();
    for k in 0..20 {
        c.checkout(100_000 + k, sale.item(1)).assert_status(200);
    }
}

// ---------------------------------------------------------------------------
// malformed input changes nothing
// ---------------------------------------------------------------------------

/// Every key of the test's Redis database with its type and contents (TTLs aside).
fn redis_snapshot(s: &TestServer) -> BTreeMap<String, String> {
    let mut con = s.redis();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS");
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut con).expect("TYPE");
        let value = match kind.as_str() {
            "string" => {
                let v: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut con).expect("GET");
                format!("{v:?}")
            }
            "hash" => {
                let v: BTreeMap<String, Vec<u8>> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query(&mut con)
                    .expect("HGETALL");
                format!("{v:?}")
            }
            "set" => {
                let mut v: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query(&mut con)
                    .expect("SMEMBERS");
                v.sort();
                format!("{v:?}")
            }
            "list" => {
                let v: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut con)
                    .expect("LRANGE");
                format!("{v:?}")
            }
            "zset" => {
                let v: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(&mut con)
                    .expect("ZRANGE");
                format!("{v:?}")
            }
            "stream" => {
                let v: redis::Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query(&mut con)
                    .expect("XRANGE");
                format!("{v:?}")
            }
            "none" => continue, // expired between KEYS and TYPE
            other => other.to_string(),
        };
        out.insert(key, format!("{kind} {value}"));
    }
    out
}

fn pg_counts(s: &TestServer) -> [i64; 3] {
    [
        s.pg_i64("SELECT count(*) FROM checkouts", &[]),
        s.pg_i64("SELECT count(*) FROM purchases", &[]),
        s.pg_i64("SELECT count(*) FROM users", &[]),
    ]
}

/// ~200 requests that are malformed, hostile or nonsensical; none may change state.
fn hostile_corpus(sale_id: i64, real_code: &str) -> Vec<Vec<u8>> {
    let raw = |s: &str| s.as_bytes().to_vec();
    let post = |target: &str| build_request("POST", target, &[], b"");
    let get = |target: &str| build_request("GET", target, &[], b"");
    let item = item_id(sale_id, 1);
    let hex = &real_code[real_code.len() - 32..];
    let mut corpus: Vec<Vec<u8>> = Vec::new();

    // Broken HTTP.
    for text in [
        "GARBAGE\r\n\r\n",
        " / HTTP/1.1\r\n\r\n",
        "GET\r\n\r\n",
        "GET /health\r\n\r\n",
        "GET /health HTTP/1.1 extra\r\n\r\n",
        "GET /health HTTP/2.0\r\n\r\n",
        "GET /health HTTP/9.9\r\n\r\n",
        "GET /health FTP/1.1\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET http://evil.example/health HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT evil.example:443 HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\n\r\n",
        "GET health HTTP/1.1\r\n\r\n",
        "GET /he alth HTTP/1.1\r\n\r\n",
        "GET /health\x00 HTTP/1.1\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost x\r\n\r\n",
        "GET /health HTTP/1.1\r\n: empty-name\r\n\r\n",
        "GET /health HTTP/1.1\r\nBad Header: v\r\n\r\n",
        "GET /health HTTP/1.1\r\nX-Request-Id: a\r\nb\r\n\r\n",
        "GET /health HTTP/1.1\r\nX: \x00\x01\x7f\r\n\r\n",
        "POST /checkout HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST /checkout HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "POST /checkout HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "POST /checkout HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "POST /checkout HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
        "POST /checkout HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        "POST /checkout HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
        "SSH-2.0-OpenSSH_9.0\r\n\r\n",
        "*1\r\n$8\r\nFLUSHALL\r\n\r\n",
        "FLUSHALL\r\n\r\n",
    ] {
        corpus.push(raw(text));
    }
    corpus.push(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec());
    corpus.push(b"GET /\xff\xfe HTTP/1.1\r\n\r\n".to_vec());
    // Oversized parts.
    corpus.push(get(&format!("/health?x={}", "a".repeat(10_000))));
    corpus.push(build_request(
        "GET",
        "/health",
        &[("X-Big", &"b".repeat(9_000))],
        b"",
    ));
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("X-{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    corpus.push(build_request("GET", "/health", &many, b""));
    corpus.push(build_request(
        "POST",
        &checkout_path(1, item),
        &[],
        &vec![b'x'; 20_000],
    ));

    // Wrong methods and paths.
    for (method, target) in [
        ("GET", checkout_path(1, item)),
        ("PUT", checkout_path(1, item)),
        ("DELETE", format!("/purchase?code={real_code}")),
        ("GET", format!("/purchase?code={real_code}")),
        ("PATCH", "/sales/active".to_string()),
        ("POST", "/sales/active".to_string()),
        ("POST", "/health".to_string()),
        ("BREW", "/checkout".to_string()),
        ("GET", "/../../etc/passwd".to_string()),
        ("GET", "/checkout/../health/x".to_string()),
        ("GET", "/sales/active/".to_string()),
        ("GET", "/CHECKOUT".to_string()),
        ("GET", "/%2e%2e/%2e%2e".to_string()),
        ("GET", "/sales//items".to_string()),
        ("GET", "/heälth".to_string()),
    ] {
        corpus.push(build_request(method, &target, &[], b""));
    }

    // Bad parameters: checkout.
    let values = [
        "",
        "0",
        "-1",
        "-9223372036854775808",
        "9223372036854775808",
        "99999999999999999999999",
        "+1",
        "%2B1",
        "1.5",
        "1e3",
        "0x10",
        " 1",
        "1%20",
        "%201",
        "1%00",
        "%00",
        "1;DROP%20TABLE%20users",
        "1';DROP%20TABLE%20checkouts;--",
        "1%3BDROP%20TABLE%20users",
        "1%0d%0aFLUSHALL",
        "1%0D%0A*1%0D%0A$8%0D%0AFLUSHALL",
        "1)%20OR%201=1",
        "%E2%82%AC",
        "%ff%fe",
        "١٢٣",
        "abc",
        "{sale:1}",
        "*",
        "1,2",
        "%",
        "%zz",
    ];
    for v in values {
        corpus.push(post(&format!("/checkout?user_id={v}&id={item}")));
        corpus.push(post(&format!("/checkout?user_id=5&id={v}")));
    }
    for target in [
        "/checkout".to_string(),
        "/checkout?".to_string(),
        "/checkout?user_id=1".to_string(),
        format!("/checkout?id={item}"),
        format!("/checkout?user_id=1&user_id=2&id={item}"),
        format!("/checkout?user_id=1&id={item}&id={item}"),
        format!("/checkout?USER_ID=1&ID={item}"),
        format!("/checkout?user_id[]=1&id={item}"),
        format!("/checkout?user_id=1;id={item}"),
        format!("/checkout?user_id=1&&&id=&id={item}"),
    ] {
        corpus.push(post(&target));
    }

    // Bad parameters: purchase. (Well-formed codes nobody holds included.)
    let altered = {
        let mut b = real_code.as_bytes().to_vec();
        let last = b.len() - 1;
        b[last] = if b[last] == b'0' { b'1' } else { b'0' };
        String::from_utf8(b).unwrap()
    };
    for code in [
        String::new(),
        "garbage".to_string(),
        real_code.to_uppercase(),
        format!("{sale_id}-1-{}", &hex[..31]),
        format!("{sale_id}-1-{hex}0"),
        format!("{sale_id}-1-{}g", &hex[..31]),
        format!("{sale_id}-{hex}"),
        format!("-{sale_id}-1-{hex}"),
        format!("+{sale_id}-1-{hex}"),
        format!("0-1-{hex}"),
        format!("{sale_id}-0-{hex}"),
        format!("{sale_id}--1-{hex}"),
        format!("{sale_id}-1--{hex}"),
        format!("{sale_id}_1_{hex}"),
        format!("{sale_id}-1-{hex}%00"),
        format!("{sale_id}-1-{hex}%0d%0aFLUSHALL"),
        format!("{sale_id}-*-{hex}"),
        format!("{sale_id}-1-*"),
        format!("{sale_id}-1-{hex}&code={real_code}"),
        format!("{real_code}&code={real_code}"),
        format!("99999999999999999999-1-{hex}"),
        format!("{sale_id}-99999999999999999999-{hex}"),
        format!("{sale_id}'%20OR%20'1'='1-1-{hex}"),
        format!("{sale_id}-1'%20OR%20'1'='1-{hex}"),
        format!("%7Bsale:{sale_id}%7D-1-{hex}"),
        // Well-formed, but nobody's.
        altered,
        random_code(sale_id),
        random_code(sale_id + 1),
        random_code(sale_id + 2),
        random_code(999_999),
        format!("{}-1-{hex}", sale_id + 1),
        format!("{sale_id}-9223372036854775807-{hex}"),
        "00000000000000000000000000000000-00000000000000000000000000000000".to_string(),
    ] {
        corpus.push(post(&format!("/purchase?code={code}")));
    }
    corpus.push(post("/purchase"));
    corpus.push(post("/purchase?cod=x"));

    // Bad parameters: item pages.
    for target in [
        "/sales/0/items".to_string(),
        "/sales/-1/items".to_string(),
        "/sales/abc/items".to_string(),
        "/sales/99999999999999999999/items".to_string(),
        "/sales/%31/items".to_string(),
        "/sales/1%0d%0aFLUSHALL/items".to_string(),
        format!("/sales/{}/items", sale_id + 1_000),
        format!("/sales/{sale_id}/items?limit=0"),
        format!("/sales/{sale_id}/items?limit=1001"),
        format!("/sales/{sale_id}/items?limit=-1"),
        format!("/sales/{sale_id}/items?offset=-1"),
        format!("/sales/{sale_id}/items?offset=99999999999999999999"),
        format!("/sales/{sale_id}/items?offset=4294967296"),
        format!("/sales/{sale_id}/items?limit=1&limit=2"),
        format!("/sales/{sale_id}/items?limit=ten"),
    ] {
        corpus.push(get(&target));
    }

    // Random bytes, ended like a request head so the server has to decide.
    let mut rng = Rng::new(0x5eed_f00d);
    while corpus.len() < 220 {
        let len = rng.range(1, 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Not blank lines (which a server skips before a request line).
        if bytes[0] == b'\r' || bytes[0] == b'\n' {
            bytes[0] = b'\x01';
        }
        bytes.extend_from_slice(b"\r\n\r\n");
        corpus.push(bytes);
    }
    corpus
}

#[test]
fn malformed_and_hostile_requests_get_4xx_and_change_nothing() {
    let s = TestServer::start(Opts::default().items(50));
    let sale = s.active_sale();
    // Some state to protect: one open checkout and one purchase.
    let r = s.checkout(1, sale.item(1));
    r.assert_status(200);
    let code = r.str("code");
    s.purchase(&code).assert_status(200);
    let r = s.checkout(1, sale.item(2));
    r.assert_status(200);
    let open_code = r.str("code");
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], 2);
    s.wait_pg_i64("SELECT count(*) FROM purchases", &[], 1);
    // The purchase has left the outbox (so Redis is quiet).
    let mut redis = s.redis();
    eventually(Duration::from_secs(10), "the outbox drained", || {
        let len: i64 = redis::cmd("XLEN")
            .arg(keys::outbox(sale.id))
            .query(&mut redis)
            .expect("XLEN");
        len == 0
    });

    let redis_before = redis_snapshot(&s);
    let dbsize_before: i64 = redis::cmd("DBSIZE").query(&mut redis).expect("DBSIZE");
    let pg_before = pg_counts(&s);
    let meta_key = keys::meta(sale.id);
    assert!(redis_before.contains_key(&meta_key), "{redis_before:?}");

    let corpus = hostile_corpus(sale.id, &open_code);
    assert!(corpus.len() >= 200, "{}", corpus.len());
    for (n, bytes) in corpus.iter().enumerate() {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        let mut c = s.connect();
        // The server may refuse before reading everything (a reset then is fine
        // as long as the answer was sent first).
        let _ = c.send(bytes);
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("request {n} {shown:?}: no answer: {e}"));
        assert!(
            (400..500).contains(&r.status),
            "request {n} {shown:?}: not a 4xx: {r}"
        );
        assert!(r.is_json(), "request {n} {shown:?}: not JSON: {r}");
        let code = r
            .error_code()
            .unwrap_or_else(|| panic!("request {n} {shown:?}: no error code: {r}"));
        assert!(
            CLIENT_ERROR_CODES.contains(&code.as_str()),
            "request {n} {shown:?}: unexpected error code {code:?}: {r}"
        );
        if r.status == 400 && code == "bad_request" {
            assert!(
                c.closed_within(Duration::from_secs(5)),
                "request {n} {shown:?}: malformed HTTP must close the connection"
            );
        }
    }

    // Redis: not a key added, removed or changed.
    let dbsize_after: i64 = redis::cmd("DBSIZE").query(&mut redis).expect("DBSIZE");
    assert_eq!(dbsize_after, dbsize_before, "Redis DBSIZE changed");
    let redis_after = redis_snapshot(&s);
    for (key, value) in &redis_before {
        assert_eq!(redis_after.get(key), Some(value), "Redis key {key} changed");
    }
    assert_eq!(redis_after, redis_before, "Redis keys changed");

    // Postgres: a legitimate checkout afterwards shows up alone (the writer
    // takes records in order, so anything the barrage sent would be there too).
    s.checkout(1, sale.item(3)).assert_status(200);
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], pg_before[0] + 1);
    let pg_after = pg_counts(&s);
    assert_eq!(
        pg_after,
        [pg_before[0] + 1, pg_before[1], pg_before[2]],
        "checkouts, purchases, users"
    );

    // And the sale goes on: the open code still buys.
    let r = s.purchase(&open_code);
    r.assert_status(200);
    assert_eq!(r.sorted_ids("purchased"), vec![sale.item(2), sale.item(3)]);
    assert_eq!(s.active_sale().items_sold, 3);
}

#[test]
fn purchase_with_a_huge_sale_id_in_the_code_is_refused_not_crashed() {
    // A code whose sale id is well-formed but huge: sale_id × 1,000,000 does
    // not fit in an i64. The answer must be a 4xx, and the core must live on.
    let s = TestServer::start(Opts::default().items(20).env("FLASHSALE_CORES", "1"));
    for sale in ["9999999999999", "9223372036854", "999999999999999999"] {
        let code = format!("{sale}-1-0123456789abcdef0123456789abcdef");
        let mut c = s.connect();
        c.set_read_timeout(Duration::from_secs(5));
        let r = c
            .try_request("POST", &purchase_path(&code), &[], b"")
            .unwrap_or_else(|e| panic!("POST /purchase?code={code}: no answer: {e}"));
        assert!(
            r.status == 404 || r.status == 400,
            "POST /purchase?code={code}: {r}"
        );
        assert_still_serving(&s);
    }
}

// ---------------------------------------------------------------------------
// codes
// ---------------------------------------------------------------------------

/// The sold flag of item `n` (1-based) of the sale, from GET /sales/{id}/items.
fn item_sold(s: &TestServer, sale_id: i64, n: u32) -> bool {
    let r = s.get(&format!("/sales/{sale_id}/items?offset={}&limit=1", n - 1));
    r.assert_status(200);
    let v = r.json();
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{r}");
    assert_eq!(
        items[0].get("id").and_then(|x| x.as_i64()),
        Some(item_id(sale_id, n)),
        "{r}"
    );
    items[0]
        .get("sold")
        .and_then(|x| x.as_bool())
        .unwrap_or_else(|| panic!("no sold flag: {r}"))
}

#[test]
fn guessed_or_altered_codes_buy_nothing() {
    let s = TestServer::start(Opts::default().items(50));
    let sale = s.active_sale();
    let victim = 42;
    let r = s.checkout(victim, sale.item(7));
    r.assert_status(200);
    let code = r.str("code");
    assert!(code_is_well_formed(&code, sale.id), "{code}");
    let hex = code[code.len() - 32..].to_string();
    // A neighbour with an open checkout of their own: the victim's random
    // part under their id is not their code either.
    s.checkout(victim + 1, sale.item(8)).assert_status(200);

    let mut attempts: Vec<String> = Vec::new();
    // Every single hex digit altered, one at a time.
    for pos in 0..32 {
        let mut b = hex.clone().into_bytes();
        b[pos] = if b[pos] == b'f' { b'0' } else { b'f' };
        attempts.push(format!(
            "{}-{victim}-{}",
            sale.id,
            String::from_utf8(b).unwrap()
        ));
    }
    // The sale prefix changed: the next sale (prepared ahead), the one
    // before it if any, sales that do not exist.
    for other in [
        sale.id + 1,
        sale.id - 1,
        sale.id + 2,
        sale.id * 10 + 1,
        999_999,
    ] {
        if other < 1 {
            continue;
        }
        attempts.push(format!("{other}-{victim}-{hex}"));
    }
    // The victim's random part under another user: the user part names the
    // key the purchase touches, and it is checked against the code's owner.
    for other in [1, victim - 1, victim + 1, victim * 10, i64::MAX] {
        attempts.push(format!("{}-{other}-{hex}", sale.id));
    }
    // Plain guesses.
    for _ in 0..50 {
        attempts.push(random_code(sale.id));
    }
    for attempt in &attempts {
        assert_ne!(attempt, &code);
        let r = s.purchase(attempt);
        r.assert_error(404, "unknown_code");
    }

    // Nothing was bought: not in Redis, not in Postgres, not in the listing.
    assert!(!item_sold(&s, sale.id, 7), "the victim's item was sold");
    assert!(!item_sold(&s, sale.id, 8), "the neighbour's item was sold");
    assert_eq!(s.active_sale().items_sold, 0);
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], 2);
    assert_eq!(s.pg_i64("SELECT count(*) FROM purchases", &[]), 0);

    // The victim's code still works, for the victim, once.
    let r = s.purchase(&code);
    r.assert_status(200);
    assert_eq!(r.i64("user_id"), victim, "{r}");
    assert_eq!(r.ids("purchased"), vec![sale.item(7)], "{r}");
    assert!(item_sold(&s, sale.id, 7));
    s.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE user_id = $1 AND item_id = $2",
        &[&victim, &sale.item(7)],
        1,
    );
    // And a guess after the real purchase still buys nothing more.
    s.purchase(&random_code(sale.id))
        .assert_error(404, "unknown_code");
    assert_eq!(s.active_sale().items_sold, 1);
}

#[test]
fn codes_are_distinct_and_carry_128_random_bits() {
    const USERS: i64 = 200;
    let s = TestServer::start(Opts::default().items(50));
    let sale = s.active_sale();
    let mut c = s.connect();
    let mut codes = HashSet::new();
    let mut randoms: Vec<u128> = Vec::new();
    for user in 1..=USERS {
        let r = c.checkout(user, sale.item(1 + (user % 50) as u32));
        r.assert_status(200);
        let code = r.str("code");
        let mut parts = code.splitn(3, '-');
        let (prefix, owner, random) = (
            parts.next().unwrap(),
            parts.next().expect("a dash"),
            parts.next().expect("two dashes"),
        );
        assert_eq!(prefix, sale.id.to_string(), "{code}");
        assert_eq!(owner, user.to_string(), "{code}");
        assert_eq!(random.len(), 32, "{code}");
        assert!(
            random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{code}"
        );
        randoms.push(u128::from_str_radix(random, 16).expect("hex"));
        assert!(codes.insert(code.clone()), "code {code} handed out twice");
    }
    assert_eq!(codes.len(), USERS as usize);
    // Each of the 128 bits varies across the codes (a counter, a timestamp or
    // a 64-bit value padded out would leave bits fixed). Chance of a false
    // alarm with 200 random codes: 128 × 2^-199.
    let ones = randoms.iter().fold(0u128, |acc, r| acc | r);
    let zeros = randoms.iter().fold(0u128, |acc, r| acc | !r);
    assert_eq!(ones, u128::MAX, "bits never set: {:032x}", !ones);
    assert_eq!(zeros, u128::MAX, "bits never clear: {:032x}", !zeros);
}
