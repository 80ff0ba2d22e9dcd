//! Fault injection: kill -9 under load, Postgres down, Postgres crashed,
//! Redis down and back, Redis restarted from its AOF mid-sale, graceful
//! SIGTERM/SIGINT.
//!
//! Every test runs on its own private Redis and Postgres (tests/common/
//! services.rs), never on the shared ones, and compares what the clients were
//! answered with what Postgres and Redis hold afterwards. Each ends with the
//! consistency checker, `flashsale check --sale <id>`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::services::*;
use common::*;
use simd_json::prelude::*;

// ---------------------------------------------------------------------------
// load: keep-alive clients doing checkout → purchase, recording every answer
// ---------------------------------------------------------------------------

/// One answer of the server.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    error: Option<String>,
    retry_after: Option<String>,
    /// Send to last byte of the response.
    took: Duration,
    /// Purchase answers: the purchased ids and the user.
    purchased: Vec<i64>,
    user: Option<i64>,
    /// Checkout answers: the code.
    code: Option<String>,
}

/// A request and what came of it (`None`: sent, but no answer came back).
#[derive(Debug, Clone)]
struct Attempt {
    user: i64,
    /// Checkouts: the item; purchases: 0.
    item: i64,
    /// Purchases: the code.
    code: Option<String>,
    answer: Option<Answer>,
}

#[derive(Default)]
struct Stats {
    checkouts_ok: AtomicU64,
    purchases_ok: AtomicU64,
    answered_503: AtomicU64,
    unanswered: AtomicU64,
    /// Set by `Load::pause`: workers stop sending between two requests.
    pause: AtomicBool,
    /// Workers that saw `pause` and sent nothing since.
    paused_workers: AtomicU64,
}

struct LoadConfig {
    workers: usize,
    /// Users per worker (disjoint between workers).
    users: i64,
    items: u32,
    /// Pause between two checkout → purchase rounds of one worker.
    pace: Duration,
    /// After `stop`, how long workers retry purchases that got no answer.
    settle: Duration,
}

struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    handles: Vec<JoinHandle<Vec<Attempt>>>,
}

/// What all workers saw.
struct Seen {
    checkouts: Vec<Attempt>,
    purchases: Vec<Attempt>,
}

impl Load {
    fn start(addr: SocketAddr, sale_id: i64, cfg: LoadConfig) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let handles = (0..cfg.workers)
            .map(|w| {
                let (stop, stats) = (stop.clone(), stats.clone());
                let first_user = 1 + w as i64 * cfg.users;
                let users = first_user..first_user + cfg.users;
                let (items, pace, settle) = (cfg.items, cfg.pace, cfg.settle);
                std::thread::Builder::new()
                    .name(format!("load-{w}"))
                    .spawn(move || {
                        let mut worker = Worker {
                            addr,
                            conn: None,
                            stats,
                            log: Vec::new(),
                        };
                        worker.run(sale_id, users, items, pace, settle, &stop, w as u64);
                        worker.log
                    })
                    .expect("spawn load worker")
            })
            .collect();
        Load {
            stop,
            stats,
            handles,
        }
    }

    fn checkouts_ok(&self) -> u64 {
        self.stats.checkouts_ok.load(Ordering::Relaxed)
    }

    fn purchases_ok(&self) -> u64 {
        self.stats.purchases_ok.load(Ordering::Relaxed)
    }

    /// Stops every worker between two requests and waits until none has a
    /// request in flight.
    fn pause(&self) {
        self.stats.pause.store(true, Ordering::SeqCst);
        let workers = self.handles.len() as u64;
        eventually(Duration::from_secs(20), "load workers paused", || {
            self.stats.paused_workers.load(Ordering::SeqCst) == workers
        });
    }

    fn resume(&self) {
        self.stats.pause.store(false, Ordering::SeqCst);
    }

    /// Waits until `more` purchases beyond now were answered 200.
    fn wait_purchases(&self, more: u64, timeout: Duration, what: &str) {
        let target = self.purchases_ok() + more;
        eventually(timeout, what, || self.purchases_ok() >= target);
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in self.handles {
            all.extend(h.join().expect("a load worker panicked"));
        }
        let (purchases, checkouts) = all.into_iter().partition(|a| a.code.is_some());
        Seen {
            checkouts,
            purchases,
        }
    }
}

