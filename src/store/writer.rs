//! The writer thread ("pg-writer"): batches the cores' checkout records into
//! Postgres (many rows per statement), collects their new users and commits
//! those apart, in fewer and bigger transactions (`PendingUsers`), drains the per-sale Redis purchase
//! outboxes into `purchases` (XDEL only after commit, so a killed process
//! loses nothing and the next start replays what is left), probes Postgres
//! to keep `PostgresHealth` true, and backs off while Postgres is down
//! without dropping or endlessly buffering records. An outbox entry that
//! can never be recorded (malformed, refused for good, a double sale) is
//! moved to its sale's dead letter at once, logged and counted; one that
//! cannot be recorded yet (a row it references is missing) stays and is
//! retried. The statements themselves, what a refusal means, and the
//! bisection that isolates refused rows are in `batch`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::{Error, ErrorKind};
use crate::metrics::{self, Table};

use super::batch::{
    BacklogMark, CheckoutConn, CommitStatus, DoubleSale, IdHasher, KnownUsers, UserColumns,
    catch_up_users, classify, clear_backlog, commit_status, insert_checkouts, insert_purchases,
    insert_users, write_bisecting,
};
use super::outbox::{self, DeadReason, OutboxEntry};
use super::sales::{self, SaleRow};
use super::{CheckoutRecord, PgPool, PostgresHealth, Record, RecordReceiver};
use crate::clock::RedisClock;
use crate::redis_client::blocking::{BlockingRedis, RedisEndpoint};
use crate::redis_client::keys::Keys;

/// The writer's knobs.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most rows in one INSERT.
    pub batch_rows: usize,
    /// Longest the first record of a batch waits before the batch is flushed.
    pub flush_after: Duration,
    /// Where the purchase outboxes live.
    pub redis: RedisEndpoint,
    /// Redis key names behind the deployment's prefix.
    pub keys: Arc<Keys>,
    /// Redis's clock as this instance tracks it: when to try closing a sale.
    pub clock: Arc<RedisClock>,
    /// Longest the new users of committed checkout batches wait before they
    /// are committed to `users` (fewer, bigger transactions).
    pub users_flush_after: Duration,
    /// A `users_backlog` mark not written for this long belongs to a writer
    /// that is gone: any instance then repairs it.
    pub users_backlog_stale: Duration,
    /// Where the checkouts connection (outside the pool) connects.
    pub database: postgres::Config,
}

/// While Postgres is down the writer holds at most this many batches; past
/// that it stops pulling from the channel, which fills, and the cores shed
/// with 503.
const HELD_BATCHES: usize = 4;
/// User ids the writer remembers as committed (about 16 MB at most).
const KNOWN_USERS: usize = 1 << 20;
/// Users collected before they are committed at once, whatever their age.
const USERS_BATCH: usize = 50_000;
/// Past this many collected users, checkout batches wait until the users
/// are committed (bounded memory while Postgres fails).
const USERS_HOLD: usize = 4 * USERS_BATCH;
/// How often stale `users_backlog` marks are looked for.
const BACKLOG_CHECK: Duration = Duration::from_secs(10);
/// How often the outboxes are read.
const OUTBOX_INTERVAL: Duration = Duration::from_millis(10);
/// Entries per XRANGE (and so per purchases transaction).
const OUTBOX_READ: usize = 5_000;
/// XRANGE rounds per sale in one ordinary pass, so a purchase storm cannot
/// starve the checkout batches.
const OUTBOX_ROUNDS: usize = 4;
/// How often the list of sales to drain is re-read (and outboxes re-read
/// from their head).
const SALES_REFRESH: Duration = Duration::from_secs(1);
/// Probe Postgres when it has not been talked to for this long.
const PROBE_IDLE: Duration = Duration::from_secs(1);
/// ... and more often while it is down, so that health comes back quickly.
const PROBE_DOWN: Duration = Duration::from_millis(500);
/// Longest wait for a pooled connection.
const POOL_WAIT: Duration = Duration::from_millis(500);
/// Redis connect and IO timeouts.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REDIS_IO_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest the loop sleeps when it is not waiting on the channel.
const IDLE_TICK: Duration = Duration::from_millis(10);

/// The running writer thread.
pub struct WriterHandle {
    thread: JoinHandle<()>,
    stop: Arc<Stop>,
    /// Disconnected when the thread has exited (its sender is dropped).
    done: Receiver<()>,
}

/// The shutdown deadline, set once by `shutdown_and_join`.
#[derive(Default)]
struct Stop {
    deadline: Mutex<Option<Instant>>,
}

