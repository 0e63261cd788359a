//! Verdicts: what an attack declared it must get, what it got, and
//! whether the two agree. An attack is as declared only when its answer
//! is exactly the declared one (the refusal's HTTP status and SQLSTATE
//! class, or the stated harmless rows), the answer holds none of the
//! victim's secrets in any encoding we know (text, reversed, hex, base64
//! at every byte alignment), and no effect was seen where one would land
//! (the probes of `probes.rs`). Anything else is unexpected, whether or
//! not the secret was echoed: an attack that quietly succeeds fails the
//! suite.

use std::collections::BTreeMap;

use serde_json::Value;
use shardline_client::ClientError;

/// What an attack declares it must get.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Refused with this HTTP status. `sqlstate` is the start of the
    /// SQLSTATE PostgreSQL gave (a class such as `"42"` or a whole code
    /// such as `"42501"`); `None` when the router refuses by itself and
    /// no SQLSTATE is sent.
    Refused {
        status: u16,
        sqlstate: Option<&'static str>,
    },
    /// Answered, and the last statement's rows are exactly these.
    Rows(Vec<Vec<Value>>),
    /// Answered (a listing we let a tenant read), and the answer contains
    /// none of `words` (`what` names them in the count).
    Lacks {
        what: &'static str,
        words: Vec<String>,
    },
    /// Refused over the PostgreSQL protocol: an `ErrorResponse` whose
    /// SQLSTATE starts with `sqlstate` (a class such as `"42"` or a whole
    /// code). The wire has no HTTP status.
    WireRefused { sqlstate: &'static str },
}

impl Expect {
    /// Refused by PostgreSQL for want of a privilege (42501, answered
    /// 403 `forbidden`).
    pub fn no_right() -> Self {
        Expect::Refused {
            status: 403,
            sqlstate: Some("42501"),
        }
    }

    /// Refused by PostgreSQL with a SQLSTATE of `class` (answered 400
    /// `statement_failed`): an object that does not exist here (42),
    /// a feature PostgreSQL does not offer (0A), ...
    pub fn failed(class: &'static str) -> Self {
        Expect::Refused {
            status: 400,
            sqlstate: Some(class),
        }
    }

    /// Refused by the router itself with `status`, before PostgreSQL saw
    /// it (the session guard's 400, a keyspace's 403, ...).
    pub fn router(status: u16) -> Self {
        Expect::Refused {
            status,
            sqlstate: None,
        }
    }

    /// Answered with no rows (a `DO` block, `NOTIFY`, ...).
    pub fn no_rows() -> Self {
        Expect::Rows(Vec::new())
    }

    /// Answered with one row of one value.
    pub fn one(value: Value) -> Self {
        Expect::Rows(vec![vec![value]])
    }

    /// Refused over the wire with a SQLSTATE starting with `sqlstate`.
    pub fn wire(sqlstate: &'static str) -> Self {
        Expect::WireRefused { sqlstate }
    }

    /// The declaration as a client of the PostgreSQL protocol sees it:
    /// a refusal by PostgreSQL keeps its SQLSTATE class (the first two
    /// characters: the wire has no HTTP status, and a text sent as one
    /// simple query may fail in another statement of the same class);
    /// rows are compared as the simple protocol sends them, as text
    /// (`true` is `t`). A refusal by the router's HTTP layer without a
    /// SQLSTATE (its keyword guard, a keyspace it will not serve) has no
    /// wire counterpart: `None`, and the attack must declare its wire
    /// outcome itself.
    pub fn on_wire(&self) -> Option<Expect> {
        match self {
            Expect::Refused {
                sqlstate: Some(s), ..
            } => Some(Expect::WireRefused { sqlstate: class(s) }),
            Expect::Refused { sqlstate: None, .. } => None,
            Expect::Rows(rows) => Some(Expect::Rows(
                rows.iter()
                    .map(|r| r.iter().map(as_wire_text).collect())
                    .collect(),
            )),
            Expect::Lacks { .. } | Expect::WireRefused { .. } => Some(self.clone()),
        }
    }

