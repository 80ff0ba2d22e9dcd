//! Redis Cluster for the tests.
//!
//! - `ClusterRig`: a private cluster of 6 `redis-server` nodes (3 masters with
//!   one replica each) on free ports, with data under
//!   `<target>/fault-data/<test>-<pid>-<n>`, for tests that kill, restart or
//!   reshard: `kill9` a node by its pid, `restart` it on its data (it comes
//!   back as a replica once its replica was promoted), `wait_promoted`, and
//!   `migrate_slot_with`, a slot migration done step by step the way
//!   `redis-cli --cluster reshard` does it, with a hook between steps. Every
//!   node is killed on drop, panics included, and every wait is bounded.
//! - The shared local cluster (`scripts/services.sh cluster-start`) that
//!   servers on a key prefix of their own share: `shared_cluster_url`,
//!   `alloc_prefix`, `delete_prefixed`.
//! - `RedisConn`: a blocking connection to a single node or to a cluster,
//!   detected from the server (`INFO cluster`) like the service does, so that
//!   a test's `cmd.query(&mut con)` runs on either.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use redis::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterConnection};

use super::services::{FaultDir, SIGKILL, run_bounded, signal, wait_exit};
use super::{free_cluster_port, tail, wait_until};

/// The shared local cluster's seed list when `TEST_REDIS_CLUSTER_URL` is unset
/// (the ports `scripts/services.sh cluster-start` uses by default).
const DEFAULT_SHARED_CLUSTER_URL: &str = "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003,redis://127.0.0.1:7004,redis://127.0.0.1:7005";

/// Nodes and masters of a `ClusterRig`.
const NODES: usize = 6;
const MASTERS: usize = 3;
/// A master unreachable this long is failed over (so a failover takes seconds).
pub const NODE_TIMEOUT_MS: u64 = 2000;

/// How long forming the cluster, a node's start and a failover may take.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// connections
// ---------------------------------------------------------------------------

/// The shared local cluster's seed list: `TEST_REDIS_CLUSTER_URL`, or its
/// default ports 7000-7005.
pub fn shared_cluster_url() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_SHARED_CLUSTER_URL.to_string())
}

/// The URLs of a comma-separated seed list.
pub fn seeds(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn node_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// A plain connection to one node (or one database of a single node).
pub fn plain_connection(url: &str) -> redis::RedisResult<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(con)
}

/// A cluster-aware connection on a seed list: follows `MOVED` and `ASK`,
/// retries `TRYAGAIN` and `CLUSTERDOWN`, refreshes its slot map.
pub fn cluster_connection(seed_url: &str) -> ClusterConnection {
    ClusterClient::builder(seeds(seed_url))
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(10))
        .build()
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| {
            panic!("cannot connect to the Redis Cluster at {seed_url}: {e} (is it up? scripts/services.sh cluster-start)")
        })
}

/// Whether the first seed of `url` that answers is a Redis Cluster node.
pub fn is_cluster(url: &str) -> bool {
    for seed in seeds(url) {
        let Ok(mut con) = plain_connection(&seed) else {
            continue;
        };
        if let Ok(info) = redis::cmd("INFO").arg("cluster").query::<String>(&mut con) {
            return info.contains("cluster_enabled:1");
        }
    }
    panic!("no seed of {url} answers INFO (are the services up?)");
}

/// A blocking connection to a single node or to a cluster; `cmd.query(&mut con)`
/// works on both (on a cluster each command goes to the node of its keys).
///
/// The redis crate's blocking cluster connection does not refresh its slot
/// map when a node refuses connections: after a master's death it keeps
/// reconnecting to the dead address. So when a node refuses, this one
/// connects again from the seeds (which reads the map anew) and resends, for
/// up to `REFUSED_RETRY`: a refused command was never sent, so resending it
/// is safe.
pub enum RedisConn {
    Single(redis::Connection),
    Cluster {
        seed_url: String,
        con: Box<ClusterConnection>,
    },
}

