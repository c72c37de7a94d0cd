//! What happens to a room's messages after they are sent: edits and deletes (by the author or
//! an admin; a deleted message stays as a tombstone), reactions, and read receipts with unread
//! counts.
//!
//! Each change is one transaction that takes the room's next position (the counter its
//! messages are numbered by: its row lock orders the room's writes), records the change at that
//! position in `room_changes`, commits, and only then publishes it on the room's topic. So every
//! change to a room is on the room's one sequence, and a subscriber that resumes after a
//! position reads everything after it from the database, in order (`Domain::room_event_feed`).
//!
//! Read receipts are stored before `markRead` answers (so `unreadCount` is current), in batches,
//! and announced to the room at most once per user and room per `RECEIPT_INTERVAL`: a receipt
//! inside that interval is folded into the one announced at its end, which carries where the
//! user has read to then (`receipts`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    sea_query::{Expr, OnConflict},
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, JoinType, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, TransactionTrait,
};
use serde::{Deserialize, Serialize};

use super::limits::Action;
use super::messages::validate_body;
pub use super::receipts::RECEIPT_INTERVAL;
use super::receipts::{ReceiptRequest, READ};
use super::records::{next_seq, parse_message_id, validate_room_id, MessageView};
pub use super::records::{ReactionView, ReceiptView, RoomEventKind, RoomEventView};
use super::wire::{card, posted, publish_change};
use super::{require_user, Domain, DomainError, DomainResult};
use crate::auth::{AuthUser, Viewer};
use crate::db::{message, reaction, read_receipt, room, room_change, room_member, user};
use crate::hub::event::{Change, ReactionCount};

/// The longest reaction, in bytes of UTF-8 (one emoji, skin tone and joiners included).
pub const MAX_EMOJI_BYTES: usize = 16;
/// Distinct emoji one message may carry: a new one beyond that is refused.
pub const MAX_EMOJIS_PER_MESSAGE: u64 = 20;
/// Emoji one user may put on one message.
pub const MAX_REACTIONS_PER_USER: u64 = 10;
/// Rooms with at most this many members list every member's receipt; larger rooms give counts.
pub const RECEIPTS_PER_MEMBER_MAX: u64 = 50;
/// Positions `readCounts` lists at most (the most recent).
pub const READ_COUNTS_MAX: u64 = 50;

/// `room_changes.kind`.
const EDITED: &str = "edited";
const DELETED: &str = "deleted";
const REACTIONS: &str = "reactions";

/// A change as `room_changes.payload` keeps it: what a live subscriber saw at its position, so
/// that a resume renders it the same way, and what it replaced.
///
/// - an edit: the body and `edited_at` it set, the body it replaced, and the message's counts
///   per emoji at that point;
/// - a delete: `deleted_at` and the body it removed;
/// - a reaction change: the counts per emoji after it, and the emoji the user put or took
///   (`added`).
///
/// The first edit or delete of a message is where its body as posted is kept: a replayed
/// `MessagePosted` reads it from there (changes recorded before `previous_body` existed replay
/// the message's body as it stands).
#[derive(Default, Serialize, Deserialize)]
struct Payload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edited_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reactions: Vec<(String, i64)>,
}

/// A single emoji of Unicode's list (the `emojis` crate's copy of the RGI set): one pictograph,
/// with its skin tone if it has one, a ZWJ sequence the list names (👩‍💻, 🏳️‍🌈), a flag or a
/// keycap; at most `MAX_EMOJI_BYTES` bytes. Text, shortcodes (`:smile:`), several emoji side by
/// side, pictographs glued by joiners into a sequence nobody defined (☕‍☕) and unassigned code
/// points are refused. An emoji typed without its presentation selector (❤ for ❤️) is the
/// same emoji: the answer is its fully qualified form, so both count as one reaction.
pub fn validate_emoji(emoji: &str) -> DomainResult<&'static str> {
    let refuse = || {
        DomainError::bad_input(format!(
            "emoji must be a single emoji of at most {MAX_EMOJI_BYTES} bytes"
        ))
    };
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES {
        return Err(refuse());
    }
    let known = emojis::get(emoji).ok_or_else(refuse)?.as_str();
    if known.len() > MAX_EMOJI_BYTES {
        return Err(refuse());
    }
    Ok(known)
}