    /// The name of the declaration in the count by outcome.
    pub fn bucket(&self) -> String {
        match self {
            Expect::Refused {
                status,
                sqlstate: Some(s),
            } if s.len() < 5 => format!("refused {status} {s}{}", "x".repeat(5 - s.len())),
            Expect::Refused {
                status,
                sqlstate: Some(s),
            } => format!("refused {status} {s}"),
            Expect::Refused {
                status,
                sqlstate: None,
            } => format!("refused {status} by the router"),
            Expect::Rows(_) => "answered with the stated harmless rows".into(),
            Expect::Lacks { what, .. } => format!("answered without {what}"),
            Expect::WireRefused { sqlstate } if sqlstate.len() < 5 => {
                format!("refused {sqlstate}{}", "x".repeat(5 - sqlstate.len()))
            }
            Expect::WireRefused { sqlstate } => format!("refused {sqlstate}"),
        }
    }
}

/// The class of a SQLSTATE (or of the start of one).
fn class(sqlstate: &'static str) -> &'static str {
    sqlstate.get(..2).unwrap_or(sqlstate)
}

/// A JSON value as the simple protocol sends it: text, or NULL.
pub fn as_wire_text(v: &Value) -> Value {
    match v {
        Value::Null => Value::Null,
        Value::Bool(b) => Value::String(if *b { "t" } else { "f" }.into()),
        Value::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    }
}

/// What an attack got back.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// The last statement's rows, and the whole answer as JSON.
    Answered { rows: Vec<Vec<Value>>, text: String },
    /// An error answer: its HTTP status, code, SQLSTATE, and the whole
    /// body as JSON.
    Refused {
        status: u16,
        code: String,
        sqlstate: Option<String>,
        text: String,
    },
    /// An `ErrorResponse` over the PostgreSQL protocol: its SQLSTATE, and
    /// everything the client received as text (rows of the statements
    /// before it, notices, the error's fields).
    WireRefused { sqlstate: String, text: String },
    /// No answer from the router at all (connection or timeout).
    NoAnswer(String),
}

impl Got {
    /// From the client's result: the rows of the last statement.
    pub fn from_result<T: serde::Serialize>(
        res: Result<T, ClientError>,
        rows: impl FnOnce(&T) -> Vec<Vec<Value>>,
    ) -> Got {
        match res {
            Ok(answer) => Got::Answered {
                rows: rows(&answer),
                text: serde_json::to_string(&answer).unwrap_or_default(),
            },
            Err(ClientError::Api { status, error }) => Got::Refused {
                status,
                code: error.code.as_str().to_string(),
                sqlstate: error.sqlstate.clone(),
                text: serde_json::to_string(&error).unwrap_or_default(),
            },
            Err(e) => Got::NoAnswer(e.to_string()),
        }
    }

    /// The whole answer, for the leak check.
    pub fn text(&self) -> &str {
        match self {
            Got::Answered { text, .. }
            | Got::Refused { text, .. }
            | Got::WireRefused { text, .. }
            | Got::NoAnswer(text) => text,
        }
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        let text = match self {
            Got::Answered { rows, .. } => format!("answered {}", Value::from(rows.clone())),
            Got::Refused {
                status,
                code,
                sqlstate,
                text,
            } => format!(
                "refused {status} {code} sqlstate {}: {text}",
                sqlstate.as_deref().unwrap_or("none")
            ),
            Got::WireRefused { sqlstate, text } => format!("refused {sqlstate}: {text}"),
            Got::NoAnswer(e) => format!("no answer: {e}"),
        };
        clip(&text, 400)
    }
}

/// Shortens `s` to about `max` bytes, on a character boundary.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// The victim's secrets: strings no answer to an attacker may hold, in
/// any of the encodings of [`encodings`].
#[derive(Debug, Clone)]
pub struct Secrets {
    forms: Vec<(String, String)>,
}

impl Secrets {
    pub fn new(secrets: &[&str]) -> Self {
        let forms: Vec<(String, String)> = secrets.iter().flat_map(|s| encodings(s)).collect();
        assert!(
            forms.iter().all(|(_, form)| form.len() >= 12),
            "secrets must be long enough not to match by chance"
        );
        Self { forms }
    }

