//! What every WebSocket transport shares: the count of open connections (shutdown waits for
//! it), the writer task each connection hands its frames to through a bounded queue, the
//! slow-consumer cut-off, and how a connection ends.
//!
//! A connection is a reader (the task that owns the socket's read half and the transport's
//! state) and a writer task. Frames go to the writer through an `Outbox`; the reader ends the
//! connection by handing an `End` to `SocketWriter::finish`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use chrono::{DateTime, Utc};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::Viewer;
use crate::metrics::Transport;

/// Read-buffer chunk: frames from clients are small, and the buffer stays allocated for the
/// connection's life (tungstenite's 128 KiB default would be zero-filled and then resident for
/// every socket); a larger frame grows it to the frame's size.
const READ_BUFFER: usize = 512;
const WRITE_BUFFER: usize = 8 * 1024;
/// How long queued frames may take to drain before a close goes out regardless.
const DRAIN_BEFORE_CLOSE: Duration = Duration::from_secs(5);

/// Sizes a socket's buffers for small frames and caps what a client may send (`max_bytes`:
/// larger closes with 1009).
pub(crate) fn sized(ws: WebSocketUpgrade, max_bytes: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max_bytes)
        .max_frame_size(max_bytes)
}

/// Open WebSocket connections, so shutdown can wait for them to close, and by user, so an
/// admin can disconnect one.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    next_id: AtomicU64,
    closed: Notify,
    /// Each signed-in user's connections here, by connection id.
    by_user: Mutex<HashMap<String, Vec<(u64, Outbox)>>>,
}

impl Connections {
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
        outbox: &Outbox,
    ) -> UserWatch {
        self.lock_users()
            .entry(user_id.to_owned())
            .or_default()
            .push((id, outbox.clone()));
        UserWatch {
            connections: self.clone(),
            user_id: user_id.to_owned(),
            id,
        }
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(u64, Outbox)>>> {
        self.by_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes every connection of `user_id` on this instance; returns how many.
    pub fn disconnect_user(&self, user_id: &str) -> usize {
        let users = self.lock_users();
        let Some(connections) = users.get(user_id) else {
            return 0;
        };
        for (_, outbox) in connections {
            outbox.0.attend(|state| state.kicked = true);
        }
        connections.len()
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
            mine.retain(|(id, _)| *id != self.id);
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
    message: Message,
    event: Option<EventStamp>,
}

/// A connection's bounded queue of frames for its writer, and the close its reader asks for.
///
/// Written here rather than taken from `tokio::sync::mpsc`: a bounded mpsc channel allocates
/// a block of 32 slots when it is made (about 2.5 KiB at this frame size), and a second
/// channel for the close would add as much again, for every connection, idle or not. This
/// queue holds frames only while they wait, gives the memory back once a burst has drained,
/// and carries the close in the same lock.
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the writer: a frame or a close was queued (one waiter, so a permit is kept).
    ready: Notify,
    /// Wakes producers waiting for room.
    room: Notify,
    /// Wakes the reader: a producer gave up on a full queue, or an admin disconnected the user.
    attention: Notify,
    capacity: usize,
    slow_after: Duration,
    transport: Transport,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Outbound>,
    close: Option<Control>,
    /// The writer has stopped: nothing more will be written.
    writer_gone: bool,
    /// A producer found the queue full for too long.
    slow: bool,
    /// An administrator disconnected the user.
    kicked: bool,
}

/// A drained queue keeps at most this many slots allocated.
const QUEUE_KEEP: usize = 64;

enum Enqueue {
    Queued,
    Full(Outbound),
    Closed,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, frame: Outbound) -> Enqueue {
        {
            let mut state = self.lock();
            if state.writer_gone || state.close.is_some() {
                return Enqueue::Closed;
            }
            if state.frames.len() >= self.capacity {
                return Enqueue::Full(frame);
            }
            state.frames.push_back(frame);
        }
        self.ready.notify_one();
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
        let (frame, was_full) = {
            let mut state = self.lock();
            let was_full = state.frames.len() >= self.capacity;
            let frame = state.frames.pop_front();
            if state.frames.is_empty() && state.frames.capacity() > QUEUE_KEEP {
                state.frames = VecDeque::new();
            }
            (frame, was_full)
        };
        if was_full && frame.is_some() {
            self.room.notify_waiters();
        }
        frame
    }

    /// What the writer does next: a close the reader asked for comes before queued frames.
    async fn next(&self) -> Next {
        loop {
            let ready = self.ready.notified();
            {
                let mut state = self.lock();
                // An idle connection keeps no slots.
                if state.frames.is_empty() && state.frames.capacity() > 0 && state.close.is_none() {
                    state.frames = VecDeque::new();
                }
                match state.close.take() {
                    Some(Control::CloseNow(frame)) => {
                        state.frames = VecDeque::new();
                        return Next::CloseNow(frame);
                    }
                    Some(Control::CloseAfterQueue(frame)) => return Next::CloseAfterQueue(frame),
                    Some(Control::Gone) => return Next::Gone,
                    None => {}
                }
            }
            if let Some(frame) = self.try_pop() {
                return Next::Frame(frame);
            }
            ready.await;
        }
    }

    fn set_close(&self, control: Control) {
        self.lock().close.get_or_insert(control);
        self.ready.notify_one();
        self.room.notify_waiters();
    }
}

