//! Budgets of GraphQL over HTTP: what one client can make the server hold or do with one
//! request is bounded. A batch holds at most `TIDINGS_MAX_BATCH` operations, list fields page at
//! most 100 items and count their page in the query's cost, a request has a time budget, and
//! oversized or overlong input gets the documented answer. Each refusal is counted in
//! `/metrics` (`tidings_graphql_refused_total{reason}`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use serde_json::{json, Value};

/// POSTs a JSON body to `/graphql`; returns the status and the body as JSON (a body that is
/// not JSON fails the test).
async fn post(server: &TestServer, token: Option<&str>, body: &Value) -> (u16, Value) {
    post_with(server, token, body, Duration::from_secs(30)).await
}

async fn post_with(
    server: &TestServer,
    token: Option<&str>,
    body: &Value,
    timeout: Duration,
) -> (u16, Value) {
    let mut req = http()
        .post(server.url("/graphql"))
        .timeout(timeout)
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("POST /graphql answered in time");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a JSON body was expected ({e}), got {status}: {text}"));
    (status, json)
}

/// A batch of `n` copies of `query`.
fn batch(query: &str, n: usize) -> Value {
    Value::Array((0..n).map(|_| json!({ "query": query })).collect())
}

/// One field of `/proc/<pid>/status`, in KiB (`VmRSS`: resident now; `VmHWM`: the peak).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The value of one sample of `/metrics`, e.g. `tidings_graphql_refused_total{reason="batch"}`.
async fn metric(server: &TestServer, sample: &str) -> u64 {
    let text = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{text}"))
}

/// Has `token`'s user create `n` public rooms `r000`, `r001`, … (each with its creator as
/// member).
async fn create_rooms(server: &TestServer, token: &str, n: usize) {
    for i in 0..n {
        server
            .ok(
                Some(token),
                "mutation($r: ID!) { createRoom(id: $r) { id } }",
                json!({ "r": format!("r{i:03}") }),
            )
            .await;
    }
}

fn code(error: &Value) -> &str {
    error["extensions"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_batch_over_the_cap_is_refused_with_400_and_a_graphql_error() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let (status, body) = post(&server, None, &batch("{ __typename }", 10)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(10), "{body}");
    let (status, body) = post(&server, None, &batch("{ __typename }", 11)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body["errors"][0]), "TOO_COMPLEX", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 10")),
        "{body}"
    );
    assert_eq!(
        metric(&server, "tidings_graphql_refused_total{reason=\"batch\"}").await,
        1
    );

    // The cap is a setting.
    let db = TestDb::new(&Backend::Sqlite).await;
    let small = TestServer::start(&db, &[("TIDINGS_MAX_BATCH", "2")]);
    let (status, _) = post(&small, None, &batch("{ __typename }", 2)).await;
    assert_eq!(status, 200);
    let (status, body) = post(&small, None, &batch("{ __typename }", 3)).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn the_heavy_batch_is_refused_and_the_heaviest_allowed_request_stays_within_its_memory_budget(
) {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let mallory = cli_token("mallory", "user");
    create_rooms(&server, &mallory, 150).await;
    let pid = server.pid();
    let rss_before = proc_kib(pid, "VmRSS");

    // The attack of the report: a batch of 20 × 29 aliased `members` of every room.
    let aliases: String = (1..=29)
        .map(|i| format!("a{i}: members {{ id }} "))
        .collect();
    let heavy = format!("{{ rooms {{ {aliases}}} }}");
    let (status, body) = post_with(
        &server,
        Some(&mallory),
        &batch(&heavy, 20),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body["errors"][0]), "TOO_COMPLEX");
    // Within the batch cap, each such operation is over the complexity limit.
    let (status, body) = post(&server, Some(&mallory), &batch(&heavy, 10)).await;
    assert_eq!(status, 200, "{body}");
    for item in body.as_array().expect("a batch answer") {
        assert_eq!(code(&item["errors"][0]), "TOO_COMPLEX", "{item}");
        assert!(item["data"].is_null(), "{item}");
    }

    // The heaviest request the budgets allow: a full batch, each operation at the
    // complexity limit (100 rooms × 50 members).
    let heaviest = "{ rooms(first: 100) { members(first: 50) { id } } }";
    let (status, body) = post(&server, Some(&mallory), &batch(heaviest, 10)).await;
    assert_eq!(status, 200, "{body}");
    for item in body.as_array().expect("a batch answer") {
        assert!(item.get("errors").is_none(), "{item}");
        assert_eq!(item["data"]["rooms"].as_array().map(Vec::len), Some(100));
    }

    let peak = proc_kib(pid, "VmHWM");
    let growth_mib = peak.saturating_sub(rss_before) / 1024;
    eprintln!("resident before: {rss_before} KiB, peak after: {peak} KiB");
    assert!(
        growth_mib <= 64,
        "the server grew by {growth_mib} MiB (from {rss_before} KiB to a peak of {peak} KiB)"
    );
    // And it still serves.
    server.ok(Some(&mallory), "{ me { id } }", json!({})).await;
}