struct Worker {
    addr: SocketAddr,
    conn: Option<Conn>,
    stats: Arc<Stats>,
    log: Vec<Attempt>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        sale_id: i64,
        users: std::ops::Range<i64>,
        items: u32,
        pace: Duration,
        settle: Duration,
        stop: &AtomicBool,
        seed: u64,
    ) {
        let mut rng = Rng::new(0xFA17 + seed);
        // Codes whose purchase got no answer or a 503: retried later (the
        // purchase is idempotent), so that most outcomes become known.
        let mut pending: Vec<(i64, String)> = Vec::new();
        let span = (users.end - users.start) as u64;
        while !stop.load(Ordering::Relaxed) {
            if self.stats.pause.load(Ordering::SeqCst) {
                self.stats.paused_workers.fetch_add(1, Ordering::SeqCst);
                while self.stats.pause.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                self.stats.paused_workers.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            if let Some((user, code)) = pending.pop()
                && !self.purchase(user, &code)
            {
                pending.insert(0, (user, code));
            }
            let user = users.start + rng.range(0, span - 1) as i64;
            let mut code = None;
            for _ in 0..rng.range(1, 3) {
                let item = item_id(sale_id, rng.range(1, u64::from(items)) as u32);
                if let Some(c) = self.checkout(user, item) {
                    code = Some(c);
                }
            }
            if let Some(code) = code
                && !self.purchase(user, &code)
            {
                pending.push((user, code));
            }
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
        let deadline = Instant::now() + settle;
        while let Some((user, code)) = pending.pop() {
            if Instant::now() >= deadline {
                break;
            }
            if !self.purchase(user, &code) {
                pending.insert(0, (user, code));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Sends one POST; None when it was not sent (no connection).
    fn send(&mut self, target: &str) -> Option<Option<Answer>> {
        if self.conn.is_none() {
            match Conn::try_connect(self.addr) {
                Ok(c) => self.conn = Some(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    return None;
                }
            }
        }
        let conn = self.conn.as_mut().expect("connected");
        let started = Instant::now();
        match conn.try_request("POST", target, &[], b"") {
            Ok(r) => {
                let took = started.elapsed();
                if r.closes_connection() {
                    self.conn = None;
                }
                let json = r.is_json().then(|| r.json());
                let get_str = |k: &str| {
                    json.as_ref()
                        .and_then(|v| v.get(k))
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                };
                let purchased = if r.status == 200 && r.has_field("purchased") {
                    r.ids("purchased")
                } else {
                    Vec::new()
                };
                let user = json
                    .as_ref()
                    .and_then(|v| v.get("user_id"))
                    .and_then(|v| v.as_i64());
                if r.status == 503 {
                    self.stats.answered_503.fetch_add(1, Ordering::Relaxed);
                }
                Some(Some(Answer {
                    status: r.status,
                    error: r.error_code(),
                    retry_after: r.header("retry-after").map(str::to_string),
                    took,
                    purchased,
                    user,
                    code: get_str("code"),
                }))
            }
            Err(_) => {
                self.conn = None;
                self.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                Some(None)
            }
        }
    }

    /// A checkout; returns the code when it was answered 200.
    fn checkout(&mut self, user: i64, item: i64) -> Option<String> {
        let answer = self.send(&checkout_path(user, item))?;
        let code = answer
            .as_ref()
            .filter(|a| a.status == 200)
            .and_then(|a| a.code.clone());
        if code.is_some() {
            self.stats.checkouts_ok.fetch_add(1, Ordering::Relaxed);
        }
        self.log.push(Attempt {
            user,
            item,
            code: None,
            answer,
        });
        code
    }

    /// A purchase; false when its outcome is still unknown (not sent, no
    /// answer, or 503).
    fn purchase(&mut self, user: i64, code: &str) -> bool {
        let Some(answer) = self.send(&purchase_path(code)) else {
            return false;
        };
        let known = answer.as_ref().is_some_and(|a| a.status != 503);
        if answer.as_ref().is_some_and(|a| a.status == 200) {
            self.stats.purchases_ok.fetch_add(1, Ordering::Relaxed);
        }
        self.log.push(Attempt {
            user,
            item: 0,
            code: Some(code.to_string()),
            answer,
        });
        known
    }
}

// ---------------------------------------------------------------------------
// what the clients were answered vs. what Postgres and Redis hold
// ---------------------------------------------------------------------------

/// The outcome of each code as the clients know it.
struct Outcomes {
    /// Code → (user, purchased ids) of its first 200/409 answer.
    known: HashMap<String, (i64, Vec<i64>)>,
    /// Codes whose purchase outcome the clients never learned.
    unknown: BTreeSet<String>,
    /// Item → code, for every item a 200 answer reported as bought.
    bought: BTreeMap<i64, String>,
}

/// Checks the clients' answers among themselves: replays agree, no item was
/// answered as bought twice, no user was answered past `limit`.
fn outcomes(seen: &Seen, limit: usize) -> Outcomes {
    let mut known: HashMap<String, (i64, Vec<i64>)> = HashMap::new();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    for p in &seen.purchases {
        let code = p.code.clone().expect("purchase code");
        tried.insert(code.clone());
        let Some(a) = &p.answer else { continue };
        match a.status {
            200 | 409 => {
                assert!(
                    a.status == 200 || a.error.as_deref() == Some("nothing_purchased"),
                    "purchase {code}: 409 {:?}",
                    a.error
                );
                let got = (a.user.unwrap_or(p.user), a.purchased.clone());
                assert_eq!(got.0, p.user, "purchase {code} answered another user");
                if let Some(first) = known.get(&code) {
                    assert_eq!(first, &got, "purchase {code}: a replay changed the outcome");
                } else {
                    known.insert(code, got);
                }
            }
            503 => {}
            s => panic!("purchase {code}: unexpected status {s} ({:?})", a.error),
        }
    }
    let mut bought = BTreeMap::new();
    let mut per_user: HashMap<i64, usize> = HashMap::new();
    for (code, (user, items)) in &known {
        *per_user.entry(*user).or_default() += items.len();
        for &item in items {
            if let Some(other) = bought.insert(item, code.clone()) {
                panic!("item {item} was answered as bought by {other} and by {code}");
            }
        }
    }
    for (user, n) in &per_user {
        assert!(
            *n <= limit,
            "user {user} was answered {n} items, limit {limit}"
        );
    }
    let unknown = tried
        .into_iter()
        .filter(|c| !known.contains_key(c))
        .collect();
    Outcomes {
        known,
        unknown,
        bought,
    }
}

/// Postgres `purchases` of the sale: item → (user, code).
fn pg_purchases(pg: &mut postgres::Client, sale_id: i64) -> BTreeMap<i64, (i64, String)> {
    pg.query(
        "SELECT item_id, user_id, code FROM purchases WHERE sale_id = $1",
        &[&sale_id],
    )
    .expect("select purchases")
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect()
}

/// Item ids whose bit is set in the sale's Redis sold bitmap.
fn redis_sold(redis: &mut redis::Connection, sale_id: i64, items: u32) -> BTreeSet<i64> {
    let bitmap: Vec<u8> = redis::cmd("GET")
        .arg(keys::sold(sale_id))
        .query::<Option<Vec<u8>>>(redis)
        .expect("GET sold bitmap")
        .unwrap_or_default();
    (1..=items)
        .filter(|n| {
            let i = (*n - 1) as usize;
            bitmap
                .get(i / 8)
                .is_some_and(|byte| byte & (0x80 >> (i % 8)) != 0)
        })
        .map(|n| item_id(sale_id, n))
        .collect()
}

fn outbox_len(redis: &mut redis::Connection, sale_id: i64) -> i64 {
    redis::cmd("XLEN")
        .arg(keys::outbox(sale_id))
        .query(redis)
        .expect("XLEN outbox")
}

/// Waits until Postgres holds exactly what Redis sold (outbox drained), then
/// checks every purchase against what the clients were answered and the
/// per-user limit in Postgres and in Redis.
fn assert_purchases_recorded(rig: &Rig, sale_id: i64, items: u32, limit: usize, out: &Outcomes) {
    let mut pg = rig.pg.client();
    let mut redis = rig.redis.connect();
    let mut last = String::new();
    let settled = wait_until(Duration::from_secs(20), || {
        let sold = redis_sold(&mut redis, sale_id, items);
        let rows = pg_purchases(&mut pg, sale_id);
        let pending = outbox_len(&mut redis, sale_id);
        last = format!(
            "redis sold {}, postgres {} rows, outbox {pending}",
            sold.len(),
            rows.len()
        );
        pending == 0 && rows.keys().copied().collect::<BTreeSet<_>>() == sold
    });
    assert!(
        settled,
        "Postgres purchases never matched Redis's sold bitmap: {last}"
    );
    let rows = pg_purchases(&mut pg, sale_id);

    // Every item answered as bought is in Postgres, exactly once (primary
    // key), for that user and code.
    for (item, code) in &out.bought {
        let (user, _) = &out.known[code];
        match rows.get(item) {
            Some((u, c)) => assert!(
                u == user && c == code,
                "item {item}: answered bought by user {user} with {code}, Postgres has user {u} code {c}"
            ),
            None => panic!("item {item} was answered as bought ({code}) but is not in Postgres"),
        }
    }
    // Whatever else Postgres holds was bought by a purchase whose answer the
    // client never got.
    for (item, (user, code)) in &rows {
        if out.bought.contains_key(item) {
            continue;
        }
        assert!(
            out.unknown.contains(code),
            "Postgres has item {item} bought by user {user} with {code}, but that purchase was answered {:?}",
            out.known.get(code)
        );
    }
    // Per-user limit, in Postgres and in Redis (which agree).
    let mut per_user: BTreeMap<i64, i64> = BTreeMap::new();
    for (user, _) in rows.values() {
        *per_user.entry(*user).or_default() += 1;
    }
    for (user, n) in &per_user {
        assert!(
            *n <= limit as i64,
            "user {user} has {n} purchases in Postgres, limit {limit}"
        );
        let entry: Option<String> = redis::cmd("HGET")
            .arg(keys::users(sale_id))
            .arg(*user)
            .query(&mut redis)
            .expect("HGET users");
        let bought = keys::bought(entry.as_deref());
        assert_eq!(
            bought,
            Some(*n),
            "user {user}: Redis counts {bought:?} bought, Postgres has {n}"
        );
    }
    let meta_sold: Option<i64> = redis::cmd("HGET")
        .arg(keys::meta(sale_id))
        .arg("sold")
        .query(&mut redis)
        .expect("HGET meta sold");
    assert_eq!(
        meta_sold.unwrap_or(0),
        rows.len() as i64,
        "Redis meta counts {meta_sold:?} sold, Postgres has {} purchases",
        rows.len()
    );
}

/// The outcome Postgres records for a checkout answer, if it records one.
fn recorded_outcome(a: &Answer) -> Option<&'static str> {
    match (a.status, a.error.as_deref()) {
        (200, _) => Some("ok"),
        (409, Some("item_sold")) => Some("item_sold"),
        (409, Some("limit_reached")) => Some("limit_reached"),
        (404, Some("item_not_found")) => Some("item_not_found"),
        (503, _) => None,
        (s, e) => panic!("checkout answered {s} {e:?}"),
    }
}

/// Every checkout answered 200/409/404 is in `checkouts` (same user, item,
/// outcome, and code for 200); anything more is an attempt whose answer was
/// lost. Polls until the counts line up.
///
/// `lost_unprocessed`: requests that got no answer must not have been
/// processed either (a graceful stop answers what it processes).
fn assert_checkouts_recorded(rig: &Rig, sale_id: i64, seen: &Seen, lost_unprocessed: bool) {
    type Key = (i64, i64, String);
    let mut answered: BTreeMap<Key, i64> = BTreeMap::new();
    let mut codes: BTreeMap<(i64, i64), BTreeSet<String>> = BTreeMap::new();
    let mut lost: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for c in &seen.checkouts {
        match &c.answer {
            Some(a) => {
                if let Some(outcome) = recorded_outcome(a) {
                    *answered
                        .entry((c.user, c.item, outcome.to_string()))
                        .or_default() += 1;
                    if let Some(code) = &a.code {
                        codes
                            .entry((c.user, c.item))
                            .or_default()
                            .insert(code.clone());
                    }
                } else if a.status == 503 && a.error.as_deref() == Some("redis_unavailable") {
                    // A timed-out script may still have run in Redis; the
                    // record is then written or not.
                    *lost.entry((c.user, c.item)).or_default() += 1;
                }
            }
            None => *lost.entry((c.user, c.item)).or_default() += 1,
        }
    }
    let expected: i64 = answered.values().sum();
    let max_extra: i64 = if lost_unprocessed {
        0
    } else {
        lost.values().sum()
    };
    let mut pg = rig.pg.client();
    let mut last = 0;
    let ok = wait_until(Duration::from_secs(20), || {
        match pg.query_one(
            "SELECT count(*) FROM checkouts WHERE sale_id = $1",
            &[&sale_id],
        ) {
            Ok(row) => {
                last = row.get(0);
                last >= expected
            }
            Err(_) => false,
        }
    });
    assert!(
        ok,
        "Postgres has {last} checkouts, clients were answered {expected} recorded ones"
    );
    let rows = pg
        .query(
            "SELECT user_id, item_id, outcome, code FROM checkouts WHERE sale_id = $1",
            &[&sale_id],
        )
        .expect("select checkouts");
    let mut have: BTreeMap<Key, i64> = BTreeMap::new();
    let mut have_codes: BTreeMap<(i64, i64), BTreeSet<String>> = BTreeMap::new();
    for r in &rows {
        let (user, item, outcome): (i64, i64, String) = (r.get(0), r.get(1), r.get(2));
        let code: Option<String> = r.get(3);
        *have.entry((user, item, outcome.clone())).or_default() += 1;
        if let (Some(code), "ok") = (code, outcome.as_str()) {
            have_codes.entry((user, item)).or_default().insert(code);
        }
    }
    for (key, n) in &answered {
        let got = have.get(key).copied().unwrap_or(0);
        assert!(
            got >= *n,
            "checkout {key:?} was answered {n} time(s), Postgres has {got}"
        );
    }
    let mut extra = 0;
    for (key, n) in &have {
        let want = answered.get(key).copied().unwrap_or(0);
        if *n > want {
            assert!(
                lost.contains_key(&(key.0, key.1)) && !lost_unprocessed,
                "Postgres has {n} checkout(s) {key:?}, clients were answered {want}"
            );
            extra += n - want;
        }
    }
    assert!(
        extra <= max_extra,
        "Postgres has {extra} checkouts more than answered, only {max_extra} answers were lost"
    );
    for (key, want) in &codes {
        let got = have_codes.get(key).cloned().unwrap_or_default();
        assert!(
            want.is_subset(&got),
            "checkout {key:?}: answered codes {want:?}, Postgres has {got:?}"
        );
    }
}

/// Every user seen in `checkouts` gets its `users` row (the writer commits
/// users apart from their checkouts, within a second or so, and repairs
/// what a killed writer held after the backlog's stale delay).
fn assert_users_of_checkouts_recorded(rig: &Rig) {
    let mut pg = rig.pg.client();
    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), || {
        let orphans = pg.query_one(
            "SELECT count(DISTINCT user_id) FROM checkouts c \
             WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = c.user_id)",
            &[],
        );
        last = orphans.map(|row| row.get::<_, i64>(0)).ok();
        last == Some(0)
    });
    assert!(ok, "users in checkouts without a users row: {last:?}");
}

/// What every load test checks last: each answered purchase and checkout is
/// recorded in Postgres (`lost_unprocessed`: see `assert_checkouts_recorded`),
/// and the checker finds Redis and Postgres consistent.
fn assert_all_recorded(
    rig: &Rig,
    sale_id: i64,
    items: u32,
    limit: usize,
    seen: &Seen,
    out: &Outcomes,
    lost_unprocessed: bool,
) {
    assert_purchases_recorded(rig, sale_id, items, limit, out);
    assert_checkouts_recorded(rig, sale_id, seen, lost_unprocessed);
    assert_users_of_checkouts_recorded(rig);
    rig.assert_consistent(sale_id);
}

fn health(addr: SocketAddr) -> Option<Response> {
    Conn::try_connect(addr)
        .and_then(|mut c| c.try_request("GET", "/health", &[], b""))
        .ok()
}

fn health_is(addr: SocketAddr, status: u16, service: &str, state: &str) -> bool {
    health(addr).is_some_and(|r| {
        r.status == status
            && r.is_json()
            && r.json().get(service).and_then(|v| v.as_str()) == Some(state)
    })
}

fn summary(seen: &Seen) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, list) in [("checkout", &seen.checkouts), ("purchase", &seen.purchases)] {
        for a in list.iter() {
            let key = match &a.answer {
                Some(a) => format!("{kind} {} {}", a.status, a.error.as_deref().unwrap_or("")),
                None => format!("{kind} no answer"),
            };
            *by.entry(key).or_default() += 1;
        }
    }
    format!("{by:?}")
}

