//! Abuse over sockets, as an attacker would try it against the real binary: what a client may
//! make the server hold (sockets, channels, subscriptions) is bounded, each refusal is the
//! documented answer, and memory stays within its budget.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An upgrade the server refused: its status and `Retry-After`.
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<u64>,
}

/// Tries a WebSocket upgrade at `path` with `headers`; the open socket, or the refusal.
async fn try_upgrade(
    server: &TestServer,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, Refused> {
    let mut request = format!("ws://{}{path}", server.addr)
        .into_client_request()
        .expect("request");
    if path.starts_with("/graphql") {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            TRANSPORT_WS.parse().expect("header"),
        );
    }
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }),
        Err(e) => panic!("upgrade at {path} failed: {e}"),
    }
}

/// Asserts the upgrade at `path` is refused with `status` and a `Retry-After` in seconds.
async fn assert_refused(
    server: &TestServer,
    path: &str,
    headers: &[(&'static str, &str)],
    status: u16,
) {
    match try_upgrade(server, path, headers).await {
        Ok(_) => panic!("{path} {headers:?}: upgraded, expected {status}"),
        Err(refused) => {
            assert_eq!(refused.status, status, "{path} {headers:?}");
            assert!(
                refused.retry_after.is_some_and(|s| s > 0),
                "{path}: {refused:?} without Retry-After"
            );
        }
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS:` now, `VmHWM:` the peak).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

async fn counter(server: &TestServer, series: &str) -> f64 {
    sample(&metrics(server).await, series).unwrap_or(0.0)
}

const FLOOD_FRAMES: usize = 25_000;
/// Frames sent before their answers are read: the flood is pipelined, and a socket's outgoing
/// queue never fills (a client that does not read is a slow consumer, closed).
const WINDOW: usize = 500;

/// Finding 1: three anonymous `/ws/game` sockets each ask for 25,000 distinct public channels.
/// Past the anonymous budget (10 channels, the path's included) each gets RATE_LIMITED, stays
/// open, and the server's memory barely moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_subscribe_flood_is_refused_past_the_budget_with_bounded_memory() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(LegacyClient::at(&server, "/ws/game").await);
    }
    let before = memory_kib(server.pid(), "VmRSS:");
    let floods = sockets
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| async move {
            let (mut subscribed, mut refused) = (0, 0);
            for window in 0..FLOOD_FRAMES / WINDOW {
                for i in 0..WINDOW {
                    let channel = format!("public:flood-{s}-{}", window * WINDOW + i);
                    ws.send(json!({ "type": "subscribe", "channel": channel }))
                        .await;
                }
                for _ in 0..WINDOW {
                    let frame = ws.next().await;
                    match frame["type"].as_str() {
                        Some("subscribed") => subscribed += 1,
                        Some("error") => {
                            assert_eq!(frame["code"], "RATE_LIMITED", "{frame}");
                            refused += 1;
                        }
                        _ => panic!("unexpected frame {frame}"),
                    }
                }
                assert!(
                    subscribed <= 9,
                    "an anonymous socket follows {subscribed} channels besides its own"
                );
            }
            // Still open, still answering.
            ws.sync().await;
            (subscribed, refused, ws)
        });
    let results = futures_util::future::join_all(floods).await;
    for (subscribed, refused, _) in &results {
        assert_eq!(*subscribed, 9, "the path's channel and 9 more");
        assert_eq!(*refused, FLOOD_FRAMES - 9);
    }
    let peak = memory_kib(server.pid(), "VmHWM:");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 64,
        "the flood grew the server by {growth_mib} MiB"
    );
    let refusals = counter(
        &server,
        "tidings_subscriptions_refused_total{budget=\"socket\"}",
    )
    .await;
    assert!(refusals >= (3 * (FLOOD_FRAMES - 9)) as f64, "{refusals}");
}

/// Topics: a channel where nothing is published costs little until events flow (no event
/// buffer per topic), so even a socket allowed 10,000 channels keeps the server small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_quiet_channels_cost_little_memory() {
    const CHANNELS: usize = 10_000;
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_MAX_CHANNELS_PER_SOCKET", "20000"),
            ("TIDINGS_MAX_SUBSCRIPTIONS_PER_USER", "20000"),
        ],
    );
    let mut ws = LegacyClient::user(&server, &cli_token("alice", "user")).await;
    let before = memory_kib(server.pid(), "VmRSS:");
    for window in 0..CHANNELS / WINDOW {
        for i in 0..WINDOW {
            let channel = format!("public:quiet-{}", window * WINDOW + i);
            ws.send(json!({ "type": "subscribe", "channel": channel }))
                .await;
        }
        for _ in 0..WINDOW {
            let frame = ws.next().await;
            assert_eq!(frame["type"], "subscribed", "{frame}");
        }
    }
    let peak = memory_kib(server.pid(), "VmHWM:");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 64,
        "{CHANNELS} quiet channels grew the server by {growth_mib} MiB"
    );
    // They still work: an event on one of them arrives.
    let admin = cli_token("admin", "admin");
    server
        .ok(
            Some(&admin),
            "mutation { publish(channel: \"public:quiet-77\", type: \"ping\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(ws.next_of("ping").await["channel"], "public:quiet-77");
}

/// Finding 1, on GraphQL: an anonymous socket runs the same small number of operations.
#[tokio::test]
async fn an_anonymous_graphql_socket_runs_at_most_ten_operations() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let mut ws = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    let leaderboard = "subscription { leaderboard { version } }";
    for i in 0..10 {
        let id = i.to_string();
        ws.subscribe(&id, leaderboard, json!({})).await;
        ws.data(&id).await;
    }
    ws.subscribe("10", leaderboard, json!({})).await;
    assert_eq!(ws.error_code("10").await, "RATE_LIMITED");
    // Open throughout: completing one frees a place.
    ws.send(json!({ "id": "0", "type": "complete" })).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.subscribe("10", leaderboard, json!({})).await;
    ws.data("10").await;
}

/// Subscriptions per user across sockets: channels on `/ws` and operations on GraphQL share
/// one budget, and each socket has its own.
#[tokio::test]
async fn a_user_follows_a_bounded_number_of_things_over_all_their_sockets() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_MAX_SUBSCRIPTIONS_PER_USER", "3"),
            ("TIDINGS_MAX_CHANNELS_PER_SOCKET", "5"),
        ],
    );
    let alice = cli_token("alice", "user");
    let mut legacy = LegacyClient::user(&server, &alice).await;
    // The socket's own three channels and two more.
    for channel in ["public:a", "public:b"] {
        legacy
            .send(json!({ "type": "subscribe", "channel": channel }))
            .await;
        assert_eq!(
            legacy.next_of("subscribed").await["data"]["channel"],
            channel
        );
    }
    legacy
        .send(json!({ "type": "subscribe", "channel": "public:c" }))
        .await;
    let refused = legacy.next_of("error").await;
    assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
    // A channel already followed is no new cost.
    legacy
        .send(json!({ "type": "subscribe", "channel": "public:a" }))
        .await;
    legacy.next_of("subscribed").await;
    // Two of the user's three are taken: GraphQL gets one more.
    let mut ws = GqlSocket::user(&server, &alice).await;
    let leaderboard = "subscription { leaderboard { version } }";
    ws.subscribe("1", leaderboard, json!({})).await;
    ws.data("1").await;
    ws.subscribe("2", leaderboard, json!({})).await;
    assert_eq!(ws.error_code("2").await, "RATE_LIMITED");
    // Unsubscribing gives a place back.
    legacy
        .send(json!({ "type": "unsubscribe", "channel": "public:a" }))
        .await;
    legacy.next_of("unsubscribed").await;
    ws.subscribe("2", leaderboard, json!({})).await;
    ws.data("2").await;
    let text = metrics(&server).await;
    for budget in ["socket", "user"] {
        let series = format!("tidings_subscriptions_refused_total{{budget=\"{budget}\"}}");
        assert!(sample(&text, &series).unwrap_or(0.0) >= 1.0, "{series}");
    }
}

/// Connections: past `TIDINGS_MAX_CONNECTIONS`, every WebSocket endpoint answers the upgrade
/// 503 with Retry-After, before any socket is made; a closed socket frees its place.
#[tokio::test]
async fn past_the_connection_cap_an_upgrade_is_refused_with_503() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_MAX_CONNECTIONS", "3")]);
    let alice = cli_token("alice", "user");
    let _a = LegacyClient::user(&server, &alice).await;
    let _b = GqlSocket::user(&server, &cli_token("bob", "user")).await;
    let c = LegacyClient::at(&server, "/ws/game").await;
    let signed_in = format!("/ws?token={alice}");
    for path in ["/ws/game", "/graphql", signed_in.as_str()] {
        assert_refused(&server, path, &[], 503).await;
    }
    // Plain HTTP is served as before.
    assert_eq!(health(&server).await["status"], "ok");
    c.close().await;
    eventually(
        Duration::from_secs(5),
        "a closed socket frees its place",
        || async { try_upgrade(&server, "/ws/game", &[]).await.is_ok() },
    )
    .await;
    let refusals = counter(
        &server,
        "tidings_connections_refused_total{reason=\"server_full\"}",
    )
    .await;
    assert!(refusals >= 3.0, "{refusals}");
}

/// Connections: one address holds at most `TIDINGS_MAX_ANONYMOUS_PER_ADDRESS` sockets that
/// are not signed in as a user (429 past it); its signed-in users are not locked out.
#[tokio::test]
async fn past_the_anonymous_cap_of_an_address_an_upgrade_is_refused_with_429() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_MAX_ANONYMOUS_PER_ADDRESS", "2")]);
    let alice = cli_token("alice", "user");
    let _game = LegacyClient::at(&server, "/ws/game").await;
    // A graphql-ws socket counts until `connection_init` signs it in as a user.
    let _signed_in = GqlSocket::user(&server, &alice).await;
    let anonymous = GqlSocket::connect(&server, TRANSPORT_WS, json!({})).await;
    for path in ["/ws/game", "/graphql"] {
        assert_refused(&server, path, &[], 429).await;
    }
    // A `/ws` socket with a token signs in as it opens: not counted, not refused.
    let mut user = LegacyClient::user(&server, &alice).await;
    user.sync().await;
    anonymous.close().await;
    eventually(
        Duration::from_secs(5),
        "a closed socket frees its place",
        || async { try_upgrade(&server, "/ws/game", &[]).await.is_ok() },
    )
    .await;
    let refusals = counter(
        &server,
        "tidings_connections_refused_total{reason=\"address_full\"}",
    )
    .await;
    assert!(refusals >= 2.0, "{refusals}");
}

/// Connections behind a proxy: `X-Forwarded-For` names the client only when the peer is a
/// trusted proxy; from anyone else it is ignored, or a client could claim any address.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let behind_proxy = TestServer::start(
        &db,
        &[
            ("TIDINGS_MAX_ANONYMOUS_PER_ADDRESS", "1"),
            ("TIDINGS_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
        ],
    );
    let first = [("x-forwarded-for", "203.0.113.1")];
    let second = [("x-forwarded-for", "198.51.100.7, 203.0.113.2")];
    let _one = try_upgrade(&behind_proxy, "/ws/game", &first)
        .await
        .expect("the first client of 203.0.113.1");
    let _two = try_upgrade(&behind_proxy, "/ws/game", &second)
        .await
        .expect("another client, 203.0.113.2 (the hop the proxy saw)");
    assert_refused(&behind_proxy, "/ws/game", &first, 429).await;

    let db = TestDb::new(&Backend::Sqlite).await;
    let direct = TestServer::start(&db, &[("TIDINGS_MAX_ANONYMOUS_PER_ADDRESS", "1")]);
    let _one = try_upgrade(&direct, "/ws/game", &first)
        .await
        .expect("the first socket of 127.0.0.1");
    // Without a trusted proxy the header is the client's own claim: still 127.0.0.1.
    assert_refused(&direct, "/ws/game", &second, 429).await;
}

/// Finding 8: a text frame that is not UTF-8 closes with 1007 (RFC 6455), on both transports.
#[tokio::test]
async fn a_text_frame_with_invalid_utf8_closes_with_1007() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let alice = cli_token("alice", "user");
    let invalid = || {
        let text = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
        Message::Frame(text)
    };
    let mut legacy = LegacyClient::user(&server, &alice).await;
    legacy.send_raw(invalid()).await;
    assert_eq!(legacy.closed().await.code, 1007);
    let mut graphql = GqlSocket::user(&server, &alice).await;
    graphql.send_raw(invalid()).await;
    assert_eq!(graphql.closed().await.code, 1007);
    // The server goes on serving.
    let mut again = GqlSocket::user(&server, &alice).await;
    again.subscribe("1", "{ me { username } }", json!({})).await;
    assert_eq!(
        again.data("1").await["me"]["username"],
        Value::from("alice")
    );
}

/// Reads until the server closes the connection (EOF or an error); how long that took, or
/// `None` if it stayed open for `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(start) + within,
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One `GET /health` on `stream`, its response read whole (by its length).
async fn health_on(stream: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: tidings\r\n\r\n")
        .await
        .expect("write a request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .expect("read a response");
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().expect("a length"))
                })
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                return;
            }
        }
    }
}

