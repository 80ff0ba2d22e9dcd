//! Reference server for the codec measurement in `bench/codec/`: the same
//! thread-per-core shape as `src/server.rs` (one monoio io_uring runtime per
//! thread, pinned, each with its own SO_REUSEPORT listener), but HTTP/1.1 is
//! spoken by monoio-http's server-side h1 codec (`ServerCodec`: its
//! `RequestDecoder` and `GenericEncoder`) instead of our httparse layer.
//!
//! It routes like the real API (same paths and methods) but has no backend:
//! an unknown path gets the same 404 and JSON body as the real server, a known
//! path with the wrong method a 405, a known path a 501. The error body is
//! serialized per request with simd-json, as the real server does.
//!
//! ```text
//! cargo build --release --example monoio_http_reference
//! target/release/examples/monoio_http_reference [ADDR] [THREADS]   # 127.0.0.1:8081 1
//! ```

mod shell;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use monoio::io::sink::SinkExt;
use monoio::io::stream::Stream;
use monoio::net::TcpStream;
use monoio_http::common::body::{Body, BodyExt, FixedBody, HttpBody, StreamHint};
use monoio_http::common::response::Response;
use monoio_http::h1::codec::ServerCodec;
use monoio_http::h1::codec::decoder::FillPayload;

/// Same keep-alive idle timeout as the real server's default.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const X_REQUEST_ID: &str = "x-request-id";

fn main() {
    shell::run("monoio-http reference", "127.0.0.1:8081", serve);
}

/// One connection: decode a request, answer it, flush, until the client
/// closes, asks to close, idles out or sends something undecodable.
async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut codec = ServerCodec::new_with_timeout(stream, IDLE_TIMEOUT);
    loop {
        let request = match codec.next().await {
            Some(Ok(request)) => request,
            Some(Err(_)) => {
                // Malformed head (or idle timeout): answer 400 and close, like ours.
                let response = json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "malformed HTTP request",
                    None,
                    true,
                );
                let _ = codec.send_and_flush(response).await;
                return;
            }
            None => return,
        };
        let (head, mut payload) = request.into_parts();

        // The handler gets the whole body, as ours does.
        let _body = if payload.stream_hint() == StreamHint::None {
            Bytes::new()
        } else {
            if codec.fill_payload().await.is_err() {
                return;
            }
            match (&mut payload).bytes().await {
                Ok(body) => body,
                Err(_) => return,
            }
        };

        let close = wants_close(head.version, &head.headers);
        let request_id = head
            .headers
            .get(X_REQUEST_ID)
            .filter(|v| valid_request_id(v.as_bytes()))
            .cloned();
        let (status, code, message) = route(&head.method, head.uri.path());
        let response = json_error(status, code, message, request_id, close);
        if codec.send_and_flush(response).await.is_err() || close {
            return;
        }
    }
}

/// The real server's routing table; this reference has no backend behind it.
fn route(method: &Method, path: &str) -> (StatusCode, &'static str, &'static str) {
    let wanted = match path {
        "/checkout" | "/purchase" => Method::POST,
        "/sales/active" | "/health" | "/metrics" => Method::GET,
        _ if is_sale_items_path(path) => Method::GET,
        _ => return (StatusCode::NOT_FOUND, "not_found", "no such path"),
    };
    if *method != wanted {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this path",
        );
    }
    (
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "the codec reference has no backend",
    )
}

/// `/sales/{id}/items`
fn is_sale_items_path(path: &str) -> bool {
    path.strip_prefix("/sales/")
        .and_then(|rest| rest.strip_suffix("/items"))
        .is_some()
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; 1.0 closes
/// unless `Connection: keep-alive`.
fn wants_close(version: Version, headers: &HeaderMap) -> bool {
    let mut close = version == Version::HTTP_10;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                close = false;
            }
        }
    }
    close
}

fn valid_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= 128 && value.iter().all(|b| b.is_ascii_graphic())
}

/// A JSON error response, body serialized now, encoded by the codec on send.
fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<HeaderValue>,
    close: bool,
) -> Response<HttpBody> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        message: &'a str,
    }
    let mut body = BytesMut::with_capacity(64);
    // Writing to memory cannot fail.
    let _ = simd_json::to_writer(
        (&mut body).writer(),
        &ErrorBody {
            error: code,
            message,
        },
    );
    let mut response = Response::new(HttpBody::fixed_body(Some(body.freeze())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID, id);
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
