use std::fmt;

/// Who is asking, as every resolver and socket handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Viewer {
    Anonymous,
    User(AuthUser),
    /// One execution of a subscription shared by many subscribers: it reads exactly what its
    /// grant names, which the domain checked each subscriber may read, and nothing else.
    Shared(Grant),
}

/// What a shared execution may read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Grant {
    /// One room's messages.
    Room(String),
    /// These channels' events, none of them a room's.
    Channels(Vec<String>),
}

/// A signed-in user, from a verified token (and provisioned in the database).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser {
    pub id: String,
    pub username: String,
    pub role: String,
    /// The token's `exp` (seconds since the epoch): live sockets close then.
    pub expires_at: i64,
    /// The token's `iat` (seconds since the epoch): revocation voids tokens issued until then.
    pub issued_at: i64,
    /// The token is one this server issued (HS256, its own secret), not an external identity
    /// provider's: only those are refreshed here.
    pub issued_here: bool,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}

impl Viewer {
    pub fn user(&self) -> Option<&AuthUser> {
        match self {
            Viewer::User(u) => Some(u),
            Viewer::Anonymous | Viewer::Shared(_) => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.user().is_some_and(AuthUser::is_admin)
    }
}

impl fmt::Display for Viewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Viewer::Anonymous => f.write_str("anonymous"),
            Viewer::User(u) => write!(f, "{} ({})", u.username, u.id),
            Viewer::Shared(grant) => write!(f, "shared reader of {grant:?}"),
        }
    }
}
