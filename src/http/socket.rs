//! The connection skeleton every WebSocket transport shares: graphql-ws (both subprotocols,
//! `ws.rs`) and the legacy JSON protocol (`legacy/socket.rs`) implement only a `Protocol`
//! (framing, dispatch and close codes); everything else is here, once: the sized upgrade
//! (`websocket.rs` reads and writes its frames), sign-in with connection counting and
//! presence (and the per-user limit, 1008), the ping/idle/token-expiry loop, an admin's
//! disconnect, shutdown (1001), the write queue and teardown.
//!
//! **Budgets**, so that no client, signed in or not, can make the server hold more than a
//! bounded share: an upgrade is refused before it happens (the handshake is answered, no
//! socket is made) past `TIDINGS_MAX_CONNECTIONS` sockets (503) or past
//! `TIDINGS_MAX_ANONYMOUS_PER_ADDRESS` sockets of one client address that have not signed in
//! as a user (429), both with `Retry-After`. A socket counts under its address from its
//! upgrade until it signs in as a user, and an anonymous one for its whole life. A graphql-ws
//! client signs in with `connection_init`, after the upgrade, so its socket counts until then
//! whatever its upgrade request carries; a `/ws` socket with a token signs in as it opens
//! (closed at once if the token is refused), so it is not counted under its address at all:
//! anonymous sockets from an address cannot lock its signed-in users out of `/ws`. Once open,
//! a socket follows a bounded number of things (`Link::follows_budget`: GraphQL operations,
//! `/ws` channels; fewer for anonymous sockets), and a user a bounded number over all their
//! sockets (`Link::subscription_slot`).
//!
//! A connection is a reader (the task that owns the socket's read half and the protocol's
//! state) and a writer task. Frames go to the writer through an `Outbox`; the reader ends the
//! connection by handing an `End` to `SocketWriter::finish`.
//!
//! **Slow consumers, one policy for every path**: a connection whose queue stays full for
//! `slow_consumer_timeout` (`TIDINGS_SLOW_CONSUMER_TIMEOUT`, 5 s) is a slow consumer and is
//! closed at once with 1008 `slow consumer`; until then no frame is dropped. A producer that
//! can wait (`Outbox::push`: a connection's own operations and feeds) waits for room until
//! then. One that must not (`Outbox::try_push`: fan-out to a cohort, where one member must
//! never hold up the others) queues past the bound instead; so that memory stays bounded, a
//! queue that reaches twice its bound that way is a slow consumer at once. Control frames
//! (`Outbox::offer`: acks, pongs, keep-alives) that do not fit are dropped, as the peer is not
//! reading.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::frames::{Incoming, ReadError, Reader};
use super::renewal::{self, Renewals};
use super::websocket::{self, Frame, Upgrade, Writer};
use super::{client, AppState};
use crate::auth::{bearer, Viewer};
use crate::domain::channels::ANONYMOUS_FOLLOWS_MAX;
use crate::domain::presence::PresenceGuard;
use crate::domain::typing::ConnectionId;
use crate::domain::users::ViewerError;
use crate::domain::DomainError;
use crate::hub::event::SocketLoad;
use crate::metrics::Transport;

/// How long queued frames may take to drain before a close goes out regardless.
const DRAIN_BEFORE_CLOSE: Duration = Duration::from_secs(5);

/// Open WebSocket connections, so shutdown can wait for them to close, and by user, so an
/// admin can disconnect one.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    next_id: AtomicU64,
    closed: Notify,
    /// Each signed-in user's connections here, by connection id.
    by_user: Mutex<HashMap<String, Vec<UserConnection>>>,
    /// Sockets admitted and not yet closed, opening ones included: what
    /// `TIDINGS_MAX_CONNECTIONS` caps.
    admitted: AtomicUsize,
    /// Sockets not signed in as a user, by the address their client holds
    /// (`client::address_holder`): what `TIDINGS_MAX_ANONYMOUS_PER_ADDRESS` caps.
    anonymous: Mutex<HashMap<IpAddr, usize>>,
    /// What each signed-in user follows over all their sockets here (GraphQL operations and
    /// `/ws` channels): what `TIDINGS_MAX_SUBSCRIPTIONS_PER_USER` caps.
    subscriptions: Mutex<HashMap<String, usize>>,
}

/// A signed-in user's connection here: its id, its transport, and its queue.
type UserConnection = (u64, Transport, Outbox);

/// How long a refused client is asked to wait before it tries again.
pub(crate) const RETRY_AFTER_SECONDS: u64 = 5;

/// Why an upgrade was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpgradeRefused {
    /// The instance holds `TIDINGS_MAX_CONNECTIONS` sockets: 503.
    ServerFull,
    /// The client's address holds `TIDINGS_MAX_ANONYMOUS_PER_ADDRESS` sockets not signed in
    /// as a user: 429.
    AddressFull,
}

impl IntoResponse for UpgradeRefused {
    fn into_response(self) -> Response {
        let (status, reason, message) = match self {
            UpgradeRefused::ServerFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_full",
                "the server holds as many connections as it may; retry later",
            ),
            UpgradeRefused::AddressFull => (
                StatusCode::TOO_MANY_REQUESTS,
                "address_full",
                "too many connections not signed in from this address; retry later",
            ),
        };
        crate::metrics::connection_refused(reason);
        let body = serde_json::json!({ "error": message, "code": "RATE_LIMITED" });
        let retry = [(header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())];
        (status, retry, Json(body)).into_response()
    }
}

/// A socket's place within the connection budgets, from its upgrade until it closes.
pub(crate) struct Admission {
    connections: Arc<Connections>,
    /// The address the socket counts under until it signs in as a user.
    anonymous: Option<IpAddr>,
}

impl Admission {
    /// The socket signed in as a user: it no longer counts under its address.
    fn signed_in(&mut self) {
        if let Some(address) = self.anonymous.take() {
            self.connections.leave_address(address);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.signed_in();
        self.connections.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One place in a user's subscription budget, held while the operation or channel lives.
pub(crate) struct SubscriptionSlot {
    connections: Arc<Connections>,
    user_id: String,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut held = self.connections.lock_subscriptions();
        if let Some(n) = held.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.user_id);
            }
        }
    }
}

