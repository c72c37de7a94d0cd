//! Rate limits, the same for every transport: per user, messages, typing, notifications,
//! edits and deletes, reactions, read receipts; per
//! client address and per username, sign-ins (`login` and `register` together). A token
//! bucket per key and action (GCRA): `governor` in this process, or one shared bucket in Redis
//! when instances share one, so nobody multiplies their budget by spreading connections or
//! instances.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use super::{DomainError, DomainResult};
use crate::hub::redis::RedisConnection;

/// What is limited. The first three are counted per user; sign-ins per client address and
/// per username, whoever asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Message,
    Typing,
    Notification,
    /// A `login` or `register` from one client address.
    SignInFromAddress,
    /// A `login` or `register` naming one username (case aside).
    SignInAsUsername,
    /// An edit or a delete of a message.
    Edit,
    /// A reaction added or removed.
    Reaction,
    /// A read receipt (`markRead`).
    Receipt,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Message => "message",
            Action::Typing => "typing",
            Action::Notification => "notification",
            Action::SignInFromAddress => "sign_in_address",
            Action::SignInAsUsername => "sign_in_username",
            Action::Edit => "edit",
            Action::Reaction => "reaction",
            Action::Receipt => "receipt",
        }
    }

    /// What a refusal says the client did too often.
    fn what(self) -> &'static str {
        match self {
            Action::Message => "message",
            Action::Typing => "typing",
            Action::Notification => "notification",
            Action::SignInFromAddress => "sign-in attempts from this address",
            Action::SignInAsUsername => "sign-in attempts for this username",
            Action::Edit => "edit",
            Action::Reaction => "reaction",
            Action::Receipt => "read receipt",
        }
    }

    /// Counts a refusal in `/metrics`.
    fn count_refusal(self) {
        match self {
            Action::Message
            | Action::Typing
            | Action::Notification
            | Action::Edit
            | Action::Reaction
            | Action::Receipt => crate::metrics::rate_limited(self.name()),
            Action::SignInFromAddress => crate::metrics::sign_in_refused("address"),
            Action::SignInAsUsername => crate::metrics::sign_in_refused("username"),
        }
    }
}

/// A rate: `count` per `period`, with bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    /// Parses `COUNT/PERIOD` (e.g. `10/10s`); the burst is set apart.
    pub fn parse(s: &str, burst: u32) -> Result<Self, String> {
        let (count, period) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected COUNT/PERIOD, e.g. 10/10s"))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?}: COUNT must be a positive number"))?;
        let period = humantime::parse_duration(period.trim()).map_err(|e| format!("{s:?}: {e}"))?;
        if period.is_zero() {
            return Err(format!("{s:?}: PERIOD must be positive"));
        }
        Ok(Self {
            count,
            period,
            burst: burst.max(1),
        })
    }

    /// Time between two tokens.
    fn interval(&self) -> Duration {
        (self.period / self.count).max(Duration::from_micros(1))
    }

    fn quota(&self) -> Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(self.interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// The configured rates; `None` turns limits off.
#[derive(Clone, Debug)]
pub struct Rates {
    pub messages: Rate,
    pub typing: Rate,
    pub notifications: Rate,
    /// Edits and deletes per user.
    pub edits: Rate,
    /// Reactions added or removed per user.
    pub reactions: Rate,
    /// Read receipts per user.
    pub receipts: Rate,
    /// Sign-ins per client address.
    pub sign_in_address: Rate,
    /// Sign-ins per username.
    pub sign_in_username: Rate,
}

struct Bucket {
    rate: Rate,
    local: DefaultKeyedRateLimiter<String>,
}

/// Shared buckets in Redis: one key per key (user, address, username) and action holding the bucket's "theoretical
/// arrival time"; the script is GCRA, the algorithm governor uses, so both behave alike.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return tat - tolerance - now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now) + 1000)
return -1
"#;

pub struct RateLimits {
    buckets: Option<[Bucket; 8]>,
    shared: Option<RedisConnection>,
    script: redis::Script,
}

impl RateLimits {
    /// `rates: None` turns every limit off (for load tests). With `shared`, buckets live in
    /// Redis (falling back to this process's while Redis is away).
    pub fn start(
        rates: Option<Rates>,
        shared: Option<RedisConnection>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let bucket = |rate: Rate| Bucket {
            rate,
            local: DefaultKeyedRateLimiter::keyed(rate.quota()),
        };
        let limits = Arc::new(Self {
            buckets: rates.map(|r| {
                // In the order of `Action`'s variants: `check` indexes by them.
                [
                    bucket(r.messages),
                    bucket(r.typing),
                    bucket(r.notifications),
                    bucket(r.sign_in_address),
                    bucket(r.sign_in_username),
                    bucket(r.edits),
                    bucket(r.reactions),
                    bucket(r.receipts),
                ]
            }),
            shared,
            script: redis::Script::new(GCRA),
        });
        if limits.buckets.is_some() {
            // Forget keys whose buckets are full again, so memory follows active clients.
            let weak = Arc::downgrade(&limits);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.cancelled() => break,
                    }
                    let Some(limits) = weak.upgrade() else { break };
                    for b in limits.buckets.iter().flatten() {
                        b.local.retain_recent();
                    }
                }
            });
        }
        limits
    }

    /// Takes one token for `key` (a user id, a client address, a username) doing `action`, or
    /// `RATE_LIMITED` with when to retry.
    pub async fn check(&self, key: &str, action: Action) -> DomainResult<()> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        let bucket = &buckets[action as usize];
        let wait = match &self.shared {
            Some(conn) => match self
                .check_shared(conn.clone(), key, action, bucket.rate)
                .await
            {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::debug!(error = %e, "rate limit: using this instance's bucket");
                    check_local(bucket, key)
                }
            },
            None => check_local(bucket, key),
        };
        match wait {
            None => Ok(()),
            Some(wait) => {
                action.count_refusal();
                let what = match action {
                    Action::Message
                    | Action::Typing
                    | Action::Notification
                    | Action::Edit
                    | Action::Reaction
                    | Action::Receipt => format!("{} requests", action.what()),
                    Action::SignInFromAddress | Action::SignInAsUsername => {
                        action.what().to_owned()
                    }
                };
                Err(DomainError::RateLimited(format!(
                    "too many {what}: retry in {:.1} s",
                    wait.as_secs_f64().max(0.1)
                )))
            }
        }
    }

    async fn check_shared(
        &self,
        mut conn: RedisConnection,
        key: &str,
        action: Action,
        rate: Rate,
    ) -> redis::RedisResult<Option<Duration>> {
        let interval = rate.interval().as_millis().max(1) as u64;
        let tolerance = interval * u64::from(rate.burst - 1);
        let wait_ms: i64 = self
            .script
            .key(bucket_key(action, key))
            .arg(interval)
            .arg(tolerance)
            .invoke_async(&mut conn)
            .await?;
        Ok((wait_ms >= 0).then(|| Duration::from_millis(wait_ms as u64)))
    }
}

