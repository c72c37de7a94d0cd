//! The `arena` dialect: one global chat (room `general`) plus single-stream endpoints under
//! `/api/ws/` for notifications, presence and the leaderboard. Frames carry a `timestamp` and
//! no `data` mirror.

use serde_json::{json, Value};

use super::{notification_data, sender_name, status_name, Outgoing, PresenceChange, Purpose};
use crate::domain::leaderboard::RankedEntry;

/// The table; `None` for an event without a row here (it falls back to its `rooms` shape).
pub(super) fn frame(
    event: &Outgoing<'_>,
    purpose: Purpose,
    timestamp: &dyn Fn() -> String,
) -> Option<Value> {
    Some(match event {
        Outgoing::Welcome { user, .. } => {
            let name = user.map_or("guest", |u| u.username.as_str());
            json!({
                "type": "connection",
                "message": format!("Welcome! You are connected as {name}."),
                "timestamp": timestamp(),
            })
        }
        Outgoing::Message(m) => json!({
            "type": "chat",
            "user_id": m.message.sender_id,
            "username": sender_name(m),
            "message": m.message.body,
            "timestamp": timestamp(),
        }),
        Outgoing::Typing(t) => json!({
            "type": "typing",
            "user_id": t.user.id,
            "is_typing": t.is_typing,
            "timestamp": timestamp(),
        }),
        // The presence stream tells every status; the chat tells who joined and left.
        Outgoing::Presence(p) if purpose == Purpose::Presence => {
            let status = match p.change {
                PresenceChange::Online(s) | PresenceChange::Status(s) => status_name(s),
                PresenceChange::Offline => "offline",
            };
            json!({
                "type": "presence",
                "user_id": p.user_id,
                "status": status,
                "timestamp": timestamp(),
            })
        }
        Outgoing::Presence(p) => {
            let kind = match p.change {
                PresenceChange::Online(_) => "user_joined",
                PresenceChange::Offline => "user_left",
                PresenceChange::Status(_) => return None,
            };
            json!({ "type": kind, "user_id": p.user_id, "timestamp": timestamp() })
        }
        Outgoing::Notification(n) => json!({
            "type": "notification",
            "data": notification_data(n),
            "timestamp": timestamp(),
        }),
        Outgoing::Leaderboard(entries) => json!({
            "type": "leaderboard_update",
            "data": leaderboard_entries(entries),
            "timestamp": timestamp(),
        }),
        _ => return None,
    })
}

/// Leaderboard rows as arena clients read them (`experience_points` is their name for points).
pub(super) fn leaderboard_entries(entries: &[RankedEntry]) -> Value {
    entries
        .iter()
        .map(|e| {
            json!({
                "rank": e.rank,
                "user_id": e.user.id,
                "username": e.user.username,
                "points": e.points,
                "experience_points": e.points,
            })
        })
        .collect()
}
