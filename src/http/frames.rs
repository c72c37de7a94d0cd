//! A socket's read half: the frames a client sends (RFC 6455 §5), parsed here.
//!
//! **Why not tungstenite's reader**: it keeps, for the connection's whole life, a read buffer
//! (512 bytes here, kept from the first frame on), about 300 bytes of state in the connection's
//! future and two `Arc` waker proxies; an idle subscription holds its socket for hours and
//! reads a ping now and then. This reader holds no buffer while there is nothing half-read: it
//! reads into the stack when the socket is readable, and keeps only the bytes of a frame that
//! has not arrived whole (at most the largest message a client may send). What it checks is
//! what a server must (§5.1–§5.5, §8.1): client frames are masked, no reserved bit or opcode,
//! control frames are whole and at most 125 bytes, continuations follow a message that has not
//! ended, a message is at most `max_bytes` (1009 past it, checked from a frame's header, before
//! its bytes are read) and a text message is UTF-8 (1007).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use tokio::io::{AsyncRead, ReadBuf};

use super::websocket::ReadOnly;

/// What the reader reads from the socket at once, on the stack.
const READ_CHUNK: usize = 4096;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Bytes),
    Pong,
    /// A close, with its code if it has one.
    Close(Option<u16>),
}

/// Why the reader stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// A message over the size limit (close with 1009).
    TooBig,
    /// A text message, or a close's reason, that is not UTF-8 (close with 1007).
    NotUtf8,
    /// A frame that breaks the protocol (close with 1002).
    Protocol(&'static str),
    /// The connection failed, or ended within a frame.
    Io(io::Error),
}

/// Reads a client's messages from a socket's read half.
pub(crate) struct Reader {
    io: ReadOnly,
    /// Bytes read that do not yet make a whole frame; no allocation while empty.
    pending: Vec<u8>,
    /// The fragments of a data message that has not ended, and its opcode.
    message: Vec<u8>,
    fragmented: Option<u8>,
    max_bytes: usize,
    done: bool,
}

/// A frame's header, once its bytes have come.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Where its payload starts.
    start: usize,
    len: usize,
}

impl Reader {
    /// A reader of `io`, starting with `read` (what was read past the upgrade request); a
    /// message over `max_bytes` ends it.
    pub(crate) fn new(io: ReadOnly, read: Vec<u8>, max_bytes: usize) -> Self {
        Reader {
            io,
            pending: read,
            message: Vec::new(),
            fragmented: None,
            max_bytes,
            done: false,
        }
    }

    /// The next message; `None` once the client closed the connection (or after an error).
    /// Cancel-safe: what was read stays in the reader.
    pub(crate) async fn next(&mut self) -> Option<Result<Incoming, ReadError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, ReadError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.parse() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            // On the stack: the chunk exists only while this poll runs.
            let mut chunk = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(ReadError::Io(e))));
                }
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    self.done = true;
                    if self.pending.is_empty() {
                        return Poll::Ready(None);
                    }
                    let e = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Poll::Ready(Some(Err(ReadError::Io(e))));
                }
                Poll::Ready(Ok(())) => self.pending.extend_from_slice(buf.filled()),
            }
        }
    }

    /// The next whole message among the bytes read, if they hold one.
    fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some(header) = self.header()? else {
                return Ok(None);
            };
            let end = header.start + header.len;
            if self.pending.len() < end {
                return Ok(None);
            }
            let mut payload = self.pending[header.start..end].to_vec();
            self.pending.drain(..end);
            if self.pending.is_empty() {
                // Nothing half-read: the buffer goes.
                self.pending = Vec::new();
            }
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= header.mask[i % 4];
            }
            match header.opcode {
                CONTINUATION => {
                    let Some(opcode) = self.fragmented else {
                        return Err(ReadError::Protocol(
                            "a continuation frame without a message",
                        ));
                    };
                    self.message.extend_from_slice(&payload);
                    if header.fin {
                        self.fragmented = None;
                        let message = std::mem::take(&mut self.message);
                        return data(opcode, message).map(Some);
                    }
                }
                TEXT | BINARY => {
                    if self.fragmented.is_some() {
                        return Err(ReadError::Protocol(
                            "a new message before the last one ended",
                        ));
                    }
                    if header.fin {
                        return data(header.opcode, payload).map(Some);
                    }
                    self.fragmented = Some(header.opcode);
                    self.message = payload;
                }
                CLOSE => {
                    return match payload.len() {
                        0 => Ok(Some(Incoming::Close(None))),
                        1 => Err(ReadError::Protocol("a close frame of one byte")),
                        _ => match std::str::from_utf8(&payload[2..]) {
                            Ok(_) => Ok(Some(Incoming::Close(Some(u16::from_be_bytes([
                                payload[0], payload[1],
                            ]))))),
                            Err(_) => Err(ReadError::NotUtf8),
                        },
                    };
                }
                PING => return Ok(Some(Incoming::Ping(Bytes::from(payload)))),
                PONG => return Ok(Some(Incoming::Pong)),
                _ => return Err(ReadError::Protocol("a reserved opcode")),
            }
        }
    }

    /// The header of the frame `pending` starts with, once its bytes are there. A frame that
    /// would take the message past the size limit is refused from its header.
    fn header(&self) -> Result<Option<Header>, ReadError> {
        let bytes = &self.pending[..];
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(ReadError::Protocol("a reserved bit is set"));
        }
        let opcode = first & 0x0F;
        if second & 0x80 == 0 {
            return Err(ReadError::Protocol("a client's frame must be masked"));
        }
        let (len, at) = match second & 0x7F {
            126 => match bytes.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match bytes.get(2..10) {
                Some(b) => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(b);
                    (u64::from_be_bytes(len), 10)
                }
                None => return Ok(None),
            },
            len => (u64::from(len), 2),
        };
        if opcode >= CLOSE {
            if !fin || len > 125 {
                return Err(ReadError::Protocol(
                    "a control frame must be whole and short",
                ));
            }
        } else if len
            .checked_add(self.message.len() as u64)
            .is_none_or(|total| total > self.max_bytes as u64)
        {
            return Err(ReadError::TooBig);
        }
        let Some(mask) = bytes.get(at..at + 4) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            start: at + 4,
            // Within `max_bytes` (or 125), so within `usize`.
            len: len as usize,
        }))
    }
}

