//! The files under `deploy/` that users load into Prometheus and Grafana: the scrape config is valid
//! for the real `promtool`, the dashboard is well-formed Grafana JSON whose every query is valid PromQL
//! (checked by `promtool check rules`) and uses only the metric names the team agreed on
//! (`agreed_metrics.txt`, equal to the list in the shared notes), and every agreed metric is
//! on it.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("read deploy/{path}: {e}"))
}

/// Name → type of every agreed metric.
fn agreed() -> BTreeMap<String, String> {
    include_str!("agreed_metrics.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, kind) = l.split_once(' ').expect("`name type` lines");
            (name.to_string(), kind.trim().to_string())
        })
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/datapath.json")).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(nested) = p["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// Every PromQL expression of the dashboard: its panels' targets and its variables' queries.
fn expressions(dashboard: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = panels(dashboard)
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_string()
        })
        .collect();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    exprs
}

/// The `datapath_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("datapath_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The agreed metric a series name belongs to: itself, or a histogram's `_bucket`/`_sum`/`_count`.
fn family<'a>(series: &str, agreed: &'a BTreeMap<String, String>) -> Option<&'a str> {
    if let Some((name, _)) = agreed.get_key_value(series) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        let (name, kind) = agreed.get_key_value(base)?;
        (kind == "histogram").then_some(name.as_str())
    })
}

#[test]
fn the_agreed_list_follows_the_conventions() {
    let agreed = agreed();
    assert_eq!(agreed.len(), 24);
    for (name, kind) in &agreed {
        assert!(name.starts_with("datapath_"), "{name}");
        assert_eq!(name.ends_with("_total"), kind == "counter", "{name} {kind}");
    }
}

#[test]
fn the_dashboard_uses_only_agreed_metrics_and_shows_every_one() {
    let agreed = agreed();
    let mut used = BTreeSet::new();
    for expr in expressions(&dashboard()) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "a query on no datapath metric: {expr}");
        for series in names {
            let name = family(&series, &agreed)
                .unwrap_or_else(|| panic!("{series} is not an agreed metric (in {expr})"));
            used.insert(name.to_string());
        }
    }
    let missing: Vec<&String> = agreed.keys().filter(|n| !used.contains(*n)).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

#[test]
fn the_dashboard_is_well_formed_grafana_json() {
    let d = dashboard();
    assert_eq!(d["uid"], "datapath-overview");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let variables: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(variables.contains(&"datasource"), "{variables:?}");
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let (x, w) = (
            p["gridPos"]["x"].as_u64().unwrap(),
            p["gridPos"]["w"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title} is wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            !p["description"].as_str().unwrap_or_default().is_empty(),
            "{title}"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds repeat");
    }
}

/// Runs the real `promtool` (Debian's `prometheus` package; scripts/setup.sh installs it).
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool (install it: scripts/setup.sh, Debian package `prometheus`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn the_prometheus_config_is_valid_and_scrapes_every_service() {
    let path = deploy("prometheus/prometheus.yml");
    promtool(&["check", "config", path.to_str().unwrap()]);
    let text = read("prometheus/prometheus.yml");
    for address in ["127.0.0.1:9300", "127.0.0.1:9301", "127.0.0.1:9302"] {
        assert!(
            text.contains(&format!("\"{address}\"")),
            "{address} not scraped"
        );
    }
    assert!(
        text.contains("cluster.env"),
        "no word on the local launcher"
    );
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // Grafana's variables, replaced by what Grafana would put there.
    let rules: Vec<Value> = expressions(&dashboard())
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let expr = e
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$grpc_service", ".*")
                .replace("$host_id", ".*");
            let expr = match expr.strip_prefix("label_values(") {
                // A variable's query: the metric it reads values from.
                Some(args) => args.split(',').next().unwrap().trim().to_string(),
                None => expr,
            };
            serde_json::json!({"record": format!("dashboard:query{i}"), "expr": expr})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yml");
    // JSON is YAML.
    std::fs::write(&path, file.to_string()).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(
        out.contains(&format!("{} rules found", rules.len())),
        "{out}"
    );
}

/// The alerting rules are valid, their own unit tests (`alerts_test.yml`, synthetic series) pass in
/// the real `promtool`, every rule's expression reads only agreed metrics, and the scrape config loads
/// them.
#[test]
fn the_alerts_are_valid_tested_and_loaded() {
    let rules = deploy("prometheus/alerts.yml");
    let out = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = deploy("prometheus/alerts_test.yml");
    let out = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
    let agreed = agreed();
    let text = read("prometheus/alerts.yml");
    let mut checked = 0;
    for line in text.lines().map(str::trim) {
        for name in metric_names(line) {
            assert!(
                family(&name, &agreed).is_some(),
                "alerts.yml reads {name}, which no service exports"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 9,
        "too few metrics found in the alerts: {checked}"
    );
    assert!(read("prometheus/prometheus.yml").contains("alerts.yml"));
}

#[test]
fn grafana_and_tracing_files_name_their_backends() {
    let datasources = read("grafana/provisioning/datasources/datapath.yml");
    for uid in ["uid: prometheus", "uid: jaeger", "uid: tempo"] {
        assert!(datasources.contains(uid), "{uid} missing");
    }
    let dashboards = read("grafana/provisioning/dashboards/datapath.yml");
    assert!(dashboards.contains("/var/lib/grafana/dashboards"));
    let compose = read("observability/docker-compose.yml");
    for needle in [
        "jaegertracing/all-in-one",
        "COLLECTOR_OTLP_ENABLED",
        "grafana/tempo",
        "tempo.yaml",
        "datapath.json",
    ] {
        assert!(
            compose.contains(needle),
            "{needle} missing from docker-compose.yml"
        );
    }
    assert!(read("observability/tempo.yaml").contains("127.0.0.1:4317"));
    let env = read("observability/otel.env");
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317",
        "OTEL_TRACES_SAMPLER=",
        "OTEL_SERVICE_NAME=",
        "OTEL_SDK_DISABLED=",
    ] {
        assert!(env.contains(var), "{var} missing from otel.env");
    }
}
