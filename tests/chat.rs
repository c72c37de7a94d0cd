//! The chat people expect: edits and deletes, reactions, read receipts and unread counts,
//! search, and `roomEvents`, which numbers every change to a room on the room's one sequence.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const EVENTS: &str = "subscription($r: ID!, $a: ID) { roomEvents(roomId: $r, after: $a) { \
    __typename position roomId at \
    ... on MessagePosted { message { id body kind } } \
    ... on MessageEdited { message { id body editedAt } } \
    ... on MessageDeleted { messageId } \
    ... on ReactionsChanged { messageId reactions { emoji count viewerReacted } } \
    ... on ReadReceiptMoved { receipt { user { username } messageId at } } } }";

const EDIT: &str =
    "mutation($id: ID!, $b: String!) { editMessage(id: $id, body: $b) { id body editedAt deletedAt } }";
const DELETE: &str = "mutation($id: ID!) { deleteMessage(id: $id) { id body editedAt deletedAt } }";
const REACT: &str = "mutation($id: ID!, $e: String!) { react(messageId: $id, emoji: $e) { id reactions { emoji count viewerReacted } } }";
const UNREACT: &str = "mutation($id: ID!, $e: String!) { unreact(messageId: $id, emoji: $e) { id reactions { emoji count viewerReacted } } }";
const MARK: &str =
    "mutation($r: ID!, $id: ID!) { markRead(roomId: $r, messageId: $id) { id unreadCount } }";
const ROOM: &str = "query($r: ID!) { room(id: $r) { unreadCount readReceipts { user { username } messageId at } readCounts { messageId readers } } }";
const SEARCH: &str = "query($q: String!, $r: ID, $f: Int, $o: Int) { searchMessages(query: $q, roomId: $r, first: $f, offset: $o) { id body roomId } }";
const MESSAGES: &str =
    "subscription($r: ID!, $a: ID) { messageAdded(roomId: $r, after: $a) { id body } }";

fn id_of(message: &Value) -> String {
    message["id"].as_str().expect("an id").to_owned()
}

async fn next_event(ws: &mut GqlSocket, id: &str) -> Value {
    ws.data(id).await["roomEvents"].clone()
}

/// The resumed events are exactly `kinds`, in order, numbered on from `last_seen` with no gap
/// and no duplicate.
fn assert_resumed(resumed: &[Value], last_seen: i64, kinds: &[&str], backend: Backend) {
    let got: Vec<&str> = resumed
        .iter()
        .map(|e| e["__typename"].as_str().expect("a type"))
        .collect();
    assert_eq!(got, kinds, "{}", backend.name());
    let positions: Vec<i64> = resumed.iter().map(position).collect();
    let expected: Vec<i64> = (1..=kinds.len() as i64).map(|k| last_seen + k).collect();
    assert_eq!(positions, expected, "no gap, no duplicate");
}

fn position(event: &Value) -> i64 {
    event["position"]
        .as_str()
        .expect("a position")
        .parse()
        .expect("a decimal position")
}

/// Reads events until the one at `position`, returning them all.
async fn events_until(ws: &mut GqlSocket, id: &str, last: i64) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = next_event(ws, id).await;
        let at = position(&event);
        events.push(event);
        if at >= last {
            return events;
        }
    }
}

#[tokio::test]
async fn edits_and_deletes_by_the_author_or_an_admin_show_in_history_and_live() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        let admin = cli_token("root", "admin");
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        let hello = id_of(&send(&server, &alice, "lobby", "hello").await);

        let mut ws = GqlSocket::user(&server, &bob).await;
        ws.subscribe("e", EVENTS, json!({ "r": "lobby", "a": "0" }))
            .await;
        let replayed = events_until(&mut ws, "e", 3).await;
        let kinds: Vec<_> = replayed.iter().map(|e| e["__typename"].clone()).collect();
        assert_eq!(kinds, ["MessagePosted"; 3], "{}", backend.name());
        assert_eq!(replayed[2]["message"]["body"], "hello");

        // Someone else's message: FORBIDDEN, for an edit and a delete.
        let edit = json!({ "id": hello, "b": "bob was here" });
        assert_eq!(server.err_code(Some(&bob), EDIT, edit).await, "FORBIDDEN");
        assert_eq!(
            server
                .err_code(Some(&bob), DELETE, json!({ "id": hello }))
                .await,
            "FORBIDDEN"
        );
        // The same validation as sending; an unknown message is NOT_FOUND.
        for body in ["".to_owned(), "  ".to_owned(), "é".repeat(5001)] {
            assert_eq!(
                server
                    .err_code(Some(&alice), EDIT, json!({ "id": hello, "b": body }))
                    .await,
                "BAD_USER_INPUT"
            );
        }
        assert_eq!(
            server
                .err_code(Some(&alice), EDIT, json!({ "id": "999999", "b": "x" }))
                .await,
            "NOT_FOUND"
        );
        assert_eq!(
            server
                .err_code(Some(&alice), EDIT, json!({ "id": "x'; --", "b": "x" }))
                .await,
            "BAD_USER_INPUT"
        );

        let edited = server
            .ok(
                Some(&alice),
                EDIT,
                json!({ "id": hello, "b": "  hello, edited " }),
            )
            .await["editMessage"]
            .clone();
        assert_eq!(edited["body"], "hello, edited");
        assert!(edited["editedAt"].is_string());
        assert!(edited["deletedAt"].is_null());
        let event = next_event(&mut ws, "e").await;
        assert_eq!(event["__typename"], "MessageEdited");
        assert_eq!(position(&event), 4, "the next position of the room");
        assert_eq!(event["message"]["body"], "hello, edited");

        // An admin deletes anyone's message: a tombstone.
        let deleted = server
            .ok(Some(&admin), DELETE, json!({ "id": hello }))
            .await["deleteMessage"]
            .clone();
        assert_eq!(deleted["body"], "");
        assert!(deleted["deletedAt"].is_string());
        let event = next_event(&mut ws, "e").await;
        assert_eq!(event["__typename"], "MessageDeleted");
        assert_eq!(event["messageId"], hello.as_str());
        assert_eq!(position(&event), 5);

        // A deleted message cannot be edited; deleting it again changes nothing.
        assert_eq!(
            server
                .err_code(Some(&alice), EDIT, json!({ "id": hello, "b": "back" }))
                .await,
            "BAD_USER_INPUT"
        );
        let again = server
            .ok(Some(&alice), DELETE, json!({ "id": hello }))
            .await["deleteMessage"]
            .clone();
        assert_eq!(again["deletedAt"], deleted["deletedAt"]);
        ws.expect_silence(Duration::from_millis(300)).await;

        let history = server
            .ok(
                Some(&bob),
                "query { messages(roomId: \"lobby\") { id body editedAt deletedAt } }",
                json!({}),
            )
            .await["messages"]
            .clone();
        let tombstone = history
            .as_array()
            .expect("a list")
            .iter()
            .find(|m| m["id"] == hello.as_str())
            .expect("the tombstone stays in history")
            .clone();
        assert_eq!(tombstone["body"], "");
        assert!(tombstone["editedAt"].is_string());
        assert!(tombstone["deletedAt"].is_string());
    }
}

