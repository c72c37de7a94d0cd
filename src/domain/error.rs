use sea_orm::DbErr;

/// What can go wrong in a domain service. Each variant maps to one `extensions.code` (and to a
/// legacy `/ws` error code); messages are for clients and never carry SQL or internals.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid username or password")]
    BadCredentials,
    /// A token offered to renew or refresh a session was refused (invalid, expired, revoked).
    #[error("{0}")]
    TokenRefused(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    RateLimited(String),
    /// A user holds the most connections allowed: transports close the new one (1008).
    #[error("too many connections")]
    TooManyConnections,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type DomainResult<T> = Result<T, DomainError>;

impl DomainError {
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::Unauthenticated
            | DomainError::BadCredentials
            | DomainError::TokenRefused(_) => "UNAUTHENTICATED",
            DomainError::Forbidden(_) => "FORBIDDEN",
            DomainError::NotFound(_) => "NOT_FOUND",
            DomainError::BadInput(_) => "BAD_USER_INPUT",
            DomainError::RateLimited(_) | DomainError::TooManyConnections => "RATE_LIMITED",
            DomainError::Internal(_) => "INTERNAL",
        }
    }

    pub fn bad_input(msg: impl Into<String>) -> Self {
        DomainError::BadInput(msg.into())
    }
}

impl From<DbErr> for DomainError {
    fn from(e: DbErr) -> Self {
        tracing::error!(error = %e, "database error");
        DomainError::Internal(e.into())
    }
}

impl From<anyhow::Error> for DomainError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %e, "internal error");
        DomainError::Internal(e)
    }
}