/// What the writer is to do next.
enum Next {
    Frame(Outbound),
    CloseNow(CloseFrame),
    CloseAfterQueue(CloseFrame),
    Gone,
}

/// Where a connection's producers put frames for the writer.
#[derive(Clone)]
pub(crate) struct Outbox(Arc<Queue>);

impl Outbox {
    /// Queues a control-plane frame (an ack, a pong, a keep-alive); one that does not fit is
    /// dropped, as the peer is not reading.
    pub(crate) fn offer(&self, message: Message) {
        let _ = self.0.enqueue(Outbound {
            message,
            event: None,
        });
    }

    /// Queues a frame, waiting a bounded time for room; false when the connection is ending
    /// (closed, or a slow consumer now).
    pub(crate) async fn push(&self, text: String, event: Option<EventStamp>) -> bool {
        let queue = &self.0;
        let mut frame = Outbound {
            message: Message::Text(Utf8Bytes::from(text)),
            event,
        };
        let deadline = Instant::now() + queue.slow_after;
        loop {
            let room = queue.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match queue.enqueue(frame) {
                Enqueue::Queued => return true,
                Enqueue::Closed => return false,
                Enqueue::Full(back) => frame = back,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                queue.mark_slow();
                return false;
            }
        }
    }

    /// Queues a frame without waiting: a full queue makes the connection a slow consumer at
    /// once (for fan-out, where one member must never hold up the others). False when the
    /// frame was not queued.
    pub(crate) fn try_push(&self, text: String, event: Option<EventStamp>) -> bool {
        let frame = Outbound {
            message: Message::Text(Utf8Bytes::from(text)),
            event,
        };
        match self.0.enqueue(frame) {
            Enqueue::Queued => true,
            Enqueue::Full(_) => {
                self.0.mark_slow();
                false
            }
            Enqueue::Closed => false,
        }
    }

    /// Resolves once the reader must close: a producer gave up on a full queue (close with
    /// 1008), or an administrator disconnected the user.
    pub(crate) async fn attention(&self) -> Attention {
        loop {
            let attention = self.0.attention.notified();
            {
                let state = self.0.lock();
                if state.slow {
                    return Attention::Slow;
                }
                if state.kicked {
                    return Attention::Kicked;
                }
            }
            attention.await;
        }
    }
}

/// Why a reader must close, from `Outbox::attention`.
pub(crate) enum Attention {
    /// A slow consumer.
    Slow,
    /// Disconnected by an administrator.
    Kicked,
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

/// What the reader tells the writer besides data frames.
enum Control {
    /// Close now, dropping queued frames.
    CloseNow(CloseFrame),
    /// Close after the queued frames are written.
    CloseAfterQueue(CloseFrame),
    /// The peer is gone: stop without a close frame.
    Gone,
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.to_owned()),
    }
}

/// A connection's writer task, owned by its reader, which ends it with `finish`.
pub(crate) struct SocketWriter {
    queue: Arc<Queue>,
    task: Option<JoinHandle<()>>,
}

