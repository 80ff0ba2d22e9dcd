//! Concurrency: no item sold twice, no user past the limit, and Postgres
//! records exactly what Redis decided.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Barrier, Mutex};

use common::*;

#[test]
fn forty_buyers_one_item_one_winner() {
    const BUYERS: usize = 40;
    let s = TestServer::start(Opts::default().items(50).limit(10));
    let sale = s.active_sale();
    let item = sale.item(25);
    let checked_out = Barrier::new(BUYERS);
    let results: Mutex<Vec<(i64, Response)>> = Mutex::new(Vec::new());

    std::thread::scope(|scope| {
        for b in 0..BUYERS {
            let (s, checked_out, results) = (&s, &checked_out, &results);
            scope.spawn(move || {
                let user = 1000 + b as i64;
                let mut conn = s.connect();
                let r = conn.checkout(user, item);
                r.assert_status(200);
                let code = r.str("code");
                // Everyone holds the item before anyone buys.
                checked_out.wait();
                let p = conn.purchase(&code);
                results.lock().unwrap().push((user, p));
            });
        }
    });

    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), BUYERS);
    let winners: Vec<&(i64, Response)> = results.iter().filter(|(_, r)| r.status == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one purchase wins; statuses {:?}",
        results.iter().map(|(_, r)| r.status).collect::<Vec<_>>()
    );
    let (winner, w) = winners[0];
    assert_eq!(w.i64("user_id"), *winner);
    assert_eq!(w.ids("purchased"), vec![item]);
    assert!(w.ids("unavailable").is_empty(), "{w}");
    for (user, r) in results.iter().filter(|(u, _)| u != winner) {
        r.assert_error(409, "nothing_purchased");
        assert_eq!(r.i64("user_id"), *user);
        assert_eq!(r.i64("sale_id"), sale.id);
        assert!(r.ids("purchased").is_empty(), "{r}");
        assert_eq!(r.ids("unavailable"), vec![item], "{r}");
    }

    assert_eq!(s.active_sale().items_sold, 1);
    s.wait_pg_i64("SELECT count(*) FROM purchases", &[], 1);
    let mut pg = s.pg();
    let row = pg
        .query_one("SELECT sale_id, item_id, user_id FROM purchases", &[])
        .expect("purchase row");
    let got: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(got, (sale.id, item, *winner));
    // 40 checkouts recorded, all accepted.
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], BUYERS as i64);
    assert_eq!(
        s.pg_i64("SELECT count(*) FROM checkouts WHERE outcome = 'ok'", &[]),
        BUYERS as i64
    );
}

/// What one worker thread saw.
#[derive(Default)]
struct Seen {
    /// checkout requests answered 200/409/404 (well-formed parameters).
    recorded_checkouts: i64,
    /// (item, user) of every item a 200 purchase reported as bought.
    bought: Vec<(i64, i64)>,
    /// Items a checkout was refused with item_sold.
    refused_sold: Vec<i64>,
    purchases_200: usize,
    purchases_409: usize,
}

