//! The Redis Cluster's slot map, shared by every core: which master owns
//! each of the 16384 hash slots, and that master's address and node id.
//! One blocking thread keeps it fresh (`CLUSTER SLOTS`, every second and
//! whenever a core asks, at most every 100 ms), so the cores never pay for
//! topology queries and Redis answers one per process, not one per core.
//! Cores read it through a generation counter: one atomic load per call,
//! and a new `Arc` only when the map changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use redis::Value;

use super::RedisTarget;
use super::seeds::{RedisSeeds, address, server_connection};
use crate::error::{Error, ErrorKind, Result};

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;
/// How often the map is refreshed when nothing asks for it.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// The least time between two refreshes, however often cores ask.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);
/// Marks a slot that no master serves.
const NO_NODE: u16 = u16::MAX;

/// The hash slot of a key: CRC16 (XMODEM) of the key, or of its hash tag
/// (the text between the first `{` and the next `}`, when not empty),
/// modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// One master of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterNode {
    /// `host:port`, as the cluster announces it.
    pub addr: String,
    pub host: String,
    pub port: u16,
    /// The node's cluster id: the fence a sale's state is stamped with.
    pub id: String,
}

/// Who owns each slot.
pub struct SlotMap {
    owner: Box<[u16]>,
    masters: Vec<MasterNode>,
}

impl SlotMap {
    /// The master that owns `slot`, if one does.
    pub fn master(&self, slot: u16) -> Option<&MasterNode> {
        self.masters.get(self.master_index(slot)?)
    }

    /// The position in `masters()` of the master that owns `slot`.
    pub fn master_index(&self, slot: u16) -> Option<usize> {
        let idx = *self.owner.get(slot as usize)?;
        (idx != NO_NODE).then_some(idx as usize)
    }

    pub fn masters(&self) -> &[MasterNode] {
        &self.masters
    }

    /// Whether every slot has a master.
    pub fn is_complete(&self) -> bool {
        self.owner.iter().all(|&i| i != NO_NODE)
    }

    fn empty() -> SlotMap {
        SlotMap {
            owner: vec![NO_NODE; SLOTS].into_boxed_slice(),
            masters: Vec::new(),
        }
    }

    /// Builds the map from a `CLUSTER SLOTS` reply given by the node at
    /// `asked_host` (an empty host in the reply means that host).
    pub fn from_cluster_slots(reply: &Value, asked_host: &str) -> Result<SlotMap> {
        let bad = |what: &str| {
            Error::new(
                ErrorKind::RedisProtocol,
                format!("CLUSTER SLOTS reply: {what}"),
            )
        };
        let Value::Array(ranges) = reply else {
            return Err(bad("not an array"));
        };
        let mut map = SlotMap::empty();
        let mut index: HashMap<String, u16> = HashMap::new();
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err(bad("a range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(bad("a range lacks its start, end or master"));
            };
            if *start < 0 || *end >= SLOTS as i64 || start > end {
                return Err(bad("a slot range out of bounds"));
            }
            let host = match node.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return Err(bad("a master without a host")),
            };
            // "?": the node does not know its address yet; "": the node asked.
            if host == "?" {
                continue;
            }
            let host = if host.is_empty() {
                asked_host.to_string()
            } else {
                host
            };
            let Some(Value::Int(port)) = node.get(1) else {
                return Err(bad("a master without a port"));
            };
            let port = u16::try_from(*port).map_err(|_| bad("a port out of range"))?;
            let id = match node.get(2) {
                Some(Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
                Some(Value::SimpleString(id)) => id.clone(),
                _ => String::new(),
            };
            let addr = format!("{host}:{port}");
            let idx = *index.entry(addr.clone()).or_insert_with(|| {
                map.masters.push(MasterNode {
                    addr,
                    host,
                    port,
                    id,
                });
                (map.masters.len() - 1) as u16
            });
            for slot in *start..=*end {
                map.owner[slot as usize] = idx;
            }
        }
        Ok(map)
    }
}

/// The process's view of the cluster: the current map and the thread that
/// refreshes it.
pub struct Topology {
    seeds: Vec<RedisTarget>,
    map: RwLock<Arc<SlotMap>>,
    generation: AtomicU64,
    refresh: Sender<()>,
    refresh_rx: Receiver<()>,
    stop: AtomicBool,
}

impl Topology {
    /// Reads the map from the seeds (bounded by `timeout` per node) and
    /// starts the thread that keeps it fresh. When no node answers, the map
    /// starts empty (every call fails fast) and fills in once one does.
    pub fn start(seeds: &RedisSeeds, timeout: Duration) -> Result<Arc<Topology>> {
        let (refresh, refresh_rx) = crossbeam_channel::bounded(1);
        let topology = Arc::new(Topology {
            seeds: seeds.targets.clone(),
            map: RwLock::new(Arc::new(SlotMap::empty())),
            generation: AtomicU64::new(0),
            refresh,
            refresh_rx,
            stop: AtomicBool::new(false),
        });
        match topology.fetch(timeout) {
            Ok(map) => {
                if !map.is_complete() {
                    tracing::warn!("redis cluster: some slots have no master");
                }
                topology.publish(map);
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis cluster topology unreadable at start; retrying")
            }
        }
        let thread = topology.clone();
        std::thread::Builder::new()
            .name("redis-topology".into())
            .spawn(move || thread.refresh_loop(timeout))
            .map_err(|e| Error::with_cause(ErrorKind::Internal, "topology thread", e))?;
        Ok(topology)
    }

