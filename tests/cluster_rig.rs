//! The private Redis Cluster of the failover and migration tests
//! (`common::cluster::ClusterRig`) does what they rely on: it forms 3 masters
//! with a replica each, a killed master's replica takes over its slots with
//! the acknowledged writes, the killed node comes back as a replica, and a
//! slot moves with its keys step by step while a cluster client keeps reading
//! and writing it.

mod common;

use std::time::Duration;

use common::cluster::{ClusterRig, MigrationStep};
use common::*;

fn get(con: &mut impl redis::ConnectionLike, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(con)
        .unwrap_or_else(|e| panic!("GET {key}: {e}"))
}

fn set(con: &mut impl redis::ConnectionLike, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(con)
        .unwrap_or_else(|e| panic!("SET {key}: {e}"));
}

#[test]
fn a_killed_master_is_replaced_by_its_replica_and_comes_back_as_a_replica() {
    let mut rig = ClusterRig::start();
    let masters = rig.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let replicas: Vec<_> = masters.iter().map(|m| rig.replica_of(m)).collect();
    assert_eq!(rig.nodes().len(), 6);
    assert_eq!(rig.seed_url().split(',').count(), 6);

    // Keys on every master, through the cluster client.
    let mut con = rig.connection();
    let keys: Vec<String> = (0..30).map(|i| format!("key:{i}")).collect();
    for k in &keys {
        set(&mut con, k, k);
    }
    let slot = rig.sale_slot(1);
    assert_eq!(slot, rig.keyslot("{sale:1}:meta"));
    let tagged = "{sale:1}:meta";
    set(&mut con, tagged, "before the kill");
    let old = rig.master_of_slot(slot);
    // The write reached the replica before the master dies.
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut rig.node_connection(&old))
        .expect("WAIT");
    assert!(acked >= 1, "WAIT 1 on {}: {acked}", old.port);
    let replica = rig.replica_of(&old);

    let pid = rig.pid(&old).expect("the master runs");
    rig.kill9(&old);
    assert_eq!(rig.pid(&old), None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} still exists"
    );
    let promoted = rig.wait_promoted(slot, &old);
    assert_eq!(
        promoted, replica,
        "the dead master's own replica takes over"
    );
    // The cluster client follows the new master, and nothing acknowledged is lost.
    let mut last = None;
    let followed = wait_until(Duration::from_secs(30), || {
        let got = redis::cmd("GET")
            .arg(tagged)
            .query::<Option<String>>(&mut con);
        let ok = got
            .as_ref()
            .is_ok_and(|v| v.as_deref() == Some("before the kill"));
        last = Some(got);
        ok
    });
    assert!(
        followed,
        "the cluster client does not read the key from the promoted replica: last {last:?}"
    );
    set(&mut con, tagged, "after the failover");
    for k in &keys {
        assert_eq!(get(&mut con, k).as_deref(), Some(k.as_str()));
    }

    rig.restart(&old);
    rig.wait_healthy();
    assert_eq!(rig.master_of_slot(slot), promoted);
    assert_eq!(
        rig.replica_of(&promoted),
        old,
        "the old master is its replica now"
    );
    assert_eq!(rig.masters().len(), 3);
    for (m, r) in masters.iter().zip(&replicas) {
        if *m != old {
            assert_eq!(rig.replica_of(m), *r);
        }
    }
    assert_eq!(get(&mut con, tagged).as_deref(), Some("after the failover"));
}

#[test]
fn a_slot_moves_with_its_keys_step_by_step_while_a_client_uses_it() {
    let rig = ClusterRig::start();
    let slot = rig.sale_slot(7);
    let from = rig.master_of_slot(slot);
    let to = rig.another_master(&from);
    let mut con = rig.connection();
    let keys: Vec<String> = (0..25).map(|i| format!("{{sale:7}}:k{i}")).collect();
    for k in &keys {
        set(&mut con, k, k);
    }

    let mut steps: Vec<usize> = Vec::new();
    let mut written = Vec::new();
    rig.migrate_slot_with(slot, &to, 10, |step: &MigrationStep| {
        assert_eq!((step.slot, &step.from, &step.to), (slot, &from, &to));
        steps.push(step.keys_moved);
        // Mid-migration every key reads through (on the source or, after
        // ASK, on the target), and a new key is written (to the target).
        for k in &keys {
            assert_eq!(
                get(&mut con, k).as_deref(),
                Some(k.as_str()),
                "step {step:?}"
            );
        }
        let new = format!("{{sale:7}}:new{}", step.keys_moved);
        set(&mut con, &new, "new");
        written.push(new);
    });
    assert_eq!(steps, vec![0, 10, 20, 25], "keys moved after each step");

    assert_eq!(rig.master_of_slot(slot), to);
    assert_eq!(rig.keys_in_slot(&from, slot), 0, "keys left on the source");
    assert_eq!(
        rig.keys_in_slot(&to, slot) as usize,
        keys.len() + written.len()
    );
    for k in keys.iter().chain(&written) {
        assert!(get(&mut con, k).is_some(), "{k} lost in the move");
    }
    // A fresh client finds the slot on its new master.
    let mut fresh = rig.connection();
    assert_eq!(get(&mut fresh, &keys[0]).as_deref(), Some(keys[0].as_str()));
    rig.wait_healthy();
}

#[test]
fn a_test_servers_prefix_on_the_shared_cluster_is_its_own_and_is_cleared() {
    let url = common::cluster::shared_cluster_url();
    let (a, b) = (
        common::cluster::alloc_prefix(&url),
        common::cluster::alloc_prefix(&url),
    );
    assert_ne!(a, b);
    let mut con = common::cluster::RedisConn::open(&url);
    assert!(matches!(con, common::cluster::RedisConn::Cluster { .. }));
    // Keys of both prefixes in many slots (so on every master).
    let keys = |prefix: &str| -> Vec<String> {
        (0..40)
            .map(|i| format!("{prefix}{{sale:{i}}}:meta"))
            .collect()
    };
    for k in keys(&a).iter().chain(&keys(&b)) {
        set(&mut con, k, "x");
    }
    common::cluster::delete_prefixed(&url, &a);
    for k in keys(&a) {
        assert_eq!(get(&mut con, &k), None, "{k} left behind");
    }
    for k in keys(&b) {
        assert_eq!(
            get(&mut con, &k).as_deref(),
            Some("x"),
            "{k} of the other prefix"
        );
    }
    common::cluster::delete_prefixed(&url, &b);
}
