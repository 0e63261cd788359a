//! PostgreSQL protocol v3 framing: a message is a type byte, a 4-byte
//! big-endian length that counts itself, and a body. Both directions use
//! it (the startup packet, which has no type byte, is read by the wire
//! front end itself).
//!
//! Reading is cancel-safe: bytes read stay in the caller's buffer, so a
//! read dropped by `select!` loses nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest message accepted (PostgreSQL's own limit for most
/// messages is 1 GiB; a router need not buffer that much).
pub const MAX_FRAME: usize = 256 << 20;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The body, without type byte and length.
    pub body: Bytes,
}

impl Frame {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Self {
        Self {
            tag,
            body: body.into(),
        }
    }

    /// Appends the framed message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.put_u8(self.tag);
        out.put_i32(i32::try_from(self.body.len() + 4).unwrap_or(i32::MAX));
        out.put_slice(&self.body);
    }
}

/// Takes one whole message off the front of `buf`, if it holds one.
pub fn split_frame(buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (4..=MAX_FRAME).contains(l))
        .ok_or_else(|| invalid(format!("message length {len} out of range")))?;
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    Ok(Some(Frame { tag, body }))
}

/// Reads one message; `None` at a clean end of stream between messages.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Frame>> {
    loop {
        if let Some(f) = split_frame(buf)? {
            return Ok(Some(f));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        if r.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a message",
                ))
            };
        }
    }
}

pub(crate) fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// A cursor over a message body: C strings and big-endian integers,
/// every read checked.
pub struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// A NUL-terminated string.
    pub fn cstr(&mut self) -> std::io::Result<&'a str> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| invalid("unterminated string in message".into()))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| invalid("string in message is not UTF-8".into()))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn i16(&mut self) -> std::io::Result<i16> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> std::io::Result<i32> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u8(&mut self) -> std::io::Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(invalid("message shorter than its fields".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// Appends a NUL-terminated string.
pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_messages_only() {
        let mut out = BytesMut::new();
        Frame::new(b'Q', &b"SELECT 1\0"[..]).encode(&mut out);
        Frame::new(b'S', Bytes::new()).encode(&mut out);
        let mut part = out.split_to(7);
        assert_eq!(split_frame(&mut part).unwrap(), None);
        part.unsplit(out);
        let q = split_frame(&mut part).unwrap().unwrap();
        assert_eq!((q.tag, &q.body[..]), (b'Q', &b"SELECT 1\0"[..]));
        let s = split_frame(&mut part).unwrap().unwrap();
        assert_eq!((s.tag, s.body.len()), (b'S', 0));
        assert!(part.is_empty());
    }

    #[test]
    fn refuses_bad_lengths() {
        for len in [-1i32, 0, 3, i32::MAX] {
            let mut b = BytesMut::new();
            b.put_u8(b'Q');
            b.put_i32(len);
            assert!(split_frame(&mut b).is_err(), "{len}");
        }
    }

    #[test]
    fn fields_are_checked() {
        let mut f = Fields::new(b"ab\0\x00\x01");
        assert_eq!(f.cstr().unwrap(), "ab");
        assert_eq!(f.i16().unwrap(), 1);
        assert!(f.i32().is_err());
        assert!(Fields::new(b"no nul").cstr().is_err());
    }
}
