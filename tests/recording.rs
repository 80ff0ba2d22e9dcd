//! How a purchase reaches Postgres when Postgres will not take it as it
//! comes: a row it references is missing (retried until it is there, never
//! given up), or its item is already recorded with another code (a double
//! sale: moved to the sale's dead letter, and visible in the metrics, in
//! `/health`, in the log and to `flashsale check`). Black-box, against the
//! real binary on its own Redis and Postgres databases.

mod common;

use std::time::Duration;

use common::*;

/// How long the writer may take to get somewhere.
const SETTLE: Duration = Duration::from_secs(20);

/// `GET /metrics`, one sample by its full name (labels included).
fn metric(server: &TestServer, name: &str) -> Option<f64> {
    let text = server.get("/metrics").text();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn xlen(server: &TestServer, key: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut server.redis())
        .expect("XLEN")
}

/// Checks out one item for `user` and buys it; returns the code.
fn buy(server: &TestServer, user: i64, item: i64) -> String {
    let r = server.checkout(user, item);
    r.assert_status(200);
    let code = r.str("code");
    let r = server.purchase(&code);
    r.assert_status(200);
    assert_eq!(r.ids("purchased"), vec![item], "{r}");
    code
}

/// A purchase whose item row is missing in Postgres (a foreign key
/// violation) stays in the outbox and is retried; once the row is back it
/// is recorded. It never reaches the dead letter.
#[test]
fn a_purchase_missing_its_parent_row_is_retried_until_recorded() {
    let server = TestServer::start(Opts::default().items(50));
    let sale = server.active_sale();
    let item = sale.item(7);
    let mut pg = server.pg();
    let row = pg
        .query_one(
            "DELETE FROM items WHERE id = $1 RETURNING name, image_url",
            &[&item],
        )
        .expect("delete the item row");
    let (name, image_url): (String, String) = (row.get(0), row.get(1));

    let code = buy(&server, 41, item);
    let outbox = format!("{{sale:{}}}:outbox", sale.id);
    let dead = format!("{{sale:{}}}:outbox:dead", sale.id);
    eventually(SETTLE, "the writer retries the purchase", || {
        metric(&server, "flashsale_outbox_retries_total").is_some_and(|n| n >= 2.0)
    });
    assert_eq!(
        xlen(&server, &outbox),
        1,
        "the purchase waits in the outbox"
    );
    assert_eq!(xlen(&server, &dead), 0, "nothing in the dead letter");
    assert_eq!(
        server.pg_i64("SELECT count(*) FROM purchases", &[]),
        0,
        "no purchase row without its item"
    );
    let r = server.get("/health");
    r.assert_status(200);
    assert_eq!(r.i64("dead_letters"), 0, "{r}");

    pg.execute(
        "INSERT INTO items (id, sale_id, name, image_url) VALUES ($1, $2, $3, $4)",
        &[&item, &sale.id, &name, &image_url],
    )
    .expect("put the item row back");
    server.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE item_id = $1 AND user_id = 41 AND code = $2",
        &[&item, &code],
        1,
    );
    eventually(SETTLE, "the outbox drained", || xlen(&server, &outbox) == 0);
    assert_eq!(xlen(&server, &dead), 0, "nothing in the dead letter");
    server.assert_consistent(sale.id);
}

