//! `flashsale check --sale N`: compares one sale's Redis state (the judge)
//! with its Postgres records and prints every difference. Purchases still in
//! the outbox stream count as recorded-in-flight (unless Postgres records
//! their item with another code: a double sale); purchases in the sale's
//! dead letter are never recorded, and each is a difference, as is each
//! double sale the writer recorded in `double_sales` (a purchase answered
//! `200` whose item Postgres records for another buyer). Exit status: 0 consistent,
//! 1 differences, 2 could not check. Best run on a quiet sale; under traffic
//! a purchase can land between two reads, so a differing result is re-read
//! a few times before it is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::redis_client::blocking::RedisEndpoint;
use crate::redis_client::keys::Keys;
use crate::redis_client::seeds::{RedisSeeds, detect_mode};
use crate::sale::sold_map::sold_numbers;
use crate::sale::split_item_id;
use crate::store::outbox;

/// Dead-letter entries printed in full; the rest are counted.
const DEAD_SAMPLE: usize = 20;
/// Bounds connecting to Redis and each of its replies.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// What the checker read about one sale.
#[derive(Debug, Default)]
struct Snapshot {
    pg_sale: Option<(u32, u32)>,
    redis_meta: Option<(u32, u32, u64)>,
    sold_bits: BTreeSet<u32>,
    /// item id → (user id, code), from Postgres.
    pg_purchases: BTreeMap<i64, (i64, String)>,
    /// (item id, user id, code) still waiting in the outbox.
    pending: Vec<(i64, i64, String)>,
    /// Entries in the sale's dead letter, and the first few of them.
    dead_letters: u64,
    dead_letter_sample: Vec<String>,
    /// The dead letter's key, for the report.
    dead_letter_key: String,
    /// user id → `bought` counter in Redis (the sale's users hash, until it expires).
    redis_bought: BTreeMap<i64, u64>,
    /// Rows of `double_sales`: (item id, user id, code, recorded user id,
    /// recorded code).
    double_sales: Vec<(i64, i64, String, i64, String)>,
}

/// Runs the check and prints the report; returns the process exit status.
pub fn run(redis_url: &str, keys: &Keys, database_url: &str, sale_id: i64) -> u8 {
    let redis = match endpoint(redis_url) {
        Ok(redis) => redis,
        Err(e) => {
            eprintln!("sale {sale_id}: could not check: {e}");
            return 2;
        }
    };
    let mut last = Vec::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        match read(&redis, keys, database_url, sale_id) {
            Ok(snapshot) => {
                last = differences(sale_id, &snapshot);
                if last.is_empty() {
                    println!("{}", summary(sale_id, &snapshot));
                    println!("sale {sale_id}: consistent");
                    return 0;
                }
            }
            Err(e) => {
                eprintln!("sale {sale_id}: could not check: {e}");
                return 2;
            }
        }
    }
    for line in &last {
        println!("{line}");
    }
    println!("sale {sale_id}: {} difference(s)", last.len());
    1
}

fn summary(sale_id: i64, s: &Snapshot) -> String {
    format!(
        "sale {sale_id}: {} sold in redis, {} purchase rows, {} pending in the outbox, {} users with purchases",
        s.sold_bits.len(),
        s.pg_purchases.len(),
        s.pending.len(),
        s.pg_purchases
            .values()
            .map(|(user, _)| user)
            .collect::<BTreeSet<_>>()
            .len()
    )
}

/// The seeds of `REDIS_URL` and whether they are a Redis Cluster.
fn endpoint(redis_url: &str) -> Result<RedisEndpoint> {
    let seeds = RedisSeeds::parse(redis_url)?;
    let mode = detect_mode(&seeds, REDIS_TIMEOUT)?;
    Ok(RedisEndpoint { seeds, mode })
}

