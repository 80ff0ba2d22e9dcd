//! The process: reads the configuration, applies migrations, starts the
//! Postgres writer, the rotator and the core threads, then waits for
//! SIGTERM/SIGINT and shuts down in order: cores (stop accepting, finish
//! in-flight requests), rotator, writer (flush what the cores handed over).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::clock::RedisClock;
use crate::config::{Cli, Command, Config};
use crate::error::Result;
use crate::http::Limits;
use crate::reconcile::ReconcileRequests;
use crate::redis_client::RedisBackend;
use crate::redis_client::blocking::RedisEndpoint;
use crate::redis_client::cluster::Topology;
use crate::redis_client::scripts::Scripts;
use crate::redis_client::seeds::{RedisMode, RedisSeeds, detect_mode};
use crate::sale::schedule::SharedSchedule;
use crate::store::PostgresHealth;
use crate::{check, error, logging, rotator, server, store};

/// Runs the command `cli` names (`serve` when none) and returns the exit status.
pub fn run(cli: Cli) -> ExitCode {
    let (json, filter) = cli.config.log_format();
    logging::init(json, &filter);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::Check { sale } => {
            let status = check::run(
                &cli.config.redis_url,
                &cli.config.redis_keys(),
                &cli.config.database_url,
                sale,
            );
            return ExitCode::from(status);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "flashsale stopped");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT, then shuts down in order.
pub fn serve(config: Config) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| error::Error::with_cause(error::ErrorKind::Config, "signal handler", e))?;
    }

    // Decided first, so that `--driver io-uring` on a host without it fails at once.
    let driver = server::resolve_driver(config.driver)
        .map_err(|e| error::Error::with_cause(error::ErrorKind::Config, "driver", e))?;
    tracing::info!(
        driver = driver.name(),
        requested = %config.driver,
        "core IO driver"
    );

    let (redis, backend) = redis_backend(&config, &stop)?;
    tracing::info!(mode = redis.mode.name(), "redis");
    if config.redis_wait_replicas > 0 {
        warn_if_too_few_replicas(&redis, config.redis_wait_replicas);
    }
    let pool = store::pool(&config.database_url, config.pg_pool_size)?;
    let migrated = migrate_if_postgres_is_up(&pool, &stop);

    let scripts = Arc::new(Scripts::new());
    let keys = config.redis_keys();
    let schedule = Arc::new(SharedSchedule::default());
    let clock = Arc::new(RedisClock::new());
    let postgres = Arc::new(PostgresHealth::default());
    postgres.set(true);

    let (records, records_rx) = store::record_channel(config.writer_queue);
    let writer = store::writer::spawn(
        store::writer::WriterConfig {
            batch_rows: config.writer_batch.max(1),
            flush_after: config.writer_flush(),
            redis: redis.clone(),
            keys: Arc::new(keys.clone()),
            clock: clock.clone(),
            users_flush_after: Duration::from_millis(config.writer_users_flush_ms.max(1)),
            users_backlog_stale: Duration::from_secs(config.users_backlog_stale_secs),
            database: store::connection_config(&config.database_url)?,
        },
        pool.clone(),
        records_rx,
        postgres.clone(),
    )
    .map_err(|e| error::Error::with_cause(error::ErrorKind::Internal, "writer thread", e))?;

    let (reconcile_requests, reconcile_receiver) = ReconcileRequests::channel();
    let rotator_stop = Arc::new(AtomicBool::new(false));
    let rotator = rotator::spawn(
        rotator::RotatorConfig {
            period_secs: config.sale_period_secs as i64,
            items: config.sale_items,
            user_limit: config.user_limit,
            redis: redis.clone(),
            keys: keys.clone(),
            redis_timeout: config.redis_timeout().max(Duration::from_secs(1)),
            retention_ms: config.retention_ms(),
            checkouts_retention_days: config.checkouts_retention_days,
            scripts: scripts.clone(),
        },
        pool.clone(),
        schedule.clone(),
        clock.clone(),
        reconcile_receiver,
        migrated,
        rotator_stop.clone(),
    )
    .map_err(|e| error::Error::with_cause(error::ErrorKind::Internal, "rotator thread", e))?;
    wait_for_first_sales(&schedule, &clock, &stop);

    let shutdown = ShutdownPlan::new(config.shutdown_timeout());
    let cores_stop = Arc::new(AtomicBool::new(false));
    let cores = server::start_cores(
        config.core_count(),
        server::CoreSetup {
            driver,
            listen: config.listen,
            redis: backend,
            redis_timeout: config.redis_timeout(),
            redis_batching: config.redis_batching(),
            scripts,
            keys: Arc::new(keys),
            wait_replicas: config.redis_wait_replicas,
            schedule,
            clock,
            records,
            postgres,
            reconcile_requests: Arc::new(reconcile_requests),
            limits: Limits {
                max_request_line_bytes: config.max_request_line_bytes,
                max_header_bytes: config.max_header_bytes,
                max_headers: config.max_headers,
                max_body_bytes: config.max_body_bytes,
                idle_timeout: config.idle_timeout(),
                read_timeout: config.read_timeout(),
                max_output_bytes: config.max_output_bytes_per_conn as usize,
                write_timeout: config.write_timeout(),
            },
            max_conns: config.max_conns_per_core,
            max_in_flight: config.max_inflight_per_core,
            shutdown_timeout: shutdown.cores,
            shutdown: cores_stop.clone(),
        },
    )
    .map_err(|e| error::Error::with_cause(error::ErrorKind::Config, "listen", e))?;
    tracing::info!(
        listen = %config.listen,
        cores = cores.len(),
        driver = driver.name(),
        "flashsale serving"
    );

    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let started = Instant::now();
    cores_stop.store(true, Ordering::Relaxed);
    rotator_stop.store(true, Ordering::Relaxed);
    for core in cores {
        let _ = core.join();
    }
    // Every RecordSender is gone with the cores: the writer drains and exits.
    writer.shutdown_and_join(started + shutdown.writer, started + shutdown.total);
    // The rotator may be inside a blocking call; it is not waited for past the end.
    while !rotator.is_finished() && started.elapsed() < shutdown.total {
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!("flashsale stopped cleanly");
    Ok(())
}

