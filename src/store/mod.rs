//! Postgres: the pool, migrations, sale rows, and the writer thread that
//! batches records from the cores and drains the Redis purchase outboxes.
//! Core threads only ever touch their `CoreRecords` (a non-blocking
//! `try_send`) and `PostgresHealth` (an atomic); everything that blocks
//! lives here, on the writer and rotator threads.

mod batch;
pub mod migrate;
pub mod outbox;
pub mod partitions;
pub mod sales;
pub mod writer;

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::postgres::NoTls;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::sale::code::Code;

pub type PgPool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// Builds the pool without connecting, so that a down Postgres does not stop
/// the process from starting; callers retry on their own schedule.
pub fn pool(database_url: &str, size: u32) -> Result<PgPool> {
    let config: postgres::Config = database_url
        .parse()
        .map_err(|e| Error::with_cause(ErrorKind::Config, "DATABASE_URL", e))?;
    let manager = PostgresConnectionManager::new(config, NoTls);
    Ok(r2d2::Pool::builder()
        .max_size(size.max(1))
        .min_idle(Some(0))
        .connection_timeout(std::time::Duration::from_secs(2))
        // The pool's users log failures themselves (a `get` error carries
        // the last connect error); r2d2's own handler would log every
        // background reconnect attempt at ERROR while Postgres is down.
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .connection_customizer(Box::new(SessionSetup))
        .build_unchecked(manager))
}

/// Connections opened by every pool of this process, ever. A change means
/// a connection was replaced (for one, after Postgres restarted), so what
/// was committed asynchronously before may be gone.
static CONNECTIONS_OPENED: AtomicU64 = AtomicU64::new(0);

pub(crate) fn connections_opened() -> u64 {
    CONNECTIONS_OPENED.load(Ordering::SeqCst)
}

/// Counts a connection opened outside the pool (the writer's checkouts
/// connection), for `connections_opened`.
pub(crate) fn connection_opened() {
    CONNECTIONS_OPENED.fetch_add(1, Ordering::SeqCst);
}

/// The connection settings of `database_url`, for a connection of its own
/// (the writer's checkouts connection), with a connect timeout as short as
/// the writer's wait for a pooled connection (500 ms), so that a Postgres
/// that does not answer holds the writer no longer than the pool would.
pub fn connection_config(database_url: &str) -> Result<postgres::Config> {
    let mut config: postgres::Config = database_url
        .parse()
        .map_err(|e| Error::with_cause(ErrorKind::Config, "DATABASE_URL", e))?;
    config.connect_timeout(std::time::Duration::from_millis(500));
    Ok(config)
}

/// Makes every session commit synchronously even when the server's default
/// is `synchronous_commit = off`: a purchase's outbox entries are deleted
/// after its commit, and a sale's rows are what purchases reference, so
/// those commits must survive a Postgres crash. Only the checkout log opts
/// out, on a connection of its own outside the pool (`batch::CheckoutConn`).
/// A stronger setting (`remote_apply`, ...) is kept.
/// Also counts the connection (`connections_opened`).
#[derive(Debug)]
struct SessionSetup;

const SYNCHRONOUS_COMMIT_SQL: &str = "SELECT set_config('synchronous_commit', 'on', false)
     WHERE current_setting('synchronous_commit') = 'off'";

impl r2d2::CustomizeConnection<postgres::Client, postgres::Error> for SessionSetup {
    fn on_acquire(
        &self,
        client: &mut postgres::Client,
    ) -> std::result::Result<(), postgres::Error> {
        connection_opened();
        client.batch_execute(SYNCHRONOUS_COMMIT_SQL)
    }
}

/// One checkout attempt, as recorded in `checkouts` (and `users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRecord {
    pub sale_id: i64,
    pub user_id: i64,
    pub item_id: i64,
    /// Inline, so that handing a record over allocates nothing.
    pub code: Option<Code>,
    /// `sale::CheckoutOutcome::as_str()`.
    pub outcome: &'static str,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// What the cores hand to the writer. Purchases do not travel here: they are
/// written to the Redis outbox by the purchase script itself, atomically with
/// the sale, and the writer drains the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Checkout(CheckoutRecord),
}

/// The queue from the cores to the writer, bounded in records: `queued`
/// counts the records handed over and not yet taken by the writer (in a
/// core's buffer, in the channel, or in the writer's inbox), and a record
/// that would pass `capacity` is refused (the request is shed with 503).
/// Records travel in one message per core turn (`CoreRecords`), not one per
/// record: the channel itself is unbounded, the count is the bound.
struct Queue {
    queued: AtomicUsize,
    capacity: usize,
    /// The writer's end was dropped: nothing handed over would be written.
    receiver_gone: AtomicBool,
}

