//! Subscriptions over plain HTTP against the real server: graphql-sse in both of its modes and
//! Apollo's multipart subscriptions, read byte by byte with a plain HTTP client, with the same
//! rules, resume, shared execution, budgets and metrics as the WebSocket transports.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MESSAGE_ADDED: &str =
    "subscription($r: ID!, $a: ID) { messageAdded(roomId: $r, after: $a) { id body } }";
const WAIT: Duration = STREAM_WAIT;

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// `POST /graphql` with the `Accept` Apollo's `HttpLink` sends for a subscription.
async fn multipart_post(server: &TestServer, token: &str, body: Value) -> reqwest::Response {
    http()
        .post(server.url("/graphql"))
        .bearer_auth(token)
        .header("accept", MULTIPART_ACCEPT)
        .json(&body)
        .send()
        .await
        .expect("POST /graphql")
}

/// `POST /graphql` asking for an event stream.
async fn sse_post(server: &TestServer, token: Option<&str>, query: &str, vars: Value) -> Stream {
    let mut request = http()
        .post(server.url("/graphql"))
        .header("accept", "text/event-stream")
        .json(&json!({ "query": query, "variables": vars }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /graphql");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert_eq!(
        header(&response, "content-type"),
        "text/event-stream; charset=utf-8"
    );
    Stream::new(response)
}

/// Alice makes the private room `secret`; the token of mallory, who is not in it.
async fn with_private_room(server: &TestServer) -> String {
    let alice = cli_token("alice", "user");
    server
        .ok(
            Some(&alice),
            "mutation { createRoom(id: \"secret\", isPrivate: true) { id } }",
            json!({}),
        )
        .await;
    cli_token("mallory", "user")
}

async fn room_with(server: &TestServer, room: &str, users: &[&str]) {
    for token in users {
        join(server, token, room).await;
    }
}

#[tokio::test]
async fn an_event_stream_delivers_live_messages_and_resumes_after_a_position() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        room_with(&server, "lobby", &[&alice, &bob]).await;
        let after = last_message_id(&server, &bob, "lobby").await;

        let mut stream = sse_post(
            &server,
            Some(&bob),
            MESSAGE_ADDED,
            json!({ "r": "lobby", "a": after }),
        )
        .await;
        let first = send(&server, &alice, "lobby", "over SSE").await;
        let data = stream.next("the live message").await;
        assert_eq!(
            data["data"]["messageAdded"]["id"],
            first["id"],
            "{}",
            backend.name()
        );
        assert_eq!(data["data"]["messageAdded"]["body"], "over SSE");
        drop(stream);

        // Missed while disconnected, then resumed over GET with `after`.
        let missed = send(&server, &alice, "lobby", "missed").await;
        let response = http()
            .get(server.url("/graphql/stream"))
            .bearer_auth(&bob)
            .header("accept", "text/event-stream")
            .query(&[
                ("query", MESSAGE_ADDED),
                (
                    "variables",
                    &json!({ "r": "lobby", "a": first["id"] }).to_string(),
                ),
            ])
            .send()
            .await
            .expect("GET /graphql/stream");
        assert_eq!(response.status(), 200);
        let mut resumed = Stream::new(response);
        let data = resumed.next("the missed message").await;
        assert_eq!(data["data"]["messageAdded"]["id"], missed["id"]);
        let live = send(&server, &alice, "lobby", "live again").await;
        let data = resumed.next("the next live message").await;
        assert_eq!(
            data["data"]["messageAdded"]["id"], live["id"],
            "no duplicate, no gap"
        );

        // A query streams its one result and completes; the stream then ends.
        let mut once = sse_post(&server, Some(&bob), "{ me { username } }", json!({})).await;
        assert_eq!(
            once.next("the query").await["data"]["me"]["username"],
            "bob"
        );
        assert_eq!(
            once.event("complete").await,
            Some(("complete".into(), Value::Null))
        );
        assert_eq!(once.event("the end").await, None);
    }
}

