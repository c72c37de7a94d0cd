//! Shared execution: subscribers whose operation and variables are equal, and whose rights
//! were checked one by one, form a cohort. Each event is executed and serialised once per
//! cohort; every member gets the same payload bytes behind its own operation id. This is the
//! fan-out hot path: per member, an event costs one string concatenation and a queue push.
//!
//! Only subscriptions whose output does not depend on who asks share: `messageAdded` without
//! `after` (a replay is per subscriber) and `events` on explicit, non-room channels. Others
//! (typing hides the viewer's own, notifications are the viewer's, presence and leaderboard
//! start with a snapshot) run one execution per subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use async_graphql::{Name, Request, Value as GqlValue};
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::socket::Outbox;
use crate::auth::{AuthUser, Viewer};
use crate::domain::{Domain, DomainError, DomainResult};
use crate::graphql::errors::stamp_codes;
use crate::graphql::TidingsSchema;
use crate::hub::{Event, RecvError, Topic};

/// What a shareable subscription follows, from its root field and arguments.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    Room(String),
    Channels(Vec<String>),
}

/// Operations with equal keys produce equal output for every member.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    query: String,
    variables: String,
    operation_name: Option<String>,
}

/// A subscription that may join a cohort.
pub(crate) struct Shareable {
    key: Key,
    source: Source,
    request: Request,
}

