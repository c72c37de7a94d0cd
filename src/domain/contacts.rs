//! Contacts: the users whose presence a user is told. They are the users who share a room
//! with them (everyone, for admins), never the user themself. The legacy `/ws` protocol's
//! presence frames and the `conversations` dialect's greeting come from here, so the rule is
//! written once and a transport only translates.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use super::records::PresenceStatus;
use super::wire;
use super::{require_user, Domain, DomainResult};
use crate::auth::Viewer;
use crate::db::room_member;
use crate::hub::{Event, RecvError, Topic};

/// How a contact's presence changed, as one subscriber is told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceChange {
    /// Online (with this status) where the subscriber had not been told so.
    Online(PresenceStatus),
    /// Still online, with another status (AWAY, BUSY, ONLINE again).
    Status(PresenceStatus),
    Offline,
}

/// One change of a contact's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactPresence {
    pub user_id: String,
    pub username: String,
    pub change: PresenceChange,
    pub at: DateTime<Utc>,
}

/// The rooms a contacts feed's viewer belongs to, which decide whose presence it tells. Loaded
/// when the feed opens and kept up by the viewer's own presence events (which carry their
/// rooms, and follow every join) and by the viewer's leaves, which travel the presence topic
/// too.
#[derive(Clone, Default)]
pub struct ContactRooms(Arc<Mutex<HashSet<String>>>);

impl ContactRooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replace(&self, rooms: &[String]) {
        let mut mine = self.lock();
        mine.clear();
        mine.extend(rooms.iter().cloned());
    }

    /// The viewer joined `room`.
    pub fn joined(&self, room: &str) {
        self.lock().insert(room.to_owned());
    }

    /// The viewer left `room`.
    pub fn left(&self, room: &str) {
        self.lock().remove(room);
    }

    fn share_any(&self, rooms: &[String]) -> bool {
        let mine = self.lock();
        rooms.iter().any(|r| mine.contains(r))
    }
}

impl Domain {
    /// The presence of the viewer's contacts, as changes: the hub carries each user's state
    /// after every change (a connection more or less included), and this feed tells only
    /// what it has not told yet. Signed-in viewers only.
    pub async fn contacts_presence_feed(
        self: &Arc<Self>,
        viewer: &Viewer,
    ) -> DomainResult<(BoxStream<'static, ContactPresence>, ContactRooms)> {
        let me = require_user(viewer)?.clone();
        let mut live = self.hub.subscribe(Topic::Presence);
        let rooms = ContactRooms::default();
        rooms.replace(&self.rooms_of_member(&me.id).await?);
        let shared = rooms.clone();
        let changes = async_stream::stream! {
            // The status last told per user; only contacts get an entry, and going offline
            // removes it, so it holds at most the online users the viewer can see.
            let mut told: HashMap<String, PresenceStatus> = HashMap::new();
            loop {
                let event = match live.recv().await {
                    Ok(event) => event,
                    // Presence is a state: the next change of a user tells it again.
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "contacts presence feed lagged");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                let p = match &*event {
                    Event::Presence(p) => p,
                    // The viewer left a room, on any connection: its members are no longer
                    // contacts through it.
                    Event::Left(left) if left.user_id == me.id => {
                        shared.left(&left.room_id);
                        continue;
                    }
                    _ => continue,
                };
                if p.user.id == me.id {
                    shared.replace(&p.rooms);
                    continue;
                }
                if !me.is_admin() && !shared.share_any(&p.rooms) {
                    continue;
                }
                let change = match (wire::presence_status(p.status), told.get(&p.user.id)) {
                    (PresenceStatus::Offline, _) => {
                        told.remove(&p.user.id);
                        PresenceChange::Offline
                    }
                    (status, None) => {
                        told.insert(p.user.id.clone(), status);
                        PresenceChange::Online(status)
                    }
                    (status, Some(before)) if *before != status => {
                        told.insert(p.user.id.clone(), status);
                        PresenceChange::Status(status)
                    }
                    // Only the number of their connections changed.
                    _ => continue,
                };
                yield ContactPresence {
                    user_id: p.user.id.clone(),
                    username: p.user.username.clone(),
                    change,
                    at: p.at,
                };
            }
        };
        Ok((Box::pin(changes), rooms))
    }

    /// The ids of the viewer's contacts who are online, and the viewer's own, by id.
    pub async fn online_contacts(&self, viewer: &Viewer) -> DomainResult<Vec<String>> {
        let me = require_user(viewer)?;
        let online = self.presence.online();
        let mut ids: Vec<String> = if me.is_admin() {
            online.into_iter().map(|p| p.user.id.clone()).collect()
        } else {
            let rooms = self.rooms_of_member(&me.id).await?;
            let sharing: HashSet<String> = if rooms.is_empty() {
                HashSet::new()
            } else {
                room_member::Entity::find()
                    .select_only()
                    .column(room_member::Column::UserId)
                    .filter(room_member::Column::RoomId.is_in(rooms))
                    .into_tuple::<String>()
                    .all(&self.db)
                    .await?
                    .into_iter()
                    .collect()
            };
            online
                .into_iter()
                .filter(|p| sharing.contains(&p.user.id))
                .map(|p| p.user.id.clone())
                .collect()
        };
        if !ids.contains(&me.id) {
            ids.push(me.id.clone());
            ids.sort();
        }
        Ok(ids)
    }

    /// How many users are online, on any instance.
    pub fn online_count(&self) -> usize {
        self.presence.online().len()
    }
}
