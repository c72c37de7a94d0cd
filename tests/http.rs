//! The HTTP surface: content negotiation, request errors, body limits, health, the CLI's
//! migrate command.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn health_reports_the_database() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let resp = http()
            .get(server.url("/health"))
            .send()
            .await
            .expect("GET /health");
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["status"], "ok");
        assert_eq!(body["database"], "ok", "{}", backend.name());
        assert_eq!(body["redis"], "disabled");
    }
}

#[tokio::test]
async fn graphql_response_json_is_served_when_accepted_with_400_for_invalid_requests() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let post = |accept: &'static str, query: &'static str| {
        http()
            .post(server.url("/graphql"))
            .header("accept", accept)
            .json(&json!({ "query": query }))
            .send()
    };
    let resp = post("application/graphql-response+json", "{ me { id } }")
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/graphql-response+json"
    );
    // A request that never executed, because it does not validate or does not parse: 400,
    // and no `data` entry at all (GraphQL over HTTP: it SHOULD be absent).
    for (query, what) in [
        ("{ nope }", "a validation error"),
        ("{ me { id ", "a parse error"),
    ] {
        let resp = post("application/graphql-response+json", query)
            .await
            .expect("post");
        assert_eq!(resp.status(), 400, "{what}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/graphql-response+json",
            "{what}"
        );
        let body: Value = resp.json().await.expect("json");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{what}: {body}"
        );
        assert!(
            body.get("data").is_none(),
            "{what} has a data entry: {body}"
        );
    }
    // Under application/json the same requests are 200, and the body is async-graphql's
    // response as it is: `data` is there, null.
    for (query, what) in [
        ("{ nope }", "a validation error"),
        ("{ me { id ", "a parse error"),
    ] {
        let resp = post("application/json", query).await.expect("post");
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{what}: parse errors carry a code too: {body}"
        );
        assert_eq!(body.get("data"), Some(&Value::Null), "{what}: {body}");
    }
    // An error while executing is not a request error: 200 and a `data` entry under either.
    for accept in ["application/graphql-response+json", "application/json"] {
        let resp = post(accept, "{ notifications { id } }")
            .await
            .expect("post");
        assert_eq!(resp.status(), 200, "{accept}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
            "{accept}: {body}"
        );
        assert!(body.get("data").is_some(), "{accept}: {body}");
    }
}

#[tokio::test]
async fn malformed_bodies_and_wrong_content_types_are_refused_cleanly() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let raw = |ct: &'static str, body: Vec<u8>| {
        http()
            .post(server.url("/graphql"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let resp = raw("application/json", b"{not json".to_vec())
        .await
        .expect("post");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let resp = raw("text/plain", br#"{"query":"{ me { id } }"}"#.to_vec())
        .await
        .expect("post");
    assert_eq!(resp.status(), 415);
    let huge = format!(
        r#"{{"query":"{{ me {{ id }} }}","variables":{{"x":"{}"}}}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    let resp = raw("application/json", huge.into_bytes())
        .await
        .expect("post");
    assert_eq!(resp.status(), 413);
    // Wrong variable types are a GraphQL error, not a crash.
    let body = server
        .gql(
            None,
            "query($l: Int) { messages(roomId: \"x\", last: $l) { id } }",
            json!({ "l": "many" }),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    // And the server still serves.
    let resp = http()
        .get(server.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn deeply_nested_queries_are_too_complex() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let token = cli_token("deep", "user");
    let mut q = String::from("id");
    for _ in 0..20 {
        q = format!("members {{ {q} }}");
    }
    // Room.members returns users, which do not nest further; nesting through an introspection
    // type shows the depth limit without needing a cyclic schema.
    let mut intro = String::from("name");
    for _ in 0..20 {
        intro = format!("ofType {{ {intro} }}");
    }
    let query = format!("{{ __type(name: \"Room\") {{ {intro} }} }}");
    let code = server.err_code(Some(&token), &query, json!({})).await;
    assert_eq!(code, "TOO_COMPLEX");
}

#[tokio::test]
async fn migrate_status_lists_applied_migrations_and_down_reverts() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let migrate = |action: &str| {
            std::process::Command::new(BIN)
                .args(["migrate", action])
                .env("TIDINGS_DATABASE_URL", &db.url)
                .output()
                .expect("run tidings migrate")
        };
        assert!(migrate("up").status.success());
        let status = migrate("status");
        assert!(status.status.success());
        let text = String::from_utf8_lossy(&status.stdout).to_string();
        assert!(
            text.contains("m20261126_000001_initial") && text.contains("Applied"),
            "{text}"
        );
        assert!(migrate("down").status.success());
        let text = String::from_utf8_lossy(&migrate("status").stdout).to_string();
        assert!(
            text.contains("Pending"),
            "{} after down: {text}",
            backend.name()
        );
        // The server brings the schema back up on start.
        let server = TestServer::start(&db, &[]);
        let token = register(&server, "after").await;
        assert!(!token.is_empty());
    }
}
