//! How a batch of rows reaches Postgres in one transaction: the users not
//! yet known to be there (`INSERT … SELECT … FROM UNNEST(…) ON CONFLICT DO
//! NOTHING`), then the checkouts (`COPY … FROM STDIN (FORMAT binary)`, the
//! cheapest way in for an append-only log) or the purchases (`INSERT … FROM
//! UNNEST(…) ON CONFLICT DO NOTHING`, idempotent). Rows Postgres refuses as
//! data are isolated by bisection so that one bad row cannot block its batch.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::Client;

use super::CheckoutRecord;
use super::outbox::OutboxEntry;

const USERS_SQL: &str = "INSERT INTO users (id, first_seen_at)
     SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[])
     ON CONFLICT (id) DO NOTHING";

const CHECKOUTS_COPY: &str = "COPY checkouts (sale_id, user_id, item_id, code, outcome, created_at) FROM STDIN (FORMAT binary)";

const PURCHASES_SQL: &str = "INSERT INTO purchases (sale_id, item_id, user_id, code, created_at)
     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::timestamptz[])
     ON CONFLICT DO NOTHING";

/// Unix milliseconds as a `timestamptz` parameter.
fn timestamp(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Checkout rows in Postgres's binary COPY format (header, one tuple per
/// row: int8 sale_id, user_id, item_id; text code (or NULL), outcome;
/// timestamptz created_at; then the trailer), built in one buffer so the
/// whole batch goes out in one piece.
fn checkouts_copy_data(rows: &[CheckoutRecord]) -> Vec<u8> {
    /// Microseconds from the Unix epoch to Postgres's epoch, 2000-01-01 UTC.
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    fn int8(out: &mut Vec<u8>, v: i64) {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
    fn text(out: &mut Vec<u8>, v: Option<&str>) {
        match v {
            Some(s) => {
                out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let mut out = Vec::with_capacity(21 + rows.len() * 110);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for r in rows {
        out.extend_from_slice(&6i16.to_be_bytes());
        int8(&mut out, r.sale_id);
        int8(&mut out, r.user_id);
        int8(&mut out, r.item_id);
        text(&mut out, r.code.as_deref());
        text(&mut out, Some(r.outcome));
        int8(
            &mut out,
            r.at_ms.saturating_mul(1000).saturating_sub(PG_EPOCH_US),
        );
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// A hasher for user ids: one multiply (Fibonacci hashing), instead of
/// SipHash; ids are not attacker-chosen in a way that matters here (the
/// worst case is a slower lookup in the writer).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_i64(&mut self, id: i64) {
        self.0 = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// User ids this writer has committed to `users`, so that a crowd's repeat
/// visitors cost Postgres no index probe per batch. Bounded: past `capacity`
/// ids it forgets them all and starts over (a forgotten user costs one
/// `ON CONFLICT` probe again, nothing more).
pub(crate) struct KnownUsers {
    ids: HashSet<i64, BuildHasherDefault<IdHasher>>,
    capacity: usize,
}

impl KnownUsers {
    pub(crate) fn new(capacity: usize) -> Self {
        KnownUsers {
            ids: HashSet::default(),
            capacity,
        }
    }

    fn contains(&self, id: i64) -> bool {
        self.ids.contains(&id)
    }

    fn remember(&mut self, ids: &[i64]) {
        if self.ids.len() + ids.len() > self.capacity {
            self.ids.clear();
        }
        self.ids.extend(ids.iter().copied());
    }
}

/// Whether Postgres refused the rows themselves (data exception, integrity
/// violation), so retrying them as they are cannot succeed.
pub(crate) fn is_data_error(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// What `write_bisecting` did.
#[derive(Debug)]
pub(crate) struct BisectOutcome<E> {
    /// Per row: committed or refused (either way, no longer pending).
    pub(crate) done: Vec<bool>,
    /// Rows refused on their own, in order.
    pub(crate) rejected: Vec<usize>,
    /// The error that stopped the writing (not a data error).
    pub(crate) error: Option<E>,
}

/// Writes `rows` with `write` (one transaction per call). When the rows are
/// refused as data, splits them in halves until the offending rows are
/// isolated, so that one bad row cannot block its batch forever. Stops at
/// the first other error, leaving the rest not done.
pub(crate) fn write_bisecting<T, E>(
    rows: &[T],
    mut write: impl FnMut(&[T]) -> Result<(), E>,
    is_data: impl Fn(&E) -> bool,
) -> BisectOutcome<E> {
    let mut outcome = BisectOutcome {
        done: vec![false; rows.len()],
        rejected: Vec::new(),
        error: None,
    };
    // Ranges still to write, the next on top.
    let mut stack = vec![(0, rows.len())];
    while let Some((from, to)) = stack.pop() {
        if from >= to {
            continue;
        }
        match write(&rows[from..to]) {
            Ok(()) => outcome.done[from..to].fill(true),
            Err(e) if is_data(&e) => {
                if to - from == 1 {
                    outcome.done[from] = true;
                    outcome.rejected.push(from);
                } else {
                    let mid = from + (to - from) / 2;
                    stack.push((mid, to));
                    stack.push((from, mid));
                }
            }
            Err(e) => {
                outcome.error = Some(e);
                break;
            }
        }
    }
    outcome
}

/// Distinct user ids not known to be in `users`, ascending (a stable lock
/// order across instances), each with the earliest time it was seen.
#[derive(Debug, Default, PartialEq, Eq)]
struct UserColumns {
    ids: Vec<i64>,
    first_seen_ms: Vec<i64>,
}

impl UserColumns {
    fn build(seen: impl IntoIterator<Item = (i64, i64)>, known: &KnownUsers) -> Self {
        let mut first: BTreeMap<i64, i64> = BTreeMap::new();
        for (user, at_ms) in seen {
            if known.contains(user) {
                continue;
            }
            first
                .entry(user)
                .and_modify(|t| *t = (*t).min(at_ms))
                .or_insert(at_ms);
        }
        let (ids, first_seen_ms) = first.into_iter().unzip();
        UserColumns { ids, first_seen_ms }
    }

    fn insert(&self, tx: &mut postgres::Transaction<'_>) -> Result<u64, postgres::Error> {
        if self.ids.is_empty() {
            return Ok(0);
        }
        let first_seen: Vec<SystemTime> =
            self.first_seen_ms.iter().map(|&ms| timestamp(ms)).collect();
        tx.execute(USERS_SQL, &[&self.ids, &first_seen])
    }
}

/// The `purchases` columns of a batch, ordered by (sale, item): a stable lock
/// order when two instances drain the same outbox.
#[derive(Debug, Default, PartialEq, Eq)]
struct PurchaseColumns<'a> {
    sale_ids: Vec<i64>,
    item_ids: Vec<i64>,
    user_ids: Vec<i64>,
    codes: Vec<&'a str>,
    at_ms: Vec<i64>,
}

impl<'a> PurchaseColumns<'a> {
    fn build(entries: &'a [OutboxEntry]) -> Self {
        let mut sorted: Vec<&OutboxEntry> = entries.iter().collect();
        sorted.sort_by_key(|e| (e.sale_id, e.item_id));
        let mut cols = PurchaseColumns::default();
        for e in sorted {
            cols.sale_ids.push(e.sale_id);
            cols.item_ids.push(e.item_id);
            cols.user_ids.push(e.user_id);
            cols.codes.push(&e.code);
            cols.at_ms.push(e.at_ms);
        }
        cols
    }
}

/// Users, then checkouts, in one transaction. Returns rows inserted into each.
///
/// The transaction commits without waiting for its WAL flush
/// (`synchronous_commit = off`): checkout rows are analytics, and a Postgres
/// crash may lose the last few hundred milliseconds of them, never a
/// purchase (purchases commit synchronously before the outbox is trimmed).
/// It saves a WAL flush per batch, which at flash-crowd rates is what lets
/// the writer keep up.
pub(crate) fn insert_checkouts(
    client: &mut Client,
    rows: &[CheckoutRecord],
    known: &mut KnownUsers,
) -> Result<(u64, u64), postgres::Error> {
    let users = UserColumns::build(rows.iter().map(|r| (r.user_id, r.at_ms)), known);
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")?;
    let new_users = users.insert(&mut tx)?;
    let mut copy = tx.copy_in(CHECKOUTS_COPY)?;
    // The writer only buffers here; sending, and any error, happens in
    // finish(). Data cut short by a failed write is refused by Postgres
    // (no trailer), so nothing partial can commit.
    let _ = copy.write_all(&checkouts_copy_data(rows));
    let inserted = copy.finish()?;
    tx.commit()?;
    known.remember(&users.ids);
    Ok((new_users, inserted))
}

/// Users, then purchases (idempotent), in one transaction. Returns rows
/// inserted into each.
pub(crate) fn insert_purchases(
    client: &mut Client,
    entries: &[OutboxEntry],
    known: &mut KnownUsers,
) -> Result<(u64, u64), postgres::Error> {
    let users = UserColumns::build(entries.iter().map(|e| (e.user_id, e.at_ms)), known);
    let p = PurchaseColumns::build(entries);
    let created: Vec<SystemTime> = p.at_ms.iter().map(|&ms| timestamp(ms)).collect();
    let mut tx = client.transaction()?;
    let new_users = users.insert(&mut tx)?;
    let inserted = tx.execute(
        PURCHASES_SQL,
        &[&p.sale_ids, &p.item_ids, &p.user_ids, &p.codes, &created],
    )?;
    tx.commit()?;
    known.remember(&users.ids);
    Ok((new_users, inserted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(id: &str, item: i64, user: i64) -> OutboxEntry {
        OutboxEntry {
            stream_id: id.into(),
            sale_id: 2,
            item_id: item,
            user_id: user,
            code: format!("code-{user}"),
            at_ms: 1_000,
        }
    }

    #[test]
    fn users_are_distinct_sorted_with_their_first_time() {
        let none = KnownUsers::new(10);
        let cols = UserColumns::build([(5, 300), (2, 200), (5, 100), (9, 50), (2, 250)], &none);
        assert_eq!(cols.ids, vec![2, 5, 9]);
        assert_eq!(cols.first_seen_ms, vec![200, 100, 50]);
        assert_eq!(UserColumns::build([], &none), UserColumns::default());
    }

    #[test]
    fn checkout_rows_encode_as_binary_copy() {
        let rows = [CheckoutRecord {
            sale_id: 3,
            user_id: 7,
            item_id: 3_000_001,
            code: None,
            outcome: "item_sold",
            at_ms: 946_684_800_001, // 2000-01-01T00:00:00.001Z
        }];
        let data = checkouts_copy_data(&rows);
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&6i16.to_be_bytes());
        for v in [3i64, 7, 3_000_001] {
            expected.extend_from_slice(&8i32.to_be_bytes());
            expected.extend_from_slice(&v.to_be_bytes());
        }
        expected.extend_from_slice(&(-1i32).to_be_bytes()); // NULL code
        expected.extend_from_slice(&9i32.to_be_bytes());
        expected.extend_from_slice(b"item_sold");
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&1000i64.to_be_bytes()); // 1 ms after Postgres's epoch
        expected.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(data, expected);
    }

    #[test]
    fn known_users_are_left_out_and_the_memory_is_bounded() {
        let mut known = KnownUsers::new(3);
        known.remember(&[2, 9]);
        let cols = UserColumns::build([(5, 300), (2, 200), (9, 50)], &known);
        assert_eq!(cols.ids, vec![5]);
        known.remember(&[5]);
        assert!(known.contains(2) && known.contains(5));
        // past the capacity everything is forgotten, then the new ids kept
        known.remember(&[7]);
        assert!(!known.contains(2) && known.contains(7));
    }

    #[test]
    fn purchase_columns_are_sorted_by_item() {
        let entries = vec![
            purchase("1-0", 2_000_009, 7),
            purchase("1-1", 2_000_001, 8),
            purchase("1-2", 2_000_005, 7),
        ];
        let cols = PurchaseColumns::build(&entries);
        assert_eq!(cols.item_ids, vec![2_000_001, 2_000_005, 2_000_009]);
        assert_eq!(cols.user_ids, vec![8, 7, 7]);
        assert_eq!(cols.codes, vec!["code-8", "code-7", "code-7"]);
        assert_eq!(cols.sale_ids, vec![2, 2, 2]);
    }

    #[test]
    fn bisecting_writes_everything_in_one_go_when_all_is_well() {
        let rows: Vec<i32> = (0..10).collect();
        let mut calls = 0;
        let out = write_bisecting(
            &rows,
            |_| {
                calls += 1;
                Ok::<(), &str>(())
            },
            |_| true,
        );
        assert_eq!(calls, 1);
        assert!(out.done.iter().all(|d| *d));
        assert!(out.rejected.is_empty());
        assert!(out.error.is_none());
    }

    #[test]
    fn bisecting_isolates_bad_rows_and_writes_the_rest() {
        let rows: Vec<i32> = (0..13).collect();
        let mut written = Vec::new();
        let out = write_bisecting(
            &rows,
            |part| {
                if part.contains(&4) || part.contains(&11) {
                    Err("data")
                } else {
                    written.extend_from_slice(part);
                    Ok(())
                }
            },
            |e| *e == "data",
        );
        assert_eq!(out.rejected, vec![4, 11]);
        assert!(out.done.iter().all(|d| *d));
        assert!(out.error.is_none());
        written.sort();
        let expected: Vec<i32> = (0..13).filter(|x| *x != 4 && *x != 11).collect();
        assert_eq!(written, expected);
    }

    #[test]
    fn bisecting_stops_at_an_outage_and_keeps_the_rest_pending() {
        let rows: Vec<i32> = (0..8).collect();
        let mut calls = 0;
        let out = write_bisecting(
            &rows,
            |part| {
                calls += 1;
                match calls {
                    // whole batch: a bad row somewhere
                    1 => Err("data"),
                    // first half commits
                    2 => {
                        assert_eq!(part, &[0, 1, 2, 3]);
                        Ok(())
                    }
                    // then the connection drops
                    _ => Err("down"),
                }
            },
            |e| *e == "data",
        );
        assert_eq!(out.error, Some("down"));
        assert_eq!(
            out.done,
            vec![true, true, true, true, false, false, false, false]
        );
        assert!(out.rejected.is_empty());
    }

    #[test]
    fn bisecting_nothing_writes_nothing() {
        let out = write_bisecting(&[] as &[i32], |_| Err("never"), |_| false);
        assert!(out.done.is_empty());
        assert!(out.error.is_none());
    }
}
