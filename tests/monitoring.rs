//! The monitoring kit against the real binary: every metric the Grafana
//! dashboard queries is served by `/metrics` once the server has seen some
//! traffic, and the Prometheus and Grafana files name what they should.

mod common;

use std::collections::BTreeSet;

use common::*;
use simd_json::prelude::*;

const DASHBOARD: &str = "monitoring/grafana/dashboards/flashsale.json";

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Every `expr` string anywhere in the dashboard.
fn exprs(value: &OwnedValue, out: &mut Vec<String>) {
    if let Some(object) = value.as_object() {
        for (key, v) in object.iter() {
            match v.as_str() {
                Some(expr) if key == "expr" => out.push(expr.to_string()),
                _ => exprs(v, out),
            }
        }
    } else if let Some(array) = value.as_array() {
        for v in array {
            exprs(v, out);
        }
    }
}

/// Metric names a PromQL expression selects: the identifiers right before a
/// `{` (the dashboard filters every selector by instance, so every metric
/// has one).
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    for (i, _) in expr.match_indices('{') {
        let start = bytes[..i]
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b':'))
            .map_or(0, |p| p + 1);
        if start < i {
            names.push(expr[start..i].to_string());
        }
    }
    names
}

/// Names of the series a scrape holds (`name{labels} value` or `name value`).
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn dashboard_metrics() -> BTreeSet<String> {
    let mut text = repo_file(DASHBOARD).into_bytes();
    let dashboard = simd_json::to_owned_value(&mut text).expect("dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() > 20, "only {} queries in {DASHBOARD}", all.len());
    let mut names = BTreeSet::new();
    for expr in &all {
        let found = metric_names(expr);
        assert!(!found.is_empty(), "no metric selected by `{expr}`");
        // a metric named without a selector would escape this check
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("flashsale_") || word.starts_with("process_") {
                assert!(
                    found.iter().any(|f| f == word),
                    "`{word}` without a selector in `{expr}`"
                );
            }
        }
        names.extend(found);
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_served() {
    let wanted = dashboard_metrics();
    let server = TestServer::start(Opts::default().items(20).limit(3));
    let sale = server.active_sale();
    // traffic on every route and outcome the dashboard shows
    let first = server.checkout(1, sale.item(1));
    assert_eq!(first.status, 200, "{first:?}");
    let code = first.json()["code"].as_str().unwrap().to_string();
    assert_eq!(server.purchase(&code).status, 200);
    assert_eq!(server.checkout(2, sale.item(1)).status, 409); // item_sold
    assert_eq!(server.checkout(2, sale.item(999)).status, 404);
    for n in 2..=5 {
        server.checkout(3, sale.item(n));
    }
    server.get("/sales/active");
    server.get(&format!("/sales/{}/items", sale.id));
    server.get("/health");
    server.get("/nowhere");
    server.wait_pg_i64("SELECT count(*) FROM purchases", &[], 1);

    let scrape = server.get("/metrics");
    assert_eq!(scrape.status, 200);
    let text = String::from_utf8_lossy(&scrape.body).to_string();
    let served = scraped_names(&text);
    let missing: Vec<&String> = wanted.iter().filter(|m| !served.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not serve: {missing:?}\nserved: {served:?}"
    );
    for line in [
        format!("flashsale_sale_id {}", sale.id),
        "flashsale_sale_items 20".to_string(),
        "flashsale_sale_items_sold 1".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "`{line}` not in\n{text}");
    }
    assert!(
        text.contains("flashsale_redis_call_duration_seconds_count{script=\"checkout\"}"),
        "{text}"
    );
}

#[test]
fn prometheus_scrapes_the_app_and_grafana_loads_the_dashboard() {
    let prometheus = repo_file("monitoring/prometheus.yml");
    assert!(prometheus.contains("metrics_path: /metrics"));
    assert!(prometheus.contains("app:8080"));
    let datasource = repo_file("monitoring/grafana/provisioning/datasources/prometheus.yaml");
    assert!(datasource.contains("uid: prometheus"));
    assert!(datasource.contains("http://prometheus:9090"));
    let provider = repo_file("monitoring/grafana/provisioning/dashboards/flashsale.yaml");
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    let compose = repo_file("compose.yaml");
    for mount in [
        "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml",
        "./monitoring/grafana/provisioning:/etc/grafana/provisioning",
        "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards",
    ] {
        assert!(compose.contains(mount), "compose.yaml lacks {mount}");
    }
    // every panel's data source is the provisioned one
    let mut text = repo_file(DASHBOARD).into_bytes();
    let dashboard = simd_json::to_owned_value(&mut text).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"].as_str() != Some("row") {
            assert_eq!(
                panel["datasource"]["uid"].as_str(),
                Some("prometheus"),
                "{:?}",
                panel["title"]
            );
        }
    }
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (route, le) (rate(a_b_bucket{instance=~\"$i\"}[5m])))"
        ),
        vec!["a_b_bucket"]
    );
    assert_eq!(
        metric_names("max(x{i=\"1\"}) / max(y:z{i=\"1\"})"),
        vec!["x", "y:z"]
    );
    let names = scraped_names("# HELP a b\na_total 1\nb_bucket{le=\"1\"} 2\n");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["a_total", "b_bucket"]
    );
}