/// How long a cluster `RedisConn` keeps reconnecting while a node refuses.
const REFUSED_RETRY: Duration = Duration::from_secs(30);

impl RedisConn {
    /// Connects to `url`: one node (with its database number), or a seed list
    /// of a cluster, as the server detects it.
    pub fn open(url: &str) -> RedisConn {
        if is_cluster(url) {
            RedisConn::cluster(url)
        } else {
            RedisConn::Single(
                plain_connection(url)
                    .unwrap_or_else(|e| panic!("cannot connect to Redis at {url}: {e}")),
            )
        }
    }

    /// A cluster connection on the seed list `seed_url`.
    pub fn cluster(seed_url: &str) -> RedisConn {
        RedisConn::Cluster {
            seed_url: seed_url.to_string(),
            con: Box::new(cluster_connection(seed_url)),
        }
    }

    fn run<T>(
        &mut self,
        single: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
        on_cluster: impl Fn(&mut ClusterConnection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let (seed_url, con) = match self {
            RedisConn::Single(c) => return single(c),
            RedisConn::Cluster { seed_url, con } => (seed_url, con),
        };
        let deadline = std::time::Instant::now() + REFUSED_RETRY;
        loop {
            match on_cluster(con) {
                Err(e) if e.is_connection_refusal() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                    let fresh = ClusterClient::builder(seeds(seed_url))
                        .connection_timeout(Duration::from_secs(2))
                        .response_timeout(Duration::from_secs(10))
                        .build()
                        .and_then(|c| c.get_connection());
                    if let Ok(fresh) = fresh {
                        **con = fresh;
                    }
                }
                other => return other,
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        self.run(|c| c.req_packed_command(cmd), |c| c.req_packed_command(cmd))
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        self.run(
            |c| c.req_packed_commands(cmd, offset, count),
            |c| c.req_packed_commands(cmd, offset, count),
        )
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        self.run(|c| c.req_command(cmd), |c| c.req_command(cmd))
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            RedisConn::Single(c) => c.supports_pipelining(),
            RedisConn::Cluster { con, .. } => con.supports_pipelining(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster { con, .. } => con.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            RedisConn::Single(c) => c.check_connection(),
            RedisConn::Cluster { con, .. } => con.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            RedisConn::Single(c) => c.is_open(),
            RedisConn::Cluster { con, .. } => con.is_open(),
        }
    }
}

// ---------------------------------------------------------------------------
// the cluster's view of itself (CLUSTER NODES)
// ---------------------------------------------------------------------------

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct NodeLine {
    id: String,
    port: u16,
    myself: bool,
    master: bool,
    failed: bool,
    /// The master's id, for a replica.
    master_id: Option<String>,
    config_epoch: u64,
    /// Slot ranges served (importing/migrating markers left out).
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }
}

fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1].split('@').next()?.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_string(),
                port,
                myself: flags.contains(&"myself"),
                master: flags.contains(&"master"),
                failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                config_epoch: f[6].parse().unwrap_or(0),
                slots,
            })
        })
        .collect()
}

fn cluster_nodes_of(con: &mut redis::Connection) -> redis::RedisResult<Vec<NodeLine>> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(con)?;
    Ok(parse_cluster_nodes(&text))
}

/// A field of `INFO <section>`, or of `CLUSTER INFO` for section "cluster".
fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> Option<String> {
    let info: String = if section == "cluster" {
        redis::cmd("CLUSTER").arg("INFO").query(con).ok()?
    } else {
        redis::cmd("INFO").arg(section).query(con).ok()?
    };
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// The masters of the cluster at `seed_url` (as the first seed that answers
/// sees them), as `redis://host:port` URLs.
pub fn master_urls(seed_url: &str) -> Vec<String> {
    for seed in seeds(seed_url) {
        let Ok(mut con) = plain_connection(&seed) else {
            continue;
        };
        let Ok(text) = redis::cmd("CLUSTER").arg("NODES").query::<String>(&mut con) else {
            continue;
        };
        let host = seed
            .split_once("://")
            .map_or(seed.as_str(), |(_, rest)| rest)
            .rsplit_once(':')
            .map_or("127.0.0.1", |(h, _)| h)
            .to_string();
        return parse_cluster_nodes(&text)
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| format!("redis://{host}:{}", n.port))
            .collect();
    }
    panic!("no seed of {seed_url} answers CLUSTER NODES");
}

