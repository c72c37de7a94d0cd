//! The one mapping from a domain error to HTTP: its status comes from its `extensions.code`
//! (`DomainError::code`, the code GraphQL errors carry too) through one table, so every
//! endpoint answers the same error with the same status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::domain::DomainError;

/// The HTTP status of each error code. A code missing here is answered 500.
const STATUSES: &[(&str, StatusCode)] = &[
    ("UNAUTHENTICATED", StatusCode::UNAUTHORIZED),
    ("FORBIDDEN", StatusCode::FORBIDDEN),
    ("NOT_FOUND", StatusCode::NOT_FOUND),
    ("BAD_USER_INPUT", StatusCode::BAD_REQUEST),
    ("RATE_LIMITED", StatusCode::TOO_MANY_REQUESTS),
    ("TOO_COMPLEX", StatusCode::BAD_REQUEST),
    ("INTERNAL", StatusCode::INTERNAL_SERVER_ERROR),
];

/// The HTTP status for an `extensions.code`.
fn status_of(code: &str) -> StatusCode {
    STATUSES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(StatusCode::INTERNAL_SERVER_ERROR, |(_, status)| *status)
}

/// A domain error answered over HTTP. As a response it is a REST error:
/// `{"error": message, "code": code}` with the code's status.
#[derive(Debug)]
pub(super) struct ApiError(pub DomainError);

impl ApiError {
    /// The same error with the code's status, in GraphQL's shape
    /// (`{"errors": [{"message", "extensions": {"code"}}]}`): for failures before a GraphQL
    /// request executes, and for endpoints that answer in that shape.
    pub(super) fn graphql_shaped(&self) -> Response {
        coded_error(self.0.code(), &self.0.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        (
            status_of(code),
            Json(json!({ "error": self.0.to_string(), "code": code })),
        )
            .into_response()
    }
}

/// An error in GraphQL's shape with its code's status.
pub(super) fn coded_error(code: &str, message: &str) -> Response {
    request_error(status_of(code), code, message)
}

/// An error response in GraphQL's shape, for failures before execution, with a status of its
/// own (such as 415 for a body that is not JSON).
pub(super) fn request_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

/// The shape an endpoint answers errors in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyShape {
    /// `{"errors": [{"message", "extensions": {"code"}}]}` (`/graphql`).
    Graphql,
    /// `{"error", "code"}` (the REST endpoints under `/api`).
    Rest,
}

/// `413 Payload Too Large` for a request body over `TIDINGS_MAX_BODY_BYTES`, in the endpoint's
/// error shape with the code `BAD_USER_INPUT`.
pub(super) fn body_too_large(limit: usize, shape: BodyShape) -> Response {
    let message = format!("request body is larger than {limit} bytes");
    match shape {
        BodyShape::Graphql => {
            request_error(StatusCode::PAYLOAD_TOO_LARGE, "BAD_USER_INPUT", &message)
        }
        BodyShape::Rest => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({ "error": message, "code": "BAD_USER_INPUT" })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_error_has_the_status_of_its_code() {
        let cases = [
            (DomainError::Unauthenticated, 401, "UNAUTHENTICATED"),
            (DomainError::BadCredentials, 401, "UNAUTHENTICATED"),
            (DomainError::Forbidden("no".into()), 403, "FORBIDDEN"),
            (DomainError::NotFound("no".into()), 404, "NOT_FOUND"),
            (DomainError::bad_input("no"), 400, "BAD_USER_INPUT"),
            (DomainError::RateLimited("slow".into()), 429, "RATE_LIMITED"),
            (DomainError::TooManyConnections, 429, "RATE_LIMITED"),
            (
                DomainError::Internal(anyhow::anyhow!("boom")),
                500,
                "INTERNAL",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.code(), code, "{error:?}");
            assert_eq!(
                ApiError(error).into_response().status().as_u16(),
                status,
                "{code}"
            );
        }
    }
}