#[test]
fn hundreds_of_users_race_over_random_items() {
    const USERS: i64 = 300;
    const THREADS: i64 = 8;
    const ITEMS: u32 = 200;
    const LIMIT: usize = 5;
    const ROUNDS: usize = 3;
    let s = TestServer::start(Opts::default().items(ITEMS).limit(LIMIT as u32));
    let sale = s.active_sale();
    let start = Barrier::new(THREADS as usize);

    let seen: Vec<Seen> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, start, sale) = (&s, &start, &sale);
                scope.spawn(move || {
                    let mut rng = Rng::new(0xF1A5 + t as u64);
                    let mut conn = s.connect();
                    let mut seen = Seen::default();
                    // Each user belongs to one thread, so its requests are sequential.
                    let users: Vec<i64> = (1..=USERS).filter(|u| u % THREADS == t).collect();
                    let mut bought: HashMap<i64, usize> = HashMap::new();
                    start.wait();
                    for _ in 0..ROUNDS {
                        for &user in &users {
                            let mut basket: Vec<i64> = Vec::new();
                            let mut code: Option<String> = None;
                            let already = *bought.get(&user).unwrap_or(&0);
                            for _ in 0..rng.range(1, 4) {
                                let item = sale.item(rng.range(1, u64::from(ITEMS)) as u32);
                                let r = conn.checkout(user, item);
                                match (r.status, r.error_code()) {
                                    (200, _) => {
                                        seen.recorded_checkouts += 1;
                                        let c = r.str("code");
                                        if let Some(prev) = &code {
                                            assert_eq!(&c, prev, "user {user}: code changed within a checkout");
                                        }
                                        code = Some(c);
                                        assert_eq!(r.i64("item_id"), item);
                                        basket = r.sorted_ids("items");
                                        assert!(basket.contains(&item), "{r}");
                                        assert!(
                                            already + basket.len() <= LIMIT,
                                            "user {user}: bought {already} + checkout {basket:?} passes the limit: {r}"
                                        );
                                    }
                                    (409, Some(e)) if e == "item_sold" => {
                                        seen.recorded_checkouts += 1;
                                        seen.refused_sold.push(item);
                                    }
                                    (409, Some(e)) if e == "limit_reached" => {
                                        seen.recorded_checkouts += 1;
                                        assert!(
                                            !basket.contains(&item) && already + basket.len() == LIMIT,
                                            "user {user}: limit_reached with bought {already}, checkout {basket:?}, item {item}"
                                        );
                                    }
                                    _ => panic!("user {user} checkout {item}: unexpected {r}"),
                                }
                            }
                            let Some(code) = code else { continue };
                            let p = conn.purchase(&code);
                            let purchased = p.sorted_ids("purchased");
                            let unavailable = p.sorted_ids("unavailable");
                            assert_eq!(p.i64("user_id"), user, "{p}");
                            assert_eq!(p.i64("sale_id"), sale.id, "{p}");
                            let mut all: Vec<i64> = purchased.iter().chain(&unavailable).copied().collect();
                            all.sort_unstable();
                            assert_eq!(all, basket, "user {user}: purchase must account for every item of the checkout: {p}");
                            match p.status {
                                200 => {
                                    assert!(!purchased.is_empty(), "{p}");
                                    seen.purchases_200 += 1;
                                }
                                409 => {
                                    p.assert_error(409, "nothing_purchased");
                                    assert!(purchased.is_empty(), "{p}");
                                    seen.purchases_409 += 1;
                                }
                                _ => panic!("user {user} purchase: unexpected {p}"),
                            }
                            *bought.entry(user).or_default() += purchased.len();
                            assert!(bought[&user] <= LIMIT, "user {user} passed the limit: {p}");
                            seen.bought.extend(purchased.iter().map(|&i| (i, user)));
                        }
                    }
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });

    // No item in two purchase lists; no user past the limit.
    let mut owner: HashMap<i64, i64> = HashMap::new();
    let mut per_user: HashMap<i64, usize> = HashMap::new();
    for (item, user) in seen.iter().flat_map(|s| s.bought.iter().copied()) {
        if let Some(first) = owner.insert(item, user) {
            panic!("item {item} sold twice: to users {first} and {user}");
        }
        *per_user.entry(user).or_default() += 1;
    }
    assert!(
        per_user.values().all(|&n| n <= LIMIT),
        "a user passed the limit: {per_user:?}"
    );
    for item in seen.iter().flat_map(|s| s.refused_sold.iter()) {
        assert!(
            owner.contains_key(item),
            "checkout said item {item} is sold, but no purchase bought it"
        );
    }
    let sold = owner.len() as i64;
    let checkouts: i64 = seen.iter().map(|s| s.recorded_checkouts).sum();
    let p200: usize = seen.iter().map(|s| s.purchases_200).sum();
    let p409: usize = seen.iter().map(|s| s.purchases_409).sum();
    eprintln!("sold {sold} items; {checkouts} checkouts; purchases {p200} × 200, {p409} × 409");
    assert!(sold > 0 && p200 > 0, "the race sold nothing");

    assert_eq!(
        s.active_sale().items_sold,
        sold,
        "items_sold of /sales/active"
    );

    // Postgres records exactly the acknowledged purchases.
    s.wait_pg_i64("SELECT count(*) FROM purchases", &[], sold);
    let mut pg = s.pg();
    let rows = pg
        .query("SELECT item_id, user_id, sale_id FROM purchases", &[])
        .expect("query purchases");
    let in_pg: BTreeSet<(i64, i64)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.get::<_, i64>(2), sale.id);
            (r.get(0), r.get(1))
        })
        .collect();
    let acked: BTreeSet<(i64, i64)> = owner.iter().map(|(&i, &u)| (i, u)).collect();
    assert_eq!(
        in_pg, acked,
        "Postgres purchases differ from the acknowledged ones"
    );

    // Every checkout attempt with well-formed parameters is recorded.
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], checkouts);
    s.wait_pg_i64("SELECT count(*) FROM users", &[], USERS);
}