impl Stop {
    fn request(&self, at: Instant) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the writer thread.
pub fn spawn(
    config: WriterConfig,
    pool: PgPool,
    records: RecordReceiver,
    health: Arc<PostgresHealth>,
) -> std::io::Result<WriterHandle> {
    let stop = Arc::new(Stop::default());
    let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
    let writer = Writer::new(config, pool, records, health, stop.clone());
    let thread = std::thread::Builder::new()
        .name("pg-writer".into())
        .spawn(move || {
            let _done = done_tx;
            writer.run();
        })?;
    Ok(WriterHandle { thread, stop, done })
}

impl WriterHandle {
    /// Lets the writer finish: it exits once the channel is closed (every
    /// sender dropped), everything received is committed and the outboxes
    /// are drained once more, or at `stop_at` (what is left is logged;
    /// outbox entries stay in Redis and are replayed on next start). Waits
    /// for the thread until `give_up_at` (it may be inside a blocking call
    /// at `stop_at`), then leaves it behind.
    pub fn shutdown_and_join(self, stop_at: Instant, give_up_at: Instant) {
        self.stop.request(stop_at);
        match self.done.recv_deadline(give_up_at) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                if self.thread.join().is_err() {
                    tracing::error!("the Postgres writer thread panicked");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                tracing::error!("the Postgres writer did not stop in time; leaving it behind");
            }
        }
    }
}

/// Exponential backoff: 50 ms, doubling, capped at 5 s.
#[derive(Debug, Default)]
struct Backoff {
    delay: Option<Duration>,
    until: Option<Instant>,
    failures: u32,
}

impl Backoff {
    /// Records a failure; returns how long to wait.
    fn fail(&mut self, now: Instant) -> Duration {
        let next = self
            .delay
            .map_or(BACKOFF_MIN, |d| d.saturating_mul(2).min(BACKOFF_MAX));
        self.delay = Some(next);
        self.until = Some(now + next);
        self.failures = self.failures.saturating_add(1);
        next
    }

    /// Records a success; returns how many failures it ends.
    fn reset(&mut self) -> u32 {
        self.delay = None;
        self.until = None;
        std::mem::take(&mut self.failures)
    }

    fn ready(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now >= u)
    }

    fn failing(&self) -> bool {
        self.failures > 0
    }
}

/// How an outbox pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Every watched outbox was read to its end.
    Complete,
    /// Entries are still waiting (the pass stopped after its rounds).
    More,
    /// Redis is in its backoff: nothing was read.
    RedisWaiting,
}

/// Why an outbox pass stopped early.
enum DrainError {
    Postgres(Error),
    Redis(Error),
}

struct Writer {
    config: WriterConfig,
    pool: PgPool,
    records: RecordReceiver,
    health: Arc<PostgresHealth>,
    stop: Arc<Stop>,
    metrics: &'static metrics::WriterMetrics,

    /// Received checkout records not yet committed, oldest first.
    pending: VecDeque<CheckoutRecord>,
    /// When the oldest pending record arrived.
    oldest: Option<Instant>,
    /// Every sender is gone.
    closed: bool,
    /// Users this writer committed to `users`, not collected again (see
    /// `KnownUsers` for when it is forgotten).
    known_users: KnownUsers,
    /// Users of committed checkout batches, not yet in `users`.
    users: PendingUsers,
    /// The connection checkout batches go through (opened on first use,
    /// dropped on any Postgres failure).
    checkout_conn: Option<CheckoutConn>,
    /// A checkout batch whose `COMMIT` went out unanswered: settled (asked
    /// about) before any checkout is written again.
    in_doubt: Option<InDoubtBatch>,
    /// This writer's key in `users_backlog` (random per process).
    writer_id: i64,
    /// When stale backlog marks are next looked for.
    next_catch_up: Instant,

    pg: Backoff,
    last_pg_contact: Instant,

    redis: Option<BlockingRedis>,
    redis_backoff: Backoff,

    /// Sales whose outboxes are watched, and when that list was read.
    sales: Vec<SaleRow>,
    sales_read_at: Option<Instant>,
    /// Per sale, the id of the last entry handled (committed and deleted,
    /// moved to the dead letter, or left to retry); reads continue after
    /// it. Reset on errors and refreshes.
    cursors: HashMap<i64, String>,
    /// Entries in every dead letter at the last count.
    dead_letters: u64,
    next_outbox: Instant,
}

impl Writer {
    fn new(
        config: WriterConfig,
        pool: PgPool,
        records: RecordReceiver,
        health: Arc<PostgresHealth>,
        stop: Arc<Stop>,
    ) -> Self {
        let now = Instant::now();
        let config = WriterConfig {
            batch_rows: config.batch_rows.max(1),
            ..config
        };
        Writer {
            config,
            pool,
            records,
            health,
            stop,
            metrics: &metrics::registry().writer,
            pending: VecDeque::new(),
            oldest: None,
            closed: false,
            known_users: KnownUsers::new(KNOWN_USERS),
            users: PendingUsers::default(),
            checkout_conn: None,
            in_doubt: None,
            writer_id: rand::RngExt::random::<i64>(&mut rand::rng()),
            // At once: repairs what a killed process left.
            next_catch_up: now,
            pg: Backoff::default(),
            // Probe at once: health starts down until Postgres answers.
            last_pg_contact: now.checked_sub(PROBE_IDLE).unwrap_or(now),
            redis: None,
            redis_backoff: Backoff::default(),
            sales: Vec::new(),
            sales_read_at: None,
            cursors: HashMap::new(),
            dead_letters: 0,
            // The first pass, at once, replays what a killed process left.
            next_outbox: now,
        }
    }