/// Postgres already records an item as bought with another code: the
/// purchase Redis sold is not silently dropped by `ON CONFLICT DO NOTHING`
/// but moved to the sale's dead letter, counted, logged, named by /health
/// and reported by `flashsale check`. A replay of a recorded purchase (same
/// code) stays a quiet no-op.
#[test]
fn a_double_sale_refused_by_postgres_is_never_silent() {
    let server = TestServer::start(Opts::default().items(50));
    let sale = server.active_sale();
    let mut pg = server.pg();

    // A recorded purchase, replayed through the outbox: no double sale.
    let item = sale.item(3);
    let code = buy(&server, 51, item);
    server.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE item_id = $1",
        &[&item],
        1,
    );
    let _: String = redis::cmd("XADD")
        .arg(format!("{{sale:{}}}:outbox", sale.id))
        .arg("*")
        .arg(&[
            "item",
            &item.to_string(),
            "user",
            "51",
            "code",
            &code,
            "at",
            "1700000000000",
        ])
        .query(&mut server.redis())
        .expect("XADD replay");

    // Another code already holds the item in Postgres.
    let taken = sale.item(9);
    pg.batch_execute("INSERT INTO users (id) VALUES (999)")
        .expect("insert user");
    pg.execute(
        "INSERT INTO purchases (sale_id, item_id, user_id, code, created_at) \
         VALUES ($1, $2, 999, 'another-code', now())",
        &[&sale.id, &taken],
    )
    .expect("insert the conflicting purchase");
    let doubled = buy(&server, 52, taken);

    let dead = format!("{{sale:{}}}:outbox:dead", sale.id);
    eventually(SETTLE, "the double sale in the dead letter", || {
        xlen(&server, &dead) == 1
    });
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&dead)
        .arg("-")
        .arg("+")
        .query(&mut server.redis())
        .expect("XRANGE dead letter");
    let fields = &entries[0].1;
    let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    assert_eq!(field("code"), Some(doubled.as_str()), "{fields:?}");
    assert_eq!(field("user"), Some("52"), "{fields:?}");
    assert_eq!(field("reason"), Some("double_sale"), "{fields:?}");
    eventually(SETTLE, "the outbox drained", || {
        xlen(&server, &format!("{{sale:{}}}:outbox", sale.id)) == 0
    });

    assert_eq!(
        metric(
            &server,
            "flashsale_outbox_dead_lettered_total{reason=\"double_sale\"}"
        ),
        Some(1.0)
    );
    eventually(SETTLE, "the dead-letter gauge and /health count it", || {
        let r = server.get("/health");
        metric(&server, "flashsale_outbox_dead_letters") == Some(1.0)
            && r.status == 200
            && r.i64("dead_letters") == 1
            && r.str("status") == "ok"
    });
    assert!(
        server.log_tail(200).contains("double sale"),
        "no error logged:\n{}",
        server.log_tail(30)
    );
    // Postgres keeps the first record; the sale Redis made is reported.
    assert_eq!(
        server.pg_i64(
            "SELECT count(*) FROM purchases WHERE item_id = $1 AND code = 'another-code'",
            &[&taken]
        ),
        1
    );
    let (status, report) = server.check(sale.id);
    assert_eq!(status, Some(1), "check must find differences:\n{report}");
    assert!(
        report.contains("1 purchase(s) in the dead letter")
            && report.contains("reason=double_sale"),
        "{report}"
    );
    assert_eq!(metric(&server, "flashsale_double_sales_total"), Some(1.0));
    // Kept in Postgres with both buyers, so that losing Redis's dead letter
    // (in the next failover) loses no report.
    assert_eq!(
        server.pg_i64(
            "SELECT count(*) FROM double_sales WHERE sale_id = $1 AND item_id = $2 \
             AND user_id = 52 AND code = $3 AND recorded_user_id = 999 \
             AND recorded_code = 'another-code'",
            &[&sale.id, &taken, &doubled]
        ),
        1
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&dead)
        .query(&mut server.redis())
        .expect("DEL dead letter");
    let (status, report) = server.check(sale.id);
    assert_eq!(status, Some(1), "check must find differences:\n{report}");
    assert!(
        report.contains(&format!(
            "double sale: item {taken} was sold to user 52 (code {doubled}), answered 200, but postgres records it for user 999 (code another-code)"
        )),
        "{report}"
    );
}

/// `(distinct users, users with a users row whose first_seen_at is their
/// first checkout)` among the checkouts of users `from..to`.
fn users_recorded(server: &TestServer, from: i64, to: i64) -> (i64, i64) {
    let row = server
        .pg()
        .query_one(
            "SELECT count(*), count(u.id) FILTER (WHERE u.first_seen_at = c.first)
               FROM (SELECT user_id, min(created_at) AS first FROM checkouts
                      WHERE user_id >= $1 AND user_id < $2 GROUP BY user_id) c
               LEFT JOIN users u ON u.id = c.user_id",
            &[&from, &to],
        )
        .expect("users of the checkouts");
    (row.get(0), row.get(1))
}

