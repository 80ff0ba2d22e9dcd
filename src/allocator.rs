//! Giving the allocator's free memory back to the OS. The binary's global
//! allocator is mimalloc (`src/main.rs`).
//!
//! mimalloc returns ("purges") freed memory only after a delay (1 s by
//! default, `MIMALLOC_PURGE_DELAY`), and only when the thread that freed it
//! calls into the allocator again after that. A core whose connections all
//! left may allocate nothing more for a long time, so each core calls
//! `give_back_free_memory` every `GIVE_BACK_INTERVAL` instead.

use std::time::Duration;

use crate::event::Event;

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