impl Connections {
    /// Admits one more socket for a client at `address` (`None`: unknown, counted only in
    /// the total): at most `max` sockets in all, and at most `per_address` (when set) not
    /// signed in as a user per client address.
    pub(crate) fn admit(
        self: &Arc<Self>,
        address: Option<IpAddr>,
        max: usize,
        per_address: Option<usize>,
    ) -> Result<Admission, UpgradeRefused> {
        let admitted = self
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(UpgradeRefused::ServerFull);
        }
        // From here the admission holds its place in the total: dropping it gives it back.
        let mut admission = Admission {
            connections: self.clone(),
            anonymous: None,
        };
        if let (Some(address), Some(cap)) = (address, per_address) {
            let holder = client::address_holder(address);
            let mut anonymous = self.lock_anonymous();
            let held = anonymous.entry(holder).or_default();
            if *held >= cap {
                if *held == 0 {
                    anonymous.remove(&holder);
                }
                return Err(UpgradeRefused::AddressFull);
            }
            *held += 1;
            admission.anonymous = Some(holder);
        }
        Ok(admission)
    }

    fn leave_address(&self, holder: IpAddr) {
        let mut anonymous = self.lock_anonymous();
        if let Some(n) = anonymous.get_mut(&holder) {
            *n -= 1;
            if *n == 0 {
                anonymous.remove(&holder);
            }
        }
    }

    fn lock_anonymous(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.anonymous.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One place in `user_id`'s subscription budget of `max`, or `None` when it is spent.
    fn hold_subscription(self: &Arc<Self>, user_id: &str, max: usize) -> Option<SubscriptionSlot> {
        let mut held = self.lock_subscriptions();
        let current = held.get(user_id).copied().unwrap_or(0);
        if current >= max {
            return None;
        }
        held.insert(user_id.to_owned(), current + 1);
        Some(SubscriptionSlot {
            connections: self.clone(),
            user_id: user_id.to_owned(),
        })
    }

    pub(crate) fn open(self: &Arc<Self>, transport: Transport) -> ConnectionTicket {
        self.open.fetch_add(1, Ordering::SeqCst);
        crate::metrics::connection_opened(transport);
        ConnectionTicket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            transport,
            connections: self.clone(),
        }
    }

    /// Records that connection `id` (whose queue is `outbox`) is `user_id`'s, so
    /// `disconnect_user` reaches it, until the returned watch is dropped.
    pub(crate) fn watch_user(
        self: &Arc<Self>,
        user_id: &str,
        id: u64,
        transport: Transport,
        outbox: &Outbox,
    ) -> UserWatch {
        self.lock_users()
            .entry(user_id.to_owned())
            .or_default()
            .push((id, transport, outbox.clone()));
        UserWatch {
            connections: self.clone(),
            user_id: user_id.to_owned(),
            id,
        }
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<UserConnection>>> {
        self.by_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes every connection of `user_id` on this instance; returns how many.
    pub fn disconnect_user(&self, user_id: &str) -> usize {
        let users = self.lock_users();
        let Some(connections) = users.get(user_id) else {
            return 0;
        };
        for (_, _, outbox) in connections {
            outbox.0.attend(|state| state.kicked = true);
        }
        connections.len()
    }

    /// The signed-in sockets here, deepest queue first (at most `max`), and how many there
    /// are in all: the operator console's figures, read once a second.
    pub fn socket_loads(&self, max: usize) -> (Vec<SocketLoad>, u64) {
        // The deepest `max` only, kept in a heap whose top is the shallowest of them (then the
        // last by user id): with tens of thousands of sockets, nothing is allocated or sorted
        // for those not reported, and the registry's lock is held for one pass.
        let mut deepest: BinaryHeap<(Reverse<u64>, &str, &'static str)> = BinaryHeap::new();
        let mut all = 0u64;
        let users = self.lock_users();
        for (user_id, connections) in users.iter() {
            for (_, transport, outbox) in connections {
                all += 1;
                let entry = (
                    Reverse(outbox.0.lock().frames.len() as u64),
                    user_id.as_str(),
                    transport.label(),
                );
                if deepest.len() < max {
                    deepest.push(entry);
                } else if deepest.peek().is_some_and(|top| entry < *top) {
                    deepest.pop();
                    deepest.push(entry);
                }
            }
        }
        let loads = deepest
            .into_sorted_vec()
            .into_iter()
            .map(|(Reverse(queued), user_id, transport)| SocketLoad {
                user_id: user_id.to_owned(),
                transport: transport.to_owned(),
                queued,
            })
            .collect();
        (loads, all)
    }

    pub fn count(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits (at most 10 s) until every connection has closed.
    pub async fn wait_closed(&self) {
        let wait = async {
            while self.count() > 0 {
                let notified = self.closed.notified();
                if self.count() == 0 {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    }
}

/// One open connection, counted while it lives. Its `id` names the connection to the domain
/// (typing set on it stops when it closes).
pub(crate) struct ConnectionTicket {
    pub(crate) id: u64,
    transport: Transport,
    connections: Arc<Connections>,
}

/// A signed-in connection, reachable by `Connections::disconnect_user` while it lives.
pub(crate) struct UserWatch {
    connections: Arc<Connections>,
    user_id: String,
    id: u64,
}

impl Drop for UserWatch {
    fn drop(&mut self) {
        let mut users = self.connections.lock_users();
        if let Some(mine) = users.get_mut(&self.user_id) {
            mine.retain(|(id, _, _)| *id != self.id);
            if mine.is_empty() {
                users.remove(&self.user_id);
            }
        }
    }
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::SeqCst);
        crate::metrics::connection_closed(self.transport);
        self.connections.closed.notify_waiters();
    }
}

/// When and on which kind of topic the event behind a frame was created: the writer measures
/// the delivery latency once the frame is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EventStamp {
    pub(crate) kind: &'static str,
    pub(crate) created: DateTime<Utc>,
}

/// A frame on its way to the socket.
pub(crate) struct Outbound {
    frame: Frame,
    event: Option<EventStamp>,
}

/// A connection's bounded queue of frames, the socket's write half while nothing is being
/// written, and the close its reader asks for.
///
/// Written here rather than taken from `tokio::sync::mpsc`: a bounded mpsc channel allocates
/// a block of 32 slots when it is made (about 2.5 KiB at this frame size), and a second
/// channel for the close would add as much again, for every connection, idle or not. This
/// queue holds frames only while they wait, and a connection has a writer task only while it
/// has frames to write: the first frame queued to an idle connection starts one, which parks
/// the write half back here once the queue is empty. An idle connection costs its reader
/// task and this structure.
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes producers waiting for room.
    room: Notify,
    /// Wakes the reader: a producer gave up on a full queue, or an admin disconnected the user.
    attention: Notify,
    /// Wakes `finish` once the writer has closed the socket.
    closed: Notify,
    capacity: usize,
    slow_after: Duration,
    transport: Transport,
    /// How an HTTP stream's body writes keep-alives and its end; `None` for a WebSocket.
    body: Option<BodyStyle>,
}

type Sink = Writer;

/// The bytes an HTTP stream's body writes of its own: a keep-alive (for each queued
/// `Frame::Ping`) and what ends the stream (a multipart stream's closing boundary). Every
/// other frame is written as the producers framed it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyStyle {
    pub(crate) keepalive: &'static str,
    pub(crate) epilogue: &'static str,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Outbound>,
    /// The socket's write half, while no writer task has it.
    sink: Option<Sink>,
    /// A writer task is running (it has the write half).
    writing: bool,
    /// The reader asked to close: nothing more is queued.
    closing: bool,
    /// How, for the running writer to carry out.
    close: Option<End>,
    /// The write half is closed (or failed): nothing more will be written.
    writer_gone: bool,
    /// Since when the queue has been full (none while it has room).
    full_since: Option<Instant>,
    /// The queue stayed full for too long.
    slow: bool,
    /// An administrator disconnected the user.
    kicked: bool,
    /// An HTTP stream's body, waiting for frames.
    body_waiting: Option<Waker>,
}

/// A drained queue keeps at most this many slots allocated while its writer runs.
const QUEUE_KEEP: usize = 64;

enum Enqueue {
    Queued,
    /// No room; the queue has been full since then.
    Full(Outbound, Instant),
    /// A producer that cannot wait found the queue full for too long, or twice its bound.
    Slow,
    Closed,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame, starting a writer when none runs. `past_bound`: a producer that cannot
    /// wait queues past the bound while the queue has not been full for too long.
    fn enqueue(self: &Arc<Self>, frame: Outbound, past_bound: bool) -> Enqueue {
        let sink = {
            let mut state = self.lock();
            if state.writer_gone || state.closing {
                return Enqueue::Closed;
            }
            let queued = state.frames.len();
            if queued >= self.capacity {
                let since = *state.full_since.get_or_insert_with(Instant::now);
                if !past_bound {
                    return Enqueue::Full(frame, since);
                }
                if queued >= 2 * self.capacity || since.elapsed() >= self.slow_after {
                    return Enqueue::Slow;
                }
            }
            state.frames.push_back(frame);
            if let Some(waker) = state.body_waiting.take() {
                // An HTTP stream: its body writes, when hyper asks it to.
                drop(state);
                waker.wake();
                return Enqueue::Queued;
            }
            if state.writing {
                None
            } else {
                let sink = state.sink.take();
                state.writing = sink.is_some();
                sink
            }
        };
        if let Some(sink) = sink {
            tokio::spawn(write_burst(sink, self.clone()));
        }
        Enqueue::Queued
    }

    fn mark_slow(&self) {
        let mut first = false;
        self.attend(|state| first = !std::mem::replace(&mut state.slow, true));
        if first {
            crate::metrics::slow_consumer(self.transport);
        }
    }

    /// Changes the state and wakes the reader to look at it.
    fn attend(&self, change: impl FnOnce(&mut QueueState)) {
        change(&mut self.lock());
        self.attention.notify_one();
    }

    /// The next frame, without waiting.
    fn try_pop(&self) -> Option<Outbound> {
        let (frame, freed) = {
            let mut state = self.lock();
            let was_full = state.frames.len() >= self.capacity;
            let frame = state.frames.pop_front();
            let has_room = state.frames.len() < self.capacity;
            if has_room {
                state.full_since = None;
            }
            if state.frames.is_empty() && state.frames.capacity() > QUEUE_KEEP {
                state.frames = VecDeque::new();
            }
            (frame, was_full && has_room)
        };
        if freed && frame.is_some() {
            self.room.notify_waiters();
        }
        frame
    }

    /// Hands the write half back when there is nothing to write (the writer then ends);
    /// otherwise returns it to the writer.
    fn park(&self, sink: Sink) -> Result<(), Sink> {
        let mut state = self.lock();
        if !state.frames.is_empty() || state.close.is_some() {
            return Err(sink);
        }
        state.sink = Some(sink);
        state.writing = false;
        // An idle connection keeps no slots.
        state.frames = VecDeque::new();
        Ok(())
    }

    /// The close the reader asked for, if any; a close at once drops what is queued.
    fn take_close(&self) -> Option<End> {
        let mut state = self.lock();
        let close = state.close.take();
        if matches!(close, Some(End::CloseNow(..))) {
            state.frames = VecDeque::new();
        }
        close
    }

    /// The write half is closed or failed: producers learn it, `finish` stops waiting, and
    /// the reader (which for an HTTP stream has nothing else to hear it from) ends.
    fn writer_gone(&self) {
        {
            let mut state = self.lock();
            state.writer_gone = true;
            state.writing = false;
            state.frames = VecDeque::new();
        }
        self.room.notify_waiters();
        self.closed.notify_waiters();
        self.attention.notify_one();
    }

    /// Wakes an HTTP stream's body, if it waits.
    fn wake_body(&self) {
        let waker = self.lock().body_waiting.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Where a connection's producers put frames for the writer.
#[derive(Clone)]
pub(crate) struct Outbox(Arc<Queue>);

impl Outbox {
    /// Queues a control-plane frame (an ack, a pong, a keep-alive); one that does not fit is
    /// dropped, as the peer is not reading.
    pub(crate) fn offer(&self, frame: Frame) {
        let frame = Outbound { frame, event: None };
        let _ = self.0.enqueue(frame, false);
    }

    /// Queues a frame, waiting for room while the queue has not been full for too long; false
    /// when the connection is ending (closed, or a slow consumer now).
    pub(crate) async fn push(&self, text: String, event: Option<EventStamp>) -> bool {
        let queue = &self.0;
        let mut frame = Outbound {
            frame: Frame::text(text),
            event,
        };
        loop {
            let room = queue.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let deadline = match queue.enqueue(frame, false) {
                Enqueue::Queued => return true,
                Enqueue::Closed | Enqueue::Slow => return false,
                Enqueue::Full(back, since) => {
                    frame = back;
                    since + queue.slow_after
                }
            };
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                queue.mark_slow();
                return false;
            }
        }
    }

    /// Queues a frame without waiting (fan-out, where one member must never hold up the
    /// others), past the bound if need be: the same slow-consumer policy as `push`, see the
    /// top of this file. False when the frame was not queued.
    pub(crate) fn try_push(&self, text: String, event: Option<EventStamp>) -> bool {
        self.try_push_frame(Frame::text(text), event)
    }

    /// Queues, as `try_push` does, a member's message around a payload that other members
    /// share: `prefix`, `payload` and `suffix` are written as one message, and the payload's
    /// bytes are never copied for it.
    pub(crate) fn try_push_shared(
        &self,
        prefix: &Bytes,
        payload: &Bytes,
        suffix: &'static str,
        event: Option<EventStamp>,
    ) -> bool {
        let frame = Frame::Shared {
            prefix: prefix.clone(),
            payload: payload.clone(),
            suffix,
        };
        self.try_push_frame(frame, event)
    }

    fn try_push_frame(&self, frame: Frame, event: Option<EventStamp>) -> bool {
        let frame = Outbound { frame, event };
        match self.0.enqueue(frame, true) {
            Enqueue::Queued => true,
            Enqueue::Slow => {
                self.0.mark_slow();
                false
            }
            Enqueue::Full(..) | Enqueue::Closed => false,
        }
    }

    /// Resolves once the reader must close: a slow consumer at once with 1008; a user an
    /// administrator disconnected with `kicked_code`, after what is queued.
    pub(crate) async fn attention(&self, kicked_code: u16) -> End {
        loop {
            let attention = self.0.attention.notified();
            {
                let state = self.0.lock();
                if state.slow {
                    return End::CloseNow(1008, "slow consumer".into());
                }
                if state.writer_gone && !state.closing {
                    return End::Gone;
                }
                if state.kicked {
                    return End::Close(kicked_code, "disconnected by an administrator".into());
                }
            }
            attention.await;
        }
    }
}

/// Why a connection's reader stopped, and how to close.
pub(crate) enum End {
    /// The peer closed or vanished: nothing to send.
    Gone,
    /// Close after the frames already queued.
    Close(u16, String),
    /// Close at once, dropping what is queued (a slow consumer, an oversized frame).
    CloseNow(u16, String),
}

/// A connection's writing side, owned by its reader, which ends it with `finish`.
pub(crate) struct SocketWriter {
    queue: Arc<Queue>,
}

impl SocketWriter {
    /// Takes the socket's write half; its frames go through a queue of `queue` frames.
    pub(crate) fn start(
        sink: Writer,
        queue: usize,
        slow_after: Duration,
        transport: Transport,
    ) -> (Self, Outbox) {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                sink: Some(sink),
                ..QueueState::default()
            }),
            room: Notify::new(),
            attention: Notify::new(),
            closed: Notify::new(),
            capacity: queue.max(1),
            slow_after,
            transport,
            body: None,
        });
        (
            Self {
                queue: queue.clone(),
            },
            Outbox(queue),
        )
    }

    /// A writing side for an HTTP stream: its frames go through a queue of `queue` frames to
    /// the returned body, which the response streams as hyper asks for more (so a client that
    /// stops reading fills the queue, and is a slow consumer as on a socket).
    pub(crate) fn start_body(
        queue: usize,
        slow_after: Duration,
        transport: Transport,
        style: BodyStyle,
    ) -> (Self, Outbox, StreamBody) {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            room: Notify::new(),
            attention: Notify::new(),
            closed: Notify::new(),
            capacity: queue.max(1),
            slow_after,
            transport,
            body: Some(style),
        });
        (
            Self {
                queue: queue.clone(),
            },
            Outbox(queue.clone()),
            StreamBody { queue, done: false },
        )
    }

    /// Closes as `end` says and waits for the socket's write half to close. Producers still
    /// holding an `Outbox` should be stopped first: what they queued is written before a
    /// `Close`, for at most a few seconds.
    pub(crate) async fn finish(self, end: End) {
        let queue = self.queue.clone();
        if queue.body.is_some() {
            // An HTTP stream's body writes what is queued and then ends, as hyper polls it;
            // nothing here to wait for (a client gone drops the body).
            {
                let mut state = queue.lock();
                state.closing = true;
                state.close = Some(end);
            }
            queue.room.notify_waiters();
            queue.wake_body();
            return;
        }
        let parked = {
            let mut state = queue.lock();
            state.closing = true;
            match state.sink.take() {
                Some(sink) => Some((sink, end)),
                None => {
                    if state.writing {
                        state.close = Some(end);
                    }
                    None
                }
            }
        };
        queue.room.notify_waiters();
        match parked {
            // Nothing queued (a parked write half means an empty queue): close here.
            Some((sink, end)) => close(sink, &queue, end).await,
            // The running writer closes once it is done with what it has.
            None => {
                let wait = async {
                    loop {
                        let closed = queue.closed.notified();
                        tokio::pin!(closed);
                        closed.as_mut().enable();
                        if queue.lock().writer_gone {
                            return;
                        }
                        closed.await;
                    }
                };
                let _ =
                    tokio::time::timeout(DRAIN_BEFORE_CLOSE + Duration::from_secs(1), wait).await;
            }
        }
    }
}

