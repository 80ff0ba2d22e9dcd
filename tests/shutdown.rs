//! How long a graceful stop may take: `FLASHSALE_SHUTDOWN_TIMEOUT_SECS`
//! bounds the whole of it, even when every part of it is stuck at once.

mod common;

use std::time::{Duration, Instant};

use common::services::*;
use common::*;

/// The shutdown timeout of the test, in seconds.
const T: u64 = 3;

/// A client stuck halfway through a request keeps its connection busy, and
/// Postgres is down with records waiting for the writer: each part of the
/// stop runs into the deadline. The process still exits within the shutdown
/// timeout (plus a margin for a loaded machine that is less than the
/// timeout itself, so that spending the timeout twice over fails), with
/// status 0, and what it could not write is replayed or logged, not lost
/// silently: the purchase answered 200 reaches Postgres after a restart.
#[test]
fn a_stop_with_everything_stuck_takes_the_shutdown_timeout_not_more() {
    let mut rig = Rig::start(
        ServerConfig::new(20, 10)
            .env("FLASHSALE_SHUTDOWN_TIMEOUT_SECS", &T.to_string())
            // The stuck client stays stuck past the deadline.
            .env("FLASHSALE_READ_TIMEOUT_MS", "60000"),
    );
    let sale = rig.server().active_sale();
    rig.pg.stop();
    // Sales go on without Postgres; their records wait in the writer.
    let r = rig.server().connect().checkout(1, sale.item(1));
    r.assert_status(200);
    let r = rig.server().connect().purchase(&r.str("code"));
    r.assert_status(200);
    for user in 2..20 {
        rig.server().connect().checkout(user, sale.item(2));
    }
    let mut stuck = rig.server().connect();
    stuck
        .send(b"POST /checkout?user_id=99&id=1 HTTP/1.1\r\nHost: x\r\n")
        .expect("send half a request");
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let bound = Duration::from_secs(T) + Duration::from_millis(T * 1000 * 2 / 3);
    let status = rig.server_mut().stop_with(SIGTERM, Duration::from_secs(30));
    let took = started.elapsed();
    let status = status.expect("the server exited within 30 s of SIGTERM");
    eprintln!("stopped in {took:?} with a shutdown timeout of {T} s");
    assert!(status.success(), "exit status {status}");
    assert!(
        took < bound,
        "the stop took {took:?}, past the shutdown timeout of {T} s (allowed {bound:?})"
    );
    drop(stuck);
    rig.server = None;

    rig.pg.start_again();
    rig.start_server();
    let mut pg = rig.pg.client();
    eventually(PG_DEADLINE, "the purchase reached Postgres", || {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM purchases WHERE sale_id = $1",
                &[&sale.id],
            )
            .expect("count purchases")
            .get(0);
        n == 1
    });
    rig.assert_consistent(sale.id);
}

/// On SIGTERM the server stops listening at once, not only when it exits:
/// while a stuck client keeps it draining, its listening sockets are already
/// gone (a connection now is refused rather than queued for nobody), and
/// they stay gone after the exit.
#[test]
fn a_draining_server_no_longer_listens() {
    let mut rig = Rig::start(
        ServerConfig::new(20, 10)
            .env("FLASHSALE_SHUTDOWN_TIMEOUT_SECS", &T.to_string())
            .env("FLASHSALE_READ_TIMEOUT_MS", "60000"),
    );
    let addr = rig.addr();
    let ours: std::collections::HashSet<u64> = listening_socket_inodes(addr.port())
        .intersection(&socket_inodes_of(rig.server().pid()))
        .copied()
        .collect();
    assert!(!ours.is_empty(), "the server does not listen on {addr}");
    let mut stuck = rig.server().connect();
    stuck
        .send(b"POST /checkout?user_id=99&id=1 HTTP/1.1\r\nHost: x\r\n")
        .expect("send half a request");
    std::thread::sleep(Duration::from_millis(300));

    signal(rig.server().pid(), SIGTERM);
    let mut still_listening = ours.clone();
    let gone = wait_until(Duration::from_secs(T) / 2, || {
        still_listening = listening_socket_inodes(addr.port())
            .intersection(&ours)
            .copied()
            .collect();
        still_listening.is_empty()
    });
    assert!(
        rig.server_mut().is_running(),
        "the server exited before the test could look at it draining"
    );
    assert!(
        gone,
        "the draining server still listens on {addr} (sockets {still_listening:?})"
    );
    let status = rig
        .server_mut()
        .stop_with(SIGTERM, Duration::from_secs(30))
        .expect("the server exited within 30 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(
        listening_socket_inodes(addr.port()).is_disjoint(&ours),
        "the server's listening sockets are still open after its exit"
    );
    drop(stuck);
}
