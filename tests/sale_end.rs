//! What happens to requests in flight when a sale ends, forced over HTTP
//! against the real binary: Redis frozen (SIGSTOP) or its replies held back
//! while requests of the ending sale wait, the clock passing the sale's end
//! meanwhile. One core, so every request shares one Redis connection and one
//! known-sold map.

mod common;

use std::time::Duration;

use common::proxy::ReplyHoldingProxy;
use common::services::*;
use common::*;

/// Sleeps until the wall clock reads `at_ms` (Unix ms).
fn sleep_until(at_ms: i64) {
    let left = at_ms - now_ms();
    if left > 0 {
        std::thread::sleep(Duration::from_millis(left as u64));
    }
}

/// The active sale, once at least `needed` of it is left (else the next one).
fn sale_with_time_left(server: &Flashsale, needed: Duration) -> Sale {
    let sale = server.active_sale();
    if sale.ends_secs() * 1000 - now_ms() >= needed.as_millis() as i64 {
        return sale;
    }
    sleep_until(sale.ends_secs() * 1000 + 300);
    let next = server.active_sale();
    assert_ne!(next.id, sale.id, "the sale did not rotate on time");
    next
}

/// Sends one request on its own thread; the answer comes from `join`.
fn in_background(server: &Flashsale, target: String) -> std::thread::JoinHandle<Response> {
    let addr = server.addr;
    std::thread::spawn(move || Conn::connect(addr).request("POST", &target, &[], b""))
}

/// The outcome recorded in Postgres for one checkout attempt, once there.
fn recorded_outcome(rig: &Rig, sale_id: i64, user: i64, item: i64) -> String {
    let mut pg = rig.pg.client();
    let mut outcome = None;
    eventually(PG_DEADLINE, "the checkout attempt is recorded", || {
        outcome = pg
            .query_opt(
                "SELECT outcome FROM checkouts WHERE sale_id = $1 AND user_id = $2 AND item_id = $3",
                &[&sale_id, &user, &item],
            )
            .expect("query checkouts")
            .map(|row| row.get::<_, String>(0));
        outcome.is_some()
    });
    outcome.expect("recorded")
}

/// A `sold` answer that Redis gave for the ending sale, arriving after the
/// core has moved on to the next sale, says nothing about the next sale:
/// item n of the new sale stays for sale although item n of the old one
/// was sold.
///
/// Redis's replies are held in a proxy (so the scripts run on time and only
/// their answers are late; a frozen Redis would run them after the end,
/// where a script that reads Redis's clock answers "closed", not "sold"). The core's 100 ms refresh of its map is a GET
/// held like the rest; the Redis timeout (4 s) is chosen so that the refresh
/// of the old sale has timed out (and is ignored) when the replies are
/// released, while the checkout of the old sale is still waiting for its
/// answer. Timeline, E the end of the sale, F = E - 3.5 s:
///   F        replies held
///   F+0.3    purchase of old item 1 (runs in Redis; its answer times out)
///   F+2.0    checkout of old item 1 by another user (Redis: sold)
///   E+0.5    checkout of new item 2 (the core's map now tracks the new sale)
///   F+5.0    replies released
/// then new item 1 is checked out.
#[test]
fn a_late_sold_answer_of_the_ended_sale_does_not_mark_the_new_sale() {
    const PERIOD_SECS: u64 = 12;
    const REDIS_TIMEOUT_MS: i64 = 4000;
    let mut rig = Rig::services(
        ServerConfig::new(20, 10)
            .env("FLASHSALE_CORES", "1")
            .env("SALE_PERIOD_SECS", &PERIOD_SECS.to_string())
            .env("FLASHSALE_REDIS_TIMEOUT_MS", &REDIS_TIMEOUT_MS.to_string()),
    );
    let proxy = ReplyHoldingProxy::start(rig.redis.port);
    rig.config = rig.config.clone().env("REDIS_URL", &proxy.url());
    rig.start_server();
    let server = rig.server();

    let old = sale_with_time_left(server, Duration::from_millis(6500));
    let r = server.connect().checkout(1, old.item(1));
    r.assert_status(200);
    let code = r.str("code");

    let end = old.ends_secs() * 1000;
    let held_at = end - 3500;
    sleep_until(held_at);
    proxy.hold_replies();
    sleep_until(held_at + 300);
    let purchase = in_background(server, purchase_path(&code));
    sleep_until(held_at + 2000);
    assert!(now_ms() < end - 500, "the test fell behind its timeline");
    let late_sold = in_background(server, checkout_path(2, old.item(1)));
    sleep_until(end + 500);
    // (Not asked of the server: reading the active sale needs Redis.)
    let new_id = old.id + 1;
    let new_sale_checkout = in_background(server, checkout_path(3, item_id(new_id, 2)));
    sleep_until(held_at + REDIS_TIMEOUT_MS + 1000);
    proxy.release_replies();

    let purchase = purchase.join().expect("purchase thread");
    eprintln!("purchase of old item 1 (answer held past the timeout): {purchase}");
    let late_sold = late_sold.join().expect("checkout thread");
    late_sold.assert_error(409, "item_sold");
    new_sale_checkout
        .join()
        .expect("checkout thread")
        .assert_status(200);

    let new = server.active_sale();
    assert_eq!(new.id, new_id, "the next sale is active");
    // Item 1 of the new sale is for sale, on this core as in Redis.
    let r = server.connect().checkout(4, new.item(1));
    r.assert_status(200);
    let r = server.connect().purchase(&r.str("code"));
    r.assert_status(200);
    assert_eq!(r.ids("purchased"), vec![new.item(1)]);
    rig.assert_consistent(new.id);
    rig.assert_consistent(old.id);
}

/// A checkout that waited for Redis while its sale ended is answered 404
/// item_not_found, and recorded like every other well-formed attempt.
///
/// Redis is frozen before the end; one checkout is on its way (the one
/// batch in flight) and a second one waits behind it in the core's queue;
/// Redis resumes after the end.
#[test]
fn a_checkout_refused_because_the_sale_ended_meanwhile_is_recorded() {
    const PERIOD_SECS: u64 = 8;
    let rig = Rig::start(
        ServerConfig::new(20, 10)
            .env("FLASHSALE_CORES", "1")
            .env("SALE_PERIOD_SECS", &PERIOD_SECS.to_string())
            .env("FLASHSALE_REDIS_BATCHES_IN_FLIGHT", "1")
            .env("FLASHSALE_REDIS_TIMEOUT_MS", "20000"),
    );
    let server = rig.server();
    let sale = sale_with_time_left(server, Duration::from_millis(3000));
    let end = sale.ends_secs() * 1000;
    sleep_until(end - 1500);
    signal(rig.redis.pid(), SIGSTOP);
    let first = in_background(server, checkout_path(1, sale.item(1)));
    std::thread::sleep(Duration::from_millis(300));
    let queued = in_background(server, checkout_path(2, sale.item(2)));
    sleep_until(end + 500);
    signal(rig.redis.pid(), SIGCONT);

    let first = first.join().expect("checkout thread");
    let queued = queued.join().expect("checkout thread");
    queued.assert_error(404, "item_not_found");
    assert_eq!(
        recorded_outcome(&rig, sale.id, 2, sale.item(2)),
        "item_not_found"
    );
    let expected = match first.status {
        200 => "ok",
        _ => {
            first.assert_error(404, "item_not_found");
            "item_not_found"
        }
    };
    assert_eq!(recorded_outcome(&rig, sale.id, 1, sale.item(1)), expected);
    rig.assert_consistent(sale.id);
}
