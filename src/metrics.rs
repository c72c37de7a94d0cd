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
/// Transactions of the message writer (each commits a batch of sends).
pub const MESSAGE_BATCHES: &str = "tidings_message_batches_total";
/// Sends those transactions carried; over `MESSAGE_BATCHES`, the mean batch.
pub const MESSAGE_BATCH_SENDS: &str = "tidings_message_batch_sends_total";
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
/// WebSocket upgrades refused by a connection budget, by `reason`: `server_full`
/// (`TIDINGS_MAX_CONNECTIONS`, 503) or `address_full` (`TIDINGS_MAX_ANONYMOUS_PER_ADDRESS`, 429).
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
const REFUSAL_REASONS: [&str; 2] = ["server_full", "address_full"];
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
const TOPIC_KINDS: [&str; 7] = [
    ROOM_MESSAGES,
    ROOM_TYPING,
    USER_NOTIFICATIONS,
    PRESENCE,
    LEADERBOARD,
    CHANNEL,
    CONTROL,
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
    describe_gauge!(REDIS_UP, "1 while the Redis bridge is connected, else 0");
    describe_counter!(
        MESSAGE_BATCHES,
        "Transactions of the message writer, each committing a batch of sends"
    );
    describe_counter!(
        MESSAGE_BATCH_SENDS,
        "Sends carried by the message writer's transactions"
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
    for reason in GRAPHQL_REFUSAL_REASONS {
        counter!(GRAPHQL_REFUSED, "reason" => reason).absolute(0);
    }
    gauge!(COHORT_MEMBERS).set(0.0);
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

/// A GraphQL request was refused by a budget (`GRAPHQL_REFUSED`'s reasons).
pub fn graphql_refused(reason: &'static str) {
    counter!(GRAPHQL_REFUSED, "reason" => reason).increment(1);
}

/// The budgets' refusal counters: described, and present from the start.
fn describe_budgets() {
    describe_counter!(
        CONNECTIONS_REFUSED,
        "WebSocket upgrades refused by a connection budget, by reason"
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