#[tokio::test]
async fn rooms_and_members_come_in_pages_of_at_most_100() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = cli_token("alice", "user");
        create_rooms(&server, &alice, 3).await;
        for name in ["bob", "carol"] {
            join(&server, &cli_token(name, "user"), "r000").await;
        }
        let ids = |data: &Value, field: &str| -> Vec<String> {
            data[field]
                .as_array()
                .unwrap_or_else(|| panic!("{field} in {data}"))
                .iter()
                .map(|r| r["id"].as_str().unwrap_or("").to_owned())
                .collect()
        };
        let page = server
            .ok(Some(&alice), "{ rooms(first: 2) { id } }", json!({}))
            .await;
        assert_eq!(ids(&page, "rooms"), ["r000", "r001"], "{}", backend.name());
        let page = server
            .ok(
                Some(&alice),
                "query($a: ID) { rooms(first: 2, after: $a) { id } }",
                json!({ "a": "r001" }),
            )
            .await;
        assert_eq!(ids(&page, "rooms"), ["r002"]);
        // Both arguments are optional and nullable.
        let all = server
            .ok(
                Some(&alice),
                "{ rooms(first: null, after: null) { id } }",
                json!({}),
            )
            .await;
        assert_eq!(ids(&all, "rooms").len(), 3);

        let room = server
            .ok(
                Some(&alice),
                "{ room(id: \"r000\") { first: members(first: 2) { id } rest: members(after: \"bob\") { id } } }",
                json!({}),
            )
            .await;
        assert_eq!(ids(&room["room"], "first"), ["alice", "bob"]);
        assert_eq!(ids(&room["room"], "rest"), ["carol"]);

        for query in [
            "{ rooms(first: 101) { id } }",
            "{ rooms(first: -1) { id } }",
            "{ room(id: \"r000\") { members(first: 101) { id } } }",
            "{ notifications(last: 201) { id } }",
        ] {
            assert_eq!(
                server.err_code(Some(&alice), query, json!({})).await,
                "BAD_USER_INPUT",
                "{query}"
            );
        }
        assert!(
            metric(&server, "tidings_graphql_refused_total{reason=\"page\"}").await >= 3,
            "page refusals are counted"
        );
    }
}

#[tokio::test]
async fn list_fields_count_their_page_size_in_the_query_cost() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    // 50 rooms × 2 × 50 members: at the limit.
    server
        .ok(
            Some(&alice),
            "{ rooms { a: members { id } b: members { id } } }",
            json!({}),
        )
        .await;
    for query in [
        // 50 rooms × 3 × 50 members.
        "{ rooms { a: members { id } b: members { id } c: members { id } } }",
        // 100 rooms × 100 members.
        "{ rooms(first: 100) { members(first: 100) { id } } }",
        // The page size from a variable counts the same.
        "query($n: Int) { rooms(first: $n) { members(first: $n) { id } } }",
    ] {
        let body = server.gql(Some(&alice), query, json!({ "n": 100 })).await;
        assert_eq!(code(&body["errors"][0]), "TOO_COMPLEX", "{query}: {body}");
    }
    assert!(metric(&server, "tidings_graphql_refused_total{reason=\"cost\"}").await >= 3);
}

