//! A sale's Redis state made whole again from what Postgres recorded, and
//! stamped with the id of the Redis node that holds it (lua/init_sale.lua,
//! one atomic step). Redis decides, but Redis can lose its last writes: a
//! failover to a replica that had not received them, or a single node that
//! crashed past its last AOF fsync. Whatever of those reached Postgres is put
//! back before the items can be sold again.
//!
//! Three triggers, all run on the rotator thread (`rotator`):
//! - a core whose script answered `fenced` (the sale's slot is on another
//!   node than the state was stamped with: a failover or a migration) sends
//!   a `ReconcileRequests::request`, non-blocking and coalesced;
//! - the gap check, every few seconds for the open sale: an item Postgres
//!   records as sold that Redis's bitmap does not have;
//! - the creation of a sale Redis does not hold (a new sale, or one Redis
//!   lost entirely), as on every start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::{Error, ErrorKind, Result};
use crate::redis_client::blocking::eval;
use crate::redis_client::keys::Keys;
use crate::redis_client::scripts::Script;
use crate::sale::SaleInfo;
use crate::store::sales::RecordedPurchase;

/// Requests waiting for the rotator; more are dropped (the sale is already
/// asked for, or is asked again a second later).
const QUEUED_REQUESTS: usize = 64;

/// How often one sale is asked for (and logged) at most, in ms.
const REQUEST_EVERY_MS: i64 = 1_000;

/// The cores' end of the reconcile requests: a fenced sale is asked for at
/// most once a second per process, however many requests are fenced.
pub struct ReconcileRequests {
    tx: Sender<i64>,
    epoch: Instant,
    /// The sale last asked for, and when (ms since `epoch`).
    last_sale: AtomicI64,
    last_at_ms: AtomicI64,
}

/// The rotator's end: sale ids to reconcile.
pub type ReconcileReceiver = Receiver<i64>;

impl ReconcileRequests {
    pub fn channel() -> (ReconcileRequests, ReconcileReceiver) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUED_REQUESTS);
        let requests = ReconcileRequests {
            tx,
            epoch: Instant::now(),
            last_sale: AtomicI64::new(0),
            last_at_ms: AtomicI64::new(-REQUEST_EVERY_MS),
        };
        (requests, rx)
    }

    /// Asks for `sale_id` to be reconciled; never blocks. Returns whether
    /// this call sent the request (the first one in a second for the sale),
    /// so that the caller logs once, not once per fenced request.
    pub fn request(&self, sale_id: i64) -> bool {
        let now = self.epoch.elapsed().as_millis() as i64;
        let last_at = self.last_at_ms.load(Ordering::Relaxed);
        if self.last_sale.load(Ordering::Relaxed) == sale_id && now - last_at < REQUEST_EVERY_MS {
            return false;
        }
        if self
            .last_at_ms
            .compare_exchange(last_at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false; // another core asked just now
        }
        self.last_sale.store(sale_id, Ordering::Relaxed);
        match self.tx.try_send(sale_id) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// What Postgres recorded of a sale, in init_sale.lua's argument format.
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Sold item numbers.
    pub numbers: Vec<u32>,
    /// Each buyer and how many items they bought, by user id.
    pub user_counts: Vec<(i64, u32)>,
    /// Each code that bought something, by code.
    pub codes: Vec<CodePurchase>,
}

/// What one code bought, as Postgres records it: the outcome a retry of its
/// purchase must replay.
#[derive(Debug, PartialEq, Eq)]
pub struct CodePurchase {
    pub code: String,
    pub user_id: i64,
    /// The item ids it bought, ascending, comma-separated.
    pub items: String,
}

impl Recorded {
    /// From the sale's purchase rows.
    pub fn from_purchases(sale: &SaleInfo, purchases: &[RecordedPurchase]) -> Self {
        let mut numbers = Vec::with_capacity(purchases.len());
        let mut per_user: BTreeMap<i64, u32> = BTreeMap::new();
        let mut per_code: BTreeMap<&str, (i64, Vec<i64>)> = BTreeMap::new();
        for p in purchases {
            if let Some(n) = sale.item_number(p.item_id) {
                numbers.push(n);
                *per_user.entry(p.user_id).or_default() += 1;
                per_code
                    .entry(&p.code)
                    .or_insert_with(|| (p.user_id, Vec::new()))
                    .1
                    .push(p.item_id);
            }
        }
        numbers.sort_unstable();
        let user_counts: Vec<(i64, u32)> = per_user.into_iter().collect();
        let codes = per_code
            .into_iter()
            .map(|(code, (user_id, mut items))| {
                items.sort_unstable();
                CodePurchase {
                    code: code.to_string(),
                    user_id,
                    items: csv(&items),
                }
            })
            .collect();
        Recorded {
            numbers,
            user_counts,
            codes,
        }
    }
}

