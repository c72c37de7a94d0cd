//! The GraphQL object types, each a thin view over a domain value.

use async_graphql::{Context, Enum, InputObject, Interface, Json, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::errors::IntoGql;
use super::limits::page_cost;
use crate::db::{notification, room, user};
use crate::domain::changes::{ReactionView, ReceiptView, RoomEventKind, RoomEventView};
use crate::domain::feeds::{PresenceEventView, TypingView};
use crate::domain::leaderboard::{ranked, RankedEntry};
use crate::domain::messages::{MessageKind as DomainKind, MessageView};
use crate::domain::notifications::Level;
use crate::domain::presence::{PresenceStatus as DomainStatus, PresenceView};
use crate::domain::rooms::{PAGE_DEFAULT, PAGE_MAX};
use crate::hub::event::LeaderboardChanged;

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum MessageKind {
    User,
    System,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum PresenceStatus {
    Online,
    Away,
    Busy,
    Offline,
}

impl From<DomainStatus> for PresenceStatus {
    fn from(s: DomainStatus) -> Self {
        match s {
            DomainStatus::Online => PresenceStatus::Online,
            DomainStatus::Away => PresenceStatus::Away,
            DomainStatus::Busy => PresenceStatus::Busy,
            DomainStatus::Offline => PresenceStatus::Offline,
        }
    }
}

impl From<PresenceStatus> for DomainStatus {
    fn from(s: PresenceStatus) -> Self {
        match s {
            PresenceStatus::Online => DomainStatus::Online,
            PresenceStatus::Away => DomainStatus::Away,
            PresenceStatus::Busy => DomainStatus::Busy,
            PresenceStatus::Offline => DomainStatus::Offline,
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum NotificationLevel {
    Info,
    Success,
    Warning,
    Error,
}

impl From<NotificationLevel> for Level {
    fn from(l: NotificationLevel) -> Self {
        match l {
            NotificationLevel::Info => Level::Info,
            NotificationLevel::Success => Level::Success,
            NotificationLevel::Warning => Level::Warning,
            NotificationLevel::Error => Level::Error,
        }
    }
}

impl From<Level> for NotificationLevel {
    fn from(l: Level) -> Self {
        match l {
            Level::Info => NotificationLevel::Info,
            Level::Success => NotificationLevel::Success,
            Level::Warning => NotificationLevel::Warning,
            Level::Error => NotificationLevel::Error,
        }
    }
}

fn clamp_i32(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX })
}

pub struct User(pub user::Model);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }

    async fn username(&self) -> &str {
        &self.0.username
    }

    async fn role(&self) -> &str {
        &self.0.role
    }

    async fn points(&self) -> i32 {
        clamp_i32(self.0.points)
    }

    /// The status the user chose while they are connected; OFFLINE otherwise.
    async fn status(&self, ctx: &Context<'_>) -> PresenceStatus {
        super::domain(ctx).status_of(&self.0.id).into()
    }

    // Now while the user is online; else when they were last connected.
    async fn last_seen_at(&self, ctx: &Context<'_>) -> Option<DateTime<Utc>> {
        super::domain(ctx).last_seen_at(&self.0)
    }
}

pub struct Room {
    pub model: room::Model,
    /// The viewer's unread count, when it was read for a whole list of rooms at once.
    unread: Option<u64>,
}

impl From<room::Model> for Room {
    fn from(model: room::Model) -> Self {
        Room {
            model,
            unread: None,
        }
    }
}

impl Room {
    /// A list of rooms. When the operation asks for their unread counts (`ctx` is the field
    /// that lists them), they are counted for the whole list at once rather than per room.
    pub async fn list(
        ctx: &Context<'_>,
        rooms: Vec<room::Model>,
    ) -> async_graphql::Result<Vec<Room>> {
        if !ctx.look_ahead().field("unreadCount").exists() {
            return Ok(rooms.into_iter().map(Room::from).collect());
        }
        let ids: Vec<String> = rooms.iter().map(|r| r.id.clone()).collect();
        let counts = super::domain(ctx)
            .unread_counts(super::viewer(ctx), &ids)
            .await
            .gql()?;
        Ok(rooms
            .into_iter()
            .map(|model| Room {
                unread: Some(counts.get(&model.id).copied().unwrap_or(0)),
                model,
            })
            .collect())
    }
}

#[Object]
impl Room {
    async fn id(&self) -> ID {
        ID(self.model.id.clone())
    }

    async fn title(&self) -> &str {
        &self.model.title
    }

    async fn is_private(&self) -> bool {
        self.model.is_private
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.model.created_at
    }

    async fn member_count(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<i32> {
        let n = super::domain(ctx)
            .member_count(&self.model.id)
            .await
            .gql()?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// The room's members in id order, a page at a time: the `first` (at most 100) after the
    /// member `after`.
    #[graphql(complexity = "page_cost(first, PAGE_DEFAULT, PAGE_MAX, child_complexity)")]
    async fn members(
        &self,
        ctx: &async_graphql::Context<'_>,
        #[graphql(default = 50)] first: Option<i32>,
        after: Option<ID>,
    ) -> async_graphql::Result<Vec<User>> {
        let users = super::domain(ctx)
            .members_page(&self.model.id, first, after.as_ref().map(|a| a.as_str()))
            .await
            .gql()?;
        Ok(users.into_iter().map(User).collect())
    }

    /// Messages from others after the viewer's read receipt (deleted ones aside); 0 in rooms
    /// the viewer does not belong to.
    async fn unread_count(&self, ctx: &Context<'_>) -> async_graphql::Result<i32> {
        if let Some(n) = self.unread {
            return Ok(i32::try_from(n).unwrap_or(i32::MAX));
        }
        let n = super::domain(ctx)
            .unread_count(super::viewer(ctx), &self.model.id)
            .await
            .gql()?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// How far each member has read, most advanced first, in rooms of at most 50 members;
    /// empty in larger rooms (see `readCounts`) and for those who are not members.
    async fn read_receipts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ReadReceipt>> {
        let receipts = super::domain(ctx)
            .read_receipts(super::viewer(ctx), &self.model.id)
            .await
            .gql()?;
        Ok(receipts.into_iter().map(ReadReceipt).collect())
    }

    /// How many members have read exactly up to each message, newest first (the 50 most
    /// recent): how far a room of any size has read.
    async fn read_counts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ReadCount>> {
        let counts = super::domain(ctx)
            .read_counts(super::viewer(ctx), &self.model.id)
            .await
            .gql()?;
        Ok(counts
            .into_iter()
            .map(|(message_id, readers)| ReadCount {
                message_id: ID(message_id.to_string()),
                readers: clamp_i32(readers),
            })
            .collect())
    }
}

/// A message: as it stands, or (in a room event) as it was at the event's position.
pub struct Message {
    view: MessageView,
    /// Its reactions as read already: at the event's position (a room event), or for its whole
    /// page at once; `None`: read when asked, as they are now.
    reactions_then: Option<Vec<ReactionView>>,
}

impl From<MessageView> for Message {
    fn from(view: MessageView) -> Self {
        Message {
            view,
            reactions_then: None,
        }
    }
}

impl Message {
    /// The message at a point of its room's sequence, with its reactions then.
    fn at(view: MessageView, reactions: Vec<ReactionView>) -> Self {
        Message {
            view,
            reactions_then: Some(reactions),
        }
    }

    /// A page of messages. When the operation asks for their reactions (`ctx` is the field
    /// that lists them), they are read for the whole page at once rather than per message.
    pub async fn page(
        ctx: &Context<'_>,
        views: Vec<MessageView>,
    ) -> async_graphql::Result<Vec<Message>> {
        if !ctx.look_ahead().field("reactions").exists() {
            return Ok(views.into_iter().map(Message::from).collect());
        }
        let ids: Vec<i64> = views.iter().map(|v| v.message.id).collect();
        let mut reactions = super::domain(ctx)
            .reactions_of_many(super::viewer(ctx), &ids)
            .await
            .gql()?;
        Ok(views
            .into_iter()
            .map(|view| {
                let mine = reactions.remove(&view.message.id).unwrap_or_default();
                Message::at(view, mine)
            })
            .collect())
    }
}

#[Object]
impl Message {
    async fn id(&self) -> ID {
        ID(self.view.message.id.to_string())
    }

    async fn room_id(&self) -> ID {
        ID(self.view.message.room_id.clone())
    }

    async fn kind(&self) -> MessageKind {
        match DomainKind::parse(&self.view.message.kind) {
            DomainKind::User => MessageKind::User,
            DomainKind::System => MessageKind::System,
        }
    }

    async fn sender(&self) -> Option<User> {
        self.view.sender.clone().map(User)
    }

    async fn body(&self) -> &str {
        &self.view.message.body
    }

    async fn client_message_id(&self) -> Option<&str> {
        self.view.message.client_message_id.as_deref()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.view.message.created_at
    }

    /// When the body was last edited; null if never.
    async fn edited_at(&self) -> Option<DateTime<Utc>> {
        self.view.message.edited_at
    }

    /// When the message was deleted (its body is then ""); null while it stands.
    async fn deleted_at(&self) -> Option<DateTime<Utc>> {
        self.view.message.deleted_at
    }

    /// Counts per emoji, most used first, and whether the viewer is among those who reacted.
    async fn reactions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Reaction>> {
        if let Some(reactions) = &self.reactions_then {
            return Ok(reactions.iter().cloned().map(Reaction).collect());
        }
        if self.view.message.deleted_at.is_some() {
            return Ok(Vec::new());
        }
        let reactions = super::domain(ctx)
            .reactions_of(super::viewer(ctx), self.view.message.id)
            .await
            .gql()?;
        Ok(reactions.into_iter().map(Reaction).collect())
    }
}

/// One emoji on a message: how many users put it there, and whether the viewer did.
pub struct Reaction(pub ReactionView);

#[Object]
impl Reaction {
    async fn emoji(&self) -> &str {
        &self.0.emoji
    }

    async fn count(&self) -> i32 {
        clamp_i32(self.0.count)
    }

    async fn viewer_reacted(&self) -> bool {
        self.0.viewer_reacted
    }
}

/// How far a member has read a room: up to and including `messageId`.
pub struct ReadReceipt(pub ReceiptView);

#[Object]
impl ReadReceipt {
    async fn user(&self) -> User {
        User(self.0.user.clone())
    }

    async fn message_id(&self) -> ID {
        ID(self.0.message_id.to_string())
    }

    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

/// How many members have read a room exactly up to one message.
#[derive(SimpleObject)]
pub struct ReadCount {
    /// The message read up to (and including).
    pub message_id: ID,
    /// The members whose receipt is at this message.
    pub readers: i32,
}

/// A change to a room, at its position on the room's one sequence (the `after` of
/// `roomEvents`).
// Clippy reads the repeated `ty = "ID"` of two fields as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(Interface)]
#[graphql(
    field(name = "position", ty = "ID"),
    field(name = "room_id", ty = "ID"),
    field(name = "at", ty = "DateTime<Utc>")
)]
pub enum RoomEvent {
    MessagePosted(MessagePosted),
    MessageEdited(MessageEdited),
    MessageDeleted(MessageDeleted),
    ReactionsChanged(ReactionsChanged),
    ReadReceiptMoved(ReadReceiptMoved),
}

impl From<RoomEventView> for RoomEvent {
    fn from(event: RoomEventView) -> Self {
        let head = EventHead {
            position: event.position,
            room_id: event.room_id,
            at: event.at,
        };
        match event.kind {
            RoomEventKind::Posted(view) => RoomEvent::MessagePosted(MessagePosted {
                head,
                message: view,
            }),
            RoomEventKind::Edited { message, reactions } => {
                RoomEvent::MessageEdited(MessageEdited {
                    head,
                    message,
                    reactions,
                })
            }
            RoomEventKind::Deleted { message_id } => {
                RoomEvent::MessageDeleted(MessageDeleted { head, message_id })
            }
            RoomEventKind::Reactions {
                message_id,
                reactions,
            } => RoomEvent::ReactionsChanged(ReactionsChanged {
                head,
                message_id,
                reactions,
            }),
            RoomEventKind::Read(receipt) => {
                RoomEvent::ReadReceiptMoved(ReadReceiptMoved { head, receipt })
            }
        }
    }
}

/// What every room event says (the interface reaches its fields with the context and
/// expects results).
struct EventHead {
    position: i64,
    room_id: String,
    at: DateTime<Utc>,
}

pub struct MessagePosted {
    head: EventHead,
    message: MessageView,
}

/// A new message (or a membership announcement) in the room, as it was posted: a later edit,
/// delete or reaction is an event of its own, so `message.reactions` is empty here.
#[Object]
impl MessagePosted {
    /// Its position on the room's sequence.
    async fn position(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.position.to_string()))
    }

    async fn room_id(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.room_id.clone()))
    }

    async fn at(&self, _ctx: &Context<'_>) -> async_graphql::Result<DateTime<Utc>> {
        Ok(self.head.at)
    }

    async fn message(&self) -> Message {
        Message::at(self.message.clone(), Vec::new())
    }
}

