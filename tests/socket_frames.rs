//! The server's WebSocket frames on the wire (RFC 6455), read byte by byte by a client of
//! our own: fan-out writes each member's `next` as one final text frame of its own id around
//! the payload every member of the cohort shares, whole even when a member leaves while an
//! event is on its way; pings are answered with pongs and a client's close is echoed; a
//! client's message sent in fragments is read whole, and a broken frame closes with 1002.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MESSAGES: &str = "subscription($r: ID!) { messageAdded(roomId: $r) { id body } }";
const WAIT: Duration = Duration::from_secs(10);

/// One frame as the server wrote it.
#[derive(Debug)]
struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A graphql-transport-ws client that sees every frame header.
struct RawSocket {
    tcp: TcpStream,
}

/// A masked client frame, final.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_head(0x80 | opcode, payload)
}

/// A masked client frame whose first byte (FIN, reserved bits, opcode) is `first`.
fn client_frame_head(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![first];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

impl RawSocket {
    async fn open(server: &TestServer) -> Self {
        Self::open_sending(server, &[]).await
    }

    /// Opens with `first` (client frames) sent right behind the upgrade request, in the same
    /// write, without waiting for the server's answer.
    async fn open_sending(server: &TestServer, first: &[u8]) -> Self {
        let mut tcp = TcpStream::connect(&server.addr).await.expect("connect");
        let request = format!(
            "GET /graphql HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
            server.addr
        );
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(first);
        tcp.write_all(&bytes).await.expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.expect("handshake answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // RFC 6455 §1.3's example key and its answer.
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(
            head.contains("sec-websocket-protocol: graphql-transport-ws"),
            "{head}"
        );
        RawSocket { tcp }
    }

    /// Sends a masked client frame.
    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let frame = client_frame(opcode, payload);
        self.tcp.write_all(&frame).await.expect("send");
    }

    async fn send(&mut self, value: Value) {
        self.send_frame(0x1, value.to_string().as_bytes()).await;
    }

    async fn frame(&mut self) -> RawFrame {
        tokio::time::timeout(WAIT, self.read_frame())
            .await
            .expect("a frame in time")
    }

    async fn read_frame(&mut self) -> RawFrame {
        let mut head = [0u8; 2];
        self.tcp.read_exact(&mut head).await.expect("frame header");
        assert_eq!(head[1] & 0x80, 0, "a server frame is never masked");
        let len = match head[1] & 0x7F {
            126 => u64::from(self.tcp.read_u16().await.expect("length")),
            127 => self.tcp.read_u64().await.expect("length"),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).expect("length")];
        self.tcp.read_exact(&mut payload).await.expect("payload");
        RawFrame {
            fin: head[0] & 0x80 != 0,
            opcode: head[0] & 0x0F,
            payload,
        }
    }

    /// The next text message, which must be one final text frame (pings are skipped).
    async fn text(&mut self) -> String {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 0x9 {
                continue;
            }
            assert!(frame.fin, "a whole message in one frame: {frame:?}");
            assert_eq!(frame.opcode, 0x1, "a text frame: {frame:?}");
            return String::from_utf8(frame.payload).expect("UTF-8");
        }
    }

    /// The code of the close the server sends, past any other frames.
    async fn close_code(&mut self) -> u16 {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 0x8 {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    }

    async fn json(&mut self) -> Value {
        let text = self.text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    async fn user(server: &TestServer, token: &str) -> Self {
        let mut socket = Self::open(server).await;
        socket
            .send(json!({ "type": "connection_init", "payload": { "authToken": token } }))
            .await;
        assert_eq!(socket.json().await["type"], "connection_ack");
        socket
    }

    async fn subscribe(&mut self, id: &str, room: &str) {
        self.send(json!({ "id": id, "type": "subscribe",
            "payload": { "query": MESSAGES, "variables": { "r": room } } }))
            .await;
    }
}

/// The payload bytes of a `next` frame of operation `id`, checked to be exactly
/// `{"id":…,"type":"next","payload":…}`.
fn payload_of<'a>(text: &'a str, id: &str) -> &'a str {
    let prefix = format!(r#"{{"id":"{id}","type":"next","payload":"#);
    let inner = text
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a next frame of {id}: {text}"));
    let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        parsed["payload"],
        serde_json::from_str::<Value>(inner).expect("payload")
    );
    inner
}

