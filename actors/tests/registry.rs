//! The engine without HTTP: Registry, Bot, LlmPool and Store actors against the simulator.

use std::time::{Duration, Instant};

use actix::prelude::*;
use botd_actors::llm::pool::LlmService;
use botd_actors::model::{BotSpec, BotState, Inbound, RestartPolicy, Target};
use botd_actors::names::{BotName, Conversation, ModelName};
use botd_actors::registry::{CreateBot, Registry, RegistryHandle};
use botd_actors::settings::{LlmSettings, SupervisorSettings};
use botd_actors::store::queries::{self, MessageScope};
use botd_actors::store::testing::TestDb;
use botd_actors::store::{Db, StoreHandle};
use ollama_sim::Simulator;
use tokio_util::sync::CancellationToken;

struct Engine {
    registry: RegistryHandle,
    store: StoreHandle,
    sim: Simulator,
    _db: TestDb,
}

async fn engine() -> Engine {
    let sim = Simulator::start().await.unwrap();
    let db = TestDb::sqlite();
    let d = Db::connect(db.url(), 2, "normal").unwrap();
    d.run_migrations().unwrap();
    let store = StoreHandle::start(d);
    let llm = LlmService::start(&LlmSettings {
        ollama_url: sim.url(),
        ..LlmSettings::default()
    })
    .unwrap();
    let arbiters = vec![Arbiter::new().handle(), Arbiter::new().handle()];
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let registry = Registry::new(
        store.clone(),
        llm,
        SupervisorSettings::default(),
        arbiters,
        log,
    )
    .start();
    Engine {
        registry: RegistryHandle::new(registry),
        store,
        sim,
        _db: db,
    }
}

fn spec(name: &str, concurrency: u32) -> BotSpec {
    BotSpec {
        name: BotName::parse(name).unwrap(),
        model: ModelName::parse("mistral").unwrap(),
        system_prompt: Some("Be kind.".into()),
        pool: None,
        restart: RestartPolicy::Permanent,
        concurrency,
        mailbox_capacity: 16,
        context_messages: 10,
        options: serde_json::Map::new(),
    }
}

fn inbound(bot: &str, content: &str, conversation: &str) -> Inbound {
    Inbound {
        target: Target::Bot(BotName::parse(bot).unwrap()),
        content: content.into(),
        conversation: Conversation::parse(conversation).unwrap(),
        priority: 2,
        deadline: Instant::now() + Duration::from_secs(30),
        cancel: CancellationToken::new(),
        tokens: None,
        received: Instant::now(),
    }
}

#[actix::test]
async fn the_registry_creates_starts_routes_and_stops_a_bot() {
    let e = engine().await;
    let info = e
        .registry
        .create(CreateBot {
            spec: spec("b", 2),
            managed: false,
            autostart: false,
            subject: "test".into(),
        })
        .await
        .unwrap();
    assert_eq!(info.state, BotState::Stopped);
    let err = e
        .registry
        .send(inbound("b", "hi", "c"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "bot_not_running");
    let info = e
        .registry
        .start(BotName::parse("b").unwrap(), "test".into())
        .await
        .unwrap();
    assert_eq!(info.state, BotState::Running);

    let answer = e
        .registry
        .send(inbound("b", "hello", "c"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(answer.reply, "echo: hello");
    let rows = e
        .store
        .read(|c| queries::history(c, &MessageScope::Bot("b".into()), None, None, 10))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].id, answer.id);
    assert_eq!(rows[0].id, answer.reply_id);
    // The model saw the system prompt first.
    let req = e.sim.chat_requests().pop().unwrap();
    assert_eq!(req["messages"][0]["role"], "system");

    let info = e
        .registry
        .stop(BotName::parse("b").unwrap(), None, "test".into())
        .await
        .unwrap();
    assert_eq!(info.state, BotState::Stopped);
    let list = e.registry.list(None, None).await.unwrap();
    assert_eq!(list.len(), 1);
    let counts = e.registry.counts().await.unwrap();
    assert_eq!(counts["stopped"], 1);
}

#[actix::test]
async fn a_bot_runs_up_to_concurrency_but_never_two_turns_of_one_conversation() {
    let e = engine().await;
    e.registry
        .create(CreateBot {
            spec: spec("b", 3),
            managed: false,
            autostart: true,
            subject: "test".into(),
        })
        .await
        .unwrap();
    let gate = e.sim.gate();
    gate.close();
    let mut tickets = Vec::new();
    for (text, conv) in [
        ("a1", "a"),
        ("a2", "a"),
        ("b1", "b"),
        ("c1", "c"),
        ("d1", "d"),
    ] {
        tickets.push(e.registry.send(inbound("b", text, conv)).await.unwrap());
    }
    assert!(
        e.sim
            .wait_for(Duration::from_secs(10), |s| s.in_flight() == 3)
            .await
    );
    let mut seen: Vec<String> = e
        .sim
        .chat_requests()
        .iter()
        .map(|r| {
            r["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // a2 waits for a1; the next free conversations fill the other two slots (they run
    // at once, so their arrival order is not fixed).
    seen.sort();
    assert_eq!(seen, vec!["a1", "b1", "c1"]);
    gate.open();
    let mut replies = Vec::new();
    for t in tickets {
        replies.push(t.wait().await.unwrap().reply);
    }
    assert_eq!(
        replies,
        vec!["echo: a1", "echo: a2", "echo: b1", "echo: c1", "echo: d1"]
    );
    assert!(e.sim.peak_in_flight() <= 3);
    // a2's context holds a1's complete exchange.
    let a2 = e
        .sim
        .chat_requests()
        .into_iter()
        .find(|r| r["messages"].as_array().unwrap().last().unwrap()["content"] == "a2")
        .unwrap();
    let contents: Vec<&str> = a2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, vec!["Be kind.", "a1", "echo: a1", "a2"]);
}

#[actix::test]
async fn a_dropped_ticket_withdraws_its_waiting_message_as_cancelled() {
    let e = engine().await;
    e.registry
        .create(CreateBot {
            spec: spec("b", 1),
            managed: false,
            autostart: true,
            subject: "test".into(),
        })
        .await
        .unwrap();
    let gate = e.sim.gate();
    gate.close();
    let first = e.registry.send(inbound("b", "first", "a")).await.unwrap();
    assert!(
        e.sim
            .wait_for(Duration::from_secs(10), |s| s.in_flight() == 1)
            .await
    );
    let second = e.registry.send(inbound("b", "second", "b")).await.unwrap();
    drop(second);
    gate.open();
    first.wait().await.unwrap();
    e.store.flush_detached().await.unwrap();
    let rows = e
        .store
        .read(|c| queries::history(c, &MessageScope::Bot("b".into()), Some("b"), None, 10))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].content.as_str(), rows[0].status.as_str()),
        ("second", "cancelled")
    );
    assert_eq!(
        e.sim.chat_requests().len(),
        1,
        "the withdrawn message never reached the model"
    );
}
