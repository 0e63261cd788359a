//! The client side of the wire: the startup packet (and TLS, when asked
//! for and configured), and the messages the router itself sends
//! (authentication, parameters, errors, the answers it gives without a
//! server).

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::{ClientStream, WireTls};
use crate::error::RouterError;
use crate::pg::frame::{put_cstr, read_frame, Frame};

/// The protocol version 3.0 code of a startup packet.
pub const PROTOCOL_3: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// The longest startup packet accepted (PostgreSQL's limit).
const MAX_STARTUP: usize = 10_000;

/// What a new connection opened with.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// A session: the startup parameters (`user`, `database`, ...) and
    /// the protocol's minor version.
    Session {
        params: Vec<(String, String)>,
        minor: u16,
    },
    /// A request to cancel the statement of the session with this key.
    Cancel { pid: i32, secret: i32 },
}

/// A client connection with its buffers.
pub struct ClientIo {
    pub stream: ClientStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
}

impl ClientIo {
    pub fn new(stream: impl Into<ClientStream>) -> Self {
        Self {
            stream: stream.into(),
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(8192),
        }
    }

    /// Whether the connection has negotiated TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Reads the startup packet. An `SSLRequest` is answered `S` and
    /// followed by a TLS handshake when `tls` is given, else `N`; GSS
    /// encryption is always answered `N`.
    ///
    /// Bytes a client sent after its `SSLRequest` and before the answer
    /// are refused, not kept: they came unencrypted, and taking them as
    /// the start of the TLS session would let a man in the middle inject
    /// them (CVE-2021-23214).
    pub async fn read_opening(&mut self, tls: Option<&WireTls>) -> std::io::Result<Opening> {
        // A client may ask for TLS, then GSS, before its startup packet.
        for _ in 0..3 {
            let body = self.read_startup_packet().await?;
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let rest = &body[4..];
            match code {
                SSL_REQUEST | GSSENC_REQUEST if self.is_tls() => {
                    return Err(invalid(
                        "encryption requested on an encrypted connection".into(),
                    ));
                }
                SSL_REQUEST if tls.is_some() && !self.rbuf.is_empty() => {
                    return Err(invalid(
                        "received unencrypted data after SSL request".into(),
                    ));
                }
                SSL_REQUEST => match tls {
                    Some(tls) => {
                        self.stream.write_all(b"S").await?;
                        self.stream.start_tls(tls).await?;
                    }
                    None => self.stream.write_all(b"N").await?,
                },
                GSSENC_REQUEST => self.stream.write_all(b"N").await?,
                CANCEL_REQUEST => {
                    if rest.len() < 8 {
                        return Err(invalid("short cancel request".into()));
                    }
                    let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
                    return Ok(Opening::Cancel { pid, secret });
                }
                c if c >> 16 == 3 => {
                    return Ok(Opening::Session {
                        params: startup_params(rest)?,
                        minor: (c & 0xffff) as u16,
                    })
                }
                c => {
                    return Err(invalid(format!(
                        "unsupported frontend protocol {}.{}",
                        c >> 16,
                        c & 0xffff
                    )))
                }
            }
        }
        Err(invalid("too many encryption requests".into()))
    }

    /// Reads one startup packet (length, then at least a 4-byte code)
    /// and returns it without its length. Bytes read past it stay in
    /// `rbuf`.
    async fn read_startup_packet(&mut self) -> std::io::Result<Bytes> {
        loop {
            if self.rbuf.len() >= 4 {
                let len =
                    i32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]);
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| (8..=MAX_STARTUP).contains(l))
                    .ok_or_else(|| invalid(format!("startup packet length {len} out of range")))?;
                if self.rbuf.len() >= len {
                    let mut packet = self.rbuf.split_to(len);
                    packet.advance(4);
                    return Ok(packet.freeze());
                }
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "client left before its startup packet",
                ));
            }
        }
    }

    /// Reads one message.
    pub async fn read(&mut self) -> std::io::Result<Option<Frame>> {
        read_frame(&mut self.stream, &mut self.rbuf).await
    }

    /// Queues a message for the next [`flush`](Self::flush).
    pub fn queue(&mut self, f: &Frame) {
        f.encode(&mut self.wbuf);
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            // TLS may hold records back until flushed (plain TCP: no-op).
            self.stream.flush().await?;
        }
        Ok(())
    }
}