pub struct MessageEdited {
    head: EventHead,
    message: MessageView,
    reactions: Vec<ReactionView>,
}

/// A message's body was edited: the message as the edit left it, with its reactions at that
/// point (`viewerReacted`: whether the viewer had reacted by then).
#[Object]
impl MessageEdited {
    /// Its position on the room's sequence.
    async fn position(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.position.to_string()))
    }

    async fn room_id(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.room_id.clone()))
    }

    async fn at(&self, _ctx: &Context<'_>) -> async_graphql::Result<DateTime<Utc>> {
        Ok(self.head.at)
    }

    async fn message(&self) -> Message {
        Message::at(self.message.clone(), self.reactions.clone())
    }
}

pub struct MessageDeleted {
    head: EventHead,
    message_id: i64,
}

/// A message was deleted: it is now a tombstone.
#[Object]
impl MessageDeleted {
    /// Its position on the room's sequence.
    async fn position(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.position.to_string()))
    }

    async fn room_id(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.room_id.clone()))
    }

    async fn at(&self, _ctx: &Context<'_>) -> async_graphql::Result<DateTime<Utc>> {
        Ok(self.head.at)
    }

    async fn message_id(&self) -> ID {
        ID(self.message_id.to_string())
    }
}

pub struct ReactionsChanged {
    head: EventHead,
    message_id: i64,
    reactions: Vec<ReactionView>,
}

