//! The core threads: one monoio runtime per core (io_uring, or epoll where
//! io_uring is not allowed or `FLASHSALE_DRIVER` says so), pinned with
//! core_affinity, each with its own
//! SO_REUSEPORT listener, Redis connection and API, and each handing its
//! free memory back to the OS. Also their shutdown: stop accepting, let open
//! connections finish, close.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};
use monoio::time::TimeDriver;

use crate::api::{Api, ApiDeps, keep_sold_map_fresh};
use crate::config::DriverChoice;
use crate::event::Event;
use crate::http::Limits;
use crate::metrics::registry;
use crate::reconcile::ReconcileRequests;
use crate::redis_client::batch::BatchLimits;
use crate::redis_client::keys::Keys;
use crate::redis_client::scripts::Scripts;
use crate::redis_client::{RedisBackend, RedisClient};
use crate::sale::schedule::SharedSchedule;
use crate::store::{CoreRecords, PostgresHealth, RecordSender};

/// How often a core refreshes its known-sold map from Redis.
const SOLD_MAP_REFRESH: Duration = Duration::from_millis(100);
/// How often a core looks at the process-wide shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(25);

/// What every core needs; cloned into each core thread.
#[derive(Clone)]
pub struct CoreSetup {
    pub driver: CoreDriver,
    pub listen: SocketAddr,
    pub redis: RedisBackend,
    pub redis_timeout: Duration,
    pub redis_batching: BatchLimits,
    pub scripts: Arc<Scripts>,
    pub keys: Arc<Keys>,
    /// Replicas that must confirm a purchase (`WAIT`) before its `200`.
    pub wait_replicas: u32,
    pub schedule: Arc<SharedSchedule>,
    pub clock: Arc<crate::clock::RedisClock>,
    pub records: RecordSender,
    pub postgres: Arc<PostgresHealth>,
    /// Where a core asks for a fenced sale to be reconciled.
    pub reconcile_requests: Arc<ReconcileRequests>,
    pub limits: Limits,
    pub max_conns: usize,
    pub max_in_flight: usize,
    pub shutdown_timeout: Duration,
    pub shutdown: Arc<AtomicBool>,
}

/// Starts `count` core threads; returns once every one is listening.
pub fn start_cores(count: usize, setup: CoreSetup) -> std::io::Result<Vec<JoinHandle<()>>> {
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let mut handles = Vec::with_capacity(count);
    for index in 0..count {
        let setup = setup.clone();
        let ready = ready_tx.clone();
        let pin = (!core_ids.is_empty()).then(|| core_ids[index % core_ids.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("core-{index}"))
            .spawn(move || {
                crate::allocator::mark_core_thread();
                if let Some(core) = pin
                    && !core_affinity::set_for_current(core)
                {
                    tracing::warn!(core = index, "could not pin core thread");
                }
                run_core(setup, ready);
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("a core thread died while starting")),
        }
    }
    Ok(handles)
}

/// The IO driver the cores run on, decided once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreDriver {
    IoUring,
    Epoll,
}

impl CoreDriver {
    pub fn name(self) -> &'static str {
        match self {
            CoreDriver::IoUring => "io_uring",
            CoreDriver::Epoll => "epoll",
        }
    }
}

/// The driver for the configured choice: `auto` takes io_uring where the
/// kernel (and seccomp) allow it, else epoll with a warning; `io-uring`
/// without io_uring is an error, so a misconfigured host fails at start
/// instead of running on the other driver unnoticed.
pub fn resolve_driver(choice: DriverChoice) -> std::io::Result<CoreDriver> {
    if choice == DriverChoice::Epoll {
        return Ok(CoreDriver::Epoll);
    }
    if monoio::utils::detect_uring() {
        return Ok(CoreDriver::IoUring);
    }
    const WHY: &str = "io_uring is not available (blocked by seccomp, \
        disabled by the kernel.io_uring_disabled sysctl, or a kernel before 5.6)";
    if choice == DriverChoice::IoUring {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("FLASHSALE_DRIVER=io-uring, but {WHY}; use auto or epoll"),
        ));
    }
    tracing::warn!("{WHY}; falling back to epoll");
    Ok(CoreDriver::Epoll)
}

/// A core's runtime. On io_uring, COOP_TASKRUN where the kernel has it
/// (5.19+), else plain io_uring: COOP_TASKRUN lets completions wait for the
/// core's next io_uring_enter instead of interrupting it with an IPI; on the
/// 404 path it raised throughput by about a quarter (see
/// bench/codec/README.md). On epoll, monoio's legacy driver.
type CoreRuntime =
    monoio::FusionRuntime<TimeDriver<monoio::IoUringDriver>, TimeDriver<monoio::LegacyDriver>>;

