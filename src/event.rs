//! A single-threaded async event for tasks of one core: a flag that tasks
//! can wait on, set from any task of the same runtime. Used to wake the Redis
//! writer task, to signal a dead connection, and to signal shutdown to every
//! connection of a core. A waiter's slot is freed when its future is dropped,
//! so thousands of short-lived waiters (one per idle read) cost nothing once
//! they are gone.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Clone, Default)]
pub struct Event {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    set: Cell<bool>,
    waiters: RefCell<Waiters>,
}

/// Wakers by slot; a slot lives as long as its `Wait` future.
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Event {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        if !self.inner.set.replace(true) {
            // One waker at a time, each taken out before it is woken: no
            // list is built (this runs per request), and a waker that runs
            // code finds the waiters unborrowed.
            let mut slot = 0;
            loop {
                let waker = {
                    let mut waiters = self.inner.waiters.borrow_mut();
                    let Some(entry) = waiters.slots.get_mut(slot) else {
                        break;
                    };
                    entry.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
                slot += 1;
            }
        }
    }

    /// Clears the flag (for events that are waited on again and again).
    pub fn reset(&self) {
        self.inner.set.set(false);
    }

    pub fn is_set(&self) -> bool {
        self.inner.set.get()
    }

    /// Resolves once the flag is set.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            event: self,
            slot: None,
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        let waiters = self.inner.waiters.borrow();
        waiters.slots.len() - waiters.free.len()
    }
}

/// The future of `Event::wait`.
pub struct Wait<'a> {
    event: &'a Event,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.is_set() {
            return Poll::Ready(());
        }
        let mut waiters = self.event.inner.waiters.borrow_mut();
        match self.slot {
            Some(slot) => match &mut waiters.slots[slot] {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                entry => *entry = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let slot = match waiters.free.pop() {
                    Some(slot) => {
                        waiters.slots[slot] = waker;
                        slot
                    }
                    None => {
                        waiters.slots.push(waker);
                        waiters.slots.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            let mut waiters = self.event.inner.waiters.borrow_mut();
            waiters.slots[slot] = None;
            waiters.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(fut: Pin<&mut Wait<'_>>, waker: &Arc<CountingWaker>) -> Poll<()> {
        let waker = Waker::from(waker.clone());
        fut.poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn dropped_waiters_free_their_slot() {
        let event = Event::new();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        for _ in 0..1000 {
            let mut wait = event.wait();
            assert!(poll(Pin::new(&mut wait), &waker).is_pending());
        }
        assert_eq!(event.waiting(), 0);
        assert!(event.inner.waiters.borrow().slots.len() <= 1);
    }

    #[test]
    fn set_wakes_every_waiter_once() {
        let event = Event::new();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut a = event.wait();
        let mut b = event.wait();
        assert!(poll(Pin::new(&mut a), &waker).is_pending());
        assert!(poll(Pin::new(&mut b), &waker).is_pending());
        assert!(poll(Pin::new(&mut a), &waker).is_pending()); // re-poll keeps one slot
        assert_eq!(event.waiting(), 2);
        event.set();
        assert_eq!(waker.0.load(Ordering::Relaxed), 2);
        assert!(poll(Pin::new(&mut a), &waker).is_ready());
        assert!(poll(Pin::new(&mut b), &waker).is_ready());
        event.reset();
        let mut c = event.wait();
        assert!(poll(Pin::new(&mut c), &waker).is_pending());
    }
}
