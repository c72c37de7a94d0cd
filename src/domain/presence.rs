//! Presence: who is connected, on how many connections, with which status. A user is online
//! while at least one of their connections is open, on any instance; going offline is announced
//! after a grace period, so a page reload does not flap.
//!
//! Counting a connection touches no table: the user comes from the token's sign-in, and only
//! the announcement reads the user's rooms (room-scoped subscribers filter on them), many users
//! per query when many are announced at once.
//! `lastSeenAt` is persisted when a user goes offline, and for everyone connected here once per
//! `LAST_SEEN_EVERY` (one statement per batch of users), so it stays close to the truth even
//! when an instance dies; while a user is online it reads as "now".
//!
//! Every instance keeps what it knows of every user online anywhere (each learns every
//! announcement). A user announced offline is kept only `OFFLINE_KEPT`, so that an older
//! announcement arriving late cannot bring them back; then forgotten, which reads the same
//! (offline), so what an instance keeps follows the users online, not every user who ever was.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{
    sea_query::Expr, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use super::records::PresenceStatus;
use super::{require_user, Domain, DomainError, DomainResult};
use crate::auth::Viewer;
use crate::db::{room_member, user};
use crate::hub::event::PresenceChanged;
use crate::hub::redis::RedisConnection;
use crate::hub::{Event, Hub, RecvError, Topic, TopicReceiver};

/// One user's presence as queries report it.
#[derive(Clone, Debug)]
pub struct PresenceView {
    /// Shared with what this instance counts and knows of the user: one copy of the row.
    pub user: Arc<user::Model>,
    pub status: PresenceStatus,
    pub connections: u32,
}

/// A user's connections to this instance.
struct Local {
    user: Arc<user::Model>,
    connections: u32,
    /// Bumped on every connect: a pending offline announcement checks it is still current.
    generation: u64,
}

/// What this instance knows of a user's presence anywhere, from the announcements every
/// instance publishes (its own included).
struct Known {
    view: PresenceView,
    at: DateTime<Utc>,
}

/// How long a user announced offline is kept (see the top of this file).
const OFFLINE_KEPT: Duration = Duration::from_secs(5);

