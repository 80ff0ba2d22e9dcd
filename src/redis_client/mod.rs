//! The per-core Redis client: one pipelined connection per core over monoio's
//! own TcpStream (the redis crate builds commands and parses replies; its IO
//! is not used on cores). Every call has a deadline. While the connection is
//! down, calls fail at once (circuit breaker) and a background task reconnects
//! with exponential backoff; NOSCRIPT is answered by resending the script.

pub mod batch;
pub mod conn;
pub mod keys;
pub mod resp;
pub mod scripts;
pub mod seeds;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, IntoConnectionInfo, ServerErrorKind, Value};

use self::conn::Pipe;
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

/// A core's handle on Redis; clones share the connection.
#[derive(Clone)]
pub struct RedisClient {
    inner: Rc<Inner>,
}

struct Inner {
    target: RedisTarget,
    scripts: Arc<Scripts>,
    timeout: Duration,
    pipe: RefCell<Option<Rc<Pipe>>>,
    stop: Event,
}

impl RedisClient {
    /// Creates the client and starts its connection task on the current runtime.
    pub fn start(target: RedisTarget, scripts: Arc<Scripts>, timeout: Duration) -> Self {
        let client = RedisClient {
            inner: Rc::new(Inner {
                target,
                scripts,
                timeout,
                pipe: RefCell::new(None),
                stop: Event::new(),
            }),
        };
        monoio::spawn(keep_connected(Rc::downgrade(&client.inner)));
        client
    }

    pub fn scripts(&self) -> &Scripts {
        &self.inner.scripts
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.live_pipe().is_some()
    }

    /// Waits (bounded) until the first connection is up.
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

    /// Stops reconnecting and closes the connection.
    pub fn stop(&self) {
        self.inner.stop.set();
        if let Some(pipe) = self.inner.pipe.borrow_mut().take() {
            pipe.kill(conn::SHUTTING_DOWN);
        }
    }

    fn live_pipe(&self) -> Option<Rc<Pipe>> {
        self.inner
            .pipe
            .borrow()
            .as_ref()
            .filter(|p| !p.is_dead())
            .cloned()
    }