impl Drop for SocketWriter {
    /// A reader that ends without `finish` still closes the write half.
    fn drop(&mut self) {
        let parked = {
            let mut state = self.queue.lock();
            state.closing = true;
            if (state.writing || self.queue.body.is_some()) && state.close.is_none() {
                state.close = Some(End::Gone);
            }
            state.sink.take()
        };
        drop(parked);
        self.queue.room.notify_waiters();
        self.queue.wake_body();
    }
}

/// Writes what is queued, in batches, until the queue is empty, then parks the write half in
/// the queue and ends; or carries out the close the reader asked for.
async fn write_burst(mut sink: Sink, queue: Arc<Queue>) {
    let transport = queue.transport;
    loop {
        if let Some(control) = queue.take_close() {
            close(sink, &queue, control).await;
            return;
        }
        match queue.try_pop() {
            Some(first) => {
                if !write(&mut sink, first, &queue, transport).await {
                    queue.writer_gone();
                    return;
                }
            }
            None => match queue.park(sink) {
                Ok(()) => return,
                Err(back) => sink = back,
            },
        }
    }
}

/// Closes the write half as the reader asked.
async fn close(mut sink: Sink, queue: &Queue, end: End) {
    match end {
        End::CloseNow(code, reason) => {
            let _ = websocket::write_frames(&mut sink, &[Frame::Close(code, reason)]).await;
        }
        // Boxed, as a close happens once: not kept in every writer.
        End::Close(code, reason) => {
            Box::pin(close_after_queue(
                &mut sink,
                queue,
                Frame::Close(code, reason),
            ))
            .await;
        }
        End::Gone => {}
    }
    let _ = sink.shutdown().await;
    queue.writer_gone();
}