/// Presence: connections counted here, totals across every instance, and the announcements.
pub struct PresenceTracker {
    local: Mutex<HashMap<String, Local>>,
    known: Mutex<HashMap<String, Known>>,
    /// The users learnt offline, oldest first, with when they were learnt and the
    /// announcement's time: each is forgotten `OFFLINE_KEPT` later unless learnt again since.
    offline: Mutex<VecDeque<(tokio::time::Instant, String, DateTime<Utc>)>>,
    counts: Option<RedisCounts>,
    rooms: RoomsReader,
    grace: Duration,
    hub: Arc<Hub>,
    db: DatabaseConnection,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl PresenceTracker {
    /// Starts tracking. With `shared` (a Redis connection, this instance's id and the
    /// heartbeat TTL) counts are global: a user is online while any live instance counts a
    /// connection of theirs, and an instance that stops heartbeating stops counting.
    pub async fn start(
        db: DatabaseConnection,
        hub: Arc<Hub>,
        grace: Duration,
        shared: Option<SharedCounts>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let tracker = Arc::new(Self {
            local: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            offline: Mutex::new(VecDeque::new()),
            counts: shared.map(RedisCounts::new),
            rooms: RoomsReader::start(db.clone()),
            grace,
            hub,
            db,
            tasks: TaskTracker::new(),
            shutdown,
        });
        // Follow every announcement, from here or elsewhere, before making any.
        let announcements = tracker.hub.subscribe(Topic::Presence);
        tokio::spawn(tracker.clone().follow(announcements));
        if tracker.counts.is_some() {
            tracker.reseed().await;
            tokio::spawn(tracker.clone().heartbeat());
        }
        tokio::spawn(tracker.clone().record_last_seen());
        tokio::spawn(tracker.clone().forget_offline());
        tracker
    }

    fn lock_local(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_offline(
        &self,
    ) -> std::sync::MutexGuard<'_, VecDeque<(tokio::time::Instant, String, DateTime<Utc>)>> {
        self.offline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets, once a second, the users learnt offline `OFFLINE_KEPT` ago and not learnt
    /// again since.
    async fn forget_offline(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            if let Some(before) = tokio::time::Instant::now().checked_sub(OFFLINE_KEPT) {
                self.forget_offline_before(before);
            }
        }
    }

    fn forget_offline_before(&self, before: tokio::time::Instant) {
        let mut expired = Vec::new();
        {
            let mut offline = self.lock_offline();
            while offline
                .front()
                .is_some_and(|(learnt, ..)| *learnt <= before)
            {
                if let Some((_, user_id, at)) = offline.pop_front() {
                    expired.push((user_id, at));
                }
            }
        }
        if expired.is_empty() {
            return;
        }
        let mut known = self.lock_known();
        for (user_id, at) in expired {
            let current = known
                .get(&user_id)
                .is_some_and(|k| k.view.status == PresenceStatus::Offline && k.at == at);
            if current {
                known.remove(&user_id);
            }
        }
        crate::metrics::presence_known(known.len());
    }

    /// Counts a new connection of `user` (as just read or provisioned by the sign-in); the
    /// returned guard counts it out when dropped. With `limit`, a connection that would take
    /// the user's total (every instance) over it is refused with `TooManyConnections`, before
    /// anyone hears of it.
    pub async fn connect(
        self: &Arc<Self>,
        user: &user::Model,
        limit: Option<u32>,
    ) -> DomainResult<PresenceGuard> {
        let user_id = user.id.as_str();
        let (announced, here) = {
            let mut local = self.lock_local();
            let entry = local.entry(user.id.clone()).or_insert_with(|| Local {
                user: Arc::new(user.clone()),
                connections: 0,
                generation: 0,
            });
            entry.connections += 1;
            entry.generation += 1;
            (entry.user.clone(), entry.connections)
        };
        let total = self.count(user_id, here).await;
        if limit.is_some_and(|max| total > max) {
            let here = {
                let mut local = self.lock_local();
                let remaining = local.get_mut(user_id).map_or(0, |e| {
                    e.connections = e.connections.saturating_sub(1);
                    e.connections
                });
                if remaining == 0 {
                    local.remove(user_id);
                }
                remaining
            };
            self.count(user_id, here).await;
            crate::metrics::connection_refused("user_full");
            return Err(DomainError::TooManyConnections);
        }
        let status = PresenceStatus::chosen(&announced.status);
        self.announce(announced, status, total).await;
        Ok(PresenceGuard {
            user_id: user_id.to_owned(),
            tracker: self.clone(),
        })
    }

    fn disconnect(self: &Arc<Self>, user_id: &str) {
        let (here, generation, user) = {
            let mut local = self.lock_local();
            let Some(entry) = local.get_mut(user_id) else {
                return;
            };
            entry.connections = entry.connections.saturating_sub(1);
            (entry.connections, entry.generation, entry.user.clone())
        };
        let tracker = self.clone();
        let user_id = user_id.to_owned();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let total = tracker.count(&user_id, here).await;
            if total > 0 {
                // Another tab or device is still open.
                let status = PresenceStatus::chosen(&user.status);
                tracker.announce(user, status, total).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(tracker.grace) => {}
                // At shutdown the user goes offline for everyone at once.
                _ = shutdown.cancelled() => {}
            }
            tracker.go_offline_if_idle(&user_id, generation).await;
        });
    }

    /// Records this instance's count for the user and returns the total over every instance.
    async fn count(&self, user_id: &str, here: u32) -> u32 {
        let Some(counts) = &self.counts else {
            return here;
        };
        match counts.set_and_total(user_id, here).await {
            Ok(total) => total,
            Err(e) => {
                // Redis is away: this instance's own count is the best there is.
                tracing::debug!(error = %e, "presence: counting without Redis");
                here
            }
        }
    }

    async fn go_offline_if_idle(&self, user_id: &str, generation: u64) {
        let gone = {
            let mut local = self.lock_local();
            match local.get(user_id) {
                Some(e) if e.connections == 0 && e.generation == generation => {
                    local.remove(user_id)
                }
                _ => None,
            }
        };
        let Some(gone) = gone else {
            return;
        };
        if self.count(user_id, 0).await > 0 {
            // Back on another instance meanwhile: its connect was announced there.
            return;
        }
        self.went_offline(gone.user).await;
    }

    /// Persists `lastSeenAt` and announces OFFLINE.
    async fn went_offline(&self, mut user: Arc<user::Model>) {
        let now = Utc::now();
        Arc::make_mut(&mut user).last_seen_at = Some(now);
        let persisted = user::Entity::update_many()
            .col_expr(user::Column::LastSeenAt, Expr::value(now))
            .filter(user::Column::Id.eq(user.id.as_str()))
            .exec(&self.db)
            .await;
        if let Err(e) = persisted {
            tracing::warn!(error = %e, user_id = %user.id, "could not persist lastSeenAt");
        }
        self.announce(user, PresenceStatus::Offline, 0).await;
    }

    async fn announce(&self, user: Arc<user::Model>, status: PresenceStatus, connections: u32) {
        let rooms = match self.rooms_of(&user.id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "presence: could not read rooms");
                Vec::new()
            }
        };
        tracing::debug!(user_id = %user.id, status = status.as_str(), connections, "presence announced");
        let at = Utc::now();
        let change = PresenceChanged {
            user: Arc::new(super::wire::card(&user)),
            status: super::wire::status(status),
            connections,
            rooms,
            at,
        };
        // Known here at once, before any subscriber (or query) can ask.
        self.learn(user, status, connections, at);
        self.hub.publish(Event::Presence(change));
        tracing::trace!("presence published");
    }

    /// Records a user's presence as of `at`, unless something as recent is known (this
    /// instance's own announcements come back from the hub: they are known already).
    fn learn(
        &self,
        user: Arc<user::Model>,
        status: PresenceStatus,
        connections: u32,
        at: chrono::DateTime<Utc>,
    ) {
        let mut known = self.lock_known();
        if known.get(&user.id).is_some_and(|k| k.at >= at) {
            return;
        }
        if status == PresenceStatus::Offline {
            let learnt = tokio::time::Instant::now();
            self.lock_offline().push_back((learnt, user.id.clone(), at));
        }
        known.insert(
            user.id.clone(),
            Known {
                view: PresenceView {
                    user,
                    status,
                    connections,
                },
                at,
            },
        );
        crate::metrics::presence_known(known.len());
    }

    /// Records an announcement from the hub.
    fn learn_change(&self, change: &PresenceChanged) {
        let stale = self
            .lock_known()
            .get(&change.user.id)
            .is_some_and(|k| k.at >= change.at);
        if !stale {
            self.learn(
                Arc::new(super::wire::user_of(&change.user)),
                super::wire::presence_status(change.status),
                change.connections,
                change.at,
            );
        }
    }

    /// Applies every announcement (other instances' too) to what this instance knows.
    async fn follow(self: Arc<Self>, mut announcements: TopicReceiver) {
        loop {
            let event = tokio::select! {
                e = announcements.recv() => e,
                _ = self.shutdown.cancelled() => break,
            };
            match event {
                Ok(event) => match &*event {
                    Event::Presence(change) => self.learn_change(change),
                    Event::Resync => self.reseed().await,
                    _ => {}
                },
                Err(RecvError::Lagged(_)) => self.reseed().await,
                Err(RecvError::Closed) => break,
            }
        }
    }

    /// Rebuilds what is known from the shared counts (after missing announcements).
    async fn reseed(&self) {
        let Some(counts) = &self.counts else {
            return;
        };
        let totals = match counts.everyone().await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "presence: cannot reseed without Redis");
                return;
            }
        };
        let ids: Vec<String> = totals.keys().cloned().collect();
        let users = match user::Entity::find()
            .filter(user::Column::Id.is_in(ids))
            .all(&self.db)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "presence: cannot reseed");
                return;
            }
        };
        let now = Utc::now();
        let mut known = self.lock_known();
        known.retain(|id, k| totals.contains_key(id) || k.view.status == PresenceStatus::Offline);
        for user in users {
            let connections = totals.get(&user.id).copied().unwrap_or(0);
            let status = PresenceStatus::chosen(&user.status);
            known.insert(
                user.id.clone(),
                Known {
                    view: PresenceView {
                        user: Arc::new(user),
                        status,
                        connections,
                    },
                    at: now,
                },
            );
        }
        crate::metrics::presence_known(known.len());
    }

    /// Beats this instance's counts into Redis, and announces OFFLINE the users of instances
    /// that stopped beating (killed, or cut off).
    async fn heartbeat(self: Arc<Self>) {
        let Some(counts) = &self.counts else {
            return;
        };
        let mut tick = tokio::time::interval(counts.beat_every());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            let here: Vec<(String, u32)> = self
                .lock_local()
                .iter()
                .filter(|(_, l)| l.connections > 0)
                .map(|(id, l)| (id.clone(), l.connections))
                .collect();
            if let Err(e) = counts.beat(&here).await {
                tracing::debug!(error = %e, "presence heartbeat failed");
                continue;
            }
            let orphans = match counts.take_dead().await {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "presence: cannot check for dead instances");
                    continue;
                }
            };
            for user_id in orphans {
                if self.count(&user_id, self.here(&user_id)).await > 0 {
                    continue;
                }
                if let Ok(Some(user)) = user::Entity::find_by_id(user_id.as_str())
                    .one(&self.db)
                    .await
                {
                    tracing::info!(user_id, "presence: offline with its instance");
                    self.went_offline(Arc::new(user)).await;
                }
            }
        }
    }

    /// Persists `lastSeenAt` = now for every user connected here, every `LAST_SEEN_EVERY`, in
    /// batches of `LAST_SEEN_BATCH` ids per statement. Connecting writes nothing; this bounds
    /// how stale the stored value can be when an instance dies without announcing anyone
    /// offline.
    async fn record_last_seen(self: Arc<Self>) {
        let mut tick = tokio::time::interval(LAST_SEEN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            let connected: Vec<String> = self
                .lock_local()
                .iter()
                .filter(|(_, l)| l.connections > 0)
                .map(|(id, _)| id.clone())
                .collect();
            let now = Utc::now();
            for batch in connected.chunks(LAST_SEEN_BATCH) {
                let written = user::Entity::update_many()
                    .col_expr(user::Column::LastSeenAt, Expr::value(now))
                    .filter(user::Column::Id.is_in(batch.iter().cloned()))
                    .exec(&self.db)
                    .await;
                if let Err(e) = written {
                    tracing::warn!(error = %e, "presence: could not persist lastSeenAt");
                    break;
                }
            }
        }
    }

    fn here(&self, user_id: &str) -> u32 {
        self.lock_local().get(user_id).map_or(0, |l| l.connections)
    }

    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, sea_orm::DbErr> {
        self.rooms.rooms_of(user_id).await
    }

    /// The user's presence, if online anywhere.
    pub fn live(&self, user_id: &str) -> Option<PresenceView> {
        self.lock_known()
            .get(user_id)
            .filter(|k| k.view.status != PresenceStatus::Offline)
            .map(|k| k.view.clone())
    }

    /// The status to show for a user: their chosen one while online, else OFFLINE.
    pub fn status_of(&self, user_id: &str) -> PresenceStatus {
        self.live(user_id)
            .map(|p| p.status)
            .unwrap_or(PresenceStatus::Offline)
    }

    /// Everyone online, by user id.
    pub fn online(&self) -> Vec<PresenceView> {
        let mut all: Vec<_> = self
            .lock_known()
            .values()
            .filter(|k| k.view.status != PresenceStatus::Offline)
            .map(|k| k.view.clone())
            .collect();
        all.sort_by(|a, b| a.user.id.cmp(&b.user.id));
        all
    }

    /// Re-announces an online user to a room they just joined, so its presence subscribers
    /// see them.
    pub async fn joined_room(&self, user_id: &str) {
        if let Some(p) = self.live(user_id) {
            self.announce(p.user, p.status, p.connections).await;
        }
    }

    async fn set_chosen(&self, user: user::Model) {
        // Announced as counted here (one copy of the row), with the new status.
        let counted = self.lock_local().get_mut(&user.id).map(|local| {
            Arc::make_mut(&mut local.user).status = user.status.clone();
            local.user.clone()
        });
        let user = counted.unwrap_or_else(|| Arc::new(user));
        if let Some(p) = self.live(&user.id) {
            let status = PresenceStatus::chosen(&user.status);
            self.announce(user, status, p.connections).await;
        }
    }

    /// Waits for pending offline announcements (they finish at once after shutdown), then
    /// removes this instance's counts from Redis.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        tracing::debug!("presence: pending announcements done");
        if let Some(counts) = &self.counts {
            if let Err(e) = counts.leave().await {
                tracing::debug!(error = %e, "presence: could not remove this instance's counts");
            }
        }
    }
}

