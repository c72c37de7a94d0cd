//! `tidings-bench gen2`: a second load generator, written apart from `load` so that what one
//! of them reports can be checked against the other. It drives the floor and Tidings the way
//! `load` does (the same tokens, `joinRoom` over HTTP, the same subscription documents and
//! variables, `sendMessage` or `POST /api/publish`, and the same `BENCH.<room>.<seq>.<global>.
//! <micros>.` marker in every body), and shares none of its client code.
//!
//! Its WebSocket client is written by hand on a tokio `TcpStream`: the upgrade request and the
//! check of `Sec-WebSocket-Accept`, masked client frames, unmasked server frames, fragments,
//! ping/pong and close (RFC 6455). Two reasons. Independence: `load` reads with tungstenite,
//! and tungstenite is also what the floor (through axum) and Tidings' socket reader are built
//! on; a client sharing none of that code cannot share a quirk of it with either server.
//! Cost: the generator shares two cores with the server, and this client parses every frame
//! in place in one read buffer per connection, finds the marker in the bytes and allocates
//! nothing per frame (no `String`, no UTF-8 check, no message queue), so less of the two cores
//! goes to the measuring side. HTTP (joins and publishing, a few thousand requests a second)
//! goes through reqwest: what is cross-checked here is the delivery path.
//!
//! Accounting is its own as well: each subscriber keeps a bitset of the sequence numbers of
//! its room (seen twice: a duplicate; published, accepted and never seen: lost), its latency
//! samples in a local batch merged into `hdrhistogram`s, and its count of unique deliveries in
//! a slot of its own that the publisher reads for the in-flight window and the drain. Its
//! publisher is open loop: message k is due at k / rate seconds after publishing began,
//! whether or not earlier ones were answered, bounded only by the window.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::proc_stats;

#[derive(Debug, Args)]
pub struct Gen2Cli {
    #[command(subcommand)]
    pub command: Gen2Command,
}

#[derive(Debug, Subcommand)]
pub enum Gen2Command {
    /// Subscribers of a room and an open-loop publisher: deliveries/s, latency, lost and
    /// duplicated deliveries.
    Push(Gen2Args),
    /// Open subscriptions and hold them: connects/s and the server's RSS per subscription.
    #[command(alias = "idle")]
    Connects(Gen2Args),
    /// Sum the reports of processes that shared one `connects` load.
    Merge(Gen2MergeArgs),
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Push,
    Connects,
}

/// The subscription each subscriber holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Subscription {
    /// `messageAdded(roomId:)`; the user joins the room first.
    Message,
    /// `events(channels: ["public:<room>"])`; no membership.
    Events,
}

/// How messages are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum Publishing {
    /// The `sendMessage` mutation, as the room's first member.
    Http,
    /// `POST /api/publish` to `public:<room>` with an admin token.
    Api,
}

#[derive(Clone, Debug, Args)]
pub struct Gen2Args {
    /// Base URL of the server: plain `http://`, loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// HS256 secret the server verifies tokens with.
    #[arg(
        long,
        env = "TIDINGS_JWT_SECRET",
        default_value = "tidings-bench-secret-0123456789abcdef"
    )]
    pub secret: String,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Index of this process's first user (a load split over processes).
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Rooms; subscriber i is in room i % rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Prefix of room ids.
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// Prefix of user names.
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// What each subscriber subscribes to.
    #[arg(long, value_enum, default_value = "message")]
    pub sub: Subscription,
    /// Skip `joinRoom` (servers without membership: the floor).
    #[arg(long)]
    pub skip_join: bool,
    /// `joinRoom` requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub join_concurrency: usize,
    /// Connections being opened at once (TCP, upgrade, init, ack, subscribe).
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// How messages are published (push).
    #[arg(long, value_enum, default_value = "http")]
    pub publish: Publishing,
    /// Messages per second offered over all rooms, open loop; 0: as fast as the window allows.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Messages of one room published and not yet seen by all its subscribers, at most; a due
    /// message waits while the window is full (0: no window).
    #[arg(long, default_value_t = 4000)]
    pub window: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages at most.
    #[arg(long, default_value_t = 200_000)]
    pub max_messages: u64,
    /// Seconds at most to wait for outstanding deliveries once publishing stopped.
    #[arg(long, default_value_t = 20.0)]
    pub drain: f64,
    /// Seconds to hold the connections once they are up (after the ready file).
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Seconds at most for the whole run.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// The server's process id, for RSS and CPU (repeatable: summed).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// A label for the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the JSON report here (else stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Create this file once every connection is up (scripts measure the server meanwhile).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print nothing but the report.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Debug, Args)]
pub struct Gen2MergeArgs {
    /// Reports of the processes that shared one load.
    pub reports: Vec<PathBuf>,
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

/// Percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A run's figures. The fields `load`'s report also has mean the same here.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Gen2Report {
    pub generator: String,
    pub mode: String,
    pub label: String,
    pub subscribers: usize,
    pub connected: usize,
    pub connect_failures: usize,
    pub rooms: usize,
    pub join_seconds: f64,
    /// From the first connect begun to the last one done (subscribe sent).
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    pub connect_latency: Percentiles,
    /// Wall-clock bounds of the connect phase, for merging processes that ran side by side.
    pub connect_started_unix_us: u64,
    pub connect_finished_unix_us: u64,
    pub offered_rate: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_rate: f64,
    pub publish_latency: Percentiles,
    /// Due messages that had to wait for the window.
    pub window_stalls: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Subscribers closed early, error or complete frames, markers of another room.
    pub subscriber_errors: u64,
    pub measure_seconds: f64,
    pub deliveries_per_second: f64,
    pub latency: Percentiles,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    pub server_rss_per_connection_kib: f64,
    pub server_cpu_percent: f64,
    pub generator_cpu_percent: f64,
    pub drained: bool,
}

