//! Read receipts in batches. `markRead` does not open a transaction of its own: it hands its
//! receipt to one writer, which takes every receipt waiting (up to `BATCH_MAX`) into one
//! transaction, room by room, and answers each once it is committed. In the same transaction
//! the writer announces, for each room, every receipt whose turn has come: all of them are
//! numbered by one bump of the room's counter, recorded by one insert into `room_changes`, and
//! published in order after the commit. A thousand members marking a room read once a second
//! cost a few dozen transactions a second, not two thousand.
//!
//! A member's receipts reach a room at most once per `RECEIPT_INTERVAL`: a receipt that moves
//! inside that interval waits for its end, and is then announced with where the member has
//! read to by then (later ones fold into it). This instance keeps when it last announced each
//! member's receipt to time that; `read_receipts.announced_at` is the claim that holds across
//! instances: an announcement moves it forward only if the interval has passed, in the same
//! statement that reads the receipt it announces.
//!
//! Every transaction takes its rooms' locks (the counter row) first, in room order, as message
//! writes do; so receipts of one room are written by one transaction at a time, on any
//! instance, and no two writers wait for each other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, JoinType, QueryFilter,
    QuerySelect, QueryTrait, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{card, publish_change};
use super::{DomainError, DomainResult};
use crate::db::{message, read_receipt, room, room_change, room_member, user};
use crate::hub::event::Change;
use crate::hub::Hub;

/// A user's read receipts reach a room at most once per this interval.
pub const RECEIPT_INTERVAL: Duration = Duration::from_secs(1);
/// Receipts stored in one transaction at most.
const BATCH_MAX: usize = 256;
/// Receipts waiting for the writer at most; a caller beyond that waits to queue.
const QUEUE: usize = 4096;
/// Announcement times kept before those older than the interval are swept.
const SLOTS_SWEEP: usize = 4096;

/// `room_changes.kind` of a receipt.
pub(super) const READ: &str = "read";

/// A receipt to store: `user_id` read `room_id` up to `message_id`. The writer checks it in
/// its batch: the room exists (else `NOT_FOUND`), the user is a member of it or an admin (else
/// `FORBIDDEN`), the message is one of the room's (else `NOT_FOUND`), in that order.
pub(super) struct ReceiptRequest {
    pub room_id: String,
    pub user_id: String,
    pub message_id: i64,
    /// An admin reads (and marks read) every room, member or not.
    pub admin: bool,
}

/// The room, once the receipt is stored (moved or not), or why it was refused.
type Reply = oneshot::Sender<DomainResult<room::Model>>;

/// The queue in front of the receipt writer.
pub(super) struct ReceiptWriter {
    queue: mpsc::Sender<(ReceiptRequest, Reply)>,
}

impl ReceiptWriter {
    /// Starts the writer; it ends with `shutdown` (announcements still waiting are dropped:
    /// the receipts are stored) or once the writer is dropped and its queue is empty.
    pub fn start(db: DatabaseConnection, hub: Arc<Hub>, shutdown: CancellationToken) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            db,
            hub,
            announced: HashMap::new(),
            due: BTreeMap::new(),
            waiting: HashMap::new(),
        };
        tokio::spawn(writer.run(rx, shutdown));
        Self { queue }
    }

    /// Checks and stores a receipt (only forward) in whichever batch it joins, and gives the
    /// room; the room hears of it in its turn.
    pub async fn store(&self, request: ReceiptRequest) -> DomainResult<room::Model> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).await.map_err(|_| {
            DomainError::Internal(anyhow::anyhow!("the receipt writer has stopped"))
        })?;
        answer.await.map_err(|_| {
            DomainError::Internal(anyhow::anyhow!("the receipt writer dropped a receipt"))
        })?
    }
}

/// A member of a room, as the writer keys its announcements.
type Slot = (String, String);

struct Writer {
    db: DatabaseConnection,
    hub: Arc<Hub>,
    /// When this instance last announced each member's receipt.
    announced: HashMap<Slot, Instant>,
    /// Announcements waiting for their turn, by when it comes. At most one per member of a
    /// room (`waiting`), so bounded by the memberships there are.
    due: BTreeMap<(Instant, Slot), ()>,
    waiting: HashMap<Slot, Instant>,
}

/// What one room's part of a batch announces, to publish after the commit.
struct Announced {
    room_id: String,
    seq: i64,
    user: user::Model,
    message_id: i64,
    at: chrono::DateTime<Utc>,
}