fn read(redis: &RedisEndpoint, keys: &Keys, database_url: &str, sale_id: i64) -> Result<Snapshot> {
    let mut snapshot = Snapshot {
        dead_letter_key: keys.outbox_dead_letter(sale_id),
        ..Snapshot::default()
    };
    let mut redis = redis.connect(REDIS_TIMEOUT, REDIS_TIMEOUT)?;
    let pg_config: postgres::Config = database_url
        .parse()
        .map_err(|e| Error::with_cause(ErrorKind::Config, "DATABASE_URL", e))?;
    let mut pg = pg_config.connect(postgres::NoTls).map_err(|e| {
        Error::with_cause(
            ErrorKind::Postgres,
            format!("connect to postgres at {}", postgres_address(&pg_config)),
            e,
        )
    })?;

    if let Some(row) = pg.query_opt(
        "SELECT items_total, user_limit FROM sales WHERE id = $1",
        &[&sale_id],
    )? {
        let items: i32 = row.get(0);
        let limit: i32 = row.get(1);
        snapshot.pg_sale = Some((items as u32, limit as u32));
    }

    // Redis first (outbox before bitmap would miss a purchase made in between
    // in the bitmap; this order can only see a bit without its entry, which
    // the re-read settles).
    let meta: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.meta(sale_id))
        .query(&mut redis)?;
    if !meta.is_empty() {
        let field = |name: &str| meta.get(name).and_then(|v| v.parse::<u64>().ok());
        snapshot.redis_meta = Some((
            field("items").unwrap_or(0) as u32,
            field("limit").unwrap_or(0) as u32,
            field("sold").unwrap_or(0),
        ));
    }
    let bitmap: Option<Vec<u8>> = redis::cmd("GET")
        .arg(keys.sold(sale_id))
        .query(&mut redis)?;
    snapshot
        .sold_bits
        .extend(sold_numbers(&bitmap.unwrap_or_default()));
    // HSCAN of the sale's users hash, on the node that owns the sale's slot;
    // a value is `<bought>:<items in the checkout>:<code>:<items>`.
    let mut cursor = 0u64;
    let users = keys.users(sale_id);
    loop {
        let (next, found): (u64, Vec<(String, String)>) = redis.query_at(
            &users,
            redis::cmd("HSCAN")
                .arg(&users)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000),
        )?;
        for (field, value) in found {
            let Ok(user) = field.parse::<i64>() else {
                continue; // '_', which keeps the hash and its expiry
            };
            let bought = value.split(':').next().and_then(|b| b.parse::<u64>().ok());
            snapshot.redis_bought.insert(user, bought.unwrap_or(0));
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut after: Option<String> = None;
    loop {
        let batch = outbox::read(&mut redis, keys, sale_id, after.as_deref(), 5000)?;
        snapshot.pending.extend(
            batch
                .entries
                .iter()
                .map(|e| (e.item_id, e.user_id, e.code.clone())),
        );
        if batch.raw_count < 5000 {
            break;
        }
        after = batch.last_id;
    }
    snapshot.dead_letters = outbox::dead_letter_len(&mut redis, keys, sale_id)?;
    if snapshot.dead_letters > 0 {
        snapshot.dead_letter_sample =
            outbox::read_dead_letter(&mut redis, keys, sale_id, DEAD_SAMPLE)?;
    }

    for row in pg.query(
        "SELECT item_id, user_id, code FROM purchases WHERE sale_id = $1",
        &[&sale_id],
    )? {
        snapshot
            .pg_purchases
            .insert(row.get(0), (row.get(1), row.get(2)));
    }
    for row in pg.query(
        "SELECT item_id, user_id, code, recorded_user_id, recorded_code
         FROM double_sales WHERE sale_id = $1 ORDER BY item_id, code",
        &[&sale_id],
    )? {
        snapshot
            .double_sales
            .push((row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)));
    }
    if snapshot.pg_sale.is_none() && snapshot.redis_meta.is_none() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("sale {sale_id} is neither in redis nor in postgres"),
        ));
    }
    Ok(snapshot)
}