#[tokio::test]
async fn a_private_room_over_an_event_stream_is_forbidden_as_over_a_socket() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mallory = with_private_room(&server).await;
    let mut stream = sse_post(
        &server,
        Some(&mallory),
        MESSAGE_ADDED,
        json!({ "r": "secret" }),
    )
    .await;
    let data = stream.next("the refusal").await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{data}"
    );
    assert_eq!(
        stream.event("complete").await.map(|e| e.0),
        Some("complete".into())
    );
}

/// Writes `request` on `socket` and reads until the server closes the connection (or `WAIT`
/// passes: then the bytes so far, and `false`).
async fn exchange(socket: &mut tokio::net::TcpStream, request: &str) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
        }
    }
}

fn post(path: &str, accept: &str, token: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: tidings\r\naccept: {accept}\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A stream's connection is written outside hyper's connection (which would keep two 8 KiB
/// buffers for its whole life): the response is chunked with `connection: close`, and the
/// connection closes when the stream ends, even when it carried a request before.
#[tokio::test]
async fn a_stream_has_its_connection_to_itself_and_closes_it_when_it_ends() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let mallory = with_private_room(&server).await;
    let mut socket = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    // A query first: hyper answers it and keeps the connection open for the next request.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let query = post(
            "/graphql",
            "application/json",
            &mallory,
            &json!({ "query": "{ __typename }" }),
        );
        socket.write_all(query.as_bytes()).await.expect("write");
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while !seen.contains("\"Query\"") {
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .expect("the query's answer in time")
                .expect("read");
            assert!(
                n > 0,
                "the server closed the connection after a query: {seen}"
            );
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    }
    // Then a subscription over SSE on the same connection; it is refused, so it completes.
    let (seen, closed) = exchange(
        &mut socket,
        &post(
            "/graphql",
            "text/event-stream",
            &mallory,
            &json!({ "query": MESSAGE_ADDED, "variables": { "r": "secret" } }),
        ),
    )
    .await;
    assert!(
        closed,
        "the stream's connection stayed open after it ended: {seen}"
    );
    let lower = seen.to_ascii_lowercase();
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
    assert!(
        lower.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{seen}"
    );
    assert!(lower.contains("\r\nconnection: close\r\n"), "{seen}");
    assert!(
        lower.contains("\r\ncontent-type: text/event-stream"),
        "{seen}"
    );
    assert!(seen.contains("FORBIDDEN"), "{seen}");
    assert!(seen.contains("event: complete"), "{seen}");
    assert!(seen.ends_with("\r\n0\r\n\r\n"), "the last chunk: {seen:?}");
}

