//! Reconciling a sale's Redis state with Postgres after Redis lost writes:
//! the gap check of a running server puts back what Postgres recorded and
//! Redis no longer has (a single node that lost writes past its last AOF
//! fsync, shown by deleting them behind the server's back); and the fence
//! of lua/checkout.lua and lua/purchase.lua, which a new sale on a Redis
//! Cluster never trips and a reconcile lifts, checked on the shared local
//! cluster (`scripts/services.sh cluster-start`, seeds from
//! `TEST_REDIS_CLUSTER_URL`) under a key prefix of its own.

mod common;

use std::time::Duration;

use flashsale::redis_client::keys::Keys;
use flashsale::sale::code::new_code;
use simd_json::prelude::*;

use common::*;

/// Longer than the gap check's period (5 s) on a loaded machine.
const RECONCILE_DEADLINE: Duration = Duration::from_secs(30);

/// A counter of the server's `/metrics`.
fn counter(server: &TestServer, name: &str) -> u64 {
    let text = server.get("/metrics").text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn redis_i64(redis: &mut impl redis::ConnectionLike, cmd: &redis::Cmd) -> i64 {
    let v: Option<i64> = cmd.query(redis).expect("redis command");
    v.unwrap_or(0)
}

#[test]
fn the_gap_check_puts_back_what_redis_lost_and_postgres_recorded() {
    let s = TestServer::start(Opts::default().items(20).limit(5));
    let sale = s.active_sale();
    let user = 41;
    for n in [1, 2, 3] {
        assert_eq!(s.checkout(user, sale.item(n)).status, 200);
    }
    let code = s.checkout(user, sale.item(3)).field("code");
    let code = code.as_str().unwrap().to_string();
    let bought = s.purchase(&code);
    assert_eq!(bought.status, 200, "{bought}");
    s.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE sale_id = $1 AND user_id = $2",
        &[&sale.id, &user],
        3,
    );

    // Redis loses the purchase (as a crash past the last AOF fsync would),
    // while Postgres keeps it.
    let mut redis = s.redis();
    for bit in 0..3 {
        let _: i64 = redis::cmd("SETBIT")
            .arg(keys::sold(sale.id))
            .arg(bit)
            .arg(0)
            .query(&mut redis)
            .unwrap();
    }
    let _: i64 = redis::cmd("HDEL")
        .arg(keys::users(sale.id))
        .arg(user)
        .query(&mut redis)
        .unwrap();
    let _: i64 = redis::cmd("HDEL")
        .arg(keys::codes(sale.id))
        .arg(&code)
        .query(&mut redis)
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(keys::meta(sale.id))
        .arg("sold")
        .arg(0)
        .query(&mut redis)
        .unwrap();

    eventually(
        RECONCILE_DEADLINE,
        "the gap check to set the 3 sold bits again, restore the user's count and the sold counter",
        || {
            let bits = redis_i64(&mut redis, redis::cmd("BITCOUNT").arg(keys::sold(sale.id)));
            let entry: Option<String> = redis::cmd("HGET")
                .arg(keys::users(sale.id))
                .arg(user)
                .query(&mut redis)
                .expect("HGET users");
            let bought = keys::bought(entry.as_deref()).unwrap_or(0);
            let sold = redis_i64(
                &mut redis,
                redis::cmd("HGET").arg(keys::meta(sale.id)).arg("sold"),
            );
            (bits, bought, sold) == (3, 3, 3)
        },
    );
    assert_eq!(
        counter(&s, "flashsale_reconcile_restored_items_total"),
        3,
        "{}",
        s.log_tail(20)
    );
    assert!(counter(&s, "flashsale_reconciles_total") >= 1);
    assert!(
        s.log_tail(200).contains("sale reconciled with postgres"),
        "{}",
        s.log_tail(40)
    );
    // A retry of the purchase replays what Postgres recorded.
    let replay = s.purchase(&code);
    assert_eq!(replay.status, 200, "{replay}");
    assert_eq!(
        replay.ids("purchased"),
        [sale.item(1), sale.item(2), sale.item(3)]
    );
    // The user's limit counts the restored purchase: 5 - 3 = 2 more.
    for n in [4, 5] {
        assert_eq!(s.checkout(user, sale.item(n)).status, 200);
    }
    let over = s.checkout(user, sale.item(6));
    assert_eq!(
        over.error_code().as_deref(),
        Some("limit_reached"),
        "{over}"
    );
    s.assert_consistent(sale.id);
}

