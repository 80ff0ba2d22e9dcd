//! Every endpoint and error code of the HTTP API (docs/api.md), one server per test.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use simd_json::prelude::*;

fn server(items: u32, limit: u32) -> TestServer {
    TestServer::start(Opts::default().items(items).limit(limit))
}

#[test]
fn active_sale_has_the_documented_shape() {
    let s = server(50, 10);
    let r = s.get("/sales/active");
    r.assert_status(200);
    assert!(r.is_json(), "{r}");
    let sale = Sale::from_response(&r);
    assert!(sale.id > 0, "{r}");
    assert_eq!(sale.items_total, 50, "{r}");
    assert_eq!(sale.items_sold, 0, "{r}");
    let (starts, ends) = (sale.starts_secs(), sale.ends_secs());
    assert_eq!(ends - starts, 3600, "a sale covers one period: {r}");
    assert_eq!(
        starts % 3600,
        0,
        "a sale starts on a multiple of the period: {r}"
    );
    let now = now_secs();
    assert!(
        starts <= now && now < ends,
        "the active sale covers now ({now}): {r}"
    );
    // The same sale on a second read.
    assert_eq!(s.active_sale().id, sale.id);
}

#[test]
fn items_are_listed_by_id_with_paging() {
    let s = server(250, 10);
    let sale = s.active_sale();
    let path = |q: &str| format!("/sales/{}/items{q}", sale.id);

    let r = s.get(&path(""));
    r.assert_status(200);
    assert!(r.is_json(), "{r}");
    assert_eq!(r.i64("sale_id"), sale.id, "{r}");
    assert_eq!(r.i64("total"), 250, "{r}");
    let v = r.json();
    let items = v["items"].as_array().expect("items is an array");
    assert_eq!(items.len(), 100, "default limit is 100");
    let mut names = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            item.get("id").and_then(|x| x.as_i64()),
            Some(sale.item(i as u32 + 1)),
            "item {i}: {item:?}"
        );
        let name = item
            .get("name")
            .and_then(|x| x.as_str())
            .expect("name is a string");
        assert!(!name.is_empty(), "{item:?}");
        assert!(names.insert(name.to_string()), "duplicate name {name}");
        let url = item
            .get("image_url")
            .and_then(|x| x.as_str())
            .expect("image_url is a string");
        assert!(url.starts_with("http"), "image_url {url}");
        assert_eq!(
            item.get("sold").and_then(|x| x.as_bool()),
            Some(false),
            "{item:?}"
        );
    }

    let ids = |r: &Response| -> Vec<i64> {
        r.json()["items"]
            .as_array()
            .expect("items is an array")
            .iter()
            .map(|x| x.get("id").and_then(|i| i.as_i64()).expect("item id"))
            .collect()
    };

    let r = s.get(&path("?offset=100&limit=1000"));
    r.assert_status(200);
    let got = ids(&r);
    let want: Vec<i64> = (101..=250).map(|n| sale.item(n)).collect();
    assert_eq!(got, want, "offset 100, limit 1000");

    let r = s.get(&path("?offset=240&limit=5"));
    r.assert_status(200);
    assert_eq!(
        ids(&r),
        (241..=245).map(|n| sale.item(n)).collect::<Vec<_>>()
    );
    assert_eq!(r.i64("total"), 250);

    let r = s.get(&path("?limit=7"));
    r.assert_status(200);
    assert_eq!(ids(&r), (1..=7).map(|n| sale.item(n)).collect::<Vec<_>>());

    let r = s.get(&path("?offset=250"));
    r.assert_status(200);
    assert!(ids(&r).is_empty(), "past the end: {r}");

    for bad in [
        "?limit=1001",
        "?limit=0",
        "?limit=-1",
        "?limit=abc",
        "?offset=-1",
        "?offset=abc",
        "?offset=1.5",
    ] {
        s.get(&path(bad)).assert_error(400, "invalid_params");
    }

    let r = s.get(&format!("/sales/{}/items", sale.id + 1000));
    r.assert_status(404);
    assert!(r.is_json(), "{r}");
    assert!(!r.str("error").is_empty(), "{r}");
}

