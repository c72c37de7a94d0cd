//! `POST /api/publish`: a backend publishes a channel event without a GraphQL client. Same
//! rules as the `publish` mutation (one domain method behind both).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::graphql::viewer_from_headers;
use super::AppState;
use crate::domain::DomainError;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/publish", post(publish))
}

#[derive(Deserialize)]
struct Publish {
    channel: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// A REST error: the HTTP status that fits the code, and `{"error", "code"}`.
fn error(e: &DomainError) -> Response {
    let status = match e {
        DomainError::Unauthenticated | DomainError::BadCredentials => StatusCode::UNAUTHORIZED,
        DomainError::Forbidden(_) => StatusCode::FORBIDDEN,
        DomainError::NotFound(_) => StatusCode::NOT_FOUND,
        DomainError::BadInput(_) => StatusCode::BAD_REQUEST,
        DomainError::RateLimited(_) | DomainError::TooManyConnections => {
            StatusCode::TOO_MANY_REQUESTS
        }
        DomainError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        Json(json!({ "error": e.to_string(), "code": e.code() })),
    )
        .into_response()
}

async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Publish>, JsonRejection>,
) -> Response {
    let viewer = match viewer_from_headers(&state, &headers).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(rejection) => {
            return error(&DomainError::bad_input(format!(
                "body must be JSON {{\"channel\", \"type\", \"data\"}}: {}",
                rejection.body_text()
            )))
        }
    };
    match state
        .domain
        .publish_event(&viewer, &body.channel, &body.kind, body.data)
    {
        Ok(event) => Json(json!({
            "id": event.id,
            "channel": event.channel,
            "type": event.kind,
            "data": event.data,
            "at": event.at,
        }))
        .into_response(),
        Err(e) => error(&e),
    }
}
