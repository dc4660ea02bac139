//! botd's Ollama chat client against the simulator: replies, faults, and their errors.

use std::time::Duration;

use botd_actors::llm::client::{ChatMessage, ChatReply, ChatRequest, LlmError, OllamaClient};
use ollama_sim::{Reply, Simulator};
use serde_json::json;

const CONNECT: Duration = Duration::from_secs(2);
/// Generous: only the timeout test relies on the request timeout passing.
const REQUEST: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(10);

fn client(sim: &Simulator) -> OllamaClient {
    OllamaClient::new(&sim.url(), CONNECT, REQUEST).unwrap()
}

fn request(model: &str, content: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: content.into(),
            },
        ],
        options: serde_json::Map::new(),
        keep_alive: None,
    }
}

/// A streamed call, with the pieces it passed on.
async fn stream(c: &OllamaClient, req: &ChatRequest) -> (Vec<String>, Result<ChatReply, LlmError>) {
    let mut pieces = Vec::new();
    let result = c
        .chat_stream(req, &mut |p: &str| pieces.push(p.to_owned()))
        .await;
    (pieces, result)
}

#[tokio::test]
async fn plain_reply() {
    let sim = Simulator::start().await.unwrap();
    let reply = client(&sim)
        .chat(&request("mistral", "Hello"))
        .await
        .unwrap();
    assert_eq!(reply.content, "echo: Hello");
    assert_eq!(reply.done_reason.as_deref(), Some("stop"));
    assert!(reply.prompt_tokens.is_some_and(|n| n > 0));
    assert_eq!(
        reply.completion_tokens,
        Some(3),
        "\"echo: Hello\" in pieces of 4"
    );
    assert!(reply.total_duration_ns.is_some_and(|n| n > 0));
    let sent = &sim.chat_requests()[0];
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["model"], "mistral");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    );
    assert!(sent.get("options").is_none() && sent.get("keep_alive").is_none());
}

#[tokio::test]
async fn streamed_reply() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec![
        "Hel".into(),
        "lo".into(),
        " <&>".into(),
    ]));
    let (pieces, reply) = stream(&client(&sim), &request("mistral", "Hi")).await;
    assert_eq!(pieces, ["Hel", "lo", " <&>"]);
    let reply = reply.unwrap();
    assert_eq!(reply.content, "Hello <&>");
    assert_eq!(reply.completion_tokens, Some(3));
    assert_eq!(reply.done_reason.as_deref(), Some("stop"));
    assert_eq!(sim.chat_requests()[0]["stream"], true);
    assert_eq!(sim.client_closed(), 0);
}

#[tokio::test]
async fn pieces_arrive_before_the_next_read() {
    // The second piece is held at the gate: the first must already have been passed on.
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["first".into(), "second".into()]));
    sim.gate().close_after_tokens(1);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let c = client(&sim);
    let call = tokio::spawn(async move {
        c.chat_stream(&request("mistral", "x"), &mut |p: &str| {
            let _ = tx.send(p.to_owned());
        })
        .await
    });
    assert_eq!(rx.recv().await.as_deref(), Some("first"));
    assert!(sim.wait_for(DEADLINE, |s| s.gate().waiting() == 1).await);
    sim.gate().open();
    assert_eq!(rx.recv().await.as_deref(), Some("second"));
    assert_eq!(call.await.unwrap().unwrap().content, "firstsecond");
}

#[tokio::test]
async fn multibyte_reply_cut_into_single_bytes_arrives_intact() {
    let sim = Simulator::start().await.unwrap();
    let text = "héllo → 世界 🎉 <ß & ü>";
    sim.set_reply(Reply::Fixed(text.into()));
    sim.set_piece_chars(3);
    sim.set_chunk_bytes(Some(1));
    let c = client(&sim);
    let (pieces, reply) = stream(&c, &request("mistral", "x")).await;
    assert_eq!(reply.unwrap().content, text);
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| p.chars().count() <= 3));
    // Not streamed, the one body is cut the same way.
    assert_eq!(
        c.chat(&request("mistral", "x")).await.unwrap().content,
        text
    );
    // Any chunk size.
    for n in [2, 3, 5, 7] {
        sim.set_chunk_bytes(Some(n));
        assert_eq!(
            stream(&c, &request("mistral", "x"))
                .await
                .1
                .unwrap()
                .content,
            text
        );
    }
}