// ---------------------------------------------------------------------------
// the fence on a Redis Cluster, script by script
// ---------------------------------------------------------------------------

const INIT_SALE: &str = include_str!("../lua/init_sale.lua");
const CHECKOUT: &str = include_str!("../lua/checkout.lua");
const PURCHASE: &str = include_str!("../lua/purchase.lua");

/// The first seed of the shared local cluster.
fn cluster_seed() -> String {
    cluster::seeds(&cluster::shared_cluster_url())[0].clone()
}

/// A connection to the master that owns `key`'s slot, and its node id.
fn master_of(key: &str) -> (redis::Connection, String) {
    let seed = cluster_seed();
    let mut any = redis_connect(&seed);
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut any)
        .unwrap_or_else(|e| {
            panic!(
                "no Redis Cluster at {seed} ({e}): start it with scripts/services.sh cluster-start"
            )
        });
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut any).unwrap();
    for range in ranges {
        let redis::Value::Array(fields) = range else {
            continue;
        };
        let (from, to): (i64, i64) = (
            redis::from_redis_value(fields[0].clone()).unwrap(),
            redis::from_redis_value(fields[1].clone()).unwrap(),
        );
        if (from..=to).contains(&slot) {
            let redis::Value::Array(master) = &fields[2] else {
                panic!("CLUSTER SLOTS: {fields:?}");
            };
            let host: String = redis::from_redis_value(master[0].clone()).unwrap();
            let port: u16 = redis::from_redis_value(master[1].clone()).unwrap();
            let id: String = redis::from_redis_value(master[2].clone()).unwrap();
            let host = if host.is_empty() {
                "127.0.0.1".to_string()
            } else {
                host
            };
            return (redis_connect(&format!("redis://{host}:{port}")), id);
        }
    }
    panic!("no master owns slot {slot}");
}

/// One test sale's keys and arguments on the cluster.
struct ClusterSale {
    keys: Keys,
    id: i64,
    redis: redis::Connection,
    node: String,
}

impl ClusterSale {
    fn new() -> ClusterSale {
        let prefix = format!("test-reconcile-{}:", Rng::seeded().next_u64());
        let keys = Keys::new(&prefix).unwrap();
        let id = 424_242;
        let (redis, node) = master_of(&keys.meta(id));
        ClusterSale {
            keys,
            id,
            redis,
            node,
        }
    }

    /// init_sale.lua: `step` with Postgres's sold csv, (user, count)s and
    /// (user, code, items csv)s.
    fn init_sale_with(
        &mut self,
        step: &str,
        sold: &str,
        users: &[(i64, u32)],
        codes: &[(i64, &str, &str)],
    ) -> redis::Value {
        let now = now_secs();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(INIT_SALE)
            .arg(5)
            .arg(self.keys.meta(self.id))
            .arg(self.keys.sold(self.id))
            .arg(self.keys.users(self.id))
            .arg(self.keys.codes(self.id))
            .arg(self.keys.outbox(self.id));
        cmd.arg(self.id)
            .arg(now - 10)
            .arg(now + 600)
            .arg(10)
            .arg(3)
            .arg((now + 900) * 1000)
            .arg(step)
            .arg(sold)
            .arg(users.len());
        for (user, count) in users {
            cmd.arg(user).arg(count);
        }
        for (user, code, items) in codes {
            cmd.arg(user).arg(code).arg(items);
        }
        cmd.query(&mut self.redis).expect("init_sale.lua")
    }

    /// init_sale.lua: `step` with Postgres's sold csv and (user, count)s.
    fn init_sale(&mut self, step: &str, sold: &str, users: &[(i64, u32)]) -> redis::Value {
        self.init_sale_with(step, sold, users, &[])
    }