/// Numbers, comma-separated.
fn csv<N: std::fmt::Display>(numbers: &[N]) -> String {
    let mut out = String::with_capacity(numbers.len() * 8);
    for (i, n) in numbers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&n.to_string());
    }
    out
}

/// How many of the items Postgres records as sold (`sold_item_ids`) the
/// sale's Redis bitmap lacks: the gap a reconcile closes.
pub fn missing_items(sale: &SaleInfo, sold_item_ids: &[i64], bitmap: &[u8]) -> usize {
    sold_item_ids
        .iter()
        .filter_map(|&id| sale.item_number(id))
        .filter(|&n| {
            let bit = n as usize - 1;
            bitmap
                .get(bit / 8)
                .is_none_or(|byte| byte & (0x80 >> (bit % 8)) == 0)
        })
        .count()
}

/// Which of init_sale.lua's two steps to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create the sale when Redis does not hold it; nothing otherwise.
    Create,
    /// Create it when missing; otherwise reconcile it and stamp the node.
    Reconcile,
}

/// What init_sale.lua did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created {
        restored: u64,
        node: String,
    },
    Exists,
    Reconciled {
        restored: u64,
        node: String,
    },
    /// The sale has ended by Redis's clock and Redis does not hold it.
    Ended,
}

/// Most entries (sold item numbers, users, codes) one init_sale.lua call
/// carries: a sale whose records are larger goes in several parts, each one
/// atomic step of bounded size (Redis runs nothing else on the shard while a
/// script runs), the sale served only once the last one ran.
pub const PART_ENTRIES: usize = 4_096;

/// One part of what Postgres recorded: ranges of `Recorded`'s lists.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    numbers: std::ops::Range<usize>,
    users: std::ops::Range<usize>,
    codes: std::ops::Range<usize>,
}

impl Recorded {
    /// The parts of at most `size` entries each, in order; at least one
    /// (empty when nothing is recorded).
    fn parts(&self, size: usize) -> Vec<Part> {
        let lens = [self.numbers.len(), self.user_counts.len(), self.codes.len()];
        let mut parts = Vec::new();
        let mut at = [0usize; 3];
        loop {
            let mut room = size;
            let mut ranges = [0..0, 0..0, 0..0];
            for k in 0..3 {
                let take = room.min(lens[k] - at[k]);
                ranges[k] = at[k]..at[k] + take;
                at[k] += take;
                room -= take;
            }
            let [numbers, users, codes] = ranges;
            parts.push(Part {
                numbers,
                users,
                codes,
            });
            if at == lens {
                return parts;
            }
        }
    }
}

/// Runs lua/init_sale.lua (`script`) for `sale` with what Postgres recorded,
/// on the node that owns the sale's keys, in parts of at most
/// `PART_ENTRIES` entries (the last part creates or reconciles).
pub fn init_sale(
    con: &mut dyn redis::ConnectionLike,
    script: &Script,
    keys: &Keys,
    sale: &SaleInfo,
    retention_ms: i64,
    recorded: &Recorded,
    step: Step,
) -> Result<Outcome> {
    init_sale_in_parts(
        con,
        script,
        keys,
        sale,
        retention_ms,
        recorded,
        step,
        PART_ENTRIES,
    )
}