// ---------------------------------------------------------------------------------------------
// The WebSocket client.

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// The largest frame or message accepted from a server.
const MAX_MESSAGE: usize = 16 << 20;
/// A connection's read buffer starts this small (thousands of idle sockets) ...
const BUFFER_START: usize = 4096;
/// ... and doubles, up to this, while reads fill it whole (fan-out at full speed).
const BUFFER_GROWN: usize = 64 << 10;
const HANDSHAKE_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// splitmix64, for handshake keys and mask keys. RFC 6455 wants masks an intermediary cannot
/// predict; on loopback there is none, and a seeded sequence per connection is enough.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(HANDSHAKE_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Appends a client frame (FIN set, masked) to `out`.
fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A server frame's header at the front of `bytes`: (fin, opcode, header length, payload
/// length), or `None` while the header is incomplete.
fn frame_header(bytes: &[u8]) -> anyhow::Result<Option<(bool, u8, usize, usize)>> {
    let (Some(&b0), Some(&b1)) = (bytes.first(), bytes.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        bail!("a frame with reserved bits set (no extension was negotiated)");
    }
    if b1 & 0x80 != 0 {
        bail!("a masked server frame");
    }
    let (len, header) = match b1 & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    if len > MAX_MESSAGE as u64 {
        bail!("a frame of {len} bytes");
    }
    Ok(Some((b0 & 0x80 != 0, b0 & 0x0F, header, len as usize)))
}

/// What a connection gave next.
enum Got {
    /// A whole message, unfragmented: its bytes in the read buffer.
    Message(Range<usize>),
    /// A message put together from fragments: its bytes in `Socket::assembled`.
    Assembled,
    /// A ping, its payload in the read buffer.
    Ping(Range<usize>),
    Close,
}

/// One client connection after the upgrade.
struct Socket {
    stream: TcpStream,
    /// Bytes `start..end` are read and not yet parsed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    assembled: Vec<u8>,
    in_fragments: bool,
    mix: Mix,
    /// Frames to send, put together before one write.
    out: Vec<u8>,
}

impl Socket {
    /// Opens a TCP connection to `addr` and upgrades it at `path`, offering `protocol`.
    async fn open(
        addr: SocketAddr,
        host: &str,
        path: &str,
        protocol: &str,
        seed: u64,
    ) -> anyhow::Result<Socket> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut mix = Mix(seed);
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&mix.next().to_le_bytes());
        key[8..].copy_from_slice(&mix.next().to_le_bytes());
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; BUFFER_START];
        let mut end = 0;
        let head_end = loop {
            if let Some(at) = memchr::memmem::find(&buf[..end], b"\r\n\r\n") {
                break at + 4;
            }
            if end == buf.len() {
                bail!("an upgrade response over {} bytes", buf.len());
            }
            let n = stream.read(&mut buf[end..]).await?;
            if n == 0 {
                bail!("closed during the upgrade");
            }
            end += n;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]);
        check_upgrade(&head, &accept_for(&key), protocol)?;
        // Whatever followed the response head is the first frames.
        Ok(Socket {
            stream,
            buf,
            start: head_end,
            end,
            assembled: Vec::new(),
            in_fragments: false,
            mix,
            out: Vec::new(),
        })
    }

    /// Queues a frame; `flush` writes what is queued.
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let mask = (self.mix.next() as u32).to_ne_bytes();
        encode_frame(opcode, payload, mask, &mut self.out);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.out).await;
        self.out.clear();
        result
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.queue(opcode, payload);
        self.flush().await
    }

    /// Reads more bytes: `Ok(false)` once the server closed the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        // What is left is at most a partial frame: moved to the front.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A frame larger than the buffer: room for it.
            let want = (self.buf.len() * 2).min(MAX_MESSAGE + 16);
            if want <= self.buf.len() {
                return Err(std::io::Error::other("a frame over the largest buffer"));
            }
            self.buf.resize(want, 0);
        }
        let room = self.buf.len() - self.end;
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        if n == room && self.buf.len() < BUFFER_GROWN {
            // The socket had more than the buffer held: fewer, larger reads from now on.
            let grown = self.buf.len() * 2;
            self.buf.resize(grown, 0);
        }
        Ok(n > 0)
    }

    /// The next message or control frame among the bytes read, `None` if they hold no more.
    fn next(&mut self) -> anyhow::Result<Option<Got>> {
        loop {
            let Some((fin, opcode, header, len)) = frame_header(&self.buf[self.start..self.end])?
            else {
                return Ok(None);
            };
            if self.end - self.start < header + len {
                return Ok(None);
            }
            let payload = self.start + header..self.start + header + len;
            self.start = payload.end;
            match opcode {
                OP_TEXT | OP_BINARY if self.in_fragments => {
                    bail!("a new message inside a fragmented one")
                }
                OP_TEXT | OP_BINARY if fin => return Ok(Some(Got::Message(payload))),
                OP_TEXT | OP_BINARY => {
                    self.assembled.clear();
                    self.assembled.extend_from_slice(&self.buf[payload]);
                    self.in_fragments = true;
                }
                OP_CONTINUATION => {
                    if !self.in_fragments {
                        bail!("a continuation frame outside a message");
                    }
                    if self.assembled.len() + len > MAX_MESSAGE {
                        bail!("a message over {MAX_MESSAGE} bytes");
                    }
                    self.assembled.extend_from_slice(&self.buf[payload]);
                    if fin {
                        self.in_fragments = false;
                        return Ok(Some(Got::Assembled));
                    }
                }
                OP_CLOSE => return Ok(Some(Got::Close)),
                OP_PING => return Ok(Some(Got::Ping(payload))),
                OP_PONG => {}
                other => bail!("opcode {other:#x}"),
            }
        }
    }

    /// The bytes of a message or ping that `next` returned.
    fn bytes(&self, got: &Got) -> &[u8] {
        match got {
            Got::Message(r) | Got::Ping(r) => &self.buf[r.clone()],
            Got::Assembled => &self.assembled,
            Got::Close => &[],
        }
    }

    /// A normal close, without waiting for the server's answer.
    async fn close(mut self) {
        let _ = self.send(OP_CLOSE, &1000u16.to_be_bytes()).await;
        let _ = self.stream.shutdown().await;
    }
}

