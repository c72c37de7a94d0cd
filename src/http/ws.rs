//! GraphQL over WebSocket at `GET /graphql`, in both subprotocols: `graphql-transport-ws`
//! (graphql-ws, current) and `graphql-ws` (subscriptions-transport-ws, legacy).
//!
//! async-graphql executes; this loop is ours because the built-in one does not meet the
//! graphql-transport-ws protocol's close codes (4400, 4401, 4403, 4408, 4409, 4429). Each
//! connection is a reader (this task) and a writer task joined by a bounded queue of frames
//! (`socket.rs`); operations run as tasks the connection owns and hand the writer finished
//! frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::Request;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::Query;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::cohort;
use super::socket::{self, End, Outbox, SocketWriter, UserWatch};
use super::AppState;
use crate::auth::{bearer, Viewer};
use crate::domain::presence::PresenceGuard;
use crate::domain::DomainError;
use crate::graphql::errors::{is_request_error, stamp_codes};
use crate::graphql::SocketConnection;
use crate::metrics::Transport;

pub use super::socket::Connections;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// `graphql-transport-ws`
    Transport,
    /// `graphql-ws`
    Legacy,
}

/// `GET /graphql` with `Upgrade: websocket`.
pub async fn upgrade(
    state: AppState,
    headers: HeaderMap,
    query: Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws.protocols(["graphql-transport-ws", "graphql-ws"]);
    let protocol = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some("graphql-ws") => Protocol::Legacy,
        _ => Protocol::Transport,
    };
    // Browsers cannot set headers on a WebSocket: `?token=` stands in for Authorization.
    let upgrade_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned)
        .or_else(|| query.get("token").cloned());
    let max = state.config.max_frame_bytes;
    // The connection runs as a task of its own, so axum's upgrade task (and what it holds) ends.
    socket::sized(ws, max).on_upgrade(move |socket| async move {
        tokio::spawn(run(socket, state, protocol, upgrade_token));
    })
}

/// A GET that is not an upgrade.
pub fn not_an_upgrade() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "POST GraphQL requests to /graphql, or open a WebSocket (graphql-transport-ws) for subscriptions",
    )
        .into_response()
}

/// The operations running on one connection.
type Operations = Arc<Mutex<OpTable>>;

/// The operations running on one connection, by client id, each with the number `start` gave
/// it (so a finished operation frees only its own id, never a successor's). A connection runs
/// few, so a list: a map would allocate a table for every connection.
#[derive(Default)]
struct OpTable(Vec<(String, u64, Running)>);

impl OpTable {
    fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|(i, _, _)| i == id)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn insert(&mut self, id: String, seq: u64, running: Running) {
        if self.0.len() == self.0.capacity() {
            self.0.reserve_exact(1);
        }
        self.0.push((id, seq, running));
    }

    /// Removes `id`'s operation (only if it is number `seq`, when given).
    fn remove(&mut self, id: &str, seq: Option<u64>) -> Option<Running> {
        let at = self
            .0
            .iter()
            .position(|(i, s, _)| i == id && seq.is_none_or(|seq| *s == seq))?;
        let (_, _, running) = self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(running)
    }

    /// Puts `running` in place of operation `id` number `seq`, handing back what it replaced;
    /// hands `running` back when that operation is no longer there.
    fn replace(&mut self, id: &str, seq: u64, running: Running) -> Running {
        match self.0.iter_mut().find(|(i, s, _)| i == id && *s == seq) {
            Some((_, _, current)) => std::mem::replace(current, running),
            None => running,
        }
    }
}

/// How an operation runs.
enum Running {
    /// A task of its own (queries, mutations, subscriptions that cannot share).
    Task(AbortHandle),
    /// A member of a cohort: no task; dropping the membership leaves the cohort.
    Member(cohort::Membership),
}

impl Running {
    fn stop(self) {
        match self {
            Running::Task(handle) => handle.abort(),
            Running::Member(membership) => drop(membership),
        }
    }
}

struct Connection {
    state: AppState,
    protocol: Protocol,
    id: u64,
    upgrade_token: Option<String>,
    out: Outbox,
    init_received: bool,
    viewer: Option<Viewer>,
    operations: Operations,
    tasks: JoinSet<()>,
    next_op: u64,
    _presence: Option<PresenceGuard>,
    /// Set once signed in: cancelled when an admin disconnects the user.
    watch: Option<UserWatch>,
}