    /// checkout.lua for one call (user, item number) sent with `fence`:
    /// its outcome and code.
    fn checkout_code(&mut self, fence: &str, user: i64, n: u32) -> (String, String) {
        let code = new_code(self.id, user);
        let reply: String = redis::cmd("EVAL")
            .arg(CHECKOUT)
            .arg(3)
            .arg(self.keys.meta(self.id))
            .arg(self.keys.sold(self.id))
            .arg(self.keys.users(self.id))
            .arg(fence)
            .arg(user)
            .arg(n - 1)
            .arg(format!(
                "0:1:{code}:,{},",
                flashsale::sale::item_id(self.id, n)
            ))
            .query(&mut self.redis)
            .expect("checkout.lua");
        // A new checkout answers 'new' alone: its code is the call's.
        let fields: Vec<&str> = reply.split(' ').collect();
        match fields[..] {
            ["new"] => ("ok".to_owned(), code.to_string()),
            _ => (fields[0].to_owned(), fields[1].to_owned()),
        }
    }

    /// checkout.lua for one call (user, item number) sent with `fence`.
    fn checkout(&mut self, fence: &str, user: i64, n: u32) -> String {
        self.checkout_code(fence, user, n).0
    }

    /// purchase.lua for `code` sent with `fence`: its reply.
    fn purchase_code(&mut self, fence: &str, code: &str) -> Vec<String> {
        let replies: Vec<Vec<String>> = redis::cmd("EVAL")
            .arg(PURCHASE)
            .arg(5)
            .arg(self.keys.meta(self.id))
            .arg(self.keys.sold(self.id))
            .arg(self.keys.outbox(self.id))
            .arg(self.keys.users(self.id))
            .arg(self.keys.codes(self.id))
            .arg(self.id * flashsale::sale::ITEM_ID_STRIDE)
            .arg("0")
            .arg(fence)
            .arg(code)
            .query(&mut self.redis)
            .expect("purchase.lua");
        replies[0].clone()
    }

    /// purchase.lua for one (unknown) code of `user` sent with `fence`: its
    /// outcome.
    fn purchase(&mut self, fence: &str, user: i64) -> String {
        let code = new_code(self.id, user);
        self.purchase_code(fence, &code)[0].clone()
    }

    /// The `bought` count of `user` in the users hash.
    fn bought(&mut self, user: i64) -> Option<i64> {
        let users = self.keys.users(self.id);
        keys::bought(self.hget(&users, &user.to_string()).as_deref())
    }

    fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(&mut self.redis).unwrap()
    }

    fn hget(&mut self, key: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query(&mut self.redis)
            .unwrap()
    }
}

impl Drop for ClusterSale {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.keys.prefix());
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut self.redis)
            .unwrap_or_default();
        if !found.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(found).query(&mut self.redis);
        }
    }
}

#[test]
fn a_new_sale_on_the_cluster_is_stamped_with_its_node_and_not_fenced() {
    let mut sale = ClusterSale::new();
    let node = sale.node.clone();
    let created = sale.init_sale("create", "", &[]);
    assert_eq!(
        sale.checkout(&node, 7, 1),
        "ok",
        "a checkout sent to the sale's node"
    );
    assert_eq!(
        created,
        redis::Value::Array(vec![
            redis::Value::BulkString(b"created".to_vec()),
            redis::Value::Int(0),
            redis::Value::BulkString(node.clone().into_bytes()),
        ])
    );
    assert_eq!(
        sale.hget(&sale.keys.meta(sale.id), "node").as_deref(),
        Some(node.as_str())
    );
    // Every key checkout.lua and purchase.lua declare exists from the
    // sale's creation: during a slot migration none is missing on the
    // source, so Redis has no reason to answer TRYAGAIN while the sale's
    // keys are all there (nor for a new user or a fresh code: no per-call
    // keys).
    let k = &sale.keys;
    let declared = [
        k.meta(sale.id),
        k.sold(sale.id),
        k.users(sale.id),
        k.codes(sale.id),
        k.outbox(sale.id),
    ];
    let existing: i64 = redis::cmd("EXISTS")
        .arg(&declared)
        .query(&mut sale.redis)
        .unwrap();
    assert_eq!(existing, 5, "{declared:?}");
    let outbox_len: i64 = redis::cmd("XLEN")
        .arg(&declared[4])
        .query(&mut sale.redis)
        .unwrap();
    assert_eq!(outbox_len, 0, "the outbox is created empty");
}

