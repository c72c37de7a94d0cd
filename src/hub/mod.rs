//! The hub: the only way events travel. A map of topics, each created with its first
//! subscriber and dropped with its last (as mini-redis keeps its pub/sub channels). Publishing
//! to a topic nobody follows costs a map lookup.
//!
//! A topic's `tokio::sync::broadcast` channel is made with its first event, not its first
//! subscriber: the channel allocates its whole ring (`TIDINGS_BROADCAST_CAPACITY` slots, about
//! 37 KiB at 1,024; `TIDINGS_STORED_BROADCAST_CAPACITY` for stored topics) when it is made, and a client that follows many topics where nothing
//! happens must not make the server hold a ring for each. Until then a topic is a count and,
//! for each subscriber, a small cell where the first event's publisher leaves the subscriber's
//! receiver (a receiver must exist before an event is sent to get it, and tokio's cannot be
//! cloned). Once the channel exists, subscribing and publishing are exactly the plain
//! broadcast's: the fan-out's hot path pays one branch more.

pub mod event;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{broadcast, mpsc, Notify};

pub use event::{Event, Topic};

/// Events queued for other instances (through Redis) before the bridge drops them: a burst
/// larger than this while Redis is slow loses nothing persistent (subscribers elsewhere see the
/// gap and read the database) and only stale ephemeral events.
pub const OUTBOUND_QUEUE: usize = 16 * 1024;

/// What a receiver gets when it falls behind: how many events it missed. Persistent streams
/// (messages, notifications) catch up from the database; ephemeral ones count it in a metric.
pub use broadcast::error::RecvError;

type Sender = broadcast::Sender<Arc<Event>>;
type Receiver = broadcast::Receiver<Arc<Event>>;

pub struct Hub {
    topics: Mutex<HashMap<Topic, TopicState>>,
    capacity: Capacity,
    /// Where events for other instances go, when a bridge is attached.
    outbound: Option<mpsc::Sender<(Topic, Arc<Event>)>>,
    /// Wakes the bridge when topics come and go, so it follows exactly the local ones.
    topics_changed: Notify,
}

/// How many events a topic's channel buffers, by what a subscriber that falls further behind
/// loses.
///
/// A stored topic (a room's messages and changes, a user's notifications) loses nothing: its
/// subscribers read what they missed from the database. Its buffer only saves those reads
/// while a subscriber is briefly behind, and a room's is held by every instance with a member
/// of it (a cohort reads it once for all its members), so it is kept small: at 64 slots a
/// channel holds about 2.3 KiB where 1,024 hold 37 KiB, which in rooms of 10 was more than
/// a third of what a chat connection cost. Every other topic is ephemeral (typing, presence,
/// channels, the leaderboard, control, figures): what falls out of its buffer is gone, so it
/// keeps the larger one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub ephemeral: usize,
    pub stored: usize,
}

impl Capacity {
    fn of(&self, topic: &Topic) -> usize {
        if topic.is_stored() {
            self.stored
        } else {
            self.ephemeral
        }
    }
}

/// The same buffer for every topic.
impl From<usize> for Capacity {
    fn from(n: usize) -> Self {
        Capacity {
            ephemeral: n,
            stored: n,
        }
    }
}

/// One topic with local subscribers.
struct TopicState {
    /// Its `TopicReceiver`s: the topic goes away when the last one does.
    subscribers: usize,
    /// Made with the topic's first event (see the top of this file).
    sender: Option<Sender>,
    /// The subscribers from before the first event, each waiting for its receiver. Weak: a
    /// subscriber that went away is skipped, and swept as others come.
    waiting: Vec<Weak<Waiting>>,
}

/// Where a subscriber from before a topic's first event waits for its receiver.
#[derive(Default)]
struct Waiting {
    slot: Mutex<WaitingSlot>,
    ready: Notify,
}