/// A whole data message.
fn data(opcode: u8, bytes: Vec<u8>) -> Result<Incoming, ReadError> {
    if opcode == TEXT {
        String::from_utf8(bytes)
            .map(Incoming::Text)
            .map_err(|_| ReadError::NotUtf8)
    } else {
        Ok(Incoming::Binary(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// The messages `bytes` hold, read by a reader of a socket that then ends.
    async fn read_all(bytes: Vec<u8>, max_bytes: usize) -> Vec<Result<Incoming, String>> {
        let (client, server) = tokio::io::duplex(64);
        let (read, _write) = tokio::io::split(server);
        let mut reader = Reader::new(ReadOnly::from_test(read), Vec::new(), max_bytes);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut client = client;
            // In small pieces, so frames arrive split at every place.
            for piece in bytes.chunks(7) {
                if client.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let mut got = Vec::new();
        while let Some(message) = reader.next().await {
            got.push(message.map_err(|e| format!("{e:?}")));
        }
        writer.abort();
        got
    }

    #[tokio::test]
    async fn messages_are_read_whole_however_the_bytes_arrive() {
        let long = "x".repeat(70_000);
        let mut bytes = frame(0x81, "héllo".as_bytes());
        bytes.extend(frame(0x82, &[0, 159, 146, 150]));
        bytes.extend(frame(0x89, b"ping"));
        bytes.extend(frame(0x8A, b""));
        bytes.extend(frame(0x81, long.as_bytes()));
        // A fragmented text message with a ping between its fragments.
        bytes.extend(frame(0x01, b"frag"));
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x00, b"men"));
        bytes.extend(frame(0x80, b"ted"));
        bytes.extend(frame(0x88, &[0x03, 0xE8, b'o', b'k']));
        let got = read_all(bytes, 100_000).await;
        assert_eq!(
            got,
            vec![
                Ok(Incoming::Text("héllo".into())),
                Ok(Incoming::Binary(vec![0, 159, 146, 150])),
                Ok(Incoming::Ping(Bytes::from_static(b"ping"))),
                Ok(Incoming::Pong),
                Ok(Incoming::Text(long)),
                Ok(Incoming::Ping(Bytes::from_static(b"p"))),
                Ok(Incoming::Text("fragmented".into())),
                Ok(Incoming::Close(Some(1000))),
            ]
        );
    }

    #[tokio::test]
    async fn what_breaks_the_protocol_ends_the_reader_with_its_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (frame(0x81, &[0xC3, 0x28]), "NotUtf8"),
            (frame(0x81, &[b'a'; 101]), "TooBig"),
            (
                [frame(0x01, &[b'a'; 60]), frame(0x80, &[b'a'; 60])].concat(),
                "TooBig",
            ),
            (frame(0xC1, b"rsv"), "a reserved bit is set"),
            (frame(0x83, b"op"), "a reserved opcode"),
            (
                frame(0x80, b"cont"),
                "a continuation frame without a message",
            ),
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                "before the last one ended",
            ),
            (frame(0x09, b"split ping"), "a control frame must be whole"),
            (frame(0x89, &[0; 126]), "a control frame must be whole"),
            (frame(0x88, &[3]), "a close frame of one byte"),
            (frame(0x88, &[3, 0xE8, 0xFF]), "NotUtf8"),
            (vec![0x81, 0x02, b'h', b'i'], "must be masked"),
        ];
        for (bytes, reason) in cases {
            let got = read_all(bytes, 100).await;
            assert_eq!(got.len(), 1, "{reason}: {got:?}");
            let error = got[0].as_ref().expect_err(reason);
            assert!(error.contains(reason), "{reason}: {error}");
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_from_its_header() {
        // Only the header of a 1 MiB frame is sent: the reader must not wait for the rest.
        let header = [0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4];
        let (client, server) = tokio::io::duplex(64);
        let (read, _write) = tokio::io::split(server);
        let mut reader = Reader::new(ReadOnly::from_test(read), header.to_vec(), 65_536);
        let got = reader.next().await;
        assert!(matches!(got, Some(Err(ReadError::TooBig))), "{got:?}");
        drop(client);
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (client, server) = tokio::io::duplex(64);
        let (read, _write) = tokio::io::split(server);
        let mut reader = Reader::new(ReadOnly::from_test(read), Vec::new(), 1000);
        let mut client = client;
        use tokio::io::AsyncWriteExt;
        let mut bytes = frame(0x81, b"one");
        let second = frame(0x81, b"two");
        bytes.extend_from_slice(&second[..3]);
        client.write_all(&bytes).await.expect("write");
        assert_eq!(
            reader.next().await.expect("a message").expect("read"),
            Incoming::Text("one".into())
        );
        assert!(reader.pending.capacity() > 0, "half a frame is kept");
        client.write_all(&second[3..]).await.expect("write");
        assert_eq!(
            reader.next().await.expect("a message").expect("read"),
            Incoming::Text("two".into())
        );
        assert_eq!(
            reader.pending.capacity(),
            0,
            "nothing half-read, nothing held"
        );
        assert_eq!(reader.message.capacity(), 0);
    }
}