#[tokio::test]
async fn unknown_model_is_status_404() {
    let sim = Simulator::start().await.unwrap();
    let c = client(&sim);
    let want = LlmError::Status {
        status: 404,
        message: "model 'nope' not found".into(),
    };
    assert_eq!(c.chat(&request("nope", "x")).await, Err(want.clone()));
    let (pieces, result) = stream(&c, &request("nope", "x")).await;
    assert!(pieces.is_empty());
    assert_eq!(result, Err(want.clone()));
    assert!(!want.is_retryable() && !want.counts_for_breaker());
}

#[tokio::test]
async fn server_error_is_status_500() {
    let sim = Simulator::start().await.unwrap();
    sim.fail_next(2, 500, "the runner failed");
    let c = client(&sim);
    let want = LlmError::Status {
        status: 500,
        message: "the runner failed".into(),
    };
    assert_eq!(
        stream(&c, &request("mistral", "x")).await.1,
        Err(want.clone())
    );
    assert_eq!(c.chat(&request("mistral", "x")).await, Err(want.clone()));
    assert!(want.is_retryable() && want.counts_for_breaker());
    // The next call is fine, on the same client.
    assert_eq!(
        c.chat(&request("mistral", "x")).await.unwrap().content,
        "echo: x"
    );
}

#[tokio::test]
async fn error_line_mid_stream_is_a_stream_error() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["a".into(), "b".into(), "c".into()]));
    sim.error_after_tokens(Some(2), "out of memory");
    let c = client(&sim);
    let (pieces, result) = stream(&c, &request("mistral", "x")).await;
    assert_eq!(pieces, ["a", "b"]);
    assert_eq!(result, Err(LlmError::Stream("out of memory".into())));
    // Not streamed, Ollama answers 500 with it.
    assert_eq!(
        c.chat(&request("mistral", "x")).await,
        Err(LlmError::Status {
            status: 500,
            message: "out of memory".into()
        })
    );
}

#[tokio::test]
async fn break_mid_stream_is_broken() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["a".into(), "b".into(), "c".into()]));
    sim.break_after_tokens(Some(2));
    let c = client(&sim);
    let (pieces, result) = stream(&c, &request("mistral", "x")).await;
    assert_eq!(pieces, ["a", "b"]);
    assert!(matches!(result, Err(LlmError::Broken(_))), "{result:?}");
    // Cut before any answer: broken as well (retryable, counts for the breaker).
    sim.break_after_tokens(Some(0));
    let (pieces, result) = stream(&c, &request("mistral", "x")).await;
    assert!(pieces.is_empty());
    let e = result.unwrap_err();
    assert!(matches!(e, LlmError::Broken(_)), "{e:?}");
    assert!(e.is_retryable() && e.counts_for_breaker());
    let e = c.chat(&request("mistral", "x")).await.unwrap_err();
    assert!(matches!(e, LlmError::Broken(_)), "{e:?}");
    sim.break_after_tokens(None);
    assert!(stream(&c, &request("mistral", "x")).await.1.is_ok());
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = OllamaClient::new(&format!("http://{addr}"), CONNECT, REQUEST).unwrap();
    let e = c.chat(&request("mistral", "x")).await.unwrap_err();
    assert!(matches!(e, LlmError::Unavailable(_)), "{e:?}");
    assert!(e.is_retryable() && e.counts_for_breaker());
    let (_, result) = stream(&c, &request("mistral", "x")).await;
    assert!(
        matches!(result, Err(LlmError::Unavailable(_))),
        "{result:?}"
    );
    assert!(matches!(c.version().await, Err(LlmError::Unavailable(_))));
    assert!(matches!(
        c.model_exists("mistral").await,
        Err(LlmError::Unavailable(_))
    ));
}

#[tokio::test]
async fn simulator_down_then_up() {
    let sim = Simulator::start().await.unwrap();
    let c = client(&sim);
    assert!(c.chat(&request("mistral", "x")).await.is_ok());
    sim.down().await;
    let e = c.chat(&request("mistral", "x")).await.unwrap_err();
    assert!(matches!(e, LlmError::Unavailable(_)), "{e:?}");
    assert!(c.version().await.is_err());
    sim.up().await.unwrap();
    assert_eq!(c.version().await.unwrap(), "0.12.0");
    assert!(c.chat(&request("mistral", "x")).await.is_ok());
}

#[tokio::test]
async fn hang_past_the_request_timeout_is_timeout() {
    let sim = Simulator::start().await.unwrap();
    let c = OllamaClient::new(&sim.url(), CONNECT, Duration::from_millis(100)).unwrap();
    sim.hang_next(2);
    let e = stream(&c, &request("mistral", "x")).await.1.unwrap_err();
    assert_eq!(e, LlmError::Timeout);
    assert!(!e.is_retryable() && !e.counts_for_breaker());
    assert_eq!(
        c.chat(&request("mistral", "x")).await,
        Err(LlmError::Timeout)
    );
    // The timed-out calls closed their connections.
    assert!(sim.wait_for(DEADLINE, |s| s.client_closed() == 2).await);
    assert_eq!(sim.in_flight(), 0);
}

