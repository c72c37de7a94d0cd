//! What a legacy socket follows: each a task that reads a domain feed (already authorised and
//! filtered by the domain) and writes its events to the socket as frames. The socket owns
//! them in its `Follows`, which stops them when the socket ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::{Frames, Notice, Outgoing};
use crate::domain::changes::{RoomEventKind, RoomEventView};
use crate::domain::contacts::ContactPresence;
use crate::domain::feeds::TypingView;
use crate::domain::leaderboard::ranked;
use crate::domain::messages::{MessageKind, MessageView};
use crate::domain::{Domain, DomainError, DomainResult};
use crate::http::socket::EventStamp;
use crate::hub::event::{ChannelEvent, LeaderboardChanged};
use crate::metrics;

/// One thing a socket follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Follow {
    /// A room joined on this socket: its messages and typing.
    Room(String),
    /// The user's own notifications.
    Notifications,
    /// The user's contacts going online and offline (`Domain::contacts_presence_feed`).
    Presence,
    Leaderboard,
    /// A channel, by its full name.
    Channel(String),
}

/// The tasks following feeds for one socket. Dropping it stops them all.
#[derive(Default)]
pub(crate) struct Follows {
    tasks: HashMap<Follow, JoinHandle<()>>,
}

impl Follows {
    /// Whether `follow` runs (a room's task ends by itself when the user leaves it elsewhere).
    pub(crate) fn is_active(&self, follow: &Follow) -> bool {
        self.tasks.get(follow).is_some_and(|t| !t.is_finished())
    }

    pub(crate) fn start(
        &mut self,
        follow: Follow,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        if let Some(previous) = self.tasks.insert(follow, tokio::spawn(task)) {
            previous.abort();
        }
    }

    /// The channels followed now. Forgets channels whose feed ended by itself (a room
    /// channel of a room the user left), so they neither count nor stay listed.
    pub(crate) fn channels_followed(&mut self) -> usize {
        self.tasks
            .retain(|follow, task| !matches!(follow, Follow::Channel(_)) || !task.is_finished());
        self.tasks
            .keys()
            .filter(|follow| matches!(follow, Follow::Channel(_)))
            .count()
    }

    /// What the socket follows now.
    pub(crate) fn followed(&self) -> Vec<Follow> {
        self.tasks
            .iter()
            .filter(|(_, task)| !task.is_finished())
            .map(|(follow, _)| follow.clone())
            .collect()
    }

    /// Stops following and waits until the task is gone, so it writes nothing more.
    pub(crate) async fn stop(&mut self, follow: &Follow) {
        if let Some(task) = self.tasks.remove(follow) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Follows {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

fn stamp(kind: &'static str, created: chrono::DateTime<chrono::Utc>) -> Option<EventStamp> {
    Some(EventStamp { kind, created })
}

/// A room's events (messages and their changes) and typing, until the user leaves the room
/// (the feeds end) or the socket stops following it.
pub(crate) async fn room(
    domain: Arc<Domain>,
    mut messages: BoxStream<'static, DomainResult<RoomEventView>>,
    mut typing: BoxStream<'static, TypingView>,
    frames: Frames,
) {
    let mut typing_open = true;
    loop {
        tokio::select! {
            item = messages.next() => match item {
                Some(Ok(event)) => {
                    if !send_room_event(&domain, &event, &frames).await {
                        return;
                    }
                }
                // The user left the room (on any connection): the room's frames stop.
                None | Some(Err(DomainError::Forbidden(_))) => return,
                Some(Err(e)) => {
                    frames.error(e.code(), &e.to_string()).await;
                    return;
                }
            },
            item = typing.next(), if typing_open => match item {
                Some(t) => {
                    let event = Outgoing::Typing(&t);
                    if !frames.send(&event, stamp(metrics::ROOM_TYPING, t.at)).await {
                        return;
                    }
                }
                None => typing_open = false,
            },
        }
    }
}

/// A room's event as its frame: a message as `send_message` tells it, a change as its own.
async fn send_room_event(domain: &Domain, event: &RoomEventView, frames: &Frames) -> bool {
    let at = stamp(metrics::ROOM_MESSAGES, event.at);
    match &event.kind {
        RoomEventKind::Posted(view) => send_message(domain, view, frames).await,
        _ => frames.send(&Outgoing::RoomChange(event), at).await,
    }
}

/// A room message as its frame: a user's message, or a room announcement with the room's
/// members.
pub(crate) async fn send_message(domain: &Domain, view: &MessageView, frames: &Frames) -> bool {
    let at = stamp(metrics::ROOM_MESSAGES, view.message.created_at);
    if MessageKind::parse(&view.message.kind) == MessageKind::User {
        return frames.send(&Outgoing::Message(view), at).await;
    }
    let room = view.message.room_id.as_str();
    let members: Vec<String> = match domain.members(room).await {
        Ok(users) => users.into_iter().map(|u| u.username).collect(),
        Err(e) => {
            tracing::warn!(error = %e, room, "legacy /ws: could not list a room's members");
            Vec::new()
        }
    };
    let event = Outgoing::System {
        room,
        text: &view.message.body,
        members: &members,
    };
    frames.send(&event, at).await
}

/// The presence of the user's contacts, as the domain tells its changes.
pub(crate) async fn presence(mut changes: BoxStream<'static, ContactPresence>, frames: Frames) {
    while let Some(change) = changes.next().await {
        let at = stamp(metrics::PRESENCE, change.at);
        if !frames.send(&Outgoing::Presence(&change), at).await {
            return;
        }
    }
}

/// The user's notifications as they are stored.
pub(crate) async fn notifications(
    mut feed: BoxStream<'static, DomainResult<Notice>>,
    frames: Frames,
) {
    while let Some(item) = feed.next().await {
        match item {
            Ok(n) => {
                let at = stamp(metrics::USER_NOTIFICATIONS, n.created_at);
                if !frames.send(&Outgoing::Notification(&n), at).await {
                    return;
                }
            }
            Err(e) => {
                frames.error(e.code(), &e.to_string()).await;
                return;
            }
        }
    }
}

/// The top of the leaderboard now, then on each change of it.
pub(crate) async fn leaderboard(
    mut feed: BoxStream<'static, (Arc<LeaderboardChanged>, usize)>,
    frames: Frames,
) {
    while let Some((snapshot, limit)) = feed.next().await {
        let entries = ranked(&snapshot, limit);
        if !frames.send(&Outgoing::Leaderboard(&entries), None).await {
            return;
        }
    }
}

/// A channel's app events, until the socket unsubscribes (or, for a room channel, the user
/// leaves the room and the feed ends).
pub(crate) async fn channel(mut feed: BoxStream<'static, ChannelEvent>, frames: Frames) {
    while let Some(event) = feed.next().await {
        if !frames
            .send(
                &Outgoing::Channel(&event),
                stamp(metrics::CHANNEL, event.at),
            )
            .await
        {
            return;
        }
    }
}
