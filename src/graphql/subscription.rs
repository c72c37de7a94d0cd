use async_graphql::{Context, Result, Subscription, ID};
use futures_util::{Stream, StreamExt};

use super::errors::IntoGql;
use super::operations::ServerStats;
use super::share::{departure_error, VIEWER_REACTED};
use super::types::{
    ChannelEvent, LeaderboardSnapshot, Message, Notification, PresenceEvent, RoomEvent, TypingEvent,
};
use super::{domain, viewer};
use crate::domain::feeds::Delivery;
use crate::domain::sessions::{Credentials, Followed};
use crate::domain::DomainResult;

pub struct Subscription;

/// The credentials of the WebSocket connection a subscription runs on: when they are renewed,
/// the domain checks the subscription's right again (`Domain::while_allowed`).
fn credentials<'a>(ctx: &Context<'a>) -> Option<&'a Credentials> {
    ctx.data_opt::<Credentials>()
}

/// Ends a stream after its first error (which is delivered).
fn until_error<T: Send + 'static>(
    stream: impl Stream<Item = DomainResult<T>> + Send + 'static,
) -> impl Stream<Item = Result<T>> + Send + 'static {
    stream.scan(false, |failed, item| {
        let out = if *failed {
            None
        } else {
            *failed = item.is_err();
            Some(item.gql())
        };
        async move { out }
    })
}

#[Subscription]
impl Subscription {
    /// New messages in a room. With `after`, every message after that id comes first (from
    /// history), then live ones: no gap, no duplicate, in id order. Members only; a member who
    /// leaves the room gets their own "left" message, then FORBIDDEN.
    async fn message_added(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        after: Option<ID>,
    ) -> Result<impl Stream<Item = Result<Message>>> {
        let feed = domain(ctx)
            .message_deliveries(viewer(ctx), &room_id, after.as_ref().map(|a| a.as_str()))
            .await
            .gql()?;
        let followed = Followed::Messages {
            room_id: room_id.to_string(),
        };
        let feed = domain(ctx).while_allowed(credentials(ctx), followed, feed);
        // A shared execution's stream marks each member's departure in its place; a
        // subscriber's own ends with its first error.
        let items = feed.map(|item| {
            item.map(|delivery| match delivery {
                Delivery::Item(view) => Ok(Message::from(view)),
                Delivery::Departed { user_id, error } => Err(departure_error(&user_id, &error)),
            })
        });
        Ok(until_error(items).map(|r| r.and_then(|inner| inner)))
    }

    /// Every change to a room in position order: new messages, edits, deletes, reactions and
    /// read receipts, each as it was at its position. With `after` (a position), every change
    /// after it comes first (from the database), then live ones: no gap, no duplicate, across
    /// reconnects and instances. Members only; a member who leaves gets their own "left"
    /// message, then FORBIDDEN.
    async fn room_events(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        after: Option<ID>,
    ) -> Result<impl Stream<Item = Result<RoomEvent>>> {
        let ahead = ctx.look_ahead();
        let viewer_reacted = ahead.field("reactions").field(VIEWER_REACTED).exists()
            || ahead
                .field("message")
                .field("reactions")
                .field(VIEWER_REACTED)
                .exists();
        let feed = domain(ctx)
            .room_event_deliveries(
                viewer(ctx),
                &room_id,
                after.as_ref().map(|a| a.as_str()),
                viewer_reacted,
            )
            .await
            .gql()?;
        // As `messageAdded`: a shared execution marks each member's departure in its place.
        let items = feed.map(|item| {
            item.map(|delivery| match delivery {
                Delivery::Item(event) => Ok(RoomEvent::from(event)),
                Delivery::Departed { user_id, error } => Err(departure_error(&user_id, &error)),
            })
        });
        Ok(until_error(items).map(|r| r.and_then(|inner| inner)))
    }

    /// Who starts and stops typing in a room (never the viewer). Members only.
    async fn typing(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
    ) -> Result<impl Stream<Item = Result<TypingEvent>>> {
        let feed = domain(ctx).typing_feed(viewer(ctx), &room_id).await.gql()?;
        let followed = Followed::Typing {
            room_id: room_id.to_string(),
        };
        let feed = domain(ctx).while_allowed(credentials(ctx), followed, feed.map(Ok));
        Ok(until_error(feed).map(|r| r.map(TypingEvent)))
    }

    /// Presence in a room (members only: it ends with FORBIDDEN when the viewer leaves the
    /// room), or everyone's: first who is online, then changes.
    async fn presence(
        &self,
        ctx: &Context<'_>,
        room_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<PresenceEvent>>> {
        let feed = domain(ctx)
            .presence_feed(viewer(ctx), room_id.as_ref().map(|r| r.as_str()))
            .await
            .gql()?;
        let followed = Followed::Presence {
            room_id: room_id.map(|r| r.to_string()),
        };
        let feed = domain(ctx).while_allowed(credentials(ctx), followed, feed);
        Ok(until_error(feed).map(|r| r.map(PresenceEvent)))
    }

    /// The viewer's notifications as they arrive.
    async fn notifications(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Result<Notification>>> {
        let feed = domain(ctx).notification_feed(viewer(ctx)).await.gql()?;
        let feed = domain(ctx).while_allowed(credentials(ctx), Followed::Notifications, feed);
        Ok(until_error(feed).map(|r| r.map(Notification)))
    }

    /// The top `limit` users: now, then whenever it changes (at most every 250 ms).
    async fn leaderboard(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 10)] limit: Option<i32>,
    ) -> Result<impl Stream<Item = LeaderboardSnapshot>> {
        let feed = domain(ctx).leaderboard_feed(limit).gql()?;
        Ok(feed.map(|(snapshot, limit)| LeaderboardSnapshot { snapshot, limit }))
    }

    /// Admins: every instance's figures and their sum, once a second (the operator console,
    /// `GET /admin`). An instance whose newest report is more than 3 seconds old is marked
    /// `stale` and left out of the total.
    async fn server_stats(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Result<ServerStats>>> {
        let feed = domain(ctx).server_stats_feed(viewer(ctx)).gql()?;
        let feed = domain(ctx).while_allowed(credentials(ctx), Followed::ServerStats, feed.map(Ok));
        Ok(until_error(feed).map(|r| r.map(ServerStats)))
    }

    /// App events published to channels. Without `channels` (or with none): the viewer's own,
    /// `user:<id>`, `role:<role>` and `broadcast`.
    async fn events(
        &self,
        ctx: &Context<'_>,
        channels: Option<Vec<String>>,
    ) -> Result<impl Stream<Item = Result<ChannelEvent>>> {
        let feed = domain(ctx)
            .event_feed(viewer(ctx), channels.as_deref())
            .await
            .gql()?;
        let followed = Followed::events(viewer(ctx), channels);
        let feed = domain(ctx).while_allowed(credentials(ctx), followed, feed.map(Ok));
        Ok(until_error(feed).map(|r| r.map(ChannelEvent)))
    }
}
