//! Harness of the black-box tests: starts the real `flashsale` binary against
//! its own Redis database and its own Postgres database, and speaks HTTP/1.1 to
//! it over plain `TcpStream`s.
//!
//! On a Redis Cluster (`Opts::on_cluster`, or every server by default when
//! `FLASHSALE_TEST_REDIS=cluster`) a server gets a key prefix of its own
//! (`REDIS_KEY_PREFIX`) instead of a database number, on the cluster at
//! `TEST_REDIS_CLUSTER_URL` (default: the local cluster of
//! `scripts/services.sh cluster-start`, 127.0.0.1:7000-7005).
//!
//! Environment: `TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) and
//! `TEST_DATABASE_URL` (admin URL, default
//! `postgres://flashsale@127.0.0.1:5432/postgres`). Set `FLASHSALE_TEST_KEEP=1`
//! to keep each test's Postgres database and Redis data after the test, and
//! `FLASHSALE_TEST_LOG` to change the server's log filter (default `info`).
//! Server output goes to `target/test-logs/<test>.log`; a failing test prints
//! the path and the log's tail.

#![allow(dead_code)]

/// Redis Cluster: a private cluster to break, the shared one, connections.
pub mod cluster;
/// A proxy in front of Postgres that loses the answer to one commit.
pub mod pg_proxy;
/// A proxy that holds Redis's replies back, for interleaving tests.
pub mod proxy;
/// Private Redis and Postgres instances for the fault-injection tests.
pub mod services;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use simd_json::OwnedValue;
use simd_json::prelude::*;

/// Redis key names of a sale, as a server without a key prefix (the tests'
/// default) and its scripts use them.
pub mod keys {
    use flashsale::redis_client::keys::Keys;

    pub fn meta(sale_id: i64) -> String {
        Keys::default().meta(sale_id)
    }
    pub fn sold(sale_id: i64) -> String {
        Keys::default().sold(sale_id)
    }
    /// The sale's users hash: field = user id, value =
    /// `<bought>:<items in the checkout>:<code>:<,items,>`.
    pub fn users(sale_id: i64) -> String {
        Keys::default().users(sale_id)
    }
    /// The sale's codes hash: field = code, value =
    /// `<status>:<user>:<purchased>:<unavailable>`.
    pub fn codes(sale_id: i64) -> String {
        Keys::default().codes(sale_id)
    }
    /// The `bought` count of a users hash value (`None`: no entry).
    pub fn bought(entry: Option<&str>) -> Option<i64> {
        entry?.split(':').next()?.parse().ok()
    }
    pub fn outbox(sale_id: i64) -> String {
        Keys::default().outbox(sale_id)
    }
}
/// The id of item `n` of a sale, as the server numbers them.
pub use flashsale::sale::item_id;

/// How long a test waits for Postgres to show what Redis already decided.
pub const PG_DEADLINE: Duration = Duration::from_secs(10);

/// How long a single HTTP read may block before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the server may take to answer `/health` after it was spawned.
const START_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// environment
// ---------------------------------------------------------------------------

/// The Redis server URL without a database number.
pub fn redis_base_url() -> String {
    let url = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_string());
    strip_path(&url)
}

/// The Postgres admin URL (a database the role can connect to for CREATE DATABASE).
pub fn pg_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://flashsale@127.0.0.1:5432/postgres".to_string())
}

/// `scheme://authority` of a URL, without path or query.
fn strip_path(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// The admin URL with its database replaced by `db`, query string kept.
pub fn pg_url_for(db: &str) -> String {
    let admin = pg_admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b.to_string(), Some(q.to_string())),
        None => (admin.clone(), None),
    };
    let mut url = format!("{}/{db}", strip_path(&base));
    if let Some(q) = query {
        url.push('?');
        url.push_str(&q);
    }
    url
}

fn pg_connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to Postgres at {url}: {e} (are the services up? scripts/services.sh start)"))
}

/// Where a test server keeps its Redis state: a database of its own on the
/// single node, or a key prefix of its own on a Redis Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisSpace {
    Db(i64),
    Prefix { seed_url: String, prefix: String },
}

