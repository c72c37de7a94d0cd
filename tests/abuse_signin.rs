//! Abuse of sign-in, secrets and usernames, against the real binary: password guessing is
//! rate-limited per address and per username, login timing does not tell accounts apart, a
//! weak secret stops the start, the SQLite file is private, usernames are unique regardless of
//! case, and a token's name claim is a username only if `register` would take it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};

const LOGIN: &str =
    "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token } }";
const REGISTER: &str =
    "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token user { username } } }";
const ME: &str = "{ me { id username } }";

/// POSTs a batch of GraphQL requests; returns each item's first error code (`None` when it
/// succeeded). Batches stay small: the batch size is a budget of its own.
async fn batch(server: &TestServer, items: &[Value]) -> Vec<Option<String>> {
    let resp = http()
        .post(server.url("/graphql"))
        .json(&Value::Array(items.to_vec()))
        .send()
        .await
        .expect("POST /graphql");
    let body: Value = resp.json().await.expect("JSON");
    body.as_array()
        .unwrap_or_else(|| panic!("a batch answer: {body}"))
        .iter()
        .map(|r| {
            r["errors"][0]["extensions"]["code"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn login_item(username: &str, password: &str) -> Value {
    json!({ "query": LOGIN, "variables": { "u": username, "p": password } })
}

fn refused(codes: &[Option<String>]) -> usize {
    codes
        .iter()
        .filter(|c| c.as_deref() == Some("RATE_LIMITED"))
        .count()
}

/// Finding 3: 1,000 guesses in one batch went through. Guesses at one account are refused
/// past its budget, and so are guesses at many accounts from one address, over HTTP and over a
/// WebSocket alike; each refusal is counted.
#[tokio::test]
async fn password_guessing_is_rate_limited_per_username_and_per_address() {
    let db = TestDb::new(&Backend::Sqlite).await;
    // The default bursts (30 per address, 10 per username), refilled slowly enough that no
    // token comes back while the test runs.
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_RATE_SIGN_IN_ADDRESS", "30/1h"),
            ("TIDINGS_RATE_SIGN_IN_USERNAME", "10/1h"),
        ],
    );
    register(&server, "victim").await;

    // One account: the username's burst (10) runs out within 12 guesses.
    let mut codes = Vec::new();
    for round in 0..2 {
        let items: Vec<Value> = (0..6)
            .map(|i| login_item("victim", &format!("guess {round} {i}")))
            .collect();
        codes.extend(batch(&server, &items).await);
    }
    assert!(
        refused(&codes) >= 1,
        "12 guesses at one account, none refused: {codes:?}"
    );
    assert!(
        codes
            .iter()
            .all(|c| matches!(c.as_deref(), Some("UNAUTHENTICATED" | "RATE_LIMITED"))),
        "{codes:?}"
    );
    // The case of the name does not buy a fresh budget.
    let codes = batch(&server, &[login_item("VICTIM", "another guess")]).await;
    assert_eq!(codes, [Some("RATE_LIMITED".to_owned())]);

    // Many accounts from one address: the address's burst (30, 14 spent) runs out too.
    let mut codes = Vec::new();
    for round in 0..4 {
        let items: Vec<Value> = (0..10)
            .map(|i| login_item(&format!("user{round}x{i}"), "a guessed password"))
            .collect();
        codes.extend(batch(&server, &items).await);
    }
    assert!(
        refused(&codes) >= 24,
        "40 guesses from one address after 14: too few refused: {codes:?}"
    );

    // A WebSocket from the same address shares its budget.
    let mut socket = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    socket
        .subscribe(
            "1",
            LOGIN,
            json!({ "u": "fresh-name", "p": "a guessed password" }),
        )
        .await;
    assert_eq!(socket.error_code("1").await, "RATE_LIMITED");

    let text = metrics(&server).await;
    for limit in ["address", "username"] {
        let n = sample(
            &text,
            &format!("tidings_sign_in_refused_total{{limit=\"{limit}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= 1.0, "refusals by {limit} counted: {text}");
    }
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn timed_login(server: &TestServer, username: &str) -> Duration {
    let started = Instant::now();
    let body = server
        .gql(
            None,
            LOGIN,
            json!({ "u": username, "p": "not the password" }),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{username}: {body}"
    );
    took
}

/// Finding 6: a login for an account without a password (provisioned from a token) answered
/// in a fraction of the time a real check takes. Unknown users, users without a password and
/// wrong passwords now take about as long.
#[tokio::test]
async fn login_takes_as_long_for_unknown_and_password_less_users_as_for_a_wrong_password() {
    let db = TestDb::new(&Backend::Sqlite).await;
    // Limits off: only the time of the check itself is measured.
    let server = TestServer::start(&db, &[("TIDINGS_RATE_LIMITS", "off")]);
    register(&server, "haspassword").await;
    let sso = cli_token("fromsso", "user");
    assert_eq!(
        server.ok(Some(&sso), ME, json!({})).await["me"]["username"],
        "fromsso"
    );

    let kinds = ["haspassword", "fromsso", "nosuchuser"];
    for kind in kinds {
        timed_login(&server, kind).await;
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for _ in 0..11 {
        for (k, kind) in kinds.iter().enumerate() {
            times[k].push(timed_login(&server, kind).await);
        }
    }
    let [wrong, password_less, unknown] = [0, 1, 2].map(|k| median(times[k].clone()));
    assert!(
        password_less * 3 >= wrong,
        "password-less {password_less:?} vs wrong password {wrong:?}"
    );
    assert!(
        unknown * 3 >= wrong,
        "unknown {unknown:?} vs wrong password {wrong:?}"
    );
}

/// Runs `tidings serve` with `secret`; returns whether it succeeded and what it printed on
/// stderr, or `None` when it was still running after 30 s (then it is killed).
fn serve_with_secret(secret: &str) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("tidings.db").display()
    );
    let stderr = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_remove("TIDINGS_REDIS_URL")
        .env("TIDINGS_BIND", "127.0.0.1:0")
        .env("TIDINGS_DATABASE_URL", &url)
        .env("TIDINGS_JWT_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn tidings");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&stderr).unwrap_or_default();
            return Some((status.success(), text));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Finding 4: `TIDINGS_JWT_SECRET=x` started the server without a word. A secret under 32
/// bytes now stops the start with a message naming the setting.
#[tokio::test]
async fn a_jwt_secret_under_32_bytes_stops_the_start() {
    for secret in ["x", "0123456789abcdef0123456789abcde"] {
        assert!(secret.len() < 32);
        let (succeeded, stderr) = serve_with_secret(secret)
            .unwrap_or_else(|| panic!("a {}-byte secret: still serving", secret.len()));
        assert!(
            !succeeded,
            "a {}-byte secret: exit status success",
            secret.len()
        );
        assert!(
            stderr.contains("TIDINGS_JWT_SECRET"),
            "the message names the setting: {stderr}"
        );
    }
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Finding 5: the SQLite file, which holds the generated secret, was created 0644 (its `-wal`
/// and `-shm` too). New files are 0600 now, and an existing readable one is warned about.
#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new(&Backend::Sqlite).await;
    // No secret configured: the generated one is stored in the file.
    let server = TestServer::start(&db, &[("TIDINGS_JWT_SECRET", "")]);
    register(&server, "writer").await;
    let file = db.dir().join("tidings.db");
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    for suffix in ["-wal", "-shm"] {
        let path = db.dir().join(format!("tidings.db{suffix}"));
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    server.stop();

    let old = TestDb::new(&Backend::Sqlite).await;
    let path = old.dir().join("tidings.db");
    std::fs::write(&path, b"").expect("create");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let server = TestServer::start(&old, &[]);
    assert!(
        server.log().contains("readable by other users"),
        "a warning about the readable file: {}",
        server.log()
    );
}

/// Finding 7: `Alice` and `alice` were two accounts. A name taken in another case is taken.
#[tokio::test]
async fn a_username_taken_in_another_case_is_taken() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        register(&server, "alice").await;
        let body = server
            .gql(
                None,
                REGISTER,
                json!({ "u": "Alice", "p": "correct horse battery" }),
            )
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"],
            "BAD_USER_INPUT",
            "{} {body}",
            backend.name()
        );
        assert_eq!(body["errors"][0]["message"], "username is taken");
        // The account answers to its name in any case.
        let data = server
            .ok(
                None,
                LOGIN,
                json!({ "u": "ALICE", "p": "correct horse battery" }),
            )
            .await;
        let token = data["login"]["token"].as_str().expect("token");
        assert_eq!(
            server.ok(Some(token), ME, json!({})).await["me"]["username"],
            "alice"
        );
    }
}

fn mint(sub: &str, name: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "name": name, "exp": now + 600, "iat": now }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint")
}

/// Finding 7: a token's `name` claim skipped username validation, so an RTL override and
/// markup became usernames. Such a name falls back to the token's subject; a name taken in
/// another case falls back the same way.
#[tokio::test]
async fn a_token_name_that_register_would_refuse_is_not_a_username() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        register(&server, "carol").await;
        for (sub, name) in [
            ("idp-rtl", "\u{202e}lortnoc"),
            ("idp-xss", "<script>alert(1)</script>"),
            ("idp-case", "CAROL"),
        ] {
            let token = mint(sub, name);
            let me = server.ok(Some(&token), ME, json!({})).await;
            assert_eq!(
                me["me"]["username"],
                sub,
                "name {name:?} on {}",
                backend.name()
            );
        }
        // A valid name is still taken as it is.
        let me = server
            .ok(Some(&mint("idp-dan", "Dan.B")), ME, json!({}))
            .await;
        assert_eq!(me["me"]["username"], "Dan.B");
    }
}