#[tokio::test]
async fn depth_and_fragment_cycle_errors_are_too_complex() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    // Past the depth limit, and past the executor's recursion limit.
    for levels in [20, 40, 200] {
        let mut nested = String::from("name");
        for _ in 0..levels {
            nested = format!("ofType {{ {nested} }}");
        }
        let query = format!("{{ __type(name: \"Room\") {{ {nested} }} }}");
        let code = server.err_code(Some(&alice), &query, json!({})).await;
        assert_eq!(code, "TOO_COMPLEX", "{levels} levels");
    }
    let cycle = "query { me { ...A } } \
                 fragment A on User { id ...B } \
                 fragment B on User { username ...A }";
    assert_eq!(
        server.err_code(Some(&alice), cycle, json!({})).await,
        "TOO_COMPLEX"
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_in_the_error_shape_of_their_endpoint() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_MAX_BODY_BYTES", "65536")]);
    let big = "a".repeat(256 * 1024);

    let resp = http()
        .post(server.url("/graphql"))
        .json(&json!({ "query": "{ __typename }", "variables": { "x": big } }))
        .send()
        .await
        .expect("POST /graphql");
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("a GraphQL JSON error");
    assert_eq!(code(&body["errors"][0]), "BAD_USER_INPUT", "{body}");

    let admin = cli_token("backend", "admin");
    let resp = http()
        .post(server.url("/api/publish"))
        .bearer_auth(&admin)
        .json(&json!({ "channel": "public:game", "type": "big", "data": big }))
        .send()
        .await
        .expect("POST /api/publish");
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("a JSON error");
    assert_eq!(body["code"], "BAD_USER_INPUT", "{body}");
    assert!(body["error"].is_string(), "{body}");

    assert_eq!(
        metric(&server, "tidings_graphql_refused_total{reason=\"body\"}").await,
        2
    );
}

#[tokio::test]
async fn marking_40000_notifications_read_at_once_is_bad_user_input() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = cli_token("alice", "user");
        let mark = "mutation($ids: [ID!]) { markNotificationsRead(ids: $ids) }";
        let many: Vec<String> = (1..=40_000).map(|i| i.to_string()).collect();
        let body = server.gql(Some(&alice), mark, json!({ "ids": many })).await;
        assert_eq!(
            code(&body["errors"][0]),
            "BAD_USER_INPUT",
            "{}: {}",
            backend.name(),
            body["errors"]
        );
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("1000")),
            "{}",
            body["errors"]
        );
        // The most allowed is fine.
        let most: Vec<String> = (1..=1000).map(|i| i.to_string()).collect();
        let data = server.ok(Some(&alice), mark, json!({ "ids": most })).await;
        assert_eq!(data["markNotificationsRead"], 0);
    }
}

#[tokio::test]
async fn a_request_over_its_time_budget_gets_a_clear_error_instead_of_hanging() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_GRAPHQL_TIMEOUT", "500ms")]);
    let alice = cli_token("alice", "user");
    // Alice exists before the database is locked (a token's first use stores its user).
    server.ok(Some(&alice), "{ me { id } }", json!({})).await;

    // Another process holds SQLite's write lock: the server's writes wait for it (up to its
    // busy timeout of 10 s), far past the request's budget.
    let conn = Database::connect(db.url.as_str()).await.expect("open db");
    let txn = conn.begin().await.expect("begin");
    txn.execute_unprepared("UPDATE users SET points = points WHERE id = 'nobody'")
        .await
        .expect("take the write lock");

    let started = Instant::now();
    let (status, body) = post_with(
        &server,
        Some(&alice),
        &json!({ "query": "mutation { joinRoom(roomId: \"slow\") { id } }" }),
        Duration::from_secs(8),
    )
    .await;
    let took = started.elapsed();
    txn.rollback().await.expect("release the lock");

    assert_eq!(status, 200, "{body}");
    assert_eq!(code(&body["errors"][0]), "TOO_COMPLEX", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("request took too long")),
        "{body}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(
        metric(&server, "tidings_graphql_refused_total{reason=\"timeout\"}").await,
        1
    );
    // Once the lock is gone, the server serves writes again.
    join(&server, &alice, "fast").await;
}
