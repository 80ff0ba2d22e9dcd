//! The per-core Redis client: pipelined connections over monoio's own
//! TcpStream (the redis crate builds commands and parses the replies other
//! than the scripts', which are read in place from their frames (`resp`);
//! its IO is not used on cores): one to a single node, or one per master of a Redis
//! Cluster, routed by the slot map (`cluster`), following `MOVED` and `ASK`
//! and retrying `TRYAGAIN` / `CLUSTERDOWN` within the call's deadline. Every
//! call has a deadline. While a node's connection is down, calls to it fail
//! at once (circuit breaker) and a background task reconnects with
//! exponential backoff; NOSCRIPT is answered by resending the script, on the
//! node that said it.

pub mod batch;
pub mod blocking;
pub mod cluster;
pub mod conn;
pub mod keys;
pub mod reply_slots;
pub mod resp;
pub mod scripts;
pub mod seeds;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Cmd, IntoConnectionInfo, ServerErrorKind, Value};

use self::cluster::{SlotMap, Topology};
use self::conn::Pipe;
use self::resp::Frame;
use self::scripts::{Script, Scripts};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;

/// Consecutive timeouts after which a connection is presumed hung and replaced.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;
/// Most calls waiting on one connection; past it calls fail at once.
const MAX_IN_FLIGHT: usize = 65_536;

/// Where Redis is, from `REDIS_URL`.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<Self> {
        let info = url
            .into_connection_info()
            .map_err(|e| Error::with_cause(ErrorKind::Config, "REDIS_URL", e))?;
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            _ => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "REDIS_URL: only redis://host:port/db is supported",
                ));
            }
        };
        let settings = info.redis_settings();
        Ok(RedisTarget {
            host,
            port,
            db: settings.db(),
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
        })
    }
}

/// Where the cores' Redis is: one node, or a Redis Cluster whose slot map
/// the process keeps fresh.
#[derive(Clone)]
pub enum RedisBackend {
    Single(RedisTarget),
    Cluster(Arc<Topology>),
}

/// A core's handle on Redis; clones share the connections. Every call names
/// the hash slot of the keys it touches: on a single node the slot is
/// ignored, on a cluster it picks the master (following `MOVED` and `ASK`,
/// retrying `TRYAGAIN` and `CLUSTERDOWN` within the call's deadline).
#[derive(Clone)]
pub struct RedisClient {
    inner: Rc<Inner>,
}

struct Inner {
    routes: Routes,
    observer: Arc<dyn RedirectObserver>,
    /// The fence of a single node: none.
    no_fence: Rc<str>,
    scripts: Arc<Scripts>,
    timeout: Duration,
    stop: Event,
}

enum Routes {
    Single(Rc<Node>),
    Cluster(ClusterRoutes),
}

/// A core's view of the cluster: the slot map it last saw, a connection per
/// master it talks to (opened when first needed) and each master's fence.
struct ClusterRoutes {
    topology: Arc<Topology>,
    seen: RefCell<SeenMap>,
    /// Connections by `host:port`, including redirect targets not (yet) in the map.
    nodes: RefCell<HashMap<String, Rc<Node>>>,
}

struct SeenMap {
    generation: u64,
    map: Arc<SlotMap>,
    /// The node of each master of `map`, in the map's order, with its id.
    masters: Vec<(Rc<Node>, Rc<str>)>,
}

/// One Redis node's pipelined connection, kept open by its own task.
struct Node {
    target: RedisTarget,
    scripts: Arc<Scripts>,
    timeout: Duration,
    pipe: RefCell<Option<Rc<Pipe>>>,
    stop: Event,
}

/// Where a call goes next.
enum Hop {
    /// The slot's owner by the map.
    Owner,
    /// A redirect's target; `asking` for `ASK` (one command, no map change).
    To { addr: String, asking: bool },
}

/// A Redis Cluster reply that made a call go again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED`: the slot has another owner (a migration ended, a failover).
    Moved,
    /// `ASK`: the slot is migrating and the keys are on the target.
    Ask,
    /// `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `READONLY`: sent
    /// again after a pause.
    Retry,
}

impl Redirect {
    pub const ALL: [Redirect; 3] = [Redirect::Moved, Redirect::Ask, Redirect::Retry];

