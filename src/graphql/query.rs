use async_graphql::{Context, Object, Result, ID};

use super::errors::IntoGql;
use super::types::{Message, Room, User};
use super::{domain, viewer};
use crate::domain::require_user;

pub struct Query;

#[Object]
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

    /// Rooms the viewer can see: every public room and the private rooms they belong to.
    async fn rooms(&self, ctx: &Context<'_>) -> Result<Vec<Room>> {
        let rooms = domain(ctx).visible_rooms(viewer(ctx)).await.gql()?;
        Ok(rooms.into_iter().map(Room).collect())
    }

    async fn room(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Room>> {
        Ok(domain(ctx)
            .visible_room(viewer(ctx), &id)
            .await
            .gql()?
            .map(Room))
    }

    /// A room's messages in ascending id order: the `last` ones before message `before`.
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
        Ok(views.into_iter().map(Message).collect())
    }
}
