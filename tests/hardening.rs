//! A public server under misuse: too many connections or operations, clients that stop
//! reading, revoked users, and floods of malformed frames. Each limit answers with its
//! documented code and leaves everyone else served.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn a_user_over_the_connection_limit_is_closed_with_1008_on_any_transport() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_MAX_CONNECTIONS_PER_USER", "2")]);
    let bob = cli_token("bob", "user");
    let first = GqlSocket::user(&server, &bob).await;
    let _second = LegacyClient::user(&server, &bob).await;
    // The third, whichever transport, is refused.
    let mut third = GqlSocket::open(&server, TRANSPORT_WS, "").await;
    third
        .send(json!({ "type": "connection_init", "payload": { "authToken": bob } }))
        .await;
    assert_eq!(
        third.closed().await,
        Closed {
            code: 1008,
            reason: "too many connections".into()
        }
    );
    let mut legacy = LegacyClient::open(&server, &format!("/ws?token={bob}")).await;
    assert_eq!(legacy.closed().await.code, 1008);
    // Others are not affected; a freed slot can be taken again.
    let _alice = GqlSocket::user(&server, &cli_token("alice", "user")).await;
    first.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = GqlSocket::user(&server, &bob).await;
    again.subscribe("1", "{ me { username } }", json!({})).await;
    assert_eq!(again.data("1").await["me"]["username"], "bob");
}

#[tokio::test]
async fn a_connection_runs_a_limited_number_of_operations_at_once() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_MAX_SUBSCRIPTIONS", "2")]);
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    let sub = "subscription { leaderboard { version } }";
    for id in ["a", "b"] {
        ws.subscribe(id, sub, json!({})).await;
        ws.data(id).await;
    }
    ws.subscribe("c", sub, json!({})).await;
    assert_eq!(ws.error_code("c").await, "RATE_LIMITED");
    // Completing one frees a place; the socket stayed open throughout.
    ws.send(json!({ "id": "a", "type": "complete" })).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.subscribe("c", sub, json!({})).await;
    ws.data("c").await;
}

#[tokio::test]
async fn an_admin_disconnects_a_user_everywhere_and_their_tokens_stop_working() {
    let redis = TestRedis::start();
    let (a, b, _db) = bridged_pair(&Backend::Sqlite, &redis, &[]).await;
    let admin = cli_token("admin", "admin");
    let bob = cli_token("bob", "user");
    let alice = cli_token("alice", "user");
    let mut bob_gql = GqlSocket::user(&b, &bob).await;
    let mut bob_legacy = LegacyClient::user(&a, &bob).await;
    let mut alice_ws = GqlSocket::user(&b, &alice).await;
    let code = a
        .err_code(
            Some(&alice),
            "mutation { disconnectUser(userId: \"bob\") }",
            json!({}),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    let code = a
        .err_code(
            Some(&admin),
            "mutation { disconnectUser(userId: \"nobody\") }",
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let done = a
        .ok(
            Some(&admin),
            "mutation { disconnectUser(userId: \"bob\") }",
            json!({}),
        )
        .await;
    assert_eq!(done["disconnectUser"], true);
    assert_eq!(
        bob_gql.closed().await,
        Closed {
            code: 4403,
            reason: "disconnected by an administrator".into()
        }
    );
    assert_eq!(bob_legacy.closed().await.code, 4001);
    // The old token is refused from now on; a token issued later works.
    let resp = http()
        .post(a.url("/graphql"))
        .bearer_auth(&bob)
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 401);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = cli_token("bob", "user");
    assert_eq!(
        a.ok(Some(&fresh), "{ me { id } }", json!({})).await["me"]["id"],
        "bob"
    );
    // Alice was never touched.
    alice_ws.subscribe("1", "{ me { id } }", json!({})).await;
    assert_eq!(alice_ws.data("1").await["me"]["id"], "alice");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer_without_hurting_others() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_WS_QUEUE", "4"),
            ("TIDINGS_SLOW_CONSUMER_TIMEOUT", "1s"),
            ("TIDINGS_RATE_LIMITS", "off"),
        ],
    );
    let backend = cli_token("backend", "admin");
    let query = "subscription { events(channels: [\"public:flood\"]) { data } }";
    let mut stalled = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    stalled.subscribe("e", query, json!({})).await;
    let mut reader = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    reader.subscribe("e", query, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ~18 MB: more than the kernel's socket buffers hold for a client that reads nothing.
    let chunk = "x".repeat(60_000);
    let events = 300;
    let publisher = async {
        for i in 0..events {
            let resp = http()
                .post(server.url("/api/publish"))
                .bearer_auth(&backend)
                .json(&json!({ "channel": "public:flood", "type": "chunk", "data": { "i": i, "pad": chunk } }))
                .send()
                .await
                .expect("publish");
            assert_eq!(resp.status(), 200);
        }
    };
    let reading = async {
        let mut seen = Vec::new();
        for _ in 0..events {
            seen.push(
                reader.data("e").await["events"]["data"]["i"]
                    .as_i64()
                    .unwrap_or(-1),
            );
        }
        seen
    };
    let ((), seen) = tokio::join!(publisher, reading);
    assert_eq!(
        seen,
        (0..events).collect::<Vec<i64>>(),
        "the reading client got everything, in order"
    );
    // The one that read nothing was cut off; reading now finds its close after what was queued.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let closed = stalled.closed().await;
    assert_eq!(
        closed,
        Closed {
            code: 1008,
            reason: "slow consumer".into()
        }
    );
    assert!(
        server.log().contains("slow consumer"),
        "and the server says why"
    );
    assert_eq!(health(&server).await["status"], "ok");
}