/// Users whose rooms one query reads at most.
const ROOMS_BATCH: usize = 256;

type RoomsReply = oneshot::Sender<Result<Vec<String>, sea_orm::DbErr>>;

/// Reads the rooms of the users being announced, many users per query. A connect storm (or a
/// shutdown) announces hundreds of users at once; each read on its own is a round trip to the
/// database, and they queued for the pool one by one.
struct RoomsReader {
    queue: mpsc::Sender<(String, RoomsReply)>,
}

impl RoomsReader {
    /// Starts the reader; it ends once the tracker is dropped and its queue is empty.
    fn start(db: DatabaseConnection) -> Self {
        let (queue, mut requests) = mpsc::channel::<(String, RoomsReply)>(ROOMS_BATCH * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(ROOMS_BATCH);
            while requests.recv_many(&mut batch, ROOMS_BATCH).await > 0 {
                let mut ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
                ids.sort();
                ids.dedup();
                // A few statement texts rather than one per batch size (see `padded`).
                let ids = super::signins::padded(ids);
                let found = room_member::Entity::find()
                    .filter(room_member::Column::UserId.is_in(ids))
                    .all(&db)
                    .await;
                match found {
                    Ok(rows) => {
                        let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
                        for row in rows {
                            by_user.entry(row.user_id).or_default().push(row.room_id);
                        }
                        for (id, reply) in batch.drain(..) {
                            let rooms = by_user.get(&id).cloned().unwrap_or_default();
                            let _ = reply.send(Ok(rooms));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for (_, reply) in batch.drain(..) {
                            let _ = reply.send(Err(sea_orm::DbErr::Custom(message.clone())));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, sea_orm::DbErr> {
        let stopped = || sea_orm::DbErr::Custom("the presence rooms reader has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((user_id.to_owned(), reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// How often the `lastSeenAt` of connected users is written.
const LAST_SEEN_EVERY: Duration = Duration::from_secs(60);
/// Users per `lastSeenAt` statement (well under every backend's limit on parameters).
const LAST_SEEN_BATCH: usize = 500;

/// One open connection, counted while it lives.
pub struct PresenceGuard {
    user_id: String,
    tracker: Arc<PresenceTracker>,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.tracker.disconnect(&self.user_id);
    }
}

/// How to share connection counts between instances.
pub struct SharedCounts {
    pub connection: RedisConnection,
    pub instance: String,
    /// An instance that has not beaten for this long counts no more.
    pub ttl: Duration,
}

/// Connection counts in Redis: a hash per instance (user id → connections), which expires
/// unless the instance beats, and a sorted set of instances by their last beat.
///
/// Every transaction touches one key, and commands on several keys go one by one (in flight
/// together): on a Redis Cluster each key may live on another shard, and neither a pipeline
/// nor a transaction may span slots. The keys keep the names they had before clusters were
/// supported, so instances of both versions count together during a rolling upgrade.
struct RedisCounts {
    connection: RedisConnection,
    instance: String,
    ttl: Duration,
}

const INSTANCES: &str = "tidings:presence:instances";

fn counts_key(instance: &str) -> String {
    format!("tidings:presence:{instance}")
}

impl RedisCounts {
    fn new(shared: SharedCounts) -> Self {
        Self {
            connection: shared.connection,
            instance: shared.instance,
            ttl: shared.ttl,
        }
    }

    fn beat_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// A dead instance's hash outlives its last beat long enough for a survivor to read it.
    fn hash_ttl_ms(&self) -> i64 {
        (self.ttl.as_millis() as i64).saturating_mul(3)
    }

    fn now_ms() -> i64 {
        Utc::now().timestamp_millis()
    }

    async fn live_instances(&self) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.connection.clone();
        let since = Self::now_ms() - self.ttl.as_millis() as i64;
        redis::cmd("ZRANGEBYSCORE")
            .arg(INSTANCES)
            .arg(since)
            .arg("+inf")
            .query_async(&mut conn)
            .await
    }

    async fn set_and_total(&self, user_id: &str, here: u32) -> redis::RedisResult<u32> {
        let mut conn = self.connection.clone();
        let key = counts_key(&self.instance);
        let mut pipe = redis::pipe();
        if here > 0 {
            pipe.hset(&key, user_id, here).ignore();
        } else {
            pipe.hdel(&key, user_id).ignore();
        }
        pipe.pexpire(&key, self.hash_ttl_ms()).ignore();
        pipe.query_async::<()>(&mut conn).await?;
        self.mark_alive().await?;
        let instances = self.live_instances().await?;
        let gets = instances.iter().map(|instance| {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(counts_key(instance)).arg(user_id);
            cmd
        });
        let counts: Vec<Option<u32>> = each(&self.connection, gets).await?;
        Ok(counts.into_iter().flatten().sum())
    }

    /// This instance beat just now.
    async fn mark_alive(&self) -> redis::RedisResult<()> {
        let mut conn = self.connection.clone();
        redis::cmd("ZADD")
            .arg(INSTANCES)
            .arg(Self::now_ms())
            .arg(&self.instance)
            .query_async(&mut conn)
            .await
    }

    async fn beat(&self, here: &[(String, u32)]) -> redis::RedisResult<()> {
        let mut conn = self.connection.clone();
        let key = counts_key(&self.instance);
        // Rewritten whole each beat: after an outage Redis holds exactly this instance's truth.
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        if !here.is_empty() {
            pipe.hset_multiple(&key, here).ignore();
        }
        pipe.pexpire(&key, self.hash_ttl_ms()).ignore();
        pipe.query_async::<()>(&mut conn).await?;
        self.mark_alive().await
    }

    /// Claims the instances that stopped beating and returns their users. Each dead instance
    /// is claimed by exactly one survivor (whose ZREM removed it).
    async fn take_dead(&self) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.connection.clone();
        let before = Self::now_ms() - self.ttl.as_millis() as i64;
        let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(INSTANCES)
            .arg("-inf")
            .arg(format!("({before}"))
            .query_async(&mut conn)
            .await?;
        let mut users = Vec::new();
        for instance in dead {
            let claimed: i64 = redis::cmd("ZREM")
                .arg(INSTANCES)
                .arg(&instance)
                .query_async(&mut conn)
                .await?;
            if claimed == 1 {
                let key = counts_key(&instance);
                let ids: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await?;
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<()>(&mut conn)
                    .await?;
                users.extend(ids);
            }
        }
        Ok(users)
    }

    /// Every user with a connection on a live instance, with their total.
    async fn everyone(&self) -> redis::RedisResult<HashMap<String, u32>> {
        let instances = self.live_instances().await?;
        let reads = instances.iter().map(|instance| {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(counts_key(instance));
            cmd
        });
        let hashes: Vec<HashMap<String, u32>> = each(&self.connection, reads).await?;
        let mut totals = HashMap::new();
        for (user, n) in hashes.into_iter().flatten() {
            *totals.entry(user).or_insert(0) += n;
        }
        Ok(totals)
    }

    async fn leave(&self) -> redis::RedisResult<()> {
        let mut conn = self.connection.clone();
        redis::cmd("DEL")
            .arg(counts_key(&self.instance))
            .query_async::<()>(&mut conn)
            .await?;
        redis::cmd("ZREM")
            .arg(INSTANCES)
            .arg(&self.instance)
            .query_async(&mut conn)
            .await
    }
}

/// Runs `commands` (each on its own key, perhaps each on another shard) all in flight at once;
/// their answers in order.
async fn each<T: redis::FromRedisValue>(
    connection: &RedisConnection,
    commands: impl Iterator<Item = redis::Cmd>,
) -> redis::RedisResult<Vec<T>> {
    let sent = commands.map(|cmd| {
        let mut conn = connection.clone();
        async move { cmd.query_async::<T>(&mut conn).await }
    });
    futures_util::future::join_all(sent)
        .await
        .into_iter()
        .collect()
}

impl Domain {
    /// Counts a new connection of the user (any transport) for presence, refusing one over the
    /// per-user limit.
    pub async fn open_connection(&self, user: &user::Model) -> DomainResult<PresenceGuard> {
        self.presence
            .connect(user, self.rules.max_connections_per_user)
            .await
    }

    /// When the user was last seen: now while they are online (on any instance), else what
    /// was stored when they went offline.
    pub fn last_seen_at(&self, user: &user::Model) -> Option<DateTime<Utc>> {
        if self.presence.live(&user.id).is_some() {
            Some(Utc::now())
        } else {
            user.last_seen_at
        }
    }

    /// Admin: closes every connection of a user, on every instance, and refuses the tokens
    /// issued to them so far (they sign in again for a new one).
    pub async fn disconnect_user(&self, viewer: &Viewer, user_id: &str) -> DomainResult<bool> {
        super::require_admin(viewer)?;
        let updated = user::Entity::update_many()
            .col_expr(user::Column::TokensRevokedAt, Expr::value(Utc::now()))
            .filter(user::Column::Id.eq(user_id))
            .exec(&self.db)
            .await?;
        if updated.rows_affected == 0 {
            return Err(DomainError::NotFound(format!("user {user_id} not found")));
        }
        self.hub
            .publish(Event::Disconnect(crate::hub::event::DisconnectUser {
                user_id: user_id.to_owned(),
            }));
        Ok(true)
    }

    /// Sets the viewer's chosen status (ONLINE, AWAY or BUSY).
    pub async fn set_presence(
        &self,
        viewer: &Viewer,
        status: PresenceStatus,
    ) -> DomainResult<PresenceView> {
        let me = require_user(viewer)?;
        if status == PresenceStatus::Offline {
            return Err(DomainError::bad_input(
                "status must be ONLINE, AWAY or BUSY: OFFLINE follows from having no connection",
            ));
        }
        let found = self
            .user_by_id(&me.id)
            .await?
            .ok_or_else(|| DomainError::NotFound("user not found".into()))?;
        let mut active: user::ActiveModel = found.into();
        active.status = Set(status.as_str().to_owned());
        let updated = user::Entity::update(active).exec(&self.db).await?;
        self.presence.set_chosen(updated.clone()).await;
        Ok(self.presence_of_user(updated))
    }

    fn presence_of_user(&self, user: user::Model) -> PresenceView {
        self.presence.live(&user.id).unwrap_or(PresenceView {
            user: Arc::new(user),
            status: PresenceStatus::Offline,
            connections: 0,
        })
    }

    /// Who is online: everyone (signed-in viewers), or a room's members (members only).
    pub async fn online_users(
        &self,
        viewer: &Viewer,
        room_id: Option<&str>,
    ) -> DomainResult<Vec<PresenceView>> {
        require_user(viewer)?;
        let online = self.presence.online();
        match room_id {
            None => Ok(online),
            Some(room_id) => {
                self.require_member(viewer, room_id).await?;
                let members = self.member_ids(room_id).await?;
                Ok(online
                    .into_iter()
                    .filter(|p| members.contains(&p.user.id))
                    .collect())
            }
        }
    }

    /// The presence of the given users (unknown ids are left out).
    pub async fn presence_of(
        &self,
        viewer: &Viewer,
        ids: &[String],
    ) -> DomainResult<Vec<PresenceView>> {
        require_user(viewer)?;
        if ids.len() > 500 {
            return Err(DomainError::bad_input("at most 500 user ids at once"));
        }
        let users = self.users_by_ids(ids).await?;
        Ok(ids
            .iter()
            .filter_map(|id| users.iter().find(|u| &u.id == id).cloned())
            .map(|u| self.presence_of_user(u))
            .collect())
    }
}
