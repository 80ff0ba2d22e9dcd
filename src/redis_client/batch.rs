//! Script batching: calls of one script that a core's tasks make while
//! earlier batches are on their way to Redis go out together as one
//! EVALSHA, so Redis pays its per-command cost (parsing, script lookup,
//! the Lua call, the reply) once per batch instead of once per request.
//!
//! Nothing waits for a batch to fill: a call goes out at once when fewer
//! than `max_in_flight` batches are in flight, so an idle server sends
//! batches of one. Under load, calls queue behind the batches in flight and
//! leave together with the next one. The script sees the calls in order and
//! decides each as if it had run alone: the batch is only a transport.
//!
//! The batch's reply (an array with one reply per call, or one string with a
//! line per call: `BatchCall::LINE_REPLY`) is not parsed into a
//! `redis::Value` tree: each caller gets the frame and where its own reply
//! lies in it (`CallReply`), and reads its fields from the bytes. Callers
//! wait in reusable reply slots (`reply_slots`), so a call allocates nothing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Cmd;

use super::RedisClient;
use super::keys::Keys;
use super::reply_slots::ReplySlots;
use super::resp::{self, Elements, Frame, Lines};
use super::scripts::{Script, Scripts};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;

/// One call of a batched script. The script's KEYS are the shared keys then
/// each call's keys; its ARGV the shared arguments then each call's
/// arguments; it answers an array with one reply per call, in order.
pub trait BatchCall: 'static {
    /// Keys each call adds.
    const KEYS_PER_CALL: usize;
    /// Keys the batch shares (written once, by `shared_keys`).
    const SHARED_KEYS: usize;

    fn script(scripts: &Scripts) -> &Script;
    /// Calls share a batch only within one group: one sale, so one hash
    /// slot (`Keys::sale_slot` of the group), and the shared keys and
    /// arguments are the sale's.
    fn group(&self) -> i64;
    /// The shared keys, taken from the batch's first call.
    fn shared_keys(&self, keys: &Keys, cmd: &mut Cmd);
    /// The shared arguments, taken from the batch's first call; `fence` is
    /// the id of the Redis node the batch goes to ('' on a single node),
    /// for scripts that refuse to run on a node other than the one their
    /// sale's state was last reconciled on.
    fn shared_args(&self, keys: &Keys, fence: &str, cmd: &mut Cmd);
    fn keys(&self, keys: &Keys, cmd: &mut Cmd);
    fn args(&self, cmd: &mut Cmd);
    /// Whether the script answers one bulk string with a line of
    /// space-separated fields per call (`\n` between lines) instead of an
    /// array with one reply per call.
    const LINE_REPLY: bool = false;
    /// Whether this reply may be answered only once replicas confirmed the
    /// batch's writes (when the batcher waits for replicas at all).
    fn needs_replicas(_reply: &CallReply) -> bool {
        false
    }
}

