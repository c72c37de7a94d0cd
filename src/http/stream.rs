//! Subscriptions over plain HTTP, for clients that cannot keep a WebSocket open (proxies that
//! break upgrades, serverless front-ends, HTTP/2-only paths):
//!
//! - **graphql-sse** (the protocol of the npm `graphql-sse` client), both of its modes.
//!   *Distinct connections*: a `POST` or `GET` with `Accept: text/event-stream` (at `/graphql`
//!   or `/graphql/stream`) streams one operation's results as `event: next` and ends with
//!   `event: complete`. *Single connection*: `PUT /graphql/stream` reserves a stream token,
//!   `GET` with `X-GraphQL-Event-Stream-Token` (or `?token=`) opens the stream, operations are
//!   `POST`ed with the token and an `extensions.operationId`, and `DELETE ?operationId=` stops
//!   one; results come as `event: next` with `{"id","payload"}`.
//! - **Multipart subscriptions** as Apollo Client's `HttpLink` sends them: a `POST /graphql`
//!   with `Accept: multipart/mixed;subscriptionSpec="1.0"` is answered with
//!   `multipart/mixed; boundary="graphql"`, one part `{"payload":…}` per result and a heartbeat
//!   part `{}` every 5 s.
//!
//! A stream is a connection like a socket, with the same parts (`socket.rs`): it is admitted
//! within the connection budgets (503 or 429 before anything streams), signs in with its
//! `Authorization: Bearer` token (counted for presence and the per-user connection limit), its
//! operations count against the same subscription budgets, an admin's disconnect and the
//! token's expiry end it (with an error the client can act on: sign in again and resume with
//! `after`), and its frames go through the same queue, so a client that stops reading is a
//! slow consumer and is cut. Subscriptions share executions with those of every other
//! transport (`cohort.rs`); only the framing differs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::websocket::Frame;
use async_graphql::Request;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cohort;
use super::error::request_error;
use super::socket::{self, BodyStyle, End, Link, Outbox, Refused, SocketWriter, SubscriptionSlot};
use super::AppState;
use crate::auth::{bearer, ClientAddress, Viewer};
use crate::graphql::errors::{is_request_error, stamp_codes};
use crate::metrics::Transport;

/// The header (and query parameter) naming a single-connection stream.
pub const TOKEN_HEADER: &str = "x-graphql-event-stream-token";
/// How often a multipart stream sends its heartbeat part, as Apollo's spec asks.
const MULTIPART_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
const SSE: BodyStyle = BodyStyle {
    keepalive: ":\n\n",
    epilogue: "",
};
const MULTIPART_PART: &str =
    "\r\n--graphql\r\ncontent-type: application/json; charset=utf-8\r\n\r\n";
const MULTIPART: BodyStyle = BodyStyle {
    keepalive: "\r\n--graphql\r\ncontent-type: application/json; charset=utf-8\r\n\r\n{}",
    epilogue: "\r\n--graphql--\r\n",
};

/// What a request's `Accept` asks a GraphQL request to be answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wants {
    /// One JSON response.
    Json,
    /// graphql-sse: `text/event-stream`.
    EventStream,
    /// Apollo's multipart subscriptions: `multipart/mixed` with `subscriptionSpec`.
    Multipart,
}

/// Reads `Accept` (absent: JSON): the client's preferred of what it accepts, by quality
/// (`q`). A stream only when asked for by name (`*/*` is JSON), and never at `q=0`.
pub fn wants(headers: &HeaderMap) -> Wants {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Wants::Json;
    };
    let ranges = media_ranges(accept);
    let q = |matches: &dyn Fn(&MediaRange) -> bool| {
        ranges
            .iter()
            .filter(|r| matches(r))
            .map(|r| r.q)
            .fold(0.0_f32, f32::max)
    };
    let sse = q(&|r| r.essence == "text/event-stream");
    let multipart = q(&|r| r.essence == "multipart/mixed" && r.subscription_spec);
    let json = q(&|r| {
        matches!(
            r.essence.as_str(),
            "application/json" | GRAPHQL_RESPONSE_JSON | "application/*" | "*/*"
        )
    });
    if sse > 0.0 && sse >= multipart && sse >= json {
        Wants::EventStream
    } else if multipart > 0.0 && multipart >= json {
        Wants::Multipart
    } else {
        Wants::Json
    }
}

