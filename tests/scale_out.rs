//! Several instances behind one Redis: every subscription kind crosses instances, presence is
//! global, and Redis or an instance going away loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const MESSAGES: &str =
    "subscription($r: ID!) { messageAdded(roomId: $r) { id body sender { username } } }";

#[tokio::test]
async fn every_subscription_kind_crosses_instances() {
    for backend in backends() {
        let redis = TestRedis::start();
        let (a, b, _db) = bridged_pair(&backend, &redis, &[]).await;
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        let admin = cli_token("admin", "admin");
        join(&a, &alice, "lobby").await;
        join(&b, &bob, "lobby").await;

        let mut ws = GqlSocket::user(&a, &alice).await;
        ws.subscribe("m", MESSAGES, json!({ "r": "lobby" })).await;
        ws.subscribe(
            "t",
            "subscription { typing(roomId: \"lobby\") { isTyping user { username } } }",
            json!({}),
        )
        .await;
        ws.subscribe(
            "p",
            "subscription { presence(roomId: \"lobby\") { status user { username } } }",
            json!({}),
        )
        .await;
        ws.subscribe(
            "n",
            "subscription { notifications { kind title } }",
            json!({}),
        )
        .await;
        ws.subscribe(
            "l",
            "subscription { leaderboard(limit: 3) { entries { points user { username } } } }",
            json!({}),
        )
        .await;
        assert_eq!(
            ws.data("p").await["presence"]["user"]["username"],
            "alice",
            "{}",
            backend.name()
        );
        ws.data("l").await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Everything below happens on instance B.
        send(&b, &bob, "lobby", "hello from b, @alice").await;
        let m = ws.data("m").await;
        assert_eq!(m["messageAdded"]["body"], "hello from b, @alice");
        assert_eq!(m["messageAdded"]["sender"]["username"], "bob");
        assert_eq!(ws.data("n").await["notifications"]["kind"], "mention");
        b.ok(
            Some(&bob),
            "mutation { setTyping(roomId: \"lobby\", isTyping: true) }",
            json!({}),
        )
        .await;
        assert_eq!(
            ws.data("t").await["typing"],
            json!({ "isTyping": true, "user": { "username": "bob" } })
        );
        let _bob_socket = GqlSocket::user(&b, &bob).await;
        let p = ws.data("p").await;
        assert_eq!(
            (
                p["presence"]["user"]["username"].as_str(),
                p["presence"]["status"].as_str()
            ),
            (Some("bob"), Some("ONLINE"))
        );
        b.ok(
            Some(&admin),
            "mutation { awardPoints(userId: \"alice\", points: 50) { rank } }",
            json!({}),
        )
        .await;
        let mut board = ws.data("l").await;
        while board["leaderboard"]["entries"][0]["user"]["username"] != "alice" {
            board = ws.data("l").await;
        }
        assert_eq!(
            board["leaderboard"]["entries"][0]["points"], 50,
            "awarded on B"
        );
        assert_eq!(
            board["leaderboard"]["entries"][1]["user"]["username"], "bob",
            "a point for his message"
        );
        b.ok(Some(&admin), "mutation { sendNotification(input: { userId: \"alice\", kind: \"ops\", title: \"from B\" }) }", json!({})).await;
        assert_eq!(ws.data("n").await["notifications"]["title"], "from B");
        // A's queries see B's users online too.
        let online = a
            .ok(
                Some(&alice),
                "{ onlineUsers { user { username } } }",
                json!({}),
            )
            .await;
        let names: Vec<_> = online["onlineUsers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["user"]["username"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["alice", "bob"]);
    }
}

#[tokio::test]
async fn redis_carries_only_topics_with_local_subscribers() {
    let redis = TestRedis::start();
    let (a, _b, _db) = bridged_pair(&Backend::Sqlite, &redis, &[]).await;
    let alice = cli_token("alice", "user");
    join(&a, &alice, "quiet").await;
    let mut conn = redis.connection().await;
    let channels = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let list: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg("tidings:room:*")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            list
        }
    };
    assert!(
        channels(&mut conn).await.is_empty(),
        "nobody follows a room yet"
    );
    let mut ws = GqlSocket::user(&a, &alice).await;
    ws.subscribe("m", MESSAGES, json!({ "r": "quiet" })).await;
    eventually(
        Duration::from_secs(5),
        "the room's channel is followed",
        || {
            let mut c = conn.clone();
            async move { channels(&mut c).await == vec!["tidings:room:quiet:messages".to_owned()] }
        },
    )
    .await;
    ws.close().await;
    eventually(
        Duration::from_secs(5),
        "the channel is left with its last subscriber",
        || {
            let mut c = conn.clone();
            async move { channels(&mut c).await.is_empty() }
        },
    )
    .await;
}

