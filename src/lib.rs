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

use axum::Router;
use tokio::net::{TcpListener, TcpSocket};

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::domain::{Domain, Rules};
use crate::http::AppState;
use crate::hub::Hub;
use tokio_util::sync::CancellationToken;

/// Pending connections the kernel queues before `accept`: the default of 128 overflows under
/// connect storms, and each overflow costs a client a one-second SYN retry.
const LISTEN_BACKLOG: u32 = 4096;

/// The assembled server: its router and the state behind it.
pub struct App {
    pub state: AppState,
}

impl App {
    /// Connects the database (running migrations), loads the token keys and builds the schema.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = db::connect(&config.database_url).await.map_err(|e| {
            anyhow::anyhow!("cannot open database {}: {e}", redact(&config.database_url))
        })?;
        let tokens = TokenKeys::load(&config, Some(&db)).await?;
        if config.redis_url.is_some() {
            tracing::warn!("TIDINGS_REDIS_URL is set, but this build keeps events in-process");
        }
        let rules = Rules {
            points_per_message: config.points_per_message,
            token_ttl: config.token_ttl,
            presence_grace: config.presence_grace,
            typing_timeout: config.typing_timeout,
            leaderboard_interval: config.leaderboard_interval,
        };
        let shutdown = CancellationToken::new();
        metrics::install(&shutdown);
        let hub = Hub::new(config.broadcast_capacity);
        let domain = Domain::start(db, tokens, rules, hub, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
        let schema = graphql::build_schema(Some(domain.clone()), config.introspection);
        Ok(Self {
            state: AppState {
                schema,
                domain,
                config: Arc::new(config),
                shutdown,
                connections: Arc::new(http::ws::Connections::default()),
            },
        })
    }

    pub fn router(&self) -> Router {
        http::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then finishes in-flight requests.
    /// Serves on `listener` until `shutdown` completes: then stops accepting, closes every
    /// WebSocket with 1001, finishes in-flight requests and announces this instance's users
    /// offline.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = self.router();
        let token = self.state.shutdown.clone();
        let signal = async move {
            shutdown.await;
            token.cancel();
        };
        axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await?;
        self.state.connections.wait_closed().await;
        self.state.domain.presence.drain().await;
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
