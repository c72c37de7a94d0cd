//! What every WebSocket transport shares: the count of open connections (shutdown waits for
//! it), the writer task each connection hands its frames to through a bounded queue, the
//! slow-consumer cut-off, and how a connection ends.
//!
//! A connection is a reader (the task that owns the socket's read half and the transport's
//! state) and a writer task. Frames go to the writer through an `Outbox`; the reader ends the
//! connection by handing an `End` to `SocketWriter::finish`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use chrono::{DateTime, Utc};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Viewer;
use crate::metrics::Transport;

/// Read-buffer chunk: frames here are small, and tungstenite's 128 KiB default would be
/// zero-filled and then resident for every socket.
const READ_BUFFER: usize = 4 * 1024;
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
    by_user: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
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

    /// Records that connection `id` is `user_id`'s, so `disconnect_user` reaches it, until the
    /// returned watch is dropped.
    pub(crate) fn watch_user(self: &Arc<Self>, user_id: &str, id: u64) -> UserWatch {
        let kicked = CancellationToken::new();
        self.lock_users()
            .entry(user_id.to_owned())
            .or_default()
            .insert(id, kicked.clone());
        UserWatch {
            connections: self.clone(),
            user_id: user_id.to_owned(),
            id,
            kicked,
        }
    }

    fn lock_users(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, CancellationToken>>> {
        self.by_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes every connection of `user_id` on this instance; returns how many.
    pub fn disconnect_user(&self, user_id: &str) -> usize {
        let users = self.lock_users();
        let Some(tokens) = users.get(user_id) else {
            return 0;
        };
        tokens.values().for_each(CancellationToken::cancel);
        tokens.len()
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
    /// Cancelled when an admin disconnects the user.
    pub(crate) kicked: CancellationToken,
}

impl Drop for UserWatch {
    fn drop(&mut self) {
        let mut users = self.connections.lock_users();
        if let Some(mine) = users.get_mut(&self.user_id) {
            mine.remove(&self.id);
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

/// Where a connection's producers put frames for the writer.
#[derive(Clone)]
pub(crate) struct Outbox {
    queue: mpsc::Sender<Outbound>,
    /// Cancelled by a producer that found the queue full for too long.
    slow: CancellationToken,
    /// How long "too long" is.
    slow_after: Duration,
    transport: Transport,
}

impl Outbox {
    /// Queues a control-plane frame (an ack, a pong, a keep-alive); one that does not fit is
    /// dropped, as the peer is not reading.
    pub(crate) fn offer(&self, message: Message) {
        let _ = self.queue.try_send(Outbound {
            message,
            event: None,
        });
    }

    /// Queues a frame, waiting a bounded time for room; false when the connection is ending
    /// (closed, or a slow consumer now).
    pub(crate) async fn push(&self, text: String, event: Option<EventStamp>) -> bool {
        let frame = Outbound {
            message: Message::Text(Utf8Bytes::from(text)),
            event,
        };
        match self.queue.send_timeout(frame, self.slow_after).await {
            Ok(()) => true,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                if !self.slow.is_cancelled() {
                    crate::metrics::slow_consumer(self.transport);
                }
                self.slow.cancel();
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
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
        match self.queue.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.slow.is_cancelled() {
                    crate::metrics::slow_consumer(self.transport);
                }
                self.slow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Resolves once a producer gave up on a full queue: the reader then closes with 1008.
    pub(crate) async fn stalled(&self) {
        self.slow.cancelled().await
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

/// What the writer is told besides data frames.
enum Control {
    /// Close now, dropping queued frames.
    CloseNow(CloseFrame),
    /// Close after the queued frames are written.
    CloseAfterQueue(CloseFrame),
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.to_owned()),
    }
}

/// A connection's writer task, owned by its reader, which ends it with `finish`.
pub(crate) struct SocketWriter {
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
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
        let (queue_tx, queue_rx) = mpsc::channel(queue.max(1));
        // Two: the reader sends one close, ever; the spare keeps that send from waiting.
        let (control, control_rx) = mpsc::channel(2);
        let task = tokio::spawn(write_loop(sink, queue_rx, control_rx, transport));
        let outbox = Outbox {
            queue: queue_tx,
            slow: CancellationToken::new(),
            slow_after,
            transport,
        };
        (Self { control, task }, outbox, stream)
    }

    /// Closes as `end` says and waits for the writer to finish. Producers still holding an
    /// `Outbox` should be stopped first: the writer writes what they queued before a
    /// `Close`, for at most a few seconds.
    pub(crate) async fn finish(self, end: End) {
        let _ = match end {
            End::Gone => Ok(()),
            End::Close(code, reason) => {
                self.control
                    .send(Control::CloseAfterQueue(close_frame(code, &reason)))
                    .await
            }
            End::CloseNow(code, reason) => {
                self.control
                    .send(Control::CloseNow(close_frame(code, &reason)))
                    .await
            }
        };
        drop(self.control);
        let _ = self.task.await;
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut data: mpsc::Receiver<Outbound>,
    mut control: mpsc::Receiver<Control>,
    transport: Transport,
) {
    let mut data_open = true;
    loop {
        tokio::select! {
            biased;
            c = control.recv() => {
                let frame = match c {
                    Some(Control::CloseNow(frame)) => frame,
                    Some(Control::CloseAfterQueue(frame)) => {
                        // Queued frames first, but never wait long on a peer that stopped
                        // reading.
                        let drain = async {
                            while let Some(out) = data.recv().await {
                                if !write(&mut sink, out, &mut data, transport).await {
                                    return false;
                                }
                            }
                            true
                        };
                        match tokio::time::timeout(DRAIN_BEFORE_CLOSE, drain).await {
                            Ok(true) => frame,
                            _ => break,
                        }
                    }
                    None => break,
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                break;
            }
            d = data.recv(), if data_open => match d {
                Some(out) => {
                    if !write(&mut sink, out, &mut data, transport).await {
                        break;
                    }
                }
                None => data_open = false,
            },
        }
    }
    let _ = sink.close().await;
}

/// Frames written together before one flush: under fan-out a socket's queue holds many, and
/// one write system call for all of them costs far less than one each.
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once;
/// false when the socket is gone.
async fn write(
    sink: &mut SplitSink<WebSocket, Message>,
    first: Outbound,
    queue: &mut mpsc::Receiver<Outbound>,
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
            next = queue.try_recv().ok();
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

pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resolves when `token` is cancelled; never without one.
pub(crate) async fn cancelled_opt(token: Option<CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}