    fn run(mut self) {
        tracing::info!(
            batch_rows = self.config.batch_rows,
            flush_after = %crate::logging::Human(self.config.flush_after),
            "Postgres writer started"
        );
        loop {
            if let Some(deadline) = self.stop.deadline()
                && Instant::now() >= deadline
            {
                self.log_leftovers();
                return;
            }
            self.receive();

            let now = Instant::now();
            if self.pg.ready(now) {
                self.flush_checkouts();
            }
            if self.pg.ready(Instant::now()) {
                self.flush_users(false);
            }
            let now = Instant::now();
            if self.pg.ready(now) && now >= self.next_catch_up {
                self.next_catch_up = now + BACKLOG_CHECK;
                self.catch_up();
            }
            let now = Instant::now();
            if self.pg.ready(now) && now >= self.next_outbox {
                self.next_outbox = now + OUTBOX_INTERVAL;
                match self.drain_outboxes(false) {
                    // More is waiting: come back at once.
                    Ok(Pass::More) => self.next_outbox = Instant::now(),
                    Ok(Pass::Complete | Pass::RedisWaiting) => {}
                    Err(e) => self.drain_failed(e),
                }
            }
            if self.probe_due(Instant::now()) {
                self.probe();
            }

            if self.closed
                && self.pending.is_empty()
                && self.users.settled()
                && self.pg.ready(Instant::now())
            {
                // Everything received is committed: one more full outbox pass.
                match self.drain_outboxes(true) {
                    Ok(Pass::Complete) => {
                        tracing::info!("Postgres writer flushed and stopped");
                        return;
                    }
                    // Wait for Redis (or the deadline).
                    Ok(Pass::More | Pass::RedisWaiting) => {}
                    Err(e) => self.drain_failed(e),
                }
            }
        }
    }

    /// How many records the writer holds before it stops pulling: a batch
    /// when Postgres keeps up, a few batches while it is failing.
    fn hold_limit(&self, now: Instant) -> usize {
        if self.pg.ready(now) && !self.pg.failing() {
            self.config.batch_rows
        } else {
            self.config.batch_rows.saturating_mul(HELD_BATCHES)
        }
    }

    /// Waits for records (or until the next timed duty) and takes what is
    /// there, up to the hold limit.
    fn receive(&mut self) {
        let now = Instant::now();
        let wait = self.next_wakeup(now).saturating_duration_since(now);
        let limit = self.hold_limit(now);
        if self.closed || self.pending.len() >= limit {
            std::thread::sleep(wait.min(IDLE_TICK));
            return;
        }
        if self.pending.is_empty() {
            // The first record opens a batch: wake for it at once.
            match self.records.wait(wait) {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        } else {
            // A batch is open: let its window fill instead of waking for every
            // record (under a crowd that was thousands of wake-ups a second).
            std::thread::sleep(wait);
        }
        let room = limit.saturating_sub(self.pending.len());
        let (pending, oldest) = (&mut self.pending, &mut self.oldest);
        let taken = self.records.take(room, |record| match record {
            Record::Checkout(checkout) => {
                if pending.is_empty() {
                    *oldest = Some(Instant::now());
                }
                pending.push_back(checkout);
            }
        });
        if taken.is_err() {
            self.closed = true;
        }
    }

    /// The next moment something timed is due.
    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut at = now + IDLE_TICK.max(self.config.flush_after);
        let mut consider = |t: Instant| at = at.min(t);
        consider(self.next_outbox);
        consider(self.last_pg_contact + self.probe_interval());
        if let Some(until) = self.pg.until {
            consider(until);
        }
        if let Some(oldest) = self.oldest
            && !self.pending.is_empty()
        {
            consider(oldest + self.config.flush_after);
        }
        if let Some(since) = self.users.since {
            consider(since + self.config.users_flush_after);
        }
        consider(self.next_catch_up);
        if let Some(deadline) = self.stop.deadline() {
            consider(deadline);
        }
        at.max(now)
    }

    fn flush_due(&self, now: Instant) -> bool {
        !self.pending.is_empty()
            && (self.closed
                || self.stop.deadline().is_some()
                || self.pending.len() >= self.config.batch_rows
                || self
                    .oldest
                    .is_none_or(|t| now >= t + self.config.flush_after))
    }