    pub fn name(self) -> &'static str {
        match self {
            Redirect::Moved => "moved",
            Redirect::Ask => "ask",
            Redirect::Retry => "retry",
        }
    }
}

/// Sees each redirect a core's client followed, for metrics.
pub trait RedirectObserver {
    fn redirected(&self, redirect: Redirect);
}

/// Most redirects one call follows before it gives up.
const MAX_HOPS: usize = 8;
/// First and longest pause before retrying `TRYAGAIN` / `CLUSTERDOWN`.
const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_MOST: Duration = Duration::from_millis(100);

impl RedisClient {
    /// Creates the client and starts its connection tasks on the current runtime.
    pub fn start(
        backend: RedisBackend,
        scripts: Arc<Scripts>,
        timeout: Duration,
        observer: Arc<dyn RedirectObserver>,
    ) -> Self {
        let stop = Event::new();
        let routes = match backend {
            RedisBackend::Single(target) => {
                Routes::Single(Node::start(target, scripts.clone(), timeout, stop.clone()))
            }
            RedisBackend::Cluster(topology) => {
                let map = topology.map();
                Routes::Cluster(ClusterRoutes {
                    seen: RefCell::new(SeenMap {
                        generation: u64::MAX,
                        map,
                        masters: Vec::new(),
                    }),
                    topology,
                    nodes: RefCell::new(HashMap::new()),
                })
            }
        };
        let client = RedisClient {
            inner: Rc::new(Inner {
                routes,
                observer,
                no_fence: Rc::from(""),
                scripts,
                timeout,
                stop,
            }),
        };
        // Connect to every master at once, so that the first requests find
        // their connections open.
        if let Routes::Cluster(cluster) = &client.inner.routes {
            client.refresh_seen(cluster);
        }
        client
    }

    pub fn scripts(&self) -> &Scripts {
        &self.inner.scripts
    }

    /// Whether the node that owns `slot` has a connection up now.
    pub fn can_reach(&self, slot: u16) -> bool {
        match &self.inner.routes {
            Routes::Single(node) => node.live_pipe().is_some(),
            Routes::Cluster(cluster) => self
                .owner(cluster, slot)
                .is_some_and(|(node, _)| node.live_pipe().is_some()),
        }
    }

    /// Whether every node this client talks to has a connection up now.
    pub fn is_connected(&self) -> bool {
        match &self.inner.routes {
            Routes::Single(node) => node.live_pipe().is_some(),
            Routes::Cluster(cluster) => {
                self.refresh_seen(cluster);
                let seen = cluster.seen.borrow();
                !seen.masters.is_empty()
                    && seen.masters.iter().all(|(n, _)| n.live_pipe().is_some())
            }
        }
    }

