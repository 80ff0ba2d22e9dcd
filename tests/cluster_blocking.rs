//! The blocking side on a Redis Cluster: `REDIS_URL` seed lists and mode
//! detection, `flashsale check` on a cluster seed list, and the startup
//! rules (a cluster has only database 0). Runs against the shared local
//! cluster (`scripts/services.sh cluster-start`), seeds from
//! `TEST_REDIS_CLUSTER_URL`; every test writes under its own key prefix and
//! never stops a node of it (a test that needs a dead node breaks a private
//! `ClusterRig`). An unreachable cluster fails the tests.

mod common;

use std::process::Command;
use std::time::Duration;

use flashsale::error::ErrorKind;
use flashsale::redis_client::blocking::{RedisEndpoint, eval};
use flashsale::redis_client::keys::Keys;
use flashsale::redis_client::scripts::Script;
use flashsale::redis_client::seeds::{RedisMode, RedisSeeds, detect_mode};

use common::cluster::{ClusterRig, master_urls, shared_cluster_url};
use common::services::run_bounded;
use common::*;

const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared cluster's seed list.
fn cluster_url() -> String {
    shared_cluster_url()
}

/// The seeds, or a failure that says how to start the cluster.
fn cluster_seeds() -> RedisSeeds {
    let seeds = RedisSeeds::parse(&cluster_url()).expect("TEST_REDIS_CLUSTER_URL parses");
    match detect_mode(&seeds, DETECT_TIMEOUT) {
        Ok(RedisMode::Cluster) => seeds,
        other => panic!(
            "no Redis Cluster at {} ({other:?}): start it with scripts/services.sh cluster-start",
            cluster_url()
        ),
    }
}

/// A URL on which nothing listens.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("redis://127.0.0.1:{port}")
}

#[test]
fn the_mode_comes_from_the_server() {
    assert_eq!(
        detect_mode(&cluster_seeds(), DETECT_TIMEOUT).unwrap(),
        RedisMode::Cluster
    );
    let single = RedisSeeds::parse(&format!("{}/3", redis_base_url())).unwrap();
    assert_eq!(
        detect_mode(&single, DETECT_TIMEOUT).unwrap(),
        RedisMode::Single
    );
}

#[test]
fn the_first_seed_that_answers_decides() {
    cluster_seeds();
    let seeds = RedisSeeds::parse(&format!("{},{}", dead_url(), cluster_url())).unwrap();
    assert_eq!(
        detect_mode(&seeds, DETECT_TIMEOUT).unwrap(),
        RedisMode::Cluster
    );
    let none = RedisSeeds::parse(&format!("{},{}", dead_url(), dead_url())).unwrap();
    let e = detect_mode(&none, DETECT_TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RedisUnavailable, "{e}");
}

#[test]
fn seeds_that_break_the_mode_rules_are_config_errors() {
    cluster_seeds();
    let with_db =
        RedisSeeds::parse(&format!("{},redis://127.0.0.1:7001/2", cluster_url())).unwrap();
    let e = detect_mode(&with_db, DETECT_TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("only database 0"), "{e}");

    let base = redis_base_url();
    let two_singles = RedisSeeds::parse(&format!("{base},{base}/1")).unwrap();
    let e = detect_mode(&two_singles, DETECT_TIMEOUT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("not a Redis Cluster"), "{e}");
}

/// Runs `flashsale check --sale <id>` on the cluster seed list; (status, stdout + stderr).
fn check(prefix: &str, database_url: &str, sale_id: i64) -> (i32, String) {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["check", "--sale", &sale_id.to_string()])
            .args(["--redis-key-prefix", prefix])
            .env("REDIS_URL", cluster_url())
            .env("DATABASE_URL", database_url)
            .env("FLASHSALE_LOG", "warn"),
        Duration::from_secs(60),
    );
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A server whose Redis is the shared cluster, behind a key prefix of its own.
fn server_on_cluster(opts: Opts) -> TestServer {
    TestServer::start(opts.on_cluster(&cluster_url()))
}

/// The current sale's id, from Postgres (the earliest the rotator created).
fn current_sale(s: &TestServer) -> i64 {
    s.wait_pg_i64("SELECT count(*) FROM sales", &[], 2);
    s.pg_i64("SELECT min(id) FROM sales", &[])
}

