//! Messages: sending (validated, idempotent per sender with `clientMessageId`, persisted
//! before anything is published) and history.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::limits::Action;
use super::notifications::{mentioned_names, Draft, Level};
use super::records::validate_room_id;
pub use super::records::{parse_message_id, MessageKind, MessageView};
use super::sends::{SendRequest, Written};
use super::{Domain, DomainError, DomainResult};
use crate::auth::Viewer;
use crate::db::{message, user};

pub const BODY_MAX_CHARS: usize = 5000;
pub const CLIENT_ID_MAX: usize = 128;
pub const HISTORY_MAX: i32 = 200;
pub const HISTORY_DEFAULT: i32 = 50;

/// The outcome of `send_message`: `created` is false when a retry found its first message.
pub struct Sent {
    pub view: MessageView,
    pub created: bool,
}

pub(super) fn validate_body(body: &str) -> DomainResult<&str> {
    let body = body.trim();
    if body.is_empty() {
        return Err(DomainError::bad_input("message body must not be empty"));
    }
    if body.chars().count() > BODY_MAX_CHARS {
        return Err(DomainError::bad_input(format!(
            "message body must be at most {BODY_MAX_CHARS} characters"
        )));
    }
    Ok(body)
}

fn validate_client_id(id: Option<&str>) -> DomainResult<Option<&str>> {
    match id {
        None => Ok(None),
        Some(id) if !id.is_empty() && id.chars().count() <= CLIENT_ID_MAX => Ok(Some(id)),
        Some(_) => Err(DomainError::bad_input(format!(
            "clientMessageId must be 1-{CLIENT_ID_MAX} characters"
        ))),
    }
}

impl Domain {
    /// Sends a chat message to a room the viewer belongs to.
    ///
    /// The message joins the next batch of the group-commit writer (`sends`): three
    /// statements in a transaction shared with the sends queued beside it: the room's counter
    /// bump (which is also the membership check, and takes the room row's lock that orders the
    /// room's messages), the insert, and the sender's points (which returns the sender for the
    /// event). The writer publishes it once committed. A retry with a `clientMessageId` meets
    /// the unique (sender, client message id) index and is answered with the first message.
    pub async fn send_message(
        &self,
        viewer: &Viewer,
        room_id: &str,
        body: &str,
        client_message_id: Option<&str>,
    ) -> DomainResult<Sent> {
        let user = super::require_user(viewer)?;
        validate_room_id(room_id)?;
        let input =
            validate_body(body).and_then(|body| Ok((body, validate_client_id(client_message_id)?)));
        let (body, client_id) = match input {
            Ok(input) => input,
            Err(e) => {
                // Who may write to the room is answered before what they wrote.
                self.require_member(viewer, room_id).await?;
                return Err(e);
            }
        };
        if let Err(limited) = self.limits.check(&user.id, Action::Message).await {
            // Not being a member is the first answer; a retry is answered even when over the
            // limit, since it adds nothing.
            self.require_member(viewer, room_id).await?;
            return self.earlier_send(&user.id, client_id).await?.ok_or(limited);
        }
        let request = SendRequest {
            sender: user.id.clone(),
            admin: user.is_admin(),
            room_id: room_id.to_owned(),
            body: body.to_owned(),
            client_id: client_id.map(str::to_owned),
        };
        let view = match self.sends.write(request).await? {
            Written::Sent(view) => *view,
            Written::Refused => {
                // No such room, or not a member: say which.
                self.require_member(viewer, room_id).await?;
                return Err(DomainError::Forbidden(format!(
                    "not a member of room {room_id}"
                )));
            }
            Written::Retry => {
                // The first message with this clientMessageId is committed already.
                return self
                    .earlier_send(&user.id, client_id)
                    .await?
                    .ok_or_else(|| {
                        DomainError::Internal(anyhow::anyhow!("a retried message was not found"))
                    });
            }
        };
        if self.rules.points_per_message != 0 {
            self.leaderboard.points_changed();
        }
        self.notify_mentions(&view).await;
        Ok(Sent {
            view,
            created: true,
        })
    }

