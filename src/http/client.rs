//! Which client a request comes from, for the budgets that count per address.
//!
//! Today that is the TCP peer (the server runs with `ConnectInfo`). This is the one place
//! that decides it: believing a proxy's `X-Forwarded-For` belongs here too.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, OptionalFromRequestParts};
use axum::http::request::Parts;

use super::AppState;
use crate::auth::ClientAddress;

/// The address of the client behind `parts`; `None` when the server was not given peer
/// addresses (a router driven in-process, without a socket).
pub fn client_address(parts: &Parts, _state: &AppState) -> Option<ClientAddress> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| ClientAddress::new(peer.ip()))
}

/// A handler takes `Option<ClientAddress>`.
impl OptionalFromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(client_address(parts, state))
    }
}
