//! The users of many sign-ins, read (and on first sight created) a few queries at a time.
//!
//! Every connection signs in with a token, and every sign-in needs the user as stored: the
//! revocation time (`tokens_revoked_at`) is kept in the database, where every instance reads
//! it, and a token whose user is not known yet provisions that user. A connect storm signs in
//! hundreds of users at once; one read (and one insert for a new user) each is a round trip to
//! the database per connect, and they queued for the pool one by one. Here they wait together:
//! one `SELECT … WHERE id IN (…)` for the lot, and one multi-row `INSERT … ON CONFLICT DO
//! NOTHING` for those seen for the first time, then one read of what was inserted. What the
//! batch cannot settle by its rules alone is handed back to the caller to do the one-user way
//! (`Domain::provision`): a user whose stored role differs from the token's, a name already
//! taken (by another account, or by another first sign-in of the same batch).
//!
//! Nothing is cached: each sign-in reads the row as it is when its batch runs, so a revocation
//! committed before a sign-in is seen by it, as it was with one read each.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use tokio::sync::{mpsc, oneshot};

use crate::db::user;

/// Sign-ins one batch reads at most (ten columns a row: well under every backend's limit on
/// parameters).
const BATCH: usize = 256;

/// The user a sign-in wants: its id, the username it gets if it is new, and the token's role.
pub(super) struct Wanted {
    pub(super) id: String,
    pub(super) username: String,
    pub(super) role: String,
}

/// `Some`: the user as stored, with the token's role. `None`: the batch could not settle it
/// (see the module's comment); the caller provisions it on its own.
type Reply = oneshot::Sender<Result<Option<user::Model>, String>>;

/// Reads the users of the sign-ins waiting, many per query.
pub(super) struct SignInReader {
    queue: mpsc::Sender<(Wanted, Reply)>,
}

impl SignInReader {
    /// Starts the reader; it ends once the domain is dropped and its queue is empty.
    pub(super) fn start(db: DatabaseConnection) -> Self {
        // Bounded: a sign-in waits for room, as it waited for a pooled connection before.
        let (queue, mut requests) = mpsc::channel::<(Wanted, Reply)>(BATCH * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while requests.recv_many(&mut batch, BATCH).await > 0 {
                crate::metrics::sign_in_batch(batch.len());
                match settle(&db, &batch).await {
                    Ok(settled) => {
                        for (wanted, reply) in batch.drain(..) {
                            let found = settled
                                .get(&wanted.id)
                                .filter(|stored| stored.role == wanted.role)
                                .cloned();
                            let _ = reply.send(Ok(found));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for (_, reply) in batch.drain(..) {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// The user `wanted` names, as stored, provisioned if it is new; `None` when the caller
    /// must settle it on its own.
    pub(super) async fn read(&self, wanted: Wanted) -> Result<Option<user::Model>, DbErr> {
        let stopped = || DbErr::Custom("the sign-in reader has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((wanted, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(DbErr::Custom)
    }
}

/// The stored rows of a batch's users, by id, after inserting those seen for the first time
/// whose wanted name no other first sign-in of the batch wants too.
async fn settle(
    db: &DatabaseConnection,
    batch: &[(Wanted, Reply)],
) -> Result<HashMap<String, user::Model>, DbErr> {
    let ids: Vec<String> = batch
        .iter()
        .map(|(w, _)| w.id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let ids = padded(ids);
    let mut stored: HashMap<String, user::Model> = user::Entity::find()
        .filter(user::Column::Id.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect();
    // New users, one row each; a name two of them want goes to neither here (the one-user way
    // numbers it).
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut new: Vec<&Wanted> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (wanted, _) in batch {
        if stored.contains_key(&wanted.id) || !seen.insert(&wanted.id) {
            continue;
        }
        *names
            .entry(wanted.username.to_ascii_lowercase())
            .or_default() += 1;
        new.push(wanted);
    }
    new.retain(|w| names[&w.username.to_ascii_lowercase()] == 1);
    if new.is_empty() {
        return Ok(stored);
    }
    // Padded with copies of a row, which conflict with it and insert nothing.
    let rows = padded(new.clone())
        .into_iter()
        .map(|w| new_user(&w.id, w.username.clone(), None, &w.role));
    // A name another account holds, or an id another instance provisioned meanwhile, inserts
    // nothing for that row and fails none of the others.
    user::Entity::insert_many(rows)
        .on_conflict(OnConflict::new().do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    let inserted = user::Entity::find()
        .filter(user::Column::Id.is_in(padded(new.iter().map(|w| w.id.clone()).collect())))
        .all(db)
        .await?;
    stored.extend(inserted.into_iter().map(|u| (u.id.clone(), u)));
    Ok(stored)
}

/// A new user's row, every column given. Left to their defaults, the columns a later migration
/// added (`ALTER TABLE … ADD COLUMN … DEFAULT`) sometimes came back NULL from SQLite's
/// `INSERT … RETURNING` on a fresh database.
pub(super) fn new_user(
    id: &str,
    username: String,
    password_hash: Option<String>,
    role: &str,
) -> user::ActiveModel {
    user::ActiveModel {
        id: Set(id.to_owned()),
        username: Set(username),
        password_hash: Set(password_hash),
        role: Set(role.to_owned()),
        points: Set(0),
        status: Set("ONLINE".to_owned()),
        last_seen_at: Set(None),
        created_at: Set(Utc::now()),
        notification_seq: Set(0),
        tokens_revoked_at: Set(None),
    }
}

/// `items` made as long as the next of a few sizes by repeating its first: a statement's text
/// depends on how many values it carries, and each connection of the pool keeps every text it
/// ran prepared (a statement for 256 rows is tens of kilobytes). Batches of any size then use
/// one of five statements of each kind, not one per size. A repeated id matches the same row;
/// a repeated new row conflicts with its first copy and inserts nothing.
pub(super) fn padded<T: Clone>(mut items: Vec<T>) -> Vec<T> {
    let size = [1, 4, 16, 64, BATCH]
        .into_iter()
        .find(|&size| size >= items.len())
        .unwrap_or(items.len());
    if let Some(first) = items.first().cloned() {
        items.resize(size, first);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_padded_to_a_few_sizes_with_their_first_item() {
        assert_eq!(padded(vec![7]), vec![7]);
        assert_eq!(padded(vec![1, 2]), vec![1, 2, 1, 1]);
        assert_eq!(padded((0..17).collect()).len(), 64);
        assert_eq!(padded((0..200).collect()).len(), BATCH);
        assert_eq!(padded((0..300).collect()).len(), 300);
        assert!(padded(Vec::<u8>::new()).is_empty());
    }
}
