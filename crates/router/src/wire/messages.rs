//! The extended-protocol messages the front end reads and rewrites:
//! `Parse`, `Bind`, `Describe`, `Close`, `Execute`. Prepared statements
//! are renamed on their way to a server — a client's `S_1` becomes
//! `sl<hash of text and types>` — so that one server session can hold
//! the statements of every client it serves, and a statement prepared by
//! one client is reused by any other with the same text.

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::pg::frame::{put_cstr, Fields, Frame};

/// A `Parse` message, read.
#[derive(Debug, Clone)]
pub struct Parse {
    pub name: String,
    pub query: String,
    pub param_types: Vec<u32>,
}

impl Parse {
    pub fn read(body: &[u8]) -> std::io::Result<Parse> {
        let mut f = Fields::new(body);
        let name = f.cstr()?.to_string();
        let query = f.cstr()?.to_string();
        let n = f.i16()?;
        let mut param_types = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for _ in 0..n.max(0) {
            param_types.push(f.i32()? as u32);
        }
        Ok(Parse {
            name,
            query,
            param_types,
        })
    }

    /// The server's name for this statement: the same for the same text
    /// and parameter types, whichever client prepared it.
    pub fn server_name(&self) -> String {
        hashed_name("sl", &self.query, &self.param_types)
    }

    /// The `Parse` message preparing it under `name`.
    pub fn frame_as(&self, name: &str) -> Frame {
        let mut b = BytesMut::with_capacity(self.query.len() + 64);
        put_cstr(&mut b, name);
        put_cstr(&mut b, &self.query);
        b.put_i16(i16::try_from(self.param_types.len()).unwrap_or(i16::MAX));
        for t in &self.param_types {
            b.put_u32(*t);
        }
        Frame::new(b'P', b.freeze())
    }
}

/// A `Bind` message's names and parameters (the rest is passed on).
#[derive(Debug, Clone)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    /// Each parameter's format (0 text, 1 binary) and value.
    pub params: Vec<(i16, Option<Bytes>)>,
    /// Where the statement name ends in the body.
    stmt_end: usize,
    /// Where the parameters end (the result formats follow).
    params_end: usize,
}

impl Bind {
    pub fn read(body: &Bytes) -> std::io::Result<Bind> {
        let mut f = Fields::new(body);
        let portal = f.cstr()?.to_string();
        let statement = f.cstr()?.to_string();
        let stmt_end = body.len() - f.rest().len();
        let nf = f.i16()?;
        let mut formats = Vec::new();
        for _ in 0..nf.max(0) {
            formats.push(f.i16()?);
        }
        let np = f.i16()?;
        let mut params = Vec::with_capacity(usize::try_from(np).unwrap_or(0));
        for i in 0..np.max(0) {
            let fmt = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i as usize).copied().unwrap_or(0),
            };
            let len = f.i32()?;
            let value = match usize::try_from(len) {
                Ok(n) => {
                    let start = body.len() - f.rest().len();
                    f.bytes(n)?;
                    Some(body.slice(start..start + n))
                }
                Err(_) => None,
            };
            params.push((fmt, value));
        }
        let params_end = body.len() - f.rest().len();
        Ok(Bind {
            portal,
            statement,
            params,
            stmt_end,
            params_end,
        })
    }

    /// The same `Bind` naming `statement` instead.
    pub fn frame_for(&self, body: &Bytes, statement: &str) -> Frame {
        self.frame_as(body, &self.portal, statement)
    }

    /// The same `Bind` of `statement` into `portal`.
    pub fn frame_as(&self, body: &Bytes, portal: &str, statement: &str) -> Frame {
        let mut b = BytesMut::with_capacity(body.len() + statement.len());
        put_cstr(&mut b, portal);
        put_cstr(&mut b, statement);
        b.put_slice(&body[self.stmt_end..]);
        Frame::new(b'B', b.freeze())
    }
}