// ---------------------------------------------------------------------------
// the tests
// ---------------------------------------------------------------------------

/// kill -9 under load, twice: once with the writer keeping up, once with
/// Postgres down so that the outbox holds undrained purchases at the kill.
/// After each restart every purchase answered 200 is in Postgres exactly
/// once and no item is sold twice, and every user of a checkout Postgres
/// kept has its users row (the killed writers' backlog repaired, after a
/// stale delay of 2 s here).
#[test]
fn kill9_under_load_loses_no_answered_purchase() {
    const ITEMS: u32 = 20_000;
    const LIMIT: u32 = 10;
    let mut rig =
        Rig::start(ServerConfig::new(ITEMS, LIMIT).env("FLASHSALE_USERS_BACKLOG_STALE_SECS", "2"));
    let addr = rig.addr();
    let sale = rig.server().active_sale();
    let load = Load::start(
        addr,
        sale.id,
        LoadConfig {
            workers: 6,
            users: 2000,
            items: ITEMS,
            pace: Duration::from_millis(2),
            settle: Duration::from_secs(5),
        },
    );
    load.wait_purchases(
        100,
        Duration::from_secs(20),
        "100 purchases before the kill",
    );

    // 1. The writer keeps up; kill in the middle of the load.
    rig.server_mut().kill9();
    rig.server = None;
    rig.start_server();
    load.wait_purchases(
        100,
        Duration::from_secs(20),
        "100 purchases after the restart",
    );

    // 2. Postgres down: purchases pile up in the outbox; kill; Postgres back; restart.
    rig.pg.stop();
    let mut redis = rig.redis.connect();
    eventually(
        Duration::from_secs(15),
        "undrained purchases in the outbox while Postgres is down",
        || outbox_len(&mut redis, sale.id) >= 20,
    );
    rig.server_mut().kill9();
    rig.server = None;
    let at_kill = outbox_len(&mut redis, sale.id);
    rig.pg.start_again();
    rig.start_server();
    load.wait_purchases(
        50,
        Duration::from_secs(20),
        "50 purchases after the second restart",
    );
    let seen = load.finish();
    eprintln!("outbox at the second kill: {at_kill}; {}", summary(&seen));

    let out = outcomes(&seen, LIMIT as usize);
    assert!(
        out.bought.len() >= 200,
        "too few sales to judge: {}",
        out.bought.len()
    );
    assert_purchases_recorded(&rig, sale.id, ITEMS, LIMIT as usize, &out);
    assert_users_of_checkouts_recorded(&rig);
    rig.assert_consistent(sale.id);
}