    /// Sends one command and waits (bounded) for its reply. A Redis error
    /// reply comes back as `Ok(Value::ServerError)` for the caller to judge.
    pub async fn query(&self, cmd: &Cmd) -> Result<Value> {
        let pipe = self.pipe_with_room()?;
        let reply = pipe.send(cmd);
        self.reply(&pipe, reply, self.inner.timeout).await
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

    /// Waits (bounded by `timeout`) for one reply queued on `pipe`.
    async fn reply(
        &self,
        pipe: &Pipe,
        reply: local_sync::oneshot::Receiver<conn::Reply>,
        timeout: Duration,
    ) -> Result<Value> {
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

    /// Runs a script with EVALSHA; on NOSCRIPT resends it with EVAL (which
    /// also caches it). `args` adds the keys and then the arguments; it is
    /// given the fence of the node the call goes to ('' on a single node).
    pub async fn eval(
        &self,
        script: &Script,
        keys: usize,
        args: impl Fn(&mut Cmd, &str),
    ) -> Result<Value> {
        let fence = "";
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(keys);
        args(&mut cmd, fence);
        match self.query(&cmd).await? {
            Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                tracing::info!(script = script.name, "NOSCRIPT: reloading script");
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(script.body).arg(keys);
                args(&mut cmd, fence);
                server_reply(self.query(&cmd).await?)
            }
            other => server_reply(other),
        }
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
        script: &Script,
        keys: usize,
        args: impl Fn(&mut Cmd, &str),
        replicas: u32,
        wait: Duration,
    ) -> Result<(Value, Confirmation)> {
        // `WAIT n 0` would block forever.
        let wait_ms = wait.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
        let mut wait_cmd = redis::cmd("WAIT");
        wait_cmd.arg(replicas).arg(wait_ms);
        // Redis answers the WAIT at its timeout at the latest: its reply may
        // take that long on top of the usual bound.
        let wait_bound = self.inner.timeout + Duration::from_millis(wait_ms);
        let fence = "";
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(keys);
        args(&mut cmd, fence);
        for attempt in 0..2 {
            let pipe = self.pipe_with_room()?;
            let script_reply = pipe.send(&cmd);
            let wait_reply = pipe.send(&wait_cmd);
            let value = self.reply(&pipe, script_reply, self.inner.timeout).await?;
            let confirmed = Confirmation {
                client: self.clone(),
                pipe,
                reply: wait_reply,
                bound: wait_bound,
            };
            match value {
                Value::ServerError(e)
                    if attempt == 0 && e.kind() == Some(ServerErrorKind::NoScript) =>
                {
                    tracing::info!(script = script.name, "NOSCRIPT: reloading script");
                    cmd = redis::cmd("EVAL");
                    cmd.arg(script.body).arg(keys);
                    args(&mut cmd, fence);
                }
                other => return Ok((server_reply(other)?, confirmed)),
            }
        }
        Err(Error::new(ErrorKind::RedisProtocol, "script not loaded"))
    }

    /// PING, for health checks.
    pub async fn ping(&self) -> Result<()> {
        match server_reply(self.query(&redis::cmd("PING")).await?)? {
            Value::SimpleString(_) | Value::Okay => Ok(()),
            _ => Err(Error::new(
                ErrorKind::RedisProtocol,
                "unexpected PING reply",
            )),
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
        let value = self
            .client
            .reply(&self.pipe, self.reply, self.bound)
            .await?;
        match server_reply(value)? {
            Value::Int(n) => Ok(n),
            _ => Err(Error::new(
                ErrorKind::RedisProtocol,
                "unexpected WAIT reply",
            )),
        }
    }
}

/// A blocking Redis connection for the threads that may block (writer,
/// rotator, checker; never a core), with connecting and every read and write
/// bounded by the given timeouts.
pub fn blocking_connection(
    client: &redis::Client,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(connect_timeout)?;
    con.set_read_timeout(Some(io_timeout))?;
    con.set_write_timeout(Some(io_timeout))?;
    Ok(con)
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

/// Keeps one connection open: connects, waits for it to die, reconnects
/// with exponential backoff (50 ms doubling to 2 s), until stopped.
async fn keep_connected(inner: std::rc::Weak<Inner>) {
    let mut backoff = Duration::from_millis(50);
    let mut was_down_logged = false;
    loop {
        let Some(client) = inner.upgrade() else {
            return;
        };
        if client.stop.is_set() {
            return;
        }
        let result = conn::open(&client.target, &client.scripts, client.timeout).await;
        match result {
            Ok(pipe) => {
                if was_down_logged {
                    tracing::info!("redis connection restored");
                }
                was_down_logged = false;
                backoff = Duration::from_millis(50);
                *client.pipe.borrow_mut() = Some(pipe.clone());
                let stop = client.stop.clone();
                drop(client);
                monoio::select! {
                    _ = pipe.closed() => {}
                    _ = stop.wait() => { pipe.kill(conn::SHUTTING_DOWN); return; }
                }
            }
            Err(e) => {
                if !was_down_logged {
                    tracing::warn!(error = %e, "redis unavailable; retrying with backoff");
                    was_down_logged = true;
                }
                let stop = client.stop.clone();
                drop(client);
                monoio::select! {
                    _ = monoio::time::sleep(backoff) => {}
                    _ = stop.wait() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Reads a Lua reply's element as text.
pub fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Reads a Lua reply (an array) as a list of strings.
pub fn texts(value: &Value) -> Option<Vec<&str>> {
    match value {
        Value::Array(items) => items.iter().map(text).collect(),
        _ => None,
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
    fn lua_replies_read_as_text() {
        let v = Value::Array(vec![
            Value::BulkString(b"ok".to_vec()),
            Value::BulkString(b"1-abc".to_vec()),
        ]);
        assert_eq!(texts(&v), Some(vec!["ok", "1-abc"]));
        assert_eq!(texts(&Value::Int(1)), None);
    }
}
