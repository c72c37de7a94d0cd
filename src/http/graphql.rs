//! `POST /graphql`: queries and mutations as JSON, answered as `application/json` or
//! `application/graphql-response+json` (GraphQL over HTTP), whichever the client accepts.

use async_graphql::BatchRequest;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::Query;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::{coded_error, request_error, ApiError};
use super::AppState;
use crate::auth::{bearer, ClientAddress, TokenError, Viewer};
use crate::domain::users::ViewerError;
use crate::graphql::errors::{is_request_error, stamp_codes};

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

pub fn router() -> Router<AppState> {
    Router::new().route("/graphql", get(graphql_get).post(graphql_post))
}

/// `GET /graphql`: a WebSocket upgrade for subscriptions, or GraphiQL for a browser that asks
/// for a page.
async fn graphql_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Query<std::collections::HashMap<String, String>>,
    client: Option<ClientAddress>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => super::ws::upgrade(state, headers, query, client, ws).await,
        Err(_) if super::playground::wants_page(&headers) => {
            super::playground::graphiql(headers).await
        }
        Err(_) => super::ws::not_an_upgrade(),
    }
}

/// The viewer an HTTP request's `Authorization: Bearer` header stands for.
pub async fn viewer_from_headers(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Viewer, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Viewer::Anonymous);
    };
    let token =
        value.to_str().ok().and_then(bearer).ok_or_else(|| {
            coded_error("UNAUTHENTICATED", "Authorization must be 'Bearer <token>'")
        })?;
    state
        .domain
        .viewer_from_token(token)
        .await
        .map_err(|e| match e {
            ViewerError::Token(TokenError::Expired) => {
                coded_error("UNAUTHENTICATED", "token expired")
            }
            ViewerError::Token(TokenError::Invalid) => {
                coded_error("UNAUTHENTICATED", "invalid token")
            }
            ViewerError::Domain(e) => ApiError(e).graphql_shaped(),
        })
}

async fn graphql_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Option<ClientAddress>,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Only JSON bodies: a form or text/plain POST is what a cross-site page can send without
    // a preflight, so refusing it closes that door (as Apollo's CSRF prevention does).
    if !content_type.starts_with("application/json")
        && !content_type.starts_with(GRAPHQL_RESPONSE_JSON)
    {
        return request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            "Content-Type must be application/json",
        );
    }
    let request: BatchRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return coded_error(
                "BAD_USER_INPUT",
                &format!("request body is not a GraphQL request: {e}"),
            )
        }
    };
    let viewer = match viewer_from_headers(&state, &headers).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    let mut request = request.data(viewer);
    if let Some(client) = client {
        request = request.data(client);
    }
    let mut response = state.schema.execute_batch(request).await;
    let request_failed = match &mut response {
        async_graphql::BatchResponse::Single(r) => {
            stamp_codes(r);
            is_request_error(r)
        }
        async_graphql::BatchResponse::Batch(rs) => {
            rs.iter_mut().for_each(stamp_codes);
            false
        }
    };
    let accepts_graphql_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(GRAPHQL_RESPONSE_JSON));
    let (content_type, status) = if accepts_graphql_json {
        // GraphQL over HTTP: a request that never executed (parse or validation error) is 400.
        let status = if request_failed {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        (GRAPHQL_RESPONSE_JSON, status)
    } else {
        ("application/json", StatusCode::OK)
    };
    match serde_json::to_vec(&response) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            bytes,
        )
            .into_response(),
        Err(_) => coded_error("INTERNAL", "could not encode the response"),
    }
}
