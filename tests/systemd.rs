//! botd under systemd's notify protocol, seen from systemd's side: the test binds the
//! datagram socket that systemd would, passes it as `NOTIFY_SOCKET` to the daemon
//! process, and reads READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 from it. The unit file
//! and the shipped configuration are checked here too.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use botd::auth::{JwtKeys, Role, TokenKind};

/// A secret with a canary in it: it must never show up in the daemon's log.
const SECRET: &str = "botd-systemd-test-secret-0123456789-CANARY";

/// systemd's end of the notify socket.
struct Systemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Systemd {
    fn bind(dir: &Path) -> Systemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Systemd { socket, path }
    }

    /// The next datagram's lines, or None if none arrives within `wait`.
    fn recv(&self, wait: Duration) -> Option<Vec<String>> {
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }

    /// Reads datagrams until one has a line for which `pred` holds; returns that datagram.
    fn wait_for(&self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let until = Instant::now() + within;
        let mut seen = Vec::new();
        while Instant::now() < until {
            if let Some(lines) = self.recv(until.saturating_duration_since(Instant::now())) {
                if lines.iter().any(|l| pred(l)) {
                    return lines;
                }
                seen.extend(lines);
            }
        }
        panic!("systemd never got {what}; it got {seen:?}");
    }

    /// Throws away what has arrived so far (only the fault-injection test needs it).
    #[cfg(feature = "fault-injection")]
    fn drain(&self) {
        while self.recv(Duration::from_millis(1)).is_some() {}
    }
}

/// The daemon as systemd starts it: `NOTIFY_SOCKET` and `WATCHDOG_USEC` set.
fn start_daemon(
    dir: &Path,
    systemd: &Systemd,
    watchdog: Duration,
    ollama_url: &str,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_botd"))
        .current_dir(dir)
        .env_remove("BOTD_CONFIG")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env("BOTD_HTTP__LISTEN", "127.0.0.1:0")
        .env("BOTD_LLM__OLLAMA_URL", ollama_url)
        .env(
            "BOTD_DATABASE__URL",
            format!("sqlite://{}", dir.join("botd.db").display()),
        )
        .env("BOTD_AUTH__JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("botd starts");
    let addr = wait_listening(&mut child);
    (child, addr)
}

/// Reads the daemon's JSON log until it says where it listens, then keeps copying its
/// log (to `$BOTD_TEST_LOG_DIR` when set, for the canary check) so it never blocks.
fn wait_listening(child: &mut Child) -> String {
    let out = child.stdout.take().expect("stdout piped");
    let mut sink: Box<dyn Write + Send> = match std::env::var_os("BOTD_TEST_LOG_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            let path = PathBuf::from(d).join(format!("systemd-{}.log", rand::random::<u64>()));
            Box::new(std::fs::File::create(path).unwrap())
        }
        None => Box::new(std::io::sink()),
    };
    let mut lines = BufReader::new(out).lines();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let Some(Ok(line)) = lines.next() else { break };
        let _ = writeln!(sink, "{line}");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["msg"] == "botd is listening." {
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        let _ = writeln!(sink, "{line}");
                    }
                });
                return v["addr"].as_str().unwrap().to_owned();
            }
        }
    }
    panic!("the daemon never said it was listening");
}

