//! Blocking Redis for the threads that may block (writer, rotator, `flashsale
//! check`; never a core): one connection type for a single node and a Redis
//! Cluster (the redis crate's `ClusterConnection`, which follows the slot
//! map, MOVED and ASK and retries TRYAGAIN and CLUSTERDOWN), and the few
//! things the crate's cluster routing gets wrong for us:
//! - scripts run as `EVALSHA`, then `EVAL` on NOSCRIPT, on the node that
//!   owns their first key (`redis::Script::invoke` would send `SCRIPT LOAD`
//!   to every node, which fails while any node is down);
//! - commands the crate cannot route (`SCAN`) or would fan out (`TIME`,
//!   `INFO`) go to the master that owns a given key (`query_at`);
//! - `INFO replication` of every master, for the replica count check.

use std::time::Duration;

use redis::cluster::{ClusterClientBuilder, ClusterConnection};
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, ConnectionLike, FromRedisValue, RedisResult, ServerErrorKind, Value};

use super::scripts::Script;
use super::seeds::{RedisMode, RedisSeeds, address, connection_info};
use crate::error::{Error, ErrorKind, Result};

/// Retries of one cluster command (redirects, TRYAGAIN, CLUSTERDOWN, lost
/// connections), with a short backoff between them: the blocking threads
/// retry on their own, with a fresh connection and a fresh slot map.
const CLUSTER_RETRIES: u32 = 5;
const CLUSTER_RETRY_MIN_MS: u64 = 10;
const CLUSTER_RETRY_MAX_MS: u64 = 500;

