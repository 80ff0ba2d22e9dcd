//! A single-threaded async event for tasks of one core: a flag that tasks
//! can wait on, set from any task of the same runtime. Used to wake the Redis
//! writer task, to signal a dead connection, and to signal shutdown.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Clone, Default)]
pub struct Event {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    set: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        if !self.inner.set.replace(true) {
            for waker in self.inner.wakers.borrow_mut().drain(..) {
                waker.wake();
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
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.inner.set.get() {
                Poll::Ready(())
            } else {
                let mut wakers = self.inner.wakers.borrow_mut();
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}
