//! The `flashsale` binary: the command line only. Everything it runs lives in
//! the library (`flashsale::app`).

use std::process::ExitCode;

use clap::Parser;

/// The allocator of the whole process: the cores allocate per request.
#[cfg(not(feature = "count-allocs"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The same, counting the core threads' allocations (a measuring build:
/// `cargo build --release --features count-allocs`).
#[cfg(feature = "count-allocs")]
#[global_allocator]
static GLOBAL: flashsale::allocator::Counting<mimalloc::MiMalloc> =
    flashsale::allocator::Counting(mimalloc::MiMalloc);

fn main() -> ExitCode {
    flashsale::app::run(flashsale::config::Cli::parse())
}
