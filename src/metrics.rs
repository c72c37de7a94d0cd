//! Every metric Tidings exports, named in this one place, and the Prometheus recorder that
//! `GET /metrics` renders.
//!
//! The `metrics` facade is a no-op until a recorder is installed: `App::build` calls `install`
//! before the hub and the domain start, so nothing they record is lost. Recording is cheap (an
//! atomic add after a registry lookup) and never fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::hub::Topic;

/// Open connections (WebSockets and HTTP streams), by `transport`.
pub const CONNECTIONS: &str = "tidings_connections";
/// Live hub subscriptions (one per subscribed topic and subscriber), by topic `kind`.
pub const SUBSCRIPTIONS: &str = "tidings_subscriptions";
/// Events published on the hub, by topic `kind`.
pub const EVENTS_PUBLISHED: &str = "tidings_events_published_total";
/// Events handed to local subscribers (one per subscriber reached), by topic `kind`.
pub const EVENTS_DELIVERED: &str = "tidings_events_delivered_total";
/// From an event's creation to the write of its frame to a socket, by `transport` and `kind`.
pub const DELIVERY_LATENCY: &str = "tidings_delivery_latency_seconds";
/// Connections closed because they stopped reading (1008 slow consumer), by `transport`.
pub const SLOW_CONSUMERS: &str = "tidings_slow_consumers_total";
/// Requests and frames refused by a rate limit, by `action`.
pub const RATE_LIMITED: &str = "tidings_rate_limited_total";
/// Shared executions started (a cohort of equal subscriptions runs one).
pub const COHORTS_STARTED: &str = "tidings_cohort_executions_total";
/// Subscriptions served by a shared execution right now.
pub const COHORT_MEMBERS: &str = "tidings_cohort_members";
/// Times the Redis bridge lost its connection.
pub const REDIS_DISCONNECTS: &str = "tidings_redis_disconnects_total";
/// Events from Redis this version could not read (another wire version, or garbage).
pub const REDIS_UNDECODABLE: &str = "tidings_redis_undecodable_total";
/// Topics the Redis bridge (re)subscribed and told their subscribers to check the database
/// for what they may have missed: a new topic, a reconnect, a shard's failover.
pub const REDIS_RESYNCS: &str = "tidings_redis_resyncs_total";
/// Times the bridge's queue of what a Redis Cluster pushed (`TIDINGS_REDIS_CLUSTER`) was full:
/// events were dropped, and every topic resyncs from the database.
pub const REDIS_PUSH_OVERFLOWS: &str = "tidings_redis_push_overflows_total";
/// Channel events published, by channel `kind` (public, broadcast, user, role, room).
pub const CHANNEL_PUBLISHED: &str = "tidings_channel_events_published_total";
/// Channel events handed to subscribers, by channel `kind`.
pub const CHANNEL_DELIVERED: &str = "tidings_channel_events_delivered_total";
/// Channel events a slow subscriber missed (they are not kept), by channel `kind`.
pub const CHANNEL_MISSED: &str = "tidings_channel_events_missed_total";
const CHANNEL_KINDS: [&str; 5] = ["public", "broadcast", "user", "role", "room"];
const RATE_ACTIONS: [&str; 6] = [
    "message",
    "typing",
    "notification",
    "edit",
    "reaction",
    "receipt",
];
/// Admin actions stored in the log, by `action` (`disconnect`, `publish`, `notify`).
pub const ADMIN_ACTIONS: &str = "tidings_admin_actions_total";
const ADMIN_ACTION_KINDS: [&str; 3] = ["disconnect", "publish", "notify"];
/// Transactions of the message writer (each commits a batch of sends).
pub const MESSAGE_BATCHES: &str = "tidings_message_batches_total";
/// Sends those transactions carried; over `MESSAGE_BATCHES`, the mean batch.
pub const MESSAGE_BATCH_SENDS: &str = "tidings_message_batch_sends_total";
/// Batches of the sign-in reader (each reads, and provisions, the users of the token sign-ins
/// waiting together).
pub const SIGN_IN_BATCHES: &str = "tidings_sign_in_batches_total";
/// Sign-ins those batches carried; over `SIGN_IN_BATCHES`, the mean batch.
pub const SIGN_IN_BATCH_USERS: &str = "tidings_sign_in_batch_users_total";
/// Users whose presence this instance keeps: every user online on any instance (each instance
/// learns every announcement), and those announced offline.
pub const PRESENCE_KNOWN: &str = "tidings_presence_known_users";
/// HTTP connections closed for sending nothing for `TIDINGS_HTTP_IDLE_TIMEOUT`.
pub const HTTP_IDLE_CLOSED: &str = "tidings_http_idle_closed_total";
/// 1 while the Redis bridge is connected; 0 when it is down or Redis is not configured.
pub const REDIS_UP: &str = "tidings_redis_up";
/// `login` and `register` calls refused before any password work, by the `limit` they hit:
/// `address` (sign-ins from one client address), `username` (sign-ins naming one username),
/// `busy` (every password check slot stayed taken).
pub const SIGN_IN_REFUSED: &str = "tidings_sign_in_refused_total";
const SIGN_IN_LIMITS: [&str; 3] = ["address", "username", "busy"];
/// `authenticate` calls on live connections, by `outcome`: `renewed` (the connection now uses
/// the new token), `refused` (no connection, an anonymous one, or an invalid, expired or
/// revoked token: nothing changed), `forbidden` (another user's token: nothing changed).
pub const TOKEN_RENEWALS: &str = "tidings_token_renewals_total";
const RENEWAL_OUTCOMES: [&str; 3] = ["renewed", "refused", "forbidden"];
/// GraphQL requests refused by a budget, by `reason`: `batch` (too many operations in one
/// POST), `cost` (depth, complexity, aliases: `TOO_COMPLEX`), `page` (a page size, or a list of
/// ids, over its maximum), `timeout` (the request's time budget ran out), `body` (an HTTP body
/// over `TIDINGS_MAX_BODY_BYTES`).
pub const GRAPHQL_REFUSED: &str = "tidings_graphql_refused_total";
const GRAPHQL_REFUSAL_REASONS: [&str; 5] = ["batch", "cost", "page", "timeout", "body"];
/// Connections (WebSockets, HTTP streams) refused by a connection budget, by `reason`:
/// `server_full` (`TIDINGS_MAX_CONNECTIONS`, 503), `address_full`
/// (`TIDINGS_MAX_ANONYMOUS_PER_ADDRESS`, 429) or `user_full` (`TIDINGS_MAX_CONNECTIONS_PER_USER`:
/// a socket closes with its protocol's code, a stream gets 429).
pub const CONNECTIONS_REFUSED: &str = "tidings_connections_refused_total";
/// Subscriptions (GraphQL operations, `/ws` channels) refused by a budget, by `budget`:
/// `socket` (what one socket may follow) or `user` (what one user may, over all their sockets).
pub const SUBSCRIPTIONS_REFUSED: &str = "tidings_subscriptions_refused_total";
/// Reactions refused by a budget, by `budget`: `emojis` (distinct emoji on one message,
/// `MAX_EMOJIS_PER_MESSAGE`) or `user` (one user's emoji on one message,
/// `MAX_REACTIONS_PER_USER`).
pub const REACTIONS_REFUSED: &str = "tidings_reactions_refused_total";
const REACTION_BUDGETS: [&str; 2] = ["emojis", "user"];
/// Read receipts, by `outcome`: `announced` (a numbered receipt event went to the room),
/// `deferred` (stored, and announced at the end of the user's interval, folded with any later
/// ones), `unchanged` (not past the user's last one: nothing stored).
pub const READ_RECEIPTS: &str = "tidings_read_receipts_total";
/// Transactions of the read receipt writer: each stores every receipt waiting and announces
/// every one whose turn has come (receipts per batch = receipts / batches).
pub const READ_RECEIPT_BATCHES: &str = "tidings_read_receipt_batches_total";
const RECEIPT_OUTCOMES: [&str; 3] = ["announced", "deferred", "unchanged"];
const REFUSAL_REASONS: [&str; 3] = ["server_full", "address_full", "user_full"];
const SUBSCRIPTION_BUDGETS: [&str; 2] = ["socket", "user"];

