//! The HTTP/1.1 layer: pipelining, keep-alive, limits, malformed input.

mod common;

use std::time::Duration;

use common::*;

fn server() -> TestServer {
    TestServer::start(Opts::default().items(50))
}

/// The server still answers on a fresh connection.
fn assert_still_serving(s: &TestServer) {
    let mut c = s.connect();
    c.get("/health").assert_status(200);
}

/// `FLASHSALE_DRIVER=epoll` (what a container whose seccomp blocks io_uring
/// runs on): the same answers, pipelining included, and the log says which
/// driver runs.
#[test]
fn epoll_driver_serves_the_same_api() {
    let s = TestServer::start(Opts::default().items(50).env("FLASHSALE_DRIVER", "epoll"));
    let log = s.log_tail(100);
    assert!(
        log.contains(r#"driver="epoll" requested=epoll"#),
        "no driver line in the log:\n{log}"
    );
    let sale = s.active_sale();
    let code = s.checkout(1, sale.item(1)).assert_status(200).str("code");
    assert_eq!(
        s.purchase(&code).assert_status(200).ids("purchased"),
        vec![sale.item(1)]
    );
    s.checkout(2, sale.item(1)).assert_error(409, "item_sold");
    let mut c = s.connect();
    let mut bytes = build_request("GET", "/nope", &[], b"");
    bytes.extend(build_request("GET", "/health", &[], b""));
    c.send(&bytes).expect("send pipelined requests");
    c.read_response()
        .expect("first answer")
        .assert_error(404, "not_found");
    c.read_response().expect("second answer").assert_status(200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = server();
    let sale = s.active_sale();
    let requests: Vec<(&str, String, u16)> = vec![
        ("GET", "/sales/active".to_string(), 200),
        ("POST", checkout_path(1, sale.item(1)), 200),
        ("GET", "/nope".to_string(), 404),
        ("POST", "/checkout?user_id=0&id=1".to_string(), 400),
        ("POST", checkout_path(1, sale.item(2)), 200),
        ("GET", "/health".to_string(), 200),
        ("POST", checkout_path(2, 1), 404),
    ];
    let mut bytes = Vec::new();
    for (n, (method, target, _)) in requests.iter().enumerate() {
        let id = format!("pipe-{n}");
        bytes.extend(build_request(method, target, &[("X-Request-Id", &id)], b""));
    }
    let mut c = s.connect();
    c.send(&bytes).expect("send pipelined requests");
    for (n, (method, target, status)) in requests.iter().enumerate() {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {n} ({method} {target}): {e}"));
        assert_eq!(
            r.header("x-request-id"),
            Some(format!("pipe-{n}").as_str()),
            "response {n} out of order: {r}"
        );
        assert_eq!(r.status, *status, "{method} {target}: {r}");
    }
    // The second checkout saw the first: the pipeline ran in order.
    let r = c.checkout(1, sale.item(3));
    r.assert_status(200);
    assert_eq!(
        r.sorted_ids("items"),
        vec![sale.item(1), sale.item(2), sale.item(3)]
    );
}

#[test]
fn pipelined_burst_split_at_odd_places() {
    let s = server();
    let mut bytes = Vec::new();
    for n in 0..20 {
        let target = if n % 2 == 0 {
            "/health"
        } else {
            "/sales/active"
        };
        bytes.extend(build_request(
            "GET",
            target,
            &[("X-Request-Id", &format!("b{n}"))],
            b"",
        ));
    }
    let mut c = s.connect();
    // Uneven pieces, so requests straddle reads.
    for piece in bytes.chunks(37) {
        c.send(piece).expect("send");
    }
    for n in 0..20 {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {n}: {e}"));
        r.assert_status(200);
        assert_eq!(
            r.header("x-request-id"),
            Some(format!("b{n}").as_str()),
            "{r}"
        );
    }
}

#[test]
fn one_connection_serves_a_hundred_requests() {
    let s = server();
    let sale = s.active_sale();
    let mut c = s.connect();
    for n in 0..100 {
        let r = match n % 4 {
            0 => c.get("/sales/active"),
            1 => c.get("/health"),
            2 => c.checkout(5, sale.item(1 + (n / 4 % 10) as u32)),
            _ => c.get("/nope"),
        };
        let want = if n % 4 == 3 { 404 } else { 200 };
        assert_eq!(
            r.status, want,
            "request {n} on the kept-alive connection: {r}"
        );
        assert!(
            !r.closes_connection(),
            "request {n}: server closes a keep-alive connection: {r}"
        );
    }
    // The checkouts above all landed in one checkout.
    let r = c.checkout(5, sale.item(1));
    assert_eq!(r.ids("items").len(), 10, "{r}");
}

#[test]
fn request_arriving_in_pieces() {
    let s = server();
    let mut c = s.connect();
    for piece in [
        &b"GET /hea"[..],
        b"lth HTTP/1.1\r\nHo",
        b"st: x\r\nX-Request-Id: sl",
        b"ow\r\n",
        b"\r\n",
    ] {
        c.send(piece).expect("send");
        std::thread::sleep(Duration::from_millis(30));
    }
    let r = c.read_response().expect("response");
    r.assert_status(200);
    assert_eq!(r.header("x-request-id"), Some("slow"));

    // A body that arrives after its head.
    let item = s.active_sale().item(1);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n",
        checkout_path(9, item)
    );
    c.send(head.as_bytes()).expect("send head");
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"{}").expect("send body");
    let r = c.read_response().expect("response");
    r.assert_status(200);
    assert_eq!(r.ids("items"), vec![item]);
}

