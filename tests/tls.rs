//! HTTPS: `http.tls_cert` and `http.tls_key` serve TLS 1.2 and 1.3 with rustls, older
//! versions are refused with a `protocol_version` alert, and botctl talks HTTPS with
//! `--ca-file`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{spawn_app_with, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    pem: String,
    _dir: tempfile::TempDir,
}

fn self_signed() -> Cert {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let pem = ck.cert.pem();
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Cert {
        cert,
        key,
        pem,
        _dir: dir,
    }
}

async fn tls_app(cert: &Cert) -> TestApp {
    spawn_app_with(|c| {
        c.http.tls_cert = Some(cert.cert.clone());
        c.http.tls_key = Some(cert.key.clone());
    })
    .await
}

fn https_base(app: &TestApp) -> String {
    app.base.replacen("http://", "https://", 1)
}

fn client(cert: &Cert, version: Option<reqwest::tls::Version>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem.as_bytes()).unwrap());
    if let Some(v) = version {
        b = b.min_tls_version(v).max_tls_version(v);
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn https_is_served_with_tls_1_2_and_1_3_and_hsts() {
    let cert = self_signed();
    let app = tls_app(&cert).await;
    let base = https_base(&app);
    for version in [
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ] {
        let http = client(&cert, Some(version));
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{version:?}");
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=31536000",
            "{version:?}"
        );
        let r = http
            .get(format!("{base}/api/v1/status"))
            .bearer_auth(&app.viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{version:?}");
        // Errors carry it too.
        let r = http
            .get(format!("{base}/api/v1/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert!(r.headers().contains_key("strict-transport-security"));
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = app.http.get(app.url("/healthz")).send().await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status().as_u16() != 200),
        "{plain:?}"
    );
    // A client that does not trust the certificate refuses it.
    let untrusting = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(untrusting.is_err());
}

/// A TLS 1.1 ClientHello (no `supported_versions` extension), as an old client sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([0x42u8; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x04, 0x00, 0x2f, 0xc0, 0x13]); // two CBC suites
    body.extend([0x01, 0x00]); // null compression
                               // signature_algorithms (rsa_pkcs1_sha256), which rustls reads before the version.
    body.extend([0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x01]);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_1_1_client_hello_gets_a_protocol_version_alert() {
    let cert = self_signed();
    let app = tls_app(&cert).await;
    let addr = app.daemon.as_ref().unwrap().addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    // An alert record: type 21, a two-byte version, length 2, level fatal (2),
    // description protocol_version (70).
    assert!(buf.len() >= 7, "no alert: {buf:?}");
    assert_eq!(buf[0], 21, "{buf:?}");
    assert_eq!(&buf[3..7], &[0, 2, 2, 70], "{buf:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn botctl_talks_https_with_a_ca_file() {
    let cert = self_signed();
    let app = tls_app(&cert).await;
    let base = https_base(&app);
    let botctl = |ca: Option<&PathBuf>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_botctl"));
        cmd.env("BOTD_URL", &base)
            .env("BOTD_TOKEN", &app.viewer)
            .env_remove("BOTD_CA_FILE")
            .arg("--json")
            .arg("status");
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.output().unwrap()
    };
    let out = tokio::task::block_in_place(|| botctl(Some(&cert.cert)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["version"].is_string());
    let out = tokio::task::block_in_place(|| botctl(None));
    assert!(!out.status.success(), "an unknown certificate was trusted");
}

#[test]
fn unreadable_tls_files_stop_start_up_naming_the_key() {
    let mut http = botd::config::HttpSettings {
        tls_cert: Some("/nonexistent/cert.pem".into()),
        tls_key: Some("/nonexistent/key.pem".into()),
        ..Default::default()
    };
    let e = botd::server::tls_config(&http).unwrap_err().to_string();
    assert!(e.starts_with("http.tls_cert"), "{e}");
    let cert = self_signed();
    http.tls_cert = Some(cert.cert.clone());
    let e = botd::server::tls_config(&http).unwrap_err().to_string();
    assert!(e.starts_with("http.tls_key"), "{e}");
    http.tls_key = Some(cert.key.clone());
    assert!(botd::server::tls_config(&http).unwrap().is_some());
}
