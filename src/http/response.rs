//! Responses → bytes: status line, the few headers the server sends, and the
//! body, appended to a connection's output buffer. Also the JSON writer
//! every body goes through (the checkout's 200 aside, see `write_json`), and
//! the JSON error body that every error shares.

/// What a handler decides besides the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub content_type: &'static str,
    /// `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// `Retry-After` seconds of a 503.
    pub retry_after: Option<u32>,
}

pub const JSON: &str = "application/json";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl ResponseHead {
    pub fn json(status: u16) -> Self {
        ResponseHead {
            status,
            content_type: JSON,
            allow: None,
            retry_after: None,
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a whole response to `out`.
pub fn write_response(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    body: &[u8],
    request_id: Option<&str>,
    close: bool,
) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(head.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(head.status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(head.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(num.format(body.len()).as_bytes());
    if let Some(id) = request_id {
        out.extend_from_slice(b"\r\nX-Request-Id: ");
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(allow) = head.allow {
        out.extend_from_slice(b"\r\nAllow: ");
        out.extend_from_slice(allow.as_bytes());
    }
    if let Some(secs) = head.retry_after {
        out.extend_from_slice(b"\r\nRetry-After: ");
        out.extend_from_slice(num.format(secs).as_bytes());
    }
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Serializes `value` as JSON onto `out`: simd-json's serde serializer
/// (measured against serde_json: README, "JSON writer"). The one body not
/// written here is the checkout's 200 (`api::json::CheckoutBody::write`,
/// which writes the same bytes).
pub fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, and the server's types always serialize.
    let _ = simd_json::to_writer(&mut *out, value);
}

/// The error body of every route (docs/api.md): `{"error": code, "message": message}`.
#[derive(serde::Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
    pub message: &'a str,
}

/// Appends the error body of `code` and `message` to `body`; they are fixed
/// ASCII text of the server, so no escaping is needed beyond what serde does.
pub fn error_body(body: &mut Vec<u8>, code: &str, message: &str) {
    write_json(
        body,
        &ErrorBody {
            error: code,
            message,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_status_headers_and_body() {
        let mut out = Vec::new();
        let mut head = ResponseHead::json(503);
        head.retry_after = Some(1);
        write_response(&mut out, &head, b"{}", Some("r-1"), true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Request-Id: r-1\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn error_body_is_json() {
        let mut body = Vec::new();
        error_body(&mut body, "item_sold", "already \"sold\"");
        let v: simd_json::OwnedValue = simd_json::to_owned_value(&mut body.clone()).unwrap();
        use simd_json::prelude::*;
        assert_eq!(v["error"].as_str(), Some("item_sold"));
        assert_eq!(v["message"].as_str(), Some("already \"sold\""));
    }
}