/// The rotator and the writer of a server on the cluster prepare the sale
/// on the master that owns its slot (init_sale, index), drain its outbox
/// into Postgres, and `flashsale check` on the seed list reads the sale
/// there, user keys (SCAN) included: consistent, and a user count with no
/// purchase behind it is found.
#[test]
fn check_reads_a_sale_on_the_cluster() {
    cluster_seeds();
    let s = server_on_cluster(Opts::default().items(20).limit(5));
    let prefix = s.key_prefix();
    let sale = current_sale(&s);
    let keys = Keys::new(&prefix).unwrap();
    let mut con = s.redis();

    // The rotator's work, on the cluster.
    eventually(
        Duration::from_secs(20),
        "the sale's meta on the cluster",
        || {
            redis::cmd("HGET")
                .arg(keys.meta(sale))
                .arg("items")
                .query::<Option<u32>>(&mut con)
                .ok()
                .flatten()
                == Some(20)
        },
    );
    let index: std::collections::HashMap<i64, String> = redis::cmd("HGETALL")
        .arg(keys.sale_index())
        .query(&mut con)
        .unwrap();
    assert!(
        index.values().any(|e| e.starts_with(&format!("{sale},"))),
        "sale {sale} in the index {}: {index:?}",
        keys.sale_index()
    );

    // Two purchases, as purchase.lua leaves them: sold bits, counters, outbox.
    let mut pg = s.pg();
    pg.execute("INSERT INTO users (id) VALUES (7), (8)", &[])
        .unwrap();
    for (n, user) in [(3u32, 7i64), (5, 8)] {
        let item = item_id(sale, n);
        let code = random_code(sale);
        let _: i64 = redis::cmd("SETBIT")
            .arg(keys.sold(sale))
            .arg(n - 1)
            .arg(1)
            .query(&mut con)
            .unwrap();
        let _: i64 = redis::cmd("HINCRBY")
            .arg(keys.meta(sale))
            .arg("sold")
            .arg(1)
            .query(&mut con)
            .unwrap();
        let _: i64 = redis::cmd("HSET")
            .arg(keys.users(sale))
            .arg(user)
            .arg("1:0::")
            .query(&mut con)
            .unwrap();
        let _: String = redis::cmd("XADD")
            .arg(keys.outbox(sale))
            .arg("*")
            .arg("item")
            .arg(item)
            .arg("user")
            .arg(user)
            .arg("code")
            .arg(&code)
            .arg("at")
            .arg(now_ms())
            .query(&mut con)
            .unwrap();
    }
    // The writer drains the outbox from the cluster into Postgres.
    s.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE sale_id = $1",
        &[&sale],
        2,
    );
    eventually(Duration::from_secs(20), "the outbox trimmed", || {
        redis::cmd("XLEN")
            .arg(keys.outbox(sale))
            .query::<i64>(&mut con)
            .ok()
            == Some(0)
    });

    let (status, out) = check(&prefix, &s.database_url(), sale);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("2 sold in redis, 2 purchase rows"), "{out}");

    // A count in Redis that no purchase backs: the checker finds the user
    // in the sale's users hash on the sale's master.
    let _: i64 = redis::cmd("HSET")
        .arg(keys.users(sale))
        .arg(99)
        .arg("1:0::")
        .query(&mut con)
        .unwrap();
    let (status, out) = check(&prefix, &s.database_url(), sale);
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains("user 99: redis counts 1 bought, no purchase recorded"),
        "{out}"
    );
}

/// `flashsale check` with a database number on a cluster seed: a clear
/// error, exit 2.
#[test]
fn check_refuses_a_database_number_on_the_cluster() {
    cluster_seeds();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["check", "--sale", "1"])
            .env("REDIS_URL", "redis://127.0.0.1:7000/2")
            .env("DATABASE_URL", pg_admin_url())
            .env("FLASHSALE_LOG", "warn"),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("only database 0"), "{err}");
}

/// A server started on a cluster seed with a database number refuses at
/// once with a clear error (a cluster has only database 0), and so does a
/// server given several seeds of a single node.
#[test]
fn a_server_refuses_seeds_that_contradict_the_mode() {
    let first = cluster_seeds().first().clone();
    let with_db = format!("redis://{}:{}/1", first.host, first.port);
    let two_singles = format!("{0},{0}/2", redis_base_url());
    for (url, says) in [
        (with_db.as_str(), "only database 0"),
        (two_singles.as_str(), "not a Redis Cluster"),
    ] {
        let out = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_flashsale"))
                .env("FLASHSALE_LISTEN", "127.0.0.1:0")
                .env("REDIS_URL", url)
                .env("DATABASE_URL", pg_admin_url())
                .env("FLASHSALE_LOG", "info"),
            Duration::from_secs(30),
        );
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{url} accepted: {log}");
        assert!(log.contains(says), "{url}: {log}");
    }
}

/// `FLASHSALE_REDIS_WAIT_REPLICAS` above what the masters have: the server
/// says at start, for each master, that its purchases would all answer 503.
#[test]
fn too_few_replicas_for_wait_are_logged_at_start() {
    cluster_seeds();
    let s = server_on_cluster(
        Opts::default()
            .items(5)
            .env("FLASHSALE_REDIS_WAIT_REPLICAS", "2"),
    );
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fewer connected replicas than FLASHSALE_REDIS_WAIT_REPLICAS"))
        .collect();
    let masters = master_urls(&cluster_url());
    assert!(!masters.is_empty());
    for master in &masters {
        let address = master.trim_start_matches("redis://");
        assert!(
            warnings.iter().any(|l| l.contains(address)),
            "no warning for {address}: {warnings:#?}"
        );
    }

    // Enough replicas (one each): no warning.
    let s = server_on_cluster(
        Opts::default()
            .items(5)
            .env("FLASHSALE_REDIS_WAIT_REPLICAS", "1"),
    );
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(!log.contains("fewer connected replicas"), "{log}");
}

