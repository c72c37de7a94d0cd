//! Renewing a token on a live connection: `authenticate` over graphql-ws and `auth` on `/ws`
//! swap a connection's credentials without closing it; `refreshToken` gives a fresh token for
//! one this server issued. Each rule is checked against a real server and real sockets.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::*;

const AUTHENTICATE: &str =
    "mutation($t: String!) { authenticate(token: $t) { expiresAt user { id username role } } }";
const REFRESH: &str = "mutation { refreshToken { token user { id } } }";
const MESSAGE_ADDED: &str =
    "subscription($r: ID!) { messageAdded(roomId: $r) { id body sender { id } } }";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An HS256 token signed with the test secret, with exactly these claims.
fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint")
}

/// Runs `authenticate(token)` as operation `id` on `socket`; returns its frame.
async fn authenticate(socket: &mut GqlSocket, id: &str, token: &str) -> Value {
    socket
        .subscribe(id, AUTHENTICATE, json!({ "t": token }))
        .await;
    let frame = socket.frame_for(id).await;
    assert_eq!(socket.frame_for(id).await["type"], "complete");
    frame
}

fn error_code(frame: &Value) -> &str {
    frame["payload"]["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {frame}"))
}

fn expires_at(value: &Value) -> i64 {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp()
}

#[tokio::test]
async fn a_renewed_connection_outlives_its_first_token_and_keeps_its_subscription() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let bob = cli_token("bob", "user");
        join(&server, &bob, "lobby").await;
        join(&server, &cli_token("alice", "user"), "lobby").await;
        // Minted before the clock starts: the first token lasts 3 s at most.
        let long = cli_token("alice", "user");
        let short = cli_token_ttl("alice", "user", "3s");

        let mut alice = GqlSocket::open(&server, TRANSPORT_WS, "").await;
        let opened = Instant::now();
        alice
            .send(json!({ "type": "connection_init", "payload": { "authToken": short } }))
            .await;
        let ack = alice.next_frame().await;
        assert_eq!(ack["type"], "connection_ack");
        let first_expiry = expires_at(&ack["payload"]["expiresAt"]);
        assert!((now()..=now() + 3).contains(&first_expiry), "{ack}");

        alice
            .subscribe("m", MESSAGE_ADDED, json!({ "r": "lobby" }))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&server, &bob, "lobby", "before").await;
        assert_eq!(alice.data("m").await["messageAdded"]["body"], "before");

        let renewed = authenticate(&mut alice, "auth", &long).await;
        let session = &renewed["payload"]["data"]["authenticate"];
        assert_eq!(session["user"]["id"], "alice", "{renewed}");
        assert!(
            expires_at(&session["expiresAt"]) > now() + 3000,
            "{renewed}"
        );

        // Past the first token's expiry, the connection and its subscription go on.
        let past = Duration::from_secs(5).saturating_sub(opened.elapsed());
        alice.expect_silence(past).await;
        send(&server, &bob, "lobby", "after").await;
        assert_eq!(alice.data("m").await["messageAdded"]["body"], "after");
        alice.expect_silence(Duration::from_millis(500)).await;
        let me = "query { me { id } }";
        alice.subscribe("me", me, json!({})).await;
        assert_eq!(alice.data("me").await["me"]["id"], "alice");
    }
}

#[tokio::test]
async fn another_users_token_is_forbidden_and_the_connection_keeps_its_user_and_timer() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let bob = cli_token("bob", "user");
    let short = cli_token_ttl("alice", "user", "3s");
    let mut alice = GqlSocket::user(&server, &short).await;
    let opened = Instant::now();

    let refused = authenticate(&mut alice, "auth", &bob).await;
    assert_eq!(error_code(&refused), "FORBIDDEN", "{refused}");
    alice
        .subscribe("me", "query { me { id } }", json!({}))
        .await;
    assert_eq!(alice.data("me").await["me"]["id"], "alice");

    // Nothing changed: the first token's expiry still closes the connection.
    let closed = alice.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4403, "token expired")
    );
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "closed at the first expiry"
    );
    // Bob's token provisioned nobody along the way.
    let admin = cli_token("root", "admin");
    let body = server
        .gql(Some(&admin), "{ user(id: \"bob\") { id } }", json!({}))
        .await;
    assert_eq!(body["data"]["user"], Value::Null, "{body}");
}