#[derive(Default)]
struct WaitingSlot {
    /// Left here by the topic's first event's publisher, subscribed before that event.
    rx: Option<Receiver>,
    /// A `Resync` came before any event (the Redis bridge reconnected): it is told once.
    resync: bool,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaitingSlot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand(&self, change: impl FnOnce(&mut WaitingSlot)) {
        change(&mut self.lock());
        self.ready.notify_one();
    }
}

impl TopicState {
    fn new() -> Self {
        Self {
            subscribers: 0,
            sender: None,
            waiting: Vec::new(),
        }
    }

    /// One more subscriber: a receiver if events flow, else a place to wait for one.
    fn join(&mut self) -> Result<Receiver, Arc<Waiting>> {
        self.subscribers += 1;
        if let Some(tx) = &self.sender {
            return Ok(tx.subscribe());
        }
        if self.waiting.len() >= 2 * self.subscribers.max(4) {
            self.waiting.retain(|w| w.strong_count() > 0);
        }
        let waiting = Arc::new(Waiting::default());
        self.waiting.push(Arc::downgrade(&waiting));
        Err(waiting)
    }

    /// Sends an event to the topic's subscribers; returns how many there were. The first event
    /// makes the channel and hands every waiting subscriber its receiver before it is sent.
    fn send(&mut self, event: Arc<Event>, capacity: usize) -> usize {
        if let Some(tx) = &self.sender {
            return tx.send(event).unwrap_or(0);
        }
        let waiting = self.waiting.iter().filter_map(Weak::upgrade);
        if matches!(*event, Event::Resync) {
            // A signal, not an event: nobody missed anything the channel would have kept, so
            // it is told without making one.
            let mut told = 0;
            for w in waiting {
                w.hand(|slot| slot.resync = true);
                told += 1;
            }
            return told;
        }
        let (tx, _) = broadcast::channel(capacity);
        for w in waiting {
            let rx = tx.subscribe();
            w.hand(|slot| slot.rx = Some(rx));
        }
        self.waiting = Vec::new();
        let reached = tx.send(event).unwrap_or(0);
        self.sender = Some(tx);
        reached
    }
}

impl Hub {
    /// An in-process hub. `capacity` is each topic's buffer once events flow: a subscriber
    /// further behind than that lags.
    pub fn new(capacity: impl Into<Capacity>) -> Arc<Self> {
        Arc::new(Self::build(capacity.into(), None))
    }

    /// A hub whose events also go out to other instances: the receiver is the bridge's.
    pub fn bridged(
        capacity: impl Into<Capacity>,
    ) -> (Arc<Self>, mpsc::Receiver<(Topic, Arc<Event>)>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        (Arc::new(Self::build(capacity.into(), Some(tx))), rx)
    }