/// A blocking connection to a single Redis node or to a Redis Cluster.
/// After an error its owner drops it and connects again from the seeds:
/// the crate's cluster connection keeps dialing a dead master rather than
/// reading the slot map anew, and a fresh one reads it.
pub enum BlockingRedis {
    Single(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

/// Where Redis is: the seeds of `REDIS_URL` and what they lead to.
#[derive(Debug, Clone)]
pub struct RedisEndpoint {
    pub seeds: RedisSeeds,
    pub mode: RedisMode,
}

impl RedisEndpoint {
    /// Opens a blocking connection, with connecting and every read and write
    /// bounded by the given timeouts. A single node is asked for the seed's
    /// database (`SELECT`); a cluster has only database 0.
    pub fn connect(
        &self,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<BlockingRedis> {
        let unavailable = |e: redis::RedisError| {
            Error::with_cause(
                ErrorKind::RedisUnavailable,
                format!(
                    "connect to redis ({} at {})",
                    self.mode.name(),
                    self.seeds
                        .targets
                        .iter()
                        .map(address)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                e,
            )
        };
        match self.mode {
            RedisMode::Single => {
                let client = redis::Client::open(connection_info(self.seeds.first())?)
                    .map_err(|e| Error::with_cause(ErrorKind::Config, "REDIS_URL", e))?;
                let con = client
                    .get_connection_with_timeout(connect_timeout)
                    .map_err(unavailable)?;
                con.set_read_timeout(Some(io_timeout))
                    .map_err(unavailable)?;
                con.set_write_timeout(Some(io_timeout))
                    .map_err(unavailable)?;
                Ok(BlockingRedis::Single(con))
            }
            RedisMode::Cluster => {
                let client = ClusterClientBuilder::new(self.seeds.connection_infos()?)
                    .connection_timeout(connect_timeout)
                    .response_timeout(io_timeout)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(CLUSTER_RETRY_MIN_MS)
                    .max_retry_wait(CLUSTER_RETRY_MAX_MS)
                    .build()
                    .map_err(|e| Error::with_cause(ErrorKind::Config, "REDIS_URL", e))?;
                let con = client.get_connection().map_err(unavailable)?;
                con.set_write_timeout(Some(io_timeout))
                    .map_err(unavailable)?;
                Ok(BlockingRedis::Cluster(Box::new(con)))
            }
        }
    }

    /// Every master's address (`host:port`) and its number of connected
    /// replicas (`INFO replication`, `connected_slaves`), over `con`.
    pub fn replicas_per_master(&self, con: &mut BlockingRedis) -> Result<Vec<(String, u32)>> {
        let info = redis::cmd("INFO").arg("replication").clone();
        match con {
            BlockingRedis::Single(con) => {
                let text: String = info.query(con)?;
                Ok(vec![(
                    address(self.seeds.first()),
                    connected_replicas(&text),
                )])
            }
            BlockingRedis::Cluster(con) => {
                let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = con.route_command(&info, route)?;
                let Value::Map(per_node) = reply else {
                    return Err(Error::new(
                        ErrorKind::RedisProtocol,
                        "INFO replication of every master: not a map of nodes",
                    ));
                };
                let mut out = Vec::with_capacity(per_node.len());
                for (node, text) in per_node {
                    let node = String::from_redis_value(node).map_err(redis::RedisError::from)?;
                    let text = String::from_redis_value(text.extract_error()?)
                        .map_err(redis::RedisError::from)?;
                    out.push((node, connected_replicas(&text)));
                }
                out.sort();
                Ok(out)
            }
        }
    }
}

impl BlockingRedis {
    /// Sends `cmd` to the master that owns `key`'s slot (on a single node,
    /// to the node), for commands the cluster client cannot route by their
    /// own keys: `SCAN` of one sale's keys, `TIME` of one master.
    pub fn query_at<T: FromRedisValue>(&mut self, key: &str, cmd: &Cmd) -> RedisResult<T> {
        match self {
            BlockingRedis::Single(con) => cmd.query(con),
            BlockingRedis::Cluster(con) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                let value = con.route_command(cmd, route)?.extract_error()?;
                T::from_redis_value(value).map_err(Into::into)
            }
        }
    }
}

/// `connected_slaves` of an `INFO replication` reply (0 when absent).
pub fn connected_replicas(info: &str) -> u32 {
    info.lines()
        .filter_map(|line| line.trim().strip_prefix("connected_slaves:"))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl ConnectionLike for BlockingRedis {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            BlockingRedis::Single(con) => con.req_packed_command(cmd),
            BlockingRedis::Cluster(con) => con.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            BlockingRedis::Single(con) => con.req_packed_commands(cmd, offset, count),
            BlockingRedis::Cluster(con) => con.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            BlockingRedis::Single(con) => con.req_command(cmd),
            BlockingRedis::Cluster(con) => con.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            BlockingRedis::Single(con) => con.get_db(),
            BlockingRedis::Cluster(con) => con.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            BlockingRedis::Single(con) => con.supports_pipelining(),
            BlockingRedis::Cluster(con) => con.supports_pipelining(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            BlockingRedis::Single(con) => con.check_connection(),
            BlockingRedis::Cluster(con) => con.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            BlockingRedis::Single(con) => con.is_open(),
            BlockingRedis::Cluster(con) => con.is_open(),
        }
    }
}

/// Runs `script` with `EVALSHA`, and with `EVAL` (which also caches it) if
/// the node answers NOSCRIPT. Both are routed by the first key, so on a
/// cluster the script runs, and is cached, on the master that owns its keys,
/// whichever other node is down. `keys` must share one slot.
pub fn eval<T: FromRedisValue>(
    con: &mut dyn ConnectionLike,
    script: &Script,
    keys: &[String],
    args: impl Fn(&mut Cmd),
) -> RedisResult<T> {
    let call = |verb: &str, body: &str| {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(keys.len()).arg(keys);
        args(&mut cmd);
        cmd
    };
    match call("EVALSHA", &script.sha).query(con) {
        Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            tracing::info!(
                script = script.name,
                "NOSCRIPT: sending the script with EVAL"
            );
            call("EVAL", script.body).query(con)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_replicas_are_read_from_info_replication() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=x\r\n";
        assert_eq!(connected_replicas(info), 2);
        assert_eq!(connected_replicas("# Replication\r\nrole:slave\r\n"), 0);
    }
}