/// Whether `buf` starts with a whole message (or a malformed one, which
/// the next read reports).
pub fn peek_complete(buf: &BytesMut) -> bool {
    if buf.len() < 5 {
        return false;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    usize::try_from(len).map_or(true, |l| buf.len() > l)
}

fn startup_params(mut rest: &[u8]) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let take = |rest: &mut &[u8]| -> std::io::Result<String> {
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| invalid("unterminated startup parameter".into()))?;
        let s = String::from_utf8(rest[..end].to_vec())
            .map_err(|_| invalid("startup parameter is not UTF-8".into()))?;
        *rest = &rest[end + 1..];
        Ok(s)
    };
    loop {
        let name = take(&mut rest)?;
        if name.is_empty() {
            return Ok(out);
        }
        let value = take(&mut rest)?;
        out.push((name, value));
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// `Authentication*`: `code` and its data.
pub fn auth(code: i32, data: &[u8]) -> Frame {
    let mut b = BytesMut::with_capacity(4 + data.len());
    b.put_i32(code);
    b.put_slice(data);
    Frame::new(b'R', b.freeze())
}

pub fn parameter_status(name: &str, value: &str) -> Frame {
    let mut b = BytesMut::new();
    put_cstr(&mut b, name);
    put_cstr(&mut b, value);
    Frame::new(b'S', b.freeze())
}

pub fn backend_key_data(pid: i32, secret: i32) -> Frame {
    let mut b = BytesMut::with_capacity(8);
    b.put_i32(pid);
    b.put_i32(secret);
    Frame::new(b'K', b.freeze())
}

/// `ReadyForQuery` with transaction status `I`, `T` or `E`.
pub fn ready(status: u8) -> Frame {
    Frame::new(b'Z', Bytes::copy_from_slice(&[status]))
}

pub fn command_complete(tag: &str) -> Frame {
    let mut b = BytesMut::new();
    put_cstr(&mut b, tag);
    Frame::new(b'C', b.freeze())
}

/// The row count at the end of a `CommandComplete` body (`INSERT 0 3`
/// gives 3, `COPY 5` gives 5); `None` for tags without one.
pub fn tag_count(body: &[u8]) -> Option<u64> {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    let tag = std::str::from_utf8(tag).ok()?;
    tag.rsplit(' ').next()?.parse().ok()
}

/// A message with an empty body (`ParseComplete` `1`, `BindComplete`
/// `2`, `CloseComplete` `3`, `NoData` `n`, `EmptyQueryResponse` `I`).
pub fn empty(tag: u8) -> Frame {
    Frame::new(tag, Bytes::new())
}

/// `ParameterDescription` with `n` parameters of unknown type.
pub fn parameter_description(types: &[u32]) -> Frame {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(types.len()).unwrap_or(i16::MAX));
    for t in types {
        b.put_u32(*t);
    }
    Frame::new(b't', b.freeze())
}

/// An error the router raises itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// `ERROR` or `FATAL`.
    pub severity: &'static str,
    /// The SQLSTATE: the router's own, or PostgreSQL's passed through.
    pub code: Cow<'static, str>,
    pub message: String,
    pub hint: Option<String>,
}

impl WireError {
    pub fn error(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            severity: "ERROR",
            code: code.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn fatal(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            severity: "FATAL",
            ..Self::error(code, message)
        }
    }

    /// The `ErrorResponse` for a router error (the wire front end's
    /// edge): PostgreSQL's own SQLSTATE when it sent one, else the class
    /// of the router's reason; its message and hint.
    pub fn from_router(e: &RouterError) -> Self {
        let w = Self::error(e.wire_sqlstate(), e.message());
        match e.hint() {
            Some(h) => w.with_hint(h),
            None => w,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn frame(&self) -> Frame {
        let mut b = BytesMut::new();
        for (c, v) in [
            (b'S', self.severity),
            (b'V', self.severity),
            (b'C', self.code.as_ref()),
            (b'M', self.message.as_str()),
        ] {
            b.put_u8(c);
            put_cstr(&mut b, v);
        }
        if let Some(h) = &self.hint {
            b.put_u8(b'H');
            put_cstr(&mut b, h);
        }
        b.put_u8(0);
        Frame::new(b'E', b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters() {
        let p = startup_params(b"user\0a\0database\0ks\0\0").unwrap();
        assert_eq!(
            p,
            vec![
                ("user".to_string(), "a".to_string()),
                ("database".to_string(), "ks".to_string())
            ]
        );
        assert!(startup_params(b"user\0a").is_err());
    }

    #[test]
    fn error_frame_has_fields() {
        let f = WireError::error("0A000", "no").with_hint("h").frame();
        assert_eq!(f.tag, b'E');
        assert_eq!(
            crate::pg::server::error_field(&f.body, b'C').as_deref(),
            Some("0A000")
        );
        assert_eq!(
            crate::pg::server::error_field(&f.body, b'H').as_deref(),
            Some("h")
        );
    }
}