    /// Writes due batches until none is due or Postgres fails. The users of
    /// each committed batch are collected (`PendingUsers`), not written.
    fn flush_checkouts(&mut self) {
        while self.flush_due(Instant::now()) && self.pg.ready(Instant::now()) {
            if !self.settle_in_doubt() {
                return;
            }
            if self.users.len() >= USERS_HOLD {
                // Bounded memory: the users go first.
                self.flush_users(true);
                if self.users.len() >= USERS_HOLD {
                    return;
                }
            }
            let n = self.pending.len().min(self.config.batch_rows);
            let started = Instant::now();
            let mut conn = match self.checkout_conn.take() {
                Some(conn) => conn,
                None => match CheckoutConn::open(&self.config.database) {
                    Ok(conn) => conn,
                    Err(e) => {
                        self.pg_failed(Error::from(e), "checkouts batch");
                        return;
                    }
                },
            };
            self.known_users.check_epoch(super::connections_opened());
            let batch = &self.pending.make_contiguous()[..n];
            let known_users = &self.known_users;
            let users = &mut self.users;
            let writer = self.writer_id;
            let remark_after = self.config.users_backlog_stale / 2;
            let mut rows = 0u64;
            let mut in_doubt = None;
            let outcome = write_bisecting(
                batch,
                |part| {
                    // The earliest checkout whose user `users` may lack.
                    let new_since = part
                        .iter()
                        .filter(|r| !known_users.contains(r.user_id))
                        .map(|r| r.at_ms)
                        .min();
                    let mark = new_since.and_then(|since| users.mark_needed(since, remark_after));
                    // The last part written is the one an outage stopped at.
                    in_doubt = None;
                    let mut commit_sent = None;
                    let written = insert_checkouts(
                        &mut conn,
                        part,
                        mark.map(|since_ms| BacklogMark { writer, since_ms }),
                        &mut commit_sent,
                    );
                    if let (Err(_), Some(xid)) = (&written, commit_sent) {
                        in_doubt = Some(InDoubtBatch {
                            xid,
                            records: part.to_vec(),
                        });
                    }
                    rows += written?;
                    if let Some(since_ms) = mark {
                        users.marked(since_ms);
                    }
                    users.collect(part.iter().filter(|r| !known_users.contains(r.user_id)));
                    Ok(())
                },
                classify,
            );
            if outcome.error.is_none() {
                // Kept for the next batch (dropped after an outage).
                self.checkout_conn = Some(conn);
            } else {
                self.in_doubt = in_doubt;
            }
            for &i in &outcome.deferred {
                tracing::warn!(record = ?batch[i], "checkout record refused by Postgres for now; kept and retried");
            }
            for &i in &outcome.rejected {
                tracing::error!(record = ?batch[i], "checkout record refused by Postgres constraints; dropped");
                self.metrics.postgres_error();
            }
            // Keep only what was neither committed nor refused, in order.
            let mut kept = Vec::new();
            for (i, record) in self.pending.drain(..n).enumerate() {
                if !outcome.done[i] {
                    kept.push(record);
                }
            }
            for record in kept.into_iter().rev() {
                self.pending.push_front(record);
            }
            self.count_batch(Table::Checkouts, rows, 0, started.elapsed());
            match outcome.error {
                None if !outcome.deferred.is_empty() => {
                    // Try those again with the next batch, not in a loop now.
                    self.pg_ok();
                    self.oldest = Some(Instant::now());
                    return;
                }
                None => {
                    self.pg_ok();
                    if self.pending.is_empty() {
                        self.oldest = None;
                    }
                }
                Some(e) => {
                    self.pg_failed(Error::from(e), "checkouts batch");
                    return;
                }
            }
        }
    }

    /// Settles a checkout batch whose `COMMIT` went out unanswered, before
    /// anything else is written: Postgres says whether it committed (its
    /// records are then done, and their users collected) or not (they are
    /// written again, still first in line). False while it cannot be
    /// settled yet (Postgres unreachable, the transaction still in progress).
    fn settle_in_doubt(&mut self) -> bool {
        let Some(doubt) = self.in_doubt.take() else {
            return true;
        };
        let status = match self.pool.get_timeout(POOL_WAIT) {
            Ok(mut client) => commit_status(&mut client, &doubt.xid).map_err(Error::from),
            Err(e) => Err(Error::from(e)),
        };
        let status = match status {
            Ok(CommitStatus::InProgress) => {
                self.in_doubt = Some(doubt);
                return false;
            }
            Ok(status) => status,
            Err(e) => {
                self.in_doubt = Some(doubt);
                self.pg_failed(e, "checkout batch in doubt");
                return false;
            }
        };
        match status {
            CommitStatus::Committed => {
                tracing::warn!(
                    xid = doubt.xid,
                    rows = doubt.records.len(),
                    "a checkout batch's commit answer was lost; Postgres has it, so it is not written again"
                );
                remove_in_order(&mut self.pending, &doubt.records);
                if self.pending.is_empty() {
                    self.oldest = None;
                }
                let known_users = &self.known_users;
                self.users.collect(
                    doubt
                        .records
                        .iter()
                        .filter(|r| !known_users.contains(r.user_id)),
                );
            }
            CommitStatus::Forgotten => tracing::warn!(
                xid = doubt.xid,
                "a checkout batch's commit answer was lost and Postgres no longer knows the transaction; written again"
            ),
            _ => tracing::info!(
                xid = doubt.xid,
                "a checkout batch's commit answer was lost; Postgres did not commit it, so it is written again"
            ),
        }
        true
    }

