//! The monitoring shipped in `deploy/` (the Grafana dashboard and the
//! Prometheus alerts) is well formed and queries only series the server
//! exposes: the names are taken from `server/src/metrics.rs`, so renaming a
//! series there breaks this test instead of a dashboard in production.
//!
//! If `promtool` is on the PATH (or `PROMTOOL` names it), the alert rules and
//! every dashboard query are also checked by it; without it those checks are
//! skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const DASHBOARD: &str = "deploy/grafana/pantry.json";
const ALERTS: &str = "deploy/prometheus/pantry-alerts.yml";
const METRICS_SOURCE: &str = "server/src/metrics.rs";

/// The series of the `prometheus` crate's process collector.
const PROCESS_SERIES: [&str; 7] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// The alerts operators are told about.
const REQUIRED_ALERTS: [&str; 7] = [
    "PantryServerDown",
    "PantryRejectedHandshakes",
    "PantryClientsOffline",
    "PantryManyClientsOffline",
    "PantryDescriptorsNearLimit",
    "PantryRequestsPilingUp",
    "PantryQueuedBytes",
];

fn path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names (`pantry_…`, `process_…`) an expression mentions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["pantry_", "process_"] {
        for (at, _) in expr.match_indices(prefix) {
            if expr[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let rest = &expr[at..];
            let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            names.insert(rest[..end].to_string());
        }
    }
    names
}

/// The string literals that follow each occurrence of `marker` in `source`
/// (the first literal after it, skipping whitespace).
fn literals_after<'a>(source: &'a str, marker: &str) -> Vec<&'a str> {
    source
        .match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = source[at + marker.len()..].trim_start().strip_prefix('"')?;
            Some(&rest[..rest.find('"')?])
        })
        .collect()
}

/// Every series the server exposes: the `"pantry_…"` names registered in
/// server/src/metrics.rs (a histogram as its `_bucket`, `_sum` and `_count`
/// series), and the process collector's.
fn exposed() -> BTreeSet<String> {
    let source = read(METRICS_SOURCE);
    // Only the registrations, not the unit tests' expectations.
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    let histograms: BTreeSet<&str> = literals_after(source, "HistogramOpts::new(").into_iter().collect();
    assert!(!histograms.is_empty(), "no histogram found in {METRICS_SOURCE}");
    let mut series = BTreeSet::new();
    for literal in source.split('"').skip(1).step_by(2) {
        if !literal.starts_with("pantry_") || !literal.chars().all(is_ident) {
            continue;
        }
        if histograms.contains(literal) {
            for suffix in ["_bucket", "_sum", "_count"] {
                series.insert(format!("{literal}{suffix}"));
            }
        } else {
            series.insert(literal.to_string());
        }
    }
    assert!(
        series.len() >= 12 && series.contains("pantry_build_info") && series.contains("pantry_handshakes_total"),
        "cannot find the series registered in {METRICS_SOURCE}: {series:?}"
    );
    series.extend(PROCESS_SERIES.iter().map(|s| s.to_string()));
    series
}

/// Every name in `exprs` is an exposed series.
fn assert_known_series<'a>(file: &str, exprs: impl IntoIterator<Item = &'a str>, exposed: &BTreeSet<String>) {
    for expr in exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name),
                "{file}: `{name}` is not a series the server exposes (renamed in {METRICS_SOURCE}?)\n  in: {expr}"
            );
        }
    }
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, rows and the panels inside collapsed rows included.
fn all_panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("dashboard has panels") {
        out.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn panel_exprs(panel: &Json) -> Vec<&str> {
    panel["targets"].as_array().into_iter().flatten().filter_map(|t| t["expr"].as_str()).collect()
}

/// The query of a templating variable: a string, or `{"query": …}`.
fn variable_query(variable: &Json) -> &str {
    variable["query"].as_str().or_else(|| variable["query"]["query"].as_str()).unwrap_or_default()
}

fn variable<'a>(dashboard: &'a Json, name: &str) -> &'a Json {
    dashboard["templating"]["list"]
        .as_array()
        .expect("dashboard has templating variables")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{DASHBOARD}: no `{name}` variable"))
}

#[test]
fn dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "pantry");
    assert_eq!(dashboard["title"], "Pantry server");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");

    let datasource = variable(&dashboard, "datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let instance = variable(&dashboard, "instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(variable_query(instance).replace(' ', ""), "label_values(pantry_build_info,instance)");

    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(&str, [u64; 4])> = Vec::new();
    for panel in all_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "{DASHBOARD}: a panel without a title: {panel}");
        let id = panel["id"].as_u64().unwrap_or_else(|| panic!("{DASHBOARD}: panel `{title}` has no id"));
        assert!(ids.insert(id), "{DASHBOARD}: panel id {id} is used twice (`{title}`)");

        let grid = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"]
            .map(|k| grid[k].as_u64().unwrap_or_else(|| panic!("{DASHBOARD}: panel `{title}` has no gridPos.{k}")));
        assert!(h > 0 && w > 0 && x + w <= 24, "{DASHBOARD}: panel `{title}` has a bad gridPos {grid}");
        for (other, [oh, ow, ox, oy]) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "{DASHBOARD}: panels `{title}` and `{other}` overlap");
        }
        boxes.push((title, [h, w, x, y]));

        let kind = panel["type"].as_str().unwrap_or_default();
        if kind == "row" {
            continue;
        }
        assert!(["timeseries", "stat"].contains(&kind), "{DASHBOARD}: panel `{title}` is a {kind}");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{DASHBOARD}: panel `{title}`'s datasource");
        let exprs = panel_exprs(panel);
        assert!(!exprs.is_empty(), "{DASHBOARD}: panel `{title}` has no target");
        for expr in exprs {
            assert!(
                expr.contains(r#"instance=~"$instance""#),
                "{DASHBOARD}: panel `{title}` ignores the instance variable: {expr}"
            );
        }
    }
}

