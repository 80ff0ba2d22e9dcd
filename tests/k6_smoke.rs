//! CI's k6 smoke: `k6/smoke.js` against the real binary (real Redis, real
//! Postgres), at a low rate for a few seconds, with no timing assertion. The
//! run must pass its thresholds (every check, at most 1% failed requests), and
//! what k6 counted must be what the server recorded: items bought = purchase
//! rows = items sold, checkout answers = checkout rows, `flashsale check`
//! consistent. A second, deliberately wrong run (a per-user limit the server
//! does not have) must make k6 exit non-zero, so the smoke can fail.
//!
//! k6 is the binary named by `FLASHSALE_K6`, or `k6` on `PATH`
//! (`scripts/bench-tools.sh --k6` installs it). Without it the test fails when
//! `CI` is set and is skipped, with a note, otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::services::run_bounded;
use common::*;
use simd_json::prelude::*;

const ITEMS: u32 = 2000;
const LIMIT: u32 = 10;

/// The k6 binary, if there is one.
fn find_k6() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLASHSALE_K6").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "FLASHSALE_K6={} is not a file", p.display());
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("k6"))
        .find(|p| p.is_file())
}

/// k6, or None (after a note) when it is missing outside CI.
fn k6_or_skip() -> Option<PathBuf> {
    let k6 = find_k6();
    if k6.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        assert!(
            !ci,
            "k6 not found (FLASHSALE_K6 or PATH) and CI is set: scripts/test.sh installs it with scripts/bench-tools.sh --k6"
        );
        eprintln!(
            "NOTE: k6 not found on PATH (nor FLASHSALE_K6): skipping the k6 smoke; `scripts/bench-tools.sh --k6` installs it"
        );
    }
    k6
}

struct Run {
    /// k6's exit code.
    code: Option<i32>,
    /// k6's stdout + stderr.
    output: String,
    /// The summary JSON that handleSummary wrote.
    summary: OwnedValue,
}

/// `k6 run k6/smoke.js` against `s`, with `env` on top of the defaults below.
fn run_smoke(k6: &Path, s: &TestServer, tag: &str, env: &[(&str, &str)]) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k6/smoke.js");
    let summary_path = s.log_path.with_extension(format!("k6-{tag}.json"));
    let _ = std::fs::remove_file(&summary_path);
    let mut cmd = Command::new(k6);
    // --address: k6's REST API on a port of its own (the default, 6565, may be taken)
    cmd.args(["run", "--quiet", "--no-color", "--no-usage-report"])
        .args(["--address", "127.0.0.1:0"])
        .arg(&script)
        .env("BASE_URL", format!("http://{}", s.addr))
        .env("SUMMARY_JSON", &summary_path)
        .env("USER_LIMIT", LIMIT.to_string())
        .env("RATE", "30")
        .env("DURATION", "5s")
        .env("K6_NO_USAGE_REPORT", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(180));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bytes = std::fs::read(&summary_path).unwrap_or_else(|e| {
        panic!(
            "k6 wrote no summary at {} ({e}); k6 said:\n{output}",
            summary_path.display()
        )
    });
    let summary = simd_json::to_owned_value(&mut bytes)
        .unwrap_or_else(|e| panic!("summary {} is not JSON: {e}", summary_path.display()));
    Run {
        code: out.status.code(),
        output,
        summary,
    }
}

impl Run {
    /// A number at `path` (keys) in the summary's `flashsale` digest.
    fn n(&self, path: &[&str]) -> i64 {
        let mut v = &self.summary["flashsale"];
        for k in path {
            v = v.get(*k).unwrap_or_else(|| {
                panic!(
                    "summary lacks flashsale.{}: {}",
                    path.join("."),
                    self.output
                )
            });
        }
        v.as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .unwrap_or_else(|| panic!("flashsale.{} is not a number: {v:?}", path.join(".")))
    }

