//! Clients that send requests and never read the answers: what they cost the
//! server is bounded while they stay (its resident memory, read from
//! /proc/<pid>/status), other clients are served meanwhile, the memory is
//! given back to the OS when they leave, and a connection that takes nothing
//! of its answers for the write timeout is closed.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use simd_json::prelude::*;

/// Pipelined `GET /sales/{id}/items?limit=1000` (about 120 KB each) per client.
const PIPELINED: usize = 64;

/// The worst case of resident memory for one connection with the default
/// limits (docs/configuration.md, "Memory per connection").
const WORST_CASE_PER_CONN: u64 = 512 * 1024;

/// How close to its baseline the server's memory must come back.
const GIVEN_BACK_WITHIN: u64 = 16 * 1024 * 1024;

const MIB: u64 = 1024 * 1024;

/// `count` pipelined requests for the largest page of the active sale.
fn big_pages(sale_id: i64, count: usize) -> Vec<u8> {
    build_request(
        "GET",
        &format!("/sales/{sale_id}/items?limit=1000"),
        &[],
        b"",
    )
    .repeat(count)
}

/// A client that sends `requests` and never reads: a small receive buffer,
/// so the answers pile up at the server rather than in this process's kernel.
fn never_reading_client(s: &TestServer, requests: &[u8]) -> TcpStream {
    client_sending(s, requests, 4096)
}

/// A connection with a receive buffer of `receive_buffer` bytes that has sent `requests`.
fn client_sending(s: &TestServer, requests: &[u8], receive_buffer: usize) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .set_recv_buffer_size(receive_buffer)
        .expect("SO_RCVBUF");
    socket
        .connect_timeout(&s.addr.into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {}: {e}", s.addr));
    let mut stream: TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("set_write_timeout");
    stream
        .write_all(requests)
        .expect("send the pipelined requests");
    stream
}

