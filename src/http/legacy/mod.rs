//! The legacy JSON protocol (LEGACY_WS.md): its endpoints and connections (`socket`), what a
//! client may send (`inbound`), what the server tells a client (`Outgoing`) and how each
//! dialect names and shapes it (one table per dialect: `rooms`, `conversations`, `arena`),
//! and the tasks that turn domain feeds into frames (`follow`).
//!
//! None of it holds a rule: every decision about rights, input and audiences of rooms comes
//! from the domain; this layer only translates.

mod arena;
mod conversations;
mod follow;
pub(crate) mod inbound;
mod rooms;
mod socket;

pub(crate) use socket::router;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::socket::{EventStamp, Outbox};
use crate::auth::AuthUser;
use crate::domain::changes::RoomEventView;
use crate::domain::contacts::{ContactPresence, PresenceChange};
use crate::domain::feeds::TypingView;
use crate::domain::leaderboard::RankedEntry;
use crate::domain::messages::MessageView;
use crate::domain::presence::PresenceStatus;
use crate::hub::event::ChannelEvent;

/// The room of the `arena` dialect's one global chat (and of the `chat` alias).
pub(crate) const GENERAL_ROOM: &str = "general";

/// The frame vocabulary a socket speaks. Only names and shapes differ between dialects; the
/// events, rules and audiences are the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// LEGACY_WS.md's own frames: the default.
    Rooms,
    /// Chat apps with conversations (`conversation_joined`, `new_message`, ...).
    Conversations,
    /// One global chat plus streams (`chat`, `user_joined`, `leaderboard_update`, ...).
    Arena,
}

impl Dialect {
    /// A `?dialect=` value.
    pub(crate) fn named(name: &str) -> Option<Self> {
        match name {
            "rooms" => Some(Dialect::Rooms),
            "conversations" => Some(Dialect::Conversations),
            "arena" => Some(Dialect::Arena),
            _ => None,
        }
    }

