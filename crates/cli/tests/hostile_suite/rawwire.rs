//! A PostgreSQL protocol client that sends whatever it is told: any
//! startup parameters (`database`, `options`, `TimeZone`, ...),
//! extended-protocol messages with any names (`Parse` named like the
//! router's own statements), the function-call message, cancel
//! requests — what a driver would never send, and a hostile client
//! can. It logs in with SCRAM-SHA-256 (postgres-protocol's client side)
//! and reads answers until `ReadyForQuery`.

use std::net::SocketAddr;
use std::time::Duration;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::verdict::Got;
use super::wire::WIRE_WAIT;

/// One backend message.
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// A logged-in raw connection.
pub struct RawWire {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `BackendKeyData` the router gave.
    pub key: (i32, i32),
}

/// A message: tag, length, body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A simple query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    frame(b'Q', &b)
}

/// `Parse` of `sql` as statement `name`, with no parameter types given.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'P', &b)
}

/// `Bind` of statement `stmt` to portal `portal`, parameters as text,
/// results as text.
pub fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &b)
}

/// `Execute` of `portal`, all rows.
pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    frame(b'E', &b)
}

/// `Describe` (`kind` `S` statement or `P` portal).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    frame(b'D', &b)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

/// The function-call message: function `oid` with text arguments.
pub fn function_call(oid: u32, args: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&oid.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for a in args {
        b.extend_from_slice(&(a.len() as i32).to_be_bytes());
        b.extend_from_slice(a.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'F', &b)
}

/// A `CancelRequest` for `(pid, secret)`, sent on its own connection.
pub async fn cancel(addr: SocketAddr, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let mut b = Vec::new();
    b.extend_from_slice(&16i32.to_be_bytes());
    b.extend_from_slice(&80_877_102i32.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&secret.to_be_bytes());
    s.write_all(&b).await?;
    // The server closes the connection once it has read the request.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
    Ok(())
}

/// An `ErrorResponse` or `NoticeResponse`'s fields: SQLSTATE, and all
/// of them as text.
pub fn fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut text = Vec::new();
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let (kind, value) = (field[0] as char, String::from_utf8_lossy(&field[1..]));
        if kind == 'C' {
            code = value.to_string();
        }
        text.push(format!("{kind}={value}"));
    }
    (code, text.join(" "))
}