/// Another client gets its answers while the slow readers stay, given time
/// (the cores may be busy writing the slow readers' first answers) and
/// retrying a `503` as its `Retry-After` says.
#[track_caller]
fn assert_others_served(s: &TestServer, sale_id: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let page_path = format!("/sales/{sale_id}/items?limit=1000");
    for path in ["/sales/active", page_path.as_str()] {
        let answer = loop {
            let mut c = s.connect();
            c.set_read_timeout(Duration::from_secs(60));
            let answer = c.get(path);
            if answer.status != 503 || Instant::now() > deadline {
                break answer;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        answer.assert_status(200);
        if path == page_path {
            let items = answer
                .field("items")
                .as_array()
                .map_or(0, |items| items.len());
            assert_eq!(items, 1000, "a whole page for a reading client");
        }
    }
}

#[test]
fn slow_readers_cost_bounded_memory_and_give_it_back() {
    const CLIENTS: usize = 200;
    let s = TestServer::start(
        Opts::default()
            .items(1000)
            // Long enough that the slow readers stay for the whole measurement.
            .env("FLASHSALE_WRITE_TIMEOUT_MS", "600000"),
    );
    let sale = s.active_sale();
    // Warm up: the allocations any served page makes are part of the baseline.
    for _ in 0..3 {
        assert_others_served(&s, sale.id);
    }
    std::thread::sleep(Duration::from_secs(2));
    let baseline = s.rss_bytes();
    let bound = baseline + CLIENTS as u64 * WORST_CASE_PER_CONN;

    let requests = big_pages(sale.id, PIPELINED);
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| never_reading_client(&s, &requests))
        .collect();

    // Watch the server until its memory has not grown for a few seconds
    // (every connection stalled on a full socket), while another client keeps
    // asking for pages. Without a bound it grows until each connection holds
    // all its answers.
    let watching = AtomicBool::new(true);
    let (peak, over_bound, others) = std::thread::scope(|scope| {
        let others = scope.spawn(|| {
            let mut served = 0;
            while watching.load(Ordering::Relaxed) {
                assert_others_served(&s, sale.id);
                served += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            served
        });
        let started = Instant::now();
        let (mut peak, mut grew_at, mut over_bound) = (0u64, Instant::now(), None);
        while grew_at.elapsed() < Duration::from_secs(5)
            && started.elapsed() < Duration::from_secs(120)
        {
            let rss = s.rss_bytes();
            if rss > bound {
                over_bound = Some(started.elapsed());
                peak = rss;
                break;
            }
            if rss > peak + MIB {
                grew_at = Instant::now();
            }
            peak = peak.max(rss);
            std::thread::sleep(Duration::from_millis(100));
        }
        watching.store(false, Ordering::Relaxed);
        (peak, over_bound, others.join())
    });
    if let Some(after) = over_bound {
        panic!(
            "{CLIENTS} clients that never read: RSS {} MiB after {after:?}, over the bound of \
             {} MiB (baseline {} MiB + {} KiB per connection)",
            peak / MIB,
            bound / MIB,
            baseline / MIB,
            WORST_CASE_PER_CONN / 1024,
        );
    }
    let served = others.expect("another client was not served meanwhile");
    assert!(served > 0, "no other client was served meanwhile");
    eprintln!(
        "[slow_readers] baseline {} MiB, peak {} MiB with {CLIENTS} clients that never read",
        baseline / MIB,
        peak / MIB
    );

    drop(clients);
    let left = Instant::now();
    let mut rss = peak;
    let given_back = wait_until(Duration::from_secs(30), || {
        rss = s.rss_bytes();
        rss <= baseline + GIVEN_BACK_WITHIN
    });
    assert!(
        given_back,
        "RSS still {} MiB {:?} after the slow readers left (baseline {} MiB)",
        rss / MIB,
        left.elapsed(),
        baseline / MIB
    );
    eprintln!(
        "[slow_readers] RSS {} MiB {:?} after they left",
        rss / MIB,
        left.elapsed()
    );
    assert_others_served(&s, sale.id);
}

#[test]
fn a_client_that_reads_nothing_is_closed_after_the_write_timeout() {
    let s = TestServer::start(
        Opts::default()
            .items(1000)
            .env("FLASHSALE_WRITE_TIMEOUT_MS", "2000")
            // Only the write timeout closes connections during this test.
            .env("FLASHSALE_IDLE_TIMEOUT_SECS", "3600"),
    );
    let sale = s.active_sale();
    let before = s.open_connections();

    let silent = never_reading_client(&s, &big_pages(sale.id, PIPELINED));
    eventually(
        Duration::from_secs(10),
        "the silent connection open",
        || s.open_connections() > before,
    );
    // The server keeps it while writing fills the sockets, then closes it
    // once it takes nothing for the write timeout.
    eventually(
        Duration::from_secs(30),
        "the connection that reads nothing closed by the server",
        || s.open_connections() <= before,
    );
    drop(silent);

    // A slow reader that keeps taking bytes is not cut off, however long all
    // its answers take: the timeout is on progress.
    const SLOWLY_READ: usize = 16;
    let mut slow = client_sending(&s, &big_pages(sale.id, SLOWLY_READ), 64 * 1024);
    let mut got = Vec::new();
    let mut chunk = [0u8; 32 * 1024];
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("set_read_timeout");
    let answers = |got: &[u8]| {
        got.windows(17)
            .filter(|w| w == b"HTTP/1.1 200 OK\r\n")
            .count()
    };
    let started = Instant::now();
    while !(answers(&got) == SLOWLY_READ && got.ends_with(b"}]}")) {
        std::thread::sleep(Duration::from_millis(100));
        match slow.read(&mut chunk) {
            Ok(0) => panic!(
                "slow reader closed after {} bytes in {:?}",
                got.len(),
                started.elapsed()
            ),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("slow reader: {e} after {} bytes", got.len()),
        }
    }
    eprintln!(
        "[slow_readers] {} bytes read 32 KiB per 100 ms in {:?} with a 2 s write timeout",
        got.len(),
        started.elapsed()
    );
}
