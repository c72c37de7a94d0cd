//! What administrators do to a running deployment, and the log that keeps it: disconnecting a
//! user, publishing to a channel from the console, notifying people. Each action is stored
//! (who, what, to whom, when) after it succeeded; the console lists the log newest first.
//! The log keeps its newest `ADMIN_LOG_KEEP` entries.
//!
//! `POST /api/publish`, where a backend publishes its app events (possibly many a second), is
//! not an operator's action and is not logged; the `publish` mutation is.
//!
//! Also here: the console's view of where the load is (`room_loads`).

use std::collections::HashMap;

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::notifications::{Audience, Draft};
use super::{require_admin, Domain, DomainError, DomainResult};
use crate::auth::{AuthUser, Viewer};
use crate::db::{admin_action, message, room, room_member};
use crate::hub::event::ChannelEvent;

/// Entries the log keeps: older ones are removed as new ones come.
pub const ADMIN_LOG_KEEP: i64 = 10_000;
/// The largest page of the log.
pub const ADMIN_LOG_PAGE_MAX: i32 = 200;
/// The most rooms `room_loads` ranks.
pub const ROOM_LOADS_MAX: i32 = 50;
/// Messages per minute are counted over at most this many newest messages.
const RECENT_MESSAGES_SCANNED: i64 = 10_000;
/// Online users asked about at once when counting them per room.
const ONLINE_CHUNK: usize = 500;

/// What an administrator did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAction {
    Disconnect,
    Publish,
    Notify,
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminAction::Disconnect => "disconnect",
            AdminAction::Publish => "publish",
            AdminAction::Notify => "notify",
        }
    }
}

/// One room's load: its members online now, and the messages posted in it in the last minute.
#[derive(Clone, Debug)]
pub struct RoomLoad {
    pub room_id: String,
    pub title: String,
    pub members_online: i64,
    pub messages_last_minute: i64,
}

