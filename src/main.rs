//! The `flashsale` binary: the command line only. Everything it runs lives in
//! the library (`flashsale::app`).

use std::process::ExitCode;

use clap::Parser;

/// The allocator of the whole process: the cores allocate per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    flashsale::app::run(flashsale::config::Cli::parse())
}
