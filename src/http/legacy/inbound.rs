//! What a legacy client may send: each `type` and alias of LEGACY_WS.md decoded into one
//! `Command`. Decoding only checks that fields are there and of the right JSON type; what they
//! may contain (room ids, message bodies, ...) is the domain's to say.

use serde_json::{Map, Value};

use super::{Dialect, GENERAL_ROOM};

/// One client frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Join {
        room: String,
    },
    Leave {
        room: String,
    },
    Message {
        room: String,
        text: String,
    },
    Typing {
        room: String,
        is_typing: bool,
    },
    Ping,
    /// `get_online_status`: which of these users are online.
    OnlineStatus {
        user_ids: Vec<String>,
    },
    /// Follow a channel (API.md's names and rules).
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
    },
    /// `edit_message`: a new body for one's own message (or, for an admin, anyone's).
    Edit {
        id: String,
        text: String,
    },
    /// `delete_message`.
    Delete {
        id: String,
    },
    /// `react` (`add`) and `unreact`.
    React {
        message_id: String,
        emoji: String,
        add: bool,
    },
    /// `mark_read`: the room is read up to this message.
    MarkRead {
        room: String,
        message_id: String,
    },
    /// Renew the socket's credentials with a fresh token of the same user.
    Auth {
        token: String,
    },
}

/// A decoded frame, and the dialect it chooses when it is a socket's first room frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inbound {
    pub(crate) command: Command,
    pub(crate) chooses: Option<Dialect>,
}

/// Why a JSON frame could not be decoded: answered with a `BAD_USER_INPUT` error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Undecodable(pub(crate) String);

/// Decodes a frame that is valid JSON.
pub(crate) fn decode(frame: &Value) -> Result<Inbound, Undecodable> {
    let Some(fields) = frame.as_object() else {
        return Err(Undecodable(
            "a frame must be a JSON object with a type".into(),
        ));
    };
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(Undecodable("type must be a string".into())),
        None => return Err(Undecodable("a frame must have a type".into())),
    };
    let f = Fields { kind, fields };
    let (command, chooses) = match kind {
        "auth" => (
            Command::Auth {
                token: f.text("token")?,
            },
            None,
        ),
        "join_room" => (
            Command::Join {
                room: f.id("room")?,
            },
            Some(Dialect::Rooms),
        ),
        "leave_room" => (
            Command::Leave {
                room: f.id("room")?,
            },
            Some(Dialect::Rooms),
        ),
        "message" => (
            Command::Message {
                room: f.id("room")?,
                text: f.text("text")?,
            },
            Some(Dialect::Rooms),
        ),
        "typing" => (
            Command::Typing {
                room: f.id("room")?,
                is_typing: f.flag("is_typing")?.unwrap_or(true),
            },
            Some(Dialect::Rooms),
        ),
        "chat" => (
            Command::Message {
                room: GENERAL_ROOM.to_owned(),
                text: f.text("message")?,
            },
            Some(Dialect::Arena),
        ),
        "send_message" => (
            Command::Message {
                room: f.id("conversation_id")?,
                text: f.text("content")?,
            },
            Some(Dialect::Conversations),
        ),
        "join_conversation" => (
            Command::Join {
                room: f.id("conversation_id")?,
            },
            Some(Dialect::Conversations),
        ),
        "leave_conversation" => (
            Command::Leave {
                room: f.id("conversation_id")?,
            },
            Some(Dialect::Conversations),
        ),
        "typing_start" | "typing_stop" => (
            Command::Typing {
                room: f.id("conversation_id")?,
                is_typing: kind == "typing_start",
            },
            Some(Dialect::Conversations),
        ),
        "ping" => (Command::Ping, None),
        "subscribe" => (
            Command::Subscribe {
                channel: f.text("channel")?,
            },
            None,
        ),
        "unsubscribe" => (
            Command::Unsubscribe {
                channel: f.text("channel")?,
            },
            None,
        ),
        "get_online_status" => (
            Command::OnlineStatus {
                user_ids: f.ids("user_ids")?,
            },
            None,
        ),
        "edit_message" => (
            Command::Edit {
                id: f.id("id")?,
                text: f.text("text")?,
            },
            None,
        ),
        "delete_message" => (Command::Delete { id: f.id("id")? }, None),
        "react" | "unreact" => (
            Command::React {
                message_id: f.id("message_id")?,
                emoji: f.text("emoji")?,
                add: kind == "react",
            },
            None,
        ),
        "mark_read" => (
            Command::MarkRead {
                room: f.id("room")?,
                message_id: f.id("message_id")?,
            },
            None,
        ),
        other => return Err(Undecodable(format!("unknown message type {other:?}"))),
    };
    Ok(Inbound { command, chooses })
}

