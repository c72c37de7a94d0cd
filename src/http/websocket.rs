//! The WebSocket itself (RFC 6455) under every socket transport: the upgrade, the read half
//! and the write half.
//!
//! **Why not axum's `WebSocket`**: it writes each message through tungstenite, which copies it
//! into its own buffer, so under fan-out every member's frame had to be a `String` of its own
//! (`{"id":…,"type":"next","payload":` + a copy of the shared payload + `}`), built and then
//! copied again. Here the upgrade is answered by this module, client frames are read by
//! `frames::Reader` (which holds no buffer while idle), and the server's frames are written by
//! hand on the write half: a server frame is unmasked,
//! so it is a two-to-ten-byte header and the bytes. A member's frame is then its own prefix,
//! the payload every member shares (one allocation per event, never copied in user space) and
//! a suffix, written as one WebSocket message with a vectored write; the frames queued for a
//! socket go out in one `writev`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::frames::Reader;
use super::takeover::Peer;

type Io = TokioIo<Upgraded>;

/// An upgraded connection's two sides. Once hyper has answered the upgrade, the TCP stream is
/// taken from under it (`takeover::Peer`): each side is then the stream's own half, read and
/// written without a lock, and nothing of hyper's stays behind. A server whose connections do
/// not come through `takeover::Listener` (a router driven in-process) keeps hyper's upgraded
/// IO, split in two.
enum Side<T, S> {
    Tcp(T),
    Hyper(S),
}

/// A socket's write half: frames are written to it by `write_frames`.
pub(crate) struct Writer(Side<OwnedWriteHalf, tokio::io::WriteHalf<Io>>);

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Side::Tcp(half) => Pin::new(half).poll_write(cx, buf),
            Side::Hyper(half) => Pin::new(half).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Side::Tcp(half) => Pin::new(half).poll_write_vectored(cx, bufs),
            Side::Hyper(half) => Pin::new(half).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            Side::Tcp(half) => half.is_write_vectored(),
            Side::Hyper(half) => half.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Side::Tcp(half) => Pin::new(half).poll_flush(cx),
            Side::Hyper(half) => Pin::new(half).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Side::Tcp(half) => Pin::new(half).poll_shutdown(cx),
            Side::Hyper(half) => Pin::new(half).poll_shutdown(cx),
        }
    }
}

/// The upgraded connection's two halves, and what hyper had read past the upgrade request
/// (a client may send its first frame without waiting for the `101`).
async fn halves(upgraded: Upgraded, peer: Option<Peer>) -> (ReadOnly, Writer, Vec<u8>) {
    let mut upgraded = TokioIo::new(upgraded);
    let mut part = Vec::new();
    if let Some(stream) = peer.as_ref().and_then(Peer::take_socket) {
        // With the stream taken, hyper's IO reads what it had buffered, then ends: never an
        // error, and never a wait.
        if let Err(e) = upgraded.read_to_end(&mut part).await {
            tracing::debug!(error = %e, "reading what hyper buffered failed");
        }
        let (read, write) = stream.into_split();
        return (ReadOnly::Tcp(read), Writer(Side::Tcp(write)), part);
    }
    let (read, write) = tokio::io::split(upgraded);
    (ReadOnly::Hyper(read), Writer(Side::Hyper(write)), part)
}

/// A request that asks for a WebSocket (HTTP/1.1 `GET` with `Connection: upgrade`,
/// `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a key), taken as an extractor.
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The subprotocols the client offers, in its order.
    offered: Vec<HeaderValue>,
    /// The one chosen by `protocols`.
    protocol: Option<HeaderValue>,
    /// The connection, whose TCP stream is taken once it is upgraded (see `Writer`).
    peer: Option<Peer>,
}

/// The request is not a WebSocket upgrade (each route answers that in its own words).
#[derive(Debug)]
pub(crate) struct NotAnUpgrade(&'static str);

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.version > Version::HTTP_11 || parts.method != Method::GET {
            return Err(NotAnUpgrade("a WebSocket opens with an HTTP/1.1 GET"));
        }
        if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotAnUpgrade("Connection: upgrade is missing"));
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotAnUpgrade("Upgrade: websocket is missing"));
        }
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotAnUpgrade("Sec-WebSocket-Version: 13 is missing"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(NotAnUpgrade("Sec-WebSocket-Key is missing"))?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAnUpgrade("the connection cannot be upgraded"))?;
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .filter_map(|name| HeaderValue::from_bytes(name.trim_ascii()).ok())
            .collect();
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| peer.clone());
        Ok(Upgrade {
            key,
            on_upgrade,
            offered,
            protocol: None,
            peer,
        })
    }
}

fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_contains(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(value.as_bytes()))
    })
}

impl Upgrade {
    /// Chooses the first of `supported` that the client offers.
    pub(crate) fn protocols(mut self, supported: &[&'static str]) -> Self {
        self.protocol = supported
            .iter()
            .find(|name| self.offered.iter().any(|o| o.as_bytes() == name.as_bytes()))
            .map(|name| HeaderValue::from_static(name));
        self
    }

    pub(crate) fn selected_protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    /// Answers `101 Switching Protocols`; once the connection is upgraded, `callback` gets its
    /// two halves (in a task of its own).
    /// A client message over `max_bytes` closes the socket with 1009.
    pub(crate) fn on_upgrade<C, F>(self, max_bytes: usize, callback: C) -> Response
    where
        C: FnOnce(Reader, Writer) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        let peer = self.peer;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade failed");
                    return;
                }
            };
            let (read, write, part) = halves(upgraded, peer).await;
            callback(Reader::new(read, part, max_bytes), write).await;
        });
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = self.protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
    }
}