#[tokio::test]
async fn reactions_count_per_emoji_and_say_whether_the_viewer_reacted() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        let carol = register(&server, "carol").await;
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        let m = id_of(&send(&server, &alice, "lobby", "react to me").await);
        let mut ws = GqlSocket::user(&server, &bob).await;
        ws.subscribe("e", EVENTS, json!({ "r": "lobby", "a": "3" }))
            .await;

        server
            .ok(Some(&alice), REACT, json!({ "id": m, "e": "👍" }))
            .await;
        let event = next_event(&mut ws, "e").await;
        assert_eq!(
            event["__typename"],
            "ReactionsChanged",
            "{}",
            backend.name()
        );
        assert_eq!(
            event["reactions"],
            json!([{ "emoji": "👍", "count": 1, "viewerReacted": false }])
        );
        server
            .ok(Some(&bob), REACT, json!({ "id": m, "e": "👍" }))
            .await;
        let event = next_event(&mut ws, "e").await;
        assert_eq!(
            event["reactions"],
            json!([{ "emoji": "👍", "count": 2, "viewerReacted": true }]),
            "the subscriber is among those who reacted"
        );
        let mine = server
            .ok(Some(&bob), REACT, json!({ "id": m, "e": "❤️" }))
            .await["react"]["reactions"]
            .clone();
        assert_eq!(
            mine,
            json!([
                { "emoji": "👍", "count": 2, "viewerReacted": true },
                { "emoji": "❤️", "count": 1, "viewerReacted": true },
            ])
        );
        next_event(&mut ws, "e").await;
        // Reacting again with the same emoji changes nothing and tells nobody.
        server
            .ok(Some(&alice), REACT, json!({ "id": m, "e": "👍" }))
            .await;
        ws.expect_silence(Duration::from_millis(300)).await;

        let after = server
            .ok(Some(&bob), UNREACT, json!({ "id": m, "e": "👍" }))
            .await["unreact"]["reactions"]
            .clone();
        assert_eq!(
            after,
            json!([
                { "emoji": "❤️", "count": 1, "viewerReacted": true },
                { "emoji": "👍", "count": 1, "viewerReacted": false },
            ])
        );
        let event = next_event(&mut ws, "e").await;
        assert_eq!(event["reactions"][1]["count"], 1);

        // Alice's view of the same message, from history.
        let history = server
            .ok(
                Some(&alice),
                "query { messages(roomId: \"lobby\") { id reactions { emoji count viewerReacted } } }",
                json!({}),
            )
            .await["messages"]
            .clone();
        let seen = history
            .as_array()
            .expect("a list")
            .iter()
            .find(|x| x["id"] == m.as_str())
            .expect("the message")["reactions"]
            .clone();
        assert_eq!(
            seen,
            json!([
                { "emoji": "❤️", "count": 1, "viewerReacted": false },
                { "emoji": "👍", "count": 1, "viewerReacted": true },
            ])
        );

        // One emoji of at most 16 bytes: anything else is BAD_USER_INPUT.
        for emoji in [
            "",
            "a",
            ":smile:",
            "👍👍",
            "<script>",
            "👨‍👩‍👧‍👦",
            "'; DROP TABLE reactions; --",
            // Pictographs glued by joiners into a sequence nobody defined.
            "☕\u{200D}☕\u{200D}☕",
            // The last code point of the emoji blocks, unassigned.
            "\u{1FAFF}",
            // Two emoji side by side.
            "👍❤️",
            "☕☕",
            "🇫🇷🇩🇪",
        ] {
            assert_eq!(
                server
                    .err_code(Some(&bob), REACT, json!({ "id": m, "e": emoji }))
                    .await,
                "BAD_USER_INPUT",
                "{emoji:?}"
            );
        }
        // One emoji of Unicode's list, skin tones, joined sequences, flags and keycaps
        // included; typed without its presentation selector, it is the same emoji.
        let accepted = ["👍🏽", "👩‍💻", "🏳️‍🌈", "🐻‍❄️", "🇫🇷", "1️⃣", "☕", "❤️"];
        let m2 = id_of(&send(&server, &alice, "lobby", "more reactions").await);
        for emoji in accepted {
            server
                .ok(Some(&bob), REACT, json!({ "id": m2, "e": emoji }))
                .await;
        }
        let reactions = server
            .ok(Some(&alice), REACT, json!({ "id": m2, "e": "❤" }))
            .await["react"]["reactions"]
            .clone();
        let mut counted: Vec<(String, i64)> = reactions
            .as_array()
            .expect("a list")
            .iter()
            .map(|r| {
                (
                    r["emoji"].as_str().expect("an emoji").to_owned(),
                    r["count"].as_i64().expect("a count"),
                )
            })
            .collect();
        let mut expected: Vec<(String, i64)> =
            accepted.iter().map(|e| ((*e).to_owned(), 1)).collect();
        expected[7].1 = 2;
        counted.sort();
        expected.sort();
        assert_eq!(counted, expected, "{}", backend.name());

        // Not a member of the room: FORBIDDEN. No such message: NOT_FOUND.
        assert_eq!(
            server
                .err_code(Some(&carol), REACT, json!({ "id": m, "e": "👍" }))
                .await,
            "FORBIDDEN"
        );
        assert_eq!(
            server
                .err_code(Some(&bob), REACT, json!({ "id": "424242", "e": "👍" }))
                .await,
            "NOT_FOUND"
        );
    }
}

#[tokio::test]
async fn read_receipts_move_forward_unread_counts_follow_and_the_room_hears_once_a_second() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        join(&server, &bob, "other").await;
        let ids: Vec<String> = [1, 2, 3, 4].into_iter().map(|n| format!("m{n}")).collect();
        let mut sent = Vec::new();
        for body in &ids {
            sent.push(id_of(&send(&server, &alice, "lobby", body).await));
        }
        let unread = |token: String| {
            let server = &server;
            async move { server.ok(Some(&token), ROOM, json!({ "r": "lobby" })).await["room"].clone() }
        };
        assert_eq!(
            unread(bob.clone()).await["unreadCount"],
            4,
            "{}",
            backend.name()
        );
        assert_eq!(
            unread(alice.clone()).await["unreadCount"],
            0,
            "one's own messages and announcements are not unread"
        );

        let mut ws = GqlSocket::user(&server, &alice).await;
        ws.subscribe("e", EVENTS, json!({ "r": "lobby", "a": "6" }))
            .await;
        let marked = server
            .ok(Some(&bob), MARK, json!({ "r": "lobby", "id": sent[1] }))
            .await["markRead"]
            .clone();
        assert_eq!(marked["unreadCount"], 2);
        let event = next_event(&mut ws, "e").await;
        assert_eq!(event["__typename"], "ReadReceiptMoved");
        assert_eq!(event["receipt"]["user"]["username"], "bob");
        assert_eq!(event["receipt"]["messageId"], sent[1].as_str());
        let first_at = std::time::Instant::now();

        // Two more within the second: stored at once, announced once, at its end, with the
        // latest.
        server
            .ok(Some(&bob), MARK, json!({ "r": "lobby", "id": sent[2] }))
            .await;
        let marked = server
            .ok(Some(&bob), MARK, json!({ "r": "lobby", "id": sent[3] }))
            .await["markRead"]
            .clone();
        assert_eq!(marked["unreadCount"], 0, "stored at once");
        let event = next_event(&mut ws, "e").await;
        assert!(
            first_at.elapsed() >= Duration::from_millis(900),
            "the second receipt event came {:?} after the first",
            first_at.elapsed()
        );
        assert_eq!(event["receipt"]["messageId"], sent[3].as_str());
        ws.expect_silence(Duration::from_millis(1300)).await;

        // Receipts only move forward: an older message changes nothing and tells nobody.
        let marked = server
            .ok(Some(&bob), MARK, json!({ "r": "lobby", "id": sent[0] }))
            .await["markRead"]
            .clone();
        assert_eq!(marked["unreadCount"], 0);
        ws.expect_silence(Duration::from_millis(300)).await;

        let room = unread(alice.clone()).await;
        assert_eq!(
            room["readReceipts"],
            json!([{ "user": { "username": "bob" }, "messageId": sent[3], "at": room["readReceipts"][0]["at"] }])
        );
        assert_eq!(
            room["readCounts"],
            json!([{ "messageId": sent[3], "readers": 1 }])
        );

        // A message of another room, or none: NOT_FOUND; a room one does not belong to:
        // FORBIDDEN.
        let elsewhere = id_of(&send(&server, &bob, "other", "elsewhere").await);
        assert_eq!(
            server
                .err_code(Some(&bob), MARK, json!({ "r": "lobby", "id": elsewhere }))
                .await,
            "NOT_FOUND"
        );
        assert_eq!(
            server
                .err_code(Some(&alice), MARK, json!({ "r": "other", "id": elsewhere }))
                .await,
            "FORBIDDEN"
        );
    }
}

