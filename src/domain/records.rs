//! The domain's own values and rows, beneath every service: identifiers and how they are
//! checked, the kinds and views of messages, presence statuses, and how a message row is
//! built and numbered in its room. Services build on this module; it builds on none of them,
//! so the domain's modules form layers without circles:
//!
//! records → wire → the services (rooms, sends, notifications, presence, typing, leaderboard,
//! channels, users) → messages → changes → feeds, search, contacts.

use chrono::{DateTime, Utc};
use sea_orm::{
    sea_query::{Expr, ExprTrait, Query},
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
};
use serde::{Deserialize, Serialize};

use super::{DomainError, DomainResult};
use crate::db::{message, room, room_member, user};

/// Membership announcements' `action` column.
pub const JOINED: &str = "joined";
pub const LEFT: &str = "left";

/// Rows read per query when replaying or catching up.
pub(crate) const PAGE: u64 = 500;

/// A room id: a slug of 1–64 characters from `a-z 0-9 _ -`.
pub fn validate_room_id(id: &str) -> DomainResult<()> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DomainError::bad_input(
            "room id must be 1-64 characters of a-z, 0-9, '_' or '-'",
        ))
    }
}

/// A message id as clients send it: the decimal string of a positive integer.
pub fn parse_message_id(id: &str) -> DomainResult<i64> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| DomainError::bad_input(format!("{id:?} is not a message id")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    User,
    System,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::User => "USER",
            MessageKind::System => "SYSTEM",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "SYSTEM" {
            MessageKind::System
        } else {
            MessageKind::User
        }
    }
}

/// A message with its sender (none for SYSTEM messages).
#[derive(Debug, Clone)]
pub struct MessageView {
    pub message: message::Model,
    pub sender: Option<user::Model>,
}

/// One emoji's count on a message, and whether the viewer is among those who put it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactionView {
    pub emoji: String,
    pub count: i64,
    pub viewer_reacted: bool,
}

/// How far a member has read a room.
#[derive(Clone, Debug)]
pub struct ReceiptView {
    pub user: user::Model,
    pub message_id: i64,
    pub at: DateTime<Utc>,
}

/// One change to a room, at its position on the room's sequence.
#[derive(Clone, Debug)]
pub struct RoomEventView {
    pub position: i64,
    pub room_id: String,
    pub at: DateTime<Utc>,
    pub kind: RoomEventKind,
}

#[derive(Clone, Debug)]
pub enum RoomEventKind {
    /// A new message (or a membership announcement), as it was posted: its first body, never
    /// edited or deleted, without reactions (a later edit, delete or reaction is its own event).
    Posted(MessageView),
    /// A message's body changed: the message as the edit left it, and its reactions then
    /// (`viewer_reacted` filled in per subscriber).
    Edited {
        message: MessageView,
        reactions: Vec<ReactionView>,
    },
    Deleted {
        message_id: i64,
    },
    /// A message's reactions after the change (`viewer_reacted` filled in per subscriber).
    Reactions {
        message_id: i64,
        reactions: Vec<ReactionView>,
    },
    Read(ReceiptView),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PresenceStatus {
    Online,
    Away,
    Busy,
    Offline,
}

impl PresenceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Online => "ONLINE",
            PresenceStatus::Away => "AWAY",
            PresenceStatus::Busy => "BUSY",
            PresenceStatus::Offline => "OFFLINE",
        }
    }

    /// The status a user chose, as stored; anything unknown reads as ONLINE.
    pub fn chosen(stored: &str) -> Self {
        match stored {
            "AWAY" => PresenceStatus::Away,
            "BUSY" => PresenceStatus::Busy,
            _ => PresenceStatus::Online,
        }
    }
}

/// Inserts a membership announcement ("alice joined", "alice left") into the room, numbered
/// after the room's last message, naming whom it is about: a leave is that point of the room's
/// sequence, where the leaver's streams of the room end. Run inside the caller's transaction.
pub(super) async fn insert_announcement(
    conn: &impl ConnectionTrait,
    room_id: &str,
    user_id: &str,
    action: &'static str,
    body: &str,
) -> DomainResult<message::Model> {
    let seq = next_seq(conn, room_id).await?;
    let mut model = new_message(room_id, seq, MessageKind::System, None, body, None);
    model.subject_id = Set(Some(user_id.to_owned()));
    model.action = Set(Some(action.to_owned()));
    Ok(message::Entity::insert(model)
        .exec_with_returning(conn)
        .await?)
}

/// A message's row, numbered `seq` in its room.
pub(super) fn new_message(
    room_id: &str,
    seq: i64,
    kind: MessageKind,
    sender_id: Option<&str>,
    body: &str,
    client_message_id: Option<&str>,
) -> message::ActiveModel {
    message::ActiveModel {
        room_id: Set(room_id.to_owned()),
        seq: Set(seq),
        kind: Set(kind.as_str().to_owned()),
        sender_id: Set(sender_id.map(str::to_owned)),
        body: Set(body.to_owned()),
        client_message_id: Set(client_message_id.map(str::to_owned)),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
}

/// Bumps the room's message counter and returns the new value. The UPDATE takes the room row's
/// write lock until the transaction ends, which serialises writers per room.
pub(super) async fn next_seq(conn: &impl ConnectionTrait, room_id: &str) -> DomainResult<i64> {
    bump_seq(conn, room_id, None)
        .await?
        .ok_or_else(|| DomainError::NotFound(format!("room {room_id} not found")))
}

/// Gives back the number `bump_seq` just took, when nothing was stored under it. The room's
/// lock is still the caller's, so no later number was taken meanwhile.
pub(super) async fn unbump_seq(conn: &impl ConnectionTrait, room_id: &str) -> DomainResult<()> {
    room::Entity::update_many()
        .col_expr(
            room::Column::LastSeq,
            Expr::col(room::Column::LastSeq).sub(1),
        )
        .filter(room::Column::Id.eq(room_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// Bumps the room's message counter in one statement (`UPDATE … RETURNING`) and returns the new
/// value; with `member`, only if that user belongs to the room. `None` when nothing matched: no
/// such room, or not a member. Like `next_seq`, it holds the room row's lock until the
/// transaction ends; the membership test is part of the same statement, so it costs no round
/// trip of its own.
pub(super) async fn bump_seq(
    conn: &impl ConnectionTrait,
    room_id: &str,
    member: Option<&str>,
) -> DomainResult<Option<i64>> {
    let mut update = room::Entity::update_many()
        .col_expr(
            room::Column::LastSeq,
            Expr::col(room::Column::LastSeq).add(1),
        )
        .filter(room::Column::Id.eq(room_id));
    if let Some(user_id) = member {
        update = update.filter(Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(room_member::Entity)
                .and_where(room_member::Column::RoomId.eq(room_id))
                .and_where(room_member::Column::UserId.eq(user_id))
                .to_owned(),
        ));
    }
    Ok(update
        .exec_with_returning(conn)
        .await?
        .into_iter()
        .next()
        .map(|room| room.last_seq))
}
