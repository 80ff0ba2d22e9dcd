//! The service on a Redis Cluster: two instances with one key prefix serve
//! one sale together, a race across both sells each item at most once and no
//! user past the limit, and the sale's slot moves to another master while
//! checkouts and purchases run (the `ASK` and `TRYAGAIN` paths during the
//! move, `MOVED` after it) with no error but 503s that a retry turns into an
//! answer. Postgres and `flashsale check` agree with Redis afterwards.
//!
//! The first two run on the shared local cluster (`TEST_REDIS_CLUSTER_URL`),
//! each server pair on a key prefix of its own; the migration changes slot
//! ownership, so it runs on a private cluster (`ClusterRig`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{ClusterRig, MigrationStep, shared_cluster_url};
use common::*;
use simd_json::prelude::*;

/// How long a request answered 503 is retried before the test fails: a 503
/// must turn into an answer (the slot settled, the sale reconciled on its
/// new master) well within this.
const RETRY_DEADLINE: Duration = Duration::from_secs(60);

/// `flashsale_redis_redirects_total{kind="<kind>"}` of a server.
fn redirects(s: &TestServer, kind: &str) -> u64 {
    s.metric(&format!(
        "flashsale_redis_redirects_total{{kind=\"{kind}\"}}"
    )) as u64
}

fn on_shared_cluster(items: u32, limit: u32) -> Opts {
    Opts::default()
        .items(items)
        .limit(limit)
        .on_cluster(&shared_cluster_url())
}

#[test]
fn two_instances_with_one_prefix_serve_one_sale() {
    let a = TestServer::start(on_shared_cluster(20, 5));
    let b = TestServer::start_sharing(&a);
    assert_eq!(a.key_prefix(), b.key_prefix());
    assert!(
        !a.key_prefix().is_empty(),
        "a server on a cluster has a prefix"
    );
    let sale = a.active_sale();
    assert_eq!(b.active_sale().id, sale.id, "both serve the same sale");

    // One checkout, built on both instances: one code.
    let r = a.checkout(7, sale.item(1));
    r.assert_status(200);
    let code = r.str("code");
    let r = b.checkout(7, sale.item(2));
    r.assert_status(200);
    assert_eq!(
        r.str("code"),
        code,
        "the second instance adds to the same checkout"
    );
    assert_eq!(
        r.sorted_ids("items"),
        vec![sale.item(1), sale.item(2)],
        "{r}"
    );

    // Bought on one, sold on both.
    let p = b.purchase(&code);
    p.assert_status(200);
    assert_eq!(
        p.sorted_ids("purchased"),
        vec![sale.item(1), sale.item(2)],
        "{p}"
    );
    let replay = a.purchase(&code);
    replay.assert_status(200);
    assert_eq!(replay.sorted_ids("purchased"), p.sorted_ids("purchased"));
    a.checkout(8, sale.item(1)).assert_error(409, "item_sold");
    b.checkout(8, sale.item(2)).assert_error(409, "item_sold");
    assert_eq!(a.active_sale().items_sold, 2);
    assert_eq!(b.active_sale().items_sold, 2);
    let listed = b.get(&format!("/sales/{}/items?limit=2", sale.id));
    listed.assert_status(200);
    let v = listed.json();
    let sold: Vec<Option<bool>> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i.get("sold").and_then(|x| x.as_bool()))
        .collect();
    assert_eq!(sold, vec![Some(true), Some(true)], "{listed}");

    a.wait_pg_i64("SELECT count(*) FROM purchases", &[], 2);
    a.assert_consistent(sale.id);
}

/// What the shoppers saw.
#[derive(Default)]
struct Tally {
    /// (item, user) of every item a 200 purchase reported as bought.
    bought: Vec<(i64, i64)>,
    checkouts: usize,
    purchases: usize,
    /// Requests answered 503 (each retried until it got an answer), by code.
    unavailable: BTreeMap<String, usize>,
}

/// Counts of the shoppers together, read while they run.
#[derive(Default)]
struct Progress {
    /// Requests that got their final answer (not a 503).
    answered: AtomicUsize,
    /// Every HTTP response, 503s included.
    responses: AtomicUsize,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.bought.extend(other.bought);
        self.checkouts += other.checkouts;
        self.purchases += other.purchases;
        for (code, n) in other.unavailable {
            *self.unavailable.entry(code).or_default() += n;
        }
    }
}

/// One shopper's connections to the instances; each request goes to the
/// next instance in turn.
struct Shopper {
    addrs: Vec<SocketAddr>,
    conns: Vec<Option<Conn>>,
    turn: usize,
}

