//! The one server shell both codec references run in (bench/codec): N
//! threads, each pinned, each a monoio io_uring runtime set up as flashsale's
//! cores are (COOP_TASKRUN, 4096 entries, timer on), each with its own
//! SO_REUSEPORT listener, spawning `serve` per connection. Only `serve`, the
//! HTTP codec and connection loop, differs between the two references.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::{ListenerOpts, TcpListener, TcpStream};

/// Parses `[ADDR] [THREADS]` from the command line and serves forever.
pub fn run<S, F>(label: &str, default_addr: &str, serve: S)
where
    S: Fn(TcpStream) -> F + Copy + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| default_addr.into())
        .parse()
        .expect("ADDR must be ip:port");
    let threads: usize = args
        .next()
        .map(|t| t.parse().expect("THREADS must be a number"))
        .unwrap_or(1);
    assert!(
        monoio::utils::detect_uring(),
        "io_uring is not available; the codec references run on io_uring only"
    );
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let pin = (!core_ids.is_empty()).then(|| core_ids[index % core_ids.len()]);
            std::thread::Builder::new()
                .name(format!("{label}-core-{index}"))
                .spawn(move || {
                    if let Some(core) = pin {
                        core_affinity::set_for_current(core);
                    }
                    let mut urb = io_uring::IoUring::builder();
                    urb.setup_coop_taskrun();
                    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .uring_builder(urb)
                        .enable_timer()
                        .with_entries(4096)
                        .build()
                        .expect("io_uring runtime");
                    runtime.block_on(accept_loop(addr, serve));
                })
                .expect("spawn core thread")
        })
        .collect();
    eprintln!("{label} listening on {addr} with {threads} io_uring thread(s)");
    for handle in handles {
        let _ = handle.join();
    }
}

async fn accept_loop<S, F>(addr: SocketAddr, serve: S)
where
    S: Fn(TcpStream) -> F,
    F: Future<Output = ()> + 'static,
{
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    let listener = TcpListener::bind_with_config(addr, &opts).expect("bind");
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                monoio::spawn(serve(stream));
            }
            Err(_) => monoio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}