/// A message's reactions changed: all of them as the change left them (`viewerReacted`:
/// whether the viewer had reacted by then).
#[Object]
impl ReactionsChanged {
    /// Its position on the room's sequence.
    async fn position(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.position.to_string()))
    }

    async fn room_id(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.room_id.clone()))
    }

    async fn at(&self, _ctx: &Context<'_>) -> async_graphql::Result<DateTime<Utc>> {
        Ok(self.head.at)
    }

    async fn message_id(&self) -> ID {
        ID(self.message_id.to_string())
    }

    async fn reactions(&self) -> Vec<Reaction> {
        self.reactions.iter().cloned().map(Reaction).collect()
    }
}

pub struct ReadReceiptMoved {
    head: EventHead,
    receipt: ReceiptView,
}

/// A member read the room further (at most one per member per second reaches the room).
#[Object]
impl ReadReceiptMoved {
    /// Its position on the room's sequence.
    async fn position(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.position.to_string()))
    }

    async fn room_id(&self, _ctx: &Context<'_>) -> async_graphql::Result<ID> {
        Ok(ID(self.head.room_id.clone()))
    }

    async fn at(&self, _ctx: &Context<'_>) -> async_graphql::Result<DateTime<Utc>> {
        Ok(self.head.at)
    }

    async fn receipt(&self) -> ReadReceipt {
        ReadReceipt(self.receipt.clone())
    }
}