impl RedisSpace {
    /// A fresh space: a flushed database, or an unused prefix on the cluster
    /// at `cluster` (a seed list).
    fn alloc(cluster: Option<&str>) -> RedisSpace {
        match cluster {
            None => RedisSpace::Db(alloc_redis_db()),
            Some(seed_url) => RedisSpace::Prefix {
                seed_url: seed_url.to_string(),
                prefix: cluster::alloc_prefix(seed_url),
            },
        }
    }

    /// The server's `REDIS_URL`.
    pub fn url(&self) -> String {
        match self {
            RedisSpace::Db(db) => format!("{}/{db}", redis_base_url()),
            RedisSpace::Prefix { seed_url, .. } => seed_url.clone(),
        }
    }

    /// The server's `REDIS_KEY_PREFIX` (empty on its own database).
    pub fn prefix(&self) -> &str {
        match self {
            RedisSpace::Db(_) => "",
            RedisSpace::Prefix { prefix, .. } => prefix,
        }
    }

    /// Removes everything a server wrote there.
    fn clear(&self) {
        match self {
            RedisSpace::Db(db) => {
                let flushed = redis::Client::open(self.url())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut con| redis::cmd("FLUSHDB").query::<()>(&mut con));
                if let Err(e) = flushed {
                    eprintln!("[harness] could not flush Redis db {db}: {e}");
                }
            }
            RedisSpace::Prefix { seed_url, prefix } => {
                let deleted =
                    std::panic::catch_unwind(|| cluster::delete_prefixed(seed_url, prefix));
                if deleted.is_err() {
                    eprintln!("[harness] could not delete the keys {prefix}* on {seed_url}");
                }
            }
        }
    }
}

impl fmt::Display for RedisSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisSpace::Db(db) => write!(f, "Redis db {db}"),
            RedisSpace::Prefix { prefix, .. } => write!(f, "the Redis Cluster keys {prefix}*"),
        }
    }
}

/// The cluster every server runs on by default: the shared one when
/// `FLASHSALE_TEST_REDIS=cluster`, else none (a database of the single node).
fn default_cluster() -> Option<String> {
    match std::env::var("FLASHSALE_TEST_REDIS").as_deref() {
        Ok("cluster") => Some(cluster::shared_cluster_url()),
        Ok("") | Ok("single") | Err(_) => None,
        Ok(other) => panic!("FLASHSALE_TEST_REDIS={other}: expected single or cluster"),
    }
}

pub fn redis_connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {url}: {e} (are the services up? scripts/services.sh start)"))
}

/// A Redis database number of our own: INCR of a shared counter in db 0,
/// mapped into 1..=1000, then flushed.
fn alloc_redis_db() -> i64 {
    let base = redis_base_url();
    let mut admin = redis_connect(&base);
    let n: i64 = redis::cmd("INCR")
        .arg("flashsale:test:next-db")
        .query(&mut admin)
        .expect("INCR flashsale:test:next-db");
    let db = (n - 1).rem_euclid(1000) + 1;
    let mut con = redis_connect(&format!("{base}/{db}"));
    let _: () = redis::cmd("FLUSHDB")
        .query(&mut con)
        .expect("FLUSHDB of the test database");
    db
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A fresh Postgres database `flashsale_test_<pid>_<n>`.
fn create_database() -> String {
    let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
    let name = format!("flashsale_test_{}_{n}", std::process::id());
    let mut admin = pg_connect(&pg_admin_url());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap_or_else(|e| panic!("drop stale database {name}: {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    name
}

fn drop_database(name: &str) {
    let dropped =
        postgres::Client::connect(&pg_admin_url(), postgres::NoTls).and_then(|mut admin| {
            admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        });
    if let Err(e) = dropped {
        eprintln!("[harness] could not drop database {name}: {e}");
    }
}

/// A port no test process on this machine holds: nobody in this process was
/// given it before, and no other test process has it reserved (servers bind
/// with SO_REUSEPORT, so two of them on one port would silently share it,
/// and test binaries of several checkouts often run at the same time). The
/// reservation is an exclusive lock on `<tmp>/flashsale-test-ports/<port>`,
/// held until this process exits.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if reserve_port(port) {
            return port;
        }
    }
}

/// A free port for a Redis Cluster node whose cluster bus port (port + 10000)
/// is free too; both are reserved like `free_port`'s.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        let Some(bus) = port.checked_add(10_000) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", bus)).is_ok() && reserve_port(bus) {
            return port;
        }
    }
}

