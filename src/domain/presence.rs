//! Presence: who is connected, on how many connections, with which status. A user is online
//! while at least one of their connections is open; going offline is announced after a grace
//! period, so a page reload does not flap. `lastSeenAt` is persisted on connect and on going
//! offline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{require_user, Domain, DomainError, DomainResult};
use crate::auth::Viewer;
use crate::db::{room_member, user};
use crate::hub::event::PresenceChanged;
use crate::hub::{Event, Hub};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PresenceStatus {
    Online,
    Away,
    Busy,
    Offline,
}

impl PresenceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Online => "ONLINE",
            PresenceStatus::Away => "AWAY",
            PresenceStatus::Busy => "BUSY",
            PresenceStatus::Offline => "OFFLINE",
        }
    }

    /// The status a user chose, as stored; anything unknown reads as ONLINE.
    pub fn chosen(stored: &str) -> Self {
        match stored {
            "AWAY" => PresenceStatus::Away,
            "BUSY" => PresenceStatus::Busy,
            _ => PresenceStatus::Online,
        }
    }
}

/// One user's presence as queries report it.
#[derive(Clone, Debug)]
pub struct PresenceView {
    pub user: user::Model,
    pub status: PresenceStatus,
    pub connections: u32,
}

struct Live {
    user: user::Model,
    connections: u32,
    /// Bumped on every connect: a pending offline announcement checks it is still current.
    generation: u64,
}

/// This instance's connections per user.
pub struct PresenceTracker {
    live: Mutex<HashMap<String, Live>>,
    grace: Duration,
    hub: Arc<Hub>,
    db: DatabaseConnection,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl PresenceTracker {
    pub fn new(
        db: DatabaseConnection,
        hub: Arc<Hub>,
        grace: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            live: Mutex::new(HashMap::new()),
            grace,
            hub,
            db,
            tasks: TaskTracker::new(),
            shutdown,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection of `user_id`; the returned guard counts it out when dropped.
    pub async fn connect(self: &Arc<Self>, user_id: &str) -> DomainResult<PresenceGuard> {
        let now = Utc::now();
        user::Entity::update_many()
            .col_expr(
                user::Column::LastSeenAt,
                sea_orm::sea_query::Expr::value(now),
            )
            .filter(user::Column::Id.eq(user_id))
            .exec(&self.db)
            .await?;
        let stored = user::Entity::find_by_id(user_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("user {user_id} not found")))?;
        let (user, connections) = {
            let mut live = self.lock();
            let entry = live.entry(user_id.to_owned()).or_insert_with(|| Live {
                user: stored,
                connections: 0,
                generation: 0,
            });
            entry.connections += 1;
            entry.generation += 1;
            (entry.user.clone(), entry.connections)
        };
        let status = PresenceStatus::chosen(&user.status);
        self.announce(user, status, connections).await;
        Ok(PresenceGuard {
            user_id: user_id.to_owned(),
            tracker: self.clone(),
        })
    }

    fn disconnect(self: &Arc<Self>, user_id: &str) {
        let remaining = {
            let mut live = self.lock();
            let Some(entry) = live.get_mut(user_id) else {
                return;
            };
            entry.connections = entry.connections.saturating_sub(1);
            (entry.connections, entry.generation, entry.user.clone())
        };
        let tracker = self.clone();
        let user_id = user_id.to_owned();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let (connections, generation, user) = remaining;
            if connections > 0 {
                let status = PresenceStatus::chosen(&user.status);
                tracker.announce(user, status, connections).await;
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

    async fn go_offline_if_idle(&self, user_id: &str, generation: u64) {
        let gone = {
            let mut live = self.lock();
            match live.get(user_id) {
                Some(e) if e.connections == 0 && e.generation == generation => live.remove(user_id),
                _ => None,
            }
        };
        let Some(gone) = gone else {
            return;
        };
        let now = Utc::now();
        let mut user = gone.user;
        user.last_seen_at = Some(now);
        let persisted = user::Entity::update_many()
            .col_expr(
                user::Column::LastSeenAt,
                sea_orm::sea_query::Expr::value(now),
            )
            .filter(user::Column::Id.eq(user_id))
            .exec(&self.db)
            .await;
        if let Err(e) = persisted {
            tracing::warn!(error = %e, user_id, "could not persist lastSeenAt");
        }
        self.announce(user, PresenceStatus::Offline, 0).await;
    }

    async fn announce(&self, user: user::Model, status: PresenceStatus, connections: u32) {
        let rooms = match self.rooms_of(&user.id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "presence: could not read rooms");
                Vec::new()
            }
        };
        self.hub.publish(Event::Presence(PresenceChanged {
            user,
            status,
            connections,
            rooms,
            at: Utc::now(),
        }));
    }

    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, sea_orm::DbErr> {
        Ok(room_member::Entity::find()
            .filter(room_member::Column::UserId.eq(user_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| m.room_id)
            .collect())
    }

    /// The user's live presence, if connected here.
    pub fn live(&self, user_id: &str) -> Option<PresenceView> {
        self.lock().get(user_id).map(|e| PresenceView {
            user: e.user.clone(),
            status: PresenceStatus::chosen(&e.user.status),
            connections: e.connections,
        })
    }

    /// The status to show for a user: their chosen one while online, else OFFLINE.
    pub fn status_of(&self, user_id: &str) -> PresenceStatus {
        self.live(user_id)
            .map(|p| p.status)
            .unwrap_or(PresenceStatus::Offline)
    }

    /// Everyone online here, by user id.
    pub fn online(&self) -> Vec<PresenceView> {
        let mut all: Vec<_> = self
            .lock()
            .values()
            .map(|e| PresenceView {
                user: e.user.clone(),
                status: PresenceStatus::chosen(&e.user.status),
                connections: e.connections,
            })
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
        let live = {
            let mut live = self.lock();
            live.get_mut(&user.id).map(|e| {
                e.user.status = user.status.clone();
                e.connections
            })
        };
        if let Some(connections) = live {
            let status = PresenceStatus::chosen(&user.status);
            self.announce(user, status, connections).await;
        }
    }

    /// Waits for pending offline announcements (they finish at once after shutdown).
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

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

impl Domain {
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
            user,
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
