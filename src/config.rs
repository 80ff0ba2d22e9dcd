//! Every knob of the server: environment variables and flags, their
//! defaults and their validation (the table in docs/configuration.md). Nothing else reads the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::redis_client::batch::BatchLimits;
use crate::redis_client::keys::{Keys, check_prefix};
use crate::sale::ITEM_ID_STRIDE;

/// Most items a sale may have: item ids are `sale_id * ITEM_ID_STRIDE + n`
/// for n in `1..=items`, so a sale of ITEM_ID_STRIDE items ends just below
/// the next sale's first id.
pub const MAX_SALE_ITEMS: u32 = ITEM_ID_STRIDE as u32;

/// Most core threads `--cores` accepts.
pub const MAX_CORES: u64 = 4096;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flashsale",
    version,
    about = "Flash-sale server: hourly sales of unique items, decided in Redis, recorded in Postgres"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// Compare a sale's Redis state with its Postgres records; exit 1 on any difference.
    Check {
        /// The sale to check.
        #[arg(long)]
        sale: i64,
    },
}

/// The IO driver the core runtimes are asked to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverChoice {
    /// io_uring where the kernel allows it, else epoll (with a warning).
    Auto,
    /// io_uring, or refuse to start.
    IoUring,
    /// epoll (monoio's legacy driver), even where io_uring is available.
    Epoll,
}

/// The value as written in `FLASHSALE_DRIVER` and `--driver`.
impl std::fmt::Display for DriverChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => Ok(()),
        }
    }
}