/// Checks out `users` distinct users from `first` on, two items each, and
/// waits until every checkout is a row in `checkouts`.
fn checkout_crowd(server: &TestServer, first: i64, users: i64) {
    let sale = server.active_sale();
    let mut conn = server.connect();
    for k in 0..users {
        for n in [1 + k % 50, 51 + k % 50] {
            conn.checkout(first + k, sale.item(n as u32))
                .assert_status(200);
        }
    }
    server.wait_pg_i64(
        "SELECT count(*) FROM checkouts WHERE user_id >= $1 AND user_id < $2",
        &[&first, &(first + users)],
        2 * users,
    );
}

/// The writer commits a crowd's new users apart from their checkouts, in
/// bigger batches: each gets its one users row, with its first checkout's
/// time, within the users flush delay, and the writer's backlog mark goes.
#[test]
fn every_user_of_a_checkout_crowd_gets_a_users_row() {
    let server = TestServer::start(Opts::default());
    checkout_crowd(&server, 7_000_001, 400);
    eventually(SETTLE, "every user of the crowd in users", || {
        users_recorded(&server, 7_000_001, 7_000_401) == (400, 400)
    });
    eventually(SETTLE, "the writer's users_backlog mark deleted", || {
        server.pg_i64("SELECT count(*) FROM users_backlog", &[]) == 0
    });
}

