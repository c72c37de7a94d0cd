//! Subscriptions through real sockets: messages (live, resumed, caught up after lag), typing,
//! presence, notifications, the leaderboard, and who may subscribe to what.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const MESSAGES: &str = "subscription($r: ID!, $a: ID) { messageAdded(roomId: $r, after: $a) { id body kind sender { username } } }";

async fn admin_and(server: &TestServer, users: &[&str], room: &str) -> (String, Vec<String>) {
    let admin = cli_token("admin", "admin");
    let mut tokens = Vec::new();
    for u in users {
        let t = cli_token(u, "user");
        join(server, &t, room).await;
        tokens.push(t);
    }
    (admin, tokens)
}

fn bodies(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|d| d["messageAdded"]["body"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test]
async fn members_receive_messages_live_and_non_members_are_forbidden() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let (_, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
        let mut alice = GqlSocket::user(&server, &t[0]).await;
        alice
            .subscribe("m", MESSAGES, json!({ "r": "lobby" }))
            .await;
        // The subscription is live once the server has it; a query on the same socket after it
        // proves the subscribe frame was processed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        send(&server, &t[1], "lobby", "hello @alice").await;
        let got = alice.data("m").await;
        assert_eq!(
            got["messageAdded"]["body"],
            "hello @alice",
            "{}",
            backend.name()
        );
        assert_eq!(got["messageAdded"]["sender"]["username"], "bob");
        assert_eq!(got["messageAdded"]["kind"], "USER");

        let mallory = cli_token("mallory", "user");
        let mut m = GqlSocket::user(&server, &mallory).await;
        m.subscribe("x", MESSAGES, json!({ "r": "lobby" })).await;
        assert_eq!(m.error_code("x").await, "FORBIDDEN");
        let anon_code = {
            let mut anon = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
            anon.subscribe("x", MESSAGES, json!({ "r": "lobby" })).await;
            anon.error_code("x").await
        };
        assert_eq!(anon_code, "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn resuming_after_a_disconnect_replays_what_was_missed_without_gap_or_duplicate() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let (_, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
        let last = last_message_id(&server, &t[0], "lobby").await;
        let mut alice = GqlSocket::user(&server, &t[0]).await;
        alice
            .subscribe("m", MESSAGES, json!({ "r": "lobby", "a": last }))
            .await;
        send(&server, &t[1], "lobby", "one").await;
        let last_seen = alice.data("m").await["messageAdded"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        alice.close().await;

        for body in ["two", "three", "four"] {
            send(&server, &t[1], "lobby", body).await;
        }
        let mut again = GqlSocket::user(&server, &t[0]).await;
        again
            .subscribe("m", MESSAGES, json!({ "r": "lobby", "a": last_seen }))
            .await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(again.data("m").await);
        }
        // Live messages continue after the replay.
        send(&server, &t[1], "lobby", "five").await;
        got.push(again.data("m").await);
        assert_eq!(
            bodies(&got),
            vec!["two", "three", "four", "five"],
            "{}",
            backend.name()
        );
        let ids: Vec<i64> = got
            .iter()
            .map(|d| d["messageAdded"]["id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ascending ids: {ids:?}"
        );
        again.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_subscriber_that_lags_behind_the_buffer_is_caught_up_from_the_database() {
    let redis = TestRedis::start();
    for backend in backends() {
        // The subscriber's instance has a one-event buffer and is frozen while the other
        // instance takes the messages: once it runs again, its Redis bridge hands it the whole
        // burst at once, which overruns the buffer.
        let (a, b, _db) = bridged_pair(
            &backend,
            &redis,
            &[
                ("TIDINGS_STORED_BROADCAST_CAPACITY", "1"),
                ("TIDINGS_RATE_LIMITS", "off"),
            ],
        )
        .await;
        let (_, t) = admin_and(&a, &["alice", "s1", "s2", "s3", "s4"], "busy").await;
        let mut alice = GqlSocket::user(&b, &t[0]).await;
        alice.subscribe("m", MESSAGES, json!({ "r": "busy" })).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.pause();
        let sends = t[1..]
            .iter()
            .flat_map(|tok| (0..15).map(move |n| (tok.clone(), n)));
        futures_util::future::join_all(sends.map(|(tok, n)| {
            let server = &a;
            async move { send(server, &tok, "busy", &format!("n{n}")).await }
        }))
        .await;
        b.resume();
        let expected: Vec<i64> = history_ids(&a, &t[0], "busy").await;
        assert_eq!(expected.len(), 60);
        let mut got = Vec::new();
        for _ in 0..60 {
            let d = alice.data("m").await;
            got.push(
                d["messageAdded"]["id"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap(),
            );
        }
        assert_eq!(
            got,
            expected,
            "every message once, in id order ({})",
            backend.name()
        );
        alice.expect_silence(Duration::from_millis(300)).await;
        assert!(
            b.log().contains("caught up from the database"),
            "the burst overran the one-event buffer, so the catch-up path ran"
        );
    }
}

async fn history_ids(server: &TestServer, token: &str, room: &str) -> Vec<i64> {
    server
        .ok(
            Some(token),
            "query($r: ID!) { messages(roomId: $r, last: 200) { id kind } }",
            json!({ "r": room }),
        )
        .await["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "USER")
        .map(|m| m["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

const TYPING: &str =
    "subscription($r: ID!) { typing(roomId: $r) { roomId isTyping user { username } } }";
const SET_TYPING: &str = "mutation($r: ID!, $t: Boolean!) { setTyping(roomId: $r, isTyping: $t) }";

#[tokio::test]
async fn typing_reaches_other_members_never_the_sender_and_expires() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_TYPING_TIMEOUT", "800ms")]);
    let (_, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
    let mut alice = GqlSocket::user(&server, &t[0]).await;
    let mut bob = GqlSocket::user(&server, &t[1]).await;
    alice.subscribe("t", TYPING, json!({ "r": "lobby" })).await;
    bob.subscribe("t", TYPING, json!({ "r": "lobby" })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .ok(Some(&t[1]), SET_TYPING, json!({ "r": "lobby", "t": true }))
        .await;
    let started = Instant::now();
    let on = alice.data("t").await;
    assert_eq!(
        on["typing"],
        json!({ "roomId": "lobby", "isTyping": true, "user": { "username": "bob" } })
    );
    // Not refreshed: it expires as a false.
    let off = alice.data("t").await;
    assert_eq!(off["typing"]["isTyping"], false);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(700) && after < Duration::from_millis(3000),
        "{after:?}"
    );
    // Bob never hears himself.
    bob.expect_silence(Duration::from_millis(200)).await;
    // An explicit stop is sent at once.
    server
        .ok(Some(&t[1]), SET_TYPING, json!({ "r": "lobby", "t": true }))
        .await;
    assert_eq!(alice.data("t").await["typing"]["isTyping"], true);
    server
        .ok(Some(&t[1]), SET_TYPING, json!({ "r": "lobby", "t": false }))
        .await;
    assert_eq!(alice.data("t").await["typing"]["isTyping"], false);
}

#[tokio::test]
async fn closing_the_socket_that_set_typing_stops_it_at_once() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let (_, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
    let mut alice = GqlSocket::user(&server, &t[0]).await;
    alice.subscribe("t", TYPING, json!({ "r": "lobby" })).await;
    let mut bob = GqlSocket::user(&server, &t[1]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.subscribe("s", SET_TYPING, json!({ "r": "lobby", "t": true }))
        .await;
    assert_eq!(bob.data("s").await["setTyping"], true);
    assert_eq!(alice.data("t").await["typing"]["isTyping"], true);
    let closed_at = Instant::now();
    bob.close().await;
    assert_eq!(alice.data("t").await["typing"]["isTyping"], false);
    assert!(
        closed_at.elapsed() < Duration::from_secs(2),
        "not the 5 s expiry"
    );
}

const PRESENCE: &str =
    "subscription($r: ID) { presence(roomId: $r) { status connections roomId user { username } } }";

#[tokio::test]
async fn presence_counts_connections_and_announces_offline_after_the_grace_period() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let server = TestServer::start(&db, &[("TIDINGS_PRESENCE_GRACE", "700ms")]);
        let (_, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
        let mut alice = GqlSocket::user(&server, &t[0]).await;
        alice
            .subscribe("p", PRESENCE, json!({ "r": "lobby" }))
            .await;
        // It starts with who is online in scope: alice herself.
        let first = alice.data("p").await;
        assert_eq!(
            first["presence"],
            json!({ "status": "ONLINE", "connections": 1, "roomId": "lobby", "user": { "username": "alice" } }),
            "{}",
            backend.name()
        );

        let phone = GqlSocket::user(&server, &t[1]).await;
        let online = alice.data("p").await;
        assert_eq!(
            (
                online["presence"]["user"]["username"].as_str(),
                online["presence"]["status"].as_str(),
                online["presence"]["connections"].as_i64()
            ),
            (Some("bob"), Some("ONLINE"), Some(1))
        );
        let laptop = GqlSocket::user(&server, &t[1]).await;
        assert_eq!(alice.data("p").await["presence"]["connections"], 2);
        let online_now = server
            .ok(
                Some(&t[0]),
                "{ onlineUsers(roomId: \"lobby\") { user { username } connections status } }",
                json!({}),
            )
            .await;
        assert_eq!(
            online_now["onlineUsers"],
            json!([
                { "user": { "username": "alice" }, "connections": 1, "status": "ONLINE" },
                { "user": { "username": "bob" }, "connections": 2, "status": "ONLINE" },
            ])
        );

        // One device closes: still online, one connection.
        phone.close().await;
        assert_eq!(alice.data("p").await["presence"]["connections"], 1);
        // A reload (close and reopen within the grace period) does not flap.
        laptop.close().await;
        let reload = GqlSocket::user(&server, &t[1]).await;
        let back = alice.data("p").await;
        assert_eq!(back["presence"]["status"], "ONLINE");
        alice.expect_silence(Duration::from_millis(1000)).await;
        // Gone for good: OFFLINE after the grace period.
        let closed_at = Instant::now();
        reload.close().await;
        let off = alice.data("p").await;
        assert_eq!(off["presence"]["status"], "OFFLINE");
        assert_eq!(off["presence"]["connections"], 0);
        assert!(
            closed_at.elapsed() >= Duration::from_millis(600),
            "after the grace period"
        );
        let seen = server
            .ok(
                Some(&t[0]),
                "{ presenceOf(userIds: [\"bob\"]) { status lastSeenAt } }",
                json!({}),
            )
            .await;
        assert_eq!(seen["presenceOf"][0]["status"], "OFFLINE");
        assert!(
            seen["presenceOf"][0]["lastSeenAt"].is_string(),
            "lastSeenAt is persisted: {seen}"
        );
    }
}

fn last_seen(data: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    data["user"]["lastSeenAt"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[tokio::test]
async fn last_seen_at_is_now_while_online_and_the_time_of_leaving_afterwards() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let server = TestServer::start(&db, &[("TIDINGS_PRESENCE_GRACE", "300ms")]);
        let (admin, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
        let query = "{ user(id: \"bob\") { lastSeenAt } }";
        let never = server.ok(Some(&admin), query, json!({})).await;
        assert_eq!(
            never["user"]["lastSeenAt"],
            json!(null),
            "{}",
            backend.name()
        );

        let bob = GqlSocket::user(&server, &t[1]).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let online = server.ok(Some(&admin), query, json!({})).await;
        let seen = last_seen(&online).expect("online: a time");
        assert!(
            (chrono::Utc::now() - seen).num_milliseconds().abs() < 1000,
            "an online user was seen just now, not at connect: {online}"
        );

        let mut watcher = GqlSocket::user(&server, &t[0]).await;
        watcher
            .subscribe("p", PRESENCE, json!({ "r": "lobby" }))
            .await;
        watcher.data("p").await;
        watcher.data("p").await;
        let closed_at = chrono::Utc::now();
        bob.close().await;
        let off = watcher.data("p").await;
        assert_eq!(off["presence"]["status"], "OFFLINE");
        let announced_at = chrono::Utc::now();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let stored = server.ok(Some(&admin), query, json!({})).await;
        let left = last_seen(&stored).expect("offline: the stored time");
        assert!(
            left >= closed_at - chrono::Duration::milliseconds(50)
                && left <= announced_at + chrono::Duration::milliseconds(50),
            "lastSeenAt is when bob went offline ({closed_at} .. {announced_at}): {stored}"
        );

        // It survives a restart: persisted, not remembered.
        server.stop();
        let server = TestServer::start(&db, &[]);
        let again = server.ok(Some(&admin), query, json!({})).await;
        assert_eq!(last_seen(&again), Some(left), "{}", backend.name());
    }
}

#[tokio::test]
async fn a_second_device_keeps_the_user_online_when_the_first_closes() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let server = TestServer::start(&db, &[("TIDINGS_PRESENCE_GRACE", "300ms")]);
        let (admin, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
        let mut alice = GqlSocket::user(&server, &t[0]).await;
        alice
            .subscribe("p", PRESENCE, json!({ "r": "lobby" }))
            .await;
        alice.data("p").await;
        let phone = GqlSocket::user(&server, &t[1]).await;
        assert_eq!(alice.data("p").await["presence"]["connections"], 1);
        // Another transport counts as another device.
        let laptop = LegacyClient::user(&server, &t[1]).await;
        let two = alice.data("p").await;
        assert_eq!(
            (
                two["presence"]["status"].as_str(),
                two["presence"]["connections"].as_i64()
            ),
            (Some("ONLINE"), Some(2)),
            "{}",
            backend.name()
        );
        phone.close().await;
        assert_eq!(alice.data("p").await["presence"]["connections"], 1);
        alice.expect_silence(Duration::from_millis(800)).await;
        let who = server
            .ok(
                Some(&admin),
                "{ presenceOf(userIds: [\"bob\"]) { status connections } }",
                json!({}),
            )
            .await;
        assert_eq!(
            who["presenceOf"][0],
            json!({ "status": "ONLINE", "connections": 1 }),
            "still online after the grace period"
        );
        laptop.close().await;
        let off = alice.data("p").await;
        assert_eq!(off["presence"]["status"], "OFFLINE");
    }
}

#[tokio::test]
async fn set_presence_changes_the_status_others_see() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let (_, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
    let _bob_socket = GqlSocket::user(&server, &t[1]).await;
    let mut alice = GqlSocket::user(&server, &t[0]).await;
    alice.subscribe("p", PRESENCE, json!({})).await;
    let mut initial = [alice.data("p").await, alice.data("p").await];
    initial.sort_by_key(|d| {
        d["presence"]["user"]["username"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    });
    assert_eq!(initial[1]["presence"]["user"]["username"], "bob");
    assert_eq!(
        initial[1]["presence"]["roomId"],
        json!(null),
        "everyone's presence has no room"
    );
    let set = server
        .ok(
            Some(&t[1]),
            "mutation { setPresence(status: BUSY) { status connections } }",
            json!({}),
        )
        .await;
    assert_eq!(
        set["setPresence"],
        json!({ "status": "BUSY", "connections": 1 })
    );
    let change = alice.data("p").await;
    assert_eq!(
        (
            change["presence"]["user"]["username"].as_str(),
            change["presence"]["status"].as_str()
        ),
        (Some("bob"), Some("BUSY"))
    );
    let me = server
        .ok(Some(&t[0]), "{ user(id: \"bob\") { status } }", json!({}))
        .await;
    assert_eq!(me["user"]["status"], "BUSY");
    let code = server
        .err_code(
            Some(&t[1]),
            "mutation { setPresence(status: OFFLINE) { status } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    let mut anon = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    anon.subscribe("p", PRESENCE, json!({})).await;
    assert_eq!(anon.error_code("p").await, "UNAUTHENTICATED");
    let outsider = cli_token("outsider", "user");
    let mut o = GqlSocket::user(&server, &outsider).await;
    o.subscribe("p", PRESENCE, json!({ "r": "lobby" })).await;
    assert_eq!(o.error_code("p").await, "FORBIDDEN");
}

const NOTIFICATIONS: &str =
    "subscription { notifications { id kind level title body data readAt } }";
const SEND_NOTIFICATION: &str =
    "mutation($i: SendNotificationInput!) { sendNotification(input: $i) }";

#[tokio::test]
async fn mentions_notify_the_mentioned_member_live_and_in_the_inbox() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let (_, t) = admin_and(&server, &["alice", "bob", "carol"], "lobby").await;
        let mut alice = GqlSocket::user(&server, &t[0]).await;
        alice.subscribe("n", NOTIFICATIONS, json!({})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = send(&server, &t[1], "lobby", "hey @alice, and @nobody, see this").await;
        let n = alice.data("n").await["notifications"].clone();
        assert_eq!(n["kind"], "mention", "{}", backend.name());
        assert_eq!(n["level"], "INFO");
        assert_eq!(n["title"], "bob mentioned you in lobby");
        assert_eq!(n["body"], "hey @alice, and @nobody, see this");
        assert_eq!(n["data"]["messageId"], sent["id"]);
        assert_eq!(n["readAt"], json!(null));
        // Carol was not mentioned: her inbox is empty; alice's has one unread.
        let carol = server
            .ok(Some(&t[2]), "{ unreadNotificationCount }", json!({}))
            .await;
        assert_eq!(carol["unreadNotificationCount"], 0);
        let unread = server
            .ok(
                Some(&t[0]),
                "{ unreadNotificationCount notifications(unreadOnly: true) { id } }",
                json!({}),
            )
            .await;
        assert_eq!(unread["unreadNotificationCount"], 1);
        assert_eq!(unread["notifications"][0]["id"], n["id"]);
        let marked = server
            .ok(Some(&t[0]), "mutation { markNotificationsRead }", json!({}))
            .await;
        assert_eq!(marked["markNotificationsRead"], 1);
        let after = server
            .ok(
                Some(&t[0]),
                "{ unreadNotificationCount notifications { readAt } }",
                json!({}),
            )
            .await;
        assert_eq!(after["unreadNotificationCount"], 0);
        assert!(after["notifications"][0]["readAt"].is_string());
        // A self-mention notifies nobody.
        send(&server, &t[0], "lobby", "note to @alice").await;
        alice.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn admins_notify_a_user_a_room_a_role_or_everyone() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let (admin, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
        let loner = cli_token("loner", "user");
        server.ok(Some(&loner), "{ me { id } }", json!({})).await;
        let mut bob = GqlSocket::user(&server, &t[1]).await;
        bob.subscribe("n", NOTIFICATIONS, json!({})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let count = |v: Value| v["sendNotification"].as_i64().unwrap();
        let one = server
            .ok(Some(&admin), SEND_NOTIFICATION, json!({ "i": { "userId": "bob", "kind": "welcome", "level": "SUCCESS", "title": "Hi", "data": { "n": 1 } } }))
            .await;
        assert_eq!(count(one), 1, "{}", backend.name());
        let got = bob.data("n").await["notifications"].clone();
        assert_eq!(
            (
                got["kind"].as_str(),
                got["level"].as_str(),
                got["data"]["n"].as_i64()
            ),
            (Some("welcome"), Some("SUCCESS"), Some(1))
        );
        let room = server
            .ok(
                Some(&admin),
                SEND_NOTIFICATION,
                json!({ "i": { "roomId": "lobby", "kind": "room", "title": "Room news" } }),
            )
            .await;
        assert_eq!(count(room), 2, "alice and bob");
        assert_eq!(bob.data("n").await["notifications"]["title"], "Room news");
        let role = server
            .ok(
                Some(&admin),
                SEND_NOTIFICATION,
                json!({ "i": { "role": "admin", "kind": "ops", "title": "Admins only" } }),
            )
            .await;
        assert_eq!(count(role), 1, "the admin");
        let all = server
            .ok(
                Some(&admin),
                SEND_NOTIFICATION,
                json!({ "i": { "kind": "broadcast", "title": "Everyone" } }),
            )
            .await;
        assert_eq!(count(all), 4, "admin, alice, bob and loner");
        assert_eq!(bob.data("n").await["notifications"]["title"], "Everyone");
        let loner_inbox = server
            .ok(Some(&loner), "{ notifications { title } }", json!({}))
            .await;
        assert_eq!(
            loner_inbox["notifications"],
            json!([{ "title": "Everyone" }])
        );
        // Rules: admins only, one target at most, valid input.
        let code = server
            .err_code(
                Some(&t[0]),
                SEND_NOTIFICATION,
                json!({ "i": { "kind": "x", "title": "x" } }),
            )
            .await;
        assert_eq!(code, "FORBIDDEN");
        let code = server
            .err_code(
                Some(&admin),
                SEND_NOTIFICATION,
                json!({ "i": { "userId": "bob", "role": "user", "kind": "x", "title": "x" } }),
            )
            .await;
        assert_eq!(code, "BAD_USER_INPUT");
        let code = server
            .err_code(
                Some(&admin),
                SEND_NOTIFICATION,
                json!({ "i": { "userId": "ghost", "kind": "x", "title": "x" } }),
            )
            .await;
        assert_eq!(code, "NOT_FOUND");
        let code = server
            .err_code(
                Some(&admin),
                SEND_NOTIFICATION,
                json!({ "i": { "userId": "bob", "kind": "x", "title": "  " } }),
            )
            .await;
        assert_eq!(code, "BAD_USER_INPUT");
    }
}

const LEADERBOARD: &str = "subscription($l: Int) { leaderboard(limit: $l) { version entries { rank points user { username } } } }";
const AWARD: &str = "mutation($u: ID!, $p: Int!) { awardPoints(userId: $u, points: $p, reason: \"test\") { rank points user { username } } }";

fn standings(d: &Value) -> Vec<(String, i64)> {
    d["leaderboard"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user"]["username"].as_str().unwrap().to_owned(),
                e["points"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_leaderboard_starts_with_a_snapshot_and_sends_changes_to_its_top() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let server = TestServer::start(&db, &[("TIDINGS_POINTS_PER_MESSAGE", "0")]);
        let (admin, _t) = admin_and(&server, &["alice", "bob", "carol"], "lobby").await;
        server
            .ok(Some(&admin), AWARD, json!({ "u": "alice", "p": 30 }))
            .await;
        server
            .ok(Some(&admin), AWARD, json!({ "u": "bob", "p": 20 }))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Anonymous viewers may watch the leaderboard.
        let mut anon = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
        anon.subscribe("l", LEADERBOARD, json!({ "l": 2 })).await;
        let first = anon.data("l").await;
        assert_eq!(
            standings(&first),
            vec![("alice".into(), 30), ("bob".into(), 20)],
            "{}",
            backend.name()
        );
        let v1 = first["leaderboard"]["version"].as_i64().unwrap();
        // A change below the top 2 sends nothing.
        let carol = server
            .ok(Some(&admin), AWARD, json!({ "u": "carol", "p": 5 }))
            .await;
        assert_eq!(
            carol["awardPoints"],
            json!({ "rank": 3, "points": 5, "user": { "username": "carol" } })
        );
        anon.expect_silence(Duration::from_millis(600)).await;
        // Carol overtakes bob: a new top 2.
        server
            .ok(Some(&admin), AWARD, json!({ "u": "carol", "p": 20 }))
            .await;
        let second = anon.data("l").await;
        assert_eq!(
            standings(&second),
            vec![("alice".into(), 30), ("carol".into(), 25)]
        );
        assert!(
            second["leaderboard"]["version"].as_i64().unwrap() > v1,
            "versions only grow"
        );
        let ranks: Vec<_> = second["leaderboard"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["rank"].as_i64().unwrap())
            .collect();
        assert_eq!(ranks, vec![1, 2]);
        // Ties rank by user id; users without points are not ranked.
        let q = server
            .ok(
                None,
                "{ leaderboard(limit: 10) { entries { rank points user { username } } } }",
                json!({}),
            )
            .await;
        assert_eq!(q["leaderboard"]["entries"].as_array().unwrap().len(), 3);
        let code = server
            .err_code(Some(&_t[0]), AWARD, json!({ "u": "bob", "p": 1 }))
            .await;
        assert_eq!(code, "FORBIDDEN");
    }
}

#[tokio::test]
async fn leaderboard_updates_are_coalesced_to_one_per_interval() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let (admin, _t) = admin_and(&server, &["alice", "bob"], "lobby").await;
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    ws.subscribe("l", LEADERBOARD, json!({ "l": 5 })).await;
    ws.data("l").await;
    // Twenty changes as fast as they go, each changing the top.
    let started = Instant::now();
    for i in 0..20 {
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        server
            .ok(Some(&admin), AWARD, json!({ "u": user, "p": 3 + i }))
            .await;
    }
    let burst = started.elapsed();
    let mut updates = Vec::new();
    let mut last_at = Instant::now();
    let mut gaps = Vec::new();
    while let Some(f) = ws.read_frame(Duration::from_millis(800)).await {
        gaps.push(last_at.elapsed());
        last_at = Instant::now();
        updates.push(f["payload"]["data"].clone());
    }
    assert!(!updates.is_empty());
    let allowed = (burst.as_millis() / 250) as usize + 2;
    assert!(
        updates.len() <= allowed,
        "{} updates in {burst:?}: at most one per 250 ms",
        updates.len()
    );
    for g in gaps.iter().skip(1) {
        assert!(
            *g >= Duration::from_millis(200),
            "updates at least ~250 ms apart: {gaps:?}"
        );
    }
    // The last one is the final standing.
    let last = updates.last().unwrap();
    let final_q = server
        .ok(
            None,
            "{ leaderboard(limit: 5) { entries { points user { username } } } }",
            json!({}),
        )
        .await;
    assert_eq!(standings(last), standings(&final_q));
    let versions: Vec<i64> = updates
        .iter()
        .map(|u| u["leaderboard"]["version"].as_i64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
}

#[tokio::test]
async fn sending_messages_awards_points_on_the_leaderboard() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let (_, t) = admin_and(&server, &["alice"], "lobby").await;
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    ws.subscribe("l", LEADERBOARD, json!({})).await;
    assert_eq!(standings(&ws.data("l").await), Vec::<(String, i64)>::new());
    send(&server, &t[0], "lobby", "one").await;
    send(&server, &t[0], "lobby", "two").await;
    let mut last = ws.data("l").await;
    while let Some(f) = ws.read_frame(Duration::from_millis(600)).await {
        last = f["payload"]["data"].clone();
    }
    assert_eq!(standings(&last), vec![("alice".into(), 2)]);
}

#[tokio::test]
async fn leaving_a_room_ends_its_subscriptions() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let (_, t) = admin_and(&server, &["alice", "bob"], "lobby").await;
    let mut bob = GqlSocket::user(&server, &t[1]).await;
    bob.subscribe("m", MESSAGES, json!({ "r": "lobby" })).await;
    bob.subscribe("t", TYPING, json!({ "r": "lobby" })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .ok(
            Some(&t[1]),
            "mutation { leaveRoom(roomId: \"lobby\") }",
            json!({}),
        )
        .await;
    // Bob sees his own departure, then the subscription ends with FORBIDDEN.
    assert_eq!(bob.data("m").await["messageAdded"]["body"], "bob left");
    assert_eq!(bob.error_code("m").await, "FORBIDDEN");
    assert_eq!(bob.frame_for("m").await["type"], "complete");
    assert_eq!(bob.frame_for("t").await["type"], "complete");
    // The id is free again once `complete` arrived: a new subscription under it is answered
    // (refused: bob is no longer a member), not closed as a duplicate.
    bob.subscribe("m", MESSAGES, json!({ "r": "lobby" })).await;
    assert_eq!(bob.error_code("m").await, "FORBIDDEN");
    assert_eq!(bob.frame_for("m").await["type"], "complete");
    send(&server, &t[0], "lobby", "after bob left").await;
    bob.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_burst_of_notifications_arrives_once_each_in_order_over_a_tiny_buffer() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        // Rate limits off: this admin sends 40 notifications at once.
        let server = TestServer::start(
            &db,
            &[
                ("TIDINGS_STORED_BROADCAST_CAPACITY", "1"),
                ("TIDINGS_RATE_LIMITS", "off"),
            ],
        );
        let (admin, t) = admin_and(&server, &["bob"], "lobby").await;
        let mut bob = GqlSocket::user(&server, &t[0]).await;
        bob.subscribe("n", NOTIFICATIONS, json!({})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        futures_util::future::join_all((0..40).map(|i| {
            let (server, admin) = (&server, &admin);
            async move {
                server
                    .ok(
                        Some(admin),
                        SEND_NOTIFICATION,
                        json!({ "i": { "userId": "bob", "kind": "n", "title": format!("t{i}") } }),
                    )
                    .await
            }
        }))
        .await;
        let mut ids = Vec::new();
        for _ in 0..40 {
            let n = bob.data("n").await;
            ids.push(
                n["notifications"]["id"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap(),
            );
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ascending, no duplicates: {ids:?} ({})",
            backend.name()
        );
        bob.expect_silence(Duration::from_millis(300)).await;
        let inbox = server
            .ok(Some(&t[0]), "{ unreadNotificationCount }", json!({}))
            .await;
        assert_eq!(inbox["unreadNotificationCount"], 40);
    }
}

#[tokio::test]
async fn equal_subscriptions_of_many_users_share_one_execution() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let names: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_, t) = admin_and(&server, &refs, "lobby").await;
    let mut sockets = Vec::new();
    for token in &t {
        let mut ws = GqlSocket::user(&server, token).await;
        ws.subscribe("m", MESSAGES, json!({ "r": "lobby" })).await;
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = metrics(&server).await;
    assert_eq!(
        sample(&metrics, "tidings_cohort_executions_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "tidings_cohort_members"), Some(6.0));
    send(&server, &t[0], "lobby", "to all six").await;
    for ws in sockets.iter_mut() {
        assert_eq!(ws.data("m").await["messageAdded"]["body"], "to all six");
    }
    // A different selection is another cohort; a member leaving stops only its own stream.
    server
        .ok(
            Some(&t[5]),
            "mutation { leaveRoom(roomId: \"lobby\") }",
            json!({}),
        )
        .await;
    assert_eq!(
        sockets[5].data("m").await["messageAdded"]["body"],
        "u5 left"
    );
    assert_eq!(sockets[5].error_code("m").await, "FORBIDDEN");
    assert_eq!(sockets[5].frame_for("m").await["type"], "complete");
    send(&server, &t[0], "lobby", "five left").await;
    for ws in sockets.iter_mut().take(5) {
        let mut body = ws.data("m").await["messageAdded"]["body"].clone();
        if body == "u5 left" {
            body = ws.data("m").await["messageAdded"]["body"].clone();
        }
        assert_eq!(body, "five left");
    }
    sockets[5].expect_silence(Duration::from_millis(300)).await;
}

/// Users who connect at the same moment are announced together (their rooms read in one query),
/// and each still only to the rooms they belong to.
#[tokio::test]
async fn users_connecting_at_once_are_announced_to_their_own_rooms_only() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let watcher = cli_token("watcher", "user");
        join(&server, &watcher, "red").await;
        let mut red = Vec::new();
        let mut blue = Vec::new();
        for n in 0..12 {
            let name = format!("r{n:02}");
            let t = cli_token(&name, "user");
            join(&server, &t, "red").await;
            red.push((name, t));
            let name = format!("b{n:02}");
            let t = cli_token(&name, "user");
            join(&server, &t, "blue").await;
            blue.push((name, t));
        }
        let mut ws = GqlSocket::user(&server, &watcher).await;
        ws.subscribe("p", PRESENCE, json!({ "r": "red" })).await;
        let first = ws.data("p").await;
        assert_eq!(first["presence"]["user"]["username"], "watcher");

        let everyone = red.iter().chain(&blue).map(|(_, t)| t.clone());
        let sockets = futures_util::future::join_all(everyone.map(|t| {
            let server = &server;
            async move { GqlSocket::user(server, &t).await }
        }))
        .await;
        let mut seen = Vec::new();
        while seen.len() < red.len() {
            let p = ws.data("p").await;
            assert_eq!(p["presence"]["status"], "ONLINE", "{p}");
            assert_eq!(p["presence"]["roomId"], "red", "{p}");
            seen.push(
                p["presence"]["user"]["username"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            );
        }
        ws.expect_silence(Duration::from_millis(500)).await;
        seen.sort();
        let expected: Vec<String> = red.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(seen, expected, "{}", backend.name());
        drop(sockets);
    }
}
