//! `GET /api/presence/online`: who is online, for dashboards and older clients that poll.
//! Everyone's presence, so a signed-in viewer only (the rule of `onlineUsers`). Statuses are in
//! lower case, as in the legacy protocol's frames, which the same clients read.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use super::graphql::viewer_from_headers;
use super::legacy::status_name;
use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/presence/online", get(online))
}

async fn online(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let viewer = match viewer_from_headers(&state, &headers).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    let online = match state.domain.online_users(&viewer, None).await {
        Ok(online) => online,
        Err(e) => return ApiError(e).graphql_shaped(),
    };
    let users: Vec<_> = online
        .iter()
        .map(|p| {
            json!({
                "id": p.user.id,
                "username": p.user.username,
                "status": status_name(p.status),
                "connections": p.connections,
            })
        })
        .collect();
    Json(json!({ "online_count": users.len(), "users": users })).into_response()
}
