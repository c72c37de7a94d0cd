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

#[tokio::test]
async fn sends_without_a_client_message_id_are_never_merged() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        let vars = json!({ "r": "lobby", "b": "same words" });
        let first = server.ok(Some(&alice), SEND, vars.clone()).await["sendMessage"].clone();
        let second = server.ok(Some(&alice), SEND, vars).await["sendMessage"].clone();
        assert_ne!(first["id"], second["id"], "{}", backend.name());
        assert_eq!(first["clientMessageId"], json!(null));
        assert_eq!(
            (&first["sender"]["points"], &second["sender"]["points"]),
            (&json!(1), &json!(2)),
            "each message is counted, and its sender is read after its own points"
        );
        // A client id used after id-less sends is a new message; its retry is not.
        let with_id = json!({ "r": "lobby", "b": "same words", "c": "c-9" });
        let third = server.ok(Some(&alice), SEND, with_id.clone()).await["sendMessage"].clone();
        let retry = server.ok(Some(&alice), SEND, with_id).await["sendMessage"].clone();
        assert_eq!(third, retry);
        assert_eq!(third["sender"]["points"], 3);
        let users = history(&server, &alice, "lobby")
            .await
            .into_iter()
            .filter(|m| m["kind"] == "USER")
            .count();
        assert_eq!(users, 3);
    }
}

#[tokio::test]
async fn a_retry_publishes_nothing_and_the_event_carries_the_sender() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        let last = last_message_id(&server, &alice, "lobby").await;
        let mut ws = GqlSocket::user(&server, &alice).await;
        ws.subscribe(
            "m",
            "subscription($a: ID) { messageAdded(roomId: \"lobby\", after: $a) { id body sender { username points } } }",
            json!({ "a": last }),
        )
        .await;
        let vars = json!({ "r": "lobby", "b": "once", "c": "k-1" });
        let first = server.ok(Some(&alice), SEND, vars.clone()).await["sendMessage"].clone();
        let live = ws.data("m").await["messageAdded"].clone();
        assert_eq!(live["id"], first["id"], "{}", backend.name());
        assert_eq!(
            live["sender"],
            json!({ "username": "alice", "points": 1 }),
            "the event carries the sender as of this message"
        );
        server.ok(Some(&alice), SEND, vars).await;
        let next = send(&server, &alice, "lobby", "after the retry").await;
        let live = ws.data("m").await["messageAdded"].clone();
        assert_eq!(live["body"], "after the retry", "the retry sent no event");
        assert_eq!(live["id"], next["id"]);
    }
}

#[tokio::test]
async fn a_retry_over_the_rate_limit_still_returns_the_first_message() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_RATE_MESSAGES", "1/1h"),
            ("TIDINGS_BURST_MESSAGES", "1"),
        ],
    );
    let alice = register(&server, "alice").await;
    join(&server, &alice, "lobby").await;
    let vars = json!({ "r": "lobby", "b": "only once", "c": "r-1" });
    let first = server.ok(Some(&alice), SEND, vars.clone()).await["sendMessage"].clone();
    let retry = server.ok(Some(&alice), SEND, vars).await["sendMessage"].clone();
    assert_eq!(first, retry);
    let code = server
        .err_code(
            Some(&alice),
            SEND,
            json!({ "r": "lobby", "b": "new", "c": "r-2" }),
        )
        .await;
    assert_eq!(code, "RATE_LIMITED", "a new message is still limited");
}

#[tokio::test]
async fn membership_is_answered_before_the_body_and_admins_send_anywhere() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let mallory = register(&server, "mallory").await;
        join(&server, &alice, "lobby").await;
        for (token, room, body, code) in [
            (&mallory, "lobby", "", "FORBIDDEN"),
            (&mallory, "lobby", "hi", "FORBIDDEN"),
            (&alice, "nowhere", "", "NOT_FOUND"),
            (&alice, "Not A Slug", "hi", "BAD_USER_INPUT"),
            (&alice, "lobby", "   ", "BAD_USER_INPUT"),
        ] {
            let got = server
                .err_code(Some(token), SEND, json!({ "r": room, "b": body }))
                .await;
            assert_eq!(got, code, "{room:?} {body:?} on {}", backend.name());
        }
        let left = server
            .ok(
                Some(&alice),
                "mutation { leaveRoom(roomId: \"lobby\") }",
                json!({}),
            )
            .await;
        assert_eq!(left["leaveRoom"], true);
        let code = server
            .err_code(Some(&alice), SEND, json!({ "r": "lobby", "b": "still?" }))
            .await;
        assert_eq!(code, "FORBIDDEN", "a member who left may no longer send");
        let admin = cli_token("root", "admin");
        let sent = server
            .ok(
                Some(&admin),
                SEND,
                json!({ "r": "lobby", "b": "from above" }),
            )
            .await;
        assert_eq!(sent["sendMessage"]["sender"]["username"], "root");
        let bodies: Vec<_> = history(&server, &admin, "lobby")
            .await
            .iter()
            .map(|m| m["body"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(bodies, vec!["alice joined", "alice left", "from above"]);
    }
}

#[tokio::test]
async fn without_points_a_message_still_names_its_sender() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[("TIDINGS_POINTS_PER_MESSAGE", "0")]);
    let alice = register(&server, "alice").await;
    join(&server, &alice, "lobby").await;
    let sent = server
        .ok(Some(&alice), SEND, json!({ "r": "lobby", "b": "free" }))
        .await;
    assert_eq!(
        sent["sendMessage"]["sender"],
        json!({ "id": "alice", "username": "alice", "points": 0 })
    );
}

