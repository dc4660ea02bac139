//! The processes under test: the Ollama simulator and the daemon, each started from its
//! release binary on a free port, with a temporary SQLite file (or a fresh PostgreSQL
//! database), a temporary secret file and tokens minted with `botd token`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// Where the binaries are: the folder of this executable (cargo puts `botd`,
/// `ollama-sim` and `botd-bench` side by side in `target/release`).
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// A running `ollama-sim`.
pub struct Sim {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// How the simulated model behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub latency_ms: u64,
    pub token_delay_ms: u64,
    pub piece_chars: usize,
    /// A fixed reply; `None` echoes the user's message.
    pub reply: Option<String>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            token_delay_ms: 0,
            piece_chars: 16,
            reply: Some("This is the simulated model's reply, about one hundred bytes long, so that replies are realistic.".into()),
        }
    }
}

impl Sim {
    pub fn start(bin_dir: &Path, o: &SimOptions) -> anyhow::Result<Sim> {
        let bin = bin_dir.join("ollama-sim");
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--any-model"])
            .args(["--latency-ms", &o.latency_ms.to_string()])
            .args(["--token-delay-ms", &o.token_delay_ms.to_string()])
            .args(["--piece-chars", &o.piece_chars.to_string()]);
        if let Some(r) = &o.reply {
            cmd.args(["--reply", r]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {} (build it with tools/bench)", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("ollama-sim said {line:?}"))?
            .to_owned();
        Ok(Sim { child, url })
    }
}

impl Sim {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The database a daemon runs on.
#[derive(Debug, Clone)]
pub enum Database {
    /// A fresh SQLite file in the daemon's temporary folder.
    Sqlite,
    /// A fresh, randomly named database on this server (`postgres://user@host:port/any`).
    Postgres(String),
}

impl Database {
    pub fn name(&self) -> &'static str {
        match self {
            Database::Sqlite => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }
}

/// Creates a fresh PostgreSQL database with `psql` and returns its URL.
fn create_pg_database(server_url: &str) -> anyhow::Result<String> {
    let base = server_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .ok_or_else(|| anyhow!("{server_url}: not a PostgreSQL URL"))?;
    let name = format!("botd_bench_{}", rand::random::<u32>());
    let status = Command::new("psql")
        .arg(server_url)
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .context("psql (to create the benchmark database)")?;
    if !status.success() {
        bail!("psql could not create database {name} on {server_url}");
    }
    Ok(format!("{base}/{name}"))
}

/// A running `botd` and what it was started with.
pub struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// An admin service token.
    pub token: String,
    /// How long the last start took until the listener answered.
    pub started_in: Duration,
}

impl Daemon {
    /// Writes a configuration (`extra` is TOML appended to the generated sections' keys,
    /// as `section.key = value` lines) and starts the daemon.
    pub fn start(
        bin_dir: &Path,
        bin_name: &str,
        sim_url: &str,
        db: &Database,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let secret = dir.path().join("botd.secret");
        let hex: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        std::fs::write(&secret, hex)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        }
        let db_url = match db {
            Database::Sqlite => format!("sqlite://{}", dir.path().join("botd.db").display()),
            Database::Postgres(server) => create_pg_database(server)?,
        };
        let mut keys: Vec<(String, String)> = vec![
            ("http.listen".into(), "\"127.0.0.1:0\"".into()),
            ("database.url".into(), format!("{db_url:?}")),
            ("llm.ollama_url".into(), format!("{sim_url:?}")),
            (
                "auth.jwt_secret_file".into(),
                format!("{:?}", secret.display().to_string()),
            ),
            ("logging.level".into(), "\"info\"".into()),
            ("rate_limit.requests_per_minute".into(), "100000000".into()),
        ];
        for (k, v) in extra {
            keys.retain(|(key, _)| key != k);
            keys.push(((*k).to_owned(), v.clone()));
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, toml_of(&keys))?;
        let mut d = Daemon {
            child: None,
            bin: bin_dir.join(bin_name),
            log: dir.path().join("daemon.log"),
            dir,
            config,
            url: String::new(),
            token: String::new(),
            started_in: Duration::ZERO,
        };
        d.token = d.mint("admin")?;
        d.launch()?;
        Ok(d)
    }

    /// Mints a service token of `role` with `botd token`.
    pub fn mint(&self, role: &str) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .args(["token", "--sub", "bench", "--role", role, "--ttl", "12h"])
            .output()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        if !out.status.success() {
            bail!("botd token: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process and waits for its "listening" log line.
    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let offset = log.metadata()?.len();
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (build it with tools/bench)",
                    self.bin.display()
                )
            })?;
        self.child = Some(child);
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Some(addr) = self.listening_addr(offset)? {
                self.started_in = started.elapsed();
                self.url = format!("http://{addr}");
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "botd exited with {status} while starting:\n{}",
                        self.log_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("botd did not start within 120 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn listening_addr(&self, offset: u64) -> anyhow::Result<Option<String>> {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.log)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut raw = Vec::new();
        f.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        for line in text.lines() {
            if !line.contains("botd is listening.") {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if let Some(a) = v.get("addr").and_then(|a| a.as_str()) {
                    return Ok(Some(a.to_owned()));
                }
            }
        }
        Ok(None)
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `timeout`).
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("botd did not stop within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops and starts the daemon on the same database and configuration.
    pub fn restart(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.stop(timeout)?;
        self.launch()
    }

    /// The daemon's resident set size in bytes (from `/proc`).
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds (from `/proc`).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

/// `VmRSS` of a process, in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `section.key = value` pairs as a TOML document.
fn toml_of(keys: &[(String, String)]) -> String {
    let mut sections: Vec<(&str, Vec<String>)> = Vec::new();
    for (k, v) in keys {
        let (section, key) = k.split_once('.').unwrap_or(("", k));
        let line = format!("{key} = {v}");
        match sections.iter_mut().find(|(s, _)| *s == section) {
            Some((_, lines)) => lines.push(line),
            None => sections.push((section, vec![line])),
        }
    }
    let mut out = String::new();
    for (section, lines) in sections {
        out.push_str(&format!("[{section}]\n"));
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_group_into_sections() {
        let keys = vec![
            ("http.listen".to_owned(), "\"x\"".to_owned()),
            ("llm.max_concurrent".to_owned(), "4".to_owned()),
            ("http.max_connections".to_owned(), "9".to_owned()),
        ];
        assert_eq!(
            super::toml_of(&keys),
            "[http]\nlisten = \"x\"\nmax_connections = 9\n[llm]\nmax_concurrent = 4\n"
        );
    }
}
