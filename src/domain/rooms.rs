//! Rooms and their members. Joining or leaving posts a SYSTEM message to the room; private rooms
//! are joined by invitation only.

use chrono::Utc;
use sea_orm::{
    sea_query::ExprTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, SqlErr, TransactionTrait,
};

pub use super::records::validate_room_id;
use super::records::{insert_announcement, MessageView, JOINED, LEFT};
use super::{require_user, Domain, DomainError, DomainResult};
use crate::auth::{AuthUser, Viewer};
use crate::db::{room, room_member, user};
use crate::hub::{Event, Topic};

const TITLE_MAX: usize = 200;
/// The page of `rooms` and `Room.members` when the client asks for none.
pub const PAGE_DEFAULT: i32 = 50;
/// The largest page of `rooms` and `Room.members`: what one request can make the server load
/// stays bounded however many rooms and members there are.
pub const PAGE_MAX: i32 = 100;

/// A page size as a client gave it (`None`: the default), checked against `PAGE_MAX`.
pub fn page_size(first: Option<i32>) -> DomainResult<u64> {
    let first = first.unwrap_or(PAGE_DEFAULT);
    if !(0..=PAGE_MAX).contains(&first) {
        crate::metrics::graphql_refused("page");
        return Err(DomainError::bad_input(format!(
            "first must be between 0 and {PAGE_MAX}"
        )));
    }
    Ok(first as u64)
}

/// A page's cursor (`after`): the id of the last item of the previous page. Any id up to the
/// longest one the server hands out is a cursor; nothing has to exist under it.
fn cursor(after: Option<&str>) -> DomainResult<Option<&str>> {
    match after {
        Some(a) if a.is_empty() || a.len() > 128 => Err(DomainError::bad_input(
            "after must be the id of the last item of the previous page",
        )),
        other => Ok(other),
    }
}

/// What joining did: the room, and the SYSTEM message it posted (none when already a member).
pub struct Joined {
    pub room: room::Model,
    pub announcement: Option<MessageView>,
}

impl Domain {
    pub async fn room(&self, id: &str) -> DomainResult<Option<room::Model>> {
        Ok(room::Entity::find_by_id(id).one(&self.db).await?)
    }