/// The cores' end of the bounded queue to the writer (`record_channel`);
/// each core hands its records over through a `CoreRecords` of its own.
#[derive(Clone)]
pub struct RecordSender {
    tx: Sender<Vec<Record>>,
    queue: Arc<Queue>,
}

/// The queue to the writer is full: shed the request with 503.
#[derive(Debug)]
pub struct QueueFull;

impl RecordSender {
    /// Takes room for one record; `QueueFull` when there is none (or the
    /// writer is gone).
    fn reserve(&self) -> std::result::Result<(), QueueFull> {
        let queue = &*self.queue;
        if queue.receiver_gone.load(Ordering::Relaxed) {
            return Err(QueueFull);
        }
        if queue.queued.fetch_add(1, Ordering::AcqRel) >= queue.capacity {
            queue.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueFull);
        }
        Ok(())
    }

    /// Whether a record would fit now (checked before work that must be recorded).
    pub fn has_room(&self) -> bool {
        self.queue.queued.load(Ordering::Relaxed) < self.queue.capacity
    }

    /// Records waiting for the writer (for the queue-depth gauge).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        // A refused reservation counts for an instant.
        self.queue
            .queued
            .load(Ordering::Relaxed)
            .min(self.queue.capacity)
    }
}

/// A core's end of the queue to the writer: a record takes its room in the
/// queue when it is handed over (so a full queue sheds that request, as
/// before), waits in the core's buffer until the core's current turn ends
/// (a task of the core wakes for it once every task woken before it ran),
/// and goes to the writer with the other records of that turn in one
/// message. Under a crowd a turn answers a whole Redis batch, so the writer
/// thread and the channel see one message per batch instead of one per
/// checkout. Whatever is buffered is sent when the core stops (`flush`, and
/// on drop). Single-threaded, like the core.
pub struct CoreRecords {
    shared: Rc<CoreBuffer>,
}

struct CoreBuffer {
    sender: RecordSender,
    buffer: RefCell<Vec<Record>>,
    /// Set when the buffer gets its first record: wakes the flushing task.
    filled: Event,
}

impl CoreBuffer {
    fn flush(&self) {
        let records = std::mem::take(&mut *self.buffer.borrow_mut());
        if !records.is_empty() && self.sender.tx.send(records).is_err() {
            // The writer is gone (shutdown passed its deadline): its room is
            // never given back, and what was buffered is not written.
            tracing::error!("checkout records handed over after the Postgres writer stopped");
        }
    }
}

impl Drop for CoreBuffer {
    fn drop(&mut self) {
        self.flush();
    }
}

impl CoreRecords {
    /// The core's end of `sender`'s queue; starts its flushing task on the
    /// current runtime.
    pub fn start(sender: RecordSender) -> Self {
        let shared = Rc::new(CoreBuffer {
            sender,
            buffer: RefCell::new(Vec::new()),
            filled: Event::new(),
        });
        monoio::spawn(flush_each_turn(
            Rc::downgrade(&shared),
            shared.filled.clone(),
        ));
        CoreRecords { shared }
    }

    /// Never blocks: takes the record's room in the queue, or refuses it
    /// when the queue is full.
    pub fn try_send(&self, record: Record) -> std::result::Result<(), QueueFull> {
        self.shared.sender.reserve()?;
        let mut buffer = self.shared.buffer.borrow_mut();
        buffer.push(record);
        if buffer.len() == 1 {
            self.shared.filled.set();
        }
        Ok(())
    }

    /// Whether a record would fit now (checked before work that must be recorded).
    pub fn has_room(&self) -> bool {
        self.shared.sender.has_room()
    }

    /// Records waiting for the writer (for the queue-depth gauge).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.shared.sender.len()
    }

    /// Sends what is buffered now (the core is stopping).
    pub fn flush(&self) {
        self.shared.flush();
    }
}

/// The flushing task of one core's buffer: sends the buffer once per turn
/// in which records were handed over; ends with the buffer.
async fn flush_each_turn(shared: Weak<CoreBuffer>, filled: Event) {
    loop {
        filled.wait().await;
        filled.reset();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.flush();
    }
}

/// The writer's end of the queue: takes records out of the cores' messages,
/// giving their room back as it takes them.
pub struct RecordReceiver {
    rx: Receiver<Vec<Record>>,
    queue: Arc<Queue>,
    /// The rest of the last message, not taken yet.
    inbox: std::vec::IntoIter<Record>,
}

/// Every sender is gone and every record was taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Disconnected;

impl RecordReceiver {
    /// Waits up to `wait` until a record can be taken.
    pub fn wait(&mut self, wait: Duration) -> std::result::Result<bool, Disconnected> {
        if self.inbox.len() > 0 {
            return Ok(true);
        }
        match self.rx.recv_timeout(wait) {
            Ok(records) => {
                self.inbox = records.into_iter();
                Ok(true)
            }
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => Err(Disconnected),
        }
    }

