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
        let code = if is_cost_error(&error.message) {
            crate::metrics::graphql_refused("cost");
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

/// Whether an error of async-graphql's own is a cost limit: the depth limit, the executor's
/// recursion limit (a query nested past it, or fragments that spread each other in a cycle),
/// the parser's recursion limit, the complexity limit, and the alias and directive caps.
fn is_cost_error(message: &str) -> bool {
    const COST: [&str; 7] = [
        "nested too deep",
        "recursion depth",
        "recursion limit",
        "Cannot spread fragment",
        "too complex",
        "too many",
        "number of directives",
    ];
    COST.iter().any(|m| message.contains(m))
}

/// Whether a request failed before execution (parse or validation): no data, and errors
/// without a path. GraphQL over HTTP answers it with 400, graphql-transport-ws with `error`.
pub fn is_request_error(response: &Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::ServerError;

    fn code_of(message: &str) -> String {
        let mut response = Response::from_errors(vec![ServerError::new(message, None)]);
        stamp_codes(&mut response);
        let ext = response.errors[0].extensions.as_ref().expect("extensions");
        match ext.get("code") {
            Some(async_graphql::Value::String(s)) => s.clone(),
            other => panic!("no code: {other:?}"),
        }
    }

    #[test]
    fn cost_limits_are_too_complex_and_other_request_errors_bad_user_input() {
        for message in [
            "Query is nested too deep.",
            "The recursion depth of the query cannot be greater than `32`",
            "recursion limit exceeded.",
            "Cannot spread fragment \"A\"",
            "Query is too complex.",
            "too many aliases: 31, at most 30",
            "The number of directives on the field `me` cannot be greater than `5`",
        ] {
            assert_eq!(code_of(message), "TOO_COMPLEX", "{message}");
        }
        assert_eq!(
            code_of("Unknown field \"nope\" on type \"Query\"."),
            "BAD_USER_INPUT"
        );
    }
}