#[tokio::test]
async fn presence_is_global_across_instances() {
    let redis = TestRedis::start();
    let (a, b, _db) = bridged_pair(
        &Backend::Sqlite,
        &redis,
        &[("TIDINGS_PRESENCE_GRACE", "500ms")],
    )
    .await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&a, &alice, "lobby").await;
    join(&a, &bob, "lobby").await;
    let mut ws = GqlSocket::user(&a, &alice).await;
    ws.subscribe(
        "p",
        "subscription { presence(roomId: \"lobby\") { status connections user { username } } }",
        json!({}),
    )
    .await;
    ws.data("p").await;
    let on_a = GqlSocket::user(&a, &bob).await;
    assert_eq!(ws.data("p").await["presence"]["connections"], 1);
    let on_b = GqlSocket::user(&b, &bob).await;
    assert_eq!(
        ws.data("p").await["presence"]["connections"],
        2,
        "counted on both instances"
    );
    // Bob leaves A but is still on B: online, one connection, no OFFLINE after the grace period.
    on_a.close().await;
    let p = ws.data("p").await;
    assert_eq!(
        (
            p["presence"]["status"].as_str(),
            p["presence"]["connections"].as_i64()
        ),
        (Some("ONLINE"), Some(1))
    );
    ws.expect_silence(Duration::from_millis(900)).await;
    let seen = b
        .ok(
            Some(&bob),
            "{ presenceOf(userIds: [\"bob\"]) { status connections } }",
            json!({}),
        )
        .await;
    assert_eq!(
        seen["presenceOf"][0],
        json!({ "status": "ONLINE", "connections": 1 })
    );
    assert_eq!(known_users(&a).await, Some(2.0), "alice and bob, on A");
    assert_eq!(known_users(&b).await, Some(2.0), "alice and bob, on B");
    on_b.close().await;
    let p = ws.data("p").await;
    assert_eq!(p["presence"]["status"], "OFFLINE");
    // Back at once: what was kept of his going offline must not forget him later.
    let again = GqlSocket::user(&b, &bob).await;
    assert_eq!(ws.data("p").await["presence"]["status"], "ONLINE");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(known_users(&a).await, Some(2.0), "bob still known on A");
    assert_eq!(
        presence_of(&a, &alice, "bob").await,
        json!({ "status": "ONLINE", "connections": 1 })
    );
    again.close().await;
    assert_eq!(ws.data("p").await["presence"]["status"], "OFFLINE");
    // Offline, bob is forgotten a few seconds later on both instances (it reads the same).
    for s in [&a, &b] {
        eventually(Duration::from_secs(15), "bob forgotten", || async {
            known_users(s).await == Some(1.0)
        })
        .await;
    }
    assert_eq!(
        presence_of(&a, &alice, "bob").await,
        json!({ "status": "OFFLINE", "connections": 0 })
    );
}

/// `user`'s status and connections as `server` answers `viewer`.
async fn presence_of(server: &TestServer, viewer: &str, user: &str) -> serde_json::Value {
    let seen = server
        .ok(
            Some(viewer),
            "query($u: ID!) { presenceOf(userIds: [$u]) { status connections } }",
            json!({ "u": user }),
        )
        .await;
    seen["presenceOf"][0].clone()
}

/// The users whose presence `server` keeps.
async fn known_users(server: &TestServer) -> Option<f64> {
    sample(&metrics(server).await, "tidings_presence_known_users")
}

