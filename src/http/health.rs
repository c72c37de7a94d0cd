//! `GET /health`: whether this instance can serve, for load balancers and orchestrators.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database_ok = state.domain.database_ok().await;
    let redis = match &state.bridge {
        None => "disabled",
        Some(b) if b.is_up() => "ok",
        Some(_) => "down",
    };
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if database_ok { "ok" } else { "error" },
            "database": if database_ok { "ok" } else { "down" },
            "redis": redis,
            "version": env!("CARGO_PKG_VERSION"),
        })),
    )
}