/// Reserves `port` for this process unless this process or another test
/// process has it already (see `free_port`).
fn reserve_port(port: u16) -> bool {
    static GIVEN: OnceLock<Mutex<HashMap<u16, Option<File>>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashMap::new()));
    let lock_dir = std::env::temp_dir().join("flashsale-test-ports");
    fs::create_dir_all(&lock_dir).unwrap_or_else(|e| panic!("create {}: {e}", lock_dir.display()));
    let mut given = given.lock().unwrap();
    if given.contains_key(&port) {
        return false;
    }
    let path = lock_dir.join(port.to_string());
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    match lock.try_lock() {
        Ok(()) => {
            given.insert(port, Some(lock));
            true
        }
        // Another test process has it: never ask for it here again.
        Err(fs::TryLockError::WouldBlock) => {
            given.insert(port, None);
            false
        }
        Err(fs::TryLockError::Error(e)) => panic!("lock {}: {e}", path.display()),
    }
}

/// The inodes of the TCP sockets listening on `port` (any address), from
/// `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn listening_socket_inodes(port: u16) -> HashSet<u64> {
    const LISTEN: &str = "0A";
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != LISTEN {
                continue;
            }
            let local_port = fields[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && let Ok(inode) = fields[9].parse()
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// The inodes of the sockets process `pid` has open.
pub fn socket_inodes_of(pid: u32) -> HashSet<u64> {
    let dir = format!("/proc/{pid}/fd");
    let Ok(entries) = fs::read_dir(&dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The processes that have one of `inodes` open (for messages).
pub fn owners_of_sockets(inodes: &HashSet<u64>) -> Vec<u32> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| !socket_inodes_of(pid).is_disjoint(inodes))
        .collect();
    pids.sort_unstable();
    pids
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs() as i64
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_millis() as i64
}

/// Tests that do not mean to see a rotation use long periods; if the current
/// period is about to end, wait for the next one so the test runs in one sale.
fn avoid_period_boundary(period_secs: u64) {
    if period_secs < 60 {
        return;
    }
    let period = period_secs as i64 * 1000;
    let left = period - now_ms().rem_euclid(period);
    if left < 30_000 {
        eprintln!("[harness] sale period ends in {left} ms; waiting for the next one");
        std::thread::sleep(Duration::from_millis(left as u64 + 1000));
    }
}

fn target_dir() -> PathBuf {
    // <target>/<profile>/flashsale
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_flashsale"));
    bin.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn test_name() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("main").replace("::", "-");
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    format!("{}-{test}-{seq}", env!("CARGO_CRATE_NAME"))
}

/// Polls `f` until it returns true or `timeout` passes; returns the last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like `wait_until`, but panics with `what` when the deadline passes.
pub fn eventually(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, f),
        "timed out after {timeout:?} waiting for: {what}"
    );
}

// ---------------------------------------------------------------------------
// the server under test
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Opts {
    pub period_secs: u64,
    pub items: u32,
    pub limit: u32,
    pub env: Vec<(String, String)>,
    /// The seed list of the Redis Cluster to run on (with a key prefix of the
    /// server's own), or None for a database of the single node.
    pub redis_cluster: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            period_secs: 3600,
            items: 100,
            limit: 10,
            env: Vec::new(),
            redis_cluster: default_cluster(),
        }
    }
}

impl Opts {
    pub fn period(mut self, secs: u64) -> Self {
        self.period_secs = secs;
        self
    }
    pub fn items(mut self, items: u32) -> Self {
        self.items = items;
        self
    }
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// Runs on the Redis Cluster at `seed_url`, with a key prefix of its own.
    pub fn on_cluster(mut self, seed_url: &str) -> Self {
        self.redis_cluster = Some(seed_url.to_string());
        self
    }
    /// Runs on a database of the single Redis node, whatever `FLASHSALE_TEST_REDIS` says.
    pub fn on_single_node(mut self) -> Self {
        self.redis_cluster = None;
        self
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub name: String,
    pub log_path: PathBuf,
    pub redis_space: RedisSpace,
    pub db_name: String,
    pub opts: Opts,
    child: Child,
    owns_data: bool,
    conn: Mutex<Option<Conn>>,
}

/// `GET /sales/active`, parsed.
#[derive(Debug, Clone)]
pub struct Sale {
    pub id: i64,
    pub items_total: i64,
    pub items_sold: i64,
    pub starts_at: OwnedValue,
    pub ends_at: OwnedValue,
}

impl TestServer {
    /// A server with its own Redis database (or key prefix on a cluster) and
    /// Postgres database.
    pub fn start(opts: Opts) -> TestServer {
        avoid_period_boundary(opts.period_secs);
        let redis_space = RedisSpace::alloc(opts.redis_cluster.as_deref());
        let db_name = create_database();
        Self::spawn(opts, redis_space, db_name, true)
    }

