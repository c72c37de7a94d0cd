//! `POST /graphql` and `GET /graphql?query=…`: queries and mutations (over `GET`, queries
//! only: a mutation gets 405) answered as `application/json` or
//! `application/graphql-response+json` (GraphQL over HTTP), whichever the client accepts; a
//! request error under the latter is 400 and has no `data` entry. The same requests with
//! `Accept: text/event-stream` or Apollo's multipart `Accept` stream instead (`stream.rs`), as
//! does `/graphql/stream`.
//!
//! Every request has budgets, so no client can make the server hold or do more than a bounded
//! amount of work for it: a batch holds at most `TIDINGS_MAX_BATCH` operations, run one after
//! another; each operation's cost is bounded by the schema's limits (`crate::graphql`); and the
//! whole request has `TIDINGS_GRAPHQL_TIMEOUT` to finish.

use std::collections::HashMap;

use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, BatchResponse, ServerError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Query;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tokio::time::Instant;

use super::error::{body_too_large, coded_error, request_error, ApiError, BodyShape};
use super::stream::{self, Wants};
use super::websocket::{NotAnUpgrade, Upgrade};
use super::AppState;
use crate::auth::{bearer, ClientAddress, TokenError, Viewer};
use crate::domain::users::ViewerError;
use crate::graphql::errors::{is_request_error, stamp_codes};
use crate::graphql::limits::{OverGet, MUTATION_OVER_GET};

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";
/// The message of an operation stopped by the time budget.
const TOOK_TOO_LONG: &str = "request took too long";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/stream", any(graphql_stream))
}

/// `GET /graphql`: a WebSocket upgrade for subscriptions, an event stream (graphql-sse), a
/// query in the URL, or GraphiQL for a browser that asks for a page.
async fn graphql_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Query<HashMap<String, String>>,
    client: Option<ClientAddress>,
    ws: Result<Upgrade, NotAnUpgrade>,
) -> Response {
    if let Ok(ws) = ws {
        return super::ws::upgrade(state, headers, query, client, ws).await;
    }
    if super::playground::wants_page(&headers) {
        return super::playground::graphiql(headers).await;
    }
    let has_request = query.contains_key("query") || query.contains_key("extensions");
    let wants = stream::wants(&headers);
    if !has_request {
        // An event stream asked for without a query has nothing to run, as a POST without one.
        if wants == Wants::EventStream {
            return request_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the request has no query",
            );
        }
        return super::ws::not_an_upgrade();
    }
    let request = match stream::request_from_params(&query) {
        Ok(request) => request,
        Err(message) => return request_error(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &message),
    };
    if stream::is_mutation(&request) {
        return stream::mutation_over_get();
    }
    match wants {
        Wants::EventStream => stream::distinct(state, headers, client, request, wants).await,
        _ => {
            let deadline = Instant::now() + state.config.graphql_timeout;
            answer(
                &state,
                &headers,
                client,
                BatchRequest::Single(request.data(OverGet)),
                deadline,
            )
            .await
        }
    }
}

/// `/graphql/stream`: graphql-sse in both of its modes (`stream.rs`).
async fn graphql_stream(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    client: Option<ClientAddress>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = if method == Method::POST {
        match read_request(&state, &headers, body) {
            Ok(BatchRequest::Single(request)) => Some(request),
            Ok(BatchRequest::Batch(_)) => {
                return request_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_USER_INPUT",
                    "a stream carries one operation, not a batch",
                )
            }
            Err(response) => return response,
        }
    } else {
        None
    };
    stream::stream_endpoint(state, method, headers, query, client, request).await
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let deadline = Instant::now() + state.config.graphql_timeout;
    let request = match read_request(&state, &headers, body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    match (stream::wants(&headers), request) {
        (Wants::EventStream, BatchRequest::Single(request)) => {
            stream::distinct(state, headers, client, request, Wants::EventStream).await
        }
        (Wants::EventStream, BatchRequest::Batch(_)) => request_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "a stream carries one operation, not a batch",
        ),
        // Apollo asks for multipart with every operation; only a subscription streams.
        (Wants::Multipart, BatchRequest::Single(request))
            if stream::operation_kind(&request) == Some(OperationType::Subscription) =>
        {
            stream::distinct(state, headers, client, request, Wants::Multipart).await
        }
        (_, request) => answer(&state, &headers, client, request, deadline).await,
    }
}

