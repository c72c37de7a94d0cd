//! The HTTP side: the shared state every handler gets, and one router per resource merged into
//! the app.

mod api;
mod graphql;
mod health;
mod playground;
pub mod ws;

use std::sync::Arc;

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
    /// The Redis bridge, when several instances share one Redis.
    pub bridge: Option<Arc<crate::hub::redis::RedisBridge>>,
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .merge(graphql::router())
        .merge(api::router())
        .merge(health::router())
        .merge(playground::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
