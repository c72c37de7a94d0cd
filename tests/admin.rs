//! The operator console: `serverStats` (every instance's figures over Redis, their sum, an
//! instance that stops reporting), who may read it, the log of admin actions, the busiest
//! rooms, and the `/admin` page itself.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const STATS: &str = "subscription { serverStats { at instances { instance stale \
    connections { name value } signedInSockets redis database \
    sockets { userId transport queued } } \
    total { instance connections { name value } signedInSockets redis database } } }";

fn figure(list: &Value, name: &str) -> i64 {
    list.as_array()
        .and_then(|l| l.iter().find(|f| f["name"] == name))
        .and_then(|f| f["value"].as_i64())
        .unwrap_or(0)
}

/// Reads snapshots until one satisfies `check` (10 s at most); returns it.
async fn stats_until(ws: &mut GqlSocket, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        last = ws.data("s").await["serverStats"].clone();
        if check(&last) {
            return last;
        }
    }
    panic!("no snapshot where {what} within 10 s; the last: {last:#}");
}

#[tokio::test]
async fn server_stats_answer_unauthenticated_to_anonymous_and_forbidden_to_users() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);

    let mut anonymous = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    anonymous.subscribe("s", STATS, json!({})).await;
    assert_eq!(anonymous.error_code("s").await, "UNAUTHENTICATED");

    let mut user = GqlSocket::user(&server, &cli_token("alice", "user")).await;
    user.subscribe("s", STATS, json!({})).await;
    assert_eq!(user.error_code("s").await, "FORBIDDEN");

    // The legacy subprotocol gets the same answer.
    let mut legacy = GqlSocket::connect(
        &server,
        LEGACY_WS,
        json!({ "authToken": cli_token("bob", "user") }),
    )
    .await;
    legacy.subscribe("s", STATS, json!({})).await;
    assert_eq!(legacy.error_code("s").await, "FORBIDDEN");

    for (token, code) in [
        (None, "UNAUTHENTICATED"),
        (Some(cli_token("alice", "user")), "FORBIDDEN"),
    ] {
        for query in [
            "{ adminActions { id } }",
            "{ roomLoads { byMessages { roomId } } }",
        ] {
            assert_eq!(
                server.err_code(token.as_deref(), query, json!({})).await,
                code,
                "{query}"
            );
        }
    }
}

#[tokio::test]
async fn an_admin_gets_this_instance_once_a_second_without_redis() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let alice = cli_token("alice", "user");
    let _a1 = GqlSocket::user(&server, &alice).await;
    let _a2 = GqlSocket::user(&server, &alice).await;
    let mut admin = GqlSocket::user(&server, &cli_token("root", "admin")).await;
    admin.subscribe("s", STATS, json!({})).await;
    let started = tokio::time::Instant::now();
    let first = admin.data("s").await["serverStats"].clone();
    let second = admin.data("s").await["serverStats"].clone();
    let third = admin.data("s").await["serverStats"].clone();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "three snapshots came within {took:?}: not one a second"
    );
    for s in [&first, &second, &third] {
        let instances = s["instances"].as_array().expect("instances");
        assert_eq!(instances.len(), 1, "{s:#}");
        assert_eq!(instances[0]["instance"], "local");
        assert_eq!(instances[0]["redis"], "disabled");
        assert_eq!(instances[0]["database"], "ok");
    }
    let s = stats_until(&mut admin, "three sockets are counted", |s| {
        figure(&s["total"]["connections"], "graphql_ws") == 3
    })
    .await;
    assert_eq!(s["total"]["signedInSockets"], 3);
    let sockets = s["instances"][0]["sockets"].as_array().expect("sockets");
    let alices = sockets.iter().filter(|s| s["userId"] == "alice").count();
    assert_eq!(alices, 2, "{sockets:#?}");
    assert!(sockets.iter().all(|s| s["transport"] == "graphql_ws"));
}

/// The figures beyond the connections: subscriptions by kind, shared executions, traffic,
/// latency, refusals, and each socket's queue.
const FIGURES: &str = "subscription { serverStats { instances { instance \
    subscriptions { name value } cohorts cohortMembers eventsPublished eventsDelivered \
    publishedPerSecond deliveredPerSecond latencyP50Ms latencyP99Ms slowConsumers \
    refusals { name value } sockets { userId transport queued } } \
    total { subscriptions { name value } cohorts cohortMembers publishedPerSecond \
    deliveredPerSecond latencyP50Ms latencyP99Ms refusals { name value } } } }";

/// A number above zero.
fn positive(v: &Value) -> bool {
    v.as_f64().is_some_and(|n| n > 0.0)
}

