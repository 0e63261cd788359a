//! Sending attacks over the PostgreSQL protocol with tokio-postgres, as
//! any driver would: each attack on a new connection (logged in with
//! SCRAM-SHA-256 as an app: user = app id, password = its token,
//! database = the keyspace), its shard key set first by `SET
//! shardline.shard_key`, its text sent as a simple query. The same
//! sender reaches PostgreSQL directly (the controls), where the key
//! setting is a harmless custom setting.
//!
//! Everything the client receives is kept for the leak check: every
//! statement's rows, the error's fields, notices and notifications.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use shardline_core::catalog::quote_literal;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_postgres::{AsyncMessage, Config, NoTls, SimpleQueryMessage};

use super::attacks::Send;
use super::verdict::Got;

/// Longest an attack may take before it counts as unanswered: the
/// router's request deadline and slack.
pub const WIRE_WAIT: Duration = Duration::from_secs(25);

/// A login over the PostgreSQL protocol.
#[derive(Clone, Debug)]
pub struct Login {
    pub config: Config,
    /// What the count and failure messages call it.
    pub who: String,
}

impl Login {
    /// App `app` with `token` on the router's wire listener `addr`,
    /// database `keyspace`.
    pub fn router(addr: SocketAddr, app: &str, token: &str, keyspace: &str) -> Login {
        let mut config = Config::new();
        config
            .host(addr.ip().to_string())
            .port(addr.port())
            .user(app)
            .password(token)
            .dbname(keyspace)
            .application_name("hostile-wire")
            .connect_timeout(Duration::from_secs(10));
        Login {
            config,
            who: format!("app {app}"),
        }
    }

    /// A superuser's login to PostgreSQL itself (`dsn` in key=value
    /// form), in tenant database `db` with its schema first in the
    /// search path (a tenant's database and schema share its name), as
    /// the router's sessions have it.
    pub fn direct(dsn: &str, db: &str) -> Login {
        let mut config: Config = dsn
            .parse()
            .unwrap_or_else(|e| panic!("parse the shard's dsn: {e}"));
        config.dbname(db).options(format!("-c search_path={db}"));
        Login {
            config,
            who: "a superuser on PostgreSQL".into(),
        }
    }

    /// The same login asking for another database.
    pub fn with_db(&self, db: &str) -> Login {
        let mut l = self.clone();
        l.config.dbname(db);
        if l.config.get_options().is_some() {
            l.config.options(format!("-c search_path={db}"));
        }
        l
    }
}

/// A connection, and what the server sent on its own (notices,
/// notifications).
pub struct WireClient {
    pub client: tokio_postgres::Client,
    heard: UnboundedReceiver<String>,
}

