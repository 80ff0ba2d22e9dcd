//! `checkouts` partitioned by day: partitions exist ahead of the clock,
//! partitions past the retention are dropped (and kept with retention 0),
//! rows survive restarts, stray rows in the default partition are moved into
//! their day's partition, and a database of the unpartitioned schema is
//! converted with its rows, by two instances starting at once.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::*;
use flashsale::store::partitions::{Day, create_day};

const DAY_MS: i64 = 86_400_000;

/// The daily partition of the UTC day `days` after today.
fn partition_of(days: i64) -> String {
    Day::of_unix_ms(now_ms() + days * DAY_MS).partition()
}

fn partitions(server: &TestServer) -> Vec<String> {
    let mut pg = server.pg();
    pg.query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = 'checkouts'::regclass ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn count(server: &TestServer, table: &str) -> i64 {
    server.pg_i64(&format!("SELECT count(*) FROM {table}"), &[])
}

/// Checkouts of `users` users (one item each) through the API, waited for in Postgres.
fn record_checkouts(server: &TestServer, users: std::ops::Range<i64>) {
    let sale = server.active_sale();
    let before = count(server, "checkouts");
    let n = users.end - users.start;
    for user in users {
        let r = server.checkout(user, sale.item(1 + (user % 50) as u32));
        assert_eq!(r.status, 200, "{r:?}");
    }
    server.wait_pg_i64("SELECT count(*) FROM checkouts", &[], before + n);
}

fn with_retention(days: u32) -> Opts {
    Opts::default().env("FLASHSALE_CHECKOUTS_RETENTION_DAYS", &days.to_string())
}

/// Creates the partition of a past day with the server's own code, as the
/// server would have made it then, holding one row; returns its name.
fn add_old_partition(server: &TestServer, day: Day) -> String {
    let mut pg = server.pg();
    assert!(create_day(&mut pg, day).unwrap());
    let noon = UNIX_EPOCH + Duration::from_secs(day.0 as u64 * 86_400 + 43_200);
    pg.execute(
        "INSERT INTO checkouts (sale_id, user_id, item_id, code, outcome, created_at)
         VALUES (1, 1, 1, NULL, 'item_sold', $1)",
        &[&noon],
    )
    .unwrap();
    day.partition()
}

#[test]
fn partitions_exist_ahead_of_the_clock_and_take_the_rows() {
    let server = TestServer::start(Opts::default());
    let have = partitions(&server);
    for days in 0..=2 {
        let name = partition_of(days);
        assert!(have.contains(&name), "{name} missing from {have:?}");
    }
    assert!(have.contains(&"checkouts_default".to_string()), "{have:?}");

    record_checkouts(&server, 1..41);
    let today = partition_of(0);
    assert_eq!(count(&server, &today), 40, "rows belong in {today}");
    assert_eq!(count(&server, "checkouts_default"), 0);
    // the contract's columns, through the parent table
    let outcomes = server.pg_i64(
        "SELECT count(*) FROM checkouts WHERE outcome = 'ok' AND code IS NOT NULL
            AND sale_id > 0 AND user_id > 0 AND item_id > 0 AND created_at <= now()",
        &[],
    );
    assert_eq!(outcomes, 40);
}

#[test]
fn partitions_past_the_retention_are_dropped_and_retention_zero_keeps_them() {
    let mut server = TestServer::start(with_retention(0));
    let old = add_old_partition(&server, Day(18_262)); // 2020-01-01
    assert_eq!(old, "checkouts_20200101");
    record_checkouts(&server, 1..21);

    // retention 0: the old partition outlives a restart, rows and all
    server.restart(with_retention(0));
    assert!(partitions(&server).contains(&old));
    assert_eq!(count(&server, &old), 1);

    // retention 1 day: it goes; today's rows stay
    server.restart(with_retention(1));
    eventually(
        Duration::from_secs(20),
        "the 2020-01-01 partition dropped",
        || !partitions(&server).contains(&old),
    );
    assert_eq!(count(&server, "checkouts"), 20);
    assert!(partitions(&server).contains(&partition_of(0)));
}

#[test]
fn rows_of_retained_partitions_survive_restarts() {
    let mut server = TestServer::start(with_retention(1));
    let name = add_old_partition(&server, Day::of_unix_ms(now_ms() - DAY_MS));
    record_checkouts(&server, 1..31);
    let total = count(&server, "checkouts");
    assert_eq!(total, 31);

    server.restart(with_retention(1));
    record_checkouts(&server, 100..110);
    server.restart(with_retention(1));
    assert_eq!(count(&server, "checkouts"), total + 10);
    assert_eq!(count(&server, &name), 1, "yesterday is within 1 day");
}

#[test]
fn rows_caught_by_the_default_partition_move_into_their_day() {
    let mut server = TestServer::start(Opts::default());
    let ahead = partition_of(2);
    let mut pg = server.pg();
    pg.batch_execute(&format!("DROP TABLE {ahead}")).unwrap();
    // a row for a day without its partition is kept, in the default one
    let at = UNIX_EPOCH + Duration::from_millis((now_ms() + 2 * DAY_MS) as u64);
    pg.execute(
        "INSERT INTO checkouts (sale_id, user_id, item_id, code, outcome, created_at)
         VALUES (1, 2, 3, NULL, 'item_not_found', $1)",
        &[&at],
    )
    .unwrap();
    assert_eq!(count(&server, "checkouts_default"), 1);

    server.restart(Opts::default());
    eventually(
        Duration::from_secs(20),
        "the dropped partition created again",
        || partitions(&server).contains(&ahead),
    );
    assert_eq!(
        count(&server, &ahead),
        1,
        "the stray row moved into {ahead}"
    );
    assert_eq!(count(&server, "checkouts_default"), 0);
}

/// The schema before partitioning (version 1), with rows of the last days.
fn version_1_with_rows(pg: &mut postgres::Client) {
    pg.batch_execute(include_str!("../migrations/0001_init.sql"))
        .unwrap();
    pg.batch_execute(
        "CREATE TABLE schema_migrations (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO schema_migrations (version) VALUES (1);
         INSERT INTO checkouts (sale_id, user_id, item_id, code, outcome, created_at)
         SELECT 1, g, g, CASE WHEN g % 2 = 0 THEN 'c' || g END,
                CASE WHEN g % 2 = 0 THEN 'ok' ELSE 'item_sold' END,
                now() - g * interval '10 seconds'
           FROM generate_series(1, 5000) g;",
    )
    .unwrap();
}

/// The version of the newest file in migrations/ (`NNNN_name.sql`).
fn latest_migration() -> i64 {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("read migrations/")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.split('_').next()?.parse::<i64>().ok()
        })
        .max()
        .expect("a migration")
}

