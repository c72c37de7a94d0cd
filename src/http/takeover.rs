//! HTTP streams leave hyper once their response head is ready.
//!
//! An HTTP/1 connection served by hyper keeps two 8 KiB buffers (the read buffer and the
//! write buffer of response heads) and its connection future for its whole life. That is the
//! right trade for requests that come and go, and most of what an idle SSE or multipart
//! subscription would cost: it stays open for hours and writes a few bytes now and then.
//! hyper hands a connection back only on a `101 Switching Protocols`, which a stream's `200`
//! is not, so the connection is taken from under it instead:
//!
//! - `Listener` accepts TCP connections as `PeerIo`, a socket that can be taken out of hyper's
//!   hands, and `Peer` (the connection's `ConnectInfo`) carries the handle that takes it.
//! - `take_streams` (the outermost middleware) looks at each response. A stream's response
//!   (marked with `StreamResponse`) to an HTTP/1.1 request takes the socket and writes the
//!   response itself, chunked, from a task of its own; hyper gets an empty response whose
//!   write fails on the taken socket, so it ends the connection and frees what it held.
//!   Any other response (and every response on HTTP/2, whose connection other streams share)
//!   goes through hyper as usual.
//! - A WebSocket takes the socket too, once hyper has answered its upgrade (`Peer::take_socket`,
//!   from `websocket.rs`): its frames then go straight to the TCP stream's own halves.
//!
//! The writer holds no buffer while idle: each batch of frames is one chunk, written as it
//! comes. It reads the socket only to notice that the client went away, into a small stack
//! buffer; a client that stops reading is cut once a write has waited for the slow-consumer
//! timeout, as a socket's writer is.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, Response, StatusCode, Version};
use axum::middleware::Next;
use axum::serve::IncomingStream;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

/// Accepts TCP connections as `PeerIo`, each closed once it has sent nothing for `idle_after`
/// while hyper waits to read from it.
pub struct Listener {
    listener: TcpListener,
    idle_after: Duration,
}