/// Whether a JSON answer goes as `application/graphql-response+json` (GraphQL over HTTP):
/// the client accepts it, at a quality no lower than `application/json`'s.
pub fn wants_graphql_response_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let ranges = media_ranges(accept);
    let q = |essence: &str| {
        ranges
            .iter()
            .filter(|r| r.essence == essence)
            .map(|r| r.q)
            .fold(0.0_f32, f32::max)
    };
    let graphql = q(GRAPHQL_RESPONSE_JSON);
    graphql > 0.0 && graphql >= q("application/json")
}

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// One media range of an `Accept` header, as far as choosing an answer needs it.
struct MediaRange {
    /// `type/subtype`, lowercase.
    essence: String,
    /// Its quality, 0 to 1 (1 when absent or unreadable).
    q: f32,
    /// It carries `subscriptionSpec` (Apollo's multipart subscriptions).
    subscription_spec: bool,
}

/// The media ranges of an `Accept` value (RFC 9110 §12.5.1). Written here rather than taken
/// from a crate: the `headers` crate has no `Accept`, and this needs only the essence, `q` and
/// one parameter's presence. Commas inside a quoted parameter (`boundary="a,b"`) are not split.
fn media_ranges(accept: &str) -> Vec<MediaRange> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in accept.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&accept[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&accept[start..]);
    parts
        .into_iter()
        .filter_map(|part| {
            let mut params = part.split(';');
            let essence = params.next()?.trim().to_ascii_lowercase();
            if essence.is_empty() {
                return None;
            }
            let mut range = MediaRange {
                essence,
                q: 1.0,
                subscription_spec: false,
            };
            for param in params {
                let (name, value) = param.split_once('=').unwrap_or((param, ""));
                let name = name.trim();
                if name.eq_ignore_ascii_case("q") {
                    range.q = value
                        .trim()
                        .parse::<f32>()
                        .map_or(1.0, |q| q.clamp(0.0, 1.0));
                } else if name.eq_ignore_ascii_case("subscriptionSpec") {
                    range.subscription_spec = true;
                }
            }
            Some(range)
        })
        .collect()
}

/// How one operation's results are framed on its stream: each result is `prefix`, the
/// result's JSON, `suffix`; `complete` ends the operation.
#[derive(Clone, Debug)]
pub(crate) struct Framing {
    prefix: String,
    suffix: &'static str,
    complete: String,
    multipart: bool,
}

impl Framing {
    fn sse_distinct() -> Self {
        Framing {
            prefix: "event: next\ndata: ".into(),
            suffix: "\n\n",
            complete: "event: complete\ndata:\n\n".into(),
            multipart: false,
        }
    }

    fn sse_single(id: &str) -> Self {
        let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
        Framing {
            prefix: format!("event: next\ndata: {{\"id\":{id},\"payload\":"),
            suffix: "}\n\n",
            complete: format!("event: complete\ndata: {{\"id\":{id}}}\n\n"),
            multipart: false,
        }
    }

    fn multipart() -> Self {
        Framing {
            prefix: format!("{MULTIPART_PART}{{\"payload\":"),
            suffix: "}",
            // The stream's closing boundary ends it.
            complete: String::new(),
            multipart: true,
        }
    }

    fn frame(&self, payload: &str) -> String {
        let mut frame = String::with_capacity(self.prefix.len() + payload.len() + 8);
        frame.push_str(&self.prefix);
        frame.push_str(payload);
        frame.push_str(self.suffix);
        frame
    }

    /// An error of the transport, not of the operation (the token expired, an admin
    /// disconnected the user, the server shuts down): the operation's last result. Multipart
    /// carries it as `{"payload":null,"errors":[…]}`, as Apollo's spec says.
    fn transport_error(&self, message: &str, code: &str) -> String {
        let errors = json!([{ "message": message, "extensions": { "code": code } }]);
        if self.multipart {
            format!(
                "{MULTIPART_PART}{}",
                json!({ "payload": null, "errors": errors })
            )
        } else {
            let mut frame = self.frame(&json!({ "errors": errors }).to_string());
            frame.push_str(&self.complete);
            frame
        }
    }
}

/// A GraphQL request from `GET` parameters (`query`, `operationName`, and `variables` and
/// `extensions` as JSON).
pub fn request_from_params(params: &HashMap<String, String>) -> Result<Request, String> {
    let mut body = serde_json::Map::new();
    if let Some(query) = params.get("query") {
        body.insert("query".into(), Value::String(query.clone()));
    }
    if let Some(name) = params.get("operationName").filter(|n| !n.is_empty()) {
        body.insert("operationName".into(), Value::String(name.clone()));
    }
    for key in ["variables", "extensions"] {
        if let Some(raw) = params.get(key).filter(|v| !v.is_empty()) {
            let value: Value = serde_json::from_str(raw)
                .map_err(|e| format!("the {key} parameter is not JSON: {e}"))?;
            body.insert(key.into(), value);
        }
    }
    serde_json::from_value(Value::Object(body)).map_err(|e| format!("not a GraphQL request: {e}"))
}

