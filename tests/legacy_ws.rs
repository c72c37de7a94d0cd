//! The legacy JSON protocol (LEGACY_WS.md) through real sockets: connecting and closing, every
//! client frame and alias, what legacy and GraphQL clients in one room see of each other, who is
//! told about presence, notifications, and the three dialects.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const MESSAGES: &str =
    "subscription($r: ID!, $a: ID) { messageAdded(roomId: $r, after: $a) { id body sender { username } } }";
const TYPING: &str = "subscription($r: ID!) { typing(roomId: $r) { isTyping user { username } } }";
const SET_TYPING: &str = "mutation($r: ID!, $t: Boolean!) { setTyping(roomId: $r, isTyping: $t) }";
const NOTIFY: &str = "mutation($i: SendNotificationInput!) { sendNotification(input: $i) }";

fn ws(token: &str) -> String {
    format!("/ws?token={token}")
}

fn mint(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn auth_failed() -> Closed {
    Closed {
        code: 4001,
        reason: "Authentication failed".into(),
    }
}

/// Users with tokens, each a member of `room` (joined over HTTP, which opens no connection).
async fn members(server: &TestServer, names: &[&str], room: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for name in names {
        let token = cli_token(name, "user");
        join(server, &token, room).await;
        tokens.push(token);
    }
    tokens
}

/// A legacy socket of `token` that joined `room` (its answers read).
async fn in_room(server: &TestServer, token: &str, room: &str) -> LegacyClient {
    let mut c = LegacyClient::user(server, token).await;
    c.send(json!({ "type": "join_room", "room": room })).await;
    assert_eq!(
        c.next_of("joined_room").await,
        json!({ "type": "joined_room", "data": { "room": room } })
    );
    c.sync().await;
    c
}

/// `frame` without `data` must equal `data`: a flat frame's fields are mirrored there.
fn assert_mirrored(frame: &Value) {
    let mut top = frame.as_object().expect("an object").clone();
    top.remove("type");
    let data = top.remove("data").expect("a data mirror");
    assert_eq!(Value::Object(top), data, "data mirrors the fields: {frame}");
}

// --- Connecting and closing -----------------------------------------------------------------

#[tokio::test]
async fn the_first_frame_welcomes_the_user_with_the_online_count() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let _bob = GqlSocket::user(&server, &cli_token("bob", "user")).await;
    let mut alice = LegacyClient::open(&server, &ws(&cli_token("alice", "user"))).await;
    let welcome = alice.next().await;
    // The token's expiry, so the client knows when to renew (`auth`).
    let expires_at = welcome["expires_at"].as_str().unwrap_or_default();
    let at = chrono::DateTime::parse_from_rfc3339(expires_at).expect("an ISO 8601 expiry");
    let left = at.timestamp() - chrono::Utc::now().timestamp();
    assert!((3590..=3600).contains(&left), "{welcome}");
    let fields = json!({ "message": "Connected successfully", "user_id": "alice",
        "online_count": 2, "expires_at": expires_at });
    assert_eq!(
        welcome,
        json!({ "type": "system", "message": "Connected successfully", "user_id": "alice",
                "online_count": 2, "expires_at": expires_at, "data": fields })
    );
}

#[tokio::test]
async fn api_v1_ws_is_the_same_endpoint_and_takes_the_token_from_the_authorization_header() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let bearer = format!("Bearer {}", cli_token("alice", "user"));
    let mut alice = LegacyClient::open_with(&server, "/api/v1/ws", Some(&bearer)).await;
    let welcome = alice.next().await;
    assert_eq!(welcome["message"], "Connected successfully");
    assert_eq!(welcome["user_id"], "alice");
}

#[tokio::test]
async fn a_missing_token_closes_with_4001_authentication_failed() {
    let (server, _db) = server(&Backend::Sqlite).await;
    for path in ["/ws", "/api/v1/ws", "/ws/auth", "/ws?token="] {
        let mut c = LegacyClient::open(&server, path).await;
        assert_eq!(c.closed().await, auth_failed(), "{path}");
    }
}

#[tokio::test]
async fn an_invalid_token_closes_with_4001_authentication_failed() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "alice", "exp": now() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"not the secret"),
    )
    .expect("mint");
    for token in ["not-a-jwt", forged.as_str()] {
        let mut c = LegacyClient::open(&server, &ws(token)).await;
        assert_eq!(c.closed().await, auth_failed(), "{token}");
    }
}