#[test]
fn dashboard_queries_exposed_series_and_shows_them_all() {
    let dashboard = dashboard();
    let exposed = exposed();
    let mut exprs: Vec<&str> = all_panels(&dashboard).into_iter().flat_map(panel_exprs).collect();
    exprs.extend(dashboard["templating"]["list"].as_array().into_iter().flatten().map(variable_query));
    assert_known_series(DASHBOARD, exprs.iter().copied(), &exposed);

    let shown: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for series in &exposed {
        let hidden = series.starts_with("pantry_")
            && !series.ends_with("_sum")
            && !series.ends_with("_count")
            && !shown.contains(series);
        assert!(!hidden, "{DASHBOARD}: no panel shows `{series}`");
    }
}

fn alerts() -> Yaml {
    serde_yaml::from_str(&read(ALERTS)).unwrap_or_else(|e| panic!("{ALERTS}: {e}"))
}

fn text<'a>(value: &'a Yaml, key: &str, alert: &str) -> &'a str {
    value.get(key).and_then(Yaml::as_str).unwrap_or_else(|| panic!("{ALERTS}: {alert} has no `{key}`"))
}

#[test]
fn alerts_are_well_formed() {
    let source = read(ALERTS);
    for hint in ["rule_files:", "job_name: pantry", "127.0.0.1:9105"] {
        assert!(source.contains(hint), "{ALERTS}: the header should show `{hint}`");
    }
    let alerts = alerts();
    let groups = alerts["groups"].as_sequence().expect("groups");
    assert!(groups.iter().any(|g| g["name"] == "pantry"), "{ALERTS}: no `pantry` group");

    let exposed = exposed();
    let mut names = BTreeMap::new();
    for rule in groups.iter().flat_map(|g| g["rules"].as_sequence().expect("rules")) {
        let name = text(rule, "alert", "a rule");
        assert!(names.insert(name, ()).is_none(), "{ALERTS}: {name} is defined twice");
        let expr = text(rule, "expr", name);
        assert!(expr.contains(r#"job="pantry""#), "{ALERTS}: {name} does not select job=\"pantry\": {expr}");
        assert_known_series(ALERTS, [expr], &exposed);

        let duration = text(rule, "for", name);
        let unit = duration.trim_start_matches(|c: char| c.is_ascii_digit());
        assert!(
            unit.len() < duration.len() && ["s", "m", "h", "d"].contains(&unit),
            "{ALERTS}: {name} has `for: {duration}`"
        );
        let severity = text(&rule["labels"], "severity", name);
        assert!(["critical", "warning", "info"].contains(&severity), "{ALERTS}: {name} has severity {severity}");
        for key in ["summary", "description"] {
            assert!(!text(&rule["annotations"], key, name).trim().is_empty(), "{ALERTS}: {name}'s {key} is empty");
        }
    }
    for required in REQUIRED_ALERTS {
        assert!(names.contains_key(required), "{ALERTS}: {required} is missing");
    }
}

/// `promtool check rules FILE`, or None when there is no promtool.
fn promtool_check(file: &Path) -> Option<std::process::Output> {
    let promtool = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    match Command::new(&promtool).arg("check").arg("rules").arg(file).output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("no promtool: skipping its checks");
            None
        }
        Err(e) => panic!("cannot run {promtool:?}: {e}"),
    }
}

fn assert_success(what: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "promtool rejects {what}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_alerts_and_dashboard_queries() {
    let Some(output) = promtool_check(&path(ALERTS)) else {
        return;
    };
    assert_success(ALERTS, &output);

    // The dashboard's queries as recording rules (JSON is YAML), with
    // Grafana's variables replaced by what they expand to.
    let dashboard = dashboard();
    let rules: Vec<Json> = all_panels(&dashboard)
        .into_iter()
        .flat_map(panel_exprs)
        .enumerate()
        .map(|(n, expr)| {
            let expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*");
            serde_json::json!({ "record": format!("dashboard:query{n}"), "expr": expr })
        })
        .collect();
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    let groups = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(file.path(), groups.to_string()).unwrap();
    let output = promtool_check(file.path()).expect("promtool vanished");
    assert_success(&format!("a query of {DASHBOARD}"), &output);
}
