//! `botctl chat`: an interactive conversation over the daemon's WebSocket
//! (`/api/v1/ws`): each line of stdin is one turn, its reply streams to stdout as it is
//! generated. The whole session is one conversation (`--conversation`, or a fresh
//! `chat-…` one); `--pool` talks to a pool instead of a bot. An error frame prints its
//! line on stderr and the chat goes on; the exit status is then 1. End of input closes
//! the socket cleanly. With `--json`, every frame is printed as it came.

use std::io::{BufRead, IsTerminal};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::client::{error_from_value, Client, CtlError};
use super::output::{print, print_flush, print_raw};

/// Who the chat talks to.
pub enum Peer {
    Bot(String),
    Pool(String),
}

/// Runs a chat until stdin ends.
pub async fn chat(
    c: &Client,
    json: bool,
    peer: Peer,
    conversation: Option<String>,
) -> Result<(), CtlError> {
    let interactive = std::io::stdin().is_terminal();
    let conversation =
        conversation.unwrap_or_else(|| format!("chat-{}", chrono::Utc::now().timestamp_millis()));
    let mut req = c
        .ws_url()
        .as_str()
        .into_client_request()
        .map_err(|e| CtlError::Usage(format!("--url cannot be used for a WebSocket: {e}")))?;
    if let Some(h) = c.bearer() {
        req.headers_mut().insert("authorization", h);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| refused(e, c.has_token()))?;
    // The `ready` frame (or the error that ends the socket).
    let (_, f) = next_frame(&mut socket).await?;
    if f["type"] != "ready" {
        return Err(frame_error(&f, c.has_token()));
    }
    if interactive {
        eprintln!("botctl: conversation {conversation}; end with Ctrl-D");
    }
    let mut lines = stdin_lines();
    let mut failed = false;
    let mut n = 0u64;
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.recv().await else {
            break;
        };
        let content = line.trim_end_matches(['\r', '\n']);
        if content.trim().is_empty() {
            continue;
        }
        n += 1;
        let id = n.to_string();
        let mut frame = json!({"type": "message", "id": id, "content": content,
                               "conversation": conversation});
        match &peer {
            Peer::Bot(b) => frame["bot"] = b.clone().into(),
            Peer::Pool(p) => frame["pool"] = p.clone().into(),
        }
        socket
            .send(Message::text(frame.to_string()))
            .await
            .map_err(broken)?;
        let mut printed = String::new();
        loop {
            let (t, f) = next_frame(&mut socket).await?;
            if json {
                print_raw(&t);
            }
            if f["id"] != id.as_str() {
                if f["type"] == "error" && f.get("id").is_none() {
                    return Err(frame_error(&f, c.has_token()));
                }
                continue;
            }
            match f["type"].as_str() {
                Some("token") if !json => {
                    let piece = f["content"].as_str().unwrap_or("");
                    printed.push_str(piece);
                    if !print_flush(piece) {
                        return Ok(());
                    }
                }
                Some("reply") => {
                    if !json {
                        if printed.is_empty() {
                            printed = f["reply"]["content"].as_str().unwrap_or("").to_owned();
                            print(&printed);
                        }
                        print("\n");
                    }
                    break;
                }
                Some("error") => {
                    if !json && !printed.is_empty() {
                        print("\n");
                    }
                    let e = frame_error(&f, c.has_token());
                    eprintln!("{}", e.line());
                    failed = true;
                    break;
                }
                _ => {}
            }
        }
    }
    let _ = socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await;
    // Read until the daemon answers the close.
    while let Some(Ok(m)) = socket.next().await {
        if m.is_close() {
            break;
        }
    }
    if failed {
        Err(CtlError::Reported)
    } else {
        Ok(())
    }
}

fn broken(e: WsError) -> CtlError {
    CtlError::Unreachable(format!("the WebSocket broke: {e}"))
}

/// The next text frame as it came and as JSON. The socket's end, or a frame that is not
/// JSON, is an error.
async fn next_frame<S>(socket: &mut S) -> Result<(String, Value), CtlError>
where
    S: futures::Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let Some(m) = socket.next().await else {
            return Err(CtlError::Unreachable(
                "the daemon closed the WebSocket".into(),
            ));
        };
        let Message::Text(t) = m.map_err(broken)? else {
            continue;
        };
        let f = serde_json::from_str(&t).map_err(|_| {
            CtlError::BadResponse("the daemon sent a frame that is not JSON".into())
        })?;
        return Ok((t.to_string(), f));
    }
}

/// Lines of stdin, read on a thread of their own (stdin blocks).
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// An error frame as an API error.
fn frame_error(f: &Value, had_token: bool) -> CtlError {
    error_from_value(0, Some(f), None, had_token)
        .unwrap_or_else(|| CtlError::BadResponse(format!("botd sent an unexpected frame: {f}")))
}

/// A failed upgrade: the daemon's error answer, or why it could not be reached.
fn refused(e: WsError, had_token: bool) -> CtlError {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok());
            error_from_value(status, body.as_ref(), None, had_token).unwrap_or_else(|| {
                CtlError::BadResponse(format!("the WebSocket upgrade was answered {status}"))
            })
        }
        other => CtlError::Unreachable(format!("cannot open the WebSocket: {other}")),
    }
}