#[tokio::test]
async fn an_expired_token_closes_with_4001_authentication_failed() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let expired = mint(json!({ "sub": "alice", "exp": now() - 120 }));
    let mut c = LegacyClient::open(&server, &ws(&expired)).await;
    assert_eq!(c.closed().await, auth_failed());
}

#[tokio::test]
async fn a_live_socket_is_closed_with_4001_token_expired_at_exp() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let token = mint(json!({ "sub": "dave", "exp": now() + 2 }));
    let mut c = LegacyClient::user(&server, &token).await;
    let started = Instant::now();
    assert_eq!(
        c.closed().await,
        Closed {
            code: 4001,
            reason: "token expired".into()
        }
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed at exp, not at once"
    );
}

#[tokio::test]
async fn a_frame_that_is_not_json_closes_with_4002_invalid_json() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    c.send_text("hello?".into()).await;
    assert_eq!(
        c.closed().await,
        Closed {
            code: 4002,
            reason: "Invalid JSON".into()
        }
    );
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_MAX_FRAME_BYTES", "4096")]);
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    c.send(json!({ "type": "message", "room": "lobby", "text": "x".repeat(10_000) }))
        .await;
    assert_eq!(c.closed().await.code, 1009);
}

#[tokio::test]
async fn unknown_types_and_missing_fields_get_error_frames_and_the_socket_stays_open() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    for frame in [
        json!({ "type": "subscribe" }),
        json!({ "type": "join_room" }),
        json!({ "type": "message", "room": "lobby" }),
        json!({ "type": "typing", "room": "lobby", "is_typing": "yes" }),
        json!({ "room": "lobby" }),
        json!([1, 2, 3]),
    ] {
        c.send(frame.clone()).await;
        let error = c.next().await;
        assert_eq!(error["type"], "error", "{frame} -> {error}");
        assert_eq!(error["code"], "BAD_USER_INPUT", "{frame} -> {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_mirrored(&error);
    }
    c.sync().await;
}

#[tokio::test]
async fn domain_errors_come_back_as_error_frames_with_the_domains_code() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let bob = members(&server, &["bob"], "lobby").await;
    server
        .ok(
            Some(&bob[0]),
            "mutation { createRoom(id: \"secret\", isPrivate: true) { id } }",
            json!({}),
        )
        .await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    for (frame, code) in [
        (
            json!({ "type": "message", "room": "lobby", "text": "hi" }),
            "FORBIDDEN",
        ),
        (
            json!({ "type": "join_room", "room": "secret" }),
            "FORBIDDEN",
        ),
        (
            json!({ "type": "join_room", "room": "Not A Slug" }),
            "BAD_USER_INPUT",
        ),
        (json!({ "type": "typing", "room": "nowhere" }), "NOT_FOUND"),
    ] {
        c.send(frame.clone()).await;
        let error = c.next_of("error").await;
        assert_eq!(error["code"], code, "{frame} -> {error}");
    }
    c.send(json!({ "type": "join_room", "room": "lobby" }))
        .await;
    c.next_of("joined_room").await;
    c.send(json!({ "type": "message", "room": "lobby", "text": "   " }))
        .await;
    assert_eq!(c.next_of("error").await["code"], "BAD_USER_INPUT");
    c.sync().await;
}

#[tokio::test]
async fn ping_is_answered_with_a_bare_pong() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    c.send(json!({ "type": "ping" })).await;
    assert_eq!(c.next().await, json!({ "type": "pong" }));
}

#[tokio::test]
async fn a_silent_legacy_socket_is_closed_after_the_idle_timeout() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_WS_PING_INTERVAL", "200ms"),
            ("TIDINGS_WS_IDLE_TIMEOUT", "600ms"),
        ],
    );
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    // Not reading means not answering the server's pings: the peer looks dead.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = server.log();
    assert!(
        log.contains("code=1001 reason=\"ping timeout\""),
        "the server gave up on the peer:\n{log}"
    );
    let closed = c.closed().await;
    assert!(closed.code == 1001 || closed.code == 1006, "{closed:?}");
}

#[tokio::test]
async fn shutdown_closes_legacy_sockets_with_1001() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    server.terminate();
    assert_eq!(
        c.closed().await,
        Closed {
            code: 1001,
            reason: "server shutting down".into()
        }
    );
}

// --- Rooms, messages, typing ----------------------------------------------------------------

