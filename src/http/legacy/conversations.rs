//! The `conversations` dialect, of chat apps built around conversations (their documented
//! endpoint is `/ws/auth`). A room is a conversation; frames carry a `timestamp` and no `data`
//! mirror.

use serde_json::{json, Value};

use super::{iso, sender_id, Outgoing, PresenceChange};

/// The table; `None` for an event without a row here (it falls back to its `rooms` shape).
pub(super) fn frame(event: &Outgoing<'_>, timestamp: &dyn Fn() -> String) -> Option<Value> {
    Some(match event {
        // The greeting: the user's online contacts, in place of the welcome.
        Outgoing::Welcome {
            contacts: Some(users),
            ..
        } => json!({
            "type": "online_users",
            "users": users,
            "timestamp": timestamp(),
        }),
        Outgoing::Joined { room } => json!({
            "type": "conversation_joined",
            "conversation_id": room,
            "timestamp": timestamp(),
        }),
        Outgoing::Message(m) => {
            let at = iso(m.message.created_at);
            json!({
                "type": "new_message",
                "conversation_id": m.message.room_id,
                "message": {
                    "id": m.message.id.to_string(),
                    "sender_id": sender_id(m),
                    "content": m.message.body,
                    "timestamp": at,
                    "is_ai": false,
                },
                "timestamp": at,
            })
        }
        Outgoing::Typing(t) => json!({
            "type": "typing_indicator",
            "conversation_id": t.room_id,
            "user_id": t.user.id,
            "is_typing": t.is_typing,
            "timestamp": timestamp(),
        }),
        Outgoing::Presence(p) => {
            let online = match p.change {
                PresenceChange::Online(_) => true,
                PresenceChange::Offline => false,
                PresenceChange::Status(_) => return None,
            };
            json!({
                "type": "presence_update",
                "user_id": p.user_id,
                "online": online,
                "timestamp": timestamp(),
            })
        }
        Outgoing::OnlineUsers(users) => json!({
            "type": "online_users",
            "users": users,
            "timestamp": timestamp(),
        }),
        Outgoing::Error { code, message } => json!({
            "type": "error",
            "message": message,
            "code": code,
            "timestamp": timestamp(),
        }),
        _ => return None,
    })
}