    /// Commits the collected users when due (`force`: now): in bigger
    /// batches than the checkouts', synchronously, then deletes this
    /// writer's backlog mark. A user refused for good (never, with ids > 0)
    /// is logged and dropped; nothing else is dropped.
    fn flush_users(&mut self, force: bool) {
        let Some(since) = self.users.since else {
            return;
        };
        let now = Instant::now();
        let due = force
            || self.closed
            || self.stop.deadline().is_some()
            || self.users.len() >= USERS_BATCH
            || now >= since + self.config.users_flush_after;
        if !due || !self.pg.ready(now) {
            return;
        }
        let started = Instant::now();
        let mut client = match self.pool.get_timeout(POOL_WAIT) {
            Ok(client) => client,
            Err(e) => {
                self.pg_failed(Error::from(e), "users batch");
                return;
            }
        };
        self.known_users.check_epoch(super::connections_opened());
        let mut collected: Vec<(i64, i64)> = self.users.drain();
        collected.sort_unstable();
        let mut inserted = 0u64;
        let outcome = write_bisecting(
            &collected,
            |part| {
                inserted += insert_users(&mut client, &UserColumns::sorted(part.to_vec()))?;
                Ok(())
            },
            classify,
        );
        for &i in &outcome.rejected {
            tracing::error!(user = ?collected[i], "users row refused by Postgres constraints; dropped");
            self.metrics.postgres_error();
        }
        let mut committed = Vec::with_capacity(collected.len());
        for (i, (id, at_ms)) in collected.into_iter().enumerate() {
            if outcome.done[i] {
                committed.push(id);
            } else {
                self.users.keep(id, at_ms);
            }
        }
        self.known_users.remember(&committed);
        if inserted > 0 {
            self.metrics
                .batch(Table::Users, inserted as usize, started.elapsed());
        }
        if let Some(e) = outcome.error {
            drop(client);
            self.pg_failed(Error::from(e), "users batch");
            return;
        }
        if self.users.is_empty() {
            if let Err(e) = clear_backlog(&mut client, self.writer_id) {
                drop(client);
                self.pg_failed(Error::from(e), "users backlog");
                return;
            }
            self.users.cleared();
        }
        drop(client);
        self.pg_ok();
    }

    /// Repairs the backlog marks of writers that are gone (killed before
    /// they committed their users): see `batch::catch_up_users`.
    fn catch_up(&mut self) {
        let mut client = match self.pool.get_timeout(POOL_WAIT) {
            Ok(client) => client,
            Err(e) => {
                self.pg_failed(Error::from(e), "users backlog repair");
                return;
            }
        };
        match catch_up_users(&mut client, self.config.users_backlog_stale) {
            Ok(done) => {
                drop(client);
                if done.marks > 0 {
                    tracing::warn!(
                        marks = done.marks,
                        users = done.users,
                        "users of checkouts left by a writer that stopped before committing them: inserted"
                    );
                }
                if done.users > 0 {
                    self.metrics
                        .batch(Table::Users, done.users as usize, Duration::ZERO);
                }
                self.pg_ok();
            }
            Err(e) => {
                drop(client);
                self.pg_failed(Error::from(e), "users backlog repair");
            }
        }
    }

    /// Counts committed rows (tables with no new rows are not counted).
    fn count_batch(&self, table: Table, rows: u64, users: u64, elapsed: Duration) {
        if rows > 0 {
            self.metrics.batch(table, rows as usize, elapsed);
        }
        if users > 0 {
            self.metrics.batch(Table::Users, users as usize, elapsed);
        }
    }

    fn probe_interval(&self) -> Duration {
        if self.health.is_up() {
            PROBE_IDLE
        } else {
            PROBE_DOWN
        }
    }

    fn probe_due(&self, now: Instant) -> bool {
        now >= self.last_pg_contact + self.probe_interval()
    }

    /// `SELECT 1`: keeps health true when idle, and ends the backoff as soon
    /// as Postgres is back.
    fn probe(&mut self) {
        let result = self
            .pool
            .get_timeout(POOL_WAIT)
            .map_err(Error::from)
            .and_then(|mut c| c.simple_query("SELECT 1").map_err(Error::from));
        match result {
            Ok(_) => self.pg_ok(),
            Err(e) => self.pg_failed(e, "probe"),
        }
    }

    fn pg_ok(&mut self) {
        self.last_pg_contact = Instant::now();
        if !self.health.is_up() {
            tracing::info!("Postgres is up");
        }
        self.health.set(true);
        let failures = self.pg.reset();
        if failures > 0 {
            tracing::info!(
                failures,
                held = self.pending.len(),
                "Postgres is back; writing again"
            );
        }
    }

    fn pg_failed(&mut self, e: Error, during: &'static str) {
        let now = Instant::now();
        self.last_pg_contact = now;
        self.health.set(false);
        // Cheap to rebuild, and a new connection may be to another server.
        self.known_users.forget();
        self.checkout_conn = None;
        // Another instance may repair (and delete) the backlog mark while
        // this writer cannot reach Postgres: write it again with the next
        // batch.
        self.users.unmark();
        self.metrics.postgres_error();
        let first = !self.pg.failing();
        let retry_in = self.pg.fail(now);
        if first {
            tracing::error!(error = %e, during, held = self.pending.len(), "Postgres failed; holding records and retrying");
        } else {
            tracing::debug!(error = %e, during, retry_in = ?retry_in, "Postgres still failing");
        }
    }