#[tokio::test]
async fn join_room_answers_joined_room_and_the_room_gets_a_system_frame_with_its_members() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let mut alice = LegacyClient::user(&server, &cli_token("alice", "user")).await;
        alice
            .send(json!({ "type": "join_room", "room": "lobby" }))
            .await;
        assert_eq!(
            alice.next().await,
            json!({ "type": "joined_room", "data": { "room": "lobby" } }),
            "{}",
            backend.name()
        );
        let joined = alice.next_of("system").await;
        assert_eq!(joined["message"], "alice joined");
        assert_eq!(joined["room"], "lobby");
        assert_eq!(joined["members"], json!(["alice"]));
        assert_mirrored(&joined);

        let mut bob = LegacyClient::user(&server, &cli_token("bob", "user")).await;
        bob.send(json!({ "type": "join_room", "room": "lobby" }))
            .await;
        bob.next_of("joined_room").await;
        assert_eq!(bob.next_of("system").await["message"], "bob joined");
        let seen = alice.next_of("system").await;
        assert_eq!(seen["message"], "bob joined");
        assert_eq!(seen["members"], json!(["alice", "bob"]));
    }
}

#[tokio::test]
async fn joining_a_room_again_only_answers_joined_room() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    join(&server, &alice, "lobby").await;
    // A reconnecting client joins again: it follows the room, and nobody is told twice.
    let mut c = LegacyClient::user(&server, &alice).await;
    c.send(json!({ "type": "join_room", "room": "lobby" }))
        .await;
    c.next_of("joined_room").await;
    c.expect_none_of("system", Duration::from_millis(500)).await;
    let joins = history(&server, &alice, "lobby")
        .await
        .iter()
        .filter(|m| m["body"] == "alice joined")
        .count();
    assert_eq!(joins, 1);
}

#[tokio::test]
async fn a_legacy_message_reaches_graphql_subscribers_and_the_senders_own_sockets() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let t = members(&server, &["alice", "bob"], "lobby").await;
        let last = last_message_id(&server, &t[1], "lobby").await;
        let mut bob = GqlSocket::user(&server, &t[1]).await;
        bob.subscribe("m", MESSAGES, json!({ "r": "lobby", "a": last }))
            .await;
        let mut alice = in_room(&server, &t[0], "lobby").await;
        let mut alice_phone = in_room(&server, &t[0], "lobby").await;

        alice
            .send(json!({ "type": "message", "room": "lobby", "text": "hello from legacy" }))
            .await;
        let got = bob.data("m").await["messageAdded"].clone();
        assert_eq!(got["body"], "hello from legacy", "{}", backend.name());
        assert_eq!(got["sender"]["username"], "alice");

        let frame = alice.next_of("message").await;
        assert_eq!(frame["id"], got["id"]);
        assert_eq!(frame["from"], "alice");
        assert_eq!(frame["username"], "alice");
        assert_eq!(frame["room"], "lobby");
        assert_eq!(frame["text"], "hello from legacy");
        assert!(frame["timestamp"]
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
        assert_mirrored(&frame);
        assert_eq!(alice_phone.next_of("message").await, frame);
    }
}

#[tokio::test]
async fn a_graphql_message_reaches_legacy_clients_in_the_room() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let t = members(&server, &["alice", "bob"], "lobby").await;
        let mut alice = in_room(&server, &t[0], "lobby").await;
        let sent = send(&server, &t[1], "lobby", "hello from GraphQL").await;
        let frame = alice.next_of("message").await;
        assert_eq!(frame["id"], sent["id"], "{}", backend.name());
        assert_eq!(frame["from"], "bob");
        assert_eq!(frame["username"], "bob");
        assert_eq!(frame["text"], "hello from GraphQL");
        assert_mirrored(&frame);
    }
}

#[tokio::test]
async fn typing_crosses_between_legacy_and_graphql_and_is_never_echoed() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut bob = GqlSocket::user(&server, &t[1]).await;
    bob.subscribe("t", TYPING, json!({ "r": "lobby" })).await;
    let mut alice = in_room(&server, &t[0], "lobby").await;
    let mut alice_phone = in_room(&server, &t[0], "lobby").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    alice
        .send(json!({ "type": "typing", "room": "lobby" }))
        .await;
    assert_eq!(
        bob.data("t").await["typing"],
        json!({ "isTyping": true, "user": { "username": "alice" } })
    );
    alice
        .expect_none_of("typing", Duration::from_millis(300))
        .await;
    alice_phone
        .expect_none_of("typing", Duration::from_millis(100))
        .await;

    server
        .ok(Some(&t[1]), SET_TYPING, json!({ "r": "lobby", "t": true }))
        .await;
    let frame = alice.next_of("typing").await;
    assert_eq!(
        frame,
        json!({ "type": "typing", "user_id": "bob", "username": "bob", "room": "lobby",
                "is_typing": true,
                "data": { "user_id": "bob", "username": "bob", "room": "lobby", "is_typing": true } })
    );
}