#[tokio::test]
async fn a_killed_instance_stops_counting_within_the_ttl() {
    let redis = TestRedis::start();
    let (a, b, _db) =
        bridged_pair(&Backend::Sqlite, &redis, &[("TIDINGS_PRESENCE_TTL", "1s")]).await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&a, &alice, "lobby").await;
    join(&a, &bob, "lobby").await;
    let mut ws = GqlSocket::user(&a, &alice).await;
    ws.subscribe(
        "p",
        "subscription { presence(roomId: \"lobby\") { status user { username } } }",
        json!({}),
    )
    .await;
    ws.data("p").await;
    let _bob_on_b = GqlSocket::user(&b, &bob).await;
    assert_eq!(ws.data("p").await["presence"]["status"], "ONLINE");
    let killed_at = Instant::now();
    b.stop(); // SIGKILL: no goodbye
    let p = ws.data("p").await;
    assert_eq!(
        (
            p["presence"]["user"]["username"].as_str(),
            p["presence"]["status"].as_str()
        ),
        (Some("bob"), Some("OFFLINE"))
    );
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "offline within the 1 s TTL and a beat: {took:?}"
    );
}

#[tokio::test]
async fn while_redis_is_away_local_delivery_and_writes_go_on_and_nothing_is_lost() {
    for backend in backends() {
        let mut redis = TestRedis::start();
        let (a, b, _db) = bridged_pair(&backend, &redis, &[]).await;
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        join(&a, &alice, "lobby").await;
        join(&b, &bob, "lobby").await;
        let mut on_a = GqlSocket::user(&a, &alice).await;
        on_a.subscribe("m", MESSAGES, json!({ "r": "lobby" })).await;
        let mut on_b = GqlSocket::user(&b, &bob).await;
        on_b.subscribe("m", MESSAGES, json!({ "r": "lobby" })).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&b, &bob, "lobby", "before").await;
        assert_eq!(on_a.data("m").await["messageAdded"]["body"], "before");
        assert_eq!(on_b.data("m").await["messageAdded"]["body"], "before");

        redis.kill();
        eventually(
            Duration::from_secs(10),
            "health reports Redis down",
            || async { health(&b).await["redis"] == "down" },
        )
        .await;
        assert_eq!(
            health(&b).await["status"],
            "ok",
            "the instance still serves"
        );
        for body in ["during 1", "during 2", "during 3"] {
            send(&b, &bob, "lobby", body).await;
        }
        // B's own subscribers hear B's messages at once.
        for body in ["during 1", "during 2", "during 3"] {
            assert_eq!(
                on_b.data("m").await["messageAdded"]["body"],
                body,
                "{}",
                backend.name()
            );
        }
        on_a.expect_silence(Duration::from_millis(300)).await;

        redis.restart();
        eventually(Duration::from_secs(15), "the bridge reconnects", || async {
            health(&a).await["redis"] == "ok" && health(&b).await["redis"] == "ok"
        })
        .await;
        // A's subscriber catches up with what it missed, without anything new being sent.
        for body in ["during 1", "during 2", "during 3"] {
            assert_eq!(on_a.data("m").await["messageAdded"]["body"], body);
        }
        send(&b, &bob, "lobby", "after").await;
        assert_eq!(on_a.data("m").await["messageAdded"]["body"], "after");
        on_a.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_takes_its_users_offline_at_once() {
    let redis = TestRedis::start();
    let (a, mut b, _db) =
        bridged_pair(&Backend::Sqlite, &redis, &[("TIDINGS_PRESENCE_TTL", "60s")]).await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&a, &alice, "lobby").await;
    join(&a, &bob, "lobby").await;
    let mut ws = GqlSocket::user(&a, &alice).await;
    ws.subscribe(
        "p",
        "subscription { presence(roomId: \"lobby\") { status user { username } } }",
        json!({}),
    )
    .await;
    ws.data("p").await;
    let mut bob_on_b = GqlSocket::user(&b, &bob).await;
    assert_eq!(ws.data("p").await["presence"]["status"], "ONLINE");
    let started = Instant::now();
    let exited = b.terminate_and_wait(Duration::from_secs(10));
    assert!(exited, "the instance exits within 10 s");
    assert_eq!(
        bob_on_b.closed().await,
        Closed {
            code: 1001,
            reason: "server shutting down".into()
        }
    );
    let p = ws.data("p").await;
    assert_eq!(p["presence"]["status"], "OFFLINE");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "well before the 60 s TTL"
    );
    let mut conn = redis.connection().await;
    let instances: Vec<String> = redis::cmd("ZRANGE")
        .arg("tidings:presence:instances")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(instances.len(), 1, "only A is left: {instances:?}");
}
