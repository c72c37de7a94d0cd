//! The deployment the README describes, run for real: two instances sharing one database and
//! one Redis, behind nginx with `deploy/nginx.conf`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `deploy/nginx.conf` with its upstreams pointed at `upstreams` and listening on a free
/// port.
fn nginx(upstreams: [&str; 2]) -> Nginx {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
            .expect("deploy/nginx.conf");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    for needle in [
        "server 127.0.0.1:8001;",
        "server 127.0.0.1:8002;",
        "listen 8000;",
    ] {
        assert!(
            template.contains(needle),
            "deploy/nginx.conf no longer has {needle:?}"
        );
    }
    let config = template
        .replace(
            "server 127.0.0.1:8001;",
            &format!("server {};", upstreams[0]),
        )
        .replace(
            "server 127.0.0.1:8002;",
            &format!("server {};", upstreams[1]),
        )
        .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"));
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config).expect("write config");
    let globals = format!(
        "daemon off; master_process off; pid {0}/nginx.pid; error_log {0}/error.log;",
        dir.path().display()
    );
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", &globals])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nginx ({e}): install it (scripts/test.sh does: apt-get install nginx)"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        child,
        _dir: dir,
        addr: format!("127.0.0.1:{port}"),
    }
}

#[tokio::test]
async fn two_instances_behind_nginx_serve_http_and_subscriptions() {
    let redis = TestRedis::start();
    let (a, b, _db) = bridged_pair(&Backend::Sqlite, &redis, &[]).await;
    let proxy = nginx([&a.addr, &b.addr]);
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");

    // HTTP through the proxy.
    let through = format!("http://{}/graphql", proxy.addr);
    let resp: serde_json::Value = http()
        .post(&through)
        .bearer_auth(&alice)
        .json(&json!({ "query": "mutation { joinRoom(roomId: \"lobby\") { id } }" }))
        .send()
        .await
        .expect("POST through nginx")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["data"]["joinRoom"]["id"], "lobby");
    join(&a, &bob, "lobby").await;

    // Subscriptions through the proxy (the upgrade and the subprotocol pass through), fed by
    // writes on either instance.
    let mut ws = GqlSocket::open_at(&proxy.addr, TRANSPORT_WS, "", None).await;
    ws.send(json!({ "type": "connection_init", "payload": { "authToken": alice } }))
        .await;
    assert_eq!(ws.next_frame().await["type"], "connection_ack");
    ws.subscribe(
        "m",
        "subscription { messageAdded(roomId: \"lobby\") { body } }",
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&a, &bob, "lobby", "via a").await;
    send(&b, &bob, "lobby", "via b").await;
    assert_eq!(ws.data("m").await["messageAdded"]["body"], "via a");
    assert_eq!(ws.data("m").await["messageAdded"]["body"], "via b");
}

/// HTTP streams pass through nginx unbuffered: each event reaches the client while its
/// stream is still open, whichever instance stored the message.
#[tokio::test]
async fn event_streams_and_multipart_subscriptions_pass_through_nginx_unbuffered() {
    let redis = TestRedis::start();
    let (a, b, _db) = bridged_pair(&Backend::Sqlite, &redis, &[]).await;
    let proxy = nginx([&a.addr, &b.addr]);
    let alice = cli_token("alice", "user");
    join(&a, &alice, "lobby").await;
    let through = format!("http://{}/graphql", proxy.addr);
    let query = json!({ "query": "subscription { messageAdded(roomId: \"lobby\") { body } }" });
    let sse = http()
        .post(&through)
        .bearer_auth(&alice)
        .header("accept", "text/event-stream")
        .json(&query)
        .send()
        .await
        .expect("POST through nginx");
    assert_eq!(sse.status(), 200);
    let mut sse = Stream::new(sse);
    let multipart = http()
        .post(&through)
        .bearer_auth(&alice)
        .header("accept", MULTIPART_ACCEPT)
        .json(&query)
        .send()
        .await
        .expect("POST through nginx");
    assert_eq!(multipart.status(), 200);
    let mut multipart = Stream::new(multipart);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (instance, body) in [(&a, "via a"), (&b, "via b")] {
        send(instance, &alice, "lobby", body).await;
        let event = sse.next(body).await;
        assert_eq!(event["data"]["messageAdded"]["body"], body);
        let part = multipart.payload(body).await;
        assert_eq!(part["payload"]["data"]["messageAdded"]["body"], body);
    }
}

/// graphql-sse's single connection mode through nginx: the stream lives on the instance that
/// reserved it, and the shipped config sends every request to `/graphql/stream` from one
/// client to one instance, so the reservation, the stream, its operations and their stop all
/// meet there.
#[tokio::test]
async fn a_single_connection_stream_works_through_nginx() {
    let redis = TestRedis::start();
    let (a, b, _db) = bridged_pair(&Backend::Sqlite, &redis, &[]).await;
    let proxy = nginx([&a.addr, &b.addr]);
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&a, &alice, "lobby").await;
    join(&a, &bob, "lobby").await;
    let url = format!("http://{}/graphql/stream", proxy.addr);

    // Reserve, then open the stream, each a request of its own.
    let reserved = http()
        .put(&url)
        .bearer_auth(&bob)
        .send()
        .await
        .expect("PUT through nginx");
    assert_eq!(reserved.status(), 201);
    let token = reserved.text().await.expect("the stream token");
    let opened = http()
        .get(&url)
        .header("x-graphql-event-stream-token", &token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET through nginx");
    assert_eq!(
        opened.status(),
        200,
        "the stream opens where it was reserved"
    );
    let mut stream = Stream::new(opened);

    // An operation posted with the token runs on that stream.
    let started = http()
        .post(&url)
        .bearer_auth(&bob)
        .header("x-graphql-event-stream-token", &token)
        .json(&json!({
            "query": "subscription { messageAdded(roomId: \"lobby\") { body } }",
            "extensions": { "operationId": "m" },
        }))
        .send()
        .await
        .expect("POST through nginx");
    assert_eq!(started.status(), 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (instance, body) in [(&a, "via a"), (&b, "via b")] {
        send(instance, &alice, "lobby", body).await;
        let event = stream.next(body).await;
        assert_eq!(event["id"], "m", "{event}");
        assert_eq!(event["payload"]["data"]["messageAdded"]["body"], body);
    }

    // DELETE stops it: the operation completes on the stream.
    let stopped = http()
        .delete(&url)
        .header("x-graphql-event-stream-token", &token)
        .query(&[("operationId", "m")])
        .send()
        .await
        .expect("DELETE through nginx");
    assert_eq!(stopped.status(), 200);
    assert_eq!(
        stream.event("the operation's complete").await,
        Some(("complete".into(), json!({ "id": "m" })))
    );
}
