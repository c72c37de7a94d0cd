//! The legacy JSON WebSocket protocol (LEGACY_WS.md): `/ws` and `/api/v1/ws`, `/ws/auth` (the
//! `conversations` dialect) and the `arena` dialect's endpoints under `/api/ws/`.
//!
//! A thin translation: each client frame becomes one call of the same domain service GraphQL
//! calls, a domain error becomes an `error` frame with the same `code`, and what the socket is
//! told comes from the same domain feeds and hub topics as GraphQL subscriptions
//! (`legacy::follow`). A connection is, as for GraphQL, a reader (this task) and a writer task
//! joined by a bounded queue (`socket.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use super::legacy::follow::{self, Follow, Follows, MemberRooms};
use super::legacy::inbound::{self, Command, Inbound, Undecodable};
use super::legacy::{Dialect, DialectChoice, Frames, Outgoing, Purpose, GENERAL_ROOM};
use super::socket::{self, End, SocketWriter, UserWatch};
use super::AppState;
use crate::auth::{bearer, Viewer};
use crate::db::user;
use crate::domain::channels::Channel;
use crate::domain::presence::{PresenceGuard, PresenceStatus};
use crate::domain::typing::ConnectionId;
use crate::domain::users::ViewerError;
use crate::domain::{require_user, DomainError, DomainResult};
use crate::hub::Topic;
use crate::metrics::Transport;

/// How many entries the arena leaderboard stream sends.
const LEADERBOARD_TOP: i32 = 10;

