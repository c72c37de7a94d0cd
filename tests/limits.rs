//! Limits a public server needs: per-user rates on every transport (and shared between
//! instances), query cost, rooms per user, and persisted queries.

mod common;

use common::*;
use serde_json::json;

const SEND: &str = "mutation($b: String!) { sendMessage(roomId: \"lobby\", body: $b) { id } }";

#[tokio::test]
async fn sending_faster_than_the_rate_is_rate_limited_on_every_transport() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_RATE_MESSAGES", "1/1h"),
            ("TIDINGS_BURST_MESSAGES", "3"),
        ],
    );
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&server, &alice, "lobby").await;
    join(&server, &bob, "lobby").await;
    // The burst over HTTP, then the socket shares the same budget.
    for i in 0..2 {
        server
            .ok(Some(&alice), SEND, json!({ "b": format!("http {i}") }))
            .await;
    }
    let mut ws = GqlSocket::user(&server, &alice).await;
    ws.subscribe("1", SEND, json!({ "b": "ws" })).await;
    ws.data("1").await;
    ws.subscribe("2", SEND, json!({ "b": "one too many" }))
        .await;
    assert_eq!(ws.error_code("2").await, "RATE_LIMITED");
    let body = server
        .gql(Some(&alice), SEND, json!({ "b": "still too many" }))
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("retry in"),
        "{body}"
    );
    // Others are not affected, and nothing refused was stored.
    server
        .ok(Some(&bob), SEND, json!({ "b": "bob is fine" }))
        .await;
    let users: Vec<_> = history(&server, &bob, "lobby")
        .await
        .into_iter()
        .filter(|m| m["kind"] == "USER")
        .collect();
    assert_eq!(users.len(), 4);
    // Limits off (load tests): no limit.
    let db = TestDb::new(&Backend::Sqlite).await;
    let free = TestServer::start(
        &db,
        &[
            ("TIDINGS_RATE_MESSAGES", "1/1h"),
            ("TIDINGS_BURST_MESSAGES", "1"),
            ("TIDINGS_RATE_LIMITS", "off"),
        ],
    );
    join(&free, &alice, "lobby").await;
    for i in 0..5 {
        free.ok(Some(&alice), SEND, json!({ "b": format!("{i}") }))
            .await;
    }
}

#[tokio::test]
async fn the_rate_budget_is_shared_between_instances() {
    let redis = TestRedis::start();
    let env = [
        ("TIDINGS_RATE_MESSAGES", "1/1h"),
        ("TIDINGS_BURST_MESSAGES", "2"),
    ];
    let (a, b, _db) = bridged_pair(&Backend::Sqlite, &redis, &env).await;
    let alice = cli_token("alice", "user");
    join(&a, &alice, "lobby").await;
    a.ok(Some(&alice), SEND, json!({ "b": "1 on a" })).await;
    b.ok(Some(&alice), SEND, json!({ "b": "2 on b" })).await;
    assert_eq!(
        a.err_code(Some(&alice), SEND, json!({ "b": "3 on a" }))
            .await,
        "RATE_LIMITED"
    );
    assert_eq!(
        b.err_code(Some(&alice), SEND, json!({ "b": "3 on b" }))
            .await,
        "RATE_LIMITED"
    );
}

#[tokio::test]
async fn typing_and_notifications_have_their_own_limits() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_RATE_TYPING", "1/1h"),
            ("TIDINGS_BURST_TYPING", "2"),
            ("TIDINGS_RATE_NOTIFICATIONS", "1/1h"),
            ("TIDINGS_BURST_NOTIFICATIONS", "1"),
        ],
    );
    let alice = cli_token("alice", "user");
    let admin = cli_token("admin", "admin");
    join(&server, &alice, "lobby").await;
    let typing = "mutation { setTyping(roomId: \"lobby\", isTyping: true) }";
    server.ok(Some(&alice), typing, json!({})).await;
    server.ok(Some(&alice), typing, json!({})).await;
    assert_eq!(
        server.err_code(Some(&alice), typing, json!({})).await,
        "RATE_LIMITED"
    );
    // Messages have a budget of their own.
    server
        .ok(Some(&alice), SEND, json!({ "b": "still allowed" }))
        .await;
    let notify =
        "mutation { sendNotification(input: { userId: \"alice\", kind: \"k\", title: \"t\" }) }";
    server.ok(Some(&admin), notify, json!({})).await;
    assert_eq!(
        server.err_code(Some(&admin), notify, json!({})).await,
        "RATE_LIMITED"
    );
}