async fn run(
    socket: WebSocket,
    state: AppState,
    protocol: Protocol,
    upgrade_token: Option<String>,
) {
    let ticket = state.connections.open(Transport::GraphqlWs);
    let (writer, out, stream) = SocketWriter::start(
        socket,
        state.config.ws_queue,
        state.config.slow_consumer_timeout,
        Transport::GraphqlWs,
    );
    let mut conn = Connection {
        state: state.clone(),
        protocol,
        id: ticket.id,
        upgrade_token,
        out,
        init_received: false,
        viewer: None,
        operations: Arc::default(),
        tasks: JoinSet::new(),
        next_op: 0,
        _presence: None,
        watch: None,
    };
    let end = conn.read_loop(stream).await;
    // Stop every operation, then close: their frames already queued are written first.
    conn.tasks.abort_all();
    let typing_connection = conn.id;
    drop(conn);
    match &end {
        End::Gone => tracing::debug!(
            connection = typing_connection,
            "WebSocket closed by the peer"
        ),
        End::Close(code, reason) | End::CloseNow(code, reason) => {
            tracing::debug!(
                connection = typing_connection,
                code,
                reason,
                "closing WebSocket"
            )
        }
    }
    Box::pin(writer.finish(end)).await;
    state.domain.typing.connection_closed(typing_connection);
    drop(ticket);
}

impl Connection {
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> End {
        let config = self.state.config.clone();
        let mut last_heard = Instant::now();
        let mut deadlines = socket::Deadlines {
            ping: Instant::now() + config.ws_ping_interval,
            init: Some(Instant::now() + config.ws_init_timeout),
            expires: None,
        };
        let timer = tokio::time::sleep_until(deadlines.next());
        tokio::pin!(timer);
        let shutdown = self.state.shutdown.clone();
        let out = self.out.clone();
        loop {
            tokio::select! {
                frame = stream.next() => {
                    last_heard = Instant::now();
                    let end = match frame {
                        None => Some(End::Gone),
                        // Boxed: the handlers' database calls make large futures, which would
                        // otherwise stay part of every idle connection's read loop.
                        Some(Ok(Message::Text(text))) => Box::pin(self.on_text(text.as_str())).await,
                        Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                            Ok(text) => Box::pin(self.on_text(text)).await,
                            Err(_) => Some(End::Close(4400, "Invalid message received".into())),
                        },
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                        Some(Ok(Message::Close(_))) => Some(End::Gone),
                        Some(Err(e)) => Some(socket::read_error(e)),
                    };
                    if let Some(end) = end {
                        return end;
                    }
                    if self.init_received && deadlines.init.take().is_some() {
                        deadlines.expires = socket::token_expiry(self.viewer.as_ref());
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if deadlines.init.is_some_and(|at| at <= now) {
                        return End::Close(4408, "Connection initialisation timeout".into());
                    }
                    if deadlines.expires.is_some_and(|at| at <= now) {
                        return End::Close(4403, "token expired".into());
                    }
                    if deadlines.ping <= now {
                        deadlines.ping = now + config.ws_ping_interval;
                        if last_heard.elapsed() > config.ws_idle_timeout {
                            return End::Close(1001, "ping timeout".into());
                        }
                        let keepalive = match self.protocol {
                            Protocol::Transport => Some(json!({ "type": "ping" })),
                            Protocol::Legacy if self.viewer.is_some() => Some(json!({ "type": "ka" })),
                            Protocol::Legacy => None,
                        };
                        if let Some(k) = keepalive {
                            self.send(&k);
                        }
                        // A WebSocket ping too: browsers answer it without any code of ours.
                        self.out.offer(Message::Ping(Default::default()));
                    }
                }
                _ = shutdown.cancelled() => {
                    return End::Close(1001, "server shutting down".into());
                }
                attention = out.attention() => return attention.end(4403),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
            deadlines.arm(timer.as_mut());
        }
    }

    /// Queues a control-plane frame; one that does not fit is dropped (the peer is not reading).
    fn send(&self, value: &Value) {
        self.out
            .offer(Message::Text(Utf8Bytes::from(value.to_string())));
    }

    async fn on_text(&mut self, text: &str) -> Option<End> {
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return Some(End::Close(4400, "Invalid message received".into()));
        };
        let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
        let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
        let payload = message.get("payload").cloned().unwrap_or(Value::Null);
        match (self.protocol, kind) {
            (_, "connection_init") => self.on_init(&payload).await,
            (Protocol::Transport, "ping") => {
                let mut pong = json!({ "type": "pong" });
                if !payload.is_null() {
                    pong["payload"] = payload;
                }
                self.send(&pong);
                None
            }
            (Protocol::Transport, "pong") => None,
            (Protocol::Transport, "subscribe") | (Protocol::Legacy, "start") => {
                if self.viewer.is_none() {
                    return match self.protocol {
                        Protocol::Transport => Some(End::Close(4401, "Unauthorized".into())),
                        Protocol::Legacy => {
                            self.send(&json!({ "type": "error", "id": id,
                                "payload": { "message": "send connection_init first" } }));
                            None
                        }
                    };
                }
                let Some(id) = id.filter(|id| !id.is_empty()) else {
                    return self.invalid("subscribe needs an id");
                };
                // The query may be absent when a persisted query's hash stands for it.
                let Ok(request) = serde_json::from_value::<Request>(payload.clone()) else {
                    return self.invalid("subscribe needs a payload with a query");
                };
                if request.query.is_empty() && !request.extensions.contains_key("persistedQuery") {
                    return self.invalid("subscribe needs a payload with a query");
                }
                if self.lock_ops().contains(&id) {
                    return match self.protocol {
                        Protocol::Transport => Some(End::Close(
                            4409,
                            format!("Subscriber for {id} already exists"),
                        )),
                        // subscriptions-transport-ws replaces an operation started again.
                        Protocol::Legacy => {
                            self.stop(&id);
                            self.start(id, request);
                            None
                        }
                    };
                }
                let max = self.state.config.max_subscriptions;
                if self.lock_ops().len() >= max {
                    let message = format!("at most {max} operations at once on one connection");
                    self.send(&json!({ "id": id, "type": "error", "payload": [
                        { "message": message, "extensions": { "code": "RATE_LIMITED" } }
                    ] }));
                    return None;
                }
                self.start(id, request);
                None
            }
            (Protocol::Transport, "complete") | (Protocol::Legacy, "stop") => {
                if let Some(id) = id {
                    self.stop(&id);
                }
                None
            }
            (Protocol::Legacy, "connection_terminate") => {
                Some(End::Close(1000, "terminated".into()))
            }
            (_, other) => {
                let what = if other.is_empty() {
                    "message without a type".to_owned()
                } else {
                    format!("unknown message type {other:?}")
                };
                self.invalid(&what)
            }
        }
    }