#[test]
fn a_fenced_sale_sells_nothing_until_a_reconcile_restores_postgres_and_stamps_the_node() {
    let mut sale = ClusterSale::new();
    let node = sale.node.clone();
    sale.init_sale("create", "", &[]);
    // Redis state as a failover leaves it: stamped by a master that died,
    // missing item 2 and 3 that Postgres recorded (user 7 bought item 2,
    // user 8 item 3), while user 8 also holds a purchase newer than
    // Postgres's (Redis counts 2 for them).
    let meta = sale.keys.meta(sale.id);
    let _: i64 = redis::cmd("HSET")
        .arg(&meta)
        .arg("node")
        .arg("a-master-that-died")
        .query(&mut sale.redis)
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg(sale.keys.users(sale.id))
        .arg(8)
        .arg("2:0::")
        .query(&mut sale.redis)
        .unwrap();
    assert_eq!(sale.checkout(&node, 9, 2), "fenced");
    assert_eq!(sale.purchase(&node, 9), "fenced");
    // A single node passes no fence: nothing is fenced there.
    assert_eq!(sale.checkout("", 9, 4), "ok");

    let reconciled = sale.init_sale("reconcile", "2,3", &[(7, 1), (8, 1)]);
    assert_eq!(
        reconciled,
        redis::Value::Array(vec![
            redis::Value::BulkString(b"reconciled".to_vec()),
            redis::Value::Int(2),
            redis::Value::BulkString(node.clone().into_bytes()),
        ])
    );
    assert_eq!(sale.hget(&meta, "node").as_deref(), Some(node.as_str()));
    assert_eq!(sale.hget(&meta, "sold").as_deref(), Some("2"));
    assert_eq!(sale.bought(7), Some(1));
    assert_eq!(sale.bought(8), Some(2), "Redis's newer count is kept");
    let users = sale.keys.users(sale.id);
    let codes = sale.keys.codes(sale.id);
    for key in [&users, &codes] {
        let ttl = sale.pttl(key);
        assert!(ttl > 0, "{key} expires with the sale: {ttl}");
    }
    // Restored items are sold; the rest sells again on the stamped node.
    assert_eq!(sale.checkout(&node, 9, 2), "sold");
    assert_eq!(sale.checkout(&node, 9, 5), "ok");
    assert_eq!(sale.purchase(&node, 9), "unknown");
    // A second reconcile finds nothing missing.
    let again = sale.init_sale("reconcile", "2,3", &[(7, 1), (8, 1)]);
    let redis::Value::Array(fields) = again else {
        panic!("{again:?}")
    };
    assert_eq!(fields[1], redis::Value::Int(0));
}

#[test]
fn a_reconcile_in_parts_keeps_the_sale_fenced_until_its_last_part() {
    let mut sale = ClusterSale::new();
    sale.init_sale("create", "", &[]);
    let code = random_code(sale.id);
    let part = sale.init_sale_with("reconcile-part", "2", &[(7, 1)], &[(7, &code, "x")]);
    let redis::Value::Array(fields) = part else {
        panic!("{part:?}")
    };
    assert_eq!(fields[0], redis::Value::BulkString(b"restored".to_vec()));
    assert_eq!(fields[1], redis::Value::Int(1));
    // Between the parts nothing sells, not even on a single node (no fence
    // sent): user 7's count may still lack what a later part restores.
    assert_eq!(sale.checkout("", 9, 4), "fenced");
    assert_eq!(sale.purchase("", 9), "fenced");
    // The first part is applied already: item 2 sold, user 7 counted, the
    // code's outcome stored.
    assert_eq!(sale.bought(7), Some(1));
    let codes = sale.keys.codes(sale.id);
    assert_eq!(sale.hget(&codes, &code).as_deref(), Some("200:7:x:"));
    sale.init_sale("reconcile", "3", &[(8, 2)]);
    assert_eq!(sale.bought(8), Some(2));
    assert_eq!(sale.checkout("", 9, 2), "sold");
    assert_eq!(sale.checkout("", 9, 3), "sold");
    assert_eq!(sale.checkout("", 9, 4), "ok");
    let meta = sale.keys.meta(sale.id);
    assert_eq!(sale.hget(&meta, "sold").as_deref(), Some("2"));
    assert_eq!(sale.hget(&meta, "restoring"), None);
}