#[tokio::test]
async fn a_multipart_subscription_streams_payload_parts_and_heartbeats() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    join(&server, &alice, "lobby").await;
    let after = last_message_id(&server, &alice, "lobby").await;
    let response = multipart_post(
        &server,
        &alice,
        json!({ "query": MESSAGE_ADDED, "variables": { "r": "lobby", "a": after } }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let content_type = header(&response, "content-type");
    assert!(
        content_type.starts_with("multipart/mixed")
            && content_type.contains("boundary=\"graphql\""),
        "{content_type}"
    );
    let mut stream = Stream::new(response);
    let sent = send(&server, &alice, "lobby", "in a part").await;
    let part = stream.payload("the message's part").await;
    assert_eq!(
        part["payload"]["data"]["messageAdded"]["id"], sent["id"],
        "{part}"
    );
    // Quiet for a while: the heartbeat `{}` keeps the stream alive every 5 s.
    let started = tokio::time::Instant::now();
    assert_eq!(stream.part("a heartbeat").await, Some(json!({})));
    assert!(started.elapsed() < Duration::from_secs(7));

    // A query with the same Accept is answered as plain JSON, as Apollo expects.
    let response = multipart_post(&server, &alice, json!({ "query": "{ me { id } }" })).await;
    assert!(header(&response, "content-type").starts_with("application/json"));
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["data"]["me"]["id"], "alice");

    // A subscription that does not validate is answered as JSON too, before any stream.
    let response = multipart_post(
        &server,
        &alice,
        json!({ "query": "subscription { messageAdded(roomId: \"lobby\") { nope } }" }),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
}

#[tokio::test]
async fn the_single_connection_mode_reserves_a_stream_and_runs_operations_on_it() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    room_with(&server, "lobby", &[&alice, &bob]).await;
    let url = server.url("/graphql/stream");

    let reserved = http()
        .put(&url)
        .bearer_auth(&bob)
        .send()
        .await
        .expect("PUT");
    assert_eq!(reserved.status(), 201);
    let token = reserved.text().await.expect("token");
    assert!(token.len() >= 16, "{token}");

    // An operation posted before the stream opens waits for it.
    let after = last_message_id(&server, &bob, "lobby").await;
    let post = |id: &str, query: &str, vars: Value| {
        http()
            .post(&url)
            .bearer_auth(&bob)
            .header("x-graphql-event-stream-token", &token)
            .json(
                &json!({ "query": query, "variables": vars, "extensions": { "operationId": id } }),
            )
            .send()
    };
    let accepted = post("op1", MESSAGE_ADDED, json!({ "r": "lobby", "a": after }))
        .await
        .expect("POST");
    assert_eq!(accepted.status(), 202);
    let response = http()
        .get(&url)
        .header("x-graphql-event-stream-token", &token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let mut stream = Stream::new(response);

    let sent = send(&server, &alice, "lobby", "single connection").await;
    let data = stream.next("op1's message").await;
    assert_eq!(data["id"], "op1", "{data}");
    assert_eq!(data["payload"]["data"]["messageAdded"]["id"], sent["id"]);

    // The stream opens once; an id runs once; a request that does not validate is 400.
    let again = http()
        .get(&url)
        .query(&[("token", &token)])
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET");
    assert_eq!(again.status(), 409);
    let duplicate = post("op1", MESSAGE_ADDED, json!({ "r": "lobby" }))
        .await
        .expect("POST");
    assert_eq!(duplicate.status(), 409);
    let invalid = post("op2", "subscription { nope }", json!({}))
        .await
        .expect("POST");
    assert_eq!(invalid.status(), 400);
    let body: Value = invalid.json().await.expect("JSON");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    // A query runs on the stream and completes by itself.
    let query = post("op3", "{ me { username } }", json!({}))
        .await
        .expect("POST");
    assert_eq!(query.status(), 202);
    let data = stream.next("op3's result").await;
    assert_eq!(
        data,
        json!({ "id": "op3", "payload": { "data": { "me": { "username": "bob" } } } })
    );
    assert_eq!(
        stream.event("op3's complete").await,
        Some(("complete".into(), json!({ "id": "op3" })))
    );

    // DELETE stops op1: it completes, and no more of its messages come.
    let stopped = http()
        .delete(&url)
        .header("x-graphql-event-stream-token", &token)
        .query(&[("operationId", "op1")])
        .send()
        .await
        .expect("DELETE");
    assert_eq!(stopped.status(), 200);
    assert_eq!(
        stream.event("op1's complete").await,
        Some(("complete".into(), json!({ "id": "op1" })))
    );
    send(&server, &alice, "lobby", "after the stop").await;
    let probe = post("op4", "{ me { username } }", json!({}))
        .await
        .expect("POST");
    assert_eq!(probe.status(), 202);
    let data = stream
        .next("op4's result, with nothing of op1 before it")
        .await;
    assert_eq!(data["id"], "op4", "{data}");

    // A token nobody reserved.
    let unknown = http()
        .post(&url)
        .header(
            "x-graphql-event-stream-token",
            "0123456789abcdef0123456789abcdef",
        )
        .json(&json!({ "query": "{ me { id } }", "extensions": { "operationId": "x" } }))
        .send()
        .await
        .expect("POST");
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn bad_stream_requests_get_the_answers_the_spec_gives() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    // A mutation over GET, streamed or not: 405 with Allow: POST.
    for accept in ["text/event-stream", "application/json"] {
        let response = http()
            .get(server.url("/graphql"))
            .bearer_auth(&alice)
            .header("accept", accept)
            .query(&[("query", "mutation { joinRoom(roomId: \"x\") { id } }")])
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 405, "{accept}");
        assert_eq!(header(&response, "allow"), "POST");
    }
    // Nothing ran: the room the mutation would have made does not exist.
    let room = server
        .ok(Some(&alice), "{ room(id: \"x\") { id } }", json!({}))
        .await;
    assert_eq!(room["room"], Value::Null, "{room}");
    // /graphql/stream wants an event stream (or a reservation).
    let response = http()
        .get(server.url("/graphql/stream"))
        .header("accept", "application/json")
        .query(&[("query", "{ __typename }")])
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 406);
    // A stream carries one operation, not a batch.
    let response = http()
        .post(server.url("/graphql"))
        .header("accept", "text/event-stream")
        .json(&json!([{ "query": "{ __typename }" }, { "query": "{ __typename }" }]))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    // A bad token is refused before anything streams.
    let response = http()
        .post(server.url("/graphql"))
        .bearer_auth("not-a-token")
        .header("accept", "text/event-stream")
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    // A query over GET is served, with its variables.
    let response = http()
        .get(server.url("/graphql"))
        .bearer_auth(&alice)
        .query(&[
            ("query", "query($n: String!) { __type(name: $n) { name } }"),
            ("variables", "{\"n\":\"Room\"}"),
        ])
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["data"]["__type"]["name"], "Room", "{body}");
}

