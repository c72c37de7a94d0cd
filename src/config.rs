//! Every setting of `tidings serve`: a flag, a `TIDINGS_*` environment variable, a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Parses durations such as `30s`, `5m`, `1h`, `7d` (humantime's syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (use port 0 for any free port).
    #[arg(long, env = "TIDINGS_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// Database URL: `sqlite://FILE?mode=rwc` or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        env = "TIDINGS_DATABASE_URL",
        default_value = "sqlite://tidings.db?mode=rwc"
    )]
    pub database_url: String,

    /// Redis URL for running several instances; unset keeps events in this process. At most
    /// one of this, TIDINGS_REDIS_CLUSTER and TIDINGS_REDIS_SENTINELS.
    #[arg(long, env = "TIDINGS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Seed nodes of a Redis Cluster (comma-separated `redis://host:port`): events travel over
    /// sharded pub/sub, one channel per topic, on the shard that owns the channel's slot.
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,

    /// Redis Sentinels watching one master (comma-separated `redis://host:port`); with
    /// TIDINGS_REDIS_SENTINEL_MASTER. The instances follow the master through failovers.
    #[arg(long, env = "TIDINGS_REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// The name under which the Sentinels know the master (their `sentinel monitor NAME`).
    #[arg(long, env = "TIDINGS_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// HS256 secret for tokens. Unset: a random secret is generated once and kept in the
    /// database, so restarts, every instance and `tidings token` agree.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA or EC) accepting RS256/ES256 tokens from an identity provider.
    #[arg(long, env = "TIDINGS_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "TIDINGS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "TIDINGS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Lifetime of the tokens `register` and `login` return.
    #[arg(long, env = "TIDINGS_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub token_ttl: Duration,

    /// How long before its token expires a `/ws` socket is told so (`token_expiring`), so that
    /// it renews in time (`{"type":"auth"}`).
    #[arg(long, env = "TIDINGS_TOKEN_WARNING", default_value = "60s", value_parser = parse_duration)]
    pub token_warning: Duration,

    /// `off` turns off per-user rate and connection limits (for load tests only).
    #[arg(long, env = "TIDINGS_RATE_LIMITS", default_value = "on", value_parser = ["on", "off"])]
    pub rate_limits: String,

    /// Messages per user: COUNT/PERIOD (every transport and instance together).
    #[arg(long, env = "TIDINGS_RATE_MESSAGES", default_value = "10/10s")]
    pub rate_messages: String,

    /// Messages a user may send in a burst above the rate.
    #[arg(long, env = "TIDINGS_BURST_MESSAGES", default_value_t = 20)]
    pub burst_messages: u32,

    /// Typing updates per user: COUNT/PERIOD.
    #[arg(long, env = "TIDINGS_RATE_TYPING", default_value = "30/10s")]
    pub rate_typing: String,

    #[arg(long, env = "TIDINGS_BURST_TYPING", default_value_t = 10)]
    pub burst_typing: u32,

    /// Message edits and deletes per user: COUNT/PERIOD.
    #[arg(long, env = "TIDINGS_RATE_EDITS", default_value = "10/10s")]
    pub rate_edits: String,

    #[arg(long, env = "TIDINGS_BURST_EDITS", default_value_t = 10)]
    pub burst_edits: u32,

    /// Reactions added or removed per user: COUNT/PERIOD.
    #[arg(long, env = "TIDINGS_RATE_REACTIONS", default_value = "30/10s")]
    pub rate_reactions: String,

    #[arg(long, env = "TIDINGS_BURST_REACTIONS", default_value_t = 20)]
    pub burst_reactions: u32,

    /// Read receipts (`markRead`) per user: COUNT/PERIOD.
    #[arg(long, env = "TIDINGS_RATE_RECEIPTS", default_value = "60/10s")]
    pub rate_receipts: String,

    #[arg(long, env = "TIDINGS_BURST_RECEIPTS", default_value_t = 20)]
    pub burst_receipts: u32,

    /// Notifications an admin may send (each call counts once): COUNT/PERIOD.
    #[arg(long, env = "TIDINGS_RATE_NOTIFICATIONS", default_value = "60/60s")]
    pub rate_notifications: String,

    #[arg(long, env = "TIDINGS_BURST_NOTIFICATIONS", default_value_t = 30)]
    pub burst_notifications: u32,

    /// Rooms one user may belong to at once.
    #[arg(long, env = "TIDINGS_MAX_ROOMS_PER_USER", default_value_t = 500)]
    pub max_rooms_per_user: u64,

    /// Points awarded for each message sent (0 disables).
    #[arg(long, env = "TIDINGS_POINTS_PER_MESSAGE", default_value_t = 1)]
    pub points_per_message: i64,

    /// Serve GraphQL introspection (GraphiQL and code generators need it).
    #[arg(long, env = "TIDINGS_INTROSPECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub introspection: bool,

    /// Largest accepted HTTP request body, in bytes.
    #[arg(long, env = "TIDINGS_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest accepted WebSocket message, in bytes (larger closes the socket with 1009).
    #[arg(long, env = "TIDINGS_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// How long a GraphQL WebSocket may stay open without `connection_init` (then 4408).
    #[arg(long, env = "TIDINGS_WS_INIT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_init_timeout: Duration,

    /// How often the server pings each WebSocket (and sends `ka` on the legacy protocol).
    #[arg(long, env = "TIDINGS_WS_PING_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// A WebSocket that sends nothing (not even a pong) for this long is closed.
    #[arg(long, env = "TIDINGS_WS_IDLE_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub ws_idle_timeout: Duration,

    /// An HTTP connection that sends nothing for this long while the server waits for a request
    /// (between keep-alive requests, or in the middle of one's head or body) is closed.
    #[arg(long, env = "TIDINGS_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// Frames queued for one connection before it counts as a slow consumer (closed, 1008).
    #[arg(long, env = "TIDINGS_WS_QUEUE", default_value_t = 1024)]
    pub ws_queue: usize,

    /// How long a connection's outgoing queue may stay full before it counts as a slow
    /// consumer and is closed (1008).
    #[arg(long, env = "TIDINGS_SLOW_CONSUMER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub slow_consumer_timeout: Duration,

    /// Open WebSocket connections one user may hold, every transport and instance together
    /// (over it: close 1008). Off with TIDINGS_RATE_LIMITS=off.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_USER", default_value_t = 20)]
    pub max_connections_per_user: u32,

    /// Operations one GraphQL WebSocket may run at once.
    #[arg(long, env = "TIDINGS_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Events buffered per hub topic of ephemeral events (typing, presence, channels, the
    /// leaderboard); a subscriber further behind misses the oldest.
    #[arg(long, env = "TIDINGS_BROADCAST_CAPACITY", default_value_t = 1024)]
    pub broadcast_capacity: usize,

    /// Events buffered per hub topic of stored events (a room's messages and changes, a user's
    /// notifications); a subscriber further behind catches up from the database.
    #[arg(long, env = "TIDINGS_STORED_BROADCAST_CAPACITY", default_value_t = 64)]
    pub stored_broadcast_capacity: usize,

    /// How long after their last connection closes a user is announced offline.
    #[arg(long, env = "TIDINGS_PRESENCE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub presence_grace: Duration,

    /// With Redis: an instance that has not renewed its presence counts for this long stops
    /// counting (its users go offline for the others). Renewed every third of it.
    #[arg(long, env = "TIDINGS_PRESENCE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub presence_ttl: Duration,

    /// How long a typing indicator lasts without a refresh.
    #[arg(long, env = "TIDINGS_TYPING_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub typing_timeout: Duration,

    /// The shortest time between two leaderboard updates to one subscriber.
    #[arg(long, env = "TIDINGS_LEADERBOARD_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub leaderboard_interval: Duration,

    /// Sign-ins (`login` and `register` together) from one client address: COUNT/PERIOD
    /// (every instance together, through Redis).
    #[arg(long, env = "TIDINGS_RATE_SIGN_IN_ADDRESS", default_value = "30/60s")]
    pub rate_sign_in_address: String,

    /// Sign-ins from one client address in a burst above the rate.
    #[arg(long, env = "TIDINGS_BURST_SIGN_IN_ADDRESS", default_value_t = 30)]
    pub burst_sign_in_address: u32,

    /// Sign-ins naming one username, whatever the address and the case: COUNT/PERIOD.
    #[arg(long, env = "TIDINGS_RATE_SIGN_IN_USERNAME", default_value = "10/60s")]
    pub rate_sign_in_username: String,

    /// Sign-ins naming one username in a burst above the rate.
    #[arg(long, env = "TIDINGS_BURST_SIGN_IN_USERNAME", default_value_t = 10)]
    pub burst_sign_in_username: u32,
    /// Most operations one `POST /graphql` batch may hold (over it: 400, `TOO_COMPLEX`). The
    /// operations of a batch run one after another.
    #[arg(long, env = "TIDINGS_MAX_BATCH", default_value_t = 10)]
    pub max_batch: usize,

    /// Time budget of one `POST /graphql` request, batch included: past it the unfinished
    /// operations are stopped and answered `TOO_COMPLEX` "request took too long".
    #[arg(long, env = "TIDINGS_GRAPHQL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub graphql_timeout: Duration,
    /// Open WebSockets this instance accepts, every transport together; past it an upgrade is
    /// answered 503 with Retry-After.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// WebSockets one client address (an IPv6 client: its /64) may hold while they are not
    /// signed in as a user; past it an upgrade is answered 429 with Retry-After. Off with
    /// TIDINGS_RATE_LIMITS=off.
    #[arg(long, env = "TIDINGS_MAX_ANONYMOUS_PER_ADDRESS", default_value_t = 100)]
    pub max_anonymous_per_address: usize,

    /// Proxies whose `X-Forwarded-For` is believed (comma-separated CIDR blocks or addresses,
    /// e.g. `10.0.0.0/8,::1`); unset, the client's address is the peer's.
    #[arg(long, env = "TIDINGS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::http::client::Cidr>,

    /// Channels one `/ws` socket may follow at once, its own included (anonymous sockets: at
    /// most 10); past it, an `error` frame with RATE_LIMITED.
    #[arg(long, env = "TIDINGS_MAX_CHANNELS_PER_SOCKET", default_value_t = 100)]
    pub max_channels_per_socket: usize,

    /// GraphQL operations and `/ws` channels one user may hold at once over all their sockets
    /// on one instance; past it, RATE_LIMITED. Off with TIDINGS_RATE_LIMITS=off.
    #[arg(
        long,
        env = "TIDINGS_MAX_SUBSCRIPTIONS_PER_USER",
        default_value_t = 1000
    )]
    pub max_subscriptions_per_user: usize,
}

