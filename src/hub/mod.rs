//! The hub: the only way events travel. A map of topics to `tokio::sync::broadcast` channels,
//! each created with its first subscriber and dropped with its last (as mini-redis keeps its
//! pub/sub channels). Publishing to a topic nobody follows costs a map lookup.

pub mod event;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, Notify};

pub use event::{Event, Topic};

/// Events queued for other instances (through Redis) before the bridge drops them: a burst
/// larger than this while Redis is slow loses nothing persistent (subscribers elsewhere see the
/// gap and read the database) and only stale ephemeral events.
pub const OUTBOUND_QUEUE: usize = 16 * 1024;

/// What a receiver gets when it falls behind: how many events it missed. Persistent streams
/// (messages, notifications) catch up from the database; ephemeral ones count it in a metric.
pub use broadcast::error::RecvError;

pub struct Hub {
    topics: Mutex<HashMap<Topic, broadcast::Sender<Arc<Event>>>>,
    capacity: usize,
    /// Where events for other instances go, when a bridge is attached.
    outbound: Option<mpsc::Sender<(Topic, Arc<Event>)>>,
    /// Wakes the bridge when topics come and go, so it follows exactly the local ones.
    topics_changed: Notify,
}

impl Hub {
    /// An in-process hub. `capacity` is each topic's buffer: a subscriber further behind than
    /// that lags.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self::build(capacity, None))
    }

    /// A hub whose events also go out to other instances: the receiver is the bridge's.
    pub fn bridged(capacity: usize) -> (Arc<Self>, mpsc::Receiver<(Topic, Arc<Event>)>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        (Arc::new(Self::build(capacity, Some(tx))), rx)
    }

    fn build(capacity: usize, outbound: Option<mpsc::Sender<(Topic, Arc<Event>)>>) -> Self {
        Self {
            topics: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            outbound,
            topics_changed: Notify::new(),
        }
    }

    /// Follows a topic from now on.
    pub fn subscribe(self: &Arc<Self>, topic: Topic) -> TopicReceiver {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let rx = match topics.get(&topic) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(self.capacity);
                topics.insert(topic.clone(), tx);
                self.topics_changed.notify_one();
                rx
            }
        };
        crate::metrics::subscribed(&topic);
        TopicReceiver {
            rx: Some(rx),
            topic,
            hub: self.clone(),
        }
    }

    /// Delivers an event to this instance's subscribers of its topic; returns how many there
    /// were.
    pub fn publish(&self, event: Event) -> usize {
        let topic = event.topic();
        self.publish_to(topic, event)
    }

    /// Delivers an event on a topic other than its own (an event that concerns several).
    pub fn publish_to(&self, topic: Topic, event: Event) -> usize {
        let event = Arc::new(event);
        if let Some(outbound) = &self.outbound {
            if !matches!(*event, Event::Resync) {
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    outbound.try_send((topic.clone(), event.clone()))
                {
                    tracing::warn!(%topic, "Redis bridge queue full: event not sent to other instances");
                }
            }
        }
        let reached = self.deliver_local(&topic, event);
        crate::metrics::published(&topic, reached);
        reached
    }

    /// Delivers an event to this instance's subscribers only (events relayed from other
    /// instances, and local signals).
    pub fn deliver_local(&self, topic: &Topic, event: Arc<Event>) -> usize {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        match topics.get(topic) {
            Some(tx) => tx.send(event).unwrap_or(0),
            None => 0,
        }
    }

    /// The topics with local subscribers right now.
    pub fn topics(&self) -> Vec<Topic> {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Resolves when topics were added or removed since the last call.
    pub async fn topics_changed(&self) {
        self.topics_changed.notified().await
    }

    /// Topics with at least one local subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn release(&self, topic: &Topic) {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if topics.get(topic).is_some_and(|tx| tx.receiver_count() == 0) {
            topics.remove(topic);
            self.topics_changed.notify_one();
        }
    }
}

/// A subscription to one topic; the topic goes away with its last receiver.
pub struct TopicReceiver {
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    topic: Topic,
    hub: Arc<Hub>,
}

impl TopicReceiver {
    pub async fn recv(&mut self) -> Result<Arc<Event>, RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(RecvError::Closed),
        }
    }

    pub fn topic(&self) -> &Topic {
        &self.topic
    }
}

impl Drop for TopicReceiver {
    fn drop(&mut self) {
        // Drop the receiver first so the count the hub checks no longer includes it.
        self.rx.take();
        self.hub.release(&self.topic);
        crate::metrics::unsubscribed(&self.topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::event::LeaderboardChanged;

    fn changed(version: i64) -> Event {
        Event::Leaderboard(LeaderboardChanged {
            version,
            at: chrono::Utc::now(),
            entries: Vec::new(),
        })
    }

    #[tokio::test]
    async fn a_topic_lives_while_it_has_subscribers() {
        let hub = Hub::new(8);
        assert_eq!(hub.publish(changed(1)), 0, "nobody listens yet");
        let mut a = hub.subscribe(Topic::Leaderboard);
        let b = hub.subscribe(Topic::Leaderboard);
        assert_eq!(hub.topic_count(), 1);
        assert_eq!(hub.publish(changed(2)), 2);
        let got = a.recv().await.expect("event");
        assert!(matches!(&*got, Event::Leaderboard(l) if l.version == 2));
        drop(a);
        assert_eq!(hub.topic_count(), 1, "b still listens");
        drop(b);
        assert_eq!(hub.topic_count(), 0, "the last receiver removes the topic");
    }

    #[tokio::test]
    async fn a_slow_receiver_learns_how_much_it_missed() {
        let hub = Hub::new(2);
        let mut rx = hub.subscribe(Topic::Leaderboard);
        for v in 0..5 {
            hub.publish(changed(v));
        }
        assert!(matches!(rx.recv().await, Err(RecvError::Lagged(3))));
    }
}