impl Bind {
    /// A `Bind` of the unnamed statement into the unnamed portal with
    /// only the parameters `picked` (1-based, in the new order), each
    /// with its own format; the result formats as the client sent them.
    pub fn frame_with(&self, body: &Bytes, picked: &[usize]) -> Frame {
        let mut b = BytesMut::with_capacity(body.len());
        put_cstr(&mut b, "");
        put_cstr(&mut b, "");
        let n = i16::try_from(picked.len()).unwrap_or(i16::MAX);
        b.put_i16(n);
        for &i in picked {
            b.put_i16(
                i.checked_sub(1)
                    .and_then(|i| self.params.get(i))
                    .map_or(0, |p| p.0),
            );
        }
        b.put_i16(n);
        for &i in picked {
            match i
                .checked_sub(1)
                .and_then(|i| self.params.get(i))
                .and_then(|p| p.1.as_ref())
            {
                Some(v) => {
                    b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        b.put_slice(&body[self.params_end.min(body.len())..]);
        Frame::new(b'B', b.freeze())
    }
}

/// A router's name for a statement on server sessions: `prefix` and the
/// first 16 bytes, in hex, of SHA-256 over `text` and `types`.
pub fn hashed_name(prefix: &str, text: &str, types: &[u32]) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    for t in types {
        h.update(t.to_be_bytes());
    }
    let d = h.finalize();
    let mut s = String::with_capacity(prefix.len() + 32);
    s.push_str(prefix);
    for b in &d[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The statement name of a `Parse` body, without reading the rest.
pub fn parse_name(body: &[u8]) -> std::io::Result<&str> {
    Fields::new(body).cstr()
}

/// The statement name of a `Bind` body, without reading the rest.
pub fn bind_statement(body: &[u8]) -> std::io::Result<&str> {
    let mut f = Fields::new(body);
    f.cstr()?;
    f.cstr()
}

/// `Describe` or `Close`: `S` (statement) or `P` (portal), and a name.
pub fn target(body: &[u8]) -> std::io::Result<(u8, String)> {
    let mut f = Fields::new(body);
    let kind = f.u8()?;
    let name = f.cstr()?.to_string();
    Ok((kind, name))
}

/// A `Describe` or `Close` (`tag`) of `kind` `name`.
pub fn target_frame(tag: u8, kind: u8, name: &str) -> Frame {
    let mut b = BytesMut::with_capacity(name.len() + 2);
    b.put_u8(kind);
    put_cstr(&mut b, name);
    Frame::new(tag, b.freeze())
}

/// `Describe` of the unnamed portal, `Execute` of it (all rows), and
/// `Sync`: the end of a batch the router runs on a server itself.
pub fn describe_execute_sync(out: &mut BytesMut) {
    target_frame(b'D', b'P', "").encode(out);
    let mut exec = BytesMut::with_capacity(5);
    put_cstr(&mut exec, "");
    exec.put_i32(0);
    Frame::new(b'E', exec.freeze()).encode(out);
    Frame::new(b'S', Bytes::new()).encode(out);
}

/// The portal an `Execute` runs.
pub fn execute_portal(body: &[u8]) -> std::io::Result<String> {
    Ok(Fields::new(body).cstr()?.to_string())
}

/// The text of a simple `Query`.
pub fn query_text(body: &[u8]) -> std::io::Result<&str> {
    Fields::new(body).cstr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_is_renamed_and_params_read() {
        let mut b = BytesMut::new();
        put_cstr(&mut b, "");
        put_cstr(&mut b, "S_1");
        b.put_i16(1);
        b.put_i16(0);
        b.put_i16(2);
        b.put_i32(2);
        b.put_slice(b"42");
        b.put_i32(-1);
        b.put_i16(0);
        let body = b.freeze();
        let bind = Bind::read(&body).unwrap();
        assert_eq!(bind.statement, "S_1");
        assert_eq!(bind.params[0], (0, Some(Bytes::from_static(b"42"))));
        assert_eq!(bind.params[1], (0, None));
        let renamed = bind.frame_for(&body, "sl00");
        let again = Bind::read(&renamed.body).unwrap();
        assert_eq!(again.statement, "sl00");
        assert_eq!(again.params, bind.params);
    }

    #[test]
    fn parse_round_trips_and_names_by_text() {
        let p = Parse {
            name: "a".into(),
            query: "SELECT $1".into(),
            param_types: vec![23],
        };
        let f = p.frame_as("x");
        let q = Parse::read(&f.body).unwrap();
        assert_eq!((q.name.as_str(), q.query.as_str()), ("x", "SELECT $1"));
        assert_eq!(q.param_types, vec![23]);
        assert_eq!(p.server_name(), q.server_name());
        let other = Parse {
            param_types: vec![25],
            ..p.clone()
        };
        assert_ne!(p.server_name(), other.server_name());
    }

    #[test]
    fn truncated_messages_are_errors() {
        assert!(Parse::read(b"a\0SELECT").is_err());
        assert!(Bind::read(&Bytes::from_static(b"\0s\0\x00\x01")).is_err());
        assert!(target(b"").is_err());
    }
}