#[tokio::test]
async fn streams_are_held_to_the_connection_and_subscription_budgets() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_MAX_CONNECTIONS", "3"),
            ("TIDINGS_MAX_ANONYMOUS_PER_ADDRESS", "1"),
            ("TIDINGS_MAX_SUBSCRIPTIONS_PER_USER", "1"),
        ],
    );
    let alice = cli_token("alice", "user");
    let channel = "subscription { events(channels: [\"public:budget\"]) { data } }";
    // Anonymous streams from one address: the second is refused with 429 and Retry-After.
    let _anonymous = sse_post(&server, None, channel, json!({})).await;
    let refused = http()
        .post(server.url("/graphql"))
        .header("accept", "text/event-stream")
        .json(&json!({ "query": channel }))
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "5");
    // A user's subscriptions over all their connections: the second is RATE_LIMITED.
    let _first = sse_post(&server, Some(&alice), channel, json!({})).await;
    let mut second = sse_post(&server, Some(&alice), channel, json!({})).await;
    let data = second.next("the refusal").await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{data}"
    );
    drop(second);
    // The instance's connections: a fourth is refused with 503.
    let _third = sse_post(&server, Some(&cli_token("bob", "user")), channel, json!({})).await;
    let full = http()
        .post(server.url("/graphql"))
        .bearer_auth(cli_token("carol", "user"))
        .header("accept", "text/event-stream")
        .json(&json!({ "query": channel }))
        .send()
        .await
        .expect("POST");
    assert_eq!(full.status(), 503);
    assert_eq!(header(&full, "retry-after"), "5");
    let text = metrics(&server).await;
    assert_eq!(
        sample(&text, "tidings_connections{transport=\"sse\"}"),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "tidings_connections_refused_total{reason=\"server_full\"}"
        ) >= Some(1.0)
    );
    assert!(
        sample(
            &text,
            "tidings_subscriptions_refused_total{budget=\"user\"}"
        ) >= Some(1.0)
    );
}

/// `POST /graphql` asking for a stream with `accept`, without reading it.
async fn stream_post(
    server: &TestServer,
    token: &str,
    accept: &str,
    query: &str,
) -> reqwest::Response {
    http()
        .post(server.url("/graphql"))
        .bearer_auth(token)
        .header("accept", accept)
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("POST /graphql")
}

/// The answer to a stream refused by the per-user connection budget: 429, `RATE_LIMITED`,
/// with `Retry-After`, before anything streams.
async fn assert_refused_per_user(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 429, "{what}");
    assert_eq!(header(&response, "retry-after"), "5", "{what}");
    assert!(
        header(&response, "content-type").starts_with("application/json"),
        "{what}: refused before anything streams"
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{what}: {body}"
    );
    assert_eq!(
        body["errors"][0]["message"], "too many connections for this user",
        "{what}: {body}"
    );
}

