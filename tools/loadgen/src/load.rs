//! Load shapes and what they measured.
//!
//! - [`open_loop`]: a fixed arrival schedule (request `i` is due at `start + i / rate`),
//!   dispatched by a dedicated thread that sleeps to each due time, and every latency is
//!   measured from the *scheduled* time. A server that falls behind cannot slow the
//!   arrivals down, and the time a request waits because of that shows in its latency.
//! - [`closed_loop`]: `workers` callers each sending the next request when the last one
//!   is answered, for the highest rate a path sustains.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one request ended with.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The HTTP status, or `None` when the request failed below HTTP.
    pub status: Option<u16>,
    /// When the answer counts as arrived (the end of the body, or the first token of a
    /// stream); `None` means "when the future finished".
    pub at: Option<Instant>,
}

impl Outcome {
    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            at: None,
        }
    }

    pub fn failed() -> Self {
        Self {
            status: None,
            at: None,
        }
    }
}

/// Latencies in microseconds, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Counts and latencies of one load run, per status.
#[derive(Clone)]
pub struct Stats {
    /// Requests in the measured window (after the warm-up).
    pub sent: u64,
    /// The measured window.
    pub window: Duration,
    /// Per status (0 = failed below HTTP): how many and their latencies.
    pub by_status: BTreeMap<u16, Histogram<u64>>,
    /// How late the dispatcher sent requests (µs), to show the generator kept up.
    pub dispatch_lag: Histogram<u64>,
    /// Requests still unanswered when the run gave up waiting.
    pub unanswered: u64,
}

impl Stats {
    fn new(window: Duration) -> Self {
        Self {
            sent: 0,
            window,
            by_status: BTreeMap::new(),
            dispatch_lag: histogram(),
            unanswered: 0,
        }
    }

    fn record(&mut self, status: u16, micros: u64) {
        let h = self.by_status.entry(status).or_insert_with(histogram);
        let _ = h.record(micros.max(1));
    }

    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).map_or(0, |h| h.len())
    }

    /// Answers with this status per second of the window.
    pub fn rate(&self, status: u16) -> f64 {
        self.count(status) as f64 / self.window.as_secs_f64()
    }

    /// Everything that was not a 2xx (failures below HTTP and unanswered included).
    pub fn errors(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, h)| h.len())
            .sum::<u64>()
            + self.unanswered
    }

    /// The latency quantile (ms) of answers with `status`.
    pub fn ms(&self, status: u16, q: f64) -> f64 {
        self.by_status
            .get(&status)
            .map_or(f64::NAN, |h| h.value_at_quantile(q) as f64 / 1000.0)
    }

    /// `200:1234 503:5` and so on.
    pub fn statuses(&self) -> String {
        let mut parts: Vec<String> = self
            .by_status
            .iter()
            .map(|(s, h)| {
                let s = if *s == 0 {
                    "failed".to_owned()
                } else {
                    s.to_string()
                };
                format!("{s}:{}", h.len())
            })
            .collect();
        if self.unanswered > 0 {
            parts.push(format!("unanswered:{}", self.unanswered));
        }
        parts.join(" ")
    }
}

/// An open-loop run: `rate` requests per second for `warmup + duration`; only requests
/// scheduled after the warm-up are counted.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long to wait for the last answers after the schedule ends.
    pub grace: Duration,
}

/// Runs `plan`, calling `make(i)` for request `i` at its scheduled time.
pub async fn open_loop<F, Fut>(plan: Plan, make: F) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let warm_n = (plan.rate * plan.warmup.as_secs_f64()).round() as u64;
    let total = warm_n + (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let stats = Arc::new(Mutex::new(Stats::new(plan.duration)));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let handle = tokio::runtime::Handle::current();
    let make = Arc::new(make);
    let start = Instant::now() + Duration::from_millis(20);
    let dispatcher = {
        let stats = stats.clone();
        std::thread::spawn(move || {
            for i in 0..total {
                let due = start + Duration::from_nanos((i as f64 * 1e9 / plan.rate) as u64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let lag = Instant::now().saturating_duration_since(due);
                let counted = i >= warm_n;
                if counted {
                    if let Ok(mut s) = stats.lock() {
                        let _ = s.dispatch_lag.record(lag.as_micros() as u64 + 1);
                        s.sent += 1;
                    }
                }
                let (make, stats, done) = (make.clone(), stats.clone(), done_tx.clone());
                handle.spawn(async move {
                    let out = make(i).await;
                    if counted {
                        let at = out.at.unwrap_or_else(Instant::now);
                        let micros = at.saturating_duration_since(due).as_micros() as u64;
                        if let Ok(mut s) = stats.lock() {
                            s.record(out.status.unwrap_or(0), micros);
                        }
                    }
                    let _ = done.send(());
                });
            }
        })
    };
    let mut answered = 0u64;
    let end = start + interval.mul_f64(total as f64) + plan.grace;
    while answered < total {
        match tokio::time::timeout_at(end.into(), done_rx.recv()).await {
            Ok(Some(())) => answered += 1,
            _ => break,
        }
    }
    let _ = tokio::task::spawn_blocking(move || dispatcher.join()).await;
    let mut s = stats
        .lock()
        .map(|s| s.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    s.unanswered = total - answered.min(total);
    s.unanswered = s.unanswered.min(s.sent);
    s
}

/// `workers` callers in a loop for `warmup + duration`; latency from each send.
pub async fn closed_loop<F, Fut>(
    workers: usize,
    warmup: Duration,
    duration: Duration,
    make: F,
) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let make = Arc::new(make);
    let begin = Instant::now();
    let counted_from = begin + warmup;
    let end = counted_from + duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Stats::new(duration);
            let mut i = w as u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let out = make(i).await;
                i += workers as u64;
                if sent >= counted_from {
                    let at = out.at.unwrap_or_else(Instant::now);
                    s.sent += 1;
                    s.record(out.status.unwrap_or(0), (at - sent).as_micros() as u64);
                }
            }
            s
        }));
    }
    let mut all = Stats::new(duration);
    for t in tasks {
        if let Ok(s) = t.await {
            all.sent += s.sent;
            for (status, h) in s.by_status {
                let _ = all
                    .by_status
                    .entry(status)
                    .or_insert_with(histogram)
                    .add(&h);
            }
        }
    }
    all
}