#[derive(SimpleObject)]
pub struct AuthPayload {
    pub token: String,
    pub user: User,
}

/// A WebSocket connection's credentials after `authenticate`.
pub struct Session(pub crate::domain::sessions::Session);

#[Object]
impl Session {
    /// The connection's user (a renewal never changes it).
    async fn user(&self) -> User {
        User(self.0.user.clone())
    }

    /// When the connection's token now expires: the connection closes then (4403) unless it
    /// is renewed again.
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }
}

pub struct Presence(pub PresenceView);

#[Object]
impl Presence {
    async fn user(&self) -> User {
        User(self.0.user.as_ref().clone())
    }

    async fn status(&self) -> PresenceStatus {
        self.0.status.into()
    }

    /// Open connections of this user (every device and tab).
    async fn connections(&self) -> i32 {
        clamp_i32(self.0.connections.into())
    }

    // Now while the user is online; else when they were last connected.
    async fn last_seen_at(&self, ctx: &Context<'_>) -> Option<DateTime<Utc>> {
        super::domain(ctx).last_seen_at(&self.0.user)
    }
}

pub struct PresenceEvent(pub PresenceEventView);

#[Object]
impl PresenceEvent {
    async fn user(&self) -> User {
        User(self.0.user.as_ref().clone())
    }

