//! Bytes → one HTTP/1.1 request head (httparse), with the size limits
//! enforced while parsing: what a connection needs to route the request,
//! frame its body and decide keep-alive. Pure, no IO.

use super::{Limits, Method};

/// Most header lines any configuration may allow (the parse array lives on the stack).
pub const MAX_HEADERS: usize = 128;

/// A parsed request head; strings borrow the connection's read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: &'a str,
    pub request_id: Option<&'a str>,
    pub keep_alive: bool,
    /// Bytes of request line plus headers, including the blank line.
    pub head_len: usize,
    pub body_len: usize,
}

/// Why bytes are not a request the server will serve; each closes the
/// connection after its error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not HTTP/1.x, or broken syntax → 400.
    Malformed,
    /// Request line over its limit → 431.
    RequestLineTooLarge,
    /// Request line plus headers over the limit, or too many headers → 431.
    HeadersTooLarge,
    /// Content-Length over the limit → 413.
    BodyTooLarge,
    /// Transfer-Encoding (chunked bodies) is not accepted → 501.
    UnsupportedTransferEncoding,
}

/// Parses one request head from the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_head<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<RequestHead<'a>>, ParseError> {
    let line_len = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line_len > limits.max_request_line_bytes {
        return Err(ParseError::RequestLineTooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers[..limits.max_headers.clamp(1, MAX_HEADERS)]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_header_bytes {
                Err(ParseError::HeadersTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadersTooLarge),
        Err(_) => return Err(ParseError::Malformed),
    };
    if head_len > limits.max_header_bytes {
        return Err(ParseError::HeadersTooLarge);
    }
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes());
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err(ParseError::Malformed);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let http10 = req.version == Some(0);

    let mut keep_alive = !http10;
    let mut body_len = 0usize;
    let mut seen_length = false;
    let mut request_id = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| ParseError::Malformed)?;
            let len: usize = text.trim().parse().map_err(|_| ParseError::Malformed)?;
            if seen_length && len != body_len {
                return Err(ParseError::Malformed);
            }
            seen_length = true;
            body_len = len;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::UnsupportedTransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("x-request-id") {
            request_id = valid_request_id(h.value);
        }
    }
    if body_len > limits.max_body_bytes {
        return Err(ParseError::BodyTooLarge);
    }
    Ok(Some(RequestHead {
        method,
        path,
        query,
        request_id,
        keep_alive,
        head_len,
        body_len,
    }))
}

/// A client's request id is echoed only if it is short visible ASCII.
fn valid_request_id(value: &[u8]) -> Option<&str> {
    if value.is_empty() || value.len() > 128 || !value.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 1024,
            max_headers: 8,
            max_body_bytes: 100,
            ..Limits::default()
        }
    }

    fn parse(bytes: &[u8]) -> Result<Option<RequestHead<'_>>, ParseError> {
        parse_head(bytes, &limits())
    }

    #[test]
    fn parses_a_checkout() {
        let head = parse(
            b"POST /checkout?user_id=1&id=2 HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.path, "/checkout");
        assert_eq!(head.query, "user_id=1&id=2");
        assert_eq!(head.request_id, Some("abc-1"));
        assert!(head.keep_alive);
        assert_eq!(head.body_len, 0);
    }

    #[test]
    fn partial_needs_more_until_the_limit() {
        assert_eq!(parse(b"GET /health HTTP/1.1\r\nHost"), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(parse(&big), Err(ParseError::HeadersTooLarge));
    }

    #[test]
    fn long_request_lines_are_refused_early() {
        let limits = Limits {
            max_request_line_bytes: 32,
            ..limits()
        };
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(40));
        assert_eq!(
            parse_head(long.as_bytes(), &limits),
            Err(ParseError::RequestLineTooLarge)
        );
        // refused before the line is even complete
        assert_eq!(
            parse_head(&long.as_bytes()[..36], &limits),
            Err(ParseError::RequestLineTooLarge)
        );
        let short =
            b"GET /ok HTTP/1.1\r\nX-Long-Header: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        assert!(parse_head(short, &limits).unwrap().is_some());
    }

    #[test]
    fn connection_semantics() {
        let h = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(b"GARBAGE\r\n\r\n"), Err(ParseError::Malformed));
        assert_eq!(
            parse(b"GET nopath HTTP/1.1\r\n\r\n"),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            Err(ParseError::BodyTooLarge)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ParseError::UnsupportedTransferEncoding)
        );
        let many: Vec<u8> = std::iter::once(b"GET / HTTP/1.1\r\n".to_vec())
            .chain((0..9).map(|i| format!("H{i}: v\r\n").into_bytes()))
            .chain(std::iter::once(b"\r\n".to_vec()))
            .flatten()
            .collect();
        assert_eq!(parse(&many), Err(ParseError::HeadersTooLarge));
    }

    #[test]
    fn odd_request_ids_are_not_echoed() {
        let h = parse(b"GET / HTTP/1.1\r\nX-Request-Id: a b\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.request_id, None);
    }
}
