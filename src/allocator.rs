//! The process's allocator: giving its free memory back to the OS, and (with
//! the `count-allocs` feature, for measurements only) counting what the core
//! threads allocate. The binary's global allocator is mimalloc
//! (`src/main.rs`).
//!
//! mimalloc returns ("purges") freed memory only after a delay (1 s by
//! default, `MIMALLOC_PURGE_DELAY`), and only when the thread that freed it
//! calls into the allocator again after that. A core whose connections all
//! left may allocate nothing more for a long time, so each core calls
//! `give_back_free_memory` every `GIVE_BACK_INTERVAL` instead.

use std::time::Duration;

use crate::event::Event;

#[cfg(feature = "count-allocs")]
pub use counting::Counting;

/// How often a core thread lets mimalloc return its free pages.
pub const GIVE_BACK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs on a core until `shutdown`: every `GIVE_BACK_INTERVAL`, frees the
/// calling thread's empty pages and purges what has been free past the delay.
pub async fn give_back_free_memory(shutdown: Event) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(GIVE_BACK_INTERVAL) => {}
            _ = shutdown.wait() => return,
        }
        // SAFETY: mi_collect only walks and trims the calling thread's heap
        // and the arenas; it takes no pointer and is safe to call at any time.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

/// Marks the calling thread as a core thread: with `count-allocs`, its
/// allocations are counted in `core_allocations`. Without it, does nothing.
pub fn mark_core_thread() {
    #[cfg(feature = "count-allocs")]
    counting::ON_CORE.with(|on| on.set(true));
}

/// Allocations (and reallocations) made on core threads since start, when
/// the binary counts them (`count-allocs`); `None` otherwise.
pub fn core_allocations() -> Option<u64> {
    #[cfg(feature = "count-allocs")]
    return Some(counting::CORE_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed));
    #[cfg(not(feature = "count-allocs"))]
    None
}

/// A global allocator wrapper that counts the core threads' allocations
/// (bench/README.md, "Server CPU per checkout"). A measuring build only: it
/// costs a thread-local read per allocation.
#[cfg(feature = "count-allocs")]
mod counting {
    use std::alloc::{GlobalAlloc, Layout};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};

    pub(super) static CORE_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        pub(super) static ON_CORE: Cell<bool> = const { Cell::new(false) };
    }

    /// Counts, then delegates to `A`.
    pub struct Counting<A>(pub A);

    fn count() {
        // `try_with`: a thread's allocations while its locals are torn down.
        if ON_CORE.try_with(Cell::get).unwrap_or(false) {
            CORE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }

    // SAFETY: every call is passed on unchanged to `A`, a `GlobalAlloc`.
    unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller's contract, passed on.
            unsafe { self.0.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller's contract, passed on.
            unsafe { self.0.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: the caller's contract, passed on.
            unsafe { self.0.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, passed on.
            unsafe { self.0.dealloc(ptr, layout) }
        }
    }
}