    async fn existing_room(&self, id: &str) -> DomainResult<room::Model> {
        validate_room_id(id)?;
        self.room(id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("room {id} not found")))
    }

    pub async fn is_member(&self, room_id: &str, user_id: &str) -> DomainResult<bool> {
        Ok(
            room_member::Entity::find_by_id((room_id.to_owned(), user_id.to_owned()))
                .one(&self.db)
                .await?
                .is_some(),
        )
    }

    /// Whether the viewer may see the room at all (its title and members): public rooms are
    /// visible to every signed-in user, private rooms to members and admins.
    pub async fn can_see_room(&self, viewer: &Viewer, room: &room::Model) -> DomainResult<bool> {
        let Some(user) = viewer.user() else {
            return Ok(false);
        };
        Ok(!room.is_private || user.is_admin() || self.is_member(&room.id, &user.id).await?)
    }

    /// The room, if the viewer is a member (admins read every room): the rule for reading a
    /// room's messages, typing and presence.
    pub async fn require_member(
        &self,
        viewer: &Viewer,
        room_id: &str,
    ) -> DomainResult<room::Model> {
        let user = require_user(viewer)?;
        let room = self.existing_room(room_id).await?;
        if user.is_admin() || self.is_member(room_id, &user.id).await? {
            Ok(room)
        } else {
            Err(DomainError::Forbidden(format!(
                "not a member of room {room_id}"
            )))
        }
    }

    /// `room(id)`: the room when the viewer may see it; `FORBIDDEN` for someone else's private
    /// room.
    pub async fn visible_room(
        &self,
        viewer: &Viewer,
        id: &str,
    ) -> DomainResult<Option<room::Model>> {
        require_user(viewer)?;
        validate_room_id(id)?;
        match self.room(id).await? {
            None => Ok(None),
            Some(room) if self.can_see_room(viewer, &room).await? => Ok(Some(room)),
            Some(_) => Err(DomainError::Forbidden(format!("room {id} is private"))),
        }
    }

    /// A page of the rooms the viewer can see (every public room and the private rooms they
    /// belong to), in id order: the first `first` (default 50, at most `PAGE_MAX`) with an id
    /// after `after`.
    pub async fn visible_rooms(
        &self,
        viewer: &Viewer,
        first: Option<i32>,
        after: Option<&str>,
    ) -> DomainResult<Vec<room::Model>> {
        let user = require_user(viewer)?;
        let first = page_size(first)?;
        let after = cursor(after)?;
        let mut query = room::Entity::find()
            .order_by_asc(room::Column::Id)
            .limit(first);
        if let Some(after) = after {
            query = query.filter(room::Column::Id.gt(after));
        }
        if !user.is_admin() {
            let mine = room_member::Entity::find()
                .select_only()
                .column(room_member::Column::RoomId)
                .filter(room_member::Column::UserId.eq(user.id.as_str()))
                .into_query();
            query = query.filter(
                room::Column::IsPrivate
                    .eq(false)
                    .or(room::Column::Id.in_subquery(mine)),
            );
        }
        Ok(query.all(&self.db).await?)
    }

    pub async fn member_count(&self, room_id: &str) -> DomainResult<u64> {
        Ok(room_member::Entity::find()
            .filter(room_member::Column::RoomId.eq(room_id))
            .count(&self.db)
            .await?)
    }

    pub async fn member_ids(&self, room_id: &str) -> DomainResult<Vec<String>> {
        Ok(room_member::Entity::find()
            .filter(room_member::Column::RoomId.eq(room_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| m.user_id)
            .collect())
    }

    /// The ids of the rooms a user belongs to.
    pub async fn rooms_of_member(&self, user_id: &str) -> DomainResult<Vec<String>> {
        Ok(room_member::Entity::find()
            .filter(room_member::Column::UserId.eq(user_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| m.room_id)
            .collect())
    }

    /// A page of a room's members in id order: the first `first` (default 50, at most
    /// `PAGE_MAX`) with an id after `after`. One query, whatever the page size.
    pub async fn members_page(
        &self,
        room_id: &str,
        first: Option<i32>,
        after: Option<&str>,
    ) -> DomainResult<Vec<user::Model>> {
        let first = page_size(first)?;
        let after = cursor(after)?;
        let mut ids = room_member::Entity::find()
            .select_only()
            .column(room_member::Column::UserId)
            .filter(room_member::Column::RoomId.eq(room_id));
        if let Some(after) = after {
            ids = ids.filter(room_member::Column::UserId.gt(after));
        }
        Ok(user::Entity::find()
            .filter(user::Column::Id.in_subquery(ids.into_query()))
            .order_by_asc(user::Column::Id)
            .limit(first)
            .all(&self.db)
            .await?)
    }

    /// Every member, in the order they joined.
    pub async fn members(&self, room_id: &str) -> DomainResult<Vec<user::Model>> {
        let ids: Vec<String> = room_member::Entity::find()
            .filter(room_member::Column::RoomId.eq(room_id))
            .order_by_asc(room_member::Column::JoinedAt)
            .order_by_asc(room_member::Column::UserId)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| m.user_id)
            .collect();
        let mut users = self.users_by_ids(&ids).await?;
        users.sort_by_key(|u| ids.iter().position(|id| *id == u.id));
        Ok(users)
    }

    /// Creates a room; its creator joins it.
    pub async fn create_room(
        &self,
        viewer: &Viewer,
        id: &str,
        title: Option<&str>,
        is_private: bool,
    ) -> DomainResult<Joined> {
        let user = require_user(viewer)?;
        validate_room_id(id)?;
        let title = normalize_title(title, id)?;
        if self.room(id).await?.is_some() {
            return Err(DomainError::bad_input(format!("room {id} already exists")));
        }
        self.check_room_count(&user.id).await?;
        match self.insert_room(id, &title, is_private, user).await {
            Ok(()) => {}
            Err(DomainError::BadInput(_)) => {
                return Err(DomainError::bad_input(format!("room {id} already exists")))
            }
            Err(e) => return Err(e),
        }
        self.add_member(id, &user.id, &user.username).await
    }

    async fn insert_room(
        &self,
        id: &str,
        title: &str,
        is_private: bool,
        creator: &AuthUser,
    ) -> DomainResult<()> {
        let model = room::ActiveModel {
            id: Set(id.to_owned()),
            title: Set(title.to_owned()),
            is_private: Set(is_private),
            created_by: Set(Some(creator.id.clone())),
            last_seq: Set(0),
            created_at: Set(Utc::now()),
        };
        match room::Entity::insert(model)
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Err(DomainError::bad_input("room exists"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Joins a room, creating it (public) when it does not exist yet. Joining a room one already
    /// belongs to changes nothing and posts nothing.
    pub async fn join_room(&self, viewer: &Viewer, id: &str) -> DomainResult<Joined> {
        let user = require_user(viewer)?;
        validate_room_id(id)?;
        let room = match self.room(id).await? {
            Some(room) => room,
            None => {
                self.check_room_count(&user.id).await?;
                // A concurrent join may create it first; either way it exists afterwards.
                let _ = self.insert_room(id, id, false, user).await;
                self.existing_room(id).await?
            }
        };
        if self.is_member(id, &user.id).await? {
            return Ok(Joined {
                room,
                announcement: None,
            });
        }
        if room.is_private && !user.is_admin() {
            return Err(DomainError::Forbidden(format!(
                "room {id} is private: join by invitation"
            )));
        }
        self.add_member(id, &user.id, &user.username).await
    }

    /// Refuses a user who already belongs to the most rooms allowed.
    async fn check_room_count(&self, user_id: &str) -> DomainResult<()> {
        let rooms = room_member::Entity::find()
            .filter(room_member::Column::UserId.eq(user_id))
            .count(&self.db)
            .await?;
        if rooms >= self.rules.max_rooms_per_user {
            return Err(DomainError::Forbidden(format!(
                "at most {} rooms per user: leave one first",
                self.rules.max_rooms_per_user
            )));
        }
        Ok(())
    }

    /// Adds a member and posts "NAME joined", in one transaction.
    async fn add_member(
        &self,
        room_id: &str,
        user_id: &str,
        username: &str,
    ) -> DomainResult<Joined> {
        self.check_room_count(user_id).await?;
        let txn = self.db.begin().await?;
        // The message insert bumps the room's counter first: that locks the room row, so the
        // membership change and its announcement are ordered with the room's other writes.
        let announcement = insert_announcement(
            &txn,
            room_id,
            user_id,
            JOINED,
            &format!("{username} joined"),
        )
        .await?;
        let member = room_member::ActiveModel {
            room_id: Set(room_id.to_owned()),
            user_id: Set(user_id.to_owned()),
            joined_at: Set(Utc::now()),
        };
        match room_member::Entity::insert(member)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                // A concurrent join of the same user won: nothing to announce.
                txn.rollback().await?;
                return Ok(Joined {
                    room: self.existing_room(room_id).await?,
                    announcement: None,
                });
            }
            Err(e) => return Err(e.into()),
        }
        txn.commit().await?;
        let announcement = MessageView {
            message: announcement,
            sender: None,
        };
        self.publish_message(&announcement);
        self.presence.joined_room(user_id).await;
        Ok(Joined {
            room: self.existing_room(room_id).await?,
            announcement: Some(announcement),
        })
    }

    /// Leaves a room and posts "NAME left". `Ok(None)` when the viewer was not a member.
    pub async fn leave_room(&self, viewer: &Viewer, id: &str) -> DomainResult<Option<MessageView>> {
        let user = require_user(viewer)?;
        self.existing_room(id).await?;
        let txn = self.db.begin().await?;
        let removed = room_member::Entity::delete_many()
            .filter(room_member::Column::RoomId.eq(id))
            .filter(room_member::Column::UserId.eq(user.id.as_str()))
            .exec(&txn)
            .await?
            .rows_affected;
        if removed == 0 {
            txn.rollback().await?;
            return Ok(None);
        }
        let announcement =
            insert_announcement(&txn, id, &user.id, LEFT, &format!("{} left", user.username))
                .await?;
        txn.commit().await?;
        let announcement = MessageView {
            message: announcement,
            sender: None,
        };
        // Message streams end for the leaver at this announcement, which the room's sequence
        // numbers. The room's unnumbered streams (typing, presence in the room, the room's
        // channel) end at the `Left` that follows it on each of their topics: published before
        // this call returns, so ahead of anything published after the leave.
        self.publish_message(&announcement);
        let left = crate::hub::event::LeftRoom {
            room_id: id.to_owned(),
            user_id: user.id.clone(),
        };
        self.hub
            .publish_to(Topic::RoomTyping(id.to_owned()), Event::Left(left.clone()));
        self.hub.publish_to(
            Topic::Channel(format!("room:{id}")),
            Event::Left(left.clone()),
        );
        self.hub.publish_to(Topic::Presence, Event::Left(left));
        Ok(Some(announcement))
    }

    /// Adds another user to a room. Members of the room (and admins) may invite; this is how
    /// people get into private rooms.
    pub async fn invite_to_room(
        &self,
        viewer: &Viewer,
        room_id: &str,
        invitee_id: &str,
    ) -> DomainResult<Joined> {
        let user = require_user(viewer)?;
        let room = self.existing_room(room_id).await?;
        if !user.is_admin() && !self.is_member(room_id, &user.id).await? {
            return Err(DomainError::Forbidden(format!(
                "only members of room {room_id} can invite to it"
            )));
        }
        let invitee = self
            .user_by_id(invitee_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("user {invitee_id} not found")))?;
        if self.is_member(room_id, &invitee.id).await? {
            return Ok(Joined {
                room,
                announcement: None,
            });
        }
        self.add_member(room_id, &invitee.id, &invitee.username)
            .await
    }
}

fn normalize_title(title: Option<&str>, id: &str) -> DomainResult<String> {
    let title = title.map(str::trim).filter(|t| !t.is_empty()).unwrap_or(id);
    if title.chars().count() > TITLE_MAX {
        return Err(DomainError::bad_input(format!(
            "title must be at most {TITLE_MAX} characters"
        )));
    }
    Ok(title.to_owned())
}
