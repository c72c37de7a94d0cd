//! The Redis bridge: every event this instance publishes also goes to Redis, and events other
//! instances publish come back into the local topics. Redis is followed per topic, only for
//! topics with local subscribers, so an instance hears only what it delivers.
//!
//! Three shapes of Redis (`RedisTarget`), one behaviour:
//! - one node (`TIDINGS_REDIS_URL`): `PUBLISH`/`SUBSCRIBE`, one channel per topic;
//! - a master watched by Sentinels (`TIDINGS_REDIS_SENTINELS`): the same, on whichever node the
//!   Sentinels name master, asked again on every reconnect;
//! - a Redis Cluster (`TIDINGS_REDIS_CLUSTER`): sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), so a
//!   topic's events travel only through the shard that owns its channel's slot, instead of
//!   being broadcast to every node as classic pub/sub in a cluster is.
//!
//! When Redis (or a shard of it) goes away, local delivery and every write go on; the bridge
//! reconnects with backoff, resubscribes, and tells local subscribers to check the database for
//! what they may have missed (messages and notifications are numbered, so nothing is lost).
//! After a shard's failover that is the same: each topic that the new master confirms again
//! resyncs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, PushInfo, PushKind, RedisFuture, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::{Envelope, WIRE_VERSION};
use super::{Event, Hub, Topic};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle subscription connection is checked (a hung Redis does not close it).
const PING_EVERY: Duration = Duration::from_secs(5);
/// How often a cluster's masters are checked (see `cluster_masters`).
const CLUSTER_PING_EVERY: Duration = Duration::from_secs(1);
/// Failed checks in a row after which the cluster connection is rebuilt from the seed nodes.
const CLUSTER_PINGS_BEFORE_REBUILD: u32 = 3;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Events sent to Redis in one round trip at most.
const PUBLISH_BATCH: usize = 256;
/// What a cluster pushed (events, confirmations) and the bridge has not relayed yet. Past it
/// the pushes are dropped and every topic resyncs from the database.
const PUSH_QUEUE: usize = 64 * 1024;
/// Channels (un)subscribed at once on a cluster (one command each: a sharded subscription
/// names channels of one slot only).
const SUBSCRIBE_CONCURRENCY: usize = 64;

fn channel(topic: &Topic) -> String {
    format!("tidings:{topic}")
}

/// Which Redis the instances share (see `Config::redis`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One node.
    Single(String),
    /// The seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
    /// Sentinels, and the name under which they watch the master.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// A connection for commands (rate-limit buckets, presence counts, publishing) to whichever
/// Redis is configured; it reconnects by itself. Clones share it.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    /// Routes each command to the master of its key's slot.
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
            RedisConnection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
            RedisConnection::Sentinel(c) => c.get_db(),
        }
    }
}

/// Commands to the master that the Sentinels name. The crate's Sentinel client finds the
/// master but gives a plain connection to it, which would go on talking to the old master after
/// a failover; this one forgets its connection on a connection error or a `READONLY` answer
/// (the old master came back as a replica) and asks the Sentinels again on the next command.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<SentinelShared>,
}

struct SentinelShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: std::sync::Mutex<Option<MultiplexedConnection>>,
}

impl SentinelConnection {
    fn new(sentinel: SentinelClient) -> Self {
        Self {
            shared: Arc::new(SentinelShared {
                sentinel: tokio::sync::Mutex::new(sentinel),
                current: std::sync::Mutex::new(None),
            }),
        }
    }

    /// A client for the current master, as the Sentinels say.
    async fn master(&self) -> redis::RedisResult<redis::Client> {
        let mut sentinel = self.shared.sentinel.lock().await;
        tokio::time::timeout(COMMAND_TIMEOUT, sentinel.async_get_client())
            .await
            .map_err(|_| timed_out("asking the Sentinels for the master"))?
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.lock().clone() {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let conn = self
            .master()
            .await?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.lock() = Some(conn.clone());
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// After an error that means "not the master any more", the next command asks again.
    fn check<T>(&self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result {
            let readonly = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
            if readonly
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
            {
                self.lock().take();
            }
        }
        result
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let mut conn = self.connection().await?;
            let result = conn.req_packed_command(cmd).await;
            self.check(result)
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            let mut conn = self.connection().await?;
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            self.check(result)
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        0
    }
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, what))
}

/// Where the subscription side connects.
enum Source {
    Single(redis::Client),
    Sentinel(SentinelConnection),
    Cluster(Vec<String>),
}

