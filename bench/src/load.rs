//! The load generator: subscriber connections (graphql-transport-ws or the legacy /ws
//! protocol), paced publishers, and a report of connect time, deliveries/s, latency, lost and
//! duplicated deliveries, server memory per connection and server CPU.
//!
//! Every published body carries `BENCH.<room>.<seq>.<global>.<micros>.`: the room index, the
//! sequence number within the room, a global message number (for the in-flight window) and the
//! send time in microseconds since the generator started. Each subscriber keeps a bitset of the
//! sequence numbers it saw, so a message seen twice is a duplicate and one never seen a loss.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::proc_stats;

/// How subscribers connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Proto {
    /// graphql-transport-ws at /graphql.
    Gql,
    /// The legacy JSON protocol at /ws.
    Legacy,
    /// graphql-sse (distinct connections mode): a `POST /graphql` with
    /// `Accept: text/event-stream` per subscriber.
    Sse,
    /// Apollo's multipart subscriptions: a `POST /graphql` with
    /// `Accept: multipart/mixed;subscriptionSpec=1.0` per subscriber.
    Multipart,
}

/// A subscriber's connection: a WebSocket, or an HTTP response that streams.
pub(crate) enum Conn {
    Ws(Box<Ws>),
    Http {
        response: reqwest::Response,
        /// Bytes read and not yet split into records.
        buffer: Vec<u8>,
        /// Records split off and not yet read.
        records: std::collections::VecDeque<String>,
        /// What ends a record: `\n\n` for SSE, the next part's boundary for multipart.
        separator: &'static [u8],
    },
}

/// What a subscriber's connection gave next.
enum Read {
    Text(String),
    Ping,
    Other,
    Closed,
}

impl Conn {
    async fn read(&mut self) -> Read {
        match self {
            Conn::Ws(ws) => match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"ping\"") => Read::Ping,
                Some(Ok(Message::Text(t))) => Read::Text(t.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Read::Closed,
                Some(Ok(_)) => Read::Other,
            },
            Conn::Http {
                response,
                buffer,
                records,
                separator,
            } => loop {
                if let Some(record) = records.pop_front() {
                    return Read::Text(record);
                }
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        buffer.extend_from_slice(&chunk);
                        // Every complete record of the buffer at once, then one drain.
                        let mut from = 0;
                        while let Some(end) = record_end(&buffer[from..], separator) {
                            let end = from + end;
                            records.push_back(
                                String::from_utf8_lossy(&buffer[from..end]).into_owned(),
                            );
                            from = end;
                        }
                        buffer.drain(..from);
                    }
                    Ok(None) | Err(_) => return Read::Closed,
                }
            },
        }
    }

    async fn pong(&mut self) {
        if let Conn::Ws(ws) = self {
            let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
        }
    }

    async fn close(self) {
        if let Conn::Ws(mut ws) = self {
            let _ = Ws::close(&mut ws, None).await;
        }
    }
}

