//! The hub's events are the wire format between instances (Redis): each event's JSON is pinned
//! here, in `tests/wire/*.json`, so a change to it is deliberate, and comes with a new
//! `WIRE_VERSION`. After such a change, `TIDINGS_BLESS=1 cargo test --test wire` writes the new
//! files for review.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tidings::hub::event::*;

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0)
        .single()
        .expect("a valid time")
}

fn alice() -> UserCard {
    UserCard {
        id: "42".into(),
        username: "alice".into(),
        role: "user".into(),
        points: 7,
        status: "ONLINE".into(),
        last_seen_at: Some(at()),
        created_at: at(),
    }
}

/// One of each event, with the envelope it travels in.
fn events() -> Vec<(&'static str, Event)> {
    vec![
        (
            "message",
            Event::Message(MessageAdded {
                message: PostedMessage {
                    id: 17,
                    room_id: "lobby".into(),
                    seq: 3,
                    kind: "USER".into(),
                    sender_id: Some("42".into()),
                    body: "hello".into(),
                    client_message_id: Some("c-1".into()),
                    created_at: at(),
                    membership: None,
                    edited_at: None,
                    deleted_at: None,
                },
                sender: Some(alice()),
            }),
        ),
        (
            "message_left",
            Event::Message(MessageAdded {
                message: PostedMessage {
                    id: 18,
                    room_id: "lobby".into(),
                    seq: 4,
                    kind: "SYSTEM".into(),
                    sender_id: None,
                    body: "alice left".into(),
                    client_message_id: None,
                    created_at: at(),
                    membership: Some(Membership {
                        user_id: "42".into(),
                        change: MembershipChange::Left,
                    }),
                    edited_at: None,
                    deleted_at: None,
                },
                sender: None,
            }),
        ),
        (
            "message_edited",
            Event::RoomChange(RoomChanged {
                room_id: "lobby".into(),
                seq: 5,
                at: at(),
                change: Change::Edited {
                    message: Box::new(PostedMessage {
                        id: 17,
                        room_id: "lobby".into(),
                        seq: 3,
                        kind: "USER".into(),
                        sender_id: Some("42".into()),
                        body: "hello, edited".into(),
                        client_message_id: Some("c-1".into()),
                        created_at: at(),
                        membership: None,
                        edited_at: Some(at()),
                        deleted_at: None,
                    }),
                    sender: Some(alice()),
                    reactions: Vec::new(),
                },
            }),
        ),
        (
            "message_deleted",
            Event::RoomChange(RoomChanged {
                room_id: "lobby".into(),
                seq: 6,
                at: at(),
                change: Change::Deleted { message_id: 17 },
            }),
        ),
        (
            "reactions",
            Event::RoomChange(RoomChanged {
                room_id: "lobby".into(),
                seq: 7,
                at: at(),
                change: Change::Reactions {
                    message_id: 17,
                    reactions: vec![ReactionCount {
                        emoji: "👍".into(),
                        count: 2,
                    }],
                },
            }),
        ),
        (
            "read",
            Event::RoomChange(RoomChanged {
                room_id: "lobby".into(),
                seq: 8,
                at: at(),
                change: Change::Read {
                    user: alice(),
                    message_id: 17,
                },
            }),
        ),
        (
            "typing",
            Event::Typing(Typing {
                room_id: "lobby".into(),
                user: alice(),
                is_typing: true,
                at: at(),
            }),
        ),
        (
            "presence",
            Event::Presence(PresenceChanged {
                user: Arc::new(alice()),
                status: Status::Away,
                connections: 2,
                rooms: vec!["lobby".into()],
                at: at(),
            }),
        ),
        (
            "notification",
            Event::Notification(NotificationAdded {
                notification: StoredNotification {
                    id: 5,
                    user_id: "42".into(),
                    seq: 2,
                    kind: "mention".into(),
                    level: "INFO".into(),
                    title: "bob mentioned you".into(),
                    body: Some("hi @alice".into()),
                    data: Some(serde_json::json!({ "roomId": "lobby" })),
                    created_at: at(),
                    read_at: None,
                },
            }),
        ),
        (
            "leaderboard",
            Event::Leaderboard(LeaderboardChanged {
                version: 9,
                at: at(),
                entries: vec![LeaderboardRow {
                    user: alice(),
                    points: 7,
                }],
            }),
        ),
        (
            "channel",
            Event::Channel(ChannelEvent {
                id: "e1".into(),
                channel: "public:game".into(),
                kind: "round.started".into(),
                data: serde_json::json!({ "round": 3 }),
                at: at(),
            }),
        ),
        (
            "disconnect",
            Event::Disconnect(DisconnectUser {
                user_id: "42".into(),
            }),
        ),
        (
            "stats",
            Event::Stats(InstanceStats {
                instance: "9f2c4e1a7b3d5c60".into(),
                at: at(),
                started_at: at(),
                connections: vec![Figure {
                    name: "graphql_ws".into(),
                    value: 3,
                }],
                subscriptions: vec![Figure {
                    name: "room_messages".into(),
                    value: 5,
                }],
                cohorts: 1,
                cohort_members: 2,
                events_published: 40,
                events_delivered: 120,
                published_per_second: 2.0,
                delivered_per_second: 6.0,
                latency_p50_ms: Some(0.5),
                latency_p99_ms: None,
                slow_consumers: 0,
                refusals: vec![Figure {
                    name: "connections:server_full".into(),
                    value: 1,
                }],
                redis: "up".into(),
                database: "ok".into(),
                sockets: vec![SocketLoad {
                    user_id: "42".into(),
                    transport: "graphql_ws".into(),
                    queued: 0,
                }],
                signed_in_sockets: 1,
            }),
        ),
        (
            "left",
            Event::Left(LeftRoom {
                room_id: "lobby".into(),
                user_id: "42".into(),
            }),
        ),
    ]
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/wire")
        .join(format!("{name}.json"))
}

#[test]
fn every_event_travels_as_its_pinned_json() {
    let bless = std::env::var_os("TIDINGS_BLESS").is_some();
    let mut drifted = Vec::new();
    for (name, event) in events() {
        let envelope = Envelope {
            v: WIRE_VERSION,
            origin: "instance-a".into(),
            topic: event.topic(),
            event,
        };
        let actual: Value = serde_json::to_value(&envelope).expect("serialisable");
        let path = golden(name);
        if bless {
            let text = serde_json::to_string_pretty(&actual).expect("json") + "\n";
            std::fs::write(&path, text).expect("write golden file");
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (TIDINGS_BLESS=1 writes it)", path.display()));
        let expected: Value = serde_json::from_str(&text).expect("golden files are JSON");
        if actual != expected {
            drifted.push(format!("{name}: expected {expected}\n   got {actual}"));
        }
        // What an instance sends, another reads back the same.
        let back: Envelope = serde_json::from_value(expected).expect("the pinned form parses");
        assert_eq!(
            serde_json::to_value(&back).expect("serialisable"),
            actual,
            "{name} round trip"
        );
    }
    assert!(
        drifted.is_empty(),
        "the wire format changed: bump WIRE_VERSION and bless the new files\n{}",
        drifted.join("\n")
    );
}
