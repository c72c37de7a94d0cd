//! The legacy JSON WebSocket protocol (LEGACY_WS.md): `/ws` and `/api/v1/ws`, `/ws/NAME`
//! channel sockets, `/ws/auth` (the `conversations` dialect) and the `arena` dialect's
//! endpoints under `/api/ws/`.
//!
//! A thin translation on the connection skeleton of `socket.rs`: each client frame becomes one
//! call of the same domain service GraphQL calls, a domain error becomes an `error` frame with
//! the same `code`, and what the socket is told comes from the same domain feeds as GraphQL
//! subscriptions (`follow`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use serde_json::Value;

use super::follow::{self, Follow, Follows};
use super::inbound::{self, Command, Inbound, Undecodable};
use super::{Dialect, DialectChoice, Frames, Notice, Outgoing, Purpose, GENERAL_ROOM};
use crate::auth::Viewer;
use crate::domain::channels::Channel;
use crate::domain::contacts::ContactRooms;
use crate::domain::presence::PresenceStatus;
use crate::domain::sessions::Followed;
use crate::domain::typing::ConnectionId;
use crate::domain::{Domain, DomainError, DomainResult};
use crate::http::socket::{self, Closes, End, Link, Refused};
use crate::http::websocket;
use crate::http::AppState;
use crate::metrics::Transport;

/// How many entries the arena leaderboard stream sends.
const LEADERBOARD_TOP: i32 = 10;

pub fn router() -> Router<AppState> {
    use Dialect::{Arena, Conversations};
    use Purpose::{Chat, Leaderboard, Notifications, Presence};
    let arena = |purpose, user: Path<String>| Entry::new(purpose, Some(Arena), Some(user.0));
    // `/ws/auth` is the conversations endpoint; every other `/ws/NAME` a channel socket.
    Router::new()
        .route(
            "/ws",
            get(|s, h, q, ws| upgrade(Entry::new(Chat, None, None), s, h, q, ws)),
        )
        .route(
            "/api/v1/ws",
            get(|s, h, q, ws| upgrade(Entry::new(Chat, None, None), s, h, q, ws)),
        )
        .route(
            "/ws/auth",
            get(|s, h, q, ws| upgrade(Entry::new(Chat, Some(Conversations), None), s, h, q, ws)),
        )
        .route("/ws/{name}", get(channel_socket))
        .route(
            "/api/ws/leaderboard",
            get(|s, h, q, ws| upgrade(Entry::new(Leaderboard, Some(Arena), None), s, h, q, ws)),
        )
        .route(
            "/api/ws/notifications/{user_id}",
            get(move |p, s, h, q, ws| upgrade(arena(Notifications, p), s, h, q, ws)),
        )
        .route(
            "/api/ws/presence/{user_id}",
            get(move |p, s, h, q, ws| upgrade(arena(Presence, p), s, h, q, ws)),
        )
        .route(
            "/api/ws/{user_id}",
            get(move |p, s, h, q, ws| upgrade(arena(Chat, p), s, h, q, ws)),
        )
}

/// What the path a socket connected to says about it.
#[derive(Clone, Debug)]
struct Entry {
    purpose: Purpose,
    /// The dialect the path chose, if any (`?dialect=` overrides it).
    dialect: Option<Dialect>,
    /// The user id an arena path names: it must be the token's user.
    path_user: Option<String>,
    /// The channel a `/ws/NAME` socket follows from the start (`public:NAME`); its token is
    /// optional.
    channel: Option<Channel>,
}

impl Entry {
    fn new(purpose: Purpose, dialect: Option<Dialect>, path_user: Option<String>) -> Self {
        Entry {
            purpose,
            dialect,
            path_user,
            channel: None,
        }
    }
}

type Params = Query<HashMap<String, String>>;
type Upgrade = Result<websocket::Upgrade, websocket::NotAnUpgrade>;

/// `/ws/NAME`: the general protocol, following `public:NAME` from the start, as per-feature
/// endpoints like `/ws/game` do.
async fn channel_socket(
    Path(name): Path<String>,
    state: State<AppState>,
    headers: HeaderMap,
    params: Params,
    ws: Upgrade,
) -> Response {
    let channel = match Channel::parse(&format!("public:{name}")) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let entry = Entry {
        channel: Some(channel),
        ..Entry::new(Purpose::Chat, None, None)
    };
    upgrade(entry, state, headers, params, ws).await
}