pub struct RedisBridge {
    instance: String,
    connection: RedisConnection,
    up: AtomicBool,
    /// The task sending events to Redis, awaited at shutdown.
    publisher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl RedisBridge {
    /// Connects the hub to Redis. Starting while Redis is down is fine: the bridge keeps
    /// trying. Both tasks end with `shutdown`.
    pub fn start(
        target: &RedisTarget,
        instance: String,
        hub: Arc<Hub>,
        outbound: mpsc::Receiver<(Topic, Arc<Event>)>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let (connection, source) = match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(BACKOFF_MAX);
                let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection: {e}"))?;
                (RedisConnection::Single(connection), Source::Single(client))
            }
            RedisTarget::Sentinel { sentinels, master } => {
                let sentinel = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )
                .map_err(|e| anyhow::anyhow!("invalid TIDINGS_REDIS_SENTINELS: {e}"))?;
                let connection = SentinelConnection::new(sentinel);
                (
                    RedisConnection::Sentinel(connection.clone()),
                    Source::Sentinel(connection),
                )
            }
            RedisTarget::Cluster(seeds) => {
                let client = cluster_client(seeds)
                    .build()
                    .map_err(|e| anyhow::anyhow!("invalid TIDINGS_REDIS_CLUSTER: {e}"))?;
                let connection = client.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::default(),
                );
                (
                    RedisConnection::Cluster(connection),
                    Source::Cluster(seeds.clone()),
                )
            }
        };
        let bridge = Arc::new(Self {
            instance,
            connection,
            up: AtomicBool::new(false),
            publisher: std::sync::Mutex::new(None),
        });
        let publisher = tokio::spawn(bridge.clone().publish_loop(outbound, shutdown.clone()));
        *bridge.publisher.lock().unwrap_or_else(|p| p.into_inner()) = Some(publisher);
        match source {
            Source::Cluster(seeds) => {
                tokio::spawn(bridge.clone().cluster_subscribe_loop(seeds, hub, shutdown));
            }
            source => {
                tokio::spawn(bridge.clone().subscribe_loop(source, hub, shutdown));
            }
        }
        Ok(bridge)
    }

    /// After `shutdown`: waits (a few seconds at most) until what was queued for Redis is sent,
    /// so an instance's last announcements reach the others before it exits.
    pub async fn flushed(&self) {
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(publisher) = publisher {
            let _ = tokio::time::timeout(Duration::from_secs(5), publisher).await;
        }
    }

    /// Whether the bridge is connected and following its topics.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A connection for commands (it reconnects by itself).
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::SeqCst);
        if was != up {
            crate::metrics::set_redis_up(up);
            if up {
                tracing::info!("Redis bridge connected");
            } else {
                crate::metrics::redis_disconnected();
                tracing::warn!(
                    "Redis bridge disconnected: events stay on this instance until it returns"
                );
            }
        }
    }

    async fn publish_loop(
        self: Arc<Self>,
        mut outbound: mpsc::Receiver<(Topic, Arc<Event>)>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        let mut stopping = false;
        loop {
            let n = if stopping {
                // Shutting down: send what is already queued, then stop.
                while batch.len() < PUBLISH_BATCH {
                    match outbound.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                batch.len()
            } else {
                tokio::select! {
                    n = outbound.recv_many(&mut batch, PUBLISH_BATCH) => n,
                    _ = shutdown.cancelled() => {
                        stopping = true;
                        continue;
                    }
                }
            };
            if n == 0 {
                break;
            }
            let mut messages = Vec::with_capacity(n);
            for (topic, event) in batch.drain(..) {
                let envelope = Envelope {
                    v: WIRE_VERSION,
                    origin: self.instance.clone(),
                    topic,
                    event: (*event).clone(),
                };
                match serde_json::to_string(&envelope) {
                    Ok(payload) => messages.push((channel(&envelope.topic), payload)),
                    Err(e) => tracing::error!(error = %e, "cannot encode an event for Redis"),
                }
            }
            if !self.is_up() && !stopping && !shutdown.is_cancelled() {
                // Nobody elsewhere hears these; they recover from the database. (At shutdown
                // the subscriber side is already gone, so try anyway: the last announcements
                // matter.)
                continue;
            }
            match self.send(messages).await {
                Ok(()) => tracing::trace!(events = n, "published to Redis"),
                Err(e) => tracing::debug!(error = %e, events = n, "Redis publish failed"),
            }
        }
    }

    /// Publishes `(channel, payload)` pairs: one pipeline to one node; on a cluster, one
    /// `SPUBLISH` each, all in flight at once (a pipeline may not span slots), each to the
    /// master of its channel's slot.
    async fn send(&self, messages: Vec<(String, String)>) -> redis::RedisResult<()> {
        let mut conn = self.connection.clone();
        if !matches!(conn, RedisConnection::Cluster(_)) {
            let mut pipe = redis::pipe();
            for (channel, payload) in messages {
                pipe.publish(channel, payload).ignore();
            }
            return pipe.query_async::<()>(&mut conn).await;
        }
        let sends = messages.into_iter().map(|(channel, payload)| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("SPUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<()>(&mut conn)
                    .await
            }
        });
        let results = futures_util::future::join_all(sends).await;
        results.into_iter().collect()
    }

    async fn subscribe_loop(
        self: Arc<Self>,
        source: Source,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        while !shutdown.is_cancelled() {
            let attempt = tokio::time::timeout(COMMAND_TIMEOUT, async {
                let client = match &source {
                    Source::Single(client) => client.clone(),
                    // Asked on every (re)connect: after a failover it names the new master.
                    Source::Sentinel(sentinel) => sentinel.master().await?,
                    Source::Cluster(_) => {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "a cluster is followed by cluster_subscribe_loop",
                        )))
                    }
                };
                client.get_async_pubsub().await
            })
            .await;
            let pubsub = match attempt {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Redis connect failed");
                    self.set_up(false);
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
                Err(_) => {
                    self.set_up(false);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let mut following = HashSet::new();
            if self.follow(&hub, &mut sink, &mut following).await.is_err() {
                continue;
            }
            backoff = BACKOFF_MIN;
            self.set_up(true);
            if connected_before {
                // Whatever other instances published while we were away was not heard.
                let topics = hub.topics();
                crate::metrics::redis_resynced(topics.len());
                for topic in topics {
                    hub.deliver_local(&topic, Arc::new(Event::Resync));
                }
            }
            connected_before = true;
            let mut ping =
                tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = hub.topics_changed() => {
                        if self.follow(&hub, &mut sink, &mut following).await.is_err() {
                            break;
                        }
                    }
                    _ = ping.tick() => {
                        // A subscribed connection answers PING with ["pong", ""]: any answer will do.
                        let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            break;
                        }
                    }
                    message = stream.next() => match message {
                        Some(message) => self.relay(&hub, message.get_payload_bytes()),
                        None => break,
                    },
                }
            }
            self.set_up(false);
        }
        self.set_up(false);
    }

    /// Subscribes to the channels of new local topics and leaves those of topics gone.
    async fn follow(
        &self,
        hub: &Hub,
        sink: &mut redis::aio::PubSubSink,
        following: &mut HashSet<Topic>,
    ) -> redis::RedisResult<()> {
        let wanted: HashSet<Topic> = hub.topics().into_iter().collect();
        let new: Vec<Topic> = wanted.difference(following).cloned().collect();
        let gone: Vec<Topic> = following.difference(&wanted).cloned().collect();
        if !new.is_empty() {
            let channels: Vec<String> = new.iter().map(channel).collect();
            tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(channels))
                .await
                .map_err(|_| timed_out("subscribe timed out"))??;
            // Between the local subscriber's start and this SUBSCRIBE, another instance may
            // have published: let persistent streams check the database once.
            crate::metrics::redis_resynced(new.len());
            for topic in &new {
                hub.deliver_local(topic, Arc::new(Event::Resync));
            }
            following.extend(new);
        }
        if !gone.is_empty() {
            let channels: Vec<String> = gone.iter().map(channel).collect();
            tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(channels))
                .await
                .map_err(|_| timed_out("unsubscribe timed out"))??;
            for topic in &gone {
                following.remove(topic);
            }
        }
        Ok(())
    }

    /// Follows a Redis Cluster with sharded pub/sub: one `SSUBSCRIBE` per topic, which the
    /// cluster client sends to the master of the channel's slot. Every subscription a master
    /// confirms resyncs its topic (the first time: the gap before the subscription; again after
    /// a reconnect: what was missed meanwhile). Once a second the bridge reads which masters
    /// serve which slots and pings each: a master that does not answer marks the bridge down
    /// (and three in a row rebuild the connection), and a changed map (a failover promoted a
    /// replica) rebuilds the connection from the seed nodes, whose subscriptions, all
    /// confirmed again, resync every topic.
    async fn cluster_subscribe_loop(
        self: Arc<Self>,
        seeds: Vec<String>,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        while !shutdown.is_cancelled() {
            let (pushes_tx, mut pushes) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
            let overflowed = Arc::new(AtomicBool::new(false));
            // The cluster client hands every push to this callback from its own task, through
            // an unbounded queue of its own: the callback must not wait, so a full queue drops
            // the push and says so.
            let push_sender = {
                let overflowed = overflowed.clone();
                move |info: PushInfo| -> Result<(), ()> {
                    match pushes_tx.try_send(info) {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            overflowed.store(true, Ordering::SeqCst);
                            Ok(())
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                    }
                }
            };
            let client = cluster_client(&seeds)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push_sender)
                .build();
            let attempt = match client {
                Ok(client) => {
                    tokio::time::timeout(COMMAND_TIMEOUT * 2, client.get_async_connection())
                        .await
                        .unwrap_or_else(|_| Err(timed_out("connecting to the cluster timed out")))
                }
                Err(e) => Err(e),
            };
            let mut conn = match attempt {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "Redis Cluster connect failed");
                    self.set_up(false);
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            // The masters as they were when the subscriptions were made: when they change (a
            // failover), the subscriptions are made again on the new ones.
            let checked = tokio::time::timeout(COMMAND_TIMEOUT * 2, cluster_masters(&mut conn))
                .await
                .unwrap_or_else(|_| Err(timed_out("checking the cluster's masters timed out")));
            let mut following: HashMap<String, Topic> = HashMap::new();
            let followed = match checked {
                Ok(masters) => self
                    .follow_shards(&hub, &conn, &mut following)
                    .await
                    .map(|()| masters),
                Err(e) => Err(e),
            };
            let masters = match followed {
                Ok(masters) => masters,
                Err(e) => {
                    tracing::debug!(error = %e, "Redis Cluster subscribe failed");
                    self.set_up(false);
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            self.set_up(true);
            let mut ping = tokio::time::interval_at(
                tokio::time::Instant::now() + CLUSTER_PING_EVERY,
                CLUSTER_PING_EVERY,
            );
            let mut failed_pings = 0;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = hub.topics_changed() => {
                        if self.follow_shards(&hub, &conn, &mut following).await.is_err() {
                            break;
                        }
                    }
                    _ = ping.tick() => {
                        let now = tokio::time::timeout(COMMAND_TIMEOUT * 2, cluster_masters(&mut conn))
                            .await
                            .unwrap_or_else(|_| Err(timed_out("checking the cluster's masters timed out")));
                        match now {
                            Ok(now) if now == masters => {
                                failed_pings = 0;
                                self.set_up(true);
                            }
                            Ok(_) => {
                                tracing::info!("the Redis Cluster's masters changed: subscribing again");
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "a Redis Cluster master does not answer");
                                failed_pings += 1;
                                self.set_up(false);
                                if failed_pings >= CLUSTER_PINGS_BEFORE_REBUILD {
                                    break;
                                }
                            }
                        }
                    }
                    push = pushes.recv() => match push {
                        Some(push) => {
                            if overflowed.swap(false, Ordering::SeqCst) {
                                crate::metrics::redis_push_overflowed();
                                tracing::warn!("Redis Cluster pushes came faster than relayed: every topic resyncs");
                                let topics = hub.topics();
                                crate::metrics::redis_resynced(topics.len());
                                for topic in topics {
                                    hub.deliver_local(&topic, Arc::new(Event::Resync));
                                }
                            }
                            if self.on_push(&hub, &mut conn, &following, push).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            self.set_up(false);
            // A rebuilt connection confirms every subscription again: each topic resyncs then.
        }
        self.set_up(false);
    }

    /// Sharded subscriptions for new local topics, and unsubscriptions for topics gone. A
    /// subscription is recorded before it is sent, so that its confirmation finds its topic.
    async fn follow_shards(
        &self,
        hub: &Hub,
        conn: &ClusterConnection,
        following: &mut HashMap<String, Topic>,
    ) -> redis::RedisResult<()> {
        let wanted: HashSet<Topic> = hub.topics().into_iter().collect();
        let gone: Vec<String> = following
            .iter()
            .filter(|(_, topic)| !wanted.contains(*topic))
            .map(|(channel, _)| channel.clone())
            .collect();
        let have: HashSet<&Topic> = following.values().collect();
        let new: Vec<Topic> = wanted
            .iter()
            .filter(|t| !have.contains(t))
            .cloned()
            .collect();
        for topic in new.iter() {
            following.insert(channel(topic), topic.clone());
        }
        for name in &gone {
            following.remove(name);
        }
        let mut commands: Vec<(bool, String)> = new.iter().map(|t| (true, channel(t))).collect();
        commands.extend(gone.into_iter().map(|c| (false, c)));
        let results: Vec<redis::RedisResult<()>> = futures_util::stream::iter(commands)
            .map(|(subscribe, name)| {
                let mut conn = conn.clone();
                async move {
                    let sent = async {
                        if subscribe {
                            conn.ssubscribe(&name).await
                        } else {
                            conn.sunsubscribe(&name).await
                        }
                    };
                    tokio::time::timeout(COMMAND_TIMEOUT, sent)
                        .await
                        .unwrap_or_else(|_| Err(timed_out("sharded (un)subscribe timed out")))
                }
            })
            .buffer_unordered(SUBSCRIBE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// One push from the cluster: an event to relay, a subscription confirmed (resync its
    /// topic), or a subscription the server dropped (the slot moved: subscribe again where it
    /// went).
    async fn on_push(
        &self,
        hub: &Hub,
        conn: &mut ClusterConnection,
        following: &HashMap<String, Topic>,
        push: PushInfo,
    ) -> redis::RedisResult<()> {
        let channel_name = || match push.data.first() {
            Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
            Some(Value::SimpleString(s)) => Some(s.as_str()),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage | PushKind::Message => match push.data.get(1) {
                Some(Value::BulkString(payload)) => self.relay(hub, payload),
                _ => crate::metrics::redis_undecodable(),
            },
            PushKind::SSubscribe => {
                if let Some(topic) = channel_name().and_then(|c| following.get(c)) {
                    // The first confirmation covers the time between the local subscriber's
                    // start and this subscription; a later one, a failover's gap.
                    crate::metrics::redis_resynced(1);
                    hub.deliver_local(topic, Arc::new(Event::Resync));
                }
            }
            PushKind::SUnsubscribe => {
                if let Some(name) = channel_name().filter(|c| following.contains_key(*c)) {
                    tracing::debug!(
                        channel = name,
                        "Redis Cluster dropped a subscription: subscribing again"
                    );
                    let name = name.to_owned();
                    tokio::time::timeout(COMMAND_TIMEOUT, conn.ssubscribe(name))
                        .await
                        .map_err(|_| timed_out("sharded subscribe timed out"))??;
                }
            }
            PushKind::Disconnection => {
                tracing::debug!("a Redis Cluster node connection closed; the client reconnects");
            }
            _ => {}
        }
        Ok(())
    }

    fn relay(&self, hub: &Hub, payload: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                crate::metrics::redis_undecodable();
                tracing::warn!(error = %e, "ignoring an event from Redis this version cannot read");
                return;
            }
        };
        if envelope.v != WIRE_VERSION {
            crate::metrics::redis_undecodable();
            return;
        }
        if envelope.origin == self.instance {
            return;
        }
        hub.deliver_local(&envelope.topic, Arc::new(envelope.event));
    }
}

/// Which master serves which slots (`CLUSTER SLOTS`, as one node sees it), once every one of
/// those masters answered a `PING`. The cluster client moves sharded subscriptions to a slot's
/// new master only when it rereads the slot map, which it does on a failed command; this
/// check is how the bridge notices a failover without one.
async fn cluster_masters(
    conn: &mut ClusterConnection,
) -> redis::RedisResult<Vec<(i64, i64, String, u16)>> {
    let unexpected = || {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected CLUSTER SLOTS answer",
        ))
    };
    let answer = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(answer).map_err(|_| unexpected())?;
    let mut masters = Vec::with_capacity(ranges.len());
    for range in ranges {
        let field = |i: usize| range.get(i).cloned().ok_or_else(unexpected);
        let start: i64 = redis::from_redis_value(field(0)?).map_err(|_| unexpected())?;
        let end: i64 = redis::from_redis_value(field(1)?).map_err(|_| unexpected())?;
        let node: Vec<Value> = redis::from_redis_value(field(2)?).map_err(|_| unexpected())?;
        let host: String = node
            .first()
            .cloned()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(unexpected)?;
        let port: u16 = node
            .get(1)
            .cloned()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(unexpected)?;
        masters.push((start, end, host, port));
    }
    masters.sort();
    let nodes: HashSet<(String, u16)> = masters
        .iter()
        .map(|(_, _, host, port)| (host.clone(), *port))
        .collect();
    for (host, port) in nodes {
        // A node that does not know its own address says "" for it: nothing to reach it by.
        if host.is_empty() {
            continue;
        }
        conn.route_command(
            redis::cmd("PING"),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
        )
        .await?;
    }
    Ok(masters)
}

/// A cluster client's common settings: short timeouts, so that a dead master is noticed fast.
fn cluster_client(seeds: &[String]) -> redis::cluster::ClusterClientBuilder {
    ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        .overall_response_timeout(Some(COMMAND_TIMEOUT * 2))
        .retries(2)
}

/// Sleeps; true when shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}