/// Writes what is queued, then the close; but never waits long on a peer that stopped reading.
async fn close_after_queue(sink: &mut Sink, queue: &Queue, close: Frame) {
    let drain = async {
        while let Some(out) = queue.try_pop() {
            if !write(sink, out, queue, queue.transport).await {
                return false;
            }
        }
        true
    };
    if let Ok(true) = tokio::time::timeout(DRAIN_BEFORE_CLOSE, drain).await {
        let _ = websocket::write_frames(sink, &[close]).await;
    }
}

/// Frames written together: under fan-out a socket's queue holds many, and one write system
/// call for all of them costs far less than one each.
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued (up to a batch) with one vectored
/// write; false when the socket is gone.
async fn write(sink: &mut Sink, first: Outbound, queue: &Queue, transport: Transport) -> bool {
    let mut frames: Vec<Frame> = Vec::with_capacity(8);
    let mut written: Vec<EventStamp> = Vec::new();
    let mut next = Some(first);
    while let Some(out) = next.take() {
        frames.push(out.frame);
        written.extend(out.event);
        if frames.len() < WRITE_BATCH {
            next = queue.try_pop();
        }
    }
    if websocket::write_frames(sink, &frames).await.is_err() {
        return false;
    }
    for event in written {
        crate::metrics::frame_written(transport, event.kind, event.created);
    }
    true
}

