//! Notifications: stored, then pushed to every live connection of the recipient. Offline
//! recipients find them in `notifications` with `readAt: null`.

use chrono::Utc;
use sea_orm::{
    sea_query::{Expr, ExprTrait},
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use super::{require_admin, require_user, Domain, DomainError, DomainResult};
use crate::auth::Viewer;
use crate::db::{notification, user};
use crate::hub::event::NotificationAdded;
use crate::hub::Event;

pub const TITLE_MAX: usize = 500;
pub const BODY_MAX: usize = 5000;
pub const KIND_MAX: usize = 64;
/// Rows per INSERT when notifying many users.
const BATCH: usize = 500;
/// The largest page of `notifications(last)`.
pub const NOTIFICATIONS_MAX: i32 = 200;
/// Most ids one `markNotificationsRead` may name (without ids it marks every one): a longer
/// list is refused, not sent to the database as a statement with that many parameters.
pub const MARK_READ_MAX: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Success,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Success => "SUCCESS",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "SUCCESS" => Level::Success,
            "WARNING" => Level::Warning,
            "ERROR" => Level::Error,
            _ => Level::Info,
        }
    }
}

/// Who a notification goes to.
#[derive(Clone, Debug)]
pub enum Audience {
    User(String),
    Room(String),
    Role(String),
    Everyone,
}

/// A notification to send.
#[derive(Clone, Debug)]
pub struct Draft {
    pub kind: String,
    pub level: Level,
    pub title: String,
    pub body: Option<String>,
    pub data: Option<serde_json::Value>,
}

impl Draft {
    fn validate(&self) -> DomainResult<()> {
        let kind_ok = (1..=KIND_MAX).contains(&self.kind.len())
            && self
                .kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
        if !kind_ok {
            return Err(DomainError::bad_input(format!(
                "kind must be 1-{KIND_MAX} characters of letters, digits, '_', '.', '-' or ':'"
            )));
        }
        if self.title.trim().is_empty() || self.title.chars().count() > TITLE_MAX {
            return Err(DomainError::bad_input(format!(
                "title must be 1-{TITLE_MAX} characters"
            )));
        }
        if self
            .body
            .as_ref()
            .is_some_and(|b| b.chars().count() > BODY_MAX)
        {
            return Err(DomainError::bad_input(format!(
                "body must be at most {BODY_MAX} characters"
            )));
        }
        Ok(())
    }
}

impl Domain {
    /// Admin: notifies one user, a room's members, a role, or everyone. Returns how many
    /// users were notified.
    pub async fn send_notification(
        &self,
        viewer: &Viewer,
        audience: Audience,
        draft: Draft,
    ) -> DomainResult<usize> {
        let admin = require_admin(viewer)?;
        draft.validate()?;
        self.limits
            .check(&admin.id, super::limits::Action::Notification)
            .await?;
        let recipients: Vec<String> = match &audience {
            Audience::User(id) => {
                self.user_by_id(id)
                    .await?
                    .ok_or_else(|| DomainError::NotFound(format!("user {id} not found")))?;
                vec![id.clone()]
            }
            Audience::Room(room_id) => {
                super::records::validate_room_id(room_id)?;
                self.room(room_id)
                    .await?
                    .ok_or_else(|| DomainError::NotFound(format!("room {room_id} not found")))?;
                self.member_ids(room_id).await?
            }
            Audience::Role(role) => {
                user::Entity::find()
                    .select_only()
                    .column(user::Column::Id)
                    .filter(user::Column::Role.eq(role.as_str()))
                    .into_tuple()
                    .all(&self.db)
                    .await?
            }
            Audience::Everyone => {
                user::Entity::find()
                    .select_only()
                    .column(user::Column::Id)
                    .into_tuple()
                    .all(&self.db)
                    .await?
            }
        };
        self.notify(&recipients, &draft).await
    }

    /// Stores one notification per recipient, then pushes each to its recipient's topic.
    /// Each recipient's notifications are numbered in the same transaction that stores them,
    /// which locks the recipient's row: per user, commit order is number order.
    pub(crate) async fn notify(&self, recipients: &[String], draft: &Draft) -> DomainResult<usize> {
        let mut recipients = recipients.to_vec();
        // Sorted, so concurrent senders lock users in one order and cannot deadlock.
        recipients.sort();
        recipients.dedup();
        let now = Utc::now();
        let mut count = 0;
        for chunk in recipients.chunks(BATCH) {
            let txn = self.db.begin().await?;
            if txn.get_database_backend() == DbBackend::Postgres {
                user::Entity::find()
                    .select_only()
                    .column(user::Column::Id)
                    .filter(user::Column::Id.is_in(chunk.iter().cloned()))
                    .order_by_asc(user::Column::Id)
                    .lock_exclusive()
                    .into_tuple::<String>()
                    .all(&txn)
                    .await?;
            }
            user::Entity::update_many()
                .col_expr(
                    user::Column::NotificationSeq,
                    Expr::col(user::Column::NotificationSeq).add(1),
                )
                .filter(user::Column::Id.is_in(chunk.iter().cloned()))
                .exec(&txn)
                .await?;
            let numbered: Vec<(String, i64)> = user::Entity::find()
                .select_only()
                .column(user::Column::Id)
                .column(user::Column::NotificationSeq)
                .filter(user::Column::Id.is_in(chunk.iter().cloned()))
                .into_tuple()
                .all(&txn)
                .await?;
            if numbered.is_empty() {
                txn.rollback().await?;
                continue;
            }
            let rows = numbered
                .into_iter()
                .map(|(user_id, seq)| notification::ActiveModel {
                    user_id: Set(user_id),
                    seq: Set(seq),
                    kind: Set(draft.kind.clone()),
                    level: Set(draft.level.as_str().to_owned()),
                    title: Set(draft.title.clone()),
                    body: Set(draft.body.clone()),
                    data: Set(draft.data.clone()),
                    created_at: Set(now),
                    read_at: Set(None),
                    ..Default::default()
                });
            let stored = notification::Entity::insert_many(rows)
                .exec_with_returning(&txn)
                .await?;
            txn.commit().await?;
            count += stored.len();
            for notification in stored {
                self.hub.publish(Event::Notification(NotificationAdded {
                    notification: super::wire::stored(&notification),
                }));
            }
        }
        Ok(count)
    }

