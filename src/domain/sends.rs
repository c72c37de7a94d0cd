//! Group commit for chat messages. `sendMessage` does not open a transaction of its own: it
//! hands its message to a writer, which takes every send waiting for it (up to `BATCH_MAX`)
//! into one transaction, numbers each under its room's lock as before, commits once and
//! publishes the batch in order. Under load the cost of a commit (and of each hand-off to the
//! database driver) is shared by the batch; a lone send waits for nothing.
//!
//! SQLite has one writer at a time, so it gets one lane. PostgreSQL gets several, a room always
//! in the same lane (so a room's messages keep the order they were sent in). Two lanes never
//! lock the same room, and each takes the senders' rows (their points) after all of its rooms,
//! in user id order, so two batches cannot wait for each other.

use std::hash::BuildHasher;
use std::sync::Arc;

use sea_orm::{
    sea_query::{Expr, ExprTrait, OnConflict},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::records::{bump_seq, new_message, unbump_seq, MessageKind, MessageView};
use super::wire::publish;
use super::{DomainError, DomainResult};
use crate::db::{message, user};
use crate::hub::Hub;

/// Sends in one transaction at most.
const BATCH_MAX: usize = 64;
/// Sends waiting for one lane at most; a caller beyond that waits to queue.
const LANE_QUEUE: usize = 1024;
/// Lanes on PostgreSQL (SQLite: one).
const PG_LANES: usize = 4;

/// A validated message for the writer.
pub(super) struct SendRequest {
    pub sender: String,
    /// Admins may write to any room; others only to rooms they belong to.
    pub admin: bool,
    pub room_id: String,
    pub body: String,
    pub client_id: Option<String>,
}

/// What became of a send.
pub(super) enum Written {
    /// Stored (and published): the message and its sender after the points it earned.
    Sent(Box<MessageView>),
    /// No such room, or the sender does not belong to it.
    Refused,
    /// The sender already sent a message with this `clientMessageId`.
    Retry,
}

type Reply = oneshot::Sender<DomainResult<Written>>;

/// The queue in front of the writer lanes.
pub(super) struct SendWriter {
    lanes: Vec<mpsc::Sender<(SendRequest, Reply)>>,
    hasher: std::collections::hash_map::RandomState,
}

impl SendWriter {
    /// Starts the lanes; each ends once the writer is dropped and its queue is empty.
    pub fn start(db: DatabaseConnection, hub: Arc<Hub>, points_per_message: i64) -> Self {
        let count = match db.get_database_backend() {
            DbBackend::Postgres => PG_LANES,
            _ => 1,
        };
        let lanes = (0..count)
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                let lane = Lane {
                    db: db.clone(),
                    hub: hub.clone(),
                    points_per_message,
                };
                tokio::spawn(lane.run(rx));
                tx
            })
            .collect();
        Self {
            lanes,
            hasher: Default::default(),
        }
    }

    /// Stores a message and publishes it, in the transaction of whichever batch it joins.
    pub async fn write(&self, request: SendRequest) -> DomainResult<Written> {
        let lane = if self.lanes.len() == 1 {
            0
        } else {
            (self.hasher.hash_one(&request.room_id) % self.lanes.len() as u64) as usize
        };
        let (reply, answer) = oneshot::channel();
        self.lanes[lane].send((request, reply)).await.map_err(|_| {
            DomainError::Internal(anyhow::anyhow!("the message writer has stopped"))
        })?;
        answer.await.map_err(|_| {
            DomainError::Internal(anyhow::anyhow!("the message writer dropped a send"))
        })?
    }
}

struct Lane {
    db: DatabaseConnection,
    hub: Arc<Hub>,
    points_per_message: i64,
}

