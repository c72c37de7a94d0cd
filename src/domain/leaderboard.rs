//! The leaderboard: users with at least one point, by points descending, then user id. The top
//! is kept in memory and recomputed once after points change (bursts coalesce), then published
//! to every subscriber, who sends it on only when its own top `limit` changed.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    sea_query::{Expr, ExprTrait},
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{require_admin, Domain, DomainError, DomainResult};
use crate::auth::Viewer;
use crate::db::{counter, points_ledger, user};
use crate::hub::event::{LeaderboardChanged, LeaderboardRow};
use crate::hub::{Event, Hub, RecvError, Topic};

/// The deepest `limit` a query or subscription may ask for.
pub const LEADERBOARD_MAX: i32 = 100;
const VERSION_COUNTER: &str = "leaderboard";
/// How long a recomputation waits for more point changes to fold in.
const COALESCE: Duration = Duration::from_millis(20);
/// Largest single award, either way.
const AWARD_MAX: i32 = 1_000_000;

pub struct Leaderboard {
    current: RwLock<Arc<LeaderboardChanged>>,
    dirty: Notify,
}

impl Leaderboard {
    /// Computes the current top and starts the task that recomputes it after changes.
    pub async fn start(
        db: DatabaseConnection,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, sea_orm::DbErr> {
        let version = current_version(&db).await?;
        let entries = top(&db).await?;
        let board = Arc::new(Self {
            current: RwLock::new(Arc::new(LeaderboardChanged {
                version,
                at: Utc::now(),
                entries,
            })),
            dirty: Notify::new(),
        });
        // Snapshots other instances compute arrive on the topic too: keep the newest.
        let mut published = hub.subscribe(Topic::Leaderboard);
        let task_board = board.clone();
        tokio::spawn(async move {
            let board = task_board;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = board.dirty.notified() => {
                        tokio::time::sleep(COALESCE).await;
                        if let Err(e) = board.recompute(&db, &hub).await {
                            tracing::warn!(error = %e, "leaderboard: recomputation failed");
                        }
                    }
                    event = published.recv() => match event {
                        Ok(event) => match &*event {
                            Event::Leaderboard(snapshot) => board.adopt(snapshot),
                            // Changes made elsewhere may have gone unheard.
                            Event::Resync => board.points_changed(),
                            _ => {}
                        },
                        Err(RecvError::Lagged(_)) => board.points_changed(),
                        Err(RecvError::Closed) => break,
                    },
                }
            }
        });
        Ok(board)
    }

    /// Takes a snapshot computed elsewhere when it is newer than ours.
    fn adopt(&self, snapshot: &LeaderboardChanged) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if snapshot.version > current.version {
            *current = Arc::new(snapshot.clone());
        }
    }

    /// The latest snapshot (the top `LEADERBOARD_MAX`).
    pub fn snapshot(&self) -> Arc<LeaderboardChanged> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Points changed somewhere: recompute soon.
    pub fn points_changed(&self) {
        self.dirty.notify_one();
    }

    async fn recompute(&self, db: &DatabaseConnection, hub: &Hub) -> Result<(), sea_orm::DbErr> {
        let entries = top(db).await?;
        if entries == self.snapshot().entries {
            return Ok(());
        }
        let version = bump_version(db).await?;
        let snapshot = Arc::new(LeaderboardChanged {
            version,
            at: Utc::now(),
            entries,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
        hub.publish(Event::Leaderboard((*snapshot).clone()));
        Ok(())
    }
}

async fn top(db: &DatabaseConnection) -> Result<Vec<LeaderboardRow>, sea_orm::DbErr> {
    Ok(user::Entity::find()
        .filter(user::Column::Points.gt(0))
        .order_by_desc(user::Column::Points)
        .order_by_asc(user::Column::Id)
        .limit(LEADERBOARD_MAX as u64)
        .all(db)
        .await?
        .into_iter()
        .map(|u| LeaderboardRow {
            points: u.points,
            user: super::wire::card(&u),
        })
        .collect())
}

async fn current_version(db: &impl ConnectionTrait) -> Result<i64, sea_orm::DbErr> {
    Ok(counter::Entity::find_by_id(VERSION_COUNTER)
        .one(db)
        .await?
        .map(|c| c.value)
        .unwrap_or(0))
}

/// Adds one to the shared version counter and returns it (every instance draws from it, so
/// versions only grow).
async fn bump_version(db: &DatabaseConnection) -> Result<i64, sea_orm::DbErr> {
    let txn = db.begin().await?;
    let updated = counter::Entity::update_many()
        .col_expr(
            counter::Column::Value,
            Expr::col(counter::Column::Value).add(1),
        )
        .filter(counter::Column::Name.eq(VERSION_COUNTER))
        .exec(&txn)
        .await?;
    if updated.rows_affected == 0 {
        counter::Entity::insert(counter::ActiveModel {
            name: Set(VERSION_COUNTER.to_owned()),
            value: Set(1),
        })
        .exec_without_returning(&txn)
        .await?;
    }
    let version = current_version(&txn).await?;
    txn.commit().await?;
    Ok(version)
}

/// A ranked entry: rank 1 is the top.
#[derive(Clone, Debug)]
pub struct RankedEntry {
    pub rank: i64,
    pub user: user::Model,
    pub points: i64,
}

/// The first `limit` entries of a snapshot, ranked.
pub fn ranked(snapshot: &LeaderboardChanged, limit: usize) -> Vec<RankedEntry> {
    snapshot
        .entries
        .iter()
        .take(limit)
        .enumerate()
        .map(|(i, row)| RankedEntry {
            rank: i as i64 + 1,
            user: super::wire::user_of(&row.user),
            points: row.points,
        })
        .collect()
}

pub fn validate_limit(limit: Option<i32>) -> DomainResult<usize> {
    let limit = limit.unwrap_or(10);
    if (1..=LEADERBOARD_MAX).contains(&limit) {
        Ok(limit as usize)
    } else {
        Err(DomainError::bad_input(format!(
            "limit must be between 1 and {LEADERBOARD_MAX}"
        )))
    }
}

impl Domain {
    /// Admin: gives (or takes) points, with a reason kept in the ledger.
    pub async fn award_points(
        &self,
        viewer: &Viewer,
        user_id: &str,
        points: i32,
        reason: Option<&str>,
    ) -> DomainResult<RankedEntry> {
        require_admin(viewer)?;
        if points == 0 || points.abs() > AWARD_MAX {
            return Err(DomainError::bad_input(format!(
                "points must be non-zero and at most {AWARD_MAX} either way"
            )));
        }
        if reason.is_some_and(|r| r.chars().count() > 200) {
            return Err(DomainError::bad_input(
                "reason must be at most 200 characters",
            ));
        }
        let txn = self.db.begin().await?;
        // Bound as i64, as sendMessage binds it: on PostgreSQL both share one cached prepared
        // statement, whose parameter type is fixed by whichever ran first.
        let updated = user::Entity::update_many()
            .col_expr(
                user::Column::Points,
                Expr::col(user::Column::Points).add(i64::from(points)),
            )
            .filter(user::Column::Id.eq(user_id))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Err(DomainError::NotFound(format!("user {user_id} not found")));
        }
        points_ledger::Entity::insert(points_ledger::ActiveModel {
            user_id: Set(user_id.to_owned()),
            points: Set(points.into()),
            reason: Set(reason.map(str::to_owned)),
            created_at: Set(Utc::now()),
            ..Default::default()
        })
        .exec_without_returning(&txn)
        .await?;
        let user = user::Entity::find_by_id(user_id)
            .one(&txn)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("user {user_id} not found")))?;
        // Users ranked above: more points, or as many and a smaller id.
        let above = user::Entity::find()
            .filter(user::Column::Points.gt(0))
            .filter(
                user::Column::Points.gt(user.points).or(user::Column::Points
                    .eq(user.points)
                    .and(user::Column::Id.lt(user.id.as_str()))),
            )
            .count(&txn)
            .await?;
        txn.commit().await?;
        self.leaderboard.points_changed();
        Ok(RankedEntry {
            rank: above as i64 + 1,
            points: user.points,
            user,
        })
    }

    pub fn leaderboard_top(
        &self,
        limit: Option<i32>,
    ) -> DomainResult<(Arc<LeaderboardChanged>, usize)> {
        let limit = validate_limit(limit)?;
        Ok((self.leaderboard.snapshot(), limit))
    }
}