/// A POST's body as a GraphQL request (or batch), or the answer refusing it.
#[allow(clippy::result_large_err)]
fn read_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<BatchRequest, Response> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            crate::metrics::graphql_refused("body");
            return Err(body_too_large(
                state.config.max_body_bytes,
                BodyShape::Graphql,
            ));
        }
        Err(rejection) => {
            return Err(coded_error(
                "BAD_USER_INPUT",
                &format!("could not read the request body: {}", rejection.body_text()),
            ))
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Only JSON bodies: a form or text/plain POST is what a cross-site page can send without
    // a preflight, so refusing it closes that door (as Apollo's CSRF prevention does).
    if !content_type.starts_with("application/json")
        && !content_type.starts_with(GRAPHQL_RESPONSE_JSON)
    {
        return Err(request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            "Content-Type must be application/json",
        ));
    }
    let request: BatchRequest = serde_json::from_slice(&body).map_err(|e| {
        coded_error(
            "BAD_USER_INPUT",
            &format!("request body is not a GraphQL request: {e}"),
        )
    })?;
    // A request with neither a query nor a persisted query's hash has nothing to run: 400, as
    // GraphQL over HTTP lets a server answer invalid parameters.
    let missing = |r: &async_graphql::Request| {
        r.query.is_empty() && !r.extensions.contains_key("persistedQuery")
    };
    let any_missing = match &request {
        BatchRequest::Single(r) => missing(r),
        BatchRequest::Batch(rs) => rs.iter().any(missing),
    };
    if any_missing {
        return Err(request_error(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "the request has no query",
        ));
    }
    Ok(request)
}

/// Executes a request (or batch) within its budgets and answers it as JSON.
async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<ClientAddress>,
    request: BatchRequest,
    deadline: Instant,
) -> Response {
    let state = state.clone();
    let max_batch = state.config.max_batch;
    if let BatchRequest::Batch(items) = &request {
        if items.len() > max_batch {
            crate::metrics::graphql_refused("batch");
            return request_error(
                StatusCode::BAD_REQUEST,
                "TOO_COMPLEX",
                &format!(
                    "a batch may hold at most {max_batch} operations; this one has {}",
                    items.len()
                ),
            );
        }
    }
    let viewer = match tokio::time::timeout_at(deadline, viewer_from_headers(&state, headers)).await
    {
        Ok(Ok(v)) => v,
        Ok(Err(response)) => return response,
        Err(_) => {
            crate::metrics::graphql_refused("timeout");
            // The database did not answer who the token stands for in time.
            return request_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "TOO_COMPLEX",
                TOOK_TOO_LONG,
            );
        }
    };
    let (mut response, timed_out) = match request {
        BatchRequest::Single(request) => {
            let (response, timed_out) =
                run(&state, with_client(request.data(viewer), client), deadline).await;
            (BatchResponse::Single(response), timed_out)
        }
        // One after another: a batch costs the server what its operations cost in turn, not
        // all of them at once, and its mutations happen in the order the client wrote them.
        BatchRequest::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            let mut timed_out = false;
            for request in requests {
                let (response, late) = run(
                    &state,
                    with_client(request.data(viewer.clone()), client),
                    deadline,
                )
                .await;
                timed_out |= late;
                responses.push(response);
            }
            (BatchResponse::Batch(responses), timed_out)
        }
    };
    if timed_out {
        crate::metrics::graphql_refused("timeout");
    }
    let request_failed = match &mut response {
        BatchResponse::Single(r) => {
            stamp_codes(r);
            // An operation stopped by the time budget did start: not a request error.
            !timed_out && is_request_error(r)
        }
        BatchResponse::Batch(rs) => {
            rs.iter_mut().for_each(stamp_codes);
            false
        }
    };
    let accepts_graphql_json = stream::wants_graphql_response_json(headers);
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
    let encoded = match &response {
        BatchResponse::Single(r) if request_failed => {
            // A persisted query's hash that stands for a mutation, over GET.
            if r.errors.iter().any(|e| e.message == MUTATION_OVER_GET) {
                return stream::mutation_over_get();
            }
            if accepts_graphql_json {
                // GraphQL over HTTP: a request that never executed has no `data` entry.
                let mut body = serde_json::Map::new();
                body.insert("errors".into(), serde_json::json!(r.errors));
                if !r.extensions.is_empty() {
                    body.insert("extensions".into(), serde_json::json!(r.extensions));
                }
                serde_json::to_vec(&body)
            } else {
                serde_json::to_vec(&response)
            }
        }
        _ => serde_json::to_vec(&response),
    };
    match encoded {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            bytes,
        )
            .into_response(),
        Err(_) => coded_error("INTERNAL", "could not encode the response"),
    }
}

/// Runs one operation within the request's time budget. When the budget runs out the
/// operation is dropped at its next await (its database transaction, if any, rolls back) and
/// answered with a `TOO_COMPLEX` error; the flag says so.
async fn run(
    state: &AppState,
    request: async_graphql::Request,
    deadline: Instant,
) -> (async_graphql::Response, bool) {
    if Instant::now() < deadline {
        if let Ok(response) = tokio::time::timeout_at(deadline, state.schema.execute(request)).await
        {
            return (response, false);
        }
    }
    let mut error = ServerError::new(
        format!(
            "{TOOK_TOO_LONG}: over the budget of {}",
            humantime::format_duration(state.config.graphql_timeout)
        ),
        None,
    );
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", "TOO_COMPLEX");
    (async_graphql::Response::from_errors(vec![error]), true)
}

/// The request with the client's address, for the budgets counted per address.
fn with_client(
    request: async_graphql::Request,
    client: Option<ClientAddress>,
) -> async_graphql::Request {
    match client {
        Some(client) => request.data(client),
        None => request,
    }
}
