//! Counters and latency histograms. Each core owns a `CoreMetrics` that only
//! it writes (relaxed atomics, no contention); the writer thread owns
//! `WriterMetrics`. A scrape merges them all into Prometheus text.

pub mod process;
pub mod sale;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::redis_client::{Redirect, RedirectObserver};

/// The routes requests are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Checkout,
    Purchase,
    SalesActive,
    SaleItems,
    Health,
    Metrics,
    Other,
}

impl Route {
    pub const ALL: [Route; 7] = [
        Route::Checkout,
        Route::Purchase,
        Route::SalesActive,
        Route::SaleItems,
        Route::Health,
        Route::Metrics,
        Route::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Checkout => "checkout",
            Route::Purchase => "purchase",
            Route::SalesActive => "sales_active",
            Route::SaleItems => "sale_items",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }
}

/// Statuses the server sends; anything else is counted under the last slot.
const STATUSES: [u16; 12] = [200, 400, 404, 405, 409, 410, 411, 413, 431, 500, 501, 503];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Checkout outcomes counted on their own (see `sale::CheckoutOutcome`).
pub const CHECKOUT_OUTCOMES: [&str; 4] = ["ok", "item_sold", "limit_reached", "item_not_found"];

/// Why outbox entries are moved to a dead letter (see `store::outbox::DeadReason`).
pub const DEAD_LETTER_REASONS: [&str; 3] = ["malformed", "refused", "double_sale"];

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 16] = [
    50, 100, 200, 300, 500, 750, 1_000, 2_000, 3_000, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 1_000_000,
];

/// Scripts whose calls are sent in batches (see `redis_client::batch`).
pub const BATCHED_SCRIPTS: [&str; 2] = ["checkout", "purchase"];

/// Upper bounds of the Redis batch-size buckets, in calls.
const BATCH_CALL_BOUNDS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// Upper bounds of the writer batch-size buckets, in rows.
const BATCH_ROW_BOUNDS: [u64; 10] = [1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A histogram with fixed bucket bounds (cumulative on render).
pub struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: &'static [u64; N]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        match self.bounds.iter().position(|&b| value <= b) {
            Some(i) => bump(&self.buckets[i], 1),
            None => bump(&self.overflow, 1),
        }
        bump(&self.sum, value);
    }

    fn add_into(&self, counts: &mut [u64; N], overflow: &mut u64, sum: &mut u64) {
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            *c += b.load(Ordering::Relaxed);
        }
        *overflow += self.overflow.load(Ordering::Relaxed);
        *sum += self.sum.load(Ordering::Relaxed);
    }
}

impl RedirectObserver for CoreMetrics {
    fn redirected(&self, redirect: Redirect) {
        bump(&self.redis_redirects[redirect as usize], 1);
    }
}

impl crate::redis_client::batch::BatchObserver for CoreMetrics {
    fn batch_sent(&self, script: &'static str, calls: usize) {
        if let Some(i) = BATCHED_SCRIPTS.iter().position(|&s| s == script) {
            self.redis_batch_calls[i].observe(calls as u64);
        }
    }

    fn batch_answered(&self, script: &'static str, elapsed: Duration) {
        if let Some(i) = BATCHED_SCRIPTS.iter().position(|&s| s == script) {
            self.redis_call_latency[i].observe(elapsed.as_micros() as u64);
        }
    }
}

/// What one core counts. Only that core writes it.
pub struct CoreMetrics {
    requests: [[AtomicU64; STATUS_SLOTS]; Route::ALL.len()],
    latency: [Histogram<16>; Route::ALL.len()],
    checkout_outcomes: [AtomicU64; CHECKOUT_OUTCOMES.len()],
    items_sold: AtomicU64,
    answered_from_sold_map: AtomicU64,
    redis_errors: AtomicU64,
    redis_redirects: [AtomicU64; Redirect::ALL.len()],
    shed: AtomicU64,
    writer_queue_full: AtomicU64,
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    redis_batch_calls: [Histogram<8>; BATCHED_SCRIPTS.len()],
    redis_call_latency: [Histogram<16>; BATCHED_SCRIPTS.len()],
}

