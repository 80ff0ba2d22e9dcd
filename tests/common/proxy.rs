//! A TCP proxy in front of Redis that can hold Redis's replies back: the
//! server's commands still reach Redis at once and run there, only the
//! answers wait until they are released (a slow network on the way back).
//! Every connection through the proxy is held alike; bytes are never lost
//! or reordered.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a held or idle forwarding thread looks at its flags.
const POLL: Duration = Duration::from_millis(10);

pub struct ReplyHoldingProxy {
    pub port: u16,
    hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl ReplyHoldingProxy {
    /// Listens on a free local port and forwards to Redis on `redis_port`.
    pub fn start(redis_port: u16) -> ReplyHoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking accept");
        let port = listener.local_addr().expect("proxy address").port();
        let hold = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hold.clone(), stop.clone());
        std::thread::spawn(move || accept_loop(listener, redis_port, h, s));
        ReplyHoldingProxy { port, hold, stop }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// From now on, replies wait in the proxy (in the kernel's buffers).
    pub fn hold_replies(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// Sends every held reply on, in order, and stops holding.
    pub fn release_replies(&self) {
        self.hold.store(false, Ordering::SeqCst);
    }
}

impl Drop for ReplyHoldingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    redis_port: u16,
    hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let Ok(redis) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = redis.set_nodelay(true);
                let (c2, r2) = (
                    client.try_clone().expect("clone client"),
                    redis.try_clone().expect("clone redis"),
                );
                let never = Arc::new(AtomicBool::new(false));
                let s = stop.clone();
                std::thread::spawn(move || forward(client, redis, never, s));
                let (h, s) = (hold.clone(), stop.clone());
                std::thread::spawn(move || forward(r2, c2, h, s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Copies `from` to `to` while `hold` is not set, until either side closes
/// or the proxy stops.
fn forward(mut from: TcpStream, mut to: TcpStream, hold: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if hold.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
