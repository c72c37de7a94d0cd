//! Users: registration, login, and provisioning from tokens.

use chrono::Utc;
use sea_orm::{
    sea_query::ExprTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, SqlErr,
};

use super::{Domain, DomainError, DomainResult};
use crate::auth::{password, AuthUser, Claims, TokenError, Viewer};
use crate::db::user;

pub const ROLE_USER: &str = "user";
pub const ROLE_ADMIN: &str = "admin";

const PASSWORD_MIN: usize = 8;
const PASSWORD_MAX: usize = 1024;

/// A registrable username: 1–32 of `A-Z a-z 0-9 _ . -` (what `@mentions` match).
pub fn validate_username(name: &str) -> DomainResult<()> {
    let ok = (1..=32).contains(&name.len())
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

fn validate_role(role: &str) -> Result<(), TokenError> {
    let ok = (1..=32).contains(&role.len())
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    ok.then_some(()).ok_or(TokenError::Invalid)
}

impl Domain {
    /// Creates an account and returns a token for it. The user's id is its username.
    pub async fn register(&self, username: &str, pw: &str) -> DomainResult<(String, user::Model)> {
        validate_username(username)?;
        if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&pw.chars().count()) {
            return Err(DomainError::bad_input(format!(
                "password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters"
            )));
        }
        let hash = password::hash(pw.to_owned()).await?;
        let model = new_user(username, username.to_owned(), Some(hash), ROLE_USER);
        let taken = || DomainError::bad_input("username is taken");
        if user::Entity::find()
            .filter(
                user::Column::Username
                    .eq(username)
                    .or(user::Column::Id.eq(username)),
            )
            .one(&self.db)
            .await?
            .is_some()
        {
            return Err(taken());
        }
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

    /// Checks a username and password and returns a fresh token.
    pub async fn login(&self, username: &str, pw: &str) -> DomainResult<(String, user::Model)> {
        let found = user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .one(&self.db)
            .await?;
        let wrong = || DomainError::BadCredentials;
        let Some(found) = found else {
            // Spend the same time as a real check, so timing does not reveal which names exist.
            let _ = password::hash(pw.to_owned()).await;
            return Err(wrong());
        };
        let Some(hash) = found.password_hash.clone() else {
            return Err(wrong());
        };
        if !password::verify(pw.to_owned(), hash).await {
            return Err(wrong());
        }
        let token = self.issue_token(&found)?;
        Ok((token, found))
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
            .provision(&claims, &role)
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
        });
        Ok(SignedIn { viewer, user })
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
        let wanted = claims
            .name
            .as_deref()
            .filter(|n| !n.trim().is_empty() && n.len() <= 128)
            .unwrap_or(&claims.sub)
            .to_owned();
        // The name may already belong to another account: fall back to the id, then to a
        // numbered variant.
        let candidates = [wanted.clone(), claims.sub.clone()]
            .into_iter()
            .chain((2..20).map(|n| format!("{wanted}-{n}")));
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

/// A new user's row, every column given. Left to their defaults, the columns a later migration
/// added (`ALTER TABLE … ADD COLUMN … DEFAULT`) sometimes came back NULL from SQLite's
/// `INSERT … RETURNING` on a fresh database.
fn new_user(
    id: &str,
    username: String,
    password_hash: Option<String>,
    role: &str,
) -> user::ActiveModel {
    user::ActiveModel {
        id: Set(id.to_owned()),
        username: Set(username),
        password_hash: Set(password_hash),
        role: Set(role.to_owned()),
        points: Set(0),
        status: Set("ONLINE".to_owned()),
        last_seen_at: Set(None),
        created_at: Set(Utc::now()),
        notification_seq: Set(0),
        tokens_revoked_at: Set(None),
    }
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