/// An HTTP stream's response body: the frames of its connection's queue, as hyper asks for
/// them, up to a batch at a time; then the style's epilogue once the connection ends.
/// Dropped (the client went away), it tells the connection's reader.
pub(crate) struct StreamBody {
    queue: Arc<Queue>,
    done: bool,
}

impl futures_util::Stream for StreamBody {
    type Item = Result<axum::body::Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        let queue = self.queue.clone();
        let Some(style) = queue.body else {
            return Poll::Ready(None);
        };
        loop {
            if matches!(queue.lock().close, Some(End::CloseNow(..))) {
                queue.lock().frames = VecDeque::new();
            }
            let mut bytes: Vec<u8> = Vec::new();
            let mut written: Vec<EventStamp> = Vec::new();
            while written.len() < WRITE_BATCH && bytes.len() < 64 * 1024 {
                let Some(out) = queue.try_pop() else { break };
                match &out.frame {
                    Frame::Ping => bytes.extend_from_slice(style.keepalive.as_bytes()),
                    frame => {
                        for part in frame.parts() {
                            bytes.extend_from_slice(part);
                        }
                    }
                }
                written.extend(out.event);
            }
            if !bytes.is_empty() {
                for event in written {
                    crate::metrics::frame_written(queue.transport, event.kind, event.created);
                }
                return Poll::Ready(Some(Ok(bytes.into())));
            }
            let mut state = queue.lock();
            if !state.frames.is_empty() {
                continue;
            }
            if state.close.take().is_some() {
                drop(state);
                self.done = true;
                queue.writer_gone();
                return match style.epilogue {
                    "" => Poll::Ready(None),
                    epilogue => Poll::Ready(Some(Ok(epilogue.as_bytes().into()))),
                };
            }
            state.body_waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        if !self.done {
            self.queue.writer_gone();
        }
    }
}

/// How to close after a read error: 1009 for a message over the size limit, 1007 for a text
/// message that is not UTF-8 (RFC 6455, 8.1), 1002 for a frame that breaks the protocol.
fn read_error(e: ReadError) -> End {
    match e {
        ReadError::TooBig => End::CloseNow(1009, "message too big".into()),
        ReadError::NotUtf8 => End::CloseNow(1007, "invalid UTF-8".into()),
        ReadError::Protocol(reason) => End::CloseNow(1002, reason.into()),
        ReadError::Io(e) => {
            tracing::debug!(error = %e, "reading the socket failed");
            End::Gone
        }
    }
}

/// A connection's one timer: the next of its deadlines (keep-alive ping, initialisation
/// timeout, token expiry and the warning before it). One `Sleep`, moved as the deadlines
/// change, instead of one per deadline in every idle connection.
struct Deadlines {
    ping: Instant,
    init: Option<Instant>,
    expires: Option<Instant>,
    warn: Option<Instant>,
}

impl Deadlines {
    /// The token's deadlines for `viewer` (none for anonymous ones), as it signs in or renews.
    fn token(&mut self, viewer: Option<&Viewer>, warning: Duration) {
        self.expires = renewal::token_expiry(viewer);
        self.warn = renewal::warning_before(self.expires, warning);
    }

    fn next(&self) -> Instant {
        [self.init, self.expires, self.warn]
            .into_iter()
            .flatten()
            .fold(self.ping, Instant::min)
    }

    /// Moves `timer` to the next deadline, if that changed.
    fn arm(&self, timer: std::pin::Pin<&mut tokio::time::Sleep>) {
        let next = self.next();
        if timer.deadline() != next {
            timer.reset(next);
        }
    }
}

// --- The skeleton ----------------------------------------------------------------------------

