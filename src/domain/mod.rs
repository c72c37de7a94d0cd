//! The domain services: every rule about users, rooms and messages lives here, once, whichever
//! transport calls it. A service checks the viewer's rights and the input, writes to the
//! database, then publishes what happened.

pub mod admin_log;
pub mod changes;
pub mod channels;
pub mod contacts;
pub mod error;
pub mod feeds;
mod health;
pub mod leaderboard;
pub mod limits;
pub mod messages;
pub mod notifications;
pub mod presence;
mod receipts;
pub mod records;
pub mod rooms;
pub mod search;
mod sends;
pub mod sessions;
mod signins;
pub mod stats;
pub mod typing;
pub mod users;
pub(crate) mod wire;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

pub use error::{DomainError, DomainResult};

use crate::auth::{AuthUser, TokenKeys, Viewer};
use futures_util::stream::BoxStream;

use crate::hub::{Event, Hub, RecvError, Topic};
use leaderboard::Leaderboard;
use limits::RateLimits;
use presence::{PresenceTracker, SharedCounts};
use typing::TypingTracker;

/// Settings the domain rules read.
#[derive(Debug, Clone)]
pub struct Rules {
    pub points_per_message: i64,
    pub token_ttl: Duration,
    /// How long after a user's last connection closes they are announced offline.
    pub presence_grace: Duration,
    /// How long a typing indicator lasts without a refresh.
    pub typing_timeout: Duration,
    /// The shortest time between two leaderboard updates to one subscriber.
    pub leaderboard_interval: Duration,
    /// Largest channel event `data`, as JSON.
    pub max_event_bytes: usize,
    /// Rooms one user may belong to at once.
    pub max_rooms_per_user: u64,
    /// Connections one user may hold (`None`: no limit).
    pub max_connections_per_user: Option<u32>,
}

/// The services over one database and one hub; shared behind an `Arc`. Its parts are its own:
/// transports ask it, through the methods of this module and its children, and never reach
/// the database, the hub or a tracker themselves.
pub struct Domain {
    db: DatabaseConnection,
    tokens: TokenKeys,
    rules: Rules,
    hub: Arc<Hub>,
    presence: Arc<PresenceTracker>,
    typing: Arc<TypingTracker>,
    leaderboard: Arc<Leaderboard>,
    limits: Arc<RateLimits>,
    sends: sends::SendWriter,
    receipts: receipts::ReceiptWriter,
    signins: signins::SignInReader,
}

impl Domain {
    /// Starts the services and their background work, which ends with `shutdown`.
    pub async fn start(
        db: DatabaseConnection,
        tokens: TokenKeys,
        rules: Rules,
        hub: Arc<Hub>,
        shared_presence: Option<SharedCounts>,
        limits: Arc<RateLimits>,
        shutdown: CancellationToken,
    ) -> DomainResult<Arc<Self>> {
        let presence = PresenceTracker::start(
            db.clone(),
            hub.clone(),
            rules.presence_grace,
            shared_presence,
            shutdown.clone(),
        )
        .await;
        let typing = TypingTracker::start(hub.clone(), rules.typing_timeout, shutdown.clone());
        let receipts = receipts::ReceiptWriter::start(db.clone(), hub.clone(), shutdown.clone());
        let leaderboard = Leaderboard::start(db.clone(), hub.clone(), shutdown).await?;
        let sends = sends::SendWriter::start(db.clone(), hub.clone(), rules.points_per_message);
        let signins = signins::SignInReader::start(db.clone());
        Ok(Arc::new(Self {
            signins,
            sends,
            receipts,
            db,
            tokens,
            rules,
            hub,
            presence,
            typing,
            leaderboard,
            limits,
        }))
    }
}

impl Domain {
    /// The users an administrator disconnected, on any instance, as their orders arrive, until
    /// the hub closes: every instance closes those users' connections.
    pub fn disconnect_orders(&self) -> BoxStream<'static, String> {
        let mut orders = self.hub.subscribe(Topic::Control);
        Box::pin(async_stream::stream! {
            loop {
                match orders.recv().await {
                    Ok(event) => {
                        if let Event::Disconnect(d) = &*event {
                            yield d.user_id.clone();
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "disconnect orders lagged");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    /// A connection closed: typing it set stops at once.
    pub fn connection_closed(&self, connection: typing::ConnectionId) {
        self.typing.connection_closed(connection);
    }

    /// The status a user shows: their chosen one while online, else OFFLINE.
    pub fn status_of(&self, user_id: &str) -> presence::PresenceStatus {
        self.presence.status_of(user_id)
    }

    /// At shutdown: announces this instance's users offline everywhere.
    pub async fn drain_presence(&self) {
        self.presence.drain().await;
    }
}

/// The signed-in user, or `UNAUTHENTICATED`.
pub fn require_user(viewer: &Viewer) -> DomainResult<&AuthUser> {
    viewer.user().ok_or(DomainError::Unauthenticated)
}

/// The signed-in admin, or `UNAUTHENTICATED` / `FORBIDDEN`.
pub fn require_admin(viewer: &Viewer) -> DomainResult<&AuthUser> {
    let user = require_user(viewer)?;
    if user.is_admin() {
        Ok(user)
    } else {
        Err(DomainError::Forbidden("admin role required".into()))
    }
}
