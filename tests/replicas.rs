//! `FLASHSALE_REDIS_WAIT_REPLICAS`: a purchase is answered `200` only once
//! that many replicas confirmed it (`WAIT`). On a private master and replica:
//! with the replica up purchases answer 200; with the replica frozen
//! (SIGSTOP) a purchase answers 503 (outcome unknown) and so does its retry,
//! while checkouts go on; once the replica is back, the retry of the same
//! code answers 200 with the same lists, and Postgres holds each purchase
//! once.

mod common;

use std::time::Duration;

use common::services::*;
use common::*;

/// A server on `master` that answers a purchase 200 only once one replica
/// has it (20 items, limit 5, a 1 s Redis deadline).
fn waiting_for_one_replica(master: &PrivateRedis) -> TestServer {
    TestServer::start(
        Opts::default()
            .items(20)
            .limit(5)
            .env("REDIS_URL", &master.url())
            .env("FLASHSALE_REDIS_WAIT_REPLICAS", "1")
            .env("FLASHSALE_REDIS_TIMEOUT_MS", "1000"),
    )
}

#[test]
fn purchases_wait_for_a_replica_and_a_frozen_replica_answers_503_until_it_is_back() {
    let dir = FaultDir::new();
    let master = PrivateRedis::start(&dir);
    let replica = PrivateRedis::start_replica(&dir, &master);
    let s = waiting_for_one_replica(&master);
    let sale = s.active_sale();

    // Replica up: purchases are confirmed and answered 200.
    let code = s.checkout(1, sale.item(1)).str("code");
    let r = s.purchase(&code);
    r.assert_status(200);
    assert_eq!(r.ids("purchased"), vec![sale.item(1)], "{r}");
    s.purchase(&code).assert_status(200);

    // Replica frozen: checkouts still answer (they do not wait), a purchase
    // cannot be confirmed: 503, and its retry too.
    signal(replica.pid(), SIGSTOP);
    let code = s.checkout(2, sale.item(2)).str("code");
    s.checkout(2, sale.item(3)).assert_status(200);
    let r = s.purchase(&code);
    r.assert_error(503, "redis_unavailable");
    s.purchase(&code).assert_error(503, "redis_unavailable");
    // A purchase that buys nothing is answered as usual.
    let loser = s.checkout(3, sale.item(4)).str("code");
    s.checkout(9, sale.item(4)).assert_status(200);
    signal(replica.pid(), SIGCONT);
    let winner = s.checkout(9, sale.item(5)).str("code");
    eventually(
        Duration::from_secs(20),
        "the replica confirms again",
        || s.purchase(&winner).status == 200,
    );
    signal(replica.pid(), SIGSTOP);
    let r = s.purchase(&loser);
    r.assert_error(409, "nothing_purchased");
    signal(replica.pid(), SIGCONT);

    // Replica back: the retry of the frozen purchase replays its outcome.
    let mut last = None;
    eventually(Duration::from_secs(20), "the retry answers 200", || {
        let r = s.purchase(&code);
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    let r = last.unwrap();
    assert_eq!(r.ids("purchased"), vec![sale.item(2), sale.item(3)], "{r}");
    assert_eq!(r.ids("unavailable"), Vec::<i64>::new(), "{r}");
    assert_eq!(r.i64("user_id"), 2, "{r}");

    // Each purchase recorded once; Redis and Postgres agree.
    s.wait_pg_i64("SELECT count(*) FROM purchases", &[], 5);
    assert_eq!(
        s.pg_i64(
            "SELECT count(*) FROM (SELECT item_id FROM purchases GROUP BY item_id HAVING count(*) > 1) d",
            &[]
        ),
        0
    );
    assert_eq!(s.active_sale().items_sold, 5);
    s.assert_consistent(sale.id);
}

#[test]
fn a_retry_on_another_connection_waits_for_the_replica_too() {
    // The retry of a purchase whose WAIT failed may reach another core,
    // whose purchase connection last wrote before the purchase (a WAIT
    // there covers only that connection's own writes), or another server:
    // it must not answer 200 before the replica has the purchase either.
    let dir = FaultDir::new();
    let master = PrivateRedis::start(&dir);
    let replica = PrivateRedis::start_replica(&dir, &master);
    let first = waiting_for_one_replica(&master);
    let sale = first.active_sale();
    let code = first.checkout(4, sale.item(6)).str("code");
    signal(replica.pid(), SIGSTOP);
    first.purchase(&code).assert_error(503, "redis_unavailable");
    // Fresh connections land on either core (SO_REUSEPORT).
    for _ in 0..8 {
        first
            .connect()
            .purchase(&code)
            .assert_error(503, "redis_unavailable");
    }
    let second = TestServer::start_sharing(&first);
    second
        .purchase(&code)
        .assert_error(503, "redis_unavailable");
    signal(replica.pid(), SIGCONT);
    eventually(Duration::from_secs(20), "the retry answers 200", || {
        second.purchase(&code).status == 200
    });
    let r = second.purchase(&code);
    assert_eq!(r.ids("purchased"), vec![sale.item(6)], "{r}");
    first.wait_pg_i64("SELECT count(*) FROM purchases", &[], 1);
    first.assert_consistent(sale.id);
}

/// A master with fewer replicas than `FLASHSALE_REDIS_WAIT_REPLICAS`: every
/// purchase would answer 503, so the server says so at start, naming the
/// master; with the replica it asks for, it says nothing.
#[test]
fn too_few_replicas_for_wait_are_logged_at_start() {
    let dir = FaultDir::new();
    let master = PrivateRedis::start(&dir);
    let alone = waiting_for_one_replica(&master);
    let warning = "fewer connected replicas than FLASHSALE_REDIS_WAIT_REPLICAS";
    let log = std::fs::read_to_string(&alone.log_path).unwrap();
    let address = format!("127.0.0.1:{}", master.port);
    assert!(
        log.lines()
            .any(|l| l.contains(warning) && l.contains(&address)),
        "no warning naming {address}: {log}"
    );
    drop(alone);

    let _replica = PrivateRedis::start_replica(&dir, &master);
    let served = waiting_for_one_replica(&master);
    let log = std::fs::read_to_string(&served.log_path).unwrap();
    assert!(!log.contains(warning), "{log}");
}