#[tokio::test]
async fn receipts_list_every_member_up_to_fifty_members_then_counts_only() {
    const RECEIPTS: &str = "query($r: ID!) { room(id: $r) { memberCount \
        readReceipts { user { username } messageId } readCounts { messageId readers } } }";
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let tokens: Vec<String> = (0..=50)
            .map(|n| cli_token(&format!("m{n:02}"), "user"))
            .collect();
        for token in &tokens[..50] {
            join(&server, token, "big").await;
        }
        let early = id_of(&send(&server, &tokens[0], "big", "early").await);
        let late = id_of(&send(&server, &tokens[0], "big", "late").await);
        // Members 0–24 read up to the late message, members 25–49 up to the early one.
        for (n, token) in tokens[..50].iter().enumerate() {
            let upto = if n < 25 { &late } else { &early };
            server
                .ok(Some(token), MARK, json!({ "r": "big", "id": upto }))
                .await;
        }
        let room = |token: String| {
            let server = &server;
            async move {
                server
                    .ok(Some(&token), RECEIPTS, json!({ "r": "big" }))
                    .await["room"]
                    .clone()
            }
        };
        let at_fifty = room(tokens[49].clone()).await;
        assert_eq!(at_fifty["memberCount"], 50, "{}", backend.name());
        let listed: Vec<(String, String)> = at_fifty["readReceipts"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|r| {
                (
                    r["user"]["username"].as_str().expect("a name").to_owned(),
                    r["messageId"].as_str().expect("an id").to_owned(),
                )
            })
            .collect();
        // Most advanced first, then by user.
        let everyone: Vec<(String, String)> = (0..50)
            .map(|n| {
                let upto = if n < 25 { &late } else { &early };
                (format!("m{n:02}"), upto.clone())
            })
            .collect();
        assert_eq!(
            listed,
            everyone,
            "{}: every member's receipt",
            backend.name()
        );
        let counts = json!([
            { "messageId": late, "readers": 25 },
            { "messageId": early, "readers": 25 },
        ]);
        assert_eq!(at_fifty["readCounts"], counts);

        // A 51st member: counts only.
        join(&server, &tokens[50], "big").await;
        server
            .ok(Some(&tokens[50]), MARK, json!({ "r": "big", "id": late }))
            .await;
        let at_fifty_one = room(tokens[0].clone()).await;
        assert_eq!(at_fifty_one["memberCount"], 51);
        assert_eq!(
            at_fifty_one["readReceipts"],
            json!([]),
            "{}: no list beyond fifty members",
            backend.name()
        );
        assert_eq!(
            at_fifty_one["readCounts"],
            json!([
                { "messageId": late, "readers": 26 },
                { "messageId": early, "readers": 25 },
            ])
        );

        // Back to fifty: the list again, the leaver's receipt gone with them.
        server
            .ok(
                Some(&tokens[0]),
                "mutation($r: ID!) { leaveRoom(roomId: $r) }",
                json!({ "r": "big" }),
            )
            .await;
        let again = room(tokens[50].clone()).await;
        assert_eq!(again["memberCount"], 50);
        assert_eq!(again["readReceipts"].as_array().map(Vec::len), Some(50));
        assert_eq!(
            again["readCounts"],
            json!([
                { "messageId": late, "readers": 25 },
                { "messageId": early, "readers": 25 },
            ])
        );
    }
}

#[tokio::test]
async fn receipts_checked_together_each_get_their_own_answer() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        let carol = register(&server, "carol").await;
        let admin = cli_token("root", "admin");
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        join(&server, &carol, "other").await;
        let mut sent = Vec::new();
        for n in 0..4 {
            sent.push(id_of(
                &send(&server, &alice, "lobby", &format!("m{n}")).await,
            ));
        }
        let elsewhere = id_of(&send(&server, &carol, "other", "elsewhere").await);

        // All at once, so that the writer takes many of them into one batch: each is answered
        // as if it were alone. Bob's receipts arrive out of order; the furthest one stays.
        let calls = [
            (&bob, "lobby", sent[3].clone(), None),
            (&bob, "lobby", sent[1].clone(), None),
            (&bob, "lobby", sent[2].clone(), None),
            (&alice, "lobby", sent[0].clone(), None),
            (&carol, "lobby", sent[0].clone(), Some("FORBIDDEN")),
            (&bob, "lobby", elsewhere.clone(), Some("NOT_FOUND")),
            (&bob, "lobby", "999999".to_owned(), Some("NOT_FOUND")),
            (&bob, "nowhere", sent[0].clone(), Some("NOT_FOUND")),
            (&carol, "other", elsewhere.clone(), None),
            (&admin, "lobby", sent[2].clone(), None),
        ];
        let answers = futures_util::future::join_all(calls.iter().map(|(token, room, id, _)| {
            server.gql(Some(token.as_str()), MARK, json!({ "r": room, "id": id }))
        }))
        .await;
        for ((_, room, id, expected), answer) in calls.iter().zip(&answers) {
            match expected {
                None => assert_eq!(
                    answer["data"]["markRead"]["id"],
                    *room,
                    "{} {room} {id}: {answer}",
                    backend.name()
                ),
                Some(code) => assert_eq!(
                    answer["errors"][0]["extensions"]["code"],
                    *code,
                    "{} {room} {id}: {answer}",
                    backend.name()
                ),
            }
        }
        let room = server.ok(Some(&alice), ROOM, json!({ "r": "lobby" })).await["room"].clone();
        let receipts: Vec<(String, String)> = room["readReceipts"]
            .as_array()
            .expect("receipts")
            .iter()
            .map(|r| {
                (
                    r["user"]["username"].as_str().expect("a name").to_owned(),
                    r["messageId"].as_str().expect("an id").to_owned(),
                )
            })
            .collect();
        assert_eq!(
            receipts,
            [
                ("bob".to_owned(), sent[3].clone()),
                ("alice".to_owned(), sent[0].clone())
            ],
            "members only, each at their furthest ({})",
            backend.name()
        );
        let bobs = server.ok(Some(&bob), ROOM, json!({ "r": "lobby" })).await["room"].clone();
        assert_eq!(bobs["unreadCount"], 0);
    }
}