/// Batches seen, for metrics: calls each carried, and how long Redis took
/// to answer it.
pub trait BatchObserver {
    fn batch_sent(&self, script: &'static str, calls: usize);
    /// A batch's reply (or error) arrived `elapsed` after it was sent.
    fn batch_answered(&self, script: &'static str, elapsed: Duration);
}

/// A core's batcher for one script.
pub struct Batcher<C: BatchCall> {
    inner: Rc<Inner<C>>,
}

struct Inner<C> {
    redis: RedisClient,
    keys: Arc<Keys>,
    observer: Arc<dyn BatchObserver>,
    queue: RefCell<VecDeque<Queued<C>>>,
    replies: Rc<ReplySlots<Result<CallReply>>>,
    /// Replicas that must confirm a batch (`WAIT`) before a reply that
    /// `needs_replicas` is answered; 0: no WAIT.
    wait_replicas: u32,
    queued: Event,
    in_flight: Cell<usize>,
    batch_done: Event,
    limits: BatchLimits,
}

/// A queued call: the call, the reply slot its caller waits on, when it was queued.
type Queued<C> = (C, usize, Instant);

/// One call's reply: its part of the batch's reply frame.
pub struct CallReply {
    frame: Frame,
    range: Range<usize>,
    /// A line of space-separated fields, not an array frame.
    line: bool,
}

impl CallReply {
    /// The reply's frame, as Redis sent it.
    pub fn bytes(&self) -> &[u8] {
        &self.frame.bytes()[self.range.clone()]
    }

    /// The reply's strings (an array's, or a line's fields) read into `out`
    /// (see `resp::texts`, `resp::fields`): how many there were, `None` for
    /// another shape or more than `out` holds.
    pub fn texts<'a>(&'a self, out: &mut [&'a str]) -> Option<usize> {
        if self.line {
            resp::fields(self.bytes(), out)
        } else {
            resp::texts(self.bytes(), out)
        }
    }
}

/// How calls are grouped.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most calls in one batch.
    pub max_calls: usize,
    /// Most batches of this script in flight per core; a call waits only
    /// when this many are on their way.
    pub max_in_flight: usize,
    /// How long a call waits in all (queue and Redis) before it fails.
    pub timeout: Duration,
}

impl<C: BatchCall> Batcher<C> {
    /// Creates the batcher and starts its sending task on the current runtime.
    pub fn start(
        redis: RedisClient,
        keys: Arc<Keys>,
        limits: BatchLimits,
        wait_replicas: u32,
        observer: Arc<dyn BatchObserver>,
    ) -> Self {
        let inner = Rc::new(Inner {
            redis,
            keys,
            wait_replicas,
            observer,
            queue: RefCell::new(VecDeque::new()),
            replies: Rc::new(ReplySlots::default()),
            queued: Event::new(),
            in_flight: Cell::new(0),
            batch_done: Event::new(),
            limits: BatchLimits {
                max_calls: limits.max_calls.max(1),
                max_in_flight: limits.max_in_flight.max(1),
                ..limits
            },
        });
        monoio::spawn(send_batches(inner.clone()));
        Batcher { inner }
    }

