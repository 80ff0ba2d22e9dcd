//! One clock decides a sale's life: Redis's. An instance whose own wall clock
//! is off (libfaketime, several periods behind or ahead) runs next to a
//! correct one on the same Redis and Postgres; shoppers buy through both
//! across several sale boundaries. Every purchase answered 200 must be in
//! Postgres, must have been bought inside its sale's window by the true clock
//! (the test's, the same host's as Redis), and every sale must check
//! consistent; the skewed instance reports its offset to Redis's clock.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;

const PERIOD_SECS: u64 = 5;
/// The skew: fourteen periods and three seconds, so that the skewed clock
/// names another sale than the true one, not on a period boundary, and is
/// past any grace of a minute a close-out might allow.
const SKEW_SECS: i64 = 14 * PERIOD_SECS as i64 + 3;
/// How long the shoppers buy, by the true clock: several sale boundaries.
const SHOPPING: Duration = Duration::from_secs(4 * PERIOD_SECS);
const ITEMS: u32 = 2_000;

/// A purchase answered 200, with the true time around the request.
#[derive(Debug, Clone)]
struct Acknowledged {
    instance: &'static str,
    sale_id: i64,
    item_id: i64,
    sent_ms: i64,
    answered_ms: i64,
}

/// Shops on `server` until `until`: read the active sale, check out a random
/// item as a fresh user, sometimes wait a little (so that purchases cross
/// sale boundaries), buy.
fn shop(
    server: &TestServer,
    instance: &'static str,
    first_user: i64,
    until: Instant,
) -> Vec<Acknowledged> {
    let mut rng = Rng::seeded();
    let mut conn = server.connect();
    let mut acknowledged = Vec::new();
    let mut user = first_user;
    while Instant::now() < until {
        let active = conn.get("/sales/active");
        if active.status != 200 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let sale = Sale::from_response(&active);
        user += 1;
        let n = rng.range(1, u64::from(ITEMS) + 1) as u32;
        let checkout = conn.checkout(user, sale.item(n));
        if checkout.status != 200 {
            continue;
        }
        if rng.range(0, 4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
        }
        let sent_ms = now_ms();
        let purchase = conn.purchase(&checkout.str("code"));
        let answered_ms = now_ms();
        if purchase.status == 200 {
            let sale_id = purchase.i64("sale_id");
            for item_id in purchase.ids("purchased") {
                acknowledged.push(Acknowledged {
                    instance,
                    sale_id,
                    item_id,
                    sent_ms,
                    answered_ms,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    acknowledged
}

/// The value of an unlabelled gauge in a `/metrics` text.
fn gauge(server: &TestServer, name: &str) -> Option<f64> {
    let text = server.get("/metrics").text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn skewed_instance_sells_only_inside_windows_and_loses_nothing(skew_secs: i64) {
    let correct = TestServer::start(Opts::default().period(PERIOD_SECS).items(ITEMS));
    let skewed = TestServer::start_sharing_with(&correct, &faketime_env(skew_secs));

    let until = Instant::now() + SHOPPING;
    let (from_correct, from_skewed) = std::thread::scope(|scope| {
        let a = scope.spawn(|| shop(&correct, "correct", 1_000_000, until));
        let b = scope.spawn(|| shop(&skewed, "skewed", 2_000_000, until));
        (a.join().expect("shopper"), b.join().expect("shopper"))
    });
    let acknowledged: Vec<Acknowledged> =
        from_correct.iter().chain(&from_skewed).cloned().collect();
    assert!(
        !from_correct.is_empty() && !from_skewed.is_empty(),
        "both instances must have sold something: {} and {} purchases",
        from_correct.len(),
        from_skewed.len()
    );

    // Every sale that sold something, with its window.
    let mut pg = correct.pg();
    let sale_ids: Vec<i64> = acknowledged
        .iter()
        .map(|a| a.sale_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let windows: BTreeMap<i64, (i64, i64)> = pg
        .query(
            "SELECT id, extract(epoch FROM starts_at)::bigint, extract(epoch FROM ends_at)::bigint \
             FROM sales WHERE id = ANY($1)",
            &[&sale_ids],
        )
        .expect("sales of the purchases")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();

    // Let every one of them end and be closed out (drained into Postgres).
    let last_end = windows.values().map(|w| w.1).max().unwrap_or(0);
    let wait_ms = (last_end * 1000 - now_ms()).max(0) as u64;
    std::thread::sleep(Duration::from_millis(wait_ms));
    let drained = wait_until(Duration::from_secs(100), || {
        pg.query_one(
            "SELECT count(*) FROM sales WHERE id = ANY($1) AND NOT outbox_drained",
            &[&sale_ids],
        )
        .is_ok_and(|r| r.get::<_, i64>(0) == 0)
    });

    let recorded: BTreeSet<(i64, i64)> = pg
        .query(
            "SELECT sale_id, item_id FROM purchases WHERE sale_id = ANY($1)",
            &[&sale_ids],
        )
        .expect("purchases")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let outside: Vec<&Acknowledged> = acknowledged
        .iter()
        .filter(|a| {
            let (starts, ends) = windows[&a.sale_id];
            a.answered_ms < starts * 1000 || a.sent_ms >= ends * 1000
        })
        .collect();
    let missing: Vec<&Acknowledged> = acknowledged
        .iter()
        .filter(|a| !recorded.contains(&(a.sale_id, a.item_id)))
        .collect();
    let count = |list: &[&Acknowledged], instance: &str| {
        list.iter().filter(|a| a.instance == instance).count()
    };
    eprintln!(
        "[clock] skew {skew_secs:+} s: {} purchases acknowledged ({} correct, {} skewed) in sales {sale_ids:?}; \
         outside their sale's window: {} ({} skewed); missing from Postgres: {} ({} skewed)",
        acknowledged.len(),
        from_correct.len(),
        from_skewed.len(),
        outside.len(),
        count(&outside, "skewed"),
        missing.len(),
        count(&missing, "skewed"),
    );
    assert!(
        outside.is_empty() && missing.is_empty(),
        "of {} acknowledged purchases, {} fell outside their sale's window by the true clock \
         and {} are missing from Postgres; first outside: {:?}; first missing: {:?}",
        acknowledged.len(),
        outside.len(),
        missing.len(),
        outside.first(),
        missing.first(),
    );
    assert!(
        drained,
        "sales {sale_ids:?} were not all closed out within 100 s of their end"
    );

    // What Postgres recorded of the purchases carries Redis's time too.
    let late = pg
        .query_one(
            "SELECT count(*) FROM purchases p JOIN sales s ON s.id = p.sale_id \
             WHERE p.sale_id = ANY($1) AND (p.created_at < s.starts_at OR p.created_at >= s.ends_at)",
            &[&sale_ids],
        )
        .expect("purchase times")
        .get::<_, i64>(0);
    assert_eq!(
        late, 0,
        "purchases recorded with a time outside their sale's window"
    );

    // Closed out: the outbox is gone, the sale closed in Redis, and Redis and
    // Postgres agree.
    let mut redis = correct.redis();
    for &sale_id in &sale_ids {
        // (Deleted right after the sale is marked drained in Postgres.)
        eventually(
            Duration::from_secs(10),
            &format!("sale {sale_id}: its outbox deleted after the close-out"),
            || {
                redis::cmd("EXISTS")
                    .arg(format!("{{sale:{sale_id}}}:outbox"))
                    .query::<i64>(&mut redis)
                    .is_ok_and(|n| n == 0)
            },
        );
        let closed: Option<String> = redis::cmd("HGET")
            .arg(format!("{{sale:{sale_id}}}:meta"))
            .arg("closed")
            .query(&mut redis)
            .expect("HGET meta closed");
        assert!(closed.is_some(), "sale {sale_id} is not closed in Redis");
        correct.assert_consistent(sale_id);
    }

    // Each instance knows its offset to Redis's clock (Redis minus its own).
    let offset = gauge(&skewed, "flashsale_clock_offset_seconds")
        .expect("the skewed instance exports flashsale_clock_offset_seconds");
    assert!(
        (offset + skew_secs as f64).abs() < 2.0,
        "the skewed instance reports an offset of {offset} s for a skew of {skew_secs} s"
    );
    let offset = gauge(&correct, "flashsale_clock_offset_seconds")
        .expect("the correct instance exports flashsale_clock_offset_seconds");
    assert!(
        offset.abs() < 2.0,
        "the correct instance reports an offset of {offset} s"
    );
    assert!(
        skewed.log_tail(10_000).contains("clock is off"),
        "the skewed instance does not warn about its clock:\n{}",
        skewed.log_tail(20)
    );
}

#[test]
fn an_instance_whose_clock_is_behind_sells_only_inside_windows_and_loses_nothing() {
    skewed_instance_sells_only_inside_windows_and_loses_nothing(-SKEW_SECS);
}

#[test]
fn an_instance_whose_clock_is_ahead_sells_only_inside_windows_and_loses_nothing() {
    skewed_instance_sells_only_inside_windows_and_loses_nothing(SKEW_SECS);
}

/// The close-out's first step is final: once a sale is marked closed in its
/// Redis meta, its scripts refuse it, even while its window is still open by
/// every clock, and nothing more enters its outbox.
#[test]
fn a_sale_closed_in_redis_refuses_checkouts_and_purchases() {
    let s = TestServer::start(Opts::default());
    let sale = s.active_sale();
    let held = s.checkout(1, sale.item(1));
    held.assert_status(200);
    let code = held.str("code");

    let mut redis = s.redis();
    let _: i64 = redis::cmd("HSET")
        .arg(format!("{{sale:{}}}:meta", sale.id))
        .arg("closed")
        .arg(now_ms())
        .query(&mut redis)
        .expect("HSET closed");

    s.purchase(&code).assert_error(410, "sale_ended");
    s.checkout(2, sale.item(2))
        .assert_error(404, "item_not_found");
    let outbox: i64 = redis::cmd("XLEN")
        .arg(format!("{{sale:{}}}:outbox", sale.id))
        .query(&mut redis)
        .expect("XLEN outbox");
    assert_eq!(outbox, 0, "a closed sale's outbox grew");
    assert_eq!(s.active_sale().items_sold, 0);
    s.assert_consistent(sale.id);
}