impl Writer {
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<(ReceiptRequest, Reply)>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        loop {
            let next_due = self.due.keys().next().map(|(at, _)| *at);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = queue.recv_many(&mut batch, BATCH_MAX) => {
                    if n == 0 {
                        return;
                    }
                }
                _ = sleep_until(next_due) => {}
            }
            let (requests, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
            match self.write_batch(&requests).await {
                Ok((outcomes, announced)) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        // A caller that went away still had its receipt stored.
                        let _ = reply.send(outcome);
                    }
                    for a in announced {
                        publish_change(
                            &self.hub,
                            &a.room_id,
                            a.seq,
                            a.at,
                            Change::Read {
                                user: card(&a.user),
                                message_id: a.message_id,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, receipts = requests.len(), "a batch of read receipts failed");
                    for reply in replies {
                        let _ = reply.send(Err(DomainError::Internal(anyhow::anyhow!(
                            "read receipt not stored"
                        ))));
                    }
                }
            }
        }
    }

    /// Checks and stores the batch's receipts and announces every receipt whose turn has
    /// come, in one transaction; gives each receipt's outcome, and what to publish once
    /// committed.
    async fn write_batch(
        &mut self,
        requests: &[ReceiptRequest],
    ) -> DomainResult<(Vec<DomainResult<room::Model>>, Vec<Announced>)> {
        let now = Instant::now();
        if self.announced.len() >= SLOTS_SWEEP {
            self.announced
                .retain(|_, at| now.duration_since(*at) < RECEIPT_INTERVAL);
        }
        // The announcements whose turn has come.
        let mut turns: BTreeMap<String, Vec<String>> = BTreeMap::new();
        while let Some(((at, slot), ())) = self.due.first_key_value() {
            if *at > now {
                break;
            }
            let slot = slot.clone();
            self.due.pop_first();
            self.waiting.remove(&slot);
            turns.entry(slot.0).or_default().push(slot.1);
        }
        let mut rooms: Vec<String> = requests.iter().map(|r| r.room_id.clone()).collect();
        rooms.extend(turns.keys().cloned());
        rooms.sort_unstable();
        rooms.dedup();
        if rooms.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        crate::metrics::read_receipt_batch();
        let txn = self.db.begin().await?;
        let mut outcomes: Vec<Option<DomainResult<room::Model>>> =
            requests.iter().map(|_| None).collect();
        let mut announced = Vec::new();
        for room_id in &rooms {
            let room_id = room_id.as_str();
            // The room's lock first (see the module's comment).
            let locked = room::Entity::update_many()
                .col_expr(room::Column::LastSeq, Expr::col(room::Column::LastSeq))
                .filter(room::Column::Id.eq(room_id))
                .exec_with_returning(&txn)
                .await?
                .into_iter()
                .next();
            let mut candidates = turns.remove(room_id).unwrap_or_default();
            let mine: Vec<usize> = (0..requests.len())
                .filter(|i| requests[*i].room_id == room_id)
                .collect();
            match locked {
                None => {
                    for i in mine {
                        outcomes[i] = Some(Err(DomainError::NotFound(format!(
                            "room {room_id} not found"
                        ))));
                    }
                }
                Some(room) if !mine.is_empty() => {
                    let moved = store_room(&txn, &room, requests, &mine, &mut outcomes).await?;
                    for i in mine {
                        let r = &requests[i];
                        if !moved.contains(&i) {
                            continue;
                        }
                        let slot = (r.room_id.clone(), r.user_id.clone());
                        if self.waiting.contains_key(&slot) || candidates.contains(&r.user_id) {
                            crate::metrics::read_receipt("deferred");
                            continue;
                        }
                        match self.announced.get(&slot) {
                            Some(last) if now.duration_since(*last) < RECEIPT_INTERVAL => {
                                crate::metrics::read_receipt("deferred");
                                self.wait(slot, *last + RECEIPT_INTERVAL);
                            }
                            _ => candidates.push(r.user_id.clone()),
                        }
                    }
                }
                Some(_) => {}
            }
            if candidates.is_empty() {
                continue;
            }
            for a in self.announce(&txn, room_id, candidates, now).await? {
                announced.push(a);
            }
        }
        txn.commit().await?;
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(DomainError::Internal(anyhow::anyhow!(
                        "read receipt left out of its batch"
                    )))
                })
            })
            .collect();
        Ok((outcomes, announced))
    }

    fn wait(&mut self, slot: Slot, at: Instant) {
        if self.waiting.contains_key(&slot) {
            return;
        }
        self.waiting.insert(slot.clone(), at);
        self.due.insert((at, slot), ());
    }

    /// Claims the announcement of these members' receipts (each at most once per interval, on
    /// any instance; members only), numbers them on the room's sequence and records them.
    /// Members another instance announced within the interval wait for its end.
    async fn announce(
        &mut self,
        txn: &DatabaseTransaction,
        room_id: &str,
        mut candidates: Vec<String>,
        now: Instant,
    ) -> DomainResult<Vec<Announced>> {
        candidates.sort_unstable();
        candidates.dedup();
        let at = Utc::now();
        let cutoff = at - chrono::Duration::from_std(RECEIPT_INTERVAL).unwrap_or_default();
        let claimed = read_receipt::Entity::update_many()
            .col_expr(read_receipt::Column::AnnouncedAt, Expr::value(Some(at)))
            .filter(read_receipt::Column::RoomId.eq(room_id))
            .filter(read_receipt::Column::UserId.is_in(candidates.iter().cloned()))
            .filter(read_receipt::Column::UserId.in_subquery(members_of(room_id)))
            .filter(
                read_receipt::Column::AnnouncedAt
                    .is_null()
                    .or(read_receipt::Column::AnnouncedAt.lte(cutoff)),
            )
            .exec_with_returning(txn)
            .await?;
        if claimed.len() < candidates.len() {
            // Not claimed: no longer a member (nothing to announce), or announced elsewhere
            // within the interval (wait for its end).
            let unclaimed: Vec<&String> = candidates
                .iter()
                .filter(|u| !claimed.iter().any(|c| &c.user_id == *u))
                .collect();
            let recent = read_receipt::Entity::find()
                .filter(read_receipt::Column::RoomId.eq(room_id))
                .filter(read_receipt::Column::UserId.is_in(unclaimed.into_iter().cloned()))
                .filter(read_receipt::Column::UserId.in_subquery(members_of(room_id)))
                .all(txn)
                .await?;
            for r in recent {
                let since = r
                    .announced_at
                    .and_then(|t| (at - t).to_std().ok())
                    .unwrap_or_default();
                let wait = RECEIPT_INTERVAL.saturating_sub(since);
                crate::metrics::read_receipt("deferred");
                self.wait((r.room_id, r.user_id), now + wait);
            }
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = claimed;
        claimed.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let count = claimed.len() as i64;
        // An INTEGER column: PostgreSQL wants the increment as one too.
        let increment = i32::try_from(count)
            .map_err(|_| DomainError::Internal(anyhow::anyhow!("{count} receipts in one batch")))?;
        let last = room::Entity::update_many()
            .col_expr(
                room::Column::LastSeq,
                Expr::col(room::Column::LastSeq).add(increment),
            )
            .filter(room::Column::Id.eq(room_id))
            .exec_with_returning(txn)
            .await?
            .into_iter()
            .next()
            .map(|r| r.last_seq)
            .ok_or_else(|| DomainError::NotFound(format!("room {room_id} not found")))?;
        let first = last - count + 1;
        let rows = claimed
            .iter()
            .enumerate()
            .map(|(i, r)| room_change::ActiveModel {
                room_id: Set(room_id.to_owned()),
                seq: Set(first + i as i64),
                kind: Set(READ.to_owned()),
                message_id: Set(r.message_id),
                user_id: Set(Some(r.user_id.clone())),
                payload: Set("{}".to_owned()),
                created_at: Set(at),
                ..Default::default()
            });
        room_change::Entity::insert_many(rows)
            .exec_without_returning(txn)
            .await?;
        let users = user::Entity::find()
            .filter(user::Column::Id.is_in(claimed.iter().map(|r| r.user_id.clone())))
            .all(txn)
            .await?;
        let mut announced = Vec::with_capacity(claimed.len());
        for (i, r) in claimed.into_iter().enumerate() {
            crate::metrics::read_receipt("announced");
            self.announced
                .insert((r.room_id.clone(), r.user_id.clone()), now);
            // Users are never deleted while members; a missing one is skipped, its position
            // still taken (a resume skips it as well).
            let Some(user) = users.iter().find(|u| u.id == r.user_id).cloned() else {
                continue;
            };
            announced.push(Announced {
                room_id: room_id.to_owned(),
                seq: first + i as i64,
                user,
                message_id: r.message_id,
                at,
            });
        }
        Ok(announced)
    }
}