#[tokio::test]
async fn a_users_streams_over_the_connection_limit_are_refused_until_one_closes() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_MAX_CONNECTIONS_PER_USER", "2")]);
    let alice = cli_token("alice", "user");
    let channel = "subscription { events(channels: [\"public:cap\"]) { data } }";
    // Two connections of alice's, over two transports: the cap counts them together.
    let first = sse_post(&server, Some(&alice), channel, json!({})).await;
    let _socket = GqlSocket::user(&server, &alice).await;

    // A third, over any stream, is refused before it streams, as a socket is closed with 1008.
    let sse = stream_post(&server, &alice, "text/event-stream", channel).await;
    assert_refused_per_user(sse, "an event stream").await;
    let multipart = stream_post(&server, &alice, MULTIPART_ACCEPT, channel).await;
    assert_refused_per_user(multipart, "a multipart subscription").await;
    let reserve = http()
        .put(server.url("/graphql/stream"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("PUT /graphql/stream");
    assert_refused_per_user(reserve, "a single connection stream").await;
    let mut socket = GqlSocket::open(&server, TRANSPORT_WS, "").await;
    socket
        .send(json!({ "type": "connection_init", "payload": { "authToken": alice } }))
        .await;
    assert_eq!(
        socket.closed().await,
        Closed {
            code: 1008,
            reason: "too many connections".into()
        }
    );
    // Nothing refused was counted as a connection; each of the four refusals (SSE, multipart,
    // a reserved stream, graphql-ws) was counted as one.
    let text = metrics(&server).await;
    assert_eq!(
        sample(
            &text,
            "tidings_connections_refused_total{reason=\"user_full\"}"
        ),
        Some(4.0),
        "{text}"
    );
    for transport in ["sse", "graphql_ws"] {
        assert_eq!(
            sample(
                &text,
                &format!("tidings_connections{{transport=\"{transport}\"}}")
            ),
            Some(1.0),
            "{transport}: {text}"
        );
    }
    assert_eq!(
        sample(&text, "tidings_connections{transport=\"multipart\"}").unwrap_or(0.0),
        0.0,
        "{text}"
    );

    // Another user is not held to alice's budget.
    let _bob = sse_post(&server, Some(&cli_token("bob", "user")), channel, json!({})).await;

    // Once alice's stream closes, a new one of hers is admitted and streams.
    drop(first);
    eventually(WAIT, "alice's closed stream counted out", || async {
        sample(
            &metrics(&server).await,
            "tidings_connections{transport=\"sse\"}",
        ) == Some(1.0)
    })
    .await;
    let mut again = sse_post(&server, Some(&alice), channel, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published = http()
        .post(server.url("/api/publish"))
        .bearer_auth(cli_token("backend", "admin"))
        .json(&json!({ "channel": "public:cap", "type": "t", "data": { "n": 7 } }))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 200);
    assert_eq!(
        again.next("the event on the admitted stream").await["data"]["events"]["data"]["n"],
        7
    );
}

/// `request` with `Accept` set to `value`, byte for byte.
fn with_accept(request: reqwest::RequestBuilder, value: &[u8]) -> reqwest::RequestBuilder {
    let value = reqwest::header::HeaderValue::from_bytes(value).expect("a header value");
    request.header("accept", value)
}

/// Accept headers no client should send: an empty parameter and a bad quality, a media
/// range cut short, an empty value, a byte that is not ASCII.
const MALFORMED_ACCEPTS: [&[u8]; 5] = [
    b"text/event-stream;;q=x",
    b"*/",
    b"",
    b"text/\xffhtml",
    b"\xe9v\xe9nement/stream, application/json;q=\xff",
];

#[tokio::test]
async fn a_malformed_accept_gets_a_json_answer_or_a_406_and_never_a_500() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let query = json!({ "query": "{ me { username } }" });
    for accept in MALFORMED_ACCEPTS {
        let shown = String::from_utf8_lossy(accept).into_owned();
        // Only a value that starts with text/event-stream asks for a stream; anything else
        // POSTed to /graphql is answered as plain JSON.
        let asks_for_stream = accept.starts_with(b"text/event-stream");

        let post = with_accept(
            http()
                .post(server.url("/graphql"))
                .bearer_auth(&alice)
                .json(&query),
            accept,
        );
        let response = post.send().await.expect("POST /graphql");
        assert_eq!(response.status(), 200, "POST /graphql, Accept {shown:?}");
        if asks_for_stream {
            assert_eq!(
                header(&response, "content-type"),
                "text/event-stream; charset=utf-8",
                "{shown:?}"
            );
            let mut stream = Stream::new(response);
            assert_eq!(
                stream.next("the query's result").await["data"]["me"]["username"],
                "alice"
            );
            assert_eq!(
                stream.event("complete").await.map(|e| e.0),
                Some("complete".into())
            );
        } else {
            assert_eq!(
                header(&response, "content-type"),
                "application/json",
                "{shown:?}"
            );
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(body["data"]["me"]["username"], "alice", "{shown:?}: {body}");
        }

        // A query over GET, the same way (a malformed Accept is not a browser's text/html).
        let get = with_accept(
            http()
                .get(server.url("/graphql"))
                .bearer_auth(&alice)
                .query(&[("query", "{ me { username } }")]),
            accept,
        );
        let response = get.send().await.expect("GET /graphql");
        assert_eq!(response.status(), 200, "GET /graphql, Accept {shown:?}");
        let content_type = header(&response, "content-type");
        if asks_for_stream {
            assert!(content_type.starts_with("text/event-stream"), "{shown:?}");
        } else {
            assert_eq!(content_type, "application/json", "{shown:?}");
        }
        drop(response);

        // /graphql/stream serves streams only: without one asked for, 406 with a coded error.
        for method in [reqwest::Method::POST, reqwest::Method::GET] {
            let mut request = http()
                .request(method.clone(), server.url("/graphql/stream"))
                .bearer_auth(&alice);
            request = if method == reqwest::Method::POST {
                request.json(&query)
            } else {
                request.query(&[("query", "{ me { username } }")])
            };
            let response = with_accept(request, accept)
                .send()
                .await
                .expect("/graphql/stream");
            if asks_for_stream {
                assert_eq!(response.status(), 200, "{method} {shown:?}");
                let mut stream = Stream::new(response);
                assert_eq!(
                    stream.next("the query's result").await["data"]["me"]["username"],
                    "alice",
                    "{method} {shown:?}"
                );
            } else {
                assert_eq!(response.status(), 406, "{method} {shown:?}");
                let body: Value = response.json().await.expect("JSON");
                assert_eq!(
                    body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
                    "{method} {shown:?}: {body}"
                );
            }
        }
    }
    // A malformed Accept naming application/graphql-response+json still gets that type.
    let response = with_accept(
        http()
            .post(server.url("/graphql"))
            .bearer_auth(&alice)
            .json(&query),
        b"application/graphql-response+json;;q=",
    )
    .send()
    .await
    .expect("POST /graphql");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "application/graphql-response+json"
    );
    // The server kept serving throughout.
    assert_eq!(health(&server).await["status"], "ok");
    let me = server
        .ok(Some(&alice), "{ me { username } }", json!({}))
        .await;
    assert_eq!(me["me"]["username"], "alice");
}