impl RawWire {
    /// Sends a startup packet with `params` and logs in with
    /// `password` (SCRAM-SHA-256); a refusal is the answer.
    pub async fn connect(
        addr: SocketAddr,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<RawWire, Got> {
        let no = |e: std::io::Error| Got::NoAnswer(format!("raw login: {e}"));
        let stream = TcpStream::connect(addr).await.map_err(no)?;
        let mut c = RawWire {
            stream,
            buf: Vec::new(),
            key: (0, 0),
        };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608i32.to_be_bytes());
        for (k, v) in params {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut startup = (body.len() as i32 + 4).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        c.stream.write_all(&startup).await.map_err(no)?;
        let mut scram = None;
        loop {
            let m = match tokio::time::timeout(WIRE_WAIT, c.read()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return Err(Got::NoAnswer("closed during login".into())),
                Ok(Err(e)) => return Err(no(e)),
                Err(_) => return Err(Got::NoAnswer("no login within the wait".into())),
            };
            match m.tag {
                b'R' => {
                    let code = i32::from_be_bytes(m.body[..4].try_into().unwrap_or([0; 4]));
                    match code {
                        0 => {}
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let mut b = Vec::new();
                            cstr(&mut b, "SCRAM-SHA-256");
                            b.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            b.extend_from_slice(s.message());
                            c.stream.write_all(&frame(b'p', &b)).await.map_err(no)?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| Got::NoAnswer("SASL out of order".into()))?;
                            s.update(&m.body[4..]).map_err(no)?;
                            let msg = frame(b'p', s.message());
                            c.stream.write_all(&msg).await.map_err(no)?;
                        }
                        12 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| Got::NoAnswer("SASL out of order".into()))?;
                            s.finish(&m.body[4..]).map_err(no)?;
                        }
                        other => {
                            return Err(Got::NoAnswer(format!(
                                "authentication method {other} offered"
                            )))
                        }
                    }
                }
                b'K' if m.body.len() >= 8 => {
                    let pid = i32::from_be_bytes(m.body[..4].try_into().unwrap_or([0; 4]));
                    let secret = i32::from_be_bytes(m.body[4..8].try_into().unwrap_or([0; 4]));
                    c.key = (pid, secret);
                }
                b'E' => {
                    let (sqlstate, text) = fields(&m.body);
                    return Err(Got::WireRefused { sqlstate, text });
                }
                b'Z' => return Ok(c),
                _ => {}
            }
        }
    }

    /// The next message, or `None` when the server closed.
    pub async fn read(&mut self) -> std::io::Result<Option<Message>> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap_or([0; 4]));
                let total = 1 + usize::try_from(len).unwrap_or(0);
                if total < 5 {
                    return Err(std::io::Error::other("bad message length"));
                }
                if self.buf.len() >= total {
                    let rest = self.buf.split_off(total);
                    let whole = std::mem::replace(&mut self.buf, rest);
                    return Ok(Some(Message {
                        tag: whole[0],
                        body: whole[5..].to_vec(),
                    }));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `bytes` (any messages) and reads the answers until
    /// `ReadyForQuery`: the rows of the last statement that completed,
    /// and everything received as text; the first error makes it a
    /// refusal.
    pub async fn exchange(&mut self, bytes: &[u8]) -> Got {
        if let Err(e) = self.stream.write_all(bytes).await {
            return Got::NoAnswer(format!("send: {e}"));
        }
        let mut text = Vec::new();
        let (mut current, mut last): (Vec<Vec<Value>>, Vec<Vec<Value>>) = (vec![], vec![]);
        let mut error: Option<String> = None;
        loop {
            let m = match tokio::time::timeout(WIRE_WAIT, self.read()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    text.push(format!("read: {e}"));
                    break;
                }
                Err(_) => {
                    return Got::NoAnswer(format!(
                        "no ReadyForQuery within {WIRE_WAIT:?}: {}",
                        text.join(" | ")
                    ))
                }
            };
            match m.tag {
                b'D' => {
                    let row = data_row(&m.body);
                    text.push(Value::from(row.clone()).to_string());
                    current.push(row);
                }
                b'C' | b's' => {
                    text.push(format!(
                        "{} {}",
                        m.tag as char,
                        String::from_utf8_lossy(&m.body)
                    ));
                    last = std::mem::take(&mut current);
                }
                b'E' | b'N' => {
                    let (code, all) = fields(&m.body);
                    if m.tag == b'E' && error.is_none() {
                        error = Some(code);
                    }
                    text.push(format!("{} {all}", m.tag as char));
                }
                b'A' => text.push(format!("notification {}", String::from_utf8_lossy(&m.body))),
                b'Z' => {
                    text.push("ready".into());
                    return finish(error, last, text);
                }
                other => text.push(format!("{}", other as char)),
            }
        }
        match error {
            Some(_) => finish(error, last, text),
            None => Got::NoAnswer(format!("closed before ReadyForQuery: {}", text.join(" | "))),
        }
    }

    /// Sends `bytes` and reads up to `cap` bytes of answers, then leaves
    /// (drops the connection). Returns the bytes read and whether
    /// `ReadyForQuery` came first.
    pub async fn read_then_leave(mut self, bytes: &[u8], cap: usize) -> (usize, bool) {
        if self.stream.write_all(bytes).await.is_err() {
            return (0, false);
        }
        let mut total = 0;
        while total < cap {
            match tokio::time::timeout(WIRE_WAIT, self.read()).await {
                Ok(Ok(Some(m))) => {
                    total += m.body.len() + 5;
                    if m.tag == b'Z' {
                        return (total, true);
                    }
                }
                _ => break,
            }
        }
        (total, false)
    }
}

fn finish(error: Option<String>, rows: Vec<Vec<Value>>, text: Vec<String>) -> Got {
    let text = text.join(" | ");
    match error {
        Some(sqlstate) => Got::WireRefused { sqlstate, text },
        None => Got::Answered { rows, text },
    }
}

/// A `DataRow`'s values as text (NULL as null).
fn data_row(body: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    let n = i16::from_be_bytes([
        body.first().copied().unwrap_or(0),
        body.get(1).copied().unwrap_or(0),
    ]);
    let mut at = 2;
    for _ in 0..n.max(0) {
        let Some(len) = body.get(at..at + 4) else {
            break;
        };
        let len = i32::from_be_bytes(len.try_into().unwrap_or([0; 4]));
        at += 4;
        if len < 0 {
            out.push(Value::Null);
            continue;
        }
        let end = (at + len as usize).min(body.len());
        out.push(Value::String(
            String::from_utf8_lossy(&body[at..end]).into_owned(),
        ));
        at = end;
    }
    out
}
