//! The floor: the least a server can do to fan one event out to a room. It speaks just enough
//! graphql-transport-ws (init/ack, subscribe to one room, `next`), the legacy /ws room frames,
//! and the `sendMessage`/`joinRoom` mutations and `POST /api/publish` over HTTP, so the same
//! generator drives it. Each event is serialized once into a frame for subscription id "1"
//! (what the generator uses) and that one frame is handed to every member through a
//! `tokio::sync::broadcast` per room; a subscriber with another id gets its own frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;

#[derive(Clone, Debug, Args)]
pub struct FloorArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:8100")]
    pub bind: SocketAddr,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Broadcast buffer per room (frames).
    #[arg(long, default_value_t = 4096)]
    pub buffer: usize,
}

/// One event as it goes out: the shared graphql-ws frame (id "1") and the legacy frame.
#[derive(Clone)]
struct Event {
    gql: Utf8Bytes,
    legacy: Utf8Bytes,
    payload: Arc<str>,
}

#[derive(Clone, Default)]
struct Floor {
    rooms: Arc<Mutex<HashMap<String, broadcast::Sender<Event>>>>,
    next_id: Arc<AtomicU64>,
    buffer: usize,
}

impl Floor {
    fn room(&self, room: &str) -> broadcast::Sender<Event> {
        let mut rooms = self.rooms.lock().expect("rooms");
        rooms
            .entry(room.to_owned())
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .clone()
    }

    fn publish(&self, room: &str, field: &str, body: &Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let payload: Arc<str> = match field {
            "events" => json!({"data": {"events": {"data": body}}}).to_string(),
            _ => {
                json!({"data": {"messageAdded": {"id": id.to_string(), "body": body}}}).to_string()
            }
        }
        .into();
        let gql = format!(r#"{{"id":"1","type":"next","payload":{payload}}}"#);
        let legacy =
            json!({"type":"message","id": id.to_string(),"room": room,"text": body}).to_string();
        let _ = self.room(room).send(Event {
            gql: gql.into(),
            legacy: legacy.into(),
            payload,
        });
    }
}

/// Serves until killed.
pub async fn serve(args: FloorArgs) -> anyhow::Result<()> {
    if !args.bind.ip().is_loopback() {
        anyhow::bail!("the floor listens on loopback only");
    }
    let floor = Floor {
        buffer: args.buffer,
        ..Default::default()
    };
    let app = router(floor);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(args.bind)?;
    let listener = socket.listen(4096)?;
    println!("floor listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

fn router(floor: Floor) -> Router {
    Router::new()
        .route("/graphql", get(gql_upgrade).post(graphql_http))
        .route("/ws", get(legacy_upgrade))
        .route("/api/publish", post(api_publish))
        .with_state(floor)
}

fn small(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
}

async fn gql_upgrade(State(floor): State<Floor>, ws: WebSocketUpgrade) -> impl IntoResponse {
    small(ws)
        .protocols(["graphql-transport-ws"])
        .on_upgrade(move |socket| connection(floor, socket, false))
}

async fn legacy_upgrade(State(floor): State<Floor>, ws: WebSocketUpgrade) -> impl IntoResponse {
    small(ws).on_upgrade(move |socket| connection(floor, socket, true))
}

async fn next_event(rx: &mut Option<broadcast::Receiver<Event>>) -> Option<Event> {
    match rx {
        Some(rx) => loop {
            match rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        },
        None => std::future::pending().await,
    }
}

fn frame_for(event: &Event, legacy: bool, sub_id: &str) -> Message {
    if legacy {
        Message::Text(event.legacy.clone())
    } else if sub_id == "1" {
        Message::Text(event.gql.clone())
    } else {
        let id = Value::String(sub_id.to_owned());
        Message::text(format!(
            r#"{{"id":{id},"type":"next","payload":{}}}"#,
            event.payload
        ))
    }
}

async fn connection(floor: Floor, mut socket: WebSocket, legacy: bool) {
    let mut rx: Option<broadcast::Receiver<Event>> = None;
    let mut sub_id = String::from("1");
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { return };
                let reply = handle(&floor, &v, legacy, &mut rx, &mut sub_id);
                if let Some(reply) = reply {
                    if socket.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
            }
            event = next_event(&mut rx) => {
                let Some(event) = event else { return };
                if socket.feed(frame_for(&event, legacy, &sub_id)).await.is_err() {
                    return;
                }
                // Write what else is queued before one flush.
                if let Some(r) = rx.as_mut() {
                    while let Ok(e) = r.try_recv() {
                        if socket.feed(frame_for(&e, legacy, &sub_id)).await.is_err() {
                            return;
                        }
                    }
                }
                if socket.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn handle(
    floor: &Floor,
    v: &Value,
    legacy: bool,
    rx: &mut Option<broadcast::Receiver<Event>>,
    sub_id: &mut String,
) -> Option<String> {
    let kind = v.get("type")?.as_str()?;
    if legacy {
        let room = v.get("room").and_then(Value::as_str).unwrap_or("general");
        match kind {
            "join_room" => {
                *rx = Some(floor.room(room).subscribe());
                Some(json!({"type":"joined_room","data":{"room": room}}).to_string())
            }
            "message" => {
                let text = v.get("text").cloned().unwrap_or(Value::Null);
                floor.publish(room, "messageAdded", &text);
                None
            }
            "ping" => Some(r#"{"type":"pong"}"#.to_owned()),
            _ => None,
        }
    } else {
        match kind {
            "connection_init" => Some(r#"{"type":"connection_ack"}"#.to_owned()),
            "ping" => Some(r#"{"type":"pong"}"#.to_owned()),
            "subscribe" => {
                let vars = v.pointer("/payload/variables");
                let room = vars
                    .and_then(|x| x.get("r"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| {
                        vars.and_then(|x| x.pointer("/c/0"))
                            .and_then(Value::as_str)
                            .map(|c| c.trim_start_matches("public:").to_owned())
                    })?;
                *sub_id = v
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("1")
                    .to_owned();
                *rx = Some(floor.room(&room).subscribe());
                None
            }
            _ => None,
        }
    }
}

/// `joinRoom` (accepted, no membership kept) and `sendMessage` (published).
async fn graphql_http(State(floor): State<Floor>, Json(v): Json<Value>) -> Json<Value> {
    let query = v.get("query").and_then(Value::as_str).unwrap_or("");
    let vars = v.get("variables").cloned().unwrap_or(Value::Null);
    let room = vars.get("r").and_then(Value::as_str).unwrap_or("general");
    if query.contains("sendMessage") {
        let body = vars.get("b").cloned().unwrap_or(Value::Null);
        floor.publish(room, "messageAdded", &body);
        Json(json!({"data": {"sendMessage": {"id": "0"}}}))
    } else {
        Json(json!({"data": {"joinRoom": {"id": room}}}))
    }
}

async fn api_publish(State(floor): State<Floor>, Json(v): Json<Value>) -> Json<Value> {
    let channel = v.get("channel").and_then(Value::as_str).unwrap_or("");
    let room = channel.trim_start_matches("public:");
    let data = v.get("data").cloned().unwrap_or(Value::Null);
    floor.publish(room, "events", &data);
    Json(json!({"ok": true}))
}
