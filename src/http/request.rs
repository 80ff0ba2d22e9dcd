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
    // A byte scan: '?' is ASCII, so the cut is on a char boundary.
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, ""),
    };
    let http10 = req.version == Some(0);

    let mut keep_alive = !http10;
    let mut body_len = 0usize;
    let mut seen_length = false;
    let mut request_id = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let len = content_length(h.value).ok_or(ParseError::Malformed)?;
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

/// A Content-Length value: ASCII digits only (around them optional spaces
/// and tabs). A sign, a radix prefix or a list would be read differently
/// by a proxy in front, which then sees another request boundary.
fn content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
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
        for value in ["+5", "-0", "0x5", "5 5", "5,5", "1_0", ""] {
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                parse(req.as_bytes()),
                Err(ParseError::Malformed),
                "{value:?}"
            );
        }
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

/// Bounded fuzzing of `parse_head` (proptest): arbitrary bytes and near-valid
/// requests never panic, and every answer obeys the limits.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn small_limits() -> Limits {
        Limits {
            max_request_line_bytes: 64,
            max_header_bytes: 256,
            max_headers: 4,
            max_body_bytes: 100,
            ..Limits::default()
        }
    }

    /// The invariants of any answer of `parse_head(buf, limits)`.
    fn check_invariants(buf: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
        let first_line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
        match parse_head(buf, limits) {
            Ok(Some(head)) => {
                prop_assert!(head.head_len <= buf.len());
                prop_assert!(head.head_len <= limits.max_header_bytes);
                prop_assert!(first_line <= limits.max_request_line_bytes);
                prop_assert!(head.body_len <= limits.max_body_bytes);
                prop_assert!(head.path.starts_with('/'), "path {:?}", head.path);
                prop_assert!(!head.path.contains('?'));
                if let Some(id) = head.request_id {
                    prop_assert!(!id.is_empty() && id.len() <= 128);
                    prop_assert!(id.bytes().all(|b| b.is_ascii_graphic()));
                }
                // Bytes after the head (a pipelined next request) change nothing.
                let mut longer = buf[..head.head_len].to_vec();
                longer.extend_from_slice(b"GARBAGE \x00\xff\r\n\r\n");
                prop_assert_eq!(parse_head(&longer, limits), Ok(Some(head)));
            }
            Ok(None) => {
                // Waiting for more is only allowed while under every limit:
                // a client can never make the server buffer past them.
                prop_assert!(buf.len() <= limits.max_header_bytes, "len {}", buf.len());
                prop_assert!(first_line <= limits.max_request_line_bytes);
            }
            Err(_) => {}
        }
        Ok(())
    }

    fn method() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("GET".to_string()),
            Just("POST".to_string()),
            Just("HEAD".to_string()),
            Just("DELETE".to_string()),
            "[A-Z]{1,8}",
            "[ -~]{0,6}",
            Just(String::new()),
        ]
    }

    fn target() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "/[a-z/]{0,12}(\\?[a-z_=&%0-9;-]{0,30})?",
            1 => "[ -~]{0,20}",
            1 => "\\*|http://x/y|/\\?\\?|//|/%00",
            1 => "/[a-z]{10,120}",
        ]
    }

    fn version() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => Just("HTTP/1.1".to_string()),
            2 => Just("HTTP/1.0".to_string()),
            1 => "HTTP/[0-9]\\.[0-9]",
            1 => "[ -~]{0,9}",
        ]
    }

    fn header() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            3 => Just("Content-Length".to_string()),
            1 => Just("content-length".to_string()),
            1 => Just("Transfer-Encoding".to_string()),
            2 => Just("Connection".to_string()),
            2 => Just("X-Request-Id".to_string()),
            2 => "[A-Za-z-]{1,12}",
            1 => "[ -~]{0,8}",
        ];
        let value = prop_oneof![
            3 => "[0-9]{1,4}",
            1 => "[0-9]{15,25}",
            1 => " *-?[0-9]{1,3} *|\\+1|0x10|1e3|1,1",
            2 => "close|keep-alive|Close, keep-alive|chunked|upgrade",
            3 => "[ -~]{0,40}",
            1 => proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ];
        (name, value)
    }

    fn newline() -> impl Strategy<Value = &'static str> {
        prop_oneof![8 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r"), 1 => Just("")]
    }

    /// A request assembled from parts that are mostly, not always, valid.
    fn near_valid_request() -> impl Strategy<Value = Vec<u8>> {
        (
            method(),
            target(),
            version(),
            proptest::collection::vec((header(), newline()), 0..8),
            newline(),
            newline(),
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<prop::sample::Index>(),
            any::<bool>(),
        )
            .prop_map(
                |(method, target, version, headers, nl1, nl2, body, cut, truncate)| {
                    let mut out = format!("{method} {target} {version}{nl1}").into_bytes();
                    for ((name, value), nl) in headers {
                        out.extend_from_slice(format!("{name}: {value}{nl}").as_bytes());
                    }
                    out.extend_from_slice(nl2.as_bytes());
                    out.extend_from_slice(&body);
                    if truncate && !out.is_empty() {
                        out.truncate(cut.index(out.len()));
                    }
                    out
                },
            )
    }

    /// A request that is valid under `small_limits`, with what it should parse to.
    #[derive(Debug, Clone)]
    struct Valid {
        bytes: Vec<u8>,
        method: Method,
        path: String,
        query: String,
        body_len: usize,
        keep_alive: bool,
    }

    fn valid_request() -> impl Strategy<Value = Valid> {
        (
            prop_oneof![Just(("GET", Method::Get)), Just(("POST", Method::Post))],
            "/[a-z/]{0,10}",
            proptest::option::of("[a-z_=&0-9%]{0,20}"),
            any::<bool>(),
            proptest::option::of(0usize..=100),
            any::<bool>(),
            proptest::collection::vec(("X-[A-Za-z]{1,6}", "[!-~]{0,12}"), 0..2),
        )
            .prop_map(|((m, method), path, query, http10, length, close, extra)| {
                let target = match &query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.clone(),
                };
                let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
                let mut out = format!("{m} {target} {version}\r\n").into_bytes();
                for (name, value) in &extra {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                if let Some(len) = length {
                    out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
                }
                if close {
                    out.extend_from_slice(b"Connection: close\r\n");
                }
                out.extend_from_slice(b"\r\n");
                Valid {
                    bytes: out,
                    method,
                    path,
                    query: query.unwrap_or_default(),
                    body_len: length.unwrap_or(0),
                    keep_alive: !http10 && !close,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(2000)
        })]

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_invariants(&buf, &small_limits())?;
            check_invariants(&buf, &Limits::default())?;
        }

        #[test]
        fn near_valid_requests_obey_the_limits(buf in near_valid_request()) {
            check_invariants(&buf, &small_limits())?;
            check_invariants(&buf, &Limits::default())?;
        }

        #[test]
        fn long_inputs_never_wait_forever(
            prefix in near_valid_request(),
            filler in prop_oneof![Just(b'a'), Just(b' '), Just(b'\r'), any::<u8>()],
            extra in 0usize..300,
        ) {
            // Whatever a client sends, once it passes the header limit the
            // parser has decided: a head, or an error, never "need more".
            let limits = small_limits();
            let mut buf = prefix;
            buf.resize(limits.max_header_bytes + 1 + extra, filler);
            prop_assert_ne!(parse_head(&buf, &limits), Ok(None));
            check_invariants(&buf, &limits)?;
        }

        #[test]
        fn valid_requests_parse_whole_and_wait_when_cut(v in valid_request()) {
            let limits = small_limits();
            let head = parse_head(&v.bytes, &limits);
            let head = match head {
                Ok(Some(head)) => head,
                other => return Err(TestCaseError::fail(format!(
                    "{:?} for {:?}", other, String::from_utf8_lossy(&v.bytes)
                ))),
            };
            prop_assert_eq!(head.method, v.method);
            prop_assert_eq!(head.path, v.path.as_str());
            prop_assert_eq!(head.query, v.query.as_str());
            prop_assert_eq!(head.body_len, v.body_len);
            prop_assert_eq!(head.keep_alive, v.keep_alive);
            prop_assert_eq!(head.head_len, v.bytes.len());
            // Split anywhere (a slow or fragmented client), it is incomplete, not wrong.
            for cut in 0..v.bytes.len() {
                prop_assert_eq!(
                    parse_head(&v.bytes[..cut], &limits),
                    Ok(None),
                    "prefix of {} bytes of {:?}", cut, String::from_utf8_lossy(&v.bytes)
                );
            }
        }

        #[test]
        fn content_length_is_exact_or_refused(len in any::<u64>(), pad in "[ \t]{0,2}") {
            let limits = small_limits();
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {pad}{len}{pad}\r\n\r\n");
            match parse_head(req.as_bytes(), &limits) {
                Ok(Some(head)) => prop_assert_eq!(head.body_len as u64, len),
                Err(ParseError::BodyTooLarge) => {
                    prop_assert!(len > limits.max_body_bytes as u64)
                }
                // Larger than usize cannot be parsed at all.
                Err(ParseError::Malformed) => prop_assert!(usize::try_from(len).is_err()),
                other => return Err(TestCaseError::fail(format!("{other:?} for {req:?}"))),
            }
        }

        #[test]
        fn header_count_limit_is_exact(count in 0usize..10) {
            let limits = small_limits();
            let mut req = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..count {
                req.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
            }
            req.extend_from_slice(b"\r\n");
            let got = parse_head(&req, &limits);
            if count <= limits.max_headers {
                prop_assert!(matches!(got, Ok(Some(_))), "{:?}", got);
            } else {
                prop_assert_eq!(got, Err(ParseError::HeadersTooLarge));
            }
        }
    }
}
