//! The Grafana dashboards (deploy/grafana) and the alert rules (deploy/prometheus) use
//! only what botd exports: every metric name in every expression, and every fixed label
//! value they match on, is checked against a live scrape of the daemon. `up` is
//! Prometheus's own; `job` and `instance` are the labels Prometheus adds.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};
use support::spawn_app;

/// PromQL words that are not metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// Aggregations, which may be followed by `by (…)` before their parenthesis.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "count",
    "count_values",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "limitk",
];

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// A scrape: each sample name with its label pairs.
struct Scrape {
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, labels) = match line.find('{') {
                Some(i) => {
                    let end = line.rfind('}').expect("a closing brace");
                    (&line[..i], parse_labels(&line[i + 1..end]))
                }
                None => (line.split_whitespace().next().unwrap(), BTreeMap::new()),
            };
            series.entry(name.to_owned()).or_default().push(labels);
        }
        Scrape { series }
    }
}

/// `a="x",b="y"` (values without commas or escaped quotes, as botd's are).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim().trim_start_matches(',').trim();
        let after = &rest[eq + 1..];
        let Some(stripped) = after.strip_prefix('"') else {
            break;
        };
        let close = stripped.find('"').expect("a closing quote");
        out.insert(name.to_owned(), stripped[..close].to_owned());
        rest = &stripped[close + 1..];
    }
    out
}

/// One selector in an expression: a metric name and its exact (`=`) label matchers.
#[derive(Debug)]
struct Selector {
    metric: String,
    exact: Vec<(String, String)>,
}

/// The selectors of a PromQL expression. Grafana variables (`$instance`,
/// `$__rate_interval`) may appear in matchers and ranges.
fn selectors(expr: &str) -> Vec<Selector> {
    // label_values(SELECTOR, label): the second argument is a label, not a metric.
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(rest) => rest
            .rsplit_once(',')
            .map_or(rest, |(sel, _)| sel)
            .to_owned(),
        None => expr.to_owned(),
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // After by/without/on/ignoring/group_*: the next parenthesised list holds labels.
    let mut label_list_next = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '(' && label_list_next {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            i += 1;
            label_list_next = false;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // A `$name` variable outside a matcher, or a number's exponent.
            let prev = start.checked_sub(1).map(|p| chars[p]);
            if prev == Some('$') || prev.is_some_and(|p| p.is_ascii_digit() || p == '.') {
                continue;
            }
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let next = chars.get(j).copied();
            let lower = word.to_ascii_lowercase();
            if KEYWORDS.contains(&lower.as_str()) {
                label_list_next = matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                continue;
            }
            if next == Some('(') || AGGREGATIONS.contains(&lower.as_str()) {
                // A function or an aggregation (`sum by (x) (…)`).
                continue;
            }
            let mut exact = Vec::new();
            if next == Some('{') {
                let close = (j..chars.len())
                    .find(|&k| chars[k] == '}')
                    .expect("a closing brace");
                let inner: String = chars[j + 1..close].iter().collect();
                for m in split_matchers(&inner) {
                    if let Some((name, value)) = m.split_once("=\"") {
                        let name = name.trim();
                        if !name.ends_with(['!', '=', '~']) {
                            exact.push((name.to_owned(), value.trim_end_matches('"').to_owned()));
                        }
                    }
                }
                i = close + 1;
            }
            out.push(Selector {
                metric: word,
                exact,
            });
        } else {
            i += 1;
        }
    }
    out
}