#[tokio::test]
async fn get_graphql_with_an_event_stream_accept_streams_queries_and_subscriptions() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    room_with(&server, "lobby", &[&alice, &bob]).await;
    let get = |query: &str, vars: Value| {
        http()
            .get(server.url("/graphql"))
            .bearer_auth(&bob)
            .header("accept", "text/event-stream")
            .query(&[("query", query), ("variables", &vars.to_string())])
            .send()
    };

    // A query: one `next`, then `complete`, then the stream ends.
    let response = get("{ me { username } }", json!({})).await.expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "text/event-stream; charset=utf-8"
    );
    let mut once = Stream::new(response);
    assert_eq!(
        once.event("the query's result").await,
        Some((
            "next".into(),
            json!({ "data": { "me": { "username": "bob" } } })
        ))
    );
    assert_eq!(
        once.event("complete").await,
        Some(("complete".into(), Value::Null))
    );
    assert_eq!(once.event("the end").await, None);

    // A subscription: live messages as they are sent.
    let response = get(MESSAGE_ADDED, json!({ "r": "lobby" }))
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let mut live = Stream::new(response);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = send(&server, &alice, "lobby", "over GET").await;
    let data = live.next("the live message").await;
    assert_eq!(data["data"]["messageAdded"]["id"], sent["id"], "{data}");
    assert_eq!(data["data"]["messageAdded"]["body"], "over GET");

    // Without a query there is nothing to stream: 400, as a POST without one gets.
    let response = http()
        .get(server.url("/graphql"))
        .bearer_auth(&bob)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["message"], "the request has no query",
        "{body}"
    );
}

