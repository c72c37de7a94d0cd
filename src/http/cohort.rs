//! Shared execution: subscribers whose operation, variables and grant are equal form a
//! cohort. Each event is executed and serialised once per cohort; every member gets the same
//! payload bytes behind its own operation id. This is the fan-out hot path: per member, an
//! event costs a queue push of its prefix and the shared payload (two reference counts); the
//! socket writes prefix, payload and suffix as one message without joining them
//! (`websocket.rs`), an HTTP stream joins them in its body's batch.
//!
//! Which subscriptions share, and each member's right to, is the domain's to say
//! (`graphql::share` reads the request, `Domain::sharing` checks the member). The cohort runs
//! as a reader of exactly what its grant names, never as more. Where a member's rights end
//! (they left the room), the execution's own stream says so in its place, and the cohort ends
//! that member's operation there: it holds no rule of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::Request;
use axum::body::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::socket::Outbox;
use crate::auth::{Grant, Viewer};
use crate::domain::{Domain, DomainError, DomainResult};
use crate::graphql::errors::stamp_codes;
use crate::graphql::share::{self, take_departure};
use crate::graphql::TidingsSchema;

/// Operations with equal keys produce equal output for every member.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    query: String,
    variables: String,
    operation_name: Option<String>,
    grant: Grant,
}

/// A subscription that may join a cohort.
pub(crate) struct Shareable {
    key: Key,
    field: &'static str,
    request: Request,
}

/// Whether `request` can share an execution, and with whom.
pub(crate) fn shareable(request: &Request) -> Option<Shareable> {
    let shared = share::shared(request)?;
    Some(Shareable {
        key: Key {
            query: request.query.clone(),
            variables: serde_json::to_string(&request.variables).ok()?,
            operation_name: request.operation_name.clone(),
            grant: shared.grant,
        },
        field: shared.field,
        request: {
            let r = Request::new(request.query.clone()).variables(request.variables.clone());
            match &request.operation_name {
                Some(name) => r.operation_name(name.clone()),
                None => r,
            }
        },
    })
}

/// What a member's connection does once the cohort has no more for it: free the operation's
/// id and queue its `complete`.
pub(crate) type OnEnd = Box<dyn FnOnce() + Send>;

/// One subscriber in a cohort. A member costs no task of its own: the cohort's execution
/// queues its frames, and ends it with `on_end`.
struct Member {
    /// What goes before and after the shared payload in this member's frame: for graphql-ws
    /// `{"id":…,"type":"next","payload":` and `}`, for an HTTP stream its own framing.
    prefix: Bytes,
    suffix: &'static str,
    outbox: Outbox,
    /// The member's stream ends where this user departs (the domain's `Sharing`).
    ends_with: Option<String>,
    on_end: OnEnd,
}

