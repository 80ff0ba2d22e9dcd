//! Script batching: calls that queue behind a batch in flight go to Redis
//! together in one script run, and each is decided as if it ran alone. Redis
//! is frozen (SIGSTOP) while the calls arrive, so the batch forms for sure;
//! one core and one batch in flight make the queue a single one.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use common::services::*;
use common::*;

const LIMIT: usize = 3;

/// Sends every request of `requests` at once, each on its own connection,
/// with Redis frozen until all are in, and returns the answers in order.
fn while_redis_frozen(rig: &Rig, requests: Vec<(&'static str, String)>) -> Vec<Response> {
    let answers: Mutex<Vec<Option<Response>>> =
        Mutex::new((0..requests.len()).map(|_| None).collect());
    let server = rig.server();
    signal(rig.redis.pid(), SIGSTOP);
    std::thread::scope(|scope| {
        for (i, (method, target)) in requests.iter().enumerate() {
            let answers = &answers;
            scope.spawn(move || {
                let r = server.connect().request(method, target, &[], b"");
                answers.lock().unwrap()[i] = Some(r);
            });
        }
        // Every request reaches the core and queues behind the first batch.
        std::thread::sleep(Duration::from_millis(700));
        signal(rig.redis.pid(), SIGCONT);
    });
    answers
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|a| a.expect("every request was answered"))
        .collect()
}

/// Calls carried by batches of more than `calls` calls, from the histogram.
fn batches_larger_than(rig: &Rig, script: &str, calls: u32) -> f64 {
    let metric = |name: String| rig.server().metric(&name).unwrap_or(0.0);
    metric(format!(
        "flashsale_redis_batch_calls_count{{script=\"{script}\"}}"
    )) - metric(format!(
        "flashsale_redis_batch_calls_bucket{{script=\"{script}\",le=\"{calls}\"}}"
    ))
}

/// A server of one core with one batch in flight (calls that queue meanwhile
/// go together in the next batch) and a Redis deadline no test meets.
fn one_batch_at_a_time() -> Rig {
    Rig::start(
        ServerConfig::new(50, LIMIT as u32)
            .env("FLASHSALE_CORES", "1")
            .env("FLASHSALE_REDIS_BATCHES_IN_FLIGHT", "1")
            .env("FLASHSALE_REDIS_TIMEOUT_MS", "20000"),
    )
}

#[test]
fn batched_calls_are_decided_one_by_one() {
    let rig = one_batch_at_a_time();
    let sale = rig.server().active_sale();
    let contested = sale.item(10);

    // Checkouts in one batch: user 1 asks for five items with a limit of
    // three; twenty others all want the same item.
    let mut requests: Vec<(&str, String)> = (1..=5)
        .map(|n| ("POST", checkout_path(1, sale.item(n))))
        .collect();
    requests.extend((100..120).map(|user| ("POST", checkout_path(user, contested))));
    let answers = while_redis_frozen(&rig, requests);
    assert!(
        batches_larger_than(&rig, "checkout", 16) >= 1.0,
        "the queued checkouts went out in one batch"
    );

    let (first_user, others) = answers.split_at(5);
    let accepted: Vec<&Response> = first_user.iter().filter(|r| r.status == 200).collect();
    assert_eq!(accepted.len(), LIMIT, "user 1 fills its limit exactly");
    for r in first_user.iter().filter(|r| r.status != 200) {
        r.assert_error(409, "limit_reached");
    }
    let code = accepted[0].str("code");
    assert!(
        accepted.iter().all(|r| r.str("code") == code),
        "one open code per user"
    );
    let basket: BTreeSet<i64> = accepted.iter().map(|r| r.i64("item_id")).collect();
    let last = accepted
        .iter()
        .max_by_key(|r| r.ids("items").len())
        .unwrap();
    assert_eq!(
        last.sorted_ids("items"),
        basket.iter().copied().collect::<Vec<_>>()
    );

    let mut codes = BTreeSet::new();
    for r in others {
        r.assert_status(200);
        assert_eq!(r.ids("items"), vec![contested], "{r}");
        codes.insert(r.str("code"));
    }
    assert_eq!(
        codes.len(),
        others.len(),
        "every user got a code of its own"
    );

    // Purchases in one batch: twenty buyers of one item, and user 1.
    let mut requests: Vec<(&str, String)> =
        codes.iter().map(|c| ("POST", purchase_path(c))).collect();
    requests.push(("POST", purchase_path(&code)));
    let answers = while_redis_frozen(&rig, requests);
    assert!(
        batches_larger_than(&rig, "purchase", 16) >= 1.0,
        "the queued purchases went out in one batch"
    );

    let (buyers, first_user) = answers.split_at(codes.len());
    let winners: Vec<&Response> = buyers.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one buyer gets the contested item"
    );
    assert_eq!(winners[0].ids("purchased"), vec![contested]);
    for r in buyers.iter().filter(|r| r.status != 200) {
        r.assert_error(409, "nothing_purchased");
        assert_eq!(r.ids("unavailable"), vec![contested], "{r}");
    }
    first_user[0].assert_status(200);
    assert_eq!(
        first_user[0].sorted_ids("purchased"),
        basket.iter().copied().collect::<Vec<_>>()
    );

    // A replay in a batch of one returns the first outcome.
    let replay = rig.server().request("POST", &purchase_path(&code));
    assert_eq!(replay.status, 200);
    assert_eq!(
        replay.sorted_ids("purchased"),
        first_user[0].sorted_ids("purchased")
    );

    assert_eq!(rig.server().active_sale().items_sold, 1 + LIMIT as i64);
    rig.assert_consistent(sale.id);
}

