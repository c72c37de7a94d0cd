//! Test support: a real `tidings` process on a free port over a fresh database (SQLite, and
//! PostgreSQL when `TIDINGS_TEST_DATABASE_URL` is set), and a small GraphQL client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};

pub const SECRET: &str = "tidings-test-secret-0123456789abcdef";
pub const BIN: &str = env!("CARGO_BIN_EXE_tidings");

/// Where a test's data lives.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// SQLite always; PostgreSQL too when `TIDINGS_TEST_DATABASE_URL` is set. Under CI the
/// variable is required, so a missing PostgreSQL fails loudly instead of being skipped.
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    match std::env::var("TIDINGS_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => all.push(Backend::Postgres(url)),
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => panic!(
            "CI is set but TIDINGS_TEST_DATABASE_URL is not: the PostgreSQL tests cannot run. \
             Run the README's test command, which starts PostgreSQL and sets it."
        ),
        _ => {}
    }
    all
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty database for one test; removed when dropped.
pub struct TestDb {
    pub url: String,
    dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(backend: &Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("tidings.db").display()
                );
                TestDb {
                    url,
                    dir,
                    postgres: None,
                }
            }
            Backend::Postgres(admin_url) => {
                let name = format!(
                    "tidings_t_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::SeqCst),
                    rand_suffix()
                );
                let admin = Database::connect(admin_url.as_str())
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin_url}: {e}"));
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                let _ = admin.close().await;
                let url = with_database(admin_url, &name);
                TestDb {
                    url,
                    dir,
                    postgres: Some((admin_url.clone(), name)),
                }
            }
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.postgres.take() {
            // Drop runs outside any runtime: use a short-lived one on its own thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(db) = Database::connect(admin_url.as_str()).await {
                            let _ = db
                                .execute_unprepared(&format!(
                                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                                ))
                                .await;
                            let _ = db.close().await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos()
}

/// `postgres://u@h:p/db?x` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

/// A running `tidings serve` process; killed when dropped.
pub struct TestServer {
    pub base: String,
    pub addr: String,
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on `db` with the test secret and `env` on top.
    pub fn start(db: &TestDb, env: &[(&str, &str)]) -> Self {
        // The log lives with the server, not the database, so it can still be printed when a
        // failing test drops its database first.
        let log_dir = tempfile::tempdir().expect("temp dir");
        let log = log_dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_remove("TIDINGS_REDIS_URL")
            .env_remove("TIDINGS_REDIS_CLUSTER")
            .env_remove("TIDINGS_REDIS_SENTINELS")
            .env_remove("TIDINGS_REDIS_SENTINEL_MASTER")
            .env("TIDINGS_BIND", "127.0.0.1:0")
            .env("TIDINGS_DATABASE_URL", &db.url)
            .env("TIDINGS_JWT_SECRET", SECRET)
            .env("RUST_LOG", "tidings=debug,warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tidings");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        let read = lines.read_line(&mut first).unwrap_or(0);
        if read == 0 {
            let _ = child.wait();
            panic!(
                "tidings exited before serving:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let addr = first
            .split("http://")
            .nth(1)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"));
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = lines.read_to_end(&mut sink);
        });
        TestServer {
            base: format!("http://{addr}"),
            addr,
            child,
            log,
            _log_dir: log_dir,
        }
    }

