//! Users: registration, login, and provisioning from tokens.
//!
//! A username is unique regardless of case (the database holds a unique index on its lower
//! case), and sign-ins (`login`, `register`) spend budgets per client address and per
//! username before any password work.

use sea_orm::{
    sea_query::{Expr, ExprTrait, Func},
    ActiveValue::Set,
    ColumnTrait, EntityTrait, QueryFilter, SqlErr,
};

use super::limits::Action;
use super::signins::{new_user, Wanted};
use super::{Domain, DomainError, DomainResult};
use crate::auth::password::{self, PasswordError};
use crate::auth::{AuthUser, Claims, ClientAddress, TokenError, TokenKeys, Viewer};
use crate::db::user;

pub const ROLE_USER: &str = "user";
pub const ROLE_ADMIN: &str = "admin";

const PASSWORD_MIN: usize = 8;
const PASSWORD_MAX: usize = 1024;
const USERNAME_MAX: usize = 32;
/// The longest suffix provisioning appends to a taken name (`-19`).
const NUMBERED_SUFFIX_MAX: usize = 3;

/// A registrable username: 1–32 of `A-Z a-z 0-9 _ . -` (what `@mentions` match).
pub fn validate_username(name: &str) -> DomainResult<()> {
    let ok = (1..=USERNAME_MAX).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DomainError::bad_input(
            "username must be 1-32 characters of letters, digits, '_', '.' or '-'",
        ))
    }
}