#[test]
fn long_pipeline_in_one_write() {
    const N: usize = 150;
    let s = server();
    let sale = s.active_sale();
    let mut bytes = Vec::new();
    for n in 0..N {
        let id = format!("long-{n}");
        let req = match n % 3 {
            0 => build_request("GET", "/health", &[("X-Request-Id", &id)], b""),
            1 => build_request(
                "POST",
                &checkout_path(1 + (n % 7) as i64, sale.item(1 + (n % 50) as u32)),
                &[("X-Request-Id", &id)],
                b"",
            ),
            _ => build_request("GET", "/nope", &[("X-Request-Id", &id)], b""),
        };
        bytes.extend(req);
    }
    let mut c = s.connect();
    c.send(&bytes).expect("send");
    for n in 0..N {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {n} of {N}: {e}"));
        assert_eq!(
            r.header("x-request-id"),
            Some(format!("long-{n}").as_str()),
            "{r}"
        );
        let want = if n % 3 == 2 { 404 } else { 200 };
        assert_eq!(r.status, want, "request {n}: {r}");
    }
    c.get("/health").assert_status(200);
}

#[test]
fn malformed_request_gets_400_and_close() {
    let s = server();
    let garbage: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
        b"GET /he alth HTTP/1.1 extra\r\n\r\n",
        b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n",
    ];
    for bytes in garbage {
        let mut c = s.connect();
        c.send(bytes).expect("send");
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("no response to {:?}: {e}", String::from_utf8_lossy(bytes)));
        assert_eq!(
            r.status,
            400,
            "for {:?}: {r}",
            String::from_utf8_lossy(bytes)
        );
        assert!(r.is_json(), "{r}");
        assert!(r.error_code().is_some(), "{r}");
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "connection still open after 400 for {:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_still_serving(&s);
    }
    // A malformed request after a good one on the same connection.
    let mut c = s.connect();
    c.get("/health").assert_status(200);
    c.send(b"BROKEN REQUEST\r\n\r\n").expect("send");
    c.read_response().expect("response").assert_status(400);
    assert!(c.closed_within(Duration::from_secs(5)));
}