    async fn status(&self) -> PresenceStatus {
        self.0.status.into()
    }

    async fn connections(&self) -> i32 {
        clamp_i32(self.0.connections.into())
    }

    /// The room the subscription watches; null for everyone's presence.
    async fn room_id(&self) -> Option<ID> {
        self.0.room_id.clone().map(ID)
    }

    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

pub struct TypingEvent(pub TypingView);

#[Object]
impl TypingEvent {
    async fn room_id(&self) -> ID {
        ID(self.0.room_id.clone())
    }

    async fn user(&self) -> User {
        User(self.0.user.clone())
    }

    async fn is_typing(&self) -> bool {
        self.0.is_typing
    }

    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

pub struct Notification(pub notification::Model);

#[Object]
impl Notification {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn kind(&self) -> &str {
        &self.0.kind
    }

    async fn level(&self) -> NotificationLevel {
        Level::parse(&self.0.level).into()
    }

    async fn title(&self) -> &str {
        &self.0.title
    }

    async fn body(&self) -> Option<&str> {
        self.0.body.as_deref()
    }

    async fn data(&self) -> Option<Json<serde_json::Value>> {
        self.0.data.clone().map(Json)
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn read_at(&self) -> Option<DateTime<Utc>> {
        self.0.read_at
    }
}

/// Whom to notify: one user, a room's members, a role, or (none of them) everyone.
#[derive(InputObject)]
pub struct SendNotificationInput {
    pub user_id: Option<ID>,
    pub room_id: Option<ID>,
    pub role: Option<String>,
    pub kind: String,
    #[graphql(default_with = "Some(NotificationLevel::Info)")]
    pub level: Option<NotificationLevel>,
    pub title: String,
    pub body: Option<String>,
    pub data: Option<Json<serde_json::Value>>,
}

pub struct LeaderboardEntry(pub RankedEntry);

#[Object]
impl LeaderboardEntry {
    async fn rank(&self) -> i32 {
        clamp_i32(self.0.rank)
    }

    async fn user(&self) -> User {
        User(self.0.user.clone())
    }

    async fn points(&self) -> i32 {
        clamp_i32(self.0.points)
    }
}

pub struct LeaderboardSnapshot {
    pub snapshot: std::sync::Arc<LeaderboardChanged>,
    pub limit: usize,
}

#[Object]
impl LeaderboardSnapshot {
    async fn entries(&self) -> Vec<LeaderboardEntry> {
        ranked(&self.snapshot, self.limit)
            .into_iter()
            .map(LeaderboardEntry)
            .collect()
    }

    /// Grows with every change of the leaderboard.
    async fn version(&self) -> i32 {
        clamp_i32(self.snapshot.version)
    }

    async fn at(&self) -> DateTime<Utc> {
        self.snapshot.at
    }
}

pub struct ChannelEvent(pub crate::hub::event::ChannelEvent);

#[Object]
impl ChannelEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }

    async fn channel(&self) -> &str {
        &self.0.channel
    }

    /// The event's type, as the backend named it (e.g. `ticket.created`).
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        &self.0.kind
    }

    /// The data exactly as published (null when none was).
    async fn data(&self) -> Json<serde_json::Value> {
        Json(self.0.data.clone())
    }

    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}