#[tokio::test]
async fn timeout_mid_stream_is_timeout() {
    let sim = Simulator::start().await.unwrap();
    sim.set_reply(Reply::Pieces(vec!["a".into(), "b".into()]));
    sim.gate().close_after_tokens(1);
    let c = OllamaClient::new(&sim.url(), CONNECT, Duration::from_millis(100)).unwrap();
    let (pieces, result) = stream(&c, &request("mistral", "x")).await;
    assert_eq!(pieces, ["a"]);
    assert_eq!(result, Err(LlmError::Timeout));
    assert!(sim.wait_for(DEADLINE, |s| s.client_closed() == 1).await);
    sim.gate().open();
}

#[tokio::test]
async fn options_reach_ollama_unchanged() {
    let sim = Simulator::start().await.unwrap();
    let options = json!({
        "temperature": 0.7,
        "num_ctx": 4096,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n\n", "User:"],
        "an_option_ollama_rs_does_not_know": {"nested": [1, "two", null, true]}
    });
    let mut req = request("mistral", "x");
    req.options = options.as_object().unwrap().clone();
    req.keep_alive = Some("10m".into());
    let c = client(&sim);
    stream(&c, &req).await.1.unwrap();
    c.chat(&req).await.unwrap();
    for sent in sim.chat_requests() {
        assert_eq!(sent["options"], options);
        assert_eq!(sent["keep_alive"], "10m");
    }
}

#[tokio::test]
async fn version_probe() {
    let sim = Simulator::start().await.unwrap();
    assert_eq!(client(&sim).version().await.unwrap(), "0.12.0");
    let r = &sim.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("GET", "/api/version")
    );
}

#[tokio::test]
async fn model_exists_follows_the_list() {
    let sim = Simulator::start().await.unwrap();
    let c = client(&sim);
    assert!(c.model_exists("mistral").await.unwrap());
    assert!(c.model_exists("mistral:latest").await.unwrap());
    assert!(c.model_exists("llama3").await.unwrap());
    assert!(!c.model_exists("mistral:7b").await.unwrap());
    assert!(!c.model_exists("nope").await.unwrap());
    sim.add_model("phi3:mini");
    assert!(c.model_exists("phi3:mini").await.unwrap());
}

#[tokio::test]
async fn a_path_prefix_is_kept() {
    // The simulator serves at the root, so a prefix yields 404 with Go's text body.
    let sim = Simulator::start().await.unwrap();
    let c = OllamaClient::new(&format!("{}/prefix", sim.url()), CONNECT, REQUEST).unwrap();
    let e = c.chat(&request("mistral", "x")).await.unwrap_err();
    assert_eq!(
        e,
        LlmError::Status {
            status: 404,
            message: "404 page not found".into()
        }
    );
    assert_eq!(sim.requests()[0].path, "/prefix/api/chat");
}

#[tokio::test]
async fn many_calls_reuse_connections() {
    let sim = Simulator::start().await.unwrap();
    let c = client(&sim);
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let req = request("mistral", &format!("m{i}"));
                let mut n = 0;
                let reply = c.chat_stream(&req, &mut |_: &str| n += 1).await.unwrap();
                (i, n, reply.content)
            })
        })
        .collect();
    for call in calls {
        let (i, n, content) = call.await.unwrap();
        assert_eq!(content, format!("echo: m{i}"));
        assert!(n > 0);
    }
    assert!(sim.wait_for(DEADLINE, |s| s.in_flight() == 0).await);
    assert_eq!(sim.completed(), 50);
    assert_eq!(
        sim.client_closed(),
        0,
        "finished streams are read to their end"
    );
}

#[tokio::test]
async fn finished_streams_leave_their_connection_reusable() {
    let sim = Simulator::start().await.unwrap();
    let c = client(&sim);
    for i in 0..20 {
        let (_, reply) = stream(&c, &request("mistral", &format!("m{i}"))).await;
        assert_eq!(reply.unwrap().content, format!("echo: m{i}"));
    }
    // Not necessarily one connection: the pool may race a new one against the return of
    // the idle one. A client whose connections never went back to the pool would need 20.
    assert!(
        sim.connections_accepted() < 20,
        "{}",
        sim.connections_accepted()
    );
    assert_eq!(sim.client_closed(), 0);
}