    /// Takes up to `max` records, without waiting, into `sink`; `Err` once
    /// every sender is gone and nothing is left to take.
    pub fn take(
        &mut self,
        max: usize,
        mut sink: impl FnMut(Record),
    ) -> std::result::Result<usize, Disconnected> {
        let mut taken = 0;
        let mut disconnected = false;
        while taken < max {
            if self.inbox.len() == 0 {
                match self.rx.try_recv() {
                    Ok(records) => self.inbox = records.into_iter(),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            for record in self.inbox.by_ref().take(max - taken) {
                sink(record);
                taken += 1;
            }
        }
        if taken > 0 {
            self.queue.queued.fetch_sub(taken, Ordering::AcqRel);
        }
        if disconnected && taken == 0 {
            return Err(Disconnected);
        }
        Ok(taken)
    }

    /// Records handed over and not taken yet.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.queue.queued.load(Ordering::Relaxed)
    }
}

impl Drop for RecordReceiver {
    fn drop(&mut self) {
        self.queue.receiver_gone.store(true, Ordering::Relaxed);
    }
}

/// The bounded queue from the cores to the writer, `capacity` records.
pub fn record_channel(capacity: usize) -> (RecordSender, RecordReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let queue = Arc::new(Queue {
        queued: AtomicUsize::new(0),
        capacity: capacity.max(1),
        receiver_gone: AtomicBool::new(false),
    });
    (
        RecordSender {
            tx,
            queue: queue.clone(),
        },
        RecordReceiver {
            rx,
            queue,
            inbox: Vec::new().into_iter(),
        },
    )
}

/// Whether Postgres answered the writer's last statement or probe.
#[derive(Debug)]
pub struct PostgresHealth {
    up: AtomicBool,
}

impl Default for PostgresHealth {
    fn default() -> Self {
        PostgresHealth {
            up: AtomicBool::new(false),
        }
    }
}

impl PostgresHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user_id: i64) -> Record {
        Record::Checkout(CheckoutRecord {
            sale_id: 1,
            user_id,
            item_id: 1_000_001,
            code: None,
            outcome: "item_sold",
            at_ms: 0,
        })
    }

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    /// Takes every record the writer can take now.
    fn take_all(rx: &mut RecordReceiver) -> Vec<i64> {
        let mut users = Vec::new();
        let _ = rx.take(usize::MAX, |Record::Checkout(r)| users.push(r.user_id));
        users
    }

    #[test]
    fn the_bound_counts_records_until_the_writer_takes_them() {
        let (tx, mut rx) = record_channel(3);
        runtime().block_on(async move {
            let core = CoreRecords::start(tx);
            for user in 1..=3 {
                core.try_send(record(user)).expect("room");
            }
            assert!(!core.has_room());
            assert!(
                core.try_send(record(4)).is_err(),
                "a fourth record is refused"
            );
            assert_eq!(core.len(), 3);
            // The turn ends: the records go over in one message.
            monoio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(rx.rx.len(), 1, "one message for the turn");
            // Still counted until the writer takes them.
            assert!(core.try_send(record(4)).is_err());
            let mut taken = Vec::new();
            assert_eq!(
                rx.take(2, |Record::Checkout(r)| taken.push(r.user_id)),
                Ok(2)
            );
            assert_eq!(taken, [1, 2]);
            assert_eq!(core.len(), 1);
            core.try_send(record(5)).expect("room again");
            core.try_send(record(6)).expect("room again");
            assert!(core.try_send(record(7)).is_err());
            monoio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(take_all(&mut rx), [3, 5, 6], "in order, none lost");
            assert_eq!(core.len(), 0);
        });
    }

    #[test]
    fn what_is_buffered_reaches_the_writer_when_the_core_stops() {
        let (tx, mut rx) = record_channel(10);
        runtime().block_on(async move {
            let core = CoreRecords::start(tx);
            core.try_send(record(1)).expect("room");
            core.flush();
            core.try_send(record(2)).expect("room");
            // Dropped before its turn ended.
            drop(core);
        });
        assert_eq!(take_all(&mut rx), [1, 2]);
        assert_eq!(rx.wait(Duration::ZERO), Err(Disconnected));
        assert_eq!(rx.take(10, |_| {}), Err(Disconnected));
    }

    #[test]
    fn nothing_is_accepted_once_the_writer_is_gone() {
        let (tx, rx) = record_channel(10);
        drop(rx);
        runtime().block_on(async move {
            let core = CoreRecords::start(tx);
            assert!(core.try_send(record(1)).is_err());
        });
    }
}