/// The server's configuration. Every field is an environment variable and a flag.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address every core listens on (SO_REUSEPORT).
    #[arg(
        long = "listen",
        env = "FLASHSALE_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Number of core threads (one monoio runtime each), at least 1; default: every core.
    #[arg(long = "cores", env = "FLASHSALE_CORES",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_CORES))]
    pub cores: Option<usize>,

    /// IO driver of the core threads: `auto` (io_uring, epoll where io_uring is not
    /// allowed), `io-uring` (refuse to start without it) or `epoll`.
    #[arg(
        long = "driver",
        env = "FLASHSALE_DRIVER",
        value_enum,
        default_value_t = DriverChoice::Auto
    )]
    pub driver: DriverChoice,

    /// Redis URL (`redis://host:port/db`), or a Redis Cluster's seed nodes separated by
    /// commas (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`). Whether Redis is a cluster
    /// is asked of the first seed that answers (`INFO cluster`); a cluster has only
    /// database 0.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        global = true
    )]
    pub redis_url: String,

    /// Starts every Redis key the service writes (before a sale's `{sale:S}` hash
    /// tag), so that several deployments can share one Redis; `{` and `}` are refused.
    #[arg(long = "redis-key-prefix", env = "REDIS_KEY_PREFIX", default_value = "",
          value_parser = parse_key_prefix, global = true)]
    pub redis_key_prefix: String,

    /// Replicas that must confirm a purchase (`WAIT`) before it is answered 200;
    /// fewer within the call's deadline answers 503 (a retry of the code replays it).
    #[arg(long = "redis-wait-replicas", env = "FLASHSALE_REDIS_WAIT_REPLICAS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub redis_wait_replicas: u32,

    /// Postgres URL.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://flashsale@127.0.0.1:5432/flashsale",
        global = true
    )]
    pub database_url: String,

    /// Length of a sale in seconds; sales start at multiples of it since the epoch.
    #[arg(long = "sale-period-secs", env = "SALE_PERIOD_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400 * 366))]
    pub sale_period_secs: u64,

    /// Items per sale.
    #[arg(long = "sale-items", env = "SALE_ITEMS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=MAX_SALE_ITEMS as i64))]
    pub sale_items: u32,

    /// Most items one user may buy in one sale.
    #[arg(long = "user-limit", env = "USER_LIMIT", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub user_limit: u32,

    /// Log filter (`info`, `debug`, `flashsale=trace`, ...); add `json` for JSON lines (`json` or `json,debug`).
    #[arg(long = "log", env = "FLASHSALE_LOG", default_value = "info")]
    pub log: String,

    /// Deadline of one Redis call in milliseconds; past it the request gets 503.
    #[arg(
        long = "redis-timeout-ms",
        env = "FLASHSALE_REDIS_TIMEOUT_MS",
        default_value_t = 500
    )]
    pub redis_timeout_ms: u64,

    /// Most checkout (or purchase) calls a core sends to Redis in one script run.
    /// Calls that arrive while earlier runs are in flight go out together.
    #[arg(
        long = "redis-batch",
        env = "FLASHSALE_REDIS_BATCH",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub redis_batch: u32,

    /// Script runs of one kind (checkout, purchase) a core keeps in flight to Redis.
    #[arg(
        long = "redis-batches-in-flight",
        env = "FLASHSALE_REDIS_BATCHES_IN_FLIGHT",
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub redis_batches_in_flight: u32,

    /// Capacity of the queue from the cores to the Postgres writer, in records; full → 503.
    #[arg(
        long = "writer-queue",
        env = "FLASHSALE_WRITER_QUEUE",
        default_value_t = 200_000
    )]
    pub writer_queue: usize,

    /// Most checkout records the writer commits in one transaction (by one COPY).
    #[arg(
        long = "writer-batch",
        env = "FLASHSALE_WRITER_BATCH",
        default_value_t = 5_000
    )]
    pub writer_batch: usize,

    /// Longest a record waits in the writer before its batch is flushed, in milliseconds.
    #[arg(
        long = "writer-flush-ms",
        env = "FLASHSALE_WRITER_FLUSH_MS",
        default_value_t = 5
    )]
    pub writer_flush_ms: u64,

    /// Longest the new users of committed checkout batches wait before the
    /// writer commits them to `users`, in milliseconds (fewer, bigger
    /// transactions than the checkouts').
    #[arg(
        long = "writer-users-flush-ms",
        env = "FLASHSALE_WRITER_USERS_FLUSH_MS",
        default_value_t = 1_000
    )]
    pub writer_users_flush_ms: u64,

    /// After how many seconds a writer's `users_backlog` mark counts as left
    /// behind (its writer killed), so that any instance inserts the users it covers.
    #[arg(
        long = "users-backlog-stale-secs",
        env = "FLASHSALE_USERS_BACKLOG_STALE_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub users_backlog_stale_secs: u64,

    /// Postgres connections in the pool the writer and the rotator share (the
    /// writer's checkout batches use one more, of their own).
    #[arg(
        long = "pg-pool-size",
        env = "FLASHSALE_PG_POOL_SIZE",
        default_value_t = 4
    )]
    pub pg_pool_size: u32,

    /// How long Redis keeps a sale's users and codes after the sale ends, in seconds.
    #[arg(
        long = "sale-retention-secs",
        env = "FLASHSALE_SALE_RETENTION_SECS",
        default_value_t = 86_400
    )]
    pub sale_retention_secs: u64,

    /// Days of `checkouts` kept in Postgres: daily partitions that end more than
    /// this many days before today are dropped; 0 keeps every partition.
    #[arg(
        long = "checkouts-retention-days",
        env = "FLASHSALE_CHECKOUTS_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub checkouts_retention_days: u32,

    /// Largest request line (method, target, version), in bytes; past it → 431.
    #[arg(
        long = "max-request-line-bytes",
        env = "FLASHSALE_MAX_REQUEST_LINE_BYTES",
        default_value_t = 4096
    )]
    pub max_request_line_bytes: usize,

    /// Largest request line plus headers, in bytes; past it → 431.
    #[arg(
        long = "max-header-bytes",
        env = "FLASHSALE_MAX_HEADER_BYTES",
        default_value_t = 8192
    )]
    pub max_header_bytes: usize,

    /// Most header lines in one request; past it → 431.
    #[arg(
        long = "max-headers",
        env = "FLASHSALE_MAX_HEADERS",
        default_value_t = 64
    )]
    pub max_headers: usize,

    /// Largest request body, in bytes; past it → 413.
    #[arg(
        long = "max-body-bytes",
        env = "FLASHSALE_MAX_BODY_BYTES",
        default_value_t = 16_384
    )]
    pub max_body_bytes: usize,

    /// Seconds a keep-alive connection may sit idle between requests.
    #[arg(
        long = "idle-timeout-secs",
        env = "FLASHSALE_IDLE_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub idle_timeout_secs: u64,

    /// Milliseconds a client has to send a whole request once it has started one.
    #[arg(
        long = "read-timeout-ms",
        env = "FLASHSALE_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub read_timeout_ms: u64,

    /// Bytes of answers a connection may have waiting to be sent before its next
    /// requests are left unparsed until the client reads (one answer may exceed it).
    #[arg(
        long = "max-output-bytes-per-conn",
        env = "FLASHSALE_MAX_OUTPUT_BYTES_PER_CONN",
        default_value_t = 65_536,
        value_parser = clap::value_parser!(u64).range(1..=1 << 30)
    )]
    pub max_output_bytes_per_conn: u64,

    /// Milliseconds a client may go without reading any of its pending answers
    /// before its connection is closed.
    #[arg(
        long = "write-timeout-ms",
        env = "FLASHSALE_WRITE_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub write_timeout_ms: u64,

    /// Most open connections per core; past it new connections get 503 and are closed.
    #[arg(
        long = "max-conns-per-core",
        env = "FLASHSALE_MAX_CONNS_PER_CORE",
        default_value_t = 20_000
    )]
    pub max_conns_per_core: usize,

    /// Most requests in progress per core (waiting on Redis); past it → 503 with Retry-After.
    #[arg(
        long = "max-inflight-per-core",
        env = "FLASHSALE_MAX_INFLIGHT_PER_CORE",
        default_value_t = 8192
    )]
    pub max_inflight_per_core: usize,

    /// Seconds a graceful shutdown may take before the server exits anyway.
    #[arg(
        long = "shutdown-timeout-secs",
        env = "FLASHSALE_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub shutdown_timeout_secs: u64,
}

