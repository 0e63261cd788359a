//! Which statements are reads, for sending `eventual` requests to
//! replicas.
//!
//! A statement is a read when its leading keyword is `SELECT`, `WITH`,
//! `VALUES`, `TABLE` or `SHOW` and no later keyword is `INSERT`,
//! `UPDATE`, `DELETE`, `MERGE` or `INTO` (`SELECT ... INTO` creates a
//! table), and it takes no row locks (`FOR UPDATE`, `FOR NO KEY UPDATE`,
//! `FOR SHARE`, `FOR KEY SHARE`). Keywords are read outside comments,
//! string constants (standard, `E''` and dollar-quoted) and quoted
//! identifiers, in any case. Everything else is a write.
//!
//! The check errs towards the primary: an unquoted column named like a
//! write keyword makes a statement a "write", which only costs a trip to
//! the primary. What it cannot see — a function that writes, `nextval` —
//! fails on a replica with SQLSTATE 25006 (replicas run every statement
//! read-only) and is run again on the primary.

/// Leading keywords of reads.
const READ_LEADS: [&str; 5] = ["SELECT", "WITH", "VALUES", "TABLE", "SHOW"];

/// Keywords that make a statement a write wherever they appear.
const WRITE_WORDS: [&str; 5] = ["INSERT", "UPDATE", "DELETE", "MERGE", "INTO"];

/// Words after `FOR` that make it a row-locking clause.
const LOCK_WORDS: [&str; 4] = ["UPDATE", "NO", "SHARE", "KEY"];

/// What one pass over a statement's keywords finds (see [`scan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The statement only reads (see the module docs).
    pub read: bool,
    /// Its text could change the session outside a transaction (see
    /// [`may_change_session`]).
    pub changes_session: bool,
    /// ... and inside one.
    pub changes_session_in_transaction: bool,
    /// The highest parameter number it refers to and the byte offset of
    /// its `$` (see [`highest_param`]).
    pub highest_param: Option<(u64, usize)>,
}

impl Scan {
    /// [`Self::highest_param`] with the `$`'s 1-based character position
    /// in `sql` instead of its byte offset.
    pub fn highest_param_at(&self, sql: &str) -> Option<(u64, usize)> {
        in_characters(sql, self.highest_param)
    }
}

/// Everything the HTTP front end reads from a statement's text before it
/// runs, in one pass over its keywords (and one for the functions it
/// names) rather than one per question.
pub fn scan(sql: &str) -> Scan {
    let words = keywords(sql);
    let named = shardline_core::session::names_session_changing_function(sql);
    Scan {
        read: words.read,
        changes_session: named || words.changes_session(false),
        changes_session_in_transaction: named || words.changes_session(true),
        highest_param: words.highest_param,
    }
}

/// Whether `sql` only reads (see the module docs).
pub fn is_read(sql: &str) -> bool {
    keywords(sql).read
}

/// Leading keywords of statements that change no session state by
/// themselves (what they run may; see `shardline_core::session`).
const PLAIN_LEADS: [&str; 9] = [
    "SELECT", "WITH", "VALUES", "TABLE", "SHOW", "INSERT", "UPDATE", "DELETE", "MERGE",
];

/// Further leading keywords that leave nothing behind at the end of a
/// transaction, accepted inside one.
const TRANSACTION_LEADS: [&str; 4] = ["SET", "SAVEPOINT", "RELEASE", "ROLLBACK"];

/// Whether `sql`'s text could change the session it runs in by itself:
/// anything but a plain query or `INSERT`/`UPDATE`/`DELETE`/`MERGE`
/// (`DO`, `CALL`, `CREATE`, `EXPLAIN`, ...), a `SELECT ... INTO` (it
/// creates a table), or a statement naming a built-in that changes
/// sessions or runs SQL text (`set_config`, session advisory locks, ...;
/// [`shardline_core::session::names_session_changing_function`]).
/// `in_transaction` also accepts `SET LOCAL`, `SET TRANSACTION`, `SET
/// CONSTRAINTS` and savepoints, whose effects end with the transaction
/// (the keyword guard in `pg::exec` refuses any other `SET`). Errs towards
/// `true`; code the statement reaches without naming it is the
/// keyspace's concern ([`shardline_core::catalog::Keyspace::tenant_code`]).
pub fn may_change_session(sql: &str, in_transaction: bool) -> bool {
    shardline_core::session::names_session_changing_function(sql)
        || keywords(sql).changes_session(in_transaction)
}

/// The highest parameter number `sql` refers to (`$n` outside comments,
/// string constants and quoted identifiers) and the 1-based character
/// position of its `$`; `None` without parameters.
pub fn highest_param(sql: &str) -> Option<(u64, usize)> {
    in_characters(sql, keywords(sql).highest_param)
}

