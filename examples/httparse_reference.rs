//! The same minimal 404 server as `monoio_http_reference`, but speaking HTTP
//! through flashsale's own layer (`flashsale::http`: httparse plus our
//! response writer and connection loop). Comparing the two isolates the codec
//! and connection loop from the rest of the server (Redis client, writer
//! thread, metrics). See bench/codec/README.md.
//!
//!     cargo build --release --example httparse_reference
//!     target/release/examples/httparse_reference 127.0.0.1:8082 1

mod shell;

use monoio::net::TcpStream;

use flashsale::http::request::ParseError;
use flashsale::http::response::{ResponseHead, error_body};
use flashsale::http::{Handler, Limits, RequestHead};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Answers every request as flashsale answers an unknown path.
struct NotFound;

impl Handler for NotFound {
    async fn handle(
        &self,
        _head: &RequestHead<'_>,
        _body: &[u8],
        out: &mut Vec<u8>,
    ) -> ResponseHead {
        error_body(out, "not_found", "no such path");
        ResponseHead::json(404)
    }

    fn reject(&self, error: ParseError, out: &mut Vec<u8>) -> ResponseHead {
        let (status, code, message) = flashsale::http::conn::parse_error_status(error);
        error_body(out, code, message);
        ResponseHead::json(status)
    }
}

fn main() {
    shell::run(
        "httparse reference",
        "127.0.0.1:8082",
        |stream: TcpStream| async move {
            let limits = Limits::default();
            let shutdown = flashsale::event::Event::new();
            flashsale::http::conn::serve(stream, &NotFound, &limits, &shutdown).await;
        },
    );
}
