//! HTTP/1.1 over monoio: bytes ⇄ requests and responses, limits, keep-alive
//! and pipelining. Knows nothing of sales: it hands each request to a
//! `Handler` and writes back what the handler answers.

pub mod conn;
pub mod request;
pub mod response;

use std::time::Duration;

pub use request::RequestHead;
pub use response::ResponseHead;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match bytes {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// Limits on what a client may send and how slowly, and on what it may leave unread.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_line_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// Longest wait for the first byte of the next request on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Longest time from a request's first byte to its last.
    pub read_timeout: Duration,
    /// Answers waiting to be sent past which a connection's next requests are
    /// not parsed until the client has read them (one answer may exceed it).
    pub max_output_bytes: usize,
    /// Longest a client may go without taking any of its pending answers; then it is closed.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line_bytes: 4096,
            max_header_bytes: 8192,
            max_headers: 64,
            max_body_bytes: 16 * 1024,
            idle_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(10),
            max_output_bytes: 64 * 1024,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// What serves parsed requests. One per core; not `Send`.
pub trait Handler {
    /// Answers one request: writes the body into `body` (empty on entry) and
    /// returns the status and headers.
    fn handle(
        &self,
        head: &RequestHead<'_>,
        body: &[u8],
        out_body: &mut Vec<u8>,
    ) -> impl std::future::Future<Output = ResponseHead>;

    /// Answers a request that could not be parsed (the connection then closes).
    fn reject(&self, error: request::ParseError, out_body: &mut Vec<u8>) -> ResponseHead;
}