#[tokio::test]
async fn an_expired_or_invalid_token_is_refused_and_the_old_timer_still_runs() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let short = cli_token_ttl("alice", "user", "3s");
    let mut alice = GqlSocket::user(&server, &short).await;
    let opened = Instant::now();

    // Expired well past the tolerated clock skew.
    let expired = hs256(json!({ "sub": "alice", "name": "alice", "role": "user",
        "iat": now() - 3600, "exp": now() - 60 }));
    // Expired within it: a sign-in would take it, a renewal must not.
    let just_expired = hs256(json!({ "sub": "alice", "name": "alice", "role": "user",
        "iat": now() - 3600, "exp": now() - 1 }));
    let forged = hs256(json!({ "sub": "alice", "exp": now() + 3600 })).replace('.', ".x");
    for (id, token) in [
        ("expired", expired.as_str()),
        ("just-expired", &just_expired),
        ("forged", &forged),
        ("empty", ""),
    ] {
        let refused = authenticate(&mut alice, id, token).await;
        assert_eq!(error_code(&refused), "UNAUTHENTICATED", "{id}: {refused}");
    }
    let closed = alice.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4403, "token expired")
    );
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "closed at the first expiry"
    );
}

#[tokio::test]
async fn a_token_revoked_on_one_instance_renews_and_refreshes_on_none() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let first = TestServer::start(&db, &[]);
        let second = TestServer::start(&db, &[]);
        let admin = cli_token("root", "admin");
        let old = cli_token("alice", "user");
        let me = server_me(&second, &old).await;
        assert_eq!(me, "alice");
        // A socket on the second instance, which hears of no disconnect order (no Redis here):
        // only the revocation the database keeps stands between it and a fresh token.
        let mut stale = GqlSocket::user(&second, &old).await;

        first
            .ok(
                Some(&admin),
                "mutation { disconnectUser(userId: \"alice\") }",
                json!({}),
            )
            .await;
        // Revocation voids the tokens issued until that second: the next one is issued later.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let fresh = cli_token_ttl("alice", "user", "3s");
        let mut alice = GqlSocket::user(&second, &fresh).await;
        let opened = Instant::now();
        let refused = authenticate(&mut alice, "auth", &old).await;
        assert_eq!(error_code(&refused), "UNAUTHENTICATED", "{refused}");
        for server in [&first, &second] {
            let code = server.err_code(Some(&old), REFRESH, json!({})).await;
            assert_eq!(code, "UNAUTHENTICATED");
        }
        stale.subscribe("refresh", REFRESH, json!({})).await;
        assert_eq!(stale.error_code("refresh").await, "UNAUTHENTICATED");
        let refused = authenticate(&mut stale, "auth", &old).await;
        assert_eq!(error_code(&refused), "UNAUTHENTICATED", "{refused}");
        let closed = alice.closed().await;
        assert_eq!(closed.code, 4403, "the fresh token's timer still runs");
        assert!(opened.elapsed() < Duration::from_secs(5));
    }
}

