//! The operator console's schema: `serverStats` (every instance's figures, once a second),
//! `adminActions` (the log of admin actions) and `roomLoads` (where the load is). Admins only.

use async_graphql::{Context, Object, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::errors::IntoGql;
use super::{domain, viewer};
use crate::db::admin_action;
use crate::domain::admin_log::RoomLoad as DomainRoomLoad;
use crate::domain::stats::{InstanceView, ServerStatsView};
use crate::hub::event::{
    Figure as WireFigure, InstanceStats as WireStats, SocketLoad as WireSocket,
};

/// Every instance's figures, and their sum, as of `at`.
pub struct ServerStats(pub ServerStatsView);

#[Object]
impl ServerStats {
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }

    /// One entry per instance heard from in the last five minutes, by id.
    async fn instances(&self) -> Vec<InstanceStats> {
        self.0
            .instances
            .iter()
            .map(|i| InstanceStats {
                stats: i.stats.clone(),
                stale: i.stale,
            })
            .collect()
    }

    /// The sum over the instances still reporting (`instance` is `total`; latencies are the
    /// worst instance's; Redis and the database are `up`/`ok` only if every instance says so).
    async fn total(&self) -> InstanceStats {
        InstanceStats {
            stats: self.0.total.clone(),
            stale: false,
        }
    }
}

impl From<InstanceView> for InstanceStats {
    fn from(v: InstanceView) -> Self {
        InstanceStats {
            stats: v.stats,
            stale: v.stale,
        }
    }
}

/// One instance's figures: what it carries now, and what it did in the last second.
pub struct InstanceStats {
    stats: WireStats,
    stale: bool,
}

fn figures(list: &[WireFigure]) -> Vec<Figure> {
    list.iter()
        .map(|f| Figure {
            name: f.name.clone(),
            value: f.value.min(i64::MAX as u64) as i64,
        })
        .collect()
}