#[test]
fn a_version_1_database_keeps_its_rows_when_two_instances_convert_it() {
    let opts = Opts::default();
    let (redis_space, db_name) = TestServer::prepare_data(&opts, version_1_with_rows);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| TestServer::start_on(opts.clone(), &redis_space, &db_name, true));
        let b = s.spawn(|| TestServer::start_on(opts.clone(), &redis_space, &db_name, false));
        (a.join().unwrap(), b.join().unwrap())
    });
    let kind = a.pg_i64(
        "SELECT count(*) FROM pg_class WHERE relname = 'checkouts' AND relkind = 'p'",
        &[],
    );
    assert_eq!(kind, 1, "checkouts is partitioned");
    assert_eq!(count(&a, "checkouts"), 5000);
    assert_eq!(
        a.pg_i64(
            "SELECT count(*) FROM checkouts WHERE outcome = 'ok' AND code IS NOT NULL",
            &[]
        ),
        2500
    );
    let have = partitions(&a);
    let old: Vec<&String> = have
        .iter()
        .filter(|p| p.starts_with("checkouts_before_"))
        .collect();
    assert_eq!(old.len(), 1, "{have:?}");
    assert_eq!(count(&a, old[0]), 5000);
    assert_eq!(
        a.pg_i64("SELECT max(version)::bigint FROM schema_migrations", &[]),
        latest_migration(),
        "every migration applied"
    );

    record_checkouts(&a, 1..11);
    record_checkouts(&b, 11..21);
    assert_eq!(count(&a, "checkouts"), 5020);
    assert_eq!(count(&a, "checkouts_default"), 0);
    drop(b);
}