impl Config {
    /// Number of core threads to run.
    pub fn core_count(&self) -> usize {
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.cores.unwrap_or(available)
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }

    /// How a core groups its script calls into batches.
    pub fn redis_batching(&self) -> BatchLimits {
        BatchLimits {
            max_calls: self.redis_batch as usize,
            max_in_flight: self.redis_batches_in_flight as usize,
            timeout: self.redis_timeout(),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms.max(1))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn writer_flush(&self) -> Duration {
        Duration::from_millis(self.writer_flush_ms.max(1))
    }

    /// The Redis key names behind the configured prefix.
    pub fn redis_keys(&self) -> Keys {
        Keys::new(&self.redis_key_prefix).expect("the prefix was checked when parsed")
    }

    /// How long Redis keeps a sale's users and codes after it ends, in ms.
    pub fn retention_ms(&self) -> i64 {
        (self.sale_retention_secs as i64).saturating_mul(1000)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs.max(1))
    }

    /// Whether logs are JSON lines, and the level filter that remains.
    pub fn log_format(&self) -> (bool, String) {
        let mut json = false;
        let mut filters = Vec::new();
        for part in self.log.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("json") {
                json = true;
            } else {
                filters.push(part);
            }
        }
        let filter = if filters.is_empty() {
            "info".to_string()
        } else {
            filters.join(",")
        };
        (json, filter)
    }
}

fn parse_key_prefix(text: &str) -> Result<String, String> {
    check_prefix(text)
        .map(|()| text.to_string())
        .map_err(|why| format!("the key prefix {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("flashsale").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_spec() {
        let cli = parse(&[]);
        let c = cli.config;
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379/0");
        assert_eq!(c.sale_period_secs, 3600);
        assert_eq!(c.sale_items, 10_000);
        assert_eq!(c.user_limit, 10);
        assert_eq!(c.log_format(), (false, "info".to_string()));
        assert_eq!(c.driver, DriverChoice::Auto);
    }

    #[test]
    fn driver_names() {
        for (name, driver) in [
            ("auto", DriverChoice::Auto),
            ("io-uring", DriverChoice::IoUring),
            ("epoll", DriverChoice::Epoll),
        ] {
            assert_eq!(parse(&["--driver", name]).config.driver, driver);
            assert_eq!(driver.to_string(), name);
        }
        assert!(Cli::try_parse_from(["flashsale", "--driver", "kqueue"]).is_err());
    }

    #[test]
    fn json_log_keeps_level() {
        let cli = parse(&["--log", "json,debug"]);
        assert_eq!(cli.config.log_format(), (true, "debug".to_string()));
    }

    #[test]
    fn key_prefixes_without_braces() {
        assert_eq!(parse(&[]).config.redis_keys().prefix(), "");
        let c = parse(&["--redis-key-prefix", "shop-a:"]).config;
        assert_eq!(c.redis_keys().meta(3), "shop-a:{sale:3}:meta");
        for bad in ["{x}", "a{", "}"] {
            let e = Cli::try_parse_from(["flashsale", "--redis-key-prefix", bad]).unwrap_err();
            assert!(e.to_string().contains("may not contain '{' or '}'"), "{e}");
        }
    }

    #[test]
    fn cores_are_at_least_one() {
        assert!(Cli::try_parse_from(["flashsale", "--cores", "0"]).is_err());
        assert_eq!(parse(&["--cores", "3"]).config.core_count(), 3);
        assert!(parse(&[]).config.core_count() >= 1);
    }

    #[test]
    fn rejects_zero_items_and_period() {
        let args = ["flashsale", "--sale-items", "0"];
        assert!(Cli::try_parse_from(args).is_err());
        let args = ["flashsale", "--sale-period-secs", "0"];
        assert!(Cli::try_parse_from(args).is_err());
    }

    #[test]
    fn output_bound_and_write_timeout() {
        let c = parse(&[]).config;
        assert_eq!(c.max_output_bytes_per_conn, 65_536);
        assert_eq!(c.write_timeout(), Duration::from_secs(10));
        let c = parse(&[
            "--max-output-bytes-per-conn",
            "1",
            "--write-timeout-ms",
            "250",
        ])
        .config;
        assert_eq!(c.max_output_bytes_per_conn, 1);
        assert_eq!(c.write_timeout(), Duration::from_millis(250));
        // Zero would mean never parsing a request, or closing every connection at once.
        for flag in ["--max-output-bytes-per-conn", "--write-timeout-ms"] {
            assert!(Cli::try_parse_from(["flashsale", flag, "0"]).is_err());
        }
    }
}