/// The key a username's sign-in budget counts under: case aside, and bounded, so a huge name
/// makes no huge key (no account has a name that long).
fn username_key(name: &str) -> String {
    name.chars()
        .take(2 * USERNAME_MAX)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Rows whose username equals `name` regardless of case (usernames are ASCII, compared the
/// way the unique index on `lower(username)` compares them).
fn username_is(name: &str) -> Expr {
    Func::lower(Expr::col(user::Column::Username)).eq(name.to_ascii_lowercase())
}

/// A busy password check is a refusal the client may retry; anything else is internal.
fn password_failure(e: PasswordError) -> DomainError {
    match e {
        PasswordError::Busy => {
            crate::metrics::sign_in_refused("busy");
            DomainError::RateLimited(e.to_string())
        }
        PasswordError::Failed(why) => DomainError::Internal(anyhow::anyhow!(why)),
    }
}

fn validate_role(role: &str) -> Result<(), TokenError> {
    let ok = (1..=32).contains(&role.len())
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    ok.then_some(()).ok_or(TokenError::Invalid)
}

impl Domain {
    /// Takes one sign-in from `from`'s budget and one from `username`'s, before any password
    /// work: guessing is slow from one place, and slow against one account from everywhere.
    async fn spend_sign_in(&self, username: &str, from: Option<ClientAddress>) -> DomainResult<()> {
        if let Some(from) = from {
            self.limits
                .check(&from.budget_key(), Action::SignInFromAddress)
                .await?;
        }
        self.limits
            .check(&username_key(username), Action::SignInAsUsername)
            .await
    }

    /// Creates an account and returns a token for it. The user's id is its username. A name
    /// taken in any case (`Alice` when `alice` exists) is taken.
    pub async fn register(
        &self,
        username: &str,
        pw: &str,
        from: Option<ClientAddress>,
    ) -> DomainResult<(String, user::Model)> {
        self.spend_sign_in(username, from).await?;
        validate_username(username)?;
        if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&pw.chars().count()) {
            return Err(DomainError::bad_input(format!(
                "password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters"
            )));
        }
        let taken = || DomainError::bad_input("username is taken");
        if user::Entity::find()
            .filter(username_is(username).or(user::Column::Id.eq(username)))
            .one(&self.db)
            .await?
            .is_some()
        {
            return Err(taken());
        }
        let hash = password::hash(pw.to_owned())
            .await
            .map_err(password_failure)?;
        let model = new_user(username, username.to_owned(), Some(hash), ROLE_USER);
        let created = match user::Entity::insert(model)
            .exec_with_returning(&self.db)
            .await
        {
            Ok(m) => m,
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(taken())
            }
            Err(e) => return Err(e.into()),
        };
        let token = self.issue_token(&created)?;
        Ok((token, created))
    }

    /// Checks a username (in any case) and password and returns a fresh token. Every attempt
    /// costs one password check — against a dummy hash for an unknown user or one without a
    /// password — so the answer's timing does not tell which accounts exist or where they come
    /// from.
    pub async fn login(
        &self,
        username: &str,
        pw: &str,
        from: Option<ClientAddress>,
    ) -> DomainResult<(String, user::Model)> {
        self.spend_sign_in(username, from).await?;
        // A name no one can register names no account with a password.
        let found = match validate_username(username) {
            Ok(()) => {
                user::Entity::find()
                    .filter(username_is(username))
                    .one(&self.db)
                    .await?
            }
            Err(_) => None,
        };
        let hash = found.as_ref().and_then(|u| u.password_hash.clone());
        let matched = password::verify(pw.to_owned(), hash)
            .await
            .map_err(password_failure)?;
        match found {
            Some(found) if matched => {
                let token = self.issue_token(&found)?;
                Ok((token, found))
            }
            _ => Err(DomainError::BadCredentials),
        }
    }

    fn issue_token(&self, user: &user::Model) -> DomainResult<String> {
        Ok(self
            .tokens
            .mint(&user.id, &user.username, &user.role, self.rules.token_ttl)?)
    }

    /// The viewer a bearer token stands for. A valid token whose `sub` is not known yet
    /// provisions that user (username from `name`, else `sub`).
    pub async fn viewer_from_token(&self, token: &str) -> Result<Viewer, ViewerError> {
        Ok(self.sign_in(token).await?.viewer)
    }

    /// The viewer a bearer token stands for, with the user as stored (read or provisioned by
    /// this very call): what a connection needs to be counted for presence without reading the
    /// user again.
    pub async fn sign_in(&self, token: &str) -> Result<SignedIn, ViewerError> {
        let claims = self.tokens.verify(token).map_err(ViewerError::Token)?;
        let role = claims.role.clone().unwrap_or_else(|| ROLE_USER.to_owned());
        validate_role(&role).map_err(ViewerError::Token)?;
        let user = self
            .signed_in_user(&claims, &role)
            .await
            .map_err(ViewerError::Domain)?;
        // An admin disconnected this user: tokens issued until then are void.
        if user
            .tokens_revoked_at
            .is_some_and(|revoked| claims.iat <= revoked.timestamp())
        {
            return Err(ViewerError::Token(TokenError::Invalid));
        }
        let viewer = Viewer::User(AuthUser {
            id: user.id.clone(),
            username: user.username.clone(),
            role,
            expires_at: claims.exp,
            issued_at: claims.iat,
            issued_here: TokenKeys::issued_here(token),
        });
        Ok(SignedIn { viewer, user })
    }

    /// The token's user as stored, provisioned on first sight: read with the other sign-ins
    /// waiting (`signins`), or on its own when that batch cannot settle it.
    async fn signed_in_user(&self, claims: &Claims, role: &str) -> DomainResult<user::Model> {
        let wanted = Wanted {
            id: claims.sub.clone(),
            username: wanted_username(claims).to_owned(),
            role: role.to_owned(),
        };
        match self.signins.read(wanted).await? {
            Some(user) => Ok(user),
            None => self.provision(claims, role).await,
        }
    }

    async fn provision(&self, claims: &Claims, role: &str) -> DomainResult<user::Model> {
        if let Some(found) = user::Entity::find_by_id(claims.sub.as_str())
            .one(&self.db)
            .await?
        {
            if found.role != role {
                // The token is the authority on the role; keep the stored one in step so
                // role-targeted notifications find this user.
                let mut active: user::ActiveModel = found.clone().into();
                active.role = Set(role.to_owned());
                return Ok(user::Entity::update(active).exec(&self.db).await?);
            }
            return Ok(found);
        }
        let name = valid_name(claims);
        let wanted = wanted_username(claims).to_owned();
        // Numbered variants of a name stay within a username's length.
        let stem: String = match name {
            Some(n) => n.chars().take(USERNAME_MAX - NUMBERED_SUFFIX_MAX).collect(),
            None => wanted.clone(),
        };
        // The name may already belong to another account, in any case: fall back to the id,
        // then to a numbered variant.
        let candidates = [wanted, claims.sub.clone()]
            .into_iter()
            .chain((2..20).map(|n| format!("{stem}-{n}")));
        for username in candidates {
            let model = new_user(&claims.sub, username, None, role);
            match user::Entity::insert(model)
                .exec_with_returning(&self.db)
                .await
            {
                Ok(m) => return Ok(m),
                Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                    // Either the name is taken, or a concurrent request provisioned this id.
                    if let Some(found) = user::Entity::find_by_id(claims.sub.as_str())
                        .one(&self.db)
                        .await?
                    {
                        return Ok(found);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(DomainError::bad_input(
            "could not choose a username for this token",
        ))
    }

    pub async fn user_by_id(&self, id: &str) -> DomainResult<Option<user::Model>> {
        Ok(user::Entity::find_by_id(id).one(&self.db).await?)
    }

    pub async fn users_by_ids(&self, ids: &[String]) -> DomainResult<Vec<user::Model>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(user::Entity::find()
            .filter(user::Column::Id.is_in(ids.iter().cloned()))
            .all(&self.db)
            .await?)
    }
}

/// The token's name claim, if it can be a username. It is what a person typed into an identity
/// provider: it becomes a username only if `register` would accept it (no markup, no
/// direction overrides).
fn valid_name(claims: &Claims) -> Option<&str> {
    claims
        .name
        .as_deref()
        .filter(|n| validate_username(n).is_ok())
}

/// The username a token's user is first provisioned with: its name, else its id.
fn wanted_username(claims: &Claims) -> &str {
    valid_name(claims).unwrap_or(&claims.sub)
}

/// A verified token's viewer and its user as the database holds it.
pub struct SignedIn {
    pub viewer: Viewer,
    pub user: user::Model,
}

/// Why a token did not yield a viewer.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error(transparent)]
    Token(TokenError),
    #[error(transparent)]
    Domain(DomainError),
}