/// Checks a `101 Switching Protocols` answer: the accept key and the subprotocol.
fn check_upgrade(head: &str, accept: &str, protocol: &str) -> anyhow::Result<()> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {status}");
    }
    let (mut accepted, mut upgraded, mut chosen) = (false, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "sec-websocket-accept" => accepted = value == accept,
            "upgrade" => upgraded = value.eq_ignore_ascii_case("websocket"),
            "sec-websocket-protocol" => chosen = Some(value),
            _ => {}
        }
    }
    if !upgraded {
        bail!("a 101 without Upgrade: websocket");
    }
    if !accepted {
        bail!("a wrong or missing Sec-WebSocket-Accept");
    }
    if chosen != Some(protocol) {
        bail!("subprotocol {chosen:?}, not {protocol}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The server: address, tokens, graphql-transport-ws.

/// Where the server listens, and the Host header to send it.
#[derive(Clone, Debug)]
struct Server {
    addr: SocketAddr,
    host: String,
    base: String,
}

impl Server {
    /// Resolves a plain `http://` URL; every address it resolves to must be loopback.
    async fn resolve(url: &str) -> anyhow::Result<Server> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: gen2 speaks plain http:// only"))?;
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        if host.is_empty() {
            bail!("{url}: no host");
        }
        let with_port = if host.ends_with(']') || !host.contains(':') {
            format!("{host}:80")
        } else {
            host.to_owned()
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port).await?.collect();
        if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
            bail!("{url}: gen2 drives loopback servers only");
        }
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .context("no address")?;
        Ok(Server {
            addr,
            host: host.to_owned(),
            base: format!("http://{host}"),
        })
    }
}

#[derive(Serialize)]
struct TokenClaims<'a> {
    sub: &'a str,
    name: &'a str,
    role: &'a str,
    iat: u64,
    exp: u64,
}

/// An HS256 token for `user` with `role`, valid for six hours.
fn sign(secret: &str, user: &str, role: &str) -> anyhow::Result<String> {
    let iat = unix_us() / 1_000_000;
    let claims = TokenClaims {
        sub: user,
        name: user,
        role,
        iat,
        exp: iat + 6 * 3600,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

fn user_of(args: &Gen2Args, i: usize) -> String {
    format!("{}{}", args.user_prefix, args.offset + i)
}

fn room_of(args: &Gen2Args, room: usize) -> String {
    format!("{}{}", args.room_prefix, room)
}

/// The subscribe message's payload. The variable names (`r`, `c`) are the ones the floor reads.
fn subscription(args: &Gen2Args, room: &str) -> Value {
    match args.sub {
        Subscription::Message => json!({
            "query": "subscription($r: ID!) { messageAdded(roomId: $r) { id body } }",
            "variables": {"r": room},
        }),
        Subscription::Events => json!({
            "query": "subscription($c: [String!]) { events(channels: $c) { data } }",
            "variables": {"c": [format!("public:{room}")]},
        }),
    }
}

static ACK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""connection_ack""#));
static PING: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""type":"ping""#));
static MARKER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"BENCH."));
static WARM: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"WARM."));
static FAILURES: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
    [
        Finder::new(br#""type":"error""#),
        Finder::new(br#""type":"complete""#),
        Finder::new(br#""errors""#),
    ]
});
const PONG: &[u8] = br#"{"type":"pong"}"#;

/// Opens subscriber `i`: upgrade, `connection_init` with its token, `connection_ack`, then
/// `subscribe` (sent: graphql-transport-ws does not acknowledge it).
async fn open_subscriber(args: &Gen2Args, server: &Server, i: usize) -> anyhow::Result<Socket> {
    let token = sign(&args.secret, &user_of(args, i), "user")?;
    let room = room_of(args, i % args.rooms);
    let seed = (args.offset + i) as u64 ^ unix_us().rotate_left(17);
    let mut ws = Socket::open(
        server.addr,
        &server.host,
        "/graphql",
        "graphql-transport-ws",
        seed,
    )
    .await?;
    let init = json!({"type": "connection_init", "payload": {"authToken": token}}).to_string();
    ws.send(OP_TEXT, init.as_bytes()).await?;
    'ack: loop {
        while let Some(got) = ws.next()? {
            match got {
                Got::Close => bail!("closed before connection_ack"),
                Got::Ping(_) => {
                    let payload = ws.bytes(&got).to_vec();
                    ws.queue(OP_PONG, &payload);
                }
                _ => {
                    let text = ws.bytes(&got);
                    if ACK.find(text).is_some() {
                        break 'ack;
                    }
                    if PING.find(text).is_some() {
                        ws.queue(OP_TEXT, PONG);
                    } else {
                        bail!(
                            "before connection_ack: {}",
                            String::from_utf8_lossy(text)
                                .chars()
                                .take(300)
                                .collect::<String>()
                        );
                    }
                }
            }
        }
        ws.flush().await?;
        if !ws.fill().await? {
            bail!("closed before connection_ack");
        }
    }
    let subscribe =
        json!({"id": "1", "type": "subscribe", "payload": subscription(args, &room)}).to_string();
    ws.queue(OP_TEXT, subscribe.as_bytes());
    ws.flush().await?;
    Ok(ws)
}

