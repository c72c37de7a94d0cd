//! Who is asking: JWT verification and minting, password hashing, and the `Viewer` every
//! resolver and socket handler receives.

pub mod client;
pub mod password;
pub mod tokens;
pub mod viewer;

pub use client::ClientAddress;
pub use tokens::{Claims, TokenError, TokenKeys};
pub use viewer::{AuthUser, Grant, Viewer};

/// The token carried by an `Authorization: Bearer …` header value, if any.
pub fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