    /// Starts a server on a given address, e.g. the one a stopped server had (its clients
    /// reconnect there), over the same database.
    pub fn start_at(db: &TestDb, addr: &str, env: &[(&str, &str)]) -> Self {
        let mut all = vec![("TIDINGS_BIND", addr)];
        all.extend_from_slice(env);
        Self::start(db, &all)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's process id (to read its memory from `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the server to shut down (SIGTERM), without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, then waits up to `within` for the process to exit; true when it did.
    pub fn terminate_and_wait(&mut self, within: Duration) -> bool {
        self.terminate();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Freezes the server's process (SIGSTOP): its sockets stay open, nothing runs.
    pub fn pause(&self) {
        let _ = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status();
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POSTs a GraphQL request; returns the whole response body.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = http()
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("POST /graphql");
        resp.json().await.expect("JSON response")
    }

    /// Runs a query that must succeed; returns `data`.
    pub async fn ok(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let body = self.gql(token, query, variables).await;
        assert!(
            body.get("errors").is_none(),
            "unexpected errors for {query}: {body}"
        );
        body["data"].clone()
    }

    /// Runs a query that must fail; returns the first error's `extensions.code`.
    pub async fn err_code(&self, token: Option<&str>, query: &str, variables: Value) -> String {
        let body = self.gql(token, query, variables).await;
        let code = body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error with a code for {query}: {body}"));
        code.to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log ({}) ---\n{}", self.base, self.log());
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// A token from `tidings token`, signed with the test secret.
pub fn cli_token(user: &str, role: &str) -> String {
    cli_token_ttl(user, role, "1h")
}

pub fn cli_token_ttl(user: &str, role: &str, ttl: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--user", user, "--role", role, "--ttl", ttl])
        .env("TIDINGS_JWT_SECRET", SECRET)
        .output()
        .expect("run tidings token");
    assert!(
        out.status.success(),
        "tidings token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A server on a fresh database of `backend`, with its database kept alongside.
pub async fn server(backend: &Backend) -> (TestServer, TestDb) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, &[]);
    (server, db)
}

/// Registers a user; returns its token.
pub async fn register(server: &TestServer, name: &str) -> String {
    let data = server
        .ok(
            None,
            "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token } }",
            json!({ "u": name, "p": "correct horse battery" }),
        )
        .await;
    data["register"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

pub async fn join(server: &TestServer, token: &str, room: &str) -> Value {
    server
        .ok(
            Some(token),
            "mutation($r: ID!) { joinRoom(roomId: $r) { id title isPrivate memberCount } }",
            json!({ "r": room }),
        )
        .await["joinRoom"]
        .clone()
}

pub async fn send(server: &TestServer, token: &str, room: &str, body: &str) -> Value {
    server
        .ok(
            Some(token),
            "mutation($r: ID!, $b: String!) { sendMessage(roomId: $r, body: $b) { id body kind sender { username } } }",
            json!({ "r": room, "b": body }),
        )
        .await["sendMessage"]
        .clone()
}

pub async fn history(server: &TestServer, token: &str, room: &str) -> Vec<Value> {
    server
        .ok(
            Some(token),
            "query($r: ID!) { messages(roomId: $r) { id kind body sender { id username } } }",
            json!({ "r": room }),
        )
        .await["messages"]
        .as_array()
        .expect("messages")
        .clone()
}

/// The id of the room's last message (`null` for an empty room): a `messageAdded` subscription
/// with it as `after` gets every message stored from now on, even one stored while the
/// subscription is still being set up (without `after` it starts after whatever is stored by
/// then).
pub async fn last_message_id(server: &TestServer, token: &str, room: &str) -> Value {
    history(server, token, room)
        .await
        .last()
        .map_or(Value::Null, |m| m["id"].clone())
}

/// A raw GraphQL-over-WebSocket client speaking either subprotocol frame by frame, so tests can
/// check exactly what the server sends.
pub struct GqlSocket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Frames read while waiting for something else, in arrival order.
    pending: std::collections::VecDeque<Value>,
    pub protocol: &'static str,
}

pub const TRANSPORT_WS: &str = "graphql-transport-ws";
pub const LEGACY_WS: &str = "graphql-ws";

/// How a socket ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl GqlSocket {
    /// Opens a socket (no `connection_init` yet). `query` is appended to the URL.
    pub async fn open(server: &TestServer, protocol: &'static str, query: &str) -> Self {
        Self::open_with(server, protocol, query, None).await
    }

    pub async fn open_with(
        server: &TestServer,
        protocol: &'static str,
        query: &str,
        authorization: Option<&str>,
    ) -> Self {
        Self::open_at(&server.addr, protocol, query, authorization).await
    }

    /// Opens a socket to `/graphql` at `addr` (a server, or a proxy in front of servers).
    pub async fn open_at(
        addr: &str,
        protocol: &'static str,
        query: &str,
        authorization: Option<&str>,
    ) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{addr}/graphql{query}");
        let mut request = url.into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
        if let Some(auth) = authorization {
            request
                .headers_mut()
                .insert("Authorization", auth.parse().expect("header"));
        }
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket connect");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol),
            "the server agrees on the subprotocol"
        );
        GqlSocket {
            ws,
            pending: Default::default(),
            protocol,
        }
    }

    /// Opens, sends `connection_init` with `payload`, and waits for the ack.
    pub async fn connect(server: &TestServer, protocol: &'static str, payload: Value) -> Self {
        let mut s = Self::open(server, protocol, "").await;
        s.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let ack = s.next_frame().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        s
    }

    /// Connects with `{"authToken": token}` on graphql-transport-ws.
    pub async fn user(server: &TestServer, token: &str) -> Self {
        Self::connect(server, TRANSPORT_WS, json!({ "authToken": token })).await
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// Sends any WebSocket message, even one a well-behaved client would not (a raw frame).
    pub async fn send_raw(&mut self, message: tokio_tungstenite::tungstenite::Message) {
        use futures_util::SinkExt;
        self.ws.send(message).await.expect("send frame");
    }

    /// The next protocol frame, answering pings and skipping keep-alives.
    pub async fn next_frame(&mut self) -> Value {
        if let Some(f) = self.pending.pop_front() {
            return f;
        }
        self.read_frame(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no frame within 10 s"))
    }

    /// The next text frame exactly as sent, pings and keep-alives included.
    pub async fn raw_next(&mut self) -> Value {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no frame within 10 s"),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return serde_json::from_str(t.as_str()).expect("server frames are JSON")
                }
                Ok(Some(Ok(Message::Close(f)))) => panic!("socket closed: {f:?}"),
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("socket ended: {other:?}"),
            }
        }
    }

    /// A frame if one arrives within `wait`.
    pub async fn read_frame(&mut self, wait: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value =
                        serde_json::from_str(t.as_str()).expect("server frames are JSON");
                    match v["type"].as_str() {
                        Some("ping") => self.send(json!({ "type": "pong" })).await,
                        Some("ka") => {}
                        _ => return Some(v),
                    }
                }
                Some(Ok(Message::Close(frame))) => panic!("socket closed unexpectedly: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error: {e}"),
                None => panic!("socket ended"),
            }
        }
    }

    /// Asserts nothing but keep-alives arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(f) = self.pending.pop_front() {
            panic!("expected nothing, got {f}");
        }
        if let Some(f) = self.read_frame(wait).await {
            panic!("expected nothing, got {f}");
        }
    }

    /// Waits for the server to close the socket; returns its code and reason.
    pub async fn closed(&mut self) -> Closed {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("the server did not close the socket"),
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return Closed {
                        code: frame.code.into(),
                        reason: frame.reason.to_string(),
                    }
                }
                Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) => {
                    return Closed {
                        code: 1006,
                        reason: String::new(),
                    }
                }
                Ok(Some(Ok(Message::Text(t)))) => self
                    .pending
                    .push_back(serde_json::from_str(t.as_str()).unwrap_or(Value::Null)),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Starts an operation (`subscribe`, or `start` on the legacy protocol).
    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = if self.protocol == LEGACY_WS {
            "start"
        } else {
            "subscribe"
        };
        self.send(json!({ "id": id, "type": kind, "payload": { "query": query, "variables": variables } }))
            .await;
    }

    /// The next frame for operation `id` (frames for other operations stay queued).
    pub async fn frame_for(&mut self, id: &str) -> Value {
        if let Some(pos) = self.pending.iter().position(|f| f["id"] == id) {
            return self.pending.remove(pos).expect("frame");
        }
        loop {
            let f = self
                .read_frame(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("no frame for {id} within 10 s"));
            if f["id"] == id {
                return f;
            }
            self.pending.push_back(f);
        }
    }

    /// The next result's `data` for operation `id`; panics on errors or completion.
    pub async fn data(&mut self, id: &str) -> Value {
        let f = self.frame_for(id).await;
        let kind = if self.protocol == LEGACY_WS {
            "data"
        } else {
            "next"
        };
        assert_eq!(f["type"], kind, "expected a result for {id}, got {f}");
        assert!(f["payload"].get("errors").is_none(), "errors for {id}: {f}");
        f["payload"]["data"].clone()
    }

    /// The first error code of the next frame for `id` (a `next` with errors or an `error`).
    pub async fn error_code(&mut self, id: &str) -> String {
        let f = self.frame_for(id).await;
        let errors = if f["type"] == "error" {
            f["payload"].clone()
        } else {
            f["payload"]["errors"].clone()
        };
        errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error for {id}, got {f}"))
            .to_owned()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A `redis-server` of the test's own on a free port, so the test can kill and restart it.
pub struct TestRedis {
    pub port: u16,
    child: Option<Child>,
}

impl TestRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut redis = TestRedis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port; waits until it accepts connections.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (scripts/test.sh does: apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: Redis vanishes mid-stream.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A command connection for inspecting Redis.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /metrics` (Prometheus' text format).
pub async fn metrics(server: &TestServer) -> String {
    let resp = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.expect("text")
}

/// The value of one series (`name{labels}` exactly as exposed), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

pub async fn health(server: &TestServer) -> Value {
    http()
        .get(server.url("/health"))
        .send()
        .await
        .expect("GET /health")
        .json()
        .await
        .expect("health JSON")
}
/// A raw client of the legacy JSON protocol (`/ws` and its other paths), frame by frame.
pub struct LegacyClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Frames read while waiting for another type, in arrival order.
    pending: std::collections::VecDeque<Value>,
}

impl LegacyClient {
    /// Opens `path` (with its query), e.g. `/ws?token=T`.
    pub async fn open(server: &TestServer, path: &str) -> Self {
        Self::open_with(server, path, None).await
    }

    pub async fn open_with(server: &TestServer, path: &str, authorization: Option<&str>) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}{path}", server.addr)
            .into_client_request()
            .expect("request");
        if let Some(auth) = authorization {
            request
                .headers_mut()
                .insert("Authorization", auth.parse().expect("header"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket connect");
        LegacyClient {
            ws,
            pending: Default::default(),
        }
    }

    /// Opens `/ws?token=` and reads the welcome: every feed of the socket is live after it.
    pub async fn user(server: &TestServer, token: &str) -> Self {
        Self::at(server, &format!("/ws?token={token}")).await
    }

    /// Opens `path` and reads its first frame, the welcome.
    pub async fn at(server: &TestServer, path: &str) -> Self {
        let mut c = Self::open(server, path).await;
        let welcome = c.next().await;
        assert!(
            ["system", "connection", "online_users"]
                .contains(&welcome["type"].as_str().unwrap_or("")),
            "a welcome (or the conversations greeting) first: {welcome}"
        );
        c
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send frame");
    }

    pub async fn send_text(&mut self, text: String) {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// Sends any WebSocket message, even one a well-behaved client would not (a raw frame).
    pub async fn send_raw(&mut self, message: tokio_tungstenite::tungstenite::Message) {
        use futures_util::SinkExt;
        self.ws.send(message).await.expect("send frame");
    }

    /// A frame if one arrives within `wait`.
    async fn read(&mut self, wait: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?
            {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server frames are JSON"))
                }
                Some(Ok(Message::Close(frame))) => panic!("socket closed unexpectedly: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error: {e}"),
                None => panic!("socket ended"),
            }
        }
    }

    /// The next frame, whatever its type.
    pub async fn next(&mut self) -> Value {
        if let Some(f) = self.pending.pop_front() {
            return f;
        }
        self.read(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no frame within 10 s"))
    }

    /// The next frame of type `kind`; frames of other types stay queued for later reads.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        if let Some(pos) = self.pending.iter().position(|f| f["type"] == kind) {
            return self.pending.remove(pos).expect("frame");
        }
        loop {
            let f = self
                .read(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("no {kind} frame within 10 s; got {:?}", self.pending));
            if f["type"] == kind {
                return f;
            }
            self.pending.push_back(f);
        }
    }

    /// Asserts no frame of type `kind` arrives within `wait` (others stay queued).
    pub async fn expect_none_of(&mut self, kind: &str, wait: Duration) {
        if let Some(f) = self.pending.iter().find(|f| f["type"] == kind) {
            panic!("expected no {kind} frame, got {f}");
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                None => return,
                Some(f) if f["type"] == kind => panic!("expected no {kind} frame, got {f}"),
                Some(f) => self.pending.push_back(f),
            }
        }
    }

    /// Asserts nothing at all arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(f) = self.pending.pop_front() {
            panic!("expected nothing, got {f}");
        }
        if let Some(f) = self.read(wait).await {
            panic!("expected nothing, got {f}");
        }
    }

    /// A `ping` round trip: the server has handled every frame sent before it.
    pub async fn sync(&mut self) {
        self.send(json!({ "type": "ping" })).await;
        self.next_of("pong").await;
    }

    /// Waits for the server to close the socket; returns its code and reason.
    pub async fn closed(&mut self) -> Closed {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("the server did not close the socket"),
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return Closed {
                        code: frame.code.into(),
                        reason: frame.reason.to_string(),
                    }
                }
                Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) => {
                    return Closed {
                        code: 1006,
                        reason: String::new(),
                    }
                }
                Ok(Some(Ok(Message::Text(t)))) => self
                    .pending
                    .push_back(serde_json::from_str(t.as_str()).unwrap_or(Value::Null)),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Two instances on one database and `redis`, each with `env` on top, once both bridges are
/// connected.
pub async fn bridged_pair(
    backend: &Backend,
    redis: &TestRedis,
    env: &[(&str, &str)],
) -> (TestServer, TestServer, TestDb) {
    let db = TestDb::new(backend).await;
    let url = redis.url();
    let mut all = vec![("TIDINGS_REDIS_URL", url.as_str())];
    all.extend_from_slice(env);
    let a = TestServer::start(&db, &all);
    let b = TestServer::start(&db, &all);
    for s in [&a, &b] {
        eventually(Duration::from_secs(10), "the bridge connects", || async {
            health(s).await["redis"] == "ok"
        })
        .await;
    }
    (a, b, db)
}

/// How long a stream reader waits for bytes before it fails the test.
pub const STREAM_WAIT: Duration = Duration::from_secs(10);
/// The `Accept` Apollo Client's `HttpLink` sends with a subscription.
pub const MULTIPART_ACCEPT: &str =
    "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0,application/json";

/// A streaming response read as events (SSE) or parts (multipart).
pub struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    pub fn new(response: reqwest::Response) -> Self {
        Stream {
            response,
            buffer: String::new(),
        }
    }

    async fn more(&mut self, what: &str) -> bool {
        match tokio::time::timeout(STREAM_WAIT, self.response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(e)) => panic!("reading the stream for {what}: {e}"),
            Err(_) => panic!(
                "no bytes within {STREAM_WAIT:?} waiting for {what}: {:?}",
                self.buffer
            ),
        }
    }

    /// The next SSE event with a name (comments skipped): its name and data (`Null` if none).
    pub async fn event(&mut self, what: &str) -> Option<(String, Value)> {
        loop {
            while let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let Some(name) = name {
                    let data = if data.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&data).expect("event data is JSON")
                    };
                    return Some((name, data));
                }
            }
            if !self.more(what).await {
                return None;
            }
        }
    }

    /// The next `next` event's data, which must come before anything else.
    pub async fn next(&mut self, what: &str) -> Value {
        match self.event(what).await {
            Some((name, data)) if name == "next" => data,
            other => panic!("expected `next` with {what}, got {other:?}"),
        }
    }

    /// The next multipart part's JSON (heartbeats `{}` included); `None` once the closing
    /// boundary came.
    pub async fn part(&mut self, what: &str) -> Option<Value> {
        const BOUNDARY: &str = "\r\n--graphql";
        loop {
            // A part is complete once the next boundary follows it.
            if let Some(start) = self.buffer.find(BOUNDARY) {
                let rest = &self.buffer[start + BOUNDARY.len()..];
                if rest.starts_with("--") {
                    return None;
                }
                if let Some(end) = rest.find(BOUNDARY) {
                    let part = rest[..end].to_owned();
                    self.buffer.drain(..start + BOUNDARY.len() + end);
                    let (headers, body) = part.split_once("\r\n\r\n").expect("part headers");
                    assert!(
                        headers
                            .to_ascii_lowercase()
                            .contains("content-type: application/json"),
                        "{headers}"
                    );
                    return Some(serde_json::from_str(body).expect("part is JSON"));
                }
            }
            if !self.more(what).await {
                panic!(
                    "the stream ended without its closing boundary: {:?}",
                    self.buffer
                );
            }
        }
    }

    /// The next part that is not a heartbeat.
    pub async fn payload(&mut self, what: &str) -> Value {
        loop {
            match self.part(what).await {
                Some(part) if part == json!({}) => continue,
                Some(part) => return part,
                None => panic!("the stream ended waiting for {what}"),
            }
        }
    }
}

/// Asserts `frame` is an object with exactly these keys.
pub fn assert_exact_keys(frame: &serde_json::Value, keys: &[&str]) {
    let mut got: Vec<&str> = frame
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "{frame}");
}