#[tokio::test]
async fn server_stats_count_subscriptions_cohorts_traffic_latency_and_refusals() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let server = TestServer::start(&db, &[("TIDINGS_MAX_ANONYMOUS_PER_ADDRESS", "1")]);
        let channel = "subscription { events(channels: [\"public:figures\"]) { data } }";
        // Two equal subscriptions of alice's: one shared execution, two members.
        let mut alice = GqlSocket::user(&server, &cli_token("alice", "user")).await;
        alice.subscribe("e1", channel, json!({})).await;
        alice.subscribe("e2", channel, json!({})).await;
        // Delivery latency is measured on /ws sockets (README, metrics): bob follows the channel
        // there.
        let mut bob = LegacyClient::user(&server, &cli_token("bob", "user")).await;
        bob.send(json!({ "type": "subscribe", "channel": "public:figures" }))
            .await;
        assert_eq!(
            bob.next_of("subscribed").await["data"]["channel"],
            "public:figures"
        );
        let mut admin = GqlSocket::user(&server, &cli_token("root", "admin")).await;
        admin.subscribe("s", FIGURES, json!({})).await;
        // The address's one connection not signed in, then one refused over the same budget.
        let stream = || {
            http()
                .post(server.url("/graphql"))
                .header("accept", "text/event-stream")
                .json(&json!({ "query": channel }))
                .send()
        };
        let anonymous = stream().await.expect("POST /graphql");
        assert_eq!(anonymous.status(), 200);
        let refused = stream().await.expect("POST /graphql");
        assert_eq!(refused.status(), 429);

        // Events published all along, so that every one-second reading sees some.
        let publisher_token = cli_token("backend", "admin");
        let url = server.url("/api/publish");
        let publisher = tokio::spawn(async move {
            for n in 0.. {
                let event = json!({ "channel": "public:figures", "type": "tick", "data": n });
                let published = http()
                    .post(&url)
                    .bearer_auth(&publisher_token)
                    .json(&event)
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(published.status(), 200);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let s = stats_until(
            &mut admin,
            &format!(
                "traffic, latency and the refusal are counted on {}",
                backend.name()
            ),
            |s| {
                let i = &s["instances"][0];
                figure(&i["subscriptions"], "channel") > 0
                    && positive(&i["cohorts"])
                    && i["cohortMembers"].as_i64() >= Some(2)
                    && positive(&i["publishedPerSecond"])
                    && positive(&i["deliveredPerSecond"])
                    && i["latencyP50Ms"].is_number()
                    && i["latencyP99Ms"].is_number()
                    && figure(&i["refusals"], "connections:address_full") >= 1
            },
        )
        .await;
        publisher.abort();
        let here = &s["instances"][0];
        assert!(positive(&here["eventsPublished"]), "{here:#}");
        assert!(positive(&here["eventsDelivered"]), "{here:#}");
        let p50 = here["latencyP50Ms"].as_f64().expect("p50");
        let p99 = here["latencyP99Ms"].as_f64().expect("p99");
        assert!(0.0 <= p50 && p50 <= p99, "p50 {p50}, p99 {p99}");
        assert_eq!(here["slowConsumers"], 0);
        assert_eq!(
            figure(&here["refusals"], "connections:address_full"),
            1,
            "{here:#}"
        );
        // The sum of one instance is that instance.
        let total = &s["total"];
        for field in [
            "cohorts",
            "cohortMembers",
            "publishedPerSecond",
            "deliveredPerSecond",
        ] {
            assert_eq!(total[field], here[field], "{field}");
        }
        assert_eq!(total["latencyP99Ms"], here["latencyP99Ms"]);
        assert_eq!(
            figure(&total["refusals"], "connections:address_full"),
            1,
            "{total:#}"
        );
        // The shared executions are what /metrics counts.
        let text = metrics(&server).await;
        assert_eq!(
            sample(&text, "tidings_cohort_members"),
            here["cohortMembers"].as_f64(),
            "{text}"
        );
        // Every signed-in socket is listed with its queue's depth, a number.
        let sockets = here["sockets"].as_array().expect("sockets");
        let alices: Vec<&Value> = sockets.iter().filter(|s| s["userId"] == "alice").collect();
        assert_eq!(alices.len(), 1, "{sockets:#?}");
        assert_eq!(alices[0]["transport"], "graphql_ws");
        assert!(alices[0]["queued"].is_u64(), "{sockets:#?}");
        assert!(sockets.iter().all(|s| s["queued"].is_u64()), "{sockets:#?}");
        drop(anonymous);
    }
}

#[tokio::test]
async fn every_instance_reports_over_redis_and_one_that_stops_is_marked_and_left_out() {
    let redis = TestRedis::start();
    let (a, b, _db) = bridged_pair(&Backend::Sqlite, &redis, &[]).await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    let _alice_a1 = GqlSocket::user(&a, &alice).await;
    let _alice_a2 = GqlSocket::user(&a, &alice).await;
    let _bob_b = GqlSocket::user(&b, &bob).await;
    let _bob_legacy = LegacyClient::user(&b, &bob).await;
    let mut admin = GqlSocket::user(&a, &cli_token("root", "admin")).await;
    admin.subscribe("s", STATS, json!({})).await;

    // A: alice twice and the admin; B: bob over graphql-ws and over /ws.
    let counts = |s: &Value| -> Vec<(i64, i64)> {
        s["instances"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|i| {
                        (
                            figure(&i["connections"], "graphql_ws"),
                            figure(&i["connections"], "legacy_ws"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let s = stats_until(&mut admin, "both instances report their sockets", |s| {
        let mut c = counts(s);
        c.sort();
        c == vec![(1, 1), (3, 0)]
    })
    .await;
    assert_eq!(figure(&s["total"]["connections"], "graphql_ws"), 4);
    assert_eq!(figure(&s["total"]["connections"], "legacy_ws"), 1);
    assert_eq!(s["total"]["signedInSockets"], 5);
    assert_eq!(s["total"]["redis"], "up");
    assert_eq!(s["total"]["database"], "ok");
    let ids: Vec<&str> = s["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["instance"].as_str())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);

    // B stops: it is marked as no longer reporting, and the total is A's alone.
    let b_id = s["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| figure(&i["connections"], "legacy_ws") == 1)
        .and_then(|i| i["instance"].as_str())
        .expect("B's id")
        .to_owned();
    b.stop();
    let s = stats_until(&mut admin, "B is marked stale", |s| {
        s["instances"].as_array().is_some_and(|l| {
            l.iter()
                .any(|i| i["instance"] == b_id && i["stale"] == true)
        })
    })
    .await;
    assert_eq!(figure(&s["total"]["connections"], "graphql_ws"), 3);
    assert_eq!(figure(&s["total"]["connections"], "legacy_ws"), 0);
}

#[tokio::test]
async fn the_admin_actions_are_logged_and_a_disconnect_closes_the_users_sockets_everywhere() {
    for backend in backends() {
        let redis = TestRedis::start();
        let (a, b, _db) = bridged_pair(&backend, &redis, &[]).await;
        let admin = cli_token("root", "admin");
        let alice = cli_token("alice", "user");
        join(&a, &alice, "lobby").await;
        let mut on_a = GqlSocket::user(&a, &alice).await;
        let mut on_b = GqlSocket::user(&b, &alice).await;

        let sent = a
            .ok(
                Some(&admin),
                "mutation { sendNotification(input: { roomId: \"lobby\", kind: \"admin\", title: \"Maintenance\" }) }",
                json!({}),
            )
            .await;
        assert_eq!(sent["sendNotification"], 1, "{}", backend.name());
        a.ok(
            Some(&admin),
            "mutation { publish(channel: \"public:news\", type: \"announcement\", data: { text: \"hi\" }) { id } }",
            json!({}),
        )
        .await;
        let done = a
            .ok(
                Some(&admin),
                "mutation { disconnectUser(userId: \"alice\") }",
                json!({}),
            )
            .await;
        assert_eq!(done["disconnectUser"], true);
        for ws in [&mut on_a, &mut on_b] {
            assert_eq!(
                ws.closed().await,
                Closed {
                    code: 4403,
                    reason: "disconnected by an administrator".into()
                },
                "{}",
                backend.name()
            );
        }
        // A refused action is not logged.
        a.err_code(
            Some(&admin),
            "mutation { disconnectUser(userId: \"nobody\") }",
            json!({}),
        )
        .await;

        // Either instance reads the one log.
        let log = b
            .ok(
                Some(&admin),
                "{ adminActions { id adminId adminName action target detail at } }",
                json!({}),
            )
            .await["adminActions"]
            .clone();
        let rows: Vec<(&str, &str)> = log
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["action"].as_str().unwrap_or(""),
                    r["target"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("disconnect", "alice"),
                ("publish", "public:news"),
                ("notify", "room:lobby"),
            ],
            "{}",
            backend.name()
        );
        assert_eq!(log[0]["adminName"], "root");
        assert_eq!(log[0]["adminId"], "root");
        let publish: Value =
            serde_json::from_str(log[1]["detail"].as_str().expect("detail")).expect("JSON");
        assert_eq!(
            publish,
            json!({ "type": "announcement", "data": { "text": "hi" } })
        );
        let notify: Value =
            serde_json::from_str(log[2]["detail"].as_str().expect("detail")).expect("JSON");
        assert_eq!(notify["recipients"], 1);
        assert_eq!(notify["title"], "Maintenance");

        // Pages: newest first, `before` an id.
        let older = b
            .ok(
                Some(&admin),
                "query($b: ID) { adminActions(last: 1, before: $b) { action } }",
                json!({ "b": log[0]["id"] }),
            )
            .await;
        assert_eq!(older["adminActions"], json!([{ "action": "publish" }]));
        let metrics = metrics(&a).await;
        assert_eq!(
            sample(
                &metrics,
                "tidings_admin_actions_total{action=\"disconnect\"}"
            ),
            Some(1.0)
        );
    }
}

#[tokio::test]
async fn the_log_refuses_pages_out_of_bounds() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let admin = cli_token("root", "admin");
    for query in [
        "{ adminActions(last: 0) { id } }",
        "{ adminActions(last: 201) { id } }",
        "{ adminActions(before: \"x\") { id } }",
        "{ roomLoads(first: 0) { byMessages { roomId } } }",
        "{ roomLoads(first: 51) { byMessages { roomId } } }",
    ] {
        assert_eq!(
            server.err_code(Some(&admin), query, json!({})).await,
            "BAD_USER_INPUT",
            "{query}"
        );
    }
    // `last: null` is the default page.
    let ok = server
        .ok(
            Some(&admin),
            "{ adminActions(last: null) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(ok["adminActions"], json!([]));
}

#[tokio::test]
async fn room_loads_rank_rooms_by_members_online_and_by_messages_in_the_last_minute() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let server = TestServer::start(&db, &[("TIDINGS_RATE_LIMITS", "off")]);
        let admin = cli_token("root", "admin");
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        let carol = cli_token("carol", "user");
        for (token, room) in [
            (&alice, "busy"),
            (&bob, "busy"),
            (&alice, "chatty"),
            (&carol, "quiet"),
        ] {
            join(&server, token, room).await;
        }
        // Alice and bob are online; carol is not.
        let _alice = GqlSocket::user(&server, &alice).await;
        let _bob = GqlSocket::user(&server, &bob).await;
        for i in 0..3 {
            send(&server, &alice, "chatty", &format!("hello {i}")).await;
        }
        send(&server, &bob, "busy", "one").await;
        let query =
            "{ roomLoads(first: 2) { byMembersOnline { roomId membersOnline messagesLastMinute } \
                     byMessages { roomId title membersOnline messagesLastMinute } } }";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let loads = loop {
            let loads = server.ok(Some(&admin), query, json!({})).await["roomLoads"].clone();
            if loads["byMembersOnline"][0]["membersOnline"] == 2
                || tokio::time::Instant::now() > deadline
            {
                break loads;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Joins post a SYSTEM message each: busy has 2 joins and 1 message, chatty 1 join and 3.
        assert_eq!(
            loads["byMembersOnline"],
            json!([
                { "roomId": "busy", "membersOnline": 2, "messagesLastMinute": 3 },
                { "roomId": "chatty", "membersOnline": 1, "messagesLastMinute": 4 },
            ]),
            "{}",
            backend.name()
        );
        assert_eq!(loads["byMessages"][0]["roomId"], "chatty");
        assert_eq!(loads["byMessages"][0]["title"], "chatty");
        assert_eq!(loads["byMessages"][1]["roomId"], "busy");
    }
}

#[tokio::test]
async fn the_console_page_is_served_from_the_binary_with_the_same_policy_as_the_others() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let response = http()
        .get(server.url("/admin"))
        .header("Accept", "text/html")
        .send()
        .await
        .expect("get /admin");
    assert_eq!(response.status(), 200);
    let csp = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = response.text().await.expect("body");
    assert!(html.contains("Operator console"), "{html}");
    for asset in html.split('"').filter(|s| s.starts_with("/assets/")) {
        let status = http()
            .get(server.url(asset))
            .send()
            .await
            .expect("asset")
            .status();
        assert_eq!(status, 200, "{asset}");
    }
}

#[tokio::test]
async fn server_stats_end_with_forbidden_when_the_connection_renews_without_the_admin_role() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let mut admin = GqlSocket::user(&server, &cli_token("root", "admin")).await;
    admin.subscribe("s", STATS, json!({})).await;
    admin.data("s").await;
    admin
        .subscribe(
            "r",
            "mutation($t: String!) { authenticate(token: $t) { expiresAt } }",
            json!({ "t": cli_token("root", "user") }),
        )
        .await;
    admin.data("r").await;
    // Snapshots already on their way may come first; then the stream ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "serverStats went on after the admin role was dropped"
        );
        let f = admin.frame_for("s").await;
        if f["type"] == "next" && f["payload"].get("errors").is_none() {
            continue;
        }
        let errors = if f["type"] == "error" {
            f["payload"].clone()
        } else {
            f["payload"]["errors"].clone()
        };
        assert_eq!(errors[0]["extensions"]["code"], "FORBIDDEN", "{f}");
        break;
    }
}