/// Where the first complete record of `bytes` ends. An SSE event ends with its blank line. A
/// multipart part has no end of its own (the next boundary ends it, which may come only with
/// the next heartbeat): it is complete once its JSON body is, as the body's braces tell.
fn record_end(bytes: &[u8], separator: &[u8]) -> Option<usize> {
    if separator == b"\n\n" {
        return find(bytes, separator).map(|at| at + separator.len());
    }
    let start = find(bytes, separator)?;
    let body = start + find(&bytes[start..], b"\r\n\r\n")? + 4;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes[body..].iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(body + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a graphql-ws subscriber subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Sub {
    /// `messageAdded(roomId:)`: the user joins the room first.
    Message,
    /// `events(channels: ["public:<room>"])`: no membership needed.
    Events,
}

/// How publishers publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Publish {
    /// The `sendMessage` mutation over HTTP.
    Http,
    /// `message` frames over a legacy /ws socket.
    Ws,
    /// `POST /api/publish` with an admin token, to channel `public:<room>`.
    Api,
    /// No publishing: connect, hold, report memory.
    None,
}

#[derive(Clone, Debug, Args)]
pub struct LoadArgs {
    /// Base HTTP URL of the server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Further servers (base HTTP URLs) that subscribers are spread over, round robin with
    /// `--url` (instances sharing a database and Redis); publishers use `--url`.
    #[arg(long = "also")]
    pub also: Vec<String>,
    /// Subscriber protocol.
    #[arg(long, value_enum, default_value = "gql")]
    pub proto: Proto,
    /// Subscription (graphql-ws only).
    #[arg(long, value_enum, default_value = "message")]
    pub sub: Sub,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Index of this process's first user (to split a load over several processes).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Rooms; subscriber i is in room i % rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Prefix of room ids (a fresh prefix per run keeps rooms apart).
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// Prefix of user names.
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// `joinRoom` requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub join_concurrency: usize,
    /// Skip `joinRoom` (for servers without membership: the references).
    #[arg(long)]
    pub skip_join: bool,
    /// HS256 secret the server verifies tokens with.
    #[arg(
        long,
        env = "TIDINGS_JWT_SECRET",
        default_value = "tidings-bench-secret-0123456789abcdef"
    )]
    pub secret: String,
    /// How messages are published.
    #[arg(long, value_enum, default_value = "http")]
    pub publish: Publish,
    /// Publisher tasks (each with its own socket for `--publish ws`).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second over all publishers; 0: as fast as the window allows.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Messages in flight at most (published and not yet delivered to every subscriber).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Messages at most.
    #[arg(long, default_value_t = 200_000)]
    pub max_messages: usize,
    /// Seconds to hold the connections after they are up, before publishing.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Seconds at most to wait for outstanding deliveries after publishing stops.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Seconds at most for the whole run (a hard stop).
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// The server's process id, for RSS and CPU (repeat for several instances: summed).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// A label for the report (target and scenario).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the JSON report here (else stdout).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Once every connection is up, create this file (for scripts that measure meanwhile).
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Run without printing a report (the smoke test reads the returned value).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub proto: Option<Proto>,
    pub subscribers: usize,
    pub connected: usize,
    pub connect_failures: usize,
    pub rooms: usize,
    pub join_seconds: f64,
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    pub connect_latency: Latency,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_rate: f64,
    pub publish_latency: Latency,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub subscriber_errors: u64,
    pub measure_seconds: f64,
    pub deliveries_per_second: f64,
    pub latency: Latency,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    pub server_rss_per_connection_kib: f64,
    pub server_cpu_percent: f64,
    pub generator_cpu_percent: f64,
    pub drained: bool,
}

/// Shared state of one run.
struct Shared {
    start: Instant,
    /// Per global message: subscribers that received it.
    counts: Vec<AtomicU32>,
    /// Subscribers per room (in this process).
    room_size: Vec<u32>,
    /// Room of each global message.
    message_room: Vec<AtomicU32>,
    window: Semaphore,
    completed: AtomicU64,
    deliveries: AtomicU64,
    last_delivery_us: AtomicU64,
    latency: Vec<Mutex<Histogram<u64>>>,
    ready: AtomicU64,
    stop: tokio::sync::watch::Sender<bool>,
    subscriber_errors: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub(crate) fn latency_of(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    role: &'a str,
    exp: i64,
    iat: i64,
}

/// An HS256 token with the claims Tidings reads.
pub fn token(secret: &str, user: &str, role: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = Claims {
        sub: user,
        name: user,
        role,
        exp: now + 6 * 3600,
        iat: now,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

/// The `BENCH.` marker of a frame: (room, seq, global, micros). Only the first one counts (the
/// legacy protocol mirrors fields in `data`).
fn parse_marker(text: &str) -> Option<(u32, u64, u64, u64)> {
    let at = text.find("BENCH.")?;
    let mut parts = text[at + 6..].splitn(5, '.');
    let room = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let global = parts.next()?.parse().ok()?;
    let micros = parts.next()?.parse().ok()?;
    Some((room, seq, global, micros))
}

fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .context("url without host")?;
    let host_only = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let ok = host_only == "localhost"
        || host_only
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || host
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
    if !ok {
        bail!("{url}: the generator drives loopback servers only");
    }
    Ok(())
}

pub(crate) fn ws_base(url: &str) -> String {
    url.trim_end_matches('/')
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1)
}

fn user_name(args: &LoadArgs, i: usize) -> String {
    format!("{}{}", args.user_prefix, args.offset + i)
}

fn room_name(args: &LoadArgs, r: usize) -> String {
    format!("{}{}", args.room_prefix, r)
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: the generator holds thousands of sockets.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn open(url: &str, subprotocol: Option<&str>) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse()?);
    }
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true).await?;
    Ok(ws)
}