// ---------------------------------------------------------------------------
// the shared cluster: a key prefix per test server
// ---------------------------------------------------------------------------

/// A key prefix no other test server on the cluster at `seed_url` has had:
/// `test<n>:`, from INCR of a counter on the cluster.
pub fn alloc_prefix(seed_url: &str) -> String {
    let mut con = cluster_connection(seed_url);
    let n: i64 = redis::cmd("INCR")
        .arg("flashsale:test:next-prefix")
        .query(&mut con)
        .expect("INCR flashsale:test:next-prefix");
    let prefix = format!("test{n}:");
    delete_prefixed(seed_url, &prefix);
    prefix
}

/// Deletes every key that starts with `prefix` on every master of the cluster.
pub fn delete_prefixed(seed_url: &str, prefix: &str) {
    assert!(
        prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-' || b == b'_'),
        "prefix {prefix:?} has glob characters"
    );
    for master in master_urls(seed_url) {
        let mut con =
            plain_connection(&master).unwrap_or_else(|e| panic!("connect to master {master}: {e}"));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("SCAN on {master}: {e}"));
            // One key per UNLINK: keys of several slots may not share a command.
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("UNLINK").arg(key).ignore();
            }
            if !keys.is_empty() {
                pipe.query::<()>(&mut con)
                    .unwrap_or_else(|e| panic!("UNLINK on {master}: {e}"));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

// ---------------------------------------------------------------------------
// the private cluster
// ---------------------------------------------------------------------------

/// A node of a `ClusterRig`, as the cluster saw it when asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub port: u16,
    /// The cluster node id (kept across restarts: it is in the node's nodes.conf).
    pub id: String,
}

impl Node {
    pub fn url(&self) -> String {
        node_url(self.port)
    }
}

/// One `redis-server --cluster-enabled yes` process of the rig.
struct RigNode {
    port: u16,
    dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl RigNode {
    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.port
        );
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--pidfile")
            .arg(self.dir.join("redis.pid"))
            .args(["--daemonize", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "everysec"])
            .args(["--save", ""])
            // A replica's first sync starts at once, not after 5 s.
            .args(["--repl-diskless-sync-delay", "0"]);
        let child = super::services::spawn_logged(&mut cmd, log)
            .unwrap_or_else(|e| panic!("spawn redis-server (is it installed?): {e}"));
        self.child = Some(child);
        let port = self.port;
        let up = wait_until(DEADLINE, || {
            plain_connection(&node_url(port)).is_ok_and(|mut con| {
                redis::cmd("PING")
                    .query::<String>(&mut con)
                    .is_ok_and(|p| p == "PONG")
            })
        });
        assert!(
            up,
            "cluster node on port {port} did not answer PING (loaded) within {DEADLINE:?}; log {}:\n{}",
            self.log_path.display(),
            tail(&self.log_path, 20)
        );
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        plain_connection(&node_url(self.port))
    }

    /// This node's own line of its `CLUSTER NODES`, when it is running and answers.
    fn own_line(&self) -> Option<NodeLine> {
        self.child.as_ref()?;
        let mut con = self.connect().ok()?;
        cluster_nodes_of(&mut con)
            .ok()?
            .into_iter()
            .find(|n| n.myself)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), SIGKILL);
            let status = wait_exit(&mut child, Duration::from_secs(10));
            assert!(status.is_some(), "node {} survived SIGKILL", self.port);
        }
    }
}

impl Drop for RigNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_exit(&mut child, Duration::from_secs(10));
        }
    }
}

