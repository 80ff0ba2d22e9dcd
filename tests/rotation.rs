//! Sale rotation with periods of a few seconds: sales open on time, one per
//! period, also with two instances racing; codes of ended sales cannot buy.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Polls `/sales/active` until its sale id differs from `from`.
fn wait_for_next_sale(s: &TestServer, from: i64, timeout: Duration) -> Sale {
    let mut next = None;
    let ok = wait_until(timeout, || {
        let r = s.get("/sales/active");
        assert_eq!(
            r.status, 200,
            "no active sale while waiting for a rotation: {r}"
        );
        let sale = Sale::from_response(&r);
        let changed = sale.id != from;
        next = Some(sale);
        changed
    });
    assert!(ok, "the sale did not change from {from} within {timeout:?}");
    next.expect("a sale")
}

#[test]
fn sales_rotate_every_period_without_gaps() {
    const PERIOD: i64 = 2;
    let s = TestServer::start(Opts::default().period(PERIOD as u64).items(20));
    let mut sales: Vec<Sale> = Vec::new();
    let mut reads = 0;
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        let before = now_ms();
        let r = s.get("/sales/active");
        let after = now_ms();
        reads += 1;
        assert_eq!(
            r.status, 200,
            "read {reads}: no active sale during rotation: {r}"
        );
        let sale = Sale::from_response(&r);
        let (starts, ends) = (sale.starts_secs(), sale.ends_secs());
        assert_eq!(ends - starts, PERIOD, "{r}");
        assert_eq!(starts % PERIOD, 0, "{r}");
        assert!(
            starts * 1000 <= after && ends * 1000 > before,
            "sale [{starts}, {ends}) is not open at the time of the read ({before}..{after} ms): {r}"
        );
        assert_eq!(sale.items_total, 20, "{r}");
        match sales.last() {
            Some(last) if last.id == sale.id => {
                assert_eq!(last.starts_secs(), starts, "one sale id, two periods: {r}");
            }
            Some(last) => {
                assert!(
                    sale.id > last.id,
                    "sale ids must increase: {} then {}",
                    last.id,
                    sale.id
                );
                assert_eq!(
                    starts,
                    last.ends_secs(),
                    "the next sale opens when the last one ends"
                );
                assert_eq!(sale.items_sold, 0, "a fresh sale has sold nothing: {r}");
                sales.push(sale);
            }
            None => sales.push(sale),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ids: Vec<i64> = sales.iter().map(|s| s.id).collect();
    assert!(
        ids.len() >= 3,
        "expected at least two rotations in 8 s, saw sales {ids:?}"
    );

    // Each observed sale is one row in Postgres, with its items.
    let mut pg = s.pg();
    for sale in &sales {
        let row = pg
            .query_one(
                "SELECT extract(epoch FROM starts_at)::bigint, extract(epoch FROM ends_at)::bigint, items_total::bigint, \
                 (SELECT count(*) FROM items WHERE sale_id = $1) FROM sales WHERE id = $1",
                &[&sale.id],
            )
            .unwrap_or_else(|e| panic!("sale {} in Postgres: {e}", sale.id));
        let got: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(
            got,
            (sale.starts_secs(), sale.ends_secs(), 20, 20),
            "sale {}",
            sale.id
        );
    }
    assert_eq!(
        s.pg_i64(
            "SELECT count(*) - count(DISTINCT starts_at) FROM sales",
            &[]
        ),
        0,
        "two sales share a period"
    );
}

/// A server started just before a period boundary prepares the sale of the
/// period it starts in and the next one, and the boundary may pass while it
/// does: from its first answer on, there is an active sale (no gap at
/// start-up). Started a few times, at different distances from a boundary.
#[test]
fn a_server_started_just_before_a_boundary_has_a_sale_from_its_first_answer() {
    const PERIOD_MS: i64 = 2000;
    let opts = Opts::default().period(2).items(5000);
    for before_boundary_ms in [500, 350, 200, 50] {
        let (redis_space, db_name) = TestServer::prepare_data(&opts, |_| {});
        let wait =
            (PERIOD_MS - before_boundary_ms - now_ms().rem_euclid(PERIOD_MS)).rem_euclid(PERIOD_MS);
        std::thread::sleep(Duration::from_millis(wait as u64));
        let s = TestServer::start_on(opts.clone(), &redis_space, &db_name, true);
        // Reads across the boundary and well past the start-up.
        let end = Instant::now() + Duration::from_millis(1500);
        let mut reads = 0;
        while Instant::now() < end {
            let r = s.get("/sales/active");
            reads += 1;
            assert_eq!(
                r.status,
                200,
                "started {before_boundary_ms} ms before a boundary, read {reads}: {r}; log:\n{}",
                s.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn codes_and_items_of_an_ended_sale() {
    let s = TestServer::start(Opts::default().period(3).items(20));
    // Start right after a rotation, so the whole sale is ahead of us.
    let first = s.active_sale();
    let sale = wait_for_next_sale(&s, first.id, Duration::from_secs(10));

    let held = s.checkout(1, sale.item(1));
    held.assert_status(200);
    let held_code = held.str("code");
    let bought = s.checkout(2, sale.item(2));
    bought.assert_status(200);
    let p = s.purchase(&bought.str("code"));
    p.assert_status(200);
    assert_eq!(p.ids("purchased"), vec![sale.item(2)]);

    let next = wait_for_next_sale(&s, sale.id, Duration::from_secs(10));
    assert!(next.id > sale.id);
    assert_eq!(next.items_sold, 0);

    // The held code cannot buy any more, now or on retry.
    s.purchase(&held_code).assert_error(410, "sale_ended");
    s.purchase(&held_code).assert_error(410, "sale_ended");
    // A code never issued in the ended sale: unknown, or of an ended sale;
    // either way it buys nothing.
    let r = s.purchase(&random_code(sale.id));
    match r.status {
        404 => r.assert_error(404, "unknown_code"),
        _ => r.assert_error(410, "sale_ended"),
    };
    // Items of the ended sale are not items of the active sale.
    s.checkout(1, sale.item(1))
        .assert_error(404, "item_not_found");
    s.checkout(3, sale.item(3))
        .assert_error(404, "item_not_found");

    // The same user shops on in the new sale with a new code.
    let r = s.checkout(1, next.item(1));
    r.assert_status(200);
    let code = r.str("code");
    assert!(code_is_well_formed(&code, next.id), "{code}");
    assert_ne!(code, held_code);
    assert_eq!(r.ids("items"), vec![next.item(1)]);

    // Nothing of the held checkout was bought.
    s.wait_pg_i64("SELECT count(*) FROM purchases", &[], 1);
    assert_eq!(
        s.pg_i64(
            "SELECT count(*) FROM purchases WHERE item_id = $1",
            &[&sale.item(1)]
        ),
        0
    );
}

#[test]
fn two_instances_agree_on_one_sale_per_period() {
    const PERIOD: i64 = 3;
    let a = TestServer::start(Opts::default().period(PERIOD as u64).items(20));
    let b = TestServer::start_sharing(&a);
    assert_ne!(a.addr, b.addr);

    let mut observed: Vec<i64> = Vec::new();
    let mut cross_checked = false;
    let end = Instant::now() + Duration::from_secs(7);
    while Instant::now() < end {
        let (mut sa, mut sb) = (a.active_sale(), b.active_sale());
        if sa.id != sb.id {
            // A read on each side of a boundary: read again right away.
            std::thread::sleep(Duration::from_millis(30));
            sa = a.active_sale();
            sb = b.active_sale();
        }
        assert_eq!(
            (sa.id, sa.starts_secs(), sa.ends_secs()),
            (sb.id, sb.starts_secs(), sb.ends_secs()),
            "the two instances disagree on the active sale"
        );
        if let Some(&last) = observed.last() {
            assert!(sa.id >= last, "sale id went back from {last} to {}", sa.id);
        }
        if observed.last() != Some(&sa.id) {
            // A fresh sale: a checkout on one instance buys on the other.
            if !observed.is_empty() && !cross_checked {
                let r = a.checkout(77, sa.item(5));
                r.assert_status(200);
                let p = b.purchase(&r.str("code"));
                p.assert_status(200);
                assert_eq!(p.ids("purchased"), vec![sa.item(5)]);
                // Both instances know it is sold (A only through Redis).
                b.checkout(78, sa.item(5)).assert_error(409, "item_sold");
                a.checkout(79, sa.item(5)).assert_error(409, "item_sold");
                assert_eq!(a.active_sale().items_sold, 1);
                cross_checked = true;
            }
            observed.push(sa.id);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(observed.len() >= 2, "no rotation seen in 7 s: {observed:?}");
    assert!(cross_checked);

    let mut pg = a.pg();
    let rows = pg
        .query(
            "SELECT id, extract(epoch FROM starts_at)::bigint, extract(epoch FROM ends_at)::bigint FROM sales ORDER BY starts_at",
            &[],
        )
        .expect("query sales");
    let sales: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let starts: std::collections::HashSet<i64> = sales.iter().map(|s| s.1).collect();
    assert_eq!(
        starts.len(),
        sales.len(),
        "duplicate sales for one period: {sales:?}"
    );
    // Observed periods, plus at most one before the first read (the first
    // instance may have started a period earlier) and one prepared ahead.
    assert!(
        sales.len() >= observed.len() && sales.len() <= observed.len() + 2,
        "{} sales in Postgres for {} observed periods: {sales:?} vs {observed:?}",
        sales.len(),
        observed.len()
    );
    for id in &observed {
        assert!(
            sales.iter().any(|s| s.0 == *id),
            "observed sale {id} is not in Postgres: {sales:?}"
        );
    }
    for w in sales.windows(2) {
        assert_eq!(
            w[1].1 - w[0].1,
            PERIOD,
            "periods are consecutive: {sales:?}"
        );
        assert!(w[1].0 > w[0].0, "ids increase with time: {sales:?}");
    }
    for s in &sales {
        assert_eq!(s.2 - s.1, PERIOD, "{sales:?}");
        assert_eq!(s.1 % PERIOD, 0, "{sales:?}");
    }
}