#[tokio::test]
async fn closing_a_legacy_socket_stops_its_typing_at_once() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut bob = GqlSocket::user(&server, &t[1]).await;
    bob.subscribe("t", TYPING, json!({ "r": "lobby" })).await;
    let mut alice = in_room(&server, &t[0], "lobby").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice
        .send(json!({ "type": "typing", "room": "lobby", "is_typing": true }))
        .await;
    assert_eq!(bob.data("t").await["typing"]["isTyping"], true);
    let closed_at = Instant::now();
    alice.close().await;
    assert_eq!(bob.data("t").await["typing"]["isTyping"], false);
    assert!(
        closed_at.elapsed() < Duration::from_secs(2),
        "not the 5 s expiry"
    );
}

#[tokio::test]
async fn room_frames_reach_only_the_sockets_that_joined_the_room() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut joined = in_room(&server, &t[0], "lobby").await;
    let mut elsewhere = LegacyClient::user(&server, &t[0]).await;
    send(&server, &t[1], "lobby", "only where joined").await;
    assert_eq!(joined.next_of("message").await["text"], "only where joined");
    elsewhere
        .expect_none_of("message", Duration::from_millis(500))
        .await;
}

#[tokio::test]
async fn leave_room_tells_the_room_and_ends_its_frames_on_the_socket() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut alice = in_room(&server, &t[0], "lobby").await;
    let mut bob = in_room(&server, &t[1], "lobby").await;
    alice
        .send(json!({ "type": "leave_room", "room": "lobby" }))
        .await;
    let left = alice.next_of("system").await;
    assert_eq!(left["message"], "alice left");
    assert_eq!(left["room"], "lobby");
    assert_eq!(bob.next_of("system").await["message"], "alice left");
    bob.send(json!({ "type": "message", "room": "lobby", "text": "still there?" }))
        .await;
    bob.next_of("message").await;
    alice
        .expect_none_of("message", Duration::from_millis(500))
        .await;
}

// --- Aliases (in the `rooms` dialect, so that only the alias is under test) ----------------

#[tokio::test]
async fn chat_sends_its_message_to_room_general() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let mut c = LegacyClient::at(&server, &format!("/ws?dialect=rooms&token={alice}")).await;
    c.send(json!({ "type": "join_room", "room": "general" }))
        .await;
    c.next_of("joined_room").await;
    c.send(json!({ "type": "chat", "message": "hi all" })).await;
    let frame = c.next_of("message").await;
    assert_eq!(frame["room"], "general");
    assert_eq!(frame["text"], "hi all");
}

#[tokio::test]
async fn send_message_sends_its_content_to_the_conversation() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let mut c = LegacyClient::at(&server, &format!("/ws?dialect=rooms&token={alice}")).await;
    c.send(json!({ "type": "join_room", "room": "c42" })).await;
    c.next_of("joined_room").await;
    c.send(json!({ "type": "send_message", "conversation_id": "c42", "content": "hey" }))
        .await;
    let frame = c.next_of("message").await;
    assert_eq!(frame["room"], "c42");
    assert_eq!(frame["text"], "hey");
}

#[tokio::test]
async fn join_conversation_and_leave_conversation_join_and_leave_the_room() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let mut c = LegacyClient::at(&server, &format!("/ws?dialect=rooms&token={alice}")).await;
    // Older clients number their conversations.
    c.send(json!({ "type": "join_conversation", "conversation_id": 42 }))
        .await;
    assert_eq!(
        c.next_of("joined_room").await,
        json!({ "type": "joined_room", "data": { "room": "42" } })
    );
    assert_eq!(c.next_of("system").await["message"], "alice joined");
    c.send(json!({ "type": "leave_conversation", "conversation_id": 42 }))
        .await;
    assert_eq!(c.next_of("system").await["message"], "alice left");
    let rooms = server
        .ok(
            Some(&alice),
            "{ room(id: \"42\") { memberCount } }",
            json!({}),
        )
        .await;
    assert_eq!(rooms["room"]["memberCount"], 0);
}