#[tokio::test]
async fn a_stream_token_nobody_reserved_is_not_found_by_header_or_parameter() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let url = server.url("/graphql/stream");
    for token in ["0123456789abcdef0123456789abcdef", "not a token at all"] {
        let by_header = http()
            .get(&url)
            .bearer_auth(&alice)
            .header("accept", "text/event-stream")
            .header("x-graphql-event-stream-token", token)
            .send()
            .await
            .expect("GET");
        assert_eq!(by_header.status(), 404, "{token}");
        let body: Value = by_header.json().await.expect("JSON");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "NOT_FOUND",
            "{body}"
        );
        let by_parameter = http()
            .get(&url)
            .bearer_auth(&alice)
            .header("accept", "text/event-stream")
            .query(&[("token", token)])
            .send()
            .await
            .expect("GET");
        assert_eq!(by_parameter.status(), 404, "{token}");
        let deleted = http()
            .delete(&url)
            .query(&[("token", token), ("operationId", "x")])
            .send()
            .await
            .expect("DELETE");
        assert_eq!(deleted.status(), 404, "{token}");
    }
    // Nothing was opened for them.
    assert_eq!(
        sample(
            &metrics(&server).await,
            "tidings_connections{transport=\"sse\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn a_token_expiry_or_an_admins_disconnect_ends_the_stream_with_an_error() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let short = cli_token_ttl("alice", "user", "2s");
    let channel = "subscription { events(channels: [\"public:expiry\"]) { data } }";
    let mut expiring = sse_post(&server, Some(&short), channel, json!({})).await;
    let data = expiring.next("the expiry").await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{data}"
    );
    assert_eq!(
        expiring.event("complete").await.map(|e| e.0),
        Some("complete".into())
    );
    assert_eq!(expiring.event("the end").await, None);

    let bob = cli_token("bob", "user");
    let response = multipart_post(&server, &bob, json!({ "query": channel })).await;
    let mut kicked = Stream::new(response);
    let admin = cli_token("root", "admin");
    server
        .ok(
            Some(&admin),
            "mutation { disconnectUser(userId: \"bob\") }",
            json!({}),
        )
        .await;
    let part = kicked.payload("the disconnect").await;
    assert_eq!(part["payload"], Value::Null, "{part}");
    assert_eq!(
        part["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{part}"
    );
    assert_eq!(kicked.part("the closing boundary").await, None);
}

#[tokio::test]
async fn streams_and_sockets_share_one_execution_and_are_counted_by_transport() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let channel = "subscription { events(channels: [\"public:shared\"]) { data } }";
    let mut socket = GqlSocket::user(&server, &alice).await;
    socket.subscribe("s", channel, json!({})).await;
    let mut sse = sse_post(&server, Some(&alice), channel, json!({})).await;
    let response = multipart_post(&server, &alice, json!({ "query": channel })).await;
    let mut multipart = Stream::new(response);
    eventually(WAIT, "three members of one cohort", || async {
        sample(&metrics(&server).await, "tidings_cohort_members") == Some(3.0)
    })
    .await;
    let admin = cli_token("backend", "admin");
    let published = http()
        .post(server.url("/api/publish"))
        .bearer_auth(&admin)
        .json(&json!({ "channel": "public:shared", "type": "t", "data": { "n": 1 } }))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 200);
    assert_eq!(socket.data("s").await["events"]["data"]["n"], 1);
    assert_eq!(
        sse.next("the event").await["data"]["events"]["data"]["n"],
        1
    );
    assert_eq!(
        multipart.payload("the event").await["payload"]["data"]["events"]["data"]["n"],
        1
    );
    let text = metrics(&server).await;
    assert_eq!(
        sample(&text, "tidings_cohort_executions_total"),
        Some(1.0),
        "{text}"
    );
    for transport in ["graphql_ws", "sse", "multipart"] {
        assert_eq!(
            sample(
                &text,
                &format!("tidings_connections{{transport=\"{transport}\"}}")
            ),
            Some(1.0),
            "{transport}: {text}"
        );
    }
}