/// Where a slot migration is (passed to the hook between steps).
#[derive(Clone, Debug)]
pub struct MigrationStep {
    pub slot: u16,
    pub from: Node,
    pub to: Node,
    /// Keys moved so far (0: the slot was just marked migrating/importing).
    pub keys_moved: usize,
}

/// A private Redis Cluster: 3 masters with one replica each.
pub struct ClusterRig {
    nodes: Vec<RigNode>,
    pub dir: FaultDir,
}

impl ClusterRig {
    /// Starts 6 nodes, forms the cluster with `redis-cli --cluster create
    /// --cluster-replicas 1` and waits until it is healthy.
    pub fn start() -> ClusterRig {
        let dir = FaultDir::new();
        let mut nodes = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            let port = free_cluster_port();
            let data = dir.path.join(format!("node-{port}"));
            fs::create_dir_all(&data).expect("create node dir");
            nodes.push(RigNode {
                port,
                dir: data,
                log_path: dir.log_path(&format!("node-{port}")),
                child: None,
            });
        }
        let mut rig = ClusterRig { nodes, dir };
        for node in &mut rig.nodes {
            node.spawn();
        }
        let addrs: Vec<String> = rig
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = run_bounded(
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"]),
            DEADLINE,
        );
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        rig.wait_healthy();
        rig
    }

    /// Every node's URL, comma-separated: the server's `REDIS_URL`.
    pub fn seed_url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| node_url(n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster-aware connection that follows failovers and migrations.
    pub fn connection(&self) -> RedisConn {
        RedisConn::cluster(&self.seed_url())
    }

    /// A plain connection to one node.
    pub fn node_connection(&self, node: &Node) -> redis::Connection {
        plain_connection(&node.url())
            .unwrap_or_else(|e| panic!("connect to node {}: {e}", node.port))
    }

    fn node(&self, port: u16) -> &RigNode {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port} in this rig"))
    }

    fn node_mut(&mut self, port: u16) -> &mut RigNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port} in this rig"))
    }

    /// The pid of a node's process, when it runs.
    pub fn pid(&self, node: &Node) -> Option<u32> {
        self.node(node.port).pid()
    }

    /// How many keys of `slot` `node` holds (`CLUSTER COUNTKEYSINSLOT`).
    pub fn keys_in_slot(&self, node: &Node, slot: u16) -> i64 {
        redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query(&mut self.node_connection(node))
            .expect("COUNTKEYSINSLOT")
    }

    /// The slot of a key (`CLUSTER KEYSLOT` on a running node).
    pub fn keyslot(&self, key: &str) -> u16 {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            if let Ok(mut con) = n.connect()
                && let Ok(slot) = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query(&mut con)
            {
                return slot;
            }
        }
        panic!("no node answers CLUSTER KEYSLOT");
    }

    /// The slot of every key of sale `sale_id` (its hash tag `{sale:S}`).
    pub fn sale_slot(&self, sale_id: i64) -> u16 {
        self.keyslot(&format!("{{sale:{sale_id}}}"))
    }

    /// Each running node's own view of itself.
    fn own_lines(&self) -> Vec<NodeLine> {
        self.nodes.iter().filter_map(RigNode::own_line).collect()
    }

    /// Every running node.
    pub fn nodes(&self) -> Vec<Node> {
        self.own_lines()
            .into_iter()
            .map(|l| Node {
                port: l.port,
                id: l.id,
            })
            .collect()
    }

    /// The running master that serves `slot` (by its own account; of two
    /// claims, the newer config epoch), if any.
    pub fn try_master_of_slot(&self, slot: u16) -> Option<Node> {
        self.own_lines()
            .into_iter()
            .filter(|l| l.master && l.serves(slot))
            .max_by_key(|l| l.config_epoch)
            .map(|l| Node {
                port: l.port,
                id: l.id,
            })
    }

    pub fn master_of_slot(&self, slot: u16) -> Node {
        self.try_master_of_slot(slot)
            .unwrap_or_else(|| panic!("no running master serves slot {slot}"))
    }

    /// The running masters.
    pub fn masters(&self) -> Vec<Node> {
        self.own_lines()
            .into_iter()
            .filter(|l| l.master && !l.slots.is_empty())
            .map(|l| Node {
                port: l.port,
                id: l.id,
            })
            .collect()
    }

    /// A master other than `master`.
    pub fn another_master(&self, master: &Node) -> Node {
        self.masters()
            .into_iter()
            .find(|m| m != master)
            .expect("another master")
    }

    /// The running replica of `master`.
    pub fn replica_of(&self, master: &Node) -> Node {
        self.own_lines()
            .into_iter()
            .find(|l| !l.master && l.master_id.as_deref() == Some(master.id.as_str()))
            .map(|l| Node {
                port: l.port,
                id: l.id,
            })
            .unwrap_or_else(|| panic!("master {} has no running replica", master.port))
    }

    /// SIGKILL of the node's process: no shutdown, no last AOF write.
    pub fn kill9(&mut self, node: &Node) {
        self.node_mut(node.port).kill9();
        eprintln!("[cluster] kill -9 node {} ({})", node.port, node.id);
    }

    /// Starts a killed node again on its data (its nodes.conf keeps its id);
    /// returns once it answers PING. A master whose replica was promoted
    /// meanwhile comes back as that replica's replica.
    pub fn restart(&mut self, node: &Node) {
        self.node_mut(node.port).spawn();
        eprintln!("[cluster] restarted node {} ({})", node.port, node.id);
    }

    /// Waits until a master other than `old` serves `slot` and says the
    /// cluster is ok; returns it.
    pub fn wait_promoted(&self, slot: u16, old: &Node) -> Node {
        let mut promoted = None;
        let ok = wait_until(DEADLINE, || {
            promoted = self.try_master_of_slot(slot).filter(|m| {
                m.id != old.id
                    && plain_connection(&m.url()).is_ok_and(|mut con| {
                        info_field(&mut con, "cluster", "cluster_state").as_deref() == Some("ok")
                    })
            });
            promoted.is_some()
        });
        assert!(
            ok,
            "no replica took over slot {slot} from {} within {DEADLINE:?}",
            old.port
        );
        let m = promoted.expect("found above");
        eprintln!(
            "[cluster] slot {slot}: node {} took over from {}",
            m.port, old.port
        );
        m
    }

    /// Why the cluster is not healthy yet; None when every node runs, says
    /// `cluster_state:ok`, knows every node and sees every slot served, and
    /// each of the 3 masters has a replica whose link is up.
    fn problem(&self) -> Option<String> {
        let mut masters = 0;
        let mut replicas = 0;
        for n in &self.nodes {
            if n.child.is_none() {
                return Some(format!("node {} is not running", n.port));
            }
            let Ok(mut con) = n.connect() else {
                return Some(format!("node {} does not answer", n.port));
            };
            let field = |con: &mut redis::Connection, section, name| {
                info_field(con, section, name).unwrap_or_default()
            };
            let state = field(&mut con, "cluster", "cluster_state");
            if state != "ok" {
                return Some(format!("node {} says cluster_state:{state}", n.port));
            }
            let known = field(&mut con, "cluster", "cluster_known_nodes");
            if known != NODES.to_string() {
                return Some(format!("node {} knows {known} nodes", n.port));
            }
            let slots_ok = field(&mut con, "cluster", "cluster_slots_ok");
            if slots_ok != "16384" {
                return Some(format!("node {} sees {slots_ok} slots ok", n.port));
            }
            match field(&mut con, "replication", "role").as_str() {
                "master" => {
                    let line = n.own_line();
                    if line.is_none_or(|l| l.slots.is_empty()) {
                        return Some(format!("master {} serves no slot", n.port));
                    }
                    let replicas: u32 = field(&mut con, "replication", "connected_slaves")
                        .parse()
                        .unwrap_or(0);
                    if replicas < 1 {
                        return Some(format!("master {} has no replica attached", n.port));
                    }
                    masters += 1;
                }
                _ => {
                    let link = field(&mut con, "replication", "master_link_status");
                    if link != "up" {
                        return Some(format!("replica {} has its link {link}", n.port));
                    }
                    replicas += 1;
                }
            }
        }
        (masters != MASTERS || replicas != NODES - MASTERS)
            .then(|| format!("{masters} masters and {replicas} replicas"))
    }

    /// Waits until every node runs and the cluster is ok with every replica
    /// attached (after forming it, or after a restart).
    pub fn wait_healthy(&self) {
        let mut last = None;
        let ok = wait_until(DEADLINE, || {
            last = self.problem();
            last.is_none()
        });
        assert!(
            ok,
            "the cluster is not healthy within {DEADLINE:?}: {}",
            last.unwrap_or_default()
        );
    }

    /// Moves `slot` with its keys to the master `to`, without a hook.
    pub fn migrate_slot(&self, slot: u16, to: &Node) {
        self.migrate_slot_with(slot, to, 10, |_| {});
    }

    /// Moves `slot` with its keys to the master `to`, the way
    /// `redis-cli --cluster reshard` does: `CLUSTER SETSLOT IMPORTING` on the
    /// target, `MIGRATING` on the source, `MIGRATE ... KEYS` of at most
    /// `keys_per_step` keys at a time, then `SETSLOT NODE` on the target, the
    /// source and every other master. `between` runs after the slot is
    /// marked and after each step (clients meanwhile get `ASK` and
    /// `TRYAGAIN`); returns once every running node sees `to` serve the slot.
    pub fn migrate_slot_with(
        &self,
        slot: u16,
        to: &Node,
        keys_per_step: usize,
        mut between: impl FnMut(&MigrationStep),
    ) {
        let from = self.master_of_slot(slot);
        assert_ne!(from, *to, "slot {slot} is already on node {}", to.port);
        let mut src = self.node_connection(&from);
        let mut dst = self.node_connection(to);
        let setslot = |con: &mut redis::Connection, state: &str, id: &str, on: u16| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .query::<()>(con)
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {state} {id} on {on}: {e}"));
        };
        setslot(&mut dst, "IMPORTING", &from.id, to.port);
        setslot(&mut src, "MIGRATING", &to.id, from.port);
        eprintln!(
            "[cluster] slot {slot}: migrating from {} to {}",
            from.port, to.port
        );
        let mut step = MigrationStep {
            slot,
            from: from.clone(),
            to: to.clone(),
            keys_moved: 0,
        };
        between(&step);
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(keys_per_step)
                .query(&mut src)
                .unwrap_or_else(|e| panic!("CLUSTER GETKEYSINSLOT {slot} on {}: {e}", from.port));
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to.port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query::<()>(&mut src)
                .unwrap_or_else(|e| panic!("MIGRATE of {keys:?} to {}: {e}", to.port));
            step.keys_moved += keys.len();
            between(&step);
        }
        setslot(&mut dst, "NODE", &to.id, to.port);
        setslot(&mut src, "NODE", &to.id, from.port);
        for m in self.masters() {
            if m != from && m != *to {
                setslot(&mut self.node_connection(&m), "NODE", &to.id, m.port);
            }
        }
        let agreed = wait_until(DEADLINE, || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                n.connect()
                    .and_then(|mut con| cluster_nodes_of(&mut con))
                    .is_ok_and(|lines| {
                        lines
                            .iter()
                            .find(|l| l.master && l.serves(slot))
                            .is_some_and(|l| l.id == to.id)
                    })
            })
        });
        assert!(
            agreed,
            "not every node sees node {} serve slot {slot} within {DEADLINE:?}",
            to.port
        );
        eprintln!(
            "[cluster] slot {slot}: {} keys moved to {}",
            step.keys_moved, to.port
        );
    }
}

impl Drop for ClusterRig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("[cluster] node {} log: {}", n.port, n.log_path.display());
            }
        }
        // Every node is killed before the directory is removed.
        self.nodes.clear();
    }
}
