//! Prometheus metrics, named `botd_<what>_<unit>[_total]`, with label values from small
//! fixed sets (no per-bot labels). One set per process; [`Metrics::get`] hands it out and
//! `/metrics` renders it.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::BotState;

/// Latency buckets from 100 µs to 2 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Outcomes of a message: `complete`, or the error code it ended with.
pub const MESSAGE_OUTCOMES: &[&str] = &[
    "complete",
    "cancelled",
    "deadline_exceeded",
    "internal",
    "llm_error",
    "llm_overloaded",
    "llm_timeout",
    "llm_unavailable",
    "not_ready",
    "shutting_down",
];

/// Why a request was refused without being handled.
pub const REJECTION_REASONS: &[&str] = &[
    "mailbox_full",
    "llm_overloaded",
    "llm_unavailable",
    "no_bot_available",
    "shutting_down",
    "rate_limited",
];

/// Outcomes of one model attempt.
pub const LLM_OUTCOMES: &[&str] = &[
    "ok",
    "unavailable",
    "timeout",
    "status_4xx",
    "status_5xx",
    "stream_error",
    "broken",
    "protocol",
];

/// Every metric botd exports.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub bots: IntGaugeVec,
    pub bot_crashes: IntCounter,
    pub bot_restarts: IntCounter,
    pub messages: IntCounterVec,
    pub message_duration: Histogram,
    pub overhead: Histogram,
    pub llm_requests: IntCounterVec,
    pub llm_duration: Histogram,
    pub llm_in_flight: IntGauge,
    pub llm_queue_depth: IntGauge,
    pub llm_queue_wait: Histogram,
    pub llm_queue_capacity: IntGauge,
    pub llm_max_concurrent: IntGauge,
    pub llm_tokens: IntCounterVec,
    pub llm_retries: IntCounter,
    pub llm_breaker_open: IntGauge,
    pub rejections: IntCounterVec,
    pub db_connections: IntGaugeVec,
    pub db_query_duration: Histogram,
    /// Writes per group commit of the store's writer (1 = a write committed alone).
    pub db_write_batch: Histogram,
    pub build_info: IntGaugeVec,
}