#[tokio::test]
async fn a_stream_client_that_stops_reading_is_cut_as_a_slow_consumer() {
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
    // A client that sends its request and then reads nothing.
    let mut stalled = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    let body = json!({ "query": query }).to_string();
    let request = format!(
        "POST /graphql HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, request.as_bytes())
        .await
        .expect("write");
    let mut reader = sse_post(&server, None, query, json!({})).await;
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
            let data = reader.next("a chunk").await;
            seen.push(data["data"]["events"]["data"]["i"].as_i64().unwrap_or(-1));
        }
        seen
    };
    let ((), seen) = tokio::join!(publisher, reading);
    assert_eq!(
        seen,
        (0..events).collect::<Vec<i64>>(),
        "the reading client got everything"
    );
    eventually(
        WAIT,
        "the stalled stream cut as a slow consumer",
        || async {
            sample(
                &metrics(&server).await,
                "tidings_slow_consumers_total{transport=\"sse\"}",
            ) == Some(1.0)
        },
    )
    .await;
    eventually(WAIT, "only the reader's stream left", || async {
        sample(
            &metrics(&server).await,
            "tidings_connections{transport=\"sse\"}",
        ) == Some(1.0)
    })
    .await;
    drop(stalled);
}

#[tokio::test]
async fn persisted_queries_run_over_get_and_never_a_mutation() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let get = |query: Option<&str>, hash: &str| {
        let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
        let mut params = vec![("extensions", extensions.to_string())];
        if let Some(query) = query {
            params.push(("query", query.to_owned()));
        }
        http()
            .get(server.url("/graphql"))
            .bearer_auth(&alice)
            .query(&params)
            .send()
    };
    let query = "{ me { username } }";
    let hash = sha256_hex(query);
    let body: Value = get(None, &hash)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        body["errors"][0]["message"], "PersistedQueryNotFound",
        "{body}"
    );
    let body: Value = get(Some(query), &hash)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["data"]["me"]["username"], "alice", "{body}");
    let body: Value = get(None, &hash)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        body["data"]["me"]["username"], "alice",
        "the hash alone now: {body}"
    );

    // A mutation registered over POST cannot then run over GET by its hash.
    let mutation = "mutation { joinRoom(roomId: \"by-hash\") { id } }";
    let mutation_hash = sha256_hex(mutation);
    let registered: Value = http()
        .post(server.url("/graphql"))
        .bearer_auth(&alice)
        .json(&json!({ "query": mutation, "extensions": { "persistedQuery": { "version": 1, "sha256Hash": mutation_hash } } }))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        registered["data"]["joinRoom"]["id"], "by-hash",
        "{registered}"
    );
    server
        .ok(
            Some(&alice),
            "mutation { leaveRoom(roomId: \"by-hash\") }",
            json!({}),
        )
        .await;
    let response = get(None, &mutation_hash).await.expect("GET");
    assert_eq!(response.status(), 405);
    assert_eq!(header(&response, "allow"), "POST");
    let members = server
        .ok(
            Some(&alice),
            "{ room(id: \"by-hash\") { memberCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        members["room"]["memberCount"], 0,
        "the mutation did not run: {members}"
    );
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
