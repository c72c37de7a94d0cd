//! Channels: app events a backend publishes, delivered to every live subscriber allowed to
//! read the channel, on every instance.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const EVENTS: &str =
    "subscription($c: [String!]) { events(channels: $c) { id channel type data at } }";
const PUBLISH: &str = "mutation($c: String!, $t: String!, $d: JSON) { publish(channel: $c, type: $t, data: $d) { id channel type data } }";

async fn publish(
    server: &TestServer,
    token: &str,
    channel: &str,
    kind: &str,
    data: Value,
) -> Value {
    server
        .ok(
            Some(token),
            PUBLISH,
            json!({ "c": channel, "t": kind, "d": data }),
        )
        .await["publish"]
        .clone()
}

async fn listening(server: &TestServer, payload: Value, channels: Value) -> GqlSocket {
    let mut ws = GqlSocket::connect(server, TRANSPORT_WS, payload).await;
    ws.subscribe("e", EVENTS, json!({ "c": channels })).await;
    // Subscriptions are live once the server has them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws
}

#[tokio::test]
async fn an_anonymous_subscriber_gets_public_events_exactly_as_published() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let mut anon = listening(&server, json!({}), json!(["public:game"])).await;
    let data = json!({ "round": 3, "players": ["a", "b"], "nested": { "ok": true, "n": null } });
    let published = publish(
        &server,
        &backend,
        "public:game",
        "round.started",
        data.clone(),
    )
    .await;
    let got = anon.data("e").await["events"].clone();
    assert_eq!(got["channel"], "public:game");
    assert_eq!(got["type"], "round.started");
    assert_eq!(got["data"], data);
    assert_eq!(got["id"], published["id"]);
    assert!(got["at"].is_string());
    // No data: null.
    publish(&server, &backend, "public:game", "ping.test", Value::Null).await;
    assert_eq!(anon.data("e").await["events"]["data"], Value::Null);
    // Other channels do not reach it.
    publish(&server, &backend, "public:other", "x", json!(1)).await;
    anon.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_users_channel_reaches_only_that_user_and_is_forbidden_to_others() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    let mut a = listening(
        &server,
        json!({ "authToken": alice }),
        json!(["user:alice"]),
    )
    .await;
    // Bob follows his own channels (no list): he must not get alice's event.
    let mut b = listening(&server, json!({ "authToken": bob }), Value::Null).await;
    publish(
        &server,
        &backend,
        "user:alice",
        "ticket.created",
        json!({ "id": 7 }),
    )
    .await;
    assert_eq!(a.data("e").await["events"]["data"], json!({ "id": 7 }));
    b.expect_silence(Duration::from_millis(300)).await;
    publish(
        &server,
        &backend,
        "user:bob",
        "ticket.created",
        json!({ "id": 8 }),
    )
    .await;
    assert_eq!(b.data("e").await["events"]["channel"], "user:bob");
    let mut snoop = GqlSocket::user(&server, &bob).await;
    snoop
        .subscribe("x", EVENTS, json!({ "c": ["user:alice"] }))
        .await;
    assert_eq!(snoop.error_code("x").await, "FORBIDDEN");
    let mut anon = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    anon.subscribe("x", EVENTS, json!({ "c": ["user:alice"] }))
        .await;
    assert_eq!(anon.error_code("x").await, "UNAUTHENTICATED");
    // Admins read every channel.
    let mut admin = listening(
        &server,
        json!({ "authToken": backend }),
        json!(["user:alice"]),
    )
    .await;
    publish(&server, &backend, "user:alice", "ticket.updated", json!({})).await;
    assert_eq!(admin.data("e").await["events"]["type"], "ticket.updated");
}

