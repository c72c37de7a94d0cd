//! Leaving a room ends every stream of it for the leaver at the exact point of the leave: a
//! message sent just before it still arrives, one sent right after it (no pause in between)
//! never does, and the members who stay get both. One test per path a stream can take, each
//! repeated `ROUNDS` times on SQLite and, when configured, PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Leave-then-send rounds per path and backend.
const ROUNDS: usize = 50;

const MESSAGES: &str =
    "subscription($r: ID!, $a: ID) { messageAdded(roomId: $r, after: $a) { id body } }";
const TYPING: &str = "subscription($r: ID!) { typing(roomId: $r) { isTyping user { username } } }";
const SET_TYPING: &str = "mutation($r: ID!, $t: Boolean!) { setTyping(roomId: $r, isTyping: $t) }";
const PRESENCE: &str = "subscription($r: ID) { presence(roomId: $r) { status user { username } } }";
const SET_PRESENCE: &str = "mutation($s: PresenceStatus!) { setPresence(status: $s) { status } }";
const LEAVE: &str = "mutation { leaveRoom(roomId: \"vault\") }";
const INVITE: &str = "mutation($u: ID!) { inviteToRoom(roomId: \"vault\", userId: $u) }";

/// A server without rate limits (each round sends several messages at once), and the tokens of
/// alice, bob and carol, members of the private room `vault`.
async fn vault(backend: &Backend) -> (TestServer, TestDb, [String; 3]) {
    let db = TestDb::new(backend).await;
    let server = TestServer::start(&db, &[("TIDINGS_RATE_LIMITS", "off")]);
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| cli_token(u, "user"));
    server
        .ok(
            Some(&alice),
            "mutation { createRoom(id: \"vault\", isPrivate: true) { id } }",
            json!({}),
        )
        .await;
    for (token, id) in [(&bob, "bob"), (&carol, "carol")] {
        // The invitee's first request provisions them.
        server.ok(Some(token), "{ me { id } }", json!({})).await;
        server.ok(Some(&alice), INVITE, json!({ "u": id })).await;
    }
    (server, db, [alice, bob, carol])
}

/// Sends `before`, has bob leave, and sends `after` at once, each as soon as the last returned.
async fn leave_between(server: &TestServer, t: &[String; 3], before: &str, after: &str) {
    send(server, &t[0], "vault", before).await;
    server.ok(Some(&t[1]), LEAVE, json!({})).await;
    send(server, &t[0], "vault", after).await;
}

fn body(data: &Value) -> &str {
    data["messageAdded"]["body"].as_str().unwrap_or("?")
}

/// Reads `socket`'s results for `id` until `body` arrives.
async fn until_body(socket: &mut GqlSocket, id: &str, wanted: &str) {
    loop {
        if body(&socket.data(id).await) == wanted {
            return;
        }
    }
}

/// Has alice send `tag.1`, `tag.2`, … until `socket` hears one on `id` (a subscription without
/// `after` starts at whatever it meets first), then reads up to the last one sent; returns it.
async fn until_live(
    server: &TestServer,
    alice: &str,
    socket: &mut GqlSocket,
    id: &str,
    tag: &str,
) -> String {
    let mut sent = 0;
    let heard = 'live: loop {
        sent += 1;
        send(server, alice, "vault", &format!("{tag}.{sent}")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(data) = tokio::time::timeout_at(deadline, socket.data(id)).await {
            if body(&data).starts_with(&format!("{tag}.")) {
                break 'live body(&data).to_owned();
            }
        }
    };
    let last = format!("{tag}.{sent}");
    if heard != last {
        until_body(socket, id, &last).await;
    }
    last
}

