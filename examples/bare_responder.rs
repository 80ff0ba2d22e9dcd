//! The ceiling of bench/bench.sh: the least an HTTP server on flashsale's
//! runtime does per request. It runs in the shell the codec references use
//! (examples/shell: one pinned monoio io_uring runtime per thread, set up as
//! the server's cores, each with its own SO_REUSEPORT listener), and its
//! connection loop only reads, finds the end of each request (head, plus a
//! `Content-Length` body when there is one) and answers a fixed small 200 JSON
//! response. Keep-alive and pipelining: the answers to every complete request
//! of one read go out in one write, as the server does. No routing, no limits
//! beyond a cap on one request's size, no timeouts: what is left is the cost
//! of the runtime, the socket calls and the load generator.
//!
//!     cargo build --release --example bare_responder
//!     target/release/examples/bare_responder 127.0.0.1:18081 2

mod shell;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The one answer, sized like a checkout's (~100 bytes of JSON) and with
/// the headers the server sends.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 93\r\n\r\n{\"code\":\"1-00000000000000000000000000000000\",\"sale_id\":1,\"item_id\":1000001,\"items\":[1000001]}";

/// Bytes asked of each read.
const READ_CHUNK: usize = 16 * 1024;
/// Largest request (head and body) accepted; a larger one closes the connection.
const MAX_REQUEST: usize = 64 * 1024;

async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let (res, read) = flashsale::net::read_append(&mut stream, buf, READ_CHUNK / 2).await;
        buf = read;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut start = 0;
        let mut answers = 0;
        while let Some(len) = request_len(&buf[start..]) {
            start += len;
            answers += 1;
        }
        buf.drain(..start);
        if buf.len() > MAX_REQUEST {
            return;
        }
        if answers > 0 {
            out.clear();
            for _ in 0..answers {
                out.extend_from_slice(RESPONSE);
            }
            let (res, written) = stream.write_all(out).await;
            out = written;
            if res.is_err() {
                return;
            }
        }
    }
}

/// Length of the first complete request in `buf` (head, then as many body
/// bytes as its `Content-Length` says), or `None` while it is incomplete.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let len = head.checked_add(content_length(&buf[..head]))?;
    (len <= buf.len()).then_some(len)
}

/// The `Content-Length` of a request head, 0 when absent or unreadable.
fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .skip(1)
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            if !name.eq_ignore_ascii_case(b"content-length") {
                return None;
            }
            std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok()
        })
        .unwrap_or(0)
}

fn main() {
    shell::run("bare responder", "127.0.0.1:18081", serve);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_length_header_matches_its_body() {
        let text = std::str::from_utf8(RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn finds_pipelined_requests_and_bodies() {
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let post = b"POST /b HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc";
        let mut buf = get.to_vec();
        buf.extend_from_slice(post);
        assert_eq!(request_len(&buf), Some(get.len()));
        assert_eq!(request_len(&buf[get.len()..]), Some(post.len()));
        assert_eq!(request_len(&post[..post.len() - 1]), None);
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n"), None);
    }
}