#[tokio::test]
async fn a_resume_after_a_disconnect_gets_every_kind_of_change_in_order_once() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        let first = id_of(&send(&server, &alice, "lobby", "first").await);

        let mut ws = GqlSocket::user(&server, &bob).await;
        ws.subscribe("e", EVENTS, json!({ "r": "lobby", "a": "0" }))
            .await;
        let seen = events_until(&mut ws, "e", 3).await;
        let last_seen = position(seen.last().expect("events"));
        ws.close().await;

        // While bob is away: every kind of change.
        let second = id_of(&send(&server, &alice, "lobby", "second").await);
        server
            .ok(
                Some(&alice),
                EDIT,
                json!({ "id": first, "b": "first, edited" }),
            )
            .await;
        server
            .ok(Some(&alice), REACT, json!({ "id": second, "e": "🎉" }))
            .await;
        server
            .ok(Some(&alice), MARK, json!({ "r": "lobby", "id": second }))
            .await;
        server
            .ok(Some(&alice), DELETE, json!({ "id": second }))
            .await;

        let mut ws = GqlSocket::user(&server, &bob).await;
        ws.subscribe(
            "e",
            EVENTS,
            json!({ "r": "lobby", "a": last_seen.to_string() }),
        )
        .await;
        let resumed = events_until(&mut ws, "e", last_seen + 5).await;
        assert_resumed(
            &resumed,
            last_seen,
            &[
                "MessagePosted",
                "MessageEdited",
                "ReactionsChanged",
                "ReadReceiptMoved",
                "MessageDeleted",
            ],
            backend,
        );
        assert_eq!(resumed[1]["message"]["body"], "first, edited");
        assert_eq!(
            resumed[2]["reactions"],
            json!([{ "emoji": "🎉", "count": 1, "viewerReacted": false }])
        );
        assert_eq!(resumed[3]["receipt"]["messageId"], second.as_str());
        assert_eq!(resumed[4]["messageId"], second.as_str());

        // Then live, on the same sequence.
        send(&server, &alice, "lobby", "third").await;
        let live = next_event(&mut ws, "e").await;
        assert_eq!(position(&live), last_seen + 6);
        assert_eq!(live["message"]["body"], "third");
        ws.expect_silence(Duration::from_millis(300)).await;
    }
}

/// Every field of an event, as states: what a live subscriber saw and a replay must repeat.
const STATES: &str = "subscription($r: ID!, $a: ID) { roomEvents(roomId: $r, after: $a) { \
    __typename position \
    ... on MessagePosted { message { id body editedAt deletedAt reactions { emoji count viewerReacted } } } \
    ... on MessageEdited { message { id body editedAt deletedAt reactions { emoji count viewerReacted } } } \
    ... on MessageDeleted { messageId } \
    ... on ReactionsChanged { messageId reactions { emoji count viewerReacted } } \
    ... on ReadReceiptMoved { receipt { user { username } messageId } } } }";

#[tokio::test]
async fn a_resume_replays_every_change_as_it_was_at_its_position() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        // Bob watches live, and reads each change as it happens before the next one.
        let mut live = GqlSocket::user(&server, &bob).await;
        live.subscribe("e", STATES, json!({ "r": "lobby" })).await;
        let mut seen = Vec::new();

        let hello = id_of(&send(&server, &alice, "lobby", "v1").await);
        seen.push(next_event(&mut live, "e").await);
        let before = position(&seen[0]) - 1;
        server
            .ok(Some(&bob), MARK, json!({ "r": "lobby", "id": hello }))
            .await;
        seen.push(next_event(&mut live, "e").await);
        server
            .ok(Some(&alice), EDIT, json!({ "id": hello, "b": "v2" }))
            .await;
        seen.push(next_event(&mut live, "e").await);
        server
            .ok(Some(&bob), REACT, json!({ "id": hello, "e": "👍" }))
            .await;
        seen.push(next_event(&mut live, "e").await);
        server
            .ok(Some(&alice), EDIT, json!({ "id": hello, "b": "v3" }))
            .await;
        seen.push(next_event(&mut live, "e").await);
        server
            .ok(Some(&bob), UNREACT, json!({ "id": hello, "e": "👍" }))
            .await;
        seen.push(next_event(&mut live, "e").await);
        server
            .ok(Some(&alice), REACT, json!({ "id": hello, "e": "🎉" }))
            .await;
        seen.push(next_event(&mut live, "e").await);
        server
            .ok(Some(&alice), DELETE, json!({ "id": hello }))
            .await;
        seen.push(next_event(&mut live, "e").await);
        live.close().await;

        // Bob resumes from before the post, once it has all happened.
        let mut ws = GqlSocket::user(&server, &bob).await;
        ws.subscribe(
            "e",
            STATES,
            json!({ "r": "lobby", "a": before.to_string() }),
        )
        .await;
        let last = position(seen.last().expect("events"));
        let replayed = events_until(&mut ws, "e", last).await;
        assert_eq!(
            replayed,
            seen,
            "{}: a replay repeats what was live",
            backend.name()
        );

        // And each is the state at its position, not the message as it ends.
        let state = |e: &Value| -> Value {
            match e["__typename"].as_str().expect("a type") {
                "MessagePosted" | "MessageEdited" => json!([
                    e["__typename"],
                    e["message"]["body"],
                    e["message"]["editedAt"].is_string(),
                    e["message"]["deletedAt"].is_string(),
                    e["message"]["reactions"],
                ]),
                "ReactionsChanged" => json!([e["__typename"], e["reactions"]]),
                "ReadReceiptMoved" => json!([
                    e["__typename"],
                    e["receipt"]["user"]["username"],
                    e["receipt"]["messageId"]
                ]),
                other => json!([other, e["messageId"]]),
            }
        };
        let thumbs = json!([{ "emoji": "👍", "count": 1, "viewerReacted": true }]);
        let party = json!([{ "emoji": "🎉", "count": 1, "viewerReacted": false }]);
        assert_eq!(
            replayed.iter().map(state).collect::<Vec<_>>(),
            [
                json!(["MessagePosted", "v1", false, false, []]),
                json!(["ReadReceiptMoved", "bob", hello.as_str()]),
                json!(["MessageEdited", "v2", true, false, []]),
                json!(["ReactionsChanged", thumbs]),
                json!(["MessageEdited", "v3", true, false, thumbs]),
                json!(["ReactionsChanged", []]),
                json!(["ReactionsChanged", party]),
                json!(["MessageDeleted", hello.as_str()]),
            ],
            "{}",
            backend.name()
        );
        let positions: Vec<i64> = replayed.iter().map(position).collect();
        assert_eq!(positions, (before + 1..=last).collect::<Vec<_>>());

        // Alice's view of the same positions: her own reaction, not bob's.
        let mut ws = GqlSocket::user(&server, &alice).await;
        ws.subscribe(
            "e",
            STATES,
            json!({ "r": "lobby", "a": before.to_string() }),
        )
        .await;
        let hers = events_until(&mut ws, "e", last).await;
        assert_eq!(
            hers[4]["message"]["reactions"],
            json!([{ "emoji": "👍", "count": 1, "viewerReacted": false }])
        );
        assert_eq!(
            hers[6]["reactions"],
            json!([{ "emoji": "🎉", "count": 1, "viewerReacted": true }])
        );
    }
}