/// Checks the receipts of one room (the requests at `mine`, the room locked) and stores those
/// that pass in one multi-row upsert that moves a receipt only forward: each request's outcome
/// goes to `outcomes`, and the indices of the requests that moved a receipt are returned (a
/// user's second receipt in the batch moves only if it is past the first). Three statements
/// whatever the number of receipts: the members among the senders with where they had read
/// to, the messages among those named that are the room's, and the upsert.
async fn store_room(
    txn: &DatabaseTransaction,
    room: &room::Model,
    requests: &[ReceiptRequest],
    mine: &[usize],
    outcomes: &mut [Option<DomainResult<room::Model>>],
) -> DomainResult<Vec<usize>> {
    let room_id = room.id.as_str();
    let mut users: Vec<String> = mine.iter().map(|i| requests[*i].user_id.clone()).collect();
    users.sort_unstable();
    users.dedup();
    let mut message_ids: Vec<i64> = mine.iter().map(|i| requests[*i].message_id).collect();
    message_ids.sort_unstable();
    message_ids.dedup();
    // Members among the senders, and where each had read to (their receipt, if any).
    let joined = room_member::Entity::belongs_to(read_receipt::Entity)
        .from((room_member::Column::RoomId, room_member::Column::UserId))
        .to((read_receipt::Column::RoomId, read_receipt::Column::UserId))
        .into();
    let members: HashMap<String, Option<i64>> = room_member::Entity::find()
        .select_only()
        .column(room_member::Column::UserId)
        .column(read_receipt::Column::MessageId)
        .join(JoinType::LeftJoin, joined)
        .filter(room_member::Column::RoomId.eq(room_id))
        .filter(room_member::Column::UserId.is_in(users))
        .into_tuple::<(String, Option<i64>)>()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    let in_room: HashSet<i64> = message::Entity::find()
        .select_only()
        .column(message::Column::Id)
        .filter(message::Column::RoomId.eq(room_id))
        .filter(message::Column::Id.is_in(message_ids))
        .into_tuple::<i64>()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    // Each user's furthest receipt among those that pass.
    let mut furthest: BTreeMap<&str, i64> = BTreeMap::new();
    let mut passed = Vec::with_capacity(mine.len());
    for &i in mine {
        let r = &requests[i];
        if !r.admin && !members.contains_key(&r.user_id) {
            outcomes[i] = Some(Err(DomainError::Forbidden(format!(
                "not a member of room {room_id}"
            ))));
        } else if !in_room.contains(&r.message_id) {
            outcomes[i] = Some(Err(DomainError::NotFound(format!(
                "message {} not found in room {room_id}",
                r.message_id
            ))));
        } else {
            outcomes[i] = Some(Ok(room.clone()));
            passed.push(i);
            let f = furthest.entry(r.user_id.as_str()).or_insert(r.message_id);
            *f = std::cmp::max(*f, r.message_id);
        }
    }
    if passed.is_empty() {
        return Ok(Vec::new());
    }
    let at = Utc::now();
    let rows = furthest
        .iter()
        .map(|(user_id, message_id)| read_receipt::ActiveModel {
            room_id: Set(room_id.to_owned()),
            user_id: Set((*user_id).to_owned()),
            message_id: Set(*message_id),
            read_at: Set(at),
            announced_at: Set(None),
        });
    let excluded = Alias::new("excluded");
    let stored: HashSet<String> = read_receipt::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::columns([read_receipt::Column::RoomId, read_receipt::Column::UserId])
                .update_columns([
                    read_receipt::Column::MessageId,
                    read_receipt::Column::ReadAt,
                ])
                .action_and_where(
                    Expr::col((read_receipt::Entity, read_receipt::Column::MessageId))
                        .lt(Expr::col((excluded, read_receipt::Column::MessageId))),
                )
                .to_owned(),
        )
        .exec_with_returning(txn)
        .await?
        .into_iter()
        .map(|r| r.user_id)
        .collect();
    // Which requests moved: those of users whose receipt moved, each past where the user had
    // read to before it (their receipt before the batch, then their earlier ones in it).
    let mut high: HashMap<&str, i64> = HashMap::new();
    let mut moved = Vec::new();
    for i in passed {
        let r = &requests[i];
        if !stored.contains(&r.user_id) {
            crate::metrics::read_receipt("unchanged");
            continue;
        }
        let before = high
            .get(r.user_id.as_str())
            .copied()
            .or_else(|| members.get(&r.user_id).copied().flatten());
        if before.is_some_and(|b| b >= r.message_id) {
            crate::metrics::read_receipt("unchanged");
            continue;
        }
        high.insert(r.user_id.as_str(), r.message_id);
        moved.push(i);
    }
    Ok(moved)
}

/// A room's members, as a subquery.
fn members_of(room_id: &str) -> sea_orm::sea_query::SelectStatement {
    room_member::Entity::find()
        .select_only()
        .column(room_member::Column::UserId)
        .filter(room_member::Column::RoomId.eq(room_id))
        .into_query()
}

/// Sleeps until `at`, or forever without it.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