    /// 1, 2, 3 in the order declared: 0 is "none chosen" in a `DialectChoice`.
    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Self> {
        let all = [Dialect::Rooms, Dialect::Conversations, Dialect::Arena];
        all.get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// A socket's dialect, read by every task that writes frames to it. Chosen once: by the URL, or
/// else by the socket's first room frame; until then frames go out in the `rooms` dialect.
#[derive(Default)]
pub(crate) struct DialectChoice(AtomicU8);

impl DialectChoice {
    pub(crate) fn new(chosen: Option<Dialect>) -> Self {
        Self(AtomicU8::new(chosen.map_or(0, Dialect::code)))
    }

    pub(crate) fn chosen(&self) -> Option<Dialect> {
        Dialect::from_code(self.0.load(Ordering::Acquire))
    }

    /// Chooses `dialect` unless one was chosen already; true when this call chose it.
    pub(crate) fn choose(&self, dialect: Dialect) -> bool {
        self.0
            .compare_exchange(0, dialect.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn current(&self) -> Dialect {
        self.chosen().unwrap_or(Dialect::Rooms)
    }
}

/// What a socket is for, as its path says: the general protocol, or one of the arena dialect's
/// single-stream endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// `/ws`, `/api/v1/ws`, `/ws/auth`, `/api/ws/{user_id}`: rooms, presence, notifications.
    Chat,
    /// `/api/ws/notifications/{user_id}`
    Notifications,
    /// `/api/ws/presence/{user_id}`
    Presence,
    /// `/api/ws/leaderboard`
    Leaderboard,
}

/// A notification as the legacy frames show it.
pub(crate) struct Notice {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) level: String,
    pub(crate) title: String,
    pub(crate) body: Option<String>,
    pub(crate) data: Option<Value>,
    pub(crate) created_at: DateTime<Utc>,
}

/// Something the server tells a legacy client, before a dialect names and shapes it.
pub(crate) enum Outgoing<'a> {
    /// The first frame of a socket of the general protocol. `contacts`: the user's online
    /// contacts (themself included), for a dialect that greets with them.
    Welcome {
        user: Option<&'a AuthUser>,
        online_count: usize,
        contacts: Option<&'a [String]>,
    },
    /// The answer to joining a room.
    Joined {
        room: &'a str,
    },
    /// A user's chat message in a room the socket follows.
    Message(&'a MessageView),
    /// A room's announcement ("alice joined"), with the usernames of its members now.
    System {
        room: &'a str,
        text: &'a str,
        members: &'a [String],
    },
    /// A change to a room the socket follows other than a new message: an edit, a delete,
    /// reactions, a read receipt.
    RoomChange(&'a RoomEventView),
    Typing(&'a TypingView),
    Presence(&'a ContactPresence),
    Notification(&'a Notice),
    Leaderboard(&'a [RankedEntry]),
    /// The answer to `get_online_status`: which of the asked-for users are online.
    OnlineUsers(&'a [String]),
    /// An app event on a channel the socket follows: its own type and data, in every dialect.
    Channel(&'a ChannelEvent),
    /// The answers to `subscribe` and `unsubscribe`.
    Subscribed {
        channel: &'a str,
    },
    Unsubscribed {
        channel: &'a str,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
    Pong,
    /// The answer to `auth`: the socket now uses the new token, which expires then.
    AuthOk {
        expires_at: i64,
    },
    /// The socket's token expires soon (`TIDINGS_TOKEN_WARNING` before): renew with `auth`.
    TokenExpiring {
        expires_at: i64,
    },
}

impl Outgoing<'_> {
    /// When the event happened, for the frames that carry a `timestamp`: now for answers.
    fn at(&self) -> DateTime<Utc> {
        match self {
            Outgoing::Message(m) => m.message.created_at,
            Outgoing::RoomChange(e) => e.at,
            Outgoing::Typing(t) => t.at,
            Outgoing::Presence(p) => p.at,
            Outgoing::Channel(e) => e.at,
            _ => Utc::now(),
        }
    }
}

/// ISO 8601 in UTC with milliseconds, as the legacy clients parse it.
pub(crate) fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A token's `exp` (seconds since the epoch) as the legacy frames write times.
fn iso_exp(exp: i64) -> String {
    iso(crate::domain::sessions::expiry_time(exp))
}

/// The frame for `event` in `dialect` on a socket for `purpose`; `None` when the dialect sends
/// nothing for it (a status change where only online and offline are told).
fn render(dialect: Dialect, purpose: Purpose, event: &Outgoing<'_>) -> Option<Value> {
    let timestamp = || iso(event.at());
    if let Outgoing::Channel(e) = event {
        // A channel event keeps its own shape everywhere, so a client written against a
        // handover-style service (`on('ticket.created', data => …)`) works unchanged.
        return Some(serde_json::json!({
            "type": e.kind,
            "channel": e.channel,
            "data": e.data,
            "timestamp": timestamp(),
        }));
    }
    let row = match dialect {
        Dialect::Rooms => return rooms::frame(event).map(rooms::Shape::mirrored),
        Dialect::Conversations => conversations::frame(event, &timestamp),
        Dialect::Arena => arena::frame(event, purpose, &timestamp),
    };
    // An event without a row in the dialect's table goes out in its `rooms` shape (without
    // the `data` mirror, which is the `rooms` dialect's own) plus a timestamp.
    row.or_else(|| {
        let mut frame = rooms::frame(event)?.plain();
        frame.insert("timestamp".into(), Value::String(timestamp()));
        Some(Value::Object(frame))
    })
}

/// Writes frames to one socket, in its dialect. Every task that talks to the socket holds one.
#[derive(Clone)]
pub(crate) struct Frames {
    outbox: Outbox,
    dialect: Arc<DialectChoice>,
    purpose: Purpose,
}

impl Frames {
    pub(crate) fn new(outbox: Outbox, dialect: Arc<DialectChoice>, purpose: Purpose) -> Self {
        Self {
            outbox,
            dialect,
            purpose,
        }
    }

    /// Queues `event`'s frame (waiting a bounded time for room); false when the socket is
    /// ending. `stamp` says which hub event the frame carries, for the latency metric.
    pub(crate) async fn send(&self, event: &Outgoing<'_>, stamp: Option<EventStamp>) -> bool {
        match render(self.dialect.current(), self.purpose, event) {
            Some(frame) => self.outbox.push(frame.to_string(), stamp).await,
            None => true,
        }
    }

    pub(crate) async fn error(&self, code: &str, message: &str) -> bool {
        self.send(&Outgoing::Error { code, message }, None).await
    }
}

/// A JSON object from `(key, value)` pairs, in order.
fn object<const N: usize>(fields: [(&str, Value); N]) -> Map<String, Value> {
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A notification's `data` object, the same in every dialect: GraphQL's fields plus `message`
/// (the text to show) and `type` (the level in lower case), as older notification UIs read it.
fn notification_data(n: &Notice) -> Value {
    let message = n.body.clone().unwrap_or_else(|| n.title.clone());
    Value::Object(object([
        ("id", n.id.to_string().into()),
        ("kind", n.kind.clone().into()),
        ("level", n.level.clone().into()),
        ("title", n.title.clone().into()),
        ("body", n.body.clone().into()),
        ("message", message.into()),
        ("type", n.level.to_lowercase().into()),
        ("data", n.data.clone().unwrap_or(Value::Null)),
        ("created_at", iso(n.created_at).into()),
    ]))
}

/// A status as the legacy clients write it.
pub(crate) fn status_name(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Busy => "busy",
        PresenceStatus::Offline => "offline",
    }
}

fn sender_id(m: &MessageView) -> Value {
    m.message
        .sender_id
        .clone()
        .map_or(Value::Null, Value::String)
}

fn sender_name(m: &MessageView) -> Value {
    m.sender
        .as_ref()
        .map_or(Value::Null, |u| Value::String(u.username.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialect_is_chosen_once() {
        let choice = DialectChoice::new(None);
        assert_eq!(choice.chosen(), None);
        assert_eq!(choice.current(), Dialect::Rooms);
        assert!(choice.choose(Dialect::Arena));
        assert!(!choice.choose(Dialect::Conversations));
        assert_eq!(choice.chosen(), Some(Dialect::Arena));
    }

    #[test]
    fn unlisted_events_keep_their_rooms_shape_plus_a_timestamp() {
        let welcome = Outgoing::Welcome {
            user: None,
            online_count: 2,
            contacts: None,
        };
        let frame = render(Dialect::Conversations, Purpose::Chat, &welcome).expect("a frame");
        assert_eq!(frame["type"], "system");
        assert_eq!(frame["online_count"], 2);
        assert!(frame["timestamp"].is_string());
        assert!(
            frame.get("data").is_none(),
            "no data mirror outside `rooms`"
        );
        let pong = render(Dialect::Arena, Purpose::Chat, &Outgoing::Pong).expect("a frame");
        assert_eq!(pong["type"], "pong");
        assert!(pong["timestamp"].is_string());
        assert!(pong.get("data").is_none());
    }

    #[test]
    fn status_changes_are_not_told_where_only_online_and_offline_are() {
        let change = ContactPresence {
            user_id: "42".into(),
            username: "alice".into(),
            change: PresenceChange::Status(PresenceStatus::Away),
            at: Utc::now(),
        };
        let away = Outgoing::Presence(&change);
        assert!(render(Dialect::Rooms, Purpose::Chat, &away).is_none());
        assert!(render(Dialect::Conversations, Purpose::Chat, &away).is_none());
        assert!(render(Dialect::Arena, Purpose::Chat, &away).is_none());
        let frame = render(Dialect::Arena, Purpose::Presence, &away).expect("a frame");
        assert_eq!(frame["type"], "presence");
        assert_eq!(frame["status"], "away");
    }
}