#[tokio::test]
async fn too_many_aliases_or_directives_are_too_complex() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let aliased: String = (0..31)
        .map(|i| format!("a{i}: leaderboard {{ version }} "))
        .collect();
    let code = server
        .err_code(None, &format!("{{ {aliased} }}"), json!({}))
        .await;
    assert_eq!(code, "TOO_COMPLEX");
    let fine: String = (0..30)
        .map(|i| format!("a{i}: leaderboard {{ version }} "))
        .collect();
    server.ok(None, &format!("{{ {fine} }}"), json!({})).await;
    let directives = "{ leaderboard @skip(if: false) @skip(if: false) @skip(if: false) @skip(if: false) @skip(if: false) @skip(if: false) { version } }";
    let body = server.gql(None, directives, json!({})).await;
    assert!(
        body["errors"][0]["extensions"]["code"].is_string(),
        "{body}"
    );
}

#[tokio::test]
async fn introspection_can_be_switched_off() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_INTROSPECTION", "false")]);
    let body = server
        .gql(
            None,
            "{ __schema { queryType { name } } __type(name: \"Query\") { name } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"],
        json!({ "__schema": null, "__type": null }),
        "introspection answers nothing: {body}"
    );
    server
        .ok(None, "{ leaderboard { version } }", json!({}))
        .await;
    let (open, _db2) = common::server(&Backend::Sqlite).await;
    let schema = open
        .ok(None, "{ __schema { queryType { name } } }", json!({}))
        .await;
    assert_eq!(schema["__schema"]["queryType"]["name"], "Query");
}

#[tokio::test]
async fn a_user_may_belong_to_a_limited_number_of_rooms() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_MAX_ROOMS_PER_USER", "2")]);
    let alice = cli_token("alice", "user");
    join(&server, &alice, "one").await;
    join(&server, &alice, "two").await;
    let code = server
        .err_code(
            Some(&alice),
            "mutation { joinRoom(roomId: \"three\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    let code = server
        .err_code(
            Some(&alice),
            "mutation { createRoom(id: \"four\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    assert_eq!(
        server
            .ok(Some(&alice), "{ room(id: \"four\") { id } }", json!({}))
            .await["room"],
        json!(null),
        "no orphan room"
    );
    server
        .ok(
            Some(&alice),
            "mutation { leaveRoom(roomId: \"one\") }",
            json!({}),
        )
        .await;
    join(&server, &alice, "three").await;
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn persisted_queries_work_over_http_and_websocket() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let query = "{ leaderboard(limit: 3) { version } }";
    let ext = json!({ "persistedQuery": { "version": 1, "sha256Hash": sha256_hex(query) } });
    let url = server.url("/graphql");
    let post = |body: serde_json::Value| {
        let url = url.clone();
        async move {
            http()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("post")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        }
    };
    // Unknown hash: the client is asked for the query.
    let miss = post(json!({ "extensions": ext })).await;
    assert_eq!(miss["errors"][0]["message"], "PersistedQueryNotFound");
    // Hash and query: registered and run; then the hash alone is enough.
    let first = post(json!({ "query": query, "extensions": ext })).await;
    assert!(
        first["data"]["leaderboard"]["version"].is_number(),
        "{first}"
    );
    let again = post(json!({ "extensions": ext })).await;
    assert_eq!(again["data"], first["data"]);
    // Over the WebSocket: the hash alone, as Apollo's persisted-queries link sends it.
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    ws.send(json!({ "id": "p", "type": "subscribe", "payload": { "extensions": ext } }))
        .await;
    assert_eq!(ws.data("p").await, first["data"]);
}