async fn server_me(server: &TestServer, token: &str) -> String {
    let data = server.ok(Some(token), "{ me { id } }", json!({})).await;
    data["me"]["id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn authenticate_over_http_is_bad_user_input_with_a_clear_message() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token("alice", "user");
    let body = server
        .gql(Some(&alice), AUTHENTICATE, json!({ "t": alice }))
        .await;
    let error = &body["errors"][0];
    assert_eq!(error["extensions"]["code"], "BAD_USER_INPUT", "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("WebSocket"), "{message}");
}

#[tokio::test]
async fn refresh_token_gives_a_working_fresh_token_for_one_issued_here() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = cli_token_ttl("alice", "admin", "1m");
    let data = server.ok(Some(&alice), REFRESH, json!({})).await;
    let fresh = data["refreshToken"]["token"].as_str().expect("a token");
    assert_ne!(fresh, alice);
    let role = server
        .ok(Some(fresh), "{ me { id role } }", json!({}))
        .await;
    assert_eq!(role["me"], json!({ "id": "alice", "role": "admin" }));
    assert_eq!(
        server.err_code(None, REFRESH, json!({})).await,
        "UNAUTHENTICATED"
    );
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl {args:?}");
}

#[tokio::test]
async fn an_identity_providers_token_is_not_refreshed_here_but_renews_a_connection() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let dir = db.dir().to_path_buf();
    let key = dir.join("ec.pem").to_string_lossy().into_owned();
    let pkcs8 = dir.join("ec-pkcs8.pem").to_string_lossy().into_owned();
    let public = dir.join("ec-pub.pem").to_string_lossy().into_owned();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &key,
    ]);
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", &key, "-out", &pkcs8]);
    openssl(&["ec", "-in", &key, "-pubout", "-out", &public]);
    let server = TestServer::start(&db, &[("TIDINGS_JWT_PUBLIC_KEY", &public)]);
    let signing = EncodingKey::from_ec_pem(&std::fs::read(&pkcs8).expect("key")).expect("ec key");
    let es256 = |ttl: i64| {
        let claims = json!({ "sub": "ivy", "name": "ivy", "iat": now(), "exp": now() + ttl });
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &signing).expect("mint")
    };

    let body = server.gql(Some(&es256(600)), REFRESH, json!({})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("identity provider"), "{message}");

    // Its client renews with the provider, then hands the new token to the connection.
    let mut ivy = GqlSocket::user(&server, &es256(3)).await;
    let renewed = authenticate(&mut ivy, "auth", &es256(600)).await;
    assert_eq!(
        renewed["payload"]["data"]["authenticate"]["user"]["id"], "ivy",
        "{renewed}"
    );
    ivy.expect_silence(Duration::from_secs(4)).await;
}

#[tokio::test]
async fn dropped_rights_end_the_streams_the_new_token_no_longer_allows() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let bob = cli_token("bob", "user");
        join(&server, &bob, "bobs").await;
        let admin = cli_token("alice", "admin");
        join(&server, &admin, "mine").await;
        let mut alice = GqlSocket::user(&server, &admin).await;
        // An admin reads rooms they are not in and the admins' channel: shared executions
        // (no `after`), and subscriptions of their own (with `after`, or their own channels).
        let after = "subscription($r: ID!) { messageAdded(roomId: $r, after: \"0\") { id body } }";
        let channels = "subscription { events(channels: [\"role:admin\"]) { type } }";
        let own = "subscription { events { type channel } }";
        alice
            .subscribe("shared", MESSAGE_ADDED, json!({ "r": "bobs" }))
            .await;
        alice.subscribe("own", after, json!({ "r": "bobs" })).await;
        alice.subscribe("admins", channels, json!({})).await;
        alice.subscribe("mine-events", own, json!({})).await;
        alice
            .subscribe("member", MESSAGE_ADDED, json!({ "r": "mine" }))
            .await;
        alice
            .subscribe("member-own", after, json!({ "r": "mine" }))
            .await;
        // The replays: bob's and alice's "joined" messages.
        assert!(alice.data("own").await["messageAdded"]["id"].is_string());
        assert!(alice.data("member-own").await["messageAdded"]["id"].is_string());
        tokio::time::sleep(Duration::from_millis(300)).await;

        let demoted = cli_token("alice", "user");
        let renewed = authenticate(&mut alice, "auth", &demoted).await;
        assert_eq!(
            renewed["payload"]["data"]["authenticate"]["user"]["role"], "user",
            "{renewed}"
        );
        for id in ["shared", "own", "admins", "mine-events"] {
            assert_eq!(alice.error_code(id).await, "FORBIDDEN", "{id}");
            assert_eq!(alice.frame_for(id).await["type"], "complete", "{id}");
        }
        // What the new token still allows goes on.
        send(&server, &admin, "mine", "still here").await;
        for id in ["member", "member-own"] {
            assert_eq!(
                alice.data(id).await["messageAdded"]["body"],
                "still here",
                "{id}"
            );
        }
        send(&server, &bob, "bobs", "not for alice").await;
        alice.expect_silence(Duration::from_millis(500)).await;

        // No longer an admin, alice's streams of her room end when she leaves it, as a
        // member's do: her own "left" message last, then FORBIDDEN.
        server
            .ok(
                Some(&demoted),
                "mutation { leaveRoom(roomId: \"mine\") }",
                json!({}),
            )
            .await;
        for id in ["member", "member-own"] {
            let left = alice.data(id).await;
            assert_eq!(left["messageAdded"]["body"], "alice left", "{id}: {left}");
            assert_eq!(alice.error_code(id).await, "FORBIDDEN", "{id}");
        }
    }
}