fn count(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

#[Object]
impl InstanceStats {
    /// The instance's id (`local` without Redis; `total` for the sum).
    async fn instance(&self) -> &str {
        &self.stats.instance
    }

    /// When the instance made this report.
    async fn at(&self) -> DateTime<Utc> {
        self.stats.at
    }

    /// True when its newest report is more than 3 seconds old: the instance stopped
    /// reporting (it is left out of the total).
    async fn stale(&self) -> bool {
        self.stale
    }

    async fn started_at(&self) -> DateTime<Utc> {
        self.stats.started_at
    }

    /// Open connections, by transport: `graphql_ws`, `legacy_ws`, `sse`, `multipart`.
    async fn connections(&self) -> Vec<Figure> {
        figures(&self.stats.connections)
    }

    /// Live hub subscriptions, by topic kind (`room_messages`, `presence`, `channel`, …).
    async fn subscriptions(&self) -> Vec<Figure> {
        figures(&self.stats.subscriptions)
    }

    /// Shared executions (cohorts of equal subscriptions) running.
    async fn cohorts(&self) -> i64 {
        count(self.stats.cohorts)
    }

    /// Subscriptions the shared executions serve.
    async fn cohort_members(&self) -> i64 {
        count(self.stats.cohort_members)
    }

    /// Events published on the instance's hub since it started (the console's own figures
    /// are not counted, here or in the rates).
    async fn events_published(&self) -> i64 {
        count(self.stats.events_published)
    }

    /// Events handed to subscribers (one per subscriber reached) since it started.
    async fn events_delivered(&self) -> i64 {
        count(self.stats.events_delivered)
    }

    /// Events published per second, over the last second.
    async fn published_per_second(&self) -> f64 {
        self.stats.published_per_second
    }

    /// Events delivered per second, over the last second.
    async fn delivered_per_second(&self) -> f64 {
        self.stats.delivered_per_second
    }

    /// Median delivery latency over the last second, in milliseconds (null: nothing delivered).
    async fn latency_p50_ms(&self) -> Option<f64> {
        self.stats.latency_p50_ms
    }

    /// 99th percentile delivery latency over the last second, in milliseconds.
    async fn latency_p99_ms(&self) -> Option<f64> {
        self.stats.latency_p99_ms
    }

    /// Connections cut as slow consumers since the start.
    async fn slow_consumers(&self) -> i64 {
        count(self.stats.slow_consumers)
    }

    /// Refusals by a budget since the start, named `family:reason`: `connections:server_full`,
    /// `subscriptions:user`, `rate:message`, `graphql:cost`, `sign_in:address`, …
    async fn refusals(&self) -> Vec<Figure> {
        figures(&self.stats.refusals)
    }

    /// The Redis bridge: `up`, `down` or `disabled`.
    async fn redis(&self) -> &str {
        &self.stats.redis
    }

    /// The database: `ok` or `down`.
    async fn database(&self) -> &str {
        &self.stats.database
    }

    /// Signed-in sockets, deepest queue first (at most 500 per instance).
    async fn sockets(&self) -> Vec<SocketLoad> {
        self.stats.sockets.iter().map(SocketLoad::from).collect()
    }

    /// Signed-in sockets in all, listed in `sockets` or not.
    async fn signed_in_sockets(&self) -> i64 {
        count(self.stats.signed_in_sockets)
    }
}

/// A named count.
#[derive(SimpleObject)]
pub struct Figure {
    pub name: String,
    pub value: i64,
}

/// One signed-in socket: whose, over which transport, and how many frames wait in its queue.
#[derive(SimpleObject)]
pub struct SocketLoad {
    pub user_id: ID,
    pub transport: String,
    pub queued: i64,
}

impl From<&WireSocket> for SocketLoad {
    fn from(s: &WireSocket) -> Self {
        SocketLoad {
            user_id: ID(s.user_id.clone()),
            transport: s.transport.clone(),
            queued: count(s.queued),
        }
    }
}

/// One entry of the log of admin actions.
pub struct AdminAction(pub admin_action::Model);

#[Object]
impl AdminAction {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The admin who acted.
    async fn admin_id(&self) -> ID {
        ID(self.0.admin_id.clone())
    }

    async fn admin_name(&self) -> &str {
        &self.0.admin_name
    }

    /// `disconnect`, `publish` or `notify`.
    async fn action(&self) -> &str {
        &self.0.action
    }

    /// A user id (`disconnect`), a channel (`publish`), or an audience: `user:ID`, `room:ID`,
    /// `role:NAME`, `everyone` (`notify`).
    async fn target(&self) -> &str {
        &self.0.target
    }

    /// What was sent, as JSON text (`publish`: type and data; `notify`: kind, title and
    /// recipients).
    async fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }

    async fn at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// One room's load.
#[derive(SimpleObject)]
pub struct RoomLoad {
    pub room_id: ID,
    pub title: String,
    /// Its members online now, on any instance.
    pub members_online: i64,
    /// Messages posted in it in the last minute.
    pub messages_last_minute: i64,
}

impl From<DomainRoomLoad> for RoomLoad {
    fn from(r: DomainRoomLoad) -> Self {
        RoomLoad {
            room_id: ID(r.room_id),
            title: r.title,
            members_online: r.members_online,
            messages_last_minute: r.messages_last_minute,
        }
    }
}

/// The busiest rooms, two ways.
#[derive(SimpleObject)]
pub struct RoomLoads {
    pub by_members_online: Vec<RoomLoad>,
    pub by_messages: Vec<RoomLoad>,
}

/// The console's queries, merged into the `Query` root.
#[derive(Default)]
pub struct OperationsQuery;

#[Object]
impl OperationsQuery {
    /// Admins: the log of admin actions (`disconnectUser`, `publish`, `sendNotification`),
    /// newest first: the `last` (at most 200) before the entry `before`. The newest 10,000
    /// are kept.
    async fn admin_actions(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] last: Option<i32>,
        before: Option<ID>,
    ) -> Result<Vec<AdminAction>> {
        let rows = domain(ctx)
            .admin_actions(viewer(ctx), last, before.as_ref().map(|b| b.as_str()))
            .await
            .gql()?;
        Ok(rows.into_iter().map(AdminAction).collect())
    }

    /// Admins: the `first` (at most 50) rooms with the most members online, and those with the
    /// most messages in the last minute (counted over the newest 10,000 messages).
    async fn room_loads(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] first: Option<i32>,
    ) -> Result<RoomLoads> {
        let loads = domain(ctx).room_loads(viewer(ctx), first).await.gql()?;
        Ok(RoomLoads {
            by_members_online: loads
                .by_members_online
                .into_iter()
                .map(Into::into)
                .collect(),
            by_messages: loads.by_messages.into_iter().map(Into::into).collect(),
        })
    }
}