/// The reading side of an upgraded connection.
pub(crate) enum ReadOnly {
    Tcp(OwnedReadHalf),
    Hyper(tokio::io::ReadHalf<Io>),
    #[cfg(test)]
    Test(tokio::io::ReadHalf<tokio::io::DuplexStream>),
}

impl ReadOnly {
    #[cfg(test)]
    pub(crate) fn from_test(read: tokio::io::ReadHalf<tokio::io::DuplexStream>) -> Self {
        ReadOnly::Test(read)
    }
}

impl AsyncRead for ReadOnly {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadOnly::Tcp(half) => Pin::new(half).poll_read(cx, buf),
            ReadOnly::Hyper(half) => Pin::new(half).poll_read(cx, buf),
            #[cfg(test)]
            ReadOnly::Test(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

/// A message on its way to a client.
pub(crate) enum Frame {
    /// A whole text message.
    Text(Bytes),
    /// A text message made of a member's own `prefix`, a `payload` that every member of a
    /// cohort shares (the same allocation) and a `suffix`: written as one message without
    /// joining the three.
    Shared {
        prefix: Bytes,
        payload: Bytes,
        suffix: &'static str,
    },
    Ping,
    Pong(Bytes),
    /// A close with its code and reason.
    Close(u16, String),
}

impl Frame {
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Frame::Text(Bytes::from(text.into()))
    }

    /// The message's text, in its parts (an HTTP stream writes them one after another).
    pub(crate) fn parts(&self) -> [&[u8]; 3] {
        match self {
            Frame::Text(text) => [text, b"", b""],
            Frame::Shared {
                prefix,
                payload,
                suffix,
            } => [prefix, payload, suffix.as_bytes()],
            Frame::Ping | Frame::Pong(_) | Frame::Close(..) => [b"", b"", b""],
        }
    }
}

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Appends an unmasked server frame header (RFC 6455 §5.2) for a final frame of `opcode`
/// carrying `len` bytes.
fn header(into: &mut Vec<u8>, opcode: u8, len: usize) {
    into.push(FIN | opcode);
    match len {
        0..=125 => into.push(len as u8),
        126..=0xFFFF => {
            into.push(126);
            into.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            into.push(127);
            into.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// A control frame's payload is at most 125 bytes: a close's reason is cut to fit (at a
/// character boundary).
fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// Where a frame's bytes are: copied into the batch's scratch buffer (headers, prefixes,
/// small frames) or a payload shared with other sockets, written where it lies.
enum Piece<'a> {
    Scratch(std::ops::Range<usize>),
    Shared(&'a [u8]),
}

/// Writes `frames` as WebSocket messages with vectored writes (one `writev` for the lot
/// while the socket takes it all).
pub(crate) async fn write_frames(writer: &mut Writer, frames: &[Frame]) -> io::Result<()> {
    let mut scratch: Vec<u8> = Vec::with_capacity(frames.len() * 48);
    let mut pieces: Vec<Piece<'_>> = Vec::with_capacity(frames.len() * 2 + 1);
    let mut start = 0;
    for frame in frames {
        match frame {
            Frame::Text(text) => {
                header(&mut scratch, TEXT, text.len());
                scratch.extend_from_slice(text);
            }
            Frame::Shared {
                prefix,
                payload,
                suffix,
            } => {
                header(
                    &mut scratch,
                    TEXT,
                    prefix.len() + payload.len() + suffix.len(),
                );
                scratch.extend_from_slice(prefix);
                pieces.push(Piece::Scratch(start..scratch.len()));
                pieces.push(Piece::Shared(payload));
                start = scratch.len();
                scratch.extend_from_slice(suffix.as_bytes());
            }
            Frame::Ping => header(&mut scratch, PING, 0),
            Frame::Pong(data) => {
                let data = &data[..data.len().min(125)];
                header(&mut scratch, PONG, data.len());
                scratch.extend_from_slice(data);
            }
            Frame::Close(code, reason) => {
                let payload = close_payload(*code, reason);
                header(&mut scratch, CLOSE, payload.len());
                scratch.extend_from_slice(&payload);
            }
        }
    }
    pieces.push(Piece::Scratch(start..scratch.len()));
    let mut slices: Vec<IoSlice<'_>> = pieces
        .iter()
        .map(|piece| match piece {
            Piece::Scratch(range) => IoSlice::new(&scratch[range.clone()]),
            Piece::Shared(bytes) => IoSlice::new(bytes),
        })
        .filter(|slice| !slice.is_empty())
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let written = writer.write_vectored(slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut h = Vec::new();
        header(&mut h, TEXT, 125);
        assert_eq!(h, [0x81, 125]);
        h.clear();
        header(&mut h, TEXT, 126);
        assert_eq!(h, [0x81, 126, 0, 126]);
        h.clear();
        header(&mut h, TEXT, 70_000);
        assert_eq!(h, [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn a_close_reason_is_cut_to_a_control_frames_size_at_a_character() {
        let reason = "é".repeat(100);
        let payload = close_payload(4400, &reason);
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(&payload[..2], &4400u16.to_be_bytes());
    }
}
