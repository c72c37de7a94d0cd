//! Messages: sending, validation, idempotent retries, history paging, persistence.

mod common;

use common::*;
use serde_json::json;

const SEND: &str = "mutation($r: ID!, $b: String!, $c: String) { sendMessage(roomId: $r, body: $b, clientMessageId: $c) { id roomId kind body clientMessageId createdAt sender { id username points } } }";

#[tokio::test]
async fn a_sent_message_is_trimmed_stored_and_read_back_in_order() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        let sent = server
            .ok(
                Some(&alice),
                SEND,
                json!({ "r": "lobby", "b": "  hello world \n" }),
            )
            .await["sendMessage"]
            .clone();
        assert_eq!(sent["body"], "hello world", "{}", backend.name());
        assert_eq!(sent["kind"], "USER");
        assert_eq!(sent["roomId"], "lobby");
        assert_eq!(sent["sender"]["username"], "alice");
        assert_eq!(
            sent["sender"]["points"], 1,
            "one point per message by default"
        );
        let id: i64 = sent["id"]
            .as_str()
            .expect("id is a string")
            .parse()
            .expect("decimal id");
        let second = send(&server, &alice, "lobby", "second").await;
        let second_id: i64 = second["id"].as_str().unwrap().parse().unwrap();
        assert!(second_id > id);
        let bodies: Vec<_> = history(&server, &alice, "lobby")
            .await
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(bodies, vec!["alice joined", "hello world", "second"]);
    }
}

#[tokio::test]
async fn bodies_must_be_non_empty_and_at_most_5000_characters() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        for body in ["".to_owned(), "   \n\t ".to_owned(), "é".repeat(5001)] {
            let code = server
                .err_code(Some(&alice), SEND, json!({ "r": "lobby", "b": body }))
                .await;
            assert_eq!(
                code,
                "BAD_USER_INPUT",
                "{} chars on {}",
                body.chars().count(),
                backend.name()
            );
        }
        // Exactly 5000 characters (multi-byte) is fine.
        let max = "é".repeat(5000);
        let sent = server
            .ok(Some(&alice), SEND, json!({ "r": "lobby", "b": max }))
            .await;
        assert_eq!(
            sent["sendMessage"]["body"]
                .as_str()
                .map(|b| b.chars().count()),
            Some(5000)
        );
        let bodies = history(&server, &alice, "lobby").await;
        assert_eq!(
            bodies.len(),
            2,
            "only the join and the valid message were stored"
        );
    }
}

#[tokio::test]
async fn a_retry_with_the_same_client_message_id_returns_the_first_message() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        let vars = json!({ "r": "lobby", "b": "only once", "c": "c-1" });
        let first = server.ok(Some(&alice), SEND, vars.clone()).await["sendMessage"].clone();
        let retry = server.ok(Some(&alice), SEND, vars).await["sendMessage"].clone();
        assert_eq!(first, retry, "{}", backend.name());
        assert_eq!(first["clientMessageId"], "c-1");
        // The same client id from another sender is another message.
        let other = server
            .ok(
                Some(&bob),
                SEND,
                json!({ "r": "lobby", "b": "mine", "c": "c-1" }),
            )
            .await["sendMessage"]
            .clone();
        assert_ne!(other["id"], first["id"]);
        let users: Vec<_> = history(&server, &alice, "lobby")
            .await
            .into_iter()
            .filter(|m| m["kind"] == "USER")
            .collect();
        assert_eq!(users.len(), 2);
        let me = server
            .ok(Some(&alice), "{ me { points } }", json!({}))
            .await;
        assert_eq!(me["me"]["points"], 1, "a retry awards nothing");
    }
}

#[tokio::test]
async fn history_pages_backwards_with_before_and_last() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        for i in 1..=7 {
            send(&server, &alice, "lobby", &format!("m{i}")).await;
        }
        let q = "query($b: ID, $l: Int) { messages(roomId: \"lobby\", before: $b, last: $l) { id body } }";
        let page = server.ok(Some(&alice), q, json!({ "l": 3 })).await["messages"].clone();
        let bodies: Vec<_> = page
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, vec!["m5", "m6", "m7"], "{}", backend.name());
        let before = page[0]["id"].clone();
        let older = server
            .ok(Some(&alice), q, json!({ "b": before, "l": 3 }))
            .await["messages"]
            .clone();
        let bodies: Vec<_> = older
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, vec!["m2", "m3", "m4"]);
        // `last: null` means the default of 50.
        let all = server.ok(Some(&alice), q, json!({ "l": null })).await["messages"].clone();
        assert_eq!(all.as_array().unwrap().len(), 8);
        for bad in [
            json!({ "l": -1 }),
            json!({ "l": 201 }),
            json!({ "b": "abc" }),
        ] {
            assert_eq!(
                server.err_code(Some(&alice), q, bad.clone()).await,
                "BAD_USER_INPUT",
                "{bad}"
            );
        }
    }
}

#[tokio::test]
async fn only_members_send_and_read() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let mallory = register(&server, "mallory").await;
        join(&server, &alice, "lobby").await;
        let code = server
            .err_code(Some(&mallory), SEND, json!({ "r": "lobby", "b": "hi" }))
            .await;
        assert_eq!(code, "FORBIDDEN", "{}", backend.name());
        let code = server
            .err_code(
                Some(&mallory),
                "{ messages(roomId: \"lobby\") { id } }",
                json!({}),
            )
            .await;
        assert_eq!(code, "FORBIDDEN");
        let code = server
            .err_code(Some(&alice), SEND, json!({ "r": "nowhere", "b": "hi" }))
            .await;
        assert_eq!(code, "NOT_FOUND");
    }
}

#[tokio::test]
async fn messages_and_accounts_survive_a_restart() {
    for backend in backends() {
        let db = TestDb::new(&backend).await;
        let server = TestServer::start(&db, &[]);
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        send(&server, &alice, "lobby", "still here?").await;
        server.stop();

        let server = TestServer::start(&db, &[]);
        let bodies: Vec<_> = history(&server, &alice, "lobby")
            .await
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            bodies,
            vec!["alice joined", "still here?"],
            "{}",
            backend.name()
        );
        let login = server
            .ok(None, "mutation { login(username: \"alice\", password: \"correct horse battery\") { user { points } } }", json!({}))
            .await;
        assert_eq!(login["login"]["user"]["points"], 1);
    }
}

#[tokio::test]
async fn concurrent_senders_in_one_room_get_distinct_increasing_ids() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let mut tokens = Vec::new();
        for i in 0..4 {
            let t = cli_token(&format!("u{i}"), "user");
            join(&server, &t, "busy").await;
            tokens.push(t);
        }
        let sends = tokens
            .iter()
            .flat_map(|t| (0..10).map(move |n| (t.clone(), n)));
        let results = futures_util::future::join_all(sends.map(|(t, n)| {
            let server = &server;
            async move { send(server, &t, "busy", &format!("n{n}")).await }
        }))
        .await;
        let mut ids: Vec<i64> = results
            .iter()
            .map(|m| m["id"].as_str().unwrap().parse().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 40, "{}", backend.name());
        let stored: Vec<i64> = history(&server, &tokens[0], "busy")
            .await
            .iter()
            .filter(|m| m["kind"] == "USER")
            .map(|m| m["id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            stored, ids,
            "history is in id order and holds every message"
        );
    }
}
