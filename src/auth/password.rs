//! Password hashing with argon2 (the crate's recommended defaults, Argon2id).
//!
//! Argon2 is slow and memory-hungry on purpose (19 MiB and a few milliseconds of a core per
//! check), so a flood of sign-ins must not be allowed to occupy every blocking thread: at most
//! `max_concurrent_checks()` hashes and verifications run at once, on the blocking pool, and
//! the others wait their turn — for `QUEUE_TIMEOUT` at most, then they are refused as busy.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use tokio::sync::Semaphore;

/// How long a hash or verification waits for its turn before it is refused as busy.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The checks that may run at once: twice the cores, at least 2. Argon2 is CPU work of this
/// machine, so the bound is the process's, not a setting per server.
pub fn max_concurrent_checks() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_mul(2)
        .max(2)
}

static CHECKS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(max_concurrent_checks())));

/// A hash of no password at all, with the parameters real hashes get: checking a password
/// against it costs exactly what a real check costs and never succeeds. Unknown users and
/// users without a password are checked against it, so timing does not tell them apart from
/// users with a wrong password.
static DUMMY: LazyLock<String> = LazyLock::new(|| {
    let params = Params::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut bytes = [0u8; Params::DEFAULT_OUTPUT_LEN];
    OsRng.fill_bytes(&mut bytes);
    let output = Output::new(&bytes)
        .map(|o| o.to_string())
        .unwrap_or_default();
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${output}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        salt.as_str()
    )
});

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every check slot stayed taken for `QUEUE_TIMEOUT`.
    #[error("too many sign-ins at once: retry in a few seconds")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// Runs `work` on the blocking pool once a check slot is free. The slot travels with the
/// work, so a request that gives up (a client that disconnects) frees it only when the work
/// is done: abandoned checks still count.
async fn checked<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let permit = tokio::time::timeout(QUEUE_TIMEOUT, CHECKS.clone().acquire_owned())
        .await
        .map_err(|_| PasswordError::Busy)?
        .map_err(|_| PasswordError::Busy)?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| PasswordError::Failed(e.to_string()))
}

pub async fn hash(password: String) -> Result<String, PasswordError> {
    checked(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Failed(e.to_string()))
    })
    .await?
}

/// Whether `password` matches `hash`. No hash (an unknown user, a user without a password)
/// takes as long as a real check and never matches; nor does a malformed stored hash.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool, PasswordError> {
    let real = hash.is_some();
    let matched = checked(move || {
        let hash = hash.as_deref().unwrap_or(DUMMY.as_str());
        PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await?;
    Ok(real && matched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_has_the_parameters_of_real_hashes() {
        let salt = SaltString::generate(&mut OsRng);
        let real = Argon2::default()
            .hash_password(b"correct horse battery", &salt)
            .expect("hash")
            .to_string();
        let real = PasswordHash::new(&real).expect("real");
        let dummy = PasswordHash::new(&DUMMY).expect("the dummy hash parses");
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(
            dummy.hash.map(|h| h.len()),
            real.hash.map(|h| h.len()),
            "same output length"
        );
    }

    #[tokio::test]
    async fn no_hash_never_matches_and_a_real_one_does() {
        let hashed = hash("correct horse battery".into()).await.expect("hash");
        assert!(verify("correct horse battery".into(), Some(hashed.clone()))
            .await
            .expect("verify"));
        assert!(!verify("wrong".into(), Some(hashed)).await.expect("verify"));
        assert!(!verify("".into(), None).await.expect("verify"));
        assert!(!verify("x".into(), Some("not a hash".into()))
            .await
            .expect("verify"));
    }
}