/// A script the blocking threads run on a cluster with a shard down (its
/// master and replica dead, so no failover brings it back) still runs on the
/// healthy master that owns its keys, also when that master has never seen
/// it (NOSCRIPT, then EVAL there): loading it on every node first, as
/// `redis::Script::invoke` does on a cluster, fails while any node is down.
#[test]
fn scripts_run_on_their_master_while_another_shard_is_down() {
    let mut rig = ClusterRig::start();
    for node in rig.nodes() {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .query(&mut rig.node_connection(&node))
            .expect("CONFIG SET cluster-require-full-coverage no");
    }
    let dead = rig.masters()[0].clone();
    let dead_replica = rig.replica_of(&dead);
    let key = (1..)
        .map(|sale| Keys::default().meta(sale))
        .find(|key| rig.master_of_slot(rig.keyslot(key)) != dead)
        .unwrap();
    rig.kill9(&dead_replica);
    rig.kill9(&dead);

    let endpoint = RedisEndpoint {
        seeds: RedisSeeds::parse(&rig.seed_url()).unwrap(),
        mode: RedisMode::Cluster,
    };
    let mut con = endpoint
        .connect(Duration::from_secs(1), Duration::from_secs(2))
        .expect("a connection with one shard down");
    let script = Script::new(
        "probe",
        "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])",
    );
    let stored: String = eval(&mut con, &script, std::slice::from_ref(&key), |cmd| {
        cmd.arg("ran");
    })
    .expect("the script runs on its own master");
    assert_eq!(stored, "ran");
}

/// The rotator's index of sales (`{flashsale}:sales`), which a failover can
/// lose like any write, is written again on the next tick for the current
/// and the next sale.
#[test]
fn the_sale_index_comes_back_after_it_was_lost() {
    cluster_seeds();
    let s = server_on_cluster(Opts::default().items(5));
    let keys = Keys::new(&s.key_prefix()).unwrap();
    let sale = current_sale(&s);
    let next = s.pg_i64("SELECT max(id) FROM sales", &[]);
    let mut con = s.redis();
    let indexed = |con: &mut common::cluster::RedisConn| {
        let index: std::collections::HashMap<i64, String> = redis::cmd("HGETALL")
            .arg(keys.sale_index())
            .query(con)
            .unwrap();
        [sale, next]
            .iter()
            .all(|id| index.values().any(|e| e.starts_with(&format!("{id},"))))
    };
    eventually(Duration::from_secs(20), "both sales indexed", || {
        indexed(&mut con)
    });
    let _: i64 = redis::cmd("DEL")
        .arg(keys.sale_index())
        .query(&mut con)
        .unwrap();
    eventually(Duration::from_secs(20), "both sales indexed again", || {
        indexed(&mut con)
    });
}

/// A server on the cluster end to end, the blocking side's part of it: the
/// rotator prepares the sales on their masters, purchases over HTTP reach
/// Postgres through the writer (outbox drained and trimmed on the cluster),
/// `flashsale check` on the seed list is consistent, and once the sale is
/// over the writer closes it (`close_sale.lua` on its master) and deletes its
/// empty outbox; the check still agrees afterwards.
#[test]
fn a_server_on_the_cluster_records_closes_and_checks_its_sales() {
    cluster_seeds();
    let period = 6;
    let s = server_on_cluster(Opts::default().period(period).items(10).limit(5));
    let keys = Keys::new(&s.key_prefix()).unwrap();

    // Three items bought in one sale (a sale that ends on the way: the next).
    let mut bought = None;
    for attempt in 0..5 {
        let sale = s.active_sale();
        let user = 40 + attempt;
        let mut code = String::new();
        for n in 1..=3 {
            let r = s.checkout(user, sale.item(n));
            if r.status != 200 {
                break;
            }
            code = r.str("code");
        }
        if code.is_empty() {
            continue;
        }
        let r = s.purchase(&code);
        if r.status == 200 && r.ids("purchased").len() == 3 {
            bought = Some(sale.id);
            break;
        }
    }
    let sale = bought.expect("three items bought within one sale");
    s.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE sale_id = $1",
        &[&sale],
        3,
    );
    s.assert_consistent(sale);

    let mut con = s.redis();
    eventually(
        Duration::from_secs(period * 3 + 20),
        "the ended sale closed and its outbox deleted",
        || {
            let closed: Option<i64> = redis::cmd("HGET")
                .arg(keys.meta(sale))
                .arg("closed")
                .query(&mut con)
                .unwrap();
            let outbox: i64 = redis::cmd("EXISTS")
                .arg(keys.outbox(sale))
                .query(&mut con)
                .unwrap();
            closed.is_some() && outbox == 0
        },
    );
    s.assert_consistent(sale);
}
