//! The timer thread that rotates sales: it keeps the current period's sale
//! and the next one prepared (row and items in Postgres, state in Redis) and
//! publishes them to the cores, which switch on the second by the clock.
//! Both go by Redis's clock: every tick the rotator first measures this
//! instance's offset to it (`clock::RedisClock`), so an instance whose own
//! clock is off prepares and serves the same sales as the others.
//! Creation is idempotent (unique start in Postgres, create-if-absent in
//! Redis), so several instances may race and still make one sale a period.
//! The rotator also runs the reconciles (`reconcile`): when a core asks
//! (its sale was fenced), and when the gap check, every few seconds, finds
//! an item Postgres records as sold that Redis does not.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::RedisClock;
use crate::error::{Error, ErrorKind, Result};
use crate::reconcile::{self, Outcome, ReconcileReceiver, Recorded, Step};
use crate::redis_client::blocking::{BlockingRedis, RedisEndpoint};
use crate::redis_client::keys::Keys;
use crate::redis_client::scripts::Scripts;
use crate::sale::schedule::{Schedule, SharedSchedule};
use crate::sale::{SaleInfo, period_start};
use crate::store::PgPool;
use crate::store::partitions::PartitionKeeper;
use crate::store::sales::{SaleRow, ensure_sale, purchases_of, sold_item_ids};

/// How often the offset to Redis's clock is measured.
const CLOCK_MEASURE_EVERY: Duration = Duration::from_secs(1);

/// How often the open sale's Redis bitmap is compared with Postgres.
const GAP_CHECK_EVERY: Duration = Duration::from_secs(5);

pub struct RotatorConfig {
    pub period_secs: i64,
    pub items: u32,
    pub user_limit: u32,
    pub redis: RedisEndpoint,
    /// Redis key names behind the deployment's prefix.
    pub keys: Keys,
    pub redis_timeout: Duration,
    /// How long a sale's users and codes hashes outlive it (ms): meta's `expire_at`, set when the sale is created.
    pub retention_ms: i64,
    /// Days of `checkouts` partitions kept in Postgres (0: all).
    pub checkouts_retention_days: u32,
    /// The Lua scripts (the rotator runs init_sale.lua).
    pub scripts: Arc<Scripts>,
}

struct Rotator {
    config: RotatorConfig,
    pool: PgPool,
    schedule: Arc<SharedSchedule>,
    clock: Arc<RedisClock>,
    /// When the clock was last measured.
    measured_at: Option<Instant>,
    redis: Option<BlockingRedis>,
    /// Sales the cores ask to reconcile (their scripts answered `fenced`).
    reconcile_requests: ReconcileReceiver,
    /// When the open sale was last compared with Postgres.
    gap_checked_at: Option<Instant>,
    /// Sales whose last reconcile failed (logged once until one succeeds).
    reconcile_failing: BTreeSet<i64>,
    /// Sales published so far, oldest first (the last few are kept).
    prepared: Vec<SaleInfo>,
    /// Whether the migrations are applied (main applies them when Postgres
    /// is up at start; otherwise the rotator does once it is).
    migrated: bool,
    /// Whether the last sale came from the Redis index (Postgres was down).
    using_index: bool,
    partitions: PartitionKeeper,
}

/// Starts the rotator thread; it runs until `stop` is set.
pub fn spawn(
    config: RotatorConfig,
    pool: PgPool,
    schedule: Arc<SharedSchedule>,
    clock: Arc<RedisClock>,
    reconcile_requests: ReconcileReceiver,
    migrated: bool,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let mut rotator = Rotator {
        partitions: PartitionKeeper::new(config.checkouts_retention_days),
        config,
        pool,
        schedule,
        clock,
        measured_at: None,
        redis: None,
        reconcile_requests,
        gap_checked_at: None,
        reconcile_failing: BTreeSet::new(),
        prepared: Vec::new(),
        migrated,
        using_index: false,
    };
    std::thread::Builder::new()
        .name("rotator".into())
        .spawn(move || rotator.run(&stop))
}