/// Opens one subscriber and returns once it is subscribed (graphql-ws: acknowledged and the
/// subscribe sent; legacy: `joined_room` received).
async fn connect_subscriber(
    args: &LoadArgs,
    client: &reqwest::Client,
    i: usize,
) -> anyhow::Result<Conn> {
    let user = user_name(args, i);
    let room = room_name(args, i % args.rooms);
    let token = token(&args.secret, &user, "user");
    let base = if args.also.is_empty() {
        ws_base(&args.url)
    } else {
        let n = args.also.len() + 1;
        match i % n {
            0 => ws_base(&args.url),
            k => ws_base(&args.also[k - 1]),
        }
    };
    let payload = match args.sub {
        Sub::Message => json!({
            "query": "subscription($r: ID!) { messageAdded(roomId: $r) { id body } }",
            "variables": {"r": room},
        }),
        Sub::Events => json!({
            "query": "subscription($c: [String!]) { events(channels: $c) { data } }",
            "variables": {"c": [format!("public:{room}")]},
        }),
    };
    match args.proto {
        Proto::Sse | Proto::Multipart => {
            let http_base = base.replacen("ws://", "http://", 1);
            let (accept, separator): (&str, &'static [u8]) = match args.proto {
                Proto::Sse => ("text/event-stream", b"\n\n"),
                _ => (
                    "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0,application/json",
                    b"\r\n--graphql",
                ),
            };
            let response = client
                .post(format!("{http_base}/graphql"))
                .bearer_auth(&token)
                .header("accept", accept)
                .json(&payload)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("stream refused: {}", response.status());
            }
            Ok(Conn::Http {
                response,
                buffer: Vec::new(),
                records: Default::default(),
                separator,
            })
        }
        Proto::Gql => {
            let mut ws = open(&format!("{base}/graphql"), Some("graphql-transport-ws")).await?;
            ws.send(Message::text(
                json!({"type":"connection_init","payload":{"authToken": token}}).to_string(),
            ))
            .await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("connection_ack") => break,
                    Some(Ok(Message::Text(t))) if t.contains("\"ping\"") => {
                        ws.send(Message::text(r#"{"type":"pong"}"#)).await?
                    }
                    Some(Ok(Message::Text(t))) => bail!("before ack: {t}"),
                    Some(Ok(Message::Close(c))) => bail!("closed before ack: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("closed before ack"),
                }
            }
            ws.send(Message::text(
                json!({"id":"1","type":"subscribe","payload": payload}).to_string(),
            ))
            .await?;
            Ok(Conn::Ws(Box::new(ws)))
        }
        Proto::Legacy => {
            let mut ws = open(&format!("{base}/ws?token={token}"), None).await?;
            ws.send(Message::text(
                json!({"type":"join_room","room": room}).to_string(),
            ))
            .await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("joined_room") => break,
                    Some(Ok(Message::Text(t))) if t.contains("\"error\"") => bail!("join: {t}"),
                    Some(Ok(Message::Close(c))) => bail!("closed before join: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("closed before join"),
                }
            }
            Ok(Conn::Ws(Box::new(ws)))
        }
    }
}

#[derive(Default)]
struct SubStats {
    seen: Vec<u64>,
    received: u64,
    duplicated: u64,
}