/// The busiest rooms, two ways.
#[derive(Clone, Debug, Default)]
pub struct RoomLoads {
    pub by_members_online: Vec<RoomLoad>,
    pub by_messages: Vec<RoomLoad>,
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl Domain {
    /// Stores one entry of the log, and drops what falls out of the kept window.
    pub(crate) async fn record_action(
        &self,
        admin: &AuthUser,
        action: AdminAction,
        target: &str,
        detail: Option<String>,
    ) -> DomainResult<()> {
        let row = admin_action::ActiveModel {
            admin_id: Set(admin.id.clone()),
            admin_name: Set(clip(&admin.username, 128)),
            action: Set(action.as_str().to_owned()),
            target: Set(clip(target, 160)),
            detail: Set(detail.map(|d| clip(&d, 2000))),
            created_at: Set(Utc::now()),
            ..Default::default()
        };
        let stored = admin_action::Entity::insert(row).exec(&self.db).await?;
        let id = stored.last_insert_id;
        if id > ADMIN_LOG_KEEP {
            admin_action::Entity::delete_many()
                .filter(admin_action::Column::Id.lte(id - ADMIN_LOG_KEEP))
                .exec(&self.db)
                .await?;
        }
        crate::metrics::admin_action(action.as_str());
        Ok(())
    }

    /// Admins: the log of admin actions, newest first: the `last` (default 50, at most 200)
    /// before the entry `before`.
    pub async fn admin_actions(
        &self,
        viewer: &Viewer,
        last: Option<i32>,
        before: Option<&str>,
    ) -> DomainResult<Vec<admin_action::Model>> {
        require_admin(viewer)?;
        let last = last.unwrap_or(50);
        if !(1..=ADMIN_LOG_PAGE_MAX).contains(&last) {
            crate::metrics::graphql_refused("page");
            return Err(DomainError::bad_input(format!(
                "last must be between 1 and {ADMIN_LOG_PAGE_MAX}"
            )));
        }
        let mut query = admin_action::Entity::find();
        if let Some(before) = before {
            let before: i64 = before
                .parse()
                .map_err(|_| DomainError::bad_input("before must be an action id"))?;
            query = query.filter(admin_action::Column::Id.lt(before));
        }
        Ok(query
            .order_by_desc(admin_action::Column::Id)
            .limit(last as u64)
            .all(&self.db)
            .await?)
    }

    /// Admins: `disconnect_user`, logged.
    pub async fn disconnect_user_logged(
        &self,
        viewer: &Viewer,
        user_id: &str,
    ) -> DomainResult<bool> {
        let admin = require_admin(viewer)?;
        let done = self.disconnect_user(viewer, user_id).await?;
        self.record_action(admin, AdminAction::Disconnect, user_id, None)
            .await?;
        Ok(done)
    }

    /// Admins: `publish_event`, logged (the `publish` mutation; see the top of this file).
    pub async fn publish_event_logged(
        &self,
        viewer: &Viewer,
        channel: &str,
        kind: &str,
        data: Option<serde_json::Value>,
    ) -> DomainResult<ChannelEvent> {
        let admin = require_admin(viewer)?;
        let event = self.publish_event(viewer, channel, kind, data)?;
        let detail = serde_json::json!({ "type": event.kind, "data": event.data }).to_string();
        self.record_action(admin, AdminAction::Publish, &event.channel, Some(detail))
            .await?;
        Ok(event)
    }

    /// Admins: `send_notification`, logged with its audience and title.
    pub async fn send_notification_logged(
        &self,
        viewer: &Viewer,
        audience: Audience,
        draft: Draft,
    ) -> DomainResult<usize> {
        let admin = require_admin(viewer)?;
        let target = match &audience {
            Audience::User(id) => format!("user:{id}"),
            Audience::Room(id) => format!("room:{id}"),
            Audience::Role(role) => format!("role:{role}"),
            Audience::Everyone => "everyone".to_owned(),
        };
        let title = draft.title.clone();
        let kind = draft.kind.clone();
        let n = self.send_notification(viewer, audience, draft).await?;
        let detail =
            serde_json::json!({ "kind": kind, "title": title, "recipients": n }).to_string();
        self.record_action(admin, AdminAction::Notify, &target, Some(detail))
            .await?;
        Ok(n)
    }

    /// Admins: the `first` (default 10, at most 50) rooms with the most members online, and
    /// those with the most messages in the last minute.
    pub async fn room_loads(&self, viewer: &Viewer, first: Option<i32>) -> DomainResult<RoomLoads> {
        require_admin(viewer)?;
        let first = first.unwrap_or(10);
        if !(1..=ROOM_LOADS_MAX).contains(&first) {
            crate::metrics::graphql_refused("page");
            return Err(DomainError::bad_input(format!(
                "first must be between 1 and {ROOM_LOADS_MAX}"
            )));
        }
        let first = first as usize;
        // Members online, per room: the online users' memberships, counted.
        let online: Vec<String> = self
            .presence
            .online()
            .into_iter()
            .map(|p| p.user.id.clone())
            .collect();
        let mut online_per_room: HashMap<String, i64> = HashMap::new();
        for chunk in online.chunks(ONLINE_CHUNK) {
            let counts: Vec<(String, i64)> = room_member::Entity::find()
                .select_only()
                .column(room_member::Column::RoomId)
                .column_as(Expr::col(room_member::Column::UserId).count(), "n")
                .filter(room_member::Column::UserId.is_in(chunk.iter().cloned()))
                .group_by(room_member::Column::RoomId)
                .into_tuple()
                .all(&self.db)
                .await?;
            for (room, n) in counts {
                *online_per_room.entry(room).or_default() += n;
            }
        }
        // Messages in the last minute, per room, over the newest messages only.
        let newest: Option<i64> = message::Entity::find()
            .select_only()
            .column_as(Expr::col(message::Column::Id).max(), "m")
            .into_tuple()
            .one(&self.db)
            .await?
            .flatten();
        let mut messages_per_room: HashMap<String, i64> = HashMap::new();
        if let Some(newest) = newest {
            let since = Utc::now() - chrono::Duration::seconds(60);
            let counts: Vec<(String, i64)> = message::Entity::find()
                .select_only()
                .column(message::Column::RoomId)
                .column_as(Expr::col(message::Column::Id).count(), "n")
                .filter(message::Column::Id.gt(newest - RECENT_MESSAGES_SCANNED))
                .filter(message::Column::CreatedAt.gte(since))
                .group_by(message::Column::RoomId)
                .into_tuple()
                .all(&self.db)
                .await?;
            messages_per_room.extend(counts);
        }
        let top = |counts: &HashMap<String, i64>| {
            let mut ranked: Vec<(&String, &i64)> = counts.iter().filter(|(_, n)| **n > 0).collect();
            ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            ranked
                .into_iter()
                .take(first)
                .map(|(id, _)| id.clone())
                .collect::<Vec<String>>()
        };
        let by_online = top(&online_per_room);
        let by_messages = top(&messages_per_room);
        let mut ids: Vec<String> = by_online.iter().chain(&by_messages).cloned().collect();
        ids.sort();
        ids.dedup();
        let titles: HashMap<String, String> = room::Entity::find()
            .filter(room::Column::Id.is_in(ids))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| (r.id, r.title))
            .collect();
        let load = |id: &String| RoomLoad {
            room_id: id.clone(),
            title: titles.get(id).cloned().unwrap_or_else(|| id.clone()),
            members_online: online_per_room.get(id).copied().unwrap_or(0),
            messages_last_minute: messages_per_room.get(id).copied().unwrap_or(0),
        };
        Ok(RoomLoads {
            by_members_online: by_online.iter().map(load).collect(),
            by_messages: by_messages.iter().map(load).collect(),
        })
    }
}
