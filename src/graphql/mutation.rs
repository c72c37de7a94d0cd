use async_graphql::{Context, Object, Result, ID};

use super::errors::IntoGql;
use super::types::{AuthPayload, Message, Room, User};
use super::{domain, viewer};

pub struct Mutation;

#[Object]
impl Mutation {
    /// Creates an account; returns a token for it.
    async fn register(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> Result<AuthPayload> {
        let (token, user) = domain(ctx).register(&username, &password).await.gql()?;
        Ok(AuthPayload {
            token,
            user: User(user),
        })
    }

    /// Exchanges a username and password for a token.
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> Result<AuthPayload> {
        let (token, user) = domain(ctx).login(&username, &password).await.gql()?;
        Ok(AuthPayload {
            token,
            user: User(user),
        })
    }

    /// Creates a room (its id is a slug); the creator joins it.
    async fn create_room(
        &self,
        ctx: &Context<'_>,
        id: ID,
        title: Option<String>,
        #[graphql(default_with = "Some(false)")] is_private: Option<bool>,
    ) -> Result<Room> {
        let joined = domain(ctx)
            .create_room(
                viewer(ctx),
                &id,
                title.as_deref(),
                is_private.unwrap_or(false),
            )
            .await
            .gql()?;
        Ok(Room(joined.room))
    }

    /// Joins a room, creating a public one when it does not exist yet.
    async fn join_room(&self, ctx: &Context<'_>, room_id: ID) -> Result<Room> {
        let joined = domain(ctx).join_room(viewer(ctx), &room_id).await.gql()?;
        Ok(Room(joined.room))
    }

    /// Leaves a room; false when the viewer was not a member.
    async fn leave_room(&self, ctx: &Context<'_>, room_id: ID) -> Result<bool> {
        let left = domain(ctx).leave_room(viewer(ctx), &room_id).await.gql()?;
        Ok(left.is_some())
    }

    /// Adds a user to a room (how people get into private rooms); members and admins may.
    async fn invite_to_room(&self, ctx: &Context<'_>, room_id: ID, user_id: ID) -> Result<bool> {
        domain(ctx)
            .invite_to_room(viewer(ctx), &room_id, &user_id)
            .await
            .gql()?;
        Ok(true)
    }

    /// Sends a message. A retry with the same `clientMessageId` returns the first message.
    async fn send_message(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        body: String,
        client_message_id: Option<String>,
    ) -> Result<Message> {
        let sent = domain(ctx)
            .send_message(viewer(ctx), &room_id, &body, client_message_id.as_deref())
            .await
            .gql()?;
        Ok(Message(sent.view))
    }
}