impl SubStats {
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let fresh = self.seen[word] & (1 << bit) == 0;
        self.seen[word] |= 1 << bit;
        fresh
    }
    fn unique(&self) -> u64 {
        self.seen.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// Reads frames until told to stop; answers pings; marks deliveries.
async fn run_subscriber(mut conn: Conn, shared: Arc<Shared>, index: usize) -> SubStats {
    let mut stats = SubStats::default();
    let mut stop = shared.stop.subscribe();
    let mut ready = false;
    let shard = &shared.latency[index % shared.latency.len()];
    loop {
        let read = tokio::select! {
            _ = stop.changed() => break,
            r = conn.read() => r,
        };
        let text = match read {
            Read::Text(t) => t,
            Read::Ping => {
                conn.pong().await;
                continue;
            }
            Read::Closed => {
                shared.subscriber_errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Read::Other => continue,
        };
        if let Some((_room, seq, global, micros)) = parse_marker(&text) {
            let now = shared.now_us();
            stats.received += 1;
            if stats.mark(seq) {
                shared.deliveries.fetch_add(1, Ordering::Relaxed);
                shared.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                if let Ok(mut h) = shard.lock() {
                    let _ = h.record(now.saturating_sub(micros).max(1));
                }
                if let Some(c) = shared.counts.get(global as usize) {
                    let room = shared.message_room[global as usize].load(Ordering::Relaxed);
                    let want = shared.room_size[room as usize];
                    if c.fetch_add(1, Ordering::AcqRel) + 1 == want {
                        shared.completed.fetch_add(1, Ordering::AcqRel);
                        shared.window.add_permits(1);
                    }
                }
            } else {
                stats.duplicated += 1;
            }
        } else if text.contains("WARM.") {
            if !ready {
                ready = true;
                shared.ready.fetch_add(1, Ordering::AcqRel);
            }
        } else if text.contains("\"type\":\"error\"")
            || text.contains("\"type\":\"complete\"")
            || text.contains("event: complete")
            || text.contains("\"errors\"")
        {
            shared.subscriber_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    conn.close().await;
    stats
}

/// One way to publish a body to a room.
enum Publisher {
    Http {
        client: reqwest::Client,
        url: String,
        tokens: Arc<Vec<String>>,
    },
    Api {
        client: reqwest::Client,
        url: String,
        token: String,
    },
    Ws {
        sink: tokio::sync::Mutex<futures_util::stream::SplitSink<Ws, Message>>,
    },
}

impl Publisher {
    async fn send(&self, args: &LoadArgs, room: usize, body: String) -> anyhow::Result<()> {
        let room_id = room_name(args, room);
        match self {
            Publisher::Http {
                client,
                url,
                tokens,
            } => {
                let res = client
                    .post(url)
                    .bearer_auth(&tokens[room])
                    .json(&json!({
                        "query": "mutation($r: ID!, $b: String!) { sendMessage(roomId: $r, body: $b) { id } }",
                        "variables": {"r": room_id, "b": body},
                    }))
                    .send()
                    .await?;
                let status = res.status();
                let v: Value = res.json().await?;
                if !status.is_success() || v.get("errors").is_some() {
                    bail!("sendMessage: {status} {v}");
                }
                Ok(())
            }
            Publisher::Api { client, url, token } => {
                let res = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"channel": format!("public:{room_id}"), "type": "bench", "data": body}))
                    .send()
                    .await?;
                if !res.status().is_success() {
                    bail!("publish: {} {}", res.status(), res.text().await?);
                }
                Ok(())
            }
            Publisher::Ws { sink } => {
                let frame = json!({"type":"message","room": room_id, "text": body}).to_string();
                sink.lock().await.send(Message::text(frame)).await?;
                Ok(())
            }
        }
    }
}

async fn make_publisher(
    args: &LoadArgs,
    client: &reqwest::Client,
    index: usize,
) -> anyhow::Result<Publisher> {
    let base = args.url.trim_end_matches('/');
    // The publisher of room r is the room's first subscriber's user: a member.
    let tokens: Vec<String> = (0..args.rooms)
        .map(|r| token(&args.secret, &user_name(args, r), "user"))
        .collect();
    Ok(match args.publish {
        Publish::Http | Publish::None => Publisher::Http {
            client: client.clone(),
            url: format!("{base}/graphql"),
            tokens: Arc::new(tokens),
        },
        Publish::Api => Publisher::Api {
            client: client.clone(),
            url: format!("{base}/api/publish"),
            token: token(&args.secret, "bench-admin", "admin"),
        },
        Publish::Ws => {
            // One socket per publisher, as the first member of room `index`; it joins every room
            // it publishes to.
            let user = user_name(args, index % args.rooms.max(1));
            let t = token(&args.secret, &user, "user");
            let ws = open(&format!("{}/ws?token={t}", ws_base(&args.url)), None).await?;
            let (mut sink, mut stream) = ws.split();
            for r in (index..args.rooms).step_by(args.publishers) {
                sink.send(Message::text(
                    json!({"type":"join_room","room": room_name(args, r)}).to_string(),
                ))
                .await?;
            }
            // Discard what comes back (its own messages, system frames).
            tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
            Publisher::Ws {
                sink: tokio::sync::Mutex::new(sink),
            }
        }
    })
}

async fn join_all(args: &LoadArgs, client: &reqwest::Client) -> anyhow::Result<()> {
    let url = format!("{}/graphql", args.url.trim_end_matches('/'));
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..args.subscribers)
        .map(|i| {
            let url = url.clone();
            let client = client.clone();
            let t = token(&args.secret, &user_name(args, i), "user");
            let room = room_name(args, i % args.rooms);
            async move {
                let v: Value = client
                    .post(&url)
                    .bearer_auth(t)
                    .json(&json!({
                        "query": "mutation($r: ID!) { joinRoom(roomId: $r) { id } }",
                        "variables": {"r": room},
                    }))
                    .send()
                    .await?
                    .json()
                    .await?;
                if v.get("errors").is_some() {
                    bail!("joinRoom: {v}");
                }
                Ok(())
            }
        })
        .buffer_unordered(args.join_concurrency.max(1))
        .collect()
        .await;
    let failures: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    if let Some(e) = failures.first() {
        bail!("{} joins failed, first: {e:#}", failures.len());
    }
    Ok(())
}

