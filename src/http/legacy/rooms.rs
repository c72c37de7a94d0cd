//! The `rooms` dialect, LEGACY_WS.md's own frames and every other dialect's fallback. Flat
//! frames also carry their fields in `data`, so clients that read either place work.

use serde_json::{json, Map, Value};

use super::{
    iso, iso_exp, notification_data, object, sender_id, sender_name, Outgoing, PresenceChange,
};
use crate::domain::changes::{RoomEventKind, RoomEventView};

/// A frame before the `rooms` dialect's `data` mirror.
pub(super) enum Shape {
    /// Fields at the top level (`message`, `system`, `typing`, `error`, `online_users`): the
    /// `rooms` dialect mirrors them in `data`.
    Flat(Map<String, Value>),
    /// A frame with exactly this shape (`joined_room`, `user.online`, `notification`, `pong`).
    Exact(Map<String, Value>),
}

impl Shape {
    /// As the `rooms` dialect sends it.
    pub(super) fn mirrored(self) -> Value {
        match self {
            Shape::Flat(mut frame) => {
                let data: Map<String, Value> = frame
                    .iter()
                    .filter(|(k, _)| k.as_str() != "type")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                frame.insert("data".into(), Value::Object(data));
                Value::Object(frame)
            }
            Shape::Exact(frame) => Value::Object(frame),
        }
    }

    /// Without the mirror, as other dialects fall back to it.
    pub(super) fn plain(self) -> Map<String, Value> {
        match self {
            Shape::Flat(frame) | Shape::Exact(frame) => frame,
        }
    }
}

/// `{"type": kind, "data": data}`.
fn wrapped(kind: &str, data: Value) -> Shape {
    Shape::Exact(object([("type", kind.into()), ("data", data)]))
}

/// The table; `None` for what this dialect does not tell (a status change).
pub(super) fn frame(event: &Outgoing<'_>) -> Option<Shape> {
    Some(match event {
        Outgoing::Welcome {
            user, online_count, ..
        } => Shape::Flat(object([
            ("type", "system".into()),
            ("message", "Connected successfully".into()),
            ("user_id", user.map_or(Value::Null, |u| u.id.clone().into())),
            ("online_count", (*online_count).into()),
            (
                "expires_at",
                user.map_or(Value::Null, |u| iso_exp(u.expires_at).into()),
            ),
        ])),
        Outgoing::Joined { room } => wrapped("joined_room", json!({ "room": room })),
        Outgoing::Message(m) => Shape::Flat(object([
            ("type", "message".into()),
            ("id", m.message.id.to_string().into()),
            ("from", sender_id(m)),
            ("username", sender_name(m)),
            ("room", m.message.room_id.clone().into()),
            ("text", m.message.body.clone().into()),
            ("timestamp", iso(m.message.created_at).into()),
        ])),
        Outgoing::System {
            room,
            text,
            members,
        } => Shape::Flat(object([
            ("type", "system".into()),
            ("message", (*text).into()),
            ("room", (*room).into()),
            ("members", (*members).into()),
        ])),
        Outgoing::RoomChange(e) => return change_frame(e),
        Outgoing::Typing(t) => Shape::Flat(object([
            ("type", "typing".into()),
            ("user_id", t.user.id.clone().into()),
            ("username", t.user.username.clone().into()),
            ("room", t.room_id.clone().into()),
            ("is_typing", t.is_typing.into()),
        ])),
        Outgoing::Presence(p) => {
            let kind = match p.change {
                PresenceChange::Online(_) => "user.online",
                PresenceChange::Offline => "user.offline",
                PresenceChange::Status(_) => return None,
            };
            wrapped(
                kind,
                json!({ "user_id": p.user_id, "username": p.username }),
            )
        }
        Outgoing::Notification(n) => wrapped("notification", notification_data(n)),
        Outgoing::Leaderboard(entries) => wrapped(
            "leaderboard_update",
            super::arena::leaderboard_entries(entries),
        ),
        Outgoing::OnlineUsers(users) => Shape::Flat(object([
            ("type", "online_users".into()),
            ("users", (*users).into()),
        ])),
        Outgoing::Error { code, message } => Shape::Flat(object([
            ("type", "error".into()),
            ("message", (*message).into()),
            ("code", (*code).into()),
        ])),
        Outgoing::Pong => Shape::Exact(object([("type", "pong".into())])),
        Outgoing::AuthOk { expires_at } => Shape::Exact(object([
            ("type", "auth_ok".into()),
            ("expires_at", iso_exp(*expires_at).into()),
        ])),
        Outgoing::TokenExpiring { expires_at } => Shape::Exact(object([
            ("type", "token_expiring".into()),
            ("expires_at", iso_exp(*expires_at).into()),
        ])),
        Outgoing::Subscribed { channel } => wrapped("subscribed", json!({ "channel": channel })),
        Outgoing::Unsubscribed { channel } => {
            wrapped("unsubscribed", json!({ "channel": channel }))
        }
        // Rendered before any dialect's table (its own shape everywhere).
        Outgoing::Channel(_) => return None,
    })
}

/// A room's change as its flat frame: `message_edited`, `message_deleted`, `reactions`, `read`,
/// each with the room and its position on the room's sequence; `None` for a new message (sent
/// as `message` or `system`).
fn change_frame(e: &RoomEventView) -> Option<Shape> {
    let room = ("room", Value::from(e.room_id.clone()));
    let position = ("position", Value::from(e.position.to_string()));
    Some(Shape::Flat(match &e.kind {
        RoomEventKind::Posted(_) => return None,
        RoomEventKind::Edited { message: m, .. } => object([
            ("type", "message_edited".into()),
            room,
            position,
            ("id", m.message.id.to_string().into()),
            ("from", sender_id(m)),
            ("username", sender_name(m)),
            ("text", m.message.body.clone().into()),
            (
                "edited_at",
                m.message.edited_at.map_or(Value::Null, |at| iso(at).into()),
            ),
        ]),
        RoomEventKind::Deleted { message_id } => object([
            ("type", "message_deleted".into()),
            room,
            position,
            ("message_id", message_id.to_string().into()),
            ("deleted_at", iso(e.at).into()),
        ]),
        RoomEventKind::Reactions {
            message_id,
            reactions,
        } => object([
            ("type", "reactions".into()),
            room,
            position,
            ("message_id", message_id.to_string().into()),
            (
                "reactions",
                reactions
                    .iter()
                    .map(|r| {
                        json!({
                            "emoji": r.emoji,
                            "count": r.count,
                            "viewer_reacted": r.viewer_reacted,
                        })
                    })
                    .collect::<Vec<_>>()
                    .into(),
            ),
        ]),
        RoomEventKind::Read(r) => object([
            ("type", "read".into()),
            room,
            position,
            ("user_id", r.user.id.clone().into()),
            ("username", r.user.username.clone().into()),
            ("message_id", r.message_id.to_string().into()),
            ("at", iso(r.at).into()),
        ]),
    }))
}