impl Domain {
    /// A message the viewer may change: NOT_FOUND when there is none, FORBIDDEN unless the
    /// viewer is an admin or its author and still a member of its room.
    async fn own_message(&self, user: &AuthUser, id: i64) -> DomainResult<message::Model> {
        let message = message::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("message {id} not found")))?;
        if user.is_admin() {
            return Ok(message);
        }
        if message.sender_id.as_deref() != Some(user.id.as_str()) {
            return Err(DomainError::Forbidden(
                "only its author or an admin may change a message".into(),
            ));
        }
        if !self.is_member(&message.room_id, &user.id).await? {
            return Err(DomainError::Forbidden(format!(
                "not a member of room {}",
                message.room_id
            )));
        }
        Ok(message)
    }

    /// Replaces a message's body (validated as when sending). The author or an admin; a
    /// deleted message cannot be edited (BAD_USER_INPUT), nor a SYSTEM one.
    pub async fn edit_message(
        &self,
        viewer: &Viewer,
        id: &str,
        body: &str,
    ) -> DomainResult<MessageView> {
        let user = require_user(viewer)?;
        let id = parse_message_id(id)?;
        let message = self.own_message(user, id).await?;
        let body = validate_body(body)?;
        if message.deleted_at.is_some() {
            return Err(DomainError::bad_input(format!(
                "message {id} was deleted: it cannot be edited"
            )));
        }
        if message.sender_id.is_none() {
            return Err(DomainError::bad_input("SYSTEM messages cannot be edited"));
        }
        self.limits.check(&user.id, Action::Edit).await?;
        // To the microsecond, as PostgreSQL keeps it: the edit's time in its change record
        // (what a replay shows) is the one the message row and the live event carry.
        let now = Utc::now().trunc_subsecs(6);
        let txn = self.db.begin().await?;
        let seq = next_seq(&txn, &message.room_id).await?;
        // Read under the room's lock: the body this edit replaces.
        let previous = message::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("message {id} not found")))?;
        let updated = message::Entity::update_many()
            .col_expr(message::Column::Body, Expr::value(body.to_owned()))
            .col_expr(message::Column::EditedAt, Expr::value(Some(now)))
            .filter(message::Column::Id.eq(id))
            .filter(message::Column::DeletedAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected;
        if updated == 0 {
            txn.rollback().await?;
            return Err(DomainError::bad_input(format!(
                "message {id} was deleted: it cannot be edited"
            )));
        }
        let counts = reaction_counts(&txn, id).await?;
        let payload = Payload {
            body: Some(body.to_owned()),
            edited_at: Some(now),
            previous_body: Some(previous.body),
            reactions: counts.clone(),
            ..Default::default()
        };
        insert_change(
            &txn,
            &message.room_id,
            seq,
            EDITED,
            id,
            &user.id,
            &payload,
            now,
        )
        .await?;
        let row = message::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("message {id} not found")))?;
        txn.commit().await?;
        let view = self.with_sender(row).await?;
        publish_change(
            &self.hub,
            &view.message.room_id,
            seq,
            now,
            Change::Edited {
                message: Box::new(posted(&view.message)),
                sender: view.sender.as_ref().map(card),
                reactions: reaction_counts_of(counts),
            },
        );
        Ok(view)
    }

    /// Deletes a message: it stays as a tombstone, its body "" and `deletedAt` set, its
    /// reactions gone. The author or an admin; deleting it again changes nothing.
    pub async fn delete_message(&self, viewer: &Viewer, id: &str) -> DomainResult<MessageView> {
        let user = require_user(viewer)?;
        let id = parse_message_id(id)?;
        let message = self.own_message(user, id).await?;
        if message.deleted_at.is_some() {
            return self.with_sender(message).await;
        }
        self.limits.check(&user.id, Action::Edit).await?;
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let seq = next_seq(&txn, &message.room_id).await?;
        // Read under the room's lock: the body this delete removes.
        let previous = message::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("message {id} not found")))?;
        let updated = message::Entity::update_many()
            .col_expr(message::Column::Body, Expr::value(String::new()))
            .col_expr(message::Column::DeletedAt, Expr::value(Some(now)))
            .filter(message::Column::Id.eq(id))
            .filter(message::Column::DeletedAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected;
        let row = message::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("message {id} not found")))?;
        if updated == 0 {
            // Deleted meanwhile: that delete was the change.
            txn.rollback().await?;
            return self.with_sender(row).await;
        }
        reaction::Entity::delete_many()
            .filter(reaction::Column::MessageId.eq(id))
            .exec(&txn)
            .await?;
        let payload = Payload {
            deleted_at: Some(now),
            previous_body: Some(previous.body),
            ..Default::default()
        };
        insert_change(
            &txn,
            &message.room_id,
            seq,
            DELETED,
            id,
            &user.id,
            &payload,
            now,
        )
        .await?;
        txn.commit().await?;
        publish_change(
            &self.hub,
            &row.room_id,
            seq,
            now,
            Change::Deleted { message_id: id },
        );
        self.with_sender(row).await
    }

    /// Adds (`add`) or removes the viewer's `emoji` on a message of a room they belong to.
    /// Adding one already there or removing one that is not changes nothing and announces
    /// nothing.
    pub async fn react(
        &self,
        viewer: &Viewer,
        message_id: &str,
        emoji: &str,
        add: bool,
    ) -> DomainResult<MessageView> {
        let user = require_user(viewer)?;
        let id = parse_message_id(message_id)?;
        let emoji = validate_emoji(emoji.trim())?;
        let message = message::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("message {id} not found")))?;
        self.require_member(viewer, &message.room_id).await?;
        if message.deleted_at.is_some() {
            return Err(DomainError::bad_input(format!(
                "message {id} was deleted: it takes no reactions"
            )));
        }
        self.limits.check(&user.id, Action::Reaction).await?;
        let now = Utc::now();
        let txn = self.db.begin().await?;
        // The room's lock first: the budgets below are counted under it.
        let seq = next_seq(&txn, &message.room_id).await?;
        let changed = if add {
            self.check_reaction_budgets(&txn, id, &user.id, emoji)
                .await?;
            let row = reaction::ActiveModel {
                message_id: Set(id),
                user_id: Set(user.id.clone()),
                emoji: Set(emoji.to_owned()),
                created_at: Set(now),
            };
            reaction::Entity::insert(row)
                .on_conflict(
                    OnConflict::columns([
                        reaction::Column::MessageId,
                        reaction::Column::UserId,
                        reaction::Column::Emoji,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?
                > 0
        } else {
            reaction::Entity::delete_many()
                .filter(reaction::Column::MessageId.eq(id))
                .filter(reaction::Column::UserId.eq(user.id.as_str()))
                .filter(reaction::Column::Emoji.eq(emoji))
                .exec(&txn)
                .await?
                .rows_affected
                > 0
        };
        if !changed {
            // Nothing happened: the position taken goes back with the transaction.
            txn.rollback().await?;
            return self.with_sender(message).await;
        }
        let counts = reaction_counts(&txn, id).await?;
        let payload = Payload {
            reactions: counts.clone(),
            emoji: Some(emoji.to_owned()),
            added: Some(add),
            ..Default::default()
        };
        insert_change(
            &txn,
            &message.room_id,
            seq,
            REACTIONS,
            id,
            &user.id,
            &payload,
            now,
        )
        .await?;
        txn.commit().await?;
        publish_change(
            &self.hub,
            &message.room_id,
            seq,
            now,
            Change::Reactions {
                message_id: id,
                reactions: reaction_counts_of(counts),
            },
        );
        self.with_sender(message).await
    }

    /// The reaction budgets: distinct emoji on a message, emoji of one user on it.
    async fn check_reaction_budgets(
        &self,
        txn: &impl ConnectionTrait,
        message_id: i64,
        user_id: &str,
        emoji: &str,
    ) -> DomainResult<()> {
        let counts = reaction_counts(txn, message_id).await?;
        if !counts.iter().any(|(e, _)| e == emoji) && counts.len() as u64 >= MAX_EMOJIS_PER_MESSAGE
        {
            crate::metrics::reaction_refused("emojis");
            return Err(DomainError::bad_input(format!(
                "a message carries at most {MAX_EMOJIS_PER_MESSAGE} different emoji"
            )));
        }
        let mine = reaction::Entity::find()
            .filter(reaction::Column::MessageId.eq(message_id))
            .filter(reaction::Column::UserId.eq(user_id))
            .count(txn)
            .await?;
        if mine >= MAX_REACTIONS_PER_USER {
            crate::metrics::reaction_refused("user");
            return Err(DomainError::bad_input(format!(
                "at most {MAX_REACTIONS_PER_USER} reactions per user on one message"
            )));
        }
        Ok(())
    }

    /// A message's reactions as the viewer sees them, most used first.
    pub async fn reactions_of(
        &self,
        viewer: &Viewer,
        message_id: i64,
    ) -> DomainResult<Vec<ReactionView>> {
        let counts = reaction_counts(&self.db, message_id).await?;
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let mine = self.viewer_emojis(viewer, message_id).await?;
        Ok(counts
            .into_iter()
            .map(|(emoji, count)| ReactionView {
                viewer_reacted: mine.contains(&emoji),
                emoji,
                count,
            })
            .collect())
    }

    /// The reactions of many messages as the viewer sees them, most used first, in two
    /// queries whatever their number; messages without reactions are not in the map.
    pub async fn reactions_of_many(
        &self,
        viewer: &Viewer,
        message_ids: &[i64],
    ) -> DomainResult<HashMap<i64, Vec<ReactionView>>> {
        if message_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let counts: Vec<(i64, String, i64)> = reaction::Entity::find()
            .select_only()
            .column(reaction::Column::MessageId)
            .column(reaction::Column::Emoji)
            .column_as(reaction::Column::UserId.count(), "n")
            .filter(reaction::Column::MessageId.is_in(message_ids.iter().copied()))
            .group_by(reaction::Column::MessageId)
            .group_by(reaction::Column::Emoji)
            .into_tuple()
            .all(&self.db)
            .await?;
        if counts.is_empty() {
            return Ok(HashMap::new());
        }
        let mine: Vec<(i64, String)> = match viewer.user() {
            Some(user) => {
                reaction::Entity::find()
                    .select_only()
                    .column(reaction::Column::MessageId)
                    .column(reaction::Column::Emoji)
                    .filter(reaction::Column::MessageId.is_in(message_ids.iter().copied()))
                    .filter(reaction::Column::UserId.eq(user.id.as_str()))
                    .into_tuple()
                    .all(&self.db)
                    .await?
            }
            None => Vec::new(),
        };
        let mut by_message: HashMap<i64, Vec<ReactionView>> = HashMap::new();
        for (message_id, emoji, count) in counts {
            let viewer_reacted = mine.iter().any(|(m, e)| *m == message_id && *e == emoji);
            by_message
                .entry(message_id)
                .or_default()
                .push(ReactionView {
                    emoji,
                    count,
                    viewer_reacted,
                });
        }
        for reactions in by_message.values_mut() {
            reactions.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.emoji.cmp(&b.emoji)));
        }
        Ok(by_message)
    }

    /// The emoji the viewer put on a message.
    pub(super) async fn viewer_emojis(
        &self,
        viewer: &Viewer,
        message_id: i64,
    ) -> DomainResult<Vec<String>> {
        let Some(user) = viewer.user() else {
            return Ok(Vec::new());
        };
        Ok(reaction::Entity::find()
            .select_only()
            .column(reaction::Column::Emoji)
            .filter(reaction::Column::MessageId.eq(message_id))
            .filter(reaction::Column::UserId.eq(user.id.as_str()))
            .into_tuple::<String>()
            .all(&self.db)
            .await?)
    }

    /// Marks a room read by the viewer up to a message of it. Receipts only move forward; the
    /// room hears of it at most once per user per `RECEIPT_INTERVAL` (`receipts`).
    pub async fn mark_read(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: &str,
        message_id: &str,
    ) -> DomainResult<room::Model> {
        let user = require_user(viewer)?;
        validate_room_id(room_id)?;
        let id = parse_message_id(message_id)?;
        if let Err(refused) = self.limits.check(&user.id, Action::Receipt).await {
            // Whoever may not mark the room read hears that first, limited or not.
            self.require_member(viewer, room_id).await?;
            return Err(refused);
        }
        // The room, the membership and the message are checked in the writer's batch, a few
        // statements for the whole batch rather than three reads per receipt.
        self.receipts
            .store(ReceiptRequest {
                room_id: room_id.to_owned(),
                user_id: user.id.clone(),
                message_id: id,
                admin: user.is_admin(),
            })
            .await
    }

    /// Messages from others in the room after the viewer's read receipt, deleted ones aside;
    /// 0 for rooms the viewer does not belong to.
    pub async fn unread_count(&self, viewer: &Viewer, room_id: &str) -> DomainResult<u64> {
        Ok(self
            .unread_counts(viewer, &[room_id.to_owned()])
            .await?
            .get(room_id)
            .copied()
            .unwrap_or(0))
    }

    /// `unread_count` for many rooms in three queries whatever their number; rooms without
    /// unread messages (or that the viewer does not belong to) are not in the map.
    pub async fn unread_counts(
        &self,
        viewer: &Viewer,
        room_ids: &[String],
    ) -> DomainResult<HashMap<String, u64>> {
        let Some(user) = viewer.user() else {
            return Ok(HashMap::new());
        };
        if room_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rooms: Vec<String> = room_member::Entity::find()
            .select_only()
            .column(room_member::Column::RoomId)
            .filter(room_member::Column::UserId.eq(user.id.as_str()))
            .filter(room_member::Column::RoomId.is_in(room_ids.iter().cloned()))
            .into_tuple()
            .all(&self.db)
            .await?;
        if rooms.is_empty() {
            return Ok(HashMap::new());
        }
        let read: HashMap<String, i64> = read_receipt::Entity::find()
            .select_only()
            .column(read_receipt::Column::RoomId)
            .column(read_receipt::Column::MessageId)
            .filter(read_receipt::Column::UserId.eq(user.id.as_str()))
            .filter(read_receipt::Column::RoomId.is_in(rooms.iter().cloned()))
            .into_tuple::<(String, i64)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let mut after = Condition::any();
        for room in &rooms {
            after = after.add(
                Condition::all()
                    .add(message::Column::RoomId.eq(room.as_str()))
                    .add(message::Column::Id.gt(read.get(room).copied().unwrap_or(0))),
            );
        }
        let counts: Vec<(String, i64)> = message::Entity::find()
            .select_only()
            .column(message::Column::RoomId)
            .column_as(message::Column::Id.count(), "n")
            .filter(after)
            .filter(message::Column::Kind.eq("USER"))
            .filter(message::Column::DeletedAt.is_null())
            .filter(message::Column::SenderId.ne(user.id.as_str()))
            .group_by(message::Column::RoomId)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(counts
            .into_iter()
            .map(|(room, n)| (room, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Every member's receipt, most advanced first, in rooms of at most
    /// `RECEIPTS_PER_MEMBER_MAX` members the viewer belongs to (admins: any); empty otherwise
    /// (larger rooms give `read_counts`).
    pub async fn read_receipts(
        &self,
        viewer: &Viewer,
        room_id: &str,
    ) -> DomainResult<Vec<ReceiptView>> {
        if !self.may_read(viewer, room_id).await?
            || self.member_count(room_id).await? > RECEIPTS_PER_MEMBER_MAX
        {
            return Ok(Vec::new());
        }
        // The receipts with their users, in one statement.
        let readers = read_receipt::Entity::belongs_to(user::Entity)
            .from(read_receipt::Column::UserId)
            .to(user::Column::Id)
            .into();
        let rows = read_receipt::Entity::find()
            .select_also(user::Entity)
            .join(JoinType::InnerJoin, readers)
            .filter(read_receipt::Column::RoomId.eq(room_id))
            .filter(read_receipt::Column::UserId.in_subquery(members_of(room_id)))
            .order_by_desc(read_receipt::Column::MessageId)
            .order_by_asc(read_receipt::Column::UserId)
            .limit(RECEIPTS_PER_MEMBER_MAX)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(r, user)| {
                Some(ReceiptView {
                    user: user?,
                    message_id: r.message_id,
                    at: r.read_at,
                })
            })
            .collect())
    }

    /// How many members have read exactly up to each message, for the `READ_COUNTS_MAX` most
    /// recent such messages (any room size): `(message id, members)`, newest first.
    pub async fn read_counts(
        &self,
        viewer: &Viewer,
        room_id: &str,
    ) -> DomainResult<Vec<(i64, i64)>> {
        if !self.may_read(viewer, room_id).await? {
            return Ok(Vec::new());
        }
        Ok(read_receipt::Entity::find()
            .select_only()
            .column(read_receipt::Column::MessageId)
            .column_as(read_receipt::Column::UserId.count(), "readers")
            .filter(read_receipt::Column::RoomId.eq(room_id))
            .filter(read_receipt::Column::UserId.in_subquery(members_of(room_id)))
            .group_by(read_receipt::Column::MessageId)
            .order_by_desc(read_receipt::Column::MessageId)
            .limit(READ_COUNTS_MAX)
            .into_tuple::<(i64, i64)>()
            .all(&self.db)
            .await?)
    }

    /// Whether the viewer reads the room (a member, or an admin).
    pub(super) async fn may_read(&self, viewer: &Viewer, room_id: &str) -> DomainResult<bool> {
        let Some(user) = viewer.user() else {
            return Ok(false);
        };
        Ok(user.is_admin() || self.is_member(room_id, &user.id).await?)
    }

    /// The bodies these messages were posted with, for those of them an edit or a delete
    /// changed since: the body their first such change replaced. Messages never changed are
    /// not in the map (their body is the one they were posted with), nor those whose first
    /// change was recorded before the replaced body was kept.
    pub(super) async fn bodies_as_posted(
        &self,
        message_ids: Vec<i64>,
    ) -> DomainResult<HashMap<i64, String>> {
        if message_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = room_change::Entity::find()
            .filter(room_change::Column::MessageId.is_in(message_ids))
            .filter(room_change::Column::Kind.is_in([EDITED, DELETED]))
            .order_by_asc(room_change::Column::MessageId)
            .order_by_asc(room_change::Column::Seq)
            .all(&self.db)
            .await?;
        let mut bodies = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for row in rows {
            if !seen.insert(row.message_id) {
                continue;
            }
            let payload: Payload = serde_json::from_str(&row.payload).map_err(|e| {
                DomainError::Internal(anyhow::anyhow!("room change {} unreadable: {e}", row.id))
            })?;
            if let Some(body) = payload.previous_body {
                bodies.insert(row.message_id, body);
            }
        }
        Ok(bodies)
    }

    /// The emoji the viewer had on a message at a position of its room: their own reaction
    /// changes to it up to that position, in order. Changes recorded before each kept its emoji
    /// give way to the viewer's emoji as they are now.
    pub(super) async fn viewer_emojis_at(
        &self,
        viewer: &Viewer,
        message_id: i64,
        position: i64,
    ) -> DomainResult<Vec<String>> {
        let Some(user) = viewer.user() else {
            return Ok(Vec::new());
        };
        let rows = room_change::Entity::find()
            .filter(room_change::Column::MessageId.eq(message_id))
            .filter(room_change::Column::Seq.lte(position))
            .filter(room_change::Column::Kind.eq(REACTIONS))
            .filter(room_change::Column::UserId.eq(user.id.as_str()))
            .order_by_asc(room_change::Column::Seq)
            .all(&self.db)
            .await?;
        let mut mine: Vec<String> = Vec::new();
        for row in rows {
            let payload: Payload = serde_json::from_str(&row.payload).map_err(|e| {
                DomainError::Internal(anyhow::anyhow!("room change {} unreadable: {e}", row.id))
            })?;
            let (Some(emoji), Some(added)) = (payload.emoji, payload.added) else {
                return self.viewer_emojis(viewer, message_id).await;
            };
            mine.retain(|e| *e != emoji);
            if added {
                mine.push(emoji);
            }
        }
        Ok(mine)
    }

    /// The room's changes other than messages after position `after`, in order, at most
    /// `limit`, as events (reactions without the viewer's part).
    pub(super) async fn changes_after(
        &self,
        room_id: &str,
        after: i64,
        limit: u64,
    ) -> DomainResult<Vec<RoomEventView>> {
        let rows = room_change::Entity::find()
            .filter(room_change::Column::RoomId.eq(room_id))
            .filter(room_change::Column::Seq.gt(after))
            .order_by_asc(room_change::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        let mut message_ids: Vec<i64> = rows
            .iter()
            .filter(|r| r.kind == EDITED)
            .map(|r| r.message_id)
            .collect();
        message_ids.sort_unstable();
        message_ids.dedup();
        let messages = if message_ids.is_empty() {
            Vec::new()
        } else {
            let found = message::Entity::find()
                .filter(message::Column::Id.is_in(message_ids))
                .all(&self.db)
                .await?;
            self.with_senders(found).await?
        };
        let mut reader_ids: Vec<String> = rows
            .iter()
            .filter(|r| r.kind == READ)
            .filter_map(|r| r.user_id.clone())
            .collect();
        reader_ids.sort();
        reader_ids.dedup();
        let readers = self.users_by_ids(&reader_ids).await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let payload: Payload = serde_json::from_str(&row.payload).map_err(|e| {
                DomainError::Internal(anyhow::anyhow!("room change {} unreadable: {e}", row.id))
            })?;
            let kind = match row.kind.as_str() {
                EDITED => {
                    let Some(mut view) = messages
                        .iter()
                        .find(|v| v.message.id == row.message_id)
                        .cloned()
                    else {
                        continue;
                    };
                    // The message as this edit left it.
                    view.message.body = payload.body.unwrap_or_default();
                    view.message.edited_at = payload.edited_at;
                    view.message.deleted_at = None;
                    RoomEventKind::Edited {
                        message: view,
                        reactions: reaction_views(payload.reactions),
                    }
                }
                DELETED => RoomEventKind::Deleted {
                    message_id: row.message_id,
                },
                REACTIONS => RoomEventKind::Reactions {
                    message_id: row.message_id,
                    reactions: reaction_views(payload.reactions),
                },
                READ => {
                    let Some(user) = row
                        .user_id
                        .as_ref()
                        .and_then(|id| readers.iter().find(|u| &u.id == id))
                    else {
                        continue;
                    };
                    RoomEventKind::Read(ReceiptView {
                        user: user.clone(),
                        message_id: row.message_id,
                        at: row.created_at,
                    })
                }
                _ => continue,
            };
            events.push(RoomEventView {
                position: row.seq,
                room_id: row.room_id,
                at: row.created_at,
                kind,
            });
        }
        Ok(events)
    }
}

/// A room's members, as a subquery.
fn members_of(room_id: &str) -> sea_orm::sea_query::SelectStatement {
    room_member::Entity::find()
        .select_only()
        .column(room_member::Column::UserId)
        .filter(room_member::Column::RoomId.eq(room_id))
        .into_query()
}

/// A message's counts per emoji, most used first (then by emoji).
async fn reaction_counts(
    conn: &impl ConnectionTrait,
    message_id: i64,
) -> DomainResult<Vec<(String, i64)>> {
    let mut counts: Vec<(String, i64)> = reaction::Entity::find()
        .select_only()
        .column(reaction::Column::Emoji)
        .column_as(reaction::Column::UserId.count(), "n")
        .filter(reaction::Column::MessageId.eq(message_id))
        .group_by(reaction::Column::Emoji)
        .into_tuple::<(String, i64)>()
        .all(conn)
        .await?;
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(counts)
}

/// Counts per emoji as the hub carries them.
fn reaction_counts_of(counts: Vec<(String, i64)>) -> Vec<ReactionCount> {
    counts
        .into_iter()
        .map(|(emoji, count)| ReactionCount { emoji, count })
        .collect()
}

/// Counts per emoji as a change stored them, before the viewer's part is filled in.
fn reaction_views(counts: Vec<(String, i64)>) -> Vec<ReactionView> {
    counts
        .into_iter()
        .map(|(emoji, count)| ReactionView {
            emoji,
            count,
            viewer_reacted: false,
        })
        .collect()
}

/// Records a change at position `seq` of its room, inside the caller's transaction.
#[allow(clippy::too_many_arguments)]
async fn insert_change(
    txn: &impl ConnectionTrait,
    room_id: &str,
    seq: i64,
    kind: &str,
    message_id: i64,
    user_id: &str,
    payload: &Payload,
    at: DateTime<Utc>,
) -> DomainResult<()> {
    let payload = serde_json::to_string(payload)
        .map_err(|e| DomainError::Internal(anyhow::anyhow!("room change payload: {e}")))?;
    let row = room_change::ActiveModel {
        room_id: Set(room_id.to_owned()),
        seq: Set(seq),
        kind: Set(kind.to_owned()),
        message_id: Set(message_id),
        user_id: Set(Some(user_id.to_owned())),
        payload: Set(payload),
        created_at: Set(at),
        ..Default::default()
    };
    room_change::Entity::insert(row)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_emoji;

    #[test]
    fn one_emoji_is_accepted_and_text_or_several_are_not() {
        for ok in ["👍", "❤️", "👍🏽", "👩‍💻", "🇫🇷", "1️⃣", "☕", "🏳️‍🌈", "🐻‍❄️", "👩🏽‍💻"]
        {
            assert_eq!(validate_emoji(ok).ok(), Some(ok), "{ok:?} is one emoji");
        }
        assert_eq!(validate_emoji("❤").ok(), Some("❤️"), "fully qualified");
        for bad in [
            "",
            "a",
            ":smile:",
            "👍👍",
            "👍 ",
            "<b>",
            "\"",
            "🇫",
            "👨‍👩‍👧‍👦👍",
            "‍",
            "👍‍",
            "☕‍☕‍☕",
            "\u{1FAFF}",
            "🇿🇿",
            "☕☕",
            "👨‍👩‍👧",
            "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
        ] {
            assert!(validate_emoji(bad).is_err(), "{bad:?} is not one emoji");
        }
    }
}
