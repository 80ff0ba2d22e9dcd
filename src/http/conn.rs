//! One client connection: read, parse every complete request in the buffer,
//! answer them in order (pipelining), write all answers in one write, repeat.
//! Idle and read timeouts close slow or silent clients; shutdown closes idle
//! connections at once and busy ones after their current batch.
//!
//! What a connection holds is bounded: no further requests are parsed while
//! its unsent answers exceed the output bound, and no more is read until they
//! are written, and the kernel's send buffer is fixed at the same bound; a
//! client that takes none of them for the write timeout is closed; buffers that grew for a big request or answer shrink back (the
//! answer's scratch buffer at once, the others before the connection waits
//! for its next request).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use monoio::buf::IoBuf;
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
/// Capacity a buffer keeps while its connection waits for the next request;
/// past it (a big answer, a big request) it is shrunk back.
const KEPT_CAPACITY: usize = 16 * 1024;

pub async fn serve<H: Handler>(
    mut stream: TcpStream,
    handler: &H,
    limits: &Limits,
    shutdown: &Event,
) {
    let _ = stream.set_nodelay(true);
    bound_send_buffer(&stream, limits.max_output_bytes);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut body: Vec<u8> = Vec::with_capacity(1024);
    let mut request_started: Option<std::time::Instant> = None;
    // One timer for reads and one for writes, each moved forward for every
    // read or write: a deadline that only moves later is a field update in
    // monoio's timer wheel, where a timer per operation was a registration
    // and a removal each time.
    let mut read_timer = std::pin::pin!(monoio::time::sleep(limits.idle_timeout));
    let mut write_timer = std::pin::pin!(monoio::time::sleep(limits.write_timeout));

    loop {
        // Answer every complete request already buffered.
        let mut consumed = 0;
        let mut answered = 0;
        let mut close = false;
        while answered < MAX_BATCH && out.len() < limits.max_output_bytes && consumed < buf.len() {
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
                    // A big answer is copied out; its scratch buffer is not kept
                    // for a client that may be slow to read it.
                    shrink_to_kept(&mut body);
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

        // Parsing stopped short of the buffer's end: the batch or the output
        // bound is full, and the rest waits until this output is written.
        let stopped_short = answered == MAX_BATCH || out.len() >= limits.max_output_bytes;
        if !out.is_empty() {
            match write_all_or_stall(&mut stream, out, limits.write_timeout, write_timer.as_mut())
                .await
            {
                Some(mut written) => {
                    written.clear();
                    out = written;
                }
                None => return, // error, or no progress for the write timeout
            }
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        if stopped_short {
            continue; // more pipelined requests may already be buffered
        }
        if shutdown.is_set() && buf.is_empty() {
            return;
        }
        shrink_to_kept(&mut out);
        if buf.len() <= KEPT_CAPACITY / 2 {
            shrink_to_kept(&mut buf);
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
        read_timer
            .as_mut()
            .reset(monoio::time::Instant::now() + wait);
        let idle = request_started.is_none();
        let result = monoio::select! {
            r = read_append(&mut stream, buf, READ_CHUNK / 2) => Some(r),
            _ = read_timer.as_mut() => None,
            _ = shutdown.wait(), if idle => None,
        };
        match result {
            Some((Ok(n), b)) if n > 0 => buf = b,
            _ => return, // EOF, error, timeout or shutdown while idle
        }
    }
}

/// Writes all of `out`; `None` (the connection is to be closed) on an error
/// or when the client took nothing for `stall`. The timeout applies to each
/// write (`timer` is moved to `stall` from its start), so a slow reader that
/// keeps taking some bytes is not cut off.
async fn write_all_or_stall(
    stream: &mut TcpStream,
    mut out: Vec<u8>,
    stall: Duration,
    mut timer: std::pin::Pin<&mut monoio::time::Sleep>,
) -> Option<Vec<u8>> {
    let mut sent = 0;
    while sent < out.len() {
        timer.as_mut().reset(monoio::time::Instant::now() + stall);
        let (result, rest) = monoio::select! {
            written = stream.write(out.slice(sent..)) => written,
            _ = timer.as_mut() => return None,
        };
        out = rest.into_inner();
        match result {
            Ok(n) if n > 0 => sent += n,
            _ => return None,
        }
    }
    Some(out)
}

/// Fixes the kernel's send buffer of the connection at `bytes` (Linux
/// doubles it for its bookkeeping) instead of letting it grow, up to 4 MiB
/// with Linux's defaults, for a client that does not read.
fn bound_send_buffer(stream: &TcpStream, bytes: usize) {
    // SAFETY: the descriptor is open for as long as `stream` is borrowed here.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_send_buffer_size(bytes);
}

/// Gives back the memory of a buffer that grew past `KEPT_CAPACITY`.
fn shrink_to_kept(buffer: &mut Vec<u8>) {
    if buffer.capacity() > KEPT_CAPACITY {
        buffer.shrink_to(KEPT_CAPACITY);
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