/// One request from a thread of its own; the status, or 0 when it did not get one.
fn request(
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap();
        let mut req = match &body {
            Some(b) => client.post(url).json(b),
            None => client.get(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.map_or(0, |r| r.status().as_u16())
    })
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
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

#[test]
fn botd_tells_systemd_it_is_ready_how_many_bots_it_runs_that_it_lives_and_that_it_stops() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt.block_on(ollama_sim::Simulator::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::bind(dir.path());
    let (mut child, addr) = start_daemon(dir.path(), &systemd, Duration::from_secs(1), &sim.url());

    let ready = systemd.wait_for(Duration::from_secs(30), "READY=1", |l| l == "READY=1");
    assert!(
        ready.iter().any(|l| l == "STATUS=0 bots"),
        "READY=1 comes with the bot counts: {ready:?}"
    );
    // The listener serves by the time READY=1 is sent.
    let healthz = format!("http://{addr}/healthz");
    assert_eq!(request(&healthz, None, None, Duration::from_secs(10)), 200);
    systemd.wait_for(Duration::from_secs(30), "WATCHDOG=1", |l| l == "WATCHDOG=1");

    // A new bot shows in the status at the next keep-alive.
    let admin = JwtKeys::new(SECRET.as_bytes()).mint(
        "systemd-test",
        Role::Admin,
        TokenKind::Service,
        Duration::from_secs(600),
    );
    let created = request(
        &format!("http://{addr}/api/v1/bots"),
        Some(&admin),
        Some(serde_json::json!({"name": "s1", "autostart": true})),
        Duration::from_secs(30),
    );
    assert_eq!(created, 201);
    systemd.wait_for(Duration::from_secs(30), "the new bot's status", |l| {
        l == "STATUS=1 bot: 1 running"
    });

    sigterm(&child);
    systemd.wait_for(Duration::from_secs(30), "STOPPING=1", |l| l == "STOPPING=1");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[test]
fn without_a_watchdog_botd_sends_ready_and_status_but_no_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::bind(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_botd"))
        .current_dir(dir.path())
        .env_remove("BOTD_CONFIG")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("BOTD_HTTP__LISTEN", "127.0.0.1:0")
        .env("BOTD_LLM__OLLAMA_URL", "http://127.0.0.1:9")
        .env("BOTD_AUTH__JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(&mut child);
    let ready = systemd.wait_for(Duration::from_secs(30), "READY=1", |l| l == "READY=1");
    assert!(!ready.iter().any(|l| l == "WATCHDOG=1"), "{ready:?}");
    sigterm(&child);
    let stopping = systemd.wait_for(Duration::from_secs(30), "STOPPING=1", |l| l == "STOPPING=1");
    assert!(!stopping.iter().any(|l| l == "WATCHDOG=1"), "{stopping:?}");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

/// A hung Registry (the fault blocks its thread for 30 s) stops the keep-alive pings,
/// so systemd would restart botd; once the Registry answers again, the pings resume.
#[cfg(feature = "fault-injection")]
#[test]
fn a_hung_registry_stops_the_watchdog_pings_until_it_answers_again() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::bind(dir.path());
    // Pings every 200 ms.
    let period = Duration::from_millis(200);
    let (mut child, addr) = start_daemon(dir.path(), &systemd, period * 2, "http://127.0.0.1:9");
    systemd.wait_for(Duration::from_secs(30), "READY=1", |l| l == "READY=1");
    systemd.wait_for(Duration::from_secs(30), "WATCHDOG=1", |l| l == "WATCHDOG=1");

    let token = JwtKeys::new(SECRET.as_bytes()).mint(
        "watchdog-test",
        Role::Operator,
        TokenKind::Service,
        Duration::from_secs(600),
    );
    let hang = {
        let (addr, token) = (addr.clone(), token.clone());
        std::thread::spawn(move || {
            request(
                &format!("http://{addr}/api/v1/bots/any/messages"),
                Some(&token),
                Some(serde_json::json!({"content": "__botd_fault:hang_registry__"})),
                Duration::from_secs(120),
            )
        })
    };
    let healthz = || {
        request(
            &format!("http://{addr}/healthz"),
            None,
            None,
            Duration::from_secs(10),
        )
    };
    // The Registry is hung once /healthz, whose check pings it too, says so.
    let until = Instant::now() + Duration::from_secs(20);
    while healthz() != 503 {
        assert!(Instant::now() < until, "the Registry never hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    systemd.drain();
    // Ten periods: a healthy daemon sends about ten pings here. A ping answered just
    // before the hang may still arrive; nothing after it.
    let window = Instant::now() + period * 10;
    let mut pings = 0;
    while let Some(left) = window.checked_duration_since(Instant::now()) {
        if let Some(lines) = systemd.recv(left) {
            pings += lines.iter().filter(|l| *l == "WATCHDOG=1").count();
        }
    }
    assert_eq!(healthz(), 503, "the Registry was hung through the window");
    assert!(
        pings <= 1,
        "{pings} keep-alive pings went out while the Registry hung"
    );

    // The fault ends after 30 s; the pings resume.
    systemd.wait_for(Duration::from_secs(90), "WATCHDOG=1 again", |l| {
        l == "WATCHDOG=1"
    });
    assert_eq!(healthz(), 200);
    let status = hang.join().unwrap();
    assert_eq!(status, 404, "no bot 'any' once the Registry answers");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

/// The unit systemd runs: the pieces operators and the watchdog rely on.
#[test]
fn the_unit_is_type_notify_with_a_watchdog_check_config_reload_and_hardening() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/botd.service"))
            .unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for expected in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStartPre=/usr/local/bin/botd --config /etc/botd/config.toml check-config",
        "ExecStart=/usr/local/bin/botd --config /etc/botd/config.toml run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "User=botd",
        "StateDirectory=botd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "SystemCallFilter=@system-service",
    ] {
        assert!(lines.contains(&expected), "botd.service lacks {expected}");
    }
    assert!(lines.iter().any(|l| l.starts_with("WatchdogSec=")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("RestrictAddressFamilies=") && l.contains("AF_UNIX")));
}

/// `ExecStartPre` runs check-config before the first start has created the secret file or
/// the database: it must pass on the shipped configuration then.
#[test]
fn check_config_passes_on_the_shipped_configuration_before_the_first_start() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/config.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    assert!(text.contains("sqlite:///var/lib/botd/botd.db"));
    assert!(text.contains("\"/var/lib/botd/botd.secret\""));

    // As shipped: nothing under /var/lib/botd is read or made.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_botd"))
        .current_dir(dir.path())
        .env_remove("BOTD_CONFIG")
        .args(["--config", shipped, "check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("/var/lib/botd/botd.db"), "{printed}");

    // With the state directory redirected to an empty one, as on a fresh host.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_botd"))
        .current_dir(dir.path())
        .env_remove("BOTD_CONFIG")
        .env(
            "BOTD_DATABASE__URL",
            format!("sqlite://{}", state.join("botd.db").display()),
        )
        .env(
            "BOTD_AUTH__JWT_SECRET_FILE",
            state.join("botd.secret").display().to_string(),
        )
        .args(["--config", shipped, "check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&state.display().to_string()));
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "check-config created files"
    );
}