    fn drain_failed(&mut self, e: DrainError) {
        match e {
            DrainError::Postgres(e) => self.pg_failed(e, "outbox drain"),
            DrainError::Redis(e) => {
                self.redis = None;
                let first = !self.redis_backoff.failing();
                let retry_in = self.redis_backoff.fail(Instant::now());
                if first {
                    tracing::warn!(error = %e, "Redis failed during the outbox drain; will reconnect");
                } else {
                    tracing::debug!(error = %e, retry_in = ?retry_in, "Redis still failing (outbox drain)");
                }
            }
        }
        // Anything read but not deleted is read again from the head.
        self.cursors.clear();
    }

    /// Connects to Redis if needed (respecting the backoff).
    fn redis_connection(&mut self) -> Result<Option<&mut BlockingRedis>, DrainError> {
        if self.redis.is_none() {
            if !self.redis_backoff.ready(Instant::now()) {
                return Ok(None);
            }
            let con = self
                .config
                .redis
                .connect(REDIS_CONNECT_TIMEOUT, REDIS_IO_TIMEOUT)
                .map_err(DrainError::Redis)?;
            if self.redis_backoff.reset() > 0 {
                tracing::info!("Redis is back; draining outboxes again");
            }
            self.redis = Some(con);
        }
        Ok(self.redis.as_mut())
    }

    /// The Redis connection, within a pass that already has one.
    fn redis_now(&mut self) -> Result<&mut BlockingRedis, DrainError> {
        self.redis_connection()?.ok_or(DrainError::Redis(Error::new(
            ErrorKind::RedisUnavailable,
            "Redis connection lost",
        )))
    }

    /// One pass over every watched outbox. `full` reads each to its end (at
    /// shutdown).
    fn drain_outboxes(&mut self, full: bool) -> Result<Pass, DrainError> {
        if self.redis_connection()?.is_none() {
            return Ok(Pass::RedisWaiting);
        }
        let now = Instant::now();
        let refresh = full || self.sales_read_at.is_none_or(|t| now >= t + SALES_REFRESH);
        if refresh {
            let mut client = self
                .pool
                .get_timeout(POOL_WAIT)
                .map_err(|e| DrainError::Postgres(e.into()))?;
            self.sales = sales::sales_to_drain(&mut client).map_err(DrainError::Postgres)?;
            drop(client);
            self.pg_ok();
            self.sales_read_at = Some(now);
            // Re-read every outbox from its head now and then: picks up
            // entries committed but not deleted by an earlier failure, and
            // retries those that could not be recorded yet.
            self.cursors.clear();
            self.count_dead_letters()?;
        }

        let mut more = false;
        let mut pending = 0u64;
        let now_ms = self.config.clock.now_ms();
        for sale in self.sales.clone() {
            // Close first (Redis decides, by its clock), so that what the
            // drain below leaves is all there will ever be.
            let closed = refresh && now_ms >= sale.ends_at * 1000 && self.close(&sale)?;
            more |= self.drain_sale(sale.id, full)?;
            let keys = Arc::clone(&self.config.keys);
            let con = self.redis_now()?;
            let left = outbox::len(con, &keys, sale.id).map_err(DrainError::Redis)?;
            pending += left;
            if closed {
                self.close_out(sale.id, left)?;
            }
        }
        self.metrics.set_outbox_pending(pending);
        Ok(if more { Pass::More } else { Pass::Complete })
    }

    /// Reads, commits and deletes one sale's outbox entries. Returns whether
    /// more are waiting after the rounds allowed.
    fn drain_sale(&mut self, sale_id: i64, full: bool) -> Result<bool, DrainError> {
        let mut rounds = 0;
        loop {
            let cursor = self.cursors.get(&sale_id).cloned();
            let keys = Arc::clone(&self.config.keys);
            let con = self.redis_now()?;
            let batch = outbox::read(con, &keys, sale_id, cursor.as_deref(), OUTBOX_READ)
                .map_err(DrainError::Redis)?;
            for id in &batch.malformed {
                tracing::error!(sale_id, stream_id = %id, "malformed outbox entry");
                self.dead_letter(sale_id, id, DeadReason::Malformed)?;
            }
            if !batch.entries.is_empty() {
                self.commit_purchases(sale_id, &batch.entries)?;
            }
            match batch.last_id {
                Some(last) => {
                    self.cursors.insert(sale_id, last);
                }
                None => return Ok(false),
            }
            if batch.raw_count < OUTBOX_READ {
                return Ok(false);
            }
            rounds += 1;
            if !full && rounds >= OUTBOX_ROUNDS {
                return Ok(true);
            }
        }
    }