/// `init_sale` with parts of at most `part_entries` entries.
#[allow(clippy::too_many_arguments)]
pub fn init_sale_in_parts(
    con: &mut dyn redis::ConnectionLike,
    script: &Script,
    keys: &Keys,
    sale: &SaleInfo,
    retention_ms: i64,
    recorded: &Recorded,
    step: Step,
    part_entries: usize,
) -> Result<Outcome> {
    let script_keys = [
        keys.meta(sale.id),
        keys.sold(sale.id),
        keys.users(sale.id),
        keys.codes(sale.id),
        keys.outbox(sale.id),
    ];
    let parts = recorded.parts(part_entries.max(1));
    let mut restored_total = 0;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let verb = match (step, last) {
            (Step::Create, true) => "create",
            (Step::Create, false) => "create-part",
            (Step::Reconcile, true) => "reconcile",
            (Step::Reconcile, false) => "reconcile-part",
        };
        let numbers = csv(&recorded.numbers[part.numbers.clone()]);
        let users = &recorded.user_counts[part.users.clone()];
        let (outcome, restored, node): (String, u64, String) =
            eval(con, script, &script_keys, |cmd| {
                cmd.arg(sale.id)
                    .arg(sale.starts_at)
                    .arg(sale.ends_at)
                    .arg(sale.items)
                    .arg(sale.user_limit)
                    .arg(sale.ends_at * 1000 + retention_ms)
                    .arg(verb)
                    .arg(&numbers)
                    .arg(users.len());
                for &(user, count) in users {
                    cmd.arg(user).arg(count);
                }
                for code in &recorded.codes[part.codes.clone()] {
                    cmd.arg(code.user_id).arg(&code.code).arg(&code.items);
                }
            })?;
        restored_total += restored;
        match outcome.as_str() {
            "restored" if !last => {}
            "created" if last => {
                return Ok(Outcome::Created {
                    restored: restored_total,
                    node,
                });
            }
            "reconciled" if last => {
                return Ok(Outcome::Reconciled {
                    restored: restored_total,
                    node,
                });
            }
            "exists" => return Ok(Outcome::Exists),
            "ended" => return Ok(Outcome::Ended),
            other => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("init_sale.lua answered {other:?} to {verb}"),
                ));
            }
        }
    }
    unreachable!("parts() yields at least one part")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale() -> SaleInfo {
        SaleInfo {
            id: 3,
            starts_at: 0,
            ends_at: 60,
            items: 10,
            user_limit: 5,
        }
    }

    fn bought(item_id: i64, user_id: i64, code: &str) -> RecordedPurchase {
        RecordedPurchase {
            item_id,
            user_id,
            code: code.to_string(),
        }
    }

    #[test]
    fn recorded_lists_items_counts_per_user_and_outcomes_per_code() {
        let purchases = [
            bought(3_000_010, 9, "c9"),
            bought(3_000_004, 7, "c7b"),
            bought(3_000_001, 7, "c7a"),
            bought(3_000_002, 7, "c7a"),
            bought(4_000_001, 7, "other-sale"),
        ];
        let recorded = Recorded::from_purchases(&sale(), &purchases);
        assert_eq!(recorded.numbers, [1, 2, 4, 10]);
        assert_eq!(csv(&recorded.numbers), "1,2,4,10");
        assert_eq!(recorded.user_counts, [(7, 3), (9, 1)]);
        let codes: Vec<(&str, i64, &str)> = recorded
            .codes
            .iter()
            .map(|c| (c.code.as_str(), c.user_id, c.items.as_str()))
            .collect();
        assert_eq!(
            codes,
            [
                ("c7a", 7, "3000001,3000002"),
                ("c7b", 7, "3000004"),
                ("c9", 9, "3000010"),
            ]
        );
        let none = Recorded::from_purchases(&sale(), &[]);
        assert!(none.user_counts.is_empty() && none.codes.is_empty());
    }

    #[test]
    fn parts_carry_every_entry_once_in_order_and_at_most_their_size() {
        let purchases: Vec<RecordedPurchase> = (1..=10)
            .map(|n| bought(3_000_000 + n, n, &format!("c{n}")))
            .collect();
        let recorded = Recorded::from_purchases(&sale(), &purchases);
        // 10 numbers, 10 users, 10 codes: 30 entries.
        for size in [1, 4, 7, 30, 100] {
            let parts = recorded.parts(size);
            assert_eq!(parts.len(), 30usize.div_ceil(size), "size {size}");
            let mut next = [0usize; 3];
            for part in &parts {
                let ranges = [&part.numbers, &part.users, &part.codes];
                assert!(ranges.iter().map(|r| r.len()).sum::<usize>() <= size);
                for k in 0..3 {
                    assert_eq!(ranges[k].start, next[k], "size {size}");
                    next[k] = ranges[k].end;
                }
            }
            assert_eq!(next, [10, 10, 10], "size {size}");
        }
        let none = Recorded::from_purchases(&sale(), &[]);
        assert_eq!(
            none.parts(5).len(),
            1,
            "an empty record is one (empty) part"
        );
    }

    #[test]
    fn missing_items_are_those_without_their_bit() {
        let sold = [3_000_001, 3_000_010, 4_000_002];
        // bit 0 (item 1) set; item 10 (bit 9) not; another sale's item never counts
        assert_eq!(missing_items(&sale(), &sold, &[0b1000_0000]), 1);
        assert_eq!(
            missing_items(&sale(), &sold, &[0b1000_0000, 0b0100_0000]),
            0
        );
        assert_eq!(missing_items(&sale(), &sold, &[]), 2);
    }

    #[test]
    fn requests_are_coalesced_per_second() {
        let (requests, rx) = ReconcileRequests::channel();
        assert!(requests.request(5));
        assert!(!requests.request(5));
        assert!(requests.request(6), "another sale is asked for at once");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [5, 6]);
    }
}