/// Whether `request` can share an execution, and with whom.
pub(crate) fn shareable(request: &Request) -> Option<Shareable> {
    let doc = async_graphql::parser::parse_query(&request.query).ok()?;
    let operation = match (&doc.operations, &request.operation_name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str())?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    if operation.node.ty != OperationType::Subscription || !operation.node.directives.is_empty() {
        return None;
    }
    let [item] = operation.node.selection_set.node.items.as_slice() else {
        return None;
    };
    let Selection::Field(field) = &item.node else {
        return None;
    };
    let field = &field.node;
    if !field.directives.is_empty() {
        return None;
    }
    let variables = &request.variables;
    let argument = |name: &str| -> Option<GqlValue> {
        let value = field.get_argument(name)?.node.clone();
        value
            .into_const_with(|var: Name| variables.get(&var).cloned().ok_or(()))
            .ok()
    };
    let source = match field.name.node.as_str() {
        "messageAdded" => {
            if !matches!(argument("after"), None | Some(GqlValue::Null)) {
                return None;
            }
            match argument("roomId")? {
                GqlValue::String(room) => Source::Room(room),
                _ => return None,
            }
        }
        "events" => {
            let GqlValue::List(items) = argument("channels")? else {
                return None;
            };
            let names = items
                .into_iter()
                .map(|v| match v {
                    GqlValue::String(s) if !s.starts_with("room:") => Some(s),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            if names.is_empty() {
                return None;
            }
            Source::Channels(names)
        }
        _ => return None,
    };
    Some(Shareable {
        key: Key {
            query: request.query.clone(),
            variables: serde_json::to_string(&request.variables).ok()?,
            operation_name: request.operation_name.clone(),
        },
        source,
        request: {
            let r = Request::new(request.query.clone()).variables(request.variables.clone());
            match &request.operation_name {
                Some(name) => r.operation_name(name.clone()),
                None => r,
            }
        },
    })
}

/// The viewer a cohort executes as, once each member's own rights were checked: an admin (who
/// reads every room and channel), never exposed to clients.
fn executor() -> Viewer {
    Viewer::User(AuthUser {
        id: "\u{0}cohort".into(),
        username: "cohort".into(),
        role: "admin".into(),
        expires_at: i64::MAX,
    })
}

/// What a member's connection does once the cohort has no more for it: free the operation's
/// id and queue its `complete`.
pub(crate) type OnEnd = Box<dyn FnOnce() + Send>;

/// One subscriber in a cohort. A member costs no task of its own: the cohort's execution
/// queues its frames, and ends it with `on_end`.
struct Member {
    /// `{"id":…,"type":"next","payload":` for this member's operation.
    prefix: String,
    outbox: Outbox,
    user_id: Option<String>,
    on_end: OnEnd,
}

struct Cohort {
    key: Key,
    members: Mutex<HashMap<u64, Member>>,
    /// Cancelled when the last member leaves: the execution stops (and its topics go).
    abandoned: CancellationToken,
}

impl Cohort {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every cohort on this instance.
#[derive(Default)]
pub struct Cohorts {
    cohorts: Mutex<HashMap<Key, Arc<Cohort>>>,
    next_member: AtomicU64,
}

/// Where a member's results go: its operation id, the frame type its protocol uses for
/// results (`next`, or `data` on the legacy protocol), its connection's queue, and what to do
/// when the cohort ends (not called when the member leaves by dropping its `Membership`).
pub(crate) struct Seat<'a> {
    pub(crate) op_id: &'a str,
    pub(crate) data_type: &'a str,
    pub(crate) outbox: Outbox,
    pub(crate) on_end: OnEnd,
}

/// A member's place in its cohort: dropping it (the operation completed or the socket closed)
/// leaves the cohort, and the last member out ends the cohort's execution.
pub(crate) struct Membership {
    cohorts: Arc<Cohorts>,
    cohort: Arc<Cohort>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        crate::metrics::cohort_member(false);
        let mut cohorts = self.cohorts.lock();
        let empty = {
            let mut members = self.cohort.lock();
            members.remove(&self.id);
            members.is_empty()
        };
        if empty {
            self.cohort.abandoned.cancel();
            if cohorts
                .get(&self.cohort.key)
                .is_some_and(|c| Arc::ptr_eq(c, &self.cohort))
            {
                cohorts.remove(&self.cohort.key);
            }
        }
    }
}

impl Cohorts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Cohort>>> {
        self.cohorts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the viewer's right to the subscription (as its resolver would), then joins the
    /// cohort of equal operations, starting it if there is none.
    pub(crate) async fn join(
        self: &Arc<Self>,
        schema: &TidingsSchema,
        domain: &Arc<Domain>,
        viewer: &Viewer,
        shareable: Shareable,
        seat: Seat<'_>,
    ) -> DomainResult<Membership> {
        let Seat {
            op_id,
            data_type,
            outbox,
            on_end,
        } = seat;
        match &shareable.source {
            Source::Room(room) => {
                domain.require_member(viewer, room).await?;
            }
            Source::Channels(names) => {
                domain.resolve_channels(viewer, Some(names)).await?;
            }
        }
        let id_json = serde_json::to_string(op_id).unwrap_or_else(|_| "\"\"".into());
        let member = Member {
            prefix: format!(r#"{{"id":{id_json},"type":"{data_type}","payload":"#),
            outbox,
            user_id: viewer
                .user()
                .filter(|u| !u.is_admin())
                .map(|u| u.id.clone()),
            on_end,
        };
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let mut cohorts = self.lock();
        let cohort = match cohorts.get(&shareable.key) {
            Some(c) => c.clone(),
            None => {
                let cohort = Arc::new(Cohort {
                    key: shareable.key.clone(),
                    members: Mutex::new(HashMap::new()),
                    abandoned: CancellationToken::new(),
                });
                cohorts.insert(shareable.key.clone(), cohort.clone());
                let leaves = match &shareable.source {
                    Source::Room(room) => {
                        Some(domain.hub.subscribe(Topic::RoomMessages(room.clone())))
                    }
                    Source::Channels(_) => None,
                };
                let request = shareable.request.data(executor());
                crate::metrics::cohort_started();
                tokio::spawn(drive(
                    schema.clone(),
                    request,
                    Arc::downgrade(&cohort),
                    cohort.abandoned.clone(),
                    leaves,
                ));
                cohort
            }
        };
        cohort.lock().insert(id, member);
        drop(cohorts);
        crate::metrics::cohort_member(true);
        Ok(Membership {
            cohorts: self.clone(),
            cohort,
            id,
        })
    }
}

/// Executes a cohort's subscription once and hands each result to every member. Ends when the
/// stream does (members get `complete`) or the last member left (the cohort is gone).
async fn drive(
    schema: TidingsSchema,
    request: Request,
    cohort: std::sync::Weak<Cohort>,
    abandoned: CancellationToken,
    mut leaves: Option<crate::hub::TopicReceiver>,
) {
    let mut stream = schema.execute_stream(request);
    // Members who left the room, refused once the stream delivered what was published before
    // their departure (their own "left" announcement comes just before it), or after a moment.
    let mut leavers: Vec<(String, String)> = Vec::new();
    let mut leavers_due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = abandoned.cancelled() => return,
            _ = sleep_until_opt(leavers_due) => {
                let Some(cohort) = cohort.upgrade() else { return };
                for (user, room) in leavers.drain(..) {
                    refuse_leaver(&cohort, &user, &room);
                }
                leavers_due = None;
            }
            next = stream.next() => {
                let Some(cohort) = cohort.upgrade() else { return };
                let Some(mut response) = next else {
                    // Taken out of the lock first: ending a member may drop its membership.
                    let ended: Vec<Member> = cohort.lock().drain().map(|(_, m)| m).collect();
                    for member in ended {
                        (member.on_end)();
                    }
                    return;
                };
                stamp_codes(&mut response);
                let Ok(payload) = serde_json::to_string(&response) else { continue };
                let members = cohort.lock();
                if members.is_empty() {
                    return;
                }
                for member in members.values() {
                    let mut frame = String::with_capacity(member.prefix.len() + payload.len() + 1);
                    frame.push_str(&member.prefix);
                    frame.push_str(&payload);
                    frame.push('}');
                    // A member whose queue is full is a slow consumer: it is closed, and never
                    // holds up the others.
                    member.outbox.try_push(frame, None);
                }
                drop(members);
                for (user, room) in leavers.drain(..) {
                    refuse_leaver(&cohort, &user, &room);
                }
                leavers_due = None;
            }
            left = recv_opt(&mut leaves) => {
                if cohort.strong_count() == 0 {
                    return;
                }
                match left {
                    Ok(event) => {
                        if let Event::Left(left) = &*event {
                            leavers.push((left.user_id.clone(), left.room_id.clone()));
                            leavers_due.get_or_insert(
                                tokio::time::Instant::now() + std::time::Duration::from_millis(500),
                            );
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => leaves = None,
                }
            }
        }
    }
}

/// A member who left the room stops receiving it, as its own subscription would: FORBIDDEN,
/// then `complete`.
fn refuse_leaver(cohort: &Cohort, user_id: &str, room: &str) {
    let error = DomainError::Forbidden(format!("you left room {room}"));
    let payload = json!({ "data": null, "errors": [{
        "message": error.to_string(),
        "path": ["messageAdded"],
        "extensions": { "code": error.code() },
    }] })
    .to_string();
    let refused: Vec<Member> = {
        let mut members = cohort.lock();
        let ids: Vec<u64> = members
            .iter()
            .filter(|(_, m)| m.user_id.as_deref() == Some(user_id))
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| members.remove(id)).collect()
    };
    for member in refused {
        let mut frame = member.prefix;
        frame.push_str(&payload);
        frame.push('}');
        member.outbox.try_push(frame, None);
        (member.on_end)();
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(
    receiver: &mut Option<crate::hub::TopicReceiver>,
) -> Result<Arc<Event>, RecvError> {
    match receiver {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// The result frame for a member refused before joining, as its resolver would refuse it.
pub(crate) fn refusal(op_id: &str, data_type: &str, field: &str, error: &DomainError) -> String {
    json!({ "id": op_id, "type": data_type, "payload": { "data": null, "errors": [{
        "message": error.to_string(),
        "path": [field],
        "extensions": { "code": error.code() },
    }] } })
    .to_string()
}

impl Shareable {
    /// The root field, as error paths name it.
    pub(crate) fn field(&self) -> &'static str {
        match self.source {
            Source::Room(_) => "messageAdded",
            Source::Channels(_) => "events",
        }
    }
}
