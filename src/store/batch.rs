//! How a batch of rows reaches Postgres: checkouts by `COPY … FROM STDIN
//! (FORMAT binary)` (the cheapest way in for an append-only log), with the
//! writer's `users_backlog` mark when the batch names users not yet in
//! `users`; those users later, many batches' worth at once, by `INSERT …
//! SELECT … FROM UNNEST(…) ON CONFLICT DO NOTHING` (`insert_users`), and the
//! repair of a backlog a killed writer left (`catch_up_users`); purchases
//! with their users in one transaction (`INSERT … FROM UNNEST(…) ON CONFLICT
//! DO NOTHING`, idempotent, with a check that a conflicting row is the same
//! purchase and not a double sale). What a refusal means (`classify`: never
//! insertable, not yet insertable, or no answer at all) and the bisection
//! that isolates refused rows so that one cannot block its batch live here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::Client;

use super::CheckoutRecord;
use super::outbox::OutboxEntry;

const USERS_SQL: &str = "INSERT INTO users (id, first_seen_at)
     SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[])
     ON CONFLICT (id) DO NOTHING";

/// A second's new users at once: an anti-join (one index probe per user)
/// and plain inserts, cheaper than `USERS_SQL`'s speculative insertion per
/// row. Another instance may insert one of them meanwhile: that is a unique
/// violation, and the batch is retried with `USERS_SQL`.
const USERS_MERGE_SQL: &str = "MERGE INTO users u
     USING UNNEST($1::bigint[], $2::timestamptz[]) AS n (id, first_seen_at)
     ON u.id = n.id
     WHEN NOT MATCHED THEN INSERT (id, first_seen_at) VALUES (n.id, n.first_seen_at)";

/// For `USERS_MERGE_SQL`: a probe of the primary key per user, never a scan
/// of `users` (a hash or merge join reads the whole table, which grows).
const USERS_MERGE_PLAN: &str = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// The writer's backlog mark: checkouts from `since` on may name users that
/// `users` does not have yet. Written with the checkout batch it covers;
/// answers the transaction's id, to ask about its commit if the answer to
/// the `COMMIT` is lost (`commit_status`).
const BACKLOG_MARK_SQL: &str = "INSERT INTO users_backlog (writer, since) VALUES ($1, $2)
     ON CONFLICT (writer) DO UPDATE
     SET since = least(users_backlog.since, excluded.since), updated_at = now()
     RETURNING pg_current_xact_id()::text";

/// What became of a transaction, by its id: `committed`, `aborted`, `in
/// progress`, or NULL when Postgres no longer knows.
const XACT_STATUS_SQL: &str = "SELECT pg_xact_status($1::text::xid8)";

/// The writer's users are committed: its mark goes.
const BACKLOG_CLEAR_SQL: &str = "DELETE FROM users_backlog WHERE writer = $1";

/// Marks not written for longer than `$1` seconds: their writers are gone
/// (a live writer clears its mark within a second or two, and writes it
/// again after any Postgres error).
const BACKLOG_STALE_SQL: &str = "SELECT writer, since, updated_at FROM users_backlog
     WHERE updated_at < now() - make_interval(secs => $1)
     ORDER BY since";

/// The users of every checkout from `$1` on, each with its first time.
const CATCH_UP_SQL: &str = "INSERT INTO users (id, first_seen_at)
     SELECT user_id, min(created_at) FROM checkouts
      WHERE created_at >= $1 AND user_id > 0
      GROUP BY user_id ORDER BY user_id
     ON CONFLICT (id) DO NOTHING";

/// Deletes a stale mark unless its writer wrote it again meanwhile.
const BACKLOG_REPAIRED_SQL: &str =
    "DELETE FROM users_backlog WHERE writer = $1 AND updated_at = $2";

const CHECKOUTS_COPY: &str = "COPY checkouts (sale_id, user_id, item_id, code, outcome, created_at) FROM STDIN (FORMAT binary)";