#[tokio::test]
async fn thousands_of_malformed_frames_leave_the_server_serving() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let mut witness = GqlSocket::user(&server, &alice).await;
    let mut nested = String::new();
    for _ in 0..10_000 {
        nested.push('[');
    }
    let garbage: Vec<String> = vec![
        "".into(),
        "{".into(),
        "null".into(),
        "[]".into(),
        "\u{0}\u{1}".into(),
        nested,
        json!({ "type": 42 }).to_string(),
        json!({ "type": "subscribe", "id": 7, "payload": 1 }).to_string(),
        json!({ "type": "subscribe", "id": "x", "payload": { "query": 5 } }).to_string(),
        json!({ "type": "subscribe", "id": "x", "payload": { "query": "{ me { id }", "variables": [1] } }).to_string(),
        json!({ "type": "join_room", "room": { "a": 1 } }).to_string(),
        json!({ "type": "message", "room": "lobby", "text": ["x"] }).to_string(),
        json!({ "type": "typing", "room": null }).to_string(),
        json!({ "type": "get_online_status", "user_ids": "everyone" }).to_string(),
        json!({ "type": "subscribe", "channel": 3 }).to_string(),
        json!({ "type": "ping", "payload": { "n": 1e308 } }).to_string(),
        "{\"type\":\"connection_init\",\"payload\":{\"authToken\":\"\u{fffd}\"}}".into(),
    ];
    // The legacy protocol answers bad frames with errors and stays open: one socket takes them
    // all, thousands of times.
    let mut legacy = LegacyClient::user(&server, &alice).await;
    let mut sent = 0;
    for round in 0..150 {
        for g in garbage
            .iter()
            .filter(|g| serde_json::from_str::<Value>(g).is_ok())
        {
            legacy.send_text(g.clone()).await;
            sent += 1;
        }
        if round % 50 == 0 {
            legacy.send(json!({ "type": "ping" })).await;
            legacy.next_of("pong").await;
        }
    }
    assert!(sent >= 1500, "{sent} frames");
    legacy.send(json!({ "type": "ping" })).await;
    legacy.next_of("pong").await;
    // The GraphQL protocols: each bad frame on its own socket (graphql-transport-ws closes on
    // the first), both subprotocols, before and after connection_init.
    for g in &garbage {
        for protocol in [TRANSPORT_WS, LEGACY_WS] {
            let mut ws = GqlSocket::open(&server, protocol, "").await;
            ws.send_text(g.clone()).await;
            let mut ws2 = GqlSocket::connect(&server, protocol, json!({})).await;
            ws2.send_text(g.clone()).await;
            ws2.send(json!({ "id": "ok", "type": if protocol == LEGACY_WS { "start" } else { "subscribe" },
                "payload": { "query": "{ leaderboard { version } }" } })).await;
            drop(ws);
            drop(ws2);
        }
    }
    // Binary frames that are not UTF-8.
    let mut bin = LegacyClient::user(&server, &alice).await;
    bin.send_binary(vec![0xff, 0xfe, 0x00, 0x80]).await;
    assert_eq!(bin.closed().await.code, 4002);
    // Everyone else is still served.
    witness
        .subscribe("1", "{ me { username } }", json!({}))
        .await;
    assert_eq!(witness.data("1").await["me"]["username"], "alice");
    assert_eq!(health(&server).await["status"], "ok");
    assert!(
        !server.log().contains("panicked"),
        "no panic in the server log"
    );
}