/// Runs one load and returns its report.
pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    let deadline = Duration::from_secs_f64(args.timeout);
    match tokio::time::timeout(deadline, run_inner(args)).await {
        Ok(r) => r,
        Err(_) => bail!("the run exceeded --timeout"),
    }
}

async fn run_inner(args: LoadArgs) -> anyhow::Result<Report> {
    check_loopback(&args.url)?;
    for u in &args.also {
        check_loopback(u)?;
    }
    if args.rooms == 0 || args.subscribers < args.rooms {
        bail!("need at least one subscriber per room");
    }
    let start = Instant::now();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut report = Report {
        label: args.label.clone(),
        proto: Some(args.proto),
        subscribers: args.subscribers,
        rooms: args.rooms,
        ..Default::default()
    };

    // 1. Membership.
    let needs_join = args.sub == Sub::Message || args.proto == Proto::Legacy;
    if needs_join && !args.skip_join {
        let t = Instant::now();
        join_all(&args, &client).await?;
        report.join_seconds = t.elapsed().as_secs_f64();
    }

    let pids = args.server_pid.clone();
    let rss = || -> u64 { pids.iter().filter_map(|p| proc_stats::rss_kib(*p)).sum() };
    let cpu = || -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        Some(
            pids.iter()
                .filter_map(|p| proc_stats::cpu_seconds(*p))
                .sum(),
        )
    };
    report.server_rss_before_kib = rss();

    let mut room_size = vec![0u32; args.rooms];
    for i in 0..args.subscribers {
        room_size[i % args.rooms] += 1;
    }
    let max_messages = if args.publish == Publish::None {
        0
    } else {
        args.max_messages
    };
    let (stop, _) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        start,
        counts: (0..max_messages).map(|_| AtomicU32::new(0)).collect(),
        message_room: (0..max_messages).map(|_| AtomicU32::new(0)).collect(),
        room_size,
        window: Semaphore::new(args.window.max(1)),
        completed: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        latency: (0..16).map(|_| Mutex::new(histogram())).collect(),
        ready: AtomicU64::new(0),
        stop,
        subscriber_errors: AtomicU64::new(0),
    });

    // 2. Subscribers, with bounded connect concurrency. HTTP streams each hold a connection of
    // this client for their whole life.
    let streams = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let connect_hist = Mutex::new(histogram());
    let t_connect = Instant::now();
    let outcomes: Vec<Option<tokio::task::JoinHandle<SubStats>>> =
        futures_util::stream::iter(0..args.subscribers)
            .map(|i| {
                let args = &args;
                let shared = shared.clone();
                let connect_hist = &connect_hist;
                let streams = &streams;
                async move {
                    let t = Instant::now();
                    match connect_subscriber(args, streams, i).await {
                        Ok(ws) => {
                            if let Ok(mut h) = connect_hist.lock() {
                                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                            }
                            Some(tokio::spawn(run_subscriber(ws, shared, i)))
                        }
                        Err(e) => {
                            if !args.quiet {
                                eprintln!("subscriber {i}: {e:#}");
                            }
                            None
                        }
                    }
                }
            })
            .buffer_unordered(args.connect_concurrency.max(1))
            .collect()
            .await;
    report.connect_seconds = t_connect.elapsed().as_secs_f64();
    report.connected = outcomes.iter().filter(|o| o.is_some()).count();
    report.connect_failures = args.subscribers - report.connected;
    report.connects_per_second = report.connected as f64 / report.connect_seconds.max(1e-9);
    report.connect_latency = latency_of(&connect_hist.lock().expect("lock"));
    if !args.quiet {
        eprintln!(
            "{}: {} connected in {:.2}s ({} failed)",
            args.label, report.connected, report.connect_seconds, report.connect_failures
        );
    }

    let publishers: Vec<Arc<Publisher>> = if args.publish == Publish::None {
        Vec::new()
    } else {
        let mut v = Vec::new();
        for p in 0..args.publishers.max(1) {
            v.push(Arc::new(make_publisher(&args, &client, p).await?));
        }
        v
    };

    // 3. Warm-up: publish WARM. until every subscriber saw one (its subscription is live).
    if !publishers.is_empty() {
        let t = Instant::now();
        while (shared.ready.load(Ordering::Acquire) as usize) < report.connected {
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "warm-up: only {} of {} subscribers live after 60 s",
                    shared.ready.load(Ordering::Acquire),
                    report.connected
                );
            }
            for r in 0..args.rooms {
                let p = &publishers[r % publishers.len()];
                if let Err(e) = p.send(&args, r, "WARM.".to_owned()).await {
                    bail!("warm-up publish: {e:#}");
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Let the last warm-up frames arrive so they do not count as latency.
        tokio::time::sleep(Duration::from_millis(300)).await;
    } else {
        // Subscriptions without a publisher: give the server a moment to register them.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Ready means connected: a script that split the load over processes measures the server
    // while every process still holds its connections (`--hold`).
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", report.connected))?;
    }
    if args.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    report.server_rss_after_kib = rss();
    if report.connected > 0 {
        report.server_rss_per_connection_kib = (report.server_rss_after_kib as f64
            - report.server_rss_before_kib as f64)
            / report.connected as f64;
    }

    // 4. Publishing, paced, within the window.
    let cpu_before = cpu();
    let gen_before = proc_stats::cpu_seconds(std::process::id());
    let t_pub = Instant::now();
    let first_publish_us = shared.now_us();
    let published = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let next_global = Arc::new(AtomicU64::new(0));
    let room_seq: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.rooms).map(|_| AtomicU64::new(0)).collect());
    let pub_hist = Arc::new(Mutex::new(histogram()));
    // Messages whose publish failed: not expected unless delivered anyway.
    let failed: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let n_pub = publishers.len();
    for (p, publisher) in publishers.iter().enumerate() {
        let args = args.clone();
        let shared = shared.clone();
        let publisher = publisher.clone();
        let failed = failed.clone();
        let (published, errors, next_global, room_seq, pub_hist, stop_publishing) = (
            published.clone(),
            errors.clone(),
            next_global.clone(),
            room_seq.clone(),
            pub_hist.clone(),
            stop_publishing.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // The rate is the whole load's: only publishers with a room of their own share it.
            let per = args.rate / n_pub.min(args.rooms.max(1)) as f64;
            let mut tick = (per > 0.0).then(|| {
                let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / per));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                i
            });
            let rooms: Vec<usize> = (p..args.rooms).step_by(n_pub).collect();
            if rooms.is_empty() {
                return;
            }
            let mut k = 0usize;
            let end = Duration::from_secs_f64(args.duration);
            let mut inflight = Vec::new();
            loop {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if t_pub.elapsed() >= end || stop_publishing.load(Ordering::Relaxed) {
                    break;
                }
                let permit = tokio::select! {
                    p = shared.window.acquire() => p,
                    _ = tokio::time::sleep(end.saturating_sub(t_pub.elapsed())) => break,
                };
                let Ok(permit) = permit else { break };
                permit.forget();
                let global = next_global.fetch_add(1, Ordering::AcqRel);
                if global as usize >= shared.counts.len() {
                    stop_publishing.store(true, Ordering::Relaxed);
                    break;
                }
                let room = rooms[k % rooms.len()];
                k += 1;
                shared.message_room[global as usize].store(room as u32, Ordering::Relaxed);
                let seq = room_seq[room].fetch_add(1, Ordering::AcqRel);
                let sent = shared.now_us();
                let body = format!("BENCH.{room}.{seq}.{global}.{sent}.");
                published.fetch_add(1, Ordering::AcqRel);
                let (args2, publisher2, errors2, pub_hist2, failed2) = (
                    args.clone(),
                    publisher.clone(),
                    errors.clone(),
                    pub_hist.clone(),
                    failed.clone(),
                );
                let send = async move {
                    let t = Instant::now();
                    if let Err(e) = publisher2.send(&args2, room, body).await {
                        if errors2.fetch_add(1, Ordering::Relaxed) == 0 && !args2.quiet {
                            eprintln!("{}: publish failed: {e:#}", args2.label);
                        }
                        if let Ok(mut f) = failed2.lock() {
                            f.push(global);
                        }
                    }
                    if let Ok(mut h) = pub_hist2.lock() {
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    }
                };
                if matches!(*publisher, Publisher::Ws { .. }) {
                    send.await;
                } else {
                    inflight.push(tokio::spawn(send));
                    inflight.retain(|h| !h.is_finished());
                }
            }
            for h in inflight {
                let _ = h.await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let publish_seconds = t_pub.elapsed().as_secs_f64();

    // 5. Drain: wait until every published message reached every subscriber, or time out.
    let total = published.load(Ordering::Acquire);
    let t_drain = Instant::now();
    let mut drained = true;
    if total > 0 {
        while shared.completed.load(Ordering::Acquire) < total {
            if t_drain.elapsed() > Duration::from_secs_f64(args.drain) {
                drained = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let cpu_after = cpu();
    let gen_after = proc_stats::cpu_seconds(std::process::id());
    let wall = t_pub.elapsed().as_secs_f64();
    let _ = shared.stop.send(true);

    let mut expected = 0u64;
    let mut unique = 0u64;
    let mut duplicated = 0u64;
    let mut received = 0u64;
    for (i, o) in outcomes.into_iter().enumerate() {
        let Some(handle) = o else { continue };
        let stats = handle.await.unwrap_or_default();
        let room = i % args.rooms;
        expected += room_seq[room].load(Ordering::Acquire);
        unique += stats.unique();
        duplicated += stats.duplicated;
        received += stats.received;
    }
    let _ = received;
    // A failed publish may or may not have reached the hub: expect only what was delivered.
    for &g in failed.lock().expect("lock").iter() {
        let room = shared.message_room[g as usize].load(Ordering::Relaxed) as usize;
        let delivered = shared.counts[g as usize].load(Ordering::Acquire) as u64;
        expected = expected.saturating_sub(shared.room_size[room] as u64 - delivered);
    }
    let mut lat = histogram();
    for h in &shared.latency {
        lat.add(&*h.lock().expect("lock")).expect("merge");
    }
    report.published = total;
    report.publish_errors = errors.load(Ordering::Acquire);
    report.publish_rate = total as f64 / publish_seconds.max(1e-9);
    report.publish_latency = latency_of(&pub_hist.lock().expect("lock"));
    report.expected_deliveries = expected;
    report.deliveries = unique;
    report.lost = expected.saturating_sub(unique);
    report.duplicated = duplicated;
    report.subscriber_errors = shared.subscriber_errors.load(Ordering::Acquire);
    let last = shared.last_delivery_us.load(Ordering::Acquire);
    report.measure_seconds = (last.saturating_sub(first_publish_us)) as f64 / 1e6;
    report.deliveries_per_second = if report.measure_seconds > 0.0 {
        unique as f64 / report.measure_seconds
    } else {
        0.0
    };
    report.latency = latency_of(&lat);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        report.server_cpu_percent = (b - a) / wall * 100.0;
    }
    if let (Some(a), Some(b)) = (gen_before, gen_after) {
        report.generator_cpu_percent = (b - a) / wall * 100.0;
    }
    report.drained = drained;
    Ok(report)
}

/// Prints or writes a report.
pub fn emit(args: &LoadArgs, report: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    match &args.json {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => println!("{text}"),
    }
    if !args.quiet {
        eprintln!(
            "{}: {:.0} deliveries/s, p50 {:.2} ms p99 {:.2} ms max {:.1} ms, lost {}, dup {}, {:.2} KiB/conn, server CPU {:.0}%",
            report.label,
            report.deliveries_per_second,
            report.latency.p50_ms,
            report.latency.p99_ms,
            report.latency.max_ms,
            report.lost,
            report.duplicated,
            report.server_rss_per_connection_kib,
            report.server_cpu_percent
        );
    }
    Ok(())
}

#[derive(Clone, Debug, Args)]
pub struct MergeArgs {
    /// Reports of generator processes that shared one load.
    pub reports: Vec<std::path::PathBuf>,
    /// Server RSS (KiB) before any process connected.
    #[arg(long)]
    pub rss_before: u64,
    /// Server RSS (KiB) once every process was connected.
    #[arg(long)]
    pub rss_after: u64,
    /// Label of the merged report.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Sums the reports of generator processes that shared one load into one report (stdout).
pub fn merge(args: &MergeArgs) -> anyhow::Result<()> {
    let mut out = Report {
        label: args.label.clone(),
        ..Default::default()
    };
    for path in &args.reports {
        let r: Report = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        out.proto = r.proto;
        out.subscribers += r.subscribers;
        out.connected += r.connected;
        out.connect_failures += r.connect_failures;
        out.connect_seconds = out.connect_seconds.max(r.connect_seconds);
        out.published += r.published;
        out.expected_deliveries += r.expected_deliveries;
        out.deliveries += r.deliveries;
        out.lost += r.lost;
        out.duplicated += r.duplicated;
        out.subscriber_errors += r.subscriber_errors;
        // The processes ran side by side: their rates add up; their latencies and the
        // server's CPU (each process measured the same servers) are the worst any one saw.
        out.publish_rate += r.publish_rate;
        out.deliveries_per_second += r.deliveries_per_second;
        out.measure_seconds = out.measure_seconds.max(r.measure_seconds);
        out.server_cpu_percent = out.server_cpu_percent.max(r.server_cpu_percent);
        out.generator_cpu_percent += r.generator_cpu_percent;
        out.latency = worst(&out.latency, &r.latency);
        out.publish_latency = worst(&out.publish_latency, &r.publish_latency);
        out.drained = if path == &args.reports[0] {
            r.drained
        } else {
            out.drained && r.drained
        };
    }
    out.connects_per_second = out.connected as f64 / out.connect_seconds.max(1e-9);
    out.server_rss_before_kib = args.rss_before;
    out.server_rss_after_kib = args.rss_after;
    if out.connected > 0 {
        out.server_rss_per_connection_kib =
            (args.rss_after as f64 - args.rss_before as f64) / out.connected as f64;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Each percentile the higher of the two.
fn worst(a: &Latency, b: &Latency) -> Latency {
    Latency {
        p50_ms: a.p50_ms.max(b.p50_ms),
        p90_ms: a.p90_ms.max(b.p90_ms),
        p99_ms: a.p99_ms.max(b.p99_ms),
        max_ms: a.max_ms.max(b.max_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_once() {
        let f = r#"{"type":"message","text":"BENCH.3.17.99.123456.","data":{"text":"BENCH.3.17.99.123456."}}"#;
        assert_eq!(parse_marker(f), Some((3, 17, 99, 123456)));
        assert_eq!(parse_marker("WARM."), None);
    }

    #[test]
    fn only_loopback() {
        assert!(check_loopback("http://127.0.0.1:8000").is_ok());
        assert!(check_loopback("http://localhost:1/x").is_ok());
        assert!(check_loopback("http://[::1]:8000").is_ok());
        assert!(check_loopback("http://example.com:80").is_err());
        assert!(check_loopback("http://10.0.0.1:80").is_err());
    }

    #[test]
    fn bitset_counts_duplicates() {
        let mut s = SubStats::default();
        assert!(s.mark(5));
        assert!(!s.mark(5));
        assert!(s.mark(200));
        assert_eq!(s.unique(), 2);
    }
}
