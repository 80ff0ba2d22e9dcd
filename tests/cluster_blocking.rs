//! The blocking side on a Redis Cluster: `REDIS_URL` seed lists and mode
//! detection, `flashsale check` on a cluster seed list, and the startup
//! rules (a cluster has only database 0). Runs against the shared local
//! cluster (`scripts/services.sh cluster-start`), seeds from
//! `TEST_REDIS_CLUSTER_URL`; every test writes under its own key prefix and
//! never stops a node. An unreachable cluster fails the tests.

mod common;

use std::time::Duration;

use flashsale::error::ErrorKind;
use flashsale::redis_client::seeds::{RedisMode, RedisSeeds, detect_mode};

use common::*;

const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's seed list.
fn cluster_url() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002".to_string()
        })
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