/// Content-Length is digits only: a sign, a hex prefix, an inner space or a
/// list would be read differently by a proxy in front, which then sees a
/// different request boundary (request smuggling). Each is 400 and close.
#[test]
fn content_length_other_than_digits_gets_400_and_close() {
    let s = server();
    let sale = s.active_sale();
    let target = checkout_path(1, sale.item(1));
    for value in ["+5", "-0", "+0", "0x5", "5 5", "5,5", "1_0", "５"] {
        let mut c = s.connect();
        let head = format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
        c.send(head.as_bytes()).expect("send");
        // Bytes a proxy may count as the body, or as the next request.
        let _ = c.send(b"hello");
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("no response to Content-Length {value:?}: {e}"));
        r.assert_error(400, "bad_request");
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "connection still open after 400 for Content-Length {value:?}"
        );
    }
    // Digits still work, leading zeros included.
    let mut c = s.connect();
    let r = c.request("POST", &target, &[("Content-Length", "005")], b"hello");
    r.assert_status(200);
    assert_still_serving(&s);
}

#[test]
fn oversized_headers_get_431() {
    let s = server();
    let big = "x".repeat(20 * 1024);
    let mut c = s.connect();
    c.send(&build_request("GET", "/health", &[("X-Big", &big)], b""))
        .expect("send");
    let r = c
        .read_response()
        .expect("a response to an oversized header");
    r.assert_status(431);
    assert!(r.is_json(), "{r}");

    // Many small headers adding up past the limit.
    let many: Vec<(String, String)> = (0..400)
        .map(|n| (format!("X-H{n}"), "y".repeat(40)))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c = s.connect();
    c.send(&build_request("GET", "/health", &refs, b""))
        .expect("send");
    let r = c.read_response().expect("a response to many headers");
    r.assert_status(431);

    // An oversized request line.
    let mut c = s.connect();
    c.send(&build_request(
        "GET",
        &format!("/health?pad={}", "z".repeat(20 * 1024)),
        &[],
        b"",
    ))
    .expect("send");
    let r = c
        .read_response()
        .expect("a response to an oversized request line");
    assert!(
        r.status == 431 || r.status == 414,
        "oversized request line: {r}"
    );

    // Just under the limit is fine.
    let mut c = s.connect();
    c.request("GET", "/health", &[("X-Pad", &"p".repeat(4000))], b"")
        .assert_status(200);
    assert_still_serving(&s);
}

#[test]
fn oversized_body_gets_413() {
    let s = server();
    let sale = s.active_sale();
    let body = vec![b'a'; 20_000];
    let mut c = s.connect();
    c.send(&build_request(
        "POST",
        &checkout_path(1, sale.item(1)),
        &[("Content-Type", "application/octet-stream")],
        &body,
    ))
    .expect("send");
    let r = c.read_response().expect("a response to an oversized body");
    r.assert_status(413);
    assert!(r.is_json(), "{r}");
    // Announced only: the server need not wait for the body to refuse it.
    let mut c = s.connect();
    c.send(
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
            checkout_path(1, sale.item(1))
        )
        .as_bytes(),
    )
    .expect("send");
    c.read_response().expect("a response").assert_status(413);
    // Nothing was checked out.
    let r = s.checkout(2, sale.item(1));
    r.assert_status(200);
    s.wait_pg_i64("SELECT count(*) FROM checkouts", &[], 1);
    // A small body is accepted (and ignored).
    let mut c = s.connect();
    let r = c.request("POST", &checkout_path(3, sale.item(2)), &[], b"{}");
    r.assert_status(200);
    c.get("/health").assert_status(200);
}

#[test]
fn http10_and_connection_close() {
    let s = server();
    let mut c = s.connect();
    c.send(b"GET /health HTTP/1.0\r\n\r\n").expect("send");
    let r = c.read_response().expect("response");
    r.assert_status(200);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "HTTP/1.0 without keep-alive must close: {r}"
    );

    let mut c = s.connect();
    c.send(b"GET /sales/active HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let r = c.read_response().expect("response");
    r.assert_status(200);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "Connection: close must close: {r}"
    );

    // HTTP/1.0 asking for keep-alive may keep the connection; either way the answer is right.
    let mut c = s.connect();
    c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .expect("send");
    c.read_response().expect("response").assert_status(200);
}
