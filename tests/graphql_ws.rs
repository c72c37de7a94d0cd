//! The graphql-transport-ws protocol as graphql-ws's PROTOCOL.md defines it, and the legacy
//! graphql-ws (subscriptions-transport-ws) protocol, frame by frame.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn quick_server(env: &[(&str, &str)]) -> (TestServer, TestDb) {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, env);
    (server, db)
}

#[tokio::test]
async fn connection_init_is_acknowledged_and_queries_and_mutations_run_over_the_socket() {
    let (server, _db) = quick_server(&[]).await;
    let token = cli_token("alice", "user");
    let mut ws = GqlSocket::user(&server, &token).await;
    ws.subscribe("q", "{ me { username } }", json!({})).await;
    assert_eq!(ws.data("q").await, json!({ "me": { "username": "alice" } }));
    assert_eq!(
        ws.frame_for("q").await,
        json!({ "id": "q", "type": "complete" })
    );
    ws.subscribe(
        "m",
        "mutation($r: ID!) { joinRoom(roomId: $r) { id } }",
        json!({ "r": "lobby" }),
    )
    .await;
    assert_eq!(ws.data("m").await["joinRoom"]["id"], "lobby");
    assert_eq!(ws.frame_for("m").await["type"], "complete");
    // An id may be reused once its operation completed.
    ws.subscribe("q", "{ me { id } }", json!({})).await;
    assert_eq!(ws.data("q").await["me"]["id"], "alice");
}

#[tokio::test]
async fn every_documented_way_of_passing_the_token_signs_the_socket_in() {
    let (server, _db) = quick_server(&[]).await;
    let token = cli_token("bob", "user");
    let bearer = format!("Bearer {token}");
    for payload in [
        json!({ "authToken": token }),
        json!({ "token": token }),
        json!({ "Authorization": bearer }),
        json!({ "headers": { "Authorization": bearer } }),
    ] {
        let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, payload.clone()).await;
        ws.subscribe("1", "{ me { username } }", json!({})).await;
        assert_eq!(ws.data("1").await["me"]["username"], "bob", "{payload}");
    }
    // On the upgrade request: ?token= (browsers) and the Authorization header.
    for (query, header) in [
        (format!("?token={token}"), None),
        (String::new(), Some(bearer.as_str())),
    ] {
        let mut ws = GqlSocket::open_with(&server, TRANSPORT_WS, &query, header).await;
        ws.send(json!({ "type": "connection_init" })).await;
        assert_eq!(ws.next_frame().await["type"], "connection_ack");
        ws.subscribe("1", "{ me { username } }", json!({})).await;
        assert_eq!(ws.data("1").await["me"]["username"], "bob");
    }
    // No token at all: anonymous.
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    ws.subscribe("1", "{ me { username } }", json!({})).await;
    assert_eq!(ws.data("1").await, json!({ "me": null }));
}

#[tokio::test]
async fn a_bad_token_in_connection_init_closes_with_4403() {
    let (server, _db) = quick_server(&[]).await;
    let mut ws = GqlSocket::open(&server, TRANSPORT_WS, "").await;
    ws.send(json!({ "type": "connection_init", "payload": { "authToken": "garbage" } }))
        .await;
    assert_eq!(
        ws.closed().await,
        Closed {
            code: 4403,
            reason: "Forbidden".into()
        }
    );
}

#[tokio::test]
async fn the_legacy_protocol_answers_a_bad_token_with_connection_error_then_closes() {
    let (server, _db) = quick_server(&[]).await;
    let mut ws = GqlSocket::open(&server, LEGACY_WS, "").await;
    ws.send(json!({ "type": "connection_init", "payload": { "authToken": "garbage" } }))
        .await;
    let closed = ws.closed().await;
    assert_eq!(closed.code, 4403);
    let error = ws.next_frame().await;
    assert_eq!(error["type"], "connection_error", "{error}");
}

