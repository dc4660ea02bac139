//! `ollama-sim`: runs the Ollama simulator as a server, for demos and benchmarks.
//!
//! ```text
//! ollama-sim --listen 127.0.0.1:11434 --latency-ms 0 --token-delay-ms 0 --piece-chars 4 \
//!            --fail-rate 0 --fail-status 500 --any-model --model mistral --reply "Hello!"
//! ```
//!
//! Prints `listening on http://ADDR` on stdout once bound, then serves until interrupted.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ollama_sim::{Reply, Simulator};

const USAGE: &str = "\
usage: ollama-sim [options]

  --listen ADDR          address to listen on (default 127.0.0.1:11434; port 0 picks one)
  --latency-ms N         wait before the first piece of every call (default 0)
  --token-delay-ms N     wait between pieces (default 0)
  --piece-chars N        characters per streamed piece (default 4)
  --fail-rate P          fail each call with probability P, 0..1 (default 0)
  --fail-status N        the status of those failures (default 500)
  --chunk-bytes N        cut every written line into N-byte chunks
  --any-model            accept any model name
  --model NAME           a known model (repeatable; replaces mistral and llama3)
  --reply TEXT           always answer TEXT instead of echoing the last user message
  -h, --help             this help
";

struct Args {
    listen: SocketAddr,
    latency_ms: u64,
    token_delay_ms: u64,
    piece_chars: usize,
    fail_rate: f64,
    fail_status: u16,
    chunk_bytes: Option<usize>,
    any_model: bool,
    models: Vec<String>,
    reply: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 11434)),
        latency_ms: 0,
        token_delay_ms: 0,
        piece_chars: 4,
        fail_rate: 0.0,
        fail_status: 500,
        chunk_bytes: None,
        any_model: false,
        models: Vec::new(),
        reply: None,
    };
    fn value<T: std::str::FromStr>(
        flag: &str,
        args: &mut impl Iterator<Item = String>,
    ) -> Result<T, String> {
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: cannot read {v:?}"))
    }
    while let Some(arg) = args.next() {
        // Accept `--flag=value` as well as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut rest = inline.into_iter().chain(&mut args);
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => a.listen = value(&flag, &mut rest)?,
            "--latency-ms" => a.latency_ms = value(&flag, &mut rest)?,
            "--token-delay-ms" => a.token_delay_ms = value(&flag, &mut rest)?,
            "--piece-chars" => a.piece_chars = value(&flag, &mut rest)?,
            "--fail-rate" => {
                a.fail_rate = value(&flag, &mut rest)?;
                if !(0.0..=1.0).contains(&a.fail_rate) {
                    return Err("--fail-rate must be between 0 and 1".into());
                }
            }
            "--fail-status" => a.fail_status = value(&flag, &mut rest)?,
            "--chunk-bytes" => a.chunk_bytes = Some(value(&flag, &mut rest)?),
            "--any-model" => a.any_model = true,
            "--model" => a.models.push(value(&flag, &mut rest)?),
            "--reply" => a.reply = Some(value(&flag, &mut rest)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(a))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ollama-sim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let sim = match Simulator::start_on(args.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ollama-sim: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    sim.set_latency(Duration::from_millis(args.latency_ms));
    sim.set_token_delay(Duration::from_millis(args.token_delay_ms));
    sim.set_piece_chars(args.piece_chars);
    sim.set_fail_rate(args.fail_rate, args.fail_status);
    sim.set_chunk_bytes(args.chunk_bytes);
    sim.set_accept_any_model(args.any_model);
    if !args.models.is_empty() {
        let names: Vec<&str> = args.models.iter().map(String::as_str).collect();
        sim.set_models(&names);
    }
    if let Some(text) = args.reply {
        sim.set_reply(Reply::Fixed(text));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", sim.url());
        let _ = out.flush();
    }
    let _ = tokio::signal::ctrl_c().await;
    sim.down().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[&str]) -> Result<Option<Args>, String> {
        parse_args(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--latency-ms=5",
            "--token-delay-ms",
            "2",
            "--piece-chars",
            "3",
            "--fail-rate",
            "0.25",
            "--any-model",
            "--model",
            "phi3",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.listen.port(), 0);
        assert_eq!(a.latency_ms, 5);
        assert_eq!(a.token_delay_ms, 2);
        assert_eq!(a.piece_chars, 3);
        assert_eq!(a.fail_rate, 0.25);
        assert!(a.any_model);
        assert_eq!(a.models, ["phi3"]);
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--fail-rate", "2"]).is_err());
        assert!(parse(&["--latency-ms"]).is_err());
    }
}