async fn server_with(names: &[&str], room: &str) -> (TestServer, TestDb, Vec<String>) {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_RATE_LIMITS", "off")]);
    let mut tokens = Vec::new();
    for name in names {
        let token = cli_token(name, "user");
        join(&server, &token, room).await;
        tokens.push(token);
    }
    (server, db, tokens)
}

/// Waits until the server counts `n` members in cohorts, so a publish reaches them all.
async fn members(server: &TestServer, n: f64) {
    eventually(WAIT, "cohort members", || async {
        sample(&metrics(server).await, "tidings_cohort_members") == Some(n)
    })
    .await;
}

#[tokio::test]
async fn each_member_gets_one_text_frame_of_its_own_id_around_the_same_payload_bytes() {
    let (server, _db, tokens) = server_with(&["alice", "bob"], "frames").await;
    let mut alice = RawSocket::user(&server, &tokens[0]).await;
    let mut bob = RawSocket::user(&server, &tokens[1]).await;
    alice.subscribe("a", "frames").await;
    bob.subscribe("bob-operation-2", "frames").await;
    members(&server, 2.0).await;
    // A body long enough that the frame needs the 16-bit length form.
    let long = "x".repeat(300);
    for body in ["one", "two", long.as_str()] {
        send(&server, &tokens[0], "frames", body).await;
    }
    for body in ["one", "two", long.as_str()] {
        let (a, b) = (alice.text().await, bob.text().await);
        let (a, b) = (payload_of(&a, "a"), payload_of(&b, "bob-operation-2"));
        assert_eq!(a, b, "the members share the payload's bytes");
        let payload: Value = serde_json::from_str(a).expect("payload");
        assert_eq!(payload["data"]["messageAdded"]["body"], body);
    }
}

#[tokio::test]
async fn a_member_that_leaves_while_events_are_sent_never_receives_half_a_message() {
    let (server, _db, tokens) = server_with(&["carol", "dave", "erin"], "leaving").await;
    let mut stays = RawSocket::user(&server, &tokens[0]).await;
    let mut completes = RawSocket::user(&server, &tokens[1]).await;
    let mut hangs_up = RawSocket::user(&server, &tokens[2]).await;
    stays.subscribe("s", "leaving").await;
    completes.subscribe("c", "leaving").await;
    hangs_up.subscribe("h", "leaving").await;
    members(&server, 3.0).await;
    const COUNT: usize = 60;
    let publisher = {
        let (base, token) = (server.base.clone(), tokens[0].clone());
        tokio::spawn(async move {
            let client = http();
            for i in 0..COUNT {
                let sent = client
                    .post(format!("{base}/graphql"))
                    .bearer_auth(&token)
                    .json(&json!({
                        "query": "mutation($r: ID!, $b: String!) { sendMessage(roomId: $r, body: $b) { id } }",
                        "variables": { "r": "leaving", "b": format!("m{i}") },
                    }))
                    .send()
                    .await;
                assert!(sent.is_ok_and(|r| r.status().is_success()), "message {i}");
            }
        })
    };
    // Mid-stream: one member completes its operation, another closes its socket.
    let first = completes.text().await;
    payload_of(&first, "c");
    completes
        .send(json!({ "id": "c", "type": "complete" }))
        .await;
    let first = hangs_up.text().await;
    payload_of(&first, "h");
    hangs_up.send_frame(0x8, &1000u16.to_be_bytes()).await;
    // Whatever the leavers still get is whole: `next` frames of their id, then for the closing
    // socket the echo of its close, for the completing one nothing after the last `next`.
    loop {
        let frame = hangs_up.frame().await;
        match frame.opcode {
            0x8 => {
                assert_eq!(&frame.payload[..2], &1000u16.to_be_bytes(), "echoed close");
                break;
            }
            0x9 => {}
            _ => {
                assert!(frame.fin && frame.opcode == 0x1, "{frame:?}");
                payload_of(std::str::from_utf8(&frame.payload).expect("UTF-8"), "h");
            }
        }
    }
    publisher.await.expect("publisher");
    let mut seen = Vec::new();
    while seen.len() < COUNT {
        let text = stays.text().await;
        let payload: Value = serde_json::from_str(payload_of(&text, "s")).expect("payload");
        seen.push(payload["data"]["messageAdded"]["body"].clone());
    }
    let expected: Vec<Value> = (0..COUNT).map(|i| json!(format!("m{i}"))).collect();
    assert_eq!(
        seen, expected,
        "the member that stayed got every message, once, in order"
    );
    // The completed member: whole `next` frames, then nothing more for its operation.
    completes.send(json!({ "type": "ping" })).await;
    loop {
        let text = completes.text().await;
        let frame: Value = serde_json::from_str(&text).expect("JSON");
        if frame["type"] == "pong" {
            break;
        }
        payload_of(&text, "c");
    }
}

