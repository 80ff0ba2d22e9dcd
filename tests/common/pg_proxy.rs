//! A TCP proxy in front of Postgres that loses the answer to one `COMMIT`:
//! once armed, the first transaction that wrote the writer's backlog mark
//! (`INSERT INTO users_backlog`, sent with every checkout batch that may
//! hold new users) has its `COMMIT` passed on to Postgres, which commits
//! it, and then the connection is cut before the answer gets back (the
//! network failing at the worst moment). Everything else is forwarded as it
//! comes, bytes never reordered.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// SSLRequest's code: an untyped message the startup message follows.
const SSL_REQUEST: u32 = 80_877_103;

pub struct CommitCuttingProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    armed: AtomicBool,
    cuts: AtomicUsize,
}

impl CommitCuttingProxy {
    /// Listens on a free local port and forwards to Postgres at `target`
    /// (`host:port`). Starts disarmed.
    pub fn start(target: String) -> CommitCuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Some(server) = target
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .and_then(|a| TcpStream::connect(a).ok())
                else {
                    continue;
                };
                let s = s.clone();
                std::thread::spawn(move || relay(client, server, s));
            }
        });
        CommitCuttingProxy { port, shared }
    }

    /// The next commit of a transaction with a backlog mark loses its answer.
    pub fn arm(&self) {
        self.shared.armed.store(true, Ordering::SeqCst);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

/// One client connection: the server's bytes go back on a thread of their
/// own, dropped once `cut` is set; the client's are read message by
/// message here.
fn relay(mut client: TcpStream, mut server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let cut = Arc::new(AtomicBool::new(false));
    {
        let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
        let cut = cut.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let mut started = false;
    let mut marked = false;
    loop {
        let message = if started {
            read_typed(&mut client)
        } else {
            read_untyped(&mut client)
        };
        let Some(message) = message else { break };
        if !started {
            // The startup message (after an SSLRequest, if any) opens the
            // typed messages.
            started = !(message.len() == 8 && message[4..8] == SSL_REQUEST.to_be_bytes());
        } else {
            let body = &message[5..];
            match message[0] {
                b'P' if contains(body, b"INSERT INTO users_backlog") => marked = true,
                b'Q' if contains(body, b"ROLLBACK") => marked = false,
                b'Q' if contains(body, b"COMMIT")
                    && marked
                    && shared.armed.swap(false, Ordering::SeqCst) =>
                {
                    cut.store(true, Ordering::SeqCst);
                    let _ = server.write_all(&message);
                    // Postgres commits, its answer is dropped, then the
                    // connection goes.
                    std::thread::sleep(Duration::from_millis(300));
                    shared.cuts.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                b'Q' if contains(body, b"COMMIT") => marked = false,
                _ => {}
            }
        }
        if server.write_all(&message).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A message without a type byte: length (4 bytes, itself included), body.
fn read_untyped(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len).ok()?;
    let n = u32::from_be_bytes(len) as usize;
    let mut message = len.to_vec();
    message.resize(n.max(4), 0);
    from.read_exact(&mut message[4..]).ok()?;
    Some(message)
}

/// A typed message: type byte, length (4 bytes, itself included), body.
fn read_typed(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 5];
    from.read_exact(&mut head).ok()?;
    let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut message = head.to_vec();
    message.resize(1 + n.max(4), 0);
    from.read_exact(&mut message[5..]).ok()?;
    Some(message)
}
