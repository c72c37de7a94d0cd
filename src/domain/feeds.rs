//! The live streams subscriptions are made of: every rule of a subscription lives in its feed
//! here, whichever transport reads it. A feed checks who may open it, orders and filters what
//! it delivers to whom, catches up from the database where the data is persistent, and ends
//! when the subscriber's rights end, at the exact point of the room's sequence where that
//! happens. A feed also says whether its output is the same for every subscriber and under
//! which grant subscribers may share one execution of it (`Domain::sharing`); the transport
//! then only groups equal grants and copies bytes.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::leaderboard::validate_limit;
use super::records::{
    parse_message_id, validate_room_id, MessageView, PresenceStatus, RoomEventKind, RoomEventView,
    LEFT, PAGE,
};
use super::wire;
use super::{require_user, Domain, DomainError, DomainResult};
use crate::auth::{Grant, Viewer};
use crate::db::{message, notification, user};
use crate::hub::event::LeaderboardChanged;
use crate::hub::{Event, RecvError, Topic, TopicReceiver};

/// Everything after `cursor`, page by page, as one stream: `fetch(cursor)` reads one page of at
/// most `PAGE` rows and `key` gives a row's cursor. Stops after a short page or an error.
fn pages<T, F, Fut>(
    mut cursor: i64,
    key: fn(&T) -> i64,
    fetch: F,
) -> impl Stream<Item = DomainResult<T>>
where
    F: Fn(i64) -> Fut,
    Fut: Future<Output = DomainResult<Vec<T>>>,
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

/// The live part of a numbered feed (a room's messages, a user's notifications): items
/// numbered 1, 2, 3… on one hub topic, from the one after `last` on. An item that arrives in
/// turn is passed on; a gap (published elsewhere, or before the topic was followed, and not
/// heard), a lag behind the topic's buffer, or a resync of the Redis bridge is filled from the
/// database with `fetch(after)`, which reads the next page in order. Nothing is lost or
/// repeated. Ends after an error, which it yields.
fn numbered<T, F, Fut>(
    mut live: TopicReceiver,
    mut last: i64,
    pick: fn(&Event) -> Option<T>,
    seq: fn(&T) -> i64,
    fetch: F,
) -> impl Stream<Item = DomainResult<T>>
where
    F: Fn(i64) -> Fut,
    Fut: Future<Output = DomainResult<Vec<T>>>,
{
    async_stream::stream! {
        loop {
            match live.recv().await {
                Ok(event) => match pick(&event) {
                    Some(item) => {
                        let n = seq(&item);
                        if n <= last {
                            continue;
                        }
                        if n == last + 1 {
                            last = n;
                            yield Ok(item);
                            continue;
                        }
                        // A gap: committed, and read below.
                    }
                    // Other instances' events may have gone unheard: check the database.
                    None if matches!(*event, Event::Resync) => {}
                    None => continue,
                },
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            tracing::debug!(topic = %live.topic(), after_seq = last, "subscriber behind: caught up from the database");
            let missed = pages(last, seq, &fetch);
            futures_util::pin_mut!(missed);
            while let Some(item) = missed.next().await {
                match item {
                    Ok(row) => {
                        last = seq(&row);
                        yield Ok(row);
                    }
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                }
            }
        }
    }
}

/// An item of a room's sequence as a message feed reads it: a message, or the position of
/// another change, passed over.
enum Positioned {
    Item(Box<MessageView>),
    Passed(i64),
}

/// What a shared execution of a feed delivers: an item for every subscriber, or the point
/// where one user's subscribers stop (they left the room), after everything before it.
#[derive(Clone, Debug)]
pub enum Delivery<T> {
    Item(T),
    /// The user left: their subscriptions end here with this error.
    Departed {
        user_id: String,
        error: Arc<DomainError>,
    },
}

/// What a subscription asks to follow, as the transport read it from the request.
#[derive(Clone, Debug)]
pub enum FeedRequest<'a> {
    /// `messageAdded(roomId, after)`.
    Messages {
        room_id: &'a str,
        after: Option<&'a str>,
    },
    /// `events(channels)`.
    Events { channels: Option<&'a [String]> },
    /// `roomEvents(roomId, after)`; `viewer_reacted`: whether the subscriber asks whether they
    /// are among those who reacted.
    RoomEvents {
        room_id: &'a str,
        after: Option<&'a str>,
        viewer_reacted: bool,
    },
}

impl FeedRequest<'_> {
    /// The grant under which subscribers of this feed may share one execution, when its output
    /// is the same for every subscriber allowed to open it; `None`: each runs their own.
    ///
    /// `messageAdded` without `after` is the same for every member of the room (a replay is
    /// per subscriber). So is `roomEvents` without `after` when it does not ask whether the
    /// viewer reacted: everything else an event says is the room's, not the viewer's. `events` on explicit channels none of which is a room's is the same for
    /// everyone allowed to read them (a room channel ends per member when they leave). Typing
    /// hides the viewer's own, notifications are the viewer's, presence and the leaderboard
    /// start with a snapshot: none of those share.
    pub fn shared_grant(&self) -> Option<Grant> {
        match self {
            FeedRequest::Messages {
                room_id,
                after: None,
            } => Some(Grant::Room((*room_id).to_owned())),
            FeedRequest::RoomEvents {
                room_id,
                after: None,
                viewer_reacted: false,
            } => Some(Grant::Room((*room_id).to_owned())),
            FeedRequest::Events {
                channels: Some(names),
            } if !names.is_empty() && !names.iter().any(|n| n.starts_with("room:")) => {
                Some(Grant::Channels(names.to_vec()))
            }
            _ => None,
        }
    }
}