/// The kind of operation `request` selects, when its query says (a persisted query's hash
/// alone does not).
pub fn operation_kind(request: &Request) -> Option<async_graphql::parser::types::OperationType> {
    use async_graphql::parser::types::DocumentOperations;
    let doc = async_graphql::parser::parse_query(&request.query).ok()?;
    match (&doc.operations, &request.operation_name) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => {
            ops.get(name.as_str()).map(|op| op.node.ty)
        }
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// The bearer token of an HTTP request, if any; `Err` for a malformed `Authorization`.
#[allow(clippy::result_large_err)]
fn bearer_token(headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(bearer)
        .map(|t| Some(t.to_owned()))
        .ok_or_else(|| {
            request_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Authorization must be 'Bearer <token>'",
            )
        })
}

/// Opens a connection for a stream: admitted within the connection budgets, signed in with the
/// request's token. Refusals are answered before anything streams.
async fn open(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<ClientAddress>,
    transport: Transport,
    style: BodyStyle,
) -> Result<
    (
        Link,
        SocketWriter,
        socket::StreamBody,
        socket::ConnectionTicket,
    ),
    Response,
> {
    let token = bearer_token(headers)?;
    // A stream with a token signs in as it opens: like a `/ws` socket with one, it does not
    // count under its client's address (see `socket.rs`).
    let admission = socket::admit(state, client.map(|c| c.ip()), token.is_some())
        .map_err(IntoResponse::into_response)?;
    let ticket = state.connections.open(transport);
    let (writer, out, body) = SocketWriter::start_body(
        state.config.ws_queue,
        state.config.slow_consumer_timeout,
        transport,
        style,
    );
    let mut link = Link::new(state.clone(), &ticket, out, admission);
    match link.sign_in(token.as_deref(), None).await {
        Ok(_) => Ok((link, writer, body, ticket)),
        Err(Refused::Token(why)) => Err(request_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            &why,
        )),
        Err(Refused::TooMany) => {
            // Refused like the other connection budgets: 429 with `Retry-After`.
            let mut response = request_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many connections for this user",
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(socket::RETRY_AFTER_SECONDS),
            );
            Err(response)
        }
        Err(Refused::Internal) => Err(request_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "could not sign in",
        )),
    }
}

fn streaming(body: socket::StreamBody, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Tells nginx (and proxies that follow it) not to buffer the stream.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        // Written by `takeover` on a socket of its own, not kept in hyper's connection.
        axum::Extension(super::takeover::StreamResponse),
        Body::from_stream(body),
    )
        .into_response()
}

/// One operation on a stream, in the distinct connections mode (SSE) or as a multipart
/// subscription: the response streams its results and ends with it.
pub async fn distinct(
    state: AppState,
    headers: HeaderMap,
    client: Option<ClientAddress>,
    request: Request,
    wants: Wants,
) -> Response {
    let (transport, style, framing, content_type) = match wants {
        Wants::Multipart => (
            Transport::Multipart,
            MULTIPART,
            Framing::multipart(),
            "multipart/mixed; boundary=\"graphql\"; subscriptionSpec=\"1.0\"",
        ),
        _ => (
            Transport::Sse,
            SSE,
            Framing::sse_distinct(),
            "text/event-stream; charset=utf-8",
        ),
    };
    let (link, writer, body, ticket) = match open(&state, &headers, client, transport, style).await
    {
        Ok(opened) => opened,
        Err(response) => return response,
    };
    let mut stream = StreamConnection::new(link, client, true);
    // The first bytes go out at once: clients (and some browsers) wait for them.
    stream.link.out.offer(Frame::Ping);
    let precheck = wants == Wants::Multipart;
    if let Err(refusal) = stream.start(String::new(), framing, request, precheck) {
        let message = match refusal {
            StartRefused::Budget(message) => message,
            // A multipart request that does not validate is answered as JSON, as a query is.
            StartRefused::Invalid(response) => return *response,
        };
        let frame = stream_refusal(wants, &message);
        stream.link.out.try_push(frame, None);
        tokio::spawn(async move {
            writer.finish(End::Close(1000, String::new())).await;
            drop(ticket);
        });
        return streaming(body, content_type);
    }
    tokio::spawn(stream.serve(writer, ticket, None, None, wants));
    streaming(body, content_type)
}