impl Listener {
    pub fn new(listener: TcpListener, idle_after: Duration) -> Self {
        Listener {
            listener,
            idle_after,
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = PeerIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (PeerIo, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let socket = Arc::new(Mutex::new(Some(stream)));
                    let io = PeerIo {
                        socket,
                        idle: None,
                        idle_after: self.idle_after,
                        heard: true,
                    };
                    return (io, addr);
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors, most likely: accepting again at once would spin.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

type Socket = Arc<Mutex<Option<TcpStream>>>;

/// A connection's socket as hyper sees it: the TCP stream, until a stream's response takes it.
/// Then reads end and writes fail, and hyper closes its side of the connection.
///
/// hyper (as `axum::serve` runs it) closes no connection for being idle, and waits as long as
/// a client likes for a request's head: each open connection holds hyper's buffers (about
/// 20 KiB, PERFORMANCE.md), so a client could hold thousands without sending anything. A read
/// that finds nothing arms a timer, which each byte read disarms; a read still waiting
/// `idle_after` later fails with `TimedOut`, and hyper closes the connection. The time a
/// request takes to answer counts too (hyper reads on while it answers, to notice a client
/// that leaves), which the request's own budget (`TIDINGS_GRAPHQL_TIMEOUT`) keeps far shorter.
pub struct PeerIo {
    socket: Socket,
    /// The idle timer, made by the first read that waits.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    idle_after: Duration,
    /// Bytes came since the timer was last armed: the next read that waits arms it again.
    heard: bool,
}

impl PeerIo {
    fn socket(&self) -> MutexGuard<'_, Option<TcpStream>> {
        // A panic while the lock was held left the stream as it was: keep using it.
        self.socket.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn taken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "taken by an HTTP stream")
}

impl AsyncRead for PeerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = match self.socket().as_mut() {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            None => return Poll::Ready(Ok(())),
        };
        if read.is_ready() {
            self.heard = true;
            return read;
        }
        let this = &mut *self;
        let deadline = tokio::time::Instant::now() + this.idle_after;
        let timer = this
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut this.heard) {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            crate::metrics::http_idle_closed();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle HTTP connection",
            )));
        }
        Poll::Pending
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.socket().as_mut() {
            Some(stream) => Pin::new(stream).poll_write(cx, buf),
            None => Poll::Ready(Err(taken())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.socket().as_mut() {
            Some(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(taken())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.socket().as_mut() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.socket().as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// A connection's `ConnectInfo`: the peer's address, and the handle that takes its socket.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    socket: Socket,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            socket: stream.io().socket.clone(),
        }
    }
}

impl Peer {
    /// Takes the connection's TCP stream from hyper (`None` if a stream's response took it
    /// already): hyper's reads then end and its writes fail. A WebSocket takes it once the
    /// upgrade is answered, so its frames go straight to the stream rather than through this
    /// lock and hyper's upgraded IO.
    pub(crate) fn take_socket(&self) -> Option<TcpStream> {
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Marks a response whose body is an HTTP stream (SSE or multipart), for `take_streams`.
#[derive(Clone, Copy)]
pub(crate) struct StreamResponse;

/// The writers of taken streams, so that shutdown waits for their last bytes.
#[derive(Clone)]
pub struct Writers {
    tasks: TaskTracker,
    /// How long one write may wait for a client that does not read.
    slow_after: Duration,
}

impl Writers {
    pub fn new(slow_after: Duration) -> Self {
        Writers {
            tasks: TaskTracker::new(),
            slow_after,
        }
    }

    /// Waits until every taken stream is written out (call once no more are taken).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Middleware, outermost: gives every request its peer's address as `ConnectInfo<SocketAddr>`,
/// and writes a stream's response on a socket taken from hyper (see the module's comment).
pub async fn take_streams(
    axum::extract::State(writers): axum::extract::State<Writers>,
    mut request: Request,
    next: Next,
) -> Response<Body> {
    let peer = request.extensions().get::<ConnectInfo<Peer>>().cloned();
    if let Some(ConnectInfo(peer)) = &peer {
        request.extensions_mut().insert(ConnectInfo(peer.addr));
    }
    let version = request.version();
    let response = next.run(request).await;
    let Some(ConnectInfo(peer)) = peer else {
        return response;
    };
    if version != Version::HTTP_11 || response.extensions().get::<StreamResponse>().is_none() {
        return response;
    }
    let Some(stream) = peer.take_socket() else {
        return response;
    };
    writers
        .tasks
        .spawn(write_stream(stream, response, writers.slow_after));
    // hyper's write of this fails on the taken socket, and it closes its side.
    let mut gone = Response::new(Body::empty());
    *gone.status_mut() = StatusCode::OK;
    gone
}

/// Writes `response` on `stream` as HTTP/1.1 with a chunked body, until the body ends, the
/// client goes away, or a write waits longer than `slow_after`; then closes the connection.
async fn write_stream(mut stream: TcpStream, response: Response<Body>, slow_after: Duration) {
    let (parts, body) = response.into_parts();
    let mut body = body.into_data_stream();
    let head = response_head(parts);
    if !write(&mut stream, &head, slow_after).await {
        return;
    }
    drop(head);
    loop {
        tokio::select! {
            data = body.next() => match data {
                Some(Ok(data)) => {
                    if data.is_empty() {
                        continue;
                    }
                    if !write(&mut stream, &chunk(&data), slow_after).await {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("stream body failed: {e}");
                    return;
                }
                None => break,
            },
            gone = client_gone(&stream) => if gone {
                return;
            },
        }
    }
    if write(&mut stream, b"0\r\n\r\n", slow_after).await {
        let _ = stream.shutdown().await;
    }
}

/// The response's status line and headers, for a chunked body on a connection that closes
/// after it. Takes the parts so that their headers are not kept while the stream lasts.
fn response_head(parts: axum::http::response::Parts) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    head
}

/// One chunk of a chunked body: its length in hex, the data, CRLF.
fn chunk(data: &[u8]) -> Vec<u8> {
    let size = format!("{:x}\r\n", data.len());
    let mut out = Vec::with_capacity(size.len() + data.len() + 2);
    out.extend_from_slice(size.as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes all of `bytes`; false when the client is gone or did not read for `slow_after`.
async fn write(stream: &mut TcpStream, bytes: &[u8], slow_after: Duration) -> bool {
    match tokio::time::timeout(slow_after, stream.write_all(bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        // Not counted here: a writer that waits this long leaves the connection's queue full,
        // and the queue's own rule counts the slow consumer and ends the subscriptions.
        Err(_) => false,
    }
}

/// Resolves true once the client closed its side (or the connection failed); what a client
/// sends on a stream's connection is read and dropped.
async fn client_gone(stream: &TcpStream) -> bool {
    let mut scratch = [0u8; 64];
    loop {
        if stream.readable().await.is_err() {
            return true;
        }
        match stream.try_read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
    }
}