impl Shopper {
    fn new(addrs: Vec<SocketAddr>, first: usize) -> Shopper {
        let conns = addrs.iter().map(|_| None).collect();
        Shopper {
            addrs,
            conns,
            turn: first,
        }
    }

    /// POSTs `target`, retrying while the answer is 503 (or the connection
    /// broke before an answer: checkouts and purchases are idempotent), on
    /// the next instance each time. Fails the test on any other 5xx, or
    /// when no answer comes within `RETRY_DEADLINE`.
    fn post(&mut self, target: &str, tally: &mut Tally, progress: &Progress) -> Response {
        let deadline = Instant::now() + RETRY_DEADLINE;
        let mut last = String::new();
        while Instant::now() < deadline {
            let i = self.turn % self.addrs.len();
            self.turn += 1;
            let conn = match &mut self.conns[i] {
                Some(c) => c,
                slot => match Conn::try_connect(self.addrs[i]) {
                    Ok(c) => slot.insert(c),
                    Err(e) => {
                        last = format!("connect {}: {e}", self.addrs[i]);
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let answer = conn.try_request("POST", target, &[], b"");
            if answer.is_ok() {
                progress.responses.fetch_add(1, Ordering::Relaxed);
            }
            match answer {
                Ok(r) if r.status == 503 => {
                    *tally
                        .unavailable
                        .entry(r.error_code().unwrap_or_default())
                        .or_default() += 1;
                    last = r.to_string();
                    if r.closes_connection() {
                        self.conns[i] = None;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(r) => {
                    assert!(r.status < 500, "POST {target}: {r}");
                    progress.answered.fetch_add(1, Ordering::Relaxed);
                    if r.closes_connection() {
                        self.conns[i] = None;
                    }
                    return r;
                }
                Err(e) => {
                    last = format!("POST {target}: {e}");
                    self.conns[i] = None;
                }
            }
        }
        panic!("POST {target}: no answer but 503 within {RETRY_DEADLINE:?}; last {last}");
    }
}

/// Users `users` (one thread each owns them, so each user's requests are
/// sequential) check out 1 to 3 random items and buy them, round after
/// round, until `rounds` are done or `stop` is set; every answer must be
/// one a user can get in a sale that is on.
#[allow(clippy::too_many_arguments)]
fn shop(
    addrs: Vec<SocketAddr>,
    sale: &Sale,
    items: u32,
    limit: usize,
    users: &[i64],
    seed: u64,
    rounds: Option<usize>,
    stop: &AtomicBool,
    progress: &Progress,
) -> Tally {
    let mut rng = Rng::new(seed);
    let mut shopper = Shopper::new(addrs, seed as usize);
    let mut tally = Tally::default();
    let mut bought: HashMap<i64, usize> = HashMap::new();
    let mut round = 0;
    while rounds.is_none_or(|n| round < n) && !stop.load(Ordering::Relaxed) {
        round += 1;
        for &user in users {
            let already = *bought.get(&user).unwrap_or(&0);
            let mut code: Option<String> = None;
            let mut basket: Vec<i64> = Vec::new();
            for _ in 0..rng.range(1, 3) {
                let item = sale.item(rng.range(1, u64::from(items)) as u32);
                let r = shopper.post(&checkout_path(user, item), &mut tally, progress);
                tally.checkouts += 1;
                match (r.status, r.error_code().as_deref()) {
                    (200, _) => {
                        let c = r.str("code");
                        if let Some(prev) = &code {
                            assert_eq!(&c, prev, "user {user}: code changed within a checkout");
                        }
                        code = Some(c);
                        basket = r.sorted_ids("items");
                        assert!(
                            already + basket.len() <= limit,
                            "user {user}: bought {already} + checkout {basket:?} passes the limit: {r}"
                        );
                    }
                    (409, Some("item_sold")) | (409, Some("limit_reached")) => {}
                    _ => panic!("user {user} checkout {item}: unexpected {r}"),
                }
            }
            let Some(code) = code else { continue };
            let p = shopper.post(&purchase_path(&code), &mut tally, progress);
            tally.purchases += 1;
            match (p.status, p.error_code().as_deref()) {
                (200, _) => {
                    assert_eq!(p.i64("user_id"), user, "{p}");
                    assert_eq!(p.i64("sale_id"), sale.id, "{p}");
                    let purchased = p.sorted_ids("purchased");
                    assert!(!purchased.is_empty(), "{p}");
                    for &item in &purchased {
                        assert!(
                            basket.contains(&item),
                            "bought {item} not in {basket:?}: {p}"
                        );
                        tally.bought.push((item, user));
                    }
                    let total = bought.entry(user).or_default();
                    *total += purchased.len();
                    assert!(*total <= limit, "user {user} bought {total} > {limit}: {p}");
                }
                (409, Some("nothing_purchased")) => {}
                _ => panic!("user {user} purchase {code}: unexpected {p}"),
            }
        }
    }
    tally
}

/// Each item bought at most once, no user past the limit, the sale's count,
/// Postgres's purchases and `flashsale check` all agree with what was bought.
fn assert_sold_exactly(s: &TestServer, sale_id: i64, limit: usize, tally: &Tally) {
    let mut buyers: BTreeMap<i64, i64> = BTreeMap::new();
    let mut per_user: BTreeMap<i64, usize> = BTreeMap::new();
    for &(item, user) in &tally.bought {
        if let Some(first) = buyers.insert(item, user) {
            panic!("item {item} bought twice: by user {first} and by user {user}");
        }
        *per_user.entry(user).or_default() += 1;
    }
    for (user, n) in &per_user {
        assert!(*n <= limit, "user {user} bought {n} items, limit {limit}");
    }
    assert_eq!(
        s.active_sale().items_sold,
        buyers.len() as i64,
        "the sale's count of sold items"
    );
    s.wait_pg_i64("SELECT count(*) FROM purchases", &[], buyers.len() as i64);
    let rows: BTreeMap<i64, i64> = s
        .pg()
        .query(
            "SELECT item_id, user_id FROM purchases WHERE sale_id = $1",
            &[&sale_id],
        )
        .expect("purchases")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows, buyers, "Postgres purchases against the 200 answers");
    s.assert_consistent(sale_id);
}

#[test]
fn a_race_across_two_instances_sells_each_item_once() {
    const USERS: i64 = 240;
    const THREADS: i64 = 8;
    const ITEMS: u32 = 150;
    const LIMIT: usize = 3;
    let a = TestServer::start(on_shared_cluster(ITEMS, LIMIT as u32));
    let b = TestServer::start_sharing(&a);
    let sale = a.active_sale();
    assert_eq!(b.active_sale().id, sale.id);
    let start = Barrier::new(THREADS as usize);
    let (stop, progress) = (AtomicBool::new(false), Progress::default());

    let tally = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (start, sale, stop, progress) = (&start, &sale, &stop, &progress);
                let addrs = vec![a.addr, b.addr];
                scope.spawn(move || {
                    let users: Vec<i64> = (1..=USERS).filter(|u| u % THREADS == t).collect();
                    start.wait();
                    shop(
                        addrs,
                        sale,
                        ITEMS,
                        LIMIT,
                        &users,
                        0xC1u64 + t as u64,
                        Some(3),
                        stop,
                        progress,
                    )
                })
            })
            .collect();
        let mut tally = Tally::default();
        for h in handles {
            tally.merge(h.join().expect("a shopper failed"));
        }
        tally
    });
    eprintln!(
        "[cluster] race: {} checkouts, {} purchases, {} items bought, 503s {:?}",
        tally.checkouts,
        tally.purchases,
        tally.bought.len(),
        tally.unavailable
    );
    assert!(
        tally.bought.len() > ITEMS as usize / 2,
        "the crowd bought too little to race: {}",
        tally.bought.len()
    );
    assert_sold_exactly(&a, sale.id, LIMIT, &tally);
}