// ---------------------------------------------------------------------------------------------
// Subscribers and their accounting.

/// A subscriber's count of unique deliveries, alone on its cache line: its subscriber writes
/// it, the publisher reads it.
#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

/// State shared by the subscribers and the publisher of one run.
struct Run {
    start: Instant,
    progress: Vec<Slot>,
    warm: AtomicUsize,
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Run {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to an hour, three significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

/// The largest sequence number a subscriber keeps a bit for.
const MAX_SEQ: u64 = 1 << 26;

/// What one subscriber saw.
#[derive(Default)]
struct Tally {
    seen: Vec<u64>,
    unique: u64,
    duplicated: u64,
    errors: u64,
    last_us: u64,
}

impl Tally {
    /// Marks `seq` seen; false if it was already.
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }

    fn saw(&self, seq: u64) -> bool {
        self.seen
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }
}

/// Parses `<room>.<seq>.<global>.<micros>.`, what follows `BENCH.`.
fn parse_marker(bytes: &[u8]) -> Option<[u64; 4]> {
    let mut out = [0u64; 4];
    let mut at = 0;
    for field in &mut out {
        let from = at;
        let mut value = 0u64;
        while let Some(&c) = bytes.get(at).filter(|c| c.is_ascii_digit()) {
            value = value.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            at += 1;
        }
        if at == from || bytes.get(at) != Some(&b'.') {
            return None;
        }
        at += 1;
        *field = value;
    }
    Some(out)
}

/// Latency samples kept locally and merged into a shared histogram in batches.
const SAMPLE_BATCH: usize = 1024;

fn flush_samples(run: &Run, shard: usize, samples: &mut Vec<u32>) {
    if samples.is_empty() {
        return;
    }
    if let Ok(mut h) = run.latency[shard % run.latency.len()].lock() {
        for &us in samples.iter() {
            let _ = h.record(u64::from(us).max(1));
        }
    }
    samples.clear();
}

/// Reads until told to stop: counts deliveries of its room, answers pings, reports progress.
async fn subscriber(
    mut ws: Socket,
    run: Arc<Run>,
    index: usize,
    room: u64,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut warm = false;
    let mut samples: Vec<u32> = Vec::new();
    'read: loop {
        let mut closed = false;
        loop {
            let got = match ws.next() {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            };
            if let Got::Close = got {
                closed = true;
                break;
            }
            if let Got::Ping(_) = got {
                let payload = ws.bytes(&got).to_vec();
                ws.queue(OP_PONG, &payload);
                continue;
            }
            let text = ws.bytes(&got);
            if let Some(at) = MARKER.find(text) {
                match parse_marker(&text[at + 6..]) {
                    Some([r, seq, _global, sent]) if r == room && seq < MAX_SEQ => {
                        let now = run.now_us();
                        if tally.mark(seq) {
                            tally.unique += 1;
                            tally.last_us = now;
                            samples.push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
                        } else {
                            tally.duplicated += 1;
                        }
                    }
                    _ => tally.errors += 1,
                }
            } else if WARM.find(text).is_some() {
                if !warm {
                    warm = true;
                    run.warm.fetch_add(1, Ordering::AcqRel);
                }
            } else if PING.find(text).is_some() {
                ws.queue(OP_TEXT, PONG);
            } else if FAILURES.iter().any(|f| f.find(text).is_some()) {
                tally.errors += 1;
            }
        }
        run.progress[index].0.store(tally.unique, Ordering::Release);
        if samples.len() >= SAMPLE_BATCH {
            flush_samples(&run, index, &mut samples);
        }
        if closed {
            if !*stop.borrow() {
                tally.errors += 1;
            }
            break 'read;
        }
        if ws.flush().await.is_err() {
            tally.errors += 1;
            break;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            more = ws.fill() => {
                if !matches!(more, Ok(true)) {
                    if !*stop.borrow() {
                        tally.errors += 1;
                    }
                    break;
                }
            }
        }
    }
    flush_samples(&run, index, &mut samples);
    ws.close().await;
    tally
}

/// The connect phase's outcome.
struct Opened {
    /// Per subscriber: its task, which returns its tally (`None` if it failed to connect).
    tasks: Vec<JoinHandle<Option<Tally>>>,
    connected: Vec<bool>,
}

