//! Tidings: a realtime API server. Chat rooms, typing, presence, notifications, a leaderboard
//! and app events, over GraphQL (HTTP and WebSocket subscriptions).
//!
//! The crate's layers, from the edge in:
//! - `http`: the router, the GraphQL endpoint, the legacy `/ws` protocol, health, metrics;
//!   holds no rules.
//! - `graphql`: the schema; resolvers call the domain.
//! - `hub`: the events, and the topics they travel on to subscribers.
//! - `domain`: every rule (rights, validation), writing to the database.
//! - `db`: sea-orm entities and the connection (SQLite by default, PostgreSQL by URL).
//! - `auth`: JWT, passwords, the `Viewer`.
//! - `config`: every setting.
//! - `metrics`: every metric's name, and the recorder `GET /metrics` renders.
//!
//! `App::build` assembles the whole server from a `Config`; the binary and the tests both use
//! it.

pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod graphql;
pub mod http;
pub mod hub;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpSocket};

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::domain::limits::RateLimits;
use crate::domain::presence::SharedCounts;
use crate::domain::{Domain, Rules};
use crate::http::AppState;
use crate::hub::redis::RedisBridge;
use crate::hub::Hub;
use tokio_util::sync::CancellationToken;

/// Pending connections the kernel queues before `accept`: the default of 128 overflows under
/// connect storms, and each overflow costs a client a one-second SYN retry.
const LISTEN_BACKLOG: u32 = 4096;
/// The longest shutdown waits for this instance's offline announcements and the removal of
/// its presence counts from Redis (counts left behind expire with `TIDINGS_PRESENCE_TTL`).
const PRESENCE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The assembled server: its router and the state behind it.
pub struct App {
    pub state: AppState,
    bridge_shutdown: CancellationToken,
}

impl App {
    /// Connects the database (running migrations), loads the token keys and builds the schema.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Settings that contradict each other stop the start before anything is opened.
        let redis = config.redis().map_err(|e| anyhow::anyhow!(e))?;
        let db = db::connect(&config.database_url).await.map_err(|e| {
            anyhow::anyhow!("cannot open database {}: {e}", redact(&config.database_url))
        })?;
        let tokens = TokenKeys::load(&config, Some(&db)).await?;
        let rules = Rules {
            points_per_message: config.points_per_message,
            token_ttl: config.token_ttl,
            presence_grace: config.presence_grace,
            typing_timeout: config.typing_timeout,
            leaderboard_interval: config.leaderboard_interval,
            max_event_bytes: config.max_frame_bytes,
            max_rooms_per_user: config.max_rooms_per_user,
            max_connections_per_user: (config.rate_limits != "off")
                .then_some(config.max_connections_per_user),
        };
        let shutdown = CancellationToken::new();
        // The bridge outlives the sockets at shutdown, so the last offline announcements still
        // reach the other instances.
        let bridge_shutdown = CancellationToken::new();
        // Before anything records a metric, or its early counts are lost.
        metrics::install(&shutdown);
        crate::metrics::set_redis_up(false);
        let capacity = hub::Capacity {
            ephemeral: config.broadcast_capacity,
            stored: config.stored_broadcast_capacity,
        };
        let (hub, bridge) = match &redis {
            None => (Hub::new(capacity), None),
            Some(target) => {
                let (hub, outbound) = Hub::bridged(capacity);
                let instance = instance_id();
                let bridge = RedisBridge::start(
                    target,
                    instance,
                    hub.clone(),
                    outbound,
                    bridge_shutdown.clone(),
                )?;
                (hub, Some(bridge))
            }
        };
        let shared_presence = bridge.as_ref().map(|b| SharedCounts {
            connection: b.connection(),
            instance: b.instance().to_owned(),
            ttl: config.presence_ttl,
        });
        let rates = config
            .rates()
            .map_err(|e| anyhow::anyhow!("invalid rate limit: {e}"))?;
        let limits = RateLimits::start(
            rates,
            bridge.as_ref().map(|b| b.connection()),
            shutdown.clone(),
        );
        let domain = Domain::start(
            db,
            tokens,
            rules,
            hub,
            shared_presence,
            limits,
            shutdown.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
        let schema = graphql::build_schema(Some(domain.clone()), config.introspection);
        let connections = Arc::new(http::ws::Connections::default());
        http::follow_orders(&domain, connections.clone(), shutdown.clone());
        let state = AppState {
            schema,
            domain,
            config: Arc::new(config),
            shutdown,
            connections,
            cohorts: Arc::default(),
            streams: Arc::default(),
            bridge,
        };
        http::report_every_second(&state, state.shutdown.clone());
        Ok(Self {
            state,
            bridge_shutdown,
        })
    }

    pub fn router(&self) -> Router {
        http::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes: then stops accepting, closes every
    /// WebSocket with 1001, finishes in-flight requests and announces this instance's users
    /// offline.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let writers = http::takeover::Writers::new(self.state.config.slow_consumer_timeout);
        let router = self.router().layer(axum::middleware::from_fn_with_state(
            writers.clone(),
            http::takeover::take_streams,
        ));
        let token = self.state.shutdown.clone();
        let signal = async move {
            shutdown.await;
            token.cancel();
        };
        // With each connection's peer address: the client's address budgets need it.
        // With each connection's peer address (the client's address budgets need it), and the
        // handle that lets an HTTP stream take its socket from hyper.
        let service = router.into_make_service_with_connect_info::<http::takeover::Peer>();
        let listener = http::takeover::Listener::new(listener, self.state.config.http_idle_timeout);
        axum::serve(listener, service)
            .with_graceful_shutdown(signal)
            .await?;
        self.state.connections.wait_closed().await;
        writers.wait().await;
        // The announcements read the database and Redis: a slow one must not hold up the exit.
        if tokio::time::timeout(PRESENCE_DRAIN_TIMEOUT, self.state.domain.drain_presence())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown: presence announcements unfinished after {PRESENCE_DRAIN_TIMEOUT:?}; exiting anyway"
            );
        }
        self.bridge_shutdown.cancel();
        if let Some(bridge) = &self.state.bridge {
            bridge.flushed().await;
        }
        Ok(())
    }
}

/// Binds a listening socket with a deep accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A random id for this process, distinguishing it from the other instances on one Redis.
fn instance_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
