//! The live streams subscriptions are made of. Each is authorised once, when it starts, then
//! follows a hub topic. Persistent streams (messages, notifications) never lose an item: a
//! subscriber that falls behind its buffer, or sees a gap, catches up from the database.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::leaderboard::validate_limit;
use super::messages::{parse_message_id, MessageView};
use super::presence::PresenceStatus;
use super::{require_user, Domain, DomainError, DomainResult};
use crate::auth::Viewer;
use crate::db::{message, notification, user};
use crate::hub::event::LeaderboardChanged;
use crate::hub::{Event, RecvError, Topic};

/// Rows read per query when replaying or catching up.
pub(crate) const PAGE: u64 = 500;

/// Everything after `cursor`, page by page, as one stream: `fetch(cursor)` reads one page of at
/// most `PAGE` rows and `key` gives a row's cursor. Stops after a short page or an error.
fn pages<T, F, Fut>(
    mut cursor: i64,
    key: fn(&T) -> i64,
    fetch: F,
) -> impl futures_util::Stream<Item = DomainResult<T>>
where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = DomainResult<Vec<T>>>,
{
    async_stream::stream! {
        loop {
            match fetch(cursor).await {
                Ok(page) => {
                    let full = page.len() as u64 == PAGE;
                    for row in page {
                        cursor = key(&row);
                        yield Ok(row);
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    yield Err(e);
                    break;
                }
            }
        }
    }
}

/// A typing change as a subscriber sees it.
#[derive(Clone, Debug)]
pub struct TypingView {
    pub room_id: String,
    pub user: user::Model,
    pub is_typing: bool,
    pub at: DateTime<Utc>,
}

/// A presence change as a subscriber sees it, in the subscription's scope.
#[derive(Clone, Debug)]
pub struct PresenceEventView {
    pub user: Arc<user::Model>,
    pub status: PresenceStatus,
    pub connections: u32,
    pub room_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl Domain {
    /// `messageAdded(roomId, after)`: every message after `after` from the database, then live
    /// ones, with no gap and no duplicate, in id order. Members only.
    pub async fn message_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: &str,
        after: Option<&str>,
    ) -> DomainResult<BoxStream<'static, DomainResult<MessageView>>> {
        self.require_member(viewer, room_id).await?;
        let me = require_user(viewer)?;
        // Admins read every room whether or not they belong to it.
        let ends_on_leave = (!me.is_admin()).then(|| me.id.clone());
        let after = after.map(parse_message_id).transpose()?;
        // Follow the topic first, then read where the room stands: anything committed later
        // arrives as an event, anything before is in the database.
        let mut live = self.hub.subscribe(Topic::RoomMessages(room_id.to_owned()));
        let baseline = self.room(room_id).await?.map(|r| r.last_seq).unwrap_or(0);
        let domain = self.clone();
        let room = room_id.to_owned();
        Ok(Box::pin(async_stream::stream! {
            if let Some(after) = after {
                let replay = pages(after, |v: &MessageView| v.message.id, |cursor| {
                    domain.replay_page(&room, cursor, baseline)
                });
                futures_util::pin_mut!(replay);
                while let Some(item) = replay.next().await {
                    let failed = item.is_err();
                    yield item;
                    if failed {
                        return;
                    }
                }
            }
            let mut last = baseline;
            loop {
                match live.recv().await {
                    Ok(event) => match &*event {
                        Event::Message(added) => {
                            let seq = added.message.seq;
                            if seq <= last {
                                continue;
                            }
                            if seq == last + 1 {
                                last = seq;
                                yield Ok(MessageView {
                                    message: added.message.clone(),
                                    sender: added.sender.clone(),
                                });
                                continue;
                            }
                            // A gap: published elsewhere, or before we subscribed, and not
                            // heard. It is committed: read it below.
                        }
                        Event::Left(left) if Some(&left.user_id) == ends_on_leave.as_ref() => {
                            yield Err(DomainError::Forbidden(format!("you left room {room}")));
                            return;
                        }
                        // Other instances' events may have gone unheard: check the database.
                        Event::Resync => {}
                        _ => continue,
                    },
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
                tracing::debug!(room = %room, after_seq = last, "message subscriber behind: caught up from the database");
                let missed = pages(last, |v: &MessageView| v.message.seq, |cursor| {
                    domain.messages_after_seq(&room, cursor)
                });
                futures_util::pin_mut!(missed);
                while let Some(item) = missed.next().await {
                    match item {
                        Ok(view) => {
                            last = view.message.seq;
                            yield Ok(view);
                        }
                        Err(e) => {
                            yield Err(e);
                            return;
                        }
                    }
                }
            }
        }))
    }

    async fn replay_page(
        &self,
        room_id: &str,
        after_id: i64,
        up_to_seq: i64,
    ) -> DomainResult<Vec<MessageView>> {
        let rows = message::Entity::find()
            .filter(message::Column::RoomId.eq(room_id))
            .filter(message::Column::Id.gt(after_id))
            .filter(message::Column::Seq.lte(up_to_seq))
            .order_by_asc(message::Column::Id)
            .limit(PAGE)
            .all(&self.db)
            .await?;
        self.with_senders(rows).await
    }

    async fn messages_after_seq(
        &self,
        room_id: &str,
        after_seq: i64,
    ) -> DomainResult<Vec<MessageView>> {
        let rows = message::Entity::find()
            .filter(message::Column::RoomId.eq(room_id))
            .filter(message::Column::Seq.gt(after_seq))
            .order_by_asc(message::Column::Seq)
            .limit(PAGE)
            .all(&self.db)
            .await?;
        self.with_senders(rows).await
    }

    /// `typing(roomId)`: the room's typing changes, except the viewer's own. Members only.
    pub async fn typing_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: &str,
    ) -> DomainResult<BoxStream<'static, TypingView>> {
        self.require_member(viewer, room_id).await?;
        let admin = viewer.is_admin();
        let me = require_user(viewer)?.id.clone();
        let mut live = self.hub.subscribe(Topic::RoomTyping(room_id.to_owned()));
        Ok(Box::pin(async_stream::stream! {
            loop {
                match live.recv().await {
                    Ok(event) => {
                        let t = match &*event {
                            Event::Typing(t) => t,
                            Event::Left(left) if left.user_id == me && !admin => return,
                            _ => continue,
                        };
                        if t.user.id == me {
                            continue;
                        }
                        yield TypingView {
                            room_id: t.room_id.clone(),
                            user: t.user.clone(),
                            is_typing: t.is_typing,
                            at: t.at,
                        };
                    }
                    // Typing is ephemeral: what was missed is stale by now.
                    Err(RecvError::Lagged(n)) => tracing::debug!(missed = n, "typing subscriber lagged"),
                    Err(RecvError::Closed) => return,
                }
            }
        }))
    }

    /// `presence(roomId)`: one event per user online in scope, then changes. Everyone's
    /// presence needs a signed-in viewer; a room's, membership.
    pub async fn presence_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: Option<&str>,
    ) -> DomainResult<BoxStream<'static, PresenceEventView>> {
        require_user(viewer)?;
        let mut live = self.hub.subscribe(Topic::Presence);
        let initial = self.online_users(viewer, room_id).await?;
        let scope = room_id.map(str::to_owned);
        Ok(Box::pin(async_stream::stream! {
            let now = Utc::now();
            for p in initial {
                yield PresenceEventView {
                    user: p.user,
                    status: p.status,
                    connections: p.connections,
                    room_id: scope.clone(),
                    at: now,
                };
            }
            loop {
                match live.recv().await {
                    Ok(event) => {
                        let Event::Presence(p) = &*event else { continue };
                        if scope.as_ref().is_some_and(|room| !p.rooms.contains(room)) {
                            continue;
                        }
                        yield PresenceEventView {
                            user: p.user.clone(),
                            status: p.status,
                            connections: p.connections,
                            room_id: scope.clone(),
                            at: p.at,
                        };
                    }
                    Err(RecvError::Lagged(n)) => tracing::debug!(missed = n, "presence subscriber lagged"),
                    Err(RecvError::Closed) => return,
                }
            }
        }))
    }

    /// `notifications`: the viewer's new notifications as they are stored, in order, none
    /// missed (a gap in the viewer's numbering, or lag, is read from the database).
    pub async fn notification_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
    ) -> DomainResult<BoxStream<'static, DomainResult<notification::Model>>> {
        let me = require_user(viewer)?.id.clone();
        let mut live = self.hub.subscribe(Topic::UserNotifications(me.clone()));
        let baseline = self
            .user_by_id(&me)
            .await?
            .map(|u| u.notification_seq)
            .unwrap_or(0);
        let domain = self.clone();
        Ok(Box::pin(async_stream::stream! {
            let mut last = baseline;
            loop {
                match live.recv().await {
                    Ok(event) => match &*event {
                        Event::Notification(n) => {
                            let seq = n.notification.seq;
                            if seq <= last {
                                continue;
                            }
                            if seq == last + 1 {
                                last = seq;
                                yield Ok(n.notification.clone());
                                continue;
                            }
                        }
                        Event::Resync => {}
                        _ => continue,
                    },
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
                tracing::debug!(after_seq = last, "notification subscriber behind: caught up from the database");
                let missed = pages(last, |n: &notification::Model| n.seq, |cursor| {
                    domain.notifications_after_seq(&me, cursor)
                });
                futures_util::pin_mut!(missed);
                while let Some(item) = missed.next().await {
                    match item {
                        Ok(n) => {
                            last = n.seq;
                            yield Ok(n);
                        }
                        Err(e) => {
                            yield Err(e);
                            return;
                        }
                    }
                }
            }
        }))
    }

    /// `leaderboard(limit)`: the current top at once, then a new one whenever the top `limit`
    /// changes, at most one per interval.
    pub fn leaderboard_feed(
        self: &Arc<Self>,
        limit: Option<i32>,
    ) -> DomainResult<BoxStream<'static, (Arc<LeaderboardChanged>, usize)>> {
        let limit = validate_limit(limit)?;
        let mut live = self.hub.subscribe(Topic::Leaderboard);
        let interval = self.rules.leaderboard_interval;
        let domain = self.clone();
        let top =
            move |s: &LeaderboardChanged| s.entries.iter().take(limit).cloned().collect::<Vec<_>>();
        Ok(Box::pin(async_stream::stream! {
            let first = domain.leaderboard.snapshot();
            let mut sent = top(&first);
            let mut sent_at = tokio::time::Instant::now();
            yield (first, limit);
            let mut pending: Option<Arc<LeaderboardChanged>> = None;
            loop {
                let due = pending.is_some();
                let ready = tokio::select! {
                    received = live.recv() => {
                        let latest = match received {
                            Ok(event) => match &*event {
                                Event::Leaderboard(l) => Arc::new(l.clone()),
                                _ => continue,
                            },
                            Err(RecvError::Lagged(_)) => domain.leaderboard.snapshot(),
                            Err(RecvError::Closed) => return,
                        };
                        // Only a change to this subscriber's top counts; a later change back
                        // cancels one not yet sent.
                        pending = (top(&latest) != sent).then_some(latest);
                        None
                    }
                    _ = tokio::time::sleep_until(sent_at + interval), if due => pending.take(),
                };
                if let Some(snapshot) = ready {
                    sent = top(&snapshot);
                    sent_at = tokio::time::Instant::now();
                    yield (snapshot, limit);
                }
            }
        }))
    }
}
