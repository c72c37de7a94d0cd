//! The GraphQL object types, each a thin view over a domain value.

use async_graphql::{Enum, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};

use super::errors::IntoGql;
use crate::db::{room, user};
use crate::domain::messages::{MessageKind as DomainKind, MessageView};

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum MessageKind {
    User,
    System,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum PresenceStatus {
    Online,
    Away,
    Busy,
    Offline,
}

pub struct User(pub user::Model);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }

    async fn username(&self) -> &str {
        &self.0.username
    }

    async fn role(&self) -> &str {
        &self.0.role
    }

    async fn points(&self) -> i32 {
        i32::try_from(self.0.points).unwrap_or(if self.0.points < 0 {
            i32::MIN
        } else {
            i32::MAX
        })
    }

    /// OFFLINE until live presence is tracked (the realtime layer reports connections).
    async fn status(&self) -> PresenceStatus {
        PresenceStatus::Offline
    }

    async fn last_seen_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_seen_at
    }
}

pub struct Room(pub room::Model);

#[Object]
impl Room {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }

    async fn title(&self) -> &str {
        &self.0.title
    }

    async fn is_private(&self) -> bool {
        self.0.is_private
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn member_count(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<i32> {
        let n = super::domain(ctx).member_count(&self.0.id).await.gql()?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    async fn members(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<Vec<User>> {
        let users = super::domain(ctx).members(&self.0.id).await.gql()?;
        Ok(users.into_iter().map(User).collect())
    }
}

pub struct Message(pub MessageView);

#[Object]
impl Message {
    async fn id(&self) -> ID {
        ID(self.0.message.id.to_string())
    }

    async fn room_id(&self) -> ID {
        ID(self.0.message.room_id.clone())
    }

    async fn kind(&self) -> MessageKind {
        match DomainKind::parse(&self.0.message.kind) {
            DomainKind::User => MessageKind::User,
            DomainKind::System => MessageKind::System,
        }
    }

    async fn sender(&self) -> Option<User> {
        self.0.sender.clone().map(User)
    }

    async fn body(&self) -> &str {
        &self.0.message.body
    }

    async fn client_message_id(&self) -> Option<&str> {
        self.0.message.client_message_id.as_deref()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.message.created_at
    }
}

#[derive(SimpleObject)]
pub struct AuthPayload {
    pub token: String,
    pub user: User,
}