/// Opens every subscriber, `connect_concurrency` at a time; each stays a task reading its
/// socket until `stop`.
async fn open_all(
    args: &Arc<Gen2Args>,
    server: &Arc<Server>,
    run: &Arc<Run>,
    stop: &watch::Receiver<bool>,
    report: &mut Gen2Report,
) -> Opened {
    let n = args.subscribers;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, Result<u64, String>)>();
    report.connect_started_unix_us = unix_us();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (args, server, run, stop, gate, done) = (
            args.clone(),
            server.clone(),
            run.clone(),
            stop.clone(),
            gate.clone(),
            done_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let t = Instant::now();
            let opened =
                tokio::time::timeout(Duration::from_secs(60), open_subscriber(&args, &server, i))
                    .await
                    .map_err(|_| anyhow!("no connection_ack in 60 s"))
                    .and_then(|r| r);
            drop(permit);
            match opened {
                Ok(ws) => {
                    let _ = done.send((i, Ok(t.elapsed().as_micros() as u64)));
                    let room = (i % args.rooms) as u64;
                    Some(subscriber(ws, run, i, room, stop).await)
                }
                Err(e) => {
                    let _ = done.send((i, Err(format!("{e:#}"))));
                    None
                }
            }
        }));
    }
    drop(done_tx);
    let mut connect_hist = histogram();
    let mut connected = vec![false; n];
    let mut first_error = None;
    let mut outcomes = 0;
    // Every task sends one outcome and keeps its sender while it reads: count them.
    while outcomes < n {
        let Some((i, outcome)) = done_rx.recv().await else {
            break;
        };
        outcomes += 1;
        match outcome {
            Ok(us) => {
                let _ = connect_hist.record(us.max(1));
                connected[i] = true;
                report.connected += 1;
            }
            Err(e) => {
                report.connect_failures += 1;
                first_error.get_or_insert((i, e));
            }
        }
    }
    report.connect_seconds = t0.elapsed().as_secs_f64();
    report.connect_finished_unix_us = unix_us();
    report.connects_per_second = report.connected as f64 / report.connect_seconds.max(1e-9);
    report.connect_latency = percentiles(&connect_hist);
    if let (Some((i, e)), false) = (first_error, args.quiet) {
        eprintln!(
            "{}: {} of {n} failed to connect, first (subscriber {i}): {e}",
            args.label, report.connect_failures
        );
    }
    Opened { tasks, connected }
}

// ---------------------------------------------------------------------------------------------
// HTTP: joins and publishing.

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn graphql_post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    if !status.is_success() || answer.get("errors").is_some() {
        bail!("{status}: {answer}");
    }
    Ok(())
}