#[tokio::test]
async fn message_added_clients_see_messages_only_and_in_turn_between_changes() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        let first = id_of(&send(&server, &alice, "lobby", "one").await);
        let mut ws = GqlSocket::user(&server, &alice).await;
        ws.subscribe("m", MESSAGES, json!({ "r": "lobby", "a": first }))
            .await;
        server
            .ok(Some(&alice), EDIT, json!({ "id": first, "b": "uno" }))
            .await;
        server
            .ok(Some(&alice), REACT, json!({ "id": first, "e": "👍" }))
            .await;
        send(&server, &alice, "lobby", "two").await;
        assert_eq!(
            ws.data("m").await["messageAdded"]["body"],
            "two",
            "{}",
            backend.name()
        );
        ws.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn changes_cross_instances_and_a_redis_outage_loses_none() {
    for backend in backends() {
        let mut redis = TestRedis::start();
        let (a, b, _db) = bridged_pair(&backend, &redis, &[]).await;
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        join(&a, &alice, "lobby").await;
        join(&b, &bob, "lobby").await;
        let m = id_of(&send(&b, &bob, "lobby", "hello").await);

        let mut on_a = GqlSocket::user(&a, &alice).await;
        on_a.subscribe("e", EVENTS, json!({ "r": "lobby", "a": "3" }))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.ok(Some(&bob), EDIT, json!({ "id": m, "b": "hello from b" }))
            .await;
        let event = next_event(&mut on_a, "e").await;
        assert_eq!(event["__typename"], "MessageEdited", "{}", backend.name());
        assert_eq!(event["message"]["body"], "hello from b");

        redis.kill();
        eventually(
            Duration::from_secs(10),
            "health reports Redis down",
            || async { health(&b).await["redis"] == "down" },
        )
        .await;
        b.ok(Some(&bob), REACT, json!({ "id": m, "e": "👍" })).await;
        b.ok(Some(&bob), DELETE, json!({ "id": m })).await;
        on_a.expect_silence(Duration::from_millis(300)).await;
        redis.restart();
        eventually(Duration::from_secs(15), "the bridge reconnects", || async {
            health(&a).await["redis"] == "ok" && health(&b).await["redis"] == "ok"
        })
        .await;
        let caught_up = [
            next_event(&mut on_a, "e").await,
            next_event(&mut on_a, "e").await,
        ];
        assert_eq!(caught_up[0]["__typename"], "ReactionsChanged");
        assert_eq!(caught_up[1]["__typename"], "MessageDeleted");
        assert_eq!(position(&caught_up[1]), position(&event) + 2);
        b.ok(Some(&bob), MARK, json!({ "r": "lobby", "id": m }))
            .await;
        let read = next_event(&mut on_a, "e").await;
        assert_eq!(read["__typename"], "ReadReceiptMoved");
        assert_eq!(position(&read), position(&event) + 3);
    }
}