/// Latency buckets, in seconds: a local delivery takes well under a millisecond, one across
/// instances a few; the tail shows slow consumers and catch-ups.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// How often recorded latencies are folded into their buckets between scrapes, so an instance
/// nobody scrapes does not keep every sample.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The WebSocket transports, as the `transport` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// GraphQL over WebSocket at `/graphql` (both subprotocols).
    GraphqlWs,
    /// The legacy JSON protocol at `/ws` and its other paths.
    LegacyWs,
    /// Server-Sent Events (graphql-sse) at `/graphql/stream` and `/graphql`.
    Sse,
    /// Multipart HTTP subscriptions (Apollo Client's `HttpLink`) at `/graphql`.
    Multipart,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::GraphqlWs,
        Transport::LegacyWs,
        Transport::Sse,
        Transport::Multipart,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Transport::GraphqlWs => "graphql_ws",
            Transport::LegacyWs => "legacy_ws",
            Transport::Sse => "sse",
            Transport::Multipart => "multipart",
        }
    }
}

/// Topic kinds, as the `kind` label names them (a topic's id would make one series per room
/// and user).
pub const ROOM_MESSAGES: &str = "room_messages";
pub const ROOM_TYPING: &str = "room_typing";
pub const USER_NOTIFICATIONS: &str = "user_notifications";
pub const PRESENCE: &str = "presence";
pub const LEADERBOARD: &str = "leaderboard";
pub const CHANNEL: &str = "channel";
pub const CONTROL: &str = "control";
pub const STATS: &str = "stats";
const TOPIC_KINDS: [&str; 8] = [
    ROOM_MESSAGES,
    ROOM_TYPING,
    USER_NOTIFICATIONS,
    PRESENCE,
    LEADERBOARD,
    CHANNEL,
    CONTROL,
    STATS,
];

