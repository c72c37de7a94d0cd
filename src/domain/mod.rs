//! The domain services: every rule about users, rooms and messages lives here, once, whichever
//! transport calls it. A service checks the viewer's rights and the input, writes to the
//! database, then publishes what happened.

pub mod error;
pub mod messages;
pub mod rooms;
pub mod users;

use std::time::Duration;

use sea_orm::DatabaseConnection;

pub use error::{DomainError, DomainResult};

use crate::auth::{AuthUser, TokenKeys, Viewer};

/// Settings the domain rules read.
#[derive(Debug, Clone)]
pub struct Rules {
    pub points_per_message: i64,
    pub token_ttl: Duration,
}

/// The services over one database; cheap to share behind an `Arc`.
pub struct Domain {
    pub db: DatabaseConnection,
    pub tokens: TokenKeys,
    pub rules: Rules,
}

impl Domain {
    pub fn new(db: DatabaseConnection, tokens: TokenKeys, rules: Rules) -> Self {
        Self { db, tokens, rules }
    }
}

/// The signed-in user, or `UNAUTHENTICATED`.
pub fn require_user(viewer: &Viewer) -> DomainResult<&AuthUser> {
    viewer.user().ok_or(DomainError::Unauthenticated)
}

/// The signed-in admin, or `UNAUTHENTICATED` / `FORBIDDEN`.
pub fn require_admin(viewer: &Viewer) -> DomainResult<&AuthUser> {
    let user = require_user(viewer)?;
    if user.is_admin() {
        Ok(user)
    } else {
        Err(DomainError::Forbidden("admin role required".into()))
    }
}
