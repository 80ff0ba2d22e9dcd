//! Sales at both bounds of `SALE_ITEMS`: one item, and the documented
//! maximum of 1,000,000, whose last item has the id `(S + 1) * 1,000,000`
//! (item n of sale S is `S * 1,000,000 + n`), just below the next sale's
//! first id. The value past the maximum is refused at start (`tests/cli.rs`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use simd_json::prelude::*;

/// Buys item `n` of `sale` for `user` and checks that it is sold afterwards.
fn buy(s: &TestServer, sale: &Sale, user: i64, n: u32) {
    let r = s.checkout(user, sale.item(n));
    r.assert_status(200);
    assert_eq!(r.i64("item_id"), sale.item(n), "{r}");
    let r = s.purchase(&r.str("code"));
    r.assert_status(200);
    assert_eq!(r.ids("purchased"), vec![sale.item(n)], "{r}");
    s.checkout(user + 1, sale.item(n))
        .assert_error(409, "item_sold");
}

/// The ids and sold flags of one page of a sale's items.
fn page(s: &TestServer, sale: &Sale, offset: u32, limit: u32) -> Vec<(i64, bool)> {
    let r = s.get(&format!(
        "/sales/{}/items?offset={offset}&limit={limit}",
        sale.id
    ));
    r.assert_status(200);
    assert_eq!(r.i64("total"), sale.items_total, "{r}");
    r.json()["items"]
        .as_array()
        .expect("items is an array")
        .iter()
        .map(|item| {
            (
                item.get("id").and_then(|v| v.as_i64()).expect("id"),
                item.get("sold").and_then(|v| v.as_bool()).expect("sold"),
            )
        })
        .collect()
}

#[test]
fn a_sale_of_one_item() {
    let s = TestServer::start(Opts::default().items(1).limit(1));
    let sale = s.active_sale();
    assert_eq!(sale.items_total, 1);
    s.checkout(1, sale.item(2))
        .assert_error(404, "item_not_found");
    buy(&s, &sale, 1, 1);
    assert_eq!(page(&s, &sale, 0, 10), vec![(sale.item(1), true)]);
    assert_eq!(s.active_sale().items_sold, 1);
    s.assert_consistent(sale.id);
}

#[test]
fn a_sale_of_the_maximum_one_million_items() {
    const MAX: u32 = 1_000_000;
    let started = Instant::now();
    let s = TestServer::start(Opts::default().items(MAX));
    // The rotator writes the current and the next sale's million item rows.
    let mut sale = None;
    eventually(
        Duration::from_secs(120),
        "a sale of a million items is active",
        || {
            let r = s.get("/sales/active");
            if r.status == 200 {
                sale = Some(Sale::from_response(&r));
            }
            sale.is_some()
        },
    );
    let sale = sale.expect("active sale");
    eprintln!(
        "a sale of {MAX} items was active {:?} after the spawn",
        started.elapsed()
    );
    assert_eq!(sale.items_total, i64::from(MAX));
    let last = sale.item(MAX);
    assert_eq!(last, (sale.id + 1) * 1_000_000, "the last item's id");

    buy(&s, &sale, 1, MAX);
    buy(&s, &sale, 10, 1);
    // The id after the last item is the next sale's first: not this sale's.
    s.checkout(20, last + 1).assert_error(404, "item_not_found");

    assert_eq!(
        page(&s, &sale, MAX - 2, 10),
        vec![(sale.item(MAX - 1), false), (last, true)]
    );
    assert!(page(&s, &sale, MAX, 10).is_empty());
    assert_eq!(
        s.pg_i64("SELECT count(*) FROM items WHERE sale_id = $1", &[&sale.id]),
        i64::from(MAX)
    );
    s.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE sale_id = $1 AND item_id = $2",
        &[&sale.id, &last],
        1,
    );
    s.assert_consistent(sale.id);
}
