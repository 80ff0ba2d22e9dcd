//! Private Redis and Postgres instances for fault-injection tests.
//!
//! The shared services (127.0.0.1:6379 and :5432) are used by every other
//! test binary, so fault tests never stop them. Each fault test starts its
//! own `redis-server` and its own Postgres cluster on free ports, with data
//! under `<target>/fault-data/<test>-<pid>-<n>`, and can stop, kill and
//! restart them (Redis reloads its AOF). Postgres refuses to run as root, so
//! `initdb` and `pg_ctl` run as the system user `flashsale-pg` (created by
//! `scripts/services.sh`). Everything is stopped and removed on drop, panics
//! included, and every wait is bounded.
//!
//! Postgres can be stopped (`pg_ctl stop -m fast`) or crashed (every process
//! of the cluster SIGKILLed, no shutdown; the next start runs crash recovery).
//!
//! `Rig` bundles one Redis, one Postgres and one `flashsale` process
//! (`Flashsale`), which can be killed (SIGKILL), signalled (SIGTERM/SIGINT)
//! and restarted against the same Redis and Postgres.
//! Logs go to `<target>/test-logs/<test>.{server,redis,pg}.log`.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Conn, Response, Sale, free_port, test_name, wait_until};

/// The Postgres binaries (PostgreSQL 15, as `scripts/services.sh` finds them).
const PG_BIN: &str = "/usr/local/bin";
/// The system user Postgres runs as (tests run as root).
const PG_OS_USER: &str = "flashsale-pg";
/// The Postgres role of the private cluster (its superuser) and its database.
pub const PG_ROLE: &str = "flashsale";
pub const PG_DB: &str = "flashsale";

/// How long a private service may take to come up or go down.
const SERVICE_DEADLINE: Duration = Duration::from_secs(30);
/// How long the flashsale server may take to answer `/health` with 200.
const SERVER_START_DEADLINE: Duration = Duration::from_secs(30);

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}

/// `PR_SET_PDEATHSIG`: the child gets SIGKILL when the thread that spawned
/// it dies, so a test process killed from outside leaves no Redis or
/// flashsale behind (Postgres daemonizes; stale clusters are cleaned up by
/// the next run, see `clean_stale`).
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            prctl(1, SIGKILL as u64, 0, 0, 0);
            Ok(())
        });
    }
}

/// Spawns `cmd` with stdout and stderr appended to `log`, no stdin, and
/// killed with the test process.
pub fn spawn_logged(cmd: &mut Command, log: File) -> std::io::Result<Child> {
    die_with_parent(cmd);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// Whether a process with this pid exists (and is no zombie).
fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// The pids whose parent is `parent` (from /proc/<pid>/stat).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // After "(comm) ": state, then the parent's pid.
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// Removes the directories of earlier test processes that are gone (killed
/// before their drops ran), stopping any Postgres still running there.
fn clean_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let data = entry.path().join("pg").join("data");
        if data.join("postmaster.pid").exists() {
            let _ = run_bounded(
                Command::new("runuser")
                    .args(["-u", PG_OS_USER, "--", &format!("{PG_BIN}/pg_ctl")])
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "-t", "20", "stop"])
                    .current_dir(entry.path().join("pg")),
                Duration::from_secs(30),
            );
        }
        eprintln!("[services] removing stale {}", entry.path().display());
        let _ = fs::remove_dir_all(entry.path());
    }
}

pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

