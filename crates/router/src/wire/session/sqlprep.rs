//! SQL-level prepared statements across pooled server sessions.
//!
//! `PREPARE name AS ...` is kept by the router for the client (answered
//! at once; the statement is checked when first run). `EXECUTE name(...)`
//! is routed by the keys the prepared statement names, its `$n` taken
//! from the `EXECUTE`'s literal arguments, and runs on the server session
//! under a name of the router's derived from the statement's text —
//! prepared there first, in the same query, when that session lacks it
//! (the `PREPARE`'s own answer is not the client's). `DEALLOCATE`
//! forgets the client's name; the server's copy stays for the next
//! client of the tenant, bounded as protocol-level statements are.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::route::{is_read, no_key_error};
use super::{Choice, Exec, Pending, Session, SessionEnd, STATEMENTS_PER_SERVER};
use crate::wire::analyze::{comment_key, Analysis, PreparedSql};
use crate::wire::codec::{self, WireError};
use crate::wire::messages;

/// A `PREPARE`d statement of the client's.
pub(super) struct SqlStatement {
    /// The router's name for it on server sessions.
    server_name: String,
    /// The `PREPARE` after its name: `[(types)] AS statement`.
    rest: String,
    /// The prepared statement's text and analysis.
    text: String,
    analysis: Arc<Analysis>,
}

impl Session {
    /// Handles a `PREPARE`, `EXECUTE` or `DEALLOCATE` sent as a simple
    /// query.
    pub(super) async fn on_sql_prepared(
        &mut self,
        sql: &str,
        p: PreparedSql,
    ) -> Result<(), SessionEnd> {
        if let PreparedSql::Execute { name, args, rest } = p {
            return self.execute_sql(sql, &name, &args, &sql[rest]).await;
        }
        // Answered here: first whatever the server still owes.
        self.drain().await?;
        if self.status() == b'E' {
            let e = WireError::error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            );
            return self.refuse(e, true).await;
        }
        let tag = match p {
            PreparedSql::Prepare {
                name,
                rest,
                statement,
            } => {
                if self.sql_statements.contains_key(&name) {
                    let e = WireError::error(
                        "42P05",
                        format!("prepared statement \"{name}\" already exists"),
                    );
                    return self.refuse(e, true).await;
                }
                let rest = sql[rest].to_string();
                let text = sql[statement].to_string();
                let analysis = self.analyze(&text);
                let server_name = messages::hashed_name("sq", &rest, &[]);
                self.sql_statements.insert(
                    name,
                    SqlStatement {
                        server_name,
                        rest,
                        text,
                        analysis,
                    },
                );
                "PREPARE"
            }
            PreparedSql::Deallocate { name: None } => {
                self.sql_statements.clear();
                "DEALLOCATE ALL"
            }
            PreparedSql::Deallocate { name: Some(name) } => {
                if self.sql_statements.remove(&name).is_none() {
                    return self.refuse(not_found(&name), true).await;
                }
                "DEALLOCATE"
            }
            PreparedSql::Execute { .. } => return Ok(()),
        };
        self.io.queue(&codec::command_complete(tag));
        self.io.queue(&codec::ready(self.status()));
        self.io.flush().await?;
        Ok(())
    }

    async fn execute_sql(
        &mut self,
        sql: &str,
        name: &str,
        args: &[Option<String>],
        exec_rest: &str,
    ) -> Result<(), SessionEnd> {
        let Some(st) = self.sql_statements.get(name) else {
            return self.refuse(not_found(name), true).await;
        };
        let analysis = Arc::clone(&st.analysis);
        let server_name = st.server_name.clone();
        let prepare_rest = st.rest.clone();
        // A key comment on the EXECUTE counts, else the statement's own.
        let key_text = if comment_key(sql).is_some() {
            sql.to_string()
        } else {
            st.text.clone()
        };
        let params: Vec<(i16, Option<Bytes>)> = args
            .iter()
            .map(|a| (0, a.as_ref().map(|s| Bytes::from(s.clone()))))
            .collect();
        let exec = Exec {
            sql: &key_text,
            analysis: &analysis,
            params: Some(&params),
        };
        let choice = match self.choose(&[exec]) {
            Ok(Choice::FanOut | Choice::Split(_) | Choice::Copy) => {
                return self.refuse(no_key_error(), true).await;
            }
            Ok(c) => c,
            Err(e) => return self.refuse(e, true).await,
        };
        if let Err(e) = self.go_to(choice, analysis.parts.iter().all(is_read)).await {
            return self.refuse(e, true).await;
        }
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        let mut pending = Pending {
            closed: true,
            started: Some(std::time::Instant::now()),
            ..Pending::default()
        };
        let mut text = String::new();
        if !a.conn.conn.prepared.touch(&server_name) {
            if let Some(evicted) = a
                .conn
                .conn
                .prepared
                .insert(server_name.clone(), STATEMENTS_PER_SERVER)
            {
                text.push_str(&format!("DEALLOCATE {evicted}; "));
                pending.drop_tags += 1;
            }
            text.push_str(&format!("PREPARE {server_name}{prepare_rest}; "));
            pending.drop_tags += 1;
            pending.unconfirmed.push(server_name.clone());
            pending.confirm_on_tag = Some(server_name.clone());
        }
        text.push_str(&format!("EXECUTE {server_name}{exec_rest}"));
        // What the statement does is not known here: reset after.
        a.dirty = true;
        a.pending.push_back(pending);
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(&text, &mut out)?;
        a.conn.conn.send(&out).await?;
        Ok(())
    }
}

fn not_found(name: &str) -> WireError {
    WireError::error(
        "26000",
        format!("prepared statement \"{name}\" does not exist"),
    )
}
