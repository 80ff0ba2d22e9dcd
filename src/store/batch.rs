//! How a batch of rows becomes one parameterized `INSERT … SELECT … FROM
//! UNNEST(…)` statement (users first, then checkouts or purchases, in one
//! transaction), and how rows Postgres refuses as data are isolated by
//! bisection so that one bad row cannot block its batch.

use std::collections::BTreeMap;

use postgres::Client;

use super::CheckoutRecord;
use super::outbox::OutboxEntry;

const USERS_SQL: &str = "INSERT INTO users (id, first_seen_at)
     SELECT u.id, to_timestamp(u.ms / 1000.0)
     FROM UNNEST($1::bigint[], $2::bigint[]) AS u (id, ms)
     ON CONFLICT (id) DO NOTHING";

const CHECKOUTS_SQL: &str =
    "INSERT INTO checkouts (sale_id, user_id, item_id, code, outcome, created_at)
     SELECT c.sale_id, c.user_id, c.item_id, c.code, c.outcome, to_timestamp(c.ms / 1000.0)
     FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[])
          AS c (sale_id, user_id, item_id, code, outcome, ms)";

const PURCHASES_SQL: &str = "INSERT INTO purchases (sale_id, item_id, user_id, code, created_at)
     SELECT p.sale_id, p.item_id, p.user_id, p.code, to_timestamp(p.ms / 1000.0)
     FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[])
          AS p (sale_id, item_id, user_id, code, ms)
     ON CONFLICT DO NOTHING";

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

/// Distinct user ids, ascending (a stable lock order across instances), each
/// with the earliest time it was seen.
#[derive(Debug, Default, PartialEq, Eq)]
struct UserColumns {
    ids: Vec<i64>,
    first_seen_ms: Vec<i64>,
}

impl UserColumns {
    fn build(seen: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut first: BTreeMap<i64, i64> = BTreeMap::new();
        for (user, at_ms) in seen {
            first
                .entry(user)
                .and_modify(|t| *t = (*t).min(at_ms))
                .or_insert(at_ms);
        }
        let (ids, first_seen_ms) = first.into_iter().unzip();
        UserColumns { ids, first_seen_ms }
    }

    fn insert(&self, tx: &mut postgres::Transaction<'_>) -> Result<u64, postgres::Error> {
        tx.execute(USERS_SQL, &[&self.ids, &self.first_seen_ms])
    }
}

/// The `checkouts` columns of a batch.
#[derive(Debug, Default, PartialEq, Eq)]
struct CheckoutColumns<'a> {
    sale_ids: Vec<i64>,
    user_ids: Vec<i64>,
    item_ids: Vec<i64>,
    codes: Vec<Option<&'a str>>,
    outcomes: Vec<&'static str>,
    at_ms: Vec<i64>,
}

impl<'a> CheckoutColumns<'a> {
    fn build(rows: &'a [CheckoutRecord]) -> Self {
        let mut cols = CheckoutColumns::default();
        for r in rows {
            cols.sale_ids.push(r.sale_id);
            cols.user_ids.push(r.user_id);
            cols.item_ids.push(r.item_id);
            cols.codes.push(r.code.as_deref());
            cols.outcomes.push(r.outcome);
            cols.at_ms.push(r.at_ms);
        }
        cols
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
pub(crate) fn insert_checkouts(
    client: &mut Client,
    rows: &[CheckoutRecord],
) -> Result<(u64, u64), postgres::Error> {
    let users = UserColumns::build(rows.iter().map(|r| (r.user_id, r.at_ms)));
    let c = CheckoutColumns::build(rows);
    let mut tx = client.transaction()?;
    let new_users = users.insert(&mut tx)?;
    let inserted = tx.execute(
        CHECKOUTS_SQL,
        &[
            &c.sale_ids,
            &c.user_ids,
            &c.item_ids,
            &c.codes,
            &c.outcomes,
            &c.at_ms,
        ],
    )?;
    tx.commit()?;
    Ok((new_users, inserted))
}

/// Users, then purchases (idempotent), in one transaction. Returns rows
/// inserted into each.
pub(crate) fn insert_purchases(
    client: &mut Client,
    entries: &[OutboxEntry],
) -> Result<(u64, u64), postgres::Error> {
    let users = UserColumns::build(entries.iter().map(|e| (e.user_id, e.at_ms)));
    let p = PurchaseColumns::build(entries);
    let mut tx = client.transaction()?;
    let new_users = users.insert(&mut tx)?;
    let inserted = tx.execute(
        PURCHASES_SQL,
        &[&p.sale_ids, &p.item_ids, &p.user_ids, &p.codes, &p.at_ms],
    )?;
    tx.commit()?;
    Ok((new_users, inserted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(user: i64, item: i64, at_ms: i64, code: Option<&str>) -> CheckoutRecord {
        CheckoutRecord {
            sale_id: 1,
            user_id: user,
            item_id: item,
            code: code.map(str::to_owned),
            outcome: "ok",
            at_ms,
        }
    }

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
        let cols = UserColumns::build([(5, 300), (2, 200), (5, 100), (9, 50), (2, 250)]);
        assert_eq!(cols.ids, vec![2, 5, 9]);
        assert_eq!(cols.first_seen_ms, vec![200, 100, 50]);
        assert_eq!(UserColumns::build([]), UserColumns::default());
    }

    #[test]
    fn checkout_columns_keep_order_and_null_codes() {
        let rows = vec![
            checkout(3, 1_000_001, 10, Some("c3")),
            checkout(4, 1_000_002, 11, None),
        ];
        let cols = CheckoutColumns::build(&rows);
        assert_eq!(cols.user_ids, vec![3, 4]);
        assert_eq!(cols.item_ids, vec![1_000_001, 1_000_002]);
        assert_eq!(cols.codes, vec![Some("c3"), None]);
        assert_eq!(cols.outcomes, vec!["ok", "ok"]);
        assert_eq!(cols.at_ms, vec![10, 11]);
        assert_eq!(cols.sale_ids, vec![1, 1]);
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
