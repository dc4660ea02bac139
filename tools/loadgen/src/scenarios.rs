//! The scenarios of docs/benchmarks.md, each starting its own simulator and daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::client::Http;
use crate::load::{closed_loop, open_loop, Outcome, Plan, Stats};
use crate::procs::{Daemon, Database, Sim, SimOptions};
use crate::prom::Buckets;

/// 100 bytes of message content.
pub const CONTENT: &str =
    "Hello, bot. This message is exactly one hundred bytes long, so every run sends the same payload!!!!!";

/// The daemon's own overhead histogram (total minus model time).
pub const OVERHEAD: &str = "botd_daemon_overhead_seconds";

/// What every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// Where `botd`, `ollama-sim` (and `botd-fault`) are.
    pub bin_dir: PathBuf,
    /// Repetitions of a measured run; medians are reported.
    pub runs: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Record a `perf` profile of the daemon during the first measured botd run here.
    pub profile: Option<PathBuf>,
}

/// `perf record` of one process, stopped (and written) when dropped.
pub struct Profile(std::process::Child);

impl Profile {
    pub fn start(pid: u32, out: &std::path::Path) -> anyhow::Result<Profile> {
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-F",
                "999",
                "-g",
                "--call-graph",
                "dwarf,16384",
                "-p",
            ])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        // perf needs a moment to attach.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Profile(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A simulator, a daemon and clients for both.
pub struct Bench {
    pub sim: Sim,
    pub daemon: Daemon,
    pub botd: Arc<Http>,
    pub direct: Arc<Http>,
    pub bots: Arc<Vec<String>>,
    pub token: Arc<str>,
}

impl Bench {
    /// Starts both processes and creates `bots` running bots named `bench-N` with `spec`.
    pub async fn start(
        c: &Common,
        sim: &SimOptions,
        db: &Database,
        bin: &str,
        extra: &[(&str, String)],
        bots: usize,
        spec: Value,
    ) -> anyhow::Result<Bench> {
        let sim = tokio::task::block_in_place(|| Sim::start(&c.bin_dir, sim))?;
        let daemon =
            tokio::task::block_in_place(|| Daemon::start(&c.bin_dir, bin, &sim.url, db, extra))?;
        let botd = Arc::new(Http::new(&daemon.url)?);
        let direct = Arc::new(Http::new(&sim.url)?);
        let token: Arc<str> = Arc::from(daemon.token.as_str());
        let names: Vec<String> = (1..=bots).map(|i| format!("bench-{i}")).collect();
        create_bots(&botd, &token, &names, &spec, 8).await?;
        Ok(Bench {
            sim,
            daemon,
            botd,
            direct,
            bots: Arc::new(names),
            token,
        })
    }

    /// Sends one plain message to the first bot and answers its status.
    pub async fn send(&self, conversation: &str, content: &str) -> anyhow::Result<u16> {
        let path = format!("/api/v1/bots/{}/messages", self.bots[0]);
        let body = message_body(conversation, false, content);
        let r = self
            .botd
            .call("POST", &path, Some(&self.token), body)
            .await?;
        Ok(r.status)
    }

    /// The overhead histogram as scraped now.
    pub async fn overhead(&self) -> anyhow::Result<Buckets> {
        let r = self
            .botd
            .call("GET", "/metrics", None, Bytes::new())
            .await?;
        Ok(Buckets::parse(&String::from_utf8_lossy(&r.body), OVERHEAD))
    }

    /// How many bots are running, from `/api/v1/status`.
    pub async fn running(&self) -> anyhow::Result<u64> {
        let (_, v) = self
            .botd
            .json("GET", "/api/v1/status", Some(&self.token), &Value::Null)
            .await?;
        Ok(v["bots"]["running"].as_u64().unwrap_or(0))
    }
}