/// `host:port` of the first Postgres host of a URL, for error messages.
fn postgres_address(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Every way the snapshot breaks an invariant, one line each.
fn differences(sale_id: i64, s: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let (items, limit) = match (s.pg_sale, s.redis_meta) {
        (Some(pg), Some((items, limit, _))) => {
            if pg != (items, limit) {
                out.push(format!(
                    "sale rows differ: postgres items/limit {pg:?}, redis {:?}",
                    (items, limit)
                ));
            }
            pg
        }
        (Some(pg), None) => {
            out.push("sale is in postgres but not in redis".into());
            pg
        }
        (None, Some((items, limit, _))) => {
            out.push("sale is in redis but not in postgres".into());
            (items, limit)
        }
        (None, None) => return vec!["no such sale".into()],
    };
    if let Some((_, _, sold)) = s.redis_meta
        && sold != s.sold_bits.len() as u64
    {
        out.push(format!(
            "redis sold counter {sold} != {} bits set in the sold bitmap",
            s.sold_bits.len()
        ));
    }
    if s.sold_bits.len() > items as usize {
        out.push(format!(
            "{} items sold, more than the sale's {items}",
            s.sold_bits.len()
        ));
    }

    if s.dead_letters > 0 {
        out.push(format!(
            "{} purchase(s) in the dead letter {}: sold in redis, never recorded in postgres",
            s.dead_letters, s.dead_letter_key
        ));
        for entry in &s.dead_letter_sample {
            out.push(format!("dead letter: {entry}"));
        }
        if s.dead_letters > s.dead_letter_sample.len() as u64 {
            out.push(format!(
                "dead letter: ... and {} more",
                s.dead_letters - s.dead_letter_sample.len() as u64
            ));
        }
    }

    for (item, user, code, recorded_user, recorded_code) in &s.double_sales {
        out.push(format!(
            "double sale: item {item} was sold to user {user} (code {code}), answered 200, but postgres records it for user {recorded_user} (code {recorded_code}); the purchase of user {user} is not recorded"
        ));
    }

    // Recorded purchases: Postgres rows plus what waits in the outbox (a
    // replay of a recorded purchase has its code).
    let mut recorded: BTreeMap<i64, (i64, String)> = s.pg_purchases.clone();
    for (item, user, code) in &s.pending {
        match recorded.get(item) {
            Some((other, other_code)) if other_code != code => out.push(format!(
                "item {item} recorded for user {other} (code {other_code}) and pending for user {user} (code {code}): a double sale"
            )),
            Some(_) => {}
            None => {
                recorded.insert(*item, (*user, code.clone()));
            }
        }
    }
    for &item in recorded.keys() {
        match split_item_id(item) {
            Some((sale, n)) if sale == sale_id && n <= items => {
                if !s.sold_bits.contains(&n) {
                    out.push(format!(
                        "item {item} has a purchase but is not sold in redis"
                    ));
                }
            }
            _ => out.push(format!(
                "purchase of item {item} which is not an item of sale {sale_id}"
            )),
        }
    }
    for &n in &s.sold_bits {
        let item = crate::sale::item_id(sale_id, n);
        if !recorded.contains_key(&item) {
            out.push(format!(
                "item {item} is sold in redis but has no purchase row"
            ));
        }
    }

    let mut per_user: BTreeMap<i64, u64> = BTreeMap::new();
    for (user, _) in recorded.values() {
        *per_user.entry(*user).or_default() += 1;
    }
    for (&user, &count) in &per_user {
        if count > u64::from(limit) {
            out.push(format!(
                "user {user} bought {count} items, past the limit {limit}"
            ));
        }
        if let Some(&bought) = s.redis_bought.get(&user)
            && bought != count
        {
            out.push(format!(
                "user {user}: redis counts {bought} bought, records show {count}"
            ));
        }
    }
    for (&user, &bought) in &s.redis_bought {
        if bought > 0 && !per_user.contains_key(&user) {
            out.push(format!(
                "user {user}: redis counts {bought} bought, no purchase recorded"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consistent() -> Snapshot {
        let mut s = Snapshot {
            pg_sale: Some((10, 2)),
            redis_meta: Some((10, 2, 3)),
            dead_letter_key: Keys::default().outbox_dead_letter(7),
            ..Snapshot::default()
        };
        s.sold_bits.extend([1, 2, 5]);
        s.pg_purchases.insert(7_000_001, (100, "c1".into()));
        s.pg_purchases.insert(7_000_002, (100, "c1".into()));
        s.pending.push((7_000_005, 200, "c2".into()));
        // a replay of a recorded purchase
        s.pending.push((7_000_001, 100, "c1".into()));
        s.redis_bought.insert(100, 2);
        s.redis_bought.insert(200, 1);
        s
    }

    #[test]
    fn a_consistent_sale_has_no_differences() {
        assert_eq!(differences(7, &consistent()), Vec::<String>::new());
    }

    #[test]
    fn finds_each_kind_of_difference() {
        let mut s = consistent();
        s.sold_bits.insert(9); // sold without a record, and counter off
        s.pg_purchases.insert(7_000_003, (100, "c1".into())); // record without a bit; user 100 past limit
        s.pending.push((7_000_001, 300, "c3".into())); // same item for two codes
        let found = differences(7, &s);
        let has = |needle: &str| found.iter().any(|l| l.contains(needle));
        assert!(has("redis sold counter 3 != 4"), "{found:?}");
        assert!(
            has("item 7000009 is sold in redis but has no purchase row"),
            "{found:?}"
        );
        assert!(
            has("item 7000003 has a purchase but is not sold"),
            "{found:?}"
        );
        assert!(
            has("user 100 bought 3 items, past the limit 2"),
            "{found:?}"
        );
        assert!(
            has(
                "item 7000001 recorded for user 100 (code c1) and pending for user 300 (code c3): a double sale"
            ),
            "{found:?}"
        );
        assert!(
            has("user 100: redis counts 2 bought, records show 3"),
            "{found:?}"
        );
    }

    #[test]
    fn recorded_double_sales_are_differences() {
        let mut s = consistent();
        s.double_sales
            .push((7_000_001, 300, "c3".into(), 100, "c1".into()));
        assert_eq!(
            differences(7, &s),
            [
                "double sale: item 7000001 was sold to user 300 (code c3), answered 200, but postgres records it for user 100 (code c1); the purchase of user 300 is not recorded"
            ]
        );
    }

    #[test]
    fn dead_letters_are_differences() {
        let mut s = consistent();
        s.sold_bits.insert(8);
        s.redis_meta = Some((10, 2, 4));
        s.redis_bought.insert(400, 1);
        s.dead_letters = 1;
        s.dead_letter_sample
            .push("item=7000008 user=400 code=c4 at=1 reason=refused outbox_id=1-0".into());
        let found = differences(7, &s);
        let has = |needle: &str| found.iter().any(|l| l.contains(needle));
        assert!(
            has("1 purchase(s) in the dead letter {sale:7}:outbox:dead"),
            "{found:?}"
        );
        assert!(has("dead letter: item=7000008 user=400"), "{found:?}");
        assert!(
            has("item 7000008 is sold in redis but has no purchase row"),
            "{found:?}"
        );
    }
}