struct Fields<'a> {
    kind: &'a str,
    fields: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn missing(&self, name: &str, what: &str) -> Undecodable {
        Undecodable(format!("{} needs {name} ({what})", self.kind))
    }

    /// A room or user id: a string, or a number (older clients number their conversations).
    fn id(&self, name: &str) -> Result<String, Undecodable> {
        id_value(self.fields.get(name)).ok_or_else(|| self.missing(name, "a string"))
    }

    fn text(&self, name: &str) -> Result<String, Undecodable> {
        match self.fields.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(self.missing(name, "a string")),
        }
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, Undecodable> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Undecodable(format!("{name} must be true or false"))),
        }
    }

    fn ids(&self, name: &str) -> Result<Vec<String>, Undecodable> {
        let Some(Value::Array(items)) = self.fields.get(name) else {
            return Err(self.missing(name, "a list of user ids"));
        };
        items
            .iter()
            .map(|v| id_value(Some(v)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Undecodable(format!("{name} must hold strings or numbers")))
    }
}

fn id_value(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn command(frame: Value) -> Command {
        decode(&frame).expect("decodes").command
    }

    #[test]
    fn aliases_decode_to_the_command_they_stand_for() {
        assert_eq!(
            command(json!({ "type": "chat", "message": "hi" })),
            Command::Message {
                room: "general".into(),
                text: "hi".into()
            }
        );
        assert_eq!(
            command(json!({ "type": "send_message", "conversation_id": 7, "content": "hi" })),
            Command::Message {
                room: "7".into(),
                text: "hi".into()
            }
        );
        assert_eq!(
            command(json!({ "type": "typing_stop", "conversation_id": "c1" })),
            Command::Typing {
                room: "c1".into(),
                is_typing: false
            }
        );
        assert_eq!(
            command(json!({ "type": "typing", "room": "r" })),
            Command::Typing {
                room: "r".into(),
                is_typing: true
            },
            "is_typing defaults to true"
        );
    }

    #[test]
    fn room_frames_choose_a_dialect_and_others_do_not() {
        let chooses = |frame: Value| decode(&frame).expect("decodes").chooses;
        assert_eq!(
            chooses(json!({ "type": "join_conversation", "conversation_id": "c" })),
            Some(Dialect::Conversations)
        );
        assert_eq!(
            chooses(json!({ "type": "chat", "message": "x" })),
            Some(Dialect::Arena)
        );
        assert_eq!(
            chooses(json!({ "type": "leave_room", "room": "r" })),
            Some(Dialect::Rooms)
        );
        assert_eq!(chooses(json!({ "type": "ping" })), None);
    }

    #[test]
    fn missing_or_mistyped_fields_and_unknown_types_are_undecodable() {
        assert!(decode(&json!({ "type": "join_room" })).is_err());
        assert!(decode(&json!({ "type": "message", "room": "r", "text": 5 })).is_err());
        assert!(decode(&json!({ "type": "typing", "room": "r", "is_typing": "yes" })).is_err());
        assert_eq!(
            decode(&json!({ "type": "subscribe", "channel": "public:x" })).map(|i| i.command),
            Ok(Command::Subscribe {
                channel: "public:x".into()
            })
        );
        assert!(
            decode(&json!({ "type": "subscribe" })).is_err(),
            "needs a channel"
        );
        assert!(decode(&json!({ "room": "r" })).is_err());
        assert!(decode(&json!([1, 2])).is_err());
        assert!(decode(&json!({ "type": "get_online_status", "user_ids": [{}] })).is_err());
    }
}