const PURCHASES_SQL: &str = "INSERT INTO purchases (sale_id, item_id, user_id, code, created_at)
     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::timestamptz[])
     ON CONFLICT DO NOTHING";

/// The purchases recorded for the given (sale, item) pairs: run when the
/// insert skipped rows, to tell a replay (same code) from a double sale.
const RECORDED_CODES_SQL: &str = "SELECT p.item_id, p.code, p.user_id FROM purchases p
     JOIN UNNEST($1::bigint[], $2::bigint[]) AS r (sale_id, item_id) USING (sale_id, item_id)";

/// Double sales, next to the purchase each lost to; once each.
const DOUBLE_SALES_SQL: &str = "INSERT INTO double_sales
     (sale_id, item_id, user_id, code, sold_at, recorded_user_id, recorded_code)
     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],
                          $5::timestamptz[], $6::bigint[], $7::text[])
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
pub(crate) struct IdHasher(u64);

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

/// User ids checkout batches have committed to `users`, so that a crowd's
/// repeat visitors cost Postgres no index probe per checkout batch. Those
/// commits are asynchronous, so a Postgres crash can lose them: the memory
/// is only trusted on the connections of the same Postgres run. It is
/// forgotten whenever the pool opened a connection since it was filled
/// (after a crash every connection is new) and on every Postgres error.
/// Purchases never use it: they upsert their users every time (the foreign
/// key must hold in their own transaction). Bounded: past `capacity` ids it
/// forgets them all and starts over (a forgotten user costs one
/// `ON CONFLICT` probe again, nothing more).
pub(crate) struct KnownUsers {
    ids: HashSet<i64, BuildHasherDefault<IdHasher>>,
    capacity: usize,
    /// `super::connections_opened()` when the ids were committed.
    epoch: u64,
}

impl KnownUsers {
    pub(crate) fn new(capacity: usize) -> Self {
        KnownUsers {
            ids: HashSet::default(),
            capacity,
            epoch: 0,
        }
    }

    /// Forgets everything (Postgres failed: what it committed asynchronously
    /// may be gone).
    pub(crate) fn forget(&mut self) {
        self.ids.clear();
    }

    /// Forgets everything when the pool has opened a connection since the
    /// ids were remembered: call with `super::connections_opened()` read
    /// after the batch's connection was taken from the pool.
    pub(crate) fn check_epoch(&mut self, connections_opened: u64) {
        if connections_opened != self.epoch {
            self.ids.clear();
            self.epoch = connections_opened;
        }
    }

    pub(crate) fn contains(&self, id: i64) -> bool {
        self.ids.contains(&id)
    }

    pub(crate) fn remember(&mut self, ids: &[i64]) {
        if self.ids.len() + ids.len() > self.capacity {
            self.ids.clear();
        }
        self.ids.extend(ids.iter().copied());
    }
}

/// What a failed statement means for its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Postgres refused the rows' values: as they are, they can never be
    /// inserted (data exception, NOT NULL, CHECK, unique or exclusion
    /// violation).
    Refused,
    /// Postgres refused the rows for now: a row they depend on is missing
    /// (foreign key), which a later attempt can find. Retried, never given up.
    NotYet,
    /// No verdict on the rows (connection lost, server shutting down,
    /// serialization failure, ...): Postgres is treated as failing.
    Outage,
}

/// Classifies a Postgres error by its SQLSTATE. Only what certainly depends
/// on the rows' own values is `Refused`; an integrity violation that another
/// row can cure is `NotYet`; anything without a SQLSTATE of those classes is
/// an `Outage`.
pub(crate) fn classify(e: &postgres::Error) -> Failure {
    e.code()
        .map_or(Failure::Outage, |c| classify_sqlstate(c.code()))
}