/// Postgres down for ~15 s mid-load: checkouts and purchases keep answering,
/// /health says postgres down, the writer retries, and when Postgres is back
/// every checkout and purchase the clients were answered is recorded.
#[test]
fn postgres_down_sales_go_on_and_nothing_is_lost() {
    const ITEMS: u32 = 40_000;
    const LIMIT: u32 = 10;
    let rig_config = ServerConfig::new(ITEMS, LIMIT);
    let mut rig = Rig::start(rig_config);
    let addr = rig.addr();
    let sale = rig.server().active_sale();
    let load = Load::start(
        addr,
        sale.id,
        LoadConfig {
            workers: 4,
            users: 3000,
            items: ITEMS,
            pace: Duration::from_millis(3),
            settle: Duration::from_secs(5),
        },
    );
    load.wait_purchases(50, Duration::from_secs(20), "purchases before the outage");
    let pg_errors_before = rig
        .server()
        .metric("flashsale_postgres_errors_total")
        .unwrap_or(0.0);

    rig.pg.stop();
    let outage = Instant::now();
    eventually(
        Duration::from_secs(10),
        "GET /health: 503 with \"postgres\":\"down\"",
        || health_is(addr, 503, "postgres", "down"),
    );
    let r = health(addr).expect("/health answers");
    assert_eq!(r.status, 503, "{r}");
    assert_eq!(r.str("redis"), "ok", "{r}");
    // Sales go on while Postgres is down (Redis decides).
    let (c0, p0) = (load.checkouts_ok(), load.purchases_ok());
    eventually(
        Duration::from_secs(10),
        "checkouts and purchases answered 200 during the outage",
        || load.checkouts_ok() >= c0 + 100 && load.purchases_ok() >= p0 + 50,
    );
    let mut redis = rig.redis.connect();
    assert!(
        outbox_len(&mut redis, sale.id) > 0,
        "purchases made during the outage should wait in the outbox"
    );
    let left = Duration::from_secs(15).saturating_sub(outage.elapsed());
    std::thread::sleep(left);
    assert!(
        health_is(addr, 503, "postgres", "down"),
        "Postgres is still down: /health must say so"
    );
    let during_outage = load.purchases_ok() - p0;
    let pg_errors = rig
        .server()
        .metric("flashsale_postgres_errors_total")
        .unwrap_or(0.0);
    assert!(
        pg_errors > pg_errors_before,
        "the writer should have failed (and retried) against the down Postgres: errors {pg_errors_before} → {pg_errors}"
    );
    // Backoff, not a busy retry loop (every 10 ms would be ~1500 in 15 s).
    assert!(
        pg_errors - pg_errors_before <= 300.0,
        "{} Postgres errors in a ~15 s outage: the writer does not back off",
        pg_errors - pg_errors_before
    );

    rig.pg.start_again();
    eventually(
        Duration::from_secs(20),
        "GET /health 200 after Postgres is back (the writer reconnects)",
        || health_is(addr, 200, "postgres", "ok"),
    );
    load.wait_purchases(20, Duration::from_secs(10), "purchases after the outage");
    let seen = load.finish();
    eprintln!(
        "{during_outage} purchases and {} Postgres errors during the outage; {}",
        pg_errors - pg_errors_before,
        summary(&seen)
    );
    assert!(
        rig.server_mut().is_running(),
        "the server died during the outage"
    );

    eventually(
        Duration::from_secs(10),
        "writer queue depth back to 0",
        || rig.server().metric("flashsale_writer_queue_depth") == Some(0.0),
    );
    let out = outcomes(&seen, LIMIT as usize);
    assert_all_recorded(&rig, sale.id, ITEMS, LIMIT as usize, &seen, &out, false);
}

