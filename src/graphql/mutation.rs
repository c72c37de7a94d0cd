use async_graphql::{Context, Object, Result, ID};

use super::errors::IntoGql;
use super::types::{
    AuthPayload, ChannelEvent, LeaderboardEntry, Message, Presence, PresenceStatus, Room,
    SendNotificationInput, Session, User,
};
use super::{domain, viewer, SocketConnection};
use crate::auth::ClientAddress;
use crate::domain::notifications::{Audience, Draft};
use crate::domain::sessions::Credentials;
use crate::domain::DomainError;

pub struct Mutation;

/// Merged with `MessageChanges` into the schema's `Mutation` root (`graphql::Mutations`).
#[Object(name = "CoreMutation")]
impl Mutation {
    /// Creates an account; returns a token for it.
    async fn register(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> Result<AuthPayload> {
        let from = ctx.data_opt::<ClientAddress>().copied();
        let (token, user) = domain(ctx)
            .register(&username, &password, from)
            .await
            .gql()?;
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
        let from = ctx.data_opt::<ClientAddress>().copied();
        let (token, user) = domain(ctx).login(&username, &password, from).await.gql()?;
        Ok(AuthPayload {
            token,
            user: User(user),
        })
    }

    /// Over a WebSocket: the connection now uses `token`, which must be valid and name the
    /// same user (another user's is FORBIDDEN, and nothing changes). Its subscriptions go on
    /// without a gap; one the new token no longer allows ends with FORBIDDEN; the connection
    /// now closes when the new token expires. Over HTTP there is no connection to renew
    /// (BAD_USER_INPUT).
    async fn authenticate(&self, ctx: &Context<'_>, token: String) -> Result<Session> {
        let credentials = ctx.data_opt::<Credentials>();
        let session = domain(ctx)
            .authenticate(credentials, token.trim())
            .await
            .gql()?;
        Ok(Session(session))
    }

    /// A new token for the viewer's, which must be still valid and issued by this server (a
    /// token from an external identity provider is renewed with that provider: FORBIDDEN).
    /// On a WebSocket, pass it to `authenticate` to keep the connection.
    async fn refresh_token(&self, ctx: &Context<'_>) -> Result<AuthPayload> {
        let (token, user) = domain(ctx).refresh_token(viewer(ctx)).await.gql()?;
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
        Ok(Room::from(joined.room))
    }

    /// Joins a room, creating a public one when it does not exist yet.
    async fn join_room(&self, ctx: &Context<'_>, room_id: ID) -> Result<Room> {
        let joined = domain(ctx).join_room(viewer(ctx), &room_id).await.gql()?;
        Ok(Room::from(joined.room))
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
        Ok(Message::from(sent.view))
    }

    /// Tells the room's other members that the viewer is typing (expires after 5 s unless
    /// refreshed) or stopped.
    async fn set_typing(&self, ctx: &Context<'_>, room_id: ID, is_typing: bool) -> Result<bool> {
        let connection = ctx.data_opt::<SocketConnection>().map(|c| c.0);
        domain(ctx)
            .set_typing(viewer(ctx), &room_id, is_typing, connection)
            .await
            .gql()
    }

    /// Sets the status shown while the viewer is connected: ONLINE, AWAY or BUSY.
    async fn set_presence(&self, ctx: &Context<'_>, status: PresenceStatus) -> Result<Presence> {
        let p = domain(ctx)
            .set_presence(viewer(ctx), status.into())
            .await
            .gql()?;
        Ok(Presence(p))
    }

    /// Admin: notifies a user, a room's members, a role, or everyone; returns how many.
    async fn send_notification(
        &self,
        ctx: &Context<'_>,
        input: SendNotificationInput,
    ) -> Result<i32> {
        let audience = match (input.user_id, input.room_id, input.role) {
            (Some(user), None, None) => Audience::User(user.0),
            (None, Some(room), None) => Audience::Room(room.0),
            (None, None, Some(role)) => Audience::Role(role),
            (None, None, None) => Audience::Everyone,
            _ => {
                return Err(DomainError::bad_input(
                    "give at most one of userId, roomId and role",
                ))
                .gql()
            }
        };
        let draft = Draft {
            kind: input.kind,
            level: input
                .level
                .unwrap_or(super::types::NotificationLevel::Info)
                .into(),
            title: input.title,
            body: input.body,
            data: input.data.map(|d| d.0),
        };
        let n = domain(ctx)
            .send_notification_logged(viewer(ctx), audience, draft)
            .await
            .gql()?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// Marks the viewer's notifications read (the given ids, or all); returns how many changed.
    async fn mark_notifications_read(
        &self,
        ctx: &Context<'_>,
        ids: Option<Vec<ID>>,
    ) -> Result<i32> {
        let ids: Option<Vec<String>> = ids.map(|ids| ids.into_iter().map(|i| i.0).collect());
        let n = domain(ctx)
            .mark_notifications_read(viewer(ctx), ids.as_deref())
            .await
            .gql()?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// Admin: gives (or, negative, takes) points.
    async fn award_points(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        points: i32,
        reason: Option<String>,
    ) -> Result<LeaderboardEntry> {
        let entry = domain(ctx)
            .award_points(viewer(ctx), &user_id, points, reason.as_deref())
            .await
            .gql()?;
        Ok(LeaderboardEntry(entry))
    }

    /// Admin: publishes an app event to a channel's live subscribers (not stored).
    async fn publish(
        &self,
        ctx: &Context<'_>,
        channel: String,
        #[graphql(name = "type")] kind: String,
        data: Option<async_graphql::Json<serde_json::Value>>,
    ) -> Result<ChannelEvent> {
        let event = domain(ctx)
            .publish_event_logged(viewer(ctx), &channel, &kind, data.map(|d| d.0))
            .await
            .gql()?;
        Ok(ChannelEvent(event))
    }

    /// Admin: closes every connection of a user on every instance, and refuses the tokens
    /// issued to them so far.
    async fn disconnect_user(&self, ctx: &Context<'_>, user_id: ID) -> Result<bool> {
        domain(ctx)
            .disconnect_user_logged(viewer(ctx), &user_id)
            .await
            .gql()
    }
}

/// Changing messages after they are sent: edits, deletes, reactions, read receipts.
#[derive(Default)]
pub struct MessageChanges;

#[Object(name = "MessageChangesMutation")]
impl MessageChanges {
    /// Replaces a message's body (validated as when sending). Its author or an admin.
    async fn edit_message(&self, ctx: &Context<'_>, id: ID, body: String) -> Result<Message> {
        let view = domain(ctx)
            .edit_message(viewer(ctx), &id, &body)
            .await
            .gql()?;
        Ok(Message::from(view))
    }

    /// Deletes a message, leaving a tombstone: body "", `deletedAt` set. Its author or an
    /// admin.
    async fn delete_message(&self, ctx: &Context<'_>, id: ID) -> Result<Message> {
        let view = domain(ctx).delete_message(viewer(ctx), &id).await.gql()?;
        Ok(Message::from(view))
    }

    /// Adds the viewer's reaction (one emoji, at most 16 bytes) to a message.
    async fn react(&self, ctx: &Context<'_>, message_id: ID, emoji: String) -> Result<Message> {
        let view = domain(ctx)
            .react(viewer(ctx), &message_id, &emoji, true)
            .await
            .gql()?;
        Ok(Message::from(view))
    }

    /// Takes the viewer's reaction off a message.
    async fn unreact(&self, ctx: &Context<'_>, message_id: ID, emoji: String) -> Result<Message> {
        let view = domain(ctx)
            .react(viewer(ctx), &message_id, &emoji, false)
            .await
            .gql()?;
        Ok(Message::from(view))
    }

    /// Marks the room read up to a message of it (receipts only move forward).
    async fn mark_read(&self, ctx: &Context<'_>, room_id: ID, message_id: ID) -> Result<Room> {
        let room = domain(ctx)
            .mark_read(viewer(ctx), &room_id, &message_id)
            .await
            .gql()?;
        Ok(Room::from(room))
    }
}