#[tokio::test]
async fn typing_start_and_typing_stop_start_and_stop_typing() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut bob = GqlSocket::user(&server, &t[1]).await;
    bob.subscribe("t", TYPING, json!({ "r": "lobby" })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = LegacyClient::at(&server, &format!("/ws?dialect=rooms&token={}", t[0])).await;
    c.send(json!({ "type": "typing_start", "conversation_id": "lobby" }))
        .await;
    assert_eq!(bob.data("t").await["typing"]["isTyping"], true);
    c.send(json!({ "type": "typing_stop", "conversation_id": "lobby" }))
        .await;
    assert_eq!(bob.data("t").await["typing"]["isTyping"], false);
}

#[tokio::test]
async fn get_online_status_answers_which_of_the_users_are_online() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let _bob = GqlSocket::user(&server, &cli_token("bob", "user")).await;
    // Carol exists but has no connection.
    let carol = cli_token("carol", "user");
    server.ok(Some(&carol), "{ me { id } }", json!({})).await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    c.send(json!({ "type": "get_online_status", "user_ids": ["bob", "carol", "nobody"] }))
        .await;
    assert_eq!(
        c.next_of("online_users").await,
        json!({ "type": "online_users", "users": ["bob"], "data": { "users": ["bob"] } })
    );
}

// --- Presence -------------------------------------------------------------------------------

async fn presence_server() -> (TestServer, TestDb) {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_PRESENCE_GRACE", "300ms")]);
    (server, db)
}

#[tokio::test]
async fn users_sharing_a_room_are_told_who_comes_online_and_goes_offline() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut alice = LegacyClient::user(&server, &t[0]).await;
    let bob = GqlSocket::user(&server, &t[1]).await;
    assert_eq!(
        alice.next_of("user.online").await,
        json!({ "type": "user.online", "data": { "user_id": "bob", "username": "bob" } })
    );
    bob.close().await;
    assert_eq!(
        alice.next_of("user.offline").await,
        json!({ "type": "user.offline", "data": { "user_id": "bob", "username": "bob" } })
    );
}

#[tokio::test]
async fn a_second_connection_of_someone_already_told_online_tells_nothing_new() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut alice = LegacyClient::user(&server, &t[0]).await;
    let _bob = GqlSocket::user(&server, &t[1]).await;
    alice.next_of("user.online").await;
    let _bob_phone = LegacyClient::user(&server, &t[1]).await;
    alice
        .expect_none_of("user.online", Duration::from_millis(500))
        .await;
}

#[tokio::test]
async fn a_stranger_is_not_told_who_comes_online() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["bob"], "lobby").await;
    let mut carol = LegacyClient::user(&server, &cli_token("carol", "user")).await;
    let _bob = GqlSocket::user(&server, &t[0]).await;
    carol
        .expect_none_of("user.online", Duration::from_millis(700))
        .await;
}

#[tokio::test]
async fn a_user_is_not_told_about_their_own_connections() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["alice"], "lobby").await;
    let mut alice = LegacyClient::user(&server, &t[0]).await;
    let phone = LegacyClient::user(&server, &t[0]).await;
    phone.close().await;
    alice
        .expect_none_of("user.online", Duration::from_millis(700))
        .await;
    alice.expect_none_of("user.offline", Duration::ZERO).await;
}

#[tokio::test]
async fn admins_are_told_about_everyone() {
    let (server, _db) = presence_server().await;
    let mut admin = LegacyClient::user(&server, &cli_token("root", "admin")).await;
    let _bob = GqlSocket::user(&server, &cli_token("bob", "user")).await;
    assert_eq!(admin.next_of("user.online").await["data"]["user_id"], "bob");
}

#[tokio::test]
async fn a_legacy_socket_counts_for_presence_like_any_connection() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut bob = GqlSocket::user(&server, &t[1]).await;
    bob.subscribe(
        "p",
        "subscription { presence(roomId: \"lobby\") { status connections user { username } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        bob.data("p").await["presence"]["user"]["username"],
        "bob",
        "bob himself first"
    );
    let alice = LegacyClient::user(&server, &t[0]).await;
    assert_eq!(
        bob.data("p").await["presence"],
        json!({ "status": "ONLINE", "connections": 1, "user": { "username": "alice" } })
    );
    alice.close().await;
    assert_eq!(
        bob.data("p").await["presence"],
        json!({ "status": "OFFLINE", "connections": 0, "user": { "username": "alice" } })
    );
}