/// Every subscriber's user joins its room.
async fn join_rooms(
    args: &Gen2Args,
    server: &Server,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    let url = format!("{}/graphql", server.base);
    let gate = Arc::new(Semaphore::new(args.join_concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..args.subscribers {
        let permit = gate.clone().acquire_owned().await?;
        let token = sign(&args.secret, &user_of(args, i), "user")?;
        let body = json!({
            "query": "mutation($r: ID!) { joinRoom(roomId: $r) { id } }",
            "variables": {"r": room_of(args, i % args.rooms)},
        });
        let (client, url) = (client.clone(), url.clone());
        set.spawn(async move {
            let _permit = permit;
            graphql_post(&client, &url, &token, &body).await
        });
    }
    let (mut failed, mut first) = (0usize, None);
    while let Some(joined) = set.join_next().await {
        if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            failed += 1;
            first.get_or_insert(e);
        }
    }
    if let Some(e) = first {
        bail!("{failed} joinRoom failed, first: {e:#}");
    }
    Ok(())
}

/// Publishes bodies to rooms.
struct Publisher {
    client: reqwest::Client,
    how: Publishing,
    graphql: String,
    api: String,
    rooms: Vec<String>,
    /// Per room, the token of its first subscriber's user: a member.
    members: Vec<String>,
    admin: String,
}

impl Publisher {
    fn new(args: &Gen2Args, server: &Server, client: reqwest::Client) -> anyhow::Result<Self> {
        Ok(Publisher {
            client,
            how: args.publish,
            graphql: format!("{}/graphql", server.base),
            api: format!("{}/api/publish", server.base),
            rooms: (0..args.rooms).map(|r| room_of(args, r)).collect(),
            members: (0..args.rooms)
                .map(|r| sign(&args.secret, &user_of(args, r), "user"))
                .collect::<anyhow::Result<_>>()?,
            admin: sign(&args.secret, "bench-admin", "admin")?,
        })
    }

    async fn send(&self, room: usize, body: &str) -> anyhow::Result<()> {
        match self.how {
            Publishing::Http => {
                let request = json!({
                    "query": "mutation($r: ID!, $b: String!) { sendMessage(roomId: $r, body: $b) { id } }",
                    "variables": {"r": self.rooms[room], "b": body},
                });
                graphql_post(&self.client, &self.graphql, &self.members[room], &request).await
            }
            Publishing::Api => {
                let request = json!({
                    "channel": format!("public:{}", self.rooms[room]),
                    "type": "bench",
                    "data": body,
                });
                let response = self
                    .client
                    .post(&self.api)
                    .bearer_auth(&self.admin)
                    .json(&request)
                    .send()
                    .await?;
                let status = response.status();
                if !status.is_success() {
                    bail!("{status}: {}", response.text().await.unwrap_or_default());
                }
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runs.

fn server_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| proc_stats::rss_kib(*p)).sum()
}

fn server_cpu(pids: &[u32]) -> Option<f64> {
    (!pids.is_empty()).then(|| {
        pids.iter()
            .filter_map(|p| proc_stats::cpu_seconds(*p))
            .sum()
    })
}

/// Runs one load and returns its report.
pub async fn run(mode: Mode, args: Gen2Args) -> anyhow::Result<Gen2Report> {
    let limit = Duration::from_secs_f64(args.timeout);
    match tokio::time::timeout(limit, run_within(mode, args)).await {
        Ok(report) => report,
        Err(_) => bail!("the run exceeded --timeout"),
    }
}

async fn run_within(mode: Mode, args: Gen2Args) -> anyhow::Result<Gen2Report> {
    if args.rooms == 0 || args.subscribers < args.rooms {
        bail!("at least one subscriber per room");
    }
    let server = Arc::new(Server::resolve(&args.url).await?);
    let args = Arc::new(args);
    let client = http_client()?;
    let mut report = Gen2Report {
        generator: "gen2".into(),
        mode: match mode {
            Mode::Push => "push",
            Mode::Connects => "connects",
        }
        .into(),
        label: args.label.clone(),
        subscribers: args.subscribers,
        rooms: args.rooms,
        ..Default::default()
    };

    if args.sub == Subscription::Message && !args.skip_join {
        let t = Instant::now();
        join_rooms(&args, &server, &client).await?;
        report.join_seconds = t.elapsed().as_secs_f64();
    }

    report.server_rss_before_kib = server_rss(&args.server_pid);
    let run = Arc::new(Run {
        start: Instant::now(),
        progress: (0..args.subscribers).map(|_| Slot::default()).collect(),
        warm: AtomicUsize::new(0),
        latency: (0..8).map(|_| Mutex::new(histogram())).collect(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let opened = open_all(&args, &server, &run, &stop_rx, &mut report).await;
    if !args.quiet {
        eprintln!(
            "{}: {} connected in {:.2} s ({:.0}/s), {} failed",
            args.label,
            report.connected,
            report.connect_seconds,
            report.connects_per_second,
            report.connect_failures
        );
    }

    let publisher = Publisher::new(&args, &server, client)?;
    if mode == Mode::Push && report.connected > 0 {
        // Warm-up: `WARM.` to every room until every connected subscriber saw one, so a
        // subscription still being set up server-side does not count as a loss.
        let t = Instant::now();
        while run.warm.load(Ordering::Acquire) < report.connected {
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "warm-up: {} of {} subscribers live after 60 s",
                    run.warm.load(Ordering::Acquire),
                    report.connected
                );
            }
            for room in 0..args.rooms {
                publisher
                    .send(room, "WARM.")
                    .await
                    .context("warm-up publish")?;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // The last warm-up frames arrive before anything is measured.
        tokio::time::sleep(Duration::from_millis(300)).await;
    } else {
        // Nothing confirms a subscription: the server gets a moment to set them up.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", report.connected))?;
    }
    if args.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    report.server_rss_after_kib = server_rss(&args.server_pid);
    if report.connected > 0 {
        report.server_rss_per_connection_kib = (report.server_rss_after_kib as f64
            - report.server_rss_before_kib as f64)
            / report.connected as f64;
    }

    let mut published = vec![0u64; args.rooms];
    let mut failed: Vec<Vec<u64>> = vec![Vec::new(); args.rooms];
    let mut first_publish_us = 0;
    if mode == Mode::Push {
        let outcome = publish(&args, &run, &opened, Arc::new(publisher), &mut report).await;
        published = outcome.published;
        failed = outcome.failed;
        first_publish_us = outcome.first_us;
    }
    let _ = stop_tx.send(true);

    // Per subscriber: its room's messages, less those whose publish failed and that it did not
    // see (a failed request may or may not have reached the server), against its bitset.
    let (mut expected, mut unique, mut lost, mut duplicated, mut errors, mut last_us) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for (i, task) in opened.tasks.into_iter().enumerate() {
        let tally = match task.await {
            Ok(Some(tally)) => tally,
            Ok(None) => continue,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        let room = i % args.rooms;
        for seq in 0..published[room] {
            if tally.saw(seq) {
                expected += 1;
            } else if failed[room].binary_search(&seq).is_err() {
                expected += 1;
                lost += 1;
            }
        }
        unique += tally.unique;
        duplicated += tally.duplicated;
        errors += tally.errors;
        last_us = last_us.max(tally.last_us);
    }
    report.expected_deliveries = expected;
    report.deliveries = unique;
    report.lost = lost;
    report.duplicated = duplicated;
    report.subscriber_errors = errors;
    if mode == Mode::Push {
        report.measure_seconds = last_us.saturating_sub(first_publish_us) as f64 / 1e6;
        if report.measure_seconds > 0.0 {
            report.deliveries_per_second = unique as f64 / report.measure_seconds;
        }
        let mut all = histogram();
        for shard in &run.latency {
            if let Ok(h) = shard.lock() {
                all.add(&*h).context("merging latency histograms")?;
            }
        }
        report.latency = percentiles(&all);
    }
    Ok(report)
}

struct Published {
    published: Vec<u64>,
    /// Per room, sorted: sequence numbers whose publish failed.
    failed: Vec<Vec<u64>>,
    first_us: u64,
}

/// Publishes open loop for `--duration`, then waits for the drain.
async fn publish(
    args: &Arc<Gen2Args>,
    run: &Arc<Run>,
    opened: &Opened,
    publisher: Arc<Publisher>,
    report: &mut Gen2Report,
) -> Published {
    let rooms = args.rooms;
    let members: Vec<Vec<usize>> = (0..rooms)
        .map(|r| {
            (r..args.subscribers)
                .step_by(rooms)
                .filter(|&i| opened.connected[i])
                .collect()
        })
        .collect();
    let slowest = |room: usize| {
        members[room]
            .iter()
            .map(|&i| run.progress[i].0.load(Ordering::Acquire))
            .min()
    };
    let failures: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let publish_hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let mut published = vec![0u64; rooms];
    let mut seen_by_all = vec![0u64; rooms];
    let cpu_before = server_cpu(&args.server_pid);
    let gen_before = proc_stats::cpu_seconds(std::process::id());
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(args.duration);
    let first_us = run.now_us();
    let mut requests = JoinSet::new();
    let mut k = 0u64;
    'publish: while k < args.max_messages {
        if args.rate > 0.0 {
            let due = t0 + Duration::from_secs_f64(k as f64 / args.rate);
            if due >= end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        } else if Instant::now() >= end {
            break;
        }
        let room = (k % rooms as u64) as usize;
        if args.window > 0 && published[room] - seen_by_all[room] >= args.window {
            let mut stalled = false;
            loop {
                seen_by_all[room] = slowest(room).unwrap_or(published[room]);
                if published[room] - seen_by_all[room] < args.window {
                    break;
                }
                if !stalled {
                    stalled = true;
                    report.window_stalls += 1;
                }
                if Instant::now() >= end {
                    break 'publish;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let seq = published[room];
        published[room] += 1;
        let body = format!("BENCH.{room}.{seq}.{k}.{}.", run.now_us());
        k += 1;
        let (publisher, failures, publish_hist, errors, label, quiet) = (
            publisher.clone(),
            failures.clone(),
            publish_hist.clone(),
            errors.clone(),
            args.label.clone(),
            args.quiet,
        );
        requests.spawn(async move {
            let t = Instant::now();
            if let Err(e) = publisher.send(room, &body).await {
                if errors.fetch_add(1, Ordering::Relaxed) == 0 && !quiet {
                    eprintln!("{label}: publish failed: {e:#}");
                }
                if let Ok(mut f) = failures.lock() {
                    f.push((room, seq));
                }
            }
            if let Ok(mut h) = publish_hist.lock() {
                let _ = h.record((t.elapsed().as_micros() as u64).max(1));
            }
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    let publish_seconds = t0.elapsed().as_secs_f64();

    let mut failed = vec![Vec::new(); rooms];
    if let Ok(f) = failures.lock() {
        for &(room, seq) in f.iter() {
            failed[room].push(seq);
        }
    }
    for f in &mut failed {
        f.sort_unstable();
    }
    // Drain: until every subscriber has every accepted message of its room, or time is up.
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    report.drained = loop {
        let done = (0..rooms).all(|r| {
            let accepted = published[r] - failed[r].len() as u64;
            slowest(r).is_none_or(|n| n >= accepted)
        });
        if done {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = t0.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (cpu_before, server_cpu(&args.server_pid)) {
        report.server_cpu_percent = (b - a) / wall * 100.0;
    }
    if let (Some(a), Some(b)) = (gen_before, proc_stats::cpu_seconds(std::process::id())) {
        report.generator_cpu_percent = (b - a) / wall * 100.0;
    }
    report.offered_rate = args.rate;
    report.published = k;
    report.publish_errors = errors.load(Ordering::Acquire);
    report.publish_rate = k as f64 / publish_seconds.max(1e-9);
    if let Ok(h) = publish_hist.lock() {
        report.publish_latency = percentiles(&h);
    }
    Published {
        published,
        failed,
        first_us,
    }
}

/// Sums the reports of processes that shared one connect load. Connects/s is over the wall
/// clock from the first process's first connect to the last process's last one.
pub fn merge(args: &Gen2MergeArgs) -> anyhow::Result<Gen2Report> {
    let mut out = Gen2Report {
        generator: "gen2".into(),
        label: args.label.clone(),
        ..Default::default()
    };
    let mut connect_max = Percentiles::default();
    for (n, path) in args.reports.iter().enumerate() {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let r: Gen2Report = serde_json::from_str(&text)?;
        out.mode = r.mode.clone();
        out.rooms = out.rooms.max(r.rooms);
        out.subscribers += r.subscribers;
        out.connected += r.connected;
        out.connect_failures += r.connect_failures;
        out.subscriber_errors += r.subscriber_errors;
        out.published += r.published;
        out.expected_deliveries += r.expected_deliveries;
        out.deliveries += r.deliveries;
        out.lost += r.lost;
        out.duplicated += r.duplicated;
        out.generator_cpu_percent += r.generator_cpu_percent;
        out.connect_started_unix_us = if n == 0 {
            r.connect_started_unix_us
        } else {
            out.connect_started_unix_us.min(r.connect_started_unix_us)
        };
        out.connect_finished_unix_us = out.connect_finished_unix_us.max(r.connect_finished_unix_us);
        // Each percentile: the worse of the processes'.
        let c = &r.connect_latency;
        connect_max = Percentiles {
            p50_ms: connect_max.p50_ms.max(c.p50_ms),
            p90_ms: connect_max.p90_ms.max(c.p90_ms),
            p99_ms: connect_max.p99_ms.max(c.p99_ms),
            max_ms: connect_max.max_ms.max(c.max_ms),
        };
    }
    out.connect_latency = connect_max;
    out.connect_seconds = out
        .connect_finished_unix_us
        .saturating_sub(out.connect_started_unix_us) as f64
        / 1e6;
    out.connects_per_second = out.connected as f64 / out.connect_seconds.max(1e-9);
    out.server_rss_before_kib = args.rss_before;
    out.server_rss_after_kib = args.rss_after;
    if out.connected > 0 {
        out.server_rss_per_connection_kib =
            (args.rss_after as f64 - args.rss_before as f64) / out.connected as f64;
    }
    Ok(out)
}

fn emit(report: &Gen2Report, json: Option<&PathBuf>, quiet: bool) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    match json {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => println!("{text}"),
    }
    if quiet {
        return Ok(());
    }
    let delivered = if report.mode == "push" {
        format!(
            "{:.0} deliveries/s, p50 {:.1} ms, p99 {:.1} ms, lost {}, dup {}; ",
            report.deliveries_per_second,
            report.latency.p50_ms,
            report.latency.p99_ms,
            report.lost,
            report.duplicated
        )
    } else {
        String::new()
    };
    eprintln!(
        "{}: gen2 {}: {} of {} connected ({:.0}/s); {delivered}{} subscriber errors; \
         {:.2} KiB per connection",
        report.label,
        report.mode,
        report.connected,
        report.subscribers,
        report.connects_per_second,
        report.subscriber_errors,
        report.server_rss_per_connection_kib
    );
    Ok(())
}

/// `tidings-bench gen2 ...`.
pub fn main(cli: Gen2Cli) -> anyhow::Result<()> {
    let (mode, args) = match cli.command {
        Gen2Command::Merge(m) => return emit(&merge(&m)?, None, false),
        Gen2Command::Push(a) => (Mode::Push, a),
        Gen2Command::Connects(a) => (Mode::Connects, a),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let (json, quiet) = (args.json.clone(), args.quiet);
    let report = rt.block_on(run(mode, args))?;
    // Sockets still closing are not waited for.
    rt.shutdown_background();
    emit(&report, json.as_ref(), quiet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    /// A server frame (unmasked) of `payload`.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn headers_of_every_length_form() {
        for n in [0usize, 125, 126, 65_535, 65_536, 200_000] {
            let f = server_frame(true, OP_TEXT, &vec![b'x'; n]);
            let (fin, op, header, len) = frame_header(&f).expect("valid").expect("complete");
            assert!(fin);
            assert_eq!(op, OP_TEXT);
            assert_eq!(header + len, f.len(), "{n}");
            // Every proper prefix shorter than the header is incomplete, not an error.
            for cut in 0..header {
                assert!(frame_header(&f[..cut]).expect("valid").is_none());
            }
        }
        assert!(frame_header(&[0x81, 0x85, 0, 0, 0, 0]).is_err(), "masked");
        assert!(frame_header(&[0xC1, 0x00]).is_err(), "reserved bit");
    }

    #[test]
    fn client_frames_are_masked_and_unmask_back() {
        let payload = vec![7u8; 300];
        let mask = [1, 2, 3, 4];
        let mut f = Vec::new();
        encode_frame(OP_TEXT, &payload, mask, &mut f);
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 300);
        assert_eq!(&f[4..8], &mask);
        let unmasked: Vec<u8> = f[8..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(unmasked, payload);
    }

    #[test]
    fn markers_parse_and_reject() {
        let text = br#"{"id":"1","type":"next","payload":{"data":{"messageAdded":{"id":"9","body":"BENCH.3.17.99.123456."}}}}"#;
        let at = MARKER.find(text).expect("marker");
        assert_eq!(parse_marker(&text[at + 6..]), Some([3, 17, 99, 123456]));
        assert_eq!(parse_marker(b"3.17.99."), None);
        assert_eq!(parse_marker(b"3.x.99.1."), None);
        assert_eq!(parse_marker(b"99999999999999999999999.1.1.1."), None);
    }

    #[test]
    fn the_bitset_tells_duplicates() {
        let mut t = Tally::default();
        assert!(t.mark(0));
        assert!(t.mark(130));
        assert!(!t.mark(130));
        assert!(t.saw(130) && t.saw(0) && !t.saw(1) && !t.saw(100_000));
    }

    #[test]
    fn upgrade_answers_are_checked() {
        let accept = accept_for("k");
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-accept: {accept}\r\nsec-websocket-protocol: graphql-transport-ws\r\n\r\n"
        );
        assert!(check_upgrade(&good, &accept, "graphql-transport-ws").is_ok());
        assert!(check_upgrade(&good, &accept_for("other"), "graphql-transport-ws").is_err());
        assert!(check_upgrade(&good, &accept, "graphql-ws").is_err());
        assert!(check_upgrade("HTTP/1.1 400 Bad Request\r\n\r\n", &accept, "x").is_err());
    }

    #[tokio::test]
    async fn only_loopback_servers() {
        assert!(Server::resolve("http://127.0.0.1:9").await.is_ok());
        assert!(Server::resolve("http://[::1]:9/x").await.is_ok());
        assert!(Server::resolve("http://10.0.0.1:80").await.is_err());
        assert!(Server::resolve("https://127.0.0.1:9").await.is_err());
    }
}