#[tokio::test]
async fn receipts_marked_on_two_instances_within_a_second_reach_the_room_once_a_second() {
    for backend in backends() {
        let redis = TestRedis::start();
        let (a, b, _db) = bridged_pair(&backend, &redis, &[]).await;
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        join(&a, &alice, "lobby").await;
        join(&b, &bob, "lobby").await;
        let early = id_of(&send(&a, &alice, "lobby", "early").await);
        let late = id_of(&send(&a, &alice, "lobby", "late").await);
        // Alice listens on both instances, from after those four positions.
        let mut on_a = GqlSocket::user(&a, &alice).await;
        on_a.subscribe("e", EVENTS, json!({ "r": "lobby", "a": "4" }))
            .await;
        let mut on_b = GqlSocket::user(&b, &alice).await;
        on_b.subscribe("e", EVENTS, json!({ "r": "lobby", "a": "4" }))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Bob marks the room read on A, then further on B, within the second.
        let started = std::time::Instant::now();
        a.ok(Some(&bob), MARK, json!({ "r": "lobby", "id": early }))
            .await;
        b.ok(Some(&bob), MARK, json!({ "r": "lobby", "id": late }))
            .await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "both marks within the second ({:?})",
            started.elapsed()
        );
        for ws in [&mut on_a, &mut on_b] {
            let first = next_event(ws, "e").await;
            assert_eq!(
                first["__typename"],
                "ReadReceiptMoved",
                "{}",
                backend.name()
            );
            assert_eq!(first["receipt"]["user"]["username"], "bob");
            assert_eq!(first["receipt"]["messageId"], early.as_str());
            assert_eq!(position(&first), 5);
        }
        // Nothing else until the second has passed since the first announcement.
        let quiet = Duration::from_millis(900).saturating_sub(started.elapsed());
        on_a.expect_silence(quiet).await;
        on_b.expect_silence(Duration::from_millis(10)).await;
        for ws in [&mut on_a, &mut on_b] {
            let next = next_event(ws, "e").await;
            assert_eq!(next["__typename"], "ReadReceiptMoved");
            assert_eq!(
                next["receipt"]["messageId"],
                late.as_str(),
                "the latest receipt"
            );
            assert_eq!(position(&next), 6);
        }
        assert!(started.elapsed() >= Duration::from_millis(900));
        on_a.expect_silence(Duration::from_millis(1200)).await;
        on_b.expect_silence(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_subscriber_that_leaves_one_instance_resumes_every_change_on_the_other() {
    for backend in backends() {
        let redis = TestRedis::start();
        let (a, b, _db) = bridged_pair(&backend, &redis, &[]).await;
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        join(&a, &alice, "lobby").await;
        join(&b, &bob, "lobby").await;
        let first = id_of(&send(&a, &alice, "lobby", "first").await);

        let mut on_a = GqlSocket::user(&a, &bob).await;
        on_a.subscribe("e", EVENTS, json!({ "r": "lobby", "a": "0" }))
            .await;
        let seen = events_until(&mut on_a, "e", 3).await;
        let last_seen = position(seen.last().expect("events"));
        on_a.close().await;

        // While bob is away, every kind of change, on both instances.
        let second = id_of(&send(&b, &alice, "lobby", "second").await);
        a.ok(
            Some(&alice),
            EDIT,
            json!({ "id": first, "b": "first, edited" }),
        )
        .await;
        b.ok(Some(&alice), REACT, json!({ "id": second, "e": "🎉" }))
            .await;
        a.ok(Some(&alice), REACT, json!({ "id": first, "e": "👍" }))
            .await;
        b.ok(Some(&alice), MARK, json!({ "r": "lobby", "id": second }))
            .await;
        a.ok(Some(&alice), DELETE, json!({ "id": second })).await;

        let mut on_b = GqlSocket::user(&b, &bob).await;
        on_b.subscribe(
            "e",
            EVENTS,
            json!({ "r": "lobby", "a": last_seen.to_string() }),
        )
        .await;
        let resumed = events_until(&mut on_b, "e", last_seen + 6).await;
        assert_resumed(
            &resumed,
            last_seen,
            &[
                "MessagePosted",
                "MessageEdited",
                "ReactionsChanged",
                "ReactionsChanged",
                "ReadReceiptMoved",
                "MessageDeleted",
            ],
            backend,
        );
        assert_eq!(resumed[0]["message"]["id"], second.as_str());
        assert_eq!(resumed[1]["message"]["body"], "first, edited");
        assert_eq!(resumed[2]["messageId"], second.as_str());
        assert_eq!(resumed[3]["messageId"], first.as_str());
        assert_eq!(resumed[4]["receipt"]["messageId"], second.as_str());
        assert_eq!(resumed[5]["messageId"], second.as_str());

        // Then live on B, changes made on A included, on the same sequence and only once.
        a.ok(Some(&alice), UNREACT, json!({ "id": first, "e": "👍" }))
            .await;
        send(&a, &alice, "lobby", "third").await;
        let live = [
            next_event(&mut on_b, "e").await,
            next_event(&mut on_b, "e").await,
        ];
        assert_eq!(live[0]["__typename"], "ReactionsChanged");
        assert_eq!(position(&live[0]), last_seen + 7);
        assert_eq!(live[1]["message"]["body"], "third");
        assert_eq!(position(&live[1]), last_seen + 8);
        on_b.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn search_finds_every_word_best_first_in_rooms_the_viewer_reads() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        join(&server, &alice, "lobby").await;
        join(&server, &bob, "lobby").await;
        join(&server, &bob, "secret").await;
        let both = id_of(&send(&server, &alice, "lobby", "the quick brown fox").await);
        let fox = id_of(&send(&server, &alice, "lobby", "fox fox fox, said the fox").await);
        send(&server, &alice, "lobby", "a lazy dog").await;
        send(&server, &bob, "secret", "the fox hides in the secret room").await;
        let gone = id_of(&send(&server, &alice, "lobby", "a deleted fox").await);
        server.ok(Some(&alice), DELETE, json!({ "id": gone })).await;

        let found = |token: String, vars: Value| {
            let server = &server;
            async move {
                server.ok(Some(&token), SEARCH, vars).await["searchMessages"]
                    .as_array()
                    .expect("a list")
                    .iter()
                    .map(|m| m["id"].as_str().expect("an id").to_owned())
                    .collect::<Vec<_>>()
            }
        };
        // Best match first: the message that says "fox" four times.
        assert_eq!(
            found(alice.clone(), json!({ "q": "FOX" })).await,
            [fox.clone(), both.clone()],
            "{}",
            backend.name()
        );
        // Every word must match.
        assert_eq!(
            found(alice.clone(), json!({ "q": "quick fox" })).await,
            std::slice::from_ref(&both)
        );
        // Bob reads the secret room too; alice may not search it.
        assert_eq!(found(bob.clone(), json!({ "q": "fox" })).await.len(), 3);
        assert_eq!(
            server
                .err_code(Some(&alice), SEARCH, json!({ "q": "fox", "r": "secret" }))
                .await,
            "FORBIDDEN"
        );
        // Pages.
        assert_eq!(
            found(alice.clone(), json!({ "q": "fox", "f": 1, "o": 1 })).await,
            std::slice::from_ref(&both)
        );
        assert_eq!(
            server
                .err_code(Some(&alice), SEARCH, json!({ "q": "fox", "f": 51 }))
                .await,
            "BAD_USER_INPUT"
        );
        // An edit is found by its new words.
        server
            .ok(
                Some(&alice),
                EDIT,
                json!({ "id": both, "b": "the slow green turtle" }),
            )
            .await;
        assert_eq!(
            found(alice.clone(), json!({ "q": "turtle" })).await,
            std::slice::from_ref(&both)
        );
        assert_eq!(
            found(alice.clone(), json!({ "q": "quick" })).await,
            Vec::<String>::new()
        );
        assert_eq!(
            server.err_code(None, SEARCH, json!({ "q": "fox" })).await,
            "UNAUTHENTICATED"
        );
    }
}

#[tokio::test]
async fn search_gives_the_same_order_on_both_backends_for_simple_queries() {
    // Each query with the bodies it finds, best first: the same list on every backend.
    let expected: [(&str, &[&str]); 7] = [
        (
            // One hit each: shorter first; the same length, newest first.
            "coffee",
            &[
                "coffee",
                "milk with coffee",
                "coffee with milk",
                "a long slow morning with coffee and toast and jam",
            ],
        ),
        // Accents are kept: café is not cafe, and upper case still folds.
        ("café", &["café au lait"]),
        ("CAFÉ", &["café au lait"]),
        ("cafe", &["cafe latte"]),
        // A version, an e-mail address and a host are their words, wherever they stand.
        ("v1.2", &["v1 of the 2 plans", "release v1.2 is out"]),
        ("alice@example.com", &["write to alice@example.com today"]),
        (
            "example.com",
            &[
                "see https://example.com/docs",
                "write to alice@example.com today",
            ],
        ),
    ];
    let mut seen = Vec::new();
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        for body in [
            "coffee",
            "coffee with milk",
            "milk with coffee",
            "a long slow morning with coffee and toast and jam",
            "café au lait",
            "cafe latte",
            "release v1.2 is out",
            "v1 of the 2 plans",
            "v1.3 is next",
            "write to alice@example.com today",
            "see https://example.com/docs",
        ] {
            send(&server, &alice, "lobby", body).await;
        }
        let mut found = Vec::new();
        for (query, bodies) in expected {
            let page = server.ok(Some(&alice), SEARCH, json!({ "q": query })).await
                ["searchMessages"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|m| m["body"].as_str().expect("a body").to_owned())
                .collect::<Vec<_>>();
            assert_eq!(page, bodies, "{query:?} on {}", backend.name());
            found.push(page);
        }
        seen.push(found);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

#[tokio::test]
async fn hostile_search_strings_search_safely_or_are_refused_never_internal() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        let fox = id_of(&send(&server, &alice, "lobby", "fox AND \"hound\" NEAR the den").await);
        // Query syntax of either backend is taken as plain words.
        for q in [
            "fox OR",
            "\"fox",
            "fox\"",
            "body:fox",
            "fox*",
            "NEAR(fox hound)",
            "fox & !hound | den",
            "fox' OR '1'='1",
            "-fox ^den",
            "{fox}",
            "fox) --",
        ] {
            let data = server.gql(Some(&alice), SEARCH, json!({ "q": q })).await;
            assert!(data.get("errors").is_none(), "{q:?}: {data}");
            let ids: Vec<_> = data["data"]["searchMessages"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|m| m["id"].clone())
                .collect();
            assert!(
                ids.is_empty() || ids == [json!(fox)],
                "{q:?} on {}: {ids:?}",
                backend.name()
            );
        }
        // No words, or far too long: a clear BAD_USER_INPUT.
        for q in [
            "".to_owned(),
            "\"\"".to_owned(),
            "* : ( ) ^".to_owned(),
            "x".repeat(10_000),
            "fox ".repeat(2_500),
        ] {
            let code = server
                .err_code(Some(&alice), SEARCH, json!({ "q": q }))
                .await;
            assert_eq!(code, "BAD_USER_INPUT", "{}", backend.name());
        }
    }
}

#[tokio::test]
async fn legacy_sockets_get_the_changes_as_their_own_frames() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        join(&server, &alice, "lobby").await;
        let mut legacy = LegacyClient::user(&server, &bob).await;
        legacy
            .send(json!({ "type": "join_room", "room": "lobby" }))
            .await;
        legacy.next_of("joined_room").await;
        legacy.next_of("system").await;
        let m = id_of(&send(&server, &alice, "lobby", "hi bob").await);
        legacy.next_of("message").await;

        server
            .ok(Some(&alice), EDIT, json!({ "id": m, "b": "hi, bob" }))
            .await;
        let edited = legacy.next_of("message_edited").await;
        assert_eq!(edited["room"], "lobby", "{}", backend.name());
        assert_eq!(edited["id"], m.as_str());
        assert_eq!(edited["text"], "hi, bob");
        assert_eq!(edited["username"], "alice");
        assert!(edited["edited_at"].is_string());
        assert_eq!(edited["data"]["text"], "hi, bob", "mirrored in data");

        server
            .ok(Some(&bob), REACT, json!({ "id": m, "e": "👋" }))
            .await;
        let reactions = legacy.next_of("reactions").await;
        assert_eq!(reactions["message_id"], m.as_str());
        assert_eq!(
            reactions["reactions"],
            json!([{ "emoji": "👋", "count": 1, "viewer_reacted": true }])
        );
        assert_eq!(reactions["data"]["reactions"], reactions["reactions"]);

        server
            .ok(Some(&alice), MARK, json!({ "r": "lobby", "id": m }))
            .await;
        let read = legacy.next_of("read").await;
        assert_eq!(read["room"], "lobby");
        assert!(read["user_id"].is_string());
        assert_eq!(read["username"], "alice");
        assert_eq!(read["message_id"], m.as_str());
        assert_eq!(read["data"]["message_id"], m.as_str());

        server.ok(Some(&alice), DELETE, json!({ "id": m })).await;
        let deleted = legacy.next_of("message_deleted").await;
        assert_eq!(deleted["room"], "lobby");
        assert_eq!(deleted["message_id"], m.as_str());
        assert!(deleted["data"]["deleted_at"].is_string());
    }
}