    /// A server on a Postgres database that `setup` prepared first (say, an
    /// older schema with rows in it).
    pub fn start_after(opts: Opts, setup: impl FnOnce(&mut postgres::Client)) -> TestServer {
        let (redis_space, db_name) = Self::prepare_data(&opts, setup);
        Self::spawn(opts, redis_space, db_name, true)
    }

    /// A Redis space and a Postgres database that `setup` prepared, for
    /// `start_on` (several instances may then start on them at once).
    pub fn prepare_data(
        opts: &Opts,
        setup: impl FnOnce(&mut postgres::Client),
    ) -> (RedisSpace, String) {
        avoid_period_boundary(opts.period_secs);
        let redis_space = RedisSpace::alloc(opts.redis_cluster.as_deref());
        let db_name = create_database();
        setup(&mut pg_connect(&pg_url_for(&db_name)));
        (redis_space, db_name)
    }

    /// A server on data from `prepare_data`; `owns_data`: drops it at the end.
    pub fn start_on(
        opts: Opts,
        redis_space: &RedisSpace,
        db_name: &str,
        owns_data: bool,
    ) -> TestServer {
        Self::spawn(opts, redis_space.clone(), db_name.to_string(), owns_data)
    }

    /// Kills the process (SIGKILL) and starts a new one on the same data with
    /// `opts`; the test goes on talking to the new one.
    pub fn restart(&mut self, opts: Opts) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut next = Self::spawn(opts, self.redis_space.clone(), self.db_name.clone(), false);
        std::mem::swap(&mut self.child, &mut next.child);
        std::mem::swap(&mut self.addr, &mut next.addr);
        std::mem::swap(&mut self.name, &mut next.name);
        std::mem::swap(&mut self.log_path, &mut next.log_path);
        std::mem::swap(&mut self.opts, &mut next.opts);
        *self.conn.lock().unwrap() = None;
    }

    /// A second instance on the same Redis database and Postgres database.
    pub fn start_sharing(other: &TestServer) -> TestServer {
        Self::spawn(
            other.opts.clone(),
            other.redis_space.clone(),
            other.db_name.clone(),
            false,
        )
    }

    /// A second instance on the same Redis and Postgres databases, with
    /// extra environment (on top of `other`'s options).
    pub fn start_sharing_with(other: &TestServer, env: &[(String, String)]) -> TestServer {
        let mut opts = other.opts.clone();
        opts.env.extend(env.iter().cloned());
        Self::spawn(
            opts,
            other.redis_space.clone(),
            other.db_name.clone(),
            false,
        )
    }

