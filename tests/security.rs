//! Users, login, tokens and the audit trail, from the outside: every credential failure
//! is the same 401, a user token follows its user, and control actions are events that
//! name who did them without holding a secret.

mod support;

use std::time::{Duration, Instant};

use botd::auth::{unix_now, ISSUER};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{spawn_app, spawn_app_with, TestApp, SECRET};

const PASSWORD: &str = "correct horse battery staple";

async fn add_user(app: &TestApp, name: &str, role: &str, password: &str) {
    let (s, body) = app
        .post(
            "/api/v1/users",
            &app.admin,
            json!({"username": name, "password": password, "role": role}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
}

async fn login(app: &TestApp, name: &str, password: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap();
    support::status_json(r).await
}

async fn token_of(app: &TestApp, name: &str, password: &str) -> String {
    let (s, body) = login(app, name, password).await;
    assert_eq!(s, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// The one 401 answer, whatever was wrong: status, code and message (not the request id).
fn the_401(status: u16, body: &Value) -> (u16, Value, Value) {
    (
        status,
        body["error"]["code"].clone(),
        body["error"]["message"].clone(),
    )
}

fn expected_401() -> (u16, Value, Value) {
    (
        401,
        json!("unauthorized"),
        json!("missing or invalid credentials"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_logs_in_and_whoami_names_them() {
    let app = spawn_app().await;
    add_user(&app, "ann", "operator", PASSWORD).await;
    let (s, body) = login(&app, "ann", PASSWORD).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["role"], "operator");
    assert!(
        body["expires_at"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    let token = body["token"].as_str().unwrap();
    let (s, me) = app.get("/api/v1/auth/whoami", token).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["sub"], "ann");
    assert_eq!(me["role"], "operator");
    assert_eq!(me["kind"], "user");
    assert_eq!(me["expires_at"], body["expires_at"]);
    // The token carries the operator role: it may read, not create bots.
    assert_eq!(app.get("/api/v1/bots", token).await.0, 200);
    let (s, e) = app.post("/api/v1/bots", token, json!({"name": "b"})).await;
    assert_eq!(s, 403, "{e}");
    // A service token is named as one.
    let (_, me) = app.get("/api/v1/auth/whoami", &app.viewer).await;
    assert_eq!(me["kind"], "service");
    assert_eq!(me["role"], "viewer");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_user_and_a_wrong_password_get_the_same_401() {
    let app = spawn_app().await;
    add_user(&app, "ann", "viewer", PASSWORD).await;
    let (s1, wrong) = login(&app, "ann", "not the password at all").await;
    let (s2, unknown) = login(&app, "bob", PASSWORD).await;
    let (s3, bad_name) = login(&app, "Not A Name", PASSWORD).await;
    let (s4, short) = login(&app, "ann", "short").await;
    for (s, b) in [(s1, &wrong), (s2, &unknown), (s3, &bad_name), (s4, &short)] {
        assert_eq!(the_401(s, b), expected_401(), "{b}");
    }
    // A body that is not a login is a 400, naming the field.
    let (s, e) = app
        .post("/api/v1/auth/login", "", json!({"username": "ann"}))
        .await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("password"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn login_attempts_are_limited_per_client_ip_and_username() {
    let app = spawn_app_with(|c| c.auth.login_attempts_per_minute = 3).await;
    add_user(&app, "ann", "viewer", PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(login(&app, "ann", "wrong password here").await.0, 401);
    }
    let r = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": "ann", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let (_, body) = support::status_json(r).await;
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another username from the same address has its own budget.
    add_user(&app, "bob", "viewer", PASSWORD).await;
    assert_eq!(login(&app, "bob", PASSWORD).await.0, 200);
}

/// Polls `GET path` with `token` until it answers `want`, or panics at the deadline.
async fn wait_for_answer(app: &TestApp, path: &str, token: &str, want: u16) -> Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, body) = app.get(path, token).await;
        if s == want {
            return body;
        }
        assert!(Instant::now() < until, "{path} kept answering {s}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_changed_behind_the_daemons_back_is_seen_within_user_check_secs() {
    let app = spawn_app_with(|c| c.auth.user_check_secs = 1).await;
    add_user(&app, "ann", "admin", PASSWORD).await;
    let token = token_of(&app, "ann", PASSWORD).await;
    assert_eq!(app.get("/api/v1/users", &token).await.0, 200);
    // Another daemon on the same database demotes her: this one sees it within 1 s.
    let db = app.db.open(1);
    let mut conn = db.writer.get().unwrap();
    botd_actors::store::queries::update_user(
        &mut conn,
        "ann",
        None,
        Some("viewer"),
        botd_actors::model::now_ms(),
    )
    .unwrap();
    let e = wait_for_answer(&app, "/api/v1/users", &token, 403).await;
    assert_eq!(e["error"]["code"], "forbidden");
    let (_, me) = app.get("/api/v1/auth/whoami", &token).await;
    assert_eq!(me["role"], "viewer");
    // And deletes her: her token stops working.
    botd_actors::store::queries::delete_user(&mut conn, "ann").unwrap();
    let e = wait_for_answer(&app, "/api/v1/auth/whoami", &token, 401).await;
    assert_eq!(the_401(401, &e), expected_401());
    // A new user of the same name does not inherit the old token.
    add_user(&app, "ann", "admin", PASSWORD).await;
    let (s, e) = app.get("/api/v1/auth/whoami", &token).await;
    assert_eq!(the_401(s, &e), expected_401());
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_through_the_api_apply_to_tokens_at_once() {
    let app = spawn_app().await;
    add_user(&app, "ann", "operator", PASSWORD).await;
    let token = token_of(&app, "ann", PASSWORD).await;
    let (s, u) = app
        .patch("/api/v1/users/ann", &app.admin, json!({"role": "viewer"}))
        .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["role"], "viewer");
    assert!(u.get("password_hash").is_none());
    let (_, me) = app.get("/api/v1/auth/whoami", &token).await;
    assert_eq!(me["role"], "viewer");
    assert_eq!(app.delete("/api/v1/users/ann", &app.admin).await.0, 204);
    let (s, e) = app.get("/api/v1/auth/whoami", &token).await;
    assert_eq!(the_401(s, &e), expected_401());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_users_routes_follow_the_contract() {
    let app = spawn_app().await;
    let (s, created) = app
        .post(
            "/api/v1/users",
            &app.admin,
            json!({"username": "ann", "password": PASSWORD, "role": "operator"}),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["username"], "ann");
    assert_eq!(created["role"], "operator");
    assert!(created["created_at"].is_string());
    let (s, e) = app
        .post(
            "/api/v1/users",
            &app.admin,
            json!({"username": "ann", "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("user_exists")));
    for (body, field) in [
        (
            json!({"username": "bob", "password": "short", "role": "viewer"}),
            "password",
        ),
        (
            json!({"username": "Bob!", "password": PASSWORD, "role": "viewer"}),
            "username",
        ),
        (
            json!({"username": "bob", "password": PASSWORD, "role": "root"}),
            "role",
        ),
        (
            json!({"username": "bob", "password": PASSWORD, "role": "viewer", "x": 1}),
            "x",
        ),
        (
            json!({"username": "bob", "password": "x".repeat(1025), "role": "viewer"}),
            "password",
        ),
    ] {
        let (s, e) = app.post("/api/v1/users", &app.admin, body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["code"], "invalid_field");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(field), "{body}: {m}");
    }
    // Only admins manage users.
    for token in [&app.operator, &app.viewer] {
        assert_eq!(app.get("/api/v1/users", token).await.0, 403);
        assert_eq!(app.delete("/api/v1/users/ann", token).await.0, 403);
        let (s, _) = app
            .patch("/api/v1/users/ann", token, json!({"role": "admin"}))
            .await;
        assert_eq!(s, 403);
    }
    let (s, list) = app.get("/api/v1/users", &app.admin).await;
    assert_eq!(s, 200);
    assert_eq!(list["users"].as_array().unwrap().len(), 1);
    assert_eq!(list["users"][0]["username"], "ann");
    assert!(!list.to_string().contains("argon2"), "{list}");

    // A user changes their own password with the current one, not their role.
    let token = token_of(&app, "ann", PASSWORD).await;
    let new = "another long password";
    let (s, e) = app
        .patch("/api/v1/users/ann", &token, json!({"password": new}))
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("current_password"));
    let (s, _) = app
        .patch(
            "/api/v1/users/ann",
            &token,
            json!({"password": new, "current_password": "not the current one"}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .patch(
            "/api/v1/users/ann",
            &token,
            json!({"role": "admin", "current_password": PASSWORD}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, u) = app
        .patch(
            "/api/v1/users/ann",
            &token,
            json!({"password": new, "current_password": PASSWORD}),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(login(&app, "ann", PASSWORD).await.0, 401);
    assert_eq!(login(&app, "ann", new).await.0, 200);
    // Not someone else's.
    add_user(&app, "bob", "viewer", PASSWORD).await;
    let (s, _) = app
        .patch(
            "/api/v1/users/bob",
            &token,
            json!({"password": new, "current_password": new}),
        )
        .await;
    assert_eq!(s, 403);
    // An admin needs no current password; nothing to change is a 400.
    let (s, _) = app
        .patch("/api/v1/users/bob", &app.admin, json!({"password": new}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.patch("/api/v1/users/bob", &app.admin, json!({}))
            .await
            .0,
        400
    );
    let (s, e) = app
        .patch(
            "/api/v1/users/nobody",
            &app.admin,
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("user_not_found"))
    );
    assert_eq!(app.delete("/api/v1/users/bob", &app.admin).await.0, 204);
    let (s, e) = app.delete("/api/v1/users/bob", &app.admin).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("user_not_found"))
    );
}

// ---- tokens ----

fn claims(exp_offset: i64) -> Value {
    let now = unix_now() as i64;
    json!({
        "sub": "mallory",
        "role": "admin",
        "kind": "service",
        "iat": now,
        "exp": now + exp_offset,
        "iss": ISSUER,
    })
}

fn sign(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

/// A token with a header of our own, signed with HS256 and the server secret.
fn with_header(header_b64: &str, claims: &Value) -> String {
    let good = sign(Algorithm::HS256, SECRET.as_bytes(), claims);
    let payload = good.split('.').nth(1).unwrap();
    let message = format!("{header_b64}.{payload}");
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{sig}")
}

async fn assert_refused(app: &TestApp, what: &str, authorization: Option<String>) {
    let mut req = app.http.get(app.url("/api/v1/status"));
    if let Some(h) = authorization {
        req = req.header("authorization", h);
    }
    let r = req.send().await.unwrap();
    let (s, body) = support::status_json(r).await;
    assert_eq!(the_401(s, &body), expected_401(), "{what}: {body}");
}

fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_token_passes_and_one_within_the_leeway_too() {
    let app = spawn_app().await;
    let good = sign(Algorithm::HS256, SECRET.as_bytes(), &claims(60));
    assert_eq!(app.get("/api/v1/status", &good).await.0, 200);
    let within = sign(Algorithm::HS256, SECRET.as_bytes(), &claims(-10));
    assert_eq!(app.get("/api/v1/status", &within).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn alg_none_is_401() {
    let app = spawn_app().await;
    let good = sign(Algorithm::HS256, SECRET.as_bytes(), &claims(60));
    let payload = good.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_refused(&app, "alg none", bearer(&none)).await;
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}");
    assert_refused(&app, "alg none, no signature part", bearer(&none)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hs512_is_401() {
    let app = spawn_app().await;
    let t = sign(Algorithm::HS512, SECRET.as_bytes(), &claims(60));
    assert_refused(&app, "HS512", bearer(&t)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_signed_with_the_secret_is_401() {
    let app = spawn_app().await;
    // The algorithm-confusion attack: RS256 in the header, HMAC with the secret.
    let t = with_header("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9", &claims(60));
    assert_refused(&app, "RS256 with the secret", bearer(&t)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_signature_is_401() {
    let app = spawn_app().await;
    let other = sign(
        Algorithm::HS256,
        b"another-secret-that-is-32-bytes-long!",
        &claims(60),
    );
    assert_refused(&app, "another secret", bearer(&other)).await;
    let good = sign(Algorithm::HS256, SECRET.as_bytes(), &claims(60));
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let t = format!("{head}.{flipped}{}", &sig[1..]);
    assert_refused(&app, "a changed signature", bearer(&t)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expired_beyond_the_30_s_leeway_is_401() {
    let app = spawn_app().await;
    // 45 s: inside jsonwebtoken's default leeway of 60 s, outside botd's 30 s.
    for past in [45, 3600] {
        let t = sign(Algorithm::HS256, SECRET.as_bytes(), &claims(-past));
        assert_refused(&app, &format!("expired {past} s ago"), bearer(&t)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_issuer_is_401() {
    let app = spawn_app().await;
    let mut c = claims(60);
    c["iss"] = json!("someone-else");
    let t = sign(Algorithm::HS256, SECRET.as_bytes(), &c);
    assert_refused(&app, "wrong iss", bearer(&t)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_missing_claim_is_401() {
    let app = spawn_app().await;
    for claim in ["sub", "role", "kind", "iat", "exp", "iss"] {
        let mut c = claims(60);
        c.as_object_mut().unwrap().remove(claim);
        let t = sign(Algorithm::HS256, SECRET.as_bytes(), &c);
        assert_refused(&app, &format!("without {claim}"), bearer(&t)).await;
    }
    // A claim of the wrong kind, too.
    let mut c = claims(60);
    c["role"] = json!("root");
    let t = sign(Algorithm::HS256, SECRET.as_bytes(), &c);
    assert_refused(&app, "role root", bearer(&t)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_authorization_header_is_401() {
    let app = spawn_app().await;
    let good = sign(Algorithm::HS256, SECRET.as_bytes(), &claims(60));
    for h in [
        None,
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {good}")),
        Some(format!("bearer{good}")),
        Some(format!("Token {good}")),
        // A header part that is not base64 JSON.
        Some(format!(
            "Bearer eyJhbGciOiJIUzI1NiI.{}",
            good.split_once('.').unwrap().1
        )),
        Some("Bearer a.b".to_owned()),
    ] {
        assert_refused(&app, &format!("{h:?}"), h.clone()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_token_is_401() {
    let app = spawn_app().await;
    for t in ["garbage", "...", "a.b.c", "\u{1F600}", &"x".repeat(8000)] {
        assert_refused(&app, t, bearer(t)).await;
    }
}

// ---- audit ----

async fn events(app: &TestApp, query: &str) -> Vec<Value> {
    let (s, body) = app
        .get(&format!("/api/v1/events?{query}"), &app.viewer)
        .await;
    assert_eq!(s, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn control_actions_are_events_naming_their_subject_and_no_secret() {
    let app = spawn_app().await;
    add_user(&app, "ann", "admin", PASSWORD).await;
    let token = token_of(&app, "ann", PASSWORD).await;
    // Bots, as the user.
    let (s, _) = app
        .post("/api/v1/bots", &token, json!({"name": "b1"}))
        .await;
    assert_eq!(s, 201);
    for action in ["start", "restart", "stop"] {
        let (s, body) = app
            .post(&format!("/api/v1/bots/b1/{action}"), &token, json!({}))
            .await;
        assert_eq!(s, 200, "{action}: {body}");
    }
    let (s, _) = app
        .patch("/api/v1/bots/b1", &token, json!({"concurrency": 2}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.delete("/api/v1/bots/b1", &token).await.0, 204);
    let kinds: Vec<String> = events(&app, "bot=b1&limit=100")
        .await
        .iter()
        .map(|e| {
            assert_eq!(e["subject"], "ann", "{e}");
            e["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    for k in ["created", "started", "stopped", "updated", "deleted"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event: {kinds:?}");
    }
    // Users, as the user.
    let other = "a password of bob's";
    let (s, _) = app
        .post(
            "/api/v1/users",
            &token,
            json!({"username": "bob", "password": other, "role": "viewer"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .patch(
            "/api/v1/users/bob",
            &token,
            json!({"password": "yet another password", "role": "operator"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.delete("/api/v1/users/bob", &token).await.0, 204);
    for kind in ["user_created", "user_updated", "user_deleted"] {
        let evs = events(&app, &format!("kind={kind}")).await;
        let bob: Vec<_> = evs
            .iter()
            .filter(|e| e["detail"]["username"] == "bob")
            .collect();
        assert_eq!(bob.len(), 1, "{kind}: {evs:?}");
        assert_eq!(bob[0]["subject"], "ann");
        assert!(bob[0]["bot"].is_null());
    }
    let all = events(&app, "limit=500").await;
    let text = serde_json::to_string(&all).unwrap();
    for secret in [
        PASSWORD,
        other,
        "yet another password",
        token.as_str(),
        "argon2",
    ] {
        assert!(!text.contains(secret), "an event holds {secret:?}: {text}");
    }
    // The first user's own event names the service token's subject.
    let ann = events(&app, "kind=user_created").await;
    assert!(ann
        .iter()
        .any(|e| e["detail"]["username"] == "ann" && e["subject"] == "test-user"));
}

#[tokio::test(flavor = "multi_thread")]
async fn login_passwords_and_tokens_never_reach_the_logs() {
    let app = spawn_app_with(|c| c.logging.level = botd::config::LogLevel::Trace).await;
    let password = "a password with CANARY inside";
    add_user(&app, "ann", "operator", password).await;
    let (s, _) = login(&app, "ann", "a wrong CANARY password").await;
    assert_eq!(s, 401);
    // A password typed into the username field is not logged either.
    let (s, _) = login(&app, "CANARY password", password).await;
    assert_eq!(s, 401);
    let token = token_of(&app, "ann", password).await;
    assert_eq!(app.get("/api/v1/auth/whoami", &token).await.0, 200);
    app.running_bot("c", json!({})).await;
    let (s, _) = app
        .post(
            "/api/v1/bots/c/messages",
            &token,
            json!({"content": "hello CANARY"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .patch(
            "/api/v1/users/ann",
            &token,
            json!({"password": "a new CANARY password", "current_password": password}),
        )
        .await;
    assert_eq!(s, 200);
    let logs = app.logs();
    assert!(logs.contains("A user logged in."), "{logs}");
    assert!(
        !logs.contains("CANARY"),
        "the log holds a password or content"
    );
    assert!(!logs.contains(&token), "the log holds a token");
    assert!(!logs.contains(&app.admin), "the log holds a token");
}

// ---- the command lines ----

#[tokio::test(flavor = "multi_thread")]
async fn botd_user_add_reads_the_password_from_stdin_and_botctl_logs_in() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut app = spawn_app().await;
    app.stop();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[auth]\njwt_secret_file = \"{}\"\n",
            app.config.database.url,
            dir.path().join("botd.secret").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_botd"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("BOTD_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        &["user", "add", "root", "--role", "admin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let out = run(
        &["user", "add", "root", "--role", "admin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = run(&["user", "add", "weak", "--role", "admin"], "short\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("12"));

    app.start();
    let botctl = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_botctl"))
            .current_dir(dir.path())
            .env("BOTD_URL", &app.base)
            .env_remove("BOTD_TOKEN")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    let out = botctl(&["login", "root"], &format!("{PASSWORD}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim_end();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let (s, me) = app.get("/api/v1/auth/whoami", token).await;
    assert_eq!(s, 200);
    assert_eq!(me["sub"], "root");
    assert_eq!(me["role"], "admin");
    let out = botctl(&["login", "root", "--export"], &format!("{PASSWORD}\n"));
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let exported = line.trim_end().strip_prefix("export BOTD_TOKEN=").unwrap();
    assert_eq!(app.get("/api/v1/auth/whoami", exported).await.0, 200);
    let out = botctl(&["login", "root"], "wrong password!!\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    // No file was written.
    let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(before.len(), after.len());
}

// ---- HTTP hardening ----

const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
];

fn assert_hardened(what: &str, r: &reqwest::Response) {
    for (k, v) in SECURITY_HEADERS {
        assert_eq!(
            r.headers().get(k).and_then(|h| h.to_str().ok()),
            Some(v),
            "{what}: {k}"
        );
    }
    assert!(r.headers().contains_key("x-request-id"), "{what}");
    // Plain HTTP: no HSTS (tests/tls.rs checks it over TLS).
    assert!(
        !r.headers().contains_key("strict-transport-security"),
        "{what}"
    );
    assert!(
        !r.headers().contains_key("access-control-allow-origin"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app_with(|c| c.rate_limit.requests_per_minute = 30).await;
    app.running_bot("h", json!({})).await;
    let get = |path: &str, token: Option<&str>| {
        let mut r = app
            .http
            .get(app.url(path))
            .header("origin", "https://evil.example");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let cases = [
        (
            "200 json",
            get("/api/v1/status", Some(&app.viewer)).await.unwrap(),
        ),
        ("healthz", get("/healthz", None).await.unwrap()),
        ("metrics", get("/metrics", None).await.unwrap()),
        ("401", get("/api/v1/status", None).await.unwrap()),
        (
            "403",
            get("/api/v1/users", Some(&app.viewer)).await.unwrap(),
        ),
        ("404", get("/nowhere", None).await.unwrap()),
        (
            "ndjson",
            get("/api/v1/logs?tail=5", Some(&app.viewer)).await.unwrap(),
        ),
    ];
    for (what, r) in &cases {
        assert_hardened(what, r);
    }
    let stream = app
        .http
        .post(app.url("/api/v1/bots/h/messages"))
        .bearer_auth(&app.operator)
        .json(&json!({"content": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    assert_hardened("sse", &stream);
    // A client of its own: the 413's connection is closed (tests/api.rs says why).
    let r = reqwest::Client::new()
        .post(app.url("/api/v1/bots"))
        .bearer_auth(&app.admin)
        .body(vec![b' '; 2 << 20])
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_hardened("413", &r);
    assert_eq!(r.headers()["connection"], "close");
    // Spend the budget: the 429 is hardened too.
    let mut last = None;
    for _ in 0..40 {
        let r = get("/api/v1/status", Some(&app.viewer)).await.unwrap();
        if r.status().as_u16() == 429 {
            last = Some(r);
            break;
        }
    }
    assert_hardened("429", &last.expect("the budget ran out"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_is_off_by_default_and_follows_the_allow_list() {
    let off = spawn_app().await;
    let preflight = |app: &TestApp, origin: &str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/bots"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = preflight(&off, "https://ui.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert_ne!(r.status().as_u16(), 204);

    let on = spawn_app_with(|c| c.http.cors_origins = vec!["https://ui.example".into()]).await;
    let r = preflight(&on, "https://ui.example").await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://ui.example");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert!(h.contains_key("access-control-max-age"));
    assert_eq!(h["vary"], "origin");
    let r = on
        .http
        .get(on.url("/api/v1/bots"))
        .header("origin", "https://ui.example")
        .bearer_auth(&on.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ui.example"
    );
    assert!(r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));
    // Another origin gets nothing.
    let r = preflight(&on, "https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = on
        .http
        .get(on.url("/api/v1/bots"))
        .header("origin", "https://evil.example")
        .bearer_auth(&on.viewer)
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_body_limit_is_413_and_field_limits_are_400_naming_the_field() {
    let app = spawn_app_with(|c| c.http.max_body_bytes = 4096).await;
    let big = json!({"name": "b", "system_prompt": "x".repeat(8000)});
    let (s, e) = app.post("/api/v1/bots", &app.admin, big).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    // Without a Content-Length (chunked), too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let r = app
        .http
        .post(app.url("/api/v1/bots"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    let app = spawn_app().await;
    app.running_bot("f", json!({})).await;
    let max_content = app.config.limits.max_content_bytes;
    let (s, e) = app.send("f", &"é".repeat(max_content / 2 + 1)).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("content"),
        "{e}"
    );
    let max_prompt = app.config.limits.max_system_prompt_bytes;
    let (s, e) = app
        .post(
            "/api/v1/bots",
            &app.admin,
            json!({"name": "g", "system_prompt": "x".repeat(max_prompt + 1)}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("system_prompt"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| c.http.header_read_timeout_ms = 300).await;
    let addr = app.daemon.as_ref().unwrap().addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 512];
    let mut answer = Vec::new();
    // One header line every 50 ms, never the end of the headers.
    loop {
        assert!(
            Instant::now() < until,
            "the trickling connection stayed open"
        );
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains(" 200 "), "the request was served: {text}");
    // The daemon still serves others.
    assert_eq!(app.get("/healthz", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_max_connections_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| c.http.max_connections = 2).await;
    let addr = app.daemon.as_ref().unwrap().addr;
    const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    async fn answered(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    // Two kept-alive connections hold both slots.
    let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(REQUEST).await.unwrap();
        assert!(answered(s).await.starts_with("HTTP/1.1 200"));
    }
    // A third connects (the listen backlog) but is not served while they are open.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(REQUEST).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served past the cap");
    // One closes: the third is served.
    drop(a);
    let served = tokio::time::timeout(Duration::from_secs(20), answered(&mut c))
        .await
        .expect("the waiting connection was never served");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    drop(b);
}
