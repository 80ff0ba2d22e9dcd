//! The same minimal 404 server as `monoio_http_reference`, but speaking HTTP
//! through flashsale's own layer (`src/http`: httparse plus our response
//! writer and connection loop), included by path. Comparing the two isolates
//! the codec and connection loop from the rest of the server (Redis client,
//! writer thread, metrics). See bench/codec/README.md.
//!
//!     cargo build --release --example httparse_reference
//!     target/release/examples/httparse_reference 127.0.0.1:8082 1

#![allow(dead_code)]

#[path = "../src/event.rs"]
mod event;
#[path = "../src/http/mod.rs"]
mod http;
#[path = "../src/net.rs"]
mod net;

use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::{ListenerOpts, TcpListener};

use crate::http::request::ParseError;
use crate::http::response::{ResponseHead, error_body};
use crate::http::{Handler, Limits, RequestHead};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Answers every request as flashsale answers an unknown path.
struct NotFound;

impl Handler for NotFound {
    async fn handle(
        &self,
        _head: &RequestHead<'_>,
        _body: &[u8],
        out: &mut Vec<u8>,
    ) -> ResponseHead {
        error_body(out, "not_found", "no such path");
        ResponseHead::json(404)
    }

    fn reject(&self, error: ParseError, out: &mut Vec<u8>) -> ResponseHead {
        let (status, code, message) = http::conn::parse_error_status(error);
        error_body(out, code, message);
        ResponseHead::json(status)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8082".into())
        .parse()
        .expect("ADDR must be ip:port");
    let threads: usize = args
        .next()
        .map(|t| t.parse().expect("THREADS must be a number"))
        .unwrap_or(1);
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let pin = (!core_ids.is_empty()).then(|| core_ids[index % core_ids.len()]);
            std::thread::Builder::new()
                .name(format!("httparse-core-{index}"))
                .spawn(move || {
                    if let Some(core) = pin {
                        core_affinity::set_for_current(core);
                    }
                    // The same io_uring setup as flashsale's cores.
                    let mut urb = io_uring::IoUring::builder();
                    urb.setup_coop_taskrun();
                    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .uring_builder(urb)
                        .enable_timer()
                        .with_entries(4096)
                        .build()
                        .expect("io_uring runtime");
                    runtime.block_on(accept_loop(addr));
                })
                .expect("spawn core thread")
        })
        .collect();
    eprintln!("httparse reference listening on {addr} with {threads} io_uring thread(s)");
    for handle in handles {
        let _ = handle.join();
    }
}

async fn accept_loop(addr: SocketAddr) {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    let listener = TcpListener::bind_with_config(addr, &opts).expect("bind");
    let limits = std::rc::Rc::new(Limits::default());
    let shutdown = event::Event::new();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let (limits, shutdown) = (limits.clone(), shutdown.clone());
                monoio::spawn(async move {
                    http::conn::serve(stream, &NotFound, &limits, &shutdown).await;
                });
            }
            Err(_) => monoio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}