#[tokio::test]
async fn role_broadcast_and_own_channels() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let ops = cli_token("olga", "admin");
    let user = cli_token("ursula", "user");
    let mut admin_own = listening(&server, json!({ "authToken": ops }), Value::Null).await;
    let mut user_own = listening(&server, json!({ "authToken": user }), Value::Null).await;
    publish(
        &server,
        &backend,
        "role:admin",
        "alert.raised",
        json!({ "level": "high" }),
    )
    .await;
    assert_eq!(admin_own.data("e").await["events"]["channel"], "role:admin");
    user_own.expect_silence(Duration::from_millis(300)).await;
    publish(
        &server,
        &backend,
        "broadcast",
        "maintenance.scheduled",
        json!({ "at": "soon" }),
    )
    .await;
    assert_eq!(admin_own.data("e").await["events"]["channel"], "broadcast");
    assert_eq!(user_own.data("e").await["events"]["channel"], "broadcast");
    let mut ws = GqlSocket::user(&server, &user).await;
    ws.subscribe("x", EVENTS, json!({ "c": ["role:admin"] }))
        .await;
    assert_eq!(ws.error_code("x").await, "FORBIDDEN");
    let mut anon = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    anon.subscribe("x", EVENTS, json!({ "c": ["broadcast"] }))
        .await;
    assert_eq!(anon.error_code("x").await, "UNAUTHENTICATED");
    anon.subscribe("y", EVENTS, json!({})).await;
    assert_eq!(
        anon.error_code("y").await,
        "UNAUTHENTICATED",
        "anonymous has no own channels"
    );
}

#[tokio::test]
async fn a_room_channel_is_for_members_and_stops_when_they_leave() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let alice = cli_token("alice", "user");
    let mallory = cli_token("mallory", "user");
    join(&server, &alice, "lobby").await;
    let mut ws = listening(
        &server,
        json!({ "authToken": alice }),
        json!(["room:lobby", "public:news"]),
    )
    .await;
    publish(
        &server,
        &backend,
        "room:lobby",
        "poll.opened",
        json!({ "q": "?" }),
    )
    .await;
    assert_eq!(ws.data("e").await["events"]["type"], "poll.opened");
    let mut m = GqlSocket::user(&server, &mallory).await;
    m.subscribe("x", EVENTS, json!({ "c": ["room:lobby"] }))
        .await;
    assert_eq!(m.error_code("x").await, "FORBIDDEN");
    server
        .ok(
            Some(&alice),
            "mutation { leaveRoom(roomId: \"lobby\") }",
            json!({}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&server, &backend, "room:lobby", "poll.closed", json!({})).await;
    ws.expect_silence(Duration::from_millis(300)).await;
    // Her other channels go on.
    publish(&server, &backend, "public:news", "story", json!("hi")).await;
    assert_eq!(ws.data("e").await["events"]["data"], "hi");
}

#[tokio::test]
async fn only_admins_publish_and_names_and_types_are_validated() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let user = cli_token("ursula", "user");
    let vars = |c: &str, t: &str| json!({ "c": c, "t": t, "d": {} });
    assert_eq!(
        server
            .err_code(Some(&user), PUBLISH, vars("public:game", "x"))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        server
            .err_code(None, PUBLISH, vars("public:game", "x"))
            .await,
        "UNAUTHENTICATED"
    );
    for channel in [
        "game",
        "public:",
        "public:UPPER",
        "private:x",
        "user:has space",
        "room:Not_Slug",
        "role:",
        &format!("public:{}", "x".repeat(65)),
    ] {
        assert_eq!(
            server
                .err_code(Some(&backend), PUBLISH, vars(channel, "ok"))
                .await,
            "BAD_USER_INPUT",
            "{channel:?}"
        );
    }
    for kind in [
        "",
        "Upper",
        "has space",
        "message",
        "typing",
        "notification",
        "user.online",
        "leaderboard_update",
    ] {
        assert_eq!(
            server
                .err_code(Some(&backend), PUBLISH, vars("public:game", kind))
                .await,
            "BAD_USER_INPUT",
            "{kind:?}"
        );
    }
    let mut anon = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    anon.subscribe("x", EVENTS, json!({ "c": ["nonsense"] }))
        .await;
    assert_eq!(anon.error_code("x").await, "BAD_USER_INPUT");
}

