//! The REST extras: `GET /api/presence/online` and `GET /metrics`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn online(server: &TestServer, token: Option<&str>) -> reqwest::Response {
    let mut req = http().get(server.url("/api/presence/online"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("GET /api/presence/online")
}

/// Polls `/metrics` until `series` has `value` (gauges follow closes a moment later).
async fn wait_for_sample(server: &TestServer, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(server).await;
        if sample(&text, series) == Some(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never became {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn online_presence_lists_who_is_online_with_status_and_connections() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        let _alice_legacy = LegacyClient::user(&server, &alice).await;
        let _alice_graphql = GqlSocket::user(&server, &alice).await;
        let _bob = LegacyClient::user(&server, &bob).await;
        server
            .ok(
                Some(&bob),
                "mutation { setPresence(status: BUSY) { status } }",
                json!({}),
            )
            .await;
        let resp = online(&server, Some(&alice)).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(
            body,
            json!({ "online_count": 2, "users": [
                { "id": "alice", "username": "alice", "status": "online", "connections": 2 },
                { "id": "bob", "username": "bob", "status": "busy", "connections": 1 },
            ] }),
            "{}",
            backend.name()
        );
    }
}

#[tokio::test]
async fn online_presence_needs_a_signed_in_user() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let resp = online(&server, None).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let resp = online(&server, Some("not-a-jwt")).await;
    assert_eq!(resp.status(), 401);
}

/// Tokens with a `name` claim, signed with the test servers' secret.
async fn named_token(sub: &str, name: &str) -> String {
    let mut config = tidings::config::Config::for_database("sqlite::memory:");
    config.jwt_secret = Some(SECRET.to_owned());
    let keys = tidings::auth::TokenKeys::load(&config, None)
        .await
        .expect("keys");
    keys.mint(sub, name, "user", Duration::from_secs(3600))
        .expect("mint")
}

/// An error gets the status of its code on every endpoint (one table, `src/http/error.rs`): a
/// token whose user cannot be given a username is bad input, 400.
#[tokio::test]
async fn online_presence_answers_bad_input_with_400() {
    let (server, _db) = server(&Backend::Sqlite).await;
    // Every username the token `victim` named "bob" could take belongs to someone else.
    let mut taken = vec!["bob".to_owned(), "victim".to_owned()];
    taken.extend((2..20).map(|n| format!("bob-{n}")));
    for (k, name) in taken.iter().enumerate() {
        let token = named_token(&format!("holder{k}"), name).await;
        assert_eq!(online(&server, Some(&token)).await.status(), 200, "{name}");
    }
    let resp = online(&server, Some(&named_token("victim", "bob").await)).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
}

#[tokio::test]
async fn metrics_gauge_open_connections_by_transport() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let legacy = "tidings_connections{transport=\"legacy_ws\"}";
    let graphql = "tidings_connections{transport=\"graphql_ws\"}";
    let text = metrics(&server).await;
    assert_eq!(sample(&text, legacy), Some(0.0), "{text}");
    assert_eq!(sample(&text, graphql), Some(0.0), "{text}");

    let alice = cli_token("alice", "user");
    let first = LegacyClient::user(&server, &alice).await;
    let _second = LegacyClient::user(&server, &alice).await;
    let _graphql = GqlSocket::user(&server, &alice).await;
    let text = metrics(&server).await;
    assert_eq!(sample(&text, legacy), Some(2.0), "{text}");
    assert_eq!(sample(&text, graphql), Some(1.0), "{text}");

    first.close().await;
    wait_for_sample(&server, legacy, 1.0).await;
}

#[tokio::test]
async fn metrics_count_subscriptions_events_and_delivery_latency_by_kind() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&server, &alice, "lobby").await;
    join(&server, &bob, "lobby").await;
    let mut c = LegacyClient::user(&server, &alice).await;
    c.send(json!({ "type": "join_room", "room": "lobby" }))
        .await;
    c.next_of("joined_room").await;
    c.sync().await;
    send(&server, &bob, "lobby", "measured").await;
    c.next_of("message").await;

    let text = metrics(&server).await;
    let at_least_one = |series: &str| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
        assert!(v >= 1.0, "{series} = {v}");
    };
    // The socket follows the room's messages and typing, its user's notifications and presence.
    at_least_one("tidings_subscriptions{kind=\"room_messages\"}");
    at_least_one("tidings_subscriptions{kind=\"room_typing\"}");
    at_least_one("tidings_subscriptions{kind=\"user_notifications\"}");
    at_least_one("tidings_subscriptions{kind=\"presence\"}");
    at_least_one("tidings_events_published_total{kind=\"room_messages\"}");
    at_least_one("tidings_events_delivered_total{kind=\"room_messages\"}");
    at_least_one(
        "tidings_delivery_latency_seconds_count{transport=\"legacy_ws\",kind=\"room_messages\"}",
    );
    assert!(
        text.contains("tidings_delivery_latency_seconds_bucket{transport=\"legacy_ws\",kind=\"room_messages\",le=\"0.005\"}"),
        "latency is a histogram with buckets:\n{text}"
    );
}

#[tokio::test]
async fn metrics_expose_slow_consumers_rate_limits_and_redis_from_the_start() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let text = metrics(&server).await;
    for (series, value) in [
        ("tidings_slow_consumers_total{transport=\"legacy_ws\"}", 0.0),
        (
            "tidings_slow_consumers_total{transport=\"graphql_ws\"}",
            0.0,
        ),
        ("tidings_rate_limited_total{action=\"message\"}", 0.0),
        ("tidings_redis_up", 0.0),
        // The leaderboard follows its own topic (to adopt snapshots made elsewhere).
        ("tidings_subscriptions{kind=\"leaderboard\"}", 1.0),
        (
            "tidings_channel_events_published_total{kind=\"public\"}",
            0.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}:\n{text}");
    }
    assert!(text.contains("# TYPE tidings_connections gauge"), "{text}");
}