#[test]
fn the_sales_slot_moves_to_another_master_while_both_instances_sell() {
    const USERS: i64 = 120;
    const THREADS: i64 = 4;
    const ITEMS: u32 = 400;
    const LIMIT: usize = 3;
    let rig = ClusterRig::start();
    let a = TestServer::start(
        Opts::default()
            .items(ITEMS)
            .limit(LIMIT as u32)
            .on_cluster(&rig.seed_url()),
    );
    let b = TestServer::start_sharing(&a);
    let sale = a.active_sale();
    let slot = rig.sale_slot(sale.id);
    let from = rig.master_of_slot(slot);
    let to = rig.another_master(&from);
    let (stop, progress) = (AtomicBool::new(false), Progress::default());
    // Responses (503s included) when the move started and when it ended.
    let during = Mutex::new((usize::MAX, 0usize));

    let tally = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (sale, stop, progress) = (&sale, &stop, &progress);
                let addrs = vec![a.addr, b.addr];
                scope.spawn(move || {
                    let users: Vec<i64> = (1..=USERS).filter(|u| u % THREADS == t).collect();
                    shop(
                        addrs,
                        sale,
                        ITEMS,
                        LIMIT,
                        &users,
                        0x5107 + t as u64,
                        None,
                        stop,
                        progress,
                    )
                })
            })
            .collect();
        // Some sales before the move.
        eventually(
            Duration::from_secs(30),
            "100 requests before the move",
            || progress.answered.load(Ordering::Relaxed) >= 100,
        );
        // The move in small steps, with requests running between them.
        let mut steps = 0;
        rig.migrate_slot_with(slot, &to, 3, |_: &MigrationStep| {
            steps += 1;
            let seen = progress.responses.load(Ordering::Relaxed);
            let mut d = during.lock().unwrap();
            d.0 = d.0.min(seen);
            d.1 = seen;
            drop(d);
            std::thread::sleep(Duration::from_millis(200));
        });
        eprintln!("[cluster] slot {slot} moved in {steps} steps");
        // And sales after it (MOVED: the servers' maps still say `from`).
        let after = progress.answered.load(Ordering::Relaxed);
        eventually(
            Duration::from_secs(90),
            "100 requests answered after the move",
            || progress.answered.load(Ordering::Relaxed) >= after + 100,
        );
        stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for h in handles {
            tally.merge(h.join().expect("a shopper failed"));
        }
        tally
    });
    let (first, last) = *during.lock().unwrap();
    eprintln!(
        "[cluster] migration: {} checkouts, {} purchases, {} items bought, {} responses during the move, 503s {:?}",
        tally.checkouts,
        tally.purchases,
        tally.bought.len(),
        last - first,
        tally.unavailable
    );
    assert!(
        last > first,
        "no request reached the servers while the slot was moving"
    );
    let followed: BTreeMap<&str, u64> = ["moved", "ask", "retry"]
        .into_iter()
        .map(|kind| (kind, redirects(&a, kind) + redirects(&b, kind)))
        .collect();
    // The servers followed the move through the cluster's redirects, not
    // only through their periodic map refresh: ASK for keys already moved
    // during it, MOVED from the old master after it.
    eprintln!("[cluster] redirects the servers followed: {followed:?}");
    assert!(
        followed["ask"] > 0,
        "no ASK followed during the move: {followed:?}"
    );
    assert!(
        followed["moved"] > 0,
        "no MOVED followed after the move: {followed:?}"
    );
    assert_eq!(rig.master_of_slot(slot), to);
    assert_eq!(
        rig.keys_in_slot(&from, slot),
        0,
        "sale keys left on the old master"
    );
    assert!(
        rig.keys_in_slot(&to, slot) > 0,
        "the sale's keys on the new master"
    );
    assert_sold_exactly(&a, sale.id, LIMIT, &tally);
}