/// One round of a GraphQL `messageAdded` path: bob subscribes (from `after` when asked), both
/// sockets see `ready`, then the leave falls between `before` and `after`. Returns whether
/// bob's stream leaked anything after his departure.
async fn message_round(
    server: &TestServer,
    t: &[String; 3],
    bob: &mut GqlSocket,
    carol: &mut GqlSocket,
    round: usize,
    from_last: bool,
) -> bool {
    server.ok(Some(&t[0]), INVITE, json!({ "u": "bob" })).await;
    let id = format!("m{round}");
    let after = if from_last {
        last_message_id(server, &t[0], "vault").await
    } else {
        Value::Null
    };
    bob.subscribe(&id, MESSAGES, json!({ "r": "vault", "a": after }))
        .await;
    let last_ready = until_live(server, &t[0], bob, &id, &format!("ready {round}")).await;
    until_body(carol, "c", &last_ready).await;
    let (before, after) = (format!("before {round}"), format!("after {round}"));
    leave_between(server, t, &before, &after).await;
    // Carol, who stays, gets all three in order.
    assert_eq!(body(&carol.data("c").await), before);
    assert_eq!(body(&carol.data("c").await), "bob left");
    assert_eq!(body(&carol.data("c").await), after);
    // Bob gets what came before, his own departure, then FORBIDDEN and the end.
    assert_eq!(body(&bob.data(&id).await), before, "round {round}");
    loop {
        let frame = bob.frame_for(&id).await;
        let payload = &frame["payload"];
        if payload.get("errors").is_some() {
            assert_eq!(payload["errors"][0]["extensions"]["code"], "FORBIDDEN");
            assert_eq!(bob.frame_for(&id).await["type"], "complete");
            return false;
        }
        match body(&payload["data"]) {
            "bob left" => {}
            other => {
                assert_eq!(other, after, "round {round}: {frame}");
                // The leak is counted; the stream may go on, so this round ends here.
                return true;
            }
        }
    }
}

async fn message_path(from_last: bool) {
    for backend in backends() {
        let (server, _db, t) = vault(&backend).await;
        let mut carol = GqlSocket::user(&server, &t[2]).await;
        carol
            .subscribe("c", MESSAGES, json!({ "r": "vault", "a": null }))
            .await;
        let mut bob = GqlSocket::user(&server, &t[1]).await;
        until_live(&server, &t[0], &mut carol, "c", "hello").await;
        let mut leaks = 0;
        for round in 0..ROUNDS {
            if message_round(&server, &t, &mut bob, &mut carol, round, from_last).await {
                leaks += 1;
                // That subscription goes on: later rounds would not be independent.
                break;
            }
        }
        println!(
            "messageAdded ({}) on {}: {leaks} leaks in {ROUNDS} rounds",
            if from_last { "with after" } else { "shared" },
            backend.name()
        );
        assert_eq!(leaks, 0, "{}", backend.name());
    }
}

#[tokio::test]
async fn a_shared_message_subscription_ends_exactly_at_the_leave() {
    message_path(false).await;
}

#[tokio::test]
async fn a_message_subscription_with_after_ends_exactly_at_the_leave() {
    message_path(true).await;
}

/// Reads `/ws` frames until the message with text `wanted`, in the `rooms` or `conversations`
/// dialect.
async fn until_text(socket: &mut LegacyClient, wanted: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let frame = socket.next().await;
        let text = frame_text(&frame);
        seen.push(frame);
        if text.as_deref() == Some(wanted) {
            return seen;
        }
    }
}

/// A room frame's text: a message's, or an announcement's.
fn frame_text(frame: &Value) -> Option<String> {
    let text = match frame["type"].as_str()? {
        "message" => &frame["text"],
        "new_message" => &frame["message"]["content"],
        "system" => &frame["message"],
        _ => return None,
    };
    text.as_str().map(str::to_owned)
}