/// Opens a socket at the path that gave `entry`.
async fn upgrade(
    entry: Entry,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Params,
    ws: Upgrade,
) -> Response {
    let Ok(ws) = ws else {
        return (
            StatusCode::BAD_REQUEST,
            "open a WebSocket here (the legacy JSON protocol), e.g. ws://HOST/ws?token=JWT",
        )
            .into_response();
    };
    let token = socket::upgrade_token(&headers, &params).filter(|t| !t.trim().is_empty());
    let dialect = params.get("dialect").cloned();
    // A token signs the socket in as it opens (or closes it at once).
    let signs_in = token.is_some();
    socket::accept::<LegacySocket>(ws, state, &headers, signs_in, (entry, token, dialect))
}

/// One legacy connection's state, owned by its reader.
struct LegacySocket {
    domain: Arc<Domain>,
    id: ConnectionId,
    viewer: Viewer,
    purpose: Purpose,
    dialect: Arc<DialectChoice>,
    frames: Frames,
    follows: Follows,
    /// The rooms that decide whose presence the socket is told, once it follows presence.
    contacts: Option<ContactRooms>,
    /// How many channels the socket may follow at once, its own included
    /// (`TIDINGS_MAX_CHANNELS_PER_SOCKET`, fewer when anonymous).
    channels_max: usize,
}

impl socket::Protocol for LegacySocket {
    /// The path's entry, the token, `?dialect=`.
    type Opening = (Entry, Option<String>, Option<String>);
    const TRANSPORT: Transport = Transport::LegacyWs;
    const CLOSES: Closes = Closes {
        unauthorised: (4001, "Authentication failed"),
        internal: 1011,
        init_timeout: None,
    };
    const NOT_TEXT: (u16, &'static str) = (4002, "Invalid JSON");

    /// Signs the socket in (a token is required except on the leaderboard stream and channel
    /// sockets; an arena path's user id must be the token's), starts what its path follows and
    /// sends its greeting.
    async fn open(link: &mut Link, (entry, token, dialect): Self::Opening) -> Result<Self, End> {
        let anonymous = entry.purpose == Purpose::Leaderboard || entry.channel.is_some();
        if token.is_none() && !anonymous {
            return Err(Refused::Token("a token is required".into()).end::<Self>());
        }
        let viewer = link
            .sign_in(token.as_deref(), entry.path_user.as_deref())
            .await
            .map_err(|refused| refused.end::<Self>())?
            .clone();
        let named = dialect.as_deref().map(|d| (d, Dialect::named(d)));
        let chosen = named.and_then(|(_, d)| d).or(entry.dialect);
        let dialect = Arc::new(DialectChoice::new(chosen));
        let mut socket = Self {
            domain: link.state.domain.clone(),
            id: link.id,
            viewer,
            purpose: entry.purpose,
            frames: Frames::new(link.out.clone(), dialect.clone(), entry.purpose),
            dialect,
            follows: Follows::default(),
            contacts: None,
            channels_max: link.follows_budget(link.state.config.max_channels_per_socket),
        };
        if let Err(e) = socket.start(entry.channel).await {
            tracing::warn!(error = %e, "legacy /ws: could not start a socket's feeds");
            return Err(Refused::Internal.end::<Self>());
        }
        if let Some((name, None)) = named {
            let message = format!("unknown dialect {name:?}: rooms, conversations or arena");
            socket.frames.error("BAD_USER_INPUT", &message).await;
        }
        Ok(socket)
    }

    async fn on_text(&mut self, link: &mut Link, text: &str) -> Option<End> {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return Some(End::Close(Self::NOT_TEXT.0, Self::NOT_TEXT.1.into()));
        };
        match inbound::decode(&frame) {
            Ok(inbound) => self.on_frame(inbound, link).await,
            Err(Undecodable(why)) => {
                self.frames.error("BAD_USER_INPUT", &why).await;
            }
        }
        None
    }

