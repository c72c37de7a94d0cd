//! The schema file is what the code serves, and it is usable for code generation: typed
//! client code generated from `schema.graphql` talks to a live server.

mod common;

use common::*;
use graphql_client::{GraphQLQuery, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[allow(clippy::upper_case_acronyms)]
type DateTime = String;

#[derive(GraphQLQuery)]
#[graphql(
    schema_path = "schema.graphql",
    query_path = "tests/graphql/chat.graphql",
    response_derives = "Debug"
)]
struct Register;

#[derive(GraphQLQuery)]
#[graphql(
    schema_path = "schema.graphql",
    query_path = "tests/graphql/chat.graphql",
    response_derives = "Debug"
)]
struct JoinRoom;

#[derive(GraphQLQuery)]
#[graphql(
    schema_path = "schema.graphql",
    query_path = "tests/graphql/chat.graphql",
    response_derives = "Debug"
)]
struct SendMessage;

#[derive(GraphQLQuery)]
#[graphql(
    schema_path = "schema.graphql",
    query_path = "tests/graphql/chat.graphql",
    response_derives = "Debug"
)]
struct History;

#[test]
fn schema_graphql_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let on_disk = std::fs::read_to_string(path).expect("schema.graphql exists");
    let generated = tidings::graphql::sdl();
    assert!(
        on_disk == generated,
        "schema.graphql is out of date: run `cargo run -- schema --out schema.graphql`"
    );
}

#[test]
fn the_cli_prints_the_same_schema() {
    let out = std::process::Command::new(BIN)
        .arg("schema")
        .output()
        .expect("run tidings schema");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf-8"),
        tidings::graphql::sdl()
    );
}

async fn run<Q: GraphQLQuery>(
    server: &TestServer,
    token: Option<&str>,
    vars: Q::Variables,
) -> Q::ResponseData
where
    Q::Variables: Serialize,
    Q::ResponseData: DeserializeOwned,
{
    let mut req = http()
        .post(server.url("/graphql"))
        .json(&Q::build_query(vars));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp: Response<Q::ResponseData> = req
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("decode typed response");
    assert!(resp.errors.is_none(), "errors: {:?}", resp.errors);
    resp.data.expect("data")
}

#[tokio::test]
async fn typed_client_code_generated_from_the_schema_works_against_the_server() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let reg = run::<Register>(
        &server,
        None,
        register::Variables {
            username: "typed".into(),
            password: "long enough secret".into(),
        },
    )
    .await;
    assert_eq!(reg.register.user.username, "typed");
    let token = reg.register.token;
    let room = run::<JoinRoom>(
        &server,
        Some(&token),
        join_room::Variables {
            room_id: "codegen".into(),
        },
    )
    .await;
    assert_eq!(room.join_room.member_count, 1);
    let sent = run::<SendMessage>(
        &server,
        Some(&token),
        send_message::Variables {
            room_id: "codegen".into(),
            body: "typed hello".into(),
            client_message_id: Some("t-1".into()),
        },
    )
    .await;
    assert!(matches!(
        sent.send_message.kind,
        send_message::MessageKind::USER
    ));
    assert!(
        chrono::DateTime::parse_from_rfc3339(&sent.send_message.created_at).is_ok(),
        "createdAt is RFC 3339"
    );
    let hist = run::<History>(
        &server,
        Some(&token),
        history::Variables {
            room_id: "codegen".into(),
            before: None,
            last: Some(10),
        },
    )
    .await;
    let bodies: Vec<_> = hist.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, vec!["typed joined", "typed hello"]);
    assert_eq!(
        hist.messages[1]
            .sender
            .as_ref()
            .map(|s| s.username.as_str()),
        Some("typed")
    );
}