#[tokio::test]
async fn a_websocket_ping_is_answered_with_a_pong_of_its_data() {
    let (server, _db, tokens) = server_with(&["frank"], "pings").await;
    let mut socket = RawSocket::user(&server, &tokens[0]).await;
    socket.send_frame(0x9, b"are you there").await;
    let pong = loop {
        let frame = socket.frame().await;
        if frame.opcode != 0x9 {
            break frame;
        }
    };
    assert!(pong.fin);
    assert_eq!(pong.opcode, 0xA);
    assert_eq!(pong.payload, b"are you there");
}

/// The server takes the TCP stream from hyper once the upgrade is answered: what the client
/// sent behind the upgrade request, which hyper had already read, is still the socket's first
/// frames.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read_as_the_first_ones() {
    let (server, _db, tokens) = server_with(&["gina"], "eager").await;
    let init = json!({ "type": "connection_init", "payload": { "authToken": tokens[0] } });
    let ping = json!({ "type": "ping", "payload": { "n": 1 } });
    let mut first = client_frame(0x1, init.to_string().as_bytes());
    first.extend(client_frame(0x1, ping.to_string().as_bytes()));
    let mut socket = RawSocket::open_sending(&server, &first).await;
    assert_eq!(socket.json().await["type"], "connection_ack");
    assert_eq!(
        socket.json().await,
        json!({ "type": "pong", "payload": { "n": 1 } })
    );
    // And the socket reads on from the stream itself.
    socket.subscribe("1", "eager").await;
    members(&server, 1.0).await;
    send(&server, &tokens[0], "eager", "after the takeover").await;
    let text = socket.text().await;
    assert!(text.contains("after the takeover"), "{text}");
}

/// A client may send a message in fragments (RFC 6455 §5.4), with control frames between
/// them: the server reads the message whole. A frame that breaks the protocol closes with 1002.
#[tokio::test]
async fn a_fragmented_client_message_is_read_whole_and_a_broken_frame_closes_with_1002() {
    let (server, _db, tokens) = server_with(&["hana"], "pieces").await;
    let mut socket = RawSocket::user(&server, &tokens[0]).await;
    let ping = json!({ "type": "ping", "payload": { "text": "in three pieces" } }).to_string();
    let bytes = ping.as_bytes();
    let mut fragments = client_frame_head(0x01, &bytes[..5]);
    fragments.extend(client_frame(0x9, b"between"));
    fragments.extend(client_frame_head(0x00, &bytes[5..20]));
    fragments.extend(client_frame_head(0x80, &bytes[20..]));
    socket.tcp.write_all(&fragments).await.expect("send");
    let mut pong = None;
    let mut control = None;
    while pong.is_none() || control.is_none() {
        let frame = socket.frame().await;
        match frame.opcode {
            0xA => control = Some(frame.payload),
            0x1 => pong = Some(serde_json::from_slice::<Value>(&frame.payload).expect("JSON")),
            _ => {}
        }
    }
    assert_eq!(control.as_deref(), Some(&b"between"[..]));
    assert_eq!(
        pong,
        Some(json!({ "type": "pong", "payload": { "text": "in three pieces" } }))
    );

    // A continuation with no message begun.
    socket
        .tcp
        .write_all(&client_frame_head(0x80, b"orphan"))
        .await
        .expect("send");
    assert_eq!(socket.close_code().await, 1002);

    // An unmasked frame.
    let mut socket = RawSocket::user(&server, &tokens[0]).await;
    socket
        .tcp
        .write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .expect("send");
    assert_eq!(socket.close_code().await, 1002);
}
