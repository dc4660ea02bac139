//! `botd-bench`: botd's load generator.
//!
//! # Layout
//! - [`client`]: a lean HTTP/1.1 client over hyper connections.
//! - [`load`]: open-loop (fixed arrival schedule, latency from the scheduled time) and
//!   closed-loop load, with HDR histograms per status.
//! - [`procs`]: starting `ollama-sim` and `botd` on free ports with temporary files.
//! - [`prom`]: quantiles of a histogram read from `/metrics`.
//! - [`scenarios`]: the runs of docs/benchmarks.md.

pub mod client;
pub mod load;
pub mod procs;
pub mod prom;
pub mod scenarios;
