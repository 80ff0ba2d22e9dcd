//! One client connection: read, parse every complete request in the buffer,
//! answer them in order (pipelining), write all answers in one write, repeat.
//! Idle and read timeouts close slow or silent clients; shutdown closes idle
//! connections at once and busy ones after their current batch.

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::request::{ParseError, parse_head};
use super::response::write_response;
use super::{Handler, Limits};
use crate::event::Event;
use crate::net::read_append;

const READ_CHUNK: usize = 16 * 1024;
/// Responses buffered before they are written even if more requests are parsed.
const MAX_BATCH: usize = 64;

pub async fn serve<H: Handler>(
    mut stream: TcpStream,
    handler: &H,
    limits: &Limits,
    shutdown: &Event,
) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut body: Vec<u8> = Vec::with_capacity(1024);
    let mut request_started: Option<std::time::Instant> = None;

    loop {
        // Answer every complete request already buffered.
        let mut consumed = 0;
        let mut answered = 0;
        let mut close = false;
        while answered < MAX_BATCH && consumed < buf.len() {
            let pending = &buf[consumed..];
            let parsed = parse_head(pending, limits);
            match parsed {
                Ok(Some(head)) => {
                    let total = head.head_len + head.body_len;
                    if pending.len() < total {
                        break; // body still arriving
                    }
                    body.clear();
                    let request_body = &pending[head.head_len..total];
                    let response = handler.handle(&head, request_body, &mut body).await;
                    close = !head.keep_alive || shutdown.is_set();
                    write_response(&mut out, &response, &body, head.request_id, close);
                    consumed += total;
                    answered += 1;
                    if close {
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    body.clear();
                    let response = handler.reject(error, &mut body);
                    write_response(&mut out, &response, &body, None, true);
                    close = true;
                    break;
                }
            }
        }
        if consumed > 0 {
            buf.drain(..consumed);
        }
        request_started = if buf.is_empty() {
            None
        } else if consumed > 0 {
            Some(std::time::Instant::now())
        } else {
            request_started.or_else(|| Some(std::time::Instant::now()))
        };

        if !out.is_empty() {
            let (res, written) = stream.write_all(out).await;
            out = written;
            out.clear();
            if res.is_err() {
                return;
            }
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        if answered == MAX_BATCH {
            continue; // more pipelined requests may already be buffered
        }
        if shutdown.is_set() && buf.is_empty() {
            return;
        }

        // Read more: idle clients get the idle timeout, a half-sent request
        // what is left of the read timeout.
        let wait = match request_started {
            None => limits.idle_timeout,
            Some(started) => match limits.read_timeout.checked_sub(started.elapsed()) {
                Some(left) => left,
                None => return,
            },
        };
        let read = monoio::time::timeout(wait, read_append(&mut stream, buf, READ_CHUNK / 2));
        let result = if request_started.is_none() {
            monoio::select! {
                r = read => Some(r),
                _ = shutdown.wait() => None,
            }
        } else {
            Some(read.await)
        };
        match result {
            Some(Ok((Ok(n), b))) if n > 0 => buf = b,
            _ => return, // EOF, error, timeout or shutdown while idle
        }
    }
}

/// Answers a connection the core has no room for with 503 and closes it,
/// spending at most a second on it.
pub async fn refuse(mut stream: TcpStream) {
    let mut out = Vec::with_capacity(256);
    let mut body = Vec::with_capacity(128);
    super::response::error_body(
        &mut body,
        "overloaded",
        "too many connections; retry shortly",
    );
    let mut head = super::ResponseHead::json(503);
    head.retry_after = Some(1);
    write_response(&mut out, &head, &body, None, true);
    let write = async {
        let (res, _) = stream.write_all(out).await;
        if res.is_ok() {
            let _ = stream.shutdown().await;
        }
    };
    let _ = monoio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

/// Status and code for a request that could not be parsed.
pub fn parse_error_status(error: ParseError) -> (u16, &'static str, &'static str) {
    match error {
        ParseError::Malformed => (400, "bad_request", "malformed HTTP request"),
        ParseError::RequestLineTooLarge => (
            431,
            "request_line_too_large",
            "request line exceeds the limit",
        ),
        ParseError::HeadersTooLarge => (
            431,
            "headers_too_large",
            "request line and headers exceed the limit",
        ),
        ParseError::BodyTooLarge => (413, "body_too_large", "request body exceeds the limit"),
        ParseError::UnsupportedTransferEncoding => (
            501,
            "unsupported_transfer_encoding",
            "Transfer-Encoding is not supported; send Content-Length",
        ),
    }
}