    /// Runs one call in the next batch and returns its reply.
    pub async fn call(&self, call: C) -> Result<CallReply> {
        if !self.inner.redis.can_reach(Keys::sale_slot(call.group())) {
            return Err(Error::new(ErrorKind::RedisUnavailable, "redis is down"));
        }
        let (slot, reply) = self.inner.replies.take();
        self.inner
            .queue
            .borrow_mut()
            .push_back((call, slot, Instant::now()));
        self.inner.queued.set();
        match monoio::time::timeout(self.inner.limits.timeout, reply).await {
            Ok(reply) => reply,
            Err(_) => Err(Error::new(
                ErrorKind::RedisUnavailable,
                "redis call timed out",
            )),
        }
    }
}

/// Sends the queue's calls in batches, at most `max_in_flight` at a time.
async fn send_batches<C: BatchCall>(inner: Rc<Inner<C>>) {
    loop {
        while inner.queue.borrow().is_empty() {
            inner.queued.reset();
            inner.queued.wait().await;
        }
        while inner.in_flight.get() >= inner.limits.max_in_flight {
            inner.batch_done.reset();
            inner.batch_done.wait().await;
        }
        let batch = take_batch(&inner);
        if batch.is_empty() {
            continue;
        }
        inner.in_flight.set(inner.in_flight.get() + 1);
        monoio::spawn(run_batch(inner.clone(), batch));
    }
}

/// The longest run at the queue's front of calls of one group whose callers
/// still wait (a caller that gave up is dropped here, not run).
fn take_batch<C: BatchCall>(inner: &Inner<C>) -> Vec<Queued<C>> {
    let mut queue = inner.queue.borrow_mut();
    let mut batch = Vec::with_capacity(queue.len().min(inner.limits.max_calls));
    while batch.len() < inner.limits.max_calls {
        let Some((call, _, _)) = queue.front() else {
            break;
        };
        if let Some((first, _, _)) = batch.first()
            && call.group() != C::group(first)
        {
            break;
        }
        let queued = queue.pop_front().expect("front exists");
        if inner.replies.is_waiting(queued.1) {
            batch.push(queued);
        } else {
            inner.replies.forget(queued.1);
        }
    }
    batch
}

async fn run_batch<C: BatchCall>(inner: Rc<Inner<C>>, batch: Vec<Queued<C>>) {
    let script = C::script(inner.redis.scripts());
    inner.observer.batch_sent(script.name, batch.len());
    let sent = Instant::now();
    let keys = C::SHARED_KEYS + C::KEYS_PER_CALL * batch.len();
    let slot = Keys::sale_slot(batch[0].0.group());
    let args = |cmd: &mut Cmd, fence: &str| {
        let first = &batch[0].0;
        let keys = &*inner.keys;
        first.shared_keys(keys, cmd);
        for (call, _, _) in &batch {
            call.keys(keys, cmd);
        }
        first.shared_args(keys, fence, cmd);
        for (call, _, _) in &batch {
            call.args(cmd);
        }
    };
    // With replicas to wait for, the WAIT may take what is left of the
    // batch's earliest deadline (its callers give up then).
    let (result, confirmation) = if inner.wait_replicas > 0 {
        let queued = batch.iter().map(|(_, _, at)| *at).min();
        let left = queued.map_or(inner.limits.timeout, |at| {
            inner.limits.timeout.saturating_sub(at.elapsed())
        });
        match inner
            .redis
            .eval_and_wait(slot, script, keys, args, inner.wait_replicas, left)
            .await
        {
            Ok((value, confirmation)) => (Ok(value), Some(confirmation)),
            Err(e) => (Err(e), None),
        }
    } else {
        (inner.redis.eval(slot, script, keys, args).await, None)
    };
    inner.observer.batch_answered(script.name, sent.elapsed());
    let elements = match &result {
        Ok(frame) if C::LINE_REPLY => frame
            .lines()
            .filter(|e| e.len() == batch.len())
            .map(Parts::Lines),
        Ok(frame) => frame
            .elements()
            .filter(|e| e.len() == batch.len())
            .map(Parts::Elements),
        Err(_) => None,
    };
    match (&result, elements) {
        (Ok(frame), Some(elements)) => {
            // Replies that need no confirmation are answered at once; the
            // others once the WAIT answered, 503 when too few replicas
            // confirmed (the script ran: the outcome is stored, a retry
            // replays it).
            let mut unconfirmed = Vec::new();
            let mut replies = elements.map(|range| CallReply {
                frame: frame.clone(),
                range,
                line: C::LINE_REPLY,
            });
            for (_, slot, _) in batch {
                // The reader measured the whole frame, so every element is there.
                let Some(reply) = replies.next() else {
                    inner.replies.fill(
                        slot,
                        Err(Error::new(
                            ErrorKind::RedisProtocol,
                            "unexpected batch reply",
                        )),
                    );
                    continue;
                };
                if confirmation.is_some() && C::needs_replicas(&reply) {
                    unconfirmed.push((slot, reply));
                } else {
                    inner.replies.fill(slot, Ok(reply));
                }
            }
            if let Some(confirmation) = confirmation.filter(|_| !unconfirmed.is_empty()) {
                let wanted = i64::from(inner.wait_replicas);
                let confirmed = confirmation.replicas().await.is_ok_and(|n| n >= wanted);
                for (slot, reply) in unconfirmed {
                    inner.replies.fill(slot, if confirmed {
                        Ok(reply)
                    } else {
                        Err(Error::new(
                            ErrorKind::RedisUnavailable,
                            "too few replicas confirmed the purchase in time; its outcome is unknown",
                        ))
                    });
                }
            }
        }
        (Ok(_), None) => {
            tracing::error!(
                script = script.name,
                "batched script answered the wrong shape"
            );
            for (_, slot, _) in batch {
                inner.replies.fill(
                    slot,
                    Err(Error::new(
                        ErrorKind::RedisProtocol,
                        "unexpected batch reply",
                    )),
                );
            }
        }
        (Err(e), _) => {
            for (_, slot, _) in batch {
                inner.replies.fill(slot, Err(e.shared()));
            }
        }
    }
    inner.in_flight.set(inner.in_flight.get() - 1);
    inner.batch_done.set();
}

/// Where each call's reply lies in a batch's frame.
enum Parts<'a> {
    Elements(Elements<'a>),
    Lines(Lines<'a>),
}

impl Iterator for Parts<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        match self {
            Parts::Elements(e) => e.next(),
            Parts::Lines(l) => l.next(),
        }
    }
}
