//! The Redis bridge: every event this instance publishes also goes to Redis, and events other
//! instances publish come back into the local topics. Redis is followed per topic, only for
//! topics with local subscribers, so an instance hears only what it delivers.
//!
//! When Redis goes away, local delivery and every write go on; the bridge reconnects with
//! backoff, resubscribes, and tells local subscribers to check the database for what they may
//! have missed (messages and notifications are numbered, so nothing is lost).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::{Envelope, WIRE_VERSION};
use super::{Event, Hub, Topic};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle subscription connection is checked (a hung Redis does not close it).
const PING_EVERY: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Events sent to Redis in one round trip at most.
const PUBLISH_BATCH: usize = 256;

fn channel(topic: &Topic) -> String {
    format!("tidings:{topic}")
}

pub struct RedisBridge {
    instance: String,
    connection: ConnectionManager,
    up: AtomicBool,
    /// The task sending events to Redis, awaited at shutdown.
    publisher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl RedisBridge {
    /// Connects the hub to Redis at `url`. Starting while Redis is down is fine: the bridge
    /// keeps trying. Both tasks end with `shutdown`.
    pub fn start(
        url: &str,
        instance: String,
        hub: Arc<Hub>,
        outbound: mpsc::Receiver<(Topic, Arc<Event>)>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF_MAX);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection: {e}"))?;
        let bridge = Arc::new(Self {
            instance,
            connection,
            up: AtomicBool::new(false),
            publisher: std::sync::Mutex::new(None),
        });
        let publisher = tokio::spawn(bridge.clone().publish_loop(outbound, shutdown.clone()));
        *bridge.publisher.lock().unwrap_or_else(|p| p.into_inner()) = Some(publisher);
        tokio::spawn(bridge.clone().subscribe_loop(client, hub, shutdown));
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
    pub fn connection(&self) -> ConnectionManager {
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
            let mut pipe = redis::pipe();
            for (topic, event) in batch.drain(..) {
                let envelope = Envelope {
                    v: WIRE_VERSION,
                    origin: self.instance.clone(),
                    topic,
                    event: (*event).clone(),
                };
                match serde_json::to_string(&envelope) {
                    Ok(payload) => {
                        pipe.publish(channel(&envelope.topic), payload).ignore();
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode an event for Redis"),
                }
            }
            if !self.is_up() && !stopping && !shutdown.is_cancelled() {
                // Nobody elsewhere hears these; they recover from the database. (At shutdown
                // the subscriber side is already gone, so try anyway: the last announcements
                // matter.)
                continue;
            }
            let mut conn = self.connection.clone();
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => tracing::trace!(events = n, "published to Redis"),
                Err(e) => tracing::debug!(error = %e, events = n, "Redis publish failed"),
            }
        }
    }

    async fn subscribe_loop(
        self: Arc<Self>,
        client: redis::Client,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        while !shutdown.is_cancelled() {
            let attempt = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await;
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
                for topic in hub.topics() {
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
        sink: &mut PubSubSink,
        following: &mut HashSet<Topic>,
    ) -> redis::RedisResult<()> {
        let wanted: HashSet<Topic> = hub.topics().into_iter().collect();
        let new: Vec<Topic> = wanted.difference(following).cloned().collect();
        let gone: Vec<Topic> = following.difference(&wanted).cloned().collect();
        if !new.is_empty() {
            let channels: Vec<String> = new.iter().map(channel).collect();
            tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(channels))
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Io, "subscribe timed out"))
                })??;
            // Between the local subscriber's start and this SUBSCRIBE, another instance may
            // have published: let persistent streams check the database once.
            for topic in &new {
                hub.deliver_local(topic, Arc::new(Event::Resync));
            }
            following.extend(new);
        }
        if !gone.is_empty() {
            let channels: Vec<String> = gone.iter().map(channel).collect();
            tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(channels))
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Io, "unsubscribe timed out"))
                })??;
            for topic in &gone {
                following.remove(topic);
            }
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

/// Sleeps; true when shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}