/// Postgres crashes (every process SIGKILLed, no shutdown) under checkout and
/// purchase load. Checkout batches commit asynchronously, so the crash may
/// lose the last of them; the writer commits their users apart and
/// synchronously, so a users row, once visible, survives the crash (and so
/// does every checkout committed before it). Under load only the last
/// partial WAL page is at risk (each completed page wakes the WAL writer),
/// so to put what is not yet flushed at risk for sure: the WAL writer's
/// delay is set to its 10 s maximum, the load pauses, a group of buyers new
/// to Postgres check out, and once their `users` rows are committed
/// (visible) every Postgres process is killed: none of those rows may be
/// lost. After the restart the load resumes and the fresh buyers buy. Every
/// purchase answered 200 must be in `purchases`, none in a dead letter,
/// every user seen in `checkouts` must be in `users`, and the checker must
/// find the sale consistent.
#[test]
fn postgres_crash_loses_no_acknowledged_purchase() {
    const ITEMS: u32 = 20_000;
    const LIMIT: u32 = 10;
    /// Items above this are kept for the fresh buyers.
    const LOAD_ITEMS: u32 = ITEMS - 1_000;
    const FRESH: u32 = 60;
    const FIRST_FRESH_USER: i64 = 50_000_001;
    // A wide batch window, so that the fresh buyers' checkouts commit in
    // one transaction: the last one before the crash.
    let mut rig =
        Rig::start(ServerConfig::new(ITEMS, LIMIT).env("FLASHSALE_WRITER_FLUSH_MS", "300"));
    let addr = rig.addr();
    let sale = rig.server().active_sale();
    {
        let mut admin = rig.pg.client();
        // The rotator prepares the next sale's rows at once: let it finish,
        // so that nothing but the load writes to Postgres from here on.
        eventually(
            Duration::from_secs(30),
            "the next sale's items in Postgres",
            || {
                admin
                    .query_one("SELECT count(*) FROM items", &[])
                    .is_ok_and(|row| row.get::<_, i64>(0) == 2 * i64::from(ITEMS))
            },
        );
        for sql in [
            "ALTER SYSTEM SET wal_writer_delay = '10s'",
            "ALTER SYSTEM SET wal_writer_flush_after = '1GB'",
            // No autovacuum transaction to write WAL at the crash.
            "ALTER SYSTEM SET autovacuum = off",
            "SELECT pg_reload_conf()",
            // The sale's rows (and everything so far) are on disk.
            "CHECKPOINT",
        ] {
            admin.batch_execute(sql).expect(sql);
        }
    }
    let load = Load::start(
        addr,
        sale.id,
        LoadConfig {
            workers: 4,
            users: 2000,
            items: LOAD_ITEMS,
            pace: Duration::from_millis(3),
            settle: Duration::from_secs(5),
        },
    );
    load.wait_purchases(100, Duration::from_secs(20), "purchases before the crash");

    // Quiet, then fresh buyers check out; once their users rows are
    // committed, crash.
    load.pause();
    eventually(
        Duration::from_secs(10),
        "writer queue depth 0 before the fresh checkouts",
        || rig.server().metric("flashsale_writer_queue_depth") == Some(0.0),
    );
    let fresh: Vec<(i64, i64)> = (0..FRESH)
        .map(|k| {
            (
                FIRST_FRESH_USER + i64::from(k),
                sale.item(LOAD_ITEMS + 1 + k),
            )
        })
        .collect();
    let fresh_ids: Vec<i64> = fresh.iter().map(|(u, _)| *u).collect();
    let mut watcher = rig.pg.client();
    let mut conn = rig.server().connect();
    let mut codes = Vec::new();
    for &(user, item) in &fresh {
        let r = conn.checkout(user, item);
        r.assert_status(200);
        codes.push(r.str("code"));
    }
    eventually(
        Duration::from_secs(10),
        "the fresh buyers' users rows committed by the writer",
        || {
            watcher
                .query_one(
                    "SELECT count(*) FROM users WHERE id = ANY($1)",
                    &[&fresh_ids],
                )
                .is_ok_and(|row| row.get::<_, i64>(0) == i64::from(FRESH))
        },
    );
    rig.pg.crash();
    drop(watcher);
    let purchases_at_crash = load.purchases_ok();
    rig.pg.start_again();
    load.resume();
    eventually(
        Duration::from_secs(30),
        "GET /health 200 after the Postgres restart",
        || health_is(addr, 200, "postgres", "ok"),
    );
    let lost_users: i64 = rig
        .pg
        .client()
        .query_one(
            "SELECT $2 - count(*) FROM users WHERE id = ANY($1)",
            &[&fresh_ids, &i64::from(FRESH)],
        )
        .expect("count fresh users")
        .get(0);
    assert_eq!(
        lost_users, 0,
        "the crash lost users rows the writer had committed (they commit synchronously)"
    );

    // The fresh buyers buy (Redis decides; the answers are 200).
    let mut conn = rig.server().connect();
    let mut fresh_bought: BTreeMap<i64, (i64, String)> = BTreeMap::new();
    for (&(user, item), code) in fresh.iter().zip(&codes) {
        let r = conn.purchase(code);
        r.assert_status(200);
        assert_eq!(r.ids("purchased"), vec![item], "{r}");
        fresh_bought.insert(item, (user, code.clone()));
    }
    load.wait_purchases(50, Duration::from_secs(20), "purchases after the restart");
    let seen = load.finish();
    eprintln!(
        "{purchases_at_crash} load purchases before the crash; {}",
        summary(&seen)
    );

    // Every fresh purchase reaches Postgres.
    let mut pg = rig.pg.client();
    let mut redis = rig.redis.connect();
    let dead_key = format!("{{sale:{}}}:outbox:dead", sale.id);
    let mut missing = Vec::new();
    let recorded = wait_until(Duration::from_secs(30), || {
        let rows = pg_purchases(&mut pg, sale.id);
        missing = fresh_bought
            .iter()
            .filter(|(item, want)| rows.get(*item) != Some(*want))
            .map(|(item, _)| *item)
            .collect();
        missing.is_empty()
    });
    let dead: i64 = redis::cmd("XLEN")
        .arg(&dead_key)
        .query(&mut redis)
        .expect("XLEN dead letter");
    assert!(
        recorded,
        "{} of {FRESH} purchases answered 200 (buyers whose users rows the crash lost: {lost_users}) \
         are not in Postgres after 30 s; outbox {}, dead letter {dead}; first missing item {:?}",
        missing.len(),
        outbox_len(&mut redis, sale.id),
        missing.first()
    );

    // And every purchase of the load, with nothing in a dead letter.
    let mut out = outcomes(&seen, LIMIT as usize);
    for (item, (user, code)) in &fresh_bought {
        out.known.insert(code.clone(), (*user, vec![*item]));
        out.bought.insert(*item, code.clone());
    }
    assert_purchases_recorded(&rig, sale.id, ITEMS, LIMIT as usize, &out);
    assert_eq!(dead, 0, "purchases in the dead letter {dead_key}");
    let r = health(addr).expect("/health answers");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.i64("dead_letters"), 0, "{r}");
    assert_eq!(
        rig.server().metric("flashsale_outbox_dead_letters"),
        Some(0.0)
    );

    // Every user seen in a checkout that Postgres kept has a users row
    // (within the users flush delay): the writer forgot what it knew of
    // users when Postgres went away.
    eventually(
        Duration::from_secs(10),
        "writer queue depth back to 0",
        || rig.server().metric("flashsale_writer_queue_depth") == Some(0.0),
    );
    assert_users_of_checkouts_recorded(&rig);
    rig.assert_consistent(sale.id);
}

/// One checkout on `conn`, recorded in `seen`.
fn checkout(conn: &mut Conn, seen: &mut Seen, user: i64, item: i64) -> Response {
    let r = conn.checkout(user, item);
    seen.checkouts.push(Attempt {
        user,
        item,
        code: None,
        answer: Some(Answer {
            status: r.status,
            error: r.error_code(),
            retry_after: r.header("retry-after").map(str::to_string),
            took: Duration::ZERO,
            purchased: Vec::new(),
            user: None,
            code: (r.status == 200).then(|| r.str("code")),
        }),
    });
    r
}