    fn build(capacity: Capacity, outbound: Option<mpsc::Sender<(Topic, Arc<Event>)>>) -> Self {
        Self {
            topics: Mutex::new(HashMap::new()),
            capacity: Capacity {
                ephemeral: capacity.ephemeral.max(1),
                stored: capacity.stored.max(1),
            },
            outbound,
            topics_changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, TopicState>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows a topic from now on.
    pub fn subscribe(self: &Arc<Self>, topic: Topic) -> TopicReceiver {
        let mut topics = self.lock();
        let joined = match topics.get_mut(&topic) {
            Some(state) => state.join(),
            None => {
                let mut state = TopicState::new();
                let joined = state.join();
                topics.insert(topic.clone(), state);
                self.topics_changed.notify_one();
                joined
            }
        };
        drop(topics);
        crate::metrics::subscribed(&topic);
        let (rx, waiting) = match joined {
            Ok(rx) => (Some(rx), None),
            Err(waiting) => (None, Some(waiting)),
        };
        TopicReceiver {
            rx,
            waiting,
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
        match self.lock().get_mut(topic) {
            Some(state) => state.send(event, self.capacity.of(topic)),
            None => 0,
        }
    }

    /// The topics with local subscribers right now.
    pub fn topics(&self) -> Vec<Topic> {
        self.lock().keys().cloned().collect()
    }

    /// Resolves when topics were added or removed since the last call.
    pub async fn topics_changed(&self) {
        self.topics_changed.notified().await
    }

    /// Topics with at least one local subscriber.
    pub fn topic_count(&self) -> usize {
        self.lock().len()
    }

    /// Topics whose events have begun to flow, each holding its buffer.
    pub fn buffered_topic_count(&self) -> usize {
        self.lock().values().filter(|s| s.sender.is_some()).count()
    }

    fn release(&self, topic: &Topic) {
        let mut topics = self.lock();
        let Some(state) = topics.get_mut(topic) else {
            return;
        };
        state.subscribers = state.subscribers.saturating_sub(1);
        if state.subscribers == 0 {
            topics.remove(topic);
            self.topics_changed.notify_one();
        }
    }
}

/// A subscription to one topic; the topic goes away with its last receiver.
pub struct TopicReceiver {
    /// The topic's receiver, once the topic has events (at once if it had them already).
    rx: Option<Receiver>,
    /// Until then, where its receiver is left.
    waiting: Option<Arc<Waiting>>,
    topic: Topic,
    hub: Arc<Hub>,
}

impl TopicReceiver {
    pub async fn recv(&mut self) -> Result<Arc<Event>, RecvError> {
        if let Some(rx) = self.rx.as_mut() {
            return rx.recv().await;
        }
        let Some(waiting) = self.waiting.clone() else {
            return Err(RecvError::Closed);
        };
        let rx = loop {
            // `notify_one` keeps its permit when nobody waits yet: no wake-up is lost.
            let ready = waiting.ready.notified();
            {
                let mut slot = waiting.lock();
                if std::mem::take(&mut slot.resync) {
                    return Ok(Arc::new(Event::Resync));
                }
                if let Some(rx) = slot.rx.take() {
                    break rx;
                }
            }
            ready.await;
        };
        self.waiting = None;
        // Kept before waiting on it: a cancelled `recv` must not lose the receiver.
        self.rx.insert(rx).recv().await
    }

    pub fn topic(&self) -> &Topic {
        &self.topic
    }
}

impl Drop for TopicReceiver {
    fn drop(&mut self) {
        self.rx.take();
        self.waiting.take();
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

    #[tokio::test]
    async fn stored_topics_buffer_their_own_capacity_and_ephemeral_ones_theirs() {
        let hub = Hub::new(Capacity {
            ephemeral: 8,
            stored: 2,
        });
        let room = Topic::RoomMessages("r".into());
        let mut stored = hub.subscribe(room.clone());
        let mut ephemeral = hub.subscribe(Topic::Leaderboard);
        for v in 0..5 {
            hub.publish_to(room.clone(), changed(v));
            hub.publish(changed(v));
        }
        // The stored topic's subscriber is behind its two slots (it would read the database);
        // the ephemeral one has all five.
        assert!(matches!(stored.recv().await, Err(RecvError::Lagged(3))));
        for v in 0..5 {
            let event = ephemeral.recv().await.expect("kept");
            assert!(matches!(&*event, Event::Leaderboard(l) if l.version == v));
        }
    }

    #[tokio::test]
    async fn subscribers_from_before_the_first_event_get_it_and_every_later_one() {
        let hub = Hub::new(8);
        let mut a = hub.subscribe(Topic::Leaderboard);
        let mut b = hub.subscribe(Topic::Leaderboard);
        assert_eq!(hub.buffered_topic_count(), 0, "no buffer before an event");
        assert_eq!(hub.publish(changed(1)), 2);
        assert_eq!(hub.buffered_topic_count(), 1);
        let mut c = hub.subscribe(Topic::Leaderboard);
        assert_eq!(hub.publish(changed(2)), 3);
        for (rx, first) in [(&mut a, 1), (&mut b, 1), (&mut c, 2)] {
            for version in first..=2 {
                let got = rx.recv().await.expect("event");
                assert!(matches!(&*got, Event::Leaderboard(l) if l.version == version));
            }
        }
    }

    #[tokio::test]
    async fn a_receiver_waiting_for_a_quiet_topic_wakes_on_its_first_event() {
        let hub = Hub::new(8);
        let mut rx = hub.subscribe(Topic::Leaderboard);
        let waiter = tokio::spawn(async move { rx.recv().await.map(|e| e.topic()) });
        tokio::task::yield_now().await;
        // A `recv` given up while waiting loses nothing either.
        let mut other = hub.subscribe(Topic::Leaderboard);
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), other.recv());
        assert!(gave_up.await.is_err());
        hub.publish(changed(1));
        let got = waiter.await.expect("task").expect("event");
        assert_eq!(got, Topic::Leaderboard);
        assert!(matches!(
            &*other.recv().await.expect("event"),
            Event::Leaderboard(_)
        ));
    }

    #[tokio::test]
    async fn a_resync_reaches_a_quiet_topic_without_making_its_buffer() {
        let hub = Hub::new(8);
        let mut rx = hub.subscribe(Topic::Leaderboard);
        assert_eq!(
            hub.deliver_local(&Topic::Leaderboard, Arc::new(Event::Resync)),
            1
        );
        assert_eq!(hub.buffered_topic_count(), 0);
        assert!(matches!(&*rx.recv().await.expect("resync"), Event::Resync));
        hub.publish(changed(1));
        assert!(matches!(
            &*rx.recv().await.expect("event"),
            Event::Leaderboard(_)
        ));
    }

    #[tokio::test]
    async fn subscribers_gone_before_any_event_are_forgotten() {
        let hub = Hub::new(8);
        let _stays = hub.subscribe(Topic::Leaderboard);
        for _ in 0..1000 {
            drop(hub.subscribe(Topic::Leaderboard));
        }
        let waiting = hub.lock()[&Topic::Leaderboard].waiting.len();
        assert!(waiting <= 8, "{waiting} cells kept for one subscriber");
        drop(_stays);
        assert_eq!(hub.topic_count(), 0);
    }

    /// Counts the bytes each thread holds from the allocator, so a test can weigh what it
    /// keeps (a current-thread runtime runs a whole test on one thread).
    struct Weighing;

    thread_local! {
        static HELD: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    }

    fn held(change: isize) {
        let _ = HELD.try_with(|h| h.set(h.get() + change));
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl std::alloc::GlobalAlloc for Weighing {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let p = std::alloc::System.alloc(layout);
            if !p.is_null() {
                held(layout.size() as isize);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
            let p = std::alloc::System.alloc_zeroed(layout);
            if !p.is_null() {
                held(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            std::alloc::System.dealloc(ptr, layout);
            held(-(layout.size() as isize));
        }

        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            let p = std::alloc::System.realloc(ptr, layout, new_size);
            if !p.is_null() {
                held(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    #[global_allocator]
    static WEIGHING: Weighing = Weighing;

    #[tokio::test]
    async fn following_a_hundred_thousand_quiet_topics_costs_under_64_mib() {
        let hub = Hub::new(1024);
        let before = HELD.with(|h| h.get());
        let receivers: Vec<TopicReceiver> = (0..100_000)
            .map(|i| hub.subscribe(Topic::Channel(format!("public:quiet-{i}"))))
            .collect();
        let cost = HELD.with(|h| h.get()) - before;
        assert_eq!(hub.topic_count(), 100_000);
        assert_eq!(hub.buffered_topic_count(), 0, "no topic made its buffer");
        assert!(cost < 64 << 20, "100,000 topics hold {} MiB", cost >> 20);
        // One of them comes alive: only it makes a buffer.
        let mut first = receivers.into_iter().next().expect("a receiver");
        let topic = first.topic().clone();
        let event = Event::Channel(crate::hub::event::ChannelEvent {
            id: "1".into(),
            channel: "public:quiet-0".into(),
            kind: "ping".into(),
            data: serde_json::Value::Null,
            at: chrono::Utc::now(),
        });
        assert_eq!(hub.publish_to(topic, event), 1);
        assert!(first.recv().await.is_ok());
        assert_eq!(hub.topic_count(), 1);
        assert_eq!(hub.buffered_topic_count(), 1);
    }
}
