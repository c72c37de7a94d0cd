//! Channels: app events a backend publishes (a ticket created, a dashboard figure, a game
//! announcement) to every live subscriber, on every transport and instance. Not persisted: a
//! subscriber gets what is published while it is subscribed.
//!
//! Names: `public:NAME` (anyone, anonymous included), `broadcast` (every signed-in user),
//! `user:ID` (that user), `role:NAME` (users with that role), `room:ID` (the room's members);
//! admins may read every channel.

use std::sync::Arc;

use chrono::Utc;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use rand::RngCore;

use super::{require_admin, Domain, DomainError, DomainResult};
use crate::auth::{AuthUser, Grant, Viewer};
use crate::hub::event::ChannelEvent;
use crate::hub::{Event, RecvError, Topic};

/// Frame types of the legacy `/ws` protocol: an event may not take one of these names, or a
/// legacy client could not tell it from the protocol's own frames.
pub const RESERVED_TYPES: &[&str] = &[
    "message",
    "system",
    "typing",
    "error",
    "pong",
    "joined_room",
    "subscribed",
    "unsubscribed",
    "online_users",
    "user.online",
    "user.offline",
    "notification",
    "conversation_joined",
    "new_message",
    "typing_indicator",
    "presence_update",
    "connection",
    "chat",
    "user_joined",
    "user_left",
    "presence",
    "leaderboard_update",
    "message_edited",
    "message_deleted",
    "reactions",
    "read",
    "auth_ok",
    "token_expiring",
];

/// Channels one subscription may follow at once.
pub const CHANNELS_MAX: usize = 100;

/// What an anonymous client may follow at once: channels in one subscription, and on one
/// socket, channels (`/ws`) or operations (GraphQL). Anyone can open anonymous sockets without
/// an account, so each gets a small budget (their number is capped per address).
pub const ANONYMOUS_FOLLOWS_MAX: usize = 10;

/// A valid channel name, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    Public(String),
    Broadcast,
    User(String),
    Role(String),
    Room(String),
}

fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

impl Channel {
    pub fn parse(name: &str) -> DomainResult<Self> {
        let bad = || {
            DomainError::bad_input(format!(
                "{name:?} is not a channel: use public:NAME, broadcast, user:ID, role:NAME or room:ID"
            ))
        };
        if name == "broadcast" {
            return Ok(Channel::Broadcast);
        }
        let (kind, rest) = name.split_once(':').ok_or_else(bad)?;
        match kind {
            "public" if is_name(rest) => Ok(Channel::Public(rest.to_owned())),
            "role" if is_name(rest) => Ok(Channel::Role(rest.to_owned())),
            "room" if super::records::validate_room_id(rest).is_ok() => {
                Ok(Channel::Room(rest.to_owned()))
            }
            "user"
                if (1..=128).contains(&rest.chars().count())
                    && !rest.chars().any(char::is_whitespace) =>
            {
                Ok(Channel::User(rest.to_owned()))
            }
            _ => Err(bad()),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Channel::Public(n) => format!("public:{n}"),
            Channel::Broadcast => "broadcast".to_owned(),
            Channel::User(id) => format!("user:{id}"),
            Channel::Role(r) => format!("role:{r}"),
            Channel::Room(id) => format!("room:{id}"),
        }
    }

    /// A short label of the channel's kind (for metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Public(_) => "public",
            Channel::Broadcast => "broadcast",
            Channel::User(_) => "user",
            Channel::Role(_) => "role",
            Channel::Room(_) => "room",
        }
    }

    /// A signed-in user's own channels, which they follow without asking.
    pub fn own(user: &AuthUser) -> Vec<Channel> {
        vec![
            Channel::User(user.id.clone()),
            Channel::Role(user.role.clone()),
            Channel::Broadcast,
        ]
    }
}

/// An event type: `[a-z0-9_.-]{1,64}`, not one of the legacy protocol's frame types.
pub fn validate_type(kind: &str) -> DomainResult<()> {
    if !is_name(kind) {
        return Err(DomainError::bad_input(
            "event type must be 1-64 characters of a-z, 0-9, '_', '.' or '-'",
        ));
    }
    if RESERVED_TYPES.contains(&kind) {
        return Err(DomainError::bad_input(format!(
            "event type {kind:?} is reserved by the /ws protocol"
        )));
    }
    Ok(())
}

fn event_id() -> String {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Time first, so ids sort roughly by publication.
    format!("{:012x}-{random}", Utc::now().timestamp_millis())
}

