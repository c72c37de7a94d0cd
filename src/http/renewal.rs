//! A socket's side of token renewal: the connection's `Credentials` (the domain's cell of who
//! it is signed in as), which its operations renew (`authenticate`, `/ws` `auth`), and the
//! changes its reader watches, to move its expiry timer and let its protocol re-check what it
//! follows.

use std::future::Future;
use std::time::Duration;

use futures_util::future::Either;

use chrono::Utc;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::Viewer;
use crate::domain::sessions::Credentials;

/// A connection's credentials once it has signed in (anonymous included), and the reader's
/// view of their changes.
#[derive(Default)]
pub(crate) struct Renewals {
    cell: Option<(Credentials, watch::Receiver<Viewer>)>,
}

impl Renewals {
    /// The connection signed in as `viewer`: from now on its credentials can be renewed.
    pub(crate) fn start(viewer: &Viewer) -> Self {
        let credentials = Credentials::new(viewer.clone());
        let changes = credentials.watch();
        Self {
            cell: Some((credentials, changes)),
        }
    }

    /// The credentials operations on the connection renew; none before sign-in.
    pub(crate) fn credentials(&self) -> Option<&Credentials> {
        self.cell.as_ref().map(|(credentials, _)| credentials)
    }

    /// Resolves with the new viewer when the credentials are renewed (never before sign-in).
    ///
    /// Boxed while there are credentials to watch, and nothing without: a connection's reader
    /// keeps this wait in its future for its whole life, and most connections (those whose
    /// operations all share a cohort's execution) have none.
    pub(crate) fn changed(&mut self) -> impl Future<Output = Viewer> + Send + '_ {
        match self.cell.as_mut() {
            Some((_, changes)) => Either::Left(Box::pin(async move {
                if changes.changed().await.is_ok() {
                    return changes.borrow_and_update().clone();
                }
                std::future::pending().await
            })),
            None => Either::Right(std::future::pending()),
        }
    }

    /// The new viewer, if the credentials were renewed since the reader last looked.
    pub(crate) fn take(&mut self) -> Option<Viewer> {
        let (_, changes) = self.cell.as_mut()?;
        changes
            .has_changed()
            .unwrap_or(false)
            .then(|| changes.borrow_and_update().clone())
    }
}

/// When the viewer's token expires (live sockets close then); never for anonymous viewers.
pub(crate) fn token_expiry(viewer: Option<&Viewer>) -> Option<Instant> {
    let user = viewer?.user()?;
    let left = user.expires_at - Utc::now().timestamp();
    Some(Instant::now() + Duration::from_secs(left.max(0) as u64))
}

/// When a socket whose token expires at `expires` is told so (`TIDINGS_TOKEN_WARNING` before;
/// at once when less is left).
pub(crate) fn warning_before(expires: Option<Instant>, warning: Duration) -> Option<Instant> {
    let expires = expires?;
    Some(
        expires
            .checked_sub(warning)
            .map_or_else(Instant::now, |at| at.max(Instant::now())),
    )
}

/// The graphql-ws `connection_ack`: `{"expiresAt": ISO-8601}` for a signed-in connection, so
/// the client knows when to renew.
pub(crate) fn ack(viewer: Option<&Viewer>) -> serde_json::Value {
    match viewer.and_then(Viewer::user) {
        Some(user) => serde_json::json!({
            "type": "connection_ack",
            "payload": { "expiresAt": iso_expiry(user.expires_at) },
        }),
        None => serde_json::json!({ "type": "connection_ack" }),
    }
}

/// A token's `exp` as ISO 8601 in UTC.
pub(crate) fn iso_expiry(exp: i64) -> String {
    crate::domain::sessions::expiry_time(exp).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
