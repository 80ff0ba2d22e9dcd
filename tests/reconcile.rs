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
    let _: i64 = redis::cmd("DEL")
        .arg(keys::user(sale.id, user))
        .arg(keys::code(sale.id, &code))
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
            let bought = redis_i64(
                &mut redis,
                redis::cmd("HGET")
                    .arg(keys::user(sale.id, user))
                    .arg("bought"),
            );
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

    /// init_sale.lua: `step` with Postgres's sold csv and (user, count)s.
    fn init_sale(&mut self, step: &str, sold: &str, users: &[(i64, u32)]) -> redis::Value {
        let now = now_secs();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(INIT_SALE)
            .arg(2 + users.len())
            .arg(self.keys.meta(self.id))
            .arg(self.keys.sold(self.id));
        for (user, _) in users {
            cmd.arg(self.keys.user(self.id, *user));
        }
        cmd.arg(self.id)
            .arg(now - 10)
            .arg(now + 600)
            .arg(10)
            .arg(3)
            .arg((now + 900) * 1000)
            .arg(sold)
            .arg(step)
            .arg(users.len());
        for (_, count) in users {
            cmd.arg(count);
        }
        cmd.query(&mut self.redis).expect("init_sale.lua")
    }

    /// checkout.lua for one call (user, item number) sent with `fence`.
    fn checkout(&mut self, fence: &str, user: i64, n: u32) -> String {
        let code = random_code(self.id);
        let replies: Vec<Vec<String>> = redis::cmd("EVAL")
            .arg(CHECKOUT)
            .arg(4)
            .arg(self.keys.meta(self.id))
            .arg(self.keys.sold(self.id))
            .arg(self.keys.user(self.id, user))
            .arg(self.keys.code(self.id, &code))
            .arg((now_secs() + 900) * 1000)
            .arg(self.id * flashsale::sale::ITEM_ID_STRIDE)
            .arg(self.keys.user_prefix(self.id))
            .arg(self.keys.code_prefix(self.id))
            .arg(fence)
            .arg(n)
            .query(&mut self.redis)
            .expect("checkout.lua");
        replies[0][0].clone()
    }

    /// purchase.lua for one (unknown) code sent with `fence`: its outcome.
    fn purchase(&mut self, fence: &str, user: i64) -> String {
        let code = random_code(self.id);
        let replies: Vec<Vec<String>> = redis::cmd("EVAL")
            .arg(PURCHASE)
            .arg(5)
            .arg(self.keys.meta(self.id))
            .arg(self.keys.sold(self.id))
            .arg(self.keys.outbox(self.id))
            .arg(self.keys.code(self.id, &code))
            .arg(self.keys.user(self.id, user))
            .arg(self.keys.user_prefix(self.id))
            .arg(self.id * flashsale::sale::ITEM_ID_STRIDE)
            .arg(self.keys.code_prefix(self.id))
            .arg("0")
            .arg(fence)
            .query(&mut self.redis)
            .expect("purchase.lua");
        replies[0][0].clone()
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
        .arg(sale.keys.user(sale.id, 8))
        .arg("bought")
        .arg(2)
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
    let user7 = sale.keys.user(sale.id, 7);
    let user8 = sale.keys.user(sale.id, 8);
    assert_eq!(sale.hget(&user7, "bought").as_deref(), Some("1"));
    assert_eq!(
        sale.hget(&user8, "bought").as_deref(),
        Some("2"),
        "Redis's newer count is kept"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&user7)
        .query(&mut sale.redis)
        .unwrap();
    assert!(ttl > 0, "a restored user key expires with the sale: {ttl}");
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
