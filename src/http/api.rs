//! `POST /api/publish`: a backend publishes a channel event without a GraphQL client. Same
//! rules as the `publish` mutation (one domain method behind both). Errors are
//! `{"error", "code"}` with the code's status (`super::error`); a body over
//! `TIDINGS_MAX_BODY_BYTES` is `413` in the same shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::{body_too_large, ApiError, BodyShape};
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
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            crate::metrics::graphql_refused("body");
            return body_too_large(state.config.max_body_bytes, BodyShape::Rest);
        }
        Err(rejection) => {
            return ApiError(DomainError::bad_input(format!(
                "body must be JSON {{\"channel\", \"type\", \"data\"}}: {}",
                rejection.body_text()
            )))
            .into_response()
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
        Err(e) => ApiError(e).into_response(),
    }
}