impl Rotator {
    fn run(&mut self, stop: &AtomicBool) {
        let tick =
            Duration::from_millis((self.config.period_secs as u64 * 1000 / 4).clamp(100, 1000));
        let mut failing = false;
        // Partitions first at start, so that the first checkouts find theirs;
        // afterwards after the sales, which they must never delay.
        self.keep_partitions();
        while !stop.load(Ordering::Relaxed) {
            match self.prepare() {
                Ok(()) => {
                    if failing {
                        tracing::info!("rotator recovered");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "rotator could not prepare sales; retrying");
                    }
                    failing = true;
                    if e.kind() == ErrorKind::Postgres {
                        crate::metrics::registry().writer.postgres_error();
                    }
                    self.redis = None;
                }
            }
            self.keep_partitions();
            self.check_gap();
            self.wait_for_requests(tick);
        }
    }

    /// Sleeps up to `tick`, reconciling at once every sale a core asks for.
    fn wait_for_requests(&mut self, tick: Duration) {
        let Ok(first) = self.reconcile_requests.recv_timeout(tick) else {
            return;
        };
        let mut asked = BTreeSet::from([first]);
        asked.extend(self.reconcile_requests.try_iter());
        for sale_id in asked {
            let sale = self.prepared.iter().find(|s| s.id == sale_id).copied();
            if let Some(sale) = sale {
                self.reconcile(&sale, "fenced");
            }
        }
    }

    /// Every `GAP_CHECK_EVERY`: when Postgres records an item of the open
    /// sale as sold and Redis's bitmap does not have it (Redis lost writes:
    /// a crash past its last AOF fsync, a failover), reconciles the sale.
    /// This also covers a purchase the writer committed from a dead
    /// master's outbox after a reconcile had read Postgres.
    fn check_gap(&mut self) {
        if self
            .gap_checked_at
            .is_some_and(|t| t.elapsed() < GAP_CHECK_EVERY)
        {
            return;
        }
        self.gap_checked_at = Some(Instant::now());
        let now = self.clock.now_ms();
        let Some(sale) = self
            .prepared
            .iter()
            .find(|s| s.starts_at * 1000 <= now && now < s.ends_at * 1000)
            .copied()
        else {
            return;
        };
        match self.gap(&sale) {
            Ok(0) => {}
            Ok(missing) => {
                tracing::warn!(
                    sale_id = sale.id,
                    missing,
                    "postgres records items as sold that redis does not have; reconciling"
                );
                self.reconcile(&sale, "gap");
            }
            Err(e) => tracing::debug!(sale_id = sale.id, error = %e, "gap check failed"),
        }
    }

    /// Items Postgres records as sold that the sale's Redis bitmap lacks.
    fn gap(&mut self, sale: &SaleInfo) -> Result<usize> {
        let sold = sold_item_ids(&mut *self.pool.get()?, sale.id)?;
        if sold.is_empty() {
            return Ok(0);
        }
        let bitmap: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.config.keys.sold(sale.id))
            .query(self.redis()?)?;
        Ok(reconcile::missing_items(
            sale,
            &sold,
            &bitmap.unwrap_or_default(),
        ))
    }

    /// Reconciles `sale` (see `reconcile`); a failure is logged once and
    /// leaves the sale as it was (fenced, if it was): the next request or
    /// gap check tries again. Postgres down keeps a fenced sale fenced.
    fn reconcile(&mut self, sale: &SaleInfo, trigger: &'static str) {
        match self.run_init_sale(sale, Step::Reconcile) {
            Ok(_) => {
                self.reconcile_failing.remove(&sale.id);
            }
            Err(e) => {
                if self.reconcile_failing.insert(sale.id) {
                    tracing::error!(
                        sale_id = sale.id,
                        trigger,
                        error = %e,
                        "could not reconcile the sale with postgres; a fenced sale stays fenced until this succeeds"
                    );
                }
                if e.kind() == ErrorKind::Postgres {
                    crate::metrics::registry().writer.postgres_error();
                }
                self.redis = None;
            }
        }
    }

    /// Creates and drops `checkouts` partitions when due (see `PartitionKeeper`).
    fn keep_partitions(&mut self) {
        if self.migrated {
            self.partitions.tick(&self.pool, self.clock.now_ms());
        }
    }

    /// Makes sure the current and the next period's sales exist everywhere
    /// and are published.
    fn prepare(&mut self) -> Result<()> {
        self.measure_clock()?;
        let period = self.config.period_secs;
        let now_secs = self.clock.now_ms().div_euclid(1000);
        let current = period_start(now_secs, period);
        for start in [current, current + period] {
            let sale = match self.prepared.iter().find(|s| s.starts_at == start) {
                Some(sale) => *sale,
                None => match self.create(start) {
                    Ok(sale) => sale,
                    // Postgres down: a sale it already has is in the index.
                    Err(e) => self.indexed_sale(start)?.ok_or(e)?,
                },
            };
            // Every tick, so that a Redis that lost its data (a restart
            // without its AOF, a failover that lost the last writes) gets
            // the sale and its index entry back.
            self.init_redis(&sale)?;
            self.index(&sale)?;
            if !self.prepared.iter().any(|s| s.id == sale.id) {
                tracing::info!(
                    sale_id = sale.id,
                    starts_at = %crate::logging::Rfc3339(sale.starts_at),
                    items = sale.items,
                    "sale prepared"
                );
                self.prepared.push(sale);
                self.prepared.sort_by_key(|s| s.starts_at);
                let keep_from = self.prepared.len().saturating_sub(4);
                self.prepared.drain(..keep_from);
                self.schedule.publish(Schedule {
                    sales: self.prepared.clone(),
                });
            }
        }
        Ok(())
    }

    /// Measures the offset to Redis's clock, about once a second.
    fn measure_clock(&mut self) -> Result<()> {
        if self
            .measured_at
            .is_some_and(|t| t.elapsed() < CLOCK_MEASURE_EVERY)
        {
            return Ok(());
        }
        let clock = self.clock.clone();
        let anchor = self.config.keys.sale_index().to_owned();
        clock.measure(self.redis()?, &anchor)?;
        self.measured_at = Some(Instant::now());
        Ok(())
    }

    fn create(&mut self, start: i64) -> Result<SaleInfo> {
        if !self.migrated {
            crate::store::migrate::migrate(&self.pool)?;
            self.migrated = true;
            tracing::info!("migrations applied");
        }
        let mut client = self.pool.get()?;
        let row: SaleRow = ensure_sale(
            &mut client,
            start,
            start + self.config.period_secs,
            self.config.items,
            self.config.user_limit,
        )?;
        Ok(SaleInfo {
            id: row.id,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            items: row.items_total,
            user_limit: row.user_limit,
        })
    }

    /// Records a prepared sale in the Redis index of sales.
    fn index(&mut self, sale: &SaleInfo) -> Result<()> {
        let entry = format!(
            "{},{},{},{}",
            sale.id, sale.ends_at, sale.items, sale.user_limit
        );
        let _: i64 = redis::cmd("HSET")
            .arg(self.config.keys.sale_index())
            .arg(sale.starts_at)
            .arg(entry)
            .query(self.redis()?)?;
        Ok(())
    }

    /// The sale starting at `start` according to the Redis index, for when
    /// Postgres cannot be asked.
    fn indexed_sale(&mut self, start: i64) -> Result<Option<SaleInfo>> {
        let entry: Option<String> = redis::cmd("HGET")
            .arg(self.config.keys.sale_index())
            .arg(start)
            .query(self.redis()?)?;
        let sale = entry.as_deref().and_then(|e| parse_index_entry(start, e));
        if sale.is_some() && !self.using_index {
            tracing::warn!(
                starts_at = %crate::logging::Rfc3339(start),
                "postgres unavailable; serving the sale from the redis index"
            );
        }
        self.using_index = sale.is_some();
        Ok(sale)
    }

    fn redis(&mut self) -> Result<&mut BlockingRedis> {
        if self.redis.is_none() {
            let timeout = self.config.redis_timeout;
            self.redis = Some(self.config.redis.connect(timeout, timeout)?);
        }
        self.redis
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::RedisUnavailable, "no redis connection"))
    }

    /// Creates the sale in Redis when Redis does not hold it (new, or lost).
    fn init_redis(&mut self, sale: &SaleInfo) -> Result<()> {
        let meta = self.config.keys.meta(sale.id);
        let exists: bool = redis::cmd("EXISTS").arg(&meta).query(self.redis()?)?;
        if exists {
            return Ok(());
        }
        self.run_init_sale(sale, Step::Create).map(drop)
    }

    /// Runs lua/init_sale.lua for `sale` with what Postgres recorded of it,
    /// so that no item sells twice and no limit resets; logs and counts
    /// what came back.
    fn run_init_sale(&mut self, sale: &SaleInfo, step: Step) -> Result<Outcome> {
        let purchases = purchases_of(&mut *self.pool.get()?, sale.id)?;
        let recorded = Recorded::from_purchases(sale, &purchases);
        let retention_ms = self.config.retention_ms;
        self.redis()?;
        let Some(con) = self.redis.as_mut() else {
            return Err(Error::new(
                ErrorKind::RedisUnavailable,
                "no redis connection",
            ));
        };
        let outcome = reconcile::init_sale(
            con,
            &self.config.scripts.init_sale,
            &self.config.keys,
            sale,
            retention_ms,
            &recorded,
            step,
        )?;
        let metrics = &crate::metrics::registry().reconcile;
        match &outcome {
            Outcome::Ended => tracing::debug!(
                sale_id = sale.id,
                "sale already ended by Redis's clock; not created in Redis"
            ),
            Outcome::Exists => {}
            Outcome::Created { restored, node } => {
                metrics.restored_items(*restored);
                if !recorded.numbers.is_empty() {
                    tracing::warn!(
                        sale_id = sale.id,
                        node = %node,
                        items_sold = recorded.numbers.len(),
                        restored,
                        "redis had lost this sale; restored its sold items and user counts from postgres"
                    );
                }
            }
            Outcome::Reconciled { restored, node } => {
                metrics.reconciled(*restored);
                tracing::warn!(
                    sale_id = sale.id,
                    node = %node,
                    restored,
                    items_recorded = recorded.numbers.len(),
                    "sale reconciled with postgres: items it records as sold are sold in redis, user counts at least its own, state stamped with its node"
                );
            }
        }
        Ok(outcome)
    }
}

/// Parses an index entry `id,ends_at,items,limit` for the sale at `start`.
fn parse_index_entry(start: i64, entry: &str) -> Option<SaleInfo> {
    let mut fields = entry.split(',').map(str::parse::<i64>);
    let mut next = || fields.next().and_then(|f| f.ok());
    let (id, ends_at, items, limit) = (next()?, next()?, next()?, next()?);
    Some(SaleInfo {
        id,
        starts_at: start,
        ends_at,
        items: u32::try_from(items).ok()?,
        user_limit: u32::try_from(limit).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_round_trip() {
        let sale = parse_index_entry(3600, "7,7200,10000,10").unwrap();
        assert_eq!(
            sale,
            SaleInfo {
                id: 7,
                starts_at: 3600,
                ends_at: 7200,
                items: 10_000,
                user_limit: 10
            }
        );
        assert_eq!(parse_index_entry(0, "7,7200,10000"), None);
        assert_eq!(parse_index_entry(0, "x,1,2,3"), None);
    }
}
