//! Reply slots: where the callers of one core's batcher wait for their
//! replies. A one-shot channel per call would allocate per request; these
//! slots live in one table per batcher and are reused, so a call in flight
//! costs an index. Single-threaded (one core's tasks), like the batcher.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A table of slots, each holding one reply for one waiting caller.
pub struct ReplySlots<T> {
    table: RefCell<Table<T>>,
}

struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
}

enum Slot<T> {
    Free,
    /// A caller waits (its waker, once it has been polled).
    Waiting(Option<Waker>),
    /// The reply is in; the caller has not taken it yet.
    Done(T),
    /// The caller gave up (its future was dropped): the slot is freed when
    /// the reply comes, or when the batcher drops the call.
    Abandoned,
}

impl<T> Default for ReplySlots<T> {
    fn default() -> Self {
        ReplySlots {
            table: RefCell::new(Table {
                slots: Vec::new(),
                free: Vec::new(),
            }),
        }
    }
}

impl<T> ReplySlots<T> {
    /// Takes a slot for a new call; its reply is awaited with `wait`.
    pub fn take(self: &Rc<Self>) -> (usize, Reply<T>) {
        let mut table = self.table.borrow_mut();
        let slot = match table.free.pop() {
            Some(slot) => {
                table.slots[slot] = Slot::Waiting(None);
                slot
            }
            None => {
                table.slots.push(Slot::Waiting(None));
                table.slots.len() - 1
            }
        };
        let reply = Reply {
            slots: self.clone(),
            slot,
            taken: false,
        };
        (slot, reply)
    }

    /// Whether the caller of `slot` still waits for its reply.
    pub fn is_waiting(&self, slot: usize) -> bool {
        matches!(self.table.borrow().slots[slot], Slot::Waiting(_))
    }

    /// Hands `reply` to the caller of `slot` (and wakes it); a caller that
    /// gave up just gets its slot freed.
    pub fn fill(&self, slot: usize, reply: T) {
        let waker = {
            let mut table = self.table.borrow_mut();
            match std::mem::replace(&mut table.slots[slot], Slot::Free) {
                Slot::Waiting(waker) => {
                    table.slots[slot] = Slot::Done(reply);
                    waker
                }
                _ => {
                    table.free.push(slot);
                    None
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Frees the slot of a call that will never be answered because its
    /// caller gave up before it was sent.
    pub fn forget(&self, slot: usize) {
        let mut table = self.table.borrow_mut();
        table.slots[slot] = Slot::Free;
        table.free.push(slot);
    }

    #[cfg(test)]
    fn in_use(&self) -> usize {
        let table = self.table.borrow();
        table.slots.len() - table.free.len()
    }
}

/// The future of one slot's reply. Dropping it before the reply came
/// abandons the slot.
pub struct Reply<T> {
    slots: Rc<ReplySlots<T>>,
    slot: usize,
    taken: bool,
}

impl<T> Future for Reply<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let mut table = this.slots.table.borrow_mut();
        let table = &mut *table;
        match &mut table.slots[this.slot] {
            Slot::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            entry @ Slot::Done(_) => {
                let Slot::Done(reply) = std::mem::replace(entry, Slot::Free) else {
                    unreachable!("matched Done");
                };
                table.free.push(this.slot);
                this.taken = true;
                Poll::Ready(reply)
            }
            Slot::Free | Slot::Abandoned => unreachable!("a reply's slot is its own until taken"),
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut table = self.slots.table.borrow_mut();
        let table = &mut *table;
        match table.slots[self.slot] {
            Slot::Waiting(_) => table.slots[self.slot] = Slot::Abandoned,
            // Answered but never taken: the slot is free again.
            Slot::Done(_) => {
                table.slots[self.slot] = Slot::Free;
                table.free.push(self.slot);
            }
            Slot::Free | Slot::Abandoned => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll<T>(reply: &mut Reply<T>) -> Poll<T> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(reply).poll(&mut cx)
    }

    #[test]
    fn replies_reach_their_callers_and_slots_are_reused() {
        let slots = Rc::new(ReplySlots::default());
        let (a, mut ra) = slots.take();
        let (b, mut rb) = slots.take();
        assert!(poll(&mut ra).is_pending());
        slots.fill(b, "b");
        slots.fill(a, "a");
        assert_eq!(poll(&mut rb), Poll::Ready("b"));
        assert_eq!(poll(&mut ra), Poll::Ready("a"));
        drop((ra, rb));
        assert_eq!(slots.in_use(), 0);
        let (c, _rc) = slots.take();
        assert!(c == a || c == b, "a freed slot is taken again");
    }

    #[test]
    fn callers_that_give_up_free_their_slot() {
        let slots = Rc::new(ReplySlots::default());
        // Gave up, then answered.
        let (a, ra) = slots.take();
        drop(ra);
        assert!(!slots.is_waiting(a));
        slots.fill(a, 1);
        assert_eq!(slots.in_use(), 0);
        // Gave up before it was sent.
        let (b, rb) = slots.take();
        drop(rb);
        slots.forget(b);
        assert_eq!(slots.in_use(), 0);
        // Answered, never taken.
        let (c, rc) = slots.take();
        slots.fill(c, 3);
        drop(rc);
        assert_eq!(slots.in_use(), 0);
    }
}