/// The `/ws` paths: bob's socket (in `dialect`) joins the room, the leave falls between two
/// messages, and bob's socket gets the first and his departure, never the second.
async fn legacy_path(path: &str, join: fn() -> Value, joined: &str) {
    for backend in backends() {
        let (server, _db, t) = vault(&backend).await;
        let mut carol = GqlSocket::user(&server, &t[2]).await;
        carol
            .subscribe("c", MESSAGES, json!({ "r": "vault", "a": null }))
            .await;
        until_live(&server, &t[0], &mut carol, "c", "hello").await;
        let mut leaks = 0;
        for round in 0..ROUNDS {
            server.ok(Some(&t[0]), INVITE, json!({ "u": "bob" })).await;
            let mut bob = LegacyClient::open(&server, &format!("{path}{}", t[1])).await;
            bob.next().await; // the greeting
            bob.send(join()).await;
            bob.next_of(joined).await;
            let ready = format!("ready {round}");
            send(&server, &t[0], "vault", &ready).await;
            until_text(&mut bob, &ready).await;
            until_body(&mut carol, "c", &ready).await;
            let (before, after) = (format!("before {round}"), format!("after {round}"));
            leave_between(&server, &t, &before, &after).await;
            assert_eq!(body(&carol.data("c").await), before);
            assert_eq!(body(&carol.data("c").await), "bob left");
            // Once carol has the last message, bob's socket has been handed all it will be.
            assert_eq!(body(&carol.data("c").await), after);
            let seen = until_text(&mut bob, "bob left").await;
            assert_eq!(
                seen.iter().filter_map(frame_text).collect::<Vec<_>>(),
                vec![before.clone(), "bob left".to_owned()],
                "round {round} on {}",
                backend.name()
            );
            bob.send(json!({ "type": "ping" })).await;
            loop {
                // Whatever the socket got after the departure, up to the pong of a ping sent
                // after the last message was delivered elsewhere.
                let frame = bob.next().await;
                if frame["type"] == "pong" {
                    break;
                }
                if frame_text(&frame).as_deref() == Some(after.as_str()) {
                    leaks += 1;
                }
            }
            bob.expect_none_of("message", Duration::from_millis(30))
                .await;
            bob.expect_none_of("new_message", Duration::from_millis(30))
                .await;
            bob.close().await;
        }
        println!(
            "/ws {path} on {}: {leaks} leaks in {ROUNDS} rounds",
            backend.name()
        );
        assert_eq!(leaks, 0, "{}", backend.name());
    }
}

#[tokio::test]
async fn a_ws_room_stops_exactly_at_the_leave() {
    legacy_path(
        "/ws?token=",
        || json!({ "type": "join_room", "room": "vault" }),
        "joined_room",
    )
    .await;
}

#[tokio::test]
async fn a_ws_conversation_stops_exactly_at_the_leave() {
    legacy_path(
        "/ws/auth?token=",
        || json!({ "type": "join_conversation", "conversation_id": "vault" }),
        "conversation_joined",
    )
    .await;
}

#[tokio::test]
async fn a_typing_subscription_ends_exactly_at_the_leave() {
    for backend in backends() {
        let (server, _db, t) = vault(&backend).await;
        let mut alice = GqlSocket::user(&server, &t[0]).await;
        alice.subscribe("a", TYPING, json!({ "r": "vault" })).await;
        // Live once alice hears carol (her subscription checks membership first, which may
        // take a moment): carol keeps typing until she does, then stops, and alice reads on
        // to the stop, so each round starts with alice's stream drained.
        loop {
            server
                .ok(Some(&t[2]), SET_TYPING, json!({ "r": "vault", "t": true }))
                .await;
            let heard = tokio::time::timeout(Duration::from_millis(200), alice.data("a")).await;
            if heard.is_ok() {
                break;
            }
        }
        server
            .ok(Some(&t[2]), SET_TYPING, json!({ "r": "vault", "t": false }))
            .await;
        while alice.data("a").await["typing"]["isTyping"] != false {}
        let mut bob = GqlSocket::user(&server, &t[1]).await;
        let mut leaks = 0;
        for round in 0..ROUNDS {
            server.ok(Some(&t[0]), INVITE, json!({ "u": "bob" })).await;
            let id = format!("t{round}");
            bob.subscribe(&id, TYPING, json!({ "r": "vault" })).await;
            // Live once bob hears carol: she keeps typing until bob does.
            loop {
                server
                    .ok(Some(&t[2]), SET_TYPING, json!({ "r": "vault", "t": true }))
                    .await;
                let heard =
                    tokio::time::timeout(Duration::from_millis(200), bob.frame_for(&id)).await;
                if let Ok(frame) = heard {
                    assert_eq!(frame["payload"]["data"]["typing"]["isTyping"], true);
                    break;
                }
            }
            // Carol stops (before), bob leaves, carol starts again at once (after).
            server
                .ok(Some(&t[2]), SET_TYPING, json!({ "r": "vault", "t": false }))
                .await;
            server.ok(Some(&t[1]), LEAVE, json!({})).await;
            server
                .ok(Some(&t[2]), SET_TYPING, json!({ "r": "vault", "t": true }))
                .await;
            // Bob gets the stop, then the end; never the start after his leave.
            let mut got = Vec::new();
            loop {
                let frame = bob.frame_for(&id).await;
                if frame["type"] == "complete" {
                    break;
                }
                got.push(frame["payload"]["data"]["typing"]["isTyping"].clone());
            }
            if got.contains(&json!(true)) {
                leaks += 1;
            }
            assert!(got.contains(&json!(false)), "round {round}: {got:?}");
            server
                .ok(Some(&t[2]), SET_TYPING, json!({ "r": "vault", "t": false }))
                .await;
            // Alice, who stays, hears it all: carol's stop before the leave, her start after
            // it, and the stop that ends the round (which leaves alice's stream drained).
            for wanted in [false, true, false] {
                loop {
                    let data = alice.data("a").await;
                    assert_eq!(data["typing"]["user"]["username"], "carol");
                    if data["typing"]["isTyping"] == wanted {
                        break;
                    }
                }
            }
        }
        println!(
            "typing on {}: {leaks} leaks in {ROUNDS} rounds",
            backend.name()
        );
        assert_eq!(leaks, 0, "{}", backend.name());
    }
}