    /// The encodings of a secret found in `text`, by name.
    pub fn found_in(&self, text: &str) -> Vec<String> {
        let lower = text.to_lowercase();
        self.forms
            .iter()
            .filter(|(_, form)| {
                // Base64 is case-sensitive; the others are compared
                // without case (hex may be either, text may be upper-cased).
                text.contains(form.as_str()) || lower.contains(&form.to_lowercase())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// `secret` as an attacker might get it out: its text, reversed, in hex,
/// and in base64 at each of the three byte alignments it could have
/// inside a longer value (bytea is answered in base64). Every form is at
/// least 12 characters long, so none matches by chance.
pub fn encodings(secret: &str) -> Vec<(String, String)> {
    let bytes = secret.as_bytes();
    let mut out = vec![
        (format!("{secret:?} as text"), secret.to_string()),
        (
            format!("{secret:?} reversed"),
            secret.chars().rev().collect(),
        ),
        (
            format!("{secret:?} in hex"),
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ),
    ];
    for skip in 0..3 {
        // Whatever precedes the secret, base64 encodes the bytes from the
        // next multiple of 3 on by themselves: one of these three
        // strings appears in the encoding of any value holding it.
        let rest = &bytes[skip.min(bytes.len())..];
        let whole = rest.len() / 3 * 3;
        out.push((
            format!("{secret:?} in base64 (from byte {skip})"),
            base64(&rest[..whole]),
        ));
    }
    out
}

/// Standard base64 with padding (enough for the leak check; no crate
/// dependency for it).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The outcome of one attack.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// As declared; the bucket it is counted in.
    AsDeclared(String),
    /// Not as declared, with every reason.
    Unexpected(Vec<String>),
}

impl Verdict {
    pub fn is_unexpected(&self) -> bool {
        matches!(self, Verdict::Unexpected(_))
    }

    /// The reasons (empty when as declared).
    pub fn reasons(&self) -> &[String] {
        match self {
            Verdict::AsDeclared(_) => &[],
            Verdict::Unexpected(r) => r,
        }
    }
}

/// Judges one attack: its answer against its declaration, the answer
/// against the secrets, and the effects the probes saw (each a
/// description of something that changed where it must not).
pub fn judge(expect: &Expect, got: &Got, secrets: &Secrets, effects: &[String]) -> Verdict {
    let mut reasons = Vec::new();
    let as_declared = match (expect, got) {
        (
            Expect::Refused { status, sqlstate },
            Got::Refused {
                status: got_status,
                sqlstate: got_state,
                ..
            },
        ) => {
            status == got_status
                && match (sqlstate, got_state) {
                    (None, None) => true,
                    (Some(want), Some(s)) => s.starts_with(want),
                    _ => false,
                }
        }
        (
            Expect::WireRefused { sqlstate },
            Got::WireRefused {
                sqlstate: got_state,
                ..
            },
        ) => got_state.starts_with(sqlstate),
        (Expect::Rows(want), Got::Answered { rows, .. }) => want == rows,
        (Expect::Lacks { words, .. }, Got::Answered { text, .. }) => {
            for word in words {
                if text.to_lowercase().contains(&word.to_lowercase()) {
                    reasons.push(format!("the answer names {word:?}"));
                }
            }
            true
        }
        _ => false,
    };
    if !as_declared {
        reasons.push(format!(
            "expected {}, got {}",
            describe_expect(expect),
            got.describe()
        ));
    }
    for form in secrets.found_in(got.text()) {
        reasons.push(format!("the answer holds {form}"));
    }
    reasons.extend(effects.iter().cloned());
    if reasons.is_empty() {
        Verdict::AsDeclared(expect.bucket())
    } else {
        Verdict::Unexpected(reasons)
    }
}

fn describe_expect(expect: &Expect) -> String {
    match expect {
        Expect::Refused { status, sqlstate } => format!(
            "refused {status} with sqlstate {}",
            sqlstate.map_or("none".to_string(), |s| format!("{s}*"))
        ),
        Expect::Rows(rows) => format!("answered {}", Value::from(rows.clone())),
        Expect::Lacks { what, .. } => format!("answered without {what}"),
        Expect::WireRefused { sqlstate } => format!("refused with sqlstate {sqlstate}*"),
    }
}

/// The suite's count: verdicts by bucket, and the unexpected ones in
/// full.
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<String, usize>,
    unexpected: Vec<String>,
    total: usize,
}

impl Tally {
    pub fn record(&mut self, name: &str, verdict: &Verdict) {
        self.total += 1;
        match verdict {
            Verdict::AsDeclared(bucket) => *self.counts.entry(bucket.clone()).or_default() += 1,
            Verdict::Unexpected(reasons) => self
                .unexpected
                .push(format!("{name}: {}", reasons.join("; "))),
        }
    }

    /// Checks the suite itself did, counted with the attacks (a positive
    /// control, a bound): `ok` or the reason it failed.
    pub fn check(&mut self, name: &str, bucket: &str, failure: Option<String>) {
        let verdict = match failure {
            None => Verdict::AsDeclared(bucket.to_string()),
            Some(why) => Verdict::Unexpected(vec![why]),
        };
        self.record(name, &verdict);
    }

    pub fn unexpected(&self) -> &[String] {
        &self.unexpected
    }

    /// "refused 403 42501: 40, ..., total 120 — all as declared".
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .counts
            .iter()
            .map(|(bucket, n)| format!("{bucket}: {n}"))
            .collect();
        let tail = if self.unexpected.is_empty() {
            "all as declared".to_string()
        } else {
            format!("{} NOT as declared", self.unexpected.len())
        };
        format!("{}, total {} — {tail}", parts.join(", "), self.total)
    }
}

/// What a clean session shows for a piece of session state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clean<'a> {
    /// Exactly this (a fresh session's value).
    Equals(&'a str),
    /// Anything but this (the value request 1 set).
    Not(&'a str),
}

/// A session-state check: request 1 set some state on alpha's
/// connection (`pid_before` served the request just before it);
/// request 2 answered `[pid, value]`.
#[derive(Debug, Clone)]
pub struct SessionCheck<'a> {
    pub pid_before: i64,
    pub set: &'a Got,
    pub seen: &'a Got,
    pub clean: Clean<'a>,
    /// Request 2 ran on a new connection on purpose (state kept in the
    /// role, not the session).
    pub new_session: bool,
}

/// Judges a session-state check: request 1 must have run (else the
/// check shows nothing), and request 2 must see a clean value — on the
/// same connection (the router reset it) or on another one (the router
/// replaced it), each its own bucket.
pub fn judge_session(check: &SessionCheck<'_>, secrets: &Secrets, effects: &[String]) -> Verdict {
    let mut reasons = Vec::new();
    if !matches!(check.set, Got::Answered { .. }) {
        reasons.push(format!(
            "request 1 did not run, so it set nothing to check: {}",
            check.set.describe()
        ));
    }
    let mut bucket = String::new();
    match check.seen {
        Got::Answered { rows, .. } => {
            let pid = rows.first().and_then(|r| r.first()).and_then(Value::as_i64);
            let value = rows.first().and_then(|r| r.get(1));
            let value = value.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
            let clean = match (check.clean, value.as_deref()) {
                (Clean::Equals(want), Some(v)) => v == want,
                (Clean::Not(bad), Some(v)) => v != bad,
                (_, None) => false,
            };
            let same = pid == Some(check.pid_before);
            if !clean {
                reasons.push(format!(
                    "request 2 ({}) sees {value:?}, a clean session shows {:?}",
                    if same {
                        "same connection".to_string()
                    } else {
                        format!("connection {pid:?}")
                    },
                    check.clean
                ));
            }
            bucket = if check.new_session {
                "role defaults not seen by a new session".into()
            } else if same {
                "session state gone on the same connection".into()
            } else {
                "session state gone: the router replaced the connection".into()
            };
        }
        other => reasons.push(format!("request 2 failed: {}", other.describe())),
    }
    for got in [check.set, check.seen] {
        for form in secrets.found_in(got.text()) {
            reasons.push(format!("the answer holds {form}"));
        }
    }
    reasons.extend(effects.iter().cloned());
    if reasons.is_empty() {
        Verdict::AsDeclared(bucket)
    } else {
        Verdict::Unexpected(reasons)
    }
}
