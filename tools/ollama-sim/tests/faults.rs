//! Every scripted fault, and what the simulator reports about its calls.

mod common;

use std::time::Duration;

use common::*;
use ollama_sim::{Reply, Simulator};
use serde_json::{json, Value};

fn chat_url(sim: &Simulator) -> String {
    format!("{}/api/chat", sim.url())
}

#[tokio::test]
async fn fail_next_answers_the_status_n_times() {
    let sim = Simulator::start().await.unwrap();
    sim.fail_next(2, 500, "the runner failed");
    for _ in 0..2 {
        let (status, ct, raw) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
        assert_eq!(status, 500);
        assert!(ct.starts_with("application/json"));
        assert_eq!(raw, br#"{"error":"the runner failed"}"#);
    }
    let (status, _, _) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(status, 200);

    sim.fail_next(
        1,
        503,
        "server busy, please try again.  maximum pending requests exceeded",
    );
    let (status, _, raw) = post(
        &format!("{}/api/generate", sim.url()),
        &json!({"model": "mistral", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 503);
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert!(v["error"].as_str().unwrap().starts_with("server busy"));
    assert_eq!(sim.in_flight(), 0);
}

#[tokio::test]
async fn fail_rate_extremes() {
    let sim = Simulator::start().await.unwrap();
    sim.set_fail_rate(1.0, 503);
    let (status, _, _) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(status, 503);
    sim.set_fail_rate(0.0, 503);
    let (status, _, _) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn hang_holds_until_the_client_closes() {
    let sim = Simulator::start().await.unwrap();
    sim.hang_next(1);
    let call = tokio::spawn({
        let url = chat_url(&sim);
        async move {
            client()
                .post(url)
                .json(&chat_body("mistral", "hi"))
                .send()
                .await
        }
    });
    assert!(sim.wait_for(DEADLINE, |s| s.in_flight() == 1).await);
    assert_eq!(sim.client_closed(), 0);
    call.abort(); // the client goes away
    assert!(sim.wait_for(DEADLINE, |s| s.client_closed() == 1).await);
    assert_eq!(sim.in_flight(), 0);
    // Only one call hangs.
    let (status, _, _) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn gate_holds_calls_and_counts_the_peak() {
    let sim = Simulator::start().await.unwrap();
    let gate = sim.gate();
    gate.close();
    assert!(gate.is_closed());
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let url = chat_url(&sim);
            tokio::spawn(async move { post(&url, &chat_body("mistral", &format!("c{i}"))).await })
        })
        .collect();
    assert!(sim.wait_for(DEADLINE, |s| s.gate().waiting() == 3).await);
    assert_eq!(sim.in_flight(), 3);
    assert_eq!(sim.peak_in_flight(), 3);
    assert_eq!(sim.completed(), 0);
    gate.open();
    for call in calls {
        let (status, _, raw) = call.await.unwrap();
        assert_eq!(status, 200);
        assert!(chat_text(&lines(&raw)).starts_with("echo: c"));
    }
    assert_eq!(sim.in_flight(), 0);
    assert_eq!(sim.peak_in_flight(), 3);
    sim.reset_peak();
    assert_eq!(sim.peak_in_flight(), 0);
    assert_eq!(sim.completed(), 3);
}

#[tokio::test]
async fn gate_after_tokens_holds_mid_stream() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["a".into(), "b".into(), "c".into()]));
    let gate = sim.gate();
    gate.close_after_tokens(2);
    let mut resp = client()
        .post(chat_url(&sim))
        .json(&chat_body("mistral", "hi"))
        .send()
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.iter().filter(|&&b| b == b'\n').count() < 2 {
        got.extend_from_slice(&resp.chunk().await.unwrap().unwrap());
    }
    assert!(sim.wait_for(DEADLINE, |s| s.gate().waiting() == 1).await);
    assert_eq!(chat_text(&lines(&got)), "ab");
    gate.open();
    while let Some(c) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    let all = lines(&got);
    assert_eq!(chat_text(&all), "abc");
    assert_eq!(all.last().unwrap()["done"], true);
}

#[tokio::test]
async fn break_after_tokens_cuts_the_connection() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["a".into(), "b".into(), "c".into()]));
    sim.break_after_tokens(Some(2));
    let resp = client()
        .post(chat_url(&sim))
        .json(&chat_body("mistral", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (chunks, err) = raw_chunks(resp).await;
    assert!(err.is_some(), "the body must end in an error");
    let body = chunks.concat();
    let got = lines(&body);
    assert_eq!(chat_text(&got), "ab");
    assert!(got.iter().all(|l| l["done"] == false), "no final object");

    // Not streamed: the connection closes without an answer.
    let mut body = chat_body("mistral", "hi");
    body["stream"] = json!(false);
    let r = client().post(chat_url(&sim)).json(&body).send().await;
    assert!(r.is_err());

    // Before the first piece: no answer at all.
    sim.break_after_tokens(Some(0));
    let r = client()
        .post(chat_url(&sim))
        .json(&chat_body("mistral", "hi"))
        .send()
        .await;
    assert!(r.is_err());

    assert_eq!(
        sim.client_closed(),
        0,
        "the simulator's own cuts do not count"
    );
    assert_eq!(sim.in_flight(), 0);
    sim.break_after_tokens(None);
    let (status, _, _) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn error_after_tokens_sends_an_error_line() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["a".into(), "b".into(), "c".into()]));
    sim.error_after_tokens(Some(1), "boom <3");
    let (status, ct, raw) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(status, 200);
    assert_eq!(ct, "application/x-ndjson");
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(text.ends_with("{\"error\":\"boom \\u003c3\"}\n"), "{text}");
    let got = lines(&raw);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["message"]["content"], "a");
    assert_eq!(got[1], json!({"error": "boom <3"}));

    let mut body = chat_body("mistral", "hi");
    body["stream"] = json!(false);
    let (status, _, raw) = post(&chat_url(&sim), &body).await;
    assert_eq!(status, 500);
    assert_eq!(raw, br#"{"error":"boom \u003c3"}"#);
    sim.error_after_tokens(None, "");
    let (_, _, raw) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(lines(&raw).last().unwrap()["done"], true);
}