/// A parameter's byte offset in `sql` as a 1-based character position.
fn in_characters(sql: &str, param: Option<(u64, usize)>) -> Option<(u64, usize)> {
    param.map(|(n, byte)| (n, sql[..byte].chars().count() + 1))
}

/// What the keywords alone say.
struct Words {
    read: bool,
    /// How the leading keyword classes the statement for the session.
    lead: Lead,
    /// An `INTO` not right after `INSERT` or `MERGE`: `SELECT ... INTO`,
    /// which creates a table.
    select_into: bool,
    highest_param: Option<(u64, usize)>,
}

#[derive(PartialEq)]
enum Lead {
    /// No keyword: nothing to run.
    None,
    /// A plain query or `INSERT`/`UPDATE`/`DELETE`/`MERGE`.
    Plain,
    /// `SET`, `SAVEPOINT`, `RELEASE`, `ROLLBACK`: harmless inside a
    /// transaction only.
    Transaction,
    /// Anything else.
    Other,
}

impl Words {
    fn changes_session(&self, in_transaction: bool) -> bool {
        match self.lead {
            Lead::None => false,
            Lead::Plain => self.select_into,
            Lead::Transaction => !in_transaction,
            Lead::Other => true,
        }
    }
}

fn keywords(sql: &str) -> Words {
    let is = |word: &str, set: &[&str]| set.iter().any(|w| word.eq_ignore_ascii_case(w));
    let mut words = Keywords::new(sql);
    let Some(lead) = words.next() else {
        return Words {
            read: false,
            lead: Lead::None,
            select_into: false,
            highest_param: words.highest_param,
        };
    };
    let mut read = is(lead, &READ_LEADS);
    let lead_class = if is(lead, &PLAIN_LEADS) {
        Lead::Plain
    } else if is(lead, &TRANSACTION_LEADS) {
        Lead::Transaction
    } else {
        Lead::Other
    };
    let mut select_into = false;
    let mut previous = lead;
    let mut after_for = false;
    for word in words.by_ref() {
        if is(word, &WRITE_WORDS) || (after_for && is(word, &LOCK_WORDS)) {
            read = false;
        }
        after_for = word.eq_ignore_ascii_case("FOR");
        if word.eq_ignore_ascii_case("INTO") && !is(previous, &["INSERT", "MERGE"]) {
            select_into = true;
        }
        previous = word;
    }
    Words {
        read,
        lead: lead_class,
        select_into,
        highest_param: words.highest_param,
    }
}

/// The unquoted words of a statement, in order (also the session guard's
/// view of a statement's leading keywords, in `pg::exec`).
pub(crate) struct Keywords<'a> {
    sql: &'a str,
    at: usize,
    /// The highest parameter number (`$n`) passed so far, and the byte
    /// offset of its `$`.
    highest_param: Option<(u64, usize)>,
}

