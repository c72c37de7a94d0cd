//! The domain's rows as the hub carries them, and back. The hub's event types are the wire
//! format between instances; only this file knows both sides, so a change to a table changes
//! what travels only where it is written here (and `tests/wire/` notices).

use super::records::{
    MessageView, PresenceStatus, ReactionView, ReceiptView, RoomEventKind, RoomEventView, JOINED,
    LEFT,
};
use crate::db::{message, notification, user};
use chrono::{DateTime, Utc};

use crate::hub::event::{Change, MessageAdded, ReactionCount, RoomChanged};
use crate::hub::event::{
    Membership, MembershipChange, PostedMessage, Status, StoredNotification, UserCard,
};
use crate::hub::{Event, Hub};

pub(crate) fn card(u: &user::Model) -> UserCard {
    UserCard {
        id: u.id.clone(),
        username: u.username.clone(),
        role: u.role.clone(),
        points: u.points,
        status: u.status.clone(),
        last_seen_at: u.last_seen_at,
        created_at: u.created_at,
    }
}

/// A user from an event, as the domain's views hold users (no credential, no counters).
pub(crate) fn user_of(c: &UserCard) -> user::Model {
    user::Model {
        id: c.id.clone(),
        username: c.username.clone(),
        password_hash: None,
        role: c.role.clone(),
        points: c.points,
        status: c.status.clone(),
        last_seen_at: c.last_seen_at,
        created_at: c.created_at,
        notification_seq: 0,
        tokens_revoked_at: None,
    }
}

pub(crate) fn posted(m: &message::Model) -> PostedMessage {
    let membership = match (m.subject_id.as_ref(), m.action.as_deref()) {
        (Some(user_id), Some(JOINED)) => Some(Membership {
            user_id: user_id.clone(),
            change: MembershipChange::Joined,
        }),
        (Some(user_id), Some(LEFT)) => Some(Membership {
            user_id: user_id.clone(),
            change: MembershipChange::Left,
        }),
        _ => None,
    };
    PostedMessage {
        id: m.id,
        room_id: m.room_id.clone(),
        seq: m.seq,
        kind: m.kind.clone(),
        sender_id: m.sender_id.clone(),
        body: m.body.clone(),
        client_message_id: m.client_message_id.clone(),
        created_at: m.created_at,
        membership,
        edited_at: m.edited_at,
        deleted_at: m.deleted_at,
    }
}

pub(crate) fn message_of(p: &PostedMessage) -> message::Model {
    let (subject_id, action) = match &p.membership {
        Some(m) => (
            Some(m.user_id.clone()),
            Some(
                match m.change {
                    MembershipChange::Joined => JOINED,
                    MembershipChange::Left => LEFT,
                }
                .to_owned(),
            ),
        ),
        None => (None, None),
    };
    message::Model {
        id: p.id,
        room_id: p.room_id.clone(),
        seq: p.seq,
        kind: p.kind.clone(),
        sender_id: p.sender_id.clone(),
        body: p.body.clone(),
        client_message_id: p.client_message_id.clone(),
        created_at: p.created_at,
        subject_id,
        action,
        edited_at: p.edited_at,
        deleted_at: p.deleted_at,
    }
}

pub(crate) fn status(s: PresenceStatus) -> Status {
    match s {
        PresenceStatus::Online => Status::Online,
        PresenceStatus::Away => Status::Away,
        PresenceStatus::Busy => Status::Busy,
        PresenceStatus::Offline => Status::Offline,
    }
}

pub(crate) fn presence_status(s: Status) -> PresenceStatus {
    match s {
        Status::Online => PresenceStatus::Online,
        Status::Away => PresenceStatus::Away,
        Status::Busy => PresenceStatus::Busy,
        Status::Offline => PresenceStatus::Offline,
    }
}

pub(crate) fn stored(n: &notification::Model) -> StoredNotification {
    StoredNotification {
        id: n.id,
        user_id: n.user_id.clone(),
        seq: n.seq,
        kind: n.kind.clone(),
        level: n.level.clone(),
        title: n.title.clone(),
        body: n.body.clone(),
        data: n.data.clone(),
        created_at: n.created_at,
        read_at: n.read_at,
    }
}

pub(crate) fn notification_of(n: &StoredNotification) -> notification::Model {
    notification::Model {
        id: n.id,
        user_id: n.user_id.clone(),
        kind: n.kind.clone(),
        level: n.level.clone(),
        title: n.title.clone(),
        body: n.body.clone(),
        data: n.data.clone(),
        created_at: n.created_at,
        read_at: n.read_at,
        seq: n.seq,
    }
}

/// Publishes a committed change to the room's subscribers.
pub(super) fn publish_change(
    hub: &Hub,
    room_id: &str,
    seq: i64,
    at: DateTime<Utc>,
    change: Change,
) {
    hub.publish(Event::RoomChange(RoomChanged {
        room_id: room_id.to_owned(),
        seq,
        at,
        change,
    }));
}

/// Publishes a committed message to the room's subscribers.
pub(super) fn publish(hub: &Hub, view: &MessageView) {
    hub.publish(Event::Message(MessageAdded {
        message: posted(&view.message),
        sender: view.sender.as_ref().map(card),
    }));
}

/// A room's event from the hub as its subscribers see it (reactions without the viewer's
/// part); `None` for events that are not on the room's sequence.
pub(crate) fn room_event_of(event: &Event) -> Option<RoomEventView> {
    match event {
        Event::Message(added) => Some(RoomEventView {
            position: added.message.seq,
            room_id: added.message.room_id.clone(),
            at: added.message.created_at,
            kind: RoomEventKind::Posted(MessageView {
                message: message_of(&added.message),
                sender: added.sender.as_ref().map(user_of),
            }),
        }),
        Event::RoomChange(c) => {
            let kind = match &c.change {
                Change::Edited {
                    message,
                    sender,
                    reactions,
                } => RoomEventKind::Edited {
                    message: MessageView {
                        message: message_of(message),
                        sender: sender.as_ref().map(user_of),
                    },
                    reactions: reaction_views(reactions),
                },
                Change::Deleted { message_id } => RoomEventKind::Deleted {
                    message_id: *message_id,
                },
                Change::Reactions {
                    message_id,
                    reactions,
                } => RoomEventKind::Reactions {
                    message_id: *message_id,
                    reactions: reaction_views(reactions),
                },
                Change::Read { user, message_id } => RoomEventKind::Read(ReceiptView {
                    user: user_of(user),
                    message_id: *message_id,
                    at: c.at,
                }),
            };
            Some(RoomEventView {
                position: c.seq,
                room_id: c.room_id.clone(),
                at: c.at,
                kind,
            })
        }
        _ => None,
    }
}

/// Counts per emoji as subscribers see them, before the viewer's part is filled in.
fn reaction_views(counts: &[ReactionCount]) -> Vec<ReactionView> {
    counts
        .iter()
        .map(|r| ReactionView {
            emoji: r.emoji.clone(),
            count: r.count,
            viewer_reacted: false,
        })
        .collect()
}