/// How one subscriber takes part in a shared execution: the user whose departure from the room
/// ends this subscriber's stream (none for admins, who read every room, and for channels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharing {
    pub ends_with: Option<String>,
}

/// Who reads a room's messages, which decides where the stream ends.
enum MessageReader {
    /// A member: the stream ends at their own "left" announcement.
    Member(String),
    /// An admin reads every room: nothing ends it.
    Admin,
    /// A shared execution: departures go out as `Delivery::Departed`.
    Shared,
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
    /// Checks the viewer's right to read what `grant` names, by the same rule as opening the
    /// feed alone (an error is the subscriber's answer), and says how they take part.
    pub async fn sharing(&self, viewer: &Viewer, grant: &Grant) -> DomainResult<Sharing> {
        match grant {
            Grant::Room(room_id) => {
                self.require_member(viewer, room_id).await?;
                let user = require_user(viewer)?;
                Ok(Sharing {
                    ends_with: (!user.is_admin()).then(|| user.id.clone()),
                })
            }
            Grant::Channels(names) => {
                self.resolve_channels(viewer, Some(names)).await?;
                Ok(Sharing { ends_with: None })
            }
        }
    }

    /// `messageAdded(roomId, after)` for one subscriber: every message after `after` from the
    /// database, then live ones, with no gap and no duplicate, in id order. Members only; a
    /// member's stream ends with FORBIDDEN right after their own "left" announcement.
    pub async fn message_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: &str,
        after: Option<&str>,
    ) -> DomainResult<BoxStream<'static, DomainResult<MessageView>>> {
        let deliveries = self.message_deliveries(viewer, room_id, after).await?;
        Ok(items_only(deliveries))
    }

    /// `messageAdded(roomId, after)` for a subscriber or a shared execution (`Viewer::Shared`,
    /// whose stream carries each member's departure as `Delivery::Departed` in its place).
    pub async fn message_deliveries(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: &str,
        after: Option<&str>,
    ) -> DomainResult<BoxStream<'static, DomainResult<Delivery<MessageView>>>> {
        validate_room_id(room_id)?;
        let after = after.map(parse_message_id).transpose()?;
        // Follow the topic, then read where the room stands, then check the viewer's right:
        // anything committed later arrives as an event, anything before is in the database,
        // and a leave committed before the check is refused by it (one committed after it is
        // numbered after the baseline, so the stream meets it).
        let live = self.hub.subscribe(Topic::RoomMessages(room_id.to_owned()));
        let baseline = self.room(room_id).await?.map(|r| r.last_seq).unwrap_or(0);
        let reader = match viewer {
            Viewer::Shared(Grant::Room(room)) if room == room_id => MessageReader::Shared,
            Viewer::Shared(_) => {
                return Err(DomainError::Forbidden(format!(
                    "not a reader of room {room_id}"
                )))
            }
            _ => {
                self.require_member(viewer, room_id).await?;
                let user = require_user(viewer)?;
                if user.is_admin() {
                    MessageReader::Admin
                } else {
                    MessageReader::Member(user.id.clone())
                }
            }
        };
        let domain = self.clone();
        let room = room_id.to_owned();
        Ok(Box::pin(async_stream::stream! {
            // History first: what was there when the subscription started.
            if let Some(after) = after {
                let replay = pages(after, |v: &MessageView| v.message.id, |cursor| {
                    domain.replay_page(&room, cursor, baseline)
                });
                futures_util::pin_mut!(replay);
                while let Some(item) = replay.next().await {
                    match item {
                        Ok(view) => yield Ok(Delivery::Item(view)),
                        Err(e) => {
                            yield Err(e);
                            return;
                        }
                    }
                }
            }
            // The room's other changes share its sequence: they move the position on without
            // being delivered here, so a message after them is in turn.
            let live = numbered(
                live,
                baseline,
                |event| match event {
                    Event::Message(added) => Some(Positioned::Item(Box::new(MessageView {
                        message: wire::message_of(&added.message),
                        sender: added.sender.as_ref().map(wire::user_of),
                    }))),
                    Event::RoomChange(change) => Some(Positioned::Passed(change.seq)),
                    _ => None,
                },
                |item| match item {
                    Positioned::Item(view) => view.message.seq,
                    Positioned::Passed(seq) => *seq,
                },
                |cursor| {
                    let (domain, room) = (&domain, &room);
                    async move {
                        let views = domain.messages_after_seq(room, cursor).await?;
                        Ok(views
                            .into_iter()
                            .map(|v| Positioned::Item(Box::new(v)))
                            .collect())
                    }
                },
            );
            futures_util::pin_mut!(live);
            while let Some(item) = live.next().await {
                let view = match item {
                    Ok(Positioned::Item(view)) => *view,
                    Ok(Positioned::Passed(_)) => continue,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
                let departed = departure(&view.message).map(str::to_owned);
                yield Ok(Delivery::Item(view));
                let Some(user_id) = departed else { continue };
                let error = DomainError::Forbidden(format!("you left room {room}"));
                match &reader {
                    MessageReader::Member(me) if *me == user_id => {
                        yield Err(error);
                        return;
                    }
                    MessageReader::Shared => {
                        yield Ok(Delivery::Departed { user_id, error: Arc::new(error) });
                    }
                    _ => {}
                }
            }
        }))
    }

    /// `roomEvents(roomId, after)` for one subscriber: every change to the room (new messages,
    /// edits, deletes, reactions, read receipts) after position `after` from the database, then
    /// live ones, in position order with no gap and no duplicate, each as it was at its
    /// position (a replayed post shows the body it was posted with, an edit the body it set and
    /// the reactions then). Members only (admins read every room); a member's stream ends with
    /// FORBIDDEN right after their own "left" announcement.
    pub async fn room_event_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: &str,
        after: Option<&str>,
    ) -> DomainResult<BoxStream<'static, DomainResult<RoomEventView>>> {
        let deliveries = self
            .room_event_deliveries(viewer, room_id, after, true)
            .await?;
        Ok(items_only(deliveries))
    }

    /// `roomEvents(roomId, after)` for a subscriber or a shared execution (`Viewer::Shared`,
    /// whose stream carries each member's departure as `Delivery::Departed` in its place).
    /// With `viewer_reacted`, each reaction count says whether the viewer had put that emoji
    /// there at the event's position (one query per such event); without it (a shared
    /// execution, or a subscriber that does not ask), it says false and costs nothing.
    pub async fn room_event_deliveries(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: &str,
        after: Option<&str>,
        viewer_reacted: bool,
    ) -> DomainResult<BoxStream<'static, DomainResult<Delivery<RoomEventView>>>> {
        validate_room_id(room_id)?;
        let after = after.map(parse_position).transpose()?;
        // As `message_deliveries`: follow, then read where the room stands, then check.
        let live = self.hub.subscribe(Topic::RoomMessages(room_id.to_owned()));
        let (baseline, reader) = match viewer {
            Viewer::Shared(Grant::Room(room)) if room == room_id => (
                self.room(room_id).await?.map(|r| r.last_seq).unwrap_or(0),
                MessageReader::Shared,
            ),
            Viewer::Shared(_) => {
                return Err(DomainError::Forbidden(format!(
                    "not a reader of room {room_id}"
                )))
            }
            _ => {
                let baseline = self.require_member(viewer, room_id).await?.last_seq;
                let user = require_user(viewer)?;
                let reader = if user.is_admin() {
                    MessageReader::Admin
                } else {
                    MessageReader::Member(user.id.clone())
                };
                (baseline, reader)
            }
        };
        let viewer_reacted = viewer_reacted && viewer.user().is_some();
        let viewer = viewer.clone();
        let domain = self.clone();
        let room = room_id.to_owned();
        Ok(Box::pin(async_stream::stream! {
            let replay = after.filter(|after| *after < baseline);
            // The highest position delivered: the replay (when asked for) reads on from
            // `after`, past the baseline if the room moved meanwhile; the live part starts
            // after the baseline and skips what the replay already read.
            let mut delivered = replay.unwrap_or(baseline);
            let replayed = match replay {
                Some(after) => pages(after, |e: &RoomEventView| e.position, |cursor| {
                    domain.room_events_after(&room, cursor)
                })
                .left_stream(),
                None => futures_util::stream::empty().right_stream(),
            };
            let live = numbered(live, baseline, wire::room_event_of, |e| e.position, |cursor| {
                domain.room_events_after(&room, cursor)
            });
            let all = replayed.chain(live);
            futures_util::pin_mut!(all);
            while let Some(item) = all.next().await {
                let mut event = match item {
                    Ok(event) => event,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
                if event.position <= delivered {
                    continue;
                }
                delivered = event.position;
                let reactions = match &mut event.kind {
                    RoomEventKind::Reactions { message_id, reactions } => Some((*message_id, reactions)),
                    RoomEventKind::Edited { message, reactions } => Some((message.message.id, reactions)),
                    _ => None,
                };
                if let Some((message_id, reactions)) = reactions.filter(|(_, r)| viewer_reacted && !r.is_empty()) {
                    match domain.viewer_emojis_at(&viewer, message_id, event.position).await {
                        Ok(mine) => {
                            for r in reactions.iter_mut() {
                                r.viewer_reacted = mine.contains(&r.emoji);
                            }
                        }
                        Err(e) => {
                            yield Err(e);
                            return;
                        }
                    }
                }
                let departed = match &event.kind {
                    RoomEventKind::Posted(view) => departure(&view.message).map(str::to_owned),
                    _ => None,
                };
                yield Ok(Delivery::Item(event));
                let Some(user_id) = departed else { continue };
                let error = DomainError::Forbidden(format!("you left room {room}"));
                match &reader {
                    MessageReader::Member(me) if *me == user_id => {
                        yield Err(error);
                        return;
                    }
                    MessageReader::Shared => {
                        yield Ok(Delivery::Departed { user_id, error: Arc::new(error) });
                    }
                    _ => {}
                }
            }
        }))
    }

    /// A page of the room's sequence after `after`: its messages and other changes merged in
    /// position order, at most `PAGE`.
    async fn room_events_after(
        &self,
        room_id: &str,
        after: i64,
    ) -> DomainResult<Vec<RoomEventView>> {
        let mut messages = self.messages_after_seq(room_id, after).await?;
        let changes = self.changes_after(room_id, after, PAGE).await?;
        // Each message as it was posted: changes since are events of their own.
        let changed: Vec<i64> = messages
            .iter()
            .filter(|v| v.message.edited_at.is_some() || v.message.deleted_at.is_some())
            .map(|v| v.message.id)
            .collect();
        let mut posted_bodies = self.bodies_as_posted(changed).await?;
        for view in &mut messages {
            if let Some(body) = posted_bodies.remove(&view.message.id) {
                view.message.body = body;
            }
            view.message.edited_at = None;
            view.message.deleted_at = None;
        }
        let mut events: Vec<RoomEventView> = messages
            .into_iter()
            .map(|view| RoomEventView {
                position: view.message.seq,
                room_id: view.message.room_id.clone(),
                at: view.message.created_at,
                kind: RoomEventKind::Posted(view),
            })
            .chain(changes)
            .collect();
        events.sort_by_key(|e| e.position);
        events.truncate(PAGE as usize);
        Ok(events)
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
                            user: wire::user_of(&t.user),
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
    /// presence needs a signed-in viewer; a room's, membership, and for a member it ends with
    /// FORBIDDEN when they leave the room: the leave travels the presence topic, so nothing
    /// announced after it reaches them, and nothing announced before it is withheld.
    pub async fn presence_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
        room_id: Option<&str>,
    ) -> DomainResult<BoxStream<'static, DomainResult<PresenceEventView>>> {
        let me = require_user(viewer)?;
        let ends_on_leave = (room_id.is_some() && !me.is_admin()).then(|| me.id.clone());
        let mut live = self.hub.subscribe(Topic::Presence);
        let initial = self.online_users(viewer, room_id).await?;
        let scope = room_id.map(str::to_owned);
        Ok(Box::pin(async_stream::stream! {
            let now = Utc::now();
            for p in initial {
                yield Ok(PresenceEventView {
                    user: p.user,
                    status: p.status,
                    connections: p.connections,
                    room_id: scope.clone(),
                    at: now,
                });
            }
            loop {
                match live.recv().await {
                    Ok(event) => match &*event {
                        Event::Presence(p) => {
                            if scope.as_ref().is_some_and(|room| !p.rooms.contains(room)) {
                                continue;
                            }
                            yield Ok(PresenceEventView {
                                user: Arc::new(wire::user_of(&p.user)),
                                status: wire::presence_status(p.status),
                                connections: p.connections,
                                room_id: scope.clone(),
                                at: p.at,
                            });
                        }
                        Event::Left(left)
                            if Some(&left.user_id) == ends_on_leave.as_ref()
                                && Some(&left.room_id) == scope.as_ref() =>
                        {
                            yield Err(DomainError::Forbidden(format!(
                                "you left room {}",
                                left.room_id
                            )));
                            return;
                        }
                        _ => {}
                    },
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
        let live = self.hub.subscribe(Topic::UserNotifications(me.clone()));
        let baseline = self
            .user_by_id(&me)
            .await?
            .map(|u| u.notification_seq)
            .unwrap_or(0);
        let domain = self.clone();
        Ok(Box::pin(async_stream::stream! {
            let feed = numbered(
                live,
                baseline,
                |event| match event {
                    Event::Notification(n) => Some(wire::notification_of(&n.notification)),
                    _ => None,
                },
                |n| n.seq,
                |cursor| domain.notifications_after_seq(&me, cursor),
            );
            futures_util::pin_mut!(feed);
            while let Some(item) = feed.next().await {
                yield item;
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

/// A position on a room's sequence as clients send it: a decimal integer, 0 or more.
fn parse_position(position: &str) -> DomainResult<i64> {
    position
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| DomainError::bad_input(format!("{position:?} is not a position")))
}

/// The member a message announces leaving the room, if it is such an announcement.
fn departure(message: &message::Model) -> Option<&str> {
    (message.action.as_deref() == Some(LEFT))
        .then_some(message.subject_id.as_deref())
        .flatten()
}

/// A subscriber's own stream of a feed: its items, without the departures a shared execution
/// carries for its members.
fn items_only<T: Send + 'static>(
    deliveries: BoxStream<'static, DomainResult<Delivery<T>>>,
) -> BoxStream<'static, DomainResult<T>> {
    deliveries
        .filter_map(|d| async move {
            match d {
                Ok(Delivery::Item(view)) => Some(Ok(view)),
                Ok(Delivery::Departed { .. }) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .boxed()
}