#[tokio::test]
async fn an_idle_http_connection_is_closed_and_a_busy_one_is_not() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_HTTP_IDLE_TIMEOUT", "1s")]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let connect = || async {
        tokio::net::TcpStream::connect(addr.as_str())
            .await
            .expect("connect")
    };

    // Kept alive after a request, then silent.
    let mut kept = connect().await;
    health_on(&mut kept).await;
    // Half a request's head, then silent (slowloris).
    let mut half = connect().await;
    {
        use tokio::io::AsyncWriteExt;
        half.write_all(b"GET /health HTTP/1.1\r\nHost: tid")
            .await
            .expect("write half a head");
    }
    // Busy: a request every 400 ms for twice the timeout, on one connection.
    let mut busy = connect().await;
    for _ in 0..5 {
        health_on(&mut busy).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    health_on(&mut busy).await;

    for (what, stream) in [("kept alive", &mut kept), ("half a head", &mut half)] {
        let took = closed_within(stream, Duration::from_secs(5)).await;
        let took = took.unwrap_or_else(|| panic!("{what}: still open 5 s on"));
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
    }
    let closed = counter(&server, "tidings_http_idle_closed_total").await;
    assert!(closed >= 2.0, "counted: {closed}");
    // The server serves on.
    let mut fresh = connect().await;
    health_on(&mut fresh).await;
}