pub fn router() -> Router<AppState> {
    // `/ws/auth` is the conversations endpoint; every other `/ws/NAME` a channel socket.
    Router::new()
        .route("/ws", get(general))
        .route("/api/v1/ws", get(general))
        .route("/ws/auth", get(conversations))
        .route("/ws/{name}", get(channel_socket))
        .route("/api/ws/leaderboard", get(arena_leaderboard))
        .route(
            "/api/ws/notifications/{user_id}",
            get(|s, p, h, q, ws| arena_user(Purpose::Notifications, s, p, h, q, ws)),
        )
        .route(
            "/api/ws/presence/{user_id}",
            get(|s, p, h, q, ws| arena_user(Purpose::Presence, s, p, h, q, ws)),
        )
        .route(
            "/api/ws/{user_id}",
            get(|s, p, h, q, ws| arena_user(Purpose::Chat, s, p, h, q, ws)),
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

type Params = Query<HashMap<String, String>>;
type Upgrade = Result<WebSocketUpgrade, WebSocketUpgradeRejection>;

async fn general(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
    ws: Upgrade,
) -> Response {
    let entry = Entry {
        purpose: Purpose::Chat,
        dialect: None,
        path_user: None,
        channel: None,
    };
    upgrade(state, headers, params, ws, entry)
}

/// `/ws/NAME`: the general protocol, following `public:NAME` from the start, as per-feature
/// endpoints like `/ws/game` do.
async fn channel_socket(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Params,
    ws: Upgrade,
) -> Response {
    let channel = match Channel::parse(&format!("public:{name}")) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let entry = Entry {
        purpose: Purpose::Chat,
        dialect: None,
        path_user: None,
        channel: Some(channel),
    };
    upgrade(state, headers, params, ws, entry)
}

async fn conversations(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
    ws: Upgrade,
) -> Response {
    let entry = Entry {
        purpose: Purpose::Chat,
        dialect: Some(Dialect::Conversations),
        path_user: None,
        channel: None,
    };
    upgrade(state, headers, params, ws, entry)
}

fn arena(purpose: Purpose, path_user: Option<String>) -> Entry {
    Entry {
        purpose,
        dialect: Some(Dialect::Arena),
        path_user,
        channel: None,
    }
}

/// `/api/ws/{user_id}`, `/api/ws/notifications/{user_id}`, `/api/ws/presence/{user_id}`: the
/// arena dialect's per-user streams, which differ only in what they follow.
async fn arena_user(
    purpose: Purpose,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    params: Params,
    ws: Upgrade,
) -> Response {
    upgrade(state, headers, params, ws, arena(purpose, Some(user_id)))
}

async fn arena_leaderboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
    ws: Upgrade,
) -> Response {
    upgrade(
        state,
        headers,
        params,
        ws,
        arena(Purpose::Leaderboard, None),
    )
}

fn upgrade(
    state: AppState,
    headers: HeaderMap,
    Query(params): Params,
    ws: Upgrade,
    entry: Entry,
) -> Response {
    let Ok(ws) = ws else {
        return (
            StatusCode::BAD_REQUEST,
            "open a WebSocket here (the legacy JSON protocol), e.g. ws://HOST/ws?token=JWT",
        )
            .into_response();
    };
    // Browsers cannot set headers on a WebSocket: `?token=` stands in for Authorization.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned)
        .or_else(|| params.get("token").cloned())
        .filter(|t| !t.trim().is_empty());
    let dialect = params.get("dialect").cloned();
    let max = state.config.max_frame_bytes;
    socket::sized(ws, max).on_upgrade(move |ws| run(ws, state, entry, token, dialect))
}

async fn run(
    ws: WebSocket,
    state: AppState,
    entry: Entry,
    token: Option<String>,
    dialect: Option<String>,
) {
    let ticket = state.connections.open(Transport::LegacyWs);
    let (writer, outbox, stream) = SocketWriter::start(
        ws,
        state.config.ws_queue,
        state.config.slow_consumer_timeout,
        Transport::LegacyWs,
    );
    let end = match LegacySocket::open(&state, &entry, token, dialect, outbox, ticket.id).await {
        Ok(mut socket) => {
            let end = socket.read_loop(stream).await;
            // Stops what it follows and counts it out of presence, before the close.
            drop(socket);
            end
        }
        Err(end) => end,
    };
    if let End::Close(code, reason) | End::CloseNow(code, reason) = &end {
        tracing::debug!(
            connection = ticket.id,
            code,
            reason,
            "closing legacy WebSocket"
        );
    }
    writer.finish(end).await;
    state.domain.typing.connection_closed(ticket.id);
    drop(ticket);
}

fn authentication_failed() -> End {
    End::Close(4001, "Authentication failed".into())
}

fn internal_error() -> End {
    End::Close(1011, "Internal error".into())
}

/// Who the socket is for (and the user as stored, when signed in): a token is required except
/// on the leaderboard stream, and an arena path's user id must be the token's.
async fn authenticate(
    state: &AppState,
    token: Option<String>,
    entry: &Entry,
) -> Result<(Viewer, Option<user::Model>), End> {
    let (viewer, user) = match token {
        None if entry.purpose == Purpose::Leaderboard || entry.channel.is_some() => {
            (Viewer::Anonymous, None)
        }
        None => return Err(authentication_failed()),
        Some(token) => match state.domain.sign_in(&token).await {
            Ok(signed_in) => (signed_in.viewer, Some(signed_in.user)),
            Err(ViewerError::Domain(e @ DomainError::Internal(_))) => {
                tracing::warn!(error = %e, "legacy /ws: could not sign in a token");
                return Err(internal_error());
            }
            Err(e) => {
                tracing::debug!(error = %e, "legacy /ws: token refused");
                return Err(authentication_failed());
            }
        },
    };
    if let Some(path_user) = &entry.path_user {
        if viewer.user().map(|u| u.id.as_str()) != Some(path_user.as_str()) {
            return Err(authentication_failed());
        }
    }
    Ok((viewer, user))
}

/// One legacy connection's state, owned by its reader.
struct LegacySocket {
    state: AppState,
    id: ConnectionId,
    viewer: Viewer,
    purpose: Purpose,
    dialect: Arc<DialectChoice>,
    frames: Frames,
    /// Dropped before `_presence`: nothing follows for a socket no longer counted.
    follows: Follows,
    member_rooms: MemberRooms,
    _presence: Option<PresenceGuard>,
    /// Cancelled when an admin disconnects the user.
    watch: Option<UserWatch>,
}

impl LegacySocket {
    /// Signs the socket in, counts it for presence, starts what its path follows and sends its
    /// welcome. `Err` closes it at once.
    async fn open(
        state: &AppState,
        entry: &Entry,
        token: Option<String>,
        dialect: Option<String>,
        outbox: socket::Outbox,
        id: ConnectionId,
    ) -> Result<Self, End> {
        let (viewer, user) = authenticate(state, token, entry).await?;
        let presence = match &user {
            Some(user) => match state.domain.open_connection(user).await {
                Ok(guard) => Some(guard),
                Err(DomainError::TooManyConnections) => {
                    return Err(End::Close(1008, "too many connections".into()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence: could not count a connection");
                    return Err(internal_error());
                }
            },
            None => None,
        };
        let named = dialect.as_deref().map(|d| (d, Dialect::named(d)));
        let chosen = named.and_then(|(_, d)| d).or(entry.dialect);
        let dialect = Arc::new(DialectChoice::new(chosen));
        let frames = Frames::new(outbox, dialect.clone(), entry.purpose);
        let path_channel = entry.channel.clone();
        let mut socket = Self {
            state: state.clone(),
            id,
            viewer,
            purpose: entry.purpose,
            dialect,
            frames,
            follows: Follows::default(),
            member_rooms: MemberRooms::default(),
            _presence: presence,
            watch: None,
        };
        if let Some(user) = socket.viewer.user() {
            socket.watch = Some(
                state
                    .connections
                    .watch_user(&user.id, id, socket.frames.outbox()),
            );
        }
        if let Err(e) = socket.start(path_channel).await {
            tracing::warn!(error = %e, "legacy /ws: could not start a socket's feeds");
            return Err(internal_error());
        }
        if let Some((name, None)) = named {
            let message = format!("unknown dialect {name:?}: rooms, conversations or arena");
            socket.frames.error("BAD_USER_INPUT", &message).await;
        }
        Ok(socket)
    }

    /// Follows what the socket's purpose says. Every feed is subscribed before the welcome
    /// goes out, so a client that has the welcome misses nothing after it; the welcome is
    /// queued before any follower runs, so it is the first frame.
    async fn start(&mut self, path_channel: Option<Channel>) -> DomainResult<()> {
        let domain = self.state.domain.clone();
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
                        domain.notification_feed(&self.viewer).await?,
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
                let welcome = Outgoing::Welcome {
                    user: self.viewer.user(),
                    online_count: domain.presence.online().len(),
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
                    let frames = self.frames.clone();
                    self.follows.start(
                        Follow::Notifications,
                        follow::notifications(notifications, frames),
                    );
                }
            }
            Purpose::Notifications => {
                let feed = domain.notification_feed(&self.viewer).await?;
                let frames = self.frames.clone();
                self.follows
                    .start(Follow::Notifications, follow::notifications(feed, frames));
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

    /// The presence follower, subscribed (not yet running).
    async fn presence_follower(
        &self,
    ) -> DomainResult<impl std::future::Future<Output = ()> + Send + 'static> {
        let me = require_user(&self.viewer)?.clone();
        let domain = &self.state.domain;
        let live = domain.hub.subscribe(Topic::Presence);
        self.member_rooms
            .replace(&domain.rooms_of_member(&me.id).await?);
        Ok(follow::presence(
            live,
            me,
            self.member_rooms.clone(),
            self.frames.clone(),
        ))
    }

    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> End {
        let config = self.state.config.clone();
        let mut last_heard = Instant::now();
        let mut deadlines = socket::Deadlines {
            ping: Instant::now() + config.ws_ping_interval,
            init: None,
            expires: socket::token_expiry(Some(&self.viewer)),
        };
        let timer = tokio::time::sleep_until(deadlines.next());
        tokio::pin!(timer);
        let shutdown = self.state.shutdown.clone();
        let outbox = self.frames.outbox().clone();
        loop {
            tokio::select! {
                frame = stream.next() => {
                    last_heard = Instant::now();
                    let end = match frame {
                        None => Some(End::Gone),
                        // Boxed: the handlers' database calls make large futures, which would
                        // otherwise stay part of every idle connection's read loop.
                        Some(Ok(Message::Text(text))) => Box::pin(self.on_text(text.as_str())).await,
                        Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                            Ok(text) => Box::pin(self.on_text(text)).await,
                            Err(_) => Some(invalid_json()),
                        },
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                        Some(Ok(Message::Close(_))) => Some(End::Gone),
                        Some(Err(e)) => Some(socket::read_error(e)),
                    };
                    if let Some(end) = end {
                        return end;
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if deadlines.expires.is_some_and(|at| at <= now) {
                        return End::Close(4001, "token expired".into());
                    }
                    if deadlines.ping <= now {
                        deadlines.ping = now + config.ws_ping_interval;
                        if last_heard.elapsed() > config.ws_idle_timeout {
                            return End::Close(1001, "ping timeout".into());
                        }
                        // A WebSocket ping: browsers answer it without any code of the client's.
                        outbox.offer(Message::Ping(Default::default()));
                    }
                }
                _ = shutdown.cancelled() => {
                    return End::Close(1001, "server shutting down".into());
                }
                attention = outbox.attention() => return attention.end(4001),
            }
            deadlines.arm(timer.as_mut());
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<End> {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return Some(invalid_json());
        };
        match inbound::decode(&frame) {
            Ok(inbound) => self.on_frame(inbound).await,
            Err(Undecodable(why)) => {
                self.frames.error("BAD_USER_INPUT", &why).await;
            }
        }
        None
    }

    async fn on_frame(&mut self, Inbound { command, chooses }: Inbound) {
        // A socket whose URL chose no dialect takes the one its first room frame speaks.
        if let Some(dialect) = chooses {
            if self.dialect.choose(dialect) && dialect == Dialect::Arena {
                self.enter_general().await;
            }
        }
        let domain = self.state.domain.clone();
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
            Command::Subscribe { channel } => self.subscribe(&channel).await,
            Command::Unsubscribe { channel } => self.unsubscribe(&channel).await,
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
    ) -> DomainResult<Option<impl std::future::Future<Output = ()> + Send + 'static>> {
        let domain = self.state.domain.clone();
        let joined = domain.join_room(&self.viewer, room).await?;
        self.member_rooms.add(room);
        if self.follows.is_active(&Follow::Room(room.to_owned())) {
            return Ok(None);
        }
        // Read from just before the announcement, so this socket gets it too.
        let after = joined
            .announcement
            .map(|a| (a.message.id - 1).max(0).to_string());
        let messages = domain
            .message_feed(&self.viewer, room, after.as_deref())
            .await?;
        let typing = domain.typing_feed(&self.viewer, room).await?;
        let frames = self.frames.clone();
        Ok(Some(follow::room(domain, messages, typing, frames)))
    }

    /// Leaves a room. The socket stops following it first, then gets the "left" announcement
    /// once, from here.
    async fn leave(&mut self, room: &str) -> DomainResult<()> {
        self.follows.stop(&Follow::Room(room.to_owned())).await;
        let domain = self.state.domain.clone();
        let left = domain.leave_room(&self.viewer, room).await?;
        self.member_rooms.remove(room);
        if let Some(announcement) = left {
            follow::send_message(&domain, &announcement, &self.frames).await;
        }
        Ok(())
    }

    /// Follows a channel the viewer may read (the domain decides), answering `subscribed`.
    async fn subscribe(&mut self, name: &str) -> DomainResult<()> {
        let domain = self.state.domain.clone();
        let names = [name.to_owned()];
        for channel in domain.resolve_channels(&self.viewer, Some(&names)).await? {
            let feed = domain.channel_feed(&self.viewer, &channel);
            let frames = self.frames.clone();
            self.follows.start(
                Follow::Channel(channel.name()),
                follow::channel(feed, frames),
            );
        }
        self.frames
            .send(&Outgoing::Subscribed { channel: name }, None)
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
        let presence = self
            .state
            .domain
            .presence_of(&self.viewer, user_ids)
            .await?;
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

fn invalid_json() -> End {
    End::Close(4002, "Invalid JSON".into())
}
