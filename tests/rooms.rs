//! Rooms: joining (which creates public rooms), leaving, private rooms and invitations, and
//! who may read what.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn joining_creates_a_public_room_and_announces_the_member() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let room = join(&server, &alice, "lobby").await;
        assert_eq!(
            room,
            json!({ "id": "lobby", "title": "lobby", "isPrivate": false, "memberCount": 1 }),
            "{}",
            backend.name()
        );
        let bob = cli_token("bob", "user");
        assert_eq!(join(&server, &bob, "lobby").await["memberCount"], 2);
        // Joining again changes nothing and announces nothing.
        assert_eq!(join(&server, &bob, "lobby").await["memberCount"], 2);
        let messages = history(&server, &alice, "lobby").await;
        let system: Vec<_> = messages
            .iter()
            .map(|m| {
                (
                    m["kind"].as_str().unwrap(),
                    m["body"].as_str().unwrap(),
                    m["sender"].is_null(),
                )
            })
            .collect();
        assert_eq!(
            system,
            vec![
                ("SYSTEM", "alice joined", true),
                ("SYSTEM", "bob joined", true)
            ]
        );
        let members = server
            .ok(
                Some(&alice),
                "{ room(id: \"lobby\") { members { username } } }",
                json!({}),
            )
            .await;
        assert_eq!(
            members["room"]["members"],
            json!([{ "username": "alice" }, { "username": "bob" }])
        );
    }
}

#[tokio::test]
async fn leaving_announces_it_and_ends_read_access() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        let left = server
            .ok(
                Some(&bob),
                "mutation { leaveRoom(roomId: \"lobby\") }",
                json!({}),
            )
            .await;
        assert_eq!(left["leaveRoom"], true);
        let again = server
            .ok(
                Some(&bob),
                "mutation { leaveRoom(roomId: \"lobby\") }",
                json!({}),
            )
            .await;
        assert_eq!(again["leaveRoom"], false, "not a member any more");
        let last = history(&server, &alice, "lobby")
            .await
            .pop()
            .expect("a message");
        assert_eq!(
            (last["kind"].as_str(), last["body"].as_str()),
            (Some("SYSTEM"), Some("bob left"))
        );
        let code = server
            .err_code(
                Some(&bob),
                "{ messages(roomId: \"lobby\") { id } }",
                json!({}),
            )
            .await;
        assert_eq!(code, "FORBIDDEN");
    }
}

#[tokio::test]
async fn private_rooms_admit_by_invitation_only() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        let created = server
            .ok(
                Some(&alice),
                "mutation { createRoom(id: \"secret\", title: \"Secret plans\", isPrivate: true) { id title isPrivate memberCount } }",
                json!({}),
            )
            .await;
        assert_eq!(
            created["createRoom"],
            json!({ "id": "secret", "title": "Secret plans", "isPrivate": true, "memberCount": 1 })
        );
        let join_q = "mutation { joinRoom(roomId: \"secret\") { id } }";
        assert_eq!(
            server.err_code(Some(&bob), join_q, json!({})).await,
            "FORBIDDEN",
            "{}",
            backend.name()
        );
        assert_eq!(
            server
                .err_code(Some(&bob), "{ room(id: \"secret\") { id } }", json!({}))
                .await,
            "FORBIDDEN"
        );
        let rooms = server.ok(Some(&bob), "{ rooms { id } }", json!({})).await;
        assert_eq!(rooms["rooms"], json!([]), "bob cannot see the private room");
        // Only members invite.
        let invite = "mutation($u: ID!) { inviteToRoom(roomId: \"secret\", userId: $u) }";
        assert_eq!(
            server
                .err_code(Some(&bob), invite, json!({ "u": "bob" }))
                .await,
            "FORBIDDEN"
        );
        assert_eq!(
            server
                .err_code(Some(&alice), invite, json!({ "u": "nobody" }))
                .await,
            "NOT_FOUND"
        );
        assert_eq!(
            server.ok(Some(&alice), invite, json!({ "u": "bob" })).await["inviteToRoom"],
            true
        );
        assert_eq!(
            server.ok(Some(&bob), join_q, json!({})).await["joinRoom"]["id"],
            "secret"
        );
        let rooms = server.ok(Some(&bob), "{ rooms { id } }", json!({})).await;
        assert_eq!(rooms["rooms"], json!([{ "id": "secret" }]));
        let bodies: Vec<_> = history(&server, &bob, "secret")
            .await
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(bodies, vec!["alice joined", "bob joined"]);
    }
}

#[tokio::test]
async fn creating_an_existing_room_or_a_bad_slug_is_bad_input() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let alice = register(&server, "alice").await;
    join(&server, &alice, "lobby").await;
    let create = "mutation($id: ID!) { createRoom(id: $id) { id } }";
    for id in ["lobby", "Upper", "with space", "", &"x".repeat(65)] {
        assert_eq!(
            server
                .err_code(Some(&alice), create, json!({ "id": id }))
                .await,
            "BAD_USER_INPUT",
            "{id:?}"
        );
    }
    let code = server
        .err_code(
            Some(&alice),
            "mutation { joinRoom(roomId: \"Not/A/Slug\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    let code = server
        .err_code(
            Some(&alice),
            "mutation { leaveRoom(roomId: \"nowhere\") }",
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    assert_eq!(
        server
            .ok(Some(&alice), "{ room(id: \"nowhere\") { id } }", json!({}))
            .await["room"],
        json!(null)
    );
}