fn stream_refusal(wants: Wants, message: &str) -> String {
    let framing = match wants {
        Wants::Multipart => Framing::multipart(),
        _ => Framing::sse_distinct(),
    };
    framing.transport_error(message, "RATE_LIMITED")
}

/// The single connection mode's streams, by token: reserved by `PUT`, opened by `GET`.
#[derive(Default)]
pub struct Streams {
    by_token: Mutex<HashMap<String, Arc<Reserved>>>,
}

/// A reserved stream: its connection runs from the reservation on (operations posted before
/// the `GET` queue until it opens); the body waits here for the `GET`.
struct Reserved {
    body: Mutex<Option<socket::StreamBody>>,
    commands: mpsc::Sender<Command>,
}

impl Reserved {
    /// No `GET` has taken the body yet.
    fn unopened(&self) -> bool {
        self.body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Reserved>>> {
        self.by_token.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, token: &str) -> Option<Arc<Reserved>> {
        self.lock().get(token).cloned()
    }
}

/// What the single connection mode's requests ask of a stream's connection.
enum Command {
    Start {
        id: String,
        request: Box<Request>,
        reply: oneshot::Sender<Response>,
    },
    Stop {
        id: String,
    },
}

/// The stream token a single-connection request names.
fn stream_token(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("token").cloned())
        .filter(|t| !t.is_empty())
}

/// `/graphql/stream`: the single connection mode when the request names a stream token (or
/// reserves one), else the distinct connections mode.
pub async fn stream_endpoint(
    state: AppState,
    method: Method,
    headers: HeaderMap,
    query: HashMap<String, String>,
    client: Option<ClientAddress>,
    body: Option<Request>,
) -> Response {
    let token = stream_token(&headers, &query);
    let wants = wants(&headers);
    match (&method, token) {
        (&Method::PUT, None) => reserve(state, headers, client, new_stream_token()).await,
        // graphql-sse's client sends the token it had again when it reserves anew: it may
        // have it back if no stream holds it now.
        (&Method::PUT, Some(token)) => {
            if !valid_stream_token(&token) {
                return request_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_USER_INPUT",
                    "malformed stream token",
                );
            }
            if state.streams.get(&token).is_some() {
                return request_error(
                    StatusCode::CONFLICT,
                    "BAD_USER_INPUT",
                    "stream already reserved",
                );
            }
            reserve(state, headers, client, token).await
        }
        (&Method::GET | &Method::POST, None) => match wants {
            Wants::EventStream => {
                let request = match body {
                    Some(request) => request,
                    None => match request_from_params(&query) {
                        Ok(request) => request,
                        Err(message) => {
                            return request_error(
                                StatusCode::BAD_REQUEST,
                                "BAD_USER_INPUT",
                                &message,
                            )
                        }
                    },
                };
                if method == Method::GET && is_mutation(&request) {
                    return mutation_over_get();
                }
                distinct(state, headers, client, request, Wants::EventStream).await
            }
            _ => request_error(
                StatusCode::NOT_ACCEPTABLE,
                "BAD_USER_INPUT",
                "a stream is asked for with Accept: text/event-stream, or reserved with PUT",
            ),
        },
        (&Method::DELETE, None) => request_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "name the stream with the X-GraphQL-Event-Stream-Token header",
        ),
        (_, Some(token)) => {
            let Some(reserved) = state.streams.get(&token) else {
                return request_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such stream");
            };
            match method {
                Method::GET => {
                    if wants != Wants::EventStream {
                        return request_error(
                            StatusCode::NOT_ACCEPTABLE,
                            "BAD_USER_INPUT",
                            "a stream is opened with Accept: text/event-stream",
                        );
                    }
                    let body = reserved
                        .body
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    match body {
                        Some(body) => streaming(body, "text/event-stream; charset=utf-8"),
                        None => request_error(
                            StatusCode::CONFLICT,
                            "BAD_USER_INPUT",
                            "stream already open",
                        ),
                    }
                }
                Method::POST => {
                    let Some(request) = body else {
                        return request_error(
                            StatusCode::BAD_REQUEST,
                            "BAD_USER_INPUT",
                            "POST the operation as JSON",
                        );
                    };
                    let id = request
                        .extensions
                        .get("operationId")
                        .and_then(|v| match v {
                            async_graphql::Value::String(s) => Some(s.clone()),
                            _ => None,
                        })
                        .filter(|id| !id.is_empty());
                    let Some(id) = id else {
                        return request_error(
                            StatusCode::BAD_REQUEST,
                            "BAD_USER_INPUT",
                            "extensions.operationId is missing",
                        );
                    };
                    let (reply, answer) = oneshot::channel();
                    let command = Command::Start {
                        id,
                        request: Box::new(request),
                        reply,
                    };
                    if reserved.commands.send(command).await.is_err() {
                        return request_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such stream");
                    }
                    answer.await.unwrap_or_else(|_| {
                        request_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such stream")
                    })
                }
                Method::DELETE => {
                    let Some(id) = query.get("operationId").filter(|id| !id.is_empty()) else {
                        return request_error(
                            StatusCode::BAD_REQUEST,
                            "BAD_USER_INPUT",
                            "operationId is missing",
                        );
                    };
                    let _ = reserved
                        .commands
                        .send(Command::Stop { id: id.clone() })
                        .await;
                    StatusCode::OK.into_response()
                }
                _ => (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(header::ALLOW, "GET, POST, PUT, DELETE")],
                )
                    .into_response(),
            }
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, POST, PUT, DELETE")],
        )
            .into_response(),
    }
}