fn histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    /// The process's metrics.
    pub fn get() -> &'static Metrics {
        &METRICS
    }

    // The names and label sets are fixed and valid: building them cannot fail at run time
    // (a test renders them all).
    #[allow(clippy::too_many_lines)]
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            http_requests: counter_vec(
                "botd_http_requests_total",
                "HTTP requests by route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "botd_http_request_duration_seconds",
                    "HTTP request latency by route.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
            bots: gauge_vec("botd_bots", "Bots by state.", &["state"]),
            bot_crashes: IntCounter::new(
                "botd_bot_crashes_total",
                "Bot crashes (panics and unexpected stops).",
            )
            .unwrap_or_else(|e| panic!("{e}")),
            bot_restarts: IntCounter::new(
                "botd_bot_restarts_total",
                "Restarts made by the supervisor.",
            )
            .unwrap_or_else(|e| panic!("{e}")),
            messages: counter_vec(
                "botd_messages_total",
                "Messages handled by bots, by outcome.",
                &["outcome"],
            ),
            message_duration: histogram(
                "botd_message_duration_seconds",
                "End-to-end time of an answered message, from arrival to the stored reply.",
            ),
            overhead: histogram(
                "botd_daemon_overhead_seconds",
                "Time botd adds to an answered message: end-to-end minus model time.",
            ),
            llm_requests: counter_vec(
                "botd_llm_requests_total",
                "Attempts at the model server, by outcome.",
                &["outcome"],
            ),
            llm_duration: histogram(
                "botd_llm_request_duration_seconds",
                "Model call time, retries included.",
            ),
            llm_in_flight: IntGauge::new("botd_llm_in_flight", "Model calls in flight.")
                .unwrap_or_else(|e| panic!("{e}")),
            llm_queue_depth: IntGauge::new(
                "botd_llm_queue_depth",
                "Model calls waiting for a slot.",
            )
            .unwrap_or_else(|e| panic!("{e}")),
            llm_queue_wait: histogram(
                "botd_llm_queue_wait_seconds",
                "Time a model call waited for a slot.",
            ),
            llm_queue_capacity: IntGauge::new(
                "botd_llm_queue_capacity",
                "Model calls that may wait for a slot (llm.max_queue).",
            )
            .unwrap_or_else(|e| panic!("{e}")),
            llm_max_concurrent: IntGauge::new(
                "botd_llm_max_concurrent",
                "Model calls that may be in flight at once (llm.max_concurrent).",
            )
            .unwrap_or_else(|e| panic!("{e}")),
            llm_tokens: counter_vec(
                "botd_llm_tokens_total",
                "Tokens the model reported, by kind.",
                &["kind"],
            ),
            llm_retries: IntCounter::new("botd_llm_retries_total", "Retried model attempts.")
                .unwrap_or_else(|e| panic!("{e}")),
            llm_breaker_open: IntGauge::new(
                "botd_llm_breaker_open",
                "1 while the circuit breaker to the model server is open.",
            )
            .unwrap_or_else(|e| panic!("{e}")),
            rejections: counter_vec(
                "botd_rejections_total",
                "Requests refused without being handled, by reason.",
                &["reason"],
            ),
            db_connections: gauge_vec(
                "botd_db_pool_connections",
                "Database pool connections by state (idle, in_use, max).",
                &["state"],
            ),
            db_query_duration: histogram(
                "botd_db_query_duration_seconds",
                "Time of one store operation.",
            ),
            db_write_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "botd_db_write_batch_size",
                    "Writes committed together in one group commit of the store's writer.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )
            .unwrap_or_else(|e| panic!("metric botd_db_write_batch_size: {e}")),
            build_info: gauge_vec(
                "botd_build_info",
                "Always 1; labels say the build.",
                &["version"],
            ),
        };
        let r = &m.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.http_requests.clone()),
            Box::new(m.http_duration.clone()),
            Box::new(m.bots.clone()),
            Box::new(m.bot_crashes.clone()),
            Box::new(m.bot_restarts.clone()),
            Box::new(m.messages.clone()),
            Box::new(m.message_duration.clone()),
            Box::new(m.overhead.clone()),
            Box::new(m.llm_requests.clone()),
            Box::new(m.llm_duration.clone()),
            Box::new(m.llm_in_flight.clone()),
            Box::new(m.llm_queue_depth.clone()),
            Box::new(m.llm_queue_wait.clone()),
            Box::new(m.llm_queue_capacity.clone()),
            Box::new(m.llm_max_concurrent.clone()),
            Box::new(m.llm_tokens.clone()),
            Box::new(m.llm_retries.clone()),
            Box::new(m.llm_breaker_open.clone()),
            Box::new(m.rejections.clone()),
            Box::new(m.db_connections.clone()),
            Box::new(m.db_query_duration.clone()),
            Box::new(m.db_write_batch.clone()),
            Box::new(m.build_info.clone()),
        ];
        for c in all {
            r.register(c)
                .unwrap_or_else(|e| panic!("registering a metric: {e}"));
        }
        // Every fixed label value exists from the start, so every family appears.
        for s in BotState::ALL {
            m.bots.with_label_values(&[s.as_str()]).set(0);
        }
        for o in MESSAGE_OUTCOMES {
            m.messages.with_label_values(&[o]);
        }
        for o in LLM_OUTCOMES {
            m.llm_requests.with_label_values(&[o]);
        }
        for r in REJECTION_REASONS {
            m.rejections.with_label_values(&[r]);
        }
        for k in ["prompt", "completion"] {
            m.llm_tokens.with_label_values(&[k]);
        }
        for s in ["idle", "in_use", "max"] {
            m.db_connections.with_label_values(&[s]).set(0);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// Counts a message's outcome (an error code, or `complete`).
    pub fn message(&self, outcome: &str) {
        let o = if MESSAGE_OUTCOMES.contains(&outcome) {
            outcome
        } else {
            "internal"
        };
        self.messages.with_label_values(&[o]).inc();
    }

    /// Counts a refusal, if `code` is one.
    pub fn rejection(&self, code: &str) {
        if REJECTION_REASONS.contains(&code) {
            self.rejections.with_label_values(&[code]).inc();
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_present_from_the_start_with_botd_names() {
        let text = Metrics::get().render();
        // The HTTP families get their route series from the daemon at start.
        for name in [
            "botd_bots",
            "botd_bot_restarts_total",
            "botd_messages_total",
            "botd_daemon_overhead_seconds",
            "botd_llm_in_flight",
            "botd_llm_queue_depth",
            "botd_llm_queue_wait_seconds",
            "botd_llm_queue_capacity",
            "botd_llm_max_concurrent",
            "botd_llm_breaker_open",
            "botd_rejections_total",
            "botd_db_pool_connections",
            "botd_db_write_batch_size",
            "botd_build_info",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains("botd_bots{state=\"backoff\"} 0"));
    }
}