#[test]
fn a_sale_restored_in_parts_is_served_only_once_its_last_part_created_it() {
    let mut sale = ClusterSale::new();
    let part = sale.init_sale_with("create-part", "1,2", &[(7, 3)], &[]);
    let redis::Value::Array(fields) = part else {
        panic!("{part:?}")
    };
    assert_eq!(fields[0], redis::Value::BulkString(b"restored".to_vec()));
    assert_eq!(
        sale.checkout("", 9, 4),
        "no_sale",
        "no meta yet: not served"
    );
    let users = sale.keys.users(sale.id);
    assert!(
        sale.pttl(&users) > 0,
        "a part leaves no hash without expiry"
    );
    sale.init_sale("create", "3", &[]);
    assert_eq!(sale.checkout("", 9, 3), "sold");
    assert_eq!(sale.checkout("", 7, 4), "limit", "3 bought, limit 3");
    let meta = sale.keys.meta(sale.id);
    assert_eq!(sale.hget(&meta, "sold").as_deref(), Some("3"));
    // A part of a sale that exists does nothing: another instance created it.
    let late = sale.init_sale_with("create-part", "5", &[(7, 9)], &[]);
    let redis::Value::Array(fields) = late else {
        panic!("{late:?}")
    };
    assert_eq!(fields[0], redis::Value::BulkString(b"exists".to_vec()));
    assert_eq!(sale.bought(7), Some(3));
}

#[test]
fn a_lost_users_or_codes_hash_comes_back_with_its_expiry() {
    let mut sale = ClusterSale::new();
    sale.init_sale("create", "", &[]);
    let users = sale.keys.users(sale.id);
    let codes = sale.keys.codes(sale.id);
    let expiry = sale.pttl(&users);
    assert!(
        expiry > 0,
        "created with the sale, with its expiry: {expiry}"
    );
    assert!(sale.pttl(&codes) > 0);
    // Lost (evicted, deleted): the next checkout and purchase write them
    // back with the expiry, never without one.
    let _: i64 = redis::cmd("DEL")
        .arg(&users)
        .arg(&codes)
        .query(&mut sale.redis)
        .unwrap();
    let (outcome, code) = sale.checkout_code("", 7, 1);
    assert_eq!(outcome, "ok");
    assert!(sale.pttl(&users) > 0, "users written back with its expiry");
    let bought = sale.purchase_code("", &code);
    assert_eq!(bought[0], "done", "{bought:?}");
    assert!(sale.pttl(&codes) > 0, "codes written back with its expiry");
}

#[test]
fn a_sale_of_the_old_layout_is_not_served() {
    // A sale created by a server of the layout before the users and codes
    // hashes: its meta has no expire_at, its users live in keys of their own
    // that the scripts no longer read.
    let mut sale = ClusterSale::new();
    sale.init_sale("create", "", &[]);
    let meta = sale.keys.meta(sale.id);
    let _: i64 = redis::cmd("HDEL")
        .arg(&meta)
        .arg("expire_at")
        .query(&mut sale.redis)
        .unwrap();
    assert_eq!(sale.checkout("", 7, 1), "no_sale");
    let code = new_code(sale.id, 7);
    assert_eq!(sale.purchase_code("", &code), ["ended", "7"]);
}