pub fn topic_kind(topic: &Topic) -> &'static str {
    match topic {
        Topic::RoomMessages(_) => ROOM_MESSAGES,
        Topic::RoomTyping(_) => ROOM_TYPING,
        Topic::UserNotifications(_) => USER_NOTIFICATIONS,
        Topic::Presence => PRESENCE,
        Topic::Leaderboard => LEADERBOARD,
        Topic::Channel(_) => CHANNEL,
        Topic::Control => CONTROL,
        Topic::Stats => STATS,
    }
}

/// The installed recorder's handle; `None` when another recorder was installed first (an
/// application embedding Tidings that brought its own).
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
/// Kept apart from the gauge so a state set before `install` is not lost.
static REDIS_CONNECTED: AtomicBool = AtomicBool::new(false);

/// Installs the Prometheus recorder (once per process) and folds latencies into buckets until
/// `shutdown`.
pub fn install(shutdown: &CancellationToken) {
    let handle = HANDLE.get_or_init(|| {
        let builder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.to_owned()), LATENCY_BUCKETS)
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: invalid latency buckets");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "metrics: another recorder is installed; /metrics is off");
            return None;
        }
        describe();
        register_at_zero();
        describe_budgets();
        Some(handle)
    });
    if let Some(handle) = handle.clone() {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        });
    }
}