/// Whether the node at `url` owns the slot of `key` (a key it does not own
/// is answered with MOVED).
fn owns_key(url: &str, key: &str) -> bool {
    let mut con = common::cluster::plain_connection(url).expect("connect to a master");
    redis::cmd("GET")
        .arg(key)
        .query::<Option<String>>(&mut con)
        .is_ok()
}

#[test]
fn a_server_whose_only_seed_is_silent_at_start_serves_the_cluster_once_it_answers() {
    // The seed: a master that does not own the first sale's slot, behind a
    // proxy that holds every reply back at first, so that the server cannot
    // learn at start whether it is a cluster (and taking it for a single
    // node would send the sale's scripts to a master that refuses them).
    let seed_url = shared_cluster_url();
    let master = common::cluster::master_urls(&seed_url)
        .into_iter()
        .find(|url| !owns_key(url, "{sale:1}:meta"))
        .expect("a master that does not own sale 1's slot");
    let port: u16 = master
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a master's port");
    let proxy = common::proxy::ReplyHoldingProxy::start(port);
    proxy.hold_replies();
    let silent_for = Duration::from_secs(8);
    let server = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(silent_for);
            proxy.release_replies();
        });
        TestServer::start(on_shared_cluster(20, 5).env("REDIS_URL", &proxy.url()))
    });
    let sale = server.active_sale();
    assert_eq!(
        sale.id, 1,
        "a fresh database's first sale (its slot decided the seed)"
    );
    let r = server.checkout(3, sale.item(1));
    r.assert_status(200);
    let r = server.purchase(&r.str("code"));
    r.assert_status(200);
    server.assert_consistent(sale.id);
}
