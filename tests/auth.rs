//! Accounts and tokens: register, login, CLI tokens, provisioning from a token, expiry,
//! identity-provider keys.

mod common;

use std::process::Command;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ME: &str = "{ me { id username role points } }";

fn mint(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn register_returns_a_token_that_signs_the_user_in() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let data = server
            .ok(
                None,
                "mutation { register(username: \"alice\", password: \"correct horse battery\") { token user { id username role points } } }",
                json!({}),
            )
            .await;
        assert_eq!(
            data["register"]["user"]["username"],
            "alice",
            "{}",
            backend.name()
        );
        assert_eq!(data["register"]["user"]["role"], "user");
        let token = data["register"]["token"].as_str().expect("token");
        let me = server.ok(Some(token), ME, json!({})).await;
        assert_eq!(me["me"]["username"], "alice");
        assert_eq!(me["me"]["id"], data["register"]["user"]["id"]);
    }
}

#[tokio::test]
async fn register_refuses_taken_and_malformed_names_and_short_passwords() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        register(&server, "bob").await;
        let q =
            "mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token } }";
        for (u, p) in [
            ("bob", "another long password"),
            ("no spaces", "long enough password"),
            ("", "long enough password"),
            ("carol", "short"),
        ] {
            let code = server.err_code(None, q, json!({ "u": u, "p": p })).await;
            assert_eq!(code, "BAD_USER_INPUT", "{u:?}/{p:?} on {}", backend.name());
        }
    }
}

#[tokio::test]
async fn login_checks_the_password() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        register(&server, "dave").await;
        let q = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token user { username } } }";
        let data = server
            .ok(
                None,
                q,
                json!({ "u": "dave", "p": "correct horse battery" }),
            )
            .await;
        let token = data["login"]["token"].as_str().expect("token");
        assert_eq!(
            server.ok(Some(token), ME, json!({})).await["me"]["username"],
            "dave"
        );

        let body = server
            .gql(None, q, json!({ "u": "dave", "p": "wrong password!" }))
            .await;
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
        assert_eq!(body["errors"][0]["message"], "invalid username or password");
        assert!(body["data"].is_null(), "{body}");
        let code = server
            .err_code(None, q, json!({ "u": "nobody", "p": "whatever password" }))
            .await;
        assert_eq!(code, "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn a_cli_token_provisions_its_user_on_first_use() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let token = cli_token("erin", "user");
        let me = server.ok(Some(&token), ME, json!({})).await;
        assert_eq!(
            me["me"],
            json!({ "id": "erin", "username": "erin", "role": "user", "points": 0 })
        );
        let admin = cli_token("ops", "admin");
        assert_eq!(
            server.ok(Some(&admin), ME, json!({})).await["me"]["role"],
            "admin"
        );
    }
}

#[tokio::test]
async fn an_identity_provider_token_provisions_by_sub_with_its_name() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        register(&server, "frank").await;
        // `name` taken by a registered account: the provisioned user falls back to its id.
        let token =
            mint(json!({ "sub": "idp|123", "name": "frank", "exp": now() + 600, "iat": now() }));
        let me = server.ok(Some(&token), ME, json!({})).await;
        assert_eq!(me["me"]["id"], "idp|123");
        assert_eq!(me["me"]["username"], "idp|123");
        let token = mint(json!({ "sub": "idp|456", "name": "grace", "exp": now() + 600 }));
        let me = server.ok(Some(&token), ME, json!({})).await;
        assert_eq!(me["me"]["id"], "idp|456");
        assert_eq!(me["me"]["username"], "grace");
        // The same token again finds the same user.
        assert_eq!(
            server.ok(Some(&token), ME, json!({})).await["me"]["username"],
            "grace"
        );
    }
}

#[tokio::test]
async fn expired_forged_and_malformed_tokens_get_401_unauthenticated() {
    let backend = Backend::Sqlite;
    let (server, _db) = server(&backend).await;
    let expired = mint(json!({ "sub": "henry", "exp": now() - 120 }));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "henry", "exp": now() + 600 }),
        &EncodingKey::from_secret(b"not the secret"),
    )
    .expect("mint");
    for (token, message) in [
        (expired.as_str(), "token expired"),
        (forged.as_str(), "invalid token"),
        ("not-a-jwt", "invalid token"),
    ] {
        let resp = http()
            .post(server.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": ME }))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 401);
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
        assert_eq!(body["errors"][0]["message"], message);
    }
    // No token at all is anonymous, not an error.
    assert_eq!(server.ok(None, ME, json!({})).await["me"], json!(null));
}