/// The rotator prepares the next sale ahead of its start. Its items can be
/// listed before it opens (a preview: ids are predictable anyway), but not
/// checked out until it opens.
#[test]
fn the_next_sale_is_listed_before_it_opens_but_cannot_be_checked_out() {
    let s = server(30, 10);
    let active = s.active_sale();
    let mut next = None;
    eventually(
        Duration::from_secs(20),
        "the next sale to be prepared",
        || {
            let mut pg = s.pg();
            next = pg
                .query_opt(
                    "SELECT id FROM sales WHERE starts_at > now() ORDER BY starts_at LIMIT 1",
                    &[],
                )
                .expect("query sales")
                .map(|row| row.get::<_, i64>(0));
            next.is_some()
        },
    );
    let next = next.expect("found above");
    assert_ne!(next, active.id);

    // The row is in Postgres a moment before the sale is in Redis (the
    // rotator writes Postgres first): wait until the sale is listed, then
    // check that it is listed in full while it has not opened yet.
    let mut listed = None;
    eventually(
        Duration::from_secs(20),
        "the next sale to be listed",
        || {
            let r = s.get(&format!("/sales/{next}/items?limit=1000"));
            if r.status == 404 {
                r.assert_error(404, "sale_not_found");
                return false;
            }
            listed = Some(r);
            true
        },
    );
    let r = listed.expect("listed above");
    r.assert_status(200);
    assert_eq!(
        s.active_sale().id,
        active.id,
        "the next sale opened before it was listed"
    );
    assert_eq!(r.i64("sale_id"), next, "{r}");
    assert_eq!(r.i64("total"), 30, "{r}");
    let v = r.json();
    let items = v["items"].as_array().expect("items is an array");
    assert_eq!(items.len(), 30, "{r}");
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            item.get("id").and_then(|x| x.as_i64()),
            Some(item_id(next, i as u32 + 1)),
            "{item:?}"
        );
        assert_eq!(item.get("sold").and_then(|x| x.as_bool()), Some(false));
    }

    s.checkout(5, item_id(next, 1))
        .assert_error(404, "item_not_found");
}

#[test]
fn sold_flags_and_counters_follow_purchases() {
    let s = server(20, 10);
    let sale = s.active_sale();
    let item = sale.item(3);
    let r = s.checkout(7, item);
    r.assert_status(200);
    let p = s.purchase(&r.str("code"));
    p.assert_status(200);
    assert_eq!(p.ids("purchased"), vec![item]);

    let r = s.get(&format!("/sales/{}/items", sale.id));
    r.assert_status(200);
    let v = r.json();
    for it in v["items"].as_array().expect("items") {
        let id = it.get("id").and_then(|x| x.as_i64()).expect("id");
        let sold = it.get("sold").and_then(|x| x.as_bool()).expect("sold flag");
        assert_eq!(sold, id == item, "item {id}: {r}");
    }
    let after = s.active_sale();
    assert_eq!(after.id, sale.id);
    assert_eq!(after.items_sold, 1);
}

#[test]
fn checkout_shape_code_reuse_and_idempotent_add() {
    let s = server(50, 10);
    let sale = s.active_sale();
    let (a, b, c) = (sale.item(1), sale.item(2), sale.item(50));

    let r = s.checkout(11, a);
    r.assert_status(200);
    assert!(r.is_json(), "{r}");
    let code = r.str("code");
    assert!(
        code_is_well_formed(&code, sale.id),
        "code {code:?} is not <sale>-<32 hex>"
    );
    assert_eq!(r.i64("sale_id"), sale.id);
    assert_eq!(r.i64("item_id"), a);
    assert_eq!(r.ids("items"), vec![a]);

    let r = s.checkout(11, b);
    r.assert_status(200);
    assert_eq!(r.str("code"), code, "same user, same sale: same code");
    assert_eq!(r.i64("item_id"), b);
    assert_eq!(r.sorted_ids("items"), vec![a, b]);

    // Adding an item already in the checkout changes nothing.
    let r = s.checkout(11, a);
    r.assert_status(200);
    assert_eq!(r.str("code"), code);
    assert_eq!(r.i64("item_id"), a);
    assert_eq!(r.sorted_ids("items"), vec![a, b]);

    let r = s.checkout(11, c);
    r.assert_status(200);
    assert_eq!(r.str("code"), code);
    assert_eq!(r.sorted_ids("items"), vec![a, b, c]);

    // Another user gets another code; checkouts do not reserve items.
    let r = s.checkout(12, a);
    r.assert_status(200);
    let other = r.str("code");
    assert_ne!(other, code);
    assert!(code_is_well_formed(&other, sale.id));
    assert_eq!(r.ids("items"), vec![a]);
}