    /// The socket's credentials were renewed: what it follows is checked again under them
    /// (`Domain::may_follow`); what they no longer allow stops with a FORBIDDEN `error` frame,
    /// and the user's own channels for a new role are followed.
    async fn renewed(&mut self, link: &mut Link) {
        let Some(viewer) = link.viewer().cloned() else {
            return;
        };
        let before = std::mem::replace(&mut self.viewer, viewer);
        if before.user().map(|u| &u.role) == self.viewer.user().map(|u| &u.role) {
            return;
        }
        for follow in self.follows.followed() {
            let followed = match &follow {
                Follow::Room(room_id) => Followed::Messages {
                    room_id: room_id.clone(),
                },
                Follow::Channel(name) => Followed::Events {
                    channels: Some(vec![name.clone()]),
                },
                Follow::Notifications | Follow::Presence | Follow::Leaderboard => continue,
            };
            if let Err(e) = self.domain.may_follow(&self.viewer, &followed).await {
                self.follows.stop(&follow).await;
                self.frames.error(e.code(), &e.to_string()).await;
            }
        }
        if self.purpose == Purpose::Chat {
            if let Some(user) = self.viewer.user() {
                for channel in Channel::own(user) {
                    let follow = Follow::Channel(channel.name());
                    if !self.follows.is_active(&follow) {
                        let feed = self.domain.channel_feed(&self.viewer, &channel);
                        let follower = follow::channel(feed, self.frames.clone());
                        self.follows.start(follow, follower);
                    }
                }
            }
        }
    }

    async fn token_expiring(&mut self, _link: &Link, expires_at: i64) {
        self.frames
            .send(&Outgoing::TokenExpiring { expires_at }, None)
            .await;
    }
}

impl LegacySocket {
    /// Follows what the socket's purpose says. Every feed is subscribed before the welcome
    /// goes out, so a client that has the welcome misses nothing after it; the welcome is
    /// queued before any follower runs, so it is the first frame.
    async fn start(&mut self, path_channel: Option<Channel>) -> DomainResult<()> {
        let domain = self.domain.clone();
        match self.purpose {
            Purpose::Chat => {
                // A signed-in socket follows its user's own channels without asking; a channel
                // socket follows its path's too.
                let mut channels = match self.viewer.user() {
                    Some(user) => Channel::own(user),
                    None => Vec::new(),
                };
                channels.extend(path_channel);
                let channel_feeds: Vec<_> = channels
                    .iter()
                    .map(|c| (c.name(), domain.channel_feed(&self.viewer, c)))
                    .collect();
                let personal = match self.viewer.user() {
                    Some(_) => Some((
                        self.presence_follower().await?,
                        self.notification_follower().await?,
                    )),
                    // Anonymous channel sockets: not counted online, no inbox.
                    None => None,
                };
                // An arena socket is in `general` from the start: subscribed before the welcome,
                // like every other feed, so nothing said there after the welcome is missed.
                let general = if self.dialect.chosen() == Some(Dialect::Arena) {
                    match self.prepare_room(GENERAL_ROOM).await {
                        Ok(follower) => follower,
                        Err(e) => {
                            self.frames.error(e.code(), &e.to_string()).await;
                            None
                        }
                    }
                } else {
                    None
                };
                // The conversations dialect greets with the user's online contacts.
                let contacts = match self.dialect.chosen() {
                    Some(Dialect::Conversations) if self.viewer.user().is_some() => {
                        Some(domain.online_contacts(&self.viewer).await?)
                    }
                    _ => None,
                };
                let welcome = Outgoing::Welcome {
                    user: self.viewer.user(),
                    online_count: domain.online_count(),
                    contacts: contacts.as_deref(),
                };
                self.frames.send(&welcome, None).await;
                if let Some(general) = general {
                    self.follows
                        .start(Follow::Room(GENERAL_ROOM.to_owned()), general);
                }
                for (name, feed) in channel_feeds {
                    let frames = self.frames.clone();
                    self.follows
                        .start(Follow::Channel(name), follow::channel(feed, frames));
                }
                if let Some((presence, notifications)) = personal {
                    self.follows.start(Follow::Presence, presence);
                    self.follows.start(Follow::Notifications, notifications);
                }
            }
            Purpose::Notifications => {
                let notifications = self.notification_follower().await?;
                self.follows.start(Follow::Notifications, notifications);
            }
            Purpose::Presence => {
                let presence = self.presence_follower().await?;
                self.follows.start(Follow::Presence, presence);
            }
            Purpose::Leaderboard => {
                let feed = domain.leaderboard_feed(Some(LEADERBOARD_TOP))?;
                let frames = self.frames.clone();
                self.follows
                    .start(Follow::Leaderboard, follow::leaderboard(feed, frames));
            }
        }
        Ok(())
    }