fn classify_sqlstate(code: &str) -> Failure {
    match code {
        // not_null_violation, unique_violation, check_violation,
        // exclusion_violation: the row's own values break the constraint.
        "23502" | "23505" | "23514" | "23P01" => Failure::Refused,
        // foreign_key_violation (the parent row is missing: after a crash
        // lost it, or before another writer commits it), restrict_violation,
        // and the unspecific 23000: another row decides, which can change.
        c if c.starts_with("23") => Failure::NotYet,
        // data_exception: a value out of range, malformed, too long.
        c if c.starts_with("22") => Failure::Refused,
        _ => Failure::Outage,
    }
}

/// What `write_bisecting` did.
#[derive(Debug)]
pub(crate) struct BisectOutcome<E> {
    /// Per row: committed or refused for good (either way, no longer pending).
    pub(crate) done: Vec<bool>,
    /// Rows refused for good on their own, in order.
    pub(crate) rejected: Vec<usize>,
    /// Rows refused for now on their own, in order (not done: retry later).
    pub(crate) deferred: Vec<usize>,
    /// The error that stopped the writing (an outage).
    pub(crate) error: Option<E>,
}

/// Writes `rows` with `write` (one transaction per call). When the rows are
/// refused (for good or for now), splits them in halves until the offending
/// rows are isolated, so that one row cannot block its batch. Stops at the
/// first outage, leaving the rest not done.
pub(crate) fn write_bisecting<T, E>(
    rows: &[T],
    mut write: impl FnMut(&[T]) -> Result<(), E>,
    classify: impl Fn(&E) -> Failure,
) -> BisectOutcome<E> {
    let mut outcome = BisectOutcome {
        done: vec![false; rows.len()],
        rejected: Vec::new(),
        deferred: Vec::new(),
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
            Err(e) if classify(&e) != Failure::Outage => {
                if to - from == 1 {
                    if classify(&e) == Failure::Refused {
                        outcome.done[from] = true;
                        outcome.rejected.push(from);
                    } else {
                        outcome.deferred.push(from);
                    }
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

/// Distinct user ids (less those `known` to be in `users`), ascending (a
/// stable lock order across instances), each with the earliest time it was
/// seen.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UserColumns {
    pub(crate) ids: Vec<i64>,
    pub(crate) first_seen_ms: Vec<i64>,
}

impl UserColumns {
    /// Columns of `(id, first seen)` pairs already distinct, in id order.
    pub(crate) fn sorted(mut users: Vec<(i64, i64)>) -> Self {
        users.sort_unstable();
        let (ids, first_seen_ms) = users.into_iter().unzip();
        UserColumns { ids, first_seen_ms }
    }

    fn build(seen: impl IntoIterator<Item = (i64, i64)>, known: Option<&KnownUsers>) -> Self {
        let mut first: BTreeMap<i64, i64> = BTreeMap::new();
        for (user, at_ms) in seen {
            if known.is_some_and(|k| k.contains(user)) {
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

    fn insert(&self, tx: &mut impl postgres::GenericClient) -> Result<u64, postgres::Error> {
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

/// The writer's connection for checkout batches, outside the pool: its
/// session commits asynchronously (`synchronous_commit = off`, which must
/// never reach a pooled connection that purchases use) and its `COPY` is
/// prepared once, so that a batch is one `COPY` in its own implicit
/// transaction: two round trips, where `BEGIN`, `SET LOCAL`, a fresh
/// `COPY` and `COMMIT` on a pooled connection took six.
pub(crate) struct CheckoutConn {
    client: Client,
    copy: postgres::Statement,
}

impl CheckoutConn {
    pub(crate) fn open(config: &postgres::Config) -> Result<Self, postgres::Error> {
        let mut client = config.connect(postgres::NoTls)?;
        super::connection_opened();
        client.batch_execute("SET synchronous_commit = off")?;
        let copy = client.prepare(CHECKOUTS_COPY)?;
        Ok(CheckoutConn { client, copy })
    }
}

/// Checkouts (and, when `mark` is given, the writer's backlog mark) in one
/// transaction. Returns the rows inserted. With a mark the transaction is
/// explicit, and while its `COMMIT` is on its way `commit_sent` holds the
/// transaction's id: when that fails (the connection lost before the
/// answer), Postgres may have committed, and `commit_status` tells. (Without
/// a mark the batch is one `COPY` in its implicit transaction, and Postgres
/// answers the `COPY` before the commit that follows, so a lost answer
/// there means a batch not committed.) The batch's users are not
/// written here: the writer collects them and commits them apart, many
/// batches at once (`insert_users`); the mark, in the same transaction as
/// the rows it covers, is what lets a lost collection be repaired
/// (`catch_up_users`).
///
/// The transaction commits without waiting for its WAL flush (the session
/// is `synchronous_commit = off`): checkout rows are analytics, and a
/// Postgres crash may lose the last few hundred milliseconds of them, never
/// a purchase (purchases commit synchronously before the outbox is
/// trimmed). It saves a WAL flush per batch, which at flash-crowd rates is
/// what lets the writer keep up.
pub(crate) fn insert_checkouts(
    conn: &mut CheckoutConn,
    rows: &[CheckoutRecord],
    mark: Option<BacklogMark>,
    commit_sent: &mut Option<String>,
) -> Result<u64, postgres::Error> {
    let data = checkouts_copy_data(rows);
    match mark {
        None => copy_checkouts(&mut conn.client, &conn.copy, &data),
        Some(mark) => {
            let mut tx = conn.client.transaction()?;
            let xid: String = tx
                .query_one(BACKLOG_MARK_SQL, &[&mark.writer, &timestamp(mark.since_ms)])?
                .get(0);
            let inserted = copy_checkouts(&mut tx, &conn.copy, &data)?;
            *commit_sent = Some(xid);
            tx.commit()?;
            *commit_sent = None;
            Ok(inserted)
        }
    }
}

/// What became of a transaction (`commit_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitStatus {
    Committed,
    Aborted,
    /// Not settled yet (its backend has not noticed the lost connection).
    InProgress,
    /// Too old for Postgres to know.
    Forgotten,
}

/// What became of the transaction `xid`.
pub(crate) fn commit_status(
    client: &mut Client,
    xid: &str,
) -> Result<CommitStatus, postgres::Error> {
    let status: Option<String> = client.query_one(XACT_STATUS_SQL, &[&xid])?.get(0);
    Ok(match status.as_deref() {
        Some("committed") => CommitStatus::Committed,
        Some("aborted") => CommitStatus::Aborted,
        Some(_) => CommitStatus::InProgress,
        None => CommitStatus::Forgotten,
    })
}

fn copy_checkouts(
    client: &mut impl postgres::GenericClient,
    copy: &postgres::Statement,
    data: &[u8],
) -> Result<u64, postgres::Error> {
    let mut writer = client.copy_in(copy)?;
    // The writer only buffers here; sending, and any error, happens in
    // finish(). Data cut short by a failed write is refused by Postgres
    // (no trailer), so nothing partial can commit.
    let _ = writer.write_all(data);
    writer.finish()
}

/// A writer's `users_backlog` row: checkouts from `since_ms` (Unix ms) on
/// may name users `users` does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BacklogMark {
    pub(crate) writer: i64,
    pub(crate) since_ms: i64,
}

/// Users collected from committed checkout batches, in one transaction that
/// commits synchronously (the session's default): once it returns they
/// survive a Postgres crash, and so do the checkout batches committed before
/// them (their WAL comes first). By `MERGE` (`USERS_MERGE_SQL`), or, when
/// another transaction inserted one of the users meanwhile, by `INSERT … ON
/// CONFLICT DO NOTHING`. Returns the rows inserted.
pub(crate) fn insert_users(
    client: &mut Client,
    users: &UserColumns,
) -> Result<u64, postgres::Error> {
    if users.ids.is_empty() {
        return Ok(0);
    }
    match insert_users_by(client, users, true) {
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
            tracing::info!(error = %e, "users MERGE met a concurrent insert; retried with ON CONFLICT");
            insert_users_by(client, users, false)
        }
        other => other,
    }
}

fn insert_users_by(
    client: &mut Client,
    users: &UserColumns,
    merge: bool,
) -> Result<u64, postgres::Error> {
    let mut tx = client.transaction()?;
    let inserted = if merge {
        let first_seen: Vec<SystemTime> = users
            .first_seen_ms
            .iter()
            .map(|&ms| timestamp(ms))
            .collect();
        tx.batch_execute(USERS_MERGE_PLAN)?;
        tx.execute(USERS_MERGE_SQL, &[&users.ids, &first_seen])?
    } else {
        users.insert(&mut tx)?
    };
    tx.commit()?;
    Ok(inserted)
}

/// Deletes the writer's backlog mark (every user it covered is committed).
pub(crate) fn clear_backlog(client: &mut Client, writer: i64) -> Result<(), postgres::Error> {
    client.execute(BACKLOG_CLEAR_SQL, &[&writer]).map(|_| ())
}

/// What `catch_up_users` repaired.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CaughtUp {
    /// Stale marks handled.
    pub(crate) marks: u64,
    /// Users inserted from the checkouts they covered.
    pub(crate) users: u64,
}

/// Repairs the backlog of writers that are gone: for each mark not written
/// for `stale`, inserts the users of every checkout from its `since` on
/// (`ON CONFLICT DO NOTHING`: idempotent, and harmless for users another
/// live writer will still commit) and deletes the mark, in one synchronous
/// transaction. A mark its writer wrote again meanwhile stays.
pub(crate) fn catch_up_users(
    client: &mut Client,
    stale: Duration,
) -> Result<CaughtUp, postgres::Error> {
    let mut done = CaughtUp::default();
    let marks = client.query(BACKLOG_STALE_SQL, &[&stale.as_secs_f64()])?;
    for mark in marks {
        let writer: i64 = mark.get(0);
        let since: SystemTime = mark.get(1);
        let updated_at: SystemTime = mark.get(2);
        let mut tx = client.transaction()?;
        let users = tx.execute(CATCH_UP_SQL, &[&since])?;
        tx.execute(BACKLOG_REPAIRED_SQL, &[&writer, &updated_at])?;
        tx.commit()?;
        done.marks += 1;
        done.users += users;
    }
    Ok(done)
}

/// What one purchases transaction committed.
#[derive(Debug, Default)]
pub(crate) struct PurchasesWritten {
    pub(crate) new_users: u64,
    pub(crate) inserted: u64,
    /// Entries whose item Postgres already records as bought with another
    /// code: a double sale, which the insert skipped and `double_sales`
    /// records.
    pub(crate) double_sales: Vec<DoubleSale>,
    /// Of those, how many `double_sales` did not have yet.
    pub(crate) double_sales_recorded: u64,
}

/// An entry refused as a double sale, and the purchase Postgres records
/// for its item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DoubleSale {
    /// The entry's index in its batch.
    pub(crate) index: usize,
    pub(crate) recorded_user: i64,
    pub(crate) recorded_code: String,
}

/// Users, then purchases (idempotent), in one transaction that commits
/// synchronously (the outbox entries are deleted after it). Every user of
/// the batch is upserted, whatever checkout batches did before: their
/// commits are asynchronous and a crash may have lost them, and the
/// purchase's foreign key must hold in its own transaction. A row skipped
/// by `ON CONFLICT` is a replay when the recorded purchase has the entry's
/// code, and a double sale otherwise: never inserted into `purchases`, it
/// goes into `double_sales` in the same transaction.
pub(crate) fn insert_purchases(
    client: &mut Client,
    entries: &[OutboxEntry],
) -> Result<PurchasesWritten, postgres::Error> {
    let users = UserColumns::build(entries.iter().map(|e| (e.user_id, e.at_ms)), None);
    let p = PurchaseColumns::build(entries);
    let created: Vec<SystemTime> = p.at_ms.iter().map(|&ms| timestamp(ms)).collect();
    let mut tx = client.transaction()?;
    let new_users = users.insert(&mut tx)?;
    let inserted = tx.execute(
        PURCHASES_SQL,
        &[&p.sale_ids, &p.item_ids, &p.user_ids, &p.codes, &created],
    )?;
    let mut double_sales = Vec::new();
    let mut double_sales_recorded = 0;
    if inserted < entries.len() as u64 {
        let recorded: HashMap<i64, (String, i64)> = tx
            .query(RECORDED_CODES_SQL, &[&p.sale_ids, &p.item_ids])?
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect();
        double_sales = double_sales_among(entries, &recorded);
        if !double_sales.is_empty() {
            let d = DoubleSaleColumns::build(entries, &double_sales);
            double_sales_recorded = tx.execute(
                DOUBLE_SALES_SQL,
                &[
                    &d.sale_ids,
                    &d.item_ids,
                    &d.user_ids,
                    &d.codes,
                    &d.sold_at,
                    &d.recorded_users,
                    &d.recorded_codes,
                ],
            )?;
        }
    }
    tx.commit()?;
    Ok(PurchasesWritten {
        new_users,
        inserted,
        double_sales,
        double_sales_recorded,
    })
}

/// Columns of the `double_sales` rows of a batch.
#[derive(Debug, Default)]
struct DoubleSaleColumns {
    sale_ids: Vec<i64>,
    item_ids: Vec<i64>,
    user_ids: Vec<i64>,
    codes: Vec<String>,
    sold_at: Vec<SystemTime>,
    recorded_users: Vec<i64>,
    recorded_codes: Vec<String>,
}

impl DoubleSaleColumns {
    fn build(entries: &[OutboxEntry], double_sales: &[DoubleSale]) -> Self {
        let mut cols = DoubleSaleColumns::default();
        for d in double_sales {
            let e = &entries[d.index];
            cols.sale_ids.push(e.sale_id);
            cols.item_ids.push(e.item_id);
            cols.user_ids.push(e.user_id);
            cols.codes.push(e.code.clone());
            cols.sold_at.push(timestamp(e.at_ms));
            cols.recorded_users.push(d.recorded_user);
            cols.recorded_codes.push(d.recorded_code.clone());
        }
        cols
    }
}

/// Entries whose item is recorded with another code, with that record.
/// `recorded` maps item id → (recorded code, buyer); a batch holds one
/// sale's entries.
fn double_sales_among(
    entries: &[OutboxEntry],
    recorded: &HashMap<i64, (String, i64)>,
) -> Vec<DoubleSale> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(index, e)| {
            let (code, user) = recorded.get(&e.item_id)?;
            (*code != e.code).then(|| DoubleSale {
                index,
                recorded_user: *user,
                recorded_code: code.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_or_outage(e: &&str) -> Failure {
        match *e {
            "data" => Failure::Refused,
            "parent" => Failure::NotYet,
            _ => Failure::Outage,
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
        let none = KnownUsers::new(10);
        let cols = UserColumns::build(
            [(5, 300), (2, 200), (5, 100), (9, 50), (2, 250)],
            Some(&none),
        );
        assert_eq!(cols.ids, vec![2, 5, 9]);
        assert_eq!(cols.first_seen_ms, vec![200, 100, 50]);
        assert_eq!(UserColumns::build([], None), UserColumns::default());
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
        let cols = UserColumns::build([(5, 300), (2, 200), (9, 50)], Some(&known));
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
            |_| Failure::Refused,
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
            data_or_outage,
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
            data_or_outage,
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
        let out = write_bisecting(&[] as &[i32], |_| Err("never"), |_| Failure::Outage);
        assert!(out.done.is_empty());
        assert!(out.error.is_none());
    }

    #[test]
    fn only_a_row_s_own_values_make_a_refusal_final() {
        // A missing parent row is retried: it may come back (or be written
        // later), and the row is fine as it is.
        assert_eq!(classify_sqlstate("23503"), Failure::NotYet); // foreign_key_violation
        assert_eq!(classify_sqlstate("23001"), Failure::NotYet); // restrict_violation
        assert_eq!(classify_sqlstate("23000"), Failure::NotYet); // integrity_constraint_violation
        for code in ["23502", "23505", "23514", "23P01"] {
            assert_eq!(classify_sqlstate(code), Failure::Refused, "{code}");
        }
        for code in ["22001", "22003", "22007", "22008", "22P02", "22021"] {
            assert_eq!(classify_sqlstate(code), Failure::Refused, "{code}");
        }
        // No verdict on the rows: connection, shutdown, crash recovery,
        // serialization, deadlock, disk full, missing table.
        for code in [
            "08006", "57P01", "57P03", "40001", "40P01", "53100", "42P01",
        ] {
            assert_eq!(classify_sqlstate(code), Failure::Outage, "{code}");
        }
    }

    #[test]
    fn bisecting_keeps_rows_refused_for_now_pending() {
        let rows: Vec<i32> = (0..9).collect();
        let mut written = Vec::new();
        let out = write_bisecting(
            &rows,
            |part| {
                if part.contains(&2) || part.contains(&7) {
                    Err("parent")
                } else if part.contains(&5) {
                    Err("data")
                } else {
                    written.extend_from_slice(part);
                    Ok(())
                }
            },
            data_or_outage,
        );
        assert_eq!(out.deferred, vec![2, 7]);
        assert_eq!(out.rejected, vec![5]);
        assert!(out.error.is_none());
        let not_done: Vec<usize> = (0..9).filter(|&i| !out.done[i]).collect();
        assert_eq!(not_done, vec![2, 7], "deferred rows stay pending");
        written.sort();
        assert_eq!(written, vec![0, 1, 3, 4, 6, 8]);
    }

    #[test]
    fn a_skipped_row_with_another_code_is_a_double_sale() {
        let entries = vec![
            purchase("1-0", 2_000_001, 7),
            purchase("1-1", 2_000_002, 8),
            purchase("1-2", 2_000_003, 9),
        ];
        let recorded: HashMap<i64, (String, i64)> = [
            (2_000_001, ("code-7".to_string(), 7)), // a replay
            (2_000_002, ("code-5".to_string(), 5)), // sold with another code
        ]
        .into();
        let found = double_sales_among(&entries, &recorded);
        assert_eq!(
            found,
            [DoubleSale {
                index: 1,
                recorded_user: 5,
                recorded_code: "code-5".to_string()
            }]
        );
        let cols = DoubleSaleColumns::build(&entries, &found);
        assert_eq!(cols.item_ids, [2_000_002]);
        assert_eq!((cols.user_ids[0], cols.recorded_users[0]), (8, 5));
        assert_eq!(
            (cols.codes[0].as_str(), cols.recorded_codes[0].as_str()),
            ("code-8", "code-5")
        );
    }

    #[test]
    fn known_users_are_forgotten_on_a_new_connection_or_an_error() {
        let mut known = KnownUsers::new(10);
        known.check_epoch(4);
        known.remember(&[2, 9]);
        known.check_epoch(4);
        assert!(known.contains(2), "same connections: still trusted");
        known.check_epoch(5);
        assert!(!known.contains(2) && !known.contains(9));
        known.remember(&[3]);
        known.forget();
        assert!(!known.contains(3));
    }
}