fn describe() {
    describe_gauge!(CONNECTIONS, "Open WebSocket connections, by transport");
    describe_gauge!(
        SUBSCRIPTIONS,
        "Live hub subscriptions, by topic kind (a subscriber per topic it follows)"
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events published on the hub, by topic kind"
    );
    describe_counter!(
        EVENTS_DELIVERED,
        "Events handed to local subscribers (one per subscriber reached), by topic kind"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From an event's creation to the write of its frame to a socket"
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections closed with 1008 because they stopped reading, by transport"
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests and frames refused by a rate limit, by action"
    );
    describe_counter!(
        REDIS_DISCONNECTS,
        "Times the Redis bridge lost its connection"
    );
    describe_counter!(
        REDIS_UNDECODABLE,
        "Events from Redis this version could not read"
    );
    describe_counter!(
        REDIS_RESYNCS,
        "Topics the Redis bridge (re)subscribed, whose subscribers then checked the database"
    );
    describe_counter!(
        REDIS_PUSH_OVERFLOWS,
        "Times the queue of Redis Cluster pushes was full (events dropped, every topic resynced)"
    );
    describe_counter!(
        CHANNEL_PUBLISHED,
        "Channel events published, by channel kind"
    );
    describe_counter!(
        CHANNEL_DELIVERED,
        "Channel events handed to subscribers, by channel kind"
    );
    describe_counter!(
        CHANNEL_MISSED,
        "Channel events a slow subscriber missed, by channel kind"
    );
    describe_counter!(
        ADMIN_ACTIONS,
        "Admin actions stored in the log, by action (disconnect, publish, notify)"
    );
    describe_gauge!(REDIS_UP, "1 while the Redis bridge is connected, else 0");
    describe_counter!(
        HTTP_IDLE_CLOSED,
        "HTTP connections closed for sending nothing for TIDINGS_HTTP_IDLE_TIMEOUT"
    );
    describe_gauge!(
        PRESENCE_KNOWN,
        "Users whose presence this instance keeps (online anywhere, or announced offline)"
    );
    describe_counter!(
        MESSAGE_BATCHES,
        "Transactions of the message writer, each committing a batch of sends"
    );
    describe_counter!(
        MESSAGE_BATCH_SENDS,
        "Sends carried by the message writer's transactions"
    );
    describe_counter!(
        SIGN_IN_BATCHES,
        "Batches of the sign-in reader, each reading the users of the token sign-ins waiting"
    );
    describe_counter!(
        SIGN_IN_BATCH_USERS,
        "Token sign-ins carried by the sign-in reader's batches"
    );
    describe_counter!(
        SIGN_IN_REFUSED,
        "Sign-ins (login, register) refused, by the limit they hit"
    );
    describe_counter!(
        TOKEN_RENEWALS,
        "Token renewals on live connections (authenticate), by outcome"
    );
    describe_counter!(
        GRAPHQL_REFUSED,
        "GraphQL requests refused by a budget (batch size, cost, page size, time, body size), by reason"
    );
}

/// Every series a dashboard expects to find, present from the start rather than from its first
/// event.
fn register_at_zero() {
    for transport in Transport::ALL {
        gauge!(CONNECTIONS, "transport" => transport.label()).set(0.0);
        counter!(SLOW_CONSUMERS, "transport" => transport.label()).absolute(0);
    }
    for kind in TOPIC_KINDS {
        gauge!(SUBSCRIPTIONS, "kind" => kind).set(0.0);
        counter!(EVENTS_PUBLISHED, "kind" => kind).absolute(0);
        counter!(EVENTS_DELIVERED, "kind" => kind).absolute(0);
    }
    for action in RATE_ACTIONS {
        counter!(RATE_LIMITED, "action" => action).absolute(0);
    }
    for kind in CHANNEL_KINDS {
        counter!(CHANNEL_PUBLISHED, "kind" => kind).absolute(0);
        counter!(CHANNEL_DELIVERED, "kind" => kind).absolute(0);
    }
    counter!(REDIS_DISCONNECTS).absolute(0);
    counter!(REDIS_RESYNCS).absolute(0);
    counter!(REDIS_PUSH_OVERFLOWS).absolute(0);
    counter!(COHORTS_STARTED).absolute(0);
    counter!(MESSAGE_BATCHES).absolute(0);
    counter!(MESSAGE_BATCH_SENDS).absolute(0);
    counter!(SIGN_IN_BATCHES).absolute(0);
    counter!(SIGN_IN_BATCH_USERS).absolute(0);
    for reason in GRAPHQL_REFUSAL_REASONS {
        counter!(GRAPHQL_REFUSED, "reason" => reason).absolute(0);
    }
    gauge!(COHORT_MEMBERS).set(0.0);
    gauge!(PRESENCE_KNOWN).set(0.0);
    counter!(HTTP_IDLE_CLOSED).absolute(0);
    for action in ADMIN_ACTION_KINDS {
        counter!(ADMIN_ACTIONS, "action" => action).absolute(0);
    }
    for limit in SIGN_IN_LIMITS {
        counter!(SIGN_IN_REFUSED, "limit" => limit).absolute(0);
    }
    for outcome in RENEWAL_OUTCOMES {
        counter!(TOKEN_RENEWALS, "outcome" => outcome).absolute(0);
    }
    gauge!(REDIS_UP).set(if REDIS_CONNECTED.load(Ordering::Relaxed) {
        1.0
    } else {
        0.0
    });
}

