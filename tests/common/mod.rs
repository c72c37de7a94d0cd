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

pub const SECRET: &str = "tidings-test-secret";
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
}

impl TestServer {
    /// Starts a server on `db` with the test secret and `env` on top.
    pub fn start(db: &TestDb, env: &[(&str, &str)]) -> Self {
        let log = db.dir().join(format!(
            "server-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_remove("TIDINGS_REDIS_URL")
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
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