    /// A well-formed JSON message this protocol does not allow: graphql-transport-ws closes with
    /// 4400, the legacy protocol answers with an error and stays open.
    fn invalid(&self, what: &str) -> Option<End> {
        match self.protocol {
            Protocol::Transport => Some(End::Close(
                4400,
                format!("Invalid message received: {what}"),
            )),
            Protocol::Legacy => {
                self.send(&json!({ "type": "error", "payload": { "message": what } }));
                None
            }
        }
    }

    async fn on_init(&mut self, payload: &Value) -> Option<End> {
        if self.init_received {
            return Some(End::Close(4429, "Too many initialisation requests".into()));
        }
        self.init_received = true;
        let token = token_from_init(payload).or_else(|| self.upgrade_token.clone());
        let (viewer, user) = match token {
            None => (Viewer::Anonymous, None),
            Some(token) => match self.state.domain.sign_in(&token).await {
                Ok(signed_in) => (signed_in.viewer, Some(signed_in.user)),
                Err(e) => {
                    tracing::debug!(error = %e, "connection_init refused");
                    if self.protocol == Protocol::Legacy {
                        self.send(&json!({ "type": "connection_error",
                            "payload": { "message": e.to_string() } }));
                    }
                    return Some(End::Close(4403, "Forbidden".into()));
                }
            },
        };
        if let Some(user) = &user {
            match self.state.domain.open_connection(user).await {
                Ok(guard) => self._presence = Some(guard),
                Err(DomainError::TooManyConnections) => {
                    return Some(End::Close(1008, "too many connections".into()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence: could not count a connection");
                    return Some(End::Close(4500, "Internal error".into()));
                }
            }
            self.watch = Some(
                self.state
                    .connections
                    .watch_user(&user.id, self.id, &self.out),
            );
        }
        self.viewer = Some(viewer);
        self.send(&json!({ "type": "connection_ack" }));
        None
    }

    fn lock_ops(&self) -> std::sync::MutexGuard<'_, OpTable> {
        lock_operations(&self.operations)
    }

    fn stop(&mut self, id: &str) {
        let removed = self.lock_ops().remove(id, None);
        if let Some(running) = removed {
            running.stop();
        }
    }

    fn start(&mut self, id: String, request: Request) {
        let viewer = self.viewer.clone().unwrap_or(Viewer::Anonymous);
        self.next_op += 1;
        let op = Operation {
            id: id.clone(),
            seq: self.next_op,
            protocol: self.protocol,
            out: self.out.clone(),
            operations: self.operations.clone(),
        };
        let schema = self.state.schema.clone();
        let handle = match cohort::shareable(&request) {
            Some(shareable) => {
                let state = self.state.clone();
                self.tasks.spawn(op.join_cohort(state, viewer, shareable))
            }
            None => {
                let request = request.data(viewer).data(SocketConnection(self.id));
                self.tasks.spawn(op.run(schema, request))
            }
        };
        self.lock_ops()
            .insert(id, self.next_op, Running::Task(handle));
    }
}

fn lock_operations(operations: &Mutex<OpTable>) -> std::sync::MutexGuard<'_, OpTable> {
    operations.lock().unwrap_or_else(|p| p.into_inner())
}