#[tokio::test]
async fn no_connection_init_in_time_closes_with_4408() {
    let (server, _db) = quick_server(&[("TIDINGS_WS_INIT_TIMEOUT", "400ms")]).await;
    let mut ws = GqlSocket::open(&server, TRANSPORT_WS, "").await;
    let started = std::time::Instant::now();
    assert_eq!(
        ws.closed().await,
        Closed {
            code: 4408,
            reason: "Connection initialisation timeout".into()
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(350));
}

#[tokio::test]
async fn subscribe_before_the_ack_closes_with_4401() {
    let (server, _db) = quick_server(&[]).await;
    let mut ws = GqlSocket::open(&server, TRANSPORT_WS, "").await;
    ws.subscribe("1", "{ me { id } }", json!({})).await;
    assert_eq!(
        ws.closed().await,
        Closed {
            code: 4401,
            reason: "Unauthorized".into()
        }
    );
}

#[tokio::test]
async fn a_second_connection_init_closes_with_4429() {
    let (server, _db) = quick_server(&[]).await;
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    ws.send(json!({ "type": "connection_init" })).await;
    assert_eq!(
        ws.closed().await,
        Closed {
            code: 4429,
            reason: "Too many initialisation requests".into()
        }
    );
}

#[tokio::test]
async fn a_duplicate_active_id_closes_with_4409() {
    let (server, _db) = quick_server(&[]).await;
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    let sub = "subscription { leaderboard { version } }";
    ws.subscribe("dup", sub, json!({})).await;
    ws.data("dup").await;
    ws.subscribe("dup", sub, json!({})).await;
    assert_eq!(
        ws.closed().await,
        Closed {
            code: 4409,
            reason: "Subscriber for dup already exists".into()
        }
    );
}

#[tokio::test]
async fn malformed_messages_close_with_4400() {
    let (server, _db) = quick_server(&[]).await;
    for bad in [
        "not json".to_owned(),
        "[1, 2]".to_owned(),
        json!({ "type": "no-such-type" }).to_string(),
        json!({ "type": "subscribe", "payload": { "query": "{ me { id } }" } }).to_string(),
        json!({ "type": "subscribe", "id": "1" }).to_string(),
    ] {
        let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
        ws.send_text(bad.clone()).await;
        let closed = ws.closed().await;
        assert_eq!(closed.code, 4400, "{bad}: {closed:?}");
    }
    // The server still serves.
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    ws.subscribe("ok", "{ leaderboard { version } }", json!({}))
        .await;
    ws.data("ok").await;
}

#[tokio::test]
async fn an_invalid_operation_gets_an_error_message_and_the_socket_stays_open() {
    let (server, _db) = quick_server(&[]).await;
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    ws.subscribe("bad", "subscription { noSuchField }", json!({}))
        .await;
    let f = ws.frame_for("bad").await;
    assert_eq!(f["type"], "error", "{f}");
    assert!(
        f["payload"].is_array(),
        "error payload is a list of GraphQL errors: {f}"
    );
    assert_eq!(f["payload"][0]["extensions"]["code"], "BAD_USER_INPUT");
    ws.subscribe("good", "{ leaderboard { version } }", json!({}))
        .await;
    ws.data("good").await;
}

#[tokio::test]
async fn the_server_pings_and_answers_pings() {
    let (server, _db) = quick_server(&[("TIDINGS_WS_PING_INTERVAL", "300ms")]).await;
    let mut ws = GqlSocket::open(&server, TRANSPORT_WS, "").await;
    ws.send(json!({ "type": "connection_init" })).await;
    ws.send(json!({ "type": "ping", "payload": { "n": 1 } }))
        .await;
    // Raw frames, pings included: the ack, our pong, then a server ping.
    assert_eq!(ws.raw_next().await["type"], "connection_ack");
    assert_eq!(
        ws.raw_next().await,
        json!({ "type": "pong", "payload": { "n": 1 } })
    );
    assert_eq!(ws.raw_next().await["type"], "ping");
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_idle_timeout() {
    let (server, _db) = quick_server(&[
        ("TIDINGS_WS_PING_INTERVAL", "200ms"),
        ("TIDINGS_WS_IDLE_TIMEOUT", "600ms"),
    ])
    .await;
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    // Not reading at all means not answering pings either: the peer looks dead. The close
    // frame waits in the socket for when we look.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = server.log();
    assert!(
        log.contains("code=1001 reason=\"ping timeout\""),
        "the server gave up on the peer:\n{log}"
    );
    // Reading now finds the socket closed (the close frame, or a reset after the pongs that
    // reading triggers reach a socket the server already shut).
    let closed = ws.closed().await;
    assert!(closed.code == 1001 || closed.code == 1006, "{closed:?}");
}

#[tokio::test]
async fn the_legacy_protocol_acknowledges_streams_data_and_sends_keep_alives() {
    let (server, _db) = quick_server(&[("TIDINGS_WS_PING_INTERVAL", "300ms")]).await;
    let token = cli_token("carol", "user");
    let mut ws = GqlSocket::open(&server, LEGACY_WS, "").await;
    ws.send(json!({ "type": "connection_init", "payload": { "authToken": token } }))
        .await;
    assert_eq!(ws.raw_next().await["type"], "connection_ack");
    ws.subscribe("1", "{ me { username } }", json!({})).await;
    let data = ws.raw_next().await;
    assert_eq!(
        data,
        json!({ "id": "1", "type": "data", "payload": { "data": { "me": { "username": "carol" } } } })
    );
    assert_eq!(
        ws.raw_next().await,
        json!({ "id": "1", "type": "complete" })
    );
    assert_eq!(ws.raw_next().await["type"], "ka");
    // Unknown messages get an error and the socket stays open.
    ws.send(json!({ "type": "bogus" })).await;
    assert_eq!(ws.raw_next().await["type"], "error");
    ws.subscribe("2", "{ me { username } }", json!({})).await;
    assert_eq!(ws.data("2").await["me"]["username"], "carol");
    ws.send(json!({ "type": "connection_terminate" })).await;
    assert_eq!(ws.closed().await.code, 1000);
}

#[tokio::test]
async fn a_socket_is_closed_with_4403_when_its_token_expires() {
    let (server, _db) = quick_server(&[]).await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "dave", "exp": chrono::Utc::now().timestamp() + 2 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint");
    let mut ws = GqlSocket::user(&server, &token).await;
    let started = std::time::Instant::now();
    assert_eq!(
        ws.closed().await,
        Closed {
            code: 4403,
            reason: "token expired".into()
        }
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed at exp, not at once"
    );
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009_and_others_are_unaffected() {
    let (server, _db) = quick_server(&[("TIDINGS_MAX_FRAME_BYTES", "4096")]).await;
    let mut other = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    ws.send_text(format!(
        "{{\"type\":\"ping\",\"payload\":\"{}\"}}",
        "x".repeat(10_000)
    ))
    .await;
    assert_eq!(ws.closed().await.code, 1009);
    other
        .subscribe("1", "{ leaderboard { version } }", json!({}))
        .await;
    other.data("1").await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    server.terminate();
    assert_eq!(
        ws.closed().await,
        Closed {
            code: 1001,
            reason: "server shutting down".into()
        }
    );
}
