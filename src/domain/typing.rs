//! Typing indicators: to the room's other members, never back to the sender. A `true` that is
//! not refreshed within the timeout expires as a `false`; closing the connection that set it
//! sends `false` at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Domain, DomainError, DomainResult};
use crate::auth::Viewer;
use crate::db::user;
use crate::hub::event::Typing;
use crate::hub::{Event, Hub};

/// Identifies one client connection (a WebSocket), so its typing stops when it closes.
pub type ConnectionId = u64;

struct Active {
    user: user::Model,
    expires: Instant,
    connection: Option<ConnectionId>,
}

pub struct TypingTracker {
    active: Mutex<HashMap<(String, String), Active>>,
    timeout: Duration,
    hub: Arc<Hub>,
}

impl TypingTracker {
    /// Starts the tracker and its expiry sweep, which ends with `shutdown`.
    pub fn start(hub: Arc<Hub>, timeout: Duration, shutdown: CancellationToken) -> Arc<Self> {
        let tracker = Arc::new(Self {
            active: Mutex::new(HashMap::new()),
            timeout,
            hub,
        });
        // One sweep for every indicator rather than a timer each: expiry is accurate to a
        // twentieth of the timeout, which no one can tell apart.
        let sweep = (timeout / 20).max(Duration::from_millis(10));
        let weak = Arc::downgrade(&tracker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(tracker) = weak.upgrade() else { break };
                tracker.expire(Instant::now());
            }
        });
        tracker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, room_id: String, user: user::Model, is_typing: bool) {
        self.hub.publish(Event::Typing(Typing {
            room_id,
            user: super::wire::card(&user),
            is_typing,
            at: Utc::now(),
        }));
    }

    fn set(
        &self,
        room_id: &str,
        user: user::Model,
        is_typing: bool,
        connection: Option<ConnectionId>,
    ) {
        let key = (room_id.to_owned(), user.id.clone());
        if is_typing {
            self.lock().insert(
                key,
                Active {
                    user: user.clone(),
                    expires: Instant::now() + self.timeout,
                    connection,
                },
            );
            self.publish(room_id.to_owned(), user, true);
        } else if self.lock().remove(&key).is_some() {
            self.publish(room_id.to_owned(), user, false);
        }
    }

    fn expire(&self, now: Instant) {
        let expired: Vec<_> = {
            let mut active = self.lock();
            let keys: Vec<_> = active
                .iter()
                .filter(|(_, a)| a.expires <= now)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| active.remove(&k).map(|a| (k.0, a.user)))
                .collect()
        };
        for (room, user) in expired {
            self.publish(room, user, false);
        }
    }

    /// A connection closed: whatever it was typing stops now.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let stopped: Vec<_> = {
            let mut active = self.lock();
            let keys: Vec<_> = active
                .iter()
                .filter(|(_, a)| a.connection == Some(connection))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| active.remove(&k).map(|a| (k.0, a.user)))
                .collect()
        };
        for (room, user) in stopped {
            self.publish(room, user, false);
        }
    }
}

impl Domain {
    /// Tells the room's other members that the viewer is (or stopped) typing.
    pub async fn set_typing(
        &self,
        viewer: &Viewer,
        room_id: &str,
        is_typing: bool,
        connection: Option<ConnectionId>,
    ) -> DomainResult<bool> {
        self.require_member(viewer, room_id).await?;
        let me = super::require_user(viewer)?;
        self.limits
            .check(&me.id, super::limits::Action::Typing)
            .await?;
        let user = self
            .user_by_id(&me.id)
            .await?
            .ok_or_else(|| DomainError::NotFound("user not found".into()))?;
        self.typing.set(room_id, user, is_typing, connection);
        Ok(true)
    }
}
