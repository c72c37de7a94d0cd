//! The events that travel the hub, and the topics they travel on. The serde form is the wire
//! format between instances (versioned by `Envelope::v`): plain types of its own, which the
//! domain maps its rows to, so that no database migration or domain type changes what
//! instances send each other. `tests/wire/` pins each event's JSON; changing it means a new
//! `WIRE_VERSION`.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Message(MessageAdded),
    /// A change to a room other than a new message (an edit, a delete, reactions, a read
    /// receipt), numbered on the room's sequence beside its messages.
    RoomChange(RoomChanged),
    Typing(Typing),
    Presence(PresenceChanged),
    Notification(NotificationAdded),
    Leaderboard(LeaderboardChanged),
    /// An app event a backend published to a channel.
    Channel(ChannelEvent),
    /// An admin disconnected a user: every instance closes the user's connections.
    Disconnect(DisconnectUser),
    /// A member left a room: their unnumbered streams of it (typing, presence, the room's
    /// channel) end. Sent on the room's typing and channel topics and on the presence topic;
    /// message streams end at the "left" announcement itself, which the room's sequence
    /// numbers.
    Left(LeftRoom),
    /// One instance's figures, which every instance publishes once a second for the operator
    /// console. An instance of an older version does not know this kind: it counts such events
    /// as undecodable and goes on.
    Stats(InstanceStats),
    /// Local only, never sent between instances: events from other instances may have been
    /// missed (the Redis bridge was down), so persistent streams check the database.
    Resync,
}

/// An event as it travels between instances. `v` is the wire format's version: an instance
/// ignores (and counts) versions it does not know, so two versions can share a Redis during a
/// rolling upgrade.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub origin: String,
    pub topic: Topic,
    pub event: Event,
}

/// 2: events carry their own types (users without credentials or counters, membership in
/// announcements), and a leave travels on the presence topic.
/// 3: room changes (edits, deletes, reactions, read receipts) on the room's messages topic, and
/// a message's `edited_at` and `deleted_at` when set.
/// (The `stats` events of the `stats` topic came without a new version: they change no event
/// that was there, and an instance that does not know them counts them as undecodable.)
pub const WIRE_VERSION: u32 = 3;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeftRoom {
    pub room_id: String,
    pub user_id: String,
}

/// An app event on a channel (`public:game`, `user:42`, …). Not persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelEvent {
    pub id: String,
    pub channel: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// What one instance carries right now, and what it did in the last second: read once a
/// second from its metrics and registries, never counted on the delivery path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// The instance's id (its Redis bridge's; `local` without Redis).
    pub instance: String,
    pub at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// Open connections, by transport (`graphql_ws`, `legacy_ws`, `sse`, `multipart`).
    pub connections: Vec<Figure>,
    /// Live hub subscriptions, by topic kind.
    pub subscriptions: Vec<Figure>,
    /// Shared executions running, and the subscriptions they serve.
    pub cohorts: u64,
    pub cohort_members: u64,
    /// Since the instance started: events published on its hub, and handed to subscribers.
    pub events_published: u64,
    pub events_delivered: u64,
    /// Over the last second.
    pub published_per_second: f64,
    pub delivered_per_second: f64,
    /// Delivery latency over the last second, in milliseconds (none: nothing was delivered).
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Connections cut as slow consumers since the start.
    pub slow_consumers: u64,
    /// Refusals by a budget since the start, each named `family:reason`
    /// (`connections:server_full`, `subscriptions:user`, `rate:message`, `graphql:cost`, …).
    pub refusals: Vec<Figure>,
    /// `up`, `down` or `disabled`.
    pub redis: String,
    /// `ok` or `down`.
    pub database: String,
    /// Signed-in sockets, deepest queue first (at most `MAX_REPORTED_SOCKETS`).
    pub sockets: Vec<SocketLoad>,
    /// Signed-in sockets in all, listed or not.
    pub signed_in_sockets: u64,
}

/// A named count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub value: u64,
}

/// One signed-in socket: whose, over which transport, and how many frames wait in its queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketLoad {
    pub user_id: String,
    pub transport: String,
    pub queued: u64,
}

/// The most sockets one instance's figures list: what a second's report may weigh.
pub const MAX_REPORTED_SOCKETS: usize = 500;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DisconnectUser {
    pub user_id: String,
}