#[tokio::test]
async fn conversations_and_arena_sockets_get_the_changes_in_their_rooms_shape_with_a_timestamp() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = cli_token("alice", "user");
        let bob = cli_token("bob", "user");
        let carol = cli_token("carol", "user");
        join(&server, &alice, "general").await;
        // Carol's chat app speaks conversations; bob's game client, arena (in `general`).
        let mut conversations = LegacyClient::at(&server, &format!("/ws/auth?token={carol}")).await;
        conversations
            .send(json!({ "type": "join_conversation", "conversation_id": "general" }))
            .await;
        conversations.next_of("conversation_joined").await;
        let mut arena = LegacyClient::at(&server, &format!("/api/ws/bob?token={bob}")).await;

        let m = id_of(&send(&server, &alice, "general", "gg").await);
        assert_eq!(
            conversations.next_of("new_message").await["message"]["id"],
            m.as_str(),
            "{}",
            backend.name()
        );
        assert_eq!(arena.next_of("chat").await["message"], "gg");

        server
            .ok(Some(&alice), EDIT, json!({ "id": m, "b": "gg wp" }))
            .await;
        for (socket, dialect) in [(&mut conversations, "conversations"), (&mut arena, "arena")] {
            let edited = socket.next_of("message_edited").await;
            assert_exact_keys(
                &edited,
                &[
                    "type",
                    "room",
                    "position",
                    "id",
                    "from",
                    "username",
                    "text",
                    "edited_at",
                    "timestamp",
                ],
            );
            assert_eq!(edited["room"], "general", "{dialect}");
            assert_eq!(edited["id"], m.as_str());
            assert_eq!(edited["from"], "alice");
            assert_eq!(edited["username"], "alice");
            assert_eq!(edited["text"], "gg wp");
            assert!(edited["edited_at"].is_string() && edited["timestamp"].is_string());
        }

        server
            .ok(Some(&bob), REACT, json!({ "id": m, "e": "🎉" }))
            .await;
        for (socket, viewer_reacted) in [(&mut conversations, false), (&mut arena, true)] {
            let reactions = socket.next_of("reactions").await;
            assert_exact_keys(
                &reactions,
                &[
                    "type",
                    "room",
                    "position",
                    "message_id",
                    "reactions",
                    "timestamp",
                ],
            );
            assert_eq!(reactions["room"], "general");
            assert_eq!(reactions["message_id"], m.as_str());
            assert_eq!(
                reactions["reactions"],
                json!([{ "emoji": "🎉", "count": 1, "viewer_reacted": viewer_reacted }]),
                "each socket sees whether its own user reacted"
            );
        }

        server
            .ok(Some(&alice), MARK, json!({ "r": "general", "id": m }))
            .await;
        for socket in [&mut conversations, &mut arena] {
            let read = socket.next_of("read").await;
            assert_exact_keys(
                &read,
                &[
                    "type",
                    "room",
                    "position",
                    "user_id",
                    "username",
                    "message_id",
                    "at",
                    "timestamp",
                ],
            );
            assert_eq!(read["room"], "general");
            assert_eq!(read["user_id"], "alice");
            assert_eq!(read["username"], "alice");
            assert_eq!(read["message_id"], m.as_str());
        }

        server.ok(Some(&alice), DELETE, json!({ "id": m })).await;
        let mut positions = Vec::new();
        for socket in [&mut conversations, &mut arena] {
            let deleted = socket.next_of("message_deleted").await;
            assert_exact_keys(
                &deleted,
                &[
                    "type",
                    "room",
                    "position",
                    "message_id",
                    "deleted_at",
                    "timestamp",
                ],
            );
            assert_eq!(deleted["room"], "general");
            assert_eq!(deleted["message_id"], m.as_str());
            assert!(deleted["deleted_at"].is_string());
            positions.push(deleted["position"].clone());
        }
        assert_eq!(
            positions[0], positions[1],
            "one position, whatever the dialect"
        );
    }
}

#[tokio::test]
async fn legacy_sockets_take_a_reaction_back_with_unreact() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        join(&server, &alice, "lobby").await;
        let m = id_of(&send(&server, &alice, "lobby", "react and take back").await);
        let mut legacy = LegacyClient::user(&server, &alice).await;
        legacy
            .send(json!({ "type": "join_room", "room": "lobby" }))
            .await;
        legacy.next_of("joined_room").await;
        for emoji in ["👍", "🎉"] {
            legacy
                .send(json!({ "type": "react", "message_id": m, "emoji": emoji }))
                .await;
            legacy.next_of("reactions").await;
        }
        legacy
            .send(json!({ "type": "unreact", "message_id": m, "emoji": "👍" }))
            .await;
        let after = legacy.next_of("reactions").await;
        assert_eq!(after["message_id"], m.as_str(), "{}", backend.name());
        assert_eq!(
            after["reactions"],
            json!([{ "emoji": "🎉", "count": 1, "viewer_reacted": true }])
        );
        assert_eq!(after["data"]["reactions"], after["reactions"]);
        // Taking back what is not there changes nothing and tells nobody.
        legacy
            .send(json!({ "type": "unreact", "message_id": m, "emoji": "👍" }))
            .await;
        legacy.sync().await;
        legacy
            .expect_none_of("reactions", Duration::from_millis(300))
            .await;
        let seen = server
            .ok(
                Some(&alice),
                "query { messages(roomId: \"lobby\") { id reactions { emoji count } } }",
                json!({}),
            )
            .await["messages"]
            .as_array()
            .expect("a list")
            .iter()
            .find(|x| x["id"] == m.as_str())
            .expect("the message")["reactions"]
            .clone();
        assert_eq!(seen, json!([{ "emoji": "🎉", "count": 1 }]));
    }
}

