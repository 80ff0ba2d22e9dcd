//! Postgres: the pool, migrations, sale rows, and the writer thread that
//! batches records from the cores and drains the Redis purchase outboxes.
//! Core threads only ever touch `RecordSender` (a non-blocking `try_send`)
//! and `PostgresHealth` (an atomic); everything that blocks lives here, on
//! the writer and rotator threads.

mod batch;
pub mod migrate;
pub mod outbox;
pub mod partitions;
pub mod sales;
pub mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::postgres::NoTls;

use crate::error::{Error, ErrorKind, Result};
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

/// The cores' end of the bounded channel to the writer.
#[derive(Clone)]
pub struct RecordSender {
    tx: Sender<Record>,
}

/// The channel to the writer is full: shed the request with 503.
#[derive(Debug)]
pub struct QueueFull;

impl RecordSender {
    /// Never blocks.
    pub fn try_send(&self, record: Record) -> std::result::Result<(), QueueFull> {
        match self.tx.try_send(record) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(QueueFull),
        }
    }

    /// Whether a record would fit now (checked before work that must be recorded).
    pub fn has_room(&self) -> bool {
        self.tx.capacity().is_none_or(|cap| self.tx.len() < cap)
    }

    /// Records waiting for the writer (for the queue-depth gauge).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.tx.len()
    }
}

/// The bounded channel from the cores to the writer.
pub fn record_channel(capacity: usize) -> (RecordSender, Receiver<Record>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    (RecordSender { tx }, rx)
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