// --- Notifications --------------------------------------------------------------------------

#[tokio::test]
async fn a_mention_reaches_the_mentioned_users_socket_as_a_notification_frame() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut alice = LegacyClient::user(&server, &t[0]).await;
    send(&server, &t[1], "lobby", "look @alice").await;
    let frame = alice.next_of("notification").await;
    let keys: Vec<&str> = frame
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["data", "type"], "exactly type and data: {frame}");
    let n = &frame["data"];
    assert!(n["id"].as_str().is_some_and(|id| id.parse::<i64>().is_ok()));
    assert_eq!(n["kind"], "mention");
    assert_eq!(n["level"], "INFO");
    assert_eq!(n["type"], "info");
    assert_eq!(n["title"], "bob mentioned you in lobby");
    assert_eq!(n["body"], "look @alice");
    assert_eq!(n["message"], "look @alice", "the body, when there is one");
    assert_eq!(n["data"]["roomId"], "lobby");
    assert!(n["created_at"].is_string());
}

#[tokio::test]
async fn an_admin_notification_reaches_the_user_with_its_title_as_the_message() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut alice = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    let admin = cli_token("root", "admin");
    let input = json!({ "userId": "alice", "kind": "deploy", "level": "WARNING",
                        "title": "Deploy at noon", "data": { "v": 2 } });
    server.ok(Some(&admin), NOTIFY, json!({ "i": input })).await;
    let n = alice.next_of("notification").await["data"].clone();
    assert_eq!(n["kind"], "deploy");
    assert_eq!(n["level"], "WARNING");
    assert_eq!(n["type"], "warning");
    assert_eq!(n["body"], Value::Null);
    assert_eq!(n["message"], "Deploy at noon");
    assert_eq!(n["data"], json!({ "v": 2 }));
}

// --- Dialects -------------------------------------------------------------------------------

/// Asserts `frame` has exactly these keys and a parseable `timestamp`.
fn assert_keys(frame: &Value, keys: &[&str]) {
    assert_exact_keys(frame, keys);
    if keys.contains(&"timestamp") {
        assert!(
            frame["timestamp"]
                .as_str()
                .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
            "{frame}"
        );
    }
}

#[tokio::test]
async fn ws_auth_speaks_conversations_for_joins_messages_and_typing() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut c = LegacyClient::open(&server, &format!("/ws/auth?token={}", t[0])).await;
    let greeting = c.next().await;
    assert_eq!(greeting["type"], "online_users", "the greeting row");
    assert_keys(&greeting, &["type", "users", "timestamp"]);

    c.send(json!({ "type": "join_conversation", "conversation_id": "lobby" }))
        .await;
    let joined = c.next_of("conversation_joined").await;
    assert_eq!(joined["conversation_id"], "lobby");
    assert_keys(&joined, &["type", "conversation_id", "timestamp"]);

    let sent = send(&server, &t[1], "lobby", "yo").await;
    let message = c.next_of("new_message").await;
    assert_keys(
        &message,
        &["type", "conversation_id", "message", "timestamp"],
    );
    assert_eq!(message["conversation_id"], "lobby");
    let inner = &message["message"];
    assert_keys(inner, &["id", "sender_id", "content", "timestamp", "is_ai"]);
    assert_eq!(inner["id"], sent["id"]);
    assert_eq!(inner["sender_id"], "bob");
    assert_eq!(inner["content"], "yo");
    assert_eq!(inner["is_ai"], false);

    server
        .ok(Some(&t[1]), SET_TYPING, json!({ "r": "lobby", "t": true }))
        .await;
    let typing = c.next_of("typing_indicator").await;
    assert_keys(
        &typing,
        &[
            "type",
            "conversation_id",
            "user_id",
            "is_typing",
            "timestamp",
        ],
    );
    assert_eq!(typing["user_id"], "bob");
    assert_eq!(typing["is_typing"], true);
}