/// A batch reads its items' sold bits and its users' entries once, and
/// writes once: an item another instance sold (this server's sold map does
/// not know it) is still refused inside the batch, a user's second call sees
/// the first, and a users hash that was lost comes back with `_` and its
/// expiry.
#[test]
fn a_batch_sees_bits_sold_elsewhere_and_restores_a_lost_users_hash() {
    let rig = one_batch_at_a_time();
    let sale = rig.server().active_sale();
    let keys = flashsale::redis_client::keys::Keys::new("").unwrap();
    let mut redis = redis_connect(&rig.redis.url());
    let users = keys.users(sale.id);
    let _: i64 = redis::cmd("SETBIT")
        .arg(keys.sold(sale.id))
        .arg(6)
        .arg(1)
        .query(&mut redis)
        .unwrap();
    let _: i64 = redis::cmd("UNLINK").arg(&users).query(&mut redis).unwrap();

    let requests = vec![
        ("POST", checkout_path(1, sale.item(1))),
        ("POST", checkout_path(2, sale.item(7))),
        ("POST", checkout_path(1, sale.item(2))),
        ("POST", checkout_path(3, sale.item(7))),
        ("POST", checkout_path(1, sale.item(1))),
        ("POST", checkout_path(4, sale.item(3))),
    ];
    let answers = while_redis_frozen(&rig, requests);
    assert!(
        batches_larger_than(&rig, "checkout", 4) >= 1.0,
        "the queued checkouts went out in one batch"
    );
    // The requests reach the core in any order (each on its own thread):
    // user 1's three calls share one code, each holds its own item, and the
    // one decided last holds both items, having seen the others' writes.
    let first_user = [&answers[0], &answers[2], &answers[4]];
    let code = first_user[0].str("code");
    for (r, item) in first_user.iter().zip([1, 2, 1]) {
        r.assert_status(200);
        assert_eq!(r.str("code"), code, "{r}");
        assert!(r.ids("items").contains(&sale.item(item)), "{r}");
    }
    let last = first_user
        .iter()
        .max_by_key(|r| r.ids("items").len())
        .unwrap();
    assert_eq!(last.sorted_ids("items"), vec![sale.item(1), sale.item(2)]);
    answers[1].assert_error(409, "item_sold");
    answers[3].assert_error(409, "item_sold");
    answers[5].assert_status(200);
    assert_eq!(answers[5].ids("items"), vec![sale.item(3)]);

    let expire_at: String = redis::cmd("HGET")
        .arg(keys.meta(sale.id))
        .arg("expire_at")
        .query(&mut redis)
        .unwrap();
    let underscore: Option<String> = redis::cmd("HGET")
        .arg(&users)
        .arg("_")
        .query(&mut redis)
        .unwrap();
    assert_eq!(underscore.as_deref(), Some(expire_at.as_str()));
    let ttl: i64 = redis::cmd("PTTL").arg(&users).query(&mut redis).unwrap();
    assert!(ttl > 0, "the users hash has its expiry again: {ttl}");
    let entries: i64 = redis::cmd("HLEN").arg(&users).query(&mut redis).unwrap();
    assert_eq!(entries, 2 + 1, "users 1 and 4, and _");
}
