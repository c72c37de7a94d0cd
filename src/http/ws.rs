//! GraphQL over WebSocket at `GET /graphql`, in both subprotocols: `graphql-transport-ws`
//! (graphql-ws, current) and `graphql-ws` (subscriptions-transport-ws, legacy).
//!
//! async-graphql executes; this protocol is ours because the built-in one does not meet the
//! graphql-transport-ws protocol's close codes (4400, 4401, 4403, 4408, 4409, 4429). The
//! connection itself (sign-in, keep-alive, queue, close) is the shared skeleton of
//! `socket.rs`; operations run as tasks the connection owns and hand the writer finished
//! frames.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::Request;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::task::{AbortHandle, JoinSet};

use super::socket::{self, Closes, End, Link, Outbox, Refused, SubscriptionSlot};
use super::websocket::{Frame, Upgrade};
use super::AppState;
use super::{cohort, renewal};
use crate::auth::{bearer, ClientAddress, Viewer};
use crate::graphql::errors::{is_request_error, stamp_codes};
use crate::graphql::SocketConnection;
use crate::metrics::Transport;

pub use super::socket::Connections;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subprotocol {
    /// `graphql-transport-ws`
    Transport,
    /// `graphql-ws`
    Legacy,
}

/// `GET /graphql` with `Upgrade: websocket`.
pub(crate) async fn upgrade(
    state: AppState,
    headers: HeaderMap,
    query: Query<HashMap<String, String>>,
    client: Option<ClientAddress>,
    ws: Upgrade,
) -> Response {
    let ws = ws.protocols(&["graphql-transport-ws", "graphql-ws"]);
    let subprotocol = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some("graphql-ws") => Subprotocol::Legacy,
        _ => Subprotocol::Transport,
    };
    let upgrade_token = socket::upgrade_token(&headers, &query);
    // Signed in by `connection_init`, after the upgrade, whatever the upgrade carries.
    socket::accept::<Connection>(
        ws,
        state,
        &headers,
        false,
        (subprotocol, upgrade_token, client),
    )
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
/// it (so a finished operation frees only its own id, never a successor's) and its place in
/// the user's subscription budget (given back with the operation). A connection runs few, so
/// a list: a map would allocate a table for every connection.
#[derive(Default)]
struct OpTable(Vec<(String, u64, Running, Option<SubscriptionSlot>)>);