/// With a tiny writer queue and Postgres down the queue fills: checkouts are
/// shed with 503 `overloaded` and Retry-After, the reported depth never passes
/// the bound, purchases still go on; once Postgres is back everything that was
/// answered is recorded and checkouts are accepted again.
#[test]
fn postgres_down_full_writer_queue_sheds_with_503() {
    const ITEMS: u32 = 500;
    const LIMIT: u32 = 10;
    const QUEUE: f64 = 50.0;
    let mut rig = Rig::start(
        ServerConfig::new(ITEMS, LIMIT)
            .env("FLASHSALE_WRITER_QUEUE", "50")
            .env("FLASHSALE_WRITER_BATCH", "10"),
    );
    let addr = rig.addr();
    let sale = rig.server().active_sale();
    // A few codes to buy with while the queue is full.
    let mut conn = Conn::connect(addr);
    let mut held: Vec<(i64, String)> = Vec::new();
    let mut seen = Seen {
        checkouts: Vec::new(),
        purchases: Vec::new(),
    };
    for user in 1..=5 {
        let r = checkout(&mut conn, &mut seen, user, sale.item(user as u32));
        r.assert_status(200);
        held.push((user, r.str("code")));
    }

    rig.pg.stop();
    eventually(
        Duration::from_secs(10),
        "GET /health: postgres down",
        || health_is(addr, 503, "postgres", "down"),
    );
    // Fill the queue: the writer holds a few batches, then the channel fills.
    let mut shed = Vec::new();
    let mut max_depth = 0.0f64;
    let mut user = 100;
    let deadline = Instant::now() + Duration::from_secs(20);
    while shed.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "no checkout was shed with a full writer queue; {}",
            summary(&seen)
        );
        user += 1;
        let item = sale.item(6 + (user % (ITEMS as i64 - 10)) as u32);
        let r = checkout(&mut conn, &mut seen, user, item);
        match r.status {
            200 | 409 => {}
            503 => {
                r.assert_error(503, "overloaded");
                assert!(
                    r.header("retry-after").is_some(),
                    "503 without Retry-After: {r}"
                );
                shed.push(r);
            }
            _ => panic!("checkout with Postgres down: {r}"),
        }
        if user % 10 == 0 {
            let depth = rig
                .server()
                .metric("flashsale_writer_queue_depth")
                .expect("flashsale_writer_queue_depth in /metrics");
            max_depth = max_depth.max(depth);
        }
    }
    let depth = rig
        .server()
        .metric("flashsale_writer_queue_depth")
        .expect("flashsale_writer_queue_depth in /metrics");
    max_depth = max_depth.max(depth);
    assert!(
        depth > 0.0 && max_depth <= QUEUE,
        "queue depth {depth} (max seen {max_depth}) must be in 1..={QUEUE} when full"
    );
    let full_metric = rig
        .server()
        .metric("flashsale_writer_queue_full_total")
        .unwrap_or(0.0);
    assert!(
        full_metric >= 20.0,
        "flashsale_writer_queue_full_total {full_metric}"
    );
    // Purchases do not travel through the queue: they still succeed.
    for (user, code) in &held {
        let r = conn.purchase(code);
        r.assert_status(200);
        seen.purchases.push(Attempt {
            user: *user,
            item: 0,
            code: Some(code.clone()),
            answer: Some(Answer {
                status: r.status,
                error: r.error_code(),
                retry_after: None,
                took: Duration::ZERO,
                purchased: r.ids("purchased"),
                user: Some(r.i64("user_id")),
                code: None,
            }),
        });
    }
    // Still shedding, still bounded.
    let r = checkout(&mut conn, &mut seen, 99_999, sale.item(ITEMS));
    r.assert_error(503, "overloaded");
    assert!(
        rig.server()
            .metric("flashsale_writer_queue_depth")
            .is_some_and(|d| d <= QUEUE)
    );

    rig.pg.start_again();
    eventually(
        Duration::from_secs(20),
        "checkouts accepted again once Postgres is back",
        || {
            let r = checkout(&mut conn, &mut seen, 77_777, sale.item(ITEMS - 1));
            r.status == 200
        },
    );
    eventually(Duration::from_secs(20), "GET /health 200", || {
        health_is(addr, 200, "postgres", "ok")
    });
    let out = outcomes(&seen, LIMIT as usize);
    assert_eq!(out.bought.len(), 5, "{:?}", out.bought);
    assert_all_recorded(&rig, sale.id, ITEMS, LIMIT as usize, &seen, &out, false);
}

/// Redis hung (SIGSTOP) and then down (SHUTDOWN): requests answer 503 fast,
/// never hang; /health says redis down; once Redis is back (from its AOF, with
/// an empty script cache) the service heals by itself, without a restart.
#[test]
fn redis_down_fails_fast_and_heals() {
    const ITEMS: u32 = 20_000;
    const LIMIT: u32 = 10;
    const HANG_BOUND: Duration = Duration::from_secs(2);
    let mut rig =
        Rig::start(ServerConfig::new(ITEMS, LIMIT).env("FLASHSALE_REDIS_TIMEOUT_MS", "300"));
    let addr = rig.addr();
    let sale = rig.server().active_sale();
    let load = Load::start(
        addr,
        sale.id,
        LoadConfig {
            workers: 4,
            users: 2000,
            // The last 20 items stay unsold for the probes below.
            items: ITEMS - 20,
            pace: Duration::from_millis(3),
            settle: Duration::from_secs(5),
        },
    );
    load.wait_purchases(
        50,
        Duration::from_secs(20),
        "purchases before Redis goes away",
    );

    // 1. Redis hangs: calls time out after 300 ms.
    let hung_at = Instant::now();
    signal(rig.redis.pid(), SIGSTOP);
    let r503 = load.stats.answered_503.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(10),
        "503 answers while Redis hangs",
        || load.stats.answered_503.load(Ordering::Relaxed) >= r503 + 20,
    );
    let t = Instant::now();
    let h = health(addr).expect("/health answers while Redis hangs");
    assert!(t.elapsed() < HANG_BOUND, "/health took {:?}", t.elapsed());
    assert_eq!(h.status, 503, "{h}");
    assert_eq!(h.str("redis"), "down", "{h}");
    std::thread::sleep(Duration::from_secs(2));
    signal(rig.redis.pid(), SIGCONT);
    let hung_for = hung_at.elapsed();
    eventually(
        Duration::from_secs(15),
        "GET /health 200 after Redis resumed",
        || health_is(addr, 200, "redis", "ok"),
    );
    load.wait_purchases(20, Duration::from_secs(15), "purchases after Redis resumed");

    // 2. Redis shut down, then started again from its AOF (empty script cache).
    rig.redis.shutdown();
    let down_at = Instant::now();
    let r503 = load.stats.answered_503.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(10),
        "503 answers while Redis is down",
        || load.stats.answered_503.load(Ordering::Relaxed) >= r503 + 50,
    );
    eventually(
        Duration::from_secs(5),
        "GET /health: 503 with \"redis\":\"down\"",
        || health_is(addr, 503, "redis", "down"),
    );
    // Direct probes, each bounded.
    for i in 0..10 {
        let mut c = Conn::connect(addr);
        let t = Instant::now();
        let r = c.checkout(500_000 + i, sale.item(ITEMS - i as u32));
        assert!(
            t.elapsed() < HANG_BOUND,
            "checkout took {:?}: {r}",
            t.elapsed()
        );
        r.assert_error(503, "redis_unavailable");
        assert!(r.header("retry-after").is_some(), "{r}");
        let t = Instant::now();
        let r = c.purchase(&random_code(sale.id));
        assert!(
            t.elapsed() < HANG_BOUND,
            "purchase took {:?}: {r}",
            t.elapsed()
        );
        r.assert_error(503, "redis_unavailable");
    }
    std::thread::sleep(Duration::from_secs(2).saturating_sub(down_at.elapsed()));
    rig.redis.restart();
    let back = Instant::now();
    let p = load.purchases_ok();
    eventually(
        Duration::from_secs(15),
        "purchases answered 200 again after Redis restarted (no server restart)",
        || load.purchases_ok() >= p + 20,
    );
    let healed_in = back.elapsed();
    eventually(Duration::from_secs(10), "GET /health 200", || {
        health_is(addr, 200, "redis", "ok")
    });
    let seen = load.finish();
    let slowest = seen
        .checkouts
        .iter()
        .chain(&seen.purchases)
        .filter_map(|a| a.answer.as_ref().map(|a| a.took))
        .max()
        .unwrap_or_default();
    eprintln!(
        "hung {hung_for:?}; healed {healed_in:?} after the restart; slowest answer {slowest:?}; {}",
        summary(&seen)
    );
    // No answer took longer than the hang bound (timeouts are 300 ms).
    for a in seen
        .checkouts
        .iter()
        .chain(&seen.purchases)
        .filter_map(|a| a.answer.as_ref())
    {
        assert!(
            a.took < HANG_BOUND,
            "an answer took {:?}: {} {:?}",
            a.took,
            a.status,
            a.error
        );
        if a.status == 503 {
            assert!(a.retry_after.is_some(), "503 without Retry-After: {a:?}");
        }
    }
    assert_eq!(
        seen.checkouts
            .iter()
            .chain(&seen.purchases)
            .filter(|a| a.answer.is_none())
            .count(),
        0,
        "requests went unanswered (connection closed) while Redis was away"
    );
    assert!(rig.server_mut().is_running());

    let out = outcomes(&seen, LIMIT as usize);
    assert_all_recorded(&rig, sale.id, ITEMS, LIMIT as usize, &seen, &out, false);
}