impl WireClient {
    /// Logs in; a refusal is the answer (`Got::WireRefused` with the
    /// login's SQLSTATE).
    pub async fn connect(login: &Login) -> Result<WireClient, Got> {
        let (client, mut conn) =
            match tokio::time::timeout(WIRE_WAIT, login.config.connect(NoTls)).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => return Err(error_got(&e, &[])),
                Err(_) => return Err(Got::NoAnswer("no login within the wait".into())),
            };
        let (tx, heard) = unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                let line = match m {
                    Ok(AsyncMessage::Notice(n)) => format!(
                        "notice {} {}: {} (detail {:?}, hint {:?}, where {:?})",
                        n.severity(),
                        n.code().code(),
                        n.message(),
                        n.detail(),
                        n.hint(),
                        n.where_()
                    ),
                    Ok(AsyncMessage::Notification(n)) => {
                        format!("notification on {}: {}", n.channel(), n.payload())
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(WireClient { client, heard })
    }

    /// Logs in and sets the session's shard key.
    pub async fn keyed(login: &Login, key: &str) -> Result<WireClient, Got> {
        let c = Self::connect(login).await?;
        let set = format!("SET shardline.shard_key = {}", quote_literal(key));
        match c.steps(&[set]).await {
            Got::Answered { .. } => Ok(c),
            other => Err(Got::NoAnswer(format!(
                "setting the shard key failed: {}",
                other.describe()
            ))),
        }
    }

    /// What the server sent on its own since the last call.
    pub fn heard(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.heard.try_recv() {
            out.push(line);
        }
        out
    }

    /// Sends each text as its own simple query, stopping at the first
    /// error; the rows are the last statement's.
    pub async fn steps(&self, sqls: &[String]) -> Got {
        let mut all: Vec<Vec<Vec<Value>>> = Vec::new();
        let mut last: Vec<Vec<Value>> = Vec::new();
        for sql in sqls {
            let res = tokio::time::timeout(WIRE_WAIT, self.client.simple_query(sql)).await;
            let messages = match res {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return error_got(&e, &all),
                Err(_) => {
                    return Got::NoAnswer(format!(
                        "no answer within {WIRE_WAIT:?} to {}",
                        super::verdict::clip(sql, 100)
                    ))
                }
            };
            let mut current = Vec::new();
            for m in messages {
                match m {
                    SimpleQueryMessage::Row(row) => current.push(
                        (0..row.len())
                            .map(|i| match row.get(i) {
                                Some(v) => Value::String(v.to_string()),
                                None => Value::Null,
                            })
                            .collect(),
                    ),
                    SimpleQueryMessage::CommandComplete(_) => {
                        last = std::mem::take(&mut current);
                        all.push(last.clone());
                    }
                    _ => {}
                }
            }
        }
        Got::Answered {
            text: answer_text(&all),
            rows: last,
        }
    }

    /// Sends `s` on this connection (a transaction as `BEGIN`, its
    /// statements and `COMMIT`, each its own query; `ROLLBACK` after an
    /// error).
    pub async fn send(&self, s: &Send) -> Got {
        match s {
            Send::Execute(sql) => self.steps(std::slice::from_ref(sql)).await,
            Send::Transaction(sqls) => {
                let mut all = vec!["BEGIN".to_string()];
                all.extend(sqls.iter().cloned());
                let got = self.steps(&all).await;
                match got {
                    Got::Answered { .. } => {}
                    // Still waiting on the statement: a ROLLBACK would
                    // queue behind it.
                    Got::NoAnswer(_) => return got,
                    _ => {
                        let rollback = self.client.simple_query("ROLLBACK");
                        let _ = tokio::time::timeout(WIRE_WAIT, rollback).await;
                        return got;
                    }
                }
                match self.steps(&["COMMIT".to_string()]).await {
                    Got::Answered { .. } => got,
                    failed => failed,
                }
            }
            Send::Keyspace(_) => Got::NoAnswer("a keyspace is chosen at login".into()),
        }
    }
}

/// Sends one attack the way a client of the wire would: a new
/// connection as `login` with shard key `key` (another database for a
/// keyspace attack), its statements, then the connection closed. The
/// notices and notifications it heard count as part of the answer.
pub async fn attempt(login: &Login, key: &str, s: &Send) -> Got {
    let (login, s) = match s {
        Send::Keyspace(ks) => (
            login.with_db(ks),
            Send::Execute("SELECT * FROM items".into()),
        ),
        other => (login.clone(), other.clone()),
    };
    let mut c = match WireClient::keyed(&login, key).await {
        Ok(c) => c,
        Err(got) => return got,
    };
    let got = c.send(&s).await;
    // Notices come before the answer they belong to; a moment for any
    // notification.
    tokio::time::sleep(Duration::from_millis(20)).await;
    with_heard(got, c.heard())
}

/// `got` with what the client heard besides added to its text.
pub fn with_heard(got: Got, heard: Vec<String>) -> Got {
    if heard.is_empty() {
        return got;
    }
    let extra = format!(" heard: {}", heard.join(" | "));
    match got {
        Got::Answered { rows, text } => Got::Answered {
            rows,
            text: text + &extra,
        },
        Got::WireRefused { sqlstate, text } => Got::WireRefused {
            sqlstate,
            text: text + &extra,
        },
        Got::Refused {
            status,
            code,
            sqlstate,
            text,
        } => Got::Refused {
            status,
            code,
            sqlstate,
            text: text + &extra,
        },
        Got::NoAnswer(text) => Got::NoAnswer(text + &extra),
    }
}

fn answer_text(all: &[Vec<Vec<Value>>]) -> String {
    Value::from(
        all.iter()
            .map(|s| Value::from(s.clone()))
            .collect::<Vec<_>>(),
    )
    .to_string()
}

/// An error as the answer: PostgreSQL's (or the router's) `ErrorResponse`
/// with every field, or no answer when the connection failed otherwise.
pub fn error_got(e: &tokio_postgres::Error, before: &[Vec<Vec<Value>>]) -> Got {
    match e.as_db_error() {
        Some(db) => Got::WireRefused {
            sqlstate: db.code().code().to_string(),
            text: format!(
                "{} {}: {} (detail {:?}, hint {:?}, where {:?}) after {}",
                db.severity(),
                db.code().code(),
                db.message(),
                db.detail(),
                db.hint(),
                db.where_(),
                answer_text(before)
            ),
        },
        None => Got::NoAnswer(format!("{e}")),
    }
}

/// Runs `sql` on `c` and returns its rows as text, or the failure.
pub async fn wire_rows(c: &WireClient, sql: &str) -> Result<Vec<Vec<Value>>, String> {
    match c.steps(&[sql.to_string()]).await {
        Got::Answered { rows, .. } => Ok(rows),
        other => Err(other.describe()),
    }
}