/// The current metrics in Prometheus' text format; `None` when this process has no recorder
/// of ours.
pub fn render() -> Option<String> {
    HANDLE.get()?.as_ref().map(PrometheusHandle::render)
}

/// The Redis bridge connected (`true`) or lost its connection (`false`).
pub fn set_redis_up(up: bool) {
    REDIS_CONNECTED.store(up, Ordering::Relaxed);
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn connection_opened(transport: Transport) {
    gauge!(CONNECTIONS, "transport" => transport.label()).increment(1.0);
}

pub fn connection_closed(transport: Transport) {
    gauge!(CONNECTIONS, "transport" => transport.label()).decrement(1.0);
}

pub fn subscribed(topic: &Topic) {
    gauge!(SUBSCRIPTIONS, "kind" => topic_kind(topic)).increment(1.0);
}

pub fn unsubscribed(topic: &Topic) {
    gauge!(SUBSCRIPTIONS, "kind" => topic_kind(topic)).decrement(1.0);
}

/// One event published on `topic`, reaching `subscribers` local subscribers.
pub fn published(topic: &Topic, subscribers: usize) {
    let kind = topic_kind(topic);
    counter!(EVENTS_PUBLISHED, "kind" => kind).increment(1);
    counter!(EVENTS_DELIVERED, "kind" => kind).increment(subscribers as u64);
}

/// A frame for an event created at `created` (of topic kind `kind`) was written to a socket.
pub fn frame_written(transport: Transport, kind: &'static str, created: DateTime<Utc>) {
    let seconds = (Utc::now() - created)
        .to_std()
        .map(|d| d.as_secs_f64())
        // A clock step can put `created` in the future: count it as instant.
        .unwrap_or(0.0);
    histogram!(DELIVERY_LATENCY, "transport" => transport.label(), "kind" => kind).record(seconds);
}

pub fn slow_consumer(transport: Transport) {
    counter!(SLOW_CONSUMERS, "transport" => transport.label()).increment(1);
}

/// The Redis bridge lost its connection.
pub fn redis_disconnected() {
    counter!(REDIS_DISCONNECTS).increment(1);
}

/// The bridge told the subscribers of `topics` topics to check the database.
pub fn redis_resynced(topics: usize) {
    counter!(REDIS_RESYNCS).increment(topics as u64);
}

/// The queue of Redis Cluster pushes was full.
pub fn redis_push_overflowed() {
    counter!(REDIS_PUSH_OVERFLOWS).increment(1);
}

/// An event from Redis this version could not read.
pub fn redis_undecodable() {
    counter!(REDIS_UNDECODABLE).increment(1);
}

/// A backend published an event to a channel of this kind.
pub fn channel_published(kind: &'static str) {
    counter!(CHANNEL_PUBLISHED, "kind" => kind).increment(1);
}

/// A channel event reached one subscriber.
pub fn channel_delivered(kind: &'static str) {
    counter!(CHANNEL_DELIVERED, "kind" => kind).increment(1);
}

/// A slow subscriber missed channel events.
pub fn channel_lagged(kind: &'static str, missed: u64) {
    counter!(CHANNEL_MISSED, "kind" => kind).increment(missed);
}

/// A request was refused by a per-user rate limit.
pub fn rate_limited(action: &'static str) {
    counter!(RATE_LIMITED, "action" => action).increment(1);
}

/// The sign-in reader read a batch of `users` sign-ins.
pub fn sign_in_batch(users: usize) {
    counter!(SIGN_IN_BATCHES).increment(1);
    counter!(SIGN_IN_BATCH_USERS).increment(users as u64);
}

/// A sign-in was refused by `limit` (`address`, `username` or `busy`).
pub fn sign_in_refused(limit: &'static str) {
    counter!(SIGN_IN_REFUSED, "limit" => limit).increment(1);
}

/// An `authenticate` call ended with `outcome` (`renewed`, `refused`, `forbidden`).
pub fn token_renewal(outcome: &'static str) {
    counter!(TOKEN_RENEWALS, "outcome" => outcome).increment(1);
}

/// A cohort started its shared execution.
pub fn cohort_started() {
    counter!(COHORTS_STARTED).increment(1);
}

/// A subscription joined (`true`) or left (`false`) a cohort.
pub fn cohort_member(joined: bool) {
    let g = gauge!(COHORT_MEMBERS);
    if joined {
        g.increment(1.0)
    } else {
        g.decrement(1.0)
    }
}

/// An HTTP connection was closed for being idle.
pub fn http_idle_closed() {
    counter!(HTTP_IDLE_CLOSED).increment(1);
}

/// Presence now keeps `users` users.
pub fn presence_known(users: usize) {
    gauge!(PRESENCE_KNOWN).set(users as f64);
}

/// A GraphQL request was refused by a budget (`GRAPHQL_REFUSED`'s reasons).
pub fn graphql_refused(reason: &'static str) {
    counter!(GRAPHQL_REFUSED, "reason" => reason).increment(1);
}

/// The budgets' refusal counters: described, and present from the start.
fn describe_budgets() {
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections (WebSockets, HTTP streams) refused by a connection budget, by reason"
    );
    describe_counter!(
        SUBSCRIPTIONS_REFUSED,
        "Subscriptions and channels refused by a budget, by budget (socket, user)"
    );
    for reason in REFUSAL_REASONS {
        counter!(CONNECTIONS_REFUSED, "reason" => reason).absolute(0);
    }
    for budget in SUBSCRIPTION_BUDGETS {
        counter!(SUBSCRIPTIONS_REFUSED, "budget" => budget).absolute(0);
    }
    describe_counter!(
        REACTIONS_REFUSED,
        "Reactions refused by a budget, by budget (emojis, user)"
    );
    for budget in REACTION_BUDGETS {
        counter!(REACTIONS_REFUSED, "budget" => budget).absolute(0);
    }
    describe_counter!(
        READ_RECEIPTS,
        "Read receipts, by outcome (announced, deferred, unchanged)"
    );
    for outcome in RECEIPT_OUTCOMES {
        counter!(READ_RECEIPTS, "outcome" => outcome).absolute(0);
    }
    describe_counter!(
        READ_RECEIPT_BATCHES,
        "Transactions of the read receipt writer (stores and announcements together)"
    );
    counter!(READ_RECEIPT_BATCHES).absolute(0);
}