#[test]
fn checkout_rejects_malformed_params() {
    let s = server(50, 10);
    let item = s.active_sale().item(1);
    let bad = [
        "/checkout".to_string(),
        format!("/checkout?id={item}"),
        "/checkout?user_id=5".to_string(),
        format!("/checkout?user_id=0&id={item}"),
        format!("/checkout?user_id=-3&id={item}"),
        format!("/checkout?user_id=abc&id={item}"),
        format!("/checkout?user_id=&id={item}"),
        format!("/checkout?user_id=1.5&id={item}"),
        format!("/checkout?user_id=99999999999999999999999&id={item}"),
        "/checkout?user_id=5&id=0".to_string(),
        "/checkout?user_id=5&id=-7".to_string(),
        "/checkout?user_id=5&id=xyz".to_string(),
        "/checkout?user_id=5&id=".to_string(),
        "/checkout?user_id=5&id=99999999999999999999999".to_string(),
    ];
    for target in &bad {
        let r = s.post(target);
        assert_eq!(r.status, 400, "POST {target}: {r}");
        r.assert_error(400, "invalid_params");
    }
    // None of them was recorded, and none opened a checkout.
    let r = s.checkout(5, item);
    r.assert_status(200);
    assert_eq!(r.ids("items"), vec![item]);
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], 1);
}

#[test]
fn parameters_in_a_form_body_are_refused_with_a_pointer_to_the_query_string() {
    let s = server(50, 10);
    let item = s.active_sale().item(1);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let checkout_body = format!("user_id=5&id={item}");
    let purchase_body = format!("code={}", random_code(s.active_sale().id));
    for (target, body) in [
        ("/checkout", checkout_body.as_bytes()),
        ("/purchase", purchase_body.as_bytes()),
    ] {
        let r = s.request("POST", target, &form, body);
        r.assert_error(400, "invalid_params");
        let message = r.str("message");
        assert!(
            message.contains("query string"),
            "POST {target} with a form body: the message should say where parameters go: {r}"
        );
    }
    // Nothing was checked out or recorded.
    let r = s.checkout(5, item);
    r.assert_status(200);
    assert_eq!(r.ids("items"), vec![item]);
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], 1);
}

#[test]
fn checkout_of_items_outside_the_active_sale_is_404() {
    let s = server(50, 10);
    let sale = s.active_sale();
    for item in [
        sale.item(51),
        item_id(sale.id + 1, 1),
        item_id(sale.id + 7, 3),
        1,
        999_999,
    ] {
        s.checkout(3, item).assert_error(404, "item_not_found");
    }
    // The rejected attempts open no checkout.
    let r = s.checkout(3, sale.item(50));
    r.assert_status(200);
    assert_eq!(r.ids("items"), vec![sale.item(50)]);
}

#[test]
fn sold_items_answer_409_item_sold() {
    let s = server(50, 10);
    let sale = s.active_sale();
    let item = sale.item(10);

    // The loser checks out first: checkouts reserve nothing.
    let loser = s.checkout(2, item);
    loser.assert_status(200);
    let winner = s.checkout(1, item);
    winner.assert_status(200);
    s.purchase(&winner.str("code")).assert_status(200);

    let r = s.checkout(3, item);
    r.assert_error(409, "item_sold");

    // The loser's purchase buys nothing and says why.
    let r = s.purchase(&loser.str("code"));
    r.assert_error(409, "nothing_purchased");
    assert_eq!(r.i64("sale_id"), sale.id);
    assert_eq!(r.i64("user_id"), 2);
    assert!(r.ids("purchased").is_empty(), "{r}");
    assert_eq!(r.ids("unavailable"), vec![item]);
    // Replayed, the same answer.
    let again = s.purchase(&loser.str("code"));
    again.assert_error(409, "nothing_purchased");
    assert!(again.ids("purchased").is_empty());
    assert_eq!(again.ids("unavailable"), vec![item]);
    assert_eq!(s.active_sale().items_sold, 1);
}