/// Finding 7, on an existing database: names that differ only in case must not stop the
/// migration that makes usernames unique regardless of case. The earliest keeps its name; the
/// others get the first free numbered suffix.
#[tokio::test]
async fn case_duplicates_in_an_older_database_are_renamed_by_the_migration() {
    use migration::{Migrator, MigratorTrait};
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        {
            let conn = tidings::db::open(&db.url).await.expect("open");
            // The schema as it was before usernames were folded.
            Migrator::up(&conn, Some(5)).await.expect("migrate to 5");
            for (id, username, at) in [
                ("u1", "alice", "2026-01-01T00:00:01Z"),
                ("u2", "Alice", "2026-01-01T00:00:02Z"),
                ("u3", "ALICE", "2026-01-01T00:00:03Z"),
                ("u4", "alice-2", "2026-01-01T00:00:00Z"),
            ] {
                conn.execute_unprepared(&format!(
                    "INSERT INTO users (id, username, role, points, status, created_at) \
                     VALUES ('{id}', '{username}', 'user', 0, 'ONLINE', '{at}')"
                ))
                .await
                .expect("insert");
            }
            conn.close().await.expect("close");
        }
        // The server migrates on start.
        let server = TestServer::start(&db, &[]);
        let conn = Database::connect(db.url.as_str()).await.expect("connect");
        let rows = conn
            .query_all_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                "SELECT id, username FROM users ORDER BY id",
            ))
            .await
            .expect("users");
        let names: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get("", "id").expect("id"),
                    r.try_get("", "username").expect("username"),
                )
            })
            .collect();
        let expected = [
            ("u1", "alice"),
            ("u2", "Alice-3"),
            ("u3", "ALICE-4"),
            ("u4", "alice-2"),
        ]
        .map(|(i, n)| (i.to_owned(), n.to_owned()));
        assert_eq!(names, expected, "{}", backend.name());
        let again = conn
            .execute_unprepared(
                "INSERT INTO users (id, username, role, points, status, created_at) \
                 VALUES ('u5', 'ALICE-2', 'user', 0, 'ONLINE', '2026-01-01T00:00:00Z')",
            )
            .await;
        assert!(again.is_err(), "the index refuses another case of a name");
        let _ = conn.close().await;
        server.stop();
    }
}