#[tokio::test]
async fn ws_auth_greets_with_the_online_users_who_share_a_conversation_the_user_included() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let carol = members(&server, &["carol"], "elsewhere").await;
    let _bob = GqlSocket::user(&server, &t[1]).await;
    let _carol = GqlSocket::user(&server, &carol[0]).await;
    let mut c = LegacyClient::open(&server, &format!("/ws/auth?token={}", t[0])).await;
    let greeting = c.next().await;
    assert_eq!(
        greeting["type"], "online_users",
        "the first frame: {greeting}"
    );
    assert_keys(&greeting, &["type", "users", "timestamp"]);
    assert_eq!(
        greeting["users"],
        json!(["alice", "bob"]),
        "alice herself and bob, who shares lobby; not carol, who shares nothing"
    );
}

#[tokio::test]
async fn ws_auth_speaks_conversations_for_presence_online_users_and_errors() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut c = LegacyClient::open(&server, &format!("/ws/auth?token={}", t[0])).await;
    assert_eq!(c.next().await["type"], "online_users", "the greeting");
    let bob = GqlSocket::user(&server, &t[1]).await;
    let online = c.next_of("presence_update").await;
    assert_keys(&online, &["type", "user_id", "online", "timestamp"]);
    assert_eq!(online["user_id"], "bob");
    assert_eq!(online["online"], true);

    c.send(json!({ "type": "get_online_status", "user_ids": ["bob"] }))
        .await;
    let users = c.next_of("online_users").await;
    assert_keys(&users, &["type", "users", "timestamp"]);
    assert_eq!(users["users"], json!(["bob"]));

    c.send(json!({ "type": "send_message", "conversation_id": "nowhere", "content": "x" }))
        .await;
    let error = c.next_of("error").await;
    assert_keys(&error, &["type", "message", "code", "timestamp"]);
    assert_eq!(error["code"], "NOT_FOUND");

    bob.close().await;
    let offline = c.next_of("presence_update").await;
    assert_eq!(offline["online"], false);
}

#[tokio::test]
async fn a_conversation_alias_as_the_first_room_frame_switches_the_socket_to_conversations() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    c.send(json!({ "type": "join_conversation", "conversation_id": "lobby" }))
        .await;
    let joined = c.next_of("conversation_joined").await;
    assert_keys(&joined, &["type", "conversation_id", "timestamp"]);
    c.send(json!({ "type": "message", "room": "lobby", "text": "hi" }))
        .await;
    assert_eq!(c.next_of("new_message").await["message"]["content"], "hi");
}

#[tokio::test]
async fn a_rooms_frame_first_keeps_the_rooms_dialect_for_later_aliases() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    c.send(json!({ "type": "typing", "room": "lobby" })).await;
    assert_eq!(c.next_of("error").await["code"], "NOT_FOUND");
    c.send(json!({ "type": "join_conversation", "conversation_id": "lobby" }))
        .await;
    assert_eq!(
        c.next().await,
        json!({ "type": "joined_room", "data": { "room": "lobby" } })
    );
}

#[tokio::test]
async fn the_dialect_parameter_chooses_the_dialect() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let mut c =
        LegacyClient::open(&server, &format!("/ws?dialect=conversations&token={alice}")).await;
    assert!(c.next().await["timestamp"].is_string(), "the welcome too");
    c.send(json!({ "type": "join_room", "room": "lobby" }))
        .await;
    assert_eq!(
        c.next_of("conversation_joined").await["conversation_id"],
        "lobby"
    );
}

#[tokio::test]
async fn a_chat_frame_as_the_first_room_frame_switches_to_arena_and_joins_general() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut c = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    c.send(json!({ "type": "chat", "message": "hello arena" }))
        .await;
    let chat = c.next_of("chat").await;
    assert_keys(
        &chat,
        &["type", "user_id", "username", "message", "timestamp"],
    );
    assert_eq!(chat["user_id"], "alice");
    assert_eq!(chat["message"], "hello arena");
}