#[test]
fn user_limit_counts_checkout_and_purchases() {
    let s = server(50, 3);
    let sale = s.active_sale();
    let i = |n| sale.item(n);

    // Buy two.
    let r = s.checkout(21, i(1));
    r.assert_status(200);
    let first_code = r.str("code");
    s.checkout(21, i(2)).assert_status(200);
    let p = s.purchase(&first_code);
    p.assert_status(200);
    assert_eq!(p.sorted_ids("purchased"), vec![i(1), i(2)]);
    assert!(p.ids("unavailable").is_empty());

    // A new checkout holds only one more.
    let r = s.checkout(21, i(3));
    r.assert_status(200);
    let second_code = r.str("code");
    assert_ne!(
        second_code, first_code,
        "a purchased code is closed; the next checkout opens a new one"
    );
    assert_eq!(r.ids("items"), vec![i(3)]);
    s.checkout(21, i(4)).assert_error(409, "limit_reached");
    // Re-adding what is already in the checkout is still fine.
    let r = s.checkout(21, i(3));
    r.assert_status(200);
    assert_eq!(r.ids("items"), vec![i(3)]);

    let p = s.purchase(&second_code);
    p.assert_status(200);
    assert_eq!(p.ids("purchased"), vec![i(3)]);
    // Limit reached by purchases alone.
    s.checkout(21, i(5)).assert_error(409, "limit_reached");

    // The limit holds within a single checkout too.
    for n in 10..13 {
        s.checkout(22, i(n)).assert_status(200);
    }
    s.checkout(22, i(13)).assert_error(409, "limit_reached");
    let r = s.checkout(22, i(11));
    r.assert_status(200);
    assert_eq!(r.sorted_ids("items"), vec![i(10), i(11), i(12)]);
}

#[test]
fn purchase_shape_replay_and_postgres_rows() {
    let s = server(50, 10);
    let sale = s.active_sale();
    let (a, b, c) = (sale.item(1), sale.item(2), sale.item(3));
    for item in [a, b, c] {
        s.checkout(31, item).assert_status(200);
    }
    let code = s.checkout(31, a).str("code");

    // Someone else buys b first.
    let rival = s.checkout(32, b).str("code");
    s.purchase(&rival).assert_status(200);

    let r = s.purchase(&code);
    r.assert_status(200);
    assert!(r.is_json(), "{r}");
    assert_eq!(r.i64("sale_id"), sale.id);
    assert_eq!(r.i64("user_id"), 31);
    assert_eq!(r.sorted_ids("purchased"), vec![a, c]);
    assert_eq!(r.ids("unavailable"), vec![b]);

    // Replay: same status, same lists, nothing more bought.
    for _ in 0..3 {
        let again = s.purchase(&code);
        again.assert_status(200);
        assert_eq!(again.i64("sale_id"), sale.id);
        assert_eq!(again.i64("user_id"), 31);
        assert_eq!(again.sorted_ids("purchased"), vec![a, c]);
        assert_eq!(again.ids("unavailable"), vec![b]);
    }
    assert_eq!(s.active_sale().items_sold, 3);

    // The code is spent: the next checkout opens a new one, and the old code
    // still replays its first outcome.
    let r = s.checkout(31, sale.item(4));
    r.assert_status(200);
    assert_ne!(r.str("code"), code);
    assert_eq!(r.ids("items"), vec![sale.item(4)]);
    assert_eq!(s.purchase(&code).sorted_ids("purchased"), vec![a, c]);

    // Postgres: one row per bought item, with the right user and code.
    s.wait_pg_i64("SELECT count(*) FROM purchases", &[], 3);
    let mut pg = s.pg();
    let rows = pg
        .query(
            "SELECT sale_id, item_id, user_id, code FROM purchases ORDER BY item_id",
            &[],
        )
        .expect("query purchases");
    let got: Vec<(i64, i64, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (sale.id, a, 31, code.clone()),
            (sale.id, b, 32, rival.clone()),
            (sale.id, c, 31, code.clone()),
        ]
    );
    // Still three rows a moment later (the replays wrote nothing).
    let extra = wait_until(Duration::from_millis(300), || {
        s.pg_i64("SELECT count(*) FROM purchases", &[]) != 3
    });
    assert!(!extra, "replays added purchase rows");
}