#[tokio::test]
async fn ws_sockets_learn_the_expiry_are_warned_and_renew_with_auth() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_TOKEN_WARNING", "4s")]);
    // Minted before the clock starts: the first token lasts 6 s at most.
    let bob = cli_token("bob", "user");
    let long = cli_token("alice", "user");
    let short = cli_token_ttl("alice", "user", "6s");
    let mut alice = LegacyClient::open(&server, &format!("/ws?token={short}")).await;
    let opened = Instant::now();
    let welcome = alice.next().await;
    assert_eq!(welcome["type"], "system", "{welcome}");
    let expiry = expires_at(&welcome["expires_at"]);
    assert!((now()..=now() + 6).contains(&expiry), "{welcome}");
    assert_eq!(welcome["data"]["expires_at"], welcome["expires_at"]);

    // Refusals change nothing and leave the socket open.
    for (token, code) in [
        (bob.as_str(), "FORBIDDEN"),
        ("not-a-token", "UNAUTHENTICATED"),
    ] {
        alice.send(json!({ "type": "auth", "token": token })).await;
        let error = alice.next_of("error").await;
        assert_eq!(error["code"], code, "{error}");
    }

    let warning = alice.next_of("token_expiring").await;
    assert_eq!(expires_at(&warning["expires_at"]), expiry, "{warning}");
    let warned = opened.elapsed();
    assert!(
        warned < Duration::from_secs(6),
        "warned before expiry ({warned:?})"
    );

    alice.send(json!({ "type": "auth", "token": long })).await;
    let ok = alice.next_of("auth_ok").await;
    assert!(expires_at(&ok["expires_at"]) > now() + 3000, "{ok}");
    // Past the first token's expiry, the socket is open and answers.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(opened.elapsed())).await;
    alice.sync().await;
}

#[tokio::test]
async fn ws_sockets_without_renewal_close_at_expiry_after_their_warning() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_TOKEN_WARNING", "2s")]);
    let short = cli_token_ttl("alice", "user", "3s");
    let mut alice = LegacyClient::user(&server, &short).await;
    alice.next_of("token_expiring").await;
    let closed = alice.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4001, "token expired")
    );
}

#[tokio::test]
async fn a_ws_socket_renewed_with_fewer_rights_stops_what_they_no_longer_allow() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let root = cli_token("root", "admin");
    let demoted = cli_token("alice", "user");
    let mut alice = LegacyClient::user(&server, &cli_token("alice", "admin")).await;
    let publish = "mutation($c: String!, $t: String!) { publish(channel: $c, type: $t) { id } }";
    // An admin's socket follows the admins' channel, its role's own.
    server
        .ok(
            Some(&root),
            publish,
            json!({ "c": "role:admin", "t": "for.admins" }),
        )
        .await;
    alice.next_of("for.admins").await;

    alice
        .send(json!({ "type": "auth", "token": demoted }))
        .await;
    alice.next_of("auth_ok").await;
    let stopped = alice.next_of("error").await;
    assert_eq!(stopped["code"], "FORBIDDEN", "{stopped}");
    alice.sync().await;
    server
        .ok(
            Some(&root),
            publish,
            json!({ "c": "role:admin", "t": "for.admins" }),
        )
        .await;
    // Its new role's channel is followed instead.
    server
        .ok(
            Some(&root),
            publish,
            json!({ "c": "role:user", "t": "for.users" }),
        )
        .await;
    alice.next_of("for.users").await;
    alice
        .expect_none_of("for.admins", Duration::from_millis(500))
        .await;
}
