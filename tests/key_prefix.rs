//! `REDIS_KEY_PREFIX`: two deployments on one Redis database, each with its
//! own Postgres, share nothing (the same sale id, the same user and item ids,
//! their own counts, purchases and codes), and every key a prefixed server
//! writes starts with its prefix. A prefix with a brace is refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::services::run_bounded;
use common::*;

fn scan(con: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(con).unwrap();
    keys.sort();
    keys
}

#[test]
fn two_prefixes_on_one_redis_database_share_nothing() {
    let a = TestServer::start(
        Opts::default()
            .items(20)
            .limit(5)
            .env("REDIS_KEY_PREFIX", "shop-a:"),
    );
    let b = TestServer::start(
        Opts::default()
            .items(30)
            .limit(5)
            .env("REDIS_KEY_PREFIX", "shop-b:")
            .env("REDIS_URL", &a.redis_url()),
    );
    assert_eq!(a.redis_url(), b.redis_url());
    let (sa, sb) = (a.active_sale(), b.active_sale());
    // Both deployments number their sales alike: the same sale id, in one
    // Redis database, must not collide.
    assert_eq!(sa.id, sb.id, "each deployment's first sale");
    assert_eq!((sa.items_total, sb.items_total), (20, 30));

    // The same user buys the same item in both: two sales, two purchases.
    a.checkout(7, sa.item(1)).assert_status(200);
    let code_a = a.checkout(7, sa.item(2)).str("code");
    let code_b = b.checkout(7, sb.item(1)).str("code");
    let r = a.purchase(&code_a);
    r.assert_status(200);
    assert_eq!(r.ids("purchased"), vec![sa.item(1), sa.item(2)], "{r}");
    // A's code is nobody's in B, and the other way round.
    b.purchase(&code_a).assert_error(404, "unknown_code");
    a.purchase(&code_b).assert_error(404, "unknown_code");
    let r = b.purchase(&code_b);
    r.assert_status(200);
    assert_eq!(r.ids("purchased"), vec![sb.item(1)], "{r}");
    assert_eq!(a.active_sale().items_sold, 2);
    assert_eq!(b.active_sale().items_sold, 1);
    // Item 2 is sold in A only.
    a.checkout(8, sa.item(2)).assert_error(409, "item_sold");
    b.checkout(8, sb.item(2)).assert_status(200);

    a.wait_pg_i64("SELECT count(*) FROM purchases", &[], 2);
    b.wait_pg_i64("SELECT count(*) FROM purchases", &[], 1);

    // Every key in the database is one of the two deployments', and both
    // have their sale, its outbox path and their global index behind their
    // own prefix.
    let mut con = redis_connect(&a.redis_url());
    let keys = scan(&mut con);
    let strays: Vec<&String> = keys
        .iter()
        .filter(|k| !k.starts_with("shop-a:") && !k.starts_with("shop-b:"))
        .collect();
    assert!(strays.is_empty(), "keys without a prefix: {strays:?}");
    for prefix in ["shop-a:", "shop-b:"] {
        for key in [
            format!("{prefix}{{sale:{}}}:meta", sa.id),
            format!("{prefix}{{sale:{}}}:sold", sa.id),
            format!("{prefix}{{sale:{}}}:users", sa.id),
            format!("{prefix}{{flashsale}}:sales"),
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    // `flashsale check` reads each deployment behind its prefix.
    a.assert_consistent(sa.id);
    b.assert_consistent(sb.id);
}

#[test]
fn a_prefix_with_a_brace_is_refused() {
    for prefix in ["{shop}", "shop{", "}"] {
        let out = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_flashsale"))
                .args(["--redis-key-prefix", prefix])
                .env("FLASHSALE_LISTEN", "127.0.0.1:1"),
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{prefix:?} was accepted");
        assert!(
            stderr.contains("may not contain '{' or '}'"),
            "{prefix:?}: {stderr}"
        );
    }
}