impl<'a> Keywords<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Self {
            sql,
            at: 0,
            highest_param: None,
        }
    }

    fn byte(&self, i: usize) -> Option<u8> {
        self.sql.as_bytes().get(i).copied()
    }

    /// Skips past the end of a `'` string starting at `self.at`;
    /// `backslash` for `E''` strings, where `\` escapes the next byte.
    fn skip_string(&mut self, backslash: bool) {
        let b = self.sql.as_bytes();
        let mut i = self.at + 1;
        while i < b.len() {
            match b[i] {
                b'\\' if backslash => i += 2,
                b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                b'\'' => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
        self.at = i.min(b.len());
    }

    /// Skips a `"quoted identifier"` (`""` inside is a quote).
    fn skip_quoted_ident(&mut self) {
        let b = self.sql.as_bytes();
        let mut i = self.at + 1;
        while i < b.len() {
            if b[i] == b'"' {
                if b.get(i + 1) == Some(&b'"') {
                    i += 2;
                    continue;
                }
                i += 1;
                break;
            }
            i += 1;
        }
        self.at = i.min(b.len());
    }

    /// Skips a nested `/* */` comment.
    fn skip_block_comment(&mut self) {
        let b = self.sql.as_bytes();
        let mut i = self.at;
        let mut depth = 0usize;
        while i < b.len() {
            if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                depth += 1;
                i += 2;
            } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    break;
                }
            } else {
                i += 1;
            }
        }
        self.at = i.min(b.len());
    }

    /// At a `$`: skips a dollar-quoted string (`$tag$ ... $tag$`), or
    /// just the `$` when it starts a parameter (`$1`) or nothing.
    fn skip_dollar(&mut self) {
        let b = self.sql.as_bytes();
        let start = self.at;
        let mut i = start + 1;
        if b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            let n = b[i..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .fold(0u64, |n, c| {
                    n.saturating_mul(10).saturating_add(u64::from(c - b'0'))
                });
            if self.highest_param.is_none_or(|(max, _)| n > max) {
                self.highest_param = Some((n, start));
            }
            self.at = i;
            return;
        }
        while i < b.len() && is_ident_byte(b[i]) && b[i] != b'$' {
            i += 1;
        }
        if b.get(i) != Some(&b'$') {
            self.at = start + 1;
            return;
        }
        let tag = &self.sql[start..=i];
        let body = i + 1;
        self.at = match self.sql.get(body..).and_then(|rest| rest.find(tag)) {
            Some(end) => body + end + tag.len(),
            // Unterminated: PostgreSQL will refuse it; nothing after
            // counts.
            None => b.len(),
        };
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl<'a> Iterator for Keywords<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while let Some(c) = self.byte(self.at) {
            match c {
                b'-' if self.byte(self.at + 1) == Some(b'-') => {
                    // To the end of the line, which PostgreSQL's lexer
                    // ends at `\n` or `\r`.
                    let rest = &self.sql[self.at..];
                    self.at += rest.find(['\n', '\r']).unwrap_or(rest.len());
                }
                b'/' if self.byte(self.at + 1) == Some(b'*') => self.skip_block_comment(),
                b'\'' => self.skip_string(false),
                b'"' => self.skip_quoted_ident(),
                b'$' => self.skip_dollar(),
                c if is_ident_start(c) => {
                    let start = self.at;
                    let b = self.sql.as_bytes();
                    let mut i = start;
                    while i < b.len() && is_ident_byte(b[i]) {
                        i += 1;
                    }
                    let word = &self.sql[start..i];
                    self.at = i;
                    // E'...' is a string with backslash escapes, not the
                    // word E.
                    if word.eq_ignore_ascii_case("e") && self.byte(i) == Some(b'\'') {
                        self.skip_string(true);
                        continue;
                    }
                    // Other prefixed constants (B'', X'', N'', U&'')
                    // read as a word then a standard string: harmless.
                    return Some(word);
                }
                c if c.is_ascii_digit() => {
                    // Numbers, including 1e5 and 0x1F: not words.
                    let b = self.sql.as_bytes();
                    while self.at < b.len() && is_ident_byte(b[self.at]) {
                        self.at += 1;
                    }
                }
                _ => self.at += 1,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads() {
        for sql in [
            "SELECT 1",
            "select * from t where id = $1",
            "  (SELECT 1) UNION (SELECT 2)",
            "-- a comment: DELETE FROM t\nSELECT 1",
            "/* UPDATE /* nested */ INSERT */ select 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "with recursive r(n) as (values (1) union all select n + 1 from r where n < 5) select * from r",
            "VALUES (1), (2)",
            "TABLE t",
            "show search_path",
            "SELECT 'DELETE FROM t' AS s",
            "SELECT 'it''s; UPDATE t SET x = 1'",
            "SELECT E'\\' INSERT INTO t'",
            "SELECT $$ DELETE FROM t $$, $body$ UPDATE $inner$ x $inner$ $body$",
            "SELECT \"update\", \"into\" FROM t",
            "SELECT last_update, deleted_at, inserted FROM t",
            "SELECT a FROM t ORDER BY a FOR READ ONLY",
            "SELECT x FROM t WHERE y = 'for update'",
            "SELECT $1::text, a$b FROM t",
            "SELECT 1e5, 0x1F",
        ] {
            assert!(is_read(sql), "{sql}");
        }
    }

    #[test]
    fn writes() {
        for sql in [
            "",
            "   ",
            "-- only a comment",
            "INSERT INTO t VALUES (1)",
            "update t set x = 1",
            "DELETE FROM t",
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            "CREATE TABLE t (id int)",
            "TRUNCATE t",
            "EXPLAIN ANALYZE DELETE FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "with x as (select 1) insert into t select * from x",
            "WITH u AS (UPDATE t SET x = 1 RETURNING x) SELECT count(*) FROM u",
            "WITH m AS (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE) SELECT 1",
            "SELECT * FROM t FOR UPDATE",
            "select * from t for no key update skip locked",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t for key share",
            "SELECT * INTO new_table FROM t",
            "SELECT 1; DELETE FROM t",
            "/* SELECT */ DELETE FROM t",
            "Select * From t For Update",
            // An unquoted column named like a write keyword: the
            // primary (conservative).
            "SELECT delete FROM t",
            "LOCK TABLE t",
            "CALL p()",
            "SET LOCAL x = 1",
        ] {
            assert!(!is_read(sql), "{sql}");
        }
    }

    #[test]
    fn unterminated_constants_hide_the_rest() {
        // PostgreSQL refuses these; the classifier must not loop or
        // panic, and a write word in the unterminated part is unseen.
        for sql in ["SELECT 'abc", "SELECT $$abc", "SELECT \"abc", "SELECT /* x"] {
            assert!(is_read(sql), "{sql}");
        }
        assert!(is_read("SELECT é, ü FROM t"));
        assert!(!is_read("é"));
    }

    #[test]
    fn statements_that_may_change_the_session() {
        for sql in [
            "DO $$ BEGIN PERFORM 1; END $$",
            "CALL p()",
            "CREATE TEMP TABLE t (x int)",
            "SELECT * INTO TEMP t FROM x",
            "select a into t from x",
            "WITH w AS (SELECT 1) SELECT * INTO t FROM w",
            "SELECT set_config('statement_timeout', '0', false)",
            "SELECT pg_advisory_lock(1)",
            "EXPLAIN ANALYZE SELECT 1",
            "LISTEN ch",
            "NOTIFY ch",
            "SET search_path = x",
            "SELECT U&\"\\0073et_config\"('a', 'b', false)",
            // PostgreSQL ends a `--` comment at a carriage return too.
            "-- c\rDO $$ BEGIN PERFORM 1; END $$",
            "SELECT 1 -- c\rINTO t",
        ] {
            assert!(may_change_session(sql, false), "{sql}");
        }
        assert!(may_change_session("SET LOCAL x = 1", false));
        assert!(may_change_session("SAVEPOINT a", false));
    }

    #[test]
    fn statements_that_cannot() {
        for sql in [
            "SELECT id, balance FROM accounts WHERE id = $1",
            "  select 'DO' as x",
            "-- DO\nSELECT 1",
            "INSERT INTO t VALUES ($1) RETURNING *",
            "WITH x AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM x",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "UPDATE t SET v = v + 1 WHERE id = $1",
            "DELETE FROM t WHERE id = $1",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW search_path",
            "SELECT \"into\" FROM t",
            "SELECT pg_advisory_xact_lock(1)",
            "",
        ] {
            assert!(!may_change_session(sql, false), "{sql}");
        }
        for sql in [
            "SET LOCAL statement_timeout = '1s'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SAVEPOINT a",
            "RELEASE a",
            "ROLLBACK TO a",
        ] {
            assert!(!may_change_session(sql, true), "{sql}");
        }
    }

    #[test]
    fn parameters() {
        let cases: [(&str, Option<(u64, usize)>); 8] = [
            ("SELECT 1", None),
            ("SELECT $1, $12, $3", Some((12, 12))),
            ("SELECT 'é', $70000::int", Some((70000, 13))),
            (
                "SELECT '$99', \"$98\", a$97, $$ $96 $$, $t$ $95 $t$ -- $94\n",
                None,
            ),
            ("SELECT /* $93 */ E'\\' $92', $2", Some((2, 29))),
            ("SELECT $99999999999999999999999", Some((u64::MAX, 8))),
            ("SELECT $", None),
            ("SELECT 1$2", None),
        ];
        for (sql, want) in cases {
            assert_eq!(highest_param(sql), want, "{sql}");
        }
    }

    #[test]
    fn one_scan_answers_every_question() {
        let cases = [
            // sql, read, changes outside / inside a transaction, highest param
            (
                "SELECT * FROM t WHERE id = $2 AND x = $1",
                true,
                false,
                false,
                Some((2, 28)),
            ),
            ("UPDATE t SET x = $1", false, false, false, Some((1, 18))),
            ("SELECT * INTO t2 FROM t", false, true, true, None),
            ("SET LOCAL statement_timeout = 5", false, true, false, None),
            ("SELECT set_config('a', 'b', true)", true, true, true, None),
            ("SELECT * FROM t FOR UPDATE", false, false, false, None),
            ("CREATE TABLE é (x int)", false, true, true, None),
            ("-- nothing", false, false, false, None),
        ];
        for (sql, read, outside, inside, param) in cases {
            let got = scan(sql);
            assert_eq!(got.read, read, "{sql}");
            assert_eq!(got.changes_session, outside, "{sql}");
            assert_eq!(got.changes_session_in_transaction, inside, "{sql}");
            assert_eq!(got.highest_param_at(sql), param, "{sql}");
            assert_eq!(is_read(sql), read, "{sql}");
            assert_eq!(may_change_session(sql, false), outside, "{sql}");
            assert_eq!(may_change_session(sql, true), inside, "{sql}");
            assert_eq!(highest_param(sql), param, "{sql}");
        }
    }
}