/// With a users flush delay longer than the test, the users of committed
/// checkouts wait in the writer (and its backlog mark is in Postgres); a
/// clean shutdown commits them before the process exits.
#[test]
fn a_clean_shutdown_commits_the_users_the_writer_holds() {
    let mut server =
        TestServer::start(Opts::default().env("FLASHSALE_WRITER_USERS_FLUSH_MS", "600000"));
    checkout_crowd(&server, 7_100_001, 300);
    assert_eq!(
        users_recorded(&server, 7_100_001, 7_100_301),
        (300, 0),
        "the users wait for their flush"
    );
    assert_eq!(
        server.pg_i64("SELECT count(*) FROM users_backlog", &[]),
        1,
        "the writer's backlog mark covers them"
    );
    let status = server
        .terminate(Duration::from_secs(30))
        .expect("the server exits within 30 s of SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(users_recorded(&server, 7_100_001, 7_100_301), (300, 300));
    assert_eq!(server.pg_i64("SELECT count(*) FROM users_backlog", &[]), 0);
}

/// A writer killed (SIGKILL) with users of committed checkouts not yet in
/// `users` leaves its backlog mark; the next instance finds it stale and
/// inserts the users of the checkouts it covers, each with its first time.
#[test]
fn users_a_killed_writer_held_are_inserted_by_the_next_instance() {
    let held = Opts::default().env("FLASHSALE_WRITER_USERS_FLUSH_MS", "600000");
    let mut server = TestServer::start(held.clone());
    checkout_crowd(&server, 7_200_001, 300);
    assert_eq!(users_recorded(&server, 7_200_001, 7_200_301), (300, 0));
    assert_eq!(server.pg_i64("SELECT count(*) FROM users_backlog", &[]), 1);
    server.restart(held.env("FLASHSALE_USERS_BACKLOG_STALE_SECS", "1"));
    eventually(SETTLE, "the killed writer's users inserted", || {
        users_recorded(&server, 7_200_001, 7_200_301) == (300, 300)
    });
    eventually(SETTLE, "its backlog mark deleted", || {
        server.pg_i64("SELECT count(*) FROM users_backlog", &[]) == 0
    });
}

/// The writer inserts a second's users by `MERGE` (an anti-join, then plain
/// inserts). Another transaction inserting one of them meanwhile makes that
/// a unique violation: the writer retries the batch with `ON CONFLICT DO
/// NOTHING`, and every user gets its row, none twice.
#[test]
fn users_inserted_meanwhile_by_another_transaction_are_not_a_failure() {
    let mut server =
        TestServer::start(Opts::default().env("FLASHSALE_WRITER_USERS_FLUSH_MS", "600000"));
    checkout_crowd(&server, 7_300_001, 200);
    assert_eq!(users_recorded(&server, 7_300_001, 7_300_201), (200, 0));
    // Another writer's insert of one of them, not yet committed: the
    // writer's MERGE does not see it and waits on its key.
    let mut other = server.pg();
    let mut tx = other.transaction().expect("BEGIN");
    tx.execute(
        "INSERT INTO users (id, first_seen_at) VALUES (7300100, now())",
        &[],
    )
    .expect("insert one of the crowd's users");
    // A clean shutdown commits the users the writer holds.
    common::services::signal(server.pid(), common::services::SIGTERM);
    std::thread::sleep(Duration::from_secs(1));
    tx.commit().expect("COMMIT");
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits within 30 s of SIGTERM");
    assert!(status.success(), "{status}");
    let log = server.log_tail(200);
    assert!(
        log.contains("retried with ON CONFLICT"),
        "the MERGE did not meet the other insert:\n{log}"
    );
    let (users, first_time_right) = users_recorded(&server, 7_300_001, 7_300_201);
    assert_eq!(users, 200);
    assert_eq!(
        first_time_right, 199,
        "every user but the one inserted meanwhile has its first checkout's time"
    );
    assert_eq!(
        server.pg_i64(
            "SELECT count(*) FROM users WHERE id >= 7300001 AND id < 7300201",
            &[]
        ),
        200
    );
}

/// The network fails at the worst moment: a checkout batch's `COMMIT` (the
/// one that also writes the writer's backlog mark) reaches Postgres and
/// commits, and the connection is cut before the answer gets back. The
/// writer cannot tell from the error whether the batch is in: it asks
/// Postgres (the transaction's status) before writing it again, so every
/// checkout is one row, not two, and every user one `users` row.
#[test]
fn a_checkout_batch_whose_commit_answer_was_lost_is_recorded_once() {
    let opts = Opts::default();
    let (space, db) = TestServer::prepare_data(&opts, |_| {});
    let admin: postgres::Config = pg_admin_url().parse().expect("TEST_DATABASE_URL");
    let postgres::config::Host::Tcp(host) = &admin.get_hosts()[0] else {
        panic!("TEST_DATABASE_URL must name a TCP host");
    };
    let target = format!(
        "{host}:{}",
        admin.get_ports().first().copied().unwrap_or(5432)
    );
    let proxy = common::pg_proxy::CommitCuttingProxy::start(target.clone());
    let url = pg_url_for(&db).replacen(&target, &format!("127.0.0.1:{}", proxy.port), 1);
    assert!(url.contains(&format!(":{}/", proxy.port)), "{url}");
    let server = TestServer::start_on(opts.env("DATABASE_URL", &url), &space, &db, true);

    proxy.arm();
    let sale = server.active_sale();
    let mut conn = server.connect();
    let users = 40;
    for k in 0..users {
        conn.checkout(7_400_001 + k, sale.item(1 + k as u32))
            .assert_status(200);
    }
    eventually(SETTLE, "the proxy cut a commit's answer", || {
        proxy.cuts() == 1
    });
    // The writer keeps its records in order: once a later checkout is a
    // row, whatever it held before it is settled.
    let later = 7_400_001 + users;
    conn.checkout(later, sale.item(100)).assert_status(200);
    server.wait_pg_i64(
        "SELECT count(*) FROM checkouts WHERE user_id = $1",
        &[&later],
        1,
    );
    assert_eq!(
        server.pg_i64(
            "SELECT count(*) FROM checkouts WHERE user_id >= $1 AND user_id < $2",
            &[&7_400_001i64, &(7_400_001 + users)],
        ),
        users,
        "one row per checkout"
    );
    eventually(SETTLE, "every user of the batch in users", || {
        users_recorded(&server, 7_400_001, 7_400_001 + users) == (users, users)
    });
}