    /// Waits (bounded) until the first connections are up.
    pub async fn wait_connected(&self, deadline: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < deadline {
            if self.is_connected() {
                return true;
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_connected()
    }

    /// Stops reconnecting and closes the connections.
    pub fn stop(&self) {
        self.inner.stop.set();
        let nodes: Vec<Rc<Node>> = match &self.inner.routes {
            Routes::Single(node) => vec![node.clone()],
            Routes::Cluster(cluster) => cluster.nodes.borrow().values().cloned().collect(),
        };
        for node in nodes {
            node.close();
        }
    }

    /// Sends one command about the keys of `slot` and waits (bounded) for
    /// its reply. A Redis error reply comes back as `Ok(Value::ServerError)`
    /// for the caller to judge (redirects are followed first).
    pub async fn query(&self, slot: u16, cmd: &Cmd) -> Result<Value> {
        let (frame, _) = self.routed(slot, &|_, _| Cow::Borrowed(cmd), None).await?;
        parse(&frame)
    }

    /// Runs a script on the keys of `slot` with EVALSHA; on NOSCRIPT resends
    /// it with EVAL (which also caches it). `args` adds the keys and then the
    /// arguments; it is given the fence of the node that owns the slot (its
    /// cluster node id; '' on a single node). The reply comes back unparsed
    /// (the caller reads its shape from the frame); an error reply is an error.
    pub async fn eval(
        &self,
        slot: u16,
        script: &Script,
        keys: usize,
        args: impl Fn(&mut Cmd, &str),
    ) -> Result<Frame> {
        let build =
            |fence: &str, body: bool| Cow::Owned(script_cmd(script, body, keys, fence, &args));
        let (frame, _) = self.routed(slot, &build, None).await?;
        server_frame(frame)
    }

    /// Runs a script like `eval`, then `WAIT replicas <wait>` on the same
    /// connection, sent right behind it with nothing in between: Redis
    /// answers the WAIT once `replicas` replicas have every write this
    /// connection made so far (the script's included), or when `wait` has
    /// passed. Returns the script's reply as soon as it is in, and the
    /// WAIT's answer to await (or drop) for how many replicas confirmed.
    /// The WAIT blocks this connection in Redis until it answers, so
    /// callers keep it for the calls that need it.
    pub async fn eval_and_wait(
        &self,
        slot: u16,
        script: &Script,
        keys: usize,
        args: impl Fn(&mut Cmd, &str),
        replicas: u32,
        wait: Duration,
    ) -> Result<(Frame, Confirmation)> {
        // `WAIT n 0` would block forever.
        let wait_ms = wait.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
        let mut wait_cmd = redis::cmd("WAIT");
        wait_cmd.arg(replicas).arg(wait_ms);
        // Redis answers the WAIT at its timeout at the latest: its reply may
        // take that long on top of the usual bound.
        let bound = self.inner.timeout + Duration::from_millis(wait_ms);
        let build =
            |fence: &str, body: bool| Cow::Owned(script_cmd(script, body, keys, fence, &args));
        let (frame, waiting) = self.routed(slot, &build, Some(&wait_cmd)).await?;
        let (pipe, reply) = waiting.expect("a WAIT was sent behind the script");
        let confirmation = Confirmation {
            client: self.clone(),
            pipe,
            reply,
            bound,
        };
        Ok((server_frame(frame)?, confirmation))
    }

    /// PING, for health checks: every master of a cluster must answer.
    pub async fn ping(&self) -> Result<()> {
        let nodes: Vec<Rc<Node>> = match &self.inner.routes {
            Routes::Single(node) => vec![node.clone()],
            Routes::Cluster(cluster) => {
                self.refresh_seen(cluster);
                let seen = cluster.seen.borrow();
                if seen.masters.is_empty() || !seen.map.is_complete() {
                    return Err(Error::new(
                        ErrorKind::RedisUnavailable,
                        "the cluster has slots without a master",
                    ));
                }
                seen.masters.iter().map(|(n, _)| n.clone()).collect()
            }
        };
        for node in nodes {
            let pipe = node.pipe_with_room()?;
            let reply = pipe.send(&redis::cmd("PING"));
            match server_reply(parse(&self.reply(&pipe, reply, self.inner.timeout).await?)?)? {
                Value::SimpleString(_) | Value::Okay => {}
                _ => {
                    return Err(Error::new(
                        ErrorKind::RedisProtocol,
                        "unexpected PING reply",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sends `build(fence, with_body)` (and `then` right behind it, on the
    /// same connection) to the node that owns `slot`, following redirects
    /// until a reply that is not one, all within the call's timeout. A
    /// redirect or retry reply means the command did not run, so sending it
    /// again is safe; a lost connection or a timeout after sending is not
    /// retried (the outcome is unknown). Returns the reply, and the
    /// connection and pending reply of `then`.
    async fn routed<'c>(
        &self,
        slot: u16,
        build: &dyn Fn(&str, bool) -> Cow<'c, Cmd>,
        then: Option<&Cmd>,
    ) -> Result<(
        Frame,
        Option<(Rc<Pipe>, local_sync::oneshot::Receiver<conn::Reply>)>,
    )> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut hop = Hop::Owner;
        let mut with_body = false;
        let mut pause = RETRY_FIRST;
        for _ in 0..MAX_HOPS {
            let (node, fence, asking) = self.resolve(slot, &hop)?;
            let pipe = match node.pipe_with_room() {
                Ok(pipe) => pipe,
                Err(e) => {
                    self.request_refresh();
                    return Err(e);
                }
            };
            if asking {
                // Nothing can come between the two on this single-threaded
                // core, so the ASKING flag applies to our command.
                drop(pipe.send(&redis::cmd("ASKING")));
            }
            let reply = pipe.send(&build(&fence, with_body));
            let after = then.map(|cmd| pipe.send(cmd));
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.reply(&pipe, reply, left).await?;
            // Only an error reply is parsed here: it may be a redirect.
            if !frame.is_error() {
                return Ok((frame, after.map(|rx| (pipe, rx))));
            }
            let Value::ServerError(e) = parse(&frame)? else {
                return Ok((frame, after.map(|rx| (pipe, rx))));
            };
            match e.kind() {
                Some(ServerErrorKind::NoScript) if !with_body => {
                    tracing::info!("NOSCRIPT: resending the script");
                    with_body = true;
                    // Same node, same ASKING.
                    if let Hop::Owner = hop {
                        hop = Hop::To {
                            addr: node.addr(),
                            asking,
                        };
                    }
                }
                Some(ServerErrorKind::Moved) => {
                    self.inner.observer.redirected(Redirect::Moved);
                    self.request_refresh();
                    hop = Hop::To {
                        addr: redirect_addr(e.details(), &node.target.host)?,
                        asking: false,
                    };
                }
                Some(ServerErrorKind::Ask) => {
                    self.inner.observer.redirected(Redirect::Ask);
                    hop = Hop::To {
                        addr: redirect_addr(e.details(), &node.target.host)?,
                        asking: true,
                    };
                }
                Some(
                    ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly,
                ) if matches!(self.inner.routes, Routes::Cluster(_)) => {
                    self.inner.observer.redirected(Redirect::Retry);
                    if e.kind() != Some(ServerErrorKind::TryAgain) {
                        self.request_refresh();
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left < pause {
                        return Err(Error::new(
                            ErrorKind::RedisUnavailable,
                            format!("redis cluster busy: {}", e.code()),
                        ));
                    }
                    monoio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MOST);
                    hop = Hop::Owner;
                }
                _ => return Ok((frame, after.map(|rx| (pipe, rx)))),
            }
        }
        Err(Error::new(
            ErrorKind::RedisUnavailable,
            "too many redis cluster redirects",
        ))
    }

    /// The node a hop goes to, the fence to send (always the map owner's:
    /// during a migration the keys that moved keep the owner's stamp), and
    /// whether to send ASKING first.
    fn resolve(&self, slot: u16, hop: &Hop) -> Result<(Rc<Node>, Rc<str>, bool)> {
        match &self.inner.routes {
            Routes::Single(node) => Ok((node.clone(), self.inner.no_fence.clone(), false)),
            Routes::Cluster(cluster) => {
                let owner = self.owner(cluster, slot);
                let fence = owner
                    .as_ref()
                    .map_or_else(|| self.inner.no_fence.clone(), |(_, id)| id.clone());
                match hop {
                    Hop::Owner => match owner {
                        Some((node, id)) => Ok((node, id, false)),
                        None => {
                            self.request_refresh();
                            Err(Error::new(
                                ErrorKind::RedisUnavailable,
                                "no redis cluster master serves the slot",
                            ))
                        }
                    },
                    Hop::To { addr, asking } => Ok((self.node_at(cluster, addr), fence, *asking)),
                }
            }
        }
    }

    /// The slot's master by the latest map, and its fence.
    fn owner(&self, cluster: &ClusterRoutes, slot: u16) -> Option<(Rc<Node>, Rc<str>)> {
        self.refresh_seen(cluster);
        let seen = cluster.seen.borrow();
        seen.masters.get(seen.map.master_index(slot)?).cloned()
    }

    /// Picks up a newer slot map: opens connections to new masters and
    /// closes those to nodes no longer in the map.
    fn refresh_seen(&self, cluster: &ClusterRoutes) {
        let generation = cluster.topology.generation();
        if cluster.seen.borrow().generation == generation {
            return;
        }
        let map = cluster.topology.map();
        let masters: Vec<(Rc<Node>, Rc<str>)> = map
            .masters()
            .iter()
            .map(|m| (self.node_at(cluster, &m.addr), Rc::from(m.id.as_str())))
            .collect();
        cluster.nodes.borrow_mut().retain(|addr, node| {
            let keep = map.masters().iter().any(|m| &m.addr == addr);
            if !keep {
                node.close();
            }
            keep
        });
        *cluster.seen.borrow_mut() = SeenMap {
            generation,
            map,
            masters,
        };
    }

    /// The connection to `addr`, opened on first use.
    fn node_at(&self, cluster: &ClusterRoutes, addr: &str) -> Rc<Node> {
        if let Some(node) = cluster.nodes.borrow().get(addr) {
            return node.clone();
        }
        let (host, port) = split_addr(addr);
        let target = RedisTarget {
            host: host.to_string(),
            port,
            db: 0,
            ..cluster.topology.credentials()
        };
        let node = Node::start(
            target,
            self.inner.scripts.clone(),
            self.inner.timeout,
            self.inner.stop.clone(),
        );
        cluster
            .nodes
            .borrow_mut()
            .insert(addr.to_string(), node.clone());
        node
    }

    fn request_refresh(&self) {
        if let Routes::Cluster(cluster) = &self.inner.routes {
            cluster.topology.request_refresh();
        }
    }

    /// Waits (bounded by `timeout`) for one reply queued on `pipe`.
    async fn reply(
        &self,
        pipe: &Pipe,
        reply: local_sync::oneshot::Receiver<conn::Reply>,
        timeout: Duration,
    ) -> Result<Frame> {
        match monoio::time::timeout(timeout, reply).await {
            Ok(Ok(reply)) => {
                pipe.note_reply();
                reply
            }
            Ok(Err(_)) => Err(Error::new(ErrorKind::RedisUnavailable, "connection lost")),
            Err(_) => {
                pipe.note_timeout(TIMEOUTS_BEFORE_RECONNECT);
                Err(Error::new(
                    ErrorKind::RedisUnavailable,
                    "redis call timed out",
                ))
            }
        }
    }
}

/// Arguments and bytes a script command is first given room for.
const SCRIPT_CMD_ARGS: usize = 128;
const SCRIPT_CMD_BYTES: usize = 4096;

/// EVALSHA of `script` (EVAL with its body when `body`), its key count, then
/// what `args` adds.
fn script_cmd(
    script: &Script,
    body: bool,
    keys: usize,
    fence: &str,
    args: &impl Fn(&mut Cmd, &str),
) -> Cmd {
    // Sized for a batch of a few dozen calls, so that building it does not
    // grow its buffers step by step (that was a fifth of the cost of
    // building a batch's command).
    let mut cmd = Cmd::with_capacity(SCRIPT_CMD_ARGS, SCRIPT_CMD_BYTES);
    if body {
        cmd.arg("EVAL").arg(script.body);
    } else {
        cmd.arg("EVALSHA").arg(&script.sha);
    }
    cmd.arg(keys);
    args(&mut cmd, fence);
    cmd
}

/// The `host:port` of a `MOVED` / `ASK` reply's details (`<slot>
/// <host>:<port>`); an empty host is the host of the node that answered.
fn redirect_addr(details: Option<&str>, asked_host: &str) -> Result<String> {
    let addr = details
        .and_then(|d| d.split_whitespace().nth(1))
        .filter(|a| a.contains(':'))
        .ok_or_else(|| Error::new(ErrorKind::RedisProtocol, "redirect without an address"))?;
    Ok(match addr.strip_prefix(':') {
        Some(port) => format!("{asked_host}:{port}"),
        None => addr.to_string(),
    })
}

/// `host` and `port` of `host:port` (the port after the last colon).
fn split_addr(addr: &str) -> (&str, u16) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().unwrap_or(6379)),
        None => (addr, 6379),
    }
}

impl Node {
    fn start(
        target: RedisTarget,
        scripts: Arc<Scripts>,
        timeout: Duration,
        stop: Event,
    ) -> Rc<Node> {
        let node = Rc::new(Node {
            target,
            scripts,
            timeout,
            pipe: RefCell::new(None),
            stop,
        });
        monoio::spawn(keep_connected(Rc::downgrade(&node)));
        node
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.target.host, self.target.port)
    }

    fn live_pipe(&self) -> Option<Rc<Pipe>> {
        self.pipe
            .borrow()
            .as_ref()
            .filter(|p| !p.is_dead())
            .cloned()
    }

    fn pipe_with_room(&self) -> Result<Rc<Pipe>> {
        let Some(pipe) = self.live_pipe() else {
            return Err(Error::new(ErrorKind::RedisUnavailable, "redis is down"));
        };
        if pipe.in_flight() >= MAX_IN_FLIGHT {
            return Err(Error::new(
                ErrorKind::Overloaded,
                "too many redis calls in flight",
            ));
        }
        Ok(pipe)
    }

    /// Closes the connection; the node's task ends once its last handle is
    /// gone (or the client stops).
    fn close(&self) {
        if let Some(pipe) = self.pipe.borrow_mut().take() {
            pipe.kill(conn::SHUTTING_DOWN);
        }
    }
}

/// The pending answer of a `WAIT` sent by `RedisClient::eval_and_wait`.
pub struct Confirmation {
    client: RedisClient,
    pipe: Rc<Pipe>,
    reply: local_sync::oneshot::Receiver<conn::Reply>,
    bound: Duration,
}

impl Confirmation {
    /// How many replicas confirmed the connection's writes.
    pub async fn replicas(self) -> Result<i64> {
        let frame = self
            .client
            .reply(&self.pipe, self.reply, self.bound)
            .await?;
        match server_reply(parse(&frame)?)? {
            Value::Int(n) => Ok(n),
            _ => Err(Error::new(
                ErrorKind::RedisProtocol,
                "unexpected WAIT reply",
            )),
        }
    }
}

/// Parses a reply into a `Value` (every reply but the scripts').
fn parse(frame: &Frame) -> Result<Value> {
    frame
        .value()
        .map_err(|e| Error::with_cause(ErrorKind::RedisProtocol, "reply", e))
}

/// Turns an error reply into an error, leaving any other frame unparsed.
fn server_frame(frame: Frame) -> Result<Frame> {
    if frame.is_error() {
        server_reply(parse(&frame)?)?;
    }
    Ok(frame)
}

/// A code goes into a command as its text, copied from where it lies inline.
impl redis::ToRedisArgs for crate::sale::code::Code {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.as_bytes());
    }
}

/// Turns an error reply into an error.
pub fn server_reply(value: Value) -> Result<Value> {
    match value {
        Value::ServerError(e) => Err(Error::with_cause(
            ErrorKind::RedisProtocol,
            "redis error reply",
            redis::RedisError::from(e),
        )),
        other => Ok(other),
    }
}

/// Keeps one node's connection open: connects, waits for it to die,
/// reconnects with exponential backoff (50 ms doubling to 2 s), until the
/// client stops or the node is dropped.
async fn keep_connected(node: std::rc::Weak<Node>) {
    let mut backoff = Duration::from_millis(50);
    let mut was_down_logged = false;
    loop {
        let Some(current) = node.upgrade() else {
            return;
        };
        if current.stop.is_set() {
            return;
        }
        let result = conn::open(&current.target, &current.scripts, current.timeout).await;
        match result {
            Ok(pipe) => {
                if was_down_logged {
                    tracing::info!(node = %current.addr(), "redis connection restored");
                }
                was_down_logged = false;
                backoff = Duration::from_millis(50);
                *current.pipe.borrow_mut() = Some(pipe.clone());
                let stop = current.stop.clone();
                drop(current);
                monoio::select! {
                    _ = pipe.closed() => {}
                    _ = stop.wait() => { pipe.kill(conn::SHUTTING_DOWN); return; }
                }
            }
            Err(e) => {
                if !was_down_logged {
                    tracing::warn!(node = %current.addr(), error = %e, "redis unavailable; retrying with backoff");
                    was_down_logged = true;
                }
                let stop = current.stop.clone();
                drop(current);
                monoio::select! {
                    _ = monoio::time::sleep(backoff) => {}
                    _ = stop.wait() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_urls() {
        let t = RedisTarget::parse("redis://127.0.0.1:6380/7").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.db), ("127.0.0.1", 6380, 7));
        assert!(t.password.is_none());
        let t = RedisTarget::parse("redis://:secret@localhost/2").unwrap();
        assert_eq!(
            (t.port, t.db, t.password.as_deref()),
            (6379, 2, Some("secret"))
        );
        assert!(RedisTarget::parse("http://x").is_err());
    }

    #[test]
    fn redirects_name_their_target() {
        assert_eq!(
            redirect_addr(Some("3999 10.0.0.2:7001"), "h").unwrap(),
            "10.0.0.2:7001"
        );
        // An empty host (an unknown endpoint) is the answering node's host.
        assert_eq!(redirect_addr(Some("3999 :7001"), "h").unwrap(), "h:7001");
        assert!(redirect_addr(Some("3999"), "h").is_err());
        assert!(redirect_addr(None, "h").is_err());
        assert_eq!(split_addr("10.0.0.2:7001"), ("10.0.0.2", 7001));
        assert_eq!(split_addr("::1:7001"), ("::1", 7001));
    }
}