    /// The presence of the user's contacts, subscribed (not yet running).
    async fn presence_follower(
        &mut self,
    ) -> DomainResult<impl Future<Output = ()> + Send + 'static> {
        let (changes, rooms) = self.domain.contacts_presence_feed(&self.viewer).await?;
        self.contacts = Some(rooms);
        Ok(follow::presence(changes, self.frames.clone()))
    }

    /// The user's notifications, subscribed (not yet running).
    async fn notification_follower(
        &self,
    ) -> DomainResult<impl Future<Output = ()> + Send + 'static> {
        let feed = self.domain.notification_feed(&self.viewer).await?;
        let notices = feed.map(|item| {
            item.map(|n| Notice {
                id: n.id,
                kind: n.kind,
                level: n.level,
                title: n.title,
                body: n.body,
                data: n.data,
                created_at: n.created_at,
            })
        });
        Ok(follow::notifications(notices.boxed(), self.frames.clone()))
    }

    async fn on_frame(&mut self, Inbound { command, chooses }: Inbound, link: &mut Link) {
        // A socket whose URL chose no dialect takes the one its first room frame speaks.
        if let Some(dialect) = chooses {
            if self.dialect.choose(dialect) && dialect == Dialect::Arena {
                self.enter_general().await;
            }
        }
        let domain = self.domain.clone();
        let done = match command {
            Command::Join { room } => self.join(&room, true).await,
            Command::Leave { room } => self.leave(&room).await,
            Command::Message { room, text } => domain
                .send_message(&self.viewer, &room, &text, None)
                .await
                .map(drop),
            Command::Typing { room, is_typing } => domain
                .set_typing(&self.viewer, &room, is_typing, Some(self.id))
                .await
                .map(drop),
            Command::Ping => {
                self.frames.send(&Outgoing::Pong, None).await;
                Ok(())
            }
            Command::OnlineStatus { user_ids } => self.online_status(&user_ids).await,
            Command::Subscribe { channel } => self.subscribe(&channel, link).await,
            Command::Unsubscribe { channel } => self.unsubscribe(&channel).await,
            // Their effects reach the room's sockets, this one included, as room frames.
            Command::Edit { id, text } => domain
                .edit_message(&self.viewer, &id, &text)
                .await
                .map(drop),
            Command::Delete { id } => domain.delete_message(&self.viewer, &id).await.map(drop),
            Command::React {
                message_id,
                emoji,
                add,
            } => domain
                .react(&self.viewer, &message_id, &emoji, add)
                .await
                .map(drop),
            Command::MarkRead { room, message_id } => domain
                .mark_read(&self.viewer, &room, &message_id)
                .await
                .map(drop),
            Command::Auth { token } => self.authenticate(&token, link).await,
        };
        if let Err(e) = done {
            self.frames.error(e.code(), &e.to_string()).await;
        }
    }

    /// Joins a room (the domain creates a public one that does not exist yet) and follows it
    /// on this socket. A new member gets the room's "joined" announcement after `joined_room`.
    async fn join(&mut self, room: &str, answer: bool) -> DomainResult<()> {
        let follower = self.prepare_room(room).await?;
        if answer {
            self.frames.send(&Outgoing::Joined { room }, None).await;
        }
        if let Some(follower) = follower {
            self.follows.start(Follow::Room(room.to_owned()), follower);
        }
        Ok(())
    }

    /// Joins a room and subscribes to its feeds; the follower it returns (none when the socket
    /// follows the room already) is not running yet, so the caller decides what goes first.
    async fn prepare_room(
        &mut self,
        room: &str,
    ) -> DomainResult<Option<impl Future<Output = ()> + Send + 'static>> {
        let domain = self.domain.clone();
        let joined = domain.join_room(&self.viewer, room).await?;
        if let Some(contacts) = &self.contacts {
            contacts.joined(room);
        }
        if self.follows.is_active(&Follow::Room(room.to_owned())) {
            return Ok(None);
        }
        // Read from just before the announcement, so this socket gets it too.
        let after = joined
            .announcement
            .map(|a| (a.message.seq - 1).max(0).to_string());
        let messages = domain
            .room_event_feed(&self.viewer, room, after.as_deref())
            .await?;
        let typing = domain.typing_feed(&self.viewer, room).await?;
        let frames = self.frames.clone();
        Ok(Some(follow::room(domain, messages, typing, frames)))
    }

    /// Leaves a room. The socket stops following it first, then gets the "left" announcement
    /// once, from here.
    async fn leave(&mut self, room: &str) -> DomainResult<()> {
        self.follows.stop(&Follow::Room(room.to_owned())).await;
        let domain = self.domain.clone();
        let left = domain.leave_room(&self.viewer, room).await?;
        if let Some(contacts) = &self.contacts {
            contacts.left(room);
        }
        if let Some(announcement) = left {
            follow::send_message(&domain, &announcement, &self.frames).await;
        }
        Ok(())
    }

    /// Follows a channel the viewer may read (the domain decides), answering `subscribed`;
    /// within the socket's channel budget and the user's subscription budget (else
    /// RATE_LIMITED, and the socket stays open). A channel already followed stays as it is.
    async fn subscribe(&mut self, name: &str, link: &Link) -> DomainResult<()> {
        let domain = self.domain.clone();
        let names = [name.to_owned()];
        for channel in domain.resolve_channels(&self.viewer, Some(&names)).await? {
            let follow = Follow::Channel(channel.name());
            if self.follows.is_active(&follow) {
                continue;
            }
            if self.follows.channels_followed() >= self.channels_max {
                crate::metrics::subscription_refused("socket");
                return Err(DomainError::RateLimited(format!(
                    "at most {} channels at once on one socket",
                    self.channels_max
                )));
            }
            let slot = link.subscription_slot().map_err(DomainError::RateLimited)?;
            let feed = domain.channel_feed(&self.viewer, &channel);
            let follower = follow::channel(feed, self.frames.clone());
            self.follows.start(follow, async move {
                // The user's budget is given back when the channel is no longer followed.
                let _slot = slot;
                follower.await
            });
        }
        self.frames
            .send(&Outgoing::Subscribed { channel: name }, None)
            .await;
        Ok(())
    }

    /// Renews the socket's credentials with `token` (the domain checks it names the same user),
    /// answering `auth_ok`; a refusal is an `error` frame and changes nothing.
    async fn authenticate(&mut self, token: &str, link: &mut Link) -> DomainResult<()> {
        let session = self
            .domain
            .authenticate(link.credentials(), token.trim())
            .await?;
        let expires_at = session.expires_at.timestamp();
        self.frames
            .send(&Outgoing::AuthOk { expires_at }, None)
            .await;
        Ok(())
    }

    /// Stops following a channel (its own channels included), answering `unsubscribed`.
    async fn unsubscribe(&mut self, name: &str) -> DomainResult<()> {
        let channel = Channel::parse(name)?;
        self.follows.stop(&Follow::Channel(channel.name())).await;
        self.frames
            .send(&Outgoing::Unsubscribed { channel: name }, None)
            .await;
        Ok(())
    }

    /// An arena chat socket is in room `general`.
    async fn enter_general(&mut self) {
        if self.purpose != Purpose::Chat {
            return;
        }
        if let Err(e) = self.join(GENERAL_ROOM, false).await {
            self.frames.error(e.code(), &e.to_string()).await;
        }
    }

    async fn online_status(&self, user_ids: &[String]) -> DomainResult<()> {
        let presence = self.domain.presence_of(&self.viewer, user_ids).await?;
        let online: Vec<String> = presence
            .into_iter()
            .filter(|p| p.status != PresenceStatus::Offline)
            .map(|p| p.user.id.clone())
            .collect();
        self.frames
            .send(&Outgoing::OnlineUsers(&online), None)
            .await;
        Ok(())
    }
}