/// Creates (and starts) bots through the API, `parallel` at a time.
pub async fn create_bots(
    http: &Arc<Http>,
    token: &Arc<str>,
    names: &[String],
    spec: &Value,
    parallel: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let names = Arc::new(names.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..parallel.max(1) {
        let (http, token, names, next) = (http.clone(), token.clone(), names.clone(), next.clone());
        let mut spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(name) = names.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                spec["name"] = json!(name);
                spec["autostart"] = json!(true);
                let (status, body) = http
                    .json("POST", "/api/v1/bots", Some(&token), &spec)
                    .await?;
                if status != 201 {
                    bail!("creating bot {name}: {status} {body}");
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The body of a message to a bot, in a conversation of its own.
fn message_body(conversation: &str, stream: bool, content: &str) -> Bytes {
    let mut v = json!({"content": content, "conversation": conversation});
    if stream {
        v["stream"] = json!(true);
    }
    Bytes::from(v.to_string())
}

/// The same exchange sent straight to the simulator, streamed as botd asks for it.
fn direct_body() -> Bytes {
    Bytes::from(
        json!({"model": "mistral", "messages": [{"role": "user", "content": CONTENT}], "stream": true})
            .to_string(),
    )
}

/// Sends message `i` to bot `i % bots` in conversation `c-{tag}-{i}`.
async fn send_to_botd(b: &Arc<Http>, token: &str, bots: &[String], tag: &str, i: u64) -> Outcome {
    let bot = &bots[i as usize % bots.len()];
    let path = format!("/api/v1/bots/{bot}/messages");
    let body = message_body(&format!("c-{tag}-{i}"), false, CONTENT);
    match b.call("POST", &path, Some(token), body).await {
        Ok(r) => Outcome::status(r.status),
        Err(_) => Outcome::failed(),
    }
}

async fn send_direct(d: &Arc<Http>) -> Outcome {
    match d.call("POST", "/api/chat", None, direct_body()).await {
        Ok(r) => Outcome::status(r.status),
        Err(_) => Outcome::failed(),
    }
}

fn plan(c: &Common, rate: f64) -> Plan {
    Plan {
        rate,
        warmup: c.warmup,
        duration: c.duration,
        grace: Duration::from_secs(30),
    }
}

/// One open-loop run straight at the simulator.
pub async fn run_direct(b: &Bench, plan: Plan) -> Stats {
    let d = b.direct.clone();
    open_loop(plan, move |_| {
        let d = d.clone();
        async move { send_direct(&d).await }
    })
    .await
}

/// One open-loop run through botd.
pub async fn run_botd(b: &Bench, plan: Plan, tag: &str) -> Stats {
    let (h, token, bots) = (b.botd.clone(), b.token.clone(), b.bots.clone());
    let tag: Arc<str> = Arc::from(tag);
    open_loop(plan, move |i| {
        let (h, token, bots, tag) = (h.clone(), token.clone(), bots.clone(), tag.clone());
        async move { send_to_botd(&h, &token, &bots, &tag, i).await }
    })
    .await
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn line(label: &str, s: &Stats, status: u16) -> String {
    format!(
        "  {label:<8} sent {:>7}  {:<24} ok/s {:>8.1}  p50 {:>7.3}  p99 {:>7.3}  p99.9 {:>7.3}  max {:>8.3} ms  (dispatch lag p99 {:.3} ms)",
        s.sent,
        s.statuses(),
        s.rate(status),
        s.ms(status, 0.5),
        s.ms(status, 0.99),
        s.ms(status, 0.999),
        s.ms(status, 1.0),
        s.dispatch_lag.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

/// The result of the 0 ms model runs (medians over the runs, milliseconds).
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub db: &'static str,
    pub rate: f64,
    pub ok_rate: f64,
    pub errors: u64,
    pub direct: [f64; 3],
    pub botd: [f64; 3],
    /// botd minus direct, per run, then the median.
    pub diff: [f64; 3],
    /// From the daemon's histogram.
    pub overhead: [f64; 3],
}

const QS: [f64; 3] = [0.5, 0.99, 0.999];

/// One throughput run: direct, botd, the percentile differences, the daemon histogram's.
type RunStats = (Stats, Stats, Vec<f64>, Vec<f64>);

/// Settings for runs whose model answers at once: the LLM pool, bots' concurrency and
/// queues out of the way, so the daemon's own path is what is measured.
fn fast_extra() -> Vec<(&'static str, String)> {
    vec![
        ("llm.max_concurrent", "256".into()),
        ("llm.max_queue", "100000".into()),
    ]
}

fn fast_spec() -> Value {
    json!({"model": "mistral", "concurrency": 64, "mailbox_capacity": 100000})
}

/// 0 ms model at `rate`: direct then botd, `runs` times, in one daemon.
pub async fn throughput(
    c: &Common,
    db: Database,
    rate: f64,
    bots: usize,
) -> anyhow::Result<Throughput> {
    let b = Bench::start(
        c,
        &SimOptions::default(),
        &db,
        "botd",
        &fast_extra(),
        bots,
        fast_spec(),
    )
    .await?;
    println!(
        "throughput: {} at {rate}/s, {bots} bots, 0 ms model, {} s (+{} s warm-up) x {} runs",
        db.name(),
        c.duration.as_secs(),
        c.warmup.as_secs(),
        c.runs
    );
    let mut per = Vec::new();
    for run in 0..c.runs {
        let sim_cpu0 = crate::procs::cpu_secs(b.sim.pid()).unwrap_or(f64::NAN);
        let d = run_direct(&b, plan(c, rate)).await;
        let sim_cpu = crate::procs::cpu_secs(b.sim.pid()).unwrap_or(f64::NAN) - sim_cpu0;
        let before = b.overhead().await?;
        let profile = match (&c.profile, b.daemon.pid()) {
            (Some(out), Some(pid)) if run == 0 => Some(Profile::start(pid, out)?),
            _ => None,
        };
        let pid = b.daemon.pid().unwrap_or(0);
        let cpu0 = crate::procs::cpu_secs(pid).unwrap_or(f64::NAN);
        let s = run_botd(&b, plan(c, rate), &format!("t{run}")).await;
        let cpu = crate::procs::cpu_secs(pid).unwrap_or(f64::NAN) - cpu0;
        drop(profile);
        let oh = b.overhead().await?.since(&before);
        println!("run {}:", run + 1);
        println!("{}", line("direct", &d, 200));
        println!("{}", line("botd", &s, 200));
        let diff: Vec<f64> = QS.iter().map(|q| s.ms(200, *q) - d.ms(200, *q)).collect();
        let own: Vec<f64> = QS.iter().map(|q| oh.quantile(*q) * 1000.0).collect();
        println!(
            "  overhead: e2e difference p50 {:.3} p99 {:.3} p99.9 {:.3} ms; daemon histogram p50 {:.3} p99 {:.3} p99.9 {:.3} ms ({} obs)",
            diff[0], diff[1], diff[2], own[0], own[1], own[2], oh.count()
        );
        // Sent includes the warm-up's requests, which used CPU too.
        let all = s.sent as f64 * (c.warmup + c.duration).as_secs_f64() / c.duration.as_secs_f64();
        println!(
            "  CPU per message (user + system, all threads): daemon {:.0} µs; the simulator alone in the direct run {:.0} µs",
            1e6 * cpu / all,
            1e6 * sim_cpu / all
        );
        per.push((d, s, diff, own));
    }
    let med = |f: &dyn Fn(&RunStats) -> f64| median(per.iter().map(f).collect());
    let mut t = Throughput {
        db: db.name(),
        rate,
        ok_rate: med(&|p| p.1.rate(200)),
        errors: per.iter().map(|p| p.1.errors()).sum(),
        ..Throughput::default()
    };
    for (k, q) in QS.iter().enumerate() {
        t.direct[k] = med(&|p| p.0.ms(200, *q));
        t.botd[k] = med(&|p| p.1.ms(200, *q));
        t.diff[k] = med(&|p| p.2[k]);
        t.overhead[k] = med(&|p| p.3[k]);
    }
    println!(
        "median of {} runs: ok/s {:.1}, errors {}; direct p50/p99/p99.9 {:.3}/{:.3}/{:.3} ms; botd {:.3}/{:.3}/{:.3} ms; \
         overhead (difference) {:.3}/{:.3}/{:.3} ms; overhead (daemon histogram) {:.3}/{:.3}/{:.3} ms\n",
        c.runs, t.ok_rate, t.errors, t.direct[0], t.direct[1], t.direct[2], t.botd[0], t.botd[1], t.botd[2],
        t.diff[0], t.diff[1], t.diff[2], t.overhead[0], t.overhead[1], t.overhead[2]
    );
    Ok(t)
}

/// The highest rate in `rates` that the 0 ms run sustains: no error, and a p99 (from
/// the schedule) under `p99_limit_ms`, i.e. no queue building up.
pub async fn capacity(
    c: &Common,
    rates: &[f64],
    bots: usize,
    p99_limit_ms: f64,
) -> anyhow::Result<f64> {
    let b = Bench::start(
        c,
        &SimOptions::default(),
        &Database::Sqlite,
        "botd",
        &fast_extra(),
        bots,
        fast_spec(),
    )
    .await?;
    println!(
        "capacity: SQLite, {bots} bots, 0 ms model, steps of {} s",
        c.duration.as_secs()
    );
    let mut best = 0.0;
    for (k, rate) in rates.iter().enumerate() {
        let s = run_botd(&b, plan(c, *rate), &format!("cap{k}")).await;
        println!("{}", line(&format!("{rate}/s"), &s, 200));
        let ok = s.errors() == 0 && s.ms(200, 0.99) < p99_limit_ms;
        if !ok {
            println!(
                "  not sustained (errors {}, p99 {:.1} ms)",
                s.errors(),
                s.ms(200, 0.99)
            );
            break;
        }
        best = *rate;
    }
    println!("capacity: {best}/s sustained without error\n");
    Ok(best)
}

/// The result of the shedding run.
#[derive(Debug, Clone, Default)]
pub struct Shed {
    pub offered: f64,
    pub replies: f64,
    pub allowed: f64,
    pub shed: u64,
    pub shed_p99_ms: f64,
    pub other_errors: u64,
}

/// A 1 s model with `llm.max_concurrent` 64, offered twice what it allows.
pub async fn shed(c: &Common, max_queue: usize) -> anyhow::Result<Shed> {
    let sim = SimOptions {
        latency_ms: 1000,
        ..SimOptions::default()
    };
    let extra = [
        ("llm.max_concurrent", "64".to_owned()),
        ("llm.max_queue", max_queue.to_string()),
    ];
    let spec = json!({"model": "mistral", "concurrency": 16, "mailbox_capacity": 1000});
    let b = Bench::start(c, &sim, &Database::Sqlite, "botd", &extra, 100, spec).await?;
    let offered = 128.0;
    println!(
        "shed: 1 s model, llm.max_concurrent 64, llm.max_queue {max_queue}, 100 bots, {offered}/s offered for {} s (+{} s warm-up) x {} runs",
        c.duration.as_secs(), c.warmup.as_secs(), c.runs
    );
    let mut per = Vec::new();
    for run in 0..c.runs {
        let s = run_botd(&b, plan(c, offered), &format!("s{run}")).await;
        println!("run {}:", run + 1);
        println!("{}", line("200", &s, 200));
        println!("{}", line("503", &s, 503));
        per.push(s);
    }
    let r = Shed {
        offered,
        allowed: 64.0,
        replies: median(per.iter().map(|s| s.rate(200)).collect()),
        shed: per.iter().map(|s| s.count(503)).sum(),
        shed_p99_ms: median(per.iter().map(|s| s.ms(503, 0.99)).collect()),
        other_errors: per.iter().map(|s| s.errors() - s.count(503)).sum(),
    };
    println!(
        "median: {:.1} replies/s of the {} the model allows ({:.1} %), 503 p99 {:.3} ms, other errors {}\n",
        r.replies, r.allowed, 100.0 * r.replies / r.allowed, r.shed_p99_ms, r.other_errors
    );
    Ok(r)
}

/// Which refusal the rejection run provokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RejectKind {
    /// 503 `mailbox_full`: one bot whose only slot and queue place are held.
    Mailbox,
    /// 503 `llm_overloaded`: the model's one slot is held and its queue is 0.
    Llm,
    /// 429 `rate_limited`: `rate_limit.requests_per_minute` = 60.
    Rate,
}

/// The result of a rejection run.
#[derive(Debug, Clone)]
pub struct Reject {
    pub kind: RejectKind,
    pub status: u16,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub other: String,
}

/// Closed loop of `workers` callers against a path that refuses every request.
pub async fn reject(c: &Common, kind: RejectKind, workers: usize) -> anyhow::Result<Reject> {
    let hang = SimOptions {
        latency_ms: 600_000,
        ..SimOptions::default()
    };
    let (sim, extra, spec, status): (SimOptions, Vec<(&str, String)>, Value, u16) = match kind {
        RejectKind::Mailbox => (
            hang,
            vec![],
            json!({"model": "mistral", "concurrency": 1, "mailbox_capacity": 1, "context_messages": 0}),
            503,
        ),
        RejectKind::Llm => (
            hang,
            vec![
                ("llm.max_concurrent", "1".into()),
                ("llm.max_queue", "0".into()),
            ],
            json!({"model": "mistral", "concurrency": 1024, "mailbox_capacity": 100000, "context_messages": 0}),
            503,
        ),
        RejectKind::Rate => (
            SimOptions::default(),
            vec![("rate_limit.requests_per_minute", "60".into())],
            json!({"model": "mistral"}),
            429,
        ),
    };
    let b = Bench::start(c, &sim, &Database::Sqlite, "botd", &extra, 1, spec).await?;
    if kind != RejectKind::Rate {
        // Fill what refuses: the held slot (and the mailbox's one place).
        for i in 0..2 {
            let (h, t, bots) = (b.botd.clone(), b.token.clone(), b.bots.clone());
            tokio::spawn(async move { send_to_botd(&h, &t, &bots, "hold", i).await });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (h, token, bots) = (b.botd.clone(), b.token.clone(), b.bots.clone());
    let s = closed_loop(workers, c.warmup, c.duration, move |i| {
        let (h, token, bots) = (h.clone(), token.clone(), bots.clone());
        async move { send_to_botd(&h, &token, &bots, "r", i).await }
    })
    .await;
    println!(
        "reject ({kind:?}): {workers} callers in a closed loop for {} s",
        c.duration.as_secs()
    );
    println!("{}", line(&status.to_string(), &s, status));
    let r = Reject {
        kind,
        status,
        per_sec: s.rate(status),
        p50_ms: s.ms(status, 0.5),
        p99_ms: s.ms(status, 0.99),
        other: s.statuses(),
    };
    if s.count(status) == 0 {
        println!(
            "  no {status} at all: this build does not refuse that way ({})",
            s.statuses()
        );
    }
    println!("  {:.0} refusals/s\n", r.per_sec);
    Ok(r)
}

/// Time to first token, direct and through botd (medians of p50/p99/p99.9, ms).
#[derive(Debug, Clone, Default)]
pub struct Stream {
    pub rate: f64,
    pub direct: [f64; 3],
    pub botd: [f64; 3],
    pub diff: [f64; 3],
    pub errors: u64,
}

pub async fn stream(c: &Common, rate: f64, bots: usize) -> anyhow::Result<Stream> {
    let sim = SimOptions {
        token_delay_ms: 2,
        ..SimOptions::default()
    };
    let b = Bench::start(
        c,
        &sim,
        &Database::Sqlite,
        "botd",
        &fast_extra(),
        bots,
        fast_spec(),
    )
    .await?;
    println!(
        "stream: time to first token at {rate}/s, {bots} bots, pieces every 2 ms, {} s x {} runs",
        c.duration.as_secs(),
        c.runs
    );
    let mut per = Vec::new();
    for run in 0..c.runs {
        let dh = b.direct.clone();
        let d = open_loop(plan(c, rate), move |_| {
            let dh = dh.clone();
            async move {
                match dh
                    .call_until("POST", "/api/chat", None, direct_body(), |chunk| {
                        !chunk.is_empty()
                    })
                    .await
                {
                    Ok((status, at)) => Outcome {
                        status: Some(status),
                        at,
                    },
                    Err(_) => Outcome::failed(),
                }
            }
        })
        .await;
        let (h, token, names) = (b.botd.clone(), b.token.clone(), b.bots.clone());
        let tag = format!("st{run}");
        let s = open_loop(plan(c, rate), move |i| {
            let (h, token, names) = (h.clone(), token.clone(), names.clone());
            let conversation = format!("c-{tag}-{i}");
            async move {
                let bot = &names[i as usize % names.len()];
                let path = format!("/api/v1/bots/{bot}/messages");
                let body = message_body(&conversation, true, CONTENT);
                // SSE allows a space after the colon or none (warp writes none).
                let token_event = |chunk: &[u8]| {
                    chunk.windows(11).any(|w| w == b"event:token")
                        || chunk.windows(12).any(|w| w == b"event: token")
                };
                match h
                    .call_until("POST", &path, Some(&token), body, token_event)
                    .await
                {
                    Ok((status, at)) => Outcome {
                        status: Some(status),
                        at,
                    },
                    Err(_) => Outcome::failed(),
                }
            }
        })
        .await;
        println!("run {}:", run + 1);
        println!("{}", line("direct", &d, 200));
        println!("{}", line("botd", &s, 200));
        per.push((d, s));
    }
    let mut r = Stream {
        rate,
        errors: per.iter().map(|p| p.1.errors()).sum(),
        ..Stream::default()
    };
    for (k, q) in QS.iter().enumerate() {
        r.direct[k] = median(per.iter().map(|p| p.0.ms(200, *q)).collect());
        r.botd[k] = median(per.iter().map(|p| p.1.ms(200, *q)).collect());
        r.diff[k] = median(
            per.iter()
                .map(|p| p.1.ms(200, *q) - p.0.ms(200, *q))
                .collect(),
        );
    }
    println!(
        "median: first token direct {:.3}/{:.3}/{:.3} ms, botd {:.3}/{:.3}/{:.3} ms, difference {:.3}/{:.3}/{:.3} ms (p50/p99/p99.9), errors {}\n",
        r.direct[0], r.direct[1], r.direct[2], r.botd[0], r.botd[1], r.botd[2], r.diff[0], r.diff[1], r.diff[2], r.errors
    );
    Ok(r)
}

/// The fleet run's results.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub bots: usize,
    pub create_secs: f64,
    pub rss_idle_mb: f64,
    pub restart_listen_secs: f64,
    pub restart_all_running_secs: f64,
    pub stop_secs: f64,
    pub rss_after_restart_mb: f64,
}

const MB: f64 = 1024.0 * 1024.0;

/// `bots` bots created and started through the API, the daemon restarted, RSS idle.
pub async fn fleet(c: &Common, bots: usize, parallel: usize) -> anyhow::Result<Fleet> {
    let b = Bench::start(
        c,
        &SimOptions::default(),
        &Database::Sqlite,
        "botd",
        &[],
        0,
        Value::Null,
    )
    .await?;
    let rss_empty = b.daemon.rss_bytes().unwrap_or(0) as f64 / MB;
    let names: Vec<String> = (1..=bots).map(|i| format!("fleet-{i}")).collect();
    let started = Instant::now();
    create_bots(
        &b.botd,
        &b.token,
        &names,
        &json!({"model": "mistral"}),
        parallel,
    )
    .await?;
    let create_secs = started.elapsed().as_secs_f64();
    let running = b.running().await?;
    if running != bots as u64 {
        bail!("{running} of {bots} bots running after creation");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle_mb = b.daemon.rss_bytes().unwrap_or(0) as f64 / MB;
    let mut b = b;
    let t = Instant::now();
    tokio::task::block_in_place(|| b.daemon.stop(Duration::from_secs(60)))?;
    let stop_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    tokio::task::block_in_place(|| b.daemon.restart(Duration::from_secs(60)))?;
    let restart_listen_secs = t.elapsed().as_secs_f64();
    b.botd = Arc::new(Http::new(&b.daemon.url)?);
    loop {
        if b.running().await.unwrap_or(0) >= bots as u64 {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("not all bots running 60 s after the restart");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart_all_running_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = Fleet {
        bots,
        create_secs,
        rss_idle_mb,
        restart_listen_secs,
        restart_all_running_secs,
        stop_secs,
        rss_after_restart_mb: b.daemon.rss_bytes().unwrap_or(0) as f64 / MB,
    };
    println!(
        "fleet: {bots} bots created and started in {:.2} s ({parallel} callers); RSS {rss_empty:.1} MB empty, {:.1} MB idle with the bots;\n  \
         SIGTERM to exit {:.2} s; restart to listening {:.2} s, to all running {:.2} s; RSS after restart {:.1} MB\n",
        r.create_secs, r.rss_idle_mb, r.stop_secs, r.restart_listen_secs, r.restart_all_running_secs, r.rss_after_restart_mb
    );
    Ok(r)
}

/// The soak run's results.
#[derive(Debug, Clone, Default)]
pub struct Soak {
    pub rate: f64,
    pub secs: u64,
    pub sent: u64,
    pub errors: u64,
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
    pub rss_max_mb: f64,
    pub worst_p99_ms: f64,
}

/// `rate` for `total`, in 10 s slices, sampling RSS between them. The first slice is
/// the warm-up: RSS growth is measured from its end.
pub async fn soak(c: &Common, rate: f64, total: Duration, bots: usize) -> anyhow::Result<Soak> {
    let b = Bench::start(
        c,
        &SimOptions::default(),
        &Database::Sqlite,
        "botd",
        &fast_extra(),
        bots,
        fast_spec(),
    )
    .await?;
    let slice = Duration::from_secs(10);
    let slices = (total.as_secs() / slice.as_secs()).max(2);
    println!(
        "soak: {rate}/s for {} s, {bots} bots, 0 ms model, SQLite",
        slices * slice.as_secs()
    );
    let mut r = Soak {
        rate,
        secs: slices * slice.as_secs(),
        ..Soak::default()
    };
    for k in 0..slices {
        let p = Plan {
            rate,
            warmup: Duration::ZERO,
            duration: slice,
            grace: Duration::from_secs(30),
        };
        let s = run_botd(&b, p, &format!("soak{k}")).await;
        let rss = b.daemon.rss_bytes().unwrap_or(0) as f64 / MB;
        if k == 0 {
            r.rss_start_mb = rss;
        } else {
            r.sent += s.sent;
            r.errors += s.errors();
            r.worst_p99_ms = r.worst_p99_ms.max(s.ms(200, 0.99));
        }
        r.rss_end_mb = rss;
        r.rss_max_mb = r.rss_max_mb.max(rss);
        println!(
            "  {:>4} s  RSS {rss:>7.1} MB  {}  p99 {:.3} ms",
            (k + 1) * slice.as_secs(),
            s.statuses(),
            s.ms(200, 0.99)
        );
    }
    println!(
        "soak: {} sent after the warm-up, {} errors, RSS {:.1} -> {:.1} MB ({:+.1} %), max {:.1} MB, worst slice p99 {:.3} ms\n",
        r.sent,
        r.errors,
        r.rss_start_mb,
        r.rss_end_mb,
        100.0 * (r.rss_end_mb / r.rss_start_mb - 1.0),
        r.rss_max_mb,
        r.worst_p99_ms
    );
    Ok(r)
}

/// The crash-restart run's results (ms).
#[derive(Debug, Clone, Default)]
pub struct Restart {
    pub crashes: usize,
    pub baseline_p50: f64,
    /// Crash answered → next message answered, minus the baseline message and the backoff.
    pub outside: [f64; 3],
    /// From the events: `restarted.ts - crashed.ts - backoff`, 1 ms resolution.
    pub events: [f64; 3],
}

/// A fault-injection build's bot crashed `crashes` times with a 1 ms backoff.
pub async fn restart(c: &Common, crashes: usize) -> anyhow::Result<Restart> {
    if !c.bin_dir.join("botd-fault").exists() {
        bail!(
            "{} is missing: tools/bench builds it (botd with --features fault-injection)",
            c.bin_dir.join("botd-fault").display()
        );
    }
    let extra = [
        ("supervisor.backoff_initial_ms", "1".to_owned()),
        ("supervisor.backoff_max_ms", "1".to_owned()),
        ("supervisor.max_restarts", "10000".to_owned()),
        ("supervisor.restart_window_secs", "1".to_owned()),
    ];
    let b = Bench::start(
        c,
        &SimOptions::default(),
        &Database::Sqlite,
        "botd-fault",
        &extra,
        1,
        json!({"model": "mistral"}),
    )
    .await?;
    let mut base = crate::load::histogram();
    for i in 0..200 {
        let t = Instant::now();
        let status = b.send(&format!("b{i}"), CONTENT).await?;
        if status != 200 {
            bail!("baseline message: {status}");
        }
        let _ = base.record(t.elapsed().as_micros() as u64);
    }
    let baseline = base.value_at_quantile(0.5) as f64 / 1000.0;
    let mut outside = crate::load::histogram();
    for i in 0..crashes {
        let status = b.send(&format!("p{i}"), "__botd_fault:panic__").await?;
        if status != 500 {
            bail!("the panic message got {status} (is botd-fault built with fault-injection?)");
        }
        let t = Instant::now();
        let status = b.send(&format!("n{i}"), CONTENT).await?;
        if status != 200 {
            bail!("the message after a crash got {status}");
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 - baseline - 1.0;
        let _ = outside.record((ms.max(0.001) * 1000.0) as u64);
    }
    // The events: crashed, backoff {delay_ms}, restarted, newest first.
    let (_, v) = b
        .botd
        .json(
            "GET",
            &format!("/api/v1/bots/{}/events?limit=500", b.bots[0]),
            Some(&b.token),
            &Value::Null,
        )
        .await?;
    let mut events: Vec<&Value> = v["events"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    events.reverse();
    let mut from_events = crate::load::histogram();
    let (mut crashed, mut delay) = (None, 0i64);
    for e in events {
        let ts = e["ts"].as_str().and_then(parse_rfc3339_ms);
        match e["kind"].as_str() {
            Some("crashed") => crashed = ts,
            Some("backoff") => {
                delay = serde_json::from_str::<Value>(e["detail"].as_str().unwrap_or("{}"))
                    .ok()
                    .or_else(|| Some(e["detail"].clone()))
                    .and_then(|d| d["delay_ms"].as_i64())
                    .unwrap_or(0)
            }
            Some("restarted") => {
                if let (Some(c0), Some(t)) = (crashed.take(), ts) {
                    let _ = from_events.record(((t - c0 - delay).max(0) as u64) * 1000 + 1);
                }
            }
            _ => {}
        }
    }
    let q = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let r = Restart {
        crashes,
        baseline_p50: baseline,
        outside: [q(&outside, 0.5), q(&outside, 0.99), q(&outside, 0.999)],
        events: [
            q(&from_events, 0.5),
            q(&from_events, 0.99),
            q(&from_events, 0.999),
        ],
    };
    println!(
        "restart: {crashes} crashes with a 1 ms backoff; a message's round trip {:.3} ms (p50)\n  \
         crash answered -> next message answered, less that and the backoff: p50 {:.3} p99 {:.3} p99.9 {:.3} ms\n  \
         from the events ({} pairs, ms resolution), restarted - crashed - backoff: p50 {:.0} p99 {:.0} ms\n",
        r.baseline_p50, r.outside[0], r.outside[1], r.outside[2], from_events.len(), r.events[0], r.events[1]
    );
    Ok(r)
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS(.fff)Z`.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let ms: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_epoch_ms() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        assert_eq!(
            parse_rfc3339_ms("2000-03-01T00:00:00.000Z"),
            Some(951_868_800_000)
        );
    }

    #[test]
    fn medians_skip_missing_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn the_content_is_one_hundred_bytes() {
        assert_eq!(CONTENT.len(), 100);
    }
}