/// How a protocol closes for the skeleton's reasons.
pub(crate) struct Closes {
    /// A refused sign-in (the reason given), an expired token (`token expired`), a user an
    /// administrator disconnected.
    pub(crate) unauthorised: (u16, &'static str),
    /// The server could not sign the connection in (`Internal error`).
    pub(crate) internal: u16,
    /// A connection not initialised in time (`ws_init_timeout`), for protocols that sign in
    /// with a message of their own rather than when they open.
    pub(crate) init_timeout: Option<(u16, &'static str)>,
}

/// What a WebSocket transport adds to the skeleton: its framing, dispatch and close codes.
pub(crate) trait Protocol: Sized + Send + 'static {
    /// What the upgrade hands over to open a connection.
    type Opening: Send + 'static;
    const TRANSPORT: Transport;
    const CLOSES: Closes;
    /// How to close on a binary frame that is not UTF-8.
    const NOT_TEXT: (u16, &'static str);

    /// Opens the connection: signs it in (`Link::sign_in`) if the protocol does so at once,
    /// starts what it follows, greets. `Err` closes at once.
    fn open(
        link: &mut Link,
        opening: Self::Opening,
    ) -> impl Future<Output = Result<Self, End>> + Send;

    /// A text frame (or a UTF-8 binary one); `Some` ends the connection.
    fn on_text(&mut self, link: &mut Link, text: &str) -> impl Future<Output = Option<End>> + Send;

    /// A keep-alive frame of the protocol's own, sent with each WebSocket ping.
    fn keepalive(&self, _link: &Link) -> Option<String> {
        None
    }

    /// Work the connection owns that the reader also waits on (graphql-ws: operations
    /// ending); never resolves by default.
    fn background(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// The connection's credentials were renewed (`link.viewer()` is the new viewer): what it
    /// follows is checked again under them.
    fn renewed(&mut self, _link: &mut Link) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The connection's token expires at `expires_at` (seconds since the epoch) in
    /// `TIDINGS_TOKEN_WARNING` or less: protocols that say so tell the client.
    fn token_expiring(
        &mut self,
        _link: &Link,
        _expires_at: i64,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Why a sign-in was refused.
pub(crate) enum Refused {
    /// The token is invalid, expired, revoked, or not the expected user's.
    Token(String),
    /// The user holds as many connections as allowed (1008).
    TooMany,
    /// The database or Redis failed.
    Internal,
}

impl Refused {
    /// How `P` closes for it.
    pub(crate) fn end<P: Protocol>(&self) -> End {
        match self {
            Refused::Token(_) => {
                let (code, reason) = P::CLOSES.unauthorised;
                End::Close(code, reason.into())
            }
            Refused::TooMany => End::Close(1008, "too many connections".into()),
            Refused::Internal => End::Close(P::CLOSES.internal, "Internal error".into()),
        }
    }
}

/// One connection as the skeleton holds it, lent to its protocol: where frames go, and who
/// is signed in.
pub(crate) struct Link {
    pub(crate) state: AppState,
    /// Names the connection to the domain (typing set on it stops when it closes).
    pub(crate) id: ConnectionId,
    pub(crate) out: Outbox,
    viewer: Option<Viewer>,
    _presence: Option<PresenceGuard>,
    /// Set once a user signed in: `Connections::disconnect_user` reaches the connection.
    _watch: Option<UserWatch>,
    /// The connection's credentials, once signed in, and their renewals.
    renewals: Renewals,
    /// The connection's place within the connection budgets.
    admission: Admission,
    transport: Transport,
}

impl Link {
    /// A connection not signed in yet, numbered by its `ticket`, writing to `out`.
    pub(crate) fn new(
        state: AppState,
        ticket: &ConnectionTicket,
        out: Outbox,
        admission: Admission,
    ) -> Self {
        Link {
            state,
            id: ticket.id,
            out,
            viewer: None,
            _presence: None,
            _watch: None,
            renewals: Renewals::default(),
            admission,
            transport: ticket.transport,
        }
    }

    /// Who the connection is for, once signed in (anonymous included).
    pub(crate) fn viewer(&self) -> Option<&Viewer> {
        self.viewer.as_ref()
    }

    /// The connection's credentials, which operations on it renew; none before sign-in.
    /// Made by the first operation that may renew them: a connection whose operations all
    /// share a cohort's execution (which never renews) holds no cell, and its reader no watch.
    pub(crate) fn credentials(&mut self) -> Option<&crate::domain::sessions::Credentials> {
        if self.renewals.credentials().is_none() {
            let viewer = self.viewer.as_ref()?;
            self.renewals = Renewals::start(viewer);
        }
        self.renewals.credentials()
    }

    /// How many things (GraphQL operations, `/ws` channels) the connection may follow at once
    /// when a signed-in one may follow `signed_in`: anonymous ones (and ones not signed in yet)
    /// at most `ANONYMOUS_FOLLOWS_MAX`.
    pub(crate) fn follows_budget(&self, signed_in: usize) -> usize {
        match self.viewer.as_ref().and_then(Viewer::user) {
            Some(_) => signed_in,
            None => signed_in.min(ANONYMOUS_FOLLOWS_MAX),
        }
    }

    /// One place in the signed-in user's budget of things followed over all their sockets on
    /// this instance (`TIDINGS_MAX_SUBSCRIPTIONS_PER_USER`), held until the slot is dropped;
    /// `Ok(None)` for an anonymous connection (bounded by `follows_budget` and the per-address
    /// cap instead) and with limits off. `Err`: the budget is spent (the message says so).
    pub(crate) fn subscription_slot(&self) -> Result<Option<SubscriptionSlot>, String> {
        let Some(user) = self.viewer.as_ref().and_then(Viewer::user) else {
            return Ok(None);
        };
        let config = &self.state.config;
        if config.rate_limits == "off" {
            return Ok(None);
        }
        let max = config.max_subscriptions_per_user;
        match self.state.connections.hold_subscription(&user.id, max) {
            Some(slot) => Ok(Some(slot)),
            None => {
                crate::metrics::subscription_refused("user");
                Err(format!(
                    "at most {max} subscriptions and channels at once for one user"
                ))
            }
        }
    }

    /// Signs the connection in as the token's user, or anonymous without a token (and without
    /// `only`, the user a path names, which the token's must be). A user's connection counts
    /// for presence, within the per-user limit, while it lives.
    pub(crate) async fn sign_in(
        &mut self,
        token: Option<&str>,
        only: Option<&str>,
    ) -> Result<&Viewer, Refused> {
        let domain = &self.state.domain;
        let Some(token) = token else {
            return match only {
                Some(_) => Err(Refused::Token("a token is required".into())),
                None => Ok(self.viewer.insert(Viewer::Anonymous)),
            };
        };
        let signed_in = match domain.sign_in(token).await {
            Ok(signed_in) => signed_in,
            Err(ViewerError::Domain(e @ DomainError::Internal(_))) => {
                tracing::warn!(error = %e, "could not sign a token in");
                return Err(Refused::Internal);
            }
            Err(e) => {
                tracing::debug!(error = %e, "token refused");
                return Err(Refused::Token(e.to_string()));
            }
        };
        if only.is_some_and(|only| only != signed_in.user.id) {
            return Err(Refused::Token("not this path's user".into()));
        }
        match domain.open_connection(&signed_in.user).await {
            Ok(guard) => self._presence = Some(guard),
            Err(DomainError::TooManyConnections) => return Err(Refused::TooMany),
            Err(e) => {
                tracing::warn!(error = %e, "presence: could not count a connection");
                return Err(Refused::Internal);
            }
        }
        let connections = &self.state.connections;
        self._watch =
            Some(connections.watch_user(&signed_in.user.id, self.id, self.transport, &self.out));
        self.admission.signed_in();
        Ok(self.viewer.insert(signed_in.viewer))
    }
}

/// The token an upgrade request carries: `Authorization: Bearer`, else `?token=` (browsers
/// cannot set headers on a WebSocket).
pub(crate) fn upgrade_token(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned)
        .or_else(|| query.get("token").cloned())
}

/// Accepts the upgrade with buffers sized for small frames, within the connection budgets
/// (refused with 503 or 429 before anything is upgraded); the connection runs as a task of its
/// own, so axum's upgrade task (and what it holds) ends. `headers` are the upgrade request's;
/// `signs_in_as_it_opens`: the connection signs in with a token as it opens, so it does not
/// count under its client's address (see the top of this file).
pub(crate) fn accept<P: Protocol>(
    ws: Upgrade,
    state: AppState,
    headers: &HeaderMap,
    signs_in_as_it_opens: bool,
    opening: P::Opening,
) -> Response {
    let address = client::peer()
        .map(|peer| client::client_address(peer.ip(), headers, &state.config.trusted_proxies));
    let admission = match admit(&state, address, signs_in_as_it_opens) {
        Ok(admission) => admission,
        Err(refusal) => return refusal.into_response(),
    };
    let max = state.config.max_frame_bytes;
    ws.on_upgrade(max, move |reader, writer| async move {
        let connection = serve::<P>(Box::new(Opened {
            stream: reader,
            sink: writer,
            state,
            opening,
            admission,
        }));
        // What every open connection holds in its task, whatever it does: PERFORMANCE.md's
        // idle memory starts here.
        static SIZED: std::sync::Once = std::sync::Once::new();
        SIZED.call_once(|| {
            let bytes = std::mem::size_of_val(&connection);
            tracing::debug!(
                bytes,
                reader = std::mem::size_of::<Reader>(),
                link = std::mem::size_of::<Link>(),
                protocol = std::mem::size_of::<P>(),
                transport = ?P::TRANSPORT,
                "connection future"
            );
        });
        tokio::spawn(connection);
    })
}

/// A place within the connection budgets for a request (a WebSocket upgrade, an HTTP stream)
/// of a client at `address`, or the refusal to answer it with (503 or 429, counted).
pub(crate) fn admit(
    state: &AppState,
    address: Option<IpAddr>,
    signs_in_as_it_opens: bool,
) -> Result<Admission, UpgradeRefused> {
    let config = &state.config;
    let per_address = (config.rate_limits != "off" && !signs_in_as_it_opens)
        .then_some(config.max_anonymous_per_address);
    state
        .connections
        .admit(address, config.max_connections, per_address)
        .inspect_err(|refusal| tracing::debug!(?address, ?refusal, "connection refused"))
}

/// What a connection starts from, once upgraded.
struct Opened<P: Protocol> {
    stream: Reader,
    sink: Writer,
    state: AppState,
    opening: P::Opening,
    admission: Admission,
}

/// One connection, from its upgrade to its close.
///
/// Every open connection is this future, so what it keeps across its awaits is what an idle
/// connection costs (PERFORMANCE.md, "Memory of an idle subscription"); its shape follows from
/// that. Its start comes boxed and is unpacked by a plain function (`start`), so neither the
/// box nor the moved-out parts stay in the future; the opened protocol is bound inside a block
/// of its own, so the result it came in does not stay beside it; and the reader is lent to
/// `read_loop`, not moved into it (an async fn's argument is kept twice: as passed and as
/// bound).
async fn serve<P: Protocol>(opened: Box<Opened<P>>) {
    let (ticket, writer, mut link, mut stream, opening) = start(opened);
    let end = 'run: {
        let mut protocol = {
            // Boxed: opening runs once, and its future need not stay part of every connection.
            let opened = Box::pin(P::open(&mut link, opening)).await;
            match opened {
                Ok(protocol) => protocol,
                Err(end) => break 'run end,
            }
        };
        // What the protocol runs stops (with `protocol`, at the block's end) before the
        // connection is counted out.
        read_loop(&mut protocol, &mut link, &mut stream).await
    };
    drop(stream);
    let domain = link.state.domain.clone();
    drop(link);
    match &end {
        End::Gone => tracing::debug!(connection = ticket.id, "WebSocket closed by the peer"),
        End::Close(code, reason) | End::CloseNow(code, reason) => {
            tracing::debug!(connection = ticket.id, code, reason, "closing WebSocket")
        }
    }
    Box::pin(writer.finish(end)).await;
    domain.connection_closed(ticket.id);
    drop(ticket);
}

/// A connection's parts, from its boxed start (which this frees as it returns).
#[allow(clippy::boxed_local, clippy::type_complexity)]
fn start<P: Protocol>(
    opened: Box<Opened<P>>,
) -> (ConnectionTicket, SocketWriter, Link, Reader, P::Opening) {
    let Opened {
        stream,
        sink,
        state,
        opening,
        admission,
    } = *opened;
    let ticket = state.connections.open(P::TRANSPORT);
    let (writer, out) = SocketWriter::start(
        sink,
        state.config.ws_queue,
        state.config.slow_consumer_timeout,
        P::TRANSPORT,
    );
    let link = Link::new(state, &ticket, out, admission);
    (ticket, writer, link, stream, opening)
}

/// What woke a connection's reader.
enum Wake {
    Read(Option<Result<Incoming, ReadError>>),
    Timer,
    Shutdown,
    Attention(End),
    Background,
    /// Boxed: renewals are rare, and a `Viewer` would make every wake-up as large.
    Renewed(Box<Viewer>),
}

/// Reads frames and hands them to the protocol, and keeps the connection's deadlines, until
/// the connection ends.
///
/// It waits on everything at once, and only then handles what woke it: what the wait holds
/// (the waiting futures and the `select!`'s own state) is then never kept while a handler
/// awaits, so an idle connection holds the larger of the two, not both.
async fn read_loop<P: Protocol>(protocol: &mut P, link: &mut Link, stream: &mut Reader) -> End {
    let mut last_heard = Instant::now();
    let mut deadlines = Deadlines {
        ping: last_heard + link.state.config.ws_ping_interval,
        init: (link.viewer.is_none() && P::CLOSES.init_timeout.is_some())
            .then(|| last_heard + link.state.config.ws_init_timeout),
        expires: None,
        warn: None,
    };
    deadlines.token(link.viewer.as_ref(), link.state.config.token_warning);
    let timer = tokio::time::sleep_until(deadlines.next());
    tokio::pin!(timer);
    loop {
        let wake = tokio::select! {
            frame = stream.next() => Wake::Read(frame),
            () = &mut timer => Wake::Timer,
            _ = link.state.shutdown.cancelled() => Wake::Shutdown,
            end = link.out.attention(P::CLOSES.unauthorised.0) => Wake::Attention(end),
            () = protocol.background() => Wake::Background,
            viewer = link.renewals.changed() => Wake::Renewed(Box::new(viewer)),
        };
        match wake {
            Wake::Read(frame) => {
                last_heard = Instant::now();
                // A renewal that came first applies to this frame.
                if let Some(viewer) = link.renewals.take() {
                    renewed(protocol, link, viewer, &mut deadlines).await;
                }
                let end = match frame {
                    None => Some(End::Gone),
                    // Boxed: the handlers' database calls make large futures, which would
                    // otherwise stay part of every idle connection's read loop.
                    Some(Ok(Incoming::Text(text))) => Box::pin(protocol.on_text(link, &text)).await,
                    Some(Ok(Incoming::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => Box::pin(protocol.on_text(link, text)).await,
                        Err(_) => Some(End::Close(P::NOT_TEXT.0, P::NOT_TEXT.1.into())),
                    },
                    Some(Ok(Incoming::Ping(data))) => {
                        link.out.offer(Frame::Pong(data));
                        None
                    }
                    Some(Ok(Incoming::Pong)) => None,
                    // The peer closes: the close is answered with its own code, at once.
                    Some(Ok(Incoming::Close(code))) => {
                        Some(End::CloseNow(code.unwrap_or(1000), String::new()))
                    }
                    Some(Err(e)) => Some(read_error(e)),
                };
                if let Some(end) = end {
                    return end;
                }
                if deadlines.init.is_some() && link.viewer.is_some() {
                    deadlines.init = None;
                    deadlines.token(link.viewer.as_ref(), link.state.config.token_warning);
                }
            }
            Wake::Timer => {
                let now = Instant::now();
                if let (Some(at), Some((code, reason))) = (deadlines.init, P::CLOSES.init_timeout) {
                    if at <= now {
                        return End::Close(code, reason.into());
                    }
                }
                if deadlines.expires.is_some_and(|at| at <= now) {
                    return End::Close(P::CLOSES.unauthorised.0, "token expired".into());
                }
                if deadlines.warn.is_some_and(|at| at <= now) {
                    deadlines.warn = None;
                    if let Some(user) = link.viewer.as_ref().and_then(Viewer::user) {
                        let expires_at = user.expires_at;
                        Box::pin(protocol.token_expiring(link, expires_at)).await;
                    }
                }
                if deadlines.ping <= now {
                    deadlines.ping = now + link.state.config.ws_ping_interval;
                    if last_heard.elapsed() > link.state.config.ws_idle_timeout {
                        return End::Close(1001, "ping timeout".into());
                    }
                    if let Some(keepalive) = protocol.keepalive(link) {
                        link.out.offer(Frame::text(keepalive));
                    }
                    // A WebSocket ping too: browsers answer it without any code of ours.
                    link.out.offer(Frame::Ping);
                }
            }
            Wake::Shutdown => return End::Close(1001, "server shutting down".into()),
            Wake::Attention(end) => return end,
            Wake::Background => {}
            Wake::Renewed(viewer) => renewed(protocol, link, *viewer, &mut deadlines).await,
        }
        deadlines.arm(timer.as_mut());
    }
}

/// The connection's credentials were renewed: its expiry timer moves to the new token's, and
/// its protocol checks again what it follows.
async fn renewed<P: Protocol>(
    protocol: &mut P,
    link: &mut Link,
    viewer: Viewer,
    deadlines: &mut Deadlines,
) {
    link.viewer = Some(viewer);
    deadlines.token(link.viewer.as_ref(), link.state.config.token_warning);
    Box::pin(protocol.renewed(link)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("an address"))
    }

    #[test]
    fn socket_loads_report_the_deepest_queues_first_within_the_cap() {
        let connections = Arc::new(Connections::default());
        let style = BodyStyle {
            keepalive: "",
            epilogue: "",
        };
        let mut held = Vec::new();
        // Queue depths 0..6 for users u0..u5, and a second socket of u5 with depth 2.
        for (n, depth) in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (5, 2)] {
            let (writer, outbox, body) =
                SocketWriter::start_body(16, Duration::from_secs(5), Transport::Sse, style);
            for _ in 0..depth {
                outbox.offer(Frame::Text(Bytes::from_static(b"x")));
            }
            let watch = connections.watch_user(&format!("u{n}"), n, Transport::Sse, &outbox);
            held.push((writer, outbox, body, watch));
        }
        let (loads, all) = connections.socket_loads(3);
        assert_eq!(all, 7, "every signed-in socket is counted");
        let got: Vec<(&str, u64)> = loads
            .iter()
            .map(|l| (l.user_id.as_str(), l.queued))
            .collect();
        assert_eq!(got, [("u5", 5), ("u4", 4), ("u3", 3)]);
        assert!(loads.iter().all(|l| l.transport == "sse"));
        // Equal depths: by user id.
        let (loads, _) = connections.socket_loads(6);
        let got: Vec<(&str, u64)> = loads
            .iter()
            .map(|l| (l.user_id.as_str(), l.queued))
            .collect();
        assert_eq!(
            got,
            [
                ("u5", 5),
                ("u4", 4),
                ("u3", 3),
                ("u2", 2),
                ("u5", 2),
                ("u1", 1)
            ]
        );
        let (loads, all) = connections.socket_loads(0);
        assert!(loads.is_empty());
        assert_eq!(all, 7);
    }

    #[test]
    fn admission_caps_the_total_and_each_address_until_sign_in() {
        let connections = Arc::new(Connections::default());
        let a = connections.admit(ip("192.0.2.1"), 3, Some(1));
        let mut a = a.expect("first of its address");
        let refused = connections.admit(ip("192.0.2.1"), 3, Some(1)).err();
        assert_eq!(refused, Some(UpgradeRefused::AddressFull));
        // An IPv6 client holds its /64.
        let _b = connections.admit(ip("2001:db8::1"), 3, Some(1)).ok();
        let refused = connections.admit(ip("2001:db8::2"), 3, Some(1)).err();
        assert_eq!(refused, Some(UpgradeRefused::AddressFull));
        // Signed in, a socket no longer counts under its address, but still in the total.
        a.signed_in();
        let _c = connections.admit(ip("192.0.2.1"), 3, Some(1)).ok();
        let refused = connections.admit(ip("192.0.2.9"), 3, Some(1)).err();
        assert_eq!(refused, Some(UpgradeRefused::ServerFull));
        drop(a);
        assert!(connections.admit(None, 3, Some(1)).is_ok(), "a place freed");
        assert_eq!(connections.admitted.load(Ordering::SeqCst), 2);
        assert_eq!(connections.lock_anonymous().len(), 2);
    }

    #[test]
    fn a_users_subscription_budget_is_given_back_with_its_slots() {
        let connections = Arc::new(Connections::default());
        let held: Vec<_> = (0..2)
            .map(|_| connections.hold_subscription("alice", 2))
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert!(connections.hold_subscription("alice", 2).is_none());
        assert!(
            connections.hold_subscription("bob", 2).is_some(),
            "per user"
        );
        drop(held);
        assert!(connections.hold_subscription("alice", 2).is_some());
        assert!(connections.lock_subscriptions().is_empty(), "nothing kept");
    }
}
