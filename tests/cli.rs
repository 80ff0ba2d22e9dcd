//! The command line: values the server refuses before it starts, and what
//! `flashsale check` says when it cannot check.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::services::{run_bounded, wait_exit};
use common::*;

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Starts `flashsale` with `args` and `env` on unreachable Redis and
/// Postgres; the server must refuse at once (a configuration error exits
/// before it ever connects). Returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    cmd.args(args)
        .env("FLASHSALE_LISTEN", format!("127.0.0.1:{}", closed_port()))
        .env(
            "REDIS_URL",
            format!("redis://127.0.0.1:{}/0", closed_port()),
        )
        .env(
            "DATABASE_URL",
            format!("postgres://flashsale@127.0.0.1:{}/x", closed_port()),
        )
        .env("FLASHSALE_LOG", "info")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn flashsale");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("flashsale {args:?} {env:?} was accepted: still running after 10 s");
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert!(
        !status.expect("exited").success(),
        "flashsale {args:?} {env:?} exited 0: {err}"
    );
    err
}

#[test]
fn zero_cores_is_refused_with_a_config_error() {
    for (args, env) in [
        (&["--cores", "0"][..], &[][..]),
        (&[][..], &[("FLASHSALE_CORES", "0")][..]),
    ] {
        let err = refused(args, env);
        assert!(
            err.contains("--cores") && err.contains('0'),
            "the error names the flag and the value: {err}"
        );
    }
}

#[test]
fn sale_items_past_the_maximum_is_refused_with_a_config_error() {
    for (args, env) in [
        (&["--sale-items", "1000001"][..], &[][..]),
        (&[][..], &[("SALE_ITEMS", "1000001")][..]),
        (&["--sale-items", "0"][..], &[][..]),
    ] {
        let err = refused(args, env);
        assert!(
            err.contains("--sale-items") && err.contains("1..=1000000"),
            "the error names the flag and the accepted range: {err}"
        );
    }
}

/// Runs `flashsale check --sale <sale>` on the given URLs; (status, stderr).
fn check(redis_url: &str, database_url: &str, sale: i64) -> (i32, String) {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["check", "--sale", &sale.to_string()])
            .env("REDIS_URL", redis_url)
            .env("DATABASE_URL", database_url)
            .env("FLASHSALE_LOG", "warn"),
        Duration::from_secs(60),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `flashsale check` that cannot check exits 2 and says what failed: which
/// service, where, and the cause, never a generic "config".
#[test]
fn check_says_what_it_could_not_reach_or_find() {
    let s = TestServer::start(Opts::default().items(10));
    let sale = s.active_sale();
    let (redis_url, database_url) = (s.redis_url(), s.database_url());

    let port = closed_port();
    let (status, err) = check(
        &format!("redis://127.0.0.1:{port}/0"),
        &database_url,
        sale.id,
    );
    assert_eq!(status, 2, "{err}");
    let lower = err.to_lowercase();
    assert!(!lower.contains("config"), "{err}");
    assert!(
        lower.contains("redis") && err.contains(&port.to_string()) && lower.contains("refused"),
        "names Redis, its address and the cause: {err}"
    );

    let port = closed_port();
    let (status, err) = check(
        &redis_url,
        &format!("postgres://flashsale@127.0.0.1:{port}/x"),
        sale.id,
    );
    assert_eq!(status, 2, "{err}");
    let lower = err.to_lowercase();
    assert!(!lower.contains("config"), "{err}");
    assert!(
        lower.contains("postgres") && lower.contains("refused"),
        "names Postgres and the cause: {err}"
    );

    let unknown = sale.id + 1000;
    let (status, err) = check(&redis_url, &database_url, unknown);
    assert_eq!(status, 2, "{err}");
    assert!(!err.to_lowercase().contains("config"), "{err}");
    assert!(
        err.contains(&format!("sale {unknown}")) && err.contains("neither"),
        "says the sale is in neither store: {err}"
    );

    let (status, err) = check(&redis_url, &database_url, sale.id);
    assert_eq!(status, 0, "{err}");
}