/// Sends `sig` to `pid`; panics when the process does not exist.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { kill(pid as i32, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return None,
            Err(e) => panic!("wait for child {}: {e}", child.id()),
        }
    }
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = match wait_exit(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

fn keep_data() -> bool {
    std::env::var("FLASHSALE_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------------------
// the test's directory
// ---------------------------------------------------------------------------

/// `<target>/fault-data/<test>-<pid>-<n>`, removed on drop.
pub struct FaultDir {
    pub path: PathBuf,
    pub name: String,
}

impl FaultDir {
    pub fn new() -> FaultDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = test_name();
        let root = super::target_dir().join("fault-data");
        static CLEANED: std::sync::Once = std::sync::Once::new();
        CLEANED.call_once(|| clean_stale(&root));
        let path = root.join(format!(
            "{}-{}-{}",
            std::thread::current()
                .name()
                .unwrap_or("main")
                .rsplit("::")
                .next()
                .unwrap_or("t"),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        // The Postgres user must reach its data directory below this one.
        make_traversable(&path);
        FaultDir { path, name }
    }

    pub fn log_path(&self, what: &str) -> PathBuf {
        let dir = super::target_dir().join("test-logs");
        fs::create_dir_all(&dir).expect("create target/test-logs");
        // The Postgres user writes its log there.
        make_traversable(&dir);
        dir.join(format!("{}.{what}.log", self.name))
    }
}

impl Drop for FaultDir {
    fn drop(&mut self) {
        if keep_data() {
            eprintln!("[services] kept {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("[services] could not remove {}: {e}", self.path.display());
        }
    }
}

/// chmod o+x on `path` and every ancestor that lacks it.
fn make_traversable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut cur = PathBuf::new();
    for part in path.components() {
        cur.push(part);
        if let Ok(meta) = fs::metadata(&cur) {
            let mode = meta.permissions().mode();
            if meta.is_dir() && mode & 0o001 == 0 {
                let _ = fs::set_permissions(&cur, fs::Permissions::from_mode(mode | 0o001));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// A private `redis-server` with AOF (`appendfsync everysec`), in the foreground.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    /// The master's port, for a replica.
    replica_of: Option<u16>,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start(dir: &FaultDir) -> PrivateRedis {
        Self::start_named(dir, "redis", None)
    }

    /// A replica of `master` (`--replicaof`), in its own directory; returns
    /// once it is in sync with the master.
    pub fn start_replica(dir: &FaultDir, master: &PrivateRedis) -> PrivateRedis {
        let replica = Self::start_named(dir, "redis-replica", Some(master.port));
        let mut con = replica.connect();
        let synced = wait_until(SERVICE_DEADLINE, || {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut con)
                .is_ok_and(|info| info.contains("master_link_status:up"))
        });
        assert!(
            synced,
            "replica on port {} did not sync with its master within {SERVICE_DEADLINE:?}",
            replica.port
        );
        replica
    }

    fn start_named(dir: &FaultDir, name: &str, replica_of: Option<u16>) -> PrivateRedis {
        let data = dir.path.join(name);
        fs::create_dir_all(&data).expect("create redis dir");
        let mut redis = PrivateRedis {
            port: free_port(),
            dir: data,
            log_path: dir.log_path(name),
            replica_of,
            child: None,
        };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is not running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open redis log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "everysec"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(["--databases", "4"]);
        if let Some(master) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = spawn_logged(&mut cmd, log)
            .unwrap_or_else(|e| panic!("spawn redis-server (is it installed?): {e}"));
        self.child = Some(child);
        let ok = wait_until(SERVICE_DEADLINE, || self.ping());
        assert!(
            ok,
            "private redis on port {} did not answer PING (loaded) within {SERVICE_DEADLINE:?}; log {}:\n{}",
            self.port,
            self.log_path.display(),
            super::tail(&self.log_path, 20)
        );
    }

    /// PING answered with PONG (not LOADING).
    pub fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return false;
        };
        let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
        redis::cmd("PING")
            .query::<String>(&mut con)
            .is_ok_and(|p| p == "PONG")
    }

    /// A connection to db 0.
    pub fn connect(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("redis url");
        let con = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to private redis {}: {e}", self.url()));
        con.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set_read_timeout");
        con
    }

    /// Clean stop: SHUTDOWN (the AOF is flushed), then waits for the exit.
    pub fn shutdown(&mut self) {
        let mut child = self.child.take().expect("redis is not running");
        let out = run_bounded(
            Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown"]),
            Duration::from_secs(10),
        );
        let status = wait_exit(&mut child, SERVICE_DEADLINE);
        assert!(
            status.is_some(),
            "redis did not exit after SHUTDOWN ({}): log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            super::tail(&self.log_path, 20)
        );
    }

    /// Crash: SIGKILL.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("redis is not running");
        let _ = child.kill();
        let _ = wait_exit(&mut child, SERVICE_DEADLINE);
    }

    /// Starts again on the same port and directory (the AOF is reloaded).
    pub fn restart(&mut self) {
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGCONT first in case a test left it stopped.
            let _ = unsafe { kill(child.id() as i32, SIGCONT) };
            let _ = child.kill();
            let _ = wait_exit(&mut child, Duration::from_secs(10));
        }
    }
}

// ---------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------

/// A private Postgres cluster owned by `flashsale-pg`, role `flashsale`
/// (superuser), database `flashsale`.
pub struct PrivatePostgres {
    pub port: u16,
    pub data: PathBuf,
    pub log_path: PathBuf,
    /// Where pg_ctl runs (readable by the Postgres user).
    home: PathBuf,
    running: bool,
}

impl PrivatePostgres {
    pub fn start(dir: &FaultDir) -> PrivatePostgres {
        let home = dir.path.join("pg");
        fs::create_dir_all(&home).expect("create pg dir");
        chown_pg(&home);
        let log_path = dir.log_path("pg");
        // The server log is written by the Postgres user.
        File::create(&log_path).expect("create pg log");
        chown_pg(&log_path);
        let mut pg = PrivatePostgres {
            port: free_port(),
            data: home.join("data"),
            log_path,
            home,
            running: false,
        };
        let out = run_bounded(
            pg.as_pg(&format!("{PG_BIN}/initdb"))
                .arg("-D")
                .arg(&pg.data)
                .args(["-A", "trust", "-U", PG_ROLE, "--no-sync"])
                .args(["--encoding=UTF8", "--locale=C"]),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "initdb failed ({}); tests must run as root with the user {PG_OS_USER} \
             (scripts/services.sh creates it):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_again();
        let mut admin = pg.client_on("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {PG_DB}"))
            .expect("create database");
        pg
    }

    fn as_pg(&self, program: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", PG_OS_USER, "--", program])
            .current_dir(&self.home);
        cmd
    }

    /// The server's URL on database `flashsale`.
    pub fn url(&self) -> String {
        format!("postgres://{PG_ROLE}@127.0.0.1:{}/{PG_DB}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    pub fn client(&self) -> postgres::Client {
        self.client_on(PG_DB)
    }

    fn client_on(&self, db: &str) -> postgres::Client {
        let url = format!(
            "postgres://{PG_ROLE}@127.0.0.1:{}/{db}?connect_timeout=5",
            self.port
        );
        postgres::Client::connect(&url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to private postgres {url}: {e}"))
    }

    /// Starts (or starts again) the cluster and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(!self.running, "postgres is already running");
        // No unix socket: TCP on 127.0.0.1 only (socket paths are length-limited).
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=50",
            self.port
        );
        let out = run_bounded(
            self.as_pg(&format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log_path)
                .args(["-o", &opts, "-w", "-t", "30", "start"]),
            Duration::from_secs(40),
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed ({}): {}{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            super::tail(&self.log_path, 20)
        );
        self.running = true;
        let port = self.port;
        let ok = wait_until(SERVICE_DEADLINE, || {
            postgres::Client::connect(
                &format!("postgres://{PG_ROLE}@127.0.0.1:{port}/postgres?connect_timeout=2"),
                postgres::NoTls,
            )
            .is_ok()
        });
        assert!(
            ok,
            "private postgres on port {port} does not accept connections"
        );
    }

    /// `pg_ctl stop -m fast`: connections are terminated, the port closes.
    pub fn stop(&mut self) {
        assert!(self.running, "postgres is not running");
        let out = self.pg_ctl_stop("fast");
        assert!(
            out.status.success(),
            "pg_ctl stop failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Crash: the postmaster and every process it started are frozen
    /// (SIGSTOP, so that none reacts to another's death: no shutdown, no
    /// last WAL write), then SIGKILLed. What only Postgres's memory held (an
    /// asynchronous commit's WAL not yet written) is gone; `start_again`
    /// runs crash recovery.
    pub fn crash(&mut self) {
        assert!(self.running, "postgres is not running");
        let pid_file = self.data.join("postmaster.pid");
        let postmaster: u32 = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no postmaster pid in {}", pid_file.display()));
        signal(postmaster, SIGSTOP);
        // Stopped, the postmaster starts no new process.
        let children = children_of(postmaster);
        for &pid in &children {
            // SAFETY: kill(2) has no memory-safety preconditions; a child that
            // exited meanwhile is no error here.
            let _ = unsafe { kill(pid as i32, SIGSTOP) };
        }
        for &pid in children.iter().chain([&postmaster]) {
            // SAFETY: as above.
            let _ = unsafe { kill(pid as i32, SIGKILL) };
        }
        self.running = false;
        let dead = wait_until(SERVICE_DEADLINE, || {
            !pid_alive(postmaster) && children.iter().all(|&pid| !pid_alive(pid))
        });
        assert!(
            dead,
            "postgres processes {postmaster} {children:?} survived SIGKILL"
        );
        // A new postmaster refuses to start while the pid in postmaster.pid
        // exists, zombie included: wait for init to reap it, and if it does
        // not, remove the stale file as an operator would.
        let reaped = wait_until(Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{postmaster}")).exists()
        });
        if !reaped {
            eprintln!("[services] postmaster {postmaster} not reaped; removing its postmaster.pid");
            let _ = fs::remove_file(&pid_file);
        }
        eprintln!(
            "[services] crashed postgres: SIGKILL postmaster {postmaster} and {} children",
            children.len()
        );
    }

    fn pg_ctl_stop(&self, mode: &str) -> Output {
        run_bounded(
            self.as_pg(&format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", mode, "-w", "-t", "30", "stop"]),
            Duration::from_secs(40),
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pg_ctl_stop("immediate").status.success()
        }));
        if !matches!(stopped, Ok(true)) {
            // Last resort: the postmaster's pid from its pid file.
            let pid = fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            if let Some(pid) = pid {
                eprintln!("[services] pg_ctl stop failed; SIGKILL postmaster {pid}");
                let _ = unsafe { kill(pid, SIGKILL) };
            }
        }
    }
}

fn chown_pg(path: &Path) {
    let out = run_bounded(
        Command::new("chown")
            .arg(format!("{PG_OS_USER}:"))
            .arg(path),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "chown {PG_OS_USER} {}: {} (does the user exist? scripts/services.sh creates it)",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// the flashsale server on private services
// ---------------------------------------------------------------------------

/// How to run the server: the config env on top of the service URLs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub items: u32,
    pub limit: u32,
    pub env: Vec<(String, String)>,
}

impl ServerConfig {
    pub fn new(items: u32, limit: u32) -> ServerConfig {
        ServerConfig {
            items,
            limit,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> ServerConfig {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

/// One `flashsale` process on the rig's Redis and Postgres.
pub struct Flashsale {
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Flashsale {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is not running").id()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// One request on a fresh connection.
    pub fn request(&self, method: &str, target: &str) -> Response {
        self.connect().request(method, target, &[], b"")
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target)
    }

    pub fn active_sale(&self) -> Sale {
        let r = self.get("/sales/active");
        r.assert_status(200);
        Sale::from_response(&r)
    }

    /// `GET /metrics`, one sample by its full name (labels included).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics").text();
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
    }

    /// SIGKILL, and reaps the process.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server is not running");
        signal(child.id(), SIGKILL);
        let status = wait_exit(&mut child, Duration::from_secs(10));
        assert!(status.is_some(), "server survived SIGKILL");
    }

    /// Sends `sig` and waits up to `timeout` for the exit; None when it did not exit.
    pub fn stop_with(&mut self, sig: i32, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server is not running");
        signal(child.id(), sig);
        let status = wait_exit(child, timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        super::tail(&self.log_path, lines)
    }
}

impl Drop for Flashsale {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_exit(&mut child, Duration::from_secs(10));
        }
    }
}

/// A private Redis, a private Postgres and (at most) one flashsale server on
/// them. Drop order: server, Postgres, Redis, directory.
pub struct Rig {
    pub server: Option<Flashsale>,
    pub pg: PrivatePostgres,
    pub redis: PrivateRedis,
    pub config: ServerConfig,
    pub dir: FaultDir,
    starts: u32,
    last_addr: Option<SocketAddr>,
}

impl Rig {
    /// Starts Redis and Postgres (not the server).
    pub fn services(config: ServerConfig) -> Rig {
        let dir = FaultDir::new();
        let redis = PrivateRedis::start(&dir);
        let pg = PrivatePostgres::start(&dir);
        Rig {
            server: None,
            pg,
            redis,
            config,
            dir,
            starts: 0,
            last_addr: None,
        }
    }

    /// Services plus a healthy server.
    pub fn start(config: ServerConfig) -> Rig {
        let mut rig = Rig::services(config);
        rig.start_server();
        rig
    }

    pub fn server(&self) -> &Flashsale {
        self.server.as_ref().expect("the server is not running")
    }

    pub fn server_mut(&mut self) -> &mut Flashsale {
        self.server.as_mut().expect("the server is not running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.server().addr
    }

    /// Spawns the server (on the previous address when restarting) without
    /// waiting for it to be healthy.
    pub fn spawn_server(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        let addr = match self.last_addr {
            Some(a) => a,
            None => format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        };
        self.last_addr = Some(addr);
        let log_path = self.dir.log_path(&format!("server{}", self.starts));
        self.starts += 1;
        let log = File::create(&log_path).expect("create server log");
        let level = std::env::var("FLASHSALE_TEST_LOG").unwrap_or_else(|_| "info".to_string());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
        cmd.env("FLASHSALE_LISTEN", addr.to_string())
            .env("FLASHSALE_CORES", "2")
            .env("REDIS_URL", self.redis.url())
            .env("DATABASE_URL", self.pg.url())
            .env("SALE_PERIOD_SECS", "3600")
            .env("SALE_ITEMS", self.config.items.to_string())
            .env("USER_LIMIT", self.config.limit.to_string())
            .env("FLASHSALE_LOG", level);
        for (k, v) in &self.config.env {
            cmd.env(k, v);
        }
        let child = spawn_logged(&mut cmd, log).unwrap_or_else(|e| panic!("spawn flashsale: {e}"));
        self.server = Some(Flashsale {
            addr,
            log_path,
            child: Some(child),
        });
    }

    /// Spawns the server and waits until `/health` answers 200.
    pub fn start_server(&mut self) {
        self.spawn_server();
        let server = self.server.as_mut().expect("spawned");
        let (addr, log_path) = (server.addr, server.log_path.clone());
        let log = || format!("{}:\n{}", log_path.display(), super::tail(&log_path, 40));
        let mut exited = || (!server.is_running()).then(|| "exited".to_string());
        super::wait_healthy(addr, SERVER_START_DEADLINE, &mut exited, log);
    }

    /// Runs the consistency checker on this rig's Redis and Postgres and
    /// fails the test when it finds differences.
    #[track_caller]
    pub fn assert_consistent(&self, sale_id: i64) {
        super::assert_consistent(&self.redis.url(), &self.pg.url(), sale_id);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(s) = &self.server {
                eprintln!(
                    "[services] server log {}:\n{}\n----",
                    s.log_path.display(),
                    s.log_tail(30)
                );
            }
            eprintln!(
                "[services] logs: {} {} (server logs: {}.server*.log)",
                self.redis.log_path.display(),
                self.pg.log_path.display(),
                self.dir.name
            );
        }
        // Fields drop in order: server, pg, redis, config, dir.
    }
}