/// Redis SHUTDOWN and restart from its AOF mid-sale, the same users buying
/// before and after: no item sold twice, every user within the limit, Redis
/// and Postgres agree.
#[test]
fn redis_restart_from_aof_keeps_items_and_limits() {
    const ITEMS: u32 = 600;
    const LIMIT: u32 = 3;
    let mut rig =
        Rig::start(ServerConfig::new(ITEMS, LIMIT).env("FLASHSALE_REDIS_TIMEOUT_MS", "300"));
    let addr = rig.addr();
    let sale = rig.server().active_sale();
    // 120 users × 3 = 360 < 600 items: users run into the limit, items stay.
    let load = Load::start(
        addr,
        sale.id,
        LoadConfig {
            workers: 4,
            users: 30,
            items: ITEMS,
            pace: Duration::from_millis(3),
            settle: Duration::from_secs(5),
        },
    );
    load.wait_purchases(60, Duration::from_secs(20), "purchases before the restart");
    let mut redis = rig.redis.connect();
    let sold_before = redis_sold(&mut redis, sale.id, ITEMS);
    drop(redis);
    rig.redis.shutdown();
    std::thread::sleep(Duration::from_millis(500));
    rig.redis.restart();
    let mut redis = rig.redis.connect();
    let sold_after_restart = redis_sold(&mut redis, sale.id, ITEMS);
    assert!(
        sold_before.is_subset(&sold_after_restart),
        "items sold before the SHUTDOWN are not sold after the restart"
    );
    load.wait_purchases(40, Duration::from_secs(20), "purchases after the restart");
    let limit_hits = || {
        rig.server()
            .metric("flashsale_checkout_outcomes_total{outcome=\"limit_reached\"}")
            .unwrap_or(0.0)
    };
    let hits_before = limit_hits();
    eventually(
        Duration::from_secs(20),
        "users running into the limit after the restart",
        || limit_hits() >= hits_before + 20.0,
    );
    let seen = load.finish();
    eprintln!("{}", summary(&seen));

    let out = outcomes(&seen, LIMIT as usize);
    let mut per_user: HashMap<i64, usize> = HashMap::new();
    for (user, items) in out.known.values() {
        *per_user.entry(*user).or_default() += items.len();
    }
    assert!(
        per_user.values().filter(|n| **n == LIMIT as usize).count() >= 10,
        "too few users reached the limit to judge it: {per_user:?}"
    );
    assert_all_recorded(&rig, sale.id, ITEMS, LIMIT as usize, &seen, &out, false);
}