impl SocketWriter {
    /// Splits the socket and starts its writer, with a queue of `queue` frames.
    pub(crate) fn start(
        socket: WebSocket,
        queue: usize,
        slow_after: Duration,
        transport: Transport,
    ) -> (Self, Outbox, SplitStream<WebSocket>) {
        let (sink, stream) = socket.split();
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            ready: Notify::new(),
            room: Notify::new(),
            attention: Notify::new(),
            capacity: queue.max(1),
            slow_after,
            transport,
        });
        let task = tokio::spawn(write_loop(sink, queue.clone()));
        let writer = Self {
            queue: queue.clone(),
            task: Some(task),
        };
        (writer, Outbox(queue), stream)
    }

    /// Closes as `end` says and waits for the writer to finish. Producers still holding an
    /// `Outbox` should be stopped first: the writer writes what they queued before a
    /// `Close`, for at most a few seconds.
    pub(crate) async fn finish(mut self, end: End) {
        self.queue.set_close(match end {
            End::Gone => Control::Gone,
            End::Close(code, reason) => Control::CloseAfterQueue(close_frame(code, &reason)),
            End::CloseNow(code, reason) => Control::CloseNow(close_frame(code, &reason)),
        });
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SocketWriter {
    /// A reader that ends without `finish` still stops its writer.
    fn drop(&mut self) {
        self.queue.set_close(Control::Gone);
    }
}

/// Marks the queue's writer gone when the writer stops, however it stops.
struct WriterGone(Arc<Queue>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        {
            let mut state = self.0.lock();
            state.writer_gone = true;
            state.frames = VecDeque::new();
        }
        self.0.room.notify_waiters();
    }
}

async fn write_loop(mut sink: SplitSink<WebSocket, Message>, queue: Arc<Queue>) {
    let _gone = WriterGone(queue.clone());
    let transport = queue.transport;
    loop {
        match queue.next().await {
            Next::Frame(out) => {
                if !write(&mut sink, out, &queue, transport).await {
                    break;
                }
            }
            Next::CloseNow(frame) => {
                let _ = sink.send(Message::Close(Some(frame))).await;
                break;
            }
            Next::CloseAfterQueue(frame) => {
                // Boxed, as a close happens once: not kept in every connection's writer.
                Box::pin(close_after_queue(&mut sink, &queue, frame)).await;
                break;
            }
            Next::Gone => break,
        }
    }
    let _ = sink.close().await;
}

/// Writes what is queued, then the close; but never waits long on a peer that stopped reading.
async fn close_after_queue(
    sink: &mut SplitSink<WebSocket, Message>,
    queue: &Queue,
    frame: CloseFrame,
) {
    let drain = async {
        while let Some(out) = queue.try_pop() {
            if !write(sink, out, queue, queue.transport).await {
                return false;
            }
        }
        true
    };
    if let Ok(true) = tokio::time::timeout(DRAIN_BEFORE_CLOSE, drain).await {
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
}

/// Frames written together before one flush: under fan-out a socket's queue holds many, and
/// one write system call for all of them costs far less than one each.
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once;
/// false when the socket is gone.
async fn write(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Outbound,
    queue: &Queue,
    transport: Transport,
) -> bool {
    let mut written: Vec<EventStamp> = Vec::new();
    let mut next = Some(first);
    let mut count = 0;
    while let Some(out) = next.take() {
        if sink.feed(out.message).await.is_err() {
            return false;
        }
        written.extend(out.event);
        count += 1;
        if count < WRITE_BATCH {
            next = queue.try_pop();
        }
    }
    if sink.flush().await.is_err() {
        return false;
    }
    for event in written {
        crate::metrics::frame_written(transport, event.kind, event.created);
    }
    true
}

/// How to close after a read error: 1009 for a message over the size limit.
pub(crate) fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::CloseNow(1009, "message too big".into()),
        _ => End::Gone,
    }
}

/// When the viewer's token expires (live sockets close then); never for anonymous viewers.
pub(crate) fn token_expiry(viewer: Option<&Viewer>) -> Option<Instant> {
    let user = viewer?.user()?;
    let left = user.expires_at - Utc::now().timestamp();
    Some(Instant::now() + Duration::from_secs(left.max(0) as u64))
}

/// A connection's one timer: the next of its deadlines (keep-alive ping, initialisation
/// timeout, token expiry). One `Sleep`, moved as the deadlines change, instead of one per
/// deadline in every idle connection.
pub(crate) struct Deadlines {
    pub(crate) ping: Instant,
    pub(crate) init: Option<Instant>,
    pub(crate) expires: Option<Instant>,
}

impl Deadlines {
    pub(crate) fn next(&self) -> Instant {
        [self.init, self.expires]
            .into_iter()
            .flatten()
            .fold(self.ping, Instant::min)
    }

    /// Moves `timer` to the next deadline, if that changed.
    pub(crate) fn arm(&self, timer: std::pin::Pin<&mut tokio::time::Sleep>) {
        let next = self.next();
        if timer.deadline() != next {
            timer.reset(next);
        }
    }
}