    /// The message a retry stands for: the sender's first with this `clientMessageId`.
    async fn earlier_send(
        &self,
        sender: &str,
        client_id: Option<&str>,
    ) -> DomainResult<Option<Sent>> {
        let Some(first) = self.find_by_client_id(sender, client_id).await? else {
            return Ok(None);
        };
        Ok(Some(Sent {
            view: self.with_sender(first).await?,
            created: false,
        }))
    }

    /// Publishes a committed message to the room's subscribers.
    pub(crate) fn publish_message(&self, view: &MessageView) {
        super::wire::publish(&self.hub, view);
    }

    /// Notifies the room members a message mentions by `@username` (never the sender). The
    /// message is already stored and sent: a failure here is logged, not returned.
    async fn notify_mentions(&self, view: &MessageView) {
        let names = mentioned_names(&view.message.body);
        if names.is_empty() {
            return;
        }
        let result = async {
            let members = self.member_ids(&view.message.room_id).await?;
            let mentioned: Vec<String> = user::Entity::find()
                .filter(user::Column::Username.is_in(names))
                .filter(user::Column::Id.is_in(members))
                .all(&self.db)
                .await?
                .into_iter()
                .map(|u| u.id)
                .filter(|id| Some(id) != view.message.sender_id.as_ref())
                .collect();
            if mentioned.is_empty() {
                return Ok(0);
            }
            let sender = view
                .sender
                .as_ref()
                .map(|s| s.username.as_str())
                .unwrap_or("someone");
            let draft = Draft {
                kind: "mention".to_owned(),
                level: Level::Info,
                title: format!("{sender} mentioned you in {}", view.message.room_id),
                body: Some(view.message.body.clone()),
                data: Some(serde_json::json!({
                    "roomId": view.message.room_id,
                    "messageId": view.message.id.to_string(),
                    "senderId": view.message.sender_id,
                })),
            };
            self.notify(&mentioned, &draft).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not notify mentions");
        }
    }

    async fn find_by_client_id(
        &self,
        sender_id: &str,
        client_id: Option<&str>,
    ) -> DomainResult<Option<message::Model>> {
        let Some(client_id) = client_id else {
            return Ok(None);
        };
        Ok(message::Entity::find()
            .filter(message::Column::SenderId.eq(sender_id))
            .filter(message::Column::ClientMessageId.eq(client_id))
            .one(&self.db)
            .await?)
    }

    pub(super) async fn with_sender(&self, message: message::Model) -> DomainResult<MessageView> {
        let sender = match &message.sender_id {
            Some(id) => self.user_by_id(id).await?,
            None => None,
        };
        Ok(MessageView { message, sender })
    }

    /// Attaches senders to messages with one query.
    pub async fn with_senders(
        &self,
        messages: Vec<message::Model>,
    ) -> DomainResult<Vec<MessageView>> {
        let mut ids: Vec<String> = messages
            .iter()
            .filter_map(|m| m.sender_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        let users = self.users_by_ids(&ids).await?;
        Ok(messages
            .into_iter()
            .map(|message| {
                let sender = message
                    .sender_id
                    .as_ref()
                    .and_then(|id| users.iter().find(|u| &u.id == id).cloned());
                MessageView { message, sender }
            })
            .collect())
    }

    /// The last `last` messages of a room before message `before` (all, without it), in
    /// ascending id order. Members only.
    pub async fn history(
        &self,
        viewer: &Viewer,
        room_id: &str,
        before: Option<&str>,
        last: Option<i32>,
    ) -> DomainResult<Vec<MessageView>> {
        self.require_member(viewer, room_id).await?;
        let last = last.unwrap_or(HISTORY_DEFAULT);
        if !(0..=HISTORY_MAX).contains(&last) {
            return Err(DomainError::bad_input(format!(
                "last must be between 0 and {HISTORY_MAX}"
            )));
        }
        let mut query = message::Entity::find()
            .filter(message::Column::RoomId.eq(room_id))
            .order_by_desc(message::Column::Id)
            .limit(last as u64);
        if let Some(before) = before {
            query = query.filter(message::Column::Id.lt(parse_message_id(before)?));
        }
        let mut messages = query.all(&self.db).await?;
        messages.reverse();
        self.with_senders(messages).await
    }
}