/// One counter's value from `/metrics`.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let text = metrics(server).await;
    sample(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}")) as u64
}

/// Sends that queue while the message writer waits for a room's lock are committed together,
/// and the batch keeps every rule of a lone send: a retry gets the first message and earns
/// nothing, a non-member is refused without taking a number, the room's numbers run on with no
/// gap, and subscribers get each new message once, in order.
#[tokio::test]
async fn sends_queued_behind_a_locked_room_commit_together_and_keep_every_rule() {
    use sea_orm::{ConnectionTrait, Database, Statement, TransactionTrait};
    use std::time::Duration;

    for backend in backends() {
        let db = TestDb::new(&backend).await;
        // Thirty sends from one user in a moment: not what this test is about.
        let server = TestServer::start(&db, &[("TIDINGS_RATE_LIMITS", "off")]);
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        let eve = cli_token("eve", "user");
        join(&server, &alice, "queue").await;
        join(&server, &bob, "queue").await;
        join(&server, &eve, "elsewhere").await;
        let mut watcher = GqlSocket::user(&server, &bob).await;
        watcher
            .subscribe(
                "m",
                "subscription { messageAdded(roomId: \"queue\") { id body } }",
                json!({}),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let batches_before = metric(&server, "tidings_message_batches_total").await;
        let sends_before = metric(&server, "tidings_message_batch_sends_total").await;

        // Hold the room's row (SQLite: the database's write lock) from outside the server.
        let outside = Database::connect(db.url.as_str()).await.expect("database");
        let hold = outside.begin().await.expect("begin");
        hold.execute_unprepared("UPDATE rooms SET last_seq = last_seq WHERE id = 'queue'")
            .await
            .expect("lock the room");

        // Alice sends ten messages three times each (c-0 … c-9), Bob ten without a client id,
        // Eve three to a room she is not in.
        let mut sends = Vec::new();
        for _ in 0..3 {
            for n in 0..10 {
                sends.push((alice.clone(), format!("a{n}"), Some(format!("c-{n}"))));
            }
        }
        for n in 0..10 {
            sends.push((bob.clone(), format!("b{n}"), None));
        }
        for n in 0..3 {
            sends.push((eve.clone(), format!("e{n}"), None));
        }
        let total = sends.len() as u64;
        let requests =
            futures_util::future::join_all(sends.iter().map(|(t, b, c)| {
                server.gql(Some(t), SEND, json!({ "r": "queue", "b": b, "c": c }))
            }));
        let release = async {
            // Long enough for every request to reach the writer's queue.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            hold.rollback().await.expect("release the room");
        };
        let (answers, ()) = tokio::join!(requests, release);

        let name = backend.name();
        let mut first_by_client_id = std::collections::HashMap::new();
        let mut created = Vec::new();
        for ((token, body, client_id), answer) in sends.iter().zip(&answers) {
            if token == &eve {
                assert_eq!(
                    answer["errors"][0]["extensions"]["code"], "FORBIDDEN",
                    "{name}: {answer}"
                );
                continue;
            }
            let sent = &answer["data"]["sendMessage"];
            assert_eq!(&sent["body"], body.as_str(), "{name}: {answer}");
            match client_id {
                Some(c) => {
                    let first = first_by_client_id.entry(c.clone()).or_insert_with(|| {
                        created.push(sent["id"].clone());
                        sent["id"].clone()
                    });
                    assert_eq!(
                        &sent["id"], first,
                        "{name}: every retry of {c} gets the first message"
                    );
                }
                None => created.push(sent["id"].clone()),
            }
        }
        assert_eq!(created.len(), 20, "{name}");

        let batches = metric(&server, "tidings_message_batches_total").await - batches_before;
        let carried = metric(&server, "tidings_message_batch_sends_total").await - sends_before;
        assert_eq!(carried, total, "{name}: every send went through the writer");
        assert!(
            batches * 4 <= total,
            "{name}: {total} sends queued behind the lock took {batches} transactions"
        );

        // The room's numbers: 1, 2, 3 … with no gap, and the counter at the last.
        let backend_kind = outside.get_database_backend();
        let seqs: Vec<i64> = outside
            .query_all_raw(Statement::from_string(
                backend_kind,
                "SELECT seq FROM messages WHERE room_id = 'queue' ORDER BY seq",
            ))
            .await
            .expect("seqs")
            .iter()
            .map(|row| row.try_get::<i64>("", "seq").expect("seq"))
            .collect();
        let last = outside
            .query_one_raw(Statement::from_string(
                backend_kind,
                "SELECT last_seq FROM rooms WHERE id = 'queue'",
            ))
            .await
            .expect("room")
            .expect("room row")
            .try_get::<i64>("", "last_seq")
            .expect("last_seq");
        let expected: Vec<i64> = (1..=last).collect();
        assert_eq!(seqs, expected, "{name}: numbers run on without a gap");

        // Each new message reaches the subscriber once, in id order.
        let mut delivered = Vec::new();
        while delivered.len() < created.len() {
            delivered.push(watcher.data("m").await["messageAdded"]["id"].clone());
        }
        watcher.expect_silence(Duration::from_millis(300)).await;
        let mut in_order = created.clone();
        in_order.sort_by_key(|id| id.as_str().and_then(|s| s.parse::<i64>().ok()));
        assert_eq!(delivered, in_order, "{name}");

        let me = server
            .ok(Some(&alice), "{ me { points } }", json!({}))
            .await;
        assert_eq!(me["me"]["points"], 10, "{name}: retries earn nothing");
    }
}