    fn spawn(opts: Opts, redis_space: RedisSpace, db_name: String, owns_data: bool) -> TestServer {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let name = test_name();
        let log_dir = target_dir().join("test-logs");
        fs::create_dir_all(&log_dir).expect("create target/test-logs");
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::create(&log_path).expect("create server log file");
        let log_level = std::env::var("FLASHSALE_TEST_LOG").unwrap_or_else(|_| "info".to_string());

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
        cmd.env("FLASHSALE_LISTEN", addr.to_string())
            .env("FLASHSALE_CORES", "2")
            .env("REDIS_URL", redis_space.url())
            .env("REDIS_KEY_PREFIX", redis_space.prefix())
            .env("DATABASE_URL", pg_url_for(&db_name))
            .env("SALE_PERIOD_SECS", opts.period_secs.to_string())
            .env("SALE_ITEMS", opts.items.to_string())
            .env("USER_LIMIT", opts.limit.to_string())
            .env("FLASHSALE_LOG", log_level);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_flashsale")));

        let mut server = TestServer {
            addr,
            name,
            log_path,
            redis_space,
            db_name,
            opts,
            child,
            owns_data,
            conn: Mutex::new(None),
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&mut self) {
        let (addr, log_path) = (self.addr, self.log_path.clone());
        let child = &mut self.child;
        wait_healthy(
            addr,
            START_DEADLINE,
            || child.try_wait().ok().flatten().map(|s| s.to_string()),
            || format!("{}:\n{}", log_path.display(), tail(&log_path, 40)),
        );
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        services::signal(self.child.id(), services::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        services::wait_exit(&mut self.child, timeout)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's resident memory (`VmRSS` of /proc/<pid>/status), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"));
        kib * 1024
    }

    /// `flashsale_connections_open` from /metrics, read on a connection that
    /// closes (so it counts itself).
    pub fn open_connections(&self) -> i64 {
        let mut c = self.connect();
        let r = c.request("GET", "/metrics", &[("Connection", "close")], b"");
        r.assert_status(200);
        let text = r.text();
        let value = text
            .lines()
            .find(|l| l.starts_with("flashsale_connections_open"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no flashsale_connections_open in /metrics:\n{text}"));
        let _ = c.closed_within(Duration::from_secs(5));
        value as i64
    }

    /// The value of one sample of /metrics, by its full name with labels
    /// (`flashsale_redis_redirects_total{kind="moved"}`).
    pub fn metric(&self, sample: &str) -> f64 {
        let r = self.get("/metrics");
        r.assert_status(200);
        let text = r.text();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{text}"))
    }

    /// A new keep-alive connection to the server.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// One request over the server's cached keep-alive connection (reconnects
    /// when the cached connection was closed before it answered anything).
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut cached = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut conn) = cached.take() {
            match conn.try_request(method, target, headers, body) {
                Ok(r) => {
                    if !r.closes_connection() {
                        *cached = Some(conn);
                    }
                    return r;
                }
                Err(e) if conn.stale(&e) => {}
                Err(e) => panic!("{method} {target}: {e}"),
            }
        }
        let mut conn = self.connect();
        let r = conn
            .try_request(method, target, headers, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        if !r.closes_connection() {
            *cached = Some(conn);
        }
        r
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    pub fn post(&self, target: &str) -> Response {
        self.request("POST", target, &[], b"")
    }

    pub fn active_sale(&self) -> Sale {
        let r = self.get("/sales/active");
        r.assert_status(200);
        Sale::from_response(&r)
    }

    pub fn checkout(&self, user: i64, item: i64) -> Response {
        self.post(&checkout_path(user, item))
    }

    pub fn purchase(&self, code: &str) -> Response {
        self.post(&purchase_path(code))
    }

    /// A Postgres client on this test's database.
    pub fn pg(&self) -> postgres::Client {
        pg_connect(&pg_url_for(&self.db_name))
    }

    /// A Redis connection on this test's database, or on the cluster.
    pub fn redis(&self) -> cluster::RedisConn {
        cluster::RedisConn::open(&self.redis_url())
    }

    /// The names of this server's Redis keys (with its key prefix).
    pub fn keys(&self) -> flashsale::redis_client::keys::Keys {
        flashsale::redis_client::keys::Keys::new(&self.key_prefix()).expect("a valid key prefix")
    }

    /// `SELECT count(*) ...` style query returning one bigint.
    pub fn pg_i64(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> i64 {
        let mut pg = self.pg();
        let row = pg
            .query_one(sql, params)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.get(0)
    }

    /// Polls `sql` (one bigint) until it equals `expected`, up to PG_DEADLINE.
    pub fn wait_pg_i64(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        expected: i64,
    ) {
        let mut pg = self.pg();
        let mut last = None;
        let ok = wait_until(PG_DEADLINE, || match pg.query_one(sql, params) {
            Ok(row) => {
                let v: i64 = row.get(0);
                last = Some(Ok(v));
                v == expected
            }
            Err(e) => {
                last = Some(Err(e.to_string()));
                false
            }
        });
        assert!(
            ok,
            "Postgres: `{sql}` expected {expected} within {PG_DEADLINE:?}, last {last:?}"
        );
    }

    /// The Redis URL (with its database, or the cluster's seed list) this
    /// server runs on.
    pub fn redis_url(&self) -> String {
        self.env_override("REDIS_URL")
            .unwrap_or_else(|| self.redis_space.url())
    }

    /// The Redis key prefix this server runs with (empty on a database of its own).
    pub fn key_prefix(&self) -> String {
        self.env_override("REDIS_KEY_PREFIX")
            .unwrap_or_else(|| self.redis_space.prefix().to_string())
    }

    fn env_override(&self, name: &str) -> Option<String> {
        <[(String, String)]>::iter(&self.opts.env)
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// The Postgres URL of this server's database.
    pub fn database_url(&self) -> String {
        pg_url_for(&self.db_name)
    }

    /// `flashsale check --sale <id>` on this server's databases: exit status
    /// and output.
    pub fn check(&self, sale_id: i64) -> (Option<i32>, String) {
        run_check(
            &self.redis_url(),
            &self.key_prefix(),
            &self.database_url(),
            sale_id,
        )
    }

    /// Fails the test when `flashsale check --sale <id>` finds differences
    /// between this server's Redis and Postgres databases.
    #[track_caller]
    pub fn assert_consistent(&self, sale_id: i64) {
        check_consistent(
            &self.redis_url(),
            &self.key_prefix(),
            &pg_url_for(&self.db_name),
            sale_id,
        );
    }
}

/// The environment that runs a process with its wall clock `offset_secs`
/// off (negative: behind), through libfaketime (Debian package `faketime`,
/// installed by scripts/services.sh). Monotonic clocks stay true. The
/// library is found in the usual places, or at `FLASHSALE_FAKETIME_LIB`.
pub fn faketime_env(offset_secs: i64) -> Vec<(String, String)> {
    const LIB: &str = "libfaketimeMT.so.1";
    let candidates = std::env::var("FLASHSALE_FAKETIME_LIB")
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain(
            ["/usr/lib", "/usr/local/lib", "/usr/lib64"]
                .iter()
                .flat_map(|root| {
                    let root = PathBuf::from(root);
                    let mut dirs = vec![root.join("faketime")];
                    if let Ok(entries) = fs::read_dir(&root) {
                        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
                    }
                    dirs
                })
                .map(|dir| dir.join(LIB)),
        );
    let lib = candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{LIB} not found: install the Debian package faketime (scripts/services.sh does) or set FLASHSALE_FAKETIME_LIB")
        });
    vec![
        ("LD_PRELOAD".to_string(), lib.display().to_string()),
        ("FAKETIME".to_string(), format!("{offset_secs:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ]
}

/// Runs `flashsale check --sale <id>` on the given Redis and Postgres and
/// fails the test, with the checker's report, when it finds differences.
#[track_caller]
pub fn assert_consistent(redis_url: &str, database_url: &str, sale_id: i64) {
    check_consistent(redis_url, "", database_url, sale_id);
}

/// `assert_consistent` for a server whose Redis keys start with `key_prefix`.
#[track_caller]
pub fn check_consistent(redis_url: &str, key_prefix: &str, database_url: &str, sale_id: i64) {
    let (status, report) = run_check(redis_url, key_prefix, database_url, sale_id);
    assert!(
        status == Some(0),
        "`flashsale check --sale {sale_id}` found differences:\n{report}"
    );
}

/// `flashsale check --sale <id>` on these databases: its exit status and its
/// output (stdout, then stderr).
pub fn run_check(
    redis_url: &str,
    key_prefix: &str,
    database_url: &str,
    sale_id: i64,
) -> (Option<i32>, String) {
    let out = services::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["check", "--sale", &sale_id.to_string()])
            .env("REDIS_URL", redis_url)
            .env("REDIS_KEY_PREFIX", key_prefix)
            .env("DATABASE_URL", database_url)
            .env("FLASHSALE_LOG", "warn"),
        Duration::from_secs(60),
    );
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "[harness] server {} log: {}\n---- last lines ----\n{}\n--------------------",
                self.name,
                self.log_path.display(),
                self.log_tail(30)
            );
        }
        let keep = std::env::var("FLASHSALE_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
        if self.owns_data && !keep {
            drop_database(&self.db_name);
            self.redis_space.clear();
        } else if self.owns_data {
            eprintln!(
                "[harness] kept Postgres database {} and {}",
                self.db_name, self.redis_space
            );
        }
    }
}

impl Sale {
    pub fn from_response(r: &Response) -> Sale {
        let v = r.json();
        let field = |k: &str| {
            v.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("/sales/active lacks {k:?}: {r}"))
        };
        Sale {
            id: r.i64("sale_id"),
            items_total: r.i64("items_total"),
            items_sold: r.i64("items_sold"),
            starts_at: field("starts_at"),
            ends_at: field("ends_at"),
        }
    }

    pub fn item(&self, n: u32) -> i64 {
        item_id(self.id, n)
    }

    pub fn starts_secs(&self) -> i64 {
        timestamp_secs(&self.starts_at)
            .unwrap_or_else(|| panic!("starts_at is no timestamp: {:?}", self.starts_at))
    }

    pub fn ends_secs(&self) -> i64 {
        timestamp_secs(&self.ends_at)
            .unwrap_or_else(|| panic!("ends_at is no timestamp: {:?}", self.ends_at))
    }
}

pub fn checkout_path(user: i64, item: i64) -> String {
    format!("/checkout?user_id={user}&id={item}")
}

pub fn purchase_path(code: &str) -> String {
    format!("/purchase?code={code}")
}

/// A timestamp in Unix seconds from a JSON number (seconds, or milliseconds
/// when it is that large) or an RFC 3339 string in UTC (`Z` or `+00:00`).
pub fn timestamp_secs(v: &OwnedValue) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(if n > 100_000_000_000 { n / 1000 } else { n });
    }
    if let Some(f) = v.as_f64() {
        return Some(f as i64);
    }
    parse_rfc3339_utc(v.as_str()?)
}