#[tokio::test]
async fn post_api_publish_follows_the_same_rules() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let user = cli_token("ursula", "user");
    let mut anon = listening(&server, json!({}), json!(["public:dashboard"])).await;
    let post = |token: Option<&str>, body: Value| {
        let mut req = http().post(server.url("/api/publish")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let body = json!({ "channel": "public:dashboard", "type": "dashboard.update", "data": { "visitors": 42 } });
    let resp = post(None, body.clone()).await.expect("post");
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["code"], "UNAUTHENTICATED");
    assert_eq!(
        post(Some(&user), body.clone())
            .await
            .expect("post")
            .status(),
        403
    );
    let bad = json!({ "channel": "dashboard", "type": "dashboard.update" });
    assert_eq!(post(Some(&backend), bad).await.expect("post").status(), 400);
    let resp = http()
        .post(server.url("/api/publish"))
        .bearer_auth(&backend)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    let resp = post(Some(&backend), body).await.expect("post");
    assert_eq!(resp.status(), 200);
    let published: Value = resp.json().await.expect("json");
    assert_eq!(published["type"], "dashboard.update");
    let got = anon.data("e").await["events"].clone();
    assert_eq!(got["data"], json!({ "visitors": 42 }));
    assert_eq!(got["id"], published["id"]);
}

#[tokio::test]
async fn an_event_published_on_one_instance_reaches_a_subscriber_on_another() {
    let redis = TestRedis::start();
    let (a, b, _db) = bridged_pair(&Backend::Sqlite, &redis, &[]).await;
    let backend = cli_token("backend", "admin");
    let mut on_a = listening(&a, json!({}), json!(["public:game"])).await;
    publish(
        &b,
        &backend,
        "public:game",
        "goal.scored",
        json!({ "by": "b" }),
    )
    .await;
    assert_eq!(on_a.data("e").await["events"]["data"], json!({ "by": "b" }));
}

// ---- The legacy /ws protocol ------------------------------------------------------------

#[tokio::test]
async fn an_anonymous_channel_socket_gets_public_events_in_their_own_shape() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let mut game = LegacyClient::open(&server, "/ws/game").await;
    let welcome = game.next().await;
    assert_eq!(welcome["type"], "system");
    assert_eq!(welcome["user_id"], Value::Null, "anonymous: {welcome}");
    game.sync().await;
    publish(
        &server,
        &backend,
        "public:game",
        "round.started",
        json!({ "round": 1 }),
    )
    .await;
    let event = game.next().await;
    assert_eq!(event["type"], "round.started");
    assert_eq!(event["channel"], "public:game");
    assert_eq!(event["data"], json!({ "round": 1 }));
    assert!(event["timestamp"].is_string());
    assert_eq!(
        event.as_object().map(|o| o.len()),
        Some(4),
        "exactly type, channel, data, timestamp: {event}"
    );
    // And a GraphQL subscriber of the same channel gets the same event.
    let mut gql = listening(&server, json!({}), json!(["public:game"])).await;
    publish(&server, &backend, "public:game", "round.ended", Value::Null).await;
    assert_eq!(game.next().await["data"], Value::Null);
    assert_eq!(gql.data("e").await["events"]["type"], "round.ended");
    // Anonymous sockets cannot chat.
    game.send(json!({ "type": "join_room", "room": "lobby" }))
        .await;
    assert_eq!(game.next_of("error").await["code"], "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_bad_token_on_a_channel_socket_still_closes_with_4001() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mut game = LegacyClient::open(&server, "/ws/game?token=garbage").await;
    assert_eq!(game.closed().await.code, 4001);
}