struct Cohort {
    key: Key,
    /// The root field, as error paths name it.
    field: &'static str,
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

/// Where a member's results go: what its transport puts before and after each shared payload
/// (its operation id and frame type, or an HTTP stream's framing), its connection's queue, and
/// what to do when the cohort ends (not called when the member leaves by dropping its
/// `Membership`).
pub(crate) struct Seat {
    pub(crate) prefix: String,
    pub(crate) suffix: &'static str,
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
    /// Shared executions running now.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

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
        seat: Seat,
    ) -> DomainResult<Membership> {
        let Seat {
            prefix,
            suffix,
            outbox,
            on_end,
        } = seat;
        let sharing = domain.sharing(viewer, &shareable.key.grant).await?;
        let member = Member {
            prefix: Bytes::from(prefix),
            suffix,
            outbox,
            ends_with: sharing.ends_with,
            on_end,
        };
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let mut cohorts = self.lock();
        let cohort = match cohorts.get(&shareable.key) {
            Some(c) => c.clone(),
            None => {
                let cohort = Arc::new(Cohort {
                    key: shareable.key.clone(),
                    field: shareable.field,
                    members: Mutex::new(HashMap::new()),
                    abandoned: CancellationToken::new(),
                });
                cohorts.insert(shareable.key.clone(), cohort.clone());
                let request = shareable
                    .request
                    .data(Viewer::Shared(shareable.key.grant.clone()));
                crate::metrics::cohort_started();
                tokio::spawn(drive(
                    schema.clone(),
                    request,
                    Arc::downgrade(&cohort),
                    cohort.abandoned.clone(),
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
) {
    let mut stream = schema.execute_stream(request);
    loop {
        let next = tokio::select! {
            _ = abandoned.cancelled() => return,
            next = stream.next() => next,
        };
        let Some(cohort) = cohort.upgrade() else {
            return;
        };
        let Some(mut response) = next else {
            // Taken out of the lock first: ending a member may drop its membership.
            let ended: Vec<Member> = cohort.lock().drain().map(|(_, m)| m).collect();
            for member in ended {
                (member.on_end)();
            }
            return;
        };
        stamp_codes(&mut response);
        let departed = take_departure(&mut response);
        let Ok(payload) = serde_json::to_string(&response) else {
            continue;
        };
        // One allocation per event, whatever the number of members.
        let payload = Bytes::from(payload);
        match departed {
            // Everything before this point reached the leaver's members; this is their last.
            Some(user_id) => end_members(&cohort, &user_id, &payload),
            None => {
                let members = cohort.lock();
                if members.is_empty() {
                    return;
                }
                for member in members.values() {
                    // A member whose queue is full is a slow consumer: it is closed, and
                    // never holds up the others.
                    member.send(&payload);
                }
            }
        }
    }
}

impl Member {
    /// Queues this member's result frame around a shared payload.
    fn send(&self, payload: &Bytes) {
        self.outbox
            .try_push_shared(&self.prefix, payload, self.suffix, None);
    }
}

/// Ends the members whose stream ends with `user_id`'s departure: `payload` (their FORBIDDEN),
/// then `complete`.
fn end_members(cohort: &Cohort, user_id: &str, payload: &Bytes) {
    let ended: Vec<Member> = {
        let mut members = cohort.lock();
        let ids: Vec<u64> = members
            .iter()
            .filter(|(_, m)| m.ends_with.as_deref() == Some(user_id))
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| members.remove(id)).collect()
    };
    for member in ended {
        member.send(payload);
        (member.on_end)();
    }
}

/// The result (payload) for a member refused before joining, as its resolver would refuse it.
pub(crate) fn refusal(field: &str, error: &DomainError) -> String {
    json!({ "data": null, "errors": [{
        "message": error.to_string(),
        "path": [field],
        "extensions": { "code": error.code() },
    }] })
    .to_string()
}

impl Shareable {
    /// The root field, as error paths name it.
    pub(crate) fn field(&self) -> &'static str {
        self.field
    }
}

/// A member's place, to check its right again when its connection's credentials are renewed.
pub(crate) struct MemberSeat {
    cohort: Arc<Cohort>,
    id: u64,
}

impl Membership {
    pub(crate) fn seat(&self) -> MemberSeat {
        MemberSeat {
            cohort: self.cohort.clone(),
            id: self.id,
        }
    }
}

impl MemberSeat {
    /// Checks the member's right to the cohort's grant under `viewer`, the connection's renewed
    /// credentials, by the domain's rule (`Domain::sharing`, as on joining): a member still
    /// allowed continues, ending where the new rights say; one no longer allowed gets its
    /// refusal, then `complete`.
    pub(crate) async fn recheck(&self, domain: &Domain, viewer: &Viewer) {
        let checked = domain.sharing(viewer, &self.cohort.key.grant).await;
        let ended = {
            let mut members = self.cohort.lock();
            match checked {
                Ok(sharing) => {
                    if let Some(member) = members.get_mut(&self.id) {
                        member.ends_with = sharing.ends_with;
                    }
                    None
                }
                Err(e) => members.remove(&self.id).map(|member| (member, e)),
            }
        };
        if let Some((member, error)) = ended {
            let payload = json!({ "data": null, "errors": [{
                "message": error.to_string(),
                "path": [self.cohort.field],
                "extensions": { "code": error.code() },
            }] });
            member.send(&Bytes::from(payload.to_string()));
            (member.on_end)();
        }
    }
}
