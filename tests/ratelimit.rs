//! Rate limits from the outside: a budget per token subject (per client IP without one),
//! 429 `rate_limited` with Retry-After, live on reload, shared by daemons on one Redis,
//! and a Redis outage that falls back to local buckets instead of failing requests.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{spawn_app_with, TestApp};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// GET `path` with an optional token: status and Retry-After.
async fn hit(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Option<u64>, Value) {
    let mut req = app.http.get(app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let (s, body) = support::status_json(r).await;
    (s, retry, body)
}

fn rejections() -> f64 {
    let text = botd_actors::metrics::Metrics::get().render();
    text.lines()
        .find(|l| l.starts_with("botd_rejections_total{reason=\"rate_limited\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("the rate_limited series exists")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_over_its_budget_gets_429_with_retry_after() {
    let app = spawn_app_with(|c| c.rate_limit.requests_per_minute = 5).await;
    let before = rejections();
    for _ in 0..5 {
        assert_eq!(hit(&app, "/api/v1/status", Some(&app.viewer)).await.0, 200);
    }
    let (s, retry, body) = hit(&app, "/api/v1/status", Some(&app.viewer)).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(retry.is_some_and(|r| r >= 1), "{retry:?}");
    assert!(rejections() > before, "the rejection was not counted");
    // The budget is the subject's, whatever its role or route: the admin token of the
    // same subject is limited too, and a token of another subject is not.
    assert_eq!(hit(&app, "/api/v1/bots", Some(&app.admin)).await.0, 429);
    let other = app.keys.mint(
        "someone-else",
        botd::auth::Role::Viewer,
        botd::auth::TokenKind::Service,
        Duration::from_secs(60),
    );
    assert_eq!(hit(&app, "/api/v1/status", Some(&other)).await.0, 200);
    // Health, readiness and metrics are never limited.
    for _ in 0..10 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(hit(&app, path, None).await.0, 200, "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_token_are_limited_per_client_ip() {
    let app = spawn_app_with(|c| c.rate_limit.requests_per_minute = 4).await;
    // A forged token does not get the subject's budget: it counts as the address's.
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0ZXN0LXVzZXIifQ.bad";
    assert_eq!(hit(&app, "/api/v1/openapi.json", None).await.0, 200);
    assert_eq!(hit(&app, "/api/v1/status", Some(forged)).await.0, 401);
    assert_eq!(hit(&app, "/api/v1/status", None).await.0, 401);
    assert_eq!(hit(&app, "/api/v1/nowhere", None).await.0, 404);
    let (s, retry, body) = hit(&app, "/api/v1/openapi.json", None).await;
    assert_eq!(s, 429, "{body}");
    assert!(retry.is_some());
    // The real subject still has its own budget.
    assert_eq!(hit(&app, "/api/v1/status", Some(&app.viewer)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raised_limit_applies_on_reload() {
    let app = spawn_app_with(|c| c.rate_limit.requests_per_minute = 2).await;
    for _ in 0..2 {
        assert_eq!(hit(&app, "/api/v1/status", Some(&app.viewer)).await.0, 200);
    }
    assert_eq!(hit(&app, "/api/v1/status", Some(&app.viewer)).await.0, 429);
    // What SIGHUP does with a re-read configuration.
    let mut raised = app.config.clone();
    raised.rate_limit.requests_per_minute = 6_000_000;
    app.daemon.as_ref().unwrap().reload(&raised);
    // 100 000 tokens a second now: the bucket refills at once.
    let until = Instant::now() + Duration::from_secs(10);
    while hit(&app, "/api/v1/status", Some(&app.viewer)).await.0 != 200 {
        assert!(Instant::now() < until, "the raised limit never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        assert_eq!(hit(&app, "/api/v1/status", Some(&app.viewer)).await.0, 200);
    }
}

/// The shared Redis, or `None` (with a note) when it is not there outside CI.
async fn redis_url() -> Option<String> {
    let url = std::env::var("BOTD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    match TcpStream::connect(&addr).await {
        Ok(_) => Some(url),
        Err(e) => {
            assert!(
                !botd_actors::store::testing::under_ci(),
                "Redis at {url} is needed under CI: {e}"
            );
            eprintln!("skipped: Redis at {url} does not answer ({e})");
            None
        }
    }
}

fn prefix() -> String {
    format!("botd-test-{:016x}:", rand::random::<u64>())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_on_one_redis_spend_one_budget() {
    let Some(url) = redis_url().await else { return };
    let prefix = prefix();
    let tweak = |c: &mut botd::config::Config| {
        c.rate_limit.requests_per_minute = 6;
        c.redis.url = Some(url.clone());
        c.redis.key_prefix = prefix.clone();
    };
    let a = spawn_app_with(tweak).await;
    let b = spawn_app_with(tweak).await;
    // The same secret and subject on both: one budget of 6 between them.
    for app in [&a, &b, &a, &b, &a, &b] {
        assert_eq!(hit(app, "/api/v1/status", Some(&a.viewer)).await.0, 200);
    }
    let (s, retry, _) = hit(&a, "/api/v1/status", Some(&a.viewer)).await;
    assert_eq!(s, 429);
    assert!(retry.is_some_and(|r| r >= 1));
    assert_eq!(hit(&b, "/api/v1/status", Some(&b.viewer)).await.0, 429);
}

/// A TCP proxy the test owns: forwards to `target` until it is cut, then closes every
/// connection and refuses new ones.
struct Proxy {
    addr: String,
    cut: CancellationToken,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if stop.is_cancelled() {
                    drop(inbound);
                    continue;
                }
                let (stop, target) = (stop.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_cut_the_limits_fall_back_to_local_buckets() {
    let Some(url) = redis_url().await else { return };
    let target = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let proxy = Proxy::start(target).await;
    let prefix = prefix();
    let app = spawn_app_with(|c| {
        c.rate_limit.requests_per_minute = 4;
        c.redis.url = Some(format!("redis://{}", proxy.addr));
        c.redis.key_prefix = prefix.clone();
    })
    .await;
    // Two of the four spent in Redis.
    for _ in 0..2 {
        assert_eq!(hit(&app, "/api/v1/status", Some(&app.viewer)).await.0, 200);
    }
    proxy.cut.cancel();
    // Redis is gone: requests are still answered, from this daemon's own full bucket
    // (4), never with a 500.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(hit(&app, "/api/v1/status", Some(&app.viewer)).await.0);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429));
    let logs = app.logs();
    assert!(
        logs.contains("Redis cannot be reached; rate limits fall back"),
        "no warning in the log"
    );
}