impl Lane {
    async fn run(self, mut queue: mpsc::Receiver<(SendRequest, Reply)>) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        while queue.recv_many(&mut batch, BATCH_MAX).await > 0 {
            let (requests, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
            match self.write_batch(&requests).await {
                Ok(written) => {
                    for (reply, written) in replies.into_iter().zip(written) {
                        // A caller that went away still had its message stored and published.
                        let _ = reply.send(Ok(written));
                    }
                }
                Err(e) if requests.len() == 1 => {
                    let _ = replies.into_iter().next().map(|r| r.send(Err(e)));
                }
                Err(e) => {
                    // One send's failure must not fail the others: each is tried on its own.
                    tracing::debug!(error = %e, sends = requests.len(), "batch failed; retrying one by one");
                    for (request, reply) in requests.into_iter().zip(replies) {
                        let written = self.write_batch(std::slice::from_ref(&request)).await;
                        let _ = reply.send(written.map(|mut w| w.remove(0)));
                    }
                }
            }
        }
    }

    /// Writes the batch in one transaction, then publishes what it stored, in order.
    async fn write_batch(&self, requests: &[SendRequest]) -> DomainResult<Vec<Written>> {
        let txn = self.db.begin().await?;
        let mut written = Vec::with_capacity(requests.len());
        for request in requests {
            written.push(store(&txn, request).await?);
        }
        // The senders' rows after the points each message earned, taken after every room and
        // in user id order (see the module's comment).
        let mut order: Vec<usize> = (0..requests.len())
            .filter(|&i| matches!(written[i], Written::Sent(_)))
            .collect();
        order.sort_by(|&a, &b| requests[a].sender.cmp(&requests[b].sender));
        for i in order {
            let sender =
                sender_after_points(&txn, &requests[i].sender, self.points_per_message).await?;
            if let Written::Sent(view) = &mut written[i] {
                view.sender = sender;
            }
        }
        txn.commit().await?;
        metrics::counter!(crate::metrics::MESSAGE_BATCHES).increment(1);
        metrics::counter!(crate::metrics::MESSAGE_BATCH_SENDS).increment(requests.len() as u64);
        for w in &written {
            if let Written::Sent(view) = w {
                publish(&self.hub, view);
            }
        }
        Ok(written)
    }
}

/// Numbers and inserts one message inside the batch's transaction.
async fn store(txn: &impl ConnectionTrait, request: &SendRequest) -> DomainResult<Written> {
    let member = (!request.admin).then_some(request.sender.as_str());
    let Some(seq) = bump_seq(txn, &request.room_id, member).await? else {
        return Ok(Written::Refused);
    };
    let model = new_message(
        &request.room_id,
        seq,
        MessageKind::User,
        Some(&request.sender),
        &request.body,
        request.client_id.as_deref(),
    );
    // A retry meets the unique (sender, clientMessageId) index; DO NOTHING keeps the
    // transaction (and the rest of the batch) usable on PostgreSQL too.
    // (No row back means the conflict.)
    let inserted = message::Entity::insert(model)
        .on_conflict(
            OnConflict::columns([message::Column::SenderId, message::Column::ClientMessageId])
                .do_nothing()
                .to_owned(),
        )
        .exec_with_returning_many(txn)
        .await?
        .pop();
    match inserted {
        Some(message) => Ok(Written::Sent(Box::new(MessageView {
            message,
            sender: None,
        }))),
        None if request.client_id.is_some() => {
            unbump_seq(txn, &request.room_id).await?;
            Ok(Written::Retry)
        }
        None => Err(DomainError::Internal(anyhow::anyhow!(
            "message {seq} of room {} was not inserted",
            request.room_id
        ))),
    }
}

/// The sender's row after adding the points a message earns (read as is when it earns none).
async fn sender_after_points(
    txn: &impl ConnectionTrait,
    sender: &str,
    points: i64,
) -> DomainResult<Option<user::Model>> {
    if points == 0 {
        return Ok(user::Entity::find_by_id(sender).one(txn).await?);
    }
    Ok(user::Entity::update_many()
        .col_expr(
            user::Column::Points,
            Expr::col(user::Column::Points).add(points),
        )
        .filter(user::Column::Id.eq(sender))
        .exec_with_returning(txn)
        .await?
        .into_iter()
        .next())
}