#[tokio::test]
async fn a_legacy_socket_over_its_rate_hears_rate_limited_and_stays_open() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_RATE_REACTIONS", "1/1h"),
            ("TIDINGS_BURST_REACTIONS", "1"),
        ],
    );
    let alice = register(&server, "alice").await;
    join(&server, &alice, "lobby").await;
    let m = id_of(&send(&server, &alice, "lobby", "limited").await);
    let mut legacy = LegacyClient::user(&server, &alice).await;
    legacy
        .send(json!({ "type": "join_room", "room": "lobby" }))
        .await;
    legacy.next_of("joined_room").await;
    legacy
        .send(json!({ "type": "react", "message_id": m, "emoji": "👍" }))
        .await;
    legacy.next_of("reactions").await;
    legacy
        .send(json!({ "type": "unreact", "message_id": m, "emoji": "👍" }))
        .await;
    let refused = legacy.next_of("error").await;
    assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
    assert!(refused["message"].is_string());
    assert_eq!(refused["data"]["code"], "RATE_LIMITED", "mirrored in data");
    legacy.sync().await;
    legacy
        .expect_none_of("reactions", Duration::from_millis(300))
        .await;
    // Messages have their own bucket: the socket still chats.
    legacy
        .send(json!({ "type": "message", "room": "lobby", "text": "still here" }))
        .await;
    assert_eq!(legacy.next_of("message").await["text"], "still here");
    let text = metrics(&server).await;
    assert_eq!(
        sample(&text, "tidings_rate_limited_total{action=\"reaction\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn legacy_sockets_edit_delete_react_and_mark_read_under_the_same_rules() {
    for backend in backends() {
        let (server, _db) = server(&backend).await;
        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        join(&server, &bob, "lobby").await;
        let theirs = id_of(&send(&server, &bob, "lobby", "bob's").await);
        let mut legacy = LegacyClient::user(&server, &alice).await;
        legacy
            .send(json!({ "type": "join_room", "room": "lobby" }))
            .await;
        legacy.next_of("joined_room").await;
        legacy
            .send(json!({ "type": "message", "room": "lobby", "text": "mine" }))
            .await;
        let mine = legacy.next_of("message").await["id"]
            .as_str()
            .expect("an id")
            .to_owned();

        legacy
            .send(json!({ "type": "edit_message", "id": mine, "text": "mine, edited" }))
            .await;
        let edited = legacy.next_of("message_edited").await;
        assert_eq!(edited["text"], "mine, edited", "{}", backend.name());
        legacy
            .send(json!({ "type": "react", "message_id": theirs, "emoji": "👍" }))
            .await;
        let reactions = legacy.next_of("reactions").await;
        assert_eq!(reactions["reactions"][0]["viewer_reacted"], true);
        legacy
            .send(json!({ "type": "mark_read", "room": "lobby", "message_id": mine }))
            .await;
        assert_eq!(legacy.next_of("read").await["message_id"], mine.as_str());
        legacy
            .send(json!({ "type": "delete_message", "id": mine }))
            .await;
        assert_eq!(
            legacy.next_of("message_deleted").await["message_id"],
            mine.as_str()
        );

        // The same refusals as GraphQL, as error frames; the socket stays open.
        for (frame, code) in [
            (
                json!({ "type": "edit_message", "id": theirs, "text": "hijack" }),
                "FORBIDDEN",
            ),
            (
                json!({ "type": "delete_message", "id": theirs }),
                "FORBIDDEN",
            ),
            (
                json!({ "type": "edit_message", "id": mine, "text": "undead" }),
                "BAD_USER_INPUT",
            ),
            (
                json!({ "type": "react", "message_id": theirs, "emoji": "nope" }),
                "BAD_USER_INPUT",
            ),
            (
                json!({ "type": "react", "message_id": theirs }),
                "BAD_USER_INPUT",
            ),
        ] {
            legacy.send(frame.clone()).await;
            assert_eq!(legacy.next_of("error").await["code"], code, "{frame}");
        }
        legacy.sync().await;
    }
}

#[tokio::test]
async fn edits_reactions_and_receipts_have_rate_limits_of_their_own() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(
        &db,
        &[
            ("TIDINGS_RATE_EDITS", "1/1h"),
            ("TIDINGS_BURST_EDITS", "1"),
            ("TIDINGS_RATE_REACTIONS", "1/1h"),
            ("TIDINGS_BURST_REACTIONS", "1"),
            ("TIDINGS_RATE_RECEIPTS", "1/1h"),
            ("TIDINGS_BURST_RECEIPTS", "1"),
        ],
    );
    let alice = register(&server, "alice").await;
    join(&server, &alice, "lobby").await;
    let m = id_of(&send(&server, &alice, "lobby", "limited").await);
    server
        .ok(Some(&alice), EDIT, json!({ "id": m, "b": "once" }))
        .await;
    assert_eq!(
        server
            .err_code(Some(&alice), EDIT, json!({ "id": m, "b": "twice" }))
            .await,
        "RATE_LIMITED"
    );
    assert_eq!(
        server
            .err_code(Some(&alice), DELETE, json!({ "id": m }))
            .await,
        "RATE_LIMITED",
        "deletes share the edits' bucket"
    );
    server
        .ok(Some(&alice), REACT, json!({ "id": m, "e": "👍" }))
        .await;
    assert_eq!(
        server
            .err_code(Some(&alice), UNREACT, json!({ "id": m, "e": "👍" }))
            .await,
        "RATE_LIMITED"
    );
    server
        .ok(Some(&alice), MARK, json!({ "r": "lobby", "id": m }))
        .await;
    assert_eq!(
        server
            .err_code(Some(&alice), MARK, json!({ "r": "lobby", "id": m }))
            .await,
        "RATE_LIMITED"
    );
    // Someone who may not mark the room read hears so, limited or not.
    let bob = register(&server, "bob").await;
    for _ in 0..2 {
        assert_eq!(
            server
                .err_code(Some(&bob), MARK, json!({ "r": "lobby", "id": m }))
                .await,
            "FORBIDDEN"
        );
    }
    let text = metrics(&server).await;
    for (action, refused) in [("edit", 2.0), ("reaction", 1.0), ("receipt", 2.0)] {
        let series = format!("tidings_rate_limited_total{{action=\"{action}\"}}");
        assert_eq!(sample(&text, &series), Some(refused), "{series}");
    }
}

#[tokio::test]
async fn room_events_that_do_not_ask_for_viewer_reacted_share_one_execution() {
    let (server, _db) = server(&Backend::Sqlite).await;
    let shared = "subscription($r: ID!) { roomEvents(roomId: $r) { __typename position \
        ... on ReadReceiptMoved { receipt { user { username } messageId } } \
        ... on MessagePosted { message { body } } } }";
    let mut tokens = Vec::new();
    let mut sockets = Vec::new();
    for name in ["u0", "u1", "u2", "u3"] {
        let token = register(&server, name).await;
        join(&server, &token, "lobby").await;
        tokens.push(token);
    }
    for token in &tokens {
        let mut ws = GqlSocket::user(&server, token).await;
        ws.subscribe("e", shared, json!({ "r": "lobby" })).await;
        sockets.push(ws);
    }
    // Asking whether the viewer reacted is per viewer: its own execution.
    let mut own = GqlSocket::user(&server, &tokens[0]).await;
    own.subscribe("e", EVENTS, json!({ "r": "lobby" })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics(&server).await;
    assert_eq!(
        sample(&text, "tidings_cohort_executions_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "tidings_cohort_members"), Some(4.0));

    let hello = id_of(&send(&server, &tokens[0], "lobby", "hello").await);
    server
        .ok(Some(&tokens[1]), MARK, json!({ "r": "lobby", "id": hello }))
        .await;
    for ws in sockets.iter_mut().chain(std::iter::once(&mut own)) {
        assert_eq!(next_event(ws, "e").await["message"]["body"], "hello");
        let read = next_event(ws, "e").await;
        assert_eq!(read["__typename"], "ReadReceiptMoved");
        assert_eq!(read["receipt"]["user"]["username"], "u1");
    }

    // A member who leaves gets their own "left", then FORBIDDEN; the others go on.
    server
        .ok(
            Some(&tokens[3]),
            "mutation { leaveRoom(roomId: \"lobby\") }",
            json!({}),
        )
        .await;
    assert_eq!(
        next_event(&mut sockets[3], "e").await["message"]["body"],
        "u3 left"
    );
    assert_eq!(sockets[3].error_code("e").await, "FORBIDDEN");
    assert_eq!(sockets[3].frame_for("e").await["type"], "complete");
    send(&server, &tokens[0], "lobby", "three left").await;
    for ws in sockets.iter_mut().take(3) {
        assert_eq!(next_event(ws, "e").await["message"]["body"], "u3 left");
        assert_eq!(next_event(ws, "e").await["message"]["body"], "three left");
    }
    sockets[3].expect_silence(Duration::from_millis(300)).await;
}