impl CoreMetrics {
    fn new() -> Self {
        CoreMetrics {
            requests: [const { [const { AtomicU64::new(0) }; STATUS_SLOTS] }; Route::ALL.len()],
            latency: [const { Histogram::new(&LATENCY_BOUNDS_US) }; Route::ALL.len()],
            checkout_outcomes: [const { AtomicU64::new(0) }; CHECKOUT_OUTCOMES.len()],
            items_sold: AtomicU64::new(0),
            answered_from_sold_map: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            redis_redirects: [const { AtomicU64::new(0) }; Redirect::ALL.len()],
            shed: AtomicU64::new(0),
            writer_queue_full: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            redis_batch_calls: [const { Histogram::new(&BATCH_CALL_BOUNDS) };
                BATCHED_SCRIPTS.len()],
            redis_call_latency: [const { Histogram::new(&LATENCY_BOUNDS_US) };
                BATCHED_SCRIPTS.len()],
        }
    }

    pub fn request(&self, route: Route, status: u16, elapsed: Duration) {
        let r = route as usize;
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len());
        bump(&self.requests[r][s], 1);
        self.latency[r].observe(elapsed.as_micros() as u64);
    }

    pub fn checkout_outcome(&self, outcome: &str) {
        if let Some(i) = CHECKOUT_OUTCOMES.iter().position(|&o| o == outcome) {
            bump(&self.checkout_outcomes[i], 1);
        }
    }

    pub fn items_sold(&self, n: u64) {
        bump(&self.items_sold, n);
    }

    pub fn answered_from_sold_map(&self) {
        bump(&self.answered_from_sold_map, 1);
    }

    pub fn redis_error(&self) {
        bump(&self.redis_errors, 1);
    }

    pub fn shed(&self) {
        bump(&self.shed, 1);
    }

    pub fn writer_queue_full(&self) {
        bump(&self.writer_queue_full, 1);
    }

    pub fn connection_opened(&self) {
        bump(&self.connections_open, 1);
        bump(&self.connections_total, 1);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connection_refused(&self) {
        bump(&self.connections_refused, 1);
    }
}

/// What the Postgres writer counts.
pub struct WriterMetrics {
    batch_rows: Histogram<10>,
    batch_latency_us: Histogram<16>,
    rows_written: [AtomicU64; 3],
    postgres_errors: AtomicU64,
    outbox_pending: AtomicU64,
    outbox_retries: AtomicU64,
    dead_lettered: [AtomicU64; DEAD_LETTER_REASONS.len()],
    dead_letters: AtomicU64,
    double_sales: AtomicU64,
}

/// Tables the writer counts rows for.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    Checkouts = 0,
    Purchases = 1,
    Users = 2,
}

const TABLE_LABELS: [&str; 3] = ["checkouts", "purchases", "users"];

impl WriterMetrics {
    const fn new() -> Self {
        WriterMetrics {
            batch_rows: Histogram::new(&BATCH_ROW_BOUNDS),
            batch_latency_us: Histogram::new(&LATENCY_BOUNDS_US),
            rows_written: [const { AtomicU64::new(0) }; 3],
            postgres_errors: AtomicU64::new(0),
            outbox_pending: AtomicU64::new(0),
            outbox_retries: AtomicU64::new(0),
            dead_lettered: [const { AtomicU64::new(0) }; DEAD_LETTER_REASONS.len()],
            dead_letters: AtomicU64::new(0),
            double_sales: AtomicU64::new(0),
        }
    }

    /// One committed batch of `rows` rows into `table`, which took `elapsed`.
    pub fn batch(&self, table: Table, rows: usize, elapsed: Duration) {
        self.batch_rows.observe(rows as u64);
        self.batch_latency_us.observe(elapsed.as_micros() as u64);
        bump(&self.rows_written[table as usize], rows as u64);
    }

    pub fn postgres_error(&self) {
        bump(&self.postgres_errors, 1);
    }

    /// Purchases seen in Redis outboxes and not yet committed to Postgres.
    pub fn set_outbox_pending(&self, n: u64) {
        self.outbox_pending.store(n, Ordering::Relaxed);
    }

    /// Outbox entries Postgres could not take yet (a row they reference is
    /// missing); they stay in the outbox and are tried again.
    pub fn outbox_retries(&self, n: u64) {
        bump(&self.outbox_retries, n);
    }

    /// One outbox entry moved to a dead letter, for `reason` (one of
    /// `DEAD_LETTER_REASONS`).
    pub fn dead_lettered(&self, reason: &str) {
        if let Some(i) = DEAD_LETTER_REASONS.iter().position(|&r| r == reason) {
            bump(&self.dead_lettered[i], 1);
        }
    }

    /// Entries in every sale's dead letter (last count).
    pub fn set_dead_letters(&self, n: u64) {
        self.dead_letters.store(n, Ordering::Relaxed);
    }