    /// The viewer's notifications, newest last: the `last` ones before `before`.
    pub async fn notifications(
        &self,
        viewer: &Viewer,
        unread_only: bool,
        last: Option<i32>,
        before: Option<&str>,
    ) -> DomainResult<Vec<notification::Model>> {
        let me = require_user(viewer)?;
        let last = last.unwrap_or(50);
        if !(0..=NOTIFICATIONS_MAX).contains(&last) {
            crate::metrics::graphql_refused("page");
            return Err(DomainError::bad_input(format!(
                "last must be between 0 and {NOTIFICATIONS_MAX}"
            )));
        }
        let mut query = notification::Entity::find()
            .filter(notification::Column::UserId.eq(me.id.as_str()))
            .order_by_desc(notification::Column::Id)
            .limit(last as u64);
        if unread_only {
            query = query.filter(notification::Column::ReadAt.is_null());
        }
        if let Some(before) = before {
            let before = super::records::parse_message_id(before)?;
            query = query.filter(notification::Column::Id.lt(before));
        }
        let mut rows = query.all(&self.db).await?;
        rows.reverse();
        Ok(rows)
    }

    /// Notifications of `user_id` numbered above `after_seq`, in order (catch-up).
    pub(crate) async fn notifications_after_seq(
        &self,
        user_id: &str,
        after_seq: i64,
    ) -> DomainResult<Vec<notification::Model>> {
        Ok(notification::Entity::find()
            .filter(notification::Column::UserId.eq(user_id))
            .filter(notification::Column::Seq.gt(after_seq))
            .order_by_asc(notification::Column::Seq)
            .limit(super::records::PAGE)
            .all(&self.db)
            .await?)
    }

    pub async fn unread_notification_count(&self, viewer: &Viewer) -> DomainResult<u64> {
        let me = require_user(viewer)?;
        Ok(notification::Entity::find()
            .filter(notification::Column::UserId.eq(me.id.as_str()))
            .filter(notification::Column::ReadAt.is_null())
            .count(&self.db)
            .await?)
    }

    /// Marks the viewer's notifications read: the given ids, or all. Returns how many changed.
    pub async fn mark_notifications_read(
        &self,
        viewer: &Viewer,
        ids: Option<&[String]>,
    ) -> DomainResult<u64> {
        let me = require_user(viewer)?;
        let mut update = notification::Entity::update_many()
            .col_expr(notification::Column::ReadAt, Expr::value(Utc::now()))
            .filter(notification::Column::UserId.eq(me.id.as_str()))
            .filter(notification::Column::ReadAt.is_null());
        if let Some(ids) = ids {
            if ids.len() > MARK_READ_MAX {
                crate::metrics::graphql_refused("page");
                return Err(DomainError::bad_input(format!(
                    "at most {MARK_READ_MAX} ids at once (none marks every notification read)"
                )));
            }
            let ids = ids
                .iter()
                .map(|id| super::records::parse_message_id(id))
                .collect::<DomainResult<Vec<_>>>()?;
            update = update.filter(notification::Column::Id.is_in(ids));
        }
        Ok(update.exec(&self.db).await?.rows_affected)
    }
}

/// The `@names` a message mentions (with and without a trailing '.' or '-', which may end a
/// sentence rather than the name).
pub fn mentioned_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in body.match_indices('@') {
        // Only at a word start: "mail@example" is not a mention.
        if body[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = body[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            .take(33)
            .collect();
        if name.is_empty() || name.len() > 32 {
            continue;
        }
        let trimmed = name.trim_end_matches(['.', '-']).to_owned();
        if !trimmed.is_empty() && trimmed != name {
            names.push(trimmed);
        }
        names.push(name);
    }
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::mentioned_names;

    #[test]
    fn mentions_are_names_after_an_at_sign_at_a_word_start() {
        assert_eq!(
            mentioned_names("hi @bob and @carol."),
            vec!["bob", "carol", "carol."]
        );
        assert!(mentioned_names("mail me at x@example.com").is_empty());
        assert_eq!(mentioned_names("@alice_1: look"), vec!["alice_1"]);
        assert!(mentioned_names("just an @ sign").is_empty());
    }
}