/// A user as events carry them: what subscribers show, never a credential or a counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCard {
    pub id: String,
    pub username: String,
    pub role: String,
    pub points: i64,
    /// The status the user chose (`ONLINE`, `AWAY`, `BUSY`).
    pub status: String,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A stored message as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedMessage {
    pub id: i64,
    pub room_id: String,
    /// 1, 2, 3… within the room: a subscriber that sees a jump catches up from the database.
    pub seq: i64,
    /// `USER` or `SYSTEM`.
    pub kind: String,
    pub sender_id: Option<String>,
    pub body: String,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// For a membership announcement: who joined or left, and which of the two.
    pub membership: Option<Membership>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A change to a room other than a new message, at its position `seq` of the room's sequence
/// (the one its messages are numbered on: a subscriber that sees a jump catches up from the
/// database).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomChanged {
    pub room_id: String,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub change: Change,
}

/// What changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A message's body was edited: the message as the edit left it, with its counts per emoji
    /// at that point (absent from instances that did not send them: read as none).
    Edited {
        message: Box<PostedMessage>,
        sender: Option<UserCard>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reactions: Vec<ReactionCount>,
    },
    /// A message was deleted (its body is gone).
    Deleted { message_id: i64 },
    /// A message's reactions changed: its counts per emoji now.
    Reactions {
        message_id: i64,
        reactions: Vec<ReactionCount>,
    },
    /// A member read the room up to a message.
    Read { user: UserCard, message_id: i64 },
}

/// How many users reacted to a message with one emoji.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: i64,
}

/// What a SYSTEM message announces about one user's membership of its room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub user_id: String,
    pub change: MembershipChange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipChange {
    Joined,
    Left,
}

/// A message was committed to a room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageAdded {
    pub message: PostedMessage,
    pub sender: Option<UserCard>,
}

/// Someone started or stopped typing in a room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Typing {
    pub room_id: String,
    pub user: UserCard,
    pub is_typing: bool,
    pub at: DateTime<Utc>,
}

/// A user's presence as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

/// A user's presence changed: came online, went offline, changed status, or opened or closed
/// a connection. `rooms` are the rooms they belong to (room-scoped subscribers filter on it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PresenceChanged {
    pub user: Arc<UserCard>,
    pub status: Status,
    pub connections: u32,
    pub rooms: Vec<String>,
    pub at: DateTime<Utc>,
}

/// A notification as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNotification {
    pub id: i64,
    pub user_id: String,
    /// 1, 2, 3… per recipient: a gap tells a subscriber it missed one.
    pub seq: i64,
    pub kind: String,
    /// `INFO`, `SUCCESS`, `WARNING` or `ERROR`.
    pub level: String,
    pub title: String,
    pub body: Option<String>,
    pub data: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

/// A notification was stored for its recipient.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotificationAdded {
    pub notification: StoredNotification,
}

/// The top of the leaderboard, recomputed after points changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaderboardChanged {
    pub version: i64,
    pub at: DateTime<Utc>,
    pub entries: Vec<LeaderboardRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderboardRow {
    pub user: UserCard,
    pub points: i64,
}

/// Where an event is delivered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Topic {
    RoomMessages(String),
    RoomTyping(String),
    UserNotifications(String),
    Presence,
    Leaderboard,
    /// A channel, by its full name (`public:game`, `room:lobby`, …).
    Channel(String),
    /// Orders to every instance (disconnect a user).
    Control,
    /// Every instance's figures, once a second.
    Stats,
}

impl Topic {
    /// Whether the topic's events are stored, numbered, and read back from the database by a
    /// subscriber that missed them (see `Capacity`).
    pub fn is_stored(&self) -> bool {
        matches!(self, Topic::RoomMessages(_) | Topic::UserNotifications(_))
    }
}

impl Event {
    pub fn topic(&self) -> Topic {
        match self {
            Event::Message(m) => Topic::RoomMessages(m.message.room_id.clone()),
            Event::RoomChange(c) => Topic::RoomMessages(c.room_id.clone()),
            Event::Typing(t) => Topic::RoomTyping(t.room_id.clone()),
            Event::Presence(_) => Topic::Presence,
            Event::Notification(n) => Topic::UserNotifications(n.notification.user_id.clone()),
            Event::Leaderboard(_) => Topic::Leaderboard,
            Event::Left(_) => Topic::Presence,
            Event::Channel(c) => Topic::Channel(c.channel.clone()),
            Event::Disconnect(_) => Topic::Control,
            Event::Stats(_) => Topic::Stats,
            Event::Resync => Topic::Presence,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::RoomMessages(room) => write!(f, "room:{room}:messages"),
            Topic::RoomTyping(room) => write!(f, "room:{room}:typing"),
            Topic::UserNotifications(user) => write!(f, "user:{user}:notifications"),
            Topic::Presence => f.write_str("presence"),
            Topic::Leaderboard => f.write_str("leaderboard"),
            Topic::Channel(name) => write!(f, "channel:{name}"),
            Topic::Control => f.write_str("control"),
            Topic::Stats => f.write_str("stats"),
        }
    }
}