    /// One transaction of users and purchases, then XDEL of what committed.
    /// Entries refused for good and double sales go to the dead letter;
    /// entries refused for now stay in the outbox for the next read.
    fn commit_purchases(
        &mut self,
        sale_id: i64,
        entries: &[OutboxEntry],
    ) -> Result<(), DrainError> {
        let started = Instant::now();
        let mut client = self
            .pool
            .get_timeout(POOL_WAIT)
            .map_err(|e| DrainError::Postgres(e.into()))?;
        let mut users = 0u64;
        let mut rows = 0u64;
        let mut double_sales: Vec<(OutboxEntry, DoubleSale)> = Vec::new();
        let mut new_double_sales = 0u64;
        let outcome = write_bisecting(
            entries,
            |part| {
                let written = insert_purchases(&mut client, part)?;
                users += written.new_users;
                rows += written.inserted;
                double_sales.extend(
                    written
                        .double_sales
                        .into_iter()
                        .map(|d| (part[d.index].clone(), d)),
                );
                new_double_sales += written.double_sales_recorded;
                Ok(())
            },
            classify,
        );
        drop(client);
        self.count_batch(Table::Purchases, rows, users, started.elapsed());
        self.metrics.double_sales(new_double_sales);
        if !outcome.deferred.is_empty() {
            self.metrics.outbox_retries(outcome.deferred.len() as u64);
            tracing::warn!(
                sale_id,
                entries = outcome.deferred.len(),
                first = ?entries[outcome.deferred[0]],
                "outbox entries reference a row Postgres does not have (yet); kept in the outbox and retried"
            );
        }
        let mut dead: HashSet<&str> = HashSet::new();
        for &i in &outcome.rejected {
            let entry = &entries[i];
            tracing::error!(?entry, "outbox entry refused by Postgres constraints");
            self.metrics.postgres_error();
            dead.insert(&entry.stream_id);
        }
        for (entry, double) in &double_sales {
            tracing::error!(
                ?entry,
                recorded_user = double.recorded_user,
                recorded_code = %double.recorded_code,
                "double sale: Postgres records this item as bought by another purchase; this one is not recorded (kept in double_sales)"
            );
            dead.insert(&entry.stream_id);
        }
        let committed: Vec<String> = entries
            .iter()
            .enumerate()
            .filter(|(i, e)| outcome.done[*i] && !dead.contains(e.stream_id.as_str()))
            .map(|(_, e)| e.stream_id.clone())
            .collect();
        // Delete what is committed, even when a later part failed.
        let keys = Arc::clone(&self.config.keys);
        let con = self.redis_now()?;
        outbox::ack(con, &keys, sale_id, &committed).map_err(DrainError::Redis)?;
        for &i in &outcome.rejected {
            self.dead_letter(sale_id, &entries[i].stream_id, DeadReason::Refused)?;
        }
        for (entry, _) in &double_sales {
            self.dead_letter(sale_id, &entry.stream_id, DeadReason::DoubleSale)?;
        }
        match outcome.error {
            Some(e) => Err(DrainError::Postgres(e.into())),
            None => {
                self.pg_ok();
                Ok(())
            }
        }
    }

    /// Moves one outbox entry to its sale's dead letter, and counts it.
    fn dead_letter(
        &mut self,
        sale_id: i64,
        stream_id: &str,
        reason: DeadReason,
    ) -> Result<(), DrainError> {
        let keys = Arc::clone(&self.config.keys);
        let con = self.redis_now()?;
        if outbox::move_to_dead_letter(con, &keys, sale_id, stream_id, reason)
            .map_err(DrainError::Redis)?
        {
            self.metrics.dead_lettered(reason.as_str());
            self.dead_letters += 1;
            self.metrics.set_dead_letters(self.dead_letters);
            tracing::error!(
                sale_id,
                stream_id,
                reason = reason.as_str(),
                key = %keys.outbox_dead_letter(sale_id),
                "purchase moved to the dead letter: it is sold in Redis and not recorded in Postgres"
            );
        }
        Ok(())
    }

    /// Counts the entries of every dead letter (the gauge, and /health).
    fn count_dead_letters(&mut self) -> Result<(), DrainError> {
        let keys = Arc::clone(&self.config.keys);
        let con = self.redis_now()?;
        let (entries, sales) = outbox::dead_letter_totals(con, &keys).map_err(DrainError::Redis)?;
        if entries != self.dead_letters && entries > 0 {
            tracing::warn!(
                entries,
                sales,
                "purchases wait in dead letters (<prefix>{{sale:S}}:outbox:dead); see `flashsale check`"
            );
        }
        self.dead_letters = entries;
        self.metrics.set_dead_letters(entries);
        Ok(())
    }

    /// The close-out's first step: closes the sale in Redis once Redis's
    /// clock has passed its end (`close_sale.lua`; purchases are refused
    /// from then on). Returns whether it is closed.
    fn close(&mut self, sale: &SaleRow) -> Result<bool, DrainError> {
        let keys = Arc::clone(&self.config.keys);
        let con = self.redis_now()?;
        outbox::close_sale(con, &keys, sale.id, sale.ends_at).map_err(DrainError::Redis)
    }