/// SIGTERM / SIGINT under load: stop accepting, finish in-flight requests,
/// flush the writer, exit 0 in bounded time; afterwards (no restart) every
/// purchase answered 200 and every checkout answered is in Postgres.
fn graceful_stop_under_load(sig: i32) {
    const ITEMS: u32 = 4000;
    const LIMIT: u32 = 10;
    let mut rig =
        Rig::start(ServerConfig::new(ITEMS, LIMIT).env("FLASHSALE_SHUTDOWN_TIMEOUT_SECS", "10"));
    let addr = rig.addr();
    let sale = rig.server().active_sale();
    let load = Load::start(
        addr,
        sale.id,
        LoadConfig {
            workers: 6,
            users: 2000,
            items: ITEMS,
            pace: Duration::ZERO,
            settle: Duration::ZERO,
        },
    );
    load.wait_purchases(200, Duration::from_secs(20), "purchases before the signal");
    // The server's own listening sockets, to tell them after its exit from
    // those of another process that got the port since.
    let ours: HashSet<u64> = listening_socket_inodes(addr.port())
        .intersection(&socket_inodes_of(rig.server().pid()))
        .copied()
        .collect();
    assert!(!ours.is_empty(), "the server does not listen on {addr}");
    let at_signal = load.purchases_ok();
    let t = Instant::now();
    let status = rig
        .server_mut()
        .stop_with(sig, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the server did not exit within 15 s of signal {sig}"));
    let took = t.elapsed();
    assert!(
        status.success(),
        "exit status after signal {sig}: {status}; log:\n{}",
        rig.server().log_tail(20)
    );
    let listening = listening_socket_inodes(addr.port());
    assert!(
        listening.is_disjoint(&ours),
        "the server's listening sockets {ours:?} are still open after its exit"
    );
    if Conn::try_connect(addr).is_ok() {
        // Not the server's socket (checked above): the port is free again,
        // and another process may bind it. Anything else is a failure.
        let others = listening_socket_inodes(addr.port());
        assert!(
            !others.is_empty() && others.is_disjoint(&ours),
            "the port still accepts after the exit (listening sockets: {others:?})"
        );
        eprintln!(
            "{addr} accepts after the exit, on sockets {others:?} of pids {:?}, not the server's",
            owners_of_sockets(&others)
        );
    }
    let seen = load.finish();
    rig.server = None;
    eprintln!(
        "signal {sig}: exited in {took:?}; {at_signal} purchases at the signal; {}",
        summary(&seen)
    );

    // Nothing runs any more: what is in Postgres now is all there will be.
    let mut redis = rig.redis.connect();
    assert_eq!(
        outbox_len(&mut redis, sale.id),
        0,
        "the writer left purchases in the outbox at exit"
    );
    let out = outcomes(&seen, LIMIT as usize);
    // A request that got no answer was never processed: in-flight requests
    // are finished and answered, only unread ones are dropped.
    for code in &out.unknown {
        let status: Option<String> = redis::cmd("HGET")
            .arg(keys::codes(sale.id))
            .arg(code)
            .query(&mut redis)
            .expect("HGET codes");
        assert_eq!(
            status, None,
            "purchase {code} was processed (status {status:?}) but its answer never came"
        );
    }
    assert_all_recorded(&rig, sale.id, ITEMS, LIMIT as usize, &seen, &out, true);
}

#[test]
fn sigterm_under_load_drains_and_exits_0() {
    graceful_stop_under_load(SIGTERM);
}

#[test]
fn sigint_under_load_drains_and_exits_0() {
    graceful_stop_under_load(SIGINT);
}

/// What a core knows is sold is refused without Redis: with Redis shut down,
/// checkouts of a sold item still get `409 item_sold` on every core (and are
/// counted as answers from the known-sold map), while an unsold item, which
/// needs Redis, gets 503.
#[test]
fn known_sold_items_are_refused_without_redis() {
    let mut rig = Rig::start(ServerConfig::new(100, 10));
    let sale = rig.server().active_sale();
    let mut conn = rig.server().connect();
    let r = conn.checkout(1, sale.item(1));
    assert_eq!(r.status, 200, "{r}");
    let code = r.str("code").to_string();
    let r = conn.purchase(&code);
    assert_eq!(r.status, 200, "{r}");
    // Every core refreshes its map from Redis's bitmap every 100 ms; wait
    // until both have answered a sold checkout from it.
    let server = rig.server();
    let mut user = 100;
    eventually(
        Duration::from_secs(5),
        "both cores answer the sold item from their map",
        || {
            let before = server
                .metric("flashsale_sold_map_answers_total")
                .unwrap_or(0.0);
            let mut from_map = 0.0;
            for _ in 0..8 {
                user += 1;
                let r = server.connect().checkout(user, sale.item(1));
                assert_eq!(r.status, 409, "{r}");
                let now = server
                    .metric("flashsale_sold_map_answers_total")
                    .unwrap_or(0.0);
                from_map = now - before;
            }
            from_map >= 8.0
        },
    );

    rig.redis.shutdown();
    let before = rig
        .server()
        .metric("flashsale_sold_map_answers_total")
        .unwrap_or(0.0);
    for user in 1000..1020 {
        // A fresh connection each time, so both cores answer.
        let r = rig.server().connect().checkout(user, sale.item(1));
        assert_eq!(r.status, 409, "sold item with Redis down: {r}");
        assert_eq!(r.str("error"), "item_sold", "{r}");
    }
    let after = rig
        .server()
        .metric("flashsale_sold_map_answers_total")
        .unwrap_or(0.0);
    assert!(
        after - before >= 20.0,
        "sold-map answers {before} -> {after}"
    );
    let r = rig.server().connect().checkout(2000, sale.item(2));
    assert_eq!(r.status, 503, "an unsold item needs Redis: {r}");

    rig.redis.restart();
    eventually(
        Duration::from_secs(15),
        "checkouts of unsold items work again once Redis is back",
        || rig.server().connect().checkout(2000, sale.item(2)).status == 200,
    );
    rig.assert_consistent(sale.id);
}

/// Redis loses a sale's state mid-sale (FLUSHALL: what a crash past the last
/// AOF fsync or a failover to an empty replica leaves). The rotator notices
/// within a tick and recreates the sale with the items and per-user counts
/// that Postgres recorded, in one atomic step: no item sells twice and no
/// user's limit starts over.
#[test]
fn redis_data_loss_is_restored_from_postgres() {
    const ITEMS: u32 = 50;
    const LIMIT: u32 = 2;
    let rig = Rig::start(ServerConfig::new(ITEMS, LIMIT));
    let sale = rig.server().active_sale();
    let mut conn = rig.server().connect();
    let buy = |conn: &mut Conn, user: i64, items: &[u32]| {
        let mut code = String::new();
        for &n in items {
            let r = conn.checkout(user, sale.item(n));
            assert_eq!(r.status, 200, "{r}");
            code = r.str("code").to_string();
        }
        let r = conn.purchase(&code);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.ids("purchased").len(), items.len(), "{r}");
    };
    buy(&mut conn, 1, &[1, 2]); // user 1 reaches the limit
    buy(&mut conn, 2, &[3]);
    let mut pg = rig.pg.client();
    eventually(Duration::from_secs(10), "3 purchases in Postgres", || {
        pg.query_one(
            "SELECT count(*) FROM purchases WHERE sale_id = $1",
            &[&sale.id],
        )
        .map(|row| row.get::<_, i64>(0) == 3)
        .unwrap_or(false)
    });

    let mut redis = rig.redis.connect();
    let _: () = redis::cmd("FLUSHALL").query(&mut redis).expect("FLUSHALL");
    eventually(
        Duration::from_secs(10),
        "the sale is back in Redis with its 3 sold items",
        || {
            let sold: Option<i64> = redis::cmd("HGET")
                .arg(keys::meta(sale.id))
                .arg("sold")
                .query(&mut redis)
                .unwrap_or(None);
            sold == Some(3)
        },
    );
    for n in 1..=3u32 {
        let bit: i64 = redis::cmd("GETBIT")
            .arg(keys::sold(sale.id))
            .arg(n - 1)
            .query(&mut redis)
            .expect("GETBIT");
        assert_eq!(bit, 1, "item {n} must still be sold in Redis");
    }
    let r = conn.checkout(1, sale.item(10));
    assert_eq!(r.status, 409, "user 1 is still at the limit: {r}");
    assert_eq!(r.str("error"), "limit_reached", "{r}");
    let r = conn.checkout(3, sale.item(1));
    assert_eq!(r.status, 409, "item 1 is still sold: {r}");
    assert_eq!(r.str("error"), "item_sold", "{r}");
    buy(&mut conn, 3, &[4]);
    eventually(Duration::from_secs(10), "4 purchases in Postgres", || {
        pg.query_one(
            "SELECT count(*) FROM purchases WHERE sale_id = $1",
            &[&sale.id],
        )
        .map(|row| row.get::<_, i64>(0) == 4)
        .unwrap_or(false)
    });
    rig.assert_consistent(sale.id);
}

/// A server restarted while Postgres is down still serves the sale it had
/// prepared (from the rotator's Redis index of sales), and what it records
/// meanwhile reaches Postgres once Postgres is back.
#[test]
fn restart_while_postgres_is_down_keeps_selling() {
    let mut rig = Rig::start(ServerConfig::new(100, 10));
    let sale = rig.server().active_sale();
    let status = rig.server_mut().stop_with(SIGTERM, Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop before the outage: {status:?}"
    );
    rig.server = None;
    rig.pg.stop();
    rig.spawn_server();
    let addr = rig.addr();
    eventually(
        Duration::from_secs(20),
        "the server restarted without Postgres serves the sale",
        || {
            Conn::try_connect(addr)
                .and_then(|mut c| c.try_request("GET", "/sales/active", &[], b""))
                .is_ok_and(|r| r.status == 200 && r.i64("sale_id") == sale.id)
        },
    );
    assert!(
        health_is(addr, 503, "postgres", "down"),
        "/health must say postgres is down"
    );
    let mut conn = rig.server().connect();
    let r = conn.checkout(1, sale.item(1));
    assert_eq!(r.status, 200, "{r}");
    let code = r.str("code").to_string();
    let r = conn.purchase(&code);
    assert_eq!(r.status, 200, "{r}");

    rig.pg.start_again();
    let mut pg = rig.pg.client();
    eventually(
        Duration::from_secs(20),
        "the purchase and the checkout made during the outage reach Postgres",
        || {
            let mut count = |sql: &str| {
                pg.query_one(sql, &[&sale.id, &code])
                    .map(|row| row.get::<_, i64>(0))
                    .unwrap_or(0)
            };
            count("SELECT count(*) FROM purchases WHERE sale_id = $1 AND code = $2") == 1
                && count("SELECT count(*) FROM checkouts WHERE sale_id = $1 AND code = $2") == 1
        },
    );
    rig.assert_consistent(sale.id);
}