/// Logs a warning for every master with fewer connected replicas than
/// `FLASHSALE_REDIS_WAIT_REPLICAS`: its purchases cannot be confirmed, so
/// every one of them would answer 503.
fn warn_if_too_few_replicas(redis: &RedisEndpoint, wanted: u32) {
    let timeout = Duration::from_secs(2);
    let counts = redis
        .connect(timeout, timeout)
        .and_then(|mut con| redis.replicas_per_master(&mut con));
    match counts {
        Ok(counts) => {
            for (master, replicas) in counts.into_iter().filter(|(_, n)| *n < wanted) {
                tracing::warn!(
                    master = %master,
                    replicas,
                    wait_replicas = wanted,
                    "this redis master has fewer connected replicas than FLASHSALE_REDIS_WAIT_REPLICAS: \
                     every purchase of its sales will answer 503 until enough replicas are connected"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count the redis replicas"),
    }
}

/// How a graceful stop shares the shutdown timeout, which bounds all of it:
/// the cores finish in-flight requests, the writer then commits what they
/// handed over, and a last moment lets the writer thread leave a blocking
/// call (a Postgres or Redis round trip) before the process exits anyway.
#[derive(Debug, PartialEq, Eq)]
struct ShutdownPlan {
    /// From the signal, how long the cores may take.
    cores: Duration,
    /// From the signal, when the writer stops, whatever is left.
    writer: Duration,
    /// From the signal, when the process exits.
    total: Duration,
}

impl ShutdownPlan {
    fn new(total: Duration) -> Self {
        let step = (total / 5).min(Duration::from_secs(1));
        ShutdownPlan {
            cores: total - 2 * step,
            writer: total - step,
            total,
        }
    }
}

/// Which Redis the cores talk to: the seeds of `REDIS_URL`, and whether they
/// are a Redis Cluster, asked from the first seed that answers. Until one
/// does the server does not start (it could not tell how to reach a sale's
/// keys: a cluster node taken for a single node would refuse every key it
/// does not own); it logs why and keeps asking, until stopped.
fn redis_backend(config: &Config, stop: &AtomicBool) -> Result<(RedisEndpoint, RedisBackend)> {
    let seeds = RedisSeeds::parse(&config.redis_url)?;
    let timeout = config.redis_timeout().max(Duration::from_secs(1));
    let started = Instant::now();
    let mut warned = false;
    let mut backoff = Duration::from_millis(100);
    let mode = loop {
        match detect_mode(&seeds, timeout) {
            Ok(mode) => break mode,
            Err(e) if e.kind() == error::ErrorKind::Config => return Err(e),
            Err(e) if stop.load(Ordering::Relaxed) => return Err(e),
            Err(e) => {
                if !warned && started.elapsed() >= Duration::from_secs(2) {
                    tracing::warn!(error = %e, "no redis seed answers; waiting for one before serving");
                    warned = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    };
    if warned {
        tracing::info!(mode = mode.name(), "redis answers");
    }
    let backend = match mode {
        RedisMode::Single => RedisBackend::Single(seeds.first().clone()),
        RedisMode::Cluster => RedisBackend::Cluster(Topology::start(&seeds, timeout)?),
    };
    Ok((RedisEndpoint { seeds, mode }, backend))
}

/// Applies migrations if Postgres answers within a few seconds. Otherwise the
/// server starts anyway: the rotator applies them once Postgres is back, and
/// meanwhile serves the sale it had prepared from its Redis index.
fn migrate_if_postgres_is_up(pool: &store::PgPool, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut backoff = Duration::from_millis(100);
    loop {
        match store::migrate::migrate(pool) {
            Ok(()) => return true,
            Err(e) if Instant::now() >= deadline || stop.load(Ordering::Relaxed) => {
                tracing::warn!(error = %e, "postgres unavailable at start; starting without it");
                return false;
            }
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Waits (at most a few seconds) until the rotator has published the sale
/// open now by the clock and the one after it, so that a fresh server
/// neither answers its first requests with 503 nor starts serving with a
/// sale that ends before its successor is ready (a start just before a
/// period boundary, with the first sale prepared after it).
fn wait_for_first_sales(schedule: &SharedSchedule, clock: &RedisClock, stop: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stop.load(Ordering::Relaxed) {
        let sales = schedule.snapshot();
        let active = sales.active_at(clock.now_ms());
        if active.is_some_and(|sale| sales.sales.iter().any(|s| s.starts_at == sale.ends_at)) {
            return;
        }
        if Instant::now() > deadline {
            if active.is_none() {
                tracing::warn!(
                    "no sale prepared yet; serving 503 no_active_sale until there is one"
                );
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_plan_stays_within_the_timeout() {
        let secs = Duration::from_secs;
        assert_eq!(
            ShutdownPlan::new(secs(10)),
            ShutdownPlan {
                cores: secs(8),
                writer: secs(9),
                total: secs(10)
            }
        );
        let short = ShutdownPlan::new(secs(1));
        assert_eq!(short.cores, Duration::from_millis(600));
        assert_eq!(short.writer, Duration::from_millis(800));
        assert_eq!(short.total, secs(1));
    }
}