/// A reaction was refused by the `budget` (see `REACTIONS_REFUSED`).
pub fn reaction_refused(budget: &'static str) {
    counter!(REACTIONS_REFUSED, "budget" => budget).increment(1);
}

/// The receipt writer committed one batch (see `READ_RECEIPT_BATCHES`).
pub fn read_receipt_batch() {
    counter!(READ_RECEIPT_BATCHES).increment(1);
}

/// A read receipt had this `outcome` (see `READ_RECEIPTS`).
pub fn read_receipt(outcome: &'static str) {
    counter!(READ_RECEIPTS, "outcome" => outcome).increment(1);
}

/// A WebSocket upgrade was refused for `reason` (see `CONNECTIONS_REFUSED`).
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// A subscription or channel was refused by the `budget` (see `SUBSCRIPTIONS_REFUSED`).
pub fn subscription_refused(budget: &'static str) {
    counter!(SUBSCRIPTIONS_REFUSED, "budget" => budget).increment(1);
}

/// An admin action was stored in the log.
pub fn admin_action(action: &'static str) {
    counter!(ADMIN_ACTIONS, "action" => action).increment(1);
}

/// This instance's figures, read from the recorder once a second for the operator console:
/// what the hot path already counts, read back, so the console adds no work where events are
/// delivered. Rates and latency percentiles are over the time since the previous reading.
#[derive(Default)]
pub struct Sampler {
    previous: Option<Reading>,
}