fn parse_rfc3339_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" | "+00:00" | "+0000" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    // days from civil (Howard Hinnant)
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// A well-formed code that no one was given.
pub fn random_code(sale_id: i64) -> String {
    flashsale::sale::code::new_code(sale_id, 1).to_string()
}

/// Whether `code` is a well-formed code of sale `sale_id`.
pub fn code_is_well_formed(code: &str, sale_id: i64) -> bool {
    flashsale::sale::code::parse_code(code).is_some_and(|ids| ids.sale_id == sale_id)
}

/// A small xorshift generator: tests need spread, not cryptography.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn seeded() -> Rng {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng::new(
            nanos
                ^ (u64::from(SEQ.fetch_add(1, Ordering::SeqCst)) << 48)
                ^ u64::from(std::process::id()),
        )
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

// ---------------------------------------------------------------------------
// a tiny HTTP/1.1 client
// ---------------------------------------------------------------------------

pub fn build_request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    let has_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_length && (!body.is_empty() || method == "POST" || method == "PUT") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Whether any response was read on this connection.
    used: bool,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            used: false,
        })
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
    }

    /// Whether `e` means "the server had closed this idle keep-alive
    /// connection" (so the request was never processed and may be resent).
    fn stale(&self, e: &io::Error) -> bool {
        self.used
            && self.buf.is_empty()
            && matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            )
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, target, headers, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    pub fn try_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.send(&build_request(method, target, headers, body))?;
        self.read_response()
    }

    pub fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    pub fn post(&mut self, target: &str) -> Response {
        self.request("POST", target, &[], b"")
    }

    pub fn checkout(&mut self, user: i64, item: i64) -> Response {
        self.post(&checkout_path(user, item))
    }

    pub fn purchase(&mut self, code: &str) -> Response {
        self.post(&purchase_path(code))
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        let n = loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn fill_or_eof(&mut self, what: &str) -> io::Result<()> {
        if self.fill()? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed while reading {what} (have {} bytes: {:?})",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
            ));
        }
        Ok(())
    }

    /// Reads one response (Content-Length, chunked, or until close).
    pub fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos;
            }
            if self.buf.len() > 1 << 20 {
                return Err(io::Error::other("response head larger than 1 MiB"));
            }
            self.fill_or_eof("a response head")?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::other(format!("bad status line {status_line:?}")));
        }
        let mut headers = Vec::new();
        for line in lines {
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| io::Error::other(format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut response = Response {
            version,
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            response.body = self.read_chunked()?;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::other(format!("bad Content-Length {len:?}")))?;
            while self.buf.len() < len {
                self.fill_or_eof("a response body")?;
            }
            response.body = self.buf.drain(..len).collect();
        } else if status / 100 == 1 || status == 204 || status == 304 {
        } else {
            while self.fill()? > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        self.used = true;
        Ok(response)
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                self.fill_or_eof("a chunk size")?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // trailers until an empty line
                loop {
                    let end = loop {
                        if let Some(p) = find(&self.buf, b"\r\n") {
                            break p;
                        }
                        self.fill_or_eof("chunk trailers")?;
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill_or_eof("a chunk")?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Whether the server closes the connection within `timeout` without
    /// sending anything more (EOF or reset count as closed).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.set_read_timeout(timeout);
        let mut tmp = [0u8; 1024];
        let closed = match self.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                false
            }
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        };
        self.set_read_timeout(IO_TIMEOUT);
        closed
    }

    /// Bytes received but not yet parsed as a response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub struct Response {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.version, self.status)?;
        for (k, v) in &self.headers {
            write!(f, " | {k}: {v}")?;
        }
        write!(f, " | body {:?}", String::from_utf8_lossy(&self.body))
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the server announced it closes the connection after this response.
    pub fn closes_connection(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        match conn.as_deref() {
            Some(v) if v.contains("close") => true,
            Some(v) if v.contains("keep-alive") => false,
            _ => self.version == "HTTP/1.0",
        }
    }

    pub fn json(&self) -> OwnedValue {
        let mut bytes = self.body.clone();
        simd_json::to_owned_value(&mut bytes)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self}"))
    }

    /// A field of the JSON body; panics (showing the response) when missing.
    pub fn field(&self, key: &str) -> OwnedValue {
        self.json()
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("response lacks field {key:?}: {self}"))
    }

    /// The `error` code of the body, if the body is JSON and has one.
    pub fn error_code(&self) -> Option<String> {
        let mut bytes = self.body.clone();
        let v = simd_json::to_owned_value(&mut bytes).ok()?;
        v.get("error").and_then(|e| e.as_str()).map(str::to_string)
    }

    pub fn has_field(&self, key: &str) -> bool {
        self.json().get(key).is_some()
    }

    pub fn i64(&self, key: &str) -> i64 {
        let v = self.field(key);
        v.as_i64()
            .unwrap_or_else(|| panic!("field {key:?} is not an integer ({v:?}): {self}"))
    }

    pub fn str(&self, key: &str) -> String {
        let v = self.field(key);
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| panic!("field {key:?} is not a string ({v:?}): {self}"))
    }

    /// A JSON array of integers.
    pub fn ids(&self, key: &str) -> Vec<i64> {
        let v = self.field(key);
        let arr = v
            .as_array()
            .unwrap_or_else(|| panic!("field {key:?} is not an array ({v:?}): {self}"));
        arr.iter()
            .map(|x| {
                x.as_i64()
                    .unwrap_or_else(|| panic!("{key:?} holds a non-integer {x:?}: {self}"))
            })
            .collect()
    }

    /// `ids(key)`, sorted.
    pub fn sorted_ids(&self, key: &str) -> Vec<i64> {
        let mut ids = self.ids(key);
        ids.sort_unstable();
        ids
    }

    pub fn is_json(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"))
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status: {self}");
        self
    }

    /// Status, JSON content type, `error` code and a string `message`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status (wanted {status} {code}): {self}"
        );
        assert!(
            self.is_json(),
            "error response is not application/json: {self}"
        );
        assert_eq!(self.str("error"), code, "unexpected error code: {self}");
        assert!(
            self.field("message")
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error response lacks a message: {self}"
        );
        self
    }
}

/// Sorted copy of a slice of ids.
pub fn sorted(ids: &[i64]) -> Vec<i64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}

/// Polls `GET /health` on `addr` until it answers 200. Panics, with the
/// server's log, when `exited` reports that the process is gone or when
/// `limit` passes.
pub fn wait_healthy(
    addr: SocketAddr,
    limit: Duration,
    mut exited: impl FnMut() -> Option<String>,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = exited() {
            panic!("server exited during start-up ({status}); log {}", log());
        }
        let last = match Conn::try_connect(addr)
            .and_then(|mut c| c.try_request("GET", "/health", &[], b""))
        {
            Ok(r) if r.status == 200 => return,
            Ok(r) => format!("{r}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            panic!(
                "server not healthy within {limit:?} (last: {last}); log {}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