impl OpTable {
    fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|(i, ..)| i == id)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn insert(&mut self, id: String, seq: u64, running: Running, slot: Option<SubscriptionSlot>) {
        if self.0.len() == self.0.capacity() {
            self.0.reserve_exact(1);
        }
        self.0.push((id, seq, running, slot));
    }

    /// Removes `id`'s operation (only if it is number `seq`, when given).
    fn remove(&mut self, id: &str, seq: Option<u64>) -> Option<Running> {
        let at = self
            .0
            .iter()
            .position(|(i, s, ..)| i == id && seq.is_none_or(|seq| *s == seq))?;
        let (_, _, running, _slot) = self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(running)
    }

    /// Puts `running` in place of operation `id` number `seq`, handing back what it replaced;
    /// hands `running` back when that operation is no longer there.
    fn replace(&mut self, id: &str, seq: u64, running: Running) -> Running {
        match self.0.iter_mut().find(|(i, s, ..)| i == id && *s == seq) {
            Some((_, _, current, _)) => std::mem::replace(current, running),
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

/// One graphql-ws connection's own state: its subprotocol and operations.
struct Connection {
    subprotocol: Subprotocol,
    upgrade_token: Option<String>,
    /// Where the connection comes from: its operations' sign-ins count against it.
    client: Option<ClientAddress>,
    operations: Operations,
    /// The operations that run as tasks of their own (and cohort members' joins), while any
    /// runs: an idle connection keeps no set.
    tasks: Option<JoinSet<()>>,
    next_op: u64,
}

impl socket::Protocol for Connection {
    type Opening = (Subprotocol, Option<String>, Option<ClientAddress>);
    const TRANSPORT: Transport = Transport::GraphqlWs;
    const CLOSES: Closes = Closes {
        unauthorised: (4403, "Forbidden"),
        internal: 4500,
        init_timeout: Some((4408, "Connection initialisation timeout")),
    };
    const NOT_TEXT: (u16, &'static str) = (4400, "Invalid message received");

    async fn open(
        _link: &mut Link,
        (subprotocol, upgrade_token, client): Self::Opening,
    ) -> Result<Self, End> {
        Ok(Connection {
            subprotocol,
            upgrade_token,
            client,
            operations: Arc::default(),
            tasks: None,
            next_op: 0,
        })
    }

    async fn on_text(&mut self, link: &mut Link, text: &str) -> Option<End> {
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return Some(End::Close(4400, "Invalid message received".into()));
        };
        let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
        let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
        let payload = message.get("payload").cloned().unwrap_or(Value::Null);
        let out = &link.out;
        match (self.subprotocol, kind) {
            (_, "connection_init") => self.on_init(link, &payload).await,
            (Subprotocol::Transport, "ping") => {
                let mut pong = json!({ "type": "pong" });
                if !payload.is_null() {
                    pong["payload"] = payload;
                }
                send(out, &pong);
                None
            }
            (Subprotocol::Transport, "pong") => None,
            (Subprotocol::Transport, "subscribe") | (Subprotocol::Legacy, "start") => {
                if link.viewer().is_none() {
                    return match self.subprotocol {
                        Subprotocol::Transport => Some(End::Close(4401, "Unauthorized".into())),
                        Subprotocol::Legacy => {
                            send(
                                out,
                                &json!({ "type": "error", "id": id,
                                "payload": { "message": "send connection_init first" } }),
                            );
                            None
                        }
                    };
                }
                let Some(id) = id.filter(|id| !id.is_empty()) else {
                    return self.invalid(out, "subscribe needs an id");
                };
                // The query may be absent when a persisted query's hash stands for it.
                let Ok(request) = serde_json::from_value::<Request>(payload.clone()) else {
                    return self.invalid(out, "subscribe needs a payload with a query");
                };
                if request.query.is_empty() && !request.extensions.contains_key("persistedQuery") {
                    return self.invalid(out, "subscribe needs a payload with a query");
                }
                if self.lock_ops().contains(&id) {
                    return match self.subprotocol {
                        Subprotocol::Transport => Some(End::Close(
                            4409,
                            format!("Subscriber for {id} already exists"),
                        )),
                        // subscriptions-transport-ws replaces an operation started again.
                        Subprotocol::Legacy => {
                            self.stop(&id);
                            self.start_within_budget(link, id, request);
                            None
                        }
                    };
                }
                let max = link.follows_budget(link.state.config.max_subscriptions);
                if self.lock_ops().len() >= max {
                    crate::metrics::subscription_refused("socket");
                    let message = format!("at most {max} operations at once on one connection");
                    rate_limited(out, &id, &message);
                    return None;
                }
                self.start_within_budget(link, id, request);
                None
            }
            (Subprotocol::Transport, "complete") | (Subprotocol::Legacy, "stop") => {
                if let Some(id) = id {
                    self.stop(&id);
                }
                None
            }
            (Subprotocol::Legacy, "connection_terminate") => {
                Some(End::Close(1000, "terminated".into()))
            }
            (_, other) => {
                let what = if other.is_empty() {
                    "message without a type".to_owned()
                } else {
                    format!("unknown message type {other:?}")
                };
                self.invalid(out, &what)
            }
        }
    }

    fn keepalive(&self, link: &Link) -> Option<String> {
        match self.subprotocol {
            Subprotocol::Transport => Some(json!({ "type": "ping" }).to_string()),
            Subprotocol::Legacy if link.viewer().is_some() => {
                Some(json!({ "type": "ka" }).to_string())
            }
            Subprotocol::Legacy => None,
        }
    }

    async fn background(&mut self) {
        if let Some(tasks) = self.tasks.as_mut() {
            if tasks.join_next().await.is_some() {
                return;
            }
            // Every task has ended: the set goes (a cohort member's join is one such task).
            self.tasks = None;
        }
        std::future::pending::<()>().await
    }

    /// Subscriptions sharing an execution are checked again under the renewed credentials;
    /// the others check themselves (`Domain::while_allowed`).
    async fn renewed(&mut self, link: &mut Link) {
        let members: Vec<_> = self
            .lock_ops()
            .0
            .iter()
            .filter_map(|(.., running, _)| match running {
                Running::Member(membership) => Some(membership.seat()),
                Running::Task(_) => None,
            })
            .collect();
        let viewer = link.viewer().cloned().unwrap_or(Viewer::Anonymous);
        for member in members {
            member.recheck(&link.state.domain, &viewer).await;
        }
    }
}

/// Queues a control-plane frame; one that does not fit is dropped (the peer is not reading).
fn send(out: &Outbox, value: &Value) {
    out.offer(Frame::text(value.to_string()));
}

/// Refuses operation `id` for a budget: an `error` with RATE_LIMITED; the socket stays open.
fn rate_limited(out: &Outbox, id: &str, message: &str) {
    send(
        out,
        &json!({ "id": id, "type": "error", "payload": [
            { "message": message, "extensions": { "code": "RATE_LIMITED" } }
        ] }),
    );
}

impl Connection {
    /// A well-formed JSON message this protocol does not allow: graphql-transport-ws closes with
    /// 4400, the legacy protocol answers with an error and stays open.
    fn invalid(&self, out: &Outbox, what: &str) -> Option<End> {
        match self.subprotocol {
            Subprotocol::Transport => Some(End::Close(
                4400,
                format!("Invalid message received: {what}"),
            )),
            Subprotocol::Legacy => {
                send(
                    out,
                    &json!({ "type": "error", "payload": { "message": what } }),
                );
                None
            }
        }
    }

    async fn on_init(&mut self, link: &mut Link, payload: &Value) -> Option<End> {
        if link.viewer().is_some() {
            return Some(End::Close(4429, "Too many initialisation requests".into()));
        }
        let token = token_from_init(payload).or_else(|| self.upgrade_token.take());
        if let Err(refused) = link.sign_in(token.as_deref(), None).await {
            if let (Subprotocol::Legacy, Refused::Token(why)) = (self.subprotocol, &refused) {
                send(
                    &link.out,
                    &json!({ "type": "connection_error",
                    "payload": { "message": why } }),
                );
            }
            return Some(refused.end::<Self>());
        }
        send(&link.out, &renewal::ack(link.viewer()));
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

    /// Starts the operation if the user's subscription budget has room for it.
    fn start_within_budget(&mut self, link: &mut Link, id: String, request: Request) {
        match link.subscription_slot() {
            Ok(slot) => self.start(link, id, request, slot),
            Err(message) => rate_limited(&link.out, &id, &message),
        }
    }

    fn start(
        &mut self,
        link: &mut Link,
        id: String,
        request: Request,
        slot: Option<SubscriptionSlot>,
    ) {
        let viewer = link.viewer().cloned().unwrap_or(Viewer::Anonymous);
        self.next_op += 1;
        let op = Operation {
            id: id.clone(),
            seq: self.next_op,
            subprotocol: self.subprotocol,
            out: link.out.clone(),
            operations: self.operations.clone(),
        };
        // Listed before the task can run: an operation that ends at once then finds itself
        // there to remove (with its budget slot), rather than being listed after it ended.
        let operations = self.operations.clone();
        let mut listed = lock_operations(&operations);
        let handle = match cohort::shareable(&request) {
            Some(shareable) => {
                let state = link.state.clone();
                self.tasks
                    .get_or_insert_with(JoinSet::new)
                    .spawn(op.join_cohort(state, viewer, shareable))
            }
            None => {
                let schema = link.state.schema.clone();
                let mut request = request.data(viewer).data(SocketConnection(link.id));
                if let Some(credentials) = link.credentials() {
                    request = request.data(credentials.clone());
                }
                if let Some(client) = self.client {
                    request = request.data(client);
                }
                self.tasks
                    .get_or_insert_with(JoinSet::new)
                    .spawn(op.run(schema, request))
            }
        };
        listed.insert(id, self.next_op, Running::Task(handle), slot);
    }
}

fn lock_operations(operations: &Mutex<OpTable>) -> std::sync::MutexGuard<'_, OpTable> {
    operations.lock().unwrap_or_else(|p| p.into_inner())
}

/// One running operation: it executes, and hands finished frames to the writer.
struct Operation {
    id: String,
    seq: u64,
    subprotocol: Subprotocol,
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
            let kind = match self.subprotocol {
                Subprotocol::Transport => "next",
                Subprotocol::Legacy => "data",
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
        let data_type = match self.subprotocol {
            Subprotocol::Transport => "next",
            Subprotocol::Legacy => "data",
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
                    prefix: result_prefix(&self.id, data_type),
                    suffix: "}",
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
                let mut frame = result_prefix(&self.id, data_type);
                frame.push_str(&cohort::refusal(field, &e));
                frame.push('}');
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

/// The start of a result frame of operation `id`: `{"id":…,"type":"next","payload":`.
fn result_prefix(id: &str, data_type: &str) -> String {
    let id_json = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
    format!(r#"{{"id":{id_json},"type":"{data_type}","payload":"#)
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