/// The recorder's counters and gauges at one moment, as the console reads them.
#[derive(Clone, Debug, Default)]
struct Reading {
    at: Option<std::time::Instant>,
    connections: Vec<(String, u64)>,
    subscriptions: Vec<(String, u64)>,
    cohort_members: u64,
    published: u64,
    delivered: u64,
    slow_consumers: u64,
    refusals: Vec<(String, u64)>,
    /// Cumulative latency counts by upper bound (seconds), every series together.
    latency: Vec<(f64, u64)>,
}

/// What a `Sampler` reads: counts now, and the rates since its previous reading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub connections: Vec<(String, u64)>,
    pub subscriptions: Vec<(String, u64)>,
    pub cohort_members: u64,
    pub events_published: u64,
    pub events_delivered: u64,
    pub published_per_second: f64,
    pub delivered_per_second: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub slow_consumers: u64,
    pub refusals: Vec<(String, u64)>,
    pub redis_up: bool,
}

impl Sampler {
    /// Reads the figures now; `None` without a recorder of ours.
    pub fn sample(&mut self) -> Option<Sample> {
        let mut reading = parse(&render()?);
        reading.at = Some(std::time::Instant::now());
        let sample = self.compare(&reading);
        self.previous = Some(reading);
        Some(sample)
    }

    fn compare(&self, now: &Reading) -> Sample {
        let (rates, latency) = match &self.previous {
            Some(before) => {
                let seconds = match (before.at, now.at) {
                    (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
                    _ => 1.0,
                }
                .max(1e-3);
                let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
                let buckets: Vec<(f64, u64)> = now
                    .latency
                    .iter()
                    .map(|(le, n)| {
                        let had = before
                            .latency
                            .iter()
                            .find(|(l, _)| l == le)
                            .map_or(0, |(_, n)| *n);
                        (*le, n.saturating_sub(had))
                    })
                    .collect();
                (
                    (
                        rate(before.published, now.published),
                        rate(before.delivered, now.delivered),
                    ),
                    buckets,
                )
            }
            None => ((0.0, 0.0), Vec::new()),
        };
        Sample {
            connections: now.connections.clone(),
            subscriptions: now.subscriptions.clone(),
            cohort_members: now.cohort_members,
            events_published: now.published,
            events_delivered: now.delivered,
            published_per_second: rates.0,
            delivered_per_second: rates.1,
            latency_p50_ms: percentile(&latency, 0.50),
            latency_p99_ms: percentile(&latency, 0.99),
            slow_consumers: now.slow_consumers,
            refusals: now.refusals.clone(),
            redis_up: REDIS_CONNECTED.load(Ordering::Relaxed),
        }
    }
}

/// The `q` quantile, in milliseconds, of cumulative bucket counts (upper bound in seconds,
/// ascending), interpolated within its bucket; `None` when nothing was recorded.
fn percentile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.iter().map(|(_, n)| *n).max()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let within = (n - lower.1).max(1) as f64;
            let fraction = ((rank - lower.1 as f64) / within).clamp(0.0, 1.0);
            return Some((lower.0 + (le - lower.0) * fraction) * 1000.0);
        }
        lower = (le, n);
    }
    Some(lower.0 * 1000.0)
}

