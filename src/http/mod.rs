//! The HTTP side: the shared state every handler gets, and one router per resource merged into
//! the app.

mod api;
pub mod client;
pub(crate) mod cohort;
mod error;
mod frames;
mod graphql;
mod health;
mod legacy;
mod metrics;
mod playground;
mod presence;
mod renewal;
pub(crate) mod socket;
mod stats;
pub(crate) mod stream;
pub mod takeover;
pub(crate) mod websocket;
pub mod ws;

#[cfg(test)]
mod fuzz;

use std::sync::Arc;

use futures_util::StreamExt;

use axum::extract::DefaultBodyLimit;
use axum::Router;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::Domain;
use crate::graphql::TidingsSchema;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub schema: TidingsSchema,
    pub domain: Arc<Domain>,
    pub config: Arc<Config>,
    /// Cancelled when the server shuts down: open sockets close with 1001.
    pub shutdown: CancellationToken,
    pub connections: Arc<ws::Connections>,
    /// Subscriptions that share one execution (see `cohort`).
    pub cohorts: Arc<cohort::Cohorts>,
    /// graphql-sse streams reserved in the single connection mode, by token.
    pub streams: Arc<stream::Streams>,
    /// The Redis bridge, when several instances share one Redis.
    pub bridge: Option<Arc<crate::hub::redis::RedisBridge>>,
}

pub use stats::report_every_second;

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .merge(graphql::router())
        .merge(api::router())
        .merge(legacy::router())
        .merge(health::router())
        .merge(presence::router())
        .merge(metrics::router())
        .merge(playground::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(client::remember_peer))
        .with_state(state)
}

/// Carries out orders sent to every instance (an admin disconnecting a user) on this one's
/// connections, until `shutdown`.
pub fn follow_orders(
    domain: &Arc<Domain>,
    connections: Arc<ws::Connections>,
    shutdown: CancellationToken,
) {
    let mut orders = domain.disconnect_orders();
    tokio::spawn(async move {
        loop {
            let user_id = tokio::select! {
                o = orders.next() => o,
                _ = shutdown.cancelled() => break,
            };
            let Some(user_id) = user_id else { break };
            let n = connections.disconnect_user(&user_id);
            tracing::info!(user_id = %user_id, connections = n, "disconnected by an admin");
        }
    });
}