#[tokio::test]
async fn the_arena_chat_path_welcomes_with_a_connection_frame_and_is_in_general() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let mut c = LegacyClient::open(&server, &format!("/api/ws/alice?token={alice}")).await;
    let welcome = c.next().await;
    assert_eq!(welcome["type"], "connection");
    assert_keys(&welcome, &["type", "message", "timestamp"]);
    assert!(welcome["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("Welcome!")));
    c.sync().await;
    let room = server
        .ok(
            Some(&alice),
            "{ room(id: \"general\") { members { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(room["room"]["members"], json!([{ "id": "alice" }]));
}

#[tokio::test]
async fn the_arena_chat_path_sends_chat_typing_and_who_joins_and_leaves() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["alice", "bob"], "general").await;
    let mut c = LegacyClient::at(&server, &format!("/api/ws/alice?token={}", t[0])).await;
    let bob = GqlSocket::user(&server, &t[1]).await;
    let joined = c.next_of("user_joined").await;
    assert_keys(&joined, &["type", "user_id", "timestamp"]);
    assert_eq!(joined["user_id"], "bob");

    send(&server, &t[1], "general", "gg").await;
    let chat = c.next_of("chat").await;
    assert_keys(
        &chat,
        &["type", "user_id", "username", "message", "timestamp"],
    );
    assert_eq!(chat["username"], "bob");
    assert_eq!(chat["message"], "gg");

    server
        .ok(
            Some(&t[1]),
            SET_TYPING,
            json!({ "r": "general", "t": true }),
        )
        .await;
    let typing = c.next_of("typing").await;
    assert_keys(&typing, &["type", "user_id", "is_typing", "timestamp"]);
    assert_eq!(typing["user_id"], "bob");

    bob.close().await;
    assert_eq!(c.next_of("user_left").await["user_id"], "bob");
}

#[tokio::test]
async fn an_arena_path_naming_another_user_closes_with_4001() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    for path in [
        "/api/ws/bob",
        "/api/ws/notifications/bob",
        "/api/ws/presence/bob",
    ] {
        let mut c = LegacyClient::open(&server, &format!("{path}?token={alice}")).await;
        assert_eq!(c.closed().await, auth_failed(), "{path}");
    }
    let mut c = LegacyClient::open(&server, "/api/ws/alice").await;
    assert_eq!(c.closed().await, auth_failed(), "the token is required");
}

#[tokio::test]
async fn the_arena_notifications_path_sends_the_users_notifications() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let mut c = LegacyClient::open(
        &server,
        &format!("/api/ws/notifications/alice?token={alice}"),
    )
    .await;
    c.sync().await;
    let input =
        json!({ "userId": "alice", "kind": "badge", "title": "New badge", "body": "Ten wins" });
    server
        .ok(
            Some(&cli_token("root", "admin")),
            NOTIFY,
            json!({ "i": input }),
        )
        .await;
    let frame = c.next_of("notification").await;
    assert_keys(&frame, &["type", "data", "timestamp"]);
    assert_eq!(frame["data"]["message"], "Ten wins");
    assert_eq!(frame["data"]["type"], "info");
}

#[tokio::test]
async fn the_arena_presence_path_sends_every_status_change() {
    let (server, _db) = presence_server().await;
    let t = members(&server, &["alice", "bob"], "lobby").await;
    let mut c =
        LegacyClient::open(&server, &format!("/api/ws/presence/alice?token={}", t[0])).await;
    c.sync().await;
    let bob = GqlSocket::user(&server, &t[1]).await;
    let online = c.next_of("presence").await;
    assert_keys(&online, &["type", "user_id", "status", "timestamp"]);
    assert_eq!(
        (online["user_id"].as_str(), online["status"].as_str()),
        (Some("bob"), Some("online"))
    );
    server
        .ok(
            Some(&t[1]),
            "mutation { setPresence(status: AWAY) { status } }",
            json!({}),
        )
        .await;
    assert_eq!(c.next_of("presence").await["status"], "away");
    bob.close().await;
    assert_eq!(c.next_of("presence").await["status"], "offline");
}

#[tokio::test]
async fn the_arena_leaderboard_sends_the_top_ten_at_once_then_each_change() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    server.ok(Some(&alice), "{ me { id } }", json!({})).await;
    // Anonymous: the leaderboard needs no token.
    let mut c = LegacyClient::open(&server, "/api/ws/leaderboard").await;
    let first = c.next().await;
    assert_keys(&first, &["type", "data", "timestamp"]);
    assert_eq!(first["type"], "leaderboard_update");
    assert_eq!(first["data"], json!([]));
    server
        .ok(
            Some(&cli_token("root", "admin")),
            "mutation { awardPoints(userId: \"alice\", points: 30) { rank } }",
            json!({}),
        )
        .await;
    let update = c.next_of("leaderboard_update").await;
    assert_eq!(
        update["data"],
        json!([{ "rank": 1, "user_id": "alice", "username": "alice", "points": 30,
                 "experience_points": 30 }])
    );
}
