//! The `botd` binary as an operator runs it: start-up, refusals, check-config, token,
//! and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn botd(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_botd"));
    cmd.current_dir(dir)
        .env_remove("BOTD_CONFIG")
        .env("BOTD_HTTP__LISTEN", "127.0.0.1:0")
        .env("BOTD_LLM__OLLAMA_URL", "http://127.0.0.1:9")
        .stdin(Stdio::null());
    cmd
}

/// Reads the daemon's JSON log lines until it says where it listens.
fn wait_listening(child: &mut Child) -> String {
    let out = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(out).lines();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let Some(Ok(line)) = lines.next() else { break };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["msg"] == "botd is listening." {
                // Keep draining stdout so the daemon never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return v["addr"].as_str().unwrap().to_owned();
            }
        }
    }
    panic!("the daemon never said it was listening");
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < until, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn the_daemon_starts_on_the_embedded_default_serves_readyz_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = botd(dir.path()).stdout(Stdio::piped()).spawn().unwrap();
    let addr = wait_listening(&mut child);
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["checks"]["database"], "ok");
    let (status, _) = get(&addr, "/healthz");
    assert_eq!(status, 200);
    // The embedded default: a SQLite file and a secret, both in the working directory.
    assert!(dir.path().join("botd.db").exists());
    let secret = dir.path().join("botd.secret");
    let text = std::fs::read_to_string(&secret).unwrap();
    assert_eq!(text.trim().len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_bad_config_stops_start_up_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[llm]\nmax_concurrent = 0\n",
    )
    .unwrap();
    let out = botd(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("llm.max_concurrent"), "{err}");

    let out = botd(dir.path()).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("llm.max_concurrent"));

    let out = botd(dir.path())
        .args(["--config", "missing.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("missing.toml"));
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef-CANARY\"\n",
    )
    .unwrap();
    let out = botd(dir.path())
        .arg("check-config")
        .env(
            "BOTD_DATABASE__URL",
            "postgres://botd:pw-CANARY@127.0.0.1/botd",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("CANARY"), "{text}");
    let shown: toml::Table = text.parse().unwrap();
    assert_eq!(shown["llm"]["max_concurrent"].as_integer(), Some(4));
    assert_eq!(
        shown["database"]["url"].as_str(),
        Some("postgres://botd:********@127.0.0.1/botd")
    );
    // Checking does not create the secret file.
    assert!(!dir.path().join("botd.secret").exists());
}

#[test]
fn an_unreachable_database_stops_start_up_with_a_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = botd(dir.path())
        .env("BOTD_DATABASE__URL", "postgres://postgres@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("database"), "{err}");

    let out = botd(dir.path())
        .env("BOTD_DATABASE__URL", "sqlite://no/such/dir/botd.db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("database"));
}

#[test]
fn token_prints_a_verifiable_token_alone_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    // No secret yet: a clear refusal, not a token signed with nothing.
    let out = botd(dir.path())
        .args(["token", "--sub", "ci", "--role", "operator", "--ttl", "1h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(dir.path().join("botd.secret"), "a".repeat(64)).unwrap();
    let out = botd(dir.path())
        .args(["token", "--sub", "ci", "--role", "operator", "--ttl", "1h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    let keys = botd::auth::JwtKeys::new("a".repeat(64).as_bytes());
    let claims = keys.verify(text.trim()).unwrap();
    assert_eq!(claims.sub, "ci");
    assert_eq!(claims.role, botd::auth::Role::Operator);
    assert_eq!(claims.exp - claims.iat, 3600);
    let out = botd(dir.path())
        .args(["token", "--sub", "ci", "--role", "root"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
}