#[tokio::test]
async fn a_signed_in_socket_follows_its_own_channels_without_asking() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let alice = cli_token("alice", "user");
    let mut a = LegacyClient::user(&server, &alice).await;
    a.sync().await;
    publish(
        &server,
        &backend,
        "user:alice",
        "ticket.created",
        json!({ "id": 1 }),
    )
    .await;
    assert_eq!(
        a.next_of("ticket.created").await["data"],
        json!({ "id": 1 })
    );
    publish(&server, &backend, "role:user", "tip", json!("hello users")).await;
    assert_eq!(a.next_of("tip").await["channel"], "role:user");
    publish(&server, &backend, "broadcast", "maintenance", json!({})).await;
    assert_eq!(a.next_of("maintenance").await["channel"], "broadcast");
    publish(
        &server,
        &backend,
        "user:bob",
        "ticket.created",
        json!({ "id": 2 }),
    )
    .await;
    a.expect_none_of("ticket.created", Duration::from_millis(300))
        .await;
    // A socket may unsubscribe from its own channels.
    a.send(json!({ "type": "unsubscribe", "channel": "user:alice" }))
        .await;
    assert_eq!(
        a.next_of("unsubscribed").await["data"],
        json!({ "channel": "user:alice" })
    );
    publish(
        &server,
        &backend,
        "user:alice",
        "ticket.created",
        json!({ "id": 3 }),
    )
    .await;
    a.expect_none_of("ticket.created", Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_follow_the_same_rules_as_graphql() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let alice = cli_token("alice", "user");
    let mut a = LegacyClient::user(&server, &alice).await;
    a.sync().await;
    a.send(json!({ "type": "subscribe", "channel": "user:bob" }))
        .await;
    let refused = a.next_of("error").await;
    assert_eq!(refused["code"], "FORBIDDEN");
    a.send(json!({ "type": "subscribe", "channel": "not a channel" }))
        .await;
    assert_eq!(a.next_of("error").await["code"], "BAD_USER_INPUT");
    a.send(json!({ "type": "subscribe", "channel": "public:dashboard" }))
        .await;
    assert_eq!(
        a.next_of("subscribed").await,
        json!({ "type": "subscribed", "data": { "channel": "public:dashboard" } })
    );
    publish(
        &server,
        &backend,
        "public:dashboard",
        "dashboard.update",
        json!({ "visitors": 5 }),
    )
    .await;
    assert_eq!(
        a.next_of("dashboard.update").await["data"],
        json!({ "visitors": 5 })
    );
    a.send(json!({ "type": "unsubscribe", "channel": "public:dashboard" }))
        .await;
    a.next_of("unsubscribed").await;
    publish(
        &server,
        &backend,
        "public:dashboard",
        "dashboard.update",
        json!({ "visitors": 6 }),
    )
    .await;
    a.expect_none_of("dashboard.update", Duration::from_millis(300))
        .await;
    // Room channels are for members, and stop when they leave.
    a.send(json!({ "type": "join_room", "room": "lobby" }))
        .await;
    a.next_of("joined_room").await;
    a.send(json!({ "type": "subscribe", "channel": "room:lobby" }))
        .await;
    a.next_of("subscribed").await;
    publish(&server, &backend, "room:lobby", "poll.opened", json!({})).await;
    a.next_of("poll.opened").await;
    a.send(json!({ "type": "leave_room", "room": "lobby" }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&server, &backend, "room:lobby", "poll.closed", json!({})).await;
    a.expect_none_of("poll.closed", Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn channel_events_keep_their_shape_in_every_dialect() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let backend = cli_token("backend", "admin");
    let alice = cli_token("alice", "user");
    let mut conv = LegacyClient::at(&server, &format!("/ws/auth?token={alice}")).await;
    conv.sync().await;
    publish(
        &server,
        &backend,
        "user:alice",
        "ticket.created",
        json!({ "id": 9 }),
    )
    .await;
    let e = conv.next_of("ticket.created").await;
    assert_eq!(
        (e["channel"].as_str(), e["data"]["id"].as_i64()),
        (Some("user:alice"), Some(9))
    );
}