    /// Double sales newly recorded in the `double_sales` table.
    pub fn double_sales(&self, n: u64) {
        bump(&self.double_sales, n);
    }

    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }
}

/// What the reconciles of sales with Postgres count (see `reconcile`).
pub struct ReconcileMetrics {
    reconciles: AtomicU64,
    restored_items: AtomicU64,
}

impl ReconcileMetrics {
    const fn new() -> Self {
        ReconcileMetrics {
            reconciles: AtomicU64::new(0),
            restored_items: AtomicU64::new(0),
        }
    }

    /// One reconcile of an existing sale, which put back `restored` items.
    pub fn reconciled(&self, restored: u64) {
        bump(&self.reconciles, 1);
        self.restored_items(restored);
    }

    /// Items Postgres recorded as sold that Redis had lost, put back.
    pub fn restored_items(&self, n: u64) {
        bump(&self.restored_items, n);
    }
}

/// Every core's metrics plus the writer's and the reconciles', and the
/// process's clock offset.
pub struct Registry {
    cores: Mutex<Vec<Arc<CoreMetrics>>>,
    pub writer: WriterMetrics,
    pub reconcile: ReconcileMetrics,
    /// Redis's clock minus this host's wall clock (µs), last measured.
    clock_offset_us: AtomicI64,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

pub fn registry() -> &'static Registry {
    &REGISTRY
}

impl Registry {
    fn new() -> Self {
        Registry {
            cores: Mutex::new(Vec::new()),
            writer: WriterMetrics::new(),
            reconcile: ReconcileMetrics::new(),
            clock_offset_us: AtomicI64::new(0),
        }
    }

    /// The offset of Redis's clock from this host's (see `clock::RedisClock`).
    pub fn set_clock_offset_us(&self, offset_us: i64) {
        self.clock_offset_us.store(offset_us, Ordering::Relaxed);
    }

    /// A new core's metrics, registered for scrapes.
    pub fn register_core(&self) -> Arc<CoreMetrics> {
        let core = Arc::new(CoreMetrics::new());
        self.cores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(core.clone());
        core
    }