/// Splits `a="x",b=~"y|z"` at the commas outside quotes.
fn split_matchers(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// What is wrong with `expr` against the scrape, if anything.
fn problems(scrape: &Scrape, expr: &str) -> Vec<String> {
    let found = selectors(expr);
    if found.is_empty() {
        return vec![format!("no metric in {expr:?}")];
    }
    let mut out = Vec::new();
    for sel in found {
        if sel.metric == "up" {
            continue;
        }
        if !sel.metric.starts_with("botd_") {
            out.push(format!("{} is not botd's", sel.metric));
            continue;
        }
        let Some(series) = scrape.series.get(&sel.metric) else {
            out.push(format!("{} is not in the scrape", sel.metric));
            continue;
        };
        for (label, value) in &sel.exact {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !series
                .iter()
                .any(|s| s.get(label).is_some_and(|v| v == value))
            {
                out.push(format!(
                    "{}{{{label}=\"{value}\"}} is not in the scrape",
                    sel.metric
                ));
            }
        }
    }
    out
}

/// Every `expr` of a dashboard's panels and every query of its variables.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The `expr:` lines of the alert rules (each expression is one line).
fn alert_exprs(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

async fn live_scrape() -> Scrape {
    let app = spawn_app().await;
    app.running_bot("dash", json!({})).await;
    let (status, _) = app.send("dash", "hello").await;
    assert_eq!(status, 200);
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Scrape::parse(&text)
}

#[test]
fn the_expression_reader_finds_metrics_and_exact_label_values_only() {
    let s = selectors(
        r#"histogram_quantile(0.95, sum by (job, le) (rate(botd_x_bucket{job="botd",instance=~"$instance",reason="a"}[$__rate_interval]))) / ignoring (state) botd_y > 1e3"#,
    );
    let names: Vec<&str> = s.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["botd_x_bucket", "botd_y"]);
    assert_eq!(
        s[0].exact,
        [
            ("job".to_owned(), "botd".to_owned()),
            ("reason".to_owned(), "a".to_owned())
        ]
    );
    let s = selectors(r#"label_values(botd_build_info{job="botd"}, instance)"#);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].metric, "botd_build_info");
    let scrape = Scrape::parse("# TYPE botd_y gauge\nbotd_y{state=\"a\"} 1\nbotd_z 2\n");
    assert!(problems(&scrape, r#"botd_y{state="a"} + botd_z"#).is_empty());
    assert_eq!(problems(&scrape, r#"botd_y{state="b"}"#).len(), 1);
    assert_eq!(problems(&scrape, "rate(botd_nope[5m])").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_and_alert_expression_uses_only_metrics_botd_exports() {
    let scrape = live_scrape().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    let mut checked = BTreeSet::new();
    let mut wrong = Vec::new();
    let dashboards = ["overview", "bots", "llm", "http"];
    for name in dashboards {
        let path = root.join(format!("deploy/grafana/botd-{name}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let dash: Value = serde_json::from_str(&text).expect("a dashboard is JSON");
        let mut queries = Vec::new();
        dashboard_queries(&dash, &mut queries);
        assert!(queries.len() >= 5, "{name}: only {} queries", queries.len());
        for q in queries {
            for p in problems(&scrape, &q) {
                wrong.push(format!("botd-{name}.json: {p} (in {q})"));
            }
            checked.extend(selectors(&q).into_iter().map(|s| s.metric));
        }
    }

    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let exprs = alert_exprs(&alerts);
    let alert_count = alerts
        .lines()
        .filter(|l| l.trim().starts_with("- alert:"))
        .count();
    assert_eq!(exprs.len(), alert_count, "one single-line expr per alert");
    for e in exprs {
        for p in problems(&scrape, &e) {
            wrong.push(format!("alerts.yml: {p} (in {e})"));
        }
        checked.extend(selectors(&e).into_iter().map(|s| s.metric));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The dashboards cover the families of ARCHITECTURE.md.
    for family in [
        "botd_http_requests_total",
        "botd_bots",
        "botd_bot_restarts_total",
        "botd_messages_total",
        "botd_message_duration_seconds_bucket",
        "botd_daemon_overhead_seconds_bucket",
        "botd_llm_requests_total",
        "botd_llm_in_flight",
        "botd_llm_queue_depth",
        "botd_llm_queue_wait_seconds_bucket",
        "botd_llm_tokens_total",
        "botd_rejections_total",
        "botd_db_pool_connections",
        "botd_db_query_duration_seconds_bucket",
        "botd_build_info",
    ] {
        assert!(checked.contains(family), "no dashboard shows {family}");
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section_in_operations_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let docs = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let anchors: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| {
            h.trim()
                .to_ascii_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        })
        .collect();
    let mut alert: Option<String> = None;
    let mut seen: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for line in alerts.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = Some(name.trim().to_owned());
            seen.insert(name.trim().to_owned(), BTreeSet::new());
            continue;
        }
        let Some(name) = &alert else { continue };
        let fields = seen.get_mut(name).unwrap();
        if let Some(sev) = line.strip_prefix("severity:") {
            assert!(
                ["critical", "warning"].contains(&sev.trim()),
                "{name}: severity {sev}"
            );
            fields.insert("severity");
        } else if line.starts_with("summary:") {
            fields.insert("summary");
        } else if let Some(url) = line.strip_prefix("runbook_url:") {
            let url = url.trim().trim_matches('"');
            let anchor = url
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| panic!("{name}: runbook {url} is not in docs/operations.md"));
            assert!(
                anchors.contains(anchor),
                "{name}: docs/operations.md has no section for #{anchor}"
            );
            assert_eq!(anchor, name.to_ascii_lowercase(), "{name}: runbook anchor");
            fields.insert("runbook");
        }
    }
    assert!(seen.len() >= 10, "{} alerts", seen.len());
    for (name, fields) in seen {
        assert_eq!(
            fields,
            BTreeSet::from(["runbook", "severity", "summary"]),
            "{name}"
        );
    }
}