#[tokio::test]
async fn chunking_splits_inside_multibyte_characters() {
    let sim = Simulator::start().await.unwrap();
    let reply = "héllo → 世界 🎉";
    sim.set_reply(Reply::Fixed(reply.into()));
    sim.set_chunk_bytes(Some(1));
    let resp = client()
        .post(chat_url(&sim))
        .json(&chat_body("mistral", "hi"))
        .send()
        .await
        .unwrap();
    let (chunks, err) = raw_chunks(resp).await;
    assert!(err.is_none());
    assert!(
        chunks.iter().all(|c| c.len() == 1),
        "every chunk is one byte"
    );
    // Chunks that are bytes of a multi-byte character are not text on their own.
    let partial = chunks
        .iter()
        .filter(|c| std::str::from_utf8(c).is_err())
        .count();
    assert!(partial >= 10, "{partial}");
    let body = chunks.concat();
    let got = lines(&body);
    assert_eq!(chat_text(&got), reply);
    assert_eq!(got.last().unwrap()["done"], true);

    // Three-byte chunks: lines straddle chunks as well.
    sim.set_chunk_bytes(Some(3));
    let resp = client()
        .post(chat_url(&sim))
        .json(&chat_body("mistral", "hi"))
        .send()
        .await
        .unwrap();
    let (chunks, _) = raw_chunks(resp).await;
    assert!(chunks.iter().all(|c| c.len() <= 3));
    assert!(chunks.iter().any(|c| std::str::from_utf8(c).is_err()));
    assert_eq!(chat_text(&lines(&chunks.concat())), reply);

    // A whole body is cut too.
    let mut body = chat_body("mistral", "hi");
    body["stream"] = json!(false);
    let resp = client()
        .post(chat_url(&sim))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (chunks, _) = raw_chunks(resp).await;
    assert!(chunks.len() > 10 && chunks.iter().all(|c| c.len() <= 3));
    let v: Value = serde_json::from_slice(&chunks.concat()).unwrap();
    assert_eq!(v["message"]["content"], reply);
}

#[tokio::test]
async fn down_and_up_keep_the_port() {
    let sim = Simulator::start().await.unwrap();
    let addr = sim.addr();
    // A call held in flight while the simulator goes down is cut.
    sim.gate().close();
    let held = tokio::spawn({
        let url = chat_url(&sim);
        async move {
            client()
                .post(url)
                .json(&chat_body("mistral", "hi"))
                .send()
                .await
        }
    });
    assert!(sim.wait_for(DEADLINE, |s| s.gate().waiting() == 1).await);
    sim.down().await;
    assert!(!sim.is_up());
    assert!(held.await.unwrap().is_err());
    assert_eq!(sim.in_flight(), 0);
    assert_eq!(
        sim.client_closed(),
        0,
        "connections dropped by down() are not the client's"
    );
    sim.gate().open();

    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "nothing listens while down");
    let r = client()
        .get(format!("{}/api/version", sim.url()))
        .send()
        .await;
    assert!(r.unwrap_err().is_connect());

    sim.up().await.unwrap();
    assert!(sim.is_up());
    assert_eq!(sim.addr(), addr);
    let (status, _, _) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(status, 200);
    // up() twice is harmless.
    sim.up().await.unwrap();
    let (status, _, _) = post(&chat_url(&sim), &chat_body("mistral", "hi")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_closed_counts_a_dropped_stream() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["a".into(), "b".into()]));
    sim.gate().close_after_tokens(1);
    let mut resp = client()
        .post(chat_url(&sim))
        .json(&chat_body("mistral", "hi"))
        .send()
        .await
        .unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert_eq!(lines(&first)[0]["message"]["content"], "a");
    assert!(sim.wait_for(DEADLINE, |s| s.gate().waiting() == 1).await);
    drop(resp);
    assert!(sim.wait_for(DEADLINE, |s| s.client_closed() == 1).await);
    assert_eq!(sim.in_flight(), 0);
    assert_eq!(sim.gate().waiting(), 0);
    assert_eq!(sim.completed(), 0);
}

#[tokio::test]
async fn latency_and_token_delay_still_answer() {
    let sim = Simulator::start().await.unwrap();
    sim.set_latency(Duration::from_millis(5));
    sim.set_token_delay(Duration::from_millis(1));
    let (status, _, raw) = post(&chat_url(&sim), &chat_body("mistral", "slow")).await;
    assert_eq!(status, 200);
    assert_eq!(chat_text(&lines(&raw)), "echo: slow");
}

#[tokio::test]
async fn wait_for_gives_up_at_its_deadline() {
    let sim = Simulator::start().await.unwrap();
    assert!(
        !sim.wait_for(Duration::from_millis(30), |s| s.in_flight() == 1)
            .await
    );
    assert!(
        sim.wait_for(Duration::from_millis(30), |s| s.in_flight() == 0)
            .await
    );
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ollama-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--any-model",
            "--piece-chars",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (status, _, raw) = post(&format!("{url}/api/chat"), &chat_body("anything", "yo")).await;
    assert_eq!(status, 200);
    assert_eq!(
        lines(&raw).len(),
        5,
        "\"echo: yo\" in pieces of 2, and the final object"
    );
    child.kill().await.unwrap();
}