    /// Prometheus text exposition of everything, cores merged.
    pub fn render(&self, writer_queue_depth: usize) -> String {
        let cores = self.cores.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sum = |f: &dyn Fn(&CoreMetrics) -> &AtomicU64| -> u64 {
            cores.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
        };
        let mut out = String::with_capacity(16 * 1024);

        out.push_str("# HELP flashsale_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE flashsale_requests_total counter\n");
        for route in Route::ALL {
            for (si, status) in STATUSES
                .iter()
                .map(|s| s.to_string())
                .chain(["other".to_string()])
                .enumerate()
            {
                let n = sum(&|c| &c.requests[route as usize][si]);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "flashsale_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                        route.label()
                    );
                }
            }
        }

        out.push_str(
            "# HELP flashsale_request_duration_seconds Request latency by route, from parse to response queued.\n",
        );
        out.push_str("# TYPE flashsale_request_duration_seconds histogram\n");
        for route in Route::ALL {
            write_merged_histogram(
                &mut out,
                "flashsale_request_duration_seconds",
                &format!("route=\"{}\",", route.label()),
                &LATENCY_BOUNDS_US,
                cores.iter().map(|c| &c.latency[route as usize]),
                1e6,
            );
        }

        out.push_str(
            "# HELP flashsale_redis_batch_calls Calls carried by one batched script run (one EVALSHA), by script.\n",
        );
        out.push_str("# TYPE flashsale_redis_batch_calls histogram\n");
        for (i, script) in BATCHED_SCRIPTS.iter().enumerate() {
            write_merged_histogram(
                &mut out,
                "flashsale_redis_batch_calls",
                &format!("script=\"{script}\","),
                &BATCH_CALL_BOUNDS,
                cores.iter().map(|c| &c.redis_batch_calls[i]),
                1.0,
            );
        }

        out.push_str(
            "# HELP flashsale_redis_call_duration_seconds Time from sending one batched script run to its reply, by script.\n",
        );
        out.push_str("# TYPE flashsale_redis_call_duration_seconds histogram\n");
        for (i, script) in BATCHED_SCRIPTS.iter().enumerate() {
            write_merged_histogram(
                &mut out,
                "flashsale_redis_call_duration_seconds",
                &format!("script=\"{script}\","),
                &LATENCY_BOUNDS_US,
                cores.iter().map(|c| &c.redis_call_latency[i]),
                1e6,
            );
        }

        write_labeled_counter(
            &mut out,
            "flashsale_checkout_outcomes_total",
            "Checkout attempts by outcome.",
            "outcome",
            CHECKOUT_OUTCOMES
                .iter()
                .enumerate()
                .map(|(i, &outcome)| (outcome, sum(&|c| &c.checkout_outcomes[i]))),
        );
        write_labeled_counter(
            &mut out,
            "flashsale_redis_redirects_total",
            "Redis Cluster replies that made a call go again: moved (the slot has a new owner), ask (the slot is migrating), retry (TRYAGAIN, CLUSTERDOWN, MASTERDOWN, LOADING, READONLY).",
            "kind",
            Redirect::ALL.map(|r| (r.name(), sum(&|c| &c.redis_redirects[r as usize]))),
        );

        let counters: [(&str, &str, u64); 12] = [
            (
                "flashsale_items_sold_total",
                "Items sold by purchases answered by this process.",
                sum(&|c| &c.items_sold),
            ),
            (
                "flashsale_sold_map_answers_total",
                "Requests answered from the per-core known-sold map, without Redis.",
                sum(&|c| &c.answered_from_sold_map),
            ),
            (
                "flashsale_redis_errors_total",
                "Redis calls that failed (timeout, connection, protocol).",
                sum(&|c| &c.redis_errors),
            ),
            (
                "flashsale_shed_total",
                "Requests shed with 503 because a core had too much in flight.",
                sum(&|c| &c.shed),
            ),
            (
                "flashsale_writer_queue_full_total",
                "Requests answered 503 because the writer queue was full.",
                sum(&|c| &c.writer_queue_full),
            ),
            (
                "flashsale_connections_total",
                "Connections accepted.",
                sum(&|c| &c.connections_total),
            ),
            (
                "flashsale_connections_refused_total",
                "Connections answered 503 and closed because a core was at its connection limit.",
                sum(&|c| &c.connections_refused),
            ),
            (
                "flashsale_postgres_errors_total",
                "Postgres errors seen by the writer and the rotator.",
                self.writer.postgres_errors.load(Ordering::Relaxed),
            ),
            (
                "flashsale_outbox_retries_total",
                "Outbox entries Postgres could not take yet (a row they reference is missing), per attempt; they stay in the outbox and are retried.",
                self.writer.outbox_retries.load(Ordering::Relaxed),
            ),
            (
                "flashsale_double_sales_total",
                "Purchases Postgres refused because it records their item as bought by another purchase (a double sale after Redis lost writes); each is in the double_sales table.",
                self.writer.double_sales.load(Ordering::Relaxed),
            ),
            (
                "flashsale_reconciles_total",
                "Reconciles of a sale's Redis state with Postgres (after a fence or a gap) this process ran.",
                self.reconcile.reconciles.load(Ordering::Relaxed),
            ),
            (
                "flashsale_reconcile_restored_items_total",
                "Items Postgres recorded as sold that Redis had lost, put back by this process (reconciles and sale restores).",
                self.reconcile.restored_items.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }

        let gauges: [(&str, &str, u64); 4] = [
            (
                "flashsale_connections_open",
                "Connections open now.",
                sum(&|c| &c.connections_open),
            ),
            (
                "flashsale_writer_queue_depth",
                "Records waiting in the channel to the Postgres writer.",
                writer_queue_depth as u64,
            ),
            (
                "flashsale_outbox_pending",
                "Purchases in Redis outboxes not yet committed to Postgres (last sweep).",
                self.writer.outbox_pending.load(Ordering::Relaxed),
            ),
            (
                "flashsale_outbox_dead_letters",
                "Purchases in the dead-letter streams of every sale: bought in Redis, never recorded in Postgres; an operator must look (last count).",
                self.writer.dead_letters(),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }

        write_labeled_counter(
            &mut out,
            "flashsale_outbox_dead_lettered_total",
            "Outbox entries this process moved to a dead letter, by reason.",
            "reason",
            DEAD_LETTER_REASONS
                .iter()
                .zip(&self.writer.dead_lettered)
                .map(|(&reason, n)| (reason, n.load(Ordering::Relaxed))),
        );
        let _ = writeln!(
            out,
            "# HELP flashsale_clock_offset_seconds Redis's clock minus this host's wall clock, last measured (sales follow Redis's).\n\
             # TYPE flashsale_clock_offset_seconds gauge\n\
             flashsale_clock_offset_seconds {}",
            self.clock_offset_us.load(Ordering::Relaxed) as f64 / 1e6
        );

        write_labeled_counter(
            &mut out,
            "flashsale_writer_rows_total",
            "Rows committed to Postgres by table.",
            "table",
            TABLE_LABELS
                .iter()
                .zip(&self.writer.rows_written)
                .map(|(&table, n)| (table, n.load(Ordering::Relaxed))),
        );

        out.push_str("# HELP flashsale_writer_batch_rows Rows per committed batch.\n");
        out.push_str("# TYPE flashsale_writer_batch_rows histogram\n");
        write_merged_histogram(
            &mut out,
            "flashsale_writer_batch_rows",
            "",
            &BATCH_ROW_BOUNDS,
            [&self.writer.batch_rows],
            1.0,
        );

        out.push_str("# HELP flashsale_writer_batch_duration_seconds Time to commit one batch.\n");
        out.push_str("# TYPE flashsale_writer_batch_duration_seconds histogram\n");
        write_merged_histogram(
            &mut out,
            "flashsale_writer_batch_duration_seconds",
            "",
            &LATENCY_BOUNDS_US,
            [&self.writer.batch_latency_us],
            1e6,
        );
        out
    }
}

