//! JWT: HS256 with a shared secret for the tokens Tidings issues itself, and optionally
//! RS256/ES256 with a public key for tokens issued by an existing identity provider.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::db::setting;

const SECRET_SETTING: &str = "jwt_secret";
/// The shortest HS256 secret accepted: anyone who guesses the secret mints admin tokens, and
/// HS256's key should be at least as long as its hash (RFC 7518, 3.2).
pub const MIN_SECRET_BYTES: usize = 32;
/// Clock skew tolerated between the token's issuer and this server.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// The keys that verify (and, for HS256, mint) tokens.
#[derive(Clone)]
pub struct TokenKeys {
    secret_encoding: EncodingKey,
    secret_decoding: DecodingKey,
    public: Option<(DecodingKey, Vec<Algorithm>)>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl TokenKeys {
    /// Loads the configured keys. Without `TIDINGS_JWT_SECRET` the secret is read from the
    /// database, or generated and stored there on first start, so every instance and
    /// `tidings token` agree.
    /// `db` is needed only when no secret is configured.
    pub async fn load(config: &Config, db: Option<&DatabaseConnection>) -> anyhow::Result<Self> {
        let secret = match (&config.jwt_secret, db) {
            (Some(s), _) if !s.is_empty() => {
                check_secret(s)?;
                s.clone()
            }
            (_, Some(db)) => stored_secret(db).await?,
            (_, None) => anyhow::bail!("no JWT secret configured and no database to keep one"),
        };
        let public = match &config.jwt_public_key {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read JWT public key {}: {e}", path.display())
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    Some((
                        key,
                        vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                    ))
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    Some((key, vec![Algorithm::ES256, Algorithm::ES384]))
                } else {
                    anyhow::bail!(
                        "{} is neither an RSA nor an EC public key (PEM)",
                        path.display()
                    );
                }
            }
        };
        Ok(Self {
            secret_encoding: EncodingKey::from_secret(secret.as_bytes()),
            secret_decoding: DecodingKey::from_secret(secret.as_bytes()),
            public,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    /// Mints an HS256 token for `sub`, valid for `ttl`.
    pub fn mint(&self, sub: &str, name: &str, role: &str, ttl: Duration) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            name: Some(name.to_owned()),
            role: Some(role.to_owned()),
            iat: now,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(serde_json::Value::String),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.secret_encoding,
        )?)
    }

    /// Whether a token (verified) is one this server issues: HS256 with the shared secret.
    /// Tokens of an external identity provider are signed with its key (RS256/ES256).
    pub fn issued_here(token: &str) -> bool {
        jsonwebtoken::decode_header(token).is_ok_and(|h| h.alg == Algorithm::HS256)
    }

    /// Verifies a token's signature, expiry, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let (key, algorithms) = match header.alg {
            Algorithm::HS256 => (&self.secret_decoding, vec![Algorithm::HS256]),
            alg => match &self.public {
                Some((key, algs)) if algs.contains(&alg) => (key, vec![alg]),
                _ => return Err(TokenError::Invalid),
            },
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = LEEWAY_SECS;
        // A configured issuer or audience must be present, not merely right when present.
        let mut required = vec!["exp", "sub"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        let claims = data.claims;
        if claims.sub.is_empty()
            || claims.sub.len() > 128
            || claims.sub.chars().any(char::is_whitespace)
        {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

/// A configured secret too short to resist guessing stops the start (an empty one counts as
/// not configured).
fn check_secret(secret: &str) -> anyhow::Result<()> {
    if secret.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "TIDINGS_JWT_SECRET is {} bytes long; it must be at least {MIN_SECRET_BYTES} random \
             bytes (for example `openssl rand -hex 32`), or unset to have one generated",
            secret.len()
        );
    }
    Ok(())
}

async fn stored_secret(db: &DatabaseConnection) -> anyhow::Result<String> {
    if let Some(row) = setting::Entity::find_by_id(SECRET_SETTING).one(db).await? {
        return Ok(row.value);
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let generated: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Two instances starting at once may both generate one: the first insert wins and both
    // read it back.
    let _ = setting::Entity::insert(setting::ActiveModel {
        key: Set(SECRET_SETTING.to_owned()),
        value: Set(generated),
    })
    .exec(db)
    .await;
    let row = setting::Entity::find_by_id(SECRET_SETTING)
        .one(db)
        .await?
        .ok_or_else(|| anyhow::anyhow!("could not store the generated JWT secret"))?;
    tracing::warn!("TIDINGS_JWT_SECRET is not set: using a generated secret kept in the database");
    Ok(row.value)
}