/// A bucket's key in Redis: `tidings:rate:{ACTION:KEY}`. The braces are a Redis Cluster hash
/// tag around the whole bucket name, so the server, not the client, picks the slot: braces in
/// the client's part (a username may hold them) are escaped, or `{x}` in a name would put the
/// buckets of every such name on one shard. The script touches this one key only.
fn bucket_key(action: Action, key: &str) -> String {
    let mut escaped = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '{' => escaped.push_str("%7B"),
            '}' => escaped.push_str("%7D"),
            c => escaped.push(c),
        }
    }
    format!("tidings:rate:{{{}:{escaped}}}", action.name())
}

fn check_local(bucket: &Bucket, key: &str) -> Option<Duration> {
    bucket
        .local
        .check_key(&key.to_owned())
        .err()
        .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_count_period_and_keep_the_burst() {
        let r = Rate::parse("10/10s", 20).expect("valid");
        assert_eq!(
            (r.count, r.period, r.burst),
            (10, Duration::from_secs(10), 20)
        );
        assert_eq!(r.interval(), Duration::from_secs(1));
        assert!(Rate::parse("10", 1).is_err());
        assert!(Rate::parse("0/1s", 1).is_err());
        assert!(Rate::parse("5/0s", 1).is_err());
    }

    #[test]
    fn a_bucket_key_is_one_hash_tag_the_client_cannot_steer() {
        assert_eq!(
            bucket_key(Action::Message, "alice"),
            "tidings:rate:{message:alice}"
        );
        // Braces in the client's part would end or start the tag early: escaped.
        let key = bucket_key(Action::SignInAsUsername, "{x}y%");
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        assert!(key.ends_with('}'), "{key}");
        assert_ne!(
            bucket_key(Action::Message, "a{b"),
            bucket_key(Action::Message, "a%7Bb"),
            "escaping keeps keys apart"
        );
    }

    #[tokio::test]
    async fn a_burst_is_allowed_then_requests_wait_for_tokens() {
        let rate = Rate::parse("1/1h", 3).expect("valid");
        let rates = Rates {
            messages: rate,
            typing: rate,
            notifications: rate,
            edits: rate,
            reactions: rate,
            receipts: rate,
            sign_in_address: rate,
            sign_in_username: rate,
        };
        let limits = RateLimits::start(Some(rates), None, CancellationToken::new());
        for _ in 0..3 {
            assert!(limits.check("u", Action::Message).await.is_ok());
        }
        let refused = limits.check("u", Action::Message).await;
        assert!(matches!(refused, Err(DomainError::RateLimited(_))));
        assert!(
            limits.check("other", Action::Message).await.is_ok(),
            "per user"
        );
        assert!(
            limits.check("u", Action::Typing).await.is_ok(),
            "per action"
        );
        for _ in 0..3 {
            assert!(limits
                .check("192.0.2.1", Action::SignInFromAddress)
                .await
                .is_ok());
        }
        assert!(matches!(
            limits.check("192.0.2.1", Action::SignInFromAddress).await,
            Err(DomainError::RateLimited(_))
        ));
        assert!(
            limits
                .check("192.0.2.1", Action::SignInAsUsername)
                .await
                .is_ok(),
            "addresses and usernames have buckets of their own"
        );
        let off = RateLimits::start(None, None, CancellationToken::new());
        for _ in 0..100 {
            assert!(off.check("u", Action::Message).await.is_ok());
        }
    }
}