/// Submission queue entries of an io_uring core (epoll: events per wait).
const DRIVER_ENTRIES: u32 = 4096;

fn build_runtime(driver: CoreDriver) -> std::io::Result<CoreRuntime> {
    match driver {
        CoreDriver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .with_entries(DRIVER_ENTRIES)
            .build()
            .map(Into::into),
        CoreDriver::IoUring => {
            let mut uring = io_uring::IoUring::builder();
            uring.setup_coop_taskrun();
            let coop = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(uring)
                .enable_timer()
                .with_entries(DRIVER_ENTRIES)
                .build();
            coop.or_else(|e| {
                tracing::warn!(error = %e, "io_uring without COOP_TASKRUN");
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .enable_timer()
                    .with_entries(DRIVER_ENTRIES)
                    .build()
            })
            .map(Into::into)
        }
    }
}

fn run_core(setup: CoreSetup, ready: std::sync::mpsc::Sender<std::io::Result<()>>) {
    let mut runtime = match build_runtime(setup.driver) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(core_main(setup, ready));
}

async fn core_main(setup: CoreSetup, ready: std::sync::mpsc::Sender<std::io::Result<()>>) {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    let listener = match TcpListener::bind_with_config(setup.listen, &opts) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let metrics = registry().register_core();
    let redis = RedisClient::start(
        setup.redis.clone(),
        setup.scripts.clone(),
        setup.redis_timeout,
        metrics.clone(),
    );
    let purchase_redis = if setup.wait_replicas > 0 {
        RedisClient::start(
            setup.redis.clone(),
            setup.scripts.clone(),
            setup.redis_timeout,
            metrics.clone(),
        )
    } else {
        redis.clone()
    };
    let api = Rc::new(Api::new(ApiDeps {
        redis: redis.clone(),
        purchase_redis: purchase_redis.clone(),
        wait_replicas: setup.wait_replicas,
        keys: setup.keys.clone(),
        schedule: setup.schedule.clone(),
        clock: setup.clock.clone(),
        records: CoreRecords::start(setup.records.clone()),
        postgres: setup.postgres.clone(),
        reconcile_requests: setup.reconcile_requests.clone(),
        metrics: metrics.clone(),
        max_in_flight: setup.max_in_flight,
        redis_batching: setup.redis_batching,
    }));
    let shutdown = Event::new();
    monoio::spawn(watch_shutdown(setup.shutdown.clone(), shutdown.clone()));
    monoio::spawn(crate::allocator::give_back_free_memory(shutdown.clone()));
    monoio::spawn(keep_sold_map_fresh(
        api.clone(),
        SOLD_MAP_REFRESH,
        shutdown.clone(),
    ));
    // Serve only once Redis answers, or after a bounded wait (then requests get 503).
    redis.wait_connected(Duration::from_secs(5)).await;
    purchase_redis.wait_connected(Duration::from_secs(5)).await;
    let _ = ready.send(Ok(()));

    let open = Rc::new(Cell::new(0usize));
    let limits = Rc::new(setup.limits.clone());
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait() => break,
        };
        let Ok((stream, _peer)) = accepted else {
            // EMFILE and friends: back off a little instead of spinning.
            monoio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if open.get() >= setup.max_conns {
            metrics.connection_refused();
            monoio::spawn(crate::http::conn::refuse(stream));
            continue;
        }
        open.set(open.get() + 1);
        metrics.connection_opened();
        let (api, limits, shutdown, open, metrics) = (
            api.clone(),
            limits.clone(),
            shutdown.clone(),
            open.clone(),
            metrics.clone(),
        );
        monoio::spawn(async move {
            crate::http::conn::serve(stream, &*api, &limits, &shutdown).await;
            open.set(open.get() - 1);
            metrics.connection_closed();
        });
    }
    stop_listening(&listener);
    drop(listener);

    // Let connections finish what they are doing (they close when idle).
    let deadline = Instant::now() + setup.shutdown_timeout;
    while open.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if open.get() > 0 {
        tracing::warn!(
            open = open.get(),
            "closing connections still busy at the shutdown deadline"
        );
    }
    // What the last turn handed over goes to the writer before the core ends.
    api.flush_records();
    redis.stop();
    purchase_redis.stop();
}

/// Takes the listening socket out of the listen state now. Dropping the
/// listener alone is not enough with io_uring: the cancelled accept still
/// holds the socket, which then keeps accepting connections nobody serves
/// until the kernel releases it, possibly after the process has exited.
fn stop_listening(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor the listener owns and that is
    // open for the duration of the call.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not shut the listening socket down; closing it"
        );
    }
}

async fn watch_shutdown(flag: Arc<AtomicBool>, shutdown: Event) {
    while !flag.load(Ordering::Relaxed) {
        monoio::time::sleep(SHUTDOWN_POLL).await;
    }
    shutdown.set();
}
