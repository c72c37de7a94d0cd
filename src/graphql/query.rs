use async_graphql::{Context, Object, Result, ID};

use super::errors::IntoGql;
use super::limits::page_cost;
use super::types::{LeaderboardSnapshot, Message, Notification, Presence, Room, User};
use super::{domain, viewer};
use crate::domain::leaderboard::LEADERBOARD_MAX;
use crate::domain::messages::HISTORY_MAX;
use crate::domain::notifications::NOTIFICATIONS_MAX;
use crate::domain::require_user;
use crate::domain::rooms::{PAGE_DEFAULT, PAGE_MAX};
use crate::domain::search::{SEARCH_DEFAULT, SEARCH_MAX};

pub struct Query;

/// Merged with the console's queries into the schema's `Query` root (`graphql::Queries`).
#[Object(name = "CoreQuery")]
impl Query {
    /// The signed-in user; null when anonymous.
    async fn me(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let Some(user) = viewer(ctx).user() else {
            return Ok(None);
        };
        Ok(domain(ctx).user_by_id(&user.id).await.gql()?.map(User))
    }

    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<Option<User>> {
        require_user(viewer(ctx)).gql()?;
        Ok(domain(ctx).user_by_id(&id).await.gql()?.map(User))
    }

    /// Rooms the viewer can see (every public room and the private rooms they belong to), in
    /// id order, a page at a time: the `first` (at most 100) after the room `after`. The next
    /// page is `after` the last room's id; a page shorter than `first` is the last.
    #[graphql(complexity = "page_cost(first, PAGE_DEFAULT, PAGE_MAX, child_complexity)")]
    async fn rooms(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: Option<i32>,
        after: Option<ID>,
    ) -> Result<Vec<Room>> {
        let rooms = domain(ctx)
            .visible_rooms(viewer(ctx), first, after.as_ref().map(|a| a.as_str()))
            .await
            .gql()?;
        Room::list(ctx, rooms).await
    }

    async fn room(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Room>> {
        Ok(domain(ctx)
            .visible_room(viewer(ctx), &id)
            .await
            .gql()?
            .map(Room::from))
    }

    /// A room's messages in ascending id order: the `last` ones before message `before`.
    #[graphql(complexity = "page_cost(last, 50, HISTORY_MAX, child_complexity)")]
    async fn messages(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        before: Option<ID>,
        #[graphql(default = 50)] last: Option<i32>,
    ) -> Result<Vec<Message>> {
        let views = domain(ctx)
            .history(
                viewer(ctx),
                &room_id,
                before.as_ref().map(|b| b.as_str()),
                last,
            )
            .await
            .gql()?;
        Message::page(ctx, views).await
    }

    /// Who is online: everyone, or a room's members.
    async fn online_users(&self, ctx: &Context<'_>, room_id: Option<ID>) -> Result<Vec<Presence>> {
        let online = domain(ctx)
            .online_users(viewer(ctx), room_id.as_ref().map(|r| r.as_str()))
            .await
            .gql()?;
        Ok(online.into_iter().map(Presence).collect())
    }

    #[graphql(complexity = "user_ids.len().saturating_mul(child_complexity)")]
    async fn presence_of(&self, ctx: &Context<'_>, user_ids: Vec<ID>) -> Result<Vec<Presence>> {
        let ids: Vec<String> = user_ids.into_iter().map(|id| id.0).collect();
        let found = domain(ctx).presence_of(viewer(ctx), &ids).await.gql()?;
        Ok(found.into_iter().map(Presence).collect())
    }

    /// The top `limit` (1-100) users by points.
    #[graphql(complexity = "page_cost(limit, 10, LEADERBOARD_MAX, child_complexity)")]
    async fn leaderboard(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] limit: Option<i32>,
    ) -> Result<LeaderboardSnapshot> {
        let (snapshot, limit) = domain(ctx).leaderboard_top(limit).gql()?;
        Ok(LeaderboardSnapshot { snapshot, limit })
    }

    /// The viewer's notifications, oldest first: the `last` (at most 200) before `before`.
    #[graphql(complexity = "page_cost(last, 50, NOTIFICATIONS_MAX, child_complexity)")]
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(false)")] unread_only: Option<bool>,
        #[graphql(default = 50)] last: Option<i32>,
        before: Option<ID>,
    ) -> Result<Vec<Notification>> {
        let rows = domain(ctx)
            .notifications(
                viewer(ctx),
                unread_only.unwrap_or(false),
                last,
                before.as_ref().map(|b| b.as_str()),
            )
            .await
            .gql()?;
        Ok(rows.into_iter().map(Notification).collect())
    }

    async fn unread_notification_count(&self, ctx: &Context<'_>) -> Result<i32> {
        let n = domain(ctx)
            .unread_notification_count(viewer(ctx))
            .await
            .gql()?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// Messages matching every word of `query` (letters and digits; anything else separates
    /// words) in the rooms the viewer belongs to, or in `roomId`: best match first, then
    /// newest; `first` (at most 50) from `offset` on. At most 200 characters and 16 words.
    #[graphql(complexity = "page_cost(first, SEARCH_DEFAULT, SEARCH_MAX, child_complexity)")]
    async fn search_messages(
        &self,
        ctx: &Context<'_>,
        query: String,
        room_id: Option<ID>,
        #[graphql(default = 20)] first: Option<i32>,
        #[graphql(default = 0)] offset: Option<i32>,
    ) -> Result<Vec<Message>> {
        let views = domain(ctx)
            .search_messages(
                viewer(ctx),
                &query,
                room_id.as_ref().map(|r| r.as_str()),
                first,
                offset,
            )
            .await
            .gql()?;
        Message::page(ctx, views).await
    }
}
