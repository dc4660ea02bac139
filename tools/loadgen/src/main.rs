//! `botd-bench`: runs the benchmarks of docs/benchmarks.md against release builds of
//! `botd` and `ollama-sim` (`tools/bench` builds them and runs `botd-bench all`).

use std::path::PathBuf;
use std::time::Duration;

use botd_loadgen::procs::{default_bin_dir, Database};
use botd_loadgen::scenarios::{self, Common, RejectKind};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "botd-bench",
    about = "Benchmarks botd against the Ollama simulator"
)]
struct Cli {
    /// The folder with the release binaries `botd`, `ollama-sim` (and `botd-fault`).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Repetitions of each measured run; medians are reported.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Seconds of warm-up before each measured run.
    #[arg(long, global = true, default_value_t = 2)]
    warmup: u64,
    /// Seconds of each measured run.
    #[arg(long, global = true, default_value_t = 10)]
    duration: u64,
    /// Record a perf profile of the daemon during the first measured throughput run.
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// 0 ms model at a constant rate: direct and through botd, overhead both ways.
    Throughput {
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        bots: usize,
        /// Run on a fresh database on this PostgreSQL server instead of SQLite.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// The highest constant rate the 0 ms run sustains without error.
    Capacity {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000,2000,3000,4000,5000,6000,8000"
        )]
        rates: Vec<f64>,
        #[arg(long, default_value_t = 10)]
        bots: usize,
    },
    /// 1 s model, llm.max_concurrent 64, offered 128/s: goodput and shedding.
    Shed {
        #[arg(long, default_value_t = 0)]
        max_queue: usize,
    },
    /// Refusals per second on one path (closed loop).
    Reject {
        #[arg(long, value_enum, default_value = "mailbox")]
        kind: RejectKind,
        #[arg(long, default_value_t = 32)]
        workers: usize,
    },
    /// Time to first token, direct and through botd.
    Stream {
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        bots: usize,
    },
    /// Many bots: create and start through the API, restart the daemon, RSS idle.
    Fleet {
        #[arg(long, default_value_t = 10_000)]
        bots: usize,
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// Restart latency of a crashed bot (needs `botd-fault`, a fault-injection build).
    Restart {
        #[arg(long, default_value_t = 200)]
        crashes: usize,
    },
    /// A long constant load: RSS growth and errors.
    Soak {
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 600)]
        secs: u64,
        #[arg(long, default_value_t = 100)]
        bots: usize,
    },
    /// Everything above in turn, then a summary against the targets.
    All {
        /// PostgreSQL server for the PostgreSQL throughput run (default
        /// BOTD_TEST_POSTGRES_URL; skipped when neither is set).
        #[arg(long)]
        postgres: Option<String>,
        /// Length of the soak; its rate is half the measured capacity.
        #[arg(long, default_value_t = 60)]
        soak_secs: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let common = Common {
        bin_dir: cli.bin_dir.clone().unwrap_or_else(default_bin_dir),
        runs: cli.runs.max(1),
        warmup: Duration::from_secs(cli.warmup),
        duration: Duration::from_secs(cli.duration.max(1)),
        profile: cli.profile.clone(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("botd-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&common, cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("botd-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(c: &Common, s: Scenario) -> anyhow::Result<()> {
    match s {
        Scenario::Throughput {
            rate,
            bots,
            postgres,
        } => {
            let db = postgres.map_or(Database::Sqlite, Database::Postgres);
            scenarios::throughput(c, db, rate, bots).await?;
        }
        Scenario::Capacity { rates, bots } => {
            scenarios::capacity(c, &rates, bots, 50.0).await?;
        }
        Scenario::Shed { max_queue } => {
            scenarios::shed(c, max_queue).await?;
        }
        Scenario::Reject { kind, workers } => {
            scenarios::reject(c, kind, workers).await?;
        }
        Scenario::Stream { rate, bots } => {
            scenarios::stream(c, rate, bots).await?;
        }
        Scenario::Fleet { bots, parallel } => {
            scenarios::fleet(c, bots, parallel).await?;
        }
        Scenario::Restart { crashes } => {
            scenarios::restart(c, crashes).await?;
        }
        Scenario::Soak { rate, secs, bots } => {
            scenarios::soak(c, rate, Duration::from_secs(secs), bots).await?;
        }
        Scenario::All {
            postgres,
            soak_secs,
        } => all(c, postgres, soak_secs).await?,
    }
    Ok(())
}

/// A row of the summary: target, measured value, whether it is met.
struct Row(String, String, String);

fn row(target: &str, value: String, met: bool) -> Row {
    Row(
        target.to_owned(),
        value,
        if met { "met" } else { "MISSED" }.to_owned(),
    )
}

async fn all(c: &Common, postgres: Option<String>, soak_secs: u64) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    macro_rules! attempt {
        ($name:expr, $e:expr) => {
            match $e.await {
                Ok(v) => Some(v),
                Err(e) => {
                    eprintln!("{}: {e:#}\n", $name);
                    failures.push(format!("{}: {e:#}", $name));
                    None
                }
            }
        };
    }
    if let Some(t) = attempt!(
        "throughput sqlite",
        scenarios::throughput(c, Database::Sqlite, 2000.0, 10)
    ) {
        rows.push(row(
            "0 ms model, 2,000 msg/s, SQLite: overhead p50 <= 0.5 ms",
            format!(
                "{:.3} ms (difference), {:.3} ms (daemon histogram)",
                t.diff[0], t.overhead[0]
            ),
            t.diff[0] <= 0.5 && t.errors == 0,
        ));
        rows.push(row(
            "0 ms model, 2,000 msg/s, SQLite: overhead p99 <= 2 ms",
            format!(
                "{:.3} ms (difference), {:.3} ms (daemon histogram); {} errors",
                t.diff[1], t.overhead[1], t.errors
            ),
            t.diff[1] <= 2.0 && t.errors == 0,
        ));
    }
    let pg = postgres.or_else(|| std::env::var("BOTD_TEST_POSTGRES_URL").ok());
    if let Some(url) = pg {
        if let Some(t) = attempt!(
            "throughput postgres",
            scenarios::throughput(c, Database::Postgres(url), 2000.0, 10)
        ) {
            rows.push(row(
                "0 ms model, 2,000 msg/s, PostgreSQL: overhead p99 <= 5 ms",
                format!(
                    "{:.3} ms (difference), {:.3} ms (daemon histogram); {} errors",
                    t.diff[1], t.overhead[1], t.errors
                ),
                t.diff[1] <= 5.0 && t.errors == 0,
            ));
        }
    }
    let cap = attempt!(
        "capacity",
        scenarios::capacity(
            c,
            &[1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0],
            10,
            50.0
        )
    );
    if let Some(s) = attempt!("shed", scenarios::shed(c, 0)) {
        rows.push(row(
            "1 s model, max_concurrent 64, 128/s offered: >= 95 % of 64 replies/s",
            format!(
                "{:.1} replies/s ({:.1} %)",
                s.replies,
                100.0 * s.replies / s.allowed
            ),
            s.replies >= 0.95 * s.allowed,
        ));
        rows.push(row(
            "  the excess shed with 503 in under 1 ms p99",
            format!(
                "{} shed, p99 {:.3} ms, other errors {}",
                s.shed, s.shed_p99_ms, s.other_errors
            ),
            s.shed_p99_ms < 1.0 && s.shed > 0,
        ));
    }
    for kind in [RejectKind::Mailbox, RejectKind::Llm, RejectKind::Rate] {
        if let Some(r) = attempt!(format!("reject {kind:?}"), scenarios::reject(c, kind, 32)) {
            let what = match kind {
                RejectKind::Mailbox => "503 mailbox_full",
                RejectKind::Llm => "503 llm_overloaded",
                RejectKind::Rate => "429 rate_limited",
            };
            rows.push(row(
                &format!("rejections ({what}) >= 20,000/s"),
                format!(
                    "{:.0}/s, p50 {:.3} ms, p99 {:.3} ms ({})",
                    r.per_sec, r.p50_ms, r.p99_ms, r.other
                ),
                r.per_sec >= 20_000.0,
            ));
        }
    }
    if let Some(s) = attempt!("stream", scenarios::stream(c, 200.0, 10)) {
        rows.push(row(
            "time to first token <= 1 ms p99 above direct",
            format!(
                "+{:.3} ms p99 (+{:.3} p50; direct p99 {:.3} ms)",
                s.diff[1], s.diff[0], s.direct[1]
            ),
            s.diff[1] <= 1.0 && s.errors == 0,
        ));
    }
    if let Some(f) = attempt!("fleet", scenarios::fleet(c, 10_000, 16)) {
        rows.push(row(
            "10,000 bots created and started in <= 10 s",
            format!("{:.2} s", f.create_secs),
            f.create_secs <= 10.0,
        ));
        rows.push(row(
            "all running within 2 s of a daemon restart",
            format!(
                "{:.2} s (listening after {:.2} s)",
                f.restart_all_running_secs, f.restart_listen_secs
            ),
            f.restart_all_running_secs <= 2.0,
        ));
        rows.push(row(
            "RSS <= 100 MB idle",
            format!(
                "{:.1} MB ({:.1} MB after the restart)",
                f.rss_idle_mb, f.rss_after_restart_mb
            ),
            f.rss_idle_mb <= 100.0,
        ));
    }
    if let Some(r) = attempt!("restart", scenarios::restart(c, 200)) {
        rows.push(row(
            "restart of a crashed bot, excluding backoff: p99 < 10 ms",
            format!(
                "p50 {:.3} p99 {:.3} ms (events: p99 {:.0} ms)",
                r.outside[0], r.outside[1], r.events[1]
            ),
            r.outside[1] < 10.0,
        ));
    }
    if let Some(cap) = cap.filter(|c| *c > 0.0) {
        let rate = cap / 2.0;
        if let Some(s) = attempt!(
            "soak",
            scenarios::soak(c, rate, Duration::from_secs(soak_secs), 100)
        ) {
            let growth = 100.0 * (s.rss_end_mb / s.rss_start_mb - 1.0);
            rows.push(row(
                &format!(
                    "soak at half capacity ({rate}/s, {} s): RSS +5 % at most, no error",
                    s.secs
                ),
                format!("RSS {:+.1} %, {} errors of {}", growth, s.errors, s.sent),
                growth <= 5.0 && s.errors == 0,
            ));
        }
    }
    println!("| target | measured (medians of {} runs) | |", c.runs);
    println!("|---|---|---|");
    for Row(t, v, m) in &rows {
        println!("| {t} | {v} | {m} |");
    }
    if !failures.is_empty() {
        println!("\nscenarios that could not run:");
        for f in &failures {
            println!("- {f}");
        }
    }
    Ok(())
}
