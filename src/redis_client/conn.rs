//! One pipelined Redis connection on a monoio runtime. Callers append packed
//! commands to a shared buffer and queue a reply slot; a writer task sends
//! whatever piled up in one write, a reader task cuts replies into frames and
//! hands them, unparsed, to the slots in order. A failure on either side kills the pipe:
//! every waiting caller gets an error and the client reconnects.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use local_sync::oneshot;
use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use redis::Value;

use super::RedisTarget;
use super::resp::{Frame, frame_len};
use super::scripts::Scripts;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::net::read_append;

const READ_CHUNK: usize = 64 * 1024;
/// The reason given to `Pipe::kill` when the client is stopped on purpose.
pub const SHUTTING_DOWN: &str = "shutting down";

pub type Reply = Result<Frame>;

/// The shared state of one live connection.
pub struct Pipe {
    out: RefCell<Vec<u8>>,
    pending: RefCell<VecDeque<oneshot::Sender<Reply>>>,
    has_output: Event,
    dead: Event,
    consecutive_timeouts: Cell<u32>,
}

impl Pipe {
    fn new() -> Rc<Self> {
        Rc::new(Pipe {
            out: RefCell::new(Vec::with_capacity(READ_CHUNK)),
            pending: RefCell::new(VecDeque::new()),
            has_output: Event::new(),
            dead: Event::new(),
            consecutive_timeouts: Cell::new(0),
        })
    }

    pub fn is_dead(&self) -> bool {
        self.dead.is_set()
    }

    /// Queues one command; the receiver yields its reply.
    pub fn send(&self, cmd: &redis::Cmd) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        cmd.write_packed_command(&mut self.out.borrow_mut());
        self.pending.borrow_mut().push_back(tx);
        self.has_output.set();
        rx
    }

    /// Replies still owed to callers.
    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }

    pub fn note_timeout(&self, limit: u32) {
        let n = self.consecutive_timeouts.get() + 1;
        self.consecutive_timeouts.set(n);
        if n >= limit {
            self.kill("replies timed out");
        }
    }

    pub fn note_reply(&self) {
        self.consecutive_timeouts.set(0);
    }

    /// Marks the pipe dead and fails every waiting caller.
    pub fn kill(&self, why: &'static str) {
        if self.dead.is_set() {
            return;
        }
        if why == SHUTTING_DOWN {
            tracing::debug!("redis connection closed for shutdown");
        } else {
            tracing::warn!(reason = why, "redis connection lost");
        }
        self.dead.set();
        self.out.borrow_mut().clear();
        for tx in self.pending.borrow_mut().drain(..) {
            let _ = tx.send(Err(Error::new(ErrorKind::RedisUnavailable, why)));
        }
    }

    /// Resolves when the pipe has died.
    pub async fn closed(&self) {
        self.dead.wait().await
    }

    fn complete(&self, reply: Reply) -> bool {
        match self.pending.borrow_mut().pop_front() {
            Some(tx) => {
                // A caller that timed out has dropped its receiver: the reply is discarded.
                let _ = tx.send(reply);
                true
            }
            None => false,
        }
    }
}

/// Connects, authenticates, selects the database and loads the scripts, then
/// starts the reader and writer tasks.
pub async fn open(target: &RedisTarget, scripts: &Scripts, timeout: Duration) -> Result<Rc<Pipe>> {
    let connect = TcpStream::connect((target.host.as_str(), target.port));
    let mut stream = match monoio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Error::with_cause(ErrorKind::RedisUnavailable, "connect", e)),
        Err(_) => return Err(Error::new(ErrorKind::RedisUnavailable, "connect timed out")),
    };
    let _ = stream.set_nodelay(true);

    let mut hello = Vec::new();
    let mut expected = 0;
    if let Some(password) = &target.password {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = &target.username {
            auth.arg(user);
        }
        auth.arg(password).write_packed_command(&mut hello);
        expected += 1;
    }
    redis::cmd("SELECT")
        .arg(target.db)
        .write_packed_command(&mut hello);
    expected += 1;
    for script in scripts.all() {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script.body)
            .write_packed_command(&mut hello);
        expected += 1;
    }
    match monoio::time::timeout(timeout, handshake(&mut stream, hello, expected)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::RedisUnavailable,
                "handshake timed out",
            ));
        }
    }

    let pipe = Pipe::new();
    let (reader, writer) = stream.into_split();
    monoio::spawn(read_loop(pipe.clone(), reader));
    monoio::spawn(write_loop(pipe.clone(), writer));
    Ok(pipe)
}

async fn handshake(stream: &mut TcpStream, hello: Vec<u8>, expected: usize) -> Result<()> {
    let (res, _) = stream.write_all(hello).await;
    res.map_err(|e| Error::with_cause(ErrorKind::RedisUnavailable, "handshake write", e))?;
    let mut buf = Vec::with_capacity(4096);
    let mut start = 0;
    let mut seen = 0;
    while seen < expected {
        match frame_len(&buf[start..]) {
            Ok(Some(n)) => {
                let value = redis::parse_redis_value(&buf[start..start + n])
                    .map_err(|e| Error::with_cause(ErrorKind::RedisProtocol, "handshake", e))?;
                if let Value::ServerError(e) = value {
                    return Err(Error::with_cause(
                        ErrorKind::RedisUnavailable,
                        "handshake refused",
                        redis::RedisError::from(e),
                    ));
                }
                start += n;
                seen += 1;
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(Error::with_cause(ErrorKind::RedisProtocol, "handshake", e)),
        }
        let (res, b) = read_append(stream, buf, 4096).await;
        buf = b;
        match res {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::RedisUnavailable,
                    "closed in handshake",
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Error::with_cause(
                    ErrorKind::RedisUnavailable,
                    "handshake read",
                    e,
                ));
            }
        }
    }
    Ok(())
}

async fn read_loop(pipe: Rc<Pipe>, mut reader: OwnedReadHalf<TcpStream>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0;
    loop {
        loop {
            match frame_len(&buf[start..]) {
                Ok(Some(n)) => {
                    let reply = Frame::new(&buf[start..start + n]);
                    start += n;
                    if !pipe.complete(Ok(reply)) {
                        pipe.kill("reply without a request");
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    pipe.kill("malformed reply");
                    return;
                }
            }
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
        } else if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        monoio::select! {
            (res, b) = read_append(&mut reader, buf, READ_CHUNK / 4) => {
                buf = b;
                match res {
                    Ok(0) => { pipe.kill("closed by redis"); return; }
                    Ok(_) => {}
                    Err(_) => { pipe.kill("read failed"); return; }
                }
            }
            _ = pipe.closed() => return,
        }
    }
}

async fn write_loop(pipe: Rc<Pipe>, mut writer: OwnedWriteHalf<TcpStream>) {
    let mut spare: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        monoio::select! {
            _ = pipe.has_output.wait() => {}
            _ = pipe.closed() => return,
        }
        if pipe.is_dead() {
            return;
        }
        pipe.has_output.reset();
        let batch = std::mem::replace(&mut *pipe.out.borrow_mut(), spare);
        if batch.is_empty() {
            spare = batch;
            continue;
        }
        let (res, mut written) = writer.write_all(batch).await;
        if res.is_err() {
            pipe.kill("write failed");
            return;
        }
        written.clear();
        spare = written;
    }
}
