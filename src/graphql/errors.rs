//! Turning failures into GraphQL errors that always carry `extensions.code`.

use async_graphql::{ErrorExtensions, Response};

use crate::domain::{DomainError, DomainResult};

impl ErrorExtensions for DomainError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.to_string()).extend_with(|_, e| e.set("code", self.code()))
    }
}

/// `DomainResult` → `async_graphql::Result`, keeping the error's code.
pub trait IntoGql<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> IntoGql<T> for DomainResult<T> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|e| e.extend())
    }
}

/// Gives every error of a response an `extensions.code`: errors raised by async-graphql itself
/// (parsing, validation, limits) come without one.
pub fn stamp_codes(response: &mut Response) {
    for error in &mut response.errors {
        let has_code = error
            .extensions
            .as_ref()
            .is_some_and(|ext| ext.get("code").is_some());
        if has_code {
            continue;
        }
        let code = if error.message.contains("nested too deep")
            || error.message.contains("too complex")
            || error.message.contains("too many")
        {
            "TOO_COMPLEX"
        } else if error.locations.is_empty()
            && error.path.is_empty()
            && error.message.contains("internal")
        {
            "INTERNAL"
        } else {
            "BAD_USER_INPUT"
        };
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", code);
    }
}

/// Whether a request failed before execution (parse or validation): no data, and errors
/// without a path. GraphQL over HTTP answers it with 400, graphql-transport-ws with `error`.
pub fn is_request_error(response: &Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}