/// One running operation: it executes, and hands finished frames to the writer.
struct Operation {
    id: String,
    seq: u64,
    protocol: Protocol,
    out: Outbox,
    operations: Operations,
}

impl Operation {
    async fn run(self, schema: crate::graphql::TidingsSchema, request: Request) {
        let mut stream = schema.execute_stream(request);
        let mut first = true;
        while let Some(mut response) = stream.next().await {
            stamp_codes(&mut response);
            if first && is_request_error(&response) {
                // Validation failed: `error` ends the operation (no `complete` follows).
                self.finish();
                let frame = json!({ "id": self.id, "type": "error", "payload": response.errors });
                self.push(frame).await;
                return;
            }
            first = false;
            let kind = match self.protocol {
                Protocol::Transport => "next",
                Protocol::Legacy => "data",
            };
            if !self
                .push(json!({ "id": self.id, "type": kind, "payload": response }))
                .await
            {
                return;
            }
        }
        // Free the id before `complete` goes out, so a client that reuses it at once is not
        // refused as a duplicate.
        self.finish();
        self.push(json!({ "id": self.id, "type": "complete" }))
            .await;
    }

    /// Joins the cohort of equal subscriptions (one execution for all) and hands the
    /// membership to the connection: the task ends there, and the cohort queues the member's
    /// frames and, when it ends, its `complete`.
    async fn join_cohort(self, state: AppState, viewer: Viewer, shareable: cohort::Shareable) {
        let data_type = match self.protocol {
            Protocol::Transport => "next",
            Protocol::Legacy => "data",
        };
        let field = shareable.field();
        let joined = state
            .cohorts
            .join(
                &state.schema,
                &state.domain,
                &viewer,
                shareable,
                cohort::Seat {
                    op_id: &self.id,
                    data_type,
                    outbox: self.out.clone(),
                    on_end: self.on_cohort_end(),
                },
            )
            .await;
        match joined {
            Ok(membership) => {
                // Replaces this task's handle. Stopped meanwhile (or the cohort already ended):
                // the membership comes back and is dropped, leaving the cohort.
                let replaced = lock_operations(&self.operations).replace(
                    &self.id,
                    self.seq,
                    Running::Member(membership),
                );
                drop(replaced);
            }
            Err(e) => {
                let frame = cohort::refusal(&self.id, data_type, field, &e);
                self.out.push(frame, None).await;
                self.finish();
                self.push(json!({ "id": self.id, "type": "complete" }))
                    .await;
            }
        }
    }

    /// What the cohort does when it ends for this member: free the id (dropping the
    /// membership), then queue `complete`. It holds the connection's operations weakly, so a
    /// closed connection is not kept alive by its cohorts.
    fn on_cohort_end(&self) -> cohort::OnEnd {
        let operations = Arc::downgrade(&self.operations);
        let id = self.id.clone();
        let seq = self.seq;
        let out = self.out.clone();
        Box::new(move || {
            let Some(operations) = operations.upgrade() else {
                return;
            };
            let removed = lock_operations(&operations).remove(&id, Some(seq));
            drop(removed);
            out.try_push(json!({ "id": id, "type": "complete" }).to_string(), None);
        })
    }

    fn finish(&self) {
        let removed = lock_operations(&self.operations).remove(&self.id, Some(self.seq));
        drop(removed);
    }

    /// Queues a frame, waiting a bounded time for room; false when the connection is ending.
    async fn push(&self, frame: Value) -> bool {
        self.out.push(frame.to_string(), None).await
    }
}

/// The token a `connection_init` payload carries, in any of the shapes clients use.
pub(crate) fn token_from_init(payload: &Value) -> Option<String> {
    let raw = |v: &Value| -> Option<String> {
        let s = v.as_str()?.trim();
        let token = bearer(s).unwrap_or(s);
        (!token.is_empty()).then(|| token.to_owned())
    };
    for key in ["authToken", "token", "Authorization", "authorization"] {
        if let Some(t) = payload.get(key).and_then(raw) {
            return Some(t);
        }
    }
    let headers = payload.get("headers")?;
    ["Authorization", "authorization"]
        .iter()
        .find_map(|k| headers.get(*k).and_then(raw))
}
