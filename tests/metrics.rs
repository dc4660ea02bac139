//! `/metrics` after some traffic: every family of ARCHITECTURE.md, in botd's names.

mod support;

use serde_json::json;
use support::spawn_app;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_cover_http_bots_messages_llm_and_the_database() {
    let app = spawn_app().await;
    app.running_bot("m", json!({})).await;
    for i in 0..3 {
        let (s, _) = app.send("m", &format!("hello {i}")).await;
        assert_eq!(s, 200);
    }
    app.sim.fail_next(3, 500, "boom");
    let (s, _) = app.send("m", "fails").await;
    assert_eq!(s, 502);
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for family in [
        "botd_http_requests_total",
        "botd_http_request_duration_seconds",
        "botd_bots",
        "botd_bot_restarts_total",
        "botd_bot_crashes_total",
        "botd_messages_total",
        "botd_message_duration_seconds",
        "botd_daemon_overhead_seconds",
        "botd_llm_requests_total",
        "botd_llm_request_duration_seconds",
        "botd_llm_in_flight",
        "botd_llm_queue_depth",
        "botd_llm_queue_wait_seconds",
        "botd_llm_tokens_total",
        "botd_llm_retries_total",
        "botd_llm_breaker_open",
        "botd_rejections_total",
        "botd_db_pool_connections",
        "botd_db_query_duration_seconds",
        "botd_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} is missing"
        );
    }
    // Metrics are per process and tests share one: check lower bounds only.
    assert!(value(&text, "botd_bots{state=\"running\"}") >= 1.0);
    assert!(value(&text, "botd_messages_total{outcome=\"complete\"}") >= 3.0);
    assert!(value(&text, "botd_messages_total{outcome=\"llm_error\"}") >= 1.0);
    assert!(value(&text, "botd_daemon_overhead_seconds_count") >= 3.0);
    assert!(value(&text, "botd_llm_retries_total") >= 2.0);
    assert!(value(&text, "botd_llm_requests_total{outcome=\"status_5xx\"}") >= 3.0);
    assert!(
        value(
            &text,
            "botd_http_requests_total{method=\"POST\",route=\"/api/v1/bots/{name}/messages\",status=\"200\"}"
        ) >= 3.0
    );
    assert!(!text.contains("hello 0"), "no message content in metrics");
    assert!(!text.contains("bot=\""), "no per-bot labels");
}