/// Reads the series the console shows from the Prometheus text.
fn parse(text: &str) -> Reading {
    let mut r = Reading::default();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let count = if value.is_finite() && value > 0.0 {
            value.round() as u64
        } else {
            0
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let label = |key: &str| -> Option<String> {
            labels.split("\",").find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_owned())
            })
        };
        let add = |list: &mut Vec<(String, u64)>, key: String, n: u64| match list
            .iter_mut()
            .find(|(k, _)| *k == key)
        {
            Some((_, v)) => *v += n,
            None => list.push((key, n)),
        };
        match name {
            CONNECTIONS => add(
                &mut r.connections,
                label("transport").unwrap_or_default(),
                count,
            ),
            SUBSCRIPTIONS => add(
                &mut r.subscriptions,
                label("kind").unwrap_or_default(),
                count,
            ),
            COHORT_MEMBERS => r.cohort_members = count,
            // The console's own figures are not the deployment's traffic.
            EVENTS_PUBLISHED if label("kind").as_deref() != Some(STATS) => r.published += count,
            EVENTS_DELIVERED if label("kind").as_deref() != Some(STATS) => r.delivered += count,
            SLOW_CONSUMERS => r.slow_consumers += count,
            CONNECTIONS_REFUSED => add(
                &mut r.refusals,
                format!("connections:{}", label("reason").unwrap_or_default()),
                count,
            ),
            SUBSCRIPTIONS_REFUSED => add(
                &mut r.refusals,
                format!("subscriptions:{}", label("budget").unwrap_or_default()),
                count,
            ),
            RATE_LIMITED => add(
                &mut r.refusals,
                format!("rate:{}", label("action").unwrap_or_default()),
                count,
            ),
            GRAPHQL_REFUSED => add(
                &mut r.refusals,
                format!("graphql:{}", label("reason").unwrap_or_default()),
                count,
            ),
            SIGN_IN_REFUSED => add(
                &mut r.refusals,
                format!("sign_in:{}", label("limit").unwrap_or_default()),
                count,
            ),
            _ if name.strip_suffix("_bucket") == Some(DELIVERY_LATENCY) => {
                let le = match label("le").as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse::<f64>() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                match r.latency.iter_mut().find(|(l, _)| *l == le) {
                    Some((_, n)) => *n += count,
                    None => r.latency.push((le, count)),
                }
            }
            _ => {}
        }
    }
    r.latency
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    // In name order: the recorder's own order varies from one reading to the next.
    for list in [&mut r.connections, &mut r.subscriptions, &mut r.refusals] {
        list.sort();
    }
    r
}

#[cfg(test)]
mod sampler_tests {
    use super::*;

    const TEXT: &str = "# TYPE tidings_connections gauge\n\
        tidings_connections{transport=\"legacy_ws\"} 1\n\
        tidings_connections{transport=\"graphql_ws\"} 3\n\
        tidings_events_published_total{kind=\"room_messages\"} 10\n\
        tidings_events_delivered_total{kind=\"room_messages\"} 30\n\
        tidings_events_published_total{kind=\"stats\"} 7\n\
        tidings_connections_refused_total{reason=\"server_full\"} 2\n\
        tidings_delivery_latency_seconds_bucket{transport=\"graphql_ws\",kind=\"room_messages\",le=\"0.001\"} 50\n\
        tidings_delivery_latency_seconds_bucket{transport=\"graphql_ws\",kind=\"room_messages\",le=\"0.01\"} 99\n\
        tidings_delivery_latency_seconds_bucket{transport=\"graphql_ws\",kind=\"room_messages\",le=\"+Inf\"} 100\n";

    #[test]
    fn the_console_reads_counts_and_refusals_from_the_exposition() {
        let r = parse(TEXT);
        assert_eq!(
            r.connections,
            vec![("graphql_ws".to_owned(), 3), ("legacy_ws".to_owned(), 1)],
            "in name order"
        );
        assert_eq!((r.published, r.delivered), (10, 30));
        assert_eq!(r.refusals, vec![("connections:server_full".to_owned(), 2)]);
        assert_eq!(r.latency.len(), 3);
    }

    #[test]
    fn percentiles_come_from_the_buckets_filled_since_the_last_reading() {
        let r = parse(TEXT);
        let p50 = percentile(&r.latency, 0.5).expect("a p50");
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        let p99 = percentile(&r.latency, 0.99).expect("a p99");
        assert!((p99 - 10.0).abs() < 1e-9, "{p99}");
        assert_eq!(percentile(&[(0.001, 0), (f64::INFINITY, 0)], 0.5), None);
        let sampler = Sampler {
            previous: Some(r.clone()),
        };
        let same = sampler.compare(&r);
        assert_eq!(same.latency_p50_ms, None, "nothing new was delivered");
        assert_eq!(same.published_per_second, 0.0);
    }
}