/// Whether `request`'s query selects a mutation.
pub fn is_mutation(request: &Request) -> bool {
    operation_kind(request) == Some(async_graphql::parser::types::OperationType::Mutation)
}

/// A mutation over GET: 405, as GraphQL over HTTP says.
pub fn mutation_over_get() -> Response {
    let mut response = request_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "BAD_USER_INPUT",
        "mutations are not allowed over GET: use POST",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// `PUT /graphql/stream`: reserves a stream (its connection starts now, within the budgets)
/// and answers its token.
async fn reserve(
    state: AppState,
    headers: HeaderMap,
    client: Option<ClientAddress>,
    token: String,
) -> Response {
    let (link, writer, body, ticket) =
        match open(&state, &headers, client, Transport::Sse, SSE).await {
            Ok(opened) => opened,
            Err(response) => return response,
        };
    let (commands, inbox) = mpsc::channel(8);
    let reserved = Arc::new(Reserved {
        body: Mutex::new(Some(body)),
        commands,
    });
    {
        let mut streams = state.streams.lock();
        if streams.contains_key(&token) {
            // Reserved meanwhile by a request with the same token.
            return request_error(
                StatusCode::CONFLICT,
                "BAD_USER_INPUT",
                "stream already reserved",
            );
        }
        streams.insert(token.clone(), reserved.clone());
    }
    let stream = StreamConnection::new(link, client, false);
    stream.link.out.offer(Frame::Ping);
    let streams = state.streams.clone();
    let held = token.clone();
    tokio::spawn(async move {
        stream
            .serve(
                writer,
                ticket,
                Some(inbox),
                Some(reserved),
                Wants::EventStream,
            )
            .await;
        streams.lock().remove(&held);
    });
    (
        StatusCode::CREATED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        token,
    )
        .into_response()
}

/// What a stream token a client brings must look like: what graphql-sse's clients make (a
/// UUID) or this server does (hex).
fn valid_stream_token(token: &str) -> bool {
    (16..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// 128 random bits, as hex: a stream token is the capability to post to and read a stream.
fn new_stream_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why an operation did not start.
enum StartRefused {
    /// The user's subscription budget is spent.
    Budget(String),
    /// The request does not parse or validate: its answer.
    Invalid(Box<Response>),
}

/// A request error, answered as JSON with 400.
fn invalid(response: async_graphql::Response) -> Response {
    let body = json!({ "errors": response.errors });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// How a stream's operation runs.
/// What an operation's task tells its stream.
enum Report {
    /// The operation ended by itself (its `complete` is queued), by number.
    Ended(u64),
    /// The operation joined its cohort: the stream keeps the membership.
    Joined(u64, cohort::Membership),
}

/// The reports of a stream's operation tasks to the stream. A list and a wake-up rather than
/// a channel: a channel allocates a block of 32 slots when it is made, which every idle
/// stream would keep. Unbounded: at most two reports per operation, and the operations are
/// bounded by the stream's budget.
#[derive(Clone, Default)]
struct Reports(Arc<ReportList>);

#[derive(Default)]
struct ReportList {
    list: std::sync::Mutex<Vec<Report>>,
    ready: tokio::sync::Notify,
}

impl Reports {
    fn send(&self, report: Report) {
        self.0
            .list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(report);
        self.0.ready.notify_one();
    }

    /// The next report, in the order they were sent. Cancel safe: a report is taken only in
    /// the poll that returns it.
    async fn recv(&self) -> Report {
        loop {
            {
                let mut list = self.0.list.lock().unwrap_or_else(|e| e.into_inner());
                if !list.is_empty() {
                    let report = list.remove(0);
                    if list.is_empty() {
                        // Gives back what a burst of reports allocated.
                        *list = Vec::new();
                    }
                    return report;
                }
            }
            self.0.ready.notified().await;
        }
    }
}

enum Running {
    Task(tokio::task::AbortHandle),
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

/// One operation of a stream: its id, number, framing, how it runs, its budget slot.
struct Op {
    id: String,
    seq: u64,
    framing: Framing,
    running: Option<Running>,
    _slot: Option<SubscriptionSlot>,
}

/// A stream's connection: its link and its operations.
struct StreamConnection {
    link: Link,
    client: Option<ClientAddress>,
    /// One operation only, and the stream ends with it (distinct connections, multipart).
    distinct: bool,
    ops: Vec<Op>,
    tasks: JoinSet<()>,
    next_op: u64,
    /// What its operations' tasks report: an operation ended, or joined its cohort.
    reports: Reports,
}

impl StreamConnection {
    fn new(link: Link, client: Option<ClientAddress>, distinct: bool) -> Self {
        StreamConnection {
            link,
            client,
            distinct,
            ops: Vec::new(),
            tasks: JoinSet::new(),
            next_op: 0,
            reports: Reports::default(),
        }
    }

    /// Starts an operation within the user's subscription budget; `Err` with the refusal.
    /// `precheck`: a request that fails before it executes (it does not parse or validate) is
    /// refused with its errors instead of being run; the first poll of its execution tells,
    /// as a request error is ready at once.
    fn start(
        &mut self,
        id: String,
        framing: Framing,
        request: Request,
        precheck: bool,
    ) -> Result<(), StartRefused> {
        let slot = self
            .link
            .subscription_slot()
            .map_err(StartRefused::Budget)?;
        let viewer = self.link.viewer().cloned().unwrap_or(Viewer::Anonymous);
        self.next_op += 1;
        let seq = self.next_op;
        let out = self.link.out.clone();
        let reports = self.reports.clone();
        let shareable = cohort::shareable(&request);
        if precheck && shareable.is_some() {
            // The shared execution is checked once for all its members: check this request
            // on its own first, with an execution that is dropped.
            let mut probe = Request::new(request.query.clone())
                .variables(request.variables.clone())
                .data(viewer.clone());
            probe.operation_name = request.operation_name.clone();
            let first = self
                .link
                .state
                .schema
                .execute_stream(probe)
                .next()
                .now_or_never()
                .flatten();
            if let Some(mut response) = first {
                stamp_codes(&mut response);
                if is_request_error(&response) {
                    return Err(StartRefused::Invalid(Box::new(invalid(response))));
                }
            }
        }
        let running = match shareable {
            Some(shareable) => {
                let state = self.link.state.clone();
                let framing = framing.clone();
                let handle = self.tasks.spawn(async move {
                    join_cohort(state, viewer, shareable, framing, out, seq, reports).await
                });
                Running::Task(handle)
            }
            None => {
                let mut request = request.data(viewer);
                if let Some(client) = self.client {
                    request = request.data(client);
                }
                let mut stream = self.link.state.schema.execute_stream(request);
                let mut first = None;
                if precheck {
                    if let Some(Some(mut response)) = stream.next().now_or_never() {
                        stamp_codes(&mut response);
                        if is_request_error(&response) {
                            return Err(StartRefused::Invalid(Box::new(invalid(response))));
                        }
                        first = Some(response);
                    }
                }
                let framing = framing.clone();
                let handle = self
                    .tasks
                    .spawn(async move { run(stream, first, framing, out, seq, reports).await });
                Running::Task(handle)
            }
        };
        self.ops.push(Op {
            id,
            seq,
            framing,
            running: Some(running),
            _slot: slot,
        });
        Ok(())
    }

    fn remove(&mut self, seq: u64) -> Option<Op> {
        let at = self.ops.iter().position(|op| op.seq == seq)?;
        Some(self.ops.swap_remove(at))
    }

    /// A single-connection `POST`: starts the operation (202), or refuses it.
    async fn on_start(&mut self, id: String, request: Request) -> Response {
        if self.ops.iter().any(|op| op.id == id) {
            return request_error(
                StatusCode::CONFLICT,
                "BAD_USER_INPUT",
                "an operation with this id is running",
            );
        }
        let max = self
            .link
            .follows_budget(self.link.state.config.max_subscriptions);
        if self.ops.len() >= max {
            crate::metrics::subscription_refused("socket");
            return request_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                &format!("at most {max} operations at once on one stream"),
            );
        }
        // A request that fails before it executes (parse, validation) is answered here, as
        // graphql-sse does, not on the stream.
        match self.start(id.clone(), Framing::sse_single(&id), request, true) {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(StartRefused::Budget(message)) => {
                request_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", &message)
            }
            Err(StartRefused::Invalid(response)) => *response,
        }
    }

    /// Runs the stream until it ends, then closes it.
    async fn serve(
        mut self,
        writer: SocketWriter,
        ticket: socket::ConnectionTicket,
        mut commands: Option<mpsc::Receiver<Command>>,
        reserved: Option<Arc<Reserved>>,
        wants: Wants,
    ) {
        let config = self.link.state.config.clone();
        let heartbeat = match wants {
            Wants::Multipart => MULTIPART_HEARTBEAT,
            _ => config.ws_ping_interval,
        };
        let now = Instant::now();
        let mut ping = now + heartbeat;
        let expires = super::renewal::token_expiry(self.link.viewer());
        // A reserved stream that is never opened ends after the time a socket has to sign in.
        let mut open_by = commands.as_ref().map(|_| now + config.ws_init_timeout);
        let shutdown = self.link.state.shutdown.clone();
        let out = self.link.out.clone();
        let end = loop {
            let next = [expires, open_by]
                .into_iter()
                .flatten()
                .fold(ping, Instant::min);
            tokio::select! {
                command = recv(&mut commands) => match command {
                    Some(Command::Start { id, request, reply }) => {
                        let response = Box::pin(self.on_start(id, *request)).await;
                        let _ = reply.send(response);
                    }
                    Some(Command::Stop { id }) => {
                        if let Some(at) = self.ops.iter().position(|op| op.id == id) {
                            let op = self.ops.swap_remove(at);
                            if let Some(running) = op.running {
                                running.stop();
                            }
                            // As graphql-sse's own server does: a stopped operation completes.
                            out.try_push(op.framing.complete.clone(), None);
                        }
                    }
                    None => commands = None,
                },
                report = self.reports.recv() => match report {
                    Report::Ended(seq) => {
                        drop(self.remove(seq));
                        if self.distinct {
                            break End::Close(1000, String::new());
                        }
                    }
                    Report::Joined(seq, membership) => {
                        match self.ops.iter_mut().find(|op| op.seq == seq) {
                            Some(op) => op.running = Some(Running::Member(membership)),
                            None => drop(membership),
                        }
                    }
                },
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    if expires.is_some_and(|at| at <= now) {
                        self.fail_all("token expired", "UNAUTHENTICATED");
                        break End::Close(1000, String::new());
                    }
                    if open_by.is_some_and(|at| at <= now) {
                        open_by = None;
                        let unopened = reserved.as_ref().is_some_and(|r| r.unopened());
                        if unopened {
                            break End::Gone;
                        }
                    }
                    if ping <= now {
                        ping = now + heartbeat;
                        out.offer(Frame::Ping);
                    }
                }
                _ = shutdown.cancelled() => {
                    self.fail_all("server shutting down", "INTERNAL");
                    break End::Close(1001, String::new());
                }
                end = out.attention(4403) => match end {
                    End::Close(_, reason) => {
                        self.fail_all(&reason, "FORBIDDEN");
                        break End::Close(1000, String::new());
                    }
                    other => break other,
                },
                () = background(&mut self.tasks) => {}
            }
        };
        // Operations stop before the connection is counted out.
        for op in self.ops.drain(..) {
            if let Some(running) = op.running {
                running.stop();
            }
        }
        self.tasks.abort_all();
        let domain = self.link.state.domain.clone();
        let id = self.link.id;
        drop(self);
        writer.finish(end).await;
        domain.connection_closed(id);
        drop(ticket);
    }

    /// Ends every operation with a transport error.
    fn fail_all(&mut self, message: &str, code: &str) {
        for op in self.ops.drain(..) {
            if let Some(running) = op.running {
                running.stop();
            }
            self.link
                .out
                .try_push(op.framing.transport_error(message, code), None);
        }
    }
}

async fn recv(commands: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match commands {
        Some(commands) => commands.recv().await,
        None => std::future::pending().await,
    }
}

/// Reaps finished operation tasks; never resolves while there are none.
async fn background(tasks: &mut JoinSet<()>) {
    if tasks.join_next().await.is_none() {
        std::future::pending::<()>().await;
    }
}

/// Runs an operation of its own (not shared), queueing its framed results, then `complete`.
async fn run(
    mut stream: impl futures_util::Stream<Item = async_graphql::Response> + Unpin,
    first: Option<async_graphql::Response>,
    framing: Framing,
    out: Outbox,
    seq: u64,
    reports: Reports,
) {
    let mut first = first;
    loop {
        let mut response = match first.take() {
            Some(response) => response,
            None => match stream.next().await {
                Some(response) => response,
                None => break,
            },
        };
        stamp_codes(&mut response);
        let Ok(payload) = serde_json::to_string(&response) else {
            continue;
        };
        if !out.push(framing.frame(&payload), None).await {
            return;
        }
    }
    if !framing.complete.is_empty() {
        out.push(framing.complete.clone(), None).await;
    }
    reports.send(Report::Ended(seq));
}

/// Joins the cohort of equal subscriptions and hands the membership to the stream; a refusal
/// (the viewer may not read what the subscription asks) is the operation's one result.
#[allow(clippy::too_many_arguments)]
async fn join_cohort(
    state: AppState,
    viewer: Viewer,
    shareable: cohort::Shareable,
    framing: Framing,
    out: Outbox,
    seq: u64,
    reports: Reports,
) {
    let field = shareable.field();
    let complete = framing.complete.clone();
    let on_end_out = out.clone();
    let on_end_reports = reports.clone();
    let on_end: cohort::OnEnd = Box::new(move || {
        if !complete.is_empty() {
            on_end_out.try_push(complete, None);
        }
        on_end_reports.send(Report::Ended(seq));
    });
    let seat = cohort::Seat {
        prefix: framing.prefix.clone(),
        suffix: framing.suffix,
        outbox: out.clone(),
        on_end,
    };
    match state
        .cohorts
        .join(&state.schema, &state.domain, &viewer, shareable, seat)
        .await
    {
        Ok(membership) => {
            reports.send(Report::Joined(seq, membership));
        }
        Err(e) => {
            out.push(framing.frame(&cohort::refusal(field, &e)), None)
                .await;
            if !framing.complete.is_empty() {
                out.push(framing.complete.clone(), None).await;
            }
            reports.send(Report::Ended(seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().expect("a header value"));
        headers
    }

    #[test]
    fn the_answer_is_the_clients_preferred_by_quality() {
        let cases = [
            ("text/event-stream", Wants::EventStream),
            ("application/json, text/event-stream", Wants::EventStream),
            ("text/event-stream;q=0, application/json", Wants::Json),
            ("text/event-stream;q=0.5, application/json", Wants::Json),
            ("text/event-stream;;q=x", Wants::EventStream),
            (
                "multipart/mixed;boundary=\"graphql\";subscriptionSpec=\"1.0\",application/json;q=0.9",
                Wants::Multipart,
            ),
            ("multipart/mixed;boundary=\"a,b\";subscriptionSpec=1.0", Wants::Multipart),
            ("multipart/mixed", Wants::Json),
            ("multipart/mixed;subscriptionSpec=1.0;q=0, */*", Wants::Json),
            ("*/*", Wants::Json),
            ("*/", Wants::Json),
            ("", Wants::Json),
        ];
        for (value, expected) in cases {
            assert_eq!(wants(&accept(value)), expected, "{value}");
        }
        assert_eq!(wants(&HeaderMap::new()), Wants::Json);
    }

    #[test]
    fn graphql_response_json_only_when_not_below_application_json() {
        let cases = [
            ("application/graphql-response+json", true),
            ("application/graphql-response+json, application/json", true),
            (
                "application/json;q=0.9, application/graphql-response+json",
                true,
            ),
            (
                "application/graphql-response+json;q=0.5, application/json",
                false,
            ),
            ("application/graphql-response+json;q=0, */*", false),
            ("application/json", false),
            ("*/*", false),
        ];
        for (value, expected) in cases {
            assert_eq!(
                wants_graphql_response_json(&accept(value)),
                expected,
                "{value}"
            );
        }
    }
}