    /// The map's generation: changes whenever a refresh changed the map.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current map.
    pub fn map(&self) -> Arc<SlotMap> {
        self.map.read().expect("slot map lock").clone()
    }

    /// Asks for a refresh soon (never blocks; requests coalesce).
    pub fn request_refresh(&self) {
        let _ = self.refresh.try_send(());
    }

    /// Stops the refreshing thread (at its next wake-up).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.refresh.try_send(());
    }

    /// The first seed: its credentials are every node's.
    pub fn credentials(&self) -> RedisTarget {
        self.seeds[0].clone()
    }

    fn target_for(&self, node: &MasterNode) -> RedisTarget {
        RedisTarget {
            host: node.host.clone(),
            port: node.port,
            db: 0,
            ..self.credentials()
        }
    }

    fn publish(&self, map: SlotMap) {
        let mut current = self.map.write().expect("slot map lock");
        let changed = current.masters != map.masters || current.owner != map.owner;
        if changed {
            *current = Arc::new(map);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn refresh_loop(&self, timeout: Duration) {
        let mut last = Instant::now();
        let mut failing = false;
        loop {
            let _ = self.refresh_rx.recv_timeout(REFRESH_EVERY);
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let since = last.elapsed();
            if since < MIN_REFRESH_GAP {
                std::thread::sleep(MIN_REFRESH_GAP - since);
            }
            last = Instant::now();
            match self.fetch(timeout) {
                Ok(map) => {
                    if failing {
                        tracing::info!("redis cluster topology readable again");
                        failing = false;
                    }
                    self.publish(map);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "redis cluster topology unreadable; retrying");
                        failing = true;
                    }
                }
            }
        }
    }

    /// Asks the known masters, then the seeds, for `CLUSTER SLOTS`; the
    /// first node that answers with a map that covers every slot wins (a
    /// node cut off from the majority may still answer with an old map, so
    /// an incomplete map is used only when no node gives a complete one).
    fn fetch(&self, timeout: Duration) -> Result<SlotMap> {
        let mut candidates: Vec<RedisTarget> = self
            .map()
            .masters()
            .iter()
            .map(|node| self.target_for(node))
            .collect();
        candidates.extend(self.seeds.iter().cloned());
        let mut partial = None;
        let mut failures = Vec::new();
        let mut asked = Vec::new();
        for target in candidates {
            let addr = address(&target);
            if asked.contains(&addr) {
                continue;
            }
            asked.push(addr.clone());
            match ask_slots(&target, timeout) {
                Ok(map) if map.is_complete() => return Ok(map),
                Ok(map) => {
                    partial.get_or_insert(map);
                }
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        partial.ok_or_else(|| {
            Error::new(
                ErrorKind::RedisUnavailable,
                format!(
                    "no Redis Cluster node answered CLUSTER SLOTS ({})",
                    failures.join("; ")
                ),
            )
        })
    }
}

fn ask_slots(target: &RedisTarget, timeout: Duration) -> Result<SlotMap> {
    let mut con = server_connection(target, timeout)?;
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
    SlotMap::from_cluster_slots(&reply, &target.host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Vectors from the Redis Cluster spec and CLUSTER KEYSLOT.
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31C3
        );
        assert_eq!(key_slot(b"{sale:1}:meta"), 4774);
        assert_eq!(key_slot(b"shop-a:{sale:1}:user:9"), 4774);
        assert_eq!(key_slot(b"foo"), 12182);
        // An empty tag hashes the whole key.
        assert_eq!(key_slot(b"{}foo"), key_slot(b"{}foo"));
        assert_ne!(key_slot(b"{}foo"), key_slot(b"foo"));
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_cluster_slots() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id-a")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(7003), bulk("id-d")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7001), bulk("id-b")]),
            ]),
        ]);
        let map = SlotMap::from_cluster_slots(&reply, "127.0.0.1").unwrap();
        assert!(map.is_complete());
        assert_eq!(map.masters().len(), 2);
        let a = map.master(0).unwrap();
        assert_eq!((a.addr.as_str(), a.id.as_str()), ("10.0.0.1:7000", "id-a"));
        assert_eq!(map.master(5460).unwrap().id, "id-a");
        let b = map.master(16383).unwrap();
        assert_eq!(
            b.addr, "127.0.0.1:7001",
            "an empty host is the asked node's"
        );
    }

    #[test]
    fn unknown_hosts_and_gaps_leave_slots_unowned() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(99),
            Value::Array(vec![bulk("?"), Value::Int(7000), bulk("id-a")]),
        ])]);
        let map = SlotMap::from_cluster_slots(&reply, "h").unwrap();
        assert!(!map.is_complete());
        assert!(map.master(0).is_none());
        assert!(SlotMap::from_cluster_slots(&Value::Int(1), "h").is_err());
    }
}