    /// Every check of the run: (name, passes, fails), setup's included.
    fn checks(&self) -> Vec<(String, i64, i64)> {
        fn walk(g: &OwnedValue, out: &mut Vec<(String, i64, i64)>) {
            for c in g["checks"].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                out.push((
                    name,
                    c["passes"].as_i64().unwrap_or(0),
                    c["fails"].as_i64().unwrap_or(0),
                ));
            }
            for sub in g["groups"].as_array().into_iter().flatten() {
                walk(sub, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.summary["root_group"], &mut out);
        out
    }
}

#[test]
fn k6_smoke_passes_and_matches_what_the_server_recorded() {
    let Some(k6) = k6_or_skip() else { return };
    let s = TestServer::start(Opts::default().items(ITEMS).limit(LIMIT));
    let sale = s.active_sale();

    let run = run_smoke(&k6, &s, "smoke", &[]);
    assert_eq!(run.code, Some(0), "k6 smoke failed:\n{}", run.output);
    eprintln!("{}", run.output);

    // The summary says the run did something, and every check passed.
    assert_eq!(run.n(&["sale_id"]), sale.id);
    assert!(run.n(&["requests"]) > 0, "{}", run.output);
    assert!(run.n(&["iterations"]) > 0, "no shopper ran: {}", run.output);
    assert_eq!(run.n(&["checks", "fails"]), 0, "{}", run.output);
    assert!(run.n(&["checks", "passes"]) > 0, "{}", run.output);
    let checks = run.checks();
    let contract: Vec<_> = checks
        .iter()
        .filter(|c| c.0.starts_with("contract:"))
        .collect();
    assert!(
        contract.len() >= 15 && contract.iter().all(|c| c.1 >= 1 && c.2 == 0),
        "the contract did not run through: {contract:?}"
    );
    for route in ["active:", "items:", "checkout:", "purchase:"] {
        assert!(
            checks.iter().any(|c| c.0.starts_with(route) && c.1 > 0),
            "no {route} check ran: {checks:?}"
        );
    }
    let bought = run.n(&["outcomes", "items_won"]);
    assert!(
        run.n(&["outcomes", "purchases_won"]) > 0 && bought > 0,
        "{}",
        run.output
    );
    assert!(
        run.n(&["outcomes", "purchase_replays"]) > 0,
        "{}",
        run.output
    );

    // What k6 was answered is what the server recorded.
    s.wait_pg_i64(
        "SELECT count(*) FROM purchases WHERE sale_id = $1",
        &[&sale.id],
        bought,
    );
    assert_eq!(
        s.active_sale().items_sold,
        bought,
        "items_sold against items k6 bought"
    );
    let recorded = [
        "checkout_accepted",
        "checkout_item_sold",
        "checkout_limit_reached",
        "checkout_item_not_found",
    ]
    .iter()
    .map(|k| run.n(&["outcomes", k]))
    .sum::<i64>();
    s.wait_pg_i64(
        "SELECT count(*) FROM checkouts WHERE sale_id = $1",
        &[&sale.id],
        recorded,
    );
    s.assert_consistent(sale.id);

    // The smoke can fail: told a limit the server does not have, the contract's
    // limit check fails and k6 exits 99 (thresholds crossed).
    let wrong = (LIMIT + 1).to_string();
    let run = run_smoke(
        &k6,
        &s,
        "wrong-limit",
        &[("USER_LIMIT", &wrong), ("DURATION", "1s")],
    );
    assert_eq!(
        run.code,
        Some(99),
        "k6 should fail the run:\n{}",
        run.output
    );
    let failed: Vec<_> = run.checks().into_iter().filter(|c| c.2 > 0).collect();
    assert!(
        failed.len() == 1 && failed[0].0.contains("limit_reached"),
        "only the limit check should fail: {failed:?}\n{}",
        run.output
    );
    assert!(run.n(&["checks", "fails"]) == 1, "{}", run.output);
    s.assert_consistent(sale.id);
}