impl Config {
    /// The per-user rates, or `None` when limits are off.
    pub fn rates(&self) -> Result<Option<crate::domain::limits::Rates>, String> {
        use crate::domain::limits::{Rate, Rates};
        if self.rate_limits == "off" {
            return Ok(None);
        }
        Ok(Some(Rates {
            messages: Rate::parse(&self.rate_messages, self.burst_messages)?,
            typing: Rate::parse(&self.rate_typing, self.burst_typing)?,
            notifications: Rate::parse(&self.rate_notifications, self.burst_notifications)?,
            edits: Rate::parse(&self.rate_edits, self.burst_edits)?,
            reactions: Rate::parse(&self.rate_reactions, self.burst_reactions)?,
            receipts: Rate::parse(&self.rate_receipts, self.burst_receipts)?,
            sign_in_address: Rate::parse(&self.rate_sign_in_address, self.burst_sign_in_address)?,
            sign_in_username: Rate::parse(
                &self.rate_sign_in_username,
                self.burst_sign_in_username,
            )?,
        }))
    }

    /// Which Redis the instances share, if any: at most one of TIDINGS_REDIS_URL,
    /// TIDINGS_REDIS_CLUSTER and TIDINGS_REDIS_SENTINELS may be set.
    pub fn redis(&self) -> Result<Option<crate::hub::redis::RedisTarget>, String> {
        use crate::hub::redis::RedisTarget;
        let nodes = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let url = self
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let cluster = nodes(&self.redis_cluster);
        let sentinels = nodes(&self.redis_sentinels);
        let set = [url.is_some(), !cluster.is_empty(), !sentinels.is_empty()];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(
                "set at most one of TIDINGS_REDIS_URL, TIDINGS_REDIS_CLUSTER and \
                 TIDINGS_REDIS_SENTINELS"
                    .into(),
            );
        }
        let master = self
            .redis_sentinel_master
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        if sentinels.is_empty() {
            if master.is_some() {
                return Err(
                    "TIDINGS_REDIS_SENTINEL_MASTER is set without TIDINGS_REDIS_SENTINELS".into(),
                );
            }
        } else {
            let Some(master) = master else {
                return Err(
                    "TIDINGS_REDIS_SENTINELS needs TIDINGS_REDIS_SENTINEL_MASTER (the name the \
                     Sentinels monitor)"
                        .into(),
                );
            };
            return Ok(Some(RedisTarget::Sentinel {
                sentinels,
                master: master.to_owned(),
            }));
        }
        if !cluster.is_empty() {
            return Ok(Some(RedisTarget::Cluster(cluster)));
        }
        Ok(url.map(|u| RedisTarget::Single(u.to_owned())))
    }

    /// The defaults, as `tidings serve` with nothing set would use them.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            redis_url: None,
            redis_cluster: Vec::new(),
            redis_sentinels: Vec::new(),
            redis_sentinel_master: None,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            token_ttl: Duration::from_secs(24 * 3600),
            token_warning: Duration::from_secs(60),
            rate_limits: "on".into(),
            rate_messages: "10/10s".into(),
            burst_messages: 20,
            rate_typing: "30/10s".into(),
            burst_typing: 10,
            rate_notifications: "60/60s".into(),
            burst_notifications: 30,
            rate_edits: "10/10s".into(),
            burst_edits: 10,
            rate_reactions: "30/10s".into(),
            burst_reactions: 20,
            rate_receipts: "60/10s".into(),
            burst_receipts: 20,
            points_per_message: 1,
            max_rooms_per_user: 500,
            introspection: true,
            max_body_bytes: 1024 * 1024,
            max_frame_bytes: 64 * 1024,
            ws_init_timeout: Duration::from_secs(10),
            ws_ping_interval: Duration::from_secs(15),
            ws_idle_timeout: Duration::from_secs(45),
            http_idle_timeout: Duration::from_secs(60),
            ws_queue: 1024,
            slow_consumer_timeout: Duration::from_secs(5),
            max_connections_per_user: 20,
            max_subscriptions: 100,
            broadcast_capacity: 1024,
            stored_broadcast_capacity: 64,
            presence_grace: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(15),
            typing_timeout: Duration::from_secs(5),
            leaderboard_interval: Duration::from_millis(250),
            rate_sign_in_address: "30/60s".into(),
            burst_sign_in_address: 30,
            rate_sign_in_username: "10/60s".into(),
            burst_sign_in_username: 10,
            max_batch: 10,
            graphql_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            max_anonymous_per_address: 100,
            trusted_proxies: Vec::new(),
            max_channels_per_socket: 100,
            max_subscriptions_per_user: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::redis::RedisTarget;

    fn with(change: impl FnOnce(&mut Config)) -> Result<Option<RedisTarget>, String> {
        let mut config = Config::for_database("sqlite::memory:");
        change(&mut config);
        config.redis()
    }

    #[test]
    fn one_kind_of_redis_at_most_and_a_sentinel_master_with_its_sentinels() {
        assert_eq!(with(|_| {}), Ok(None));
        assert_eq!(
            with(|c| c.redis_url = Some("redis://a:1".into())),
            Ok(Some(RedisTarget::Single("redis://a:1".into())))
        );
        assert_eq!(
            with(|c| c.redis_cluster = vec![" redis://a:1".into(), "".into(), "redis://b:2".into()]),
            Ok(Some(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ])))
        );
        assert_eq!(
            with(|c| {
                c.redis_sentinels = vec!["redis://s:1".into()];
                c.redis_sentinel_master = Some("main".into());
            }),
            Ok(Some(RedisTarget::Sentinel {
                sentinels: vec!["redis://s:1".into()],
                master: "main".into()
            }))
        );
        let two = with(|c| {
            c.redis_url = Some("redis://a:1".into());
            c.redis_cluster = vec!["redis://b:2".into()];
        });
        let message = two.expect_err("two kinds refused");
        for name in [
            "TIDINGS_REDIS_URL",
            "TIDINGS_REDIS_CLUSTER",
            "TIDINGS_REDIS_SENTINELS",
        ] {
            assert!(message.contains(name), "{message}");
        }
        let no_master = with(|c| c.redis_sentinels = vec!["redis://s:1".into()]);
        assert!(no_master
            .expect_err("a master name is needed")
            .contains("TIDINGS_REDIS_SENTINEL_MASTER"));
        let no_sentinels = with(|c| c.redis_sentinel_master = Some("main".into()));
        assert!(no_sentinels
            .expect_err("sentinels are needed")
            .contains("TIDINGS_REDIS_SENTINELS"));
    }
}