/// Writes one counter family with a sample per value of one label:
/// `# HELP`, `# TYPE`, then `name{label="value"} n` for each sample.
fn write_labeled_counter<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Writes the sum of the copies of one histogram (each core's, or the one
/// writer's) as one series; see `write_histogram`.
fn write_merged_histogram<'a, const N: usize>(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[u64; N],
    copies: impl IntoIterator<Item = &'a Histogram<N>>,
    divisor: f64,
) {
    let mut counts = [0u64; N];
    let (mut overflow, mut sum) = (0, 0);
    for copy in copies {
        copy.add_into(&mut counts, &mut overflow, &mut sum);
    }
    write_histogram(out, name, labels, bounds, &counts, overflow, sum, divisor);
}

/// Writes one histogram series; `labels` is empty or ends with a comma;
/// bounds and sum are divided by `divisor` (1e6 turns microseconds into seconds).
#[allow(clippy::too_many_arguments)]
fn write_histogram<const N: usize>(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[u64; N],
    counts: &[u64; N],
    overflow: u64,
    sum: u64,
    divisor: f64,
) {
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}le=\"{}\"}} {cumulative}",
            *bound as f64 / divisor
        );
    }
    cumulative += overflow;
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
    let labels = labels.trim_end_matches(',');
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", sum as f64 / divisor);
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_cores_and_renders_cumulative_buckets() {
        let registry = Registry::new();
        let a = registry.register_core();
        let b = registry.register_core();
        a.request(Route::Checkout, 200, Duration::from_micros(80));
        b.request(Route::Checkout, 200, Duration::from_micros(2_000_000));
        b.request(Route::Checkout, 409, Duration::from_micros(40));
        a.checkout_outcome("item_sold");
        let text = registry.render(7);
        assert!(text.contains("flashsale_requests_total{route=\"checkout\",status=\"200\"} 2"));
        assert!(text.contains("flashsale_requests_total{route=\"checkout\",status=\"409\"} 1"));
        assert!(text.contains(
            "flashsale_request_duration_seconds_bucket{route=\"checkout\",le=\"0.00005\"} 1"
        ));
        assert!(text.contains(
            "flashsale_request_duration_seconds_bucket{route=\"checkout\",le=\"0.0001\"} 2"
        ));
        assert!(text.contains(
            "flashsale_request_duration_seconds_bucket{route=\"checkout\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("flashsale_request_duration_seconds_count{route=\"checkout\"} 3"));
        assert!(text.contains("flashsale_checkout_outcomes_total{outcome=\"item_sold\"} 1"));
        assert!(text.contains("flashsale_writer_queue_depth 7"));
        registry.writer.dead_lettered("double_sale");
        registry.writer.set_dead_letters(3);
        let text = registry.render(0);
        assert!(text.contains("flashsale_outbox_dead_lettered_total{reason=\"double_sale\"} 1"));
        assert!(text.contains("flashsale_outbox_dead_lettered_total{reason=\"refused\"} 0"));
        assert!(text.contains("flashsale_outbox_dead_letters 3"));
        registry.set_clock_offset_us(-90_250_000);
        assert!(
            registry
                .render(0)
                .contains("\nflashsale_clock_offset_seconds -90.25\n")
        );
    }
}
