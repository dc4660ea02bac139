//! The simulator speaks Ollama's protocol: shapes, content types, statuses.

mod common;

use common::*;
use ollama_sim::{Reply, Simulator};
use serde_json::{json, Value};

/// `created_at` as Go writes it: RFC 3339, UTC, up to nine fraction digits.
fn assert_go_time(v: &Value) {
    let s = v.as_str().unwrap();
    assert!(s.ends_with('Z'), "{s}");
    let (date, time) = s.split_once('T').unwrap();
    assert_eq!(date.len(), 10, "{s}");
    let time = time.trim_end_matches('Z');
    if let Some((hms, frac)) = time.split_once('.') {
        assert_eq!(hms.len(), 8, "{s}");
        assert!(!frac.is_empty() && frac.len() <= 9, "{s}");
        assert!(frac.bytes().all(|b| b.is_ascii_digit()), "{s}");
        assert!(!frac.ends_with('0'), "Go trims trailing zeros: {s}");
    } else {
        assert_eq!(time.len(), 8, "{s}");
    }
}

fn assert_final_metrics(v: &Value) {
    assert_eq!(v["done"], true);
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(v[key].as_u64().is_some_and(|n| n > 0), "{key} in {v}");
    }
}

#[tokio::test]
async fn root_version_and_unknown_path() {
    let sim = Simulator::start().await.unwrap();
    let c = client();
    let root = c.get(sim.url()).send().await.unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(root.text().await.unwrap(), "Ollama is running");

    let v = c
        .get(format!("{}/api/version", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), 200);
    assert!(content_type(&v).starts_with("application/json"));
    assert_eq!(v.text().await.unwrap(), r#"{"version":"0.12.0"}"#);

    let nope = c
        .get(format!("{}/api/nope", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(nope.status(), 404);
}

#[tokio::test]
async fn tags_list_the_default_models() {
    let sim = Simulator::start().await.unwrap();
    let tags: Value = client()
        .get(format!("{}/api/tags", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let models = tags["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mistral:latest", "llama3:latest"]);
    let m = &models[0];
    assert_eq!(m["model"], "mistral:latest");
    assert_eq!(m["size"], 4_113_301_824u64);
    assert_eq!(m["digest"].as_str().unwrap().len(), 64);
    assert_go_time(&m["modified_at"]);
    assert_eq!(m["details"]["format"], "gguf");
    assert_eq!(m["details"]["family"], "llama");
    assert_eq!(m["details"]["parameter_size"], "7.2B");
    assert_eq!(m["details"]["quantization_level"], "Q4_0");

    sim.set_models(&["phi3", "qwen2:7b"]);
    let tags: Value = client()
        .get(format!("{}/api/tags", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["models"][0]["name"], "phi3:latest");
    assert_eq!(tags["models"][1]["name"], "qwen2:7b");
}

#[tokio::test]
async fn show_known_unknown_and_missing() {
    let sim = Simulator::start().await.unwrap();
    let url = format!("{}/api/show", sim.url());
    let (status, _, body) = post(&url, &json!({"model": "mistral"})).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["details"]["family"], "llama");
    assert!(v["template"].is_string() && v["modelfile"].is_string());
    assert_eq!(v["capabilities"], json!(["completion"]));
    // The deprecated `name` field, as ollama-rs sends it.
    let (status, _, _) = post(&url, &json!({"name": "llama3:latest"})).await;
    assert_eq!(status, 200);

    let (status, ct, body) = post(&url, &json!({"model": "nope"})).await;
    assert_eq!(status, 404);
    assert!(ct.starts_with("application/json"));
    assert_eq!(body, br#"{"error":"model 'nope' not found"}"#);

    let (status, _, body) = post(&url, &json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(body, br#"{"error":"model is required"}"#);
}

#[tokio::test]
async fn chat_streams_ndjson_by_default() {
    let sim = Simulator::start().await.unwrap();
    let resp = client()
        .post(format!("{}/api/chat", sim.url()))
        .json(&json!({
            "model": "mistral",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "Hi!"},
                {"role": "user", "content": "How are you?"}
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(content_type(&resp), "application/x-ndjson");
    let body = resp.bytes().await.unwrap();
    assert!(body.ends_with(b"\n"));
    let lines = lines(&body);
    let (last, pieces) = lines.split_last().unwrap();
    // "echo: How are you?" in pieces of 4 characters.
    assert_eq!(pieces.len(), 5);
    for p in pieces {
        assert_eq!(p["model"], "mistral", "the model is echoed as requested");
        assert_go_time(&p["created_at"]);
        assert_eq!(p["message"]["role"], "assistant");
        assert_eq!(p["done"], false);
        assert!(p.get("done_reason").is_none() && p.get("eval_count").is_none());
    }
    assert_eq!(chat_text(pieces), "echo: How are you?");
    assert_eq!(last["message"], json!({"role": "assistant", "content": ""}));
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["eval_count"], 5);
    assert_final_metrics(last);
    assert_go_time(&last["created_at"]);
}

#[tokio::test]
async fn chat_without_stream_answers_one_object() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Fixed("The whole reply.".into()));
    let mut body = chat_body("llama3:latest", "hi");
    body["stream"] = json!(false);
    let (status, ct, raw) = post(&format!("{}/api/chat", sim.url()), &body).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(!raw.ends_with(b"\n"));
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["model"], "llama3:latest");
    assert_eq!(v["message"]["content"], "The whole reply.");
    assert_eq!(v["done_reason"], "stop");
    assert_final_metrics(&v);
}

#[tokio::test]
async fn json_is_escaped_the_go_way() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Fixed("<b>Tom & Jerry</b> é 世界".into()));
    sim.set_piece_chars(100);
    let mut body = chat_body("mistral", "hi");
    body["stream"] = json!(false);
    let (_, _, raw) = post(&format!("{}/api/chat", sim.url()), &body).await;
    let text = String::from_utf8(raw).unwrap();
    assert!(
        text.contains(r#""content":"\u003cb\u003eTom \u0026 Jerry\u003c/b\u003e é 世界""#),
        "{text}"
    );
    assert!(!text.contains('<') && !text.contains('&'));
}

#[tokio::test]
async fn generate_streams_response_pieces_and_context() {
    let sim = Simulator::start().await.unwrap();
    let url = format!("{}/api/generate", sim.url());
    let (status, ct, raw) = post(
        &url,
        &json!({"model": "mistral", "prompt": "Why is the sky blue?", "system": "Be brief."}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ct, "application/x-ndjson");
    let lines = lines(&raw);
    let (last, pieces) = lines.split_last().unwrap();
    let text: String = pieces
        .iter()
        .map(|p| {
            assert_eq!(p["done"], false);
            assert!(p.get("message").is_none());
            p["response"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "echo: Why is the sky blue?");
    assert_eq!(last["response"], "");
    assert_eq!(last["done_reason"], "stop");
    assert!(!last["context"].as_array().unwrap().is_empty());
    assert_final_metrics(last);

    let (status, _, raw) = post(
        &url,
        &json!({"model": "mistral", "prompt": "hi", "stream": false}),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["response"], "echo: hi");
    assert!(v["context"].is_array());
}

#[tokio::test]
async fn empty_messages_or_prompt_only_load_the_model() {
    let sim = Simulator::start().await.unwrap();
    let (status, _, raw) = post(
        &format!("{}/api/chat", sim.url()),
        &json!({"model": "mistral", "messages": []}),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "load");
    let (_, _, raw) = post(
        &format!("{}/api/generate", sim.url()),
        &json!({"model": "mistral"}),
    )
    .await;
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(v["done_reason"], "load");
    assert_eq!(v["response"], "");
}

#[tokio::test]
async fn request_errors_have_ollamas_statuses() {
    let sim = Simulator::start().await.unwrap();
    let url = format!("{}/api/chat", sim.url());
    let c = client();

    let resp = c.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(content_type(&resp).starts_with("application/json"));
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));

    let resp = c.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":"missing request body"}"#
    );

    let (status, _, raw) = post(&url, &json!({"messages": []})).await;
    assert_eq!(status, 400);
    assert_eq!(raw, br#"{"error":"model is required"}"#);

    let (status, _, _) = post(&url, &json!({"model": "mistral", "messages": "no"})).await;
    assert_eq!(status, 400, "bad field types");

    let (status, _, raw) = post(&url, &chat_body("nope", "hi")).await;
    assert_eq!(status, 404);
    assert_eq!(raw, br#"{"error":"model 'nope' not found"}"#);
    let (status, _, _) = post(&url, &chat_body("mistral:7b", "hi")).await;
    assert_eq!(status, 404, "only :latest is known");

    let (status, _, _) = post(&url, &chat_body("mistral:latest", "hi")).await;
    assert_eq!(status, 200);

    sim.set_accept_any_model(true);
    let (status, _, _) = post(&url, &chat_body("nope", "hi")).await;
    assert_eq!(status, 200);
    sim.set_accept_any_model(false);
    sim.add_model("nope");
    let (status, _, _) = post(&url, &chat_body("nope:latest", "hi")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn ps_lists_models_used() {
    let sim = Simulator::start().await.unwrap();
    let ps = |sim: &Simulator| {
        let url = format!("{}/api/ps", sim.url());
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(ps(&sim).await, json!({"models": []}));
    let (status, _, _) = post(
        &format!("{}/api/chat", sim.url()),
        &chat_body("mistral", "hi"),
    )
    .await;
    assert_eq!(status, 200);
    let v = ps(&sim).await;
    let m = &v["models"][0];
    assert_eq!(m["name"], "mistral:latest");
    assert_go_time(&m["expires_at"]);
    assert!(m["size_vram"].as_u64().is_some_and(|n| n > 0));
    // keep_alive 0 unloads.
    let mut body = chat_body("mistral", "hi");
    body["keep_alive"] = json!(0);
    post(&format!("{}/api/chat", sim.url()), &body).await;
    assert_eq!(ps(&sim).await, json!({"models": []}));
}

#[tokio::test]
async fn num_predict_stops_with_length() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["a".into(), "b".into(), "c".into()]));
    let mut body = chat_body("mistral", "hi");
    body["options"] = json!({"num_predict": 2});
    let (_, _, raw) = post(&format!("{}/api/chat", sim.url()), &body).await;
    let lines = lines(&raw);
    assert_eq!(chat_text(&lines), "ab");
    assert_eq!(lines.last().unwrap()["done_reason"], "length");
    assert_eq!(lines.last().unwrap()["eval_count"], 2);
}

#[tokio::test]
async fn pieces_follow_the_script() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec![
        "Hel".into(),
        "lo".into(),
        " 世界".into(),
    ]));
    let (_, _, raw) = post(
        &format!("{}/api/chat", sim.url()),
        &chat_body("mistral", "x"),
    )
    .await;
    let got = lines(&raw);
    let pieces: Vec<&str> = got[..3]
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(pieces, ["Hel", "lo", " 世界"]);

    // Pieces of characters, never cut inside one.
    sim.set_reply(Reply::Fixed("é世🎉ab".into()));
    sim.set_piece_chars(2);
    let (_, _, raw) = post(
        &format!("{}/api/chat", sim.url()),
        &chat_body("mistral", "x"),
    )
    .await;
    let got = lines(&raw);
    let pieces: Vec<&str> = got[..3]
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(pieces, ["é世", "🎉a", "b"]);
}

#[tokio::test]
async fn requests_are_recorded_in_order() {
    let sim = Simulator::start().await.unwrap();
    let c = client();
    c.get(format!("{}/api/version", sim.url()))
        .send()
        .await
        .unwrap();
    let options = json!({"temperature": 0.7, "num_ctx": 4096, "custom": {"a": [1, 2]}});
    let mut body = chat_body("mistral", "first");
    body["options"] = options.clone();
    post(&format!("{}/api/chat", sim.url()), &body).await;
    c.post(format!("{}/api/chat", sim.url()))
        .body("garbage")
        .send()
        .await
        .unwrap();
    post(
        &format!("{}/api/generate", sim.url()),
        &json!({"model": "mistral", "prompt": "p"}),
    )
    .await;

    let reqs = sim.requests();
    let seen: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("GET", "/api/version"),
            ("POST", "/api/chat"),
            ("POST", "/api/chat"),
            ("POST", "/api/generate")
        ]
    );
    assert!(reqs.windows(2).all(|w| w[0].received <= w[1].received));
    assert_eq!(reqs[0].body, Value::Null);
    let chats = sim.chat_requests();
    assert_eq!(chats.len(), 2);
    assert_eq!(chats[0]["options"], options);
    assert_eq!(chats[1], Value::Null, "not JSON");
    assert_eq!(sim.generate_requests()[0]["prompt"], "p");
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn keep_alive_connections_serve_many_calls() {
    let sim = Simulator::start().await.unwrap();
    let c = reqwest::Client::new();
    for i in 0..20 {
        let r = c
            .post(format!("{}/api/chat", sim.url()))
            .json(&chat_body("mistral", &format!("n{i}")))
            .send()
            .await
            .unwrap();
        let lines = lines(&r.bytes().await.unwrap());
        assert_eq!(chat_text(&lines), format!("echo: n{i}"));
    }
    assert_eq!(sim.completed(), 20);
    // Reused; not necessarily one (the client's pool may race a new connection against
    // the return of the idle one).
    assert!(
        sim.connections_accepted() < 20,
        "{}",
        sim.connections_accepted()
    );
    assert_eq!(sim.in_flight(), 0);
    assert_eq!(sim.client_closed(), 0);
}