impl Domain {
    /// Whether the viewer may read a channel: `UNAUTHENTICATED` when anonymous (and it is not
    /// public), `FORBIDDEN` when signed in without the right.
    pub async fn check_channel(&self, viewer: &Viewer, channel: &Channel) -> DomainResult<()> {
        if let Viewer::Shared(grant) = viewer {
            // A shared execution reads the channels its members were each allowed, no other.
            return match grant {
                Grant::Channels(names) if names.contains(&channel.name()) => Ok(()),
                _ => Err(DomainError::Forbidden(format!(
                    "not allowed to read channel {}",
                    channel.name()
                ))),
            };
        }
        if let Channel::Public(_) = channel {
            return Ok(());
        }
        let user = viewer.user().ok_or(DomainError::Unauthenticated)?;
        if user.is_admin() {
            return Ok(());
        }
        let allowed = match channel {
            Channel::Public(_) | Channel::Broadcast => true,
            Channel::User(id) => *id == user.id,
            Channel::Role(role) => *role == user.role,
            Channel::Room(room) => self.is_member(room, &user.id).await?,
        };
        if allowed {
            Ok(())
        } else {
            Err(DomainError::Forbidden(format!(
                "not allowed to read channel {}",
                channel.name()
            )))
        }
    }

    /// Admin: publishes an event to a channel's live subscribers.
    pub fn publish_event(
        &self,
        viewer: &Viewer,
        channel: &str,
        kind: &str,
        data: Option<serde_json::Value>,
    ) -> DomainResult<ChannelEvent> {
        require_admin(viewer)?;
        let channel = Channel::parse(channel)?;
        validate_type(kind)?;
        let data = data.unwrap_or(serde_json::Value::Null);
        let size = serde_json::to_vec(&data)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.rules.max_event_bytes {
            return Err(DomainError::bad_input(format!(
                "data must be at most {} bytes as JSON",
                self.rules.max_event_bytes
            )));
        }
        let event = ChannelEvent {
            id: event_id(),
            channel: channel.name(),
            kind: kind.to_owned(),
            data,
            at: Utc::now(),
        };
        crate::metrics::channel_published(channel.kind());
        self.hub.publish(Event::Channel(event.clone()));
        Ok(event)
    }

    /// Resolves and authorises the channels a subscription asks for: the given names, or the
    /// viewer's own channels when none are given.
    pub async fn resolve_channels(
        &self,
        viewer: &Viewer,
        names: Option<&[String]>,
    ) -> DomainResult<Vec<Channel>> {
        let channels = match names {
            Some(names) if !names.is_empty() => {
                let max = match viewer {
                    Viewer::Anonymous => ANONYMOUS_FOLLOWS_MAX,
                    _ => CHANNELS_MAX,
                };
                if names.len() > max {
                    return Err(DomainError::bad_input(format!(
                        "at most {max} channels at once"
                    )));
                }
                let mut channels = names
                    .iter()
                    .map(|n| Channel::parse(n))
                    .collect::<DomainResult<Vec<_>>>()?;
                channels.dedup();
                channels
            }
            _ => Channel::own(viewer.user().ok_or(DomainError::Unauthenticated)?),
        };
        for channel in &channels {
            self.check_channel(viewer, channel).await?;
        }
        Ok(channels)
    }

    /// One channel's events as they are published. A room channel ends for a member who
    /// leaves the room (not for admins, who read every channel).
    pub fn channel_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
        channel: &Channel,
    ) -> BoxStream<'static, ChannelEvent> {
        let mut live = self.hub.subscribe(Topic::Channel(channel.name()));
        let leaver = match (channel, viewer.user()) {
            (Channel::Room(_), Some(user)) if !user.is_admin() => Some(user.id.clone()),
            _ => None,
        };
        let kind = channel.kind();
        Box::pin(async_stream::stream! {
            loop {
                match live.recv().await {
                    Ok(event) => match &*event {
                        Event::Channel(e) => {
                            crate::metrics::channel_delivered(kind);
                            yield e.clone();
                        }
                        Event::Left(left) if Some(&left.user_id) == leaver.as_ref() => return,
                        _ => {}
                    },
                    // Channel events are not kept: what a slow subscriber missed is gone, and
                    // counted.
                    Err(RecvError::Lagged(n)) => crate::metrics::channel_lagged(kind, n),
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// `events(channels)`: the events of every channel asked for (authorised first).
    pub async fn event_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
        names: Option<&[String]>,
    ) -> DomainResult<BoxStream<'static, ChannelEvent>> {
        let channels = self.resolve_channels(viewer, names).await?;
        let feeds = channels.iter().map(|c| self.channel_feed(viewer, c));
        Ok(futures_util::stream::select_all(feeds).boxed())
    }
}