#[tokio::test]
async fn anonymous_viewers_must_sign_in_for_rooms_and_messages() {
    let (server, _db) = server(&Backend::Sqlite).await;
    assert_eq!(
        server.err_code(None, "{ rooms { id } }", json!({})).await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        server
            .err_code(
                None,
                "mutation { joinRoom(roomId: \"x\") { id } }",
                json!({})
            )
            .await,
        "UNAUTHENTICATED"
    );
    assert_eq!(
        server
            .err_code(None, "{ messages(roomId: \"x\") { id } }", json!({}))
            .await,
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
async fn es256_tokens_from_a_public_key_are_accepted_with_issuer_and_audience_checked() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let dir = db.dir().to_path_buf();
    let key = dir.join("ec.pem");
    let pkcs8 = dir.join("ec-pkcs8.pem");
    let public = dir.join("ec-pub.pem");
    let (key, pkcs8, public) = (
        key.to_str().unwrap(),
        pkcs8.to_str().unwrap(),
        public.to_str().unwrap(),
    );
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        key,
    ]);
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", key, "-out", pkcs8]);
    openssl(&["ec", "-in", key, "-pubout", "-out", public]);
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_JWT_PUBLIC_KEY", public),
            ("TIDINGS_JWT_ISSUER", "https://id.example"),
            ("TIDINGS_JWT_AUDIENCE", "tidings"),
        ],
    );
    let signing = EncodingKey::from_ec_pem(&std::fs::read(pkcs8).expect("key")).expect("ec key");
    let es256 = |claims: serde_json::Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &signing).expect("mint")
    };
    let good = es256(
        json!({ "sub": "u-1", "name": "ivy", "role": "admin", "exp": now() + 600,
        "iss": "https://id.example", "aud": "tidings" }),
    );
    let me = server.ok(Some(&good), ME, json!({})).await;
    assert_eq!(me["me"]["username"], "ivy");
    assert_eq!(me["me"]["role"], "admin");
    for bad in [
        json!({ "sub": "u-1", "exp": now() + 600, "iss": "https://evil.example", "aud": "tidings" }),
        json!({ "sub": "u-1", "exp": now() + 600, "iss": "https://id.example", "aud": "other" }),
        json!({ "sub": "u-1", "exp": now() + 600 }),
    ] {
        let resp = http()
            .post(server.url("/graphql"))
            .bearer_auth(es256(bad.clone()))
            .json(&json!({ "query": ME }))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 401, "{bad}");
    }
}

/// Connect storms sign many users in at once: their users are read (and provisioned) together,
/// and each sign-in still gets its own user, its own name and its own revocation check.
#[tokio::test]
async fn sign_ins_arriving_together_each_get_their_own_user_and_revocation() {
    const CROWD: usize = 120;
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        // A crowd from one address: its sockets count as anonymous until they sign in.
        let server = TestServer::start(&db, &[("TIDINGS_RATE_LIMITS", "off")]);
        let admin = cli_token("ops", "admin");
        // A user signed in before, then revoked: its old token must stay refused in the crowd.
        let revoked = mint(json!({ "sub": "mallory", "exp": now() + 600, "iat": now() - 5 }));
        server.ok(Some(&revoked), ME, json!({})).await;
        let done = server
            .ok(
                Some(&admin),
                "mutation { disconnectUser(userId: \"mallory\") }",
                json!({}),
            )
            .await;
        assert_eq!(done["disconnectUser"], true);
        // A user stored as `user` whose new token says `admin`.
        server
            .ok(Some(&cli_token("rita", "user")), ME, json!({}))
            .await;
        let before =
            sample(&metrics(&server).await, "tidings_sign_in_batches_total").unwrap_or(0.0);

        let mut tokens: Vec<String> = (0..CROWD)
            .map(|i| mint(json!({ "sub": format!("crowd-{i}"), "name": format!("c{i}"), "exp": now() + 600, "iat": now() })))
            .collect();
        // Two first sign-ins that want one name.
        tokens.push(mint(
            json!({ "sub": "idp|a", "name": "twin", "exp": now() + 600, "iat": now() }),
        ));
        tokens.push(mint(
            json!({ "sub": "idp|b", "name": "twin", "exp": now() + 600, "iat": now() }),
        ));
        tokens.push(cli_token("rita", "admin"));
        let sockets =
            futures_util::future::join_all(tokens.iter().map(|t| GqlSocket::user(&server, t)));
        let refused = async {
            let mut ws = GqlSocket::open(&server, TRANSPORT_WS, "").await;
            ws.send(json!({ "type": "connection_init", "payload": { "authToken": revoked } }))
                .await;
            ws.closed().await
        };
        let (sockets, refused) = tokio::join!(sockets, refused);
        assert_eq!(sockets.len(), CROWD + 3, "{}", backend.name());
        assert_eq!(
            refused.code, 4403,
            "a revoked token is refused in a crowd too"
        );

        for i in [0, CROWD / 2, CROWD - 1] {
            let token = &tokens[i];
            let me = server.ok(Some(token), ME, json!({})).await;
            assert_eq!(me["me"]["id"], format!("crowd-{i}"));
            assert_eq!(me["me"]["username"], format!("c{i}"), "{}", backend.name());
        }
        let a = server.ok(Some(&tokens[CROWD]), ME, json!({})).await;
        let b = server.ok(Some(&tokens[CROWD + 1]), ME, json!({})).await;
        let mut names = [a["me"]["username"].clone(), b["me"]["username"].clone()];
        names.sort_by_key(|n| n.to_string());
        assert!(
            names == [json!("idp|a"), json!("twin")] || names == [json!("idp|b"), json!("twin")],
            "one gets the name, the other its id: {names:?} on {}",
            backend.name()
        );
        assert_eq!(
            server.ok(Some(&tokens[CROWD + 2]), ME, json!({})).await["me"]["role"],
            "admin",
            "the token's role is stored"
        );

        let text = metrics(&server).await;
        let batches = sample(&text, "tidings_sign_in_batches_total").unwrap_or(0.0) - before;
        assert!(
            batches < (CROWD + 4) as f64,
            "{batches} batches for {} sign-ins: they were read one by one",
            CROWD + 4
        );
        for ws in sockets {
            ws.close().await;
        }
    }
}