#[test]
fn purchase_errors() {
    let s = server(50, 10);
    let sale = s.active_sale();
    s.purchase(&random_code(sale.id))
        .assert_error(404, "unknown_code");
    let bad_codes = [
        "garbage".to_string(),
        String::new(),
        format!("{}-", sale.id),
        format!("{}-7-", sale.id),
        format!("{}-0123456789abcdef0123456789abcdef", sale.id),
        format!("{}-7-0123456789ABCDEF0123456789abcdef", sale.id),
        format!("{}-7-0123456789abcdef0123456789abcde", sale.id),
        format!("{}-7-0123456789abcdef0123456789abcdefa", sale.id),
        format!("{}-7-0123456789abcdef0123456789abcdeg", sale.id),
        format!("{}-0-0123456789abcdef0123456789abcdef", sale.id),
        format!("{}-07-0123456789abcdef0123456789abcdef", sale.id),
        format!("{}-x-0123456789abcdef0123456789abcdef", sale.id),
        "x-7-0123456789abcdef0123456789abcdef".to_string(),
        "0-7-0123456789abcdef0123456789abcdef".to_string(),
        "-1-7-0123456789abcdef0123456789abcdef".to_string(),
    ];
    for code in &bad_codes {
        let r = s.post(&purchase_path(code));
        assert_eq!(r.status, 400, "purchase code {code:?}: {r}");
        r.assert_error(400, "invalid_params");
    }
    s.post("/purchase").assert_error(400, "invalid_params");
    s.post("/purchase?other=1")
        .assert_error(400, "invalid_params");
    assert_eq!(s.active_sale().items_sold, 0);
}

#[test]
fn checkout_attempts_and_users_are_recorded() {
    let s = server(50, 2);
    let sale = s.active_sale();
    let i = |n| sale.item(n);
    // ok ×3 (one is a repeated add), then a purchase
    let code = s.checkout(41, i(1)).str("code");
    s.checkout(41, i(2)).assert_status(200);
    s.checkout(41, i(2)).assert_status(200);
    // limit_reached
    s.checkout(41, i(3)).assert_error(409, "limit_reached");
    s.purchase(&code).assert_status(200);
    // item_sold
    s.checkout(42, i(1)).assert_error(409, "item_sold");
    // item_not_found ×2
    s.checkout(42, i(51)).assert_error(404, "item_not_found");
    s.checkout(43, item_id(sale.id + 1, 1))
        .assert_error(404, "item_not_found");
    // malformed: not recorded
    s.post("/checkout?user_id=0&id=1")
        .assert_error(400, "invalid_params");

    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], 7);
    let count = |outcome: &str| {
        s.pg_i64(
            "SELECT count(*) FROM checkouts WHERE outcome = $1 AND sale_id = $2",
            &[&outcome, &sale.id],
        )
    };
    assert_eq!(count("ok"), 3);
    assert_eq!(count("limit_reached"), 1);
    assert_eq!(count("item_sold"), 1);
    assert_eq!(count("item_not_found"), 2);
    assert_eq!(
        s.pg_i64(
            "SELECT count(*) FROM checkouts WHERE outcome = 'ok' AND user_id = 41 AND code = $1",
            &[&code]
        ),
        3,
        "accepted checkouts carry their code"
    );
    s.wait_pg_i64("SELECT count(*) FROM users", &[], 3);
    assert_eq!(
        s.pg_i64("SELECT count(*) FROM users WHERE id IN (41, 42, 43)", &[]),
        3
    );
    s.wait_pg_i64("SELECT count(*) FROM purchases", &[], 2);
}

#[test]
fn unknown_paths_and_wrong_methods() {
    let s = server(10, 10);
    let sale = s.active_sale();
    for target in [
        "/",
        "/nope",
        "/sales",
        "/sales/active/x",
        "/checkoutx",
        "/health/x",
    ] {
        s.get(target).assert_error(404, "not_found");
    }
    let cases = [
        ("GET", "/checkout?user_id=1&id=1".to_string(), "POST"),
        ("GET", "/purchase?code=x".to_string(), "POST"),
        ("POST", "/sales/active".to_string(), "GET"),
        ("DELETE", "/sales/active".to_string(), "GET"),
        ("POST", "/health".to_string(), "GET"),
        ("POST", format!("/sales/{}/items", sale.id), "GET"),
        ("PUT", "/checkout?user_id=1&id=1".to_string(), "POST"),
    ];
    for (method, target, allowed) in &cases {
        let r = s.request(method, target, &[], b"");
        r.assert_error(405, "method_not_allowed");
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {target}: 405 without Allow: {r}"));
        assert!(
            allow.split(',').any(|m| m.trim() == *allowed),
            "{method} {target}: Allow {allow:?} lacks {allowed}"
        );
    }
    // Nothing of that was a checkout.
    assert_eq!(s.active_sale().items_sold, 0);
}