#[tokio::test]
async fn a_room_presence_subscription_ends_exactly_at_the_leave() {
    for backend in backends() {
        let (server, _db, t) = vault(&backend).await;
        let mut alice = GqlSocket::user(&server, &t[0]).await;
        alice
            .subscribe("a", PRESENCE, json!({ "r": "vault" }))
            .await;
        let _carol_online = GqlSocket::user(&server, &t[2]).await;
        let mut bob = GqlSocket::user(&server, &t[1]).await;
        let mut leaks = 0;
        for round in 0..ROUNDS {
            server.ok(Some(&t[0]), INVITE, json!({ "u": "bob" })).await;
            server
                .ok(Some(&t[2]), SET_PRESENCE, json!({ "s": "ONLINE" }))
                .await;
            let id = format!("p{round}");
            bob.subscribe(&id, PRESENCE, json!({ "r": "vault" })).await;
            // The snapshot names carol online: the subscription is live.
            loop {
                let data = bob.data(&id).await;
                if data["presence"]["user"]["username"] == "carol" {
                    break;
                }
            }
            server
                .ok(Some(&t[2]), SET_PRESENCE, json!({ "s": "AWAY" }))
                .await;
            server.ok(Some(&t[1]), LEAVE, json!({})).await;
            server
                .ok(Some(&t[2]), SET_PRESENCE, json!({ "s": "BUSY" }))
                .await;
            let mut statuses = Vec::new();
            loop {
                let frame = bob.frame_for(&id).await;
                let payload = &frame["payload"];
                if payload.get("errors").is_some() {
                    assert_eq!(payload["errors"][0]["extensions"]["code"], "FORBIDDEN");
                    assert_eq!(bob.frame_for(&id).await["type"], "complete");
                    break;
                }
                if payload["data"]["presence"]["user"]["username"] == "carol" {
                    statuses.push(payload["data"]["presence"]["status"].clone());
                }
            }
            if statuses.contains(&json!("BUSY")) {
                leaks += 1;
            }
            assert!(
                statuses.contains(&json!("AWAY")),
                "round {round}: {statuses:?}"
            );
            // Alice, who stays, sees carol busy.
            loop {
                let data = alice.data("a").await;
                if data["presence"]["user"]["username"] == "carol"
                    && data["presence"]["status"] == "BUSY"
                {
                    break;
                }
            }
        }
        println!(
            "presence(roomId) on {}: {leaks} leaks in {ROUNDS} rounds",
            backend.name()
        );
        assert_eq!(leaks, 0, "{}", backend.name());
    }
}