    /// A closed sale's last step: once its outbox is empty, mark it drained
    /// and delete the stream. (Entries that can never be recorded are in the
    /// dead letter already; entries left are still to be recorded.)
    fn close_out(&mut self, sale_id: i64, left: u64) -> Result<(), DrainError> {
        if left > 0 {
            // Still live entries (perhaps another instance is on them).
            return Ok(());
        }
        let mut client = self
            .pool
            .get_timeout(POOL_WAIT)
            .map_err(|e| DrainError::Postgres(e.into()))?;
        sales::mark_drained(&mut client, sale_id).map_err(DrainError::Postgres)?;
        drop(client);
        let keys = Arc::clone(&self.config.keys);
        let con = self.redis_now()?;
        outbox::delete(con, &keys, sale_id).map_err(DrainError::Redis)?;
        self.sales.retain(|s| s.id != sale_id);
        self.cursors.remove(&sale_id);
        tracing::info!(sale_id, "sale outbox drained and closed out");
        Ok(())
    }

    fn log_leftovers(&self) {
        let queued = self.records.len();
        if !self.users.is_empty() {
            tracing::error!(
                users = self.users.len(),
                "Postgres writer stopped at its deadline with users of committed checkouts not in users; \
                 the backlog mark stays, and a running instance inserts them after the stale delay"
            );
        }
        if self.pending.is_empty() && queued == 0 {
            tracing::warn!(
                "Postgres writer stopped at its deadline before its last outbox pass; \
                 what is left in the Redis outboxes is replayed on the next start"
            );
        } else {
            tracing::error!(
                held = self.pending.len(),
                queued,
                "Postgres writer stopped at its deadline; these checkout records are not written \
                 (purchases stay in the Redis outboxes and are replayed on the next start)"
            );
        }
    }
}

/// A checkout batch whose `COMMIT` was sent and not answered.
struct InDoubtBatch {
    /// Its transaction's id (`pg_current_xact_id`).
    xid: String,
    /// Its records, still pending too.
    records: Vec<CheckoutRecord>,
}

/// Removes `records` from `pending`, where they stand in the same order
/// (maybe with others between them).
fn remove_in_order(pending: &mut VecDeque<CheckoutRecord>, records: &[CheckoutRecord]) {
    let mut next = records.iter().peekable();
    pending.retain(|r| {
        if next.peek() == Some(&r) {
            next.next();
            false
        } else {
            true
        }
    });
}

/// Users of committed checkout batches that `users` may not have yet, each
/// with its first checkout time, and the state of this writer's
/// `users_backlog` mark that covers them.
#[derive(Default)]
struct PendingUsers {
    first_seen: HashMap<i64, i64, BuildHasherDefault<IdHasher>>,
    /// When the first of them was collected.
    since: Option<Instant>,
    /// The mark as written: its `since` (Unix ms) and when. `None`: not
    /// written since the last clear or Postgres error.
    mark: Option<(i64, Instant)>,
}

impl PendingUsers {
    fn len(&self) -> usize {
        self.first_seen.len()
    }

    fn is_empty(&self) -> bool {
        self.first_seen.is_empty()
    }

    /// Nothing collected and the mark deleted.
    fn settled(&self) -> bool {
        self.first_seen.is_empty() && self.since.is_none()
    }

    /// The `since` to write with a batch whose earliest checkout of a user
    /// not known to be in `users` is `batch_since`, or `None` when the mark
    /// written already covers it (and is fresh).
    fn mark_needed(&self, batch_since: i64, remark_after: Duration) -> Option<i64> {
        match self.mark {
            Some((since, at)) if since <= batch_since && at.elapsed() < remark_after => None,
            Some((since, _)) => Some(since.min(batch_since)),
            None => Some(batch_since),
        }
    }

    /// The mark was committed with `since`.
    fn marked(&mut self, since: i64) {
        self.mark = Some((since, Instant::now()));
    }

    /// Forgets that the mark is written (write it again with the next batch).
    fn unmark(&mut self) {
        self.mark = None;
    }

    /// The mark was deleted (every user it covered is committed).
    fn cleared(&mut self) {
        self.mark = None;
        self.since = None;
    }

    fn collect<'a>(&mut self, records: impl Iterator<Item = &'a CheckoutRecord>) {
        for r in records {
            self.keep(r.user_id, r.at_ms);
        }
    }

    fn keep(&mut self, id: i64, at_ms: i64) {
        self.first_seen
            .entry(id)
            .and_modify(|t| *t = (*t).min(at_ms))
            .or_insert(at_ms);
        self.since.get_or_insert_with(Instant::now);
    }

    /// Takes every collected user (`since` and the mark stay until
    /// `cleared`).
    fn drain(&mut self) -> Vec<(i64, i64)> {
        self.first_seen.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let now = Instant::now();
        let mut b = Backoff::default();
        assert!(b.ready(now));
        assert!(!b.failing());
        let delays: Vec<Duration> = (0..10).map(|_| b.fail(now)).collect();
        assert_eq!(delays[0], Duration::from_millis(50));
        assert_eq!(delays[1], Duration::from_millis(100));
        assert_eq!(delays[2], Duration::from_millis(200));
        assert_eq!(delays[9], Duration::from_secs(5));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert!(!b.ready(now));
        assert!(b.ready(now + Duration::from_secs(5)));
        assert!(b.failing());
        assert_eq!(b.reset(), 10);
        assert!(b.ready(now));
        assert_eq!(b.fail(now), Duration::from_millis(50));
    }
}