#[test]
fn health_and_metrics() {
    let s = server(10, 10);
    let r = s.get("/health");
    r.assert_status(200);
    assert!(r.is_json(), "{r}");
    assert_eq!(r.str("status"), "ok");
    assert_eq!(r.str("redis"), "ok");
    assert_eq!(r.str("postgres"), "ok");

    let sale = s.active_sale();
    s.checkout(1, sale.item(1)).assert_status(200);
    s.checkout(1, 1).assert_status(404);

    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(5), || {
        let m = s.get("/metrics");
        assert_eq!(m.status, 200, "{m}");
        let ct = m
            .header("content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(ct.starts_with("text/plain"), "/metrics content type {ct:?}");
        last = m.text();
        let has = |route: &str, status: &str| {
            last.lines().any(|l| {
                l.starts_with("flashsale_requests_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{status}\""))
                    && l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 1.0)
            })
        };
        has("checkout", "200") && has("checkout", "404")
    });
    assert!(ok, "/metrics lacks checkout request counters:\n{last}");
    // Prometheus text: every sample line is `name{labels} value` or `name value`.
    for line in last
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad sample line {line:?}"
        );
    }
    assert!(
        last.contains("# TYPE flashsale_requests_total counter"),
        "{last}"
    );
}

#[test]
fn request_id_is_echoed() {
    let s = server(10, 10);
    let sale = s.active_sale();
    let cases = [
        ("GET", "/sales/active".to_string(), 200),
        ("GET", "/nope".to_string(), 404),
        ("POST", "/checkout?user_id=0&id=1".to_string(), 400),
        ("POST", checkout_path(1, sale.item(1)), 200),
        ("GET", "/health".to_string(), 200),
        ("POST", "/sales/active".to_string(), 405),
    ];
    for (n, (method, target, status)) in cases.iter().enumerate() {
        let id = format!("req-{n}-4f1c2a");
        let r = s.request(method, target, &[("X-Request-Id", &id)], b"");
        assert_eq!(r.status, *status, "{method} {target}: {r}");
        assert_eq!(
            r.header("x-request-id"),
            Some(id.as_str()),
            "{method} {target}: {r}"
        );
    }
}

#[test]
fn every_response_is_json_except_metrics() {
    let s = server(10, 1);
    let sale = s.active_sale();
    let code = s.checkout(1, sale.item(1)).str("code");
    let responses = vec![
        s.get("/sales/active"),
        s.get(&format!("/sales/{}/items", sale.id)),
        s.get(&format!("/sales/{}/items", sale.id + 99)),
        s.get(&format!("/sales/{}/items?limit=0", sale.id)),
        s.checkout(2, sale.item(2)),
        s.checkout(1, sale.item(3)),
        s.checkout(2, 1),
        s.post("/checkout"),
        s.purchase(&code),
        s.purchase(&code),
        s.checkout(3, sale.item(1)),
        s.purchase(&random_code(sale.id)),
        s.purchase("nope"),
        s.get("/health"),
        s.get("/nope"),
        s.get("/checkout"),
    ];
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![
            200, 200, 404, 400, 200, 409, 404, 400, 200, 200, 409, 404, 400, 200, 404, 405
        ]
    );
    for r in &responses {
        assert!(r.is_json(), "not application/json: {r}");
        let v = r.json();
        assert!(v.is_object(), "body is not an object: {r}");
        if r.status >= 400 {
            assert!(
                v.get("error").and_then(|e| e.as_str()).is_some(),
                "error without code: {r}"
            );
        }
    }
    let m = s.get("/metrics");
    m.assert_status(200);
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{m}"
    );
}
